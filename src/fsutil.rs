//! The two ways slipway touches files that someone else could have planted links in.
//!
//! - [`write_atomic`] / [`write_atomic_in`]: every file slipway writes in place (settings,
//!   `.ssh/authorized_keys`, pid and announce files, hooks) is written to a fresh temp file in the
//!   target's directory, opened `O_CREAT|O_EXCL|O_NOFOLLOW`, fsynced, renamed over the target, and
//!   the directory fsynced. A symlink at the target, at the temp name, or (with
//!   [`write_atomic_in`]) at any directory between the home and the target makes the write fail
//!   with an error instead of writing through it.
//! - [`open_beneath`] / [`read_beneath`]: build inputs (Procfile, requirements, hooks…) are opened
//!   with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: a link inside the build dir that
//!   points inside it is followed, one that leaves it fails with [`BeneathError::Escapes`]. Where
//!   the kernel has no `openat2` (before 5.6), the path is walked one component at a time with
//!   `O_NOFOLLOW`, so every symlink is refused.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A per-process counter so two writers in one process never pick the same temp name.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `path` atomically with `mode`, refusing a symlink at `path` or at the
/// temp name. Readers see the old file or the new one, never half of it.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, contents, mode, None)
}

/// [`write_atomic`], the new file owned by `owner` (uid, gid) when given (as root, to keep a
/// file its user's).
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display()))
    })?;
    refuse_symlink(path)?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = create_new(&tmp, mode)?;
    let written = (|| {
        // The mode given to open() is masked by the umask; set it exactly.
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        refuse_symlink(path)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // The temp file is ours (O_EXCL); removing it is best effort, the write error is reported.
        if let Err(rm) = std::fs::remove_file(&tmp) {
            return Err(io::Error::new(e.kind(), format!("{e} (and removing {}: {rm})", tmp.display())));
        }
        return Err(with_path(e, path));
    }
    File::open(dir)?.sync_all()
}

/// [`write_atomic`] for a file inside `root` (the slipway home): also refuses when any directory
/// between `root` and `path` is a symlink.
pub fn write_atomic_in(root: &Path, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    if let Ok(rel) = path.strip_prefix(root) {
        let mut at = root.to_path_buf();
        let parts: Vec<_> = rel.components().collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            at.push(part);
            refuse_symlink(&at)?;
        }
    }
    write_atomic(path, contents, mode)
}

/// Creates `path` for writing with `O_CREAT|O_EXCL|O_NOFOLLOW` and `mode`: never an existing
/// file, never through a link. For files too large to hold in memory (slugs), written under a
/// fresh temp name and renamed by the caller.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| with_path(e, path))
}

/// Whether this process is root: it must never follow a link in the home, whose owner (the
/// platform user) may plant one anywhere there, nor leave a file it creates there to root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The dir from which no link is followed when a root process opens `path` with
/// [`open_append`]: the slipway home, i.e. the parent of the nearest `logs` ancestor
/// (`<home>/logs/<app>/app.log`, `<home>/logs/slipway.log`), else the file's own dir.
pub fn trusted_root(path: &Path) -> &Path {
    path.ancestors()
        .skip(1)
        .find(|dir| dir.file_name().is_some_and(|n| n == "logs"))
        .and_then(Path::parent)
        .or_else(|| path.parent())
        .unwrap_or(Path::new("/"))
}

