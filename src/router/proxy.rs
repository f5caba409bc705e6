//! One client connection, start to end, on its own task: read a request head, route it, relay
//! the request to a dyno over a pooled connection and the response back, log the router line,
//! and go on with the next request on the same connection. Everything for one request happens
//! on this task (no hand-off to a connection task per dyno), which is what keeps the router's
//! cost per request close to a plain proxy's.
//!
//! Reads go into a per-connection buffer; a head is parsed from it in place ([`http1`]) and
//! rewritten, and is written out together with whatever part of the body was read with it, so
//! a small request or response costs one `read` and one `write` on each side.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::headers::Scheme;
use super::http1::{self, BodyKind, Chunked, HeadError, RequestHead, ResponseContext, ResponseHead};
use super::log::{RequestLine, RouterError, H10, H12, H13, H15, H27, H28};
use super::{normalize_host, Inner, Selection};

/// How long connecting to a dyno may take before it counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much is read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// After a response that ends the connection, how long (and how much) the router keeps reading
/// what the client still sends, so the client sees the response rather than a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// A client connection the proxy serves: plain TCP, or TLS over it.
pub(super) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;

    /// Its two directions, to use at once.
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// Reads what arrived into `buf` (`Ok(0)`: the client closed). On plain TCP the buffer is
    /// grown only once there is something to read, so an idle kept-alive connection holds none.
    fn read_more<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a;
}

impl ClientIo for TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }

    async fn read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        loop {
            self.readable().await?;
            buf.reserve(READ_CHUNK);
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                read => return read,
            }
        }
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    type Reader<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut Self>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }

    async fn read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        if !buf.is_empty() {
            buf.reserve(READ_CHUNK);
            return self.read_buf(buf).await;
        }
        // Idle between requests: wait with a small buffer of the task's own rather than 16 KiB
        // on the heap, so idle kept-alive connections stay cheap (rustls holds its own buffers).
        let mut first = [0u8; 1024];
        let n = self.read(&mut first).await?;
        buf.extend_from_slice(&first[..n]);
        Ok(n)
    }
}

/// Where a connection came in: its listener's port (`X-Forwarded-Port`) and scheme.
#[derive(Debug, Clone, Copy)]
pub(super) struct Listener {
    pub port: u16,
    pub scheme: Scheme,
}

/// Whether the client's connection carries another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Serves one client connection until it closes, errs, idles out or asks to close.
pub(super) async fn serve_connection<S: ClientIo>(
    inner: Arc<Inner>,
    mut client: S,
    peer: SocketAddr,
    via: Listener,
) {
    let mut buf = BytesMut::new();
    let mut dyno_buf = BytesMut::new();
    let mut retire = inner.retire.subscribe();
    loop {
        // A retiring router closes a kept-alive connection between requests (an idle one at
        // once, as nginx does on a graceful stop); a request already arriving is served.
        if *retire.borrow() && buf.is_empty() {
            return finish(client, &[]).await;
        }
        let idle = buf.is_empty();
        let read = tokio::time::timeout(inner.head_timeout, read_request(&mut client, &mut buf, peer, via));
        let read = async {
            tokio::select! {
                read = read => Some(read),
                _ = retire.wait_for(|r| *r), if idle => None,
            }
        };
        let Some(read) = read.await else {
            if buf.is_empty() {
                return finish(client, &[]).await;
            }
            // A head had begun to arrive: read the rest and serve it.
            continue;
        };
        let req = match read {
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None)) | Ok(Err(ReadError::Io)) | Ok(Err(ReadError::Truncated)) => return,
            Err(_elapsed) => {
                if !buf.is_empty() {
                    let page = http1::page(
                        408,
                        "Request Timeout",
                        &page_html("Request timeout", "The request took too long to arrive.", None, ""),
                        "",
                        false,
                        true,
                    );
                    // Closed gently, so the client reads the 408 rather than a reset.
                    return finish(client, &page).await;
                }
                return;
            }
            Ok(Err(ReadError::Head(HeadError::TooLarge))) => {
                tracing::info!(%peer, "router: request head over 64 KiB or 100 headers (431)");
                let html = page_html(
                    "Request header fields too large",
                    "The request head is over 64 KiB.",
                    None,
                    "",
                );
                let page = http1::page(431, "Request Header Fields Too Large", &html, "", false, true);
                return finish(client, &page).await;
            }
            Ok(Err(ReadError::Head(HeadError::NotImplemented))) => {
                tracing::info!(%peer, "router: a transfer coding other than chunked (501)");
                let html = page_html(
                    "Not implemented",
                    "The router accepts no transfer coding but chunked.",
                    None,
                    "",
                );
                return finish(client, &http1::page(501, "Not Implemented", &html, "", false, true)).await;
            }
            Ok(Err(ReadError::Head(HeadError::Invalid(why)))) => {
                tracing::info!(%peer, why, "router: bad request (400)");
                let html = page_html(
                    "Bad request",
                    &format!("The router cannot pass this request on: {why}."),
                    None,
                    "",
                );
                return finish(client, &http1::page(400, "Bad Request", &html, "", false, true)).await;
            }
        };
        buf.advance(req.len);
        if inner.exchange(&mut client, &mut buf, &mut dyno_buf, req, peer, via).await == Next::Close {
            return finish(client, &[]).await;
        }
        // Between requests a connection keeps no buffers: thousands of idle kept-alive clients
        // cost a task each, not 32 KiB each.
        if buf.is_empty() {
            buf = BytesMut::new();
        }
        dyno_buf = BytesMut::new();
    }
}

