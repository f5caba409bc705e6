//! The router as an internet-facing proxy: strict HTTP/1.1 framing (no request smuggling),
//! `Host` rules, forwarding headers only from a trusted proxy, and connection limits. Every
//! case is spoken raw over TCP against a `Router` in-process, with a dyno written here that
//! records the exact bytes it receives. Every wait is bounded ([`within`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway::home::Home;
use slipway::router::{AppStatus, Backend, RouteTable, Router, RouterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut).await.unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

struct Env {
    _dir: tempfile::TempDir,
    router: Router,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Env {
    async fn start(dyno: &Dyno) -> Env {
        Env::start_with(dyno, |c| c).await
    }

    async fn start_with(dyno: &Dyno, configure: impl FnOnce(RouterConfig) -> RouterConfig) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let router = Router::new(configure(RouterConfig::for_home(&Home::at(dir.path()))));
        let mut table = RouteTable::new("localhost");
        table.add_app("alpha", &[], AppStatus::Up(vec![Backend::new("web.1", dyno.port)]));
        router.update(table);
        let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind the router");
        let port = listener.local_addr().expect("router address").port();
        let serving = router.clone();
        let task = tokio::spawn(async move { serving.serve(listener).await });
        Env { _dir: dir, router, addr: SocketAddr::from(([127, 0, 0, 1], port)), task }
    }

    /// Sends `raw` from 127.0.0.1 and reads until the router closes the connection.
    async fn exchange(&self, raw: &[u8]) -> String {
        self.exchange_from([127, 0, 0, 1], raw).await
    }

