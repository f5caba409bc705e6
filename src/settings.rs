//! Settings: one file per home, `$SLIPWAY_HOME/slipway.toml`, read the same way by every process
//! (the daemon, the build hook under sshd, the CLI, `ssh-serve`, dyno shims), so a push over SSH
//! builds with the limits the operator configured and every command sees the daemon's domain.
//!
//! Keys are the setting names without `SLIPWAY_`, in lower case (`max_slug_mb = 200`). Each key
//! can be overridden by `SLIPWAY_<KEY>` in a process's environment; neither given, the default.
//! Numbers may be TOML integers, floats or strings. Read once per process; a bad value is an
//! error naming the file (or variable) and the key, never a silent default.
//!
//! `settings:set`/`settings:unset` edit the file with `toml_edit`, which keeps the operator's
//! comments, order and other keys, validate the result, and replace the file atomically (a
//! temporary file renamed over it, never writing through a symbolic link).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::home::Home;
use crate::logs::LogPolicy;

/// The settings file's name in the home.
pub const FILE_NAME: &str = "slipway.toml";

#[derive(Debug, Clone)]
pub struct Settings {
    /// Dyno `PORT`s are allocated from this range (`ports`, default 5000-5999).
    pub ports: RangeInclusive<u16>,
    /// A web dyno must accept TCP on its port within this time (`boot_timeout`, 60 s).
    pub boot_timeout: Duration,
    /// SIGTERM → SIGKILL grace period (`stop_timeout`, 30 s).
    pub stop_timeout: Duration,
    /// A new web dyno that accepts connections must then stay up this long before it counts as
    /// ready (`boot_settle`, 3 s): a server whose master binds before its workers crash at import
    /// is caught here.
    pub boot_settle: Duration,
    /// Roll back automatically when a release's web dynos crash repeatedly soon after it went
    /// live (`auto_rollback`, on).
    pub auto_rollback: bool,
    /// Apps answer at `<app>.<domain>` (`domain`, localhost).
    pub domain: String,
    /// The interpreter used for builds (`python`, default `python3` on PATH).
    pub python: String,
    /// More places to look for build interpreters (`python_dirs`, colon-separated absolute dirs,
    /// each a prefix with `bin/python3` or a dir of such prefixes; default none).
    pub python_dirs: Vec<PathBuf>,
    /// App log rotation (`log_max_mb`, 20; `log_files`, 5).
    pub log_policy: LogPolicy,
    /// Where the HTTP router listens (`router_addr`, default 0.0.0.0:8080).
    pub router_addr: SocketAddr,
    /// Where the router serves HTTPS (`https_addr`, default 0.0.0.0:8443; `off`: no HTTPS).
    pub https_addr: Option<SocketAddr>,
    /// How long the router waits for a dyno's response head before answering 503 H12
    /// (`router_timeout`, seconds, default 30 as on Heroku).
    pub router_timeout: Duration,
    /// A build is killed after this long (`build_timeout`, 900 s).
    pub build_timeout: Duration,
    /// The release phase fails after this long (`release_timeout`, 3600 s).
    pub release_timeout: Duration,
    /// Slugs and release dirs of this many newest releases are kept (`keep_releases`, 10).
    pub keep_releases: usize,
    /// Larger slugs are refused (`max_slug_mb`, 500).
    pub max_slug_bytes: u64,
    /// A pushed tree larger than this unpacked is refused while it is exported (`max_build_mb`,
    /// 2048): a git bomb fails fast.
    pub max_build_bytes: u64,
    /// Builds see the app's config vars (environment and ENV_DIR) unless `build_config = 0`.
    pub build_config: bool,
    /// Extra environment for every build (`build_env`: `KEY=VALUE` pairs separated by spaces,
    /// e.g. `PIP_INDEX_URL=https://pypi.example/simple HTTPS_PROXY=http://proxy:3128`).
    pub build_env: Vec<(String, String)>,
    /// When no installed interpreter has the requested major version, builds install it with
    /// `uv python install` into `cache/.tools/python` (`python_install`, on).
    pub python_install: bool,
    /// The daemon's own log filter (`log`, default `info`), a tracing `EnvFilter` directive.
    pub log: String,
    /// Memory quota of a dyno whose process type was not resized (`dyno_memory`, 512M): above
    /// it R14, at twice it R15 (where cgroups are available).
    pub dyno_memory: u64,
    /// Most processes (and threads) in one dyno (`dyno_max_pids`, 256).
    pub dyno_max_pids: u32,
    /// Memory quota of a build and its release phase (`build_memory`, 2G; killed at twice it).
    pub build_memory: u64,
    /// The ACME directory automatic certificates come from (`acme_directory`, default Let's
    /// Encrypt's production directory).
    pub acme_directory: String,
    /// The contact address given to the ACME server (`acme_email`, default none).
    pub acme_email: Option<String>,
    /// An extra CA certificate (PEM) trusted for the ACME server's own HTTPS (`acme_ca_file`,
    /// absolute path; default none: the system's roots only). For test servers such as Pebble.
    pub acme_ca_file: Option<PathBuf>,
    /// The uids (and gids) apps run as when the daemon runs as root (`app_uids`,
    /// `200000-299999`; see `crate::users`).
    pub app_uids: crate::users::UidRange,
}

/// One sentence naming the file or variable and the key; printed as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

/// How `settings:set` writes a value into the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
    Flag,
}

struct Spec {
    key: &'static str,
    default: &'static str,
    kind: Kind,
    /// Read by the daemon at its start: a change needs a daemon restart to reach it.
    daemon: bool,
}

