//! The filesystem sandbox: builds, the release phase and dynos run confined with Landlock.
//!
//! What each may touch is decided here by pure functions ([`build_policy`], [`dyno_policy`])
//! over the paths involved; the Landlock calls happen only in [`confine`], which turns a
//! [`Policy`] into a ruleset in the parent and enforces it in the child between fork and exec.
//!
//! - A build reads and executes the system (`/usr`, `/bin`, `/lib*`, `/etc`, `/opt`, `/sys`,
//!   the system-wide entries of `/proc`), the interpreters and the tools; reads and writes its build dir, the app's cache
//!   and a tmp dir of its own (`TMPDIR`); reads its `ENV_DIR`. It binds no TCP port but an
//!   ephemeral one.
//!   A build also reads the app's shared environment it reuses (`envs/<app>/<key>`), or reads
//!   and writes the one it makes, until it is sealed (rules added by `build::Jail::with`).
//! - A dyno (and a one-off `run` dyno, and the release phase) reads the system, its interpreter,
//!   the shared environment its `.slipway/venv` links to ([`interpreter_dirs`]: that one only)
//!   and its release dir, and reads and writes only its
//!   private dir (`dynos/<app>/<key>/`: `app/`, a copy of the release's files that is its
//!   working directory and `HOME`, and `tmp/`, its `TMPDIR`), discarded when it ends. A web
//!   dyno binds only its `PORT`; any dyno may bind an ephemeral port.
//! - Every confined process is scoped (Landlock ABI 6): it cannot signal, nor connect to an
//!   abstract unix socket of, a process outside its own domain; Landlock itself denies it
//!   ptrace of such processes, but (verified on 6.18) not their `/proc/<pid>/environ`, so no
//!   per-process dir of `/proc` is granted but the main process's own ([`proc_entry_shared`]).
//! - No sandbox may create device nodes, and each sets `no_new_privs` (also without Landlock),
//!   which is how the daemon recognises and refuses them on its control socket.
//!
//! Nothing else is reachable: not `slipway.db`, `run/` (the control socket is refused by the
//! daemon, see `daemon::server`), `.ssh/`, `repos/`, logs, nor other apps' dirs. Landlock rules
//! only ever grant, so a read rule over a directory that holds the home (e.g. a home under
//! `/opt`) would grant the home too: such a rule is split into its entries, leaving out the
//! branch that leads to the home ([`guard_home`]).
//!
//! Where the kernel has no Landlock, commands run unconfined; `slipway status` says so.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a rule lets the sandboxed process do beneath a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read files, list directories, execute.
    Read,
    /// Read and write a device file (no ioctl but on `/dev/tty`).
    Device,
    /// Everything: create, write, remove, rename.
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub access: Access,
}

/// A complete sandbox: what may be reached beneath which paths, and which TCP ports may be
/// bound (`0` stands for an ephemeral port). Signals and abstract sockets are always scoped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub bind_ports: Vec<u16>,
}

/// The system, readable (and executable) by every confined process.
pub const SYSTEM: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys", "/proc"];

/// Devices every confined process may open for reading and writing.
pub const DEVICES: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];

/// What a build may reach.
pub struct BuildPaths {
    /// The home (never reachable as a whole).
    pub home: PathBuf,
    pub build_dir: PathBuf,
    /// `cache/<app>` (the build's `HOME`, pip/uv caches).
    pub cache: PathBuf,
    /// The build's own tmp dir (`TMPDIR`).
    pub tmp: PathBuf,
    pub env_dir: PathBuf,
    /// Interpreter prefixes and roots (pyenv, `python_dirs`, uv's), `cache/.tools`, tools.
    pub tools: Vec<PathBuf>,
}

/// What a dyno (or a one-off dyno, or the release phase) may reach.
pub struct DynoPaths {
    pub home: PathBuf,
    pub release_dir: PathBuf,
    /// The dyno's private dir (`dynos/<app>/<key>`), its working directory and tmp inside.
    pub private_dir: PathBuf,
    /// The interpreter prefix and the venv's real path when it lives outside the release dir.
    pub interpreter: Vec<PathBuf>,
    /// `PORT` for web and one-off dynos.
    pub port: Option<u16>,
    /// `/dev/shm` read-write (POSIX shared memory and semaphores: Python's `multiprocessing`
    /// locks, gunicorn's `--worker-tmp-dir /dev/shm`): only for a dyno running as its app's own
    /// uid, where the mode bits of what it creates there (0600) keep other apps out. Run as the
    /// daemon's user, every app shares one uid and /dev/shm would be a channel between them.
    pub shm: bool,
}

/// Shared memory, for dynos with a uid of their own ([`DynoPaths::shm`]).
pub const SHM: &str = "/dev/shm";

fn rule(path: impl Into<PathBuf>, access: Access) -> Rule {
    Rule { path: path.into(), access }
}

