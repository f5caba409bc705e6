//! `logs --tail`: print what is appended to an app's log as it arrives, across rotations and
//! daemon restarts (the file is all there is to follow). Woken by inotify through `notify`,
//! with a periodic check as a safety net; where inotify is unavailable (e.g. its watch limit,
//! ENOSPC) it says so once and polls.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::read::{last_lines_of, log_files, Filter};

/// What the caller's output said about the line it was given.
pub enum Flow {
    Continue,
    Stop,
}

/// Prints the last `n` matching lines, then every new matching line, through `emit`, until
/// `emit` returns [`Flow::Stop`] or `stop_requested` (polled about twice a second) says so.
pub fn tail(
    path: &Path,
    n: usize,
    filter: &Filter,
    mut emit: impl FnMut(&str) -> Flow,
    mut stop_requested: impl FnMut() -> bool,
) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |_event| {
        let _ = tx.send(());
    });
    let watching = match &mut watcher {
        Ok(w) => w.watch(path.parent().unwrap_or(Path::new(".")), RecursiveMode::NonRecursive).is_ok(),
        Err(_) => false,
    };
    if !watching {
        eprintln!(
            "warning: cannot watch the log with inotify (raise fs.inotify.max_user_watches); polling instead"
        );
    }

    // Open first, then print the backlog up to where the follower starts: no line twice or lost.
    let mut file = open_or_wait(path, &mut stop_requested)?;
    let Some(current) = file.as_ref() else { return Ok(()) };
    let start = current.metadata()?.len();
    let mut backlog = Vec::new();
    for older in log_files(path).iter().skip(1) {
        if let Ok(f) = File::open(older) {
            let len = f.metadata()?.len();
            backlog.push(last_lines_of(f, len, n, filter)?);
        }
    }
    let mut lines: Vec<String> = backlog.into_iter().rev().flatten().collect();
    lines.extend(last_lines_of(current.try_clone()?, start, n, filter)?);
    for line in &lines[lines.len().saturating_sub(n)..] {
        if let Flow::Stop = emit(line) {
            return Ok(());
        }
    }

    let mut follower = Follower { offset: start, partial: Vec::new() };
    loop {
        let Some(f) = file.as_mut() else { return Ok(()) };
        if let Flow::Stop = follower.drain(f, filter, &mut emit)? {
            return Ok(());
        }
        // Rotated (or removed and recreated): finish the old file, then start the new one.
        let replaced = match std::fs::metadata(path) {
            Ok(m) => m.ino() != f.metadata()?.ino(),
            Err(_) => false,
        };
        if replaced {
            if let Flow::Stop = follower.drain(f, filter, &mut emit)? {
                return Ok(());
            }
            file = open_or_wait(path, &mut stop_requested)?;
            follower = Follower { offset: 0, partial: Vec::new() };
            continue;
        }
        if stop_requested() {
            return Ok(());
        }
        let wait = if watching { Duration::from_millis(500) } else { Duration::from_millis(200) };
        let _ = rx.recv_timeout(wait);
        while rx.try_recv().is_ok() {}
    }
}

fn open_or_wait(path: &Path, stop_requested: &mut impl FnMut() -> bool) -> io::Result<Option<File>> {
    loop {
        match File::open(path) {
            Ok(f) => return Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if stop_requested() {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

struct Follower {
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Emits every complete line appended since the last call.
    fn drain(
        &mut self,
        file: &mut File,
        filter: &Filter,
        emit: &mut impl FnMut(&str) -> Flow,
    ) -> io::Result<Flow> {
        let len = file.metadata()?.len();
        if len < self.offset {
            self.offset = 0; // truncated in place
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(Flow::Continue);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        file.take(len - self.offset).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Flow::Continue);
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            if filter.matches(line) {
                if let Flow::Stop = emit(line) {
                    return Ok(Flow::Stop);
                }
            }
        }
        Ok(Flow::Continue)
    }
}
