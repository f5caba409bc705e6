//! The HTTP router (issue 6): an HTTP/1.1 reverse proxy that the router process ([`service`]) runs on
//! `SLIPWAY_ROUTER_ADDR`, sending `Host: <app>.<SLIPWAY_DOMAIN>` and each custom domain to that
//! app's `up` web dynos, round robin.
//!
//! What it guarantees:
//! - It is its own HTTP/1.1 proxy ([`proxy`], [`http1`]): each client connection is one task
//!   that reads a request head, routes it and relays request and response over a kept-alive
//!   connection to the dyno ([`pool`]), so a request costs about what it costs nginx. Bodies
//!   stream both ways without being buffered whole; a request's chunked body is checked
//!   strictly (RFC 9112 §7.1: CRLF only, well-formed extensions and trailers) and re-chunked for
//!   the dyno without extensions or trailers, so a dyno never parses framing a client wrote. Client connections are kept alive; `1xx` responses (`100 Continue`) are passed on;
//!   `Upgrade` requests (websockets) are passed through: once the dyno answers `101`, both
//!   connections are spliced with `copy_bidirectional`.
//! - The routing table is swapped atomically by [`Router::update`]. The request path takes a
//!   read lock only to look up the host, pick a backend and count the request as in flight to
//!   it (no await inside); updates take the write lock only to swap an `Arc`. Because picking
//!   and counting happen under the same read lock, once `update` has returned no request can
//!   still be about to start on a backend the new table dropped, so [`Router::drain`] after
//!   `update` really waits for every request that backend will ever get.
//! - Headers: hop-by-hop headers dropped; `X-Forwarded-For` (client appended),
//!   `X-Forwarded-Proto: http`, `X-Forwarded-Port` (the router's port), `X-Request-Id` (the
//!   client's if valid, else a new UUID-shaped id) set for the dyno; the `Host` is passed on
//!   (an absolute-form target's authority replaces it). A proxy on loopback (TLS termination in
//!   front) may pass its own `X-Forwarded-Proto` and `-Port`, `Forwarded`, `X-Forwarded-Host`
//!   and `X-Real-IP` through ([`headers::Forwarded`], [`headers::is_proxy_claim`]); from anyone
//!   else the last three are dropped.
//! - Every request routed to an app writes one `router[…]` line to that app's log ([`log`]).
//!
//! Errors (plain HTML pages; each with a router line in the app's log, except 404 and 431,
//! which have no app and go to the router process's own log, `logs/router.log`):
//!
//! | situation | status | code |
//! |---|---|---|
//! | no app answers at the `Host` | 404 | – |
//! | the app has no web dyno ([`AppStatus::NoWebDynos`], or `Up` with none) | 503 | `H14` No web processes running |
//! | web dynos exist, none up, one crashed ([`AppStatus::Crashed`]) | 503 | `H10` App crashed |
//! | the dyno refused the connection, and so did the next one (tried once) or there is no other | 503 | `H10` App crashed |
//! | the dyno accepted but closed or broke the connection before a response head (a GET, HEAD or OPTIONS without a body is tried once more first) | 503 | `H13` Connection closed without response |
//! | no response head within the timeout (`SLIPWAY_ROUTER_TIMEOUT`, 30 s) after the request was sent (a slow upload's clock starts at its last byte) | 503 | `H12` Request timeout |
//! | the client went away before the response head | (499, logged only) | `H27` Client Request Interrupted |
//! | the client's request body stalled for 55 s ([`IDLE_TIMEOUT`]) | (499, logged only; connection closed) | `H28` Client Connection Idle |
//! | the dyno's response body stalled for 55 s (the status already went out) | (connection closed) | `H15` Idle connection |
//! | request head (request line + headers) over 64 KiB, or more than 100 header lines in the head the dyno would get (the router adds four) | 431 | – |
//! | a request the router cannot frame safely (both `Content-Length` and `Transfer-Encoding`, conflicting lengths, any `CONNECT`, a malformed chunked body), a target with characters no URI has or an authority RFC 3986 does not allow, or with no `Host` (HTTP/1.1) or two | 400 | – |
//! | a `Transfer-Encoding` other than `chunked` alone (`gzip, chunked` too), as nginx | 501 | – |
//!
//! A refused connection is reported as `H10`: a web dyno that does not accept on its port is,
//! to the user, a crashed app (the supervisor sees the exit a moment later), and `H10` is the
//! code Heroku users know for it. The retry only happens when the request body has not been
//! read yet, which is always the case for a refused connection. A request is retried at most
//! once, whatever the reason, and never after a timeout.

