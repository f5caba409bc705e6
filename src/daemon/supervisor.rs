//! The supervisor's executor: one tokio task that feeds everything that happens — a control
//! request, a process exit, a boot check result, a timer — into the pure core
//! ([`World::handle`](super::world::World::handle)) in order, and carries out the effects it
//! returns. It decides nothing itself.
//!
//! Effects are carried out in the order the core gave them, with one rule that keeps SQLite a
//! faithful copy of the model: writes are applied in order and retried until they succeed (a
//! busy or full database delays them, never drops them), and a spawn or an answer waits until
//! every earlier write is durable — so a dyno is always recorded before its process exists,
//! and a push hears "deployed" only once the release is current on disk. Everything else
//! (signals, boot checks, log lines, timers) happens at once. The route table is computed from
//! the model after every event, so routing never waits on the database.
//!
//! Side tasks (exit watchers, boot checks, drains, timers) never touch state: they only send
//! inputs tagged with the pid they were about; the core ignores stale ones.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::process;
use super::protocol::{Request, Response};
use super::world::{AppSpec, DynoId, Effect, Input, Limits, Observed, Probe, ReplyId, Sig, World, Write};
use crate::app::AppName;
use crate::home::Home;
use crate::logs::{self, Source};
use crate::settings::Settings;
use crate::store::dynos::{DynoState, ProcessIds};
use crate::store::{self, Store, StoreError};

pub enum Event {
    Request(Request, oneshot::Sender<Response>),
    Input(Input),
    /// Try the queued writes again.
    RetryWrites,
    /// The daemon is stopping: make the queued writes durable (for at most the given time),
    /// then answer.
    Shutdown(Duration, oneshot::Sender<()>),
}

/// Fails the process at a named point, for the tests that prove a daemon killed there loses
/// nothing (`SLIPWAY_FAILPOINT=after-shim-spawn`: right after a shim started, before the
/// daemon learnt its pid).
fn failpoint(name: &str) {
    if std::env::var("SLIPWAY_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: dying as if by kill -9");
        if let Err(err) = nix::sys::signal::raise(Signal::SIGKILL) {
            tracing::error!(%err, "raising SIGKILL");
        }
        std::process::exit(137);
    }
}

struct Machine;

impl Probe for Machine {
    fn port_free(&self, port: u16) -> bool {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    }
}

