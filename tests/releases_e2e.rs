//! Releases, config vars, rollback, the release phase, and the complete Python build: each
//! behaviour through a real push or a real command.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// A stdlib web app without `.py` files (a generic build, no virtualenv): answers every GET
/// with its body and, on `/env`, with its whole environment as JSON.
const ENV_SERVER: &str = r#"import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = sys.argv[1].encode()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(os.environ)).encode() if self.path == "/env" else BODY
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn app_files(body: &str, extra_procfile: &str) -> Vec<(String, String)> {
    vec![
        ("Procfile".into(), format!("web: python3 server {body}\n{extra_procfile}")),
        ("server".into(), ENV_SERVER.into()),
    ]
}

fn push(slip: &Slipway, repo: &GitRepo, files: &[(String, String)], message: &str) -> (bool, String) {
    repo.commit_files(files, message);
    slip.push_local(repo, "hello")
}

fn web_port(slip: &Slipway, release: &str) -> u16 {
    slip.release_web_port("hello", release, Duration::from_secs(20))
}

fn get(port: u16, path: &str) -> String {
    get_200(port, path, Duration::from_secs(10))
}

fn dyno_env(port: u16) -> Value {
    serde_json::from_str(&get(port, "/env")).unwrap_or(Value::Null)
}

fn releases(slip: &Slipway) -> Vec<(String, String, String)> {
    slip.json(&["releases", "hello", "--json"])
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("version"), s("description"), s("status"))
        })
        .collect()
}

