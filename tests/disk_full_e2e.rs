//! A full disk kills nothing: with `logs/` on a tiny tmpfs filled to the last byte, the
//! detached daemon, its router, the control socket, every shim and every logging dyno keep
//! going (same pids), a dyno can even be started; once space is back the app log says how many
//! lines were dropped and goes on by itself.
//!
//! Needs root (it mounts a tmpfs); as anyone else it prints a skip line and passes.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The test's slipway with `home/logs` on a tmpfs of its own. Dropping it stops the daemon and
/// the dynos (while the diagnostics can still be read) and then unmounts, lazily if busy.
struct Env {
    slip: Slipway,
    logs: PathBuf,
}

impl Env {
    /// `None` (after a skip line) when the tmpfs cannot be mounted.
    fn new(size: &str) -> Option<Env> {
        let slip = Slipway::new();
        let logs = slip.home.join("logs");
        std::fs::create_dir_all(&logs).expect("create home/logs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&logs)
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIP disk_full_e2e: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Env { slip, logs })
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- slipway.log (tail) ---\n{}\n--- app.log (tail) ---\n{}\n--- df ---\n{}",
            tail_file(&self.logs.join("slipway.log"), 40),
            tail_file(&self.slip.app_log_path("hello"), 40),
            String::from_utf8_lossy(
                &Command::new("df").arg(&self.logs).output().map(|o| o.stdout).unwrap_or_default()
            )
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        self.slip.stop_daemon();
        self.slip.kill_dynos();
        // The shims go with their dynos; then nothing holds the tmpfs open.
        wait_until(Duration::from_secs(10), || shims(&self.slip.home).is_empty());
        let unmounted = Command::new("umount").arg(&self.logs).output().is_ok_and(|o| o.status.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.logs).status();
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One GET through the router for `hello.localhost`: the status code.
fn router_get(addr: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET / HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(&raw).split_whitespace().nth(1)?.parse().ok()
}

/// (name, pid, state) of each dyno in `ps --json`.
fn dynos(slip: &Slipway) -> Vec<(String, u32, String)> {
    slip.ps_json("hello")
        .iter()
        .map(|d| {
            let text = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (text("name"), d.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32, text("state"))
        })
        .collect()
}

fn pid_of(slip: &Slipway, name: &str) -> Option<u32> {
    dynos(slip).into_iter().find(|(n, _, state)| n == name && state == "up").map(|(_, pid, _)| pid)
}

/// Shim processes of this home, as (dyno name, pid), found in /proc by their command line.
fn shims(home: &Path) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> =
            cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        // `slipway-shim …`, or `slipway dyno-shim …` (a daemon without the small shim beside it).
        let shim = args[0].ends_with("/slipway-shim") || args.iter().any(|a| a == "dyno-shim");
        let mine = shim && args.iter().any(|a| a.starts_with(&*home.to_string_lossy()));
        if let (true, Some(i)) = (mine, args.iter().position(|a| a == "--dyno")) {
            if let Some(name) = args.get(i + 1) {
                found.push((name.clone(), pid));
            }
        }
    }
    found.sort();
    found
}

