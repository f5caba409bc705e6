//! The operator's side of the control plane: one daemon per home however its files are
//! tampered with, commands run as root on a home another user owns, and read-only commands that
//! never wait behind a writer of the database.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    describe, process_alive, process_uids, run_with_timeout, wait_until, GitRepo, Slipway, SystemUser, BIN,
};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn daemon_pid(slip: &Slipway) -> u32 {
    let path = slip.home.join("run").join("slipway.pid");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.trim().parse().unwrap_or_else(|e| panic!("pid file holds {text:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Case 5: one daemon per home
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_daemon_refuses_even_when_the_pid_file_is_deleted() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let first = daemon_pid(&slip);
    let pid_file = slip.home.join("run").join("slipway.pid");
    let socket = slip.home.join("run").join("slipway.sock");
    let socket_inode = fs::metadata(&socket).expect("the daemon's socket").ino();
    fs::remove_file(&pid_file).unwrap();

    let second =
        run_with_timeout(&mut slip.command(&["daemon", "--foreground"]), None, Duration::from_secs(20));
    assert!(!second.status.success(), "a second daemon started:\n{}", describe(&second));
    assert!(
        stderr(&second).contains(&format!("the daemon is already running (pid {first})")),
        "{}",
        describe(&second)
    );

    // The first daemon is untouched: same socket file, still answering, pid file back.
    assert_eq!(fs::metadata(&socket).map(|m| m.ino()).ok(), Some(socket_inode), "the socket was replaced");
    let status = slip.cmd(&["status"]);
    assert!(status.status.success(), "{}\n{}", describe(&status), slip.diagnostics());
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("pid {first}")),
        "{}",
        describe(&status)
    );
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(&pid_file)
            .is_ok_and(|t| t.trim() == first.to_string())),
        "the daemon did not rewrite its pid file"
    );
    // `daemon --stop` finds it through the lock and waits until it is gone.
    let stop = slip.cmd(&["daemon", "--stop"]);
    assert!(stop.status.success(), "{}", describe(&stop));
    assert!(!process_alive(first), "daemon {first} still alive after --stop");
}

// ---------------------------------------------------------------------------------------------
// Case 7: run as root on a home another user owns
// ---------------------------------------------------------------------------------------------

/// A slipway environment whose home belongs to `user` (its temp dir opened to everyone so the
/// user, and `nobody`, can reach the home).
fn home_owned_by(user: &SystemUser) -> Slipway {
    let slip = Slipway::new();
    fs::set_permissions(slip.root(), fs::Permissions::from_mode(0o755)).expect("chmod the temp dir");
    std::os::unix::fs::chown(&slip.home, Some(user.uid), Some(user.gid)).expect("chown the home");
    slip
}

#[test]
fn root_on_a_home_owned_by_another_user_acts_as_that_user_and_its_daemon_stays_root() {
    if !is_root() {
        println!("skipped: needs root (creates a system user)");
        return;
    }
    let user = SystemUser::create("slipway", false);
    let slip = home_owned_by(&user); // dropped first: its daemon stops before the user goes
    let key = slip.client_key("id_alice");

    let out = slip.cmd_stdin(&["keys:add", "alice"], &format!("{}\n", key.public));
    assert!(out.status.success(), "keys:add as root:\n{}", describe(&out));
    for path in [slip.home.join(".ssh"), slip.authorized_keys(), slip.home.join("slipway.db")] {
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            (meta.uid(), meta.gid()),
            (user.uid, user.gid),
            "{} is not {}'s",
            path.display(),
            user.name
        );
    }
    assert!(fs::read_to_string(slip.authorized_keys()).unwrap().contains(key.blob()));

    // `slipway daemon` as root starts a daemon that stays root (per-app users), whose socket,
    // pid file and log are the home's owner's.
    let out = slip.cmd(&["daemon"]);
    assert!(out.status.success(), "slipway daemon as root:\n{}\n{}", describe(&out), slip.diagnostics());
    let pid = daemon_pid(&slip);
    assert_eq!(process_uids(pid).first(), Some(&0), "daemon {pid} does not run as root");
    let socket = slip.home.join("run").join("slipway.sock");
    for path in [socket.clone(), slip.home.join("run/slipway.pid"), slip.home.join("logs/slipway.log")] {
        assert_eq!(fs::metadata(&path).unwrap().uid(), user.uid, "{} is not {}'s", path.display(), user.name);
    }
    let status = slip.cmd(&["status"]);
    assert!(status.status.success(), "status as root:\n{}", describe(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains(&format!("pid {pid}")), "{}", describe(&status));

    // Someone who may not open the socket hears about permissions, not "not running".
    fs::set_permissions(slip.home.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
    let mut as_nobody = Command::new("runuser");
    as_nobody
        .args(["-u", "nobody", "--", BIN, "--home"])
        .arg(&slip.home)
        .arg("status")
        .current_dir(slip.root());
    let out = run_with_timeout(&mut as_nobody, None, Duration::from_secs(30));
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        err.contains("permission denied")
            && err.contains(&socket.display().to_string())
            && err.contains(&format!("user '{}'", user.name))
            && !err.contains("not running"),
        "{}",
        describe(&out)
    );

    // Stopping as root works too, and leaves nothing running as the user (nor the daemon).
    let stop = slip.cmd(&["daemon", "--stop"]);
    assert!(stop.status.success(), "daemon --stop as root:\n{}", describe(&stop));
    assert!(!process_alive(pid), "daemon {pid} still alive after --stop");
}

