//! The router's reading of a client's byte stream, without sockets, for the differential tests
//! (`tests/router_differential.rs`, `fuzz/run.sh`) that compare it with hyper's. Not part of the
//! API: it only strings [`super::http1`] together the way [`super::proxy`] does on a connection
//! (a head, then its body by `Content-Length` or followed chunk by chunk, then the next head),
//! and builds what the dyno would get: the rewritten head and the body re-chunked without
//! extensions or trailers, as `proxy` writes it (here in one chunk; `proxy` writes one per
//! read, which a dyno decodes to the same bytes).

use std::net::{IpAddr, Ipv4Addr};

pub use super::http1::HeadError;
use super::http1::{self, BodyKind, Chunked};

/// The peer the bytes come from: a remote client (TEST-NET-1), so no forwarding header of its
/// own is trusted.
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const LISTEN_PORT: u16 = 80;

/// One request the router accepted and read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as the client sent it.
    pub target: String,
    /// The request's head as the client sent it.
    pub raw_head: Vec<u8>,
    /// The origin-form target the dyno gets.
    pub path: String,
    /// The host the router routes by (an absolute-form target's authority, else `Host`).
    pub host: Option<String>,
    pub http10: bool,
    /// The body's data, de-chunked.
    pub body: Vec<u8>,
    /// Everything the dyno gets for this request: the rewritten head, then the body (as sent
    /// for `Content-Length`, re-chunked for `chunked`).
    pub upstream: Vec<u8>,
}

/// Why the router stopped reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The input ended between two requests.
    Clean,
    /// The input ended inside a head (the router closes without an answer).
    TruncatedHead,
    /// The input ended inside the body of the request whose head starts at `head_at` (`H27`,
    /// or the dyno's timeout).
    TruncatedBody { head_at: usize },
    /// The last request ends the connection (`Connection: close`, HTTP/1.0) or turns it into a
    /// tunnel (`Upgrade`): what follows is not read as requests.
    Closed,
    /// A head the router refuses (431, 400 or 501).
    Head(HeadError),
    /// A chunked body with broken framing (400): its request's head starts at `head_at` in the
    /// input, its body at `body_at`, and the byte at `at` broke it.
    BadChunk { head_at: usize, body_at: usize, at: usize },
}

/// What the router reads from one connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub requests: Vec<Request>,
    pub end: End,
}

/// Reads `input` as the router reads a client connection that sent exactly these bytes and
/// then closed its side.
pub fn read_stream(input: &[u8]) -> Reading {
    let mut requests = Vec::new();
    let mut at = 0;
    loop {
        if at == input.len() {
            return Reading { requests, end: End::Clean };
        }
        let head =
            match http1::parse_request_via(&input[at..], PEER, LISTEN_PORT, super::headers::Scheme::Http) {
                Ok(Some(head)) => head,
                // Only empty lines left (httparse skips them before a request line): the router
                // closes without an answer, as at a clean end.
                Ok(None) if input[at..].iter().all(|b| matches!(b, b'\r' | b'\n')) => {
                    return Reading { requests, end: End::Clean }
                }
                Ok(None) => return Reading { requests, end: End::TruncatedHead },
                Err(e) => return Reading { requests, end: End::Head(e) },
            };
        let target = raw_target(&input[at..at + head.len]);
        let head_at = at;
        at += head.len;
        let body_at = at;
        let mut upstream = head.upstream.clone();
        let mut body = Vec::new();
        match head.body {
            BodyKind::Empty | BodyKind::UntilClose => {}
            BodyKind::Length(n) => {
                let want = usize::try_from(n).unwrap_or(usize::MAX);
                if input.len() - at < want {
                    return Reading { requests, end: End::TruncatedBody { head_at } };
                }
                body.extend_from_slice(&input[at..at + want]);
                upstream.extend_from_slice(&body);
                at += want;
            }
            BodyKind::Chunked => {
                // One byte at a time: the state machine must not depend on how reads split the
                // body, and the byte that breaks it is known exactly.
                let mut chunks = Chunked::default();
                while !chunks.done() {
                    let Some(byte) = input.get(at) else {
                        return Reading { requests, end: End::TruncatedBody { head_at } };
                    };
                    let fed = chunks.feed(std::slice::from_ref(byte), |piece| body.extend_from_slice(piece));
                    if fed.is_err() {
                        return Reading { requests, end: End::BadChunk { head_at, body_at, at } };
                    }
                    at += 1;
                }
                if !body.is_empty() {
                    upstream.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                    upstream.extend_from_slice(&body);
                    upstream.extend_from_slice(b"\r\n");
                }
                upstream.extend_from_slice(b"0\r\n\r\n");
            }
        }
        let ends = !head.keep_alive || head.upgrade;
        requests.push(Request {
            method: head.method,
            target,
            raw_head: input[head_at..body_at].to_vec(),
            path: head.path,
            host: head.host,
            http10: head.http10,
            body,
            upstream,
        });
        if ends {
            return Reading { requests, end: End::Closed };
        }
    }
}

/// The second word of a head's request line (httparse takes exactly one space between words).
fn raw_target(head: &[u8]) -> String {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line.split(|&b| b == b' ').nth(1).unwrap_or_default()).into_owned()
}
