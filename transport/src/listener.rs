//! The listening sockets: one per shard on the same address, with SO_REUSEPORT, so the kernel
//! spreads incoming connections over the shards and no shard hands connections to another.
//!
//! SO_REUSEPORT would also let a second broker bind the same port and silently take half of the
//! new connections, so the port is first probed with a plain bind, which any listener there
//! makes fail.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::limits::{LISTEN_BACKLOG, PORT_RELEASE_WAIT};

/// Binds `count` listeners to `addr`. With port 0, the first listener picks the port and the
/// others share it.
///
/// # Errors
/// The address is in use (by another program) or cannot be bound.
pub fn bind_shared(addr: SocketAddr, count: u16) -> io::Result<Vec<std::net::TcpListener>> {
    ensure_port_free(addr)?;
    let mut listeners = Vec::with_capacity(usize::from(count));
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Fails with `AddrInUse` when a socket listens on `addr`'s port for longer than
/// `PORT_RELEASE_WAIT` (port 0 always passes).
///
/// A plain probe bind is not used: it also fails on connections in TIME_WAIT left by a broker
/// that just stopped, which would keep a restarted broker off its port for a minute. The kernel's
/// table of TCP sockets names exactly the listening ones. The wait is for a broker that was just
/// killed: the kernel tears its io_uring down asynchronously, and the listening sockets its
/// pending accepts hold stay in LISTEN (and reset what they accept) for a few milliseconds.
fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    while port_listened_on(addr.port()) {
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("address {addr} is in use: another program listens on port {}", addr.port()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// Whether any TCP socket (IPv4 or IPv6) listens on `port`.
fn port_listened_on(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        // A kernel without IPv6 has no tcp6 table; nothing listens there then.
        std::fs::read_to_string(table).is_ok_and(|text| listening_ports(&text).any(|p| p == port))
    })
}

/// The local ports of the sockets in LISTEN state (`0A`) in a `/proc/net/tcp` table.
fn listening_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    const LISTEN: &str = "0A";
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        let (_, port) = local.rsplit_once(':')?;
        (state == LISTEN).then(|| u16::from_str_radix(port, 16).ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_come_only_from_listen_rows() {
        // Two rows of a real table: a listener on 127.0.0.1:6400 and a TIME_WAIT connection.
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1900 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
           1: 0100007F:1901 0100007F:D431 06 00000000:00000000 03:00000F8E 00000000     0        0 0 3\n";
        assert_eq!(listening_ports(table).collect::<Vec<_>>(), vec![0x1900]);
    }

    #[test]
    fn a_bound_listener_makes_its_port_busy_and_a_closed_one_frees_it() {
        let listeners = bind_shared("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let error = bind_shared(addr, 1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains(&format!("port {}", addr.port())), "{error}");
        drop(listeners);
        bind_shared(addr, 2).unwrap();
    }
}
