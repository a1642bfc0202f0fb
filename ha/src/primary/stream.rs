//! The primary's side of one replication stream: one primary shard's queues, to one backup.
//!
//! Each shard of the primary streams its own queues to each backup over its own connection (our
//! HA issue; the reference carried every queue of the broker over one connection per backup, and
//! one core capped it, reference-internals §12). The shard feeds this stream what happens to its
//! replicated queues (`all` level): queues created and deleted, messages enqueued at their
//! queue-local `Position`, positions dequeued for any reason. The stream turns that into
//! `Batch`es: consecutive enqueues of a queue merge into one `Enqueued` record, dequeues into
//! ranges of one `Dequeued` record. Each batch has the next `StreamSeq`; the backup confirms
//! cumulatively ("applied every batch up to N").
//!
//! Holds: a publish whose confirm must wait for this backup is named by a `Hold` passed with its
//! enqueue. The stream gives the hold back (`poll_released`) on the first of:
//! - the backup confirmed the batch that carried the message;
//! - the message was dequeued on the primary before it was put in a batch: then neither the
//!   enqueue nor the dequeue is ever sent ("a message consumed and acked on the primary before it
//!   was replicated is not sent"), and the hold is released at once. A message this stream holds
//!   is not delivered to consumers before its backup confirmed it (`primary_replication`,
//!   "Delivery gates"), so this happens only to a purged message, or to one stored before the
//!   stream existed or while only expected backups held it (never gated);
//! - the queue was deleted before the message was put in a batch (the message is gone, as if
//!   consumed);
//! - the backup was lost (`handle_backup_lost`): a dropped backup stops holding publishers.
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
//! A message dequeued *after* its batch was sent keeps its hold until that batch is confirmed:
//! finding it in the in-flight window would need a per-message index on the hot path, and the
//! confirm comes within one round trip anyway.
//!
//! Configuration: shard 0's stream also carries the replicated configuration (queues other shards
//! own, exchanges, bindings; see `ringmq_core::replication`). Exchange creates and deletes, binds
//! and unbinds are batched like queue creates and deletes: in one queue with them, in the order
//! fed, and before any queue data.
//!
//! Call contract (no clock: nothing here expires; heartbeats and `ha-backup-timeout` are the
//! caller's, which calls `handle_backup_lost` when they fire):
//! - `handle_queue_created`, `handle_queue_deleted`, `handle_enqueued`, `handle_dequeued` (and,
//!   from a catch-up snapshot, `handle_dedup_seen`) as the
//!   shard changes its replicated queues, in the order it changes them (`handle_barrier` in that
//!   order too, for a suppressed duplicate), and on shard 0
//!   `handle_exchange_created`, `handle_exchange_deleted`, `handle_bound`, `handle_unbound` in
//!   the same order;
//! - `handle_confirm` for each confirm the backup sends;
//! - then `poll_released` (hand each hold to the producer's shard) and `poll_batch` until it
//!   returns `None` (encode and send each batch);
//! - while `producers_must_pause()`, the shard stops reading producers (and consumers' settles)
//!   until batches went out and confirms came back. This is the backpressure policy: the stream
//!   always takes what the shard already did to its queues, so that the backup stays exact, up to
//!   the hard bound `STREAM_PENDING_MAX`; past it `handle_enqueued` / `handle_dequeued` refuse with
//!   `StreamOverflow` and the caller must drop the backup (`handle_backup_lost`), since the backup
//!   can no longer be kept exact.
//!
//! Catch-up: the caller feeds the stream a snapshot of what its queues hold (as creates and
//! enqueues) before any later change, then calls `mark_fed`; `mark_confirmed` turns true once every
//! marked record is in a batch the backup confirmed (see `primary_replication`).
//!
//! Not here: taking the snapshot (the shard's), the link's handshake and heartbeats, IO, which
//! exchanges and bindings are replicated (the shard's).
//!
//! Invariants:
//! - Batches go out with `StreamSeq` 1, 2, 3...: it only grows, by one per batch.
//! - At most `BATCHES_UNCONFIRMED_MAX` batches are sent and unconfirmed; `poll_batch` returns
//!   `None` while the window is full.
//! - Every hold taken is released exactly once, and never before the batch carrying its message
//!   was confirmed, unless the message was dequeued or deleted before it was batched, or the
//!   backup was lost. A barrier's hold likewise, never before every batch carrying an enqueue of
//!   its queue fed before it was confirmed.
//! - A message dequeued before it was batched is never sent, and neither is its dequeue; its valid
//!   dedup key is, in a `DedupSeen` record, unless its queue is deleted first.
//! - Per queue, records go out in the order the shard made the changes, with queue creates and
//!   deletes ordered before the data that follows them.
//! - Configuration records (queue, exchange and binding creates and deletes) go out in exactly the
//!   order they were fed.
//! - A confirm above the last sent seq, or below the previous confirm, is the peer's protocol
//!   error: an `Err`, never a panic.

use std::collections::{BTreeMap, VecDeque};

use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{ExchangeKind, Message, QueueOptions};
use ringmq_core::model::dedup_window::dedup_key;
use ringmq_core::model::range_set::RangeSet;
use ringmq_core::replication::DedupSeenKeys;
use ringmq_core::wire::message_bytes_len;

use crate::limits::{
    BATCHES_UNCONFIRMED_MAX, BATCH_BYTES_MAX, BATCH_DEDUP_RANGES_MAX, BATCH_HEADER_BYTES, BATCH_MESSAGES_MAX,
    BATCH_RANGES_MAX, BATCH_RECORDS_MAX, STREAM_PENDING_MAX, STREAM_PENDING_PAUSE,
};
use crate::link::record::{
    dedup_producer_bytes_len, dedup_seen_header_bytes_len, dequeued_header_bytes_len, enqueued_header_bytes_len,
    record_encoded_len, Batch, Position, Record, StreamSeq,
};
pub use ringmq_core::replication::Hold;

/// The stream to one backup of one primary shard's replicated queues.
#[derive(Debug)]
pub struct PrimaryStream {
    /// The epoch of this primary, stamped on every batch.
    epoch: Epoch,
    /// The seq of the last batch sent; `StreamSeq(0)` before the first.
    sent_last: StreamSeq,
    /// The highest seq the backup confirmed.
    confirmed: StreamSeq,
    /// Configuration records (queue and exchange creates and deletes, binds, unbinds) not yet
    /// batched, in order; they go out before any queue data.
    config: VecDeque<Record>,
    /// Per queue with something pending (or just emptied): its unbatched enqueues and dequeues.
    queues: BTreeMap<String, QueuePending>,
    /// The names of `queues`' entries, each exactly once, in the order `poll_batch` serves them.
    ready: VecDeque<String>,
    /// Batches sent and not confirmed, oldest first, with the holds each carries.
    inflight: VecDeque<InflightBatch>,
    /// Holds released and not yet polled, in release order.
    released: Vec<Hold>,
    /// Pending records: live unbatched enqueues, pending dequeue ranges, configuration records.
    pending: usize,
    /// Set by `handle_backup_lost`: the stream is finished.
    lost: bool,
    /// Configuration records ever fed, and ever put in a batch: `config` holds the difference.
    config_fed: u64,
    /// See `config_fed`.
    config_batched: u64,
    /// The mark set by `mark_fed`, if any.
    mark: Option<Mark>,
    /// Barriers not released yet, in the order fed.
    barriers: Vec<Barrier>,
    /// What happened, for metrics.
    counters: PrimaryCounters,
}

/// Counts of what a primary stream did, for metrics; nothing is dropped without being counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrimaryCounters {
    /// Batches sent.
    pub batches_sent: u64,
    /// Messages sent in `Enqueued` records.
    pub messages_sent: u64,
    /// Messages dequeued before they were batched, so never sent (nor their dequeue).
    pub messages_consumed_unsent: u64,
    /// Messages whose queue was deleted before they were batched, so never sent.
    pub messages_deleted_unsent: u64,
    /// Dedup keys of messages consumed before they were batched, kept to go out in a `DedupSeen`
    /// record instead of the message.
    pub dedup_keys_kept: u64,
    /// Holds released because the backup confirmed their batch.
    pub holds_released_by_confirm: u64,
    /// Holds released because their message was dequeued or deleted before it was batched.
    pub holds_released_unsent: u64,
    /// Holds released because the backup was lost.
    pub holds_released_by_loss: u64,
}

