//! `apps`, `apps:create`, `apps:destroy`, `apps:info`.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{app_name, open_store, out, print_json, print_table};
use crate::app::AppName;
use crate::daemon::client::{self, ClientError};
use crate::daemon::{process, protocol::Request};
use crate::home::Home;
use crate::store::{self, Store};

pub fn list(home: &Home, json: bool) -> anyhow::Result<i32> {
    let store = open_store(home)?;
    let apps = store::apps::list(store.conn())?;
    if json {
        return print_json(&apps);
    }
    if apps.is_empty() {
        out("No apps yet. Push one: git push slipway main");
        return Ok(0);
    }
    let rows = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.current_release.map(|v| format!("v{v}")).unwrap_or("-".into()),
                a.created_at.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(&["APP", "RELEASE", "CREATED"], &rows);
    Ok(0)
}

/// Creates the app's row (with its uid, `users`) and bare repo together: the row is committed
/// only once the repo exists.
pub fn ensure_app(home: &Home, store: &mut Store, app: &AppName, must_be_new: bool) -> anyhow::Result<()> {
    if !must_be_new && store::apps::get(store.conn(), app)?.is_some() {
        return Ok(());
    }
    let range = crate::settings::Settings::load(home)?.app_uids;
    let tx = store.transaction()?;
    store::apps::create(&tx, app)?;
    // Its uid for per-app users (used when the daemon runs as root; see `users`).
    let system = crate::users::system_ids();
    store::app_uids::ensure(&tx, app, range, &|uid| system.contains(&uid))?;
    let repo = home.repo(app);
    let binary = std::env::current_exe().context("locating the slipway binary")?;
    if let Err(e) = crate::git::create_bare(&repo, &binary) {
        crate::home::remove_or_warn(&repo);
        return Err(e.into());
    }
    tx.commit()?;
    Ok(())
}

pub fn create(home: &Home, app: &str) -> anyhow::Result<i32> {
    let app = app_name(app)?;
    let mut store = open_store(home)?;
    ensure_app(home, &mut store, &app, true)?;
    // The router answers for it from now on (H14 until its first deploy), not 404.
    match client::notify_converge(home, app.as_str()) {
        Ok(()) | Err(ClientError::NotRunning(_)) => {}
        Err(e) => eprintln!(
            "warning: the daemon was not told about {app} ({e}); it learns of it at the first deploy"
        ),
    }
    out(&format!(
        "Created {app}. Push to it: git remote add slipway slipway@<host>:{app} && git push slipway main"
    ));
    Ok(0)
}

pub fn destroy(home: &Home, app: &str, confirm: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    if confirm != Some(name.as_str()) {
        bail!("destroying {name} deletes its code, releases and logs; run again with --confirm {name}");
    }
    let mut store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    stop_all_dynos(home, &store, &name)?;
    let tx = store.transaction()?;
    store::apps::delete(&tx, &name)?;
    tx.commit()?;
    // The daemon forgets the app (its hosts leave the router) now, not at its next event.
    match client::notify_converge(home, name.as_str()) {
        Ok(()) | Err(ClientError::NotRunning(_)) => {}
        Err(e) => {
            eprintln!("warning: the daemon was not told {name} is gone ({e}); it forgets it when it restarts")
        }
    }
    // Its dynos' dir goes too (with a root daemon it is open to the app's group, whose uid the
    // next new app may get).
    for dir in [
        home.repo(&name),
        home.releases(&name),
        home.slugs(&name),
        home.cache(&name),
        home.app_logs(&name),
        crate::certs::app_dir(home, &name),
        home.app_dynos(&name),
    ] {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: could not remove {}: {e}", dir.display());
            }
        }
    }
    if let Err(e) = crate::certs::mark_changed(home) {
        eprintln!("warning: the router was not told {name}'s certificates are gone ({e}); it notices when it restarts");
    }
    if let Err(e) = crate::envs::remove_all(home, &name) {
        eprintln!("warning: could not remove {}: {e}", home.envs(&name).display());
    }
    out(&format!("Destroyed {name}"));
    Ok(0)
}

