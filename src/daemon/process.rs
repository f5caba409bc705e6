//! Facts about OS processes that supervision relies on: start times from `/proc` (so a recycled
//! pid is never mistaken for a dyno), process-group signals, RSS, and waiting for a process
//! that may not be our child (a dyno re-adopted after a daemon restart) through a pidfd.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`), or None if the
/// process is gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True when `pid` is running and is the same process we recorded (same start time).
pub fn is_same_process(pid: i32, recorded_start: u64) -> bool {
    start_time(pid) == Some(recorded_start)
}

/// Signals the process group led by `pid`, but only if `pid` is still the process recorded.
/// Returns false when it was already gone.
pub fn signal_group(pid: i32, recorded_start: u64, signal: Signal) -> bool {
    if !is_same_process(pid, recorded_start) {
        return false;
    }
    killpg(Pid::from_raw(pid), signal).is_ok()
}

/// Resident memory of one process in KiB (VmRSS), if readable.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process group of a process, from the text of its `/proc/PID/stat` (field 5).
pub fn pgrp_of(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(2)?.parse().ok()
}

/// Resident memory of every process in process group `pgid`, in KiB: a dyno's whole tree
/// (workers included) when it has no cgroup to ask. None if no process of it was readable.
pub fn group_rss_kib(pgid: i32) -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if pgrp_of(&stat) == Some(pgid) {
            if let Some(kib) = rss_kib(pid) {
                total = Some(total.unwrap_or(0) + kib);
            }
        }
    }
    total
}

/// Reaps `pid` if it is our child; a no-op (ECHILD) for adopted processes, whose parent is init.
pub fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Resolves when the process `pid` (started at `start`) has exited. Uses a pidfd where the
/// kernel has one (Linux ≥ 5.3), else polls `/proc` — works for children and non-children.
pub async fn wait_for_exit(pid: i32, start: u64) {
    if let Ok(fd) = pidfd_open(pid) {
        // Checked after opening: if the pid was already recycled, the fd watches a stranger.
        if is_same_process(pid, start) {
            // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which keeps it open and
            // unchanged until it is dropped.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            if let Ok(afd) = registered {
                let _ = afd.readable().await;
                return;
            }
        } else {
            return;
        }
    }
    while is_same_process(pid, start) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable_and_foreign_pids_are_not_confused() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert!(start_time(i32::MAX).is_none());
        assert!(rss_kib(me).unwrap() > 0);
    }

    #[test]
    fn process_groups_from_stat_lines() {
        assert_eq!(pgrp_of("123 (python3) S 1 120 120 0 -1 4194560"), Some(120));
        assert_eq!(pgrp_of("7 (a) b (c) R 1 7 7 0"), Some(7));
        assert_eq!(pgrp_of("garbage"), None);
        let me = std::process::id() as i32;
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let pgid = pgrp_of(&stat).unwrap();
        assert!(group_rss_kib(pgid).unwrap() >= rss_kib(me).unwrap());
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped by `reap`, which is what this test covers
    async fn waits_for_a_child_to_exit() {
        let child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        tokio::time::timeout(Duration::from_secs(5), wait_for_exit(pid, start)).await.unwrap();
        reap(pid);
        assert!(start_time(pid).is_none());
    }
}
