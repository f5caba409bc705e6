//! Builds behave like Heroku's Python buildpack: `bin/pre_compile` / `bin/post_compile` hooks
//! run through their shebang (bash without one) with `BUILD_DIR`, `CACHE_DIR`, `ENV_DIR` and the
//! app's config vars; lock files must match their manifests; unsupported layouts are refused
//! with Heroku's advice; collectstatic finds a nested `manage.py`.

mod support;

use support::*;

/// A fresh slipway with a running daemon; new dynos settle for 0.2 s (not 3), since these tests
/// are about builds.
fn slipway() -> Slipway {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    slip.start_daemon();
    slip
}

#[test]
fn hooks_run_with_bash_build_dirs_and_config_vars() {
    let mut slip = Slipway::new();
    slip.env.push(("SLIPWAY_BOOT_SETTLE".into(), "0.2".into()));
    // The build_env setting reaches every build command, hooks included.
    slip.env
        .push(("SLIPWAY_BUILD_ENV".into(), "BUILD_MARK=from-build-env NO_PROXY=localhost,127.0.0.1".into()));
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("work"));
    let pre = r#"#!/usr/bin/env bash
set -euo pipefail
echo "pre sees GREETING=${GREETING}"
echo "ENV_DIR has GREETING=$(cat "${ENV_DIR}/GREETING") mode=$(stat -c %a "${ENV_DIR}")"
mkdir -p "${CACHE_DIR}/from-hook"
echo cached > "${CACHE_DIR}/from-hook/mark"
[[ "$(pwd)" == "${BUILD_DIR}" ]] && echo "pre runs in BUILD_DIR"
echo "${ENV_DIR}" > "${BUILD_DIR}/env_dir_path"
[[ -z "${LIBRARY_PATH:-}" && -f "${ENV_DIR}/LIBRARY_PATH" ]] && echo "LIBRARY_PATH only in ENV_DIR"
echo "build_env: BUILD_MARK=${BUILD_MARK} NO_PROXY=${NO_PROXY} UV_SYSTEM_CERTS=${UV_SYSTEM_CERTS} SSL_CERT_FILE=${SSL_CERT_FILE:-none}"
"#;
    // No shebang: bash, as on Heroku (`[[` and arrays are bash-only).
    let post = r#"set -euo pipefail
