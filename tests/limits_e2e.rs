//! Memory and process limits, end to end, with real cgroups: a dyno above its `ps:resize`
//! quota logs R14, at twice it is OOM-killed by the kernel (R15) and restarted; a fork loop
//! stops at `dyno_max_pids`; `ps` shows the quota and the tree's memory; every cgroup is gone
//! once the dynos are stopped. Needs root and a cgroup layout slipway supports (CI: v1 with
//! the memory and pids controllers); elsewhere the tests say why and pass without checking.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{describe, wait_until, GitRepo, Slipway, REQUIREMENTS};

/// Grows to 96 MB (above a 64M quota, below the 128M hard limit), holds there long enough
/// for the shim's watcher to see it, then goes for 400 MB.
const HOG: &str = r#"import os, time
print("hog: DYNO_RAM=%s WEB_CONCURRENCY=%s" % (os.environ["DYNO_RAM"], os.environ["WEB_CONCURRENCY"]), flush=True)
chunks = []
while len(chunks) < 96:
    chunks.append(b"x" * (1 << 20))
print("hog: holding 96 MB", flush=True)
time.sleep(3)
while len(chunks) < 400:
    chunks.append(b"x" * (1 << 20))
print("hog: survived with 400 MB", flush=True)
time.sleep(1000)
"#;

/// Forks children that leave the dyno's process group and session (`setsid`) and sleep, until
/// fork fails.
const FORKER: &str = r#"import os, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print("forker: fork failed after %d children: %s" % (n, e), flush=True)
        time.sleep(1000)
    if pid == 0:
        os.setsid()
        time.sleep(1000)
        os._exit(0)
    n += 1
"#;

/// A build hook that shows the build's cgroup: from its own shell's `/proc/$$/cgroup` (as root
/// the hook runs as the app's uid, which cannot look into the cgroup dirs, like the one-off
/// below), and from the cgroups' member lists under `/sys` where it may read them, with, on
/// v1, the memory limit.
const POST_COMPILE: &str = r#"#!/bin/sh
while read -r l; do echo "build cgroup: $l"; done < /proc/$$/cgroup
for f in /sys/fs/cgroup/memory/slipway-*/*/build-*/cgroup.procs /sys/fs/cgroup/slipway-*/*/build-*/cgroup.procs; do
    [ -r "$f" ] && grep -qx "$$" "$f" || continue
    d=${f%/cgroup.procs}
    echo "build cgroup: $d"
    [ -r "$d/memory.limit_in_bytes" ] && echo "build memory limit: $(cat "$d/memory.limit_in_bytes")"
done
exit 0
"#;

/// The same for a one-off dyno: its main process (the shell) finds itself in a cgroup.
/// A one-off of an app with a uid of its own (root) cannot look into the daemon's cgroup dirs,
/// but may read its own shell's `/proc/$$/cgroup`; elsewhere the member lists under /sys say.
const FIND_CGROUP: &str = r#"while read -r l; do echo "cgroup: $l"; done < /proc/$$/cgroup; for f in /sys/fs/cgroup/pids/slipway-*/*/*/cgroup.procs /sys/fs/cgroup/slipway-*/*/*/cgroup.procs; do [ -r "$f" ] && grep -qx "$$" "$f" && echo "cgroup: ${f%/cgroup.procs}"; done; echo DYNO_RAM=$DYNO_RAM"#;

/// Where this home's cgroups would be, per hierarchy, or None (with the reason printed) when
/// this machine cannot run the test.
fn cgroup_roots(home: &Path) -> Option<Vec<PathBuf>> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: cgroups need root here");
        return None;
    }
    let layout = match slipway::cgroup::detect() {
        Ok(l) => l,
        Err(why) => {
            eprintln!("skipped: cgroups unavailable: {why}");
            return None;
        }
    };
    Some(layout.group(Path::new(&slipway::cgroup::home_dir_name(home))).dirs())
}

fn app_cgroups(roots: &[PathBuf], app: &str) -> Vec<PathBuf> {
    roots.iter().map(|r| r.join(app)).filter(|d| d.exists()).collect()
}

