//! End-to-end: production's layout. A real platform user (`useradd --system`, removed at the
//! end) owns the home, sshd lets only that user in (forced commands), and the daemon runs as
//! root. Over SSH as the platform user: a push builds and deploys, `run`, `config:set`, `logs`
//! and `ps` work; app code started by those commands runs as the app's uid (workers the root
//! daemon starts, `crate::worker`), never as root; the daemon stays root; what root creates in
//! the home stays usable by the owner; a link the owner plants at an app's log is not followed
//! by root's writers; a running `run` survives a `kill -9` of the daemon and ends with its code.
//! Not root: nothing to check (it needs useradd and a root daemon).

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// The number printed after `label=` in `text` (`release-uid=200003`).
fn printed(text: &str, label: &str) -> Option<u32> {
    let at = text.find(&format!("{label}="))? + label.len() + 1;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn owner(path: &std::path::Path) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).uid()
}

#[test]
fn a_root_daemon_on_the_platform_users_home_runs_app_code_as_the_apps_uid() {
    if !running_as_root() {
        println!("skipped: needs root (creates a system user, runs a root daemon)");
        return;
    }
    let user = SystemUser::create("slpw", true);
    let mut slip = Slipway::new(); // dropped first: its daemon and dynos stop before the user goes
                                   // Processes started by sshd read the settings file only.
    let settings = format!(
        "app_uids = \"{}\"\nports = \"{}-{}\"\nrouter_addr = \"{}\"\nhttps_addr = \"{}\"\nboot_settle = 0.2\n",
        app_uids(slip.ports),
        slip.ports.0,
        slip.ports.1,
        slip.router_addr,
        slip.https_addr
    );
    fs::write(slip.home.join("slipway.toml"), settings).unwrap();
    fs::set_permissions(slip.root(), fs::Permissions::from_mode(0o755)).unwrap();
    for path in [slip.home.clone(), slip.home.join("slipway.toml")] {
        std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    }
    // Its home is the slipway home, as install.sh makes it.
    let out = run_with_timeout(
        Command::new("usermod").arg("-d").arg(&slip.home).arg(&user.name),
        None,
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let key = slip.client_key("id_alice");
    slip.add_key("alice", &key); // as root: keys:add becomes the owner

    slip.start_daemon();
    let daemon =
        fs::read_to_string(slip.home.join("run/slipway.pid")).unwrap().trim().parse::<u32>().unwrap();
    assert_eq!(process_uids(daemon), vec![0; 4], "the daemon runs as root");
    let status = slip.cmd_ok(&["status"]);
    assert!(status.contains("per-app users"), "{status}");

    let sshd =
        Sshd::start_as(&slip.root().join("sshd"), &slip.authorized_keys(), &app_uids(slip.ports), &user.name);
    let ssh = |args: &[&str]| sshd.ssh(&key.path, args);

    // A push as the platform user: build and release phase in a worker, the web dyno as the app.
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(
        &[
            ("server", stdlib_server("'hello from the app'")),
            ("Procfile", "web: python3 server\nrelease: echo release-uid=$(id -u)\n".into()),
            ("bin/post_compile", "#!/bin/sh\necho post-compile-uid=$(id -u)\n".into()),
        ],
        "app",
    );
    let (ok, out) = repo.push(&sshd.url("hello"), &sshd.ssh_command(&key.path));
    assert!(ok && out.contains("done, v1"), "push failed:\n{out}\n{}\n{}", slip.diagnostics(), sshd.log());
    let app_uid = slip.app_info("hello")["uid"].as_u64().expect("apps:info shows the uid") as u32;
    assert!(app_uid != 0 && app_uid != user.uid, "app uid {app_uid}");
    let (built, released) = (printed(&out, "post-compile-uid"), printed(&out, "release-uid"));
    assert!(built.is_some() && released.is_some(), "{out}");
    for uid in [built, released].into_iter().flatten() {
        assert_ne!(uid, 0, "app code ran as root:\n{out}");
        assert_eq!(uid, app_uid, "{out}");
    }

    let web = slip.ps_json("hello").into_iter().find(|d| d["name"] == "web.1" && d["state"] == "up");
    let web = web.unwrap_or_else(|| panic!("web.1 is not up\n{}", slip.diagnostics()));
    let (pid, port) = (web["pid"].as_u64().unwrap() as u32, web["port"].as_u64().unwrap() as u16);
    assert_eq!(process_uids(pid), vec![app_uid; 4], "web.1 runs as the app");
    let served = http_get(port, "/").map(|(code, body)| (code, body.contains("hello from the app")));
    assert_eq!(served, Some((200, true)), "web.1 serves");

    // `run` over SSH: a worker whose one-off drops to the app's uid; its exit code comes back.
    let out = ssh(&["run", "hello", "id", "-u"]);
    assert!(out.status.success(), "{}\n{}", describe(&out), slip.diagnostics());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), app_uid.to_string(), "{}", describe(&out));
    let out = ssh(&["run", "hello", "sh", "-c", "'exit 7'"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));

    // An SSH client that goes away stops its one-off (the worker holds the session's pipes);
    // a signal to the caller reaches the one-off through the worker.
    let one_off = |slip: &Slipway| {
        slip.ps_json("hello")
            .into_iter()
            .find(|d| d["name"].as_str().is_some_and(|n| n.starts_with("run.")))
            .and_then(|d| d["pid"].as_u64())
    };
    let mut dropped = sshd.ssh_base(&key.path, &["run", "hello", "sleep", "300"]);
    let mut client =
        dropped.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(20), || one_off(&slip).is_some()), "{}", slip.diagnostics());
    let sleeper = one_off(&slip).unwrap() as u32;
    assert_eq!(process_uids(sleeper), vec![app_uid; 4], "the one-off runs as the app");
    client.kill().unwrap();
    client.wait().unwrap();
    let gone = wait_until(Duration::from_secs(30), || !process_alive(sleeper) && one_off(&slip).is_none());
    assert!(gone, "the one-off outlived its SSH client\n{}", slip.diagnostics());

    // `slipway --home H ARGS` run by the platform user, from the home.
    let as_owner = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &user.uid.to_string(),
            "--regid",
            &user.gid.to_string(),
            "--init-groups",
            "--",
            BIN,
        ])
        .arg("--home")
        .arg(&slip.home)
        .args(args)
        .current_dir(&slip.home);
        cmd
    };
    let mut local = as_owner(&["run", "hello", "sleep", "300"]);
    local.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let caller = local.spawn().unwrap();
    assert!(wait_until(Duration::from_secs(20), || one_off(&slip).is_some()), "{}", slip.diagnostics());
    let sleeper = one_off(&slip).unwrap() as u32;
    assert_eq!(process_uids(caller.id()), vec![user.uid; 4], "the caller is the platform user");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(caller.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let out = caller.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));
    assert!(!process_alive(sleeper), "the one-off outlived the interrupted run");

    // What a worker costs: `run hello true` as the owner (through a worker) against root's own
    // (in place), median of 5 each. Printed, not asserted.
    let median = |mut cmd: Command| {
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let started = std::time::Instant::now();
                let out = run_with_timeout(&mut cmd, None, Duration::from_secs(60));
                assert!(out.status.success(), "{}", describe(&out));
                started.elapsed()
            })
            .collect();
        times.sort();
        times[2]
    };
    let mut as_root = Command::new(BIN);
    as_root.arg("--home").arg(&slip.home).args(["run", "hello", "true"]).current_dir(&slip.home);
    let (worker, in_place) = (median(as_owner(&["run", "hello", "true"])), median(as_root));
    // Root's own `run` needs no worker: it becomes the owner keeping root in reserve.
    assert_eq!(slip.cmd_ok(&["run", "hello", "id", "-u"]).trim(), app_uid.to_string());
    eprintln!("run hello true: through a worker {worker:?}, root in place {in_place:?} (medians of 5)");

    // config:set runs the release phase again, in a worker.
    let out = ssh(&["config:set", "hello", "GREETING=hi"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}\n{}", describe(&out), slip.diagnostics());
    let released =
        printed(&text, "release-uid").unwrap_or_else(|| panic!("no release phase output:\n{text}"));
    assert_ne!(released, 0, "{text}");
    assert_eq!(released, app_uid, "{text}");

    let out = ssh(&["ps", "hello"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("web.1"),
        "{}",
        describe(&out)
    );
    let out = ssh(&["logs", "hello"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("release-uid="), "{}", describe(&out));

    let spawn_sock = fs::metadata(slip.home.join("run/spawn.sock")).unwrap();
    assert_eq!((spawn_sock.uid(), spawn_sock.mode() & 0o777), (user.uid, 0o600), "run/spawn.sock");
    // The spawn socket refuses what slipway itself would never ask (the owner speaking it by
    // hand): a command that runs no app code, and a variable that would reach a process keeping
    // root in reserve.
    for (words, env, why) in [
        (r#"["apps:destroy", "hello", "--confirm", "hello"]"#, "{}", "only the hook"),
        (r#"["run", "--", "hello", "id"]"#, r#"{"LD_PRELOAD": "/tmp/x.so"}"#, "LD_PRELOAD is not passed"),
    ] {
        let script = format!(
            r#"import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = json.dumps({{"words": {words}, "who": None, "env": {env}, "refs": None}}).encode()
r, w = os.pipe()
socket.send_fds(s, [struct.pack(">I", len(body)) + body], [0, 1, 2, w])
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
print(json.loads(s.recv(n, socket.MSG_WAITALL))["error"])
"#
        );
        let mut speak = Command::new("setpriv");
        speak
            .args(["--reuid", &user.uid.to_string(), "--regid", &user.gid.to_string(), "--init-groups", "--"])
            .args(["python3", "-c", &script])
            .arg(slip.home.join("run/spawn.sock"));
        let out = run_with_timeout(&mut speak, None, Duration::from_secs(20));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(why),
            "{}",
            describe(&out)
        );
    }
    assert!(slip.app_info("hello")["name"] == "hello", "the app is still there");

    // What root made in the home is the owner's.
    let home = &slip.home;
    for path in [
        home.join("slipway.db"),
        home.join("slipway.db-wal"),
        home.join("slipway.db-shm"),
        home.join("logs"),
        home.join("logs/hello"),
        home.join("logs/hello/app.log"),
        home.join("logs/slipway.log"),
        home.join("run"),
        home.join("run/slipway.sock"),
        home.join("run/slipway.pid"),
        home.join("run/spawn.sock"),
        home.join("dynos/hello"),
    ] {
        let sqlite_side_file = path.ends_with("slipway.db-wal") || path.ends_with("slipway.db-shm");
        if sqlite_side_file && !path.exists() {
            continue; // checkpointed away
        }
        assert_eq!(owner(&path), user.uid, "{} is not {}'s", path.display(), user.name);
    }

    // A link the owner plants at the app's log, to a root-only file: root's writers (the shims,
    // the daemon) refuse it; the file is untouched.
    let victim = slip.root().join("root-only");
    fs::write(&victim, "precious\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let log = home.join("logs/hello/app.log");
    let mut plant = Command::new("runuser");
    plant.args(["-u", &user.name, "--", "sh", "-c", "mv \"$1\" \"$1.moved\" && ln -s \"$2\" \"$1\"", "sh"]);
    plant.arg(&log).arg(&victim);
    let out = run_with_timeout(&mut plant, None, Duration::from_secs(10));
    assert!(out.status.success(), "{}", describe(&out));
    let out = ssh(&["ps:restart", "hello"]);
    assert!(out.status.success(), "{}", describe(&out));
    let restarted = wait_until(Duration::from_secs(30), || {
        slip.ps_json("hello")
            .iter()
            .any(|d| d["name"] == "web.1" && d["state"] == "up" && d["pid"].as_u64() != Some(u64::from(pid)))
    });
    assert!(restarted, "web.1 did not restart\n{}", slip.diagnostics());
    // The new web.1 (the old one may still be listed while it stops).
    let new_port = slip
        .ps_json("hello")
        .iter()
        .find(|d| d["name"] == "web.1" && d["state"] == "up" && d["pid"].as_u64() != Some(u64::from(pid)))
        .and_then(|d| d["port"].as_u64())
        .expect("the restarted web.1 is up") as u16;
    let serves = wait_until(Duration::from_secs(10), || http_get(new_port, "/").is_some());
    assert!(serves, "the restarted dyno serves\n{}", slip.diagnostics());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n", "root wrote through the planted link");
    assert_eq!((owner(&victim), fs::metadata(&victim).unwrap().mode() & 0o777), (0, 0o600));
    assert!(fs::symlink_metadata(&log).unwrap().file_type().is_symlink());
    fs::remove_file(&log).unwrap();

    // A running `run` outlives a kill -9 of the daemon and still ends with its own code.
    let mut held = sshd
        .ssh_base(&key.path, &["run", "hello", "sh", "-c", "'echo started; read x; echo got $x; exit 3'"]);
    let mut child = held.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(first.as_deref(), Some("started"));
    // Once the daemon knows the one-off (before that, `run` stops it rather than leave it unknown).
    let known = wait_until(Duration::from_secs(20), || {
        slip.ps_json("hello")
            .iter()
            .any(|d| d["name"].as_str().is_some_and(|n| n.starts_with("run.")) && d["pid"].is_u64())
    });
    assert!(known, "the one-off is not in ps\n{}", slip.diagnostics());
    slip.kill_daemon_hard();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(rest, ["got go"], "the one-off's output after the daemon died");
    assert_eq!(status.code(), Some(3));
    slip.start_daemon();
    let out = ssh(&["run", "hello", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), app_uid.to_string(), "{}", describe(&out));

    // A push whose hook is told to stop (SIGTERM, as when the SSH session ends and sshd's
    // children are signalled): the hook passes it to its worker, which cancels the build and
    // kills its commands; the push is rejected and nothing of it is left running. (A client that
    // merely vanishes is noticed only once git, which relays the build's output, fails to write
    // it; git then keeps the hook's pipe open without reading: the same with or without workers.)
    let slow = GitRepo::init(&slip.root().join("slow"));
    slow.commit_files(
        &[
            ("server", stdlib_server("'slow'")),
            ("Procfile", "web: python3 server\n".into()),
            // It keeps printing, as builds do: git relays it, and notices the client is gone.
            (
                "bin/post_compile",
                "#!/bin/sh\necho slow-build-started\nwhile :; do echo building; sleep 0.5; done\n".into(),
            ),
        ],
        "slow",
    );
    slow.git_ok(&["remote", "add", "slipway", &sshd.url("slow")]);
    let mut push = slow.command(&["push", "slipway", "main"]);
    push.env("GIT_SSH_COMMAND", sshd.ssh_command(&key.path))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut pusher = push.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = pusher.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("slow-build-started")) {
        let left = Duration::from_secs(120).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the slow build never started:\n{}\n{}", seen.join("\n"), slip.diagnostics()),
        }
    }
    let sleepers = || -> Vec<u32> {
        let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(16).any(|w| w == b"bin/post_compile"))
            })
            .collect()
    };
    let building = sleepers();
    assert_eq!(building.len(), 1, "{building:?}");
    for pid in &building {
        assert_ne!(process_uids(*pid).first(), Some(&0), "a build command runs as root");
    }
    let hook = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            // The platform user's hook (other tests' hooks may run meanwhile, as root).
            process_uids(*pid as u32).first() == Some(&user.uid)
                && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.windows(16).any(|w| w == b"hook\0pre-receive")
                        && !c.windows(8).any(|w| w == b"\0worker\0")
                })
        })
        .expect("the hook's process, as the platform user");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(hook), nix::sys::signal::Signal::SIGTERM).unwrap();
    let ended = wait_until(Duration::from_secs(60), || matches!(pusher.try_wait(), Ok(Some(_))));
    assert!(ended, "the push did not end\n{}", slip.diagnostics());
    assert!(!pusher.wait().unwrap().success(), "the cancelled push was accepted");
    let worker_left = || {
        fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.windows(15).any(|w| w == b"worker\0--\0hook\0"))
        })
    };
    let cancelled = wait_until(Duration::from_secs(60), || sleepers().is_empty() && !worker_left());
    assert!(cancelled, "the build outlived its hook: {:?}\n{}", sleepers(), slip.diagnostics());

    // The owner's apps:destroy removes everything, the daemon's (root's) dynos dir included.
    let out = ssh(&["apps:destroy", "hello", "--confirm", "hello"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "{}", describe(&out));
    for dir in ["dynos/hello", "releases/hello", "logs/hello", "repos/hello.git"] {
        assert!(!slip.home.join(dir).exists(), "{dir} is left:\n{}", describe(&out));
    }
}
