//! The apps' certificates as the router uses them: read from `certs/` ([`crate::certs`]) into
//! memory, with the apps' `redirect` flags, and re-read at most once per second, only when
//! `certs/.changed` ([`certs::changed_stamp`]) moved. A handshake or a plain-HTTP request never
//! touches the disk otherwise.
//!
//! Which certificate a TLS client gets for its SNI name ([`choose`]): the route table names the
//! app at that host; among that app's certificates that cover the name (wildcards one label,
//! [`certs::covers`]) and have not expired, a manual one (`certs:add`) before an ACME one, then
//! the one valid longest. A name no app answers at, or that no certificate of its app covers,
//! gets no certificate (the handshake fails), never another app's.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::sign::CertifiedKey;

use crate::certs::{self, Source};
use crate::home::Home;

/// How often the stamp of `certs/.changed` is looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// What [`certs::changed_stamp`] returns.
type Stamp = (u64, SystemTime);

/// What [`choose`] needs to know of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub app: String,
    pub source: Source,
    /// Its DNS names, lowercase (`*.example.com` for a wildcard).
    pub hosts: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// The certificate `app` should present for `host` at time `now` (seconds since the epoch): the
/// index into `certs`, if any (see the module docs for the order).
pub fn choose(certs: &[Candidate], app: &str, host: &str, now: i64) -> Option<usize> {
    certs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.app == app && c.not_before <= now && now < c.not_after)
        .filter(|(_, c)| c.hosts.iter().any(|name| certs::covers(name, host)))
        .max_by_key(|(_, c)| (c.source == Source::Manual, c.not_after))
        .map(|(i, _)| i)
}

/// One certificate, ready for rustls.
struct Entry {
    key: Arc<CertifiedKey>,
}

/// Everything read at one stamp.
#[derive(Default)]
struct Snapshot {
    candidates: Vec<Candidate>,
    entries: Vec<Entry>,
    /// Apps whose `redirect` flag is set.
    redirect: HashSet<String>,
}

/// The apps' certificates and flags, cached (see the module docs).
pub struct CertStore {
    home: Option<Home>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When the stamp was last looked at, and what it was when the snapshot was read.
    checked: Mutex<(Option<Instant>, Option<Stamp>)>,
    /// Milliseconds after `origin` before which the stamp is not looked at again: the request
    /// path reads it without taking a lock.
    origin: Instant,
    due_ms: AtomicU64,
}

impl CertStore {
    /// A store reading `home`'s `certs/`; `None`: a store with no certificates.
    pub fn new(home: Option<Home>) -> CertStore {
        CertStore {
            home,
            snapshot: RwLock::default(),
            checked: Mutex::new((None, None)),
            origin: Instant::now(),
            due_ms: AtomicU64::new(0),
        }
    }

    /// The home whose certificates these are.
    pub fn home(&self) -> Option<&Home> {
        self.home.as_ref()
    }

