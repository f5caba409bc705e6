//! Slugs: a release dir packed as `slugs/<app>/<build>.tar.gz`, which unpacks to exactly that
//! dir. Symlinks are stored as symlinks (a virtualenv's `bin/python` is one), never followed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Packs `dir` into `slug`, writing to a temporary name first so a crash never leaves a
/// truncated slug under the final name. Returns the slug's size in bytes.
pub fn pack(dir: &Path, slug: &Path) -> io::Result<u64> {
    if let Some(parent) = slug.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = slug.with_extension("tmp");
    let result = (|| {
        let file = BufWriter::with_capacity(1 << 20, crate::fsutil::create_new(&tmp, 0o600)?);
        // Level 1: slugs are written once per deploy and the push waits on it; the size gain
        // of higher levels is small for virtualenvs full of already-compressed wheels data.
        let encoder = GzEncoder::new(file, Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        builder.append_dir_all(".", dir)?;
        let mut file = builder.into_inner()?.finish()?;
        file.flush()?;
        file.get_ref().sync_all()?;
        Ok::<_, io::Error>(())
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    std::fs::rename(&tmp, slug)?;
    Ok(std::fs::metadata(slug)?.len())
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
    fn sizes() {
        assert_eq!(human_size(8_703_180), "8.3MB");
        assert_eq!(human_size(2048), "2.0KB");
    }
}
