//! The router's listening socket, shared across an upgrade.
//!
//! Every router binds its address with `SO_REUSEPORT` (and `SO_REUSEADDR`), so a new router can
//! listen on the same address while the old one still does; the kernel then spreads new
//! connections over both listeners (a *reuseport group*). Closing a listener resets the
//! connections still queued on it, so the old router first steers every new connection to the
//! newest listener of the group ([`steer_to_newest`]: a one-instruction classic BPF program,
//! `SO_ATTACH_REUSEPORT_CBPF`), accepts what was already queued on its own socket, and only
//! then closes it. The group's sockets are indexed in the order they joined, and a closed
//! socket's slot is taken by the last one, so in a handover the old router is index 0 and the
//! new one index 1; once the old one has gone, index 1 is out of range and the kernel falls back
//! to its usual hash over the one listener left.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the same on x86 and arm).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// How many connections may wait in the accept queue (the kernel caps it at `somaxconn`).
const BACKLOG: libc::c_int = 1024;

/// A listener on `addr` that other routers of the same user can join (`SO_REUSEPORT`).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is the socket just bound, owned by nobody else; listen(2) takes no pointers.
    if unsafe { libc::listen(fd, BACKLOG) } != 0 {
        let err = io::Error::last_os_error();
        // SAFETY: as above; closing the fd we own.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    // SAFETY: `fd` is a listening TCP socket we own; the std listener takes it over.
    Ok(unsafe { std::net::TcpListener::from_raw_fd(fd) })
}

/// Whether `addr` can be listened on by a router: free, or held by routers (ours) that set
/// `SO_REUSEPORT`. Binds without listening, so it never joins the group.
pub fn can_bind(addr: SocketAddr) -> io::Result<()> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)
}

/// Steers the group's new connections to its second listener (the successor; see the module
/// docs).
pub fn steer_to_newest(listener: &std::net::TcpListener) -> io::Result<()> {
    // BPF_RET | BPF_K: return the constant 1, the index of the socket to use.
    let mut program = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 1 }];
    let fprog = libc::sock_fprog { len: program.len() as libc::c_ushort, filter: program.as_mut_ptr() };
    // SAFETY: `fprog` points at `program`, both alive for the call; the kernel copies them.
    let done = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many sockets listen on `addr` right now (`/proc/net/tcp` or `tcp6`): during a handover
/// two, else one. `None` when the table cannot be read.
pub fn listeners(addr: SocketAddr) -> Option<usize> {
    let (file, wanted) = match addr {
        SocketAddr::V4(a) => ("/proc/net/tcp", proc_net_address(&a.ip().octets(), a.port())),
        SocketAddr::V6(a) => ("/proc/net/tcp6", proc_net_address(&a.ip().octets(), a.port())),
    };
    let table = std::fs::read_to_string(file).ok()?;
    Some(count_listeners(&table, &wanted))
}

/// An address as `/proc/net/tcp*` prints it: each 32-bit word of the IP in host byte order,
/// `%08X`, then `:PORT` in hex.
fn proc_net_address(octets: &[u8], port: u16) -> String {
    let mut text: String =
        octets.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect();
    text.push_str(&format!(":{port:04X}"));
    text
}

/// Rows of a `/proc/net/tcp*` table in state LISTEN (`0A`) at `address`.
fn count_listeners(table: &str, address: &str) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&address) && fields.get(3) == Some(&"0A")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn two_listeners_share_an_address_and_the_old_one_can_hand_over() {
        // An address of its own in 127/8: bind(0) with SO_REUSEPORT may hand out a port that
        // another test's SO_REUSEPORT listener on 127.0.0.1 holds, and the count would be off.
        let old = bind("127.77.0.1:0".parse().unwrap()).unwrap();
        let addr = old.local_addr().unwrap();
        can_bind(addr).unwrap();
        let new = bind(addr).unwrap();
        assert_eq!(listeners(addr), Some(2));
        steer_to_newest(&old).unwrap();
        // Every new connection now lands on the new listener.
        old.set_nonblocking(true).unwrap();
        for _ in 0..20 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (mut served, _) = new.accept().unwrap();
            client.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            served.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            served.read_exact(&mut byte).unwrap();
        }
        assert!(old.accept().is_err(), "a connection went to the old listener");
        drop(old);
        assert_eq!(listeners(addr), Some(1));
        // The survivor serves alone.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        new.accept().unwrap();
    }

    #[test]
    fn an_address_held_without_reuseport_is_refused() {
        let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = foreign.local_addr().unwrap();
        assert!(can_bind(addr).is_err());
        assert!(bind(addr).is_err());
    }

    #[test]
    fn listening_rows_of_proc_net_tcp_are_counted_by_address() {
        let table = "  sl  local_address rem_address   st tx_queue\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000\n\
   3: 00000000:1F90 00000000:0000 0A 00000000:00000000\n";
        let here = proc_net_address(&[127, 0, 0, 1], 8080);
        if cfg!(target_endian = "little") {
            assert_eq!(here, "0100007F:1F90");
        }
        assert_eq!(count_listeners(table, "0100007F:1F90"), 2);
        assert_eq!(count_listeners(table, "00000000:1F90"), 1);
        assert_eq!(count_listeners(table, "0100007F:0050"), 0);
    }
}
