//! Parses `SSH_ORIGINAL_COMMAND` for `slipway ssh-serve`. Nothing here ever reaches a shell: the
//! text is split into words with POSIX-like quoting rules and no expansion, and either names a
//! git transport on a validated app, or becomes the argument list of an admin command.

use crate::app::{AppName, InvalidAppName};

#[derive(Debug, PartialEq, Eq)]
pub enum SshCommand {
    /// `git push`: `git-receive-pack 'app'`.
    ReceivePack(AppName),
    /// `git clone` / `git fetch`: `git-upload-pack 'app'`.
    UploadPack(AppName),
    /// Anything else: the words of a slipway command (`apps`, `config:set app K=V`, …).
    Admin(Vec<String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SshCommandError {
    #[error("no command given; try 'help', or push with 'git push slipway main'")]
    Empty,
    #[error("the command has unbalanced quotes")]
    BadQuoting,
    #[error("{0} takes exactly one repository argument")]
    BadGitArgs(&'static str),
    #[error(transparent)]
    InvalidApp(#[from] InvalidAppName),
}

pub fn parse(original: &str) -> Result<SshCommand, SshCommandError> {
    if original.contains('\0') {
        return Err(SshCommandError::BadQuoting);
    }
    let words = shlex::split(original).ok_or(SshCommandError::BadQuoting)?;
    let (first, rest) = words.split_first().ok_or(SshCommandError::Empty)?;
    // `git receive-pack` (space) is what some old clients send.
    let (verb, args) = match (first.as_str(), rest.first().map(String::as_str)) {
        ("git", Some(sub @ ("receive-pack" | "upload-pack"))) => (format!("git-{sub}"), &rest[1..]),
        _ => (first.clone(), rest),
    };
    match verb.as_str() {
        "git-receive-pack" => Ok(SshCommand::ReceivePack(repo_app(args, "git-receive-pack")?)),
        "git-upload-pack" => Ok(SshCommand::UploadPack(repo_app(args, "git-upload-pack")?)),
        _ => Ok(SshCommand::Admin(words)),
    }
}

/// `'hello'`, `'hello.git'`, `'/hello.git'`, `'~/hello'` all name the app `hello`; any other
/// path (subdirectories, `..`) is rejected by the app-name check.
fn repo_app(args: &[String], verb: &'static str) -> Result<AppName, SshCommandError> {
    let [path] = args else {
        return Err(SshCommandError::BadGitArgs(verb));
    };
    let trimmed = path.strip_prefix("~/").unwrap_or(path);
    let trimmed = trimmed.strip_prefix('/').unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix(".git").unwrap_or(trimmed);
    Ok(trimmed.parse::<AppName>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(s: &str) -> AppName {
        s.parse().unwrap()
    }

    #[test]
    fn git_transports() {
        for cmd in [
            "git-receive-pack 'hello'",
            "git-receive-pack '/hello.git'",
            "git-receive-pack 'hello.git'",
            "git-receive-pack '~/hello'",
            "git receive-pack 'hello'",
            "git-receive-pack hello",
        ] {
            assert_eq!(parse(cmd), Ok(SshCommand::ReceivePack(app("hello"))), "{cmd}");
        }
        assert_eq!(parse("git-upload-pack '/my-app.git'"), Ok(SshCommand::UploadPack(app("my-app"))));
    }

    #[test]
    fn bad_repositories_never_reach_the_filesystem() {
        for cmd in [
            "git-receive-pack '../etc'",
            "git-receive-pack 'a/b'",
            "git-receive-pack 'Bad_Name'",
            "git-receive-pack '/tmp/x.git'",
            "git-receive-pack ''",
        ] {
            assert!(matches!(parse(cmd), Err(SshCommandError::InvalidApp(_))), "{cmd}");
        }
        assert_eq!(parse("git-receive-pack"), Err(SshCommandError::BadGitArgs("git-receive-pack")));
        assert_eq!(parse("git-receive-pack a b"), Err(SshCommandError::BadGitArgs("git-receive-pack")));
    }

    #[test]
    fn admin_words_are_split_without_expansion() {
        assert_eq!(
            parse("config:set app 'A=b c' \"D=$HOME\""),
            Ok(SshCommand::Admin(vec!["config:set".into(), "app".into(), "A=b c".into(), "D=$HOME".into()]))
        );
        // Shell metacharacters stay literal words; the CLI parser then rejects them.
        assert_eq!(
            parse("apps; touch /tmp/x"),
            Ok(SshCommand::Admin(vec!["apps;".into(), "touch".into(), "/tmp/x".into()]))
        );
        assert_eq!(
            parse("apps $(touch x) `id`"),
            Ok(SshCommand::Admin(vec!["apps".into(), "$(touch".into(), "x)".into(), "`id`".into()]))
        );
    }

    #[test]
    fn empty_and_unbalanced() {
        assert_eq!(parse(""), Err(SshCommandError::Empty));
        assert_eq!(parse("   "), Err(SshCommandError::Empty));
        assert_eq!(parse("apps 'oops"), Err(SshCommandError::BadQuoting));
        assert_eq!(parse("apps\0"), Err(SshCommandError::BadQuoting));
    }
}
