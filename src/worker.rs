//! Workers: app-running commands started by a root daemon for the home's owner.
//!
//! In production the daemon runs as root on a home the platform user owns, while sshd runs that
//! user's forced commands (`ssh-serve`, `git-receive-pack` and its pre-receive hook). The commands
//! that run app code — the hook (build and release phase), `run`, `config:set`, `config:unset`
//! and `rollback` (release phase) — need root within reach to run it as the app's own uid. Run
//! as a non-root user while a root daemon serves `run/spawn.sock`, such a command does not run
//! itself: it asks the daemon for a *worker* ([`delegate`]). The daemon ([`serve`]) checks the
//! caller (the home's owner or root, not confined) and the request ([`validate`]: which command,
//! which SSH key, which environment), then starts `slipway worker -- WORDS` in a session of its
//! own with the caller's stdin, stdout and stderr (passed with `SCM_RIGHTS`). The worker starts
//! as root and first becomes the owner with a saved uid of 0 ([`become_worker`]): everything it
//! writes is the owner's as in single-user mode, and `users::privileged` is true, so its app
//! commands drop to the app's uid. It writes its exit code on a pipe the caller passed; EOF
//! without a code is a failure. The caller forwards SIGINT, SIGTERM and SIGHUP to the worker
//! (through a pidfd the daemon passes back) and exits with its code. Neither depends on the
//! daemon after the start: a worker outlives a `kill -9` of the daemon and a restart.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cli::Command;
use crate::home::Home;

/// The git variables a pre-receive hook needs to see the pushed objects, still in quarantine.
pub const GIT_VARS: [&str; 4] =
    ["GIT_DIR", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH"];

/// Other variables a caller may pass on: its terminal and locale, its `PATH`, and settings
/// overrides (`SLIPWAY_<KEY>`, checked with `settings::is_setting_env`).
const PASSED_VARS: [&str; 5] = ["TERM", "LANG", "LC_ALL", "PATH", "SLIPWAY_PUSHED_BY"];

const STATUS_FD: RawFd = 3;

/// What a caller asks the daemon to start (one JSON frame).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpawnRequest {
    /// The command's words, without the program name nor global options ([`words`]).
    pub words: Vec<String>,
    /// The SSH key the command came with, if any.
    pub who: Option<String>,
    pub env: BTreeMap<String, String>,
    /// For the hook: the ref lines (`OLD NEW REF`) it read from git.
    pub refs: Option<String>,
}

/// A checked request: what the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    pub words: Vec<String>,
    pub who: Option<String>,
    pub env: Vec<(String, String)>,
    /// The hook runs in its repository (git's cwd for hooks), the rest in the home.
    pub cwd: PathBuf,
    /// The hook's stdin (its ref lines); None: the caller's stdin.
    pub stdin: Option<String>,
}

/// The daemon's answer (one JSON frame; with the worker's pidfd when it started).
#[derive(Debug, Serialize, Deserialize)]
pub struct SpawnReply {
    pub pid: Option<i32>,
    pub error: Option<String>,
}

/// The words that start `command` in a worker, when it runs app code; None for the rest.
pub fn words(command: &Command) -> Option<Vec<String>> {
    let mut w: Vec<String> = Vec::new();
    match command {
        Command::Hook { .. } => w.extend(["hook".into(), "pre-receive".into()]),
        Command::Run { app, command } => {
            w.extend(["run".into(), "--".into(), app.clone()]);
            w.extend(command.iter().cloned());
        }
        Command::ConfigSet { app, pairs, no_restart }
        | Command::ConfigUnset { app, keys: pairs, no_restart } => {
            let name =
                if matches!(command, Command::ConfigSet { .. }) { "config:set" } else { "config:unset" };
            w.push(name.into());
            if *no_restart {
                w.push("--no-restart".into());
            }
            w.extend(["--".into(), app.clone()]);
            w.extend(pairs.iter().cloned());
        }
        Command::Rollback { app, version } => {
            w.extend(["rollback".into(), "--".into(), app.clone()]);
            w.extend(version.iter().cloned());
        }
        _ => return None,
    }
    Some(w)
}