pub struct Supervisor {
    home: Home,
    settings: Settings,
    store: Store,
    world: World,
    events: mpsc::UnboundedSender<Event>,
    replies: HashMap<ReplyId, oneshot::Sender<Response>>,
    next_reply: ReplyId,
    /// Writes not yet durable, oldest first.
    writes: VecDeque<Write>,
    /// Spawns and answers waiting for `writes` to drain, in order.
    barred: VecDeque<Effect>,
    retry_armed: bool,
    retry_delay: Duration,
    /// This binary (`slipway`), for what the daemon runs of its own (rollbacks).
    binary: PathBuf,
    /// How a shim is started: the program and the arguments before the shim's own.
    shim: (PathBuf, Vec<&'static str>),
    router: crate::router::keeper::RouterLink,
    /// Where dynos get their cgroups, or why they run without (see `crate::cgroup`).
    cgroups: Result<crate::cgroup::Layout, String>,
}

impl Supervisor {
    pub fn new(
        home: Home,
        settings: Settings,
        store: Store,
        events: mpsc::UnboundedSender<Event>,
        router: crate::router::keeper::RouterLink,
    ) -> Self {
        // The executor retries writes itself; a long busy wait would only stall every event.
        if let Err(err) = store.conn().busy_timeout(Duration::from_millis(500)) {
            tracing::warn!(%err, "setting the database busy timeout");
        }
        let limits = Limits {
            ports: settings.ports.clone(),
            boot_timeout: settings.boot_timeout,
            stop_timeout: settings.stop_timeout,
            boot_settle: settings.boot_settle,
            auto_rollback: settings.auto_rollback,
            domain: settings.domain.clone(),
            router_port: settings.router_addr.port(),
        };
        let binary = current_binary();
        Supervisor {
            world: World::new(limits),
            home,
            settings,
            store,
            events,
            replies: HashMap::new(),
            next_reply: 1,
            writes: VecDeque::new(),
            barred: VecDeque::new(),
            retry_armed: false,
            retry_delay: Duration::from_millis(100),
            shim: find_shim(&binary),
            binary,
            router,
            cgroups: {
                let cgroups = crate::cgroup::detect();
                match &cgroups {
                    Ok(layout) => tracing::info!(layout = %layout.describe(), "dynos get cgroups"),
                    Err(why) => tracing::info!(%why, "cgroups unavailable: dynos run without limits"),
                }
                cgroups
            },
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        match self.load() {
            Ok(start) => self.process(Some(start)).await,
            Err(err) => {
                tracing::error!(%err, "loading the state from SQLite");
                return;
            }
        }
        while let Some(event) = rx.recv().await {
            match event {
                Event::Request(request, reply) => {
                    if let Some(input) = self.request(request, reply) {
                        self.process(Some(input)).await;
                    }
                }
                Event::Input(input) => self.process(Some(input)).await,
                Event::RetryWrites => {
                    self.retry_armed = false;
                    self.apply_writes();
                    self.process(None).await;
                }
                Event::Shutdown(within, done) => {
                    self.flush_before_exit(within).await;
                    if done.send(()).is_err() {
                        tracing::debug!("nobody waits for the shutdown any more");
                    }
                    return;
                }
            }
            self.refresh_routes();
        }
    }

    /// Reads the model from SQLite and what runs of it; returns the start input.
    fn load(&mut self) -> Result<Input, StoreError> {
        let conn = self.store.conn();
        let apps = store::apps::list(conn)?;
        let queued = store::releases::queued(conn)?;
        for app in &apps {
            let Ok(name) = app.name.parse::<AppName>() else { continue };
            let waiting = queued.iter().find(|(a, _)| *a == name).map(|(_, v)| *v);
            let spec = app_spec(conn, &name, &[app.current_release, waiting])?;
            self.world.load_app(name, app.current_release, spec);
        }
        let rows = store::dynos::all(conn)?;
        let mut observed = BTreeMap::new();
        let announced = read_announcements(&self.home.dyno_announcements());
        for row in &rows {
            let alive = |pid: Option<i32>, start: Option<u64>| match (pid, start) {
                (Some(p), Some(s)) => process::is_same_process(p, s),
                _ => false,
            };
            let seen = match (row.shim_pid, row.shim_start) {
                (Some(p), Some(s)) if alive(Some(p), Some(s)) => Observed::Alive(ProcessIds {
                    pid: row.pid.unwrap_or(0),
                    pid_start: row.pid_start.unwrap_or(0),
                    shim_pid: p,
                    shim_start: s,
                }),
                (Some(_), _) => Observed::Gone { dyno: row.pid.zip(row.pid_start) },
                (None, _) => match announced.get(&row.id) {
                    Some(ids) if alive(Some(ids.shim_pid), Some(ids.shim_start)) => Observed::Alive(*ids),
                    Some(ids) => Observed::Gone { dyno: Some((ids.pid, ids.pid_start)) },
                    None => Observed::Gone { dyno: None },
                },
            };
            observed.insert(row.id, seen);
            self.world.load_dyno(row.clone());
        }
        let known: Vec<DynoId> = rows.iter().map(|r| r.id).collect();
        let mut orphans = Vec::new();
        for (id, ids) in &announced {
            self.world.reserve_id(*id);
            if !known.contains(id) {
                orphans.push(*ids);
                remove_announcement(&self.home, *id);
            }
        }
        let adopted = observed.values().filter(|o| matches!(o, Observed::Alive(_))).count();
        let alive: Vec<DynoId> =
            observed.iter().filter(|(_, o)| matches!(o, Observed::Alive(_))).map(|(id, _)| *id).collect();
        self.remove_leftover_cgroups(&alive);
        tracing::info!(adopted, recorded = rows.len(), orphans = orphans.len(), "re-adopting dynos");
        let pending = store::releases::pending(conn)?;
        Ok(Input::Start { observed, orphans, pending, queued })
    }

    /// Turns a control request into an input for the core, reading the app's desired state;
    /// requests the core need not see are answered here.
    fn request(&mut self, request: Request, reply: oneshot::Sender<Response>) -> Option<Input> {
        let id = self.next_reply;
        self.next_reply += 1;
        let parse = |app: &str| app.parse::<AppName>().map_err(|e| e.to_string());
        let input = match request {
            Request::Hello { .. } => return None,
            Request::Status => {
                let response = Response::Status {
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    dynos: self.world.dynos().count(),
                    domain: self.settings.domain.clone(),
                    router_port: self.settings.router_addr.port(),
                };
                send(reply, response);
                return None;
            }
            Request::Deploy { app, version, restart } => parse(&app).and_then(|app| {
                let spec = self.spec(&app, Some(version))?;
                Ok(Input::Deploy { app, version, restart, spec, reply: id })
            }),
            Request::Converge { app } => parse(&app).and_then(|app| {
                let exists = store::apps::get(self.store.conn(), &app).map_err(|e| e.to_string())?.is_some();
                let spec = if exists { Some(self.spec(&app, None)?) } else { None };
                if !exists {
                    // A destroyed app's `dynos/<app>` is the daemon's (root's when it is root),
                    // which the owner's `apps:destroy` may not remove: its dynos are stopped, so
                    // it is empty, or soon (a shim still removing its dir keeps it for now).
                    let dir = self.home.app_dynos(&app);
                    match std::fs::remove_dir(&dir) {
                        Ok(()) => tracing::info!(dir = %dir.display(), "removed a destroyed app's dynos dir"),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                            ) => {}
                        Err(err) => {
                            tracing::warn!(dir = %dir.display(), %err, "removing a destroyed app's dynos dir")
                        }
                    }
                    // Its build cache is the app's uid's (builds write it as the app), which
                    // the owner's `apps:destroy` may not remove either. Neither `cache/` nor
                    // `cache/<app>` may be a link (the owner could plant one): only real dirs go.
                    let cache = self.home.cache(&app);
                    let real_dir = |p: &std::path::Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
                    if cache.parent().is_some_and(real_dir) && real_dir(&cache) {
                        match std::fs::remove_dir_all(&cache) {
                            Ok(()) => tracing::info!(dir = %cache.display(), "removed a destroyed app's cache"),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(err) => {
                                tracing::warn!(dir = %cache.display(), %err, "removing a destroyed app's cache")
                            }
                        }
                    }
                }
                Ok(Input::Converge { app, spec, reply: Some(id) })
            }),
            Request::Scale { app, types } => parse(&app).and_then(|app| {
                let spec = self.spec(&app, None)?;
                Ok(Input::Scale { app, types, spec, reply: id })
            }),
            Request::Restart { app, target } => {
                parse(&app).map(|app| Input::Restart { app, target, reply: id })
            }
            Request::RunStart { app, command } => {
                parse(&app).map(|app| Input::RunStart { app, command, reply: id })
            }
            Request::RunAttach { dyno, pid, pid_start, shim_pid, shim_start } => {
                let ids = ProcessIds { pid, pid_start, shim_pid, shim_start };
                Ok(Input::RunAttached { dyno, ids, reply: id })
            }
            Request::Stop { app, target } => {
                app.as_deref().map(parse).transpose().map(|app| Input::Stop { app, target, reply: id })
            }
        };
        match input {
            Ok(input) => {
                self.replies.insert(id, reply);
                Some(input)
            }
            Err(message) => {
                send(reply, Response::Error { message });
                None
            }
        }
    }