const fn spec(key: &'static str, default: &'static str, kind: Kind, daemon: bool) -> Spec {
    Spec { key, default, kind, daemon }
}

/// Every setting, in the order `slipway settings` lists them (the README's table).
const SPECS: &[Spec] = &[
    spec("ports", "5000-5999", Kind::Text, true),
    spec("router_addr", "0.0.0.0:8080", Kind::Text, true),
    spec("https_addr", "0.0.0.0:8443", Kind::Text, true),
    spec("domain", "localhost", Kind::Text, true),
    spec("router_timeout", "30", Kind::Number, true),
    spec("boot_timeout", "60", Kind::Number, true),
    spec("stop_timeout", "30", Kind::Number, true),
    spec("boot_settle", "3", Kind::Number, true),
    spec("auto_rollback", "1", Kind::Flag, true),
    spec("python", "python3", Kind::Text, false),
    spec("python_dirs", "", Kind::Text, false),
    spec("build_timeout", "900", Kind::Number, false),
    spec("release_timeout", "3600", Kind::Number, false),
    spec("keep_releases", "10", Kind::Number, false),
    spec("max_slug_mb", "500", Kind::Number, false),
    spec("max_build_mb", "2048", Kind::Number, false),
    spec("build_config", "1", Kind::Flag, false),
    spec("build_env", "", Kind::Text, false),
    spec("python_install", "1", Kind::Flag, false),
    spec("log_max_mb", "20", Kind::Number, true),
    spec("log_files", "5", Kind::Number, true),
    spec("log", "info", Kind::Text, true),
    spec("dyno_memory", "512M", Kind::Text, true),
    spec("dyno_max_pids", "256", Kind::Number, true),
    spec("build_memory", "2G", Kind::Text, false),
    spec("acme_directory", LETS_ENCRYPT, Kind::Text, false),
    spec("acme_email", "", Kind::Text, false),
    spec("acme_ca_file", "", Kind::Text, false),
    spec("app_uids", "200000-299999", Kind::Text, true),
];

/// Let's Encrypt's production ACME directory, `acme_directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

fn index_of(key: &str) -> Option<usize> {
    SPECS.iter().position(|s| s.key == key)
}

/// `SLIPWAY_MAX_SLUG_MB` for `max_slug_mb`.
pub fn env_name(key: &str) -> String {
    format!("SLIPWAY_{}", key.to_ascii_uppercase())
}

/// Whether `name` is the environment variable of a setting (`SLIPWAY_MAX_SLUG_MB`).
pub fn is_setting_env(name: &str) -> bool {
    SPECS.iter().any(|s| env_name(s.key) == name)
}

/// Whether the daemon reads `key` only at its start (ports, router, dyno timeouts, logs).
pub fn read_by_daemon(key: &str) -> bool {
    index_of(key).is_some_and(|i| SPECS[i].daemon)
}

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Default,
    File,
    Env,
}

/// One setting's effective value, as `slipway settings` shows it.
#[derive(Debug, Clone)]
pub struct Effective {
    pub key: &'static str,
    pub value: String,
    pub origin: Origin,
}

impl Effective {
    /// `default`, `slipway.toml` or `env SLIPWAY_X`.
    pub fn source(&self) -> String {
        match self.origin {
            Origin::Default => "default".into(),
            Origin::File => FILE_NAME.into(),
            Origin::Env => format!("env {}", env_name(self.key)),
        }
    }
}

/// The settings of one home and where each value came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: PathBuf,
    pub settings: Settings,
    pub values: Vec<Effective>,
}

/// A value as given (file, environment or command line), before validation.
#[derive(Debug, Clone)]
struct Given {
    text: String,
    origin: Origin,
    /// How an error names it: `/h/slipway.toml: max_slug_mb = -1` or `SLIPWAY_MAX_SLUG_MB="-1"`.
    shown: String,
}

impl Settings {
    /// The settings of `home`: its `slipway.toml`, each key overridden by `SLIPWAY_<KEY>` from
    /// this process's environment. A missing file means every default.
    pub fn load(home: &Home) -> Result<Settings, SettingsError> {
        Ok(load(home)?.settings)
    }

    /// Where the router serves an app: `http://<app>.<domain>[:port]/`.
    pub fn app_url(&self, app: &str) -> String {
        app_url(&self.domain, self.router_addr.port(), app)
    }
}

/// [`Settings::load`] with every value's origin, for `slipway settings`.
pub fn load(home: &Home) -> Result<Loaded, SettingsError> {
    let file = home.settings_file();
    let text = read_file(&file)?;
    resolve(&file, text.as_deref(), &|name| std::env::var(name).ok())
}

pub fn app_url(domain: &str, router_port: u16, app: &str) -> String {
    match router_port {
        80 => format!("http://{app}.{domain}/"),
        port => format!("http://{app}.{domain}:{port}/"),
    }
}

fn read_file(path: &Path) -> Result<Option<String>, SettingsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SettingsError(format!("{} cannot be read: {e}", path.display()))),
    }
}