    /// The certificate for `host` of `app`, if it has a usable one.
    pub fn certificate(&self, app: &str, host: &str) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.current();
        choose(&snapshot.candidates, app, host, now()).map(|i| snapshot.entries[i].key.clone())
    }

    /// True when a plain-HTTP request for `host` of `app` is to be redirected to HTTPS: the app's
    /// `redirect` flag is set and it has a usable certificate for the host.
    pub fn redirects(&self, app: &str, host: &str) -> bool {
        let snapshot = self.current();
        snapshot.redirect.contains(app) && choose(&snapshot.candidates, app, host, now()).is_some()
    }

    /// The snapshot, re-read first when a second has passed since the last look and the stamp
    /// moved.
    fn current(&self) -> Arc<Snapshot> {
        let elapsed_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(home) = self.home.as_ref().filter(|_| elapsed_ms >= self.due_ms.load(Ordering::Relaxed)) {
            self.due_ms.store(elapsed_ms + RECHECK.as_millis() as u64, Ordering::Relaxed);
            let stale = {
                let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
                let never = checked.0.is_none();
                if never || checked.0.is_some_and(|at| at.elapsed() >= RECHECK) {
                    checked.0 = Some(Instant::now());
                    let stamp = certs::changed_stamp(home);
                    let moved = never || stamp != checked.1;
                    checked.1 = stamp;
                    moved
                } else {
                    false
                }
            };
            if stale {
                let fresh = Arc::new(read(home));
                *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = fresh;
            }
        }
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads `certs/` now, whatever the stamp (at the router's start).
    pub fn load(&self) {
        if let Some(home) = &self.home {
            let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
            *checked = (Some(Instant::now()), certs::changed_stamp(home));
            let fresh = Arc::new(read(home));
            *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        }
    }
}

/// Every app's certificates and flags; unreadable ones are logged and left out.
fn read(home: &Home) -> Snapshot {
    let (loaded, bad) = certs::load_all(home);
    for (file, err) in bad {
        tracing::warn!(file = %file.display(), %err, "router: ignoring a certificate it cannot use");
    }
    let mut snapshot = Snapshot::default();
    for cert in loaded {
        let key = match rustls::crypto::ring::sign::any_supported_type(&cert.key) {
            Ok(key) => key,
            Err(err) => {
                tracing::warn!(file = %cert.file.display(), %err, "router: ignoring a certificate whose key it cannot use");
                continue;
            }
        };
        snapshot.candidates.push(Candidate {
            app: cert.app.clone(),
            source: cert.source,
            hosts: cert.hosts.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
        });
        snapshot.entries.push(Entry { key: Arc::new(CertifiedKey::new(cert.chain, key)) });
    }
    if let Ok(entries) = std::fs::read_dir(certs::dir(home)) {
        for entry in entries.flatten() {
            let Ok(app) = entry.file_name().into_string() else { continue };
            let Ok(name) = app.parse::<crate::app::AppName>() else { continue };
            if certs::flag(home, &name, "redirect") {
                snapshot.redirect.insert(app);
            }
        }
    }
    tracing::info!(certificates = snapshot.entries.len(), "router: certificates read");
    snapshot
}

fn now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(app: &str, source: Source, hosts: &[&str], not_after: i64) -> Candidate {
        Candidate {
            app: app.into(),
            source,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            not_before: 0,
            not_after,
        }
    }

    #[test]
    fn the_apps_covering_certificate_manual_first_then_the_longest_valid() {
        let certs = [
            cert("web", Source::Acme, &["www.example.com"], 2000),
            cert("web", Source::Acme, &["www.example.com"], 3000),
            cert("web", Source::Manual, &["*.example.com"], 1500),
            cert("api", Source::Manual, &["api.example.com", "www.example.org"], 5000),
            cert("web", Source::Manual, &["old.example.net"], 900),
            cert("web", Source::Acme, &["web.example.net"], 2000),
            cert("web", Source::Acme, &["web.example.net"], 2500),
        ];
        let now = 1000;
        for (app, host, want) in [
            // A manual wildcard beats ACME certificates valid longer.
            ("web", "www.example.com", Some(2)),
            ("web", "other.example.com", Some(2)),
            // The wildcard covers one label only.
            ("web", "a.b.example.com", None),
            // Among ACME ones, the latest notAfter.
            ("web", "web.example.net", Some(6)),
            // Another app's certificate is never used, even when it covers the name.
            ("web", "www.example.org", None),
            ("api", "www.example.org", Some(3)),
            ("api", "www.example.com", None),
            // Expired.
            ("web", "old.example.net", None),
            ("nope", "www.example.com", None),
        ] {
            assert_eq!(choose(&certs, app, host, now), want, "{app} {host}");
        }
        // Once the manual wildcard expired, ACME's longest.
        assert_eq!(choose(&certs, "web", "www.example.com", 1600), Some(1));
        // Not yet valid.
        let later = [Candidate { not_before: 2000, ..cert("web", Source::Manual, &["a.example.com"], 3000) }];
        assert_eq!(choose(&later, "web", "a.example.com", 1000), None);
        assert_eq!(choose(&later, "web", "a.example.com", 2000), Some(0));
    }
}