/// Opens `path` for appending (and reading), created 0600 when missing. As root (see
/// [`is_root`]) no symbolic link is followed from [`trusted_root`] on: every dir below it is
/// opened `O_DIRECTORY|O_NOFOLLOW` and the file `O_NOFOLLOW` (a link fails with `ELOOP` or
/// `ENOTDIR`), and a file that is root's in a dir another user owns is given to that user
/// (`fchown` on the open file), so the home's owner can still read and rotate it. Not root,
/// it opens as any program of that user would.
pub fn open_append(path: &Path) -> io::Result<File> {
    if !is_root() {
        return std::fs::OpenOptions::new().create(true).read(true).append(true).mode(0o600).open(path);
    }
    let root = trusted_root(path);
    let rel = path.strip_prefix(root).map_err(|_| io::Error::other("no trusted root"))?;
    let parts: Vec<_> = rel.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let Some((name, dirs)) = parts.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())));
    };
    let mut dir = OwnedFd::from(File::open(root)?);
    for part in dirs {
        dir = openat(&dir, part.as_os_str(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
    }
    // O_NONBLOCK: a FIFO planted under the log's name never blocks the open (and changes
    // nothing for a regular file). A device node the owner cannot make (CAP_MKNOD).
    let flags = libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let file = File::from(openat(&dir, name.as_os_str(), flags, 0o600)?);
    give_to_dir_owner(&file, &File::from(dir))?;
    Ok(file)
}

fn openat(dir: &OwnedFd, name: &std::ffi::OsStr, flags: i32, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid dirfd and NUL-terminated name.
    let fd =
        unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// As root: gives `file` (just opened or created in `dir`) to `dir`'s owner and group when the
/// file is root's and the dir is not. Nothing to do otherwise.
pub fn give_to_dir_owner(file: &File, dir: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (meta, dir_meta) = (file.metadata()?, dir.metadata()?);
    if is_root() && meta.uid() == 0 && dir_meta.uid() != 0 {
        std::os::unix::fs::fchown(file, Some(dir_meta.uid()), Some(dir_meta.gid()))?;
    }
    Ok(())
}

/// `create_dir_all`, except that as root a dir it creates inside a dir another user owns is
/// given to that user (`lchown`, never following a link), like the files made in it.
pub fn create_dir_all_owned(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() && is_root() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a symbolic link; refusing to create anything through it", path.display()),
            ))
        }
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_owned(parent)?;
    }
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        other => other?,
    }
    if let (true, Some(parent)) = (is_root(), path.parent()) {
        let owner = std::fs::symlink_metadata(parent)?;
        if owner.uid() != 0 {
            std::os::unix::fs::lchown(path, Some(owner.uid()), Some(owner.gid()))?;
        }
    }
    Ok(())
}

fn refuse_symlink(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a symbolic link; refusing to write through it", path.display()),
        )),
        _ => Ok(()),
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Why a build input could not be opened beneath its build directory.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{0} is a link out of the build directory; refusing to read it")]
    Escapes(String),
    #[error("{0} does not exist")]
    Missing(String),
    #[error("reading {path}: {source}")]
    Io { path: String, source: io::Error },
}

impl BeneathError {
    pub fn is_missing(&self) -> bool {
        matches!(self, BeneathError::Missing(_))
    }
}

/// Opens `rel` (relative to `root`) for reading without ever resolving outside `root`.
/// With `O_PATH` in `extra_flags` the file is only located (for checks before running it).
fn open_beneath_flags(root: &Path, rel: &Path, extra_flags: i32) -> Result<File, BeneathError> {
    let shown = rel.display().to_string();
    let io_err = |source: io::Error| BeneathError::Io { path: shown.clone(), source };
    if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(BeneathError::Escapes(shown));
    }
    let dir = File::open(root).map_err(io_err)?;
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | extra_flags;
    let fd = match openat2_beneath(&dir, rel, flags) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) || e.raw_os_error() == Some(libc::EPERM) => {
            walk_nofollow(&dir, rel, flags)?
        }
        Err(e) => return Err(classify(e, shown)),
    };
    Ok(File::from(fd))
}

fn classify(e: io::Error, shown: String) -> BeneathError {
    match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => BeneathError::Escapes(shown),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => BeneathError::Missing(shown),
        _ => BeneathError::Io { path: shown, source: e },
    }
}