/// Checks a request against the home at `home` (pure): the words must parse as one of the
/// commands [`words`] makes, without global options; `who` must be a key name; only the
/// variables above pass, the git ones only for the hook, whose `GIT_DIR` (absolute, without
/// `..`) must be `<home>/repos/<app>.git` and whose other git paths must lie inside it.
pub fn validate(home: &Path, request: &SpawnRequest) -> Result<Spawn, String> {
    let mut argv = vec!["slipway".to_string()];
    argv.extend(request.words.iter().cloned());
    let cli = crate::cli::try_parse(argv).map_err(|e| format!("the command does not parse: {}", e.kind()))?;
    if cli.home.is_some() || cli.app_flag.is_some() {
        return Err("global options are not accepted in a worker's words".into());
    }
    if words(&cli.command).as_ref() != Some(&request.words) {
        return Err("only the hook, run, config:set, config:unset and rollback run in a worker".into());
    }
    let hook = matches!(cli.command, Command::Hook { .. });
    if let Some(who) = &request.who {
        crate::keys::validate_name(who).map_err(|e| format!("the key name: {e}"))?;
    }
    let mut env = Vec::new();
    for (key, value) in &request.env {
        let git = GIT_VARS.contains(&key.as_str());
        if git && !hook {
            return Err(format!("{key} is only passed to the hook"));
        }
        if !git && !PASSED_VARS.contains(&key.as_str()) && !crate::settings::is_setting_env(key) {
            return Err(format!("{key} is not passed to a worker"));
        }
        if value.contains('\0') || value.len() > 64 * 1024 {
            return Err(format!("{key}'s value is not acceptable"));
        }
        if key == "SLIPWAY_PUSHED_BY" && crate::keys::validate_name(value).is_err() {
            return Err("SLIPWAY_PUSHED_BY is not a key name".into());
        }
        env.push((key.clone(), value.clone()));
    }
    if !hook {
        if request.refs.is_some() {
            return Err("ref lines are only passed to the hook".into());
        }
        return Ok(Spawn {
            words: request.words.clone(),
            who: request.who.clone(),
            env,
            cwd: home.to_path_buf(),
            stdin: None,
        });
    }
    let repo = request.env.get("GIT_DIR").map(PathBuf::from).ok_or("the hook needs GIT_DIR")?;
    let inside = |path: &Path, within: &Path| {
        path.is_absolute()
            && !path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            && path.starts_with(within)
    };
    let repos = home.join("repos");
    let app_ok = repo
        .strip_prefix(&repos)
        .ok()
        .and_then(|rel| rel.to_str())
        .and_then(|rel| rel.strip_suffix(".git"))
        .is_some_and(|app| app.parse::<crate::app::AppName>().is_ok());
    if !inside(&repo, &repos) || !app_ok {
        return Err(format!("GIT_DIR must be an app's repository in {}", repos.display()));
    }
    for key in &GIT_VARS[1..] {
        let Some(value) = request.env.get(*key) else { continue };
        let paths: Vec<&str> = if *key == "GIT_ALTERNATE_OBJECT_DIRECTORIES" {
            value.split(':').filter(|p| !p.is_empty()).collect()
        } else {
            vec![value.as_str()]
        };
        if let Some(bad) = paths.iter().find(|p| !inside(Path::new(p), &repo)) {
            return Err(format!("{key} ({bad}) is not inside {}", repo.display()));
        }
    }
    let refs = request.refs.clone().unwrap_or_default();
    if refs.len() > 1024 * 1024 {
        return Err("too many ref lines".into());
    }
    Ok(Spawn { words: request.words.clone(), who: request.who.clone(), env, cwd: repo, stdin: Some(refs) })
}

/// `run/spawn.sock`.
pub fn socket(home: &Home) -> PathBuf {
    home.run_dir().join("spawn.sock")
}

// ---------------------------------------------------------------------------------------------
// The caller's side
// ---------------------------------------------------------------------------------------------

