//! Memory, process and CPU limits through cgroupfs, written directly (no daemon, no library).
//!
//! Every dyno runs in a cgroup of its own, `<root>/slipway-<home hash>/<app>/<dyno id>`; a
//! build in `<root>/slipway-<home hash>/<app>/build-<pid>`. The home hash keeps several homes
//! (and parallel tests) apart. Two layouts are supported:
//! - cgroup v2 (production boxes): one hierarchy; the `memory`, `pids` and `cpu` controllers
//!   are enabled down the path in `cgroup.subtree_control`. `<root>` is the subtree systemd
//!   delegated to the daemon's unit (`Delegate=yes`; the nearest cgroup above the daemon's own,
//!   from `/proc/self/cgroup`, that carries systemd's `trusted.delegate` or `user.delegate`
//!   marker) when systemd started the daemon in a leaf of it (`DelegateSubgroup=daemon`), else
//!   the mount point. See [`v2_place`].
//! - cgroup v1, where only v1 has the memory and pids controllers: one directory per controller
//!   hierarchy (`memory`, `pids`, and `cpu` if mounted), each at that hierarchy's mount point.
//!
//! Limits (Heroku's model): the hard memory limit is twice the quota (v1
//! `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` where swap is accounted; v2
//! `memory.max`, `memory.swap.max = 0` and `memory.oom.group = 1`), so the kernel OOM-kills
//! there (R15); the quota itself
//! is only watched (R14, see [`MemoryWatch`]): `memory.high` would throttle, which is not
//! Heroku's R14. `pids.max` caps the processes, and the CPU weight is the default for every
//! dyno (`cpu.shares` 1024 / `cpu.weight` 100), so dynos share the CPU equally.
//!
//! A new process enters its cgroup before its first instruction and without the kernel's
//! global threadgroup lock where it can: see [`Entry`] (dynos: cloned straight into a v2
//! cgroup) and [`join_file`] (v1: `tasks`).
//!
//! Parsing and decisions are pure functions with table tests; the effectful parts (mkdir,
//! writes, rmdir, the clone) are small and at the end of the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Pure: mounts, layout, sizes, memory files, the R14/R15 decision
// ---------------------------------------------------------------------------------------------

/// Where the cgroup filesystems are mounted, from `/proc/self/mountinfo`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// The first cgroup2 mount.
    pub v2: Option<PathBuf>,
    /// The cgroup that mount shows at its mount point (mountinfo's ROOT field: `/`, or the
    /// cgroup a container's view starts at), as `/proc/self/cgroup` paths spell it.
    pub v2_mount_root: String,
    /// v1 controller name → mount point of its hierarchy.
    pub v1: BTreeMap<String, PathBuf>,
}

/// Parses `/proc/self/mountinfo`: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS] - FSTYPE SRC SUPEROPTS`.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut fields = left.split_whitespace();
        let (Some(mount_root), Some(point)) = (fields.nth(3), fields.next()) else { continue };
        let mut right = right.split_whitespace();
        let (Some(fstype), _, Some(superopts)) = (right.next(), right.next(), right.next()) else { continue };
        let point = PathBuf::from(unescape_mount(point));
        match fstype {
            "cgroup2" if mounts.v2.is_none() => {
                mounts.v2 = Some(point);
                mounts.v2_mount_root = unescape_mount(mount_root);
            }
            "cgroup" => {
                for opt in superopts.split(',') {
                    if matches!(opt, "memory" | "pids" | "cpu") {
                        mounts.v1.entry(opt.to_string()).or_insert_with(|| point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.clone().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&code, 8) {
                out.push(byte as char);
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Which cgroupfs layout slipway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2 { root: PathBuf },
    V1 { memory: PathBuf, pids: PathBuf, cpu: Option<PathBuf> },
}

/// Picks the layout: v2 when its root offers `memory` and `pids` (`controllers` is the text of
/// its `cgroup.controllers`), else v1 when both controllers are mounted there; else why not.
pub fn choose_layout(mounts: &Mounts, v2_controllers: Option<&str>) -> Result<Layout, String> {
    if let (Some(root), Some(controllers)) = (&mounts.v2, v2_controllers) {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            return Ok(Layout::V2 { root: root.clone() });
        }
    }
    match (mounts.v1.get("memory"), mounts.v1.get("pids")) {
        (Some(memory), Some(pids)) => {
            Ok(Layout::V1 { memory: memory.clone(), pids: pids.clone(), cpu: mounts.v1.get("cpu").cloned() })
        }
        _ if mounts.v2.is_some() => Err("the cgroup v2 root offers no memory and pids controllers".into()),
        _ => Err("no cgroup with the memory and pids controllers is mounted".into()),
    }
}

/// The leaf a daemon in its delegated cgroup moves into (v2's "no internal processes" rule).
pub const DAEMON_LEAF: &str = "daemon";

/// The v2 cgroup path of a process, from its `/proc/PID/cgroup` text (the `0::PATH` line).
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim_end)
}

/// Where slipway makes its v2 cgroups: `base`, relative to the cgroup2 mount point (empty: the
/// mount point itself), and for a delegated base the leaf (relative too) that whatever still
/// runs in `base` itself must move into before controllers can be enabled in `base` (v2's "no
/// internal processes" rule): after an upgrade, the dynos and router of the daemon that ran as
/// the platform user, which systemd had started there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Place {
    pub base: PathBuf,
    pub leaf: Option<PathBuf>,
}

/// Decides [`V2Place`] from the cgroup2 mount's root (`Mounts::v2_mount_root`), the caller's
/// `/proc/self/cgroup` text and `delegated`, which says whether a cgroup (relative to the mount
/// point) carries systemd's delegation marker. The nearest marked cgroup, walking up from the
/// caller's own:
/// - above it (the daemon in `<unit>/daemon`, where `DelegateSubgroup=daemon` starts it, a shim
///   or build it started, a dyno, the unit's `.control`): that one is the base, `<base>/daemon`
///   the leaf;
/// - the caller's own cgroup (a systemd without `DelegateSubgroup=`, before 254, starts the
///   daemon in the unit's cgroup itself, and would start the next one there too, which v2
///   refuses once controllers are enabled there for the dynos: the daemon could not restart
///   while dynos run), or none (no systemd, a root shell's session, a container's root, a
///   cgroup outside the mount's view): the mount point, as without delegation.
pub fn v2_place(mount_root: &str, proc_cgroup: &str, delegated: &dyn Fn(&Path) -> bool) -> V2Place {
    let top = V2Place { base: PathBuf::new(), leaf: None };
    let Some(own) = v2_path(proc_cgroup) else { return top };
    let own = own.split(" (deleted)").next().unwrap_or(own);
    let root = mount_root.trim_end_matches('/');
    let Some(rel) = own.strip_prefix(root).filter(|r| r.is_empty() || r.starts_with('/')) else { return top };
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return top;
    }
    let Some(base) = rel.ancestors().filter(|a| !a.as_os_str().is_empty()).find(|a| delegated(a)) else {
        return top;
    };
    if base == rel {
        return top;
    }
    V2Place { base: base.to_path_buf(), leaf: Some(base.join(DAEMON_LEAF)) }
}

