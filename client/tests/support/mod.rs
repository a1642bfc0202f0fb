//! A scripted stand-in for the broker: accepts one client, speaks the native protocol through
//! the real codec, and lets a test send and receive frames one by one. It checks nothing on its
//! own; each test asserts what it expects to receive.

#![allow(dead_code)] // Each test file uses a different part of it.

use std::time::Duration;

use bytes::BytesMut;
use ringmq_core::frame::{Frame, PREAMBLE_LEN, PROTOCOL_VERSION};
use ringmq_core::limits::FRAME_BYTES_MAX;
use ringmq_core::wire::codec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest a fake peer waits for the client's next frame before failing the test.
pub const PEER_WAIT: Duration = Duration::from_secs(10);

/// A listener on a free loopback port, and its address.
pub async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// The broker's end of one client connection.
pub struct FakePeer {
    /// The accepted socket.
    pub stream: TcpStream,
    /// Bytes read and not decoded yet.
    buf: BytesMut,
    /// The preamble flags the client sent.
    pub flags: u16,
}

impl FakePeer {
    /// Accepts a client and reads its preamble (no reply yet).
    pub async fn accept(listener: &TcpListener) -> FakePeer {
        let (stream, _) = tokio::time::timeout(PEER_WAIT, listener.accept()).await.expect("no client came").unwrap();
        let mut peer = FakePeer { stream, buf: BytesMut::new(), flags: 0 };
        while peer.buf.len() < PREAMBLE_LEN {
            let read = peer.stream.read_buf(&mut peer.buf).await.unwrap();
            assert!(read > 0, "client closed before its preamble");
        }
        let preamble = codec::decode_preamble(&peer.buf).unwrap().unwrap();
        assert_eq!(preamble.version, PROTOCOL_VERSION);
        peer.flags = preamble.flags;
        let _ = peer.buf.split_to(PREAMBLE_LEN);
        peer
    }

    /// Accepts a client and answers its preamble with `Hello`.
    pub async fn accept_with_hello(listener: &TcpListener) -> FakePeer {
        let mut peer = FakePeer::accept(listener).await;
        peer.send(&Frame::Hello { version: PROTOCOL_VERSION, broker: "fake 0".to_string() }).await;
        peer
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        codec::encode(frame, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    /// The client's next frame; `None` when it closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(PEER_WAIT, self.recv_untimed()).await.expect("client sent nothing in time")
    }

    /// Frames until one that is not a `Heartbeat`.
    pub async fn recv_not_heartbeat(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await {
                Some(Frame::Heartbeat) => continue,
                other => return other,
            }
        }
    }

    async fn recv_untimed(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = codec::decode(&mut self.buf, FRAME_BYTES_MAX).unwrap() {
                return Some(frame);
            }
            let read = self.stream.read_buf(&mut self.buf).await.ok()?;
            if read == 0 {
                assert!(self.buf.is_empty(), "client closed in the middle of a frame");
                return None;
            }
        }
    }
}
