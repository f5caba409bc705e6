//! `slipway backup` and `slipway restore`: one `.tar.gz` holding what a home cannot rebuild by
//! itself — the database (a consistent copy through SQLite's online backup API, taken while the
//! daemon runs), the bare repos, the kept slugs, `slipway.toml` and `certs/` when present.
//! Release dirs are not archived: restore unpacks each current release's slug back to its dir.
//! Caches, logs and `run/` are left out; `.ssh/authorized_keys` is regenerated from the
//! `ssh_keys` table.
//!
//! Nothing in the home is followed through a symlink when archiving (files are opened with
//! `O_NOFOLLOW`, directories are checked with `symlink_metadata` and symlinks are skipped), and
//! restore accepts only plain files and directories under known top-level names, with no `..`
//! and no absolute path, unpacked into a staging dir before anything is moved into place.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::app::AppName;
use crate::home::Home;
use crate::store::{self, Store};

/// The archive's description of itself, first entry of every backup.
pub const MANIFEST: &str = "slipway-backup.json";
/// Top-level names a backup may hold; anything else makes restore refuse the archive.
const TOP_LEVEL: &[&str] = &[MANIFEST, "slipway.db", "slipway.toml", "repos", "slugs", "certs"];

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub slipway_version: String,
    pub created_at: String,
    /// The home the backup was taken from: a restore elsewhere rewrites this path in venvs.
    pub home: String,
    pub apps: Vec<String>,
}

/// What a backup wrote.
#[derive(Debug, Default, Serialize)]
pub struct BackupSummary {
    pub apps: usize,
    pub repos: usize,
    pub slugs: usize,
    pub bytes: u64,
    /// Things left out, one sentence each (a symlink in the home, a missing slug).
    pub warnings: Vec<String>,
}

/// Writes a backup of `home` to `dest` (temp file in the same dir + rename). Refuses an
/// existing `dest` unless `force`.
pub fn backup(home: &Home, dest: &Path, force: bool) -> anyhow::Result<BackupSummary> {
    if !home.db().is_file() {
        bail!("{} has no slipway database; nothing to back up", home.root().display());
    }
    if fs::symlink_metadata(dest).is_ok() && !force {
        bail!("{} exists; use --force to overwrite it", dest.display());
    }
    let dest = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    if dest.starts_with(home.root()) {
        bail!("write the backup outside {} (it would archive itself)", home.root().display());
    }
    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "backup".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let staged_db = dir.join(format!(".{name}.{}.db", std::process::id()));
    let result = write_archive(home, &tmp, &staged_db);
    for suffix in ["", "-journal", "-wal", "-shm"] {
        discard(Path::new(&format!("{}{suffix}", staged_db.display())));
    }
    match result {
        Ok(mut summary) => {
            if let Err(e) = fs::rename(&tmp, &dest) {
                discard(&tmp);
                return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()));
            }
            summary.bytes = fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
            Ok(summary)
        }
        Err(e) => {
            discard(&tmp);
            Err(e)
        }
    }
}

