//! Foreground jobs: build steps and release phases. A job runs in its own process group with
//! its output streamed line by line to the caller, a deadline, and cancellation when the
//! person waiting for it goes away (Ctrl-C on `git push` closes the pipe we write to; SIGINT,
//! SIGTERM and SIGHUP land here too). Whatever ends it — exit, timeout or cancellation — the
//! whole process group is killed afterwards, so no background grandchild outlives its job.
//!
//! Limits: while a [`Contained`] guard lives (the build of a push and its release phase, see
//! [`contain`]), every job starts inside that build's cgroup (`build_memory`, killed at twice
//! it; `dyno_max_pids` processes), joined between fork and exec.
//!
//! Users: a [`Job`] made with an app's user (privileged mode, see `crate::users`) drops to
//! that uid between fork and exec, right after joining the cgroup and before anything the
//! caller adds (Landlock comes last), so app commands never run as root nor as the platform.

use std::io::{self, BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, SigHandler, Signal};
use nix::unistd::Pid;

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// The join-file fds ([`crate::cgroup::join_file`]) of the current build's cgroup (see [`contain`]).
static CONTAINER: std::sync::Mutex<Vec<std::os::fd::RawFd>> = std::sync::Mutex::new(Vec::new());

/// The current build's cgroup, for [`kill_strays`].
static BUILD_CGROUP: std::sync::Mutex<Option<crate::cgroup::Cgroup>> = std::sync::Mutex::new(None);

/// A command about to run as a job: it joins the build's cgroup while one is contained
/// ([`contain`]), then, given an app's user, drops to its uid ([`crate::users::drop_to`],
/// which regains root first in a worker whose saved uid is root) with umask 027. Both happen in one
/// `pre_exec` registered first, so that what the caller adds to [`Job::command`] afterwards
/// (a sandbox's Landlock, `sandbox::prepare_dyno`) runs after them, as the app's uid.
pub struct Job(Command);

impl Job {
    /// `command` must have no `pre_exec` step yet.
    pub fn new(mut command: Command, user: Option<&crate::users::AppUser>) -> Job {
        let join = CONTAINER.lock().map(|fds| fds.clone()).unwrap_or_default();
        let ids = user.map(|u| (u.uid, u.gid));
        if !join.is_empty() || ids.is_some() {
            // SAFETY: join_raw only calls write(2), umask cannot fail and drop_to makes raw
            // syscalls only: all async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    crate::cgroup::join_raw(&join)?;
                    match ids {
                        Some((uid, gid)) => {
                            // What the app makes in what is lent to it stays readable by the
                            // platform's group (`users::lent_mode`); others get nothing.
                            libc::umask(0o027);
                            crate::users::drop_to(uid, gid)
                        }
                        None => Ok(()),
                    }
                });
            }
        }
        Job(command)
    }

    pub fn command(&mut self) -> &mut Command {
        &mut self.0
    }

    pub fn into_command(self) -> Command {
        self.0
    }
}

/// SIGKILLs whatever is left in the build's cgroup (a process an app command started in the
/// background, out of its job's process group), waiting up to a second for it to be empty:
/// nothing of the app may hold a file of its release open for writing once the platform takes
/// the release back. Nothing to do without a cgroup.
pub fn kill_strays() {
    let Some(cgroup) = BUILD_CGROUP.lock().ok().and_then(|c| c.clone()) else { return };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if crate::users::root_if_privileged(|| cgroup.kill_all()).is_err() || cgroup.procs().is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!("processes of the build's cgroup survived SIGKILL for a second");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A build's cgroup; jobs started while it lives run in it. Dropping it kills what is left
/// in the cgroup and removes it.
pub struct Contained {
    cgroup: crate::cgroup::Cgroup,
    _procs: Vec<std::fs::File>,
}

/// Puts every later job of this process into a new build cgroup of `app`
/// (`slipway-<home>/<app>/build-<pid>`) with the `build_memory` and `dyno_max_pids` limits.
/// None, and jobs run without limits, when cgroups are unavailable (not root…) or the cgroup
/// could not be made (reported through `warn`).
pub fn contain(
    home: &crate::home::Home,
    app: &crate::app::AppName,
    settings: &crate::settings::Settings,
    warn: impl Fn(&str),
) -> Option<Contained> {
    // Root's in a worker whose saved uid is root (`users::privileged`); a no-op for root.
    let root = |f: &dyn Fn() -> io::Result<()>| crate::users::root_if_privileged(f).and_then(|r| r);
    let layout = crate::users::root_if_privileged(crate::cgroup::detect).ok()?.ok()?;
    let cgroup = layout.group(&crate::cgroup::build_rel(home.root(), app.as_str(), std::process::id()));
    let limits = crate::cgroup::Limits { memory: settings.build_memory, max_pids: settings.dyno_max_pids };
    let opened = crate::users::root_if_privileged(|| cgroup.create(limits).and_then(|()| cgroup.open_join()))
        .and_then(|r| r);
    match opened {
        Ok(procs) => {
            if let Ok(mut fds) = CONTAINER.lock() {
                *fds = crate::cgroup::raw_fds(&procs);
            }
            if let Ok(mut current) = BUILD_CGROUP.lock() {
                *current = Some(cgroup.clone());
            }
            Some(Contained { cgroup, _procs: procs })
        }
        Err(err) => {
            warn(&format!("building without memory and process limits: creating the cgroup: {err}"));
            if let Err(e) = root(&|| cgroup.remove(Instant::now(), || {})) {
                warn(&e.to_string());
            }
            None
        }
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Ok(mut fds) = CONTAINER.lock() {
            fds.clear();
        }
        if let Ok(mut current) = BUILD_CGROUP.lock() {
            *current = None;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let removed =
            crate::users::root_if_privileged(|| self.cgroup.remove(deadline, || {})).and_then(|r| r);
        if let Err(err) = removed {
            use std::io::Write;
            if writeln!(io::stderr(), "warning: the build's cgroup stays: {err}").is_err() {
                tracing::warn!(%err, "removing the build's cgroup");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("could not start: {0}")]
    Spawn(io::Error),
    #[error("timed out after {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("cancelled: the client went away")]
    Cancelled,
    #[error("exited with status {0}")]
    Failed(i32),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

/// Cancels running jobs on SIGINT, SIGTERM and SIGHUP instead of dying with them in place.
pub fn cancel_on_signals() {
    extern "C" fn on_signal(_: i32) {
        CANCELLED.store(true, Ordering::SeqCst);
    }
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let _ = nix::sys::signal::signal(sig, SigHandler::Handler(on_signal));
        }
    }
}

/// Marks the current work as cancelled (e.g. a write to the client failed).
pub fn cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
}

pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst) || stderr_closed()
}

