//! Replication records and batches: what a primary shard sends a backup about its queues (and,
//! from shard 0, about the whole replicated configuration: queues, exchanges, bindings), as Rust
//! values and as bytes.
//!
//! A primary shard streams its queues' changes to each backup as *batches* of *records*. A batch
//! carries the primary's `Epoch` (a backup never applies one from an older epoch) and the
//! stream's `StreamSeq` (+1 per batch, from 1), which the backup confirms cumulatively. Within one
//! queue, enqueues are numbered by a queue-local `Position` (+1 per enqueued message, never
//! reused), and dequeues of any cause (ack, reject, purge, expiry) name positions as inclusive
//! ranges. The reference sent an id event and two sync-flagged transfers per message and an
//! accept per transfer (reference-internals §12); here the position is implied by the batch and
//! one confirm covers many batches.
//!
//! The layout (little-endian, like the native protocol in `PROTOCOL.md`):
//! ```text
//! batch   = u32 length (bytes after it), u8 type 0x50, u64 epoch, u64 stream_seq,
//!           u32 record count (1..=BATCH_RECORDS_MAX), records
//! record  = u8 kind, name16 name (kinds 1..=4 and 9: the queue; 5..=8: the exchange), then by kind:
//!           1 queue-created:    bool exclusive, bool auto_delete, bool passive,
//!                               option_u64 max_count, option_u64 max_bytes, u8 level
//!           2 queue-deleted:    nothing
//!           3 enqueued:         u64 first_position, u32 count (>= 1), messages as in a publish frame
//!           4 dequeued:         u32 range count (>= 1), (u64 first, u64 last) per range, increasing,
//!                               neither overlapping nor adjacent
//!           5 exchange-created: u8 exchange kind (0 direct, 1 fanout, 2 topic, as in the native
//!                               protocol), u8 level
//!           6 exchange-deleted: nothing
//!           7 bound:            name16 queue, name16 key
//!           8 unbound:          name16 queue, name16 key
//!           9 dedup-seen:       u32 producer count (>= 1), then per producer: name16 producer id
//!                               (1..=DEDUP_PRODUCER_ID_BYTES_MAX bytes, no '/'), u32 range count
//!                               (>= 1), (u64 first, u64 last) per range, increasing, neither
//!                               overlapping nor adjacent; at most BATCH_DEDUP_RANGES_MAX ranges
//!                               in the batch's dedup-seen records together
//! confirm = u32 length, u8 type 0x51, u64 stream_seq
//! name16 = u16 length, UTF-8 bytes (at most NAME_BYTES_MAX); option_u64 = bool, u64 (0 if absent)
//! level = the object's replication level on the primary: 1 configuration, 2 all (never 0, none:
//!         such objects are not replicated)
//! ```
//! The level bytes came with replication link version 2 (`ringmq_core::frame::LINK_VERSION`): a
//! backup's replica takes its object's level, so that once promoted it replicates the object as
//! the old primary did. Version 1 had none, and replicas took level `all`.
//! The type bytes 0x50 and 0x51 are unused by the client protocol, so a link that mixes these
//! with native frames (heartbeats) cannot confuse them; they are declared, with every other type
//! byte, in `ringmq_core::wire::frame_type`, and the header is read by
//! `ringmq_core::wire::frame_header`.
//!
//! Kinds 5 to 8 come only on shard 0's stream, which carries the configuration in the primary
//! coordinator's order (see `ringmq_core::replication`). Kind 9 carries dedup keys the backup
//! records without storing anything (`Record::DedupSeen`; PROTOCOL.md 2.5.4).
//!
//! Not here: heartbeats and the link handshake, which batches to build (see `primary::stream`) or
//! how to apply them (see `backup::stream`, `Shard::apply_replica`).
//!
//! Invariants:
//! - `decode_batch` never panics, whatever the bytes; it keeps *incomplete* (`Ok(None)`, nothing
//!   consumed) apart from *invalid* (`Err`), and a batch it returns was consumed exactly. After an
//!   `Err` nothing about the buffer may be relied on: a refused body may have been consumed with
//!   its frame, and the link is dropped anyway.
//! - Every count is checked against its limit before anything is allocated for it, and a `Vec`
//!   never gets more capacity than the remaining bytes could fill.
//! - Message fields of a decoded batch are slices of the batch's bytes: no body is copied.
//! - The encoding is canonical, and `encode_batch` asserts every property `decode_batch` checks,
//!   so a primary never sends a batch a backup would refuse.
//! - `encoded_len` of a batch equals the bytes `encode_batch` writes for it.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{ExchangeKind, QueueOptions};
pub use ringmq_core::replication::{Position, Record};
use ringmq_core::wire::frame_header::{
    begin_frame, end_frame, peek_frame_header, FrameHeader, FrameHeaderError, FRAME_HEADER_BYTES,
};
use ringmq_core::wire::frame_type::{LINK_BATCH, LINK_CONFIRM};
use ringmq_core::wire::primitives::MESSAGE_BYTES_MIN;
use ringmq_core::wire::{
    exchange_kind_byte, exchange_kind_from_byte, message_bytes_len, put_message, put_name, put_queue_options,
    DecodeError, Reader,
};

use crate::limits::{
    BATCH_BYTES_MAX, BATCH_DEDUP_RANGES_MAX, BATCH_HEADER_BYTES, BATCH_MESSAGES_MAX, BATCH_RANGES_MAX,
    BATCH_RECORDS_MAX,
};
use ringmq_core::limits::DEDUP_PRODUCER_ID_BYTES_MAX;
use ringmq_core::replication_level::ReplicationLevel;

/// A batch's number in its stream: the first batch is 1, and each next one is +1. `StreamSeq(0)`
/// means "no batch yet", as in a confirm of nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StreamSeq(pub u64);

/// What one replication frame carries: records of one primary shard, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The epoch of the primary that sent it.
    pub epoch: Epoch,
    /// Its number in the stream.
    pub stream_seq: StreamSeq,
    /// The records, at least one, applied in this order.
    pub records: Vec<Record>,
}

