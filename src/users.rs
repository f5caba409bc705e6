//! One unix uid per app when the daemon runs as root ("per-app users").
//!
//! Run as root, slipway gives every app a uid of its own from the `app_uids` range (default
//! `200000-299999`; the gid is the same number), stored in SQLite (`app_uids`): allocated by
//! `apps:create`, or the first time a dyno of an app made before starts; kept by `apps:rename`,
//! freed by `apps:destroy`. No `/etc/passwd` entry is made or needed: the kernel only knows
//! numbers. A uid (or gid) that a user (group) of `/etc/passwd` (`/etc/group`) has is never
//! handed out, and an app whose uid became one meanwhile is refused at start.
//!
//! The daemon is root either on a root-owned home or on the platform user's home (production);
//! there the platform user's commands that run app code are started by the daemon as workers
//! (`crate::worker`), privileged through their saved uid ([`privileged`]).
//!
//! A dyno (and a one-off `run` dyno started by root or a worker) drops to its app's uid between fork and
//! exec, after joining its cgroup and before Landlock: no supplementary groups, gid, then uid
//! ([`drop_to`]). Its private dir's `app/` and `tmp/` are chowned to it; the release dir stays
//! the platform's (read-only to the app through its group: [`open_release`]); the shim that
//! writes its log and reaps it stays root, so it can still signal the dyno.
//!
//! A build's app commands and the release phase run as the app's uid too (see `build::Jail`
//! and `job::Job`): the build dir and a new environment are lent to it ([`lend_tree`]) and
//! taken back after its last command ([`take_back`]); its cache is its own ([`hand_tree`]);
//! the server-wide tools platform steps install are opened to every uid ([`open_tree`]).
//!
//! Run as any other user (development, tests as a user, the platform user), everything runs as
//! that one user ("single-user mode") and Landlock is what separates apps.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::app::AppName;

/// An inclusive range of uids (`app_uids`, `START-END`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The lowest uid `app_uids` may start at: below it live system and login users.
pub const MIN_UID: u32 = 1000;
/// The highest uid `app_uids` may end at (well below `nobody`'s 65534-style sentinels of 2^32-1
/// and 2^31-1, which some tools treat as "no uid").
pub const MAX_UID: u32 = 2_000_000_000;

impl std::str::FromStr for UidRange {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHY: &str = "expected START-END with 1000 <= START <= END <= 2000000000";
        let (a, b) = s.split_once('-').ok_or(WHY)?;
        let (first, last) =
            (a.trim().parse::<u32>().map_err(|_| WHY)?, b.trim().parse::<u32>().map_err(|_| WHY)?);
        if first < MIN_UID || first > last || last > MAX_UID {
            return Err(WHY);
        }
        Ok(UidRange { first, last })
    }
}

/// The lowest uid of `range` not in `taken` and not `refused`; None when there is none. The last
/// uid of the range is the router's ([`router_id`]), never an app's.
pub fn pick(range: UidRange, taken: &BTreeSet<u32>, refused: &dyn Fn(u32) -> bool) -> Option<u32> {
    (range.first..range.last).find(|uid| !taken.contains(uid) && !refused(*uid))
}

/// The ids (third field) of an `/etc/passwd` or `/etc/group` text.
pub fn ids_in(text: &str) -> BTreeSet<u32> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split(':').nth(2)?.trim().parse().ok())
        .collect()
}

/// The uids of `/etc/passwd` and gids of `/etc/group` (an app's gid is its uid, so either
/// refuses the number). Unreadable files count as empty.
pub fn system_ids() -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for file in ["/etc/passwd", "/etc/group"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            ids.extend(ids_in(&text));
        }
    }
    ids
}

/// Whether this process runs apps under per-app uids: root is within its reach. Either it is
/// root, or it is a worker the root daemon started for the home's owner: effective (and real)
/// uid the owner's, so everything it writes is the owner's as in single-user mode, and saved
/// uid 0, so it can still become root for the few steps that need it ([`with_root`]) and in
/// the child of every app command ([`drop_to`]). A child keeps nothing of it: exec copies the
/// effective uid into the saved one.
pub fn privileged() -> bool {
    nix::unistd::getresuid().is_ok_and(|ids| ids.effective.is_root() || ids.saved.is_root())
}

