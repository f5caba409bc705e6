//! Automatic certificates (`certs:auto:enable`): the daemon's renewal loop, which gets a
//! certificate from an ACME server (RFC 8555, spoken by the `instant-acme` crate) for every host
//! of every app whose `auto` flag is on.
//!
//! Every few seconds (`SLIPWAY_ACME_CHECK_SECS`, default 5; only files and one SQLite read, no
//! network) the loop looks at each such app's hosts: its default host `<app>.<domain>` and its
//! custom domains, wildcards and `*.localhost` left out, as no CA can validate them. A host is
//! due ([`decide`]) when no certificate of the app covers it or the one that does expires within
//! 30 days, unless an earlier failure's backoff ([`backoff`]: 1 minute doubling to 1 day) is
//! still running. For a due host the loop orders a certificate for that one name, answers the
//! HTTP-01 challenge (the key authorization in `certs/.challenges/http-01/<token>`, which the router
//! serves on the plain HTTP port) and, when that fails, TLS-ALPN-01 in a new order (a challenge
//! certificate in `certs/.challenges/tls-alpn-01/<host>.pem`, which the router presents on the TLS port
//! to a client asking for `acme-tls/1`); challenge files are removed afterwards. The certificate
//! and its fresh key are written as `certs/<app>/acme-<host>.pem` (0600).
//!
//! What happened to each host (failures, the last reason, the next attempt) is kept in
//! `certs/<app>/acme.json`, which `slipway certs` shows; every event (ordered, issued, renewed,
//! failed with its reason) is a `slipway[router]` line in the app's log.
//!
//! The ACME account's key is kept (0600) in `certs/.acme/`, one file per directory URL.
//! Settings (`acme_directory`, `acme_email`, `acme_ca_file`) are read again at every pass, so a
//! change needs no daemon restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use crate::app::AppName;
use crate::certs;
use crate::home::Home;
use crate::settings::Settings;

/// A certificate is renewed when it expires within this long (30 days).
pub const RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;
/// The first retry after a failure comes after this long; it doubles up to [`MAX_BACKOFF_SECS`].
pub const FIRST_BACKOFF_SECS: i64 = 60;
pub const MAX_BACKOFF_SECS: i64 = 24 * 3600;
/// The state file in `certs/<app>/`.
pub const STATE_FILE: &str = "acme.json";
/// How long one issuance (both challenge types) may take.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(180);

/// What the loop remembers of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Failed attempts in a row (0 after a success).
    pub failures: u32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the epoch: the last attempt, and the earliest next one after a failure.
    #[serde(default)]
    pub last_attempt: i64,
    #[serde(default)]
    pub next_attempt: i64,
}

/// `certs/<app>/acme.json`: host → state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    #[serde(default)]
    pub hosts: BTreeMap<String, HostState>,
}

/// Why a host needs a certificate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No certificate covers it.
    Missing,
    /// Its certificate expires within the renewal window.
    Expiring,
}

/// What to do about one host at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Due(Why),
    /// Its certificate is good until `renew_at` (seconds since the epoch).
    NotDue {
        renew_at: i64,
    },
    /// An earlier attempt failed; the next may start at `until`.
    BackingOff {
        until: i64,
    },
}

/// The renewal decision for one host: `not_after` is the latest expiry of the app's
/// certificates covering it (`None`: none does).
pub fn decide(now: i64, not_after: Option<i64>, renew_before: i64, state: Option<&HostState>) -> Decision {
    if let Some(state) = state.filter(|s| s.failures > 0 && now < s.next_attempt) {
        return Decision::BackingOff { until: state.next_attempt };
    }
    match not_after {
        None => Decision::Due(Why::Missing),
        Some(t) if t - renew_before <= now => Decision::Due(Why::Expiring),
        Some(t) => Decision::NotDue { renew_at: t - renew_before },
    }
}

/// Seconds to wait after the `failures`-th failure in a row: 1 min, 2, 4, … up to 1 day.
pub fn backoff(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(20);
    (FIRST_BACKOFF_SECS << doublings).min(MAX_BACKOFF_SECS)
}

