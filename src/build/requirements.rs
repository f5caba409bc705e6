//! Whether uv can install a requirements file exactly as pip would. A server with uv installs
//! `requirements.txt` with `uv pip install` (seconds faster on a cold cache); but uv rejects some
//! of pip's options in requirements files (`--global-option`, `--config-settings`, ...), ignores
//! others with a mere warning (`--pre`, `--trusted-host`, `--prefer-binary`, `--use-feature`),
//! orders several indexes differently (`--extra-index-url`: uv takes a package from the first
//! index that has it, pip from whichever has the best version), and reads none of pip's `PIP_*`
//! variables. Such a build is installed with pip, as before; what uv takes as pip does is a short
//! list ([`UV_OPTIONS`]). A file with `--hash`es puts pip in hash-checking mode (every
//! requirement pinned and hashed); uv gets `--require-hashes` for the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::inputs;

/// The options of a requirements file's own lines that uv reads as pip does.
const UV_OPTIONS: &[&str] = &[
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
    "-i",
    "--index-url",
    "-f",
    "--find-links",
    "--no-index",
    "--no-binary",
    "--only-binary",
    "--require-hashes",
];

/// `PIP_*` variables that change nothing uv would do differently (they silence pip).
const HARMLESS_PIP_VARS: &[&str] = &[
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_NO_INPUT",
    "PIP_PROGRESS_BAR",
    "PIP_ROOT_USER_ACTION",
    "PIP_NO_COLOR",
    "PIP_CACHE_DIR",
];

/// What one requirements file asks of its installer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan {
    /// Why uv would not install it as pip does (the first reason found), if it would not.
    pub not_for_uv: Option<String>,
    /// Whether it pins hashes (`--hash`), which puts pip in hash-checking mode.
    pub hashes: bool,
    /// How many logical lines (requirements and options) it has, comments and blank lines
    /// left out: none means there is nothing to install.
    pub lines: usize,
}

/// The file's logical lines, as pip reads them: `\` at the end of a line continues it, and
/// comments (`#` at the start or after whitespace) are left out.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let (body, continued) = match raw.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        current.push_str(body);
        current.push(' ');
        if !continued {
            out.push(std::mem::take(&mut current));
        }
    }
    out.push(current);
    out.into_iter()
        .map(|line| {
            let cut = line
                .char_indices()
                .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace)))
                .map_or(line.len(), |(i, _)| i);
            line[..cut].trim().to_string()
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// The option a line starts with: `--name=value` and `--name value` give `--name`, a short
/// option its two characters (`-rfile.txt` gives `-r`).
fn option_name(line: &str) -> &str {
    if line.starts_with("--") {
        let end = line.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(line.len());
        &line[..end]
    } else {
        line.get(..2).unwrap_or(line)
    }
}

/// Scans one file's text (pure; its includes are [`inputs::requirement_includes`]).
pub fn scan(text: &str) -> Scan {
    let mut out = Scan::default();
    for line in logical_lines(text) {
        out.lines += 1;
        if line.starts_with('-') {
            let name = option_name(&line);
            if name == "--require-hashes" {
                out.hashes = true;
            }
            let url_include =
                matches!(name, "-r" | "--requirement" | "-c" | "--constraint") && line.contains("://");
            if out.not_for_uv.is_none() && (!UV_OPTIONS.contains(&name) || url_include) {
                out.not_for_uv = Some(if url_include {
                    format!("it includes a file by URL ({line})")
                } else {
                    format!("it uses {name}, which uv does not read as pip does")
                });
            }
            continue;
        }
        // A requirement; of pip's per-requirement options uv reads only --hash.
        for token in line.split_whitespace().filter(|t| t.starts_with("--")) {
            let name = option_name(token);
            if name == "--hash" {
                out.hashes = true;
            } else if out.not_for_uv.is_none() {
                out.not_for_uv = Some(format!("a requirement uses {name}, which uv does not read"));
            }
        }
    }
    out
}

