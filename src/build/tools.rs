//! Server-wide build tools in `cache/.tools`: uv (pinned as Heroku pins it) with the wheel of the
//! pinned pip beside it, and poetry. They are the platform's, made once as the platform's user
//! and read-only to apps. The first build that needs one makes it; `slipway tools:install`
//! (which `install.sh` runs) makes uv ahead of any push, so that a server's first
//! `requirements.txt` build already installs with uv, and a new venv gets pip from the kept
//! wheel instead of the package index.
//!
//! A tool is made in place (a venv records its own path, which poetry's scripts need) under an
//! exclusive lock (`cache/.tools/.NAME.lock`), and it is whole only once its marker ([`MARKER`])
//! is written, last. A tool dir without the marker (its maker was killed, or an older slipway
//! made it) is removed and made again. Two builds that need the same tool make it once: the
//! second waits for the lock and then finds it whole.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::venv::PIP_VERSION;

/// Written into a tool's dir once every step succeeded.
pub const MARKER: &str = ".slipway-tool";

/// The uv Heroku's buildpack pins (its `requirements/uv.txt`); uv enforces a project's own
/// `[tool.uv] required-version` itself.
pub const UV_VERSION: &str = "0.12.5";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Uv,
    Poetry,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Uv => "uv",
            Tool::Poetry => "poetry",
        }
    }

    /// What pip installs: uv pinned as on Heroku, poetry as PyPI has it.
    pub fn requirement(self) -> String {
        match self {
            Tool::Uv => format!("uv=={UV_VERSION}"),
            Tool::Poetry => "poetry".into(),
        }
    }

    /// `TOOLS/uv-VERSION`, `TOOLS/poetry`.
    pub fn dir(self, tools: &Path) -> PathBuf {
        tools.join(self.requirement().replace("==", "-"))
    }

    /// The tool's executable when the tool is whole.
    pub fn installed(self, tools: &Path) -> Option<PathBuf> {
        let dir = self.dir(tools);
        let exe = dir.join("bin").join(self.name());
        (exe.is_file() && dir.join(MARKER).is_file()).then_some(exe)
    }
}

/// The file name of the pinned pip's wheel.
pub fn pip_wheel_name() -> String {
    format!("pip-{PIP_VERSION}-py3-none-any.whl")
}

/// The pinned pip's wheel kept with uv (when uv is whole): what a new uv-made venv gets pip from.
pub fn pip_wheel(tools: &Path) -> Option<PathBuf> {
    Tool::Uv.installed(tools)?;
    let wheel = Tool::Uv.dir(tools).join("wheels").join(pip_wheel_name());
    wheel.is_file().then_some(wheel)
}

/// The commands that make `tool` in `dir` with `python`, each with what it does: a venv, the
/// tool installed into it by pip, and for uv pip's own wheel downloaded beside it. Nothing is
/// cached outside `dir` (`--no-cache-dir`).
pub fn steps(tool: Tool, python: &Path, dir: &Path) -> Vec<(String, Command)> {
    let name = tool.name();
    let pip = |command: &str, args: Vec<std::ffi::OsString>| {
        let mut c = Command::new(dir.join("bin/python"));
        c.args(["-m", "pip", command])
            .args(["--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--no-cache-dir"])
            .args(args);
        c
    };
    let mut venv = Command::new(python);
    venv.args(["-m", "venv"]).arg(dir);
    let mut out = vec![
        (format!("creating the {name} environment"), venv),
        (format!("installing {name}"), pip("install", vec![tool.requirement().into()])),
    ];
    if tool == Tool::Uv {
        let args = ["--no-deps", "--only-binary", ":all:", "--dest"].map(Into::into);
        let mut args = args.to_vec();
        args.push(dir.join("wheels").into());
        args.push(format!("pip=={PIP_VERSION}").into());
        out.push((format!("downloading pip {PIP_VERSION}'s wheel"), pip("download", args)));
    }
    out
}

/// Why a tool could not be made.
#[derive(Debug)]
pub enum EnsureError<E> {
    /// A step failed (its runner's error).
    Step(E),
    Io {
        action: String,
        source: io::Error,
    },
}