/// Through the daemon when it runs (it owns the dynos); otherwise directly, by the pids and
/// start times recorded in SQLite: SIGTERM, then SIGKILL after the grace period.
fn stop_all_dynos(home: &Home, store: &Store, app: &AppName) -> anyhow::Result<()> {
    let settings = crate::settings::Settings::load(home)?;
    let request = Request::Stop { app: Some(app.to_string()), target: None };
    match client::call(home, &request, settings.stop_timeout + Duration::from_secs(30)) {
        Ok(_) => return Ok(()),
        Err(ClientError::NotRunning(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let dynos = store::dynos::for_app(store.conn(), app)?;
    let targets: Vec<(i32, u64)> = dynos.iter().filter_map(|d| Some((d.pid?, d.pid_start?))).collect();
    for &(pid, start) in &targets {
        process::signal_group(pid, start, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + settings.stop_timeout;
    while targets.iter().any(|&(p, s)| process::is_same_process(p, s)) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &(pid, start) in &targets {
        process::signal_group(pid, start, nix::sys::signal::Signal::SIGKILL);
    }
    Ok(())
}

#[derive(Serialize)]
struct AppInfo {
    name: String,
    release: Option<String>,
    created_at: String,
    repo: String,
    web_url: String,
    formation: std::collections::BTreeMap<String, u32>,
    dynos: Vec<super::ps::DynoView>,
    /// The unix uid (= gid) its processes run as when the daemon runs as root (`users`).
    uid: Option<u32>,
}

pub fn info(home: &Home, app: &str, json: bool) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let info = AppInfo {
        name: row.name.clone(),
        release: row.current_release.map(|v| format!("v{v}")),
        created_at: row.created_at,
        repo: home.repo(&name).display().to_string(),
        web_url: web_url(home, name.as_str())?,
        formation: store::formation::get(store.conn(), &name)?,
        dynos: super::ps::views(home, &store, &name)?,
        uid: store::app_uids::get(store.conn(), &name)?,
    };
    if json {
        return print_json(&info);
    }
    out(&format!("=== {}", info.name));
    out(&format!("Release:   {}", info.release.as_deref().unwrap_or("none yet")));
    out(&format!("Created:   {}", info.created_at));
    out(&format!("Repo:      {}", info.repo));
    out(&format!("Web URL:   {}", info.web_url));
    let formation: Vec<String> = info.formation.iter().map(|(t, n)| format!("{t}={n}")).collect();
    out(&format!("Formation: {}", if formation.is_empty() { "-".into() } else { formation.join(" ") }));
    let dynos: Vec<String> = info.dynos.iter().map(|d| format!("{} {}", d.name, d.state)).collect();
    out(&format!("Dynos:     {}", if dynos.is_empty() { "-".into() } else { dynos.join(", ") }));
    let uid = info.uid.map(|u| format!("uid {u} (its dynos run as it when the daemon runs as root)"));
    out(&format!("User:      {}", uid.as_deref().unwrap_or("none yet (given at its first dyno's start)")));
    Ok(0)
}

/// The app's URL as the running daemon serves it; from this process's settings when the daemon
/// is not running.
fn web_url(home: &Home, app: &str) -> anyhow::Result<String> {
    let status = client::call(home, &Request::Status, Duration::from_secs(5));
    if let Ok(crate::daemon::protocol::Response::Status { domain, router_port, .. }) = status {
        return Ok(crate::settings::app_url(&domain, router_port, app));
    }
    Ok(crate::settings::Settings::load(home)?.app_url(app))
}

/// `open APP`: prints the app's URL (a server has no browser to open it in).
pub fn open(home: &Home, app: &str) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    out(&web_url(home, name.as_str())?);
    Ok(0)
}

/// `apps:rename OLD NEW`. Release dirs hold virtualenvs with their absolute path written in
/// them, and the daemon's dynos run from those dirs under the old name, so a rename is not done
/// under running dynos: they are stopped first (through the daemon, gracefully), everything
/// moves, each kept release's venv is rewritten for its new path (as a reused venv is, see
/// `build::venv`; a shared environment is copied to `envs/<new>/` rewritten, see
/// `envs::stage_rename`), and the daemon then starts the formation under the new name and routes the
/// new host. The app is down for that while.
pub fn rename(home: &Home, app: &str, new: &str) -> anyhow::Result<i32> {
    let old = app_name(app)?;
    let new: AppName = new.parse().map_err(|e| anyhow::anyhow!("cannot rename {old} to '{new}': {e}"))?;
    if old == new {
        bail!("{old} is already called {new}");
    }
    let mut store = open_store(home)?;
    store::apps::require(store.conn(), &old)?;
    let taken = || anyhow::anyhow!("an app named {new} already exists; choose another name");
    if store::apps::get(store.conn(), &new)?.is_some() {
        bail!(taken());
    }
    // No push, config change or rollback of either name runs meanwhile (name order: no deadlock).
    let (first, second) = if old.as_str() < new.as_str() { (&old, &new) } else { (&new, &old) };
    let wait = |n: String| move || eprintln!("Waiting for another deploy of {n} to finish...");
    let _first = crate::release::lock(home, first, wait(first.to_string())).map_err(anyhow::Error::msg)?;
    let _second = crate::release::lock(home, second, wait(second.to_string())).map_err(anyhow::Error::msg)?;
    store::apps::require(store.conn(), &old)?;
    if store::apps::get(store.conn(), &new)?.is_some() {
        bail!(taken());
    }
    if !store::dynos::for_app(store.conn(), &old)?.is_empty() {
        eprintln!("Stopping {old}'s dynos...");
    }
    stop_all_dynos(home, &store, &old)?;

    let staged = match stage_venvs(home, &old, &new) {
        Ok(staged) => staged,
        Err(e) => {
            restart_after_failed_rename(home, &old);
            bail!("{old} was not renamed: {e:#}");
        }
    };
    if let Err(e) = crate::envs::stage_rename(home, &old, &new) {
        for venv in &staged {
            crate::home::remove_or_warn(&home.release_dir(&old, venv).join(STAGED_VENV));
        }
        restart_after_failed_rename(home, &old);
        bail!("{old} was not renamed: copying its dependency environments: {e}");
    }
    let moves: Vec<(std::path::PathBuf, std::path::PathBuf)> = vec![
        (home.repo(&old), home.repo(&new)),
        (home.releases(&old), home.releases(&new)),
        (home.slugs(&old), home.slugs(&new)),
        (home.cache(&old), home.cache(&new)),
        (home.app_logs(&old), home.app_logs(&new)),
        (crate::certs::app_dir(home, &old), crate::certs::app_dir(home, &new)),
    ];
    let mut moved = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        let tx = store.transaction()?;
        store::apps::rename(&tx, &old, &new)?;
        for (from, to) in &moves {
            if !from.exists() {
                continue;
            }
            if to.exists() {
                bail!("{} is in the way", to.display());
            }
            std::fs::rename(from, to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
            moved.push((from.clone(), to.clone()));
        }
        tx.commit()?;
        Ok(())
    })();
    if let Err(e) = result {
        for (from, to) in moved.iter().rev() {
            if let Err(e) = std::fs::rename(to, from) {
                eprintln!("warning: could not move {} back to {}: {e}", to.display(), from.display());
            }
        }
        for venv in &staged {
            crate::home::remove_or_warn(&home.release_dir(&old, venv).join(STAGED_VENV));
        }
        if let Err(e) = crate::envs::remove_all(home, &new) {
            eprintln!("warning: could not remove {}: {e}", home.envs(&new).display());
        }
        restart_after_failed_rename(home, &old);
        bail!("{old} was not renamed: {e:#}");
    }
    if let Err(e) = crate::envs::finish_rename(home, &old, &new) {
        eprintln!("warning: the releases of {new} were not all linked to their renamed environments: {e}");
    }
    for build_id in &staged {
        let dir = home.release_dir(&new, build_id);
        if let Err(e) = swap_venv(&dir) {
            eprintln!("warning: the virtualenv of {} was not rewritten for its new path: {e}", dir.display());
        }
    }
    if let Err(e) = crate::certs::mark_changed(home) {
        eprintln!(
            "warning: the router was not told {new}'s certificates moved ({e}); it notices when it restarts"
        );
    }
    // The daemon forgets the old name (its dynos and host) and learns the new one: its current
    // release goes live again under the new name (web dynos boot before it answers), or, before
    // a first deploy, the router answers for the new host.
    match client::notify_converge(home, old.as_str()) {
        Ok(()) | Err(ClientError::NotRunning(_)) => {}
        Err(e) => eprintln!("warning: the daemon was not told {old} is gone ({e}); restart it"),
    }
    let current = store::apps::require(store.conn(), &new)?.current_release;
    let settings = crate::settings::Settings::load(home)?;
    let started = match current {
        Some(version) if client::call(home, &Request::Status, Duration::from_secs(5)).is_ok() => {
            eprintln!("Starting {new}'s dynos...");
            crate::release::go_live(home, &settings, &new, version, true, |_| {}).map(|_| ())
        }
        _ => client::notify_converge(home, new.as_str()).or_else(|e| match e {
            ClientError::NotRunning(_) => Ok(()),
            e => Err(e.to_string()),
        }),
    };
    if let Err(why) = started {
        eprintln!("warning: {new}'s dynos did not start ({why}); try: slipway ps:restart {new}");
    }
    out(&format!("Renamed {old} to {new}: {}", web_url(home, new.as_str())?));
    out(&format!("Point your git remote at it: git remote set-url slipway slipway@<host>:{new}"));
    Ok(0)
}

/// A rename that failed after stopping the app's dynos starts them again where they were.
fn restart_after_failed_rename(home: &Home, app: &AppName) {
    let request = Request::Restart { app: app.to_string(), target: None };
    match client::call(home, &request, Duration::from_secs(180)) {
        Ok(_) | Err(ClientError::NotRunning(_)) => {}
        Err(e) => eprintln!(
            "warning: {app}'s dynos were stopped and not started again ({e}); run: slipway ps:restart {app}"
        ),
    }
}

/// Beside a release's venv, the copy made for the release's new path until the rename commits.
const STAGED_VENV: &str = ".slipway/venv.renamed";

/// For every release dir of `old` with a venv: a copy of it rewritten for the dir's path under
/// `new` (hard links, see `build::venv::clone`). Returns the build ids staged.
fn stage_venvs(home: &Home, old: &AppName, new: &AppName) -> anyhow::Result<Vec<String>> {
    let mut staged = Vec::new();
    let entries = match std::fs::read_dir(home.releases(old)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(staged),
        Err(e) => return Err(e).context(format!("reading {}", home.releases(old).display())),
    };
    let result = (|| -> anyhow::Result<()> {
        for entry in entries {
            let build_id = entry?.file_name().to_string_lossy().into_owned();
            let dir = home.release_dir(old, &build_id);
            let venv = dir.join(crate::build::python::VENV);
            // A link to a shared environment is re-pointed after the rename (`envs::rename`).
            if !std::fs::symlink_metadata(&venv).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let copy = dir.join(STAGED_VENV);
            crate::home::remove_or_warn(&copy);
            staged.push(build_id.clone());
            crate::build::venv::clone(&venv, &copy, &dir, &home.release_dir(new, &build_id))
                .with_context(|| format!("rewriting the virtualenv in {}", dir.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for build_id in &staged {
            crate::home::remove_or_warn(&home.release_dir(old, build_id).join(STAGED_VENV));
        }
        return Err(e);
    }
    Ok(staged)
}

/// Puts the staged venv in place of the old one.
fn swap_venv(dir: &std::path::Path) -> std::io::Result<()> {
    let venv = dir.join(crate::build::python::VENV);
    let retired = dir.join(".slipway/venv.old");
    std::fs::rename(&venv, &retired)?;
    std::fs::rename(dir.join(STAGED_VENV), &venv)?;
    std::fs::remove_dir_all(&retired)
}
