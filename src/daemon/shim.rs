//! The per-dyno shim (`slipway dyno-shim`): a small process that owns one dyno's output.
//!
//! The daemon spawns one shim per dyno, in a session of its own. The shim starts the dyno as
//! `bash -c COMMAND` (`/bin/sh -c` without bash; the line exactly as written, as on Heroku) in a
//! new process group, reports the dyno's pid and start time on its stdout (then lets go of it),
//! and from then on turns every line the dyno prints into a log line appended straight to the
//! app's log. Because the shim — not the daemon — holds the pipes and writes the log, the daemon
//! can restart or crash without the dyno blocking on a full pipe, dying of SIGPIPE, or losing a
//! single line.
//!
//! The dyno's main process (the pid the daemon records, and the process group's id) is the shell.
//! bash execs a simple command (`FOO=1 gunicorn app:app`) and the last command of a list
//! (`cd src && gunicorn app:app`), so the app itself becomes the main process; for a pipeline, a
//! `;` list or under dash (which never execs) the shell stays as the app's parent. Signals go to
//! the whole group either way. When the main process ends, how it ended decides:
//! - killed by SIGTERM or SIGINT: a stop is under way, and every process of the group got the
//!   signal too. A shell dies of it at once while its app shuts down gracefully, so the shim
//!   waits until the group is empty (it is the subreaper of the dyno's orphans and reaps them);
//!   whatever is still there after the grace period (the daemon's `stop_timeout`, given as
//!   `--stop-timeout`; the home's settings for a shim of an older daemon;
//!   counted from the main process's death) is SIGKILLed. The daemon's own SIGKILL cannot do it
//!   then: it only signals the recorded main process, which is gone.
//! - anything else (an exit, SIGKILL, a crash): the dyno is over, and what is left of its group
//!   is SIGKILLed at once (a dyno is all of its processes).
//!
//! Then the shim writes `Process exited with status N` (the main process's status) and exits;
//! the daemon notices through a pidfd.
//!
//! Limits: given `--cgroup`, the shim creates the dyno's cgroup with its limits (memory hard
//! limit at twice `--memory`, `--max-pids`, the default CPU weight; see [`crate::cgroup`])
//! before the dyno starts, and the dyno joins it between fork and exec (a `write` of "0" to a
//! file opened beforehand: v1 `tasks`, v2 `cgroup.procs`; see [`crate::cgroup::join_file`]), so
//! not one of its processes runs outside. A watcher thread reads the cgroup's memory twice a
//! second: above the quota it logs `Error R14 (Memory quota exceeded)` (at most every 20 s
//! while over); when the kernel OOM-killed in the cgroup (at twice the quota) it logs `Error
//! R15 (Memory quota vastly exceeded)` and kills the dyno, which the daemon then restarts like
//! any crash. When the dyno is over, whatever is left in the cgroup is killed and the cgroup
//! removed before the shim exits. A cgroup that cannot be created is logged and the dyno runs
//! without limits.
//!
//! Inside the shim, one reader thread per pipe drains the dyno's output and queues formatted
//! batches for one writer thread, which owns the log. The readers never wait for the disk: a
//! full disk makes the writer drop and count lines (reported in the log once writing works
//! again), a stalled one fills the queue and the readers drop and count beyond it. Either
//! way the dyno's pipes keep draining, so the dyno never blocks on a full pipe nor gets EPIPE.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::process;
use crate::logs::{LogWriter, Source};

/// Lines longer than this are split, so one runaway line cannot grow memory without bound.
pub const MAX_LINE: usize = 10_000;