impl Layout {
    pub fn describe(&self) -> String {
        match self {
            Layout::V2 { root } => format!("v2 at {}", root.display()),
            Layout::V1 { memory, cpu, .. } => {
                let base = memory.parent().unwrap_or(memory);
                let cpu = if cpu.is_some() { ", cpu" } else { "" };
                format!("v1 (memory, pids{cpu}) at {}", base.display())
            }
        }
    }

    /// The cgroup at `rel` (relative to slipway's roots) in this layout.
    pub fn group(&self, rel: &Path) -> Cgroup {
        match self {
            Layout::V2 { root } => Cgroup { v2: true, root: vec![root.clone()], rel: rel.to_path_buf() },
            Layout::V1 { memory, pids, cpu } => {
                let mut roots = vec![memory.clone(), pids.clone()];
                roots.extend(cpu.clone());
                Cgroup { v2: false, root: roots, rel: rel.to_path_buf() }
            }
        }
    }
}

/// `slipway-<16 hex digits>`: one top-level cgroup per home (FNV-1a of its canonical path, so
/// the daemon, the hook and the CLI agree however each was given the home).
pub fn home_dir_name(home: &Path) -> String {
    let canonical = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("slipway-{hash:016x}")
}

/// A dyno's cgroup, relative to the roots.
pub fn dyno_rel(home: &Path, app: &str, dyno_id: i64) -> PathBuf {
    Path::new(&home_dir_name(home)).join(app).join(dyno_id.to_string())
}

/// A build's cgroup (one per building process), relative to the roots.
pub fn build_rel(home: &Path, app: &str, pid: u32) -> PathBuf {
    Path::new(&home_dir_name(home)).join(app).join(format!("build-{pid}"))
}

/// Smallest and largest memory quota accepted.
pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_MEMORY: u64 = 1 << 40;

/// Parses a memory size: `512M`, `1G`, `1.5G`, `512MB`, `2GB`, or a bare number of megabytes;
/// 16M to 1T.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let (number, unit) = match upper.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => upper.split_at(i),
        None => (upper.as_str(), "M"),
    };
    let mult: f64 = match unit.trim() {
        "M" | "MB" | "MIB" => (1u64 << 20) as f64,
        "G" | "GB" | "GIB" => (1u64 << 30) as f64,
        _ => return Err(format!("'{t}' is not a memory size such as 512M or 1G")),
    };
    let value: f64 = number.parse().map_err(|_| format!("'{t}' is not a memory size such as 512M or 1G"))?;
    let bytes = (value * mult).round();
    if !bytes.is_finite() || bytes < MIN_MEMORY as f64 || bytes > MAX_MEMORY as f64 {
        return Err(format!("'{t}' is out of range: a memory size must be from 16M to 1024G"));
    }
    Ok(bytes as u64)
}

/// `512M`, `1G`, `1.5G`: the shortest of Heroku's spellings.
pub fn format_size(bytes: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    if bytes >= G && bytes.is_multiple_of(G) {
        format!("{}G", bytes / G)
    } else if bytes >= G && (bytes * 10).is_multiple_of(G) {
        format!("{:.1}G", bytes as f64 / G as f64)
    } else if bytes.is_multiple_of(M) {
        format!("{}M", bytes / M)
    } else {
        format!("{:.1}M", bytes as f64 / M as f64)
    }
}

/// One value of a flat keyed file (`memory.stat`, `memory.events`, `memory.oom_control`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(key)).then(|| words.next()?.parse().ok()).flatten()
    })
}

/// A reading of a dyno's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemorySample {
    /// What the cgroup is charged (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage: u64,
    /// Page cache the kernel can drop at once (`inactive_file`, v1 `total_inactive_file`).
    pub inactive_file: u64,
    /// OOM kills so far (v2 `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`);
    /// None on a kernel without the counter.
    pub oom_kills: Option<u64>,
    /// v1 `memory.failcnt`: times the limit was hit (the fallback without `oom_kills`).
    pub failcnt: u64,
    /// The most the cgroup was ever charged (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`;
    /// 0 when the kernel does not say): what an R15 reports, read after the kill.
    pub peak: u64,
}

impl MemorySample {
    /// Parses the files of one layout: `usage` (`memory.current` / `memory.usage_in_bytes`),
    /// `stat` (`memory.stat`), `events` (v2 `memory.events`, v1 `memory.oom_control`) and v1's
    /// `failcnt`.
    pub fn parse(v2: bool, usage: &str, stat: &str, events: &str, failcnt: Option<&str>) -> Option<Self> {
        let inactive = if v2 { keyed(stat, "inactive_file") } else { keyed(stat, "total_inactive_file") };
        Some(MemorySample {
            usage: usage.trim().parse().ok()?,
            inactive_file: inactive.unwrap_or(0),
            oom_kills: keyed(events, "oom_kill"),
            failcnt: failcnt.and_then(|f| f.trim().parse().ok()).unwrap_or(0),
            peak: 0,
        })
    }

    /// Memory the dyno really holds: the charge minus page cache it could drop (what
    /// `docker stats` and the kubelet call the working set).
    pub fn working_set(&self) -> u64 {
        self.usage.saturating_sub(self.inactive_file)
    }
}

/// What the shim does after a memory reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Above the quota: log `Error R14 (Memory quota exceeded)` (the dyno keeps running).
    R14 {
        used: u64,
    },
    /// The kernel OOM-killed in the dyno (at twice the quota): log `Error R15 (Memory quota
    /// vastly exceeded)` and kill the dyno.
    R15 {
        used: u64,
    },
}

/// How often R14 is logged while a dyno stays above its quota (Heroku: about every 20 s).
pub const R14_EVERY: Duration = Duration::from_secs(20);

/// The R14/R15 decision for one dyno, fed one [`MemorySample`] at a time.
#[derive(Debug, Clone)]
pub struct MemoryWatch {
    pub quota: u64,
    last_r14: Option<Instant>,
    /// OOM kills (or failcnt) when the watch started: only later ones are this dyno's R15.
    oom_base: Option<u64>,
    failcnt_base: u64,
    r15: bool,
}

impl MemoryWatch {
    pub fn new(quota: u64) -> Self {
        MemoryWatch { quota, last_r14: None, oom_base: None, failcnt_base: 0, r15: false }
    }

    /// The first reading sets the baseline of the counters.
    pub fn baseline(&mut self, sample: &MemorySample) {
        self.oom_base = sample.oom_kills;
        self.failcnt_base = sample.failcnt;
    }

