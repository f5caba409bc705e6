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

/// Creates the app's row and bare repo together: the row is committed only once the repo exists.
pub fn ensure_app(home: &Home, store: &mut Store, app: &AppName, must_be_new: bool) -> anyhow::Result<()> {
    if !must_be_new && store::apps::get(store.conn(), app)?.is_some() {
        return Ok(());
    }
    let tx = store.transaction()?;
    store::apps::create(&tx, app)?;
    let repo = home.repo(app);
    let binary = std::env::current_exe().context("locating the slipway binary")?;
    if let Err(e) = crate::git::create_bare(&repo, &binary) {
        let _ = std::fs::remove_dir_all(&repo);
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
    for dir in
        [home.repo(&name), home.releases(&name), home.slugs(&name), home.cache(&name), home.app_logs(&name)]
    {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: could not remove {}: {e}", dir.display());
            }
        }
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
        dynos: super::ps::views(&store, &name)?,
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
