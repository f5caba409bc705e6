//! Reusing a virtualenv from an earlier release. A venv hard-codes its own absolute path (the
//! shebangs of `bin/` scripts, `activate`, `.pth` files), so it cannot simply be moved; but
//! release dirs differ only in the build id, so a copy whose path-bearing text files have the
//! old release dir replaced by the new one is a venv built in place. Everything else is
//! hard-linked: release dirs are immutable, so sharing file data between them is safe, and the
//! "copy" of a few thousand files takes milliseconds and no disk.
//! Hard links are only made between one app's releases; the seed (below), shared by every app,
//! is always copied.

use std::io;
use std::path::Path;

/// The pip every new virtualenv gets before dependencies are installed: the version Heroku's
/// Python buildpack pins (its `requirements/pip.txt`). Part of the dependency key, so changing it
/// rebuilds environments once.
pub const PIP_VERSION: &str = "26.2.1";

/// Copies the venv `from` (inside release dir `old_root`) to `to` (inside `new_root`), sharing
/// the data of files without paths by hard links: only between one app's releases.
pub fn clone(from: &Path, to: &Path, old_root: &Path, new_root: &Path) -> io::Result<usize> {
    clone_with(from, to, old_root, new_root, Share::HardLinks)
}

/// Whether a clone may share file data with its source.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    /// Between one app's releases: its own builds are the only writers.
    HardLinks,
    /// To or from the seed, which every app's venvs start from: a build writes its own venv,
    /// and through a hard link it would write every other app's too.
    Nothing,
}

fn clone_with(from: &Path, to: &Path, old_root: &Path, new_root: &Path, share: Share) -> io::Result<usize> {
    let old = old_root.to_string_lossy().to_string();
    let new = new_root.to_string_lossy().to_string();
    let mut rewritten = 0;
    copy_dir(from, to, &old, &new, &mut rewritten, share)?;
    Ok(rewritten)
}

/// A hard link where `share` allows it, else (or where linking fails) a copy.
fn link_or_copy(src: &Path, dst: &Path, share: Share) -> io::Result<()> {
    if share == Share::HardLinks && std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).map(|_| ())
}

fn copy_dir(
    from: &Path,
    to: &Path,
    old: &str,
    new: &str,
    rewritten: &mut usize,
    share: Share,
) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == crate::envs::SEALED {
            continue; // a copy is sealed, if ever, by its own maker, once it is whole
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&src, &dst, old, new, rewritten, share)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src)?.to_string_lossy().replace(old, new);
            std::os::unix::fs::symlink(target, &dst)?;
        } else if may_hold_paths(&src) {
            let bytes = std::fs::read(&src)?;
            let text = String::from_utf8_lossy(&bytes);
            if text.contains(old) {
                std::fs::write(&dst, text.replace(old, new))?;
                std::fs::set_permissions(&dst, std::fs::metadata(&src)?.permissions())?;
                *rewritten += 1;
            } else {
                link_or_copy(&src, &dst, share)?;
            }
        } else {
            link_or_copy(&src, &dst, share)?;
        }
    }
    // Last: a read-only source dir (a sealed environment) gives a read-only copy.
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())
}

/// Where the seed of `python` (its path and version) lives under `tools` (`cache/.tools`): a
/// virtualenv made once with `python -m venv` and pip upgraded to [`PIP_VERSION`], nothing else
/// installed. Creating a venv that way runs ensurepip (seconds); copying the seed is the same
/// venv in well under a second.
pub fn seed_dir(tools: &Path, python: &Path, version: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let id = key(&[python.as_os_str().as_bytes(), version.as_bytes(), PIP_VERSION.as_bytes()]);
    tools.join("seeds").join(id)
}

/// Makes `venv` a copy of the seed when there is one (real copies, never hard links: the seed is
/// shared by every app; the seed's path rewritten to `venv`'s); false when there is none yet.
pub fn from_seed(seed: &Path, venv: &Path) -> io::Result<bool> {
    if !seed.join("pyvenv.cfg").is_file() {
        return Ok(false);
    }
    if let Err(e) = clone_with(seed, venv, seed, venv, Share::Nothing) {
        crate::home::remove_or_warn(venv);
        return Err(e);
    }
    Ok(true)
}

