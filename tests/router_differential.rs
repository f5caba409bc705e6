//! Differential fuzzing of the router's HTTP/1.1 request parsing and body re-framing against
//! hyper's (hyper 1, `server::conn::http1`, a maintained and hardened parser), with proptest
//! (cargo-fuzz needs a nightly toolchain).
//!
//! Each case is a byte stream a client could send on one connection: generated requests
//! (methods, origin-, absolute-, authority- and asterisk-form targets, Host variants and
//! duplicates, `Content-Length` / `Transfer-Encoding` combinations incl. `gzip, chunked`,
//! obs-fold, bare LF, chunk sizes, extensions and trailers, well-formed and not), pipelined
//! one to four at a time, and byte-level mutations of such streams. The same bytes go
//! 1. to the router's reading ([`slipway::router::differential::read_stream`]: the router's
//!    `parse_request` and chunked follower, strung together as its proxy does), and
//! 2. to a hyper HTTP/1.1 server connection over an in-memory `tokio::io::duplex`, whose service
//!    collects the method, target, Host and whole body of each request.
//!
//! They must agree on where the stream is accepted and where it is refused, and for every
//! request both accept on the method, the target, the host and the decoded body (so on the
//! number of requests when pipelined). Where the router is deliberately stricter than hyper the
//! difference is allowed only by an entry of [`ALLOWED`], each with its RFC reason; any other
//! difference is a finding. A second oracle checks the re-framing: what the router would send
//! the dyno for each request it accepts, read by hyper as the dyno would, is exactly one request
//! with the same method, path, a single Host and the same body.
//!
//! `cargo test --test router_differential` runs 256 cases; `fuzz/run.sh` runs the ignored
//! `fuzz_for_a_while` for a time budget and prints executions and findings.

use std::convert::Infallible;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use slipway::router::differential::{self, End, HeadError, Reading};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ----- hyper's reading --------------------------------------------------------------------------

/// How hyper's body stream for a request ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyFail {
    /// The input ended inside the body.
    Eof,
    /// The framing is invalid (hyper's message).
    Bad(String),
}

#[derive(Debug, Clone)]
struct HyperRequest {
    method: String,
    version: Version,
    uri: hyper::Uri,
    headers: Vec<(String, Vec<u8>)>,
    body: Result<Vec<u8>, BodyFail>,
}

impl HyperRequest {
    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice()).collect()
    }

    /// The host hyper's request is for: an absolute target's authority (without userinfo),
    /// else the `Host` header.
    fn host(&self) -> Option<String> {
        match self.uri.authority() {
            Some(a) => Some(a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h).to_string()),
            None => self.header_values("host").first().map(|v| String::from_utf8_lossy(v).into_owned()),
        }
    }

    /// The origin-form target (`/path?query`) hyper's URI stands for.
    fn path(&self) -> String {
        if self.uri.scheme().is_none() {
            return self
                .uri
                .path_and_query()
                .map_or_else(|| self.uri.to_string(), |p| p.as_str().to_string());
        }
        let pq = self.uri.path_and_query().map_or("", |p| p.as_str());
        if pq.starts_with('/') {
            pq.to_string()
        } else {
            format!("/{pq}")
        }
    }
}

/// How hyper's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HyperEnd {
    /// The input ended between requests, or a request ended the connection.
    Clean,
    /// The input ended inside a head or a body.
    Truncated,
    /// A head or body hyper refuses (its message).
    Rejected(String),
}

#[derive(Debug, Clone)]
struct HyperReading {
    /// The requests whose head hyper took (the last one's body may have failed).
    requests: Vec<HyperRequest>,
    end: HyperEnd,
}

fn body_fail(e: &hyper::Error) -> BodyFail {
    if e.is_incomplete_message() {
        return BodyFail::Eof;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::UnexpectedEof => BodyFail::Eof,
                _ => BodyFail::Bad(io.to_string()),
            };
        }
        source = s.source();
    }
    BodyFail::Bad(e.to_string())
}

/// Feeds `input` to a hyper HTTP/1.1 server connection, then closes the client's side.
async fn hyper_read(input: &[u8]) -> HyperReading {
    let (mut client, server) = tokio::io::duplex(input.len() + 64 * 1024);
    let seen: Arc<Mutex<Vec<HyperRequest>>> = Arc::default();
    let record = seen.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => Ok(b.to_bytes().to_vec()),
                Err(e) => Err(body_fail(&e)),
            };
            let headers =
                parts.headers.iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect();
            record.lock().expect("record").push(HyperRequest {
                method: parts.method.as_str().to_string(),
                version: parts.version,
                uri: parts.uri,
                headers,
                body,
            });
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    client.write_all(input).await.expect("the duplex holds the whole input");
    client.shutdown().await.expect("close the client's side");
    let conn = http1::Builder::new().half_close(true).serve_connection(TokioIo::new(server), service);
    let drain = async {
        let mut sink = Vec::new();
        client.read_to_end(&mut sink).await
    };
    let (served, _) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(conn, drain) })
        .await
        .expect("hyper reads an in-memory stream within 10 s");
    let requests = std::mem::take(&mut *seen.lock().expect("seen"));
    let end = match (requests.iter().find_map(|r| r.body.as_ref().err()), served) {
        (Some(BodyFail::Eof), _) => HyperEnd::Truncated,
        (Some(BodyFail::Bad(why)), _) => HyperEnd::Rejected(format!("body: {why}")),
        (None, Ok(())) => HyperEnd::Clean,
        (None, Err(e)) if e.is_incomplete_message() => HyperEnd::Truncated,
        (None, Err(e)) => HyperEnd::Rejected(e.to_string()),
    };
    HyperReading { requests, end }
}

