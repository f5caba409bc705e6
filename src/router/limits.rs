//! How many client connections the router holds open, so that one client cannot take every app
//! down by exhausting the daemon's file descriptors.
//!
//! Policy:
//! - At start the daemon raises its `RLIMIT_NOFILE` soft limit to the hard limit
//!   ([`raise_fd_limit`]).
//! - Globally, at most [`default_max_connections`] client connections: half of what the fd
//!   limit leaves after [`FD_RESERVE`] (the control socket, SQLite, logs, dyno spawns), since a
//!   client connection in a request also holds a connection to a dyno.
//! - Per client address, at most [`MAX_PER_IP`] connections, idle or busy. The trusted proxy
//!   addresses `127.0.0.1` and `::1` (a TLS-terminating proxy in front, whose connections carry
//!   every client's traffic) are exempt: only the global cap applies to them. Any other address,
//!   `127.0.0.2` included, is one client.
//! - A connection over either cap is refused at accept: a short `503` written without waiting,
//!   then closed. It costs the router one accept and one write, no task and no buffer.
//! - Idle and slow connections are bounded in time by the head timeout in [`super::proxy`]
//!   (30 s to send a complete head, which is also the keep-alive idle limit).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// File descriptors kept for everything but client connections and their dyno connections.
pub const FD_RESERVE: u64 = 256;
/// Connections one client address may hold open.
pub const MAX_PER_IP: usize = 256;
/// The global cap never goes below this, however low the fd limit.
const MIN_CONNECTIONS: usize = 64;

/// The answer to a connection over a cap (written with one non-blocking write, then closed).
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 39\r\nConnection: close\r\nRetry-After: 5\r\n\r\nToo many connections; try again later.\n";

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit; returns the soft limit
/// now in force (the old one if it could not be raised, or 1024 if it cannot be read).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(from = soft, to = hard, "raised the open file limit");
            hard
        }
        Err(err) => {
            tracing::warn!(%err, soft, hard, "cannot raise the open file limit");
            soft
        }
    }
}

/// The global cap on client connections for the current fd limit (see the module docs).
pub fn default_max_connections() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let usable = soft.saturating_sub(FD_RESERVE) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(MIN_CONNECTIONS)
}

/// True for the addresses a trusted TLS proxy in front connects from: not capped per address.
fn exempt(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// Open client connections, in total and per address.
pub struct Limits {
    max: usize,
    per_ip: usize,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    refusals: RateLimitedLog,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Global,
    PerIp,
}

impl Limits {
    pub fn new(max: usize, per_ip: usize) -> Arc<Limits> {
        Arc::new(Limits {
            max,
            per_ip,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            refusals: RateLimitedLog::default(),
        })
    }

    /// Counts a new connection from `ip`, or refuses it (over a cap). The connection counts
    /// until the returned guard is dropped.
    pub fn admit(self: &Arc<Limits>, ip: IpAddr) -> Result<ConnectionGuard, Refused> {
        let ip = ip.to_canonical();
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refusals.note(|n| {
                tracing::warn!(
                    refused = n,
                    max = self.max,
                    "router: connection cap reached, refusing connections"
                )
            });
            return Err(Refused::Global);
        }
        let counted = !exempt(ip);
        if counted {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= self.per_ip {
                drop(by_ip);
                self.open.fetch_sub(1, Ordering::Relaxed);
                self.refusals.note(|n| tracing::warn!(refused = n, %ip, max = self.per_ip, "router: per-address connection cap reached, refusing connections"));
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        Ok(ConnectionGuard { limits: self.clone(), ip, counted })
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One admitted connection; uncounts it when dropped.
pub struct ConnectionGuard {
    limits: Arc<Limits>,
    ip: IpAddr,
    counted: bool,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.counted {
            let mut by_ip = self.limits.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Logs at most once per [`RateLimitedLog::EVERY`], with how many events were folded into it.
#[derive(Default)]
pub struct RateLimitedLog {
    /// Milliseconds after [`START`] of the last line, plus one (0: never).
    last: AtomicU64,
    count: AtomicU64,
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl RateLimitedLog {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Counts an event; calls `log` with the events since the last line when one is due.
    pub fn note(&self, log: impl FnOnce(u64)) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now =
            u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(Self::EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.count.fetch_sub(count, Ordering::Relaxed);
            log(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total() {
        let limits = Limits::new(5, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "::ffff:192.0.2.2".parse().expect("ip");
        let proxy: IpAddr = "127.0.0.1".parse().expect("ip");
        let a1 = limits.admit(a).expect("a1");
        let _a2 = limits.admit(a).expect("a2");
        assert_eq!(limits.admit(a).err(), Some(Refused::PerIp));
        drop(a1);
        let _a3 = limits.admit(a).expect("a slot came free");
        let _b1 = limits.admit(b).expect("b1");
        let _p: Vec<_> =
            (0..2).map(|_| limits.admit(proxy).expect("the proxy is not capped per address")).collect();
        assert_eq!(limits.open(), 5);
        assert_eq!(limits.admit(proxy).err(), Some(Refused::Global));
        assert_eq!(limits.admit("127.0.0.2".parse().expect("ip")).err(), Some(Refused::Global));
        assert_eq!(limits.open(), 5);
    }

    #[test]
    fn the_default_cap_follows_the_fd_limit() {
        let cap = default_max_connections();
        assert!(cap >= MIN_CONNECTIONS);
        assert!(raise_fd_limit() >= 64);
    }

    #[test]
    fn a_rate_limited_log_folds_events() {
        let log = RateLimitedLog::default();
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.note(|n| lines.push(n));
        }
        assert_eq!(lines, [1], "one line, then quiet for a while");
    }
}
