//! HTTP/2 for HTTPS clients that negotiated `h2`: hyper's server connection speaks HTTP/2 to the
//! client (framing, flow control, HPACK and the protocol's own abuse limits are hyper's and the
//! `h2` crate's), and each request is routed like an HTTP/1.1 one and sent to the dyno as
//! HTTP/1.1 over hyper's client connection.
//!
//! The same rules as [`super::proxy`]: routing by `:authority` (else `Host`) through the same
//! table; hop-by-hop headers dropped both ways; `X-Forwarded-For`, `X-Forwarded-Proto: https`,
//! `X-Forwarded-Port` and `X-Request-Id` set ([`super::headers`]); `Forwarded`,
//! `X-Forwarded-Host` and `X-Real-IP` dropped unless from loopback; the same pages and codes
//! (404, 503 `H10`/`H12`/`H13`/`H14`, 400 for a request without a host or a `CONNECT`); one
//! router line per request in the app's log, written when the response body has ended. Request
//! and response bodies stream (the response timeout counts from the request body's last byte).
//! A request counts as in flight to its dyno ([`super::in_flight`]) from routing until its
//! response body has ended or the stream was reset, so [`super::Router::drain`] covers it.
//!
//! A connection with no request open for the head timeout is closed (`GOAWAY`), as an idle
//! HTTP/1.1 one is; a retiring router sends `GOAWAY` and lets open streams finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::headers::{self, Forwarded, Scheme};
use super::in_flight::InFlightGuard;
use super::log::{RequestLine, RouterError, H10, H12, H13, H15, H27};
use super::proxy::{page_html, Progress};
use super::{normalize_host, Inner, Selection};

/// Streams one client may have open at once on a connection.
const MAX_STREAMS: u32 = 128;
/// Largest header list accepted (as [`super::http1::MAX_HEAD`]).
const MAX_HEADER_LIST: u32 = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
type RequestBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Requests open on one connection, and when the last one ended.
struct Activity {
    origin: Instant,
    open: AtomicUsize,
    /// Milliseconds after `origin`.
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(last.elapsed())
    }
}

