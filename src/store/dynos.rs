//! Queries on `dynos`: what the daemon started, with enough identity (pid + start time of both
//! the dyno and its shim) to re-adopt the processes after a daemon restart without ever
//! signalling a recycled pid. The daemon is the only writer ([`upsert`], [`delete`]: the
//! durable copy of its in-memory model); everything else only reads.

use rusqlite::{params, Connection, Row};
use serde::Serialize;

use super::Result;
use crate::app::AppName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DynoState {
    Starting,
    Up,
    Crashed,
    Stopping,
    Down,
}

impl DynoState {
    pub fn as_str(self) -> &'static str {
        match self {
            DynoState::Starting => "starting",
            DynoState::Up => "up",
            DynoState::Crashed => "crashed",
            DynoState::Stopping => "stopping",
            DynoState::Down => "down",
        }
    }

    fn parse(s: &str) -> DynoState {
        match s {
            "starting" => DynoState::Starting,
            "up" => DynoState::Up,
            "crashed" => DynoState::Crashed,
            "stopping" => DynoState::Stopping,
            _ => DynoState::Down,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DynoRow {
    pub id: i64,
    pub app: String,
    pub process_type: String,
    pub num: i64,
    pub release: i64,
    pub command: String,
    pub state: DynoState,
    pub port: Option<u16>,
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    pub shim_pid: Option<i32>,
    pub shim_start: Option<u64>,
    pub restarts: i64,
    /// Stopped by an operator (`ps:stop`): kept, `down`, not restarted.
    pub stopped: bool,
    pub started_at: Option<String>,
    pub updated_at: String,
}

impl DynoRow {
    /// `web.1`, the name users and log lines use.
    pub fn name(&self) -> String {
        format!("{}.{}", self.process_type, self.num)
    }
}

const COLUMNS: &str = "id, app, type, num, release, command, state, port, pid, pid_start, \
                       shim_pid, shim_start, restarts, stopped, started_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<DynoRow> {
    let state: String = r.get(6)?;
    Ok(DynoRow {
        id: r.get(0)?,
        app: r.get(1)?,
        process_type: r.get(2)?,
        num: r.get(3)?,
        release: r.get(4)?,
        command: r.get(5)?,
        state: DynoState::parse(&state),
        port: r.get(7)?,
        pid: r.get(8)?,
        pid_start: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        shim_pid: r.get(10)?,
        shim_start: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        restarts: r.get(12)?,
        stopped: r.get(13)?,
        started_at: r.get(14)?,
        updated_at: r.get(15)?,
    })
}

/// Writes the daemon's whole view of one dyno: inserts or replaces the row with this id.
/// Idempotent, so a write retried after a failure is harmless. A row of an app that no longer
/// exists (destroyed meanwhile) is not written.
pub fn upsert(conn: &Connection, row: &DynoRow) -> Result<()> {
    conn.execute(
        "INSERT INTO dynos (id, app, type, num, release, command, state, port, pid, pid_start,
                            shim_pid, shim_start, restarts, stopped, started_at, updated_at)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16
         WHERE EXISTS (SELECT 1 FROM apps WHERE name = ?2)
         ON CONFLICT (id) DO UPDATE SET
            app = excluded.app, type = excluded.type, num = excluded.num,
            release = excluded.release, command = excluded.command, state = excluded.state,
            port = excluded.port, pid = excluded.pid, pid_start = excluded.pid_start,
            shim_pid = excluded.shim_pid, shim_start = excluded.shim_start,
            restarts = excluded.restarts, stopped = excluded.stopped,
            started_at = excluded.started_at, updated_at = excluded.updated_at",
        params![
            row.id,
            row.app,
            row.process_type,
            row.num,
            row.release,
            row.command,
            row.state.as_str(),
            row.port,
            row.pid,
            row.pid_start.map(|v| v as i64),
            row.shim_pid,
            row.shim_start.map(|v| v as i64),
            row.restarts,
            row.stopped,
            row.started_at,
            row.updated_at,
        ],
    )?;
    Ok(())
}

pub fn for_app(conn: &Connection, app: &AppName) -> Result<Vec<DynoRow>> {
    let mut stmt =
        conn.prepare(&format!("SELECT {COLUMNS} FROM dynos WHERE app = ?1 ORDER BY type, num, id"))?;
    let rows = stmt.query_map([app.as_str()], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn all(conn: &Connection) -> Result<Vec<DynoRow>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM dynos ORDER BY app, type, num, id"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Identity of a freshly spawned dyno process and its shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIds {
    pub pid: i32,
    pub pid_start: u64,
    pub shim_pid: i32,
    pub shim_start: u64,
}

pub fn delete(conn: &Connection, id: i64) -> Result<()> {
    conn.execute("DELETE FROM dynos WHERE id = ?1", [id])?;
    Ok(())
}
