//! `backup FILE.tar.gz [--force]` and `restore FILE.tar.gz [--force]` (local only: they read
//! and write files on the server by path).

use std::path::Path;

use super::out;
use crate::backup;
use crate::home::Home;

pub fn backup(home: &Home, file: &Path, force: bool) -> anyhow::Result<i32> {
    let summary = backup::backup(home, file, force)?;
    for warning in &summary.warnings {
        eprintln!("warning: {warning}");
    }
    out(&format!(
        "Backed up {} app(s), {} repo(s), {} slug(s) of {} to {} ({})",
        summary.apps,
        summary.repos,
        summary.slugs,
        home.root().display(),
        file.display(),
        crate::build::slug::human_size(summary.bytes)
    ));
    Ok(0)
}

pub fn restore(home: &Home, file: &Path, force: bool) -> anyhow::Result<i32> {
    let summary = backup::restore(home, file, force)?;
    out(&format!("Restored {} into {}", file.display(), home.root().display()));
    let apps = if summary.apps.is_empty() { "none".to_string() } else { summary.apps.join(", ") };
    out(&format!("  apps:     {} ({apps})", summary.apps.len()));
    out(&format!("  releases: {}", summary.releases));
    out(&format!("  slugs:    {}", summary.slugs));
    out(&format!("  repos:    {} (pre-receive hooks point at this binary)", summary.repos));
    out(&format!("  keys:     {} (authorized_keys regenerated)", summary.keys));
    for problem in &summary.problems {
        eprintln!(" !     {problem}");
    }
    out("Start the daemon (slipway daemon, or systemctl start slipway): it brings every app's formation up.");
    Ok(if summary.problems.is_empty() { 0 } else { 1 })
}