    /// The app's desired state with the process types of its current release and `version`.
    fn spec(&self, app: &AppName, version: Option<i64>) -> Result<AppSpec, String> {
        store::apps::require(self.store.conn(), app).map_err(|e| e.to_string())?;
        let versions = [self.world.current_release(app), version];
        app_spec(self.store.conn(), app, &versions).map_err(|e| e.to_string())
    }

    /// Handles `input` and everything it leads to (spawn results, and the spawns and answers
    /// that were waiting for writes now durable), in order.
    async fn process(&mut self, input: Option<Input>) {
        let mut queue: VecDeque<Input> = input.into_iter().collect();
        loop {
            while let Some(input) = queue.pop_front() {
                let effects = self.world.handle(input, OffsetDateTime::now_utc(), &Machine);
                for effect in effects {
                    if let Some(next) = self.execute(effect).await {
                        queue.push_back(next);
                    }
                }
            }
            let ready = if self.writes.is_empty() { self.barred.pop_front() } else { None };
            let Some(effect) = ready else { break };
            if let Some(next) = self.run_barred(effect).await {
                queue.push_back(next);
            }
        }
        if !self.writes.is_empty() {
            self.arm_retry();
        }
        if cfg!(debug_assertions) {
            if let Err(broken) = self.world.check_invariants() {
                tracing::error!(%broken, "supervisor invariant broken");
            }
        }
    }

