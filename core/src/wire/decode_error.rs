//! Why bytes are not a valid preamble or native frame ([`DecodeError`]), and the error code that
//! answers each reason.
//!
//! Invariants:
//! - An *invalid* input is a `DecodeError`; an *incomplete* one is never an error (the decoders
//!   return `Ok(None)` and wait for more bytes), so the two cannot be confused.
//! - Every message names what was allowed and what came.

use crate::wire::frame::ErrorCode;

/// Why bytes are not a valid preamble or frame. Every message names what was allowed and what came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first four bytes of a connection are not `RNMQ`.
    #[error("expected preamble \"RNMQ\", got \"{}\"", .got.escape_ascii())]
    BadMagic {
        /// The four bytes that came instead.
        got: [u8; 4],
    },
    /// The length prefix announces a frame larger than the connection's `max-frame-size`.
    #[error("frame of {size} bytes exceeds max-frame-size {max}")]
    FrameTooLarge {
        /// The announced frame size in bytes, length prefix included (saturating at `u32::MAX`).
        size: u32,
        /// The connection's `max-frame-size` in bytes, length prefix included.
        max: u32,
    },
    /// The frame type byte names no frame.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// A count (messages, ranges, headers, arguments, list entries) is above its limit.
    #[error("{frame}: batch of {count} {what} exceeds the limit {max}")]
    TooMany {
        /// The frame it came in, as named in `PROTOCOL.md` (`publish`, `settle`...).
        frame: &'static str,
        /// What is counted, plural (`messages`, `ranges`...).
        what: &'static str,
        /// The count that came.
        count: u32,
        /// The most allowed.
        max: u32,
    },
    /// A queue, exchange, binding-key or argument name is longer than `NAME_BYTES_MAX`.
    #[error("{frame}: {field} is {len} bytes, at most {max} allowed")]
    NameTooLong {
        /// The frame it came in.
        frame: &'static str,
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The most allowed, in bytes.
        max: u32,
    },
    /// Anything else that is not a valid frame: a truncated field, trailing bytes, a string that
    /// is not UTF-8, an enum or bool value out of range, a range with `first > last`...
    #[error("{frame}: {reason}")]
    Invalid {
        /// The frame it came in (`frame` when the frame type is not known yet).
        frame: &'static str,
        /// What was wrong: what was allowed and what came.
        reason: String,
    },
}

impl DecodeError {
    /// The error code to send in the `Error` frame that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } | DecodeError::TooMany { .. } | DecodeError::NameTooLong { .. } => {
                ErrorCode::LimitExceeded
            }
            DecodeError::BadMagic { .. } | DecodeError::UnknownFrameType(_) | DecodeError::Invalid { .. } => {
                ErrorCode::Malformed
            }
        }
    }
}
