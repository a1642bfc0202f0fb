//! The field encoders every codec on the native framing shares: the native frames (`codec`,
//! `writers`) and `ringmq-ha`'s replication records and link frames. Each `put_*` appends one
//! field; the matching read is a method of `Reader`. Also the byte codes of the protocol's small
//! enums (exchange kind, settlement, error code, confirm outcome, deliver flags), which both
//! directions use.
//!
//! Not here: frame heads (`frame_header`), which frames exist (`frame_type`), reading (`reader`).
//!
//! Invariants:
//! - Every `put_*` asserts what the matching read checks (name and field lengths, counts), so no
//!   encoder built from them writes a field its own decoder would refuse.
//! - `message_bytes_len` of a message equals the bytes `put_message` writes for it.
//! - A code number never changes meaning: `PROTOCOL.md` lists them.

use bytes::BufMut;
use bytes::BytesMut;

use crate::ids::Seq;
use crate::limits::{ARGUMENTS_MAX, FRAME_BYTES_MAX, HEADERS_MAX, NAME_BYTES_MAX};
use crate::wire::frame::{
    Binding, ConfirmOutcome, ConfirmRange, ErrorCode, ExchangeKind, Message, QueueOptions, Settlement,
};

/// The bytes `message` adds to a `Publish` frame; a `Deliver` frame adds one more (the flags).
/// With [`PublishWriter::bytes_len`], tells a batcher whether the next message still fits.
pub fn message_bytes_len(message: &Message) -> usize {
    let headers: usize = message.headers.iter().map(|header| 2 + header.name.len() + 2 + header.value.len()).sum();
    2 + message.routing_key.len() + 2 + message.message_id.len() + 2 + headers + 4 + message.body.len()
}

/// Writes a `u32` count.
pub(crate) fn put_count(out: &mut BytesMut, count: usize, count_max: u32) {
    assert!(count <= count_max as usize, "count {count} exceeds the limit {count_max}");
    out.put_u32_le(count as u32);
}

/// Asserts that a batch of `count` items numbered from `first` does not overflow `u64`.
pub(crate) fn assert_batch_fits_u64(first: u64, count: usize) {
    if let Some(last_offset) = count.checked_sub(1) {
        assert!(first.checked_add(last_offset as u64).is_some(), "batch of {count} starting at {first} overflows u64");
    }
}

/// Asserts that a confirm range is well-formed and starts after the `previous` range's last.
pub(crate) fn assert_confirm_range_follows(previous: Option<Seq>, range: &ConfirmRange) {
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

/// Writes a UTF-8 string of any length up to `u16::MAX` bytes, with a `u16` length prefix.
pub(crate) fn put_text(out: &mut BytesMut, text: &str) {
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

/// Writes a declare's arguments: a `u32` count, then name and value of each.
pub(crate) fn put_arguments(out: &mut BytesMut, arguments: &[(String, String)]) {
    put_count(out, arguments.len(), ARGUMENTS_MAX);
    for (name, value) in arguments {
        put_name(out, name);
        put_text(out, value);
    }
}

/// Writes a binding: exchange, queue and key names.
pub(crate) fn put_binding(out: &mut BytesMut, binding: &Binding) {
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

/// Writes one confirm range: `first`, `last` and the outcome.
pub(crate) fn put_confirm_range(out: &mut BytesMut, range: &ConfirmRange) {
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

/// The flags byte of one delivery.
pub(crate) fn deliver_flags(redelivered: bool) -> u8 {
    if redelivered {
        DELIVER_FLAG_REDELIVERED
    } else {
        0
    }
}

// ----- byte codes -----

/// An exchange kind's byte: 0 direct, 1 fanout, 2 topic (the native protocol and the replication
/// records alike).
pub fn exchange_kind_byte(kind: ExchangeKind) -> u8 {
    match kind {
        ExchangeKind::Direct => 0,
        ExchangeKind::Fanout => 1,
        ExchangeKind::Topic => 2,
    }
}

/// The exchange kind of `byte`, if any (see [`exchange_kind_byte`]).
pub fn exchange_kind_from_byte(byte: u8) -> Option<ExchangeKind> {
    match byte {
        0 => Some(ExchangeKind::Direct),
        1 => Some(ExchangeKind::Fanout),
        2 => Some(ExchangeKind::Topic),
        _ => None,
    }
}

/// A settlement's byte: 0 ack, 1 reject, 2 release.
pub(crate) fn settlement_byte(settlement: Settlement) -> u8 {
    match settlement {
        Settlement::Ack => 0,
        Settlement::Reject => 1,
        Settlement::Release => 2,
    }
}

/// Error codes on the wire. The numbers are stable: `PROTOCOL.md` lists them, and a number is
/// never reused for another meaning. 0 is not a code.
pub(crate) fn error_code_to_u16(code: ErrorCode) -> u16 {
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
        ErrorCode::NotEnoughBackups => 12,
    }
}

/// The error code numbered `value`, if any.
pub(crate) fn error_code_from_u16(value: u16) -> Option<ErrorCode> {
    ERROR_CODES.iter().copied().find(|code| error_code_to_u16(*code) == value)
}

// ----- constants -----

/// Smallest encoded message, in bytes: empty routing key, message id, headers and body.
pub const MESSAGE_BYTES_MIN: usize = 2 + 2 + 2 + 4;

/// Every error code, for decoding.
pub(crate) const ERROR_CODES: [ErrorCode; 12] = [
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
    ErrorCode::NotEnoughBackups,
];
/// The lowest error code number.
pub(crate) const ERROR_CODE_FIRST: u16 = 1;
/// The highest error code number.
pub(crate) const ERROR_CODE_LAST: u16 = 12;

/// Confirm outcome: stored on every queue it routed to.
pub(crate) const OUTCOME_STORED: u8 = 0;
/// Confirm outcome: routed to no queue.
pub(crate) const OUTCOME_UNROUTABLE: u8 = 1;
/// Confirm outcome: rejected; a `u16` error code and a reason follow.
pub(crate) const OUTCOME_REJECTED: u8 = 2;

/// Deliver flags bit 0: the message was delivered before.
pub(crate) const DELIVER_FLAG_REDELIVERED: u8 = 1;

const _: () = assert!(ERROR_CODES.len() == (ERROR_CODE_LAST - ERROR_CODE_FIRST + 1) as usize);
// Header counts are `u16` on the wire.
const _: () = assert!(HEADERS_MAX <= u16::MAX as u32);
// A body's `u32` length can describe any body that fits in a frame.
const _: () = assert!(FRAME_BYTES_MAX as u64 <= u32::MAX as u64);