/// Counts a request as open on its connection until dropped.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one HTTP/2 client connection until it closes, idles out or the router retires.
pub(super) async fn serve_connection(
    inner: Arc<Inner>,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    port: u16,
) {
    let activity =
        Arc::new(Activity { origin: Instant::now(), open: AtomicUsize::new(0), last: AtomicU64::new(0) });
    let service = {
        let (inner, activity) = (inner.clone(), activity.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (inner, open) = (inner.clone(), Open::new(&activity));
            async move { Ok::<_, Infallible>(handle(inner, req, peer, port, open).await) }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.max_concurrent_streams(MAX_STREAMS).max_header_list_size(MAX_HEADER_LIST);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut retire = inner.retire.subscribe();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(err) = done {
                    tracing::debug!(%peer, %err, "router: HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = retire.wait_for(|r| *r), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = every.tick(), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= inner.head_timeout) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Routes and answers one request.
async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    open: Open,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let head_request = parts.method == Method::HEAD;
    let mut forwarded = Forwarded::default();
    for (name, value) in &parts.headers {
        forwarded.note(name.as_str(), value.as_bytes());
    }
    let values = forwarded.values(peer.ip(), port, Scheme::Https);
    let request_id = values.request_id.clone();
    let hosts: Vec<&[u8]> =
        parts.headers.get_all(hyper::header::HOST).iter().map(HeaderValue::as_bytes).collect();
    let (authority, host) = match request_host(parts.uri.authority().map(|a| a.as_str()), &hosts) {
        Ok(found) => found,
        Err(why) => {
            tracing::info!(%peer, why, "router: an HTTP/2 request without a usable host (400)");
            let text = format!("The router cannot pass this request on: {why}.");
            return page(StatusCode::BAD_REQUEST, "Bad request", &text, None, &request_id, head_request);
        }
    };
    if parts.method == Method::CONNECT {
        tracing::info!(%peer, "router: an HTTP/2 CONNECT (400)");
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The router does not tunnel.",
            None,
            &request_id,
            head_request,
        );
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut line = RequestLine {
        protocol: Scheme::Https,
        error: None,
        method: parts.method.as_str().to_string(),
        path: path.clone(),
        host: host.clone(),
        request_id: request_id.clone(),
        fwd: values.fwd.clone(),
        dyno: None,
        connect: Duration::ZERO,
        service: Duration::ZERO,
        status: 0,
        bytes: 0,
    };
    let upstream = upstream_headers(&parts.headers, &authority, &values, headers::trusted_proxy(peer.ip()));
    let Ok(uri) = path.parse::<Uri>() else {
        tracing::info!(%peer, "router: an HTTP/2 request target the router cannot pass on (400)");
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request target is not valid.",
            None,
            &request_id,
            head_request,
        );
    };
    let retryable =
        matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) && body.is_end_stream();
    let progress = Arc::new(Progress::new(started));
    let client_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut body = Some(Uploaded { inner: body, progress: progress.clone(), failed: client_gone.clone() });

    let mut selection = inner.select(&host, None);
    let mut retried = false;
    loop {
        let (app, dyno, dyno_port, guard) = match selection {
            Selection::UnknownHost => {
                tracing::info!(host = %host, method = %parts.method, %peer, request_id = %request_id, "router: no app at this host (404)");
                return page(
                    StatusCode::NOT_FOUND,
                    "No such app",
                    "There is no app at this address.",
                    None,
                    &request_id,
                    head_request,
                );
            }
            Selection::Unavailable(app, error) => {
                return fail(&inner, &app, line, error, started, head_request)
            }
            Selection::Backend { app, dyno, port, guard } => (app, dyno, port, guard),
        };
        line.dyno = Some(dyno.clone());
        let attempt_started = Instant::now();
        let backend = match inner.connect(dyno_port).await {
            Ok(backend) => backend,
            Err(err) => {
                drop(guard);
                tracing::info!(app = %app, %dyno, port = dyno_port, %err, "router: dyno refused the connection");
                if retried {
                    return fail(&inner, &app, line, H10, started, head_request);
                }
                retried = true;
                selection = match inner.select(&host, Some(dyno_port)) {
                    Selection::UnknownHost => Selection::Unavailable(app, H10),
                    next => next,
                };
                continue;
            }
        };
        line.connect = attempt_started.elapsed();
        let mut request = Request::new(match &body {
            Some(_) if retryable => Uploaded::empty(),
            _ => body.take().map_or_else(Uploaded::empty, BodyExt::boxed_unsync),
        });
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = upstream.clone();
        let reuse = ReuseSlot::default();
        let waiting = ClientGone::arm(&inner, &app, &line, started);
        let sent = send(&inner, backend, dyno_port, request, &progress, &reuse).await;
        waiting.disarm();
        match sent {
            Ok(response) => {
                let (mut head, incoming) = response.into_parts();
                let keep_alive = head.version == Version::HTTP_11
                    && !head.headers.get_all(hyper::header::CONNECTION).iter().any(|v| {
                        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
                    });
                strip_hop_by_hop(&mut head.headers);
                head.version = Version::HTTP_2;
                line.status = head.status.as_u16();
                let body = Relayed {
                    inner: incoming,
                    reuse: keep_alive.then_some((reuse, dyno_port)),
                    idle: Box::pin(tokio::time::sleep(inner.idle_timeout)),
                    idle_timeout: inner.idle_timeout,
                    log: Some(Pending { router: inner.clone(), app, line, started, guard, open }),
                };
                return Response::from_parts(head, body.boxed_unsync());
            }
            Err(Failure::TimedOut) => {
                drop(guard);
                tracing::info!(app = %app, %dyno, port = dyno_port, "router: no response within {:?} (H12)", inner.timeout);
                return fail(&inner, &app, line, H12, started, head_request);
            }
            Err(Failure::NoResponse) if client_gone.load(Ordering::Acquire) => {
                drop(guard);
                line.error = Some(H27);
                line.status = 499;
                line.service = started.elapsed();
                inner.sink.send(&app, line);
                return page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "The request body broke off.",
                    None,
                    &request_id,
                    head_request,
                );
            }
            Err(Failure::NoResponse) => {
                drop(guard);
                if retried || !retryable {
                    tracing::info!(app = %app, %dyno, port = dyno_port, "router: dyno closed the connection without a response (H13)");
                    return fail(&inner, &app, line, H13, started, head_request);
                }
                retried = true;
                selection = match inner.select(&host, None) {
                    Selection::UnknownHost => Selection::Unavailable(app, H13),
                    next => next,
                };
            }
        }
    }
}

/// Logs `H27` (status 499) for a request whose client reset its stream while the router waited
/// for the dyno's response head: hyper then drops the request's task, and this with it.
struct ClientGone {
    armed: Option<(Arc<Inner>, Arc<str>, RequestLine, Instant)>,
}

impl ClientGone {
    fn arm(inner: &Arc<Inner>, app: &Arc<str>, line: &RequestLine, started: Instant) -> ClientGone {
        ClientGone { armed: Some((inner.clone(), app.clone(), line.clone(), started)) }
    }

    fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for ClientGone {
    fn drop(&mut self) {
        if let Some((inner, app, mut line, started)) = self.armed.take() {
            line.error = Some(H27);
            line.status = 499;
            line.service = started.elapsed();
            inner.sink.send(&app, line);
        }
    }
}

/// The authority a request is for (`Host` for the dyno) and its normalised host (for routing):
/// `:authority`, else the one `Host` header (RFC 9113 §8.3.1). A `Host` naming another host than
/// `:authority`, two `Host` headers, or neither, is malformed.
fn request_host(authority: Option<&str>, hosts: &[&[u8]]) -> Result<(String, String), &'static str> {
    if hosts.len() > 1 {
        return Err("more than one Host header");
    }
    let header = match hosts.first() {
        Some(h) => Some(std::str::from_utf8(h).map_err(|_| "a Host header that is not text")?),
        None => None,
    };
    let authority = match (authority, header) {
        (Some(a), Some(h)) if normalize_host(a) != normalize_host(h) => {
            return Err("a Host header naming another host than :authority")
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Err("no :authority and no Host header"),
    };
    let host = normalize_host(authority).ok_or("an invalid host")?;
    Ok((authority.to_string(), host))
}

/// Why no response head came from the dyno.
enum Failure {
    TimedOut,
    NoResponse,
}

/// A dyno connection that hyper's client used for one request goes back to the router's pool
/// ([`super::pool`]) once both hold: hyper is done with it (nothing unread after the response)
/// and the response body was relayed whole. Whichever comes second puts it back; if the body
/// never completes, the connection is dropped (closed) with the slot.
#[derive(Default)]
struct Reuse {
    stream: Option<TcpStream>,
    body_done: bool,
}

type ReuseSlot = Arc<Mutex<Reuse>>;

/// Sends `request` over an HTTP/1.1 client connection on `backend` (to the dyno on `port`) and
/// waits for the response head, at most the router timeout after the request body's last byte.
async fn send(
    inner: &Arc<Inner>,
    backend: TcpStream,
    port: u16,
    request: Request<RequestBody>,
    progress: &Progress,
    reuse: &ReuseSlot,
) -> Result<Response<Incoming>, Failure> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(backend))
        .await
        .map_err(|_| Failure::NoResponse)?;
    let (router, slot) = (inner.clone(), reuse.clone());
    tokio::spawn(async move {
        match conn.without_shutdown().await {
            Ok(parts) if parts.read_buf.is_empty() => {
                let stream = parts.io.into_inner();
                let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.body_done {
                    router.pool.checkin(port, stream);
                } else {
                    slot.stream = Some(stream);
                }
            }
            // The dyno sent more than its response: not reusable.
            Ok(_) => {}
            Err(err) => tracing::debug!(%err, "router: a dyno connection for HTTP/2 ended with an error"),
        }
    });
    let response = sender.send_request(request);
    // One request per client connection: hyper is done with it once its response has been read.
    drop(sender);
    let timer = tokio::time::sleep_until((progress.last() + inner.timeout).into());
    tokio::pin!(response, timer);
    loop {
        tokio::select! {
            biased;
            response = &mut response => return response.map_err(|_| Failure::NoResponse),
            () = &mut timer => {
                let due = progress.last() + inner.timeout;
                if due <= Instant::now() {
                    return Err(Failure::TimedOut);
                }
                timer.as_mut().reset(due.into());
            }
        }
    }
}