/// Scans `rel` (beneath the build dir `dir`) and every file it includes, as pip would read
/// them. A file that cannot be read here (missing, or leaving the build dir) is pip's to
/// report: the build then uses pip.
pub fn scan_tree(dir: &Path, rel: &str) -> Scan {
    let mut total = Scan::default();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut todo = vec![(PathBuf::from(rel), 0usize)];
    while let Some((file, depth)) = todo.pop() {
        if seen.contains(&file) {
            continue;
        }
        seen.push(file.clone());
        let text = match inputs::read_opt(dir, &file.to_string_lossy()) {
            Ok(Some(text)) if depth <= 16 => text,
            _ => {
                total.not_for_uv.get_or_insert_with(|| format!("{} cannot be read here", file.display()));
                continue;
            }
        };
        let one = scan(&text);
        total.hashes |= one.hashes;
        total.lines += one.lines;
        if total.not_for_uv.is_none() {
            total.not_for_uv = one.not_for_uv.map(|why| format!("{}: {why}", file.display()));
        }
        let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
        for include in inputs::requirement_includes(&text) {
            match inputs::join_inside(&base, &include) {
                Some(target) => todo.push((target, depth + 1)),
                None => {
                    total.not_for_uv.get_or_insert_with(|| format!("{include} is outside the app"));
                }
            }
        }
    }
    total
}

