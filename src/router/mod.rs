//! The HTTP router (issue 6): an HTTP/1.1 reverse proxy that the daemon runs on
//! `SLIPWAY_ROUTER_ADDR`, sending `Host: <app>.<SLIPWAY_DOMAIN>` and each custom domain to that
//! app's `up` web dynos, round robin.
//!
//! What it guarantees:
//! - Bodies stream both ways, frame by frame (chunked or sized, as each side sent them); nothing
//!   is buffered whole. Client connections are kept alive; connections to dynos are pooled
//!   (hyper-util's client). `Upgrade` requests (websockets) are passed through: once the dyno
//!   answers `101`, both connections are spliced with `copy_bidirectional`.
//! - The routing table is swapped atomically by [`Router::update`]. The request path takes a
//!   read lock only to look up the host, pick a backend and count the request as in flight to
//!   it (no await inside); updates take the write lock only to swap an `Arc`. Because picking
//!   and counting happen under the same read lock, once `update` has returned no request can
//!   still be about to start on a backend the new table dropped, so [`Router::drain`] after
//!   `update` really waits for every request that backend will ever get.
//! - Headers: hop-by-hop headers dropped; `X-Forwarded-For` (client appended),
//!   `X-Forwarded-Proto: http`, `X-Forwarded-Port` (the router's port), `X-Request-Id` (the
//!   client's if valid, else a new UUID-shaped id) set for the dyno; the `Host` is passed on.
//!   A proxy on loopback (TLS termination in front) may pass its own `X-Forwarded-Proto` and
//!   `-Port` through ([`headers::set_forwarded`]).
//! - Every request routed to an app writes one `router[…]` line to that app's log ([`log`]).
//!
//! Errors (plain HTML pages; each with a router line in the app's log, except 404 and 431,
//! which have no app and go to the daemon's own log):
//!
//! | situation | status | code |
//! |---|---|---|
//! | no app answers at the `Host` | 404 | – |
//! | the app has no web dyno ([`AppStatus::NoWebDynos`], or `Up` with none) | 503 | `H14` No web processes running |
//! | web dynos exist, none up, one crashed ([`AppStatus::Crashed`]) | 503 | `H10` App crashed |
//! | the dyno refused the connection, and so did the next one (tried once) or there is no other | 503 | `H10` App crashed |
//! | the dyno accepted but closed or broke the connection before a response head (a GET, HEAD or OPTIONS without a body is tried once more first) | 503 | `H13` Connection closed without response |
//! | no response head within the timeout (`SLIPWAY_ROUTER_TIMEOUT`, 30 s) after the request was sent (a slow upload's clock starts at its last byte) | 503 | `H12` Request timeout |
//! | request head (request line + headers) over 64 KiB, or more than 100 headers | 431 | – (hyper answers it) |
//!
//! A refused connection is reported as `H10`: a web dyno that does not accept on its port is,
//! to the user, a crashed app (the supervisor sees the exit a moment later), and `H10` is the
//! code Heroku users know for it. The retry only happens when the request body has not been
//! read yet, which is always the case for a refused connection. A request is retried at most
//! once, whatever the reason, and never after a timeout.

mod body;
pub mod headers;
pub mod log;
mod table;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

pub use self::log::RouterError;
pub use self::table::{normalize_host, AppRoute, AppStatus, Backend, RouteTable};

use self::body::{BodySlot, Finish, InFlight, InFlightGuard, Progress, Relayed, RetryableBody};
use self::log::{LogPath, LogSink, RequestLine, H10, H12, H13, H14};
use crate::home::Home;
use crate::logs::LogPolicy;

/// Largest request head (request line + headers) accepted; larger ones get 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// What a [`Router`] needs besides its routing table.
#[derive(Clone)]
pub struct RouterConfig {
    /// How long to wait for a dyno's response head before answering 503 `H12`.
    pub timeout: Duration,
    /// Where an app's log file is; `None` means the app's lines are not written.
    pub log_path: LogPath,
    pub log_policy: LogPolicy,
}

