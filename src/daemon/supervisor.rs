//! The supervisor: one tokio task that owns the daemon's view of every dyno and is the only
//! writer of dyno rows while the daemon runs. Everything that happens — a control request, a
//! process exit, a boot check result, a timer — arrives as an [`Event`] on one channel and is
//! handled in order, so there are no locks and no races between, say, a crash and a deploy.
//!
//! What to start, stop or restart is decided by the pure [`plan`](super::plan::plan); this
//! module carries the actions out. Replacements that must not drop traffic (deploys and
//! `ps:restart`) run as a [`Rollout`]: new dynos start beside the old, web ones must pass the
//! boot check, and only then do the old ones get SIGTERM. While an app has a rollout, its
//! convergence waits, so the plan never fights a half-done replacement.
//!
//! Side tasks (exit watchers, boot checks, timers) never touch state: they only send events
//! tagged with the pid they were about, and stale events (for a process since replaced) are
//! ignored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::plan::{self, Action, Desired, ProcessSpec};
use super::ports;
use super::process;
use super::protocol::{Request, Response, WebDyno};
use crate::app::AppName;
use crate::home::Home;
use crate::logs::{self, Source};
use crate::procfile::Procfile;
use crate::settings::Settings;
use crate::store::dynos::{DynoRow, DynoState, NewDyno, ProcessIds};
use crate::store::{self, Store};

pub enum Event {
    Request(Request, oneshot::Sender<Response>),
    Exited {
        dyno: i64,
        shim_pid: i32,
    },
    Booted {
        dyno: i64,
        pid: i32,
    },
    BootTimedOut {
        dyno: i64,
        pid: i32,
    },
    KillDue {
        dyno: i64,
        pid: i32,
    },
    /// A web dyno being stopped has no requests left (or its drain time ran out): SIGTERM now.
    TermDue {
        dyno: i64,
        pid: i32,
    },
    /// A crash restart may be due: converge the app.
    Tick {
        app: AppName,
    },
}

enum RolloutKind {
    /// Release `version` replaces every dyno of other releases, and becomes current.
    Deploy { version: i64 },
    /// New dynos of the current release replace these.
    Replace { retire: Vec<i64> },
}

struct Rollout {
    kind: RolloutKind,
    /// Every dyno this rollout started (stopped again if it fails).
    started: Vec<i64>,
    /// Web dynos of `started` that have not passed the boot check yet.
    waiting: HashSet<i64>,
    reply: oneshot::Sender<Response>,
}

/// A request answered once none of `dynos` is running any more.
struct DownWaiter {
    dynos: Vec<i64>,
    reply: oneshot::Sender<Response>,
}

pub struct Supervisor {
    home: Home,
    settings: Settings,
    store: Store,
    events: mpsc::UnboundedSender<Event>,
    rollouts: HashMap<AppName, Rollout>,
    down_waiters: Vec<DownWaiter>,
    ports: ports::Allocator,
    shim_binary: PathBuf,
    router: crate::router::Router,
}

