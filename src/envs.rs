//! Shared, immutable dependency environments: `envs/<app>/<key>/`, one virtualenv per app and
//! dependency key (`build::python`'s hash of the installer, the interpreter version, the pip pin
//! and the dependency files).
//!
//! An environment is built once, in place at its final path (a venv records its absolute path,
//! so it is never moved), by the build that first needs its key; when that build succeeds it is
//! *sealed* ([`seal`]): files 0444 (0555 when executable), directories 0555, and a marker
//! ([`SEALED`]) written last. From then on nothing writes it: a build with the same key links
//! its release to it (`.slipway/venv` → `../../../../envs/<app>/<key>`, no copy at all), a build
//! with another key makes another environment, builds and dynos may only read it (Landlock,
//! `sandbox`), and a dir without the marker is the leftover of a build that failed or was
//! killed: garbage, removed before its key is built again.
//!
//! Garbage collection ([`collect`]) runs after every release that went live, under the app's
//! deploy lock: an environment is kept while a retained release (the ones `release::prune`
//! keeps: the newest `keep_releases` and the current one), the release before the current one,
//! or a dyno still recorded in the database refers to it; the others are removed.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::app::AppName;
use crate::home::Home;
use crate::store::{self, Store};

/// Written last into a finished environment: without it a dir is garbage.
pub const SEALED: &str = ".slipway-sealed";

/// Where a release dir's venv link points for `key`: relative, so the link reads the same from
/// the release dir and from a dyno's private copy (whose `.slipway` links to the release's).
pub fn link_target(app: &AppName, key: &str) -> PathBuf {
    Path::new("../../../../envs").join(app.as_str()).join(key)
}

/// Whether `env` is a finished environment (a real dir, not a link, with the marker).
pub fn is_sealed(env: &Path) -> bool {
    std::fs::symlink_metadata(env).is_ok_and(|m| m.is_dir())
        && std::fs::symlink_metadata(env.join(SEALED)).is_ok_and(|m| m.is_file())
}

/// Makes room for a new environment at `env`: removes an unsealed leftover there and creates
/// the parent. The caller builds the venv at `env` and [`seal`]s it when the build succeeded.
pub fn prepare(env: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(env).is_ok() {
        // A leftover of a build killed before it took its files back is the app's: a worker
        // (saved uid root) removes it as root, or the app's every later build would fail here.
        crate::users::root_if_privileged(|| remove(env))??;
    }
    if let Some(parent) = env.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(())
}

/// The mode a sealed entry gets: nobody may write it; what was executable stays executable.
pub fn sealed_mode(is_dir: bool, mode: u32) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        0o555
    } else {
        0o444
    }
}

/// Makes `env` read-only (files and dirs, bottom-up; links are left as they are, `chmod`
/// would follow them) and writes the marker last, then closes the top dir.
pub fn seal(env: &Path) -> io::Result<()> {
    // A copy of a sealed tree (a slug's, a renamed app's) arrives read-only: the marker must
    // still be written into it.
    std::fs::set_permissions(env, std::fs::Permissions::from_mode(0o755))?;
    fn walk(dir: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                continue;
            }
            let path = entry.path();
            if kind.is_dir() {
                walk(&path)?;
            }
            let mode = entry.metadata()?.permissions().mode();
            std::fs::set_permissions(
                &path,
                std::fs::Permissions::from_mode(sealed_mode(kind.is_dir(), mode)),
            )?;
        }
        Ok(())
    }
    walk(env)?;
    crate::fsutil::write_atomic(&env.join(SEALED), b"", 0o444)?;
    std::fs::set_permissions(env, std::fs::Permissions::from_mode(0o555))
}

