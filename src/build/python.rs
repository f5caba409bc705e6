//! The Python buildpack: a virtualenv inside the release dir, dependencies installed from
//! `requirements.txt` through a per-app pip cache (`cache/<app>/pip`), so a redeploy with
//! unchanged requirements downloads nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{build_env, output, run_step, BuildError, BuildRequest};

/// Where the virtualenv lives inside a release dir; dynos get its `bin` first on PATH.
pub const VENV: &str = ".slipway/venv";

pub fn build(req: &BuildRequest<'_>, dir: &Path) -> Result<(), BuildError> {
    output::step("Python app detected");
    let (python, version) = interpreter(&req.settings.python)?;
    output::step(&format!("Using Python {version} ({})", python.display()));

    let env = build_env(req.home, req.app);
    let cache = req.home.cache(req.app);
    std::fs::create_dir_all(cache.join("home"))
        .map_err(|source| BuildError::Io { action: format!("creating {}", cache.display()), source })?;

    let venv = dir.join(VENV);
    output::step("Creating virtualenv");
    run_step(
        "creating the virtualenv",
        Command::new(&python).arg("-m").arg("venv").arg(&venv).env_clear().envs(&env).current_dir(dir),
    )?;

    if dir.join("requirements.txt").is_file() {
        output::step("Installing requirements with pip");
        run_step(
            "pip install",
            Command::new(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--progress-bar",
                    "off",
                    "-r",
                    "requirements.txt",
                ])
                .env_clear()
                .envs(&env)
                .env("PIP_CACHE_DIR", cache.join("pip"))
                .current_dir(dir),
        )?;
    }
    Ok(())
}

/// Resolves the configured interpreter (e.g. `python3`, possibly a pyenv shim) to the real
/// executable and its version, with the caller's environment so shims can do their work.
fn interpreter(configured: &str) -> Result<(PathBuf, String), BuildError> {
    let out = Command::new(configured)
        .args(["-c", "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .map_err(|e| BuildError::Detect(format!("cannot run the Python interpreter '{configured}': {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(exe), Some(version)) if !exe.is_empty() => Ok((PathBuf::from(exe), version.to_string())),
        _ => Err(BuildError::Detect(format!("the Python interpreter '{configured}' did not run"))),
    }
}
