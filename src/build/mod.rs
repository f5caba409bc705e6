//! Builds: turn a pushed commit into a release dir and a slug.
//!
//! The release dir is built at its final path (`releases/<app>/<build>`) because virtualenvs
//! hard-code absolute paths. A failed build removes everything it wrote; a build that was
//! killed outright leaves a dir no build row points at, which the next build of the app
//! removes (see `deploy`). Nothing here touches the database: the caller records the build
//! and its release in one transaction once this returned successfully.

pub mod framework;
pub mod interpreter;
pub mod output;
pub mod pipfile;
pub mod probes;
pub mod python;
pub mod slug;
pub mod slugignore;
pub mod venv;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::app::AppName;
use crate::git;
use crate::home::Home;
use crate::procfile::{Procfile, ProcfileError};
use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Git(#[from] git::GitError),
    #[error("no Procfile found in the root of the repository, and no framework detected (Django, FastAPI, Dash, Flask, app.py); add one, e.g. 'web: python app.py'")]
    NoProcfile,
    #[error("no Procfile found in the root of the repository; {0}")]
    Undetectable(String),
    #[error(transparent)]
    Procfile(#[from] ProcfileError),
    #[error("{0}")]
    Detect(String),
    #[error("{step} failed ({status})")]
    Command { step: String, status: String },
    #[error("failed to run the {script} script ({status}): we found a '{script}' script in your app source, so ran it to allow for customisation of the build process, but it exited with a non-zero exit status; fix any errors output by your script above, or remove/rename the script to prevent it from being run during the build")]
    Hook { script: String, status: String },
    #[error("the build ran out of time (SLIPWAY_BUILD_TIMEOUT) and was stopped with all its processes")]
    TimedOut,
    #[error("the build was cancelled: the push was interrupted")]
    Cancelled,
    #[error("the slug is {size}, over the limit of {limit} (SLIPWAY_MAX_SLUG_MB); list what it does not need in .slugignore")]
    SlugTooLarge { size: String, limit: String },
    #[error("{action}: {source}")]
    Io { action: String, source: io::Error },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let action = action.into();
    move |source| BuildError::Io { action, source }
}

/// What the app turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    Python,
    Generic,
}

impl Stack {
    pub fn as_str(self) -> &'static str {
        match self {
            Stack::Python => "python",
            Stack::Generic => "generic",
        }
    }
}

pub struct BuildRequest<'a> {
    pub home: &'a Home,
    pub settings: &'a Settings,
    pub app: &'a AppName,
    pub repo: &'a Path,
    pub commit: &'a str,
    /// The app's config vars (in the build's environment and ENV_DIR unless `build_config = 0`).
    pub config: &'a BTreeMap<String, String>,
    /// The build the app runs now, whose dependency environment may be reused.
    pub previous: Option<&'a Previous>,
}

pub struct Previous {
    pub dir: PathBuf,
    pub deps_key: Option<String>,
}

pub struct Built {
    pub id: String,
    pub dir: PathBuf,
    pub slug: PathBuf,
    pub procfile: Procfile,
    pub stack: Stack,
    pub deps_key: Option<String>,
    /// `git archive` and process types; everything from `bin/pre_compile` to `.slugignore`.
    pub export: Duration,
    pub deps: Duration,
}

/// Removes a build's outputs unless [`Cleanup::keep`] was called: every early return and panic
/// of a failed build cleans up after itself.
struct Cleanup {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.keep {
            for p in &self.paths {
                let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
            }
        }
    }
}

