//! The supervisor's pure core: an in-memory model of apps, releases, formation, dynos and
//! rollouts, and one [`World::handle`] that owns every decision the daemon makes about them.
//!
//! `handle(input, now)` changes the model and returns the [`Effect`]s that carry the decision
//! out: persist a row, spawn a shim, send a signal, start a boot check or a drain, arm a timer,
//! answer a request, write an event to the app's log. Nothing here touches a process, a file, a
//! socket or the clock, so every rule is tested without processes — by the transition table in
//! the tests below and by property tests that feed random event sequences (stops, crashes,
//! kills, scale changes and deploys in the middle of rollouts) and check the invariants: every
//! rollout ends, the formation is met, no dyno is both routable and stopping, and no process is
//! untracked. `supervisor.rs` is the thin executor around it.
//!
//! The model is the daemon's truth while it runs: the route table is computed from it, and
//! SQLite is its durable copy (written through [`Write`] effects, retried until they succeed).
//! The CLI and the build hook write only desired state (releases, formation, domains, config)
//! and ask the daemon, which reads that desired state into an [`AppSpec`] for each request.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::Duration;

use time::OffsetDateTime;

use super::plan::{self, Action, Desired, ProcessSpec};
use super::protocol::{Response, WebDyno};
use crate::app::AppName;
use crate::router::AppStatus;
use crate::store::dynos::{DynoRow, DynoState, ProcessIds};
use crate::timefmt;

pub type DynoId = i64;

/// How long after going live a release's web crashes count towards an automatic rollback.
pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(300);
/// How long `slipway run` has between recording a one-off dyno and attaching its process.
pub const RUN_ATTACH_WITHIN: Duration = Duration::from_secs(60);
/// A dyno that could not even be recorded (no free port) is tried again after this long.
pub const START_RETRY: Duration = Duration::from_secs(5);
/// That many web crashes within the window roll the release back.
pub const CRASHES_TO_ROLL_BACK: u32 = 3;
/// Names a request's pending answer; the executor holds the channel behind it.
pub type ReplyId = u64;

/// Desired state of one app, as the CLI and hook recorded it in SQLite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSpec {
    /// Dynos per process type.
    pub formation: BTreeMap<String, u32>,
    /// Custom domains.
    pub hosts: Vec<String>,
    /// Process types (type, command), `release` excluded, of the releases an input may need:
    /// the current one and the one a deploy asks for.
    pub processes: BTreeMap<i64, Vec<(String, String)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RolloutKind {
    /// The rollout's release replaces every dyno of other releases, and becomes current.
    Deploy,
    /// New dynos of the current release replace these.
    Replace { retire: Vec<DynoId> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rollout {
    kind: RolloutKind,
    release: i64,
    /// Every dyno this rollout started (stopped again if it fails).
    started: Vec<DynoId>,
    /// Web dynos of `started` that have not passed the boot check yet.
    waiting: BTreeSet<DynoId>,
    reply: Option<ReplyId>,
}

#[derive(Debug, Clone, Default)]
struct AppModel {
    current: Option<i64>,
    spec: AppSpec,
    rollout: Option<Rollout>,
    /// The release that went live last, watched for crashes while it is young.
    watch: Option<Watch>,
    /// Releases rolled back automatically: never rolled back *to*.
    bad: BTreeSet<i64>,
}

/// A release that went live at `since`, replacing `previous`.
#[derive(Debug, Clone)]
struct Watch {
    version: i64,
    previous: i64,
    since: OffsetDateTime,
    crashes: u32,
}

/// Settings the core decides with.
#[derive(Debug, Clone)]
pub struct Limits {
    pub ports: RangeInclusive<u16>,
    pub boot_timeout: Duration,
    pub stop_timeout: Duration,
    /// A web dyno that accepts connections must stay up this long before its health checks.
    pub boot_settle: Duration,
    /// Roll back a release whose web dynos crash [`CRASHES_TO_ROLL_BACK`] times within
    /// [`ROLLBACK_WINDOW`] of going live.
    pub auto_rollback: bool,
    /// Apps answer at `<app>.<domain>` on the router's port (for the URL a push prints).
    pub domain: String,
    pub router_port: u16,
}

/// What the executor observed of a recorded dyno's processes when the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Its shim runs (identified by pid and start time); `ids` may come from the shim's own
    /// announcement under `run/dynos/` when the row had no pids yet.
    Alive(ProcessIds),
    /// No shim runs for it. `dyno` is the dyno process, if it was known, to be made sure of.
    Gone { dyno: Option<(i32, u64)> },
}

/// Everything that can happen to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The daemon started: what each recorded dyno's processes are doing, and announced shims
    /// that no row claims (killed).
    /// `pending` releases lost their rollout with the previous daemon; `queued` ones were made
    /// while no daemon ran and go live now.
    Start {
        observed: BTreeMap<DynoId, Observed>,
        orphans: Vec<ProcessIds>,
        pending: Vec<(AppName, i64)>,
        queued: Vec<(AppName, i64)>,
    },
    /// Put release `version` live; `restart: false` relabels the running dynos instead.
    Deploy { app: AppName, version: i64, restart: bool, spec: AppSpec, reply: ReplyId },
    /// The app's desired state changed (None: the app was destroyed).
    Converge { app: AppName, spec: Option<AppSpec>, reply: Option<ReplyId> },
    /// The formation of `types` changed.
    Scale { app: AppName, types: Vec<String>, spec: AppSpec, reply: ReplyId },
    /// `ps:restart`: replace the targeted dynos.
    Restart { app: AppName, target: Option<String>, reply: ReplyId },
    /// `ps:stop`: stop the targeted dynos (of one app or all) and keep them down.
    Stop { app: Option<AppName>, target: Option<String>, reply: ReplyId },
    /// `slipway run` is about to start a one-off dyno of `app`'s current release.
    RunStart { app: AppName, command: String, reply: ReplyId },
    /// The one-off dyno runs: `ids.pid` is its process group, `ids.shim_pid` the `run` command
    /// that waits for it (watched like a shim).
    RunAttached { dyno: DynoId, ids: ProcessIds, reply: ReplyId },
    /// A one-off dyno recorded this long ago without being attached is forgotten.
    RunAttachDue { dyno: DynoId },
    /// A [`Effect::Spawn`] worked: the shim runs and reported the dyno's process.
    Spawned { dyno: DynoId, ids: ProcessIds },
    /// A [`Effect::Spawn`] failed.
    SpawnFailed { dyno: DynoId, message: String },
    /// The shim of `dyno` (`shim_pid`) exited: the dyno is gone.
    Exited { dyno: DynoId, shim_pid: i32 },
    /// The web dyno accepts connections on its port.
    Booted { dyno: DynoId, pid: i32 },
    /// The web dyno did not accept connections within the boot timeout.
    BootTimedOut { dyno: DynoId, pid: i32 },
    /// The web dyno stayed up for the settle period after it accepted connections.
    Settled { dyno: DynoId, pid: i32 },
    /// The web dyno passed its release's health checks (or it declares none).
    Healthy { dyno: DynoId, pid: i32 },
    /// The web dyno failed a health check.
    Unhealthy { dyno: DynoId, pid: i32, reason: String },
    /// A web dyno being stopped has no requests left (or its drain time ran out).
    Drained { dyno: DynoId, pid: i32 },
    /// The stop grace period of a dyno that got SIGTERM ended.
    KillDue { dyno: DynoId, pid: i32 },
    /// A crash restart may be due.
    Tick { app: AppName },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
}

