//! End-to-end: builds and the release phase run as the app's own uid. Run as root (CI), a
//! push's `bin/post_compile` and its `release:` command run as the app's uid from `app_uids`
//! (`apps:info --json` shows it), not root nor the daemon's; as that uid they cannot read
//! `slipway.db`, write `repos/` or `cache/.tools`, write another app's cache or release, nor
//! signal another app's dyno, but can write their own build dir and cache. Afterwards the
//! release dir and its dependency environment are not the app's (it cannot change them), the
//! cache still is; the seed virtualenv is the platform's. Not root: nothing to check (single-user mode is the rest of the suite).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

/// Prints `PROBE <phase> <what>: <outcome>` lines: who it runs as, then each attempt.
const PROBE: &str = r#"import os, signal, sys
from pathlib import Path

phase = sys.argv[1]
home = Path(os.environ["PROBE_HOME"])

def say(what, outcome):
    print("PROBE %s %s: %s" % (phase, what, outcome), flush=True)

def attempt(name, fn):
    try:
        say(name, "ALLOWED " + str(fn())[:100])
    except Exception as e:
        say(name, "denied %s" % type(e).__name__)

def create(path):
    with open(path, "w") as f:
        f.write("probe")
    return "written " + str(path)

def read(path):
    with open(path, "rb") as f:
        return f.read(16)

say("uid", os.getuid())
say("euid", os.geteuid())
say("gid", os.getgid())
attempt("read slipway.db", lambda: read(home / "slipway.db"))
attempt("write repos", lambda: create(home / "repos" / "probe-was-here"))
attempt("write cache/.tools", lambda: create(home / "cache" / ".tools" / "probe-was-here"))
attempt("write another app's cache", lambda: create(home / "cache" / "victim" / "probe-was-here"))
attempt("write another app's release", lambda: create(Path(os.environ["VICTIM_RELEASE"]) / "probe-was-here"))
attempt("signal another app's dyno", lambda: os.kill(int(os.environ["VICTIM_PID"]), signal.SIGTERM))
if phase == "post_compile":
    attempt("write own build dir", lambda: create(Path(os.environ["BUILD_DIR"]) / "made-by-post-compile"))
    attempt("write own cache", lambda: create(Path(os.environ["CACHE_DIR"]) / "made-by-post-compile"))
"#;

const POST_COMPILE: &str =
    "#!/bin/sh\necho \"PROBE post_compile id -u: $(id -u)\"\nexec python probe_build.py post_compile\n";

/// `phase`'s lines of the push output: what after `PROBE <phase> `, keyed by what comes before `: `.
fn probe_lines(out: &str, phase: &str) -> BTreeMap<String, String> {
    let tag = format!("PROBE {phase} ");
    out.lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Every path under `root` (itself included) owned by `uid`.
fn owned_by(root: &Path, uid: u32) -> Vec<PathBuf> {
    let mut all = list_tree(root);
    all.push(root.to_path_buf());
    all.into_iter().filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == uid)).collect()
}

