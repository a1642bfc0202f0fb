//! The bytes of the native protocol: the preamble and every [`Frame`], encoded and decoded.
//!
//! `frame.rs` owns what a frame means; this module owns its bytes. The layout is specified, field
//! by field, in `PROTOCOL.md` at the repository root: little-endian; a frame is a `u32` length
//! (the bytes after the length field), a `u8` frame type, then the body.
//!
//! The hot paths have streaming writers ([`PublishWriter`], [`DeliverWriter`], [`ConfirmWriter`])
//! so that the broker and the client encode batches straight from their own storage, without
//! building a `Vec<Message>` first.
//!
//! What this module does *not* do: IO (bytes come in as a `BytesMut`, go out into one), and any
//! check that needs state. A `Hello` sent by a client decodes fine; the connection decides that it
//! is unexpected. A `Subscribe` with a prefetch above `PREFETCH_MAX` decodes fine; the broker
//! refuses it. The codec checks structure and the structural limits (frame size, counts, name
//! lengths) only.
//!
//! Invariants:
//! - `decode` never panics, whatever the bytes, and consumes bytes only when it returns a frame.
//! - `decode` keeps *incomplete* (`Ok(None)`: wait for more bytes) apart from *invalid* (`Err`:
//!   the caller sends an `Error` frame and closes the connection).
//! - Every count is checked against its limit before anything is allocated for it, and a `Vec` is
//!   never given more capacity than the remaining bytes of the frame could fill.
//! - Message fields of a decoded frame are slices of the frame's bytes: no body is copied.
//! - The encoding is canonical: every frame has exactly one byte form, so `encode` of a decoded
//!   frame gives back exactly the bytes it was decoded from (the fuzz target checks this).
//! - The writers produce the same bytes as `encode` of the equivalent `Frame`.
//! - `encode` and the writers assert every property that `decode` checks, so this code never
//!   sends a frame its own decoder would refuse.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{
    Binding, ConfirmOutcome, ConfirmRange, Delivered, ErrorCode, ExchangeInfo, ExchangeKind, Frame, Header, Message,
    Preamble, QueueInfo, QueueOptions, Settlement, TagRange, PREAMBLE_LEN, PREAMBLE_MAGIC,
};
use crate::ids::{ConsumerId, RequestId, Seq, Tag};
use crate::limits::{
    ARGUMENTS_MAX, BATCH_MESSAGES_MAX, FRAME_BYTES_MAX, HEADERS_MAX, LIST_ENTRIES_MAX, NAME_BYTES_MAX, RANGES_MAX,
};

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

/// Writes the 8-byte preamble: `RNMQ`, `u16` version, `u16` flags.
pub fn encode_preamble(preamble: Preamble, out: &mut BytesMut) {
    let start = out.len();
    out.put_slice(&PREAMBLE_MAGIC);
    out.put_u16_le(preamble.version);
    out.put_u16_le(preamble.flags);
    assert_eq!(out.len() - start, PREAMBLE_LEN);
}

/// Reads the preamble from the first `PREAMBLE_LEN` bytes of `buf`. Consumes nothing: the caller
/// drops `PREAMBLE_LEN` bytes after `Ok(Some(_))`; bytes after them are frames.
///
/// The version and flags are returned as they came: refusing a version is the broker's decision
/// (`UnsupportedVersion`), not the codec's.
///
/// # Errors
///
/// [`DecodeError::BadMagic`] when the first four bytes are not `RNMQ`.
pub fn decode_preamble(buf: &[u8]) -> Result<Option<Preamble>, DecodeError> {
    // The magic is judged as soon as its 4 bytes are in: a peer speaking another protocol is
    // refused without waiting for bytes it may never send.
    if let [m0, m1, m2, m3, ..] = *buf {
        let got = [m0, m1, m2, m3];
        if got != PREAMBLE_MAGIC {
            return Err(DecodeError::BadMagic { got });
        }
    }
    let [_, _, _, _, v0, v1, f0, f1, ..] = *buf else {
        return Ok(None);
    };
    Ok(Some(Preamble { version: u16::from_le_bytes([v0, v1]), flags: u16::from_le_bytes([f0, f1]) }))
}

/// Appends `frame` to `out`.
///
/// # Panics
///
/// When the frame breaks a rule that `decode` checks, since sending it would be a bug: a name
/// longer than `NAME_BYTES_MAX`, a string or byte field longer than its length prefix allows, a
/// count above its limit, a range with `first > last`, confirm ranges out of order, a batch whose
/// sequence numbers or tags would overflow `u64`, or a frame larger than `FRAME_BYTES_MAX`.
/// Frames produced by `decode` never panic here.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = begin_frame(out, frame_type(frame));
    match frame {
        Frame::QueueDeclare { request, name, options, arguments } => {
            out.put_u32_le(request.0);
            put_name(out, name);
            put_queue_options(out, options);
            put_arguments(out, arguments);
        }
        Frame::QueueDelete { request, name } | Frame::QueuePurge { request, name } => {
            out.put_u32_le(request.0);
            put_name(out, name);
        }
        Frame::QueueList { request }
        | Frame::ExchangeList { request }
        | Frame::Ok { request }
        | Frame::HaStatus { request }
        | Frame::HaPromote { request } => {
            out.put_u32_le(request.0);
        }
        Frame::ExchangeDeclare { request, name, kind, passive, arguments } => {
            out.put_u32_le(request.0);
            put_name(out, name);
            out.put_u8(exchange_kind_to_u8(*kind));
            put_bool(out, *passive);
            put_arguments(out, arguments);
        }
        Frame::ExchangeDelete { request, name } => {
            out.put_u32_le(request.0);
            put_name(out, name);
        }
        Frame::Bind { request, binding } | Frame::Unbind { request, binding } => {
            out.put_u32_le(request.0);
            put_binding(out, binding);
        }
        Frame::Publish { exchange, first_seq, messages } => {
            put_name(out, exchange);
            out.put_u64_le(first_seq.0);
            put_count(out, messages.len(), BATCH_MESSAGES_MAX);
            assert_batch_fits_u64(first_seq.0, messages.len());
            for message in messages {
                put_message(out, message);
            }
        }
        Frame::Subscribe { request, consumer, queue, prefetch } => {
            out.put_u32_le(request.0);
            out.put_u32_le(consumer.0);
            put_name(out, queue);
            out.put_u32_le(*prefetch);
        }
        Frame::Cancel { request, consumer } => {
            out.put_u32_le(request.0);
            out.put_u32_le(consumer.0);
        }
        Frame::Settle { consumer, settlement, ranges } => {
            out.put_u32_le(consumer.0);
            out.put_u8(settlement_to_u8(*settlement));
            put_count(out, ranges.len(), RANGES_MAX);
            for range in ranges {
                assert!(range.first <= range.last, "settle range {range:?} has first > last");
                out.put_u64_le(range.first.0);
                out.put_u64_le(range.last.0);
            }
        }
        Frame::Heartbeat => {}
        Frame::Hello { version, broker } => {
            out.put_u16_le(*version);
            put_text(out, broker);
        }
        Frame::Failed { request, code, message } => {
            out.put_u32_le(request.0);
            out.put_u16_le(error_code_to_u16(*code));
            put_text(out, message);
        }
        Frame::Error { code, message } => {
            out.put_u16_le(error_code_to_u16(*code));
            put_text(out, message);
        }
        Frame::Confirm { ranges } => {
            put_count(out, ranges.len(), RANGES_MAX);
            let mut previous: Option<Seq> = None;
            for range in ranges {
                assert_confirm_range_follows(previous, range);
                put_confirm_range(out, range);
                previous = Some(range.last);
            }
        }
        Frame::Deliver { consumer, first_tag, messages } => {
            out.put_u32_le(consumer.0);
            out.put_u64_le(first_tag.0);
            put_count(out, messages.len(), BATCH_MESSAGES_MAX);
            assert_batch_fits_u64(first_tag.0, messages.len());
            for delivered in messages {
                out.put_u8(deliver_flags(delivered.redelivered));
                put_message(out, &delivered.message);
            }
        }
        Frame::QueueListReply { request, queues } => {
            out.put_u32_le(request.0);
            put_count(out, queues.len(), LIST_ENTRIES_MAX);
            for queue in queues {
                put_name(out, &queue.name);
                out.put_u64_le(queue.depth);
                out.put_u64_le(queue.bytes);
                out.put_u64_le(queue.unacked);
                out.put_u32_le(queue.consumers);
                out.put_u64_le(queue.enqueued);
                out.put_u64_le(queue.dequeued);
            }
        }
        Frame::ExchangeListReply { request, exchanges } => {
            out.put_u32_le(request.0);
            put_count(out, exchanges.len(), LIST_ENTRIES_MAX);
            for exchange in exchanges {
                put_name(out, &exchange.name);
                out.put_u8(exchange_kind_to_u8(exchange.kind));
                out.put_u32_le(exchange.bindings);
            }
        }
        Frame::ConsumerCancelled { consumer, reason } => {
            out.put_u32_le(consumer.0);
            put_text(out, reason);
        }
        Frame::HaStatusReply { request, state, epoch, brokers_url, public_url } => {
            out.put_u32_le(request.0);
            put_name(out, state);
            out.put_u64_le(*epoch);
            put_text(out, brokers_url);
            put_text(out, public_url);
        }
    }
    end_frame(out, start);
}

/// Decodes the frame at the front of `buf`.
///
/// Returns `Ok(None)` while `buf` holds only part of a frame; nothing is consumed and the caller
/// reads more bytes. Returns `Ok(Some(frame))` after consuming exactly that frame's bytes; the
/// message fields of the frame are slices of those bytes. A length above `frame_bytes_max` is an
/// error as soon as the 4-byte length has arrived, and an unknown frame type as soon as its byte
/// has, without waiting for the body.
///
/// `frame_bytes_max` is the connection's `max-frame-size`, in bytes, length prefix included.
///
/// # Errors
///
/// Any [`DecodeError`]: the bytes are not a valid frame. Nothing about `buf` may be relied on
/// afterwards; the caller answers with an `Error` frame carrying [`DecodeError::code`] and closes
/// the connection.
///
/// # Panics
///
/// When `frame_bytes_max` is above `limits::FRAME_BYTES_MAX`: a runtime option may lower a limit,
/// never raise it.
pub fn decode(buf: &mut BytesMut, frame_bytes_max: u32) -> Result<Option<Frame>, DecodeError> {
    assert!(
        frame_bytes_max <= FRAME_BYTES_MAX,
        "max-frame-size {frame_bytes_max} is above FRAME_BYTES_MAX {FRAME_BYTES_MAX}"
    );
    let [l0, l1, l2, l3, ref after_length @ ..] = buf[..] else {
        return Ok(None);
    };
    let length = u32::from_le_bytes([l0, l1, l2, l3]);
    let size = length.saturating_add(LENGTH_BYTES);
    if size > frame_bytes_max {
        return Err(DecodeError::FrameTooLarge { size, max: frame_bytes_max });
    }
    if length == 0 {
        return Err(DecodeError::Invalid {
            frame: "frame",
            reason: "length is 0, at least 1 needed (the frame type)".to_string(),
        });
    }
    let Some(&type_byte) = after_length.first() else {
        return Ok(None);
    };
    let frame_type = FrameType::from_u8(type_byte).ok_or(DecodeError::UnknownFrameType(type_byte))?;
    // `size <= frame_bytes_max <= FRAME_BYTES_MAX`, so it fits a `usize`.
    let size = size as usize;
    if buf.len() < size {
        return Ok(None);
    }
    let bytes = buf.split_to(size).freeze();
    let mut reader = Reader { frame: frame_type.name(), bytes, position: FRAME_HEADER_BYTES };
    let frame = decode_body(frame_type, &mut reader)?;
    reader.finish()?;
    Ok(Some(frame))
}

