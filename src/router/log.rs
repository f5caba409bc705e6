//! The router's lines in each app's log (Heroku's shape):
//!
//! ```text
//! router[web.2]: at=info method=GET path="/x" host=myapp.localhost request_id=… fwd="127.0.0.1" dyno=web.2 connect=0ms service=4ms status=200 bytes=123 protocol=http
//! router[router]: at=error code=H14 desc="No web processes running" method=GET … dyno= connect=0ms service=0ms status=503 bytes=0 protocol=http
//! ```
//!
//! `bytes` counts the response body relayed from the dyno (0 for pages the router made itself).
//!
//! Writing: the request path never touches a file, nor formats the line. It `try_send`s the
//! line's fields with the time to one writer thread over a bounded channel; the thread drains
//! whatever is queued, formats it, groups it per app and appends each app's lines with one
//! `write(2)` through a cached [`LogWriter`] (which also takes part in rotation like every other
//! writer), then lets the next lines gather for [`GATHER`].
//! A plain thread rather than a tokio task, because file writes block; a channel rather than a
//! mutex around the writers, so a slow disk or a rotation never stalls a request, and under load
//! many lines share one write and no request pays for waking the writer (measured: waking it per
//! line cost the router about a fifth of its throughput). If the queue is ever full (the disk
//! stalled for tens of thousands of requests) lines are dropped and counted in the daemon's log
//! rather than slowing the router down. A write that fails (full disk) drops its lines too;
//! they are counted per app and reported in that app's log once a write gets through again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::logs::{format_line, LogPolicy, LogWriter, Source};

/// Where an app's log lives (`$SLIPWAY_HOME/logs/<app>/app.log`); `None` skips logging.
pub type LogPath = Arc<dyn Fn(&str) -> Option<PathBuf> + Send + Sync>;

/// A Heroku router error: code and description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterError {
    pub code: &'static str,
    pub desc: &'static str,
}

pub const H10: RouterError = RouterError { code: "H10", desc: "App crashed" };
pub const H12: RouterError = RouterError { code: "H12", desc: "Request timeout" };
pub const H13: RouterError = RouterError { code: "H13", desc: "Connection closed without response" };
pub const H14: RouterError = RouterError { code: "H14", desc: "No web processes running" };
pub const H15: RouterError = RouterError { code: "H15", desc: "Idle connection" };
pub const H27: RouterError = RouterError { code: "H27", desc: "Client Request Interrupted" };
pub const H28: RouterError = RouterError { code: "H28", desc: "Client Connection Idle" };

/// Everything one router line says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub error: Option<RouterError>,
    pub method: String,
    pub path: String,
    pub host: String,
    pub request_id: String,
    pub fwd: String,
    /// The dyno that served the request; `None` when no dyno did.
    pub dyno: Option<Arc<str>>,
    pub connect: Duration,
    pub service: Duration,
    pub status: u16,
    pub bytes: u64,
    /// How the client reached the router (`protocol=http` or `https`, as Heroku's).
    pub protocol: super::headers::Scheme,
}

/// Longest `path` and `fwd` shown; a 60 KB URL would otherwise make a 60 KB log line.
const MAX_FIELD: usize = 2048;

impl RequestLine {
    /// The message part (after `router[dyno]: `).
    pub fn message(&self) -> String {
        let mut m = String::with_capacity(256);
        match self.error {
            None => m.push_str("at=info "),
            Some(e) => {
                m.push_str("at=error code=");
                m.push_str(e.code);
                m.push_str(" desc=\"");
                m.push_str(e.desc);
                m.push_str("\" ");
            }
        }
        m.push_str(&format!(
            "method={} path=\"{}\" host={} request_id={} fwd=\"{}\" dyno={} connect={}ms service={}ms status={} bytes={} protocol={}",
            quoted(&self.method),
            quoted(&self.path),
            quoted(&self.host),
            quoted(&self.request_id),
            quoted(&self.fwd),
            self.dyno.as_deref().unwrap_or(""),
            self.connect.as_millis(),
            self.service.as_millis(),
            self.status,
            self.bytes,
            self.protocol.as_str(),
        ));
        m
    }

