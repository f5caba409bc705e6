//! `daemon [--foreground|--stop]` and `status`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::{out, print_json};
use crate::daemon::{
    self, client,
    protocol::{Request, Response},
};
use crate::home::Home;
use crate::settings::Settings;

pub fn daemon(home: &Home, foreground: bool, stop: bool) -> anyhow::Result<i32> {
    if stop {
        let no_dynos = crate::router::keeper::live_shims(home) == 0;
        if daemon::running_pid(home).is_none() && no_dynos && crate::router::keeper::stop(home)? {
            // A daemon stopped by systemd (`systemctl stop`, an uninstall) left the router.
            out("slipway router stopped (the daemon was not running, and no dyno is)");
            return Ok(0);
        }
        daemon::stop(home)?;
        // The router outlives the daemon and keeps serving the dynos; with no dyno left (after
        // `ps:stop --all`, as an uninstall does) there is nothing to serve, and it stops too.
        if no_dynos {
            if crate::router::keeper::stop(home)? {
                out("slipway daemon and router stopped (no dyno was running)");
            } else {
                out("slipway daemon stopped");
            }
        } else {
            out("slipway daemon stopped; dynos and the router keep running");
        }
        return Ok(0);
    }
    daemon::start(home, foreground)?;
    Ok(0)
}

/// `status [--json]`: the server at a glance. Everything but the daemon's answer is read from
/// the home itself (SQLite opened read-only, /proc, /sys), so it prints all of it with the
/// daemon down too, and then exits 1.
pub fn status(home: &Home, json: bool) -> anyhow::Result<i32> {
    let report = gather(home);
    let code = if report.daemon.running { 0 } else { 1 };
    // Why the daemon did not answer, also as the one `slipway: …` line on stderr every failing
    // command prints (scripts and `slipway status || …` see it there).
    let fail = |code: i32| {
        if let Some(why) = &report.daemon_error {
            eprintln!("slipway: {why}");
        }
        Ok(code)
    };
    if json {
        print_json(&report)?;
        return fail(code);
    }
    let d = &report.daemon;
    if d.running {
        let uptime = d.uptime_seconds.map(format_duration).unwrap_or_else(|| "?".into());
        out(&format!(
            "Daemon:   running, pid {}, version {}, up {uptime}, {} dynos",
            d.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            d.version.as_deref().unwrap_or("?"),
            d.dynos.unwrap_or(0),
        ));
    } else {
        out("Daemon:   not running");
    }
    let r = &report.router;
    let https = match &r.https_addr {
        Some(addr) => format!("HTTPS {addr}"),
        None => "HTTPS off".to_string(),
    };
    match r.pid {
        Some(pid) => out(&format!(
            "Router:   up, pid {pid}, version {}, HTTP {}, {https} (apps at <app>.{})",
            r.version.as_deref().unwrap_or("?"),
            r.addr,
            r.domain
        )),
        None => out(&format!("Router:   down, HTTP {}, {https} (apps at <app>.{})", r.addr, r.domain)),
    }
    out(&format!("Home:     {}", report.home));
    match (&report.disk.free_bytes, &report.disk.total_bytes) {
        (Some(free), Some(total)) => out(&format!(
            "Disk:     {} free of {} ({:.0} %)",
            human(*free),
            human(*total),
            report.disk.free_percent.unwrap_or(0.0)
        )),
        _ => out("Disk:     free space unknown"),
    }
    let u = &report.disk.usage;
    out(&format!(
        "Use:      {} in all: slugs {}, releases {}, repos {}, caches {}, logs {}, database {}",
        human(u.total),
        human(u.slugs),
        human(u.releases),
        human(u.repos),
        human(u.cache),
        human(u.logs),
        human(u.database)
    ));
    let states: Vec<String> = report.dynos.iter().map(|(state, n)| format!("{n} {state}")).collect();
    let states = if states.is_empty() { "none".to_string() } else { states.join(", ") };
    out(&format!("Apps:     {}; dynos: {states}", report.apps));
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    out(&format!(
        "Kernel:   landlock {}, cgroup v2 {}",
        yes_no(report.kernel.landlock),
        yes_no(report.kernel.cgroup_v2)
    ));
    out(&format!("Cgroups:  {}", report.kernel.cgroups));
    out(&format!("Mode:     {}", report.mode.description));
    out(&format!("Sandbox:  {}", report.sandbox));
    if report.problems.is_empty() {
        out("Problems: none");
    } else {
        out("Problems:");
        for problem in &report.problems {
            out(&format!("  ! {problem}"));
        }
    }
    fail(code)
}