pub mod acme_http01;
mod certstore;
pub mod control;
#[doc(hidden)]
pub mod differential;
mod h2;
pub mod headers;
mod http1;
mod in_flight;
pub mod keeper;
mod limits;
pub mod log;
mod pool;
mod proxy;
pub mod reuseport;
pub mod service;
mod table;
mod tls;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;

pub use self::certstore::{choose as choose_certificate, Candidate as CertCandidate};
pub use self::limits::{default_max_connections, raise_fd_limit, MAX_PER_IP};
pub use self::log::RouterError;
pub use self::table::{normalize_host, AppRoute, AppStatus, Backend, RouteTable};
pub use self::tls::HANDSHAKE_TIMEOUT;

use self::headers::Scheme;
use self::in_flight::{InFlight, InFlightGuard};
use self::limits::{Limits, RateLimitedLog};
use self::log::{LogPath, LogSink, H10, H14};
use self::pool::Pool;
use crate::home::Home;
use crate::logs::LogPolicy;

/// How long a request or response body may go without a byte moving before the router gives
/// up on it: Heroku's 55 s rolling window (`H15` for a dyno, `H28` for a client).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// How long a client has to send a complete request head, counted from when the router starts
/// waiting for it; so it is also how long a kept-alive connection may sit idle between requests,
/// and a client dribbling a head byte by byte (slowloris) is cut off after it all the same.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a [`Router`] needs besides its routing table.
#[derive(Clone)]
pub struct RouterConfig {
    /// How long to wait for a dyno's response head before answering 503 `H12`.
    pub timeout: Duration,
    /// How long a body (either way) may stall before the connection is cut (`H15`/`H28`).
    pub idle_timeout: Duration,
    /// How long a client may take to send a request head, idle time before it included
    /// ([`HEAD_TIMEOUT`]); then 408 (or a silent close if it sent nothing).
    pub head_timeout: Duration,
    /// Where an app's log file is; `None` means the app's lines are not written.
    pub log_path: LogPath,
    pub log_policy: LogPolicy,
    /// Client connections open at once; `None`: [`default_max_connections`] when the router is
    /// made (so raise the fd limit first, [`raise_fd_limit`]).
    pub max_connections: Option<usize>,
    /// Client connections open at once from one address (but `127.0.0.1`/`::1`, a TLS proxy in
    /// front): [`MAX_PER_IP`].
    pub max_per_ip: usize,
    /// Whose `certs/` the HTTPS listener serves (see [`certstore`]); `None`: no certificates.
    pub home: Option<Home>,
    /// The HTTPS listener's port, for redirects from plain HTTP; `None`: no redirects.
    pub https_port: Option<u16>,
}

impl RouterConfig {
    /// App logs under `home` (`logs/<app>/app.log`) rotated by the policy of its settings (as
    /// every other writer does), and the default timeout (30 s).
    pub fn for_home(home: &Home) -> RouterConfig {
        let log_policy = LogPolicy::for_home(home);
        let certs_home = home.clone();
        let home = home.clone();
        let log_path: LogPath = Arc::new(move |app: &str| -> Option<PathBuf> {
            app.parse::<crate::app::AppName>().ok().map(|name| home.app_log(&name))
        });
        RouterConfig {
            timeout: Duration::from_secs(30),
            idle_timeout: IDLE_TIMEOUT,
            head_timeout: HEAD_TIMEOUT,
            log_path,
            log_policy,
            max_connections: None,
            max_per_ip: MAX_PER_IP,
            home: Some(certs_home),
            https_port: None,
        }
    }

    /// The daemon's set-up: [`for_home`](Self::for_home) with `SLIPWAY_ROUTER_TIMEOUT` and the
    /// log policy from the settings.
    pub fn from_settings(home: &Home, settings: &crate::settings::Settings) -> RouterConfig {
        let mut config =
            RouterConfig::for_home(home).timeout(settings.router_timeout).log_policy(settings.log_policy);
        config.https_port = settings.https_addr.map(|a| a.port());
        config
    }

