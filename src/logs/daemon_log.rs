//! The daemon's own log, `logs/slipway.log`: what tracing writes, and whatever else the daemon
//! process prints on its stdout and stderr.
//!
//! It must never take the daemon down, whatever the disk does: the daemon is the router of
//! every app. So [`DaemonLog`] never fails and never panics:
//! - a write that fails (ENOSPC, EDQUOT, EIO…) drops the line and counts it; the next write
//!   that gets through starts with `… WARN slipway[daemon]: N log lines dropped (disk full)`;
//! - it rotates at [`MAX_BYTES`] (`slipway.log` → `slipway.log.1`, one old file kept), so a
//!   chatty daemon cannot fill the disk;
//! - it lets at most [`LINES_PER_SECOND`] lines through per second; what it holds back is
//!   summed up in one `… N lines suppressed` line once the second is over.
//!
//! tracing-subscriber itself `eprintln!`s when its writer fails, and `eprintln!` panics when
//! stderr cannot be written — which is exactly how a full disk used to kill the daemon when
//! stderr was `slipway.log`. The writer here always reports success, and the detached daemon's
//! stdout and stderr become a pipe drained into this log ([`DaemonLog::capture_stdio`]), which
//! cannot fail as long as the daemon lives.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use time::macros::format_description;
use time::OffsetDateTime;

use super::{ends_mid_line, rotated_name, write_some, Dropped};

/// `slipway.log` is rotated when a write takes it to this size.
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Lines per second that reach the file; the rest are counted and summed up.
pub const LINES_PER_SECOND: u32 = 100;

/// Lets through at most `per_second` lines in each one-second window (a window starts with the
/// first line after the previous one ended) and counts the lines it holds back. Pure: the
/// caller passes the time.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it, after a summary line for `suppressed` held-back lines when that is not 0.
    Write { suppressed: u64 },
    /// Drop it (it is counted).
    Suppress,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter { per_second, window: None, used: 0, suppressed: 0 }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        self.roll(now);
        if self.used < self.per_second {
            self.used += 1;
            Verdict::Write { suppressed: std::mem::take(&mut self.suppressed) }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Lines held back in a window that is over: to be summed up now, when no new line
    /// would do it.
    pub fn take_suppressed(&mut self, now: Instant) -> u64 {
        self.roll(now);
        if self.used == 0 {
            std::mem::take(&mut self.suppressed)
        } else {
            0
        }
    }

    fn roll(&mut self, now: Instant) {
        let over =
            self.window.is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1));
        if over {
            self.window = Some(now);
            self.used = 0;
        }
    }
}

/// The daemon's log. Cheap to clone; every clone writes the same file.
#[derive(Clone)]
pub struct DaemonLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    max_bytes: u64,
    /// Also copy lines to the terminal (`daemon --foreground`).
    terminal: bool,
    limiter: RateLimiter,
    dropped: Dropped,
}

