//! HTTPS through the router of a running daemon: certificates chosen by SNI per app, picked up
//! from disk without a restart, `X-Forwarded-Proto: https`, HTTP/2 (curl) with streamed request
//! bodies, a websocket over TLS HTTP/1.1, the TLS-ALPN-01 challenge certificate, and the
//! per-app HTTP→HTTPS redirect.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use slipway::app::AppName;
use slipway::certs::{self, Source};
use slipway::home::Home;
use support::*;

/// A dyno that says who it is and what the router told it, takes bodies (either framing) and
/// echoes a websocket's bytes after the `101`.
const SERVER: &str = r#"import hashlib, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
NAME = sys.argv[1]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return data, "chunked"
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0"))), "length"
    def answer(self, text):
        b = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
            return
        h = self.headers
        self.answer(f"{NAME} proto={h.get('X-Forwarded-Proto')} port={h.get('X-Forwarded-Port')} path={self.path} cookie={h.get('Cookie')}")
    def do_POST(self):
        data, framing = self.body()
        self.answer(f"{NAME} len={len(data)} sha={hashlib.sha256(data).hexdigest()} framing={framing}")
    do_PUT = do_POST
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn deploy(slip: &Slipway, app: &str) {
    let repo = GitRepo::init(&slip.root().join(format!("src-{app}")));
    let procfile = format!("web: python3 server {app}\n");
    repo.commit_files(&[("Procfile", procfile.as_str()), ("server", SERVER)], app);
    let (ok, out) = slip.push_local(&repo, app);
    assert!(ok, "deploy of {app} failed:\n{out}\n{}", slip.diagnostics());
}

/// A test CA that signs leaf certificates.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "slipway test CA");
        let key = rcgen::KeyPair::generate().expect("ca key");
        Ca { issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("ca cert") }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Key and certificate (PEM) for `names`, issued by this CA.
    fn leaf(&self, names: &[&str]) -> String {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        format!("{}{}", key.serialize_pem(), cert.pem())
    }
}

fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("add ca");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every handshake a full one, so every connection shows the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS handshake with SNI `name`, or the TLS error that ended it.
fn handshake(addr: &str, name: &str, config: Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| {
            match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(tls) => format!("{tls:?}"),
                None => e.to_string(),
            }
        })?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The DNS names of the certificate the server presented.