fn openat2_beneath(dir: &File, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open_how is plain data; all-zero is its documented "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The fallback without `openat2`: one `openat(O_NOFOLLOW)` per component, so no symlink at
/// all is followed (stricter than `RESOLVE_BENEATH`, never looser).
fn walk_nofollow(dir: &File, rel: &Path, flags: i32) -> Result<OwnedFd, BeneathError> {
    let shown = rel.display().to_string();
    let parts: Vec<_> = rel.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let mut current: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let name = CString::new(part.as_os_str().as_bytes()).map_err(|e| BeneathError::Io {
            path: shown.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let f = if last {
            flags | libc::O_NOFOLLOW
        } else {
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        let at = current.as_ref().map_or(dir.as_raw_fd(), |fd| fd.as_raw_fd());
        // SAFETY: valid dirfd and NUL-terminated name.
        let fd = unsafe { libc::openat(at, name.as_ptr(), f) };
        if fd < 0 {
            return Err(classify(io::Error::last_os_error(), shown));
        }
        // SAFETY: a new descriptor from the kernel.
        current = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    current.ok_or(BeneathError::Missing(shown))
}

/// Opens build input `rel` under `root` for reading (see the module docs).
/// `O_NONBLOCK`: a FIFO planted under an input's name never blocks the open.
pub fn open_beneath(root: &Path, rel: impl AsRef<Path>) -> Result<File, BeneathError> {
    open_beneath_flags(root, rel.as_ref(), libc::O_NONBLOCK)
}

/// Reads build input `rel` under `root` (a regular file) as UTF-8 text (lossy).
pub fn read_beneath(root: &Path, rel: impl AsRef<Path>) -> Result<String, BeneathError> {
    let rel = rel.as_ref();
    let io_err = |source| BeneathError::Io { path: rel.display().to_string(), source };
    let mut file = open_beneath(root, rel)?;
    if !file.metadata().map_err(io_err)?.is_file() {
        return Err(io_err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Like [`read_beneath`], with a missing file as `None`.
pub fn read_beneath_opt(root: &Path, rel: impl AsRef<Path>) -> Result<Option<String>, BeneathError> {
    match read_beneath(root, rel) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks that `rel` under `root` resolves inside `root` (for files slipway runs rather than
/// reads: `bin/post_compile`, the release command's scripts). A missing file is `Missing`.
pub fn check_beneath(root: &Path, rel: impl AsRef<Path>) -> Result<(), BeneathError> {
    open_beneath_flags(root, rel.as_ref(), libc::O_PATH).map(drop)
}

/// `root.join(rel)` after [`check_beneath`].
pub fn path_beneath(root: &Path, rel: impl AsRef<Path>) -> Result<PathBuf, BeneathError> {
    let rel = rel.as_ref();
    check_beneath(root, rel)?;
    Ok(root.join(rel))
}

/// One entry met by [`walk_tree_nofollow`]: held by an `O_PATH|O_NOFOLLOW` descriptor, so what is
/// changed through it is that very inode (a link itself, never what it points to), whatever
/// is renamed or swapped in its place meanwhile.
pub struct Node {
    fd: OwnedFd,
    /// `st_mode` (type and permission bits), `st_uid`, `st_gid`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Node {
    fn open(dir: libc::c_int, name: &std::ffi::CStr) -> io::Result<Node> {
        // SAFETY: openat with a NUL-terminated name; the result is checked.
        let fd =
            unsafe { libc::openat(dir, name.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor from the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fstatat of our descriptor itself (AT_EMPTY_PATH) into a zeroed stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatat(fd.as_raw_fd(), c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Node { fd, mode: st.st_mode, uid: st.st_uid, gid: st.st_gid })
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_link(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// The path that reaches this very inode (`/proc/self/fd/N`).
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Changes its owner and group (a link's own, never its target's).
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: fchownat of our descriptor itself (AT_EMPTY_PATH).
        if unsafe { libc::fchownat(self.fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets its permission bits; nothing for a link (links have none of their own).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if self.is_link() {
            return Ok(());
        }
        std::fs::set_permissions(self.proc_path(), std::fs::Permissions::from_mode(mode))
    }
}

/// Calls `visit` on `path` and everything below it, children before their dir, never
/// following a link: `path` is opened `O_NOFOLLOW` (the dirs above it are the platform's), and
/// each entry through its dir's own descriptor (`openat(O_PATH|O_NOFOLLOW)`), so a dir that
/// an app's process swaps for a link meanwhile is never entered, and nothing outside the tree
/// is ever changed. For root changing trees an app's uid wrote (`users::take_back`).
pub fn walk_tree_nofollow(path: &Path, visit: &mut dyn FnMut(&Node) -> io::Result<()>) -> io::Result<()> {
    let name = CString::new(path.as_os_str().as_bytes())?;
    let top = Node::open(libc::AT_FDCWD, &name)?;
    walk_node(&top, visit)
}

fn walk_node(node: &Node, visit: &mut dyn FnMut(&Node) -> io::Result<()>) -> io::Result<()> {
    if node.is_dir() {
        // The names, read through this very dir; each then opened relative to it.
        for entry in std::fs::read_dir(node.proc_path())? {
            let name = CString::new(entry?.file_name().as_bytes())?;
            let child = match Node::open(node.fd.as_raw_fd(), &name) {
                Ok(child) => child,
                // Removed meanwhile: nothing to change.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            walk_node(&child, visit)?;
        }
    }
    visit(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A tree walk changes the tree's entries and links themselves, never what a link points
    /// to: neither a file nor a dir outside it (which is not entered).
    #[test]
    fn a_tree_walk_changes_links_themselves_never_their_targets() {
        use std::os::unix::fs::MetadataExt;
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (tree, outside) = (tmp.path().join("tree"), tmp.path().join("outside"));
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(tree.join("sub/file"), "x").unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::fs::set_permissions(outside.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink(outside.join("secret"), tree.join("to-file")).unwrap();
        symlink(outside.join("dir"), tree.join("to-dir")).unwrap();
        let mut seen = Vec::new();
        walk_tree_nofollow(&tree, &mut |node| {
            node.chown(299_991, 299_991)?;
            node.chmod(0o750)?;
            seen.push((node.is_dir(), node.is_link()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 5, "tree, sub, sub/file and the two links: {seen:?}");
        assert_eq!(seen.last(), Some(&(true, false)), "the top comes last");
        for path in ["", "sub", "sub/file", "to-file", "to-dir"] {
            assert_eq!(std::fs::symlink_metadata(tree.join(path)).unwrap().uid(), 299_991, "{path}");
        }
        assert_eq!(std::fs::metadata(tree.join("sub/file")).unwrap().mode() & 0o777, 0o750);
        let secret = std::fs::metadata(outside.join("secret")).unwrap();
        assert_eq!((secret.uid(), secret.mode() & 0o777), (0, 0o600), "a link's target changed");
        assert_eq!(std::fs::metadata(outside.join("dir")).unwrap().uid(), 0, "a link's dir changed");
    }

    /// As root, logs are opened without following any link below the home (the dir holding
    /// `logs/`), and what root creates in a dir another user owns is that user's.
    #[test]
    fn root_appends_never_through_a_link_and_leave_files_to_the_dirs_owner() {
        use std::os::unix::fs::MetadataExt;
        if !is_root() {
            println!("skipped: needs root (not root, logs are opened as any program of the user would)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let logs = home.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        for path in [&home, &logs] {
            std::os::unix::fs::chown(path, Some(4242), Some(4243)).unwrap();
        }
        assert_eq!(trusted_root(&logs.join("app/app.log")), home.as_path());
        assert_eq!(trusted_root(&logs.join("slipway.log")), home.as_path());
        assert_eq!(trusted_root(Path::new("/x/y/z.log")), Path::new("/x/y"));

        create_dir_all_owned(&logs.join("app")).unwrap();
        let log = logs.join("app/app.log");
        let mut file = open_append(&log).unwrap();
        file.write_all(b"line\n").unwrap();
        for path in [logs.join("app"), log.clone()] {
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4243), "{}", path.display());
        }
        assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // A link at the file, at its dir, at `logs/` itself.
        std::fs::remove_file(&log).unwrap();
        symlink(&victim, &log).unwrap();
        assert_eq!(open_append(&log).unwrap_err().raw_os_error(), Some(libc::ELOOP));
        let other = dir.path().join("elsewhere");
        std::fs::create_dir(&other).unwrap();
        symlink(&other, logs.join("linked")).unwrap();
        assert!(open_append(&logs.join("linked/app.log")).is_err());
        assert!(create_dir_all_owned(&logs.join("linked/sub")).is_err());
        std::fs::rename(&logs, home.join("logs.real")).unwrap();
        symlink(home.join("logs.real"), &logs).unwrap();
        assert!(open_append(&logs.join("slipway.log")).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!other.join("app.log").exists() && !other.join("sub").exists());
        assert!(!home.join("logs.real/slipway.log").exists());
    }

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("f")], "no temp file left behind");
    }

    #[test]
    fn a_symlink_at_the_target_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let p = dir.path().join("authorized_keys");
        symlink(&victim, &p).unwrap();
        let err = write_atomic(&p, b"evil", 0o600).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_symlink_at_the_temp_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let p = dir.path().join("f");
        // Plant links at the next few temp names this process could pick.
        let next = TMP_SEQ.load(Ordering::Relaxed);
        for seq in next..next + 64 {
            symlink(&victim, dir.path().join(format!(".f.{}.{seq}.tmp", std::process::id()))).unwrap();
        }
        let err = write_atomic(&p, b"evil", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!p.exists());
    }

    #[test]
    fn a_symlinked_directory_inside_the_home_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        symlink(elsewhere.path(), home.path().join(".ssh")).unwrap();
        let p = home.path().join(".ssh/authorized_keys");
        let err = write_atomic_in(home.path(), &p, b"evil", 0o600).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!elsewhere.path().join("authorized_keys").exists());
    }

    fn tree() -> (tempfile::TempDir, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "root:x:0:0").unwrap();
        std::fs::create_dir(root.path().join("reqs")).unwrap();
        std::fs::write(root.path().join("reqs/base.txt"), "flask\n").unwrap();
        std::fs::write(root.path().join("Procfile"), "web: gunicorn app:app\n").unwrap();
        (root, outside)
    }

    #[test]
    fn reads_beneath_the_root() {
        let (root, outside) = tree();
        let r = root.path();
        // Table: (name, link target or None for the plain file, expected outcome).
        symlink("reqs/base.txt", r.join("inside-rel")).unwrap();
        symlink(r.join("reqs/base.txt"), r.join("inside-abs")).unwrap();
        symlink(outside.path().join("secret"), r.join("out-abs")).unwrap();
        symlink("../../../../../../../etc/passwd", r.join("out-rel")).unwrap();
        symlink("/proc/self/root/etc/passwd", r.join("magic")).unwrap();
        symlink(outside.path(), r.join("outdir")).unwrap();
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("Procfile", Ok("web: gunicorn app:app\n")),
            ("reqs/base.txt", Ok("flask\n")),
            ("./reqs/../reqs/base.txt", Err("escapes")),
            ("inside-rel", Ok("flask\n")),
            ("inside-abs", Err("escapes")), // an absolute link leaves the root as seen by RESOLVE_BENEATH
            ("out-abs", Err("escapes")),
            ("out-rel", Err("escapes")),
            ("magic", Err("escapes")),
            ("outdir/secret", Err("escapes")),
            ("/etc/passwd", Err("escapes")),
            ("nope.txt", Err("missing")),
        ];
        for (name, want) in cases {
            let got = read_beneath(r, name);
            match (want, &got) {
                (Ok(text), Ok(s)) => assert_eq!(s, text, "{name}"),
                (Err("escapes"), Err(BeneathError::Escapes(n))) => {
                    assert_eq!(n, name);
                    assert!(got
                        .as_ref()
                        .unwrap_err()
                        .to_string()
                        .contains("link out of the build directory"));
                }
                (Err("missing"), Err(e)) if e.is_missing() => {}
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
        assert_eq!(read_beneath_opt(r, "nope").unwrap(), None);
        nix::unistd::mkfifo(&r.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_beneath(r, "fifo").unwrap_err().to_string();
        assert_eq!(err, "reading fifo: not a regular file", "a FIFO neither blocks nor is read");
        assert!(read_beneath(r, "reqs").is_err(), "a directory is not a file");
        assert!(check_beneath(r, "out-abs").is_err());
        assert!(check_beneath(r, "Procfile").is_ok());
    }

    #[test]
    fn the_fallback_walk_refuses_every_link() {
        let (root, _outside) = tree();
        let r = root.path();
        symlink("reqs/base.txt", r.join("inside-rel")).unwrap();
        let dir = File::open(r).unwrap();
        let flags = libc::O_RDONLY | libc::O_CLOEXEC;
        assert!(walk_nofollow(&dir, Path::new("reqs/base.txt"), flags).is_ok());
        assert!(matches!(walk_nofollow(&dir, Path::new("inside-rel"), flags), Err(BeneathError::Escapes(_))));
        assert!(walk_nofollow(&dir, Path::new("nope"), flags).unwrap_err().is_missing());
    }
}