/// Runs `command` (one of [`words`]'s) in a worker when this process is not privileged and a
/// root daemon serves this home's spawn socket: Some(its exit code). None: run it here (root, a
/// worker already, single-user mode). A spawn socket nobody answers is an error: the home is run
/// by a root daemon, which is down, and app code must not run as the platform user meanwhile.
pub fn delegate(home: &Home, words: Vec<String>, who: Option<&str>) -> anyhow::Result<Option<i32>> {
    if crate::users::privileged() {
        return Ok(None);
    }
    let path = socket(home);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let stream = UnixStream::connect(&path).with_context(|| {
        format!("the root daemon does not answer on {} (start it as root: slipway daemon)", path.display())
    })?;
    let hook = words.first().is_some_and(|w| w == "hook");
    let mut env = BTreeMap::new();
    for key in PASSED_VARS.iter().chain(if hook { &GIT_VARS[..] } else { &[] }) {
        let Ok(value) = std::env::var(key) else { continue };
        env.insert(key.to_string(), absolute_git_paths(key, &value));
    }
    for (key, value) in std::env::vars() {
        if crate::settings::is_setting_env(&key) {
            env.insert(key, value);
        }
    }
    let refs = if hook {
        let mut text = String::new();
        io::stdin().lock().read_to_string(&mut text).context("reading the pushed refs")?;
        Some(text)
    } else {
        None
    };
    let request = SpawnRequest { words, who: who.map(str::to_string), env, refs };
    let (status_read, status_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("making the status pipe")?;
    send_with_fds(&stream, &crate::daemon::protocol::encode(&request)?, &[0, 1, 2, status_write.as_raw_fd()])
        .context("asking the daemon for a worker")?;
    drop(status_write);
    let (reply, fds) = recv_with_fds(&stream).context("reading the daemon's answer")?;
    let reply: SpawnReply = crate::daemon::protocol::decode(&reply)?;
    if let Some(error) = reply.error {
        bail!("the daemon refused to start the command: {error}");
    }
    let pidfd = fds.into_iter().next().context("the daemon sent no pidfd for the worker")?;
    Ok(Some(wait_for_worker(status_read, &pidfd)))
}

/// git gives hooks relative paths (`GIT_DIR=.`); the worker starts elsewhere.
fn absolute_git_paths(key: &str, value: &str) -> String {
    if !GIT_VARS.contains(&key) {
        return value.to_string();
    }
    let absolute = |p: &str| {
        let path = std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p));
        // `.` components (GIT_DIR=.) are dropped; `..` stays, and is refused.
        path.components().collect::<PathBuf>().display().to_string()
    };
    value.split(':').filter(|p| !p.is_empty()).map(absolute).collect::<Vec<_>>().join(":")
}

static FORWARD: AtomicI32 = AtomicI32::new(0);

/// Waits for the worker's exit code on `status`, forwarding SIGINT, SIGTERM and SIGHUP to it.
fn wait_for_worker(status: OwnedFd, pidfd: &OwnedFd) -> i32 {
    use nix::sys::signal::{signal, SigHandler, Signal};
    extern "C" fn on_signal(sig: i32) {
        FORWARD.store(sig, Ordering::SeqCst);
    }
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { signal(sig, SigHandler::Handler(on_signal)) } {
            eprintln!("warning: {sig} will not reach the command: {e}");
        }
    }
    let mut file = std::fs::File::from(status);
    let mut text = Vec::new();
    let mut buf = [0u8; 64];
    let parent = nix::unistd::getppid();
    let mut hung_up = false;
    loop {
        let mut sig = FORWARD.swap(0, Ordering::SeqCst);
        // Our caller went away (sshd, git or the shell that started us ended, or the reader of
        // our output): the worker hears it as a hang-up, as the command would have here.
        if !hung_up && caller_gone(parent) {
            hung_up = true;
            sig = libc::SIGHUP;
        }
        if sig != 0 {
            // SAFETY: pidfd_send_signal on a pidfd we hold, no siginfo. A worker already gone
            // (ESRCH) needs nothing.
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<u8>(), 0)
            };
        }
        let mut poll = [libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(poll.as_mut_ptr(), 1, 200) } <= 0 {
            continue;
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    exit_code(&String::from_utf8_lossy(&text))
}