    /// The complete line, newline included, stamped `stamp`.
    pub fn line(&self, stamp: &str) -> String {
        format_line(stamp, Source::Router, self.dyno.as_deref().unwrap_or("router"), &self.message())
    }
}

/// Makes client-controlled text safe inside a `key="…"` field of a one-line log entry:
/// backslashes and quotes escaped, control characters (newlines!) as `\xNN`, length capped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD));
    for c in s.chars() {
        if out.len() >= MAX_FIELD {
            out.push_str("...");
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32 & 0xff)),
            c => out.push(c),
        }
    }
    out
}

/// Queue depth before lines are dropped.
const QUEUE: usize = 64 * 1024;
/// How long the writer lets lines gather after a write; a line reaches the file at most about
/// this much later than its request ended. Short on purpose: a batch is formatted and written
/// in one go, and at 60k requests/s a 25 ms batch took the writer ~1.5 ms, during which it
/// shared the core with the request path — the saturated p99 was 2.1 ms instead of 0.95 ms.
const GATHER: Duration = Duration::from_millis(2);

/// One queued line: the app, the time the request ended and the fields, formatted by the
/// writer thread. Boxed so the channel's preallocated slots stay small.
type Queued = (Arc<str>, Box<(OffsetDateTime, RequestLine)>);

/// The request side of the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    tx: SyncSender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// Starts the writer thread; it ends when every clone of the sink is dropped.
    pub fn start(log_path: LogPath, policy: LogPolicy) -> LogSink {
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("router-log".into())
            .spawn(move || writer_thread(rx, log_path, policy, counter));
        if let Err(err) = spawned {
            tracing::error!(%err, "could not start the router's log writer; router lines are not logged");
        }
        LogSink { tx, dropped }
    }

    /// Queues one line for an app's log; never blocks.
    pub fn send(&self, app: &Arc<str>, line: RequestLine) {
        match self.tx.try_send((app.clone(), Box::new((OffsetDateTime::now_utc(), line)))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How often the writer reports lines a full disk made it drop when no new line comes.
const RETRY: Duration = Duration::from_secs(1);

/// Runs [`write_lines`] until every sink is gone. Nothing in it should panic, but a router
/// whose log thread died would drop every line from then on, so a panic only starts it over.
fn writer_thread(rx: Receiver<Queued>, log_path: LogPath, policy: LogPolicy, dropped: Arc<AtomicU64>) {
    let mut writers: HashMap<Arc<str>, LogWriter> = HashMap::new();
    let mut reported = 0;
    loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_lines(&rx, &log_path, policy, &dropped, &mut writers, &mut reported)
        }));
        match run {
            Ok(()) => return,
            Err(_) => tracing::error!("the router's log writer panicked; starting it over"),
        }
    }
}