type Result<T> = std::result::Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Supervisor {
    pub fn new(
        home: Home,
        settings: Settings,
        store: Store,
        events: mpsc::UnboundedSender<Event>,
        router: crate::router::Router,
    ) -> Self {
        let ports = ports::Allocator::new(settings.ports.clone());
        Supervisor {
            home,
            settings,
            store,
            events,
            rollouts: HashMap::new(),
            down_waiters: Vec::new(),
            ports,
            shim_binary: current_binary(),
            router,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        self.adopt().await;
        self.refresh_routes();
        while let Some(event) = rx.recv().await {
            self.handle(event).await;
            // Whatever changed, the router sees it before the next event is handled.
            self.refresh_routes();
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Request(request, reply) => self.on_request(request, reply).await,
            Event::Exited { dyno, shim_pid } => self.on_exit(dyno, shim_pid).await,
            Event::Booted { dyno, pid } => self.on_booted(dyno, pid).await,
            Event::BootTimedOut { dyno, pid } => self.on_boot_timeout(dyno, pid).await,
            Event::KillDue { dyno, pid } => self.on_kill_due(dyno, pid),
            Event::TermDue { dyno, pid } => self.on_term_due(dyno, pid),
            Event::Tick { app } => self.converge_logged(&app).await,
        }
    }

    async fn on_request(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        let outcome = match request {
            Request::Hello { .. } => return,
            Request::Status => {
                let dynos = store::dynos::all(self.store.conn()).map(|d| d.len()).unwrap_or(0);
                let version = env!("CARGO_PKG_VERSION").into();
                let (domain, router_port) = (self.settings.domain.clone(), self.settings.router_addr.port());
                Ok(Response::Status { pid: std::process::id(), version, dynos, domain, router_port })
            }
            Request::Deploy { app, version, restart } => match app.parse::<AppName>() {
                Ok(app) if !restart => self.relabel(&app, version).map(|web| Response::Deployed {
                    version,
                    web,
                    url: self.settings.app_url(app.as_str()),
                }),
                Ok(app) => return self.deploy(app, version, reply).await,
                Err(e) => Err(err(e)),
            },
            Request::Converge { app } => match app.parse::<AppName>() {
                Ok(app) => self.converge(&app).await.map(|()| Response::Done),
                Err(e) => Err(err(e)),
            },
            Request::Scale { app, types } => match app.parse::<AppName>() {
                Ok(app) => self.scaled(&app, &types).await.map(|()| Response::Done),
                Err(e) => Err(err(e)),
            },
            Request::Restart { app, target } => match app.parse::<AppName>() {
                Ok(app) => return self.restart(app, target.as_deref(), reply).await,
                Err(e) => Err(err(e)),
            },
            Request::Stop { app, target } => {
                return self.stop_request(app.as_deref(), target.as_deref(), reply)
            }
        };
        let _ = reply.send(outcome.unwrap_or_else(|message| Response::Error { message }));
    }

    // ----- deploys and restarts ---------------------------------------------------------------

    /// Starts the release's formation next to the running one; the old dynos are stopped only
    /// once every new web dyno accepts connections (zero downtime), else the new ones go.
    async fn deploy(&mut self, app: AppName, version: i64, reply: oneshot::Sender<Response>) {
        if self.rollouts.contains_key(&app) {
            let message = format!("another rollout of {app} is in progress; try again when it finishes");
            let _ = reply.send(Response::Error { message });
            return;
        }
        let desired = match self.desired(&app, Some(version)) {
            Ok(d) => d,
            Err(message) => {
                let _ = reply.send(Response::Error { message });
                return;
            }
        };
        let starts: Vec<(String, i64, String)> = desired
            .processes
            .iter()
            .flat_map(|p| {
                (1..=i64::from(p.count)).map(move |n| (p.process_type.clone(), n, p.command.clone()))
            })
            .collect();
        self.rollout(app, RolloutKind::Deploy { version }, version, starts, reply).await;
    }

    /// `config:set --no-restart`: `version` becomes current without touching a process; the
    /// running dynos of the current release carry its label from now on.
    fn relabel(&mut self, app: &AppName, version: i64) -> Result<Vec<WebDyno>> {
        if self.rollouts.contains_key(app) {
            return Err(format!("a rollout of {app} is in progress; try again when it finishes"));
        }
        let previous = store::apps::require(self.store.conn(), app).map_err(err)?.current_release;
        let tx = self.store.transaction().map_err(err)?;
        store::apps::set_current_release(&tx, app, version).map_err(err)?;
        store::releases::set_status(&tx, app, version, "succeeded").map_err(err)?;
        if let Some(previous) = previous {
            store::dynos::relabel(&tx, app, previous, version).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        self.event(app, "api", &format!("Release v{version} is current; dynos pick it up when they restart"));
        Ok(self
            .app_dynos(app)
            .into_iter()
            .filter(|d| d.process_type == "web" && d.release == version)
            .filter_map(|d| Some(WebDyno { name: d.name(), port: d.port? }))
            .collect())
    }

    /// `ps:restart`: stopped and crashed targets start again in place; running ones are
    /// replaced by new dynos (web ones must boot before the old ones stop).
    async fn restart(&mut self, app: AppName, target: Option<&str>, reply: oneshot::Sender<Response>) {
        let result = self.restart_targets(&app, target);
        let (release, targets) = match result {
            Ok(t) => t,
            Err(message) => {
                let _ = reply.send(Response::Error { message });
                return;
            }
        };
        let mut retire = Vec::new();
        let mut starts = Vec::new();
        for d in targets {
            self.event(&app, &d.name(), "Restarting");
            match d.state {
                DynoState::Up | DynoState::Starting => {
                    retire.push(d.id);
                    starts.push((d.process_type.clone(), d.num, d.command.clone()));
                }
                DynoState::Down | DynoState::Crashed => {
                    let conn = self.store.conn();
                    let _ = store::dynos::set_stopped(conn, d.id, false);
                    let _ = store::dynos::set_restarts(conn, d.id, 0);
                    if let Err(message) = self.spawn(d.id).await {
                        tracing::warn!(%app, %message, "restart failed");
                    }
                }
                DynoState::Stopping => {}
            }
        }
        self.rollout(app, RolloutKind::Replace { retire }, release, starts, reply).await;
    }

    /// The current release and the dynos of it that `target` (type, dyno name, or everything)
    /// names.
    fn restart_targets(&self, app: &AppName, target: Option<&str>) -> Result<(i64, Vec<DynoRow>)> {
        if self.rollouts.contains_key(app) {
            return Err(format!("a rollout of {app} is in progress; try again when it finishes"));
        }
        let row = store::apps::require(self.store.conn(), app).map_err(err)?;
        let release =
            row.current_release.ok_or_else(|| format!("{app} has no release yet; push it first"))?;
        let targets: Vec<DynoRow> = self
            .app_dynos(app)
            .into_iter()
            .filter(|d| d.release == release && d.state != DynoState::Stopping && matches_target(d, target))
            .collect();
        if targets.is_empty() {
            return Err(match target {
                Some(t) => format!("no dyno of {app} matches '{t}'"),
                None => format!("{app} has no dynos to restart"),
            });
        }
        Ok((release, targets))
    }

    /// Starts `starts` for `release` and tracks them until every web dyno among them is up.
    async fn rollout(
        &mut self,
        app: AppName,
        kind: RolloutKind,
        release: i64,
        starts: Vec<(String, i64, String)>,
        reply: oneshot::Sender<Response>,
    ) {
        let mut rollout = Rollout { kind, started: Vec::new(), waiting: HashSet::new(), reply };
        let mut failure = None;
        for (process_type, num, command) in starts {
            match self.create_dyno(&app, &process_type, num, release, &command).await {
                Ok((id, needs_boot)) => {
                    rollout.started.push(id);
                    if needs_boot {
                        rollout.waiting.insert(id);
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        self.rollouts.insert(app.clone(), rollout);
        match failure {
            Some(message) => self.finish_rollout(&app, Err(message)).await,
            None => self.maybe_finish_rollout(&app).await,
        }
    }

    async fn maybe_finish_rollout(&mut self, app: &AppName) {
        if self.rollouts.get(app).is_some_and(|r| r.waiting.is_empty()) {
            self.finish_rollout(app, Ok(())).await;
        }
    }

    async fn finish_rollout(&mut self, app: &AppName, outcome: Result<()>) {
        let Some(rollout) = self.rollouts.remove(app) else { return };
        let response = match (outcome, &rollout.kind) {
            (Ok(()), RolloutKind::Deploy { version }) => match self.promote(app, *version) {
                Ok(web) => {
                    self.event(app, "api", &format!("Release v{version} is now running"));
                    Response::Deployed { version: *version, web, url: self.settings.app_url(app.as_str()) }
                }
                Err(message) => Response::Error { message },
            },
            (Ok(()), RolloutKind::Replace { retire }) => {
                for id in retire {
                    if let Some(d) = self.dyno(*id) {
                        self.stop_dyno(&d, false);
                    }
                }
                Response::Done
            }
            (Err(message), kind) => {
                for id in &rollout.started {
                    if let Some(d) = self.dyno(*id) {
                        self.stop_dyno(&d, false);
                    }
                }
                if let RolloutKind::Deploy { version } = kind {
                    self.event(app, "api", &format!("Release v{version} failed: {message}"));
                    let _ = store::releases::set_status(self.store.conn(), app, *version, "failed");
                }
                Response::Error { message }
            }
        };
        let _ = rollout.reply.send(response);
        self.converge_logged(app).await;
    }

    /// Makes `version` current (one transaction), then stops every dyno of other releases.
    fn promote(&mut self, app: &AppName, version: i64) -> Result<Vec<WebDyno>> {
        let tx = self.store.transaction().map_err(err)?;
        store::apps::set_current_release(&tx, app, version).map_err(err)?;
        store::releases::set_status(&tx, app, version, "succeeded").map_err(err)?;
        tx.commit().map_err(err)?;
        let mut web = Vec::new();
        for dyno in self.app_dynos(app) {
            if dyno.release != version {
                self.stop_dyno(&dyno, false);
            } else if let (true, Some(port)) = (dyno.process_type == "web", dyno.port) {
                web.push(WebDyno { name: dyno.name(), port });
            }
        }
        Ok(web)
    }

    // ----- convergence ------------------------------------------------------------------------

    /// What should run for `app`: `release` (or the current one) with the formation's counts.
    fn desired(&self, app: &AppName, release: Option<i64>) -> Result<Desired> {
        let conn = self.store.conn();
        let release = match release {
            Some(v) => Some(v),
            None => store::apps::get(conn, app).map_err(err)?.and_then(|a| a.current_release),
        };
        let Some(version) = release else { return Ok(Desired::default()) };
        let procfile = release_procfile(conn, app, version)?;
        let formation = store::formation::get(conn, app).map_err(err)?;
        let processes = procfile
            .dyno_types()
            .map(|(t, c)| ProcessSpec {
                process_type: t.to_string(),
                command: c.to_string(),
                count: formation.get(t).copied().unwrap_or(0),
            })
            .collect();
        Ok(Desired { release: Some(version), processes })
    }

    /// Plans and carries out what the app needs now; schedules the next look if a crash
    /// restart is waiting for its backoff.
    async fn converge(&mut self, app: &AppName) -> Result<()> {
        if self.rollouts.contains_key(app) {
            return Ok(()); // the rollout converges when it finishes
        }
        let desired = self.desired(app, None)?;
        let plan = plan::plan(&desired, &self.app_dynos(app), OffsetDateTime::now_utc());
        let release = desired.release.unwrap_or(0);
        let mut first_error = None;
        for action in plan.actions {
            let result = match action {
                Action::Start { process_type, num, command } => {
                    self.create_dyno(app, &process_type, num, release, &command).await.map(|_| ())
                }
                Action::Stop { dyno } => {
                    if let Some(d) = self.dyno(dyno) {
                        self.stop_dyno(&d, false);
                    }
                    Ok(())
                }
                Action::Forget { dyno } => store::dynos::delete(self.store.conn(), dyno).map_err(err),
                Action::Restart { dyno } => self.restart_in_place(dyno).await,
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Some(wait) = plan.wake_in {
            // A little slack so the plan, run at the wake-up, finds the backoff elapsed.
            self.schedule(wait + Duration::from_millis(10), Event::Tick { app: app.clone() });
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn converge_logged(&mut self, app: &AppName) {
        if let Err(message) = self.converge(app).await {
            tracing::warn!(%app, %message, "converging");
        }
    }

    /// After `ps:scale`: stopped dynos of the scaled types are forgotten (scaling brings them
    /// back) and their crash backoff starts over.
    async fn scaled(&mut self, app: &AppName, types: &[String]) -> Result<()> {
        for d in self.app_dynos(app).into_iter().filter(|d| types.contains(&d.process_type)) {
            let conn = self.store.conn();
            if d.state == DynoState::Down {
                store::dynos::delete(conn, d.id).map_err(err)?;
            } else {
                store::dynos::set_restarts(conn, d.id, 0).map_err(err)?;
            }
        }
        self.converge(app).await
    }

    /// A crashed dyno whose backoff elapsed: same row, same name and port, one more restart.
    async fn restart_in_place(&mut self, id: i64) -> Result<()> {
        let Some(d) = self.dyno(id) else { return Ok(()) };
        store::dynos::set_restarts(self.store.conn(), id, d.restarts + 1).map_err(err)?;
        self.spawn(id).await
    }

    fn stop_request(&mut self, app: Option<&str>, target: Option<&str>, reply: oneshot::Sender<Response>) {
        let dynos = match app {
            Some(name) => match name.parse::<AppName>() {
                Ok(app) => self.app_dynos(&app),
                Err(e) => {
                    let _ = reply.send(Response::Error { message: e.to_string() });
                    return;
                }
            },
            None => store::dynos::all(self.store.conn()).unwrap_or_default(),
        };
        let targets: Vec<DynoRow> = dynos.into_iter().filter(|d| matches_target(d, target)).collect();
        if let (Some(t), true) = (target, targets.is_empty()) {
            let message = format!("no dyno matches '{t}'");
            let _ = reply.send(Response::Error { message });
            return;
        }
        for d in &targets {
            if let Ok(app) = d.app.parse::<AppName>() {
                if let Some(rollout) = self.rollouts.get_mut(&app) {
                    rollout.waiting.remove(&d.id);
                }
            }
            self.stop_dyno(d, true);
        }
        self.down_waiters.push(DownWaiter { dynos: targets.iter().map(|d| d.id).collect(), reply });
        self.answer_down_waiters();
    }

    fn answer_down_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.down_waiters);
        for waiter in waiters {
            let running = waiter.dynos.iter().any(|id| {
                self.dyno(*id).is_some_and(|d| {
                    matches!(d.state, DynoState::Starting | DynoState::Up | DynoState::Stopping)
                })
            });
            if running {
                self.down_waiters.push(waiter);
            } else {
                let _ = waiter.reply.send(Response::Done);
            }
        }
    }

    // ----- dyno processes ---------------------------------------------------------------------

    /// Inserts a dyno row and starts it. Returns its id, and whether it must pass the boot
    /// check (web dynos) before it counts as up.
    async fn create_dyno(
        &mut self,
        app: &AppName,
        process_type: &str,
        num: i64,
        release: i64,
        command: &str,
    ) -> Result<(i64, bool)> {
        let is_web = process_type == "web";
        let port = if is_web {
            let used = store::dynos::ports_in_use(self.store.conn()).map_err(err)?;
            let range = self.settings.ports.clone();
            Some(
                self.ports
                    .allocate(&used)
                    .ok_or_else(|| format!("no free port left in SLIPWAY_PORTS ({range:?})"))?,
            )
        } else {
            None
        };
        let new = NewDyno { app, process_type, num, release, command, port };
        let id = store::dynos::insert(self.store.conn(), &new).map_err(err)?;
        self.spawn(id).await?;
        Ok((id, is_web))
    }

    /// Starts (or restarts) the process of dyno row `id` through a shim.
    async fn spawn(&mut self, id: i64) -> Result<()> {
        let dyno = self.dyno(id).ok_or("dyno vanished")?;
        let app: AppName = dyno.app.parse().map_err(err)?;
        let name = dyno.name();
        let (dir, env) = match self.dyno_environment(&app, &dyno) {
            Ok(x) => x,
            Err(message) => return self.spawn_failed(&app, &dyno, message),
        };
        self.event(&app, &name, &format!("Starting process with command `{}`", dyno.command));

        let mut command = Command::new(&self.shim_binary);
        command
            .arg("dyno-shim")
            .arg("--log")
            .arg(self.home.app_log(&app))
            .arg("--log-max-bytes")
            .arg(self.settings.log_policy.max_bytes.to_string())
            .arg("--log-files")
            .arg(self.settings.log_policy.files.to_string())
            .arg("--dyno")
            .arg(&name)
            .arg("--dir")
            .arg(&dir)
            .arg("--")
            .arg(&dyno.command)
            .env_clear()
            .envs(&env)
            .current_dir(&dir)
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
        let spawned =
            tokio::task::spawn_blocking(move || spawn_shim(command)).await.map_err(err).and_then(|r| r);
        let ids = match spawned {
            Ok(ids) => ids,
            Err(message) => return self.spawn_failed(&app, &dyno, message),
        };
        let conn = self.store.conn();
        store::dynos::set_process(conn, id, ids).map_err(err)?;
        store::dynos::set_state(conn, id, DynoState::Starting).map_err(err)?;
        self.watch(id, ids.shim_pid, ids.shim_start);
        match dyno.port {
            Some(port) => self.boot_check(id, ids.pid, port),
            None => self.mark_up(&app, id),
        }
        Ok(())
    }

    /// A dyno that could not even be started counts as crashed (and is retried with backoff).
    fn spawn_failed(&mut self, app: &AppName, dyno: &DynoRow, message: String) -> Result<()> {
        self.event(app, &dyno.name(), &format!("Failed to start: {message}"));
        let _ = store::dynos::set_down(self.store.conn(), dyno.id);
        let _ = store::dynos::set_state(self.store.conn(), dyno.id, DynoState::Crashed);
        if !self.rollouts.contains_key(app) {
            // The backoff timer for this crash.
            let wait = plan::restart_delay(dyno.restarts);
            self.schedule(wait + Duration::from_millis(10), Event::Tick { app: app.clone() });
        }
        Err(format!("{} failed to start: {message}", dyno.name()))
    }

    /// The dyno's working directory and its whole environment (DESIGN.md: a clean env).
    fn dyno_environment(&self, app: &AppName, dyno: &DynoRow) -> Result<(PathBuf, BTreeMap<String, String>)> {
        let env = crate::dyno::DynoEnv::for_release(&self.home, self.store.conn(), app, dyno.release)
            .map_err(err)?;
        let vars = env.vars(&dyno.name(), dyno.port);
        Ok((env.dir, vars))
    }

    fn watch(&self, dyno: i64, shim_pid: i32, shim_start: u64) {
        let events = self.events.clone();
        tokio::spawn(async move {
            process::wait_for_exit(shim_pid, shim_start).await;
            let _ = events.send(Event::Exited { dyno, shim_pid });
        });
    }

    fn boot_check(&self, dyno: i64, pid: i32, port: u16) {
        let events = self.events.clone();
        let timeout = self.settings.boot_timeout;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            while tokio::time::Instant::now() < deadline {
                let attempt = tokio::net::TcpStream::connect(("127.0.0.1", port));
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                    let _ = events.send(Event::Booted { dyno, pid });
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
            let _ = events.send(Event::BootTimedOut { dyno, pid });
        });
    }

    fn mark_up(&mut self, app: &AppName, id: i64) {
        let _ = store::dynos::set_state(self.store.conn(), id, DynoState::Up);
        if let Some(dyno) = self.dyno(id) {
            self.event(app, &dyno.name(), "State changed from starting to up");
        }
    }

    async fn on_booted(&mut self, id: i64, pid: i32) {
        let Some(dyno) = self.dyno(id) else { return };
        if dyno.pid != Some(pid) || dyno.state != DynoState::Starting {
            return;
        }
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        self.mark_up(&app, id);
        if let Some(rollout) = self.rollouts.get_mut(&app) {
            rollout.waiting.remove(&id);
        }
        self.maybe_finish_rollout(&app).await;
    }

    async fn on_boot_timeout(&mut self, id: i64, pid: i32) {
        let Some(dyno) = self.dyno(id) else { return };
        if dyno.pid != Some(pid) || dyno.state != DynoState::Starting {
            return;
        }
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        let secs = self.settings.boot_timeout.as_secs();
        let name = dyno.name();
        self.event(
            &app,
            &name,
            &format!("Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {secs} seconds of launch"),
        );
        if self.rollout_owns(&app, id) {
            let port = dyno.port.unwrap_or(0);
            let message = format!("{name} did not accept connections on port {port} within {secs} s");
            self.finish_rollout(&app, Err(message)).await;
        } else if let (Some(pid), Some(start)) = (dyno.pid, dyno.pid_start) {
            // Killed as a crash: its exit then goes through the restart policy.
            process::signal_group(pid, start, Signal::SIGKILL);
        }
    }

    fn rollout_owns(&self, app: &AppName, id: i64) -> bool {
        self.rollouts.get(app).is_some_and(|r| r.waiting.contains(&id))
    }

    /// SIGTERM to the dyno's process group now, SIGKILL after the grace period. With
    /// `keep_down` (ps:stop) the row stays, `down`, until a restart or scale.
    fn stop_dyno(&mut self, dyno: &DynoRow, keep_down: bool) {
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        let conn = self.store.conn();
        if keep_down {
            let _ = store::dynos::set_stopped(conn, dyno.id, true);
        }
        let alive =
            matches!((dyno.pid, dyno.pid_start), (Some(p), Some(s)) if process::is_same_process(p, s));
        let shim_alive =
            matches!((dyno.shim_pid, dyno.shim_start), (Some(p), Some(s)) if process::is_same_process(p, s));
        if !alive && !shim_alive {
            let _ = if keep_down {
                store::dynos::set_down(conn, dyno.id)
            } else {
                store::dynos::delete(conn, dyno.id)
            };
            if matches!(dyno.state, DynoState::Up | DynoState::Starting) {
                self.event(
                    &app,
                    &dyno.name(),
                    &format!("State changed from {} to down", dyno.state.as_str()),
                );
            }
            return;
        }
        if dyno.state == DynoState::Stopping {
            return;
        }
        let _ = store::dynos::set_state(conn, dyno.id, DynoState::Stopping);
        let Some(pid) = dyno.pid else { return };
        match dyno.port {
            Some(port) if dyno.process_type == "web" => {
                // Out of the routing table first, then let requests already on it finish
                // (at most the stop grace period) before SIGTERM.
                self.refresh_routes();
                let router = self.router.clone();
                let events = self.events.clone();
                let grace = self.settings.stop_timeout;
                let id = dyno.id;
                tokio::spawn(async move {
                    router.drain(port, grace).await;
                    let _ = events.send(Event::TermDue { dyno: id, pid });
                });
            }
            _ => self.on_term_due(dyno.id, pid),
        }
    }

    /// SIGTERM to a stopping dyno's process group; SIGKILL after the grace period.
    fn on_term_due(&mut self, id: i64, pid: i32) {
        let Some(dyno) = self.dyno(id) else { return };
        if dyno.pid != Some(pid) || dyno.state != DynoState::Stopping {
            return;
        }
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        self.event(&app, &dyno.name(), "Stopping all processes with SIGTERM");
        if let Some(start) = dyno.pid_start {
            process::signal_group(pid, start, Signal::SIGTERM);
            self.schedule(self.settings.stop_timeout, Event::KillDue { dyno: id, pid });
        }
    }

    /// Rebuilds the router's table from SQLite: each app's `up` web dynos of its current
    /// release (H10 when they all crashed, H14 when there are none) and its hosts.
    fn refresh_routes(&self) {
        use crate::router::{AppStatus, Backend, RouteTable};
        let conn = self.store.conn();
        let mut table = RouteTable::new(&self.settings.domain);
        for app in store::apps::list(conn).unwrap_or_default() {
            let Ok(name) = app.name.parse::<AppName>() else { continue };
            let dynos = self.app_dynos(&name);
            let web: Vec<&DynoRow> = dynos
                .iter()
                .filter(|d| d.process_type == "web" && Some(d.release) == app.current_release)
                .collect();
            let up: Vec<Backend> = web
                .iter()
                .filter(|d| d.state == DynoState::Up)
                .filter_map(|d| Some(Backend::new(d.name(), d.port?)))
                .collect();
            let status = if !up.is_empty() {
                AppStatus::Up(up)
            } else if web.iter().any(|d| d.state == DynoState::Crashed) {
                AppStatus::Crashed
            } else {
                AppStatus::NoWebDynos
            };
            let hosts: Vec<String> = store::domains::for_app(conn, &name)
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.host)
                .collect();
            table.add_app(name.as_str(), &hosts, status);
        }
        self.router.update(table);
    }

    fn on_kill_due(&mut self, id: i64, pid: i32) {
        let Some(dyno) = self.dyno(id) else { return };
        if dyno.pid != Some(pid) || dyno.state != DynoState::Stopping {
            return;
        }
        let Some(start) = dyno.pid_start else { return };
        if process::signal_group(pid, start, Signal::SIGKILL) {
            if let Ok(app) = dyno.app.parse::<AppName>() {
                let secs = self.settings.stop_timeout.as_secs();
                let name = dyno.name();
                self.event(
                    &app,
                    &name,
                    &format!("Error R12 (Exit timeout) -> At least one process failed to exit within {secs} seconds of SIGTERM"),
                );
                self.event(&app, &name, "Stopping remaining processes with SIGKILL");
            }
        }
    }

    async fn on_exit(&mut self, id: i64, shim_pid: i32) {
        process::reap(shim_pid);
        let Some(dyno) = self.dyno(id) else { return };
        if dyno.shim_pid != Some(shim_pid) {
            return; // an older incarnation of this dyno
        }
        self.dyno_exited(&dyno).await;
    }

    /// The dyno's process is gone: expected after a stop, a crash otherwise.
    async fn dyno_exited(&mut self, dyno: &DynoRow) {
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        let name = dyno.name();
        let conn = self.store.conn();
        match dyno.state {
            DynoState::Stopping | DynoState::Down => {
                let _ = if dyno.stopped {
                    store::dynos::set_down(conn, dyno.id)
                } else {
                    store::dynos::delete(conn, dyno.id)
                };
                if dyno.state == DynoState::Stopping {
                    self.event(&app, &name, "State changed from up to down");
                }
                self.answer_down_waiters();
            }
            DynoState::Starting | DynoState::Up | DynoState::Crashed => {
                // A dyno that had been up for a while starts its backoff from the beginning.
                if plan::was_healthy(dyno.started_at.as_deref(), OffsetDateTime::now_utc()) {
                    let _ = store::dynos::set_restarts(conn, dyno.id, 0);
                }
                let _ = store::dynos::set_state(conn, dyno.id, DynoState::Crashed);
                if dyno.state != DynoState::Crashed {
                    self.event(
                        &app,
                        &name,
                        &format!("State changed from {} to crashed", dyno.state.as_str()),
                    );
                }
                if self.rollout_owns(&app, dyno.id) {
                    self.finish_rollout(&app, Err(format!("{name} exited during boot"))).await;
                } else {
                    self.converge_logged(&app).await;
                }
            }
        }
    }

    fn schedule(&self, after: Duration, event: Event) {
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = events.send(event);
        });
    }

    // ----- start-up ---------------------------------------------------------------------------

    /// Re-adopts the dynos recorded in SQLite after a daemon (re)start: living shims are
    /// watched again, dead ones count as crashes, then every app converges.
    async fn adopt(&mut self) {
        if let Ok(pending) = store::releases::pending(self.store.conn()) {
            for (app, version) in pending {
                let _ = store::releases::set_status(self.store.conn(), &app, version, "failed");
                self.event(
                    &app,
                    "api",
                    &format!("Release v{version} failed: the daemon restarted during its rollout"),
                );
            }
        }
        let dynos = store::dynos::all(self.store.conn()).unwrap_or_default();
        let mut adopted = 0;
        for dyno in &dynos {
            if dyno.state == DynoState::Down || dyno.state == DynoState::Crashed {
                continue; // nothing runs; the plan decides
            }
            match (dyno.shim_pid, dyno.shim_start) {
                (Some(shim_pid), Some(shim_start)) if process::is_same_process(shim_pid, shim_start) => {
                    adopted += 1;
                    self.watch(dyno.id, shim_pid, shim_start);
                    match (dyno.state, dyno.pid, dyno.port) {
                        (DynoState::Starting, Some(pid), Some(port)) => self.boot_check(dyno.id, pid, port),
                        (DynoState::Stopping, Some(pid), _) => {
                            self.schedule(self.settings.stop_timeout, Event::KillDue { dyno: dyno.id, pid })
                        }
                        _ => {}
                    }
                }
                _ => {
                    // The shim is gone; make sure nothing of the dyno survives it, then treat it
                    // as an exit seen late.
                    if let (Some(pid), Some(start)) = (dyno.pid, dyno.pid_start) {
                        process::signal_group(pid, start, Signal::SIGKILL);
                    }
                    self.dyno_exited(dyno).await;
                }
            }
        }
        tracing::info!(adopted, recorded = dynos.len(), "re-adopted running dynos");
        for app in store::apps::list(self.store.conn()).unwrap_or_default() {
            if let Ok(app) = app.name.parse::<AppName>() {
                self.converge_logged(&app).await;
            }
        }
    }

    // ----- helpers ----------------------------------------------------------------------------

    fn dyno(&self, id: i64) -> Option<DynoRow> {
        store::dynos::get(self.store.conn(), id).ok().flatten()
    }

    fn app_dynos(&self, app: &AppName) -> Vec<DynoRow> {
        store::dynos::for_app(self.store.conn(), app).unwrap_or_default()
    }

    fn event(&self, app: &AppName, dyno: &str, message: &str) {
        logs::append_event(&self.home.app_log(app), Source::Slipway, dyno, message);
    }
}

/// `web` matches every web dyno, `web.2` exactly one, no target everything.
pub fn matches_target(dyno: &DynoRow, target: Option<&str>) -> bool {
    match target {
        None => true,
        Some(t) if t.contains('.') => dyno.name() == t,
        Some(t) => dyno.process_type == t,
    }
}

fn release_procfile(conn: &rusqlite::Connection, app: &AppName, version: i64) -> Result<Procfile> {
    let release = store::releases::require_release(conn, app, version).map_err(err)?;
    let build_id = release.build_id.ok_or_else(|| format!("release v{version} has no build"))?;
    let build = store::releases::build(conn, &build_id)
        .map_err(err)?
        .ok_or_else(|| format!("build {build_id} is missing"))?;
    Ok(build.process_types)
}

/// Spawns the shim and reads its `PID START` line. Blocking; runs on a blocking thread.
fn spawn_shim(mut command: Command) -> Result<ProcessIds> {
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
            let _ = child.wait();
            Err("the process could not be started (see logs/slipway.log)".into())
        }
    }
}

fn shim_stderr(home: &Home) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.daemon_log())
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
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
