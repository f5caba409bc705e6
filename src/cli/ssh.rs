//! `ssh-serve --key NAME`: the forced command of every authorized key. It reads
//! `SSH_ORIGINAL_COMMAND`, which is never given to a shell: git transports go to
//! `git receive-pack`/`upload-pack` on a validated app's repo, everything else is parsed as
//! slipway CLI words and dispatched to the same handlers as the local CLI.

use std::os::unix::process::CommandExt;
use std::process::Command as Process;

use anyhow::bail;

use super::{apps::ensure_app, open_store, out, print_json, print_table, Command};
use crate::git::ssh_command::{self, SshCommand};
use crate::home::Home;
use crate::store;
use crate::store::keys::{KeyRow, Role};

pub fn serve(home: &Home, key: &str) -> anyhow::Result<i32> {
    crate::keys::validate_name(key)?;
    let original = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    let command = match ssh_command::parse(&original) {
        Ok(c) => c,
        Err(ssh_command::SshCommandError::Empty) => {
            eprintln!("Hi {key}! This server runs slipway. Push with 'git push slipway main', or run a command such as 'ssh <this host> apps' ('help' lists them).");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    let key_row = {
        let store = open_store(home)?;
        store::keys::get(store.conn(), key)?
    };
    let Some(key_row) = key_row else {
        eprintln!("slipway: key '{key}' is no longer authorised");
        return Ok(1);
    };
    let git_app = match &command {
        SshCommand::ReceivePack(app) | SshCommand::UploadPack(app) => Some(app.to_string()),
        SshCommand::Admin(_) => None,
    };
    if let Some(app) = git_app {
        if !reaches(&key_row, &app) {
            eprintln!("slipway: {}", refusal(&key_row, &format!("push to or fetch '{app}'")));
            return Ok(1);
        }
    }
    match command {
        SshCommand::ReceivePack(app) => {
            let mut store = open_store(home)?;
            ensure_app(home, &mut store, &app, false)?;
            exec_git("receive-pack", home, &home.repo(&app), key)
        }
        SshCommand::UploadPack(app) => {
            let store = open_store(home)?;
            store::apps::require(store.conn(), &app)?;
            exec_git("upload-pack", home, &home.repo(&app), key)
        }
        SshCommand::Admin(words) => admin(home, &key_row, words),
    }
}

/// Replaces this process with git; the hook it runs learns who pushed from the environment.
fn exec_git(verb: &str, home: &Home, repo: &std::path::Path, key: &str) -> anyhow::Result<i32> {
    let err = Process::new("git")
        .arg(verb)
        .arg(repo)
        .env("SLIPWAY_PUSHED_BY", key)
        .env("SLIPWAY_HOME", home.root())
        .exec();
    bail!("running git {verb}: {err}")
}

fn admin(home: &Home, key_row: &KeyRow, words: Vec<String>) -> anyhow::Result<i32> {
    let key = key_row.name.as_str();
    let argv = std::iter::once("slipway".to_string()).chain(words);
    let cli = match super::try_parse(argv.collect()) {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            print!("{e}");
            return Ok(0);
        }
        Err(e) => {
            // A usage error in full, as locally: what is wrong, the usage line, "did you mean",
            // and clap's exit code (2).
            eprint!("{}", e.render());
            return Ok(e.exit_code());
        }
    };
    if cli.home.is_some() {
        bail!("--home cannot be set over SSH");
    }
    if !cli.command.allowed_over_ssh() {
        bail!("that command can only be run on the server itself");
    }
    if let Err(why) = allowed(key_row, &cli.command) {
        eprintln!("slipway: {why}");
        return Ok(1);
    }
    if let (Role::Deploy, Command::Apps { json }) = (key_row.role, &cli.command) {
        return list_own_apps(home, key_row, *json);
    }
    super::dispatch(home, cli.command, Some(key))
}

/// `apps` for a deploy key: only the apps it reaches.
fn list_own_apps(home: &Home, key: &KeyRow, json: bool) -> anyhow::Result<i32> {
    let store = open_store(home)?;
    let apps: Vec<_> =
        store::apps::list(store.conn())?.into_iter().filter(|a| reaches(key, &a.name)).collect();
    if json {
        return print_json(&apps);
    }
    if apps.is_empty() {
        out(&format!("No apps that key '{}' may reach yet.", key.name));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let release = a.current_release.map(|v| format!("v{v}")).unwrap_or("-".into());
            vec![a.name.clone(), release, a.created_at.clone()]
        })
        .collect();
    print_table(&["APP", "RELEASE", "CREATED"], &rows);
    Ok(0)
}

