//! Operating a server: `status` (text and `--json`, exit 1 with the daemon down).

mod support;

use serde_json::Value;
use support::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_shows_the_server_and_exits_1_without_the_daemon() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let home = slip.home.to_string_lossy().to_string();

    let text = slip.cmd_ok(&["status"]);
    for needle in [
        "Daemon:   running, pid ",
        "Router:   ",
        &slip.router_addr,
        &home,
        "Disk:",
        "slugs",
        "Kernel:",
        "Mode:",
    ] {
        assert!(text.contains(needle), "no {needle:?} in status:\n{text}");
    }
    assert!(
        text.contains("single-user mode: apps run as ") || text.contains("root: apps run as root"),
        "no mode line:\n{text}"
    );

    let json = slip.json(&["status", "--json"]);
    assert_eq!(json["daemon"]["running"], true, "{json}");
    assert!(json["daemon"]["pid"].as_i64().is_some_and(|p| p > 1), "{json}");
    assert_eq!(json["daemon"]["version"], env!("CARGO_PKG_VERSION"), "{json}");
    assert!(json["daemon"]["uptime_seconds"].as_u64().is_some_and(|s| s < 600), "{json}");
    assert_eq!(json["router"]["addr"], slip.router_addr.as_str(), "{json}");
    assert_eq!(json["home"], home.as_str(), "{json}");
    assert!(json["disk"]["free_bytes"].as_u64().is_some_and(|b| b > 0), "{json}");
    assert!(json["disk"]["total_bytes"].as_u64().is_some(), "{json}");
    for key in ["slugs", "releases", "repos", "cache", "logs", "database", "total"] {
        assert!(json["disk"]["usage"][key].is_u64(), "no disk.usage.{key}: {json}");
    }
    assert!(json["disk"]["usage"]["database"].as_u64().is_some_and(|b| b > 0), "{json}");
    assert_eq!(json["apps"], 0, "{json}");
    assert!(json["kernel"]["landlock"].is_boolean() && json["kernel"]["cgroup_v2"].is_boolean(), "{json}");
    assert!(json["mode"]["description"].is_string() && json["mode"]["root"].is_boolean(), "{json}");
    assert!(json["problems"].is_array(), "{json}");

    slip.stop_daemon();
    let out = slip.cmd(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    for needle in ["Daemon:   not running", &home, "Disk:", "Kernel:", "the daemon is not running"] {
        assert!(text.contains(needle), "no {needle:?} in status with the daemon down:\n{text}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().lines().count() == 1 && err.contains("daemon is not running"), "{err:?}");
    let out = slip.cmd(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let json: Value =
        serde_json::from_str(&stdout(&out)).expect("status --json prints JSON with the daemon down");
    assert_eq!(json["daemon"]["running"], false, "{json}");
    assert!(json["problems"].to_string().contains("not running"), "{json}");
}
