//! The daemon's side of the router process ([`super::service`]): adopt, start, hand over and
//! restart it, and send it route tables and drain requests ([`RouterLink`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::control::{self, Announcement, FromRouter, Plan, ToRouter};
use super::RouteTable;
use crate::daemon::process;
use crate::home::Home;
use crate::settings::Settings;

/// How long a new router has to announce itself.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The daemon's handle on the router: cheap to clone. Tables and drains go over one connection
/// to `run/router.sock`, in order; when the router is unreachable (restarting), they wait, and
/// the latest table is sent first on the next connection.
#[derive(Clone)]
pub struct RouterLink {
    latest: Arc<Mutex<Option<RouteTable>>>,
    tx: mpsc::UnboundedSender<Command>,
}

enum Command {
    /// Send the latest table.
    Routes,
    Drain {
        port: u16,
        grace: Duration,
        reply: oneshot::Sender<bool>,
    },
}

impl RouterLink {
    /// Makes `table` the router's table. Returns at once; tables reach the router in order.
    pub fn update(&self, table: RouteTable) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(table);
        // The link task lives as long as the daemon's runtime.
        self.tx.send(Command::Routes).ok();
    }

    /// Waits until no request is in flight to the backend on `port` (after an
    /// [`update`](Self::update) that removed it), or `max` has passed. False if `max` ran out.
    pub async fn drain(&self, port: u16, max: Duration) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Drain { port, grace: max, reply }).is_err() {
            return true;
        }
        // The router's own bound plus a margin for a router being restarted meanwhile.
        match tokio::time::timeout(max + Duration::from_secs(5), answer).await {
            Ok(Ok(idle)) => idle,
            _ => false,
        }
    }
}

/// Makes sure a router of this binary and these settings serves the home (adopting the one
/// running, starting one, or handing over from one of another binary), then keeps it: a router
/// that dies is started again and the event logged.
pub async fn start(home: &Home, settings: &Settings) -> anyhow::Result<RouterLink> {
    let config = control::config_key(settings);
    let version = env!("CARGO_PKG_VERSION");
    let found = Announcement::read(home).filter(Announcement::alive);
    let same_binary = found.as_ref().is_some_and(|a| runs_this_binary(a.pid));
    let running = match control::plan(found.as_ref(), same_binary, version, &config) {
        Plan::Adopt => {
            let found = found.context("the router vanished")?;
            tracing::info!(pid = found.pid, "adopted the running router");
            found
        }
        Plan::Start => {
            let new = spawn_and_wait(home, None).await?;
            tracing::info!(pid = new.pid, addr = %settings.router_addr, "router started");
            new
        }
        Plan::HandOver => {
            let old = found.context("the router vanished")?;
            hand_over(home, settings, old).await?
        }
    };
    let latest = Arc::new(Mutex::new(None));
    let link = RouterLink { latest: latest.clone(), tx: link_task(home.clone(), latest) };
    tokio::spawn(keep(home.clone(), running));
    Ok(link)
}

