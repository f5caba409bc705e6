//! The web command of an app pushed without a Procfile, detected from its framework:
//!
//! | found | web command |
//! |---|---|
//! | `manage.py` (Django), gunicorn a dependency | `gunicorn PROJECT.wsgi` |
//! | `manage.py`, no gunicorn (or no `wsgi.py` found) | `python manage.py runserver 0.0.0.0:$PORT`, with a warning |
//! | `main.py` or `app.py` defining `X = FastAPI(`, uvicorn a dependency | `uvicorn main:X --host 0.0.0.0 --port $PORT` |
//! | `app.py` defining a Dash app and `server = app.server`, gunicorn a dependency | `gunicorn app:server` |
//! | `app.py` defining `X = Flask(`, gunicorn a dependency | `gunicorn app:X` (`gunicorn "app:create_app()"` for a factory) |
//! | a Dash or Flask `app.py` without gunicorn, or any `app.py` with a `__main__` block | `python app.py` |
//!
//! Django's WSGI module comes from `DJANGO_SETTINGS_MODULE` in `manage.py` (`proj.settings` →
//! `proj/wsgi.py`, `config.settings.prod` → `config/settings/wsgi.py` or `config/wsgi.py`), else
//! from a `*/wsgi.py` next to a `settings.py` or `settings/` package. Dependencies are the names in
//! `requirements.txt` (following `-r` includes), `pyproject.toml` (`[project] dependencies`,
//! `[tool.poetry.dependencies]`), `Pipfile` (`[packages]`), `Pipfile.lock` (`default`),
//! `uv.lock` and `poetry.lock` (`[[package]]`). gunicorn reads `$PORT` (binding `0.0.0.0:$PORT`)
//! and `$WEB_CONCURRENCY` itself, so its command needs neither.
//!
//! Everything here is a pure function of the file tree's contents ([`Files`]); [`Dir`] reads
//! them from the release dir.

use std::collections::BTreeSet;
use std::path::Path;

/// The parts of an app's file tree detection looks at.
pub trait Files {
    /// The text of `path` (relative, `/`-separated); None when it is missing, not a regular
    /// file, too large or not UTF-8.
    fn read(&self, path: &str) -> Option<String>;
    /// The directories at the root of the app, sorted.
    fn dirs(&self) -> Vec<String>;
}

/// A release dir on disk.
pub struct Dir<'a>(pub &'a Path);

/// Larger files are not read (lock files of big projects stay well below).
const MAX_READ: u64 = 16 * 1024 * 1024;

impl Files for Dir<'_> {
    fn read(&self, path: &str) -> Option<String> {
        // Only the app's own files: nothing outside it (`-r ../x.txt`, `-r /etc/x`), and not
        // through a symlink.
        let relative = Path::new(path);
        if !relative.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return None;
        }
        let path = self.0.join(relative);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > MAX_READ {
            return None;
        }
        std::fs::read_to_string(path).ok()
    }

    fn dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = std::fs::read_dir(self.0)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        dirs.sort();
        dirs
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    Django,
    FastApi,
    Dash,
    Flask,
    /// A plain `app.py` that runs itself.
    Script,
}

