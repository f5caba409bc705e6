//! End-to-end: `git push` over a real OpenSSH sshd on 127.0.0.1 into a real slipway daemon.
//!
//! Each test has its own sshd, `SLIPWAY_HOME`, port range and daemon (see `support`), so they
//! run in parallel. Pushes build real virtualenvs, so each test keeps its pushes few.

mod support;

use std::fs;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// The `web.1` dyno that is `up`, if any (during a deploy `ps` may also list a stopping one).
fn web1_up(ps: &[Value]) -> Option<&Value> {
    ps.iter().find(|d| {
        d.get("name").and_then(Value::as_str) == Some("web.1")
            && d.get("state").and_then(Value::as_str) == Some("up")
    })
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Everything useful when an assertion fails.
fn context(slip: &Slipway, sshd: &Sshd) -> String {
    format!("{}--- sshd.log ---\n{}", slip.diagnostics(), sshd.log())
}

/// Waits (up to `timeout`) for an up `web.1` of `release` and returns (pid, port).
fn wait_web1(slip: &Slipway, sshd: &Sshd, app: &str, release: &str, timeout: Duration) -> (u32, u16) {
    let mut found = None;
    let mut last = Vec::new();
    wait_until(timeout, || {
        last = slip.ps_json(app);
        found = web1_up(&last)
            .filter(|d| text(d, "release") == Some(release))
            .and_then(|d| Some((num(d, "pid")? as u32, num(d, "port")? as u16)));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no up web.1 of {release} with a pid and a port within {timeout:?}; last ps --json: {}\n{}",
            Value::Array(last.clone()),
            context(slip, sshd)
        )
    })
}

/// Waits (up to 15 s) for `GET /` on `port` to answer 200 with `body`.
fn assert_serves(slip: &Slipway, sshd: &Sshd, port: u16, body: &str) {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(15), || {
        last = http_get(port, "/");
        matches!(&last, Some((200, b)) if b.trim() == body)
    });
    assert!(ok, "GET / on port {port}: wanted 200 {body:?}, last answer {last:?}\n{}", context(slip, sshd));
}

fn release_of(slip: &Slipway, app: &str) -> Value {
    slip.app_info(app).get("release").cloned().unwrap_or(Value::Null)
}

