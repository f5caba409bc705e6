//! The Python buildpack. The release dir's `.slipway/venv` (first on the dynos' PATH) is a link
//! to the app's shared environment of the dependency key, built at its final path. Dependencies are installed by the package
//! manager the app chose — exactly one of `requirements.txt` (pip, or uv when the server has
//! it), `uv.lock` (uv), `poetry.lock` (poetry), `Pipfile.lock` (converted to a hashed
//! requirements file for pip/uv) — or, for a `pyproject.toml` with a build backend and no lock,
//! the project itself. Downloads go through per-app caches (`cache/<app>/pip`, `.../uv`).
//!
//! The dependency environment has a key: a hash of the dependency files, the interpreter
//! version and the installer. The venv is built once per app and key at `envs/<app>/<key>`,
//! sealed read-only, and every release with that key links its `.slipway/venv` to it (see
//! `envs`): a code-only redeploy neither runs pip nor copies a file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{build_env, interpreter, nltk, output, run_step, tools, venv, BuildError, BuildRequest, Jail};

/// Where the virtualenv lives inside a release dir; dynos get its `bin` first on PATH.
pub const VENV: &str = ".slipway/venv";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Installer {
    Pip,
    Uv,
    UvLock,
    Poetry,
    Pipfile,
    /// pyproject.toml with a build backend and no lock file: install the project itself.
    Project,
    /// Python files but nothing to install.
    Nothing,
}

impl Installer {
    /// Whether uv installs the dependencies when the server has it.
    fn installs_with_uv(self) -> bool {
        matches!(self, Installer::Uv | Installer::UvLock | Installer::Pipfile | Installer::Project)
    }

    fn name(self) -> &'static str {
        match self {
            Installer::Pip => "pip",
            Installer::Uv => "uv",
            Installer::UvLock => "uv-lock",
            Installer::Poetry => "poetry",
            Installer::Pipfile => "pipfile",
            Installer::Project => "project",
            Installer::Nothing => "none",
        }
    }
}

/// `python -m pip install` without prompts, progress bars or version nagging.
pub(crate) const PIP_INSTALL: [&str; 7] =
    ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"];

/// The files whose content decides the dependency environment.
const DEPENDENCY_FILES: &[&str] =
    &["requirements.txt", "uv.lock", "poetry.lock", "Pipfile.lock", "pyproject.toml"];

/// The dependency environment a Python build uses (see `envs`).
pub struct DepsEnv {
    pub key: String,
    /// `envs/<app>/<key>`, the release's `.slipway/venv` links to it.
    pub path: PathBuf,
    /// Made by this build (not sealed yet: the build seals it when it succeeded, and removes it
    /// when it failed); false when an earlier build's sealed environment is reused.
    pub fresh: bool,
}

