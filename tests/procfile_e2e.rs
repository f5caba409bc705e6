//! Procfile lines run as on Heroku (`bash -c LINE`, not rewritten): env prefixes, `cd dir &&`,
//! `$PORT`; a line whose shell stays as the app's parent still stops gracefully and still loses
//! its leftovers when it crashes; and an app without a Procfile gets a detected web command.
//!
//! The apps with a Procfile are generic (their server script is called `server`, not `*.py`),
//! so a push builds in a fraction of a second.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A stdlib web server. Port: `--port=N` if given, else `$PORT`. Answers
/// `GREETING port=… argv=[…] cwd=… hints=WEB_CONCURRENCY,DYNO_RAM,FORWARDED_ALLOW_IPS helper=PID`, where the helper is a `sleep` child it started
/// (a process of the dyno besides the app). `/crash` ends it at once with status 3. On SIGTERM
/// it says goodbye, takes 2 s to "finish its work", says so, and exits 0.
const SERVER: &str = r#"import os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(os.environ["PORT"])
for arg in sys.argv[1:]:
    if arg.startswith("--port="):
        port = int(arg.split("=", 1)[1])
helper = subprocess.Popen(["sleep", "1000"])
hints = ",".join(os.environ.get(k, "-") for k in ("WEB_CONCURRENCY", "DYNO_RAM", "FORWARDED_ALLOW_IPS"))
body = "%s port=%d argv=%s cwd=%s hints=%s helper=%d" % (
    os.environ.get("GREETING", "none"), port, sys.argv[1:], os.path.basename(os.getcwd()), hints, helper.pid)


def goodbye(signum, frame):
    print("goodbye", flush=True)
    time.sleep(2)
    print("goodbye done", flush=True)
    os._exit(0)


signal.signal(signal.SIGTERM, goodbye)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            print("crashing", flush=True)
            os._exit(3)
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
print("listening on %d" % port, flush=True)
server.serve_forever()
"#;

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn log(slip: &Slipway, app: &str) -> String {
    std::fs::read_to_string(slip.app_log_path(app)).unwrap_or_default()
}

/// Waits until `app` has one `web.1`, up, whose pid is not `not`; returns (pid, port).
fn web_up(slip: &Slipway, app: &str, not: Option<u32>) -> (u32, u16) {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(30), || {
        let dynos = slip.ps_json(app);
        found = dynos.iter().find_map(|d| {
            if text(d, "name") != Some("web.1") || text(d, "state") != Some("up") {
                return None;
            }
            let pid = d.get("pid")?.as_u64()? as u32;
            let port = d.get("port")?.as_u64()? as u16;
            (Some(pid) != not).then_some((pid, port))
        });
        found.is_some() && dynos.len() == 1
    });
    assert!(ok, "web.1 of {app} is not up\n{}", slip.diagnostics());
    found.expect("checked by wait_until")
}

/// The body `port` answers `/` with (200 only), waiting for it to answer.
fn body(port: u16) -> String {
    let mut got = None;
    wait_until(Duration::from_secs(10), || {
        got = http_get(port, "/").filter(|(status, _)| *status == 200).map(|(_, b)| b);
        got.is_some()
    });
    got.unwrap_or_else(|| panic!("nothing answered on port {port}"))
}

fn push(slip: &Slipway, repo: &GitRepo, app: &str, version: &str) -> String {
    let (ok, out) = slip.push_local(repo, app);
    assert!(ok && out.contains(&format!("done, {version}")), "push failed:\n{out}\n{}", slip.diagnostics());
    out
}

#[test]
fn env_prefixes_cd_and_port_expand_as_in_a_shell() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(
        &[("Procfile", "web: GREETING=hi python3 server --port=$PORT\n"), ("server", SERVER)],
        "env prefix",
    );
    push(&slip, &repo, "hello", "v1");
    let (pid, port) = web_up(&slip, "hello", None);
    let got = body(port);
    assert!(got.starts_with(&format!("hi port={port} argv=['--port={port}'] cwd=")), "{got}");
    // bash execs a simple command: the app itself is the dyno's main process.
    assert_eq!(comm(pid), "python3");
    assert!(got.contains(" hints=2,512,127.0.0.1 "), "{got}");

    repo.commit_files(
        &[("Procfile", "web: cd sub && GREETING=\"from sub\" python3 server\n"), ("sub/server", SERVER)],
        "cd sub",
    );
    push(&slip, &repo, "hello", "v2");
    let (pid, port) = wait_for_new_body(&slip, "cwd=sub");
    assert!(body(port).starts_with(&format!("from sub port={port} argv=[] cwd=sub")));
    // ... and the last command of an `&&` list.
    assert_eq!(comm(pid), "python3");

    // The app's config wins over slipway's runtime hints.
    slip.cmd_ok(&["config:set", "hello", "WEB_CONCURRENCY=5", "FORWARDED_ALLOW_IPS=*"]);
    let (_, port) = wait_for_new_body(&slip, "hints=5,512,* ");
    assert!(body(port).contains("cwd=sub"));
}