impl RouterConfig {
    /// App logs under `home` (`logs/<app>/app.log`) rotated by the policy recorded there (as
    /// every other writer does), and the default timeout (30 s).
    pub fn for_home(home: &Home) -> RouterConfig {
        let log_policy = LogPolicy::for_logs_dir(&home.root().join("logs"));
        let home = home.clone();
        let log_path: LogPath = Arc::new(move |app: &str| -> Option<PathBuf> {
            app.parse::<crate::app::AppName>().ok().map(|name| home.app_log(&name))
        });
        RouterConfig { timeout: Duration::from_secs(30), log_path, log_policy }
    }

    /// The daemon's set-up: [`for_home`](Self::for_home) with `SLIPWAY_ROUTER_TIMEOUT` and the
    /// log policy from the settings.
    pub fn from_settings(home: &Home, settings: &crate::settings::Settings) -> RouterConfig {
        RouterConfig::for_home(home).timeout(settings.router_timeout).log_policy(settings.log_policy)
    }

    pub fn timeout(mut self, timeout: Duration) -> RouterConfig {
        self.timeout = timeout;
        self
    }

    pub fn log_policy(mut self, policy: LogPolicy) -> RouterConfig {
        self.log_policy = policy;
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
    live: RwLock<Arc<Live>>,
    /// In-flight counts by backend port; also serialises `update`s.
    in_flight: Mutex<HashMap<u16, Arc<InFlight>>>,
    client: Client<HttpConnector, RetryableBody>,
    timeout: Duration,
    sink: LogSink,
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
    dyno: String,
    port: u16,
    /// `127.0.0.1:<port>`, built once per table rather than per request.
    authority: Authority,
    in_flight: Arc<InFlight>,
}

enum Selection {
    UnknownHost,
    Unavailable(Arc<str>, RouterError),
    Backend { app: Arc<str>, dyno: String, port: u16, authority: Authority, guard: InFlightGuard },
}

type RespBody = BoxBody<Bytes, hyper::Error>;

impl Router {
    /// A router with an empty table (every host is unknown until [`update`](Self::update)).
    /// Starts the log writer thread; needs no runtime until [`serve`](Self::serve).
    pub fn new(config: RouterConfig) -> Router {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Router {
            inner: Arc::new(Inner {
                live: RwLock::new(Arc::new(Live::default())),
                in_flight: Mutex::new(HashMap::new()),
                client,
                timeout: config.timeout,
                sink: LogSink::start(config.log_path, config.log_policy),
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
                    dyno: b.dyno.clone(),
                    port: b.port,
                    authority: Authority::from_maybe_shared(Bytes::from(format!("127.0.0.1:{}", b.port)))
                        .unwrap_or_else(|_| Authority::from_static("127.0.0.1")),
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
        let in_use: std::collections::HashSet<u16> =
            live.apps.values().flat_map(|a| a.ports.iter().copied()).collect();
        *inner.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
        // After the swap: nothing can start on a dropped backend any more (see the module docs),
        // so an idle one's counter can go; a busy one stays until drained and a later update.
        in_flight.retain(|port, f| in_use.contains(port) || f.count() > 0);
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

    /// Requests in flight to the backend on `port` right now.
    pub fn in_flight(&self, port: u16) -> usize {
        let map = self.inner.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&port).map_or(0, |c| c.count())
    }

    /// Accepts connections forever (stop it by dropping or aborting its task; connections in
    /// progress finish on their own tasks). `X-Forwarded-Port` is the listener's port.
    pub async fn serve(&self, listener: TcpListener) {
        let listen_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_header_size(MAX_REQUEST_HEAD)
            .header_read_timeout(Duration::from_secs(30));
        let builder = Arc::new(builder);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "router accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let inner = self.inner.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let inner = inner.clone();
                    async move { Ok::<_, Infallible>(inner.handle(req, peer, listen_port).await) }
                });
                if let Err(err) =
                    builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await
                {
                    tracing::debug!(%peer, %err, "router client connection ended with an error");
                }
            });
        }
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
                    authority: b.authority.clone(),
                    guard: b.in_flight.enter(),
                }
            }
            None => Selection::Unavailable(app.name.clone(), H10),
        }
    }

    async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        listen_port: u16,
    ) -> Response<RespBody> {
        let started = Instant::now();
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        let raw_host = authority
            .clone()
            .or_else(|| req.headers().get(HOST).and_then(|v| v.to_str().ok()).map(str::to_owned));
        let host = raw_host.as_deref().and_then(normalize_host);
        let request_id = headers::request_id(req.headers());
        let selection = match &host {
            Some(host) => self.select(host, None),
            None => Selection::UnknownHost,
        };
        if let Selection::UnknownHost = selection {
            let shown: String =
                raw_host.unwrap_or_default().chars().filter(|c| !c.is_control()).take(100).collect();
            tracing::info!(host = %shown, method = %req.method(), %peer, request_id, "router: no app at this host (404)");
            return page(
                StatusCode::NOT_FOUND,
                None,
                "No such app",
                "There is no app at this address.",
                &request_id,
            );
        }
        let host = host.unwrap_or_default();

        let upgrade = headers::wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let path_and_query =
            parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path = path_and_query.as_str().to_string();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        let fwd = headers::set_forwarded(&mut parts.headers, peer.ip(), listen_port, &request_id);
        if let Some(authority) = authority.filter(|_| !parts.headers.contains_key(HOST)) {
            if let Ok(v) = HeaderValue::from_str(&authority) {
                parts.headers.insert(HOST, v);
            }
        }
        let mut line = RequestLine {
            error: None,
            method: parts.method.to_string(),
            path,
            host: host.clone(),
            request_id: request_id.clone(),
            fwd,
            dyno: None,
            connect: Duration::ZERO,
            service: Duration::ZERO,
            status: 0,
            bytes: 0,
        };
        let body_was_empty = hyper::body::Body::is_end_stream(&body);
        let slot: BodySlot = Arc::new(Mutex::new(Some(body)));
        let progress = (!body_was_empty).then(|| Arc::new(Progress::new(started)));

        let mut selection = selection;
        let mut retried = false;
        loop {
            let (app, dyno, port, backend_authority, guard) = match selection {
                Selection::Backend { app, dyno, port, authority, guard } => {
                    (app, dyno, port, authority, guard)
                }
                Selection::Unavailable(app, error) => return self.fail(&app, line, error, started),
                Selection::UnknownHost => return page_for(H10, &request_id), // handled above
            };
            line.dyno = Some(dyno.clone());
            let uri = match Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(backend_authority)
                .path_and_query(path_and_query.clone())
                .build()
            {
                Ok(uri) => uri,
                Err(_) => {
                    return page(StatusCode::BAD_REQUEST, None, "Bad request", "Malformed path.", &request_id)
                }
            };
            let mut backend_req = Request::new(RetryableBody::new(&slot, progress.clone()));
            *backend_req.method_mut() = parts.method.clone();
            *backend_req.uri_mut() = uri;
            *backend_req.version_mut() = Version::HTTP_11;
            *backend_req.headers_mut() = parts.headers.clone();

            let attempt = Instant::now();
            let mut connected_at = None;
            let sent = {
                let exchange = send(&self.client, backend_req, &mut connected_at);
                tokio::pin!(exchange);
                // The timeout counts from when the request (body included) was last sent on.
                let mut deadline = started + self.timeout;
                loop {
                    match tokio::time::timeout_at(deadline.into(), &mut exchange).await {
                        Ok(result) => break Ok(result),
                        Err(elapsed) => {
                            let since = progress.as_ref().map_or(started, |p| p.last());
                            match since + self.timeout {
                                later if later > Instant::now() => deadline = later,
                                _ => break Err(elapsed),
                            }
                        }
                    }
                }
            };
            line.connect = connected_at.map_or(Duration::ZERO, |t: Instant| t.duration_since(attempt));
            let mut response = match sent {
                Err(_elapsed) => {
                    tracing::info!(app = %app, dyno, port, "router: no response within {:?} (H12)", self.timeout);
                    return self.fail(&app, line, H12, started);
                }
                Ok(Err(err)) if err.is_connect() => {
                    drop(guard);
                    let can_retry = body_was_empty || RetryableBody::untouched(&slot);
                    tracing::info!(app = %app, dyno, port, %err, "router: dyno refused the connection");
                    if retried || !can_retry {
                        return self.fail(&app, line, H10, started);
                    }
                    retried = true;
                    selection = match self.select(&host, Some(port)) {
                        // The app left the table in between: it was just removed.
                        Selection::UnknownHost => return self.fail(&app, line, H10, started),
                        next => next,
                    };
                    continue;
                }
                Ok(Err(err)) => {
                    drop(guard);
                    // A kept-alive connection the dyno closed just as the request went out looks
                    // like this too; a request that cannot have changed anything gets one more try.
                    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                    tracing::info!(app = %app, dyno, port, %err, "router: dyno closed the connection without a response");
                    if retried || !safe || !body_was_empty || client_upgrade.is_some() {
                        return self.fail(&app, line, H13, started);
                    }
                    retried = true;
                    selection = match self.select(&host, None) {
                        Selection::UnknownHost => return self.fail(&app, line, H13, started),
                        next => next,
                    };
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            line.status = response.status().as_u16();

            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade {
                    let backend_upgrade = hyper::upgrade::on(&mut response);
                    tunnel(client_upgrade, backend_upgrade, guard);
                    line.service = started.elapsed();
                    self.sink.send(&app, line);
                    let (mut rparts, _) = response.into_parts();
                    headers::strip_hop_by_hop(&mut rparts.headers, true);
                    return Response::from_parts(rparts, empty());
                }
            }
            let (mut rparts, rbody) = response.into_parts();
            headers::strip_hop_by_hop(&mut rparts.headers, false);
            let finish = Finish { app, line, started, sink: self.sink.clone(), guard };
            return Response::from_parts(rparts, Relayed::new(rbody, finish).boxed());
        }
    }

    /// A 503 error page for `error`, with its router line in the app's log.
    fn fail(
        &self,
        app: &Arc<str>,
        mut line: RequestLine,
        error: RouterError,
        started: Instant,
    ) -> Response<RespBody> {
        line.error = Some(error);
        line.status = 503;
        line.bytes = 0;
        line.service = started.elapsed();
        let page = page_for(error, &line.request_id);
        self.sink.send(app, line);
        page
    }
}

