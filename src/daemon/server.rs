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
