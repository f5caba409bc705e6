//! Queries on `formation`: the desired number of dynos per process type, and each type's
//! memory quota (`ps:resize`; NULL means the `dyno_memory` setting).

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use super::Result;
use crate::app::AppName;
use crate::procfile::Procfile;

pub fn get(conn: &Connection, app: &AppName) -> Result<BTreeMap<String, u32>> {
    let mut stmt = conn.prepare("SELECT type, quantity FROM formation WHERE app = ?1")?;
    let rows = stmt.query_map([app.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Gives every process type new in this Procfile its default scale: `web` 1, others 0
/// (Heroku's rule). Existing quantities are never changed by a deploy.
pub fn add_defaults(conn: &Connection, app: &AppName, procfile: &Procfile) -> Result<()> {
    for (name, _) in procfile.dyno_types() {
        let quantity = u32::from(name == "web");
        conn.execute(
            "INSERT INTO formation (app, type, quantity) VALUES (?1, ?2, ?3)
             ON CONFLICT(app, type) DO NOTHING",
            params![app.as_str(), name, quantity],
        )?;
    }
    Ok(())
}

pub fn set(conn: &Connection, app: &AppName, process_type: &str, quantity: u32) -> Result<()> {
    conn.execute(
        "INSERT INTO formation (app, type, quantity) VALUES (?1, ?2, ?3)
         ON CONFLICT(app, type) DO UPDATE SET quantity = excluded.quantity",
        params![app.as_str(), process_type, quantity],
    )?;
    Ok(())
}

/// Memory quotas set with `ps:resize`, by process type (types left at the default are absent).
pub fn memory(conn: &Connection, app: &AppName) -> Result<BTreeMap<String, u64>> {
    let mut stmt =
        conn.prepare("SELECT type, memory FROM formation WHERE app = ?1 AND memory IS NOT NULL")?;
    let rows = stmt.query_map([app.as_str()], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Sets the memory quota of `process_type` (a row with quantity 0 if the type has none yet).
pub fn set_memory(conn: &Connection, app: &AppName, process_type: &str, bytes: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO formation (app, type, quantity, memory) VALUES (?1, ?2, 0, ?3)
         ON CONFLICT(app, type) DO UPDATE SET memory = excluded.memory",
        params![app.as_str(), process_type, bytes as i64],
    )?;
    Ok(())
}