impl Framework {
    pub fn name(self) -> &'static str {
        match self {
            Framework::Django => "Django",
            Framework::FastApi => "FastAPI",
            Framework::Dash => "Dash",
            Framework::Flask => "Flask",
            Framework::Script => "app.py",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub framework: Framework,
    /// The `web` command.
    pub command: String,
    /// Printed as a build warning (` !     `).
    pub warning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    Web(Detected),
    /// A framework was found but cannot be run as it is: why, and what to do.
    Unusable(String),
    Nothing,
}

pub fn detect(files: &impl Files) -> Detection {
    let deps = dependencies(files);
    if let Some(manage) = files.read("manage.py") {
        return Detection::Web(django(files, &manage, &deps));
    }
    for module in ["main", "app"] {
        let Some(source) = files.read(&format!("{module}.py")) else { continue };
        if !source.contains("FastAPI(") {
            continue;
        }
        let var = assigned_name(&source, "FastAPI(").unwrap_or_else(|| "app".into());
        if !deps.contains("uvicorn") {
            return Detection::Unusable(format!(
                "{module}.py is a FastAPI app, but uvicorn is not a dependency: add uvicorn to the dependencies, or a Procfile with the web command"
            ));
        }
        return Detection::Web(Detected {
            framework: Framework::FastApi,
            command: format!("uvicorn {module}:{var} --host 0.0.0.0 --port $PORT"),
            warning: None,
        });
    }
    let Some(app) = files.read("app.py") else { return Detection::Nothing };
    let gunicorn = deps.contains("gunicorn");
    let script = || "python app.py".to_string();
    if imports(&app, "dash") && app.contains("Dash(") {
        let command = match assigned_name(&app, "server") {
            _ if !gunicorn => script(),
            Some(_) => "gunicorn app:server".into(),
            None => {
                return Detection::Web(Detected {
                    framework: Framework::Dash,
                    command: script(),
                    warning: Some(
                        "app.py defines no `server = app.server`, so gunicorn cannot serve it; running python app.py"
                            .into(),
                    ),
                })
            }
        };
        return Detection::Web(Detected { framework: Framework::Dash, command, warning: None });
    }
    if imports(&app, "flask") && app.contains("Flask(") {
        // An app factory (`def create_app():` and no module-level app): gunicorn calls it.
        let target = match assigned_name(&app, "Flask(") {
            Some(var) => var,
            None if app.lines().any(|l| l.starts_with("def create_app(")) => "\"app:create_app()\"".into(),
            None => "app".into(),
        };
        let target = if target.starts_with('"') { target } else { format!("app:{target}") };
        let command = if gunicorn { format!("gunicorn {target}") } else { script() };
        return Detection::Web(Detected { framework: Framework::Flask, command, warning: None });
    }
    if app.contains("__main__") {
        return Detection::Web(Detected { framework: Framework::Script, command: script(), warning: None });
    }
    Detection::Nothing
}

fn django(files: &impl Files, manage: &str, deps: &BTreeSet<String>) -> Detected {
    let runserver = "python manage.py runserver 0.0.0.0:$PORT".to_string();
    let wsgi = django_wsgi_module(files, manage);
    let (command, warning) = match (&wsgi, deps.contains("gunicorn")) {
        (Some(module), true) => (format!("gunicorn {module}"), None),
        (None, true) => (
            runserver,
            Some(
                "no WSGI module found (PROJECT/wsgi.py next to the settings): running Django's development server, which is not for production; add a Procfile, e.g. 'web: gunicorn PROJECT.wsgi'"
                    .to_string(),
            ),
        ),
        (module, false) => (
            runserver,
            Some(format!(
                "runserver is Django's development server, not for production: add gunicorn to the dependencies (web: gunicorn {})",
                module.as_deref().unwrap_or("PROJECT.wsgi")
            )),
        ),
    };
    Detected { framework: Framework::Django, command, warning }
}

/// `proj.wsgi` for the Django project whose `manage.py` is `manage`.
fn django_wsgi_module(files: &impl Files, manage: &str) -> Option<String> {
    if let Some(settings) = settings_module(manage) {
        let parts: Vec<&str> = settings.split('.').collect();
        for len in (1..parts.len()).rev() {
            let package = &parts[..len];
            if files.read(&format!("{}/wsgi.py", package.join("/"))).is_some() {
                return Some(format!("{}.wsgi", package.join(".")));
            }
        }
    }
    files.dirs().into_iter().find_map(|d| {
        let has_settings = files.read(&format!("{d}/settings.py")).is_some()
            || files.read(&format!("{d}/settings/__init__.py")).is_some();
        (has_settings && files.read(&format!("{d}/wsgi.py")).is_some()).then(|| format!("{d}.wsgi"))
    })
}

/// The value manage.py gives `DJANGO_SETTINGS_MODULE`:
/// `os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")` → `proj.settings`.
fn settings_module(manage: &str) -> Option<String> {
    let key = "DJANGO_SETTINGS_MODULE";
    let after = &manage[manage.find(key)? + key.len()..];
    let after = after.strip_prefix(['"', '\'']).unwrap_or(after);
    let open = after.find(['"', '\''])?;
    let quote = after[open..].chars().next()?;
    let rest = &after[open + 1..];
    let value = &rest[..rest.find(quote)?];
    let valid = !value.is_empty() && value.split('.').all(is_identifier);
    valid.then(|| value.to_string())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

/// Whether `source` imports `module` (`import module…` or `from module…`).
fn imports(source: &str, module: &str) -> bool {
    source.lines().map(str::trim_start).any(|l| {
        [format!("import {module}"), format!("from {module}")].iter().any(|p| {
            l.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '.', ',', '\t']))
        })
    })
}