fn daemon_pid(slip: &Slipway) -> u32 {
    std::fs::read_to_string(slip.home.join("run/slipway.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("the daemon's pid file")
}

/// Fills the file system under `dir` to the last byte; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let block = vec![0u8; 64 * 1024];
    let mut small = false;
    loop {
        let chunk = if small { &block[..512] } else { &block[..] };
        match file.write(chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && !small => small = true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    path
}

/// `slipway[<dyno>]: N log lines dropped (disk full)` lines of the log: (line index, dyno, N).
fn dropped_reports(log: &str) -> Vec<(usize, String, u64)> {
    log.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            // A whole line of its own: `<stamp> slipway[…`, not glued to a line the disk cut.
            let rest = line.get(32..)?.strip_prefix(" slipway[")?;
            let (dyno, rest) = rest.split_once("]: ")?;
            let n = rest.strip_suffix(" log lines dropped (disk full)")?.parse().ok()?;
            Some((i, dyno.to_string(), n))
        })
        .collect()
}

const TICKER: &str = "import itertools, time\nfor i in itertools.count():\n    print('tick', i, flush=True)\n    time.sleep(0.005)\n";

#[test]
fn a_full_disk_kills_nothing_and_logging_comes_back_by_itself() {
    if !is_root() {
        eprintln!(
            "SKIP a_full_disk_kills_nothing_and_logging_comes_back_by_itself: needs root (mounts a tmpfs)"
        );
        return;
    }
    let Some(env) = Env::new("4m") else { return };
    let slip = &env.slip;
    // Detached, as in production: the daemon's own stdout and stderr are on the tmpfs too.
    slip.cmd_ok(&["daemon"]);
    let daemon = daemon_pid(slip);

    let repo = GitRepo::init(&slip.root().join("work"));
    let procfile = "web: python3 -u -m http.server $PORT --bind 0.0.0.0\nworker: python3 -u ticker\nsleeper: sleep 1000\n";
    repo.commit_files(&[("Procfile", procfile), ("ticker", TICKER), ("index.html", "hello\n")], "app");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok && out.contains("done, v1"), "deploy failed:\n{out}");
    slip.cmd_ok(&["ps:scale", "hello", "worker=1"]);
    let log = || std::fs::read_to_string(slip.app_log_path("hello")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || pid_of(slip, "web.1").is_some()
            && pid_of(slip, "worker.1").is_some()
            && log().contains("app[worker.1]: tick")
            && router_get(&slip.router_addr) == Some(200)),
        "the app did not come up: {:?}",
        dynos(slip)
    );
    let web = pid_of(slip, "web.1").unwrap();
    let worker = pid_of(slip, "worker.1").unwrap();
    let shims_before = shims(&slip.home);
    assert_eq!(
        shims_before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["web.1", "worker.1"],
        "{shims_before:?}"
    );

    let filler = fill(&env.logs);
    let full_since = Instant::now();
    // The last page of app.log may still take a few lines; the worker fills it within moments
    // (lines every 5 ms), after which the log stops growing.
    let log_len = || std::fs::metadata(slip.app_log_path("hello")).map_or(0, |m| m.len());
    let mut last = (log_len(), Instant::now());
    let settled = wait_until(Duration::from_secs(10), || {
        let len = log_len();
        if len != last.0 {
            last = (len, Instant::now());
        }
        last.1.elapsed() > Duration::from_millis(300)
    });
    assert!(settled, "app.log kept growing on a full disk");
    // Full for a while, with the router logging, the worker and the web dyno printing, and
    // the daemon writing events and starting a dyno.
    slip.cmd_ok(&["ps:scale", "hello", "sleeper=1"]);
    let mut requests = 0;
    while full_since.elapsed() < Duration::from_secs(4) || pid_of(slip, "sleeper.1").is_none() {
        assert!(
            full_since.elapsed() < Duration::from_secs(30),
            "sleeper.1 did not start on a full disk: {:?}",
            dynos(slip)
        );
        assert_eq!(router_get(&slip.router_addr), Some(200), "the router stopped serving on a full disk");
        requests += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let full_for = full_since.elapsed();
    let free = nix::sys::statvfs::statvfs(&env.logs).expect("statvfs");
    assert_eq!(free.blocks_available(), 0, "the disk was not full");
    let status = slip.cmd(&["status"]);
    assert!(status.status.success(), "slipway status failed on a full disk: {}", describe(&status));
    assert!(process_alive(daemon), "the daemon died on a full disk");
    assert_eq!(daemon_pid(slip), daemon, "the daemon was replaced");
    assert_eq!(pid_of(slip, "web.1"), Some(web), "web.1 was restarted: {:?}", dynos(slip));
    assert_eq!(pid_of(slip, "worker.1"), Some(worker), "worker.1 was restarted: {:?}", dynos(slip));
    for (name, pid) in &shims_before {
        assert!(process_alive(*pid), "the shim of {name} died");
    }
    assert!(process_alive(web) && process_alive(worker));

    // Space comes back: the logs say what they lost, then go on, with nobody's help.
    std::fs::remove_file(&filler).expect("remove the filler");
    let recovered = wait_until(Duration::from_secs(20), || {
        let _ = router_get(&slip.router_addr);
        let text = log();
        let reports = dropped_reports(&text);
        let after = |dyno: &str, then: &str| {
            reports
                .iter()
                .any(|(i, d, n)| d == dyno && *n > 0 && text.lines().skip(i + 1).any(|l| l.contains(then)))
        };
        after("worker.1", "app[worker.1]: tick")
            && after("web.1", "app[web.1]: ")
            && after("router", "router[web.1]: at=info")
    });
    assert!(
        recovered,
        "no dropped-lines report followed by new lines; reports: {:?}",
        dropped_reports(&log())
    );
    // The daemon's own events for the dyno it started meanwhile were dropped too: its next
    // event for the app reports them first.
    slip.cmd_ok(&["ps:scale", "hello", "sleeper=0"]);
    assert!(
        wait_until(Duration::from_secs(20), || dropped_reports(&log())
            .iter()
            .any(|(_, d, n)| d == "sleeper.1" && *n > 0)),
        "the daemon's dropped events were not reported; reports: {:?}",
        dropped_reports(&log())
    );
    assert_eq!(pid_of(slip, "worker.1"), Some(worker));
    assert_eq!(daemon_pid(slip), daemon);
    let daemon_log = std::fs::read_to_string(env.logs.join("slipway.log")).unwrap_or_default();
    assert!(!daemon_log.contains("panicked"), "something panicked:\n{daemon_log}");
    let reports = dropped_reports(&log());
    eprintln!(
        "disk full for {full_for:?}, {requests} requests through the router meanwhile; reports: {reports:?}"
    );
}

