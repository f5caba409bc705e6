//! Bare repositories: creating them, installing the pre-receive hook, and exporting a pushed
//! commit into a build directory. Also the parser for commands that arrive over SSH.

pub mod ssh_command;

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("running git {action}: {source}")]
    Spawn { action: &'static str, source: io::Error },
    #[error("git {action} failed: {stderr}")]
    Failed { action: &'static str, stderr: String },
    #[error("unpacking the pushed commit: {0}")]
    Unpack(io::Error),
    #[error("writing {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Refused(#[from] Refusal),
}

/// `git init --bare` plus the slipway hook. The default branch is `main` so `HEAD` points at
/// the deploy branch for `git clone`.
pub fn create_bare(repo: &Path, slipway_binary: &Path) -> Result<(), GitError> {
    let out = Command::new("git")
        .args(["init", "--bare", "--quiet", "--initial-branch=main"])
        .arg(repo)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| GitError::Spawn { action: "init", source })?;
    if !out.status.success() {
        return Err(GitError::Failed {
            action: "init",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    install_hook(repo, slipway_binary)
}

/// The hook every bare repository gets: `hooks/pre-receive` of the slipway checkout.
pub const PRE_RECEIVE_TEMPLATE: &str = include_str!("../../hooks/pre-receive");

/// Writes `hooks/pre-receive` from [`PRE_RECEIVE_TEMPLATE`]: its one placeholder becomes the
/// binary's path (single-quoted, from `current_exe`, never user input); the app and home are
/// derived from the repository path by `slipway hook pre-receive` itself.
pub fn install_hook(repo: &Path, slipway_binary: &Path) -> Result<(), GitError> {
    let hooks = repo.join("hooks");
    let path = hooks.join("pre-receive");
    let io_err = |source| GitError::Io { path: path.display().to_string(), source };
    std::fs::create_dir_all(&hooks).map_err(io_err)?;
    let script = hook_script(slipway_binary);
    crate::fsutil::write_atomic(&path, script.as_bytes(), 0o755).map_err(io_err)
}

/// The hook script for `slipway_binary`.
pub fn hook_script(slipway_binary: &Path) -> String {
    PRE_RECEIVE_TEMPLATE.replacen("@SLIPWAY@", &single_quote(&slipway_binary.to_string_lossy()), 1)
}

/// POSIX shell single-quoting: the only quoting with no special characters inside.
fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Caps on a pushed tree, checked entry by entry while it is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    /// Total bytes of file contents (`max_build_mb`).
    pub max_bytes: u64,
    /// Entries (files, directories, links).
    pub max_entries: u64,
}

impl ExportLimits {
    /// At most `max_build_mb` MiB and [`MAX_ENTRIES`] entries.
    pub fn new(max_bytes: u64) -> ExportLimits {
        ExportLimits { max_bytes, max_entries: MAX_ENTRIES }
    }
}

/// No pushed tree may hold more entries than this (a million files is far beyond any app).
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Why an exported tree was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the pushed tree unpacks to more than {} MB (max_build_mb); remove large files from the repository, or raise the limit with `slipway settings:set max_build_mb=N`", .0 / (1024 * 1024))]
    TooLarge(u64),
    #[error("the pushed tree holds more than {0} files; it is refused")]
    TooManyEntries(u64),
    #[error("the pushed tree holds an entry with an unsafe path ({0}); it is refused")]
    UnsafePath(String),
}

/// Running totals while exporting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub bytes: u64,
    pub entries: u64,
}

/// The decision for one tar entry: its path must be relative with no `..`, and with it the
/// totals must stay within `limits`. Returns the new totals.
pub fn admit(path: &[u8], size: u64, totals: Totals, limits: ExportLimits) -> Result<Totals, Refusal> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    if path.is_empty() || path.starts_with(b"/") || path.split(|b| *b == b'/').any(|c| c == b"..") {
        return Err(Refusal::UnsafePath(shown()));
    }
    let next = Totals { bytes: totals.bytes.saturating_add(size), entries: totals.entries + 1 };
    if next.entries > limits.max_entries {
        return Err(Refusal::TooManyEntries(limits.max_entries));
    }
    if next.bytes > limits.max_bytes {
        return Err(Refusal::TooLarge(limits.max_bytes));
    }
    Ok(next)
}