fn write_lines(
    rx: &Receiver<Queued>,
    log_path: &LogPath,
    policy: LogPolicy,
    dropped: &AtomicU64,
    writers: &mut HashMap<Arc<str>, LogWriter>,
    reported: &mut u64,
) {
    let mut batch: HashMap<Arc<str>, String> = HashMap::new();
    let add = |batch: &mut HashMap<Arc<str>, String>, (app, queued): Queued| {
        let (at, line) = *queued;
        batch.entry(app).or_default().push_str(&line.line(&crate::timefmt::stamp(at)));
    };
    loop {
        match rx.recv_timeout(RETRY) {
            Ok(queued) => add(&mut batch, queued),
            Err(RecvTimeoutError::Timeout) => {
                // Quiet: report lines a full disk dropped, now that it may have room again.
                for writer in writers.values_mut() {
                    let _ = writer.flush_dropped();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Take whatever else is queued (bounded, so one busy app cannot starve the write).
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(queued) => add(&mut batch, queued),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        for (app, text) in batch.drain() {
            write_app(writers, log_path, policy, &app, &text);
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped != *reported {
            tracing::warn!(lines = now_dropped - *reported, "router log queue full; lines dropped");
            *reported = now_dropped;
        }
        // Let lines gather: while this thread is not waiting in `recv`, a `try_send` wakes
        // nobody, so under load requests cost no futex wake-up or context switch each.
        std::thread::sleep(GATHER);
    }
}

/// Where a router that dropped to its own uid sends its app log lines: a `SOCK_SEQPACKET` socket
/// to its log helper (`slipway router-log`, [`run_helper`]), which stays root and appends them.
static RELAY: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// Most bytes of lines in one relayed packet (`APP\n` and whole lines).
const RELAY_PACKET: usize = 64 * 1024;

/// From now on app log lines go through `socket` to the log helper instead of to the files.
pub fn relay_through(socket: std::os::fd::OwnedFd) {
    if RELAY.set(socket).is_err() {
        tracing::warn!("the router's log relay was set twice; keeping the first");
    }
}

/// Sends `text` (whole lines) for `app` to the log helper, in packets of at most
/// [`RELAY_PACKET`] bytes of lines. Blocks while the helper's queue is full (only this writer
/// thread waits, never a request).
fn relay(socket: &std::os::fd::OwnedFd, app: &str, text: &str) {
    use std::os::fd::AsRawFd;
    let mut rest = text;
    while !rest.is_empty() {
        let cut = packet_cut(rest, RELAY_PACKET);
        let packet = format!("{app}\n{}", &rest[..cut]);
        // SAFETY: send reads `packet` for its length.
        let sent = unsafe {
            libc::send(socket.as_raw_fd(), packet.as_ptr().cast(), packet.len(), libc::MSG_NOSIGNAL)
        };
        if sent < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(%err, app, "relaying router lines to the log helper; dropping them");
            return;
        }
        rest = &rest[cut..];
    }
}

/// How many bytes of `rest` the next relayed packet takes: all of it when it fits in `max`,
/// else up to the last line end within `max`, else `max` cut back to a character boundary.
fn packet_cut(rest: &str, max: usize) -> usize {
    if rest.len() <= max {
        return rest.len();
    }
    let mut cut = max;
    while cut > 0 && !rest.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 {
        // A cap smaller than the first character: that character alone.
        return rest.chars().next().map_or(rest.len(), char::len_utf8);
    }
    rest[..cut].rfind('\n').map_or(cut, |i| i + 1)
}

/// `slipway router-log` (hidden): the root helper of a router that dropped to its own uid (a root
/// daemon on a root-owned home, where that uid may not write `logs/`). It reads packets
/// `APP\nLINES` from the socket on its stdin and appends LINES to that app's log (the name is
/// validated; nothing else is ever written), until the router closes the socket.
pub fn run_helper(home: &crate::home::Home) -> anyhow::Result<()> {
    let policy = crate::settings::Settings::load(home)?.log_policy;
    let mut writers: HashMap<String, LogWriter> = HashMap::new();
    let mut buf = vec![0u8; RELAY_PACKET + 256];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n == 0 {
            return Ok(());
        }
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err.into());
        }
        let packet = String::from_utf8_lossy(&buf[..n as usize]);
        let Some((app, text)) = packet.split_once('\n') else { continue };
        let Ok(name) = app.parse::<crate::app::AppName>() else { continue };
        let writer = writers
            .entry(name.to_string())
            .or_insert_with(|| LogWriter::deferred(&home.app_log(&name), policy).named("router"));
        if let Err(err) = writer.write_raw(text.as_bytes()) {
            if err.kind() == std::io::ErrorKind::NotFound {
                writers.remove(name.as_str());
            }
        }
    }
}

