//! `logs APP -n N`: the tail of the app's merged log.

use super::{app_name, open_store, out};
use crate::home::Home;
use crate::store;

pub fn show(home: &Home, app: &str, lines: usize) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    for line in crate::logs::last_lines(&home.app_log(&name), lines)? {
        out(&line);
    }
    Ok(0)
}
