//! Remembered interpreter probes. Choosing the interpreter asks every installed Python for its
//! version ([`super::interpreter::probe`]: one process each, a dozen on a server with pyenv),
//! which cost seconds of every Python push, a code-only redeploy included. An answer is kept in
//! `cache/.tools/interpreters` under the name asked and a fingerprint of the executable it
//! resolves to (canonical path, device, inode, size, mtime and ctime): replacing or upgrading
//! the file changes the fingerprint, so the answer is asked again. Only real executables (ELF)
//! are remembered: a script such as a pyenv shim picks its interpreter at run time, so it is
//! asked every time.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The answers one push may reuse, and the new ones it learnt.
pub struct Probes {
    path: Option<PathBuf>,
    known: BTreeMap<String, (String, String)>,
    changed: bool,
}

impl Probes {
    /// Reads the cache at `path` (none, or an unreadable one, is empty); `None` remembers nothing.
    pub fn load(path: Option<&Path>) -> Probes {
        let known = path.and_then(|p| std::fs::read_to_string(p).ok()).map(|t| parse(&t)).unwrap_or_default();
        Probes { path: path.map(Path::to_path_buf), known, changed: false }
    }

    /// The remembered `(executable, version)` for `name`, or `ask`'s answer (remembered when
    /// `name` resolves to an ELF executable).
    pub fn get(
        &mut self,
        name: &str,
        ask: impl FnOnce(&str) -> Option<(String, String)>,
    ) -> Option<(String, String)> {
        let key = self.path.as_ref().and_then(|_| fingerprint(name)).map(|f| format!("{name}\t{f}"));
        if let Some(found) = key.as_ref().and_then(|k| self.known.get(k)) {
            return Some(found.clone());
        }
        let answer = ask(name)?;
        if let Some(key) = key {
            self.known.insert(key, answer.clone());
            self.changed = true;
        }
        Some(answer)
    }