#[test]
fn config_values_round_trip_exactly_and_reach_the_dyno() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let (ok, out) = push(&slip, &repo, &app_files("one", ""), "v1");
    assert!(ok, "{out}");
    let awkward = [
        ("SPACES", "a value with  spaces "),
        ("QUOTES", r#"it's "quoted" and \backslashed\"#),
        ("EQUALS", "a=b=c"),
        ("NEWLINES", "line one\nline two\n"),
        ("UNICODE", "ünïcødé ✓ 🚀"),
        ("EMPTY", ""),
        ("DOLLAR", "$HOME `id` $(id)"),
    ];
    let pairs: Vec<String> = awkward.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["config:set", "hello"];
    args.extend(pairs.iter().map(String::as_str));
    slip.cmd_ok(&args);

    let config = slip.json(&["config", "hello", "--json"]);
    for (k, v) in awkward {
        assert_eq!(config[k], v, "config --json {k}");
        let got = slip.cmd_ok(&["config:get", "hello", k]);
        assert_eq!(got, format!("{v}\n"), "config:get {k}");
    }
    let port = web_port(&slip, "v2");
    let env = dyno_env(port);
    for (k, v) in awkward {
        assert_eq!(env[k], v, "dyno env {k}");
    }
    // --shell output evaluates back to the same values.
    let shell = slip.cmd_ok(&["config", "hello", "--shell"]);
    let script = format!("{shell}\nprintf '%s' \"$QUOTES|$NEWLINES|$DOLLAR\"");
    let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}|{}|{}", awkward[1].1, awkward[3].1, awkward[6].1)
    );
    // Keys, never values, reach the log.
    let log = std::fs::read_to_string(slip.app_log_path("hello")).unwrap();
    assert!(
        log.contains("Set DOLLAR, EMPTY, EQUALS, NEWLINES, QUOTES, SPACES, UNICODE config vars"),
        "{log}"
    );
    assert!(!log.contains("backslashed"), "a config value leaked into the log");

    // With the daemon stopped the change is saved and applied when it starts.
    slip.stop_daemon();
    let offline = slip.cmd(&["config:set", "hello", "LATER=yes"]);
    assert!(offline.status.success(), "{}", describe(&offline));
    assert!(String::from_utf8_lossy(&offline.stderr).contains("dynos move onto v3 when it starts"));
    assert_eq!(slip.json(&["config", "hello", "--json"])["LATER"], "yes");
    slip.start_daemon();
    assert_eq!(dyno_env(web_port(&slip, "v3"))["LATER"], "yes");

    let bad = slip.cmd(&["config:set", "hello", "9BAD=x"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not a valid config key"));
    assert_eq!(releases(&slip).len(), 3, "a refused change created a release");
}

#[test]
fn releases_number_deploys_config_and_rollbacks_and_rollback_restores_code_and_config() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    assert!(push(&slip, &repo, &app_files("one", ""), "one").0); // v1
    slip.cmd_ok(&["config:set", "hello", "FOO=a"]); // v2
    assert!(push(&slip, &repo, &app_files("two", ""), "two").0); // v3
    slip.cmd_ok(&["config:set", "hello", "FOO=b"]); // v4
    let port = web_port(&slip, "v4");
    assert_eq!(get(port, "/"), "two");
    assert_eq!(dyno_env(port)["FOO"], "b");

    let out = slip.cmd_ok(&["rollback", "hello"]); // v5 = v3: code two, FOO=a
    assert!(out.contains("done, v5"), "{out}");
    let port = web_port(&slip, "v5");
    assert_eq!((get(port, "/"), dyno_env(port)["FOO"].clone()), ("two".to_string(), Value::from("a")));
    slip.cmd_ok(&["rollback", "hello", "v2"]); // v6 = v2: code one, FOO=a
    let port = web_port(&slip, "v6");
    assert_eq!(get(port, "/"), "one");
    assert_eq!(slip.json(&["config", "hello", "--json"])["FOO"], "a");

    // --no-restart: stored and current at once, the running dyno keeps its environment.
    let before = slip.ps_json("hello")[0]["pid"].clone();
    slip.cmd_ok(&["config:set", "hello", "BAR=1", "--no-restart"]); // v7
    let now = slip.ps_json("hello");
    assert_eq!(now[0]["pid"], before, "--no-restart restarted the dyno");
    assert_eq!(now[0]["release"], "v7");
    assert!(dyno_env(web_port(&slip, "v7")).get("BAR").is_none());
    slip.cmd_ok(&["ps:restart", "hello"]);
    let mut bar = Value::Null;
    wait_until(Duration::from_secs(20), || {
        bar = dyno_env(web_port(&slip, "v7"))["BAR"].clone();
        bar == "1"
    });
    assert_eq!(bar, "1", "the restarted dyno lacks the stored config");
    slip.cmd_ok(&["config:unset", "hello", "BAR"]); // v8

    let list = releases(&slip);
    let descriptions: Vec<&str> = list.iter().map(|(_, d, _)| d.as_str()).collect();
    assert_eq!(descriptions.len(), 8);
    assert_eq!(descriptions[0], "Remove BAR config vars");
    assert_eq!(descriptions[2], "Rollback to v2");
    assert_eq!(descriptions[3], "Rollback to v3");
    assert_eq!(descriptions[4], "Set FOO config vars");
    assert!(descriptions[5].starts_with("Deploy ") && descriptions[7].starts_with("Deploy "));
    let info = slip.json(&["releases:info", "hello", "v6", "--json"]);
    assert_eq!(info["kind"], "rollback");
    assert_eq!(info["config_keys"], serde_json::json!(["FOO"]));
    assert!(info["commit"].as_str().is_some_and(|c| c.len() == 40), "{info}");
    assert!(info["slug_bytes"].as_u64().is_some_and(|b| b > 0), "{info}");
    let err = slip.cmd(&["rollback", "hello", "v99"]);
    assert!(!err.status.success() && String::from_utf8_lossy(&err.stderr).contains("no release v99"));
}