    /// Plain-HTTP requests to an app with the `redirect` flag and a certificate for the host are
    /// redirected to HTTPS on `port`.
    pub fn https_port(mut self, port: u16) -> RouterConfig {
        self.https_port = Some(port);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> RouterConfig {
        self.timeout = timeout;
        self
    }

    pub fn idle_timeout(mut self, idle: Duration) -> RouterConfig {
        self.idle_timeout = idle;
        self
    }

    pub fn head_timeout(mut self, timeout: Duration) -> RouterConfig {
        self.head_timeout = timeout;
        self
    }

    pub fn log_policy(mut self, policy: LogPolicy) -> RouterConfig {
        self.log_policy = policy;
        self
    }

    pub fn max_connections(mut self, max: usize) -> RouterConfig {
        self.max_connections = Some(max);
        self
    }

    pub fn max_per_ip(mut self, max: usize) -> RouterConfig {
        self.max_per_ip = max;
        self
    }
}

/// The router. Cheap to clone; every clone shares one table, one connection pool and one log
/// writer.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared with the TLS certificate resolver, which looks up the app at an SNI name.
    live: Arc<RwLock<Arc<Live>>>,
    /// In-flight counts by backend port; also serialises `update`s.
    in_flight: Mutex<HashMap<u16, Arc<InFlight>>>,
    pool: Pool,
    timeout: Duration,
    idle_timeout: Duration,
    head_timeout: Duration,
    sink: LogSink,
    limits: Arc<Limits>,
    accept_errors: RateLimitedLog,
    /// Set once by [`Router::retire`]: accept loops stop, connections close after their
    /// current request.
    retire: tokio::sync::watch::Sender<bool>,
    /// Duplicates of the listening sockets given to [`Router::serve_on_threads`] (HTTP, and
    /// HTTPS if any), to steer their addresses' new connections to a successor router
    /// ([`reuseport::steer_to_newest`]).
    listeners: Mutex<Vec<std::net::TcpListener>>,
    /// The apps' certificates and `redirect` flags.
    certs: Arc<certstore::CertStore>,
    /// The HTTPS listener's port, for redirects.
    https_port: Option<u16>,
    /// The TLS set-up (certificate resolver, ALPN `h2` and `http/1.1`).
    tls: Arc<rustls::ServerConfig>,
}

/// The table as the request path uses it: host → app, with shared counters.
#[derive(Default)]
struct Live {
    hosts: HashMap<String, Arc<LiveApp>>,
    apps: HashMap<String, Arc<LiveApp>>,
}

struct LiveApp {
    name: Arc<str>,
    /// `None`: not routable, with this error.
    unavailable: Option<RouterError>,
    backends: Vec<LiveBackend>,
    ports: Vec<u16>,
    /// Round-robin counter; carried over from the previous table for the same app.
    next: Arc<AtomicUsize>,
}

struct LiveBackend {
    dyno: Arc<str>,
    port: u16,
    in_flight: Arc<InFlight>,
}

enum Selection {
    UnknownHost,
    Unavailable(Arc<str>, RouterError),
    Backend { app: Arc<str>, dyno: Arc<str>, port: u16, guard: InFlightGuard },
}

impl Router {
    /// A router with an empty table (every host is unknown until [`update`](Self::update)).
    /// Starts the log writer thread; needs no runtime until [`serve`](Self::serve).
    pub fn new(config: RouterConfig) -> Router {
        let live = Arc::new(RwLock::new(Arc::new(Live::default())));
        let certs = Arc::new(certstore::CertStore::new(config.home.clone()));
        let tls = tls::server_config(live.clone(), certs.clone());
        Router {
            inner: Arc::new(Inner {
                live,
                in_flight: Mutex::new(HashMap::new()),
                pool: Pool::default(),
                timeout: config.timeout,
                idle_timeout: config.idle_timeout,
                head_timeout: config.head_timeout,
                sink: LogSink::start(config.log_path, config.log_policy),
                limits: Limits::new(
                    config.max_connections.unwrap_or_else(default_max_connections),
                    config.max_per_ip,
                ),
                accept_errors: RateLimitedLog::default(),
                retire: tokio::sync::watch::Sender::new(false),
                listeners: Mutex::new(Vec::new()),
                certs,
                https_port: config.https_port,
                tls,
            }),
        }
    }