/// Whether the process that started this caller is gone (we were reparented) or nobody reads
/// our stdout or stderr any more.
fn caller_gone(parent: nix::unistd::Pid) -> bool {
    use std::os::fd::BorrowedFd;
    // SAFETY: 1 and 2 stay open for the life of the process.
    let (out, err) = unsafe { (BorrowedFd::borrow_raw(1), BorrowedFd::borrow_raw(2)) };
    nix::unistd::getppid() != parent || crate::job::reader_gone(out) || crate::job::reader_gone(err)
}

/// The worker's code from what it wrote on its status pipe; nothing (it was killed) is 1.
pub fn exit_code(text: &str) -> i32 {
    text.trim().parse().unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------
// The daemon's side
// ---------------------------------------------------------------------------------------------

/// Serves `run/spawn.sock` on a thread of its own when the daemon is root on a home `owner`
/// owns; otherwise removes a socket a root daemon left (a daemon of the owner now runs the home:
/// single-user mode). The socket is the owner's, 0600, in `run/` (0700).
pub fn serve(home: &Home, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    let path = socket(home);
    crate::home::remove_if_present(&path).with_context(|| format!("removing {}", path.display()))?;
    let Some((uid, gid)) = owner else { return Ok(()) };
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let home = home.clone();
    std::thread::Builder::new().name("spawn".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    let home = home.clone();
                    let started = std::thread::Builder::new().name("spawn-conn".into()).spawn(move || {
                        if let Err(err) = handle(&home, uid, conn) {
                            tracing::warn!(%err, "worker request failed");
                        }
                    });
                    if let Err(err) = started {
                        tracing::warn!(%err, "cannot start a thread for a worker request");
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "accepting on the spawn socket");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(())
}

fn handle(home: &Home, owner: u32, conn: UnixStream) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let reply = |error: String| {
        tracing::warn!(%error, "worker request refused");
        let reply = SpawnReply { pid: None, error: Some(error) };
        send_with_fds(&conn, &crate::daemon::protocol::encode(&reply)?, &[])
    };
    let peer = peer_uid(&conn)?;
    if peer != owner && peer != 0 {
        return Ok(reply(format!("uid {peer} may not start workers"))?);
    }
    if let Some(why) = crate::daemon::server::refusal_fd(conn.as_raw_fd(), peer_pid(&conn)) {
        return Ok(reply(why.into())?);
    }
    let (body, fds) = recv_with_fds(&conn)?;
    let request: SpawnRequest = crate::daemon::protocol::decode(&body)?;
    let [stdin, stdout, stderr, status]: [OwnedFd; 4] = match fds.try_into() {
        Ok(fds) => fds,
        Err(_) => return Ok(reply("expected four descriptors: stdin, stdout, stderr, status".into())?),
    };
    let spawn = match validate(home.root(), &request) {
        Ok(spawn) => spawn,
        Err(error) => return Ok(reply(error)?),
    };
    let (mut child, pidfd) = match start(home, &spawn, stdin, stdout, stderr, status) {
        Ok(started) => started,
        Err(err) => return Ok(reply(format!("starting the worker: {err:#}"))?),
    };
    tracing::info!(pid = child.id(), words = ?spawn.words, who = ?spawn.who, "worker started");
    let answer = SpawnReply { pid: Some(child.id() as i32), error: None };
    let sent = send_with_fds(&conn, &crate::daemon::protocol::encode(&answer)?, &[pidfd.as_raw_fd()]);
    // Reaped here; a worker outlives the daemon (its own session), then init reaps it.
    match child.wait() {
        Ok(status) => tracing::info!(pid = child.id(), %status, "worker ended"),
        // The worker of a one-off is its "shim": the supervisor may reap it first.
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => tracing::info!(pid = child.id(), "worker ended"),
        Err(err) => tracing::warn!(pid = child.id(), %err, "waiting for a worker"),
    }
    sent.map_err(Into::into)
}

/// Starts the worker: `slipway --home H worker [--who KEY] -- WORDS` as root in a new session,
/// stdio the caller's (stdin the ref lines for the hook), the status pipe as fd 3.
fn start(
    home: &Home,
    spawn: &Spawn,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    status: OwnedFd,
) -> anyhow::Result<(std::process::Child, OwnedFd)> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the slipway binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home").arg(home.root()).arg("worker");
    if let Some(who) = &spawn.who {
        cmd.args(["--who", who]);
    }
    cmd.arg("--").args(&spawn.words);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(spawn.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spawn.cwd)
        .stdout(std::process::Stdio::from(stdout))
        .stderr(std::process::Stdio::from(stderr));
    let feeder = match &spawn.stdin {
        Some(text) => {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            cmd.stdin(std::process::Stdio::from(read));
            drop(stdin);
            Some((std::fs::File::from(write), text.clone()))
        }
        None => {
            cmd.stdin(std::process::Stdio::from(stdin));
            None
        }
    };
    let status_fd = status.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            let moved = if status_fd == STATUS_FD {
                libc::fcntl(STATUS_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(status_fd, STATUS_FD)
            };
            if moved < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting slipway worker")?;
    drop(status);
    drop(cmd);
    // SAFETY: pidfd_open of our own unreaped child: it cannot be another process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: a new descriptor from the kernel.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if let Some((mut pipe, text)) = feeder {
        std::thread::spawn(move || {
            if let Err(err) = pipe.write_all(text.as_bytes()) {
                tracing::warn!(%err, "writing the hook's ref lines");
            }
        });
    }
    Ok((child, pidfd))
}