fn system_rules() -> Vec<Rule> {
    let mut rules: Vec<Rule> = SYSTEM.iter().map(|p| rule(*p, Access::Read)).collect();
    rules.extend(DEVICES.iter().map(|p| rule(*p, Access::Device)));
    rules
}

/// The sandbox of every build command (hooks, venv creation, installers, collectstatic).
pub fn build_policy(p: &BuildPaths, children: &dyn Fn(&Path) -> Vec<PathBuf>) -> Policy {
    let mut rules = system_rules();
    rules.extend(p.tools.iter().map(|t| rule(t, Access::Read)));
    rules.push(rule(&p.env_dir, Access::Read));
    for dir in [&p.build_dir, &p.cache, &p.tmp] {
        rules.push(rule(dir, Access::ReadWrite));
    }
    Policy { rules: guard_home(rules, &p.home, children), bind_ports: vec![0] }
}

/// The sandbox of a dyno: read the system, its interpreter and release dir; write only its
/// private dir; bind only its `PORT` (and ephemeral ports).
pub fn dyno_policy(p: &DynoPaths, children: &dyn Fn(&Path) -> Vec<PathBuf>) -> Policy {
    let mut rules = system_rules();
    rules.extend(p.interpreter.iter().map(|t| rule(t, Access::Read)));
    rules.push(rule(&p.release_dir, Access::Read));
    rules.push(rule(&p.private_dir, Access::ReadWrite));
    if p.shm && Path::new(SHM).is_dir() {
        rules.push(rule(SHM, Access::ReadWrite));
    }
    let mut bind_ports = vec![0];
    bind_ports.extend(p.port);
    Policy { rules: guard_home(rules, &p.home, children), bind_ports }
}

/// Read rules over the home or one of its ancestors would grant the whole home (Landlock only
/// grants): each is replaced by rules for its entries (`children`), leaving out the one on the
/// way to the home, level by level. Rules beneath the home (build dir, cache, release dir,
/// private dir) are kept as they are.
pub fn guard_home(rules: Vec<Rule>, home: &Path, children: &dyn Fn(&Path) -> Vec<PathBuf>) -> Vec<Rule> {
    let mut out = Vec::new();
    for r in rules {
        if !home.starts_with(&r.path) {
            out.push(r);
            continue;
        }
        // r.path is the home or one of its ancestors: grant its other entries only.
        let mut dir = r.path.clone();
        while dir != home {
            let Some(next) = home.strip_prefix(&dir).ok().and_then(|rest| rest.components().next()) else {
                break;
            };
            let on_the_way = dir.join(next);
            for child in children(&dir) {
                if child != on_the_way {
                    out.push(Rule { path: child, access: r.access });
                }
            }
            dir = on_the_way;
        }
    }
    out
}

/// The widest access `policy` gives to `path` (None: denied). Paths are compared as given:
/// callers pass canonical paths, as Landlock follows them. A rule on `/proc` covers only its
/// system-wide entries ([`proc_entry_shared`]).
pub fn access(policy: &Policy, path: &Path) -> Option<Access> {
    let in_proc = path.strip_prefix("/proc").ok().and_then(|rest| rest.components().next());
    if in_proc.is_some_and(|first| !proc_entry_shared(&first.as_os_str().to_string_lossy())) {
        return None;
    }
    policy.rules.iter().filter(|r| path.starts_with(&r.path)).map(|r| r.access).max()
}

/// Whether `/proc/NAME` is system-wide information a confined process may read. Per-process
/// dirs (`/proc/<pid>`, and `self`/`thread-self`, links to them) are not: Landlock's ptrace
/// scoping keeps a sandbox from `/proc/<pid>/cwd` or `stack` of other processes, but on this
/// kernel not from their `environ` or `maps`, so the fs rules must. (A confined main process
/// gets its own `/proc/<pid>` back, see [`confine`].)
pub fn proc_entry_shared(name: &str) -> bool {
    !(name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) || name == "self" || name == "thread-self")
}

/// The interpreter's prefix from a venv's `pyvenv.cfg` text: `home = PREFIX/bin` → PREFIX.
pub fn venv_prefix(pyvenv_cfg: &str) -> Option<PathBuf> {
    let home = pyvenv_cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "home").then(|| PathBuf::from(value.trim()))
    })?;
    if !home.is_absolute() {
        return None;
    }
    let prefix =
        if home.file_name().is_some_and(|n| n == "bin") { home.parent()?.to_path_buf() } else { home };
    // Never the whole filesystem (`home = /bin`): the system rules cover that interpreter.
    (prefix.parent().is_some()).then_some(prefix)
}

// ---------------------------------------------------------------------------------------------
// The edge: Landlock, the filesystem.

/// Whether this kernel confines: the Landlock ABI it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Landlock(i32),
    Unavailable,
}