/// The shim's command line, as the daemon passes it: `slipway-shim ARGS` (the small binary
/// beside `slipway`, see `src/bin/slipway-shim.rs`) or `slipway dyno-shim ARGS`.
#[derive(clap::Args, Debug)]
pub struct ShimCli {
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    log_max_bytes: Option<u64>,
    #[arg(long)]
    log_files: Option<u32>,
    #[arg(long)]
    dyno: String,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    announce: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL (the daemon's stop_timeout).
    #[arg(long)]
    stop_timeout: Option<f64>,
    /// The dyno's cgroup, relative to the cgroup roots (with --memory and --max-pids).
    #[arg(long, requires_all = ["memory", "max_pids"])]
    cgroup: Option<PathBuf>,
    /// The dyno's memory quota in bytes (R14 above it, R15 at twice it).
    #[arg(long)]
    memory: Option<u64>,
    #[arg(long)]
    max_pids: Option<u32>,
    /// The app's uid (and gid) the dyno drops to (privileged mode: the daemon runs as root).
    #[arg(long)]
    uid: Option<u32>,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

impl ShimCli {
    /// Runs the shim; returns the shim process's exit code.
    pub fn run(self) -> i32 {
        // Rotation policy: given by the daemon, else the home's settings (a daemon older than
        // this binary does not pass it; its dynos must still start).
        let recorded = crate::logs::LogPolicy::for_app_log(&self.log);
        let log_policy = crate::logs::LogPolicy {
            max_bytes: self.log_max_bytes.unwrap_or(recorded.max_bytes),
            files: self.log_files.unwrap_or(recorded.files),
        };
        run(ShimArgs {
            log: self.log,
            log_policy,
            dyno: self.dyno,
            dir: self.dir,
            command: self.command.join(" "),
            announce: self.announce,
            stop_timeout: self
                .stop_timeout
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(std::time::Duration::from_secs_f64),
            limits: self
                .cgroup
                .zip(self.memory.zip(self.max_pids))
                .map(|(rel, (memory, max_pids))| (rel, crate::cgroup::Limits { memory, max_pids })),
            uid: self.uid,
        })
    }
}

pub struct ShimArgs {
    pub log: PathBuf,
    pub log_policy: crate::logs::LogPolicy,
    pub dyno: String,
    pub dir: PathBuf,
    pub command: String,
    /// `run/dynos/<id>`: where the shim announces itself and its dyno before the daemon
    /// records them, so a daemon killed in between finds both again.
    pub announce: Option<PathBuf>,
    /// The daemon's stop grace period (`--stop-timeout`); without it (an older daemon), the
    /// home's settings say.
    pub stop_timeout: Option<Duration>,
    /// The dyno's cgroup (relative to the cgroup roots) and its limits, when the daemon found
    /// cgroups usable.
    pub limits: Option<(PathBuf, crate::cgroup::Limits)>,
    /// The app's uid (= gid) the dyno runs as (privileged mode, see [`crate::users`]); the
    /// shim itself stays the daemon's user, so it can signal and reap the dyno.
    pub uid: Option<u32>,
}

/// Runs the shim; returns the exit code for the shim process itself.
pub fn run(args: ShimArgs) -> i32 {
    // One malloc arena for all of the shim's threads (readers, writer, memory watcher): each
    // thread's own arena would cost private pages per dyno for a few small buffers.
    // SAFETY: mallopt with integer arguments, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // The shim must outlive the daemon and be stopped only through its dyno: signals meant for
    // the daemon's terminal or session are not for it.
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            let _ = signal(sig, SigHandler::SigIgn);
        }
    }
    // A log that cannot be opened now (full disk) must not keep the dyno from starting: the
    // writer opens it as soon as it can and counts what it had to drop until then.
    let mut log = LogWriter::deferred(&args.log, args.log_policy).named(&args.dyno);

