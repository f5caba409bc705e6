//! `ps`: the app's dynos as recorded in SQLite, with live facts (uptime, memory) from /proc and
//! the dynos' cgroups; `ps:scale`, `ps:resize`, `ps:restart`, `ps:stop`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::{app_name, open_store, out, print_json, print_table};
use crate::app::AppName;
use crate::daemon::client::{self, ClientError};
use crate::daemon::process;
use crate::daemon::protocol::Request;
use crate::home::Home;
use crate::store::{self, Store};

#[derive(Debug, Serialize)]
pub struct DynoView {
    pub name: String,
    #[serde(rename = "type")]
    pub process_type: String,
    pub command: String,
    pub state: String,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    pub release: String,
    pub restarts: i64,
    pub started_at: Option<String>,
    pub uptime_seconds: Option<i64>,
    /// Resident memory of the main process alone.
    pub rss_kib: Option<u64>,
    /// Memory of the dyno's whole process tree: its cgroup's (without page cache it can drop)
    /// where it has one, else the RSS summed over its process group.
    pub memory_kib: Option<u64>,
    /// The memory quota of its process type (`ps:resize`, else `dyno_memory`), in bytes.
    pub quota_bytes: u64,
    /// The uid its main process runs as (its app's own with a root daemon), while it runs.
    pub uid: Option<u32>,
}

/// The effective uid of process `pid` (`Uid:` in its /proc status, second field).
fn effective_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok())
}

pub fn views(home: &Home, store: &Store, app: &AppName) -> anyhow::Result<Vec<DynoView>> {
    let now = time::OffsetDateTime::now_utc();
    let settings = crate::settings::Settings::load(home)?;
    let quotas = store::formation::memory(store.conn(), app)?;
    // The daemon's view: on cgroup v2 under systemd its dynos' cgroups are below its unit's.
    let layout = crate::daemon::running_pid(home)
        .map_or_else(crate::cgroup::find_layout, crate::cgroup::find_layout_of)
        .ok();
    Ok(store::dynos::for_app(store.conn(), app)?
        .into_iter()
        .map(|d| {
            let alive = matches!((d.pid, d.pid_start), (Some(p), Some(s)) if process::is_same_process(p, s));
            let cgroup_memory = layout
                .as_ref()
                .map(|l| l.group(&crate::cgroup::dyno_rel(home.root(), app.as_str(), d.id)))
                .and_then(|g| g.memory())
                .map(|m| m.working_set() / 1024);
            let memory_kib = match alive {
                false => None,
                true => cgroup_memory.or_else(|| d.pid.and_then(process::group_rss_kib)),
            };
            DynoView {
                memory_kib,
                uid: d.pid.filter(|_| alive).and_then(effective_uid),
                quota_bytes: quotas.get(&d.process_type).copied().unwrap_or(settings.dyno_memory),
                name: d.name(),
                process_type: d.process_type.clone(),
                command: d.command.clone(),
                state: d.state.as_str().to_string(),
                pid: d.pid,
                port: d.port,
                release: format!("v{}", d.release),
                restarts: d.restarts,
                uptime_seconds: d
                    .started_at
                    .as_deref()
                    .and_then(crate::timefmt::parse)
                    .filter(|_| alive)
                    .map(|t| (now - t).whole_seconds()),
                started_at: d.started_at,
                rss_kib: d.pid.filter(|_| alive).and_then(process::rss_kib),
            }
        })
        .collect())
}

pub fn list(home: &Home, app: &str, json: bool) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    let dynos = views(home, &store, &name)?;
    if json {
        return print_json(&dynos);
    }
    if let Some(line) = process_types_line(&store, &name) {
        out(&line);
    }
    if dynos.is_empty() {
        out(&format!("No dynos for {name}."));
        return Ok(0);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = dynos
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.state.clone(),
                opt(d.pid.map(|p| p.to_string())),
                opt(d.port.map(|p| p.to_string())),
                d.release.clone(),
                d.restarts.to_string(),
                opt(d.uptime_seconds.map(human_duration)),
                format!(
                    "{}/{}",
                    opt(d.memory_kib.map(|k| format!("{:.1}M", k as f64 / 1024.0))),
                    crate::cgroup::format_size(d.quota_bytes)
                ),
                d.command.clone(),
            ]
        })
        .collect();
    print_table(
        &["DYNO", "STATE", "PID", "PORT", "RELEASE", "RESTARTS", "UPTIME", "MEMORY", "COMMAND"],
        &rows,
    );
    Ok(0)
}

