//! Reading app logs back: the last N lines (matching a filter) across `app.log` and its
//! rotations, newest file first, reading each file backwards in blocks so a large log costs
//! only what is shown.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{rotated_name, Source};

/// `--source` and `--ps`: a line matches when both (if given) do.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub source: Option<Source>,
    /// `web` matches `web.1`, `web.2`…; `web.1` matches exactly.
    pub dyno: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.source.is_none() && self.dyno.is_none()
    }

    pub fn matches(&self, line: &str) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some((source, dyno)) = parse_prefix(line) else { return false };
        let source_ok = self.source.is_none_or(|s| s.as_str() == source);
        let dyno_ok = self
            .dyno
            .as_deref()
            .is_none_or(|want| dyno == want || (!want.contains('.') && dyno.split('.').next() == Some(want)));
        source_ok && dyno_ok
    }
}

/// `(source, dyno)` of `STAMP source[dyno]: message`.
pub fn parse_prefix(line: &str) -> Option<(&str, &str)> {
    let (_, rest) = line.split_once(' ')?;
    let (head, _) = rest.split_once("]: ")?;
    let (source, dyno) = head.split_once('[')?;
    Some((source, dyno))
}

/// `app.log` and its rotations that exist, newest first.
/// A gap in the numbering (a file removed by hand) does not hide the older ones.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    files.extend((1..=100).map(|i| rotated_name(path, i)).filter(|p| p.exists()));
    files
}

/// The last `n` lines matching `filter`, oldest first.
pub fn last_lines(path: &Path, n: usize, filter: &Filter) -> io::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for file in log_files(path) {
        if out.len() >= n {
            break;
        }
        let f = match File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let mut older = last_lines_of(f, len, n - out.len(), filter)?;
        older.append(&mut out);
        out = older;
    }
    Ok(out)
}

/// The last `n` matching lines among the first `limit` bytes of `file`, oldest first.
pub fn last_lines_of(mut file: File, limit: u64, n: usize, filter: &Filter) -> io::Result<Vec<String>> {
    const BLOCK: u64 = 64 * 1024;
    let mut found: Vec<String> = Vec::new();
    let mut pos = limit;
    let mut carry: Vec<u8> = Vec::new(); // the start of a line whose beginning is further back
    while pos > 0 && found.len() < n {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&carry);
        // Everything after the first newline is whole lines (unless we are at the file start).
        let cut = if start == 0 {
            0
        } else {
            block.iter().position(|&b| b == b'\n').map_or(block.len(), |i| i + 1)
        };
        carry = block[..cut].to_vec();
        let text = String::from_utf8_lossy(&block[cut..]);
        let mut chunk: Vec<String> = text.lines().filter(|l| filter.matches(l)).map(str::to_string).collect();
        let keep = chunk.len().saturating_sub(n - found.len());
        chunk.drain(..keep);
        chunk.append(&mut found);
        found = chunk;
        pos = start;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LogWriter, Source};

    #[test]
    fn filters() {
        let line = "2026-11-24T18:00:00.000000+00:00 app[web.12]: hi [x]: y";
        assert_eq!(parse_prefix(line), Some(("app", "web.12")));
        let f = |source: Option<Source>, dyno: Option<&str>| Filter { source, dyno: dyno.map(String::from) };
        assert!(f(None, None).matches(line));
        assert!(f(Some(Source::App), Some("web")).matches(line));
        assert!(f(None, Some("web.12")).matches(line));
        assert!(!f(None, Some("web.1")).matches(line));
        assert!(!f(None, Some("we")).matches(line));
        assert!(!f(Some(Source::Slipway), None).matches(line));
    }

    #[test]
    fn last_lines_filtered_and_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.event(Source::Slipway, "web.1", "one\ntwo").unwrap();
        for i in 0..5000 {
            let dyno = if i % 2 == 0 { "web.1" } else { "worker.1" };
            w.event(Source::App, dyno, &format!("line {i}")).unwrap();
        }
        let none = Filter::default();
        let last = last_lines(&path, 3, &none).unwrap();
        assert_eq!(last.len(), 3);
        assert!(last[2].ends_with("app[worker.1]: line 4999"), "{last:?}");
        assert_eq!(last_lines(&path, 100_000, &none).unwrap().len(), 5002);
        let workers = last_lines(&path, 2, &Filter { source: None, dyno: Some("worker".into()) }).unwrap();
        assert!(workers[0].ends_with("line 4997") && workers[1].ends_with("line 4999"), "{workers:?}");
        let platform = last_lines(&path, 10, &Filter { source: Some(Source::Slipway), dyno: None }).unwrap();
        assert_eq!(platform.len(), 2);
        assert!(last_lines(&dir.path().join("missing"), 5, &none).unwrap().is_empty());
    }
}
