//! What the daemon and the router process say to each other, and the files they share under
//! `run/`:
//! - `run/router.sock`: the router's control socket; one JSON object per line each way
//!   ([`ToRouter`], [`FromRouter`]);
//! - `run/router`: the router's announcement, `PID START VERSION CONFIG` ([`Announcement`]),
//!   written (temp file + rename) once it accepts on its address;
//! - `run/routes.json`: the last route table the router was given, so a router started while no
//!   daemon runs serves what was last known;
//! - `logs/router.log`: the router's own log (404s, 431s, accept errors, its start and stop).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RouteTable;
use crate::home::Home;
use crate::settings::Settings;

pub fn socket(home: &Home) -> PathBuf {
    home.run_dir().join("router.sock")
}

pub fn announcement(home: &Home) -> PathBuf {
    home.run_dir().join("router")
}

pub fn routes_file(home: &Home) -> PathBuf {
    home.run_dir().join("routes.json")
}

pub fn log_file(home: &Home) -> PathBuf {
    home.root().join("logs").join("router.log")
}

/// Daemon → router.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToRouter {
    /// Swap in this table (and keep it in `run/routes.json`).
    Routes { table: RouteTable },
    /// Answer [`FromRouter::Drained`] once no request is in flight to `port` (after the
    /// `Routes` that removed it, which came first on the same connection), or after `grace_ms`.
    Drain { id: u64, port: u16, grace_ms: u64 },
    /// A new router accepts on the address: steer new connections to it, finish the requests in
    /// flight (at most `grace_ms`) and exit.
    Retire { grace_ms: u64 },
}

/// Router → daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FromRouter {
    /// `idle`: false when the grace ran out first.
    Drained {
        id: u64,
        idle: bool,
    },
    Retiring,
}

/// `run/router`: which process routes for this home, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub pid: i32,
    /// Its start time (clock ticks since boot), so a recycled pid is never taken for it.
    pub start: u64,
    pub version: String,
    /// [`config_key`] of the settings it started with.
    pub config: String,
}

impl Announcement {
    pub fn parse(text: &str) -> Option<Announcement> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok().filter(|p: &i32| *p > 1)?;
        let start = words.next()?.parse().ok()?;
        let version = words.next()?.to_string();
        let config = words.next()?.to_string();
        if words.next().is_some() {
            return None;
        }
        Some(Announcement { pid, start, version, config })
    }

    pub fn line(&self) -> String {
        format!("{} {} {} {}\n", self.pid, self.start, self.version, self.config)
    }

    /// The announcement on disk, if any (whether its process lives or not).
    pub fn read(home: &Home) -> Option<Announcement> {
        Announcement::parse(&std::fs::read_to_string(announcement(home)).ok()?)
    }

    /// The announced process is running (same pid, same start time).
    pub fn alive(&self) -> bool {
        crate::daemon::process::is_same_process(self.pid, self.start)
    }
}

/// The settings a running router cannot change without a restart, as one word: its addresses
/// (HTTP and HTTPS), its response timeout and the app logs' rotation policy. A daemon adopts a router only when
/// they match its own.
pub fn config_key(settings: &Settings) -> String {
    let https = settings.https_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    format!(
        "addr={},https={https},timeout_ms={},log={}x{}",
        settings.router_addr,
        settings.router_timeout.as_millis(),
        settings.log_policy.max_bytes,
        settings.log_policy.files
    )
}

/// What a starting daemon does about the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// It runs this binary with these settings: keep it.
    Adopt,
    /// None runs: start one.
    Start,
    /// One runs from another binary or with other settings: start a new one beside it, then
    /// retire the old one.
    HandOver,
}

/// `found`: the announcement, if its process is alive; `same_binary`: it runs the daemon's own
/// executable (same path, not replaced since); `config`: the daemon's [`config_key`].
pub fn plan(found: Option<&Announcement>, same_binary: bool, version: &str, config: &str) -> Plan {
    match found {
        None => Plan::Start,
        Some(a) if same_binary && a.version == version && a.config == config => Plan::Adopt,
        Some(_) => Plan::HandOver,
    }
}

/// How long a retiring router may take to finish its requests, and a drain at most: the
/// settings' stop timeout, but never under 5 s.
pub fn retire_grace(settings: &Settings) -> Duration {
    settings.stop_timeout.max(Duration::from_secs(5))
}

/// Replaces `path` with `bytes` through a fresh temp file beside it (`O_EXCL`, `O_NOFOLLOW`)
/// renamed over it: a reader sees the old or the new file, never half of one, and nothing
/// planted at the temp path is followed.
pub fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    crate::home::remove_if_present(&tmp)?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_data()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // The write's error is the one to report; a temp file left over is removed next time.
        crate::home::remove_if_present(&tmp).ok();
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(version: &str, config: &str) -> Announcement {
        Announcement { pid: 42, start: 7, version: version.into(), config: config.into() }
    }

    #[test]
    fn announcements_round_trip_and_junk_is_refused() {
        let a = ann("0.1.0", "addr=127.0.0.1:8080,timeout_ms=30000,log=1x2");
        assert_eq!(Announcement::parse(&a.line()), Some(a));
        for junk in ["", "42", "42 7 0.1.0", "1 7 v c", "x 7 v c", "42 7 v c extra", "42 -1 v c"] {
            assert_eq!(Announcement::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_daemon_adopts_only_its_own_binary_with_its_own_settings() {
        let table: [(Option<Announcement>, bool, Plan); 6] = [
            (None, true, Plan::Start),
            (None, false, Plan::Start),
            (Some(ann("1", "c")), true, Plan::Adopt),
            (Some(ann("1", "c")), false, Plan::HandOver),
            (Some(ann("0", "c")), true, Plan::HandOver),
            (Some(ann("1", "other")), true, Plan::HandOver),
        ];
        for (found, same, want) in table {
            assert_eq!(plan(found.as_ref(), same, "1", "c"), want, "{found:?} same={same}");
        }
    }

    #[test]
    fn messages_are_one_json_object_each() {
        let line = serde_json::to_string(&ToRouter::Drain { id: 3, port: 5001, grace_ms: 10 }).unwrap();
        assert_eq!(line, r#"{"op":"drain","id":3,"port":5001,"grace_ms":10}"#);
        let mut table = RouteTable::new("example.test");
        table.add_app("hello", &["www.hello.test".into()], super::super::AppStatus::NoWebDynos);
        let line = serde_json::to_string(&ToRouter::Routes { table }).unwrap();
        let ToRouter::Routes { table } = serde_json::from_str(&line).unwrap() else { panic!("{line}") };
        assert_eq!(table.lookup("www.hello.test").unwrap().app, "hello");
    }
}
