//! The ACME HTTP-01 responder: on the plain HTTP port, before any app routing,
//! `GET /.well-known/acme-challenge/<token>` (token `[A-Za-z0-9_-]+`) is answered 200 with the
//! key authorization in `certs/.challenges/http-01/<token>`, which the daemon's ACME loop (`crate::acme`)
//! writes while a challenge is pending. Without such a file the request goes to the app as
//! usual (an app may answer its own challenges). The file is read beneath the challenge dir
//! (`fsutil::read_beneath`: no link out of it is followed).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::http1::{BodyKind, RequestHead};

/// `certs/.challenges/http-01/` of the home this router serves; unset (no responder) in routers built
/// without a home (tests of the proxy alone).
static DIR: OnceLock<PathBuf> = OnceLock::new();

const PREFIX: &str = "/.well-known/acme-challenge/";

/// Tells the responder where challenges are (once per process, by `service::run`).
pub fn serve_from(dir: PathBuf) {
    if let Err(dir) = DIR.set(dir) {
        tracing::debug!(dir = %dir.display(), "router: the ACME challenge dir was set already");
    }
}

/// A token as RFC 8555 makes them: base64url characters only, so it is one plain file name.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The token a request asks for, when it is a challenge request (`GET` or `HEAD`).
pub fn token_of<'a>(method: &str, path: &'a str) -> Option<&'a str> {
    if method != "GET" && method != "HEAD" {
        return None;
    }
    path.strip_prefix(PREFIX).filter(|t| valid_token(t))
}

/// The response to a challenge request whose key authorization is in `dir`, and whether the
/// connection must close after it (an unread request body, or the client asked to).
pub fn response(dir: &Path, req: &RequestHead) -> Option<(Vec<u8>, bool)> {
    let token = token_of(&req.method, &req.path)?;
    let body = crate::fsutil::read_beneath(dir, token).ok()?;
    let close = !req.keep_alive || req.body != BodyKind::Empty;
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    super::headers::header(&mut out, "Content-Type", b"application/octet-stream");
    super::headers::header(&mut out, "Content-Length", body.len().to_string().as_bytes());
    super::headers::header(&mut out, "Cache-Control", b"no-cache, no-store");
    if close {
        super::headers::header(&mut out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !req.is_head() {
        out.extend_from_slice(body.as_bytes());
    }
    Some((out, close))
}

/// [`response`] in the challenge dir of this router's home (the hook in `proxy.rs`).
pub(super) fn respond(req: &RequestHead) -> Option<(Vec<u8>, bool)> {
    response(DIR.get()?, req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_challenge_paths_with_plain_tokens_are_taken() {
        for (method, path, want) in [
            ("GET", "/.well-known/acme-challenge/abc_DEF-123", Some("abc_DEF-123")),
            ("HEAD", "/.well-known/acme-challenge/abc", Some("abc")),
            ("POST", "/.well-known/acme-challenge/abc", None),
            ("GET", "/.well-known/acme-challenge/", None),
            ("GET", "/.well-known/acme-challenge/../../etc/passwd", None),
            ("GET", "/.well-known/acme-challenge/a.b", None),
            ("GET", "/.well-known/acme-challenge/abc?x=1", None),
            ("GET", "/.well-known/acme-challenge/abc/", None),
            ("GET", "/other/abc", None),
        ] {
            assert_eq!(token_of(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn a_pending_token_is_answered_and_others_are_not() {
        let (dir, outside) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        std::fs::write(dir.path().join("tok_1"), "tok_1.thumb").expect("write");
        std::fs::write(outside.path().join("secret"), "secret").expect("write");
        // A link out of the challenge dir is never followed.
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("evil")).expect("symlink");
        let head = |raw: &str| {
            super::super::http1::parse_request(raw.as_bytes(), "192.0.2.1".parse().expect("ip"), 80)
                .expect("valid")
                .expect("complete")
        };
        let req = head("GET /.well-known/acme-challenge/tok_1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
        let (page, close) = response(dir.path(), &req).expect("answered");
        let text = String::from_utf8(page).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 11\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\ntok_1.thumb"), "{text}");
        assert!(!close);
        let head_req = head(
            "HEAD /.well-known/acme-challenge/tok_1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        );
        let (page, close) = response(dir.path(), &head_req).expect("answered");
        assert!(String::from_utf8(page).expect("utf8").ends_with("Connection: close\r\n\r\n"));
        assert!(close);
        for unknown in [
            "GET /.well-known/acme-challenge/nope HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "GET /.well-known/acme-challenge/evil HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ] {
            assert!(response(dir.path(), &head(unknown)).is_none(), "{unknown}");
        }
    }
}
