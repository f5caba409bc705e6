//! Queries on `domains`: the custom hostnames an app answers to besides `<app>.<SLIPWAY_DOMAIN>`.
//! `host` is the primary key, so a host belongs to at most one app; rows hold hostnames already
//! validated and lowercased by [`validate_host`]. Deleting an app deletes its domains (cascade).

use std::net::IpAddr;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{Result, StoreError};
use crate::app::AppName;
use crate::timefmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainRow {
    pub host: String,
    pub app: String,
    pub created_at: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{host}' is not a valid hostname: {why}")]
pub struct InvalidHost {
    pub host: String,
    pub why: &'static str,
}

/// Checks and normalises a hostname as a user typed it: lowercased, one trailing dot dropped;
/// 1 to 253 characters; labels of 1 to 63 `[a-z0-9-]` not starting or ending with `-`; at
/// least two labels; not an IP address, and a last label that is not all digits (so nothing
/// that a resolver could read as an address).
pub fn validate_host(input: &str) -> std::result::Result<String, InvalidHost> {
    // Keep the echoed input printable and short: it may be hostile.
    let shown = || input.chars().filter(|c| !c.is_control()).take(64).collect::<String>();
    let invalid = |why| Err(InvalidHost { host: shown(), why });
    let host = input.trim().to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() || host.len() > 253 {
        return invalid("use 1 to 253 characters");
    }
    if host.parse::<IpAddr>().is_ok() {
        return invalid("an IP address cannot be an app's domain");
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return invalid("use a fully qualified name with at least one dot, like www.example.com");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return invalid("each dot-separated label needs 1 to 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return invalid("use only letters, digits, dashes and dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid("a label cannot start or end with a dash");
        }
    }
    if labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return invalid("the last label cannot be all digits");
    }
    Ok(host.to_string())
}

/// An app's custom domains, by host.
pub fn for_app(conn: &Connection, app: &AppName) -> Result<Vec<DomainRow>> {
    let mut stmt = conn.prepare("SELECT host, app, created_at FROM domains WHERE app = ?1 ORDER BY host")?;
    let rows = stmt.query_map([app.as_str()], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every custom domain of every app (what the router's table is built from).
pub fn all(conn: &Connection) -> Result<Vec<DomainRow>> {
    let mut stmt = conn.prepare("SELECT host, app, created_at FROM domains ORDER BY app, host")?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The app a host belongs to, if any. `host` must already be normalised.
pub fn owner(conn: &Connection, host: &str) -> Result<Option<String>> {
    Ok(conn.query_row("SELECT app FROM domains WHERE host = ?1", [host], |r| r.get(0)).optional()?)
}

/// Adds a normalised host to an app; a host that already belongs to an app (this one or
/// another) is a conflict naming the owner.
pub fn add(conn: &Connection, app: &AppName, host: &str) -> Result<()> {
    let inserted = conn.execute(
        "INSERT INTO domains (host, app, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(host) DO NOTHING",
        params![host, app.as_str(), timefmt::now()],
    )?;
    if inserted == 0 {
        let owner = owner(conn, host)?.unwrap_or_default();
        return Err(StoreError::Conflict(if owner == app.as_str() {
            format!("{host} is already a domain of {app}")
        } else {
            format!("{host} already belongs to app '{owner}'; remove it there first")
        }));
    }
    Ok(())
}

/// Removes a host from an app; a host the app does not have is an error.
pub fn remove(conn: &Connection, app: &AppName, host: &str) -> Result<()> {
    if conn.execute("DELETE FROM domains WHERE host = ?1 AND app = ?2", params![host, app.as_str()])? == 0 {
        return Err(StoreError::Conflict(format!("{app} has no domain {host}")));
    }
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DomainRow> {
    Ok(DomainRow { host: r.get(0)?, app: r.get(1)?, created_at: r.get(2)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn hostnames_are_lowercased_and_checked() {
        assert_eq!(validate_host("WWW.Example.COM").unwrap(), "www.example.com");
        assert_eq!(validate_host("example.com.").unwrap(), "example.com");
        assert_eq!(validate_host("a-1.b2.io").unwrap(), "a-1.b2.io");
        assert_eq!(validate_host(&format!("{}.com", "a".repeat(63))).unwrap().len(), 67);
        let long = vec!["a".repeat(60); 5].join(".");
        assert!(long.len() > 253);
        for bad in [
            "",
            ".",
            "localhost",
            "example..com",
            ".example.com",
            "-a.example.com",
            "a-.example.com",
            "a_b.example.com",
            "www.example.com:80",
            "ex ample.com",
            "exämple.com",
            "127.0.0.1",
            "1.2.3",
            "::1",
            "[::1]",
            "x.y/z",
            long.as_str(),
        ] {
            assert!(validate_host(bad).is_err(), "{bad:?}");
        }
        assert!(validate_host(&format!("{}.com", "a".repeat(64))).is_err());
        let err = validate_host("Bad_Host.com").unwrap_err();
        assert!(err.to_string().contains("'Bad_Host.com'"), "{err}");
    }

    #[test]
    fn a_host_belongs_to_one_app() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (a, b): (AppName, AppName) = ("alpha".parse().unwrap(), "beta".parse().unwrap());
        crate::store::apps::create(store.conn(), &a).unwrap();
        crate::store::apps::create(store.conn(), &b).unwrap();
        add(store.conn(), &a, "www.example.com").unwrap();
        let again = add(store.conn(), &a, "www.example.com").unwrap_err().to_string();
        assert!(again.contains("already a domain of alpha"), "{again}");
        let taken = add(store.conn(), &b, "www.example.com").unwrap_err().to_string();
        assert!(taken.contains("'alpha'"), "{taken}");
        add(store.conn(), &b, "api.example.com").unwrap();
        assert_eq!(owner(store.conn(), "www.example.com").unwrap().as_deref(), Some("alpha"));
        assert_eq!(all(store.conn()).unwrap().len(), 2);
        assert!(remove(store.conn(), &b, "www.example.com").is_err());
        remove(store.conn(), &a, "www.example.com").unwrap();
        assert!(for_app(store.conn(), &a).unwrap().is_empty());
        crate::store::apps::delete(store.conn(), &b).unwrap();
        assert!(all(store.conn()).unwrap().is_empty(), "domains are deleted with their app");
    }
}