/// The bytes `message` adds to a `Publish` frame; a `Deliver` frame adds one more (the flags).
/// With [`PublishWriter::bytes_len`], tells a batcher whether the next message still fits.
pub fn message_bytes_len(message: &Message) -> usize {
    let headers: usize = message.headers.iter().map(|header| 2 + header.name.len() + 2 + header.value.len()).sum();
    2 + message.routing_key.len() + 2 + message.message_id.len() + 2 + headers + 4 + message.body.len()
}

/// Streams a `Publish` frame into a buffer one message at a time.
///
/// `begin` writes the frame's head with placeholder length and count, `push` appends one message,
/// `finish` patches the length and the count. The bytes equal `encode` of the `Frame::Publish`
/// with the same messages. A writer dropped without `finish` leaves a frame with a zero length in
/// the buffer, which must not be sent: truncate the buffer back to where it was instead.
#[derive(Debug)]
pub struct PublishWriter<'a> {
    /// The buffer the frame is written into.
    out: &'a mut BytesMut,
    /// Where the frame starts in `out` and how many messages it holds.
    batch: Batch,
}

impl<'a> PublishWriter<'a> {
    /// Starts a `Publish` frame to `exchange` whose first message has sequence number `first_seq`.
    ///
    /// # Panics
    ///
    /// When `exchange` is longer than `NAME_BYTES_MAX`.
    pub fn begin(out: &'a mut BytesMut, exchange: &str, first_seq: Seq) -> PublishWriter<'a> {
        let start = begin_frame(out, FrameType::Publish);
        put_name(out, exchange);
        out.put_u64_le(first_seq.0);
        let batch = Batch::begin(out, start, first_seq.0);
        PublishWriter { out, batch }
    }

    /// Appends one message; its sequence number is `first_seq + count()`.
    ///
    /// # Panics
    ///
    /// When the frame already holds `BATCH_MESSAGES_MAX` messages, when the sequence number would
    /// overflow, or when a field of `message` is longer than its length prefix allows.
    pub fn push(&mut self, message: &Message) {
        self.batch.push_item(BATCH_MESSAGES_MAX);
        put_message(self.out, message);
    }

    /// Messages pushed so far.
    pub fn count(&self) -> u32 {
        self.batch.count
    }

    /// The frame's size so far in bytes, length prefix included; `finish` adds nothing to it.
    pub fn bytes_len(&self) -> usize {
        self.batch.bytes_len(self.out)
    }

    /// Completes the frame: patches its length and message count.
    ///
    /// # Panics
    ///
    /// When the frame is larger than `FRAME_BYTES_MAX`.
    pub fn finish(self) {
        self.batch.finish(self.out);
    }
}

/// Streams a `Deliver` frame into a buffer one message at a time; see [`PublishWriter`]. The bytes
/// equal `encode` of the `Frame::Deliver` with the same deliveries.
#[derive(Debug)]
pub struct DeliverWriter<'a> {
    /// The buffer the frame is written into.
    out: &'a mut BytesMut,
    /// Where the frame starts in `out` and how many messages it holds.
    batch: Batch,
}

impl<'a> DeliverWriter<'a> {
    /// Starts a `Deliver` frame to subscription `consumer` whose first message has tag `first_tag`.
    pub fn begin(out: &'a mut BytesMut, consumer: ConsumerId, first_tag: Tag) -> DeliverWriter<'a> {
        let start = begin_frame(out, FrameType::Deliver);
        out.put_u32_le(consumer.0);
        out.put_u64_le(first_tag.0);
        let batch = Batch::begin(out, start, first_tag.0);
        DeliverWriter { out, batch }
    }

    /// Appends one delivery; its tag is `first_tag + count()`.
    ///
    /// # Panics
    ///
    /// When the frame already holds `BATCH_MESSAGES_MAX` messages, when the tag would overflow, or
    /// when a field of `message` is longer than its length prefix allows.
    pub fn push(&mut self, redelivered: bool, message: &Message) {
        self.batch.push_item(BATCH_MESSAGES_MAX);
        self.out.put_u8(deliver_flags(redelivered));
        put_message(self.out, message);
    }

    /// Deliveries pushed so far.
    pub fn count(&self) -> u32 {
        self.batch.count
    }

    /// The frame's size so far in bytes, length prefix included; `finish` adds nothing to it.
    pub fn bytes_len(&self) -> usize {
        self.batch.bytes_len(self.out)
    }

    /// Completes the frame: patches its length and message count.
    ///
    /// # Panics
    ///
    /// When the frame is larger than `FRAME_BYTES_MAX`.
    pub fn finish(self) {
        self.batch.finish(self.out);
    }
}

/// Streams a `Confirm` frame into a buffer one range at a time, merging a range into the previous
/// one when it continues it (`first == previous.last + 1`) with an equal outcome. The bytes equal
/// `encode` of the `Frame::Confirm` with the merged ranges.
#[derive(Debug)]
pub struct ConfirmWriter<'a> {
    /// The buffer the frame is written into.
    out: &'a mut BytesMut,
    /// Where the frame starts in `out` and how many ranges it holds.
    batch: Batch,
    /// The last range written: its offset in `out` and its `last`, to extend it in place.
    tail: Option<(usize, Seq)>,
}

impl<'a> ConfirmWriter<'a> {
    /// Starts a `Confirm` frame.
    pub fn begin(out: &'a mut BytesMut) -> ConfirmWriter<'a> {
        let start = begin_frame(out, FrameType::Confirm);
        // Ranges carry their own sequence numbers, so the batch has no first number to overflow.
        let batch = Batch::begin(out, start, 0);
        ConfirmWriter { out, batch, tail: None }
    }

    /// Appends `range`, or extends the previous range when `range` continues it with an equal
    /// outcome.
    ///
    /// # Panics
    ///
    /// When `range.first > range.last`, when `range` does not start after the previous range, when
    /// a new range would be the `RANGES_MAX + 1`th, or when a rejected reason is longer than
    /// `u16::MAX` bytes.
    pub fn push(&mut self, range: ConfirmRange) {
        let previous = self.tail.map(|(_, last)| last);
        assert_confirm_range_follows(previous, &range);
        if let Some((offset, last)) = self.tail {
            // `range.first > last`, so `last + 1` does not overflow.
            if range.first.0 == last.0 + 1 && self.outcome_equals(offset, &range.outcome) {
                let last_at = offset + 8;
                self.out[last_at..last_at + 8].copy_from_slice(&range.last.0.to_le_bytes());
                self.tail = Some((offset, range.last));
                return;
            }
        }
        self.batch.push_item(RANGES_MAX);
        let offset = self.out.len();
        put_confirm_range(self.out, &range);
        self.tail = Some((offset, range.last));
    }

    /// Ranges written so far (after merging).
    pub fn count(&self) -> u32 {
        self.batch.count
    }

    /// The frame's size so far in bytes, length prefix included; `finish` adds nothing to it.
    pub fn bytes_len(&self) -> usize {
        self.batch.bytes_len(self.out)
    }

    /// Completes the frame: patches its length and range count.
    pub fn finish(self) {
        self.batch.finish(self.out);
    }

    /// Whether the outcome of the range written at `offset` (the last one) equals `outcome`,
    /// compared on the bytes so that the writer keeps no copy of a rejected reason.
    fn outcome_equals(&self, offset: usize, outcome: &ConfirmOutcome) -> bool {
        // The outcome follows the range's `first` and `last` and runs to the end of the buffer.
        let written = self.out.get(offset + 16..).unwrap_or_default();
        match outcome {
            ConfirmOutcome::Stored => written == [OUTCOME_STORED],
            ConfirmOutcome::Unroutable => written == [OUTCOME_UNROUTABLE],
            ConfirmOutcome::Rejected { code, reason } => {
                let [c0, c1] = error_code_to_u16(*code).to_le_bytes();
                let Ok(reason_len) = u16::try_from(reason.len()) else {
                    return false;
                };
                let [r0, r1] = reason_len.to_le_bytes();
                let head = [OUTCOME_REJECTED, c0, c1, r0, r1];
                written.get(..head.len()) == Some(&head[..]) && written.get(head.len()..) == Some(reason.as_bytes())
            }
        }
    }
}

// ----- encoding helpers -----

/// The part of a batch frame the writers share: where the frame and its count are, and the count.
/// The writers hold the buffer by `&mut` until `finish`, so nothing else can write into the frame.
#[derive(Debug)]
struct Batch {
    /// Offset of the frame's length field in the buffer.
    start: usize,
    /// Offset of the `u32` count in the buffer.
    count_at: usize,
    /// The first sequence number or tag; zero for a confirm.
    first: u64,
    /// Items pushed so far.
    count: u32,
}

impl Batch {
    /// Writes the placeholder count; the frame's head is already in `out`.
    fn begin(out: &mut BytesMut, start: usize, first: u64) -> Batch {
        let count_at = out.len();
        out.put_u32_le(0);
        Batch { start, count_at, first, count: 0 }
    }

    /// Counts one more item, about to be written.
    fn push_item(&mut self, count_max: u32) {
        assert!(self.count < count_max, "batch already holds the limit of {count_max} items");
        assert!(
            self.first.checked_add(u64::from(self.count)).is_some(),
            "batch starting at {} overflows u64 at item {}",
            self.first,
            self.count
        );
        self.count += 1;
    }

    /// The frame's size so far in bytes, length prefix included.
    fn bytes_len(&self, out: &BytesMut) -> usize {
        out.len() - self.start
    }