    async fn execute(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Persist(write) => {
                self.writes.push_back(write);
                self.apply_writes();
                None
            }
            barred @ (Effect::Spawn { .. } | Effect::Reply { .. }) => {
                if self.writes.is_empty() && self.barred.is_empty() {
                    self.run_barred(barred).await
                } else {
                    self.barred.push_back(barred);
                    None
                }
            }
            Effect::Watch { dyno, shim } => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    process::wait_for_exit(shim.0, shim.1).await;
                    process::reap(shim.0);
                    let _ = events.send(Event::Input(Input::Exited { dyno, shim_pid: shim.0 }));
                });
                None
            }
            Effect::BootCheck { dyno, pid, port } => {
                self.boot_check(dyno, pid, port);
                None
            }
            Effect::HealthCheck { dyno, pid, port, app, release } => {
                self.health_check(dyno, pid, port, &app, release);
                None
            }
            Effect::Rollback { app, to, why } => {
                self.roll_back(&app, to, &why);
                None
            }
            Effect::Drain { dyno, pid, port } => {
                // Out of the table first (routes are refreshed before the drain can end).
                self.refresh_routes();
                let router = self.router.clone();
                let events = self.events.clone();
                let grace = self.settings.stop_timeout;
                tokio::spawn(async move {
                    router.drain(port, grace).await;
                    let _ = events.send(Event::Input(Input::Drained { dyno, pid }));
                });
                None
            }
            Effect::Signal { pid, start, sig } => {
                let signal = match sig {
                    Sig::Term => Signal::SIGTERM,
                    Sig::Kill => Signal::SIGKILL,
                };
                process::signal_group(pid, start, signal);
                None
            }
            Effect::ForgetShim { dyno } => {
                remove_announcement(&self.home, dyno);
                None
            }
            Effect::Schedule { after, input } => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = events.send(Event::Input(input));
                });
                None
            }
            Effect::Log { app, dyno, message } => {
                let policy = self.settings.log_policy;
                logs::append_event_with(&self.home.app_log(&app), policy, Source::Slipway, &dyno, &message);
                None
            }
        }
    }

    async fn run_barred(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn { dyno } => self.spawn(dyno).await,
            Effect::Reply { reply, response } => {
                if let Some(tx) = self.replies.remove(&reply) {
                    send(tx, response);
                }
                None
            }
            _ => None,
        }
    }

    /// Applies queued writes in order; stops at the first that fails for now (busy, locked,
    /// disk full) and arms a retry. A write that can never succeed is reported and skipped.
    fn apply_writes(&mut self) {
        while let Some(write) = self.writes.front() {
            match apply(&mut self.store, write) {
                Ok(()) => {
                    self.writes.pop_front();
                    self.retry_delay = Duration::from_millis(100);
                }
                Err(err) if transient(&err) => {
                    tracing::warn!(%err, pending = self.writes.len(), "saving state to SQLite failed; will retry");
                    self.arm_retry();
                    return;
                }
                Err(err) => {
                    tracing::error!(%err, ?write, "saving state to SQLite failed permanently; skipped");
                    self.writes.pop_front();
                }
            }
        }
    }

    /// Retries the queued writes until they are durable or `within` has passed; what is left
    /// is reported (the next daemon re-observes every process, so nothing runs untracked).
    async fn flush_before_exit(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.apply_writes();
            if self.writes.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !self.writes.is_empty() {
            tracing::error!(lost = self.writes.len(), "stopping with state writes SQLite did not take");
        }
    }

    fn arm_retry(&mut self) {
        if self.retry_armed {
            return;
        }
        self.retry_armed = true;
        let events = self.events.clone();
        let delay = self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(Duration::from_secs(2));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RetryWrites);
        });
    }

    // ----- dyno processes ---------------------------------------------------------------------

    /// Starts the shim of dyno `id`, if the model still wants it started.
    async fn spawn(&mut self, id: DynoId) -> Option<Input> {
        let dyno = self.world.dyno(id)?.clone();
        if dyno.state != DynoState::Starting || dyno.shim_pid.is_some() {
            return None; // stopped or forgotten while its spawn waited
        }
        let name = dyno.name();
        let app: AppName = dyno.app.parse().ok()?;
        let env = match crate::dyno::DynoEnv::for_release(&self.home, self.store.conn(), &app, dyno.release) {
            Ok(env) => env,
            Err(err) => return Some(Input::SpawnFailed { dyno: id, message: err.to_string() }),
        };
        // Privileged mode: the dyno runs as its app's own uid (allocated now for an app that
        // predates per-app users).
        let uid_args = match crate::users::for_app(self.store.conn(), &app, self.settings.app_uids) {
            Ok(user) => user.map(|u| vec!["--uid".to_string(), u.uid.to_string()]).unwrap_or_default(),
            Err(err) => return Some(Input::SpawnFailed { dyno: id, message: err.to_string() }),
        };
        let quota = self.quota(&app, &dyno.process_type);
        let env = env.with_ram_mb(quota >> 20);
        let vars = env.vars(&name, dyno.port);
        let announce = self.home.dyno_announcement(id);
        if let Some(dir) = announce.parent() {
            if let Err(err) = crate::fsutil::create_dir_all_owned(dir) {
                let message = format!("creating {}: {err}", dir.display());
                return Some(Input::SpawnFailed { dyno: id, message });
            }
        }
        let mut command = Command::new(&self.shim.0);
        command
            .args(&self.shim.1)
            .arg("--log")
            .arg(self.home.app_log(&app))
            .arg("--log-max-bytes")
            .arg(self.settings.log_policy.max_bytes.to_string())
            .arg("--log-files")
            .arg(self.settings.log_policy.files.to_string())
            .arg("--dyno")
            .arg(&name)
            .arg("--dir")
            .arg(&env.dir)
            .arg("--announce")
            .arg(&announce)
            .arg("--stop-timeout")
            .arg(self.settings.stop_timeout.as_secs_f64().to_string())
            .args(self.limit_args(&app, quota, id))
            .args(uid_args)
            .arg("--")
            .arg(&dyno.command)
            .env_clear()
            .envs(&vars)
            .current_dir(&env.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_stderr(&self.home));
        // SAFETY: setsid is async-signal-safe. A session of its own detaches the shim from the
        // daemon's terminal and process group, so neither Ctrl-C nor the daemon's death reach it.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let spawned = tokio::task::spawn_blocking(move || spawn_shim(command))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        failpoint("after-shim-spawn");
        Some(match spawned {
            Ok(ids) => Input::Spawned { dyno: id, ids },
            Err(message) => Input::SpawnFailed { dyno: id, message },
        })
    }

    /// The memory quota of `app`'s `process_type`: its `ps:resize` size, else `dyno_memory`.
    fn quota(&self, app: &AppName, process_type: &str) -> u64 {
        match store::formation::memory(self.store.conn(), app) {
            Ok(quotas) => quotas.get(process_type).copied().unwrap_or(self.settings.dyno_memory),
            Err(err) => {
                tracing::warn!(%err, %app, "reading the memory quotas; using dyno_memory");
                self.settings.dyno_memory
            }
        }
    }

    /// The shim's `--cgroup`, `--memory` and `--max-pids` for a dyno with this quota, when
    /// cgroups are usable.
    fn limit_args(&self, app: &AppName, quota: u64, id: DynoId) -> Vec<String> {
        if self.cgroups.is_err() {
            return Vec::new();
        }
        let rel = crate::cgroup::dyno_rel(self.home.root(), app.as_str(), id);
        vec![
            "--cgroup".into(),
            rel.to_string_lossy().into_owned(),
            "--memory".into(),
            quota.to_string(),
            "--max-pids".into(),
            self.settings.dyno_max_pids.to_string(),
        ]
    }

    /// At start, after adopting the live dynos: the cgroups of dynos whose shim is gone (the
    /// shim removes its own; a shim killed with SIGKILL cannot) are emptied and removed, and so
    /// are those of builds whose process is gone.
    fn remove_leftover_cgroups(&self, alive: &[DynoId]) {
        let Ok(layout) = &self.cgroups else { return };
        for (app, name, cgroup) in crate::cgroup::list(layout, self.home.root()) {
            let keep = match name.strip_prefix("build-") {
                Some(pid) => pid.parse::<i32>().is_ok_and(|p| process::start_time(p).is_some()),
                None => name.parse::<DynoId>().is_ok_and(|id| alive.contains(&id)),
            };
            if keep {
                continue;
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            match cgroup.remove(deadline, || {}) {
                Ok(()) => tracing::info!(%app, name, "removed a leftover cgroup"),
                Err(err) => tracing::warn!(%app, name, %err, "removing a leftover cgroup"),
            }
        }
        crate::cgroup::remove_empty_dirs(layout, self.home.root());
    }

    fn boot_check(&self, dyno: DynoId, pid: i32, port: u16) {
        let events = self.events.clone();
        let timeout = self.settings.boot_timeout;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            while tokio::time::Instant::now() < deadline {
                let attempt = tokio::net::TcpStream::connect(("127.0.0.1", port));
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                    let _ = events.send(Event::Input(Input::Booted { dyno, pid }));
                    return;
                }
                if process::start_time(pid).is_none() {
                    return; // exited: the exit watcher reports it
                }
                // Most apps bind within tens of milliseconds: look often at first, then less.
                let elapsed = timeout - (deadline - tokio::time::Instant::now());
                let pause = if elapsed < Duration::from_secs(1) { 5 } else { 50 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let _ = events.send(Event::Input(Input::BootTimedOut { dyno, pid }));
        });
    }

    /// Runs the release's `app.json` health checks (none declared: healthy at once) with the
    /// app's own host, as the router would send it.
    fn health_check(&self, dyno: DynoId, pid: i32, port: u16, app: &AppName, release: i64) {
        let events = self.events.clone();
        let host = format!("{app}.{}", self.settings.domain);
        let checks = crate::dyno::DynoEnv::for_release(&self.home, self.store.conn(), app, release)
            .map_err(|e| e.to_string())
            .and_then(|env| crate::healthcheck::for_release(&env.dir));
        tokio::spawn(async move {
            let outcome = match checks {
                Ok(checks) => crate::healthcheck::run_all(&checks, port, &host).await,
                Err(reason) => Err(reason),
            };
            let input = match outcome {
                Ok(()) => Input::Healthy { dyno, pid },
                Err(reason) => Input::Unhealthy { dyno, pid, reason },
            };
            let _ = events.send(Event::Input(input));
        });
    }

    /// An automatic rollback is an ordinary `slipway rollback` (deploy lock, release phase,
    /// zero-downtime rollout), run as a child of the daemon with the reason as its author.
    fn roll_back(&self, app: &AppName, to: i64, why: &str) {
        let mut command = Command::new(&self.binary);
        command
            .arg("--home")
            .arg(self.home.root())
            .arg("rollback")
            .arg(app.as_str())
            .arg(format!("v{to}"))
            .env("SLIPWAY_ROLLBACK_REASON", why)
            .stdin(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the rollback must not die with the daemon.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let log = self.home.app_log(app);
        let app = app.clone();
        tokio::task::spawn_blocking(move || match command.output() {
            Ok(out) if out.status.success() => tracing::info!(%app, to, "automatic rollback done"),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
                tracing::warn!(%app, to, status = %out.status, why, "automatic rollback failed");
                logs::append_event(
                    &log,
                    Source::Slipway,
                    "api",
                    &format!("Automatic rollback to v{to} failed: {why}"),
                );
            }
            Err(err) => {
                tracing::error!(%app, to, %err, "starting the automatic rollback");
                logs::append_event(
                    &log,
                    Source::Slipway,
                    "api",
                    &format!("Automatic rollback to v{to} could not start: {err}"),
                );
            }
        });
    }

    /// Gives the router the model's table: each app's hosts and its routable web dynos.
    fn refresh_routes(&self) {
        let mut table = crate::router::RouteTable::new(&self.settings.domain);
        for (app, hosts, status) in self.world.routes() {
            table.add_app(app.as_str(), &hosts, status);
        }
        self.router.update(table);
    }
}