/// The settings from the file `file` with contents `text` (`None`: no file) and the
/// environment `env`.
fn resolve(
    file: &Path,
    text: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, SettingsError> {
    let mut given: Vec<Option<Given>> = SPECS.iter().map(|_| None).collect();
    if let Some(text) = text {
        for (i, value) in file_values(file, text)? {
            given[i] = Some(value);
        }
    }
    for (i, spec) in SPECS.iter().enumerate() {
        let var = env_name(spec.key);
        // An empty variable counts as unset (`Environment=SLIPWAY_X=` in a unit clears it).
        if let Some(value) = env(&var).filter(|v| !v.trim().is_empty()) {
            given[i] = Some(Given { shown: format!("{var}={value:?}"), text: value, origin: Origin::Env });
        }
    }
    let settings = from_given(&given)?;
    let values = SPECS
        .iter()
        .zip(&given)
        .map(|(spec, given)| match given {
            Some(g) => Effective { key: spec.key, value: g.text.trim().to_string(), origin: g.origin },
            None => Effective { key: spec.key, value: spec.default.to_string(), origin: Origin::Default },
        })
        .collect();
    Ok(Loaded { file: file.to_path_buf(), settings, values })
}

/// The file's keys (index into [`SPECS`] and value); unknown keys, tables and arrays refused.
fn file_values(file: &Path, text: &str) -> Result<Vec<(usize, Given)>, SettingsError> {
    let doc = toml_edit::Document::parse(text).map_err(|e| toml_error(file, text, &e))?;
    let mut values = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let Some(i) = index_of(key) else {
            return Err(unknown_key(Some(file), key));
        };
        let Some(value) = item.as_value() else {
            return Err(SettingsError(format!(
                "{}: [{key}] is a table; {FILE_NAME} holds only key = value lines",
                file.display()
            )));
        };
        let shown = format!("{}: {key} = {}", file.display(), value.clone().decorated("", ""));
        let text = match value {
            toml_edit::Value::String(s) => s.value().clone(),
            toml_edit::Value::Integer(n) => n.value().to_string(),
            toml_edit::Value::Float(f) => f.value().to_string(),
            toml_edit::Value::Boolean(b) => b.value().to_string(),
            _ => return Err(invalid(&shown, "expected a number or a string")),
        };
        if text.trim().is_empty() {
            return Err(invalid(&shown, "expected a value (remove the line to use the default)"));
        }
        values.push((i, Given { text, origin: Origin::File, shown }));
    }
    Ok(values)
}

fn toml_error(file: &Path, text: &str, e: &toml_edit::TomlError) -> SettingsError {
    let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let message = message.trim_end_matches('.');
    match line {
        Some(line) => SettingsError(format!("{}: line {line} is not valid TOML: {message}", file.display())),
        None => SettingsError(format!("{} is not valid TOML: {message}", file.display())),
    }
}

fn invalid(shown: &str, why: &str) -> SettingsError {
    SettingsError(format!("{shown} is not valid: {why}"))
}

/// `unknown key "max_slug"; did you mean "max_slug_mb"?`, prefixed with the file when given.
fn unknown_key(file: Option<&Path>, key: &str) -> SettingsError {
    let prefix = file.map(|f| format!("{}: ", f.display())).unwrap_or_default();
    if normalize(key) == "home" {
        return SettingsError(format!(
            "{prefix}home cannot be set in {FILE_NAME}, which lives in the home; use --home or SLIPWAY_HOME"
        ));
    }
    match suggestion(key) {
        Some(near) => SettingsError(format!("{prefix}unknown key {key:?}; did you mean {near:?}?")),
        None => SettingsError(format!("{prefix}unknown key {key:?} ('slipway settings' lists the keys)")),
    }
}

/// `SLIPWAY_Max_Slug_MB` → `max_slug_mb`: how a key given on the command line is read.
fn normalize(key: &str) -> String {
    let key = key.trim().to_ascii_lowercase();
    key.strip_prefix("slipway_").unwrap_or(&key).to_string()
}

/// The known key closest to `key`, when it is close enough to be a typo.
fn suggestion(key: &str) -> Option<&'static str> {
    let key = normalize(key);
    if let Some(i) = index_of(&key) {
        return Some(SPECS[i].key);
    }
    SPECS
        .iter()
        .map(|s| (edit_distance(&key, s.key), s.key))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
        .or_else(|| {
            SPECS
                .iter()
                .map(|s| s.key)
                .find(|k| key.len() >= 4 && (k.starts_with(&key) || key.starts_with(k)))
        })
}