fn peer_ucred(conn: &UnixStream) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let got = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

fn peer_uid(conn: &UnixStream) -> io::Result<u32> {
    peer_ucred(conn).map(|c| c.uid)
}

fn peer_pid(conn: &UnixStream) -> Option<i32> {
    peer_ucred(conn).ok().map(|c| c.pid)
}

// ---------------------------------------------------------------------------------------------
// Frames with descriptors
// ---------------------------------------------------------------------------------------------

const MAX_FDS: usize = 4;

/// Sends one whole frame, with `fds` (SCM_RIGHTS) on its first byte.
fn send_with_fds(conn: &UnixStream, frame: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = if fds.is_empty() { 0 } else { (unsafe { libc::CMSG_SPACE(fd_bytes) }) as usize };
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() };
    // SAFETY: msghdr is plain data; zeroed is "no name, no control".
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header and `fds` (CMSG_SPACE above).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let sent = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let sent = sent as usize;
    if sent < frame.len() {
        (&*conn).write_all(&frame[sent..])?;
    }
    Ok(())
}

/// Receives one frame (4-byte length, JSON body) and the descriptors that came with it
/// (close-on-exec here).
fn recv_with_fds(conn: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut header = [0u8; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: header.len() };
    // SAFETY: see send_with_fds.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers.
    let got = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let n =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors"));
    }
    let got = got as usize;
    if got == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed"));
    }
    (&*conn).read_exact(&mut header[got..])?;
    let mut body = vec![0u8; crate::daemon::protocol::frame_len(header)?];
    (&*conn).read_exact(&mut body)?;
    Ok((body, fds))
}

// ---------------------------------------------------------------------------------------------
// The worker itself
// ---------------------------------------------------------------------------------------------

static WORKER: AtomicBool = AtomicBool::new(false);

/// Whether this process is a worker: its parent is the daemon, which may die or restart
/// without the worker's caller being gone (`run` must not take that for a hang-up).
pub fn is_worker() -> bool {
    WORKER.load(Ordering::SeqCst)
}