#[test]
fn root_that_cannot_switch_users_is_told_the_runuser_command_and_touches_nothing() {
    if !is_root() {
        println!("skipped: needs root (creates a system user)");
        return;
    }
    let user = SystemUser::create("slipway", false);
    let slip = home_owned_by(&user);
    // Root without CAP_SETUID/CAP_SETGID (as in a locked-down container).
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", "-setuid,-setgid", "--", BIN, "--home"])
        .arg(&slip.home)
        .arg("apps")
        .current_dir(slip.root());
    let out = run_with_timeout(&mut cmd, None, Duration::from_secs(30));
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", describe(&out));
    let expected = format!("runuser -u {} -- {BIN} --home {} apps", user.name, slip.home.display());
    assert!(err.contains(&expected), "wanted {expected:?}:\n{}", describe(&out));
    assert_eq!(err.trim().lines().count(), 1, "not one sentence: {err:?}");
    assert!(!slip.home.join("slipway.db").exists(), "the refused command created the database");
}

#[test]
fn a_home_owned_by_a_uid_without_a_user_is_refused() {
    if !is_root() {
        println!("skipped: needs root (chowns to an unknown uid)");
        return;
    }
    let slip = Slipway::new();
    let uid = (3_900_000..3_900_100)
        .find(|uid| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid)).is_ok_and(|u| u.is_none()))
        .expect("a uid without a user");
    std::os::unix::fs::chown(&slip.home, Some(uid), Some(uid)).unwrap();
    let out = slip.cmd(&["apps"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("belongs to uid {uid}, which has no user entry")),
        "{}",
        describe(&out)
    );
    assert!(!slip.home.join("slipway.db").exists(), "the refused command created the database");
}

// ---------------------------------------------------------------------------------------------
// Case 4: read-only commands never wait behind a writer
// ---------------------------------------------------------------------------------------------

#[test]
fn read_only_commands_answer_while_another_process_holds_the_write_lock() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    repo.commit_files(&[("Procfile", "web: python3 -m http.server $PORT --bind 0.0.0.0\n")], "app");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok && out.contains("done, v1"), "deploy failed:\n{out}\n{}", slip.diagnostics());
    let up = wait_until(Duration::from_secs(20), || {
        slip.ps_json("hello").iter().any(|d| d["name"] == "web.1" && d["state"] == "up")
    });
    assert!(up, "web.1 never came up\n{}", slip.diagnostics());

    // Another process's writer: a separate python3 holding BEGIN IMMEDIATE for 20 s.
    let db = slip.home.join("slipway.db");
    let marker = slip.root().join("writer-holds-lock");
    let script = "import sqlite3, sys, time, pathlib\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                  c.execute('BEGIN IMMEDIATE')\n\
                  c.execute(\"INSERT INTO apps (name, created_at) VALUES ('held', 'x')\")\n\
                  pathlib.Path(sys.argv[2]).touch()\n\
                  time.sleep(20)\n";
    let mut writer = Command::new("python3")
        .args(["-c", script])
        .arg(&db)
        .arg(&marker)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn python3");
    let _kill_writer = KillOnDrop(writer.id());
    assert!(wait_until(Duration::from_secs(10), || marker.exists()), "the writer never took the lock");
    assert!(holds_write_lock(&db), "the writer does not hold the write lock");

    let commands: &[&[&str]] = &[
        &["ps", "hello"],
        &["apps"],
        &["apps:info", "hello"],
        &["releases", "hello"],
        &["config", "hello"],
        &["domains", "hello"],
        &["logs", "hello", "-n", "5"],
        &["keys"],
        &["status"],
    ];
    for args in commands {
        let started = Instant::now();
        let out = run_with_timeout(&mut slip.command(args), None, Duration::from_secs(5));
        assert!(
            out.status.success(),
            "slipway {args:?} did not answer within 5 s behind a writer ({:?}):\n{}",
            started.elapsed(),
            describe(&out)
        );
    }
    assert!(matches!(writer.try_wait(), Ok(None)), "the writer let go of the lock early");
    assert!(holds_write_lock(&db), "the writer no longer holds the write lock");
    let _ = writer.kill();
    let _ = writer.wait();
}

/// Whether some connection holds the database's write lock: a fresh one cannot begin a write.
fn holds_write_lock(db: &Path) -> bool {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    conn.busy_timeout(Duration::ZERO).expect("set busy_timeout");
    let held = conn.execute_batch("BEGIN IMMEDIATE").is_err();
    if !held {
        conn.execute_batch("ROLLBACK").expect("roll back the probe");
    }
    held
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        support::kill_pid(self.0);
    }
}