/// Starts a new router beside `old` (another binary or other settings), waits until it
/// accepts, then tells `old` to retire over a connection opened before the new router took the
/// socket path.
async fn hand_over(home: &Home, settings: &Settings, old: Announcement) -> anyhow::Result<Announcement> {
    // One handover at a time: the old router steers to the group's second listener, so a
    // router still retiring from the previous one (two upgrades in a row) must be gone first.
    let deadline = Instant::now() + control::retire_grace(settings) + Duration::from_secs(5);
    while super::reuseport::listeners(settings.router_addr).is_some_and(|n| n > 1) {
        if Instant::now() > deadline {
            tracing::warn!(addr = %settings.router_addr, "more than one listener on the router's address; handing over anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_link = UnixStream::connect(control::socket(home)).await;
    let new = match spawn_and_wait(home, Some(old.pid)).await {
        Ok(new) => new,
        Err(err) => {
            // Serving comes first: keep the old router rather than fail the daemon's start.
            tracing::error!(err = %format!("{err:#}"), pid = old.pid, "the new router did not start; keeping the old one");
            return Ok(old);
        }
    };
    tracing::info!(old = old.pid, new = new.pid, old_version = %old.version, "router handed over to a new router");
    let grace = control::retire_grace(settings);
    match old_link {
        Ok(mut stream) => {
            let mut line = serde_json::to_vec(&ToRouter::Retire { grace_ms: grace.as_millis() as u64 })?;
            line.push(b'\n');
            if let Err(err) = stream.write_all(&line).await {
                tracing::warn!(pid = old.pid, %err, "cannot tell the old router to retire; stopping it");
                process::signal_group(old.pid, old.start, nix::sys::signal::Signal::SIGTERM);
            }
            // Kept open until it has gone, so the message is read.
            tokio::spawn(async move {
                process::wait_for_exit(old.pid, old.start).await;
                process::reap(old.pid);
                tracing::info!(pid = old.pid, "the old router finished its requests and exited");
                drop(stream);
            });
        }
        Err(err) => {
            // An old router we cannot talk to still stops on SIGTERM (no steering then).
            tracing::warn!(pid = old.pid, %err, "cannot reach the old router; stopping it");
            process::signal_group(old.pid, old.start, nix::sys::signal::Signal::SIGTERM);
        }
    }
    Ok(new)
}

/// Watches the router; when it exits, starts a new one (and logs why), as long as the daemon
/// runs.
async fn keep(home: Home, mut running: Announcement) {
    loop {
        process::wait_for_exit(running.pid, running.start).await;
        process::reap(running.pid);
        // A successor announced by someone else (never this daemon) is adopted.
        if let Some(next) = Announcement::read(&home).filter(|a| a.alive() && a.pid != running.pid) {
            running = next;
            continue;
        }
        tracing::warn!(pid = running.pid, "the router exited; starting a new one");
        let mut delay = Duration::from_millis(100);
        running = loop {
            match spawn_and_wait(&home, None).await {
                Ok(new) => {
                    tracing::info!(pid = new.pid, "router restarted");
                    break new;
                }
                Err(err) => {
                    tracing::error!(err = %format!("{err:#}"), "cannot restart the router; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
    }
}

/// Starts `slipway router` in a session of its own (so it outlives the daemon) and waits until
/// it announces itself (`previous`: the pid of a router it is meant to replace).
async fn spawn_and_wait(home: &Home, previous: Option<i32>) -> anyhow::Result<Announcement> {
    let mut command = std::process::Command::new(current_binary());
    command
        .arg("--home")
        .arg(home.root())
        .arg("router")
        .current_dir(home.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_output(home));
    // SAFETY: setsid is async-signal-safe. A session of its own detaches the router from the
    // daemon's terminal and process group, so neither Ctrl-C nor the daemon's death reach it.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the router")?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(a) = Announcement::read(home).filter(|a| a.pid == pid && a.alive()) {
            return Ok(a);
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the router exited at start ({status}); see {}", control::log_file(home).display());
        }
        if Instant::now() > deadline {
            // Killed and reaped: never left half-started beside the one it should replace.
            child.kill().ok();
            child.wait().ok();
            bail!(
                "the router did not start within {} s{}; see {}",
                START_TIMEOUT.as_secs(),
                previous.map(|p| format!(" (the old router, pid {p}, keeps serving)")).unwrap_or_default(),
                control::log_file(home).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The connection to the router: sends tables and drains in order, matches drain answers,
/// reconnects (sending the latest table first) when the router is restarted.
fn link_task(home: Home, latest: Arc<Mutex<Option<RouteTable>>>) -> mpsc::UnboundedSender<Command> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let table = move || latest.lock().unwrap_or_else(PoisonError::into_inner).clone();
    // A router that runs as its own uid (root daemon, root-owned home) cannot write `run/`: the
    // daemon keeps the table it sends in `run/routes.json` for the next router's start.
    let keep_for_router = crate::settings::Settings::load(&home)
        .ok()
        .and_then(|s| crate::users::router_user(home.root(), s.app_uids))
        .is_some_and(|u| !u.owns_home);
    let persist = move |home: &Home, table: &RouteTable| {
        if !keep_for_router {
            return;
        }
        let written = serde_json::to_vec(table)
            .map_err(std::io::Error::other)
            .and_then(|bytes| control::write_replacing(&control::routes_file(home), &bytes));
        if let Err(err) = written {
            tracing::warn!(%err, path = %control::routes_file(home).display(), "cannot keep the routes");
        }
    };
    tokio::spawn(async move {
        let mut next_id = 0u64;
        let mut warned = false;
        loop {
            let stream = match UnixStream::connect(control::socket(&home)).await {
                Ok(stream) => stream,
                Err(err) => {
                    if !warned {
                        tracing::warn!(%err, "cannot reach the router; trying again");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if warned {
                tracing::info!("reached the router again");
                warned = false;
            }
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut pending: HashMap<u64, oneshot::Sender<bool>> = HashMap::new();
            let mut connected = match table() {
                Some(table) => {
                    persist(&home, &table);
                    send(&mut write, &ToRouter::Routes { table }).await.is_ok()
                }
                None => true,
            };
            while connected {
                tokio::select! {
                    command = rx.recv() => {
                        let Some(command) = command else { return };
                        let message = match command {
                            Command::Routes => match table() {
                                Some(table) => {
                                    persist(&home, &table);
                                    ToRouter::Routes { table }
                                }
                                None => continue,
                            },
                            Command::Drain { port, grace, reply } => {
                                next_id += 1;
                                pending.insert(next_id, reply);
                                ToRouter::Drain { id: next_id, port, grace_ms: grace.as_millis() as u64 }
                            }
                        };
                        connected = send(&mut write, &message).await.is_ok();
                    }
                    line = lines.next_line() => match line {
                        Ok(Some(line)) => {
                            if let Ok(FromRouter::Drained { id, idle }) = serde_json::from_str(&line) {
                                if let Some(reply) = pending.remove(&id) {
                                    reply.send(idle).ok();
                                }
                            }
                        }
                        _ => connected = false,
                    },
                }
            }
            // The router went away, and the requests it held with it.
            for (_, reply) in pending.drain() {
                reply.send(true).ok();
            }
        }
    });
    tx
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, message: &ToRouter) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// True when `pid` runs the same executable as this process (same path, not replaced since:
/// a replaced file shows as `PATH (deleted)`).
fn runs_this_binary(pid: i32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe"));
    let ours = std::fs::read_link("/proc/self/exe");
    matches!((theirs, ours), (Ok(t), Ok(o)) if t == o)
}

fn current_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("slipway"));
    let s = exe.to_string_lossy();
    match s.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

fn log_output(home: &Home) -> Stdio {
    crate::fsutil::open_append(&control::log_file(home)).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// Stops the router (SIGTERM: it stops accepting, finishes its requests and exits) and waits
/// until it has gone. False when none ran.
pub fn stop(home: &Home) -> anyhow::Result<bool> {
    let Some(running) = Announcement::read(home).filter(Announcement::alive) else {
        return Ok(false);
    };
    if !process::signal_group(running.pid, running.start, nix::sys::signal::Signal::SIGTERM) {
        return Ok(false);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while running.alive() {
        if Instant::now() > deadline {
            bail!("the router (pid {}) did not stop within 60 s", running.pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

/// Dyno shims alive now, from their announcements (`run/dynos/<id>`: `SHIM_PID SHIM_START …`).
pub fn live_shims(home: &Home) -> usize {
    let Ok(entries) = std::fs::read_dir(home.dyno_announcements()) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|text| {
            let mut words = text.split_whitespace().map(str::parse::<u64>);
            match (words.next(), words.next()) {
                (Some(Ok(pid)), Some(Ok(start))) => process::is_same_process(pid as i32, start),
                _ => false,
            }
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_announcements_of_live_shims_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = Home::at(dir.path());
        home.ensure_layout().expect("layout");
        assert_eq!(live_shims(&home), 0, "no run/dynos at all");
        std::fs::create_dir_all(home.dyno_announcements()).expect("run/dynos");
        let me = std::process::id() as i32;
        let start = process::start_time(me).expect("own start time");
        std::fs::write(home.dyno_announcement(1), format!("{me} {start} 0 0\n")).expect("write");
        std::fs::write(home.dyno_announcement(2), format!("{me} {}\n", start + 1)).expect("write");
        std::fs::write(home.dyno_announcement(3), "junk\n").expect("write");
        assert_eq!(live_shims(&home), 1);
    }
}
