//! Queries on `builds` and `releases`. A build row and its release are written together, in the
//! caller's transaction, only after the build fully succeeded.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{Result, StoreError};
use crate::app::AppName;
use crate::procfile::Procfile;
use crate::timefmt;

#[derive(Debug, Clone, Serialize)]
pub struct BuildRow {
    pub id: String,
    pub commit_sha: String,
    pub stack: String,
    /// The types and, in `source`, where they came from (`Procfile`, `detected Django`, …).
    pub process_types: Procfile,
    pub slug_bytes: i64,
    pub created_at: String,
    /// Key of the dependency environment (Python builds), for reuse by the next build.
    pub deps_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRow {
    pub version: i64,
    pub build_id: Option<String>,
    pub description: String,
    pub created_by: String,
    pub created_at: String,
    pub status: String,
    pub config: BTreeMap<String, String>,
}

impl ReleaseRow {
    pub fn name(&self) -> String {
        format!("v{}", self.version)
    }
}

pub fn insert_build(conn: &Connection, app: &AppName, build: &BuildRow) -> Result<()> {
    let types = serde_json::to_string(&build.process_types).unwrap_or_else(|_| "{}".into());
    conn.execute(
        "INSERT INTO builds (id, app, commit_sha, stack, process_types, slug_bytes, created_at, deps_key,
                             process_types_source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            build.id,
            app.as_str(),
            build.commit_sha,
            build.stack,
            types,
            build.slug_bytes,
            build.created_at,
            build.deps_key,
            build.process_types.source
        ],
    )?;
    Ok(())
}

/// The slug's size, recorded once it is packed (a push packs it while the release goes live).
pub fn set_slug_bytes(conn: &Connection, id: &str, bytes: i64) -> Result<()> {
    conn.execute("UPDATE builds SET slug_bytes = ?2 WHERE id = ?1", params![id, bytes])?;
    Ok(())
}

pub fn build(conn: &Connection, id: &str) -> Result<Option<BuildRow>> {
    Ok(conn
        .query_row(
            "SELECT id, commit_sha, stack, process_types, slug_bytes, created_at, deps_key, process_types_source
             FROM builds WHERE id = ?1",
            [id],
            |r| {
                let types: String = r.get(3)?;
                let mut process_types: Procfile = serde_json::from_str(&types).unwrap_or_default();
                process_types.source = r.get(7)?;
                Ok(BuildRow {
                    id: r.get(0)?,
                    commit_sha: r.get(1)?,
                    stack: r.get(2)?,
                    process_types,
                    slug_bytes: r.get(4)?,
                    created_at: r.get(5)?,
                    deps_key: r.get(6)?,
                })
            },
        )
        .optional()?)
}

/// Ids of every build of an app; used to tell a crashed build's leftover dir from a real one.
pub fn build_ids(conn: &Connection, app: &AppName) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT id FROM builds WHERE app = ?1")?;
    let ids = stmt.query_map([app.as_str()], |r| r.get(0))?;
    Ok(ids.collect::<rusqlite::Result<_>>()?)
}

/// Inserts the next release (`max(version) + 1`) as `pending`; returns its version.
pub fn insert_release(
    conn: &Connection,
    app: &AppName,
    build_id: Option<&str>,
    description: &str,
    created_by: &str,
    config: &BTreeMap<String, String>,
) -> Result<i64> {
    let version: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app = ?1",
        [app.as_str()],
        |r| r.get(0),
    )?;
    let config = serde_json::to_string(config).unwrap_or_else(|_| "{}".into());
    conn.execute(
        "INSERT INTO releases (app, version, build_id, description, created_by, created_at, status, config)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
        params![app.as_str(), version, build_id, description, created_by, timefmt::now(), config],
    )?;
    Ok(version)
}

/// Per app, the newest release queued for the daemon (made while it was not running) that is
/// newer than the current one.
pub fn queued(conn: &Connection) -> Result<Vec<(AppName, i64)>> {
    app_versions(
        conn,
        "SELECT r.app, max(r.version) FROM releases r JOIN apps a ON a.name = r.app
         WHERE r.status = 'queued' AND r.version > coalesce(a.current_release, 0) GROUP BY r.app",
    )
}

/// `version` is live: it and the releases queued before it (their config is part of it)
/// succeeded.
pub fn set_live(conn: &Connection, app: &AppName, version: i64) -> Result<()> {
    settle_queued(conn, app, version, "succeeded")
}

/// `version` failed, and with it the releases queued before it.
pub fn set_failed(conn: &Connection, app: &AppName, version: i64) -> Result<()> {
    settle_queued(conn, app, version, "failed")
}

/// Gives `version` and every release still queued before it the final `status`.
fn settle_queued(conn: &Connection, app: &AppName, version: i64, status: &str) -> Result<()> {
    conn.execute(
        "UPDATE releases SET status = ?3
         WHERE app = ?1 AND (version = ?2 OR (status = 'queued' AND version < ?2))",
        params![app.as_str(), version, status],
    )?;
    Ok(())
}

/// `version` failed because of `why` (one sentence, shown by `releases:info`); the releases
/// queued before it fail with it, as in [`set_failed`], without a reason of their own.
pub fn set_failed_with(conn: &Connection, app: &AppName, version: i64, why: &str) -> Result<()> {
    set_failed(conn, app, version)?;
    set_failure(conn, app, version, why)
}

