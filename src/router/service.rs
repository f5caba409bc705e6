//! `slipway router` (hidden): the router as a process of its own, so serving never depends on
//! the daemon being up. The daemon starts it in a session of its own (as it starts shims), so
//! it outlives a daemon that is killed, stopped or upgraded; see [`super::keeper`] for the
//! daemon's side and [`super::control`] for what they share.
//!
//! At start it listens on `router_addr` and (unless `off`) `https_addr` with `SO_REUSEPORT`
//! ([`super::reuseport`]; HTTPS that cannot be bound is logged and left out), loads the
//! last table from `run/routes.json` (so it serves what was last known even when no daemon
//! runs), starts its threads, takes over `run/router.sock` (bound under a temporary name,
//! renamed into place) and announces itself in `run/router`. Then it follows what the daemon
//! sends; while no daemon is connected it keeps routing to the dynos it knew.
//!
//! It ends on `Retire` (a successor accepts on the address: steer, finish in-flight requests,
//! exit) or on SIGTERM/SIGINT (`slipway daemon --stop` with no dyno left, or an uninstall:
//! stop accepting, finish in-flight requests, exit).

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::control::{self, Announcement, FromRouter, ToRouter};
use super::{Router, RouterConfig};
use crate::home::Home;
use crate::settings::Settings;

/// How long a retiring router keeps accepting after steering new connections away, for those
/// already queued on its socket (a loopback handshake takes microseconds).
const SETTLE: Duration = Duration::from_millis(300);