/// Links the release to the environment of its dependency key, building it first when the app
/// has none for that key yet.
pub fn build(
    req: &BuildRequest<'_>,
    dir: &Path,
    deadline: Instant,
    jail: &Jail,
) -> Result<DepsEnv, BuildError> {
    output::step("Python app detected");
    let mut python_dirs = req.settings.python_dirs.clone();
    python_dirs.push(python_install_dir(req));
    let mut roots = interpreter::Roots::for_this_user(&python_dirs);
    roots.probe_cache = Some(req.home.tools().join("interpreters"));
    let last = req.previous.and_then(|p| interpreter::venv_major(&p.dir.join(VENV)));
    let manager = if !dir.join("requirements.txt").is_file() && dir.join("uv.lock").is_file() {
        interpreter::Manager::Uv
    } else {
        interpreter::Manager::Other
    };
    let install = |version: &str| install_python(req, version, deadline, jail);
    let python = interpreter::select(
        dir,
        &req.settings.python,
        &roots,
        last.as_deref(),
        manager,
        req.settings.python_install.then_some(&install as interpreter::Install<'_>),
    )?;
    output::step(&format!("Using Python {} ({})", python.version, python.path.display()));
    // The chosen interpreter's prefix, wherever it lives.
    let real = crate::sandbox::canonical(&python.path);
    let jail = &match super::python_prefix(&real) {
        Some(prefix) => jail.with(&prefix, crate::sandbox::Access::Read),
        None => jail.with(&real, crate::sandbox::Access::Read),
    };

    let uv = find_uv(req);
    let env = build_env(req);
    let mut installer = choose_installer(dir, uv.is_some());
    // uv installs requirements.txt only when it would install it as pip does.
    let mut require_hashes = false;
    let mut uv_vars = Vec::new();
    // A requirements.txt of comments and blank lines asks for nothing: no installer is started
    // for it (pip would only warn that it was given no requirement; uv likewise).
    let scan = matches!(installer, Installer::Pip | Installer::Uv)
        .then(|| super::requirements::scan_tree(dir, "requirements.txt"));
    let nothing_required = scan.as_ref().is_some_and(|s| s.lines == 0);
    if let Some(scan) = scan.filter(|_| installer == Installer::Uv) {
        match scan.not_for_uv.map_or_else(|| super::requirements::uv_env(&env), Err) {
            Ok(vars) => (require_hashes, uv_vars) = (scan.hashes, vars),
            Err(why) => {
                output::step(&format!("Installing with pip, not uv: {why}"));
                installer = Installer::Pip;
            }
        }
    }
    let mut parts: Vec<Vec<u8>> =
        vec![installer.name().into(), python.version.clone().into(), venv::PIP_VERSION.into()];
    if installer == Installer::UvLock || (uv.is_some() && installer.installs_with_uv()) {
        // uv compiles the bytecode of what it installs (UV_COMPILE_BYTECODE below); an
        // environment made before it did is made again, once.
        parts.push(b"uv-compile-bytecode".to_vec());
    }
    for file in DEPENDENCY_FILES {
        parts.push(file.as_bytes().to_vec());
        parts.push(super::inputs::read_opt(dir, file)?.unwrap_or_default().into_bytes());
    }
    let key = venv::key(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());

    if installer == Installer::Pipfile {
        check_pipfile_lock(dir)?;
    }

    let env_path = req.home.env(req.app, &key);
    let io = |action: &str| {
        let action = format!("{action} {}", env_path.display());
        move |source| BuildError::Io { action, source }
    };
    if crate::envs::is_sealed(&env_path) {
        // O(1): the release links to the environment; nothing is copied or installed.
        // Into the app's `.slipway` (lent to it): root's work in a worker.
        crate::users::root_if_privileged(|| crate::envs::link(dir, req.app, &key))
            .and_then(|r| r)
            .map_err(io("linking the release to"))?;
        output::step(&format!("Using cached dependencies (key {key})"));
        let jail = &jail.with(&env_path, crate::sandbox::Access::Read);
        let modules = Modules::of_sealed(&env_path, dir, jail);
        nltk::run(req, dir, modules.nltk, deadline, jail)?;
        collectstatic(req, dir, modules.django, deadline, jail)?;
        return Ok(DepsEnv { key, path: env_path, fresh: false });
    }
    // A new environment, built in place at its final path (a venv records it); only this
    // build may write it, and only until it is sealed.
    crate::envs::prepare(&env_path).map_err(io("clearing"))?;
    std::fs::create_dir(&env_path).map_err(io("creating"))?;
    let made = DepsEnv { key: key.clone(), path: env_path.clone(), fresh: true };
    crate::users::root_if_privileged(|| crate::envs::link(dir, req.app, &key))
        .and_then(|r| r)
        .map_err(io("linking the release to"))?;
    let jail = &jail.with(&env_path, crate::sandbox::Access::ReadWrite);
    let venv_dir = env_path.clone();

    let cache = req.home.cache(req.app);
    std::fs::create_dir_all(cache.join("home"))
        .map_err(|source| BuildError::Io { action: format!("creating {}", cache.display()), source })?;
    let venv_python = venv_dir.join("bin/python");

    // A uv.lock app's environment is uv's from the start (`uv venv`, no pip: `uv sync` would
    // remove it again).
    let uv = match uv {
        None if installer == Installer::UvLock => {
            Some(ensure_tool(req, &python.path, tools::Tool::Uv, deadline, jail)?)
        }
        uv => uv,
    };
    output::step("Creating virtualenv");
    let by_uv = uv.is_some() && installer != Installer::Pip;
    // `python -m venv` runs ensurepip (seconds): a seed made once per interpreter is cloned instead.
    let seed = venv::seed_dir(&req.home.tools(), &python.path, &python.version);
    if !by_uv && jail.app_user().is_some() {
        venv::make_seed(req, &python.path, &seed, deadline, jail);
    }
    let seeded = !by_uv
        && venv::from_seed(&seed, &venv_dir)
            .map_err(|source| BuildError::Io { action: "cloning the seed virtualenv".into(), source })?;
    jail.lend(&venv_dir).map_err(io("handing to the app's uid"))?;
    if !seeded {
        let mut create = match &uv {
            Some(uv) if by_uv => {
                let mut c = Command::new(uv);
                c.args(["venv", "--quiet", "--python"]).arg(&python.path).arg(&venv_dir);
                c
            }
            _ => {
                let mut c = Command::new(&python.path);
                c.args(["-m", "venv"]).arg(&venv_dir);
                c
            }
        };
        create.env_clear().envs(&env).env("UV_CACHE_DIR", cache.join("uv")).current_dir(dir);
        run_step("creating the virtualenv", create, deadline, jail)?;
    }

    let pip = |args: &[&str]| {
        let mut c = match &uv {
            Some(uv) if by_uv => {
                let mut c = Command::new(uv);
                c.args(["pip", "install", "--python"]).arg(&venv_python);
                c
            }
            _ => {
                let mut c = Command::new(&venv_python);
                c.args(PIP_INSTALL);
                c
            }
        };
        c.args(args)
            .env_clear()
            .envs(&env)
            .env("PIP_CACHE_DIR", cache.join("pip"))
            .env("UV_CACHE_DIR", cache.join("uv"))
            .current_dir(dir);
        if by_uv {
            c.envs(uv_vars.iter().map(|(k, v)| (k, v)));
        }
        c
    };
    // What the dynos import is compiled at install (pip does it by default, uv when asked):
    // a sealed environment is read-only, so Python could never cache what it compiles at
    // import, and every dyno start would compile flask & co. again (0.35-1.7 s more to the first answer here).
    // `hashes`: the requirements pin hashes, which puts pip in hash-checking mode.
    let deps = |args: &[&str], hashes: bool| {
        let mut c = pip(args);
        if by_uv {
            c.env("UV_COMPILE_BYTECODE", "1");
            if hashes {
                c.arg("--require-hashes");
            }
        }
        c
    };
    // `uv sync` makes the environment exactly the lock's: a pip not in it would be installed
    // here only to be uninstalled there (~1 s of a cold build).
    let pin_pip = !(by_uv && installer == Installer::UvLock);
    if seeded {
        output::step(&format!("Using pip {} (seed virtualenv)", venv::PIP_VERSION));
    } else if pin_pip {
        // uv gets pip from the wheel kept with the platform's uv (no index, no download: ~0.3 s
        // of a cold build here, more when the index is slow); else from the index.
        let wheel = if by_uv { tools::pip_wheel(&req.home.tools()) } else { None };
        let pinned = match &wheel {
            Some(wheel) => {
                output::step(&format!("Installing pip {} (from the server's wheel)", venv::PIP_VERSION));
                vec!["--no-index".to_string(), wheel.display().to_string()]
            }
            None => {
                output::step(&format!("Installing pip {}", venv::PIP_VERSION));
                vec![format!("pip=={}", venv::PIP_VERSION)]
            }
        };
        let mut args = vec!["--upgrade"];
        args.extend(pinned.iter().map(String::as_str));
        run_step("installing pip", pip(&args), deadline, jail)?;
        // Not from a venv the app's uid made (privileged mode): every app would start from it.
        if !by_uv && jail.app_user().is_none() {
            if let Err(e) = venv::keep_as_seed(&venv_dir, &seed) {
                output::warn(&format!("keeping the seed virtualenv at {}: {e}", seed.display()));
            }
        }
    }
    let with = if by_uv { "uv" } else { "pip" };
    match installer {
        Installer::Pip | Installer::Uv if nothing_required => {
            output::step("No dependencies in requirements.txt (only comments and blank lines)");
        }
        Installer::Pip | Installer::Uv => {
            output::step(&format!("Installing dependencies with {with}"));
            run_step(
                &format!("{with} install"),
                deps(&["-r", "requirements.txt"], require_hashes),
                deadline,
                jail,
            )?;
        }
        Installer::Pipfile => {
            output::step(&format!("Installing dependencies from Pipfile.lock with {with}"));
            let lock = super::inputs::read(dir, "Pipfile.lock")?;
            let requirements = pipfile_requirements(&lock).map_err(BuildError::Detect)?;
            let path = cache.join("Pipfile.lock.requirements.txt");
            jail.write_for_app(&path, requirements.as_bytes())
                .map_err(|source| BuildError::Io { action: format!("writing {}", path.display()), source })?;
            run_step(
                &format!("{with} install"),
                deps(&["-r", &path.to_string_lossy()], requirements.contains(" --hash=")),
                deadline,
                jail,
            )?;
        }
        Installer::Project => {
            output::step(&format!("Installing the project (pyproject.toml) with {with}"));
            run_step(&format!("{with} install"), deps(&["."], false), deadline, jail)?;
        }
        Installer::UvLock => {
            let uv = match uv {
                Some(uv) => uv,
                None => ensure_tool(req, &python.path, tools::Tool::Uv, deadline, jail)?,
            };
            // `--locked`: a uv.lock that no longer matches pyproject.toml fails the build (uv
            // says so and how to fix it) instead of being ignored (`--frozen`) or rewritten.
            output::step("Installing dependencies using 'uv sync --locked --no-default-groups'");
            let mut sync = Command::new(uv);
            sync.args(["sync", "--locked", "--no-default-groups"])
                .env_clear()
                .envs(&env)
                .env("UV_PROJECT_ENVIRONMENT", &venv_dir)
                .env("UV_PYTHON", &python.path)
                .env("UV_PYTHON_DOWNLOADS", "never")
                .env("UV_CACHE_DIR", cache.join("uv"))
                .env("UV_COMPILE_BYTECODE", "1")
                .current_dir(dir);
            run_step("uv sync", sync, deadline, jail).map_err(|e| install_failed(e, "uv"))?;
        }
        Installer::Poetry => {
            let poetry = ensure_tool(req, &python.path, tools::Tool::Poetry, deadline, jail)?;
            let path = format!(
                "{}:{}",
                venv_dir.join("bin").display(),
                env.get("PATH").cloned().unwrap_or_default()
            );
            // A poetry.lock that no longer matches pyproject.toml fails the build, with
            // poetry's own advice (`Run \`poetry lock\` to fix the lock file.`).
            output::step("Checking poetry.lock against pyproject.toml ('poetry check --lock')");
            let mut check = Command::new(&poetry);
            check
                .args(["check", "--lock", "--no-interaction", "--no-ansi"])
                .env_clear()
                .envs(&env)
                .env("POETRY_CACHE_DIR", cache.join("poetry"))
                .current_dir(dir);
            run_step("poetry check --lock", check, deadline, jail).map_err(|e| match e {
                BuildError::Command { status, .. } => BuildError::Detect(format!(
                    "'poetry check --lock' failed ({status}): poetry.lock must match pyproject.toml \
                     (see poetry's output above); if it is out of date, run 'poetry lock' locally and \
                     commit poetry.lock"
                )),
                other => other,
            })?;
            output::step("Installing dependencies using 'poetry install --only main'");
            let mut install = Command::new(poetry);
            install
                .args(["install", "--only", "main", "--no-root", "--no-interaction"])
                .env_clear()
                .envs(&env)
                .env("PATH", path)
                .env("VIRTUAL_ENV", &venv_dir)
                .env("POETRY_VIRTUALENVS_CREATE", "false")
                .env("POETRY_CACHE_DIR", cache.join("poetry"))
                .current_dir(dir);
            run_step("poetry install", install, deadline, jail).map_err(|e| install_failed(e, "Poetry"))?;
        }
        Installer::Nothing => output::step("No dependencies to install"),
    }
    let modules = Modules::probe(&venv_python, dir, jail);
    nltk::run(req, dir, modules.nltk, deadline, jail)?;
    collectstatic(req, dir, modules.django, deadline, jail)?;
    Ok(made)
}

/// Whether the build can import the modules its later steps depend on: `nltk` (NLTK corpora)
/// and `django` (collectstatic). Asking Python costs a start of the interpreter (~50 ms, more on
/// a busy machine), which a warm deploy would pay on every push; but a sealed environment
/// never changes, so what it provides is asked once, when it is sealed, and kept in it
/// ([`MODULES`]). Only the app's own top-level files can still shadow it (Python looks in the
/// working directory first): [`shadowed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modules {
    pub nltk: bool,
    pub django: bool,
}

