//! Which Python builds an app: `.python-version` (`3.12` or `3.12.4`), else the deprecated
//! `runtime.txt` (`python-3.12.4`), else the server's default `python3`. A server cannot always
//! download interpreters, so a request counts as available when an installed interpreter has the
//! same major.minor; a different patch level builds with a warning, a missing minor version is
//! an error that lists what is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{output, BuildError};

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

/// The version an app asks for and where it said so.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub version: String,
    pub source: &'static str,
}

/// Reads `.python-version`, then `runtime.txt`.
pub fn requested(dir: &Path) -> Result<Option<Request>, BuildError> {
    if let Ok(text) = std::fs::read_to_string(dir.join(".python-version")) {
        let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
        let version = line.strip_prefix("python-").unwrap_or(line);
        return valid(version, ".python-version").map(Some);
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("runtime.txt")) {
        let version = text.trim().strip_prefix("python-").unwrap_or(text.trim()).to_string();
        output::warn("runtime.txt is deprecated; put the version in .python-version instead (e.g. 3.12)");
        return valid(&version, "runtime.txt").map(Some);
    }
    Ok(None)
}

fn valid(version: &str, source: &'static str) -> Result<Request, BuildError> {
    let parts: Vec<&str> = version.split('.').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts[0] == "3"
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(Request { version: version.to_string(), source })
    } else {
        Err(BuildError::Detect(format!(
            "{source} asks for Python {version:?}; write a version like 3.12 or 3.12.4"
        )))
    }
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
        (true, Some(exe), Some(version)) if !exe.is_empty() => {
            Some(Interpreter { path: PathBuf::from(exe), version: version.to_string() })
        }
        _ => None,
    }
}

/// Every interpreter this server has: the default plus each `python3.N` on PATH.
pub fn installed(default: &str) -> Vec<Interpreter> {
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
    let mut found: Vec<Interpreter> = Vec::new();
    for name in names {
        if let Some(i) = probe(&name) {
            if !found.iter().any(|f| f.version == i.version) {
                found.push(i);
            }
        }
    }
    found
}

/// The interpreter for this app.
pub fn select(dir: &Path, default: &str) -> Result<Interpreter, BuildError> {
    let Some(request) = requested(dir)? else {
        return probe(default)
            .ok_or_else(|| BuildError::Detect(format!("the Python interpreter '{default}' did not run")));
    };
    let available = installed(default);
    choose(&request, &available)
}

pub fn choose(request: &Request, available: &[Interpreter]) -> Result<Interpreter, BuildError> {
    let wanted_minor = minor_of(&request.version);
    let exact = available.iter().find(|i| i.version == request.version);
    let same_minor =
        available.iter().filter(|i| i.minor() == wanted_minor).max_by_key(|i| patch_of(&i.version));
    match (exact, same_minor) {
        (Some(i), _) => Ok(i.clone()),
        (None, Some(i)) => {
            if request.version.matches('.').count() == 2 {
                output::warn(&format!(
                    "{} asks for Python {}; building with the installed {} instead",
                    request.source, request.version, i.version
                ));
            }
            Ok(i.clone())
        }
        (None, None) => {
            let list: Vec<String> =
                available.iter().map(|i| format!("{} ({})", i.version, i.path.display())).collect();
            Err(BuildError::Detect(format!(
                "{} asks for Python {}, which this server does not have; installed: {}",
                request.source,
                request.version,
                if list.is_empty() { "none".to_string() } else { list.join(", ") }
            )))
        }
    }
}

fn patch_of(version: &str) -> u32 {
    version.rsplit('.').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(v: &str) -> Interpreter {
        Interpreter { path: PathBuf::from(format!("/usr/bin/python{v}")), version: v.into() }
    }

    fn req(v: &str) -> Request {
        Request { version: v.into(), source: ".python-version" }
    }

    #[test]
    fn choosing() {
        let have = [py("3.11.2"), py("3.12.7")];
        assert_eq!(choose(&req("3.12"), &have).unwrap(), py("3.12.7"));
        assert_eq!(choose(&req("3.11.2"), &have).unwrap(), py("3.11.2"));
        assert_eq!(choose(&req("3.11.9"), &have).unwrap(), py("3.11.2")); // patch mismatch: warns
        let err = choose(&req("3.13"), &have).unwrap_err().to_string();
        assert!(err.contains("3.11.2 (/usr/bin/python3.11.2)") && err.contains("3.12.7"), "{err}");
    }

    #[test]
    fn reading_requests() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(requested(d.path()).unwrap(), None);
        std::fs::write(d.path().join("runtime.txt"), "python-3.12.4\n").unwrap();
        assert_eq!(requested(d.path()).unwrap().unwrap().version, "3.12.4");
        std::fs::write(d.path().join(".python-version"), "# pinned\n3.11\n").unwrap();
        assert_eq!(requested(d.path()).unwrap(), Some(req("3.11")));
        std::fs::write(d.path().join(".python-version"), "latest\n").unwrap();
        assert!(requested(d.path()).is_err());
    }

    #[test]
    fn minor_versions() {
        assert_eq!(minor_of("3.12.4"), "3.12");
        assert_eq!(minor_of("3.12"), "3.12");
    }
}
