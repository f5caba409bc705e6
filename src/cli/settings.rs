//! `settings [--json]`, `settings:set KEY=VALUE...`, `settings:unset KEY...`: the home's
//! `slipway.toml` (see `crate::settings`). Reading works over SSH; editing only on the server.

use serde_json::{json, Map, Value};

use super::{out, print_json, print_table};
use crate::home::Home;
use crate::settings::{self, Edit};

pub fn show(home: &Home, json: bool) -> anyhow::Result<i32> {
    let loaded = settings::load(home)?;
    if json {
        let mut values = Map::new();
        for v in &loaded.values {
            let entry = json!({ "value": v.value, "source": v.source(), "env": settings::env_name(v.key) });
            values.insert(v.key.to_string(), entry);
        }
        return print_json(&json!({ "file": loaded.file, "settings": Value::Object(values) }));
    }
    let rows: Vec<Vec<String>> =
        loaded.values.iter().map(|v| vec![v.key.to_string(), v.value.clone(), v.source()]).collect();
    print_table(&["KEY", "VALUE", "SOURCE"], &rows);
    Ok(0)
}

pub fn set(home: &Home, pairs: &[String]) -> anyhow::Result<i32> {
    let mut parsed = Vec::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("expected KEY=VALUE, got {pair:?}");
        };
        parsed.push((key.to_string(), value.to_string()));
    }
    let edit = settings::set(home, &parsed)?;
    for change in &edit.changed {
        out(&format!("Set {change} in {}", edit.file.display()));
    }
    notes(&edit);
    Ok(0)
}

pub fn unset(home: &Home, keys: &[String]) -> anyhow::Result<i32> {
    let edit = settings::unset(home, keys)?;
    for key in &edit.changed {
        out(&format!("Removed {key} from {}", edit.file.display()));
    }
    for key in &edit.absent {
        out(&format!("{key} is not in {}; nothing to remove", edit.file.display()));
    }
    notes(&edit);
    Ok(0)
}

/// What the operator must know after an edit: variables that still win here, and keys the
/// running daemon read at its start.
fn notes(edit: &Edit) {
    for key in &edit.keys {
        let var = settings::env_name(key);
        if std::env::var(&var).is_ok_and(|v| !v.trim().is_empty()) {
            out(&format!(
                "Note: {var} is set in this environment and overrides {key} for commands run from it."
            ));
        }
    }
    let daemon: Vec<&str> = edit.keys.iter().copied().filter(|k| settings::read_by_daemon(k)).collect();
    if !edit.changed.is_empty() && !daemon.is_empty() {
        out(&format!(
            "The daemon reads {} at its start: restart it to apply (systemctl restart slipway, or slipway daemon --stop then slipway daemon); dynos keep running.",
            daemon.join(", ")
        ));
    }
}
