//! Which wire protocol a new connection speaks, told by its first four bytes on the one port every
//! protocol shares: the native protocol opens with `RNMQ` (its preamble, `codec`), AMQP 1.0 with
//! `AMQP` (its protocol header: then a protocol id, 0 plain, 2 TLS, 3 SASL, and the version).
//!
//! This is where a second protocol enters: the shard asks `detect_protocol` before it reads a
//! preamble, and hands the connection to that protocol's engine, which turns its frames into the
//! shard's operations (the same ones the native frames are dispatched to, `Shard::handle_frame`).
//! Today only the native protocol is served; an AMQP header is refused as any other bad preamble
//! is, with an `Error` frame naming the bytes that came.
//!
//! Invariants:
//! - The protocol is decided as soon as four bytes are in, never later, and never changes for the
//!   connection.
//! - Anything that is not an AMQP header is the native protocol's to judge (its preamble decoder
//!   refuses a bad magic), so no bytes are refused here.

/// The magic that opens an AMQP 1.0 protocol header (AMQP 1.0, part 2.2).
pub const AMQP_MAGIC: [u8; 4] = *b"AMQP";

/// A wire protocol the shared port may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireProtocol {
    /// ringmq's native protocol (`PROTOCOL.md`), or bytes its preamble decoder will refuse.
    Native,
    /// AMQP 1.0 (any protocol id: plain, TLS or SASL).
    Amqp,
}

/// The protocol of a connection whose first bytes are `buf`; `None` until four bytes are in.
pub fn detect_protocol(buf: &[u8]) -> Option<WireProtocol> {
    let magic: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(if magic == AMQP_MAGIC { WireProtocol::Amqp } else { WireProtocol::Native })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_four_bytes_decide_the_protocol() {
        // Goal: fewer than four bytes decide nothing; an AMQP header (any protocol id) is AMQP;
        // the native preamble and any garbage are the native protocol's to judge.
        assert_eq!(detect_protocol(b""), None);
        assert_eq!(detect_protocol(b"AMQ"), None);
        assert_eq!(detect_protocol(b"AMQP"), Some(WireProtocol::Amqp));
        assert_eq!(detect_protocol(b"AMQP\x03\x01\x00\x00"), Some(WireProtocol::Amqp));
        assert_eq!(detect_protocol(b"RNMQ\x01\x00\x00\x00"), Some(WireProtocol::Native));
        assert_eq!(detect_protocol(b"GET / HTTP/1.1"), Some(WireProtocol::Native));
    }
}
