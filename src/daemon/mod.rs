//! The slipway daemon: one per server. It reconciles the desired state in SQLite with running
//! dynos, restarts crashed ones, and answers the CLI and build hook on `run/slipway.sock`.
//!
//! Process model (DESIGN.md): parse arguments, daemonize, and only then build the tokio
//! runtime — forking a process whose runtime threads already exist hangs. The daemon owns no
//! dyno's pipes (each dyno has a shim, see [`shim`]), so it can stop, crash or be upgraded while
//! every dyno keeps running; on start it re-adopts them from SQLite.

pub mod client;
pub mod plan;
pub mod process;
pub mod protocol;
pub mod server;
pub mod shim;
pub mod supervisor;
pub mod world;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

use crate::home::Home;
use crate::settings::Settings;
use crate::store::Store;

/// Starts the daemon. Detached (the default) the parent returns once the socket answers.
pub fn start(home: &Home, foreground: bool) -> anyhow::Result<()> {
    home.ensure_layout().with_context(|| format!("creating {}", home.root().display()))?;
    let settings = Settings::load(home)?;
    if let Some(pid) = running_pid(home) {
        bail!("the daemon is already running (pid {pid})");
    }
    // Open the database and try the router's address before forking, so a broken database or
    // a port in use is reported to the operator's terminal, not only to the daemon's log.
    give_db_to_owner(home)?;
    drop(Store::open(&home.db())?);
    // (`can_bind` succeeds while our own router, which outlives daemons, holds the address.)
    crate::router::reuseport::can_bind(settings.router_addr).with_context(|| {
        format!(
            "the router cannot listen on {} (choose another with: slipway settings:set router_addr=IP:PORT)",
            settings.router_addr
        )
    })?;

    if !foreground {
        let log = open_daemon_log(home)?;
        let outcome = daemonize::Daemonize::new()
            .working_directory(home.root())
            .umask(0o077)
            .stdout(log.try_clone()?)
            .stderr(log)
            .execute();
        match outcome {
            daemonize::Outcome::Parent(result) => {
                result.context("detaching the daemon")?;
                return wait_until_ready(home);
            }
            daemonize::Outcome::Child(result) => {
                if let Err(err) = result {
                    eprintln!("slipway daemon: detaching failed: {err}");
                    std::process::exit(1);
                }
            }
        }
    }
    init_tracing(home, foreground, &settings.log);
    let _lock = DaemonLock::take(home)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(home.clone(), settings))
}

async fn run(home: Home, settings: Settings) -> anyhow::Result<()> {
    // Dynos inherit the daemon's fd limit (as when the router ran inside the daemon).
    crate::router::raise_fd_limit();
    let store = Store::open(&home.db())?;
    // Daemons before slipway.toml recorded their log policy there; every writer now reads the
    // settings file instead.
    remove_if_present(&home.root().join("logs").join(".policy"))?;
    // Private dirs of dynos whose shim (or `run`) died without removing them.
    let removed = crate::sandbox::remove_dead(&home.dynos()).context("removing dead dynos' private dirs")?;
    if removed > 0 {
        tracing::info!(removed, "removed private dirs of dynos that are gone");
    }
    let socket = home.socket();
    // We hold the home lock, so a socket file left here belongs to a dead daemon.
    remove_if_present(&socket)?;
    let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    // A root daemon on a home another user owns: the socket is that user's (0600), for the CLI
    // it runs over SSH; the daemon stays root and starts its app-running commands as workers.
    let owner = home_owner(&home);
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(&socket, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to uid {uid}", socket.display()))?;
    }
    crate::worker::serve(&home, owner).context("starting the worker socket")?;
    // The router is a process of its own that outlives the daemon (router/service.rs): adopt
    // the running one, start one, or hand over from one of another binary.
    let router = crate::router::keeper::start(&home, &settings).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let supervisor = supervisor::Supervisor::new(home.clone(), settings, store, tx.clone(), router);
    let supervising = tokio::spawn(supervisor.run(rx));
    // Automatic certificates (`certs:auto:enable`): its own task, which only reads the database.
    tokio::spawn(crate::acme::run(home.clone()));
    tracing::info!(home = %home.root().display(), pid = std::process::id(), "slipway daemon started");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = server::serve(listener, tx.clone()) => {}
        _ = term.recv() => tracing::info!("SIGTERM: shutting down, dynos and the router keep running"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down, dynos and the router keep running"),
        result = supervising => {
            // It stops only when it could not load the state; exit non-zero so systemd retries.
            tracing::error!(?result, "the supervisor stopped");
            remove_if_present(&socket)?;
            bail!("the supervisor stopped (see {})", home.daemon_log().display());
        }
    }
    // What the supervisor decided last reaches SQLite before the process ends.
    let (done, flushed) = tokio::sync::oneshot::channel();
    if tx.send(supervisor::Event::Shutdown(Duration::from_secs(10), done)).is_ok() && flushed.await.is_err() {
        tracing::warn!("the supervisor ended before its writes were flushed");
    }
    remove_if_present(&socket)?;
    Ok(())
}

