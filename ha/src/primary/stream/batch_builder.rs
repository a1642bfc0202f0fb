//! The filling of one batch from the pending records (`BatchBuilder`), and the batches sent and
//! not yet confirmed (`InflightBatch`).
//!
//! A queue's pending data goes out in order: its enqueues, one `Enqueued` record per run of
//! consecutive positions; then its dequeued positions, as one `Dequeued` record of ranges; then the
//! dedup keys of its messages consumed unsent, as one `DedupSeen` record of ranges per producer.
//! What does not fit the batch's budget stays pending for the next batch, and once something did
//! not fit, later queues wait too.
//!
//! A message dequeued *after* its batch was sent keeps its hold until that batch is confirmed:
//! finding it in the in-flight window would need a per-message index on the hot path, and the
//! confirm comes within one round trip anyway.
//!
//! Not here: which queues are served in which order, the configuration records that go before
//! them, the batch's seq and the window of unconfirmed batches (`PrimaryStream::poll_batch`).
//!
//! Invariants:
//! - A batch holds at most `BATCH_RECORDS_MAX` records, `BATCH_MESSAGES_MAX` messages,
//!   `BATCH_RANGES_MAX` dequeue ranges and `BATCH_DEDUP_RANGES_MAX` dedup ranges, and at most
//!   `bytes_max` bytes, header included, unless its first record alone is larger.
//! - Within a queue, enqueue runs leave lowest position first, dequeue ranges and each producer's
//!   dedup ranges lowest first, and a run of enqueues never spans a gap in the positions.
//! - An in-flight batch's holds, positions and queues are in the same order, one position per
//!   hold, and its queue counts add up to its holds.

use ringmq_core::replication::{DedupSeenKeys, Hold};
use ringmq_core::wire::message_bytes_len;

use super::pending::QueuePending;
use crate::limits::{BATCH_DEDUP_RANGES_MAX, BATCH_MESSAGES_MAX, BATCH_RANGES_MAX, BATCH_RECORDS_MAX};
use crate::link::record::{
    dedup_producer_bytes_len, dedup_seen_header_bytes_len, dequeued_header_bytes_len, enqueued_header_bytes_len,
    Position, Record, StreamSeq,
};

/// A batch sent and not confirmed.
#[derive(Debug)]
pub(super) struct InflightBatch {
    /// Its seq.
    pub(super) seq: StreamSeq,
    /// The holds of the messages it carries, in order.
    pub(super) holds: Vec<Hold>,
    /// The positions of those messages, in the same order.
    pub(super) positions: Vec<Position>,
    /// Their queues, in the same order: each queue with how many of them are its.
    pub(super) queues: Vec<(String, usize)>,
}

/// A batch being filled, with its budget.
#[derive(Debug, Default)]
pub(super) struct BatchBuilder {
    /// The most bytes, length prefix included (a first record may exceed it alone).
    pub(super) bytes_max: usize,
    /// Bytes so far, header included.
    pub(super) bytes: usize,
    /// Records so far.
    pub(super) records: Vec<Record>,
    /// Messages so far.
    pub(super) messages: usize,
    /// Dequeue ranges so far.
    pub(super) ranges: usize,
    /// Dedup ranges so far.
    pub(super) dedup_ranges: usize,
    /// Holds of the messages so far.
    pub(super) holds: Vec<Hold>,
    /// Positions of those messages.
    pub(super) held_positions: Vec<Position>,
    /// Queues of those messages, with how many are each's, in order.
    pub(super) held_queues: Vec<(String, usize)>,
    /// Set once something did not fit: later queues wait for the next batch.
    pub(super) exhausted: bool,
}

impl BatchBuilder {
    /// Whether one more record of `bytes` fits; the first record always does.
    pub(super) fn fits_record(&mut self, bytes: usize) -> bool {
        let fits = self.records.len() < BATCH_RECORDS_MAX as usize
            && (self.records.is_empty() || self.bytes + bytes <= self.bytes_max);
        self.exhausted |= !fits;
        fits
    }

    /// Moves as much of `queue`'s pending data as fits into the batch: runs of consecutive
    /// positions as `Enqueued` records, then ranges as one `Dequeued` record. Returns how many
    /// pending records it took.
    pub(super) fn take_from(&mut self, name: &str, queue: &mut QueuePending) -> usize {
        let held_before = self.holds.len();
        let taken = self.take_enqueues_and_dequeues(name, queue);
        let held = self.holds.len() - held_before;
        if held > 0 {
            self.held_queues.push((name.to_string(), held));
        }
        taken
    }