    /// Writes what was learnt (temp file + rename), keeping only the answers whose executables
    /// are still there unchanged.
    pub fn save(mut self) -> io::Result<()> {
        let Some(path) = self.path.take().filter(|_| self.changed) else { return Ok(()) };
        self.known.retain(|key, _| {
            let (name, print) = key.split_once('\t').unwrap_or((key, ""));
            fingerprint(name).as_deref() == Some(print)
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(render(&self.known).as_bytes())?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            crate::home::remove_or_warn(&tmp);
        }
        written
    }
}

/// Whether `name` runs a pyenv shim (`<root>/shims/NAME`) of one of the `pyenv` roots whose
/// `versions/` are searched anyway: every interpreter such a shim can start is found there, and
/// asking the shim (a bash script running `pyenv exec`) costs a quarter of a second or more.
pub fn is_searched_pyenv_shim(name: &str, pyenv: &[PathBuf]) -> bool {
    let Some(path) = resolve(name) else { return false };
    let Some(dir) = path.parent().filter(|d| d.file_name().is_some_and(|n| n == "shims")) else {
        return false;
    };
    let root = dir.parent().unwrap_or(dir);
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    pyenv.iter().any(|r| same(r, root) && r.join("versions").is_dir())
}

/// A path, or a command looked up on PATH as `Command` does.
fn resolve(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let dirs = std::env::var("PATH").unwrap_or_default();
    dirs.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// `name` (a path, or a command looked up on PATH) resolved to its file, when that is an ELF
/// executable: `canonical path|dev|ino|size|mtime|ctime`. (A Python built with a shared
/// libpython keeps it in its own prefix, which an upgrade replaces with the executable.)
fn fingerprint(name: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(resolve(name)?).ok()?;
    let mut magic = [0u8; 4];
    std::fs::File::open(&real).ok()?.read_exact(&mut magic).ok()?;
    if &magic != b"\x7fELF" {
        return None;
    }
    let m = std::fs::metadata(&real).ok()?;
    Some(format!(
        "{}|{}|{}|{}|{}.{}|{}.{}",
        real.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// One answer a line: `name TAB fingerprint TAB executable TAB version`; other lines are ignored.
fn parse(text: &str) -> BTreeMap<String, (String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (name, print, exe, version) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (f.next().is_none() && !exe.is_empty() && !version.is_empty())
                .then(|| (format!("{name}\t{print}"), (exe.to_string(), version.to_string())))
        })
        .collect()
}

fn render(known: &BTreeMap<String, (String, String)>) -> String {
    known
        .iter()
        .filter(|(key, (exe, version))| ![key.as_str(), exe, version].iter().any(|s| s.contains('\n')))
        .map(|(key, (exe, version))| format!("{key}\t{exe}\t{version}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_garbage_is_ignored() {
        let text = "python3\t/usr/bin/python3.11|1|2|3|4.5|6.7\t/usr/bin/python3\t3.11.2\n";
        let known = parse(&format!("{text}garbage\na\tb\tc\n\t\t\t\na\tb\tc\td\te\n"));
        assert_eq!(known.len(), 1);
        assert_eq!(render(&known), text);
    }

    #[test]
    fn pyenv_shims_of_searched_roots_are_recognised() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("pyenv");
        std::fs::create_dir_all(root.join("shims")).unwrap();
        std::fs::create_dir_all(root.join("versions")).unwrap();
        std::fs::create_dir_all(t.path().join("other/shims")).unwrap();
        for shim in [root.join("shims/python3.12"), t.path().join("other/shims/python3.12")] {
            std::fs::write(&shim, "#!/usr/bin/env bash\n").unwrap();
        }
        let shim = root.join("shims/python3.12").display().to_string();
        let other = t.path().join("other/shims/python3.12").display().to_string();
        let cases = [
            (&shim, vec![root.clone()], true),
            (&shim, vec![t.path().join("nowhere"), root.clone()], true),
            (&shim, vec![], false),
            (&other, vec![root.clone()], false),
            (&"/nonexistent/shims/python3".to_string(), vec![root.clone()], false),
        ];
        for (name, roots, want) in cases {
            assert_eq!(is_searched_pyenv_shim(name, &roots), want, "{name} in {roots:?}");
        }
    }

    #[test]
    fn only_unchanged_elf_executables_are_remembered() {
        let t = tempfile::tempdir().unwrap();
        let elf = t.path().join("python3");
        std::fs::copy(std::env::current_exe().unwrap(), &elf).unwrap();
        let script = t.path().join("shim");
        std::fs::write(&script, "#!/bin/sh\necho\n").unwrap();
        let (elf, script) = (elf.display().to_string(), script.display().to_string());
        let cache = t.path().join("cache/.tools/interpreters");
        let answer = |v: &str| Some(("/x/python".to_string(), v.to_string()));

        let mut probes = Probes::load(Some(&cache));
        assert_eq!(probes.get(&elf, |_| answer("3.12.1")), answer("3.12.1"));
        assert_eq!(probes.get(&script, |_| answer("3.11.0")), answer("3.11.0"));
        probes.save().unwrap();

        let mut probes = Probes::load(Some(&cache));
        assert_eq!(probes.get(&elf, |_| panic!("asked again")), answer("3.12.1"));
        assert_eq!(
            probes.get(&script, |_| answer("3.11.1")),
            answer("3.11.1"),
            "a script is asked every time"
        );
        // Replaced (new inode, size): asked again.
        std::fs::remove_file(&elf).unwrap();
        std::fs::write(&elf, b"\x7fELF and something else").unwrap();
        assert_eq!(probes.get(&elf, |_| answer("3.12.2")), answer("3.12.2"));
        // No cache path: nothing is remembered, nothing is written.
        let mut none = Probes::load(None);
        assert_eq!(none.get(&elf, |_| answer("3.12.3")), answer("3.12.3"));
        none.save().unwrap();
    }
}