/// Records why `version` failed (its status is set separately).
pub fn set_failure(conn: &Connection, app: &AppName, version: i64, why: &str) -> Result<()> {
    conn.execute(
        "UPDATE releases SET failure = ?3 WHERE app = ?1 AND version = ?2",
        params![app.as_str(), version, why],
    )?;
    Ok(())
}

/// Why `version` failed, when it did and the reason was recorded.
pub fn failure(conn: &Connection, app: &AppName, version: i64) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT failure FROM releases WHERE app = ?1 AND version = ?2 AND status = 'failed'",
            params![app.as_str(), version],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

/// Every recorded failure reason of an app's releases, by version.
pub fn failures(conn: &Connection, app: &AppName) -> Result<BTreeMap<i64, String>> {
    let mut stmt = conn.prepare(
        "SELECT version, failure FROM releases WHERE app = ?1 AND status = 'failed' AND failure IS NOT NULL",
    )?;
    let rows = stmt.query_map([app.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn set_status(conn: &Connection, app: &AppName, version: i64, status: &str) -> Result<()> {
    conn.execute(
        "UPDATE releases SET status = ?3 WHERE app = ?1 AND version = ?2",
        params![app.as_str(), version, status],
    )?;
    Ok(())
}

const RELEASE_COLUMNS: &str = "version, build_id, description, created_by, created_at, status, config";

fn release_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReleaseRow> {
    let config: String = r.get(6)?;
    Ok(ReleaseRow {
        version: r.get(0)?,
        build_id: r.get(1)?,
        description: r.get(2)?,
        created_by: r.get(3)?,
        created_at: r.get(4)?,
        status: r.get(5)?,
        config: serde_json::from_str(&config).unwrap_or_default(),
    })
}

pub fn release(conn: &Connection, app: &AppName, version: i64) -> Result<Option<ReleaseRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE app = ?1 AND version = ?2"),
            params![app.as_str(), version],
            release_from_row,
        )
        .optional()?)
}

pub fn require_release(conn: &Connection, app: &AppName, version: i64) -> Result<ReleaseRow> {
    release(conn, app, version)?
        .ok_or_else(|| StoreError::NoSuchRelease { app: app.to_string(), version: format!("v{version}") })
}

/// Newest first.
pub fn list(conn: &Connection, app: &AppName) -> Result<Vec<ReleaseRow>> {
    let mut stmt = conn
        .prepare(&format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE app = ?1 ORDER BY version DESC"))?;
    let rows = stmt.query_map([app.as_str()], release_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The commit of the newest build that went live: what the deploy branch points at once the
/// push that built it has been accepted.
pub fn last_deployed_commit(conn: &Connection, app: &AppName) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT b.commit_sha FROM builds b JOIN releases r ON r.build_id = b.id
             WHERE b.app = ?1 AND r.status = 'succeeded' ORDER BY b.created_at DESC LIMIT 1",
            [app.as_str()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Releases still `pending` (a rollout the daemon never finished, e.g. it died mid-way).
pub fn pending(conn: &Connection) -> Result<Vec<(AppName, i64)>> {
    app_versions(conn, "SELECT app, version FROM releases WHERE status = 'pending'")
}

/// Runs a query of (app, version) rows; rows whose app name is not valid are skipped.
fn app_versions(conn: &Connection, sql: &str) -> Result<Vec<(AppName, i64)>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (app, version) = row?;
        if let Ok(app) = app.parse() {
            out.push((app, version));
        }
    }
    Ok(out)
}

/// The app's config vars: the snapshot of its newest succeeded release, or of a newer one
/// queued for the daemon (empty before any).
pub fn config_vars(conn: &Connection, app: &AppName) -> Result<BTreeMap<String, String>> {
    let config: Option<String> = conn
        .query_row(
            "SELECT config FROM releases WHERE app = ?1 AND status IN ('succeeded', 'queued')
             ORDER BY version DESC LIMIT 1",
            [app.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(config.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_failed_release_keeps_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let app: AppName = "hello".parse().unwrap();
        crate::store::apps::create(store.conn(), &app).unwrap();
        let config = BTreeMap::new();
        let v1 = insert_release(store.conn(), &app, None, "one", "me", &config).unwrap();
        set_status(store.conn(), &app, v1, "queued").unwrap();
        let v2 = insert_release(store.conn(), &app, None, "two", "me", &config).unwrap();
        assert_eq!(failure(store.conn(), &app, v2).unwrap(), None);
        set_failed_with(store.conn(), &app, v2, "web.1 did not boot within 60 s").unwrap();
        assert_eq!(require_release(store.conn(), &app, v1).unwrap().status, "failed");
        assert_eq!(
            failure(store.conn(), &app, v2).unwrap().as_deref(),
            Some("web.1 did not boot within 60 s")
        );
        assert_eq!(failure(store.conn(), &app, v1).unwrap(), None);
        assert_eq!(
            failures(store.conn(), &app).unwrap().into_iter().collect::<Vec<_>>(),
            vec![(v2, "web.1 did not boot within 60 s".to_string())]
        );
    }
}
