//! `domains APP [--json]`, `domains:add APP HOST`, `domains:remove APP HOST`.
//!
//! Every app answers at `<app>.<SLIPWAY_DOMAIN>`; custom domains are extra hosts routed to it.
//! A host belongs to at most one app, and hosts of the form `<name>.<SLIPWAY_DOMAIN>` are
//! reserved for the app called `<name>` (existing or not), so a custom domain can never shadow
//! an app's default host. After a change the daemon is asked to refresh its routes; when it is
//! not running the change applies when it starts.

use std::time::Duration;

use serde::Serialize;

use super::{app_name, open_store, out, print_json};
use crate::app::AppName;
use crate::daemon::client::{self, ClientError};
use crate::daemon::protocol::Request;
use crate::home::Home;
use crate::settings::Settings;
use crate::store;

#[derive(Debug, Serialize)]
struct DomainView {
    host: String,
    /// `default` (`<app>.<SLIPWAY_DOMAIN>`) or `custom`.
    kind: &'static str,
    created_at: Option<String>,
}

pub fn list(home: &Home, app: &str, json: bool) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let settings = Settings::load(home)?;
    let store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let custom = store::domains::for_app(store.conn(), &name)?;
    let default_host = default_host(&name, &settings.domain);
    if json {
        let mut views =
            vec![DomainView { host: default_host, kind: "default", created_at: Some(row.created_at) }];
        views.extend(custom.into_iter().map(|d| DomainView {
            host: d.host,
            kind: "custom",
            created_at: Some(d.created_at),
        }));
        return print_json(&views);
    }
    out(&format!("=== {name} Default Domain"));
    out(&default_host);
    out("");
    out(&format!("=== {name} Custom Domains"));
    if custom.is_empty() {
        out(&format!("None yet. Add one: slipway domains:add {name} www.example.com"));
    }
    for d in custom {
        out(&d.host);
    }
    Ok(0)
}

pub fn add(home: &Home, app: &str, host: &str, who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let host = store::domains::validate_host(host)?;
    let settings = Settings::load(home)?;
    check_not_reserved(&name, &host, &settings.domain)?;
    let mut store = open_store(home)?;
    let tx = store.transaction()?;
    store::apps::require(&tx, &name)?;
    store::domains::add(&tx, &name, &host)?;
    tx.commit()?;
    log_change(home, &name, &format!("Added domain {host} by {}", super::actor(who)));
    out(&format!("Added {host} to {name}"));
    refresh_routes(home, &name);
    Ok(0)
}

pub fn remove(home: &Home, app: &str, host: &str, who: Option<&str>) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let host = store::domains::validate_host(host)?;
    let mut store = open_store(home)?;
    let tx = store.transaction()?;
    store::apps::require(&tx, &name)?;
    store::domains::remove(&tx, &name, &host)?;
    tx.commit()?;
    log_change(home, &name, &format!("Removed domain {host} by {}", super::actor(who)));
    out(&format!("Removed {host} from {name}"));
    refresh_routes(home, &name);
    Ok(0)
}

/// `<app>.<domain>`: where every app answers without any custom domain.
pub fn default_host(app: &AppName, domain: &str) -> String {
    format!("{app}.{}", domain.trim_end_matches('.').to_ascii_lowercase())
}

/// Refuses `<name>.<domain>`: it is (or will be) the default host of the app `<name>`.
fn check_not_reserved(app: &AppName, host: &str, domain: &str) -> anyhow::Result<()> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let Some(label) = host.strip_suffix(domain.as_str()).and_then(|h| h.strip_suffix('.')) else {
        return Ok(());
    };
    match label.parse::<AppName>() {
        Ok(owner) if owner == *app => anyhow::bail!("{host} is already {app}'s default domain"),
        Ok(owner) => {
            anyhow::bail!("{host} is the default domain of app '{owner}' and cannot be added to {app}")
        }
        Err(_) => Ok(()),
    }
}

fn log_change(home: &Home, app: &AppName, message: &str) {
    crate::logs::append_event(&home.app_log(app), crate::logs::Source::Slipway, "api", message);
}

/// The change is committed either way; a daemon that cannot be told only gets a warning.
fn refresh_routes(home: &Home, app: &AppName) {
    let request = Request::Converge { app: app.to_string() };
    match client::call(home, &request, Duration::from_secs(30)) {
        Ok(_) => {}
        Err(ClientError::NotRunning(start)) => {
            eprintln!("warning: the slipway daemon is not running; the router picks this up when it starts ({start})")
        }
        Err(e) => eprintln!("warning: could not tell the daemon to refresh its routes: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hosts_of_apps_are_reserved() {
        let app: AppName = "hello".parse().unwrap();
        assert_eq!(default_host(&app, "Example.COM."), "hello.example.com");
        assert!(check_not_reserved(&app, "www.example.com", "localhost").is_ok());
        assert!(check_not_reserved(&app, "a.b.localhost", "localhost").is_ok());
        assert!(check_not_reserved(&app, "x.localhost", "localhost").is_ok(), "not an app name");
        assert!(check_not_reserved(&app, "myhello.localhost", "apps.localhost").is_ok());
        let own = check_not_reserved(&app, "hello.localhost", "localhost").unwrap_err().to_string();
        assert!(own.contains("already hello's default domain"), "{own}");
        let other = check_not_reserved(&app, "other.apps.io", "Apps.IO").unwrap_err().to_string();
        assert!(other.contains("app 'other'"), "{other}");
    }
}