/// Whether the key may touch `app` at all.
fn reaches(key: &KeyRow, app: &str) -> bool {
    key.role == Role::Admin || key.apps.iter().any(|a| a == app)
}

/// One line: who was refused what, and what the key may do instead.
fn refusal(key: &KeyRow, what: &str) -> String {
    let may = if key.apps.is_empty() {
        "no app yet (an admin can re-add it with --apps)".to_string()
    } else {
        format!(
            "only push to and operate {}{}",
            key.apps.join(", "),
            if key.allow_run { ", run included" } else { ", without run" }
        )
    };
    let what: String = what.chars().filter(|c| !c.is_control()).collect();
    format!("key '{}' may not {what}: it is a deploy key, which may {may}", key.name)
}

/// The app a command acts on, if it takes one (`-a APP` is already in its place).
fn app_of(command: &Command) -> Option<&str> {
    match command {
        Command::AppsCreate { app }
        | Command::AppsDestroy { app, .. }
        | Command::AppsRename { app, .. }
        | Command::Open { app }
        | Command::AppsInfo { app, .. }
        | Command::Ps { app, .. }
        | Command::PsScale { app, .. }
        | Command::PsResize { app, .. }
        | Command::PsRestart { app, .. }
        | Command::Run { app, .. }
        | Command::Logs { app, .. }
        | Command::Releases { app, .. }
        | Command::ReleasesInfo { app, .. }
        | Command::Rollback { app, .. }
        | Command::Config { app, .. }
        | Command::ConfigGet { app, .. }
        | Command::ConfigSet { app, .. }
        | Command::ConfigUnset { app, .. }
        | Command::Domains { app, .. }
        | Command::DomainsAdd { app, .. }
        | Command::DomainsRemove { app, .. }
        | Command::Certs { app, .. }
        | Command::CertsAdd { app, .. }
        | Command::CertsRemove { app, .. }
        | Command::CertsAutoEnable { app }
        | Command::CertsAutoDisable { app }
        | Command::CertsRedirectEnable { app }
        | Command::CertsRedirectDisable { app } => Some(app),
        Command::PsStop { app, .. } => app.as_deref(),
        _ => None,
    }
}

/// The command's name as typed, for refusals.
fn verb(command: &Command) -> String {
    use clap::CommandFactory;
    let name = super::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .find(|n| subcommand_matches(command, n));
    name.unwrap_or_else(|| "that command".into())
}

fn subcommand_matches(command: &Command, name: &str) -> bool {
    // The variant's clap name: Debug gives `KeysAdd { .. }`, clap's is `keys:add`.
    let variant: String = format!("{command:?}").chars().take_while(|c| c.is_alphanumeric()).collect();
    let joined: String = name.split(':').map(|w| w.replace('-', "")).collect::<Vec<_>>().concat();
    variant.eq_ignore_ascii_case(&joined)
}

