//! The listening sockets: one per shard on the same address, with SO_REUSEPORT, so the kernel
//! spreads incoming connections over the shards and no shard hands connections to another.
//!
//! SO_REUSEPORT would also let a second broker bind the same port and silently take half of the
//! new connections, so the port is first probed with a plain bind, which any listener there
//! makes fail.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each shard's listener.
const LISTEN_BACKLOG: i32 = 1024;

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

/// Fails with `AddrInUse` when anything listens on `addr` (a fixed port; port 0 always passes).
fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|error| {
        io::Error::new(error.kind(), format!("address {addr} is in use by another program ({error})"))
    })
}
