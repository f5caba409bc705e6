//! Build inputs never come from outside the build dir. Every file a build reads or runs by name
//! (Procfile, requirements files and their `-r`/`-c` includes, runtime.txt, .python-version,
//! Pipfile(.lock), pyproject.toml, uv.lock, poetry.lock, app.json, nltk.txt, .slugignore,
//! `bin/pre_compile`, `bin/post_compile`, and scripts a Procfile command starts with) is opened
//! with [`fsutil::open_beneath`]: a symlink inside the tree that points inside it is fine, one
//! that leads out (`Procfile -> /etc/passwd`) fails the build with one line naming the file.
//! The readers in `build::*` read through [`read`]/[`read_opt`] too, so a link planted by a
//! hook after [`check`] ran is refused at the read itself.

use std::path::{Component, Path, PathBuf};

use crate::fsutil::{self, BeneathError};
use crate::procfile::Procfile;

use super::BuildError;

/// The files a build reads by name, relative to the build dir.
pub const INPUTS: &[&str] = &[
    "Procfile",
    "requirements.txt",
    "runtime.txt",
    ".python-version",
    "Pipfile",
    "Pipfile.lock",
    "pyproject.toml",
    "uv.lock",
    "poetry.lock",
    "app.json",
    "nltk.txt",
    ".slugignore",
    "bin/pre_compile",
    "bin/post_compile",
];

/// How deep `-r` includes may nest (pip has no limit; a cycle is caught by `seen`).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads build input `rel` of `dir`; a link out of `dir` is an error naming `rel`.
pub fn read(dir: &Path, rel: &str) -> Result<String, BuildError> {
    fsutil::read_beneath(dir, rel).map_err(refused)
}

/// [`read`], a missing file as `None`.
pub fn read_opt(dir: &Path, rel: &str) -> Result<Option<String>, BuildError> {
    fsutil::read_beneath_opt(dir, rel).map_err(refused)
}

/// Whether `rel` exists as a regular file beneath `dir` (a link out counts as absent: [`check`]
/// has refused it already).
pub fn is_file(dir: &Path, rel: &str) -> bool {
    fsutil::open_beneath(dir, rel)
        .and_then(|f| f.metadata().map_err(|source| BeneathError::Io { path: rel.into(), source }))
        .is_ok_and(|m| m.is_file())
}

fn refused(e: BeneathError) -> BuildError {
    BuildError::Input(e.to_string())
}

/// Checks every input of [`INPUTS`] present in `dir`, and the requirements files
/// `requirements.txt` includes. Run after the export and again after `bin/pre_compile`.
pub fn check(dir: &Path) -> Result<(), BuildError> {
    for name in INPUTS {
        match fsutil::check_beneath(dir, name) {
            Err(e) if !e.is_missing() => return Err(refused(e)),
            _ => {}
        }
    }
    let mut seen = Vec::new();
    check_requirements(dir, Path::new("requirements.txt"), None, 0, &mut seen)
}

fn check_requirements(
    dir: &Path,
    rel: &Path,
    from: Option<&Path>,
    depth: usize,
    seen: &mut Vec<PathBuf>,
) -> Result<(), BuildError> {
    if depth > MAX_INCLUDE_DEPTH || seen.iter().any(|s| s == rel) {
        return Ok(());
    }
    seen.push(rel.to_path_buf());
    let named = |what: String| match from {
        Some(f) => format!("{what} (included by {})", f.display()),
        None => what,
    };
    let text = match fsutil::read_beneath(dir, rel) {
        Ok(text) => text,
        Err(e) if e.is_missing() => return Ok(()), // pip says so itself
        Err(BeneathError::Escapes(name)) => return Err(refused(BeneathError::Escapes(named(name)))),
        Err(e) => return Err(refused(e)),
    };
    let base = rel.parent().unwrap_or(Path::new(""));
    for include in requirement_includes(&text) {
        let Some(target) = join_inside(base, &include) else {
            return Err(refused(BeneathError::Escapes(format!("{include} (included by {})", rel.display()))));
        };
        check_requirements(dir, &target, Some(rel), depth + 1, seen)?;
    }
    Ok(())
}