// ----- the oracle -------------------------------------------------------------------------------

/// A difference the router is allowed to have with hyper: it refuses what hyper takes, for a
/// reason an RFC gives it.
struct Allowed {
    name: &'static str,
    rfc: &'static str,
}

const ALLOWED: &[Allowed] = &[
    Allowed {
        name: "transfer coding other than chunked alone (501)",
        rfc: "RFC 9112 §6.1: a server that receives a transfer coding it does not understand \
              SHOULD answer 501; the router decodes only `chunked` (hyper passes `gzip, chunked` \
              bodies on still gzip-coded, and takes the last of several TE headers), as nginx",
    },
    Allowed {
        name: "two Host headers (400)",
        rfc: "RFC 9112 §3.2: a server MUST answer 400 to a request with more than one Host field line",
    },
    Allowed {
        name: "HTTP/1.1 without Host (400)",
        rfc: "RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host",
    },
    Allowed {
        name: "both Content-Length and Transfer-Encoding (400)",
        rfc: "RFC 9112 §6.1: a server MAY reject a request with both (the smuggling vector); hyper \
              lets Transfer-Encoding win and closes after",
    },
    Allowed {
        name: "target other than origin-form, http(s) absolute-form or *, or CONNECT (400)",
        rfc: "RFC 9112 §3.2.3, RFC 9110 §9.3.6: CONNECT (and its authority-form) is for tunnels \
              through a forward proxy; the router is a gateway to origin servers, routes http(s) \
              targets only, and would not follow the tunnel a dyno's 2xx to CONNECT opens",
    },
    Allowed {
        name: "absolute-form target with an empty path before a query (400)",
        rfc: "RFC 9112 §3.2.1 has the client send `/` for an empty path; the router does not \
              guess one for `http://host?query`",
    },
    Allowed {
        name: "Content-Length of more than 18 digits (400)",
        rfc: "RFC 9110 §8.6: a recipient MUST anticipate large decimal numerals and prevent \
              overflow; the router bounds the numeral (leading zeros included) to 18 digits",
    },
    Allowed {
        name: "chunk extension, trailer field or chunk size outside the grammar (400)",
        rfc: "RFC 9112 §7.1.1 (chunk-ext = *( BWS \";\" BWS name [ BWS \"=\" BWS value ] )), \
              §7.1.2 (trailer fields are field lines, §5) and §7.1 (chunk sizes bounded against \
              overflow: at most 15 hex digits); hyper skips extensions and takes any line as a \
              trailer",
    },
    Allowed {
        name: "absolute-form authority outside RFC 3986 (400)",
        rfc: "RFC 3986 §3.2: a userinfo without `@`, host = IP-literal / reg-name, then \
              optionally \":\" and a port of digits; hyper takes `u@v@host`, `host:name` \
              (dropping the port), `[::1]80` and `[:,1]`",
    },
    Allowed {
        name: "router takes a Content-Length list of one repeated value",
        rfc: "RFC 9110 §8.6: a recipient MAY take `5, 5` as the single value 5 (the router sends \
              the dyno one plain value); hyper parses each Content-Length line as one number",
    },
    Allowed {
        name: "over 100 header lines once the router's own are added (431)",
        rfc: "RFC 6585 §5 (431 for header fields too large): the router adds X-Forwarded-For, \
              -Proto, -Port and X-Request-Id, and the dyno's parser (hyper's, gunicorn's \
              limit_request_fields) takes 100 header lines at most",
    },
    Allowed {
        name: "router stops at an HTTP/1.0 request or an upgrade (connection closes or tunnels)",
        rfc: "RFC 9112 §9.3: persistence for HTTP/1.0 is optional; after an Upgrade request the \
              bytes belong to the dyno's answer (101 or not), so the router reads no further",
    },
];

fn allowed(name: &str) -> &'static Allowed {
    ALLOWED.iter().find(|a| a.name == name).expect("an allowlist entry by that name")
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Both read the stream alike.
    Agree,
    /// They differ as an [`ALLOWED`] entry (by name) says they may.
    Allowed(&'static str),
    /// A difference nobody allowed: a kind (for counting) and the details.
    Finding(String, String),
}

fn finding(kind: &str, details: String) -> Verdict {
    Verdict::Finding(kind.to_string(), details)
}

