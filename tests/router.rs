//! The HTTP router in-process (`slipway::router::Router`) in front of tiny backends written
//! here: raw HTTP/1.1 over tokio TCP on 127.0.0.1, port 0, so every test has its own ports.
//! Each test logs into its own temp dir. Every wait is bounded: network calls run under
//! [`within`], log lines are polled for with a deadline ([`wait_for_line`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use slipway::home::Home;
use slipway::router::{AppStatus, Backend, RouteTable, Router, RouterConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// The bound on every single network step of a test.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut).await.unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

// ---------------------------------------------------------------------------------------------
// The router under test
// ---------------------------------------------------------------------------------------------

struct Env {
    dir: tempfile::TempDir,
    router: Router,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Env {
    async fn start(timeout: Duration) -> Env {
        Env::start_with(timeout, slipway::router::IDLE_TIMEOUT).await
    }

    async fn start_with(timeout: Duration, idle: Duration) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = RouterConfig::for_home(&Home::at(dir.path())).timeout(timeout).idle_timeout(idle);
        let router = Router::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the router");
        let addr = listener.local_addr().expect("router address");
        let serving = router.clone();
        let task = tokio::spawn(async move { serving.serve(listener).await });
        Env { dir, router, addr, task }
    }

    fn log(&self, app: &str) -> PathBuf {
        self.dir.path().join("logs").join(app).join("app.log")
    }

    fn route(&self, apps: &[(&str, &[&str], AppStatus)]) {
        let mut table = RouteTable::new("localhost");
        for (app, domains, status) in apps {
            let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
            table.add_app(app, &domains, status.clone());
        }
        self.router.update(table);
    }

    async fn client(&self) -> SendRequest<Full<Bytes>> {
        client_at(self.addr).await
    }

    /// One GET on a fresh connection.
    async fn get(&self, host: &str, path: &str) -> Reply {
        let mut client = self.client().await;
        send(&mut client, request(host, path, &[])).await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn up(backends: &[&TestBackend]) -> AppStatus {
    AppStatus::Up(
        backends.iter().enumerate().map(|(i, b)| Backend::new(format!("web.{}", i + 1), b.port)).collect(),
    )
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

fn request(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(path).header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::new())).expect("request")
}

async fn send(client: &mut SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    // A kept-alive connection takes the next request once the previous response is read.
    within("connection ready", client.ready()).await.expect("connection ready");
    let response = within("response head", client.send_request(req)).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = within("response body", body.collect()).await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// `connect=3ms service=12ms` → `connect=Nms service=Nms` (timings vary with the machine's load).
fn without_timings(line: &str) -> String {
    line.split(' ')
        .map(|field| match field.split_once('=') {
            Some((key @ ("connect" | "service"), value))
                if value.strip_suffix("ms").is_some_and(|n| n.parse::<u64>().is_ok()) =>
            {
                format!("{key}=Nms")
            }
            _ => field.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls `path` until a line contains every needle, or panics after 10 s with what was there.
async fn wait_for_line(path: &std::path::Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        if Instant::now() > deadline {
            panic!("no line with {needles:?} in {}:\n{text}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Test backends: raw HTTP/1.1, keep-alive, recording each request head
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum Mode {
    /// 200 with this body (Content-Length), on a kept-alive connection.
    Reply(&'static str),
    /// 200 with the request body's length and its first bytes.
    EchoBody,
    /// Reads the request and never answers.
    Hang,
    /// Reads the request, reports it, waits for the gate, then answers `released`.
    Gate(Arc<Notify>),
    /// Chunked response: `first`, then waits for the gate, then `second`.
    Stream(Arc<Notify>),
    /// `101 Switching Protocols`, then echoes raw bytes.
    WebSocket,
    /// Reads the request and closes the connection without a word.
    Close,
    /// 200 chunked in two chunks (`first`, `second`), at once.
    Chunked,
    /// An HTTP/1.0-style 200 without a length: the body ends when the dyno closes.
    UntilClose(&'static str),
}

struct TestBackend {
    port: u16,
    /// Connections accepted (the router pools its connections to dynos).
    connections: Arc<std::sync::atomic::AtomicUsize>,
    heads: Arc<Mutex<Vec<HashMap<String, String>>>>,
    arrived: mpsc::UnboundedReceiver<()>,
}

impl TestBackend {
    async fn start(mode: Mode) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
        let port = listener.local_addr().expect("backend address").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (tx, arrived) = mpsc::unbounded_channel();
        let recorded = heads.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve_backend(stream, mode.clone(), recorded.clone(), tx.clone()));
            }
        });
        TestBackend { port, connections, heads, arrived }
    }

    fn head(&self, i: usize) -> HashMap<String, String> {
        self.heads.lock().expect("heads")[i].clone()
    }

    fn requests(&self) -> usize {
        self.heads.lock().expect("heads").len()
    }
}

/// A hyper HTTP/1.1 client on a new connection to `addr` (its connection driven on a task).
async fn client_at<B>(addr: SocketAddr) -> SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = within("connect to the router", TcpStream::connect(addr)).await.expect("connect");
    let (sender, conn) = within("handshake", hyper::client::conn::http1::handshake(TokioIo::new(tcp)))
        .await
        .expect("handshake");
    tokio::spawn(conn.with_upgrades());
    sender
}

/// A port nothing listens on (bound a moment ago, then closed).
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

async fn serve_backend(
    stream: TcpStream,
    mode: Mode,
    heads: Arc<Mutex<Vec<HashMap<String, String>>>>,
    arrived: mpsc::UnboundedSender<()>,
) {
    let mut stream = BufReader::new(stream);
    loop {
        // Request line and headers; `:line` holds the request line.
        let mut head = HashMap::new();
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        head.insert(":line".to_string(), line.trim_end().to_string());
        loop {
            line.clear();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                head.entry(k).and_modify(|old: &mut String| *old = format!("{old}, {v}")).or_insert(v);
            }
        }
        if head.get("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
            let _ = stream.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        let body = read_body(&mut stream, &head).await;
        heads.lock().expect("heads").push(head.clone());
        let _ = arrived.send(());
        let s = stream.get_mut();
        let result = match &mode {
            Mode::Reply(text) => {
                let mut answer = ok(text);
                if head[":line"].starts_with("HEAD ") {
                    answer.truncate(answer.len() - text.len());
                }
                s.write_all(answer.as_bytes()).await
            }
            Mode::EchoBody => {
                let start = String::from_utf8_lossy(&body[..body.len().min(16)]).into_owned();
                s.write_all(ok(&format!("{} {start}", body.len())).as_bytes()).await
            }
            Mode::Close => return,
            Mode::Chunked => {
                let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n";
                s.write_all(answer.as_bytes()).await
            }
            Mode::UntilClose(text) => {
                let _ = s
                    .write_all(
                        format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{text}").as_bytes(),
                    )
                    .await;
                return;
            }
            Mode::Hang => {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                return;
            }
            Mode::Gate(gate) => {
                gate.notified().await;
                s.write_all(ok("released").as_bytes()).await
            }
            Mode::Stream(gate) => {
                let first = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                let _ = s.write_all(first.as_bytes()).await;
                gate.notified().await;
                s.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await
            }
            Mode::WebSocket => {
                let key = head.get("sec-websocket-key").cloned().unwrap_or_default();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: accept-for-{key}\r\n\r\n"
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.get_mut().write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        };
        if result.is_err() {
            return;
        }
    }
}

fn ok(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

async fn read_body(stream: &mut BufReader<TcpStream>, head: &HashMap<String, String>) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(len) = head.get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        let _ = stream.read_exact(&mut body).await;
    } else if head.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            if stream.read_line(&mut size).await.unwrap_or(0) == 0 {
                break;
            }
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            if stream.read_exact(&mut chunk).await.is_err() {
                break;
            }
            if size == 0 {
                break; // no trailers sent by our clients
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    body
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_across_two_apps_and_logs_each_request() {
    let env = Env::start(Duration::from_secs(30)).await;
    let alpha = TestBackend::start(Mode::Reply("alpha")).await;
    let beta = TestBackend::start(Mode::Reply("beta!")).await;
    env.route(&[("alpha", &[], up(&[&alpha])), ("beta", &[], up(&[&beta]))]);

    let r = env.get("alpha.localhost", "/x?y=1").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "alpha"));
    let port = env.addr.port();
    let r = env.get(&format!("BETA.LocalHost.:{port}"), "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "beta!"), "case, trailing dot and port ignored");
    assert_eq!((alpha.requests(), beta.requests()), (1, 1));

    let line = wait_for_line(&env.log("alpha"), &["router[web.1]: at=info method=GET"]).await;
    let rest = line.split_once(" router[web.1]: ").expect("source and dyno").1;
    let request_id = alpha.head(0)["x-request-id"].clone();
    assert_eq!(
        without_timings(rest),
        format!(
            "at=info method=GET path=\"/x?y=1\" host=alpha.localhost request_id={request_id} fwd=\"127.0.0.1\" \
             dyno=web.1 connect=Nms service=Nms status=200 bytes=5 protocol=http"
        )
    );
    assert!(slipway::timefmt::parse(line.split(' ').next().expect("stamp")).is_some(), "{line}");
    wait_for_line(&env.log("beta"), &["router[web.1]: at=info", "host=beta.localhost", "status=200 bytes=5"])
        .await;
    let alpha_log = std::fs::read_to_string(env.log("alpha")).expect("alpha log");
    assert!(!alpha_log.contains("beta"), "one app's requests stay out of another's log:\n{alpha_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_route_to_their_app_and_unknown_hosts_get_404() {
    let env = Env::start(Duration::from_secs(30)).await;
    let alpha = TestBackend::start(Mode::Reply("alpha")).await;
    env.route(&[("alpha", &["www.alpha.test", "Alpha.Example"], up(&[&alpha]))]);

    assert_eq!(env.get("www.alpha.test", "/").await.body, "alpha");
    assert_eq!(env.get("alpha.example:8080", "/").await.body, "alpha");
    for unknown in ["beta.localhost", "alpha.test", "localhost", "127.0.0.1", ""] {
        let r = env.get(unknown, "/").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{unknown:?}");
        assert!(r.body.contains("No such app"), "{}", r.body);
    }
    assert_eq!(alpha.requests(), 2);
    wait_for_line(&env.log("alpha"), &["host=alpha.example", "status=200"]).await;
    let dirs: Vec<_> = std::fs::read_dir(env.dir.path().join("logs")).expect("logs dir").flatten().collect();
    assert_eq!(dirs.len(), 1, "404s are not logged into any app's log: {dirs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_two_web_dynos_on_one_kept_alive_connection() {
    let env = Env::start(Duration::from_secs(30)).await;
    let one = TestBackend::start(Mode::Reply("one")).await;
    let two = TestBackend::start(Mode::Reply("two")).await;
    env.route(&[("alpha", &[], up(&[&one, &two]))]);

    let mut client = env.client().await;
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..20 {
        let r = send(&mut client, request("alpha.localhost", "/", &[])).await;
        assert_eq!(r.status, StatusCode::OK);
        *seen.entry(r.body).or_default() += 1;
    }
    assert_eq!(seen.get("one"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("two"), Some(&10), "{seen:?}");
    let connections = |b: &TestBackend| b.connections.load(std::sync::atomic::Ordering::SeqCst);
    // Usually 1 each; a request may open a second one while the first returns to the pool.
    assert!(connections(&one) < 10 && connections(&two) < 10, "connections to dynos are not reused");
    wait_for_line(&env.log("alpha"), &["router[web.2]: at=info", "dyno=web.2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_web_dynos_is_h14_and_a_crashed_app_is_h10() {
    let env = Env::start(Duration::from_secs(30)).await;
    env.route(&[
        ("idle", &[], AppStatus::NoWebDynos),
        ("empty", &[], AppStatus::Up(vec![])),
        ("broken", &[], AppStatus::Crashed),
    ]);

    let r = env.get("idle.localhost", "/a").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("H14"), "{}", r.body);
    assert!(r.headers.contains_key("x-request-id"));
    let line = wait_for_line(&env.log("idle"), &["code=H14"]).await;
    assert!(
        line.contains(
            " router[router]: at=error code=H14 desc=\"No web processes running\" method=GET path=\"/a\" host=idle.localhost"
        ) && line.contains(" dyno= connect=0ms ")
            && line.ends_with(" status=503 bytes=0 protocol=http"),
        "{line}"
    );
    assert_eq!(env.get("empty.localhost", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    wait_for_line(&env.log("empty"), &["at=error code=H14"]).await;

    let r = env.get("broken.localhost", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("H10"), "{}", r.body);
    wait_for_line(
        &env.log("broken"),
        &["router[router]: at=error code=H10 desc=\"App crashed\"", "status=503"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_tries_the_next_dyno_once() {
    let env = Env::start(Duration::from_secs(30)).await;
    let live = TestBackend::start(Mode::EchoBody).await;
    let dead = dead_port().await;
    env.route(&[
        ("alpha", &[], AppStatus::Up(vec![Backend::new("web.1", dead), Backend::new("web.2", live.port)])),
        ("gone", &[], AppStatus::Up(vec![Backend::new("web.1", dead)])),
    ]);
    let mut client = env.client().await;
    for i in 0..6 {
        // A body too, to show it survives the retry.
        let req = Request::post("/upload")
            .header("host", "alpha.localhost")
            .body(Full::new(Bytes::from(format!("payload-{i}"))))
            .expect("request");
        let r = send(&mut client, req).await;
        assert_eq!((r.status, r.body), (StatusCode::OK, format!("9 payload-{i}")));
    }
    let line = wait_for_line(&env.log("alpha"), &["method=POST"]).await;
    assert!(line.contains("router[web.2]: at=info") && line.contains("dyno=web.2"), "{line}");

    let r = env.get("gone.localhost", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    wait_for_line(&env.log("gone"), &["router[web.1]: at=error code=H10", "dyno=web.1", "status=503"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dyno_closing_without_a_response_is_h13_after_one_retry_of_a_safe_request() {
    let env = Env::start(Duration::from_secs(30)).await;
    let closer = TestBackend::start(Mode::Close).await;
    let good = TestBackend::start(Mode::Reply("good")).await;
    env.route(&[("flaky", &[], up(&[&closer, &good])), ("broken", &[], up(&[&closer]))]);

    let r = env.get("flaky.localhost", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "good"), "a GET is tried again");
    assert_eq!((closer.requests(), good.requests()), (1, 1));

    let r = env.get("broken.localhost", "/get").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("H13"), "{}", r.body);
    assert_eq!(closer.requests(), 3, "tried twice, not more");
    let line = wait_for_line(&env.log("broken"), &["path=\"/get\""]).await;
    assert!(
        line.contains("router[web.1]: at=error code=H13 desc=\"Connection closed without response\""),
        "{line}"
    );

    let mut client = env.client().await;
    let post = Request::post("/post")
        .header("host", "broken.localhost")
        .body(Full::new(Bytes::from("x")))
        .expect("post");
    assert_eq!(send(&mut client, post).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(closer.requests(), 4, "a POST is not repeated");
    wait_for_line(&env.log("broken"), &["code=H13", "method=POST"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_request_id_reach_the_dyno() {
    let env = Env::start(Duration::from_secs(30)).await;
    let backend = TestBackend::start(Mode::Reply("ok")).await;
    env.route(&[("alpha", &[], up(&[&backend]))]);
    let mut client = env.client().await;

    let id = "client-request-id-0123456789";
    let r = send(
        &mut client,
        request(
            "alpha.localhost:1234",
            "/h",
            &[("x-forwarded-for", "203.0.113.9"), ("x-request-id", id), ("x-forwarded-proto", "https")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let head = backend.head(0);
    assert_eq!(head[":line"], "GET /h HTTP/1.1");
    assert_eq!(head["host"], "alpha.localhost:1234", "the Host header is passed on");
    assert_eq!(head["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(head["x-forwarded-proto"], "https", "a proxy on loopback (TLS in front) passes its scheme on");
    assert_eq!(head["x-forwarded-port"], env.addr.port().to_string());
    assert_eq!(head["x-request-id"], id);
    wait_for_line(&env.log("alpha"), &[&format!("request_id={id} fwd=\"203.0.113.9, 127.0.0.1\"")]).await;

    send(&mut client, request("alpha.localhost", "/h", &[("x-request-id", "too-short")])).await;
    let generated = backend.head(1)["x-request-id"].clone();
    assert_eq!(generated.len(), 36, "{generated}");
    assert!(generated.chars().all(|c| c.is_ascii_hexdigit() || c == '-'), "{generated}");
    assert_eq!(backend.head(1)["x-forwarded-for"], "127.0.0.1");
    assert_eq!(backend.head(1)["x-forwarded-proto"], "http");
    wait_for_line(&env.log("alpha"), &[&format!("request_id={generated} ")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_without_buffering() {
    let env = Env::start(Duration::from_secs(30)).await;
    let echo = TestBackend::start(Mode::EchoBody).await;
    let gate = Arc::new(Notify::new());
    let stream = TestBackend::start(Mode::Stream(gate.clone())).await;
    env.route(&[("echo", &[], up(&[&echo])), ("stream", &[], up(&[&stream]))]);

    // A chunked upload of 1 MiB in 64 KiB frames arrives whole.
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for i in 0..16u8 {
            if tx.send(Bytes::from(vec![b'a' + i; 64 * 1024])).await.is_err() {
                return;
            }
        }
    });
    let body = ChannelBody(rx);
    let mut sender = client_at(env.addr).await;
    let req = Request::post("/up").header("host", "echo.localhost").body(body).expect("request");
    let response = within("upload", sender.send_request(req)).await.expect("response");
    let text = within("upload body", response.into_body().collect()).await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&text), format!("{} {}", 1024 * 1024, "a".repeat(16)));
    assert_eq!(echo.head(0).get("transfer-encoding").map(String::as_str), Some("chunked"));

    // The first chunk of a response reaches the client while the dyno still holds the rest.
    let mut client = env.client().await;
    let response = within("stream head", client.send_request(request("stream.localhost", "/", &[])))
        .await
        .expect("head");
    let mut body = response.into_body();
    let first = within("first chunk", body.frame()).await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"first"));
    gate.notify_one();
    let rest = within("rest", body.collect()).await.expect("rest").to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second"));
    wait_for_line(&env.log("stream"), &["status=200 bytes=11 "]).await;
}

/// A request body fed frame by frame from a channel (sent chunked: its length is unknown).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    let env = Env::start(Duration::from_secs(30)).await;
    let backend = TestBackend::start(Mode::WebSocket).await;
    env.route(&[("chat", &[], up(&[&backend]))]);

    let mut tcp = within("connect", TcpStream::connect(env.addr)).await.expect("connect");
    let handshake =
        "GET /socket HTTP/1.1\r\nHost: chat.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tcp.write_all(handshake.as_bytes()).await.expect("handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within("101 head", tcp.read_exact(&mut byte)).await.expect("read the 101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
    assert!(head.contains("upgrade: websocket") && head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("sec-websocket-accept: accept-for-dghlihnhbxbszsbub25jzq=="), "{head}");
    let seen = backend.head(0);
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");

    for message in ["hello", "through the router", "\u{0}\u{1}binary"] {
        tcp.write_all(message.as_bytes()).await.expect("write");
        let mut echoed = vec![0u8; message.len()];
        within("echo", tcp.read_exact(&mut echoed)).await.expect("echo");
        assert_eq!(echoed, message.as_bytes());
    }
    wait_for_line(&env.log("chat"), &["router[web.1]: at=info method=GET path=\"/socket\"", "status=101"])
        .await;
    assert_eq!(env.router.in_flight(backend.port), 1, "an open tunnel counts as in flight");
    drop(tcp);
    assert!(env.router.drain(backend.port, STEP).await, "the tunnel ends when the client goes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_dyno_gets_h12_after_the_timeout() {
    let env = Env::start(Duration::from_millis(300)).await;
    let backend = TestBackend::start(Mode::Hang).await;
    env.route(&[("slow", &[], up(&[&backend]))]);

    let started = Instant::now();
    let r = env.get("slow.localhost", "/wait").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("H12"), "{}", r.body);
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    let line = wait_for_line(&env.log("slow"), &["code=H12"]).await;
    assert!(
        line.contains("router[web.1]: at=error code=H12 desc=\"Request timeout\" method=GET path=\"/wait\""),
        "{line}"
    );
    assert!(line.contains(" dyno=web.1 ") && line.ends_with(" status=503 bytes=0 protocol=http"), "{line}");
    let service: u64 = line
        .split("service=")
        .nth(1)
        .and_then(|s| s.split("ms").next())
        .and_then(|s| s.parse().ok())
        .expect("service=…ms");
    assert!((300..5000).contains(&service), "{line}");
    assert!(env.router.drain(backend.port, STEP).await, "a timed-out request is no longer in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_counts_from_the_end_of_a_slow_upload() {
    let env = Env::start(Duration::from_secs(1)).await;
    let echo = TestBackend::start(Mode::EchoBody).await;
    env.route(&[("echo", &[], up(&[&echo]))]);

    // The client itself is slow here (that is what is tested): 6 pieces 250 ms apart.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if tx.send(Bytes::from_static(b"piece")).await.is_err() {
                return;
            }
        }
    });
    let mut sender = client_at(env.addr).await;
    let started = Instant::now();
    let req =
        Request::post("/slowly").header("host", "echo.localhost").body(ChannelBody(rx)).expect("request");
    let response = within("response", sender.send_request(req)).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK, "a 1.5 s upload under a 1 s timeout is not a timeout");
    let text = within("body", response.into_body().collect()).await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&text), "30 piecepiecepiecep");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_64_kib_gets_431() {
    let env = Env::start(Duration::from_secs(30)).await;
    let backend = TestBackend::start(Mode::Reply("ok")).await;
    env.route(&[("alpha", &[], up(&[&backend]))]);

    // Just under the limit passes.
    let mut client = env.client().await;
    let big = "b".repeat(60 * 1024);
    let r = send(&mut client, request("alpha.localhost", "/", &[("x-big", &big)])).await;
    assert_eq!(r.status, StatusCode::OK);

    // Over it: the router answers 431 and the dyno never sees the request.
    let mut tcp = within("connect", TcpStream::connect(env.addr)).await.expect("connect");
    let huge = "h".repeat(70 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: alpha.localhost\r\nX-Huge: {huge}\r\n\r\n");
    let _ = within("send", tcp.write_all(req.as_bytes())).await; // the router may stop reading early
    let mut answer = Vec::new();
    let _ = within("431", tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer:?}");
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_request_in_flight() {
    let env = Env::start(Duration::from_secs(30)).await;
    let gate = Arc::new(Notify::new());
    let mut old = TestBackend::start(Mode::Gate(gate.clone())).await;
    let new = TestBackend::start(Mode::Reply("new")).await;
    env.route(&[("alpha", &[], up(&[&old]))]);

    let addr = env.addr;
    let pending = tokio::spawn(async move {
        let mut sender = client_at(addr).await;
        send(&mut sender, request("alpha.localhost", "/slow", &[])).await
    });
    within("request reaches the old dyno", old.arrived.recv()).await.expect("arrived");
    assert_eq!(env.router.in_flight(old.port), 1);

    // The deploy switches the table, then drains the old dyno.
    env.route(&[("alpha", &[], up(&[&new]))]);
    assert_eq!(env.get("alpha.localhost", "/").await.body, "new", "new requests go to the new dyno");
    let router = env.router.clone();
    let port = old.port;
    let mut drain = tokio::spawn(async move { router.drain(port, STEP).await });
    let early = tokio::time::timeout(Duration::from_millis(200), &mut drain).await;
    assert!(early.is_err(), "drain returned while a request was in flight");

    gate.notify_one();
    let reply = within("the in-flight request", pending).await.expect("task");
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "released"));
    assert!(within("drain", drain).await.expect("task"), "drain should report a clean drain");
    assert_eq!(env.router.in_flight(old.port), 0);

    // With nothing in flight, drain returns at once; a bounded drain gives up and says so.
    assert!(env.router.drain(new.port, Duration::from_millis(1)).await);
    let hang = TestBackend::start(Mode::Hang).await;
    env.route(&[("alpha", &[], up(&[&hang]))]);
    let addr = env.addr;
    let _stuck = tokio::spawn(async move {
        let mut sender = client_at(addr).await;
        let _ = sender.send_request(request("alpha.localhost", "/", &[])).await;
    });
    let mut hang = hang;
    within("request reaches the hanging dyno", hang.arrived.recv()).await.expect("arrived");
    assert!(!env.router.drain(hang.port, Duration::from_millis(100)).await);
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 corners, spoken raw (hyper as a client would not send these)
// ---------------------------------------------------------------------------------------------

/// Sends `raw` on a new connection to the router and reads until the router closes it.
async fn raw_exchange(env: &Env, raw: &str) -> String {
    let mut tcp = within("connect", TcpStream::connect(env.addr)).await.expect("connect");
    within("send", tcp.write_all(raw.as_bytes())).await.expect("send");
    let mut answer = Vec::new();
    within("read to the end", tcp.read_to_end(&mut answer)).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads from `tcp` until `answer` contains `needle` (bounded by [`within`]).
async fn read_until(tcp: &mut TcpStream, answer: &mut Vec<u8>, needle: &str) {
    while !String::from_utf8_lossy(answer).contains(needle) {
        let mut buf = [0u8; 4096];
        let n = within(needle, tcp.read(&mut buf)).await.expect("read");
        assert!(n > 0, "connection closed before {needle:?}; got {:?}", String::from_utf8_lossy(answer));
        answer.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_dyno_connection() {
    let env = Env::start(Duration::from_secs(30)).await;
    let backend = TestBackend::start(Mode::Reply("hello")).await;
    env.route(&[("alpha", &[], up(&[&backend]))]);

    let answer = raw_exchange(
        &env,
        "GET /one HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n\
         HEAD /two HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n\
         GET /three HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    assert_eq!(answer.matches("hello").count(), 2, "no body for HEAD: {answer}");
    assert!(answer.ends_with("Connection: close\r\n\r\nhello"), "{answer}");
    let lines: Vec<String> = (0..3).map(|i| backend.head(i)[":line"].clone()).collect();
    assert_eq!(lines, ["GET /one HTTP/1.1", "HEAD /two HTTP/1.1", "GET /three HTTP/1.1"]);
    assert_eq!(backend.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_gets_a_chunked_response_as_plain_data_then_the_close() {
    let env = Env::start(Duration::from_secs(30)).await;
    let backend = TestBackend::start(Mode::Chunked).await;
    env.route(&[("alpha", &[], up(&[&backend]))]);

    let answer = raw_exchange(&env, "GET / HTTP/1.0\r\nHost: alpha.localhost\r\n\r\n").await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200 ok\r\n"), "{answer}");
    assert!(!lower.contains("transfer-encoding") && lower.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nfirstsecond"), "{answer}");
    assert_eq!(backend.head(0)[":line"], "GET / HTTP/1.1", "the dyno is spoken to in HTTP/1.1");
    wait_for_line(&env.log("alpha"), &["status=200 bytes=11 "]).await;

    // An HTTP/1.1 client gets the chunks as they were.
    let answer =
        raw_exchange(&env, "GET / HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n\r\n").await;
    assert!(answer.contains("Transfer-Encoding: chunked\r\n"), "{answer}");
    assert!(answer.ends_with("5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_ends_with_the_dyno_connection_reaches_the_client_whole() {
    let env = Env::start(Duration::from_secs(30)).await;
    let backend = TestBackend::start(Mode::UntilClose("the old way")).await;
    env.route(&[("alpha", &[], up(&[&backend]))]);

    let r = env.get("alpha.localhost", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "the old way"));
    wait_for_line(&env.log("alpha"), &["status=200 bytes=11 "]).await;
    let r = env.get("alpha.localhost", "/").await;
    assert_eq!(r.body, "the old way");
    assert_eq!(
        backend.connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "such a connection is not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_passed_through() {
    let env = Env::start(Duration::from_secs(30)).await;
    let echo = TestBackend::start(Mode::EchoBody).await;
    env.route(&[("echo", &[], up(&[&echo]))]);

    let mut tcp = within("connect", TcpStream::connect(env.addr)).await.expect("connect");
    let head =
        "POST /up HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    within("head", tcp.write_all(head.as_bytes())).await.expect("send the head");
    let mut answer = Vec::new();
    read_until(&mut tcp, &mut answer, "\r\n\r\n").await;
    assert_eq!(String::from_utf8_lossy(&answer), "HTTP/1.1 100 Continue\r\n\r\n", "before the body is sent");
    within("body", tcp.write_all(b"hello")).await.expect("send the body");
    read_until(&mut tcp, &mut answer, "5 hello").await;
    assert!(String::from_utf8_lossy(&answer).contains("HTTP/1.1 200 OK\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_gets_400_and_never_reaches_a_dyno() {
    let env = Env::start(Duration::from_secs(30)).await;
    let backend = TestBackend::start(Mode::EchoBody).await;
    env.route(&[("alpha", &[], up(&[&backend]))]);

    for raw in [
        "POST / HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello",
        "GET / HTTP/1.1\r\nHost alpha.localhost\r\n\r\n",
    ] {
        let answer = raw_exchange(&env, raw).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{raw:?} → {answer}");
    }
    assert_eq!(backend.requests(), 0);
    let r = env.get("alpha.localhost", "/").await;
    assert_eq!(r.status, StatusCode::OK, "the router still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_off_either_way() {
    let env = Env::start_with(Duration::from_secs(30), Duration::from_millis(300)).await;
    let gate = Arc::new(Notify::new());
    let stream = TestBackend::start(Mode::Stream(gate.clone())).await;
    let echo = TestBackend::start(Mode::EchoBody).await;
    env.route(&[("stream", &[], up(&[&stream])), ("echo", &[], up(&[&echo]))]);

    // The dyno sends its head and a first chunk, then nothing: H15, and the client's
    // connection ends (its body is cut off, not completed).
    let started = Instant::now();
    let answer = raw_exchange(&env, "GET /feed HTTP/1.1\r\nHost: stream.localhost\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("5\r\nfirst\r\n"), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let line = wait_for_line(&env.log("stream"), &["code=H15"]).await;
    assert!(line.contains("at=error code=H15 desc=\"Idle connection\" method=GET path=\"/feed\""), "{line}");
    gate.notify_one();

    // A client that stops sending its body: H28, and the dyno never gets a request.
    let mut tcp = within("connect", TcpStream::connect(env.addr)).await.expect("connect");
    let head = "POST /up HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 10\r\n\r\nhalf";
    within("send", tcp.write_all(head.as_bytes())).await.expect("send");
    let mut rest = Vec::new();
    let _ = within("closed", tcp.read_to_end(&mut rest)).await;
    let line = wait_for_line(&env.log("echo"), &["code=H28"]).await;
    assert!(line.contains("desc=\"Client Connection Idle\"") && line.contains(" status=499 "), "{line}");
    assert!(!String::from_utf8_lossy(&rest).contains(" 200 "), "no answer to half a request: {rest:?}");
}

// ---------------------------------------------------------------------------------------------
// Handover to a successor on the same address (an upgrade of the router process)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_router_steers_new_connections_to_its_successor_and_finishes_its_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = || RouterConfig::for_home(&Home::at(dir.path()));
    let gate = Arc::new(Notify::new());
    let mut slow = TestBackend::start(Mode::Gate(gate.clone())).await;
    let fresh = TestBackend::start(Mode::Reply("successor")).await;
    let table = |backend: &TestBackend| {
        let mut table = RouteTable::new("localhost");
        table.add_app("alpha", &[], up(&[backend]));
        table
    };

    let old = Router::new(config());
    old.update(table(&slow));
    let listener = slipway::router::reuseport::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("address");
    old.serve_on_threads(listener, 1).expect("serve");
    let pending = tokio::spawn(async move {
        let mut sender = client_at(addr).await;
        send(&mut sender, request("alpha.localhost", "/slow", &[])).await
    });
    within("the request reaches the old router's dyno", slow.arrived.recv()).await.expect("arrived");

    let new = Router::new(config());
    new.update(table(&fresh));
    new.serve_on_threads(slipway::router::reuseport::bind(addr).expect("join the address"), 1)
        .expect("serve");
    // Steered: every new connection goes to the successor, while the old router still accepts.
    assert!(old.steer_to_successor().expect("steer"));
    for _ in 0..50 {
        let mut sender = client_at(addr).await;
        let reply = send(&mut sender, request("alpha.localhost", "/", &[])).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "successor"));
    }
    let retiring = old.clone();
    let retire = tokio::spawn(async move { retiring.retire(true, Duration::from_millis(50), STEP).await });
    // The request in flight on the old router finishes there, telling the client to reconnect,
    // then the old router is done.
    within("retiring", async {
        while !old.retiring() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    gate.notify_one();
    let reply = within("the in-flight request", pending).await.expect("task");
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "released"));
    assert_eq!(reply.headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(within("retire", retire).await.expect("task"), 0, "connections left open");
    let mut sender = client_at(addr).await;
    assert_eq!(send(&mut sender, request("alpha.localhost", "/", &[])).await.body, "successor");
}
