//! Queries on `app_uids`: the unix uid (= gid) each app's processes run as when the daemon runs
//! as root (see `crate::users`).

use std::collections::BTreeSet;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Result, StoreError};
use crate::app::AppName;
use crate::users::UidRange;

pub fn get(conn: &Connection, app: &AppName) -> Result<Option<u32>> {
    Ok(conn.query_row("SELECT uid FROM app_uids WHERE app = ?1", [app.as_str()], |r| r.get(0)).optional()?)
}

/// Every app's uid, by app name.
pub fn list(conn: &Connection) -> Result<Vec<(String, u32)>> {
    let mut stmt = conn.prepare("SELECT app, uid FROM app_uids ORDER BY app")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The app's uid, allocated now when it has none: the lowest uid of `range` that no other app
/// holds and `refused` (a user of /etc/passwd) does not name. Run it in an IMMEDIATE
/// transaction (or on its own: one statement reads, one writes, and the UNIQUE constraint
/// refuses a uid another process took in between).
pub fn ensure(
    conn: &Connection,
    app: &AppName,
    range: UidRange,
    refused: &dyn Fn(u32) -> bool,
) -> Result<u32> {
    if let Some(uid) = get(conn, app)? {
        return Ok(uid);
    }
    let taken: BTreeSet<u32> = {
        let mut stmt = conn.prepare("SELECT uid FROM app_uids WHERE uid BETWEEN ?1 AND ?2")?;
        let rows = stmt.query_map(params![range.first, range.last], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let Some(uid) = crate::users::pick(range, &taken, refused) else {
        return Err(StoreError::Conflict(format!(
            "no free uid left in app_uids {range} for {app}; widen the app_uids setting"
        )));
    };
    conn.execute("INSERT INTO app_uids (app, uid) VALUES (?1, ?2)", params![app.as_str(), uid])?;
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn uids_are_allocated_once_kept_on_rename_and_freed_on_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db")).unwrap();
        let range = UidRange { first: 500, last: 504 }; // 504: the router's
        let names: Vec<AppName> = ["app-a", "app-b", "app-c"].iter().map(|n| n.parse().unwrap()).collect();
        for app in &names {
            crate::store::apps::create(store.conn(), app).unwrap();
        }
        // 501 belongs to a passwd user: skipped.
        let refused = |uid: u32| uid == 501;
        assert_eq!(ensure(store.conn(), &names[0], range, &refused).unwrap(), 500);
        assert_eq!(ensure(store.conn(), &names[1], range, &refused).unwrap(), 502);
        assert_eq!(ensure(store.conn(), &names[0], range, &refused).unwrap(), 500, "kept");
        assert_eq!(ensure(store.conn(), &names[2], range, &refused).unwrap(), 503);
        let d: AppName = "app-d".parse().unwrap();
        crate::store::apps::create(store.conn(), &d).unwrap();
        let full = ensure(store.conn(), &d, range, &refused).unwrap_err();
        assert!(full.to_string().contains("no free uid left in app_uids 500-504"), "{full}");
        // Renamed: the uid goes with the app.
        let renamed: AppName = "app-a2".parse().unwrap();
        let tx = store.transaction().unwrap();
        crate::store::apps::rename(&tx, &names[0], &renamed).unwrap();
        tx.commit().unwrap();
        assert_eq!(get(store.conn(), &renamed).unwrap(), Some(500));
        assert_eq!(get(store.conn(), &names[0]).unwrap(), None);
        // Destroyed: its uid is free for the next app.
        crate::store::apps::delete(store.conn(), &names[1]).unwrap();
        assert_eq!(ensure(store.conn(), &d, range, &refused).unwrap(), 502);
        assert_eq!(list(store.conn()).unwrap().len(), 3);
    }
}
