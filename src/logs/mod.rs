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
//!
//! A full disk (or quota, or an I/O error) never stops a writer: lines it cannot write are
//! dropped and counted ([`Dropped`]), and its next write that gets through starts with
//! `slipway[<writer>]: N log lines dropped (disk full)`.

pub mod daemon_log;
pub mod follow;
pub mod read;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// Lines a writer could not get into its file (disk full, quota, I/O error), waiting to be
/// reported, and whether a failed write left a piece of a line at the end of the file.
///
/// A writer never retries or buffers lines it could not write: they are dropped and counted,
/// so a full disk cannot make a dyno wait or a process grow. The next write that gets through
/// is preceded by one summary line (see [`Dropped::prefix`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Lines dropped since the last summary that reached the file.
    pub lines: u64,
    /// The file ends in the middle of a line (a write that got part of its bytes out): the
    /// next write starts with a newline so that its lines stay whole.
    pub cut: bool,
}

impl Dropped {
    /// Nothing to report.
    pub fn is_clear(&self) -> bool {
        self.lines == 0 && !self.cut
    }

    /// What must go before the next batch: a newline ending a cut line, then the summary line
    /// `summary(lines)` (complete, newline included) when lines were dropped.
    pub fn prefix(&self, summary: impl FnOnce(u64) -> String) -> Vec<u8> {
        let mut out = Vec::new();
        if self.cut {
            out.push(b'\n');
        }
        if self.lines > 0 {
            out.extend_from_slice(summary(self.lines).as_bytes());
        }
        out
    }

