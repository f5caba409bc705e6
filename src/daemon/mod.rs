//! The slipway daemon: one per server. It reconciles the desired state in SQLite with running
//! dynos, restarts crashed ones, and answers the CLI and build hook on `run/slipway.sock`.
//!
//! Process model (DESIGN.md): parse arguments, daemonize, and only then build the tokio
//! runtime — forking a process whose runtime threads already exist hangs. The daemon owns no
//! dyno's pipes (each dyno has a shim, see [`shim`]), so it can stop, crash or be upgraded while
//! every dyno keeps running; on start it re-adopts them from SQLite.

pub mod client;
pub mod plan;
pub mod ports;
pub mod process;
pub mod protocol;
pub mod server;
pub mod shim;
pub mod supervisor;

use std::fs::{File, OpenOptions};
use std::io::Read;
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
    let settings = Settings::from_env()?;
    if let Some(pid) = running_pid(home) {
        bail!("the daemon is already running (pid {pid})");
    }
    // Open the database and try the router's address before forking, so a broken database or
    // a port in use is reported to the operator's terminal, not only to the daemon's log.
    drop(Store::open(&home.db())?);
    drop(std::net::TcpListener::bind(settings.router_addr).with_context(|| {
        format!("the router cannot listen on {} (set SLIPWAY_ROUTER_ADDR)", settings.router_addr)
    })?);

    if !foreground {
        let log = open_daemon_log(home)?;
        let outcome = daemonize::Daemonize::new()
            .working_directory(home.root())
            .umask(0o027)
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
    init_tracing(home, foreground);
    let _home_lock = lock_home(home)?;
    keep_pid_file(home.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(home.clone(), settings))
}

async fn run(home: Home, settings: Settings) -> anyhow::Result<()> {
    let store = Store::open(&home.db())?;
    settings
        .log_policy
        .record(&home.root().join("logs"))
        .context("recording the log rotation policy in logs/.policy")?;
    let socket = home.socket();
    // We hold the pid lock, so a socket file left here belongs to a dead daemon.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    let router = crate::router::Router::new(crate::router::RouterConfig::from_settings(&home, &settings));
    let router_listener = std::net::TcpListener::bind(settings.router_addr).with_context(|| {
        format!("the router cannot listen on {} (set SLIPWAY_ROUTER_ADDR)", settings.router_addr)
    })?;
    let router_threads = std::thread::available_parallelism().map_or(1, usize::from);
    router.serve_on_threads(router_listener, router_threads).context("starting the router's threads")?;
    tracing::info!(addr = %settings.router_addr, threads = router_threads, "router listening");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let supervisor = supervisor::Supervisor::new(home.clone(), settings, store, tx.clone(), router);
    let supervising = tokio::spawn(supervisor.run(rx));
    tracing::info!(home = %home.root().display(), pid = std::process::id(), "slipway daemon started");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = server::serve(listener, tx) => {}
        _ = term.recv() => tracing::info!("SIGTERM: shutting down, dynos keep running"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down, dynos keep running"),
        result = supervising => tracing::error!(?result, "the supervisor stopped"),
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
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

/// The pid of the live daemon, or None when no daemon holds this home's lock. The pid comes
/// from `run/slipway.pid` (rewritten by the daemon if deleted), else from the kernel's lock table.
pub fn running_pid(home: &Home) -> Option<i32> {
    let dir = File::open(home.root()).ok()?;
    // A shared probe, dropped at once: it conflicts only with the daemon's exclusive lock.
    match Flock::lock(dir, FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => None,
        Err((dir, Errno::EWOULDBLOCK)) => pid_file_pid(home).or_else(|| lock_holder(&dir)),
        Err(_) => None,
    }
}

/// One daemon per home: an exclusive flock on the home directory itself, held for the daemon's
/// life. Unlike a lock file it cannot be deleted away while the home exists, and the kernel drops
/// it with the process however it dies. The descriptor is close-on-exec, so shims and dynos never
/// inherit it. A few short retries ride out another command's momentary probe (`running_pid`).
fn lock_home(home: &Home) -> anyhow::Result<Flock<File>> {
    let root = home.root();
    let mut dir = File::open(root).with_context(|| format!("opening {}", root.display()))?;
    for attempt in 0.. {
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((file, Errno::EWOULDBLOCK)) if attempt < 10 => {
                dir = file;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((file, Errno::EWOULDBLOCK)) => match pid_file_pid(home).or_else(|| lock_holder(&file)) {
                Some(pid) => bail!("the daemon is already running (pid {pid})"),
                None => bail!(
                    "the daemon is already running (another process holds the lock on {})",
                    root.display()
                ),
            },
            Err((_, errno)) => bail!("locking {}: {errno}", root.display()),
        }
    }
    unreachable!()
}

/// Writes `run/slipway.pid` (for operators and scripts; the lock is the guard), and keeps
/// rewriting it should it be deleted or overwritten while the daemon lives.
fn keep_pid_file(home: Home) {
    let me = std::process::id() as i32;
    let write = move || {
        if pid_file_pid(&home) == Some(me) {
            return;
        }
        let path = home.pid_file();
        let tmp = path.with_extension("pid.tmp");
        let written = std::fs::create_dir_all(home.run_dir())
            .and_then(|_| std::fs::write(&tmp, format!("{me}\n")))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), %err, "cannot write the pid file");
        }
    };
    write();
    let spawned = std::thread::Builder::new().name("pid-file".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        write();
    });
    if let Err(err) = spawned {
        tracing::warn!(%err, "cannot start the pid file keeper");
    }
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
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, dev_ino, ..] if *dev_ino == id && !line.contains("->") => {
                pid.parse().ok()
            }
            _ => None,
        }
    })
}

fn open_daemon_log(home: &Home) -> anyhow::Result<File> {
    let path = home.daemon_log();
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
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

/// The daemon's own log goes to `logs/slipway.log`, never into app logs. Detached, stderr
/// already is that file; in the foreground it goes to both the terminal and the file.
fn init_tracing(home: &Home, foreground: bool) {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let file = if foreground { open_daemon_log(home).ok() } else { None };
    let _ = match file {
        Some(file) => builder.with_writer(std::io::stderr.and(std::sync::Mutex::new(file))).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
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
        let lock = lock_home(&home).unwrap();
        // No pid file at all: the kernel's lock table still names this process.
        assert_eq!(lock_holder(&File::open(home.root()).unwrap()), Some(std::process::id() as i32));
        assert_eq!(running_pid(&home), Some(std::process::id() as i32));
        let err = lock_home(&home).unwrap_err().to_string();
        assert_eq!(err, format!("the daemon is already running (pid {})", std::process::id()));
        drop(lock);
        assert_eq!(running_pid(&home), None);
    }
}