/// Keeps a clone of the freshly made `venv` (pip at the pin, nothing else yet) as the seed, its
/// paths rewritten to the seed's own: built beside it and renamed into place, so a concurrent
/// build of another app finds either no seed or a whole one (the first rename wins).
pub fn keep_as_seed(venv: &Path, seed: &Path) -> io::Result<()> {
    if seed.exists() {
        return Ok(());
    }
    let parent = seed.parent().ok_or_else(|| io::Error::other("the seed has no parent dir"))?;
    std::fs::create_dir_all(parent)?;
    let name = seed.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let made = clone_with(venv, &tmp, venv, seed, Share::Nothing).and_then(|_| std::fs::rename(&tmp, seed));
    if made.is_err() && tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    match made {
        Err(_) if seed.join("pyvenv.cfg").is_file() => Ok(()), // another build's seed won
        other => other,
    }
}

/// Privileged mode, where a venv the app's uid made never becomes the seed (every app's venvs
/// would start from it): makes the seed of `python` when there is none, as a platform step
/// (this process's user, `build::Jail::for_platform`) with the build's environment without the
/// app's config vars, in a scratch venv kept as the seed ([`keep_as_seed`]) and removed.
/// A failure is a warning: the build then makes its venv the slow way.
pub fn make_seed(
    req: &super::BuildRequest<'_>,
    python: &Path,
    seed: &Path,
    deadline: std::time::Instant,
    jail: &super::Jail,
) {
    use std::process::Command;
    if seed.join("pyvenv.cfg").is_file() {
        return;
    }
    let Some(seeds) = seed.parent() else { return };
    let scratch = seeds.join(format!(".make-{}", std::process::id()));
    let made = (|| -> Result<(), super::BuildError> {
        let io = |action: &str| {
            let action = format!("{action} {}", scratch.display());
            move |source| super::BuildError::Io { action, source }
        };
        std::fs::create_dir_all(seeds).map_err(io("creating the parent of"))?;
        crate::home::remove_if_present(&scratch).map_err(io("removing"))?;
        let env = super::platform_env(req);
        let jail = jail.for_platform(seeds);
        super::output::step(&format!("Making the seed virtualenv of this interpreter (pip {PIP_VERSION})"));
        let mut create = Command::new(python);
        create.args(["-m", "venv"]).arg(&scratch).env_clear().envs(&env).current_dir(seeds);
        super::run_step("creating the seed virtualenv", create, deadline, &jail)?;
        let mut pip = Command::new(scratch.join("bin/python"));
        pip.args(super::python::PIP_INSTALL)
            .args(["--upgrade", &format!("pip=={PIP_VERSION}")])
            .env_clear()
            .envs(&env)
            .current_dir(seeds);
        super::run_step("installing pip into the seed", pip, deadline, &jail)?;
        keep_as_seed(&scratch, seed).map_err(io("keeping as the seed"))
    })();
    if let Err(e) = made {
        super::output::warn(&format!("no seed virtualenv: {e}"));
    }
    crate::home::remove_or_warn(&scratch);
}

/// Small text files where a venv records absolute paths.
fn may_hold_paths(path: &Path) -> bool {
    let in_bin = path.parent().and_then(Path::file_name).is_some_and(|d| d == "bin");
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let small = std::fs::metadata(path).map(|m| m.len() < 256 * 1024).unwrap_or(false);
    small && (in_bin || name == "pyvenv.cfg" || name.ends_with(".pth") || name == "direct_url.json")
}

