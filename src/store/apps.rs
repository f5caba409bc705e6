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

/// Renames `old` to `new` in the caller's (IMMEDIATE) transaction. `apps.name` is the primary
/// key other tables reference with foreign keys (which are on), so the new row is inserted
/// first (every column copied), every referencing row is moved onto it, and the old row is
/// deleted. The referencing tables are found in the schema, so a table added later moves too.
/// `dynos` rows are deleted, not moved: they describe processes of the old name, which the
/// caller has stopped; the daemon starts the formation again under the new name.
pub fn rename(conn: &Connection, old: &AppName, new: &AppName) -> Result<()> {
    require(conn, old)?;
    if get(conn, new)?.is_some() {
        return Err(StoreError::AppExists(new.to_string()));
    }
    let columns: Vec<String> = {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('apps') WHERE name != 'name'")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    let copied = columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let sep = if copied.is_empty() { "" } else { ", " };
    conn.execute(
        &format!("INSERT INTO apps (name{sep}{copied}) SELECT ?2{sep}{copied} FROM apps WHERE name = ?1"),
        params![old.as_str(), new.as_str()],
    )?;
    conn.execute("DELETE FROM dynos WHERE app = ?1", [old.as_str()])?;
    let references: Vec<(String, String)> = {
        let mut stmt = conn.prepare(
            "SELECT m.name, f.\"from\" FROM sqlite_master m, pragma_foreign_key_list(m.name) f
             WHERE m.type = 'table' AND f.\"table\" = 'apps' AND m.name != 'apps'",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (table, column) in references {
        conn.execute(
            &format!("UPDATE \"{table}\" SET \"{column}\" = ?2 WHERE \"{column}\" = ?1"),
            params![old.as_str(), new.as_str()],
        )?;
    }
    conn.execute("DELETE FROM apps WHERE name = ?1", [old.as_str()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn rename_moves_every_row_and_keeps_foreign_keys_intact() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db")).unwrap();
        let (old, new): (AppName, AppName) = ("old-app".parse().unwrap(), "new-app".parse().unwrap());
        store
            .conn()
            .execute_batch(
                "INSERT INTO apps (name, created_at, current_release) VALUES ('old-app', 't0', 1), ('other', 't', NULL);
                 INSERT INTO builds (id, app, commit_sha, stack, process_types, slug_bytes, created_at)
                   VALUES ('b1', 'old-app', 'c', 'python', '{}', 1, 't');
                 INSERT INTO releases (app, version, build_id, description, created_by, created_at, status)
                   VALUES ('old-app', 1, 'b1', 'Deploy', 'me', 't', 'succeeded');
                 INSERT INTO formation (app, type, quantity) VALUES ('old-app', 'web', 2);
                 INSERT INTO domains (host, app, created_at) VALUES ('www.example.com', 'old-app', 't');
                 INSERT INTO dynos (app, type, num, release, command, state, updated_at)
                   VALUES ('old-app', 'web', 1, 1, 'run', 'down', 't');",
            )
            .unwrap();
        let tx = store.transaction().unwrap();
        rename(&tx, &old, &new).unwrap();
        tx.commit().unwrap();
        let conn = store.conn();
        assert!(get(conn, &old).unwrap().is_none());
        let row = require(conn, &new).unwrap();
        assert_eq!((row.created_at.as_str(), row.current_release), ("t0", Some(1)));
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM builds WHERE app = 'new-app'"), 1);
        assert_eq!(count("SELECT count(*) FROM releases WHERE app = 'new-app'"), 1);
        assert_eq!(count("SELECT count(*) FROM formation WHERE app = 'new-app' AND quantity = 2"), 1);
        assert_eq!(count("SELECT count(*) FROM domains WHERE app = 'new-app'"), 1);
        assert_eq!(count("SELECT count(*) FROM dynos"), 0);
        assert_eq!(count("SELECT count(*) FROM pragma_foreign_key_check"), 0);
        // Taken and missing names are refused.
        let other: AppName = "other".parse().unwrap();
        assert!(matches!(rename(conn, &new, &other), Err(StoreError::AppExists(_))));
        assert!(matches!(rename(conn, &old, &other), Err(StoreError::NoSuchApp(_))));
    }
}
