//! The HTTPS listener's connections: the TLS handshake (rustls), then HTTP/2 ([`super::h2`])
//! for a client that negotiated `h2` by ALPN, and the router's own HTTP/1.1 proxy
//! ([`super::proxy`], with the same strictness, limits and logging as on the plain port) for the
//! others.
//!
//! The handshake:
//! - It has [`HANDSHAKE_TIMEOUT`] from the connection's accept to the end of the handshake.
//! - The ClientHello is read first. A client offering the single ALPN protocol `acme-tls/1`
//!   is an ACME server validating a TLS-ALPN-01 challenge (RFC 8737): it gets the challenge
//!   certificate `certs/.challenges/tls-alpn-01/<host>.pem` with `acme-tls/1` negotiated, and the
//!   connection is closed once the handshake is done.
//! - Otherwise the SNI name picks the certificate ([`SniResolver`], [`super::certstore`]). A
//!   ClientHello without SNI, or for a name no app has a certificate for, is answered with the
//!   fatal alert `unrecognized_name` and the connection is closed: the router has no default
//!   certificate, so it never shows one app's names to a client asking for another.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::certstore::CertStore;
use super::headers::Scheme;
use super::proxy::{self, Listener};
use super::{Inner, Live};

/// How long a client has for its TLS handshake, from the accept on.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
const ACME_TLS: &[u8] = b"acme-tls/1";

/// A fatal `unrecognized_name` alert (RFC 6066 §3), as a plaintext TLS record: content type
/// alert (21), legacy version TLS 1.2, length 2, level fatal (2), description 112.
const UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

/// Chooses a certificate by SNI: the app the route table sends the name to, and that app's
/// certificate for it (see [`super::certstore`]).
pub struct SniResolver {
    live: Arc<RwLock<Arc<Live>>>,
    certs: Arc<CertStore>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl SniResolver {
    /// The certificate for the SNI name `name`, if any.
    fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let host = super::normalize_host(name)?;
        let app = {
            let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
            live.hosts.get(&host)?.name.clone()
        };
        self.certs.certificate(&app, &host)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name()?)
    }
}

/// The router's TLS set-up: certificates by SNI, ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3.
pub(super) fn server_config(live: Arc<RwLock<Arc<Live>>>, certs: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { live, certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// How a handshake ended.
enum Handshake {
    /// Serve HTTP on it.
    Http(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A TLS-ALPN-01 validation, or a refused or failed handshake: nothing more to do.
    Done,
}

/// Serves one HTTPS client connection: handshake, then HTTP/2 or HTTP/1.1.
pub(super) async fn serve_connection(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr, port: u16) {
    let handshake = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&inner, stream, peer)).await {
        Ok(handshake) => handshake,
        Err(_) => {
            tracing::debug!(%peer, "router: TLS handshake timed out");
            return;
        }
    };
    let Handshake::Http(tls) = handshake else { return };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        super::h2::serve_connection(inner, *tls, peer, port).await;
    } else {
        proxy::serve_connection(inner, *tls, peer, Listener { port, scheme: Scheme::Https }).await;
    }
}

async fn handshake(inner: &Inner, stream: TcpStream, peer: SocketAddr) -> Handshake {
    let mut start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await {
        Ok(start) => start,
        Err(err) => {
            tracing::debug!(%peer, %err, "router: not a TLS ClientHello");
            return Handshake::Done;
        }
    };
    let hello = start.client_hello();
    let name = hello.server_name().map(str::to_ascii_lowercase);
    let acme = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.next() == Some(ACME_TLS) && protocols.next().is_none());
    if acme {
        let Some(config) = name.as_deref().and_then(|name| challenge_config(inner, name)) else {
            tracing::info!(%peer, name = name.as_deref().unwrap_or(""), "router: TLS-ALPN-01 validation for a name with no challenge pending");
            refuse(&mut start.io).await;
            return Handshake::Done;
        };
        match start.into_stream(config).await {
            Ok(mut tls) => {
                tracing::info!(%peer, name = name.as_deref().unwrap_or(""), "router: answered a TLS-ALPN-01 validation");
                if let Err(err) = tls.shutdown().await {
                    tracing::debug!(%peer, %err, "router: closing a TLS-ALPN-01 connection failed");
                }
            }
            Err(err) => tracing::info!(%peer, %err, "router: a TLS-ALPN-01 handshake failed"),
        }
        return Handshake::Done;
    }
    let resolver = SniResolver { live: inner.live.clone(), certs: inner.certs.clone() };
    if name.as_deref().and_then(|name| resolver.lookup(name)).is_none() {
        tracing::debug!(%peer, name = name.as_deref().unwrap_or(""), "router: no certificate for this TLS name");
        refuse(&mut start.io).await;
        return Handshake::Done;
    }
    match start.into_stream(inner.tls.clone()).await {
        Ok(tls) => Handshake::Http(Box::new(tls)),
        Err(err) => {
            tracing::debug!(%peer, %err, "router: TLS handshake failed");
            Handshake::Done
        }
    }
}

/// Ends a handshake with the alert `unrecognized_name`.
async fn refuse(io: &mut TcpStream) {
    // The client may be gone already; then there is nobody to tell.
    if io.write_all(&UNRECOGNIZED_NAME).await.is_ok() && io.shutdown().await.is_err() {
        tracing::debug!("router: closing a refused TLS connection failed");
    }
}

/// A one-off TLS set-up presenting the TLS-ALPN-01 challenge certificate for `name`, if one is
/// pending (read from disk: validations are rare).
fn challenge_config(inner: &Inner, name: &str) -> Option<Arc<ServerConfig>> {
    let home = inner.certs.home()?;
    let host = super::normalize_host(name)?;
    let dir = crate::certs::tls_alpn01_dir(home);
    let pem = crate::fsutil::read_beneath(&dir, std::path::Path::new(&format!("{host}.pem"))).ok()?;
    let file = dir.join(format!("{host}.pem"));
    let loaded = match crate::certs::parse("", crate::certs::Source::Acme, &file, pem.as_bytes()) {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::warn!(file = %file.display(), %err, "router: cannot use a TLS-ALPN-01 challenge certificate");
            return None;
        }
    };
    // Not `with_single_cert`: it checks the certificate with webpki, which refuses the critical
    // acmeIdentifier extension every TLS-ALPN-01 certificate carries (RFC 8737 §3).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = provider
        .key_provider
        .load_private_key(loaded.key)
        .map_err(|err| tracing::warn!(file = %file.display(), %err, "router: cannot use a TLS-ALPN-01 challenge key"))
        .ok()?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(loaded.chain, key));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Challenge(certified)));
    config.alpn_protocols = vec![ACME_TLS.to_vec()];
    Some(Arc::new(config))
}

/// Presents one TLS-ALPN-01 challenge certificate, whatever the ClientHello says.
#[derive(Debug)]
struct Challenge(Arc<rustls::sign::CertifiedKey>);

impl ResolvesServerCert for Challenge {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}