/// Why bytes are not a valid replication frame. Every message names what was allowed and what came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    /// The length prefix announces a frame larger than allowed.
    #[error("replication frame of {size} bytes exceeds the limit {max}")]
    FrameTooLarge {
        /// The announced size in bytes, length prefix included (saturating at `u32::MAX`).
        size: u32,
        /// The most allowed, in bytes, length prefix included.
        max: u32,
    },
    /// The type byte is not the one expected.
    #[error("replication frame type must be 0x{expected:02x}; got 0x{got:02x}")]
    WrongType {
        /// The type byte that was expected.
        expected: u8,
        /// The type byte that came.
        got: u8,
    },
    /// A count is outside its allowed range.
    #[error("{what}: count must be in {min}..={max}; got {count}")]
    BadCount {
        /// What is counted (`records`, `messages`, `ranges`, `headers`).
        what: &'static str,
        /// The count that came (for batch totals, the total so far).
        count: u64,
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
    },
    /// Anything else: a truncated field, trailing bytes, a name too long or not UTF-8, an unknown
    /// record kind, a bool out of range, ranges out of order, positions overflowing `u64`...
    #[error("replication frame: {0}")]
    Invalid(String),
}

/// Appends `batch` as one replication frame to `out`.
///
/// # Panics
///
/// When the batch breaks a rule `decode_batch` checks, since sending it would be a bug: no
/// records, a count above its limit, an empty `Enqueued` or `Dequeued`, positions overflowing
/// `u64`, ranges not increasing or touching, a name longer than `NAME_BYTES_MAX`, a field longer
/// than its length prefix allows, or a frame above `BATCH_BYTES_MAX`.
pub fn encode_batch(batch: &Batch, out: &mut BytesMut) {
    let start = begin_frame(out, LINK_BATCH);
    out.put_u64_le(batch.epoch.0);
    out.put_u64_le(batch.stream_seq.0);
    assert!(batch.stream_seq.0 >= 1, "stream seq 0 means no batch; the first batch is 1");
    let records = batch.records.len();
    assert!((1..=BATCH_RECORDS_MAX as usize).contains(&records), "batch of {records} records");
    out.put_u32_le(records as u32);
    let (mut messages_total, mut ranges_total, mut dedup_ranges_total) = (0usize, 0usize, 0usize);
    for record in &batch.records {
        match record {
            Record::QueueCreated { name, options, level } => {
                out.put_u8(KIND_QUEUE_CREATED);
                put_name(out, name);
                put_queue_options(out, options);
                out.put_u8(level_byte(*level));
            }
            Record::QueueDeleted { name } => {
                out.put_u8(KIND_QUEUE_DELETED);
                put_name(out, name);
            }
            Record::Enqueued { queue, first_position, messages } => {
                out.put_u8(KIND_ENQUEUED);
                put_name(out, queue);
                out.put_u64_le(first_position.0);
                assert!(!messages.is_empty(), "enqueued record with no messages");
                assert!(
                    first_position.0.checked_add(messages.len() as u64 - 1).is_some(),
                    "enqueued positions overflow u64"
                );
                messages_total += messages.len();
                out.put_u32_le(messages.len() as u32);
                for message in messages {
                    put_message(out, message);
                }
            }
            Record::Dequeued { queue, ranges } => {
                out.put_u8(KIND_DEQUEUED);
                put_name(out, queue);
                assert!(!ranges.is_empty(), "dequeued record with no ranges");
                ranges_total += ranges.len();
                out.put_u32_le(ranges.len() as u32);
                let mut previous: Option<Position> = None;
                for &(first, last) in ranges {
                    assert!(first <= last, "dequeue range {first:?}..={last:?} has first > last");
                    if let Some(previous) = previous {
                        assert!(
                            previous.0.checked_add(1).is_some_and(|end| first.0 > end),
                            "dequeue range {first:?} does not follow {previous:?} with a gap"
                        );
                    }
                    out.put_u64_le(first.0);
                    out.put_u64_le(last.0);
                    previous = Some(last);
                }
            }
            Record::ExchangeCreated { name, kind, level } => {
                out.put_u8(KIND_EXCHANGE_CREATED);
                put_name(out, name);
                out.put_u8(exchange_kind_byte(*kind));
                out.put_u8(level_byte(*level));
            }
            Record::ExchangeDeleted { name } => {
                out.put_u8(KIND_EXCHANGE_DELETED);
                put_name(out, name);
            }
            Record::DedupSeen { queue, keys } => {
                out.put_u8(KIND_DEDUP_SEEN);
                put_name(out, queue);
                assert!(!keys.is_empty(), "dedup-seen record with no producers");
                out.put_u32_le(keys.len() as u32);
                for (producer, ranges) in keys {
                    assert!(
                        (1..=DEDUP_PRODUCER_ID_BYTES_MAX).contains(&producer.len()) && !producer.contains('/'),
                        "dedup producer id '{producer}' is not a valid x-ringmq-dedup producer id"
                    );
                    put_name(out, producer);
                    assert!(!ranges.is_empty(), "dedup-seen producer '{producer}' with no ranges");
                    dedup_ranges_total += ranges.len();
                    out.put_u32_le(ranges.len() as u32);
                    let mut previous: Option<u64> = None;
                    for &(first, last) in ranges {
                        assert!(first <= last, "dedup range {first}..={last} has first > last");
                        if let Some(previous) = previous {
                            assert!(
                                previous.checked_add(1).is_some_and(|end| first > end),
                                "dedup range {first} does not follow {previous} with a gap"
                            );
                        }
                        out.put_u64_le(first);
                        out.put_u64_le(last);
                        previous = Some(last);
                    }
                }
            }
            Record::Bound { exchange, queue, key } | Record::Unbound { exchange, queue, key } => {
                let kind = if matches!(record, Record::Bound { .. }) { KIND_BOUND } else { KIND_UNBOUND };
                out.put_u8(kind);
                put_name(out, exchange);
                put_name(out, queue);
                put_name(out, key);
            }
        }
    }
    assert!(messages_total <= BATCH_MESSAGES_MAX as usize, "batch of {messages_total} messages");
    assert!(ranges_total <= BATCH_RANGES_MAX as usize, "batch of {ranges_total} ranges");
    assert!(dedup_ranges_total <= BATCH_DEDUP_RANGES_MAX as usize, "batch of {dedup_ranges_total} dedup ranges");
    let size = out.len() - start;
    assert!(size <= BATCH_BYTES_MAX as usize, "batch of {size} bytes exceeds BATCH_BYTES_MAX {BATCH_BYTES_MAX}");
    end_frame(out, start);
}