/// Whether an ACME server could validate `host` at all: not a wildcard (that needs DNS-01),
/// not under `localhost`.
pub fn eligible(host: &str) -> bool {
    !host.contains('*') && host != "localhost" && !host.ends_with(".localhost") && host.contains('.')
}

/// The latest expiry among `certs` covering `host`.
pub fn covering_not_after(certs: &[certs::Loaded], host: &str) -> Option<i64> {
    certs.iter().filter(|c| c.hosts.iter().any(|n| certs::covers(n, host))).map(|c| c.not_after).max()
}

/// Reads `certs/<app>/acme.json` (missing or unreadable: empty).
pub fn load_state(home: &Home, app: &str) -> AppState {
    crate::fsutil::read_beneath(&certs::dir(home), Path::new(app).join(STATE_FILE))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

fn save_state(home: &Home, app: &AppName, state: &AppState) -> io::Result<()> {
    let dir = certs::ensure_app_dir(home, app)?;
    let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    crate::fsutil::write_atomic_owned(&dir.join(STATE_FILE), &json, 0o600, crate::daemon::home_owner(home))
}

/// The hidden test knobs: seconds between checks, and the renewal window.
fn knob(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse::<i64>().ok()).filter(|v| *v > 0).unwrap_or(default)
}

/// The renewal window in force (`SLIPWAY_ACME_RENEW_BEFORE_SECS` overrides 30 days, for tests).
pub fn renew_before() -> i64 {
    knob("SLIPWAY_ACME_RENEW_BEFORE_SECS", RENEW_BEFORE_SECS)
}

/// The apps whose `auto` flag is on.
fn auto_apps(home: &Home) -> Vec<AppName> {
    let Ok(entries) = std::fs::read_dir(certs::dir(home)) else { return Vec::new() };
    let mut apps: Vec<AppName> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok()?.parse::<AppName>().ok())
        .filter(|app| certs::flag(home, app, "auto"))
        .collect();
    apps.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    apps
}

/// Every host of `app` (default host first, then custom domains); `None` when the app is gone.
pub fn app_hosts(home: &Home, domain: &str, app: &AppName) -> anyhow::Result<Option<Vec<String>>> {
    let store = crate::store::Store::open(&home.db())?;
    if crate::store::apps::get(store.conn(), app)?.is_none() {
        return Ok(None);
    }
    let mut hosts = vec![crate::cli::default_host(app, domain)];
    hosts.extend(crate::store::domains::for_app(store.conn(), app)?.into_iter().map(|d| d.host));
    Ok(Some(hosts))
}

/// The ACME certificates (by file name) that cover none of the app's hosts any more: a removed
/// custom domain, the default host of the app's old name.
pub fn stale(certs: &[certs::Loaded], app_hosts: &[String]) -> Vec<String> {
    certs
        .iter()
        .filter(|c| c.source == certs::Source::Acme)
        .filter(|c| !c.hosts.iter().any(|name| app_hosts.iter().any(|h| certs::covers(name, h))))
        .filter_map(|c| Some(c.file.file_name()?.to_string_lossy().into_owned()))
        .collect()
}

/// One host that is due.
struct Due {
    app: AppName,
    host: String,
    why: Why,
}

/// The hosts due now, over every app with `auto` on; ACME certificates of hosts an app no
/// longer has are removed on the way.
fn due_hosts(home: &Home, domain: &str, now: i64, renew_before: i64) -> Vec<Due> {
    let mut due = Vec::new();
    for app in auto_apps(home) {
        let hosts = match app_hosts(home, domain, &app) {
            Ok(Some(hosts)) => hosts,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(app = %app, %err, "acme: cannot read the app's hosts");
                continue;
            }
        };
        let (loaded, _) = certs::load_app(home, app.as_str());
        for file in stale(&loaded, &hosts) {
            match certs::remove(home, &app, &file) {
                Ok(()) => event(
                    home,
                    &app,
                    &format!("ACME: removed {file}: its host is no longer one of the app's"),
                ),
                Err(err) => {
                    tracing::warn!(app = %app, %file, %err, "acme: cannot remove a stale certificate")
                }
            }
        }
        let state = load_state(home, app.as_str());
        for host in hosts.into_iter().filter(|h| eligible(h)) {
            let decision =
                decide(now, covering_not_after(&loaded, &host), renew_before, state.hosts.get(&host));
            if let Decision::Due(why) = decision {
                due.push(Due { app: app.clone(), host, why });
            }
        }
    }
    due
}

