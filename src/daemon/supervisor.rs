//! The supervisor: one tokio task that owns the daemon's view of every dyno and is the only
//! writer of dyno rows while the daemon runs. Everything that happens — a control request, a
//! process exit, a boot check result, a timer — arrives as an [`Event`] on one channel and is
//! handled in order, so there are no locks and no races between, say, a crash and a deploy.
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
use tokio::sync::{mpsc, oneshot};

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
use crate::timefmt;

/// Backoff after repeated crashes: 1 s, 2 s, 4 s … capped here.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A dyno that stayed up this long has its crash count reset.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

pub enum Event {
    Request(Request, oneshot::Sender<Response>),
    Exited { dyno: i64, shim_pid: i32 },
    Booted { dyno: i64, pid: i32 },
    BootTimedOut { dyno: i64, pid: i32 },
    KillDue { dyno: i64, pid: i32 },
    RestartDue { dyno: i64 },
}

struct Rollout {
    version: i64,
    waiting: HashSet<i64>,
    reply: oneshot::Sender<Response>,
}

pub struct Supervisor {
    home: Home,
    settings: Settings,
    store: Store,
    events: mpsc::UnboundedSender<Event>,
    rollouts: HashMap<AppName, Rollout>,
    stop_waiters: Vec<(AppName, oneshot::Sender<Response>)>,
    ports: ports::Allocator,
    shim_binary: PathBuf,
}

type Result<T> = std::result::Result<T, String>;