    /// Swaps in a new routing table. Requests already past routing finish where they are;
    /// every later request uses the new table. Never waits on the request path.
    pub fn update(&self, table: RouteTable) {
        let inner = &self.inner;
        let mut in_flight = inner.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let old = inner.live.read().unwrap_or_else(PoisonError::into_inner).clone();
        let mut live = Live::default();
        for route in table.apps() {
            let (unavailable, backends) = match &route.status {
                AppStatus::Up(backends) if !backends.is_empty() => (None, backends.as_slice()),
                AppStatus::Up(_) | AppStatus::NoWebDynos => (Some(H14), &[][..]),
                AppStatus::Crashed => (Some(H10), &[][..]),
            };
            let backends: Vec<LiveBackend> = backends
                .iter()
                .map(|b| LiveBackend {
                    dyno: Arc::from(b.dyno.as_str()),
                    port: b.port,
                    in_flight: in_flight.entry(b.port).or_default().clone(),
                })
                .collect();
            let next = old.apps.get(&route.app).map(|a| a.next.clone()).unwrap_or_default();
            let app = Arc::new(LiveApp {
                name: Arc::from(route.app.as_str()),
                unavailable,
                ports: backends.iter().map(|b| b.port).collect(),
                backends,
                next,
            });
            live.apps.insert(route.app.clone(), app);
        }
        for (host, app) in table.hosts() {
            if let Some(app) = live.apps.get(app) {
                live.hosts.insert(host.to_string(), app.clone());
            }
        }
        let in_use: HashSet<u16> = live.apps.values().flat_map(|a| a.ports.iter().copied()).collect();
        *inner.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
        // After the swap: nothing can start on a dropped backend any more (see the module docs),
        // so an idle one's counter can go; a busy one stays until drained and a later update.
        in_flight.retain(|port, f| in_use.contains(port) || f.count() > 0);
        // Nor will its idle connections be used again: closing them now lets the dyno stop
        // without waiting on them.
        inner.pool.retain(&in_use);
    }

    /// Waits until no request is in flight to the backend on `port` (responses still
    /// streaming and open websocket tunnels count), or until `max` has passed. Call it after an
    /// [`update`](Self::update) that removed the backend. Returns false if `max` ran out.
    pub async fn drain(&self, port: u16, max: Duration) -> bool {
        let counter = self.inner.in_flight.lock().unwrap_or_else(PoisonError::into_inner).get(&port).cloned();
        match counter {
            Some(counter) => tokio::time::timeout(max, counter.idle()).await.is_ok(),
            None => true,
        }
    }

    /// Client connections open right now.
    pub fn open_connections(&self) -> usize {
        self.inner.limits.open()
    }