thread_local! {
    /// Set while this thread writes the log: a panic inside the write must not come back in
    /// through the panic hook and wait for the lock it holds.
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

impl DaemonLog {
    /// Opens the log at `path` and makes it this process's tracing output (level from `filter`,
    /// the `log` setting, validated when the settings were loaded; `info` if it does not parse)
    /// and its panic report; the caller starts the background part it needs.
    pub fn install(path: &Path, foreground: bool, filter: &str) -> DaemonLog {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let log = DaemonLog::open(path, foreground);
        // `try_init` fails only when a subscriber is already set (tests): that one stays.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            // Its own error reports are `eprintln!`s; our writer never fails anyway.
            .log_internal_errors(false)
            .with_writer(log.clone())
            .try_init();
        log.report_panics();
        log
    }

    /// The log at `path` (opened now if possible, else by the first write that can).
    /// `terminal`: also copy every line to stderr, which is the terminal (foreground).
    pub fn open(path: &Path, terminal: bool) -> DaemonLog {
        DaemonLog::with_limits(path, terminal, MAX_BYTES, LINES_PER_SECOND)
    }

    pub fn with_limits(path: &Path, terminal: bool, max_bytes: u64, per_second: u32) -> DaemonLog {
        let mut inner = Inner {
            path: path.to_path_buf(),
            file: None,
            inode: 0,
            max_bytes,
            terminal,
            limiter: RateLimiter::new(per_second),
            dropped: Dropped::default(),
        };
        let _ = inner.reopen_if_moved();
        DaemonLog { inner: Arc::new(Mutex::new(inner)) }
    }

    /// Writes complete lines (one tracing event), if the rate limit lets them through.
    pub fn write_lines(&self, text: &[u8]) {
        self.with_inner(|inner| {
            if let Verdict::Write { suppressed } = inner.limiter.check(Instant::now()) {
                inner.write_suppressed(suppressed);
                inner.write(text);
            }
        });
    }

    /// Writes a line past the rate limit (a panic report must not be the line held back).
    pub fn write_unlimited(&self, text: &[u8]) {
        self.with_inner(|inner| inner.write(text));
    }

    /// Writes the summaries that are due when no new line comes to carry them: lines held
    /// back in a second that is over, lines a full disk made us drop. Call it every second.
    pub fn tick(&self) {
        self.with_inner(|inner| {
            let suppressed = inner.limiter.take_suppressed(Instant::now());
            inner.write_suppressed(suppressed);
            if !inner.dropped.is_clear() {
                inner.write(b"");
            }
        });
    }

    fn with_inner(&self, f: impl FnOnce(&mut Inner)) {
        if WRITING.with(|w| w.replace(true)) {
            return; // re-entered from a panic inside a write: drop it rather than deadlock
        }
        /// Clears the flag however `f` ends, a panic included.
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                WRITING.with(|w| w.set(false));
            }
        }
        let _done = Done;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner);
    }

    /// Sends the process's panics here, synchronously and past the rate limit: in the
    /// detached daemon stderr is a pipe into this log, and a panic that ends the process
    /// would not wait for it to be drained.
    pub fn report_panics(&self) {
        let log = self.clone();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            let backtrace = std::backtrace::Backtrace::capture();
            let mut text = format!("{} ERROR slipway: thread '{name}' {info}\n", stamp());
            if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
                text.push_str(&format!("{backtrace}\n"));
            }
            log.write_unlimited(text.as_bytes());
        }));
    }

    /// Points this process's stdout and stderr (fds 1 and 2) at a pipe that a thread drains
    /// into this log, line by line and rate-limited, so nothing printed there can fail (an
    /// `eprintln!` to a full disk panics) or grow the file without bound. The thread also
    /// calls [`DaemonLog::tick`] every second. At exit (`exit(3)`, so also after `main`
    /// returns or `std::process::exit`) what is still in the pipe is written synchronously:
    /// the last words of a daemon that fails are not lost. For the detached daemon, whose
    /// stdout and stderr were `slipway.log` itself. Once per process.
    pub fn capture_stdio(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if STDIO.get().is_some() {
            return Err(io::Error::other("stdout and stderr are already captured"));
        }
        let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(pipe) => pipe,
            Err(err) => {
                // No pipe (out of fds?): /dev/null still beats a file that can fill up.
                if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
                    for fd in [1, 2] {
                        let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
                    }
                }
                let _ = self.start_ticking();
                return Err(err.into());
            }
        };
        // The drain reads without blocking (it polls first); writers to fds 1 and 2 do block
        // when the pipe is full rather than fail, which would make `eprintln!` panic.
        let flags =
            nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nonblocking))
            .map_err(io::Error::from)?;
        let stdio = STDIO.get_or_init(|| {
            Mutex::new(Stdio { pipe: File::from(read), pending: Vec::new(), log: self.clone() })
        });
        for fd in [1, 2] {
            nix::unistd::dup2(write.as_raw_fd(), fd).map_err(io::Error::from)?;
        }
        // Fds 1 and 2 keep the pipe open for as long as the process lives.
        drop(write);
        // A copy to stderr would now come back through the pipe.
        self.with_inner(|inner| inner.terminal = false);
        // SAFETY: registers a plain `extern "C" fn()` that only uses statics.
        unsafe {
            libc::atexit(drain_at_exit);
        }
        let fd = stdio.lock().unwrap_or_else(PoisonError::into_inner).pipe.as_raw_fd();
        std::thread::Builder::new().name("stdio-to-log".into()).spawn(move || loop {
            // Nothing in here should panic; if something does, the thread goes on.
            let _ = std::panic::catch_unwind(|| drain_when_ready(fd, stdio));
        })?;
        Ok(())
    }

    /// Calls [`DaemonLog::tick`] every second on a thread of its own (when stdout and stderr
    /// are not captured, which does it too).
    pub fn start_ticking(&self) -> io::Result<()> {
        let log = self.clone();
        std::thread::Builder::new().name("daemon-log".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            log.tick();
        })?;
        Ok(())
    }
}