    /// Decides what a reading means. `main_killed`: the dyno's main process died of SIGKILL
    /// (only used where the kernel has no OOM kill counter). R15 is reported once.
    pub fn step(&mut self, sample: &MemorySample, now: Instant, main_killed: bool) -> Verdict {
        let used = sample.working_set();
        if self.r15 {
            return Verdict::Fine;
        }
        let oom = match (sample.oom_kills, self.oom_base) {
            (Some(now), Some(base)) => now > base,
            (Some(now), None) => now > 0,
            (None, _) => main_killed && sample.failcnt > self.failcnt_base,
        };
        if oom {
            self.r15 = true;
            return Verdict::R15 { used: used.max(sample.peak) };
        }
        if used > self.quota {
            if self.last_r14.is_none_or(|t| now.duration_since(t) >= R14_EVERY) {
                self.last_r14 = Some(now);
                return Verdict::R14 { used };
            }
        } else {
            self.last_r14 = None;
        }
        Verdict::Fine
    }
}

/// `Process running mem=100M(156.3%)`: Heroku's line before an R14/R15.
pub fn running_line(used: u64, quota: u64) -> String {
    let percent = if quota == 0 { 0.0 } else { used as f64 * 100.0 / quota as f64 };
    format!("Process running mem={}M({percent:.1}%)", used >> 20)
}

/// The limits of one cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The memory quota; the hard limit is twice this.
    pub memory: u64,
    pub max_pids: u32,
}

/// The files and values to write for `limits`, in order (v1 memsw only after the memory limit
/// it must not be below; optional files may be missing).
pub fn limit_writes(v2: bool, limits: Limits) -> Vec<(&'static str, &'static str, String, bool)> {
    let hard = (limits.memory.saturating_mul(2)).to_string();
    if v2 {
        vec![
            ("memory", "memory.max", hard, true),
            ("memory", "memory.swap.max", "0".into(), false),
            // An OOM kills the whole dyno at once (Heroku's R15 stops the dyno).
            ("memory", "memory.oom.group", "1".into(), false),
            ("pids", "pids.max", limits.max_pids.to_string(), true),
            ("cpu", "cpu.weight", "100".into(), false),
        ]
    } else {
        vec![
            ("memory", "memory.limit_in_bytes", hard.clone(), true),
            ("memory", "memory.memsw.limit_in_bytes", hard, false),
            ("pids", "pids.max", limits.max_pids.to_string(), true),
            ("cpu", "cpu.shares", "1024".into(), false),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Effects: detection, creating, joining, reading, removing
// ---------------------------------------------------------------------------------------------

/// The layout of this machine's cgroups (whether or not this process may write them): enough
/// to read a dyno's memory.
pub fn find_layout() -> Result<Layout, String> {
    locate("self").map(|(layout, _)| layout)
}

/// [`find_layout`] as process `pid` (the daemon) sees it: on v2 under systemd the daemon's
/// cgroups are below its unit's, which a command run from a shell is not in.
pub fn find_layout_of(pid: i32) -> Result<Layout, String> {
    locate(&pid.to_string()).map(|(layout, _)| layout)
}

/// The layout as process `pid` ("self" or a number) sees it, and on v2 the leaf (absolute) it
/// must move into first (see [`v2_place`]).
fn locate(pid: &str) -> Result<(Layout, Option<PathBuf>), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc: {e}"))?;
    let mut mounts = parse_mountinfo(&mountinfo);
    let mut leaf = None;
    if let Some((mount, place)) = place_v2(&mounts, pid) {
        leaf = place.leaf.map(|l| mount.join(l));
        mounts.v2 = Some(mount.join(place.base));
    }
    let controllers =
        mounts.v2.as_ref().and_then(|r| std::fs::read_to_string(r.join("cgroup.controllers")).ok());
    let layout = choose_layout(&mounts, controllers.as_deref())?;
    Ok((layout.clone(), leaf.filter(|_| matches!(layout, Layout::V2 { .. }))))
}

/// The cgroup2 mount point and [`v2_place`] for process `pid` (a number), None without v2.
pub fn v2_place_of(pid: i32) -> Option<(PathBuf, V2Place)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    place_v2(&parse_mountinfo(&mountinfo), &pid.to_string())
}

fn place_v2(mounts: &Mounts, pid: &str) -> Option<(PathBuf, V2Place)> {
    let mount = mounts.v2.clone()?;
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let place = v2_place(&mounts.v2_mount_root, &own, &|rel| is_delegated(&mount.join(rel)));
    Some((mount, place))
}

/// Whether systemd delegated the cgroup at `dir` (`Delegate=yes`): the `trusted.delegate`
/// extended attribute (readable by root), else `user.delegate`, is `1`.
fn is_delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: getxattr writes at most value.len() bytes into value; both strings are
        // NUL-terminated.
        let n =
            unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        n > 0 && value[0] == b'1'
    })
}

/// Whether this process can put dynos into cgroups, and why not. On v2 below a cgroup systemd
/// delegated, whatever still runs in that cgroup itself (after an upgrade, the dynos and router
/// of a daemon that was not root) first moves into `<delegated>/daemon`, so that controllers
/// can be enabled for the subtree.
pub fn detect() -> Result<Layout, String> {
    if std::env::var("SLIPWAY_CGROUPS").is_ok_and(|v| v == "0") {
        return Err("turned off by SLIPWAY_CGROUPS=0".into());
    }
    let (layout, leaf) = locate("self")?;
    let probe = match &layout {
        Layout::V2 { root } => root.clone(),
        Layout::V1 { memory, .. } => memory.clone(),
    };
    if !writable(&probe) {
        return Err(format!("{} is not writable (not root, and no delegated subtree)", probe.display()));
    }
    if let Some(leaf) = leaf {
        enter_leaf(&probe, &leaf).map_err(|e| format!("moving into {}: {e}", leaf.display()))?;
    }
    Ok(layout)
}