/// Builds the release dir; the slug comes back as a [`slug::Packing`]: packed on a thread while
/// the release goes live when it cannot be over `SLIPWAY_MAX_SLUG_MB`, else already packed and
/// checked. The caller waits for it before it reports success.
pub fn run(req: &BuildRequest<'_>) -> Result<(Built, slug::Packing), BuildError> {
    let started = Instant::now();
    let deadline = started + req.settings.build_timeout;
    let id = build_id(req.commit);
    let dir = req.home.release_dir(req.app, &id);
    let slug_path = req.home.slug(req.app, &id);
    std::fs::create_dir_all(req.home.releases(req.app)).map_err(io_err("creating the releases dir"))?;
    let mut cleanup = Cleanup { paths: vec![dir.clone(), slug_path.clone()], keep: false };
    std::fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;

    git::export_commit(req.repo, req.commit, &dir)?;
    let procfile = process_types(&dir)?;
    let stack = detect(&dir)?;
    let export = started.elapsed();
    let env_dir = write_env_dir(req, &id).map_err(io_err("creating ENV_DIR"))?;
    compile_hook(req, &dir, &env_dir.0, "bin/pre_compile", deadline)?;
    if stack == Stack::Python {
        // After the hook, as Heroku: what pre_compile writes counts too.
        if let Some(why) = existing_environment(&dir).or_else(|| unsupported_package_manager(&dir)) {
            return Err(BuildError::Detect(why));
        }
    }
    let deps_key = match stack {
        Stack::Python => Some(python::build(req, &dir, deadline)?),
        Stack::Generic => {
            output::step("No Python files found: building a generic app (code only)");
            None
        }
    };
    compile_hook(req, &dir, &env_dir.0, "bin/post_compile", deadline)?;

    output::step("Discovering process types");
    let types: Vec<&str> = procfile.processes.keys().map(String::as_str).collect();
    match procfile.source.as_deref().and_then(|s| s.strip_prefix("detected ")) {
        Some(framework) => output::detail(&format!("Default types for {framework} -> {}", types.join(", "))),
        None => output::detail(&format!("Procfile declares types -> {}", types.join(", "))),
    }

    if let Ok(text) = std::fs::read_to_string(dir.join(".slugignore")) {
        let removed =
            slugignore::apply(&dir, &slugignore::parse(&text)).map_err(io_err("applying .slugignore"))?;
        output::step(&format!("Removed {removed} path(s) listed in .slugignore"));
    }
    let bound = slug::packed_size_bound(&dir).map_err(io_err("measuring the slug"))?;
    let packing = if bound <= req.settings.max_slug_bytes {
        // It cannot be over the limit: pack it while the release goes live.
        output::step("Compressing the slug while the release goes live");
        slug::Packing::start(dir.clone(), slug_path.clone()).map_err(io_err("packing the slug"))?
    } else {
        let slug_bytes = slug::pack(&dir, &slug_path).map_err(io_err("packing the slug"))?;
        if slug_bytes > req.settings.max_slug_bytes {
            return Err(BuildError::SlugTooLarge {
                size: slug::human_size(slug_bytes),
                limit: slug::human_size(req.settings.max_slug_bytes),
            });
        }
        output::step(&format!("Compressing... done, {}", slug::human_size(slug_bytes)));
        slug::Packing::done(Ok(slug_bytes))
    };
    cleanup.keep = true;
    let deps = started.elapsed().saturating_sub(export);
    Ok((Built { id, dir, slug: slug_path, procfile, stack, deps_key, export, deps }, packing))
}

