//! Shared, immutable dependency environments (`envs/<app>/<key>/`): releases with the same
//! dependency key link to one environment (nothing copied), a new key makes a new one, a failed
//! build leaves none behind, neither a dyno nor a later build can write one (Landlock, not only
//! the mode bits: the tests run as root), rollbacks work (also from a slug alone), environments
//! no retained release needs are removed, and `apps:destroy` removes them all.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// The test app: answers `body` on `/`, and on `/probe` tries to create a file in its
/// environment and to append to its `pyvenv.cfg`, answering how each went (`allowed` or the
/// errno's name).
fn app_py(body: &str) -> String {
    format!(
        r#"import errno, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def attempt(f):
    try:
        f()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        venv = os.environ["VIRTUAL_ENV"]
        if self.path == "/probe":
            body = " ".join([
                attempt(lambda: open(os.path.join(venv, "probe"), "w").close()),
                attempt(lambda: open(os.path.join(venv, "pyvenv.cfg"), "a").close()),
            ])
        else:
            body = {body:?}
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass

ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#
    )
}

/// `bin/post_compile`: says whether the build could write its environment, and fails the build
/// when the app has a `fail-me` file.
const POST_COMPILE: &str = "#!/bin/bash\n\
    if (touch .slipway/venv/probe && rm .slipway/venv/probe) 2>/dev/null; then echo ENV-WRITABLE; else echo ENV-READONLY; fi\n\
    if [ -e fail-me ]; then echo failing on purpose; exit 1; fi\n";

fn files(body: &str, requirements: &str) -> Vec<(String, String)> {
    vec![
        ("app.py".into(), app_py(body)),
        ("Procfile".into(), "web: python app.py\n".into()),
        ("requirements.txt".into(), requirements.into()),
        ("bin/post_compile".into(), POST_COMPILE.into()),
    ]
}

fn web_port(slip: &Slipway, release: &str) -> u16 {
    slip.release_web_port("hello", release, Duration::from_secs(30))
}

fn get(port: u16, path: &str) -> String {
    get_200(port, path, Duration::from_secs(15))
}

fn build_id(slip: &Slipway, release: &str) -> String {
    let info = slip.json(&["releases:info", "hello", release, "--json"]);
    info["build_id"].as_str().unwrap_or_else(|| panic!("no build_id for {release}: {info}")).to_string()
}

/// The key of the environment `release`'s dir links to (its `.slipway/venv` must be a link).
fn env_key(slip: &Slipway, release: &str) -> String {
    let venv = slip.home.join("releases/hello").join(build_id(slip, release)).join(".slipway/venv");
    let meta = std::fs::symlink_metadata(&venv).unwrap_or_else(|e| panic!("{}: {e}", venv.display()));
    assert!(meta.file_type().is_symlink(), "{release}'s venv is not a link to a shared environment");
    let target = std::fs::read_link(&venv).expect("reading the test home");
    let key = target.file_name().expect("reading the test home").to_string_lossy().into_owned();
    assert_eq!(target, PathBuf::from("../../../../envs/hello").join(&key), "{release}'s link");
    key
}

