//! Kept-alive connections to dynos, by port, so a request usually skips the TCP handshake.
//!
//! A connection comes back here only after a complete response with nothing unread. One that
//! sat idle for [`IDLE_TIMEOUT`], or that the dyno closed meanwhile, is dropped on checkout or
//! by [`Pool::sweep`]; [`Pool::retain`] drops those of dynos that left the routing table, so
//! a dyno being stopped is not held up by the router's idle connections.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per dyno; more are closed.
const MAX_IDLE_PER_DYNO: usize = 256;

/// Connections are kept per router thread as well as per port: a connection is registered
/// with the runtime of the thread that opened it, and is only ever reused there.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<(usize, u16), Vec<Idle>>>,
}

thread_local! {
    /// Which router thread this is (0 outside [`super::Router::serve_on_threads`]).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as router thread `index` for the pool.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

fn key(port: u16) -> (usize, u16) {
    (worker(), port)
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

impl Pool {
    /// The most recently used live connection to the dyno on `port`, if any.
    pub fn checkout(&self, port: u16) -> Option<TcpStream> {
        let now = Instant::now();
        loop {
            let idle = {
                let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                map.get_mut(&key(port))?.pop()?
            };
            if now.duration_since(idle.since) < IDLE_TIMEOUT && still_open(&idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// Keeps `stream` for the next request to `port`.
    pub fn checkin(&self, port: u16, stream: TcpStream) {
        let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.entry(key(port)).or_default();
        if list.len() < MAX_IDLE_PER_DYNO {
            list.push(Idle { stream, since: Instant::now() });
        }
    }

    /// Drops the connections to every port not in `ports`.
    pub fn retain(&self, ports: &HashSet<u16>) {
        let dropped: Vec<Vec<Idle>> = {
            let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let gone: Vec<(usize, u16)> = map.keys().filter(|(_, p)| !ports.contains(p)).copied().collect();
            gone.iter().filter_map(|k| map.remove(k)).collect()
        };
        drop(dropped); // closed outside the lock
    }

    /// Drops this router thread's connections that sat idle too long or were closed by their
    /// dyno (every router thread sweeps its own).
    pub fn sweep(&self) {
        let now = Instant::now();
        let worker = worker();
        let mut dropped = Vec::new();
        {
            let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            for (_, list) in map.iter_mut().filter(|((w, _), _)| *w == worker) {
                let (keep, gone): (Vec<Idle>, Vec<Idle>) = list
                    .drain(..)
                    .partition(|i| now.duration_since(i.since) < IDLE_TIMEOUT && still_open(&i.stream));
                *list = keep;
                dropped.extend(gone);
            }
            map.retain(|_, list| !list.is_empty());
        }
        drop(dropped);
    }

    /// Idle connections kept for `port`, on every router thread.
    #[cfg(test)]
    pub fn idle(&self, port: u16) -> usize {
        let map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().filter(|((_, p), _)| *p == port).map(|(_, list)| list.len()).sum()
    }
}

/// True unless the dyno closed the connection (or sent something unasked) while it was idle.
/// The runtime's readiness says so without a system call in the usual case; when it reports
/// the socket readable, a one-byte read tells a close (0), stray bytes or an error from a
/// stale readiness (would block). The race of a close arriving just after this check is left
/// to the request's retry (see the router's module docs).
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn live_connections_come_back_and_closed_ones_do_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let (a, _a_server) = pair(&listener).await;
        let (b, b_server) = pair(&listener).await;
        let (c, mut c_server) = pair(&listener).await;
        pool.checkin(1, a);
        pool.checkin(1, b);
        pool.checkin(1, c);
        drop(b_server);
        c_server.write_all(b"stray").await.unwrap();
        // Let the close and the bytes arrive (loopback: at once; bounded anyway).
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut cx = Context::from_waker(Waker::noop());
            let map = pool.idle.lock().unwrap();
            let list = &map[&(0, 1)];
            if list[1].stream.poll_read_ready(&mut cx).is_ready()
                && list[2].stream.poll_read_ready(&mut cx).is_ready()
            {
                break;
            }
        }
        assert!(pool.checkout(1).is_some(), "a is alive");
        assert!(pool.checkout(1).is_none(), "c had stray bytes, b was closed");
        assert!(pool.checkout(2).is_none());
        assert_eq!(pool.idle(1), 0);

        let (d, _d_server) = pair(&listener).await;
        pool.checkin(3, d);
        pool.retain(&HashSet::from([1]));
        assert_eq!(pool.idle(3), 0, "port 3 left the table");
    }
}
