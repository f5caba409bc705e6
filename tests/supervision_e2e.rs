//! Dyno supervision with real processes: scaling, crash restarts with backoff, graceful stop
//! escalating to SIGKILL for the whole process group, and one-off `run` dynos.
//!
//! The apps here have no Python files, so they build as "generic" (no virtualenv) and a push
//! takes a fraction of a second; their processes use the system's `python3` and `sh`.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn pid_of(v: &Value) -> Option<u32> {
    v.get("pid").and_then(Value::as_u64).map(|p| p as u32)
}

/// A generic app: a stdlib web server and a quiet worker, plus whatever `extra` lines.
fn deploy(slip: &Slipway, extra: &str) -> GitRepo {
    let repo = GitRepo::init(&slip.root().join("work"));
    let procfile = format!("web: python3 -m http.server $PORT --bind 0.0.0.0\nworker: sleep 1000\n{extra}");
    repo.commit_files(&[("Procfile", procfile.as_str()), ("index.html", "hello from $DYNO\n")], "app");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok && out.contains("done, v1"), "deploy failed:\n{out}\n{}", slip.diagnostics());
    repo
}

/// Waits until `ps` shows exactly `names` (sorted), all `up`.
fn wait_up(slip: &Slipway, names: &[&str]) -> Vec<Value> {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(20), || {
        last = slip.ps_json("hello");
        let mut got: Vec<&str> = last.iter().filter_map(|d| text(d, "name")).collect();
        got.sort_unstable();
        got == names && last.iter().all(|d| text(d, "state") == Some("up"))
    });
    assert!(ok, "wanted {names:?} up, ps: {}\n{}", Value::Array(last.clone()), slip.diagnostics());
    last
}

fn log(slip: &Slipway) -> String {
    std::fs::read_to_string(slip.app_log_path("hello")).unwrap_or_default()
}

