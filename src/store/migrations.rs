//! Forward-only schema migrations, tracked by `PRAGMA user_version`. Append to [`MIGRATIONS`];
//! never edit or delete a shipped entry — databases in the field have already run it.

use rusqlite::{Connection, TransactionBehavior};

use super::{Result, StoreError};

pub const MIGRATIONS: &[&str] = &[
    // v1: the spine — apps, builds, releases, config, formation, dynos, ssh keys.
    r#"
    CREATE TABLE apps (
        name            TEXT PRIMARY KEY,
        created_at      TEXT NOT NULL,
        current_release INTEGER            -- version of the release the dynos run; NULL before the first deploy
    );
    CREATE TABLE builds (
        id            TEXT PRIMARY KEY,    -- also the release dir and slug file name
        app           TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        commit_sha    TEXT NOT NULL,
        stack         TEXT NOT NULL,       -- python | generic
        process_types TEXT NOT NULL,       -- JSON object: type -> command
        slug_bytes    INTEGER NOT NULL,
        created_at    TEXT NOT NULL
    );
    CREATE TABLE releases (
        app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        build_id    TEXT REFERENCES builds(id),
        description TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        status      TEXT NOT NULL,         -- pending | succeeded | failed
        config      TEXT NOT NULL DEFAULT '{}',  -- JSON snapshot of config vars
        PRIMARY KEY (app, version)
    );
    CREATE TABLE config_vars (
        app   TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        key   TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (app, key)
    );
    CREATE TABLE formation (
        app      TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        type     TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 0),
        PRIMARY KEY (app, type)
    );
    CREATE TABLE dynos (
        id         INTEGER PRIMARY KEY,
        app        TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        type       TEXT NOT NULL,
        num        INTEGER NOT NULL,
        release    INTEGER NOT NULL,
        command    TEXT NOT NULL,
        state      TEXT NOT NULL,          -- starting | up | crashed | stopping | down
        port       INTEGER,
        pid        INTEGER,                -- the dyno's main process, also its process group id
        pid_start  INTEGER,                -- /proc start time of pid: guards against pid reuse
        shim_pid   INTEGER,                -- the supervising shim that holds the output pipes
        shim_start INTEGER,
        restarts   INTEGER NOT NULL DEFAULT 0,
        started_at TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX dynos_by_app ON dynos(app, type, num);
    CREATE TABLE ssh_keys (
        name        TEXT PRIMARY KEY,
        public_key  TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    "#,
    // v2: custom domains (router), release kinds and release-phase results, dependency keys.
    r#"
    CREATE TABLE domains (
        host       TEXT PRIMARY KEY,      -- lowercase; a host belongs to at most one app
        app        TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
        created_at TEXT NOT NULL
    );
    ALTER TABLE releases ADD COLUMN kind TEXT NOT NULL DEFAULT 'deploy';  -- deploy | config | rollback
    ALTER TABLE releases ADD COLUMN release_phase TEXT;                   -- NULL (none) | succeeded | failed: why
    ALTER TABLE builds ADD COLUMN deps_key TEXT;                          -- dependency-environment key
    -- An app's config is the snapshot of its newest succeeded release, so a failed change
    -- leaves nothing to undo; the separate table was never written.
    DROP TABLE config_vars;
    "#,
    // v3: ps:stop keeps a dyno down until ps:restart or ps:scale. (It first went into v1 by
    // mistake after v1 had run on a server: shipped migrations are never edited.)
    r#"
    ALTER TABLE dynos ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0;
    "#,
    // v4: where a build's process types came from: 'Procfile' or 'detected Django' (…); NULL for
    // builds made before it was recorded.
    r#"
    ALTER TABLE builds ADD COLUMN process_types_source TEXT;
    "#,
    // v5: why a failed release failed (NULL for any other, and for releases failed before v5).
    r#"
    ALTER TABLE releases ADD COLUMN failure TEXT;
    "#,
    // v6: key roles. Keys added before v6 become admins (they could run everything), so no
    // install loses access; `apps` is a comma-separated list of app names (deploy keys only).
    r#"
    ALTER TABLE ssh_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
    ALTER TABLE ssh_keys ADD COLUMN apps TEXT NOT NULL DEFAULT '';
    ALTER TABLE ssh_keys ADD COLUMN allow_run INTEGER NOT NULL DEFAULT 0;
    "#,
    // v7: memory quota per process type (`ps:resize`), in bytes; NULL: the `dyno_memory` setting.
    r#"
    ALTER TABLE formation ADD COLUMN memory INTEGER CHECK (memory IS NULL OR memory > 0);
    "#,
    // v8: one unix uid (= gid) per app, from the `app_uids` range; used when the daemon runs as
    // root. A table of its own (not a column of `apps`): `apps:rename` moves the row like any
    // other referencing row, and `apps:destroy` frees the uid through the cascade.
    r#"
    CREATE TABLE app_uids (
        app TEXT PRIMARY KEY REFERENCES apps(name) ON DELETE CASCADE,
        uid INTEGER NOT NULL UNIQUE CHECK (uid > 0)
    );
    "#,
];

/// Brings the schema to the newest version. The version is read first without any write lock:
/// an up-to-date database (every open but the first after an upgrade) is left alone, so opening
/// never waits behind a writer. Otherwise the migrations run in one exclusive transaction that
/// re-reads the version, so two processes opening a fresh database at once cannot both run one.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.len() as i64;
    match user_version(conn)? {
        current if current == known => return Ok(()),
        current if current > known => return Err(StoreError::TooNew { found: current, known }),
        _ => {}
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let current = user_version(&tx)?;
    if current > known {
        return Err(StoreError::TooNew { found: current, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_fresh_database_once_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type='table'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 8);
    }

    #[test]
    fn a_database_from_an_older_version_upgrades_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO apps (name, created_at) VALUES ('hello', 'x');
             INSERT INTO dynos (app, type, num, release, command, state, updated_at)
             VALUES ('hello', 'web', 1, 1, 'run', 'up', 'x');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let stopped: i64 = conn.query_row("SELECT stopped FROM dynos", [], |r| r.get(0)).unwrap();
        assert_eq!(stopped, 0);
        let kind_default: i64 = conn
            .query_row("SELECT count(*) FROM pragma_table_info('releases') WHERE name = 'kind'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kind_default, 1);
    }

    #[test]
    fn keys_from_before_v6_become_admins() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        for sql in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute(
            "INSERT INTO ssh_keys (name, public_key, fingerprint, created_at) VALUES ('old', 'k', 'f', 't')",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let keys = crate::store::keys::list(&conn).unwrap();
        assert_eq!(keys[0].role, crate::store::keys::Role::Admin);
        assert!(keys[0].apps.is_empty() && !keys[0].allow_run);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::TooNew { found: 99, .. })));
    }

    #[test]
    fn opening_an_up_to_date_database_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut first = Connection::open(&path).unwrap();
        first.pragma_update(None, "journal_mode", "WAL").unwrap();
        migrate(&mut first).unwrap();
        // Another process's writer holds the write lock for as long as it likes.
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO apps (name, created_at) VALUES ('w', 'x');")
            .unwrap();
        let mut reader = Connection::open(&path).unwrap();
        reader.busy_timeout(std::time::Duration::ZERO).unwrap(); // any lock wait fails at once
        migrate(&mut reader).unwrap();
        let apps: i64 = reader.query_row("SELECT count(*) FROM apps", [], |r| r.get(0)).unwrap();
        assert_eq!(apps, 0, "the writer's row is not committed yet");
        writer.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused_even_while_a_writer_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let first = Connection::open(&path).unwrap();
        first.pragma_update(None, "journal_mode", "WAL").unwrap();
        first.pragma_update(None, "user_version", 99).unwrap();
        first.execute_batch("BEGIN IMMEDIATE; CREATE TABLE t (x);").unwrap();
        let mut reader = Connection::open(&path).unwrap();
        reader.busy_timeout(std::time::Duration::ZERO).unwrap();
        let err = migrate(&mut reader).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
        assert!(err.to_string().contains("upgrade slipway"), "{err}");
    }

    #[test]
    fn a_failing_migration_leaves_the_version_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE apps (x);").unwrap();
        assert!(migrate(&mut conn).is_err());
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 0);
    }
}