/// The stream refused a record: `STREAM_PENDING_MAX` records are pending, so the shard did not
/// pause its producers in time. The backup can no longer be kept exact; the caller drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "replication stream holds {pending} unsent records, the most allowed is {max}; the backup cannot keep up and \
     must be dropped"
)]
pub struct StreamOverflow {
    /// The hold that came with the refused enqueue, handed back: the stream did not take it.
    pub hold: Option<Hold>,
    /// Pending records.
    pub pending: usize,
    /// `STREAM_PENDING_MAX`.
    pub max: usize,
}

/// A confirm the stream cannot accept: the backup broke the protocol, and the caller drops the
/// link (and the backup, with `handle_backup_lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    /// The backup confirmed a batch that was never sent.
    #[error("backup confirmed batch {confirmed}, but only batches up to {sent_last} were sent")]
    Ahead {
        /// The seq confirmed.
        confirmed: StreamSeq,
        /// The last seq sent.
        sent_last: StreamSeq,
    },
    /// The backup confirmed less than it had confirmed before; confirms are cumulative.
    #[error("backup confirmed batch {confirmed} after confirming {previous}; confirms must not go backwards")]
    Backwards {
        /// The seq confirmed.
        confirmed: StreamSeq,
        /// The seq confirmed before.
        previous: StreamSeq,
    },
    /// A confirm arrived after the backup was dropped.
    #[error("confirm of batch {confirmed} arrived after the backup was dropped")]
    AfterLoss {
        /// The seq confirmed.
        confirmed: StreamSeq,
    },
}

impl PrimaryStream {
    /// A stream from a primary in `epoch`, with nothing sent. It allocates only as records come.
    pub fn new(epoch: Epoch) -> PrimaryStream {
        PrimaryStream {
            epoch,
            sent_last: StreamSeq(0),
            confirmed: StreamSeq(0),
            config: VecDeque::new(),
            queues: BTreeMap::new(),
            ready: VecDeque::new(),
            inflight: VecDeque::with_capacity(BATCHES_UNCONFIRMED_MAX),
            released: Vec::new(),
            pending: 0,
            lost: false,
            config_fed: 0,
            config_batched: 0,
            mark: None,
            barriers: Vec::new(),
            counters: PrimaryCounters::default(),
        }
    }

    /// A replicated queue was created. Never refused: creates are rare and come from the
    /// configuration coordinator, which the stream cannot push back on; they count toward the pause.
    ///
    /// # Panics
    ///
    /// If the backup was lost (the caller must drop the stream then).
    pub fn handle_queue_created(&mut self, name: &str, options: QueueOptions) {
        self.assert_alive();
        self.config.push_back(Record::QueueCreated { name: name.to_string(), options });
        self.config_fed += 1;
        self.pending += 1;
    }

    /// A replicated queue was deleted with its messages. Its unbatched enqueues are never sent and
    /// their holds are released now; its unbatched dequeues are dropped (the delete covers them).
    ///
    /// # Panics
    ///
    /// If the backup was lost.
    pub fn handle_queue_deleted(&mut self, name: &str) {
        self.assert_alive();
        if let Some(queue) = self.queues.get_mut(name) {
            // The entry stays (empty) because its name is in `ready`; `poll_batch` removes it.
            for enqueue in queue.enqueues.drain(..) {
                if enqueue.message.is_some() {
                    self.counters.messages_deleted_unsent += 1;
                    if let Some(hold) = enqueue.hold {
                        self.counters.holds_released_unsent += 1;
                        self.released.push(hold);
                    }
                }
            }
            // The queue's dedup window dies with it, here and on the backup: its keys go nowhere.
            self.pending -= queue.live + queue.dequeues.len() + queue.dedup_ranges;
            queue.live = 0;
            queue.dequeues.clear();
            queue.dedup.clear();
            queue.dedup_ranges = 0;
            queue.dedup_drained += 1;
            self.settle_barriers();
        }
        self.config.push_back(Record::QueueDeleted { name: name.to_string() });
        self.config_fed += 1;
        self.pending += 1;
    }

    /// A replicated exchange was created (shard 0). Never refused, like a queue create.
    ///
    /// # Panics
    ///
    /// If the backup was lost.
    pub fn handle_exchange_created(&mut self, name: &str, kind: ExchangeKind) {
        self.push_config(Record::ExchangeCreated { name: name.to_string(), kind });
    }

    /// A replicated exchange was deleted with its bindings (shard 0). Never refused.
    ///
    /// # Panics
    ///
    /// If the backup was lost.
    pub fn handle_exchange_deleted(&mut self, name: &str) {
        self.push_config(Record::ExchangeDeleted { name: name.to_string() });
    }

    /// A replicated binding was made (shard 0). Never refused.
    ///
    /// # Panics
    ///
    /// If the backup was lost.
    pub fn handle_bound(&mut self, exchange: &str, queue: &str, key: &str) {
        self.push_config(Record::Bound {
            exchange: exchange.to_string(),
            queue: queue.to_string(),
            key: key.to_string(),
        });
    }

    /// A replicated binding was removed (shard 0). Never refused.
    ///
    /// # Panics
    ///
    /// If the backup was lost.
    pub fn handle_unbound(&mut self, exchange: &str, queue: &str, key: &str) {
        let record = Record::Unbound { exchange: exchange.to_string(), queue: queue.to_string(), key: key.to_string() };
        self.push_config(record);
    }

    /// Catch-up: what `queue`'s dedup window remembers (`ReplicationEvent::DedupSeen`), sent as a
    /// `DedupSeen` record in order with the queue creates and deletes (after the queue's create,
    /// before any later delete). Never refused, like a queue create: a snapshot carries at most a
    /// few per queue.
    ///
    /// # Panics
    ///
    /// If the backup was lost, or `keys` is empty or has more than `BATCH_DEDUP_RANGES_MAX` ranges
    /// (or a producer without one).
    pub fn handle_dedup_seen(&mut self, queue: &str, keys: DedupSeenKeys) {
        let ranges: usize = keys.iter().map(|(_, ranges)| ranges.len()).sum();
        assert!(!keys.is_empty() && keys.iter().all(|(_, ranges)| !ranges.is_empty()), "empty dedup keys");
        assert!(ranges <= BATCH_DEDUP_RANGES_MAX as usize, "{ranges} dedup ranges in one record");
        self.push_config(Record::DedupSeen { queue: queue.to_string(), keys });
    }

    /// Queues a configuration record behind the others.
    fn push_config(&mut self, record: Record) {
        self.assert_alive();
        self.config.push_back(record);
        self.config_fed += 1;
        self.pending += 1;
    }

    /// `message` was enqueued on `queue` at `position`; `hold` names its publish if its confirm
    /// must wait for this backup.
    ///
    /// # Errors
    ///
    /// `StreamOverflow` (with the hold handed back) when `STREAM_PENDING_MAX` records are pending;
    /// nothing changed, and the caller drops the backup.
    ///
    /// # Panics
    ///
    /// If the backup was lost, or if `position` is not above the queue's last unbatched enqueue
    /// (positions only grow).
    pub fn handle_enqueued(
        &mut self,
        queue: &str,
        position: Position,
        message: Message,
        hold: Option<Hold>,
    ) -> Result<(), StreamOverflow> {
        self.assert_alive();
        if self.pending >= STREAM_PENDING_MAX {
            return Err(StreamOverflow { hold, pending: self.pending, max: STREAM_PENDING_MAX });
        }
        let entry = self.entry(queue);
        if let Some(last) = entry.enqueues.back() {
            assert!(position > last.position, "queue {queue}: enqueue at {position} after {}", last.position);
        }
        entry.enqueues.push_back(PendingEnqueue { position, message: Some(message), hold });
        entry.live += 1;
        self.pending += 1;
        Ok(())
    }

    /// A duplicate publish to `queue` was suppressed (`ReplicationEvent::Barrier`): `hold` is
    /// released once every enqueue of `queue` fed so far is in a batch the backup confirmed (or
    /// was dropped unsent), at once if that is so already. Nothing is sent; never refused.
    ///
    /// # Panics
    ///
    /// If the backup was lost.
    pub fn handle_barrier(&mut self, queue: &str, hold: Hold) {
        self.assert_alive();
        let last = self.queues.get(queue).and_then(|pending| pending.enqueues.back()).map(|enqueue| enqueue.position);
        self.barriers.push(Barrier { queue: queue.to_string(), last, batched_by: None, hold });
        self.settle_barriers();
    }

    /// Barriers held, for status and tests.
    pub fn barriers_held(&self) -> usize {
        self.barriers.len()
    }