    /// Accounts for one write of `prefix` followed by `bytes` (complete lines), of which the
    /// first `written` bytes reached the file.
    pub fn account(&mut self, prefix: &[u8], bytes: &[u8], written: usize) {
        if written > 0 {
            let last =
                if written <= prefix.len() { prefix[written - 1] } else { bytes[written - prefix.len() - 1] };
            self.cut = last != b'\n';
        }
        if written >= prefix.len() && self.lines > 0 {
            self.lines = 0; // the summary is in the file
        }
        let unwritten = &bytes[written.saturating_sub(prefix.len()).min(bytes.len())..];
        self.lines += unwritten.iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The summary line a [`LogWriter`] writes once it can write again after dropping lines.
pub fn dropped_line(stamp: &str, writer: &str, lines: u64) -> String {
    format_line(stamp, Source::Slipway, writer, &format!("{lines} log lines dropped (disk full)"))
}

/// Writes as much of `bytes` as the file takes: (bytes written, the error that stopped it).
/// Unlike `write_all` it says how far it got, so a cut line can be ended and counted.
pub fn write_some(file: &mut impl Write, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < bytes.len() {
        match file.write(&bytes[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// An append-only, rotating handle on one app's log.
///
/// Writing never fails loudly: when the file cannot be opened or written (ENOSPC, EDQUOT,
/// EIO…) the lines are dropped and counted, and the next write that gets through starts with
/// `slipway[<name>]: N log lines dropped (disk full)`, `name` being the writer's (a shim's
/// dyno, `router` for the router's lines). The error is still returned, for a diagnostic.
pub struct LogWriter {
    path: PathBuf,
    /// `None` until the file could be opened (see [`LogWriter::deferred`]).
    file: Option<File>,
    inode: u64,
    policy: LogPolicy,
    name: String,
    dropped: Dropped,
}

impl LogWriter {
    /// Opens `<home>/logs/<app>/app.log` with the policy of that home's settings.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        LogWriter::with_policy(path, LogPolicy::for_app_log(path))
    }

    pub fn with_policy(path: &Path, policy: LogPolicy) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            crate::fsutil::create_dir_all_owned(dir)?;
        }
        let (file, inode) = open_append(path)?;
        Ok(LogWriter { file: Some(file), inode, ..LogWriter::unopened(path, policy) })
    }

    /// Like [`LogWriter::with_policy`] but never fails: if the file cannot be opened now, it
    /// is opened by the first write that can (lines before that are dropped and counted).
    pub fn deferred(path: &Path, policy: LogPolicy) -> LogWriter {
        LogWriter::with_policy(path, policy).unwrap_or_else(|_| LogWriter::unopened(path, policy))
    }

    fn unopened(path: &Path, policy: LogPolicy) -> LogWriter {
        LogWriter {
            path: path.to_path_buf(),
            file: None,
            inode: 0,
            policy,
            name: "slipway".into(),
            dropped: Dropped::default(),
        }
    }

    /// Names the writer in its `N log lines dropped` line (default `slipway`).
    pub fn named(mut self, name: &str) -> LogWriter {
        self.name = name.to_string();
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines dropped and not yet reported in the file.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Counts `lines` more as dropped (lines its caller had to drop before they got here).
    pub fn add_dropped(&mut self, lines: u64) {
        self.dropped.lines += lines;
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

    /// Appends already formatted, complete lines in one `write`, rotating when the file has
    /// reached its cap. On an error the lines that did not make it are dropped and counted
    /// (a rotation that fails after the write drops nothing; it is tried again next time).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.follow_rotation() {
            self.dropped.account(&[], bytes, 0);
            return Err(e);
        }
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        if self.dropped.lines > 0 && !self.dropped.cut && ends_mid_line(file) {
            // Another writer's write was cut by the same full disk: start on a line of our own.
            self.dropped.cut = true;
        }
        let (stamp, name) = (timefmt::now, &self.name);
        let prefix = self.dropped.prefix(|n| dropped_line(&stamp(), name, n));
        let (written, result) = if prefix.is_empty() {
            write_some(file, bytes)
        } else {
            write_some(file, &[prefix.as_slice(), bytes].concat())
        };
        self.dropped.account(&prefix, bytes, written);
        result?;
        if file.metadata()?.len() >= self.policy.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Writes the pending `N log lines dropped` line, if any, without waiting for new lines.
    pub fn flush_dropped(&mut self) -> io::Result<()> {
        if self.dropped.is_clear() {
            return Ok(());
        }
        self.write_raw(b"")
    }

    /// Opens `app.log` if it is not open yet, or reopens it if another writer rotated it away
    /// from under us.
    fn follow_rotation(&mut self) -> io::Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(m) if self.file.is_some() && m.ino() == self.inode => Ok(()),
            Ok(_) | Err(_) => {
                let (file, inode) = open_append(&self.path)?;
                self.file = Some(file);
                self.inode = inode;
                Ok(())
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let lock_path = self.path.with_file_name(".rotate.lock");
        let lock_file = crate::fsutil::open_append(&lock_path)?;
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

/// Whether the file's last byte is not a newline: a write cut short by a full disk left part
/// of a line there. Only asked when recovering from dropped lines (one `pread`).
pub fn ends_mid_line(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
    let mut last = [b'\n'];
    len > 0 && file.read_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
}

/// Opened for reading too, for [`ends_mid_line`]; as root never through a link, and given to
/// the home's owner (`fsutil::open_append`).
fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = crate::fsutil::open_append(path)?;
    let inode = file.metadata()?.ino();
    Ok((file, inode))
}

/// Events [`append_event`] could not write, per log file and dyno, reported before the next
/// event that gets into that file. Only a long-lived process (the daemon) ever reports them; a
/// CLI command that could not log has already said so on its terminal.
static PENDING: Mutex<Vec<(PathBuf, String, Dropped)>> = Mutex::new(Vec::new());

/// Appends a platform event to an app's log, opening and closing the file. For rare events
/// (deploys, state changes); hot paths keep a [`LogWriter`]. Never fails: an event that cannot
/// be written is dropped, counted, and reported in the file once it can be written again.
pub fn append_event(path: &Path, source: Source, dyno: &str, message: &str) {
    append_event_with(path, LogPolicy::for_app_log(path), source, dyno, message);
}

/// [`append_event`] for a caller that knows the home's rotation policy already (the daemon,
/// which read its settings at start): no settings file is read per event.
pub fn append_event_with(path: &Path, policy: LogPolicy, source: Source, dyno: &str, message: &str) {
    let mut pending = PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut writer = LogWriter::deferred(path, policy).named(dyno);
    let earlier = pending.iter().position(|(p, d, _)| p == path && d == dyno);
    if let Some(i) = earlier {
        writer.dropped = pending.swap_remove(i).2;
    }
    let result = writer.event(source, dyno, message);
    let was_clear = earlier.is_none();
    if !writer.dropped.is_clear() {
        pending.push((path.to_path_buf(), dyno.to_string(), writer.dropped));
    }
    match result {
        // The file takes lines again: report what other dynos' events lost too.
        Ok(()) => pending.retain_mut(|(p, d, dropped)| {
            if p != path {
                return true;
            }
            let mut other = LogWriter::deferred(path, policy).named(d);
            other.dropped = *dropped;
            let _ = other.flush_dropped();
            *dropped = other.dropped;
            !dropped.is_clear()
        }),
        // One warning per file and dyno until it works again, not one per event.
        Err(err) if was_clear => {
            tracing::warn!(path = %path.display(), %err, "could not write log event; dropping events until it works");
        }
        Err(_) => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    #[test]
    fn dropped_lines_are_counted_and_cut_lines_ended() {
        const SUMMARY: &str = "S\n";
        let cases: &[(&str, Dropped, &str, usize, Dropped)] = &[
            // (case, before, bytes, written, after)
            ("all written", Dropped::default(), "a\nb\n", 4, Dropped { lines: 0, cut: false }),
            ("nothing written", Dropped::default(), "a\nb\n", 0, Dropped { lines: 2, cut: false }),
            ("cut inside the second line", Dropped::default(), "a\nbb\n", 3, Dropped { lines: 1, cut: true }),
            ("cut right after a line", Dropped::default(), "a\nb\n", 2, Dropped { lines: 1, cut: false }),
            (
                "more dropped, nothing written",
                Dropped { lines: 5, cut: false },
                "a\n",
                0,
                Dropped { lines: 6, cut: false },
            ),
            (
                "summary then all",
                Dropped { lines: 5, cut: false },
                "a\n",
                4,
                Dropped { lines: 0, cut: false },
            ),
            ("summary only", Dropped { lines: 5, cut: false }, "a\nb\n", 2, Dropped { lines: 2, cut: false }),
            ("summary cut", Dropped { lines: 5, cut: false }, "a\n", 1, Dropped { lines: 6, cut: true }),
            (
                "cut ended, summary, all",
                Dropped { lines: 5, cut: true },
                "a\n",
                5,
                Dropped { lines: 0, cut: false },
            ),
            ("cut ended only", Dropped { lines: 5, cut: true }, "a\n", 1, Dropped { lines: 6, cut: false }),
            ("cut, nothing", Dropped { lines: 0, cut: true }, "a\n", 0, Dropped { lines: 1, cut: true }),
            (
                "cut ended, line cut",
                Dropped { lines: 0, cut: true },
                "abc\n",
                2,
                Dropped { lines: 1, cut: true },
            ),
            (
                "flush only, written",
                Dropped { lines: 3, cut: false },
                "",
                2,
                Dropped { lines: 0, cut: false },
            ),
            ("flush only, failed", Dropped { lines: 3, cut: false }, "", 0, Dropped { lines: 3, cut: false }),
        ];
        for (case, before, bytes, written, after) in cases {
            let mut d = *before;
            let prefix = d.prefix(|n| {
                assert_eq!(n, before.lines, "{case}");
                SUMMARY.to_string()
            });
            let expected_prefix =
                [if before.cut { "\n" } else { "" }, if before.lines > 0 { SUMMARY } else { "" }].concat();
            assert_eq!(prefix, expected_prefix.as_bytes(), "{case}");
            d.account(&prefix, bytes.as_bytes(), *written);
            assert_eq!(d, *after, "{case}");
        }
    }

    /// Makes `path` answer every write with ENOSPC, like a full disk: `/dev/full` itself, as a
    /// device node of its own when root (root writers never follow a link in the home:
    /// `fsutil::open_append`), else as a link to it.
    pub(crate) fn plant_full_disk(path: &Path) {
        if crate::fsutil::is_root() {
            let dev = libc::makedev(1, 7);
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a NUL-terminated path and integer arguments.
            assert_eq!(
                unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) },
                0,
                "mknod {}",
                path.display()
            );
        } else {
            std::os::unix::fs::symlink("/dev/full", path).unwrap();
        }
    }

    /// A log on a full disk (`/dev/full` answers every write with ENOSPC) drops and counts;
    /// once the path is a writable file again, the count comes first, then the new lines.
    #[test]
    fn a_full_disk_drops_lines_and_reports_them_once_it_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        plant_full_disk(&path);
        let mut w = LogWriter::with_policy(&path, LogPolicy::default()).unwrap().named("web.1");
        for i in 0..3 {
            let err = w.event(Source::App, "web.1", &format!("lost {i}\nlost too")).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        }
        assert_eq!(w.dropped(), Dropped { lines: 6, cut: false });
        assert!(w.flush_dropped().is_err());

        std::fs::remove_file(&path).unwrap();
        w.event(Source::App, "web.1", "back").unwrap();
        w.event(Source::App, "web.1", "again").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let messages: Vec<&str> = text.lines().map(|l| &l[33..]).collect();
        assert_eq!(
            messages,
            ["slipway[web.1]: 6 log lines dropped (disk full)", "app[web.1]: back", "app[web.1]: again"]
        );
        assert!(w.dropped().is_clear());

        // Without new lines, flush_dropped writes the count on its own.
        std::fs::remove_file(&path).unwrap();
        plant_full_disk(&path);
        let _ = w.event(Source::App, "web.1", "lost");
        std::fs::remove_file(&path).unwrap();
        w.flush_dropped().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("slipway[web.1]: 1 log lines dropped (disk full)\n"), "{text}");
    }

    #[test]
    fn a_recovering_writer_starts_on_a_new_line_after_another_writers_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        plant_full_disk(&path);
        let mut w = LogWriter::with_policy(&path, LogPolicy::default()).unwrap().named("web.1");
        assert!(w.event(Source::App, "web.1", "lost").is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "2026-11-24T18:00:00.123456+00:00 app[worker.1]: cut by the d").unwrap();
        w.event(Source::App, "web.1", "back").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].ends_with(" slipway[web.1]: 1 log lines dropped (disk full)"), "{text}");
        assert!(lines[2].ends_with(" app[web.1]: back"), "{text}");
    }

    #[test]
    fn append_event_reports_what_it_dropped_per_dyno() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        plant_full_disk(&path);
        append_event(&path, Source::Slipway, "web.1", "State changed from starting to up");
        append_event(&path, Source::Slipway, "web.1", "Stopping");
        append_event(&path, Source::Slipway, "worker.1", "Restarting");
        std::fs::remove_file(&path).unwrap();
        append_event(&path, Source::Slipway, "web.1", "back");
        let text = std::fs::read_to_string(&path).unwrap();
        let messages: Vec<&str> = text.lines().map(|l| &l[33..]).collect();
        assert_eq!(
            messages,
            [
                "slipway[web.1]: 2 log lines dropped (disk full)",
                "slipway[web.1]: back",
                "slipway[worker.1]: 1 log lines dropped (disk full)"
            ]
        );
        append_event(&path, Source::Slipway, "worker.1", "fine");
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("slipway[worker.1]: fine\n"));
    }
}