/// Makes `path` behave as `/dev/full`: a device node of its own as root (a root shim never
/// follows a link in the home), else a link to it.
fn plant_full_disk(path: &std::path::Path) {
    if is_root() {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL");
        // SAFETY: a NUL-terminated path and integer arguments.
        let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 7)) };
        assert_eq!(made, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
    } else {
        std::os::unix::fs::symlink("/dev/full", path).expect("link the log to /dev/full");
    }
}

/// The shim alone, no root needed: its log is `/dev/full` (every write fails with ENOSPC).
/// The dyno's 100,000 lines drain without the dyno noticing (no SIGPIPE, no blocking); once the
/// log is a writable file again the next line is preceded by the exact count of dropped lines,
/// and the shim said so once on its stderr, not once per line.
#[test]
fn a_shim_whose_log_cannot_be_written_keeps_draining_and_counts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("logs/hello/app.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    plant_full_disk(&log);
    // The dyno is confined to its private dir (`<home>/dynos/hello/<key>`): it writes `rc` in its
    // TMPDIR there, and only reads (stats) `go` in its release dir.
    let release = dir.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    let go = release.join("go");
    let rc_path = || -> Option<std::path::PathBuf> {
        std::fs::read_dir(dir.path().join("dynos/hello"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("tmp/rc"))
            .find(|p| p.exists())
    };
    let script = format!(
        "seq 1 100000; echo $? > $TMPDIR/rc; while [ ! -e {go} ]; do sleep 0.02; done; echo after",
        go = go.display()
    );
    let stderr = std::fs::File::create(dir.path().join("shim.err")).unwrap();
    let mut shim = Command::new(BIN)
        .args(["dyno-shim", "--log"])
        .arg(&log)
        .args(["--dyno", "worker.1", "--dir"])
        .arg(&release)
        .arg("--")
        .arg(format!("sh -c '{script}'"))
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn the shim");
    assert!(wait_until(Duration::from_secs(30), || rc_path().is_some()), "seq did not finish");
    let rc = rc_path().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&rc).is_ok_and(|s| s.ends_with('\n')))
    );
    assert_eq!(std::fs::read_to_string(&rc).unwrap().trim(), "0", "seq did not exit 0 (141 is SIGPIPE)");

    std::fs::remove_file(&log).unwrap();
    std::fs::write(&go, "").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || matches!(shim.try_wait(), Ok(Some(_)))),
        "the shim did not exit"
    );
    // The writer may still have had lines queued when the log came back: those are written.
    // Either way every line is accounted for: N dropped, then N+1 … 100000 in order.
    let text = std::fs::read_to_string(&log).unwrap();
    let messages: Vec<&str> = text.lines().map(|l| l.split_once(' ').map_or(l, |(_, m)| m)).collect();
    let show = || {
        format!(
            "{:?} … {:?}",
            &messages[..messages.len().min(3)],
            &messages[messages.len().saturating_sub(3)..]
        )
    };
    let dropped: u64 = messages
        .first()
        .and_then(|m| m.strip_prefix("slipway[worker.1]: "))
        .and_then(|m| m.strip_suffix(" log lines dropped (disk full)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines report first: {}", show()));
    assert!(dropped > 0, "{}", show());
    let expected: Vec<String> = (dropped + 1..=100_000)
        .map(|i| format!("app[worker.1]: {i}"))
        .chain(["app[worker.1]: after".into(), "slipway[worker.1]: Process exited with status 0".into()])
        .collect();
    assert!(messages[1..] == expected, "lines lost, doubled or out of order: {}", show());
    let diagnostics = std::fs::read_to_string(dir.path().join("shim.err")).unwrap();
    assert_eq!(diagnostics.matches("dropping lines until it works again").count(), 1, "{diagnostics}");
}