/// Runs `f` with effective uid and gid 0 on this thread only, then returns to the effective
/// ids it had (nothing to do when it is root already). For a worker with a saved uid 0
/// ([`privileged`]): chowning a build's dirs to its app, making a cgroup, signalling an app's
/// processes. Raw `setresuid`/`setresgid` calls, not glibc's, which would switch every thread
/// of the process: the slug packed on another thread meanwhile would be written as root, in
/// dirs the platform user then cannot write. Fails when root is out of reach.
pub fn with_root<T>(f: impl FnOnce() -> T) -> io::Result<T> {
    let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    if uid == 0 {
        return Ok(f());
    }
    set_thread_effective(0, 0)?;
    let out = f();
    set_thread_effective(uid, gid)?;
    Ok(out)
}

/// Sets this thread's effective uid and gid (the kernel keeps credentials per thread). Going to
/// root: the uid first (a saved uid 0 allows it), then the gid (root may); going back: the gid
/// first, while still root.
fn set_thread_effective(uid: u32, gid: u32) -> io::Result<()> {
    const KEEP: libc::c_long = -1;
    let call = |nr: libc::c_long, id: u32| {
        // SAFETY: setresuid/setresgid with integer arguments; -1 keeps that id.
        let r = unsafe { libc::syscall(nr, KEEP, id as libc::c_long, KEEP) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    if uid == 0 {
        call(libc::SYS_setresuid, 0)?;
        call(libc::SYS_setresgid, gid)
    } else {
        call(libc::SYS_setresgid, gid)?;
        call(libc::SYS_setresuid, uid)
    }
}

/// [`with_root`] when this process is [`privileged`], else `f` as it is (single-user mode,
/// where a delegated cgroup subtree or the user's own files need no root).
pub fn root_if_privileged<T>(f: impl FnOnce() -> T) -> io::Result<T> {
    if privileged() {
        with_root(f)
    } else {
        Ok(f())
    }
}

/// Who an app's processes run as in privileged mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUser {
    pub uid: u32,
    pub gid: u32,
    /// `USER` and `LOGNAME`: the app's name.
    pub name: String,
}

/// The one line `slipway status` prints about who apps run as, for a daemon of `daemon_uid`
/// (its user's name `daemon_user`), on a kernel with or without Landlock.
pub fn status_line(daemon_uid: u32, daemon_user: &str, range: UidRange, landlock: bool) -> String {
    let mut line = if daemon_uid == 0 {
        format!("per-app users: each app runs as its own uid from app_uids {range} (the daemon runs as root)")
    } else {
        format!(
            "single-user mode: apps run as {daemon_user}, like the daemon (per-app users need a root daemon)"
        )
    };
    if !landlock {
        line.push_str(if daemon_uid == 0 {
            "; Landlock missing: only file modes keep apps from slipway's files"
        } else {
            "; Landlock missing: apps are not isolated from each other nor from slipway"
        });
    }
    line
}

/// `app`'s user when this process is privileged (its uid allocated now if it had none), None
/// in single-user mode. Refuses a uid that a system user or group has.
pub fn for_app(
    conn: &rusqlite::Connection,
    app: &AppName,
    range: UidRange,
) -> anyhow::Result<Option<AppUser>> {
    if !privileged() {
        return Ok(None);
    }
    let system = system_ids();
    let uid = crate::store::app_uids::ensure(conn, app, range, &|id| system.contains(&id))?;
    if system.contains(&uid) {
        anyhow::bail!(
            "{app}'s uid {uid} is also a user or group of /etc/passwd or /etc/group; remove that entry or give {app} a new uid (apps:rename keeps it, apps:destroy frees it)"
        );
    }
    Ok(Some(AppUser { uid, gid: uid, name: app.to_string() }))
}

/// Who the router runs as after binding its sockets, when started as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    /// The home's owner (install.sh's platform user): it may write `run/` and `logs/` as a
    /// router always did. Otherwise (a root-owned home) it is the router's own uid
    /// ([`router_id`]), which may write nothing of the home and read only `certs/` (its group):
    /// the daemon keeps `run/routes.json` for it, its log is not rotated.
    pub owns_home: bool,
}

/// The router's user for a home owned by `owner` (`owner_user`: its name and primary gid,
/// when it has a passwd entry); `own` is the router's own uid for a root-owned home
/// ([`router_id`]). Pure: see [`router_user`].
pub fn choose_router_user(owner: u32, owner_user: Option<(String, u32)>, own: u32) -> RouterUser {
    match owner_user {
        Some((name, gid)) if owner != 0 => RouterUser { uid: owner, gid, name, owns_home: true },
        _ if owner != 0 => {
            RouterUser { uid: owner, gid: owner, name: format!("uid {owner}"), owns_home: true }
        }
        _ => RouterUser { uid: own, gid: own, name: format!("uid {own}"), owns_home: false },
    }
}

