//! `releases APP`: newest first, with the current one marked.

use super::{app_name, open_store, out, print_json, print_table};
use crate::home::Home;
use crate::store;

pub fn list(home: &Home, app: &str, json: bool) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let releases = store::releases::list(store.conn(), &name)?;
    let failures = store::releases::failures(store.conn(), &name)?;
    if json {
        #[derive(serde::Serialize)]
        struct View<'a> {
            version: String,
            description: &'a str,
            created_by: &'a str,
            created_at: &'a str,
            status: &'a str,
            /// Why it failed, when it did.
            failure: Option<&'a str>,
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
                failure: failures.get(&r.version).map(String::as_str),
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
                match failures.get(&r.version) {
                    Some(why) => format!("{}: {}", r.status, short(why, 40)),
                    None => r.status.clone(),
                },
                r.created_by.clone(),
                r.created_at.clone(),
            ]
        })
        .collect();
    print_table(&["VERSION", "DESCRIPTION", "STATUS", "BY", "CREATED"], &rows);
    Ok(0)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn parse_version(v: &str) -> anyhow::Result<i64> {
    v.strip_prefix('v')
        .unwrap_or(v)
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow::anyhow!("'{v}' is not a release version like v3"))
}

pub fn info(home: &Home, app: &str, version: &str, json: bool) -> anyhow::Result<i32> {
    let name = app_name(app)?;
    let version = parse_version(version)?;
    let store = open_store(home)?;
    let row = store::apps::require(store.conn(), &name)?;
    let release = store::releases::require_release(store.conn(), &name, version)?;
    let build = match &release.build_id {
        Some(id) => store::releases::build(store.conn(), id)?,
        None => None,
    };
    let (kind, phase): (String, Option<String>) = store.conn().query_row(
        "SELECT kind, release_phase FROM releases WHERE app = ?1 AND version = ?2",
        rusqlite::params![name.as_str(), version],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let slug_kept = release.build_id.as_deref().is_some_and(|id| home.slug(&name, id).is_file());
    #[derive(serde::Serialize)]
    struct Info {
        version: String,
        current: bool,
        status: String,
        kind: String,
        description: String,
        created_by: String,
        created_at: String,
        commit: Option<String>,
        build_id: Option<String>,
        slug_bytes: Option<i64>,
        slug_kept: bool,
        process_types: Vec<String>,
        /// `Procfile`, or `detected Django` (…) for an app without one; null for builds made
        /// before slipway recorded it.
        process_types_source: Option<String>,
        config_keys: Vec<String>,
        release_phase: Option<String>,
        failure: Option<String>,
    }
    let info = Info {
        version: release.name(),
        current: row.current_release == Some(version),
        status: release.status.clone(),
        kind,
        description: release.description.clone(),
        created_by: release.created_by.clone(),
        created_at: release.created_at.clone(),
        commit: build.as_ref().map(|b| b.commit_sha.clone()),
        build_id: release.build_id.clone(),
        slug_bytes: build.as_ref().map(|b| b.slug_bytes),
        slug_kept,
        process_types: build
            .as_ref()
            .map(|b| b.process_types.processes.keys().cloned().collect())
            .unwrap_or_default(),
        process_types_source: build.as_ref().and_then(|b| b.process_types.source.clone()),
        config_keys: release.config.keys().cloned().collect(),
        release_phase: phase,
        failure: store::releases::failure(store.conn(), &name, version)?,
    };
    if json {
        return print_json(&info);
    }
    let none = || "-".to_string();
    out(&format!("=== {name} {}{}", info.version, if info.current { " (current)" } else { "" }));
    out(&format!("Description:   {}", info.description));
    out(&format!("Status:        {} ({})", info.status, info.kind));
    out(&format!("By:            {}", info.created_by));
    out(&format!("When:          {}", info.created_at));
    out(&format!("Commit:        {}", info.commit.clone().unwrap_or_else(none)));
    out(&format!("Build:         {}", info.build_id.clone().unwrap_or_else(none)));
    let slug = match info.slug_bytes {
        Some(b) if info.slug_kept => crate::build::slug::human_size(b as u64),
        Some(b) => format!("{} (removed by retention)", crate::build::slug::human_size(b as u64)),
        None => none(),
    };
    out(&format!("Slug:          {slug}"));
    let source = info.process_types_source.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
    out(&format!(
        "Process types: {}{source}",
        if info.process_types.is_empty() { none() } else { info.process_types.join(", ") }
    ));
    out(&format!(
        "Config keys:   {}",
        if info.config_keys.is_empty() { none() } else { info.config_keys.join(", ") }
    ));
    out(&format!("Release phase: {}", info.release_phase.clone().unwrap_or_else(|| "none".into())));
    if let Some(why) = &info.failure {
        out(&format!("Failure:       {why}"));
    }
    Ok(0)
}

/// A new release with an earlier release's slug and config vars (Heroku's rollback: it does not
/// touch databases or anything outside the app's code and config).
pub fn rollback(home: &Home, app: &str, version: Option<&str>, who: Option<&str>) -> anyhow::Result<i32> {
    use crate::release::{self, Kind, NewRelease};
    let name = app_name(app)?;
    let settings = crate::settings::Settings::load(home)?;
    let mut store = open_store(home)?;
    store::apps::require(store.conn(), &name)?;
    crate::job::cancel_on_signals();
    let _lock = release::lock(home, &name, || eprintln!("Waiting for another deploy of {name} to finish..."))
        .map_err(anyhow::Error::msg)?;
    let current = store::apps::require(store.conn(), &name)?
        .current_release
        .ok_or_else(|| anyhow::anyhow!("{name} has no release to roll back from"))?;
    let target = match version {
        Some(v) => parse_version(v)?,
        None => current - 1,
    };
    if target == current {
        anyhow::bail!("v{target} is already the current release of {name}");
    }
    let release_row = store::releases::release(store.conn(), &name, target)?
        .ok_or_else(|| anyhow::anyhow!("{name} has no release v{target} to roll back to"))?;
    let Some(build_id) = release_row.build_id.clone() else {
        anyhow::bail!("v{target} has no code (it only set config vars before the first deploy); pick a release with a build");
    };
    release::ensure_release_dir(home, &name, &build_id, target).map_err(anyhow::Error::msg)?;
    // The daemon's automatic rollback says why, as the release's author.
    let by = match std::env::var("SLIPWAY_ROLLBACK_REASON") {
        Ok(why) if who.is_none() && !why.is_empty() => format!("slipway (automatic: {why})"),
        _ => super::actor(who),
    };
    let description = format!("Rollback to v{target}");
    let new = NewRelease {
        kind: Kind::Rollback,
        build_id: Some(&build_id),
        description: &description,
        created_by: &by,
        config: &release_row.config,
    };
    eprintln!("Rolling back {name} to v{target}...");
    let published =
        release::publish(home, &settings, &mut store, &name, &new, true, |line| eprintln!("       {line}"))
            .map_err(|why| {
            anyhow::anyhow!("rolling back {name} to v{target} failed: {why}; v{current} keeps running")
        })?;
    out(&format!("done, v{} (the code and config of v{target})", published.version));
    if !published.daemon_running {
        eprintln!(
            "warning: the slipway daemon is not running; dynos move onto v{} when it starts",
            published.version
        );
    }
    Ok(0)
}
