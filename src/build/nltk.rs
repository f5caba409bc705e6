//! NLTK corpora, as Heroku's Python buildpack downloads them (its `bin/steps/nltk`): when the
//! app's environment has the `nltk` package, the build says `Downloading NLTK corpora...`; with an
//! `nltk.txt` (one package id per line) it runs `python -m nltk.downloader -d DATA PACKAGE…`
//! into the release's [`DATA`] dir, which dynos get as `NLTK_DATA`; without one it says so. An
//! `nltk.txt` without nltk installed is ignored without a word, as on Heroku. A failed download
//! (no network, an unknown id) fails the build with Heroku's message.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::{build_env, output, python, run_step, BuildError, BuildRequest, Jail};

/// Where the corpora go inside a release dir; dynos get it as `NLTK_DATA` when it exists.
pub const DATA: &str = ".slipway/nltk_data";

/// The package ids of an `nltk.txt`: one per line, surrounding whitespace (and a CRLF's CR)
/// trimmed, blank lines left out. Heroku passes each line as one argument; a line with spaces
/// becomes several ids here, which the downloader would have refused anyway.
pub fn parse(text: &str) -> Vec<String> {
    text.lines().flat_map(str::split_whitespace).map(str::to_string).collect()
}

/// What the NLTK step does, decided from what the build found.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// nltk is not installed: nothing, and nothing said.
    Skip,
    /// nltk installed, no `nltk.txt`: say so.
    NoFile,
    /// Download these ids.
    Download(Vec<String>),
}

pub fn plan(nltk_installed: bool, nltk_txt: Option<&str>) -> Plan {
    match (nltk_installed, nltk_txt) {
        (false, _) => Plan::Skip,
        (true, None) => Plan::NoFile,
        (true, Some(text)) => Plan::Download(parse(text)),
    }
}

/// Runs the step for the release being built in `dir` (its venv already complete); `installed`:
/// whether the build can import `nltk` (`python::Modules`).
pub fn run(
    req: &BuildRequest<'_>,
    dir: &Path,
    installed: bool,
    deadline: Instant,
    jail: &Jail,
) -> Result<(), BuildError> {
    let python = dir.join(python::VENV).join("bin/python");
    let text = match std::fs::read_to_string(dir.join("nltk.txt")) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(BuildError::Io { action: "reading nltk.txt".into(), source }),
    };
    let ids = match plan(installed, text.as_deref()) {
        Plan::Skip => return Ok(()),
        Plan::NoFile => {
            output::step("Downloading NLTK corpora...");
            output::detail("'nltk.txt' not found, not downloading any corpora");
            return Ok(());
        }
        Plan::Download(ids) => ids,
    };
    output::step("Downloading NLTK corpora...");
    output::step(&format!("Downloading NLTK packages: {}", ids.join(" ")));
    if ids.is_empty() {
        return Ok(());
    }
    let data = dir.join(DATA);
    let mut c = Command::new(&python);
    c.args(["-m", "nltk.downloader", "-d"])
        .arg(&data)
        .args(&ids)
        .env_clear()
        .envs(build_env(req))
        .current_dir(dir)
        // The downloader asks "Retry? [n/y/e]" on an error: no input, so it stops.
        .stdin(std::process::Stdio::null());
    run_step("nltk.downloader", c, deadline, jail).map_err(|e| match e {
        BuildError::Command { status, .. } => BuildError::Detect(format!(
            "Unable to download NLTK data.\n\nThe 'python -m nltk.downloader' command to \
             download NLTK\ndata didn't exit successfully ({status}).\n\nSee the log output above \
             for more information."
        )),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nltk_txt_parsing() {
        let cases: &[(&str, &[&str])] = &[
            ("city_database\nstopwords\n", &["city_database", "stopwords"]),
            ("punkt\r\n\r\n  wordnet  \n", &["punkt", "wordnet"]),
            ("", &[]),
            ("invalid!\n", &["invalid!"]),
            ("a b\n", &["a", "b"]),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{text:?}");
        }
    }

    #[test]
    fn what_the_step_does() {
        assert_eq!(plan(false, Some("stopwords\n")), Plan::Skip);
        assert_eq!(plan(false, None), Plan::Skip);
        assert_eq!(plan(true, None), Plan::NoFile);
        assert_eq!(plan(true, Some("stopwords\n")), Plan::Download(vec!["stopwords".into()]));
    }
}
