//! Slugs: a release dir packed as `slugs/<app>/<build>.tar.gz`, which unpacks to exactly that
//! dir. Symlinks are stored as symlinks (a virtualenv's `bin/python` is one), never followed,
//! but for one: the release's `.slipway/venv`, a link to the app's shared dependency
//! environment (`envs`), whose files the slug holds at `.slipway/venv/` (so a slug alone,
//! restored from a backup, still has its dependencies; `envs::adopt` puts them back).
//!
//! A slug is one tar archive, gzipped; when its release links a sealed environment it is
//! written as three gzip members (which every gzip reader, `tar xzf` included, reads as one
//! stream): the release's own entries, the environment's entries, and the end-of-archive
//! blocks. The middle member depends only on the environment, which never changes once sealed,
//! so it is packed once per environment and kept (`envs/<app>/.slug-parts/<key>.gz`, see
//! [`EnvPart`]); every later slug with that environment copies it instead of compressing
//! thousands of files again while the release's dynos boot.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Packs `dir` into `slug`, writing to a temporary name first so a crash never leaves a
/// truncated slug under the final name. Returns the slug's size in bytes.
pub fn pack(dir: &Path, slug: &Path) -> io::Result<u64> {
    pack_reusing(dir, slug, None)
}

/// A sealed environment and where its slug part is kept: the environment's entries, as the
/// middle gzip member of every slug whose release links it (see the module's doc).
#[derive(Debug, Clone)]
pub struct EnvPart {
    /// `envs/<app>/<key>`, sealed.
    pub env: PathBuf,
    /// `envs/<app>/.slug-parts/<key>.gz`.
    pub part: PathBuf,
}

/// The dir, in an app's `envs/`, that keeps its environments' slug parts.
pub const PARTS_DIR: &str = ".slug-parts";

impl EnvPart {
    /// The part of the environment `key` of the app whose environments are in `envs`.
    pub fn of(envs: &Path, key: &str) -> EnvPart {
        EnvPart { env: envs.join(key), part: envs.join(PARTS_DIR).join(format!("{key}.gz")) }
    }
}

/// Level 1: slugs are written once per deploy and the push waits on them; the size gain of
/// higher levels is small for virtualenvs full of already-compressed wheels data.
fn encoder<W: Write>(w: W) -> GzEncoder<W> {
    GzEncoder::new(w, Compression::fast())
}

fn builder<W: Write>(w: W) -> tar::Builder<W> {
    let mut builder = tar::Builder::new(w);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder
}

/// [`pack`], the environment's entries taken from `part` (made first when missing) when the
/// release's venv link leads to `part.env`.
pub fn pack_reusing(dir: &Path, slug: &Path, part: Option<&EnvPart>) -> io::Result<u64> {
    if let Some(parent) = slug.parent() {
        std::fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
    }
    let part = usable_part(dir, part);
    if let Some(part) = part {
        ensure_part(part)?;
    }
    write_via(&slug.with_extension("tmp"), slug, |file| {
        Ok(match part {
            None => {
                let mut builder = builder(encoder(file));
                append_tree(&mut builder, Path::new("."), dir, Venv::Follow)?;
                builder.into_inner()?.finish()?
            }
            Some(part) => {
                let mut builder = builder(Unterminated::new(encoder(file)));
                append_tree(&mut builder, Path::new("."), dir, Venv::Skip)?;
                let mut file = builder.into_inner()?.into_inner()?.finish()?;
                let mut kept = File::open(&part.part).map_err(|e| at(&part.part, e))?;
                io::copy(&mut kept, &mut file).map_err(|e| at(&part.part, e))?;
                let mut end = encoder(file);
                end.write_all(&[0; END_OF_ARCHIVE])?;
                end.finish()?
            }
        })
    })?;
    Ok(std::fs::metadata(slug).map_err(|e| at(slug, e))?.len())
}

/// Writes `path` through the new file `tmp`: `write` gets it buffered and hands it back when
/// done; it is then flushed, fsynced and renamed over `path` (so `path` is always whole), or
/// removed when anything failed.
fn write_via(
    tmp: &Path,
    path: &Path,
    write: impl FnOnce(BufWriter<File>) -> io::Result<BufWriter<File>>,
) -> io::Result<()> {
    let result = (|| {
        let file = crate::fsutil::create_new(tmp, 0o600).map_err(|e| at(tmp, e))?;
        let mut file = write(BufWriter::with_capacity(1 << 20, file))?;
        file.flush()?;
        file.get_ref().sync_all()
    })();
    if let Err(err) = result {
        crate::home::remove_or_warn(tmp);
        return Err(err);
    }
    std::fs::rename(tmp, path).map_err(|e| at(path, e))
}

