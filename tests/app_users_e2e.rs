//! End-to-end: per-app users. Run as root (CI), the daemon gives every app a uid of its own
//! from `app_uids` (the harness gives each test its own 100): two apps' dynos run as
//! different uids, neither root nor the daemon's; a dyno cannot signal the other app's dyno
//! nor read its `/proc/<pid>/environ`, cannot write its release dir (the platform's, readable
//! by the app's group) but can write its working dir (its own); a one-off `run` runs as the
//! app's uid; `apps:rename` keeps the uid and `apps:destroy` frees it; the router does not run
//! as root. Not root: nothing to check (single-user mode is the rest of the suite).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use serde_json::Value;
use support::*;

const PROBE: &str = r#"import json, os, signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

def attempt(name, fn):
    try:
        results[name] = "ALLOWED " + str(fn())[:200]
    except Exception as e:
        results[name] = "denied %s: %s" % (type(e).__name__, e)

def create(path):
    with open(path, "w") as f:
        f.write("probe")
    return "written"

def read(path):
    with open(path, "rb") as f:
        return f.read(16)

victim = int(os.environ["VICTIM_PID"])
release = Path(os.readlink(".slipway")).parent
home = release.parents[2]
results = {}
attempt("signal another app's dyno", lambda: os.kill(victim, 0))
attempt("read its /proc/PID/environ", lambda: read("/proc/%d/environ" % victim))
attempt("write own release dir", lambda: create(release / "probe-was-here"))
attempt("read slipway.db", lambda: read(home / "slipway.db"))
attempt("write cwd", lambda: create("written-by-probe"))
attempt("write TMPDIR", lambda: create(os.path.join(os.environ["TMPDIR"], "x")))
def lock():
    import multiprocessing
    lock = multiprocessing.Lock()
    with lock:
        return "locked"
attempt("take a multiprocessing lock (/dev/shm)", lock)
who = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
       "user": os.environ.get("USER"), "cwd": os.getcwd(), "release": str(release)}

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"who": who, "results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn app_uid(slip: &Slipway, app: &str) -> u32 {
    let info = slip.app_info(app);
    info["uid"].as_u64().unwrap_or_else(|| panic!("{app} has no uid: {info}")) as u32
}

