//! The header rules between a client and a dyno: which headers are hop-by-hop (never passed
//! on; the router frames each side itself), and the `X-Forwarded-For/Proto/Port` and
//! `X-Request-Id` headers it sets. [`super::http1`] applies them while it rewrites a head.

use std::net::IpAddr;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_PORT: &str = "x-forwarded-port";
pub const X_REQUEST_ID: &str = "x-request-id";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1). `Transfer-Encoding`
/// and `Upgrade` are put back by the rewriting when the body is passed through chunked or a
/// protocol switch is asked for.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A client-sent request id is kept when it is 20 to 200 characters of `[A-Za-z0-9+/=_-]`
/// (Heroku's rule); anything else is replaced by a fresh id.
pub fn valid_request_id(id: &[u8]) -> bool {
    (20..=200).contains(&id.len())
        && id.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-'))
}

/// A random UUID-shaped id (version 4 layout). The bits come from a per-thread PRNG
/// (xoshiro256++) seeded once from the kernel's random source, so a request costs no syscall.
pub fn new_request_id() -> String {
    let (a, b) = RNG.with(|rng| {
        let mut rng = rng.borrow_mut();
        (rng.next(), rng.next())
    });
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(byte >> 4)];
        out[o + 1] = HEX[usize::from(byte & 0x0f)];
        o += 2;
    }
    out.iter().map(|&c| char::from(c)).collect()
}

thread_local! {
    static RNG: std::cell::RefCell<Xoshiro> = std::cell::RefCell::new(Xoshiro::from_os());
}

/// xoshiro256++ (Blackman & Vigna): fast, 256 bits of state, good statistical quality. Request
/// ids need to be unique and unguessable enough for correlating logs, not cryptographic.
struct Xoshiro([u64; 4]);