/// The file in a sealed environment that says which of [`Modules`] it provides, one name a line.
pub const MODULES: &str = ".slipway-modules";

const PROBED: [&str; 2] = ["nltk", "django"];

impl Modules {
    fn from_names(names: &[&str]) -> Modules {
        Modules { nltk: names.contains(&"nltk"), django: names.contains(&"django") }
    }

    /// Runs `python` once from `dir` (as the steps will) and asks it for every module.
    pub fn probe(python: &Path, dir: &Path, jail: &Jail) -> Modules {
        let mut probe = Command::new(python);
        probe
            .args([
                "-c",
                "import importlib.util, sys\n\
                 print('\\n'.join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None))",
            ])
            .args(PROBED)
            .env_clear()
            .current_dir(dir);
        // The venv is the build's own making: anything it runs is confined like the build, as
        // the app's uid.
        let mut probe = crate::job::Job::new(probe, jail.app_user()).into_command();
        if crate::sandbox::confine(&mut probe, &jail.policy).is_err() {
            return Modules::default();
        }
        match probe.output() {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                Modules::from_names(&text.lines().collect::<Vec<_>>())
            }
            _ => Modules::default(),
        }
    }

    /// For a sealed environment: what it recorded, plus what the app's files in `dir` shadow.
    /// One sealed without the record is asked as [`Modules::probe`] does.
    pub fn of_sealed(env: &Path, dir: &Path, jail: &Jail) -> Modules {
        let Ok(text) = std::fs::read_to_string(env.join(MODULES)) else {
            return Modules::probe(&env.join("bin/python"), dir, jail);
        };
        let recorded: Vec<&str> = text.lines().collect();
        let has = |name: &str| recorded.contains(&name) || shadowed(dir, name);
        Modules { nltk: has("nltk"), django: has("django") }
    }

    /// Asks the finished environment `env` (from inside it, so no app file counts) and writes
    /// the record; called just before the environment is sealed.
    pub fn record(env: &Path, jail: &Jail) -> std::io::Result<()> {
        let found = Modules::probe(&env.join("bin/python"), env, jail);
        let names: Vec<&str> = PROBED
            .iter()
            .copied()
            .filter(|n| (*n == "nltk" && found.nltk) || (*n == "django" && found.django))
            .collect();
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        crate::fsutil::write_atomic(&env.join(MODULES), text.as_bytes(), 0o444)
    }
}

