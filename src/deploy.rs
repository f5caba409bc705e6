//! The pre-receive hook: what happens between `git push` and the ref being accepted.
//!
//! 1. classify the pushed refs (only `main`/`master` deploy; deleting it is refused),
//! 2. make sure the daemon runs (else reject before building),
//! 3. take the app's deploy lock (a second push waits, and says so),
//! 4. build into the final release dir and pack the slug,
//! 5. record the build and release `vN` (pending) in one transaction,
//! 6. run the release phase, ask the daemon to roll the formation onto `vN` and wait for the
//!    web boot check, then prune old slugs (all in `release`).
//!
//! Any failure prints ` !     why`, and the hook exits non-zero so git rejects the push; the
//! release that was serving keeps serving.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::app::AppName;
use crate::build::{self, output};
use crate::daemon::client::Client;
use crate::home::Home;
use crate::job;
use crate::logs::{self, Source};
use crate::release;
use crate::settings::Settings;
use crate::store::{self, releases::BuildRow, Store};

const DEPLOY_BRANCHES: [&str; 2] = ["refs/heads/main", "refs/heads/master"];

#[derive(Debug, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    fn is_delete(&self) -> bool {
        self.new.chars().all(|c| c == '0')
    }
}

/// Parses pre-receive's stdin: one `OLD NEW REFNAME` per line.
pub fn parse_ref_updates(input: impl BufRead) -> Vec<RefUpdate> {
    input
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(RefUpdate {
                old: parts.next()?.to_string(),
                new: parts.next()?.to_string(),
                name: parts.next()?.to_string(),
            })
        })
        .collect()
}

/// Which of the pushed refs deploys, if any; refusals come back as the message to print.
pub fn deploy_ref(updates: &[RefUpdate]) -> Result<Option<&RefUpdate>, String> {
    let deploys: Vec<&RefUpdate> =
        updates.iter().filter(|u| DEPLOY_BRANCHES.contains(&u.name.as_str())).collect();
    if let Some(deleted) = deploys.iter().find(|u| u.is_delete()) {
        return Err(format!("deleting {} is not allowed: it is the branch slipway deploys", deleted.name));
    }
    match deploys.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err("push either main or master, not both at once".into()),
    }
}

/// The repository this hook runs in (git runs hooks inside the bare repo) and what it implies.
pub struct HookContext {
    pub home: Home,
    pub app: AppName,
    pub repo: PathBuf,
}

impl HookContext {
    /// `<home>/repos/<app>.git` → home and app. Nothing comes from the hook script's text.
    pub fn from_repo(repo: &Path) -> Result<HookContext, String> {
        let repo = std::fs::canonicalize(repo).map_err(|e| format!("locating the repository: {e}"))?;
        let name = repo.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let app = name.strip_suffix(".git").unwrap_or(name).parse::<AppName>().map_err(|e| e.to_string())?;
        let home =
            repo.parent().and_then(Path::parent).ok_or("the repository is not inside a slipway home")?;
        Ok(HookContext { home: Home::at(home), app, repo })
    }
}