/// Copies the live database into `to` (one step of SQLite's online backup API: a single read
/// transaction, so the copy is one consistent state however busy the daemon is), then makes
/// the copy self-contained (rollback journal, no WAL) and forgets the dynos: their pids belong
/// to the server the backup was taken on.
fn snapshot_db(home: &Home, to: &Path) -> anyhow::Result<()> {
    let src = rusqlite::Connection::open_with_flags(
        home.db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", home.db().display()))?;
    src.busy_timeout(std::time::Duration::from_secs(15))?;
    let mut dst = rusqlite::Connection::open(to).with_context(|| format!("creating {}", to.display()))?;
    {
        let copy = rusqlite::backup::Backup::new(&src, &mut dst)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match copy.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                _ if std::time::Instant::now() > deadline => bail!("the database stayed busy for 30 s"),
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    dst.execute("DELETE FROM dynos", [])?;
    Ok(())
}

fn write_archive(home: &Home, tmp: &Path, staged_db: &Path) -> anyhow::Result<BackupSummary> {
    snapshot_db(home, staged_db)?;
    let mut summary = BackupSummary::default();
    // What to archive is read from the snapshot, not the live database.
    let conn = rusqlite::Connection::open(staged_db)?;
    let apps: Vec<AppName> = store::apps::list(&conn)?.iter().filter_map(|a| a.name.parse().ok()).collect();
    let mut slugs: Vec<(AppName, String, bool)> = Vec::new();
    for app in &apps {
        let current = store::apps::get(&conn, app)?.and_then(|a| a.current_release);
        let mut seen = BTreeSet::new();
        for release in store::releases::list(&conn, app)? {
            if let Some(build) = release.build_id {
                if seen.insert(build.clone()) {
                    slugs.push((app.clone(), build, Some(release.version) == current));
                }
            }
        }
    }
    drop(conn);

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let gz = flate2::write::GzEncoder::new(io::BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);

    let manifest = Manifest {
        format: 1,
        slipway_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: crate::timefmt::now(),
        home: home.root().to_string_lossy().to_string(),
        apps: apps.iter().map(|a| a.to_string()).collect(),
    };
    append_bytes(&mut tar, MANIFEST, &serde_json::to_vec_pretty(&manifest)?)?;
    append_file(&mut tar, staged_db, "slipway.db")?.context("the database snapshot vanished")?;
    summary.apps = apps.len();

    if append_file(&mut tar, &home.settings_file(), "slipway.toml")?.is_none()
        && home.settings_file().exists()
    {
        summary.warnings.push("slipway.toml is not a regular file; left out".into());
    }
    let certs = home.root().join("certs");
    if is_real_dir(&certs) {
        append_tree(&mut tar, &certs, Path::new("certs"), &mut summary.warnings)?;
    }
    for app in &apps {
        let repo = home.repo(app);
        if is_real_dir(&repo) {
            let name = Path::new("repos").join(format!("{app}.git"));
            append_tree(&mut tar, &repo, &name, &mut summary.warnings)?;
            summary.repos += 1;
        } else {
            summary.warnings.push(format!("{app} has no repository; left out"));
        }
    }
    for (app, build, current) in &slugs {
        let slug = home.slug(app, build);
        let name = Path::new("slugs").join(app.as_str()).join(format!("{build}.tar.gz"));
        match append_file(&mut tar, &slug, &name)? {
            Some(()) => summary.slugs += 1,
            // Slugs of older releases are pruned by the retention policy: expected.
            None if *current => {
                summary.warnings.push(format!("{app}: the current release's slug {build} is missing"))
            }
            None => {}
        }
    }
    let gz = tar.into_inner()?;
    let mut buffered = gz.finish()?;
    buffered.flush()?;
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(summary)
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

/// Appends the regular file at `path` as `name`. `None` when it does not exist or is not a
/// regular file (a symlink is never followed: `O_NOFOLLOW`, then `fstat`).
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: impl AsRef<Path>,
) -> anyhow::Result<Option<()>> {
    let file =
        match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
                return Ok(None)
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    // The size read now: a file that grows meanwhile is cut there, never over-read.
    let size = meta.len();
    header.set_size(size);
    tar.append_data(&mut header, name.as_ref(), file.take(size))
        .with_context(|| format!("archiving {}", path.display()))?;
    Ok(Some(()))
}

/// Appends the directory `dir` as `name`, recursively, skipping symlinks and special files
/// (noted in `warnings`). In a bare repo, `objects/` goes last, so refs read earlier never name
/// an object the archive lacks.
fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    tar.append_data(&mut header, name, io::empty())?;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    entries.sort_by_key(|n| (n == "objects", n.clone()));
    for entry in entries {
        let path = dir.join(&entry);
        let child = name.join(&entry);
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            append_tree(tar, &path, &child, warnings)?;
        } else if meta.is_file() {
            if append_file(tar, &path, &child)?.is_none() && path.exists() {
                warnings.push(format!("{} changed while archiving; left out", path.display()));
            }
        } else {
            warnings.push(format!("{} is not a regular file or directory; left out", path.display()));
        }
    }
    Ok(())
}

/// What a restore did.
#[derive(Debug, Default, Serialize)]
pub struct RestoreSummary {
    pub apps: Vec<String>,
    pub releases: usize,
    pub slugs: usize,
    pub repos: usize,
    pub keys: usize,
    pub problems: Vec<String>,
}

/// Restores `archive` into `home`. The daemon must not run on it; a home that already has apps
/// is refused unless `force` (then its database, repos, releases and slugs are replaced).
pub fn restore(home: &Home, archive: &Path, force: bool) -> anyhow::Result<RestoreSummary> {
    if let Some(pid) = crate::daemon::running_pid(home) {
        bail!(
            "the daemon is running on {} (pid {pid}); stop it first: slipway daemon --stop",
            home.root().display()
        );
    }
    home.ensure_layout().with_context(|| format!("creating {}", home.root().display()))?;
    if home.db().exists() {
        let store = Store::open(&home.db())?;
        let apps = store::apps::list(store.conn())?;
        if !apps.is_empty() && !force {
            bail!(
                "{} already has {} app(s); restoring replaces them: use --force",
                home.root().display(),
                apps.len()
            );
        }
        let live: Vec<String> = store::dynos::all(store.conn())?
            .iter()
            .filter(|d| d.pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()))
            .filter(|d| d.state != store::dynos::DynoState::Down)
            .map(|d| format!("{}/{}", d.app, d.name()))
            .collect();
        if !live.is_empty() {
            bail!(
                "dynos of this home still run ({}); stop them first: slipway daemon; slipway ps:stop --all; slipway daemon --stop",
                live.join(", ")
            );
        }
    }

    let staging = home.root().join(format!(".restore-{}", std::process::id()));
    // A staging dir left by a restore that was killed (the pid is ours now, so it is stale).
    discard(&staging);
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = restore_staged(home, archive, &staging);
    discard(&staging);
    result
}