fn send(reply: oneshot::Sender<Response>, response: Response) {
    // The client may have gone (a push cancelled with Ctrl-C): nothing is waiting then.
    if reply.send(response).is_err() {
        tracing::debug!("a client left before its answer");
    }
}

/// Reads an app's formation, hosts and the process types of `versions` from SQLite.
fn app_spec(conn: &rusqlite::Connection, app: &AppName, versions: &[Option<i64>]) -> store::Result<AppSpec> {
    let mut processes = BTreeMap::new();
    for version in versions.iter().flatten() {
        let Some(release) = store::releases::release(conn, app, *version)? else { continue };
        let Some(build_id) = release.build_id else {
            processes.insert(*version, Vec::new());
            continue;
        };
        let types = store::releases::build(conn, &build_id)?
            .map(|b| b.process_types.dyno_types().map(|(t, c)| (t.to_string(), c.to_string())).collect())
            .unwrap_or_default();
        processes.insert(*version, types);
    }
    Ok(AppSpec {
        formation: store::formation::get(conn, app)?,
        hosts: store::domains::for_app(conn, app)?.into_iter().map(|d| d.host).collect(),
        processes,
    })
}

fn apply(store: &mut Store, write: &Write) -> store::Result<()> {
    match write {
        Write::Dyno(row) => store::dynos::upsert(store.conn(), row),
        Write::DeleteDyno(id) => store::dynos::delete(store.conn(), *id),
        Write::Promote { app, version } => {
            let tx = store.transaction()?;
            store::apps::set_current_release(&tx, app, *version)?;
            store::releases::set_live(&tx, app, *version)?;
            tx.commit()?;
            Ok(())
        }
        Write::ReleaseFailed { app, version, why } => {
            let tx = store.transaction()?;
            store::releases::set_failed_with(&tx, app, *version, why)?;
            tx.commit()?;
            Ok(())
        }
    }
}