/// Levenshtein distance (small strings only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(cur) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Validates every value (given or default) into [`Settings`].
fn from_given(given: &[Option<Given>]) -> Result<Settings, SettingsError> {
    let get = |key: &'static str| -> (&str, &str) {
        let i = index_of(key).unwrap_or(0);
        match &given[i] {
            Some(g) => (g.text.trim(), g.shown.as_str()),
            None => (SPECS[i].default, key),
        }
    };
    fn flag(s: &str) -> Result<bool, &'static str> {
        match s {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err("expected 1 or 0 (true or false)"),
        }
    }
    fn check<T>(
        (text, shown): (&str, &str),
        parse: impl Fn(&str) -> Result<T, &'static str>,
    ) -> Result<T, SettingsError> {
        parse(text).map_err(|why| invalid(shown, why))
    }
    Ok(Settings {
        ports: check(get("ports"), |s| {
            parse_port_range(s).ok_or("expected START-END with 1024 <= START <= END <= 65535")
        })?,
        router_addr: check(get("router_addr"), |s| {
            s.parse::<SocketAddr>().map_err(|_| "expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080")
        })?,
        https_addr: check(get("https_addr"), |s| match s {
            "off" => Ok(None),
            s => s.parse::<SocketAddr>().map(Some).map_err(|_| "expected IP:PORT (e.g. 0.0.0.0:443) or off"),
        })?,
        domain: check(get("domain"), |s| Ok(s.to_string()))?,
        // Zero is refused: a router timeout of 0 would fail every request.
        router_timeout: check(get("router_timeout"), |s| {
            seconds(s).filter(|d| !d.is_zero()).ok_or("expected a number of seconds above 0")
        })?,
        boot_timeout: check(get("boot_timeout"), |s| seconds(s).ok_or(SECONDS))?,
        stop_timeout: check(get("stop_timeout"), |s| seconds(s).ok_or(SECONDS))?,
        boot_settle: check(get("boot_settle"), |s| seconds(s).ok_or(SECONDS))?,
        auto_rollback: check(get("auto_rollback"), flag)?,
        python: check(get("python"), |s| Ok(s.to_string()))?,
        python_dirs: check(get("python_dirs"), parse_dirs)?,
        build_timeout: check(get("build_timeout"), |s| seconds(s).ok_or(SECONDS))?,
        release_timeout: check(get("release_timeout"), |s| seconds(s).ok_or(SECONDS))?,
        keep_releases: check(get("keep_releases"), |s| count(s, 1..=1000).ok_or(IN_RANGE))?,
        max_slug_bytes: check(get("max_slug_mb"), |s| count(s, 1..=100_000).ok_or(IN_RANGE))? as u64
            * 1024
            * 1024,
        max_build_bytes: check(get("max_build_mb"), |s| count(s, 1..=1_000_000).ok_or(IN_RANGE))? as u64
            * 1024
            * 1024,
        build_config: check(get("build_config"), flag)?,
        build_env: check(get("build_env"), parse_build_env)?,
        python_install: check(get("python_install"), flag)?,
        log_policy: LogPolicy {
            // May be fractional (0.5); at least 0.001 MB.
            max_bytes: check(get("log_max_mb"), |s| {
                let mb = s.parse::<f64>().ok().filter(|m| m.is_finite() && *m >= 0.001 && *m <= 1e6);
                mb.map(|mb| (mb * 1024.0 * 1024.0) as u64).ok_or("expected megabytes, at least 0.001")
            })?,
            files: check(get("log_files"), |s| {
                s.parse::<u32>().ok().filter(|n| (1..=100).contains(n)).ok_or("expected 1 to 100")
            })?,
        },
        log: check(get("log"), |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_string())
                .map_err(|_| "expected a log filter such as info or slipway=debug,info")
        })?,
        dyno_memory: check(get("dyno_memory"), memory_size)?,
        dyno_max_pids: check(get("dyno_max_pids"), |s| count(s, 8..=1_000_000).ok_or(IN_RANGE))? as u32,
        build_memory: check(get("build_memory"), memory_size)?,
        acme_directory: check(get("acme_directory"), |s| {
            if s.starts_with("https://") && !s.contains(char::is_whitespace) {
                Ok(s.to_string())
            } else {
                Err("expected an https:// URL")
            }
        })?,
        acme_email: check(get("acme_email"), |s| match s {
            "" => Ok(None),
            s if s.contains('@') && !s.contains(char::is_whitespace) && !s.contains(',') => {
                Ok(Some(s.to_string()))
            }
            _ => Err("expected an e-mail address"),
        })?,
        acme_ca_file: check(get("acme_ca_file"), |s| match s {
            "" => Ok(None),
            s if Path::new(s).is_absolute() => Ok(Some(PathBuf::from(s))),
            _ => Err("expected an absolute path to a PEM file"),
        })?,
        app_uids: check(get("app_uids"), str::parse)?,
    })
}

/// `DIR:DIR…`, each absolute; empty entries ignored.
fn parse_dirs(s: &str) -> Result<Vec<PathBuf>, &'static str> {
    let dirs: Vec<PathBuf> =
        s.split(':').filter(|d| !d.trim().is_empty()).map(|d| PathBuf::from(d.trim())).collect();
    if dirs.iter().all(|d| d.is_absolute()) {
        Ok(dirs)
    } else {
        Err("expected absolute dirs separated by ':'")
    }
}

/// A memory size: `512M`, `1G`, or a number of megabytes (16M to 1024G).
fn memory_size(s: &str) -> Result<u64, &'static str> {
    crate::cgroup::parse_size(s).map_err(|_| "expected a memory size from 16M to 1024G, such as 512M or 1G")
}

/// Variables `build_env` may not set: the build's own toolchain and home depend on them.
pub const BUILD_ENV_RESERVED: &[&str] = &[
    "PATH",
    "HOME",
    "CPATH",
    "CPPATH",
    "LD_PRELOAD",
    "LIBRARY_PATH",
    "LD_LIBRARY_PATH",
    "PYTHONHOME",
    "BUILD_DIR",
    "CACHE_DIR",
    "ENV_DIR",
];