/// The daemon's renewal loop; never returns.
pub async fn run(home: Home) {
    let tick = Duration::from_secs(knob("SLIPWAY_ACME_CHECK_SECS", 5) as u64);
    // Challenges a previous daemon left pending (it stopped mid-order) are stale: only this
    // loop writes them, and one daemon runs per home.
    for dir in [certs::http01_dir(&home), certs::tls_alpn01_dir(&home)] {
        if let Err(err) = clear_dir(&dir) {
            tracing::warn!(dir = %dir.display(), %err, "acme: cannot remove stale challenge files");
        }
    }
    loop {
        pass(&home).await;
        tokio::time::sleep(tick).await;
    }
}

/// Removes the files in `dir` (a missing dir is empty).
fn clear_dir(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        crate::home::remove_if_present(&entry?.path())?;
    }
    Ok(())
}

/// One look at every host; issues what is due, one host at a time.
async fn pass(home: &Home) {
    if auto_apps(home).is_empty() {
        return;
    }
    let settings = match Settings::load(home) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, "acme: cannot read the settings; no certificates are ordered");
            return;
        }
    };
    let (look, domain) = (home.clone(), settings.domain.clone());
    let due = match tokio::task::spawn_blocking(move || {
        due_hosts(&look, &domain, certs::now_secs(), renew_before())
    })
    .await
    {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(%err, "acme: the check of due hosts failed");
            return;
        }
    };
    if due.is_empty() {
        return;
    }
    let account = match tokio::time::timeout(ISSUE_TIMEOUT, account(home, &settings)).await {
        Ok(Ok(account)) => account,
        Ok(Err(err)) => return fail_all(home, &due, &format!("the ACME account: {err}")),
        Err(_) => return fail_all(home, &due, "the ACME server did not answer in time"),
    };
    for item in due {
        let verb = match item.why {
            Why::Missing => "ordered",
            Why::Expiring => "renewal ordered",
        };
        event(
            home,
            &item.app,
            &format!("ACME: certificate for {} {verb} from {}", item.host, settings.acme_directory),
        );
        let result = match tokio::time::timeout(ISSUE_TIMEOUT, issue(home, &account, &item.host)).await {
            Ok(result) => result,
            Err(_) => Err("the ACME server did not finish in time".to_string()),
        };
        let outcome = result.and_then(|pem| {
            let name = certs::file_name(certs::Source::Acme, &item.host);
            certs::write(home, &item.app, &name, pem.as_bytes())
                .map_err(|e| format!("writing {name}: {e}"))
                .map(|()| pem)
        });
        match outcome {
            Ok(pem) => {
                let expiry =
                    certs::parse(item.app.as_str(), certs::Source::Acme, Path::new(""), pem.as_bytes())
                        .map(|c| certs::show_time(c.not_after))
                        .unwrap_or_default();
                let verb = match item.why {
                    Why::Missing => "issued",
                    Why::Expiring => "renewed",
                };
                event(
                    home,
                    &item.app,
                    &format!("ACME: certificate for {} {verb}, valid until {expiry}", item.host),
                );
                record(home, &item.app, &item.host, None);
            }
            Err(reason) => {
                if reason.contains(ACCOUNT_GONE) {
                    // The server forgot the account (a reset test server, a deactivated
                    // account): register a new one at the next attempt.
                    forget_account(home, &settings.acme_directory);
                }
                fail(home, &item.app, &item.host, &reason)
            }
        }
    }
}

/// The problem type of an account the server does not know.
const ACCOUNT_GONE: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