fn peer_names(tls: &Tls) -> Vec<String> {
    let leaf = tls.conn.peer_certificates().and_then(|c| c.first()).expect("a peer certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("parse peer cert");
    let san = cert.subject_alternative_name().ok().flatten().expect("SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Reads a response to its end (the request asked to close): status, head, body.
fn read_response(tls: &mut Tls) -> (u16, String, String) {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// `GET path` over HTTPS/1.1 with SNI and Host `name`: (status, body, the certificate's names).
fn https_get(
    addr: &str,
    name: &str,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(u16, String, Vec<String>), String> {
    let mut tls = handshake(addr, name, config)?;
    let names = peer_names(&tls);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {name}\r\nX-Forwarded-Proto: gopher\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let (status, _, body) = read_response(&mut tls);
    Ok((status, body, names))
}

/// curl over HTTP/2 to `https://name:port/path` (resolved to 127.0.0.1, trusting `ca_file`):
/// (`%{http_version}` and status, body).
fn curl_h2(
    port: u16,
    ca_file: &std::path::Path,
    name: &str,
    path: &str,
    extra: &[&str],
    stdin: Option<&[u8]>,
) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(ca_file)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(extra)
        .arg(format!("https://{name}:{port}{path}"))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run curl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write to curl");
    }
    let out = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = text.rsplit_once('\n').unwrap_or(("", &text));
    assert!(out.status.success(), "curl failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    (meta.to_string(), body.to_string())
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(data)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn https_serves_each_app_its_certificate_over_http1_and_http2() {
    let mut slip = Slipway::new();
    slip.start_daemon();
    let home = Home::at(&slip.home);
    let https = slip.https_addr.clone();
    let https_port: u16 = https.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    deploy(&slip, "alpha");
    deploy(&slip, "beta");
    let ca = Ca::new();
    let ca_file = slip.root().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let alpha: AppName = "alpha".parse().expect("name");
    let beta: AppName = "beta".parse().expect("name");
    certs::write(
        &home,
        &alpha,
        &certs::file_name(Source::Manual, "alpha.localhost"),
        ca.leaf(&["alpha.localhost"]).as_bytes(),
    )
    .expect("write alpha cert");
    certs::write(
        &home,
        &beta,
        &certs::file_name(Source::Acme, "beta.localhost"),
        ca.leaf(&["beta.localhost"]).as_bytes(),
    )
    .expect("write beta cert");
    let h1 = client_config(&ca, &[b"http/1.1"]);

    // Each app its own certificate, by SNI; the dyno is told the request came over HTTPS (a
    // client's own X-Forwarded-Proto does not count).
    let served = wait_until(Duration::from_secs(20), || {
        https_get(&https, "alpha.localhost", "/a?b=1", h1.clone()).is_ok_and(|(s, _, _)| s == 200)
    });
    assert!(served, "{:?}\n{}", https_get(&https, "alpha.localhost", "/", h1.clone()), slip.diagnostics());
    let (status, body, names) = https_get(&https, "alpha.localhost", "/a?b=1", h1.clone()).expect("alpha");
    assert_eq!(status, 200);
    assert_eq!(names, ["alpha.localhost"]);
    assert_eq!(body, format!("alpha proto=https port={https_port} path=/a?b=1 cookie=None"));
    let (status, body, names) = https_get(&https, "beta.localhost", "/", h1.clone()).expect("beta");
    assert_eq!((status, names), (200, vec!["beta.localhost".to_string()]));
    assert!(body.starts_with("beta proto=https"), "{body}");

    // A name no app has a certificate for is refused in the handshake (unrecognized_name).
    let refused = handshake(&https, "nope.localhost", h1.clone()).expect_err("no certificate for nope");
    assert!(refused.contains("UnrecognisedName") || refused.contains("UnrecognizedName"), "{refused}");
    let refused = handshake(&https, "gamma.example.com", h1.clone()).expect_err("unknown host");
    assert!(refused.contains("UnrecognisedName"), "{refused}");
    let mut no_sni = (*h1).clone();
    no_sni.enable_sni = false;
    let refused = handshake(&https, "alpha.localhost", Arc::new(no_sni)).expect_err("no SNI");
    assert!(refused.contains("UnrecognisedName"), "{refused}");

    // A replaced certificate is served without a restart.
    certs::write(
        &home,
        &alpha,
        &certs::file_name(Source::Manual, "alpha.localhost"),
        ca.leaf(&["alpha.localhost", "www.alpha.test"]).as_bytes(),
    )
    .expect("replace alpha cert");
    let replaced = wait_until(Duration::from_secs(10), || {
        https_get(&https, "alpha.localhost", "/", h1.clone()).is_ok_and(|(_, _, n)| n.len() == 2)
    });
    assert!(replaced, "the new certificate was not picked up");

    // HTTP/2 with curl: negotiated, routed, streamed bodies with and without a length.
    let (meta, body) = curl_h2(
        https_port,
        &ca_file,
        "alpha.localhost",
        "/h2",
        &["-H", "Cookie: a=1", "-H", "Cookie: b=2"],
        None,
    );
    assert_eq!(meta, "2 200", "{body}");
    assert_eq!(body, format!("alpha proto=https port={https_port} path=/h2 cookie=a=1; b=2"));
    let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let upload_file = slip.root().join("upload.bin");
    std::fs::write(&upload_file, &upload).expect("write upload");
    let sha = sha256_hex(&upload);
    let data_arg = format!("@{}", upload_file.display());
    let (meta, body) =
        curl_h2(https_port, &ca_file, "beta.localhost", "/up", &["--data-binary", &data_arg], None);
    assert_eq!(meta, "2 200", "{body}");
    assert_eq!(body, format!("beta len={} sha={sha} framing=length", upload.len()));
    let (meta, body) = curl_h2(https_port, &ca_file, "beta.localhost", "/up", &["-T", "-"], Some(&upload));
    assert_eq!(meta, "2 200", "{body}");
    assert_eq!(body, format!("beta len={} sha={sha} framing=chunked", upload.len()));
    // curl sends its Host header as :authority: an unknown one is a 404, as on HTTP/1.1.
    let (meta, body) =
        curl_h2(https_port, &ca_file, "alpha.localhost", "/", &["-H", "Host: nope.localhost"], None);
    assert_eq!(meta, "2 404", "{body}");
    let logged = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(slip.app_log_path("beta")).is_ok_and(|l| {
            l.contains("method=PUT") && l.contains("status=200") && l.contains("protocol=https")
        })
    });
    assert!(
        logged,
        "no router line for the HTTP/2 upload:\n{}",
        std::fs::read_to_string(slip.app_log_path("beta")).unwrap_or_default()
    );

    // A websocket over TLS HTTP/1.1.
    let mut tls = handshake(&https, "alpha.localhost", h1.clone()).expect("handshake");
    write!(
        tls,
        "GET /ws HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).expect("101 head");
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tls.write_all(b"ping over tls").expect("send");
    let mut echoed = [0u8; 13];
    tls.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping over tls");
    drop(tls);

    // TLS-ALPN-01: a client offering only acme-tls/1 gets the challenge certificate.
    let dir = certs::tls_alpn01_dir(&home);
    std::fs::create_dir_all(&dir).expect("challenge dir");
    std::fs::write(dir.join("gamma.example.com.pem"), ca.leaf(&["gamma.example.com"]))
        .expect("challenge cert");
    let acme = client_config(&ca, &[b"acme-tls/1"]);
    let mut tls = handshake(&https, "gamma.example.com", acme.clone()).expect("challenge handshake");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"acme-tls/1"[..]));
    assert_eq!(peer_names(&tls), ["gamma.example.com"]);
    let mut rest = Vec::new();
    assert!(
        matches!(tls.read_to_end(&mut rest), Ok(0)),
        "the challenge connection is closed after the handshake"
    );
    assert!(handshake(&https, "delta.example.com", acme).is_err(), "no challenge pending for delta");

    // HTTP -> HTTPS redirect: off by default, 301 for GET, 308 for the rest, and only with a
    // certificate for the host.
    let router = slip.router_addr.clone();
    assert_eq!(router_get(&router, "alpha.localhost", "/x?y=1").map(|(s, _)| s), Some(200));
    certs::set_flag(&home, &alpha, "redirect", true).expect("redirect on");
    let redirected = wait_until(Duration::from_secs(10), || {
        router_get(&router, "alpha.localhost", "/x?y=1").is_some_and(|(s, _)| s == 301)
    });
    assert!(redirected, "no redirect once the flag is set");
    let mut plain = TcpStream::connect(&router).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(plain, "GET /x?y=1 HTTP/1.1\r\nHost: alpha.localhost\r\nConnection: close\r\n\r\n").expect("send");
    let mut raw = String::new();
    plain.read_to_string(&mut raw).expect("read");
    assert!(raw.contains(&format!("\r\nLocation: https://alpha.localhost:{https_port}/x?y=1\r\n")), "{raw}");
    let mut plain = TcpStream::connect(&router).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        plain,
        "POST /form HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    .expect("send");
    let mut raw = String::new();
    plain.read_to_string(&mut raw).expect("read");
    assert!(raw.starts_with("HTTP/1.1 308 "), "{raw}");
    // A TLS proxy in front (on loopback) that says the client came over HTTPS: no redirect loop.
    let mut plain = TcpStream::connect(&router).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        plain,
        "GET / HTTP/1.1\r\nHost: alpha.localhost\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    plain.read_to_string(&mut raw).expect("read");
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    // Beta has no redirect flag; over HTTPS nothing is redirected.
    assert_eq!(router_get(&router, "beta.localhost", "/").map(|(s, _)| s), Some(200));
    assert_eq!(https_get(&https, "alpha.localhost", "/", h1.clone()).map(|(s, _, _)| s), Ok(200));
    certs::set_flag(&home, &alpha, "redirect", false).expect("redirect off");
    let back = wait_until(Duration::from_secs(10), || {
        router_get(&router, "alpha.localhost", "/").is_some_and(|(s, _)| s == 200)
    });
    assert!(back, "still redirected with the flag off");

    // status shows the HTTPS listener.
    let json = slip.json(&["status", "--json"]);
    assert_eq!(json["router"]["https_addr"], https.as_str(), "{json}");
    let text = slip.cmd_ok(&["status"]);
    assert!(text.contains(&format!("HTTPS {https}")), "{text}");
    assert!(!text.contains("nothing listens for HTTPS"), "{text}");
}

/// A dyno for the in-process router: answers every request with `name` and its path after the
/// head arrived, on a kept-alive connection; `/slow` waits until `release` is notified. Counts
/// the connections it accepted.
async fn slow_dyno(
    name: &'static str,
    release: Arc<tokio::sync::Notify>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind dyno");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                loop {
                    // Byte by byte: the requests carry no body, so a head ends the read.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => head.push(byte[0]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    if path == "/slow" {
                        release.notified().await;
                    }
                    let body = format!("{name}{path}");
                    let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An HTTP/2 connection over TLS (SNI `name`) to the router at `addr`.
async fn h2_client(
    addr: std::net::SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let server_name = ServerName::try_from(name.to_string()).expect("name");
    let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

fn h2_get(authority: &str, path: &str) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get(format!("https://{authority}{path}"))
        .version(hyper::Version::HTTP_2)
        .body(http_body_util::Empty::new())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_count_in_flight_get_the_routers_errors_and_tls_connections_are_capped() {
    use http_body_util::BodyExt;
    use slipway::router::{AppStatus, Backend, RouteTable, Router, RouterConfig};
    const STEP: Duration = Duration::from_secs(10);

    let dir = tempfile::tempdir().expect("temp dir");
    let home = Home::at(dir.path());
    let ca = Ca::new();
    for app in ["slow", "idle"] {
        let name: AppName = app.parse().expect("name");
        let host = format!("{app}.localhost");
        certs::write(&home, &name, &certs::file_name(Source::Manual, &host), ca.leaf(&[&host]).as_bytes())
            .expect("write cert");
    }
    let release = Arc::new(tokio::sync::Notify::new());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = slow_dyno("", release.clone(), accepted.clone()).await;
    let router = Router::new(RouterConfig::for_home(&home).max_connections(4));
    let mut table = RouteTable::new("localhost");
    table.add_app("slow", &[], AppStatus::Up(vec![Backend::new("web.1".to_string(), port)]));
    table.add_app("idle", &[], AppStatus::NoWebDynos);
    router.update(table);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = router.clone();
    let task = tokio::spawn(async move { serving.serve_tls(listener).await });
    let config = client_config(&ca, &[b"h2"]);

    // A request in flight over HTTP/2 is counted, and a drain waits for it.
    let mut client = h2_client(addr, "slow.localhost", config.clone()).await;
    let pending = tokio::spawn(client.send_request(h2_get("slow.localhost", "/slow")));
    let counted = tokio::time::timeout(STEP, async {
        while router.in_flight(port) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the HTTP/2 request is not counted in flight");
    assert!(!router.drain(port, Duration::from_millis(200)).await, "a drain did not wait for it");
    let draining = {
        let router = router.clone();
        tokio::spawn(async move { router.drain(port, STEP).await })
    };
    release.notify_one();
    let response =
        tokio::time::timeout(STEP, pending).await.expect("response").expect("task").expect("response");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"/slow");
    assert!(tokio::time::timeout(STEP, draining).await.expect("drained").expect("task"), "drain timed out");
    assert_eq!(router.in_flight(port), 0);

    // A client resetting its stream while the dyno thinks: no longer in flight, logged as H27.
    let doomed = tokio::spawn(client.send_request(h2_get("slow.localhost", "/slow")));
    let counted = tokio::time::timeout(STEP, async {
        while router.in_flight(port) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the second slow request is not counted");
    doomed.abort();
    let log = dir.path().join("logs").join("slow").join("app.log");
    let logged = tokio::time::timeout(STEP, async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if router.in_flight(port) == 0 && text.contains("code=H27") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no H27 line, or still in flight");
    let line = logged.lines().find(|l| l.contains("code=H27")).expect("H27 line");
    assert!(
        line.contains("status=499") && line.contains("protocol=https") && line.contains("path=\"/slow\""),
        "{line}"
    );

    // The router's own answers over HTTP/2: 503 H14 for an app without web dynos (the same
    // connection may carry another app's host its certificate does not cover: routing is by
    // :authority), 404 for an unknown host.
    let mut idle = h2_client(addr, "idle.localhost", config.clone()).await;
    let response = idle.send_request(h2_get("idle.localhost", "/")).await.expect("response");
    assert_eq!(response.status(), 503);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("H14"), "{}", String::from_utf8_lossy(&body));
    let response = idle.send_request(h2_get("nobody.localhost", "/")).await.expect("response");
    assert_eq!(response.status(), 404);
    let fast = client.send_request(h2_get("slow.localhost", "/fast")).await.expect("response");
    assert_eq!(fast.status(), 200);

    // Requests one after another reuse the router's connection to the dyno.
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        let response = client.send_request(h2_get("slow.localhost", "/again")).await.expect("response");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"/again");
    }
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(opened <= 2, "{opened} new dyno connections for 5 requests in a row");
    // Responses dropped with their streams, then the connections.
    drop((response, fast, client, idle));

    // TLS connections count against the connection cap like plain ones: over it, a connection is
    // closed before its handshake.
    let settled = tokio::time::timeout(STEP, async {
        while router.open_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "{} connections still open", router.open_connections());
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(h2_client(addr, "slow.localhost", config.clone()).await);
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let refused = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("slow.localhost").expect("name"), tcp);
    assert!(
        tokio::time::timeout(STEP, refused).await.expect("an answer").is_err(),
        "a fifth connection was served"
    );
    drop(held);
    task.abort();
}

/// `GET path` over HTTP/2 on a fresh connection: status and body.
async fn h2_fetch(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let mut client = h2_client(addr, "alpha.localhost", config).await;
    let response = client.send_request(h2_get("alpha.localhost", path)).await.expect("response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_router_hands_its_https_address_over_too() {
    use slipway::router::{AppStatus, Backend, RouteTable, Router, RouterConfig};
    const STEP: Duration = Duration::from_secs(10);

    let dir = tempfile::tempdir().expect("temp dir");
    let home = Home::at(dir.path());
    let ca = Ca::new();
    let alpha: AppName = "alpha".parse().expect("name");
    certs::write(
        &home,
        &alpha,
        &certs::file_name(Source::Manual, "alpha.localhost"),
        ca.leaf(&["alpha.localhost"]).as_bytes(),
    )
    .expect("write cert");
    let gate = Arc::new(tokio::sync::Notify::new());
    let counted = || Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let old_port = slow_dyno("old", gate.clone(), counted()).await;
    let new_port = slow_dyno("new", gate.clone(), counted()).await;
    let table = |port: u16| {
        let mut table = RouteTable::new("localhost");
        table.add_app("alpha", &[], AppStatus::Up(vec![Backend::new("web.1".to_string(), port)]));
        table
    };
    let bind = |addr: &str| slipway::router::reuseport::bind(addr.parse().expect("address")).expect("bind");
    let (http, https) = (bind("127.0.0.1:0"), bind("127.0.0.1:0"));
    let (http_addr, https_addr) = (http.local_addr().expect("addr"), https.local_addr().expect("addr"));

    let old = Router::new(RouterConfig::for_home(&home));
    old.update(table(old_port));
    old.serve_with_tls_on_threads(http, Some(https), 1).expect("serve");
    let config = client_config(&ca, &[b"h2"]);
    assert_eq!(h2_fetch(https_addr, config.clone(), "/").await, (200, "old/".to_string()));
    let pending = tokio::spawn(h2_fetch(https_addr, config.clone(), "/slow"));
    let started = tokio::time::timeout(STEP, async {
        while old.in_flight(old_port) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(started.is_ok(), "the slow request did not reach the old router's dyno");

    let new = Router::new(RouterConfig::for_home(&home));
    new.update(table(new_port));
    let join = |addr: std::net::SocketAddr| slipway::router::reuseport::bind(addr).expect("join the address");
    new.serve_with_tls_on_threads(join(http_addr), Some(join(https_addr)), 1).expect("serve");
    // Steered: new HTTPS connections go to the successor while the old router still accepts.
    assert!(old.steer_to_successor().expect("steer"));
    for _ in 0..20 {
        assert_eq!(h2_fetch(https_addr, config.clone(), "/").await, (200, "new/".to_string()));
    }
    let retiring = old.clone();
    let retire = tokio::spawn(async move { retiring.retire(true, Duration::from_millis(50), STEP).await });
    let retired = tokio::time::timeout(STEP, async {
        while !old.retiring() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(retired.is_ok());
    // The request in flight on the old router finishes there.
    gate.notify_one();
    let answer = tokio::time::timeout(STEP, pending).await.expect("in time").expect("task");
    assert_eq!(answer, (200, "old/slow".to_string()));
    assert_eq!(
        tokio::time::timeout(STEP, retire).await.expect("retired").expect("task"),
        0,
        "connections left open"
    );
    assert_eq!(h2_fetch(https_addr, config.clone(), "/").await, (200, "new/".to_string()));
}

#[test]
fn a_router_without_its_https_address_serves_http_and_status_says_so() {
    let mut slip = Slipway::new();
    // Someone else holds the HTTPS address (bound without SO_REUSEPORT, not listening).
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind(slip.https_addr.parse().expect("address")).expect("hold the HTTPS address");
    slip.start_daemon();
    deploy(&slip, "alpha");
    let router = slip.router_addr.clone();
    let served = wait_until(Duration::from_secs(20), || {
        router_get(&router, "alpha.localhost", "/").is_some_and(|(s, _)| s == 200)
    });
    assert!(served, "plain HTTP is not served\n{}", slip.diagnostics());
    let text = slip.cmd_ok(&["status"]);
    assert!(text.contains(&format!("nothing listens for HTTPS on {}", slip.https_addr)), "{text}");
    let log = std::fs::read_to_string(slip.home.join("logs").join("router.log")).unwrap_or_default();
    assert!(log.contains("cannot listen for HTTPS"), "{log}");
    drop(held);
}
