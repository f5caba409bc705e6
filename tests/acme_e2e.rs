//! End-to-end: automatic certificates from a real ACME server on loopback. Debian's `pebble`
//! (the ACME test server) validates HTTP-01 against the slipway router's HTTP port and resolves
//! every name to 127.0.0.1 through `pebble-challtestsrv`'s DNS; its own HTTPS listener uses a
//! certificate this test makes, trusted by slipway through `acme_ca_file`. The app is pushed and
//! serving, so the challenge answers are shown to come before its routing.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// pebble and pebble-challtestsrv, killed when dropped.
struct Pebble {
    children: Vec<Child>,
    /// `https://127.0.0.1:<port>/dir`
    directory: String,
    ca_file: PathBuf,
    /// challtestsrv's management port.
    challtest: u16,
    /// pebble's management port (its roots: `/roots/0`).
    management: u16,
    log: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            kill_pid(child.id());
            let _ = child.wait();
        }
    }
}

/// A CA and a leaf for 127.0.0.1/localhost, for pebble's own HTTPS: (CA PEM, leaf PEM, key PEM).
fn listener_cert() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "pebble listener test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params");
    let leaf = params.signed_by(&key, &issuer).expect("leaf");
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn start_pebble(dir: &Path, http_port: u16, tls: u16, validity_secs: u64) -> Pebble {
    std::fs::create_dir_all(dir).expect("pebble dir");
    let (ca, leaf, key) = listener_cert();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).expect("ca");
    std::fs::write(dir.join("cert.pem"), leaf).expect("cert");
    std::fs::write(dir.join("key.pem"), key).expect("key");
    let (listen, management, dns, challtest) = (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }
    });
    std::fs::write(dir.join("pebble.json"), config.to_string()).expect("config");
    let log = dir.join("pebble.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut children = Vec::new();
    children.push(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtest}")])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out.try_clone().expect("log")))
            .spawn()
            .expect("spawn pebble-challtestsrv"),
    );
    children.push(
        Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order is validated again (pebble would reuse half of the valid ones).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn pebble"),
    );
    let pebble = Pebble {
        children,
        directory: format!("https://127.0.0.1:{listen}/dir"),
        ca_file,
        challtest,
        management,
        log,
    };
    let up = wait_until(Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", listen)).is_ok()
            && TcpStream::connect(("127.0.0.1", challtest)).is_ok()
    });
    assert!(up, "pebble did not start:\n{}", tail_file(&pebble.log, 50));
    pebble
}

fn challtest(port: u16, path: &str, body: &str) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("challtestsrv");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
}

/// `GET path` on the router with a Host header.
fn get_with_host(port: u16, host: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("router");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

/// The leaf's serial in a stored `.pem`.
fn serial(path: &Path) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.raw_serial_as_string())
}

fn host_entry<'a>(json: &'a Value, host: &str) -> &'a Value {
    json["hosts"].as_array().and_then(|h| h.iter().find(|e| e["host"] == host)).unwrap_or(&Value::Null)
}

