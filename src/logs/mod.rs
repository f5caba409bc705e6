//! The merged per-app log (DESIGN.md, "Log format"): `logs/<app>/app.log`, one event per line,
//! `2026-11-24T18:00:00.123456+00:00 source[dyno]: message`.
//!
//! Every writer (dyno shims, the daemon, the build hook, the CLI) appends whole lines with a
//! single `write(2)` on an `O_APPEND` descriptor, so lines from different writers never
//! interleave inside a line, and nothing needs a central log process that could lose lines when
//! it dies. Rotation is shared the same way: whichever writer pushes `app.log` past the size cap
//! rotates it (`app.log` → `app.log.1` → … under a flock), and every other writer notices the
//! new inode before its next write and reopens. A line written by a writer that had not noticed
//! yet lands at the end of `app.log.1`: late, never lost.

pub mod follow;
pub mod read;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::timefmt;

/// Who wrote a line: `app` (dyno output), `slipway` (platform events), `router`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    App,
    Slipway,
    Router,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Slipway => "slipway",
            Source::Router => "router",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "app" => Some(Source::App),
            "slipway" => Some(Source::Slipway),
            "router" => Some(Source::Router),
            _ => None,
        }
    }
}

/// How big one log file may grow and how many files (app.log and its rotations) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    pub max_bytes: u64,
    /// Files in all: `app.log` plus `app.log.1` … `app.log.{files-1}`.
    pub files: u32,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy { max_bytes: 20 * 1024 * 1024, files: 5 }
    }
}

impl LogPolicy {
    /// The policy of `home`'s settings (`log_max_mb`, `log_files` in slipway.toml, overridden by
    /// this process's environment), so every writer (shims, the daemon, the build hook, the CLI,
    /// `ssh-serve` under sshd's environment) rotates by the same rules. A bad value falls back to
    /// the default here: the daemon refuses to start with one, and so does every command that
    /// loads the settings, so the operator hears about it there.
    pub fn for_home(home: &crate::home::Home) -> LogPolicy {
        crate::settings::Settings::load(home).map(|s| s.log_policy).unwrap_or_default()
    }

    /// The policy of the home an app log belongs to (`<home>/logs/<app>/app.log`).
    pub fn for_app_log(path: &Path) -> LogPolicy {
        let home = path.ancestors().nth(3).unwrap_or(Path::new("."));
        LogPolicy::for_home(&crate::home::Home::at(home))
    }
}

/// Formats one event as a complete log line, newline included. Embedded newlines would break
/// the one-event-per-line rule, so callers split first; stray `\r` is dropped here.
pub fn format_line(stamp: &str, source: Source, dyno: &str, message: &str) -> String {
    let message = message.trim_end_matches(['\r', '\n']);
    format!("{stamp} {}[{dyno}]: {message}\n", source.as_str())
}

/// An append-only, rotating handle on one app's log.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    inode: u64,
    policy: LogPolicy,
}

impl LogWriter {
    /// Opens `<home>/logs/<app>/app.log` with the policy of that home's settings.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        LogWriter::with_policy(path, LogPolicy::for_app_log(path))
    }

    pub fn with_policy(path: &Path, policy: LogPolicy) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (file, inode) = open_append(path)?;
        Ok(LogWriter { path: path.to_path_buf(), file, inode, policy })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event per line of `message`, all stamped now, in one `write`.
    pub fn event(&mut self, source: Source, dyno: &str, message: &str) -> io::Result<()> {
        let stamp = timefmt::now();
        let mut buf = String::new();
        for line in message.split('\n') {
            buf.push_str(&format_line(&stamp, source, dyno, line));
        }
        self.write_raw(buf.as_bytes())
    }

    /// Appends already formatted, complete lines in one `write_all`, rotating when the file
    /// has reached its cap.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.follow_rotation()?;
        self.file.write_all(bytes)?;
        if self.file.metadata()?.len() >= self.policy.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Reopens `app.log` if another writer rotated it away from under us.
    fn follow_rotation(&mut self) -> io::Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.ino() == self.inode => Ok(()),
            Ok(_) | Err(_) => {
                let (file, inode) = open_append(&self.path)?;
                self.file = file;
                self.inode = inode;
                Ok(())
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let lock_path = self.path.with_file_name(".rotate.lock");
        let lock_file = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        // Under the lock: someone else may have rotated already.
        let current = std::fs::metadata(&self.path)?;
        if current.ino() == self.inode && current.len() >= self.policy.max_bytes {
            let name = |i: u32| rotated_name(&self.path, i);
            let _ = std::fs::remove_file(name(self.policy.files.max(1)));
            for i in (1..self.policy.files).rev() {
                let from = if i == 1 { self.path.clone() } else { name(i - 1) };
                match std::fs::rename(&from, name(i)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            if self.policy.files <= 1 {
                std::fs::remove_file(&self.path)?;
            }
        }
        self.follow_rotation()
    }
}

/// `app.log.3` for `app.log` and 3.
pub fn rotated_name(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let inode = file.metadata()?.ino();
    Ok((file, inode))
}

/// Appends a platform event to an app's log, opening and closing the file. For rare events
/// (deploys, state changes); hot paths keep a [`LogWriter`].
pub fn append_event(path: &Path, source: Source, dyno: &str, message: &str) {
    let result = LogWriter::open(path).and_then(|mut w| w.event(source, dyno, message));
    if let Err(err) = result {
        tracing::warn!(path = %path.display(), %err, "could not write log event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape() {
        let l = format_line("2026-11-24T18:00:00.123456+00:00", Source::App, "web.1", "hi\r\n");
        assert_eq!(l, "2026-11-24T18:00:00.123456+00:00 app[web.1]: hi\n");
    }

    #[test]
    fn writers_use_the_policy_of_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("slipway.toml"), "log_max_mb = 0.5\nlog_files = 7\n").unwrap();
        let want = LogPolicy { max_bytes: 512 * 1024, files: 7 };
        let w = LogWriter::open(&dir.path().join("logs/app1/app.log")).unwrap();
        assert_eq!(w.policy, want);
        std::fs::write(dir.path().join("slipway.toml"), "log_files = 0\n").unwrap();
        let w = LogWriter::open(&dir.path().join("logs/app1/app.log")).unwrap();
        assert_eq!(w.policy, LogPolicy::default());
    }

    #[test]
    fn rotation_keeps_the_newest_files_and_other_writers_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let policy = LogPolicy { max_bytes: 2_000, files: 3 };
        let mut a = LogWriter::with_policy(&path, policy).unwrap();
        let mut b = LogWriter::with_policy(&path, policy).unwrap();
        for i in 0..200 {
            let w = if i % 2 == 0 { &mut a } else { &mut b };
            w.event(Source::App, "web.1", &format!("line {i:04} {}", "x".repeat(40))).unwrap();
        }
        assert!(path.exists() && rotated_name(&path, 1).exists() && rotated_name(&path, 2).exists());
        assert!(!rotated_name(&path, 3).exists(), "more files than the policy allows");
        for p in [path.clone(), rotated_name(&path, 1), rotated_name(&path, 2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len < 2_000 + 200, "{} is {len} bytes", p.display());
        }
        // The newest lines are all there, in order, across the files.
        let all = read::last_lines(&path, 1000, &read::Filter::default()).unwrap();
        let numbers: Vec<u32> =
            all.iter().filter_map(|l| l.split("line ").nth(1)?.get(..4)?.parse().ok()).collect();
        assert_eq!(numbers.last(), Some(&199));
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }
}