/// Heroku's `bin/pre_compile` / `bin/post_compile` hooks, run as Heroku runs them: made
/// executable and started through their shebang (bash when they have none), from the build dir,
/// with `BUILD_DIR`, `CACHE_DIR` (the app's build cache), `ENV_DIR` (one file per config var)
/// and the build's environment (the app's config vars unless `build_config = 0`).
fn compile_hook(
    req: &BuildRequest<'_>,
    dir: &Path,
    env_dir: &Path,
    script: &str,
    deadline: Instant,
) -> Result<(), BuildError> {
    let path = dir.join(script);
    if !path.is_file() {
        return Ok(());
    }
    output::step(&format!("Running {script} hook"));
    let cache = req.home.cache(req.app);
    std::fs::create_dir_all(cache.join("home")).map_err(io_err(format!("creating {}", cache.display())))?;
    let mut env = build_env(req);
    let venv_bin = dir.join(python::VENV).join("bin");
    if venv_bin.is_dir() {
        let path = format!("{}:{}", venv_bin.display(), env.get("PATH").cloned().unwrap_or_default());
        env.insert("PATH".into(), path);
    }
    env.insert("BUILD_DIR".into(), dir.display().to_string());
    env.insert("CACHE_DIR".into(), cache.display().to_string());
    env.insert("ENV_DIR".into(), env_dir.display().to_string());
    let mut c = hook_command(&path).map_err(io_err(format!("reading {script}")))?;
    c.env_clear().envs(env).current_dir(dir);
    run_step(script, c, deadline).map_err(|e| match e {
        BuildError::Command { status, .. } => BuildError::Hook { script: script.to_string(), status },
        other => other,
    })
}

/// The command that runs a hook: the script itself when it starts with a shebang (made
/// executable first, as Heroku does), else `bash SCRIPT`.
fn hook_command(path: &Path) -> io::Result<Command> {
    use std::os::unix::fs::PermissionsExt;
    let mut head = [0u8; 2];
    let n = std::io::Read::read(&mut std::fs::File::open(path)?, &mut head)?;
    if n == 2 && &head == b"#!" {
        let mut perms = std::fs::metadata(path)?.permissions();
        perms.set_mode(perms.mode() | 0o111);
        std::fs::set_permissions(path, perms)?;
        Ok(Command::new(path))
    } else {
        let mut c = Command::new("bash");
        c.arg(path);
        Ok(c)
    }
}

/// Heroku's `ENV_DIR`: a private dir holding one file (0600) per config var, named after the
/// var and holding its value (empty when builds do not get config vars), at
/// `<home>/tmp/env-<app>.<build id>` (`tmp/` is 0700). Removed when the returned guard drops,
/// i.e. when the build ends whichever way; one left by a build that was killed outright is
/// removed by the app's next build (builds of an app run one at a time, under its deploy lock).
fn write_env_dir(req: &BuildRequest<'_>, id: &str) -> io::Result<EnvDir> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let tmp = req.home.root().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    let prefix = format!("env-{}.", req.app.as_str());
    for stale in std::fs::read_dir(&tmp)?.filter_map(Result::ok) {
        if stale.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(stale.path());
        }
    }
    let path = tmp.join(format!("{prefix}{id}"));
    std::fs::DirBuilder::new().mode(0o700).create(&path)?;
    let guard = EnvDir(path);
    if req.settings.build_config {
        for (key, value) in req.config {
            if key.is_empty() || key.contains('/') || key == "." || key == ".." {
                continue;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(guard.0.join(key))?;
            std::io::Write::write_all(&mut f, value.as_bytes())?;
        }
    }
    Ok(guard)
}

/// Removes ENV_DIR when the build ends.
struct EnvDir(PathBuf);

impl Drop for EnvDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `20261124180000123-1a2b3c4-9f0e12ab`: sortable by time, names the commit, and unique across
/// apps even when one commit is pushed to several apps in the same millisecond (build ids are
/// one namespace in the database).
fn build_id(commit: &str) -> String {
    let short = &commit[..commit.len().min(7)];
    let mut random = [0u8; 4];
    let nonce = match std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
    {
        Ok(()) => u32::from_be_bytes(random),
        Err(_) => std::process::id(),
    };
    format!("{}-{short}-{nonce:08x}", crate::timefmt::compact_now())
}