/// Why the router stops.
enum Stop {
    /// A successor accepts on the address.
    Retire(Duration),
    /// A signal: nobody takes over.
    Signal(&'static str),
}

pub fn run(home: &Home) -> anyhow::Result<()> {
    home.ensure_layout().with_context(|| format!("creating {}", home.root().display()))?;
    let settings = Settings::load(home)?;
    init_tracing(home, &settings.log);
    super::raise_fd_limit();
    let addr = settings.router_addr;
    let listener = super::reuseport::bind(addr).with_context(|| {
        format!("the router cannot listen on {addr} (choose another with: slipway settings:set router_addr=IP:PORT)")
    })?;
    // HTTPS is served when its address can be had; plain HTTP is served either way.
    let https = match settings.https_addr {
        Some(addr) => match super::reuseport::bind(addr) {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::error!(%addr, %err, "the router cannot listen for HTTPS; serving plain HTTP only (choose another address with: slipway settings:set https_addr=IP:PORT)");
                None
            }
        },
        None => None,
    };
    let router = Router::new(RouterConfig::from_settings(home, &settings));
    super::acme_http01::serve_from(crate::certs::http01_dir(home));
    let routes = control::routes_file(home);
    match std::fs::read(&routes) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(table) => {
                router.update(table);
                tracing::info!(path = %routes.display(), "router: serving the last known routes");
            }
            Err(err) => tracing::warn!(path = %routes.display(), %err, "router: ignoring unreadable routes"),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(path = %routes.display(), %err, "router: cannot read the last routes"),
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let https_addr = https.as_ref().and_then(|l| l.local_addr().ok());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (control, socket_ino) = take_over_socket(home)?;
    let me = std::process::id() as i32;
    let start = crate::daemon::process::start_time(me).context("reading this process's start time")?;
    let announced = Announcement {
        pid: me,
        start,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config: control::config_key(&settings),
    };
    control::write_replacing(&control::announcement(home), announced.line().as_bytes())
        .with_context(|| format!("writing {}", control::announcement(home).display()))?;
    // Root on the platform user's home: the announcement and the socket are the owner's, as
    // everything else root makes there (`slipway status`, run as the owner, reads the one).
    if let Some((uid, gid)) = crate::daemon::home_owner(home) {
        for path in [control::announcement(home), control::socket(home)] {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to uid {uid}", path.display()))?;
        }
    }
    // Started by a root daemon: every socket is bound, so drop to an unprivileged user before
    // the first request is read (the threads start below).
    let keeps_state = drop_privileges(home, settings.app_uids)?;
    router.serve_with_tls_on_threads(listener, https, threads).context("starting the router's threads")?;
    let stop = runtime.block_on(async {
        let https = https_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        let control = UnixListener::from_std(control).context("registering the control socket")?;
        tracing::info!(%addr, %https, threads, pid = me, version = %announced.version, "router listening");
        anyhow::Ok(follow(home, &router, control, keeps_state).await)
    });
    let stop = stop.map(|stop| (stop, socket_ino, announced));
    let (stop, socket_ino, announced) = stop?;
    let (steer, grace) = match stop {
        Stop::Retire(grace) => {
            tracing::info!("router: a new router accepts on the address; handing over");
            (true, grace)
        }
        Stop::Signal(name) => {
            tracing::info!(signal = name, "router: stopping");
            (false, control::retire_grace(&settings))
        }
    };
    let left = runtime.block_on(router.retire(steer, SETTLE, grace));
    if left > 0 {
        tracing::warn!(
            connections = left,
            "router: connections still open after the grace period; closing them"
        );
    }
    // What names this process only: a successor has put its own socket and announcement there.
    // A router that runs as its own uid (root-owned home) cannot remove them; the announcement of
    // a dead router is ignored (pid and start time) and the next router renames over the socket.
    let mut leftovers = Vec::new();
    if Announcement::read(home).is_some_and(|a| a == announced) {
        leftovers.push(control::announcement(home));
    }
    let socket = control::socket(home);
    if std::fs::symlink_metadata(&socket).is_ok_and(|m| m.ino() == socket_ino) {
        leftovers.push(socket);
    }
    for path in leftovers {
        match crate::home::remove_if_present(&path) {
            Ok(()) => {}
            Err(err) if !keeps_state => {
                tracing::info!(path = %path.display(), %err, "router: left for the next router")
            }
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
    tracing::info!("router stopped");
    Ok(())
}

/// Binds the control socket under a temporary name and renames it over `run/router.sock`, so
/// the daemon's next connection reaches this router while a predecessor's open connections
/// still reach the predecessor. Returns it and its inode.
fn take_over_socket(home: &Home) -> anyhow::Result<(std::os::unix::net::UnixListener, u64)> {
    let path = control::socket(home);
    let tmp = home.run_dir().join(format!(".router.sock.{}", std::process::id()));
    crate::home::remove_if_present(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("binding {}", tmp.display()))?;
    let ino = std::fs::symlink_metadata(&tmp).with_context(|| format!("reading {}", tmp.display()))?.ino();
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok((listener, ino))
}

/// Started as root (by a root daemon), becomes the router's user ([`crate::users::router_user`]):
/// no supplementary groups, its gid, its uid. Returns whether the router may still write the
/// home's `run/` (false as its own uid on a root-owned home: then the daemon keeps
/// `run/routes.json`).
fn drop_privileges(home: &Home, range: crate::users::UidRange) -> anyhow::Result<bool> {
    let Some(user) = crate::users::router_user(home.root(), range) else { return Ok(true) };
    if !user.owns_home {
        start_log_helper(home)?;
    }
    crate::users::drop_to(user.uid, user.gid)
        .with_context(|| format!("the router cannot become {} (uid {})", user.name, user.uid))?;
    tracing::info!(user = %user.name, uid = user.uid, "router: dropped root after binding its sockets");
    Ok(user.owns_home)
}

/// For a router about to become its own uid (root-owned home): starts its log helper (`slipway router-log`, root,
/// in the router's process group, so whatever kills the router's group kills it too; it ends
/// when the router's end of the socket closes) and relays app log lines through it.
fn start_log_helper(home: &Home) -> anyhow::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    if unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("making the log helper's socket");
    }
    // SAFETY: both descriptors were just made and are owned here only.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // After an upgrade replaced the file, Linux names the running one "PATH (deleted)".
    let exe = std::env::current_exe().context("locating the slipway binary")?;
    let exe = exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")).map_or(exe.clone(), Into::into);
    std::process::Command::new(exe)
        .arg("--home")
        .arg(home.root())
        .arg("router-log")
        .current_dir(home.root())
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the router's log helper")?;
    super::log::relay_through(ours);
    Ok(())
}

