//! From words to a [`Cli`], the same way locally and over SSH, with Heroku's `-a/--app APP`.
//!
//! Every command that takes an app takes it as its first argument (`ps hello`) or as
//! `-a hello`/`--app hello`/`--app=hello` anywhere among its options (`ps:restart web -a
//! hello`, Heroku's habit). The flag is resolved before clap sees the words: it is taken out and
//! its value put where the APP argument goes, so clap checks and documents one shape per
//! command. With the flag, every other word is one of the command's other arguments; an app
//! given both ways is accepted when the two are the same and is one clear error when they
//! differ. For `run`, the scan stops where the one-off command starts: its words are its own.

use clap::{CommandFactory, Parser};

use super::Cli;

/// Parses `words` (the program name first).
pub fn try_parse(words: Vec<String>) -> Result<Cli, clap::Error> {
    let root = Cli::command();
    let Some(found) = find_app_flag(&root, &words) else {
        // The flag is global (so every command's help shows it); here it was not resolved, so
        // the command takes no app.
        let cli = Cli::try_parse_from(&words)?;
        if let Some(app) = &cli.app_flag {
            let name = subcommand_name(&words).unwrap_or_default();
            return Err(usage_error(&name, format!("'{name}' takes no app (-a {app})")));
        }
        return Ok(cli);
    };
    let AppFlag { sub, values, flag_words, first_positional } = found;
    let app = values[0].clone();
    if let Some(other) = values.iter().find(|v| **v != app) {
        return Err(usage_error(
            &words[sub],
            format!("the app is given twice, as '{app}' and '{other}'; give it once"),
        ));
    }
    // The flag's words go; its value goes where the APP argument stands.
    let rest: Vec<String> =
        words.iter().enumerate().filter(|(i, _)| !flag_words.contains(i)).map(|(_, w)| w.clone()).collect();
    let removed_before_sub = flag_words.iter().filter(|i| **i < sub).count();
    let sub = sub - removed_before_sub;
    let mut with_flag = rest.clone();
    with_flag.insert(sub + 1, app.clone());
    let first_positional = first_positional
        .map(|(i, word, before_flag)| (i - flag_words.iter().filter(|f| **f < i).count(), word, before_flag));
    // The app given positionally too (`ps hello -a hello`): the first argument before the flag
    // equal to it is that, when dropping it still makes a valid command.
    if let Some((i, word, true)) = &first_positional {
        if *word == app && *i == sub + 1 {
            if let Ok(cli) = Cli::try_parse_from(&rest) {
                return Ok(cli);
            }
        }
    }
    match Cli::try_parse_from(&with_flag) {
        Ok(cli) => Ok(cli),
        Err(err) => {
            // One word too many: the app was also given as the argument, and differently.
            if let Some((i, word, _)) = first_positional {
                let mut without = with_flag.clone();
                without.remove(i + 1);
                if word != app && Cli::try_parse_from(&without).is_ok() {
                    return Err(usage_error(
                        &with_flag[sub],
                        format!("two apps are given, '{word}' and '-a {app}'; give the app once"),
                    ));
                }
            }
            Err(err)
        }
    }
}

/// The subcommand's name: the first word that is neither an option nor `--home`'s value.
fn subcommand_name(words: &[String]) -> Option<String> {
    let mut skip = false;
    for word in words.iter().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        match word.as_str() {
            "--home" | "-a" | "--app" => skip = true,
            w if w.starts_with('-') => {}
            w => return Some(w.to_string()),
        }
    }
    None
}

/// A usage error about subcommand `name`, with its usage line.
fn usage_error(name: &str, message: String) -> clap::Error {
    let mut root = Cli::command();
    root.build();
    match root.find_subcommand_mut(name) {
        Some(sub) => sub.error(clap::error::ErrorKind::ArgumentConflict, message),
        None => root.error(clap::error::ErrorKind::ArgumentConflict, message),
    }
}

struct AppFlag {
    /// Index of the subcommand's name in the words.
    sub: usize,
    /// Every value given with -a/--app.
    values: Vec<String>,
    /// Indexes of the words that make up the flags (the flag and, when separate, its value).
    flag_words: Vec<usize>,
    /// The first argument after the subcommand: index, word, whether it precedes the first flag.
    first_positional: Option<(usize, String, bool)>,
}

/// Finds `-a`/`--app` in the words of a command that takes an app; None when there is no such
/// flag (or the command takes no app: clap then reports the flag as unexpected).
fn find_app_flag(root: &clap::Command, words: &[String]) -> Option<AppFlag> {
    let mut values = Vec::new();
    let mut flag_words = Vec::new();
    let mut sub = None;
    let mut positionals = 0usize;
    let mut first_positional = None;
    let mut value_options: Vec<String> = vec!["--home".into()];
    let mut i = 1;
    while i < words.len() {
        let word = words[i].as_str();
        if word == "--" {
            break;
        }
        if let Some(value) = app_flag_value(word) {
            match value {
                Some(v) => {
                    values.push(v.to_string());
                    flag_words.push(i);
                }
                None => {
                    let Some(v) = words.get(i + 1) else { break };
                    values.push(v.clone());
                    flag_words.extend([i, i + 1]);
                    i += 1;
                }
            }
        } else if word.starts_with('-') && word.len() > 1 {
            let name = word.split('=').next().unwrap_or(word);
            if !word.contains('=') && value_options.iter().any(|o| o == name) {
                i += 1;
            }
        } else if let Some(sub_index) = sub {
            let command = root.find_subcommand(&words[sub_index])?;
            if first_positional.is_none() {
                first_positional = Some((i, word.to_string(), values.is_empty()));
            }
            positionals += 1;
            // `run APP CMD...`: the command starts at the first argument after the app.
            if command.get_name() == "run" && positionals > usize::from(values.is_empty()) {
                break;
            }
        } else {
            let command = root.find_subcommand(word)?;
            if !command.get_arguments().any(|a| a.get_id() == "app" && a.is_positional()) {
                return None;
            }
            for arg in command.get_arguments().filter(|a| !a.is_positional()) {
                if arg.get_action().takes_values() {
                    value_options.extend(
                        arg.get_short_and_visible_aliases().into_iter().flatten().map(|c| format!("-{c}")),
                    );
                    value_options.extend(
                        arg.get_long_and_visible_aliases().into_iter().flatten().map(|l| format!("--{l}")),
                    );
                }
            }
            sub = Some(i);
        }
        i += 1;
    }
    let sub = sub?;
    if values.is_empty() {
        return None;
    }
    Some(AppFlag { sub, values, flag_words, first_positional })
}