    /// The message at `position` of `queue` was removed (ack, reject, purge, expiry). If it was not
    /// batched yet, neither record is sent and its hold is released now.
    ///
    /// # Errors
    ///
    /// `StreamOverflow` when the dequeue needs a new pending range and `STREAM_PENDING_MAX` records
    /// are pending; the caller drops the backup.
    ///
    /// # Panics
    ///
    /// If the backup was lost, or if the same unbatched position is dequeued twice.
    pub fn handle_dequeued(&mut self, queue: &str, position: Position) -> Result<(), StreamOverflow> {
        self.assert_alive();
        if let Some(entry) = self.queues.get_mut(queue) {
            if let Ok(index) = entry.enqueues.binary_search_by_key(&position, |enqueue| enqueue.position) {
                let enqueue = &mut entry.enqueues[index];
                let message = enqueue.message.take();
                let message = message.unwrap_or_else(|| panic!("queue {queue}: position {position} dequeued twice"));
                if let Some(hold) = enqueue.hold.take() {
                    self.counters.holds_released_unsent += 1;
                    self.released.push(hold);
                }
                entry.live -= 1;
                entry.trim();
                self.pending -= 1;
                self.counters.messages_consumed_unsent += 1;
                // Its dedup key must still reach the backup (as a `DedupSeen` record), or a re-send
                // to the backup once promoted would be stored again. One more range at most, for
                // the one message less: the pending count never grows here.
                if let Some(Ok(key)) = dedup_key(&message.headers) {
                    let ranges = entry.dedup.entry(key.producer.to_string()).or_default();
                    let before = ranges.len();
                    ranges.insert(key.seq);
                    let after = ranges.len();
                    entry.dedup_ranges = entry.dedup_ranges + after - before;
                    self.pending = self.pending + after - before;
                    self.counters.dedup_keys_kept += 1;
                }
                self.settle_barriers();
                return Ok(());
            }
        }
        let full = self.pending >= STREAM_PENDING_MAX;
        let entry = self.entry(queue);
        let ranges_before = entry.dequeues.len();
        if full && entry.dequeues.adds_range(position.0, position.0) {
            return Err(StreamOverflow { hold: None, pending: self.pending, max: STREAM_PENDING_MAX });
        }
        entry.dequeues.insert(position.0);
        let ranges_after = entry.dequeues.len();
        self.pending = self.pending + ranges_after - ranges_before;
        Ok(())
    }

    /// Catch-up: the backup holds messages at the positions of `ranges` (inclusive, increasing)
    /// that the primary no longer holds; they go out as dequeue ranges. No position in them may be
    /// an unbatched enqueue of this stream (the primary does not hold them, so it fed none).
    ///
    /// # Errors
    ///
    /// `StreamOverflow` when a new pending range is needed and `STREAM_PENDING_MAX` records are
    /// pending; ranges before the refused one stay; the caller drops the backup.
    ///
    /// # Panics
    ///
    /// If the backup was lost, a range is backwards, or it covers an unbatched enqueue.
    pub fn handle_dequeued_ranges(
        &mut self,
        queue: &str,
        ranges: &[(Position, Position)],
    ) -> Result<(), StreamOverflow> {
        self.assert_alive();
        for &(first, last) in ranges {
            assert!(first <= last, "queue {queue}: dequeue range {first}..={last} backwards");
            if let Some(entry) = self.queues.get(queue) {
                let index = entry.enqueues.partition_point(|enqueue| enqueue.position < first);
                assert!(
                    entry.enqueues.get(index).is_none_or(|enqueue| enqueue.position > last),
                    "queue {queue}: dequeue range {first}..={last} covers an unbatched enqueue"
                );
            }
            let full = self.pending >= STREAM_PENDING_MAX;
            let entry = self.entry(queue);
            let ranges_before = entry.dequeues.len();
            if full && entry.dequeues.adds_range(first.0, last.0) {
                return Err(StreamOverflow { hold: None, pending: self.pending, max: STREAM_PENDING_MAX });
            }
            entry.dequeues.insert_range(first.0, last.0);
            let ranges_after = entry.dequeues.len();
            self.pending = self.pending + ranges_after - ranges_before;
        }
        Ok(())
    }

    /// The backup confirmed every batch up to `stream_seq`: the holds of those batches are
    /// released (see `poll_released`), in batch order. A repeated confirm changes nothing.
    ///
    /// # Errors
    ///
    /// `ConfirmError` when the confirm is above the last batch sent, below the previous confirm,
    /// or arrives after `handle_backup_lost`; nothing changed, and the caller drops the link.
    pub fn handle_confirm(&mut self, stream_seq: StreamSeq) -> Result<(), ConfirmError> {
        if self.lost {
            return Err(ConfirmError::AfterLoss { confirmed: stream_seq });
        }
        if stream_seq > self.sent_last {
            return Err(ConfirmError::Ahead { confirmed: stream_seq, sent_last: self.sent_last });
        }
        if stream_seq < self.confirmed {
            return Err(ConfirmError::Backwards { confirmed: stream_seq, previous: self.confirmed });
        }
        while self.inflight.front().is_some_and(|batch| batch.seq <= stream_seq) {
            let batch = self.inflight.pop_front().expect("front checked above");
            self.counters.holds_released_by_confirm += batch.holds.len() as u64;
            self.released.extend(batch.holds);
        }
        self.confirmed = stream_seq;
        self.settle_barriers();
        // Pair of the window check in `poll_batch`: what is in flight is exactly (confirmed, sent_last].
        assert_eq!(self.inflight.len() as u64, self.sent_last.0 - self.confirmed.0);
        assert!(self.inflight.front().is_none_or(|batch| batch.seq == self.confirmed.next()));
        Ok(())
    }

    /// The backup is gone (heartbeat timeout, link error, protocol error, overflow): every hold
    /// still waiting on it is released, and the stream is finished. The caller drops it after
    /// polling the holds; a reconnecting backup gets a new stream (and catch-up).
    pub fn handle_backup_lost(&mut self) {
        let held = self.take_held();
        self.counters.holds_released_by_loss += held.len() as u64;
        self.released.extend(held.into_iter().map(|held| held.hold));
    }

    /// The backup is gone, but its holds must outlive the stream (the backup may be promoted, see
    /// `primary_replication`, "Detached backups"): every hold still waiting on it is handed back
    /// with its message's queue and position (`None` for a barrier's), not released, and the
    /// stream is finished.
    pub fn take_held(&mut self) -> Vec<HeldRecord> {
        let mut held = Vec::new();
        for batch in self.inflight.drain(..) {
            let mut positions = batch.positions.into_iter();
            let mut holds = batch.holds.into_iter();
            for (queue, count) in batch.queues {
                for (position, hold) in positions.by_ref().zip(holds.by_ref()).take(count) {
                    held.push(HeldRecord { queue: queue.clone(), position: Some(position), hold });
                }
            }
        }
        for (name, queue) in std::mem::take(&mut self.queues) {
            for enqueue in queue.enqueues {
                if let (Some(_), Some(hold)) = (enqueue.message, enqueue.hold) {
                    held.push(HeldRecord { queue: name.clone(), position: Some(enqueue.position), hold });
                }
            }
        }
        for barrier in self.barriers.drain(..) {
            held.push(HeldRecord { queue: barrier.queue, position: None, hold: barrier.hold });
        }
        self.ready.clear();
        self.config.clear();
        self.pending = 0;
        self.lost = true;
        held
    }

    /// The next batch to send: pending records drained in order, as many as fit `bytes_max`
    /// bytes (length prefix included; a single record larger than that goes alone) and the count
    /// limits. `None` when nothing is pending, the window of unconfirmed batches is full, or the
    /// backup was lost.
    ///
    /// # Panics
    ///
    /// If `bytes_max` is above `BATCH_BYTES_MAX`.
    pub fn poll_batch(&mut self, bytes_max: usize) -> Option<Batch> {
        let batch = self.next_batch(bytes_max);
        self.update_mark();
        self.settle_barriers();
        batch
    }

    /// Sets the mark on every record fed so far (queue creates and deletes, enqueues, dequeues):
    /// `mark_confirmed` turns true once each of them is in a batch the backup confirmed (or was
    /// dropped unsent: dequeued or deleted before it was batched). Records fed later do not delay
    /// it. A new mark replaces the previous one. Used for catch-up: the snapshot is fed, then marked.
    pub fn mark_fed(&mut self) {
        let mut queues = BTreeMap::new();
        for (name, queue) in &self.queues {
            let enqueued = queue.enqueues.back().map(|enqueue| enqueue.position);
            let dequeued = queue.dequeues.last().map(|(_, last)| last);
            let dedup = (!queue.dedup.is_empty()).then_some(queue.dedup_drained);
            if enqueued.is_some() || dequeued.is_some() || dedup.is_some() {
                queues.insert(name.clone(), (enqueued, dequeued, dedup));
            }
        }
        self.mark = Some(Mark { config_fed: self.config_fed, queues, batched_by: None });
        self.update_mark();
    }