words=(post compile ran)
[[ -x .slipway/venv/bin/python ]] && echo "${words[*]} with the venv, cache $(cat "$CACHE_DIR/from-hook/mark")"
"#;
    let mut files = python_app("hooks");
    files.push(("bin/pre_compile", pre.to_string()));
    files.push(("bin/post_compile", post.to_string()));
    repo.commit_files(&files, "app with hooks");
    slip.cmd_ok(&["apps:create", "hooks"]);
    // LIBRARY_PATH (like PATH, PYTHONHOME, ...) is kept out of the build's environment, as on Heroku.
    slip.cmd_ok(&[
        "config:set",
        "hooks",
        "GREETING=hello there",
        "LIBRARY_PATH=/nonexistent",
        "--no-restart",
    ]);
    // Left by builds killed outright: this app's is removed by its next build, another app's
    // is not touched.
    let stale = slip.home.join("tmp/env-hooks.1-dead-build");
    let other = slip.home.join("tmp/env-hooks-other.1-running");
    for dir in [&stale, &other] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("SECRET"), "x").unwrap();
    }
    let (ok, out) = slip.push_local(&repo, "hooks");
    assert!(ok, "{out}");
    assert!(!stale.exists() && other.exists(), "stale ENV_DIRs: {stale:?} should be gone, {other:?} kept");
    assert!(out.contains("-----> Running bin/pre_compile hook"), "{out}");
    assert!(out.contains("pre sees GREETING=hello there"), "{out}");
    // As root the build's commands run as the app's uid, which reads ENV_DIR through its group.
    let mode = if running_as_root() { 750 } else { 700 };
    assert!(out.contains(&format!("ENV_DIR has GREETING=hello there mode={mode}")), "{out}");
    assert!(out.contains("pre runs in BUILD_DIR"), "{out}");
    assert!(out.contains("LIBRARY_PATH only in ENV_DIR"), "{out}");
    // build_env's variables, and the system CA store for pip and uv (UV_SYSTEM_CERTS, and
    // SSL_CERT_FILE when the server names none and has the Debian bundle).
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    let cert = match std::env::var("SSL_CERT_FILE") {
        Ok(v) => v,
        Err(_) if std::path::Path::new(bundle).is_file() => bundle.to_string(),
        Err(_) => "none".to_string(),
    };
    let want = format!(
        "build_env: BUILD_MARK=from-build-env NO_PROXY=localhost,127.0.0.1 UV_SYSTEM_CERTS=1 SSL_CERT_FILE={cert}"
    );
    assert!(out.contains(&want), "{want}\n{out}");
    assert!(out.contains("post compile ran with the venv, cache cached"), "{out}");
    assert!(slip.home.join("cache/hooks/from-hook/mark").is_file());
    // ENV_DIR is gone once the build is over.
    let release = slip.app_info("hooks");
    let env_dir = std::fs::read_dir(slip.home.join("releases/hooks"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("env_dir_path"))
        .find(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| panic!("no release recorded env_dir_path: {release}"));
    assert!(!std::path::Path::new(env_dir.trim()).exists(), "{env_dir} left behind");

    // A failing hook fails the build with Heroku's advice.
    repo.commit_files(
        &[("bin/post_compile", "#!/bin/bash\nset -euo pipefail\necho $UNSET_VAR\n")],
        "bad hook",
    );
    let (ok, out) = slip.push_local(&repo, "hooks");
    assert!(!ok, "{out}");
    assert!(out.contains("unbound variable"), "{out}");
    assert!(out.contains("failed to run the bin/post_compile script (exit 1)"), "{out}");
    assert!(out.contains("remove/rename the script"), "{out}");
}

/// The test app (`app.py`, `Procfile`) without its `requirements.txt`, plus `files`.
fn app_with(files: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = python_app("locks")
        .into_iter()
        .filter(|(name, _)| *name != "requirements.txt")
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    out.extend(files.iter().map(|(n, c)| (n.to_string(), c.to_string())));
    out
}

#[test]
fn a_stale_uv_lock_is_refused_with_uvs_advice() {
    let slip = slipway();
    let repo = GitRepo::init(&slip.root().join("work"));
    // uv.lock as `uv lock` wrote it for `dependencies = []`; the pyproject then gained six.
    let lock = "version = 1\nrevision = 5\nrequires-python = \">=3.8\"\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\nsource = { virtual = \".\" }\n";
    let pyproject =
        "[project]\nname = \"app\"\nversion = \"0.1.0\"\nrequires-python = \">=3.8\"\ndependencies = [\"six\"]\n";
    repo.commit_files(&app_with(&[("uv.lock", lock), ("pyproject.toml", pyproject)]), "stale uv.lock");
    // Heroku's rule first: a uv app names its version in .python-version.
    let (ok, out) = slip.push_local(&repo, "uvapp");
    assert!(!ok, "{out}");
    assert!(out.contains("No Python version was specified."), "{out}");
    assert!(out.contains("When using the package manager uv on Heroku, you must specify"), "{out}");
    assert!(out.contains("2. Run 'uv python pin 3."), "{out}");
    assert!(!out.contains("uv sync"), "{out}");

    // python3.11 is this machine's python3; any installed 3.10+ would do.
    let minor = python_minor();
    repo.commit_files(&[(".python-version", &format!("{minor}\n"))], "pin the version");
    let (ok, out) = slip.push_local(&repo, "uvapp");
    assert!(!ok, "{out}");
    assert!(out.contains("Installing dependencies using 'uv sync --locked --no-default-groups'"), "{out}");
    assert!(out.contains("needs to be updated, but `--locked` was provided"), "{out}");
    assert!(out.contains("uv lock"), "{out}");
    assert!(out.contains("unable to install dependencies using uv"), "{out}");
}