/// `slipway worker [--who KEY] -- WORDS` (hidden), as the daemon starts it: refuses unless root,
/// becomes the home's owner keeping a saved uid of 0 ([`become_worker`]), runs WORDS and writes
/// its exit code on fd 3 (the caller's status pipe).
pub fn run(home: &Home, who: Option<&str>, words: Vec<String>) -> anyhow::Result<i32> {
    // SAFETY: fcntl on fd 3, which the daemon set up; close-on-exec so no command we start
    // holds the caller's pipe open.
    if unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        bail!("slipway worker is started by the daemon only (no status descriptor)");
    }
    // SAFETY: fd 3 is ours from here on.
    let status = unsafe { std::fs::File::from_raw_fd(STATUS_FD) };
    become_worker(home)?;
    WORKER.store(true, Ordering::SeqCst);
    let mut argv = vec!["slipway".to_string()];
    argv.extend(words);
    let code = match crate::cli::try_parse(argv) {
        Ok(cli) => match crate::cli::dispatch(home, cli.command, who) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("slipway: {err:#}");
                1
            }
        },
        Err(err) => {
            eprintln!("slipway: {err}");
            2
        }
    };
    if let Err(err) = (&status).write_all(format!("{code}\n").as_bytes()) {
        eprintln!("slipway: reporting the exit code {code}: {err}");
    }
    Ok(code)
}

