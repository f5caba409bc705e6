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

/// How many clients send requests at once: enough that some connection is usually waiting in
/// a listener's accept queue when a router stops accepting.
const CLIENTS: usize = 4;

/// Requests back to back through the router from [`CLIENTS`] threads (a fresh connection each,
/// bounded in time and count) while `action` runs, and for a few more after it; returns
/// (requests, failures).
fn requests_across(router: &str, action: impl FnOnce()) -> (usize, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, results, router) = (stop.clone(), results.clone(), router.to_string());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
                    let answer = router_get(&router, HOST, "/");
                    let mut results = results.lock().expect("results");
                    results.push(answer);
                    if results.len() >= 200_000 {
                        break;
                    }
                }
            })
        })
        .collect();
    let count = || results.lock().expect("results").len();
    wait_until(Duration::from_secs(10), || count() >= 20);
    action();
    let after = count();
    wait_until(Duration::from_secs(10), || count() >= after + 20 * CLIENTS);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a client thread");
    }
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

/// SIGTERM to a daemon this test started, and wait for it.
fn stop_child(mut daemon: Child) {
    let terminated = Command::new("/bin/kill").args(["-TERM", &daemon.id().to_string()]).status();
    if !terminated.is_ok_and(|s| s.success()) {
        daemon.kill().ok();
    }
    daemon.wait().ok();
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

    // 4. Upgrades: a daemon restarted from another binary hands the router over to a router of
    // that binary. Three in a row (new, back to the old path, new again), one right after the
    // other, so a handover also meets a router still retiring from the previous one.
    let other = slip.root().join("upgrade");
    std::fs::create_dir_all(&other).unwrap();
    let copy = other.join("slipway");
    std::fs::copy(BIN, &copy).unwrap();
    let original = std::path::PathBuf::from(BIN);
    let mut upgraded: Option<Child> = None;
    let mut routers = vec![hand_pid];
    let (n, failures) = requests_across(&router, || {
        slip.stop_daemon();
        for binary in [&copy, &original, &copy] {
            if let Some(daemon) = upgraded.take() {
                stop_child(daemon);
            }
            upgraded = Some(start_daemon_from(&slip, binary));
            let (pid, _) = router_process(&slip).expect("no router after an upgrade");
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(&exe, binary, "the router does not run the daemon's binary");
            routers.push(pid);
        }
    });
    let upgraded = upgraded.unwrap();
    println!("3 in-place upgrades: {n} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut distinct = routers.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "not every upgrade handed the router over: {routers:?}");
    let new_pid = *routers.last().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || matches!(by_hand.try_wait(), Ok(Some(_)))
            && routers[1..3].iter().all(|p| !process_alive(*p))),
        "the old routers did not exit after the handovers"
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

    stop_child(upgraded);
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
