//! Bare repositories: creating them, installing the pre-receive hook, and exporting a pushed
//! commit into a build directory. Also the parser for commands that arrive over SSH.

pub mod ssh_command;

use std::io;
use std::os::unix::fs::PermissionsExt;
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
    let tmp = hooks.join(".pre-receive.tmp");
    std::fs::write(&tmp, script).map_err(io_err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io_err)?;
    std::fs::rename(&tmp, &path).map_err(io_err)?;
    Ok(())
}

/// The hook script for `slipway_binary`.
pub fn hook_script(slipway_binary: &Path) -> String {
    PRE_RECEIVE_TEMPLATE.replacen("@SLIPWAY@", &single_quote(&slipway_binary.to_string_lossy()), 1)
}

/// POSIX shell single-quoting: the only quoting with no special characters inside.
fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes the tree of `commit` into `dest` with `git archive | tar`. Inside a pre-receive hook
/// the pushed objects are quarantined; git's environment (GIT_DIR, GIT_QUARANTINE_PATH,
/// GIT_OBJECT_DIRECTORY…) is inherited on purpose so `git archive` can see them.
pub fn export_commit(repo: &Path, commit: &str, dest: &Path) -> Result<(), GitError> {
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
    let mut archive = tar::Archive::new(stdout);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    // `unpack` refuses entries that would land outside `dest` (absolute paths, `..`, and writes
    // through symlinks that point out of the tree).
    let unpacked = archive.unpack(dest);
    let out = child.wait_with_output().map_err(|source| GitError::Spawn { action: "archive", source })?;
    if !out.status.success() {
        return Err(GitError::Failed {
            action: "archive",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    unpacked.map_err(GitError::Unpack)
}

#[cfg(test)]
mod tests {
    use super::{hook_script, single_quote, PRE_RECEIVE_TEMPLATE};

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
