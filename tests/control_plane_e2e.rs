//! The control plane's races, each found by trying slipway as an operator would, through the
//! real binary: a config change queued behind a push, `ps:stop` in the middle of a deploy, a
//! daemon killed between starting a dyno and recording it, and a database held by another
//! writer during a deploy.
//!
//! The apps are generic (no `.py` file): a stdlib server script named `server` that answers
//! every GET with `CODE MSG`, so a push takes a fraction of a second.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Holds an exclusive (write) lock on the SQLite file argv[1] for argv[2] seconds.
const LOCK_DB: &str = r#"import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN EXCLUSIVE")
open(sys.argv[3], "w").close()
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"#;

/// One GET through the router with `Host: host`, on a fresh connection.
fn get(router: &str, host: &str) -> Option<(u16, String)> {
    router_get(router, host, "/")
}

fn commit(repo: &GitRepo, procfile: &str, code: &str, extra: &[(&str, &str)]) {
    let mut files = vec![
        ("Procfile", procfile.to_string()),
        ("server", stdlib_server(r#""%s MSG=%s" % (sys.argv[1], os.environ.get("MSG", ""))"#)),
    ];
    files.extend(extra.iter().map(|(p, c)| (*p, c.to_string())));
    repo.commit_files(&files, code);
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Waits until `ps` shows exactly `names`, all `up`; returns the dynos.
fn wait_up(slip: &Slipway, names: &[&str]) -> Vec<Value> {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        last = slip.ps_json("hello");
        let mut got: Vec<&str> = last.iter().map(|d| text(d, "name")).collect();
        got.sort_unstable();
        got == names && last.iter().all(|d| text(d, "state") == "up")
    });
    assert!(ok, "wanted {names:?} up, ps: {}\n{}", Value::Array(last.clone()), slip.diagnostics());
    last
}

fn log(slip: &Slipway) -> String {
    std::fs::read_to_string(slip.app_log_path("hello")).unwrap_or_default()
}

/// Case 1: a `config:set` that waited for the deploy lock behind a push released on the old
/// build (it read the app before taking the lock): both said success, the old code served.
#[test]
fn a_config_change_queued_behind_a_push_releases_the_pushed_code() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    commit(&repo, "web: python3 server v1\n", "v1", &[]);
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}\n{}", slip.diagnostics());

    // v2's build waits in bin/pre_compile until the test lets it go, so the config change
    // is certain to queue behind it.
    let gate = slip.root().join("gate");
    let hook = format!("#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.05; done\n", gate.display());
    commit(&repo, "web: python3 server v2\n", "v2", &[("bin/pre_compile", &hook)]);
    std::thread::scope(|s| {
        let push = s.spawn(|| slip.push_local(&repo, "hello"));
        assert!(
            wait_until(Duration::from_secs(30), || log(&slip).contains("Build started")
                && log(&slip).matches("Build started").count() == 2),
            "the second build never started\n{}",
            slip.diagnostics()
        );
        let config = s.spawn(|| slip.cmd(&["config:set", "hello", "MSG=hi"]));
        // The config change is waiting for the lock (it says so) before the build goes on.
        assert!(wait_until(Duration::from_secs(10), || gate_waiting(&slip)));
        std::fs::write(&gate, "").unwrap();
        let (ok, out) = push.join().unwrap();
        assert!(ok, "push of v2 failed:\n{out}\n{}", slip.diagnostics());
        let out = config.join().unwrap();
        assert!(out.status.success(), "config:set failed: {}\n{}", describe(&out), slip.diagnostics());
    });
    let host = "hello.localhost";
    let served = wait_until(Duration::from_secs(20), || {
        get(&slip.router_addr, host).is_some_and(|(s, b)| s == 200 && b == "v2 MSG=hi")
    });
    assert!(
        served,
        "after the push and the config change the app serves {:?}, not v2 with MSG=hi\n{}",
        get(&slip.router_addr, host),
        slip.diagnostics()
    );
    let releases = slip.json(&["releases", "hello", "--json"]);
    let newest = &releases.as_array().unwrap()[0];
    assert_eq!((text(newest, "version"), newest["current"].as_bool()), ("v3", Some(true)), "{releases}");
    let info = slip.json(&["releases:info", "hello", "v3", "--json"]);
    assert_eq!(text(&info, "commit"), repo.head(), "v3 must carry the pushed commit: {info}");
}

