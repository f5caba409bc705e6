//! `keys`, `keys:add NAME` (public key on stdin), `keys:remove NAME`.

use std::io::Read;

use super::{open_store, out, print_json, print_table};
use crate::home::Home;
use crate::store;
use crate::store::keys::{KeyRow, Role};

pub fn list(home: &Home, json: bool) -> anyhow::Result<i32> {
    let store = open_store(home)?;
    let keys = store::keys::list(store.conn())?;
    // Warnings go to stderr in both modes (stdout stays the table or the JSON array).
    for foreign in crate::keys::foreign(home, &keys)? {
        eprintln!("{}", foreign.warning());
    }
    if json {
        return print_json(&keys);
    }
    if keys.is_empty() {
        out("No keys yet. Add one: cat ~/.ssh/id_ed25519.pub | slipway keys:add NAME");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                k.role.as_str().to_string(),
                reach(k),
                k.fingerprint.clone(),
                k.created_at.clone(),
            ]
        })
        .collect();
    print_table(&["NAME", "ROLE", "APPS", "FINGERPRINT", "ADDED"], &rows);
    Ok(0)
}

/// The APPS column: what the key reaches.
fn reach(key: &KeyRow) -> String {
    match key.role {
        Role::Admin => "(all)".into(),
        Role::Deploy if key.apps.is_empty() => "(none)".into(),
        Role::Deploy => {
            let apps = key.apps.join(",");
            if key.allow_run {
                format!("{apps} +run")
            } else {
                apps
            }
        }
    }
}

pub fn add(
    home: &Home,
    name: &str,
    role: Option<&str>,
    apps: Vec<String>,
    allow_run: bool,
) -> anyhow::Result<i32> {
    crate::keys::validate_name(name)?;
    let role = role.map(|r| if r == "admin" { Role::Admin } else { Role::Deploy });
    let apps: Vec<String> =
        apps.into_iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
    if role == Some(Role::Admin) && (!apps.is_empty() || allow_run) {
        anyhow::bail!(
            "an admin key reaches every app and may run anything; --apps and --allow-run are for deploy keys"
        );
    }
    let mut text = String::new();
    // A public key is a few hundred bytes; the cap keeps a wrong pipe from filling memory.
    std::io::stdin().take(64 * 1024).read_to_string(&mut text)?;
    let mut store = open_store(home)?;
    let grant = crate::keys::Grant { role, apps: apps.clone(), allow_run };
    let got = crate::keys::add(home, &mut store, name, &text, &grant)?;
    match got {
        Role::Admin if role != Some(Role::Admin) => out(&format!(
            "Added key {name} as admin: the first key is always an admin, whatever --role, --apps or --allow-run say"
        )),
        Role::Admin => out(&format!("Added key {name} (admin); it may now push and run every command: git push slipway main")),
        Role::Deploy if apps.is_empty() => out(&format!(
            "Added key {name} (deploy) with no apps: it can reach none until re-added with --apps APP,APP"
        )),
        Role::Deploy => out(&format!(
            "Added key {name} (deploy): it may push to and operate {}{}",
            apps.join(", "),
            if allow_run { ", and use run on them" } else { " (not run; --allow-run grants it)" }
        )),
    }
    warn_foreign(home, &store)?;
    Ok(0)
}

/// keys:add and keys:remove keep lines slipway did not write, and say so.
fn warn_foreign(home: &Home, store: &crate::store::Store) -> anyhow::Result<()> {
    let keys = store::keys::list(store.conn())?;
    for foreign in crate::keys::foreign(home, &keys)? {
        eprintln!("{} (kept; remove the line if it is not yours)", foreign.warning());
    }
    Ok(())
}

pub fn remove(home: &Home, name: &str) -> anyhow::Result<i32> {
    let mut store = open_store(home)?;
    crate::keys::remove(home, &mut store, name)?;
    out(&format!("Removed key {name}"));
    warn_foreign(home, &store)?;
    Ok(0)
}