/// A stable 64-bit FNV-1a hash, hex: the dependency-environment key must mean the same thing
/// across slipway versions and machines, which `std`'s hasher does not promise.
pub fn key(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_rewrites_paths_and_links_the_rest() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let (old, new) =
            (t.path().join("releases/a/20260101-aaaaaaa"), t.path().join("releases/a/20260102-bbbbbbb"));
        let venv = old.join(".slipway/venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::create_dir_all(venv.join("lib/site")).unwrap();
        std::fs::write(
            venv.join("bin/gunicorn"),
            format!("#!{}/.slipway/venv/bin/python\nimport x\n", old.display()),
        )
        .unwrap();
        std::fs::write(venv.join("lib/site/mod.py"), "print(1)\n").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", venv.join("bin/python")).unwrap();
        let rewritten = clone(&venv, &new.join(".slipway/venv"), &old, &new).unwrap();
        assert_eq!(rewritten, 1);
        let script = std::fs::read_to_string(new.join(".slipway/venv/bin/gunicorn")).unwrap();
        assert!(script.starts_with(&format!("#!{}/", new.display())), "{script}");
        let (a, b) = (venv.join("lib/site/mod.py"), new.join(".slipway/venv/lib/site/mod.py"));
        assert_eq!(std::fs::metadata(a).unwrap().ino(), std::fs::metadata(b).unwrap().ino());
        assert_eq!(
            std::fs::read_link(new.join(".slipway/venv/bin/python")).unwrap(),
            Path::new("/usr/bin/python3")
        );
    }

    #[test]
    fn a_seed_is_kept_once_and_cloned_with_its_paths_rewritten() {
        let t = tempfile::tempdir().unwrap();
        let first = t.path().join("releases/a/1/.slipway/venv");
        std::fs::create_dir_all(first.join("bin")).unwrap();
        std::fs::write(first.join("bin/pip"), format!("#!{}/bin/python\n", first.display())).unwrap();
        std::fs::write(first.join("pyvenv.cfg"), format!("command = python -m venv {}\n", first.display()))
            .unwrap();
        let seed = seed_dir(&t.path().join("cache/.tools"), Path::new("/usr/bin/python3.11"), "3.11.2");
        assert_ne!(
            seed,
            seed_dir(&t.path().join("cache/.tools"), Path::new("/usr/bin/python3.11"), "3.11.4")
        );
        let second = t.path().join("releases/b/2/.slipway/venv");
        assert!(!from_seed(&seed, &second).unwrap(), "no seed yet");
        keep_as_seed(&first, &seed).unwrap();
        let pip = std::fs::read_to_string(seed.join("bin/pip")).unwrap();
        assert_eq!(pip, format!("#!{}/bin/python\n", seed.display()));
        keep_as_seed(&first, &seed).unwrap(); // already there: kept as it is
        assert!(from_seed(&seed, &second).unwrap());
        let pip = std::fs::read_to_string(second.join("bin/pip")).unwrap();
        assert_eq!(pip, format!("#!{}/bin/python\n", second.display()));
        let cfg = std::fs::read_to_string(second.join("pyvenv.cfg")).unwrap();
        assert!(cfg.contains(&second.display().to_string()), "{cfg}");
        // Nothing is shared with the seed, nor the seed with the venv it was kept from.
        std::fs::write(first.join("bin/activate"), "no paths here\n").unwrap();
        std::fs::write(seed.join("bin/activate"), "no paths here\n").unwrap();
        assert!(from_seed(&seed, &t.path().join("releases/c/3/.slipway/venv")).unwrap());
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let third = t.path().join("releases/c/3/.slipway/venv");
        assert_ne!(ino(&seed.join("bin/activate")), ino(&third.join("bin/activate")));
        assert_eq!(std::fs::metadata(third.join("bin/activate")).unwrap().nlink(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(seed.parent().unwrap()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "only the seed itself: {leftovers:?}");
    }

    #[test]
    fn keys_are_stable_and_sensitive() {
        assert_eq!(key(&[b"flask==3.0\n", b"3.11.2", b"pip"]), key(&[b"flask==3.0\n", b"3.11.2", b"pip"]));
        assert_ne!(key(&[b"flask==3.0\n", b"3.11.2", b"pip"]), key(&[b"flask==3.0\n", b"3.11.2", b"uv"]));
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
    }
}