#[test]
fn pebble_issues_renews_and_failures_back_off() {
    let mut slip = Slipway::new();
    let router_port: u16 =
        slip.router_addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("router port");
    // The router's HTTPS listener on every address (its HTTP one stays on 127.0.0.1), so a host
    // resolving to 127.0.0.2 can only be validated over TLS-ALPN-01, by the router.
    let https_port = free_port();
    slip.https_addr = format!("0.0.0.0:{https_port}");
    // Certificates valid 60 s, renewed 45 s before expiry: each is renewed ~15 s after issue.
    let pebble = start_pebble(&slip.root().join("pebble"), router_port, https_port, 60);
    slip.env.extend([
        ("SLIPWAY_DOMAIN".to_string(), "apps.test".to_string()),
        ("SLIPWAY_ACME_DIRECTORY".to_string(), pebble.directory.clone()),
        ("SLIPWAY_ACME_CA_FILE".to_string(), pebble.ca_file.to_string_lossy().into_owned()),
        ("SLIPWAY_ACME_EMAIL".to_string(), "ops@example.test".to_string()),
        ("SLIPWAY_ACME_CHECK_SECS".to_string(), "1".to_string()),
        ("SLIPWAY_ACME_RENEW_BEFORE_SECS".to_string(), "45".to_string()),
    ]);
    slip.start_daemon();
    let repo = GitRepo::init(&slip.root().join("web"));
    repo.commit_files(
        &[("Procfile", "web: python3 server\n"), ("server", stdlib_server("'from-web'").as_str())],
        "web",
    );
    let (ok, out) = slip.push_local(&repo, "web");
    assert!(ok, "push:\n{out}\n{}", slip.diagnostics());
    slip.cmd_ok(&["domains:add", "web", "www.web.test"]);
    let serving = wait_until(Duration::from_secs(30), || {
        router_get(&slip.router_addr, "www.web.test", "/").is_some_and(|(s, b)| s == 200 && b == "from-web")
    });
    assert!(serving, "the app does not answer:\n{}", slip.diagnostics());
    // A host whose DNS fails: its orders fail, and it backs off.
    challtest(pebble.challtest, "/set-servfail", r#"{"host":"bad.web.test"}"#);
    slip.cmd_ok(&["domains:add", "web", "bad.web.test"]);
    // A host whose HTTP port does not answer (127.0.0.2: the router's HTTP listener is on
    // 127.0.0.1 only): HTTP-01 fails, TLS-ALPN-01 takes over, answered by the router's HTTPS
    // listener.
    challtest(pebble.challtest, "/add-a", r#"{"host":"alpn.web.test","addresses":["127.0.0.2"]}"#);
    slip.cmd_ok(&["domains:add", "web", "alpn.web.test"]);

    // The router answers a pending HTTP-01 token before any app routing, on any host.
    let http01 = slip.home.join("certs/.challenges/http-01");
    std::fs::create_dir_all(&http01).expect("dir");
    std::fs::write(http01.join("planted_Token-1"), "planted_Token-1.thumbprint").expect("token");
    let response = get_with_host(router_port, "nowhere.test", "/.well-known/acme-challenge/planted_Token-1");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nplanted_Token-1.thumbprint"), "{response}");
    let response = get_with_host(router_port, "www.web.test", "/.well-known/acme-challenge/planted_Token-1");
    assert!(response.ends_with("\r\n\r\nplanted_Token-1.thumbprint"), "{response}");
    // An unknown token routes as usual: to the app, or nowhere.
    let app = router_get(&slip.router_addr, "www.web.test", "/.well-known/acme-challenge/unknown");
    assert_eq!(app, Some((200, "from-web".to_string())));
    let response = get_with_host(router_port, "nowhere.test", "/.well-known/acme-challenge/unknown");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    std::fs::remove_file(http01.join("planted_Token-1")).expect("remove token");

    slip.cmd_ok(&["certs:auto:enable", "web"]);
    let enabled = std::time::Instant::now();
    let www = slip.home.join("certs/web/acme-www.web.test.pem");
    let default = slip.home.join("certs/web/acme-web.apps.test.pem");
    let alpn = slip.home.join("certs/web/acme-alpn.web.test.pem");
    let issued = wait_until(Duration::from_secs(90), || www.is_file() && default.is_file() && alpn.is_file());
    assert!(
        issued,
        "no certificates from pebble:\n{}\n--- app log ---\n{}\n--- pebble ---\n{}",
        slip.cmd_ok(&["certs", "web"]),
        tail_file(&slip.app_log_path("web"), 30),
        tail_file(&pebble.log, 30)
    );
    eprintln!("three certificates (one through TLS-ALPN-01) {:?} after certs:auto:enable", enabled.elapsed());
    // The router serves them: curl trusting only pebble's root gets the app over HTTPS, by SNI.
    let root = slip.root().join("pebble-root.pem");
    let fetched = Command::new("curl")
        .args(["-sSk", "-o"])
        .arg(&root)
        .arg(format!("https://127.0.0.1:{}/roots/0", pebble.management))
        .status()
        .expect("curl");
    assert!(fetched.success(), "pebble's root");
    let served = wait_until(Duration::from_secs(20), || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&root)
            .args(["--resolve", &format!("www.web.test:{https_port}:127.0.0.1")])
            .arg(format!("https://www.web.test:{https_port}/"))
            .output()
            .expect("curl");
        out.status.success() && out.stdout == b"from-web"
    });
    assert!(
        served,
        "the router does not serve pebble's certificate for www.web.test:\n{}",
        slip.diagnostics()
    );
    use std::os::unix::fs::PermissionsExt;
    // Private to the router: of its group when it runs as a uid of its own (root, root-owned home).
    let private = if nix::unistd::geteuid().is_root() { 0o640 } else { 0o600 };
    assert_eq!(std::fs::metadata(&www).expect("cert").permissions().mode() & 0o777, private);
    let accounts: Vec<PathBuf> = std::fs::read_dir(slip.home.join("certs/.acme"))
        .expect("account dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(std::fs::metadata(&accounts[0]).expect("account").permissions().mode() & 0o777, 0o600);

    let json = slip.json(&["certs", "web", "--json"]);
    assert_eq!(json["auto"], true, "{json}");
    let by_pebble: Vec<&Value> = json["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .filter(|c| c["type"] == "auto" && c["issuer"].as_str().unwrap_or("").contains("Pebble"))
        .collect();
    assert_eq!(by_pebble.len(), 3, "{json}");
    assert_eq!(host_entry(&json, "www.web.test")["certificate"], "acme-www.web.test.pem", "{json}");
    // No challenge file is left behind.
    assert!(!dir_has_entries(&http01), "{:?}", list_tree(&http01));
    let alpn_dir = slip.home.join("certs/.challenges/tls-alpn-01");
    assert!(!dir_has_entries(&alpn_dir), "{:?}", list_tree(&alpn_dir));

    // The failing host: its status, reason and next attempt, one minute after the failure.
    let failing = wait_until(Duration::from_secs(60), || {
        host_entry(&slip.json(&["certs", "web", "--json"]), "bad.web.test")["acme"]["status"] == "failing"
    });
    let json = slip.json(&["certs", "web", "--json"]);
    assert!(failing, "{json}\n{}", tail_file(&slip.app_log_path("web"), 30));
    let bad = &host_entry(&json, "bad.web.test")["acme"];
    assert_eq!(bad["failures"], 1, "{json}");
    assert!(bad["error"].as_str().unwrap_or("").contains("http-01"), "{json}");
    assert!(bad["error"].as_str().unwrap_or("").contains("tls-alpn-01"), "{json}");
    assert!(bad["next_attempt"].as_str().is_some(), "{json}");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(slip.home.join("certs/web/acme.json")).expect("state"))
            .expect("state json");
    let s = &state["hosts"]["bad.web.test"];
    assert_eq!(s["next_attempt"].as_i64().unwrap() - s["last_attempt"].as_i64().unwrap(), 60, "{state}");
    let table = slip.cmd_ok(&["certs", "web"]);
    assert!(table.contains("bad.web.test  failing: http-01:"), "{table}");

    // Renewal: a new certificate replaces the first one.
    let first = serial(&www).expect("serial");
    let renewed = wait_until(Duration::from_secs(90), || serial(&www).is_some_and(|s| s != first));
    eprintln!("renewed {:?} after certs:auto:enable", enabled.elapsed());
    assert!(renewed, "not renewed:\n{}", tail_file(&slip.app_log_path("web"), 30));

    // A renewal that fails keeps the certificate and shows the failure.
    challtest(pebble.challtest, "/set-servfail", r#"{"host":"www.web.test"}"#);
    let mut json = Value::Null;
    let failing = wait_until(Duration::from_secs(60), || {
        json = slip.json(&["certs", "web", "--json"]);
        host_entry(&json, "www.web.test")["acme"]["status"] == "failing"
    });
    assert!(failing, "{json}\n{}", tail_file(&slip.app_log_path("web"), 30));
    assert_eq!(host_entry(&json, "www.web.test")["certificate"], "acme-www.web.test.pem", "{json}");
    assert!(www.is_file());
    let table = slip.cmd_ok(&["certs", "web"]);
    assert!(table.contains("=== web Renewals failing\nwww.web.test  failing: http-01:"), "{table}");

    // A removed domain's certificate goes.
    slip.cmd_ok(&["domains:remove", "web", "alpn.web.test"]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            !alpn.exists()
                && std::fs::read_to_string(slip.app_log_path("web"))
                    .is_ok_and(|l| l.contains("removed acme-alpn.web.test.pem"))
        }),
        "{}",
        tail_file(&slip.app_log_path("web"), 30)
    );

    let log = std::fs::read_to_string(slip.app_log_path("web")).expect("app log");
    for line in [
        "slipway[router]: ACME: certificate for www.web.test ordered from https://127.0.0.1:",
        "slipway[router]: ACME: certificate for www.web.test issued, valid until",
        "slipway[router]: ACME: certificate for www.web.test renewed, valid until",
        "slipway[router]: ACME: certificate for bad.web.test failed: http-01:",
        "slipway[router]: ACME: certificate for alpn.web.test issued, valid until",
        "slipway[router]: ACME: removed acme-alpn.web.test.pem: its host is no longer one of the app's",
    ] {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
    // The failing host is not retried during its backoff (1 minute after the first failure).
    let failures: Vec<i64> = log
        .lines()
        .filter(|l| l.contains("bad.web.test failed"))
        .filter_map(|l| l.split(' ').next())
        .filter_map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .map(|t| t.unix_timestamp())
        .collect();
    assert!(!failures.is_empty(), "{log}");
    assert!(failures.windows(2).all(|w| w[1] - w[0] >= 60), "{failures:?}\n{log}");
}