fn forget_account(home: &Home, directory: &str) {
    let file = account_dir(home).join(account_file_name(directory));
    match crate::home::remove_if_present(&file) {
        Ok(()) => {
            tracing::warn!(path = %file.display(), "acme: the server does not know this account; a new one is registered next time")
        }
        Err(err) => tracing::warn!(path = %file.display(), %err, "acme: cannot remove the stale account"),
    }
}

fn fail_all(home: &Home, due: &[Due], reason: &str) {
    for item in due {
        fail(home, &item.app, &item.host, reason);
    }
}

fn fail(home: &Home, app: &AppName, host: &str, reason: &str) {
    let state = record(home, app, host, Some(reason));
    event(
        home,
        app,
        &format!(
            "ACME: certificate for {host} failed: {reason}; next attempt at {}",
            certs::show_time(state.next_attempt)
        ),
    );
}

/// Writes the outcome of an attempt into the app's state file; returns the host's new state.
fn record(home: &Home, app: &AppName, host: &str, error: Option<&str>) -> HostState {
    let now = certs::now_secs();
    let mut state = load_state(home, app.as_str());
    let entry = state.hosts.entry(host.to_string()).or_default();
    match error {
        None => *entry = HostState { failures: 0, error: None, last_attempt: now, next_attempt: 0 },
        Some(reason) => {
            entry.failures = entry.failures.saturating_add(1);
            entry.error = Some(one_line(reason));
            entry.last_attempt = now;
            entry.next_attempt = now + backoff(entry.failures);
        }
    }
    let host_state = entry.clone();
    if let Err(err) = save_state(home, app, &state) {
        tracing::warn!(app = %app, %err, "acme: cannot write the state file");
    }
    host_state
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(500).collect()
}

fn event(home: &Home, app: &AppName, message: &str) {
    tracing::info!(app = %app, "{message}");
    crate::logs::append_event(&home.app_log(app), crate::logs::Source::Slipway, "router", message);
}

// ---------------------------------------------------------------------------------------------
// The account
// ---------------------------------------------------------------------------------------------

/// `certs/.acme/`: account keys, 0700.
fn account_dir(home: &Home) -> PathBuf {
    certs::dir(home).join(".acme")
}

/// The account file of a directory URL: `https://x/dir` → `https___x_dir.json`.
pub fn account_file_name(directory: &str) -> String {
    let name: String = directory
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    format!("{}.json", name.chars().take(200).collect::<String>())
}

/// The ACME account for the configured directory: restored from its file, or registered (and
/// its credentials written, 0600) on first use.
async fn account(home: &Home, settings: &Settings) -> Result<Account, String> {
    let file = account_file_name(&settings.acme_directory);
    let saved = crate::fsutil::read_beneath(&certs::dir(home), Path::new(".acme").join(&file)).ok();
    if let Some(saved) = saved {
        let credentials: AccountCredentials =
            serde_json::from_str(&saved).map_err(|e| format!("certs/.acme/{file} cannot be read: {e}"))?;
        return builder(settings)?.from_credentials(credentials).await.map_err(|e| e.to_string());
    }
    let contact = settings.acme_email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder(settings)?
        .create(&new, settings.acme_directory.clone(), None)
        .await
        .map_err(|e| e.to_string())?;
    let json = serde_json::to_vec_pretty(&credentials).map_err(|e| e.to_string())?;
    make_private_dir(home, &certs::dir(home)).map_err(|e| format!("creating certs/: {e}"))?;
    make_private_dir(home, &account_dir(home)).map_err(|e| format!("creating certs/.acme: {e}"))?;
    let owner = crate::daemon::home_owner(home);
    crate::fsutil::write_atomic_owned(&account_dir(home).join(&file), &json, 0o600, owner)
        .map_err(|e| format!("writing certs/.acme/{file}: {e}"))?;
    Ok(account)
}

/// A 0700 dir; made by a root daemon on the platform user's home, it is given to that user.
fn make_private_dir(home: &Home, dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let made = std::fs::DirBuilder::new().mode(0o700).create(dir);
    if let (Ok(()), Some((uid, gid))) = (&made, crate::daemon::home_owner(home)) {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    }
    match made {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(dir)?.is_dir() {
                Ok(())
            } else {
                Err(io::Error::other(format!("{} is not a directory", dir.display())))
            }
        }
        other => other,
    }
}

