//! HTTP/1.1 framing for the router: parsing a request or response head (httparse), rewriting it
//! for the other side (hop-by-hop headers out, forwarding headers in), deciding how its body is
//! delimited, and following a chunked body as it streams by. No I/O here: [`super::proxy`]
//! moves the bytes.
//!
//! Bodies are passed through as they were framed (a chunked body stays chunked, byte for byte),
//! so the router never buffers or re-encodes one; the only exception is a chunked response to an
//! HTTP/1.0 client, which cannot read chunks: it gets the data, and the end of the connection
//! marks the end of the body.

use std::net::IpAddr;

use super::headers::{self, ConnectionTokens, Forwarded, Scheme};

/// Largest message head (start line + headers) accepted; a larger request gets 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers accepted in one head; more is answered like a head that is too large.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk extension or trailer section followed (they are passed on, not used).
const MAX_CHUNK_META: usize = 64 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`: until the last chunk and the trailers.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a head cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers.
    TooLarge,
    /// Not HTTP/1.x, or framing that cannot be relayed safely; the text says what.
    Invalid(&'static str),
    /// A transfer coding other than `chunked` (501, as nginx answers).
    NotImplemented,
}

/// A client's request head, parsed, with the head to send to a dyno already written.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    /// The origin-form target (`/path?query`) the dyno gets and the router log shows.
    pub path: String,
    pub http10: bool,
    /// Bytes of the head in the buffer it was parsed from.
    pub len: usize,
    /// The host the client asked for: an absolute-form target's authority, else `Host`.
    pub host: Option<String>,
    pub body: BodyKind,
    /// `Connection: upgrade` with an `Upgrade` header (websockets).
    pub upgrade: bool,
    /// The client wants to send another request on this connection afterwards.
    pub keep_alive: bool,
    pub request_id: String,
    /// The `X-Forwarded-For` value sent on (shown as `fwd` in the router log).
    pub fwd: String,
    /// A TLS proxy in front (a trusted peer on loopback) says the client came over HTTPS
    /// (`X-Forwarded-Proto: https`): such a request is never redirected to HTTPS.
    pub proxied_https: bool,
    /// The head for the dyno.
    pub upstream: Vec<u8>,
}

impl RequestHead {
    /// GET, HEAD and OPTIONS change nothing, so they may be sent to a dyno a second time.
    pub fn is_safe(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: not complete yet (read more).
#[cfg(test)]
pub fn parse_request(buf: &[u8], client: IpAddr, listen_port: u16) -> Result<Option<RequestHead>, HeadError> {
    parse_request_via(buf, client, listen_port, Scheme::Http)
}

/// [`parse_request`] for a request that came over `scheme` (HTTPS: the dyno is told so).
pub fn parse_request_via(
    buf: &[u8],
    client: IpAddr,
    listen_port: u16,
    scheme: Scheme,
) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [std::mem::MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, &mut slots);
    let Some(len) = head_len(parsed, buf, "malformed request head")? else {
        return Ok(None);
    };
    let method = req.method.unwrap_or("GET").to_string();
    if method == "CONNECT" {
        // A tunnel through a forward proxy (RFC 9110 §9.3.6): not for a gateway to apps; a
        // dyno's 2xx to it would turn the connection into a tunnel the router does not follow.
        return Err(HeadError::Invalid("a CONNECT request"));
    }
    let http10 = req.version == Some(0);
    let target = req.path.unwrap_or("/");
    let (authority, path) = split_target(target)?;

    let mut tokens = ConnectionTokens::default();
    let mut forwarded = Forwarded::default();
    let mut host_header: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut te_headers = 0;
    let mut upgrade_to: Option<&[u8]> = None;
    let mut transfer_encoding: Vec<u8> = Vec::new();
    let mut length = Length::default();
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            tokens.add(h.value);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host_header.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_to.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_headers += 1;
            join_value(&mut transfer_encoding, h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            length.add(h.value)?;
        } else {
            forwarded.note(name, h.value);
        }
    }
    // RFC 9112 §3.2: exactly one Host on HTTP/1.1 (an absolute-form target's authority then
    // replaces it, below); HTTP/1.0 may go without.
    if hosts > 1 {
        return Err(HeadError::Invalid("more than one Host header"));
    }
    if hosts == 0 && !http10 {
        return Err(HeadError::Invalid("an HTTP/1.1 request without a Host header"));
    }
    if authority == Some("") {
        return Err(HeadError::Invalid("an absolute target without a host"));
    }
    let body = match (te_headers == 0, length.0) {
        (true, None | Some(0)) => BodyKind::Empty,
        (true, Some(n)) => BodyKind::Length(n),
        (false, Some(_)) => return Err(HeadError::Invalid("both Content-Length and Transfer-Encoding")),
        (false, None) if http10 => {
            return Err(HeadError::Invalid("Transfer-Encoding in an HTTP/1.0 request"))
        }
        // Only `chunked` alone: any other coding, or a list (`gzip, chunked`), is 501, as nginx.
        (false, None) if te_headers == 1 && transfer_encoding.eq_ignore_ascii_case(b"chunked") => {
            BodyKind::Chunked
        }
        (false, None) => return Err(HeadError::NotImplemented),
    };
    let trusted_proxy = headers::trusted_proxy(client);
    let proxied_https = trusted_proxy && forwarded.proto.as_deref() == Some(b"https");
    let upgrade = !http10 && upgrade_to.is_some() && tokens.has("upgrade");
    let keep_alive = !http10 && !tokens.has("close");

    let mut upstream = Vec::with_capacity(len + 256);
    upstream.extend_from_slice(method.as_bytes());
    upstream.push(b' ');
    upstream.extend_from_slice(path.as_bytes());
    upstream.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        let dropped = headers::is_hop_by_hop(name)
            || headers::is_forwarding(name)
            || (!trusted_proxy && headers::is_proxy_claim(name))
            || (authority.is_some() && name.eq_ignore_ascii_case("host"))
            || name.eq_ignore_ascii_case("content-length")
            || tokens.names(name);
        if !dropped {
            headers::header(&mut upstream, name, h.value);
        }
    }
    if let (true, Some(upgrade_to)) = (upgrade, upgrade_to) {
        headers::header(&mut upstream, "Connection", b"upgrade");
        headers::header(&mut upstream, "Upgrade", upgrade_to);
    }
    if let Some(n) = length.0 {
        // One plain value, whatever list or repetition the client sent (`5, 5`).
        headers::header(&mut upstream, "Content-Length", n.to_string().as_bytes());
    }
    if body == BodyKind::Chunked {
        // The body is re-chunked on the way (no extensions, no trailers): see `proxy`.
        headers::header(&mut upstream, "Transfer-Encoding", b"chunked");
    }
    if let Some(authority) = authority {
        headers::header(&mut upstream, "Host", authority.as_bytes());
    }
    let (fwd, request_id) = forwarded.write(&mut upstream, client, listen_port, scheme);
    upstream.extend_from_slice(b"\r\n");
    // The dyno's parser has a limit too (hyper's and gunicorn's: 100 header lines): with the
    // router's own headers added, the head must still be within it. (Header values hold no
    // LF, so the LFs count the request line, the header lines and the empty line.)
    if upstream.iter().filter(|&&b| b == b'\n').count() > MAX_HEADERS + 2 {
        return Err(HeadError::TooLarge);
    }

    let host =
        authority.map(str::to_owned).or_else(|| host_header.map(|h| String::from_utf8_lossy(h).into_owned()));
    Ok(Some(RequestHead {
        method,
        path: path.to_string(),
        http10,
        len,
        host,
        body,
        upgrade,
        keep_alive,
        request_id,
        fwd,
        proxied_https,
        upstream,
    }))
}

/// The length of the head httparse found at the start of `buf`, `None` if it is not complete
/// yet, or why it cannot be used (over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers: too large).
fn head_len(
    parsed: httparse::Result<usize>,
    buf: &[u8],
    malformed: &'static str,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => Ok(Some(len)),
        Ok(httparse::Status::Complete(_)) => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Invalid(malformed)),
    }
}

/// `/path?q` → (None, `/path?q`); `http://host:1/path` → (Some(`host:1`), `/path`); `*` stays.
/// The target must be made of the characters RFC 3986 allows plus those clients send as they
/// are (as hyper's `http` crate and the WHATWG URL rules take them, see [`valid_path`]); a
/// fragment (`#…`, never part of a request target, RFC 9112 §3.2) is cut off, as hyper does.
fn split_target(target: &str) -> Result<(Option<&str>, &str), HeadError> {
    const BAD: HeadError = HeadError::Invalid("a request target with characters a URI cannot have");
    if target == "*" {
        return Ok((None, target));
    }
    if target.starts_with('/') {
        let path = target.split_once('#').map_or(target, |(path, _)| path);
        return if valid_path(path) { Ok((None, path)) } else { Err(BAD) };
    }
    let rest = ["http://", "https://"]
        .iter()
        .find(|scheme| {
            let bytes = target.as_bytes();
            bytes.len() > scheme.len() && bytes[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        })
        .map(|scheme| &target[scheme.len()..])
        .ok_or(HeadError::Invalid("a request target the router cannot route"))?;
    let rest = rest.split_once('#').map_or(rest, |(rest, _)| rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if !valid_authority(authority) {
        return Err(BAD);
    }
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match path {
        "" => Ok((Some(authority), "/")),
        p if p.starts_with('?') => Err(HeadError::Invalid("an absolute target without a path")),
        p if valid_path(p) => Ok((Some(authority), p)),
        _ => Err(BAD),
    }
}

/// RFC 3986 `unreserved` and `sub-delims`.
fn is_uri_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

/// `/path?query` (no fragment): RFC 3986 `pchar`s, `/` and `%`, plus what clients send
/// unencoded and hyper takes (in the path `[ \ ] ^ |` and `" { }`, in the query any visible
/// character), and any non-ASCII UTF-8. Refused, as by hyper: controls, space, DEL, `<` and
/// `>`, a backtick in the path, `"` in the query.
fn valid_path(p: &str) -> bool {
    let (path, query) = p.split_once('?').map_or((p, ""), |(path, query)| (path, query));
    let in_path = |b: u8| is_uri_plain(b) || b >= 0x80 || b":@/%[\\]^|\"{}".contains(&b);
    let in_query = |b: u8| ((0x21..0x7f).contains(&b) && !b"\"<>".contains(&b)) || b >= 0x80;
    path.bytes().all(in_path) && query.bytes().all(in_query)
}

/// RFC 3986 §3.2 `[ userinfo "@" ] host [ ":" port ]`, the host a `reg-name`, an IPv4 address or
/// a bracketed IP literal, the port digits. Not empty.
fn valid_authority(authority: &str) -> bool {
    let (userinfo, host_port) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
    let userinfo_ok = userinfo.bytes().all(|b| is_uri_plain(b) || b == b':' || b == b'%');
    let (host, port) = match host_port.strip_prefix('[') {
        Some(literal) => match literal.split_once(']') {
            Some((ip, after))
                if !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b":.".contains(&b)) =>
            {
                match after.strip_prefix(':') {
                    Some(port) => ("[]", port),
                    None if after.is_empty() => ("[]", ""),
                    None => return false,
                }
            }
            _ => return false,
        },
        None => host_port.rsplit_once(':').unwrap_or((host_port, "")),
    };
    userinfo_ok
        && !host.is_empty()
        && (host == "[]" || host.bytes().all(is_uri_plain))
        && port.bytes().all(|b| b.is_ascii_digit())
}

/// `Content-Length` values seen so far: every one (and every item of a list) must agree.
#[derive(Default)]
struct Length(Option<u64>);

impl Length {
    fn add(&mut self, value: &[u8]) -> Result<(), HeadError> {
        const BAD: HeadError = HeadError::Invalid("an invalid Content-Length");
        for item in value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 18 || !item.iter().all(u8::is_ascii_digit) {
                return Err(BAD);
            }
            let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match self.0 {
                Some(seen) if seen != n => return Err(BAD),
                _ => self.0 = Some(n),
            }
        }
        Ok(())
    }
}