    /// Patches the count and the frame length.
    fn finish(self, out: &mut BytesMut) {
        out[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        end_frame(out, self.start);
    }
}

/// Writes a frame's length placeholder and type; returns the frame's start offset.
fn begin_frame(out: &mut BytesMut, frame_type: FrameType) -> usize {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(frame_type as u8);
    start
}

/// Patches the length of the frame that starts at `start` and ends at the end of `out`.
fn end_frame(out: &mut BytesMut, start: usize) {
    let size = out.len() - start;
    assert!(size >= FRAME_HEADER_BYTES, "frame of {size} bytes has no type");
    assert!(size <= FRAME_BYTES_MAX as usize, "frame of {size} bytes exceeds FRAME_BYTES_MAX {FRAME_BYTES_MAX}");
    let length = (size - LENGTH_BYTES as usize) as u32;
    out[start..start + LENGTH_BYTES as usize].copy_from_slice(&length.to_le_bytes());
}

fn put_count(out: &mut BytesMut, count: usize, count_max: u32) {
    assert!(count <= count_max as usize, "count {count} exceeds the limit {count_max}");
    out.put_u32_le(count as u32);
}

fn assert_batch_fits_u64(first: u64, count: usize) {
    if let Some(last_offset) = count.checked_sub(1) {
        assert!(first.checked_add(last_offset as u64).is_some(), "batch of {count} starting at {first} overflows u64");
    }
}

fn assert_confirm_range_follows(previous: Option<Seq>, range: &ConfirmRange) {
    assert!(range.first <= range.last, "confirm range {range:?} has first > last");
    if let Some(previous) = previous {
        assert!(range.first > previous, "confirm range {range:?} does not follow {previous:?}");
    }
}

/// Writes a queue, exchange or binding name (`u16` length, at most `NAME_BYTES_MAX`).
pub fn put_name(out: &mut BytesMut, name: &str) {
    assert!(
        name.len() <= NAME_BYTES_MAX as usize,
        "name of {} bytes exceeds NAME_BYTES_MAX {NAME_BYTES_MAX}",
        name.len()
    );
    put_bytes16(out, name.as_bytes());
}

fn put_text(out: &mut BytesMut, text: &str) {
    put_bytes16(out, text.as_bytes());
}

/// Writes a byte field with a `u16` length prefix.
pub fn put_bytes16(out: &mut BytesMut, bytes: &[u8]) {
    assert!(bytes.len() <= u16::MAX as usize, "field of {} bytes exceeds u16::MAX", bytes.len());
    out.put_u16_le(bytes.len() as u16);
    out.put_slice(bytes);
}

/// Writes a bool as one byte, 0 or 1.
pub fn put_bool(out: &mut BytesMut, value: bool) {
    out.put_u8(u8::from(value));
}

/// Writes an optional `u64`: a presence byte, then the value (0 when absent).
pub fn put_option_u64(out: &mut BytesMut, value: Option<u64>) {
    // An absent value is written as 0 and must be 0 on decode, so the encoding stays canonical.
    put_bool(out, value.is_some());
    out.put_u64_le(value.unwrap_or(0));
}

/// Writes queue options: exclusive, auto-delete, passive, max-count, max-bytes.
pub fn put_queue_options(out: &mut BytesMut, options: &QueueOptions) {
    put_bool(out, options.exclusive);
    put_bool(out, options.auto_delete);
    put_bool(out, options.passive);
    put_option_u64(out, options.max_count);
    put_option_u64(out, options.max_bytes);
}

fn put_arguments(out: &mut BytesMut, arguments: &[(String, String)]) {
    put_count(out, arguments.len(), ARGUMENTS_MAX);
    for (name, value) in arguments {
        put_name(out, name);
        put_text(out, value);
    }
}

fn put_binding(out: &mut BytesMut, binding: &Binding) {
    put_name(out, &binding.exchange);
    put_name(out, &binding.queue);
    put_name(out, &binding.key);
}

/// Writes one message as publish and deliver frames carry it.
pub fn put_message(out: &mut BytesMut, message: &Message) {
    put_bytes16(out, &message.routing_key);
    put_bytes16(out, &message.message_id);
    assert!(
        message.headers.len() <= HEADERS_MAX as usize,
        "message has {} headers, HEADERS_MAX is {HEADERS_MAX}",
        message.headers.len()
    );
    out.put_u16_le(message.headers.len() as u16);
    for header in &message.headers {
        put_bytes16(out, &header.name);
        put_bytes16(out, &header.value);
    }
    assert!(
        message.body.len() <= FRAME_BYTES_MAX as usize,
        "body of {} bytes exceeds FRAME_BYTES_MAX {FRAME_BYTES_MAX}",
        message.body.len()
    );
    out.put_u32_le(message.body.len() as u32);
    out.put_slice(&message.body);
}

fn put_confirm_range(out: &mut BytesMut, range: &ConfirmRange) {
    out.put_u64_le(range.first.0);
    out.put_u64_le(range.last.0);
    match &range.outcome {
        ConfirmOutcome::Stored => out.put_u8(OUTCOME_STORED),
        ConfirmOutcome::Unroutable => out.put_u8(OUTCOME_UNROUTABLE),
        ConfirmOutcome::Rejected { code, reason } => {
            out.put_u8(OUTCOME_REJECTED);
            out.put_u16_le(error_code_to_u16(*code));
            put_text(out, reason);
        }
    }
}

fn deliver_flags(redelivered: bool) -> u8 {
    if redelivered {
        DELIVER_FLAG_REDELIVERED
    } else {
        0
    }
}

// ----- decoding helpers -----

fn decode_body(frame_type: FrameType, r: &mut Reader) -> Result<Frame, DecodeError> {
    // Struct fields are evaluated in the order written, which is the order on the wire.
    let frame = match frame_type {
        FrameType::QueueDeclare => Frame::QueueDeclare {
            request: r.request()?,
            name: r.name("name")?,
            options: QueueOptions {
                exclusive: r.bool("exclusive")?,
                auto_delete: r.bool("auto-delete")?,
                passive: r.bool("passive")?,
                max_count: r.option_u64("max-count")?,
                max_bytes: r.option_u64("max-bytes")?,
            },
            arguments: r.arguments()?,
        },
        FrameType::QueueDelete => Frame::QueueDelete { request: r.request()?, name: r.name("name")? },
        FrameType::QueuePurge => Frame::QueuePurge { request: r.request()?, name: r.name("name")? },
        FrameType::QueueList => Frame::QueueList { request: r.request()? },
        FrameType::ExchangeDeclare => Frame::ExchangeDeclare {
            request: r.request()?,
            name: r.name("name")?,
            kind: r.exchange_kind()?,
            passive: r.bool("passive")?,
            arguments: r.arguments()?,
        },
        FrameType::ExchangeDelete => Frame::ExchangeDelete { request: r.request()?, name: r.name("name")? },
        FrameType::ExchangeList => Frame::ExchangeList { request: r.request()? },
        FrameType::HaStatus => Frame::HaStatus { request: r.request()? },
        FrameType::HaPromote => Frame::HaPromote { request: r.request()? },
        FrameType::HaStatusReply => Frame::HaStatusReply {
            request: r.request()?,
            state: r.name("state")?,
            epoch: r.u64("epoch")?,
            brokers_url: r.text("brokers-url")?,
            public_url: r.text("public-url")?,
        },
        FrameType::Bind => Frame::Bind { request: r.request()?, binding: r.binding()? },
        FrameType::Unbind => Frame::Unbind { request: r.request()?, binding: r.binding()? },
        FrameType::Publish => {
            let exchange = r.name("exchange")?;
            let first_seq = Seq(r.u64("first-seq")?);
            let (count, capacity) = r.count("messages", BATCH_MESSAGES_MAX, MESSAGE_BYTES_MIN)?;
            r.check_batch_fits_u64("first-seq", first_seq.0, count)?;
            let mut messages = Vec::with_capacity(capacity);
            for _ in 0..count {
                messages.push(r.message()?);
            }
            Frame::Publish { exchange, first_seq, messages }
        }
        FrameType::Subscribe => Frame::Subscribe {
            request: r.request()?,
            consumer: ConsumerId(r.u32("consumer")?),
            queue: r.name("queue")?,
            prefetch: r.u32("prefetch")?,
        },
        FrameType::Cancel => Frame::Cancel { request: r.request()?, consumer: ConsumerId(r.u32("consumer")?) },
        FrameType::Settle => {
            let consumer = ConsumerId(r.u32("consumer")?);
            let settlement = r.settlement()?;
            let (count, capacity) = r.count("ranges", RANGES_MAX, TAG_RANGE_BYTES)?;
            let mut ranges = Vec::with_capacity(capacity);
            for _ in 0..count {
                let (first, last) = r.range()?;
                ranges.push(TagRange { first: Tag(first), last: Tag(last) });
            }
            Frame::Settle { consumer, settlement, ranges }
        }
        FrameType::Heartbeat => Frame::Heartbeat,
        FrameType::Hello => Frame::Hello { version: r.u16("version")?, broker: r.text("broker")? },
        FrameType::Ok => Frame::Ok { request: r.request()? },
        FrameType::Failed => {
            Frame::Failed { request: r.request()?, code: r.error_code()?, message: r.text("message")? }
        }
        FrameType::Error => Frame::Error { code: r.error_code()?, message: r.text("message")? },
        FrameType::Confirm => {
            let (count, capacity) = r.count("ranges", RANGES_MAX, CONFIRM_RANGE_BYTES_MIN)?;
            let mut ranges: Vec<ConfirmRange> = Vec::with_capacity(capacity);
            for _ in 0..count {
                let (first, last) = r.range()?;
                if let Some(previous) = ranges.last() {
                    if first <= previous.last.0 {
                        return Err(r.invalid(format!(
                            "range {first}..={last} does not start after the previous range's \
                             last {}; ranges must increase",
                            previous.last.0
                        )));
                    }
                }
                let outcome = r.confirm_outcome()?;
                ranges.push(ConfirmRange { first: Seq(first), last: Seq(last), outcome });
            }
            Frame::Confirm { ranges }
        }
        FrameType::Deliver => {
            let consumer = ConsumerId(r.u32("consumer")?);
            let first_tag = Tag(r.u64("first-tag")?);
            let (count, capacity) = r.count("messages", BATCH_MESSAGES_MAX, MESSAGE_BYTES_MIN + 1)?;
            r.check_batch_fits_u64("first-tag", first_tag.0, count)?;
            let mut messages = Vec::with_capacity(capacity);
            for _ in 0..count {
                let flags = r.u8("flags")?;
                if flags & !DELIVER_FLAG_REDELIVERED != 0 {
                    return Err(r.invalid(format!("flags are 0x{flags:02x}, only bit 0 (redelivered) may be set")));
                }
                let redelivered = flags & DELIVER_FLAG_REDELIVERED != 0;
                messages.push(Delivered { redelivered, message: r.message()? });
            }
            Frame::Deliver { consumer, first_tag, messages }
        }
        FrameType::QueueListReply => {
            let request = r.request()?;
            let (count, capacity) = r.count("entries", LIST_ENTRIES_MAX, QUEUE_INFO_BYTES_MIN)?;
            let mut queues = Vec::with_capacity(capacity);
            for _ in 0..count {
                queues.push(QueueInfo {
                    name: r.name("queue name")?,
                    depth: r.u64("depth")?,
                    bytes: r.u64("bytes")?,
                    unacked: r.u64("unacked")?,
                    consumers: r.u32("consumers")?,
                    enqueued: r.u64("enqueued")?,
                    dequeued: r.u64("dequeued")?,
                });
            }
            Frame::QueueListReply { request, queues }
        }
        FrameType::ExchangeListReply => {
            let request = r.request()?;
            let (count, capacity) = r.count("entries", LIST_ENTRIES_MAX, EXCHANGE_INFO_BYTES_MIN)?;
            let mut exchanges = Vec::with_capacity(capacity);
            for _ in 0..count {
                exchanges.push(ExchangeInfo {
                    name: r.name("exchange name")?,
                    kind: r.exchange_kind()?,
                    bindings: r.u32("bindings")?,
                });
            }
            Frame::ExchangeListReply { request, exchanges }
        }
        FrameType::ConsumerCancelled => {
            Frame::ConsumerCancelled { consumer: ConsumerId(r.u32("consumer")?), reason: r.text("reason")? }
        }
    };
    Ok(frame)
}

/// A cursor over one complete frame. Every read checks the bounds first, so no input can make it
/// panic; byte fields come out as slices of the frame.
/// A cursor over one complete frame, shared by every codec on the native framing (this one, and
/// the replication records in `ringmq-ha`). Every read checks the bounds first, so no input can
/// make it panic; errors name the frame and the field.
pub struct Reader {
    /// The frame's name, for error messages.
    frame: &'static str,
    /// The whole frame, length prefix included.
    bytes: Bytes,
    /// Offset of the next unread byte in `bytes`.
    position: usize,
}

impl Reader {
    /// A reader over `bytes` (a whole frame, length prefix included) for the frame named `frame`,
    /// starting at `position`.
    pub fn new(frame: &'static str, bytes: Bytes, position: usize) -> Reader {
        Reader { frame, bytes, position }
    }

