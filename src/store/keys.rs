//! Queries on `ssh_keys`. The authorized_keys file is generated from these rows (see `keys`).

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{Result, StoreError};
use crate::timefmt;

/// What a key may do over SSH (see `cli::ssh::allowed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every command allowed over SSH, on every app.
    Admin,
    /// Push to, read and operate only its apps.
    Deploy,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deploy => "deploy",
        }
    }

    /// Unknown text is read as `deploy`, the role that can do less.
    pub fn from_db(text: &str) -> Role {
        if text == "admin" {
            Role::Admin
        } else {
            Role::Deploy
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: String,
    pub role: Role,
    /// The apps a deploy key may reach (empty for admins, who reach every app).
    pub apps: Vec<String>,
    /// Whether a deploy key may use `run` on its apps.
    pub allow_run: bool,
}

pub fn list(conn: &Connection) -> Result<Vec<KeyRow>> {
    let mut stmt = conn.prepare(
        "SELECT name, public_key, fingerprint, created_at, role, apps, allow_run FROM ssh_keys ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        let role: String = r.get(4)?;
        let apps: String = r.get(5)?;
        Ok(KeyRow {
            name: r.get(0)?,
            public_key: r.get(1)?,
            fingerprint: r.get(2)?,
            created_at: r.get(3)?,
            role: Role::from_db(&role),
            apps: apps.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
            allow_run: r.get::<_, i64>(6)? != 0,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn get(conn: &Connection, name: &str) -> Result<Option<KeyRow>> {
    Ok(list(conn)?.into_iter().find(|k| k.name == name))
}

pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT count(*) FROM ssh_keys", [], |r| r.get(0))?)
}

/// The key without its comment: `type base64`.
fn key_material(public_key: &str) -> String {
    public_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

pub struct NewKey<'a> {
    pub name: &'a str,
    pub public_key: &'a str,
    pub fingerprint: &'a str,
    pub role: Role,
    pub apps: &'a [String],
    pub allow_run: bool,
}

pub fn insert(conn: &Connection, key: &NewKey) -> Result<()> {
    // The same key with another comment is the same key: compare type and base64 only.
    let material = key_material(key.public_key);
    if let Some(other) = list(conn)?.into_iter().find(|k| key_material(&k.public_key) == material) {
        return Err(StoreError::Conflict(format!(
            "this public key is already added as '{}'; remove that key first to add it under another name",
            other.name
        )));
    }
    let inserted = conn.execute(
        "INSERT INTO ssh_keys (name, public_key, fingerprint, created_at, role, apps, allow_run)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(name) DO NOTHING",
        params![
            key.name,
            key.public_key,
            key.fingerprint,
            timefmt::now(),
            key.role.as_str(),
            key.apps.join(","),
            key.allow_run as i64
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!(
            "a key named '{}' already exists; remove it first",
            key.name
        )));
    }
    Ok(())
}

pub fn delete(conn: &Connection, name: &str) -> Result<()> {
    if conn.execute("DELETE FROM ssh_keys WHERE name = ?1", [name])? == 0 {
        return Err(StoreError::Conflict(format!("no key named '{name}'")));
    }
    Ok(())
}