/// The app's process types: its Procfile, else the web command of its framework
/// ([`framework::detect`]), announced in the build output. [`Procfile::source`] says which.
fn process_types(dir: &Path) -> Result<Procfile, BuildError> {
    match std::fs::read_to_string(dir.join("Procfile")) {
        Ok(text) => Ok(Procfile { source: Some("Procfile".into()), ..Procfile::parse(&text)? }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match framework::detect(&framework::Dir(dir)) {
            framework::Detection::Web(found) => {
                let name = found.framework.name();
                output::step(&format!("No Procfile; detected {name}: web: {}", found.command));
                if let Some(warning) = &found.warning {
                    output::warn(warning);
                }
                Ok(Procfile {
                    processes: BTreeMap::from([("web".to_string(), found.command)]),
                    source: Some(format!("detected {name}")),
                })
            }
            framework::Detection::Unusable(why) => Err(BuildError::Undetectable(why)),
            framework::Detection::Nothing => Err(BuildError::NoProcfile),
        },
        Err(e) => Err(io_err("reading the Procfile")(e)),
    }
}

/// Python when the app declares Python dependencies or has Python files at its root.
pub fn detect(dir: &Path) -> Result<Stack, BuildError> {
    let markers = ["requirements.txt", "uv.lock", "poetry.lock", "Pipfile.lock"];
    let present: Vec<&str> = markers.iter().copied().filter(|m| dir.join(m).is_file()).collect();
    if present.len() > 1 {
        return Err(BuildError::Detect(format!(
            "Multiple Python package manager files were found ({}): exactly one package manager file \
             should be present in your app's source code; decide which package manager you want to \
             use with your app, and then delete the file(s) and any config from the others",
            present.join(" and ")
        )));
    }
    if dir.join("Pipfile").is_file() && !dir.join("Pipfile.lock").is_file() {
        return Err(BuildError::Detect(
            "No 'Pipfile.lock' found: a 'Pipfile' file was found, however, the associated \
             'Pipfile.lock' Pipenv lockfile wasn't, so your dependency versions aren't pinned; run \
             'pipenv lock' locally to generate the lockfile, and make sure that 'Pipfile.lock' isn't \
             listed in '.gitignore' or '.slugignore' (or, to switch package manager, delete the \
             Pipfile and add a 'requirements.txt', 'poetry.lock' or 'uv.lock' file)"
                .into(),
        ));
    }
    let has_python_files =
        std::fs::read_dir(dir).map_err(io_err("reading the app"))?.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".py") || name == "pyproject.toml" || name == "setup.py"
        });
    Ok(if !present.is_empty() || has_python_files { Stack::Python } else { Stack::Generic })
}

/// Heroku refuses a committed virtualenv (`.venv/` or `venv/` with a `pyvenv.cfg`) and anything
/// at the buildpack's own location (`.heroku/python`); slipway's own (`.slipway/venv`) likewise.
pub fn existing_environment(dir: &Path) -> Option<String> {
    for name in [".venv", "venv"] {
        if dir.join(name).join("pyvenv.cfg").is_file() {
            return Some(format!(
                "Existing '{name}/' directory found: your app's source code contains a Python virtual \
                 environment, which isn't supported since its files are specific to one machine; run \
                 'git rm --cached -r {name}/', add '{name}/' to .gitignore and commit (if a \
                 'bin/pre_compile' hook created it, make it use a different location)"
            ));
        }
    }
    for internal in [".heroku/python", python::VENV] {
        if dir.join(internal).symlink_metadata().is_ok() {
            return Some(format!(
                "Existing '{internal}/' directory found: this is where the Python build installs its \
                 files, and writing to it isn't supported; if you committed it, delete it, otherwise \
                 check that a 'bin/pre_compile' hook hasn't created it"
            ));
        }
    }
    None
}