/// The first `python3.1x` on PATH (3.10+, what uv.lock apps here pin).
fn python_minor() -> &'static str {
    ["3.11", "3.12", "3.13", "3.10"]
        .into_iter()
        .find(|m| {
            std::process::Command::new(format!("python{m}"))
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a python3.1x on PATH")
}

/// Whether any file under `dir` has a name that `wanted` accepts (links are not followed).
fn has_file(dir: &std::path::Path, wanted: &dyn Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok).any(|e| {
        let kind = e.file_type().expect("file type");
        (kind.is_dir() && has_file(&e.path(), wanted))
            || (kind.is_file() && wanted(&e.file_name().to_string_lossy()))
    })
}

#[test]
fn requirements_install_with_the_servers_uv_unless_only_pip_reads_them_right() {
    let slip = slipway();
    // No uv on this PATH: a uv.lock app makes the build install it for the server (first use).
    let lock = "version = 1\nrevision = 5\nrequires-python = \">=3.8\"\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\nsource = { virtual = \".\" }\n";
    let pyproject =
        "[project]\nname = \"app\"\nversion = \"0.1.0\"\nrequires-python = \">=3.8\"\ndependencies = []\n";
    let minor = format!("{}\n", python_minor());
    let uvapp = GitRepo::init(&slip.root().join("uvapp"));
    uvapp.commit_files(
        &app_with(&[("uv.lock", lock), ("pyproject.toml", pyproject), (".python-version", &minor)]),
        "uv app",
    );
    let (ok, out) = slip.push_local(&uvapp, "uvapp");
    assert!(ok, "{out}");
    assert!(out.contains("Installing uv"), "{out}");
    // Its environment is uv's from the start: no pip, which `uv sync` would only uninstall.
    assert!(!out.contains("Installing pip") && !out.contains("- pip=="), "{out}");

    // From then on requirements.txt installs with that uv, bytecode compiled (the sealed
    // environment is read-only: dynos could not cache it).
    let repo = GitRepo::init(&slip.root().join("work"));
    let files = app_with(&[("requirements.txt", "six==1.16.0\n"), (".python-version", &minor)]);
    repo.commit_files(&files, "six");
    let (ok, out) = slip.push_local(&repo, "reqs");
    assert!(ok, "{out}");
    assert!(out.contains("Installing dependencies with uv"), "{out}");
    assert!(!out.contains("Installing uv"), "{out}");
    let envs = slip.home.join("envs/reqs");
    let six_pyc = |name: &str| name.starts_with("six.cpython-") && name.ends_with(".pyc");
    assert!(has_file(&envs, &six_pyc), "six.py not compiled in {envs:?}");

    // An option uv would ignore (pip honours it): the same build with pip.
    repo.commit_files(&[("requirements.txt", "--prefer-binary\nsix==1.16.0\n")], "prefer binary");
    let (ok, out) = slip.push_local(&repo, "reqs");
    assert!(ok, "{out}");
    assert!(
        out.contains("Installing with pip, not uv: requirements.txt: it uses --prefer-binary, which uv does not read as pip does"),
        "{out}"
    );
    assert!(out.contains("Installing dependencies with pip"), "{out}");

    // Hashes put uv in pip's hash-checking mode: a requirement without one is refused.
    repo.commit_files(
        &[("requirements.txt", "six==1.16.0 --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254\nidna==3.7\n")],
        "hashes",
    );
    let (ok, out) = slip.push_local(&repo, "reqs");
    assert!(!ok, "{out}");
    assert!(out.contains("Installing dependencies with uv"), "{out}");
    assert!(out.contains("idna"), "{out}");
    assert!(out.to_lowercase().contains("hash"), "{out}");
}

