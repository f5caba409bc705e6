//! `run APP -- CMD ARGS...`: a one-off dyno (`run.N`) in the current release's directory and
//! environment, attached to the caller's stdin, stdout and stderr (over SSH too: `ssh -t`).
//! The command is executed directly, never through a shell; its exit status becomes ours.
//! Its output stays on the caller's terminal: only its start and exit are logged.

use std::process::Command;

use anyhow::{bail, Context};
use nix::sys::signal::{signal, SigHandler, Signal};

use super::{app_name, open_store};
use crate::dyno::DynoEnv;
use crate::home::Home;
use crate::logs::{self, Source};
use crate::store;

pub fn run(home: &Home, app: &str, command: &[String], who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let Some(release) = row.current_release else {
        bail!("{name} has no release yet; push it before running commands");
    };
    let env = DynoEnv::for_release(home, store.conn(), &name, release)?;
    drop(store);
    let (program, args) = command.split_first().context("no command given")?;
    let dyno = format!("run.{}", 1000 + std::process::id() % 9000);
    let log = home.app_log(&name);
    let by = format!(" by {}", super::actor(who));
    logs::append_event(
        &log,
        Source::Slipway,
        &dyno,
        &format!("Starting process with command `{}`{by}", command.join(" ")),
    );

    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.vars(&dyno, None))
        .current_dir(&env.dir)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    // Ctrl-C at the terminal reaches the command (same process group); this process waits for
    // it to finish and reports its status instead of dying first.
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            let _ = signal(sig, SigHandler::SigIgn);
        }
    }
    let status = child.wait().context("waiting for the command")?;
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    logs::append_event(&log, Source::Slipway, &dyno, &format!("Process exited with status {code}"));
    Ok(code)
}
