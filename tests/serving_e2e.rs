//! Serving never depends on the daemon: the router is a process of its own that outlives a
//! daemon killed with `kill -9`, stopped with `daemon --stop`, or upgraded in place (a new
//! binary: the router is handed over on the same address), and not one request fails; a router
//! started with no daemon serves the last known routes; a router that dies is restarted by the
//! daemon. One app push serves every phase (pushes are slow).

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const HOST: &str = "hello.localhost";

/// What one request got: status and body, or None when it failed outright.
type Answer = Option<(u16, String)>;

/// `run/router`: (pid, start time).
fn router_process(slip: &Slipway) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(slip.home.join("run").join("router")).ok()?;
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start = words.next()?.parse().ok()?;
    process_alive(pid).then_some((pid, start))
}

fn serves(router: &str) -> bool {
    router_get(router, HOST, "/").is_some_and(|(s, b)| s == 200 && b == "v1")
}

/// Requests back to back through the router (fresh connection each, bounded in time and count)
/// while `action` runs, and for a few more after it; returns (requests, failures).
fn requests_across(router: &str, action: impl FnOnce()) -> (usize, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let client = {
        let (stop, results, router) = (stop.clone(), results.clone(), router.to_string());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
                let answer = router_get(&router, HOST, "/");
                let mut results = results.lock().expect("results");
                results.push(answer);
                if results.len() >= 100_000 {
                    break;
                }
            }
        })
    };
    wait_until(Duration::from_secs(10), || results.lock().expect("results").len() >= 20);
    action();
    let after = results.lock().expect("results").len();
    wait_until(Duration::from_secs(10), || results.lock().expect("results").len() >= after + 20);
    stop.store(true, Ordering::SeqCst);
    client.join().expect("the client thread");
    let results = results.lock().expect("results");
    let failures = results
        .iter()
        .filter(|r| !matches!(r, Some((200, b)) if b == "v1"))
        .map(|r| format!("{r:?}"))
        .collect();
    (results.len(), failures)
}

/// `slipway daemon --foreground` run from `binary` (a copy of slipway elsewhere: an upgrade),
/// with this environment's variables; waits until `status` answers.
fn start_daemon_from(slip: &Slipway, binary: &std::path::Path) -> Child {
    let template = slip.command(&["daemon", "--foreground"]);
    let mut command = Command::new(binary);
    command.args(template.get_args());
    for (key, value) in template.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    if let Some(dir) = template.get_current_dir() {
        command.current_dir(dir);
    }
    let log = std::fs::File::create(slip.root().join("daemon-upgraded.log")).expect("daemon-upgraded.log");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("daemon-upgraded.log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting the upgraded daemon");
    let ready = wait_until(DAEMON_READY_TIMEOUT, || slip.cmd(&["status"]).status.success());
    if !ready {
        child.kill().ok();
        child.wait().ok();
        panic!(
            "the upgraded daemon never answered\n{}",
            tail_file(&slip.root().join("daemon-upgraded.log"), 60)
        );
    }
    child
}