/// Makes `tool` under `tools` with `python` unless it is whole already, and returns its
/// executable. `env` is every step's whole environment (`HOME` becomes the tool's dir); `run`
/// runs one step (a build's sandboxed `run_step`, or `tools:install`'s plain one) and `say`
/// tells the user what is happening. A failure removes what the steps left.
pub fn ensure<E>(
    tool: Tool,
    python: &Path,
    tools: &Path,
    env: &BTreeMap<String, String>,
    mut run: impl FnMut(&str, Command) -> Result<(), E>,
    say: impl Fn(&str),
) -> Result<PathBuf, EnsureError<E>> {
    let io = |action: String| move |source| EnsureError::Io { action, source };
    if let Some(exe) = tool.installed(tools) {
        return Ok(exe);
    }
    std::fs::create_dir_all(tools).map_err(io(format!("creating {}", tools.display())))?;
    let lock_path = tools.join(format!(".{}.lock", tool.name()));
    // `cache/.tools` is the platform's; still, a link there is never written through.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
        EnsureError::Io { action: format!("locking {}", lock_path.display()), source: e.into() }
    })?;
    // Another build may have made it while this one waited.
    if let Some(exe) = tool.installed(tools) {
        return Ok(exe);
    }
    let dir = tool.dir(tools);
    crate::home::remove_if_present(&dir).map_err(io(format!("removing the unfinished {}", dir.display())))?;
    // Made here, empty: a build's sandbox lets its steps write this dir only, not its parent.
    std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
    say(&format!("Installing {} for this server's builds (once)", tool.requirement().replace("==", " ")));
    let made = (|| {
        for (what, mut command) in steps(tool, python, &dir) {
            command.env_clear().envs(env).env("HOME", &dir).current_dir(tools);
            run(&what, command).map_err(EnsureError::Step)?;
        }
        let marker = dir.join(MARKER);
        crate::fsutil::write_atomic(&marker, tool.requirement().as_bytes(), 0o644)
            .map_err(io(format!("writing {}", marker.display())))
    })();
    if let Err(e) = made {
        if let Err(rm) = crate::home::remove_if_present(&dir) {
            say(&format!("could not remove the half-installed {}: {rm}", dir.display()));
        }
        return Err(e);
    }
    Ok(dir.join("bin").join(tool.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_is_whole_only_with_its_executable_and_its_marker() {
        let tools = tempfile::tempdir().unwrap();
        let dir = Tool::Uv.dir(tools.path());
        assert_eq!(dir, tools.path().join(format!("uv-{UV_VERSION}")));
        assert_eq!(Tool::Poetry.dir(tools.path()), tools.path().join("poetry"));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/uv"), "").unwrap();
        assert_eq!(Tool::Uv.installed(tools.path()), None, "no marker: a maker was killed");
        std::fs::create_dir_all(dir.join("wheels")).unwrap();
        std::fs::write(dir.join("wheels").join(pip_wheel_name()), "").unwrap();
        assert_eq!(pip_wheel(tools.path()), None, "no wheel of a tool that is not whole");
        std::fs::write(dir.join(MARKER), "").unwrap();
        assert_eq!(Tool::Uv.installed(tools.path()), Some(dir.join("bin/uv")));
        assert_eq!(pip_wheel(tools.path()), Some(dir.join("wheels").join(pip_wheel_name())));
    }

    #[test]
    fn the_steps_make_a_venv_install_the_tool_and_keep_pips_wheel_for_uv_only() {
        let show = |steps: Vec<(String, Command)>| -> Vec<String> {
            steps
                .iter()
                .map(|(_, c)| {
                    std::iter::once(c.get_program())
                        .chain(c.get_args())
                        .map(|a| a.to_string_lossy().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        let flags = "--disable-pip-version-check --no-input --progress-bar off --no-cache-dir";
        assert_eq!(
            show(steps(Tool::Uv, Path::new("/usr/bin/python3"), Path::new("/t/uv"))),
            [
                "/usr/bin/python3 -m venv /t/uv".to_string(),
                format!("/t/uv/bin/python -m pip install {flags} uv=={UV_VERSION}"),
                format!(
                    "/t/uv/bin/python -m pip download {flags} --no-deps --only-binary :all: --dest \
                     /t/uv/wheels pip=={PIP_VERSION}"
                ),
            ]
        );
        let poetry = show(steps(Tool::Poetry, Path::new("/usr/bin/python3"), Path::new("/t/poetry")));
        assert_eq!(poetry.len(), 2);
        assert_eq!(poetry[1], format!("/t/poetry/bin/python -m pip install {flags} poetry"));
    }

    #[test]
    fn a_failed_step_leaves_nothing_and_the_next_attempt_starts_over() {
        let tools = tempfile::tempdir().unwrap();
        let env = BTreeMap::new();
        let mut seen = Vec::new();
        let failed = ensure(
            Tool::Uv,
            Path::new("/nonexistent/python"),
            tools.path(),
            &env,
            |what, _| {
                seen.push(what.to_string());
                std::fs::create_dir_all(Tool::Uv.dir(tools.path()).join("bin")).unwrap();
                Err("offline")
            },
            |_| {},
        );
        assert!(matches!(failed, Err(EnsureError::Step("offline"))), "{failed:?}");
        assert_eq!(seen, ["creating the uv environment".to_string()]);
        assert!(!Tool::Uv.dir(tools.path()).exists(), "the half-made dir is removed");

        // A dir an older slipway (or a killed maker) left without the marker is made again.
        let dir = Tool::Uv.dir(tools.path());
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/uv"), "old").unwrap();
        let mut ran = 0;
        let exe = ensure(
            Tool::Uv,
            Path::new("/usr/bin/python3"),
            tools.path(),
            &env,
            |_, c| {
                ran += 1;
                assert_eq!(
                    c.get_envs().find(|(k, _)| *k == "HOME").and_then(|(_, v)| v),
                    Some(dir.as_os_str())
                );
                assert!(dir.is_dir(), "made empty for the steps");
                assert!(!dir.join("bin/uv").exists() || ran > 1, "the old dir went first");
                std::fs::create_dir_all(dir.join("bin")).unwrap();
                std::fs::write(dir.join("bin/uv"), "new").unwrap();
                Ok::<(), &str>(())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(ran, 3);
        assert_eq!(exe, dir.join("bin/uv"));
        assert_eq!(Tool::Uv.installed(tools.path()), Some(exe.clone()));
        // Whole now: nothing runs again.
        let again = ensure(Tool::Uv, Path::new("/x"), tools.path(), &env, |_, _| Err("ran"), |_| {});
        assert_eq!(again.unwrap(), exe);
    }
}