    /// Bytes not read yet.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    #[cold]
    #[inline(never)]
    fn invalid(&self, reason: String) -> DecodeError {
        DecodeError::Invalid { frame: self.frame, reason }
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, field: &'static str, needed: usize) -> DecodeError {
        self.invalid(format!("truncated: {field} needs {needed} bytes, {} remain", self.remaining()))
    }

    /// The next `len` bytes, borrowed.
    #[inline]
    fn take(&mut self, field: &'static str, len: usize) -> Result<&[u8], DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(field, len));
        }
        let start = self.position;
        self.position += len;
        match self.bytes.get(start..self.position) {
            Some(slice) => Ok(slice),
            None => Err(self.truncated(field, len)),
        }
    }

    /// The next `len` bytes, as a slice of the frame (no copy).
    #[inline]
    fn slice(&mut self, field: &'static str, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(field, len));
        }
        let start = self.position;
        self.position += len;
        Ok(self.bytes.slice(start..self.position))
    }

    #[inline]
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        if N > self.remaining() {
            return Err(self.truncated(field, N));
        }
        let start = self.position;
        self.position += N;
        match self.bytes.get(start..self.position).map(<[u8; N]>::try_from) {
            Some(Ok(array)) => Ok(array),
            _ => Err(self.truncated(field, N)),
        }
    }

    #[inline]
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [byte] = self.array(field)?;
        Ok(byte)
    }

    #[inline]
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_le_bytes)
    }

    #[inline]
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    #[inline]
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn request(&mut self) -> Result<RequestId, DecodeError> {
        self.u32("request").map(RequestId)
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(format!("{field} is {other}, a bool must be 0 or 1"))),
        }
    }

    pub fn option_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        let present = self.bool(field)?;
        let value = self.u64(field)?;
        match (present, value) {
            (true, value) => Ok(Some(value)),
            (false, 0) => Ok(None),
            (false, value) => {
                Err(self.invalid(format!("{field} is absent but carries {value}; an absent value must be 0")))
            }
        }
    }

    /// A `u16`-prefixed byte field, as a slice of the frame.
    #[inline]
    pub fn bytes16(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.slice(field, usize::from(len))
    }

    /// A `u16`-prefixed UTF-8 string of any length.
    fn text(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)?;
        self.utf8(field, usize::from(len))
    }

    /// A `u16`-prefixed UTF-8 string of at most `NAME_BYTES_MAX` bytes.
    pub fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > NAME_BYTES_MAX as usize {
            return Err(DecodeError::NameTooLong { frame: self.frame, field, len, max: NAME_BYTES_MAX });
        }
        self.utf8(field, len)
    }

    fn utf8(&mut self, field: &'static str, len: usize) -> Result<String, DecodeError> {
        let frame = self.frame;
        let bytes = self.take(field, len)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_string()),
            Err(error) => Err(DecodeError::Invalid { frame, reason: format!("{field} is not UTF-8: {error}") }),
        }
    }

    /// A `u32` count checked against `count_max`, and the capacity to allocate for it: no more
    /// than the remaining bytes could fill with items of `item_bytes_min` bytes, so that a short
    /// frame claiming many items cannot make the decoder allocate much.
    fn count(
        &mut self,
        what: &'static str,
        count_max: u32,
        item_bytes_min: usize,
    ) -> Result<(u32, usize), DecodeError> {
        let count = self.u32(what)?;
        if count > count_max {
            return Err(DecodeError::TooMany { frame: self.frame, what, count, max: count_max });
        }
        let capacity = (count as usize).min(self.remaining() / item_bytes_min);
        Ok((count, capacity))
    }

    /// Refuses a batch whose last sequence number or tag would overflow `u64`, so that the
    /// broker can compute `first + index` for every item without overflow.
    fn check_batch_fits_u64(&self, field: &'static str, first: u64, count: u32) -> Result<(), DecodeError> {
        match count.checked_sub(1) {
            Some(last_offset) if first.checked_add(u64::from(last_offset)).is_none() => {
                Err(self.invalid(format!("{field} {first} plus {count} items overflows u64")))
            }
            _ => Ok(()),
        }
    }

    /// An inclusive range: `u64 first`, `u64 last`, with `first <= last`.
    fn range(&mut self) -> Result<(u64, u64), DecodeError> {
        let first = self.u64("range first")?;
        let last = self.u64("range last")?;
        if first > last {
            return Err(self.invalid(format!("range {first}..={last} has first > last")));
        }
        Ok((first, last))
    }

    pub fn message(&mut self) -> Result<Message, DecodeError> {
        let routing_key = self.bytes16("routing key")?;
        let message_id = self.bytes16("message id")?;
        let header_count = self.u16("headers")?;
        if u32::from(header_count) > HEADERS_MAX {
            return Err(DecodeError::TooMany {
                frame: self.frame,
                what: "headers",
                count: u32::from(header_count),
                max: HEADERS_MAX,
            });
        }
        let capacity = usize::from(header_count).min(self.remaining() / HEADER_BYTES_MIN);
        let mut headers = Vec::with_capacity(capacity);
        for _ in 0..header_count {
            headers.push(Header { name: self.bytes16("header name")?, value: self.bytes16("header value")? });
        }
        let body_len = self.u32("body")?;
        let body = self.slice("body", body_len as usize)?;
        Ok(Message { routing_key, message_id, headers, body })
    }

    fn arguments(&mut self) -> Result<Vec<(String, String)>, DecodeError> {
        let (count, capacity) = self.count("arguments", ARGUMENTS_MAX, ARGUMENT_BYTES_MIN)?;
        let mut arguments = Vec::with_capacity(capacity);
        for _ in 0..count {
            arguments.push((self.name("argument name")?, self.text("argument value")?));
        }
        Ok(arguments)
    }

    fn binding(&mut self) -> Result<Binding, DecodeError> {
        Ok(Binding { exchange: self.name("exchange")?, queue: self.name("queue")?, key: self.name("key")? })
    }

    fn exchange_kind(&mut self) -> Result<ExchangeKind, DecodeError> {
        match self.u8("exchange kind")? {
            0 => Ok(ExchangeKind::Direct),
            1 => Ok(ExchangeKind::Fanout),
            2 => Ok(ExchangeKind::Topic),
            other => {
                Err(self.invalid(format!("exchange kind is {other}, must be 0 (direct), 1 (fanout) or 2 (topic)")))
            }
        }
    }

    fn settlement(&mut self) -> Result<Settlement, DecodeError> {
        match self.u8("settlement")? {
            0 => Ok(Settlement::Ack),
            1 => Ok(Settlement::Reject),
            2 => Ok(Settlement::Release),
            other => Err(self.invalid(format!("settlement is {other}, must be 0 (ack), 1 (reject) or 2 (release)"))),
        }
    }

    fn error_code(&mut self) -> Result<ErrorCode, DecodeError> {
        let value = self.u16("error code")?;
        error_code_from_u16(value).ok_or_else(|| {
            self.invalid(format!("error code is {value}, must be in {}..={}", ERROR_CODE_FIRST, ERROR_CODE_LAST))
        })
    }

    fn confirm_outcome(&mut self) -> Result<ConfirmOutcome, DecodeError> {
        match self.u8("outcome")? {
            OUTCOME_STORED => Ok(ConfirmOutcome::Stored),
            OUTCOME_UNROUTABLE => Ok(ConfirmOutcome::Unroutable),
            OUTCOME_REJECTED => Ok(ConfirmOutcome::Rejected { code: self.error_code()?, reason: self.text("reason")? }),
            other => {
                Err(self.invalid(format!("outcome is {other}, must be 0 (stored), 1 (unroutable) or 2 (rejected)")))
            }
        }
    }

    /// Refuses bytes left over after the body: a frame is exactly as long as its length says.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(self.invalid(format!("trailing {trailing} bytes after frame body"))),
        }
    }
}

/// Frame type numbers: client to broker below 0x80, broker to client from 0x80. `Heartbeat`
/// travels both ways. `PROTOCOL.md` lists the same numbers; they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
enum FrameType {
    Heartbeat = 0x01,
    QueueDeclare = 0x10,
    QueueDelete = 0x11,
    QueuePurge = 0x12,
    QueueList = 0x13,
    ExchangeDeclare = 0x18,
    ExchangeDelete = 0x19,
    ExchangeList = 0x1a,
    Bind = 0x20,
    Unbind = 0x21,
    Publish = 0x30,
    Subscribe = 0x31,
    Cancel = 0x32,
    Settle = 0x33,
    HaStatus = 0x40,
    HaPromote = 0x41,
    Hello = 0x80,
    Ok = 0x81,
    Failed = 0x82,
    Error = 0x83,
    Confirm = 0x90,
    Deliver = 0x91,
    ConsumerCancelled = 0x92,
    QueueListReply = 0xa0,
    ExchangeListReply = 0xa1,
    HaStatusReply = 0xa2,
}

impl FrameType {
    fn from_u8(value: u8) -> Option<FrameType> {
        FRAME_TYPES.iter().copied().find(|frame_type| *frame_type as u8 == value)
    }