/// Compares the router's reading of `input` with hyper's.
fn compare(input: &[u8], router: &Reading, hyper: &HyperReading) -> Verdict {
    let whole = hyper.requests.iter().take_while(|h| h.body.is_ok()).count();
    let n = router.requests.len().min(whole);
    for i in 0..n {
        let (r, h) = (&router.requests[i], &hyper.requests[i]);
        let body = h.body.as_deref().unwrap_or_default();
        let mismatch = if r.method != h.method {
            Some("method")
        } else if r.path != h.path() {
            Some("target")
        } else if r.host != h.host() {
            Some("host")
        } else if r.body != body {
            Some("body")
        } else {
            None
        };
        if let Some(what) = mismatch {
            return finding(
                &format!("{what} differs"),
                format!(
                    "request {i}: router {:?} {:?} (target {:?}) host {:?} body {:?}; hyper {:?} {:?} \
                     host {:?} body {:?}",
                    r.method,
                    r.path,
                    r.target,
                    r.host,
                    String::from_utf8_lossy(&r.body),
                    h.method,
                    h.uri.to_string(),
                    h.host(),
                    String::from_utf8_lossy(body),
                ),
            );
        }
    }
    let rn = router.requests.len();
    if rn > whole {
        // hyper refused, or waits for more of, a request the router read whole.
        let r = &router.requests[whole];
        if hyper.requests.len() == whole
            && hyper.end == HyperEnd::Rejected("invalid content-length parsed".into())
            && content_length_list(&r.raw_head)
        {
            return Verdict::Allowed(
                allowed("router takes a Content-Length list of one repeated value").name,
            );
        }
        let hyper_side = match hyper.requests.get(whole) {
            Some(h) => format!("takes the head, body {:?}", h.body.as_ref().err()),
            None => hyper_kind(&hyper.end).to_string(),
        };
        return finding(
            &format!("router accepts, hyper {}", hyper_kind(&hyper.end)),
            format!(
                "request {whole}: router read {:?} {:?}; hyper {hyper_side}: {:?}",
                r.method, r.target, hyper.end
            ),
        );
    }
    if rn == hyper.requests.len() {
        // Neither took the head of request `rn`: both refuse it, or both wait for more.
        return match (&router.end, &hyper.end) {
            (End::Clean | End::Closed, HyperEnd::Clean)
            | (End::TruncatedHead, HyperEnd::Truncated)
            | (End::Head(_), HyperEnd::Rejected(_)) => Verdict::Agree,
            // The router closed after a request hyper took whole: it never reads the rest.
            (End::Closed, _) => Verdict::Agree,
            (End::TruncatedBody { head_at }, HyperEnd::Rejected(why))
                if why == "invalid content-length parsed" && content_length_list(&input[*head_at..]) =>
            {
                Verdict::Allowed(allowed("router takes a Content-Length list of one repeated value").name)
            }
            (r, h) => finding(
                &format!("after {rn} requests: router {} / hyper {}", end_kind(r), hyper_kind(h)),
                format!("router {r:?}; hyper {h:?}"),
            ),
        };
    }
    // hyper took the head of request `rn`, which the router did not read whole.
    let h = &hyper.requests[rn];
    let why = match router.end {
        End::Closed => {
            let last = router.requests.last().expect("Closed follows a request");
            let upgrade = !hyper.requests[rn - 1].header_values("upgrade").is_empty();
            return if last.http10 || upgrade {
                Verdict::Allowed(
                    allowed(
                        "router stops at an HTTP/1.0 request or an upgrade (connection closes or tunnels)",
                    )
                    .name,
                )
            } else {
                finding(
                    "router closes, hyper reads on",
                    format!("after request {}: hyper read {h:?}", rn - 1),
                )
            };
        }
        // Both refuse request `rn`: the router by its head, hyper by its body.
        End::Head(_) | End::BadChunk { .. } if matches!(h.body, Err(BodyFail::Bad(_))) => {
            return Verdict::Agree
        }
        // Both wait for more of its body.
        End::TruncatedBody { .. } if h.body == Err(BodyFail::Eof) => return Verdict::Agree,
        End::Head(HeadError::NotImplemented) => {
            let te = h.header_values("transfer-encoding");
            (te.len() != 1 || !te[0].eq_ignore_ascii_case(b"chunked"))
                .then_some("transfer coding other than chunked alone (501)")
        }
        End::Head(HeadError::Invalid(why)) => match why {
            "more than one Host header" => {
                (h.header_values("host").len() > 1).then_some("two Host headers (400)")
            }
            "an HTTP/1.1 request without a Host header" => (h.version == Version::HTTP_11
                && h.header_values("host").is_empty())
            .then_some("HTTP/1.1 without Host (400)"),
            // (hyper drops the Content-Length once Transfer-Encoding wins)
            "both Content-Length and Transfer-Encoding" => (!h.header_values("transfer-encoding").is_empty())
                .then_some("both Content-Length and Transfer-Encoding (400)"),
            "a request target the router cannot route" | "a CONNECT request" => {
                let scheme = h.uri.scheme_str().map(str::to_ascii_lowercase);
                let routable = matches!(scheme.as_deref(), Some("http" | "https"))
                    || (scheme.is_none() && (h.uri.path().starts_with('/') || h.uri.path() == "*"));
                (!routable || h.method == "CONNECT")
                    .then_some("target other than origin-form, http(s) absolute-form or *, or CONNECT (400)")
            }
            "a request target with characters a URI cannot have" => h
                .uri
                .authority()
                .is_some_and(|a| !rfc3986_authority(a.as_str()))
                .then_some("absolute-form authority outside RFC 3986 (400)"),
            "an absolute target without a path" => (h.uri.scheme().is_some()
                && h.uri
                    .path_and_query()
                    .is_some_and(|p| p.as_str().starts_with('?') || p.path().is_empty()))
            .then_some("absolute-form target with an empty path before a query (400)"),
            "an invalid Content-Length" => {
                if h.header_values("transfer-encoding").is_empty() {
                    h.header_values("content-length")
                        .iter()
                        .any(|v| v.split(|&b| b == b',').any(|item| item.trim_ascii().len() > 18))
                        .then_some("Content-Length of more than 18 digits (400)")
                } else {
                    // Conflicting lengths hyper ignored because Transfer-Encoding came too.
                    Some("both Content-Length and Transfer-Encoding (400)")
                }
            }
            _ => None,
        },
        End::BadChunk { head_at, body_at, .. } => {
            // Allowed only when the router takes the same body once the extensions and
            // trailers are taken out and the sizes written without leading zeros: then it is
            // their grammar alone the two disagree on.
            let normal = strip_chunk_meta(&input[body_at..]).map(|body| {
                let mut again = input[head_at..body_at].to_vec();
                again.extend_from_slice(&body);
                differential::read_stream(&again)
            });
            let same = match (&normal, &h.body) {
                (Some(r), Ok(body)) => r.requests.first().map(|r| &r.body) == Some(body),
                (Some(r), Err(BodyFail::Eof)) => {
                    r.requests.is_empty() && matches!(r.end, End::TruncatedBody { .. })
                }
                _ => false,
            };
            same.then_some("chunk extension, trailer field or chunk size outside the grammar (400)")
        }
        End::Head(HeadError::TooLarge) => (h.headers.len() + 4 > 100)
            .then_some("over 100 header lines once the router's own are added (431)"),
        End::Clean | End::TruncatedHead | End::TruncatedBody { .. } => None,
    };
    match why {
        Some(name) => Verdict::Allowed(allowed(name).name),
        None => finding(
            &format!("router {}, hyper takes the head", end_kind(&router.end)),
            format!("request {rn}: router {:?}; hyper read {h:?}", router.end),
        ),
    }
}