/// `KEY=VALUE KEY=VALUE…` (separated by whitespace; a value cannot contain whitespace): each key
/// a variable name used once, none of [`BUILD_ENV_RESERVED`].
pub fn parse_build_env(s: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in s.split_whitespace() {
        let (key, value) = pair.split_once('=').ok_or("expected KEY=VALUE pairs separated by spaces")?;
        let name_ok = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err("expected KEY=VALUE pairs separated by spaces, each KEY a variable name");
        }
        if BUILD_ENV_RESERVED.contains(&key) {
            return Err("PATH, HOME, CPATH, CPPATH, LD_PRELOAD, LIBRARY_PATH, LD_LIBRARY_PATH, PYTHONHOME, BUILD_DIR, CACHE_DIR and ENV_DIR cannot be set for builds");
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err("expected each variable once");
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

const SECONDS: &str = "expected a number of seconds";
const IN_RANGE: &str = "expected a whole number in range";

/// 0 to 86,400 seconds, fractions allowed.
fn seconds(s: &str) -> Option<Duration> {
    s.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
}

fn count(s: &str, range: RangeInclusive<usize>) -> Option<usize> {
    s.parse::<usize>().ok().filter(|n| range.contains(n))
}

pub fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let (a, b) = s.trim().split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (1024 <= a && a <= b).then_some(a..=b)
}

// ---------------------------------------------------------------------------------------------
// Editing the file: settings:set and settings:unset
// ---------------------------------------------------------------------------------------------

/// What `settings:set`/`settings:unset` changed.
#[derive(Debug)]
pub struct Edit {
    pub file: PathBuf,
    /// `key = value` as written, for `set`; the removed keys for `unset`.
    pub changed: Vec<String>,
    /// Keys of `unset` that were not in the file.
    pub absent: Vec<String>,
    /// The keys touched, as known settings (for notes about overrides and restarts).
    pub keys: Vec<&'static str>,
}

/// Sets `pairs` (`key` or `SLIPWAY_KEY`, value) in `home`'s settings file. Every value is
/// validated first and the whole resulting file after; on any error nothing is written.
pub fn set(home: &Home, pairs: &[(String, String)]) -> Result<Edit, SettingsError> {
    let mut values = Vec::new();
    for (key, text) in pairs {
        let key = normalize(key);
        let i = index_of(&key).ok_or_else(|| unknown_key(None, &key))?;
        let value = toml_value(SPECS[i].kind, text.trim());
        let shown = format!("{key} = {value}");
        let mut given: Vec<Option<Given>> = SPECS.iter().map(|_| None).collect();
        given[i] = Some(Given { text: text.clone(), origin: Origin::File, shown: shown.clone() });
        if text.trim().is_empty() {
            return Err(invalid(&shown, "expected a value (settings:unset restores the default)"));
        }
        from_given(&given)?;
        values.push((SPECS[i].key, value, shown));
    }
    edit(home, |doc| {
        let mut edit = Edit { file: home.settings_file(), changed: vec![], absent: vec![], keys: vec![] };
        for (key, value, shown) in values {
            let mut value = value;
            match doc.get_mut(key) {
                // In place: the key keeps the comment lines above it, the value its trailing one.
                Some(item) => {
                    if let Some(old) = item.as_value() {
                        *value.decor_mut() = old.decor().clone();
                    }
                    *item = toml_edit::Item::Value(value);
                }
                None => {
                    doc.insert(key, toml_edit::Item::Value(value));
                }
            }
            edit.changed.push(shown);
            edit.keys.push(key);
        }
        edit
    })
}

/// Removes `keys` from `home`'s settings file (any key found there, so a misspelt one can go).
pub fn unset(home: &Home, keys: &[String]) -> Result<Edit, SettingsError> {
    edit(home, |doc| {
        let mut edit = Edit { file: home.settings_file(), changed: vec![], absent: vec![], keys: vec![] };
        for given in keys {
            let normal = normalize(given);
            let key = [given.trim(), normal.as_str()].into_iter().find(|k| doc.contains_key(k));
            match key {
                Some(key) => {
                    doc.remove(key);
                    edit.changed.push(key.to_string());
                    if let Some(i) = index_of(key) {
                        edit.keys.push(SPECS[i].key);
                    }
                }
                None => edit.absent.push(normal),
            }
        }
        edit
    })
}

/// The TOML value `settings:set` writes for `text`: numbers as numbers, flags as booleans,
/// anything else (and anything that does not look like its kind) as a string.
fn toml_value(kind: Kind, text: &str) -> toml_edit::Value {
    match kind {
        Kind::Number => match (text.parse::<i64>(), text.parse::<f64>()) {
            (Ok(n), _) => n.into(),
            (_, Ok(f)) if f.is_finite() && !text.chars().any(char::is_alphabetic) => f.into(),
            _ => text.into(),
        },
        Kind::Flag => match text {
            "1" | "true" => true.into(),
            "0" | "false" => false.into(),
            _ => text.into(),
        },
        Kind::Text => text.into(),
    }
}

/// Under a lock on the home, applies `change` to the file's document, validates the result,
/// and writes it atomically (only when it changed).
fn edit(
    home: &Home,
    change: impl FnOnce(&mut toml_edit::DocumentMut) -> Edit,
) -> Result<Edit, SettingsError> {
    let file = home.settings_file();
    let fail = |what: &str, e: std::io::Error| SettingsError(format!("{what} {}: {e}", file.display()));
    std::fs::create_dir_all(home.root()).map_err(|e| fail("creating the directory of", e))?;
    // Two edits at once must not lose one another's change: flock `run/locks/settings.lock`
    // (not the home directory itself, which the daemon holds locked for its whole life).
    let lock_path = home.run_dir().join("locks").join("settings.lock");
    let lock_fail = |e: std::io::Error| SettingsError(format!("locking {}: {e}", lock_path.display()));
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(lock_fail)?;
    }
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(lock_fail)?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| lock_fail(std::io::Error::from(e)))?;

    let old = read_file(&file)?;
    let text = old.clone().unwrap_or_else(|| HEADER.to_string());
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| toml_error(&file, &text, &e))?;
    // Comments of a file without keys are the document's trailing text, which would end up
    // below the first key set: keep them above it instead.
    let lead = if doc.is_empty() { doc.trailing().as_str().map(str::to_string) } else { None };
    let edit = change(&mut doc);
    if let Some(lead) = lead.filter(|_| !doc.is_empty()) {
        doc.set_trailing("");
        let first = doc.iter().next().map(|(k, _)| k.to_string()).unwrap_or_default();
        if let Some(mut key) = doc.key_mut(&first) {
            key.leaf_decor_mut().set_prefix(lead);
        }
    }
    let new = doc.to_string();
    resolve(&file, Some(&new), &|_| None)?;
    if old.as_deref() != Some(new.as_str()) && !edit.changed.is_empty() {
        write_atomically(home, &file, &new)?;
    }
    Ok(edit)
}

