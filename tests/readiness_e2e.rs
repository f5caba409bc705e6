//! No bad deploy goes live: a new web dyno is ready only when it accepts connections, stays up
//! for the settle period and passes its `app.json` health checks; a release whose web dynos
//! crash repeatedly soon after going live is rolled back automatically.
//!
//! The apps are generic (no `.py` file): one stdlib server script whose behaviour the
//! environment chooses, so a push takes a fraction of a second.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// Serves `argv[1]` on `/`, and `/health` with `$HEALTH_STATUS` (200) and body `$HEALTH_BODY`
/// ("ok"). With `$DIE_AFTER` it exits with status 3 that many seconds after binding, as a
/// gunicorn master does when its worker fails to import the app.
const SERVER: &str = r#"import os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = sys.argv[1].encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/health":
            status, body = int(os.environ.get("HEALTH_STATUS", "200")), os.environ.get("HEALTH_BODY", "ok").encode()
        else:
            status, body = 200, BODY
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H)
print("Listening at: http://0.0.0.0:%s" % os.environ["PORT"], flush=True)
if os.environ.get("DIE_AFTER"):
    def die():
        time.sleep(float(os.environ["DIE_AFTER"]))
        print("[ERROR] Worker failed to boot.", flush=True)
        os._exit(3)
    threading.Thread(target=die, daemon=True).start()
server.serve_forever()
"#;

fn get(router: &str, host: &str) -> Option<(u16, String)> {
    router_get(router, host, "/")
}

fn serves(slip: &Slipway, body: &str) -> bool {
    wait_until(Duration::from_secs(30), || {
        // A body, chunked or not (gunicorn chunks a WSGI answer without Content-Length).
        get(&slip.router_addr, "hello.localhost").is_some_and(|(s, b)| s == 200 && b.contains(body))
    })
}

fn push(
    slip: &Slipway,
    repo: &GitRepo,
    procfile: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> (bool, String) {
    let mut files = vec![("Procfile", procfile.to_string()), ("server", SERVER.to_string())];
    files.extend(extra.iter().map(|(p, c)| (*p, c.to_string())));
    repo.commit_files(&files, body);
    slip.push_local(repo, "hello")
}

fn deploy_v1(slip: &Slipway) -> GitRepo {
    let repo = GitRepo::init(&slip.root().join("work"));
    let (ok, out) = push(slip, &repo, "web: python3 server v1\n", "v1", &[]);
    assert!(ok, "{out}\n{}", slip.diagnostics());
    assert!(serves(slip, "v1"), "{}", slip.diagnostics());
    repo
}

/// A gunicorn-like server binds its port, then dies because its worker cannot import the
/// app. It used to go live 55 ms after start (the port check passed) and crash-loop.
#[test]
fn a_server_that_dies_after_binding_is_not_deployed_and_the_old_release_keeps_serving() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "3".into()));
    slip.start_daemon();
    let repo = deploy_v1(&slip);

    let (ok, out) = push(&slip, &repo, "web: env DIE_AFTER=1 python3 server v2\n", "v2", &[]);
    assert!(!ok, "a release whose web dyno dies after binding went live:\n{out}");
    assert!(out.contains("web.1 exited during boot"), "{out}");
    assert!(out.contains("The last lines of web.1:"), "the push must show the dyno's output:\n{out}");
    assert!(out.contains("Worker failed to boot"), "{out}");
    assert!(out.contains("Process exited with status 3"), "{out}");
    assert!(serves(&slip, "v1"), "v1 must keep serving\n{}", slip.diagnostics());
    let releases = slip.json(&["releases", "hello", "--json"]);
    assert_eq!(releases[0]["status"], "failed", "{releases}");
    let info = slip.json(&["releases:info", "hello", "v2", "--json"]);
    let failure = info["failure"].as_str().unwrap_or("");
    assert!(failure.contains("web.1 exited during boot"), "releases:info must say why v2 failed: {info}");
    assert_eq!(releases[1]["current"], true, "{releases}");
}

/// While the push waits for its dynos it says so, and names them.
#[test]
fn a_slow_boot_shows_progress_on_the_push() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let repo = deploy_v1(&slip);
    let (ok, out) = push(&slip, &repo, "web: sh -c 'sleep 6; exec python3 server v2'\n", "v2", &[]);
    assert!(ok, "{out}\n{}", slip.diagnostics());
    assert!(out.contains("-----> Waiting for web.1 to be ready... (5 s)"), "{out}");
    assert!(serves(&slip, "v2"), "{}", slip.diagnostics());
}