    /// True once every record fed before `mark_fed` is in a confirmed batch (or was dropped
    /// unsent). False without a mark, and after the backup was lost.
    pub fn mark_confirmed(&self) -> bool {
        !self.lost && self.mark.as_ref().and_then(|mark| mark.batched_by).is_some_and(|seq| seq <= self.confirmed)
    }

    /// Notes, once every marked record is batched, the batch that carried the last of them.
    fn update_mark(&mut self) {
        let Some(mark) = self.mark.as_mut() else { return };
        if mark.batched_by.is_some() {
            return;
        }
        let queues = &self.queues;
        mark.queues.retain(|name, (enqueued, dequeued, dedup)| {
            let Some(queue) = queues.get(name) else { return false };
            // Enqueues leave in position order, front first; dequeue ranges lowest first, so one
            // starts at or below `p` if the lowest does.
            let enqueues_left = enqueued.is_some_and(|p| queue.enqueues.front().is_some_and(|e| e.position <= p));
            let dequeues_left = dequeued.is_some_and(|p| queue.dequeues.first().is_some_and(|(first, _)| first <= p));
            // The keys pending at the mark are all batched once the queue's keys were drained since.
            let dedup_left = dedup.is_some_and(|drained| queue.dedup_drained == drained);
            enqueues_left || dequeues_left || dedup_left
        });
        if self.config_batched >= mark.config_fed && mark.queues.is_empty() {
            mark.batched_by = Some(self.sent_last);
        }
    }

    /// Notes, for each barrier whose queue has no enqueue fed before it left unbatched, the last
    /// batch sent by then; releases those whose batch is confirmed.
    fn settle_barriers(&mut self) {
        if self.barriers.is_empty() {
            return;
        }
        let (queues, sent_last, confirmed) = (&self.queues, self.sent_last, self.confirmed);
        let (released, counters) = (&mut self.released, &mut self.counters);
        self.barriers.retain_mut(|barrier| {
            if barrier.batched_by.is_none() {
                // Enqueues leave in position order, front first (live ones: tombstones are trimmed).
                let front = queues.get(&barrier.queue).and_then(|pending| pending.enqueues.front());
                let waiting = barrier.last.is_some_and(|last| front.is_some_and(|e| e.position <= last));
                if waiting {
                    return true;
                }
                barrier.batched_by = Some(sent_last);
            }
            if barrier.batched_by.is_some_and(|seq| seq <= confirmed) {
                counters.holds_released_by_confirm += 1;
                released.push(barrier.hold);
                return false;
            }
            true
        });
    }

    fn next_batch(&mut self, bytes_max: usize) -> Option<Batch> {
        assert!(bytes_max <= BATCH_BYTES_MAX as usize, "bytes_max {bytes_max} above BATCH_BYTES_MAX");
        if self.lost
            || self.inflight.len() >= BATCHES_UNCONFIRMED_MAX
            || self.ready.is_empty() && self.config.is_empty()
        {
            return None;
        }
        let mut builder = BatchBuilder { bytes_max, bytes: BATCH_HEADER_BYTES, ..BatchBuilder::default() };
        // Creates and deletes first, and queue data only once all of them are in: data never
        // overtakes the create of its queue.
        while let Some(record) = self.config.front() {
            if let Record::DedupSeen { keys, .. } = record {
                let ranges: usize = keys.iter().map(|(_, ranges)| ranges.len()).sum();
                if builder.dedup_ranges + ranges > BATCH_DEDUP_RANGES_MAX as usize {
                    builder.exhausted = true;
                    break;
                }
                builder.dedup_ranges += ranges;
            }
            if !builder.fits_record(record_encoded_len(record)) {
                break;
            }
            builder.bytes += record_encoded_len(record);
            builder.records.push(self.config.pop_front().expect("front checked above"));
            self.config_batched += 1;
            self.pending -= 1;
        }
        if self.config.is_empty() {
            for _ in 0..self.ready.len() {
                if builder.exhausted {
                    break;
                }
                let name = self.ready.pop_front().expect("ready holds one name per entry");
                let queue = self.queues.get_mut(&name).expect("every ready name has an entry");
                let taken = builder.take_from(&name, queue);
                self.pending -= taken;
                if queue.is_empty() {
                    self.queues.remove(&name);
                } else {
                    self.ready.push_back(name);
                }
            }
        }
        assert_eq!(self.ready.len(), self.queues.len());
        if builder.records.is_empty() {
            return None;
        }
        let seq = self.sent_last.next();
        assert!(seq > self.sent_last);
        self.sent_last = seq;
        self.counters.batches_sent += 1;
        self.counters.messages_sent += builder.messages as u64;
        let (holds, positions, queues) = (builder.holds, builder.held_positions, builder.held_queues);
        self.inflight.push_back(InflightBatch { seq, holds, positions, queues });
        assert!(self.inflight.len() <= BATCHES_UNCONFIRMED_MAX);
        let batch = Batch { epoch: self.epoch, stream_seq: seq, records: builder.records };
        assert!(batch.records.len() <= BATCH_RECORDS_MAX as usize);
        Some(batch)
    }

    /// Appends the holds released since the last call, in release order; returns how many.
    pub fn poll_released(&mut self, out: &mut Vec<Hold>) -> usize {
        let count = self.released.len();
        out.append(&mut self.released);
        count
    }

    /// True while the shard must stop reading producers: `STREAM_PENDING_PAUSE` records or more
    /// are pending. It turns false once batches went out (and confirms opened the window).
    pub fn producers_must_pause(&self) -> bool {
        self.pending >= STREAM_PENDING_PAUSE
    }

    /// Records pending (not yet in a batch).
    pub fn pending_records(&self) -> usize {
        self.pending
    }

    /// Batches sent and not confirmed.
    pub fn unconfirmed_batches(&self) -> usize {
        self.inflight.len()
    }

    /// The seq of the last batch sent (0 before the first).
    pub fn sent_last(&self) -> StreamSeq {
        self.sent_last
    }

    /// The highest seq the backup confirmed (0 before the first confirm).
    pub fn confirmed(&self) -> StreamSeq {
        self.confirmed
    }

    /// The epoch stamped on every batch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// What the stream did, for metrics.
    pub fn counters(&self) -> PrimaryCounters {
        self.counters
    }

    fn assert_alive(&self) {
        assert!(!self.lost, "replication stream used after its backup was lost");
    }

    /// The pending entry of `queue`, made (and put in `ready`) if it has none.
    fn entry(&mut self, queue: &str) -> &mut QueuePending {
        if !self.queues.contains_key(queue) {
            self.queues.insert(queue.to_string(), QueuePending::default());
            self.ready.push_back(queue.to_string());
        }
        self.queues.get_mut(queue).expect("inserted above")
    }
}

// ----- helpers -----

/// One queue's unbatched changes.
#[derive(Debug, Default)]
struct QueuePending {
    /// Unbatched enqueues by increasing position. A dequeued one stays as a tombstone (`message`
    /// is `None`) until it reaches an end; the front and back are always live.
    enqueues: VecDeque<PendingEnqueue>,
    /// Live entries of `enqueues`.
    live: usize,
    /// Positions dequeued after their enqueue was batched: inclusive ranges, first -> last,
    /// neither overlapping nor adjacent.
    dequeues: RangeSet,
    /// Dedup keys of messages dequeued before they were batched, to go out as a `DedupSeen`
    /// record: per producer id, sequences as ranges first -> last, neither overlapping nor
    /// adjacent; no producer without one.
    dedup: BTreeMap<String, RangeSet>,
    /// Ranges in `dedup` (each counts as a pending record).
    dedup_ranges: usize,
    /// Times `dedup` was emptied (drained into batches, or dropped with the queue): for `Mark`.
    dedup_drained: u64,
}

/// An enqueue not yet in a batch.
#[derive(Debug)]
struct PendingEnqueue {
    /// Its position in the queue.
    position: Position,
    /// The message; `None` once dequeued (a tombstone, never sent).
    message: Option<Message>,
    /// The publish waiting for this backup, if any.
    hold: Option<Hold>,
}

