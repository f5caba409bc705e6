//! Releases: how a new `vN` is created and put live, whatever made it — a deploy, a config
//! change or a rollback (HEROKU.md, "Releases"):
//!
//! 1. under the app's deploy lock (so pushes, config changes and rollbacks queue up),
//! 2. one transaction inserts the release, `pending`, with its build and config snapshot,
//! 3. the Procfile's `release:` command, if any, runs once as `release.1` in the new release's
//!    environment; a non-zero exit or the timeout fails the release,
//! 4. the daemon rolls the dynos onto it (web dynos must boot before old ones stop),
//! 5. on success older releases' slugs and dirs beyond the retention window are removed.
//!
//! An app's config is the snapshot of its newest succeeded release, so a release that fails at
//! any step leaves the app exactly as it was.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rusqlite::params;

use crate::app::AppName;
use crate::daemon::client::{self, ClientError};
use crate::daemon::protocol::{Request, Response, WebDyno};
use crate::dyno::DynoEnv;
use crate::home::Home;
use crate::job::{self, JobError};
use crate::logs::{self, LogWriter, Source};
use crate::settings::Settings;
use crate::store::{self, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deploy,
    Config,
    Rollback,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Config => "config",
            Kind::Rollback => "rollback",
        }
    }
}

pub struct NewRelease<'a> {
    pub kind: Kind,
    pub build_id: Option<&'a str>,
    pub description: &'a str,
    pub created_by: &'a str,
    pub config: &'a BTreeMap<String, String>,
}

/// Holds `run/locks/<app>.lock` (flock) while a release is made. The kernel drops the lock when
/// the process dies, so a crashed build or command never leaves it held.
pub fn lock(home: &Home, app: &AppName, on_wait: impl FnOnce()) -> Result<Flock<File>, String> {
    let path = home.deploy_lock(app);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))
    };
    match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err(_) => {
            on_wait();
            Flock::lock(open()?, FlockArg::LockExclusive)
                .map_err(|(_, e)| format!("waiting for the deploy lock: {e}"))
        }
    }
}

/// Inserts the next release as `pending` in the caller's transaction; returns its version.
pub fn insert(conn: &rusqlite::Connection, app: &AppName, new: &NewRelease<'_>) -> store::Result<i64> {
    let version = store::releases::insert_release(
        conn,
        app,
        new.build_id,
        new.description,
        new.created_by,
        new.config,
    )?;
    conn.execute(
        "UPDATE releases SET kind = ?3 WHERE app = ?1 AND version = ?2",
        params![app.as_str(), version, new.kind.as_str()],
    )?;
    Ok(version)
}

/// Marks a release failed, records why (`releases:info` shows it) and says it in the app's log. A release that cannot be marked stays
/// `pending`, which the daemon marks failed when it next starts; the operator is told.
pub fn fail(home: &Home, store: &Store, app: &AppName, version: i64, why: &str) {
    let marked = store::releases::set_status(store.conn(), app, version, "failed")
        .and_then(|()| store::releases::set_failure(store.conn(), app, version, why));
    if let Err(err) = marked {
        eprintln!(
            "warning: recording that v{version} failed: {err}; it stays pending until the daemon restarts"
        );
    }
    logs::append_event(
        &home.app_log(app),
        Source::Slipway,
        "api",
        &format!("Release v{version} failed: {why}"),
    );
}