#[test]
fn a_failing_release_phase_rejects_the_push_and_the_config_change() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let release = "release: sh -c 'echo migrating $DYNO; test \"$BREAK\" != 1'\n";
    let (ok, out) = push(&slip, &repo, &app_files("one", release), "v1");
    assert!(ok, "{out}");
    assert!(out.contains("migrating release.1"), "release phase output not streamed to the push:\n{out}");
    let log = std::fs::read_to_string(slip.app_log_path("hello")).unwrap();
    assert!(log.contains("app[release.1]: migrating release.1"), "{log}");
    assert_eq!(slip.json(&["releases:info", "hello", "v1", "--json"])["release_phase"], "succeeded");
    let port = web_port(&slip, "v1");

    // A release command that fails: the push is rejected, v1 keeps serving.
    let failing = "release: sh -c 'echo boom; exit 3'\n";
    let (ok, out) = push(&slip, &repo, &app_files("two", failing), "v2");
    assert!(!ok, "a failing release phase was accepted:\n{out}");
    assert!(out.contains("boom") && out.contains("exit 3"), "{out}");
    assert_eq!(slip.app_info("hello")["release"], "v1");
    assert_eq!(get(port, "/"), "one");
    assert_eq!(slip.json(&["releases:info", "hello", "v2", "--json"])["release_phase"], "failed: exit 3");

    // A config change whose release phase fails is refused and changes nothing.
    let out = slip.cmd(&["config:set", "hello", "BREAK=1"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the config is unchanged"));
    assert!(slip.json(&["config", "hello", "--json"]).get("BREAK").is_none());
    assert_eq!(slip.app_info("hello")["release"], "v1");
    assert_eq!(get(web_port(&slip, "v1"), "/"), "one");
}

#[test]
fn warm_redeploys_reuse_dependencies_and_builds_honour_their_files() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let mut files: Vec<(String, String)> =
        python_app("cold").into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    files.push((".slugignore".into(), "*.psd\n/docs\n".into()));
    files.push(("art.psd".into(), "big".into()));
    files.push(("docs/guide.md".into(), "text".into()));
    files.push(("lib/docs/keep.txt".into(), "kept".into()));
    let (ok, out) = push(&slip, &repo, &files, "cold");
    assert!(ok, "{out}");
    // Its requirements.txt is only a comment: a venv, and no installer started for nothing.
    assert!(out.contains("Creating virtualenv"), "{out}");
    assert!(out.contains("No dependencies in requirements.txt (only comments and blank lines)"), "{out}");
    assert!(!out.contains("Installing dependencies with"), "{out}");

    // Code only: no installer runs, the cloned environment works.
    repo.commit_files(&[("app.py", python_app_py("warm"))], "warm");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    assert!(out.contains("Using cached dependencies (key "), "{out}");
    assert!(!out.contains("Installing dependencies") && !out.contains("Creating virtualenv"), "{out}");
    assert_eq!(get(web_port(&slip, "v2"), "/"), "warm");

    // .slugignore'd files are in neither the slug nor the release dir.
    let info = slip.json(&["releases:info", "hello", "v2", "--json"]);
    let build = info["build_id"].as_str().unwrap().to_string();
    let slug = slip.home.join(format!("slugs/hello/{build}.tar.gz"));
    let listing = std::process::Command::new("tar").arg("tzf").arg(&slug).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let entries: Vec<&str> = listing.lines().map(|l| l.trim_start_matches("./")).collect();
    for wanted in ["app.py", "lib/docs/keep.txt", ".slipway/venv/bin/python"] {
        assert!(entries.contains(&wanted), "{wanted} missing from the slug: {entries:?}");
    }
    assert!(!entries.iter().any(|e| *e == "art.psd" || e.starts_with("docs")), "{entries:?}");

    // A changed dependency file means a fresh environment.
    repo.commit_files(&[("requirements.txt", "# still nothing, but a different file\n")], "deps");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok && out.contains("Creating virtualenv") && !out.contains("Using cached"), "{out}");

    // Two dependency files, and an end-of-life Python (refused as by Heroku): rejected, naming them.
    repo.commit_files(&[("poetry.lock", "")], "two");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok && out.contains("requirements.txt and poetry.lock"), "{out}");
    repo.git_ok(&["rm", "-q", "poetry.lock"]);
    repo.commit_files(&[(".python-version", "3.2\n")], "old python");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok && out.contains("Python 3.2 has reached its upstream end-of-life"), "{out}");
    assert_eq!(slip.app_info("hello")["release"], "v3");
}

#[test]
fn a_build_that_runs_too_long_is_killed_with_its_process_group() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BUILD_TIMEOUT".into(), "3".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let mut files = app_files("x", "");
    files.push(("bin/post_compile".into(), "sleep 1000 &\necho grandchild $!\nsleep 1000\n".into()));
    let (ok, out) = push(&slip, &repo, &files, "slow");
    assert!(!ok, "{out}");
    assert!(out.contains("ran out of time (SLIPWAY_BUILD_TIMEOUT)"), "{out}");
    let pid: u32 = out
        .lines()
        .find_map(|l| l.split("grandchild ").nth(1)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no grandchild pid in:\n{out}"));
    assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)), "the build's grandchild survived");
    assert!(releases(&slip).is_empty());
    let leftovers = std::fs::read_dir(slip.home.join("releases/hello")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "a timed-out build left its release dir");
}