    /// Sends `raw` from the loopback address `from` (127.0.0.x) and reads to the end.
    async fn exchange_from(&self, from: [u8; 4], raw: &[u8]) -> String {
        let mut tcp = connect_from(from, self.addr).await;
        within("send", tcp.write_all(raw)).await.expect("send");
        let mut answer = Vec::new();
        let _ = within("read to the end", tcp.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((from, 0))).expect("bind the client address");
    within("connect", socket.connect(to)).await.expect("connect")
}

/// A dyno that records every byte it receives (one connection at a time, in order) and
/// answers each request with `response` once the request looks complete (its head, and for a
/// chunked body the last chunk), then closes.
struct Dyno {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Dyno {
    async fn start(response: &'static str) -> Dyno {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a dyno");
        let port = listener.local_addr().expect("dyno address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        mine.extend_from_slice(&buf[..n]);
                        record.lock().expect("record").extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&mine).to_ascii_lowercase();
                        let Some(end) = text.find("\r\n\r\n") else { continue };
                        let complete = if text[..end].contains("transfer-encoding: chunked") {
                            text.ends_with("\r\n0\r\n\r\n")
                        } else if let Some(i) = text[..end].find("content-length: ") {
                            let n: usize = text[i + 16..]
                                .split("\r\n")
                                .next()
                                .expect("a length")
                                .parse()
                                .expect("a number");
                            mine.len() >= end + 4 + n
                        } else {
                            true
                        };
                        if complete {
                            let _ = stream.write_all(response.as_bytes()).await;
                            return;
                        }
                    }
                });
            }
        });
        Dyno { port, received }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("record")).into_owned()
    }
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_and_never_reach_the_dyno_raw() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    let head = "POST /up HTTP/1.1\r\nHost: alpha.localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        // A bare LF after the size, after the data, after the last chunk.
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r\n0\n\n",
        // Bytes in an extension that are no token or quoted string.
        "5;a=b c\r\nhello\r\n0\r\n\r\n",
        "5;\x01\r\nhello\r\n0\r\n\r\n",
        "5;a=\"unterminated\r\nhello\r\n0\r\n\r\n",
        // A smuggled request as a trailer, and a trailer line without a colon.
        "5\r\nhello\r\n0\r\nGET /admin HTTP/1.1\r\n\r\n",
        "5\r\nhello\r\n0\r\nX-Ok: 1\r\n\tfolded\r\n\r\n",
    ] {
        let answer = env.exchange(format!("{head}{body}").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{body:?} → {answer}");
        let received = dyno.received();
        assert!(!received.contains("hello"), "{body:?}: the dyno got {received:?}");
        assert!(!received.contains("admin") && !received.contains("folded"), "{received:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_rechunked_without_extensions_or_trailers() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    let raw = "POST /up HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
               005;name=\"va\\\"l\" ; x = y\r\nhello\r\n6\r\n world\r\n0;last\r\nX-Checksum: abc\r\n\r\n";
    let answer = env.exchange(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let received = dyno.received();
    let (head, body) = received.split_once("\r\n\r\n").expect("a head");
    assert!(head.contains("\r\nTransfer-Encoding: chunked\r\n"), "{head}");
    assert_eq!(body, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "none of the client's framing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_content_length_reaches_the_dyno_as_one_plain_value() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    let raw = "POST / HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\nContent-Length: 5, 5\r\n\
               content-length: 5\r\n\r\nhello";
    let answer = env.exchange(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let received = dyno.received();
    assert_eq!(received.to_ascii_lowercase().matches("content-length").count(), 1, "{received}");
    assert!(
        received.contains("\r\nContent-Length: 5\r\n") && received.ends_with("\r\n\r\nhello"),
        "{received}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_get_501() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    for te in [
        "gzip, chunked",
        "chunked, chunked",
        "gzip",
        "identity",
        "chunked\r\nTransfer-Encoding: chunked",
        "\r\nTransfer-Encoding: chunked",
    ] {
        let raw = format!(
            "POST / HTTP/1.1\r\nHost: alpha.localhost\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let answer = env.exchange(raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{te:?} → {answer}");
    }
    assert_eq!(dyno.received(), "", "nothing reached the dyno");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_both_transfer_encoding_and_content_length_loses_the_length() {
    let dyno = Dyno::start(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let env = Env::start(&dyno).await;
    let answer = env.exchange(b"GET / HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("content-length"), "{answer}");
    assert!(
        answer.contains("Transfer-Encoding: chunked\r\n") && answer.ends_with("2\r\nok\r\n0\r\n\r\n"),
        "{answer}"
    );
}

// ---------------------------------------------------------------------------------------------
// Host and forwarding headers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_or_missing_host_gets_400() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    for raw in [
        "GET / HTTP/1.1\r\nHost: alpha.localhost\r\nHost: alpha.localhost\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: alpha.localhost\r\nHost: evil.example\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET http://alpha.localhost/ HTTP/1.1\r\n\r\n",
    ] {
        let answer = env.exchange(raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{raw:?} → {answer}");
    }
    assert_eq!(dyno.received(), "");
}

/// Found by the differential fuzzer (tests/router_differential.rs): targets hyper refuses went to
/// the dyno as they were (`<`, a backtick, a port that is no number, a fragment), and `CONNECT`
/// was relayed although a dyno's 2xx to it opens a tunnel the router does not follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_targets_no_uri_can_have_get_400_and_a_fragment_is_cut_off() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    for raw in [
        "CONNECT /x HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n",
        "CONNECT alpha.localhost:443 HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n",
        "GET /a<b> HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n",
        "GET /a`b HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n",
        "GET /a?q=\"x\" HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n",
        "GET http://alpha.localhost:x/ HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n",
        "GET http://alpha\"localhost/ HTTP/1.1\r\nHost: alpha.localhost\r\n\r\n",
    ] {
        let answer = env.exchange(raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{raw:?} → {answer}");
    }
    assert_eq!(dyno.received(), "");
    let answer =
        env.exchange(b"GET /p?q=1#frag HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let received = dyno.received();
    assert!(received.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{received}");
}

/// Found by the differential fuzzer: 96 to 100 header lines passed the router's limit of 100,
/// and with the router's own four (X-Forwarded-For, -Proto, -Port, X-Request-Id) the dyno got
/// more than its parser takes (hyper's and gunicorn's limit is 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_the_dyno_would_get_with_over_100_header_lines_gets_431() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    let head = |n: usize| {
        let lines: String = (0..n).map(|i| format!("X-Line-{i}: {i}\r\n")).collect();
        format!("GET / HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n{lines}\r\n")
    };
    let answer = env.exchange(head(96).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer}");
    assert_eq!(dyno.received(), "");
    // Connection is hop-by-hop: 95 lines of the client's, Host, and the router's four.
    let answer = env.exchange(head(95).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let received = dyno.received();
    let (sent, _) = received.split_once("\r\n\r\n").expect("a head");
    assert_eq!(sent.lines().count(), 1 + 100, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_replaces_host_and_reaches_the_dyno_in_origin_form() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    let raw = "GET http://alpha.localhost/p?q=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let answer = env.exchange(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let received = dyno.received();
    assert!(received.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{received}");
    assert_eq!(received.matches("Host:").count(), 1, "{received}");
    assert!(received.contains("\r\nHost: alpha.localhost\r\n") && !received.contains("evil"), "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_pass_only_from_a_trusted_proxy_on_loopback() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    let raw = "GET / HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\nForwarded: for=1.2.3.4;host=evil\r\n\
               X-Forwarded-Host: evil.example\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\r\n";
    // From a non-loopback address of this machine, if it has one.
    let outside = local_non_loopback();
    if let Some(ip) = outside {
        let to = SocketAddr::from((ip, env.addr.port()));
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((ip, 0))).expect("bind");
        let mut tcp = within("connect", socket.connect(to)).await.expect("connect");
        within("send", tcp.write_all(raw.as_bytes())).await.expect("send");
        let mut answer = Vec::new();
        let _ = within("read", tcp.read_to_end(&mut answer)).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK\r\n"));
        let received = dyno.received();
        for claim in ["Forwarded:", "X-Forwarded-Host", "X-Real-IP", "evil", "1.2.3.4", "https"] {
            assert!(!received.contains(claim), "{claim} from {ip}: {received}");
        }
        dyno.received.lock().expect("record").clear();
    } else {
        eprintln!("no non-loopback IPv4 address here: only the trusted case is checked");
    }
    // From loopback (the TLS proxy in front), they are kept.
    let answer = env.exchange(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let received = dyno.received();
    for kept in ["Forwarded: for=1.2.3.4;host=evil", "X-Forwarded-Host: evil.example", "X-Real-IP: 1.2.3.4"] {
        assert!(received.contains(kept), "{kept}: {received}");
    }
}

/// A non-loopback IPv4 address of this machine (the source of a default route), if any.
fn local_non_loopback() -> Option<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Connection limits
// ---------------------------------------------------------------------------------------------

/// Polls `cond` every 10 ms for up to [`STEP`].
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Splits `streams` into those the router closed (or answered) within a second and those it
/// keeps open and idle, all read at once.
async fn still_open(streams: Vec<TcpStream>) -> Vec<TcpStream> {
    let mut set = tokio::task::JoinSet::new();
    for mut tcp in streams {
        set.spawn(async move {
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
                Err(_) => Ok(tcp),
                Ok(Ok(n)) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Ok(Err(e)) => Err(e.to_string()),
            }
        });
    }
    let mut open = Vec::new();
    while let Some(joined) = within("reads", set.join_next()).await {
        match joined.expect("read task") {
            Ok(tcp) => open.push(tcp),
            Err(answer) => assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 503 ") || answer.contains("reset"),
                "a refused connection got {answer:?}"
            ),
        }
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_cannot_take_the_router_down() {
    // 1,100 client sockets and up to 256 of the router's in this one process.
    let fds = slipway::router::raise_fd_limit();
    if fds < 1_100 + 256 + 200 {
        eprintln!("skipped: the open file limit is {fds}, too low to hold 1,100 connections here");
        return;
    }
    let dyno = Dyno::start(OK).await;
    let env = Env::start(&dyno).await;
    let mut attack = Vec::new();
    for _ in 0..1_100 {
        attack.push(connect_from([127, 0, 0, 2], env.addr).await);
    }
    let open = still_open(attack).await;
    assert_eq!(open.len(), slipway::router::MAX_PER_IP, "the rest were refused at accept");
    assert_eq!(env.router.open_connections(), slipway::router::MAX_PER_IP);

    // Meanwhile everyone else is served: the proxy address and another client.
    let get = b"GET / HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n\r\n";
    for from in [[127, 0, 0, 1], [127, 0, 0, 3]] {
        let answer = env.exchange_from(from, get).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "from {from:?}: {answer}");
    }
    drop(open);
    eventually("the idle connections are uncounted", || env.router.open_connections() == 0).await;
    let answer = env.exchange_from([127, 0, 0, 2], get).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "the address is welcome again: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_global_cap_connections_get_503_until_some_close() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start_with(&dyno, |c| c.max_connections(20)).await;
    let mut idle = Vec::new();
    for i in 0..20u8 {
        idle.push(connect_from([127, 0, 1, i + 1], env.addr).await);
    }
    eventually("20 connections counted", || env.router.open_connections() == 20).await;
    let get = b"GET / HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n\r\n";
    let mut tcp = connect_from([127, 0, 0, 1], env.addr).await;
    let mut answer = Vec::new();
    // Refused at accept: whatever the client sends is not read (it may even reset the 503).
    let _ = tcp.write_all(get).await;
    let _ = within("refused", tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
    assert!(!answer.contains("ok"), "{answer}");
    assert_eq!(env.router.open_connections(), 20);

    drop(idle.pop());
    eventually("a slot comes free", || env.router.open_connections() == 19).await;
    let answer = env.exchange(get).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_dribbling_clients_are_cut_off_after_the_head_timeout() {
    let dyno = Dyno::start(OK).await;
    let env = Env::start_with(&dyno, |c| c.head_timeout(Duration::from_millis(300))).await;

    // Idle: closed without a word.
    let started = std::time::Instant::now();
    let mut idle = connect_from([127, 0, 0, 2], env.addr).await;
    let mut answer = Vec::new();
    within("idle close", idle.read_to_end(&mut answer)).await.expect("read");
    assert!(answer.is_empty(), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A byte every 50 ms never finishes a head: 408 at the timeout all the same.
    let started = std::time::Instant::now();
    let mut slow = connect_from([127, 0, 0, 2], env.addr).await;
    let (mut from_router, mut to_router) = slow.split();
    let dribble = async {
        for b in b"GET / HTTP/1.1\r\nHost: alpha.localhost\r\nX-Slow: ".iter().cycle() {
            if to_router.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut answer = Vec::new();
    tokio::select! {
        _ = within("408", from_router.read_to_end(&mut answer)) => {}
        () = dribble => {}
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "cut off, not left to dribble");
    assert_eq!(dyno.received(), "");
    eventually("both uncounted", || env.router.open_connections() == 0).await;
}
