//! End-to-end: how a push picks its Python (Heroku's rules: `runtime.txt` over
//! `.python-version`, comments, misspellings refused), where interpreters are found
//! (`python_dirs`), and the pinned pip every new virtualenv gets.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// pip's version as `pip --version` prints it, e.g. `pip 26.2.1 from …`.
const PIP_VERSION: &str = "26.2.1";

/// The release dirs of `app`, oldest first (build ids start with a ms timestamp).
fn release_dirs(slip: &Slipway, app: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(slip.root().join("home/releases").join(app))
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Whether some installed interpreter answers to `python3.N` (PATH or pyenv).
fn have_minor(minor: &str) -> bool {
    let on_path = Command::new(format!("python{minor}"))
        .args(["-c", "pass"])
        .output()
        .is_ok_and(|o| o.status.success());
    let in_pyenv = std::fs::read_dir("/root/.pyenv/versions").is_ok_and(|entries| {
        entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&format!("{minor}.")))
    });
    on_path || in_pyenv
}

#[test]
fn an_interpreter_under_python_dirs_builds_and_new_venvs_get_the_pinned_pip() {
    let versions = Path::new("/root/.pyenv/versions");
    let Some(minor) = std::fs::read_dir(versions).ok().and_then(|entries| {
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("bin/python3").is_file())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter_map(|n| n.rsplit_once('.').map(|(m, _)| m.to_string()))
            .filter(|m| ["3.11", "3.12", "3.13"].contains(&m.as_str()))
            .collect();
        names.sort();
        names.pop()
    }) else {
        eprintln!("skipped: no readable /root/.pyenv/versions with Python 3.11 to 3.13");
        return;
    };
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_PYTHON_DIRS".into(), versions.display().to_string()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let mut files: Vec<(&str, String)> = python_app("pinned");
    files.push((".python-version", format!("# from pyenv\n{minor}\n")));
    repo.commit_files(&files, "v1");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    assert!(out.contains(&format!("Using Python {minor} specified in .python-version")), "{out}");
    assert!(out.contains(&format!("(/root/.pyenv/versions/{minor}.")), "{out}");
    // As root (builds as the app's uid) the platform makes the interpreter's seed first, with
    // the pinned pip, and the venv is cloned from it.
    let installed = if running_as_root() {
        format!("Making the seed virtualenv of this interpreter (pip {PIP_VERSION})")
    } else {
        format!("-----> Installing pip {PIP_VERSION}")
    };
    assert!(out.contains(&installed), "{out}");

    let dir = release_dirs(&slip, "hello").pop().expect("a release dir");
    let pip = Command::new(dir.join(".slipway/venv/bin/python"))
        .args(["-m", "pip", "--version"])
        .output()
        .expect("run the venv's pip");
    let shown = String::from_utf8_lossy(&pip.stdout);
    assert!(shown.starts_with(&format!("pip {PIP_VERSION} ")), "{shown}{}", describe(&pip));

    // No version any more: the last build's major version (Heroku's sticky version), so the
    // dependencies are unchanged, the environment is reused and pip is not installed again.
    repo.git_ok(&["rm", "-q", ".python-version"]);
    repo.commit_files(&[("app.py", python_app_py("again"))], "v2");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    let sticky = format!(
        "No Python version was specified. Using the same major version as the last build: Python {minor}."
    );
    assert!(out.contains(&sticky) && out.contains("Warning: No Python version was specified."), "{out}");
    assert!(out.contains("Using cached dependencies") && !out.contains("Installing pip"), "{out}");
}

#[test]
fn runtime_txt_wins_over_python_version_and_comments_are_allowed() {
    if !have_minor("3.11") || !have_minor("3.12") {
        eprintln!("skipped: Python 3.11 and 3.12 are not both installed");
        return;
    }
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let mut files: Vec<(&str, String)> = python_app("versions");
    files.push(("runtime.txt", "# deprecated, but still read first\npython-3.11\n".into()));
    files.push((".python-version", "# the app's Python\n\n3.12\n".into()));
    repo.commit_files(&files, "both files");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    assert!(out.contains("Using Python 3.11 specified in runtime.txt"), "{out}");
    assert!(out.contains("The runtime.txt file is deprecated"), "{out}");
    assert!(out.contains("Using Python 3.11."), "{out}");

    repo.git_ok(&["rm", "-q", "runtime.txt"]);
    repo.commit_files(&[("app.py", python_app_py("versions 2"))], "only .python-version");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(ok, "{out}");
    assert!(out.contains("Using Python 3.12 specified in .python-version"), "{out}");
    assert!(out.contains("Using Python 3.12.") && !out.contains("deprecated"), "{out}");
}

#[test]
fn misspelled_and_malformed_version_files_are_refused() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let mut files: Vec<(&str, String)> = python_app("typo");
    files.push(("runtime.text", "python-3.12\n".into()));
    repo.commit_files(&files, "typo");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok, "{out}");
    assert!(out.contains("spelled incorrectly") && out.contains("'runtime.text'"), "{out}");

    repo.git_ok(&["rm", "-q", "runtime.text"]);
    repo.commit_files(&[(".python-version", "3.12\n3.11\n")], "two versions");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok && out.contains("Multiple Python versions found in .python-version"), "{out}");

    repo.commit_files(&[(".python-version", "3.9\n")], "end of life");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok && out.contains("Python 3.9 has reached its upstream end-of-life"), "{out}");
    assert!(release_dirs(&slip, "hello").is_empty());
}

#[test]
fn a_missing_version_is_installed_with_uv_or_refused_saying_why() {
    if have_minor("3.14") {
        eprintln!("skipped: Python 3.14 is installed here, so nothing needs installing");
        return;
    }
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_PYTHON_INSTALL".into(), "0".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let mut files: Vec<(&str, String)> = python_app("newest");
    files.push((".python-version", "3.14\n".into()));
    repo.commit_files(&files, "3.14");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(!ok, "{out}");
    assert!(out.contains(".python-version asks for Python 3.14, which this server does not have"), "{out}");
    assert!(out.contains("python_install = 1"), "{out}");
    assert!(!out.contains("uv python install"), "{out}");

    // python_install on (the default): uv (pinned, from PyPI) installs 3.14 into
    // cache/.tools/python. python-build-standalone comes from GitHub: where that is unreachable
    // (this machine), the build fails saying what to do instead.
    slip.env.retain(|(k, _)| k != "SLIPWAY_PYTHON_INSTALL");
    let (ok, out) = slip.push_local(&repo, "hello");
    assert!(out.contains("-----> Installing Python 3.14 (not installed on this server"), "{out}");
    if ok {
        assert!(out.contains("(/") && out.contains("cache/.tools/python/cpython-3.14"), "{out}");
    } else {
        assert!(out.contains("Unable to install Python 3.14: 'uv python install 3.14' failed"), "{out}");
        assert!(out.contains("install Python 3.14 on the server"), "{out}");
    }
}