/// Our stderr is the pipe back to the client (git relays it as `remote:` lines); when its
/// reader is gone, nobody is waiting for this job any more.
fn stderr_closed() -> bool {
    reader_gone(io::stderr())
}

/// True when the reading end of the pipe or socket behind `fd` has been closed (`| head`, a
/// closed SSH channel, an interrupted `git push`), checked without writing anything.
pub fn reader_gone(fd: impl AsFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// Exit code as a shell reports it: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs `job` (stdin closed, stdout and stderr merged), confined by `sandbox` when given
/// (enforced between fork and exec, see `sandbox::confine`, after the job's own steps: see
/// [`Job`]), and hands each output line to `on_line` as it arrives.
pub fn run(
    job: Job,
    sandbox: Option<&crate::sandbox::Policy>,
    timeout: Option<Duration>,
    mut on_line: impl FnMut(&str),
) -> Result<(), JobError> {
    let mut command = job.into_command();
    if let Some(policy) = sandbox {
        crate::sandbox::confine(&mut command, policy)?;
    }
    let (reader, writer) = io::pipe().map_err(JobError::Spawn)?;
    let writer2 = writer.try_clone().map_err(JobError::Spawn)?;
    command.stdin(Stdio::null()).stdout(writer).stderr(writer2).process_group(0);
    let mut child = command.spawn().map_err(JobError::Spawn)?;
    drop(command); // holds the write ends; the reader sees EOF only once they are closed
    let group = Pid::from_raw(child.id() as i32);

    let (tx, rx) = mpsc::channel::<String>();
    let pump = std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0
                || tx.send(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string()).is_err()
            {
                break;
            }
            buf.clear();
        }
    });

    let deadline = timeout.map(|t| Instant::now() + t);
    let outcome = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => on_line(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Ok(status);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Err(JobError::TimedOut(timeout.unwrap_or_default()));
        }
        if cancelled() {
            break Err(JobError::Cancelled);
        }
    };
    // The job is over one way or another: nothing of its process group may outlive it. A job
    // running as the app's uid is root's to kill when this is a worker (saved uid root). ESRCH
    // (the group is gone) is the usual answer; anything else is worth a line.
    let killed = crate::users::root_if_privileged(|| killpg(group, Signal::SIGKILL));
    match killed {
        Ok(Ok(())) | Ok(Err(nix::errno::Errno::ESRCH)) => {}
        Ok(Err(err)) => tracing::warn!(%err, pgid = group.as_raw(), "killing a job's process group"),
        Err(err) => {
            tracing::warn!(%err, pgid = group.as_raw(), "becoming root to kill a job's process group")
        }
    }
    let status = match outcome {
        Ok(status) => status,
        Err(e) => {
            let _ = child.wait();
            return Err(e);
        }
    };
    // Print what is still in the pipe (bounded: a survivor outside the group could hold it).
    let stop = Instant::now() + Duration::from_secs(2);
    while let Ok(line) = rx.recv_timeout(stop.saturating_duration_since(Instant::now())) {
        on_line(&line);
    }
    drop(rx);
    if pump.is_finished() {
        let _ = pump.join();
    }
    match exit_code(status) {
        0 => Ok(()),
        code => Err(JobError::Failed(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Job {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        Job::new(c, None)
    }

    #[test]
    fn streams_lines_and_reports_exit_codes() {
        let mut lines = Vec::new();
        run(sh("echo one; echo two >&2; echo three"), None, None, |l| lines.push(l.to_string())).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(matches!(run(sh("exit 3"), None, None, |_| {}), Err(JobError::Failed(3))));
    }

    /// The worker case (`users::privileged`): real and effective uid a platform user's, saved
    /// uid root. A job with an app's user still drops to it (root regained first), one without
    /// runs as the worker's own uid; what is lent to the app stays readable by the worker (its
    /// group), and taken back it is no longer the app's to write; the worker itself
    /// is left as it was. In a forked child (its ids change for good); only as root.
    #[test]
    fn a_worker_with_a_saved_root_uid_runs_jobs_as_the_apps_uid() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        const WORKER: u32 = 299_990;
        const APP: u32 = 299_991;
        // SAFETY: the child only makes syscalls and runs jobs, then _exits; its code is its verdict.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let verdict = (|| -> Result<(), u8> {
                    // SAFETY: plain syscalls with integer arguments.
                    unsafe {
                        if libc::setgroups(0, std::ptr::null()) != 0
                            || libc::setresgid(WORKER, WORKER, 0) != 0
                            || libc::setresuid(WORKER, WORKER, 0) != 0
                        {
                            return Err(10);
                        }
                    }
                    if !crate::users::privileged() {
                        return Err(11);
                    }
                    let ids = |user: Option<&crate::users::AppUser>| {
                        let mut c = Command::new("sh");
                        c.args(["-c", "echo $(id -u) $(id -g) $(id -G)"]);
                        let mut lines = Vec::new();
                        run(Job::new(c, user), None, None, |l| lines.push(l.to_string())).map(|()| lines)
                    };
                    let app = crate::users::AppUser { uid: APP, gid: APP, name: "app".into() };
                    if ids(Some(&app)).map_err(|_| 12u8)? != vec![format!("{APP} {APP} {APP}")] {
                        return Err(13);
                    }
                    if ids(None).map_err(|_| 14u8)? != vec![format!("{WORKER} {WORKER} {WORKER}")] {
                        return Err(15);
                    }
                    // A dir the worker made, lent to the app: the app writes it, the worker
                    // still reads what the app made (its group, inherited), and writes into it
                    // as root only (as the venv's link into `.slipway`); taken back, the app no
                    // longer writes it.
                    let dir = std::env::temp_dir().join(format!("slipway-worker-{}", std::process::id()));
                    std::fs::create_dir(&dir).map_err(|_| 20u8)?;
                    let as_app = |script: &str| {
                        let mut c = Command::new("sh");
                        c.args(["-c", script]).current_dir(&dir);
                        run(Job::new(c, Some(&app)), None, None, |_| {})
                    };
                    crate::users::with_root(|| crate::users::lend_tree(&dir, APP, WORKER))
                        .map_err(|_| 21u8)?
                        .map_err(|_| 22u8)?;
                    as_app("mkdir sub && echo made > sub/file").map_err(|_| 23u8)?;
                    let read = std::fs::read_to_string(dir.join("sub/file")).map_err(|_| 24u8)?;
                    // It cannot write there (no group write), and does so as root.
                    if std::os::unix::fs::symlink("sub/file", dir.join("link")).is_ok() {
                        return Err(25);
                    }
                    crate::users::with_root(|| std::os::unix::fs::symlink("sub/file", dir.join("link")))
                        .map_err(|_| 31u8)?
                        .map_err(|_| 32u8)?;
                    crate::users::with_root(|| crate::users::take_back(&dir, WORKER, APP))
                        .map_err(|_| 26u8)?
                        .map_err(|_| 27u8)?;
                    let refused = as_app("echo again > sub/other").is_err();
                    crate::users::with_root(|| std::fs::remove_dir_all(&dir))
                        .map_err(|_| 28u8)?
                        .map_err(|_| 29u8)?;
                    if read != "made\n" || !refused {
                        return Err(30);
                    }
                    let inside =
                        crate::users::with_root(|| nix::unistd::geteuid().as_raw()).map_err(|_| 16u8)?;
                    let after = nix::unistd::getresuid().map_err(|_| 17u8)?;
                    let back = (after.real.as_raw(), after.effective.as_raw(), after.saved.as_raw());
                    if inside != 0 || back != (WORKER, WORKER, 0) {
                        return Err(18);
                    }
                    Ok(())
                })();
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(verdict.err().map_or(0, i32::from)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "see the codes in the child"
                );
            }
        }
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let mut pid = None;
        let result = run(sh("sleep 1000 & echo $!; wait"), None, Some(Duration::from_millis(500)), |l| {
            pid = l.trim().parse::<i32>().ok();
        });
        assert!(matches!(result, Err(JobError::TimedOut(_))));
        let pid = pid.expect("the grandchild's pid");
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            crate::daemon::process::start_time(pid).is_none()
        });
        assert!(gone, "the background grandchild survived the timeout");
    }
}
