//! The records fed to a `PrimaryStream` and not yet in a batch: per queue (`QueuePending`), its
//! unbatched enqueues (`PendingEnqueue`), the positions dequeued after their enqueue was batched,
//! and the dedup keys of messages consumed unsent; and what waits on them: the barriers of
//! suppressed duplicates (`Barrier`) and the catch-up mark (`Mark`).
//!
//! Barriers (`handle_barrier`): a duplicate publish (`ringmq_core::model::dedup_window`) stores nothing,
//! but its confirm must not overtake the original's message to this backup. Its hold is released
//! once every enqueue of its queue fed before the barrier is in a batch the backup confirmed (or
//! was dropped unsent: dequeued, or its queue deleted), or when the backup is lost. The original
//! was fed before the barrier (or is on the backup already), so it is then on the backup or gone.
//! Barriers are rare (one per re-sent publish), so they are a plain list, checked as batches go
//! out and confirms come in.
//!
//! Dedup keys: a message dequeued before it was batched is not sent, but if it carries a valid
//! `x-ringmq-dedup` key (`ringmq_core::model::dedup_window`) the key is: the stream keeps it with the
//! queue's pending data, compacted into ranges per producer, and sends it in a `DedupSeen` record
//! of the queue's next batch, so that the backup, once promoted, suppresses a re-send of the
//! message. The message's hold is still released at once: the producer re-sends exactly what is
//! unconfirmed, so holding the confirm until the key is on the backup would only make a re-send
//! more likely, not its suppression. What remains (PROTOCOL.md 2.5.4): if the primary dies after
//! the consumption and before the backup has the batch carrying the key, and the producer did not
//! get the confirm, the re-send is stored again. Delivery gating leaves this only to messages no
//! linked stream gated (stored while only expected backups held, in recovering mode). A queue's
//! deletion drops its pending keys (its window goes with it on both ends). A catch-up's window comes through `handle_dedup_seen`, in order with the queue creates.
//!
//! Not here: the changes to these records as the shard feeds the stream (`PrimaryStream`'s
//! `handle_*`), and their draining into a batch (`batch_builder`).
//!
//! Invariants:
//! - A message dequeued before it was batched is never sent, and neither is its dequeue; its valid
//!   dedup key is, in a `DedupSeen` record, unless its queue is deleted first.
//! - A queue's unbatched enqueues are in increasing position; a dequeued one stays as a tombstone
//!   until it reaches an end, so the front and back are always live (`trim` asserts that `live` is
//!   0 exactly when no enqueue is left).
//! - Dequeued positions and each producer's dedup sequences are ranges neither overlapping nor
//!   adjacent (`RangeSet`), and no producer is kept without one.

use std::collections::{BTreeMap, VecDeque};

use ringmq_core::frame::Message;
use ringmq_core::model::range_set::RangeSet;
use ringmq_core::replication::Hold;

use crate::link::record::{Position, StreamSeq};

/// One queue's unbatched changes.
#[derive(Debug, Default)]
pub(super) struct QueuePending {
    /// Unbatched enqueues by increasing position. A dequeued one stays as a tombstone (`message`
    /// is `None`) until it reaches an end; the front and back are always live.
    pub(super) enqueues: VecDeque<PendingEnqueue>,
    /// Live entries of `enqueues`.
    pub(super) live: usize,
    /// Positions dequeued after their enqueue was batched: inclusive ranges, first -> last,
    /// neither overlapping nor adjacent.
    pub(super) dequeues: RangeSet,
    /// Dedup keys of messages dequeued before they were batched, to go out as a `DedupSeen`
    /// record: per producer id, sequences as ranges first -> last, neither overlapping nor
    /// adjacent; no producer without one.
    pub(super) dedup: BTreeMap<String, RangeSet>,
    /// Ranges in `dedup` (each counts as a pending record).
    pub(super) dedup_ranges: usize,
    /// Times `dedup` was emptied (drained into batches, or dropped with the queue): for `Mark`.
    pub(super) dedup_drained: u64,
}

/// An enqueue not yet in a batch.
#[derive(Debug)]
pub(super) struct PendingEnqueue {
    /// Its position in the queue.
    pub(super) position: Position,
    /// The message; `None` once dequeued (a tombstone, never sent).
    pub(super) message: Option<Message>,
    /// The publish waiting for this backup, if any.
    pub(super) hold: Option<Hold>,
}

/// What `mark_fed` marked, and how far it got.
#[derive(Debug)]
pub(super) struct Mark {
    /// `config_fed` at the mark: every configuration record up to it must be batched.
    pub(super) config_fed: u64,
    /// Per queue with pending data at the mark: the highest pending enqueue position, the highest
    /// pending dequeued position, and if dedup keys were pending, the queue's `dedup_drained` then.
    /// An entry leaves once nothing at or below them is pending and those keys were drained.
    pub(super) queues: BTreeMap<String, MarkedQueue>,
    /// Once every marked record is batched: the last batch sent at that moment.
    pub(super) batched_by: Option<StreamSeq>,
}

/// What a mark waits for in one queue: (highest pending enqueue position, highest pending
/// dequeued position, the queue's `dedup_drained` if dedup keys were pending).
pub(super) type MarkedQueue = (Option<Position>, Option<u64>, Option<u64>);

/// A suppressed duplicate's hold, waiting for the enqueues of its queue fed before it.
#[derive(Debug)]
pub(super) struct Barrier {
    /// Its queue.
    pub(super) queue: String,
    /// The queue's last unbatched enqueue when the barrier came (`None`: there was none).
    pub(super) last: Option<Position>,
    /// Once no enqueue up to `last` is unbatched: the last batch sent at that moment.
    pub(super) batched_by: Option<StreamSeq>,
    /// The duplicate publish.
    pub(super) hold: Hold,
}

impl QueuePending {
    pub(super) fn is_empty(&self) -> bool {
        self.enqueues.is_empty() && self.dequeues.is_empty() && self.dedup.is_empty()
    }

    /// Drops tombstones at both ends, so that the front and back are live.
    pub(super) fn trim(&mut self) {
        while self.enqueues.front().is_some_and(|e| e.message.is_none()) {
            self.enqueues.pop_front();
        }
        while self.enqueues.back().is_some_and(|e| e.message.is_none()) {
            self.enqueues.pop_back();
        }
        assert_eq!(self.live == 0, self.enqueues.is_empty());
    }
}