/// Serves control connections until told to retire or signalled.
async fn follow(home: &Home, router: &Router, control: UnixListener, keeps_routes: bool) -> Stop {
    let (retire_tx, mut retire_rx) = mpsc::unbounded_channel::<Duration>();
    let (Ok(mut term), Ok(mut int)) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) else {
        tracing::error!("router: cannot handle signals; stopping");
        return Stop::Signal("none");
    };
    loop {
        tokio::select! {
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    // Builds and dynos may reach the socket's path (Landlock cannot deny a
                    // connect), so they are refused here as on the daemon's socket.
                    if let Some(why) = crate::daemon::server::refusal(&stream) {
                        tracing::warn!("router: control connection refused: {why}");
                        continue;
                    }
                    let (home, router, retire) = (home.clone(), router.clone(), retire_tx.clone());
                    tokio::spawn(async move { connection(home, router, stream, retire, keeps_routes).await });
                }
                Err(err) => {
                    tracing::warn!(%err, "router: control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(grace) = retire_rx.recv() => return Stop::Retire(grace),
            _ = term.recv() => return Stop::Signal("SIGTERM"),
            _ = int.recv() => return Stop::Signal("SIGINT"),
        }
    }
}

/// One daemon connection: tables are applied in the order they come, and before anything that
/// follows them on the connection (a drain waits for requests the table it follows dropped).
async fn connection(
    home: Home,
    router: Router,
    stream: UnixStream,
    retire: mpsc::UnboundedSender<Duration>,
    keeps_routes: bool,
) {
    let (read, mut write) = stream.into_split();
    let (replies, mut outbox) = mpsc::unbounded_channel::<FromRouter>();
    let writer = tokio::spawn(async move {
        while let Some(reply) = outbox.recv().await {
            let Ok(mut line) = serde_json::to_vec(&reply) else { continue };
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<ToRouter>(&line) {
            Ok(ToRouter::Routes { table }) if !keeps_routes => router.update(table),
            Ok(ToRouter::Routes { table }) => {
                let persisted = serde_json::to_vec(&table)
                    .map_err(std::io::Error::other)
                    .and_then(|bytes| control::write_replacing(&control::routes_file(&home), &bytes));
                router.update(table);
                if let Err(err) = persisted {
                    // Serving goes on; only a router started later without a daemon misses it.
                    tracing::warn!(%err, path = %control::routes_file(&home).display(), "router: cannot keep the routes");
                }
            }
            Ok(ToRouter::Drain { id, port, grace_ms }) => {
                let (router, replies) = (router.clone(), replies.clone());
                tokio::spawn(async move {
                    let idle = router.drain(port, Duration::from_millis(grace_ms)).await;
                    // The daemon may have gone meanwhile; then nobody waits for the answer.
                    replies.send(FromRouter::Drained { id, idle }).ok();
                });
            }
            Ok(ToRouter::Retire { grace_ms }) => {
                replies.send(FromRouter::Retiring).ok();
                retire.send(Duration::from_millis(grace_ms)).ok();
            }
            Err(err) => tracing::warn!(%err, "router: ignoring a control message it cannot read"),
        }
    }
    drop(replies);
    writer.await.ok();
}

/// The router's own lines go to `logs/router.log` (rotated, rate-limited, never failing), and
/// so do its stdout and stderr (panics included).
fn init_tracing(home: &Home, filter: &str) {
    let log = crate::logs::daemon_log::DaemonLog::install(&control::log_file(home), false, filter);
    if let Err(err) = log.capture_stdio() {
        tracing::warn!(%err, "the router log's background thread did not start");
    }
}
