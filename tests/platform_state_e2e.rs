//! Platform state is its owner's alone: slipway's own files and directories are created with
//! umask 077 (`slipway.db` 0600, `run/` and `.ssh/` 0700, `authorized_keys` 0600), and homes
//! made before are tightened; the apps' own files keep the usual umask 022.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::*;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o777
}

#[test]
fn slipways_files_are_its_owners_alone_and_the_apps_keep_umask_022() {
    let mut slip = Slipway::new();
    // A home from before: readable by everyone.
    std::fs::create_dir_all(slip.home.join("run")).unwrap();
    std::fs::set_permissions(slip.home.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    slip.start_daemon();
    let key = slip.client_key("alice");
    slip.add_key("alice", &key);
    let repo = GitRepo::init(&slip.root().join("work"));
    let procfile =
        "web: python3 -m http.server $PORT\nworker: sh -c 'echo hi > made-by-the-app; exec sleep 600'\n";
    repo.commit_files(&[("Procfile", procfile), ("index.html", "hi")], "v1");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    slip.cmd_ok(&["ps:scale", "hello", "worker=1"]);

    assert_eq!(mode(&slip.home.join("slipway.db")), 0o600);
    assert_eq!(mode(&slip.home.join("run")), 0o700, "an older run/ is tightened");
    assert_eq!(mode(&slip.home.join(".ssh")), 0o700);
    assert_eq!(mode(&slip.home.join(".ssh").join("authorized_keys")), 0o600);
    assert_eq!(mode(&slip.app_log_path("hello")) & 0o077, 0, "the app log is the owner's");

    // The worker writes in its private working dir (`dynos/<app>/<dyno id>/app`), not the release.
    let made = || {
        std::fs::read_dir(slip.home.join("dynos").join("hello"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("app").join("made-by-the-app"))
            .find(|p| p.exists())
    };
    assert!(wait_until(Duration::from_secs(20), || made().is_some()), "the worker never wrote its file");
    let made = made().unwrap();
    assert_eq!(mode(&made), 0o644, "a dyno's files get umask 022");
}
