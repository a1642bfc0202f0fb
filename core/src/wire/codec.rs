//! The bytes of the native protocol: the preamble and every [`Frame`], encoded and decoded.
//!
//! `frame` owns what a frame means; this module owns its bytes. The layout is specified, field by
//! field, in `PROTOCOL.md` at the repository root: little-endian; a frame is a `u32` length (the
//! bytes after the length field), a `u8` frame type, then the body (`frame_header`).
//!
//! What this module does *not* do: IO (bytes come in as a `BytesMut`, go out into one), and any
//! check that needs state. A `Hello` sent by a client decodes fine; the connection decides that it
//! is unexpected. A `Subscribe` with a prefetch above `PREFETCH_MAX` decodes fine; the broker
//! refuses it. The codec checks structure and the structural limits (frame size, counts, name
//! lengths) only. The streaming writers of the hot batch frames are in `writers`.
//!
//! Invariants:
//! - `decode` never panics, whatever the bytes. It consumes nothing while it returns `Ok(None)`,
//!   and exactly the frame's bytes when it returns a frame; after an `Err` nothing about the
//!   buffer may be relied on (a refused body may have been consumed with its frame).
//! - `decode` keeps *incomplete* (`Ok(None)`: wait for more bytes) apart from *invalid* (`Err`:
//!   the caller sends an `Error` frame and closes the connection).
//! - Every count is checked against its limit before anything is allocated for it, and a `Vec` is
//!   never given more capacity than the remaining bytes of the frame could fill.
//! - Message fields of a decoded frame are slices of the frame's bytes: no body is copied.
//! - The encoding is canonical: every frame has exactly one byte form, so `encode` of a decoded
//!   frame gives back exactly the bytes it was decoded from (the fuzz target checks this).
//! - `encode` asserts every property that `decode` checks, so this code never sends a frame its
//!   own decoder would refuse.

use bytes::{BufMut, BytesMut};

use crate::ids::{ConsumerId, Seq, Tag};
use crate::limits::{BATCH_MESSAGES_MAX, FRAME_BYTES_MAX, LIST_ENTRIES_MAX, RANGES_MAX};
use crate::wire::decode_error::DecodeError;
use crate::wire::frame::{
    ConfirmRange, Delivered, ExchangeInfo, Frame, Preamble, QueueInfo, QueueOptions, ReadySet, TagRange, PREAMBLE_LEN,
    PREAMBLE_MAGIC,
};
use crate::wire::frame_header::{
    begin_frame, end_frame, peek_frame_header, FrameHeader, FrameHeaderError, FRAME_HEADER_BYTES,
};
use crate::wire::frame_type::FrameType;
use crate::wire::primitives::{
    assert_batch_fits_u64, assert_confirm_range_follows, deliver_flags, error_code_to_u16, exchange_kind_byte,
    put_arguments, put_binding, put_bool, put_confirm_range, put_count, put_message, put_name, put_queue_options,
    put_text, settlement_byte, DELIVER_FLAG_REDELIVERED, MESSAGE_BYTES_MIN,
};
use crate::wire::reader::Reader;

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
    let start = begin_frame(out, FrameType::of(frame).byte());
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
        Frame::HaFence { request, epoch } => {
            out.put_u32_le(request.0);
            out.put_u64_le(*epoch);
        }
        Frame::ExchangeDeclare { request, name, kind, passive, arguments } => {
            out.put_u32_le(request.0);
            put_name(out, name);
            out.put_u8(exchange_kind_byte(*kind));
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
            out.put_u8(settlement_byte(*settlement));
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
                out.put_u8(exchange_kind_byte(exchange.kind));
                out.put_u32_le(exchange.bindings);
            }
        }
        Frame::ConsumerCancelled { consumer, reason } => {
            out.put_u32_le(consumer.0);
            put_text(out, reason);
        }
        Frame::HaStatusReply { request, state, epoch, brokers_url, public_url, name, ready_set } => {
            out.put_u32_le(request.0);
            put_name(out, state);
            out.put_u64_le(*epoch);
            put_text(out, brokers_url);
            put_text(out, public_url);
            put_name(out, name);
            out.put_u64_le(ready_set.epoch);
            out.put_u64_le(ready_set.version);
            put_count(out, ready_set.members.len(), LIST_ENTRIES_MAX);
            for member in &ready_set.members {
                put_name(out, member);
            }
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
    let header = peek_frame_header(buf, frame_bytes_max).map_err(|error| match error {
        FrameHeaderError::TooLarge { size, max } => DecodeError::FrameTooLarge { size, max },
        FrameHeaderError::ZeroLength => DecodeError::Invalid {
            frame: "frame",
            reason: "length is 0, at least 1 needed (the frame type)".to_string(),
        },
    })?;
    let Some(FrameHeader { size, type_byte }) = header else {
        return Ok(None);
    };
    let frame_type = FrameType::from_u8(type_byte).ok_or(DecodeError::UnknownFrameType(type_byte))?;
    // `size <= frame_bytes_max <= FRAME_BYTES_MAX`, so it fits a `usize`.
    let size = size as usize;
    if buf.len() < size {
        return Ok(None);
    }
    let bytes = buf.split_to(size).freeze();
    let mut reader = Reader::new(frame_type.name(), bytes, FRAME_HEADER_BYTES);
    let frame = decode_body(frame_type, &mut reader)?;
    reader.finish()?;
    Ok(Some(frame))
}

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
        FrameType::HaFence => Frame::HaFence { request: r.request()?, epoch: r.u64("epoch")? },
        FrameType::HaStatusReply => {
            let request = r.request()?;
            let state = r.name("state")?;
            let epoch = r.u64("epoch")?;
            let brokers_url = r.text("brokers-url")?;
            let public_url = r.text("public-url")?;
            let name = r.name("name")?;
            let (set_epoch, version) = (r.u64("ready-set epoch")?, r.u64("ready-set version")?);
            // A name takes at least its 2-byte length.
            let (count, capacity) = r.count("ready-set members", LIST_ENTRIES_MAX, 2)?;
            let mut members = Vec::with_capacity(capacity);
            for _ in 0..count {
                members.push(r.name("ready-set member")?);
            }
            let ready_set = ReadySet { epoch: set_epoch, version, members };
            Frame::HaStatusReply { request, state, epoch, brokers_url, public_url, name, ready_set }
        }
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

/// An encoded settle range, in bytes: `first` and `last`.
const TAG_RANGE_BYTES: usize = 8 + 8;
/// Smallest encoded confirm range, in bytes: `first`, `last` and a one-byte outcome.
const CONFIRM_RANGE_BYTES_MIN: usize = 8 + 8 + 1;
/// Smallest encoded `QueueInfo`, in bytes: empty name, five `u64` counters and a `u32`.
const QUEUE_INFO_BYTES_MIN: usize = 2 + 5 * 8 + 4;
/// Smallest encoded `ExchangeInfo`, in bytes: empty name, kind and a `u32`.
const EXCHANGE_INFO_BYTES_MIN: usize = 2 + 1 + 4;

#[cfg(test)]
mod tests;
