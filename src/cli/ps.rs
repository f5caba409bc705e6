//! `ps`: the app's dynos as recorded in SQLite, with live facts (uptime, RSS) from /proc.

use serde::Serialize;

use super::{app_name, open_store, out, print_json, print_table};
use crate::app::AppName;
use crate::daemon::process;
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
    pub rss_kib: Option<u64>,
}

pub fn views(store: &Store, app: &AppName) -> anyhow::Result<Vec<DynoView>> {
    let now = time::OffsetDateTime::now_utc();
    Ok(store::dynos::for_app(store.conn(), app)?
        .into_iter()
        .map(|d| {
            let alive = matches!((d.pid, d.pid_start), (Some(p), Some(s)) if process::is_same_process(p, s));
            DynoView {
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
    let dynos = views(&store, &name)?;
    if json {
        return print_json(&dynos);
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
                opt(d.rss_kib.map(|k| format!("{:.1}MB", k as f64 / 1024.0))),
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

fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}
