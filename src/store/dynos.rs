//! Queries on `dynos`: what the daemon started, with enough identity (pid + start time of both
//! the dyno and its shim) to re-adopt the processes after a daemon restart without ever
//! signalling a recycled pid.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::Result;
use crate::app::AppName;
use crate::timefmt;

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

/// What a new dyno row needs; the process fields arrive once it has been spawned.
pub struct NewDyno<'a> {
    pub app: &'a AppName,
    pub process_type: &'a str,
    pub num: i64,
    pub release: i64,
    pub command: &'a str,
    pub port: Option<u16>,
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

pub fn insert(conn: &Connection, new: &NewDyno<'_>) -> Result<i64> {
    conn.execute(
        "INSERT INTO dynos (app, type, num, release, command, state, port, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'starting', ?6, ?7)",
        params![
            new.app.as_str(),
            new.process_type,
            new.num,
            new.release,
            new.command,
            new.port,
            timefmt::now()
        ],
    )?;
    Ok(conn.last_insert_rowid())
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

pub fn get(conn: &Connection, id: i64) -> Result<Option<DynoRow>> {
    Ok(conn.query_row(&format!("SELECT {COLUMNS} FROM dynos WHERE id = ?1"), [id], from_row).optional()?)
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

/// Ports held by any dyno row, so the allocator never hands one out twice.
pub fn ports_in_use(conn: &Connection) -> Result<Vec<u16>> {
    let mut stmt = conn.prepare("SELECT port FROM dynos WHERE port IS NOT NULL")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn set_state(conn: &Connection, id: i64, state: DynoState) -> Result<()> {
    conn.execute(
        "UPDATE dynos SET state = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, state.as_str(), timefmt::now()],
    )?;
    Ok(())
}

/// Identity of a freshly spawned dyno process and its shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIds {
    pub pid: i32,
    pub pid_start: u64,
    pub shim_pid: i32,
    pub shim_start: u64,
}

pub fn set_process(conn: &Connection, id: i64, ids: ProcessIds) -> Result<()> {
    let now = timefmt::now();
    conn.execute(
        "UPDATE dynos SET pid = ?2, pid_start = ?3, shim_pid = ?4, shim_start = ?5,
                started_at = ?6, updated_at = ?6 WHERE id = ?1",
        params![id, ids.pid, ids.pid_start as i64, ids.shim_pid, ids.shim_start as i64, now],
    )?;
    Ok(())
}

pub fn set_restarts(conn: &Connection, id: i64, restarts: i64) -> Result<()> {
    conn.execute("UPDATE dynos SET restarts = ?2 WHERE id = ?1", params![id, restarts])?;
    Ok(())
}

/// Marks a dyno as stopped by an operator (or clears that mark before it runs again).
pub fn set_stopped(conn: &Connection, id: i64, stopped: bool) -> Result<()> {
    conn.execute("UPDATE dynos SET stopped = ?2 WHERE id = ?1", params![id, stopped])?;
    Ok(())
}

/// The process is gone and stays gone: state `down`, no pids to signal by mistake later.
pub fn set_down(conn: &Connection, id: i64) -> Result<()> {
    conn.execute(
        "UPDATE dynos SET state = 'down', pid = NULL, pid_start = NULL, shim_pid = NULL,
                shim_start = NULL, updated_at = ?2 WHERE id = ?1",
        params![id, timefmt::now()],
    )?;
    Ok(())
}

/// Relabels an app's dynos of release `from` as release `to` (same build, new config, applied
/// at their next restart).
pub fn relabel(conn: &Connection, app: &AppName, from: i64, to: i64) -> Result<()> {
    conn.execute(
        "UPDATE dynos SET release = ?3 WHERE app = ?1 AND release = ?2",
        params![app.as_str(), from, to],
    )?;
    Ok(())
}

pub fn delete(conn: &Connection, id: i64) -> Result<()> {
    conn.execute("DELETE FROM dynos WHERE id = ?1", [id])?;
    Ok(())
}