impl Supervisor {
    pub fn new(home: Home, settings: Settings, store: Store, events: mpsc::UnboundedSender<Event>) -> Self {
        let ports = ports::Allocator::new(settings.ports.clone());
        Supervisor {
            home,
            settings,
            store,
            events,
            rollouts: HashMap::new(),
            stop_waiters: Vec::new(),
            ports,
            shim_binary: current_binary(),
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        self.adopt().await;
        while let Some(event) = rx.recv().await {
            self.handle(event).await;
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Request(request, reply) => self.on_request(request, reply).await,
            Event::Exited { dyno, shim_pid } => self.on_exit(dyno, shim_pid).await,
            Event::Booted { dyno, pid } => self.on_booted(dyno, pid).await,
            Event::BootTimedOut { dyno, pid } => self.on_boot_timeout(dyno, pid).await,
            Event::KillDue { dyno, pid } => self.on_kill_due(dyno, pid),
            Event::RestartDue { dyno } => self.on_restart_due(dyno).await,
        }
    }

    async fn on_request(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        let response = match request {
            Request::Hello { .. } => return,
            Request::Status => {
                let dynos = store::dynos::all(self.store.conn()).map(|d| d.len()).unwrap_or(0);
                Response::Status { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into(), dynos }
            }
            Request::Deploy { app, version } => match app.parse::<AppName>() {
                Ok(app) => return self.deploy(app, version, reply).await,
                Err(e) => Response::Error { message: e.to_string() },
            },
            Request::Converge { app } => match app.parse::<AppName>() {
                Ok(app) => match self.converge(&app).await {
                    Ok(()) => Response::Done,
                    Err(message) => Response::Error { message },
                },
                Err(e) => Response::Error { message: e.to_string() },
            },
            Request::StopApp { app } => match app.parse::<AppName>() {
                Ok(app) => return self.stop_app(app, reply),
                Err(e) => Response::Error { message: e.to_string() },
            },
        };
        let _ = reply.send(response);
    }

    // ----- deploys -------------------------------------------------------------------------

    /// Starts the release's formation next to the running one; the old dynos are stopped only
    /// once every new web dyno accepts connections (zero downtime), else the new ones go.
    async fn deploy(&mut self, app: AppName, version: i64, reply: oneshot::Sender<Response>) {
        if self.rollouts.contains_key(&app) {
            let message = format!("another release of {app} is being rolled out; try again when it finishes");
            let _ = reply.send(Response::Error { message });
            return;
        }
        let plan = match self.release_plan(&app, version) {
            Ok(plan) => plan,
            Err(message) => {
                let _ = reply.send(Response::Error { message });
                return;
            }
        };
        let mut waiting = HashSet::new();
        let mut failure = None;
        for (process_type, command, count) in &plan {
            for num in 1..=*count as i64 {
                match self.create_dyno(&app, process_type, num, version, command).await {
                    Ok(Some(id)) => {
                        waiting.insert(id);
                    }
                    Ok(None) => {}
                    Err(e) => failure = Some(e),
                }
            }
        }
        self.rollouts.insert(app.clone(), Rollout { version, waiting, reply });
        match failure {
            Some(message) => self.finish_rollout(&app, Err(message)),
            None => self.maybe_finish_rollout(&app),
        }
    }

    /// (type, command, count) for every dyno type of the release's Procfile.
    fn release_plan(&self, app: &AppName, version: i64) -> Result<Vec<(String, String, u32)>> {
        let conn = self.store.conn();
        let procfile = release_procfile(conn, app, version)?;
        let formation = store::formation::get(conn, app).map_err(|e| e.to_string())?;
        Ok(procfile
            .dyno_types()
            .map(|(t, c)| (t.to_string(), c.to_string(), formation.get(t).copied().unwrap_or(0)))
            .collect())
    }

    fn maybe_finish_rollout(&mut self, app: &AppName) {
        if self.rollouts.get(app).is_some_and(|r| r.waiting.is_empty()) {
            self.finish_rollout(app, Ok(()));
        }
    }

    fn finish_rollout(&mut self, app: &AppName, outcome: Result<()>) {
        let Some(rollout) = self.rollouts.remove(app) else { return };
        let version = rollout.version;
        let response = match outcome {
            Ok(()) => match self.promote(app, version) {
                Ok(web) => {
                    self.event(app, "api", &format!("Release v{version} is now running"));
                    Response::Deployed { version, web }
                }
                Err(message) => Response::Error { message },
            },
            Err(message) => {
                self.event(app, "api", &format!("Release v{version} failed: {message}"));
                for dyno in self.app_dynos(app) {
                    if dyno.release == version {
                        self.stop_dyno(&dyno);
                    }
                }
                let _ = store::releases::set_status(self.store.conn(), app, version, "failed");
                Response::Error { message }
            }
        };
        let _ = rollout.reply.send(response);
    }

    /// Makes `version` current (one transaction), then stops every dyno of other releases.
    fn promote(&mut self, app: &AppName, version: i64) -> Result<Vec<WebDyno>> {
        let tx = self.store.transaction().map_err(|e| e.to_string())?;
        store::apps::set_current_release(&tx, app, version).map_err(|e| e.to_string())?;
        store::releases::set_status(&tx, app, version, "succeeded").map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        let mut web = Vec::new();
        for dyno in self.app_dynos(app) {
            if dyno.release != version {
                self.stop_dyno(&dyno);
            } else if dyno.process_type == "web" {
                if let Some(port) = dyno.port {
                    web.push(WebDyno { name: dyno.name(), port });
                }
            }
        }
        Ok(web)
    }

    // ----- convergence ---------------------------------------------------------------------

    /// Starts missing dynos and stops extra ones so the current release runs exactly its
    /// formation. Dynos of other releases are stopped unless a rollout owns them.
    async fn converge(&mut self, app: &AppName) -> Result<()> {
        if self.rollouts.contains_key(app) {
            return Ok(()); // the rollout converges when it finishes
        }
        let Some(row) = store::apps::get(self.store.conn(), app).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let Some(version) = row.current_release else { return Ok(()) };
        let plan = self.release_plan(app, version)?;
        let dynos = self.app_dynos(app);
        for dyno in &dynos {
            let wanted = plan.iter().any(|(t, _, n)| *t == dyno.process_type && dyno.num <= *n as i64);
            if dyno.state != DynoState::Stopping && (dyno.release != version || !wanted) {
                self.stop_dyno(dyno);
            }
        }
        for (process_type, command, count) in &plan {
            for num in 1..=*count as i64 {
                let exists = dynos.iter().any(|d| {
                    d.process_type == *process_type
                        && d.num == num
                        && d.release == version
                        && d.state != DynoState::Stopping
                });
                if !exists {
                    self.create_dyno(app, process_type, num, version, command).await?;
                }
            }
        }
        Ok(())
    }

    fn stop_app(&mut self, app: AppName, reply: oneshot::Sender<Response>) {
        if let Some(rollout) = self.rollouts.remove(&app) {
            let _ = rollout.reply.send(Response::Error { message: format!("{app} is being destroyed") });
        }
        let dynos = self.app_dynos(&app);
        for dyno in &dynos {
            self.stop_dyno(dyno);
        }
        self.stop_waiters.push((app, reply));
        self.answer_stop_waiters();
    }

    fn answer_stop_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.stop_waiters);
        for (app, reply) in waiters {
            if self.app_dynos(&app).is_empty() {
                let _ = reply.send(Response::Done);
            } else {
                self.stop_waiters.push((app, reply));
            }
        }
    }

    // ----- dyno processes ------------------------------------------------------------------

    /// Inserts a dyno row and starts it. Returns the id when it is a web dyno that must pass
    /// the boot check before it counts as up.
    async fn create_dyno(
        &mut self,
        app: &AppName,
        process_type: &str,
        num: i64,
        release: i64,
        command: &str,
    ) -> Result<Option<i64>> {
        let is_web = process_type == "web";
        let port =
            if is_web {
                let used = store::dynos::ports_in_use(self.store.conn()).map_err(|e| e.to_string())?;
                Some(self.ports.allocate(&used).ok_or_else(|| {
                    format!("no free port left in SLIPWAY_PORTS ({:?})", self.settings.ports)
                })?)
            } else {
                None
            };
        let new = NewDyno { app, process_type, num, release, command, port };
        let id = store::dynos::insert(self.store.conn(), &new).map_err(|e| e.to_string())?;
        self.spawn(id).await?;
        Ok(is_web.then_some(id))
    }

    /// Starts (or restarts) the process of dyno row `id` through a shim.
    async fn spawn(&mut self, id: i64) -> Result<()> {
        let dyno = self.dyno(id).ok_or("dyno vanished")?;
        let app: AppName = dyno.app.parse().map_err(|e: crate::app::InvalidAppName| e.to_string())?;
        let (dir, env) = self.dyno_environment(&app, &dyno)?;
        let name = dyno.name();
        self.event(&app, &name, &format!("Starting process with command `{}`", dyno.command));

        let mut command = Command::new(&self.shim_binary);
        command
            .arg("dyno-shim")
            .arg("--log")
            .arg(self.home.app_log(&app))
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
        let spawned = tokio::task::spawn_blocking(move || spawn_shim(command))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let ids = match spawned {
            Ok(ids) => ids,
            Err(message) => {
                self.event(&app, &name, &format!("Failed to start: {message}"));
                let _ = store::dynos::set_state(self.store.conn(), id, DynoState::Crashed);
                return Err(format!("{name} failed to start: {message}"));
            }
        };
        let conn = self.store.conn();
        store::dynos::set_process(conn, id, ids).map_err(|e| e.to_string())?;
        store::dynos::set_state(conn, id, DynoState::Starting).map_err(|e| e.to_string())?;
        self.watch(id, ids.shim_pid, ids.shim_start);
        match dyno.port {
            Some(port) => self.boot_check(id, ids.pid, port),
            None => self.mark_up(&app, id),
        }
        Ok(())
    }

    /// The dyno's working directory and its whole environment (DESIGN.md: a clean env).
    fn dyno_environment(&self, app: &AppName, dyno: &DynoRow) -> Result<(PathBuf, BTreeMap<String, String>)> {
        let conn = self.store.conn();
        let release = store::releases::require_release(conn, app, dyno.release).map_err(|e| e.to_string())?;
        let build_id = release.build_id.clone().ok_or("the release has no build")?;
        let dir = self.home.release_dir(app, &build_id);
        if !dir.is_dir() {
            return Err(format!("release dir {} is missing", dir.display()));
        }
        let mut env = release.config.clone();
        let venv_bin = dir.join(".slipway/venv/bin");
        let path = if venv_bin.is_dir() {
            format!("{}:/usr/local/bin:/usr/bin:/bin", venv_bin.display())
        } else {
            "/usr/local/bin:/usr/bin:/bin".to_string()
        };
        env.insert("PATH".into(), path);
        env.insert("HOME".into(), dir.display().to_string());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.insert("DYNO".into(), dyno.name());
        if venv_bin.is_dir() {
            env.insert("VIRTUAL_ENV".into(), dir.join(".slipway/venv").display().to_string());
        }
        if let Some(port) = dyno.port {
            env.insert("PORT".into(), port.to_string());
        }
        Ok((dir, env))
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
                tokio::time::sleep(Duration::from_millis(100)).await;
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
        self.maybe_finish_rollout(&app);
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
            &format!(
            "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {secs} seconds of launch"
        ),
        );
        if self.rollout_owns(&app, id) {
            let message = format!(
                "{name} did not accept connections on port {} within {secs} s",
                dyno.port.unwrap_or(0)
            );
            self.finish_rollout(&app, Err(message));
        } else {
            // Killed as a crash: its exit is then handled by the restart policy.
            if let (Some(pid), Some(start)) = (dyno.pid, dyno.pid_start) {
                process::signal_group(pid, start, Signal::SIGKILL);
            }
        }
    }

    fn rollout_owns(&self, app: &AppName, id: i64) -> bool {
        self.rollouts.get(app).is_some_and(|r| r.waiting.contains(&id))
    }

    /// SIGTERM to the dyno's process group now, SIGKILL after the grace period.
    fn stop_dyno(&mut self, dyno: &DynoRow) {
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        let alive =
            matches!((dyno.pid, dyno.pid_start), (Some(p), Some(s)) if process::is_same_process(p, s));
        let shim_alive =
            matches!((dyno.shim_pid, dyno.shim_start), (Some(p), Some(s)) if process::is_same_process(p, s));
        if !alive && !shim_alive {
            let _ = store::dynos::delete(self.store.conn(), dyno.id);
            if dyno.state != DynoState::Crashed {
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
        self.event(&app, &dyno.name(), "Stopping all processes with SIGTERM");
        let _ = store::dynos::set_state(self.store.conn(), dyno.id, DynoState::Stopping);
        if let (Some(pid), Some(start)) = (dyno.pid, dyno.pid_start) {
            process::signal_group(pid, start, Signal::SIGTERM);
            self.schedule(self.settings.stop_timeout, Event::KillDue { dyno: dyno.id, pid });
        }
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
                self.event(&app, &dyno.name(), &format!(
                    "Error R12 (Exit timeout) -> At least one process failed to exit within {secs} seconds of SIGTERM"
                ));
                self.event(&app, &dyno.name(), "Stopping remaining processes with SIGKILL");
            }
        }
    }

    async fn on_exit(&mut self, id: i64, shim_pid: i32) {
        process::reap(shim_pid);
        let Some(dyno) = self.dyno(id) else { return };
        if dyno.shim_pid != Some(shim_pid) {
            return; // an older incarnation of this dyno
        }
        self.dyno_exited(&dyno);
    }

    /// The dyno's process is gone: expected after a stop, a crash otherwise.
    fn dyno_exited(&mut self, dyno: &DynoRow) {
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        let name = dyno.name();
        match dyno.state {
            DynoState::Stopping | DynoState::Down => {
                let _ = store::dynos::delete(self.store.conn(), dyno.id);
                self.event(&app, &name, "State changed from up to down");
                self.answer_stop_waiters();
            }
            DynoState::Starting | DynoState::Up | DynoState::Crashed => {
                let _ = store::dynos::set_state(self.store.conn(), dyno.id, DynoState::Crashed);
                if dyno.state != DynoState::Crashed {
                    self.event(
                        &app,
                        &name,
                        &format!("State changed from {} to crashed", dyno.state.as_str()),
                    );
                }
                if self.rollout_owns(&app, dyno.id) {
                    self.finish_rollout(&app, Err(format!("{name} exited during boot")));
                } else {
                    self.schedule_restart(dyno);
                }
            }
        }
    }

    /// First crash: restart at once; then 1 s, 2 s, 4 s … up to 5 minutes. A dyno that had been
    /// up for a while starts again from the beginning of that sequence.
    fn schedule_restart(&mut self, dyno: &DynoRow) {
        let was_healthy = dyno.started_at.as_deref().and_then(timefmt::parse).is_some_and(|t| {
            (time::OffsetDateTime::now_utc() - t).whole_seconds() >= HEALTHY_AFTER.as_secs() as i64
        });
        let restarts = if was_healthy { 0 } else { dyno.restarts };
        let delay = restart_delay(restarts);
        let _ = store::dynos::set_restarts(self.store.conn(), dyno.id, restarts + 1);
        self.schedule(delay, Event::RestartDue { dyno: dyno.id });
    }

    async fn on_restart_due(&mut self, id: i64) {
        let Some(dyno) = self.dyno(id) else { return };
        if dyno.state != DynoState::Crashed {
            return;
        }
        let Ok(app) = dyno.app.parse::<AppName>() else { return };
        let current =
            store::apps::get(self.store.conn(), &app).ok().flatten().and_then(|a| a.current_release);
        if current != Some(dyno.release) {
            let _ = store::dynos::delete(self.store.conn(), id);
            return;
        }
        if let Err(message) = self.spawn(id).await {
            tracing::warn!(%app, dyno = %dyno.name(), %message, "restart failed");
            if let Some(dyno) = self.dyno(id) {
                self.schedule_restart(&dyno);
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

    // ----- start-up ------------------------------------------------------------------------

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
            let shim_alive = matches!((dyno.shim_pid, dyno.shim_start),
                (Some(p), Some(s)) if process::is_same_process(p, s));
            match (shim_alive, dyno.shim_pid, dyno.shim_start) {
                (true, Some(shim_pid), Some(shim_start)) => {
                    adopted += 1;
                    self.watch(dyno.id, shim_pid, shim_start);
                    match dyno.state {
                        DynoState::Starting => {
                            if let (Some(pid), Some(port)) = (dyno.pid, dyno.port) {
                                self.boot_check(dyno.id, pid, port);
                            }
                        }
                        DynoState::Stopping => {
                            if let Some(pid) = dyno.pid {
                                self.schedule(
                                    self.settings.stop_timeout,
                                    Event::KillDue { dyno: dyno.id, pid },
                                );
                            }
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
                    self.dyno_exited(dyno);
                }
            }
        }
        tracing::info!(adopted, recorded = dynos.len(), "re-adopted running dynos");
        let apps = store::apps::list(self.store.conn()).unwrap_or_default();
        for app in apps {
            if let Ok(app) = app.name.parse::<AppName>() {
                if let Err(message) = self.converge(&app).await {
                    tracing::warn!(%app, %message, "could not converge at start-up");
                }
            }
        }
    }

    // ----- helpers -------------------------------------------------------------------------

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

fn release_procfile(conn: &rusqlite::Connection, app: &AppName, version: i64) -> Result<Procfile> {
    let release = store::releases::require_release(conn, app, version).map_err(|e| e.to_string())?;
    let build_id = release.build_id.ok_or_else(|| format!("release v{version} has no build"))?;
    let build = store::releases::build(conn, &build_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("build {build_id} is missing"))?;
    Ok(build.process_types)
}

pub fn restart_delay(restarts_so_far: i64) -> Duration {
    if restarts_so_far <= 0 {
        return Duration::ZERO;
    }
    let exp = (restarts_so_far - 1).min(16) as u32;
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// Spawns the shim and reads its `PID START` line. Blocking; runs on a blocking thread.
fn spawn_shim(mut command: Command) -> Result<ProcessIds> {
    let mut child = command.spawn().map_err(|e| format!("spawning the dyno shim: {e}"))?;
    let shim_pid = child.id() as i32;
    let shim_start = process::start_time(shim_pid).unwrap_or(0);
    let stdout = child.stdout.take().ok_or("the shim has no stdout")?;
    let mut line = String::new();
    let read = std::io::BufReader::new(stdout).read_line(&mut line);
    let mut words = line.split_whitespace().map(str::parse::<u64>);
    match (read, words.next(), words.next()) {
        (Ok(_), Some(Ok(pid)), Some(Ok(pid_start))) => {
            // The shim may exit quickly (a dyno that crashes at once); its start time was read
            // above while it was certainly alive, since it had not yet written its line.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let secs: Vec<u64> = (0..12).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(restart_delay(1000), MAX_BACKOFF);
    }
}