/// The app's environments (`envs/hello/<key>`; the dot dir beside them keeps their slug parts).
fn envs(slip: &Slipway) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(slip.home.join("envs/hello"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    keys.retain(|k| !k.starts_with('.'));
    keys.sort();
    keys
}

/// The environments whose slug part is kept (`envs/hello/.slug-parts/<key>.gz`): packed once,
/// copied into every slug of a release linking it, removed with the environment.
fn parts(slip: &Slipway) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(slip.home.join("envs/hello/.slug-parts"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".gz").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// Sealed: the marker is there, nothing in it is writable by mode.
fn assert_sealed(slip: &Slipway, key: &str) {
    let env = slip.home.join("envs/hello").join(key);
    assert!(env.join(".slipway-sealed").is_file(), "{} is not sealed", env.display());
    // What it provides (nltk, django: neither here) was asked once, before sealing.
    let modules = std::fs::read_to_string(env.join(".slipway-modules")).expect("the modules record");
    assert_eq!(modules, "", "{}", env.display());
    for path in list_tree(&env) {
        let meta = std::fs::symlink_metadata(&path).expect("reading the test home");
        if !meta.file_type().is_symlink() {
            assert_eq!(meta.mode() & 0o222, 0, "{} is writable by mode", path.display());
        }
    }
    assert_eq!(std::fs::metadata(&env).expect("reading the test home").mode() & 0o7777, 0o555);
}

#[test]
fn releases_share_sealed_environments_until_no_retained_release_needs_them() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_KEEP_RELEASES".into(), "2".into()));
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let push = |body: &str, requirements: &str| {
        repo.commit_files(&files(body, requirements), body);
        slip.push_local(&repo, "hello")
    };

    // v1: a new environment, built by this build (which may write it, as post_compile did).
    let (ok, out) = push("one", "# set A\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("ENV-WRITABLE"),
        "post_compile could not write the build's own new environment:\n{out}"
    );
    let a = env_key(&slip, "v1");
    assert_sealed(&slip, &a);
    assert_eq!(get(web_port(&slip, "v1"), "/"), "one");

    // v2, code only: the same environment, linked, not copied; the build may not write it.
    let inode = |release: &str| {
        let cfg =
            slip.home.join("releases/hello").join(build_id(&slip, release)).join(".slipway/venv/pyvenv.cfg");
        std::fs::metadata(cfg).expect("reading the test home").ino()
    };
    let (ok, out) = push("two", "# set A\n");
    assert!(ok, "{out}");
    assert!(out.contains("Using cached dependencies (key "), "{out}");
    assert!(!out.contains("Creating virtualenv"), "{out}");
    assert!(out.contains("ENV-READONLY"), "a build could write a shared environment:\n{out}");
    assert_eq!(env_key(&slip, "v2"), a);
    assert_eq!(inode("v1"), inode("v2"));
    assert_eq!(envs(&slip), vec![a.clone()]);
    assert_eq!(parts(&slip), vec![a.clone()]);
    let port = web_port(&slip, "v2");
    assert_eq!(get(port, "/"), "two");
    // A dyno cannot write its environment: root passes the mode bits, Landlock refuses.
    let probe = get(port, "/probe");
    let refused = ["EACCES", "EROFS", "EPERM"];
    assert!(
        probe.split(' ').count() == 2 && probe.split(' ').all(|r| refused.contains(&r)),
        "a dyno wrote (or failed oddly to write) its environment: {probe}"
    );
    assert!(!slip.home.join("envs/hello").join(&a).join("probe").exists());

    // v3, changed requirements: a new environment; A stays for the retained v2.
    let (ok, out) = push("three", "# set B\n");
    assert!(ok && out.contains("Creating virtualenv"), "{out}");
    let b = env_key(&slip, "v3");
    assert_ne!(a, b);
    assert_sealed(&slip, &b);
    assert_eq!(envs(&slip), sorted(vec![a.clone(), b.clone()]));

    // A failed build with a new key leaves no environment behind.
    repo.commit_files(&[("fail-me", "x"), ("requirements.txt", "# set X\n")], "fails");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok && out.contains("failing on purpose"), "{out}");
    assert_eq!(envs(&slip), sorted(vec![a.clone(), b.clone()]), "the failed build left an environment");
    repo.git_ok(&["rm", "-q", "fail-me"]);

    // Rollback to v2 (environment A, kept for it): v4.
    let out = slip.cmd_ok(&["rollback", "hello", "v2"]);
    assert!(out.contains("done, v4"), "{out}");
    assert_eq!(get(web_port(&slip, "v4"), "/"), "two");

    // Rollback to v3 with its dir and its environment gone (as after a restore into a new
    // home): the slug alone brings both back, sealed. v5.
    let v3_dir = slip.home.join("releases/hello").join(build_id(&slip, "v3"));
    std::fs::remove_dir_all(&v3_dir).expect("reading the test home");
    std::fs::remove_dir_all(slip.home.join("envs/hello").join(&b)).expect("reading the test home");
    let out = slip.cmd_ok(&["rollback", "hello", "v3"]);
    assert!(out.contains("done, v5"), "{out}");
    assert_eq!(get(web_port(&slip, "v5"), "/"), "three");
    assert_eq!(env_key(&slip, "v5"), b);
    assert_sealed(&slip, &b);

    // v6, new requirements: retained are v6 and v5 (B); A (v4, v2, v1) is no longer needed.
    let (ok, out) = push("six", "# set C\n");
    assert!(ok, "{out}");
    let c = env_key(&slip, "v6");
    assert_eq!(get(web_port(&slip, "v6"), "/"), "six");
    assert_eq!(envs(&slip), sorted(vec![b.clone(), c.clone()]), "A should have been collected");
    assert_eq!(parts(&slip), sorted(vec![b.clone(), c.clone()]), "A's slug part should have gone with it");

    // apps:destroy removes every environment of the app.
    slip.cmd_ok(&["apps:destroy", "hello", "--confirm", "hello"]);
    assert!(!slip.home.join("envs/hello").exists(), "apps:destroy left envs/hello");
}