/// Runs the Procfile's `release:` command for `version`, if it has one. Output lines go to
/// `emit` (the push or the terminal) and to the app log as `app[release.1]`. In privileged
/// mode it runs as the app's uid (from `range`, see `crate::users`), like its dynos.
pub fn release_phase(
    home: &Home,
    store: &Store,
    app: &AppName,
    version: i64,
    timeout: Duration,
    range: crate::users::UidRange,
    mut emit: impl FnMut(&str),
) -> Result<bool, String> {
    let conn = store.conn();
    let release = store::releases::require_release(conn, app, version).map_err(|e| e.to_string())?;
    let Some(build_id) = release.build_id else { return Ok(false) };
    let build = store::releases::build(conn, &build_id).map_err(|e| e.to_string())?;
    let Some(command) = build.and_then(|b| b.process_types.processes.get("release").cloned()) else {
        return Ok(false);
    };
    let env = DynoEnv::for_release(home, conn, app, version).map_err(|e| e.to_string())?;
    crate::build::inputs::check_command(&env.dir, &command).map_err(|e| format!("release phase: {e}"))?;
    let log_path = home.app_log(app);
    let mut log = LogWriter::open(&log_path).map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let _ = log.event(Source::Slipway, "release.1", &format!("Starting process with command `{command}`"));
    let user = crate::users::for_app(conn, app, range).map_err(|e| e.to_string())?;
    let mut sh = crate::procfile::shell_command(&command);
    sh.env_clear().envs(env.vars("release.1", None)).current_dir(&env.dir);
    // In the build's cgroup first; then, as a dyno: as the app's uid, confined, in a private
    // working dir of its own, discarded afterwards. Making and removing that dir (chowned to
    // the app) is root's work in a worker whose saved uid is root.
    let mut job = job::Job::new(sh, None);
    let key = format!("release-{}", std::process::id());
    let dynos = home.app_dynos(app);
    let private = crate::users::root_if_privileged(|| {
        crate::sandbox::prepare_dyno(home.root(), &dynos, &key, &env.dir, None, user.as_ref(), job.command())
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let result = job::run(job, None, Some(timeout), |line| {
        emit(line);
        let _ = log.event(Source::App, "release.1", line);
    });
    let root = private.root.clone();
    match crate::users::root_if_privileged(|| private.remove()) {
        Ok(Ok(())) => {}
        Ok(Err(err)) | Err(err) => emit(&format!("warning: removing {}: {err}", root.display())),
    }
    let (outcome, record) = match &result {
        Ok(()) => ("Process exited with status 0".to_string(), "succeeded".to_string()),
        Err(JobError::Failed(code)) => {
            (format!("Process exited with status {code}"), format!("failed: exit {code}"))
        }
        Err(e) => (format!("Release command {e}"), format!("failed: {e}")),
    };
    let _ = log.event(Source::Slipway, "release.1", &outcome);
    let recorded = conn.execute(
        "UPDATE releases SET release_phase = ?3 WHERE app = ?1 AND version = ?2",
        params![app.as_str(), version, record],
    );
    if let Err(err) = recorded {
        // Only what releases:info shows is lost; the outcome itself decides below.
        emit(&format!("warning: recording the release phase's result: {err}"));
    }
    match result {
        Ok(()) => Ok(true),
        Err(e) => Err(format!("the release command `{command}` {e}")),
    }
}

/// Asks the daemon to put `version` live: with `restart`, new dynos replace the old ones (web
/// ones must be ready first); without, the running dynos are relabelled and keep their old
/// environment until they next restart. Waits for the result; every `PROGRESS_EVERY` it says
/// through `progress` how long it has been waiting.
pub fn go_live(
    home: &Home,
    settings: &Settings,
    app: &AppName,
    version: i64,
    restart: bool,
    mut progress: impl FnMut(Duration),
) -> Result<(Vec<WebDyno>, String), String> {
    // The daemon always answers (every rollout ends); this only bounds a daemon that hangs.
    let wait =
        settings.boot_timeout + settings.boot_settle + settings.stop_timeout + Duration::from_secs(600);
    let request = Request::Deploy { app: app.to_string(), version, restart };
    let home = home.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The receiver is gone only if the caller panicked; nothing is left to tell then.
        let _ = tx.send(client::call(&home, &request, wait));
    });
    let started = std::time::Instant::now();
    let answer = loop {
        match rx.recv_timeout(PROGRESS_EVERY) {
            Ok(answer) => break answer,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => progress(started.elapsed()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the request to the daemon ended without an answer".into())
            }
        }
    };
    match answer {
        Ok(Response::Deployed { web, url, .. }) => Ok((web, url)),
        Ok(other) => Err(format!("unexpected answer from the daemon: {other:?}")),
        Err(ClientError::Daemon(message)) => Err(message),
        Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err("the daemon stopped during the rollout (it marks the release failed when it starts)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// How often a deploy waiting for its dynos says so.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The web dynos a rollout of `version` waits for, as the push names them (`web.1, web.2`).
fn awaited_web(store: &Store, app: &AppName, version: i64) -> Option<String> {
    let conn = store.conn();
    let build_id = store::releases::require_release(conn, app, version).ok()?.build_id?;
    let build = store::releases::build(conn, &build_id).ok()??;
    build.process_types.processes.get("web")?;
    let count = store::formation::get(conn, app).ok()?.get("web").copied().unwrap_or(0);
    (count > 0).then(|| (1..=count).map(|n| format!("web.{n}")).collect::<Vec<_>>().join(", "))
}

/// The last `n` lines a dyno (`web.1`) wrote to the app log since `since`, its platform lines
/// included (`Process exited with status 3`): what a rejected push shows of the failure.
fn last_output(home: &Home, app: &AppName, dyno: &str, since: &str, n: usize) -> Vec<String> {
    let filter = logs::read::Filter { source: None, dyno: Some(dyno.to_string()) };
    let lines = logs::read::last_lines(&home.app_log(app), 200, &filter).unwrap_or_default();
    let mut recent: Vec<String> = lines
        .into_iter()
        .filter(|l| l.split(' ').next().is_some_and(|stamp| stamp >= since))
        .filter(|l| {
            !l.contains(" router[")
                && !l.contains("]: Stopping all processes")
                && !l.contains("]: State changed")
        })
        .collect();
    let skip = recent.len().saturating_sub(n);
    recent.drain(..skip);
    recent
}

/// The releases whose slugs and release dirs are kept besides the current one: the newest
/// `keep` of `versions` (newest first, as `store::releases::list` gives them).
pub fn retained(versions: &[i64], keep: usize) -> Vec<i64> {
    versions.iter().take(keep).copied().collect()
}

/// Keeps the slugs and release dirs of the newest `keep` releases and of the current one;
/// removes the others' (their rows stay, and rolling back to them says why it cannot).
pub fn prune(home: &Home, store: &Store, app: &AppName, keep: usize) -> Vec<String> {
    let conn = store.conn();
    let Ok(releases) = store::releases::list(conn, app) else { return Vec::new() };
    let current = store::apps::get(conn, app).ok().flatten().and_then(|a| a.current_release);
    let versions: Vec<i64> = releases.iter().map(|r| r.version).collect();
    let mut kept_versions = retained(&versions, keep);
    kept_versions.extend(current);
    let kept: Vec<&str> = releases
        .iter()
        .filter(|r| kept_versions.contains(&r.version))
        .filter_map(|r| r.build_id.as_deref())
        .collect();
    let Ok(all) = store::releases::build_ids(conn, app) else { return Vec::new() };
    let mut removed = Vec::new();
    for id in all.iter().filter(|id| !kept.contains(&id.as_str())) {
        let dir = home.release_dir(app, id);
        let slug = home.slug(app, id);
        if dir.exists() || slug.exists() {
            crate::home::remove_or_warn(&dir);
            crate::home::remove_or_warn(&slug);
            removed.push(id.clone());
        }
    }
    removed
}

/// Makes sure a kept build's release dir exists, unpacking it from its slug if needed (the slug
/// unpacks to exactly the dir it came from; its venv goes back to the app's shared environment,
/// `envs::adopt`). Errors when neither is left.
pub fn ensure_release_dir(home: &Home, app: &AppName, build_id: &str, version: i64) -> Result<(), String> {
    let dir = home.release_dir(app, build_id);
    if dir.is_dir() {
        return Ok(());
    }
    let slug = home.slug(app, build_id);
    if !slug.is_file() {
        return Err(format!(
            "v{version}'s slug was removed by the retention policy (SLIPWAY_KEEP_RELEASES); it cannot be brought back"
        ));
    }
    crate::build::slug::unpack(&slug, &dir).and_then(|()| crate::envs::adopt(home, app, &dir)).map_err(|e| {
        // The half-unpacked dir must not pass for a release: say so when it stays.
        if let Err(left) = crate::envs::remove(&dir) {
            eprintln!("warning: could not remove {}: {left}", dir.display());
        }
        format!("unpacking v{version}'s slug: {e}")
    })
}

/// What [`finish`] did.
pub struct Published {
    pub version: i64,
    pub web: Vec<WebDyno>,
    /// Where the router serves the app (from the daemon, which knows its own address).
    pub url: Option<String>,
    /// False when the daemon was not running: the release is `queued` and the daemon rolls
    /// the dynos onto it when it starts.
    pub daemon_running: bool,
    /// The rollout, as the push's timing line shows it: until the daemon made the release
    /// current (new dynos started, ready, settled, checked), and from then to its answer.
    pub boot: Duration,
    pub switch: Duration,
}

/// Inserts `new` and puts it live (see [`finish`]).
pub fn publish(
    home: &Home,
    settings: &Settings,
    store: &mut Store,
    app: &AppName,
    new: &NewRelease<'_>,
    restart: bool,
    emit: impl FnMut(&str),
) -> Result<Published, String> {
    let tx = store.transaction().map_err(|e| e.to_string())?;
    let version = insert(&tx, app, new).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    logs::append_event(
        &home.app_log(app),
        Source::Slipway,
        "api",
        &format!("Release v{version} created by {}: {}", new.created_by, new.description),
    );
    finish(home, settings, store, app, version, restart, emit)
}

/// Runs the release phase of the pending release `version` and asks the daemon to make it
/// current; without a daemon it is queued for the daemon's start. Any failure marks it failed
/// and leaves the app as it was.
pub fn finish(
    home: &Home,
    settings: &Settings,
    store: &mut Store,
    app: &AppName,
    version: i64,
    restart: bool,
    mut emit: impl FnMut(&str),
) -> Result<Published, String> {
    let release = store::releases::require_release(store.conn(), app, version).map_err(|e| e.to_string())?;
    if release.build_id.is_none() {
        // Nothing to run yet (config set before the first deploy): the release is just recorded.
        store::releases::set_status(store.conn(), app, version, "succeeded").map_err(|e| e.to_string())?;
        return Ok(Published {
            version,
            web: Vec::new(),
            url: None,
            daemon_running: true,
            boot: Duration::ZERO,
            switch: Duration::ZERO,
        });
    }
    if let Err(why) =
        release_phase(home, store, app, version, settings.release_timeout, settings.app_uids, &mut emit)
    {
        fail(home, store, app, version, &why);
        return Err(why);
    }
    let mut daemon_running = client::Client::connect(home, Duration::from_secs(10)).is_ok();
    if !daemon_running {
        // The daemon alone makes a release current. Without it the release is queued: the
        // daemon rolls the dynos onto it when it starts. One that started meanwhile (it read
        // the queue before this write) is asked now.
        store::releases::set_status(store.conn(), app, version, "queued").map_err(|e| e.to_string())?;
        daemon_running = client::Client::connect(home, Duration::from_secs(10)).is_ok();
    }
    let mut rollout = (Duration::ZERO, Duration::ZERO);
    let (web, url) = if daemon_running {
        let asked = (std::time::Instant::now(), time::OffsetDateTime::now_utc());
        let since = crate::timefmt::stamp(asked.1);
        let awaited = restart.then(|| awaited_web(store, app, version)).flatten();
        // A step of its own, as Heroku's `-----> ` lines (on stderr, like all of a push's output).
        let progress = |waited: Duration| {
            let what = awaited.as_deref().unwrap_or("the new dynos");
            crate::build::output::step(&format!(
                "Waiting for {what} to be ready... ({} s)",
                waited.as_secs()
            ));
        };
        match go_live(home, settings, app, version, restart, progress) {
            Ok((web, url)) => {
                let promoted = promoted_at(home, app, version, &since);
                rollout = split_rollout(asked.0.elapsed(), asked.1, promoted);
                (web, Some(url))
            }
            Err(why) => {
                // The failing dyno's last words, so the push shows why without `slipway logs`.
                if let Some(dyno) = why.split_whitespace().next().filter(|w| w.contains('.')) {
                    let lines = last_output(home, app, dyno, &since, 10);
                    if !lines.is_empty() {
                        emit(&format!("The last lines of {dyno}:"));
                        for line in lines {
                            emit(&format!("  {line}"));
                        }
                    }
                }
                // A rollout that failed in the daemon was logged and marked there already; only
                // a failure on the way to it (the daemon gone mid-request, say) is ours to log.
                let marked = store::releases::require_release(store.conn(), app, version)
                    .is_ok_and(|r| r.status == "failed");
                if !marked {
                    fail(home, store, app, version, &why);
                }
                return Err(why);
            }
        }
    } else {
        (Vec::new(), None)
    };
    prune(home, store, app, settings.keep_releases);
    if let Err(e) = crate::envs::collect(home, store, app, settings.keep_releases) {
        // What is left is removed by the next release's collection.
        emit(&format!("Removing unused dependency environments: {e}"));
    }
    Ok(Published { version, web, url, daemon_running, boot: rollout.0, switch: rollout.1 })
}

/// When the daemon made `version` current: the stamp of its `Release vN is now running` line in
/// the app's log, written at or after `since`.
fn promoted_at(home: &Home, app: &AppName, version: i64, since: &str) -> Option<time::OffsetDateTime> {
    let filter = logs::read::Filter { source: Some(Source::Slipway), dyno: Some("api".into()) };
    let lines = logs::read::last_lines(&home.app_log(app), 20, &filter).ok()?;
    let wanted = format!(": Release v{version} is now running");
    let line = lines.iter().rev().find(|l| l.ends_with(&wanted))?;
    let stamp = line.split(' ').next().filter(|stamp| *stamp >= since)?;
    crate::timefmt::parse(stamp)
}

/// Splits a rollout that took `took` from `asked` into boot (until the daemon made the release
/// current at `promoted`) and switch (from then to its answer). Without the moment, or with one
/// outside the rollout (clocks), it is all boot.
fn split_rollout(
    took: Duration,
    asked: time::OffsetDateTime,
    promoted: Option<time::OffsetDateTime>,
) -> (Duration, Duration) {
    let boot = promoted
        .and_then(|p| Duration::try_from(p - asked).ok())
        .filter(|boot| *boot <= took)
        .unwrap_or(took);
    (boot, took - boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_splits_into_boot_and_switch_at_the_promotion() {
        let ms = Duration::from_millis;
        let asked = time::OffsetDateTime::UNIX_EPOCH;
        let at = |millis: i64| Some(asked + time::Duration::milliseconds(millis));
        let cases = [
            (ms(100), at(80), (ms(80), ms(20))),
            (ms(100), at(100), (ms(100), ms(0))),
            (ms(100), None, (ms(100), ms(0))),
            // A moment before the request or after the answer: all boot.
            (ms(100), at(-5), (ms(100), ms(0))),
            (ms(100), at(150), (ms(100), ms(0))),
        ];
        for (took, promoted, want) in cases {
            assert_eq!(split_rollout(took, asked, promoted), want, "{promoted:?}");
        }
    }
}
