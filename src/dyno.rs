//! What a dyno runs in: its release dir and its clean environment (DESIGN.md, "Dyno
//! lifecycle"): `PATH` with the virtualenv first, `HOME`, `LANG`, `PORT` for web dynos,
//! `DYNO`, `PYTHONUNBUFFERED=1`, and the release's config vars. Shared by the daemon's
//! long-running dynos and `slipway run`'s one-off ones, so both see the same world.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rusqlite::Connection;

use crate::app::AppName;
use crate::build::python::VENV;
use crate::home::Home;
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DynoEnvError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("release v{0} has no build")]
    NoBuild(i64),
    #[error("the release dir {0} is missing")]
    MissingDir(String),
}

pub struct DynoEnv {
    pub dir: PathBuf,
    config: BTreeMap<String, String>,
}

impl DynoEnv {
    pub fn for_release(
        home: &Home,
        conn: &Connection,
        app: &AppName,
        release: i64,
    ) -> Result<DynoEnv, DynoEnvError> {
        let release_row = store::releases::require_release(conn, app, release)?;
        let build_id = release_row.build_id.ok_or(DynoEnvError::NoBuild(release))?;
        let dir = home.release_dir(app, &build_id);
        if !dir.is_dir() {
            return Err(DynoEnvError::MissingDir(dir.display().to_string()));
        }
        Ok(DynoEnv { dir, config: release_row.config })
    }

    /// The complete environment of dyno `name` (`web.1`, `run.4711`).
    pub fn vars(&self, name: &str, port: Option<u16>) -> BTreeMap<String, String> {
        let mut env = self.config.clone();
        let venv = self.dir.join(VENV);
        let system_path = "/usr/local/bin:/usr/bin:/bin";
        if venv.is_dir() {
            env.insert("PATH".into(), format!("{}:{system_path}", venv.join("bin").display()));
            env.insert("VIRTUAL_ENV".into(), venv.display().to_string());
        } else {
            env.insert("PATH".into(), system_path.into());
        }
        env.insert("HOME".into(), self.dir.display().to_string());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.insert("DYNO".into(), name.to_string());
        if let Some(port) = port {
            env.insert("PORT".into(), port.to_string());
        }
        env
    }
}
