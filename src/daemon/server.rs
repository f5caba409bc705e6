//! The daemon's control socket: accepts connections, checks the version handshake, and hands
//! each request to the supervisor, answering with whatever it replies.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, Request, Response, PROTOCOL_VERSION};
use super::supervisor::Event;

pub async fn serve(listener: UnixListener, events: mpsc::UnboundedSender<Event>) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(err) = handle(stream, events).await {
                        tracing::debug!(%err, "control connection ended");
                    }
                });
            }
            Err(err) => {
                // Out of file descriptors (EMFILE) and the like fail again at once: wait before
                // the next try instead of spinning, and say so once per streak, not per failure.
                let (wait, report) = backoff.failed();
                if let Some(failures) = report {
                    tracing::warn!(%err, failures, retry_in = ?wait, "accepting a control connection");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The accept loop's answer to errors: waits that double from [`AcceptBackoff::FIRST`] up to
/// [`AcceptBackoff::MAX`], and a report on the first failure of a streak and then every
/// [`AcceptBackoff::REPORT_EVERY`] failures, so a lasting EMFILE neither spins nor floods the log.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures since the last accept that worked.
    failures: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const REPORT_EVERY: u64 = 60;

    fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// How long to wait, and `Some(failures so far)` when this failure should be logged.
    fn failed(&mut self) -> (Duration, Option<u64>) {
        self.failures += 1;
        let doublings = (self.failures - 1).min(16) as u32;
        let wait = Self::FIRST.saturating_mul(1 << doublings).min(Self::MAX);
        let report =
            (self.failures == 1 || self.failures.is_multiple_of(Self::REPORT_EVERY)).then_some(self.failures);
        (wait, report)
    }
}

async fn handle(mut stream: UnixStream, events: mpsc::UnboundedSender<Event>) -> io::Result<()> {
    // Landlock (ABI 7) does not keep a confined process from connecting to a pathname socket,
    // and in single-user mode file modes cannot either (same uid): refuse builds and dynos here.
    if let Some(why) = refusal(&stream) {
        tracing::warn!(why, "control connection refused");
        return write_frame(&mut stream, &Response::Error { message: why.into() }).await;
    }
    let hello: Request = read_frame(&mut stream).await?;
    let Request::Hello { protocol: client_protocol, .. } = hello else {
        return write_frame(&mut stream, &Response::Error { message: "expected a hello first".into() }).await;
    };
    let ours = Response::Hello { protocol: PROTOCOL_VERSION, version: env!("CARGO_PKG_VERSION").into() };
    write_frame(&mut stream, &ours).await?;
    if client_protocol != PROTOCOL_VERSION {
        return Ok(()); // the client reports the mismatch with "restart the daemon"
    }
    loop {
        let request: Request = match read_frame(&mut stream).await {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if events.send(Event::Request(request, reply_tx)).is_err() {
            return Ok(());
        }
        let response =
            reply_rx.await.unwrap_or(Response::Error { message: "the daemon dropped the request".into() });
        write_frame(&mut stream, &response).await?;
    }
}

/// Why the peer of `stream` may not speak the control protocol, if it may not: it runs confined
/// (a build, a release phase or a dyno, or anything else under `no_new_privs`, which no process
/// can clear: `sandbox::is_confined`), or it is gone (the socket was handed on to another
/// process). The peer is held through a pidfd (`SO_PEERPIDFD`) while its status is read, so a
/// reused pid cannot answer for it; kernels without `SO_PEERPIDFD` (before 6.5) are asked by pid.
pub(crate) fn refusal(stream: &UnixStream) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    refusal_fd(stream.as_raw_fd(), stream.peer_cred().ok().and_then(|c| c.pid()))
}

/// [`refusal`] for any connected unix socket `fd` whose peer's pid (`SO_PEERCRED`) is `peer_pid`
/// (the spawn socket, `crate::worker`).
pub(crate) fn refusal_fd(fd: std::os::fd::RawFd, peer_pid: Option<i32>) -> Option<&'static str> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const CONFINED: &str = "control connections from builds and dynos are refused";
    const GONE: &str = "the connecting process is gone";
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `pidfd`.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    let pidfd = (got == 0 && pidfd >= 0).then(|| {
        // SAFETY: the kernel just gave us this descriptor; we own it.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    });
    // A router that dropped root cannot read its own /proc/self/fdinfo (no longer dumpable):
    // the peer's credentials name the same process, which the pidfd then vouches for.
    let pid = pidfd
        .as_ref()
        .and_then(|fd| std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok())
        .and_then(|info| info.lines().find_map(|l| l.strip_prefix("Pid:")?.trim().parse::<i32>().ok()))
        .or(peer_pid);
    let Some(pid) = pid.filter(|p| *p > 0) else { return Some(GONE) };
    let confined = match crate::sandbox::is_confined(pid) {
        Ok(confined) => confined,
        Err(_) => return Some(GONE),
    };
    if let Some(fd) = &pidfd {
        // Still the same process (signal 0 only checks)? Then the status read was its own.
        // SAFETY: pidfd_send_signal with signal 0 and no info sends nothing.
        let sent = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), 0, std::ptr::null::<u8>(), 0)
        };
        // EPERM: alive, but not ours to signal (the root daemon, seen by a router that dropped
        // root); ESRCH: gone.
        let alive = sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            return Some(GONE);
        }
    }
    confined.then_some(CONFINED)
}

async fn read_frame<T: for<'de> serde::Deserialize<'de>>(stream: &mut UnixStream) -> io::Result<T> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let mut body = vec![0u8; protocol::frame_len(header)?];
    stream.read_exact(&mut body).await?;
    protocol::decode(&body)
}

async fn write_frame<T: serde::Serialize>(stream: &mut UnixStream, message: &T) -> io::Result<()> {
    stream.write_all(&protocol::encode(message)?).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_and_are_reported_sparingly() {
        let mut b = AcceptBackoff::default();
        let ms = |d: Duration| d.as_millis() as u64;
        let steps: Vec<(u64, Option<u64>)> = (0..10).map(|_| b.failed()).map(|(w, r)| (ms(w), r)).collect();
        assert_eq!(
            steps,
            [
                (10, Some(1)),
                (20, None),
                (40, None),
                (80, None),
                (160, None),
                (320, None),
                (640, None),
                (1000, None),
                (1000, None),
                (1000, None)
            ]
        );
        let reports: Vec<u64> = (11..=200).filter_map(|_| b.failed().1).collect();
        assert_eq!(reports, [60, 120, 180]);
        assert_eq!(b.failed().0, AcceptBackoff::MAX, "no overflow after many failures");
        b.succeeded();
        assert_eq!(b.failed(), (AcceptBackoff::FIRST, Some(1)), "a new streak starts over");
    }
}
