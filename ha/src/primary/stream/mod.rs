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
//! The parts, each in its own module: `pending` (the records fed and not yet batched, per queue,
//! with the barriers and the catch-up mark that wait on them) and `batch_builder` (the filling of
//! one batch within its budget, and the batches in flight). This type owns the sequence of
//! batches, the confirms, the holds' release and the backpressure.
//!
//! Holds: a publish whose confirm must wait for this backup is named by a `Hold` passed with its
//! enqueue. The stream gives the hold back (`poll_released`) on the first of:
//! - the backup confirmed the batch that carried the message;
//! - the message was dequeued on the primary before it was put in a batch: then neither the
//!   enqueue nor the dequeue is ever sent ("a message consumed and acked on the primary before it
//!   was replicated is not sent"), and the hold is released at once. A message this stream holds
//!   is not delivered to consumers before its backup confirmed it (`primary::replication`,
//!   "Delivery gates"), so this happens only to a purged message, or to one stored before the
//!   stream existed or while only expected backups held it (never gated);
//! - the queue was deleted before the message was put in a batch (the message is gone, as if
//!   consumed);
//! - the backup was lost (`handle_backup_lost`): a dropped backup stops holding publishers.
//!
//! Configuration: shard 0's stream also carries the replicated configuration (queues other shards
//! own, exchanges, bindings; see `ringmq_core::replication`). Exchange creates and deletes, binds
//! and unbinds are batched like queue creates and deletes: in one queue with them, in the order
//! fed, and before any queue data.
//!
//! Confirm timeout: a backup that is alive confirms each batch on the read that brings it, so a
//! batch the backup never confirms was lost on the way (a half-dead peer, a proxy that stalls
//! one direction) even while heartbeats still flow; and a lost batch with nothing after it is a
//! gap the backup cannot see. The stream therefore times how long its oldest unconfirmed batch
//! has waited, counted from when it became the oldest (its sending, or the confirm of the batch
//! before it, whichever is later, so a backup that confirms a full window steadily is never cut
//! off), and `handle_timeout` reports `ConfirmOverdue` once that reaches the caller's bound; the
//! caller then drops the link as lost. The stream reads no clock: `handle_timeout(now, ..)` notes
//! the time a wait began when it first sees the new oldest batch, so the caller calls it after
//! every round of `handle_confirm` and `poll_batch` (a wait is then timed from the input that
//! began it; a later call only starts it later, never earlier) and at `confirm_deadline`.
//!
//! Call contract (heartbeats and `ha-backup-timeout` are the caller's, which calls
//! `handle_backup_lost` when they fire):
//! - `handle_queue_created`, `handle_queue_deleted`, `handle_enqueued`, `handle_dequeued` (and,
//!   from a catch-up snapshot, `handle_dedup_seen`) as the
//!   shard changes its replicated queues, in the order it changes them (`handle_barrier` in that
//!   order too, for a suppressed duplicate), and on shard 0
//!   `handle_exchange_created`, `handle_exchange_deleted`, `handle_bound`, `handle_unbound` in
//!   the same order;
//! - `handle_confirm` for each confirm the backup sends;
//! - then `poll_released` (hand each hold to the producer's shard) and `poll_batch` until it
//!   returns `None` (encode and send each batch);
//! - then `handle_timeout(now, timeout)` (and again at `confirm_deadline(timeout)`); on
//!   `ConfirmOverdue` the caller drops the link and the backup (`handle_backup_lost` or
//!   `take_held`);
//! - while `producers_must_pause()`, the shard stops reading producers (and consumers' settles)
//!   until batches went out and confirms came back. This is the backpressure policy: the stream
//!   always takes what the shard already did to its queues, so that the backup stays exact, up to
//!   the hard bound `STREAM_PENDING_MAX`; past it `handle_enqueued` / `handle_dequeued` refuse with
//!   `StreamOverflow` and the caller must drop the backup (`handle_backup_lost`), since the backup
//!   can no longer be kept exact.
//!
//! Catch-up: the caller feeds the stream a snapshot of what its queues hold (as creates and
//! enqueues) before any later change, then calls `mark_fed`; `mark_confirmed` turns true once every
//! marked record is in a batch the backup confirmed (see `primary::replication`).
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
//! - Per queue, records go out in the order the shard made the changes, with queue creates and
//!   deletes ordered before the data that follows them.
//! - Configuration records (queue, exchange and binding creates and deletes) go out in exactly the
//!   order they were fed.
//! - A confirm above the last sent seq, or below the previous confirm, is the peer's protocol
//!   error: an `Err`, never a panic.
//! - `handle_timeout` reports `ConfirmOverdue` only while a batch is unconfirmed, and only once
//!   that batch, as the oldest unconfirmed one, has waited at least the bound since the
//!   `handle_timeout` call that first saw it as the oldest.