/// The captured stdout and stderr: the pipe's read end, a line not finished yet, and the log.
struct Stdio {
    pipe: File,
    pending: Vec<u8>,
    log: DaemonLog,
}

static STDIO: OnceLock<Mutex<Stdio>> = OnceLock::new();

/// One round of the `stdio-to-log` thread: wait up to a second for output, then move it into
/// the log, or tick when there was none. It reads and writes under the lock, so when
/// [`drain_at_exit`] gets the lock, nothing read is left unwritten.
fn drain_when_ready(fd: std::os::fd::RawFd, stdio: &Mutex<Stdio>) {
    // SAFETY: the pipe's read end lives in a static and is never closed.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut fds = [nix::poll::PollFd::new(borrowed, nix::poll::PollFlags::POLLIN)];
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap_or(0);
    let mut stdio = stdio.lock().unwrap_or_else(PoisonError::into_inner);
    if ready == 0 {
        stdio.log.tick();
    } else {
        stdio.drain(false);
    }
}

/// Registered with `atexit`: writes what the process printed last, however it exits.
extern "C" fn drain_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(stdio) = STDIO.get() {
            let mut stdio = stdio.lock().unwrap_or_else(PoisonError::into_inner);
            stdio.drain(true);
            stdio.log.tick();
        }
    });
}

impl Stdio {
    /// Reads what is in the pipe (without waiting) and writes its whole lines; `all` also
    /// writes an unfinished last line.
    fn drain(&mut self, all: bool) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: all read
            }
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                self.log.write_lines(&line);
            }
            if self.pending.len() > 16 * 1024 {
                self.pending.push(b'\n');
                self.log.write_lines(&std::mem::take(&mut self.pending));
            }
        }
        if all && !self.pending.is_empty() {
            self.pending.push(b'\n');
            self.log.write_lines(&std::mem::take(&mut self.pending));
        }
    }
}

impl Inner {
    fn write_suppressed(&mut self, suppressed: u64) {
        if suppressed > 0 {
            let line = format!(
                "{}  WARN slipway[daemon]: {suppressed} lines suppressed (more than {} a second)\n",
                stamp(),
                self.limiter.per_second
            );
            self.write(line.as_bytes());
        }
    }

    /// One write of `text` (complete lines), after the dropped-lines summary if one is due;
    /// what does not make it is counted. Then the rotation check.
    fn write(&mut self, text: &[u8]) {
        if self.terminal && !text.is_empty() {
            // The terminal is a courtesy copy: if it is gone, so be it.
            let _ = io::stderr().write_all(text);
        }
        if self.reopen_if_moved().is_err() {
            self.dropped.account(&[], text, 0);
            return;
        }
        let Some(file) = self.file.as_mut() else { return };
        if self.dropped.lines > 0 && !self.dropped.cut && ends_mid_line(file) {
            self.dropped.cut = true; // a shim's diagnostic was cut by the same full disk
        }
        let prefix = self
            .dropped
            .prefix(|n| format!("{}  WARN slipway[daemon]: {n} log lines dropped (disk full)\n", stamp()));
        let (written, _) = write_some(file, &[prefix.as_slice(), text].concat());
        self.dropped.account(&prefix, text, written);
        if file.metadata().is_ok_and(|m| m.len() >= self.max_bytes) {
            self.rotate();
        }
    }

    /// Opens the file if it is not open, or again if it was moved or deleted (by our rotation
    /// or by an operator).
    fn reopen_if_moved(&mut self) -> io::Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(m) if self.file.is_some() && m.ino() == self.inode => Ok(()),
            // A router that dropped root may no longer look into `logs/`: it keeps writing
            // the file it opened (which is then never rotated).
            Err(e) if self.file.is_some() && e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            _ => {
                let file = crate::fsutil::open_append(&self.path)?;
                self.inode = file.metadata()?.ino();
                self.file = Some(file);
                Ok(())
            }
        }
    }

    /// `slipway.log` → `slipway.log.1` (replacing it); the next write opens a new file.
    /// Shims hold `slipway.log` as their stderr and keep writing into `.1`: those are rare
    /// diagnostics, and the file no longer grows once the next rotation removes it.
    fn rotate(&mut self) {
        if std::fs::rename(&self.path, rotated_name(&self.path, 1)).is_ok() {
            self.file = None;
        }
    }
}