/// instant-acme's account builder: its own HTTPS client (the platform's roots) unless
/// `acme_ca_file` is set; then ours, trusting the system's CA bundle and that file.
fn builder(settings: &Settings) -> Result<instant_acme::AccountBuilder, String> {
    match &settings.acme_ca_file {
        None => Account::builder().map_err(|e| e.to_string()),
        Some(file) => {
            let client = CaClient::new(file)?;
            Ok(Account::builder_with_http(Box::new(client)))
        }
    }
}

/// The system's CA bundle, where Debian and most distributions keep it.
const SYSTEM_ROOTS: &[&str] = &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/// An HTTPS client for the ACME server trusting an extra CA: one connection per request (an
/// issuance makes a dozen requests; no pool is worth it).
struct CaClient {
    tls: tokio_rustls::TlsConnector,
}

impl CaClient {
    fn new(extra: &Path) -> Result<CaClient, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(bundle) = SYSTEM_ROOTS.iter().find(|p| Path::new(p).is_file()) {
            if let Ok(iter) = CertificateDer::pem_file_iter(bundle) {
                roots.add_parsable_certificates(iter.flatten());
            }
        }
        let extra_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(extra)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| format!("acme_ca_file {} cannot be read: {e}", extra.display()))?;
        if extra_certs.is_empty() {
            return Err(format!("acme_ca_file {} holds no certificate", extra.display()));
        }
        for cert in extra_certs {
            roots.add(cert).map_err(|e| format!("acme_ca_file {}: {e}", extra.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(CaClient { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl instant_acme::HttpClient for CaClient {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move { send(tls, req).await.map_err(instant_acme::Error::Other) })
    }
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    mut req: hyper::Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, BoxError> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(format!("the ACME server's URL {uri} is not https").into());
    }
    let host = uri.host().ok_or("the ACME URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp =
        tokio::time::timeout(Duration::from_secs(30), tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| format!("connecting to {host}:{port} timed out"))??;
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let stream = tls.connect(name, tcp).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "acme: connection to the ACME server ended");
        }
    });
    let authority = uri.authority().ok_or("the ACME URL has no host")?.as_str().to_string();
    *req.uri_mut() = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
    req.headers_mut().insert(hyper::header::HOST, authority.parse()?);
    let response = sender.send_request(req).await?;
    Ok(BytesResponse::from(response))
}

// ---------------------------------------------------------------------------------------------
// One issuance
// ---------------------------------------------------------------------------------------------

/// A certificate for `host`: HTTP-01 first, TLS-ALPN-01 when that fails. Returns the PEM to
/// store (key, then the chain), or why both failed.
async fn issue(home: &Home, account: &Account, host: &str) -> Result<String, String> {
    let http = match attempt(home, account, host, ChallengeType::Http01).await {
        Ok(pem) => return Ok(pem),
        Err(err) => err,
    };
    match attempt(home, account, host, ChallengeType::TlsAlpn01).await {
        Ok(pem) => Ok(pem),
        Err(alpn) => Err(format!("http-01: {http}; tls-alpn-01: {alpn}")),
    }
}

/// One order answered with one challenge type; challenge files are removed whatever happens.
async fn attempt(home: &Home, account: &Account, host: &str, kind: ChallengeType) -> Result<String, String> {
    let identifiers = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(|e| e.to_string())?;
    let mut placed: Vec<PathBuf> = Vec::new();
    let result = answer_and_finish(home, &mut order, &kind, &mut placed).await;
    for file in placed {
        if let Err(err) = crate::home::remove_if_present(&file) {
            tracing::warn!(path = %file.display(), %err, "acme: cannot remove a challenge file");
        }
    }
    result
}

