//! Health checks a new web dyno must pass before the daemon calls it ready, declared the way
//! Dokku declares them: the `healthchecks` key of `app.json` at the root of the release dir.
//!
//! ```json
//! {"healthchecks": {"web": [{"type": "startup", "name": "web check", "path": "/health",
//!   "attempts": 3, "timeout": 5, "wait": 1, "initialDelay": 0, "content": "ok"}]}}
//! ```
//!
//! References: Dokku's zero-downtime deploy docs
//! (<https://dokku.com/docs/deployment/zero-downtime-deploys/>: user-defined checks for web
//! processes live under `healthchecks` in `app.json`; checks are made with curl from the host,
//! so apps that check the `Host` header need it right), and the format of the tool Dokku runs
//! them with, docker-container-healthchecker (`docs/file-format.md`: fields and defaults;
//! `docs/healthchecks.md`: check strategies and types).
//!
//! What slipway supports:
//! - Layout: `healthchecks` maps a process type to an array of check objects. No `healthchecks`
//!   key (or `null`) means no checks. Other top-level keys of `app.json` and unknown keys in a
//!   check object are ignored, as in Dokku.
//! - `type`: `startup` checks are run. `liveness` and `readiness` checks are parsed and
//!   validated but **not run** (Dokku's docker-local scheduler does not run them either); each
//!   one gets a line in [`Checks::not_run`]. A missing or empty `type` means `startup` (the
//!   default type in Dokku's docs; the tool itself skips such a check with an error, which
//!   would let an unready dyno through).
//! - Strategy: only *path* checks (an HTTP GET of `path`). A startup check that is a `command`,
//!   `listening` or `uptime` check (or has no `path` at all) is refused with an error rather
//!   than silently skipped: slipway cannot run a command inside a dyno, and its own boot check
//!   (the port accepts TCP and the dyno stays up a settle period) already stands for
//!   `listening` and a short `uptime`. Combining two strategies in one check is an error, as in
//!   Dokku.
//! - `path`: must start with `/` and contain no spaces or control characters.
//! - `attempts` (default 3), `timeout` (default 5 s, per attempt), `wait` (default 5 s, between
//!   attempts), `initialDelay` (default 0 s, before the first attempt): like Dokku's tool, `0`
//!   means the default for `attempts`, `timeout` and `wait` (so `"wait": 0` waits 5 s). Seconds
//!   may be fractional (Dokku takes integers only); each is at most 3600 s, `attempts` at most
//!   1000. A check is retried after any failure (refused connection, timeout, bad status, wrong
//!   body). `initialDelay` is counted from when [`run`] starts, i.e. after the daemon's own
//!   boot check, not from the dyno's start as in Dokku.
//! - Passing: a status of 200-399. Dokku's docs say "2xx"; its tool (`appjson/healthcheck.go`)
//!   fails only a status below 200 or from 400 up. slipway does not follow a redirect (it
//!   usually points at the public URL, not the dyno): a 3xx passes as it is. When `content`
//!   is given (non-empty), the first 64 KiB of the body must contain it.
//! - `port`: validated (1-65535) and otherwise ignored. In Dokku it is the port *inside the
//!   container* (default 5000, the `PORT` Dokku gives the app); a dyno's equivalent is the
//!   `PORT` slipway gave it, which is what [`run`] is called with. A fixed host port would be
//!   shared by the old and the new dyno during a deploy.
//! - `scheme`: only `http`; `https` is refused (dynos are reached over plain HTTP on loopback).
//! - `httpHeaders`: sent with the request; a `Host` among them replaces the one [`run`] is given.
//! - `warn`: a failing check with `"warn": true` is logged (tracing, the daemon's log) and does
//!   not fail [`run_all`].
//! - `onFailure`: not run (it would run host commands or post to URLs from an app's repo);
//!   noted in [`Checks::not_run`].
//! - Checks of one process type run one after the other in file order, and the first failure
//!   stops them (Dokku runs them in parallel); the result is the same pass/fail.
//!
//! The HTTP client is a minimal HTTP/1.1 one over `tokio::net::TcpStream` (`Connection: close`;
//! status line and headers parsed with httparse; the body, only read when `content` is given,
//! framed by `Transfer-Encoding: chunked`, `Content-Length` or the end of the connection, and
//! read up to 64 KiB or until it contains `content`, so a dyno that keeps the connection open
//! still passes at once).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `app.json` larger than this is refused.
pub const MAX_APP_JSON: u64 = 1024 * 1024;
/// At most this much of a response body is read and searched for `content`.
pub const MAX_BODY: usize = 64 * 1024;
/// A response head larger than this fails the attempt.
const MAX_HEAD: usize = 64 * 1024;
const MAX_SECONDS: f64 = 3600.0;
const MAX_ATTEMPTS: u64 = 1000;

pub const DEFAULT_ATTEMPTS: u32 = 3;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// One startup path check, with its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// `name`, or `healthchecks.<type>[<i>]` when none is given.
    pub name: String,
    /// The request target, starting with `/`.
    pub path: String,
    /// Text the body must contain; `None` when not given or empty.
    pub content: Option<String>,
    /// `httpHeaders`, in order.
    pub headers: Vec<(String, String)>,
    /// At least 1.
    pub attempts: u32,
    /// Bound on one attempt: connect, request, response head and (with `content`) body.
    pub timeout: Duration,
    /// Pause between attempts.
    pub wait: Duration,
    /// Pause before the first attempt.
    pub initial_delay: Duration,
    /// A failure is logged and does not fail [`run_all`].
    pub warn: bool,
}

