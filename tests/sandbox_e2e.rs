//! End-to-end: the filesystem sandbox (Landlock) as an attacker meets it. A probe app whose
//! `bin/post_compile` (a build), whose web dynos and whose one-off `run` dyno each try every
//! access an app must not have — read `slipway.db`, write `.ssh/authorized_keys`, speak the
//! control protocol on `run/slipway.sock` or `run/router.sock`, read logs and repos, signal another app's dyno, read
//! its `/proc/<pid>/environ`, write its release dir, write their own release dir, write `/tmp`,
//! bind another port, reach an abstract unix socket outside their domain — and report what
//! held. Their working directory must be writable and private: two dynos never see each
//! other's files, and a dyno's dir goes when it stops.
//!
//! One generic push (the victim) and one Python push (the probe).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

const PROBE: &str = r#"import json, os, signal, socket, struct, sys
from pathlib import Path

def attempt(results, name, fn):
    try:
        results[name] = "ALLOWED " + str(fn())[:200]
    except Exception as e:
        results[name] = "denied %s: %s" % (type(e).__name__, e)

def read(path):
    with open(path, "rb") as f:
        return f.read(16)

def append(path):
    with open(path, "a") as f:
        f.write("probe\n")
    return "appended"

def create(path):
    with open(path, "w") as f:
        f.write("probe")
    return "written"