    /// The frame's name in `PROTOCOL.md` and in error messages.
    fn name(self) -> &'static str {
        match self {
            FrameType::Heartbeat => "heartbeat",
            FrameType::QueueDeclare => "queue-declare",
            FrameType::QueueDelete => "queue-delete",
            FrameType::QueuePurge => "queue-purge",
            FrameType::QueueList => "queue-list",
            FrameType::ExchangeDeclare => "exchange-declare",
            FrameType::ExchangeDelete => "exchange-delete",
            FrameType::ExchangeList => "exchange-list",
            FrameType::Bind => "bind",
            FrameType::Unbind => "unbind",
            FrameType::Publish => "publish",
            FrameType::Subscribe => "subscribe",
            FrameType::Cancel => "cancel",
            FrameType::Settle => "settle",
            FrameType::Hello => "hello",
            FrameType::Ok => "ok",
            FrameType::Failed => "failed",
            FrameType::Error => "error",
            FrameType::Confirm => "confirm",
            FrameType::Deliver => "deliver",
            FrameType::ConsumerCancelled => "consumer-cancelled",
            FrameType::QueueListReply => "queue-list-reply",
            FrameType::ExchangeListReply => "exchange-list-reply",
            FrameType::HaStatus => "ha-status",
            FrameType::HaPromote => "ha-promote",
            FrameType::HaStatusReply => "ha-status-reply",
        }
    }
}

fn frame_type(frame: &Frame) -> FrameType {
    match frame {
        Frame::QueueDeclare { .. } => FrameType::QueueDeclare,
        Frame::QueueDelete { .. } => FrameType::QueueDelete,
        Frame::QueuePurge { .. } => FrameType::QueuePurge,
        Frame::QueueList { .. } => FrameType::QueueList,
        Frame::ExchangeDeclare { .. } => FrameType::ExchangeDeclare,
        Frame::ExchangeDelete { .. } => FrameType::ExchangeDelete,
        Frame::ExchangeList { .. } => FrameType::ExchangeList,
        Frame::Bind { .. } => FrameType::Bind,
        Frame::Unbind { .. } => FrameType::Unbind,
        Frame::Publish { .. } => FrameType::Publish,
        Frame::Subscribe { .. } => FrameType::Subscribe,
        Frame::Cancel { .. } => FrameType::Cancel,
        Frame::Settle { .. } => FrameType::Settle,
        Frame::Heartbeat => FrameType::Heartbeat,
        Frame::Hello { .. } => FrameType::Hello,
        Frame::Ok { .. } => FrameType::Ok,
        Frame::Failed { .. } => FrameType::Failed,
        Frame::Error { .. } => FrameType::Error,
        Frame::Confirm { .. } => FrameType::Confirm,
        Frame::Deliver { .. } => FrameType::Deliver,
        Frame::ConsumerCancelled { .. } => FrameType::ConsumerCancelled,
        Frame::QueueListReply { .. } => FrameType::QueueListReply,
        Frame::ExchangeListReply { .. } => FrameType::ExchangeListReply,
        Frame::HaStatus { .. } => FrameType::HaStatus,
        Frame::HaPromote { .. } => FrameType::HaPromote,
        Frame::HaStatusReply { .. } => FrameType::HaStatusReply,
    }
}

fn exchange_kind_to_u8(kind: ExchangeKind) -> u8 {
    match kind {
        ExchangeKind::Direct => 0,
        ExchangeKind::Fanout => 1,
        ExchangeKind::Topic => 2,
    }
}

fn settlement_to_u8(settlement: Settlement) -> u8 {
    match settlement {
        Settlement::Ack => 0,
        Settlement::Reject => 1,
        Settlement::Release => 2,
    }
}

/// Error codes on the wire. The numbers are stable: `PROTOCOL.md` lists them, and a number is
/// never reused for another meaning. 0 is not a code.
fn error_code_to_u16(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Malformed => 1,
        ErrorCode::LimitExceeded => 2,
        ErrorCode::UnsupportedVersion => 3,
        ErrorCode::UnexpectedFrame => 4,
        ErrorCode::NotFound => 5,
        ErrorCode::PreconditionFailed => 6,
        ErrorCode::QueueFull => 7,
        ErrorCode::InvalidArgument => 8,
        ErrorCode::ResourceLocked => 9,
        ErrorCode::NotPrimary => 10,
        ErrorCode::Internal => 11,
    }
}

fn error_code_from_u16(value: u16) -> Option<ErrorCode> {
    ERROR_CODES.iter().copied().find(|code| error_code_to_u16(*code) == value)
}

// ----- constants -----

/// Bytes of the length prefix.
const LENGTH_BYTES: u32 = 4;
/// Bytes before a frame's body: the length prefix and the frame type.
const FRAME_HEADER_BYTES: usize = LENGTH_BYTES as usize + 1;

/// Every frame type, for decoding the type byte.
const FRAME_TYPES: [FrameType; 26] = [
    FrameType::Heartbeat,
    FrameType::QueueDeclare,
    FrameType::QueueDelete,
    FrameType::QueuePurge,
    FrameType::QueueList,
    FrameType::ExchangeDeclare,
    FrameType::ExchangeDelete,
    FrameType::ExchangeList,
    FrameType::Bind,
    FrameType::Unbind,
    FrameType::Publish,
    FrameType::Subscribe,
    FrameType::Cancel,
    FrameType::Settle,
    FrameType::Hello,
    FrameType::Ok,
    FrameType::Failed,
    FrameType::Error,
    FrameType::Confirm,
    FrameType::Deliver,
    FrameType::ConsumerCancelled,
    FrameType::QueueListReply,
    FrameType::ExchangeListReply,
    FrameType::HaStatus,
    FrameType::HaPromote,
    FrameType::HaStatusReply,
];

/// Every error code, for decoding.
const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::Malformed,
    ErrorCode::LimitExceeded,
    ErrorCode::UnsupportedVersion,
    ErrorCode::UnexpectedFrame,
    ErrorCode::NotFound,
    ErrorCode::PreconditionFailed,
    ErrorCode::QueueFull,
    ErrorCode::InvalidArgument,
    ErrorCode::ResourceLocked,
    ErrorCode::NotPrimary,
    ErrorCode::Internal,
];
/// The lowest error code number.
const ERROR_CODE_FIRST: u16 = 1;
/// The highest error code number.
const ERROR_CODE_LAST: u16 = 11;

/// Confirm outcome: stored on every queue it routed to.
const OUTCOME_STORED: u8 = 0;
/// Confirm outcome: routed to no queue.
const OUTCOME_UNROUTABLE: u8 = 1;
/// Confirm outcome: rejected; a `u16` error code and a reason follow.
const OUTCOME_REJECTED: u8 = 2;

/// Deliver flags bit 0: the message was delivered before.
const DELIVER_FLAG_REDELIVERED: u8 = 1;

/// Smallest encoded message, in bytes: empty routing key, message id, headers and body.
const MESSAGE_BYTES_MIN: usize = 2 + 2 + 2 + 4;
/// Smallest encoded header, in bytes: empty name and value.
const HEADER_BYTES_MIN: usize = 2 + 2;
/// Smallest encoded argument, in bytes: empty name and value.
const ARGUMENT_BYTES_MIN: usize = 2 + 2;
/// An encoded settle range, in bytes: `first` and `last`.
const TAG_RANGE_BYTES: usize = 8 + 8;
/// Smallest encoded confirm range, in bytes: `first`, `last` and a one-byte outcome.
const CONFIRM_RANGE_BYTES_MIN: usize = 8 + 8 + 1;
/// Smallest encoded `QueueInfo`, in bytes: empty name, five `u64` counters and a `u32`.
const QUEUE_INFO_BYTES_MIN: usize = 2 + 5 * 8 + 4;
/// Smallest encoded `ExchangeInfo`, in bytes: empty name, kind and a `u32`.
const EXCHANGE_INFO_BYTES_MIN: usize = 2 + 1 + 4;

