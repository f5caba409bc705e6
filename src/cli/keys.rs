//! `keys`, `keys:add NAME` (public key on stdin), `keys:remove NAME`.

use std::io::Read;

use super::{open_store, out, print_json, print_table};
use crate::home::Home;
use crate::store;

pub fn list(home: &Home, json: bool) -> anyhow::Result<i32> {
    let store = open_store(home)?;
    let keys = store::keys::list(store.conn())?;
    if json {
        return print_json(&keys);
    }
    if keys.is_empty() {
        out("No keys yet. Add one: cat ~/.ssh/id_ed25519.pub | slipway keys:add NAME");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> =
        keys.iter().map(|k| vec![k.name.clone(), k.fingerprint.clone(), k.created_at.clone()]).collect();
    print_table(&["NAME", "FINGERPRINT", "ADDED"], &rows);
    Ok(0)
}

pub fn add(home: &Home, name: &str) -> anyhow::Result<i32> {
    crate::keys::validate_name(name)?;
    let mut text = String::new();
    // A public key is a few hundred bytes; the cap keeps a wrong pipe from filling memory.
    std::io::stdin().take(64 * 1024).read_to_string(&mut text)?;
    let mut store = open_store(home)?;
    crate::keys::add(home, &mut store, name, &text)?;
    out(&format!("Added key {name}; it may now push: git push slipway main"));
    Ok(0)
}

pub fn remove(home: &Home, name: &str) -> anyhow::Result<i32> {
    let mut store = open_store(home)?;
    crate::keys::remove(home, &mut store, name)?;
    out(&format!("Removed key {name}"));
    Ok(0)
}
