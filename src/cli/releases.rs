//! `releases APP`: newest first, with the current one marked.

use super::{app_name, open_store, out, print_json, print_table};
use crate::home::Home;
use crate::store;

pub fn list(home: &Home, app: &str, json: bool) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let releases = store::releases::list(store.conn(), &name)?;
    if json {
        #[derive(serde::Serialize)]
        struct View<'a> {
            version: String,
            description: &'a str,
            created_by: &'a str,
            created_at: &'a str,
            status: &'a str,
            current: bool,
        }
        let views: Vec<View<'_>> = releases
            .iter()
            .map(|r| View {
                version: r.name(),
                description: &r.description,
                created_by: &r.created_by,
                created_at: &r.created_at,
                status: &r.status,
                current: row.current_release == Some(r.version),
            })
            .collect();
        return print_json(&views);
    }
    if releases.is_empty() {
        out(&format!("{name} has no releases yet."));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            let marker = if row.current_release == Some(r.version) { "*" } else { "" };
            vec![
                format!("{}{marker}", r.name()),
                r.description.clone(),
                r.status.clone(),
                r.created_by.clone(),
                r.created_at.clone(),
            ]
        })
        .collect();
    print_table(&["VERSION", "DESCRIPTION", "STATUS", "BY", "CREATED"], &rows);
    Ok(0)
}
