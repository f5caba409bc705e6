//! Builds: turn a pushed commit into a release dir and a slug.
//!
//! The release dir is built at its final path (`releases/<app>/<build>`) because virtualenvs
//! hard-code absolute paths. A failed build removes everything it wrote; a build that was
//! killed outright leaves a dir no build row points at, which the next build of the app
//! removes (see `deploy`). Nothing here touches the database: the caller records the build
//! and its release in one transaction once this returned successfully.

pub mod framework;
pub mod inputs;
pub mod interpreter;
pub mod nltk;
pub mod output;
pub mod pipfile;
pub mod probes;
pub mod python;
pub mod requirements;
pub mod slug;
pub mod slugignore;
pub mod tools;
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
    /// A build input that leads out of the build dir (see `inputs`).
    #[error("{0}")]
    Input(String),
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
    /// Privileged mode: the app's user, whom its commands run as (see [`Jail`]); None in
    /// single-user mode.
    pub user: Option<&'a crate::users::AppUser>,
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
    /// Dependency environments this build made (`envs`: possibly sealed already).
    envs: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.keep {
            for p in &self.paths {
                crate::home::remove_or_warn(p);
            }
            for env in &self.envs {
                if let Err(e) = crate::envs::remove(env) {
                    // Unsealed, it is garbage the app's next build of that key removes.
                    output::warn(&format!("removing {}: {e}", env.display()));
                }
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
    let mut cleanup = Cleanup { paths: vec![dir.clone(), slug_path.clone()], envs: Vec::new(), keep: false };
    std::fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;

    git::export_commit(req.repo, req.commit, &dir, git::ExportLimits::new(req.settings.max_build_bytes))?;
    inputs::check(&dir)?;
    let procfile = process_types(&dir)?;
    let stack = detect(&dir)?;
    let export = started.elapsed();
    let env_dir = write_env_dir(req, &id).map_err(io_err("creating ENV_DIR"))?;
    let jail = Jail::for_build(req, &dir, &env_dir.0, &id).map_err(io_err("creating the build's tmp dir"))?;
    jail.lend(&dir).map_err(io_err(format!("handing {} to the app's uid", dir.display())))?;
    compile_hook(req, &dir, &env_dir.0, "bin/pre_compile", deadline, &jail)?;
    inputs::check(&dir)?; // again: the hook may have written links
    if stack == Stack::Python {
        // After the hook, as Heroku: what pre_compile writes counts too.
        if let Some(why) = existing_environment(&dir).or_else(|| unsupported_package_manager(&dir)) {
            return Err(BuildError::Detect(why));
        }
        if req.user.is_some() {
            // Lent to the app with the rest: `envs::link` adds the venv's link to it, which
            // the app's uid must pass through.
            let dot = dir.join(".slipway");
            crate::users::with_root(|| dot_slipway(&dot))
                .and_then(|r| r)
                .and_then(|()| jail.lend(&dot))
                .map_err(io_err("creating .slipway"))?;
        }
    }
    let deps = match stack {
        Stack::Python => {
            let env = python::build(req, &dir, deadline, &jail)?;
            if env.fresh {
                cleanup.envs.push(env.path.clone());
            }
            Some(env)
        }
        Stack::Generic => {
            output::step("No Python files found: building a generic app (code only)");
            None
        }
    };
    // post_compile may add to an environment this build made (as on Heroku), never to a
    // shared one.
    let hook_jail = deps.as_ref().map(|env| {
        let access = if env.fresh { crate::sandbox::Access::ReadWrite } else { crate::sandbox::Access::Read };
        jail.with(&env.path, access)
    });
    compile_hook(req, &dir, &env_dir.0, "bin/post_compile", deadline, hook_jail.as_ref().unwrap_or(&jail))?;
    // The app's last command ran: its release and environment are the platform's again.
    jail.give_back().map_err(io_err("taking the build's files back from the app's uid"))?;
    if let Some(env) = deps.as_ref().filter(|e| e.fresh) {
        let env_jail = jail.with(&env.path, crate::sandbox::Access::ReadWrite);
        python::Modules::record(&env.path, &env_jail)
            .and_then(|()| crate::envs::seal(&env.path))
            .map_err(io_err(format!("sealing {}", env.path.display())))?;
    }
    let deps_key = deps.map(|e| e.key);
    inputs::check_commands(&dir, &procfile).map_err(BuildError::Input)?;

    output::step("Discovering process types");
    let types: Vec<&str> = procfile.processes.keys().map(String::as_str).collect();
    match procfile.source.as_deref().and_then(|s| s.strip_prefix("detected ")) {
        Some(framework) => output::detail(&format!("Default types for {framework} -> {}", types.join(", "))),
        None => output::detail(&format!("Procfile declares types -> {}", types.join(", "))),
    }

    if let Some(text) = inputs::read_opt(&dir, ".slugignore")? {
        let removed =
            slugignore::apply(&dir, &slugignore::parse(&text)).map_err(io_err("applying .slugignore"))?;
        output::step(&format!("Removed {removed} path(s) listed in .slugignore"));
    }
    // The environment's entries come from its kept part when it has one (see `slug`).
    let part = deps_key.as_ref().map(|key| slug::EnvPart::of(&req.home.envs(req.app), key));
    let bound = slug::packed_size_bound_reusing(&dir, part.as_ref()).map_err(io_err("measuring the slug"))?;
    let packing = if bound <= req.settings.max_slug_bytes {
        // It cannot be over the limit: pack it while the release goes live.
        output::step("Compressing the slug while the release goes live");
        slug::Packing::start(dir.clone(), slug_path.clone(), part).map_err(io_err("packing the slug"))?
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
    jail: &Jail,
) -> Result<(), BuildError> {
    if !inputs::is_file(dir, script) {
        return Ok(());
    }
    let path = crate::fsutil::path_beneath(dir, script).map_err(|e| BuildError::Input(e.to_string()))?;
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
    // The app's file in privileged mode: never through a link, and root's to chmod in a worker.
    let privileged = jail.app_user().is_some();
    let mut c = crate::users::root_if_privileged(|| hook_command(&path, privileged))
        .and_then(|r| r)
        .map_err(io_err(format!("reading {script}")))?;
    c.env_clear().envs(env).current_dir(dir);
    run_step(script, c, deadline, jail).map_err(|e| match e {
        BuildError::Command { status, .. } => BuildError::Hook { script: script.to_string(), status },
        other => other,
    })
}

/// The command that runs a hook: the script itself when it starts with a shebang (made
/// executable first, as Heroku does), else `bash SCRIPT`. With `no_follow`, a link at `path`
/// is refused (its mode is changed through the file opened, not by name).
fn hook_command(path: &Path, no_follow: bool) -> io::Result<Command> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let flags = if no_follow { libc::O_NOFOLLOW } else { 0 };
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    let mut head = [0u8; 2];
    let n = std::io::Read::read(&mut file, &mut head)?;
    if n == 2 && &head == b"#!" {
        let mut perms = file.metadata()?.permissions();
        perms.set_mode(perms.mode() | 0o111);
        file.set_permissions(perms)?;
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
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let tmp = req.home.root().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    // Privileged mode: passable by the app's uid, to its TMPDIR and ENV_DIR (see `Jail`).
    let mode = if req.user.is_some() { 0o711 } else { 0o700 };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    let prefix = format!("env-{}.", req.app.as_str());
    for stale in std::fs::read_dir(&tmp)?.filter_map(Result::ok) {
        if stale.file_name().to_string_lossy().starts_with(&prefix) {
            crate::home::remove_or_warn(&stale.path());
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
            crate::fsutil::write_atomic(&guard.0.join(key), value.as_bytes(), 0o600)?;
        }
    }
    if let Some(user) = req.user {
        // The app's uid reads it through its group; it stays the platform's, which removes it.
        let owner = nix::unistd::geteuid().as_raw();
        crate::users::with_root(|| crate::users::take_back(&guard.0, owner, user.gid))??;
    }
    Ok(guard)
}

/// Removes ENV_DIR when the build ends.
struct EnvDir(PathBuf);

/// A platform step's own `HOME`, `TMPDIR` and caches ([`platform_scratch`]), removed when it
/// drops.
struct Scratch(PathBuf);

impl Scratch {
    fn new(path: &Path, command: &mut Command) -> io::Result<Scratch> {
        crate::home::remove_if_present(path)?;
        std::fs::create_dir(path)?;
        for key in ["HOME", "TMPDIR", "XDG_CACHE_HOME", "PIP_CACHE_DIR", "UV_CACHE_DIR", "POETRY_CACHE_DIR"] {
            command.env(key, path);
        }
        Ok(Scratch(path.to_path_buf()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::home::remove_or_warn(&self.0);
    }
}

/// The release's `.slipway` dir when the app has none (one that is not a dir is refused later,
/// by `envs::link`).
fn dot_slipway(dot: &Path) -> io::Result<()> {
    match std::fs::create_dir(dot) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// How every build command runs: confined by the build's sandbox (`sandbox::build_policy`),
/// with `TMPDIR` its own tmp dir (`<home>/tmp/build-<app>.<build id>`, 0700, removed when the
/// build ends; one left by a build killed outright is removed by the app's next build).
///
/// In privileged mode (see `crate::users`) the app's commands run as the app's uid: the jail
/// carries its user, [`run_step`] drops to it, and what the app must write is handed to it
/// first — its cache and TMPDIR for good, the build dir and a new environment only until
/// [`Jail::give_back`]. A platform step (installing a server-wide tool, an interpreter) runs
/// in a jail from [`Jail::for_platform`]: as this process's own user, never the app's.
pub struct Jail {
    pub policy: crate::sandbox::Policy,
    tmp: PathBuf,
    /// Only the original removes the tmp dir (not the copies made by [`Jail::with`]).
    owns_tmp: bool,
    /// Who the app's commands run as (privileged mode); None in single-user mode.
    user: Option<crate::users::AppUser>,
    /// A platform step's jail: it runs as this process's user and writes this server-wide
    /// dir, opened to every app's builds (read-only) once the step succeeded.
    platform: Option<PathBuf>,
    /// What was lent to the app (build dir, environment) and must be given back; shared by
    /// the copies of the jail.
    lent: std::rc::Rc<std::cell::RefCell<Vec<PathBuf>>>,
}

impl Jail {
    fn for_build(req: &BuildRequest<'_>, dir: &Path, env_dir: &Path, id: &str) -> io::Result<Jail> {
        use crate::sandbox::{self, canonical};
        use std::os::unix::fs::DirBuilderExt;
        let parent = req.home.root().join("tmp");
        let prefix = format!("build-{}.", req.app.as_str());
        for stale in std::fs::read_dir(&parent)?.filter_map(Result::ok) {
            if stale.file_name().to_string_lossy().starts_with(&prefix) {
                // The app's own when it ran as its uid: root's to remove in a worker.
                crate::users::root_if_privileged(|| crate::home::remove_if_present(&stale.path()))??;
            }
        }
        let tmp = parent.join(format!("{prefix}{id}"));
        std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
        // A rule needs its dir to exist when the sandbox is made.
        std::fs::create_dir_all(req.home.cache(req.app).join("home"))?;
        std::fs::create_dir_all(req.home.tools())?;
        let mut jail = Jail {
            policy: sandbox::Policy::default(),
            tmp,
            owns_tmp: true,
            user: req.user.cloned(),
            platform: None,
            lent: Default::default(),
        };
        if let Some(user) = req.user {
            // Made as this process's user (the platform), which makes environments in it.
            std::fs::create_dir_all(req.home.envs(req.app))?;
            let platform_gid = nix::unistd::getegid().as_raw();
            crate::users::with_root(|| open_to_app(req, &jail.tmp, user, platform_gid))??;
        }
        let paths = sandbox::BuildPaths {
            home: canonical(req.home.root()),
            build_dir: canonical(dir),
            cache: canonical(&req.home.cache(req.app)),
            tmp: canonical(&jail.tmp),
            env_dir: canonical(env_dir),
            tools: build_tools(req),
        };
        jail.policy = sandbox::build_policy(&paths, &sandbox::list_dir);
        Ok(jail)
    }

    /// This jail with `path` also reachable with `access`.
    pub fn with(&self, path: &Path, access: crate::sandbox::Access) -> Jail {
        let mut policy = self.policy.clone();
        policy.rules.push(crate::sandbox::Rule { path: crate::sandbox::canonical(path), access });
        Jail {
            policy,
            tmp: self.tmp.clone(),
            owns_tmp: false,
            user: self.user.clone(),
            platform: self.platform.clone(),
            lent: self.lent.clone(),
        }
    }

    /// For a platform step that writes the server-wide `dir` (a tool of `cache/.tools`, the
    /// installed interpreters): this jail with `dir` writable, run as this process's own user
    /// (never the app's: an app must never write what every app's builds run), and in
    /// privileged mode `dir` opened to every uid read-only once the step succeeded.
    pub fn for_platform(&self, dir: &Path) -> Jail {
        let jail = self.with(dir, crate::sandbox::Access::ReadWrite);
        let mut jail = match self.user {
            Some(_) => jail.with(&platform_scratch(dir), crate::sandbox::Access::ReadWrite),
            None => jail,
        };
        jail.platform = Some(dir.to_path_buf());
        jail
    }

    /// Who the app's commands run as: None in single-user mode.
    pub fn app_user(&self) -> Option<&crate::users::AppUser> {
        self.user.as_ref()
    }

    /// Who this jail's commands run as: the app's user, but not for a platform step.
    fn runs_as(&self) -> Option<&crate::users::AppUser> {
        self.user.as_ref().filter(|_| self.platform.is_none())
    }

    /// Lends `path` (and everything in it) to the app until [`Jail::give_back`]: the build dir,
    /// an environment being made. Nothing to do in single-user mode.
    pub fn lend(&self, path: &Path) -> io::Result<()> {
        let Some(user) = &self.user else { return Ok(()) };
        let platform_gid = nix::unistd::getegid().as_raw();
        crate::users::with_root(|| crate::users::lend_tree(path, user.uid, platform_gid))??;
        self.lent.borrow_mut().push(path.to_path_buf());
        Ok(())
    }

    /// Writes `bytes` to `path` in the app's cache for the app (the Pipfile.lock's
    /// requirements): as root in privileged mode (the cache is the app's), then the app's with
    /// [`crate::users::lent_mode`].
    pub fn write_for_app(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let Some(user) = &self.user else { return crate::fsutil::write_atomic(path, bytes, 0o600) };
        let platform_gid = nix::unistd::getegid().as_raw();
        crate::users::with_root(|| {
            crate::fsutil::write_atomic(path, bytes, 0o600)?;
            crate::users::lend_tree(path, user.uid, platform_gid)
        })?
    }

    /// After the app's last command: kills what it left running in the build's cgroup, then
    /// takes back everything lent to it ([`crate::users::take_back`]: owned by this process's
    /// effective uid again, readable by the app's group, writable by nobody else), so the app
    /// cannot change its release nor its environment once built. Also done when the jail
    /// drops (a failed build), before the build's outputs are removed.
    pub fn give_back(&self) -> io::Result<()> {
        let Some(user) = &self.user else { return Ok(()) };
        let lent: Vec<PathBuf> = self.lent.borrow_mut().drain(..).collect();
        if lent.is_empty() {
            return Ok(());
        }
        crate::job::kill_strays();
        let owner = nix::unistd::geteuid().as_raw();
        crate::users::with_root(|| {
            lent.iter().try_for_each(|path| match crate::users::take_back(path, owner, user.gid) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            })
        })?
    }
}

/// Where a platform step writing `dir` keeps its `HOME`, `TMPDIR` and caches in privileged mode
/// (not the app's: it would find files it cannot change in them): `.platform-<pid>` beside
/// `dir`, removed after the step.
fn platform_scratch(dir: &Path) -> PathBuf {
    dir.parent().unwrap_or(dir).join(format!(".platform-{}", std::process::id()))
}

/// Privileged mode, as root: what the app's uid needs before its first command. The home,
/// `cache/`, `releases/` and `envs/` passable; `tmp/` passable (0711: each dir in it is its
/// owner's); `releases/<app>` and `envs/<app>` open to its group; its TMPDIR and its cache its
/// own (the cache for good: handed once); `cache/.tools` passable (not listable), and each
/// tool in it readable by every uid ([`crate::users::open_tree`], for tools installed before).
fn open_to_app(
    req: &BuildRequest<'_>,
    tmp: &Path,
    user: &crate::users::AppUser,
    platform_gid: u32,
) -> io::Result<()> {
    use crate::users::{chown_tree, hand_tree, open_app_dir, open_passage};
    use std::os::unix::fs::PermissionsExt;
    let home = req.home.root();
    open_passage(home)?;
    std::fs::set_permissions(home.join("tmp"), std::fs::Permissions::from_mode(0o711))?;
    // TMPDIR: the app's alone; the cache: the app's, readable by the platform's group.
    chown_tree(tmp, user.uid, user.gid)?;
    open_app_dir(home, &req.home.releases(req.app), user.gid)?;
    open_app_dir(home, &req.home.envs(req.app), user.gid)?;
    open_passage(&home.join("cache"))?;
    hand_tree(&req.home.cache(req.app), user.uid, platform_gid)?;
    let tools = req.home.tools();
    std::fs::set_permissions(&tools, std::fs::Permissions::from_mode(0o711))?;
    for entry in std::fs::read_dir(&tools)? {
        let entry = entry?;
        let name = entry.file_name();
        // Seeds are copied by the platform, the interpreter probes read by it: both stay closed.
        if name != "seeds" && name != "interpreters" && !name.to_string_lossy().starts_with('.') {
            crate::users::open_tree(&entry.path(), false)?;
        }
    }
    Ok(())
}

impl Drop for Jail {
    fn drop(&mut self) {
        if self.owns_tmp {
            if let Err(e) = self.give_back() {
                output::warn(&format!("taking the build's files back from the app: {e}"));
            }
            // A leftover is removed by the app's next build; say so rather than drop it silently.
            match crate::users::root_if_privileged(|| crate::home::remove_if_present(&self.tmp)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) => output::warn(&format!(
                    "could not remove {} ({e}); the app's next build removes it",
                    self.tmp.display()
                )),
            }
        }
    }
}

/// Where builds find interpreters and tools (read and execute only): the `python_dirs`
/// setting, pyenv roots, uv's managed Pythons, `cache/.tools`, and the `python` setting, `uv`
/// and `poetry` found on PATH (with the prefix each lives in).
fn build_tools(req: &BuildRequest<'_>) -> Vec<PathBuf> {
    use crate::sandbox::canonical;
    let roots = interpreter::Roots::for_this_user(&req.settings.python_dirs);
    let mut tools = roots.python_dirs.clone();
    tools.extend(roots.pyenv.iter().filter(|p| p.is_dir()).cloned());
    if let Some(home) = &roots.home {
        tools.push(home.join(".local/share/uv/python"));
    }
    tools.push(req.home.tools());
    for name in [req.settings.python.as_str(), "uv", "poetry"] {
        let found = if name.contains('/') { Some(PathBuf::from(name)) } else { python::find_on_path(name) };
        if let Some(exe) = found.filter(|p| p.exists()).map(|p| canonical(&p)) {
            tools.extend(python_prefix(&exe));
            tools.push(exe);
        }
    }
    tools.iter().map(|t| canonical(t)).collect()
}

/// `PREFIX` of an executable at `PREFIX/bin/NAME` (never `/`: the system rules cover `/bin`).
pub fn python_prefix(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    let prefix = (bin.file_name()? == "bin").then(|| bin.parent().map(Path::to_path_buf)).flatten()?;
    prefix.parent().is_some().then_some(prefix)
}

impl Drop for EnvDir {
    fn drop(&mut self) {
        crate::home::remove_or_warn(&self.0);
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
    match inputs::read_opt(dir, "Procfile")? {
        Some(text) => Ok(Procfile { source: Some("Procfile".into()), ..Procfile::parse(&text)? }),
        None => match framework::detect(&framework::Dir(dir)) {
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
/// without a lock file (and, unlike Heroku, without a build backend slipway could install the
/// project with), is refused naming the files that are supported. Unlike Heroku, an app with
/// neither (only `.py` files: the standard library) builds.
pub fn unsupported_package_manager(dir: &Path) -> Option<String> {
    let has = |f: &str| dir.join(f).is_file();
    if ["requirements.txt", "Pipfile.lock", "poetry.lock", "uv.lock"].iter().any(|f| has(f)) {
        return None;
    }
    let pyproject = inputs::read_opt(dir, "pyproject.toml").ok().flatten();
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
    if pyproject.is_some() {
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
            "Couldn't find any supported Python package manager files: the app has a pyproject.toml, \
             but a Python app must have either a 'requirements.txt', 'Pipfile.lock', \
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
/// config vars (as on Heroku) unless the operator turned them off with `build_config = 0`, the
/// system CA store for pip and uv ([`tls_env`]) and last the operator's `build_env` setting.
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
    env.extend(server_env(req.settings, &req.home.cache(req.app).join("home")));
    env
}

/// What every build command gets from the server, over the app's config vars: a fixed `PATH`,
/// `HOME`, `LANG`, the proxy, index and CA variables slipway itself was started with, the
/// system's CA bundle ([`tls_env`]), and last the `build_env` setting.
pub fn server_env(settings: &crate::settings::Settings, home: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("HOME".into(), home.display().to_string());
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
        "UV_DEFAULT_INDEX",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        if let Ok(v) = std::env::var(key) {
            env.insert(key.into(), v);
        }
    }
    let bundle = SYSTEM_CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
    for (k, v) in tls_env(&env, bundle) {
        env.insert(k, v);
    }
    for (k, v) in &settings.build_env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// The environment of a platform step (a server-wide tool or interpreter, the seed venv): in
/// privileged mode [`build_env`] without the app's config vars, which must not steer what every
/// app's builds then run (a `PIP_INDEX_URL` of its own); in single-user mode [`build_env`].
pub fn platform_env(req: &BuildRequest<'_>) -> BTreeMap<String, String> {
    if req.user.is_none() {
        return build_env(req);
    }
    let no_config = BTreeMap::new();
    build_env(&BuildRequest { config: &no_config, ..*req })
}

/// Where distributions keep the system's CA bundle (Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// What makes pip and uv trust the system's CA store (and so a TLS-intercepting proxy whose CA
/// the operator installed there): uv's `UV_SYSTEM_CERTS=1` (uv ignores the store otherwise; the
/// older name `UV_NATIVE_TLS` makes current uv print a deprecation warning), and `SSL_CERT_FILE`
/// pointing at the system bundle unless the environment already names one (every uv and pip
/// version reads it).
/// The `build_env` setting is applied after this and may override either.
pub fn tls_env(env: &BTreeMap<String, String>, system_bundle: Option<&Path>) -> Vec<(String, String)> {
    let mut out = vec![("UV_SYSTEM_CERTS".to_string(), "1".to_string())];
    if let Some(bundle) = system_bundle.filter(|_| !env.contains_key("SSL_CERT_FILE")) {
        out.push(("SSL_CERT_FILE".to_string(), bundle.display().to_string()));
    }
    out
}

/// Runs one build command in its own process group, relaying its output indented, within
/// what is left of the build's time; a timeout or an interrupted push kills the whole group.
/// In privileged mode it runs as the app's uid (`USER` and `LOGNAME` its name), or, in a
/// platform step's jail, as this process's user (the dir it wrote then opened to every uid).
pub fn run_step(step: &str, mut command: Command, deadline: Instant, jail: &Jail) -> Result<(), BuildError> {
    let left = deadline.saturating_duration_since(Instant::now());
    command.env("TMPDIR", &jail.tmp);
    if let Some(user) = jail.runs_as() {
        command.env("USER", &user.name).env("LOGNAME", &user.name);
    }
    let scratch = match (&jail.platform, &jail.user) {
        (Some(dir), Some(_)) => {
            Some(Scratch::new(&platform_scratch(dir), &mut command).map_err(|source| BuildError::Io {
                action: format!("creating {}", platform_scratch(dir).display()),
                source,
            })?)
        }
        _ => None,
    };
    let job = crate::job::Job::new(command, jail.runs_as());
    let result = crate::job::run(job, Some(&jail.policy), Some(left), |line| {
        output::detail(line.rsplit('\r').next().unwrap_or(line))
    });
    drop(scratch);
    match result {
        Ok(()) => match (&jail.platform, &jail.user) {
            (Some(dir), Some(_)) => crate::users::open_tree(dir, true).map_err(|source| BuildError::Io {
                action: format!("opening {} to the apps", dir.display()),
                source,
            }),
            _ => Ok(()),
        },
        Err(crate::job::JobError::Failed(code)) => {
            Err(BuildError::Command { step: step.to_string(), status: format!("exit {code}") })
        }
        Err(crate::job::JobError::TimedOut(_)) => Err(BuildError::TimedOut),
        Err(crate::job::JobError::Cancelled) => Err(BuildError::Cancelled),
        Err(crate::job::JobError::Spawn(source)) => {
            Err(BuildError::Io { action: format!("starting {step}"), source })
        }
        Err(crate::job::JobError::Sandbox(e)) => {
            Err(BuildError::Io { action: format!("starting {step}"), source: io::Error::other(e) })
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
    fn interpreter_prefixes() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/root/.pyenv/versions/3.12.1/bin/python3.12", Some("/root/.pyenv/versions/3.12.1")),
            ("/usr/bin/python3", Some("/usr")),
            ("/bin/python3", None),
            ("/opt/py/python3", None),
        ];
        for (exe, want) in cases {
            assert_eq!(python_prefix(Path::new(exe)), want.map(PathBuf::from), "{exe}");
        }
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
                Some("Couldn't find any supported"),
            ),
            (
                "pyproject without dependencies",
                &[("pyproject.toml", "[project]\nname = 'x'\ndependencies = []\n")],
                Some("Couldn't find any supported"),
            ),
            (
                "an empty pyproject",
                &[("pyproject.toml", ""), ("subdir/some-file", "")],
                Some("pyproject.toml, subdir/"),
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
    fn builds_trust_the_system_ca_store() {
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let none = BTreeMap::new();
        let given = BTreeMap::from([("SSL_CERT_FILE".to_string(), "/opt/corp.pem".to_string())]);
        type Case<'a> = (&'a str, &'a BTreeMap<String, String>, Option<&'a Path>, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (
                "bundle present",
                &none,
                Some(bundle),
                &[("UV_SYSTEM_CERTS", "1"), ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")],
            ),
            ("no bundle", &none, None, &[("UV_SYSTEM_CERTS", "1")]),
            ("the server names its own", &given, Some(bundle), &[("UV_SYSTEM_CERTS", "1")]),
        ];
        for (what, env, bundle, want) in cases {
            let got = tls_env(env, *bundle);
            let want: Vec<(String, String)> =
                want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(got, want, "{what}");
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