/// `Process types (Procfile): web, worker` for the current release: what it runs and where
/// that came from (a Procfile, or a detected framework).
fn process_types_line(store: &Store, app: &AppName) -> Option<String> {
    let conn = store.conn();
    let release = store::apps::get(conn, app).ok()??.current_release?;
    let build_id = store::releases::require_release(conn, app, release).ok()?.build_id?;
    let build = store::releases::build(conn, &build_id).ok()??;
    let types: Vec<&str> = build.process_types.processes.keys().map(String::as_str).collect();
    let source = build.process_types.source.clone().unwrap_or_else(|| "Procfile".into());
    Some(format!("Process types ({source}): {}", types.join(", ")))
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Parses `web=2 worker=1` into a map; each count 0 to 100, each type named once.
pub fn parse_scale(changes: &[String]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for change in changes {
        let Some((name, count)) = change.split_once('=') else {
            bail!("'{change}' is not TYPE=N (for example web=2)");
        };
        let count: u32 = match count.parse() {
            Ok(n) if n <= 100 => n,
            _ => bail!("'{change}': the number of dynos must be from 0 to 100"),
        };
        if out.insert(name.to_string(), count).is_some() {
            bail!("process type '{name}' is given twice");
        }
    }
    Ok(out)
}

pub fn scale(home: &Home, app: &str, changes: &[String], who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let wanted = parse_scale(changes)?;
    let mut store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let Some(release) = row.current_release else {
        bail!("{name} has no release yet; push it before scaling");
    };
    let procfile = crate::store::releases::require_release(store.conn(), &name, release)?
        .build_id
        .and_then(|id| crate::store::releases::build(store.conn(), &id).ok().flatten())
        .map(|b| b.process_types)
        .unwrap_or_default();
    let known: Vec<&str> = procfile.dyno_types().map(|(t, _)| t).collect();
    if let Some(unknown) = wanted.keys().find(|t| !known.contains(&t.as_str())) {
        bail!("{name} has no process type '{unknown}'; its Procfile declares: {}", known.join(", "));
    }
    let tx = store.transaction()?;
    for (process_type, count) in &wanted {
        store::formation::set(&tx, &name, process_type, *count)?;
    }
    tx.commit()?;
    let summary: Vec<String> = wanted.iter().map(|(t, n)| format!("{t}={n}")).collect();
    let by = format!(" by {}", super::actor(who));
    crate::logs::append_event(
        &home.app_log(&name),
        crate::logs::Source::Slipway,
        "api",
        &format!("Scaled to {}{by}", summary.join(" ")),
    );
    let request = Request::Scale { app: name.to_string(), types: wanted.keys().cloned().collect() };
    match client::call(home, &request, Duration::from_secs(120)) {
        Ok(_) => out(&format!("Scaled {name} to {}", summary.join(" "))),
        Err(ClientError::NotRunning(start)) => {
            out(&format!("Scaled {name} to {}", summary.join(" ")));
            eprintln!(
                "warning: the slipway daemon is not running; the new scale applies when it starts ({start})"
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(0)
}

/// Parses `web=512M worker=1G` into a map of quotas in bytes; each type named once.
pub fn parse_resize(changes: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for change in changes {
        let Some((name, size)) = change.split_once('=') else {
            bail!("'{change}' is not TYPE=SIZE (for example web=512M or worker=1G)");
        };
        let bytes = crate::cgroup::parse_size(size).map_err(|why| anyhow::anyhow!("{why}"))?;
        if out.insert(name.to_string(), bytes).is_some() {
            bail!("process type '{name}' is given twice");
        }
    }
    Ok(out)
}

/// `ps:resize APP [TYPE=SIZE…]`: shows, or sets, the memory quota of each process type. The
/// dynos of a resized type are restarted (as on Heroku) so their cgroups get the new limit.
pub fn resize(home: &Home, app: &str, changes: &[String], who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let wanted = parse_resize(changes)?;
    let settings = crate::settings::Settings::load(home)?;
    let mut store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    if wanted.is_empty() {
        let quotas = store::formation::memory(store.conn(), &name)?;
        let mut types: Vec<String> = store::formation::get(store.conn(), &name)?.into_keys().collect();
        types.extend(quotas.keys().cloned());
        types.sort();
        types.dedup();
        if types.is_empty() {
            out(&format!(
                "{name} has no process types yet; every dyno gets dyno_memory ({})",
                crate::cgroup::format_size(settings.dyno_memory)
            ));
            return Ok(0);
        }
        let rows: Vec<Vec<String>> = types
            .iter()
            .map(|t| {
                let (size, from) = match quotas.get(t) {
                    Some(b) => (*b, "ps:resize"),
                    None => (settings.dyno_memory, "dyno_memory"),
                };
                vec![
                    t.clone(),
                    crate::cgroup::format_size(size),
                    crate::cgroup::format_size(size * 2),
                    from.into(),
                ]
            })
            .collect();
        print_table(&["TYPE", "MEMORY", "KILLED AT", "FROM"], &rows);
        return Ok(0);
    }
    // `run` sizes one-off dynos (as Heroku's `run --size`), whatever the Procfile declares.
    let known: Vec<String> = store::formation::get(store.conn(), &name)?.into_keys().collect();
    if let Some(unknown) = wanted.keys().find(|t| !known.contains(t) && t.as_str() != "run") {
        if known.is_empty() {
            bail!("{name} has no process type '{unknown}'; push it first");
        }
        bail!("{name} has no process type '{unknown}'; its formation has: {}", known.join(", "));
    }
    let tx = store.transaction()?;
    for (process_type, bytes) in &wanted {
        store::formation::set_memory(&tx, &name, process_type, *bytes)?;
    }
    tx.commit()?;
    let summary: Vec<String> =
        wanted.iter().map(|(t, b)| format!("{t}={}", crate::cgroup::format_size(*b))).collect();
    crate::logs::append_event(
        &home.app_log(&name),
        crate::logs::Source::Slipway,
        "api",
        &format!("Resized to {} by {}", summary.join(" "), super::actor(who)),
    );
    out(&format!("Resized {name} to {}", summary.join(" ")));
    // Running dynos of those types get the new limits by a restart (web without downtime).
    let wait = settings.boot_timeout + settings.stop_timeout + Duration::from_secs(60);
    let running = store::dynos::for_app(store.conn(), &name)?;
    for process_type in wanted.keys() {
        // Stopped dynos stay stopped (a restart would start them); one-offs are never restarted.
        let up = |d: &store::dynos::DynoRow| d.state != store::dynos::DynoState::Down;
        if process_type == "run" || !running.iter().any(|d| &d.process_type == process_type && up(d)) {
            continue;
        }
        let request = Request::Restart { app: name.to_string(), target: Some(process_type.clone()) };
        match client::call(home, &request, wait) {
            Ok(_) => out(&format!("Restarted {process_type} of {name} with the new size")),
            Err(ClientError::NotRunning(start)) => {
                eprintln!("warning: the slipway daemon is not running; the new size applies when it starts ({start})");
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(0)
}

pub fn restart(home: &Home, app: &str, target: Option<String>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let settings = crate::settings::Settings::load(home)?;
    let request = Request::Restart { app: name.to_string(), target: target.clone() };
    client::call(home, &request, settings.boot_timeout + settings.stop_timeout + Duration::from_secs(60))?;
    out(&format!(
        "Restarted {}",
        target.map_or_else(|| format!("all dynos of {name}"), |t| format!("{t} of {name}"))
    ));
    Ok(0)
}

pub fn stop(home: &Home, app: Option<&str>, target: Option<String>) -> anyhow::Result<i32> {
    let name = app.map(app_name).transpose()?;
    if let Some(name) = &name {
        store::apps::require(open_store(home)?.conn(), name)?;
    }
    let settings = crate::settings::Settings::load(home)?;
    let request = Request::Stop { app: name.as_ref().map(|n| n.to_string()), target: target.clone() };
    client::call(home, &request, settings.stop_timeout + Duration::from_secs(60))?;
    let what = match (&name, &target) {
        (None, _) => "every dyno of every app".to_string(),
        (Some(n), None) => format!("all dynos of {n}"),
        (Some(n), Some(t)) => format!("{t} of {n}"),
    };
    out(&format!("Stopped {what}; they stay down until ps:restart or ps:scale"));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::{parse_resize, parse_scale};

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scale_arguments() {
        let m = parse_scale(&v(&["web=2", "worker=0"])).unwrap();
        assert_eq!(m["web"], 2);
        assert_eq!(m["worker"], 0);
        for bad in [&["web"][..], &["web=101"], &["web=-1"], &["web=x"], &["web=1", "web=2"]] {
            assert!(parse_scale(&v(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resize_arguments() {
        let m = parse_resize(&v(&["web=512M", "worker=1G"])).unwrap();
        assert_eq!(m["web"], 512 << 20);
        assert_eq!(m["worker"], 1 << 30);
        for (bad, why) in [
            (&["web"][..], "'web' is not TYPE=SIZE (for example web=512M or worker=1G)"),
            (&["web=8M"], "'8M' is out of range: a memory size must be from 16M to 1024G"),
            (&["web=lots"], "'lots' is not a memory size such as 512M or 1G"),
            (&["web=1G", "web=2G"], "process type 'web' is given twice"),
        ] {
            assert_eq!(parse_resize(&v(bad)).unwrap_err().to_string(), why, "{bad:?}");
        }
    }
}