/// What `mark_fed` marked, and how far it got.
#[derive(Debug)]
struct Mark {
    /// `config_fed` at the mark: every configuration record up to it must be batched.
    config_fed: u64,
    /// Per queue with pending data at the mark: the highest pending enqueue position, the highest
    /// pending dequeued position, and if dedup keys were pending, the queue's `dedup_drained` then.
    /// An entry leaves once nothing at or below them is pending and those keys were drained.
    queues: BTreeMap<String, MarkedQueue>,
    /// Once every marked record is batched: the last batch sent at that moment.
    batched_by: Option<StreamSeq>,
}

/// What a mark waits for in one queue: (highest pending enqueue position, highest pending
/// dequeued position, the queue's `dedup_drained` if dedup keys were pending).
type MarkedQueue = (Option<Position>, Option<u64>, Option<u64>);

/// A suppressed duplicate's hold, waiting for the enqueues of its queue fed before it.
#[derive(Debug)]
struct Barrier {
    /// Its queue.
    queue: String,
    /// The queue's last unbatched enqueue when the barrier came (`None`: there was none).
    last: Option<Position>,
    /// Once no enqueue up to `last` is unbatched: the last batch sent at that moment.
    batched_by: Option<StreamSeq>,
    /// The duplicate publish.
    hold: Hold,
}

/// A batch sent and not confirmed.
#[derive(Debug)]
struct InflightBatch {
    /// Its seq.
    seq: StreamSeq,
    /// The holds of the messages it carries, in order.
    holds: Vec<Hold>,
    /// The positions of those messages, in the same order.
    positions: Vec<Position>,
    /// Their queues, in the same order: each queue with how many of them are its.
    queues: Vec<(String, usize)>,
}

/// A hold a lost stream hands back (`PrimaryStream::take_held`), with what it waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRecord {
    /// The queue of the message (or of the suppressed duplicate).
    pub queue: String,
    /// The message's position; `None` for a barrier (a suppressed duplicate's hold).
    pub position: Option<Position>,
    /// The publish waiting.
    pub hold: Hold,
}

/// A batch being filled, with its budget.
#[derive(Debug, Default)]
struct BatchBuilder {
    /// The most bytes, length prefix included (a first record may exceed it alone).
    bytes_max: usize,
    /// Bytes so far, header included.
    bytes: usize,
    /// Records so far.
    records: Vec<Record>,
    /// Messages so far.
    messages: usize,
    /// Dequeue ranges so far.
    ranges: usize,
    /// Dedup ranges so far.
    dedup_ranges: usize,
    /// Holds of the messages so far.
    holds: Vec<Hold>,
    /// Positions of those messages.
    held_positions: Vec<Position>,
    /// Queues of those messages, with how many are each's, in order.
    held_queues: Vec<(String, usize)>,
    /// Set once something did not fit: later queues wait for the next batch.
    exhausted: bool,
}

impl BatchBuilder {
    /// Whether one more record of `bytes` fits; the first record always does.
    fn fits_record(&mut self, bytes: usize) -> bool {
        let fits = self.records.len() < BATCH_RECORDS_MAX as usize
            && (self.records.is_empty() || self.bytes + bytes <= self.bytes_max);
        self.exhausted |= !fits;
        fits
    }

    /// Moves as much of `queue`'s pending data as fits into the batch: runs of consecutive
    /// positions as `Enqueued` records, then ranges as one `Dequeued` record. Returns how many
    /// pending records it took.
    fn take_from(&mut self, name: &str, queue: &mut QueuePending) -> usize {
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

impl QueuePending {
    fn is_empty(&self) -> bool {
        self.enqueues.is_empty() && self.dequeues.is_empty() && self.dedup.is_empty()
    }

    /// Drops tombstones at both ends, so that the front and back are live.
    fn trim(&mut self) {
        while self.enqueues.front().is_some_and(|e| e.message.is_none()) {
            self.enqueues.pop_front();
        }
        while self.enqueues.back().is_some_and(|e| e.message.is_none()) {
            self.enqueues.pop_back();
        }
        assert_eq!(self.live == 0, self.enqueues.is_empty());
    }
}

/// Bytes of one dequeue range on the wire.
const RANGE_BYTES: usize = 16;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use ringmq_core::ids::{ConnId, Seq, ShardId};

    fn message(body: u64) -> Message {
        Message { body: Bytes::from(body.to_le_bytes().to_vec()), ..Message::default() }
    }

    fn hold(seq: u64) -> Option<Hold> {
        Some(Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(seq) })
    }

    fn holds(seqs: &[u64]) -> Vec<Hold> {
        seqs.iter().map(|&seq| hold(seq).unwrap()).collect()
    }

    fn released(stream: &mut PrimaryStream) -> Vec<Hold> {
        let mut out = Vec::new();
        stream.poll_released(&mut out);
        out
    }

    fn enqueue(stream: &mut PrimaryStream, queue: &str, position: u64) {
        stream.handle_enqueued(queue, Position(position), message(position), hold(position)).unwrap();
    }

    fn ranges(pairs: &[(u64, u64)]) -> Vec<(Position, Position)> {
        pairs.iter().map(|&(first, last)| (Position(first), Position(last))).collect()
    }

    const BYTES: usize = 64 * 1024;

    #[test]
    fn catch_up_dequeue_ranges_merge_with_pending_ones_and_go_out_as_one_record() {
        // Goal: the diff's ranges of positions the primary no longer holds merge with each other
        // and with pending dequeues (overlapping or touching), and count one pending record each.
        let mut stream = PrimaryStream::new(Epoch(1));
        stream.handle_dequeued("q", Position(20)).unwrap();
        let ranges = [(Position(1), Position(3)), (Position(10), Position(19)), (Position(30), Position(30))];
        stream.handle_dequeued_ranges("q", &ranges).unwrap();
        assert_eq!(stream.pending_records(), 3, "1..=3, 10..=20, 30");
        stream.handle_dequeued_ranges("q", &[(Position(2), Position(12)), (Position(21), Position(29))]).unwrap();
        assert_eq!(stream.pending_records(), 1);
        let batch = stream.poll_batch(64 * 1024).unwrap();
        assert_eq!(batch.records, [Record::Dequeued { queue: "q".into(), ranges: vec![(Position(1), Position(30))] }]);
        assert_eq!(stream.pending_records(), 0);
    }

    #[test]
    fn configuration_records_go_out_in_the_order_fed_before_queue_data() {
        // Goal: exchange creates and deletes, binds and unbinds are batched in one order with
        // queue creates and deletes, exactly as fed, and ahead of the data of any queue; a batch
        // too small for all of them keeps that order across batches; they count as pending.
        let mut stream = PrimaryStream::new(Epoch(1));
        stream.handle_exchange_created("x", ExchangeKind::Topic);
        stream.handle_queue_created("q", QueueOptions::default());
        stream.handle_enqueued("q", Position(0), message(0), None).unwrap();
        stream.handle_bound("x", "q", "a.*");
        stream.handle_unbound("x", "q", "a.*");
        stream.handle_queue_deleted("old");
        stream.handle_exchange_deleted("x");
        assert_eq!(stream.pending_records(), 7);
        let config = vec![
            Record::ExchangeCreated { name: "x".into(), kind: ExchangeKind::Topic },
            Record::QueueCreated { name: "q".into(), options: QueueOptions::default() },
            Record::Bound { exchange: "x".into(), queue: "q".into(), key: "a.*".into() },
            Record::Unbound { exchange: "x".into(), queue: "q".into(), key: "a.*".into() },
            Record::QueueDeleted { name: "old".into() },
            Record::ExchangeDeleted { name: "x".into() },
        ];
        let data = Record::Enqueued { queue: "q".into(), first_position: Position(0), messages: vec![message(0)] };
        let batch = stream.poll_batch(BATCH_BYTES_MAX as usize).unwrap();
        let mut expected = config.clone();
        expected.push(data.clone());
        assert_eq!(batch.records, expected);
        assert_eq!(stream.pending_records(), 0);

        // Room for only a few records a batch: the same order, cut in several batches.
        let mut small = PrimaryStream::new(Epoch(1));
        small.handle_exchange_created("x", ExchangeKind::Topic);
        small.handle_queue_created("q", QueueOptions::default());
        small.handle_enqueued("q", Position(0), message(0), None).unwrap();
        small.handle_bound("x", "q", "a.*");
        small.handle_unbound("x", "q", "a.*");
        small.handle_queue_deleted("old");
        small.handle_exchange_deleted("x");
        let budget = BATCH_HEADER_BYTES + record_encoded_len(&config[0]) + record_encoded_len(&config[1]);
        let mut sent = Vec::new();
        let mut batches = 0;
        while let Some(batch) = small.poll_batch(budget) {
            small.handle_confirm(batch.stream_seq).unwrap();
            sent.extend(batch.records);
            batches += 1;
        }
        assert!(batches >= 3, "{batches} batches");
        assert_eq!(sent, expected);
    }