    // Processes of the dyno orphaned by its shell (see the module doc) become the shim's
    // children, so it can reap them and tell when the group is empty.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        let _ = libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let contained = args.limits.as_ref().and_then(|(rel, limits)| match contain(rel, *limits) {
        Ok(c) => Some(c),
        Err(err) => {
            let _ = log.event(
                Source::Slipway,
                &args.dyno,
                &format!("Running without memory and process limits: {err}"),
            );
            None
        }
    });
    let mut join = contained.as_ref().map(|(_, entry)| entry.joiner());
    let mut command = crate::procfile::shell_command(&args.command);
    command.current_dir(&args.dir).stdin(Stdio::null()).process_group(0);
    // SAFETY: only async-signal-safe calls (an atomic load, write, signal, umask) between fork
    // and exec. Ignored signals survive exec, so the dyno must get the default dispositions back.
    unsafe {
        command.pre_exec(move || {
            // Into the dyno's cgroup before anything of the app runs (unless it was created
            // there: `cgroup::Entry`).
            if let Some(join) = &mut join {
                join()?;
            }
            for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
                let _ = signal(sig, SigHandler::SigDfl);
            }
            // The app's own files get the usual permissions; slipway's are 077 (main.rs).
            libc::umask(0o022);
            Ok(())
        });
    }
    let private = confine(&args, &mut command);
    let spawned = match (&private, &contained) {
        (Ok(_), Some((_, entry))) => entry.spawn(&mut command),
        (Ok(_), None) => crate::cgroup::spawn_piped(&mut command),
        (Err(err), _) => Err(std::io::Error::other(err.clone())),
    };
    drop(command);
    let cgroup = contained.map(|(cgroup, entry)| {
        drop(entry);
        cgroup
    });
    let child = match spawned {
        Ok(c) => c,
        Err(err) => {
            let _ = log.event(Source::Slipway, &args.dyno, &format!("Failed to start process: {err}"));
            if let Ok(private) = private {
                discard(private, &mut log, &args.dyno);
            }
            if let Some(cgroup) = &cgroup {
                remove_cgroup(cgroup, &mut log, &args.dyno);
            }
            return 1;
        }
    };
    // Copying the release into the dyno's private dir used buffers the shim never needs again.
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let pid = child.pid;
    let start = process::start_time(pid).unwrap_or(0);
    if let Some(path) = &args.announce {
        if let Err(err) = announce(path, pid, start) {
            // The daemon still learns the pids from stdout; only a daemon killed in the next
            // instant would miss this dyno, and it reaps what its row names.
            let _ = log.event(
                Source::Slipway,
                &args.dyno,
                &format!("Could not record the process in {}: {err}", path.display()),
            );
        }
    }
    report_and_release_stdout(pid, start);

    let (queue, writer) = spawn_writer(log, args.dyno.clone());
    let readers = [
        spawn_reader(child.stdout, queue.clone(), args.dyno.clone()),
        spawn_reader(child.stderr, queue.clone(), args.dyno.clone()),
    ];

    let watcher = match (&cgroup, &args.limits) {
        (Some(cgroup), Some((_, limits))) => {
            Some(MemoryWatcher::start(cgroup.clone(), limits.memory, pid, queue.clone(), args.dyno.clone()))
        }
        _ => None,
    };

    let status = wait_for_main(pid);
    let stopping = matches!(status, Some(WaitStatus::Signaled(_, Signal::SIGTERM | Signal::SIGINT, _)));
    if stopping {
        // A stop: the rest of the group got the signal too and may be shutting down gracefully.
        let grace = args.stop_timeout.unwrap_or_else(|| grace_period(&args.log));
        wait_for_group(pid, Instant::now() + grace);
    }
    // Anything the main process left behind in its group goes (at once after a crash, after the
    // grace period after a stop), which also closes the pipes the readers are draining.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    if let Some(watcher) = watcher {
        // One last look: an OOM kill of the main process is this dyno's R15.
        watcher.finish(matches!(status, Some(WaitStatus::Signaled(_, Signal::SIGKILL, _))));
    }
    if let Some(cgroup) = &cgroup {
        // Processes that left the group (setsid) are still in the cgroup; they may hold the pipes.
        cgroup.kill_all();
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for r in readers {
            let _ = r.join();
        }
        let _ = done_tx.send(());
    });
    // A grandchild that escaped the group (setsid) could hold a pipe open forever.
    let _ = done_rx.recv_timeout(Duration::from_secs(5));
    // Everything read so far is queued ahead of the stop; a disk that hangs gets as long.
    let _ = queue.tx.send(Queued::Stop);
    let log = writer.recv_timeout(Duration::from_secs(5)).ok();

    let code = match status {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => -1,
    };
    let mut log = log.unwrap_or_else(|| LogWriter::deferred(&args.log, args.log_policy).named(&args.dyno));
    // What is left in the cgroup dies first; then nothing of the dyno uses its private dir.
    if let Some(cgroup) = &cgroup {
        remove_cgroup(cgroup, &mut log, &args.dyno);
    }
    if let Ok(private) = private {
        discard(private, &mut log, &args.dyno);
    }
    let _ = log.event(Source::Slipway, &args.dyno, &format!("Process exited with status {code}"));
    if let Some(path) = &args.announce {
        // Gone with the dyno; a daemon that restarts now treats the row as an exit.
        if let Err(err) = crate::home::remove_if_present(path) {
            let _ = log.event(
                Source::Slipway,
                &args.dyno,
                &format!("Could not remove {}: {err}", path.display()),
            );
        }
    }
    0
}