/// Asks the kernel which Landlock ABI it offers (`landlock_create_ruleset` with the version flag).
pub fn support() -> Support {
    // SAFETY: the documented version query: no attribute pointer, size 0, flag VERSION.
    let abi =
        unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    if abi >= 1 {
        Support::Landlock(abi as i32)
    } else {
        Support::Unavailable
    }
}

/// The one line `slipway status` prints about the sandbox.
pub fn status_line(support: Support) -> String {
    match support {
        Support::Landlock(abi) => format!("landlock ABI {abi} (builds and dynos confined)"),
        Support::Unavailable => {
            "unavailable: kernel without Landlock (builds and dynos run unconfined)".into()
        }
    }
}

/// The entries of a directory (for [`guard_home`]).
pub fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// The canonical form of a path, as Landlock sees it (the path itself when it does not exist).
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The interpreter dirs a dyno of `release_dir` needs: the prefix its venv was made from
/// (`pyvenv.cfg`) and the venv's real path when `.slipway/venv` is a link to elsewhere.
pub fn interpreter_dirs(release_dir: &Path) -> Vec<PathBuf> {
    let venv = release_dir.join(crate::build::python::VENV);
    let mut dirs = Vec::new();
    let real = canonical(&venv);
    if real != venv && !real.starts_with(canonical(release_dir)) {
        dirs.push(real.clone());
    }
    if let Some(prefix) =
        std::fs::read_to_string(real.join("pyvenv.cfg")).ok().as_deref().and_then(venv_prefix)
    {
        dirs.push(canonical(&prefix));
    }
    dirs
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("preparing the sandbox: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("making the dyno's private dir {path}: {source}")]
    PrivateDir { path: String, source: io::Error },
    #[error("{0}")]
    AppUser(io::Error),
}

/// Prepares `command` to run as a confined dyno (long-running, one-off or release phase) of
/// `release_dir`: makes its private dir `<dynos>/<key>` (`dynos` is `home.app_dynos(app)`),
/// runs it there (working directory and `HOME`: its `app/`; `TMPDIR`: its `tmp/`), confined by
/// [`dyno_policy`] with `port` bindable. The caller removes the returned dir when the dyno ended.
///
/// With a `user` (privileged mode, see [`crate::users`]) the dyno runs as that uid: its
/// private `app/` and `tmp/` are its own, the release dir is opened to its group read-only,
/// `USER`/`LOGNAME` name the app, and the process drops to the uid between fork and exec
/// (after the caller's earlier `pre_exec` steps, such as joining a cgroup; before Landlock).
pub fn prepare_dyno(
    home: &Path,
    dynos: &Path,
    key: &str,
    release_dir: &Path,
    port: Option<u16>,
    user: Option<&crate::users::AppUser>,
    command: &mut Command,
) -> Result<PrivateDir, SandboxError> {
    let private = PrivateDir::create(dynos, key, release_dir)
        .map_err(|source| SandboxError::PrivateDir { path: dynos.join(key).display().to_string(), source })?;
    if let Some(user) = user {
        if let Err(err) = hand_to(home, dynos, release_dir, &private, user) {
            discard(private);
            return Err(SandboxError::AppUser(err));
        }
        let (uid, gid) = (user.uid, user.gid);
        command.env("USER", &user.name).env("LOGNAME", &user.name);
        // The working dir is entered as the app's uid, after the drop: `current_dir` would be
        // entered before it, by a worker whose effective uid (the platform user's) may not
        // enter the app's own `app/`.
        let app_dir = match std::ffi::CString::new(private.app_dir().as_os_str().as_encoded_bytes()) {
            Ok(dir) => dir,
            Err(e) => {
                discard(private);
                return Err(SandboxError::AppUser(io::Error::new(io::ErrorKind::InvalidInput, e)));
            }
        };
        // SAFETY: drop_to and chdir are raw syscalls (async-signal-safe).
        unsafe {
            command.pre_exec(move || {
                crate::users::drop_to(uid, gid)?;
                if libc::chdir(app_dir.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        command.current_dir(private.app_dir());
    }
    command.env("HOME", private.app_dir()).env("TMPDIR", private.tmp());
    let paths = DynoPaths {
        home: canonical(home),
        release_dir: canonical(release_dir),
        private_dir: canonical(&private.root),
        interpreter: interpreter_dirs(release_dir),
        port,
        shm: user.is_some(),
    };
    if let Err(e) = confine(command, &dyno_policy(&paths, &list_dir)) {
        discard(private);
        return Err(e);
    }
    Ok(private)
}

/// Removes the private dir of a dyno that will not start; the error that matters is the one the
/// caller returns, so one that stays is only reported (the daemon's `remove_dead` collects it at
/// its next start).
fn discard(private: PrivateDir) {
    let root = private.root.clone();
    if let Err(e) = private.remove() {
        eprintln!("warning: could not remove {}: {e}", root.display());
    }
}

/// Gives a dyno's private dir to its app's uid (`app/`, `tmp/`; the dir itself and
/// `dynos/<app>` stay root's, open to the app's group to pass through) and lets its group read
/// the release. The home and `dynos/` become traversable (`o+x`).
fn hand_to(
    home: &Path,
    dynos: &Path,
    release_dir: &Path,
    private: &PrivateDir,
    user: &crate::users::AppUser,
) -> io::Result<()> {
    use crate::users::{chown_tree, open_passage};
    // The app's sealed environments (`envs/<app>/`, read-only to everyone who may pass; see
    // `crate::envs`): `envs/` passable, `envs/<app>` open to the app's group only.
    let releases = release_dir.parent().unwrap_or(release_dir);
    if let Some(app) = releases.file_name() {
        let envs = home.join("envs").join(app);
        if std::fs::symlink_metadata(&envs).is_ok_and(|m| m.is_dir()) {
            open_passage(&home.join("envs"))?;
            std::os::unix::fs::lchown(&envs, None, Some(user.gid))?;
            std::fs::set_permissions(&envs, std::fs::Permissions::from_mode(0o750))?;
        }
    }
    // The interpreter the release's venv was made from must be reachable by the app's uid
    // (a pyenv under root's 0700 home is not): say so rather than "python: not found".
    for dir in interpreter_dirs(release_dir) {
        if let Some(closed) = crate::users::first_closed(&dir, user.uid, user.gid) {
            return Err(io::Error::other(format!(
                "the app's uid {} cannot reach its Python {} ({} is closed to other users); install Python where every user may read it (e.g. /usr/local or /opt), or open that dir with chmod o+x",
                user.uid,
                dir.display(),
                closed.display()
            )));
        }
    }
    crate::users::open_release(home, releases, release_dir, user.gid)?;
    open_passage(dynos.parent().unwrap_or(home))?;
    for dir in [dynos, private.root.as_path()] {
        std::os::unix::fs::lchown(dir, None, Some(user.gid))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))?;
    }
    chown_tree(&private.app_dir(), user.uid, user.gid)?;
    chown_tree(&private.tmp(), user.uid, user.gid)
}

/// Makes `command` run confined by `policy`: the ruleset is built here (in the parent) and
/// enforced in the child just before exec. Paths that do not exist are left out. On a kernel
/// without Landlock (or with an older ABI) this confines as much as the kernel can, possibly
/// nothing.
pub fn confine(command: &mut Command, policy: &Policy) -> Result<(), SandboxError> {
    use landlock::{
        Access as _, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, Scope, ABI,
    };
    let fs_all = AccessFs::from_all(ABI::V9);
    // Handled but granted nowhere: no device node can be made (a root build could otherwise
    // mknod the disk in its build dir and read it raw).
    let writable = fs_all & !(AccessFs::MakeChar | AccessFs::MakeBlock);
    let read = AccessFs::from_read(ABI::V9);
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let mut ruleset = Ruleset::default()
        .handle_access(fs_all)?
        .handle_access(AccessNet::BindTcp)?
        .scope(Scope::from_all(ABI::V6))?
        .create()?;
    let mut paths: Vec<(PathBuf, Access)> = Vec::new();
    for r in &policy.rules {
        if r.path == Path::new("/proc") {
            // Its shared entries only (no links: they lead into per-process dirs).
            for entry in list_dir(&r.path) {
                let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                // The name first: most entries are processes, not worth a stat each.
                if proc_entry_shared(&name)
                    && !std::fs::symlink_metadata(&entry).map(|m| m.file_type().is_symlink()).unwrap_or(true)
                {
                    paths.push((entry, r.access));
                }
            }
        } else {
            paths.push((r.path.clone(), r.access));
        }
    }
    for (path, rule_access) in &paths {
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let Ok(fd) = PathFd::new(path) else { continue };
        let mut access = match rule_access {
            Access::Read => read,
            Access::ReadWrite => writable,
            Access::Device if path == Path::new("/dev/tty") => device | AccessFs::IoctlDev,
            Access::Device => device,
        };
        if !meta.is_dir() {
            access &= AccessFs::from_file(ABI::V9);
        }
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    for port in &policy.bind_ports {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
    }
    // None where the kernel has no Landlock: the process still gets no_new_privs, so the daemon
    // refuses its control connections all the same.
    let ruleset: Option<std::os::fd::OwnedFd> = ruleset.into();
    // SAFETY: between fork and exec only raw syscalls run (open, landlock_add_rule, close,
    // prctl, landlock_restrict_self); the ruleset was made in the parent.
    unsafe {
        command.pre_exec(move || restrict_child(ruleset.as_ref()));
    }
    Ok(())
}

/// In the child, before exec: gives the process its own `/proc/<pid>` (read only; it is not
/// known before the fork), sets `no_new_privs` and enforces the ruleset. Raw syscalls only.
fn restrict_child(ruleset: Option<&std::os::fd::OwnedFd>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }
    const RULE_PATH_BENEATH: libc::c_long = 1;
    const READ_FILE_AND_DIR: u64 = (1 << 2) | (1 << 3);
    if let Some(ruleset) = ruleset {
        // SAFETY: a NUL-terminated literal path; the fd is closed below.
        let own = unsafe { libc::open(c"/proc/self".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if own >= 0 {
            let attr = PathBeneathAttr { allowed_access: READ_FILE_AND_DIR, parent_fd: own };
            // SAFETY: attr lives across the call; the kernel copies it.
            unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset.as_raw_fd(),
                    RULE_PATH_BENEATH,
                    &attr as *const PathBeneathAttr,
                    0u32,
                );
                libc::close(own);
            }
        }
    }
    // SAFETY: plain prctl and landlock syscalls with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(ruleset) = ruleset {
            if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A dyno's private dir: `dynos/<app>/<key>/` holding `app/` (a copy of the release's files,
/// with `.slipway` a link to the release's own, read-only) and `tmp/`; next to it
/// `<key>.owner` names the process that owns it (`PID START`), so leftovers of owners that
/// died are found ([`remove_dead`]). Removed by [`PrivateDir::remove`].
pub struct PrivateDir {
    pub root: PathBuf,
    owner: PathBuf,
}

impl PrivateDir {
    /// Makes the private dir of `key` (e.g. the dyno's id) for `release_dir`, owned by this
    /// process. A leftover of the same key is replaced.
    pub fn create(dynos: &Path, key: &str, release_dir: &Path) -> io::Result<PrivateDir> {
        if dynos.starts_with(release_dir) {
            // The copy would copy itself.
            return Err(io::Error::other(format!("{} is inside the release dir", dynos.display())));
        }
        // Made by a root daemon on the platform user's home: the user's, as when its own
        // commands (a release phase) make it first.
        crate::fsutil::create_dir_all_owned(dynos)?;
        let root = dynos.join(key);
        let owner = dynos.join(format!("{key}.owner"));
        let me = std::process::id() as i32;
        let start = crate::daemon::process::start_time(me).unwrap_or(0);
        // The owner first: a dir without its owner file is garbage ([`remove_dead`]).
        let tmp = dynos.join(format!(".{key}.owner.{me}"));
        std::fs::write(&tmp, format!("{me} {start}\n"))?;
        std::fs::rename(&tmp, &owner)?;
        make_writable(&root);
        crate::home::remove_if_present(&root)?;
        let made = PrivateDir { root, owner };
        let filled = (|| {
            std::fs::create_dir(&made.root)?;
            std::fs::create_dir(made.tmp())?;
            std::fs::create_dir(made.app_dir())?;
            copy_tree(release_dir, &made.app_dir(), true)?;
            std::os::unix::fs::symlink(release_dir.join(".slipway"), made.app_dir().join(".slipway"))
        })();
        match filled {
            Ok(()) => Ok(made),
            Err(e) => {
                // The error that matters is the copy's; a leftover goes at the daemon's next start.
                let _ = made.remove();
                Err(e)
            }
        }
    }

    /// The working directory and `HOME`.
    pub fn app_dir(&self) -> PathBuf {
        self.root.join("app")
    }

    /// `TMPDIR`.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Discards the dir (then its owner file).
    pub fn remove(self) -> io::Result<()> {
        make_writable(&self.root);
        crate::home::remove_if_present(&self.root)?;
        crate::home::remove_if_present(&self.owner)
    }
}

/// A dyno may have taken write permission away from its own dirs; give it back (to the owner
/// only) so the tree can be removed. Never follows links: the dir is held by an `O_PATH |
/// O_NOFOLLOW` descriptor and changed through it, so a dir swapped for a link meanwhile is
/// not followed.
fn make_writable(dir: &Path) {
    use nix::fcntl::{open, OFlag};
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
    if !meta.is_dir() {
        return;
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        if let Ok(fd) = open(dir, flags, nix::sys::stat::Mode::empty()) {
            // chmod through the descriptor's /proc link reaches exactly that inode. A failure
            // shows up as the removal's error.
            let _ = std::fs::set_permissions(
                format!("/proc/self/fd/{fd}"),
                std::fs::Permissions::from_mode(0o700),
            );
            let _ = nix::unistd::close(fd);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            make_writable(&e.path());
        }
    }
}

/// Copies `from` into the existing dir `to`: regular files (with their modes, as real copies:
/// never hard links, which would let the dyno write the release's inodes), dirs and symlinks
/// (as they are); other kinds are left out. `top` leaves `.slipway` out.
fn copy_tree(from: &Path, to: &Path, top: bool) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if top && name == ".slipway" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst, false)?;
            let mode = std::fs::symlink_metadata(&src)?.permissions().mode();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode | 0o700))?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Removes the private dirs under `dynos` (`<home>/dynos`) whose owner is gone (or that have no
/// owner file), and owner files without a live owner. Returns how many dirs went.
pub fn remove_dead(dynos: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let Ok(apps) = std::fs::read_dir(dynos) else { return Ok(0) };
    for app in apps.filter_map(Result::ok) {
        let app_dir = app.path();
        if !app.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for entry in std::fs::read_dir(&app_dir)?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temp owner file `.KEY.owner.PID`: gone with its writer.
                let writer = name.rsplit('.').next().and_then(|p| p.parse::<i32>().ok());
                if writer.is_none_or(|pid| crate::daemon::process::start_time(pid).is_none()) {
                    crate::home::remove_if_present(&entry.path())?;
                }
                continue;
            }
            let key = name.strip_suffix(".owner").unwrap_or(&name);
            let owner = app_dir.join(format!("{key}.owner"));
            if owner_alive(&owner) {
                continue;
            }
            let dir = app_dir.join(key);
            if dir.exists() {
                removed += 1;
            }
            make_writable(&dir);
            crate::home::remove_if_present(&dir)?;
            crate::home::remove_if_present(&owner)?;
        }
    }
    Ok(removed)
}

