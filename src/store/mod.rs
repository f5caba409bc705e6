//! All state in one SQLite file (DESIGN.md, "State"). WAL mode and a busy timeout let the CLI,
//! the build hook and the daemon share it; every state change is one transaction, and opening
//! an up-to-date database writes nothing (readers never queue behind a writer). The schema
//! is versioned by `PRAGMA user_version` with forward-only migrations ([`migrations`]).
//!
//! One file per table's queries; they take `&Connection` so callers can group several into one
//! transaction (`Store::transaction`).

pub mod app_uids;
pub mod apps;
pub mod domains;
pub mod dynos;
pub mod formation;
pub mod keys;
pub mod migrations;
pub mod releases;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the database schema is version {found}, newer than this slipway understands ({known}); upgrade slipway")]
    TooNew { found: i64, known: i64 },
    #[error("app '{0}' does not exist")]
    NoSuchApp(String),
    #[error("app '{0}' already exists")]
    AppExists(String),
    #[error("app '{app}' has no release {version}")]
    NoSuchRelease { app: String, version: String },
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) and migrates the database. On an up-to-date database in WAL
    /// mode this takes no write lock, so read-only commands never wait behind a writer.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        // Never through a link at the database's name: the home's owner may plant one, and a
        // root daemon opens this file (and makes its -wal and -shm next to wherever it points).
        // The dir holding it is resolved first (a home reached through a link stays fine).
        let resolved = match (path.parent().map(std::fs::canonicalize), path.file_name()) {
            (Some(Ok(dir)), Some(name)) => dir.join(name),
            _ => path.to_path_buf(),
        };
        let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let mut conn = Connection::open_with_flags(&resolved, flags).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(15)).map_err(open_err)?;
        // Switching to WAL needs a write lock; asking does not. A database is switched once, so
        // later opens (every read-only command) never wait behind a writer for this.
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        migrations::migrate(&mut conn)?;
        Ok(Store { conn })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// An IMMEDIATE transaction: takes the write lock up front so two writers never both read
    /// then deadlock on upgrade (SQLITE_BUSY mid-transaction is not retried by busy_timeout).
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_at_the_database_is_refused_a_linked_home_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::symlink(&victim, home.join("slipway.db")).unwrap();
        assert!(Store::open(&home.join("slipway.db")).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!dir.path().join("victim-wal").exists());
        std::fs::remove_file(home.join("slipway.db")).unwrap();
        std::os::unix::fs::symlink(&home, dir.path().join("linked-home")).unwrap();
        Store::open(&dir.path().join("linked-home/slipway.db")).unwrap();
        assert!(home.join("slipway.db").exists());
    }

    #[test]
    fn open_does_not_wait_behind_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.db");
        drop(Store::open(&path).unwrap());
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO apps (name, created_at) VALUES ('w', 'x');")
            .unwrap();
        let started = std::time::Instant::now();
        let store = Store::open(&path).unwrap();
        assert!(apps::list(store.conn()).unwrap().is_empty());
        // busy_timeout is 15 s: any lock wait would show here.
        assert!(started.elapsed() < Duration::from_secs(3), "open took {:?}", started.elapsed());
        writer.execute_batch("COMMIT").unwrap();
    }
}
