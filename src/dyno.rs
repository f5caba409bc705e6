//! What a dyno runs in: its release dir and its clean environment (DESIGN.md, "Dyno
//! lifecycle"): `PATH` with the virtualenv first, `HOME`, `LANG`, `PORT` for web dynos,
//! `DYNO`, `PYTHONUNBUFFERED=1`, Heroku's runtime hints `DYNO_RAM`, `WEB_CONCURRENCY` and
//! `FORWARDED_ALLOW_IPS` (each only when the app's config does not set it), and the release's
//! config vars. Shared by the daemon's long-running dynos and `slipway run`'s one-off ones, so
//! both see the same world.

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

/// The memory a dyno is sized for, in MB, unless told otherwise ([`DynoEnv::with_ram_mb`]: the
/// daemon's dynos get their process type's quota): Heroku's standard dyno (512 MB), which
/// `DYNO_RAM` and `WEB_CONCURRENCY` are derived from.
pub const DYNO_RAM_MB: u64 = 512;

/// The router's address as the dyno sees it (it connects to dynos over loopback): gunicorn and
/// uvicorn trust `X-Forwarded-*` headers only from `FORWARDED_ALLOW_IPS`.
pub const ROUTER_PEER: &str = "127.0.0.1";

/// Heroku's `WEB_CONCURRENCY` for a dyno of `ram_mb`: one web worker per 256 MB (512 MB → 2,
/// 1 GB → 4), at least 1 and at most 8.
pub fn web_concurrency(ram_mb: u64) -> u64 {
    (ram_mb / 256).clamp(1, 8)
}

pub struct DynoEnv {
    pub dir: PathBuf,
    config: BTreeMap<String, String>,
    ram_mb: u64,
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
        Ok(DynoEnv { dir, config: release_row.config, ram_mb: DYNO_RAM_MB })
    }

    /// Sizes `DYNO_RAM` and `WEB_CONCURRENCY` for a dyno with this memory quota.
    pub fn with_ram_mb(mut self, ram_mb: u64) -> Self {
        self.ram_mb = ram_mb;
        self
    }

    /// The complete environment of dyno `name` (`web.1`, `run.4711`).
    pub fn vars(&self, name: &str, port: Option<u16>) -> BTreeMap<String, String> {
        let mut env = self.config.clone();
        // Hints an app may tune: a config var of the same name wins, as on Heroku.
        for (key, value) in [
            ("DYNO_RAM", self.ram_mb.to_string()),
            ("WEB_CONCURRENCY", web_concurrency(self.ram_mb).to_string()),
            ("FORWARDED_ALLOW_IPS", ROUTER_PEER.to_string()),
        ] {
            env.entry(key.into()).or_insert(value);
        }
        let venv = self.dir.join(VENV);
        let system_path = "/usr/local/bin:/usr/bin:/bin";
        if venv.is_dir() {
            env.insert("PATH".into(), format!("{}:{system_path}", venv.join("bin").display()));
            env.insert("VIRTUAL_ENV".into(), venv.display().to_string());
        } else {
            env.insert("PATH".into(), system_path.into());
        }
        // Corpora the build downloaded for `nltk.txt`; set as Heroku sets it (over a config var).
        let nltk_data = self.dir.join(crate::build::nltk::DATA);
        if nltk_data.is_dir() {
            env.insert("NLTK_DATA".into(), nltk_data.display().to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(config: &[(&str, &str)]) -> DynoEnv {
        let config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DynoEnv { dir: PathBuf::from("/nonexistent/release"), config, ram_mb: DYNO_RAM_MB }
    }

    #[test]
    fn nltk_data_points_at_the_release_corpora_when_the_build_downloaded_some() {
        let d = tempfile::tempdir().unwrap();
        let config: BTreeMap<String, String> = [("NLTK_DATA".to_string(), "/elsewhere".to_string())].into();
        let without = DynoEnv { dir: d.path().to_path_buf(), config: config.clone(), ram_mb: DYNO_RAM_MB };
        assert_eq!(without.vars("web.1", None).get("NLTK_DATA").map(String::as_str), Some("/elsewhere"));
        std::fs::create_dir_all(d.path().join(crate::build::nltk::DATA)).unwrap();
        let with = DynoEnv { dir: d.path().to_path_buf(), config, ram_mb: DYNO_RAM_MB };
        let want = d.path().join(".slipway/nltk_data").display().to_string();
        assert_eq!(with.vars("web.1", None).get("NLTK_DATA"), Some(&want));
    }

    #[test]
    fn runtime_hints_are_set_unless_the_config_sets_them() {
        let vars = env(&[]).vars("web.1", Some(5000));
        assert_eq!(vars["WEB_CONCURRENCY"], "2");
        assert_eq!(vars["DYNO_RAM"], "512");
        assert_eq!(vars["FORWARDED_ALLOW_IPS"], "127.0.0.1");
        assert_eq!(vars["PORT"], "5000");
        assert_eq!(vars["DYNO"], "web.1");

        let vars = env(&[("WEB_CONCURRENCY", "5"), ("FORWARDED_ALLOW_IPS", "*"), ("DYNO_RAM", "1024")])
            .vars("worker.1", None);
        assert_eq!(vars["WEB_CONCURRENCY"], "5");
        assert_eq!(vars["FORWARDED_ALLOW_IPS"], "*");
        assert_eq!(vars["DYNO_RAM"], "1024");
        assert!(!vars.contains_key("PORT"));
    }

    #[test]
    fn web_concurrency_follows_memory() {
        assert_eq!(web_concurrency(512), 2);
        assert_eq!(web_concurrency(1024), 4);
        assert_eq!(web_concurrency(128), 1);
        assert_eq!(web_concurrency(14_336), 8);
    }
}