/// Removes an environment, sealed or not: its dirs are made writable again first (as any
/// non-root owner must, to unlink their entries). Links are never followed.
pub fn remove(env: &Path) -> io::Result<()> {
    // Its dirs writable again, never through a link (root removes the app's leftovers too).
    fn open_up(dir: &Path) -> io::Result<()> {
        crate::fsutil::walk_tree_nofollow(dir, &mut |node| {
            if node.is_dir() {
                node.chmod(0o700)
            } else {
                Ok(())
            }
        })
    }
    match std::fs::symlink_metadata(env) {
        Ok(meta) if meta.is_dir() => {
            open_up(env)?;
            // The marker first: a removal cut short leaves garbage, never a "sealed" torso.
            match std::fs::remove_file(env.join(SEALED)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::remove_dir_all(env)
        }
        Ok(_) => std::fs::remove_file(env),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes every environment of an app (`apps:destroy`).
pub fn remove_all(home: &Home, app: &AppName) -> io::Result<()> {
    let dir = home.envs(app);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    for entry in entries {
        remove(&entry?.path())?;
    }
    match std::fs::remove_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Points `release_dir`'s venv (`.slipway/venv`) at the app's environment `key`. The app's
/// files may hold a `.slipway`: it must be a real dir (a link could lead the new link out of
/// the release dir, and this runs unconfined).
pub fn link(release_dir: &Path, app: &AppName, key: &str) -> io::Result<()> {
    let dot = release_dir.join(".slipway");
    match std::fs::symlink_metadata(&dot) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::other(
                "the app's '.slipway' is not a directory (slipway keeps its own files there); remove it from the app",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&dot)?,
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(link_target(app, key), release_dir.join(crate::build::python::VENV))
}

/// After a slug was unpacked into `release_dir` (a rollback to a pruned dir, a restore): the
/// slug holds the environment's files at `.slipway/venv` (see `build::slug`), made for the path
/// its `bin/activate` names (`<home it was built in>/envs/<app>/<key>`, see [`recorded_env`]).
/// The release links to the environment again: kept as it is when it is still there, else put
/// back at its path (moved when the slug was made in this home, else copied with the paths
/// rewritten) and sealed. The venv of a release made before environments were shared (its files
/// name the release dir) is left where it is.
pub fn adopt(home: &Home, app: &AppName, release_dir: &Path) -> io::Result<()> {
    let venv = release_dir.join(crate::build::python::VENV);
    if !std::fs::symlink_metadata(&venv).is_ok_and(|m| m.is_dir()) {
        return Ok(()); // no venv, or already a link
    }
    let activate = std::fs::read_to_string(venv.join("bin/activate")).unwrap_or_default();
    let Some((recorded, key)) = recorded_env(&activate, app) else {
        return Ok(()); // an older release's own venv
    };
    let env = home.env(app, &key);
    if !is_sealed(&env) {
        prepare(&env)?;
        if recorded == env {
            std::fs::rename(&venv, &env)?;
        } else {
            crate::build::venv::clone(&venv, &env, &recorded, &env)?;
        }
        seal(&env)?;
    }
    remove(&venv)?;
    link(release_dir, app, &key)
}

/// The environment a venv's `bin/activate` was made for: the first absolute path in it that
/// ends in `/envs/<app>/<key>` (key: 16 hex digits), and the key. None for any other venv.
pub fn recorded_env(activate: &str, app: &AppName) -> Option<(PathBuf, String)> {
    let needle = format!("/envs/{}/", app.as_str());
    let mut from = 0;
    while let Some(at) = activate[from..].find(&needle).map(|i| i + from) {
        let rest = &activate[at + needle.len()..];
        let key: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        let ends = rest[key.len()..].chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '/'));
        let start = activate[..at].rfind(|c: char| c == '"' || c == '\'' || c == '=' || c.is_whitespace());
        let begin = start.map_or(0, |i| i + 1);
        if key.len() == 16 && ends && activate[begin..].starts_with('/') {
            return Some((PathBuf::from(&activate[begin..at + needle.len() + 16]), key));
        }
        from = at + needle.len();
    }
    None
}

/// `apps:rename`, before anything moves: every sealed environment of `old` copied to `new`'s
/// path with its own path rewritten (hard links for the rest, as a reused venv once was; the
/// old ones are removed by [`finish_rename`]), and sealed. A leftover `envs/<new>` (of no app)
/// is cleared first. On error nothing of `new` is left.
pub fn stage_rename(home: &Home, old: &AppName, new: &AppName) -> io::Result<()> {
    remove_all(home, new)?;
    let Ok(entries) = std::fs::read_dir(home.envs(old)) else { return Ok(()) };
    let result = (|| {
        for entry in entries {
            let from = entry?.path();
            if !is_sealed(&from) {
                continue;
            }
            let key = from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let to = home.env(new, &key);
            prepare(&to)?;
            crate::build::venv::clone(&from, &to, &from, &to)?;
            seal(&to)?;
        }
        Ok(())
    })();
    if result.is_err() {
        remove_all(home, new)?;
    }
    result
}

/// `apps:rename`, once everything moved: each release dir of `new` whose venv links to an
/// environment of `old` links to `new`'s copy instead (a new link renamed over the old one),
/// then `old`'s environments are removed.
pub fn finish_rename(home: &Home, old: &AppName, new: &AppName) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(home.releases(new)) {
        for entry in entries {
            let dir = entry?.path();
            let venv = dir.join(crate::build::python::VENV);
            let Ok(target) = std::fs::read_link(&venv) else { continue };
            let Some(key) =
                target.strip_prefix(link_target(old, "")).ok().map(|k| k.to_string_lossy().into_owned())
            else {
                continue;
            };
            let tmp = venv.with_file_name("venv.relinked");
            crate::home::remove_if_present(&tmp)?;
            std::os::unix::fs::symlink(link_target(new, &key), &tmp)?;
            std::fs::rename(&tmp, &venv)?;
        }
    }
    remove_all(home, old)
}

/// What the collector knows of one release (pure input of [`unused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseUse {
    pub version: i64,
    pub status: String,
    pub deps_key: Option<String>,
}