/// Sends one request, noting when a connection (new or pooled) was obtained for it.
async fn send(
    client: &Client<HttpConnector, RetryableBody>,
    mut req: Request<RetryableBody>,
    connected_at: &mut Option<Instant>,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let mut capture = capture_connection(&mut req);
    let response = client.request(req);
    tokio::pin!(response);
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            connected = async { capture.wait_for_connection_metadata().await.is_some() }, if watching => {
                watching = false;
                if connected {
                    *connected_at = Some(Instant::now());
                }
            }
            result = &mut response => return result,
        }
    }
}

/// Splices the client's and the dyno's upgraded connections until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade, guard: InFlightGuard) {
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::try_join!(client, backend) {
            Ok((client, backend)) => {
                let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                    tracing::debug!(%err, "router: upgraded connection ended with an error");
                }
            }
            Err(err) => tracing::debug!(%err, "router: protocol upgrade failed"),
        }
    });
}

fn empty() -> RespBody {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

fn page_for(error: RouterError, request_id: &str) -> Response<RespBody> {
    let text = match error.code {
        "H14" => "This app has no web process running.",
        "H12" => "The app did not respond in time.",
        _ => "An error occurred in the application and your page could not be served.",
    };
    page(StatusCode::SERVICE_UNAVAILABLE, Some(error), "Application error", text, request_id)
}

/// A small HTML error page. Nothing from the request is echoed but the (validated or generated)
/// request id.
fn page(
    status: StatusCode,
    error: Option<RouterError>,
    title: &str,
    text: &str,
    request_id: &str,
) -> Response<RespBody> {
    let code = error.map(|e| format!("{} {} &middot; ", e.code, e.desc)).unwrap_or_default();
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>{text}</p>\n<p><small>{code}request id {request_id}</small></p></body></html>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(headers::X_REQUEST_ID, v);
    }
    response
}