/// `-a`/`--app` → Some(None) (the value is the next word); `--app=x`/`-ax` → Some(Some(x)).
fn app_flag_value(word: &str) -> Option<Option<&str>> {
    match word {
        "-a" | "--app" => Some(None),
        _ => word
            .strip_prefix("--app=")
            .or_else(|| word.strip_prefix("-a").filter(|v| !v.is_empty()))
            .map(Some),
    }
}

/// Like clap's `Cli::parse`: a usage error is printed in full and exits 2.
pub fn parse_or_exit(words: Vec<String>) -> Cli {
    match try_parse(words) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    }
}

/// Parses the process's own arguments (see [`parse_or_exit`]).
pub fn parse_env() -> Cli {
    let words: Vec<String> = std::env::args_os().map(|w| w.to_string_lossy().into_owned()).collect();
    parse_or_exit(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    fn parse(line: &str) -> Result<Command, String> {
        let words =
            std::iter::once("slipway".to_string()).chain(line.split(' ').map(str::to_string)).collect();
        try_parse(words).map(|c| c.command).map_err(|e| e.to_string())
    }

    #[test]
    fn app_flag_in_every_form_and_position() {
        for line in
            ["ps hello", "ps -a hello", "ps --app hello", "ps --app=hello", "ps -ahello", "ps hello -a hello"]
        {
            assert!(matches!(parse(line), Ok(Command::Ps { ref app, .. }) if app == "hello"), "{line}");
        }
        assert!(
            matches!(parse("ps --json -a hello"), Ok(Command::Ps { ref app, json: true })  if app == "hello")
        );
        let Ok(Command::PsRestart { app, target }) = parse("ps:restart web -a hello") else { panic!() };
        assert_eq!((app.as_str(), target.as_deref()), ("hello", Some("web")));
        let Ok(Command::ConfigSet { app, pairs, .. }) = parse("config:set -a hello K=V L=W") else {
            panic!()
        };
        assert_eq!((app.as_str(), pairs), ("hello", vec!["K=V".to_string(), "L=W".into()]));
        let Ok(Command::Logs { app, tail, lines, .. }) = parse("logs --app hello -t -n 5") else { panic!() };
        assert_eq!((app.as_str(), tail, lines), ("hello", true, 5));
        let Ok(Command::Logs { app, ps, .. }) = parse("logs --ps web -a hello") else { panic!() };
        assert_eq!((app.as_str(), ps.as_deref()), ("hello", Some("web")));
        for line in ["-a hello ps", "--home /h ps -a hello", "--home /h -a hello ps --json"] {
            assert!(matches!(parse(line), Ok(Command::Ps { ref app, .. }) if app == "hello"), "{line}");
        }
        let Ok(Command::AppsRename { app, new_name }) = parse("apps:rename new -a old") else { panic!() };
        assert_eq!((app.as_str(), new_name.as_str()), ("old", "new"));
    }

    #[test]
    fn two_different_apps_are_one_clear_error() {
        let err = parse("ps hello -a other").unwrap_err();
        assert!(err.contains("two apps are given, 'hello' and '-a other'"), "{err}");
        let err = parse("ps -a hello -a other").unwrap_err();
        assert!(err.contains("the app is given twice"), "{err}");
    }

    #[test]
    fn commands_without_an_app_reject_the_flag() {
        let err = parse("keys -a hello").unwrap_err();
        assert!(
            err.contains("'keys' takes no app (-a hello)") && err.contains("Usage: slipway keys"),
            "{err}"
        );
    }

    #[test]
    fn aliases() {
        assert!(matches!(parse("create hello"), Ok(Command::AppsCreate { .. })));
        assert!(matches!(parse("destroy hello --confirm hello"), Ok(Command::AppsDestroy { .. })));
        assert!(matches!(parse("info -a hello"), Ok(Command::AppsInfo { .. })));
        assert!(matches!(parse("restart hello web"), Ok(Command::PsRestart { .. })));
        assert!(matches!(parse("scale web=2 -a hello"), Ok(Command::PsScale { .. })));
        assert!(matches!(parse("open hello"), Ok(Command::Open { .. })));
    }

    #[test]
    fn run_takes_its_command_without_a_double_dash() {
        let cmd = |line| match parse(line) {
            Ok(Command::Run { app, command }) => (app, command.join(" ")),
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(cmd("run hello python -c print(1)"), ("hello".into(), "python -c print(1)".into()));
        assert_eq!(cmd("run hello -- python -V"), ("hello".into(), "python -V".into()));
        assert_eq!(cmd("run -a hello python -a x --app y"), ("hello".into(), "python -a x --app y".into()));
        assert_eq!(cmd("run hello ls -a"), ("hello".into(), "ls -a".into()));
        assert_eq!(cmd("run hello -- ls -- -a"), ("hello".into(), "ls -- -a".into()));
        assert!(parse("run hello").is_err());
    }
}