/// Decodes the replication batch at the front of `buf`.
///
/// Returns `Ok(None)` while `buf` holds only part of a frame; nothing is consumed. Returns
/// `Ok(Some(batch))` after consuming exactly that frame's bytes; message fields are slices of
/// them. A length above `bytes_max` and a wrong type byte are errors as soon as they arrive.
///
/// # Errors
///
/// Any [`RecordDecodeError`]: the bytes are not a valid batch. Nothing about `buf` may be relied
/// on afterwards; the caller drops the link.
///
/// # Panics
///
/// When `bytes_max` is above `BATCH_BYTES_MAX`: a runtime option may lower a limit, never raise it.
pub fn decode_batch(buf: &mut BytesMut, bytes_max: u32) -> Result<Option<Batch>, RecordDecodeError> {
    let Some(bytes) = take_frame(buf, bytes_max, LINK_BATCH)? else {
        return Ok(None);
    };
    let mut r = Reader::new("replication-batch", bytes, FRAME_HEADER_BYTES);
    let epoch = Epoch(r.u64("epoch")?);
    let stream_seq = StreamSeq(r.u64("stream seq")?);
    if stream_seq.0 == 0 {
        return Err(RecordDecodeError::Invalid("stream seq must be at least 1; got 0".to_string()));
    }
    let records_count = read_count(&mut r, "records", 1, BATCH_RECORDS_MAX)?;
    let mut records = Vec::with_capacity(records_count.min(r.remaining() / RECORD_BYTES_MIN));
    let (mut messages_total, mut ranges_total, mut dedup_ranges_total) = (0u64, 0u64, 0u64);
    for _ in 0..records_count {
        let kind = r.u8("record kind")?;
        let name = match kind {
            KIND_QUEUE_CREATED..=KIND_DEQUEUED | KIND_DEDUP_SEEN => r.name("queue name")?,
            KIND_EXCHANGE_CREATED..=KIND_UNBOUND => r.name("exchange name")?,
            other => {
                return Err(RecordDecodeError::Invalid(format!(
                    "record kind is {other}, must be 1 (queue-created), 2 (queue-deleted), 3 (enqueued), 4 \
                     (dequeued), 5 (exchange-created), 6 (exchange-deleted), 7 (bound), 8 (unbound) or 9 \
                     (dedup-seen)"
                )))
            }
        };
        let record = match kind {
            KIND_QUEUE_CREATED => {
                let options = QueueOptions {
                    exclusive: r.bool("exclusive")?,
                    auto_delete: r.bool("auto_delete")?,
                    passive: r.bool("passive")?,
                    max_count: r.option_u64("max_count")?,
                    max_bytes: r.option_u64("max_bytes")?,
                };
                Record::QueueCreated { name, options, level: read_level(&mut r)? }
            }
            KIND_QUEUE_DELETED => Record::QueueDeleted { name },
            KIND_ENQUEUED => {
                let first_position = Position(r.u64("first position")?);
                let count = read_count(&mut r, "messages", 1, BATCH_MESSAGES_MAX)?;
                messages_total += count as u64;
                check_total("messages", messages_total, BATCH_MESSAGES_MAX)?;
                if first_position.0.checked_add(count as u64 - 1).is_none() {
                    return Err(RecordDecodeError::Invalid(format!(
                        "first position {} plus {count} messages overflows u64",
                        first_position.0
                    )));
                }
                let mut messages = Vec::with_capacity(count.min(r.remaining() / MESSAGE_BYTES_MIN));
                for _ in 0..count {
                    messages.push(r.message()?);
                }
                Record::Enqueued { queue: name, first_position, messages }
            }
            KIND_DEQUEUED => {
                let count = read_count(&mut r, "ranges", 1, BATCH_RANGES_MAX)?;
                ranges_total += count as u64;
                check_total("ranges", ranges_total, BATCH_RANGES_MAX)?;
                let mut ranges = Vec::with_capacity(count.min(r.remaining() / RANGE_BYTES));
                let mut previous: Option<u64> = None;
                for _ in 0..count {
                    let first = r.u64("range first")?;
                    let last = r.u64("range last")?;
                    if first > last {
                        return Err(RecordDecodeError::Invalid(format!("range {first}..={last} has first > last")));
                    }
                    if let Some(previous) = previous {
                        if previous.checked_add(1).is_none_or(|end| first <= end) {
                            return Err(RecordDecodeError::Invalid(format!(
                                "range starting at {first} must start above {previous} + 1 (ranges increase and \
                                 neither overlap nor touch)"
                            )));
                        }
                    }
                    ranges.push((Position(first), Position(last)));
                    previous = Some(last);
                }
                Record::Dequeued { queue: name, ranges }
            }
            KIND_DEDUP_SEEN => {
                let producers = read_count(&mut r, "dedup producers", 1, BATCH_DEDUP_RANGES_MAX)?;
                let mut keys = Vec::with_capacity(producers.min(r.remaining() / DEDUP_PRODUCER_BYTES_MIN));
                for _ in 0..producers {
                    let producer = r.name("dedup producer id")?;
                    if !(1..=DEDUP_PRODUCER_ID_BYTES_MAX).contains(&producer.len()) || producer.contains('/') {
                        return Err(RecordDecodeError::Invalid(format!(
                            "dedup producer id must be 1..={DEDUP_PRODUCER_ID_BYTES_MAX} bytes without '/'; got \
                             '{producer}'"
                        )));
                    }
                    let count = read_count(&mut r, "dedup ranges", 1, BATCH_DEDUP_RANGES_MAX)?;
                    dedup_ranges_total += count as u64;
                    check_total("dedup ranges", dedup_ranges_total, BATCH_DEDUP_RANGES_MAX)?;
                    let mut ranges = Vec::with_capacity(count.min(r.remaining() / RANGE_BYTES));
                    let mut previous: Option<u64> = None;
                    for _ in 0..count {
                        let first = r.u64("dedup range first")?;
                        let last = r.u64("dedup range last")?;
                        if first > last {
                            return Err(RecordDecodeError::Invalid(format!(
                                "dedup range {first}..={last} has first > last"
                            )));
                        }
                        if let Some(previous) = previous {
                            if previous.checked_add(1).is_none_or(|end| first <= end) {
                                return Err(RecordDecodeError::Invalid(format!(
                                    "dedup range starting at {first} must start above {previous} + 1 (ranges \
                                     increase and neither overlap nor touch)"
                                )));
                            }
                        }
                        ranges.push((first, last));
                        previous = Some(last);
                    }
                    keys.push((producer, ranges));
                }
                Record::DedupSeen { queue: name, keys }
            }
            KIND_EXCHANGE_CREATED => {
                let kind = read_exchange_kind(&mut r)?;
                Record::ExchangeCreated { name, kind, level: read_level(&mut r)? }
            }
            KIND_EXCHANGE_DELETED => Record::ExchangeDeleted { name },
            KIND_BOUND => Record::Bound { exchange: name, queue: r.name("queue name")?, key: r.name("binding key")? },
            _ => Record::Unbound { exchange: name, queue: r.name("queue name")?, key: r.name("binding key")? },
        };
        records.push(record);
    }
    r.finish()?;
    Ok(Some(Batch { epoch, stream_seq, records }))
}

