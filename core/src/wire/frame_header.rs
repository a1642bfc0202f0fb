//! The head every frame on a ringmq connection starts with, native or replication link: a `u32`
//! length (the bytes after the length field, so at least 1), then the `u8` frame type. This module
//! is the one parser of that head ([`peek_frame_header`]), used by the native codec and by
//! `ringmq-ha`'s record and link decoders, and its one writer ([`begin_frame`], [`end_frame`]).
//!
//! Not here: which type bytes exist (`frame_type`), the bodies (`codec`, `ringmq-ha`).
//!
//! Invariants:
//! - `peek_frame_header` never panics and consumes nothing. It judges the length as soon as its
//!   four bytes are in (too large, zero), without waiting for the type byte, and returns the
//!   header once the type byte is in too.
//! - `end_frame` never writes a length that `peek_frame_header` would refuse under
//!   `FRAME_BYTES_MAX`.

use bytes::{BufMut, BytesMut};

use crate::limits::FRAME_BYTES_MAX;

/// The head of the frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The whole frame's size in bytes, length prefix included; at most the `bytes_max` given to
    /// `peek_frame_header`.
    pub size: u32,
    /// The frame type byte.
    pub type_byte: u8,
}

/// A frame head that cannot start a valid frame. Each decoder turns it into its own error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHeaderError {
    /// The frame, length prefix included, is above the limit.
    TooLarge {
        /// The announced size in bytes, length prefix included (saturating at `u32::MAX`).
        size: u32,
        /// The most allowed, in bytes, length prefix included.
        max: u32,
    },
    /// The length is 0: not even the type byte.
    ZeroLength,
}

/// The head of the frame at the front of `buf`: `Ok(None)` until the length and the type byte
/// are both in. Consumes nothing; the frame is whole once `buf.len() >= size`.
///
/// # Errors
///
/// [`FrameHeaderError::TooLarge`] when the length announces more than `bytes_max` bytes (length
/// prefix included), [`FrameHeaderError::ZeroLength`] when it is 0; both as soon as the length's
/// four bytes are in.
pub fn peek_frame_header(buf: &[u8], bytes_max: u32) -> Result<Option<FrameHeader>, FrameHeaderError> {
    let [l0, l1, l2, l3, ref after_length @ ..] = buf[..] else {
        return Ok(None);
    };
    let length = u32::from_le_bytes([l0, l1, l2, l3]);
    let size = length.saturating_add(LENGTH_BYTES as u32);
    if size > bytes_max {
        return Err(FrameHeaderError::TooLarge { size, max: bytes_max });
    }
    if length == 0 {
        return Err(FrameHeaderError::ZeroLength);
    }
    Ok(after_length.first().map(|&type_byte| FrameHeader { size, type_byte }))
}

/// Writes a frame's length placeholder and its type byte; returns the frame's start offset, for
/// [`end_frame`].
pub fn begin_frame(out: &mut BytesMut, type_byte: u8) -> usize {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(type_byte);
    start
}

/// Patches the length of the frame that starts at `start` and ends at the end of `out`.
///
/// # Panics
///
/// When the frame has no type byte, or is larger than `FRAME_BYTES_MAX`.
pub fn end_frame(out: &mut BytesMut, start: usize) {
    let size = out.len() - start;
    assert!(size >= FRAME_HEADER_BYTES, "frame of {size} bytes has no type");
    assert!(size <= FRAME_BYTES_MAX as usize, "frame of {size} bytes exceeds FRAME_BYTES_MAX {FRAME_BYTES_MAX}");
    let length = (size - LENGTH_BYTES) as u32;
    out[start..start + LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
}

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes before a frame's body: the length prefix and the frame type.
pub const FRAME_HEADER_BYTES: usize = LENGTH_BYTES + 1;

// The length field is a `u32`, and a size that fits `FRAME_BYTES_MAX` fits a `usize` too.
const _: () = assert!(FRAME_BYTES_MAX as u64 <= u32::MAX as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_waits_for_the_type_byte_but_judges_the_length_at_once() {
        // Goal: incomplete and invalid stay apart. Method: feed a header byte by byte.
        assert_eq!(peek_frame_header(&[], 64), Ok(None));
        assert_eq!(peek_frame_header(&[3, 0, 0], 64), Ok(None));
        assert_eq!(peek_frame_header(&[3, 0, 0, 0], 64), Ok(None));
        assert_eq!(peek_frame_header(&[3, 0, 0, 0, 0x30], 64), Ok(Some(FrameHeader { size: 7, type_byte: 0x30 })));
        // Too large and zero are refused before the type byte arrives.
        assert_eq!(peek_frame_header(&[61, 0, 0, 0], 64), Err(FrameHeaderError::TooLarge { size: 65, max: 64 }));
        assert_eq!(peek_frame_header(&[0, 0, 0, 0], 64), Err(FrameHeaderError::ZeroLength));
        // The size saturates rather than wraps.
        let huge = peek_frame_header(&[0xff, 0xff, 0xff, 0xff], 64);
        assert_eq!(huge, Err(FrameHeaderError::TooLarge { size: u32::MAX, max: 64 }));
    }

    #[test]
    fn written_frames_parse_back_with_their_size_and_type() {
        // Goal: the writer and the parser agree.
        let mut out = BytesMut::from(&b"xy"[..]);
        let start = begin_frame(&mut out, 0x51);
        out.put_u64_le(9);
        end_frame(&mut out, start);
        let header = peek_frame_header(&out[start..], FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(header, FrameHeader { size: 13, type_byte: 0x51 });
        assert_eq!(header.size as usize, out.len() - start);
    }
}