fn push_app(slip: &Slipway, app: &str, procfile: &str, files: &[(&str, &str)]) -> String {
    let repo = GitRepo::init(&slip.root().join(format!("{app}-src")));
    let mut all: Vec<(&str, String)> = vec![
        ("app.py", support::python_app_py("limits")),
        ("Procfile", procfile.to_string()),
        ("requirements.txt", REQUIREMENTS.to_string()),
    ];
    all.extend(files.iter().map(|(n, c)| (*n, c.to_string())));
    repo.commit_files(&all, "limits");
    let (ok, output) = slip.push_local(&repo, app);
    assert!(ok, "push failed:\n{output}\n{}", slip.diagnostics());
    output
}

fn dyno<'a>(dynos: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    dynos.iter().find(|d| d["name"] == name)
}

fn log_of(slip: &Slipway, app: &str) -> String {
    std::fs::read_to_string(slip.app_log_path(app)).unwrap_or_default()
}

#[test]
fn a_dyno_over_its_quota_gets_r14_then_r15_and_is_restarted() {
    let mut slip = Slipway::new();
    let Some(roots) = cgroup_roots(&slip.home) else { return };
    slip.start_daemon();
    push_app(&slip, "hog", "web: python app.py\nhog: python hog.py\n", &[("hog.py", HOG)]);

    // Bad input: one line, exit 1, nothing changed.
    for (args, why) in [
        (&["ps:resize", "hog", "hog=8M"][..], "out of range"),
        (&["ps:resize", "hog", "hog=lots"], "is not a memory size"),
        (&["ps:resize", "hog", "nosuch=1G"], "has no process type 'nosuch'"),
        (&["ps:resize", "hog", "hog"], "is not TYPE=SIZE"),
        (&["ps:resize", "nosuch", "web=1G"], "nosuch"),
    ] {
        let out = slip.cmd(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    let shown = slip.cmd_ok(&["ps:resize", "hog"]);
    assert!(
        shown.lines().any(|l| l.starts_with("hog") && l.contains("512M") && l.contains("dyno_memory")),
        "{shown}"
    );

    slip.cmd_ok(&["ps:resize", "hog", "hog=64M"]);
    let shown = slip.cmd_ok(&["ps:resize", "hog"]);
    assert!(
        shown.lines().any(|l| l.starts_with("hog") && l.contains("64M") && l.contains("128M")),
        "{shown}"
    );

    // The web dyno runs in its own cgroup with the default limits; ps shows its quota and memory.
    let web = slip.ps_json("hog");
    let web = dyno(&web, "web.1").expect("web.1").clone();
    assert_eq!(web["quota_bytes"], 512u64 << 20, "{web}");
    assert!(web["memory_kib"].as_u64().is_some_and(|k| k > 1024), "{web}");
    // Its cgroup's hard limit is twice the quota.
    let limits: Vec<String> = std::fs::read_dir(roots[0].join("hog"))
        .expect("the app's cgroup dir")
        .flatten()
        .filter_map(|e| {
            let v1 = std::fs::read_to_string(e.path().join("memory.limit_in_bytes"));
            v1.or_else(|_| std::fs::read_to_string(e.path().join("memory.max"))).ok()
        })
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(limits, [(1024u64 << 20).to_string()], "web.1's hard limit is 2 x 512M");
    let table = slip.cmd_ok(&["ps", "hog"]);
    assert!(table.lines().any(|l| l.starts_with("web.1") && l.contains("/512M")), "{table}");

    slip.cmd_ok(&["ps:scale", "hog", "hog=1"]);

    let seen = wait_until(Duration::from_secs(120), || {
        let log = log_of(&slip, "hog");
        let restarted = slip
            .ps_json("hog")
            .iter()
            .any(|d| d["name"] == "hog.1" && d["restarts"].as_i64().is_some_and(|r| r >= 1));
        log.contains("Error R14 (Memory quota exceeded)")
            && log.contains("Error R15 (Memory quota vastly exceeded)")
            && restarted
    });
    let log = log_of(&slip, "hog");
    assert!(seen, "no R14, R15 and restart:\n{log}\n{}", slip.diagnostics());
    assert!(!log.contains("hog: survived with 400 MB"), "the hog was not stopped at 128M:\n{log}");
    let r14 = log.find("Error R14").unwrap_or(usize::MAX);
    let r15 = log.find("Error R15").unwrap_or(0);
    assert!(r14 < r15, "R14 comes before R15:\n{log}");
    assert!(log.contains("Process running mem="), "{log}");
    assert!(log.contains("hog: DYNO_RAM=64 WEB_CONCURRENCY=1"), "the dyno is told its size:\n{log}");
    for line in log.lines().filter(|l| l.contains("hog.1")) {
        eprintln!("{line}");
    }
    assert!(
        log.contains("hog.1: Process exited with status 137")
            || log.contains("Process exited with status 137"),
        "{log}"
    );
    let table = slip.cmd_ok(&["ps", "hog"]);
    assert!(table.lines().any(|l| l.starts_with("hog.1") && l.contains("/64M")), "{table}");

    slip.cmd_ok(&["ps:stop", "hog"]);
    assert_eq!(app_cgroups(&roots, "hog"), Vec::<PathBuf>::new(), "cgroups left after ps:stop");
}

#[test]
fn a_fork_loop_stops_at_dyno_max_pids_and_its_cgroup_goes_with_it() {
    let mut slip = Slipway::new();
    let Some(roots) = cgroup_roots(&slip.home) else { return };
    slip.env.push(("SLIPWAY_DYNO_MAX_PIDS".into(), "48".into()));
    slip.env.push(("SLIPWAY_BUILD_MEMORY".into(), "300M".into()));
    slip.start_daemon();
    let files = [("forker.py", FORKER), ("bin/post_compile", POST_COMPILE)];
    let pushed = push_app(&slip, "forky", "web: python app.py\nforker: python forker.py\n", &files);
    // The build ran in a cgroup of its own, with build_memory's hard limit, gone afterwards.
    let build_cgroup = format!("/{}/forky/build-", slipway::cgroup::home_dir_name(&slip.home));
    assert!(pushed.contains(&build_cgroup), "the build ran outside its cgroup:\n{pushed}");
    if pushed.contains("build memory limit:") {
        assert!(pushed.contains(&format!("build memory limit: {}", 600u64 << 20)), "{pushed}");
    }
    let builds: Vec<PathBuf> = app_cgroups(&roots, "forky")
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("build-")))
        .collect();
    assert_eq!(builds, Vec::<PathBuf>::new(), "build cgroups left after the push");
    slip.cmd_ok(&["ps:scale", "forky", "forker=1"]);

    let capped =
        wait_until(Duration::from_secs(60), || log_of(&slip, "forky").contains("forker: fork failed after"));
    assert!(capped, "the fork loop was not stopped:\n{}\n{}", log_of(&slip, "forky"), slip.diagnostics());
    let dynos = slip.ps_json("forky");
    let forker = dyno(&dynos, "forker.1").expect("forker.1");
    let pgid = forker["pid"].as_i64().expect("forker.1 has a pid") as i32;
    // Its children left the process group, not the cgroup: the cap holds for all of them.
    let procs: Vec<(i32, u64)> = roots
        .iter()
        .flat_map(|r| std::fs::read_dir(r.join("forky")).into_iter().flatten().flatten())
        .filter_map(|e| std::fs::read_to_string(e.path().join("cgroup.procs")).ok())
        .map(|text| text.lines().filter_map(|l| l.trim().parse::<i32>().ok()).collect::<Vec<_>>())
        .find(|pids| pids.contains(&pgid))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| Some((pid, slipway::daemon::process::start_time(pid)?)))
        .collect();
    assert!((30..=48).contains(&procs.len()), "{} processes in forker.1's cgroup", procs.len());
    assert!(count_group(pgid) < 5, "the children were meant to leave the group");
    assert!(forker["memory_kib"].as_u64().is_some(), "{forker}");

    // A one-off dyno gets a cgroup of its own too, gone when it ends.
    slip.cmd_ok(&["ps:resize", "forky", "run=100M"]);
    let one_off = slip.cmd_ok(&["run", "forky", "--", "sh", "-c", FIND_CGROUP]);
    assert!(one_off.contains("DYNO_RAM=100"), "{one_off}");
    let base = format!("/{}/forky/", slipway::cgroup::home_dir_name(&slip.home));
    let line = one_off.lines().find(|l| l.starts_with("cgroup: ") && l.contains(&base));
    let rel = line.and_then(|l| l.split_once(&base)).map(|(_, id)| id.trim().to_string());
    let rel = rel.unwrap_or_else(|| panic!("the one-off ran outside its cgroup:\n{one_off}"));
    assert!(rel.parse::<i64>().is_ok(), "{one_off}");
    assert!(roots.iter().all(|r| !r.join("forky").join(&rel).exists()), "the one-off's cgroup stays");

    slip.cmd_ok(&["ps:stop", "forky"]);
    let survivors: Vec<i32> = procs
        .iter()
        .filter(|(pid, start)| slipway::daemon::process::is_same_process(*pid, *start))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(survivors, Vec::<i32>::new(), "processes of the fork loop survived ps:stop");
    assert_eq!(app_cgroups(&roots, "forky"), Vec::<PathBuf>::new(), "cgroups left after ps:stop");

    // What a shim killed with SIGKILL, or a build killed the same way, leaves behind is removed
    // when the daemon starts.
    slip.stop_daemon();
    let leftovers: Vec<PathBuf> =
        roots.iter().flat_map(|r| [r.join("forky/999999"), r.join("forky/build-999999999")]).collect();
    for dir in &leftovers {
        std::fs::create_dir_all(dir).expect("create a leftover cgroup");
    }
    slip.start_daemon();
    let gone = wait_until(Duration::from_secs(20), || leftovers.iter().all(|d| !d.exists()));
    assert!(gone, "leftover cgroups survived the daemon's start: {:?}", app_cgroups(&roots, "forky"));
    assert_eq!(app_cgroups(&roots, "forky"), Vec::<PathBuf>::new());
}

