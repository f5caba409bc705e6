//! End-to-end rules of a deploy beyond the happy path: a release that never boots, pushes that
//! race, refs that do not deploy, a daemon that dies, and destroying an app.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// (pid, port) of the up `web.1` of `release`, waiting up to `timeout`.
fn web1(slip: &Slipway, app: &str, release: &str, timeout: Duration) -> (u32, u16) {
    let mut found = None;
    wait_until(timeout, || {
        found = slip.ps_json(app).iter().find_map(|d| {
            let ok = text(d, "name") == Some("web.1")
                && text(d, "state") == Some("up")
                && text(d, "release") == Some(release);
            ok.then(|| Some((d.get("pid")?.as_u64()? as u32, d.get("port")?.as_u64()? as u16))).flatten()
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no up web.1 of {release}\n{}", slip.diagnostics()))
}

fn serves(port: u16, body: &str) -> bool {
    wait_until(Duration::from_secs(10), || matches!(http_get(port, "/"), Some((200, b)) if b.trim() == body))
}

fn releases(slip: &Slipway, app: &str) -> Vec<Value> {
    match slip.json(&["releases", app, "--json"]) {
        Value::Array(a) => a,
        other => panic!("releases --json is not an array: {other}"),
    }
}

#[test]
fn a_release_that_never_boots_rejects_the_push_and_the_old_one_keeps_serving() {
    let env = PushEnv::start(|slip| {
        slip.env.push(("SLIPWAY_BOOT_TIMEOUT".into(), "3".into()));
        slip.env.push(("SLIPWAY_STOP_TIMEOUT".into(), "3".into()));
    });
    let slip = &env.slip;
    let repo = env.app_repo("work", "v1 here");
    let (ok, out) = env.push(&repo, "hello");
    assert!(ok, "first push failed:\n{out}\n{}", slip.diagnostics());
    let (pid, port) = web1(slip, "hello", "v1", Duration::from_secs(20));

    // A web process that never binds $PORT: R10 after the (shortened) boot timeout.
    repo.commit_files(&[("Procfile", "web: python -c 'import time; time.sleep(600)'\n")], "never binds");
    let (ok, out) = env.push(&repo, "hello");
    assert!(!ok, "a release that never boots was accepted:\n{out}");
    assert!(out.contains(" !     ") && out.contains("did not accept connections"), "{out}");
    assert!(out.contains("previous release keeps running"), "{out}");

    // A web process that exits at once.
    repo.commit_files(&[("Procfile", "web: python -c 'import sys; sys.exit(3)'\n")], "crashes");
    let (ok, out) = env.push(&repo, "hello");
    assert!(!ok, "a release that crashes at boot was accepted:\n{out}");
    assert!(out.contains("exited during boot"), "{out}");

    // v1 is still current, still the same process, still serving; the failed dynos are gone.
    assert_eq!(slip.app_info("hello").get("release").and_then(Value::as_str), Some("v1"));
    assert!(serves(port, "v1 here"), "v1 stopped serving\n{}", slip.diagnostics());
    assert_eq!(web1(slip, "hello", "v1", Duration::from_secs(1)), (pid, port));
    let only_v1 = wait_until(Duration::from_secs(15), || {
        slip.ps_json("hello").iter().all(|d| text(d, "release") == Some("v1"))
    });
    assert!(only_v1, "dynos of failed releases remain: {:?}", slip.ps_json("hello"));
    let statuses: Vec<(String, String)> = releases(slip, "hello")
        .iter()
        .map(|r| (text(r, "version").unwrap_or("").into(), text(r, "status").unwrap_or("").into()))
        .collect();
    assert_eq!(
        statuses,
        [("v3".into(), "failed".into()), ("v2".into(), "failed".into()), ("v1".into(), "succeeded".into())]
    );
    let log = std::fs::read_to_string(slip.app_log_path("hello")).unwrap_or_default();
    assert!(log.contains("Error R10 (Boot timeout)"), "{log}");
    assert!(log.contains("Process exited with status 3"), "{log}");
    for version in ["v2", "v3"] {
        let said = log.matches(&format!("slipway[api]: Release {version} failed: ")).count();
        assert_eq!(said, 1, "{version}'s failure is logged once:\n{log}");
    }
}

#[test]
fn concurrent_pushes_are_serialized_and_a_stale_one_is_rejected() {
    let env = PushEnv::start(|_| {});
    let (slip, sshd, ssh) = (&env.slip, &env.sshd, &env.ssh);
    let first = env.app_repo("first", "base");
    let (ok, out) = env.push(&first, "hello");
    assert!(ok, "base push failed:\n{out}");

    // A second developer clones over SSH (git-upload-pack through ssh-serve).
    let clone_dir = slip.root().join("second");
    let mut clone = std::process::Command::new("git");
    clone
        .args(["clone", "-q", &sshd.url("hello")])
        .arg(&clone_dir)
        .env("GIT_SSH_COMMAND", ssh)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    let (ok, out) = run_combined(&mut clone, PUSH_TIMEOUT);
    assert!(ok, "git clone over ssh failed:\n{out}");
    let second = GitRepo { dir: clone_dir };
    second.git_ok(&["config", "user.email", "b@example.com"]);
    second.git_ok(&["config", "user.name", "B"]);

    first.commit_files(&[("app.py", python_app_py("from first"))], "first");
    second.commit_files(&[("app.py", python_app_py("from second"))], "second");
    let (url, ssh2) = (sshd.url("hello"), ssh.clone());
    let racer = std::thread::spawn(move || second.push(&url, &ssh2));
    let mine = env.push(&first, "hello");
    let theirs = racer.join().expect("second push thread");

    let (winner, loser) = match (mine.0, theirs.0) {
        (true, false) => ("from first", &theirs.1),
        (false, true) => ("from second", &mine.1),
        _ => panic!(
            "expected exactly one push to win:\n--- first ---\n{}\n--- second ---\n{}",
            mine.1, theirs.1
        ),
    };
    assert!(loser.contains("Waiting for another deploy of hello"), "the losing push did not wait:\n{loser}");
    assert!(
        loser.contains("moved while this push waited"),
        "the losing push was not rejected as stale:\n{loser}"
    );
    let (_, port) = web1(slip, "hello", "v2", Duration::from_secs(20));
    assert!(serves(port, winner), "the winner's code is not served");
    assert_eq!(releases(slip, "hello").len(), 2, "the stale push created a release");
}

#[test]
fn refs_daemon_restarts_and_destroy() {
    let mut env = PushEnv::start(|_| {});
    let ssh = env.ssh.clone();
    let repo = env.app_repo("work", "steady");
    let (ok, out) = env.push(&repo, "hello");
    let slip = &mut env.slip;
    assert!(ok, "push failed:\n{out}");
    let (pid, port) = web1(slip, "hello", "v1", Duration::from_secs(20));

    // A one-off dyno over SSH: stdin in, output and exit status back, its words never reach a
    // shell (the quoting below is for the remote side's word splitting only).
    let script = "'import os, sys; print(os.environ[\"DYNO\"][:4], sys.stdin.read()); sys.exit(5)'";
    let out =
        env.sshd.ssh_stdin(&env.key.path, &["run", "hello", "--", "python", "-c", script], Some("piped"));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "run. piped");

    // logs --tail over SSH streams each line as it happens.
    let mut follow =
        env.sshd.ssh_base(&env.key.path, &["logs", "hello", "--tail", "-n", "1", "--source", "app"]);
    follow.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped());
    let mut follow = follow.spawn().expect("spawn ssh logs --tail");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().expect("stdout")));
    assert!(lines.next().is_some(), "no backlog line over ssh");
    assert!(http_get(port, "/ssh-tail-probe").is_some());
    let seen = lines.map_while(Result::ok).take(20).any(|l| l.contains("/ssh-tail-probe"));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "a new line did not arrive through ssh logs --tail");

    // Other branches are accepted without a build; deleting main is refused.
    repo.git_ok(&["branch", "feature"]);
    let mut push = repo.command(&["push", "slipway", "feature"]);
    push.env("GIT_SSH_COMMAND", &ssh);
    let (ok, out) = run_combined(&mut push, PUSH_TIMEOUT);
    assert!(ok && out.contains("without a build"), "feature push:\n{out}");
    let mut delete = repo.command(&["push", "slipway", ":main"]);
    delete.env("GIT_SSH_COMMAND", &ssh);
    let (ok, out) = run_combined(&mut delete, PUSH_TIMEOUT);
    assert!(!ok && out.contains("deleting refs/heads/main is not allowed"), "delete main:\n{out}");
    assert_eq!(releases(slip, "hello").len(), 1);

    // kill -9 the daemon: the dyno keeps serving; a new daemon re-adopts the same process.
    slip.kill_daemon_hard();
    assert!(serves(port, "steady"), "the dyno stopped serving when the daemon died");
    slip.start_daemon();
    assert_eq!(web1(slip, "hello", "v1", Duration::from_secs(5)), (pid, port), "not re-adopted");
    // ...and still supervises it: a killed dyno comes back.
    kill_pid(pid);
    let restarted = wait_until(Duration::from_secs(15), || {
        slip.ps_json("hello").iter().any(|d| {
            text(d, "state") == Some("up")
                && d.get("pid").and_then(Value::as_u64).is_some_and(|p| p as u32 != pid)
        })
    });
    assert!(restarted, "a killed dyno was not restarted by the re-started daemon\n{}", slip.diagnostics());
    let (new_pid, new_port) = web1(slip, "hello", "v1", Duration::from_secs(5));
    assert!(serves(new_port, "steady"));

    // Destroy needs the name twice, then removes everything.
    let refused = slip.cmd(&["apps:destroy", "hello"]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--confirm hello")
    );
    slip.cmd_ok(&["apps:destroy", "hello", "--confirm", "hello"]);
    assert!(wait_until(Duration::from_secs(10), || !process_alive(new_pid)), "dyno survived destroy");
    assert!(slip.apps_json().is_empty());
    for dir in ["repos/hello.git", "releases/hello", "slugs/hello", "logs/hello"] {
        assert!(!slip.home.join(dir).exists(), "{dir} survived destroy");
    }
}