/// Whether the app's top level has something Python would import as `name` before looking in
/// the environment: a package dir (namespace packages included), `name.py`, `name.pyc`, or an
/// extension module (`name.*.so`, `name.so`).
pub fn shadowed(dir: &Path, name: &str) -> bool {
    if dir.join(name).is_dir()
        || dir.join(format!("{name}.py")).is_file()
        || dir.join(format!("{name}.pyc")).is_file()
    {
        return true;
    }
    let prefix = format!("{name}.");
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.starts_with(&prefix) && file.ends_with(".so")
        })
    })
}

/// Where `python_install` puts the interpreters it installs, one server-wide dir (`uv python
/// install --install-dir`); interpreter discovery always looks there.
fn python_install_dir(req: &BuildRequest<'_>) -> PathBuf {
    req.home.tools().join("python")
}

/// `uv python install VERSION` into [`python_install_dir`] (uv itself installed first when the
/// server has none), for a Python version no installed interpreter has. uv downloads the
/// interpreter from GitHub (python-build-standalone): without that network the build fails
/// saying what to do instead.
fn install_python(
    req: &BuildRequest<'_>,
    version: &str,
    deadline: Instant,
    jail: &Jail,
) -> Result<(), BuildError> {
    let host = interpreter::probe(&req.settings.python)
        .or_else(|| interpreter::probe("python3"))
        .ok_or_else(|| {
            BuildError::Detect(format!(
                "Python {version} is not installed, and installing it needs uv, which needs a Python \
                 to install it with (the 'python' setting, {}, does not run)",
                req.settings.python
            ))
        })?;
    let uv = ensure_tool(req, &host.path, tools::Tool::Uv, deadline, jail)?;
    let target = python_install_dir(req);
    // Only this step may write the server's installed Pythons; builds read them.
    std::fs::create_dir_all(&target)
        .map_err(|source| BuildError::Io { action: format!("creating {}", target.display()), source })?;
    let jail = &jail.for_platform(&target);
    output::step(&format!("Installing Python {version} (not installed on this server; python_install = 1)"));
    let cache = req.home.cache(req.app);
    let mut c = Command::new(uv);
    c.args(["python", "install", "--no-bin", "--install-dir"])
        .arg(&target)
        .arg(version)
        .env_clear()
        .envs(super::platform_env(req))
        .env("UV_CACHE_DIR", cache.join("uv"))
        .current_dir(&target);
    run_step("uv python install", c, deadline, jail).map_err(|e| match e {
        BuildError::Command { status, .. } => BuildError::Detect(format!(
            "Unable to install Python {version}: 'uv python install {version}' failed ({status}; see \
             its output above). uv downloads Python from GitHub (python-build-standalone), so the \
             server needs that network (or a proxy: the build_env setting); otherwise install Python \
             {version} on the server (e.g. with pyenv, then add it to python_dirs), or change the \
             app's version to an installed one"
        )),
        other => other,
    })
}