/// Creates the dyno's cgroup with its limits and opens what the dyno enters it by
/// ([`crate::cgroup::Entry`]). A cgroup half made is removed again.
fn contain(
    rel: &std::path::Path,
    limits: crate::cgroup::Limits,
) -> Result<(crate::cgroup::Cgroup, crate::cgroup::Entry), String> {
    let layout = crate::cgroup::detect()?;
    let cgroup = layout.group(rel);
    match cgroup.create(limits).and_then(|()| crate::cgroup::Entry::open(&cgroup)) {
        Ok(entry) => Ok((cgroup, entry)),
        Err(err) => {
            if let Err(e) = cgroup.remove(Instant::now(), || {}) {
                diagnose(&format!("slipway dyno-shim: {e}"));
            }
            Err(format!("creating the cgroup: {err}"))
        }
    }
}

/// Kills what is left in the dyno's cgroup and removes it (and its app's dir when empty),
/// reaping the orphans the shim adopted meanwhile.
fn remove_cgroup(cgroup: &crate::cgroup::Cgroup, log: &mut LogWriter, dyno: &str) {
    let reap = || {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    };
    if let Err(err) = cgroup.remove(Instant::now() + Duration::from_secs(5), reap) {
        let _ = log.event(Source::Slipway, dyno, &format!("Could not remove the dyno's cgroup: {err}"));
    }
}

/// How often the memory watcher reads the cgroup.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The thread that turns the cgroup's memory readings into R14 and R15 (see the module doc).
struct MemoryWatcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    state: Arc<std::sync::Mutex<crate::cgroup::MemoryWatch>>,
    cgroup: crate::cgroup::Cgroup,
    queue: Queue,
    dyno: String,
    pid: i32,
}

impl MemoryWatcher {
    fn start(cgroup: crate::cgroup::Cgroup, quota: u64, pid: i32, queue: Queue, dyno: String) -> Self {
        let mut watch = crate::cgroup::MemoryWatch::new(quota);
        if let Some(sample) = cgroup.memory() {
            watch.baseline(&sample);
        }
        let state = Arc::new(std::sync::Mutex::new(watch));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (stop, state, cgroup, queue, dyno) =
                (stop.clone(), state.clone(), cgroup.clone(), queue.clone(), dyno.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    check_memory(&cgroup, &state, false, pid, &queue, &dyno);
                    std::thread::park_timeout(WATCH_EVERY);
                }
            })
        };
        MemoryWatcher { stop, thread, state, cgroup, queue, dyno, pid }
    }

    /// Stops the thread and reads the cgroup once more (`main_killed`: the main process died of
    /// SIGKILL, which on kernels without an OOM kill counter is how an OOM kill shows).
    fn finish(self, main_killed: bool) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.thread().unpark();
        let _ = self.thread.join();
        check_memory(&self.cgroup, &self.state, main_killed, self.pid, &self.queue, &self.dyno);
    }
}