fn owner_alive(owner: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(owner) else { return false };
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    match (words.next(), words.next()) {
        (Some(Ok(pid)), Some(Ok(start))) => crate::daemon::process::is_same_process(pid as i32, start),
        _ => false,
    }
}

/// Whether process `pid` was confined by slipway (or anything else): it runs with
/// `no_new_privs`, which every Landlock sandbox sets and no process can clear. The daemon
/// refuses control connections from such processes.
pub fn is_confined(pid: i32) -> io::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(no_new_privs(&status))
}

/// `NoNewPrivs: 1` in a `/proc/<pid>/status` text.
pub fn no_new_privs(status: &str) -> bool {
    status.lines().any(|l| l.strip_prefix("NoNewPrivs:").is_some_and(|v| v.trim() == "1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_children(_: &Path) -> Vec<PathBuf> {
        Vec::new()
    }

    fn build(home: &str) -> Policy {
        let h = PathBuf::from(home);
        build_policy(
            &BuildPaths {
                home: h.clone(),
                build_dir: h.join("releases/hello/b1"),
                cache: h.join("cache/hello"),
                tmp: h.join("tmp/build-hello.b1"),
                env_dir: h.join("tmp/env-hello.b1"),
                tools: vec![PathBuf::from("/root/.pyenv"), h.join("cache/.tools")],
            },
            &no_children,
        )
    }

    fn dyno(home: &str, port: Option<u16>) -> Policy {
        dyno_with(home, port, false)
    }

    fn dyno_with(home: &str, port: Option<u16>, shm: bool) -> Policy {
        let h = PathBuf::from(home);
        dyno_policy(
            &DynoPaths {
                home: h.clone(),
                release_dir: h.join("releases/hello/b1"),
                private_dir: h.join("dynos/hello/7"),
                interpreter: vec![PathBuf::from("/root/.pyenv/versions/3.12.1")],
                port,
                shm,
            },
            &no_children,
        )
    }

    #[test]
    fn shared_memory_only_for_dynos_with_a_uid_of_their_own() {
        if !Path::new(SHM).is_dir() {
            return;
        }
        let shm = Path::new("/dev/shm/sem.mp-1234");
        assert_eq!(access(&dyno_with("/var/lib/slipway", None, false), shm), None, "shared uid: no");
        assert_eq!(access(&dyno_with("/var/lib/slipway", None, true), shm), Some(Access::ReadWrite));
    }

    #[test]
    fn what_a_build_may_reach() {
        use Access::*;
        let p = build("/var/lib/slipway");
        let cases: &[(&str, Option<Access>)] = &[
            ("/usr/bin/python3", Some(Read)),
            ("/etc/ssl/certs/ca-certificates.crt", Some(Read)),
            ("/proc/meminfo", Some(Read)),
            ("/proc/self/status", None),
            ("/proc/4242/environ", None),
            ("/dev/null", Some(Device)),
            ("/dev/sda", None),
            ("/tmp/x", None),
            ("/root/.pyenv/versions/3.12.1/bin/python", Some(Read)),
            ("/root/.ssh/id_ed25519", None),
            ("/var/lib/slipway/releases/hello/b1/app.py", Some(ReadWrite)),
            ("/var/lib/slipway/cache/hello/pip/x", Some(ReadWrite)),
            ("/var/lib/slipway/cache/.tools/uv/bin/uv", Some(Read)),
            ("/var/lib/slipway/tmp/build-hello.b1/x", Some(ReadWrite)),
            ("/var/lib/slipway/tmp/env-hello.b1/SECRET", Some(Read)),
            ("/var/lib/slipway/tmp/env-other.b2/SECRET", None),
            ("/var/lib/slipway/slipway.db", None),
            ("/var/lib/slipway/run/slipway.sock", None),
            ("/var/lib/slipway/.ssh/authorized_keys", None),
            ("/var/lib/slipway/repos/hello.git/config", None),
            ("/var/lib/slipway/logs/hello/app.log", None),
            ("/var/lib/slipway/releases/other/b9/app.py", None),
            ("/var/lib/slipway/releases/hello/b0/app.py", None),
            ("/var/lib/slipway/cache/other/pip", None),
            ("/var/lib/slipway/dynos/hello/7/app", None),
        ];
        for (path, want) in cases {
            assert_eq!(access(&p, Path::new(path)), *want, "{path}");
        }
        assert_eq!(p.bind_ports, vec![0]);
    }

    #[test]
    fn what_a_dyno_may_reach() {
        use Access::*;
        let p = dyno("/var/lib/slipway", Some(5001));
        let cases: &[(&str, Option<Access>)] = &[
            ("/usr/lib/python3/dist-packages", Some(Read)),
            ("/dev/urandom", Some(Device)),
            ("/root/.pyenv/versions/3.12.1/lib/python3.12/os.py", Some(Read)),
            ("/root/.pyenv/versions/3.11.7/bin/python", None),
            ("/var/lib/slipway/releases/hello/b1/.slipway/venv/bin/python", Some(Read)),
            ("/var/lib/slipway/releases/hello/b1/app.py", Some(Read)),
            ("/var/lib/slipway/dynos/hello/7/app/app.py", Some(ReadWrite)),
            ("/var/lib/slipway/dynos/hello/7/tmp/x", Some(ReadWrite)),
            ("/var/lib/slipway/dynos/hello/8/app/app.py", None),
            ("/var/lib/slipway/dynos/hello/7.owner", None),
            ("/var/lib/slipway/cache/hello", None),
            ("/var/lib/slipway/tmp/env-hello.b1/SECRET", None),
            ("/var/lib/slipway/slipway.db", None),
            ("/var/lib/slipway/run/slipway.sock", None),
            ("/var/lib/slipway/.ssh/authorized_keys", None),
            ("/var/lib/slipway/repos/hello.git", None),
            ("/var/lib/slipway/logs/hello/app.log", None),
            ("/var/lib/slipway/releases/other/b9/app.py", None),
            ("/tmp/x", None),
        ];
        for (path, want) in cases {
            assert_eq!(access(&p, Path::new(path)), *want, "{path}");
        }
        assert_eq!(p.bind_ports, vec![0, 5001]);
        assert_eq!(dyno("/var/lib/slipway", None).bind_ports, vec![0], "a worker binds no fixed port");
    }

    #[test]
    fn a_dyno_reads_only_the_environment_its_release_links_to() {
        let t = tempfile::tempdir().unwrap();
        let home = canonical(t.path());
        let env = home.join("envs/hello/k1");
        std::fs::create_dir_all(&env).unwrap();
        std::fs::create_dir_all(home.join("envs/hello/k2")).unwrap();
        std::fs::write(env.join("pyvenv.cfg"), "home = /root/.pyenv/versions/3.12.1/bin\n").unwrap();
        let release = home.join("releases/hello/b1");
        std::fs::create_dir_all(release.join(".slipway")).unwrap();
        std::os::unix::fs::symlink("../../../../envs/hello/k1", release.join(".slipway/venv")).unwrap();
        let interpreter = interpreter_dirs(&release);
        assert_eq!(interpreter, vec![env.clone(), PathBuf::from("/root/.pyenv/versions/3.12.1")]);
        let p = dyno_policy(
            &DynoPaths {
                home: home.clone(),
                release_dir: release,
                private_dir: home.join("dynos/hello/7"),
                interpreter,
                port: None,
                shm: false,
            },
            &no_children,
        );
        assert_eq!(access(&p, &env.join("lib/site.py")), Some(Access::Read));
        assert_eq!(access(&p, &home.join("envs/hello/k2/pyvenv.cfg")), None);
        assert_eq!(access(&p, &home.join("envs/other/k1/pyvenv.cfg")), None);
    }

    #[test]
    fn a_home_under_a_system_dir_is_not_granted_with_it() {
        let tree = |dir: &Path| -> Vec<PathBuf> {
            match dir.to_str() {
                Some("/opt") => vec!["/opt/google".into(), "/opt/srv".into()],
                Some("/opt/srv") => vec!["/opt/srv/other".into(), "/opt/srv/slipway".into()],
                _ => Vec::new(),
            }
        };
        let h = PathBuf::from("/opt/srv/slipway");
        let p = dyno_policy(
            &DynoPaths {
                home: h.clone(),
                release_dir: h.join("releases/hello/b1"),
                private_dir: h.join("dynos/hello/7"),
                interpreter: vec![],
                port: None,
                shm: false,
            },
            &tree,
        );
        assert_eq!(access(&p, Path::new("/opt/google/chrome")), Some(Access::Read));
        assert_eq!(access(&p, Path::new("/opt/srv/other/x")), Some(Access::Read));
        assert_eq!(access(&p, Path::new("/opt/srv/slipway/slipway.db")), None);
        assert_eq!(access(&p, Path::new("/opt/srv/slipway/releases/hello/b1/x")), Some(Access::Read));
        assert_eq!(access(&p, Path::new("/opt/srv/slipway/dynos/hello/7/x")), Some(Access::ReadWrite));
        assert!(!p.rules.iter().any(|r| r.path == Path::new("/opt") || r.path == Path::new("/opt/srv")));
    }

    #[test]
    fn interpreter_prefix_from_pyvenv_cfg() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "home = /root/.pyenv/versions/3.12.1/bin\nversion = 3.12.1\n",
                Some("/root/.pyenv/versions/3.12.1"),
            ),
            ("home=/usr/bin\n", Some("/usr")),
            ("version = 3.12\n", None),
            ("home = relative/bin\n", None),
            ("home = /opt/python\n", Some("/opt/python")),
            ("home = /bin\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(venv_prefix(text), want.map(PathBuf::from), "{text}");
        }
    }

    #[test]
    fn no_new_privs_is_read_from_proc_status() {
        assert!(no_new_privs("Name:\tx\nNoNewPrivs:\t1\nSeccomp:\t0\n"));
        assert!(!no_new_privs("Name:\tx\nNoNewPrivs:\t0\n"));
        assert!(!no_new_privs("Name:\tx\n"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_line(Support::Landlock(7)), "landlock ABI 7 (builds and dynos confined)");
        assert!(status_line(Support::Unavailable).starts_with("unavailable: kernel without Landlock"));
    }

    #[test]
    fn private_dirs_are_copies_and_leftovers_of_dead_owners_go() {
        let d = tempfile::tempdir().unwrap();
        let release = d.path().join("release");
        std::fs::create_dir_all(release.join(".slipway/venv")).unwrap();
        std::fs::create_dir_all(release.join("pkg")).unwrap();
        std::fs::write(release.join("pkg/app.py"), "x").unwrap();
        let dynos = d.path().join("dynos/hello");
        let p = PrivateDir::create(&dynos, "7", &release).unwrap();
        std::fs::write(p.app_dir().join("pkg/app.py"), "changed").unwrap();
        assert_eq!(std::fs::read_to_string(release.join("pkg/app.py")).unwrap(), "x", "a copy, not a link");
        assert!(p.app_dir().join(".slipway/venv").is_dir());
        assert!(std::fs::symlink_metadata(p.app_dir().join(".slipway")).unwrap().file_type().is_symlink());
        // Alive (this process owns it): kept.
        assert_eq!(remove_dead(&d.path().join("dynos")).unwrap(), 0);
        // An owner that is gone: removed, with its owner file.
        std::fs::write(dynos.join("7.owner"), "999999999 1\n").unwrap();
        std::fs::create_dir_all(dynos.join("8/app")).unwrap();
        assert_eq!(remove_dead(&d.path().join("dynos")).unwrap(), 2);
        assert!(!dynos.join("7").exists() && !dynos.join("7.owner").exists() && !dynos.join("8").exists());
        let p = PrivateDir::create(&dynos, "9", &release).unwrap();
        let root = p.root.clone();
        p.remove().unwrap();
        assert!(!root.exists() && !dynos.join("9.owner").exists());
    }
}

#[cfg(test)]
mod enforced {
    use super::*;

    /// A command confined by a policy that reads the system only.
    fn confined(program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args);
        let policy = Policy { rules: system_rules(), bind_ports: vec![0] };
        confine(&mut c, &policy).unwrap();
        c
    }

    #[test]
    fn another_domain_is_out_of_reach() {
        if support() == Support::Unavailable {
            return;
        }
        let mut victim = confined("sleep", &["30"]).spawn().unwrap();
        let environ = format!("/proc/{}/environ", victim.id());
        let script = format!(
            "cat {environ} >/dev/null && echo READ; kill -0 {0} && echo SIGNALLED; read l < /proc/$$/status && echo OWN",
            victim.id()
        );
        let out = confined("sh", &["-c", &script]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let _ = victim.kill();
        let _ = victim.wait();
        assert!(!text.contains("READ") && !text.contains("SIGNALLED"), "{text}");
        assert!(text.contains("OWN"), "the main process reads its own /proc/<pid>: {text}");
    }
}
