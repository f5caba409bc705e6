//! Body wrappers on the request path, and the in-flight counts that `drain` waits on.
//!
//! - [`RetryableBody`]: the client's request body, taken from a shared slot only when the
//!   connection to the dyno polls it. If connecting fails, nothing was read, so the same body
//!   can go to the next dyno.
//! - [`Relayed`]: the dyno's response body on its way to the client, streamed frame by frame;
//!   it counts bytes, and when it ends (or the client goes away) it writes the router line and
//!   releases the request's [`InFlightGuard`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;

use super::log::{LogSink, RequestLine};

/// Requests in flight to one backend port.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once the count is zero.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a guard dropped in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request counted in an [`InFlight`] until dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The shared slot a [`RetryableBody`] takes the client's body from.
pub type BodySlot = Arc<Mutex<Option<Incoming>>>;

/// When the client's body last moved towards the dyno, so the response timeout counts from the
/// end of a slow upload rather than from its start (as Heroku's does).
#[derive(Debug)]
pub struct Progress {
    origin: Instant,
    /// Microseconds after `origin`.
    last: AtomicU64,
}

impl Progress {
    pub fn new(origin: Instant) -> Progress {
        Progress { origin, last: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let micros = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last.fetch_max(micros, Ordering::Relaxed);
    }

    /// The last time a piece of the body was passed on (the origin before any was).
    pub fn last(&self) -> Instant {
        self.origin + std::time::Duration::from_micros(self.last.load(Ordering::Relaxed))
    }
}

/// See the module docs. Size and end-of-stream are answered from the slot until the body is
/// taken, so hyper frames the request (Content-Length or chunked) as the client did.
pub struct RetryableBody {
    slot: BodySlot,
    taken: Option<Incoming>,
    hint: SizeHint,
    empty: bool,
    progress: Option<Arc<Progress>>,
}

impl RetryableBody {
    pub fn new(slot: &BodySlot, progress: Option<Arc<Progress>>) -> RetryableBody {
        let (hint, empty) = match slot.lock() {
            Ok(guard) => match guard.as_ref() {
                Some(b) => (b.size_hint(), b.is_end_stream()),
                None => (SizeHint::with_exact(0), true),
            },
            Err(_) => (SizeHint::with_exact(0), true),
        };
        RetryableBody { slot: slot.clone(), taken: None, hint, empty, progress }
    }

    /// True while the client's body has not been read by any attempt (or there is none).
    pub fn untouched(slot: &BodySlot) -> bool {
        slot.lock().map(|g| g.is_some()).unwrap_or(false)
    }
}

impl Body for RetryableBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.taken.is_none() {
            let body = self.slot.lock().ok().and_then(|mut g| g.take());
            match body {
                Some(b) => self.taken = Some(b),
                None => return Poll::Ready(None),
            }
        }
        let polled = match self.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        };
        if let (Poll::Ready(_), Some(progress)) = (&polled, &self.progress) {
            progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.empty,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

/// What [`Relayed`] logs when the response is over.
pub struct Finish {
    pub app: Arc<str>,
    pub line: RequestLine,
    pub started: Instant,
    pub sink: LogSink,
    pub guard: InFlightGuard,
}

/// See the module docs.
pub struct Relayed {
    inner: Incoming,
    finish: Option<Finish>,
}

impl Relayed {
    pub fn new(inner: Incoming, finish: Finish) -> Relayed {
        Relayed { inner, finish: Some(finish) }
    }

    fn done(&mut self) {
        if let Some(mut f) = self.finish.take() {
            f.line.service = f.started.elapsed();
            f.sink.send(&f.app, f.line);
            drop(f.guard);
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(f)) = (frame.data_ref(), self.finish.as_mut()) {
                    f.line.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.done();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // The client went away mid-body, or hyper never polled an empty body: log it now.
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_every_guard() {
        let f = Arc::new(InFlight::default());
        f.idle().await; // nothing in flight: immediate
        let a = f.enter();
        let b = f.enter();
        assert_eq!(f.count(), 2);
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(f.count(), 0);
    }
}