/// `[userinfo@]host[:port]` as RFC 3986 §3.2 has it: no `@` in the userinfo (hyper takes the
/// last `@` as the end of it), then [`rfc3986_host_port`].
fn rfc3986_authority(authority: &str) -> bool {
    match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => !userinfo.contains('@') && rfc3986_host_port(host_port),
        None => rfc3986_host_port(authority),
    }
}

/// `host[:port]` as RFC 3986 §3.2.2 and §3.2.3 have it (a test-side check, written apart
/// from the router's): a bracketed literal or a reg-name/IPv4 without `:`, then optionally `:`
/// and digits.
fn rfc3986_host_port(host_port: &str) -> bool {
    let (host, rest) = match host_port.strip_prefix('[') {
        Some(literal) => match literal.find(']') {
            Some(end) => (&literal[..end], &literal[end + 1..]),
            None => return false,
        },
        None => match host_port.find(':') {
            Some(colon) => (&host_port[..colon], &host_port[colon..]),
            None => (host_port, ""),
        },
    };
    let port_ok =
        rest.is_empty() || rest.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    // An IPv6 literal is hex digits, `:` and (for an embedded IPv4 address) `.`.
    let literal_ok =
        !host_port.starts_with('[') || host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    !host.is_empty() && port_ok && literal_ok
}

/// A head with a `Content-Length` line that is a list (`5, 5`).
fn content_length_list(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).is_ok()
        && req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length") && h.value.contains(&b','))
}

fn end_kind(end: &End) -> String {
    match end {
        End::Clean => "ends clean".into(),
        End::TruncatedHead => "waits for more head".into(),
        End::TruncatedBody { .. } => "waits for more body".into(),
        End::Closed => "closes".into(),
        End::Head(HeadError::TooLarge) => "431".into(),
        End::Head(HeadError::NotImplemented) => "501".into(),
        End::Head(HeadError::Invalid(why)) => format!("400 ({why})"),
        End::BadChunk { .. } => "400 (bad chunk)".into(),
    }
}

fn hyper_kind(end: &HyperEnd) -> &'static str {
    match end {
        HyperEnd::Clean => "ends clean",
        HyperEnd::Truncated => "waits for more",
        HyperEnd::Rejected(_) => "rejects",
    }
}

