//! `run APP CMD ARGS...`: a one-off dyno (`run.N`) in the current release's directory and
//! environment, attached to the caller's stdin, stdout and stderr (over SSH too: `ssh -t`).
//! The command is executed directly, never through a shell; its exit status becomes ours.
//! Its output stays on the caller's terminal: only its start and exit are logged.
//!
//! The command runs in a process group of its own (on a terminal, the terminal's foreground
//! group, so Ctrl-C and an interactive REPL work as in a shell). It ends when its caller goes
//! away, tty or not: while it runs, [`wait`] watches stdout and stderr (and stdin when it is a
//! terminal) for a hang-up or error, our parent for being replaced, and SIGTERM/SIGHUP sent to
//! us; then the group gets SIGTERM, and SIGKILL after the stop grace period (`stop_timeout`).
//! A stdin that merely reached its end (`ssh host run app cat < file`) is not a hang-up.

use std::os::fd::BorrowedFd;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::unistd::Pid;

use super::{app_name, open_store};
use crate::daemon::client::{self, ClientError};
use crate::daemon::protocol::{Request, Response};
use crate::dyno::DynoEnv;
use crate::home::Home;
use crate::logs::{self, Source};
use crate::store;

pub fn run(home: &Home, app: &str, command: &[String], who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let settings = crate::settings::Settings::load(home)?;
    let grace = settings.stop_timeout;
    let store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let Some(release) = row.current_release else {
        bail!("{name} has no release yet; push it before running commands");
    };
    let quota =
        store::formation::memory(store.conn(), &name)?.get("run").copied().unwrap_or(settings.dyno_memory);
    let env = DynoEnv::for_release(home, store.conn(), &name, release)?.with_ram_mb(quota >> 20);
    // Run by root (privileged mode), the one-off runs as the app's own uid like its dynos.
    let user = crate::users::for_app(store.conn(), &name, settings.app_uids)?;
    drop(store);
    // With a daemon, the one-off is a dyno it knows (`ps` lists it, `ps:stop` stops it) and gets
    // a PORT; without one it runs all the same, unlisted.
    let recorded = record(home, &name, command)?;
    let (dyno, port) = match &recorded {
        Some((_, dyno, port)) => (dyno.clone(), Some(*port)),
        None => (format!("run.{}", 1000 + std::process::id() % 9000), None),
    };
    let log = home.app_log(&name);
    let by = format!(" by {}", super::actor(who));
    logs::append_event(
        &log,
        Source::Slipway,
        &dyno,
        &format!("Starting process with command `{}`{by}", command.join(" ")),
    );
    // A one-off the daemon knows gets a cgroup like any dyno (hard limits only: memory at twice
    // the quota, dyno_max_pids), removed when it ends.
    let limits = crate::cgroup::Limits { memory: quota, max_pids: settings.dyno_max_pids };
    let cgroup =
        as_root(|| recorded.as_ref().and_then(|(id, _, _)| contain(home, &name, *id, limits, &log, &dyno)))?;
    let join = cgroup.as_ref().map(|(_, files)| crate::cgroup::raw_fds(files)).unwrap_or_default();
    let key = format!("{dyno}-{}", std::process::id());
    let spawned = as_root(|| spawn(home, &name, &key, &env, &dyno, port, user.as_ref(), command, join))?;
    let cgroup = cgroup.map(|(cgroup, _files)| cgroup);
    let _remove = cgroup.map(|cgroup| RemoveOnDrop { cgroup, log: log.clone(), dyno: dyno.clone() });
    let one_off = spawned?;
    if let Some((id, _, _)) = recorded {
        if let Err(e) = attach(home, id, one_off.pid()) {
            // Never leave a process the daemon does not know it runs.
            signal_group(Pid::from_raw(one_off.pid()), Some(Signal::SIGKILL));
            let _ = wait(one_off, Duration::ZERO);
            logs::append_event(&log, Source::Slipway, &dyno, &format!("Stopped: {e}"));
            bail!("the daemon did not take the one-off dyno {dyno} ({e}); run it again");
        }
    }
    let ended = wait(one_off, grace)?;
    if ended.caller_gone {
        logs::append_event(&log, Source::Slipway, &dyno, "Stopped: the client went away");
    }
    logs::append_event(&log, Source::Slipway, &dyno, &format!("Process exited with status {}", ended.code));
    Ok(ended.code)
}

/// Runs `f` as root when this process is a worker (root only in its saved uid, see
/// `users::privileged`): making the one-off's cgroup and private dir (given to the app's uid),
/// starting it (its child drops to that uid), removing both. As is otherwise.
fn as_root<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    if crate::users::privileged() {
        return crate::users::with_root(f).context("becoming root again for the one-off dyno");
    }
    Ok(f())
}

