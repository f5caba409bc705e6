//! `ssh-serve --key NAME`: the forced command of every authorized key. It reads
//! `SSH_ORIGINAL_COMMAND`, which is never given to a shell: git transports go to
//! `git receive-pack`/`upload-pack` on a validated app's repo, everything else is parsed as
//! slipway CLI words and dispatched to the same handlers as the local CLI.

use std::os::unix::process::CommandExt;
use std::process::Command as Process;

use anyhow::bail;

use super::{apps::ensure_app, open_store};
use crate::git::ssh_command::{self, SshCommand};
use crate::home::Home;
use crate::store;

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
        SshCommand::Admin(words) => admin(home, key, words),
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

fn admin(home: &Home, key: &str, words: Vec<String>) -> anyhow::Result<i32> {
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
    super::dispatch(home, cli.command, Some(key))
}
