//! The merged app log: its format, nothing lost or doubled under a burst and a daemon kill,
//! `-n`/`--ps`/`--source`, `--tail` across rotation, long lines, and closed pipes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

/// A generic app (no `.py` files, so no virtualenv): a web server, the `extra` Procfile lines,
/// and `scripts` (name, Python source) run as `python3 NAME`.
fn deploy(slip: &Slipway, extra: &str, scripts: &[(&str, &str)]) {
    let repo = GitRepo::init(&slip.root().join("work"));
    let procfile = format!("web: python3 -m http.server $PORT --bind 0.0.0.0\n{extra}");
    let mut files = vec![("Procfile", procfile.as_str())];
    files.extend_from_slice(scripts);
    repo.commit_files(&files, "app");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok && out.contains("done, v1"), "deploy failed:\n{out}\n{}", slip.diagnostics());
}

fn log(slip: &Slipway) -> String {
    std::fs::read_to_string(slip.app_log_path("hello")).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00 source[dyno]: message`, checked character by character.
fn well_formed(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let stamp_ok = b.len() > 33
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && &line[26..32] == "+00:00"
        && b[32] == b' ';
    if !stamp_ok {
        return false;
    }
    let rest = &line[33..];
    let Some((head, _)) = rest.split_once("]: ") else { return false };
    let Some((source, dyno)) = head.split_once('[') else { return false };
    ["app", "slipway", "router"].contains(&source)
        && !dyno.is_empty()
        && dyno.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Spawns `slipway logs ARGS` and streams its stdout lines into a channel.
fn spawn_logs(slip: &Slipway, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = slip
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn slipway logs");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

#[test]
fn a_20k_burst_with_a_daemon_kill_lands_whole_once_in_order_and_well_formed() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    // 20,000 lines in bursts of 500 with short pauses, so the kill lands mid-stream.
    let burst = "import time\nfor i in range(20000):\n    print('n', i, 'x' * (i % 300))\n    if i % 500 == 499:\n        time.sleep(0.05)\ntime.sleep(1000)\n";
    deploy(&slip, "burst: python3 burst\n", &[("burst", burst)]);
    slip.cmd_ok(&["ps:scale", "hello", "burst=1"]);
    let numbers = |log: &str| -> Vec<u32> {
        log.lines()
            .filter_map(|l| l.split("app[burst.1]: n ").nth(1)?.split(' ').next()?.parse().ok())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || numbers(&log(&slip)).len() >= 1000),
        "no burst\n{}",
        slip.diagnostics()
    );
    slip.kill_daemon_hard();
    slip.start_daemon();
    assert!(
        wait_until(Duration::from_secs(30), || numbers(&log(&slip)).last() == Some(&19_999)),
        "the burst did not finish\n{}",
        slip.diagnostics()
    );
    let text = log(&slip);
    assert_eq!(numbers(&text), (0..20_000).collect::<Vec<u32>>(), "lines lost, doubled or reordered");
    let bad: Vec<&str> = text.lines().filter(|l| !well_formed(l)).take(5).collect();
    assert!(bad.is_empty(), "malformed lines: {bad:?}");
    for line in text.lines().filter(|l| l.contains("app[burst.1]: n ")) {
        let (_, rest) = line.split_once("app[burst.1]: n ").unwrap();
        let mut parts = rest.split(' ');
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(parts.next().unwrap_or("").len(), i % 300, "a line was cut or interleaved: {line}");
    }
}

#[test]
fn n_ps_and_source_filters_combine() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let long = "long: python3 -c 'import time; print(\"L\" * 25000); time.sleep(1000)'\n";
    let talker =
        "talker: sh -c 'for i in 1 2 3 4 5; do echo talk $i; done; echo oops >&2; exec sleep 1000'\n";
    deploy(&slip, &format!("{talker}{long}"), &[]);
    slip.cmd_ok(&["ps:scale", "hello", "talker=2", "long=1"]);
    assert!(wait_until(Duration::from_secs(20), || log(&slip).matches("app[talker.2]: oops").count() == 1));

    let out = slip.cmd_ok(&["logs", "hello", "-n", "3"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let talker = slip.cmd_ok(&["logs", "hello", "--ps", "talker", "--source", "app", "-n", "1000"]);
    assert_eq!(talker.lines().count(), 12, "{talker}"); // 2 dynos × (5 talks + oops)
    assert!(talker.lines().all(|l| l.contains(" app[talker.")), "{talker}");
    let one = slip.cmd_ok(&["logs", "hello", "--dyno", "talker.1", "-n", "1000"]);
    assert!(
        one.lines().all(|l| l.contains("[talker.1]: "))
            && one.contains("slipway[talker.1]: Starting process"),
        "{one}"
    );
    let platform = slip.cmd_ok(&["logs", "hello", "--source", "slipway"]);
    assert!(platform.lines().all(|l| l.contains(" slipway[")), "{platform}");
    assert!(platform.contains("slipway[api]: Scaled to long=1 talker=2 by "), "{platform}");
    assert!(platform.contains("slipway[api]: Build started"), "{platform}");
    // stderr is kept too (its order against stdout is only as good as two pipes allow).
    let talker2 = slip.cmd_ok(&["logs", "hello", "--ps", "talker.2", "--source", "app", "-n", "6"]);
    assert_eq!(talker2.lines().count(), 6, "{talker2}");
    assert!(talker2.lines().all(|l| l.contains(" app[talker.2]: ")), "{talker2}");
    assert!(talker2.contains("app[talker.2]: oops"), "{talker2}");
    let out = slip.cmd(&["logs", "hello", "--source", "nginx"]);
    assert!(!out.status.success());

    // A 25,000-byte line becomes 10,000 + 10,000 + 5,000.
    assert!(wait_until(Duration::from_secs(10), || log(&slip).contains("app[long.1]: LLL")));
    let long = slip.cmd_ok(&["logs", "hello", "--ps", "long", "--source", "app", "-n", "10"]);
    let sizes: Vec<usize> = long.lines().filter_map(|l| l.split("]: ").nth(1)).map(str::len).collect();
    assert_eq!(sizes, [10_000, 10_000, 5_000]);
}

#[test]
fn tail_follows_new_lines_across_rotations() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_LOG_MAX_MB".into(), "0.02".into())); // ~20 KB per file
    slip.env.push(("SLIPWAY_LOG_FILES".into(), "3".into()));
    slip.start_daemon();
    let ticker =
        "import time\nfor i in range(100000):\n    print('tick', i, '-' * 200)\n    time.sleep(0.004)\n";
    deploy(&slip, "ticker: python3 ticker\n", &[("ticker", ticker)]);
    let (mut tail, lines) = spawn_logs(&slip, &["logs", "hello", "--tail", "--ps", "ticker", "-n", "0"]);
    slip.cmd_ok(&["ps:scale", "hello", "ticker=1"]);

    // Follow until the log has rotated at least twice; every tick must arrive, in order.
    let mut ticks: Vec<u32> = Vec::new();
    let rotated_twice = wait_until(Duration::from_secs(60), || {
        while let Ok(line) = lines.try_recv() {
            assert!(line.contains("[ticker.1]: "), "--ps ticker let through: {line}");
            if let Some(n) =
                line.split("app[ticker.1]: tick ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok())
            {
                ticks.push(n);
            }
        }
        slip.home.join("logs/hello/app.log.2").exists() && ticks.len() > 300
    });
    assert!(
        rotated_twice,
        "no two rotations or too few ticks followed ({})\n{}",
        ticks.len(),
        slip.diagnostics()
    );
    assert_eq!(
        ticks,
        (0..ticks.len() as u32).collect::<Vec<_>>(),
        "--tail lost or doubled lines across rotations"
    );
    assert!(!slip.home.join("logs/hello/app.log.3").exists(), "more files than SLIPWAY_LOG_FILES");
    // The disk use stays bounded: no file much above the cap.
    for f in ["app.log", "app.log.1", "app.log.2"] {
        let len = std::fs::metadata(slip.home.join("logs/hello").join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len < 40_000, "{f} is {len} bytes");
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
}

#[test]
fn a_reader_that_goes_away_is_exit_0() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let chatty = "import time\nfor i in range(3000):\n    print('line', i, '=' * 100)\ntime.sleep(1000)\n";
    deploy(&slip, "chatty: python3 chatty\n", &[("chatty", chatty)]);
    slip.cmd_ok(&["ps:scale", "hello", "chatty=1"]);
    assert!(wait_until(Duration::from_secs(20), || log(&slip).contains("line 2999 ")));

    // `slipway logs hello -n 5000 | head -1`: far more than a pipe buffer, then the reader leaves.
    let (mut child, lines) = spawn_logs(&slip, &["logs", "hello", "-n", "5000"]);
    assert!(lines.recv_timeout(Duration::from_secs(10)).is_ok());
    drop(lines);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "logs | head -1 did not exit 0");

    // --tail with nothing new to print still notices the reader is gone.
    let mut child = slip
        .command(&["logs", "hello", "--tail", "-n", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("]: "), "{first:?}");
    drop(reader); // closes the pipe: `| head -1` has read its line
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "logs --tail | head -1 did not exit 0");
}