impl Check {
    /// A check of `path` with Dokku's defaults.
    pub fn new(name: &str, path: &str) -> Check {
        Check {
            name: name.to_string(),
            path: path.to_string(),
            content: None,
            headers: Vec::new(),
            attempts: DEFAULT_ATTEMPTS,
            timeout: DEFAULT_TIMEOUT,
            wait: DEFAULT_WAIT,
            initial_delay: Duration::ZERO,
            warn: false,
        }
    }
}

/// The startup checks of every process type, and what was parsed but is not run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checks {
    pub startup: BTreeMap<String, Vec<Check>>,
    /// One sentence per entry or field that is valid but not acted on (liveness and readiness
    /// checks, `onFailure`), for the caller to log.
    pub not_run: Vec<String>,
}

impl Checks {
    /// The startup checks of `process_type`, in file order (empty when none).
    pub fn for_type(&self, process_type: &str) -> &[Check] {
        self.startup.get(process_type).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Parses the `healthchecks` of an `app.json`. Errors are one sentence naming the field.
pub fn parse(app_json: &str) -> Result<Checks, String> {
    let root: Value =
        serde_json::from_str(app_json).map_err(|e| format!("app.json is not valid JSON: {e}"))?;
    let Value::Object(root) = root else {
        return Err("app.json must be a JSON object".to_string());
    };
    let mut checks = Checks::default();
    let healthchecks = match root.get("healthchecks") {
        None | Some(Value::Null) => return Ok(checks),
        Some(Value::Object(map)) => map,
        Some(_) => return Err("app.json: healthchecks must be an object of process types".to_string()),
    };
    for (process_type, entries) in healthchecks {
        let Value::Array(entries) = entries else {
            return Err(format!("app.json: healthchecks.{process_type} must be an array of checks"));
        };
        for (index, entry) in entries.iter().enumerate() {
            let at = format!("healthchecks.{process_type}[{index}]");
            if let Some(check) = parse_entry(&at, entry, &mut checks.not_run)? {
                checks.startup.entry(process_type.clone()).or_default().push(check);
            }
        }
    }
    Ok(checks)
}

/// The startup checks of process type `web` in `<dir>/app.json`: none when there is no such
/// file. The file must be a regular file in `dir` itself (a symlink is refused, never
/// followed) of at most [`MAX_APP_JSON`] bytes.
pub fn for_release(dir: &Path) -> Result<Vec<Check>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("app.json");
    // O_NOFOLLOW: a symlink fails with ELOOP instead of being followed; O_NONBLOCK: a FIFO
    // does not hang the open (the type is checked right after).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("{} is a symlink; app.json must be a regular file", path.display()))
        }
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let meta = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > MAX_APP_JSON {
        return Err(format!("{} is larger than {} KiB", path.display(), MAX_APP_JSON / 1024));
    }
    let mut text = String::new();
    file.take(MAX_APP_JSON + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_APP_JSON {
        return Err(format!("{} is larger than {} KiB", path.display(), MAX_APP_JSON / 1024));
    }
    let mut checks = parse(&text)?;
    Ok(checks.startup.remove("web").unwrap_or_default())
}

fn parse_entry(at: &str, entry: &Value, not_run: &mut Vec<String>) -> Result<Option<Check>, String> {
    let Value::Object(obj) = entry else {
        return Err(format!("app.json: {at} must be an object"));
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) => "startup",
        Some(Value::String(s)) if s.is_empty() => "startup",
        Some(Value::String(s)) if ["startup", "liveness", "readiness"].contains(&s.as_str()) => s,
        Some(_) => {
            return Err(format!("app.json: {at}.type must be \"startup\", \"liveness\" or \"readiness\""))
        }
    };
    let name = match string_field(at, obj, "name")? {
        Some(name) if !name.is_empty() => name,
        _ => at.to_string(),
    };
    let attempts = match obj.get("attempts") {
        None | Some(Value::Null) => DEFAULT_ATTEMPTS,
        Some(v) => match v.as_u64() {
            Some(0) => DEFAULT_ATTEMPTS,
            Some(n) if n <= MAX_ATTEMPTS => n as u32,
            _ => {
                return Err(format!(
                    "app.json: {at}.attempts must be a positive integer up to {MAX_ATTEMPTS} \
                     (0 means the default, {DEFAULT_ATTEMPTS})"
                ))
            }
        },
    };
    let timeout = seconds_field(at, obj, "timeout")?.filter(|d| !d.is_zero()).unwrap_or(DEFAULT_TIMEOUT);
    let wait = seconds_field(at, obj, "wait")?.filter(|d| !d.is_zero()).unwrap_or(DEFAULT_WAIT);
    let initial_delay = seconds_field(at, obj, "initialDelay")?.unwrap_or(Duration::ZERO);
    let content = string_field(at, obj, "content")?.filter(|c| !c.is_empty());
    let path = string_field(at, obj, "path")?.filter(|p| !p.is_empty());
    if let Some(path) = &path {
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "app.json: {at}.path must start with / and contain no spaces or control characters"
            ));
        }
    }
    match obj.get("port") {
        None | Some(Value::Null) => {}
        Some(v) => {
            if !matches!(v.as_u64(), Some(1..=65535)) {
                return Err(format!("app.json: {at}.port must be an integer from 1 to 65535"));
            }
        }
    }
    if let Some(scheme) = string_field(at, obj, "scheme")? {
        if !scheme.is_empty() && !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "app.json: {at}.scheme must be \"http\" (slipway checks dynos over plain HTTP)"
            ));
        }
    }
    let headers = headers_field(at, obj)?;
    let warn = bool_field(at, obj, "warn")?;
    let listening = bool_field(at, obj, "listening")?;
    let uptime = seconds_field(at, obj, "uptime")?.is_some_and(|d| !d.is_zero());
    let command = match obj.get("command") {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => !items.is_empty(),
        Some(_) => return Err(format!("app.json: {at}.command must be an array of strings")),
    };
    let strategies: Vec<&str> =
        [(command, "command"), (listening, "listening"), (path.is_some(), "path"), (uptime, "uptime")]
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, strategy)| *strategy)
            .collect();
    if strategies.len() > 1 {
        return Err(format!(
            "app.json: {at} sets both {} and {}; a check has one strategy",
            strategies[0], strategies[1]
        ));
    }
    if obj.get("onFailure").is_some_and(|v| !v.is_null()) {
        not_run.push(format!("app.json: {at}.onFailure is ignored (slipway runs no failure hooks)"));
    }
    if kind != "startup" {
        let named = if name == at { String::new() } else { format!(" ({name:?})") };
        not_run.push(format!(
            "app.json: {at}{named} is a {kind} check, which slipway does not run (startup checks only)"
        ));
        return Ok(None);
    }
    let Some(path) = path else {
        let what = match strategies.first() {
            Some(&"uptime") => "is an uptime check".to_string(),
            Some(strategy) => format!("is a {strategy} check"),
            None => "has no path".to_string(),
        };
        return Err(format!("app.json: {at} {what}; slipway runs only path (HTTP) checks"));
    };
    Ok(Some(Check { name, path, content, headers, attempts, timeout, wait, initial_delay, warn }))
}

