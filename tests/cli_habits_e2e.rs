//! Heroku's CLI habits, with the real binary (and the real sshd where it says so): `-a/--app`,
//! the short aliases, `open`, `apps:rename`, full usage errors over SSH, `run` without `--` and
//! ending when its SSH client goes away, and why a failed release failed.

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One GET through the router with `Host: host`, on a fresh connection.
fn get(router: &str, host: &str) -> Option<(u16, String)> {
    router_get(router, host, "/")
}

/// A generic app (no Python files: builds in a fraction of a second) serving `index.html`.
fn generic_app(repo: &GitRepo, body: &str, extra_procfile: &str) {
    let procfile = format!("web: python3 -m http.server $PORT --bind 0.0.0.0\n{extra_procfile}");
    repo.commit_files(&[("Procfile", procfile.as_str()), ("index.html", body)], body);
}

fn web_up(slip: &Slipway, app: &str) -> bool {
    let out = slip.cmd(&["ps", "-a", app, "--json"]);
    out.status.success()
        && serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|dynos| dynos.iter().any(|d| d["name"] == "web.1" && d["state"] == "up"))
}

#[test]
fn app_flag_aliases_and_open_locally() {
    let slip = Slipway::new();
    let out = slip.cmd_ok(&["create", "hello"]);
    assert!(out.contains("Created hello"), "{out}");
    assert_eq!(slip.json(&["info", "-a", "hello", "--json"])["name"], "hello");
    assert_eq!(slip.json(&["apps:info", "--app=hello", "--json"])["name"], "hello");
    let url = slip.cmd_ok(&["open", "-a", "hello"]);
    let port = slip.router_addr.rsplit(':').next().unwrap();
    assert_eq!(url.trim(), format!("http://hello.localhost:{port}/"));
    assert_eq!(slip.cmd_ok(&["open", "hello"]), url);

    // Positional and flag, before or after the other arguments.
    slip.cmd_ok(&["config:set", "-a", "hello", "K=V", "L=W"]);
    slip.cmd_ok(&["config:set", "hello", "M=X"]);
    assert_eq!(slip.cmd_ok(&["config:get", "K", "-a", "hello"]).trim(), "V");
    assert_eq!(slip.cmd_ok(&["config:get", "--app", "hello", "M"]).trim(), "X");
    let config = slip.json(&["config", "--json", "--app", "hello"]);
    assert_eq!((config["K"].as_str(), config["L"].as_str()), (Some("V"), Some("W")));
    assert!(slip.cmd_ok(&["ps", "-a", "hello"]).contains("No dynos"));
    slip.cmd_ok(&["logs", "--app", "hello", "-n", "5"]);
    assert!(slip.cmd_ok(&["releases", "-a", "hello"]).contains("v2"));
    slip.cmd_ok(&["domains:add", "www.example.com", "-a", "hello"]);
    assert!(slip.cmd_ok(&["domains", "hello"]).contains("www.example.com"));

    // The same app twice is fine; two different ones are one clear usage error.
    slip.cmd_ok(&["ps", "hello", "-a", "hello"]);
    let out = slip.cmd(&["ps", "hello", "-a", "other"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("two apps are given, 'hello' and '-a other'"), "{}", describe(&out));
    assert!(stderr(&out).contains("Usage: slipway ps"), "{}", describe(&out));
    let out = slip.cmd(&["keys", "-a", "hello"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // destroy is apps:destroy.
    let out = slip.cmd(&["destroy", "-a", "hello"]);
    assert!(!out.status.success() && stderr(&out).contains("--confirm hello"), "{}", describe(&out));
    assert!(slip.cmd_ok(&["destroy", "-a", "hello", "--confirm", "hello"]).contains("Destroyed hello"));
    assert!(slip.apps_json().is_empty());
}

#[test]
fn over_ssh_app_flag_aliases_and_full_usage_errors() {
    let env = PushEnv::start(|_| {});
    let ssh = |args: &[&str]| env.sshd.ssh(&env.key.path, args);
    let ok = |args: &[&str]| {
        let out = ssh(args);
        assert!(out.status.success(), "ssh {args:?}:\n{}\n{}", describe(&out), env.sshd.log());
        stdout(&out)
    };
    assert!(ok(&["create", "hello"]).contains("Created hello"));
    assert!(ok(&["ps", "-a", "hello"]).contains("No dynos"));
    ok(&["config:set", "-a", "hello", "K=V"]);
    assert_eq!(ok(&["config:get", "K", "--app", "hello"]).trim(), "V");
    assert_eq!(ok(&["config:get", "hello", "K"]).trim(), "V");
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&["info", "--app=hello", "--json"])).unwrap()["name"],
        "hello"
    );
    assert!(ok(&["open", "-a", "hello"]).starts_with("http://hello.localhost:"));

    // A usage error carries clap's whole message and exits 2, as locally.
    let out = ssh(&["ps"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("the following required arguments were not provided"), "{err}");
    assert!(err.contains("<APP>"), "{err}");
    assert!(err.contains("Usage: slipway ps"), "{err}");
    let local = env.slip.cmd(&["ps"]);
    assert_eq!(stderr(&local), err, "the same message as locally");

    let out = ssh(&["config:sett", "hello", "A=B"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("config:set"), "no 'did you mean':\n{}", describe(&out));

    let out = ssh(&["ps", "hello", "-a", "other"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("two apps are given"), "{}", describe(&out));

    assert!(ok(&["destroy", "hello", "--confirm", "hello"]).contains("Destroyed hello"));
}

/// Starts `run hello sh -c 'SCRIPT'` over SSH without a tty; SCRIPT prints its pid first (a
/// one-off is confined to its own dir, so stdout is how it reports). Returns the ssh client and,
/// once the one-off has printed it, that pid. The rest of its stdout keeps being read, so the
/// one-off never sees its reader go away.
fn one_off_over_ssh(env: &PushEnv, script: &str) -> (std::process::Child, u32) {
    use std::io::BufRead;
    let script = format!("'{script}'");
    let mut client = env
        .sshd
        .ssh_base(&env.key.path, &["run", "hello", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let stdout = client.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {}
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let pid = first
        .trim()
        .parse::<u32>()
        .unwrap_or_else(|_| panic!("the one-off never started (first line {first:?}):\n{}", env.sshd.log()));
    (client, pid)
}

#[test]
fn run_takes_its_command_without_double_dash_and_ends_when_the_ssh_client_goes_away() {
    let env = PushEnv::start(|_| {});
    let slip = &env.slip;
    let repo = GitRepo::init(&slip.root().join("work"));
    generic_app(&repo, "hi", "");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}\n{}", slip.diagnostics());

    // Words after the command's start are the command's, even those starting with `-`.
    let out = slip.cmd_ok(&["run", "hello", "sh", "-c", "echo $DYNO -a $1", "x", "y"]);
    assert!(out.starts_with("run.") && out.trim_end().ends_with("-a y"), "{out}");
    let out = slip.cmd_ok(&["run", "-a", "hello", "printf", "%s|", "-a", "--app", "--"]);
    assert_eq!(out, "-a|--app|--|");
    let out = slip.cmd_ok(&["run", "hello", "--", "printf", "%s", "-n"]);
    assert_eq!(out, "-n");
    let out = slip.cmd(&["run", "hello", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    // Over SSH too.
    let out = env.sshd.ssh(&env.key.path, &["run", "hello", "printf", "%s", "-x"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "-x");

    // A one-off over SSH without a tty: the client goes away, the process goes too.
    let (mut client, pid) = one_off_over_ssh(&env, "echo $$; exec sleep 1000");
    assert!(process_alive(pid));
    client.kill().expect("kill the ssh client");
    let _ = client.wait();
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(pid)),
        "the one-off {pid} outlived its SSH client"
    );
    let log = || std::fs::read_to_string(slip.app_log_path("hello")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || log().contains("Stopped: the client went away")),
        "{}",
        log()
    );

    // One that ignores SIGTERM is killed, with its whole group, after the stop grace period.
    slip.cmd_ok(&["settings:set", "stop_timeout=2"]);
    let (mut client, pid) = one_off_over_ssh(&env, "trap \"\" TERM; echo $$; while :; do sleep 0.2; done");
    client.kill().expect("kill the ssh client");
    let _ = client.wait();
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(pid)),
        "the one-off {pid} that ignores SIGTERM outlived its SSH client"
    );
    // SIGKILL, after the grace period.
    assert!(
        wait_until(Duration::from_secs(10), || log().contains("Process exited with status 137")),
        "{}",
        log()
    );
}

#[test]
fn rename_moves_a_deployed_app_everywhere() {
    let env = PushEnv::start(|_| {});
    let slip = &env.slip;
    // A Python app: its release dir holds a virtualenv with absolute paths in it.
    let repo = env.app_repo("work", "first");
    let (ok, out) = env.push(&repo, "hello");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    slip.cmd_ok(&["domains:add", "hello", "www.example.com"]);
    slip.cmd_ok(&["config:set", "hello", "GREETING=hi"]);
    let router = slip.router_addr.clone();
    assert!(wait_until(Duration::from_secs(30), || get(&router, "hello.localhost")
        .is_some_and(|(s, b)| s == 200 && b == "first")));

    // Refused: a taken name, an invalid one; nothing changes.
    slip.cmd_ok(&["create", "taken"]);
    let out = slip.cmd(&["apps:rename", "hello", "taken"]);
    assert!(!out.status.success() && stderr(&out).contains("already exists"), "{}", describe(&out));
    let out = slip.cmd(&["apps:rename", "hello", "Not_Valid"]);
    assert!(!out.status.success() && stderr(&out).contains("not a valid app name"), "{}", describe(&out));
    assert!(web_up(slip, "hello"));

    // Heroku's form: the new name, and the app with -a.
    let out = slip.cmd_ok(&["apps:rename", "hi-there", "-a", "hello"]);
    assert!(out.contains("Renamed hello to hi-there"), "{out}");
    let out = slip.cmd(&["ps", "hello"]);
    assert!(!out.status.success() && stderr(&out).contains("'hello' does not exist"), "{}", describe(&out));
    for dir in ["repos/hello.git", "releases/hello", "slugs/hello", "logs/hello", "envs/hello"] {
        assert!(!slip.home.join(dir).exists(), "{dir} is still there");
    }
    assert!(wait_until(Duration::from_secs(60), || web_up(slip, "hi-there")), "{}", slip.diagnostics());
    assert!(wait_until(Duration::from_secs(30), || get(&router, "hi-there.localhost")
        .is_some_and(|(s, b)| s == 200 && b == "first")));
    assert!(get(&router, "www.example.com").is_some_and(|(s, b)| s == 200 && b == "first"));
    assert!(wait_until(Duration::from_secs(10), || get(&router, "hello.localhost")
        .is_some_and(|(s, _)| s == 404)));
    assert!(slip.cmd_ok(&["domains", "-a", "hi-there"]).contains("www.example.com"));
    assert_eq!(slip.cmd_ok(&["config:get", "hi-there", "GREETING"]).trim(), "hi");
    let releases = slip.cmd_ok(&["releases", "hi-there"]);
    assert!(releases.contains("v1") && releases.contains("v2"), "{releases}");
    assert!(slip.cmd_ok(&["logs", "hi-there", "-n", "200"]).contains("Listening on"));
    // The shared environment was copied under the new name and knows its new path.
    let shebang = slip.cmd_ok(&["run", "hi-there", "head", "-n", "1", ".slipway/venv/bin/pip"]);
    assert!(shebang.contains("/envs/hi-there/"), "{shebang}");

    // A redeploy to the new remote, and a restart, work.
    repo.commit_files(&python_app("second"), "second");
    let (ok, out) = env.push(&repo, "hi-there");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    assert!(wait_until(Duration::from_secs(30), || get(&router, "hi-there.localhost")
        .is_some_and(|(s, b)| s == 200 && b == "second")));
    slip.cmd_ok(&["scale", "web=1", "-a", "hi-there"]);
    slip.cmd_ok(&["restart", "-a", "hi-there"]);
    assert!(get(&router, "hi-there.localhost").is_some_and(|(s, b)| s == 200 && b == "second"));
    // The old name is unknown to git too.
    let (ok, _) = env.push(&repo, "hello");
    assert!(ok, "a push to a free name creates a new app, as before");
}

#[test]
fn releases_info_shows_why_a_release_failed() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    generic_app(&repo, "one", "");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    generic_app(&repo, "two", "release: sh -c 'echo boom; exit 3'\n");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok, "{out}");

    let info = slip.json(&["releases:info", "-a", "hello", "v2", "--json"]);
    assert_eq!(info["status"], "failed");
    let why = info["failure"].as_str().unwrap_or_default();
    assert!(why.contains("exit 3"), "{info}");
    assert!(slip.json(&["releases:info", "hello", "v1", "--json"])["failure"].is_null());
    let text = slip.cmd_ok(&["releases:info", "hello", "v2"]);
    assert!(text.contains("Failure:") && text.contains("exit 3"), "{text}");
    let list = slip.cmd_ok(&["releases", "hello"]);
    assert!(list.lines().any(|l| l.starts_with("v2") && l.contains("failed: ")), "{list}");
    let list = slip.json(&["releases", "hello", "--json"]);
    assert!(list[0]["failure"].as_str().unwrap_or_default().contains("exit 3"), "{list}");
}