/// Live processes in process group `pgid`.
fn count_group(pgid: i32) -> usize {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
                .filter(|stat| {
                    slipway::daemon::process::pgrp_of(stat) == Some(pgid)
                        && !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn without_cgroups_dynos_run_unlimited_ps_counts_the_tree_and_status_says_why() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_CGROUPS".into(), "0".into()));
    slip.start_daemon();
    // A web dyno whose shell stays (the app is not the list's last command), so the app is a
    // child of the main process.
    push_app(&slip, "plain", "web: python app.py; echo exited\n", &[]);
    let status = slip.cmd(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("Cgroups:  unavailable (turned off by SLIPWAY_CGROUPS=0)")),
        "{text}"
    );
    let dynos = slip.ps_json("plain");
    let web = dyno(&dynos, "web.1").expect("web.1");
    assert_eq!(web["quota_bytes"], 512u64 << 20, "{web}");
    let main_pid = web["pid"].clone();
    let tree = web["memory_kib"].as_u64().expect("tree memory");
    let main = web["rss_kib"].as_u64().expect("main process memory");
    assert!(tree > main, "the tree's memory ({tree} KiB) counts the app under the shell ({main} KiB)");
    // Resizing a running type restarts its dynos, which then run with the new quota.
    let resized = slip.cmd_ok(&["ps:resize", "plain", "web=256M"]);
    assert!(resized.contains("Restarted web of plain"), "{resized}");
    let dynos = slip.ps_json("plain");
    // The replaced web.1 may still be draining beside the new one.
    let web = dynos.iter().find(|d| d["name"] == "web.1" && d["state"] == "up").expect("an up web.1");
    assert_eq!(web["quota_bytes"], 256u64 << 20, "{web}");
    assert_ne!(web["pid"], main_pid, "web.1 was not restarted: {dynos:?}\n{}", log_of(&slip, "plain"));

    if let Ok(layout) = slipway::cgroup::find_layout() {
        let mine = layout.group(Path::new(&slipway::cgroup::home_dir_name(&slip.home)));
        assert!(!mine.exists(), "a cgroup was made with cgroups turned off");
    }
}

/// The cgroup v2 delegation path, on this machine's v2 hierarchy (it has no controllers here,
/// so no limits are set), with a cgroup carrying systemd's `Delegate=yes` marker
/// (`trusted.delegate`) as a unit's: a process in its `daemon` leaf (where
/// `DelegateSubgroup=daemon` starts the daemon) gets it as the base of slipway's cgroups; a
/// process left in the marked cgroup itself (a dyno of the daemon before an upgrade) is moved
/// into the leaf, and moving again moves nothing; a process in the marked cgroup itself (a daemon
/// a systemd without `DelegateSubgroup=` started) does not use it. Needs root and a cgroup2 mount.
#[test]
fn a_delegated_v2_cgroup_is_the_base_for_a_daemon_in_its_leaf() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: writing cgroups needs root here");
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let Some(mount) = slipway::cgroup::parse_mountinfo(&mountinfo).v2 else {
        eprintln!("skipped: no cgroup2 hierarchy is mounted");
        return;
    };
    let rel = PathBuf::from(format!("slipway-test-delegated-{}", std::process::id()));
    let (dir, leaf) = (mount.join(&rel), mount.join(&rel).join("daemon"));
    std::fs::create_dir(&dir).expect("mkdir in the cgroup2 hierarchy");
    let mut guard = Cleanup { dirs: vec![leaf.clone(), dir.clone()], children: Vec::new() };
    std::fs::create_dir(&leaf).expect("mkdir the leaf");
    let mut spawn_into = |cgroup: &Path| -> i32 {
        let child = std::process::Command::new("sleep").arg("1000").spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        guard.children.push(child);
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).expect("moving a sleeper in");
        pid
    };
    let daemon = spawn_into(&leaf);
    let stray = spawn_into(&dir);
    let cgroup_of = |pid: i32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
        slipway::cgroup::v2_path(&text).expect("a v2 path").to_string()
    };

    let path = std::ffi::CString::new(dir.to_str().expect("utf-8").as_bytes()).expect("path");
    // SAFETY: both strings are NUL-terminated and the value is 1 byte long.
    let set =
        unsafe { libc::setxattr(path.as_ptr(), c"trusted.delegate".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(set, 0, "setting trusted.delegate: {}", std::io::Error::last_os_error());

    let (found_mount, place) = slipway::cgroup::v2_place_of(daemon).expect("a v2 place");
    assert_eq!(found_mount, mount);
    assert_eq!(place, slipway::cgroup::V2Place { base: rel.clone(), leaf: Some(rel.join("daemon")) });
    let (_, in_the_unit) = slipway::cgroup::v2_place_of(stray).expect("a v2 place");
    assert_eq!(in_the_unit.base, PathBuf::new(), "a process in the delegated cgroup itself uses the root");

    slipway::cgroup::enter_leaf(&dir, &leaf).expect("entering the leaf");
    assert_eq!(cgroup_of(stray), format!("/{}/daemon", rel.display()));
    assert_eq!(cgroup_of(daemon), format!("/{}/daemon", rel.display()));
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.procs")).expect("procs"),
        "",
        "the base is empty now"
    );
    slipway::cgroup::enter_leaf(&dir, &leaf).expect("entering the leaf again");
    assert_eq!(cgroup_of(stray), format!("/{}/daemon", rel.display()));

    // Not marked: this test process's own cgroup is no base; the mount point is.
    let (_, own_place) = slipway::cgroup::v2_place_of(std::process::id() as i32).expect("a v2 place");
    assert_eq!(own_place.base, PathBuf::new());
    drop(guard);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// Kills the children and removes the cgroup dirs (innermost first) when the test ends, passed
/// or not.
struct Cleanup {
    dirs: Vec<PathBuf>,
    children: Vec<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Err(e) = child.kill().and_then(|()| child.wait().map(drop)) {
                eprintln!("stopping a sleeper: {e}");
            }
        }
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("removing {}: {e}", dir.display());
                }
            }
        }
    }
}