/// `part` when the release `dir`'s venv link leads to its environment, sealed.
fn usable_part<'a>(dir: &Path, part: Option<&'a EnvPart>) -> Option<&'a EnvPart> {
    let link = dir.join(VENV_LINK);
    part.filter(|p| {
        let target = std::fs::canonicalize(&link).ok();
        std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink())
            && target.is_some()
            && target == std::fs::canonicalize(&p.env).ok()
            && crate::envs::is_sealed(&p.env)
    })
}

/// Whether the kept part is there and newer than its environment's seal marker.
fn part_is_fresh(part: &EnvPart) -> bool {
    let modified = |path: &Path| std::fs::symlink_metadata(path).and_then(|m| m.modified()).ok();
    let kept = std::fs::symlink_metadata(&part.part).is_ok_and(|m| m.is_file());
    match (kept, modified(&part.part), modified(&part.env.join(crate::envs::SEALED))) {
        (true, Some(made), Some(sealed)) => made >= sealed,
        _ => false,
    }
}

/// Makes `part.part` from the sealed environment unless it is there and newer than the
/// environment's seal: its entries under `./.slipway/venv`, gzipped, without the
/// end-of-archive blocks; written to a fresh temp file, fsynced and renamed into place, so a
/// part under its name is always whole. (An environment removed and built again under the same
/// key, say by hand, is sealed anew: its old part is older than the new marker and is made
/// again.)
fn ensure_part(part: &EnvPart) -> io::Result<()> {
    if part_is_fresh(part) {
        return Ok(());
    }
    let parent = part.part.parent().ok_or_else(|| io::Error::other("a slug part has no parent dir"))?;
    std::fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
    let tmp = part_tmp(&part.part, std::process::id());
    crate::home::remove_if_present(&tmp).map_err(|e| at(&tmp, e))?;
    write_via(&tmp, &part.part, |file| {
        let mut builder = builder(Unterminated::new(encoder(file)));
        append_tree(&mut builder, Path::new(VENV_LINK), &part.env, Venv::Follow)?;
        builder.into_inner()?.into_inner()?.finish()
    })
}

/// The temp file process `pid` writes the part `part` through: `.KEY.gz.PID.tmp` beside it.
fn part_tmp(part: &Path, pid: u32) -> PathBuf {
    let name = part.file_name().unwrap_or_default().to_string_lossy();
    part.with_file_name(format!(".{name}.{pid}.tmp"))
}

/// The pid of the packer whose temp file ([`part_tmp`]) is named `name`; None for any other
/// name.
pub fn part_tmp_pid(name: &str) -> Option<i32> {
    let tmp = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    tmp.rsplit('.').next()?.parse::<i32>().ok().filter(|pid| *pid > 0)
}

/// The two zero blocks that end a tar archive (what `tar::Builder` writes when it finishes).
const END_OF_ARCHIVE: usize = 1024;

/// A writer that passes a tar stream on without its end-of-archive blocks, so that the stream
/// can be continued by another (the next gzip member of a slug).
struct Unterminated<W: Write> {
    inner: W,
    /// The last bytes written, held back until more follow.
    tail: Vec<u8>,
}

impl<W: Write> Unterminated<W> {
    fn new(inner: W) -> Self {
        Unterminated { inner, tail: Vec::with_capacity(2 * END_OF_ARCHIVE) }
    }