#[test]
fn each_app_runs_as_a_uid_of_its_own_and_the_router_not_as_root() {
    if !running_as_root() {
        eprintln!(
            "skipped: per-app users need the daemon to run as root; the tests run as {}",
            current_user()
        );
        return;
    }
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let range: Vec<u32> = app_uids(slip.ports).split('-').map(|n| n.parse().unwrap()).collect();

    let (victim_pid, victim_port) = slip.push_victim();

    slip.cmd_ok(&["apps:create", "probe"]);
    slip.cmd_ok(&["config:set", "probe", &format!("VICTIM_PID={victim_pid}")]);
    let repo = GitRepo::init(&slip.root().join("probe"));
    // A Python app: its dynos run the release's virtualenv, which apps:rename rewrites below.
    repo.commit_files(
        &[
            ("probe.py", PROBE.to_string()),
            ("Procfile", "web: python probe.py\n".into()),
            ("requirements.txt", REQUIREMENTS.into()),
        ],
        "p",
    );
    let (ok, out) = slip.push_local(&repo, "probe");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    let (probe_pid, probe_port) = slip.wait_web("probe");

    // Different uids, neither root nor the daemon's, from the test's range, as apps:info says.
    let daemon_pid = slip.json(&["status", "--json"])["daemon"]["pid"].as_u64().expect("daemon pid") as u32;
    let (victim_uid, probe_uid) = (app_uid(&slip, "victim"), app_uid(&slip, "probe"));
    assert_eq!(process_uids(victim_pid), vec![victim_uid; 4], "victim web.1");
    assert_eq!(process_uids(probe_pid), vec![probe_uid; 4], "probe web.1");
    assert_ne!(victim_uid, probe_uid);
    let shown = slip.ps_json("probe").into_iter().find(|d| d["name"] == "web.1").map(|d| d["uid"].clone());
    assert_eq!(shown, Some(Value::from(probe_uid)), "ps --json shows the dyno's uid");
    for uid in [victim_uid, probe_uid] {
        assert!(uid != 0 && !process_uids(daemon_pid).contains(&uid), "uid {uid}");
        assert!((range[0]..=range[1]).contains(&uid), "uid {uid} outside app_uids {range:?}");
    }

    // What the probe could do, as its own uid.
    let mut answer = None;
    wait_until(Duration::from_secs(15), || {
        answer = http_get(probe_port, "/");
        matches!(answer, Some((200, _)))
    });
    let (_, body) = answer.unwrap_or_else(|| panic!("probe does not answer\n{}", slip.diagnostics()));
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["who"]["uid"], probe_uid, "{body}");
    assert_eq!(v["who"]["gid"], probe_uid, "{body}");
    assert_eq!(v["who"]["groups"], serde_json::json!([]), "no supplementary groups: {body}");
    assert_eq!(v["who"]["user"], "probe", "{body}");
    let results: BTreeMap<String, String> = v["results"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| (k.clone(), r.as_str().unwrap().to_string()))
        .collect();
    for (name, want) in [
        ("signal another app's dyno", "denied"),
        ("read its /proc/PID/environ", "denied"),
        ("write own release dir", "denied"),
        ("read slipway.db", "denied"),
        ("write cwd", "ALLOWED"),
        ("write TMPDIR", "ALLOWED"),
        ("take a multiprocessing lock (/dev/shm)", "ALLOWED"),
    ] {
        let got = results.get(name).unwrap_or_else(|| panic!("no {name}: {body}"));
        assert!(got.starts_with(want), "{name}: {got} (want {want})\n{body}");
    }
    assert!(process_alive(victim_pid), "the victim's dyno was killed");
    assert_eq!(http_get(victim_port, "/").map(|(s, _)| s), Some(200));

    // By file modes too: the release is the platform's, read-only to the app's group; the
    // working dir is the app's.
    let release = std::path::PathBuf::from(v["who"]["release"].as_str().unwrap());
    let meta = std::fs::metadata(&release).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, probe_uid), "{}", release.display());
    assert_eq!(meta.mode() & 0o077, 0o050, "release dir mode {:o}", meta.mode());
    assert!(!release.join("probe-was-here").exists());
    let cwd = std::path::PathBuf::from(v["who"]["cwd"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&cwd).unwrap().uid(), probe_uid);
    assert_eq!(std::fs::metadata(cwd.join("written-by-probe")).unwrap().uid(), probe_uid);

    // A one-off runs as the app's uid.
    let out = slip.cmd(&[
        "run",
        "probe",
        "python3",
        "-c",
        "import os; print(os.getuid(), os.getgid(), os.getgroups())",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.trim(), format!("{probe_uid} {probe_uid} []"), "{}", describe(&out));

    // The router dropped root after binding.
    let router_pid = slip.json(&["status", "--json"])["router"]["pid"].as_u64().expect("router pid") as u32;
    let router = process_uids(router_pid);
    assert!(!router.is_empty() && !router.contains(&0), "router uids {router:?}");

    // A rename keeps the uid (and the rewritten venv stays readable to it); a destroy frees it
    // for the next app.
    slip.cmd_ok(&["apps:rename", "probe", "probe2"]);
    assert_eq!(app_uid(&slip, "probe2"), probe_uid);
    let (renamed_pid, _) = slip.wait_web("probe2");
    assert_eq!(process_uids(renamed_pid), vec![probe_uid; 4]);
    slip.cmd_ok(&["apps:destroy", "victim", "--confirm", "victim"]);
    slip.cmd_ok(&["apps:create", "newcomer"]);
    assert_eq!(app_uid(&slip, "newcomer"), victim_uid, "the destroyed app's uid is free again");
}
