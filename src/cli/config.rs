//! `config`, `config:get`, `config:set`, `config:unset`. Each change is a new release
//! (`Set FOO, BAR config vars`) with the full config snapshot; dynos restart onto it (web ones
//! without downtime) unless `--no-restart`. Log lines name the keys, never the values.

use std::collections::BTreeMap;

use anyhow::bail;

use super::{actor, app_name, open_store, out, print_json};
use crate::home::Home;
use crate::release::{self, Kind, NewRelease};
use crate::settings::Settings;
use crate::store;

pub fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn current_config(home: &Home, app: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    Ok(store::releases::config_vars(store.conn(), &name)?)
}

pub fn show(home: &Home, app: &str, json: bool, shell: bool) -> anyhow::Result<i32> {
    let config = current_config(home, app)?;
    if json {
        return print_json(&config);
    }
    if shell {
        for (k, v) in &config {
            out(&format!("{k}='{}'", v.replace('\'', r"'\''")));
        }
        return Ok(0);
    }
    out(&format!("=== {app} Config Vars"));
    let width = config.keys().map(|k| k.len() + 1).max().unwrap_or(0);
    for (k, v) in &config {
        out(&format!("{:<width$} {v}", format!("{k}:")));
    }
    Ok(0)
}

pub fn get(home: &Home, app: &str, key: &str) -> anyhow::Result<i32> {
    if !valid_key(key) {
        bail!("'{key}' is not a valid config key: use letters, digits and '_', not starting with a digit");
    }
    let config = current_config(home, app)?;
    // Exactly the stored value, newlines and all (plus one newline, as a shell expects).
    out(config.get(key).map(String::as_str).unwrap_or(""));
    Ok(0)
}

/// Parses `KEY=VALUE` pairs; the value is everything after the first `=`, kept exactly.
pub fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("'{}' is not KEY=VALUE", pair.chars().take(60).collect::<String>());
        };
        if !valid_key(key) {
            bail!(
                "'{key}' is not a valid config key: use letters, digits and '_', not starting with a digit"
            );
        }
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

pub fn set(
    home: &Home,
    app: &str,
    pairs: &[String],
    restart: bool,
    who: Option<&str>,
) -> anyhow::Result<i32> {
    let changes = parse_pairs(pairs)?;
    let keys: Vec<&str> = changes.keys().map(String::as_str).collect();
    let description = format!("Set {} config vars", keys.join(", "));
    change(home, app, &description, restart, who, |config| config.extend(changes.clone()))
}

pub fn unset(
    home: &Home,
    app: &str,
    keys: &[String],
    restart: bool,
    who: Option<&str>,
) -> anyhow::Result<i32> {
    if let Some(bad) = keys.iter().find(|k| !valid_key(k)) {
        bail!("'{bad}' is not a valid config key");
    }
    let description = format!("Remove {} config vars", keys.join(", "));
    change(home, app, &description, restart, who, |config| {
        for k in keys {
            config.remove(k);
        }
    })
}

/// Applies `edit` to the current config and publishes it as a new release of the current build.
fn change(
    home: &Home,
    app: &str,
    description: &str,
    restart: bool,
    who: Option<&str>,
    edit: impl FnOnce(&mut BTreeMap<String, String>),
) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let settings = Settings::load(home)?;
    let mut store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    crate::job::cancel_on_signals();
    let _lock = release::lock(home, &name, || eprintln!("Waiting for another deploy of {name} to finish..."))
        .map_err(anyhow::Error::msg)?;
    // Everything the new release is made of is read under the lock: a push that held it may
    // have just made a new build current.
    let row = store::apps::require(store.conn(), &name)?;
    let mut config = store::releases::config_vars(store.conn(), &name)?;
    edit(&mut config);
    let build_id = match row.current_release {
        Some(v) => store::releases::require_release(store.conn(), &name, v)?.build_id,
        None => None,
    };
    let by = actor(who);
    let new = NewRelease {
        kind: Kind::Config,
        build_id: build_id.as_deref(),
        description,
        created_by: &by,
        config: &config,
    };
    let verb = if restart && build_id.is_some() { " and restarting" } else { "" };
    eprintln!("{description}{verb} {name}...");
    let published = release::publish(home, &settings, &mut store, &name, &new, restart, |line| {
        eprintln!("       {line}")
    })
    .map_err(|why| anyhow::anyhow!("{description} for {name} failed: {why}; the config is unchanged"))?;
    out(&format!("done, v{}", published.version));
    if !published.daemon_running {
        eprintln!(
            "warning: the slipway daemon is not running; dynos move onto v{} when it starts",
            published.version
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_pairs() {
        assert!(valid_key("DATABASE_URL") && valid_key("_x1") && valid_key("a"));
        assert!(!valid_key("1X") && !valid_key("A-B") && !valid_key("") && !valid_key("A B"));
        let m = parse_pairs(&["A=b=c".into(), "B=".into(), "C=line1\nline2 'q' \"d\"".into()]).unwrap();
        assert_eq!(m["A"], "b=c");
        assert_eq!(m["B"], "");
        assert_eq!(m["C"], "line1\nline2 'q' \"d\"");
        assert!(parse_pairs(&["NOEQUALS".into()]).is_err());
        assert!(parse_pairs(&["9X=1".into()]).is_err());
    }
}