async fn answer_and_finish(
    home: &Home,
    order: &mut instant_acme::Order,
    kind: &ChallengeType,
    placed: &mut Vec<PathBuf>,
) -> Result<String, String> {
    let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| e.to_string())?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("the authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the server offers no {} challenge", challenge_name(kind)))?;
            let key_auth = challenge.key_authorization();
            let file = match kind {
                ChallengeType::Http01 => {
                    if !crate::router::acme_http01::valid_token(&challenge.token) {
                        return Err("the server sent a malformed token".into());
                    }
                    let dir = certs::http01_dir(home);
                    let file = dir.join(&challenge.token);
                    certs::write_file(home, &file, key_auth.as_str().as_bytes())
                        .map_err(|e| format!("writing {}: {e}", file.display()))?;
                    file
                }
                _ => {
                    let host = challenge.identifier().to_string();
                    let pem = alpn_certificate(&host, key_auth.digest().as_ref())?;
                    let dir = certs::tls_alpn01_dir(home);
                    let file = dir.join(format!("{host}.pem"));
                    certs::write_file(home, &file, pem.as_bytes())
                        .map_err(|e| format!("writing {}: {e}", file.display()))?;
                    file
                }
            };
            placed.push(file);
            challenge.set_ready().await.map_err(|e| e.to_string())?;
        }
    }
    let status = order.poll_ready(&retries).await.map_err(|e| e.to_string())?;
    if status != OrderStatus::Ready {
        return Err(why_invalid(order).await);
    }
    let key = order.finalize().await.map_err(|e| e.to_string())?;
    let chain = order.poll_certificate(&retries).await.map_err(|e| e.to_string())?;
    Ok(format!("{}\n{}", key.trim_end(), chain))
}

fn challenge_name(kind: &ChallengeType) -> &'static str {
    match kind {
        ChallengeType::Http01 => "http-01",
        ChallengeType::TlsAlpn01 => "tls-alpn-01",
        ChallengeType::Dns01 => "dns-01",
        _ => "such",
    }
}

/// The server's reason for an order that did not become ready.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            reasons.extend(state.challenges.iter().filter_map(|c| c.error.as_ref()).map(
                |p| match &p.detail {
                    Some(detail) => detail.clone(),
                    None => p.to_string(),
                },
            ));
        }
    }
    if reasons.is_empty() {
        "the order was not validated".to_string()
    } else {
        reasons.join("; ")
    }
}