const HEADER: &str = "\
# slipway settings (`slipway settings` lists every key, its value and where it comes from).
# SLIPWAY_<KEY> in a process's environment overrides a key here. Builds and commands read this
# file when they start; the daemon reads it at its start, so restart it to apply ports,
# router_addr, https_addr, domain, the timeouts of dynos and the log settings.
";

/// Replaces `file` by a temporary file renamed over it: readers see the old or the new file,
/// never half of one. A symbolic link is refused rather than followed or replaced.
fn write_atomically(home: &Home, file: &Path, text: &str) -> Result<(), SettingsError> {
    let old = match std::fs::symlink_metadata(file) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(SettingsError(format!(
                "{} is a symbolic link, and slipway does not write through links; edit the file it points to, or replace the link with a file",
                file.display()
            )))
        }
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(SettingsError(format!("{} is not a regular file", file.display())))
        }
        Ok(meta) => Some(meta),
        Err(_) => None,
    };
    let mode = old.as_ref().map_or(0o640, |m| m.mode() & 0o7777);
    // As root (install.sh, `sudo slipway settings:set`), keep the file the slipway user's.
    let owner = if nix::unistd::geteuid().is_root() {
        old.as_ref()
            .map(|m| (m.uid(), m.gid()))
            .or_else(|| std::fs::metadata(home.root()).ok().map(|m| (m.uid(), m.gid())))
    } else {
        None
    };
    crate::fsutil::write_atomic_owned(file, text.as_bytes(), mode, owner)
        .map_err(|e| SettingsError(format!("writing {}: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const FILE: &str = "/h/slipway.toml";

    fn load_with(text: Option<&str>, env: &[(&str, &str)]) -> Result<Loaded, String> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(Path::new(FILE), text, &|name| env.get(name).cloned()).map_err(|e| e.to_string())
    }

    fn origin(loaded: &Loaded, key: &str) -> (String, Origin) {
        let v = loaded.values.iter().find(|v| v.key == key).unwrap_or_else(|| panic!("no {key}"));
        (v.value.clone(), v.origin)
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("5000-5999"), Some(5000..=5999));
        assert_eq!(parse_port_range(" 7000 - 7000 "), Some(7000..=7000));
        assert_eq!(parse_port_range("80-90"), None);
        assert_eq!(parse_port_range("6000-5000"), None);
        assert_eq!(parse_port_range("5000"), None);
        assert_eq!(parse_port_range("a-b"), None);
    }

    #[test]
    fn no_file_means_defaults_and_they_are_valid() {
        let loaded = load_with(None, &[]).unwrap_or_else(|e| panic!("{e}"));
        let s = &loaded.settings;
        assert_eq!(s.ports, 5000..=5999);
        assert_eq!(s.router_addr, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(s.https_addr, Some(SocketAddr::from(([0, 0, 0, 0], 8443))));
        assert_eq!(s.domain, "localhost");
        assert_eq!(s.boot_timeout, Duration::from_secs(60));
        assert_eq!(s.max_slug_bytes, 500 * 1024 * 1024);
        assert_eq!(s.max_build_bytes, 2048 * 1024 * 1024);
        assert_eq!(s.log_policy, LogPolicy::default());
        assert_eq!(s.log, "info");
        assert!(s.build_config);
        assert!(s.build_env.is_empty());
        assert!(s.python_install);
        assert!(loaded.values.iter().all(|v| v.origin == Origin::Default));
        assert_eq!(loaded.values.len(), SPECS.len());
        // An empty file is the same.
        assert!(load_with(Some("# nothing yet\n"), &[]).is_ok());
    }

    #[test]
    fn values_from_the_file() {
        type Check = fn(&Settings) -> bool;
        let cases: &[(&str, Check)] = &[
            ("max_slug_mb = 200", |s| s.max_slug_bytes == 200 * 1024 * 1024),
            ("max_slug_mb = \"200\"", |s| s.max_slug_bytes == 200 * 1024 * 1024),
            ("max_slug_mb = 200.0", |s| s.max_slug_bytes == 200 * 1024 * 1024),
            ("boot_timeout = 2.5", |s| s.boot_timeout == Duration::from_millis(2500)),
            ("boot_timeout = \" 7 \"", |s| s.boot_timeout == Duration::from_secs(7)),
            ("domain = \"apps.example.com\"", |s| s.domain == "apps.example.com"),
            ("ports = \"7000-7099\"", |s| s.ports == (7000..=7099)),
            ("router_addr = \"[::]:80\"", |s| s.router_addr.port() == 80),
            ("https_addr = \"[::]:443\"", |s| s.https_addr.is_some_and(|a| a.port() == 443)),
            ("https_addr = \"off\"", |s| s.https_addr.is_none()),
            ("log_max_mb = 0.5", |s| s.log_policy.max_bytes == 512 * 1024),
            ("log_files = 3", |s| s.log_policy.files == 3),
            ("build_config = true", |s| s.build_config),
            ("build_config = 1", |s| s.build_config),
            ("build_config = \"0\"", |s| !s.build_config),
            ("log = \"slipway=debug,info\"", |s| s.log == "slipway=debug,info"),
            ("keep_releases = 1 # comment\n\n# more\n", |s| s.keep_releases == 1),
            ("python_install = 0", |s| !s.python_install),
            (
                "build_env = \"PIP_INDEX_URL=https://pypi.example/simple  NO_PROXY=localhost,10.0.0.1 X=\"",
                |s| {
                    s.build_env
                        == [
                            ("PIP_INDEX_URL".to_string(), "https://pypi.example/simple".to_string()),
                            ("NO_PROXY".to_string(), "localhost,10.0.0.1".to_string()),
                            ("X".to_string(), String::new()),
                        ]
                },
            ),
            ("python_dirs = \"/opt/py:/root/.pyenv/versions:\"", |s| {
                s.python_dirs == [PathBuf::from("/opt/py"), PathBuf::from("/root/.pyenv/versions")]
            }),
        ];
        for (text, ok) in cases {
            let loaded = load_with(Some(text), &[]).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(ok(&loaded.settings), "{text}: {:?}", loaded.settings);
            let key = text.split_whitespace().next().unwrap_or_default();
            assert_eq!(origin(&loaded, key).1, Origin::File, "{text}");
        }
    }

    #[test]
    fn bad_values_are_one_sentence_naming_the_file_and_key() {
        let cases = [
            ("max_slug_mb = -1", "/h/slipway.toml: max_slug_mb = -1 is not valid: expected a whole number in range"),
            ("max_slug_mb = 1.5", "/h/slipway.toml: max_slug_mb = 1.5 is not valid: expected a whole number in range"),
            ("max_slug_mb = \"lots\"", "/h/slipway.toml: max_slug_mb = \"lots\" is not valid: expected a whole number in range"),
            ("max_slug_mb = true", "/h/slipway.toml: max_slug_mb = true is not valid: expected a whole number in range"),
            ("keep_releases = 0", "/h/slipway.toml: keep_releases = 0 is not valid: expected a whole number in range"),
            ("ports = \"80-90\"", "/h/slipway.toml: ports = \"80-90\" is not valid: expected START-END with 1024 <= START <= END <= 65535"),
            ("router_addr = \"localhost\"", "/h/slipway.toml: router_addr = \"localhost\" is not valid: expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080"),
            ("https_addr = \"on\"", "/h/slipway.toml: https_addr = \"on\" is not valid: expected IP:PORT (e.g. 0.0.0.0:443) or off"),
            ("router_timeout = 0", "/h/slipway.toml: router_timeout = 0 is not valid: expected a number of seconds above 0"),
            ("boot_timeout = -3", "/h/slipway.toml: boot_timeout = -3 is not valid: expected a number of seconds"),
            ("log_max_mb = 0", "/h/slipway.toml: log_max_mb = 0 is not valid: expected megabytes, at least 0.001"),
            ("log_files = 101", "/h/slipway.toml: log_files = 101 is not valid: expected 1 to 100"),
            ("build_config = \"yes\"", "/h/slipway.toml: build_config = \"yes\" is not valid: expected 1 or 0 (true or false)"),
            ("build_env = \"PIP_INDEX_URL\"", "/h/slipway.toml: build_env = \"PIP_INDEX_URL\" is not valid: expected KEY=VALUE pairs separated by spaces"),
            ("build_env = \"1X=y\"", "/h/slipway.toml: build_env = \"1X=y\" is not valid: expected KEY=VALUE pairs separated by spaces, each KEY a variable name"),
            ("build_env = \"A=1 A=2\"", "/h/slipway.toml: build_env = \"A=1 A=2\" is not valid: expected each variable once"),
            ("build_env = \"PATH=/opt\"", "/h/slipway.toml: build_env = \"PATH=/opt\" is not valid: PATH, HOME, CPATH, CPPATH, LD_PRELOAD, LIBRARY_PATH, LD_LIBRARY_PATH, PYTHONHOME, BUILD_DIR, CACHE_DIR and ENV_DIR cannot be set for builds"),
            ("python_install = \"maybe\"", "/h/slipway.toml: python_install = \"maybe\" is not valid: expected 1 or 0 (true or false)"),
            ("python_dirs = \"/opt/py:opt\"", "/h/slipway.toml: python_dirs = \"/opt/py:opt\" is not valid: expected absolute dirs separated by ':'"),
            ("domain = \"\"", "/h/slipway.toml: domain = \"\" is not valid: expected a value (remove the line to use the default)"),
            ("acme_directory = \"http://acme.test/dir\"", "/h/slipway.toml: acme_directory = \"http://acme.test/dir\" is not valid: expected an https:// URL"),
            ("acme_email = \"ops\"", "/h/slipway.toml: acme_email = \"ops\" is not valid: expected an e-mail address"),
            ("acme_email = \"a@b.test, c@d.test\"", "/h/slipway.toml: acme_email = \"a@b.test, c@d.test\" is not valid: expected an e-mail address"),
            ("acme_ca_file = \"ca.pem\"", "/h/slipway.toml: acme_ca_file = \"ca.pem\" is not valid: expected an absolute path to a PEM file"),
            ("ports = [5000, 5999]", "/h/slipway.toml: ports = [5000, 5999] is not valid: expected a number or a string"),
            ("max_slug = 1", "/h/slipway.toml: unknown key \"max_slug\"; did you mean \"max_slug_mb\"?"),
            ("SLIPWAY_DOMAIN = \"x\"", "/h/slipway.toml: unknown key \"SLIPWAY_DOMAIN\"; did you mean \"domain\"?"),
            ("bootimeout = 3", "/h/slipway.toml: unknown key \"bootimeout\"; did you mean \"boot_timeout\"?"),
            ("colour = \"red\"", "/h/slipway.toml: unknown key \"colour\" ('slipway settings' lists the keys)"),
            ("home = \"/x\"", "/h/slipway.toml: home cannot be set in slipway.toml, which lives in the home; use --home or SLIPWAY_HOME"),
            ("[web]\nport = 1", "/h/slipway.toml: unknown key \"web\" ('slipway settings' lists the keys)"),
            ("[domain]\n", "/h/slipway.toml: [domain] is a table; slipway.toml holds only key = value lines"),
        ];
        for (text, want) in cases {
            assert_eq!(load_with(Some(text), &[]).err().as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn acme_settings_default_to_lets_encrypt_and_take_a_test_server() {
        let defaults = load_with(None, &[]).unwrap_or_else(|e| panic!("{e}")).settings;
        assert_eq!(defaults.acme_directory, "https://acme-v02.api.letsencrypt.org/directory");
        assert_eq!((defaults.acme_email, defaults.acme_ca_file), (None, None));
        let text = "acme_directory = \"https://127.0.0.1:14000/dir\"\nacme_email = \"ops@example.com\"\n";
        let loaded = load_with(Some(text), &[("SLIPWAY_ACME_CA_FILE", "/etc/pebble/ca.pem")])
            .unwrap_or_else(|e| panic!("{e}"))
            .settings;
        assert_eq!(loaded.acme_directory, "https://127.0.0.1:14000/dir");
        assert_eq!(loaded.acme_email.as_deref(), Some("ops@example.com"));
        assert_eq!(loaded.acme_ca_file, Some(PathBuf::from("/etc/pebble/ca.pem")));
        assert!(!read_by_daemon("acme_directory"), "read at every ACME check, no restart needed");
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let cases = [
            ("domain = \"a\"\nmax_slug_mb 200\n", 2),
            ("domain = \"a\"\ndomain = \"b\"\n", 2),
            ("# c\n\nports = \"5000-5999\n", 3),
        ];
        for (text, line) in cases {
            let err = load_with(Some(text), &[]).err().unwrap_or_default();
            assert!(
                err.starts_with(&format!("/h/slipway.toml: line {line} is not valid TOML: ")),
                "{text:?}: {err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let text = "domain = \"file.example\"\nmax_slug_mb = 7\n";
        let loaded = load_with(Some(text), &[("SLIPWAY_DOMAIN", "env.example"), ("SLIPWAY_PORTS", "")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.settings.domain, "env.example");
        assert_eq!(origin(&loaded, "domain"), ("env.example".into(), Origin::Env));
        assert_eq!(origin(&loaded, "max_slug_mb"), ("7".into(), Origin::File));
        // An empty variable is unset.
        assert_eq!(origin(&loaded, "ports"), ("5000-5999".into(), Origin::Default));
        let effective = loaded.values.iter().find(|v| v.key == "domain").map(Effective::source);
        assert_eq!(effective.as_deref(), Some("env SLIPWAY_DOMAIN"));
        // A bad variable names the variable, as before the file existed.
        assert_eq!(
            load_with(Some(text), &[("SLIPWAY_MAX_SLUG_MB", "-1")]).err().as_deref(),
            Some("SLIPWAY_MAX_SLUG_MB=\"-1\" is not valid: expected a whole number in range")
        );
        // A good variable hides a bad file value for its key: the variable wins.
        assert!(load_with(Some("max_slug_mb = -1"), &[("SLIPWAY_MAX_SLUG_MB", "5")]).is_ok());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggestion("max_slug"), Some("max_slug_mb"));
        assert_eq!(suggestion("SLIPWAY_BOOT_TIMEOUT"), Some("boot_timeout"));
        assert_eq!(suggestion("routeraddr"), Some("router_addr"));
        assert_eq!(suggestion("keep_release"), Some("keep_releases"));
        assert_eq!(suggestion("zzz"), None);
    }

    #[test]
    fn values_written_by_set() {
        assert_eq!(toml_value(Kind::Number, "200").to_string(), "200");
        assert_eq!(toml_value(Kind::Number, "0.5").to_string(), "0.5");
        assert_eq!(toml_value(Kind::Number, "-1").to_string(), "-1");
        assert_eq!(toml_value(Kind::Number, "inf").to_string(), "\"inf\"");
        assert_eq!(toml_value(Kind::Flag, "1").to_string(), "true");
        assert_eq!(toml_value(Kind::Text, "5000-5999").to_string(), "\"5000-5999\"");
    }

    #[test]
    fn set_and_unset_keep_comments_and_other_keys() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let home = Home::at(dir.path());
        let file = home.settings_file();
        std::fs::write(&file, "# mine\ndomain = \"a.example\" # the wildcard\n\nmax_slug_mb = 9\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let pairs =
            [("SLIPWAY_DOMAIN".to_string(), "b.example".to_string()), ("boot_timeout".into(), "5".into())];
        set(&home, &pairs).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(
            text,
            "# mine\ndomain = \"b.example\" # the wildcard\n\nmax_slug_mb = 9\nboot_timeout = 5\n"
        );

        // A bad value changes nothing.
        let bad = [("max_slug_mb".to_string(), "-1".to_string())];
        let err = set(&home, &bad).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("max_slug_mb = -1 is not valid: expected a whole number in range"));
        assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), text);

        unset(&home, &["max_slug_mb".to_string(), "log".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // (A removed key takes the blank and comment lines above it along.)
        assert_eq!(text, "# mine\ndomain = \"b.example\" # the wildcard\nboot_timeout = 5\n");

        // A file of comments only: they stay above the first key.
        std::fs::write(&file, "# only a comment\n").unwrap_or_else(|e| panic!("{e}"));
        set(&home, &[("domain".to_string(), "c.example".to_string())]).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(text, "# only a comment\ndomain = \"c.example\"\n");

        // A symlink is not written through.
        let target = dir.path().join("elsewhere.toml");
        std::fs::rename(&file, &target).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&target, &file).unwrap_or_else(|e| panic!("{e}"));
        let other = [("domain".to_string(), "d.example".to_string())];
        let err = set(&home, &other).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert!(std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink()));
    }
}