/// A durable change, applied to SQLite in order and retried until it succeeds. Each is
/// idempotent (a full row, a delete, a status), so applying one twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Dyno(DynoRow),
    DeleteDyno(DynoId),
    /// One transaction: the app's current release, and that release succeeded.
    Promote {
        app: AppName,
        version: i64,
    },
    /// The release failed (and the releases queued before it), because `why`.
    ReleaseFailed {
        app: AppName,
        version: i64,
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Persist(Write),
    /// Start the dyno's shim (after every earlier write is durable); answered by `Spawned` or
    /// `SpawnFailed`.
    Spawn {
        dyno: DynoId,
    },
    /// Report `Exited` when the shim exits.
    Watch {
        dyno: DynoId,
        shim: (i32, u64),
    },
    /// Probe the port; answered by `Booted` or `BootTimedOut`.
    BootCheck {
        dyno: DynoId,
        pid: i32,
        port: u16,
    },
    /// Run the release's `app.json` health checks against the dyno's port with the app's
    /// host; answered by `Healthy` or `Unhealthy`.
    HealthCheck {
        dyno: DynoId,
        pid: i32,
        port: u16,
        app: AppName,
        release: i64,
    },
    /// Make a rollback release of `app` to `to` (as `slipway rollback` does), because `why`.
    Rollback {
        app: AppName,
        to: i64,
        why: String,
    },
    /// Wait for the router's requests in flight on `port` to finish; answered by `Drained`.
    Drain {
        dyno: DynoId,
        pid: i32,
        port: u16,
    },
    /// Signal the process group `pid`, only if its start time still matches.
    Signal {
        pid: i32,
        start: u64,
        sig: Sig,
    },
    /// Remove the shim's announcement under `run/dynos/`.
    ForgetShim {
        dyno: DynoId,
    },
    /// Feed `input` back after `after`.
    Schedule {
        after: Duration,
        input: Input,
    },
    /// Answer a request (after every earlier write is durable).
    Reply {
        reply: ReplyId,
        response: Response,
    },
    /// An event line in the app's log (`slipway[dyno]: message`).
    Log {
        app: AppName,
        dyno: String,
        message: String,
    },
}

/// Answers the core needs from the machine (kept out so the core stays pure).
pub trait Probe {
    /// Can a dyno bind this port right now (nothing else listens on it)?
    fn port_free(&self, port: u16) -> bool;
}

/// The supervisor's whole state.
pub struct World {
    apps: BTreeMap<AppName, AppModel>,
    dynos: BTreeMap<DynoId, DynoRow>,
    next_id: DynoId,
    next_port: u16,
    limits: Limits,
    /// `ps:stop` requests answered once none of their dynos runs.
    down_waiters: Vec<(Vec<DynoId>, ReplyId)>,
}

/// A pending (or running) spawn: `starting` with no process yet.
fn spawning(d: &DynoRow) -> bool {
    d.state == DynoState::Starting && d.shim_pid.is_none()
}

/// A one-off dyno (`slipway run`): started and waited for by the `run` command, listed and
/// stopped like the others, never restarted, converged, replaced or stopped by a deploy.
pub fn one_off(d: &DynoRow) -> bool {
    d.process_type == ONE_OFF_TYPE
}

/// The process type of one-off dynos (`run.1`); a Procfile may not declare it.
pub const ONE_OFF_TYPE: &str = "run";

fn running(d: &DynoRow) -> bool {
    matches!(d.state, DynoState::Starting | DynoState::Up | DynoState::Stopping)
}

impl World {
    /// The model as SQLite recorded it. `next_id` must exceed every id ever used for a dyno
    /// (rows and shim announcements).
    pub fn new(limits: Limits) -> World {
        let next_port = *limits.ports.start();
        World {
            apps: BTreeMap::new(),
            dynos: BTreeMap::new(),
            next_id: 1,
            next_port,
            limits,
            down_waiters: Vec::new(),
        }
    }

    /// Adds a recorded app (at load).
    pub fn load_app(&mut self, app: AppName, current: Option<i64>, spec: AppSpec) {
        self.apps.insert(app, AppModel { current, spec, ..AppModel::default() });
    }

    /// Adds a recorded dyno (at load).
    pub fn load_dyno(&mut self, dyno: DynoRow) {
        self.next_id = self.next_id.max(dyno.id + 1);
        self.dynos.insert(dyno.id, dyno);
    }

    /// Makes sure new dyno ids stay above `id` (an announcement of an unrecorded shim).
    pub fn reserve_id(&mut self, id: DynoId) {
        self.next_id = self.next_id.max(id + 1);
    }

    pub fn dyno(&self, id: DynoId) -> Option<&DynoRow> {
        self.dynos.get(&id)
    }

    pub fn dynos(&self) -> impl Iterator<Item = &DynoRow> {
        self.dynos.values()
    }

    pub fn app_names(&self) -> impl Iterator<Item = &AppName> {
        self.apps.keys()
    }

    pub fn current_release(&self, app: &AppName) -> Option<i64> {
        self.apps.get(app).and_then(|a| a.current)
    }

    pub fn has_rollout(&self, app: &AppName) -> bool {
        self.apps.get(app).is_some_and(|a| a.rollout.is_some())
    }

    /// What the router serves: per app, its custom hosts and the `up` web dynos of its current
    /// release (H10 when they all crashed, H14 when there are none).
    pub fn routes(&self) -> Vec<(AppName, Vec<String>, AppStatus)> {
        self.apps
            .iter()
            .map(|(name, app)| {
                let web: Vec<&DynoRow> = self
                    .app_dynos(name)
                    .filter(|d| d.process_type == "web" && Some(d.release) == app.current)
                    .collect();
                let up: Vec<crate::router::Backend> = web
                    .iter()
                    .filter(|d| d.state == DynoState::Up)
                    .filter_map(|d| Some(crate::router::Backend::new(d.name(), d.port?)))
                    .collect();
                let status = if !up.is_empty() {
                    AppStatus::Up(up)
                } else if web.iter().any(|d| d.state == DynoState::Crashed) {
                    AppStatus::Crashed
                } else {
                    AppStatus::NoWebDynos
                };
                (name.clone(), app.spec.hosts.clone(), status)
            })
            .collect()
    }

    fn url(&self, app: &AppName) -> String {
        crate::settings::app_url(&self.limits.domain, self.limits.router_port, app.as_str())
    }