/// Who the router drops to when this process is root: the home's owner, or its own uid (the
/// last of `app_uids`) for a root-owned home. None when not root (the router runs as the daemon's user, as it is).
pub fn router_user(home: &Path, range: UidRange) -> Option<RouterUser> {
    use nix::unistd::{Uid, User};
    if !privileged() {
        return None;
    }
    let owner = std::fs::metadata(home).map(|m| m.uid()).unwrap_or(0);
    let owner_user = User::from_uid(Uid::from_raw(owner)).ok().flatten().map(|u| (u.name, u.gid.as_raw()));
    Some(choose_router_user(owner, owner_user, router_id(range)))
}

/// The uid (and gid) the router runs as on a root-owned home: the last of `app_uids`, which is
/// never given to an app ([`pick`]). A uid of its own rather than `nobody`'s, so the files it
/// must read (`certs/`, see `crate::certs::router_group`) can be of its group and no one else's.
pub fn router_id(range: UidRange) -> u32 {
    range.last
}

/// Between fork and exec: root again first when only the saved uid is root (a worker, see
/// [`privileged`]), then no supplementary groups, then `gid`, then `uid` (real, effective and
/// saved), so nothing of root is left. Raw syscalls only (async-signal-safe).
pub fn drop_to(uid: u32, gid: u32) -> io::Result<()> {
    const KEEP: libc::uid_t = libc::uid_t::MAX;
    // SAFETY: plain syscalls with integer arguments (setgroups with an empty list).
    unsafe {
        if libc::geteuid() != 0 && libc::setresuid(KEEP, 0, KEEP) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Changes the owner of `path` and everything under it to `uid:gid`, never following a link
/// (links themselves are changed, with `lchown`). `path` itself last, so a tree whose top has
/// the new owner was changed whole (a walk cut short is redone next time: see [`hand_tree`]).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// The mode a file or dir lent to an app's uid gets, its group being the platform's: the
/// platform's group may read everything and pass dirs, never write (tools such as NLTK's
/// downloader refuse a group-writable data dir), and dirs are set-gid, so what the app creates
/// in them is of that group too (app commands run with umask 027, see `job::Job`). So a
/// platform that is not root (a worker) still reads the build between the app's commands; it
/// writes into them as root. Set-id bits of files are dropped.
pub fn lent_mode(is_dir: bool, mode: u32) -> u32 {
    let mode = mode & 0o757;
    if is_dir {
        mode | 0o2050
    } else {
        mode | 0o040 | ((mode & 0o100) >> 3)
    }
}

/// Lends `path` and everything under it to `uid`, group `platform_gid` with [`lent_mode`].
/// Never follows a link, not even one swapped in meanwhile ([`crate::fsutil::walk_tree_nofollow`]);
/// `path` itself last.
pub fn lend_tree(path: &Path, uid: u32, platform_gid: u32) -> io::Result<()> {
    crate::fsutil::walk_tree_nofollow(path, &mut |node| {
        node.chown(uid, platform_gid)?;
        // After the chown, which clears set-id bits.
        node.chmod(lent_mode(node.is_dir(), node.mode))
    })
}

/// [`lend_tree`] unless `path` is owned by `uid:platform_gid` already (its top is changed
/// last, so then all of it is): the app's build cache, handed to it once and its own for good.
pub fn hand_tree(path: &Path, uid: u32, platform_gid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() == uid && meta.gid() == platform_gid {
        return Ok(());
    }
    lend_tree(path, uid, platform_gid)
}

/// Takes what an app's build wrote back from it: `path` and everything under it owned by
/// `owner` (the platform), group `gid` (the app's) with [`release_mode`]: the app may still
/// read it (a dyno, the release phase, the probe of its environment), never write it, nor
/// chmod it (it no longer owns it). Never follows a link, not even one an app's process swaps
/// in meanwhile ([`crate::fsutil::walk_tree_nofollow`]). `path` itself last.
pub fn take_back(path: &Path, owner: u32, gid: u32) -> io::Result<()> {
    crate::fsutil::walk_tree_nofollow(path, &mut |node| {
        node.chown(owner, gid)?;
        let mode = release_mode(node.mode & 0o7777);
        if node.is_link() || node.mode & 0o7777 == mode {
            return Ok(());
        }
        node.chmod(mode)
    })
}

/// The mode a server-wide tool's file or dir gets so that every app's build may use it: the
/// owner's read and execute bits copied to the group and others; only the owner writes.
pub fn shared_mode(mode: u32) -> u32 {
    let rx = mode & 0o500;
    (mode & 0o700) | (rx >> 3) | (rx >> 6)
}

/// Opens `path` (a tool in `cache/.tools`, installed by the platform) and everything in it to
/// every uid with [`shared_mode`]. `path` itself is changed last, so unless `again` (the step
/// that wrote into it just ran) a `path` that is open already was opened whole and is left
/// alone: cheap at every build for the tools installed before. Never follows a link.
pub fn open_tree(path: &Path, again: bool) -> io::Result<()> {
    fn walk(path: &Path) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path())?;
            }
        }
        let mode = shared_mode(meta.mode());
        if meta.mode() & 0o7777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
    let meta = std::fs::symlink_metadata(path)?;
    if !again && (meta.file_type().is_symlink() || meta.mode() & 0o7777 == shared_mode(meta.mode())) {
        return Ok(());
    }
    walk(path)
}