/// One reading: logs R14 or R15 as [`crate::cgroup::MemoryWatch`] decides; R15 kills the dyno.
fn check_memory(
    cgroup: &crate::cgroup::Cgroup,
    state: &std::sync::Mutex<crate::cgroup::MemoryWatch>,
    main_killed: bool,
    pid: i32,
    queue: &Queue,
    dyno: &str,
) {
    use crate::cgroup::Verdict;
    let Some(sample) = cgroup.memory() else { return };
    let Ok(mut watch) = state.lock() else { return };
    let quota = watch.quota;
    match watch.step(&sample, Instant::now(), main_killed) {
        Verdict::Fine => {}
        Verdict::R14 { used } => queue_events(
            queue,
            dyno,
            &[&crate::cgroup::running_line(used, quota), "Error R14 (Memory quota exceeded)"],
        ),
        Verdict::R15 { used } => {
            queue_events(
                queue,
                dyno,
                &[
                    &crate::cgroup::running_line(used, quota),
                    "Error R15 (Memory quota vastly exceeded)",
                    "Stopping process with SIGKILL",
                ],
            );
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Queues `slipway[web.1]:` lines for the writer thread, in order with the dyno's output.
fn queue_events(queue: &Queue, dyno: &str, messages: &[&str]) {
    let stamp = crate::timefmt::now();
    let text: String =
        messages.iter().map(|m| crate::logs::format_line(&stamp, Source::Slipway, dyno, m)).collect();
    let len = text.len();
    queue.queued.fetch_add(len, Ordering::Relaxed);
    if queue.tx.send(Queued::Lines(text)).is_err() {
        queue.queued.fetch_sub(len, Ordering::Relaxed);
        queue.dropped.fetch_add(messages.len() as u64, Ordering::Relaxed);
    }
}

/// The dyno runs confined (`sandbox::prepare_dyno`) in a private working dir of its own,
/// `<home>/dynos/<app>/<dyno id>` (home and app from the log's path `<home>/logs/<app>/app.log`,
/// the id from the announcement's name), bound to its `PORT`, as `--uid` when given.
fn confine(
    args: &ShimArgs,
    command: &mut std::process::Command,
) -> Result<crate::sandbox::PrivateDir, String> {
    let (Some(app_logs), Some(home)) = (args.log.parent(), args.log.ancestors().nth(3)) else {
        return Err(format!("no home above {}", args.log.display()));
    };
    let app = app_logs.file_name().ok_or("no app in the log's path")?;
    let key = match args.announce.as_ref().and_then(|a| a.file_name()) {
        Some(id) => id.to_string_lossy().into_owned(),
        None => format!("{}-{}", args.dyno, std::process::id()),
    };
    let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok());
    let dynos = home.join("dynos").join(app);
    let user =
        args.uid.map(|uid| crate::users::AppUser { uid, gid: uid, name: app.to_string_lossy().into_owned() });
    crate::sandbox::prepare_dyno(home, &dynos, &key, &args.dir, port, user.as_ref(), command)
        .map_err(|e| e.to_string())
}

/// Removes the dyno's private dir once nothing of it runs; a failure is logged (the daemon
/// removes leftovers when it starts).
fn discard(private: crate::sandbox::PrivateDir, log: &mut LogWriter, dyno: &str) {
    let root = private.root.clone();
    if let Err(err) = private.remove() {
        let _ = log.event(Source::Slipway, dyno, &format!("Could not remove {}: {err}", root.display()));
    }
}

/// The stop grace period: `stop_timeout` of the home the app log belongs to
/// (`<home>/logs/<app>/app.log`), 30 s when the settings cannot be read.
fn grace_period(log: &std::path::Path) -> Duration {
    let home = log.ancestors().nth(3).unwrap_or(std::path::Path::new("."));
    crate::settings::Settings::load(&crate::home::Home::at(home))
        .map(|s| s.stop_timeout)
        .unwrap_or(Duration::from_secs(30))
}

/// Waits for the dyno's main process and returns how it ended (None if it cannot be waited
/// for). Orphans of the dyno that end meanwhile (the shim is their subreaper) are reaped on the
/// way, so they never pile up as zombies.
fn wait_for_main(pid: i32) -> Option<WaitStatus> {
    loop {
        match waitpid(None, None) {
            Ok(status) if status.pid() == Some(Pid::from_raw(pid)) => return Some(status),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Waits until no process is left in process group `pgid` or `deadline` passes, reaping the
/// group's orphans (the shim is their subreaper) so that they do not linger as zombies.
fn wait_for_group(pgid: i32, deadline: Instant) {
    loop {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        if killpg(Pid::from_raw(pgid), None) == Err(nix::errno::Errno::ESRCH) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `SHIM_PID SHIM_START PID PID_START` to `path` (temp file + rename, so a reader never
/// sees half a line).
fn announce(path: &std::path::Path, pid: i32, start: u64) -> std::io::Result<()> {
    let me = std::process::id() as i32;
    let my_start = process::start_time(me).unwrap_or(0);
    crate::fsutil::write_atomic(path, format!("{me} {my_start} {pid} {start}\n").as_bytes(), 0o600)
}

/// Prints `PID START` for the daemon, then points stdout at /dev/null so the shim never writes
/// into a pipe whose reader (the daemon) may be gone.
fn report_and_release_stdout(pid: i32, start: u64) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{pid} {start}");
    let _ = stdout.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

/// Most bytes of formatted lines waiting for the writer thread. Beyond it the readers drop
/// (and count) lines instead of waiting: a disk that stalls must not stall the dyno.
const MAX_QUEUED: usize = 8 * 1024 * 1024;

/// What the readers hand the writer thread.
enum Queued {
    /// Complete formatted lines.
    Lines(String),
    /// The dyno has exited: write what came before, then give the [`LogWriter`] back.
    Stop,
}

/// The readers' side of the writer thread's queue.
#[derive(Clone)]
struct Queue {
    tx: std::sync::mpsc::Sender<Queued>,
    /// Bytes sent and not yet written.
    queued: Arc<AtomicUsize>,
    /// Lines the readers dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

/// Most bytes the writer thread gathers from its queue into one `write`.
const MAX_WRITE: usize = 256 * 1024;

/// How long the writer thread lets lines gather after a write; a line reaches the file at
/// most about this much later than it was read.
const GATHER: Duration = Duration::from_millis(1);

/// How often the writer thread tries to report dropped lines when no new line comes.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the thread that owns the app log: it writes what the readers queue, one `write` per
/// batch, so the readers never wait on the disk. A write that fails (full disk…) drops and
/// counts its lines in the [`LogWriter`], which reports them with its next successful write;
/// when the dyno is quiet, the writer tries that every [`RETRY`] on its own. The thread hands
/// the writer back on the returned channel after a [`Queued::Stop`].
fn spawn_writer(mut log: LogWriter, dyno: String) -> (Queue, Receiver<LogWriter>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let queue = Queue { tx, queued: Arc::new(AtomicUsize::new(0)), dropped: Arc::new(AtomicU64::new(0)) };
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel(1);
    let (queued, dropped) = (queue.queued.clone(), queue.dropped.clone());
    std::thread::spawn(move || {
        let mut failing = false;
        let mut stop = false;
        while !stop {
            let message = rx.recv_timeout(RETRY);
            let message_was_lines = matches!(message, Ok(Queued::Lines(_)));
            log.add_dropped(dropped.swap(0, Ordering::Relaxed));
            // Nothing here should panic; if a write does, its lines are lost, not the thread
            // (a dead writer would silently drop every later line).
            let result = match message {
                Ok(Queued::Lines(mut text)) => {
                    // Whatever else is queued goes in the same write (both pipes, a burst).
                    while text.len() < MAX_WRITE {
                        match rx.try_recv() {
                            Ok(Queued::Lines(more)) => text.push_str(&more),
                            Ok(Queued::Stop) => {
                                stop = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        log.write_raw(text.as_bytes())
                    }));
                    queued.fetch_sub(text.len(), Ordering::Relaxed);
                    result
                }
                Err(RecvTimeoutError::Timeout) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.flush_dropped()))
                }
                Ok(Queued::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            };
            match result.unwrap_or_else(|_| Err(std::io::Error::other("panicked while writing"))) {
                Ok(()) => failing = false,
                Err(err) if !failing => {
                    failing = true;
                    diagnose(&format!(
                        "slipway dyno-shim[{dyno}]: writing {}: {err}; dropping lines until it works again",
                        log.path().display()
                    ));
                }
                Err(_) => {}
            }
            if !stop && message_was_lines {
                // Let lines gather: while this thread is not waiting in `recv`, a send wakes
                // nobody, so under load the readers cost no futex wake-up each.
                std::thread::sleep(GATHER);
            }
        }
        let _ = back_tx.send(log);
    });
    (queue, back_rx)
}

/// The shim's last-resort diagnostics: its stderr, which is the daemon's log file (the daemon
/// opens it for every shim). On a full disk that write fails too and nothing can be done about
/// it, so the result is ignored; `eprintln!` would panic instead and take the reader thread, the
/// pipe and with it the dyno (EPIPE) down.
fn diagnose(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Drains one of the dyno's pipes into the writer's queue until the dyno closes it. It never
/// waits for the disk and never stops early: a reader that died would close the pipe and the
/// dyno's next write would fail with EPIPE.
fn spawn_reader(stream: std::fs::File, queue: Queue, dyno: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // A pipe's worth; never zeroed, so a dyno that prints little keeps most of it
        // untouched (not resident): the shim's private memory is the per-dyno cost.
        let mut chunk = Vec::with_capacity(64 * 1024);
        let mut lines = LineSplitter::new(MAX_LINE);
        loop {
            // Nothing in here should panic; if something does, keep draining anyway.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let n = match read_into(&stream, &mut chunk) {
                    Ok(0) => return false,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
                    Err(_) => return false,
                };
                let batch = lines.push(&chunk[..n]);
                write_batch(&queue, &dyno, &batch);
                true
            }));
            if let Ok(false) = step {
                break;
            }
        }
        // A final line without a newline still counts.
        write_batch(&queue, &dyno, &lines.finish());
    })
}

/// One `read(2)` from `file` into `buf`'s capacity, replacing its contents.
fn read_into(file: &std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    buf.clear();
    // SAFETY: the kernel writes at most `capacity` bytes into the buffer, and exactly the `n`
    // it returns are marked initialized.
    unsafe {
        let n = libc::read(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.capacity());
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.set_len(n as usize);
        Ok(n as usize)
    }
}

/// Formats a batch of lines with one timestamp and queues them for one write: a burst costs
/// one syscall per pipe read, not one per line. Drops (and counts) them if the queue is full.
fn write_batch(queue: &Queue, dyno: &str, batch: &[Vec<u8>]) {
    if batch.is_empty() {
        return;
    }
    let stamp = crate::timefmt::now();
    let mut out = String::with_capacity(batch.iter().map(|l| l.len() + 64).sum());
    for line in batch {
        out.push_str(&crate::logs::format_line(&stamp, Source::App, dyno, &String::from_utf8_lossy(line)));
    }
    let lines = batch.len() as u64;
    let len = out.len();
    if queue.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED
        || queue.tx.send(Queued::Lines(out)).is_err()
    {
        queue.queued.fetch_sub(len, Ordering::Relaxed);
        queue.dropped.fetch_add(lines, Ordering::Relaxed);
    }
}

/// Splits a byte stream into lines (without their newline), cutting any line longer than
/// `max` bytes into pieces so one runaway line cannot grow memory without bound.
struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
    /// The last piece was cut at the cap: a newline right after it ends that line, not a new one.
    cut: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        LineSplitter { max, partial: Vec::new(), cut: false }
    }

    fn push(&mut self, mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let room = self.max - self.partial.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(0) if self.cut && self.partial.is_empty() => bytes = &bytes[1..],
                Some(i) => {
                    self.partial.extend_from_slice(&window[..i]);
                    out.push(std::mem::take(&mut self.partial));
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.partial.len() >= self.max {
                        out.push(std::mem::take(&mut self.partial));
                        self.cut = true;
                        continue;
                    }
                }
            }
            self.cut = false;
        }
        out
    }

    fn finish(&mut self) -> Vec<Vec<u8>> {
        if self.partial.is_empty() {
            Vec::new()
        } else {
            vec![std::mem::take(&mut self.partial)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_at_newlines_and_at_the_cap() {
        let mut s = LineSplitter::new(10);
        let text = |v: Vec<Vec<u8>>| v.into_iter().map(|l| String::from_utf8(l).unwrap()).collect::<Vec<_>>();
        assert_eq!(text(s.push(b"short\nxxxxx")), ["short"]);
        assert_eq!(text(s.push(b"xxxxxxxxxxxxxxxxxxxx\ntail")), ["xxxxxxxxxx", "xxxxxxxxxx", "xxxxx"]);
        assert_eq!(text(s.push(b"\n\n")), ["tail", ""]);
        assert_eq!(text(s.push(b"end")), Vec::<String>::new());
        assert_eq!(text(s.push(b"0123456\nabcdefghij\nz")), ["end0123456", "abcdefghij"]);
        assert_eq!(text(s.push(b"\n")), ["z"]);
        assert_eq!(text(s.push(b"end")), Vec::<String>::new());
        assert_eq!(text(s.finish()), ["end"]);
        assert!(s.finish().is_empty());
    }
}
