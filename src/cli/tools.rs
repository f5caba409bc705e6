//! `slipway tools:install`: makes the platform's uv (and the pinned pip's wheel beside it) in
//! `cache/.tools` ahead of any push, as a build would on first use (see `build::tools`), so that
//! Python builds install `requirements.txt` with uv from the server's first push on. `install.sh`
//! runs it; it needs the package index (or a proxy: the `build_env` setting) once. Idempotent:
//! a whole tool is left as it is.

use anyhow::Context;

use crate::build::tools::{self, Tool};
use crate::build::{interpreter, server_env};
use crate::home::Home;

pub fn install(home: &Home) -> anyhow::Result<i32> {
    let settings = crate::settings::Settings::load(home)?;
    let root = home.tools();
    let tool = Tool::Uv;
    let requirement = tool.requirement().replace("==", " ");
    if let Some(exe) = tool.installed(&root) {
        println!("{requirement} is installed ({}); nothing to do", exe.display());
        return Ok(0);
    }
    // The tool's venv needs a Python; which one does not matter to uv.
    let python = interpreter::probe(&settings.python)
        .or_else(|| interpreter::probe("python3"))
        .with_context(|| {
            format!(
                "installing {requirement} needs a Python to run pip with, and neither the 'python' setting ({}) nor python3 runs",
                settings.python
            )
        })?;
    let env = server_env(&settings, &root);
    let run = |what: &str, mut command: std::process::Command| -> anyhow::Result<()> {
        let status = command
            .stdin(std::process::Stdio::null())
            .status()
            .with_context(|| format!("starting {what}"))?;
        anyhow::ensure!(status.success(), "{what} failed ({status}; its output is above)");
        Ok(())
    };
    let made = tools::ensure(tool, &python.path, &root, &env, run, |line| println!("-----> {line}"));
    let exe = match made {
        Ok(exe) => exe,
        Err(tools::EnsureError::Step(e)) => anyhow::bail!(
            "{requirement} is not installed: {e:#}; Python builds install with pip until 'slipway tools:install' succeeds (it needs the package index, or a proxy in the build_env setting)"
        ),
        Err(tools::EnsureError::Io { action, source }) => {
            anyhow::bail!("{requirement} is not installed: {action}: {source}")
        }
    };
    // Every app's builds run it: readable by every uid, writable by the platform only.
    crate::users::open_tree(&tool.dir(&root), true)
        .with_context(|| format!("opening {} to the apps' builds", tool.dir(&root).display()))?;
    println!("-----> {requirement} installed at {}; Python builds now install with it", exe.display());
    Ok(0)
}
