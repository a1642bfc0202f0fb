//! Streaming writers for the hot batch frames: [`PublishWriter`], [`DeliverWriter`] and
//! [`ConfirmWriter`], so that the broker and the client encode batches straight from their own
//! storage, without building a `Vec<Message>` first.
//!
//! Each writer writes the frame's head with a placeholder length and count (`begin`), appends one
//! item per `push`, and patches the length and the count in `finish`. A writer holds its buffer by
//! `&mut` until `finish`, so nothing else can write into the frame meanwhile.
//!
//! Invariants:
//! - A writer's bytes equal `codec::encode` of the equivalent `Frame` (the codec's tests check
//!   this), so the decoder cannot tell them apart.
//! - A writer asserts the limits the decoder checks: the count limit, `u64` numbering, ordered
//!   confirm ranges, `FRAME_BYTES_MAX`.

use bytes::{BufMut, BytesMut};

use crate::ids::{ConsumerId, Seq, Tag};
use crate::limits::{BATCH_MESSAGES_MAX, RANGES_MAX};
use crate::wire::frame::{ConfirmOutcome, ConfirmRange, Message};
use crate::wire::frame_header::{begin_frame, end_frame};
use crate::wire::frame_type::FrameType;
use crate::wire::primitives::{
    assert_confirm_range_follows, deliver_flags, error_code_to_u16, put_confirm_range, put_message, put_name,
    OUTCOME_REJECTED, OUTCOME_STORED, OUTCOME_UNROUTABLE,
};

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
        let start = begin_frame(out, FrameType::Publish.byte());
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
        let start = begin_frame(out, FrameType::Deliver.byte());
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
        let start = begin_frame(out, FrameType::Confirm.byte());
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