#[derive(Debug, Serialize)]
struct StatusReport {
    daemon: DaemonStatus,
    router: RouterStatus,
    home: String,
    disk: DiskStatus,
    apps: usize,
    /// Dynos by state (`up`, `crashed`, …), from the database.
    dynos: BTreeMap<String, usize>,
    kernel: KernelStatus,
    mode: ModeStatus,
    /// `sandbox::status_line`.
    sandbox: String,
    problems: Vec<String>,
    #[serde(skip)]
    daemon_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct DaemonStatus {
    running: bool,
    pid: Option<i32>,
    version: Option<String>,
    uptime_seconds: Option<u64>,
    /// Dynos the daemon supervises (its own count).
    dynos: Option<usize>,
}

#[derive(Debug, Serialize)]
struct RouterStatus {
    addr: String,
    /// Where HTTPS is served (`https_addr`); `None` when it is `off`.
    https_addr: Option<String>,
    domain: String,
    /// The router process (`run/router`) is alive; it serves whether the daemon runs or not.
    running: bool,
    pid: Option<i32>,
    version: Option<String>,
}

#[derive(Debug, Serialize)]
struct DiskStatus {
    free_bytes: Option<u64>,
    total_bytes: Option<u64>,
    free_percent: Option<f64>,
    usage: DiskUsage,
}

/// Bytes on disk (allocated blocks, hard links counted once, symlinks not followed), like `du`.
#[derive(Debug, Default, Serialize)]
struct DiskUsage {
    slugs: u64,
    releases: u64,
    repos: u64,
    cache: u64,
    logs: u64,
    database: u64,
    total: u64,
}

#[derive(Debug, Serialize)]
struct KernelStatus {
    landlock: bool,
    cgroup_v2: bool,
    /// Where dynos and builds get their memory and process limits, or `unavailable (why)`.
    cgroups: String,
}

#[derive(Debug, Serialize)]
struct ModeStatus {
    user: String,
    root: bool,
    description: String,
}

fn gather(home: &Home) -> StatusReport {
    let mut problems = Vec::new();
    let settings = match Settings::load(home) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("settings: {e}"));
            None
        }
    };

    let pid = daemon::running_pid(home);
    let mut daemon = DaemonStatus { running: false, pid, version: None, uptime_seconds: None, dynos: None };
    let mut daemon_error = None;
    let mut domain = settings.as_ref().map(|s| s.domain.clone()).unwrap_or_else(|| "?".into());
    match client::call(home, &Request::Status, Duration::from_secs(10)) {
        Ok(Response::Status { pid, version, dynos, domain: served, .. }) => {
            daemon.running = true;
            daemon.pid = Some(pid as i32);
            daemon.uptime_seconds = process_uptime(pid as i32);
            if version != env!("CARGO_PKG_VERSION") {
                problems.push(format!(
                    "the daemon runs slipway {version}, this binary is {}: restart it (slipway daemon --stop; slipway daemon)",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            daemon.version = Some(version);
            daemon.dynos = Some(dynos);
            domain = served;
        }
        Ok(other) => {
            problems.push(format!("unexpected answer from the daemon: {other:?}"));
            daemon_error = Some(format!("unexpected answer from the daemon: {other:?}"));
        }
        Err(e) => {
            match (&e, pid) {
                (client::ClientError::NotRunning(_), Some(pid)) => {
                    problems.push(format!("the daemon (pid {pid}) does not answer on its control socket"))
                }
                (client::ClientError::NotRunning(_), None) => {
                    problems.push("the daemon is not running: start it with `slipway daemon`".into())
                }
                _ => problems.push(format!("the daemon does not answer: {e}")),
            }
            daemon_error = Some(e.to_string());
        }
    }
    let announced = crate::router::control::Announcement::read(home).filter(|a| a.alive());
    if announced.is_none() {
        problems.push(if daemon_error.is_none() {
            "the router is not running (the daemon starts it again within a moment)".to_string()
        } else {
            "the router is not running: apps are not served (start the daemon: `slipway daemon`)".to_string()
        });
    }
    if let Some(a) = announced.as_ref().filter(|a| a.version != env!("CARGO_PKG_VERSION")) {
        problems.push(format!(
            "the router (pid {}) is slipway {}, this binary is {}: restart the daemon, which hands the router over",
            a.pid,
            a.version,
            env!("CARGO_PKG_VERSION")
        ));
    }
    // A router that could not bind its HTTPS address serves plain HTTP only (and says why in
    // logs/router.log): nothing answering there is a problem worth a line.
    if let (Some(_), Some(addr)) = (&announced, settings.as_ref().and_then(|s| s.https_addr)) {
        if !listening(addr) {
            problems.push(format!(
                "nothing listens for HTTPS on {addr} (see logs/router.log; choose another address with: slipway settings:set https_addr=IP:PORT)"
            ));
        }
    }
    let router = RouterStatus {
        addr: settings.as_ref().map(|s| s.router_addr.to_string()).unwrap_or_else(|| "?".into()),
        https_addr: match settings.as_ref() {
            Some(s) => s.https_addr.map(|a| a.to_string()),
            None => Some("?".into()),
        },
        domain,
        running: announced.is_some(),
        pid: announced.as_ref().map(|a| a.pid),
        version: announced.map(|a| a.version),
    };

    let (free_bytes, total_bytes) = match nix::sys::statvfs::statvfs(home.root()) {
        Err(nix::errno::Errno::ENOENT) => {
            problems
                .push(format!("{} does not exist (nothing was deployed here yet)", home.root().display()));
            (None, None)
        }
        Ok(v) => {
            let frag = v.fragment_size();
            (Some(v.blocks_available() * frag), Some(v.blocks() * frag))
        }
        Err(e) => {
            problems.push(format!("cannot read the free space of {}: {e}", home.root().display()));
            (None, None)
        }
    };
    let free_percent = match (free_bytes, total_bytes) {
        (Some(free), Some(total)) if total > 0 => Some(free as f64 * 100.0 / total as f64),
        _ => None,
    };
    if let Some(pct) = free_percent.filter(|p| *p < 10.0) {
        problems.push(format!("the disk of {} is {:.1} % free (under 10 %)", home.root().display(), pct));
    }
    let usage = disk_usage(home);

    let mut apps = 0;
    let mut dynos = BTreeMap::new();
    if home.db().is_file() {
        match read_db(home) {
            Ok((n, by_state)) => {
                apps = n;
                dynos = by_state;
            }
            Err(e) => problems.push(format!("reading {}: {e}", home.db().display())),
        }
    }
    if let Some(n) = dynos.get("crashed") {
        problems.push(format!("{n} dyno(s) crashed (see slipway ps APP and slipway logs APP)"));
    }

    // Dynos run as the daemon's user, or as their app's uid when that is root: the running
    // daemon's, else whoever runs this (the home's owner, see Home::become_owner).
    let uid = daemon
        .pid
        .filter(|_| daemon.running)
        .and_then(|pid| std::fs::metadata(format!("/proc/{pid}")).ok())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"));
    // A root daemon's cgroups, seen from the platform user's shell: whether this process could
    // write them says nothing; the daemon, being root, can (its layout, from its own cgroup).
    let root_daemon = daemon.pid.filter(|_| daemon.running && uid == 0 && !nix::unistd::geteuid().is_root());
    let cgroups = match root_daemon {
        Some(pid) => crate::cgroup::find_layout_of(pid),
        None => crate::cgroup::detect(),
    };
    let kernel = KernelStatus {
        landlock: matches!(crate::sandbox::support(), crate::sandbox::Support::Landlock(_)),
        cgroup_v2: std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        cgroups: match cgroups {
            Ok(layout) => format!("{}: dyno memory, process and CPU limits", layout.describe()),
            Err(why) => {
                format!("unavailable ({why}): dynos and builds run without memory and process limits")
            }
        },
    };

    let root = uid == 0;
    let range = match crate::settings::Settings::load(home) {
        Ok(settings) => settings.app_uids,
        Err(e) => {
            problems.push(e.to_string());
            crate::users::UidRange { first: 200_000, last: 299_999 }
        }
    };
    let description = crate::users::status_line(uid, &user, range, kernel.landlock);

    StatusReport {
        daemon,
        router,
        home: home.root().display().to_string(),
        disk: DiskStatus { free_bytes, total_bytes, free_percent, usage },
        apps,
        dynos,
        kernel,
        sandbox: crate::sandbox::status_line(crate::sandbox::support()),
        mode: ModeStatus { user, root, description },
        problems,
        daemon_error,
    }
}

/// Apps and dynos by state, through a read-only connection (no migration, no WAL switch).
fn read_db(home: &Home) -> anyhow::Result<(usize, BTreeMap<String, usize>)> {
    let conn = rusqlite::Connection::open_with_flags(home.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(15))?;
    let apps = crate::store::apps::list(&conn)?.len();
    let mut by_state = BTreeMap::new();
    for dyno in crate::store::dynos::all(&conn)? {
        *by_state.entry(dyno.state.as_str().to_string()).or_insert(0) += 1;
    }
    Ok((apps, by_state))
}

/// Seconds since `pid` started: its start time in /proc/PID/stat (clock ticks after boot)
/// against /proc/uptime.
fn process_uptime(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let since_boot: f64 =
        std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let started = start_ticks as f64 / ticks as f64;
    Some((since_boot - started).max(0.0) as u64)
}

fn disk_usage(home: &Home) -> DiskUsage {
    let root = home.root();
    let mut seen = HashSet::new();
    let mut du = |name: &str| walk_size(&root.join(name), &mut seen);
    let mut usage = DiskUsage {
        slugs: du("slugs"),
        // Release dirs and the shared environments they link to (once inside them).
        releases: du("releases") + du("envs"),
        repos: du("repos"),
        cache: du("cache"),
        logs: du("logs"),
        database: du("slipway.db") + du("slipway.db-wal") + du("slipway.db-shm"),
        total: 0,
    };
    usage.total = usage.slugs + usage.releases + usage.repos + usage.cache + usage.logs + usage.database;
    usage
}

/// Allocated bytes under `path`, not following symlinks, each inode once.
fn walk_size(path: &std::path::Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let mut total = 0;
    if seen.insert((meta.dev(), meta.ino())) {
        total += meta.blocks() * 512;
    }
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                total += walk_size(&entry.path(), seen);
            }
        }
    }
    total
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// True when something accepts TCP connections at `addr` (an unspecified address is tried on
/// loopback).
fn listening(addr: std::net::SocketAddr) -> bool {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr = match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(loopback);
    }
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::{format_duration, human};

    #[test]
    fn formats() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(format_duration(59), "59s");
        assert_eq!(format_duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(format_duration(2 * 86400 + 60), "2d 0h 1m");
    }
}
