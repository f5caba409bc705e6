//! Operating a server: `status` (text and `--json`, exit 1 with the daemon down) and
//! `backup`/`restore` of a running deployed app onto a fresh home.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// One GET through the router with `Host: host`.
fn get(router: &str, host: &str) -> Option<(u16, String)> {
    router_get(router, host, "/")
}

fn wait_for_body(router: &str, host: &str, body: &str) -> bool {
    wait_until(Duration::from_secs(30), || get(router, host).is_some_and(|(s, b)| s == 200 && b == body))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
        text.contains("single-user mode: apps run as ")
            || text.contains("per-app users: each app runs as its own uid"),
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

#[test]
fn backup_of_a_running_app_restores_onto_a_fresh_home() {
    let mut old = Slipway::new();
    old.start_daemon();
    let repo = GitRepo::init(&old.root().join("work"));
    repo.commit_files(
        &[
            ("Procfile", "web: python3 server v1\n"),
            ("server", stdlib_server(r#"sys.argv[1] + " " + os.environ.get("GREETING", "-")"#).as_str()),
        ],
        "v1",
    );
    let (ok, out) = old.push_local(&repo, "hello");
    assert!(ok, "deploy failed:\n{out}\n{}", old.diagnostics());
    old.cmd_ok(&["config:set", "hello", "GREETING=hi there"]);
    old.cmd_ok(&["domains:add", "hello", "www.example.test"]);
    assert!(wait_for_body(&old.router_addr, "hello.localhost", "v1 hi there"), "{}", old.diagnostics());

    // While the daemon and the app run.
    let archive = old.root().join("backup.tar.gz");
    let archive_s = archive.to_string_lossy().to_string();
    let out = old.cmd_ok(&["backup", &archive_s]);
    assert!(out.contains("1 app(s)"), "{out}");
    assert!(archive.is_file());
    let again = old.cmd(&["backup", &archive_s]);
    assert!(!again.status.success() && stderr(&again).contains("--force"), "{}", describe(&again));
    old.cmd_ok(&["backup", &archive_s, "--force"]);
    let leftovers: Vec<_> = std::fs::read_dir(old.root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".backup.tar.gz"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    let mut new = Slipway::new();
    let out = new.cmd_ok(&["restore", &archive_s]);
    assert!(out.contains("apps:     1 (hello)"), "{out}");
    assert!(out.contains("releases: 2"), "{out}");
    let hook = std::fs::read_to_string(new.home.join("repos/hello.git/hooks/pre-receive")).unwrap();
    assert!(hook.contains("hook pre-receive"), "{hook}");
    new.start_daemon();
    assert!(
        wait_for_body(&new.router_addr, "hello.localhost", "v1 hi there"),
        "the restored app does not answer:\n{}",
        new.diagnostics()
    );
    assert!(wait_for_body(&new.router_addr, "www.example.test", "v1 hi there"));
    for args in
        [["releases", "hello", "--json"], ["config", "hello", "--json"], ["domains", "hello", "--json"]]
    {
        assert_eq!(old.json(&args), new.json(&args), "{args:?} differ after the restore");
    }
    // The old server's dynos were not adopted by the new daemon: both still serve.
    assert!(wait_for_body(&old.router_addr, "hello.localhost", "v1 hi there"));

    // A push to the restored home builds and deploys (repo and hook restored).
    repo.commit_files(&[("Procfile", "web: python3 server v2\n")], "v2");
    let (ok, out) = new.push_local(&repo, "hello");
    assert!(ok, "push to the restored home failed:\n{out}\n{}", new.diagnostics());
    assert!(wait_for_body(&new.router_addr, "hello.localhost", "v2 hi there"), "{}", new.diagnostics());

    // Refused while the daemon runs, and onto a home with apps without --force.
    let out = new.cmd(&["restore", &archive_s]);
    assert!(!out.status.success() && stderr(&out).contains("daemon is running"), "{}", describe(&out));
    new.stop_daemon();
    let out = new.cmd(&["restore", &archive_s]);
    assert!(!out.status.success() && stderr(&out).contains("--force"), "{}", describe(&out));
    // --force replaces the apps, but not under dynos that still run from them.
    let out = new.cmd(&["restore", &archive_s, "--force"]);
    assert!(!out.status.success() && stderr(&out).contains("still run"), "{}", describe(&out));
    new.kill_dynos();
    let mut out = None;
    wait_until(Duration::from_secs(10), || {
        out = Some(new.cmd(&["restore", &archive_s, "--force"]));
        out.as_ref().is_some_and(|o| o.status.success())
    });
    let out = out.expect("restore ran");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("apps:     1 (hello)"), "{}", describe(&out));
    let releases = new.json(&["releases", "hello", "--json"]);
    assert_eq!(releases.as_array().map(Vec::len), Some(2), "the forced restore kept v3: {releases}");
}

/// (name, kind, content or link target) of one crafted archive entry.
type Entry<'a> = (&'a str, &'a str, &'a str);

/// Writes a .tar.gz with python3's tarfile: `entries` are (name, kind, content or link target).
fn craft_archive(path: &Path, entries: &[Entry]) {
    let spec = serde_json::to_string(entries).expect("encode the entries");
    let script = r#"import io, json, sys, tarfile
with tarfile.open(sys.argv[1], "w:gz") as t:
    for name, kind, data in json.loads(sys.argv[2]):
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = data
            t.addfile(info)
        else:
            info.size = len(data.encode())
            t.addfile(info, io.BytesIO(data.encode()))
"#;
    let out =
        Command::new("python3").arg("-c").arg(script).arg(path).arg(spec).output().expect("run python3");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn tampered_archives_are_refused() {
    let slip = Slipway::new();
    let cases: [(&str, Vec<Entry>); 4] = [
        ("dotdot", vec![("slipway.db", "file", "x"), ("repos/../../escaped", "file", "pwned")]),
        ("absolute", vec![("slipway.db", "file", "x"), ("/tmp/slipway-escaped", "file", "pwned")]),
        ("symlink", vec![("repos/evil.git", "symlink", "/etc"), ("repos/evil.git/passwd", "file", "pwned")]),
        ("unknown", vec![("slipway.db", "file", "x"), ("releases/x/evil", "file", "pwned")]),
    ];
    for (name, entries) in cases {
        let archive = slip.root().join(format!("{name}.tar.gz"));
        craft_archive(&archive, &entries);
        let out = slip.cmd(&["restore", &archive.to_string_lossy()]);
        assert!(!out.status.success(), "{name}: restored:\n{}", describe(&out));
        assert!(stderr(&out).contains("refusing"), "{name}: {}", describe(&out));
        assert!(!slip.root().join("escaped").exists() && !slip.home.join("escaped").exists(), "{name}");
        assert!(!slip.home.join("slipway.db").exists(), "{name}: the database was put in place");
        assert!(!slip.home.join("repos/evil.git").exists(), "{name}");
    }
    assert!(!Path::new("/tmp/slipway-escaped").exists());
}

#[test]
fn backup_never_follows_a_symlink_planted_in_the_home() {
    let slip = Slipway::new();
    slip.cmd_ok(&["apps:create", "hello"]);
    let secret = slip.root().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    std::os::unix::fs::symlink(&secret, slip.home.join("repos/hello.git/leak")).unwrap();
    std::os::unix::fs::symlink(slip.root(), slip.home.join("repos/hello.git/leakdir")).unwrap();
    let archive = slip.root().join("b.tar.gz");
    let out = slip.cmd(&["backup", &archive.to_string_lossy()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("leak is not a regular file"), "{}", describe(&out));
    let list = Command::new("tar").arg("tzf").arg(&archive).output().unwrap();
    let names = stdout(&list);
    assert!(names.contains("repos/hello.git/HEAD") && names.contains("slipway.db"), "{names}");
    assert!(!names.contains("leak"), "a symlink was archived:\n{names}");
    let content = Command::new("sh")
        .arg("-c")
        .arg(format!("zcat {} | grep -c 'top secret'", archive.display()))
        .output()
        .unwrap();
    assert_eq!(stdout(&content).trim(), "0", "the symlink's target was archived");
}