#[test]
fn serving_survives_daemon_kills_stops_upgrades_and_router_crashes() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(
        &[("Procfile", "web: python3 server v1\n"), ("server", stdlib_server("sys.argv[1]").as_str())],
        "v1",
    );
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "the push failed:\n{out}\n{}", slip.diagnostics());
    let router = slip.router_addr.clone();
    assert!(
        wait_until(Duration::from_secs(20), || serves(&router)),
        "the app is not served\n{}",
        slip.diagnostics()
    );
    let (pid, _) = router_process(&slip).expect("no router announced in run/router");
    let status = slip.json(&["status", "--json"]);
    assert_eq!(status["router"]["running"], true, "{status}");
    assert_eq!(status["router"]["pid"], pid, "{status}");

    // 1. kill -9 of the daemon, then a new daemon: it adopts the router.
    let (n, failures) = requests_across(&router, || {
        slip.kill_daemon_hard();
        assert!(wait_until(Duration::from_secs(5), || serves(&router)));
        slip.start_daemon();
    });
    println!("daemon kill -9 and restart: {n} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(router_process(&slip).map(|r| r.0), Some(pid), "the router was replaced, not adopted");

    // 2. `slipway daemon --stop` (dynos run, so the router stays), then start.
    let (n, failures) = requests_across(&router, || {
        let stopped = slip.cmd_ok(&["daemon", "--stop"]);
        assert!(stopped.contains("the router keep running"), "{stopped}");
        slip.stop_daemon(); // reaps the harness's child
        let status = slip.cmd(&["status", "--json"]);
        assert_eq!(status.status.code(), Some(1), "status with the daemon down");
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(status["router"]["running"], true, "{status}");
        assert!(serves(&router));
        slip.start_daemon();
    });
    println!("daemon --stop and start: {n} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(router_process(&slip).map(|r| r.0), Some(pid), "the router was replaced, not adopted");

    // 3. With no daemon, a router started from nothing serves the last known routes.
    slip.stop_daemon();
    kill_pid(pid);
    assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)));
    assert!(router_get(&router, HOST, "/").is_none(), "something still listens on {router}");
    let mut by_hand = slip
        .command(&["router"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hand_pid = by_hand.id();
    assert!(
        wait_until(Duration::from_secs(20), || serves(&router)),
        "a router started without a daemon does not serve the last routes\n{}",
        tail_file(&slip.home.join("logs").join("router.log"), 40)
    );
    slip.start_daemon();
    assert_eq!(
        router_process(&slip).map(|r| r.0),
        Some(hand_pid),
        "the daemon did not adopt the running router"
    );

    // 4. An upgrade: the daemon restarted from another binary hands the router over.
    let other = slip.root().join("upgrade");
    std::fs::create_dir_all(&other).unwrap();
    let copy = other.join("slipway");
    std::fs::copy(BIN, &copy).unwrap();
    let mut upgraded = None;
    let (n, failures) = requests_across(&router, || {
        slip.stop_daemon();
        upgraded = Some(start_daemon_from(&slip, &copy));
    });
    let mut upgraded = upgraded.unwrap();
    println!("in-place upgrade: {n} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (new_pid, _) = router_process(&slip).expect("no router after the upgrade");
    assert_ne!(new_pid, hand_pid, "the router was not handed over");
    let exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert_eq!(exe, copy, "the new router does not run the new binary");
    assert!(
        wait_until(Duration::from_secs(30), || matches!(by_hand.try_wait(), Ok(Some(_)))),
        "the old router did not exit after the handover"
    );

    // 5. A router that dies is started again by the daemon.
    kill_pid(new_pid);
    assert!(
        wait_until(Duration::from_secs(20), || router_process(&slip).is_some_and(|r| r.0 != new_pid)
            && serves(&router)),
        "the daemon did not restart the router\n{}",
        tail_file(&slip.root().join("daemon-upgraded.log"), 40)
    );
    let log = std::fs::read_to_string(slip.home.join("logs").join("slipway.log")).unwrap_or_default();
    assert!(log.contains("the router exited; starting a new one"), "no log line about the restart:\n{log}");

    upgraded.kill().ok();
    upgraded.wait().ok();
}

/// With no dyno left (an uninstall runs `ps:stop --all` first), `daemon --stop` stops the
/// router too, also when the daemon was already gone (stopped by systemd, or killed).
#[test]
fn daemon_stop_with_no_dynos_stops_the_router_too() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let (pid, _) = router_process(&slip).expect("no router announced in run/router");
    let daemon = slip.json(&["status", "--json"])["daemon"]["pid"].as_u64().expect("the daemon's pid") as u32;
    let stopped = slip.cmd_ok(&["daemon", "--stop"]);
    assert!(stopped.contains("daemon and router stopped"), "{stopped}");
    assert!(!process_alive(pid), "the router still runs");
    assert!(wait_until(Duration::from_secs(5), || !process_alive(daemon)));
    slip.stop_daemon(); // reaps the harness's child

    slip.start_daemon();
    let (pid, _) = router_process(&slip).expect("no router after the restart");
    slip.kill_daemon_hard();
    assert!(process_alive(pid), "the router died with the daemon");
    let stopped = slip.cmd_ok(&["daemon", "--stop"]);
    assert!(stopped.contains("router stopped (the daemon was not running"), "{stopped}");
    assert!(!process_alive(pid), "the router still runs");
    assert_eq!(slip.leftover_processes(), Vec::<u32>::new(), "processes left running");
    assert!(router_get(&slip.router_addr, HOST, "/").is_none(), "something still listens");
}