/// Heroku's words when a package manager fails: its own output above says why.
fn install_failed(e: BuildError, manager: &str) -> BuildError {
    match e {
        BuildError::Command { status, .. } => BuildError::Detect(format!(
            "unable to install dependencies using {manager} ({status}); see the log output above for more information"
        )),
        other => other,
    }
}

/// `pipenv install --deploy`'s check (what Heroku runs): Pipfile.lock must have been locked
/// from this Pipfile (see `pipfile`).
fn check_pipfile_lock(dir: &Path) -> Result<(), BuildError> {
    let Some(pipfile) = super::inputs::read_opt(dir, "Pipfile")? else {
        return Ok(());
    };
    let lock = super::inputs::read(dir, "Pipfile.lock")?;
    super::pipfile::check_lock(&pipfile, &lock).map_err(BuildError::Detect)?;
    output::step("Pipfile.lock is up to date with Pipfile");
    Ok(())
}

fn choose_installer(dir: &Path, uv_available: bool) -> Installer {
    let has = |f: &str| dir.join(f).is_file();
    if has("requirements.txt") {
        if uv_available {
            Installer::Uv
        } else {
            Installer::Pip
        }
    } else if has("uv.lock") {
        Installer::UvLock
    } else if has("poetry.lock") {
        Installer::Poetry
    } else if has("Pipfile.lock") {
        Installer::Pipfile
    } else if super::inputs::read_opt(dir, "pyproject.toml")
        .ok()
        .flatten()
        .is_some_and(|t| t.contains("[build-system]"))
    {
        Installer::Project
    } else {
        Installer::Nothing
    }
}