fn string_field(at: &str, obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("app.json: {at}.{key} must be a string")),
    }
}

fn bool_field(at: &str, obj: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("app.json: {at}.{key} must be true or false")),
    }
}

fn seconds_field(at: &str, obj: &Map<String, Value>, key: &str) -> Result<Option<Duration>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(s) if (0.0..=MAX_SECONDS).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(format!("app.json: {at}.{key} must be a number of seconds from 0 to {MAX_SECONDS}")),
        },
    }
}

fn headers_field(at: &str, obj: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let items = match obj.get("httpHeaders") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(format!("app.json: {at}.httpHeaders must be an array")),
    };
    let mut headers = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).unwrap_or("");
        let value = item.get("value").and_then(Value::as_str);
        let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        let good_name = !name.is_empty() && name.bytes().all(token);
        match value {
            Some(value) if good_name && !value.chars().any(|c| c.is_control() && c != '\t') => {
                headers.push((name.to_string(), value.to_string()));
            }
            _ => {
                return Err(format!(
                    "app.json: {at}.httpHeaders[{i}] must be {{\"name\": header name, \"value\": \
                     text without line breaks}}"
                ))
            }
        }
    }
    Ok(headers)
}

/// Runs one check against the dyno listening on `127.0.0.1:port`, sending `Host: host`:
/// `initial_delay`, then up to `attempts` GETs, `wait` apart, each bounded by `timeout`.
/// The error is one sentence with the last attempt's reason.
pub async fn run(check: &Check, port: u16, host: &str) -> Result<(), String> {
    if host.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("{} cannot run: invalid host {host:?}", check.name));
    }
    tokio::time::sleep(check.initial_delay).await;
    let attempts = check.attempts.max(1);
    let mut reason = String::new();
    for n in 1..=attempts {
        if n > 1 {
            tokio::time::sleep(check.wait).await;
        }
        match tokio::time::timeout(check.timeout, attempt(check, port, host)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => reason = why,
            Err(_) => reason = format!("GET {} timed out after {}", check.path, seconds(check.timeout)),
        }
    }
    let plural = if attempts == 1 { "" } else { "s" };
    Err(format!("{} failed after {attempts} attempt{plural}: {reason}", check.name))
}

/// Runs `checks` in order and stops at the first failure (a `warn` check's failure is logged
/// and skipped).
pub async fn run_all(checks: &[Check], port: u16, host: &str) -> Result<(), String> {
    for check in checks {
        if let Err(why) = run(check, port, host).await {
            if !check.warn {
                return Err(why);
            }
            tracing::warn!("health check (warn only): {why}");
        }
    }
    Ok(())
}

/// `5 s`, `0.2 s`, `1.25 s`.
fn seconds(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} s")
}