/// What a key may run over SSH (commands `allowed_over_ssh` refuses never get here). Admins:
/// everything. Deploy keys: reads and deploy-time operations on their own apps, `run` only
/// with `--allow-run`, and the app-less `apps` (filtered), `settings` and `status`.
pub fn allowed(key: &KeyRow, command: &Command) -> Result<(), String> {
    if key.role == Role::Admin {
        return Ok(());
    }
    let refuse = |what: String| Err(refusal(key, &what));
    match command {
        Command::Apps { .. } | Command::Settings { .. } | Command::Status { .. } => Ok(()),
        Command::PsStop { all: true, .. } => refuse("run ps:stop --all".into()),
        Command::Run { app, .. } if reaches(key, app) && !key.allow_run => {
            refuse(format!("use run on '{app}' (it was added without --allow-run)"))
        }
        Command::Open { .. }
        | Command::AppsInfo { .. }
        | Command::Ps { .. }
        | Command::PsScale { .. }
        | Command::PsResize { .. }
        | Command::PsRestart { .. }
        | Command::PsStop { .. }
        | Command::Run { .. }
        | Command::Logs { .. }
        | Command::Releases { .. }
        | Command::ReleasesInfo { .. }
        | Command::Rollback { .. }
        | Command::Config { .. }
        | Command::ConfigGet { .. }
        | Command::ConfigSet { .. }
        | Command::ConfigUnset { .. }
        | Command::Domains { .. }
        | Command::DomainsAdd { .. }
        | Command::DomainsRemove { .. }
        | Command::Certs { .. }
        | Command::CertsAdd { .. }
        | Command::CertsRemove { .. }
        | Command::CertsAutoEnable { .. }
        | Command::CertsAutoDisable { .. }
        | Command::CertsRedirectEnable { .. }
        | Command::CertsRedirectDisable { .. } => match app_of(command) {
            Some(app) if reaches(key, app) => Ok(()),
            Some(app) => refuse(format!("run {} on '{app}'", verb(command))),
            None => refuse(format!("run {}", verb(command))),
        },
        _ => refuse(format!("run {}", verb(command))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role, apps: &[&str], allow_run: bool) -> KeyRow {
        KeyRow {
            name: "bob".into(),
            public_key: String::new(),
            fingerprint: String::new(),
            created_at: String::new(),
            role,
            apps: apps.iter().map(|a| a.to_string()).collect(),
            allow_run,
        }
    }

    fn command(line: &str) -> Command {
        let words = std::iter::once("slipway").chain(line.split(' ')).map(str::to_string).collect();
        super::super::try_parse(words).unwrap_or_else(|e| panic!("{line}: {e}")).command
    }

    const EVERYTHING: &[&str] = &[
        "apps",
        "apps:create b",
        "apps:destroy a --confirm a",
        "apps:rename a c",
        "keys",
        "keys:add x",
        "keys:remove x",
        "ps:stop --all",
        "run a -- ls",
        "run b -- ls",
        "config:set b K=V",
        "status",
    ];

    #[test]
    fn admins_run_everything() {
        let admin = key(Role::Admin, &[], false);
        for line in EVERYTHING {
            assert_eq!(allowed(&admin, &command(line)), Ok(()), "{line}");
        }
    }

    #[test]
    fn deploy_keys_reach_only_their_apps() {
        let deploy = key(Role::Deploy, &["a"], false);
        let table: &[(&str, bool)] = &[
            ("apps", true),
            ("apps --json", true),
            ("settings", true),
            ("status --json", true),
            ("ps a", true),
            ("logs a -n 5", true),
            ("releases a", true),
            ("releases:info a v1", true),
            ("config a", true),
            ("config:get a K", true),
            ("domains a", true),
            ("apps:info a", true),
            ("info a", true),
            ("open a", true),
            ("config:set a K=V", true),
            ("config:unset a K", true),
            ("ps:scale a web=2", true),
            ("ps:resize a web=1G", true),
            ("ps:resize other web=1G", false),
            ("ps:restart a", true),
            ("ps:stop a web", true),
            ("rollback a", true),
            ("domains:add a x.example.com", true),
            ("domains:remove a x.example.com", true),
            ("certs a", true),
            ("certs a --json", true),
            ("certs:add a - -", true),
            ("certs:remove a x.example.com", true),
            ("certs:auto:enable a", true),
            ("certs:auto:disable a", true),
            ("certs:redirect:enable a", true),
            ("certs:redirect:disable a", true),
            ("certs b", false),
            ("certs:add b - -", false),
            ("certs:auto:enable b", false),
            ("certs:redirect:disable b", false),
            ("ps b", false),
            ("logs b", false),
            ("config:set b K=V", false),
            ("ps:stop b", false),
            ("ps:stop --all", false),
            ("run a -- ls", false),
            ("run b -- ls", false),
            ("keys", false),
            ("keys:add x", false),
            ("keys:remove bob", false),
            ("apps:create a", false),
            ("apps:destroy a --confirm a", false),
            ("apps:rename a c", false),
        ];
        for (line, ok) in table {
            let got = allowed(&deploy, &command(line));
            assert_eq!(got.is_ok(), *ok, "{line}: {got:?}");
            if let Err(why) = got {
                assert!(why.starts_with("key 'bob' may not "), "{why}");
                assert!(why.contains("only push to and operate a, without run"), "{why}");
                assert!(!why.contains('\n'), "{why}");
            }
        }
    }

    #[test]
    fn run_needs_allow_run_and_its_app() {
        let runner = key(Role::Deploy, &["a", "c"], true);
        assert_eq!(allowed(&runner, &command("run a -- ls")), Ok(()));
        assert_eq!(allowed(&runner, &command("run c -- ls")), Ok(()));
        assert!(allowed(&runner, &command("run b -- ls")).is_err());
        let why = allowed(&key(Role::Deploy, &["a"], false), &command("run a -- ls")).unwrap_err();
        assert!(why.contains("--allow-run"), "{why}");
    }

    #[test]
    fn refusals_name_the_command() {
        let deploy = key(Role::Deploy, &[], false);
        let why = allowed(&deploy, &command("keys:add x")).unwrap_err();
        assert!(why.contains("may not run keys:add"), "{why}");
        assert!(why.contains("no app yet"), "{why}");
        let why = allowed(&deploy, &command("apps:info z")).unwrap_err();
        assert!(why.contains("may not run apps:info on 'z'"), "{why}");
        let why = allowed(&deploy, &command("ps:stop --all")).unwrap_err();
        assert!(why.contains("ps:stop --all"), "{why}");
    }
}
