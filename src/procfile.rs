//! Procfile parsing (HEROKU.md, "Procfile"): one `type: command` per line. Stricter than
//! Heroku's own parser on purpose: a duplicate type or an unparsable line fails the build and
//! names the line, instead of silently dropping a process.

use std::collections::BTreeMap;
use std::process::Command;

/// Process types in file order are not needed anywhere; a sorted map keeps output stable.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Procfile {
    pub processes: BTreeMap<String, String>,
    /// Where the process types came from: `Procfile`, or `detected Django` (…) when the app has
    /// no Procfile and the build chose the web command. Stored in its own column
    /// (`builds.process_types_source`), not in the JSON of the types; None for builds recorded
    /// before it was tracked.
    #[serde(skip)]
    pub source: Option<String>,
}

/// The shell a Procfile command line runs in: bash when the system has it (Heroku runs
/// `bash -c`), else `/bin/sh`.
pub fn shell() -> &'static str {
    if std::path::Path::new("/bin/bash").is_file() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// `SHELL -c LINE`: the line exactly as written, so env prefixes (`FOO=1 cmd`), `cd dir && cmd`,
/// pipes and `$PORT` work as on Heroku. Whether the shell then execs the command (bash does for a
/// simple command and for the last one of a list; Debian's dash never does) or stays as its
/// parent is up to the shell; the dyno shim handles both (see `daemon::shim`).
pub fn shell_command(line: &str) -> Command {
    let mut command = Command::new(shell());
    command.arg("-c").arg(line);
    command
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcfileError {
    #[error("Procfile line {line} is not `type: command`: {text:?}")]
    Malformed { line: usize, text: String },
    #[error("Procfile line {line}: process type {name:?} must be 1 to 63 letters, digits, '_' or '-'")]
    BadType { line: usize, name: String },
    #[error("Procfile line {line}: process type '{name}' has no command")]
    EmptyCommand { line: usize, name: String },
    #[error("Procfile line {line}: process type '{name}' is already declared on line {first}")]
    Duplicate { line: usize, name: String, first: usize },
    #[error("Procfile declares no process types")]
    Empty,
    #[error(
        "Procfile line {line}: process type 'run' is reserved for one-off dynos (slipway run); rename it"
    )]
    Reserved { line: usize },
}

impl Procfile {
    pub fn parse(text: &str) -> Result<Procfile, ProcfileError> {
        let mut processes = BTreeMap::new();
        let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(ProcfileError::Malformed { line, text: trimmed.to_string() });
            };
            let name = name.trim();
            if !valid_type(name) {
                // "web python app.py: x" would split oddly; report it as malformed when the
                // "type" part contains spaces, which is what a missing colon looks like.
                if name.contains(char::is_whitespace) {
                    return Err(ProcfileError::Malformed { line, text: trimmed.to_string() });
                }
                return Err(ProcfileError::BadType { line, name: name.to_string() });
            }
            if name == crate::daemon::world::ONE_OFF_TYPE {
                return Err(ProcfileError::Reserved { line });
            }
            let command = command.trim();
            if command.is_empty() {
                return Err(ProcfileError::EmptyCommand { line, name: name.to_string() });
            }
            if let Some(&first) = first_line.get(name) {
                return Err(ProcfileError::Duplicate { line, name: name.to_string(), first });
            }
            first_line.insert(name.to_string(), line);
            processes.insert(name.to_string(), command.to_string());
        }
        if processes.is_empty() {
            return Err(ProcfileError::Empty);
        }
        Ok(Procfile { processes, source: None })
    }

    /// Types that run as long-lived dynos: everything but the one-off `release` phase.
    pub fn dyno_types(&self) -> impl Iterator<Item = (&str, &str)> {
        self.processes
            .iter()
            .filter(|(name, _)| name.as_str() != "release")
            .map(|(n, c)| (n.as_str(), c.as_str()))
    }
}

pub fn valid_type(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_commands() {
        let p =
            Procfile::parse("web: gunicorn app:app --bind 0.0.0.0:$PORT\n\n# comment\nworker:python w.py\n")
                .unwrap();
        assert_eq!(p.processes["web"], "gunicorn app:app --bind 0.0.0.0:$PORT");
        assert_eq!(p.processes["worker"], "python w.py");
        assert_eq!(p.dyno_types().count(), 2);
    }

    #[test]
    fn release_is_not_a_dyno_type() {
        let p = Procfile::parse("web: a\nrelease: b\n").unwrap();
        assert_eq!(p.dyno_types().map(|(n, _)| n).collect::<Vec<_>>(), ["web"]);
    }

    #[test]
    fn a_line_without_colon_is_named() {
        let err = Procfile::parse("web: python app.py\nthis line is broken\n").unwrap_err();
        assert_eq!(err, ProcfileError::Malformed { line: 2, text: "this line is broken".into() });
        assert!(err.to_string().contains("Procfile line 2"));
    }

    #[test]
    fn duplicates_name_both_lines() {
        let err = Procfile::parse("web: a\nweb: b\n").unwrap_err();
        assert!(err.to_string().contains("line 2") && err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn bad_types_and_empty_commands() {
        assert!(matches!(Procfile::parse("we$b: a").unwrap_err(), ProcfileError::BadType { line: 1, .. }));
        assert_eq!(Procfile::parse("web: a\nrun: b").unwrap_err(), ProcfileError::Reserved { line: 2 });
        assert!(matches!(Procfile::parse("web:   ").unwrap_err(), ProcfileError::EmptyCommand { .. }));
        let long = format!("{}: a", "x".repeat(64));
        assert!(matches!(Procfile::parse(&long).unwrap_err(), ProcfileError::BadType { .. }));
        assert_eq!(Procfile::parse("# nothing\n").unwrap_err(), ProcfileError::Empty);
    }
}
