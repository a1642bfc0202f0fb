//! The one type a connection's bytes go through in the shell: reads, writes, the shutdown of
//! either direction, and the duplicate of its socket handed to another shard. Readers, writers,
//! dials, probes and hand-overs use nothing else, so a second transport (TLS) is one more variant
//! here and no change to the tasks that move the bytes.
//!
//! An enum, not a trait object: the set of transports is closed and known to the shell, a match
//! on one variant compiles to a direct call, and the futures stay unboxed on the hot path.
//!
//! Not here: what the bytes mean (the node decodes them), and which connections are read when
//! (`shard_loop`).
//!
//! Invariants:
//! - Bytes are read and written in order; `append` never overwrites what the buffer holds.
//! - A handed-over duplicate carries the whole connection: a variant that keeps state of its own
//!   above the socket (a TLS session) refuses to hand over rather than hand a socket without it.

use std::io;
use std::os::fd::AsFd;

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;

/// A connection's byte stream, whatever carries it.
#[derive(Debug)]
pub(crate) enum ConnectionStream {
    /// Plain TCP.
    Tcp(TcpStream),
}

impl ConnectionStream {
    /// Connects to `address` (`host:port`).
    ///
    /// # Errors
    /// The address does not resolve, or the connection is refused or fails.
    pub(crate) async fn connect(address: &str) -> io::Result<ConnectionStream> {
        TcpStream::connect(address).await.map(ConnectionStream::Tcp)
    }

    /// Takes over a socket another shard handed over (`hand_over`).
    ///
    /// # Errors
    /// The socket could not be registered with this shard's runtime.
    pub(crate) fn adopt(stream: std::net::TcpStream) -> io::Result<ConnectionStream> {
        TcpStream::from_std(stream).map(ConnectionStream::Tcp)
    }

    /// Turns Nagle's algorithm off: the node already batches what it writes.
    ///
    /// # Errors
    /// The socket option could not be set.
    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            ConnectionStream::Tcp(stream) => stream.set_nodelay(true),
        }
    }

    /// Reads into the spare capacity of `buffer`, after the bytes it holds, and returns the count
    /// (0 at the end of the stream) with the buffer.
    #[inline]
    pub(crate) async fn append(&self, buffer: BytesMut) -> BufResult<usize, BytesMut> {
        match self {
            ConnectionStream::Tcp(stream) => {
                // `&TcpStream` reads and writes: the runtime owns the operation's state.
                let mut stream = stream;
                stream.append(buffer).await
            }
        }
    }

    /// Writes all of `buffer`.
    #[inline]
    pub(crate) async fn write_all(&self, buffer: BytesMut) -> BufResult<(), BytesMut> {
        match self {
            ConnectionStream::Tcp(stream) => {
                let mut stream = stream;
                stream.write_all(buffer).await
            }
        }
    }

    /// Ends the write direction once everything written is out, so the peer sees the end of
    /// the stream (and, for TCP, its reader and then ours end the connection).
    ///
    /// # Errors
    /// The socket was already shut down or broken.
    pub(crate) async fn shutdown_write(&self) -> io::Result<()> {
        match self {
            ConnectionStream::Tcp(stream) => AsyncWrite::shutdown(&mut &*stream).await,
        }
    }

    /// Shuts both directions down now, so that this shard's reader sees the end at once.
    ///
    /// # Errors
    /// The socket was already shut down or broken.
    pub(crate) fn shutdown_now(&self) -> io::Result<()> {
        match self {
            ConnectionStream::Tcp(stream) => socket2::SockRef::from(&stream.as_fd()).shutdown(std::net::Shutdown::Both),
        }
    }

    /// A duplicate of the socket for another shard to `adopt`; the caller drops this one.
    ///
    /// # Errors
    /// The descriptor could not be duplicated.
    pub(crate) fn hand_over(&self) -> io::Result<std::net::TcpStream> {
        match self {
            ConnectionStream::Tcp(stream) => stream.as_fd().try_clone_to_owned().map(std::net::TcpStream::from),
        }
    }
}

impl From<TcpStream> for ConnectionStream {
    /// A connection accepted on the shared port.
    fn from(stream: TcpStream) -> ConnectionStream {
        ConnectionStream::Tcp(stream)
    }
}
