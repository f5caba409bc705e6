//! The per-dyno shim (`slipway dyno-shim`): a small process that owns one dyno's output.
//!
//! The daemon spawns one shim per dyno, in a session of its own. The shim starts the dyno as
//! `sh -c 'exec COMMAND'` in a new process group, reports the dyno's pid and start time on its
//! stdout (then lets go of it), and from then on turns every line the dyno prints into a log
//! line appended straight to the app's log. Because the shim — not the daemon — holds the
//! pipes and writes the log, the daemon can restart or crash without the dyno blocking on a
//! full pipe, dying of SIGPIPE, or losing a single line. When the dyno's main process exits the
//! shim kills what is left of its process group (a dyno is all of its processes), writes
//! `Process exited with status N`, and exits; the daemon notices through a pidfd.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::unistd::Pid;

use super::process;
use crate::logs::{LogWriter, Source};

/// Lines longer than this are split, so one runaway line cannot grow memory without bound.
pub const MAX_LINE: usize = 10_000;

pub struct ShimArgs {
    pub log: PathBuf,
    pub dyno: String,
    pub dir: PathBuf,
    pub command: String,
}

/// Runs the shim; returns the exit code for the shim process itself.
pub fn run(args: ShimArgs) -> i32 {
    // The shim must outlive the daemon and be stopped only through its dyno: signals meant for
    // the daemon's terminal or session are not for it.
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            let _ = signal(sig, SigHandler::SigIgn);
        }
    }
    let log = match LogWriter::open(&args.log) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(err) => {
            eprintln!("slipway dyno-shim: opening {}: {err}", args.log.display());
            return 1;
        }
    };

    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!("exec {}", args.command))
        .current_dir(&args.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe calls (signal) between fork and exec. Ignored signals
    // survive exec, so the dyno must get the default dispositions back.
    unsafe {
        command.pre_exec(|| {
            for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
                let _ = signal(sig, SigHandler::SigDfl);
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(err) => {
            let _ = log.lock().map(|mut w| {
                w.event(Source::Slipway, &args.dyno, &format!("Failed to start process: {err}"))
            });
            return 1;
        }
    };
    let pid = child.id() as i32;
    let start = process::start_time(pid).unwrap_or(0);
    report_and_release_stdout(pid, start);

    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, log.clone(), args.dyno.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, log.clone(), args.dyno.clone()));
    }

    let status = child.wait();
    // The main process is gone; anything it left behind in its group goes too, which also
    // closes the pipes the readers are draining.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for r in readers {
            let _ = r.join();
        }
        let _ = done_tx.send(());
    });
    // A grandchild that escaped the group (setsid) could hold a pipe open forever.
    let _ = done_rx.recv_timeout(Duration::from_secs(5));

    let code = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        }
        Err(_) => -1,
    };
    if let Ok(mut w) = log.lock() {
        let _ = w.event(Source::Slipway, &args.dyno, &format!("Process exited with status {code}"));
    }
    0
}

/// Prints `PID START` for the daemon, then points stdout at /dev/null so the shim never writes
/// into a pipe whose reader (the daemon) may be gone.
fn report_and_release_stdout(pid: i32, start: u64) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{pid} {start}");
    let _ = stdout.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<LogWriter>>,
    dyno: String,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 * 1024, stream);
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            match read_line_capped(&mut reader, &mut line, MAX_LINE) {
                Ok(0) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    if let Ok(mut w) = log.lock() {
                        if let Err(err) = w.event(Source::App, &dyno, text) {
                            eprintln!("slipway dyno-shim: writing {}: {err}", w.path().display());
                        }
                    }
                }
                Err(_) => break,
            }
        }
    })
}

/// Like `read_until(b'\n')` but stops after `max` bytes, so a line without newlines is split
/// into `max`-sized pieces instead of buffered whole.
fn read_line_capped(r: &mut impl BufRead, out: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(out.len());
        }
        let room = max - out.len();
        let window = &available[..available.len().min(room)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&window[..=i]);
            r.consume(i + 1);
            return Ok(out.len());
        }
        let n = window.len();
        out.extend_from_slice(window);
        r.consume(n);
        if out.len() >= max {
            return Ok(out.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_lines() {
        let data = format!("short\n{}\ntail", "x".repeat(25));
        let mut r = BufReader::with_capacity(8, data.as_bytes());
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            if read_line_capped(&mut r, &mut buf, 10).unwrap() == 0 {
                break;
            }
            lines.push(String::from_utf8(buf).unwrap());
        }
        assert_eq!(lines, ["short\n", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx\n", "tail"]);
    }
}
