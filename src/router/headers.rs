//! Header rewriting between the client and a dyno: hop-by-hop headers are dropped (hyper frames
//! each side itself), `X-Forwarded-For/Proto/Port` and `X-Request-Id` are set, and a websocket
//! (or any `Upgrade`) handshake keeps its `Connection: upgrade` / `Upgrade` pair.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `Expect`,
/// which the router has already answered (hyper sends `100 Continue` when the body is read).
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

/// The request id to use: the client's when valid, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v.as_bytes()) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        _ => new_request_id(),
    }
}

/// True when the request asks to switch protocols (`Connection: upgrade` + `Upgrade: …`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && has_token(headers, CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Drops hop-by-hop headers, including those the `Connection` header names. With `upgrade`,
/// `Connection: upgrade` and the `Upgrade` header survive, so the handshake reaches the other side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_to = if upgrade { headers.get(UPGRADE).cloned() } else { None };
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(hyper::header::EXPECT);
    if let Some(upgrade_to) = upgrade_to {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, upgrade_to);
    }
}

/// Sets `X-Forwarded-For` (the client's address appended to what earlier proxies sent),
/// `X-Forwarded-Proto: http`, `X-Forwarded-Port` (the router's own port) and `X-Request-Id`.
/// Returns the `X-Forwarded-For` value, which the router log shows as `fwd`.
///
/// One exception, for a TLS-terminating proxy on the same machine (templates/nginx-slipway.conf):
/// a request from a loopback address keeps the `X-Forwarded-Proto` (`http` or `https`) and
/// `X-Forwarded-Port` it arrived with, so apps behind it see `https`. Requests from anywhere
/// else cannot choose them.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, listen_port: u16, request_id: &str) -> String {
    let client = client.to_canonical();
    let earlier: Vec<&str> =
        headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    let earlier = earlier.join(", ");
    let earlier = earlier.trim().trim_matches(',').trim();
    let fwd = if earlier.is_empty() { client.to_string() } else { format!("{earlier}, {client}") };
    match HeaderValue::from_str(&fwd) {
        Ok(v) => {
            headers.insert(X_FORWARDED_FOR, v);
        }
        Err(_) => {
            headers.remove(X_FORWARDED_FOR);
        }
    }
    let local_proxy = client.is_loopback();
    let proto = headers.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes);
    let proto_kept = local_proxy && matches!(proto, Some(b"http" | b"https"));
    if !proto_kept {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    let port = headers.get(&X_FORWARDED_PORT).and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
    if !(proto_kept && port.is_some()) {
        headers.insert(X_FORWARDED_PORT, HeaderValue::from(listen_port));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
    fwd
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

        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("client-chosen-id-0123456789"));
        assert_eq!(request_id(&h), "client-chosen-id-0123456789");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("short"));
        assert_ne!(request_id(&h), "short");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(set_forwarded(&mut h, ip, 8080, "rid"), "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["x-request-id"], "rid");

        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("443"));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(set_forwarded(&mut h, mapped, 80, "rid"), "203.0.113.7, 10.0.0.1, 192.0.2.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http", "a remote client cannot claim https");
        assert_eq!(h["x-forwarded-port"], "80");

        // A TLS-terminating proxy on this machine passes its scheme and port on.
        for local in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let mut h = HeaderMap::new();
            h.insert(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.4"));
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
            h.insert(X_FORWARDED_PORT, HeaderValue::from_static("443"));
            let ip: IpAddr = local.parse().unwrap();
            let fwd = set_forwarded(&mut h, ip, 8080, "rid");
            assert!(fwd.starts_with("198.51.100.4, "), "{fwd}");
            assert_eq!(
                (h["x-forwarded-proto"].as_bytes(), h["x-forwarded-port"].as_bytes()),
                (&b"https"[..], &b"443"[..]),
                "{local}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("gopher"));
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("443"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), 8080, "rid");
        assert_eq!(
            (h["x-forwarded-proto"].as_bytes(), h["x-forwarded-port"].as_bytes()),
            (&b"http"[..], &b"8080"[..])
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_but_an_upgrade_survives() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h), "Upgrade without Connection: upgrade");
    }
}
