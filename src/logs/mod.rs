//! The merged per-app log (DESIGN.md, "Log format"): `logs/<app>/app.log`, one event per line,
//! `2026-11-24T18:00:00.123456+00:00 source[dyno]: message`.
//!
//! Every writer (dyno shims, the daemon, the build hook) appends whole lines with a single
//! `write(2)` on an `O_APPEND` descriptor, so lines from different writers never interleave
//! inside a line and nothing needs a central log process that could lose lines when it dies.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::timefmt;

/// Who wrote a line: `app` (dyno output), `slipway` (platform events), `router`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    App,
    Slipway,
    Router,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Slipway => "slipway",
            Source::Router => "router",
        }
    }
}

/// Formats one event as a complete log line, newline included. Embedded newlines would break
/// the one-event-per-line rule, so callers split first; stray `\r` is dropped here.
pub fn format_line(stamp: &str, source: Source, dyno: &str, message: &str) -> String {
    let message = message.trim_end_matches(['\r', '\n']);
    format!("{stamp} {}[{dyno}]: {message}\n", source.as_str())
}

/// An append-only handle on one app's log.
pub struct LogWriter {
    path: PathBuf,
    file: File,
}

impl LogWriter {
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter { path: path.to_path_buf(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event per line of `message`, all stamped now, in one `write`.
    pub fn event(&mut self, source: Source, dyno: &str, message: &str) -> io::Result<()> {
        let stamp = timefmt::now();
        let mut buf = String::new();
        for line in message.split('\n') {
            buf.push_str(&format_line(&stamp, source, dyno, line));
        }
        self.write_raw(buf.as_bytes())
    }

    /// Appends already formatted lines. One `write_all` keeps them contiguous.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }
}

/// Appends a platform event to an app's log, opening and closing the file. For rare events
/// (deploys, state changes); hot paths keep a [`LogWriter`].
pub fn append_event(path: &Path, source: Source, dyno: &str, message: &str) {
    let result = LogWriter::open(path).and_then(|mut w| w.event(source, dyno, message));
    if let Err(err) = result {
        tracing::warn!(path = %path.display(), %err, "could not write log event");
    }
}

/// The last `n` lines of a file, read backwards in blocks so a large log costs only what is shown.
pub fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let len = file.metadata()?.len();
    let mut pos = len;
    let mut tail: Vec<u8> = Vec::new();
    const BLOCK: u64 = 64 * 1024;
    // Read until the buffer holds more than n newlines (the extra one bounds the first line).
    while pos > 0 && tail.iter().filter(|&&b| b == b'\n').count() <= n {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
        pos = start;
    }
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape() {
        let l = format_line("2026-11-24T18:00:00.123456+00:00", Source::App, "web.1", "hi\r\n");
        assert_eq!(l, "2026-11-24T18:00:00.123456+00:00 app[web.1]: hi\n");
    }

    #[test]
    fn writer_splits_multiline_events_and_tail_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/app.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.event(Source::Slipway, "web.1", "one\ntwo").unwrap();
        for i in 0..5000 {
            w.event(Source::App, "web.1", &format!("line {i}")).unwrap();
        }
        let last = last_lines(&path, 3).unwrap();
        assert_eq!(last.len(), 3);
        assert!(last[2].ends_with("app[web.1]: line 4999"), "{last:?}");
        let all = last_lines(&path, 100_000).unwrap();
        assert_eq!(all.len(), 5002);
        assert!(all[1].ends_with("slipway[web.1]: two"));
        assert!(last_lines(&dir.path().join("missing"), 5).unwrap().is_empty());
    }
}