#[test]
fn retention_keeps_the_newest_slugs_and_says_why_an_old_rollback_cannot_happen() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_KEEP_RELEASES".into(), "2".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    for n in 1..=4 {
        let (ok, out) = push(&slip, &repo, &app_files(&format!("n{n}"), ""), &format!("n{n}"));
        assert!(ok, "{out}");
    }
    let dirs = std::fs::read_dir(slip.home.join("releases/hello")).unwrap().count();
    let slugs = std::fs::read_dir(slip.home.join("slugs/hello")).unwrap().count();
    assert_eq!((dirs, slugs), (2, 2), "retention kept the wrong number of builds");
    assert_eq!(releases(&slip).len(), 4, "release rows must stay");
    let out = slip.cmd(&["rollback", "hello", "v1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("removed by the retention policy"),
        "{}",
        describe(&out)
    );
    let out = slip.cmd_ok(&["rollback", "hello", "v3"]);
    assert!(out.contains("done, v5"));
    assert_eq!(get(web_port(&slip, "v5"), "/"), "n3");
}

/// Real packages from PyPI (the only test that needs the package index): the same dependency
/// (`six==1.16.0`) through requirements.txt, Pipfile.lock (package hashes and pipenv's Pipfile hash checked) and uv.lock (uv is
/// installed for the server on first use). The release phase proves the venv can import it.
#[test]
fn dependencies_install_from_pypi_with_pip_pipfile_lock_and_uv_lock() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let check = "release: python -c 'import six; print(\"six is\", six.__version__)'\n";
    let pipfile_lock = r#"{"_meta": {"hash": {"sha256": "f162d2e398108da068327e701ee9472102db75565b86c0415420968db20ef679"}, "pipfile-spec": 6, "requires": {},
        "sources": [{"name": "pypi", "url": "https://pypi.org/simple", "verify_ssl": true}]},
      "default": {"six": {"version": "==1.16.0", "hashes": [
        "sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926",
        "sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"]}},
      "develop": {}}"#;
    let uv_lock = include_str!("fixtures/uv.lock");
    let uv_pyproject = include_str!("fixtures/uv-pyproject.toml");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str); // app, files, installer line
    let cases: [Case<'_>; 3] = [
        ("with-pip", vec![("requirements.txt", "six==1.16.0\n")], "with pip"),
        (
            "with-pipfile",
            vec![("Pipfile", "[packages]\nsix = \"==1.16.0\"\n"), ("Pipfile.lock", pipfile_lock)],
            "from Pipfile.lock",
        ),
        // A uv app names its Python in .python-version, as Heroku requires (python3.11 is here).
        (
            "with-uv",
            vec![("pyproject.toml", uv_pyproject), ("uv.lock", uv_lock), (".python-version", "3.11\n")],
            "uv sync --locked",
        ),
    ];
    for (app, files, installer) in cases {
        let repo = GitRepo::init(&slip.root().join(app));
        let mut all: Vec<(String, String)> = vec![
            ("Procfile".into(), format!("web: python app.py\n{check}")),
            ("app.py".into(), python_app_py(app)),
        ];
        all.extend(files.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        repo.commit_files(&all, app);
        let _ = slip.cmd(&["apps:create", app]);
        let path = slip.home.join("repos").join(format!("{app}.git"));
        let mut cmd = repo.command(&["push", &path.to_string_lossy(), "HEAD:main"]);
        let (ok, out) = run_combined(&mut cmd, PUSH_TIMEOUT);
        assert!(ok, "{app}: push failed:\n{out}");
        assert!(out.contains(installer), "{app}: expected '{installer}' in:\n{out}");
        assert!(out.contains("six is 1.16.0"), "{app}: the release phase could not import six:\n{out}");
    }
}