/// Signals the one-off's process group (`None`: only checks). A worker signals as root: the
/// one-off runs as its app's uid, which the worker's own (the platform user's) may not signal.
/// A group already gone needs nothing, so the outcome is not reported.
fn signal_group(group: Pid, sig: Option<Signal>) {
    if let Err(err) = as_root(|| killpg(group, sig)) {
        eprintln!("warning: signalling the one-off: {err:#}");
    }
}

/// Creates one-off dyno `id`'s cgroup and opens its join files for the command to join;
/// None (logged) when cgroups are unavailable or it cannot be made.
fn contain(
    home: &Home,
    app: &crate::app::AppName,
    id: i64,
    limits: crate::cgroup::Limits,
    log: &std::path::Path,
    dyno: &str,
) -> Option<(crate::cgroup::Cgroup, Vec<std::fs::File>)> {
    let layout = crate::cgroup::detect().ok()?;
    let cgroup = layout.group(&crate::cgroup::dyno_rel(home.root(), app.as_str(), id));
    match cgroup.create(limits).and_then(|()| cgroup.open_join()) {
        Ok(files) => Some((cgroup, files)),
        Err(err) => {
            logs::append_event(
                log,
                Source::Slipway,
                dyno,
                &format!("Running without memory and process limits: {err}"),
            );
            if let Err(e) = cgroup.remove(std::time::Instant::now(), || {}) {
                logs::append_event(log, Source::Slipway, dyno, &format!("Could not remove the cgroup: {e}"));
            }
            None
        }
    }
}

/// Kills what is left in a one-off's cgroup and removes it, however `run` ends.
struct RemoveOnDrop {
    cgroup: crate::cgroup::Cgroup,
    log: std::path::PathBuf,
    dyno: String,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let removed = as_root(|| self.cgroup.remove(deadline, || {})).and_then(|r| r.map_err(Into::into));
        if let Err(err) = removed {
            logs::append_event(
                &self.log,
                Source::Slipway,
                &self.dyno,
                &format!("Could not remove the cgroup: {err}"),
            );
        }
    }
}

/// Asks the daemon for a one-off dyno: its id, name (`run.N`) and port. None without a daemon.
fn record(
    home: &Home,
    app: &crate::app::AppName,
    command: &[String],
) -> anyhow::Result<Option<(i64, String, u16)>> {
    let request = Request::RunStart { app: app.to_string(), command: command.join(" ") };
    match client::call(home, &request, Duration::from_secs(30)) {
        Ok(Response::OneOff { dyno, name, port }) => Ok(Some((dyno, name, port))),
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(ClientError::NotRunning(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Tells the daemon the one-off runs: its process group, and this command, which waits for it.
fn attach(home: &Home, dyno: i64, pid: i32) -> Result<(), ClientError> {
    use crate::daemon::process::start_time;
    let me = std::process::id() as i32;
    let request = Request::RunAttach {
        dyno,
        pid,
        pid_start: start_time(pid).unwrap_or(0),
        shim_pid: me,
        shim_start: start_time(me).unwrap_or(0),
    };
    client::call(home, &request, Duration::from_secs(30)).map(|_| ())
}

/// A started one-off process: the leader of its own process group.
pub struct OneOff {
    child: Child,
    /// Its private working dir, discarded when it ends.
    private: Option<crate::sandbox::PrivateDir>,
    /// Whether the command was made the terminal's foreground group (stdin is our terminal).
    foreground: bool,
}

impl OneOff {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// How a one-off ended.
pub struct Ended {
    /// The exit code as a shell reports it (128 + signal when killed).
    pub code: i32,
    /// It was stopped because the caller went away.
    pub caller_gone: bool,
}

/// Starts `command` in `env` as dyno `name` (with `PORT` when given), in a new process group (the terminal's foreground
/// group when stdin is our controlling terminal), in the cgroups whose join files are open
/// as `join` (none: no cgroup), confined like every dyno in a private working dir of its own
/// (`dynos/<app>/<key>`), as `user` when given (privileged mode).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    home: &Home,
    app: &crate::app::AppName,
    key: &str,
    env: &DynoEnv,
    name: &str,
    port: Option<u16>,
    user: Option<&crate::users::AppUser>,
    command: &[String],
    join: Vec<std::os::fd::RawFd>,
) -> anyhow::Result<OneOff> {
    use std::os::unix::process::CommandExt;
    let (program, args) = command.split_first().context("no command given")?;
    // SAFETY: plain queries on descriptor 0.
    let foreground = unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() };
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().envs(env.vars(name, port)).current_dir(&env.dir);
    // SAFETY: only async-signal-safe calls (write, setpgid, umask, sigprocmask, tcsetpgrp,
    // getpid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            crate::cgroup::join_raw(&join)?;
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The app's own files get the usual permissions; slipway's are 077 (main.rs).
            libc::umask(0o022);
            if foreground {
                with_sigttou_blocked(|| {
                    libc::tcsetpgrp(0, libc::getpid());
                });
            }
            Ok(())
        });
    }
    let private =
        crate::sandbox::prepare_dyno(home.root(), &home.app_dynos(app), key, &env.dir, port, user, &mut cmd)?;
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let root = private.root.clone();
            if let Err(err) = private.remove() {
                eprintln!("warning: removing {}: {err}", root.display());
            }
            return Err(e).with_context(|| format!("starting {program}"));
        }
    };
    Ok(OneOff { child, private: Some(private), foreground })
}