/// Appends a backup's confirm, "every batch up to `stream_seq` is applied", to `out`.
pub fn encode_confirm(stream_seq: StreamSeq, out: &mut BytesMut) {
    let start = begin_frame(out, LINK_CONFIRM);
    out.put_u64_le(stream_seq.0);
    end_frame(out, start);
}

/// Decodes the confirm at the front of `buf`: `Ok(None)` while incomplete, consuming nothing.
///
/// # Errors
///
/// A [`RecordDecodeError`] when the bytes are not a confirm frame.
pub fn decode_confirm(buf: &mut BytesMut) -> Result<Option<StreamSeq>, RecordDecodeError> {
    let Some(bytes) = take_frame(buf, CONFIRM_BYTES as u32, LINK_CONFIRM)? else {
        return Ok(None);
    };
    let mut r = Reader::new("replication-confirm", bytes, FRAME_HEADER_BYTES);
    let seq = StreamSeq(r.u64("stream seq")?);
    r.finish()?;
    Ok(Some(seq))
}

impl From<DecodeError> for RecordDecodeError {
    /// A field-level failure read with the native codec's reader (truncated, not UTF-8, a bad
    /// bool, too many headers): its message names the frame and the field.
    fn from(error: DecodeError) -> RecordDecodeError {
        RecordDecodeError::Invalid(error.to_string())
    }
}

impl Batch {
    /// The bytes `encode_batch` writes for this batch, length prefix included.
    pub fn encoded_len(&self) -> usize {
        BATCH_HEADER_BYTES + self.records.iter().map(record_encoded_len).sum::<usize>()
    }
}

/// The bytes `record` adds to a batch.
pub fn record_encoded_len(record: &Record) -> usize {
    {
        match record {
            Record::QueueCreated { name, .. } => queue_created_bytes_len(name),
            Record::QueueDeleted { name } => queue_deleted_bytes_len(name),
            Record::Enqueued { queue, messages, .. } => {
                enqueued_header_bytes_len(queue) + messages.iter().map(message_bytes_len).sum::<usize>()
            }
            Record::Dequeued { queue, ranges } => dequeued_header_bytes_len(queue) + RANGE_BYTES * ranges.len(),
            Record::ExchangeCreated { name, .. } => 1 + 2 + name.len() + 1 + 1,
            Record::ExchangeDeleted { name } => 1 + 2 + name.len(),
            Record::DedupSeen { queue, keys } => {
                dedup_seen_header_bytes_len(queue)
                    + keys
                        .iter()
                        .map(|(producer, ranges)| dedup_producer_bytes_len(producer, ranges.len()))
                        .sum::<usize>()
            }
            Record::Bound { exchange, queue, key } | Record::Unbound { exchange, queue, key } => {
                1 + 2 + exchange.len() + 2 + queue.len() + 2 + key.len()
            }
        }
    }
}

impl StreamSeq {
    /// The next batch's number.
    pub fn next(self) -> StreamSeq {
        StreamSeq(self.0 + 1)
    }
}

impl fmt::Display for StreamSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Bytes of a `QueueCreated` record for queue `name`: kind, name, three bools, two option_u64,
/// level.
pub(crate) fn queue_created_bytes_len(name: &str) -> usize {
    1 + 2 + name.len() + 3 + 2 * 9 + 1
}

/// Bytes of a `QueueDeleted` record for queue `name`.
pub(crate) fn queue_deleted_bytes_len(name: &str) -> usize {
    1 + 2 + name.len()
}

/// Bytes of an `Enqueued` record for `queue`, without its messages.
pub(crate) fn enqueued_header_bytes_len(queue: &str) -> usize {
    1 + 2 + queue.len() + 8 + 4
}

/// Bytes of a `Dequeued` record for `queue`, without its ranges.
pub(crate) fn dequeued_header_bytes_len(queue: &str) -> usize {
    1 + 2 + queue.len() + 4
}

/// Bytes of a `DedupSeen` record for `queue`, without its producers.
pub(crate) fn dedup_seen_header_bytes_len(queue: &str) -> usize {
    1 + 2 + queue.len() + 4
}

/// Bytes of one producer's part of a `DedupSeen` record with `ranges` ranges.
pub(crate) fn dedup_producer_bytes_len(producer: &str, ranges: usize) -> usize {
    2 + producer.len() + 4 + RANGE_BYTES * ranges
}

// ----- helpers -----

/// Checks the length and type of the frame at the front of `buf` and splits it off when complete.
///
/// # Panics
/// When `bytes_max` is above `BATCH_BYTES_MAX`: a runtime option may lower a limit, never raise it.
fn take_frame(buf: &mut BytesMut, bytes_max: u32, expected: u8) -> Result<Option<Bytes>, RecordDecodeError> {
    assert!(bytes_max <= BATCH_BYTES_MAX, "bytes_max {bytes_max} is above BATCH_BYTES_MAX {BATCH_BYTES_MAX}");
    let header = peek_frame_header(buf, bytes_max).map_err(|error| match error {
        FrameHeaderError::TooLarge { size, max } => RecordDecodeError::FrameTooLarge { size, max },
        FrameHeaderError::ZeroLength => RecordDecodeError::Invalid(ZERO_LENGTH.to_string()),
    })?;
    let Some(FrameHeader { size, type_byte }) = header else { return Ok(None) };
    if type_byte != expected {
        return Err(RecordDecodeError::WrongType { expected, got: type_byte });
    }
    if buf.len() < size as usize {
        return Ok(None);
    }
    Ok(Some(buf.split_to(size as usize).freeze()))
}