/// Lets app group `gid` into `dir` (`releases/<app>`, `envs/<app>`: read and pass, never
/// write) and every uid through the dirs above it up to the home ([`open_passage`]). Never
/// follows a link.
pub fn open_app_dir(home: &Path, dir: &Path, gid: u32) -> io::Result<()> {
    for above in dir.ancestors().skip(1).take_while(|d| d.starts_with(home)) {
        open_passage(above)?;
    }
    give_to_group(dir, gid, false)
}

/// Whether a process of `uid`:`gid` (no supplementary groups) may search (pass through) a dir
/// with this mode, owner and group: the kernel's rule (owner bits for the owner, else group
/// bits for the group, else other bits).
pub fn may_search(uid: u32, gid: u32, mode: u32, owner: u32, group: u32) -> bool {
    let bit = if owner == uid {
        0o100
    } else if group == gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// The first dir on the way to `path` (itself included) that `uid`:`gid` may not pass through;
/// None when it can reach it. Dirs that cannot be read are left to the kernel to decide.
pub fn first_closed(path: &Path, uid: u32, gid: u32) -> Option<std::path::PathBuf> {
    let mut ancestors: Vec<&Path> = path.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        let closed = meta.is_dir() && !may_search(uid, gid, meta.mode(), meta.uid(), meta.gid());
        closed.then(|| dir.to_path_buf())
    })
}

/// Makes `dir` traversable by everyone (`o+x`, nothing else added): the home, `releases/` and
/// `dynos/`, which an app's uid must pass through to reach its own dirs. Never follows a link.
pub fn open_passage(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.mode() & 0o001 != 0 {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o001))
}

/// The mode a file or dir of a release gets for its app's group: the owner's read and execute
/// bits copied to the group, no group write, nothing for others.
pub fn release_mode(mode: u32) -> u32 {
    let owner_rx = (mode >> 3) & 0o050;
    (mode & 0o700) | owner_rx
}

/// Lets app group `gid` read (never write) `release_dir` of `releases` (`releases/<app>`): the
/// home and `releases/` traversable, `releases/<app>` and every entry of the release tree given
/// to the group with [`release_mode`]. Walked at each dyno start (a rename rewrites a release's
/// venv, a restore makes release dirs), changing only what differs. The files stay the
/// platform's: the app cannot change them. Never follows a link.
pub fn open_release(home: &Path, releases: &Path, release_dir: &Path, gid: u32) -> io::Result<()> {
    for dir in [home, releases.parent().unwrap_or(home)] {
        open_passage(dir)?;
    }
    give_to_group(releases, gid, false)?;
    give_to_group(release_dir, gid, true)
}