/// A chunked body (and whatever follows it) with every chunk extension, whitespace after a
/// size, and trailer line taken out and the sizes' leading zeros dropped, read as leniently as
/// hyper reads them (a size line ends at its CR; after the last chunk, any line up to CRLF is
/// a trailer). The data and the CRLFs after it are copied as they are, for the router to judge.
/// `None` where hyper would refuse the framing too.
fn strip_chunk_meta(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let digits = body[i..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if i + digits == body.len() {
            return Some(out); // cut short: nothing more to judge
        }
        if digits == 0 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&body[i..i + digits]).ok()?, 16).ok()?;
        out.extend_from_slice(format!("{size:x}").as_bytes());
        i += digits;
        let Some(cr) = body[i..].iter().position(|&b| b == b'\r').map(|at| i + at) else {
            return (!body[i..].contains(&b'\n')).then_some(out);
        };
        if body[i..cr].contains(&b'\n') {
            return None;
        }
        match body.get(cr + 1) {
            None => return Some(out),
            Some(b'\n') => {}
            Some(_) => return None,
        }
        out.extend_from_slice(b"\r\n");
        i = cr + 2;
        if size == 0 {
            // Trailer lines up to the empty line.
            loop {
                if body[i..].starts_with(b"\r\n") {
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&body[i + 2..]);
                    return Some(out);
                }
                let Some(cr) = body[i..].iter().position(|&b| b == b'\r').map(|at| i + at) else {
                    return Some(out);
                };
                match body.get(cr + 1) {
                    None => return Some(out),
                    Some(b'\n') => {}
                    Some(_) => return None,
                }
                i = cr + 2;
            }
        }
        let end = i.saturating_add(usize::try_from(size).ok()?).saturating_add(2);
        match body.get(i..end) {
            Some(data) => out.extend_from_slice(data),
            None => {
                out.extend_from_slice(&body[i..]);
                return Some(out);
            }
        }
        i = end;
    }
}

/// The re-framing oracle: what the router sends the dyno for a request it accepted, read by
/// hyper as the dyno would, is one request, alike in method, path, Host and body.
fn check_upstream(r: &differential::Request, dyno: &HyperReading) -> Option<Verdict> {
    let bad = |what: &str| {
        Some(finding(
            &format!("re-framed request: {what}"),
            format!("router sent {:?}; hyper read {dyno:?}", String::from_utf8_lossy(&r.upstream)),
        ))
    };
    if dyno.end != HyperEnd::Clean || dyno.requests.len() != 1 {
        return bad("not exactly one request");
    }
    // Unambiguous framing: at most one of Content-Length and Transfer-Encoding, once, plain.
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut head = httparse::Request::new(&mut headers);
    if !matches!(head.parse(&r.upstream), Ok(httparse::Status::Complete(_))) {
        return bad("a head httparse cannot read");
    }
    let framing: Vec<_> = head
        .headers
        .iter()
        .filter(|h| {
            h.name.eq_ignore_ascii_case("content-length") || h.name.eq_ignore_ascii_case("transfer-encoding")
        })
        .collect();
    let plain = |h: &&httparse::Header| {
        h.value == b"chunked" || (!h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit))
    };
    if framing.len() > 1 || !framing.iter().all(plain) {
        return bad("ambiguous framing");
    }
    let h = &dyno.requests[0];
    let hosts = h.header_values("host");
    if h.method != r.method || h.uri.to_string() != r.path {
        return bad("method or path");
    }
    if hosts.len() > 1 || hosts.first().map(|v| String::from_utf8_lossy(v).into_owned()) != r.host {
        return bad("Host");
    }
    if h.body.as_deref().ok() != Some(r.body.as_slice()) {
        return bad("body");
    }
    None
}

/// Runs one case: both readings, the comparison, then the re-framing oracle.
fn check(rt: &tokio::runtime::Runtime, input: &[u8]) -> Verdict {
    let router = differential::read_stream(input);
    let hyper = rt.block_on(hyper_read(input));
    let verdict = compare(input, &router, &hyper);
    if matches!(verdict, Verdict::Finding(..)) {
        return verdict;
    }
    for r in &router.requests {
        let dyno = rt.block_on(hyper_read(&r.upstream));
        if let Some(f) = check_upstream(r, &dyno) {
            return f;
        }
    }
    verdict
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

// ----- the generator ----------------------------------------------------------------------------

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![12 => Just("\r\n"), 1 => Just("\n")]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => prop::sample::select(vec!["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH"]),
        1 => prop::sample::select(vec!["CONNECT", "M-SEARCH", "get", "PRI", "X!#$", "G(T", ""]),
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "/[a-z0-9/._~%-]{0,10}(\\?[a-z0-9=&%+]{0,8})?",
        3 => prop::sample::select(vec![
            "/", "*", "http://alpha.localhost/x?y=1", "HTTP://Alpha.localhost:8080", "http://alpha.localhost",
            "https://alpha.localhost/s", "http://u:p@alpha.localhost/p", "http://alpha.localhost?q",
            "http:///x", "http://a b/", "ftp://alpha.localhost/", "alpha.localhost:443", "//alpha.localhost/x",
            "/a#frag", "/%zz", "/a\"b", "/{x}", "/a|b", "/\\", "/^`", "/\u{e9}", "/\x7f", "/a\tb",
            "http://[::1]:80/v6", "http://alpha.localhost:/p", "http://alpha.localhost:99999/p",
            "http://a\"b/", "http://a{b}/", "http://a%41/",
        ]).prop_map(str::to_string),
    ]
}