/// The environments to remove: every one in `present` that no release in `retained` (the
/// releases whose dirs or slugs are kept), the release before `current` (the last succeeded
/// one below it: its dynos may still be draining) nor a dyno's release (`dyno_releases`) uses.
/// `releases` is newest first.
pub fn unused(
    present: &[String],
    releases: &[ReleaseUse],
    retained: &[i64],
    current: Option<i64>,
    dyno_releases: &[i64],
) -> Vec<String> {
    let mut needed: BTreeSet<i64> = retained.iter().chain(dyno_releases).copied().collect();
    if let Some(current) = current {
        needed.insert(current);
        let previous = releases.iter().find(|r| r.version < current && r.status == "succeeded");
        needed.extend(previous.map(|r| r.version));
    }
    let keys: BTreeSet<&str> = releases
        .iter()
        .filter(|r| needed.contains(&r.version))
        .filter_map(|r| r.deps_key.as_deref())
        .collect();
    present.iter().filter(|k| !keys.contains(k.as_str())).cloned().collect()
}

/// Removes the app's environments that [`unused`] names (run under the app's deploy lock, after
/// `release::prune`). Returns the keys removed; a store error removes nothing.
pub fn collect(home: &Home, store: &Store, app: &AppName, keep: usize) -> io::Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(home.envs(app)) else { return Ok(Vec::new()) };
    // Keys are hex; a dot name is the environments' slug parts (`build::slug::PARTS_DIR`).
    let present: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    let conn = store.conn();
    let gather = || -> store::Result<(Vec<ReleaseUse>, Option<i64>, Vec<i64>)> {
        let rows = store::releases::list(conn, app)?;
        let mut releases = Vec::with_capacity(rows.len());
        for r in rows {
            let deps_key = match &r.build_id {
                Some(id) => store::releases::build(conn, id)?.and_then(|b| b.deps_key),
                None => None,
            };
            releases.push(ReleaseUse { version: r.version, status: r.status, deps_key });
        }
        let current = store::apps::get(conn, app)?.and_then(|a| a.current_release);
        let dynos = store::dynos::for_app(conn, app)?.into_iter().map(|d| d.release).collect();
        Ok((releases, current, dynos))
    };
    let (releases, current, dynos) = gather().map_err(|e| io::Error::other(e.to_string()))?;
    let retained = crate::release::retained(&releases.iter().map(|r| r.version).collect::<Vec<_>>(), keep);
    let mut removed = Vec::new();
    for key in unused(&present, &releases, &retained, current, &dynos) {
        remove(&home.envs(app).join(&key))?;
        removed.push(key);
    }
    remove_orphan_parts(&home.envs(app))?;
    Ok(removed)
}

/// Removes the slug parts (`build::slug::EnvPart`) in `envs` whose environment is not there
/// sealed any more, and the temp files of packers that are gone (`.KEY.gz.PID.tmp`; a live
/// one may be the slug thread of the release being collected after).
pub fn remove_orphan_parts(envs: &Path) -> io::Result<()> {
    let parts = envs.join(crate::build::slug::PARTS_DIR);
    let Ok(entries) = std::fs::read_dir(&parts) else { return Ok(()) };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep_part(&name, &|key| is_sealed(&envs.join(key)), &|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        }) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// Whether the entry `name` of the slug parts' dir stays: a part of a sealed environment, or