    #[test]
    fn batching_merges_consecutive_enqueues_and_range_compresses_dequeues() {
        // Goal: many changes become few records: one Enqueued per run of positions per queue, one
        // Dequeued per queue with merged ranges.
        let mut stream = PrimaryStream::new(Epoch(2));
        // Five messages to "a", three to "b", interleaved.
        for position in 0..5 {
            enqueue(&mut stream, "a", position);
            if position < 3 {
                enqueue(&mut stream, "b", 100 + position);
            }
        }
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!((batch.epoch, batch.stream_seq), (Epoch(2), StreamSeq(1)));
        assert_eq!(batch.records.len(), 2);
        assert_eq!(
            batch.records[0],
            Record::Enqueued {
                queue: "a".into(),
                first_position: Position(0),
                messages: (0..5).map(message).collect()
            }
        );
        assert!(
            matches!(&batch.records[1], Record::Enqueued { queue, messages, .. } if queue == "b" && messages.len() == 3)
        );
        // Dequeues out of order: 3, 0, 1, 4 merge into 0..=1 and 3..=4.
        for position in [3, 0, 1, 4] {
            stream.handle_dequeued("a", Position(position)).unwrap();
        }
        assert_eq!(stream.pending_records(), 2);
        // Then 2 joins them into one range.
        stream.handle_dequeued("a", Position(2)).unwrap();
        assert_eq!(stream.pending_records(), 1);
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(batch.stream_seq, StreamSeq(2));
        assert_eq!(batch.records, vec![Record::Dequeued { queue: "a".into(), ranges: ranges(&[(0, 4)]) }]);
        assert_eq!(stream.poll_batch(BYTES), None);
    }

    #[test]
    fn message_consumed_before_replication_is_never_sent_and_its_hold_is_released_at_once() {
        // Goal: the rule: consumed and acked before replicated means not sent at all.
        let mut stream = PrimaryStream::new(Epoch(1));
        for position in 0..4 {
            enqueue(&mut stream, "q", position);
        }
        // Position 1 is consumed before any batch: its hold comes back now.
        stream.handle_dequeued("q", Position(1)).unwrap();
        assert_eq!(released(&mut stream), holds(&[1]));
        // The batch has two runs (0, then 2..=3) and no dequeue.
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(
            batch.records,
            vec![
                Record::Enqueued { queue: "q".into(), first_position: Position(0), messages: vec![message(0)] },
                Record::Enqueued {
                    queue: "q".into(),
                    first_position: Position(2),
                    messages: vec![message(2), message(3)]
                },
            ]
        );
        // Consuming every pending message leaves nothing to send.
        enqueue(&mut stream, "q", 4);
        stream.handle_dequeued("q", Position(4)).unwrap();
        assert_eq!(stream.poll_batch(BYTES), None);
        assert_eq!(stream.sent_last(), StreamSeq(1));
        assert_eq!(stream.counters().messages_consumed_unsent, 2);
        // The confirm releases only the holds of the messages that were sent.
        stream.handle_confirm(StreamSeq(1)).unwrap();
        assert_eq!(released(&mut stream), holds(&[4, 0, 2, 3]));
    }

    #[test]
    fn confirms_release_exactly_the_holds_of_confirmed_batches_in_order() {
        // Goal: a cumulative confirm releases every hold of the batches it covers, oldest first,
        // and nothing of later batches.
        let mut stream = PrimaryStream::new(Epoch(1));
        for seq in 1..=3 {
            enqueue(&mut stream, "q", 2 * seq);
            enqueue(&mut stream, "q", 2 * seq + 1);
            assert_eq!(stream.poll_batch(BYTES).unwrap().stream_seq, StreamSeq(seq));
        }
        // Nothing is released before a confirm.
        assert!(released(&mut stream).is_empty());
        // Confirming 2 releases batches 1 and 2.
        stream.handle_confirm(StreamSeq(2)).unwrap();
        assert_eq!(released(&mut stream), holds(&[2, 3, 4, 5]));
        // A repeated confirm releases nothing more.
        stream.handle_confirm(StreamSeq(2)).unwrap();
        assert!(released(&mut stream).is_empty());
        stream.handle_confirm(StreamSeq(3)).unwrap();
        assert_eq!(released(&mut stream), holds(&[6, 7]));
        assert_eq!(stream.counters().holds_released_by_confirm, 6);
    }

    #[test]
    fn confirm_above_the_last_sent_batch_or_going_backwards_is_an_error() {
        // Goal: a misbehaving backup gets an error naming both seqs, never a panic.
        let mut stream = PrimaryStream::new(Epoch(1));
        enqueue(&mut stream, "q", 0);
        stream.poll_batch(BYTES).unwrap();
        enqueue(&mut stream, "q", 1);
        stream.poll_batch(BYTES).unwrap();
        let error = stream.handle_confirm(StreamSeq(3)).unwrap_err();
        assert_eq!(error, ConfirmError::Ahead { confirmed: StreamSeq(3), sent_last: StreamSeq(2) });
        assert_eq!(error.to_string(), "backup confirmed batch 3, but only batches up to 2 were sent");
        stream.handle_confirm(StreamSeq(2)).unwrap();
        assert_eq!(
            stream.handle_confirm(StreamSeq(1)),
            Err(ConfirmError::Backwards { confirmed: StreamSeq(1), previous: StreamSeq(2) })
        );
    }

    #[test]
    fn full_window_stops_batching_until_a_confirm_opens_it() {
        // Goal: at most BATCHES_UNCONFIRMED_MAX batches in flight; records wait, then go.
        let mut stream = PrimaryStream::new(Epoch(1));
        for position in 0..BATCHES_UNCONFIRMED_MAX as u64 {
            enqueue(&mut stream, "q", position);
            assert!(stream.poll_batch(BYTES).is_some());
        }
        // The window is full: the next record waits.
        enqueue(&mut stream, "q", 1000);
        assert_eq!(stream.poll_batch(BYTES), None);
        assert_eq!(stream.pending_records(), 1);
        // One confirm opens one slot.
        stream.handle_confirm(StreamSeq(1)).unwrap();
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(batch.stream_seq, StreamSeq(BATCHES_UNCONFIRMED_MAX as u64 + 1));
        assert_eq!(stream.poll_batch(BYTES), None);
    }

    #[test]
    fn backup_lost_releases_every_hold_still_waiting() {
        // Goal: a dropped backup stops holding publishers: holds of unconfirmed batches and of
        // unbatched messages all come back, each once.
        let mut stream = PrimaryStream::new(Epoch(1));
        enqueue(&mut stream, "q", 0);
        enqueue(&mut stream, "q", 1);
        stream.poll_batch(BYTES).unwrap();
        enqueue(&mut stream, "q", 2);
        stream.poll_batch(BYTES).unwrap();
        stream.handle_confirm(StreamSeq(1)).unwrap();
        assert_eq!(released(&mut stream), holds(&[0, 1]));
        // One message in flight (2), one unbatched (3), one unbatched without hold.
        enqueue(&mut stream, "q", 3);
        stream.handle_enqueued("q", Position(4), message(4), None).unwrap();
        stream.handle_backup_lost();
        assert_eq!(released(&mut stream), holds(&[2, 3]));
        assert_eq!(stream.poll_batch(BYTES), None);
        assert_eq!(stream.pending_records(), 0);
        assert_eq!(stream.counters().holds_released_by_loss, 2);
        // A late confirm from the dropped backup is refused, not applied.
        assert_eq!(stream.handle_confirm(StreamSeq(2)), Err(ConfirmError::AfterLoss { confirmed: StreamSeq(2) }));
    }

    #[test]
    fn queue_create_goes_before_its_data_and_a_delete_drops_unsent_messages() {
        // Goal: creates and deletes keep their order with the data of their queue.
        let mut stream = PrimaryStream::new(Epoch(1));
        // An old queue "q" with an unsent message, deleted, then created again with a new message.
        enqueue(&mut stream, "q", 7);
        stream.handle_queue_deleted("q");
        assert_eq!(released(&mut stream), holds(&[7]));
        stream.handle_queue_created("q", QueueOptions::default());
        enqueue(&mut stream, "q", 0);
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(
            batch.records,
            vec![
                Record::QueueDeleted { name: "q".into() },
                Record::QueueCreated { name: "q".into(), options: QueueOptions::default() },
                Record::Enqueued { queue: "q".into(), first_position: Position(0), messages: vec![message(0)] },
            ]
        );
        assert_eq!(stream.counters().messages_deleted_unsent, 1);
    }