impl Xoshiro {
    fn from_os() -> Xoshiro {
        let mut seed = [0u8; 32];
        fill_random(&mut seed);
        let mut s = [0u64; 4];
        for (i, chunk) in seed.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            s[i] = u64::from_le_bytes(b);
        }
        if s == [0; 4] {
            s[0] = 0x9e37_79b9_7f4a_7c15;
        }
        Xoshiro(s)
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

fn fill_random(buf: &mut [u8]) {
    // getrandom(2) does not block once the kernel's pool is initialised (long before a daemon
    // serves requests). Should it fail, ids stay unique enough from the clock and a counter.
    // SAFETY: the pointer and length describe `buf`, which is valid for writes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mix = nanos.as_nanos() as u64 ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (mix.rotate_left(i as u32 * 8) & 0xff) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
}

/// The request id to use: the client's (the `X-Request-Id` value it sent) when valid, else a
/// new one.
pub fn request_id(sent: Option<&[u8]>) -> String {
    match sent {
        Some(v) if valid_request_id(v) => String::from_utf8_lossy(v).into_owned(),
        _ => new_request_id(),
    }
}

/// True for a header that describes one connection, not the message: never passed on.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// True for a header the router sets itself on the way to a dyno (see [`Forwarded`]).
pub fn is_forwarding(name: &str) -> bool {
    [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_PORT, X_REQUEST_ID]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// True for a header by which a proxy tells where a request came from (`Forwarded`,
/// `X-Forwarded-Host`, `X-Real-IP`): passed on only from a [`trusted_proxy`], dropped from
/// anyone else, who could claim any host or address with it.
pub fn is_proxy_claim(name: &str) -> bool {
    ["forwarded", "x-forwarded-host", "x-real-ip"].iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A peer on loopback: the TLS-terminating proxy in front (templates/nginx-slipway.conf). Its
/// `X-Forwarded-Proto`/`-Port` and [`is_proxy_claim`] headers are kept; nobody else's are.
pub fn trusted_proxy(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// The comma-separated tokens of every `Connection` header, trimmed (`close`, `upgrade`,
/// `keep-alive`, or names of further hop-by-hop headers).
#[derive(Debug, Default)]
pub struct ConnectionTokens(Vec<String>);

impl ConnectionTokens {
    pub fn add(&mut self, value: &[u8]) {
        let value = String::from_utf8_lossy(value);
        self.0.extend(value.split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()));
    }

    pub fn has(&self, token: &str) -> bool {
        self.0.iter().any(|t| t == token)
    }

    /// True when `name` was declared hop-by-hop by the sender. The headers that frame or route
    /// the message cannot be, whatever the sender says.
    pub fn names(&self, name: &str) -> bool {
        !["host", "content-length"].iter().any(|h| h.eq_ignore_ascii_case(name))
            && self.0.iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// The forwarding headers the router sets on a request for a dyno:
/// `X-Forwarded-For` (the client's address appended to what earlier proxies sent),
/// `X-Forwarded-Proto: http`, `X-Forwarded-Port` (the router's own port) and `X-Request-Id`.
///
/// One exception, for a TLS-terminating proxy on the same machine (templates/nginx-slipway.conf):
/// a request from a loopback address keeps the `X-Forwarded-Proto` (`http` or `https`) and
/// `X-Forwarded-Port` it arrived with, so apps behind it see `https`. Requests from anywhere
/// else cannot choose them.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// `X-Forwarded-For` values the client sent, in order.
    pub earlier_for: Vec<String>,
    pub proto: Option<Vec<u8>>,
    pub port: Option<Vec<u8>>,
    pub request_id: Option<Vec<u8>>,
}

impl Forwarded {
    /// Notes `name: value` if it is one of the forwarding headers.
    pub fn note(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case(X_FORWARDED_FOR) {
            self.earlier_for.push(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case(X_FORWARDED_PROTO) {
            self.proto.get_or_insert_with(|| value.to_vec());
        } else if name.eq_ignore_ascii_case(X_FORWARDED_PORT) {
            self.port.get_or_insert_with(|| value.to_vec());
        } else if name.eq_ignore_ascii_case(X_REQUEST_ID) {
            self.request_id.get_or_insert_with(|| value.to_vec());
        }
    }

    /// Appends the four headers (`Name: value\r\n` each) to `out`. Returns the
    /// `X-Forwarded-For` value (the router log shows it as `fwd`) and the request id.
    ///
    /// Over HTTPS (`scheme`), the router is the TLS end itself: `X-Forwarded-Proto: https` and
    /// its own port, whatever the client claims.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        client: IpAddr,
        listen_port: u16,
        scheme: Scheme,
    ) -> (String, String) {
        let values = self.values(client, listen_port, scheme);
        header(out, "X-Forwarded-For", values.fwd.as_bytes());
        header(out, "X-Forwarded-Proto", &values.proto);
        header(out, "X-Forwarded-Port", &values.port);
        header(out, "X-Request-Id", values.request_id.as_bytes());
        (values.fwd, values.request_id)
    }

    /// The values of the four headers (see [`write`](Self::write)).
    pub fn values(&self, client: IpAddr, listen_port: u16, scheme: Scheme) -> ForwardedValues {
        let client = client.to_canonical();
        let earlier = self.earlier_for.join(", ");
        let earlier = earlier.trim().trim_matches(',').trim();
        let fwd = if earlier.is_empty() { client.to_string() } else { format!("{earlier}, {client}") };
        let local_proxy = trusted_proxy(client) && scheme == Scheme::Http;
        let proto = self.proto.as_deref().filter(|p| local_proxy && (*p == b"http" || *p == b"https"));
        let port = proto
            .and(self.port.as_deref())
            .filter(|p| std::str::from_utf8(p).ok().and_then(|p| p.parse::<u16>().ok()).is_some());
        ForwardedValues {
            fwd,
            proto: proto.unwrap_or(scheme.as_str().as_bytes()).to_vec(),
            port: port.map_or_else(|| listen_port.to_string().into_bytes(), <[u8]>::to_vec),
            request_id: request_id(self.request_id.as_deref()),
        }
    }
}

/// What [`Forwarded`] tells a dyno.
#[derive(Debug)]
pub struct ForwardedValues {
    /// `X-Forwarded-For`.
    pub fwd: String,
    /// `X-Forwarded-Proto`.
    pub proto: Vec<u8>,
    /// `X-Forwarded-Port`.
    pub port: Vec<u8>,
    /// `X-Request-Id`.
    pub request_id: String,
}

/// How the client reached the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Appends `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_follow_herokus_rule() {
        assert!(valid_request_id(b"abcdefghij0123456789"));
        assert!(valid_request_id(b"AZaz09+/=_-AZaz09+/=_-"));
        assert!(valid_request_id("a".repeat(200).as_bytes()));
        assert!(!valid_request_id(b"abcdefghij012345678"), "19 characters");
        assert!(!valid_request_id("a".repeat(201).as_bytes()));
        assert!(!valid_request_id(b"abcdefghij0123456789 "), "space");
        assert!(!valid_request_id(b"abcdefghij0123456789\""));
        assert!(!valid_request_id("abcdefghij0123456789é".as_bytes()));
        let id = new_request_id();
        assert_eq!(id.len(), 36, "{id}");
        assert!(valid_request_id(id.as_bytes()), "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "{id}");
        assert_ne!(new_request_id(), id);

        assert_eq!(request_id(Some(b"client-chosen-id-0123456789")), "client-chosen-id-0123456789");
        assert_ne!(request_id(Some(b"short")), "short");
        assert_eq!(request_id(None).len(), 36);
    }

    #[test]
    fn hop_by_hop_headers_and_connection_tokens() {
        for name in
            ["Connection", "keep-alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection"]
        {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["Host", "Content-Length", "Expect", "X-Forwarded-For", "Cookie"] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
        let mut tokens = ConnectionTokens::default();
        tokens.add(b"Keep-Alive, X-Secret");
        tokens.add(b" upgrade ,,");
        assert!(tokens.has("keep-alive") && tokens.has("upgrade") && !tokens.has("close"));
        assert!(tokens.names("x-secret") && tokens.names("X-SECRET"));
        tokens.add(b"Host, Content-Length");
        assert!(!tokens.names("host") && !tokens.names("content-length"), "never hop-by-hop");
        assert!(is_forwarding("X-Request-Id") && !is_forwarding("X-Requested-With"));
    }
}