mod batch_builder;
mod pending;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{ExchangeKind, Message, QueueOptions};
use ringmq_core::model::dedup_window::dedup_key;
use ringmq_core::replication::DedupSeenKeys;
use ringmq_core::replication_level::ReplicationLevel;

use self::batch_builder::{BatchBuilder, InflightBatch};
use self::pending::{Barrier, Mark, PendingEnqueue, QueuePending};
use crate::limits::{
    BATCHES_UNCONFIRMED_MAX, BATCH_BYTES_MAX, BATCH_DEDUP_RANGES_MAX, BATCH_HEADER_BYTES, BATCH_RECORDS_MAX,
    STREAM_PENDING_MAX, STREAM_PENDING_PAUSE,
};
use crate::link::record::{record_encoded_len, Batch, Position, Record, StreamSeq};
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
    /// The oldest unconfirmed batch as `handle_timeout` last saw it, and since when it waits.
    confirm_wait: Option<ConfirmWait>,
    /// What happened, for metrics.
    counters: PrimaryCounters,
}

/// The oldest unconfirmed batch of a stream, and since when it has waited as the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConfirmWait {
    /// Its seq.
    seq: StreamSeq,
    /// When `handle_timeout` first saw it as the oldest unconfirmed batch.
    since: Instant,
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
    /// Times `handle_timeout` found the oldest unconfirmed batch overdue (`ConfirmOverdue`).
    pub confirms_overdue: u64,
}

/// The backup has not confirmed the oldest unconfirmed batch within the bound: the batch (or the
/// backup's confirm) was lost, and the caller drops the link as lost, as for a silent peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "batch {seq} was the oldest unconfirmed one for {waited:?}, the most allowed is {timeout:?}; the batch or its \
     confirm was lost"
)]
pub struct ConfirmOverdue {
    /// The oldest unconfirmed batch.
    pub seq: StreamSeq,
    /// How long it has waited as the oldest.
    pub waited: Duration,
    /// The bound it passed.
    pub timeout: Duration,
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
            confirm_wait: None,
            counters: PrimaryCounters::default(),
        }
    }

    /// A replicated queue was created. Never refused: creates are rare and come from the
    /// configuration coordinator, which the stream cannot push back on; they count toward the pause.
    ///
    /// # Panics
    ///
    /// If the backup was lost (the caller must drop the stream then).
    pub fn handle_queue_created(&mut self, name: &str, options: QueueOptions, level: ReplicationLevel) {
        self.assert_alive();
        self.config.push_back(Record::QueueCreated { name: name.to_string(), options, level });
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
    pub fn handle_exchange_created(&mut self, name: &str, kind: ExchangeKind, level: ReplicationLevel) {
        self.push_config(Record::ExchangeCreated { name: name.to_string(), kind, level });
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
    /// `primary::replication`, "Detached backups"): every hold still waiting on it is handed back
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

    /// The confirm timeout at `now` (see "Confirm timeout"): notes `now` as the start of the
    /// oldest unconfirmed batch's wait if it is not the batch seen last time, then reports
    /// whether it has waited `timeout` or longer. Nothing to wait for (nothing unconfirmed, or the
    /// backup lost) is never overdue.
    ///
    /// # Errors
    ///
    /// `ConfirmOverdue` once the oldest unconfirmed batch has waited `timeout` or longer; the
    /// caller drops the link and the backup. Asked again, it reports the same batch again.
    ///
    /// # Panics
    ///
    /// If `now` is before the start of the wait it noted (`now` went backwards).
    pub fn handle_timeout(&mut self, now: Instant, timeout: Duration) -> Result<(), ConfirmOverdue> {
        let oldest = if self.lost { None } else { self.inflight.front().map(|batch| batch.seq) };
        let Some(seq) = oldest else {
            self.confirm_wait = None;
            return Ok(());
        };
        // Pair of the window check in `handle_confirm`: the oldest unconfirmed is the next to confirm.
        assert_eq!(seq, self.confirmed.next());
        let wait = match self.confirm_wait {
            Some(wait) if wait.seq == seq => wait,
            _ => *self.confirm_wait.insert(ConfirmWait { seq, since: now }),
        };
        assert!(now >= wait.since, "now went backwards: {now:?} before {:?}", wait.since);
        let waited = now - wait.since;
        if waited < timeout {
            return Ok(());
        }
        self.counters.confirms_overdue += 1;
        Err(ConfirmOverdue { seq, waited, timeout })
    }

    /// When the oldest unconfirmed batch, as `handle_timeout` last saw it, will have waited
    /// `timeout`; `None` with nothing unconfirmed (or nothing seen yet: the caller's
    /// `handle_timeout` after this round notes it).
    pub fn confirm_deadline(&self, timeout: Duration) -> Option<Instant> {
        let oldest = if self.lost { None } else { self.inflight.front().map(|batch| batch.seq) };
        let wait = self.confirm_wait.filter(|wait| Some(wait.seq) == oldest)?;
        Some(wait.since + timeout)
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
#[cfg(test)]
mod tests;