/// Why a zero length is refused, for both decoders' messages (this module's and `link::frame`'s).
pub(crate) const ZERO_LENGTH: &str = "length is 0, at least 1 needed (the type)";

fn check_total(what: &'static str, total: u64, max: u32) -> Result<(), RecordDecodeError> {
    if total > u64::from(max) {
        return Err(RecordDecodeError::BadCount { what, count: total, min: 1, max: u64::from(max) });
    }
    Ok(())
}

const KIND_QUEUE_CREATED: u8 = 1;
const KIND_QUEUE_DELETED: u8 = 2;
const KIND_ENQUEUED: u8 = 3;
const KIND_DEQUEUED: u8 = 4;
const KIND_EXCHANGE_CREATED: u8 = 5;
const KIND_EXCHANGE_DELETED: u8 = 6;
const KIND_BOUND: u8 = 7;
const KIND_UNBOUND: u8 = 8;
const KIND_DEDUP_SEEN: u8 = 9;
/// The level byte of an object replicated as `configuration` (its existence, not its messages).
const LEVEL_CONFIGURATION: u8 = 1;
/// The level byte of an object replicated as `all` (a queue with its messages).
const LEVEL_ALL: u8 = 2;
/// A whole confirm frame: length, type, stream seq.
const CONFIRM_BYTES: usize = FRAME_HEADER_BYTES + 8;
/// The smallest record: kind and an empty name.
const RECORD_BYTES_MIN: usize = 1 + 2;
/// One dequeue (or dedup) range.
pub(crate) const RANGE_BYTES: usize = 16;
/// The smallest producer part of a dedup-seen record: a one-byte id, the range count, one range.
const DEDUP_PRODUCER_BYTES_MIN: usize = 2 + 1 + 4 + RANGE_BYTES;

/// Reads an exchange kind's byte.
fn read_exchange_kind(r: &mut Reader) -> Result<ExchangeKind, RecordDecodeError> {
    let byte = r.u8("exchange kind")?;
    exchange_kind_from_byte(byte).ok_or_else(|| {
        RecordDecodeError::Invalid(format!("exchange kind is {byte}, must be 0 (direct), 1 (fanout) or 2 (topic)"))
    })
}

/// The byte of a replicated object's level.
///
/// # Panics
/// For level `none`: such an object is never replicated, so sending one would be a bug.
fn level_byte(level: ReplicationLevel) -> u8 {
    match level {
        ReplicationLevel::None => panic!("a replication record names an object of level none"),
        ReplicationLevel::Configuration => LEVEL_CONFIGURATION,
        ReplicationLevel::All => LEVEL_ALL,
    }
}

/// Reads a replicated object's level byte: 1 or 2; any other (0, none, included) is invalid.
fn read_level(r: &mut Reader) -> Result<ReplicationLevel, RecordDecodeError> {
    match r.u8("replication level")? {
        LEVEL_CONFIGURATION => Ok(ReplicationLevel::Configuration),
        LEVEL_ALL => Ok(ReplicationLevel::All),
        byte => Err(RecordDecodeError::Invalid(format!(
            "replication level is {byte}, must be 1 (configuration) or 2 (all)"
        ))),
    }
}

