//! Queries on `apps`.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{Result, StoreError};
use crate::app::AppName;
use crate::timefmt;

#[derive(Debug, Clone, Serialize)]
pub struct AppRow {
    pub name: String,
    pub created_at: String,
    pub current_release: Option<i64>,
}

pub fn create(conn: &Connection, app: &AppName) -> Result<()> {
    let inserted = conn.execute(
        "INSERT INTO apps (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        params![app.as_str(), timefmt::now()],
    )?;
    if inserted == 0 {
        return Err(StoreError::AppExists(app.to_string()));
    }
    Ok(())
}

pub fn get(conn: &Connection, app: &AppName) -> Result<Option<AppRow>> {
    Ok(conn
        .query_row(
            "SELECT name, created_at, current_release FROM apps WHERE name = ?1",
            [app.as_str()],
            |r| Ok(AppRow { name: r.get(0)?, created_at: r.get(1)?, current_release: r.get(2)? }),
        )
        .optional()?)
}

/// Like [`get`], but a missing app is an error naming it.
pub fn require(conn: &Connection, app: &AppName) -> Result<AppRow> {
    get(conn, app)?.ok_or_else(|| StoreError::NoSuchApp(app.to_string()))
}

pub fn list(conn: &Connection) -> Result<Vec<AppRow>> {
    let mut stmt = conn.prepare("SELECT name, created_at, current_release FROM apps ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(AppRow { name: r.get(0)?, created_at: r.get(1)?, current_release: r.get(2)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn set_current_release(conn: &Connection, app: &AppName, version: i64) -> Result<()> {
    conn.execute("UPDATE apps SET current_release = ?2 WHERE name = ?1", params![app.as_str(), version])?;
    Ok(())
}

/// Deletes the app and, through `ON DELETE CASCADE`, every row that belongs to it.
pub fn delete(conn: &Connection, app: &AppName) -> Result<()> {
    // builds are referenced by releases; cascade order is handled by SQLite within one statement
    // per table, so delete releases first to keep the builds' foreign key satisfied.
    conn.execute("DELETE FROM releases WHERE app = ?1", [app.as_str()])?;
    conn.execute("DELETE FROM apps WHERE name = ?1", [app.as_str()])?;
    Ok(())
}
