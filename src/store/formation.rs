//! Queries on `formation`: the desired number of dynos per process type.

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
