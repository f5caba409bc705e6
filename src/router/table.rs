//! The routing table: which app a `Host` belongs to, and where that app's web dynos listen.
//!
//! A [`RouteTable`] is plain data built by the daemon from SQLite and the dynos it supervises,
//! then handed to [`super::Router::update`], which swaps it in atomically. Each app answers at
//! `<app>.<domain>` and at its custom domains; an app's default host always wins over a custom
//! domain with the same name (the CLI refuses such domains, this only guards old rows).

use std::collections::{BTreeMap, HashMap};

/// One `up` web dyno of an app: its name (`web.2`) and the loopback port it listens on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backend {
    pub dyno: String,
    pub port: u16,
}

impl Backend {
    pub fn new(dyno: impl Into<String>, port: u16) -> Backend {
        Backend { dyno: dyno.into(), port }
    }
}

/// What the router can do with a request for an app.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AppStatus {
    /// Web dynos that are `up`, served round robin. An empty list is treated as [`NoWebDynos`].
    ///
    /// [`NoWebDynos`]: AppStatus::NoWebDynos
    Up(Vec<Backend>),
    /// The app has no web dyno (web=0, no release yet, or all stopped): 503 `H14`.
    NoWebDynos,
    /// The app has web dynos, none is up and at least one crashed: 503 `H10`.
    Crashed,
}

/// One app's entry in the table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppRoute {
    pub app: String,
    pub status: AppStatus,
}

/// Host (normalised: lowercase, no port, no trailing dot) → app, plus each app's status.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RouteTable {
    domain: String,
    apps: BTreeMap<String, AppRoute>,
    /// host → (app, is the app's default host).
    hosts: HashMap<String, (String, bool)>,
}

impl RouteTable {
    /// An empty table for apps answering at `<app>.<domain>` (`SLIPWAY_DOMAIN`).
    pub fn new(domain: &str) -> RouteTable {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        RouteTable { domain, apps: BTreeMap::new(), hosts: HashMap::new() }
    }

    /// Adds (or replaces) an app with its custom domains and its current status.
    pub fn add_app(&mut self, app: &str, custom_domains: &[String], status: AppStatus) {
        let default_host = format!("{app}.{}", self.domain).to_ascii_lowercase();
        self.hosts.insert(default_host, (app.to_string(), true));
        for domain in custom_domains {
            let Some(host) = normalize_host(domain) else {
                tracing::warn!(app, domain, "ignoring an invalid custom domain");
                continue;
            };
            match self.hosts.get(&host) {
                Some((owner, true)) if owner != app => {
                    tracing::warn!(
                        app,
                        host,
                        owner,
                        "custom domain shadows another app's default host; ignored"
                    );
                }
                _ => {
                    self.hosts.insert(host, (app.to_string(), false));
                }
            }
        }
        self.apps.insert(app.to_string(), AppRoute { app: app.to_string(), status });
    }

    /// The app a (raw or normalised) host routes to.
    pub fn lookup(&self, host: &str) -> Option<&AppRoute> {
        let host = normalize_host(host)?;
        self.lookup_normalized(&host)
    }

    pub(crate) fn lookup_normalized(&self, host: &str) -> Option<&AppRoute> {
        let (app, _) = self.hosts.get(host)?;
        self.apps.get(app)
    }

    /// Every app in the table, by name.
    pub fn apps(&self) -> impl Iterator<Item = &AppRoute> {
        self.apps.values()
    }

    /// Every host → app pair (for diagnostics).
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.hosts.iter().map(|(h, (a, _))| (h.as_str(), a.as_str()))
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }
}

/// Normalises a `Host` header (or an absolute-form URI's authority) for lookup: surrounding
/// whitespace, a `:port` suffix and one trailing dot are dropped, letters are lowercased.
/// Returns `None` for anything that cannot be a hostname we route (empty, odd characters);
/// bracketed IPv6 literals are kept as they are (they never match an app, so they get a 404).
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']')?;
        return Some(format!("[{}]", rest[..end].to_ascii_lowercase()));
    }
    let host = match raw.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    valid.then(|| host.to_ascii_lowercase())
}

