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
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
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
    let _pid_lock = lock_pid_file(home)?;
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

/// The pid of the live daemon: the pid file's content, but only while its lock is held.
pub fn running_pid(home: &Home) -> Option<i32> {
    let mut file = File::open(home.pid_file()).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => None, // nobody holds it: stale
        Err(_) => text.trim().parse().ok(),
    }
}

/// Holds an exclusive lock on `run/slipway.pid` for the daemon's lifetime: two daemons on one
/// home cannot both run, and the lock vanishes with the process however it dies.
fn lock_pid_file(home: &Home) -> anyhow::Result<Flock<File>> {
    let path = home.pid_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("the daemon is already running (lock on {} is held)", path.display()))?;
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    lock.flush()?;
    Ok(lock)
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

/// The daemon's own log goes to `logs/slipway.log`, never into app logs, through a
/// [`DaemonLog`](crate::logs::daemon_log::DaemonLog): rotated at 10 MiB, rate-limited, and
/// unable to fail or panic whatever the disk does (a full disk used to kill the daemon, and
/// the router of every app with it, through a panicking `eprintln!`). In the foreground every
/// line is copied to the terminal too. Detached, the daemon's stdout and stderr (until now
/// `slipway.log` itself) become a pipe drained into the same log; panics are reported there.
fn init_tracing(home: &Home, foreground: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = crate::logs::daemon_log::DaemonLog::open(&home.daemon_log(), foreground);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        // Its own error reports are `eprintln!`s; our writer never fails anyway.
        .log_internal_errors(false)
        .with_writer(log.clone())
        .try_init();
    log.report_panics();
    let background = if foreground { log.start_ticking() } else { log.capture_stdio() };
    if let Err(err) = background {
        tracing::warn!(%err, "the daemon log's background thread did not start; summaries come with the next line");
    }
}