fn restore_staged(home: &Home, archive: &Path, staging: &Path) -> anyhow::Result<RestoreSummary> {
    let manifest = unpack_checked(archive, staging)?;
    let staged_db = staging.join("slipway.db");
    if !staged_db.is_file() {
        bail!("{} holds no slipway.db; not a slipway backup", archive.display());
    }
    // Refuses a database newer than this binary before anything in the home is replaced.
    drop(Store::open(&staged_db).context("the archived database")?);

    // Move into place: what the archive holds replaces what the home had.
    for name in ["slipway.db-wal", "slipway.db-shm", "slipway.db"] {
        remove_path(&home.root().join(name))?;
    }
    for name in ["repos", "releases", "slugs"] {
        remove_path(&home.root().join(name))?;
    }
    for name in ["slipway.db", "slipway.db-wal", "slipway.db-shm", "slipway.toml", "repos", "slugs", "certs"]
    {
        let from = staging.join(name);
        if fs::symlink_metadata(&from).is_ok() {
            let to = home.root().join(name);
            remove_path(&to)?;
            fs::rename(&from, &to).with_context(|| format!("moving {} into place", to.display()))?;
        }
    }
    home.ensure_layout()?;

    let mut store = Store::open(&home.db())?;
    // Rows of dynos that ran on the backed-up server: their pids mean nothing here.
    store.conn().execute("DELETE FROM dynos", [])?;
    let mut summary =
        RestoreSummary { keys: crate::keys::regenerate(home, &mut store)?, ..Default::default() };
    let binary = std::env::current_exe().context("locating the slipway binary")?;
    let old_home = manifest.as_ref().map(|m| PathBuf::from(&m.home));
    for row in store::apps::list(store.conn())? {
        let Ok(app) = row.name.parse::<AppName>() else { continue };
        summary.apps.push(app.to_string());
        let releases = store::releases::list(store.conn(), &app)?;
        summary.releases += releases.len();
        if let Ok(dir) = fs::read_dir(home.slugs(&app)) {
            summary.slugs += dir.count();
        }
        let repo = home.repo(&app);
        let hook = if repo.is_dir() {
            summary.repos += 1;
            crate::git::install_hook(&repo, &binary)
        } else {
            summary.problems.push(format!("{app}: no repository in the archive; created an empty one"));
            crate::git::create_bare(&repo, &binary)
        };
        if let Err(e) = hook {
            summary.problems.push(format!("{app}: {e}"));
        }
        if let Err(e) = fs::create_dir_all(home.app_logs(&app)) {
            summary.problems.push(format!("{app}: creating {}: {e}", home.app_logs(&app).display()));
        }
        let Some(current) = row.current_release else { continue };
        let Some(build) = releases.iter().find(|r| r.version == current).and_then(|r| r.build_id.clone())
        else {
            continue;
        };
        if let Err(e) = crate::release::ensure_release_dir(home, &app, &build, current) {
            summary.problems.push(format!("{app}: {e}"));
            continue;
        }
        if let Some(old_home) = &old_home {
            if let Err(e) = relocate_venv(home, old_home, &app, &build) {
                summary.problems.push(format!("{app}: rewriting v{current}'s virtualenv for this home: {e}"));
            }
        }
    }
    Ok(summary)
}

/// A slug unpacks to a dir whose virtualenv names the release dir of the home it was built in;
/// when that home was elsewhere, the venv is cloned with the path rewritten (as `apps:rename`
/// does) and swapped in.
fn relocate_venv(home: &Home, old_home: &Path, app: &AppName, build: &str) -> io::Result<()> {
    let old_root = Home::at(old_home).release_dir(app, build);
    let new_root = home.release_dir(app, build);
    let venv = new_root.join(".slipway").join("venv");
    if old_root == new_root || !is_real_dir(&venv) {
        return Ok(());
    }
    let staged = new_root.join(".slipway").join("venv.restored");
    crate::home::remove_if_present(&staged)?;
    crate::build::venv::clone(&venv, &staged, &old_root, &new_root)?;
    fs::remove_dir_all(&venv)?;
    fs::rename(&staged, &venv)
}

