//! Which Python builds an app, as Heroku's Python buildpack decides it:
//!
//! 1. `runtime.txt` (`python-3.12` or `python-3.12.4`; deprecated, warns) — it wins when both
//!    files exist, as on Heroku;
//! 2. `.python-version` (`3.12` or `3.12.4`; `#` comments and blank lines allowed, exactly one
//!    version line);
//! 3. `Pipfile.lock`'s `_meta.requires.python_full_version`, else `python_version`;
//! 4. nothing: the major version of the last build's venv, else Heroku's default major
//!    ([`DEFAULT_MAJOR`]) when installed, else the newest supported installed one.
//!
//! A misspelled `.python-version` (`python-version`, `.python_version`, …) fails the build, as
//! does a major version Heroku no longer supports (older than 3.[`OLDEST_MINOR`]) or does not
//! know yet (newer than 3.[`NEWEST_MINOR`]); 3.10 builds with a deprecation warning.
//!
//! A server cannot always download interpreters, so a request counts as available when an
//! installed interpreter has the same major.minor; a different patch level builds with the
//! nearest installed patch and a warning, a missing minor version is an error that lists what is
//! installed. Installed means: the `python` setting, `python3.N` on PATH, the dirs of the
//! `python_dirs` setting (plus `cache/.tools/python`), pyenv roots and uv's managed Pythons — each
//! only when the build's user may execute it, and each asked for its version ([`probe`]). When
//! none has the requested major.minor and the `python_install` setting is on, the caller's
//! installer (`uv python install`) runs first ([`to_install`], [`select`]).
//!
//! uv apps follow Heroku's extra rule ([`uv_version_rule`]): the version must come from
//! `.python-version`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{output, BuildError};

/// Heroku's default Python major version for apps that name none.
pub const DEFAULT_MAJOR: &str = "3.14";
/// The oldest 3.N Heroku still builds; older ones are end-of-life and refused.
pub const OLDEST_MINOR: u32 = 10;
/// The newest 3.N Heroku knows; newer ones are refused as unrecognised.
pub const NEWEST_MINOR: u32 = 14;
/// 3.N that still builds, with a warning that support ends soon.
const DEPRECATED_MINOR: u32 = 10;

/// Misspellings of `.python-version` seen in the wild (Heroku's list).
const MISSPELLED: &[&str] = &[
    " .python-version",
    ". python-version",
    ".python_version.txt",
    ".python_version",
    ".python-version ",
    ",python-version",
    ".python-version.",
    ".python-version.py",
    ".python-version.rtf",
    ".python-version.txt",
    ".python-version.TXT",
    ".Python-version",
    ".python.version",
    ".pythonversion",
    "'.python-version'",
    "python_version.txt",
    "python_version",
    "python-version.",
    "python-version.txt",
    "python-version",
];

/// Misspellings of `runtime.txt` (not in Heroku's list; refused the same way).
const MISSPELLED_RUNTIME: &[&str] = &["runtime.text", "runtime.txt.txt", "Runtime.txt", "runtime.txt "];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub path: PathBuf,
    pub version: String, // "3.11.2"
}

impl Interpreter {
    pub fn minor(&self) -> &str {
        minor_of(&self.version)
    }
}

fn minor_of(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

/// Where a version request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    RuntimeTxt,
    PythonVersion,
    PipfileLock,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::RuntimeTxt => "runtime.txt",
            Origin::PythonVersion => ".python-version",
            Origin::PipfileLock => "Pipfile.lock",
        }
    }
}

/// The version an app asks for and where it said so.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub version: String,
    pub origin: Origin,
}

fn detect(message: String) -> BuildError {
    BuildError::Detect(message)
}

/// Lines with surrounding whitespace trimmed, blank lines and `#` comments left out.
fn version_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// `N.N` or `N.N.N`, integers without redundant leading zeros.
fn is_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0'))
        })
}

const INSTRUCTIONS: &str = "Put your app's major Python version in a file named .python-version
in the root directory of your app, e.g. a file that contains exactly:
3.14";

/// The text encoding of a version file Heroku refuses to read (a BOM, UTF-16, not UTF-8), named.
pub fn unsupported_encoding(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        Some("UTF-8 (with BOM)")
    } else if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        Some("UTF-16 (with BOM)")
    } else if std::str::from_utf8(bytes).is_err() {
        Some("not UTF-8")
    } else {
        None
    }
}