def control(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    def send(msg):
        body = json.dumps(msg).encode()
        s.sendall(struct.pack(">I", len(body)) + body)
    def recv():
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                raise ConnectionError("closed")
            head += chunk
        n = struct.unpack(">I", head)[0]
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        return body.decode()
    send({"Hello": {"protocol": 0, "version": "probe"}})
    reply = recv()
    if "refused" in reply:
        raise PermissionError("the daemon refused: " + reply)
    send("Status")
    return reply + " " + recv()

def router(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    s.sendall(b'{"op":"drain","id":1,"port":1,"grace_ms":0}\n')
    reply = s.recv(200)
    if not reply:
        raise PermissionError("the router closed the connection")
    return reply.decode()

def bind(port):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    return "bound %d" % port

def abstract(name):
    s = socket.socket(socket.AF_UNIX)
    s.connect("\0" + name)
    return "connected"

def probe(home, own_release):
    env = os.environ
    victim = int(env["VICTIM_PID"])
    r = {}
    attempt(r, "read slipway.db", lambda: read(home / "slipway.db"))
    attempt(r, "write .ssh/authorized_keys", lambda: append(home / ".ssh/authorized_keys"))
    attempt(r, "control socket", lambda: control(home / "run/slipway.sock"))
    attempt(r, "router socket", lambda: router(home / "run/router.sock"))
    attempt(r, "read logs", lambda: read(home / "logs/victim/app.log"))
    attempt(r, "list repos", lambda: os.listdir(home / "repos"))
    attempt(r, "signal another app's dyno", lambda: os.kill(victim, signal.SIGKILL))
    attempt(r, "read its /proc/PID/environ", lambda: read("/proc/%d/environ" % victim))
    attempt(r, "write another app's release dir", lambda: create(Path(env["VICTIM_DIR"]) / "probe-was-here"))
    if own_release is not None:
        attempt(r, "write own release dir", lambda: create(own_release / "probe-was-here"))
    attempt(r, "write /tmp", lambda: create("/tmp/slipway-probe-%d" % os.getpid()))
    attempt(r, "bind another port", lambda: bind(int(env["FREE_PORT"])))
    attempt(r, "abstract socket outside", lambda: abstract(env["ABSTRACT"]))
    attempt(r, "write cwd", lambda: create("written-by-" + env.get("DYNO", "build")))
    attempt(r, "write TMPDIR", lambda: create(os.path.join(env["TMPDIR"], "x")))
    return r

mode = sys.argv[1]
if mode == "build":
    home = Path(os.environ["BUILD_DIR"]).parents[2]
    for name, result in probe(home, None).items():
        print("probe: %s => %s" % (name, result), flush=True)
    sys.exit(0)

release = Path(os.environ["VIRTUAL_ENV"]).parents[1]
home = release.parents[2]
results = probe(home, release)
if mode == "run":
    for name, result in results.items():
        print("probe: %s => %s" % (name, result), flush=True)
    sys.exit(0)

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "dyno": os.environ["DYNO"],
            "cwd": os.getcwd(),
            "files": sorted(f for f in os.listdir(".") if f.startswith("written-by-web")),
            "results": results,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

/// `probe: NAME => RESULT` lines of some output.
fn probe_lines(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once("probe: ")?.1.split_once(" => "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Every probe but the allowed ones was denied, and each expected probe ran.
fn assert_held(what: &str, results: &BTreeMap<String, String>, expected: &[&str], context: &str) {
    let allowed = ["write cwd", "write TMPDIR"];
    for name in expected {
        let result = results
            .get(*name)
            .unwrap_or_else(|| panic!("{what}: no result for {name:?}: {results:#?}\n{context}"));
        let want = if allowed.contains(name) { "ALLOWED" } else { "denied" };
        assert!(result.starts_with(want), "{what}: {name}: {result} (want {want})\n{results:#?}\n{context}");
    }
}

const COMMON: &[&str] = &[
    "read slipway.db",
    "write .ssh/authorized_keys",
    "control socket",
    "router socket",
    "read logs",
    "list repos",
    "signal another app's dyno",
    "read its /proc/PID/environ",
    "write another app's release dir",
    "write /tmp",
    "bind another port",
    "abstract socket outside",
    "write cwd",
    "write TMPDIR",
];

fn up_web(slip: &Slipway, app: &str) -> Vec<Value> {
    slip.ps_json(app)
        .into_iter()
        .filter(|d| d["state"] == "up" && d["name"].as_str().is_some_and(|n| n.starts_with("web.")))
        .collect()
}

#[test]
fn builds_and_dynos_are_confined() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let key = slip.client_key("id_probe");
    slip.add_key("alice", &key);
    let keys_before = std::fs::read_to_string(slip.home.join(".ssh/authorized_keys")).unwrap();

    // The victim: another app with a running web dyno.
    let (victim_pid, victim_port) = slip.push_victim();
    let victim_dirs: Vec<_> =
        std::fs::read_dir(slip.home.join("releases/victim")).unwrap().flatten().collect();
    assert_eq!(victim_dirs.len(), 1);
    let victim_dir = victim_dirs[0].path();

    // Outside every sandbox: an abstract unix socket, and a free port nobody may take.
    let abstract_name = format!("slipway-sandbox-test-{}", std::process::id());
    let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
        abstract_name.as_bytes(),
    )
    .unwrap();
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let free = free_port();

    slip.cmd_ok(&["apps:create", "probe"]);
    slip.cmd_ok(&[
        "config:set",
        "probe",
        &format!("VICTIM_PID={victim_pid}"),
        &format!("VICTIM_DIR={}", victim_dir.display()),
        &format!("FREE_PORT={free}"),
        &format!("ABSTRACT={abstract_name}"),
    ]);
    let repo = GitRepo::init(&slip.root().join("probe"));
    repo.commit_files(
        &[
            ("probe.py", PROBE.to_string()),
            ("Procfile", "web: python probe.py serve\n".to_string()),
            ("requirements.txt", REQUIREMENTS.to_string()),
            ("bin/post_compile", "#!/bin/sh\nexec python probe.py build\n".to_string()),
        ],
        "probe",
    );
    let (ok, out) = slip.push_local(&repo, "probe");
    assert!(ok, "{out}\n{}", slip.diagnostics());

    // The build.
    assert_held("build", &probe_lines(&out), COMMON, &out);

    // Two web dynos.
    slip.cmd_ok(&["ps:scale", "probe", "web=2"]);
    let both = wait_until(Duration::from_secs(30), || up_web(&slip, "probe").len() == 2);
    assert!(both, "two web dynos did not come up\n{}", slip.diagnostics());
    let mut seen = Vec::new();
    for name in ["web.1", "web.2"] {
        let (_, port) = slip.dyno_up("probe", name).unwrap();
        let mut answer = None;
        wait_until(Duration::from_secs(15), || {
            answer = http_get(port, "/");
            matches!(answer, Some((200, _)))
        });
        let (_, body) = answer.unwrap_or_else(|| panic!("{name} does not answer\n{}", slip.diagnostics()));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let results: BTreeMap<String, String> = v["results"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, r)| (k.clone(), r.as_str().unwrap().to_string()))
            .collect();
        let mut expected = COMMON.to_vec();
        expected.push("write own release dir");
        assert_held(name, &results, &expected, &body);
        // Private: each sees only the file it wrote itself.
        assert_eq!(v["files"], serde_json::json!([format!("written-by-{name}")]), "{name}: {body}");
        let cwd = std::path::PathBuf::from(v["cwd"].as_str().unwrap());
        assert!(cwd.starts_with(slip.home.join("dynos/probe")), "{name} runs in {}", cwd.display());
        seen.push(cwd);
    }
    assert_ne!(seen[0], seen[1]);

    // A one-off dyno is confined the same way.
    let out = slip.cmd(&["run", "probe", "python", "probe.py", "run"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_held("run", &probe_lines(&text), COMMON, &describe(&out));

    // Nothing the probes tried left a trace.
    assert!(process_alive(victim_pid), "the victim's dyno was killed");
    assert_eq!(http_get(victim_port, "/").map(|(s, _)| s), Some(200), "the victim no longer serves");
    assert_eq!(std::fs::read_to_string(slip.home.join(".ssh/authorized_keys")).unwrap(), keys_before);
    assert!(!victim_dir.join("probe-was-here").exists());
    let release =
        std::fs::read_dir(slip.home.join("releases/probe")).unwrap().flatten().next().unwrap().path();
    assert!(!release.join("probe-was-here").exists() && !release.join("written-by-web.1").exists());
    assert_eq!(up_web(&slip, "probe").len(), 2, "{}", slip.diagnostics());

    // A dyno's dir goes with it; the one-off's is gone already.
    slip.cmd_ok(&["ps:scale", "probe", "web=1"]);
    let gone = wait_until(Duration::from_secs(30), || seen.iter().filter(|d| d.exists()).count() == 1);
    let left: Vec<_> =
        std::fs::read_dir(slip.home.join("dynos/probe")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(gone, "a stopped dyno's dir is left: {left:?}\n{}", slip.diagnostics());
    assert_eq!(left.iter().filter(|p| p.is_dir()).count(), 1, "{left:?}");
}

#[test]
fn status_says_whether_builds_and_dynos_are_confined() {
    let slip = Slipway::new();
    let out = slip.cmd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("Sandbox:")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("landlock ABI") && line.ends_with("(builds and dynos confined)")
            || line.contains("unavailable: kernel without Landlock"),
        "{line}"
    );
}

#[test]
fn the_daemon_removes_private_dirs_of_dynos_that_are_gone_at_start() {
    let mut slip = Slipway::new();
    let dynos = slip.home.join("dynos").join("hello");
    // A dyno whose shim died (its owner pid is not running) and one with no owner file at all.
    std::fs::create_dir_all(dynos.join("7/app")).unwrap();
    std::fs::write(dynos.join("7/app/state"), "x").unwrap();
    std::fs::write(dynos.join("7.owner"), "999999999 1\n").unwrap();
    std::fs::create_dir_all(dynos.join("run.1-42/tmp")).unwrap();
    // One whose owner lives (this test) stays.
    let me = std::process::id();
    let start = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let start = start.rsplit(')').next().unwrap().split_whitespace().nth(19).unwrap().to_string();
    std::fs::create_dir_all(dynos.join("8/app")).unwrap();
    std::fs::write(dynos.join("8.owner"), format!("{me} {start}\n")).unwrap();
    slip.start_daemon();
    let gone = wait_until(Duration::from_secs(10), || {
        !dynos.join("7").exists() && !dynos.join("7.owner").exists() && !dynos.join("run.1-42").exists()
    });
    assert!(gone, "leftovers stayed: {:?}\n{}", list_tree(&dynos), slip.diagnostics());
    assert!(dynos.join("8/app").is_dir(), "a live owner's dir was removed");
}