    /// `take_from`'s work, without the bookkeeping of the held messages' queue.
    fn take_enqueues_and_dequeues(&mut self, name: &str, queue: &mut QueuePending) -> usize {
        let mut taken = 0;
        // Enqueues, one record per run of consecutive positions.
        while let Some(front) = queue.enqueues.front() {
            let message = front.message.as_ref().expect("the front of the pending enqueues is live");
            if self.messages >= BATCH_MESSAGES_MAX as usize
                || !self.fits_record(enqueued_header_bytes_len(name) + message_bytes_len(message))
            {
                self.exhausted = true;
                return taken;
            }
            self.bytes += enqueued_header_bytes_len(name);
            let first_position = front.position;
            let mut next = first_position;
            let mut messages = Vec::new();
            while let Some(enqueue) = queue.enqueues.front() {
                let Some(message) = enqueue.message.as_ref() else { break };
                let bytes = message_bytes_len(message);
                let room = messages.is_empty() || self.bytes + bytes <= self.bytes_max;
                if enqueue.position != next || self.messages >= BATCH_MESSAGES_MAX as usize || !room {
                    break;
                }
                let enqueue = queue.enqueues.pop_front().expect("front checked above");
                self.bytes += bytes;
                self.messages += 1;
                messages.push(enqueue.message.expect("checked live above"));
                if let Some(hold) = enqueue.hold {
                    self.holds.push(hold);
                    self.held_positions.push(enqueue.position);
                }
                next = next.next();
            }
            assert!(!messages.is_empty());
            taken += messages.len();
            queue.live -= messages.len();
            let run_ended_by_gap = queue.enqueues.front().is_some_and(|e| e.message.is_none() || e.position != next);
            queue.trim();
            self.records.push(Record::Enqueued { queue: name.to_string(), first_position, messages });
            if !run_ended_by_gap && !queue.enqueues.is_empty() {
                // The run stopped on the budget, not on a hole in the positions.
                self.exhausted = true;
                return taken;
            }
        }
        // Dequeues, as one record of ranges.
        if !queue.dequeues.is_empty() {
            if self.ranges >= BATCH_RANGES_MAX as usize
                || !self.fits_record(dequeued_header_bytes_len(name) + RANGE_BYTES)
            {
                self.exhausted = true;
                return taken;
            }
            self.bytes += dequeued_header_bytes_len(name);
            let mut ranges = Vec::new();
            while let Some((first, last)) = queue.dequeues.first() {
                let room = ranges.is_empty() || self.bytes + RANGE_BYTES <= self.bytes_max;
                if self.ranges >= BATCH_RANGES_MAX as usize || !room {
                    self.exhausted = true;
                    break;
                }
                queue.dequeues.pop_first();
                self.bytes += RANGE_BYTES;
                self.ranges += 1;
                ranges.push((Position(first), Position(last)));
            }
            taken += ranges.len();
            self.records.push(Record::Dequeued { queue: name.to_string(), ranges });
            if self.exhausted {
                return taken;
            }
        }
        // Dedup keys of messages consumed unsent, as one record of ranges per producer.
        if let Some((producer, _)) = queue.dedup.first_key_value() {
            if self.dedup_ranges >= BATCH_DEDUP_RANGES_MAX as usize
                || !self.fits_record(dedup_seen_header_bytes_len(name) + dedup_producer_bytes_len(producer, 1))
            {
                self.exhausted = true;
                return taken;
            }
            self.bytes += dedup_seen_header_bytes_len(name);
            let mut keys: DedupSeenKeys = Vec::new();
            'producers: while let Some(mut entry) = queue.dedup.first_entry() {
                let mut ranges = Vec::new();
                while let Some((first, last)) = entry.get().first() {
                    let bytes = if ranges.is_empty() { dedup_producer_bytes_len(entry.key(), 1) } else { RANGE_BYTES };
                    let room = keys.is_empty() && ranges.is_empty() || self.bytes + bytes <= self.bytes_max;
                    if self.dedup_ranges >= BATCH_DEDUP_RANGES_MAX as usize || !room {
                        self.exhausted = true;
                        if !ranges.is_empty() {
                            keys.push((entry.key().clone(), ranges));
                        }
                        break 'producers;
                    }
                    entry.get_mut().pop_first();
                    self.bytes += bytes;
                    self.dedup_ranges += 1;
                    ranges.push((first, last));
                }
                keys.push((entry.remove_entry().0, ranges));
            }
            let count: usize = keys.iter().map(|(_, ranges)| ranges.len()).sum();
            taken += count;
            queue.dedup_ranges -= count;
            if queue.dedup.is_empty() {
                queue.dedup_drained += 1;
            }
            self.records.push(Record::DedupSeen { queue: name.to_string(), keys });
        }
        taken
    }
}

/// Bytes of one dequeue range on the wire.
const RANGE_BYTES: usize = 16;