/// A `u32` count checked against `min..=max` before anything is allocated for it.
fn read_count(r: &mut Reader, what: &'static str, min: u32, max: u32) -> Result<usize, RecordDecodeError> {
    let count = r.u32(what)?;
    if !(min..=max).contains(&count) {
        return Err(RecordDecodeError::BadCount {
            what,
            count: u64::from(count),
            min: u64::from(min),
            max: u64::from(max),
        });
    }
    Ok(count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::frame::{Header, Message};

    fn message(body: &'static str) -> Message {
        Message {
            routing_key: Bytes::from_static(b"key"),
            message_id: Bytes::from_static(b"id"),
            headers: vec![Header { name: Bytes::from_static(b"h"), value: Bytes::from_static(b"v") }],
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn sample() -> Batch {
        Batch {
            epoch: Epoch(3),
            stream_seq: StreamSeq(7),
            records: vec![
                Record::QueueCreated {
                    name: "q".to_string(),
                    options: QueueOptions { max_count: Some(10), ..QueueOptions::default() },
                    level: ReplicationLevel::All,
                },
                Record::Enqueued {
                    queue: "q".to_string(),
                    first_position: Position(5),
                    messages: vec![message("a"), message("bb")],
                },
                Record::Dequeued {
                    queue: "q".to_string(),
                    ranges: vec![(Position(1), Position(2)), (Position(4), Position(4))],
                },
                Record::QueueDeleted { name: "old".to_string() },
                Record::ExchangeCreated {
                    name: "orders".to_string(),
                    kind: ExchangeKind::Topic,
                    level: ReplicationLevel::All,
                },
                Record::Bound { exchange: "orders".to_string(), queue: "q".to_string(), key: "eu.*".to_string() },
                Record::Unbound { exchange: "orders".to_string(), queue: "q".to_string(), key: String::new() },
                Record::ExchangeDeleted { name: "orders".to_string() },
            ],
        }
    }

    /// A batch of configuration records only, one of each kind 5..=8.
    fn configuration() -> Batch {
        let records = vec![
            Record::ExchangeCreated { name: "x".to_string(), kind: ExchangeKind::Fanout, level: ReplicationLevel::All },
            Record::Bound { exchange: "x".to_string(), queue: "q".to_string(), key: "k".to_string() },
            Record::Unbound { exchange: "x".to_string(), queue: "q".to_string(), key: "k".to_string() },
            Record::ExchangeDeleted { name: "x".to_string() },
        ];
        Batch { epoch: Epoch(1), stream_seq: StreamSeq(1), records }
    }

    fn encoded(batch: &Batch) -> BytesMut {
        let mut out = BytesMut::new();
        encode_batch(batch, &mut out);
        out
    }

    #[test]
    fn batch_round_trips_and_message_bodies_are_slices_of_the_frame() {
        // Goal: decode(encode(b)) == b, the length matches `encoded_len`, and bodies are not copied.
        let batch = sample();
        let mut buf = encoded(&batch);
        assert_eq!(buf.len(), batch.encoded_len());
        let frame_start = buf.as_ptr() as usize;
        let frame_end = frame_start + buf.len();
        let decoded = decode_batch(&mut buf, BATCH_BYTES_MAX).unwrap().unwrap();
        assert_eq!(decoded, batch);
        assert!(buf.is_empty());
        // The body of the first message points into the frame's bytes.
        let Record::Enqueued { messages, .. } = &decoded.records[1] else { panic!("not enqueued") };
        let body = messages[0].body.as_ptr() as usize;
        assert!((frame_start..frame_end).contains(&body));
        // Encoding it again gives the same bytes (canonical).
        assert_eq!(encoded(&decoded), encoded(&batch));
    }

    #[test]
    fn every_prefix_of_a_batch_is_incomplete_and_consumes_nothing() {
        // Goal: a batch arriving byte by byte is `Ok(None)` until its last byte.
        let whole = encoded(&sample());
        for len in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..len]);
            assert_eq!(decode_batch(&mut part, BATCH_BYTES_MAX), Ok(None), "prefix of {len} bytes");
            assert_eq!(part.len(), len);
        }
    }

    #[test]
    fn invalid_batches_are_errors_that_name_the_problem() {
        // Goal: each broken rule is an error, not an incomplete frame, and says what came.
        let whole = encoded(&sample());
        // Too large for the reader's limit: refused from the length alone.
        let mut head = BytesMut::from(&whole[..4]);
        assert_eq!(
            decode_batch(&mut head, 16),
            Err(RecordDecodeError::FrameTooLarge { size: whole.len() as u32, max: 16 })
        );
        // A client frame's type byte.
        let mut wrong = BytesMut::from(&whole[..5]);
        wrong[4] = 0x30;
        assert_eq!(
            decode_batch(&mut wrong, BATCH_BYTES_MAX),
            Err(RecordDecodeError::WrongType { expected: 0x50, got: 0x30 })
        );
        // A record count of 0.
        let mut empty = whole.clone();
        empty[21..25].copy_from_slice(&0u32.to_le_bytes());
        let error = decode_batch(&mut empty, BATCH_BYTES_MAX).unwrap_err();
        assert_eq!(error.to_string(), "records: count must be in 1..=4096; got 0");
        // Stream seq 0.
        let mut zero = whole.clone();
        zero[13..21].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_batch(&mut zero, BATCH_BYTES_MAX).unwrap_err().to_string().contains("stream seq"));
        // An unknown record kind (the first record's kind byte follows the header).
        let mut kind = whole.clone();
        kind[25] = 10;
        assert!(decode_batch(&mut kind, BATCH_BYTES_MAX).unwrap_err().to_string().contains("record kind is 10"));
        // Trailing bytes inside the announced length.
        let mut trailing = whole.clone();
        trailing.extend_from_slice(&[0]);
        let length = (trailing.len() - 4) as u32;
        trailing[..4].copy_from_slice(&length.to_le_bytes());
        assert!(decode_batch(&mut trailing, BATCH_BYTES_MAX).unwrap_err().to_string().contains("trailing 1 bytes"));
    }

    #[test]
    fn configuration_records_round_trip_with_the_documented_layout() {
        // Goal: kinds 5..=8 encode as the module doc and PROTOCOL.md say, byte for byte, and every
        // exchange kind round-trips.
        let batch = configuration();
        let bytes = encoded(&batch);
        assert_eq!(bytes.len(), batch.encoded_len());
        let mut expected = Vec::new();
        expected.extend_from_slice(&[5, 1, 0, b'x', 1, 2]);
        for kind in [7u8, 8] {
            expected.extend_from_slice(&[kind, 1, 0, b'x', 1, 0, b'q', 1, 0, b'k']);
        }
        expected.extend_from_slice(&[6, 1, 0, b'x']);
        assert_eq!(&bytes[BATCH_HEADER_BYTES..], &expected[..]);
        assert_eq!(decode_batch(&mut bytes.clone(), BATCH_BYTES_MAX), Ok(Some(batch)));
        for kind in [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic] {
            let record = Record::ExchangeCreated { name: "e".to_string(), kind, level: ReplicationLevel::All };
            let batch = Batch { epoch: Epoch(1), stream_seq: StreamSeq(1), records: vec![record] };
            assert_eq!(decode_batch(&mut encoded(&batch), BATCH_BYTES_MAX), Ok(Some(batch)));
        }
    }

    #[test]
    fn bad_configuration_records_are_errors_naming_what_was_allowed() {
        // Goal: an exchange kind above 2, a kind byte above 9 and a truncated binding are errors
        // (never panics, never a batch), and their messages say what was allowed and what came.
        let whole = encoded(&configuration());
        let record = BATCH_HEADER_BYTES;
        // exchange-created of "x": kind byte, name length (2), 'x', exchange kind.
        let mut kind = whole.clone();
        kind[record + 4] = 3;
        let error = decode_batch(&mut kind, BATCH_BYTES_MAX).unwrap_err().to_string();
        assert!(error.contains("exchange kind is 3, must be 0 (direct), 1 (fanout) or 2 (topic)"), "{error}");
        let mut unknown = whole.clone();
        unknown[record] = 10;
        let error = decode_batch(&mut unknown, BATCH_BYTES_MAX).unwrap_err().to_string();
        assert!(error.contains("record kind is 10, must be 1 (queue-created)") && error.contains("9 (dedup-seen)"));
        // A bound record whose key runs past the frame: the announced length is cut by one byte.
        let bound = Batch {
            records: vec![Record::Bound { exchange: "x".into(), queue: "q".into(), key: "k".into() }],
            ..configuration()
        };
        let mut short = encoded(&bound);
        short.truncate(short.len() - 1);
        let length = (short.len() - 4) as u32;
        short[..4].copy_from_slice(&length.to_le_bytes());
        let error = decode_batch(&mut short, BATCH_BYTES_MAX).unwrap_err().to_string();
        assert!(error.contains("binding key"), "{error}");
    }

    #[test]
    fn created_records_carry_each_level_with_the_documented_layout() {
        // Goal: queue-created and exchange-created end with the object's level byte, 1
        // (configuration) or 2 (all), as the module doc and PROTOCOL.md say, and round-trip at
        // each level.
        for (level, byte) in [(ReplicationLevel::Configuration, 1u8), (ReplicationLevel::All, 2)] {
            let options = QueueOptions { max_count: Some(3), ..QueueOptions::default() };
            let records = vec![
                Record::QueueCreated { name: "q".into(), options, level },
                Record::ExchangeCreated { name: "x".into(), kind: ExchangeKind::Topic, level },
            ];
            let batch = Batch { epoch: Epoch(1), stream_seq: StreamSeq(1), records };
            let bytes = encoded(&batch);
            assert_eq!(bytes.len(), batch.encoded_len());
            // kind, name "q", exclusive, auto_delete, passive, max_count Some(3), max_bytes None, level.
            let mut expected = vec![1, 1, 0, b'q', 0, 0, 0, 1];
            expected.extend_from_slice(&3u64.to_le_bytes());
            expected.push(0);
            expected.extend_from_slice(&0u64.to_le_bytes());
            expected.push(byte);
            // kind, name "x", exchange kind topic, level.
            expected.extend_from_slice(&[5, 1, 0, b'x', 2, byte]);
            assert_eq!(&bytes[BATCH_HEADER_BYTES..], &expected[..], "{level}");
            assert_eq!(decode_batch(&mut bytes.clone(), BATCH_BYTES_MAX), Ok(Some(batch)), "{level}");
        }
    }

    #[test]
    fn an_unknown_level_byte_is_an_error_naming_the_allowed_ones() {
        // Goal: a level byte other than 1 or 2 (0, none, included: such objects are never
        // replicated) in either created record is an error saying what was allowed and what
        // came, never a panic and never a record.
        let records = vec![
            Record::QueueCreated { name: "q".into(), options: QueueOptions::default(), level: ReplicationLevel::All },
            Record::ExchangeCreated { name: "x".into(), kind: ExchangeKind::Direct, level: ReplicationLevel::All },
        ];
        let whole = encoded(&Batch { epoch: Epoch(1), stream_seq: StreamSeq(1), records });
        let queue_level = BATCH_HEADER_BYTES + queue_created_bytes_len("q") - 1;
        let exchange_level = whole.len() - 1;
        assert_eq!((whole[queue_level], whole[exchange_level]), (2, 2));
        for at in [queue_level, exchange_level] {
            for byte in [0u8, 3, 0xff] {
                let mut bad = whole.clone();
                bad[at] = byte;
                let error = decode_batch(&mut bad, BATCH_BYTES_MAX).unwrap_err().to_string();
                assert_eq!(
                    error,
                    format!("replication frame: replication level is {byte}, must be 1 (configuration) or 2 (all)")
                );
            }
        }
        // A batch cut right before the level byte is incomplete, not a record without a level.
        let mut short = BytesMut::from(&whole[..exchange_level]);
        assert_eq!(decode_batch(&mut short, BATCH_BYTES_MAX), Ok(None));
    }

    #[test]
    #[should_panic(expected = "level none")]
    fn encoding_an_object_of_level_none_is_a_bug() {
        // Goal: a primary never sends a record its backups would refuse: level none panics.
        let record =
            Record::QueueCreated { name: "q".into(), options: QueueOptions::default(), level: ReplicationLevel::None };
        encoded(&Batch { epoch: Epoch(1), stream_seq: StreamSeq(1), records: vec![record] });
    }

    #[test]
    fn dequeue_ranges_must_increase_without_touching() {
        // Goal: the canonical form of ranges is enforced on decode (touching ranges would have been
        // merged by the encoder).
        let mut batch = sample();
        batch.records = vec![Record::Dequeued { queue: "q".to_string(), ranges: vec![(Position(1), Position(2))] }];
        let mut bytes = encoded(&batch);
        // Append a second range 3..=3 by hand: it touches 1..=2.
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&3u64.to_le_bytes());
        let ranges_at = bytes.len() - 32 - 4;
        bytes[ranges_at..ranges_at + 4].copy_from_slice(&2u32.to_le_bytes());
        let length = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&length.to_le_bytes());
        let error = decode_batch(&mut bytes, BATCH_BYTES_MAX).unwrap_err();
        assert!(error.to_string().contains("must start above 2 + 1"), "{error}");
    }

    #[test]
    fn decoding_corrupted_batches_never_panics() {
        // Goal: network input never causes a panic: every single-byte corruption and every
        // truncation of a valid batch decodes to a batch, an error, or "incomplete".
        // Method: flip each byte of a sample batch to several values (seeded xorshift) and decode.
        let whole = encoded(&sample());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for index in 0..whole.len() {
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut corrupt = whole.clone();
                corrupt[index] = state as u8;
                let input = corrupt.clone();
                let before = corrupt.len();
                match decode_batch(&mut corrupt, BATCH_BYTES_MAX) {
                    Ok(Some(batch)) => {
                        // Whatever decoded re-encodes canonically to the bytes it came from.
                        let consumed = before - corrupt.len();
                        assert_eq!(encoded(&batch)[..], input[..consumed]);
                    }
                    Ok(None) => assert_eq!(corrupt.len(), before, "incomplete consumed bytes"),
                    Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn confirm_round_trips_and_is_incomplete_until_whole() {
        // Goal: the backup's confirm frame decodes to the seq it carries.
        let mut out = BytesMut::new();
        encode_confirm(StreamSeq(42), &mut out);
        let mut part = BytesMut::from(&out[..8]);
        assert_eq!(decode_confirm(&mut part), Ok(None));
        assert_eq!(decode_confirm(&mut out), Ok(Some(StreamSeq(42))));
        assert!(out.is_empty());
    }

    /// A batch of one dedup-seen record of queue "q": producer "p" with 1..=3 and 7..=7,
    /// producer "r" with 5..=5.
    fn dedup_seen() -> Batch {
        let keys = vec![("p".to_string(), vec![(1, 3), (7, 7)]), ("r".to_string(), vec![(5, 5)])];
        Batch {
            epoch: Epoch(1),
            stream_seq: StreamSeq(1),
            records: vec![Record::DedupSeen { queue: "q".into(), keys }],
        }
    }

    #[test]
    fn dedup_seen_records_round_trip_with_the_documented_layout() {
        // Goal: kind 9 encodes as the module doc and PROTOCOL.md say, byte for byte.
        let batch = dedup_seen();
        let bytes = encoded(&batch);
        assert_eq!(bytes.len(), batch.encoded_len());
        let mut expected = vec![9, 1, 0, b'q', 2, 0, 0, 0, 1, 0, b'p', 2, 0, 0, 0];
        for value in [1u64, 3, 7, 7] {
            expected.extend_from_slice(&value.to_le_bytes());
        }
        expected.extend_from_slice(&[1, 0, b'r', 1, 0, 0, 0]);
        for value in [5u64, 5] {
            expected.extend_from_slice(&value.to_le_bytes());
        }
        assert_eq!(&bytes[BATCH_HEADER_BYTES..], &expected[..]);
        assert_eq!(decode_batch(&mut bytes.clone(), BATCH_BYTES_MAX), Ok(Some(batch)));
        // The largest values and a record at the batch's range limit round-trip too.
        let full: Vec<(u64, u64)> = (0..BATCH_DEDUP_RANGES_MAX as u64 - 1).map(|i| (3 * i, 3 * i + 1)).collect();
        let keys = vec![("a".repeat(DEDUP_PRODUCER_ID_BYTES_MAX), full), ("b".to_string(), vec![(u64::MAX, u64::MAX)])];
        let big = Batch { records: vec![Record::DedupSeen { queue: "q".into(), keys }], ..dedup_seen() };
        let bytes = encoded(&big);
        assert_eq!(bytes.len(), big.encoded_len());
        assert_eq!(decode_batch(&mut bytes.clone(), BATCH_BYTES_MAX), Ok(Some(big)));
    }

    #[test]
    fn bad_dedup_seen_records_are_errors_naming_what_was_wrong() {
        // Goal: bad counts, producer ids and ranges of kind 9 are errors, never panics.
        let whole = encoded(&dedup_seen());
        let record = BATCH_HEADER_BYTES;
        // Layout offsets: kind (0), name "q" (1..4), producer count (4..8), "p" (8..11), range
        // count (11..15), ranges from 15.
        let decode_error = |bytes: &BytesMut| {
            let mut bytes = bytes.clone();
            decode_batch(&mut bytes, BATCH_BYTES_MAX).unwrap_err().to_string()
        };
        let mut zero_producers = whole.clone();
        zero_producers[record + 4..record + 8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_error(&zero_producers), "dedup producers: count must be in 1..=4096; got 0");
        let mut many_producers = whole.clone();
        many_producers[record + 4..record + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_error(&many_producers).contains("dedup producers: count must be in 1..=4096"));
        let mut zero_ranges = whole.clone();
        zero_ranges[record + 11..record + 15].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_error(&zero_ranges), "dedup ranges: count must be in 1..=4096; got 0");
        let mut slash = whole.clone();
        slash[record + 10] = b'/';
        assert!(decode_error(&slash).contains("dedup producer id must be 1..=200 bytes without '/'; got '/'"));
        let mut empty_id = BytesMut::new();
        let keys = vec![("p".to_string(), vec![(1, 1)])];
        let batch = Batch { records: vec![Record::DedupSeen { queue: "q".into(), keys }], ..dedup_seen() };
        encode_batch(&batch, &mut empty_id);
        // Producer name length 1 -> 0, and drop the 'p' byte (fix the frame length).
        empty_id[record + 8] = 0;
        empty_id.truncate(record + 10);
        let mut rebuilt = empty_id;
        rebuilt.extend_from_slice(&1u32.to_le_bytes());
        rebuilt.extend_from_slice(&1u64.to_le_bytes());
        rebuilt.extend_from_slice(&1u64.to_le_bytes());
        let length = (rebuilt.len() - 4) as u32;
        rebuilt[..4].copy_from_slice(&length.to_le_bytes());
        assert!(
            decode_error(&rebuilt).contains("dedup producer id must be 1..=200 bytes"),
            "{}",
            decode_error(&rebuilt)
        );
        // Ranges backwards, and touching.
        let mut backwards = whole.clone();
        backwards[record + 15..record + 23].copy_from_slice(&4u64.to_le_bytes());
        assert!(decode_error(&backwards).contains("dedup range 4..=3 has first > last"));
        let mut touching = whole.clone();
        touching[record + 31..record + 39].copy_from_slice(&4u64.to_le_bytes());
        assert!(decode_error(&touching).contains("dedup range starting at 4 must start above 3 + 1"));
        // Two records whose ranges together exceed the batch's limit.
        let half: Vec<(u64, u64)> = (0..BATCH_DEDUP_RANGES_MAX as u64 / 2 + 1).map(|i| (2 * i, 2 * i)).collect();
        let record_of = || Record::DedupSeen { queue: "q".into(), keys: vec![("p".to_string(), half.clone())] };
        let mut two = BytesMut::new();
        let one = Batch { records: vec![record_of()], ..dedup_seen() };
        encode_batch(&one, &mut two);
        // Duplicate the record inside the frame: record count 2, length fixed.
        let body = two[BATCH_HEADER_BYTES..].to_vec();
        two.extend_from_slice(&body);
        two[21..25].copy_from_slice(&2u32.to_le_bytes());
        let length = (two.len() - 4) as u32;
        two[..4].copy_from_slice(&length.to_le_bytes());
        assert!(
            decode_error(&two).contains("dedup ranges: count must be in 1..=4096; got 4098"),
            "{}",
            decode_error(&two)
        );
        // Every truncation is incomplete or an error, never a panic; every single-byte corruption
        // decodes or fails cleanly.
        for cut in 0..whole.len() {
            let mut prefix = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_batch(&mut prefix, BATCH_BYTES_MAX), Ok(None));
        }
        for index in 4..whole.len() {
            for value in [0u8, 1, 0x2f, 0xff] {
                let mut corrupt = whole.clone();
                corrupt[index] = value;
                let _ = decode_batch(&mut corrupt, BATCH_BYTES_MAX);
            }
        }
    }
}