fn remove_path(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
        }
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Why an archive entry is refused, or `None` when its path is acceptable: relative, only
/// normal components, under one of the known top-level names.
pub fn check_entry_path(path: &Path) -> Option<String> {
    let mut components = path.components();
    let first = match components.next() {
        Some(Component::Normal(first)) => first.to_string_lossy().to_string(),
        Some(Component::CurDir) => return check_entry_path(components.as_path()),
        _ => return Some(format!("{}: not a relative path", path.display())),
    };
    if components.any(|c| !matches!(c, Component::Normal(_))) {
        return Some(format!("{}: a path with `..` or `.`", path.display()));
    }
    if !TOP_LEVEL.contains(&first.as_str()) {
        return Some(format!("{}: not something a slipway backup holds", path.display()));
    }
    None
}

/// Unpacks `archive` into `staging`, refusing (before writing anything) any entry that is not
/// a plain file or directory or whose path fails [`check_entry_path`].
fn unpack_checked(archive: &Path, staging: &Path) -> anyhow::Result<Option<Manifest>> {
    let open = || -> anyhow::Result<tar::Archive<flate2::read::GzDecoder<File>>> {
        let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
        Ok(tar::Archive::new(flate2::read::GzDecoder::new(file)))
    };
    // First pass: validate every entry.
    let mut tar = open()?;
    for entry in tar.entries().with_context(|| format!("reading {}", archive.display()))? {
        let entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Directory) {
            bail!(
                "refusing {}: {} is a {kind:?} entry (only files and directories)",
                archive.display(),
                path.display()
            );
        }
        if let Some(why) = check_entry_path(&path) {
            bail!("refusing {}: {why}", archive.display());
        }
    }
    // Second pass: unpack (tar's own checks stay on as a second line of defence).
    let mut tar = open()?;
    tar.set_preserve_permissions(true);
    tar.set_overwrite(false);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if !entry.unpack_in(staging).with_context(|| format!("unpacking {}", path.display()))? {
            bail!("refusing {}: {} lands outside the home", archive.display(), path.display());
        }
    }
    let manifest = fs::read(staging.join(MANIFEST)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let path = staging.join(MANIFEST);
    crate::home::remove_if_present(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(manifest)
}

/// Removes a temporary file or dir of ours that is no longer needed; a failure leaves litter,
/// not a wrong result, so it is reported and the command goes on.
fn discard(path: &Path) {
    if let Err(e) = crate::home::remove_if_present(path) {
        eprintln!("warning: could not remove {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::check_entry_path;
    use std::path::Path;

    #[test]
    fn a_venv_built_under_another_home_is_rewritten_for_this_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
        let home = super::Home::at(&new);
        let app: super::AppName = "hello".parse().expect("name");
        let old_root = super::Home::at(&old).release_dir(&app, "b1");
        let venv = home.release_dir(&app, "b1").join(".slipway/venv");
        std::fs::create_dir_all(venv.join("bin")).expect("mkdir");
        let script = format!("#!{}/.slipway/venv/bin/python\n", old_root.display());
        std::fs::write(venv.join("bin/gunicorn"), script).expect("write");
        super::relocate_venv(&home, &old, &app, "b1").expect("relocate");
        let rewritten = std::fs::read_to_string(venv.join("bin/gunicorn")).expect("read");
        let new_root = home.release_dir(&app, "b1");
        assert_eq!(rewritten, format!("#!{}/.slipway/venv/bin/python\n", new_root.display()));
        assert!(!venv.with_file_name("venv.restored").exists());
        // The same home: nothing to do.
        super::relocate_venv(&home, &new, &app, "b1").expect("no-op");
    }

    #[test]
    fn entry_paths() {
        assert_eq!(check_entry_path(Path::new("slipway.db")), None);
        assert_eq!(check_entry_path(Path::new("repos/hello.git/HEAD")), None);
        assert_eq!(check_entry_path(Path::new("./slugs/hello/x.tar.gz")), None);
        assert!(check_entry_path(Path::new("../etc/passwd")).is_some());
        assert!(check_entry_path(Path::new("repos/../../x")).is_some());
        assert!(check_entry_path(Path::new("/etc/passwd")).is_some());
        assert!(check_entry_path(Path::new("releases/hello/x")).is_some());
        assert!(check_entry_path(Path::new(".ssh/authorized_keys")).is_some());
    }
}