fn version() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        12 => Just("HTTP/1.1"),
        3 => Just("HTTP/1.0"),
        1 => prop::sample::select(vec!["HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/0.9", ""]),
    ]
}

fn host_lines() -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        10 => Just(vec!["Host: alpha.localhost"]),
        4 => prop::sample::select(vec![
            vec![],
            vec!["Host: alpha.localhost:80"],
            vec!["host: ALPHA.localhost"],
            vec!["Host:alpha.localhost"],
            vec!["Host:  alpha.localhost \t"],
            vec!["Host: "],
            vec!["Host: alpha.localhost", "Host: alpha.localhost"],
            vec!["Host: alpha.localhost", "host: beta.localhost"],
            vec!["Host: a b"],
            vec!["Host: a\x7f"],
            vec!["Host: alpha.localhost", " folded.localhost"],
            vec!["Host : alpha.localhost"],
            vec![" Host: alpha.localhost"],
            vec!["Host: [::1]:8080"],
            vec!["Host: alpha.localhost\r"],
        ]),
    ]
}

fn other_headers() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "Connection: close",
            "Connection: keep-alive",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Expect: 100-continue",
            "X-A: b",
            "X-Empty:",
            "X-Fold: a",
            " b",
            "\tfolded",
            "X-Sp : a",
            "X\x01: a",
            "X-Ctl: a\x01b",
            "X-High: \u{e9}",
            "Forwarded: for=198.51.100.1",
            "X-Forwarded-Host: evil.example",
            "X-Real-IP: 198.51.100.1",
            "X-Forwarded-Proto: https",
            "X-Request-Id: 0123456789abcdef0123",
            "Content-Length: 3",
            "Transfer-Encoding: chunked",
            "Connection: content-length",
            "Connection: transfer-encoding",
            ": empty-name",
            "NoColon",
        ]),
        0..3,
    )
}

/// How a request's body is framed.
#[derive(Debug, Clone)]
enum Framing {
    None,
    Length(&'static str),
    Chunked(Vec<&'static str>),
    Both(&'static str, Vec<&'static str>),
}

fn te_values() -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        8 => Just(vec!["chunked"]),
        4 => prop::sample::select(vec![
            vec!["Chunked"], vec!["CHUNKED"], vec![" chunked"], vec!["chunked "], vec!["gzip, chunked"],
            vec!["chunked, gzip"], vec!["identity, chunked"], vec!["chunked, chunked"], vec!["gzip"],
            vec![""], vec!["chunked;q=1"], vec!["gzip", "chunked"], vec!["chunked", "chunked"],
            vec!["\"chunked\""], vec![",chunked"], vec!["chunked,"], vec!["\tchunked"], vec!["xchunked"],
        ]),
    ]
}

/// `n` is the right length; the placeholder `N` in a value is replaced by it.
fn length_value() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => Just("N"),
        3 => prop::sample::select(vec![
            "N, N", "N,N", " N ", "+N", "-1", "0x1", "", "00N", "N+1", "N-1", "99999999999999999999",
            "0000000000000000000N", "1, 2", "N, ", "N N",
        ]),
    ]
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        3 => Just(Framing::None),
        4 => length_value().prop_map(Framing::Length),
        5 => te_values().prop_map(Framing::Chunked),
        1 => (length_value(), te_values()).prop_map(|(l, t)| Framing::Both(l, t)),
    ]
}

fn chunk_ext() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        10 => Just(""),
        3 => prop::sample::select(vec![";a", ";a=b", ";a=\"q \\\" t\"", " ;a", "\t;a", " ", "; a = b"]),
        2 => prop::sample::select(vec![
            ";", ";a=", ";a b", ";\x00", ";a=\"open", ";=b", ";a=\"\x01\"", "x", ";a\n", ";\u{e9}",
        ]),
    ]
}

fn trailer() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "X-T: 1",
        "X-T:",
        "Y: a b\tc",
        "no colon",
        " folded: x",
        "X: a\x00b",
        "Bad Name: x",
        ":x",
        "X-T: 1\r",
        "Content-Length: 5",
    ])
}

/// After chunk data: the CRLF, or something else.
fn data_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![20 => Just("\r\n"), 1 => prop::sample::select(vec!["\n", "", "\r", "XX", "\r\r\n"])]
}