    /// The inner writer, once the stream ended with exactly the end-of-archive blocks (held
    /// back and dropped here).
    fn into_inner(self) -> io::Result<W> {
        if self.tail.len() != END_OF_ARCHIVE || self.tail.iter().any(|b| *b != 0) {
            return Err(io::Error::other("the tar stream did not end with its end-of-archive blocks"));
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for Unterminated<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.extend_from_slice(buf);
        if self.tail.len() > END_OF_ARCHIVE {
            let ready = self.tail.len() - END_OF_ARCHIVE;
            self.inner.write_all(&self.tail[..ready])?;
            self.tail.drain(..ready);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The release dir's path of the venv link the slug follows (see the module's doc).
const VENV_LINK: &str = "./.slipway/venv";

/// Where the slug takes the entry `path` (named `name` in the slug) from: the link's target
/// for the venv link, else the entry itself (never followed).
fn followed(name: &Path, path: &Path, meta: &std::fs::Metadata) -> Option<PathBuf> {
    (meta.file_type().is_symlink() && name == Path::new(VENV_LINK))
        .then(|| std::fs::canonicalize(path).ok().filter(|t| t.is_dir()))
        .flatten()
}

/// What [`append_tree`] does with the release's venv link.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Venv {
    /// Packs the environment it leads to in its place.
    Follow,
    /// Leaves it out (the environment's entries come from its part).
    Skip,
}

/// `tar`'s `append_dir_all`, in name order, following only the venv link (or skipping it).
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &Path,
    dir: &Path,
    venv: Venv,
) -> io::Result<()> {
    builder.append_dir(name, dir).map_err(|e| at(dir, e))?;
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).and_then(|d| d.collect::<io::Result<_>>()).map_err(|e| at(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (path, rel) = (entry.path(), name.join(entry.file_name()));
        let meta = path.symlink_metadata().map_err(|e| at(&path, e))?;
        if let Some(target) = followed(&rel, &path, &meta) {
            if venv == Venv::Follow {
                append_tree(builder, &rel, &target, venv)?;
            }
        } else if meta.is_dir() {
            append_tree(builder, &rel, &path, venv)?;
        } else {
            builder.append_path_with_name(&path, &rel).map_err(|e| at(&path, e))?;
        }
    }
    Ok(())
}

/// `err` naming the entry it happened at (the first error of a tree walk, with its path).
fn at(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A slug being packed on a thread of its own, so that the push does not wait for tar and gzip
/// before the release goes live (the dynos run from the release dir, not from the slug). The
/// push waits for it with [`Packing::wait`] before it reports success; dropping it waits too, so
/// the hook never exits (and never gives up the deploy lock) with a slug half-written.
pub struct Packing {
    state: Option<PackState>,
}

enum PackState {
    Running(JoinHandle<io::Result<u64>>),
    Done(io::Result<u64>),
}

impl Packing {
    /// Starts packing `dir` into `slug` on a new thread (reusing the environment's `part`).
    pub fn start(dir: PathBuf, slug: PathBuf, part: Option<EnvPart>) -> io::Result<Packing> {
        let handle = std::thread::Builder::new()
            .name("slug".into())
            .spawn(move || pack_reusing(&dir, &slug, part.as_ref()))?;
        Ok(Packing { state: Some(PackState::Running(handle)) })
    }

    /// A slug already packed (or that failed to): `wait` returns `result`.
    pub fn done(result: io::Result<u64>) -> Packing {
        Packing { state: Some(PackState::Done(result)) }
    }

    /// The slug's size once it is complete under its final name.
    pub fn wait(mut self) -> io::Result<u64> {
        self.join()
    }

    fn join(&mut self) -> io::Result<u64> {
        match self.state.take() {
            Some(PackState::Running(handle)) => handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the thread packing the slug panicked"))),
            Some(PackState::Done(result)) => result,
            None => Err(io::Error::other("the slug was already waited for")),
        }
    }
}

impl Drop for Packing {
    fn drop(&mut self) {
        if matches!(self.state, Some(PackState::Running(_))) {
            // Only the wait matters here; the caller that wanted the result used `wait`.
            let _ = self.join();
        }
    }
}

/// An upper bound of the size of the slug of `dir`: what [`pack`] can write at most (tar
/// headers, GNU long-name records and padding for every entry, and gzip's worst case of
/// incompressible data stored in blocks). When it is within `SLIPWAY_MAX_SLUG_MB`, the slug
/// cannot be over the limit and may be packed while the release goes live.
pub fn packed_size_bound(dir: &Path) -> io::Result<u64> {
    packed_size_bound_reusing(dir, None)
}

/// [`packed_size_bound`] of what [`pack_reusing`] writes: with a part it will copy as it is
/// (see [`usable_part`], [`part_is_fresh`]), the release's own entries are walked and the
/// part's exact size added, instead of walking the thousands of files of the environment at
/// every deploy.
pub fn packed_size_bound_reusing(dir: &Path, part: Option<&EnvPart>) -> io::Result<u64> {
    if let Some(part) = usable_part(dir, part).filter(|p| part_is_fresh(p)) {
        let mut tar = tar_entry_bound(1, 0, 0);
        walk_bound(dir, Path::new("."), &mut tar, Venv::Skip)?;
        let kept = std::fs::metadata(&part.part)?.len();
        return Ok(gzip_bound(tar) + kept + gzip_bound(END_OF_ARCHIVE as u64));
    }
    let mut tar = tar_entry_bound(1, 0, 0);
    walk_bound(dir, Path::new("."), &mut tar, Venv::Follow)?;
    Ok(gzip_bound(tar + 2 * BLOCK))
}

/// Adds the tar bound of every entry under `dir` (named from `rel`) to `total`.
fn walk_bound(dir: &Path, rel: &Path, total: &mut u64, venv: Venv) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = rel.join(entry.file_name());
        let meta = entry.path().symlink_metadata()?;
        if let Some(target) = followed(&name, &entry.path(), &meta) {
            if venv == Venv::Follow {
                *total += tar_entry_bound(name.as_os_str().len(), 0, 0);
                walk_bound(&target, &name, total, venv)?;
            }
            continue;
        }
        let name_len = name.as_os_str().len();
        let link_len = if meta.file_type().is_symlink() {
            std::fs::read_link(entry.path())?.as_os_str().len()
        } else {
            0
        };
        let size = if meta.is_file() { meta.len() } else { 0 };
        *total += tar_entry_bound(name_len, link_len, size);
        if meta.is_dir() {
            walk_bound(&entry.path(), &name, total, venv)?;
        }
    }
    Ok(())
}