    #[test]
    fn batches_keep_to_bytes_max_and_a_larger_message_goes_alone() {
        // Goal: batches are cut by size without losing order, and no message is too big to send.
        let mut stream = PrimaryStream::new(Epoch(1));
        let big = Message { body: Bytes::from(vec![0u8; 4000]), ..Message::default() };
        for position in 0..10 {
            stream.handle_enqueued("q", Position(position), big.clone(), None).unwrap();
        }
        let mut next = 0;
        while let Some(batch) = stream.poll_batch(10_000) {
            assert!(batch.encoded_len() <= 10_000, "batch of {} bytes", batch.encoded_len());
            let Record::Enqueued { first_position, messages, .. } = &batch.records[0] else { panic!() };
            assert_eq!(first_position.0, next);
            next += messages.len() as u64;
            stream.handle_confirm(batch.stream_seq).unwrap();
        }
        assert_eq!(next, 10);
        // A message larger than bytes_max goes in a batch of its own.
        stream.handle_enqueued("q", Position(10), big.clone(), None).unwrap();
        stream.handle_enqueued("q", Position(11), big, None).unwrap();
        assert_eq!(stream.poll_batch(100).unwrap().records.len(), 1);
        assert_eq!(stream.poll_batch(100).unwrap().records.len(), 1);
    }

    #[test]
    fn stream_asks_producers_to_pause_then_refuses_past_its_bound_handing_the_hold_back() {
        // Goal: the backpressure policy: pause at STREAM_PENDING_PAUSE, refuse at STREAM_PENDING_MAX.
        let mut stream = PrimaryStream::new(Epoch(1));
        for position in 0..STREAM_PENDING_PAUSE as u64 {
            stream.handle_enqueued("q", Position(position), Message::default(), None).unwrap();
        }
        assert!(stream.producers_must_pause());
        for position in STREAM_PENDING_PAUSE as u64..STREAM_PENDING_MAX as u64 {
            stream.handle_enqueued("q", Position(position), Message::default(), None).unwrap();
        }
        let error = stream.handle_enqueued("q", Position(u64::MAX), Message::default(), hold(9)).unwrap_err();
        assert_eq!(error, StreamOverflow { hold: hold(9), pending: STREAM_PENDING_MAX, max: STREAM_PENDING_MAX });
        // Draining batches ends the pause.
        while let Some(batch) = stream.poll_batch(BATCH_BYTES_MAX as usize) {
            stream.handle_confirm(batch.stream_seq).unwrap();
        }
        assert!(!stream.producers_must_pause());
        assert_eq!(stream.pending_records(), 0);
    }

    #[test]
    fn mark_turns_confirmed_once_every_record_fed_before_it_is_in_a_confirmed_batch() {
        // Goal: the catch-up rule: records fed after the mark do not delay it, and records fed
        // before it count once batched and confirmed, or dropped unsent.
        let mut stream = PrimaryStream::new(Epoch(1));
        // An empty mark is confirmed at once.
        stream.mark_fed();
        assert!(stream.mark_confirmed());
        // A snapshot: two queues, three messages; one of them is consumed before it is batched.
        stream.handle_queue_created("a", QueueOptions::default());
        stream.handle_queue_created("b", QueueOptions::default());
        stream.handle_enqueued("a", Position(0), message(0), None).unwrap();
        stream.handle_enqueued("a", Position(1), message(1), None).unwrap();
        stream.handle_enqueued("b", Position(5), message(5), None).unwrap();
        stream.mark_fed();
        assert!(!stream.mark_confirmed());
        stream.handle_dequeued("a", Position(1)).unwrap();
        // Live records after the mark, on both queues.
        stream.handle_enqueued("a", Position(2), message(2), hold(2)).unwrap();
        stream.handle_enqueued("b", Position(6), message(6), hold(6)).unwrap();
        // Small batches: the creates, then one message at a time.
        let mut seqs = Vec::new();
        while let Some(batch) = stream.poll_batch(BATCH_HEADER_BYTES + 40) {
            seqs.push(batch.stream_seq);
        }
        assert!(seqs.len() >= 3, "{seqs:?}");
        // Confirming all but the last batch may or may not cover the mark; confirming everything does.
        for &seq in &seqs {
            stream.handle_confirm(seq).unwrap();
        }
        assert!(stream.mark_confirmed());
        // Losing the backup un-confirms nothing, but a lost stream is never caught up.
        stream.handle_backup_lost();
        assert!(!stream.mark_confirmed());
    }

    #[test]
    fn mark_waits_for_the_batch_carrying_the_last_marked_record_not_for_later_ones() {
        // Goal: exactly the batch that carried the last marked record must be confirmed.
        let mut stream = PrimaryStream::new(Epoch(1));
        stream.handle_queue_created("q", QueueOptions::default());
        stream.handle_enqueued("q", Position(0), message(0), None).unwrap();
        stream.mark_fed();
        let first = stream.poll_batch(BYTES).unwrap();
        // A later record in a later batch.
        stream.handle_enqueued("q", Position(1), message(1), hold(1)).unwrap();
        let second = stream.poll_batch(BYTES).unwrap();
        assert!(!stream.mark_confirmed());
        stream.handle_confirm(first.stream_seq).unwrap();
        assert!(stream.mark_confirmed(), "the later batch does not delay the mark");
        stream.handle_confirm(second.stream_seq).unwrap();
        assert!(stream.mark_confirmed());
        // A pending dequeue is covered by a new mark.
        stream.handle_dequeued("q", Position(0)).unwrap();
        stream.mark_fed();
        assert!(!stream.mark_confirmed());
        let third = stream.poll_batch(BYTES).unwrap();
        assert!(!stream.mark_confirmed());
        stream.handle_confirm(third.stream_seq).unwrap();
        assert!(stream.mark_confirmed());
    }

