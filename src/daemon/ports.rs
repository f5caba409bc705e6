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
        let held = TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let p = held.local_addr().unwrap().port();
        if p >= u16::MAX - 3 {
            return; // no room for the range in this rare case
        }
        let mut a = Allocator::new(p..=p + 3);
        let first = a.allocate(&[p + 1]).unwrap();
        assert!(first != p && first != p + 1, "{first}");
        let second = a.allocate(&[p + 1, first]).unwrap();
        assert!(second != first && second != p && second != p + 1);
        assert_eq!(a.allocate(&[p + 1, p + 2, p + 3]), None);
    }
}