fn size_form() -> impl Strategy<Value = (bool, usize)> {
    (any::<bool>(), prop_oneof![10 => Just(0usize), 1 => 1usize..20])
}

#[derive(Debug, Clone)]
struct Chunk {
    len: usize,
    upper: bool,
    zeros: usize,
    ext: &'static str,
    eol: &'static str,
    end: &'static str,
}

fn chunks() -> impl Strategy<Value = (Vec<Chunk>, Chunk, Vec<(&'static str, &'static str)>, &'static str)> {
    let chunk = (1usize..12, size_form(), chunk_ext(), eol(), data_end())
        .prop_map(|(len, (upper, zeros), ext, eol, end)| Chunk { len, upper, zeros, ext, eol, end });
    let last = (size_form(), chunk_ext(), eol()).prop_map(|((upper, zeros), ext, eol)| Chunk {
        len: 0,
        upper,
        zeros,
        ext,
        eol,
        end: "",
    });
    (prop::collection::vec(chunk, 0..4), last, prop::collection::vec((trailer(), eol()), 0..2), eol())
}

/// One request as bytes.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        (method(), target(), version(), eol()),
        host_lines(),
        other_headers(),
        framing(),
        prop::collection::vec(any::<u8>(), 0..24),
        chunks(),
        (any::<bool>(), prop_oneof![20 => Just(0usize), 1 => 96usize..104]),
    )
        .prop_map(
            |(
                (method, target, version, line_end),
                hosts,
                others,
                framing,
                data,
                chunked,
                (hosts_last, filler),
            )| {
                let mut head = format!("{method} {target} {version}{line_end}").into_bytes();
                let mut lines: Vec<String> = Vec::new();
                let (length, te): (Option<&str>, Vec<&str>) = match &framing {
                    Framing::None => (None, vec![]),
                    Framing::Length(l) => (Some(l), vec![]),
                    Framing::Chunked(t) => (None, t.clone()),
                    Framing::Both(l, t) => (Some(l), t.clone()),
                };
                // A chunked body, for TE; else the data as it is.
                let body = if te.is_empty() { data.clone() } else { chunked_body(&data, &chunked) };
                if let Some(l) = length {
                    lines.push(format!("Content-Length: {}", l.replace('N', &data.len().to_string())));
                }
                for t in &te {
                    lines.push(format!("Transfer-Encoding: {t}"));
                }
                lines.extend(others.iter().map(|s| s.to_string()));
                // Around the limit of 100 header lines both parsers have.
                lines.extend((0..filler).map(|i| format!("X-Filler-{i}: {i}")));
                let hosts = hosts.iter().map(|s| s.to_string());
                if hosts_last {
                    lines.extend(hosts);
                } else {
                    lines.splice(0..0, hosts);
                }
                for l in lines {
                    head.extend_from_slice(l.as_bytes());
                    head.extend_from_slice(line_end.as_bytes());
                }
                head.extend_from_slice(line_end.as_bytes());
                head.extend_from_slice(&body);
                head
            },
        )
}

fn chunked_body(
    data: &[u8],
    (sizes, last, trailers, end): &(Vec<Chunk>, Chunk, Vec<(&'static str, &'static str)>, &'static str),
) -> Vec<u8> {
    let size_line = |c: &Chunk, n: usize| {
        let hex = if c.upper { format!("{n:X}") } else { format!("{n:x}") };
        format!("{}{hex}{}{}", "0".repeat(c.zeros), c.ext, c.eol).into_bytes()
    };
    let mut out = Vec::new();
    let mut rest = data;
    for c in sizes {
        if rest.is_empty() {
            break;
        }
        let n = c.len.min(rest.len());
        out.extend_from_slice(&size_line(c, n));
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(c.end.as_bytes());
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
        out.extend_from_slice(rest);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&size_line(last, 0));
    for (t, e) in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(end.as_bytes());
    out
}

/// One to four requests on one connection.
fn pipeline() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(request(), 1..5).prop_map(|rs| rs.concat())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

const INTERESTING: &[u8] = b"\r\n \t:;,=\"0aF\x00\x7f\x80\xff/?#@Hc";

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![3 => prop::sample::select(INTERESTING), 1 => any::<u8>()];
    prop_oneof![
        3 => (any::<usize>(), byte.clone()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        3 => (any::<usize>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        3 => any::<usize>().prop_map(Mutation::Delete),
        2 => (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match *m {
            Mutation::Flip(at, b) => bytes[at % len] = b,
            Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Mutation::Delete(at) => {
                bytes.remove(at % len);
            }
            Mutation::Duplicate(at, n) => {
                let at = at % len;
                let piece = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, piece);
            }
            Mutation::Truncate(at) => bytes.truncate(at % len),
        }
    }
    bytes
}

/// Generated streams, and byte-level mutations of them.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => pipeline(),
        1 => (pipeline(), prop::collection::vec(mutation(), 1..5)).prop_map(|(b, ms)| mutate(b, &ms)),
    ]
}

fn show(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}