#[test]
fn push_deploys_and_redeploys() {
    let mut slip = Slipway::new();
    let key = slip.client_key("id_client");
    let sshd = slip.start_sshd();
    slip.start_daemon();

    // keys:add writes the forced-command line.
    slip.add_key("alice", &key);
    let authorized = fs::read_to_string(slip.authorized_keys()).expect("read authorized_keys");
    let line = authorized
        .lines()
        .find(|l| l.contains(key.blob()))
        .unwrap_or_else(|| panic!("alice's key is not in authorized_keys:\n{authorized}"));
    let expected = format!(
        " --home {} ssh-serve --key alice\",restrict,pty ssh-ed25519 {}",
        slip.home.display(),
        key.blob()
    );
    assert!(
        line.starts_with("command=\"/") && line.contains(&expected),
        "authorized_keys line {line:?} should be command=\"/abs/slipway{expected}"
    );
    assert!(slip.cmd_ok(&["keys"]).contains("alice"), "`slipway keys` does not list alice");

    // First deploy: v1.
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(&python_app("hello v1"), "hello v1");
    let ssh = sshd.ssh_command(&key.path);
    let (ok, out) = repo.push(&sshd.url("hello"), &ssh);
    assert!(ok, "first push failed:\n{out}\n{}", context(&slip, &sshd));
    assert!(out.contains("-----> Python app detected"), "no detection line:\n{out}");
    assert!(out.contains("-----> Launching... done, v1"), "no `done, v1`:\n{out}");
    assert_timing_line(&out);

    let (v1_pid, v1_port) = wait_web1(&slip, &sshd, "hello", "v1", Duration::from_secs(20));
    assert_serves(&slip, &sshd, v1_port, "hello v1");

    let mut logs = String::new();
    let logged = wait_until(Duration::from_secs(15), || {
        logs = slip.cmd_ok(&["logs", "hello", "-n", "50"]);
        logs.contains(" app[web.1]: ") && logs.contains("slipway[web.1]: State changed from starting to up")
    });
    assert!(
        logged,
        "logs hello -n 50 lacks an app[web.1] line or the starting→up line:\n{logs}\n{}",
        context(&slip, &sshd)
    );
    assert_eq!(release_of(&slip, "hello"), "v1");
    let apps = slip.apps_json();
    assert!(apps.iter().any(|a| text(a, "name") == Some("hello")), "apps --json lacks hello: {apps:?}");

    // Second deploy (scp-like URL this time): v2 replaces v1.
    repo.commit_files(&[("app.py", python_app_py("hello v2"))], "hello v2");
    let (ok, out) = repo.push(&sshd.scp_url("hello"), &ssh);
    assert!(ok, "second push failed:\n{out}\n{}", context(&slip, &sshd));
    assert!(out.contains("-----> Launching... done, v2"), "no `done, v2`:\n{out}");
    assert_timing_line(&out);

    let (v2_pid, v2_port) = wait_web1(&slip, &sshd, "hello", "v2", Duration::from_secs(30));
    assert_ne!(v2_pid, v1_pid, "web.1 of v2 has the pid of v1's");
    assert_serves(&slip, &sshd, v2_port, "hello v2");
    assert!(
        wait_until(Duration::from_secs(40), || !process_alive(v1_pid)),
        "v1's web.1 (pid {v1_pid}) still runs 40 s after v2 was deployed\n{}",
        context(&slip, &sshd)
    );
    assert_eq!(release_of(&slip, "hello"), "v2");

    // A failing dependency install rejects the push; v2 keeps serving.
    repo.commit_files(
        &[("requirements.txt", "--no-index\nno-such-package-slipway-test==1.0\n")],
        "unresolvable requirement",
    );
    let (ok, out) = repo.push(&sshd.url("hello"), &ssh);
    assert!(!ok, "push with an uninstallable requirement succeeded:\n{out}");
    assert!(out.contains(" !     "), "failed build printed no ` !     ` error line:\n{out}");
    assert_eq!(release_of(&slip, "hello"), "v2", "a failed build changed the release");
    let (pid, port) = wait_web1(&slip, &sshd, "hello", "v2", Duration::from_secs(5));
    assert_eq!(pid, v2_pid, "a failed build replaced the running web.1");
    assert_serves(&slip, &sshd, port, "hello v2");

    // A broken Procfile (with good requirements) is rejected with its line number.
    repo.commit_files(
        &[("requirements.txt", REQUIREMENTS), ("Procfile", "web: python app.py\nthis line is broken\n")],
        "broken Procfile",
    );
    let (ok, out) = repo.push(&sshd.url("hello"), &ssh);
    assert!(!ok, "push with a broken Procfile succeeded:\n{out}");
    assert!(
        out.contains("Procfile") && out.contains("line 2"),
        "the error does not name `Procfile` and `line 2`:\n{out}"
    );
    assert_eq!(release_of(&slip, "hello"), "v2", "a rejected Procfile changed the release");
    let (pid, port) = wait_web1(&slip, &sshd, "hello", "v2", Duration::from_secs(5));
    assert_eq!(pid, v2_pid, "a rejected Procfile replaced the running web.1");
    assert_serves(&slip, &sshd, port, "hello v2");
}