fn only_dir(dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        // Not `envs/<app>/.slug-parts` (the environments' packed slug parts).
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn builds_and_the_release_phase_run_as_the_apps_uid() {
    if !running_as_root() {
        eprintln!("skipped: per-app users need root; the tests run as {}", current_user());
        return;
    }
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    let home = slip.home.clone();

    let (victim_pid, _) = slip.push_victim();
    let victim_release = only_dir(&home.join("releases/victim"));
    std::fs::create_dir_all(home.join("cache/victim")).unwrap();

    slip.cmd_ok(&["apps:create", "probe"]);
    slip.cmd_ok(&[
        "config:set",
        "probe",
        &format!("PROBE_HOME={}", home.display()),
        &format!("VICTIM_PID={victim_pid}"),
        &format!("VICTIM_RELEASE={}", victim_release.display()),
    ]);
    let repo = GitRepo::init(&slip.root().join("probe"));
    repo.commit_files(
        &[
            ("probe_build.py", PROBE.to_string()),
            ("bin/post_compile", POST_COMPILE.to_string()),
            ("server", stdlib_server("'probe'")),
            ("Procfile", "web: python3 server\nrelease: python probe_build.py release\n".into()),
            ("requirements.txt", REQUIREMENTS.into()),
        ],
        "p",
    );
    let (ok, out) = slip.push_local(&repo, "probe");
    assert!(ok, "{out}\n{}", slip.diagnostics());

    let probe_uid = slip.app_info("probe")["uid"].as_u64().unwrap_or_else(|| panic!("no uid")) as u32;
    let daemon_pid = slip.json(&["status", "--json"])["daemon"]["pid"].as_u64().expect("daemon pid");
    let daemon_uid = std::fs::metadata(format!("/proc/{daemon_pid}")).unwrap().uid();
    assert!(probe_uid != 0 && probe_uid != daemon_uid, "uid {probe_uid}");

    for phase in ["post_compile", "release"] {
        let seen = probe_lines(&out, phase);
        let uid = probe_uid.to_string();
        assert_eq!(seen.get("uid"), Some(&uid), "{phase} ran as another uid\n{out}");
        assert_eq!(seen.get("euid"), Some(&uid), "{phase}\n{out}");
        assert_eq!(seen.get("gid"), Some(&uid), "{phase}\n{out}");
        for name in [
            "read slipway.db",
            "write repos",
            "write cache/.tools",
            "write another app's cache",
            "write another app's release",
            "signal another app's dyno",
        ] {
            let got = seen.get(name).unwrap_or_else(|| panic!("{phase}: no '{name}' line\n{out}"));
            assert!(got.starts_with("denied"), "{phase}: {name}: {got}\n{out}");
        }
    }
    // The seed every new venv is cloned from is made by the platform, never taken from the app's.
    assert!(out.contains("Making the seed virtualenv of this interpreter"), "{out}");
    assert!(out.contains("(seed virtualenv)"), "{out}");
    let seeds = home.join("cache/.tools/seeds");
    let seed = only_dir(&seeds);
    assert_eq!(owned_by(&seed, probe_uid), Vec::<PathBuf>::new(), "the app owns parts of the seed");
    let built = probe_lines(&out, "post_compile");
    assert_eq!(built.get("id -u"), Some(&probe_uid.to_string()), "{out}");
    for name in ["write own build dir", "write own cache"] {
        let got = built.get(name).unwrap_or_else(|| panic!("no '{name}' line\n{out}"));
        assert!(got.starts_with("ALLOWED"), "{name}: {got}\n{out}");
    }
    assert!(process_alive(victim_pid), "the victim's dyno was signalled");
    for planted in ["repos", "cache/.tools", "cache/victim"] {
        assert!(!home.join(planted).join("probe-was-here").exists(), "{planted}");
    }
    assert!(!victim_release.join("probe-was-here").exists());

    // The release and its environment are the platform's again; the cache stays the app's.
    let release = only_dir(&home.join("releases/probe"));
    assert!(release.join("made-by-post-compile").is_file(), "post_compile's file is in the release");
    assert_eq!(owned_by(&release, probe_uid), Vec::<PathBuf>::new(), "the app owns parts of its release");
    let env = only_dir(&home.join("envs/probe"));
    assert!(env.join(".slipway-sealed").is_file(), "{}", env.display());
    assert_eq!(owned_by(&env, probe_uid), Vec::<PathBuf>::new(), "the app owns parts of its environment");
    let cache = home.join("cache/probe");
    assert_eq!(std::fs::metadata(&cache).unwrap().uid(), probe_uid, "the cache is the app's");
    assert_eq!(std::fs::metadata(cache.join("made-by-post-compile")).unwrap().uid(), probe_uid);

    // Its dyno runs from that release, and a second push (the environment reused) works too.
    let mut up = false;
    wait_until(Duration::from_secs(30), || {
        up = slip.dyno_up("probe", "web.1").is_some();
        up
    });
    assert!(up, "probe web.1 not up\n{}", slip.diagnostics());
    repo.commit_files(&[("server", stdlib_server("'probe v2'"))], "v2");
    let (ok, out) = slip.push_local(&repo, "probe");
    assert!(ok, "{out}\n{}", slip.diagnostics());
    assert_eq!(probe_lines(&out, "release").get("uid"), Some(&probe_uid.to_string()), "{out}");
    for release in std::fs::read_dir(home.join("releases/probe")).unwrap().flatten() {
        assert_eq!(owned_by(&release.path(), probe_uid), Vec::<PathBuf>::new());
    }
}