/// Heroku's package-manager rules that slipway shares: a `setup.py` alone, or a `pyproject.toml`
/// that declares dependencies without a lock file (and, unlike Heroku, without a build backend
/// slipway could install the project with), is refused naming the files that are supported.
pub fn unsupported_package_manager(dir: &Path) -> Option<String> {
    let has = |f: &str| dir.join(f).is_file();
    if ["requirements.txt", "Pipfile.lock", "poetry.lock", "uv.lock"].iter().any(|f| has(f)) {
        return None;
    }
    let pyproject = std::fs::read_to_string(dir.join("pyproject.toml")).ok();
    let doc = pyproject.as_deref().and_then(|t| t.parse::<toml_edit::DocumentMut>().ok());
    if doc.as_ref().is_some_and(|d| d.get("build-system").is_some()) {
        return None;
    }
    if has("setup.py") {
        return Some(
            "Implicit setup.py file support has been sunset: your app only has a setup.py file and no \
             Python package manager files, so which package manager to use (and whether to install \
             your project in editable mode) is unknown; add a package manager file such as a \
             requirements.txt, poetry.lock or uv.lock file (to keep using setup.py with pip in \
             editable mode, create requirements.txt containing '--editable .')"
                .into(),
        );
    }
    let declares_dependencies = doc.as_ref().is_some_and(|d| {
        let project = d.get("project").and_then(|p| p.get("dependencies")).and_then(|v| v.as_array());
        let poetry = d
            .get("tool")
            .and_then(|t| t.get("poetry"))
            .and_then(|p| p.get("dependencies"))
            .and_then(|v| v.as_table_like());
        project.is_some_and(|a| !a.is_empty()) || poetry.is_some_and(|t| t.iter().any(|(k, _)| k != "python"))
    });
    if declares_dependencies {
        let mut entries: Vec<String> = std::fs::read_dir(dir)
            .map(|r| {
                r.filter_map(Result::ok)
                    .map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if e.path().is_dir() {
                            format!("{name}/")
                        } else {
                            name
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        return Some(format!(
            "Couldn't find any supported Python package manager files: pyproject.toml declares \
             dependencies, but a Python app must have either a 'requirements.txt', 'Pipfile.lock', \
             'poetry.lock' or 'uv.lock' package manager file in the root directory of its source code \
             (or a [build-system] in pyproject.toml to install the project); the root contains: {}; \
             lock the dependencies (e.g. 'uv lock' or 'poetry lock') and commit the lock file",
            entries.join(", ")
        ));
    }
    None
}

/// Config vars that never reach a build's environment, as on Heroku (they would break the build's
/// own toolchain); ENV_DIR still has them.
const BUILD_ENV_DENYLIST: &[&str] =
    &["PATH", "CPATH", "CPPATH", "LD_PRELOAD", "LIBRARY_PATH", "LD_LIBRARY_PATH", "PYTHONHOME"];

/// A scrubbed environment for build commands: nothing of the server's own environment leaks
/// into an app's build except what installers need to reach a package index, plus the app's
/// config vars (as on Heroku) unless the operator turned them off with `build_config = 0`.
pub fn build_env(req: &BuildRequest<'_>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = if req.settings.build_config {
        req.config
            .iter()
            .filter(|(k, _)| !BUILD_ENV_DENYLIST.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("HOME".into(), req.home.cache(req.app).join("home").display().to_string());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("PYTHONUNBUFFERED".into(), "1".into());
    for key in [
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_TRUSTED_HOST",
        "UV_INDEX_URL",
        "SSL_CERT_FILE",
    ] {
        if let Ok(v) = std::env::var(key) {
            env.insert(key.into(), v);
        }
    }
    env
}

/// Runs one build command in its own process group, relaying its output indented, within
/// what is left of the build's time; a timeout or an interrupted push kills the whole group.
pub fn run_step(step: &str, command: Command, deadline: Instant) -> Result<(), BuildError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match crate::job::run(command, Some(left), |line| {
        output::detail(line.rsplit('\r').next().unwrap_or(line))
    }) {
        Ok(()) => Ok(()),
        Err(crate::job::JobError::Failed(code)) => {
            Err(BuildError::Command { step: step.to_string(), status: format!("exit {code}") })
        }
        Err(crate::job::JobError::TimedOut(_)) => Err(BuildError::TimedOut),
        Err(crate::job::JobError::Cancelled) => Err(BuildError::Cancelled),
        Err(crate::job::JobError::Spawn(source)) => {
            Err(BuildError::Io { action: format!("starting {step}"), source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        d
    }

    #[test]
    fn build_ids_differ_for_the_same_commit_at_once() {
        let ids: std::collections::HashSet<String> = (0..50).map(|_| build_id("6c31943aaaa")).collect();
        assert_eq!(ids.len(), 50, "{ids:?}");
        assert!(ids.iter().all(|id| id.contains("-6c31943-")));
    }

    /// (what, files and their contents, a phrase the refusal must contain or None).
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

    fn dir_with_contents(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, content) in files {
            let path = d.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        d
    }

    #[test]
    fn package_manager_refusals() {
        let deps = "[project]\nname = 'x'\ndependencies = ['flask']\n";
        let poetry_deps = "[tool.poetry.dependencies]\npython = '^3.11'\nflask = '*'\n";
        let cases: &[Case] = &[
            (
                "pyproject with dependencies only",
                &[("pyproject.toml", deps)],
                Some("'requirements.txt', 'Pipfile.lock', 'poetry.lock' or 'uv.lock'"),
            ),
            (
                "poetry dependencies, no poetry.lock",
                &[("pyproject.toml", poetry_deps)],
                Some("Couldn't find any supported"),
            ),
            (
                "poetry with only python",
                &[("pyproject.toml", "[tool.poetry.dependencies]\npython = '^3.11'\n")],
                None,
            ),
            (
                "pyproject without dependencies",
                &[("pyproject.toml", "[project]\nname = 'x'\ndependencies = []\n")],
                None,
            ),
            ("pyproject with a lock", &[("pyproject.toml", deps), ("uv.lock", "")], None),
            (
                "pyproject with a build backend",
                &[("pyproject.toml", &format!("{deps}[build-system]\nrequires = ['hatchling']\n"))],
                None,
            ),
            ("setup.py only", &[("setup.py", "")], Some("Implicit setup.py file support has been sunset")),
            (
                "setup.py and a pyproject without backend",
                &[("setup.py", ""), ("pyproject.toml", deps)],
                Some("setup.py"),
            ),
            ("setup.py with requirements.txt", &[("setup.py", ""), ("requirements.txt", "-e .\n")], None),
            ("plain app.py", &[("app.py", "")], None),
        ];
        for (what, files, want) in cases {
            let got = unsupported_package_manager(dir_with_contents(files).path());
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w), "{what}: {g}"),
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn committed_environments_are_refused() {
        let cases: &[Case] = &[
            (
                ".venv",
                &[(".venv/pyvenv.cfg", "home = /usr/bin\n")],
                Some("Existing '.venv/' directory found"),
            ),
            ("venv", &[("venv/pyvenv.cfg", "")], Some("git rm --cached -r venv/")),
            (".venv without pyvenv.cfg", &[(".venv/notes", "")], None),
            (
                ".heroku/python",
                &[(".heroku/python/bin/python", "")],
                Some("Existing '.heroku/python/' directory found"),
            ),
            (".slipway/venv", &[(".slipway/venv/x", "")], Some("'.slipway/venv/'")),
            ("nothing", &[("app.py", "")], None),
        ];
        for (what, files, want) in cases {
            let got = existing_environment(dir_with_contents(files).path());
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w), "{what}: {g}"),
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn detection() {
        assert_eq!(detect(dir_with(&["requirements.txt"]).path()).unwrap(), Stack::Python);
        assert_eq!(detect(dir_with(&["app.py"]).path()).unwrap(), Stack::Python);
        assert_eq!(detect(dir_with(&["server.sh"]).path()).unwrap(), Stack::Generic);
        let two = detect(dir_with(&["requirements.txt", "poetry.lock"]).path()).unwrap_err();
        assert!(two.to_string().contains("requirements.txt and poetry.lock"), "{two}");
        assert!(detect(dir_with(&["Pipfile"]).path()).unwrap_err().to_string().contains("Pipfile.lock"));
    }
}