/// Django's `collectstatic`, as Heroku runs it: skipped (saying so) when the app has
/// `.heroku/collectstatic_disabled` or its config sets `DISABLE_COLLECTSTATIC` (to anything but
/// `0`), when Django is not installed, or when no `manage.py` is found (see [`find_manage_py`]);
/// otherwise `python MANAGE collectstatic --noinput --traceback` from the build dir with the
/// build's environment (the app's config vars unless `build_config = 0`) and `PYTHONPATH=.`.
/// A failure fails the build with Heroku's hint about `DISABLE_COLLECTSTATIC=1`.
fn collectstatic(
    req: &BuildRequest<'_>,
    dir: &Path,
    django: bool,
    deadline: Instant,
    jail: &Jail,
) -> Result<(), BuildError> {
    if dir.join(".heroku/collectstatic_disabled").is_file() {
        output::step("Skipping Django collectstatic since the file '.heroku/collectstatic_disabled' exists.");
        output::warn(
            "Warning: The .heroku/collectstatic_disabled file is deprecated.\n\n\
             Please remove the file and set the env var DISABLE_COLLECTSTATIC=1 instead.",
        );
        return Ok(());
    }
    if req.config.get("DISABLE_COLLECTSTATIC").is_some_and(|v| !v.is_empty() && v != "0") {
        output::step("Skipping Django collectstatic since the env var DISABLE_COLLECTSTATIC is set.");
        return Ok(());
    }
    let venv_bin = dir.join(VENV).join("bin");
    let python = venv_bin.join("python");
    if !django {
        return Ok(());
    }
    let Some(manage) = find_manage_py(dir) else {
        output::step("Skipping Django collectstatic since no manage.py file found.");
        return Ok(());
    };
    output::step(&format!("$ python {manage} collectstatic --noinput"));
    let mut env = build_env(req);
    let path = format!("{}:{}", venv_bin.display(), env.get("PATH").cloned().unwrap_or_default());
    env.insert("PATH".into(), path);
    // Over a config var of the same name, as on Heroku (a broken PYTHONPATH must not break it).
    env.insert("PYTHONPATH".into(), ".".into());
    let mut c = Command::new(&python);
    c.arg(&manage).args(["collectstatic", "--noinput", "--traceback"]).env_clear().envs(env).current_dir(dir);
    run_step("collectstatic", c, deadline, jail).map_err(|e| match e {
        BuildError::Command { status, .. } => BuildError::Detect(format!(
            "Unable to generate Django static files: the 'python {manage} collectstatic --noinput' Django \
             management command to generate static files failed ({status}); see the traceback above for \
             details. You may need to update application code to resolve this error, or you can disable \
             collectstatic for this application: slipway config:set {} DISABLE_COLLECTSTATIC=1",
            req.app.as_str()
        )),
        other => other,
    })
}