/// True once a `config:set` process is blocked on the app's deploy lock (it has the lock file
/// open while the push holds it).
fn gate_waiting(slip: &Slipway) -> bool {
    let lock = slip.home.join("run").join("locks").join("hello.lock");
    let Ok(proc_dir) = std::fs::read_dir("/proc") else { return false };
    proc_dir.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok())).any(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let is_config = String::from_utf8_lossy(&cmdline).contains("config:set");
        is_config
            && std::fs::read_dir(e.path().join("fd"))
                .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == lock)))
                .unwrap_or(false)
    })
}

/// Case 2: `ps:stop APP web` while the new web dyno of a deploy boots wedged the app: the
/// rollout never finished, `ps:restart` answered "a rollout is in progress" until the daemon
/// restarted, and `ps:scale web=1` left zero dynos.
#[test]
fn stopping_web_while_a_deploy_boots_ends_the_deploy_and_leaves_the_app_usable() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_TIMEOUT".into(), "20".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    commit(&repo, "web: python3 server v1\n", "v1", &[]);
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    wait_up(&slip, &["web.1"]);

    // v2's web dyno takes its time to bind.
    let gate = slip.root().join("gate");
    let slow = format!(
        "web: sh -c 'while [ ! -e {} ]; do sleep 0.05; done; exec python3 server v2'\n",
        gate.display()
    );
    commit(&repo, &slow, "v2", &[]);
    std::thread::scope(|s| {
        let push = s.spawn(|| slip.push_local(&repo, "hello"));
        let booting = wait_until(Duration::from_secs(30), || {
            slip.ps_json("hello").iter().any(|d| text(d, "release") == "v2" && text(d, "state") == "starting")
        });
        assert!(booting, "v2's web dyno never started booting\n{}", slip.diagnostics());
        let stop = slip.cmd(&["ps:stop", "hello", "web"]);
        assert!(stop.status.success(), "ps:stop failed: {}", describe(&stop));
        let (ok, out) = push.join().unwrap();
        assert!(!ok, "the deploy whose web dyno was stopped must fail:\n{out}");
        assert!(out.contains("was stopped (ps:stop) before it was ready"), "{out}");
    });
    std::fs::write(&gate, "").unwrap();

    // Nothing is wedged: a restart is accepted at once, and scaling brings web back.
    let restart = slip.cmd(&["ps:restart", "hello"]);
    assert!(restart.status.success(), "ps:restart: {}\n{}", describe(&restart), slip.diagnostics());
    slip.cmd_ok(&["ps:scale", "hello", "web=1"]);
    let up = wait_up(&slip, &["web.1"]);
    assert_eq!(text(&up[0], "release"), "v1", "the failed v2 must not run");
    let served = wait_until(Duration::from_secs(20), || {
        get(&slip.router_addr, "hello.localhost").is_some_and(|(s, b)| s == 200 && b.starts_with("v1"))
    });
    assert!(served, "{:?}\n{}", get(&slip.router_addr, "hello.localhost"), slip.diagnostics());
}

