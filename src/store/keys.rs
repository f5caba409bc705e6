//! Queries on `ssh_keys`. The authorized_keys file is generated from these rows (see `keys`).

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{Result, StoreError};
use crate::timefmt;

#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: String,
}

pub fn list(conn: &Connection) -> Result<Vec<KeyRow>> {
    let mut stmt =
        conn.prepare("SELECT name, public_key, fingerprint, created_at FROM ssh_keys ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(KeyRow { name: r.get(0)?, public_key: r.get(1)?, fingerprint: r.get(2)?, created_at: r.get(3)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn insert(conn: &Connection, name: &str, public_key: &str, fingerprint: &str) -> Result<()> {
    let same_key: Option<String> =
        conn.query_row("SELECT name FROM ssh_keys WHERE public_key = ?1", [public_key], |r| r.get(0)).ok();
    if let Some(other) = same_key {
        return Err(StoreError::Conflict(format!("this public key is already added as '{other}'")));
    }
    let inserted = conn.execute(
        "INSERT INTO ssh_keys (name, public_key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO NOTHING",
        params![name, public_key, fingerprint, timefmt::now()],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!("a key named '{name}' already exists; remove it first")));
    }
    Ok(())
}

pub fn delete(conn: &Connection, name: &str) -> Result<()> {
    if conn.execute("DELETE FROM ssh_keys WHERE name = ?1", [name])? == 0 {
        return Err(StoreError::Conflict(format!("no key named '{name}'")));
    }
    Ok(())
}