/// Writes the tree of `commit` into `dest`: `git archive` streamed through slipway, which checks
/// every entry with [`admit`] before writing it, so a git bomb (a small push that unpacks to
/// gigabytes) stops at the cap, and git is killed. Inside a pre-receive hook the pushed objects
/// are quarantined; git's environment (GIT_DIR, GIT_QUARANTINE_PATH, GIT_OBJECT_DIRECTORY…) is
/// inherited on purpose so `git archive` can see them. On error `dest` holds part of the tree:
/// the caller removes it.
pub fn export_commit(repo: &Path, commit: &str, dest: &Path, limits: ExportLimits) -> Result<(), GitError> {
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["archive", "--format=tar", commit])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| GitError::Spawn { action: "archive", source })?;
    let stdout = child.stdout.take().ok_or_else(|| GitError::Unpack(io::ErrorKind::BrokenPipe.into()))?;
    let unpacked = unpack_checked(io::BufReader::with_capacity(256 * 1024, stdout), dest, limits);
    if unpacked.is_err() {
        // Stop git at once (the rest of a bomb is never read); it may have exited already.
        if let Err(e) = child.kill() {
            if e.kind() != io::ErrorKind::InvalidInput {
                tracing::warn!(%e, "stopping git archive");
            }
        }
    }
    let out = child.wait_with_output().map_err(|source| GitError::Spawn { action: "archive", source })?;
    unpacked?;
    if !out.status.success() {
        return Err(GitError::Failed {
            action: "archive",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Unpacks a tar stream into `dest`, admitting each entry first (see [`admit`]). Directories are
/// applied last, as `tar::Archive::unpack` does, so their modes never block their contents.
/// `unpack_in` also refuses writes through symlinks that point out of the tree.
pub fn unpack_checked(reader: impl io::Read, dest: &Path, limits: ExportLimits) -> Result<Totals, GitError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let mut totals = Totals::default();
    let mut directories = Vec::new();
    for entry in archive.entries().map_err(GitError::Unpack)? {
        let mut entry = entry.map_err(GitError::Unpack)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue; // git's comment holding the commit id
        }
        totals = admit(&entry.path_bytes(), entry.size(), totals, limits)?;
        if kind.is_dir() {
            directories.push(entry);
        } else {
            entry.unpack_in(dest).map_err(GitError::Unpack)?;
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in directories {
        dir.unpack_in(dest).map_err(GitError::Unpack)?;
    }
    // Read what follows the end-of-archive blocks (git pads the archive to 10 KiB records):
    // closing the pipe before git wrote it would kill git with SIGPIPE.
    io::copy(&mut archive.into_inner().take(1 << 20), &mut io::sink()).map_err(GitError::Unpack)?;
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_admitted_within_the_caps() {
        let limits = ExportLimits { max_bytes: 100, max_entries: 3 };
        let t = |bytes, entries| Totals { bytes, entries };
        type Case<'a> = (&'a [u8], u64, Totals, Result<Totals, Refusal>);
        let cases: &[Case] = &[
            (b"app.py", 10, t(0, 0), Ok(t(10, 1))),
            (b"dir/", 0, t(10, 1), Ok(t(10, 2))),
            (b"big", 90, t(10, 1), Ok(t(100, 2))),
            (b"big", 91, t(10, 1), Err(Refusal::TooLarge(100))),
            (b"x", 0, t(0, 3), Err(Refusal::TooManyEntries(3))),
            (b"/etc/passwd", 1, t(0, 0), Err(Refusal::UnsafePath("/etc/passwd".into()))),
            (b"a/../../x", 1, t(0, 0), Err(Refusal::UnsafePath("a/../../x".into()))),
            (b"..", 0, t(0, 0), Err(Refusal::UnsafePath("..".into()))),
            (b"", 0, t(0, 0), Err(Refusal::UnsafePath(String::new()))),
            (b"a..b/..c", 1, t(0, 0), Ok(t(1, 1))),
            (b"huge", u64::MAX, t(5, 0), Err(Refusal::TooLarge(100))),
        ];
        for (path, size, totals, want) in cases {
            assert_eq!(&admit(path, *size, *totals, limits), want, "{}", String::from_utf8_lossy(path));
        }
        assert_eq!(
            Refusal::TooLarge(50 * 1024 * 1024).to_string(),
            "the pushed tree unpacks to more than 50 MB (max_build_mb); remove large files from the repository, or raise the limit with `slipway settings:set max_build_mb=N`"
        );
    }

    #[test]
    fn a_stream_over_the_cap_stops_before_writing_the_big_file() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, name, data).unwrap();
        };
        add("small", b"hello");
        add("big", &vec![0u8; 4096]);
        let bytes = builder.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let err = unpack_checked(&bytes[..], dest.path(), ExportLimits { max_bytes: 1000, max_entries: 10 })
            .unwrap_err();
        assert!(matches!(err, GitError::Refused(Refusal::TooLarge(1000))), "{err}");
        assert!(!dest.path().join("big").exists());
        let dest = tempfile::tempdir().unwrap();
        // Padded as git pads its archives: everything is read, so git never meets a closed pipe.
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 10240, 0);
        let mut reader = std::io::Cursor::new(&padded[..]);
        let totals = unpack_checked(&mut reader, dest.path(), ExportLimits::new(1 << 20)).unwrap();
        assert_eq!(reader.position() as usize, padded.len());
        assert_eq!(totals, Totals { bytes: 4101, entries: 2 });
        assert_eq!(std::fs::read(dest.path().join("small")).unwrap(), b"hello");
    }

    #[test]
    fn quoting() {
        assert_eq!(single_quote("/usr/bin/slipway"), "'/usr/bin/slipway'");
        assert_eq!(single_quote("/a'b"), r"'/a'\''b'");
    }

    #[test]
    fn the_hook_is_the_template_with_the_quoted_binary_and_nothing_else() {
        assert_eq!(PRE_RECEIVE_TEMPLATE.matches("@SLIPWAY@").count(), 1);
        assert!(PRE_RECEIVE_TEMPLATE.starts_with("#!/bin/sh\n"));
        let script = hook_script(std::path::Path::new("/opt/it's/slipway"));
        assert!(script.ends_with("exec '/opt/it'\\''s/slipway' hook pre-receive\n"), "{script}");
        assert!(!script.contains("@SLIPWAY@"));
    }
}