fn give_to_group(path: &Path, gid: u32, recursive: bool) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.gid() != gid {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    let mode = release_mode(meta.mode() & 0o7777);
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    if recursive && meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_to_group(&entry?.path(), gid, true)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_parse_within_bounds() {
        for (text, want) in [
            ("200000-299999", Some(UidRange { first: 200_000, last: 299_999 })),
            (" 1000 - 1000 ", Some(UidRange { first: 1000, last: 1000 })),
            ("999-2000", None),
            ("3000-2000", None),
            ("1000-2000000001", None),
            ("1000", None),
            ("a-b", None),
            ("-5-10", None),
        ] {
            assert_eq!(text.parse::<UidRange>().ok(), want, "{text}");
        }
        assert_eq!(UidRange { first: 5, last: 9 }.to_string(), "5-9");
    }

    #[test]
    fn the_lowest_free_uid_not_of_the_system_is_picked() {
        // 15: the router's, never an app's.
        let range = UidRange { first: 10, last: 15 };
        let taken: BTreeSet<u32> = [10, 12].into();
        let system = |uid: u32| uid == 11;
        assert_eq!(pick(range, &taken, &system), Some(13));
        assert_eq!(pick(range, &BTreeSet::new(), &|_| false), Some(10));
        let all: BTreeSet<u32> = (10..=14).collect();
        assert_eq!(pick(range, &all, &|_| false), None);
        assert_eq!(pick(range, &taken, &|uid| uid >= 13), Some(11));
        assert_eq!(pick(range, &taken, &|uid| uid == 11 || uid >= 13), None);
    }

    #[test]
    fn ids_are_read_from_passwd_and_group_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment:x:5:\nbad line\nslipway:x:998:998::/var/lib/slipway:/bin/sh\n";
        assert_eq!(ids_in(passwd), [0, 998].into());
        assert_eq!(ids_in("sudo:x:27:alice,bob\n"), [27].into());
    }

    #[test]
    fn releases_are_given_to_the_group_read_only() {
        for (mode, want) in [
            (0o700, 0o750),  // dirs: traversable by the app
            (0o600, 0o640),  // files: readable
            (0o755, 0o750),  // others lose everything, the group never writes
            (0o4755, 0o750), // no set-id bits
            (0o000, 0o000),
            (0o640, 0o640),
        ] {
            assert_eq!(release_mode(mode), want, "{mode:o}");
        }
    }

    #[test]
    fn what_is_lent_stays_readable_by_the_platforms_group() {
        for (is_dir, mode, want) in [
            (true, 0o700, 0o2750), // dirs: the platform's group passes and reads; set-gid
            (true, 0o775, 0o2755), // never writes
            (false, 0o600, 0o640), // files: read
            (false, 0o660, 0o640),
            (false, 0o700, 0o750),  // executables stay executable
            (false, 0o4755, 0o755), // no set-id bits
            (false, 0o000, 0o040),
        ] {
            assert_eq!(lent_mode(is_dir, mode), want, "{mode:o}");
        }
    }

    #[test]
    fn tools_are_opened_to_every_uid_read_only() {
        for (mode, want) in [
            (0o700, 0o755),
            (0o600, 0o644),
            (0o500, 0o555),
            (0o644, 0o644),
            (0o666, 0o644),  // only the owner writes
            (0o4755, 0o755), // no set-id bits
            (0o000, 0o000),
        ] {
            assert_eq!(shared_mode(mode), want, "{mode:o}");
        }
    }

    #[test]
    fn search_permission_follows_owner_then_group_then_others() {
        for (uid, gid, mode, owner, group, want) in [
            (5, 5, 0o700, 5, 0, true),
            (5, 5, 0o070, 5, 5, false), // the owner's bits decide for the owner
            (5, 5, 0o710, 0, 5, true),
            (5, 5, 0o701, 0, 5, false), // the group's bits decide for the group
            (5, 5, 0o711, 0, 0, true),
            (5, 5, 0o770, 0, 0, false),
        ] {
            assert_eq!(may_search(uid, gid, mode, owner, group), want, "{mode:o} {owner}:{group}");
        }
    }

    #[test]
    fn the_router_drops_to_the_homes_owner_else_its_own_uid() {
        let owner = choose_router_user(998, Some(("slipway".into(), 997)), 299_999);
        assert_eq!(owner, RouterUser { uid: 998, gid: 997, name: "slipway".into(), owns_home: true });
        let unnamed = choose_router_user(4242, None, 299_999);
        assert_eq!((unnamed.uid, unnamed.gid, unnamed.owns_home), (4242, 4242, true));
        let root_home = choose_router_user(0, Some(("root".into(), 0)), 299_999);
        assert_eq!(
            root_home,
            RouterUser { uid: 299_999, gid: 299_999, name: "uid 299999".into(), owns_home: false }
        );
        assert_eq!(router_id(UidRange { first: 200_000, last: 299_999 }), 299_999);
    }

    #[test]
    fn status_names_the_mode() {
        let range = UidRange { first: 200_000, last: 299_999 };
        assert_eq!(
            status_line(0, "root", range, true),
            "per-app users: each app runs as its own uid from app_uids 200000-299999 (the daemon runs as root)"
        );
        assert!(status_line(1000, "alice", range, true).starts_with("single-user mode: apps run as alice"));
        assert!(status_line(0, "root", range, false)
            .ends_with("; Landlock missing: only file modes keep apps from slipway's files"));
        assert!(status_line(1000, "alice", range, false)
            .ends_with("not isolated from each other nor from slipway"));
    }
}