/// What the app asks for (`runtime.txt`, `.python-version`, `Pipfile.lock`), validated but not
/// yet checked against supported versions.
pub fn requested(dir: &Path) -> Result<Option<Request>, BuildError> {
    let read = |name: &str| -> Result<Option<String>, BuildError> { super::inputs::read_opt(dir, name) };
    if let Some(text) = read("runtime.txt")? {
        let lines = version_lines(&text);
        return match lines.as_slice() {
            [line] if line.strip_prefix("python-").is_some_and(is_version) => {
                Ok(Some(Request { version: line["python-".len()..].to_string(), origin: Origin::RuntimeTxt }))
            }
            _ => Err(detect(format!(
                "Invalid Python version in runtime.txt.\n\nThe Python version in your runtime.txt \
                 file isn't in the correct format\n(python-3.N or python-3.N.N). runtime.txt is \
                 deprecated: we recommend\nswitching to .python-version instead of fixing it.\n\n\
                 Delete runtime.txt.\n{INSTRUCTIONS}"
            ))),
        };
    }
    for name in MISSPELLED_RUNTIME {
        if dir.join(name).is_file() {
            return Err(detect(format!(
                "Your runtime.txt file is spelled incorrectly.\n\nYour app's runtime.txt file \
                 currently has the filename:\n'{name}'\n\nHowever, runtime.txt is deprecated: \
                 rather than renaming it,\ndelete it and put the version in a .python-version \
                 file.\n{INSTRUCTIONS}"
            )));
        }
    }
    for name in MISSPELLED {
        if dir.join(name).is_file() {
            return Err(detect(format!(
                "Your .python-version file is spelled incorrectly.\n\nYour app's .python-version \
                 file currently has the filename:\n'{name}'\n\nHowever, the correct spelling is \
                 (without quotes):\n'.python-version'\n\nYou must rename your file to the correct \
                 name."
            )));
        }
    }
    if let Some(text) = read(".python-version")? {
        if let Some(encoding) =
            std::fs::read(dir.join(".python-version")).ok().and_then(|b| unsupported_encoding(&b))
        {
            return Err(detect(format!(
                "Unable to read .python-version.\n\nYour .python-version file couldn't be read \
                 because it's using\nan unsupported text encoding:\n{encoding}\n\nConfigure your editor \
                 to save files as UTF-8, without a BOM,\nthen delete and recreate the file using the \
                 correct encoding.\n\nIf that doesn't work, make sure you don't have a .gitattributes\n\
                 file that's overriding the text encoding."
            )));
        }
        let lines = version_lines(&text);
        if let Some(bad) = lines.iter().find(|l| !is_version(l)) {
            let shown: String = bad
                .chars()
                .map(|c| if c.is_ascii_graphic() || c == ' ' || c == '\t' { c } else { '\u{fffd}' })
                .collect();
            return Err(detect(format!(
                "Invalid Python version in .python-version.\n\nThe following version was found:\n\
                 {shown}\n\nHowever, the Python version must be specified as either:\n\
                 1. The major version only, for example: {DEFAULT_MAJOR} (recommended)\n\
                 2. An exact patch version, for example: {DEFAULT_MAJOR}.999\n\n\
                 Don't include quotes, a 'python-' prefix or wildcards. Any\n\
                 code comments must be on a separate line prefixed with '#'."
            )));
        }
        return match lines.as_slice() {
            [one] => Ok(Some(Request { version: one.to_string(), origin: Origin::PythonVersion })),
            [] => Err(detect(format!(
                "No Python version found in .python-version.\n\nUpdate the file so that it \
                 contains your app's major Python\nversion number, e.g. exactly:\n{DEFAULT_MAJOR}\n\n\
                 If the file already contains a version, check the line doesn't\nbegin with a '#', \
                 otherwise it will be treated as a comment."
            ))),
            many => Err(detect(format!(
                "Multiple Python versions found in .python-version.\n\nMultiple versions were \
                 found in your .python-version file:\n\n{}\n\nUpdate the file so it contains only \
                 one Python version.",
                many.join("\n")
            ))),
        };
    }
    if let Some(text) = read("Pipfile.lock")? {
        let lock: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            detect(format!(
                "Can't parse Pipfile.lock.\n\nA Pipfile.lock file was found, however, it couldn't \
                 be parsed:\n{e}\n\nRun 'pipenv lock' to regenerate/fix the lockfile."
            ))
        })?;
        let requires = &lock["_meta"]["requires"];
        let field = requires["python_full_version"].as_str().or(requires["python_version"].as_str());
        if let Some(version) = field {
            if !is_version(version) {
                return Err(detect(format!(
                    "Invalid Python version in Pipfile.lock.\n\nThe 'python_version' or \
                     'python_full_version' field holds:\n{version}\n\nwhich is not a version like \
                     {DEFAULT_MAJOR} or {DEFAULT_MAJOR}.999 (wildcards aren't supported).\n\
                     Fix your Pipfile, then run 'pipenv lock'."
                )));
            }
            return Ok(Some(Request { version: version.to_string(), origin: Origin::PipfileLock }));
        }
    }
    Ok(None)
}