/// Waits until web.1 answers with a body containing `needle` (a rollout replaced it).
fn wait_for_new_body(slip: &Slipway, needle: &str) -> (u32, u16) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(30), || {
        let (_, port) = web_up(slip, "hello", None);
        last = http_get(port, "/").map(|(_, b)| b).unwrap_or_default();
        last.contains(needle)
    });
    assert!(ok, "web.1 never answered with {needle:?}; last: {last}\n{}", slip.diagnostics());
    web_up(slip, "hello", None)
}

#[test]
fn a_line_whose_shell_stays_stops_gracefully_and_a_crash_kills_its_leftovers() {
    let mut slip = Slipway::new();
    // In the settings file, so that the shims (which see only the dyno's environment) use the
    // same grace period as the daemon.
    slip.cmd_ok(&["settings:set", "stop_timeout=8"]);
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    // A `;` list: bash stays as the parent of python3 (it has to run `echo` afterwards).
    repo.commit_files(
        &[("Procfile", "web: python3 server; echo shell-after $?\n"), ("server", SERVER)],
        "compound",
    );
    push(&slip, &repo, "hello", "v1");
    let (shell, port) = web_up(&slip, "hello", None);
    assert_eq!(comm(shell), "bash", "the dyno's main process should be the shell");
    let helper = helper_pid(&body(port));

    // A restart: the old web.1 gets SIGTERM with its whole group; bash dies at once, the app
    // takes its 2 s and is not killed meanwhile.
    let started = Instant::now();
    slip.cmd_ok(&["ps:restart", "hello", "web"]);
    let (_, new_port) = web_up(&slip, "hello", Some(shell));
    let done =
        wait_until(Duration::from_secs(15), || log(&slip, "hello").contains("app[web.1]: goodbye done"));
    let text = log(&slip, "hello");
    assert!(done, "the app was not given time to finish:\n{text}\n{}", slip.diagnostics());
    assert!(
        wait_until(Duration::from_secs(10), || log(&slip, "hello")
            .contains("Process exited with status 143")),
        "the old dyno's shim did not report the shell's SIGTERM\n{}",
        log(&slip, "hello")
    );
    assert!(started.elapsed() < Duration::from_secs(8), "the stop took the whole grace period");
    let text = log(&slip, "hello");
    assert!(!text.contains("R12") && !text.contains("SIGKILL"), "{text}");
    assert!(!text.contains("app[web.1]: shell-after"), "the shell ran on after SIGTERM:\n{text}");
    assert!(!process_alive(helper), "the old dyno's helper survived its stop");

    // A crash of the app: the shell carries on and exits 0; the dyno is over and its helper
    // goes at once, not after a grace period.
    let (shell, _) = web_up(&slip, "hello", None);
    let helper = helper_pid(&body(new_port));
    assert!(process_alive(helper));
    let crashed = Instant::now();
    let _ = http_get(new_port, "/crash");
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(helper)),
        "the crashed dyno's helper survived\n{}",
        log(&slip, "hello")
    );
    assert!(crashed.elapsed() < Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(10), || log(&slip, "hello").contains("app[web.1]: shell-after 3")),
        "{}",
        log(&slip, "hello")
    );
    let (again, _) = web_up(&slip, "hello", Some(shell));
    assert_ne!(again, shell);

    // Scaling down stops it as gracefully as a restart does.
    slip.cmd_ok(&["ps:scale", "hello", "web=0"]);
    let stopped = wait_until(Duration::from_secs(15), || {
        slip.ps_json("hello").is_empty()
            && log(&slip, "hello").matches("app[web.1]: goodbye done").count() == 2
    });
    let text = log(&slip, "hello");
    assert!(stopped, "scaling down did not let the app finish:\n{text}");
    assert!(!text.contains("R12") && !text.contains("SIGKILL"), "{text}");
}

