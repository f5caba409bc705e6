//! `SLIPWAY_HOME` and the file layout under it (DESIGN.md, "Files"). Every path slipway touches
//! is derived here, so tests that pick a temporary home never write anywhere else.

use std::path::{Path, PathBuf};

use crate::app::AppName;

/// The root of one slipway installation.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Resolution order: `--home`, then `$SLIPWAY_HOME`, then the running user's own home when
    /// it already holds a slipway database (the `slipway` user's home *is* SLIPWAY_HOME), then
    /// `/var/lib/slipway` for root, else `~/.slipway`.
    pub fn resolve(flag: Option<PathBuf>) -> Home {
        let chosen = flag
            .or_else(|| std::env::var_os("SLIPWAY_HOME").filter(|v| !v.is_empty()).map(PathBuf::from))
            .or_else(|| user_home().filter(|h| h.join("slipway.db").exists()))
            .unwrap_or_else(|| {
                if nix::unistd::geteuid().is_root() {
                    PathBuf::from("/var/lib/slipway")
                } else {
                    user_home().unwrap_or_else(|| PathBuf::from(".")).join(".slipway")
                }
            });
        Home::at(chosen)
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        let root = root.into();
        // Absolute paths matter: they are written into hooks, authorized_keys and virtualenvs.
        let root = std::path::absolute(&root).unwrap_or(root);
        Home { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `slipway.toml`: the settings every slipway process reads (see `settings.rs`).
    pub fn settings_file(&self) -> PathBuf {
        self.root.join(crate::settings::FILE_NAME)
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("slipway.db")
    }
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    pub fn repo(&self, app: &AppName) -> PathBuf {
        self.repos().join(format!("{app}.git"))
    }
    pub fn releases(&self, app: &AppName) -> PathBuf {
        self.root.join("releases").join(app.as_str())
    }
    pub fn release_dir(&self, app: &AppName, build_id: &str) -> PathBuf {
        self.releases(app).join(build_id)
    }
    pub fn slugs(&self, app: &AppName) -> PathBuf {
        self.root.join("slugs").join(app.as_str())
    }
    pub fn slug(&self, app: &AppName, build_id: &str) -> PathBuf {
        self.slugs(app).join(format!("{build_id}.tar.gz"))
    }
    /// The app's shared dependency environments (`envs::`), one dir per dependency key.
    pub fn envs(&self, app: &AppName) -> PathBuf {
        self.root.join("envs").join(app.as_str())
    }
    pub fn env(&self, app: &AppName, key: &str) -> PathBuf {
        self.envs(app).join(key)
    }
    pub fn cache(&self, app: &AppName) -> PathBuf {
        self.root.join("cache").join(app.as_str())
    }
    /// `cache/.tools`: the platform's build tools (`build::tools`), interpreters, seeds and
    /// interpreter probes, read-only to apps.
    pub fn tools(&self) -> PathBuf {
        self.root.join("cache/.tools")
    }
    pub fn app_logs(&self, app: &AppName) -> PathBuf {
        self.root.join("logs").join(app.as_str())
    }
    pub fn app_log(&self, app: &AppName) -> PathBuf {
        self.app_logs(app).join("app.log")
    }
    /// The daemon's own tracing output; never mixed into app logs.
    pub fn daemon_log(&self) -> PathBuf {
        self.root.join("logs").join("slipway.log")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("slipway.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("slipway.pid")
    }
    /// Where each dyno's shim announces itself (`run/dynos/<id>`) before the daemon records
    /// its pid, so a daemon killed in between finds it again.
    pub fn dyno_announcements(&self) -> PathBuf {
        self.run_dir().join("dynos")
    }
    pub fn dyno_announcement(&self, dyno: i64) -> PathBuf {
        self.dyno_announcements().join(dyno.to_string())
    }
    /// Dynos' private working dirs (`dynos/<app>/<key>/`, see `sandbox::PrivateDir`).
    pub fn dynos(&self) -> PathBuf {
        self.root.join("dynos")
    }
    pub fn app_dynos(&self, app: &AppName) -> PathBuf {
        self.dynos().join(app.as_str())
    }
    pub fn deploy_lock(&self, app: &AppName) -> PathBuf {
        self.run_dir().join("locks").join(format!("{app}.lock"))
    }
    pub fn ssh_dir(&self) -> PathBuf {
        self.root.join(".ssh")
    }
    pub fn authorized_keys(&self) -> PathBuf {
        self.ssh_dir().join("authorized_keys")
    }

    /// Creates the top-level directories. Cheap and idempotent; every command calls it.
    pub fn ensure_layout(&self) -> std::io::Result<()> {
        for dir in [self.root.clone(), self.repos(), self.run_dir(), self.root.join("logs")] {
            // As root on a home another user owns (a root daemon), the dirs stay that user's.
            crate::fsutil::create_dir_all_owned(&dir)?;
        }
        // Platform state is the owner's alone, also on homes made before the umask was 077.
        for (path, mode) in [(self.run_dir(), 0o700), (self.ssh_dir(), 0o700), (self.db(), 0o600)] {
            restrict(&path, mode)?;
        }
        Ok(())
    }
}

/// How the home's owner runs this very command: `runuser -u NAME -- slipway ARGS...` (the
/// arguments as given, shell-quoted).
pub fn runuser_command(user: &str) -> String {
    let mut words = vec!["runuser".to_string(), "-u".into(), user.to_string(), "--".into()];
    let mut args = std::env::args();
    words.push(args.next().unwrap_or_else(|| "slipway".into()));
    words.extend(args);
    shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
}

impl Home {
    /// Run as root on a home owned by another user (install.sh's `slipway` user owns
    /// /var/lib/slipway), becomes that user before anything is read or written: the
    /// supplementary groups, gid and uid, then `HOME`, `USER` and `LOGNAME`. Otherwise root would
    /// write files the owner cannot read (an authorized_keys sshd ignores) or start a daemon whose
    /// socket the owner cannot open. Where switching is impossible (no user entry for the uid, or
    /// no CAP_SETUID) it refuses with the command to use instead. Does nothing when not root, for
    /// a root-owned home, or for a home that does not exist yet.
    pub fn become_owner(&self) -> anyhow::Result<()> {
        use nix::unistd::{Uid, User};
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let Ok(meta) = std::fs::metadata(&self.root) else {
            return Ok(());
        };
        if meta.uid() == 0 {
            return Ok(());
        }
        let root = self.root.display();
        let Some(user) = User::from_uid(Uid::from_raw(meta.uid())).ok().flatten() else {
            anyhow::bail!(
                "{root} belongs to uid {}, which has no user entry; run slipway as the user owning {root}",
                meta.uid()
            );
        };
        let name = std::ffi::CString::new(user.name.clone())?;
        let switched = nix::unistd::initgroups(&name, user.gid)
            .and_then(|_| nix::unistd::setgid(user.gid))
            .and_then(|_| nix::unistd::setuid(user.uid));
        if let Err(errno) = switched {
            anyhow::bail!(
                "{root} belongs to user '{}' and slipway cannot switch to it ({errno}); run: {}",
                user.name,
                runuser_command(&user.name)
            );
        }
        // Still single-threaded here (nothing has started a thread), so the environment is ours.
        std::env::set_var("HOME", &user.dir);
        std::env::set_var("USER", &user.name);
        std::env::set_var("LOGNAME", &user.name);
        // root's working directory (/root) is usually closed to the owner; git and Python care.
        if nix::unistd::access(".", nix::unistd::AccessFlags::X_OK).is_err() {
            let _ = std::env::set_current_dir(&self.root);
        }
        Ok(())
    }
}

/// Takes group and other permissions away from `path` (when it exists, is ours and has any):
/// never follows a symbolic link, never widens anything.
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    let mine = meta.uid() == nix::unistd::geteuid().as_raw();
    if meta.file_type().is_symlink() || !mine || meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777 & mode))
}

/// Removes a file, or a directory with everything in it; one that is not there is not an error.
/// A symbolic link is removed itself, never followed.
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// [`remove_if_present`] for clean-up after something already failed: what cannot be removed
/// is reported on stderr (one `warning:` line naming it) rather than hiding the first error.
pub fn remove_or_warn(path: &Path) {
    if let Err(e) = remove_if_present(path) {
        eprintln!("warning: could not remove {}: {e}", path.display());
    }
}

fn user_home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
}