/// `slipway tools:install` (install.sh runs it) makes the platform's uv and the pinned pip's
/// wheel once, ahead of any push: a server's very first requirements.txt build then installs
/// with uv and gives the new venv pip from that wheel, without the index.
#[test]
fn tools_install_makes_uv_for_the_first_push_and_pip_comes_from_its_wheel() {
    let slip = slipway();
    // Without the package index: one sentence, a non-zero exit, nothing left that could pass
    // for a tool (builds go on with pip).
    let mut offline = slip.command(&["tools:install"]);
    offline.env("SLIPWAY_BUILD_ENV", "PIP_INDEX_URL=http://127.0.0.1:9/simple PIP_RETRIES=0");
    let out = run_with_timeout(&mut offline, None, std::time::Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "uv {} is not installed: installing uv failed",
            slipway::build::tools::UV_VERSION
        )) && stderr.contains("Python builds install with pip until 'slipway tools:install' succeeds"),
        "{stderr}"
    );
    assert!(!slip.home.join(format!("cache/.tools/uv-{}", slipway::build::tools::UV_VERSION)).exists());

    // A 24 MB download: more time than an ordinary command gets.
    let made =
        run_with_timeout(&mut slip.command(&["tools:install"]), None, std::time::Duration::from_secs(300));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let first = String::from_utf8_lossy(&made.stdout).into_owned();
    let tool = slip.home.join(format!("cache/.tools/uv-{}", slipway::build::tools::UV_VERSION));
    assert!(first.contains(&format!("installed at {}", tool.join("bin/uv").display())), "{first}");
    let wheel = tool.join("wheels").join(slipway::build::tools::pip_wheel_name());
    assert!(wheel.is_file(), "{first}");
    // Whole: nothing is fetched again.
    let again = slip.cmd_ok(&["tools:install"]);
    assert!(again.contains("is installed") && again.contains("nothing to do"), "{again}");

    let repo = GitRepo::init(&slip.root().join("work"));
    let minor = format!("{}\n", python_minor());
    repo.commit_files(
        &app_with(&[("requirements.txt", "six==1.16.0\n"), (".python-version", &minor)]),
        "six",
    );
    let (ok, out) = slip.push_local(&repo, "first");
    assert!(ok, "{out}");
    assert!(!out.contains("Installing uv"), "{out}");
    assert!(
        out.contains(&format!(
            "Installing pip {} (from the server's wheel)",
            slipway::build::venv::PIP_VERSION
        )),
        "{out}"
    );
    assert!(out.contains("Installing dependencies with uv"), "{out}");
    // pip is in the environment, at the pin, and works (as `heroku run pip list` would).
    let env = std::fs::read_dir(slip.home.join("envs/first"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().join("bin/pip").exists())
        .expect("an environment with pip")
        .path();
    let version =
        std::process::Command::new(env.join("bin/python")).args(["-m", "pip", "--version"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout)
            .starts_with(&format!("pip {}", slipway::build::venv::PIP_VERSION)),
        "{version:?}"
    );
}

#[test]
fn a_stale_pipfile_lock_is_refused_before_installing() {
    let slip = slipway();
    let repo = GitRepo::init(&slip.root().join("work"));
    // Locked (pipenv's hash of `requests = "*"` alone), then flask was added to the Pipfile.
    let lock = r#"{"_meta": {"hash": {"sha256": "70e8bf6bc774f5ca177467cab4e67d4264d0536857993326abc13ff43063bec0"}, "pipfile-spec": 6, "requires": {}, "sources": [{"name": "pypi", "url": "https://pypi.org/simple", "verify_ssl": true}]}, "default": {}, "develop": {}}"#;
    let pipfile = "[packages]\nrequests = \"*\"\nflask = \"*\"\n";
    repo.commit_files(&app_with(&[("Pipfile", pipfile), ("Pipfile.lock", lock)]), "stale Pipfile.lock");
    let (ok, out) = slip.push_local(&repo, "pipenvapp");
    assert!(!ok, "{out}");
    assert!(
        out.contains("Your Pipfile.lock (70e8bf6bc774f5ca177467cab4e67d4264d0536857993326abc13ff43063bec0) is out of date. Expected: ("),
        "{out}"
    );
    assert!(out.contains("run 'pipenv lock' locally and commit Pipfile.lock"), "{out}");
    assert!(!out.contains("Installing dependencies"), "{out}");

    // The same lock with the Pipfile it was made from builds.
    repo.commit_files(&[("Pipfile", "[packages]\nrequests = \"*\"\n")], "Pipfile back in sync");
    let (ok, out) = slip.push_local(&repo, "pipenvapp");
    assert!(ok, "{out}");
    assert!(out.contains("Pipfile.lock is up to date with Pipfile"), "{out}");
}