/// The TLS-ALPN-01 challenge certificate (RFC 8737): self-signed for `host`, with the key
/// authorization's SHA-256 in the critical acmeIdentifier extension; key and certificate PEM.
pub fn alpn_certificate(host: &str, digest: &[u8]) -> Result<String, String> {
    if digest.len() != 32 {
        return Err("the key authorization digest is not SHA-256".into());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(format!("{}{}", key.serialize_pem(), cert.pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;

    #[test]
    fn hosts_are_due_when_missing_or_expiring_unless_backing_off() {
        let now = 1_000_000_000;
        let failed = |failures, next_attempt| HostState {
            failures,
            error: Some("x".into()),
            last_attempt: now - 60,
            next_attempt,
        };
        let ok = HostState { failures: 0, error: None, last_attempt: now - DAY, next_attempt: 0 };
        let table: Vec<(&str, Option<i64>, Option<HostState>, Decision)> = vec![
            ("no certificate", None, None, Decision::Due(Why::Missing)),
            ("no certificate, last attempt fine", None, Some(ok.clone()), Decision::Due(Why::Missing)),
            ("expires in 31 days", Some(now + 31 * DAY), None, Decision::NotDue { renew_at: now + DAY }),
            ("expires in 29 days", Some(now + 29 * DAY), None, Decision::Due(Why::Expiring)),
            ("expired", Some(now - DAY), None, Decision::Due(Why::Expiring)),
            ("exactly 30 days", Some(now + 30 * DAY), None, Decision::Due(Why::Expiring)),
            (
                "failed, backoff running",
                None,
                Some(failed(2, now + 10)),
                Decision::BackingOff { until: now + 10 },
            ),
            ("failed, backoff over", None, Some(failed(2, now)), Decision::Due(Why::Missing)),
            (
                "failed renewal, backoff running",
                Some(now + DAY),
                Some(failed(1, now + 30)),
                Decision::BackingOff { until: now + 30 },
            ),
            (
                "failed long ago, good cert now",
                Some(now + 60 * DAY),
                Some(failed(3, now - 5)),
                Decision::NotDue { renew_at: now + 30 * DAY },
            ),
        ];
        for (what, not_after, state, want) in table {
            assert_eq!(decide(now, not_after, RENEW_BEFORE_SECS, state.as_ref()), want, "{what}");
        }
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_a_day() {
        let got: Vec<i64> = [1, 2, 3, 4, 10, 11, 12, 100, u32::MAX].iter().map(|f| backoff(*f)).collect();
        assert_eq!(got, vec![60, 120, 240, 480, 30_720, 61_440, DAY, DAY, DAY]);
        assert_eq!(backoff(0), 60);
    }

    #[test]
    fn wildcards_and_localhost_are_left_to_the_operator() {
        for (host, want) in [
            ("www.example.com", true),
            ("web.apps.test", true),
            ("*.example.com", false),
            ("web.localhost", false),
            ("localhost", false),
            ("intranet", false),
        ] {
            assert_eq!(eligible(host), want, "{host}");
        }
    }

    #[test]
    fn the_latest_covering_certificate_counts() {
        let load = |names: &[&str], until: i64| {
            let (key, leaf, ca) = crate::certs::tests::issued(names, -60, until);
            let pem = format!("{key}{leaf}{ca}");
            certs::parse("web", certs::Source::Manual, Path::new("x.pem"), pem.as_bytes()).expect("parses")
        };
        let all = vec![
            load(&["a.example.com"], 1000),
            load(&["*.example.com"], 5000),
            load(&["b.example.org"], 9000),
        ];
        let now = certs::now_secs();
        let a = covering_not_after(&all, "a.example.com").expect("covered");
        assert!((a - (now + 5000)).abs() < 5, "{a}");
        assert_eq!(covering_not_after(&all, "c.example.net"), None);
    }

    #[test]
    fn acme_certificates_of_hosts_the_app_lost_are_stale() {
        let load = |source, names: &[&str], file: &str| {
            let (key, leaf, ca) = crate::certs::tests::issued(names, -60, 1000);
            let pem = format!("{key}{leaf}{ca}");
            certs::parse("web", source, Path::new(file), pem.as_bytes()).expect("parses")
        };
        let all = vec![
            load(certs::Source::Acme, &["www.example.com"], "acme-www.example.com.pem"),
            load(certs::Source::Acme, &["old.example.com"], "acme-old.example.com.pem"),
            load(certs::Source::Manual, &["gone.example.com"], "manual-gone.example.com.pem"),
        ];
        let hosts = vec!["web.apps.test".to_string(), "www.example.com".to_string()];
        assert_eq!(stale(&all, &hosts), vec!["acme-old.example.com.pem"]);
    }

    #[test]
    fn stale_challenges_are_cleared() {
        let (dir, outside) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let target = outside.path().join("keep");
        std::fs::write(&target, "keep").expect("write");
        std::fs::write(dir.path().join("token"), "x").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("link")).expect("symlink");
        clear_dir(dir.path()).expect("cleared");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        assert!(target.exists(), "a link is removed, not followed");
        clear_dir(&dir.path().join("missing")).expect("a missing dir is empty");
    }

    #[test]
    fn account_files_are_named_after_the_directory() {
        assert_eq!(
            account_file_name("https://acme-v02.api.letsencrypt.org/directory"),
            "https___acme-v02.api.letsencrypt.org_directory.json"
        );
        assert_eq!(account_file_name("https://127.0.0.1:14000/dir"), "https___127.0.0.1_14000_dir.json");
    }

    #[test]
    fn the_alpn_challenge_certificate_carries_the_digest() {
        let pem = alpn_certificate("www.example.com", &[7u8; 32]).expect("made");
        let loaded =
            certs::parse("web", certs::Source::Acme, Path::new("c.pem"), pem.as_bytes()).expect("parses");
        assert_eq!(loaded.hosts, vec!["www.example.com"]);
        let (_, cert) = x509_parser::parse_x509_certificate(loaded.chain[0].as_ref()).expect("x509");
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        assert!(alpn_certificate("x.example.com", &[1, 2]).is_err());
    }
}