/// Where Heroku looks for `manage.py`: the app's root and up to two directories below it
/// (`find . -maxdepth 3`), the shallowest first (then by path, so the choice is stable), leaving
/// out slipway's own `.slipway/`. Returns the path relative to the app.
pub fn find_manage_py(dir: &Path) -> Option<String> {
    fn walk(root: &Path, rel: &Path, depth: usize, found: &mut Vec<(usize, String)>) {
        let Ok(entries) = std::fs::read_dir(root.join(rel)) else { return };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let path = rel.join(&name);
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_file() && name == "manage.py" {
                found.push((depth, path.to_string_lossy().into_owned()));
            } else if kind.is_dir() && depth < 3 && !(depth == 1 && name == ".slipway") {
                walk(root, &path, depth + 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, Path::new(""), 1, &mut found);
    found.sort();
    found.into_iter().next().map(|(_, p)| p)
}

/// `name` from the server's PATH, else the platform's copy in `cache/.tools`, made first when
/// there is none yet (see `tools`): a platform step, run as this process's user with the
/// platform's environment, never as the app.
fn ensure_tool(
    req: &BuildRequest<'_>,
    python: &Path,
    tool: tools::Tool,
    deadline: Instant,
    jail: &Jail,
) -> Result<PathBuf, BuildError> {
    if let Some(found) = find_on_path(tool.name()) {
        return Ok(found);
    }
    let root = req.home.tools();
    // Only these steps may write the tool's dir; builds read it.
    let jail = &jail.for_platform(&tool.dir(&root));
    let env = super::platform_env(req);
    let run = |what: &str, command: Command| run_step(what, command, deadline, jail);
    tools::ensure(tool, python, &root, &env, run, output::step).map_err(|e| match e {
        tools::EnsureError::Step(e) => e,
        tools::EnsureError::Io { action, source } => BuildError::Io { action, source },
    })
}

/// The uv this server has: on PATH, else the platform's (`slipway tools:install`, or made by
/// an earlier build for a `uv.lock`); none is fetched for requirements.txt.
fn find_uv(req: &BuildRequest<'_>) -> Option<PathBuf> {
    find_on_path("uv").or_else(|| tools::Tool::Uv.installed(&req.home.tools()))
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Turns Pipfile.lock's `default` section into a requirements file with exact versions,
/// markers and hashes (pip then checks every hash).
pub fn pipfile_requirements(lock: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(lock).map_err(|e| format!("Pipfile.lock is not valid JSON: {e}"))?;
    let Some(default) = value.get("default").and_then(|d| d.as_object()) else {
        return Err("Pipfile.lock has no \"default\" section".into());
    };
    let mut out = String::new();
    for (name, spec) in default {
        if ["git", "path", "file", "editable"].iter().any(|k| spec.get(k).is_some()) {
            return Err(format!(
                "Pipfile.lock entry '{name}' is a VCS or path dependency, which slipway cannot install yet"
            ));
        }
        let Some(version) = spec.get("version").and_then(|v| v.as_str()) else {
            return Err(format!("Pipfile.lock entry '{name}' has no version"));
        };
        let extras = spec
            .get("extras")
            .and_then(|e| e.as_array())
            .map(|e| e.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
            .filter(|e| !e.is_empty())
            .map(|e| format!("[{e}]"))
            .unwrap_or_default();
        out.push_str(&format!("{name}{extras}{version}"));
        if let Some(markers) = spec.get("markers").and_then(|m| m.as_str()) {
            out.push_str(&format!(" ; {markers}"));
        }
        for hash in
            spec.get("hashes").and_then(|h| h.as_array()).into_iter().flatten().filter_map(|h| h.as_str())
        {
            out.push_str(&format!(" --hash={hash}"));
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipfile_lock_to_requirements() {
        let lock = r#"{"_meta": {}, "default": {
            "flask": {"version": "==3.0.0", "hashes": ["sha256:aa", "sha256:bb"], "markers": "python_version >= '3.8'"},
            "requests": {"version": "==2.31.0", "extras": ["socks"]}
        }, "develop": {"pytest": {"version": "==8.0"}}}"#;
        let req = pipfile_requirements(lock).unwrap();
        assert_eq!(
            req,
            "flask==3.0.0 ; python_version >= '3.8' --hash=sha256:aa --hash=sha256:bb\nrequests[socks]==2.31.0\n"
        );
        assert!(pipfile_requirements(r#"{"default": {"x": {"git": "https://e/x"}}}"#)
            .unwrap_err()
            .contains("'x'"));
    }

    #[test]
    fn manage_py_is_found_where_heroku_looks() {
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("at the root", &["manage.py", "backend/manage.py"], Some("manage.py")),
            ("one level down", &["backend/manage.py"], Some("backend/manage.py")),
            ("two levels down", &["src/backend/manage.py"], Some("src/backend/manage.py")),
            ("three levels down is too deep", &["a/b/c/manage.py"], None),
            ("shallowest wins", &["z/manage.py", "a/b/manage.py"], Some("z/manage.py")),
            ("same depth: by path", &["web/manage.py", "api/manage.py"], Some("api/manage.py")),
            ("not in slipway's own dir", &[".slipway/venv/manage.py"], None),
            ("none", &["app.py"], None),
        ];
        for (what, files, want) in cases {
            let d = tempfile::tempdir().unwrap();
            for f in *files {
                let path = d.path().join(f);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, "").unwrap();
            }
            assert_eq!(find_manage_py(d.path()).as_deref(), *want, "{what}");
        }
    }

    #[test]
    fn app_files_that_shadow_a_module() {
        let cases: &[(&str, &[&str], &[&str], bool)] = &[
            ("nothing", &["app.py"], &[], false),
            ("a package", &[], &["django"], true),
            ("a module", &["django.py"], &[], true),
            ("bytecode", &["django.pyc"], &[], true),
            ("an extension", &["django.cpython-313-x86_64-linux-gnu.so"], &[], true),
            ("a longer name", &["djangoish.py", "django_app.py"], &["djangox"], false),
        ];
        for (what, files, dirs, want) in cases {
            let d = tempfile::tempdir().unwrap();
            for f in *files {
                std::fs::write(d.path().join(f), "").unwrap();
            }
            for sub in *dirs {
                std::fs::create_dir(d.path().join(sub)).unwrap();
            }
            assert_eq!(shadowed(d.path(), "django"), *want, "{what}");
        }
    }

    #[test]
    fn tools_are_pinned_as_on_heroku() {
        assert_eq!(tools::Tool::Uv.requirement(), format!("uv=={}", tools::UV_VERSION));
        assert_eq!(tools::Tool::Poetry.requirement(), "poetry");
    }

    #[test]
    fn installer_choice() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(choose_installer(d.path(), false), Installer::Nothing);
        std::fs::write(d.path().join("pyproject.toml"), "[project]\nname='x'\n").unwrap();
        assert_eq!(choose_installer(d.path(), false), Installer::Nothing);
        std::fs::write(d.path().join("pyproject.toml"), "[build-system]\nrequires=['hatchling']\n").unwrap();
        assert_eq!(choose_installer(d.path(), true), Installer::Project);
        std::fs::write(d.path().join("uv.lock"), "").unwrap();
        assert_eq!(choose_installer(d.path(), false), Installer::UvLock);
        std::fs::write(d.path().join("requirements.txt"), "").unwrap();
        assert_eq!(choose_installer(d.path(), false), Installer::Pip);
        assert_eq!(choose_installer(d.path(), true), Installer::Uv);
    }
}
