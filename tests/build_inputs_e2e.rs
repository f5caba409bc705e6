//! End-to-end: a build reads its inputs only from inside the pushed tree, and a pushed tree
//! that unpacks to more than `max_build_mb` is refused while it is exported.
//!
//! Each push goes through the real pre-receive hook (`push_local`) into a daemon on a temp home.
//! The apps are generic (no Python files), so a push that gets through builds in a moment.

mod support;

use std::path::Path;

use support::*;

/// Commits a symlink `link -> target` (plus `files`) in `repo`.
fn commit_with_link(repo: &GitRepo, files: &[(&str, &str)], link: &str, target: &str, message: &str) {
    let at = repo.dir.join(link);
    std::fs::create_dir_all(at.parent().expect("a parent")).expect("create the link's dir");
    std::os::unix::fs::symlink(target, &at).expect("create the link");
    repo.commit_files(files, message);
}

/// The push was refused with exactly one ` !     ` line saying `why`, and left no release dir,
/// no slug and no release behind.
fn assert_refused(slip: &Slipway, app: &str, pushed: (bool, String), why: &str) {
    let (ok, output) = pushed;
    assert!(!ok, "the push should fail:\n{output}");
    let bangs: Vec<&str> = output.lines().filter(|l| l.contains(" !     ")).collect();
    assert_eq!(bangs.len(), 1, "one ` !     ` line expected:\n{output}");
    assert!(bangs[0].contains(why), "{why:?} not in {:?}\n{output}", bangs[0]);
    for dir in ["releases", "slugs"] {
        let path = slip.home.join(dir).join(app);
        assert!(!dir_has_entries(&path), "{} is not empty: {:?}", path.display(), list_tree(&path));
    }
    let releases = slip.json(&["releases", app, "--json"]);
    assert_eq!(releases.as_array().map(Vec::len), Some(0), "{releases}");
}

fn env() -> Slipway {
    let mut slip = Slipway::new();
    slip.start_daemon();
    slip
}

#[test]
fn a_procfile_linking_out_of_the_tree_is_refused() {
    let slip = env();
    let repo = GitRepo::init(&slip.root().join("work"));
    commit_with_link(&repo, &[("index.html", "hi")], "Procfile", "/etc/passwd", "procfile to passwd");
    let pushed = slip.push_local(&repo, "evil");
    assert_refused(&slip, "evil", pushed, "Procfile is a link out of the build directory");

    // A link that stays inside the tree is followed.
    let repo = GitRepo::init(&slip.root().join("work2"));
    commit_with_link(
        &repo,
        &[("config/Procfile.real", "web: python3 -m http.server $PORT\n"), ("index.html", "hi")],
        "Procfile",
        "config/Procfile.real",
        "procfile inside",
    );
    let (ok, output) = slip.push_local(&repo, "fine");
    assert!(ok, "a link inside the tree is fine:\n{output}\n{}", slip.diagnostics());
}

#[test]
fn a_requirements_include_linking_out_is_refused() {
    let slip = env();
    let outside = slip.root().join("outside.txt");
    std::fs::write(&outside, "flask\n").unwrap();
    let repo = GitRepo::init(&slip.root().join("work"));
    commit_with_link(
        &repo,
        &[
            ("requirements.txt", "-r requirements/base.txt\n"),
            ("requirements/base.txt", "-r common.txt\n"),
            ("app.py", "print('hi')\n"),
            ("Procfile", "web: python3 app.py\n"),
        ],
        "requirements/common.txt",
        &outside.to_string_lossy(),
        "include out",
    );
    let pushed = slip.push_local(&repo, "evil");
    assert_refused(
        &slip,
        "evil",
        pushed,
        "requirements/common.txt (included by requirements/base.txt) is a link out of the build directory",
    );
}

#[test]
fn a_hook_linking_out_is_not_run() {
    let slip = env();
    let mark = slip.root().join("ran");
    let script = slip.root().join("outside-hook");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
    let repo = GitRepo::init(&slip.root().join("work"));
    commit_with_link(
        &repo,
        &[("Procfile", "web: python3 -m http.server $PORT\n"), ("index.html", "hi")],
        "bin/post_compile",
        &script.to_string_lossy(),
        "hook out",
    );
    let pushed = slip.push_local(&repo, "evil");
    assert_refused(&slip, "evil", pushed, "bin/post_compile is a link out of the build directory");
    assert!(!Path::new(&mark).exists(), "the hook ran");
}

/// 200 MB of zeros compress to about 200 KB in git; with `max_build_mb = 50` the export stops
/// at the cap.
#[test]
fn a_git_bomb_is_refused_while_exporting() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_MAX_BUILD_MB".into(), "50".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(repo.dir.join("zeros.bin")).unwrap();
        let block = vec![0u8; 1 << 20];
        for _ in 0..200 {
            f.write_all(&block).unwrap();
        }
    }
    repo.commit_files(&[("Procfile", "web: python3 -m http.server $PORT\n")], "bomb");
    let packed = repo.git_ok(&["count-objects", "-v"]);
    let started = std::time::Instant::now();
    let pushed = slip.push_local(&repo, "bomb");
    eprintln!("git bomb refused in {:?} ({})", started.elapsed(), packed.replace('\n', " "));
    assert_refused(&slip, "bomb", pushed, "the pushed tree unpacks to more than 50 MB (max_build_mb)");
}

/// The release phase's script (and any process type's) must not lead out of the tree either:
/// the build refuses it before a release exists.
#[test]
fn a_release_script_linking_out_is_refused() {
    let slip = env();
    let mark = slip.root().join("ran");
    let script = slip.root().join("outside-release");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", mark.display())).expect("write the script");
    let repo = GitRepo::init(&slip.root().join("work"));
    commit_with_link(
        &repo,
        &[
            ("Procfile", "release: bin/migrate --now\nweb: python3 -m http.server $PORT\n"),
            ("index.html", "hi"),
        ],
        "bin/migrate",
        &script.to_string_lossy(),
        "release out",
    );
    let pushed = slip.push_local(&repo, "evil");
    assert_refused(
        &slip,
        "evil",
        pushed,
        "Procfile process type 'release': bin/migrate is a link out of the build directory",
    );
    assert!(!Path::new(&mark).exists(), "the release script ran");
}