/// Refuses end-of-life and unknown major versions, as Heroku does; warns for deprecated ones.
pub fn check_supported(request: &Request) -> Result<(), BuildError> {
    let mut parts = request.version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if major < 3 || (major == 3 && minor < OLDEST_MINOR) {
        return Err(detect(format!(
            "The requested Python version has reached end-of-life.\n\nPython {major}.{minor} has \
             reached its upstream end-of-life, and is\ntherefore no longer receiving security \
             updates:\nhttps://devguide.python.org/versions/#supported-versions\n\nPlease upgrade \
             to at least Python 3.{OLDEST_MINOR} by changing the\nversion in your {} file.",
            request.origin.name()
        )));
    }
    if major > 3 || minor > NEWEST_MINOR {
        return Err(detect(format!(
            "The requested Python version isn't recognised.\n\nThe requested Python version \
             {major}.{minor} isn't recognised.\nSwitch to a supported version (such as Python \
             3.{NEWEST_MINOR}) by changing\nthe version in your {} file.",
            request.origin.name()
        )));
    }
    if minor == DEPRECATED_MINOR {
        output::warn(&format!(
            "Warning: Support for Python 3.{DEPRECATED_MINOR} is deprecated!\n\nPython \
             3.{DEPRECATED_MINOR} reaches its upstream end-of-life in October 2026 and\nno longer \
             receives security updates. Upgrade to a newer Python version\nas soon as possible, \
             by changing the version in your {} file.",
            request.origin.name()
        ));
    }
    Ok(())
}

/// Runs `python` and asks it for its real executable and version (a pyenv shim resolves to the
/// interpreter it stands for).
pub fn probe(python: &str) -> Option<Interpreter> {
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(exe), Some(version)) if !exe.is_empty() && is_version(version.trim()) => {
            Some(Interpreter { path: PathBuf::from(exe), version: version.trim().to_string() })
        }
        _ => None,
    }
}

/// Where to look for interpreters besides PATH.
#[derive(Debug, Default)]
pub struct Roots {
    /// The `python_dirs` setting: each a prefix with `bin/python3` or a dir of such prefixes.
    pub python_dirs: Vec<PathBuf>,
    /// `$PYENV_ROOT`, the build user's `~/.pyenv`, `/root/.pyenv` (when readable).
    pub pyenv: Vec<PathBuf>,
    /// The build user's home, for uv's `~/.local/share/uv/python`.
    pub home: Option<PathBuf>,
    /// Where [`super::probes`] remembers the interpreters' answers (none: ask every time).
    pub probe_cache: Option<PathBuf>,
}

impl Roots {
    /// The roots for this process's user.
    pub fn for_this_user(python_dirs: &[PathBuf]) -> Roots {
        let home = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from));
        let mut pyenv: Vec<PathBuf> = std::env::var_os("PYENV_ROOT").map(PathBuf::from).into_iter().collect();
        pyenv.extend(home.iter().map(|h| h.join(".pyenv")));
        pyenv.push(PathBuf::from("/root/.pyenv"));
        Roots { python_dirs: python_dirs.to_vec(), pyenv, home, probe_cache: None }
    }
}

fn may(path: &Path, flags: nix::unistd::AccessFlags) -> bool {
    nix::unistd::access(path, flags).is_ok()
}