/// The dyno's request headers: the client's, but hop-by-hop ones, the forwarding headers the
/// router sets and (unless from loopback) proxy claims; `Host` from `:authority`; `Cookie`
/// fields joined into one (RFC 9113 §8.2.3).
fn upstream_headers(
    sent: &HeaderMap,
    authority: &str,
    values: &headers::ForwardedValues,
    trusted_proxy: bool,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(sent.len() + 5);
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in sent {
        let name_str = name.as_str();
        if name == hyper::header::COOKIE {
            cookies.push(value.as_bytes());
            continue;
        }
        let dropped = headers::is_hop_by_hop(name_str)
            || headers::is_forwarding(name_str)
            || (!trusted_proxy && headers::is_proxy_claim(name_str))
            || name == hyper::header::HOST;
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    if !cookies.is_empty() {
        if let Ok(joined) = HeaderValue::from_bytes(&cookies.join(&b"; "[..])) {
            out.insert(hyper::header::COOKIE, joined);
        }
    }
    let set = [
        (hyper::header::HOST, authority.as_bytes()),
        (HeaderName::from_static(headers::X_FORWARDED_FOR), values.fwd.as_bytes()),
        (HeaderName::from_static(headers::X_FORWARDED_PROTO), &values.proto),
        (HeaderName::from_static(headers::X_FORWARDED_PORT), &values.port),
        (HeaderName::from_static(headers::X_REQUEST_ID), values.request_id.as_bytes()),
    ];
    for (name, value) in set {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            out.insert(name, value);
        }
    }
    out
}