/// One GET; `Err` is the reason, starting with `GET <path>`.
async fn attempt(check: &Check, port: u16, host: &str) -> Result<(), String> {
    let target = &check.path;
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("GET {target}: cannot connect to 127.0.0.1:{port} ({e})"))?;
    let mut request = format!("GET {target} HTTP/1.1\r\n");
    if !check.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in &check.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("User-Agent: slipway-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {target}: sending the request failed ({e})"))?;

    let mut conn = Conn { stream, buf: Vec::new(), eof: false };
    let head = loop {
        let head = conn.read_head().await.map_err(|why| format!("GET {target}: {why}"))?;
        // Interim responses (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        break head;
    };
    if !(200..400).contains(&head.status) {
        return Err(format!("GET {target} answered {}", head.status));
    }
    let Some(content) = &check.content else {
        return Ok(());
    };
    let body = if head.status == 204 || head.status == 304 {
        Ok(Vec::new())
    } else if head.chunked {
        conn.read_chunked(content.as_bytes()).await
    } else if let Some(length) = head.content_length {
        conn.read_sized(length, content.as_bytes()).await
    } else {
        conn.read_to_close(content.as_bytes()).await
    }
    .map_err(|why| format!("GET {target} answered {} but {why}", head.status))?;
    if contains(&body, content.as_bytes()) {
        Ok(())
    } else {
        Err(format!("GET {target} answered {} but the body does not contain {content:?}", head.status))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

/// The connection and the bytes read from it but not yet consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    /// Reads more into `buf`; false at the end of the connection.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 8192];
        let n =
            self.stream.read(&mut chunk).await.map_err(|e| format!("reading the response failed ({e})"))?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }

    async fn read_head(&mut self) -> Result<Head, String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = response.code.unwrap_or(0);
                    let mut chunked = false;
                    let mut content_length = None;
                    for header in response.headers.iter() {
                        let value = String::from_utf8_lossy(header.value);
                        if header.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = value
                                .rsplit(',')
                                .next()
                                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                        } else if header.name.eq_ignore_ascii_case("content-length") {
                            content_length = Some(value.trim().parse::<usize>().map_err(|_| {
                                format!("the response has an invalid Content-Length {value:?}")
                            })?);
                        }
                    }
                    self.buf.drain(..len);
                    return Ok(Head { status, chunked, content_length });
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("the response is not HTTP/1.x ({e})")),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(format!("the response head is larger than {} KiB", MAX_HEAD / 1024));
            }
            if !self.fill().await? {
                return Err(if self.buf.is_empty() {
                    "the connection closed without a response".to_string()
                } else {
                    "the connection closed in the middle of the response head".to_string()
                });
            }
        }
    }

    /// Up to `length` bytes (at most [`MAX_BODY`]); a body cut short is what arrived. Each
    /// reader stops early once the body holds `needle`: a dyno that keeps the connection open
    /// after its answer (ignoring `Connection: close`) still passes at once.
    async fn read_sized(&mut self, length: usize, needle: &[u8]) -> Result<Vec<u8>, String> {
        let want = length.min(MAX_BODY);
        while self.buf.len() < want && !contains(&self.buf, needle) && self.fill().await? {}
        self.buf.truncate(want);
        Ok(std::mem::take(&mut self.buf))
    }

    async fn read_to_close(&mut self, needle: &[u8]) -> Result<Vec<u8>, String> {
        while self.buf.len() < MAX_BODY && !contains(&self.buf, needle) && self.fill().await? {}
        self.buf.truncate(MAX_BODY);
        Ok(std::mem::take(&mut self.buf))
    }

    /// De-chunks until the last chunk or [`MAX_BODY`] bytes (trailers are not read).
    async fn read_chunked(&mut self, needle: &[u8]) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if self.buf.len() > 1024 {
                    return Err("the body has an invalid chunk size line".to_string());
                }
                if !self.fill().await? {
                    return Ok(body);
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("the body has an invalid chunk size {size_text:?}"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                return Ok(body);
            }
            let mut remaining = size;
            while remaining > 0 {
                if self.buf.is_empty() && !self.fill().await? {
                    return Ok(body);
                }
                let n = remaining.min(self.buf.len()).min(MAX_BODY - body.len());
                body.extend(self.buf.drain(..n));
                remaining -= n;
                if body.len() >= MAX_BODY || contains(&body, needle) {
                    return Ok(body);
                }
            }
            // The CRLF after the chunk's data.
            while self.buf.len() < 2 && self.fill().await? {}
            let crlf = self.buf.len().min(2);
            self.buf.drain(..crlf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tokio::net::TcpListener;

    fn web(entry: &str) -> String {
        format!(r#"{{"healthchecks": {{"web": [{entry}]}}}}"#)
    }

    #[test]
    fn parses_the_documented_example() {
        let checks =
            parse(&web(r#"{"type": "startup", "name": "web check", "path": "/health", "attempts": 3,
               "timeout": 5, "wait": 1, "initialDelay": 2, "content": "ok", "port": 5000,
               "httpHeaders": [{"name": "X-Forwarded-Proto", "value": "https"}]}"#))
            .unwrap();
        let expected = Check {
            name: "web check".to_string(),
            path: "/health".to_string(),
            content: Some("ok".to_string()),
            headers: vec![("X-Forwarded-Proto".to_string(), "https".to_string())],
            attempts: 3,
            timeout: Duration::from_secs(5),
            wait: Duration::from_secs(1),
            initial_delay: Duration::from_secs(2),
            warn: false,
        };
        assert_eq!(checks.for_type("web"), [expected]);
        assert!(checks.not_run.is_empty());
        assert!(checks.for_type("worker").is_empty());
    }

    #[test]
    fn defaults() {
        let table: &[(&str, Check)] = &[
            // Dokku's defaults: attempts 3, timeout 5 s, wait 5 s, initialDelay 0, no content.
            (r#"{"path": "/"}"#, Check::new("healthchecks.web[0]", "/")),
            (
                r#"{"path": "/", "type": "", "name": "", "content": ""}"#,
                Check::new("healthchecks.web[0]", "/"),
            ),
            // 0 means the default for attempts, timeout and wait (as in Dokku's tool), not for
            // initialDelay.
            (
                r#"{"path": "/", "attempts": 0, "timeout": 0, "wait": 0, "initialDelay": 0}"#,
                Check::new("healthchecks.web[0]", "/"),
            ),
            (
                r#"{"path": "/", "timeout": 0.2, "wait": 0.05, "initialDelay": 1.5, "warn": true}"#,
                Check {
                    timeout: Duration::from_millis(200),
                    wait: Duration::from_millis(50),
                    initial_delay: Duration::from_millis(1500),
                    warn: true,
                    ..Check::new("healthchecks.web[0]", "/")
                },
            ),
            // Unknown keys, `port`, `scheme: http` and nulls are accepted.
            (
                r#"{"path": "/", "description": "x", "port": 8080, "scheme": "HTTP", "content": null}"#,
                Check::new("healthchecks.web[0]", "/"),
            ),
        ];
        for (entry, expected) in table {
            let checks = parse(&web(entry)).unwrap_or_else(|e| panic!("{entry}: {e}"));
            assert_eq!(checks.for_type("web"), std::slice::from_ref(expected), "{entry}");
        }
    }

    #[test]
    fn no_healthchecks_means_no_checks() {
        for json in [r#"{}"#, r#"{"name": "app", "healthchecks": null}"#, r#"{"healthchecks": {}}"#] {
            assert_eq!(parse(json).unwrap(), Checks::default(), "{json}");
        }
    }

    #[test]
    fn liveness_readiness_and_on_failure_are_parsed_but_not_run() {
        let checks = parse(
            r#"{"healthchecks": {"web": [
                {"type": "liveness", "name": "live", "path": "/live"},
                {"type": "readiness", "command": ["/app/ready.sh"]},
                {"type": "startup", "path": "/", "onFailure": {"url": "https://x"}}
              ], "worker": [{"path": "/w"}]}}"#,
        )
        .unwrap();
        assert_eq!(checks.for_type("web"), [Check::new("healthchecks.web[2]", "/")]);
        assert_eq!(checks.for_type("worker"), [Check::new("healthchecks.worker[0]", "/w")]);
        assert_eq!(
            checks.not_run,
            [
                r#"app.json: healthchecks.web[0] ("live") is a liveness check, which slipway does not run (startup checks only)"#,
                r#"app.json: healthchecks.web[1] is a readiness check, which slipway does not run (startup checks only)"#,
                "app.json: healthchecks.web[2].onFailure is ignored (slipway runs no failure hooks)",
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let attempts = "app.json: healthchecks.web[0].attempts must be a positive integer up to 1000 (0 means the default, 3)";
        let seconds = |key: &str| {
            format!("app.json: healthchecks.web[0].{key} must be a number of seconds from 0 to 3600")
        };
        let path = "app.json: healthchecks.web[0].path must start with / and contain no spaces or control characters";
        let port = "app.json: healthchecks.web[0].port must be an integer from 1 to 65535";
        let headers = r#"app.json: healthchecks.web[0].httpHeaders[0] must be {"name": header name, "value": text without line breaks}"#;
        let table: Vec<(String, String)> = vec![
            ("[]".into(), "app.json must be a JSON object".into()),
            (r#"{"healthchecks": []}"#.into(), "app.json: healthchecks must be an object of process types".into()),
            (r#"{"healthchecks": {"web": {}}}"#.into(), "app.json: healthchecks.web must be an array of checks".into()),
            (web("1"), "app.json: healthchecks.web[0] must be an object".into()),
            (
                web(r#"{"path": "/", "type": "boot"}"#),
                r#"app.json: healthchecks.web[0].type must be "startup", "liveness" or "readiness""#.into(),
            ),
            (web(r#"{"path": "/", "type": 1}"#), r#"app.json: healthchecks.web[0].type must be "startup", "liveness" or "readiness""#.into()),
            (web(r#"{"path": "/", "name": 1}"#), "app.json: healthchecks.web[0].name must be a string".into()),
            (web(r#"{"path": "/", "attempts": -1}"#), attempts.into()),
            (web(r#"{"path": "/", "attempts": 1.5}"#), attempts.into()),
            (web(r#"{"path": "/", "attempts": "3"}"#), attempts.into()),
            (web(r#"{"path": "/", "attempts": 1001}"#), attempts.into()),
            (web(r#"{"path": "/", "timeout": -1}"#), seconds("timeout")),
            (web(r#"{"path": "/", "timeout": "5"}"#), seconds("timeout")),
            (web(r#"{"path": "/", "timeout": 3601}"#), seconds("timeout")),
            (web(r#"{"path": "/", "wait": -0.5}"#), seconds("wait")),
            (web(r#"{"path": "/", "initialDelay": true}"#), seconds("initialDelay")),
            (web(r#"{"path": "/", "uptime": -1}"#), seconds("uptime")),
            (web(r#"{"path": "/", "content": 1}"#), "app.json: healthchecks.web[0].content must be a string".into()),
            (web(r#"{"path": "health"}"#), path.into()),
            (web(r#"{"path": "/a b"}"#), path.into()),
            (web(r#"{"path": "/a\r\nX: y"}"#), path.into()),
            (web(r#"{"path": 1}"#), "app.json: healthchecks.web[0].path must be a string".into()),
            (web(r#"{"path": "/", "port": 0}"#), port.into()),
            (web(r#"{"path": "/", "port": 70000}"#), port.into()),
            (web(r#"{"path": "/", "port": "5000"}"#), port.into()),
            (
                web(r#"{"path": "/", "scheme": "https"}"#),
                r#"app.json: healthchecks.web[0].scheme must be "http" (slipway checks dynos over plain HTTP)"#.into(),
            ),
            (web(r#"{"path": "/", "httpHeaders": {}}"#), "app.json: healthchecks.web[0].httpHeaders must be an array".into()),
            (web(r#"{"path": "/", "httpHeaders": [{"name": "X Y", "value": "a"}]}"#), headers.into()),
            (web(r#"{"path": "/", "httpHeaders": [{"name": "X", "value": "a\r\nb"}]}"#), headers.into()),
            (web(r#"{"path": "/", "httpHeaders": [{"name": "X"}]}"#), headers.into()),
            (web(r#"{"path": "/", "warn": "yes"}"#), "app.json: healthchecks.web[0].warn must be true or false".into()),
            (web(r#"{"listening": 1}"#), "app.json: healthchecks.web[0].listening must be true or false".into()),
            (web(r#"{"command": "ls"}"#), "app.json: healthchecks.web[0].command must be an array of strings".into()),
            (
                web(r#"{"path": "/", "uptime": 10}"#),
                "app.json: healthchecks.web[0] sets both path and uptime; a check has one strategy".into(),
            ),
            (
                web(r#"{"command": ["true"], "listening": true}"#),
                "app.json: healthchecks.web[0] sets both command and listening; a check has one strategy".into(),
            ),
            (
                web(r#"{"uptime": 10}"#),
                "app.json: healthchecks.web[0] is an uptime check; slipway runs only path (HTTP) checks".into(),
            ),
            (
                web(r#"{"type": "startup", "command": ["/app/check.sh"]}"#),
                "app.json: healthchecks.web[0] is a command check; slipway runs only path (HTTP) checks".into(),
            ),
            (
                web(r#"{"listening": true, "port": 3000}"#),
                "app.json: healthchecks.web[0] is a listening check; slipway runs only path (HTTP) checks".into(),
            ),
            (
                web(r#"{"type": "startup", "attempts": 3}"#),
                "app.json: healthchecks.web[0] has no path; slipway runs only path (HTTP) checks".into(),
            ),
            (
                web(r#"{"path": "/"}, {"path": "/", "attempts": 0.5}"#),
                "app.json: healthchecks.web[1].attempts must be a positive integer up to 1000 (0 means the default, 3)".into(),
            ),
            // Liveness and readiness checks are validated too, though not run.
            (web(r#"{"type": "liveness", "path": "/", "timeout": "x"}"#), seconds("timeout")),
        ];
        for (json, expected) in &table {
            assert_eq!(parse(json).unwrap_err(), *expected, "{json}");
        }
        assert!(parse("{").unwrap_err().starts_with("app.json is not valid JSON: "));
    }

    #[test]
    fn for_release_reads_web_checks_and_refuses_what_is_not_a_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        std::fs::create_dir(&release).unwrap();
        assert_eq!(for_release(&release).unwrap(), []);

        let app_json = release.join("app.json");
        std::fs::write(
            &app_json,
            r#"{"healthchecks": {"web": [{"path": "/up"}], "worker": [{"path": "/w"}]}}"#,
        )
        .unwrap();
        assert_eq!(for_release(&release).unwrap(), [Check::new("healthchecks.web[0]", "/up")]);

        std::fs::write(&app_json, r#"{"healthchecks": {"web": [{"path": "up"}]}}"#).unwrap();
        assert!(for_release(&release).unwrap_err().contains("healthchecks.web[0].path"));

        // A symlink is refused, wherever it points.
        let outside = dir.path().join("elsewhere.json");
        std::fs::write(&outside, r#"{"healthchecks": {"web": [{"path": "/"}]}}"#).unwrap();
        std::fs::remove_file(&app_json).unwrap();
        std::os::unix::fs::symlink(&outside, &app_json).unwrap();
        let err = for_release(&release).unwrap_err();
        assert_eq!(err, format!("{} is a symlink; app.json must be a regular file", app_json.display()));
        std::fs::remove_file(&app_json).unwrap();

        std::fs::create_dir(&app_json).unwrap();
        assert_eq!(
            for_release(&release).unwrap_err(),
            format!("{} is not a regular file", app_json.display())
        );
        std::fs::remove_dir(&app_json).unwrap();

        // A FIFO neither hangs the open nor is read.
        nix::unistd::mkfifo(&app_json, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
            .unwrap();
        assert_eq!(
            for_release(&release).unwrap_err(),
            format!("{} is not a regular file", app_json.display())
        );
        std::fs::remove_file(&app_json).unwrap();

        let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(MAX_APP_JSON as usize));
        std::fs::write(&app_json, big).unwrap();
        assert_eq!(
            for_release(&release).unwrap_err(),
            format!("{} is larger than 1024 KiB", app_json.display())
        );
    }

    #[test]
    fn seconds_are_printed_short() {
        assert_eq!(seconds(Duration::from_secs(5)), "5 s");
        assert_eq!(seconds(Duration::from_millis(200)), "0.2 s");
        assert_eq!(seconds(Duration::from_millis(1250)), "1.25 s");
    }

    /// What the in-test dyno does with each connection, in order (the last one repeats).
    #[derive(Clone)]
    enum Reply {
        /// Reads the request head, writes these bytes, closes.
        Send(Vec<u8>),
        /// Accepts and reads, never answers.
        Hang,
        /// Writes these bytes and keeps the connection open.
        SendOpen(Vec<u8>),
    }

    fn send(text: &str) -> Reply {
        Reply::Send(text.as_bytes().to_vec())
    }

    struct Dyno {
        port: u16,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn dyno(replies: Vec<Reply>) -> Dyno {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let reply = replies[i.min(replies.len() - 1)].clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&head).to_string());
                    match reply {
                        Reply::Send(bytes) => {
                            let _ = socket.write_all(&bytes).await;
                        }
                        Reply::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                        Reply::SendOpen(bytes) => {
                            let _ = socket.write_all(&bytes).await;
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                    }
                });
            }
        });
        Dyno { port, requests }
    }

    /// A fast check: 3 attempts, 0.5 s each, 20 ms apart.
    fn quick(path: &str) -> Check {
        Check {
            timeout: Duration::from_millis(500),
            wait: Duration::from_millis(20),
            ..Check::new("web check", path)
        }
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const ERR: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom";

    #[tokio::test]
    async fn passes_on_200_and_sends_host_and_path() {
        let dyno = dyno(vec![send(OK)]).await;
        let check = Check { content: Some("ok".into()), ..quick("/health?full=1") };
        run(&check, dyno.port, "hello.example.com").await.unwrap();
        let requests = dyno.requests.lock().unwrap();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].starts_with("GET /health?full=1 HTTP/1.1\r\n"), "{}", requests[0]);
        assert!(requests[0].contains("\r\nHost: hello.example.com\r\n"), "{}", requests[0]);
    }

    #[tokio::test]
    async fn http_headers_are_sent_and_a_host_among_them_wins() {
        let dyno = dyno(vec![send(OK)]).await;
        let check = Check {
            headers: vec![("Host".into(), "admin.example.com".into()), ("X-Probe".into(), "1".into())],
            ..quick("/")
        };
        run(&check, dyno.port, "hello.example.com").await.unwrap();
        let request = dyno.requests.lock().unwrap()[0].clone();
        assert!(request.contains("\r\nHost: admin.example.com\r\n"), "{request}");
        assert!(!request.contains("hello.example.com"), "{request}");
        assert!(request.contains("\r\nX-Probe: 1\r\n"), "{request}");
    }

    #[tokio::test]
    async fn a_redirect_passes_and_interim_responses_are_skipped() {
        let dyno = dyno(vec![send("HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n")]).await;
        run(&quick("/"), dyno.port, "h").await.unwrap();
        let dyno2 = dyno_with_interim().await;
        run(&Check { content: Some("ok".into()), ..quick("/") }, dyno2, "h").await.unwrap();
    }

    async fn dyno_with_interim() -> u16 {
        dyno(vec![send(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )])
        .await
        .port
    }

    #[tokio::test]
    async fn fails_then_passes_within_attempts() {
        let dyno = dyno(vec![send(ERR), send(OK)]).await;
        run(&quick("/health"), dyno.port, "h").await.unwrap();
        assert_eq!(dyno.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_500_on_every_attempt_fails_with_the_status() {
        let dyno = dyno(vec![send(ERR)]).await;
        let err = run(&quick("/health"), dyno.port, "h").await.unwrap_err();
        assert_eq!(err, "web check failed after 3 attempts: GET /health answered 500");
        assert_eq!(dyno.requests.lock().unwrap().len(), 3);
        let one = Check { attempts: 1, ..quick("/health") };
        let err = run(&one, dyno.port, "h").await.unwrap_err();
        assert_eq!(err, "web check failed after 1 attempt: GET /health answered 500");
    }

    #[tokio::test]
    async fn wrong_content_fails() {
        let dyno = dyno(vec![send("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nstarting")]).await;
        let check = Check { content: Some("ok".into()), attempts: 2, ..quick("/health") };
        let err = run(&check, dyno.port, "h").await.unwrap_err();
        assert_eq!(
            err,
            r#"web check failed after 2 attempts: GET /health answered 200 but the body does not contain "ok""#
        );
    }

    #[tokio::test]
    async fn a_dyno_that_never_answers_times_out() {
        let dyno = dyno(vec![Reply::Hang]).await;
        let check = Check { timeout: Duration::from_millis(200), attempts: 2, ..quick("/health") };
        let started = Instant::now();
        let err = run(&check, dyno.port, "h").await.unwrap_err();
        assert_eq!(err, "web check failed after 2 attempts: GET /health timed out after 0.2 s");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(420) && took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = run(&quick("/health"), port, "h").await.unwrap_err();
        assert!(
            err.starts_with(&format!(
                "web check failed after 3 attempts: GET /health: cannot connect to 127.0.0.1:{port} ("
            )),
            "{err}"
        );
        assert!(err.contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn a_connection_closed_without_a_response_fails() {
        let dyno = dyno(vec![send("")]).await;
        let err = run(&quick("/"), dyno.port, "h").await.unwrap_err();
        assert_eq!(err, "web check failed after 3 attempts: GET /: the connection closed without a response");
        let dyno = dyno_garbage().await;
        let err = run(&quick("/"), dyno, "h").await.unwrap_err();
        assert!(
            err.starts_with("web check failed after 3 attempts: GET /: the response is not HTTP/1.x ("),
            "{err}"
        );
    }

    async fn dyno_garbage() -> u16 {
        dyno(vec![send("SSH-2.0-OpenSSH\r\n\r\n")]).await.port
    }

    #[tokio::test]
    async fn a_chunked_body_is_dechunked() {
        // "ok" is split across two chunks, with a chunk extension and trailers.
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5;ext=1\r\nall o\r\n3\r\nk!\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let dyno = dyno(vec![send(chunked)]).await;
        let check = Check { content: Some("all ok!".into()), ..quick("/") };
        run(&check, dyno.port, "h").await.unwrap();
        // The chunk sizes are not part of the body.
        let check = Check { content: Some("o\r\n3".into()), attempts: 1, ..quick("/") };
        let err = run(&check, dyno.port, "h").await.unwrap_err();
        assert!(err.ends_with(r#"answered 200 but the body does not contain "o\r\n3""#), "{err}");
    }

    #[tokio::test]
    async fn a_body_until_close_and_a_large_body_are_read_up_to_the_cap() {
        let dyno1 = dyno(vec![send("HTTP/1.1 200 OK\r\n\r\nstatus: ok")]).await;
        run(&Check { content: Some("ok".into()), ..quick("/") }, dyno1.port, "h").await.unwrap();

        let mut big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 10);
        big.push_str(&"x".repeat(MAX_BODY));
        big.push_str("needle0000");
        let dyno2 = dyno(vec![send(&big)]).await;
        let check = Check { content: Some("needle".into()), attempts: 1, ..quick("/") };
        let err = run(&check, dyno2.port, "h").await.unwrap_err();
        assert!(err.ends_with(r#"the body does not contain "needle""#), "{err}");
    }

    #[tokio::test]
    async fn a_dyno_keeping_the_connection_open_passes_once_the_content_arrived() {
        let unsized_body = Reply::SendOpen(b"HTTP/1.1 200 OK\r\n\r\nstatus: ok".to_vec());
        let long_chunk = Reply::SendOpen(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nstatus: ok".to_vec(),
        );
        let long_sized = Reply::SendOpen(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok".to_vec());
        for reply in [unsized_body, long_chunk, long_sized] {
            let dyno = dyno(vec![reply]).await;
            let check = Check { content: Some("ok".into()), attempts: 1, ..quick("/") };
            run(&check, dyno.port, "h").await.unwrap();
        }
        // Without content the body is not read at all.
        let dyno =
            dyno(vec![Reply::SendOpen(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec())]).await;
        run(&Check { attempts: 1, ..quick("/") }, dyno.port, "h").await.unwrap();
    }

    #[tokio::test]
    async fn initial_delay_and_wait_are_honoured() {
        let dyno = dyno(vec![send(ERR), send(OK)]).await;
        let check = Check {
            initial_delay: Duration::from_millis(150),
            wait: Duration::from_millis(100),
            ..quick("/")
        };
        let started = Instant::now();
        run(&check, dyno.port, "h").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn run_all_runs_in_order_and_stops_at_the_first_failure() {
        let dyno = dyno(vec![send(OK)]).await;
        let pass = quick("/a");
        let fail =
            Check { name: "content check".into(), content: Some("nope".into()), attempts: 1, ..quick("/b") };
        let never = quick("/c");
        let err = run_all(&[pass.clone(), fail.clone(), never], dyno.port, "h").await.unwrap_err();
        assert_eq!(
            err,
            r#"content check failed after 1 attempt: GET /b answered 200 but the body does not contain "nope""#
        );
        let paths: Vec<String> =
            dyno.requests.lock().unwrap().iter().map(|r| r.split(' ').nth(1).unwrap().to_string()).collect();
        assert_eq!(paths, ["/a", "/b"]);

        // A warn-only failure does not fail the run.
        let warn = Check { warn: true, ..fail };
        run_all(&[warn, pass], dyno.port, "h").await.unwrap();
        run_all(&[], dyno.port, "h").await.unwrap();
    }
}