/// The home's owner (uid, gid) when this daemon is root on a home another user owns (install.sh's
/// platform user): what it creates in the home is given to that user.
pub fn home_owner(home: &Home) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(home.root()).ok()?;
    (nix::unistd::geteuid().is_root() && meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

/// As root on a home another user owns: makes `slipway.db` exist as that user's (0600) before
/// SQLite opens it, so SQLite, which gives its `-wal` and `-shm` files to the database's owner
/// when root, keeps all three usable by the CLI the owner runs.
fn give_db_to_owner(home: &Home) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if home_owner(home).is_none() {
        return Ok(());
    }
    let path = home.db();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    crate::fsutil::give_to_dir_owner(&file, &File::open(home.root())?)
        .with_context(|| format!("giving {} to the home's owner", path.display()))
}

fn remove_if_present(path: &std::path::Path) -> anyhow::Result<()> {
    crate::home::remove_if_present(path).with_context(|| format!("removing {}", path.display()))
}

/// `slipway daemon --stop`: SIGTERM to the daemon, then wait until it is gone. Dynos stay up.
pub fn stop(home: &Home) -> anyhow::Result<()> {
    let Some(pid) = running_pid(home) else {
        bail!("the daemon is not running");
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("signalling the daemon (pid {pid})"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_pid(home).is_some() {
        if Instant::now() > deadline {
            bail!("the daemon (pid {pid}) did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The pid of the live daemon, or None when no daemon holds this home. The pid comes from the
/// kernel's lock table, else from `run/slipway.pid` (which the daemon rewrites if deleted).
pub fn running_pid(home: &Home) -> Option<i32> {
    if let Ok(dir) = File::open(home.root()) {
        // A shared probe, dropped at once: it conflicts only with the daemon's exclusive lock.
        if let Err((dir, Errno::EWOULDBLOCK)) = Flock::lock(dir, FlockArg::LockSharedNonblock) {
            return lock_holder(&dir).or_else(|| pid_file_pid(home));
        }
    }
    // A daemon of an older slipway (before the home lock) holds only its pid file's lock.
    let file = File::open(home.pid_file()).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Err((_, Errno::EWOULDBLOCK)) => pid_file_pid(home),
        _ => None,
    }
}

/// What makes a daemon the only one of its home, held for its whole life:
/// - an exclusive flock on the home directory itself: unlike a lock file it cannot be deleted
///   away while the home exists (a deleted `run/slipway.pid` once let a second daemon start and
///   unlink the first one's socket);
/// - an exclusive flock on `run/slipway.pid`, as older slipways took and still look for, so an
///   older binary (an upgrade in progress) sees this daemon, and this one sees theirs.
///
/// The kernel drops both with the process however it dies; the descriptors are close-on-exec, so
/// shims and dynos never inherit them. A thread rewrites (and relocks) the pid file if it is
/// deleted or replaced.
pub struct DaemonLock {
    _home: Flock<File>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DaemonLock {
    pub fn take(home: &Home) -> anyhow::Result<DaemonLock> {
        let root = home.root();
        let dir = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        let already_running = |holder: Option<i32>| match holder.or_else(|| pid_file_pid(home)) {
            Some(pid) => anyhow::anyhow!("the daemon is already running (pid {pid})"),
            None => anyhow::anyhow!("the daemon is already running (the lock on {} is held)", root.display()),
        };
        let home_lock = match lock_exclusive(dir) {
            Ok(lock) => lock,
            Err((dir, Errno::EWOULDBLOCK)) => return Err(already_running(lock_holder(&dir))),
            Err((_, errno)) => bail!("locking {}: {errno}", root.display()),
        };
        let pid_lock = match open_pid_file(home).map(lock_exclusive) {
            Ok(Ok(lock)) => lock,
            Ok(Err((_, Errno::EWOULDBLOCK))) => return Err(already_running(None)),
            Ok(Err((_, errno))) => bail!("locking {}: {errno}", home.pid_file().display()),
            Err(err) => return Err(err).with_context(|| format!("opening {}", home.pid_file().display())),
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        keep_pid_file(home.clone(), pid_lock, stop.clone())?;
        Ok(DaemonLock { _home: home_lock, stop })
    }
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An exclusive flock, retried for ~200 ms: another command's probe (`running_pid`) holds a lock
/// for a moment only.
fn lock_exclusive(mut file: File) -> Result<Flock<File>, (File, Errno)> {
    for _ in 0..10 {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Err((again, Errno::EWOULDBLOCK)) => file = again,
            done => return done,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
}

fn open_pid_file(home: &Home) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: a link planted at run/slipway.pid is refused, never written through.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(home.pid_file())?;
    // A root daemon on the platform user's home leaves it that user's, like everything in run/.
    crate::fsutil::give_to_dir_owner(&file, &File::open(home.run_dir())?)?;
    Ok(file)
}

/// Writes this process's pid into the locked pid file, and checks every second that
/// `run/slipway.pid` still is that file with that pid; a deleted or replaced one is recreated,
/// relocked and rewritten.
fn keep_pid_file(
    home: Home,
    lock: Flock<File>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id() as i32;
    let write = move |lock: &mut Flock<File>| -> std::io::Result<()> {
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{me}")?;
        lock.flush()
    };
    let mut lock = lock;
    write(&mut lock).with_context(|| format!("writing {}", home.pid_file().display()))?;
    let mut warned = false;
    std::thread::Builder::new()
        .name("pid-file".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let ours = lock.metadata().map(|m| (m.dev(), m.ino())).ok();
                let at_path = std::fs::metadata(home.pid_file()).map(|m| (m.dev(), m.ino())).ok();
                if ours.is_some() && ours == at_path && pid_file_pid(&home) == Some(me) {
                    continue;
                }
                if ours != at_path {
                    let relocked = open_pid_file(&home).map_err(|e| e.to_string()).and_then(|file| {
                        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| errno.to_string())
                    });
                    match relocked {
                        Ok(new) => lock = new,
                        Err(err) => {
                            if !warned {
                                tracing::warn!(path = %home.pid_file().display(), %err, "cannot recreate the pid file");
                                warned = true;
                            }
                            continue;
                        }
                    }
                }
                if let Err(err) = write(&mut lock) {
                    tracing::warn!(path = %home.pid_file().display(), %err, "cannot rewrite the pid file");
                } else {
                    tracing::info!(path = %home.pid_file().display(), "pid file rewritten");
                    warned = false;
                }
            }
        })
        .context("starting the pid file keeper")?;
    Ok(())
}

fn pid_file_pid(home: &Home) -> Option<i32> {
    let mut text = String::new();
    File::open(home.pid_file()).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|pid| *pid > 1)
}

/// The pid holding an exclusive flock on `file`, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; device numbers in hex).
fn lock_holder(file: &File) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().filter(|line| !line.contains("->")).find_map(|line| {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            // A holder outside our pid namespace shows as 0.
            [_, "FLOCK", _, "WRITE", pid, dev_ino, ..] if *dev_ino == id => {
                pid.parse().ok().filter(|p| *p > 0)
            }
            _ => None,
        }
    })
}

fn open_daemon_log(home: &Home) -> anyhow::Result<File> {
    let path = home.daemon_log();
    crate::fsutil::open_append(&path).with_context(|| format!("opening {}", path.display()))
}

fn wait_until_ready(home: &Home) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if client::call(home, &protocol::Request::Status, Duration::from_secs(5)).is_ok() {
            let pid = running_pid(home).unwrap_or(0);
            println!("slipway daemon started (pid {pid}); its own log is {}", home.daemon_log().display());
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the daemon did not answer within 15 s; see {}", home.daemon_log().display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon's own log goes to `logs/slipway.log`, never into app logs, through a
/// [`DaemonLog`](crate::logs::daemon_log::DaemonLog): rotated at 10 MiB, rate-limited, and
/// unable to fail or panic whatever the disk does (a full disk used to kill the daemon, and
/// the router of every app with it, through a panicking `eprintln!`). In the foreground every
/// line is copied to the terminal too. Detached, the daemon's stdout and stderr (until now
/// `slipway.log` itself) become a pipe drained into the same log; panics are reported there.
fn init_tracing(home: &Home, foreground: bool, filter: &str) {
    let log = crate::logs::daemon_log::DaemonLog::install(&home.daemon_log(), foreground, filter);
    let background = if foreground { log.start_ticking() } else { log.capture_stdio() };
    if let Err(err) = background {
        tracing::warn!(%err, "the daemon log's background thread did not start; summaries come with the next line");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_lock_survives_a_deleted_pid_file_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        home.ensure_layout().unwrap();
        assert_eq!(running_pid(&home), None);
        let lock = DaemonLock::take(&home).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(pid_file_pid(&home), Some(me));
        std::fs::remove_file(home.pid_file()).unwrap();
        // No pid file at all: the kernel's lock table still names this process.
        assert_eq!(lock_holder(&File::open(home.root()).unwrap()), Some(me));
        assert_eq!(running_pid(&home), Some(me));
        let err = DaemonLock::take(&home).err().unwrap().to_string();
        assert_eq!(err, format!("the daemon is already running (pid {me})"));
        // The keeper puts the pid file back, locked.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_file_pid(&home) != Some(me) {
            assert!(Instant::now() < deadline, "the pid file was not rewritten");
            std::thread::sleep(Duration::from_millis(50));
        }
        let relocked = Flock::lock(File::open(home.pid_file()).unwrap(), FlockArg::LockSharedNonblock);
        assert!(matches!(relocked, Err((_, Errno::EWOULDBLOCK))), "the new pid file is not locked");
        drop(lock);
    }

    #[test]
    fn a_daemon_of_an_older_slipway_holding_only_the_pid_file_lock_counts() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        home.ensure_layout().unwrap();
        std::fs::write(home.pid_file(), "4242\n").unwrap();
        let old = Flock::lock(File::open(home.pid_file()).unwrap(), FlockArg::LockExclusive).unwrap();
        assert_eq!(running_pid(&home), Some(4242));
        let err = DaemonLock::take(&home).err().unwrap().to_string();
        assert_eq!(err, "the daemon is already running (pid 4242)");
        drop(old);
        assert_eq!(running_pid(&home), None);
        drop(DaemonLock::take(&home).unwrap());
    }
}
