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
    pub fn cache(&self, app: &AppName) -> PathBuf {
        self.root.join("cache").join(app.as_str())
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
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

fn user_home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
}