    #[test]
    fn a_barrier_waits_for_the_confirm_of_every_earlier_enqueue_of_its_queue() {
        // Goal: a duplicate's hold is never released before the backup confirmed the batch that
        // carried the original (fed earlier), whether the original was pending or in flight;
        // enqueues of other queues and later ones do not delay it; a loss releases it.
        let mut stream = PrimaryStream::new(Epoch(1));
        stream.handle_enqueued("q", Position(0), message(0), hold(1)).unwrap();
        // The original is pending: the barrier waits for its batch and that batch's confirm.
        stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(2) });
        stream.handle_enqueued("q", Position(1), message(1), None).unwrap();
        assert!(released(&mut stream).is_empty());
        let first = stream.poll_batch(BYTES).unwrap();
        assert!(released(&mut stream).is_empty(), "sent, not confirmed");
        // In flight: a barrier now waits for the same batch.
        stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(3) });
        // A barrier of a queue with nothing fed is released at once (nothing sent, nothing pending).
        let mut idle = PrimaryStream::new(Epoch(1));
        idle.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(9) });
        assert_eq!(released(&mut idle), holds(&[9]));
        stream.handle_enqueued("q", Position(2), message(2), None).unwrap();
        stream.handle_enqueued("other", Position(0), message(0), None).unwrap();
        let second = stream.poll_batch(BYTES).unwrap();
        stream.handle_confirm(first.stream_seq).unwrap();
        assert_eq!(released(&mut stream), holds(&[1, 2, 3]));
        assert_eq!(stream.barriers_held(), 0);
        // A barrier behind an unsent enqueue that is dequeued before batching: released once the
        // batches sent by then are confirmed.
        stream.handle_enqueued("q", Position(3), message(3), None).unwrap();
        stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(4) });
        stream.handle_dequeued("q", Position(3)).unwrap();
        assert!(released(&mut stream).is_empty(), "the second batch is unconfirmed");
        stream.handle_confirm(second.stream_seq).unwrap();
        assert_eq!(released(&mut stream), holds(&[4]));
        // A loss releases a waiting barrier.
        stream.handle_enqueued("q", Position(4), message(4), None).unwrap();
        stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(5) });
        stream.poll_batch(BYTES).unwrap();
        stream.handle_backup_lost();
        assert_eq!(released(&mut stream), holds(&[5]));
        assert_eq!(stream.counters().holds_released_by_loss, 1);
    }

    /// A message carrying the dedup key `producer/seq`.
    fn keyed(producer: &str, seq: u64) -> Message {
        let header = ringmq_core::frame::Header {
            name: Bytes::from_static(ringmq_core::limits::DEDUP_HEADER),
            value: Bytes::from(format!("{producer}/{seq}")),
        };
        Message { headers: vec![header], ..message(seq) }
    }

    fn dedup_seen(queue: &str, keys: &[(&str, &[(u64, u64)])]) -> Record {
        let keys = keys.iter().map(|(producer, ranges)| (producer.to_string(), ranges.to_vec())).collect();
        Record::DedupSeen { queue: queue.to_string(), keys }
    }

    #[test]
    fn a_consumed_unsent_keyed_message_sends_its_key_in_the_next_batch() {
        // Goal: a message dequeued before it was batched is not sent, but its dedup key is, as a
        // DedupSeen record of compact ranges per producer; unkeyed or malformed ones send nothing;
        // a message dequeued after its batch needs no key (the backup stored it).
        let mut stream = PrimaryStream::new(Epoch(1));
        for seq in 1..=6 {
            stream.handle_enqueued("q", Position(seq), keyed("p", seq), hold(seq)).unwrap();
        }
        stream.handle_enqueued("q", Position(7), keyed("a", 40), hold(7)).unwrap();
        stream.handle_enqueued("q", Position(8), message(8), hold(8)).unwrap();
        let malformed = ringmq_core::frame::Header {
            name: Bytes::from_static(ringmq_core::limits::DEDUP_HEADER),
            value: Bytes::from_static(b"no-seq"),
        };
        stream.handle_enqueued("q", Position(9), Message { headers: vec![malformed], ..message(9) }, hold(9)).unwrap();
        for position in [1, 2, 3, 5, 7, 8, 9] {
            stream.handle_dequeued("q", Position(position)).unwrap();
        }
        // The consumed messages' holds come back at once, as before.
        assert_eq!(released(&mut stream), holds(&[1, 2, 3, 5, 7, 8, 9]));
        // Pending: messages 4 and 6, and three ranges (p: 1..=3, 5; a: 40).
        assert_eq!(stream.pending_records(), 5);
        assert_eq!(stream.counters().dedup_keys_kept, 5);
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(
            batch.records,
            vec![
                Record::Enqueued { queue: "q".into(), first_position: Position(4), messages: vec![keyed("p", 4)] },
                Record::Enqueued { queue: "q".into(), first_position: Position(6), messages: vec![keyed("p", 6)] },
                dedup_seen("q", &[("a", &[(40, 40)]), ("p", &[(1, 3), (5, 5)])]),
            ]
        );
        assert_eq!(stream.pending_records(), 0);
        // Dequeued after its batch: a Dequeued record, no key.
        stream.handle_dequeued("q", Position(4)).unwrap();
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(batch.records, vec![Record::Dequeued { queue: "q".into(), ranges: ranges(&[(4, 4)]) }]);
        // A key kept for a queue that is then deleted goes nowhere (its window is gone too).
        stream.handle_enqueued("q", Position(10), keyed("p", 10), None).unwrap();
        stream.handle_dequeued("q", Position(10)).unwrap();
        assert_eq!(stream.pending_records(), 1);
        stream.handle_queue_deleted("q");
        assert_eq!(stream.pending_records(), 1, "only the delete");
        assert_eq!(stream.poll_batch(BYTES).unwrap().records, vec![Record::QueueDeleted { name: "q".into() }]);
    }

    #[test]
    fn kept_dedup_keys_merge_into_ranges_and_split_at_the_batch_limits() {
        // Goal: keys compact into ranges as they come (in any order), the pending count follows
        // the ranges, and more ranges than a batch allows go out over several batches in order.
        let mut stream = PrimaryStream::new(Epoch(1));
        // Positions 1..=6 carry the sequences 5, 3, 4, 9, 1, 2.
        for (position, seq) in [(1, 5), (2, 3), (3, 4), (4, 9), (5, 1), (6, 2)] {
            stream.handle_enqueued("q", Position(position), keyed("p", seq), None).unwrap();
        }
        for position in [1, 2, 4, 5] {
            stream.handle_dequeued("q", Position(position)).unwrap();
        }
        assert_eq!(stream.pending_records(), 2 + 4, "messages 3 and 6; keys 1, 3, 5, 9");
        stream.handle_dequeued("q", Position(3)).unwrap(); // 4 joins 3..=5
        stream.handle_dequeued("q", Position(6)).unwrap(); // 2 joins 1..=5
        assert_eq!(stream.pending_records(), 2, "1..=5 and 9");
        assert_eq!(stream.poll_batch(BYTES).unwrap().records, vec![dedup_seen("q", &[("p", &[(1, 5), (9, 9)])])]);
        // BATCH_DEDUP_RANGES_MAX + 1 separate keys: two batches, lowest first, nothing lost.
        let count = BATCH_DEDUP_RANGES_MAX as u64 + 1;
        for index in 0..count {
            let position = 100 + index;
            stream.handle_enqueued("q", Position(position), keyed("p", 100 + 2 * index), None).unwrap();
            stream.handle_dequeued("q", Position(position)).unwrap();
        }
        assert_eq!(stream.pending_records(), count as usize);
        let mut seen = Vec::new();
        while let Some(batch) = stream.poll_batch(BATCH_BYTES_MAX as usize) {
            assert!(batch.encoded_len() <= BATCH_BYTES_MAX as usize);
            let [Record::DedupSeen { keys, .. }] = &batch.records[..] else { panic!("{:?}", batch.records) };
            assert!(keys.iter().map(|(_, r)| r.len()).sum::<usize>() <= BATCH_DEDUP_RANGES_MAX as usize);
            seen.extend(keys.iter().flat_map(|(_, ranges)| ranges.iter().map(|&(first, _)| first)));
            stream.handle_confirm(batch.stream_seq).unwrap();
        }
        assert_eq!(seen, (0..count).map(|index| 100 + 2 * index).collect::<Vec<_>>());
        assert_eq!(stream.sent_last(), StreamSeq(3));
        // A small byte budget splits a producer's ranges across batches too.
        for index in 0..10u64 {
            stream.handle_enqueued("q", Position(10_000 + index), keyed("p", 10_000 + 2 * index), None).unwrap();
            stream.handle_dequeued("q", Position(10_000 + index)).unwrap();
        }
        let mut batches = 0;
        let mut total = 0;
        while let Some(batch) = stream.poll_batch(BATCH_HEADER_BYTES + 60) {
            batches += 1;
            let [Record::DedupSeen { keys, .. }] = &batch.records[..] else { panic!() };
            total += keys.iter().map(|(_, ranges)| ranges.len()).sum::<usize>();
            stream.handle_confirm(batch.stream_seq).unwrap();
        }
        assert_eq!(total, 10);
        assert!(batches > 1, "{batches}");
    }

    #[test]
    fn catch_up_dedup_keys_go_with_the_queue_creates_and_count_for_the_mark() {
        // Goal: a snapshot's DedupSeen goes out right after its queue's create, before any queue
        // data; the mark waits for it, and for live keys kept before the mark.
        let mut stream = PrimaryStream::new(Epoch(1));
        stream.handle_queue_created("q", QueueOptions::default());
        stream.handle_dedup_seen("q", vec![("p".to_string(), vec![(1, 10)])]);
        stream.handle_enqueued("q", Position(11), keyed("p", 11), None).unwrap();
        stream.handle_dequeued("q", Position(11)).unwrap();
        stream.mark_fed();
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(
            batch.records,
            vec![
                Record::QueueCreated { name: "q".into(), options: QueueOptions::default() },
                dedup_seen("q", &[("p", &[(1, 10)])]),
                dedup_seen("q", &[("p", &[(11, 11)])]),
            ]
        );
        assert!(!stream.mark_confirmed());
        stream.handle_confirm(batch.stream_seq).unwrap();
        assert!(stream.mark_confirmed());
        // A live key pending at a mark holds it until its batch is confirmed.
        stream.handle_enqueued("q", Position(12), keyed("p", 12), None).unwrap();
        stream.handle_dequeued("q", Position(12)).unwrap();
        stream.mark_fed();
        assert!(!stream.mark_confirmed());
        let batch = stream.poll_batch(BYTES).unwrap();
        assert_eq!(batch.records, vec![dedup_seen("q", &[("p", &[(12, 12)])])]);
        assert!(!stream.mark_confirmed());
        stream.handle_confirm(batch.stream_seq).unwrap();
        assert!(stream.mark_confirmed());
    }
}