/// The `bin/python3` of each prefix under `dir` (sorted), and of `dir` itself.
fn prefixes_in(dir: &Path, out: &mut Vec<PathBuf>) {
    use nix::unistd::AccessFlags;
    if !may(dir, AccessFlags::R_OK | AccessFlags::X_OK) {
        return;
    }
    let own = dir.join("bin/python3");
    if own.is_file() {
        out.push(own);
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut found: Vec<PathBuf> =
        entries.flatten().map(|e| e.path().join("bin/python3")).filter(|p| p.is_file()).collect();
    found.sort();
    out.extend(found);
}

/// Candidate interpreter paths outside PATH, in order: `python_dirs`, pyenv roots, uv's dir;
/// only those the build's user may execute.
pub fn candidates(roots: &Roots) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in &roots.python_dirs {
        prefixes_in(dir, &mut out);
    }
    for root in &roots.pyenv {
        prefixes_in(&root.join("versions"), &mut out);
    }
    if let Some(home) = &roots.home {
        prefixes_in(&home.join(".local/share/uv/python"), &mut out);
    }
    out.retain(|p| may(p, nix::unistd::AccessFlags::X_OK));
    out.dedup();
    out
}

/// Every interpreter this server has, one per version: the `python` setting, each `python3.N`
/// on PATH, then [`candidates`].
pub fn installed(default: &str, roots: &Roots) -> Vec<Interpreter> {
    let mut names = vec![default.to_string()];
    for dir in std::env::var("PATH").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let minor = name.strip_prefix("python3.");
                if minor.is_some_and(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit())) {
                    names.push(entry.path().display().to_string());
                }
            }
        }
    }
    names.extend(candidates(roots).iter().map(|p| p.display().to_string()));
    names.retain(|name| !super::probes::is_searched_pyenv_shim(name, &roots.pyenv));
    let mut found: Vec<Interpreter> = Vec::new();
    let mut probes = super::probes::Probes::load(roots.probe_cache.as_deref());
    for name in names {
        let answer = probes.get(&name, |n| probe(n).map(|i| (i.path.display().to_string(), i.version)));
        if let Some((path, version)) = answer {
            if !found.iter().any(|f| f.version == version) {
                found.push(Interpreter { path: PathBuf::from(path), version });
            }
        }
    }
    if let Err(e) = probes.save() {
        output::detail(&format!("(the interpreters' versions could not be remembered: {e})"));
    }
    found
}

/// The major version (`3.12`) of the venv a previous build made, from its `pyvenv.cfg`.
pub fn venv_major(venv: &Path) -> Option<String> {
    let text = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        let v = v.trim();
        (matches!(k.trim(), "version" | "version_info") && is_version(minor_of(v)))
            .then(|| minor_of(v).to_string())
    })
}

/// How the app's dependencies get installed, as far as the interpreter choice cares: Heroku
/// requires uv apps to name their version in `.python-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Uv,
    Other,
}

/// Heroku's rule for uv apps: the version must come from `.python-version` (not runtime.txt, not
/// a default or the last build's). `origin` is None when the app names no version; `major` is
/// the version that would be used. Returns Heroku's error.
pub fn uv_version_rule(manager: Manager, origin: Option<Origin>, major: &str) -> Result<(), BuildError> {
    const NOTE: &str = "Note: We strongly recommend that you don't specify the Python\npatch version \
         number in your .python-version file, since it will\npin your app to an exact Python version \
         and so stop your app from\nreceiving security updates each time it builds.";
    match (manager, origin) {
        (Manager::Uv, None) => Err(detect(format!(
            "No Python version was specified.\n\nWhen using the package manager uv on Heroku, \
             you must specify\nyour app's Python version with a .python-version file.\n\nTo add a \
             .python-version file:\n\n1. Make sure you are in the root directory of your app\n   and \
             not a subdirectory.\n2. Run 'uv python pin {major}'\n   (adjust to match your app's major \
             Python version).\n3. Commit the changes to your Git repository using\n   'git add --all' \
             and then 'git commit'.\n\n{NOTE}"
        ))),
        (Manager::Uv, Some(Origin::RuntimeTxt)) => Err(detect(format!(
            "The runtime.txt file isn't supported when using uv.\n\nWhen using the package \
             manager uv on Heroku, you must specify\nyour app's Python version with a .python-version \
             file and not\na runtime.txt file.\n\nTo switch to a .python-version file:\n\n1. Make sure \
             you are in the root directory of your app\n   and not a subdirectory.\n2. Delete your \
             runtime.txt file.\n3. Run 'uv python pin {major}'\n   (adjust to match your app's major \
             Python version).\n4. Commit the changes to your Git repository using\n   'git add --all' \
             and then 'git commit'.\n\n{NOTE}"
        ))),
        _ => Ok(()),
    }
}