/// Moves every process of v2 cgroup `base` into its child `leaf` (made if missing); nothing to
/// do when `base` holds none.
pub fn enter_leaf(base: &Path, leaf: &Path) -> io::Result<()> {
    let procs = std::fs::read_to_string(base.join("cgroup.procs"))?;
    let pids: Vec<&str> = procs.lines().map(str::trim).filter(|p| !p.is_empty()).collect();
    if pids.is_empty() {
        return Ok(());
    }
    mkdir(leaf)?;
    for pid in pids {
        match std::fs::write(leaf.join("cgroup.procs"), pid) {
            // Exited meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // By the effective ids (AT_EACCESS), not the real ones: a worker whose saved uid is root
    // asks while it is root again (`users::with_root`).
    // SAFETY: faccessat reads a NUL-terminated path and touches no memory of ours otherwise.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// One cgroup: its path under each hierarchy root (one root for v2; memory, pids and maybe cpu
/// for v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    v2: bool,
    root: Vec<PathBuf>,
    rel: PathBuf,
}

impl Cgroup {
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.root.iter().map(|r| r.join(&self.rel)).collect()
    }

    fn dir_for(&self, controller: &str) -> Option<PathBuf> {
        if self.v2 {
            return Some(self.root[0].join(&self.rel));
        }
        let i = match controller {
            "memory" => 0,
            "pids" => 1,
            _ => 2,
        };
        self.root.get(i).map(|r| r.join(&self.rel))
    }

    /// Creates the cgroup (and its parents) and sets its limits.
    pub fn create(&self, limits: Limits) -> io::Result<()> {
        for (root, dir) in self.root.iter().zip(self.dirs()) {
            if self.v2 {
                // Controllers must be enabled in every ancestor's subtree_control.
                let mut at = root.clone();
                for part in self.rel.iter() {
                    enable_controllers(&at)?;
                    at.push(part);
                    mkdir(&at)?;
                }
            } else {
                std::fs::create_dir_all(&dir)?;
            }
        }
        for (controller, file, value, required) in limit_writes(self.v2, limits) {
            let Some(dir) = self.dir_for(controller) else { continue };
            let path = dir.join(file);
            if !required && !path.exists() {
                continue;
            }
            std::fs::write(&path, &value)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Opens each hierarchy's join file ([`join_file`]) for writing: [`join_raw`] in a
    /// `pre_exec` then moves the new process in before it runs anything.
    pub fn open_join(&self) -> io::Result<Vec<File>> {
        self.dirs()
            .iter()
            .map(|d| std::fs::OpenOptions::new().write(true).open(d.join(join_file(self.v2))))
            .collect()
    }

    /// The processes in the cgroup now.
    pub fn procs(&self) -> Vec<i32> {
        let Some(dir) = self.dir_for("pids") else { return Vec::new() };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    pub fn pids_current(&self) -> Option<u64> {
        let dir = self.dir_for("pids")?;
        std::fs::read_to_string(dir.join("pids.current")).ok()?.trim().parse().ok()
    }

    pub fn memory(&self) -> Option<MemorySample> {
        let dir = self.dir_for("memory")?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let (sample, peak) = if self.v2 {
            let sample = MemorySample::parse(
                true,
                &read("memory.current"),
                &read("memory.stat"),
                &read("memory.events"),
                None,
            );
            (sample, read("memory.peak"))
        } else {
            let failcnt = read("memory.failcnt");
            let sample = MemorySample::parse(
                false,
                &read("memory.usage_in_bytes"),
                &read("memory.stat"),
                &read("memory.oom_control"),
                Some(&failcnt),
            );
            (sample, read("memory.max_usage_in_bytes"))
        };
        sample.map(|s| MemorySample { peak: peak.trim().parse().unwrap_or(0), ..s })
    }

    /// SIGKILLs every process in the cgroup (all of them its dyno's or build's, including those
    /// that left the process group).
    pub fn kill_all(&self) {
        for pid in self.procs() {
            // Gone already (ESRCH) is what we want.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    /// SIGKILLs everything in the cgroup and removes it, waiting (until `deadline`) for the
    /// processes to go; `reap` is called between attempts (a subreaper must reap its orphans
    /// before their cgroup empties). Then removes the app's and the home's directories if they
    /// are empty now.
    pub fn remove(&self, deadline: Instant, mut reap: impl FnMut()) -> io::Result<()> {
        loop {
            self.kill_all();
            reap();
            let mut busy = None;
            for dir in self.dirs() {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        busy = Some(io::Error::new(e.kind(), format!("removing {}: {e}", dir.display())))
                    }
                }
            }
            match busy {
                None => break,
                Some(e) if Instant::now() >= deadline => return Err(e),
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        for dir in self.dirs() {
            // The app's and the home's dirs go when this was their last child; another dyno's
            // cgroup in them keeps them (ENOTEMPTY/EBUSY), which is fine.
            for parent in dir.ancestors().skip(1).take(2) {
                if std::fs::remove_dir(parent).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The `cgroup.subtree_control` writes that give the children of a v2 cgroup memory, pids and
/// (if offered) cpu: `(controller, required)` for each one offered and not yet enabled.
pub fn controllers_to_enable(offered: &str, enabled: &str) -> Vec<(&'static str, bool)> {
    [("memory", true), ("pids", true), ("cpu", false)]
        .into_iter()
        .filter(|(c, _)| offered.split_whitespace().any(|o| o == *c))
        .filter(|(c, _)| !enabled.split_whitespace().any(|o| o == *c))
        .collect()
}

/// Enables memory, pids and cpu for the children of v2 cgroup `dir`. cpu is best effort (the
/// kernel refuses it while real-time threads run in a child); the CPU weight is then left out.
fn enable_controllers(dir: &Path) -> io::Result<()> {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    for (controller, required) in controllers_to_enable(&offered, &enabled) {
        match std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}")) {
            Err(e) if required => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("enabling {controller} in {}: {e}", dir.display()),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The file a new process writes `0` to, between fork and exec, to enter a cgroup.
///
/// v1: `tasks`, which moves only the calling thread. Between fork and exec the child has no
/// other thread, so that is the whole process; and the kernel (5.17 and later) moves the calling
/// thread alone without its global threadgroup lock, whose write side waits for an RCU grace
/// period: 0.1 ms per dyno start instead of 5–25 ms through `cgroup.procs` on this project's
/// test machine (docs/BENCHMARKS.md). v2 has no such file for domain cgroups (`cgroup.threads`
/// moves threads only within a threaded subtree): `cgroup.procs`.
pub fn join_file(v2: bool) -> &'static str {
    if v2 {
        "cgroup.procs"
    } else {
        "tasks"
    }
}

/// Moves the calling process into the cgroups whose join files ([`join_file`]) are open as
/// `fds`; it must have one thread (a child between fork and exec). Only
/// `write(2)`: safe between fork and exec.
pub fn join_raw(fds: &[RawFd]) -> io::Result<()> {
    for fd in fds {
        // SAFETY: write(2) on an fd we own with a 1-byte static buffer; async-signal-safe.
        let n = unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn raw_fds(files: &[File]) -> Vec<RawFd> {
    files.iter().map(AsRawFd::as_raw_fd).collect()
}

/// How a dyno's process enters its cgroup: on v2 it is created there (`clone3` with
/// `CLONE_INTO_CGROUP`, [`Entry::spawn`]); otherwise, and wherever the kernel refuses that
/// (before 5.7, a seccomp filter), it writes itself in between fork and exec ([`Entry::joiner`]).
///
/// Why: on v2 the write takes the kernel's global threadgroup lock, whose write side waits for
/// an RCU grace period (5–12 ms per write on this project's test machine), while a process
/// cloned into its cgroup never moves (0.1–0.3 ms). v1 gets the same gain from [`join_file`].
pub struct Entry {
    files: Vec<File>,
    /// The v2 cgroup's directory, for `CLONE_INTO_CGROUP`.
    dir: Option<File>,
    /// Set while [`Entry::spawn`] clones into the cgroup: the child then skips the write.
    cloned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A process started by [`Entry::spawn`]: its pid and the read ends of its stdout and stderr.
pub struct Spawned {
    pub pid: i32,
    pub stdout: File,
    pub stderr: File,
    /// It was cloned into its cgroup (else it wrote itself in, or there is no cgroup).
    pub cloned: bool,
}

impl Entry {
    /// Opens `cgroup`'s join files (and its directory on v2).
    pub fn open(cgroup: &Cgroup) -> io::Result<Entry> {
        let dir = match cgroup.v2 {
            true => Some(File::open(cgroup.root[0].join(&cgroup.rel))?),
            false => None,
        };
        Ok(Entry { files: cgroup.open_join()?, dir, cloned: Default::default() })
    }

    /// The `pre_exec` step that moves the child in, unless it was cloned there. Register it
    /// before any other step (it must run with the opener's privileges). Only an atomic load
    /// and `write(2)`: safe between fork and exec.
    pub fn joiner(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let (fds, cloned) = (raw_fds(&self.files), self.cloned.clone());
        move || match cloned.load(std::sync::atomic::Ordering::SeqCst) {
            true => Ok(()),
            false => join_raw(&fds),
        }
    }

    /// Starts `command` (whose `pre_exec` steps include [`Entry::joiner`]) with its stdout and
    /// stderr piped: cloned into the cgroup where it can be, else by `Command::spawn`.
    pub fn spawn(&self, command: &mut std::process::Command) -> io::Result<Spawned> {
        if let Some(dir) = &self.dir {
            self.cloned.store(true, std::sync::atomic::Ordering::SeqCst);
            let cloned = clone_into(command, dir);
            self.cloned.store(false, std::sync::atomic::Ordering::SeqCst);
            match cloned {
                Ok(spawned) => return Ok(spawned),
                Err(CloneError::Exec(err)) => return Err(err),
                Err(CloneError::Refused) => {}
            }
        }
        spawn_piped(command)
    }
}

/// `Command::spawn` with stdout and stderr piped, as a [`Spawned`].
pub fn spawn_piped(command: &mut std::process::Command) -> io::Result<Spawned> {
    use std::os::fd::OwnedFd;
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn()?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("the child's output was not piped"));
    };
    let (stdout, stderr) = (OwnedFd::from(stdout), OwnedFd::from(stderr));
    Ok(Spawned { pid: child.id() as i32, stdout: stdout.into(), stderr: stderr.into(), cloned: false })
}

#[derive(Debug)]
enum CloneError {
    /// `clone3` refused (or this process has threads): nothing was started.
    Refused,
    /// The child could not run the command (as `Command::spawn` would report it).
    Exec(io::Error),
}

/// From linux/sched.h (libc's constant is an `i32`, which it does not fit).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks with `clone3(CLONE_INTO_CGROUP)` into the v2 cgroup open as `dir`; the child runs
/// `Command::exec`, which does what `spawn` does between fork and exec (stdio, ids, working
/// dir, process group, `pre_exec` steps) and execs. stdout and stderr are new pipes whose read
/// ends are returned; a failure to exec comes back through a close-on-exec pipe, as in
/// `Command::spawn`.
///
/// Sound only in a process with one thread (checked: otherwise `Refused`): the child, a copy made
/// without glibc's fork handlers, may then allocate, and no lock can be held by a thread that
/// does not exist in it. glibc's cached thread id of the child stays the parent's; nothing on
/// this path reads it (fd and id syscalls, `execvp`).
fn clone_into(command: &mut std::process::Command, dir: &File) -> Result<Spawned, CloneError> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count).unwrap_or(0);
    if threads != 1 {
        return Err(CloneError::Refused);
    }
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|_| CloneError::Refused);
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (fail_r, fail_w) = pipe()?;
    command.stdout(out_w).stderr(err_w);
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a valid, fully initialized clone_args of the size given; no
    // CLONE_VM, so the child gets a copy of this single-threaded process (see above).
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, size_of::<CloneArgs>()) };
    if pid == 0 {
        // The child: exec, or report why not and exit. Never returns (nor unwinds) into the
        // caller's code.
        let message = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command.exec().to_string()))
            .unwrap_or_else(|_| "panicked before exec".into());
        // SAFETY: write(2) from a live buffer to our own fd, then _exit, which runs nothing
        // of the parent's (no atexit handlers, no destructors).
        unsafe {
            libc::write(fail_w.as_raw_fd(), message.as_ptr().cast(), message.len());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(CloneError::Refused);
    }
    let pid = pid as i32;
    drop(fail_w);
    // The parent's copies of the write ends go with the command's stdio.
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut message = String::new();
    let failed = match File::from(fail_r).read_to_string(&mut message) {
        Ok(_) if message.is_empty() => None,
        Ok(_) => Some(io::Error::other(message)),
        // Not knowing whether it runs, it must not: it is killed.
        Err(err) => {
            // SAFETY: a signal to our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            Some(err)
        }
    };
    match failed {
        None => Ok(Spawned { pid, stdout: out_r.into(), stderr: err_r.into(), cloned: true }),
        Some(err) => {
            // SAFETY: reaping our own child, which has exited or been killed.
            unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            Err(CloneError::Exec(err))
        }
    }
}

/// Every cgroup directory of this home's apps: `(app, name, cgroup)`, `name` being a dyno id or
/// `build-<pid>`.
pub fn list(layout: &Layout, home: &Path) -> Vec<(String, String, Cgroup)> {
    let base = Path::new(&home_dir_name(home)).to_path_buf();
    let probe = match layout {
        Layout::V2 { root } => root.join(&base),
        Layout::V1 { memory, .. } => memory.join(&base),
    };
    let mut out = Vec::new();
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // v1: a name may exist under one hierarchy only (a create that failed half-way).
    let mut apps = names(&probe);
    if let Layout::V1 { pids, .. } = layout {
        apps.extend(names(&pids.join(&base)));
    }
    apps.sort();
    apps.dedup();
    for app in apps {
        let mut groups = names(&probe.join(&app));
        if let Layout::V1 { pids, .. } = layout {
            groups.extend(names(&pids.join(&base).join(&app)));
        }
        groups.sort();
        groups.dedup();
        for name in groups {
            let rel = base.join(&app).join(&name);
            out.push((app.clone(), name, layout.group(&rel)));
        }
    }
    out
}

/// Removes this home's app dirs that no cgroup is left in, then the home's own dir when empty,
/// in every hierarchy: a dyno's cgroup removes its parents only when it is their last child, so
/// two dynos ending at once, or a create that failed half-way, can leave an empty app dir.
/// Dirs still in use stay (their removal fails with EBUSY/ENOTEMPTY, which is expected).
pub fn remove_empty_dirs(layout: &Layout, home: &Path) {
    let roots: Vec<&PathBuf> = match layout {
        Layout::V2 { root } => vec![root],
        Layout::V1 { memory, pids, cpu } => {
            [Some(memory), Some(pids), cpu.as_ref()].into_iter().flatten().collect()
        }
    };
    for root in roots {
        let base = root.join(home_dir_name(home));
        let Ok(apps) = std::fs::read_dir(&base) else { continue };
        for app in apps.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            if std::fs::remove_dir(app.path()).is_err() {
                // Still holds a dyno's or a build's cgroup.
            }
        }
        if std::fs::remove_dir(&base).is_err() {
            // Still holds an app's dir.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_app_dirs_and_the_homes_dir_go_busy_ones_stay() {
        let t = tempfile::tempdir().expect("tempdir");
        let home = t.path().join("home");
        let (memory, pids) = (t.path().join("memory"), t.path().join("pids"));
        let layout = Layout::V1 { memory: memory.clone(), pids: pids.clone(), cpu: None };
        let base = |root: &Path| root.join(home_dir_name(&home));
        std::fs::create_dir_all(base(&memory).join("empty")).expect("mkdir");
        std::fs::create_dir_all(base(&memory).join("busy/7")).expect("mkdir");
        std::fs::create_dir_all(base(&pids).join("empty")).expect("mkdir");
        remove_empty_dirs(&layout, &home);
        assert!(!base(&memory).join("empty").exists());
        assert!(base(&memory).join("busy/7").is_dir());
        assert!(!base(&pids).exists(), "an empty home dir goes");
    }

    const V1_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V2_MOUNTINFO: &str = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
28 25 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const COMBINED_V1: &str = "\
40 31 0:40 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 31 0:41 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn layouts_from_mounts() {
        let v1 = parse_mountinfo(V1_MOUNTINFO);
        assert_eq!(v1.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        let cases: &[(&Mounts, Option<&str>, Result<Layout, &str>)] = &[
            // This machine: v2 without controllers, v1 with memory and pids.
            (
                &v1,
                Some(""),
                Ok(Layout::V1 {
                    memory: "/sys/fs/cgroup/memory".into(),
                    pids: "/sys/fs/cgroup/pids".into(),
                    cpu: Some("/sys/fs/cgroup/cpu".into()),
                }),
            ),
            (
                &parse_mountinfo(V2_MOUNTINFO),
                Some("cpuset cpu io memory hugetlb pids rdma misc"),
                Ok(Layout::V2 { root: "/sys/fs/cgroup".into() }),
            ),
            (
                &parse_mountinfo(V2_MOUNTINFO),
                Some("cpu io"),
                Err("the cgroup v2 root offers no memory and pids controllers"),
            ),
            (
                &parse_mountinfo(COMBINED_V1),
                None,
                Err("no cgroup with the memory and pids controllers is mounted"),
            ),
            (&Mounts::default(), None, Err("no cgroup with the memory and pids controllers is mounted")),
        ];
        for (mounts, controllers, want) in cases {
            let got = choose_layout(mounts, *controllers);
            assert_eq!(got, want.clone().map_err(str::to_string), "{mounts:?}");
        }
        assert_eq!(parse_mountinfo(COMBINED_V1).v1["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }

    /// v2 hosts with systemd: where the cgroups go, for the daemon and the processes around it.
    #[test]
    fn v2_cgroups_go_below_the_subtree_systemd_delegated() {
        let unit = "system.slice/slipway.service";
        let user_manager = "user.slice/user-1000.slice/user@1000.service";
        let user_unit = "user.slice/user-1000.slice/user@1000.service/app.slice/slipway.service";
        let delegated_units = [unit, user_manager, user_unit];
        let delegated = |rel: &Path| delegated_units.iter().any(|d| rel == Path::new(d));
        let proc_cgroup = |path: &str| format!("0::{path}\n");
        let under = |base: &str| V2Place { base: base.into(), leaf: Some(Path::new(base).join("daemon")) };
        let top = V2Place { base: PathBuf::new(), leaf: None };
        let cases: &[(&str, String, &V2Place)] = &[
            // The daemon where DelegateSubgroup=daemon starts it: the unit is the base.
            ("/", proc_cgroup("/system.slice/slipway.service/daemon"), &under(unit)),
            // A shim or build it started, a dyno, ExecStartPre in the unit's .control: the same.
            ("/", proc_cgroup("/system.slice/slipway.service/.control"), &under(unit)),
            (
                "/",
                proc_cgroup("/system.slice/slipway.service/slipway-0123456789abcdef/hello/7"),
                &under(unit),
            ),
            // The daemon in the unit's cgroup itself (systemd before 254): the root, as before,
            // or systemd could not start the next daemon there while dynos run.
            ("/", proc_cgroup("/system.slice/slipway.service"), &top),
            // A unit without Delegate=yes, a root shell's session: the root, as before.
            ("/", proc_cgroup("/system.slice/other.service/daemon"), &top),
            ("/", proc_cgroup("/user.slice/user-0.slice/session-3.scope"), &top),
            // No systemd (a container's own root, or init scripts).
            ("/", proc_cgroup("/"), &top),
            // Nested delegation (a user manager's own unit): the nearest marker wins.
            ("/", proc_cgroup(&format!("/{user_unit}/daemon")), &under(user_unit)),
            ("/", proc_cgroup(&format!("/{user_manager}/app.slice/other.service")), &under(user_manager)),
            ("/", proc_cgroup(&format!("/{user_unit}")), &top),
            // A hybrid host: v1 lines around the v2 one.
            (
                "/",
                format!("12:pids:/system.slice/slipway.service\n0::/{unit}/daemon\n1:name=systemd:/x\n"),
                &under(unit),
            ),
            // A mount whose view starts lower (a container without a cgroup namespace).
            ("/docker/abc", proc_cgroup("/docker/abc/system.slice/slipway.service/daemon"), &under(unit)),
            // The caller's cgroup is outside what the mount shows, or odd: the mount point.
            ("/docker/abc", proc_cgroup("/docker/abcd/system.slice/slipway.service/daemon"), &top),
            ("/", proc_cgroup("/system.slice/../system.slice/slipway.service/daemon"), &top),
            // v1 only (this machine): no 0:: line.
            ("/", "4:memory:/x\n1:cpu:/\n".to_string(), &top),
            ("/", String::new(), &top),
        ];
        for (mount_root, text, want) in cases {
            assert_eq!(&&v2_place(mount_root, text, &delegated), want, "{mount_root} {text:?}");
        }
        assert_eq!(v2_path("1:cpu:/\n0::/a/b\n"), Some("/a/b"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
    }

    #[test]
    fn the_v2_mount_root_is_read_from_mountinfo() {
        assert_eq!(parse_mountinfo(V2_MOUNTINFO).v2_mount_root, "/");
        let container = "\
1279 1271 0:25 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw,nsdelegate
";
        let mounts = parse_mountinfo(container);
        assert_eq!(mounts.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(mounts.v2_mount_root, "/docker/abc");
        // This machine (v1, and an empty v2 hierarchy at /sys/fs/cgroup/unified).
        assert_eq!(parse_mountinfo(V1_MOUNTINFO).v2_mount_root, "/");
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("512M", Some(512 << 20)),
            ("512m", Some(512 << 20)),
            ("512MB", Some(512 << 20)),
            ("1G", Some(1 << 30)),
            ("1.5G", Some(3 << 29)),
            ("2gb", Some(2 << 30)),
            ("64", Some(64 << 20)),
            ("16M", Some(16 << 20)),
            ("15M", None),
            ("0", None),
            ("2000G", None),
            ("1T", None),
            ("-1G", None),
            ("", None),
            ("G", None),
            ("abc", None),
        ] {
            assert_eq!(parse_size(text).ok(), want, "{text}");
        }
        for (bytes, want) in
            [(512 << 20, "512M"), (1 << 30, "1G"), (3 << 29, "1.5G"), (64 << 20, "64M"), (2560 << 20, "2.5G")]
        {
            assert_eq!(format_size(bytes), want);
            assert_eq!(parse_size(want).unwrap(), bytes);
        }
    }

    #[test]
    fn memory_files_of_both_versions() {
        let v2 = MemorySample::parse(
            true,
            "104857600\n",
            "anon 90000000\nfile 14000000\ninactive_file 4857600\nactive_file 100\n",
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
            None,
        )
        .unwrap();
        assert_eq!(
            v2,
            MemorySample {
                usage: 104_857_600,
                inactive_file: 4_857_600,
                oom_kills: Some(1),
                failcnt: 0,
                peak: 0
            }
        );
        assert_eq!(v2.working_set(), 100_000_000);
        let v1 = MemorySample::parse(
            false,
            "2000\n",
            "cache 10\ninactive_file 999\ntotal_inactive_file 500\n",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            Some("7\n"),
        )
        .unwrap();
        assert_eq!(
            v1,
            MemorySample { usage: 2000, inactive_file: 500, oom_kills: Some(3), failcnt: 7, peak: 0 }
        );
        // An old v1 kernel: no oom_kill line.
        let old =
            MemorySample::parse(false, "10", "", "oom_kill_disable 0\nunder_oom 0\n", Some("0")).unwrap();
        assert_eq!(old.oom_kills, None);
        assert!(MemorySample::parse(true, "", "", "", None).is_none());
        assert_eq!(keyed("oom 1\noom_kill 2\n", "oom"), Some(1));
    }

    #[test]
    fn r14_is_rate_limited_and_r15_follows_an_oom_kill() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mb = |n: u64| n << 20;
        let sample = |used: u64, oom: u64| MemorySample {
            usage: used,
            inactive_file: 0,
            oom_kills: Some(oom),
            failcnt: 0,
            peak: 0,
        };
        let mut w = MemoryWatch::new(mb(64));
        w.baseline(&sample(0, 2)); // earlier kills in a reused cgroup are not this dyno's
        let steps: &[(u64, u64, u64, Verdict)] = &[
            (0, mb(10), 2, Verdict::Fine),
            (1, mb(64), 2, Verdict::Fine), // at the quota, not above
            (2, mb(70), 2, Verdict::R14 { used: mb(70) }),
            (3, mb(90), 2, Verdict::Fine), // rate-limited
            (21, mb(90), 2, Verdict::Fine),
            (22, mb(90), 2, Verdict::R14 { used: mb(90) }),
            (23, mb(10), 2, Verdict::Fine), // below again: the next excess logs at once
            (24, mb(80), 2, Verdict::R14 { used: mb(80) }),
            (25, mb(128), 3, Verdict::R15 { used: mb(128) }),
            (26, mb(128), 4, Verdict::Fine), // once
        ];
        for (s, used, oom, want) in steps {
            assert_eq!(&w.step(&sample(*used, *oom), at(*s), false), want, "at {s} s");
        }
        // No oom_kill counter: a SIGKILLed main process after the limit was hit is R15.
        let mut old = MemoryWatch::new(mb(64));
        let s =
            |failcnt| MemorySample { usage: mb(100), inactive_file: 0, oom_kills: None, failcnt, peak: 0 };
        old.baseline(&s(0));
        assert_eq!(old.step(&s(5), t0, false), Verdict::R14 { used: mb(100) });
        assert_eq!(old.step(&s(0), at(30), true), Verdict::R14 { used: mb(100) });
        assert_eq!(old.step(&s(9), at(31), true), Verdict::R15 { used: mb(100) });
        // Read after the kill, the cgroup is empty: R15 reports the peak.
        let mut after = MemoryWatch::new(mb(64));
        let dead =
            MemorySample { usage: mb(1), inactive_file: 0, oom_kills: Some(1), failcnt: 0, peak: mb(128) };
        assert_eq!(after.step(&dead, t0, true), Verdict::R15 { used: mb(128) });
    }

    #[test]
    fn controllers_enabled_down_the_v2_path() {
        let all = "cpuset cpu io memory hugetlb pids rdma misc";
        assert_eq!(controllers_to_enable(all, ""), [("memory", true), ("pids", true), ("cpu", false)]);
        assert_eq!(controllers_to_enable(all, "cpu memory pids"), []);
        assert_eq!(controllers_to_enable("memory pids", "memory"), [("pids", true)]);
        assert_eq!(controllers_to_enable("io", ""), []);
    }

    #[test]
    fn limits_to_write() {
        let l = Limits { memory: 64 << 20, max_pids: 32 };
        let v1: Vec<(&str, String)> = limit_writes(false, l).into_iter().map(|(_, f, v, _)| (f, v)).collect();
        assert_eq!(v1[0], ("memory.limit_in_bytes", (128u64 << 20).to_string()));
        assert_eq!(v1[1].0, "memory.memsw.limit_in_bytes");
        assert_eq!(v1[2], ("pids.max", "32".into()));
        let v2: Vec<&str> = limit_writes(true, l).into_iter().map(|(_, f, _, _)| f).collect();
        assert_eq!(v2, ["memory.max", "memory.swap.max", "memory.oom.group", "pids.max", "cpu.weight"]);
        assert!(!v2.contains(&"memory.high"));
    }

    #[test]
    fn a_new_process_joins_by_the_file_that_moves_it_alone() {
        assert_eq!(join_file(false), "tasks");
        assert_eq!(join_file(true), "cgroup.procs");
    }

    /// The real kernel: a child that writes `0` to the opened join files between fork and exec
    /// runs its first instruction in the cgroup of every hierarchy. Needs root (cgroupfs).
    #[test]
    fn a_child_joins_every_hierarchy_before_exec() {
        use std::os::unix::process::CommandExt;
        let Ok(layout) = detect() else {
            eprintln!("skipped: no usable cgroups here ({:?})", detect().err());
            return;
        };
        let home = tempfile::tempdir().expect("tempdir");
        let rel = dyno_rel(home.path(), "joins", 1);
        let cgroup = layout.group(&rel);
        cgroup.create(Limits { memory: 64 << 20, max_pids: 16 }).expect("create");
        let files = cgroup.open_join().expect("open");
        let fds = raw_fds(&files);
        let mut command = std::process::Command::new("cat");
        command.arg("/proc/self/cgroup");
        // SAFETY: join_raw only calls write(2).
        unsafe {
            command.pre_exec(move || join_raw(&fds));
        }
        let out = command.output().expect("cat");
        drop(files);
        cgroup.remove(Instant::now() + Duration::from_secs(5), || {}).expect("remove");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let inside = text.lines().filter(|l| l.ends_with(&format!("/{}", rel.display()))).count();
        assert_eq!(inside, cgroup.dirs().len(), "in every hierarchy:\n{text}");
    }

    /// A fresh cgroup in the v2 hierarchy (this machine's may have no controllers: entering
    /// needs none), removed on drop; None (skipped) without a writable v2 mount.
    struct V2Group(Cgroup);

    impl V2Group {
        fn make(name: &str) -> Option<V2Group> {
            let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
            let root = mounts.v2?;
            let rel = PathBuf::from(format!("slipway-test-{name}-{}", std::process::id()));
            match std::fs::create_dir(root.join(&rel)) {
                Ok(()) => Some(V2Group(Cgroup { v2: true, root: vec![root], rel })),
                Err(e) => {
                    eprintln!("skipped: no writable cgroup v2 hierarchy ({e})");
                    None
                }
            }
        }
    }

    impl Drop for V2Group {
        fn drop(&mut self) {
            if let Err(e) = self.0.remove(Instant::now() + Duration::from_secs(5), || {}) {
                eprintln!("warning: {e}");
            }
        }
    }

    /// Runs `f` in a forked child, which has one thread (the test harness has several), and
    /// returns what it returned.
    fn in_a_child_with_one_thread(f: impl FnOnce() -> String) -> String {
        use std::io::{Read, Write};
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        // SAFETY: the child only allocates (glibc's malloc is fork-safe), makes syscalls and
        // _exits.
        match unsafe { libc::fork() } {
            0 => {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                    .unwrap_or_else(|_| "the child panicked".into());
                // A report that could not be written shows as the child's exit status.
                let code = if File::from(w).write_all(out.as_bytes()).is_ok() { 0 } else { 1 };
                // SAFETY: ends the forked child without running the harness's code.
                unsafe { libc::_exit(code) }
            }
            pid => {
                drop(w);
                let mut out = String::new();
                File::from(r).read_to_string(&mut out).expect("read");
                let pid = nix::unistd::Pid::from_raw(pid);
                let status = nix::sys::wait::waitpid(pid, None).expect("wait");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0), "the child's report: {out}");
                out
            }
        }
    }

    /// Starts `program args` through `entry` as the shim does (its joiner first, its own process
    /// group) and reports `cloned`, stdout, stderr and the exit status, or the error.
    fn start(entry: &Entry, program: &str, args: &[&str]) -> String {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(program);
        command.args(args).stdin(std::process::Stdio::null()).process_group(0);
        // SAFETY: the joiner is async-signal-safe.
        unsafe {
            command.pre_exec(entry.joiner());
        }
        match entry.spawn(&mut command) {
            Err(e) => format!("error: {e}"),
            Ok(mut s) => {
                let (mut out, mut err) = (String::new(), String::new());
                s.stdout.read_to_string(&mut out).expect("stdout");
                s.stderr.read_to_string(&mut err).expect("stderr");
                let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(s.pid), None).expect("wait");
                format!("cloned={} pid={}\n{out}{err}{status:?}", s.cloned, s.pid)
            }
        }
    }

    const REPORT: &str = "cat /proc/self/cgroup; cut -d' ' -f5 /proc/self/stat; echo to-stderr >&2";

    #[test]
    fn a_process_is_cloned_into_its_v2_cgroup_and_starts_as_spawn_would_start_it() {
        let Some(group) = V2Group::make("clone") else { return };
        let entry = Entry::open(&group.0).expect("open");
        let report = in_a_child_with_one_thread(|| start(&entry, "sh", &["-c", REPORT]));
        let mut lines = report.lines();
        let first = lines.next().unwrap_or_default();
        assert!(first.starts_with("cloned=true pid="), "{report}");
        let pid = first.trim_start_matches("cloned=true pid=");
        let rest: Vec<&str> = lines.collect();
        assert!(
            rest.contains(&format!("0::/{}", group.0.rel.display()).as_str()),
            "inside from the start: {report}"
        );
        assert!(rest.contains(&pid), "its own process group: {report}");
        assert!(rest.contains(&"to-stderr"), "{report}");
        assert!(report.trim_end().ends_with(&format!("Exited(Pid({pid}), 0)")), "{report}");
    }

    #[test]
    fn a_cloned_child_that_cannot_exec_is_an_error_and_reaped() {
        let Some(group) = V2Group::make("noexec") else { return };
        let entry = Entry::open(&group.0).expect("open");
        let report = in_a_child_with_one_thread(|| {
            let started = start(&entry, "/nonexistent/program", &[]);
            // The failed child was reaped: this process has no child left.
            let left = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            format!("{started}\n{left:?}")
        });
        assert!(report.starts_with("error: No such file or directory"), "{report}");
        assert!(report.ends_with("Err(ECHILD)"), "{report}");
    }

    #[test]
    fn a_process_with_threads_joins_by_writing_instead() {
        let Some(group) = V2Group::make("threads") else { return };
        let entry = Entry::open(&group.0).expect("open");
        // The test harness runs this on a thread of its own: more than one thread.
        let report = start(&entry, "sh", &["-c", REPORT]);
        assert!(report.starts_with("cloned=false"), "{report}");
        assert!(report.contains(&format!("0::/{}\n", group.0.rel.display())), "{report}");
    }

    #[test]
    fn paths() {
        let a = home_dir_name(Path::new("/var/lib/slipway"));
        assert_eq!(a.len(), "slipway-".len() + 16);
        assert_ne!(a, home_dir_name(Path::new("/tmp/other")));
        assert_eq!(
            dyno_rel(Path::new("/h"), "hello", 7),
            Path::new(&home_dir_name(Path::new("/h"))).join("hello/7")
        );
        let layout = Layout::V1 { memory: "/m".into(), pids: "/p".into(), cpu: None };
        let g = layout.group(Path::new("x/app/7"));
        assert_eq!(g.dirs(), [PathBuf::from("/m/x/app/7"), PathBuf::from("/p/x/app/7")]);
        assert_eq!(Layout::V2 { root: "/sys/fs/cgroup".into() }.group(Path::new("x/a/1")).dirs().len(), 1);
    }
}