/// Now, in tracing's own format (`2026-11-24T18:00:00.123456Z`), for the lines written here.
fn stamp() -> String {
    let t = OffsetDateTime::now_utc();
    t.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"))
        .unwrap_or_else(|_| t.to_string())
}

/// `&DaemonLog` is tracing's writer: one `write` per event, always "written" whatever the
/// disk did (a failure is counted here), so tracing never has an error to report.
impl Write for &DaemonLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_lines(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for DaemonLog {
    type Writer = &'a DaemonLog;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_lets_n_lines_a_second_through_and_sums_up_the_rest() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let w = |suppressed| Verdict::Write { suppressed };
        let s = Verdict::Suppress;
        let mut r = RateLimiter::new(3);
        // (time in ms, expected verdict)
        let steps = [
            (0, w(0)),
            (10, w(0)),
            (20, w(0)),
            (30, s),
            (999, s),
            (1000, w(2)), // a new window: the first line carries the summary
            (1001, w(0)),
            (1500, w(0)),
            (1600, s),
            (5000, w(1)), // a window starts with the first line after the last one ended
            (5999, w(0)),
            (6001, w(0)),
        ];
        for (ms, expected) in steps {
            assert_eq!(r.check(at(ms)), expected, "at {ms} ms");
        }
    }

    #[test]
    fn held_back_lines_are_summed_up_when_their_second_is_over_even_without_new_lines() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = RateLimiter::new(1);
        assert_eq!(r.check(at(0)), Verdict::Write { suppressed: 0 });
        for ms in 1..5 {
            assert_eq!(r.check(at(ms)), Verdict::Suppress);
        }
        assert_eq!(r.take_suppressed(at(500)), 0, "the window is still open");
        assert_eq!(r.take_suppressed(at(1000)), 4);
        assert_eq!(r.take_suppressed(at(1100)), 0, "summed up once");
        assert_eq!(r.check(at(1200)), Verdict::Write { suppressed: 0 });
    }

    fn messages(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').map_or(l, |(_stamp, rest)| rest).trim_start().to_string())
            .collect()
    }

    #[test]
    fn rate_limited_lines_are_summed_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.log");
        let log = DaemonLog::with_limits(&path, false, MAX_BYTES, 5);
        for i in 0..50 {
            log.write_lines(format!("t INFO line {i}\n").as_bytes());
        }
        assert_eq!(messages(&path).len(), 5);
        std::thread::sleep(Duration::from_millis(1100));
        log.tick();
        let all = messages(&path);
        assert_eq!(all.len(), 6, "{all:?}");
        assert_eq!(all[5], "WARN slipway[daemon]: 45 lines suppressed (more than 5 a second)");
    }

    #[test]
    fn a_full_disk_drops_and_counts_then_reports_and_the_file_rotates_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.log");
        crate::logs::tests::plant_full_disk(&path);
        let log = DaemonLog::with_limits(&path, false, 1000, 1000);
        for i in 0..7 {
            // Through the tracing side: never an error, never a panic.
            assert_eq!(
                (&log).write(format!("t INFO lost {i}\n").as_bytes()).unwrap(),
                "t INFO lost 0\n".len()
            );
        }
        log.tick();
        std::fs::remove_file(&path).unwrap();
        log.tick();
        log.write_lines(b"t INFO back\n");
        assert_eq!(messages(&path), ["WARN slipway[daemon]: 7 log lines dropped (disk full)", "INFO back"]);

        for i in 0..100 {
            log.write_lines(format!("t INFO filler {i:03} {}\n", "x".repeat(20)).as_bytes());
        }
        let old = rotated_name(&path, 1);
        assert!(old.exists(), "rotated at the cap");
        assert!(std::fs::metadata(&old).unwrap().len() < 1100);
        assert!(std::fs::metadata(&path).unwrap().len() < 1000);
        assert!(!rotated_name(&path, 2).exists(), "one old file is kept");
        assert_eq!(messages(&path).last().unwrap(), &format!("INFO filler 099 {}", "x".repeat(20)));
    }
}