/// Installs a Python version the server lacks (`uv python install`, see `python::install_python`)
/// into a dir that [`Roots::python_dirs`] includes.
pub type Install<'a> = &'a dyn Fn(&str) -> Result<(), BuildError>;

/// What to ask `uv python install` for when no installed interpreter fits the request: None
/// when one fits (same major.minor), else the version as requested (`3.12` or `3.12.4`).
pub fn to_install(request: &Request, available: &[Interpreter]) -> Option<String> {
    let minor = minor_of(&request.version);
    (!available.iter().any(|i| i.minor() == minor)).then(|| request.version.clone())
}

/// The interpreter for this app. `last_major` is the major version of the build the app runs
/// now (Heroku's sticky version for apps that name none). `install`, when given, is used when
/// no installed interpreter has the requested major version (the `python_install` setting).
pub fn select(
    dir: &Path,
    default: &str,
    roots: &Roots,
    last_major: Option<&str>,
    manager: Manager,
    install: Option<Install<'_>>,
) -> Result<Interpreter, BuildError> {
    let request = requested(dir)?;
    let mut available = installed(default, roots);
    let Some(request) = request else {
        let (chosen, why) = choose_unspecified(&available, last_major)?;
        output::step(&format!("No Python version was specified. {why}"));
        uv_version_rule(manager, None, last_major.unwrap_or(DEFAULT_MAJOR))?;
        output::warn(&format!(
            "Warning: No Python version was specified.\n\nRelying on a default version isn't \
             recommended, since it can change\nover time and may not match your local \
             environment.\n\n{INSTRUCTIONS}"
        ));
        return Ok(chosen);
    };
    check_supported(&request)?;
    output::step(&format!("Using Python {} specified in {}", request.version, request.origin.name()));
    uv_version_rule(manager, Some(request.origin), minor_of(&request.version))?;
    if request.origin == Origin::RuntimeTxt {
        output::warn(&format!(
            "Warning: The runtime.txt file is deprecated.\n\nThe runtime.txt file is deprecated \
             since it has been replaced\nby the more widely supported .python-version file:\n\
             https://devcenter.heroku.com/changelog-items/3141\n\nDelete your runtime.txt file.\n\
             {INSTRUCTIONS}"
        ));
    }
    if let (Some(version), Some(install)) = (to_install(&request, &available), install) {
        install(&version)?;
        available = installed(default, roots);
    }
    choose(&request, &available)
}

fn supported(i: &Interpreter) -> bool {
    let minor: u32 = i.minor().split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
    i.version.starts_with("3.") && (OLDEST_MINOR..=NEWEST_MINOR).contains(&minor)
}

fn newest_of_minor<'a>(available: &'a [Interpreter], minor: &str) -> Option<&'a Interpreter> {
    available.iter().filter(|i| i.minor() == minor).max_by_key(|i| patch_of(&i.version))
}

/// No version requested: the last build's major version, else [`DEFAULT_MAJOR`], else the newest
/// supported interpreter installed; with the sentence that says which and why.
pub fn choose_unspecified(
    available: &[Interpreter],
    last_major: Option<&str>,
) -> Result<(Interpreter, String), BuildError> {
    if let Some(i) = last_major.and_then(|m| newest_of_minor(available, m)).filter(|i| supported(i)) {
        return Ok((
            i.clone(),
            format!("Using the same major version as the last build: Python {}", i.version),
        ));
    }
    if let Some(i) = newest_of_minor(available, DEFAULT_MAJOR) {
        return Ok((i.clone(), format!("Using the buildpack default: Python {}", i.version)));
    }
    let newest = available.iter().filter(|i| supported(i)).max_by_key(|i| {
        (i.minor().split('.').nth(1).and_then(|m| m.parse::<u32>().ok()), patch_of(&i.version))
    });
    match newest {
        Some(i) => Ok((
            i.clone(),
            format!(
                "Using the newest installed: Python {} (the default, Python {DEFAULT_MAJOR}, is not installed)",
                i.version
            ),
        )),
        None => Err(detect(format!(
            "No Python version was specified, and this server has no supported Python \
             (3.{OLDEST_MINOR} to 3.{NEWEST_MINOR}); installed: {}",
            listing(available)
        ))),
    }
}