/// Root → the home's owner (its groups, gid and uid: real and effective), saved uid and gid 0,
/// `HOME`, `USER` and `LOGNAME` the owner's. Refuses unless root on a home another user owns.
pub fn become_worker(home: &Home) -> anyhow::Result<()> {
    use nix::unistd::{Uid, User};
    let Some((uid, _)) = crate::daemon::home_owner(home) else {
        bail!("slipway worker runs only as root on a home another user owns");
    };
    let user = User::from_uid(Uid::from_raw(uid))?.with_context(|| format!("uid {uid} has no user entry"))?;
    let name = std::ffi::CString::new(user.name.clone())?;
    nix::unistd::initgroups(&name, user.gid).context("initgroups")?;
    let gid = user.gid.as_raw();
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        if libc::setresgid(gid, gid, 0) != 0 || libc::setresuid(uid, uid, 0) != 0 {
            return Err(io::Error::last_os_error()).context("becoming the home's owner");
        }
    }
    // Still single-threaded here, so the environment is ours.
    std::env::set_var("HOME", &user.dir);
    std::env::set_var("USER", &user.name);
    std::env::set_var("LOGNAME", &user.name);
    // root's working directory (/root) is usually closed to the owner; git and Python care.
    if nix::unistd::access(".", nix::unistd::AccessFlags::X_OK).is_err() {
        std::env::set_current_dir(home.root())
            .with_context(|| format!("entering {}", home.root().display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(words: &[&str], env: &[(&str, &str)]) -> SpawnRequest {
        SpawnRequest {
            words: words.iter().map(|w| w.to_string()).collect(),
            who: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            refs: None,
        }
    }

    #[test]
    fn spawn_requests_are_checked() {
        let home = Path::new("/var/lib/slipway");
        let repo = "/var/lib/slipway/repos/hello.git";
        let quarantine = "/var/lib/slipway/repos/hello.git/objects/tmp_objdir-incoming-x";
        let hook = ["hook", "pre-receive"];
        for (words, env, ok, why) in [
            (&["run", "--", "hello", "id", "-u"][..], &[][..], true, ""),
            (&["config:set", "--", "hello", "A=1"], &[("TERM", "xterm")], true, ""),
            (
                &["config:unset", "--no-restart", "--", "hello", "A"],
                &[("SLIPWAY_BUILD_TIMEOUT", "5")],
                true,
                "",
            ),
            (&["rollback", "--", "hello", "v1"], &[], true, ""),
            (&hook, &[("GIT_DIR", repo), ("GIT_QUARANTINE_PATH", quarantine)], true, ""),
            (
                &hook,
                &[
                    ("GIT_DIR", repo),
                    ("GIT_ALTERNATE_OBJECT_DIRECTORIES", "/var/lib/slipway/repos/hello.git/objects:"),
                ],
                true,
                "",
            ),
            (&["apps:destroy", "hello"], &[], false, "only the hook"),
            (&["keys:add", "x"], &[], false, "only the hook"),
            (&["--home", "/tmp/x", "run", "--", "hello", "id"], &[], false, "global options"),
            (&["run", "hello", "id"], &[], false, "only the hook"), // not the words `words` makes
            (
                &["run", "--", "hello", "id"],
                &[("LD_PRELOAD", "/tmp/x.so")],
                false,
                "LD_PRELOAD is not passed",
            ),
            (&["run", "--", "hello", "id"], &[("GIT_DIR", repo)], false, "only passed to the hook"),
            (&["run", "--", "hello", "id"], &[("SLIPWAY_HOME", "/tmp")], false, "not passed"),
            (&["run", "--", "hello", "id"], &[("SLIPWAY_PUSHED_BY", "a b")], false, "not a key name"),
            (&hook, &[], false, "needs GIT_DIR"),
            (&hook, &[("GIT_DIR", "/etc")], false, "GIT_DIR must be"),
            (&hook, &[("GIT_DIR", "/var/lib/slipway/repos/../.ssh")], false, "GIT_DIR must be"),
            (&hook, &[("GIT_DIR", "repos/hello.git")], false, "GIT_DIR must be"),
            (&hook, &[("GIT_DIR", "/var/lib/slipway/repos/Bad_Name.git")], false, "GIT_DIR must be"),
            (&hook, &[("GIT_DIR", repo), ("GIT_OBJECT_DIRECTORY", "/etc")], false, "is not inside"),
            (
                &hook,
                &[
                    ("GIT_DIR", repo),
                    ("GIT_QUARANTINE_PATH", "/var/lib/slipway/repos/hello.git/../other.git"),
                ],
                false,
                "is not inside",
            ),
        ] {
            let got = validate(home, &request(words, env));
            match (ok, got) {
                (true, Ok(spawn)) => assert_eq!(spawn.words, words, "{words:?}"),
                (false, Err(e)) => assert!(e.contains(why), "{words:?} {env:?}: {e}"),
                (_, got) => panic!("{words:?} {env:?}: {got:?}"),
            }
        }
        let mut bad_key = request(&["run", "--", "hello", "id"], &[]);
        bad_key.who = Some("no spaces please".into());
        assert!(validate(home, &bad_key).unwrap_err().contains("key name"));
        let mut refs = request(&["run", "--", "hello", "id"], &[]);
        refs.refs = Some("a b refs/heads/main\n".into());
        assert!(validate(home, &refs).unwrap_err().contains("only passed to the hook"));
        let mut pushed = request(&hook, &[("GIT_DIR", repo)]);
        pushed.refs = Some("a b refs/heads/main\n".into());
        let spawn = validate(home, &pushed).unwrap();
        assert_eq!(
            (spawn.cwd.as_path(), spawn.stdin.as_deref()),
            (Path::new(repo), Some("a b refs/heads/main\n"))
        );
    }

    #[test]
    fn the_words_of_app_running_commands_parse_back_to_them() {
        for line in [
            "run hello -- python -c print(1)",
            "run -a hello ls -la",
            "config:set hello A=1 --no-restart",
            "config:unset hello A B",
            "rollback hello v3",
            "rollback hello",
            "hook pre-receive",
        ] {
            let argv = std::iter::once("slipway").chain(line.split(' ')).map(str::to_string).collect();
            let cli = crate::cli::try_parse(argv).expect(line);
            let w = words(&cli.command).expect(line);
            let again =
                crate::cli::try_parse(std::iter::once("slipway".to_string()).chain(w.clone()).collect())
                    .unwrap_or_else(|e| panic!("{line}: {w:?}: {e}"));
            assert_eq!(words(&again.command), Some(w), "{line}");
        }
        let argv = ["slipway", "ps", "hello"].map(str::to_string).to_vec();
        assert_eq!(words(&crate::cli::try_parse(argv).unwrap().command), None);
    }

    #[test]
    fn exit_codes_come_from_the_status_pipe() {
        assert_eq!(exit_code("0\n"), 0);
        assert_eq!(exit_code("42"), 42);
        assert_eq!(exit_code(""), 1, "killed before writing a code");
        assert_eq!(exit_code("garbage"), 1);
    }
}