/// Drops the headers of the dyno's response that describe its HTTP/1.1 connection (and those
/// its `Connection` header names): HTTP/2 has none.
fn strip_hop_by_hop(map: &mut HeaderMap) {
    let named: Vec<String> = map
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty() && t != "content-length")
        .collect();
    let drop: Vec<HeaderName> = map
        .keys()
        .filter(|k| headers::is_hop_by_hop(k.as_str()) || named.iter().any(|n| n == k.as_str()))
        .cloned()
        .collect();
    for name in drop {
        map.remove(name);
    }
}

/// A page the router answers itself.
fn page(
    status: StatusCode,
    title: &str,
    text: &str,
    error: Option<RouterError>,
    request_id: &str,
    head: bool,
) -> Response<ResponseBody> {
    let html = page_html(title, text, error, request_id);
    let length = html.len();
    let body = if head { Bytes::new() } else { Bytes::from(html) };
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static(headers::X_REQUEST_ID), id);
    }
    response
}

/// A 503 page for `error`, with its router line in the app's log.
fn fail(
    inner: &Inner,
    app: &Arc<str>,
    mut line: RequestLine,
    error: RouterError,
    started: Instant,
    head: bool,
) -> Response<ResponseBody> {
    line.error = Some(error);
    line.status = 503;
    line.service = started.elapsed();
    let text = match error.code {
        "H14" => "This app has no web process running.",
        "H12" => "The app did not respond in time.",
        _ => "An error occurred in the application and your page could not be served.",
    };
    let response =
        page(StatusCode::SERVICE_UNAVAILABLE, "Application error", text, Some(error), &line.request_id, head);
    inner.sink.send(app, line);
    response
}