fn listing(available: &[Interpreter]) -> String {
    let list: Vec<String> =
        available.iter().map(|i| format!("{} ({})", i.version, i.path.display())).collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

pub fn choose(request: &Request, available: &[Interpreter]) -> Result<Interpreter, BuildError> {
    let wanted_minor = minor_of(&request.version);
    let exact = available.iter().find(|i| i.version == request.version);
    let wanted_patch = patch_of(&request.version);
    let nearest = available
        .iter()
        .filter(|i| i.minor() == wanted_minor)
        .min_by_key(|i| (patch_of(&i.version).abs_diff(wanted_patch), u32::MAX - patch_of(&i.version)));
    match (exact, nearest) {
        (Some(i), _) => Ok(i.clone()),
        (None, Some(i)) => {
            if request.version.matches('.').count() == 2 {
                output::warn(&format!(
                    "{} asks for Python {}; building with the installed {} instead",
                    request.origin.name(),
                    request.version,
                    i.version
                ));
                Ok(i.clone())
            } else {
                Ok(newest_of_minor(available, wanted_minor).unwrap_or(i).clone())
            }
        }
        (None, None) => Err(detect(format!(
            "{} asks for Python {}, which this server does not have; installed: {} (install it \
             on the server, e.g. with pyenv, or let builds install it: python_install = 1)",
            request.origin.name(),
            request.version,
            listing(available)
        ))),
    }
}

fn patch_of(version: &str) -> u32 {
    if version.matches('.').count() < 2 {
        return 0;
    }
    version.rsplit('.').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(v: &str) -> Interpreter {
        Interpreter { path: PathBuf::from(format!("/usr/bin/python{v}")), version: v.into() }
    }

    fn req(v: &str) -> Request {
        Request { version: v.into(), origin: Origin::PythonVersion }
    }

    #[test]
    fn version_file_encodings() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"3.12\n", None),
            (b"\xEF\xBB\xBF# comment\r\n3.12\r\n", Some("UTF-8 (with BOM)")),
            (b"\xFF\xFE3\x00.\x001\x002\x00", Some("UTF-16 (with BOM)")),
            (b"3.12 \xE9\n", Some("not UTF-8")),
        ];
        for (bytes, want) in cases {
            assert_eq!(unsupported_encoding(bytes), *want, "{bytes:?}");
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".python-version"), b"\xEF\xBB\xBF3.12\n").unwrap();
        let err = requested(d.path()).unwrap_err().to_string();
        assert!(err.contains("Unable to read .python-version") && err.contains("UTF-8 (with BOM)"), "{err}");
    }

    #[test]
    fn uv_apps_must_name_their_version_in_python_version() {
        use Origin::*;
        let cases: &[(Manager, Option<Origin>, Option<&str>)] = &[
            (Manager::Uv, Some(PythonVersion), None),
            (Manager::Uv, None, Some("When using the package manager uv on Heroku, you must specify")),
            (Manager::Uv, Some(RuntimeTxt), Some("The runtime.txt file isn't supported when using uv")),
            (Manager::Uv, Some(PipfileLock), None),
            (Manager::Other, None, None),
            (Manager::Other, Some(RuntimeTxt), None),
        ];
        for (manager, origin, want) in cases {
            let got = uv_version_rule(*manager, *origin, "3.13").err().map(|e| e.to_string());
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.contains(w) && g.contains("uv python pin 3.13"), "{g}"),
                _ => panic!("{manager:?} {origin:?}: got {got:?}"),
            }
        }
    }

    #[test]
    fn what_python_install_asks_uv_for() {
        let have = [py("3.12.1"), py("3.13.0")];
        assert_eq!(to_install(&req("3.12"), &have), None);
        assert_eq!(to_install(&req("3.12.9"), &have), None, "a patch mismatch builds with the nearest");
        assert_eq!(to_install(&req("3.14"), &have).as_deref(), Some("3.14"));
        assert_eq!(to_install(&req("3.11.4"), &have).as_deref(), Some("3.11.4"));
        assert_eq!(to_install(&req("3.14"), &[]).as_deref(), Some("3.14"));
    }

    #[test]
    fn choosing() {
        let have = [py("3.11.2"), py("3.12.7"), py("3.12.1")];
        assert_eq!(choose(&req("3.12"), &have).unwrap(), py("3.12.7"));
        assert_eq!(choose(&req("3.11.2"), &have).unwrap(), py("3.11.2"));
        assert_eq!(choose(&req("3.11.9"), &have).unwrap(), py("3.11.2")); // patch mismatch: warns
        assert_eq!(choose(&req("3.12.2"), &have).unwrap(), py("3.12.1")); // the nearest patch
        assert_eq!(choose(&req("3.12.6"), &have).unwrap(), py("3.12.7"));
        let err = choose(&req("3.13"), &have).unwrap_err().to_string();
        assert!(err.contains("3.11.2 (/usr/bin/python3.11.2)") && err.contains("3.12.7"), "{err}");
    }

    #[test]
    fn no_version_requested() {
        let have = [py("3.9.18"), py("3.12.7"), py("3.13.0"), py("3.11.2")];
        let (i, why) = choose_unspecified(&have, None).unwrap();
        assert_eq!(i, py("3.13.0"));
        assert!(why.contains("newest installed") && why.contains("3.14, is not installed"), "{why}");
        let (i, why) = choose_unspecified(&have, Some("3.12")).unwrap();
        assert_eq!(i, py("3.12.7"));
        assert!(why.starts_with("Using the same major version as the last build: Python 3.12.7"), "{why}");
        // The last build's version is gone or end-of-life: the default rules again.
        assert_eq!(choose_unspecified(&have, Some("3.10")).unwrap().0, py("3.13.0"));
        assert_eq!(choose_unspecified(&have, Some("3.9")).unwrap().0, py("3.13.0"));
        let with_default = [py("3.13.0"), py("3.14.2")];
        let (i, why) = choose_unspecified(&with_default, None).unwrap();
        assert_eq!((i, why.as_str()), (py("3.14.2"), "Using the buildpack default: Python 3.14.2"));
        assert!(choose_unspecified(&[py("3.9.18")], None).is_err());
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    type Read = Result<Option<(String, Origin)>, String>;

    fn read(files: &[(&str, &str)]) -> Read {
        let d = dir_with(files);
        requested(d.path()).map(|r| r.map(|r| (r.version, r.origin))).map_err(|e| e.to_string())
    }

    #[test]
    fn reading_requests() {
        use Origin::*;
        let ok = |v: &str, o| Ok(Some((v.to_string(), o)));
        let table: &[(&[(&str, &str)], Read)] = &[
            (&[], Ok(None)),
            (&[("runtime.txt", "python-3.12.4\n")], ok("3.12.4", RuntimeTxt)),
            (&[("runtime.txt", "# pinned\n\n  python-3.12  \n")], ok("3.12", RuntimeTxt)),
            (&[(".python-version", "# pinned\n\n 3.11 \n")], ok("3.11", PythonVersion)),
            (&[(".python-version", "3.13.0")], ok("3.13.0", PythonVersion)),
            // runtime.txt wins over .python-version, as in Heroku's buildpack.
            (&[("runtime.txt", "python-3.12\n"), (".python-version", "3.11\n")], ok("3.12", RuntimeTxt)),
            (
                &[("Pipfile.lock", r#"{"_meta":{"requires":{"python_version":"3.12"}}}"#)],
                ok("3.12", PipfileLock),
            ),
            (
                &[(
                    "Pipfile.lock",
                    r#"{"_meta":{"requires":{"python_version":"3.12","python_full_version":"3.12.3"}}}"#,
                )],
                ok("3.12.3", PipfileLock),
            ),
            (&[("Pipfile.lock", r#"{"_meta":{}}"#)], Ok(None)),
            (
                &[
                    (".python-version", "3.11\n"),
                    ("Pipfile.lock", r#"{"_meta":{"requires":{"python_version":"3.12"}}}"#),
                ],
                ok("3.11", PythonVersion),
            ),
        ];
        for (files, want) in table {
            assert_eq!(&read(files), want, "{files:?}");
        }
    }

    #[test]
    fn refusing_requests() {
        let table: &[(&[(&str, &str)], &str)] = &[
            (&[(".python-version", "latest\n")], "Invalid Python version in .python-version"),
            (&[(".python-version", "python-3.12\n")], "Invalid Python version in .python-version"),
            (&[(".python-version", "3.012\n")], "Invalid Python version in .python-version"),
            (&[(".python-version", "3.12 # comment\n")], "Invalid Python version in .python-version"),
            (&[(".python-version", "# only a comment\n\n")], "No Python version found in .python-version"),
            (&[(".python-version", "3.12\n3.11\n")], "Multiple Python versions found in .python-version"),
            (&[("runtime.txt", "3.12\n")], "Invalid Python version in runtime.txt"),
            (&[("runtime.txt", "python-3.12\npython-3.11\n")], "Invalid Python version in runtime.txt"),
            (&[("runtime.text", "python-3.12\n")], "runtime.txt file is spelled incorrectly"),
            (&[("runtime.text", "python-3.12\n"), (".python-version", "3.12\n")], "'runtime.text'"),
            (&[("python-version", "3.12\n")], "spelled incorrectly"),
            (&[(".python_version", "3.12\n"), (".python-version", "3.12\n")], "'.python_version'"),
            (&[("Pipfile.lock", "{not json")], "Can't parse Pipfile.lock"),
            (
                &[("Pipfile.lock", r#"{"_meta":{"requires":{"python_version":"3.*"}}}"#)],
                "Invalid Python version in Pipfile.lock",
            ),
        ];
        for (files, want) in table {
            let err = read(files).unwrap_err();
            assert!(err.contains(want), "{files:?}: {err}");
        }
    }

    #[test]
    fn supported_versions() {
        let check = |v: &str| check_supported(&req(v)).map_err(|e| e.to_string());
        assert!(check("3.9").unwrap_err().contains("reached end-of-life"));
        assert!(check("2.7.18").unwrap_err().contains("Python 2.7 has reached"));
        assert!(check("3.15").unwrap_err().contains("isn't recognised"));
        assert!(check("4.0").unwrap_err().contains("isn't recognised"));
        for v in ["3.10", "3.11.2", "3.12", "3.13.1", "3.14"] {
            assert!(check(v).is_ok(), "{v}");
        }
    }

    #[test]
    fn minor_versions() {
        assert_eq!(minor_of("3.12.4"), "3.12");
        assert_eq!(minor_of("3.12"), "3.12");
        assert_eq!(patch_of("3.12"), 0);
        assert_eq!(patch_of("3.12.4"), 4);
    }

    /// A stub `python3` that answers the probe with `version`.
    fn stub(prefix: &Path, version: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        let path = prefix.join("bin/python3");
        std::fs::write(&path, format!("#!/bin/sh\necho \"$0\"\necho {version}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn discovering_interpreters() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let single = stub(&root.join("opt/py312"), "3.12.5", 0o755);
        let a = stub(&root.join("many/3.11.9"), "3.11.9", 0o755);
        let b = stub(&root.join("many/3.13.2"), "3.13.2", 0o755);
        std::fs::create_dir_all(root.join("many/not-a-python")).unwrap();
        let pyenv = stub(&root.join("pyenv/versions/3.10.4"), "3.10.4", 0o755);
        let uv =
            stub(&root.join("home/.local/share/uv/python/cpython-3.14.0-linux-x86_64-gnu"), "3.14.0", 0o755);
        let roots = Roots {
            python_dirs: vec![root.join("opt/py312"), root.join("many"), root.join("missing")],
            pyenv: vec![root.join("pyenv"), root.join("no-pyenv")],
            home: Some(root.join("home")),
            probe_cache: None,
        };
        assert_eq!(candidates(&roots), vec![single.clone(), a, b.clone(), pyenv, uv.clone()]);

        let found = installed("/nonexistent/python3", &roots);
        let get = |v: &str| found.iter().find(|i| i.version == v).map(|i| i.path.clone());
        assert_eq!(get("3.12.5"), Some(single));
        assert_eq!(get("3.14.0"), Some(uv));
        assert_eq!(get("3.13.2"), Some(b));

        // Not executable: left out (root may execute any file with an x bit, so use none).
        let hidden = stub(&root.join("locked/3.12.9"), "3.12.9", 0o644);
        let roots = Roots { python_dirs: vec![root.join("locked")], ..Roots::default() };
        assert!(!candidates(&roots).contains(&hidden));
    }

    #[test]
    fn sticky_version_from_the_last_venv() {
        let d = dir_with(&[(
            "pyvenv.cfg",
            "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.12.7\n",
        )]);
        assert_eq!(venv_major(d.path()).as_deref(), Some("3.12"));
        let d = dir_with(&[(
            "pyvenv.cfg",
            "home = /x\nimplementation = CPython\nuv = 0.5.0\nversion_info = 3.13.1\n",
        )]);
        assert_eq!(venv_major(d.path()).as_deref(), Some("3.13"));
        assert_eq!(venv_major(Path::new("/nonexistent")), None);
    }
}