/// The signal last sent to this process while a one-off runs (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Waits for the one-off to exit, passing on Ctrl-C and stopping it when the caller goes away.
pub fn wait(mut one_off: OneOff, grace: Duration) -> anyhow::Result<Ended> {
    extern "C" fn on_signal(sig: i32) {
        RECEIVED.store(sig, Ordering::SeqCst);
    }
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let _ = signal(sig, SigHandler::Handler(on_signal));
        }
    }
    let group = Pid::from_raw(one_off.pid());
    let parent = nix::unistd::getppid();
    // SAFETY: a plain query on descriptor 0.
    let stdin_is_tty = unsafe { libc::isatty(0) == 1 };
    let mut stop_deadline: Option<Instant> = None;
    let mut caller_gone = false;
    loop {
        if exited(one_off.pid())? {
            break;
        }
        match RECEIVED.swap(0, Ordering::SeqCst) {
            0 => {}
            sig @ (libc::SIGINT | libc::SIGQUIT) => {
                // On a terminal the group got it from the terminal already.
                if !one_off.foreground {
                    signal_group(group, Signal::try_from(sig).ok());
                }
            }
            _ => caller_gone = true,
        }
        // A worker's parent is the daemon, which may restart while its caller is still there.
        let orphaned = !crate::worker::is_worker() && nix::unistd::getppid() != parent;
        if !caller_gone && (hung_up(stdin_is_tty) || orphaned) {
            caller_gone = true;
        }
        match stop_deadline {
            None if caller_gone => {
                signal_group(group, Some(Signal::SIGTERM));
                stop_deadline = Some(Instant::now() + grace);
            }
            Some(deadline) if Instant::now() >= deadline => {
                signal_group(group, Some(Signal::SIGKILL));
                stop_deadline = Some(Instant::now() + Duration::from_secs(3600));
            }
            _ => {}
        }
        if caller_gone {
            // The hang-up stays reported: polling again would return at once.
            std::thread::sleep(Duration::from_millis(50));
        } else {
            watch(stdin_is_tty, Duration::from_millis(100));
        }
    }
    if caller_gone {
        // Whatever the command left behind in its group goes with it (the leader is not reaped
        // yet, so the group id cannot have been reused).
        signal_group(group, Some(Signal::SIGKILL));
    }
    let status = one_off.child.wait().context("waiting for the command")?;
    if one_off.foreground {
        // SAFETY: gives the terminal back to our own process group.
        with_sigttou_blocked(|| unsafe {
            libc::tcsetpgrp(0, libc::getpgrp());
        });
    }
    if let Some(private) = one_off.private.take() {
        let root = private.root.clone();
        if let Err(err) = as_root(|| private.remove()).and_then(|r| r.map_err(Into::into)) {
            eprintln!("warning: removing {}: {err}", root.display());
        }
    }
    Ok(Ended { code: crate::job::exit_code(status), caller_gone })
}

/// Whether `pid` (our child) has exited, without reaping it.
fn exited(pid: i32) -> anyhow::Result<bool> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: waitid writes only into `info`.
    if unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err).context("waiting for the command");
    }
    // SAFETY: after a successful waitid, si_pid is set (0 when no child changed state).
    Ok(unsafe { info.si_pid() } != 0)
}

/// The descriptors whose hang-up means the caller is gone: stdout and stderr always (the
/// reader closed), stdin only on a terminal (elsewhere a hang-up is just its end).
fn watched(stdin_is_tty: bool) -> Vec<BorrowedFd<'static>> {
    // SAFETY: 0, 1 and 2 stay open for the life of the process.
    let fd = |n| unsafe { BorrowedFd::borrow_raw(n) };
    let mut fds = vec![fd(1), fd(2)];
    if stdin_is_tty {
        fds.push(fd(0));
    }
    fds
}

fn hung_up(stdin_is_tty: bool) -> bool {
    watched(stdin_is_tty).into_iter().any(crate::job::reader_gone)
}

/// Sleeps up to `timeout`, waking early when a watched descriptor hangs up or a signal arrives.
fn watch(stdin_is_tty: bool, timeout: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let fds = watched(stdin_is_tty);
    let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(*fd, PollFlags::empty())).collect();
    let ms = PollTimeout::from(timeout.as_millis().min(1000) as u16);
    let _ = poll(&mut polled, ms);
}

/// Runs `f` with SIGTTOU blocked: a process outside the terminal's foreground group may then
/// change it (`tcsetpgrp`) instead of being stopped.
fn with_sigttou_blocked(f: impl FnOnce()) {
    // SAFETY: sigset operations on a local set; pthread_sigmask is async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}