/// The client's request body on its way to the dyno: notes when data last moved (for the
/// response timeout) and whether the client broke it off.
struct Uploaded {
    inner: Incoming,
    progress: Arc<Progress>,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl Uploaded {
    fn empty() -> RequestBody {
        http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
    }
}

impl Body for Uploaded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers are not passed on (as on HTTP/1.1): data only.
                if frame.is_data() {
                    self.progress.touch();
                } else {
                    return Poll::Ready(None);
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed.store(true, Ordering::Release),
            Poll::Ready(None) => self.progress.touch(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is logged once a response has gone out: the router line, and the in-flight count and
/// open request released.
struct Pending {
    router: Arc<Inner>,
    app: Arc<str>,
    line: RequestLine,
    started: Instant,
    guard: InFlightGuard,
    open: Open,
}

/// The dyno's response body on its way to the client: counts the bytes, gives up after the idle
/// timeout without data (`H15`), and logs the request when it ends (or the client reset it).
struct Relayed {
    inner: Incoming,
    /// The dyno connection, to pool once the body is through (`None`: it closes).
    reuse: Option<(ReuseSlot, u16)>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    log: Option<Pending>,
}

impl Relayed {
    /// Logs the request once; with `complete` (the whole body went out), the dyno connection
    /// may go back to the pool.
    fn finish(&mut self, complete: bool) {
        if let (true, Some((slot, port)), Some(log)) = (complete, self.reuse.take(), self.log.as_ref()) {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            slot.body_done = true;
            if let Some(stream) = slot.stream.take() {
                log.router.pool.checkin(port, stream);
            }
        }
        if let Some(Pending { router, app, mut line, started, guard, open }) = self.log.take() {
            line.service = started.elapsed();
            router.sink.send(&app, line);
            drop((guard, open));
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(log)) = (frame.data_ref(), this.log.as_mut()) {
                    log.line.bytes += data.len() as u64;
                }
                let deadline = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(false);
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    if let Some(log) = this.log.as_mut() {
                        tracing::info!(app = %log.app, "router: a response body stalled for {:?} (H15)", this.idle_timeout);
                        log.line.error = Some(H15);
                    }
                    this.finish(false);
                    // The stream is reset: the client sees a broken body, not a complete one.
                    return Poll::Ready(Some(Err("the response body stalled".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // A body of known length may be dropped once its last byte went out, unpolled to its
        // end: it is complete all the same.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_comes_from_authority_else_host_and_they_must_agree() {
        let ok = |a: Option<&str>, hosts: &[&str]| {
            let hosts: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
            request_host(a, &hosts)
        };
        for (authority, hosts, want) in [
            (Some("App.example.com:8443"), &[][..], Ok(("App.example.com:8443", "app.example.com"))),
            (
                Some("app.example.com"),
                &["APP.example.com:443"][..],
                Ok(("app.example.com", "app.example.com")),
            ),
            (None, &["app.example.com"][..], Ok(("app.example.com", "app.example.com"))),
            (
                Some("a.example.com"),
                &["b.example.com"][..],
                Err("a Host header naming another host than :authority"),
            ),
            (None, &["a.example.com", "a.example.com"][..], Err("more than one Host header")),
            (None, &[][..], Err("no :authority and no Host header")),
            (Some("bad host"), &[][..], Err("an invalid host")),
        ] {
            let got = ok(authority, hosts);
            let want = want.map(|(a, h)| (a.to_string(), h.to_string()));
            assert_eq!(got, want, "{authority:?} {hosts:?}");
        }
    }
}