#[test]
fn scaling_up_and_down_touches_only_what_changes() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    deploy(&slip, "");
    let before = wait_up(&slip, &["web.1"]);
    let web1 = pid_of(&before[0]).unwrap();

    let out = slip.cmd(&["ps:scale", "hello", "web=3", "nope=1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("its Procfile declares: web, worker"));

    slip.cmd_ok(&["ps:scale", "hello", "web=3", "worker=2"]);
    let dynos = wait_up(&slip, &["web.1", "web.2", "web.3", "worker.1", "worker.2"]);
    let ports: HashSet<u64> = dynos
        .iter()
        .filter(|d| text(d, "type") == Some("web"))
        .filter_map(|d| d.get("port")?.as_u64())
        .collect();
    assert_eq!(ports.len(), 3, "web dynos must each have their own port: {dynos:?}");
    for port in &ports {
        assert!(wait_until(Duration::from_secs(10), || http_get(*port as u16, "/")
            .is_some_and(|(s, _)| s == 200)));
    }
    let still = dynos.iter().find(|d| text(d, "name") == Some("web.1")).and_then(pid_of);
    assert_eq!(still, Some(web1), "scaling up restarted web.1");

    slip.cmd_ok(&["ps:scale", "hello", "web=1", "worker=0"]);
    let after = wait_up(&slip, &["web.1"]);
    assert_eq!(pid_of(&after[0]), Some(web1), "scaling down restarted web.1");
    let releases = slip.json(&["releases", "hello", "--json"]);
    assert_eq!(releases.as_array().map(Vec::len), Some(1), "scaling must not create a release");
    let formation = slip.app_info("hello");
    assert_eq!(formation["formation"]["web"], 1);
    assert_eq!(formation["formation"]["worker"], 0);
}

/// The parent of `pid` (from `/proc/PID/stat`, after the command's closing parenthesis).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Each dyno's shim is the small `slipway-shim` binary beside `slipway` (its private memory is
/// the per-dyno cost of supervision); a daemon whose binary has none of its own version beside
/// it (an install that copied `slipway` alone, or over an older one) shims with itself,
/// `slipway dyno-shim`. Either way the dyno serves.
#[test]
fn dynos_are_shimmed_by_the_small_binary_or_by_slipway_itself_without_it() {
    for beside in ["the built one", "none", "another version"] {
        let alone = beside != "the built one";
        let mut slip = Slipway::new();
        if alone {
            let dir = slip.root().join("bin");
            std::fs::create_dir_all(&dir).expect("mkdir bin");
            std::fs::copy(support::BIN, dir.join("slipway")).expect("copy slipway");
            if beside == "another version" {
                let stale = dir.join("slipway-shim");
                std::fs::write(&stale, "#!/bin/sh\necho slipway-shim 0.0.1\n").expect("write");
                std::fs::set_permissions(&stale, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .expect("chmod");
            }
            slip.bin = dir.join("slipway");
        }
        slip.start_daemon();
        deploy(&slip, "");
        let web = wait_up(&slip, &["web.1"]);
        let shim = pid_of(&web[0]).and_then(parent_of).expect("the dyno's parent");
        let cmdline = std::fs::read(format!("/proc/{shim}/cmdline")).expect("the shim's cmdline");
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if alone {
            assert_eq!(args[0], slip.bin.to_string_lossy(), "{beside} beside: {args:?}");
            assert_eq!(args[1], "dyno-shim", "{beside} beside: {args:?}");
        } else {
            let beside = std::path::Path::new(support::BIN).with_file_name("slipway-shim");
            assert_eq!(args[0], beside.to_string_lossy(), "{args:?}");
            assert_eq!(args[1], "--log", "{args:?}");
        }
        let port = web[0].get("port").and_then(Value::as_u64).expect("port") as u16;
        assert!(
            wait_until(Duration::from_secs(10), || http_get(port, "/").is_some_and(|(s, _)| s == 200)),
            "{}",
            slip.diagnostics()
        );
    }
}

#[test]
fn a_killed_dyno_comes_back_and_a_crash_loop_backs_off() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    deploy(&slip, "crasher: sh -c 'echo boom; exit 1'\n");
    let first = wait_up(&slip, &["web.1"]);
    let old = pid_of(&first[0]).unwrap();

    kill_pid(old);
    let mut replaced = None;
    wait_until(Duration::from_secs(10), || {
        replaced = slip.ps_json("hello").iter().find_map(|d| {
            (text(d, "name") == Some("web.1") && text(d, "state") == Some("up")).then(|| pid_of(d)).flatten()
        });
        replaced.is_some_and(|p| p != old)
    });
    assert!(replaced.is_some_and(|p| p != old), "web.1 did not come back\n{}", slip.diagnostics());
    let text_log = log(&slip);
    assert!(text_log.contains("slipway[web.1]: Process exited with status 137"), "{text_log}");
    assert!(text_log.contains("slipway[web.1]: State changed from up to crashed"), "{text_log}");

    // A process that always exits: starts at ~0 s, ~1 s, ~3 s, ~7 s …, never a busy loop.
    slip.cmd_ok(&["ps:scale", "hello", "crasher=1"]);
    let starts = |log: &str| -> Vec<f64> {
        log.lines()
            .filter(|l| l.contains("slipway[crasher.1]: Starting process"))
            .filter_map(|l| seconds_of_day(l.split(' ').next()?))
            .collect()
    };
    let enough = wait_until(Duration::from_secs(20), || starts(&log(&slip)).len() >= 4);
    let times = starts(&log(&slip));
    assert!(enough, "crasher.1 was not restarted 3 times: {times:?}\n{}", slip.diagnostics());
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] >= 0.9 && gaps[2] >= 1.9, "restart delays do not grow: {gaps:?}");
    assert!(gaps[2] > gaps[1] && gaps[1] > gaps[0], "restart delays do not grow: {gaps:?}");
    let crasher = slip.ps_json("hello").into_iter().find(|d| text(d, "name") == Some("crasher.1")).unwrap();
    assert!(crasher["restarts"].as_u64().unwrap_or(0) >= 3, "{crasher}");
    assert!(log(&slip).contains("app[crasher.1]: boom"));
}