/// The command name of process `pid` (`/proc/PID/comm`).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn helper_pid(body: &str) -> u32 {
    body.rsplit("helper=").next().and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("{body}"))
}

#[test]
fn an_app_py_without_procfile_is_detected_served_and_recorded() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(&[("app.py", python_app_py("detected and served"))], "no Procfile");
    let out = push(&slip, &repo, "hello", "v1");
    assert!(out.contains("-----> No Procfile; detected app.py: web: python app.py"), "{out}");
    assert!(out.contains("Default types for app.py -> web"), "{out}");
    let (_, port) = web_up(&slip, "hello", None);
    assert_eq!(body(port), "detected and served");

    let info = slip.json(&["releases:info", "hello", "v1", "--json"]);
    assert_eq!(info["process_types_source"], "detected app.py", "{info}");
    let text = slip.cmd_ok(&["releases:info", "hello", "v1"]);
    assert!(text.contains("Process types: web (detected app.py)"), "{text}");

    // A Procfile wins, and says so.
    repo.commit_files(&[("Procfile", "web: python app.py\n")], "Procfile");
    let out = push(&slip, &repo, "hello", "v2");
    assert!(out.contains("Procfile declares types -> web") && !out.contains("No Procfile"), "{out}");
    let info = slip.json(&["releases:info", "hello", "v2", "--json"]);
    assert_eq!(info["process_types_source"], "Procfile", "{info}");

    // Nothing to detect: the push is refused and says what it looked for.
    let other = GitRepo::init(&slip.root().join("other"));
    other.commit_files(&[("tool.py", "print('not a web app')\n")], "nothing");
    let (ok, out) = slip.push_local(&other, "other");
    assert!(!ok && out.contains("no Procfile found") && out.contains("Django"), "{out}");
}

#[test]
fn a_flask_app_with_gunicorn_is_served_by_gunicorn_with_web_concurrency_workers() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let app = "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route(\"/\")\ndef index():\n    return \"flask on gunicorn\"\n";
    repo.commit_files(&[("app.py", app), ("requirements.txt", "flask\ngunicorn\n")], "flask");
    let out = push(&slip, &repo, "hello", "v1");
    assert!(out.contains("-----> No Procfile; detected Flask: web: gunicorn app:app"), "{out}");
    let (_, port) = web_up(&slip, "hello", None);
    assert_eq!(body(port), "flask on gunicorn");
    // gunicorn binds 0.0.0.0:$PORT and starts $WEB_CONCURRENCY workers by itself.
    let booted = wait_until(Duration::from_secs(10), || {
        log(&slip, "hello").matches("Booting worker with pid").count() == 2
    });
    assert!(booted, "{}", log(&slip, "hello"));
    let info = slip.json(&["releases:info", "hello", "v1", "--json"]);
    assert_eq!(info["process_types_source"], "detected Flask", "{info}");
}

const DJANGO_MANAGE: &str = r#"#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"#;

const DJANGO_SETTINGS: &str = r#"from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = ["django.contrib.staticfiles"]
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DATABASES = {}
"#;

const DJANGO_URLS: &str = r#"from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("", lambda request: HttpResponse("django on gunicorn"))]
"#;

const DJANGO_WSGI: &str = r#"import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_wsgi_application()
"#;

#[test]
fn a_django_project_without_procfile_runs_on_gunicorn() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(
        &[
            ("manage.py", DJANGO_MANAGE),
            ("mysite/__init__.py", ""),
            ("mysite/settings.py", DJANGO_SETTINGS),
            ("mysite/urls.py", DJANGO_URLS),
            ("mysite/wsgi.py", DJANGO_WSGI),
            ("requirements.txt", "django\ngunicorn\n"),
        ],
        "django",
    );
    let out = push(&slip, &repo, "hello", "v1");
    assert!(out.contains("-----> No Procfile; detected Django: web: gunicorn mysite.wsgi"), "{out}");
    let (_, port) = web_up(&slip, "hello", None);
    assert_eq!(body(port), "django on gunicorn");
}