/// The name a top-level assignment binds to a value containing `value`:
/// `application = Flask(__name__)` → `application` for `Flask(`.
fn assigned_name(source: &str, value: &str) -> Option<String> {
    source.lines().filter(|l| !l.starts_with([' ', '\t'])).find_map(|l| {
        let (target, rhs) = l.split_once('=')?;
        if rhs.starts_with('=') || !(rhs.contains(value) || target.trim() == value) {
            return None;
        }
        // `app: Flask = Flask(__name__)`
        let name = target.split(':').next()?.trim();
        is_identifier(name).then(|| name.to_string())
    })
}

/// Normalised names (PEP 503: lower case, `-` for runs of `-_.`) of the app's dependencies,
/// from every dependency file it has. `fastapi[standard]` brings uvicorn.
pub fn dependencies(files: &impl Files) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    requirements(files, "requirements.txt", 0, &mut names);
    if let Some(doc) = files.read("pyproject.toml").and_then(|t| t.parse::<toml_edit::DocumentMut>().ok()) {
        if let Some(deps) = doc.get("project").and_then(|p| p.get("dependencies")).and_then(|d| d.as_array())
        {
            for spec in deps.iter().filter_map(|v| v.as_str()) {
                add_requirement(spec, &mut names);
            }
        }
        if let Some(table) = doc
            .get("tool")
            .and_then(|t| t.get("poetry"))
            .and_then(|p| p.get("dependencies"))
            .and_then(|d| d.as_table_like())
        {
            names.extend(table.iter().map(|(k, _)| normalize(k)));
        }
    }
    if let Some(doc) = files.read("Pipfile").and_then(|t| t.parse::<toml_edit::DocumentMut>().ok()) {
        if let Some(table) = doc.get("packages").and_then(|p| p.as_table_like()) {
            names.extend(table.iter().map(|(k, _)| normalize(k)));
        }
    }
    if let Some(lock) =
        files.read("Pipfile.lock").and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        if let Some(default) = lock.get("default").and_then(|d| d.as_object()) {
            names.extend(default.keys().map(|k| normalize(k)));
        }
    }
    for lock in ["uv.lock", "poetry.lock"] {
        if let Some(doc) = files.read(lock).and_then(|t| t.parse::<toml_edit::DocumentMut>().ok()) {
            if let Some(packages) = doc.get("package").and_then(|p| p.as_array_of_tables()) {
                names.extend(packages.iter().filter_map(|p| p.get("name")?.as_str()).map(normalize));
            }
        }
    }
    names
}

/// The names in a requirements file and the files it includes (`-r other.txt`).
fn requirements(files: &impl Files, path: &str, depth: usize, names: &mut BTreeSet<String>) {
    let Some(text) = files.read(path).filter(|_| depth < 5) else { return };
    let base = path.rsplit_once('/').map(|(dir, _)| format!("{dir}/")).unwrap_or_default();
    for line in text.lines() {
        let line = line.split(" #").next().unwrap_or("").trim();
        let include = ["-r ", "--requirement ", "--requirement=", "-r"]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .map(str::trim);
        match include {
            Some(file) if !file.is_empty() => requirements(files, &format!("{base}{file}"), depth + 1, names),
            _ if line.starts_with('-') || line.starts_with('#') => {}
            _ => {
                if let Some((_, egg)) = line.split_once("#egg=") {
                    add_requirement(egg, names);
                } else if !line.contains("://") || line.contains(" @ ") {
                    add_requirement(line, names);
                }
            }
        }
    }
}

/// Adds the name of one PEP 508 requirement (`gunicorn>=22`, `uvicorn[standard] ; python_version…`).
fn add_requirement(spec: &str, names: &mut BTreeSet<String>) {
    let spec = spec.trim();
    let end = spec.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))).unwrap_or(spec.len());
    if end == 0 {
        return;
    }
    let name = normalize(&spec[..end]);
    let extras = spec[end..].trim_start();
    if name == "fastapi"
        && extras.starts_with('[')
        && extras.split(']').next().is_some_and(|e| e.contains("standard"))
    {
        names.insert("uvicorn".into());
    }
    names.insert(name);
}

fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        if "-_.".contains(c) {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Tree(BTreeMap<&'static str, &'static str>);

    impl Files for Tree {
        fn read(&self, path: &str) -> Option<String> {
            self.0.get(path).map(|s| s.to_string())
        }
        fn dirs(&self) -> Vec<String> {
            let set: BTreeSet<String> =
                self.0.keys().filter_map(|k| k.split_once('/')).map(|(d, _)| d.to_string()).collect();
            set.into_iter().collect()
        }
    }

    /// (path, contents) of the files of one case.
    type Case = Vec<(&'static str, &'static str)>;

    fn tree(files: &[(&'static str, &'static str)]) -> Tree {
        Tree(files.iter().copied().collect())
    }

    const MANAGE: &str = "import os, sys\nif __name__ == '__main__':\n    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n";
    const MANAGE_NESTED: &str =
        "os.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"config.settings.production\")\n";
    const FLASK: &str = "from flask import Flask\n\napplication = Flask(__name__)\n";
    const DASH: &str =
        "import dash\nfrom dash import html\n\napp = dash.Dash(__name__)\nserver = app.server\n";
    const FASTAPI: &str = "from fastapi import FastAPI\n\napi: FastAPI = FastAPI()\n";
    const UV_LOCK: &str =
        "version = 1\n\n[[package]]\nname = \"Gunicorn\"\nversion = \"23.0.0\"\n\n[[package]]\nname = \"django\"\n";

    fn web(t: &Tree) -> (Framework, String, bool) {
        match detect(t) {
            Detection::Web(d) => (d.framework, d.command, d.warning.is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn django_table() {
        let runserver = "python manage.py runserver 0.0.0.0:$PORT";
        let cases: Vec<(Case, &str, bool)> = vec![
            // settings module from manage.py, gunicorn in requirements.txt
            (
                vec![
                    ("manage.py", MANAGE),
                    ("mysite/wsgi.py", ""),
                    ("requirements.txt", "Django>=5\ngunicorn==23.0.0\n"),
                ],
                "gunicorn mysite.wsgi",
                false,
            ),
            // a settings package: the wsgi.py of the nearest package up
            (
                vec![
                    ("manage.py", MANAGE_NESTED),
                    ("config/wsgi.py", ""),
                    ("requirements.txt", "gunicorn\n"),
                ],
                "gunicorn config.wsgi",
                false,
            ),
            // no DJANGO_SETTINGS_MODULE: the wsgi.py next to a settings.py
            (
                vec![
                    ("manage.py", "print()"),
                    ("docs/wsgi.py", ""),
                    ("shop/settings.py", ""),
                    ("shop/wsgi.py", ""),
                    (
                        "pyproject.toml",
                        "[project]\nname = \"x\"\ndependencies = [\"django\", \"gunicorn[gevent] >=22\"]\n",
                    ),
                ],
                "gunicorn shop.wsgi",
                false,
            ),
            // gunicorn from the lock files
            (
                vec![("manage.py", MANAGE), ("mysite/wsgi.py", ""), ("uv.lock", UV_LOCK)],
                "gunicorn mysite.wsgi",
                false,
            ),
            (
                vec![
                    ("manage.py", MANAGE),
                    ("mysite/wsgi.py", ""),
                    ("Pipfile.lock", "{\"default\": {\"gunicorn\": {}}}"),
                ],
                "gunicorn mysite.wsgi",
                false,
            ),
            (
                vec![
                    ("manage.py", MANAGE),
                    ("mysite/wsgi.py", ""),
                    ("Pipfile", "[packages]\ngunicorn = \"*\"\n"),
                ],
                "gunicorn mysite.wsgi",
                false,
            ),
            (
                vec![
                    ("manage.py", MANAGE),
                    ("mysite/wsgi.py", ""),
                    (
                        "pyproject.toml",
                        "[tool.poetry.dependencies]\npython = \"^3.11\"\nGunicorn = \"^23\"\n",
                    ),
                ],
                "gunicorn mysite.wsgi",
                false,
            ),
            // through a -r include
            (
                vec![
                    ("manage.py", MANAGE),
                    ("mysite/wsgi.py", ""),
                    ("requirements.txt", "-r requirements/prod.txt\n"),
                    ("requirements/prod.txt", "-r base.txt\n"),
                    ("requirements/base.txt", "django\ngunicorn ; sys_platform != 'win32'\n"),
                ],
                "gunicorn mysite.wsgi",
                false,
            ),
            // no gunicorn: the development server, with a warning
            (
                vec![("manage.py", MANAGE), ("mysite/wsgi.py", ""), ("requirements.txt", "django\n")],
                runserver,
                true,
            ),
            // gunicorn-ish names are not gunicorn
            (
                vec![
                    ("manage.py", MANAGE),
                    ("mysite/wsgi.py", ""),
                    ("requirements.txt", "gunicorn-thing\n# gunicorn\n"),
                ],
                runserver,
                true,
            ),
            // gunicorn but no wsgi module to give it
            (vec![("manage.py", MANAGE), ("requirements.txt", "gunicorn\n")], runserver, true),
        ];
        for (files, command, warns) in cases {
            let got = web(&tree(&files));
            assert_eq!(got, (Framework::Django, command.to_string(), warns), "{files:?}");
        }
    }

    #[test]
    fn app_py_and_main_py_table() {
        let cases: Vec<(Case, Framework, &str)> = vec![
            (
                vec![("app.py", FLASK), ("requirements.txt", "flask\ngunicorn\n")],
                Framework::Flask,
                "gunicorn app:application",
            ),
            (vec![("app.py", FLASK), ("requirements.txt", "flask\n")], Framework::Flask, "python app.py"),
            (
                vec![
                    ("app.py", "import flask\n\ndef create_app():\n    app = flask.Flask(__name__)\n    return app\n"),
                    ("requirements.txt", "Flask\ngunicorn\n"),
                ],
                Framework::Flask,
                "gunicorn \"app:create_app()\"",
            ),
            (
                vec![("app.py", DASH), ("requirements.txt", "dash\ngunicorn\n")],
                Framework::Dash,
                "gunicorn app:server",
            ),
            (vec![("app.py", DASH), ("requirements.txt", "dash\n")], Framework::Dash, "python app.py"),
            (
                vec![("main.py", FASTAPI), ("requirements.txt", "fastapi\nuvicorn[standard]\n")],
                Framework::FastApi,
                "uvicorn main:api --host 0.0.0.0 --port $PORT",
            ),
            (
                vec![("app.py", FASTAPI), ("requirements.txt", "fastapi[standard]>=0.115\n")],
                Framework::FastApi,
                "uvicorn app:api --host 0.0.0.0 --port $PORT",
            ),
            (
                vec![("app.py", "import http.server\nif __name__ == \"__main__\":\n    main()\n")],
                Framework::Script,
                "python app.py",
            ),
        ];
        for (files, framework, command) in cases {
            let got = web(&tree(&files));
            assert_eq!((got.0, got.1.as_str()), (framework, command), "{files:?}");
        }
        let dash_without_server = tree(&[
            ("app.py", "from dash import Dash\napp = Dash(__name__)\n"),
            ("requirements.txt", "dash\ngunicorn\n"),
        ]);
        assert_eq!(web(&dash_without_server), (Framework::Dash, "python app.py".into(), true));
    }

    #[test]
    fn nothing_or_unusable() {
        assert_eq!(detect(&tree(&[("requirements.txt", "flask\n")])), Detection::Nothing);
        assert_eq!(detect(&tree(&[("app.py", "print('hi')\n")])), Detection::Nothing);
        assert_eq!(detect(&tree(&[("server.py", FLASK)])), Detection::Nothing);
        let Detection::Unusable(why) =
            detect(&tree(&[("main.py", FASTAPI), ("requirements.txt", "fastapi\n")]))
        else {
            panic!("FastAPI without uvicorn")
        };
        assert!(why.contains("uvicorn"), "{why}");
    }

    #[test]
    fn the_dir_reader_stays_inside_the_app() {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        std::fs::create_dir_all(app.join("mysite")).unwrap();
        std::fs::write(root.path().join("outside.txt"), "gunicorn\n").unwrap();
        std::fs::write(app.join("requirements.txt"), "-r ../outside.txt\n").unwrap();
        std::fs::write(app.join("mysite/wsgi.py"), "").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.txt"), app.join("link.txt")).unwrap();
        let dir = Dir(&app);
        assert_eq!(dir.read("mysite/wsgi.py").as_deref(), Some(""));
        assert_eq!(dir.read("../outside.txt"), None);
        assert_eq!(dir.read(&root.path().join("outside.txt").display().to_string()), None);
        assert_eq!(dir.read("link.txt"), None);
        assert_eq!(dir.dirs(), ["mysite"]);
        assert!(dependencies(&dir).is_empty());
    }

    #[test]
    fn helpers() {
        assert_eq!(settings_module(MANAGE).as_deref(), Some("mysite.settings"));
        assert_eq!(settings_module("DJANGO_SETTINGS_MODULE = 'a b'"), None);
        assert_eq!(normalize("Zope.Interface__x"), "zope-interface-x");
        assert!(imports("import dash_bootstrap\nfrom dash.dependencies import Input", "dash"));
        assert!(!imports("import dashboard\n", "dash"));
        assert_eq!(
            assigned_name("    app = Flask(x)\nmy_app = flask.Flask(__name__)\n", "Flask(").as_deref(),
            Some("my_app")
        );
    }
}