/// Seconds since midnight of a log stamp `2026-11-24T18:00:00.123456+00:00`.
fn seconds_of_day(stamp: &str) -> Option<f64> {
    let clock = stamp.split('T').nth(1)?.split('+').next()?;
    let mut parts = clock.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

#[test]
fn stop_escalates_to_sigkill_and_no_grandchild_survives() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_STOP_TIMEOUT".into(), "2".into()));
    slip.start_daemon();
    // Ignores SIGTERM (and so does the grandchild it forks, which inherits the disposition).
    deploy(
        &slip,
        "stubborn: sh -c 'trap \"\" TERM; sleep 1000 & echo grandchild $!; while :; do sleep 1; done'\n",
    );
    slip.cmd_ok(&["ps:scale", "hello", "stubborn=1"]);
    let dynos = wait_up(&slip, &["stubborn.1", "web.1"]);
    let main = dynos.iter().find(|d| text(d, "name") == Some("stubborn.1")).and_then(pid_of).unwrap();
    let mut grandchild = None;
    wait_until(Duration::from_secs(10), || {
        grandchild = log(&slip)
            .lines()
            .find_map(|l| l.split("app[stubborn.1]: grandchild ").nth(1)?.trim().parse::<u32>().ok());
        grandchild.is_some()
    });
    let grandchild = grandchild.expect("the dyno did not report its grandchild");
    assert!(process_alive(grandchild));

    let started = std::time::Instant::now();
    slip.cmd_ok(&["ps:stop", "hello", "stubborn"]);
    let waited = started.elapsed();
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(main) && !process_alive(grandchild)),
        "the dyno or its grandchild survived the stop\n{}",
        slip.diagnostics()
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "stopped before the grace period: SIGTERM was not ignored?"
    );
    let text_log = log(&slip);
    assert!(text_log.contains("slipway[stubborn.1]: Stopping all processes with SIGTERM"), "{text_log}");
    assert!(text_log.contains("slipway[stubborn.1]: Error R12 (Exit timeout)"), "{text_log}");
    assert!(text_log.contains("slipway[stubborn.1]: Process exited with status 137"), "{text_log}");

    // A stopped dyno stays down (no crash restart) until restarted.
    let down = slip.ps_json("hello").into_iter().find(|d| text(d, "name") == Some("stubborn.1")).unwrap();
    assert_eq!(text(&down, "state"), Some("down"));
    slip.cmd_ok(&["ps:restart", "hello", "stubborn.1"]);
    wait_up(&slip, &["stubborn.1", "web.1"]);

    // Stopping the daemon leaves dynos running; ps:stop --all stops them.
    let web = slip
        .ps_json("hello")
        .into_iter()
        .find(|d| text(d, "name") == Some("web.1"))
        .and_then(|d| pid_of(&d))
        .unwrap();
    slip.cmd_ok(&["daemon", "--stop"]);
    assert!(process_alive(web), "daemon --stop killed a dyno");
    slip.cmd_ok(&["daemon"]);
    slip.cmd_ok(&["ps:stop", "--all"]);
    assert!(wait_until(Duration::from_secs(10), || !process_alive(web)));
    assert!(slip.ps_json("hello").iter().all(|d| text(d, "state") == Some("down")));
    slip.cmd_ok(&["daemon", "--stop"]);
}

#[test]
fn run_is_a_one_off_dyno_with_stdin_and_exit_status() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    deploy(&slip, "");
    let script = "import os, sys; print(os.environ['DYNO'], os.getcwd() == os.environ['HOME'], sys.stdin.read().upper()); sys.exit(7)";
    let out = slip.cmd_stdin(&["run", "hello", "--", "python3", "-c", script], "from stdin");
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("run.") && stdout.contains("True FROM STDIN"), "{stdout}");
    let text_log = log(&slip);
    assert!(text_log.contains("Process exited with status 7"), "{text_log}");
    assert!(!text_log.contains("FROM STDIN"), "run output leaked into the app log");
    // No shell: metacharacters are arguments.
    let out = slip.cmd(&["run", "hello", "--", "echo", "a;", "touch", "x", "$(id)"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a; touch x $(id)");
}

#[test]
fn a_daemon_killed_mid_burst_loses_and_doubles_no_dyno_line() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let counter = "counter: python3 -c 'import time; [print(\"n\", i, flush=True) or time.sleep(0.0004) for i in range(6000)]; time.sleep(1000)'\n";
    deploy(&slip, counter);
    slip.cmd_ok(&["ps:scale", "hello", "counter=1"]);
    let numbers = |log: &str| -> Vec<u32> {
        log.lines().filter_map(|l| l.split("app[counter.1]: n ").nth(1)?.trim().parse().ok()).collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || numbers(&log(&slip)).len() > 200),
        "the counter never started"
    );
    slip.kill_daemon_hard();
    slip.start_daemon();
    assert!(
        wait_until(Duration::from_secs(30), || numbers(&log(&slip)).last() == Some(&5999)),
        "the counter never finished\n{}",
        slip.diagnostics()
    );
    let seen = numbers(&log(&slip));
    assert_eq!(seen, (0..6000).collect::<Vec<u32>>(), "lines lost, doubled or reordered");
}