/// Dokku's app.json health checks: a failing one rejects the push with its reason, a passing
/// one goes live.
#[test]
fn app_json_health_checks_decide_whether_a_release_goes_live() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let repo = deploy_v1(&slip);
    let app_json = r#"{"healthchecks": {"web": [{"type": "startup", "name": "health", "path": "/health",
        "attempts": 2, "timeout": 2, "wait": 1, "content": "ok"}]}}"#;

    let (ok, out) =
        push(&slip, &repo, "web: env HEALTH_STATUS=500 python3 server v2\n", "v2", &[("app.json", app_json)]);
    assert!(!ok, "a release failing its health check went live:\n{out}");
    assert!(out.contains("web.1 failed its health check"), "{out}");
    assert!(out.contains("500"), "the reason must name the status:\n{out}");
    assert!(serves(&slip, "v1"), "{}", slip.diagnostics());

    let (ok, out) =
        push(&slip, &repo, "web: env HEALTH_BODY=wrong python3 server v3\n", "v3", &[("app.json", app_json)]);
    assert!(!ok && out.contains("web.1 failed its health check"), "{out}");

    let (ok, out) = push(&slip, &repo, "web: python3 server v4\n", "v4", &[("app.json", app_json)]);
    assert!(ok, "a release passing its health check was refused:\n{out}\n{}", slip.diagnostics());
    assert!(serves(&slip, "v4"), "{}", slip.diagnostics());
}

/// A release that passes its checks but whose web dynos then crash again and again is rolled
/// back to the release it replaced, by a rollback release `releases` shows.
#[test]
fn a_crash_loop_right_after_going_live_is_rolled_back_automatically() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let repo = deploy_v1(&slip);

    let (ok, out) = push(&slip, &repo, "web: env DIE_AFTER=1.5 python3 server v2\n", "v2", &[]);
    assert!(ok, "v2 passes its checks and goes live:\n{out}");
    let rolled_back = wait_until(Duration::from_secs(60), || {
        let releases = slip.json(&["releases", "hello", "--json"]);
        releases[0]["version"] == "v3" && releases[0]["current"] == true
    });
    let releases = slip.json(&["releases", "hello", "--json"]);
    assert!(rolled_back, "no automatic rollback: {releases}\n{}", slip.diagnostics());
    let newest = &releases[0];
    assert_eq!(newest["description"], "Rollback to v1", "{releases}");
    let by = newest["created_by"].as_str().unwrap_or("");
    assert!(by.starts_with("slipway (automatic: web dynos of v2 crashed 3 times"), "{releases}");
    assert!(serves(&slip, "v1"), "{}", slip.diagnostics());
    let log = std::fs::read_to_string(slip.app_log_path("hello")).unwrap_or_default();
    assert!(log.contains("Rolling back to v1: web dynos of v2 crashed 3 times"), "{log}");
    // It stays rolled back: the good release runs, nothing rolls forward again.
    let ps = slip.ps_json("hello");
    assert!(ps.iter().all(|d| d["release"] == "v3"), "{}", Value::Array(ps));
}

/// A release without a web process type while web dynos are scaled: the push warns.
#[test]
fn a_release_without_web_warns_that_web_dynos_will_stop() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let repo = deploy_v1(&slip);
    let (ok, out) = push(&slip, &repo, "Web-Server: python3 server v2\n", "v2", &[]);
    assert!(ok, "{out}");
    assert!(out.contains("has no web process type"), "{out}");
    assert!(out.contains("H14"), "{out}");
}

/// The case found by trying it, with the real gunicorn: its master binds `$PORT` before its
/// worker imports the app; the import fails, the worker dies, the master exits. It used to go
/// live 55 ms after start (the port check passed) and crash-loop with H10.
#[test]
fn a_gunicorn_app_that_fails_at_import_is_rejected_and_the_old_release_keeps_serving() {
    let mut slip = Slipway::new();
    slip.start_daemon(); // the default settle period, 3 s
    let repo = GitRepo::init(&slip.root().join("work"));
    let good = "def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'v1 on gunicorn']\n";
    let files = |app_py: &str| -> Vec<(&'static str, String)> {
        vec![
            ("app.py", app_py.to_string()),
            ("requirements.txt", "gunicorn\n".to_string()),
            ("Procfile", "web: gunicorn app:app --workers 1\n".to_string()),
        ]
    };
    repo.commit_files(&files(good), "v1");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    assert!(serves(&slip, "v1 on gunicorn"), "{}", slip.diagnostics());

    repo.commit_files(&files("import a_module_that_does_not_exist\n"), "v2");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok, "an app that cannot be imported went live:\n{out}");
    assert!(out.contains("web.1 exited during boot"), "{out}");
    assert!(out.contains("ModuleNotFoundError") || out.contains("Worker failed to boot"), "{out}");
    assert!(serves(&slip, "v1 on gunicorn"), "v1 must keep serving\n{}", slip.diagnostics());
}
