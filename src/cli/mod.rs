//! The command line: a thin shell over the domain modules. `Cli` is parsed by clap both from
//! the process arguments and, for `ssh-serve`, from the words of `SSH_ORIGINAL_COMMAND`; the
//! same handlers run either way, so a command behaves identically locally and over SSH.

mod apps;
mod args;
mod backup;
mod certs;
mod config;
mod daemon;
mod domains;
mod firewall;
mod hook;
mod keys;
mod logs;
mod ps;
mod releases;
mod run;
mod settings;
mod ssh;
mod tools;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use args::{parse_env, parse_or_exit, try_parse};
pub use domains::default_host;

use crate::home::Home;

#[derive(Debug, Parser)]
#[command(name = "slipway", version, about = "A single-node, self-hosted mini-PaaS: git push to deploy.")]
pub struct Cli {
    /// The slipway home (state, repos, releases, logs). Default: $SLIPWAY_HOME, else
    /// /var/lib/slipway as root, else ~/.slipway.
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The app, for commands that take one: `ps -a hello` is `ps hello`.
    #[arg(short = 'a', long = "app", global = true, value_name = "APP")]
    pub app_flag: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List apps.
    #[command(name = "apps")]
    Apps {
        #[arg(long)]
        json: bool,
    },
    /// Create an app (a push creates it too).
    #[command(name = "apps:create", visible_alias = "create")]
    AppsCreate { app: String },
    /// Destroy an app: stop its dynos, delete its repo, releases, slugs, logs and rows.
    #[command(name = "apps:destroy", visible_alias = "destroy")]
    AppsDestroy {
        app: String,
        /// The app's name again, to confirm.
        #[arg(long, value_name = "APP")]
        confirm: Option<String>,
    },
    /// Rename an app: its repo, releases, logs, config and domains move; its host becomes
    /// `<NEW>.<domain>`. Its dynos restart under the new name.
    #[command(name = "apps:rename")]
    AppsRename {
        app: String,
        /// The new name.
        #[arg(value_name = "NEW")]
        new_name: String,
    },
    /// Print the app's URL.
    #[command(name = "open")]
    Open { app: String },
    /// Show an app's release, formation and dynos.
    #[command(name = "apps:info", visible_alias = "info")]
    AppsInfo {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// List an app's dynos.
    #[command(name = "ps")]
    Ps {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Set how many dynos of each process type run: `ps:scale APP web=2 worker=1`.
    #[command(name = "ps:scale", visible_alias = "scale")]
    PsScale {
        app: String,
        /// TYPE=N pairs, N from 0 to 100.
        #[arg(required = true, value_name = "TYPE=N")]
        changes: Vec<String>,
    },
    /// Show or set the memory quota per process type: `ps:resize APP web=512M worker=1G`.
    #[command(name = "ps:resize", visible_alias = "resize")]
    PsResize {
        app: String,
        /// TYPE=SIZE pairs (512M, 1G; 16M to 1024G); none: show the quotas.
        #[arg(value_name = "TYPE=SIZE")]
        changes: Vec<String>,
    },
    /// Restart an app's dynos (all, one type, or one dyno); web dynos without downtime.
    #[command(name = "ps:restart", visible_alias = "restart")]
    PsRestart {
        app: String,
        /// A process type (`web`) or a dyno (`web.2`); default: every dyno.
        target: Option<String>,
    },
    /// Stop dynos (all, one type, or one dyno); they stay down until ps:restart or ps:scale.
    #[command(name = "ps:stop")]
    PsStop {
        /// The app; omit with --all.
        #[arg(required_unless_present = "all")]
        app: Option<String>,
        /// A process type (`worker`) or a dyno (`worker.1`); default: every dyno.
        target: Option<String>,
        /// Stop every dyno of every app.
        #[arg(long, conflicts_with_all = ["app", "target"])]
        all: bool,
    },
    /// Run a one-off command in the current release's environment, attached to this terminal.
    #[command(name = "run")]
    Run {
        app: String,
        /// The command and its arguments, run directly (not through a shell). It starts at the
        /// first word after APP that is not an option of `run`; `--` before it works too.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show an app's log.
    #[command(name = "logs")]
    Logs {
        app: String,
        /// Number of lines to show.
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines as they arrive, until interrupted.
        #[arg(short = 't', long = "tail")]
        tail: bool,
        /// Only lines of this process type (`web`) or dyno (`web.1`).
        #[arg(long = "ps", visible_alias = "dyno", value_name = "TYPE|DYNO")]
        ps: Option<String>,
        /// Only lines from this source.
        #[arg(long, value_parser = ["app", "slipway", "router"])]
        source: Option<String>,
    },
    /// List an app's releases, newest first.
    #[command(name = "releases")]
    Releases {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one release: commit, build, slug size, config keys, release-phase result.
    #[command(name = "releases:info")]
    ReleasesInfo {
        app: String,
        /// The release, e.g. v3.
        version: String,
        #[arg(long)]
        json: bool,
    },
    /// Roll back to an earlier release's code and config (default: the one before the current).
    #[command(name = "rollback")]
    Rollback {
        app: String,
        /// The release to go back to, e.g. v3.
        version: Option<String>,
    },
    /// Show an app's config vars.
    #[command(name = "config")]
    Config {
        app: String,
        #[arg(long, conflicts_with = "shell")]
        json: bool,
        /// KEY='value' lines, ready for a shell.
        #[arg(long)]
        shell: bool,
    },
    /// Print one config var's value.
    #[command(name = "config:get")]
    ConfigGet { app: String, key: String },
    /// Set config vars (a new release; dynos restart onto it unless --no-restart).
    #[command(name = "config:set")]
    ConfigSet {
        app: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Store the change without restarting dynos; they pick it up at their next restart.
        #[arg(long)]
        no_restart: bool,
    },
    /// Remove config vars (a new release; dynos restart onto it unless --no-restart).
    #[command(name = "config:unset")]
    ConfigUnset {
        app: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[arg(long)]
        no_restart: bool,
    },
    /// List the hosts an app answers at: `<app>.<SLIPWAY_DOMAIN>` and its custom domains.
    #[command(name = "domains")]
    Domains {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Route a custom hostname to an app (a host belongs to at most one app).
    #[command(name = "domains:add")]
    DomainsAdd { app: String, host: String },
    /// Stop routing a custom hostname to an app.
    #[command(name = "domains:remove")]
    DomainsRemove { app: String, host: String },
    /// Show an app's TLS certificates (hosts, issuer, expiry, auto or manual), whether
    /// automatic certificates and the HTTPS redirect are on, and hosts still without one.
    #[command(name = "certs")]
    Certs {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Add a certificate: CERT holds the chain (leaf first), KEY its private key (PEM files;
    /// `-` reads stdin, so `- -` takes both in one stream).
    #[command(name = "certs:add")]
    CertsAdd { app: String, cert: String, key: String },
    /// Remove the manual certificate(s) covering HOST.
    #[command(name = "certs:remove")]
    CertsRemove { app: String, host: String },
    /// Get and renew certificates for the app's hosts automatically (ACME, e.g. Let's Encrypt).
    #[command(name = "certs:auto:enable")]
    CertsAutoEnable { app: String },
    /// Stop getting and renewing certificates automatically (issued ones stay until they expire).
    #[command(name = "certs:auto:disable")]
    CertsAutoDisable { app: String },
    /// Redirect the app's plain-HTTP requests to HTTPS once it has a certificate.
    #[command(name = "certs:redirect:enable")]
    CertsRedirectEnable { app: String },
    /// Serve the app over plain HTTP too.
    #[command(name = "certs:redirect:disable")]
    CertsRedirectDisable { app: String },
    /// List the SSH keys that may push.
    #[command(name = "keys")]
    Keys {
        #[arg(long)]
        json: bool,
    },
    /// Authorise an SSH public key (read from stdin) under NAME. The first key is an admin;
    /// later keys are deploy keys unless `--role admin`.
    #[command(name = "keys:add")]
    KeysAdd {
        name: String,
        /// admin: every command on every app; deploy: push to and operate only --apps.
        #[arg(long, value_parser = ["admin", "deploy"])]
        role: Option<String>,
        /// The apps a deploy key may reach, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "APP,APP")]
        apps: Vec<String>,
        /// Let a deploy key use `run` on its apps.
        #[arg(long)]
        allow_run: bool,
    },
    /// Remove an SSH key.
    #[command(name = "keys:remove")]
    KeysRemove { name: String },
    /// Show every setting's effective value and where it comes from (default, slipway.toml,
    /// or an environment variable).
    #[command(name = "settings")]
    Settings {
        #[arg(long)]
        json: bool,
    },
    /// Set keys in $SLIPWAY_HOME/slipway.toml (validated; comments and other keys kept).
    #[command(name = "settings:set")]
    SettingsSet {
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove keys from $SLIPWAY_HOME/slipway.toml, so their defaults apply.
    #[command(name = "settings:unset")]
    SettingsUnset {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Run the daemon (detached unless --foreground), or stop it with --stop.
    #[command(name = "daemon")]
    Daemon {
        #[arg(long, conflicts_with = "stop")]
        foreground: bool,
        /// Stop the running daemon; dynos and the router keep running (the router stops too when no
        /// dyno runs).
        #[arg(long)]
        stop: bool,
    },
    /// The server at a glance: daemon, router, disk, apps and dynos, kernel features, problems.
    /// Exits 1 when the daemon is down.
    #[command(name = "status")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent snapshot of the home (database, repos, slugs, settings) to FILE.tar.gz,
    /// while the daemon runs.
    #[command(name = "backup")]
    Backup {
        #[arg(value_name = "FILE.tar.gz")]
        file: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Restore a backup onto this home (the daemon must not run); then start the daemon.
    #[command(name = "restore")]
    Restore {
        #[arg(value_name = "FILE.tar.gz")]
        file: PathBuf,
        /// Replace the apps this home already has.
        #[arg(long)]
        force: bool,
    },
    /// Install the platform's uv (and pip's wheel) for Python builds ahead of the first push;
    /// install.sh runs it. Needs the package index once.
    #[command(name = "tools:install")]
    ToolsInstall,
    /// Internal: git hooks.
    #[command(name = "hook", hide = true)]
    Hook {
        #[command(subcommand)]
        hook: HookKind,
    },
    /// Internal: the forced command of every authorized key.
    #[command(name = "ssh-serve", hide = true)]
    SshServe {
        #[arg(long)]
        key: String,
    },
    /// Internal (root): (re)loads the firewall rule that keeps the dyno ports for the router;
    /// install.sh and the systemd unit (before every daemon start) run it.
    #[command(name = "firewall", hide = true)]
    Firewall {
        /// Print the commands instead of running them.
        #[arg(long)]
        dry_run: bool,
        /// nft, iptables or none (default: nft when installed, else iptables).
        #[arg(long)]
        tool: Option<String>,
    },
    /// Internal: the HTTP router process, started and kept by the daemon.
    #[command(name = "router", hide = true)]
    Router,
    /// Internal: writes the app log lines of a router that dropped root (its stdin).
    #[command(name = "router-log", hide = true)]
    RouterLog,
    /// Internal: a command that runs app code, started by a root daemon for the home's owner
    /// (see `crate::worker`).
    #[command(name = "worker", hide = true)]
    Worker {
        /// The SSH key the command came with.
        #[arg(long)]
        who: Option<String>,
        #[arg(last = true, required = true)]
        words: Vec<String>,
    },
    /// Internal: the per-dyno output shim started by the daemon (when the `slipway-shim`
    /// binary is not beside this one).
    #[command(name = "dyno-shim", hide = true)]
    DynoShim(crate::daemon::shim::ShimCli),
}

#[derive(Debug, Subcommand)]
pub enum HookKind {
    #[command(name = "pre-receive")]
    PreReceive,
}

impl Command {
    /// Commands a key may run over SSH. Internal plumbing and daemon control stay local.
    pub fn allowed_over_ssh(&self) -> bool {
        !matches!(
            self,
            Command::Daemon { .. }
                | Command::Backup { .. }
                | Command::Restore { .. }
                | Command::ToolsInstall
                | Command::SettingsSet { .. }
                | Command::SettingsUnset { .. }
                | Command::Hook { .. }
                | Command::SshServe { .. }
                | Command::DynoShim(_)
                | Command::Router
                | Command::RouterLog
                | Command::Firewall { .. }
                | Command::Worker { .. }
        )
    }
}

/// Runs a parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // The hook's home is the one its repository is in (git runs it there), whatever `--home`,
    // `SLIPWAY_HOME` or the default say: the worker it may become, and the daemon it asks for
    // one, are that home's.
    let hook_home = match cli.command {
        Command::Hook { .. } => {
            crate::deploy::HookContext::from_repo(std::path::Path::new(".")).ok().map(|c| c.home)
        }
        _ => None,
    };
    let home = hook_home.unwrap_or_else(|| Home::resolve(cli.home));
    // As root on a home another user owns, act as that user (the home stays the one resolved
    // here). The hook and the shim already run as whoever git or the daemon runs as; the
    // daemon stays root (per-app users; what it creates in the home it gives to the owner) and
    // so do its root helpers and the firewall rule; a worker becomes the owner itself, keeping
    // root within reach.
    if crate::worker::words(&cli.command).is_some() && crate::daemon::home_owner(&home).is_some() {
        // Root running app code (`run`, `config:set`...) on the owner's home: the owner too,
        // but like a worker, keeping root in reserve for the app's uid (no worker needed).
        crate::worker::become_worker(&home)?;
    } else if !stays_root(&cli.command) {
        home.become_owner()?;
    }
    dispatch(&home, cli.command, None)
}

/// The commands `run` does not make the home's owner ([`Home::become_owner`]).
fn stays_root(command: &Command) -> bool {
    matches!(
        command,
        Command::Hook { .. }
            | Command::DynoShim(_)
            | Command::Daemon { .. }
            | Command::Router
            | Command::RouterLog
            | Command::Worker { .. }
            | Command::Firewall { .. }
    )
}

/// `who` is the SSH key name when the command came over SSH (used for release authorship).
pub fn dispatch(home: &Home, command: Command, who: Option<&str>) -> anyhow::Result<i32> {
    // App code runs as the app's uid: run by the platform user under a root daemon, the command
    // becomes a worker the daemon starts (crate::worker).
    if let Some(words) = crate::worker::words(&command) {
        if let Some(code) = crate::worker::delegate(home, words, who)? {
            return Ok(code);
        }
    }
    match command {
        Command::Apps { json } => apps::list(home, json),
        Command::AppsCreate { app } => apps::create(home, &app),
        Command::AppsDestroy { app, confirm } => apps::destroy(home, &app, confirm.as_deref()),
        Command::AppsInfo { app, json } => apps::info(home, &app, json),
        Command::AppsRename { app, new_name } => apps::rename(home, &app, &new_name),
        Command::Open { app } => apps::open(home, &app),
        Command::Ps { app, json } => ps::list(home, &app, json),
        Command::PsScale { app, changes } => ps::scale(home, &app, &changes, who),
        Command::PsResize { app, changes } => ps::resize(home, &app, &changes, who),
        Command::PsRestart { app, target } => ps::restart(home, &app, target),
        Command::PsStop { app, target, all: _ } => ps::stop(home, app.as_deref(), target),
        Command::Run { app, command } => run::run(home, &app, &command, who),
        Command::Logs { app, lines, tail, ps, source } => logs::show(home, &app, lines, tail, ps, source),
        Command::Releases { app, json } => releases::list(home, &app, json),
        Command::ReleasesInfo { app, version, json } => releases::info(home, &app, &version, json),
        Command::Rollback { app, version } => releases::rollback(home, &app, version.as_deref(), who),
        Command::Config { app, json, shell } => config::show(home, &app, json, shell),
        Command::ConfigGet { app, key } => config::get(home, &app, &key),
        Command::ConfigSet { app, pairs, no_restart } => config::set(home, &app, &pairs, !no_restart, who),
        Command::ConfigUnset { app, keys, no_restart } => config::unset(home, &app, &keys, !no_restart, who),
        Command::Domains { app, json } => domains::list(home, &app, json),
        Command::DomainsAdd { app, host } => domains::add(home, &app, &host, who),
        Command::DomainsRemove { app, host } => domains::remove(home, &app, &host, who),
        Command::Certs { app, json } => certs::list(home, &app, json),
        Command::CertsAdd { app, cert, key } => certs::add(home, &app, &cert, &key, who),
        Command::CertsRemove { app, host } => certs::remove(home, &app, &host, who),
        Command::CertsAutoEnable { app } => certs::set_flag(home, &app, "auto", true, who),
        Command::CertsAutoDisable { app } => certs::set_flag(home, &app, "auto", false, who),
        Command::CertsRedirectEnable { app } => certs::set_flag(home, &app, "redirect", true, who),
        Command::CertsRedirectDisable { app } => certs::set_flag(home, &app, "redirect", false, who),
        Command::Keys { json } => keys::list(home, json),
        Command::KeysAdd { name, role, apps, allow_run } => {
            keys::add(home, &name, role.as_deref(), apps, allow_run)
        }
        Command::KeysRemove { name } => keys::remove(home, &name),
        Command::Settings { json } => settings::show(home, json),
        Command::SettingsSet { pairs } => settings::set(home, &pairs),
        Command::SettingsUnset { keys } => settings::unset(home, &keys),
        Command::Daemon { foreground, stop } => daemon::daemon(home, foreground, stop),
        Command::Status { json } => daemon::status(home, json),
        Command::Backup { file, force } => backup::backup(home, &file, force),
        Command::Restore { file, force } => backup::restore(home, &file, force),
        Command::Hook { hook: HookKind::PreReceive } => hook::pre_receive(who),
        Command::SshServe { key } => ssh::serve(home, &key),
        Command::Firewall { dry_run, tool } => firewall::apply(home, dry_run, tool.as_deref()),
        Command::ToolsInstall => tools::install(home),
        Command::Router => crate::router::service::run(home).map(|()| 0),
        Command::RouterLog => crate::router::log::run_helper(home).map(|()| 0),
        Command::Worker { who, words } => crate::worker::run(home, who.as_deref(), words),
        Command::DynoShim(args) => Ok(args.run()),
    }
}

/// Prints a table with left-aligned columns.
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        crate::cli::out(padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Writes a line to stdout; a closed pipe (`slipway logs x | head`) ends the process quietly
/// with success, as a reader that has seen enough is not an error.
pub(crate) fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}").and_then(|_| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<i32> {
    out(&serde_json::to_string_pretty(value)?);
    Ok(0)
}

/// Parses an app argument into a validated name (the error is one clear sentence).
pub(crate) fn app_name(app: &str) -> anyhow::Result<crate::app::AppName> {
    Ok(app.parse()?)
}

pub(crate) fn open_store(home: &Home) -> anyhow::Result<crate::store::Store> {
    home.ensure_layout().map_err(|e| anyhow::anyhow!("creating {}: {e}", home.root().display()))?;
    Ok(crate::store::Store::open(&home.db())?)
}

/// Who a change is attributed to: the SSH key's name, else the local user running the command.
pub(crate) fn actor(who: Option<&str>) -> String {
    who.map(str::to_string).unwrap_or_else(local_user)
}

pub(crate) fn local_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "local".into())
}

#[cfg(test)]
mod tests {
    fn command(line: &str) -> super::Command {
        let words = std::iter::once("slipway").chain(line.split(' ')).map(str::to_string).collect();
        super::try_parse(words).expect("parses").command
    }

    #[test]
    fn backup_and_restore_stay_local_status_does_not() {
        assert!(!command("backup /tmp/x.tar.gz").allowed_over_ssh());
        assert!(!command("restore /tmp/x.tar.gz --force").allowed_over_ssh());
        assert!(command("status --json").allowed_over_ssh());
    }
}