#[test]
fn unsupported_layouts_are_refused_naming_the_supported_files() {
    let slip = slipway();
    // A pyproject.toml with dependencies, no lock file and no build backend.
    let repo = GitRepo::init(&slip.root().join("pyproject"));
    let pyproject = "[project]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"flask\"]\n";
    repo.commit_files(&app_with(&[("pyproject.toml", pyproject)]), "pyproject only");
    let (ok, out) = slip.push_local(&repo, "pyproj");
    assert!(!ok, "{out}");
    assert!(out.contains("Couldn't find any supported Python package manager files"), "{out}");
    assert!(out.contains("'requirements.txt', 'Pipfile.lock', 'poetry.lock' or 'uv.lock'"), "{out}");
    assert!(out.contains("the root contains: Procfile, app.py, pyproject.toml"), "{out}");

    // setup.py alone.
    let repo = GitRepo::init(&slip.root().join("setuppy"));
    repo.commit_files(&app_with(&[("setup.py", "from setuptools import setup\nsetup()\n")]), "setup.py");
    let (ok, out) = slip.push_local(&repo, "setuppy");
    assert!(!ok, "{out}");
    assert!(out.contains("Implicit setup.py file support has been sunset"), "{out}");
    assert!(out.contains("'--editable .'"), "{out}");

    // A committed virtualenv.
    let repo = GitRepo::init(&slip.root().join("venv"));
    repo.commit_files(
        &[python_app("x"), vec![(".venv/pyvenv.cfg", "home = /usr/bin\n".to_string())]].concat(),
        "venv",
    );
    let (ok, out) = slip.push_local(&repo, "venvapp");
    assert!(!ok, "{out}");
    assert!(out.contains("Existing '.venv/' directory found"), "{out}");
    assert!(out.contains("git rm --cached -r .venv/"), "{out}");
}