/// Runs the hook; `Err` carries the message already worth printing after ` !     `.
pub fn pre_receive(ctx: &HookContext, stdin: impl BufRead, pushed_by: &str) -> Result<(), String> {
    let started = Instant::now();
    let updates = parse_ref_updates(stdin);
    for other in updates.iter().filter(|u| !DEPLOY_BRANCHES.contains(&u.name.as_str())) {
        output::step(&format!("Accepting {} without a build: only main or master deploys", other.name));
    }
    let Some(update) = deploy_ref(&updates)? else {
        return Ok(());
    };
    let settings = Settings::load(&ctx.home).map_err(|e| e.to_string())?;
    // Reject before building anything if nothing could run the result.
    Client::connect(&ctx.home, Duration::from_secs(10)).map_err(|e| e.to_string())?;

    job::cancel_on_signals();
    let _lock = release::lock(&ctx.home, &ctx.app, || {
        output::step(&format!("Waiting for another deploy of {} to finish...", ctx.app))
    })?;
    // The build's commands and the release phase run in a cgroup of their own (when possible).
    let _limits = job::contain(&ctx.home, &ctx.app, &settings, output::detail);
    let mut store = Store::open(&ctx.home.db()).map_err(|e| e.to_string())?;
    ensure_branch_unmoved(ctx, &store, update)?;
    remove_abandoned_builds(&ctx.home, &store, &ctx.app);

    let short = &update.new[..update.new.len().min(7)];
    let log_path = ctx.home.app_log(&ctx.app);
    logs::append_event(
        &log_path,
        Source::Slipway,
        "api",
        &format!("Build started by {pushed_by} for commit {short}"),
    );
    let config = store::releases::config_vars(store.conn(), &ctx.app).map_err(|e| e.to_string())?;
    let previous = current_build(&ctx.home, &store, &ctx.app);
    // Privileged mode: the build's app commands run as the app's own uid.
    let user = crate::users::for_app(store.conn(), &ctx.app, settings.app_uids).map_err(|e| e.to_string())?;
    let request = build::BuildRequest {
        home: &ctx.home,
        settings: &settings,
        app: &ctx.app,
        repo: &ctx.repo,
        commit: &update.new,
        config: &config,
        previous: previous.as_ref(),
        user: user.as_ref(),
    };
    let build_started = Instant::now();
    let (built, packing) = build::run(&request).map_err(|e| {
        logs::append_event(&log_path, Source::Slipway, "api", &format!("Build failed: {e}"));
        format!("Build failed: {e}")
    })?;
    logs::append_event(&log_path, Source::Slipway, "api", &format!("Build succeeded for commit {short}"));

    let built_at = Instant::now();
    let version = match record_release(&mut store, &ctx.app, &built, &update.new, pushed_by) {
        Ok(version) => version,
        Err(e) => {
            // The slug's thread must be done before its file can be removed.
            drop(packing);
            crate::home::remove_or_warn(&built.dir);
            crate::home::remove_or_warn(&built.slug);
            return Err(format!("recording the release: {e}"));
        }
    };
    logs::append_event(
        &log_path,
        Source::Slipway,
        "api",
        &format!("Release v{version} created by {pushed_by}: deploy {short}"),
    );

    warn_if_web_goes_away(&store, &ctx.app, &built.procfile);
    output::step(&format!("Releasing v{version}: release phase (if any), then the dynos"));
    let published =
        release::finish(&ctx.home, &settings, &mut store, &ctx.app, version, true, output::detail)
            .map_err(|why| format!("release v{version} failed: {why}; the previous release keeps running"))?;
    let finished_at = Instant::now();
    let slug_bytes = wait_for_slug(packing, &built).map_err(|e| {
        logs::append_event(&log_path, Source::Slipway, "api", &format!("Release v{version}: {e}"));
        format!("v{version} is live, but {e}")
    })?;
    output::step(&format!("Compressing... done, {}", build::slug::human_size(slug_bytes)));
    if let Err(e) = store::releases::set_slug_bytes(store.conn(), &built.id, slug_bytes as i64) {
        output::warn(&format!("recording the slug's size: {e} (releases:info shows 0 B)"));
    }
    output::step(&format!("Launching... done, v{version}"));
    let web = published.web;
    if let (false, Some(url)) = (web.is_empty(), published.url) {
        output::detail(&url);
    }
    let release = finished_at.duration_since(built_at).saturating_sub(published.boot + published.switch);
    let phases = [
        ("export", build_started.duration_since(started) + built.export),
        ("deps", built.deps),
        ("release", release),
        ("boot", published.boot),
        ("switch", published.switch),
        ("slug", finished_at.elapsed()),
    ];
    output::step(&output::done_line(started.elapsed(), &phases));
    Ok(())
}

/// Waits for the slug packed while the release went live; a failed packing is tried once more
/// (it writes a temp file and renames it, so it can start over). A release without its slug
/// could not be rolled back to once its dir is pruned, nor restored from a backup, so the push
/// fails if the slug cannot be written.
fn wait_for_slug(packing: build::slug::Packing, built: &build::Built) -> Result<u64, String> {
    match packing.wait() {
        Ok(bytes) => Ok(bytes),
        Err(first) => build::slug::pack(&built.dir, &built.slug).map_err(|e| {
            format!(
                "its slug could not be written ({first}; again: {e}): rolling back to it works only while \
                 its release dir is kept, and backups leave it out; free disk space and push again"
            )
        }),
    }
}

/// A release without a `web` process type stops the app's web dynos: say so before it happens.
fn warn_if_web_goes_away(store: &Store, app: &AppName, procfile: &crate::procfile::Procfile) {
    if procfile.processes.contains_key("web") {
        return;
    }
    let web = store::formation::get(store.conn(), app).ok().and_then(|f| f.get("web").copied()).unwrap_or(0);
    if web > 0 {
        output::warn(&format!(
            "This release has no web process type, but {app} is scaled to web={web}: its web dynos \
             will stop and the app will answer H14 until a release with a web process is deployed"
        ));
    }
}