/// The variables uv needs for a build whose environment is `env` to reach the indexes pip
/// would: `PIP_INDEX_URL` becomes `UV_DEFAULT_INDEX` (unless uv's own is set). Err (why) when
/// `env` sets another `PIP_*` variable uv would not honour (`PIP_EXTRA_INDEX_URL`,
/// `PIP_TRUSTED_HOST`, `PIP_FIND_LINKS`, ...): such a build uses pip.
pub fn uv_env(env: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    if let Some(var) = env
        .keys()
        .find(|k| k.starts_with("PIP_") && *k != "PIP_INDEX_URL" && !HARMLESS_PIP_VARS.contains(&k.as_str()))
    {
        return Err(format!("{var} is set, which uv does not read"));
    }
    let mut out = Vec::new();
    if let Some(index) = env.get("PIP_INDEX_URL") {
        if !env.contains_key("UV_DEFAULT_INDEX") && !env.contains_key("UV_INDEX_URL") {
            out.push(("UV_DEFAULT_INDEX".to_string(), index.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_comments_and_blank_lines_asks_for_nothing() {
        assert_eq!(scan("# only a comment\n\n   \n# another\n").lines, 0);
        assert_eq!(scan("").lines, 0);
        assert_eq!(scan("flask\n# web\n-r base.txt\n").lines, 2);
        assert_eq!(scan("flask==3.1 \\\n  --hash=sha256:00\n").lines, 1);
    }

    #[test]
    fn what_uv_takes_as_pip_does() {
        // (what, file, refused for uv, hashes)
        let cases: &[(&str, &str, bool, bool)] = &[
            ("plain pins and ranges", "flask==3.1\ngunicorn>=22,<24\nrequests[socks]\n", false, false),
            ("comments and markers", "# web\nflask ; python_version >= '3.8'  # the app\n", false, false),
            ("an include and a constraint", "-r base.txt\n-c constraints.txt\nflask\n", false, false),
            (
                "index and links",
                "--index-url https://m/simple\n-f ./wheels\n--no-binary :all:\n",
                false,
                false,
            ),
            ("an editable", "-e .\n", false, false),
            ("a URL requirement", "pkg @ https://example.com/pkg-1.0-py3-none-any.whl\n", false, false),
            (
                "hashes on continued lines",
                "flask==3.1 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n",
                false,
                true,
            ),
            ("--hash with a space", "flask==3.1 --hash sha256:aa\n", false, true),
            ("--require-hashes", "--require-hashes\nflask==3.1\n", false, true),
            ("a hash in a comment", "flask  # --hash=sha256:aa --pre\n", false, false),
            ("--pre (uv ignores it)", "--pre\nflask\n", true, false),
            ("--trusted-host (ignored)", "--trusted-host m.example\nflask\n", true, false),
            ("--prefer-binary (ignored)", "--prefer-binary\nflask\n", true, false),
            ("--extra-index-url (other order)", "--extra-index-url https://m/simple\nflask\n", true, false),
            ("--use-feature", "--use-feature=truststore\nflask\n", true, false),
            ("a per-requirement option", "pkg --config-settings a=b\n", true, false),
            ("--global-option", "pkg --global-option=x\n", true, false),
            ("an include by URL", "-r https://example.com/req.txt\n", true, false),
        ];
        for (what, text, refused, hashes) in cases {
            let got = scan(text);
            assert_eq!(got.not_for_uv.is_some(), *refused, "{what}: {got:?}");
            assert_eq!(got.hashes, *hashes, "{what}");
        }
        assert_eq!(
            scan("flask\n--pre\n").not_for_uv.as_deref(),
            Some("it uses --pre, which uv does not read as pip does")
        );
    }

    #[test]
    fn includes_are_scanned_too() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("req")).unwrap();
        std::fs::write(d.path().join("requirements.txt"), "-r req/prod.txt\nflask\n").unwrap();
        std::fs::write(d.path().join("req/prod.txt"), "-r base.txt\ngunicorn\n").unwrap();
        std::fs::write(d.path().join("req/base.txt"), "six==1.16 --hash=sha256:aa\n").unwrap();
        let got = scan_tree(d.path(), "requirements.txt");
        assert_eq!(got, Scan { not_for_uv: None, hashes: true, lines: 5 });
        std::fs::write(d.path().join("req/base.txt"), "--pre\nsix\n").unwrap();
        let got = scan_tree(d.path(), "requirements.txt");
        assert!(got.not_for_uv.as_deref().unwrap().starts_with("req/base.txt: it uses --pre"), "{got:?}");
        std::fs::write(d.path().join("req/base.txt"), "-r missing.txt\n").unwrap();
        let got = scan_tree(d.path(), "requirements.txt");
        assert_eq!(got.not_for_uv.as_deref(), Some("req/missing.txt cannot be read here"));
        std::fs::write(d.path().join("requirements.txt"), "-r ../../etc/x.txt\n").unwrap();
        assert!(scan_tree(d.path(), "requirements.txt").not_for_uv.is_some());
        // A cycle ends.
        std::fs::write(d.path().join("requirements.txt"), "-r requirements.txt\nflask\n").unwrap();
        assert_eq!(scan_tree(d.path(), "requirements.txt"), Scan { lines: 2, ..Scan::default() });
    }

    #[test]
    fn pip_variables_for_uv() {
        let env = |vars: &[(&str, &str)]| -> BTreeMap<String, String> {
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Result<Vec<(String, String)>, ()>);
        let cases: &[Case<'_>] = &[
            ("none", &[("PATH", "/bin")], Ok(vec![])),
            (
                "the index",
                &[("PIP_INDEX_URL", "https://m/simple")],
                Ok(vec![pair("UV_DEFAULT_INDEX", "https://m/simple")]),
            ),
            (
                "uv's own wins",
                &[("PIP_INDEX_URL", "https://m/simple"), ("UV_DEFAULT_INDEX", "https://u/simple")],
                Ok(vec![]),
            ),
            ("harmless ones", &[("PIP_NO_INPUT", "1"), ("PIP_DISABLE_PIP_VERSION_CHECK", "1")], Ok(vec![])),
            ("an extra index", &[("PIP_EXTRA_INDEX_URL", "https://x/simple")], Err(())),
            ("a trusted host", &[("PIP_TRUSTED_HOST", "m")], Err(())),
            ("find links", &[("PIP_FIND_LINKS", "/w")], Err(())),
        ];
        for (what, vars, want) in cases {
            assert_eq!(uv_env(&env(vars)).map_err(|_| ()), *want, "{what}");
        }
    }
}