const BLOCK: u64 = 512;

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// One tar entry at most: its header, a GNU long-name and a long-link record (each a header
/// plus the name, padded) when the names need them, and the data padded to whole blocks.
fn tar_entry_bound(name_len: usize, link_len: usize, size: u64) -> u64 {
    let long = |len: usize| if len >= 100 { BLOCK + round_up(len as u64 + 1) } else { 0 };
    BLOCK + long(name_len) + long(link_len) + round_up(size)
}

/// Deflate never grows data by more than 5 bytes per stored block (at most 16 KiB each with
/// the fast level), plus gzip's header and trailer.
fn gzip_bound(bytes: u64) -> u64 {
    bytes + (bytes / 16_384 + 1) * 5 + 64
}

/// Unpacks a slug into `dir` (which must not exist yet); every gzip member of it.
pub fn unpack(slug: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(File::open(slug)?));
    archive.set_preserve_permissions(true);
    archive.unpack(dir)
}

/// "8.3MB" as Heroku prints slug sizes.
pub fn human_size(bytes: u64) -> String {
    let mb = bytes as f64 / (1024.0 * 1024.0);
    if mb >= 0.1 {
        format!("{mb:.1}MB")
    } else {
        format!("{:.1}KB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_unpack_keep_files_modes_and_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("app.py"), "print('hi')\n").unwrap();
        std::fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", src.join("bin/python")).unwrap();
        let slug = tmp.path().join("slugs/b1.tar.gz");
        let size = pack(&src, &slug).unwrap();
        assert!(size > 0);
        let out = tmp.path().join("out");
        unpack(&slug, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("app.py")).unwrap(), "print('hi')\n");
        let mode = std::fs::metadata(out.join("bin/run")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read_link(out.join("bin/python")).unwrap(), Path::new("/usr/bin/python3"));
    }

    #[test]
    fn the_venv_link_is_packed_as_the_environment_it_points_to() {
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join("envs/hello/k1");
        std::fs::create_dir_all(env.join("bin")).unwrap();
        std::fs::write(env.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", env.join("bin/python")).unwrap();
        let release = tmp.path().join("releases/hello/b1");
        std::fs::create_dir_all(release.join(".slipway")).unwrap();
        std::fs::write(release.join("app.py"), "print(1)\n").unwrap();
        std::os::unix::fs::symlink("../../../../envs/hello/k1", release.join(".slipway/venv")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", release.join("other-link")).unwrap();
        let slug = tmp.path().join("b1.tar.gz");
        let size = pack(&release, &slug).unwrap();
        assert!(packed_size_bound(&release).unwrap() >= size);
        let out = tmp.path().join("out");
        unpack(&slug, &out).unwrap();
        let venv = out.join(".slipway/venv");
        assert!(std::fs::symlink_metadata(&venv).unwrap().is_dir(), "the venv was stored as a link");
        assert_eq!(std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap(), "home = /usr/bin\n");
        assert_eq!(std::fs::read_link(venv.join("bin/python")).unwrap(), Path::new("/usr/bin/python3"));
        assert_eq!(std::fs::read_link(out.join("other-link")).unwrap(), Path::new("/etc/passwd"));
    }

    /// Every entry of an unpacked tree: its path, kind, mode and content or link target.
    fn listing(root: &Path) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for path in entries {
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let mode = meta.permissions().mode() & 0o7777;
                if meta.file_type().is_symlink() {
                    out.push(format!("{rel} -> {}", std::fs::read_link(&path).unwrap().display()));
                } else if meta.is_dir() {
                    out.push(format!("{rel}/ {mode:o}"));
                    walk(root, &path, out);
                } else {
                    out.push(format!("{rel} {mode:o} {}", std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    /// A sealed environment `envs/hello/KEY` and a release linking it.
    fn release_with_env(root: &Path, build: &str, key: &str) -> PathBuf {
        let env = root.join("envs/hello").join(key);
        if !env.exists() {
            std::fs::create_dir_all(env.join("lib/site-packages/flask")).unwrap();
            std::fs::write(env.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
            std::fs::write(env.join("lib/site-packages/flask/__init__.py"), format!("# {key}\n")).unwrap();
            std::fs::create_dir_all(env.join("bin")).unwrap();
            std::os::unix::fs::symlink("/usr/bin/python3", env.join("bin/python")).unwrap();
            crate::envs::seal(&env).unwrap();
        }
        let release = root.join("releases/hello").join(build);
        std::fs::create_dir_all(release.join(".slipway")).unwrap();
        std::fs::write(release.join("app.py"), format!("print('{build}')\n")).unwrap();
        std::fs::write(release.join(".slipway/note"), "n\n").unwrap();
        std::os::unix::fs::symlink(format!("../../../../envs/hello/{key}"), release.join(".slipway/venv"))
            .unwrap();
        release
    }

    #[test]
    fn a_slug_takes_its_environment_from_the_kept_part_and_unpacks_as_a_whole_one_does() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let part = EnvPart::of(&root.join("envs/hello"), "k1");
        let b1 = release_with_env(root, "b1", "k1");
        let whole = root.join("slugs/whole.tar.gz");
        pack(&b1, &whole).unwrap();
        let split = root.join("slugs/b1.tar.gz");
        let size = pack_reusing(&b1, &split, Some(&part)).unwrap();
        assert!(part.part.is_file(), "the part is kept");
        assert!(packed_size_bound(&b1).unwrap() >= size);
        let (a, b) = (root.join("out-whole"), root.join("out-split"));
        unpack(&whole, &a).unwrap();
        unpack(&split, &b).unwrap();
        assert_eq!(listing(&a), listing(&b));
        assert!(listing(&b)
            .iter()
            .any(|l| l == ".slipway/venv/lib/site-packages/flask/__init__.py 444 # k1\n"));

        // The next release with that environment copies the part as it is.
        let made = std::fs::metadata(&part.part).unwrap();
        let b2 = release_with_env(root, "b2", "k1");
        let bound = packed_size_bound_reusing(&b2, Some(&part)).unwrap();
        let size = pack_reusing(&b2, &root.join("slugs/b2.tar.gz"), Some(&part)).unwrap();
        assert!(bound >= size && bound < packed_size_bound(&b2).unwrap(), "{bound} {size}");
        let again = std::fs::metadata(&part.part).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((made.ino(), made.mtime_nsec()), (again.ino(), again.mtime_nsec()));
        let out = root.join("out-b2");
        unpack(&root.join("slugs/b2.tar.gz"), &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("app.py")).unwrap(), "print('b2')\n");
        assert!(out.join(".slipway/venv/lib/site-packages/flask/__init__.py").is_file());

        // GNU tar reads the three members as one archive, end to end.
        let tar =
            std::process::Command::new("tar").arg("-tzf").arg(root.join("slugs/b2.tar.gz")).output().unwrap();
        assert!(tar.status.success(), "{tar:?}");
        let names = String::from_utf8_lossy(&tar.stdout);
        assert!(names.lines().any(|l| l == "app.py"), "{names}");
        assert!(names.lines().any(|l| l == ".slipway/venv/lib/site-packages/flask/__init__.py"), "{names}");

        // An environment sealed again under the same key (removed and rebuilt) gets a new part.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::options().write(true).open(&part.part).unwrap().set_modified(old).unwrap();
        pack_reusing(&b2, &root.join("slugs/b2.tar.gz"), Some(&part)).unwrap();
        assert!(
            std::fs::metadata(&part.part).unwrap().modified().unwrap() > old,
            "the stale part was made again"
        );

        // A part is used only for the environment the release links: another one packs whole.
        let b3 = release_with_env(root, "b3", "k2");
        pack_reusing(&b3, &root.join("slugs/b3.tar.gz"), Some(&part)).unwrap();
        let out = root.join("out-b3");
        unpack(&root.join("slugs/b3.tar.gz"), &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join(".slipway/venv/lib/site-packages/flask/__init__.py")).unwrap(),
            "# k2\n"
        );
    }

    #[test]
    fn a_parts_temp_file_names_its_packer() {
        let tmp = part_tmp(Path::new("/h/envs/a/.slug-parts/k1.gz"), 42);
        assert_eq!(tmp, Path::new("/h/envs/a/.slug-parts/.k1.gz.42.tmp"));
        assert_eq!(part_tmp_pid(&tmp.file_name().unwrap().to_string_lossy()), Some(42));
        for other in ["k1.gz", ".k1.gz", ".k1.gz.x.tmp", ".k1.gz.0.tmp", "k1.gz.42.tmp"] {
            assert_eq!(part_tmp_pid(other), None, "{other}");
        }
    }

    #[test]
    fn an_unterminated_tar_stream_holds_back_exactly_the_end_of_archive() {
        let mut w = Unterminated::new(Vec::new());
        w.write_all(&[7; 600]).unwrap();
        w.write_all(&[0; END_OF_ARCHIVE]).unwrap();
        assert_eq!(w.into_inner().unwrap(), vec![7; 600]);
        let mut w = Unterminated::new(Vec::new());
        w.write_all(&[7; 2000]).unwrap();
        assert!(w.into_inner().is_err(), "a stream that did not end in zero blocks");
    }

    #[test]
    fn the_bound_is_never_below_the_packed_size() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let deep = src.join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        // Incompressible data: gzip's worst case.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(deep.join("noise.bin"), &noise).unwrap();
        std::fs::write(src.join("empty"), "").unwrap();
        std::os::unix::fs::symlink("x".repeat(150), src.join("link")).unwrap();
        let bound = packed_size_bound(&src).unwrap();
        let size = pack(&src, &tmp.path().join("s.tar.gz")).unwrap();
        assert!(bound >= size, "bound {bound} < size {size}");
        assert!(bound < size * 2, "bound {bound} is useless for {size}");
    }

    #[test]
    fn entry_and_gzip_bounds() {
        let cases: &[(usize, usize, u64, u64)] = &[
            (10, 0, 0, 512),
            (10, 0, 1, 1024),
            (10, 0, 512, 1024),
            (10, 0, 513, 1536),
            (100, 0, 0, 512 + 512 + 512),
            (10, 600, 0, 512 + 512 + 1024),
        ];
        for &(name, link, size, want) in cases {
            assert_eq!(tar_entry_bound(name, link, size), want, "{name} {link} {size}");
        }
        assert_eq!(gzip_bound(0), 69);
        assert_eq!(gzip_bound(16_384), 16_384 + 10 + 64);
    }

    #[test]
    fn packing_on_a_thread_gives_the_size_and_the_slug() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("app.py"), "print('hi')\n").unwrap();
        let slug = tmp.path().join("slugs/b1.tar.gz");
        let size = Packing::start(src.clone(), slug.clone(), None).unwrap().wait().unwrap();
        assert_eq!(size, std::fs::metadata(&slug).unwrap().len());
        let failing =
            Packing::start(tmp.path().join("missing"), tmp.path().join("slugs/b2.tar.gz"), None).unwrap();
        assert!(failing.wait().is_err());
        assert!(!tmp.path().join("slugs/b2.tar.gz").exists());
        assert_eq!(Packing::done(Ok(7)).wait().unwrap(), 7);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(8_703_180), "8.3MB");
        assert_eq!(human_size(2048), "2.0KB");
    }
}