/// `base/include` normalised without touching the disk; `None` when it leaves the root
/// (absolute, or more `..` than directories).
pub fn join_inside(base: &Path, include: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in base.join(include).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The files a requirements file includes (`-r F`, `-rF`, `--requirement F`, `--requirement=F`,
/// and the same for `-c`/`--constraint`), as pip reads them: comments and URLs left out.
pub fn requirement_includes(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = match line.find(" #").or_else(|| line.starts_with('#').then_some(0)) {
            Some(i) => &line[..i],
            None => line,
        }
        .trim();
        let rest = ["--requirement", "--constraint", "-r", "-c"].iter().find_map(|flag| {
            let after = line.strip_prefix(flag)?;
            if flag.starts_with("--") {
                after.strip_prefix('=').or_else(|| after.starts_with([' ', '\t']).then_some(after))
            } else {
                Some(after)
            }
        });
        let Some(file) = rest.map(str::trim).filter(|f| !f.is_empty()) else { continue };
        if !file.contains("://") {
            out.push(file.to_string());
        }
    }
    out
}

/// The script a Procfile command line starts, when it names one by a relative path:
/// `./release.sh`, `bin/worker --x`, `bash scripts/migrate.sh`, `python manage.py migrate`
/// (after `VAR=value` prefixes). Commands found on PATH (`gunicorn app:app`) name none.
pub fn command_script(line: &str) -> Option<&str> {
    const INTERPRETERS: &[&str] = &["sh", "bash", "python", "python3", "exec"];
    let mut words = line.split_whitespace().skip_while(|w| {
        w.split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    });
    let mut first = words.next()?;
    if INTERPRETERS.contains(&first) {
        first = words.find(|w| !w.starts_with('-'))?;
        let plain =
            !first.starts_with('/') && !first.contains(['$', '`', '*', '?', '\'', '"', '~', ';', '&', '|']);
        return plain.then_some(first);
    }
    let plain = first.contains('/')
        && !first.starts_with('/')
        && !first.contains(['$', '`', '*', '?', '\'', '"', '~']);
    plain.then_some(first)
}

/// Checks the scripts the Procfile's commands start (see [`command_script`]), in `dir`.
pub fn check_commands(dir: &Path, procfile: &Procfile) -> Result<(), String> {
    for (name, command) in &procfile.processes {
        check_command(dir, command).map_err(|e| format!("Procfile process type '{name}': {e}"))?;
    }
    Ok(())
}

/// Checks the script `command` starts, if any, resolves inside `dir` (a missing one is left to
/// the shell to report).
pub fn check_command(dir: &Path, command: &str) -> Result<(), BeneathError> {
    match command_script(command).map(|script| fsutil::check_beneath(dir, script)) {
        Some(Err(e)) if !e.is_missing() => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn includes_of_a_requirements_file() {
        let text = "flask==3.0\n-r base.txt\n-rlocal.txt\n--requirement  extra/x.txt # extras\n\
                    --requirement=y.txt\n-c constraints.txt\n--constraint=c2.txt\n# -r commented.txt\n\
                    -r https://example.com/r.txt\n-e .\n--requirements-only\n-r\n";
        assert_eq!(
            requirement_includes(text),
            ["base.txt", "local.txt", "extra/x.txt", "y.txt", "constraints.txt", "c2.txt"]
        );
    }

    #[test]
    fn includes_stay_inside() {
        let p = |s: &str| Some(PathBuf::from(s));
        let cases: &[(&str, &str, Option<PathBuf>)] = &[
            ("", "base.txt", p("base.txt")),
            ("reqs", "base.txt", p("reqs/base.txt")),
            ("reqs", "../base.txt", p("base.txt")),
            ("reqs", "./a/../b.txt", p("reqs/b.txt")),
            ("", "../x.txt", None),
            ("reqs", "../../x.txt", None),
            ("", "/etc/passwd", None),
        ];
        for (base, include, want) in cases {
            assert_eq!(&join_inside(Path::new(base), include), want, "{base} + {include}");
        }
    }

    #[test]
    fn scripts_commands_start() {
        let cases: &[(&str, Option<&str>)] = &[
            ("./release.sh", Some("./release.sh")),
            ("bin/worker --fast", Some("bin/worker")),
            ("FOO=1 BAR=x ./run", Some("./run")),
            ("bash scripts/migrate.sh", Some("scripts/migrate.sh")),
            ("python -u manage.py migrate", Some("manage.py")),
            ("sh -c 'echo hi'", None),
            ("gunicorn app:app", None),
            ("python -m http.server $PORT", Some("http.server")),
            ("/usr/bin/env python x.py", None),
            ("$HOME/bin/x", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(command_script(line), *want, "{line}");
        }
    }

    #[test]
    fn links_out_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("reqs")).unwrap();
        std::fs::write(d.join("reqs/base.txt"), "flask\n").unwrap();
        std::fs::write(d.join("requirements.txt"), "-r reqs/base.txt\n").unwrap();
        symlink("reqs/base.txt", d.join("inside.txt")).unwrap();
        assert!(check(d).is_ok());

        symlink("/etc/passwd", d.join("reqs/evil.txt")).unwrap();
        std::fs::write(d.join("reqs/base.txt"), "-r evil.txt\n").unwrap();
        let err = check(d).unwrap_err().to_string();
        assert_eq!(err, "reqs/evil.txt (included by reqs/base.txt) is a link out of the build directory; refusing to read it");

        std::fs::write(d.join("requirements.txt"), "-r ../../etc/passwd\n").unwrap();
        let err = check(d).unwrap_err().to_string();
        assert!(err.starts_with("../../etc/passwd (included by requirements.txt) is a link out"), "{err}");

        std::fs::write(d.join("requirements.txt"), "flask\n").unwrap();
        symlink("/etc/passwd", d.join("Procfile")).unwrap();
        assert_eq!(
            check(d).unwrap_err().to_string(),
            "Procfile is a link out of the build directory; refusing to read it"
        );
        assert!(read(d, "Procfile").is_err());
        assert_eq!(read_opt(d, "nope").unwrap(), None);

        std::fs::create_dir(d.join("bin")).unwrap();
        symlink("/bin/true", d.join("bin/release")).unwrap();
        assert!(check_command(d, "bin/release --now").is_err());
        assert!(check_command(d, "bin/missing").is_ok());
        assert!(check_command(d, "gunicorn app:app").is_ok());
    }
}