/// `backend/manage.py` (below the root, where Heroku also looks) with settings that need a
/// config var: Django from PyPI, static files collected; `DISABLE_COLLECTSTATIC=1` and
/// `.heroku/collectstatic_disabled` skip with Heroku's messages; a failing collectstatic fails
/// the build with the hint.
#[test]
fn collectstatic_finds_a_nested_manage_py_and_can_be_disabled() {
    let slip = slipway();
    let repo = GitRepo::init(&slip.root().join("work"));
    let manage = "import os, sys\n\nif __name__ == \"__main__\":\n    os.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"mysite.settings\")\n    from django.core.management import execute_from_command_line\n    execute_from_command_line(sys.argv)\n";
    let settings = "import os\nfrom pathlib import Path\n\nBASE_DIR = Path(__file__).resolve().parent.parent\nSECRET_KEY = \"test\"\nINSTALLED_APPS = [\"django.contrib.staticfiles\"]\nSTATIC_URL = \"static/\"\nSTATICFILES_DIRS = [BASE_DIR / \"assets\"]\nSTATIC_ROOT = BASE_DIR / os.environ[\"COLLECT_TO\"]\n";
    let mut files = python_app("django");
    files.retain(|(name, _)| *name != "requirements.txt");
    files.extend([
        ("requirements.txt", "django>=4.2,<6\n".to_string()),
        ("backend/manage.py", manage.to_string()),
        ("backend/mysite/__init__.py", String::new()),
        ("backend/mysite/settings.py", settings.to_string()),
        ("backend/assets/site.css", "body { color: teal }\n".to_string()),
    ]);
    repo.commit_files(&files, "nested django");
    slip.cmd_ok(&["apps:create", "dj"]);
    slip.cmd_ok(&["config:set", "dj", "COLLECT_TO=collected", "--no-restart"]);
    let (ok, out) = slip.push_local(&repo, "dj");
    assert!(ok, "{out}");
    assert!(out.contains("-----> $ python backend/manage.py collectstatic --noinput"), "{out}");
    assert!(out.contains("static file copied"), "{out}");
    let release = std::fs::read_dir(slip.home.join("releases/dj")).unwrap().next().unwrap().unwrap().path();
    assert!(release.join("backend/collected/site.css").is_file(), "not collected in {}", release.display());

    slip.cmd_ok(&["config:set", "dj", "DISABLE_COLLECTSTATIC=1", "--no-restart"]);
    repo.commit_files(&[("app.py", python_app_py("django 2"))], "v2");
    let (ok, out) = slip.push_local(&repo, "dj");
    assert!(ok, "{out}");
    assert!(
        out.contains("-----> Skipping Django collectstatic since the env var DISABLE_COLLECTSTATIC is set."),
        "{out}"
    );
    assert!(!out.contains("collectstatic --noinput"), "{out}");

    // The deprecated file works too, with Heroku's warning.
    slip.cmd_ok(&["config:unset", "dj", "DISABLE_COLLECTSTATIC", "--no-restart"]);
    repo.commit_files(&[(".heroku/collectstatic_disabled", "")], "v3");
    let (ok, out) = slip.push_local(&repo, "dj");
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "-----> Skipping Django collectstatic since the file '.heroku/collectstatic_disabled' exists."
        ),
        "{out}"
    );
    assert!(out.contains("The .heroku/collectstatic_disabled file is deprecated."), "{out}");

    // Without the config var its settings need, collectstatic fails, with Heroku's hint.
    slip.cmd_ok(&["config:unset", "dj", "COLLECT_TO", "--no-restart"]);
    repo.git_ok(&["rm", "-q", ".heroku/collectstatic_disabled"]);
    repo.commit_files(&[("app.py", python_app_py("django 4"))], "v4");
    let (ok, out) = slip.push_local(&repo, "dj");
    assert!(!ok, "{out}");
    assert!(out.contains("KeyError: 'COLLECT_TO'"), "{out}");
    assert!(out.contains("Unable to generate Django static files"), "{out}");
    assert!(out.contains("slipway config:set dj DISABLE_COLLECTSTATIC=1"), "{out}");
}

#[test]
fn a_stale_poetry_lock_is_refused_by_poetry_check() {
    let slip = slipway();
    let repo = GitRepo::init(&slip.root().join("work"));
    // poetry.lock as `poetry lock` (2.5) wrote it before six was added to pyproject.toml.
    let lock = "package = []\n\n[metadata]\nlock-version = \"2.1\"\npython-versions = \"^3.9\"\ncontent-hash = \"c595a0588c25d58f3e3834ad7169126836d262b925fe6ca9b5d540dcf301d254\"\n";
    let pyproject = "[tool.poetry]\nname = \"app\"\nversion = \"0.1.0\"\ndescription = \"\"\nauthors = [\"x <x@example.com>\"]\npackage-mode = false\n\n[tool.poetry.dependencies]\npython = \"^3.9\"\nsix = \"1.16.0\"\n";
    repo.commit_files(
        &app_with(&[("poetry.lock", lock), ("pyproject.toml", pyproject)]),
        "stale poetry.lock",
    );
    let (ok, out) = slip.push_local(&repo, "poetryapp");
    assert!(!ok, "{out}");
    assert!(
        out.contains("pyproject.toml changed significantly since poetry.lock was last generated"),
        "{out}"
    );
    assert!(out.contains("'poetry check --lock' failed (exit 1)"), "{out}");
    assert!(!out.contains("Installing dependencies using"), "{out}");
}

/// A real NLTK download index in `dir` (`index.xml` and `tiny.zip`, a one-file corpus), since
/// nltk's own is on GitHub; returns its `file://` URL. nltk's downloader refuses loopback HTTP
/// (its SSRF guard), and reads `file://` only under its data roots (`NLTK_DATA`).
fn nltk_index(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).expect("create the NLTK index dir");
    let make = r#"
import hashlib, sys, zipfile
d = sys.argv[1]
with zipfile.ZipFile(d + "/tiny.zip", "w") as z:
    z.writestr("tiny/", "")
    z.writestr("tiny/words.txt", "slipway\n")