    /// Requests in flight to the backend on `port` right now.
    pub fn in_flight(&self, port: u16) -> usize {
        let map = self.inner.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&port).map_or(0, |c| c.count())
    }

    /// Accepts connections forever (stop it by dropping or aborting its task; connections in
    /// progress finish on their own tasks). `X-Forwarded-Port` is the listener's port.
    pub async fn serve(&self, listener: TcpListener) {
        let via = proxy::Listener {
            port: listener.local_addr().map(|a| a.port()).unwrap_or(0),
            scheme: Scheme::Http,
        };
        self.accept(listener, limits::BUSY, move |inner, stream, peer| {
            proxy::serve_connection(inner, stream, peer, via)
        })
        .await
    }

    /// Like [`serve`](Self::serve), for HTTPS: each connection's TLS handshake (10 s at most,
    /// [`HANDSHAKE_TIMEOUT`]) picks the certificate by SNI, then serves HTTP/2 to a client that
    /// offered `h2` and HTTP/1.1 to the others (see [`tls`]).
    pub async fn serve_tls(&self, listener: TcpListener) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        // A connection over a cap is closed unanswered: it has not even said hello yet.
        self.accept(listener, b"", move |inner, stream, peer| {
            tls::serve_connection(inner, stream, peer, port)
        })
        .await
    }

    /// The accept loop of a listener: every connection admitted by the limits gets a task
    /// running `serve`; one over a cap gets `busy` (if not empty) and is closed.
    async fn accept<F, Fut>(&self, listener: TcpListener, busy: &'static [u8], serve: F)
    where
        F: Fn(Arc<Inner>, tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut retire = self.inner.retire.subscribe();
        let accepting = async {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = retire.wait_for(|retiring| *retiring) => break,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning,
                        // and say so at most once per 10 s.
                        self.inner
                            .accept_errors
                            .note(|n| tracing::warn!(%err, errors = n, "router accept failed"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let guard = match self.inner.limits.admit(peer.ip()) {
                    Ok(guard) => guard,
                    Err(_) => {
                        // Over a cap (see `limits`): refused as cheaply as possible.
                        if !busy.is_empty() {
                            let _ = stream.try_write(busy);
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let served = serve(self.inner.clone(), stream, peer);
                tokio::spawn(async move {
                    let _counted = guard;
                    served.await;
                });
            }
        };
        let sweeping = async {
            let mut every = tokio::time::interval(pool::IDLE_TIMEOUT / 4);
            loop {
                every.tick().await;
                self.inner.pool.sweep();
            }
        };
        // Retired: the listener closes here; connections in progress go on on their tasks.
        tokio::select! {
            _ = accepting => {}
            _ = sweeping => {}
        }
        drop(listener);
    }

    /// Hands the address over to a successor and winds down (an upgrade, or a stop). With
    /// `steer`, new connections are first steered to the newest listener of the address's
    /// `SO_REUSEPORT` group (the successor, already accepting), and this router keeps accepting
    /// for `settle` so connections already queued on its socket are served rather than reset.
    /// Then the accept loops stop, kept-alive connections close after their current request,
    /// and this waits until no client connection is open or `grace` ran out. Returns the
    /// connections still open then.
    pub async fn retire(&self, steer: bool, settle: Duration, grace: Duration) -> usize {
        if steer {
            match self.steer_to_successor() {
                Ok(true) => tokio::time::sleep(settle).await,
                Ok(false) => {}
                Err(err) => tracing::warn!(%err, "cannot steer new connections to the new router"),
            }
        }
        self.inner.listeners.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.inner.retire.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_connections()
    }

    /// From now on the kernel gives new connections to the address to the successor that
    /// joined it (the second listener of its reuseport group, see [`reuseport`]); this router
    /// still accepts what was already queued for it. False when it serves no listener.
    pub fn steer_to_successor(&self) -> std::io::Result<bool> {
        let listeners = self.inner.listeners.lock().unwrap_or_else(PoisonError::into_inner);
        for listener in listeners.iter() {
            reuseport::steer_to_newest(listener)?;
        }
        Ok(!listeners.is_empty())
    }

    /// True once [`retire`](Self::retire) has begun closing.
    pub fn retiring(&self) -> bool {
        *self.inner.retire.borrow()
    }

    /// Serves `listener` on `threads` threads of the router's own, each with a single-threaded
    /// runtime that accepts from the same socket (the daemon's set-up). A connection, its
    /// requests and its pooled connections to dynos then stay on one thread, as with nginx's
    /// workers: on tokio's shared multi-threaded runtime, tasks woken across its two workers
    /// made each request cost ~20 % more CPU. The threads live as long as the process.
    pub fn serve_on_threads(&self, listener: std::net::TcpListener, threads: usize) -> std::io::Result<()> {
        self.serve_with_tls_on_threads(listener, None, threads)
    }

    /// [`serve_on_threads`](Self::serve_on_threads) with an HTTPS listener as well
    /// ([`serve_tls`](Self::serve_tls)): each thread accepts from both.
    pub fn serve_with_tls_on_threads(
        &self,
        listener: std::net::TcpListener,
        https: Option<std::net::TcpListener>,
        threads: usize,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        if let Some(https) = &https {
            https.set_nonblocking(true)?;
            // Certificates are read before the first handshake rather than during it.
            self.inner.certs.load();
        }
        {
            let mut kept = self.inner.listeners.lock().unwrap_or_else(PoisonError::into_inner);
            kept.push(listener.try_clone()?);
            if let Some(https) = &https {
                kept.push(https.try_clone()?);
            }
        }
        for index in 0..threads.max(1) {
            let listener = listener.try_clone()?;
            let https = https.as_ref().map(std::net::TcpListener::try_clone).transpose()?;
            let router = self.clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new().name(format!("router-{index}")).spawn(move || {
                pool::set_worker(index);
                runtime.block_on(async move {
                    let https = async {
                        match https.map(TcpListener::from_std) {
                            Some(Ok(https)) => router.serve_tls(https).await,
                            Some(Err(err)) => {
                                tracing::error!(%err, index, "router thread cannot listen for HTTPS")
                            }
                            None => {}
                        }
                    };
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::join!(router.serve(listener), https);
                        }
                        Err(err) => tracing::error!(%err, index, "router thread cannot listen"),
                    }
                    // Retired: this runtime's connection tasks end with it, so it lives until
                    // they are done (the process ends after `retire`'s grace anyway).
                    while router.open_connections() > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            })?;
        }
        Ok(())
    }
}

impl Inner {
    /// Looks up `host` and picks a backend (round robin, skipping `skip`), counting the request
    /// in flight to it, all under the table's read lock (see the module docs).
    fn select(&self, host: &str, skip: Option<u16>) -> Selection {
        let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
        let Some(app) = live.hosts.get(host) else {
            return Selection::UnknownHost;
        };
        if let Some(error) = app.unavailable {
            return Selection::Unavailable(app.name.clone(), error);
        }
        let n = app.next.fetch_add(1, Ordering::Relaxed);
        match table::pick(n, &app.ports, skip) {
            Some(i) => {
                let b = &app.backends[i];
                Selection::Backend {
                    app: app.name.clone(),
                    dyno: b.dyno.clone(),
                    port: b.port,
                    guard: b.in_flight.enter(),
                }
            }
            None => Selection::Unavailable(app.name.clone(), H10),
        }
    }
}
