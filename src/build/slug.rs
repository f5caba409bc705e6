//! Slugs: a release dir packed as `slugs/<app>/<build>.tar.gz`, which unpacks to exactly that
//! dir. Symlinks are stored as symlinks (a virtualenv's `bin/python` is one), never followed,
//! but for one: the release's `.slipway/venv`, a link to the app's shared dependency
//! environment (`envs`), whose files the slug holds at `.slipway/venv/` (so a slug alone,
//! restored from a backup, still has its dependencies; `envs::adopt` puts them back).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Packs `dir` into `slug`, writing to a temporary name first so a crash never leaves a
/// truncated slug under the final name. Returns the slug's size in bytes.
pub fn pack(dir: &Path, slug: &Path) -> io::Result<u64> {
    if let Some(parent) = slug.parent() {
        std::fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
    }
    let tmp = slug.with_extension("tmp");
    let result = (|| {
        let file = BufWriter::with_capacity(
            1 << 20,
            crate::fsutil::create_new(&tmp, 0o600).map_err(|e| at(&tmp, e))?,
        );
        // Level 1: slugs are written once per deploy and the push waits on it; the size gain
        // of higher levels is small for virtualenvs full of already-compressed wheels data.
        let encoder = GzEncoder::new(file, Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        append_tree(&mut builder, Path::new("."), dir)?;
        let mut file = builder.into_inner()?.finish()?;
        file.flush()?;
        file.get_ref().sync_all()?;
        Ok::<_, io::Error>(())
    })();
    if let Err(err) = result {
        crate::home::remove_or_warn(&tmp);
        return Err(err);
    }
    std::fs::rename(&tmp, slug).map_err(|e| at(slug, e))?;
    Ok(std::fs::metadata(slug).map_err(|e| at(slug, e))?.len())
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

/// `tar`'s `append_dir_all`, in name order, following only the venv link.
fn append_tree<W: Write>(builder: &mut tar::Builder<W>, name: &Path, dir: &Path) -> io::Result<()> {
    builder.append_dir(name, dir).map_err(|e| at(dir, e))?;
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).and_then(|d| d.collect::<io::Result<_>>()).map_err(|e| at(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (path, rel) = (entry.path(), name.join(entry.file_name()));
        let meta = path.symlink_metadata().map_err(|e| at(&path, e))?;
        if let Some(target) = followed(&rel, &path, &meta) {
            append_tree(builder, &rel, &target)?;
        } else if meta.is_dir() {
            append_tree(builder, &rel, &path)?;
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
    /// Starts packing `dir` into `slug` on a new thread.
    pub fn start(dir: PathBuf, slug: PathBuf) -> io::Result<Packing> {
        let handle = std::thread::Builder::new().name("slug".into()).spawn(move || pack(&dir, &slug))?;
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
    fn walk(dir: &Path, rel: &Path, total: &mut u64) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = rel.join(entry.file_name());
            let meta = entry.path().symlink_metadata()?;
            if let Some(target) = followed(&name, &entry.path(), &meta) {
                *total += tar_entry_bound(name.as_os_str().len(), 0, 0);
                walk(&target, &name, total)?;
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
                walk(&entry.path(), &name, total)?;
            }
        }
        Ok(())
    }
    let mut tar = tar_entry_bound(1, 0, 0);
    walk(dir, Path::new("."), &mut tar)?;
    Ok(gzip_bound(tar + 2 * BLOCK))
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

/// Unpacks a slug into `dir` (which must not exist yet).
pub fn unpack(slug: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(slug)?));
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
        let size = Packing::start(src.clone(), slug.clone()).unwrap().wait().unwrap();
        assert_eq!(size, std::fs::metadata(&slug).unwrap().len());
        let failing = Packing::start(tmp.path().join("missing"), tmp.path().join("slugs/b2.tar.gz")).unwrap();
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