data = open(d + "/tiny.zip", "rb").read()
open(d + "/index.xml", "w").write(
    '<?xml version="1.0"?>\n<nltk_data><packages>'
    f'<package id="tiny" name="Tiny" subdir="corpora" url="file://{d}/tiny.zip" '
    f'size="{len(data)}" unzipped_size="8" unzip="1" checksum="{hashlib.md5(data).hexdigest()}" />'
    '</packages><collections></collections></nltk_data>\n')
"#;
    let made = std::process::Command::new("python3").args(["-c", make]).arg(dir).output().expect("python3");
    assert!(made.status.success(), "{}", describe(&made));
    format!("file://{}/index.xml", dir.display())
}

#[test]
fn nltk_corpora_are_downloaded_only_when_nltk_is_installed() {
    let slip = slipway();
    let repo = GitRepo::init(&slip.root().join("work"));
    slip.cmd_ok(&["apps:create", "words"]);
    // nltk.txt without the nltk package: ignored without a word, as on Heroku.
    let mut files: Vec<(&str, String)> = python_app("nltk");
    files.push(("nltk.txt", "stopwords\r\n\ncity_database\n".into()));
    repo.commit_files(&files, "nltk.txt only");
    let (ok, out) = slip.push_local(&repo, "words");
    assert!(ok, "{out}");
    assert!(!out.contains("NLTK") && !out.contains("nltk_data"), "{out}");

    // With nltk installed the corpora are downloaded into the release by nltk's own downloader,
    // here from a local index (nltk's is on GitHub; NLTK_DOWNLOAD_URL and NLTK_DATA, config
    // vars, reach the build like any other). The index sits in the app's cache: the build's
    // sandbox lets it read there, not the test's own dir.
    let index_dir = slip.home.join("cache/words/nltk-index");
    let index = nltk_index(&index_dir);
    slip.cmd_ok(&[
        "config:set",
        "words",
        &format!("NLTK_DOWNLOAD_URL={index}"),
        &format!("NLTK_DATA={}", index_dir.display()),
        "--no-restart",
    ]);
    repo.commit_files(&[("requirements.txt", "nltk\n"), ("nltk.txt", "tiny\n")], "install nltk");
    let (ok, out) = slip.push_local(&repo, "words");
    assert!(ok, "{out}");
    assert!(out.contains("-----> Downloading NLTK corpora..."), "{out}");
    assert!(out.contains("-----> Downloading NLTK packages: tiny"), "{out}");
    assert!(out.contains("Unzipping corpora/tiny.zip"), "{out}");
    let words = std::fs::read_dir(slip.home.join("releases/words"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join(".slipway/nltk_data/corpora/tiny/words.txt"))
        .find(|p| p.is_file());
    assert!(words.is_some(), "no release has .slipway/nltk_data/corpora/tiny/words.txt");

    // An id the index does not have fails the build with Heroku's message (the downloader's
    // "Retry? [n/y/e]" meets a closed stdin).
    repo.commit_files(&[("nltk.txt", "stopwords\n")], "an id the index lacks");
    let (ok, out) = slip.push_local(&repo, "words");
    assert!(!ok, "{out}");
    assert!(out.contains("Error loading stopwords: Package 'stopwords' not found in"), "{out}");
    assert!(out.contains("Unable to download NLTK data."), "{out}");
    assert!(out.contains("The 'python -m nltk.downloader' command to"), "{out}");

    // nltk installed, no nltk.txt: the build says so and succeeds.
    repo.git_ok(&["rm", "-q", "nltk.txt"]);
    repo.commit_files(&[("app.py", python_app_py("no corpora"))], "no nltk.txt");
    let (ok, out) = slip.push_local(&repo, "words");
    assert!(ok, "{out}");
    assert!(out.contains("-----> Downloading NLTK corpora..."), "{out}");
    assert!(!out.contains("Downloading NLTK packages"), "{out}");
    assert!(out.contains("'nltk.txt' not found, not downloading any corpora"), "{out}");
}