/// Pids of the app's dyno processes running `sleep` (not their shims), found in /proc by the
/// test's temp dir in their working directory.
fn sleeping_dynos(slip: &Slipway) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else { return pids };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cwd_inside =
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|p| p.starts_with(slip.root()));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let is_sleep = cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|argv0| Path::new(&*String::from_utf8_lossy(argv0)).ends_with("sleep"));
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if cwd_inside && is_sleep && !zombie {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Case 3: a `kill -9` of the daemon between spawning a shim and recording its pid left an
/// untracked dyno that ran forever (and, for web, held the port of its tracked replacement).
#[test]
fn a_daemon_killed_between_spawning_a_dyno_and_recording_it_loses_nothing() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    commit(&repo, "web: python3 server v1\nworker: sleep 1000\n", "v1", &[]);
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    wait_up(&slip, &["web.1"]);
    slip.stop_daemon();

    // This daemon dies right after its first shim started, before it learns the dyno's pid.
    slip.env.push(("SLIPWAY_FAILPOINT".into(), "after-shim-spawn".into()));
    slip.start_daemon();
    let scale = slip.cmd(&["ps:scale", "hello", "worker=3"]);
    assert!(!scale.status.success(), "the failpoint did not fire: {}", describe(&scale));
    slip.kill_daemon_hard();
    assert_eq!(sleeping_dynos(&slip).len(), 1, "the first worker should be running, unrecorded");

    slip.env.retain(|(k, _)| k != "SLIPWAY_FAILPOINT");
    slip.start_daemon();
    let dynos = wait_up(&slip, &["web.1", "worker.1", "worker.2", "worker.3"]);
    let tracked: Vec<u32> = {
        let mut v: Vec<u32> = dynos
            .iter()
            .filter(|d| text(d, "type") == "worker")
            .filter_map(|d| d.get("pid").and_then(Value::as_u64).map(|p| p as u32))
            .collect();
        v.sort_unstable();
        v
    };
    // Every worker process is one `ps` shows, and there are exactly three.
    let settled = wait_until(Duration::from_secs(10), || sleeping_dynos(&slip) == tracked);
    assert!(
        settled,
        "worker processes {:?}, tracked {tracked:?}\n{}",
        sleeping_dynos(&slip),
        slip.diagnostics()
    );
}

/// Case 4: another writer holding the database for 20 s during a deploy made the daemon drop
/// the new web dyno's `up` write; the route table (rebuilt from SQLite) had no web dyno and the
/// app answered H14 until the daemon restarted.
#[test]
fn a_database_held_by_another_writer_during_a_deploy_delays_but_loses_nothing() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    // When LOCKDB is set, the new web dyno asks for the database's write lock to be taken (a
    // dyno cannot open slipway.db itself: it is confined), waits until another writer holds it
    // for 20 s (longer than any busy timeout), then serves.
    let held = slip.root().join("held");
    let procfile = format!(
        "web: sh -c 'if [ -n \"$LOCKDB\" ]; then touch want-lock; \
         while [ ! -e {held} ]; do sleep 0.05; done; fi; exec python3 server v1'\n",
        held = held.display()
    );
    commit(&repo, &procfile, "v1", &[]);
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    wait_up(&slip, &["web.1"]);

    let db = slip.home.join("slipway.db");
    let lockdb = slip.root().join("lockdb");
    std::fs::write(&lockdb, LOCK_DB).unwrap();
    let config_set = slip
        .command(&["config:set", "hello", "LOCKDB=1", "MSG=locked"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn config:set");
    // The new dyno asks from its private working dir; the writer is this test's.
    let asked = || {
        std::fs::read_dir(slip.home.join("dynos/hello"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("app/want-lock").exists())
    };
    assert!(wait_until(Duration::from_secs(60), asked), "the new dyno never asked\n{}", slip.diagnostics());
    let mut writer = std::process::Command::new("python3")
        .arg(&lockdb)
        .arg(&db)
        .arg("20")
        .arg(&held)
        .spawn()
        .expect("spawn the writer");
    let out = config_set.wait_with_output().expect("config:set");
    let _ = writer.wait();
    assert!(out.status.success(), "config:set failed: {}\n{}", describe(&out), slip.diagnostics());
    assert!(held.exists(), "the writer never took the database lock");

    // The new dyno is up, recorded as up, and served.
    let dynos = wait_up(&slip, &["web.1"]);
    assert_eq!(text(&dynos[0], "release"), "v2");
    let answer = get(&slip.router_addr, "hello.localhost");
    assert!(
        answer.as_ref().is_some_and(|(s, b)| *s == 200 && b == "v1 MSG=locked"),
        "the app answers {answer:?}\n{}",
        slip.diagnostics()
    );
}