/// the temp file of a packer still running.
fn keep_part(name: &str, sealed: &dyn Fn(&str) -> bool, alive: &dyn Fn(i32) -> bool) -> bool {
    if name.starts_with('.') {
        return crate::build::slug::part_tmp_pid(name).is_some_and(alive);
    }
    name.strip_suffix(".gz").is_some_and(|key| !key.is_empty() && !key.contains('.') && sealed(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(version: i64, status: &str, key: Option<&str>) -> ReleaseUse {
        ReleaseUse { version, status: status.into(), deps_key: key.map(String::from) }
    }

    #[test]
    fn which_slug_parts_stay() {
        let sealed = |key: &str| key == "k1";
        let alive = |pid: i32| pid == 42;
        let cases: &[(&str, bool)] = &[
            ("k1.gz", true),
            ("k2.gz", false),
            ("k1", false),
            (".gz", false),
            (".k1.gz.42.tmp", true),
            (".k1.gz.43.tmp", false),
            (".k1.gz.x.tmp", false),
            (".k1.gz.0.tmp", false),
            ("k1.gz.tmp", false),
        ];
        for (name, want) in cases {
            assert_eq!(keep_part(name, &sealed, &alive), *want, "{name}");
        }
    }

    #[test]
    fn which_environments_are_unused() {
        let present = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        // Newest first, as `store::releases::list` gives them.
        let history = vec![
            r(6, "succeeded", Some("c")),
            r(5, "failed", Some("d")),
            r(4, "succeeded", Some("b")), // a config release: v3's build
            r(3, "succeeded", Some("b")),
            r(2, "succeeded", Some("a")),
            r(1, "succeeded", Some("a")),
        ];
        // (what, present, retained, current, dyno releases, removed)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [i64], Option<i64>, &'a [i64], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            ("all retained: nothing goes", &["a", "b", "c", "d"], &[6, 5, 4, 3, 2, 1], Some(6), &[], &[]),
            ("pruned releases' envs go", &["a", "b", "c", "d"], &[6, 5], Some(6), &[], &["a"]),
            // v5 failed: the previous release is the last succeeded one below the current, v4.
            ("previous release kept", &["a", "b", "c", "d"], &[6], Some(6), &[], &["a", "d"]),
            ("a rollback's current keeps its env", &["a", "b", "c"], &[6], Some(2), &[], &["b"]),
            ("a dyno of an old release keeps its env", &["a", "b", "c"], &[6], Some(6), &[2], &[]),
            ("only a dyno keeps it", &["a", "c", "d"], &[6], Some(6), &[5], &["a"]),
            ("an env nobody names goes", &["c", "zz"], &[6, 5, 4, 3, 2, 1], Some(6), &[], &["zz"]),
            ("no current release", &["a", "c"], &[6], None, &[], &["a"]),
        ];
        for (what, envs, retained, current, dynos, want) in cases {
            let got = unused(&present(envs), &history, retained, *current, dynos);
            assert_eq!(got, present(want), "{what}");
        }
    }

    #[test]
    fn the_environment_a_venv_was_made_for() {
        let app: AppName = "hello".parse().unwrap();
        let want = |p: &str, k: &str| Some((PathBuf::from(p), k.to_string()));
        let cases: &[(&str, Option<(PathBuf, String)>)] = &[
            (
                "    export VIRTUAL_ENV=\"/srv/h/envs/hello/0123456789abcdef\"\n",
                want("/srv/h/envs/hello/0123456789abcdef", "0123456789abcdef"),
            ),
            (
                "VIRTUAL_ENV='/a/envs/hello/0123456789abcdef'\n",
                want("/a/envs/hello/0123456789abcdef", "0123456789abcdef"),
            ),
            ("VIRTUAL_ENV=/h/releases/hello/b1/.slipway/venv\n", None),
            ("VIRTUAL_ENV=/h/envs/other/0123456789abcdef\n", None),
            ("VIRTUAL_ENV=/h/envs/hello/0123\n", None),
            ("VIRTUAL_ENV=/h/envs/hello/0123456789abcdef0\n", None),
            ("VIRTUAL_ENV=envs/hello/0123456789abcdef\n", None),
        ];
        for (text, expected) in cases {
            assert_eq!(&recorded_env(text, &app), expected, "{text}");
        }
    }

    #[test]
    fn a_slug_made_in_another_home_gives_back_its_environment_here() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path().join("new"));
        let app: AppName = "hello".parse().unwrap();
        let key = "0123456789abcdef";
        let recorded = t.path().join("old/envs/hello").join(key);
        // What unpacking the slug left: the environment's files, naming the old home's path.
        let release = home.release_dir(&app, "b1");
        let venv = release.join(crate::build::python::VENV);
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/activate"), format!("VIRTUAL_ENV=\"{}\"\n", recorded.display()))
            .unwrap();
        std::fs::write(venv.join("bin/pip"), format!("#!{}/bin/python\n", recorded.display())).unwrap();
        std::fs::write(venv.join(SEALED), "").unwrap();
        adopt(&home, &app, &release).unwrap();
        let env = home.env(&app, key);
        assert!(is_sealed(&env));
        let pip = std::fs::read_to_string(env.join("bin/pip")).unwrap();
        assert_eq!(pip, format!("#!{}/bin/python\n", env.display()));
        assert_eq!(std::fs::read_link(&venv).unwrap(), link_target(&app, key));
        // Once more (the environment is there now): the release just links to it.
        std::fs::remove_file(&venv).unwrap();
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/activate"), format!("VIRTUAL_ENV={}\n", recorded.display())).unwrap();
        adopt(&home, &app, &release).unwrap();
        assert_eq!(std::fs::read_link(&venv).unwrap(), link_target(&app, key));
        // A venv of the release's own (an older slug) stays where it is.
        let old_style = home.release_dir(&app, "b0");
        let own = old_style.join(crate::build::python::VENV);
        std::fs::create_dir_all(own.join("bin")).unwrap();
        std::fs::write(own.join("bin/activate"), format!("VIRTUAL_ENV={}\n", own.display())).unwrap();
        adopt(&home, &app, &old_style).unwrap();
        assert!(std::fs::symlink_metadata(&own).unwrap().is_dir());
        remove_all(&home, &app).unwrap();
    }

    #[test]
    fn sealed_modes() {
        assert_eq!(sealed_mode(true, 0o755), 0o555);
        assert_eq!(sealed_mode(false, 0o755), 0o555);
        assert_eq!(sealed_mode(false, 0o700), 0o555);
        assert_eq!(sealed_mode(false, 0o644), 0o444);
        assert_eq!(sealed_mode(false, 0o600), 0o444);
    }

    #[test]
    fn seal_then_remove() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let env = t.path().join("envs/hello/k1");
        std::fs::create_dir_all(env.join("bin")).unwrap();
        std::fs::create_dir_all(env.join("lib/site")).unwrap();
        std::fs::write(env.join("lib/site/m.py"), "x = 1\n").unwrap();
        std::fs::write(env.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(env.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", env.join("bin/python")).unwrap();
        assert!(!is_sealed(&env));
        seal(&env).unwrap();
        assert!(is_sealed(&env));
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&env), 0o555);
        assert_eq!(mode(&env.join("lib/site")), 0o555);
        assert_eq!(mode(&env.join("lib/site/m.py")), 0o444);
        assert_eq!(mode(&env.join("bin/run")), 0o555);
        assert_eq!(mode(&env.join(SEALED)), 0o444);
        remove(&env).unwrap();
        assert!(!env.exists());
        // An unsealed leftover is cleared by `prepare`, which also makes the parent.
        std::fs::create_dir_all(env.join("half")).unwrap();
        prepare(&env).unwrap();
        assert!(!env.exists() && env.parent().unwrap().is_dir());
    }

    #[test]
    fn links_read_the_same_from_a_release_dir() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::at(t.path());
        let app: AppName = "hello".parse().unwrap();
        let env = home.env(&app, "k1");
        std::fs::create_dir_all(&env).unwrap();
        std::fs::write(env.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        let release = home.release_dir(&app, "b1");
        std::fs::create_dir_all(&release).unwrap();
        link(&release, &app, "k1").unwrap();
        let cfg = release.join(crate::build::python::VENV).join("pyvenv.cfg");
        assert_eq!(std::fs::read_to_string(cfg).unwrap(), "home = /usr/bin\n");
        remove_all(&home, &app).unwrap();
        assert!(!home.envs(&app).exists());
        // An app's `.slipway` link is never followed.
        let planted = home.release_dir(&app, "b2");
        std::fs::create_dir_all(&planted).unwrap();
        std::os::unix::fs::symlink(t.path(), planted.join(".slipway")).unwrap();
        assert!(link(&planted, &app, "k1").is_err());
        assert!(!t.path().join("venv").exists());
    }
}