/// Writes `last`, then closes the connection gently: the write side first, then whatever the
/// client still sends is read and dropped for a moment, so the client reads the answer instead
/// of a reset (closing a socket with unread data in it resets the connection).
async fn finish<S: ClientIo>(mut client: S, last: &[u8]) {
    if !last.is_empty() && client.write_all(last).await.is_err() {
        return;
    }
    if client.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

enum ReadError {
    Head(HeadError),
    /// The peer closed the connection inside a head.
    Truncated,
    Io,
}

async fn read_request<S: ClientIo>(
    client: &mut S,
    buf: &mut BytesMut,
    peer: SocketAddr,
    via: Listener,
) -> Result<Option<RequestHead>, ReadError> {
    loop {
        if !buf.is_empty() {
            let parsed =
                http1::parse_request_via(buf, peer.ip(), via.port, via.scheme).map_err(ReadError::Head)?;
            if let Some(req) = parsed {
                return Ok(Some(req));
            }
        }
        // On plain TCP the buffer is allocated only once the client has sent something: an idle
        // kept-alive connection holds no buffer (see `serve_connection`).
        match client.read_more(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(ReadError::Truncated),
            Ok(_) => {}
            Err(_) => return Err(ReadError::Io),
        }
    }
}

/// When the request body last moved towards the dyno: the response timeout counts from the end
/// of a slow upload rather than from its start (as Heroku's does). Kept as microseconds after
/// the request started, in an atomic only because the connection's future must be `Send`.
pub(super) struct Progress {
    origin: Instant,
    last: AtomicU64,
}

impl Progress {
    pub(super) fn new(origin: Instant) -> Progress {
        Progress { origin, last: AtomicU64::new(0) }
    }

    pub(super) fn touch(&self) {
        let micros = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last.store(micros, Ordering::Relaxed);
    }

    pub(super) fn last(&self) -> Instant {
        self.origin + Duration::from_micros(self.last.load(Ordering::Relaxed))
    }
}

/// How one attempt at a dyno ended.
enum Attempt {
    /// The response (or the tunnel) went to the client.
    Answered(Next),
    /// The dyno closed or broke the connection, or answered nonsense, before a response head;
    /// nothing reached the client. `body_read`: some of the request body was consumed.
    NoResponse { body_read: bool },
    /// No response head within the timeout. `body_done`: the whole request body was read.
    TimedOut { body_done: bool },
    /// The client went away (`H27`, also for a broken body) or let its body stall (`H28`)
    /// before a response head.
    ClientGone(RouterError),
    /// The client's chunked body broke its framing before a response head: the dyno got the
    /// body's valid part and then a closed connection, the client gets 400.
    BadBody,
}

impl Inner {
    /// Routes and answers one request; the router line goes to the app's log.
    async fn exchange<S: ClientIo>(
        &self,
        client: &mut S,
        buf: &mut BytesMut,
        dyno_buf: &mut BytesMut,
        mut req: RequestHead,
        peer: SocketAddr,
        via: Listener,
    ) -> Next {
        if let Some((page, close)) = super::acme_http01::respond(&req) {
            return answer(client, &page, close).await;
        }
        let started = Instant::now();
        let (safe, head_request) = (req.is_safe(), req.is_head());
        let host = req.host.as_deref().and_then(normalize_host);
        let mut selection = match &host {
            Some(host) => self.select(host, None),
            None => Selection::UnknownHost,
        };
        // A page answered without reading the request body has to end the connection.
        let unread_body_closes = req.body != BodyKind::Empty;
        if let Selection::UnknownHost = selection {
            let shown: String =
                req.host.unwrap_or_default().chars().filter(|c| !c.is_control()).take(100).collect();
            tracing::info!(host = %shown, method = %req.method, %peer, request_id = %req.request_id, "router: no app at this host (404)");
            let html = page_html("No such app", "There is no app at this address.", None, &req.request_id);
            let close = !req.keep_alive || unread_body_closes;
            let page = http1::page(404, "Not Found", &html, &req.request_id, head_request, close);
            return answer(client, &page, close).await;
        }
        let host = host.unwrap_or_default();
        let mut line = RequestLine {
            protocol: via.scheme,
            error: None,
            method: req.method.clone(),
            path: std::mem::take(&mut req.path),
            host,
            request_id: std::mem::take(&mut req.request_id),
            fwd: std::mem::take(&mut req.fwd),
            dyno: None,
            connect: Duration::ZERO,
            service: Duration::ZERO,
            status: 0,
            bytes: 0,
        };
        if via.scheme == Scheme::Http && !req.proxied_https {
            if let Some((app, location)) = self.redirect_location(&selection, &line) {
                drop(selection);
                let close = !req.keep_alive || unread_body_closes;
                return self.redirect(client, &app, location, line, started, head_request, close).await;
            }
        }

        let mut retried = false;
        loop {
            let (app, dyno, port, guard) = match selection {
                Selection::Backend { app, dyno, port, guard } => (app, dyno, port, guard),
                Selection::Unavailable(app, error) => {
                    return self
                        .fail(client, &app, line, error, started, &req, head_request, unread_body_closes)
                        .await
                }
                // Answered above; retries turn it into `Unavailable`.
                Selection::UnknownHost => return Next::Close,
            };
            line.dyno = Some(dyno.clone());
            let attempt_started = Instant::now();
            let backend = match self.connect(port).await {
                Ok(backend) => backend,
                Err(err) => {
                    drop(guard);
                    tracing::info!(app = %app, %dyno, port, %err, "router: dyno refused the connection");
                    // Nothing was read or sent yet, so another dyno can take the request.
                    if retried {
                        return self
                            .fail(client, &app, line, H10, started, &req, head_request, unread_body_closes)
                            .await;
                    }
                    retried = true;
                    selection = match self.select(&line.host, Some(port)) {
                        // The app left the table in between: it was just removed.
                        Selection::UnknownHost => Selection::Unavailable(app, H10),
                        next => next,
                    };
                    continue;
                }
            };
            line.connect = attempt_started.elapsed();
            let outcome =
                self.attempt(client, buf, dyno_buf, backend, &req, &mut line, started, port, &app).await;
            drop(guard);
            match outcome {
                Attempt::Answered(next) => {
                    line.service = started.elapsed();
                    if line.status != 101 {
                        self.sink.send(&app, line);
                    }
                    return next;
                }
                Attempt::TimedOut { body_done } => {
                    tracing::info!(app = %app, %dyno, port, "router: no response within {:?} (H12)", self.timeout);
                    return self.fail(client, &app, line, H12, started, &req, head_request, !body_done).await;
                }
                Attempt::BadBody => {
                    tracing::info!(app = %app, %peer, "router: a chunked request body with broken framing (400)");
                    line.status = 400;
                    line.service = started.elapsed();
                    let html = page_html(
                        "Bad request",
                        "The router cannot pass this request on: its chunked body is malformed.",
                        None,
                        &line.request_id,
                    );
                    let page = http1::page(400, "Bad Request", &html, &line.request_id, head_request, true);
                    self.sink.send(&app, line);
                    return answer(client, &page, true).await;
                }
                Attempt::ClientGone(error) => {
                    line.error = Some(error);
                    line.status = 499;
                    line.service = started.elapsed();
                    self.sink.send(&app, line);
                    return Next::Close;
                }
                Attempt::NoResponse { body_read } => {
                    // A kept-alive connection the dyno closed just as the request went out looks
                    // like this too; a request that cannot have changed anything gets one more try.
                    tracing::info!(app = %app, %dyno, port, "router: dyno closed the connection without a response");
                    if retried || !safe || req.body != BodyKind::Empty || req.upgrade {
                        return self
                            .fail(
                                client,
                                &app,
                                line,
                                H13,
                                started,
                                &req,
                                head_request,
                                body_read || unread_body_closes,
                            )
                            .await;
                    }
                    retried = true;
                    selection = match self.select(&line.host, None) {
                        Selection::UnknownHost => Selection::Unavailable(app, H13),
                        next => next,
                    };
                }
            }
        }
    }

    /// A pooled connection to the dyno on `port`, or a new one.
    pub(super) async fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        if let Some(stream) = self.pool.checkout(port) {
            return Ok(stream);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Sends the request to one dyno and relays its answer; see [`Attempt`].
    #[allow(clippy::too_many_arguments)]
    async fn attempt<S: ClientIo>(
        &self,
        client: &mut S,
        buf: &mut BytesMut,
        dyno_buf: &mut BytesMut,
        mut backend: TcpStream,
        req: &RequestHead,
        line: &mut RequestLine,
        started: Instant,
        port: u16,
        app: &Arc<str>,
    ) -> Attempt {
        dyno_buf.clear();
        let ctx = ResponseContext {
            head: req.is_head(),
            http10: req.http10,
            close: !req.keep_alive,
            upgrade: req.upgrade,
        };
        let progress = Progress::new(started);
        let (mut client_r, mut client_w) = client.halves();
        let (mut dyno_r, mut dyno_w) = backend.split();

        // The head goes out at once (with the part of the body read along with it); the rest of
        // the body streams while the response head is awaited, so a dyno may answer early.
        let mut uploading = req.body != BodyKind::Empty;
        if !uploading && dyno_w.write_all(&req.upstream).await.is_err() {
            return Attempt::NoResponse { body_read: false };
        }
        let mut body_ok = !uploading;
        let mut body_read = false;
        let head = {
            let upload = async {
                let pending = req.upstream.clone();
                // A chunked request body is re-chunked: the dyno never sees the client's framing.
                let body = Body { kind: req.body, dechunk: false, rechunk: true, idle: self.idle_timeout };
                relay_body(&mut client_r, buf, &mut dyno_w, pending, body, Some(&progress)).await
            };
            let response = read_final_head(&mut dyno_r, dyno_buf, &mut client_w, ctx, &self.retire);
            let timer = tokio::time::sleep_until((started + self.timeout).into());
            tokio::pin!(upload, response, timer);
            loop {
                tokio::select! {
                    biased;
                    head = &mut response => break head,
                    (_, result) = &mut upload, if uploading => {
                        uploading = false;
                        body_read = true;
                        match result {
                            Ok(()) => body_ok = true,
                            // The dyno stopped reading: its answer may still come.
                            Err(RelayError::Write) => {}
                            Err(RelayError::Idle) => break Err(HeadWait::ClientGone(H28)),
                            Err(RelayError::Framing) => break Err(HeadWait::BadBody),
                            Err(_) => break Err(HeadWait::ClientGone(H27)),
                        }
                    }
                    () = &mut timer => {
                        let due = progress.last() + self.timeout;
                        if due <= Instant::now() {
                            break Err(HeadWait::TimedOut);
                        }
                        timer.as_mut().reset(due.into());
                    }
                }
            }
        };
        body_read |= uploading; // an upload cut short read some of the body
        let head = match head {
            Ok(head) => head,
            Err(HeadWait::TimedOut) => return Attempt::TimedOut { body_done: body_ok },
            Err(HeadWait::ClientGone(error)) => return Attempt::ClientGone(error),
            Err(HeadWait::Dyno) => return Attempt::NoResponse { body_read },
            Err(HeadWait::BadBody) => return Attempt::BadBody,
        };
        line.status = head.status;
        dyno_buf.advance(head.len);

        if head.status == 101 {
            // Log the switch now: the tunnel may stay open for hours.
            line.service = started.elapsed();
            self.sink.send(app, line.clone());
            if client_w.write_all(&head.client).await.is_err() {
                return Attempt::Answered(Next::Close);
            }
            drop((client_r, client_w));
            return Attempt::Answered(tunnel(client, buf, backend, dyno_buf).await);
        }

        let body = Body { kind: head.body, dechunk: head.dechunk, rechunk: false, idle: self.idle_timeout };
        let (bytes, relayed) =
            relay_body(&mut dyno_r, dyno_buf, &mut client_w, head.client, body, None).await;
        line.bytes = bytes;
        match relayed {
            Ok(()) => {
                if head.reusable && body_ok && dyno_buf.is_empty() {
                    self.pool.checkin(port, backend);
                }
                if head.close || !body_ok {
                    Attempt::Answered(Next::Close)
                } else {
                    Attempt::Answered(Next::KeepAlive)
                }
            }
            Err(RelayError::Idle) => {
                tracing::info!(app = %app, port, "router: a response body stalled for {:?} (H15)", self.idle_timeout);
                line.error = Some(H15);
                Attempt::Answered(Next::Close)
            }
            // The client went away mid-response, or the dyno broke off: the client cannot be told
            // more than a cut-off body, so its connection ends.
            Err(_) => Attempt::Answered(Next::Close),
        }
    }

    /// Where a plain-HTTP request is redirected to, if its app has the `redirect` flag and a
    /// certificate for the host (both cached, see [`super::certstore`]).
    fn redirect_location(&self, selection: &Selection, line: &RequestLine) -> Option<(Arc<str>, String)> {
        let https_port = self.https_port?;
        let app = match selection {
            Selection::Backend { app, .. } | Selection::Unavailable(app, _) => app,
            Selection::UnknownHost => return None,
        };
        if !self.certs.redirects(app, &line.host) {
            return None;
        }
        Some((app.clone(), https_location(&line.host, https_port, &line.path)))
    }

    /// A redirect to HTTPS: 301 for GET and HEAD, 308 (the method and body kept) for the rest;
    /// with its router line in the app's log.
    #[allow(clippy::too_many_arguments)]
    async fn redirect<S: ClientIo>(
        &self,
        client: &mut S,
        app: &Arc<str>,
        location: String,
        mut line: RequestLine,
        started: Instant,
        head_request: bool,
        close: bool,
    ) -> Next {
        let (status, reason) = match line.method.as_str() {
            "GET" | "HEAD" => (301, "Moved Permanently"),
            _ => (308, "Permanent Redirect"),
        };
        line.status = status;
        line.service = started.elapsed();
        let page = http1::redirect(status, reason, &location, &line.request_id, head_request, close);
        self.sink.send(app, line);
        answer(client, &page, close).await
    }

    /// A 503 error page for `error`, with its router line in the app's log.
    #[allow(clippy::too_many_arguments)]
    async fn fail<S: ClientIo>(
        &self,
        client: &mut S,
        app: &Arc<str>,
        mut line: RequestLine,
        error: RouterError,
        started: Instant,
        req: &RequestHead,
        head_request: bool,
        body_unread: bool,
    ) -> Next {
        line.error = Some(error);
        line.status = 503;
        line.bytes = 0;
        line.service = started.elapsed();
        let close = !req.keep_alive || body_unread;
        let text = match error.code {
            "H14" => "This app has no web process running.",
            "H12" => "The app did not respond in time.",
            _ => "An error occurred in the application and your page could not be served.",
        };
        let html = page_html("Application error", text, Some(error), &line.request_id);
        let page = http1::page(503, "Service Unavailable", &html, &line.request_id, head_request, close);
        self.sink.send(app, line);
        answer(client, &page, close).await
    }
}

/// Writes a page the router made; the connection continues unless `close`.
async fn answer<S: ClientIo>(client: &mut S, page: &[u8], close: bool) -> Next {
    match client.write_all(page).await {
        Ok(()) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Why no final response head arrived.
enum HeadWait {
    TimedOut,
    ClientGone(RouterError),
    /// The client's chunked body broke RFC 9112 framing.
    BadBody,
    /// The dyno closed, broke or garbled its side.
    Dyno,
}

/// Reads the dyno's final response head; 1xx heads on the way are passed to the client.
async fn read_final_head<R, W>(
    dyno: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    ctx: ResponseContext,
    retire: &tokio::sync::watch::Sender<bool>,
) -> Result<ResponseHead, HeadWait>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = loop {
            if !buf.is_empty() {
                // A retiring router (a successor has the address) tells the client to reconnect.
                let ctx = ResponseContext { close: ctx.close || *retire.borrow(), ..ctx };
                match http1::parse_response(buf, ctx) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(err) => {
                        tracing::info!(?err, "router: a dyno's response head cannot be relayed");
                        return Err(HeadWait::Dyno);
                    }
                }
            }
            buf.reserve(READ_CHUNK);
            match dyno.read_buf(buf).await {
                Ok(0) | Err(_) => return Err(HeadWait::Dyno),
                Ok(_) => {}
            }
        };
        if !head.is_informational() {
            return Ok(head);
        }
        buf.advance(head.len);
        if !head.client.is_empty() && client.write_all(&head.client).await.is_err() {
            return Err(HeadWait::ClientGone(H27));
        }
    }
}

/// Why a body relay stopped early.
#[derive(Debug)]
enum RelayError {
    /// Reading the sending side failed, or it closed before the body's end.
    Read,
    /// The body's chunked framing is broken.
    Framing,
    /// The receiving side is gone.
    Write,
    /// Nothing arrived for the idle timeout.
    Idle,
}

/// How a body is framed and relayed.
#[derive(Debug, Clone, Copy)]
struct Body {
    kind: BodyKind,
    /// Pass only the chunks' data on (a chunked response to an HTTP/1.0 client).
    dechunk: bool,
    /// Pass the chunks' data on in chunks of our own (no extensions, no trailers): a request
    /// body, so a dyno never parses framing a client wrote.
    rechunk: bool,
    /// Give up when nothing arrives for this long.
    idle: Duration,
}

/// Relays one body from `src` to `dst`: `pending` (a head) goes first, in one write with the
/// part of the body already in `buf`; the rest streams as it arrives. Bytes after the body stay
/// in `buf`. Returns the body's data bytes relayed (chunk framing not counted), and whether it
/// got through whole.
async fn relay_body<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    mut pending: Vec<u8>,
    body: Body,
    progress: Option<&Progress>,
) -> (u64, Result<(), RelayError>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Body { kind, dechunk, rechunk, idle } = body;
    let rechunk = rechunk && kind == BodyKind::Chunked;
    let dechunk = dechunk || rechunk;
    let mut data = 0u64;
    let mut left = match kind {
        BodyKind::Length(n) => n,
        _ => 0,
    };
    let mut chunks = Chunked::default();
    loop {
        // What of `buf` belongs to the body, and whether the body ends there.
        let (take, done) = match kind {
            BodyKind::Empty => (0, true),
            BodyKind::Length(_) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                left -= take as u64;
                data += take as u64;
                (take, left == 0)
            }
            BodyKind::Chunked => {
                let fed = chunks.feed(buf, |piece| {
                    data += piece.len() as u64;
                    if rechunk {
                        pending.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    }
                    if dechunk {
                        pending.extend_from_slice(piece);
                    }
                    if rechunk {
                        pending.extend_from_slice(b"\r\n");
                    }
                });
                match fed {
                    Ok(n) => {
                        if rechunk && chunks.done() {
                            pending.extend_from_slice(b"0\r\n\r\n");
                        }
                        (n, chunks.done())
                    }
                    Err(_) => return (data, Err(RelayError::Framing)),
                }
            }
            BodyKind::UntilClose => {
                data += buf.len() as u64;
                (buf.len(), false)
            }
        };
        let raw = if dechunk { &[][..] } else { &buf[..take] };
        let wrote = if pending.is_empty() {
            raw.is_empty() || dst.write_all(raw).await.is_ok()
        } else {
            pending.extend_from_slice(raw);
            let ok = dst.write_all(&pending).await.is_ok();
            pending.clear();
            ok
        };
        buf.advance(take);
        if !wrote {
            return (data, Err(RelayError::Write));
        }
        if let (Some(progress), true) = (progress, take > 0) {
            progress.touch();
        }
        if done {
            return (data, Ok(()));
        }
        buf.reserve(READ_CHUNK);
        // The timer is only armed when the read has to wait.
        let read = match tokio::time::timeout(idle, src.read_buf(buf)).await {
            Ok(read) => read,
            Err(_) => return (data, Err(RelayError::Idle)),
        };
        match read {
            Ok(0) if kind == BodyKind::UntilClose => return (data, Ok(())),
            Ok(0) | Err(_) => return (data, Err(RelayError::Read)),
            Ok(_) => {}
        }
    }
}