/// Errors that go away by themselves: another writer holds the database, the disk is full.
fn transient(err: &StoreError) -> bool {
    use rusqlite::ErrorCode::*;
    let sql = match err {
        StoreError::Sql(e) | StoreError::Open { source: e, .. } => e,
        _ => return false,
    };
    matches!(
        sql.sqlite_error_code(),
        Some(
            DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | CannotOpen | ReadOnly | OutOfMemory
        )
    )
}

/// `run/dynos/<id>` files: each shim's `SHIM_PID SHIM_START PID PID_START`, written by the
/// shim itself before the daemon learns of it.
fn read_announcements(dir: &Path) -> BTreeMap<DynoId, ProcessIds> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<DynoId>().ok()) else { continue };
        if let Some(ids) = std::fs::read_to_string(entry.path()).ok().and_then(|t| parse_announcement(&t)) {
            out.insert(id, ids);
        }
    }
    out
}

pub fn parse_announcement(text: &str) -> Option<ProcessIds> {
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    let mut next = || words.next()?.ok();
    let (shim_pid, shim_start, pid, pid_start) = (next()?, next()?, next()?, next()?);
    Some(ProcessIds { pid: pid as i32, pid_start, shim_pid: shim_pid as i32, shim_start })
}

fn remove_announcement(home: &Home, id: DynoId) {
    let path = home.dyno_announcement(id);
    if let Err(err) = crate::home::remove_if_present(&path) {
        tracing::warn!(%err, path = %path.display(), "removing a shim announcement");
    }
}

