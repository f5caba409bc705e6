//! `.slugignore`: gitignore-style patterns (no `!` negation) for files to leave out of the slug.
//! A pattern without `/` matches a name at any depth; with a `/` it is anchored at the app root;
//! a trailing `/` matches directories only; `*` and `?` stay within one path segment and `**`
//! spans segments. The build's own `.slipway/` dir is never touched.

use std::path::Path;

#[derive(Debug)]
pub struct Pattern {
    segments: Vec<String>,
    anchored: bool,
    dir_only: bool,
}

pub fn parse(text: &str) -> Vec<Pattern> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|line| {
            let dir_only = line.ends_with('/');
            let line = line.trim_end_matches('/');
            let anchored = line.contains('/');
            let line = line.trim_start_matches('/');
            Pattern { segments: line.split('/').map(str::to_string).collect(), anchored, dir_only }
        })
        .collect()
}

impl Pattern {
    /// `rel` is a path relative to the app root, `/`-separated.
    pub fn matches(&self, rel: &str, is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        let parts: Vec<&str> = rel.split('/').collect();
        let pattern: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        if self.anchored {
            match_segments(&pattern, &parts)
        } else {
            parts.last().is_some_and(|name| glob(pattern[0], name))
        }
    }
}

fn match_segments(pattern: &[&str], parts: &[&str]) -> bool {
    match (pattern.first(), parts.first()) {
        (None, None) => true,
        (Some(&"**"), _) => (0..=parts.len()).any(|skip| match_segments(&pattern[1..], &parts[skip..])),
        (Some(p), Some(name)) => glob(p, name) && match_segments(&pattern[1..], &parts[1..]),
        _ => false,
    }
}

/// `*` and `?` within one segment.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Removes everything under `root` that a pattern matches; returns how many entries went.
pub fn apply(root: &Path, patterns: &[Pattern]) -> std::io::Result<usize> {
    fn walk(root: &Path, dir: &Path, patterns: &[Pattern], removed: &mut usize) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().to_string();
            if rel == ".slipway" {
                continue;
            }
            let is_dir = entry.file_type()?.is_dir();
            if patterns.iter().any(|p| p.matches(&rel, is_dir)) {
                if is_dir {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
                *removed += 1;
            } else if is_dir {
                walk(root, &path, patterns, removed)?;
            }
        }
        Ok(())
    }
    let mut removed = 0;
    walk(root, root, patterns, &mut removed)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, rel: &str, is_dir: bool) -> bool {
        parse(pattern)[0].matches(rel, is_dir)
    }

    #[test]
    fn patterns() {
        assert!(m("*.psd", "art/logo.psd", false));
        assert!(m("*.psd", "logo.psd", false));
        assert!(!m("*.psd", "logo.psd.txt", false));
        assert!(m("/docs", "docs", true));
        assert!(!m("/docs", "src/docs", true));
        assert!(m("tests/", "tests", true) && m("tests/", "app/tests", true));
        assert!(!m("tests/", "tests", false));
        assert!(m("spec/**/*.rb", "spec/a/b/c.rb", false) && m("spec/**/*.rb", "spec/c.rb", false));
        assert!(m("data/?.csv", "data/a.csv", false) && !m("data/?.csv", "data/ab.csv", false));
        assert!(parse("!keep.txt\n# comment\n\n").is_empty());
    }

    #[test]
    fn applying_never_touches_the_build_dir() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.psd", "keep.py", "docs/x.md", ".slipway/venv/x.psd"] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let removed = apply(d.path(), &parse("*.psd\n/docs\n")).unwrap();
        assert_eq!(removed, 2);
        assert!(d.path().join("keep.py").exists() && d.path().join(".slipway/venv/x.psd").exists());
        assert!(!d.path().join("a.psd").exists() && !d.path().join("docs").exists());
    }
}