/// After a `101`: whatever each side sent past the handshake goes across, then both
/// connections are spliced until either side closes. The client's connection ends with it.
async fn tunnel<S: ClientIo>(
    client: &mut S,
    client_buf: &mut BytesMut,
    mut dyno: TcpStream,
    dyno_buf: &mut BytesMut,
) -> Next {
    if !dyno_buf.is_empty() && client.write_all(dyno_buf).await.is_err() {
        return Next::Close;
    }
    if !client_buf.is_empty() && dyno.write_all(client_buf).await.is_err() {
        return Next::Close;
    }
    dyno_buf.clear();
    client_buf.clear();
    if let Err(err) = tokio::io::copy_bidirectional(client, &mut dyno).await {
        tracing::debug!(%err, "router: upgraded connection ended with an error");
    }
    Next::Close
}

/// `https://host[:port]/path?query`: the port left out when it is 443; a target that is not a
/// path (`*`) becomes `/`.
pub(super) fn https_location(host: &str, port: u16, target: &str) -> String {
    let port = if port == 443 { String::new() } else { format!(":{port}") };
    let target = if target.starts_with('/') { target } else { "/" };
    format!("https://{host}{port}{target}")
}

/// A small HTML error page. Nothing from the request is echoed but the (validated or generated)
/// request id.
pub(super) fn page_html(title: &str, text: &str, error: Option<RouterError>, request_id: &str) -> String {
    let code = error.map(|e| format!("{} {} &middot; ", e.code, e.desc)).unwrap_or_default();
    let id = if request_id.is_empty() { String::new() } else { format!("{code}request id {request_id}") };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>{text}</p>\n<p><small>{id}</small></p></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_locations_leave_out_port_443() {
        for (host, port, target, want) in [
            ("a.example.com", 443, "/x?y=1", "https://a.example.com/x?y=1"),
            ("a.example.com", 8443, "/", "https://a.example.com:8443/"),
            ("a.example.com", 443, "*", "https://a.example.com/"),
        ] {
            assert_eq!(https_location(host, port, target), want);
        }
    }
}