    fn app_dynos<'a>(&'a self, app: &'a AppName) -> impl Iterator<Item = &'a DynoRow> + 'a {
        self.dynos.values().filter(move |d| d.app == app.as_str())
    }

    /// Handles one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: OffsetDateTime, probe: &dyn Probe) -> Vec<Effect> {
        let mut cx = Cx { out: Vec::new(), now, probe };
        match input {
            Input::Start { observed, orphans, pending, queued } => {
                for (app, version) in pending {
                    // Its rollout died with the previous daemon; the old release kept serving.
                    let why = "the daemon restarted during its rollout".to_string();
                    cx.log(&app, "api", format!("Release v{version} failed: {why}"));
                    cx.persist(Write::ReleaseFailed { app, version, why });
                }
                self.start(&mut cx, observed, orphans);
                for (app, version) in queued {
                    if self.apps.contains_key(&app) {
                        self.deploy(&mut cx, &app, version, None);
                    }
                }
            }
            Input::Deploy { app, version, restart, spec, reply } => {
                self.set_spec(&app, spec);
                if restart {
                    self.deploy(&mut cx, &app, version, Some(reply));
                } else {
                    self.relabel(&mut cx, &app, version, reply);
                }
            }
            Input::Converge { app, spec, reply } => {
                match spec {
                    Some(spec) => {
                        self.set_spec(&app, spec);
                        self.converge(&mut cx, &app);
                    }
                    None => self.forget_app(&mut cx, &app),
                }
                if let Some(reply) = reply {
                    cx.reply(reply, Response::Done);
                }
            }
            Input::Scale { app, types, spec, reply } => {
                self.set_spec(&app, spec);
                self.scaled(&mut cx, &app, &types);
                cx.reply(reply, Response::Done);
            }
            Input::Restart { app, target, reply } => self.restart(&mut cx, &app, target.as_deref(), reply),
            Input::Stop { app, target, reply } => {
                self.stop_request(&mut cx, app.as_ref(), target.as_deref(), reply)
            }
            Input::RunStart { app, command, reply } => self.run_start(&mut cx, &app, command, reply),
            Input::RunAttached { dyno, ids, reply } => self.run_attached(&mut cx, dyno, ids, reply),
            Input::RunAttachDue { dyno } => {
                if self.dynos.get(&dyno).is_some_and(|d| one_off(d) && d.pid.is_none()) {
                    self.forget(&mut cx, dyno);
                }
            }
            Input::Spawned { dyno, ids } => self.spawned(&mut cx, dyno, ids),
            Input::SpawnFailed { dyno, message } => self.spawn_failed(&mut cx, dyno, &message),
            Input::Exited { dyno, shim_pid } => {
                if self.dynos.get(&dyno).is_some_and(|d| d.shim_pid == Some(shim_pid)) {
                    cx.out.push(Effect::ForgetShim { dyno });
                    self.exited(&mut cx, dyno);
                }
            }
            Input::Booted { dyno, pid } => self.booted(&mut cx, dyno, pid),
            Input::Settled { dyno, pid } => self.settled(&mut cx, dyno, pid),
            Input::Healthy { dyno, pid } => self.ready(&mut cx, dyno, pid),
            Input::Unhealthy { dyno, pid, reason } => self.unhealthy(&mut cx, dyno, pid, reason),
            Input::BootTimedOut { dyno, pid } => self.boot_timed_out(&mut cx, dyno, pid),
            Input::Drained { dyno, pid } => self.term(&mut cx, dyno, pid),
            Input::KillDue { dyno, pid } => self.kill_due(&mut cx, dyno, pid),
            Input::Tick { app } => self.converge(&mut cx, &app),
        }
        self.answer_down_waiters(&mut cx);
        cx.out
    }

    /// Takes the app's newest desired state. A release's process types never change, so those
    /// already known are kept (a rollout's release stays known while a later request reads
    /// only the current one); those of releases neither current nor rolling out are dropped.
    fn set_spec(&mut self, app: &AppName, spec: AppSpec) {
        let model = self.apps.entry(app.clone()).or_default();
        let given: BTreeSet<i64> = spec.processes.keys().copied().collect();
        let mut processes = std::mem::take(&mut model.spec.processes);
        processes.extend(spec.processes);
        let rolling = model.rollout.as_ref().map(|r| r.release);
        processes.retain(|v, _| Some(*v) == model.current || Some(*v) == rolling || given.contains(v));
        model.spec = AppSpec { formation: spec.formation, hosts: spec.hosts, processes };
    }

    // ----- start-up ---------------------------------------------------------------------------

    fn start(&mut self, cx: &mut Cx<'_>, observed: BTreeMap<DynoId, Observed>, orphans: Vec<ProcessIds>) {
        for ids in orphans {
            // A shim no row knows (the daemon died between spawning it and recording it, in an
            // older version): its dyno and the shim go.
            cx.signal(ids.pid, ids.pid_start, Sig::Kill);
            cx.signal(ids.shim_pid, ids.shim_start, Sig::Kill);
        }
        let ids: Vec<DynoId> = self.dynos.keys().copied().collect();
        for id in ids {
            let Some(d) = self.dynos.get(&id).cloned() else { continue };
            if matches!(d.state, DynoState::Down | DynoState::Crashed) {
                continue; // nothing runs; the plan decides
            }
            match observed.get(&id).copied().unwrap_or(Observed::Gone { dyno: None }) {
                Observed::Alive(ids) => {
                    let d = self.dyno_mut(id);
                    if d.shim_pid.is_none() {
                        // Spawned, announced, but never recorded: recorded now.
                        set_ids(d, ids, cx.now);
                        let row = d.clone();
                        cx.persist(Write::Dyno(row));
                    }
                    cx.out.push(Effect::Watch { dyno: id, shim: (ids.shim_pid, ids.shim_start) });
                    match (d_state(self, id), self.dynos[&id].port) {
                        (DynoState::Starting, Some(port)) => {
                            cx.out.push(Effect::BootCheck { dyno: id, pid: ids.pid, port })
                        }
                        (DynoState::Starting, None) => self.mark_up(cx, id),
                        (DynoState::Stopping, _) => {
                            // Its drain was lost with the old daemon: SIGTERM (again) now.
                            self.dyno_mut(id).state = DynoState::Up;
                            self.stop_dyno(cx, id, false);
                        }
                        _ => {}
                    }
                }
                Observed::Gone { dyno } => {
                    // The shim is gone; make sure nothing of the dyno survives it, then treat it
                    // as an exit seen late.
                    if let Some((pid, start)) = dyno.or_else(|| Some((d.pid?, d.pid_start?))) {
                        cx.signal(pid, start, Sig::Kill);
                    }
                    cx.out.push(Effect::ForgetShim { dyno: id });
                    self.exited(cx, id);
                }
            }
        }
        let apps: Vec<AppName> = self.apps.keys().cloned().collect();
        for app in apps {
            self.converge(cx, &app);
        }
    }

    // ----- requests ---------------------------------------------------------------------------

    /// Starts the release's formation next to the running one; the old dynos are stopped only
    /// once every new web dyno is ready (zero downtime), else the new ones go.
    fn deploy(&mut self, cx: &mut Cx<'_>, app: &AppName, version: i64, reply: Option<ReplyId>) {
        let refuse = |cx: &mut Cx<'_>, message: String| match reply {
            Some(reply) => cx.reply(reply, Response::Error { message }),
            None => {
                // A queued release nobody waits for: it fails for good, and says why.
                cx.log(app, "api", format!("Release v{version} failed: {message}"));
                cx.persist(Write::ReleaseFailed { app: app.clone(), version, why: message });
            }
        };
        if self.has_rollout(app) {
            refuse(cx, format!("another rollout of {app} is in progress; try again when it finishes"));
            return;
        }
        let Some(processes) = self.apps[app].spec.processes.get(&version).cloned() else {
            refuse(cx, format!("release v{version} of {app} has no build"));
            return;
        };
        let formation = self.apps[app].spec.formation.clone();
        let mut starts = Vec::new();
        for (process_type, command) in processes {
            let count = formation.get(&process_type).copied().unwrap_or(0);
            starts.extend((1..=i64::from(count)).map(|n| (process_type.clone(), n, command.clone())));
        }
        self.rollout(cx, app, RolloutKind::Deploy, version, starts, reply);
    }

    /// `config:set --no-restart`: `version` becomes current without touching a process; the
    /// running dynos of the current release carry its label from now on.
    fn relabel(&mut self, cx: &mut Cx<'_>, app: &AppName, version: i64, reply: ReplyId) {
        if self.has_rollout(app) {
            let message = format!("a rollout of {app} is in progress; try again when it finishes");
            cx.reply(reply, Response::Error { message });
            return;
        }
        let model = self.apps.get_mut(app).expect("set_spec made it");
        let previous = model.current.replace(version);
        cx.persist(Write::Promote { app: app.clone(), version });
        let ids: Vec<DynoId> = self
            .app_dynos(app)
            .filter(|d| !one_off(d) && Some(d.release) == previous)
            .map(|d| d.id)
            .collect();
        for id in ids {
            let d = self.dyno_mut(id);
            d.release = version;
            let row = d.clone();
            cx.persist(Write::Dyno(row));
        }
        cx.log(app, "api", format!("Release v{version} is current; dynos pick it up when they restart"));
        let web = self.web_of(app, version);
        cx.reply(reply, Response::Deployed { version, web, url: self.url(app) });
        self.converge(cx, app);
    }

    /// `ps:restart`: stopped and crashed targets start again in place; running ones are
    /// replaced by new dynos (web ones must be ready before the old ones stop).
    fn restart(&mut self, cx: &mut Cx<'_>, app: &AppName, target: Option<&str>, reply: ReplyId) {
        if self.has_rollout(app) {
            let message = format!("a rollout of {app} is in progress; try again when it finishes");
            cx.reply(reply, Response::Error { message });
            return;
        }
        let Some(release) = self.current_release(app) else {
            cx.reply(reply, Response::Error { message: format!("{app} has no release yet; push it first") });
            return;
        };
        let targets: Vec<DynoRow> = self
            .app_dynos(app)
            .filter(|d| {
                !one_off(d)
                    && d.release == release
                    && d.state != DynoState::Stopping
                    && matches_target(d, target)
            })
            .cloned()
            .collect();
        if targets.is_empty() {
            let message = match target {
                Some(t) => format!("no dyno of {app} matches '{t}'"),
                None => format!("{app} has no dynos to restart"),
            };
            cx.reply(reply, Response::Error { message });
            return;
        }
        let mut retire = Vec::new();
        let mut starts = Vec::new();
        for d in targets {
            cx.log(app, &d.name(), "Restarting".into());
            match d.state {
                DynoState::Up | DynoState::Starting => {
                    retire.push(d.id);
                    starts.push((d.process_type.clone(), d.num, d.command.clone()));
                }
                DynoState::Down | DynoState::Crashed => {
                    let row = self.dyno_mut(d.id);
                    row.stopped = false;
                    row.restarts = 0;
                    self.respawn(cx, d.id);
                }
                DynoState::Stopping => {}
            }
        }
        self.rollout(cx, app, RolloutKind::Replace { retire }, release, starts, Some(reply));
    }

    /// After `ps:scale`: stopped dynos of the scaled types are forgotten (scaling brings them
    /// back) and their crash backoff starts over.
    fn scaled(&mut self, cx: &mut Cx<'_>, app: &AppName, types: &[String]) {
        let ids: Vec<DynoId> =
            self.app_dynos(app).filter(|d| types.contains(&d.process_type)).map(|d| d.id).collect();
        for id in ids {
            if self.dynos[&id].state == DynoState::Down {
                self.forget(cx, id);
            } else if self.dynos[&id].restarts != 0 {
                let d = self.dyno_mut(id);
                d.restarts = 0;
                let row = d.clone();
                cx.persist(Write::Dyno(row));
            }
        }
        self.converge(cx, app);
    }

    fn stop_request(&mut self, cx: &mut Cx<'_>, app: Option<&AppName>, target: Option<&str>, reply: ReplyId) {
        let targets: Vec<DynoId> = self
            .dynos
            .values()
            .filter(|d| app.is_none_or(|a| d.app == a.as_str()) && matches_target(d, target))
            .map(|d| d.id)
            .collect();
        if let (Some(t), true) = (target, targets.is_empty()) {
            cx.reply(reply, Response::Error { message: format!("no dyno matches '{t}'") });
            return;
        }
        for &id in &targets {
            let Some(d) = self.dynos.get(&id) else { continue };
            let name = d.name();
            let Ok(app) = d.app.parse::<AppName>() else { continue };
            // A rollout waiting for this dyno can never finish: it fails, and says why.
            if self.rollout_waits_on(&app, id) {
                self.finish_rollout(
                    cx,
                    &app,
                    Err(format!("{name} was stopped (ps:stop) before it was ready")),
                );
            }
            self.stop_dyno(cx, id, true);
        }
        self.down_waiters.push((targets, reply));
    }

    fn forget_app(&mut self, cx: &mut Cx<'_>, app: &AppName) {
        if let Some(model) = self.apps.remove(app) {
            if let Some(rollout) = model.rollout {
                if let Some(reply) = rollout.reply {
                    cx.reply(reply, Response::Error { message: format!("{app} was destroyed") });
                }
            }
        }
        let ids: Vec<DynoId> = self.app_dynos(app).map(|d| d.id).collect();
        for id in ids {
            let d = &self.dynos[&id];
            if let (Some(pid), Some(start)) = (d.pid, d.pid_start) {
                cx.signal(pid, start, Sig::Kill);
            }
            cx.out.push(Effect::ForgetShim { dyno: id });
            self.dynos.remove(&id);
            cx.persist(Write::DeleteDyno(id));
        }
    }

    // ----- one-off dynos -----------------------------------------------------------------------

    /// Records a one-off dyno of the current release: the lowest free `run.N`, a port (one-off
    /// dynos get `PORT` as on Heroku). The `run` command spawns it and attaches it.
    fn run_start(&mut self, cx: &mut Cx<'_>, app: &AppName, command: String, reply: ReplyId) {
        let Some(release) = self.current_release(app) else {
            let message = format!("{app} has no release yet; push it before running commands");
            cx.reply(reply, Response::Error { message });
            return;
        };
        let used: BTreeSet<i64> = self.app_dynos(app).filter(|d| one_off(d)).map(|d| d.num).collect();
        let num = (1..).find(|n| !used.contains(n)).unwrap_or(1);
        let port = match self.new_port(cx.probe) {
            Ok(port) => port,
            Err(message) => {
                cx.reply(reply, Response::Error { message });
                return;
            }
        };
        let id = self.record_dyno(cx, app, ONE_OFF_TYPE, num, release, &command, Some(port));
        let name = self.dynos[&id].name();
        cx.schedule(RUN_ATTACH_WITHIN, Input::RunAttachDue { dyno: id });
        cx.reply(reply, Response::OneOff { dyno: id, name, port });
    }

    fn run_attached(&mut self, cx: &mut Cx<'_>, id: DynoId, ids: ProcessIds, reply: ReplyId) {
        let Some(d) = self.dynos.get_mut(&id).filter(|d| one_off(d) && spawning(d)) else {
            cx.reply(reply, Response::Error { message: format!("no one-off dyno {id} is waiting to start") });
            return;
        };
        set_ids(d, ids, cx.now);
        d.state = DynoState::Up;
        let row = d.clone();
        cx.persist(Write::Dyno(row));
        cx.out.push(Effect::Watch { dyno: id, shim: (ids.shim_pid, ids.shim_start) });
        cx.reply(reply, Response::Done);
    }

    // ----- rollouts ---------------------------------------------------------------------------

    fn rollout(
        &mut self,
        cx: &mut Cx<'_>,
        app: &AppName,
        kind: RolloutKind,
        release: i64,
        starts: Vec<(String, i64, String)>,
        reply: Option<ReplyId>,
    ) {
        let mut rollout = Rollout { kind, release, started: Vec::new(), waiting: BTreeSet::new(), reply };
        let mut failure = None;
        for (process_type, num, command) in starts {
            match self.create_dyno(cx, app, &process_type, num, release, &command) {
                Ok(id) => {
                    rollout.started.push(id);
                    if process_type == "web" {
                        rollout.waiting.insert(id);
                    }
                }
                Err(message) => failure = Some(message),
            }
        }
        self.apps.get_mut(app).expect("rollouts are of known apps").rollout = Some(rollout);
        match failure {
            Some(message) => self.finish_rollout(cx, app, Err(message)),
            None => self.maybe_finish_rollout(cx, app),
        }
    }

    fn rollout_waits_on(&self, app: &AppName, id: DynoId) -> bool {
        self.apps.get(app).and_then(|a| a.rollout.as_ref()).is_some_and(|r| r.waiting.contains(&id))
    }

    fn maybe_finish_rollout(&mut self, cx: &mut Cx<'_>, app: &AppName) {
        let done = self.apps.get(app).and_then(|a| a.rollout.as_ref()).is_some_and(|r| r.waiting.is_empty());
        if done {
            self.finish_rollout(cx, app, Ok(()));
        }
    }

    fn finish_rollout(&mut self, cx: &mut Cx<'_>, app: &AppName, outcome: Result<(), String>) {
        let Some(rollout) = self.apps.get_mut(app).and_then(|a| a.rollout.take()) else { return };
        let version = rollout.release;
        let response = match (outcome, &rollout.kind) {
            (Ok(()), RolloutKind::Deploy) => {
                let model = self.apps.get_mut(app).expect("known");
                let previous = model.current.replace(version);
                model.watch = previous
                    .filter(|p| *p != version && self.limits.auto_rollback)
                    .map(|previous| Watch { version, previous, since: cx.now, crashes: 0 });
                cx.persist(Write::Promote { app: app.clone(), version });
                // One-off dynos of the old release run to their end, as on Heroku.
                let old: Vec<DynoId> = self
                    .app_dynos(app)
                    .filter(|d| !one_off(d) && d.release != version)
                    .map(|d| d.id)
                    .collect();
                for id in old {
                    self.stop_dyno(cx, id, false);
                }
                cx.log(app, "api", format!("Release v{version} is now running"));
                Response::Deployed { version, web: self.web_of(app, version), url: self.url(app) }
            }
            (Ok(()), RolloutKind::Replace { retire }) => {
                for id in retire.clone() {
                    self.stop_dyno(cx, id, false);
                }
                Response::Done
            }
            (Err(message), kind) => {
                for &id in &rollout.started {
                    self.stop_dyno(cx, id, false);
                }
                if *kind == RolloutKind::Deploy {
                    cx.log(app, "api", format!("Release v{version} failed: {message}"));
                    cx.persist(Write::ReleaseFailed { app: app.clone(), version, why: message.clone() });
                }
                Response::Error { message }
            }
        };
        if let Some(reply) = rollout.reply {
            cx.reply(reply, response);
        }
        self.converge(cx, app);
    }

    /// The web dynos of `version` with their ports (what a push prints).
    fn web_of(&self, app: &AppName, version: i64) -> Vec<WebDyno> {
        self.app_dynos(app)
            .filter(|d| {
                d.process_type == "web"
                    && d.release == version
                    && running(d)
                    && d.state != DynoState::Stopping
            })
            .filter_map(|d| Some(WebDyno { name: d.name(), port: d.port? }))
            .collect()
    }

    // ----- convergence ------------------------------------------------------------------------

    fn desired(&self, app: &AppName) -> Desired {
        let Some(model) = self.apps.get(app) else { return Desired::default() };
        let Some(version) = model.current else { return Desired::default() };
        let processes = model
            .spec
            .processes
            .get(&version)
            .map(|types| {
                types
                    .iter()
                    .map(|(t, c)| ProcessSpec {
                        process_type: t.clone(),
                        command: c.clone(),
                        count: model.spec.formation.get(t).copied().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Desired { release: Some(version), processes }
    }

    /// Plans and carries out what the app needs now; schedules the next look if a crash
    /// restart is waiting for its backoff. Waits while a rollout runs (the plan would stop the
    /// not-yet-current release's dynos); the rollout converges when it ends.
    fn converge(&mut self, cx: &mut Cx<'_>, app: &AppName) {
        if !self.apps.contains_key(app) || self.has_rollout(app) {
            return;
        }
        let desired = self.desired(app);
        let rows: Vec<DynoRow> = self.app_dynos(app).filter(|d| !one_off(d)).cloned().collect();
        let plan = plan::plan(&desired, &rows, cx.now);
        let release = desired.release.unwrap_or(0);
        let mut retry = false;
        for action in plan.actions {
            match action {
                Action::Start { process_type, num, command } => {
                    if let Err(message) = self.create_dyno(cx, app, &process_type, num, release, &command) {
                        cx.log(app, &format!("{process_type}.{num}"), format!("Failed to start: {message}"));
                        retry = true;
                    }
                }
                Action::Stop { dyno } => self.stop_dyno(cx, dyno, false),
                Action::Forget { dyno } => self.forget(cx, dyno),
                Action::Restart { dyno } => {
                    self.dyno_mut(dyno).restarts += 1;
                    self.respawn(cx, dyno);
                }
            }
        }
        if let Some(wait) = plan.wake_in {
            // A little slack so the plan, run at the wake-up, finds the backoff elapsed.
            cx.schedule(wait + Duration::from_millis(10), Input::Tick { app: app.clone() });
        }
        if retry {
            // Out of ports, say: try again once others may have freed some.
            cx.schedule(START_RETRY, Input::Tick { app: app.clone() });
        }
    }

    // ----- dynos ------------------------------------------------------------------------------

    fn dyno_mut(&mut self, id: DynoId) -> &mut DynoRow {
        self.dynos.get_mut(&id).expect("callers check the dyno exists")
    }

    fn allocate_port(&mut self, probe: &dyn Probe) -> Option<u16> {
        let used: BTreeSet<u16> = self.dynos.values().filter_map(|d| d.port).collect();
        let (start, end) = (u32::from(*self.limits.ports.start()), u32::from(*self.limits.ports.end()));
        let size = end - start + 1;
        let next = u32::from(self.next_port).clamp(start, end);
        for offset in 0..size {
            let port = (start + (next - start + offset) % size) as u16;
            if !used.contains(&port) && probe.port_free(port) {
                self.next_port = if u32::from(port) == end { start as u16 } else { port + 1 };
                return Some(port);
            }
        }
        None
    }

    /// A port for a new dyno, or the sentence saying there is none left.
    fn new_port(&mut self, probe: &dyn Probe) -> Result<u16, String> {
        let range = self.limits.ports.clone();
        self.allocate_port(probe)
            .ok_or_else(|| format!("no free port left in the dyno port range ({range:?})"))
    }

    /// Records a new dyno, `starting` with no process yet, in the model and (first of all its
    /// effects) in SQLite; returns its id.
    #[allow(clippy::too_many_arguments)]
    fn record_dyno(
        &mut self,
        cx: &mut Cx<'_>,
        app: &AppName,
        process_type: &str,
        num: i64,
        release: i64,
        command: &str,
        port: Option<u16>,
    ) -> DynoId {
        let id = self.next_id;
        self.next_id += 1;
        let row = DynoRow {
            id,
            app: app.to_string(),
            process_type: process_type.to_string(),
            num,
            release,
            command: command.to_string(),
            state: DynoState::Starting,
            port,
            pid: None,
            pid_start: None,
            shim_pid: None,
            shim_start: None,
            restarts: 0,
            stopped: false,
            started_at: None,
            updated_at: timefmt::stamp(cx.now),
        };
        self.dynos.insert(id, row.clone());
        cx.persist(Write::Dyno(row));
        id
    }

    /// Records a new dyno (persisted before anything runs) and spawns it.
    fn create_dyno(
        &mut self,
        cx: &mut Cx<'_>,
        app: &AppName,
        process_type: &str,
        num: i64,
        release: i64,
        command: &str,
    ) -> Result<DynoId, String> {
        let port = if process_type == "web" { Some(self.new_port(cx.probe)?) } else { None };
        let id = self.record_dyno(cx, app, process_type, num, release, command, port);
        cx.log(app, &format!("{process_type}.{num}"), format!("Starting process with command `{command}`"));
        cx.out.push(Effect::Spawn { dyno: id });
        Ok(id)
    }

    /// Starts the process of an existing row again (a crash restart, or `ps:restart` of a
    /// stopped dyno): same name; a web dyno keeps its port unless something else took it.
    fn respawn(&mut self, cx: &mut Cx<'_>, id: DynoId) {
        let port = self.dynos[&id].port;
        if let Some(port) = port {
            if !cx.probe.port_free(port) {
                self.dyno_mut(id).port = None;
                let new = self.allocate_port(cx.probe);
                self.dyno_mut(id).port = new.or(Some(port));
            }
        }
        let d = self.dyno_mut(id);
        without_process(d, DynoState::Starting, cx.now);
        let (row, app, name) = (d.clone(), d.app.clone(), d.name());
        cx.persist(Write::Dyno(row.clone()));
        if let Ok(app) = app.parse::<AppName>() {
            cx.log(&app, &name, format!("Starting process with command `{}`", row.command));
        }
        cx.out.push(Effect::Spawn { dyno: id });
    }

    fn spawned(&mut self, cx: &mut Cx<'_>, id: DynoId, ids: ProcessIds) {
        let Some(d) = self.dynos.get_mut(&id) else {
            // Nobody wants it any more (the executor checks first, so this is a safety net).
            cx.signal(ids.pid, ids.pid_start, Sig::Kill);
            return;
        };
        if !spawning(d) {
            cx.signal(ids.pid, ids.pid_start, Sig::Kill);
            return;
        }
        set_ids(d, ids, cx.now);
        let (row, port) = (d.clone(), d.port);
        cx.persist(Write::Dyno(row));
        cx.out.push(Effect::Watch { dyno: id, shim: (ids.shim_pid, ids.shim_start) });
        match port {
            Some(port) => cx.out.push(Effect::BootCheck { dyno: id, pid: ids.pid, port }),
            None => self.mark_up(cx, id),
        }
    }

    /// A dyno that could not even be started counts as crashed (and is retried with backoff).
    fn spawn_failed(&mut self, cx: &mut Cx<'_>, id: DynoId, message: &str) {
        let Some(d) = self.dynos.get_mut(&id) else { return };
        if !spawning(d) {
            return;
        }
        d.state = DynoState::Crashed;
        d.updated_at = timefmt::stamp(cx.now);
        let (row, name, app) = (d.clone(), d.name(), d.app.clone());
        cx.persist(Write::Dyno(row.clone()));
        let Ok(app) = app.parse::<AppName>() else { return };
        cx.log(&app, &name, format!("Failed to start: {message}"));
        if self.rollout_waits_on(&app, id) || self.rollout_started(&app, id) {
            self.finish_rollout(cx, &app, Err(format!("{name} failed to start: {message}")));
        } else {
            let wait = plan::restart_delay(row.restarts);
            cx.schedule(wait + Duration::from_millis(10), Input::Tick { app });
        }
    }

    fn rollout_started(&self, app: &AppName, id: DynoId) -> bool {
        self.apps.get(app).and_then(|a| a.rollout.as_ref()).is_some_and(|r| r.started.contains(&id))
    }

    fn mark_up(&mut self, cx: &mut Cx<'_>, id: DynoId) {
        let d = self.dyno_mut(id);
        d.state = DynoState::Up;
        d.updated_at = timefmt::stamp(cx.now);
        let (row, name, app) = (d.clone(), d.name(), d.app.clone());
        cx.persist(Write::Dyno(row));
        if let Ok(app) = app.parse::<AppName>() {
            cx.log(&app, &name, "State changed from starting to up".into());
        }
    }

    /// The web dyno accepts connections: it must now stay up for the settle period.
    fn booted(&mut self, cx: &mut Cx<'_>, id: DynoId, pid: i32) {
        if !self.starting_as(id, pid) {
            return;
        }
        cx.schedule(self.limits.boot_settle, Input::Settled { dyno: id, pid });
    }

    /// Still up after the settle period: its health checks run next.
    fn settled(&mut self, cx: &mut Cx<'_>, id: DynoId, pid: i32) {
        if !self.starting_as(id, pid) {
            return;
        }
        let d = &self.dynos[&id];
        let (Some(port), Ok(app)) = (d.port, d.app.parse::<AppName>()) else { return };
        cx.out.push(Effect::HealthCheck { dyno: id, pid, port, app, release: d.release });
    }

    /// Accepted connections, stayed up, passed its checks: the dyno is up (routable), and a
    /// rollout waiting for it may finish.
    fn ready(&mut self, cx: &mut Cx<'_>, id: DynoId, pid: i32) {
        if !self.starting_as(id, pid) {
            return;
        }
        let Ok(app) = self.dynos[&id].app.parse::<AppName>() else { return };
        self.mark_up(cx, id);
        if let Some(rollout) = self.apps.get_mut(&app).and_then(|a| a.rollout.as_mut()) {
            rollout.waiting.remove(&id);
        }
        self.maybe_finish_rollout(cx, &app);
    }

    /// A failed health check fails the rollout waiting for the dyno; outside a rollout (a
    /// crash restart) the dyno is killed and goes through the restart policy.
    fn unhealthy(&mut self, cx: &mut Cx<'_>, id: DynoId, pid: i32, reason: String) {
        if !self.starting_as(id, pid) {
            return;
        }
        let d = &self.dynos[&id];
        let (name, start) = (d.name(), d.pid_start);
        let Ok(app) = d.app.parse::<AppName>() else { return };
        cx.log(&app, &name, format!("Health check failed: {reason}"));
        if self.rollout_waits_on(&app, id) {
            self.finish_rollout(cx, &app, Err(format!("{name} failed its health check: {reason}")));
        } else if let Some(start) = start {
            cx.signal(pid, start, Sig::Kill);
        }
    }

    /// The dyno exists, is starting, and runs `pid` (inputs about an older process are stale).
    fn starting_as(&self, id: DynoId, pid: i32) -> bool {
        self.dynos.get(&id).is_some_and(|d| d.pid == Some(pid) && d.state == DynoState::Starting)
    }

    fn boot_timed_out(&mut self, cx: &mut Cx<'_>, id: DynoId, pid: i32) {
        let Some(d) = self.dynos.get(&id) else { return };
        if d.pid != Some(pid) || d.state != DynoState::Starting {
            return;
        }
        let Ok(app) = d.app.parse::<AppName>() else { return };
        let secs = self.limits.boot_timeout.as_secs();
        let (name, port, start) = (d.name(), d.port.unwrap_or(0), d.pid_start);
        cx.log(
            &app,
            &name,
            format!("Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {secs} seconds of launch"),
        );
        if self.rollout_waits_on(&app, id) {
            let message = format!("{name} did not accept connections on port {port} within {secs} s");
            self.finish_rollout(cx, &app, Err(message));
        } else if let Some(start) = start {
            // Killed as a crash: its exit then goes through the restart policy.
            cx.signal(pid, start, Sig::Kill);
        }
    }

    /// Out of the routing table at once; a web dyno's requests in flight finish (at most the
    /// grace period) before SIGTERM, SIGKILL after the grace period. With `keep_down` (ps:stop)
    /// the row stays, `down`, until a restart or scale.
    fn stop_dyno(&mut self, cx: &mut Cx<'_>, id: DynoId, keep_down: bool) {
        let Some(d) = self.dynos.get_mut(&id) else { return };
        if keep_down {
            d.stopped = true;
        }
        if !running(d) {
            // Nothing runs (crashed, down, or never spawned): the row stays down or goes.
            if keep_down {
                d.state = DynoState::Down;
                d.updated_at = timefmt::stamp(cx.now);
                let row = d.clone();
                cx.persist(Write::Dyno(row));
            } else {
                self.forget(cx, id);
            }
            return;
        }
        if d.state == DynoState::Stopping {
            let row = d.clone();
            cx.persist(Write::Dyno(row));
            return;
        }
        let was = d.state;
        d.state = DynoState::Stopping;
        d.updated_at = timefmt::stamp(cx.now);
        let row = d.clone();
        cx.persist(Write::Dyno(row.clone()));
        let Some(pid) = row.pid else {
            // Its spawn is still queued: the executor will not start it, so it is gone now.
            self.exited(cx, id);
            return;
        };
        match row.port {
            Some(port) if row.process_type == "web" && was == DynoState::Up => {
                cx.out.push(Effect::Drain { dyno: id, pid, port })
            }
            _ => self.term(cx, id, pid),
        }
    }

    /// SIGTERM to a stopping dyno's process group; SIGKILL after the grace period.
    fn term(&mut self, cx: &mut Cx<'_>, id: DynoId, pid: i32) {
        let Some(d) = self.dynos.get(&id) else { return };
        if d.pid != Some(pid) || d.state != DynoState::Stopping {
            return;
        }
        let (name, start) = (d.name(), d.pid_start);
        if let Ok(app) = d.app.parse::<AppName>() {
            cx.log(&app, &name, "Stopping all processes with SIGTERM".into());
        }
        if let Some(start) = start {
            cx.signal(pid, start, Sig::Term);
            cx.schedule(self.limits.stop_timeout, Input::KillDue { dyno: id, pid });
        }
    }

    fn kill_due(&mut self, cx: &mut Cx<'_>, id: DynoId, pid: i32) {
        let Some(d) = self.dynos.get(&id) else { return };
        if d.pid != Some(pid) || d.state != DynoState::Stopping {
            return;
        }
        let Some(start) = d.pid_start else { return };
        let name = d.name();
        if let Ok(app) = d.app.parse::<AppName>() {
            let secs = self.limits.stop_timeout.as_secs();
            cx.log(
                &app,
                &name,
                format!("Error R12 (Exit timeout) -> At least one process failed to exit within {secs} seconds of SIGTERM"),
            );
            cx.log(&app, &name, "Stopping remaining processes with SIGKILL".into());
        }
        cx.signal(pid, start, Sig::Kill);
    }

    /// The dyno's process is gone: expected after a stop, a crash otherwise.
    fn exited(&mut self, cx: &mut Cx<'_>, id: DynoId) {
        let Some(d) = self.dynos.get_mut(&id) else { return };
        if one_off(d) {
            // Its `run` command logged the exit status; one-off dynos are never restarted.
            self.forget(cx, id);
            return;
        }
        let (name, was) = (d.name(), d.state);
        let Ok(app) = d.app.parse::<AppName>() else { return };
        match was {
            DynoState::Stopping | DynoState::Down => {
                if d.stopped {
                    without_process(d, DynoState::Down, cx.now);
                    let row = d.clone();
                    cx.persist(Write::Dyno(row));
                } else {
                    self.forget(cx, id);
                }
                if was == DynoState::Stopping {
                    cx.log(&app, &name, "State changed from up to down".into());
                }
            }
            DynoState::Starting | DynoState::Up | DynoState::Crashed => {
                // A dyno that had been up for a while starts its backoff from the beginning.
                if plan::was_healthy(d.started_at.as_deref(), cx.now) {
                    d.restarts = 0;
                }
                without_process(d, DynoState::Crashed, cx.now);
                let row = d.clone();
                let (is_web, release) = (row.process_type == "web", row.release);
                cx.persist(Write::Dyno(row));
                if was != DynoState::Crashed {
                    cx.log(&app, &name, format!("State changed from {} to crashed", was.as_str()));
                }
                if is_web && was != DynoState::Crashed {
                    self.count_crash(cx, &app, release);
                }
                if self.rollout_waits_on(&app, id) {
                    self.finish_rollout(cx, &app, Err(format!("{name} exited during boot")));
                } else {
                    self.converge(cx, &app);
                }
            }
        }
    }

    /// A web dyno of `release` crashed: if that release went live less than
    /// [`ROLLBACK_WINDOW`] ago and this is its [`CRASHES_TO_ROLL_BACK`]th crash, it is rolled
    /// back to the release it replaced (never to one rolled back before).
    fn count_crash(&mut self, cx: &mut Cx<'_>, app: &AppName, release: i64) {
        let Some(model) = self.apps.get_mut(app) else { return };
        let Some(watch) = model.watch.as_mut() else { return };
        if watch.version != release || model.current != Some(release) {
            return;
        }
        if cx.now - watch.since > ROLLBACK_WINDOW {
            model.watch = None;
            return;
        }
        watch.crashes += 1;
        if watch.crashes < CRASHES_TO_ROLL_BACK {
            return;
        }
        let (version, to) = (watch.version, watch.previous);
        model.watch = None;
        model.bad.insert(version);
        if model.bad.contains(&to) {
            return;
        }
        let minutes = ROLLBACK_WINDOW.as_secs() / 60;
        let why = format!("web dynos of v{version} crashed {CRASHES_TO_ROLL_BACK} times within {minutes} minutes of going live");
        cx.log(app, "api", format!("Rolling back to v{to}: {why}"));
        cx.out.push(Effect::Rollback { app: app.clone(), to, why });
    }

    fn forget(&mut self, cx: &mut Cx<'_>, id: DynoId) {
        if self.dynos.remove(&id).is_some() {
            cx.persist(Write::DeleteDyno(id));
        }
    }

    /// A `ps:stop` is answered once each of its dynos has been down (a later restart of one
    /// does not keep the request waiting).
    fn answer_down_waiters(&mut self, cx: &mut Cx<'_>) {
        let waiters = std::mem::take(&mut self.down_waiters);
        for (mut ids, reply) in waiters {
            ids.retain(|id| self.dynos.get(id).is_some_and(running));
            if ids.is_empty() {
                cx.reply(reply, Response::Done);
            } else {
                self.down_waiters.push((ids, reply));
            }
        }
    }

    /// Checks the model's own invariants (used by the tests after every step).
    pub fn check_invariants(&self) -> Result<(), String> {
        for d in self.dynos.values() {
            let app = d.app.parse::<AppName>().map_err(|e| e.to_string())?;
            if !self.apps.contains_key(&app) {
                return Err(format!("dyno {} belongs to no known app", d.id));
            }
            if d.state == DynoState::Up && d.pid.is_none() {
                return Err(format!("dyno {} is up without a process", d.id));
            }
            if matches!(d.state, DynoState::Crashed | DynoState::Down) && d.pid.is_some() {
                return Err(format!("dyno {} is {} but keeps a pid", d.id, d.state.as_str()));
            }
        }
        for (_, _, status) in self.routes() {
            if let AppStatus::Up(backends) = status {
                for b in backends {
                    let stopping =
                        self.dynos.values().any(|d| d.port == Some(b.port) && d.state == DynoState::Stopping);
                    if stopping {
                        return Err(format!("{} is routable while stopping", b.dyno));
                    }
                }
            }
        }
        let mut ports = BTreeSet::new();
        for p in self.dynos.values().filter_map(|d| d.port) {
            if !ports.insert(p) {
                return Err(format!("port {p} is given to two dynos"));
            }
        }
        Ok(())
    }
}

fn d_state(world: &World, id: DynoId) -> DynoState {
    world.dynos[&id].state
}

fn set_ids(d: &mut DynoRow, ids: ProcessIds, now: OffsetDateTime) {
    d.pid = Some(ids.pid);
    d.pid_start = Some(ids.pid_start);
    d.shim_pid = Some(ids.shim_pid);
    d.shim_start = Some(ids.shim_start);
    d.started_at = Some(timefmt::stamp(now));
    d.updated_at = timefmt::stamp(now);
}

/// The dyno's process is gone (or not started yet): no pids to signal by mistake later.
fn without_process(d: &mut DynoRow, state: DynoState, now: OffsetDateTime) {
    d.state = state;
    d.pid = None;
    d.pid_start = None;
    d.shim_pid = None;
    d.shim_start = None;
    d.updated_at = timefmt::stamp(now);
}

/// `web` matches every web dyno, `web.2` exactly one, no target everything.
pub fn matches_target(dyno: &DynoRow, target: Option<&str>) -> bool {
    match target {
        None => true,
        Some(t) if t.contains('.') => dyno.name() == t,
        Some(t) => dyno.process_type == t,
    }
}

/// The effects of one `handle` call, and what it needs to decide.
struct Cx<'a> {
    out: Vec<Effect>,
    now: OffsetDateTime,
    probe: &'a dyn Probe,
}

impl Cx<'_> {
    fn persist(&mut self, write: Write) {
        self.out.push(Effect::Persist(write));
    }
    fn reply(&mut self, reply: ReplyId, response: Response) {
        self.out.push(Effect::Reply { reply, response });
    }
    fn signal(&mut self, pid: i32, start: u64, sig: Sig) {
        self.out.push(Effect::Signal { pid, start, sig });
    }
    fn schedule(&mut self, after: Duration, input: Input) {
        self.out.push(Effect::Schedule { after, input });
    }
    fn log(&mut self, app: &AppName, dyno: &str, message: String) {
        self.out.push(Effect::Log { app: app.clone(), dyno: dyno.to_string(), message });
    }
}

#[cfg(test)]
mod tests;