/// Round robin: the index of the backend to use for the `n`-th request of an app with `len`
/// backends, skipping `skip` (a backend that just refused a connection) when there is another.
pub(crate) fn pick(n: usize, ports: &[u16], skip: Option<u16>) -> Option<usize> {
    if ports.is_empty() {
        return None;
    }
    let first = n % ports.len();
    (0..ports.len()).map(|i| (first + i) % ports.len()).find(|&i| Some(ports[i]) != skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host("MyApp.LocalHost").as_deref(), Some("myapp.localhost"));
        assert_eq!(normalize_host("myapp.localhost:8080").as_deref(), Some("myapp.localhost"));
        assert_eq!(normalize_host("myapp.localhost.").as_deref(), Some("myapp.localhost"));
        assert_eq!(normalize_host("myapp.localhost.:80").as_deref(), Some("myapp.localhost"));
        assert_eq!(normalize_host(" www.example.com ").as_deref(), Some("www.example.com"));
        assert_eq!(normalize_host("example.com:").as_deref(), Some("example.com"));
        assert_eq!(normalize_host("127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        for bad in ["", ":80", ".", "a b.com", "a/b", "host:port", "[::1", "é.com", "a\"b"] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
    }

    fn up(ports: &[u16]) -> AppStatus {
        AppStatus::Up(
            ports.iter().enumerate().map(|(i, p)| Backend::new(format!("web.{}", i + 1), *p)).collect(),
        )
    }

    #[test]
    fn apps_answer_at_their_default_host_and_custom_domains() {
        let mut t = RouteTable::new("Apps.Example.COM.");
        t.add_app("alpha", &["www.alpha.io".into(), "Alpha.ORG".into()], up(&[5001]));
        t.add_app("beta", &[], AppStatus::NoWebDynos);
        assert_eq!(t.lookup("alpha.apps.example.com").map(|r| r.app.as_str()), Some("alpha"));
        assert_eq!(t.lookup("ALPHA.apps.example.com:8080").map(|r| r.app.as_str()), Some("alpha"));
        assert_eq!(t.lookup("alpha.apps.example.com.").map(|r| r.app.as_str()), Some("alpha"));
        assert_eq!(t.lookup("www.alpha.io").map(|r| r.app.as_str()), Some("alpha"));
        assert_eq!(t.lookup("alpha.org:80").map(|r| r.app.as_str()), Some("alpha"));
        assert_eq!(t.lookup("beta.apps.example.com").map(|r| &r.status), Some(&AppStatus::NoWebDynos));
        for miss in ["alpha", "alpha.example.com", "gamma.apps.example.com", "apps.example.com", "alpha.io"] {
            assert!(t.lookup(miss).is_none(), "{miss}");
        }
    }

    #[test]
    fn a_default_host_wins_over_a_custom_domain() {
        let mut t = RouteTable::new("localhost");
        t.add_app("alpha", &["beta.localhost".into()], up(&[5001]));
        t.add_app("beta", &["alpha.localhost".into()], up(&[5002]));
        assert_eq!(t.lookup("alpha.localhost").map(|r| r.app.as_str()), Some("alpha"));
        assert_eq!(t.lookup("beta.localhost").map(|r| r.app.as_str()), Some("beta"));
    }

    #[test]
    fn round_robin_visits_every_backend_and_skips_a_refusing_one() {
        let ports = [5001, 5002, 5003];
        let picks: Vec<usize> = (0..6).map(|n| pick(n, &ports, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(pick(0, &ports, Some(5001)), Some(1));
        assert_eq!(pick(2, &ports, Some(5003)), Some(0));
        assert_eq!(pick(usize::MAX, &ports, None), Some(usize::MAX % 3));
        assert_eq!(pick(0, &[5001], Some(5001)), None, "no other backend to try");
        assert_eq!(pick(7, &[], None), None);
    }
}