/// A push that waited for the lock may be based on a commit another push has just replaced.
/// Building it would put code live whose ref update git then refuses, so it is rejected here.
/// The other push's hook records its release before git moves the ref, so when the database
/// is ahead of the ref we give git a moment to catch up before comparing.
fn ensure_branch_unmoved(ctx: &HookContext, store: &Store, update: &RefUpdate) -> Result<(), String> {
    let last = store::releases::last_deployed_commit(store.conn(), &ctx.app).map_err(|e| e.to_string())?;
    let mut head = ref_value(&ctx.repo, &update.name);
    if let Some(last) = &last {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while head.as_deref() != Some(last.as_str()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            head = ref_value(&ctx.repo, &update.name);
        }
    }
    let old = (!update.old.chars().all(|c| c == '0')).then_some(update.old.as_str());
    if head.as_deref() != old {
        return Err(format!(
            "{} moved while this push waited (another push deployed it); fetch, merge and push again",
            update.name
        ));
    }
    Ok(())
}

/// The commit a ref points at in the repository, None if it does not exist.
fn ref_value(repo: &Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["rev-parse", "--verify", "--quiet", name])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The build the app runs now (its dependency environment may be reused).
fn current_build(home: &Home, store: &Store, app: &AppName) -> Option<build::Previous> {
    let conn = store.conn();
    let version = store::apps::get(conn, app).ok()??.current_release?;
    let build_id = store::releases::release(conn, app, version).ok()??.build_id?;
    let build = store::releases::build(conn, &build_id).ok()??;
    Some(build::Previous { dir: home.release_dir(app, &build_id), deps_key: build.deps_key })
}

/// Release dirs and slugs that no build row names are leftovers of a build that was killed
/// mid-way (we hold the deploy lock, so none is in progress).
fn remove_abandoned_builds(home: &Home, store: &Store, app: &AppName) {
    let Ok(known) = store::releases::build_ids(store.conn(), app) else { return };
    if let Ok(entries) = std::fs::read_dir(home.releases(app)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !known.contains(&name) {
                // A build killed before it took its files back left them the app's: a worker
                // (saved uid root) removes them as root.
                if let Err(err) =
                    crate::users::root_if_privileged(|| crate::home::remove_or_warn(&entry.path()))
                {
                    crate::home::remove_or_warn(&entry.path());
                    tracing::warn!(%err, "becoming root to remove an abandoned build");
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(home.slugs(app)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let id = name.strip_suffix(".tar.gz").unwrap_or(&name);
            if !known.iter().any(|k| k == id) {
                crate::home::remove_or_warn(&entry.path());
            }
        }
    }
}

/// Build row, release row and formation defaults in one transaction.
fn record_release(
    store: &mut Store,
    app: &AppName,
    built: &build::Built,
    commit: &str,
    pushed_by: &str,
) -> store::Result<i64> {
    let tx = store.transaction()?;
    store::releases::insert_build(
        &tx,
        app,
        &BuildRow {
            id: built.id.clone(),
            commit_sha: commit.to_string(),
            stack: built.stack.as_str().to_string(),
            process_types: built.procfile.clone(),
            // Known once the slug is packed (`set_slug_bytes`), after the release went live.
            slug_bytes: 0,
            created_at: crate::timefmt::now(),
            deps_key: built.deps_key.clone(),
        },
    )?;
    let config = store::releases::config_vars(&tx, app)?;
    let description = format!("Deploy {}", &commit[..commit.len().min(7)]);
    let new = release::NewRelease {
        kind: release::Kind::Deploy,
        build_id: Some(&built.id),
        description: &description,
        created_by: pushed_by,
        config: &config,
    };
    let version = release::insert(&tx, app, &new)?;
    store::formation::add_defaults(&tx, app, &built.procfile)?;
    tx.commit()?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "0000000000000000000000000000000000000000";
    const A: &str = "1111111111111111111111111111111111111111";

    fn update(name: &str, new: &str) -> RefUpdate {
        RefUpdate { old: A.into(), new: new.into(), name: name.into() }
    }

    #[test]
    fn only_the_deploy_branch_deploys() {
        let ups =
            parse_ref_updates(format!("{A} {A} refs/heads/feature\n{Z} {A} refs/heads/main\n").as_bytes());
        assert_eq!(ups.len(), 2);
        assert_eq!(deploy_ref(&ups).unwrap().unwrap().name, "refs/heads/main");
        assert_eq!(deploy_ref(&[update("refs/tags/v1", A)]).unwrap(), None);
        assert_eq!(deploy_ref(&[update("refs/heads/master", A)]).unwrap().unwrap().name, "refs/heads/master");
    }

    #[test]
    fn deleting_the_deploy_branch_or_pushing_both_is_refused() {
        assert!(deploy_ref(&[update("refs/heads/main", Z)])
            .unwrap_err()
            .contains("deleting refs/heads/main"));
        assert!(deploy_ref(&[update("refs/heads/main", A), update("refs/heads/master", A)]).is_err());
        assert!(deploy_ref(&[update("refs/heads/other", Z)]).unwrap().is_none());
    }
}