/// Spawns the shim and reads its `PID START` line. Blocking; runs on a blocking thread.
fn spawn_shim(mut command: Command) -> Result<ProcessIds, String> {
    let mut child = command.spawn().map_err(|e| format!("spawning the dyno shim: {e}"))?;
    let shim_pid = child.id() as i32;
    // Read while the shim is certainly alive: it has not written its line yet.
    let shim_start = process::start_time(shim_pid).unwrap_or(0);
    let stdout = child.stdout.take().ok_or("the shim has no stdout")?;
    let mut line = String::new();
    let read = std::io::BufReader::new(stdout).read_line(&mut line);
    let mut words = line.split_whitespace().map(str::parse::<u64>);
    match (read, words.next(), words.next()) {
        (Ok(_), Some(Ok(pid)), Some(Ok(pid_start))) => {
            Ok(ProcessIds { pid: pid as i32, pid_start, shim_pid, shim_start })
        }
        _ => {
            if let Err(err) = child.wait() {
                tracing::warn!(%err, "reaping a shim that failed to start");
            }
            Err("the process could not be started (see logs/slipway.log)".into())
        }
    }
}

fn shim_stderr(home: &Home) -> Stdio {
    crate::fsutil::open_append(&home.daemon_log()).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// The `slipway-shim` binary's place: beside `binary`.
fn shim_beside(binary: &Path) -> PathBuf {
    binary.with_file_name("slipway-shim")
}

/// How the daemon whose binary is `binary` starts its shims: asks the `slipway-shim` beside it
/// for its version once ([`shim_program`] decides) and says what it chose in the daemon's log.
fn find_shim(binary: &Path) -> (PathBuf, Vec<&'static str>) {
    let small = shim_beside(binary);
    let answer = Command::new(&small)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    let program = shim_program(binary, answer.as_deref());
    if program.1.is_empty() {
        tracing::info!(shim = %program.0.display(), "dynos are shimmed by slipway-shim");
    } else {
        tracing::info!(looked_for = %small.display(), "no slipway-shim of this version: dynos are shimmed by slipway dyno-shim");
    }
    program
}

/// The program a shim runs as, given what `slipway-shim --version` beside the daemon's binary
/// answered (None: it is not there or failed): that small binary when it is this version's
/// (its private memory is the per-dyno cost, see `src/bin/slipway-shim.rs`), else the daemon's
/// own binary as `slipway dyno-shim` (an install that copied `slipway` alone, or over an older
/// one whose shim may not know this daemon's arguments).
fn shim_program(binary: &Path, version_answer: Option<&str>) -> (PathBuf, Vec<&'static str>) {
    let ours = format!("slipway-shim {}", env!("CARGO_PKG_VERSION"));
    match version_answer.map(str::trim) == Some(ours.as_str()) {
        true => (shim_beside(binary), Vec::new()),
        false => (binary.to_path_buf(), vec!["dyno-shim"]),
    }
}

/// The running binary, even after it was replaced on disk by an upgrade (Linux then reports
/// the old path with " (deleted)"; the new file at that path is the one to run).
fn current_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("slipway"));
    let s = exe.to_string_lossy();
    match s.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_shim_only_of_this_version() {
        let binary = Path::new("/usr/local/bin/slipway");
        let ours = format!("slipway-shim {}\n", env!("CARGO_PKG_VERSION"));
        let small = (PathBuf::from("/usr/local/bin/slipway-shim"), Vec::new());
        let itself = (binary.to_path_buf(), vec!["dyno-shim"]);
        assert_eq!(shim_program(binary, Some(&ours)), small);
        assert_eq!(shim_program(binary, Some("slipway-shim 0.0.1\n")), itself);
        assert_eq!(shim_program(binary, Some("")), itself);
        assert_eq!(shim_program(binary, None), itself);
    }
}