// ----- the tests --------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_router_reads_requests_as_hyper_does_but_where_an_rfc_lets_it_refuse(input in stream()) {
        let rt = runtime();
        let verdict = check(&rt, &input);
        prop_assert!(!matches!(verdict, Verdict::Finding(..)), "{verdict:?}\ninput: {}", show(&input));
    }
}

/// Known inputs give the verdict they should: agreement, each kind of allowed difference, and
/// the oracle itself notices a router that reads a body differently.
#[test]
fn the_oracle_agrees_allows_and_finds() {
    let rt = runtime();
    let verdict = |raw: &[u8]| check(&rt, raw);
    for agreed in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: b\r\n\r\n",
        b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX: 1\r\n\r\n",
        b"GET http://alpha.localhost/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nshort",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    ] {
        assert_eq!(verdict(agreed), Verdict::Agree, "{}", show(agreed));
    }
    for (raw, name) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 without Host (400)"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Host headers (400)"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "transfer coding other than chunked alone (501)",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding (400)",
        ),
        (
            b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "target other than origin-form, http(s) absolute-form or *, or CONNECT (400)",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a b\r\nabc\r\n0\r\n\r\n",
            "chunk extension, trailer field or chunk size outside the grammar (400)",
        ),
        (
            b"PUT http://[::1]80/v6 HTTP/1.1\r\nHost: a\r\n\r\n",
            "absolute-form authority outside RFC 3986 (400)",
        ),
        (b"GET http://a:b/ HTTP/1.1\r\nHost: a\r\n\r\n", "absolute-form authority outside RFC 3986 (400)"),
        (b"GET http://u@v@a/ HTTP/1.1\r\nHost: a\r\n\r\n", "absolute-form authority outside RFC 3986 (400)"),
        (
            b"GET http://[:,1]:80/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "absolute-form authority outside RFC 3986 (400)",
        ),
        (
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3,3\r\n\r\nab",
            "router takes a Content-Length list of one repeated value",
        ),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
            "router stops at an HTTP/1.0 request or an upgrade (connection closes or tunnels)",
        ),
    ] {
        assert_eq!(verdict(raw), Verdict::Allowed(allowed(name).name), "{}", show(raw));
    }

    // A router that lost a byte of a body, or read one request fewer, is a finding.
    let raw =
        b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: b\r\n\r\n";
    let hyper = rt.block_on(hyper_read(raw));
    let mut router = differential::read_stream(raw);
    assert_eq!(compare(raw, &router, &hyper), Verdict::Agree);
    router.requests[0].body.pop();
    assert!(matches!(compare(raw, &router, &hyper), Verdict::Finding(kind, _) if kind == "body differs"));
    router.requests.truncate(1);
    router.requests[0].body = b"hello".to_vec();
    assert!(matches!(compare(raw, &router, &hyper), Verdict::Finding(..)));
    // And a re-framed request that a dyno would read as two is one.
    let mut smuggled = differential::read_stream(raw).requests[0].clone();
    smuggled.upstream.extend_from_slice(b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n");
    let dyno = rt.block_on(hyper_read(&smuggled.upstream));
    assert!(check_upstream(&smuggled, &dyno).is_some());
}

/// The fuzzer proper, for `fuzz/run.sh`: generated and mutated streams for `FUZZ_SECONDS`
/// (default 60) or `PROPTEST_CASES` cases, whichever ends first; prints executions, verdicts
/// and one example of each kind of finding, and fails if there is any finding.
#[test]
#[ignore = "long-running; run through fuzz/run.sh"]
fn fuzz_for_a_while() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let cases: u64 = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let rt = runtime();
    let mut runner = TestRunner::new(Config::default());
    let strategy = stream();
    let started = Instant::now();
    let mut executions = 0u64;
    let mut agreed = 0u64;
    let mut allowed: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut findings: std::collections::BTreeMap<String, (u64, String, Vec<u8>)> = Default::default();
    while executions < cases && started.elapsed() < Duration::from_secs(seconds) {
        let input = strategy.new_tree(&mut runner).expect("a generated stream").current();
        executions += 1;
        match check(&rt, &input) {
            Verdict::Agree => agreed += 1,
            Verdict::Allowed(name) => *allowed.entry(name).or_default() += 1,
            Verdict::Finding(kind, details) => {
                let entry = findings.entry(kind).or_insert_with(|| (0, details, input.clone()));
                entry.0 += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!("executions: {executions} in {elapsed:.0} s ({:.0}/s)", executions as f64 / elapsed);
    println!("agreed: {agreed}");
    for a in ALLOWED {
        println!("allowed: {} x {}\n  ({})", allowed.get(a.name).unwrap_or(&0), a.name, a.rfc);
    }
    println!("findings: {}", findings.values().map(|f| f.0).sum::<u64>());
    for (kind, (n, details, input)) in &findings {
        println!("finding: {n} x {kind}\n  {details}\n  input: {}", show(input));
    }
    assert!(findings.is_empty(), "{} kinds of findings (above)", findings.len());
}