#[test]
fn ssh_refuses_unknown_key_and_never_runs_a_shell() {
    let mut slip = Slipway::new();
    let key = slip.client_key("id_client");
    let stranger = slip.client_key("id_stranger");
    let sshd = slip.start_sshd();
    slip.start_daemon();
    slip.add_key("alice", &key);

    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(&python_app("hello"), "hello");

    // An unknown key is refused by sshd itself.
    let (ok, out) = repo.push(&sshd.url("intruder"), &sshd.ssh_command(&stranger.path));
    assert!(!ok, "push with an unauthorised key succeeded:\n{out}");
    assert!(out.contains("Permission denied"), "unexpected refusal:\n{out}\n{}", context(&slip, &sshd));
    assert!(slip.apps_json().is_empty(), "an unauthorised push created an app");
    assert!(
        !dir_has_entries(&slip.home.join("repos")),
        "an unauthorised push created repos: {:?}",
        list_tree(&slip.home.join("repos"))
    );

    // Whatever the client asks for is split into words, never given to a shell.
    let mark = |i: u32| slip.root().join(format!("MARK{i}"));
    let attempts = [
        format!("apps; touch {}", mark(1).display()),
        format!("apps && touch {}", mark(2).display()),
        format!("apps `touch {}`", mark(3).display()),
        format!("apps $(touch {})", mark(4).display()),
        format!("touch {}", mark(5).display()),
    ];
    for attempt in &attempts {
        let out = sshd.ssh(&key.path, &[attempt.as_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ssh {attempt:?} exited 0:\n{}", describe(&out));
        assert!(
            !stderr.trim().is_empty() && !stderr.contains("Permission denied"),
            "ssh {attempt:?} should fail with slipway's error on stderr:\n{}\n{}",
            describe(&out),
            context(&slip, &sshd)
        );
    }
    for i in 1..=5 {
        assert!(!mark(i).exists(), "{} exists: a shell ran the command", mark(i).display());
    }

    let out = sshd.ssh(&key.path, &["apps"]);
    assert!(out.status.success(), "ssh apps failed:\n{}\n{}", describe(&out), context(&slip, &sshd));
    let out = sshd.ssh(&key.path, &["apps", "--json"]);
    assert!(out.status.success(), "ssh apps --json failed:\n{}", describe(&out));
    let listed: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ssh apps --json printed invalid JSON ({e}):\n{}", describe(&out)));
    assert_eq!(listed, Value::Array(vec![]), "ssh apps --json");

    // Invalid app names are refused before anything is created.
    let ssh = sshd.ssh_command(&key.path);
    for url in [sshd.url("Bad_Name"), sshd.scp_url("../etc")] {
        let (ok, out) = repo.push(&url, &ssh);
        assert!(!ok, "push to {url} succeeded:\n{out}");
        assert!(!out.contains("Permission denied (publickey"), "push to {url} was not authenticated:\n{out}");
    }
    assert!(
        !dir_has_entries(&slip.home.join("repos")),
        "pushes to invalid names created {:?}",
        list_tree(&slip.home.join("repos"))
    );
    assert!(slip.apps_json().is_empty(), "pushes to invalid names created apps");
    let strays: Vec<_> = list_tree(slip.root())
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.contains("Bad_Name") || name.contains("bad_name") || name == "etc" || name == "etc.git"
        })
        .collect();
    assert!(strays.is_empty(), "pushes to invalid names created {strays:?}");
    assert!(!std::path::Path::new("/etc.git").exists(), "/etc.git was created");
}

#[test]
fn push_without_daemon_is_rejected_before_build() {
    let slip = Slipway::new();
    let key = slip.client_key("id_client");
    let sshd = slip.start_sshd();
    slip.add_key("alice", &key);

    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(&python_app("hello"), "hello");
    let (ok, out) = repo.push(&sshd.url("hello"), &sshd.ssh_command(&key.path));
    assert!(!ok, "push without a daemon succeeded:\n{out}");
    assert!(
        out.contains("slipway daemon"),
        "the rejection does not mention `slipway daemon`:\n{out}\n{}",
        context(&slip, &sshd)
    );

    // releases/ may hold empty per-app dirs, but no build.
    let releases = slip.home.join("releases");
    let built: Vec<_> = list_tree(&releases)
        .into_iter()
        .filter(|p| {
            p.strip_prefix(&releases).map(|r| r.components().count() >= 2).unwrap_or(false) || p.is_file()
        })
        .collect();
    assert!(built.is_empty(), "a build was made without a daemon: {built:?}");
    let slugs = slip.home.join("slugs");
    let packed: Vec<_> = list_tree(&slugs).into_iter().filter(|p| p.is_file()).collect();
    assert!(packed.is_empty(), "a slug was packed without a daemon: {packed:?}");
}

/// Every push ends with `-----> Done in S s (export S, deps S, release S, boot S, switch S, slug S)`
/// after the slug is in place (its size is printed first). Only the shape is checked, never a time.
fn assert_timing_line(out: &str) {
    let line = out
        .lines()
        .find_map(|l| l.split_once("-----> Done in ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no `-----> Done in` line:\n{out}"));
    let (total, phases) = line.split_once(" s (").unwrap_or_else(|| panic!("malformed: {line}"));
    assert!(total.parse::<f64>().is_ok(), "total is not seconds: {line}");
    let names: Vec<&str> = phases
        .trim_end()
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("malformed: {line}"))
        .split(", ")
        .map(|phase| {
            let (name, secs) = phase.split_once(' ').unwrap_or_else(|| panic!("malformed phase in {line}"));
            assert!(secs.parse::<f64>().is_ok(), "{name} is not seconds: {line}");
            name
        })
        .collect();
    assert_eq!(names, ["export", "deps", "release", "boot", "switch", "slug"], "{line}");
    let compressed =
        out.find("-----> Compressing... done, ").unwrap_or_else(|| panic!("no slug size:\n{out}"));
    assert!(
        compressed < out.find("-----> Done in ").unwrap_or(0),
        "the slug size comes before the timing line:\n{out}"
    );
}