const _: () = assert!(FRAME_TYPES.len() == 26);
const _: () = assert!(ERROR_CODES.len() == (ERROR_CODE_LAST - ERROR_CODE_FIRST + 1) as usize);
// Counts are `u32` on the wire; header counts are `u16`.
const _: () = assert!(HEADERS_MAX <= u16::MAX as u32);
// A body's `u32` length can describe any body that fits in a frame.
const _: () = assert!(FRAME_BYTES_MAX as u64 <= u32::MAX as u64);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::frame::{PREAMBLE_FLAG_ADMIN, PROTOCOL_VERSION};

    // ----- helpers -----

    fn encoded(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        encode(frame, &mut out);
        out
    }

    /// Decodes `bytes` as one whole frame and checks that it consumed all of them.
    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        let result = decode(&mut buf, FRAME_BYTES_MAX);
        if let Ok(Some(_)) = result {
            assert!(buf.is_empty(), "decode left {} bytes", buf.len());
        }
        result
    }

    /// A frame of `frame_type` with `body`, length computed.
    fn raw_frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
        out.push(frame_type);
        out.extend_from_slice(body);
        out
    }

    fn message(key: &str, id: &str, headers: &[(&str, &str)], body: &[u8]) -> Message {
        Message {
            routing_key: Bytes::copy_from_slice(key.as_bytes()),
            message_id: Bytes::copy_from_slice(id.as_bytes()),
            headers: headers
                .iter()
                .map(|(name, value)| Header {
                    name: Bytes::copy_from_slice(name.as_bytes()),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                })
                .collect(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn messages() -> Vec<Message> {
        vec![
            message("orders.eu", "m-1", &[("content-type", "text/plain"), ("x", "")], b"hello"),
            Message::default(),
            message("", "m-3", &[], &[0xff; 300]),
        ]
    }

    fn binding() -> Binding {
        Binding { exchange: "amq.topic".into(), queue: "q1".into(), key: "orders.#".into() }
    }

    /// One or more frames of every variant, with empty, typical and extreme field values.
    fn sample_frames() -> Vec<Frame> {
        let rejected =
            ConfirmOutcome::Rejected { code: ErrorCode::QueueFull, reason: "queue q1 is full: max-count 10".into() };
        vec![
            Frame::QueueDeclare {
                request: RequestId(1),
                name: "q1".into(),
                options: QueueOptions {
                    exclusive: true,
                    auto_delete: false,
                    passive: true,
                    max_count: Some(10),
                    max_bytes: None,
                },
                arguments: vec![("qpid.replicate".into(), "all".into()), ("é".into(), "".into())],
            },
            Frame::QueueDeclare {
                request: RequestId(u32::MAX),
                name: "n".repeat(NAME_BYTES_MAX as usize),
                options: QueueOptions { max_bytes: Some(u64::MAX), ..QueueOptions::default() },
                arguments: vec![],
            },
            Frame::QueueDelete { request: RequestId(2), name: "q1".into() },
            Frame::QueuePurge { request: RequestId(3), name: String::new() },
            Frame::QueueList { request: RequestId(4) },
            Frame::ExchangeDeclare {
                request: RequestId(5),
                name: "ex".into(),
                kind: ExchangeKind::Topic,
                passive: false,
                arguments: vec![("a".into(), "b".into())],
            },
            Frame::ExchangeDeclare {
                request: RequestId(5),
                name: "fan".into(),
                kind: ExchangeKind::Fanout,
                passive: true,
                arguments: vec![],
            },
            Frame::ExchangeDelete { request: RequestId(6), name: "ex".into() },
            Frame::ExchangeList { request: RequestId(7) },
            Frame::Bind { request: RequestId(8), binding: binding() },
            Frame::Unbind { request: RequestId(9), binding: binding() },
            Frame::Publish { exchange: "amq.topic".into(), first_seq: Seq(7), messages: messages() },
            Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![] },
            Frame::Publish { exchange: String::new(), first_seq: Seq(u64::MAX), messages: vec![Message::default()] },
            Frame::Subscribe { request: RequestId(10), consumer: ConsumerId(3), queue: "q1".into(), prefetch: 1000 },
            Frame::Cancel { request: RequestId(11), consumer: ConsumerId(3) },
            Frame::Settle {
                consumer: ConsumerId(3),
                settlement: Settlement::Ack,
                ranges: vec![TagRange { first: Tag(0), last: Tag(9) }, TagRange { first: Tag(5), last: Tag(5) }],
            },
            Frame::Settle { consumer: ConsumerId(0), settlement: Settlement::Reject, ranges: vec![] },
            Frame::Settle {
                consumer: ConsumerId(1),
                settlement: Settlement::Release,
                ranges: vec![TagRange { first: Tag(u64::MAX), last: Tag(u64::MAX) }],
            },
            Frame::Heartbeat,
            Frame::Hello { version: PROTOCOL_VERSION, broker: "ringmq 0.1.0".into() },
            Frame::Ok { request: RequestId(12) },
            Frame::Failed { request: RequestId(13), code: ErrorCode::NotFound, message: "queue q9 not found".into() },
            Frame::Error { code: ErrorCode::NotPrimary, message: "not primary".into() },
            Frame::Confirm {
                ranges: vec![
                    ConfirmRange { first: Seq(0), last: Seq(4), outcome: ConfirmOutcome::Stored },
                    ConfirmRange { first: Seq(5), last: Seq(5), outcome: ConfirmOutcome::Unroutable },
                    ConfirmRange { first: Seq(6), last: Seq(9), outcome: rejected },
                    ConfirmRange { first: Seq(20), last: Seq(20), outcome: ConfirmOutcome::Stored },
                ],
            },
            Frame::Confirm { ranges: vec![] },
            Frame::Deliver {
                consumer: ConsumerId(3),
                first_tag: Tag(100),
                messages: messages()
                    .into_iter()
                    .enumerate()
                    .map(|(index, message)| Delivered { redelivered: index == 1, message })
                    .collect(),
            },
            Frame::QueueListReply {
                request: RequestId(14),
                queues: vec![
                    QueueInfo {
                        name: "q1".into(),
                        depth: 1,
                        bytes: 2,
                        unacked: 3,
                        consumers: 4,
                        enqueued: 5,
                        dequeued: u64::MAX,
                    },
                    QueueInfo {
                        name: String::new(),
                        depth: 0,
                        bytes: 0,
                        unacked: 0,
                        consumers: 0,
                        enqueued: 0,
                        dequeued: 0,
                    },
                ],
            },
            Frame::ExchangeListReply {
                request: RequestId(15),
                exchanges: vec![
                    ExchangeInfo { name: String::new(), kind: ExchangeKind::Direct, bindings: 0 },
                    ExchangeInfo { name: "amq.topic".into(), kind: ExchangeKind::Topic, bindings: 7 },
                ],
            },
            Frame::ConsumerCancelled { consumer: ConsumerId(3), reason: "queue deleted".into() },
            Frame::HaStatus { request: RequestId(16) },
            Frame::HaPromote { request: RequestId(17) },
            Frame::HaStatusReply {
                request: RequestId(18),
                state: "active".into(),
                epoch: 1,
                brokers_url: "amqp:tcp:10.0.0.1:5672,tcp:10.0.0.2:5672".into(),
                public_url: String::new(),
            },
            Frame::HaStatusReply {
                request: RequestId(19),
                state: "joining".into(),
                epoch: u64::MAX,
                brokers_url: String::new(),
                public_url: "amqp:tcp:vip:5672".into(),
            },
        ]
    }

    /// A valid publish frame of one message, as raw bytes, for corrupting.
    fn publish_bytes() -> Vec<u8> {
        let frame = Frame::Publish {
            exchange: "ex".into(),
            first_seq: Seq(1),
            messages: vec![message("k", "id", &[("h", "v")], b"body")],
        };
        encoded(&frame).to_vec()
    }

    fn invalid_reason(result: Result<Option<Frame>, DecodeError>) -> String {
        match result {
            Err(error @ DecodeError::Invalid { .. }) => error.to_string(),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    // ----- round trips -----

    #[test]
    fn every_frame_variant_round_trips() {
        // Goal: decode(encode(f)) == f for every variant. Method: encode each sample, decode it
        // from a buffer holding exactly its bytes, compare.
        for frame in sample_frames() {
            let bytes = encoded(&frame);
            let decoded = decode_one(&bytes).unwrap_or_else(|error| panic!("{frame:?}: {error}"));
            assert_eq!(decoded.as_ref(), Some(&frame));
        }
    }

    #[test]
    fn sample_frames_cover_every_frame_type() {
        // Goal: the round-trip test cannot silently miss a variant added later. Method: collect
        // the frame type of every sample and compare with the list of all types.
        let covered: BTreeSet<FrameType> = sample_frames().iter().map(frame_type).collect();
        let all: BTreeSet<FrameType> = FRAME_TYPES.iter().copied().collect();
        assert_eq!(covered, all);
    }

    #[test]
    fn frame_types_are_distinct_and_split_by_direction() {
        // Goal: the numbers in PROTOCOL.md hold: unique, client to broker below 0x80, broker to
        // client from 0x80, and `from_u8` is the inverse of `as u8`.
        let numbers: BTreeSet<u8> = FRAME_TYPES.iter().map(|t| *t as u8).collect();
        assert_eq!(numbers.len(), FRAME_TYPES.len());
        for frame_type in FRAME_TYPES {
            assert_eq!(FrameType::from_u8(frame_type as u8), Some(frame_type));
            let to_broker = matches!(
                frame_type,
                FrameType::Heartbeat
                    | FrameType::QueueDeclare
                    | FrameType::QueueDelete
                    | FrameType::QueuePurge
                    | FrameType::QueueList
                    | FrameType::ExchangeDeclare
                    | FrameType::ExchangeDelete
                    | FrameType::ExchangeList
                    | FrameType::Bind
                    | FrameType::Unbind
                    | FrameType::Publish
                    | FrameType::Subscribe
                    | FrameType::Cancel
                    | FrameType::Settle
                    | FrameType::HaStatus
                    | FrameType::HaPromote
            );
            assert_eq!(to_broker, (frame_type as u8) < 0x80, "{frame_type:?}");
        }
        // Spot-check the published numbers.
        assert_eq!(encoded(&Frame::Heartbeat)[..], [1, 0, 0, 0, 0x01]);
        assert_eq!(encoded(&Frame::Ok { request: RequestId(2) })[..], [5, 0, 0, 0, 0x81, 2, 0, 0, 0]);
    }

    #[test]
    fn publish_bytes_match_the_protocol_md_example() {
        // Goal: pin the wire format to the example in PROTOCOL.md, section 3, byte for byte.
        let frame = Frame::Publish {
            exchange: String::new(),
            first_seq: Seq(0),
            messages: vec![Message {
                routing_key: Bytes::from_static(b"k"),
                body: Bytes::from_static(b"hi"),
                ..Message::default()
            }],
        };
        let expected: &[u8] = &[
            0x1c, 0, 0, 0,    // length 28
            0x30, // publish
            0, 0, // exchange ""
            0, 0, 0, 0, 0, 0, 0, 0, // first seq 0
            1, 0, 0, 0, // 1 message
            1, 0, b'k', // routing key "k"
            0, 0, // message id ""
            0, 0, // 0 headers
            2, 0, 0, 0, b'h', b'i', // body "hi"
        ];
        assert_eq!(encoded(&frame)[..], *expected);
    }

    #[test]
    fn error_codes_round_trip_with_stable_numbers() {
        // Goal: every ErrorCode has the number PROTOCOL.md lists, and 0 and 12 are no code.
        for (index, code) in ERROR_CODES.iter().enumerate() {
            let number = error_code_to_u16(*code);
            assert_eq!(number, ERROR_CODE_FIRST + index as u16);
            assert_eq!(error_code_from_u16(number), Some(*code));
        }
        assert_eq!(error_code_to_u16(ErrorCode::Malformed), 1);
        assert_eq!(error_code_to_u16(ErrorCode::Internal), 11);
        assert_eq!(error_code_from_u16(0), None);
        assert_eq!(error_code_from_u16(ERROR_CODE_LAST + 1), None);
    }

    #[test]
    fn preamble_round_trips_and_waits_for_eight_bytes() {
        // Goal: the preamble is 8 bytes; fewer is incomplete; bytes after it are not its business.
        let preamble = Preamble { version: PROTOCOL_VERSION, flags: PREAMBLE_FLAG_ADMIN };
        let mut out = BytesMut::new();
        encode_preamble(preamble, &mut out);
        assert_eq!(out[..], *b"RNMQ\x01\x00\x01\x00");
        for len in 0..PREAMBLE_LEN {
            assert_eq!(decode_preamble(&out[..len]), Ok(None), "prefix of {len} bytes");
        }
        // Frames that follow in the same read do not disturb the preamble.
        encode(&Frame::Heartbeat, &mut out);
        assert_eq!(decode_preamble(&out), Ok(Some(preamble)));
    }

    #[test]
    fn preamble_with_bad_magic_names_expected_and_received_bytes() {
        // Goal: an AMQP header (or anything else) is refused with both magics in the message.
        let error = decode_preamble(b"AMQP\x00\x01\x00\x00").unwrap_err();
        assert_eq!(error, DecodeError::BadMagic { got: *b"AMQP" });
        assert_eq!(error.to_string(), r#"expected preamble "RNMQ", got "AMQP""#);
        assert_eq!(error.code(), ErrorCode::Malformed);
        let error = decode_preamble(b"\x16\x03\x01\x00rest").unwrap_err();
        assert_eq!(error.to_string(), r#"expected preamble "RNMQ", got "\x16\x03\x01\x00""#);
    }

    // ----- incomplete versus invalid -----

    #[test]
    fn every_proper_prefix_is_incomplete_and_consumes_nothing() {
        // Goal: a frame that arrives byte by byte is never mistaken for an invalid one. Method:
        // decode every proper prefix of every sample; each must be Ok(None) and leave the buffer
        // as it was.
        for frame in sample_frames() {
            let bytes = encoded(&frame);
            for len in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..len]);
                assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(None), "{frame:?} at {len}");
                assert_eq!(buf[..], bytes[..len]);
            }
        }
    }

    #[test]
    fn two_frames_back_to_back_decode_one_at_a_time() {
        // Goal: decode consumes exactly one frame. Method: two frames and half of a third in one
        // buffer; decode three times.
        let first = Frame::Ok { request: RequestId(1) };
        let second = Frame::Publish { exchange: "e".into(), first_seq: Seq(3), messages: messages() };
        let third = Frame::Heartbeat;
        let mut buf = encoded(&first);
        encode(&second, &mut buf);
        let third_bytes = encoded(&third);
        buf.extend_from_slice(&third_bytes[..2]);
        // One frame per call, in order.
        assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(Some(first)));
        assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(Some(second)));
        // The third is incomplete until its last bytes arrive.
        assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(None));
        assert_eq!(buf.len(), 2);
        buf.extend_from_slice(&third_bytes[2..]);
        assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(Some(third)));
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(None));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        // Goal: a peer cannot make the broker buffer a frame above max-frame-size. Method: only
        // the 4 length bytes are in the buffer.
        let max = 1024 * 1024;
        let mut buf = BytesMut::from(&20_000_000u32.to_le_bytes()[..]);
        let error = decode(&mut buf, max).unwrap_err();
        assert_eq!(error, DecodeError::FrameTooLarge { size: 20_000_004, max });
        assert_eq!(error.to_string(), "frame of 20000004 bytes exceeds max-frame-size 1048576");
        assert_eq!(error.code(), ErrorCode::LimitExceeded);
        // The largest length saturates instead of overflowing.
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert_eq!(
            decode(&mut buf, FRAME_BYTES_MAX),
            Err(DecodeError::FrameTooLarge { size: u32::MAX, max: FRAME_BYTES_MAX })
        );
    }

    #[test]
    fn max_frame_size_counts_the_length_prefix() {
        // Goal: a frame of exactly max-frame-size bytes (prefix included) passes, one more fails.
        let frame = Frame::Error { code: ErrorCode::Internal, message: "x".repeat(100) };
        let bytes = encoded(&frame);
        let size = bytes.len() as u32;
        let mut buf = bytes.clone();
        assert_eq!(decode(&mut buf, size), Ok(Some(frame)));
        let mut buf = bytes.clone();
        assert_eq!(decode(&mut buf, size - 1), Err(DecodeError::FrameTooLarge { size, max: size - 1 }));
    }

    #[test]
    fn unknown_frame_type_is_rejected_once_its_byte_arrives() {
        // Goal: the type is checked before the body is awaited.
        for type_byte in [0x00, 0x02, 0x7f, 0xff] {
            let mut buf = BytesMut::from(&[100, 0, 0, 0, type_byte][..]);
            let error = decode(&mut buf, FRAME_BYTES_MAX).unwrap_err();
            assert_eq!(error, DecodeError::UnknownFrameType(type_byte));
            assert_eq!(error.code(), ErrorCode::Malformed);
        }
        assert_eq!(DecodeError::UnknownFrameType(0x7f).to_string(), "unknown frame type 0x7f");
    }

    #[test]
    fn zero_length_frame_is_invalid() {
        // Goal: a frame always has at least its type byte.
        let reason = invalid_reason(decode_one(&[0, 0, 0, 0]));
        assert_eq!(reason, "frame: length is 0, at least 1 needed (the frame type)");
    }

    #[test]
    fn trailing_bytes_after_the_body_are_invalid() {
        // Goal: a frame is exactly as long as its length says. Method: a heartbeat and an ok with
        // extra bytes inside their length.
        assert_eq!(
            invalid_reason(decode_one(&raw_frame(0x01, &[1, 2, 3]))),
            "heartbeat: trailing 3 bytes after frame body"
        );
        assert_eq!(
            invalid_reason(decode_one(&raw_frame(0x81, &[1, 0, 0, 0, 9]))),
            "ok: trailing 1 bytes after frame body"
        );
    }

    #[test]
    fn field_running_past_the_frame_end_is_invalid() {
        // Goal: inside a complete frame, a missing field is invalid, not incomplete. Method:
        // shrink the length of a valid frame and drop its last bytes.
        let bytes = raw_frame(0x81, &[1, 0]);
        assert_eq!(invalid_reason(decode_one(&bytes)), "ok: truncated: request needs 4 bytes, 2 remain");
        // A body length larger than the rest of the frame.
        let mut bytes = publish_bytes();
        let body_len_at = bytes.len() - 4 - 4;
        bytes[body_len_at..body_len_at + 4].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(invalid_reason(decode_one(&bytes)), "publish: truncated: body needs 5 bytes, 4 remain");
    }

    #[test]
    fn corrupt_field_values_are_invalid() {
        // Goal: every enum, bool, flag and option byte outside its allowed values is refused, with
        // a message naming the field, what came and what is allowed.
        let declare = encoded(&Frame::QueueDeclare {
            request: RequestId(1),
            name: "q".into(),
            options: QueueOptions::default(),
            arguments: vec![],
        });
        // Frame header 5, request 4, name 3: the exclusive bool is at 12.
        let mut bytes = declare.to_vec();
        bytes[12] = 2;
        assert_eq!(invalid_reason(decode_one(&bytes)), "queue-declare: exclusive is 2, a bool must be 0 or 1");
        // An absent max-count (at 15, value at 16..24) that carries a value.
        let mut bytes = declare.to_vec();
        bytes[16] = 5;
        assert_eq!(
            invalid_reason(decode_one(&bytes)),
            "queue-declare: max-count is absent but carries 5; an absent value must be 0"
        );

        // Exchange kind 3 (frame header 5, request 4, name "x" 3: kind at 12).
        let mut bytes = encoded(&Frame::ExchangeDeclare {
            request: RequestId(1),
            name: "x".into(),
            kind: ExchangeKind::Direct,
            passive: false,
            arguments: vec![],
        })
        .to_vec();
        bytes[12] = 3;
        assert_eq!(
            invalid_reason(decode_one(&bytes)),
            "exchange-declare: exchange kind is 3, must be 0 (direct), 1 (fanout) or 2 (topic)"
        );

        // Settlement 3 (frame header 5, consumer 4: settlement at 9).
        let mut bytes =
            encoded(&Frame::Settle { consumer: ConsumerId(1), settlement: Settlement::Ack, ranges: vec![] }).to_vec();
        bytes[9] = 3;
        assert!(invalid_reason(decode_one(&bytes)).starts_with("settle: settlement is 3"));

        // Error code 0 and 12.
        for code in [0u16, 12] {
            let mut body = code.to_le_bytes().to_vec();
            body.extend_from_slice(&[0, 0]);
            assert_eq!(
                invalid_reason(decode_one(&raw_frame(0x83, &body))),
                format!("error: error code is {code}, must be in 1..=11")
            );
        }

        // Confirm outcome 3.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.push(3);
        assert!(invalid_reason(decode_one(&raw_frame(0x90, &body))).starts_with("confirm: outcome is 3"));

        // Deliver flags with a reserved bit (frame header 5, consumer 4, tag 8, count 4: 21).
        let mut bytes = encoded(&Frame::Deliver {
            consumer: ConsumerId(1),
            first_tag: Tag(0),
            messages: vec![Delivered { redelivered: true, message: Message::default() }],
        })
        .to_vec();
        bytes[21] = 0x03;
        assert_eq!(invalid_reason(decode_one(&bytes)), "deliver: flags are 0x03, only bit 0 (redelivered) may be set");
    }

    #[test]
    fn strings_must_be_utf8() {
        // Goal: names and texts are UTF-8; byte fields (routing key, body) need not be.
        let mut body = 1u16.to_le_bytes().to_vec();
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&[0xc3, 0x28]);
        let reason = invalid_reason(decode_one(&raw_frame(0x80, &body)));
        assert!(reason.starts_with("hello: broker is not UTF-8"), "{reason}");
        let frame = Frame::Publish {
            exchange: String::new(),
            first_seq: Seq(0),
            messages: vec![Message {
                routing_key: Bytes::from_static(&[0xc3, 0x28]),
                body: Bytes::from_static(&[0xff, 0xfe]),
                ..Message::default()
            }],
        };
        assert_eq!(decode_one(&encoded(&frame)), Ok(Some(frame)));
    }

    #[test]
    fn ranges_need_first_at_most_last() {
        // Goal: settle and confirm refuse a range with first > last.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&8u64.to_le_bytes());
        assert_eq!(invalid_reason(decode_one(&raw_frame(0x33, &body))), "settle: range 9..=8 has first > last");
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&8u64.to_le_bytes());
        body.push(OUTCOME_STORED);
        assert_eq!(invalid_reason(decode_one(&raw_frame(0x90, &body))), "confirm: range 9..=8 has first > last");
    }

    #[test]
    fn confirm_ranges_must_increase() {
        // Goal: confirm ranges are in increasing sequence order (frame.rs), so the client can
        // release them in one pass. Method: a range that overlaps its predecessor.
        let mut body = 2u32.to_le_bytes().to_vec();
        for (first, last) in [(0u64, 5u64), (5, 6)] {
            body.extend_from_slice(&first.to_le_bytes());
            body.extend_from_slice(&last.to_le_bytes());
            body.push(OUTCOME_STORED);
        }
        let reason = invalid_reason(decode_one(&raw_frame(0x90, &body)));
        assert!(reason.contains("range 5..=6 does not start after the previous range's last 5"));
    }

    #[test]
    fn batch_whose_numbers_overflow_u64_is_invalid() {
        // Goal: the broker may compute first_seq + index for every message without overflow.
        let frame =
            Frame::Publish { exchange: String::new(), first_seq: Seq(u64::MAX), messages: vec![Message::default()] };
        let mut bytes = encoded(&frame).to_vec();
        // Frame header 5, exchange 2, first_seq 8: count at 15; claim 2 messages and add one.
        bytes[15] = 2;
        bytes.extend_from_slice(&encoded_message(&Message::default()));
        let length = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&length.to_le_bytes());
        assert_eq!(
            invalid_reason(decode_one(&bytes)),
            "publish: first-seq 18446744073709551615 plus 2 items overflows u64"
        );
    }

    fn encoded_message(message: &Message) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_message(&mut out, message);
        out.to_vec()
    }

    // ----- limits -----

    #[test]
    fn over_limit_counts_are_rejected_without_allocating() {
        // Goal: a count above its limit is refused as soon as it is read, before the items are
        // awaited or allocated. Method: frames that carry only the count, nothing after it.
        let cases: [(u8, Vec<u8>, &str, u32); 6] = [
            (0x30, [&[0, 0][..], &[0; 8]].concat(), "publish: batch of 10000 messages exceeds the limit 4096", 10_000),
            (0x91, [&[0; 4][..], &[0; 8]].concat(), "deliver: batch of 4097 messages exceeds the limit 4096", 4097),
            (0x90, vec![], "confirm: batch of 4097 ranges exceeds the limit 4096", 4097),
            (0x33, vec![0, 0, 0, 0, 0], "settle: batch of 4097 ranges exceeds the limit 4096", 4097),
            (0xa0, vec![0; 4], "queue-list-reply: batch of 65537 entries exceeds the limit 65536", 65_537),
            (0xa1, vec![0; 4], "exchange-list-reply: batch of 4294967295 entries exceeds the limit 65536", u32::MAX),
        ];
        for (type_byte, head, message, count) in cases {
            let mut body = head;
            body.extend_from_slice(&count.to_le_bytes());
            let error = decode_one(&raw_frame(type_byte, &body)).unwrap_err();
            assert_eq!(error.to_string(), message);
            assert_eq!(error.code(), ErrorCode::LimitExceeded);
        }
        // Arguments of a declare (request 4, name 2, 3 bools, 2 options).
        let mut body = vec![0; 4 + 2 + 3 + 9 + 9];
        body.extend_from_slice(&65u32.to_le_bytes());
        assert_eq!(
            decode_one(&raw_frame(0x10, &body)).unwrap_err().to_string(),
            "queue-declare: batch of 65 arguments exceeds the limit 64"
        );
        // Headers of a message (empty routing key and id, then the u16 header count).
        let mut body = [&[0, 0][..], &[0; 8], &1u32.to_le_bytes(), &[0, 0, 0, 0]].concat();
        body.extend_from_slice(&65u16.to_le_bytes());
        assert_eq!(
            decode_one(&raw_frame(0x30, &body)).unwrap_err().to_string(),
            "publish: batch of 65 headers exceeds the limit 64"
        );
    }

    #[test]
    fn in_limit_count_in_a_short_frame_is_truncated() {
        // Goal: a frame that claims 4096 messages but holds none is invalid, quickly, and its
        // capacity is bounded by its remaining bytes (zero here), not by the count.
        let body = [&[0, 0][..], &[0; 8], &BATCH_MESSAGES_MAX.to_le_bytes()].concat();
        let reason = invalid_reason(decode_one(&raw_frame(0x30, &body)));
        assert_eq!(reason, "publish: truncated: routing key needs 2 bytes, 0 remain");
        let mut reader =
            Reader { frame: "publish", bytes: Bytes::from(BATCH_MESSAGES_MAX.to_le_bytes().to_vec()), position: 0 };
        assert_eq!(reader.count("messages", BATCH_MESSAGES_MAX, MESSAGE_BYTES_MIN), Ok((BATCH_MESSAGES_MAX, 0)));
    }

    #[test]
    fn names_longer_than_the_limit_are_rejected() {
        // Goal: queue, exchange, binding-key and argument names are at most NAME_BYTES_MAX bytes;
        // the error names the field, its length and the limit.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&300u16.to_le_bytes());
        body.extend_from_slice(&[b'q'; 300]);
        let error = decode_one(&raw_frame(0x10, &body)).unwrap_err();
        assert_eq!(error.to_string(), "queue-declare: name is 300 bytes, at most 255 allowed");
        assert_eq!(error.code(), ErrorCode::LimitExceeded);
        // Checked from the length alone: the 300 bytes need not have arrived.
        let error = decode_one(&raw_frame(0x10, &body[..6])).unwrap_err();
        assert!(matches!(error, DecodeError::NameTooLong { len: 300, .. }));
        // A binding key.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0]);
        body.extend_from_slice(&256u16.to_le_bytes());
        let error = decode_one(&raw_frame(0x20, &body)).unwrap_err();
        assert_eq!(error.to_string(), "bind: key is 256 bytes, at most 255 allowed");
    }

    #[test]
    #[should_panic(expected = "name of 256 bytes exceeds NAME_BYTES_MAX")]
    fn encoding_a_name_above_the_limit_is_a_bug() {
        // Goal: the pair assertion: what decode refuses, encode refuses to write.
        encode(&Frame::QueueDelete { request: RequestId(1), name: "q".repeat(256) }, &mut BytesMut::new());
    }

    #[test]
    #[should_panic(expected = "does not follow")]
    fn encoding_unordered_confirm_ranges_is_a_bug() {
        // Goal: the pair assertion for confirm range order.
        let ranges = vec![
            ConfirmRange { first: Seq(5), last: Seq(6), outcome: ConfirmOutcome::Stored },
            ConfirmRange { first: Seq(1), last: Seq(2), outcome: ConfirmOutcome::Stored },
        ];
        encode(&Frame::Confirm { ranges }, &mut BytesMut::new());
    }

    // ----- zero copy -----

    #[test]
    fn message_fields_are_slices_of_the_frame() {
        // Goal: decoding a publish copies no message bytes. Method: every decoded field's pointer
        // lies inside the buffer the frame was read into.
        let frame = Frame::Publish { exchange: "e".into(), first_seq: Seq(0), messages: messages() };
        let mut buf = encoded(&frame);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let Ok(Some(Frame::Publish { messages: decoded, .. })) = decode(&mut buf, FRAME_BYTES_MAX) else {
            panic!("publish did not decode");
        };
        let inside = |bytes: &Bytes| bytes.is_empty() || range.contains(&(bytes.as_ptr() as usize));
        for message in &decoded {
            assert!(inside(&message.routing_key));
            assert!(inside(&message.message_id));
            assert!(inside(&message.body));
            for header in &message.headers {
                assert!(inside(&header.name));
                assert!(inside(&header.value));
            }
        }
        assert!(!decoded[2].body.is_empty() && inside(&decoded[2].body));
    }

    // ----- writers -----

    #[test]
    fn publish_writer_equals_encode() {
        // Goal: the streaming writer and encode produce the same bytes. Method: write the same
        // messages both ways, after some unrelated bytes already in the buffer.
        let messages = messages();
        let mut out = BytesMut::from(&b"prefix"[..]);
        let mut writer = PublishWriter::begin(&mut out, "amq.topic", Seq(7));
        let mut expected_len = writer.bytes_len();
        for message in &messages {
            writer.push(message);
            expected_len += message_bytes_len(message);
            assert_eq!(writer.bytes_len(), expected_len);
        }
        assert_eq!(writer.count(), 3);
        writer.finish();
        assert_eq!(out.len(), b"prefix".len() + expected_len);
        let frame = Frame::Publish { exchange: "amq.topic".into(), first_seq: Seq(7), messages };
        assert_eq!(out[b"prefix".len()..], encoded(&frame)[..]);

        // An empty batch too.
        let mut out = BytesMut::new();
        PublishWriter::begin(&mut out, "", Seq(0)).finish();
        let empty = Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![] };
        assert_eq!(out, encoded(&empty));
    }

    #[test]
    fn deliver_writer_equals_encode() {
        // Goal: as for publish, with the per-message redelivered flag.
        let messages = messages();
        let mut out = BytesMut::new();
        let mut writer = DeliverWriter::begin(&mut out, ConsumerId(3), Tag(100));
        let mut expected_len = writer.bytes_len();
        for (index, message) in messages.iter().enumerate() {
            writer.push(index == 1, message);
            expected_len += message_bytes_len(message) + 1;
        }
        assert_eq!(writer.count(), 3);
        assert_eq!(writer.bytes_len(), expected_len);
        writer.finish();
        let frame = Frame::Deliver {
            consumer: ConsumerId(3),
            first_tag: Tag(100),
            messages: messages
                .into_iter()
                .enumerate()
                .map(|(index, message)| Delivered { redelivered: index == 1, message })
                .collect(),
        };
        assert_eq!(out, encoded(&frame));
    }

    #[test]
    fn confirm_writer_equals_encode_and_merges_adjacent_ranges_with_the_same_outcome() {
        // Goal: the writer merges a range into its predecessor exactly when it continues it with
        // an equal outcome, and writes what encode writes for the merged ranges.
        let full = |reason: &str| ConfirmOutcome::Rejected { code: ErrorCode::QueueFull, reason: reason.into() };
        let range = |first, last, outcome| ConfirmRange { first: Seq(first), last: Seq(last), outcome };
        let pushed = [
            range(0, 0, ConfirmOutcome::Stored),
            range(1, 3, ConfirmOutcome::Stored),     // continues: merged into 0..=3
            range(5, 5, ConfirmOutcome::Stored),     // gap: new range
            range(6, 6, ConfirmOutcome::Unroutable), // other outcome: new range
            range(7, 7, full("q1 full")),
            range(8, 9, full("q1 full")),   // same code and reason: merged into 7..=9
            range(10, 10, full("q2 full")), // other reason: new range
            range(11, 11, ConfirmOutcome::Rejected { code: ErrorCode::Internal, reason: "q2 full".into() }),
        ];
        let mut out = BytesMut::new();
        let mut writer = ConfirmWriter::begin(&mut out);
        for range in pushed {
            writer.push(range);
        }
        assert_eq!(writer.count(), 6);
        let bytes_len = writer.bytes_len();
        writer.finish();
        assert_eq!(out.len(), bytes_len);
        let expected = Frame::Confirm {
            ranges: vec![
                range(0, 3, ConfirmOutcome::Stored),
                range(5, 5, ConfirmOutcome::Stored),
                range(6, 6, ConfirmOutcome::Unroutable),
                range(7, 9, full("q1 full")),
                range(10, 10, full("q2 full")),
                range(11, 11, ConfirmOutcome::Rejected { code: ErrorCode::Internal, reason: "q2 full".into() }),
            ],
        };
        assert_eq!(out, encoded(&expected));
        assert_eq!(decode_one(&out), Ok(Some(expected)));

        // A reason that merely starts like the previous one does not merge.
        let mut out = BytesMut::new();
        let mut writer = ConfirmWriter::begin(&mut out);
        writer.push(range(0, 0, full("q1 full, more")));
        writer.push(range(1, 1, full("q1 full")));
        assert_eq!(writer.count(), 2);
        writer.finish();
    }

    #[test]
    #[should_panic(expected = "batch already holds the limit of 4096 items")]
    fn publish_writer_refuses_more_than_the_batch_limit() {
        // Goal: a writer never produces a frame the decoder would refuse.
        let mut out = BytesMut::new();
        let mut writer = PublishWriter::begin(&mut out, "", Seq(0));
        for _ in 0..=BATCH_MESSAGES_MAX {
            writer.push(&Message::default());
        }
    }

    // ----- robustness -----

    #[test]
    fn corrupting_any_byte_never_panics_and_keeps_the_encoding_canonical() {
        // Goal: a deterministic miniature of the fuzz target. Method: set every byte of every
        // sample to several values; decoding must not panic, and whatever decodes must re-encode
        // to exactly the bytes it came from.
        for frame in sample_frames() {
            let bytes = encoded(&frame).to_vec();
            for index in 0..bytes.len() {
                for value in [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff, bytes[index] ^ 0x01] {
                    let mut corrupt = bytes.clone();
                    corrupt[index] = value;
                    let mut buf = BytesMut::from(&corrupt[..]);
                    if let Ok(Some(decoded)) = decode(&mut buf, FRAME_BYTES_MAX) {
                        let consumed = corrupt.len() - buf.len();
                        assert_eq!(encoded(&decoded)[..], corrupt[..consumed]);
                    }
                }
            }
        }
    }

    #[test]
    fn error_messages_match_the_documented_forms() {
        // Goal: the messages in PROTOCOL.md are the ones the code produces.
        let too_many = DecodeError::TooMany { frame: "publish", what: "messages", count: 10_000, max: 4096 };
        assert_eq!(too_many.to_string(), "publish: batch of 10000 messages exceeds the limit 4096");
        let too_large = DecodeError::FrameTooLarge { size: 20_000_000, max: 1_048_576 };
        assert_eq!(too_large.to_string(), "frame of 20000000 bytes exceeds max-frame-size 1048576");
    }
}
