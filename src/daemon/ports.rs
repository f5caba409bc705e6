//! Dyno `PORT` allocation from `SLIPWAY_PORTS`. A port is handed out only if no dyno row holds
//! it and it can be bound right now (another program, or a dyno that is still draining, may
//! hold it). A rotating cursor avoids reusing a port the moment it was freed.

use std::net::TcpListener;
use std::ops::RangeInclusive;

pub struct Allocator {
    range: RangeInclusive<u16>,
    next: u16,
}

impl Allocator {
    pub fn new(range: RangeInclusive<u16>) -> Allocator {
        let next = *range.start();
        Allocator { range, next }
    }

    pub fn allocate(&mut self, in_use: &[u16]) -> Option<u16> {
        let (start, end) = (*self.range.start() as u32, *self.range.end() as u32);
        let size = end - start + 1;
        for offset in 0..size {
            let port = (start + (self.next as u32 - start + offset) % size) as u16;
            if !in_use.contains(&port) && bindable(port) {
                self.next = if port as u32 == end { start as u16 } else { port + 1 };
                return Some(port);
            }
        }
        None
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_used_and_bound_ports_and_rotates() {
        // Four consecutive ports: the first held by us, the other three free right now (other
        // tests open connections on ephemeral ports, so look for a quiet stretch first).
        let (held, p) = (0..200)
            .find_map(|_| {
                let held = TcpListener::bind(("0.0.0.0", 0)).ok()?;
                let p = held.local_addr().ok()?.port();
                let free = p < u16::MAX - 3 && (1..=3).all(|i| TcpListener::bind(("0.0.0.0", p + i)).is_ok());
                free.then_some((held, p))
            })
            .expect("no four consecutive ports");
        let mut a = Allocator::new(p..=p + 3);
        let first = a.allocate(&[p + 1]).unwrap();
        assert!(first != p && first != p + 1, "{first}");
        let second = a.allocate(&[p + 1, first]).unwrap();
        assert!(second != first && second != p && second != p + 1);
        assert_eq!(a.allocate(&[p + 1, p + 2, p + 3]), None);
        drop(held);
    }
}