/// A one-off dyno is a dyno the daemon knows: `ps` lists it as `run.N` with its `PORT`,
/// `ps:stop APP run.N` stops it, and a deploy leaves it running.
#[test]
fn one_off_dynos_are_listed_stoppable_and_have_a_port() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    generic_app(&repo, "v1", "");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    assert!(web_up(&slip, "hello"), "{}", slip.diagnostics());

    let output = std::fs::File::create(slip.root().join("run.out")).unwrap();
    let mut one_off = slip
        .command(&["run", "hello", "sh", "-c", "echo PORT=$PORT; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut listed = None;
    let found = wait_until(Duration::from_secs(20), || {
        listed = slip.ps_json("hello").into_iter().find(|d| d["name"] == "run.1" && d["state"] == "up");
        listed.is_some()
    });
    assert!(found, "run.1 is not in ps: {:?}\n{}", slip.ps_json("hello"), slip.diagnostics());
    let table = slip.cmd_ok(&["ps", "hello"]);
    assert!(table.starts_with("Process types (Procfile): web\n") && table.contains("run.1"), "{table}");
    let listed = listed.unwrap();
    let port = listed["port"].as_u64().expect("a one-off dyno has a port");
    let printed = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(slip.root().join("run.out"))
            .is_ok_and(|t| t.contains(&format!("PORT={port}")))
    });
    assert!(printed, "the one-off did not get PORT={port}");

    // A deploy replaces web.1 and leaves run.1 alone.
    generic_app(&repo, "v2", "");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    let still = slip.ps_json("hello").into_iter().find(|d| d["name"] == "run.1");
    assert_eq!(
        still.as_ref().map(|d| d["pid"].clone()),
        Some(listed["pid"].clone()),
        "a deploy touched run.1"
    );

    slip.cmd_ok(&["ps:stop", "hello", "run.1"]);
    let mut status = None;
    let ended = wait_until(Duration::from_secs(20), || {
        status = one_off.try_wait().ok().flatten();
        status.is_some()
    });
    assert!(ended, "ps:stop did not end the one-off");
    assert_eq!(status.and_then(|s| s.code()), Some(143), "{status:?}");
    let gone =
        wait_until(Duration::from_secs(10), || slip.ps_json("hello").iter().all(|d| d["name"] != "run.1"));
    assert!(gone, "run.1 is still listed: {:?}", slip.ps_json("hello"));
}