fn join_value(joined: &mut Vec<u8>, value: &[u8]) {
    if !joined.is_empty() {
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.trim_ascii());
}

fn last_coding_is_chunked(transfer_encoding: &[u8]) -> bool {
    transfer_encoding
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// What the client's request implies for reading the dyno's response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext {
    /// A HEAD request: the response has no body whatever its headers say.
    pub head: bool,
    /// The client speaks HTTP/1.0: no chunks, no 1xx responses, close after.
    pub http10: bool,
    /// The client's connection ends after this response.
    pub close: bool,
    /// The client asked for a protocol switch, so a `101` is expected.
    pub upgrade: bool,
}

/// A dyno's response head, parsed, with the head for the client already written.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head in the buffer it was parsed from.
    pub len: usize,
    pub body: BodyKind,
    /// The body is chunked and the client gets only the data (an HTTP/1.0 client).
    pub dechunk: bool,
    /// The dyno's connection may carry another request after this response.
    pub reusable: bool,
    /// The client's connection ends after this response.
    pub close: bool,
    /// The head for the client (empty for a 1xx an HTTP/1.0 client must not see).
    pub client: Vec<u8>,
}

impl ResponseHead {
    /// `100 Continue` and the like: another head follows.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a dyno's response head at the start of `buf`. `Ok(None)`: not complete yet.
pub fn parse_response(buf: &[u8], ctx: ResponseContext) -> Result<Option<ResponseHead>, HeadError> {
    let mut slots = [std::mem::MaybeUninit::<httparse::Header>::uninit(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let Some(len) = head_len(parsed, buf, "malformed response head")? else {
        return Ok(None);
    };
    let status = res.code.unwrap_or(0);
    if status == 101 && !ctx.upgrade {
        return Err(HeadError::Invalid("a protocol switch nobody asked for"));
    }
    let mut tokens = ConnectionTokens::default();
    let mut transfer_encoding: Vec<u8> = Vec::new();
    let mut length = Length::default();
    let mut upgrade_to: Option<&[u8]> = None;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            tokens.add(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            join_value(&mut transfer_encoding, h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length.add(h.value)?;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade_to.get_or_insert(h.value);
        }
    }
    let informational = (100..200).contains(&status) && status != 101;
    let body = if status == 101 {
        BodyKind::UntilClose // the tunnel: whatever follows belongs to the new protocol
    } else if ctx.head || informational || status == 204 || status == 304 {
        BodyKind::Empty
    } else if !transfer_encoding.is_empty() {
        if last_coding_is_chunked(&transfer_encoding) {
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else {
        match length.0 {
            Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::UntilClose,
        }
    };
    let dechunk = ctx.http10 && body == BodyKind::Chunked;
    let close = ctx.close || ctx.http10 || body == BodyKind::UntilClose;
    // RFC 9112 §6.3: with both, Transfer-Encoding wins and Content-Length is dropped; the dyno
    // is not trusted with another request on that connection.
    let both = !transfer_encoding.is_empty() && length.0.is_some();
    let reusable = res.version == Some(1) && !tokens.has("close") && body != BodyKind::UntilClose && !both;

    let mut client = Vec::new();
    if !(informational && ctx.http10) {
        client.reserve(len + 64);
        client.extend_from_slice(b"HTTP/1.1 ");
        client.extend_from_slice(status.to_string().as_bytes());
        client.push(b' ');
        client.extend_from_slice(res.reason.unwrap_or("").as_bytes());
        client.extend_from_slice(b"\r\n");
        for h in res.headers.iter() {
            let dropped = headers::is_hop_by_hop(h.name)
                || tokens.names(h.name)
                || ((dechunk || both) && h.name.eq_ignore_ascii_case("content-length"));
            if !dropped {
                headers::header(&mut client, h.name, h.value);
            }
        }
        if let (101, Some(upgrade_to)) = (status, upgrade_to) {
            headers::header(&mut client, "Connection", b"upgrade");
            headers::header(&mut client, "Upgrade", upgrade_to);
        } else if !transfer_encoding.is_empty() && !dechunk && !informational {
            headers::header(&mut client, "Transfer-Encoding", &transfer_encoding);
        }
        if close && status != 101 && !informational {
            headers::header(&mut client, "Connection", b"close");
        }
        client.extend_from_slice(b"\r\n");
    }
    Ok(Some(ResponseHead { status, len, body, dechunk, reusable, close, client }))
}

/// Follows a chunked body byte by byte as it passes (chunk sizes, extensions, data, the last
/// chunk and trailers), to know where it ends and how much data it carried. Strict RFC 9112
/// §7.1: every line ends in CRLF (a bare LF is an error, as in hyper), a chunk extension must be
/// `;name[=token|"quoted"]` and a trailer `name: value`; anything else is [`BadChunk`]. The
/// extensions and trailers are checked only, never used: a request body is re-chunked without
/// them on its way to a dyno (see [`super::proxy`]).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes of extensions and trailers seen (bounded by [`MAX_CHUNK_META`]).
    meta: usize,
    /// The extension or trailer line being read, checked at its CR.
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that does not follow RFC 9112 §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

impl Chunked {
    /// True once the last chunk and the trailers have passed.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Follows `input`; calls `on_data` with each piece of chunk data in it. Returns how many
    /// bytes belong to the body (less than `input.len()` only when the body ends inside it).
    pub fn feed(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<usize, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            if self.state == Data {
                let take = usize::try_from(self.size).unwrap_or(usize::MAX).min(input.len() - i);
                on_data(&input[i..i + take]);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err(BadChunk);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from(hex_value(b));
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => {
                    self.line.clear();
                    self.keep(b)?;
                    Extension
                }
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => {
                    if !valid_chunk_extensions(&self.line) {
                        return Err(BadChunk);
                    }
                    SizeLf
                }
                (Extension, b'\n') => return Err(BadChunk),
                (Extension, b) => {
                    self.keep(b)?;
                    Extension
                }
                (SizeLf, b'\n') => self.after_size(),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.size = 0;
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (EndLf, b'\n') => Done,
                (Trailer, b'\r') => {
                    if !valid_trailer(&self.line) {
                        return Err(BadChunk);
                    }
                    TrailerLf
                }
                (TrailerLf, b'\n') => TrailerStart,
                (TrailerStart | Trailer, b) if b != b'\n' => {
                    if self.state == TrailerStart {
                        self.line.clear();
                    }
                    self.keep(b)?;
                    Trailer
                }
                _ => return Err(BadChunk),
            };
        }
        Ok(i)
    }

    /// Keeps a byte of an extension or trailer line, within [`MAX_CHUNK_META`] for the body.
    fn keep(&mut self, b: u8) -> Result<(), BadChunk> {
        self.meta += 1;
        if self.meta > MAX_CHUNK_META {
            return Err(BadChunk);
        }
        self.line.push(b);
        Ok(())
    }

    fn after_size(&mut self) -> ChunkState {
        if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_bws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && matches!(s[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

fn skip_token(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_tchar(s[i]) {
        i += 1;
    }
    i
}

/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )` (RFC 9112 §7.1.1), all of
/// `ext`, which is what follows the chunk size up to the CR.
fn valid_chunk_extensions(ext: &[u8]) -> bool {
    let mut i = 0;
    loop {
        i = skip_bws(ext, i);
        if i == ext.len() {
            return true;
        }
        if ext[i] != b';' {
            return false;
        }
        i = skip_bws(ext, i + 1);
        let name_end = skip_token(ext, i);
        if name_end == i {
            return false;
        }
        i = skip_bws(ext, name_end);
        if i < ext.len() && ext[i] == b'=' {
            i = skip_bws(ext, i + 1);
            if i < ext.len() && ext[i] == b'"' {
                i += 1;
                loop {
                    match ext.get(i) {
                        None => return false,
                        Some(b'"') => break,
                        Some(b'\\') => match ext.get(i + 1) {
                            Some(&c)
                                if c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80 =>
                            {
                                i += 2
                            }
                            _ => return false,
                        },
                        Some(&c)
                            if c == b'\t'
                                || c == b' '
                                || c == 0x21
                                || (0x23..=0x7e).contains(&c)
                                || c >= 0x80 =>
                        {
                            i += 1
                        }
                        Some(_) => return false,
                    }
                }
                i += 1;
            } else {
                let end = skip_token(ext, i);
                if end == i {
                    return false;
                }
                i = end;
            }
        }
    }
}

/// `name ":" OWS value OWS` with a token name and a value of visible characters, spaces and
/// tabs (RFC 9112 §5; no obsolete line folding).
fn valid_trailer(line: &[u8]) -> bool {
    let name_end = skip_token(line, 0);
    name_end > 0
        && line.get(name_end) == Some(&b':')
        && line[name_end + 1..]
            .iter()
            .all(|&c| c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80)
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// A page the router answers itself: `status` and reason, an HTML body (omitted for HEAD), and
/// `Connection: close` when the connection ends after it.
pub fn page(status: u16, reason: &str, html: &str, request_id: &str, head: bool, close: bool) -> Vec<u8> {
    own_response(status, reason, None, html, request_id, head, close)
}

/// A redirect the router answers itself (`301` or `308` to `location`), with a short HTML body
/// (omitted for HEAD).
pub fn redirect(
    status: u16,
    reason: &str,
    location: &str,
    request_id: &str,
    head: bool,
    close: bool,
) -> Vec<u8> {
    // Nothing of the request is echoed in the body: the client follows `Location`.
    let html = "<!DOCTYPE html>\n<html><body><p>This app is served over HTTPS.</p></body></html>\n";
    own_response(status, reason, Some(location), html, request_id, head, close)
}

/// What [`page`] and [`redirect`] write: a redirect carries `Location` first and may be cached
/// (as a `301` is meant to be); an error page is never cached.
fn own_response(
    status: u16,
    reason: &str,
    location: Option<&str>,
    html: &str,
    request_id: &str,
    head: bool,
    close: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + html.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    if let Some(location) = location {
        headers::header(&mut out, "Location", location.as_bytes());
    }
    headers::header(&mut out, "Content-Type", b"text/html; charset=utf-8");
    headers::header(&mut out, "Content-Length", html.len().to_string().as_bytes());
    if location.is_none() {
        headers::header(&mut out, "Cache-Control", b"no-cache, no-store");
    }
    if !request_id.is_empty() {
        headers::header(&mut out, "X-Request-Id", request_id.as_bytes());
    }
    if close {
        headers::header(&mut out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(html.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "192.0.2.1";

    fn request(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(raw.as_bytes(), CLIENT.parse().unwrap(), 8080)
    }

    fn upstream(raw: &str) -> String {
        String::from_utf8(request(raw).unwrap().unwrap().upstream).unwrap()
    }

    fn response(raw: &str, ctx: ResponseContext) -> ResponseHead {
        parse_response(raw.as_bytes(), ctx).unwrap().unwrap()
    }

    const PLAIN: ResponseContext =
        ResponseContext { head: false, http10: false, close: false, upgrade: false };

    #[test]
    fn a_request_head_is_rewritten_for_the_dyno() {
        let raw = "GET /x?y=1 HTTP/1.1\r\nHost: App.localhost:8080\r\nConnection: keep-alive, X-Secret\r\n\
                   Keep-Alive: timeout=5\r\nX-Secret: 1\r\nTE: trailers\r\nX-Kept: a\r\nX-Kept: b\r\n\
                   X-Request-Id: client-chosen-id-0123456789\r\nX-Forwarded-For: 203.0.113.7\r\n\r\nnext";
        let head = request(raw).unwrap().unwrap();
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/x?y=1"));
        assert_eq!(head.host.as_deref(), Some("App.localhost:8080"));
        assert_eq!(head.body, BodyKind::Empty);
        assert!(head.keep_alive && !head.upgrade && !head.http10 && head.is_safe());
        assert_eq!(head.request_id, "client-chosen-id-0123456789");
        assert_eq!(head.fwd, "203.0.113.7, 192.0.2.1");
        assert_eq!(
            String::from_utf8(head.upstream).unwrap(),
            "GET /x?y=1 HTTP/1.1\r\nHost: App.localhost:8080\r\nX-Kept: a\r\nX-Kept: b\r\n\
             X-Forwarded-For: 203.0.113.7, 192.0.2.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 8080\r\n\
             X-Request-Id: client-chosen-id-0123456789\r\n\r\n"
        );
    }

    #[test]
    fn bodies_are_framed_as_the_client_framed_them() {
        let head = request("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.body, BodyKind::Length(5));
        assert!(String::from_utf8(head.upstream).unwrap().contains("\r\nContent-Length: 5\r\n"));
        let head = request("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.body, BodyKind::Empty);
        let head =
            request("POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(!head.is_safe());
        assert!(String::from_utf8(head.upstream).unwrap().contains("\r\nTransfer-Encoding: chunked\r\n"));
        for coded in [
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
            "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(request(coded).unwrap_err(), HeadError::NotImplemented, "{coded:?}");
        }
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            "GET http://a.localhost/ HTTP/1.1\r\n\r\n",
            "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET /\r\n\r\n",
        ] {
            assert!(matches!(request(bad), Err(HeadError::Invalid(_))), "{bad:?}");
        }
        let same = request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(same.body, BodyKind::Length(5));
        let up = String::from_utf8(same.upstream).unwrap();
        assert_eq!(up.to_ascii_lowercase().matches("content-length").count(), 1, "{up}");
        assert!(up.contains("\r\nContent-Length: 5\r\n"), "{up}");
    }

    #[test]
    fn heads_that_are_incomplete_or_too_large() {
        assert!(request("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(request("").unwrap().is_none());
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(60 * 1024));
        assert!(request(&big).unwrap().is_some(), "just under 64 KiB");
        let huge = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Huge: {}\r\n\r\n", "h".repeat(70 * 1024));
        assert_eq!(request(&huge).unwrap_err(), HeadError::TooLarge);
        assert_eq!(request(&huge[..66 * 1024]).unwrap_err(), HeadError::TooLarge, "still incomplete");
        let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(request(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(), HeadError::TooLarge);
        // The router adds 4 headers of its own (X-Forwarded-For, -Proto, -Port, X-Request-Id):
        // the dyno must not get more than 100 either.
        let lines = |n: usize| (0..n).map(|i| format!("X-{i}: 1\r\n")).collect::<String>();
        let head = request(&format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", lines(95))).unwrap().unwrap();
        assert_eq!(String::from_utf8(head.upstream).unwrap().matches("\r\n").count(), 100 + 2);
        let over = request(&format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", lines(96)));
        assert_eq!(over.unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn absolute_targets_upgrades_and_old_clients() {
        let head = request("GET http://Alpha.localhost:8080/p?q HTTP/1.1\r\nHost: other\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((head.host.as_deref(), head.path.as_str()), (Some("Alpha.localhost:8080"), "/p?q"));
        let up = String::from_utf8(head.upstream).unwrap();
        assert!(up.starts_with("GET /p?q HTTP/1.1\r\nX-A: 1\r\nHost: Alpha.localhost:8080\r\n"), "{up}");
        assert!(!up.contains("other"), "the target's authority replaces Host: {up}");
        let head = request("GET http://a.localhost HTTP/1.1\r\nHost: other\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.host.as_deref(), head.path.as_str()), (Some("a.localhost"), "/"));
        let old = request("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(old.host, None, "HTTP/1.0 may leave Host out");

        let ws = "GET /s HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let head = request(ws).unwrap().unwrap();
        assert!(head.upgrade);
        let up = String::from_utf8(head.upstream).unwrap();
        assert!(up.contains("\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"), "{up}");
        assert!(
            !request("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap().upgrade
        );

        let old = request("GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
        assert!(old.http10 && !old.keep_alive);
        assert!(String::from_utf8(old.upstream).unwrap().starts_with("GET / HTTP/1.1\r\n"));
        let closing = request("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").unwrap().unwrap();
        assert!(!closing.keep_alive);
    }

    #[test]
    fn targets_are_uris_and_lose_their_fragment() {
        for (target, authority, path) in [
            ("/", None, "/"),
            ("*", None, "*"),
            ("/a/b;c=d?x=1&y=%20", None, "/a/b;c=d?x=1&y=%20"),
            ("/a#frag", None, "/a"),
            ("/p?q#f?g", None, "/p?q"),
            ("/{\"json\"}|^[x]\\", None, "/{\"json\"}|^[x]\\"),
            ("/q?a=`|{}^", None, "/q?a=`|{}^"),
            ("/\u{e9}t\u{e9}", None, "/\u{e9}t\u{e9}"),
            ("http://a.localhost:8080/p#f", Some("a.localhost:8080"), "/p"),
            ("http://u:p%20@a.localhost/p", Some("a.localhost"), "/p"),
            ("http://[::1]:80/v6", Some("[::1]:80"), "/v6"),
            ("HTTPS://A.localhost", Some("A.localhost"), "/"),
        ] {
            assert_eq!(split_target(target), Ok((authority, path)), "{target:?}");
        }
        for bad in [
            "/a<b",
            "/a>b",
            "/a`b",
            "/a\x7fb",
            "/a\x01b",
            "/q?a=\"b\"",
            "/q?a<b",
            "http://a\"b/",
            "http://a%41/",
            "http://a:b:c/",
            "http://a:x/",
            "http://[::1/",
            "http://[zz]/",
            "http://[::1]x/",
            "http://a{b}/",
            "http://a/p`",
            "http://@/",
        ] {
            assert!(split_target(bad).is_err(), "{bad:?}");
        }
        let connect = request("CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(connect.unwrap_err(), HeadError::Invalid("a CONNECT request"));
    }

    #[test]
    fn a_connection_header_cannot_drop_host_or_content_length() {
        let up = upstream(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: host, content-length\r\n\r\n",
        );
        assert!(up.contains("\r\nHost: a\r\n") && up.contains("\r\nContent-Length: 2\r\n"), "{up}");
    }

    #[test]
    fn over_https_the_router_says_https_and_its_port_whatever_the_client_claims() {
        let sent = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\n\r\n";
        for client in ["192.0.2.1", "127.0.0.1"] {
            let head = parse_request_via(sent.as_bytes(), client.parse().unwrap(), 8443, Scheme::Https)
                .unwrap()
                .unwrap();
            let up = String::from_utf8(head.upstream).unwrap();
            assert!(
                up.contains("\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 8443\r\n"),
                "{client}: {up}"
            );
            assert_eq!(up.matches("X-Forwarded-Proto").count(), 1, "{up}");
        }
    }

    #[test]
    fn only_a_loopback_proxy_can_say_the_client_came_over_https() {
        let sent = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n";
        for (client, want) in
            [("127.0.0.1", true), ("::1", true), ("192.0.2.1", false), ("::ffff:10.0.0.1", false)]
        {
            let head = parse_request(sent.as_bytes(), client.parse().unwrap(), 80).unwrap().unwrap();
            assert_eq!(head.proxied_https, want, "{client}");
        }
        let plain = parse_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\n\r\n",
            "127.0.0.1".parse().unwrap(),
            80,
        );
        assert!(!plain.unwrap().unwrap().proxied_https);
    }

    #[test]
    fn redirects_carry_a_location_and_echo_nothing_else() {
        let page = String::from_utf8(redirect(
            301,
            "Moved Permanently",
            "https://a.example/x?<y>",
            "id",
            false,
            false,
        ))
        .unwrap();
        assert!(
            page.starts_with("HTTP/1.1 301 Moved Permanently\r\nLocation: https://a.example/x?<y>\r\n"),
            "{page}"
        );
        assert!(!page.split_once("\r\n\r\n").unwrap().1.contains("<y>"), "{page}");
        let head =
            String::from_utf8(redirect(308, "Permanent Redirect", "https://a/", "", true, true)).unwrap();
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
    }

    #[test]
    fn forwarded_headers() {
        let up = |raw: &str, client: &str| {
            let head = parse_request(raw.as_bytes(), client.parse().unwrap(), 80).unwrap().unwrap();
            (head.fwd, String::from_utf8(head.upstream).unwrap())
        };
        let (fwd, head) = up("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "127.0.0.1");
        assert_eq!(fwd, "127.0.0.1");
        assert!(
            head.contains("\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\nX-Request-Id: "),
            "{head}"
        );

        let sent =
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.1\r\n\
                    X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Request-Id: short\r\n\r\n";
        let (fwd, head) = up(sent, "::ffff:192.0.2.1");
        assert_eq!(fwd, "203.0.113.7, 10.0.0.1, 192.0.2.1");
        assert_eq!(head.matches("X-Forwarded-For").count(), 1, "{head}");
        assert!(
            head.contains("X-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\n"),
            "a remote client cannot claim https"
        );
        assert!(!head.contains("short"), "an invalid request id is replaced");

        // A TLS-terminating proxy on this machine passes its scheme and port on.
        for local in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let (fwd, head) = up(sent, local);
            assert!(fwd.starts_with("203.0.113.7, 10.0.0.1, "), "{fwd}");
            assert!(
                head.contains("X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n"),
                "{local}: {head}"
            );
        }
        let odd = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: gopher\r\nX-Forwarded-Port: 443\r\n\r\n";
        let (_, head) = up(odd, "127.0.0.1");
        assert!(head.contains("X-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\n"), "{head}");
    }

    #[test]
    fn response_framing() {
        let r =
            response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello", PLAIN);
        assert_eq!((r.status, r.body, r.reusable, r.close), (200, BodyKind::Length(5), true, false));
        assert_eq!(String::from_utf8(r.client).unwrap(), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");

        let r = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", PLAIN);
        assert_eq!((r.body, r.dechunk), (BodyKind::Chunked, false));
        assert!(String::from_utf8(r.client).unwrap().ends_with("\r\nTransfer-Encoding: chunked\r\n\r\n"));

        let old = ResponseContext { http10: true, ..PLAIN };
        let r = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", old);
        assert!(r.dechunk && r.close);
        assert_eq!(String::from_utf8(r.client).unwrap(), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");

        let r = response("HTTP/1.1 200 OK\r\n\r\n", PLAIN);
        assert_eq!((r.body, r.reusable, r.close), (BodyKind::UntilClose, false, true));
        let r = response("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", PLAIN);
        assert!(!r.reusable, "an HTTP/1.0 dyno's connection is not reused");
        let r = response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n", PLAIN);
        assert!(!r.reusable && !r.close);

        let head = ResponseContext { head: true, ..PLAIN };
        assert_eq!(response("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head).body, BodyKind::Empty);
        assert_eq!(
            response("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", PLAIN).body,
            BodyKind::Empty
        );
        assert_eq!(response("HTTP/1.1 204 No Content\r\n\r\n", PLAIN).body, BodyKind::Empty);
        let r = response("HTTP/1.1 100 Continue\r\n\r\n", PLAIN);
        assert!(r.is_informational() && r.body == BodyKind::Empty);
        assert_eq!(String::from_utf8(r.client).unwrap(), "HTTP/1.1 100 Continue\r\n\r\n");
        assert!(response("HTTP/1.1 100 Continue\r\n\r\n", old).client.is_empty(), "not for HTTP/1.0");

        let ws = ResponseContext { upgrade: true, ..PLAIN };
        let r = response(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-A: 1\r\n\r\n",
            ws,
        );
        assert_eq!(
            String::from_utf8(r.client).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nX-A: 1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        assert!(parse_response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", PLAIN).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", PLAIN)
            .is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", PLAIN).unwrap().is_none());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", PLAIN).is_err());
    }

    fn follow(body: &[u8], step: usize) -> (Result<usize, BadChunk>, Vec<u8>, bool) {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut used = 0;
        for piece in body.chunks(step) {
            match c.feed(piece, |d| data.extend_from_slice(d)) {
                Ok(n) => {
                    used += n;
                    if c.done() {
                        break;
                    }
                }
                Err(e) => return (Err(e), data, false),
            }
        }
        (Ok(used), data, c.done())
    }

    #[test]
    fn chunked_bodies_are_followed_in_any_pieces() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (used, data, done) = follow(body, step);
            assert_eq!(used, Ok(body.len() - 4), "step {step}");
            assert_eq!(data, b"hello0123456789");
            assert!(done);
        }
        let exts = b"3 ;a=1 ; b = \"x\\\"y;\" ;c\r\nabc\r\n0;d=e\r\nX-T: 1\r\nY-T:\r\n\r\n";
        for step in [1, 5, exts.len()] {
            assert_eq!(follow(exts, step), (Ok(exts.len()), b"abc".to_vec(), true), "step {step}");
        }
        let (_, _, done) = follow(b"5\r\nhel", 2);
        assert!(!done);
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\n\rX",
            b"3\nabc\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"3;a\nabc\r\n",
            b"3;\r\n",
            b"3;a=\r\n",
            b"3;a=\"x\r\n",
            b"3;a=b c\r\n",
            b"3;a\x00\r\n",
            b"3 x\r\n",
            b"3;a=\"\x01\"\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
            b"0\r\nX: 1\r\r\n\r\n",
        ] {
            assert_eq!(follow(bad, 1).0, Err(BadChunk), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// A property test without a crate for it: random bodies in random chunks with random valid
    /// extensions and trailers, fed in random pieces, give back their data; the same body with
    /// any one CR of its framing taken out (a bare LF) is refused.
    #[test]
    fn random_chunked_bodies_round_trip_and_any_bare_lf_is_refused() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n.max(1) as u64).expect("small")
        };
        const EXTS: [&str; 5] = ["", ";a", ";a=b", " ; name = \"q \\\" t\"", ";x=1;y;z=\"\""];
        const TRAILERS: [&str; 3] = ["X-A: 1\r\n", "Y:\r\n", "Z-Sum: a b\tc\r\n"];
        for _ in 0..500 {
            let data: Vec<u8> = (0..next(300)).map(|_| next(256) as u8).collect();
            let mut body = Vec::new();
            let mut framing_crs = Vec::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = 1 + next(rest.len());
                body.extend_from_slice(format!("{n:x}{}", EXTS[next(EXTS.len())]).as_bytes());
                framing_crs.push(body.len());
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(&rest[..n]);
                framing_crs.push(body.len());
                body.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            body.extend_from_slice(format!("0{}", EXTS[next(EXTS.len())]).as_bytes());
            framing_crs.push(body.len());
            body.extend_from_slice(b"\r\n");
            for _ in 0..next(3) {
                let t = TRAILERS[next(TRAILERS.len())];
                framing_crs.push(body.len() + t.len() - 2);
                body.extend_from_slice(t.as_bytes());
            }
            framing_crs.push(body.len());
            body.extend_from_slice(b"\r\n");

            let step = 1 + next(40);
            assert_eq!(follow(&body, step), (Ok(body.len()), data.clone(), true));
            let cut = framing_crs[next(framing_crs.len())];
            let mut bare = body.clone();
            assert_eq!(bare.remove(cut), b'\r');
            assert_eq!(follow(&bare, step).0, Err(BadChunk), "{:?}", String::from_utf8_lossy(&bare));
        }
    }

    #[test]
    fn pages() {
        let p = String::from_utf8(page(404, "Not Found", "<p>x</p>", "rid", false, false)).unwrap();
        assert!(p.starts_with(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 8\r\n"
        ));
        assert!(p.ends_with("X-Request-Id: rid\r\n\r\n<p>x</p>"), "{p}");
        let p = String::from_utf8(page(503, "Service Unavailable", "<p>x</p>", "rid", true, true)).unwrap();
        assert!(p.ends_with("Connection: close\r\n\r\n"), "{p}");
    }
}