/// Appends `text` to the app's log. A write that fails (full disk…) drops and counts the
/// lines in the app's [`LogWriter`], which writes `slipway[router]: N log lines dropped (disk
/// full)` ahead of its next lines that get through; the daemon's log hears once per outage.
fn write_app(
    writers: &mut HashMap<Arc<str>, LogWriter>,
    log_path: &LogPath,
    policy: LogPolicy,
    app: &Arc<str>,
    text: &str,
) {
    if let Some(socket) = RELAY.get() {
        return relay(socket, app, text);
    }
    if !writers.contains_key(app) {
        let Some(path) = log_path(app) else { return };
        writers.insert(app.clone(), LogWriter::deferred(&path, policy).named("router"));
    }
    let Some(writer) = writers.get_mut(app) else { return };
    let was_failing = !writer.dropped().is_clear();
    if let Err(err) = writer.write_raw(text.as_bytes()) {
        if err.kind() == std::io::ErrorKind::NotFound {
            // The app was destroyed (its log dir is gone); start afresh if it comes back.
            writers.remove(app);
        } else if !was_failing {
            tracing::warn!(app = %app, %err, "writing router lines; dropping them until it works again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_packets_end_at_line_ends_within_the_cap() {
        for (text, max, want) in [
            ("a\nb\n", 10, 4),      // fits whole
            ("aa\nbb\ncc\n", 7, 6), // up to the last line end in the cap
            ("abcdef\n", 4, 4),     // one long line: cut at the cap
            ("ab\u{e9}cd", 3, 2),   // never inside a character
            ("\u{e9}x", 1, 2),      // nor empty
        ] {
            assert_eq!(packet_cut(text, max), want, "{text:?} {max}");
        }
    }

    fn line() -> RequestLine {
        RequestLine {
            protocol: super::super::headers::Scheme::Http,
            error: None,
            method: "GET".into(),
            path: "/x?y=1".into(),
            host: "myapp.localhost".into(),
            request_id: "0b7c1b0e-2f61-4f4b-9c7e-8f8b1f0d9a11".into(),
            fwd: "127.0.0.1".into(),
            dyno: Some("web.2".into()),
            connect: Duration::from_micros(300),
            service: Duration::from_millis(4),
            status: 200,
            bytes: 123,
        }
    }

    #[test]
    fn info_line_has_herokus_shape() {
        assert_eq!(
            line().line("2026-11-24T18:00:00.123456+00:00"),
            "2026-11-24T18:00:00.123456+00:00 router[web.2]: at=info method=GET path=\"/x?y=1\" \
             host=myapp.localhost request_id=0b7c1b0e-2f61-4f4b-9c7e-8f8b1f0d9a11 fwd=\"127.0.0.1\" \
             dyno=web.2 connect=0ms service=4ms status=200 bytes=123 protocol=http\n"
        );
    }

    #[test]
    fn error_lines_name_the_code_and_who_answered() {
        let mut l = line();
        l.error = Some(H12);
        l.dyno = Some("web.1".into());
        l.service = Duration::from_secs(30);
        l.status = 503;
        l.bytes = 0;
        assert_eq!(
            l.message(),
            "at=error code=H12 desc=\"Request timeout\" method=GET path=\"/x?y=1\" host=myapp.localhost \
             request_id=0b7c1b0e-2f61-4f4b-9c7e-8f8b1f0d9a11 fwd=\"127.0.0.1\" dyno=web.1 connect=0ms \
             service=30000ms status=503 bytes=0 protocol=http"
        );
        l.error = Some(H14);
        l.dyno = None;
        let text = l.line("2026-11-24T18:00:00.123456+00:00");
        assert!(
            text.starts_with("2026-11-24T18:00:00.123456+00:00 router[router]: at=error code=H14 "),
            "{text}"
        );
        assert!(text.contains(" dyno= connect="), "{text}");
    }

    #[test]
    fn client_text_cannot_break_the_line() {
        let mut l = line();
        l.path = "/a\"b\\c\nd".into();
        l.fwd = "1.2.3.4\", evil=\"1".into();
        let m = l.message();
        assert!(m.contains(r#"path="/a\"b\\c\x0ad""#), "{m}");
        assert!(m.contains(r#"fwd="1.2.3.4\", evil=\"1""#), "{m}");
        l.path = format!("/{}", "a".repeat(10_000));
        assert!(l.message().len() < 3000);
    }
}
