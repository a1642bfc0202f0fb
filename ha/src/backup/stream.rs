//! The backup's side of one replication stream: checking one primary shard's batches, handing
//! their records back in order for the shard to apply, and confirming them cumulatively.
//!
//! A backup shard has one `BackupStream` per link to the primary (one per shard: backup shard N
//! follows primary shard N). The stream does not hold the replicated queues: the backup's core
//! `Shard` stores replicated messages in its real queues (`Shard::apply_replica`), so that a
//! promotion finds them in place. This module decides only *whether* a batch is applied, and in
//! which order its records go.
//!
//! Rules for a batch (checked in this order):
//! - from an epoch older than the highest this stream has seen: ignored, `StaleEpoch`; a killed
//!   primary that comes back cannot feed a backup that follows a newer one (our issue, item 10);
//! - with a seq already applied: ignored, `Duplicate`, and the confirm is sent again, in case the
//!   primary missed it;
//! - with a seq beyond the next one: ignored, `Gap`; the link lost a batch, and the caller must
//!   drop the link and reconnect (a new stream, `handle_connected`) since nothing here can recover
//!   the missing batch;
//! - otherwise accepted: its records come back in `Applied`, in the batch's order, and the batch
//!   counts as applied (it is confirmed by the next `poll_confirm`).
//!
//! Call contract: `handle_connected` when a link to the primary shard is (re)established, then
//! `handle_batch` for each decoded batch, in arrival order; the caller applies every record of an
//! `Applied`, in order, *before* it calls `poll_confirm` (a confirm tells the primary the records
//! are stored, and releases its publishers' confirms). `poll_confirm` after a read: one confirm
//! covers every batch applied since the last one. `handle_epoch_observed` whenever the broker
//! learns of a newer epoch from elsewhere (another stream, the coordinator).
//!
//! Applying must be idempotent (that is the shard's part): an enqueue at a position already held
//! is ignored, a dequeue of a position not held is ignored (a message consumed on the primary
//! before it was replicated is never sent, so its dequeue may name nothing), a create of a queue
//! already held keeps its messages.
//!
//! Not here: IO, heartbeats, storing the records, exchanges and bindings.
//!
//! Invariants:
//! - `applied` only grows within a connection, by exactly one per accepted batch.
//! - A batch is accepted only if its epoch is not older than the highest seen, and only if it is
//!   the next in the stream; its records are handed back exactly once, in order.
//! - Confirms only grow within a connection, and never exceed `applied`.
//! - Every ignored batch has a named reason and a counter.

use ringmq_core::epoch::{Epoch, EpochClock, StaleEpoch};

use crate::link::record::{Batch, Record, StreamSeq};

/// The backup side of one stream from one primary shard.
#[derive(Debug)]
pub struct BackupStream {
    /// The highest epoch seen; batches from older ones are ignored.
    clock: EpochClock,
    /// The seq of the last batch applied on this connection; 0 before the first.
    applied: StreamSeq,
    /// The last seq handed out by `poll_confirm` on this connection.
    confirmed: StreamSeq,
    /// Set by a duplicate batch: confirm `applied` again even if it was confirmed already.
    confirm_due: bool,
    /// What was accepted and ignored, for metrics.
    counters: BackupCounters,
}

/// A batch was accepted: the caller applies its records, in this order, then confirms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its seq, now the highest applied.
    pub stream_seq: StreamSeq,
    /// Its records, in the batch's order.
    pub records: Vec<Record>,
}

/// A batch was not applied, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch ignored: {reason}")]
pub struct Ignored {
    /// Why.
    pub reason: IgnoreReason,
}

/// Why a batch was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreReason {
    /// From an epoch older than the highest seen: a fenced primary.
    #[error("{0}")]
    StaleEpoch(StaleEpoch),
    /// Already applied; the confirm is repeated.
    #[error("batch {got} is a duplicate, batches up to {applied} are applied")]
    Duplicate {
        /// The batch's seq.
        got: StreamSeq,
        /// The highest seq applied.
        applied: StreamSeq,
    },
    /// A batch is missing before this one; the caller must reconnect.
    #[error("batch {got} leaves a gap: batch {expected} was expected next")]
    Gap {
        /// The seq expected next.
        expected: StreamSeq,
        /// The batch's seq.
        got: StreamSeq,
    },
}

/// Counts of what a backup stream accepted and ignored, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupCounters {
    /// Batches accepted (their records handed back to be applied).
    pub batches_applied: u64,
    /// Records handed back to be applied.
    pub records_applied: u64,
    /// Batches ignored as from an older epoch.
    pub batches_stale: u64,
    /// Batches ignored as already applied.
    pub batches_duplicate: u64,
    /// Batches ignored because one before them is missing.
    pub batches_gap: u64,
}

impl BackupStream {
    /// A stream for a backup that has seen epochs up to `highest_seen`, with nothing applied.
    pub fn new(highest_seen: Epoch) -> BackupStream {
        let mut clock = EpochClock::new();
        clock.observe(highest_seen);
        BackupStream {
            clock,
            applied: StreamSeq(0),
            confirmed: StreamSeq(0),
            confirm_due: false,
            counters: BackupCounters::default(),
        }
    }

    /// A new link to the primary shard: its batches start again at seq 1. The highest epoch seen
    /// and the counters are kept.
    pub fn handle_connected(&mut self) {
        self.applied = StreamSeq(0);
        self.confirmed = StreamSeq(0);
        self.confirm_due = false;
    }

    /// The broker learnt of `epoch` elsewhere; batches from older epochs are refused from now on.
    pub fn handle_epoch_observed(&mut self, epoch: Epoch) {
        self.clock.observe(epoch);
    }

    /// Accepts `batch` if it is from a current epoch and is the next in the stream, and hands its
    /// records back, in order, for the caller to apply before the next `poll_confirm`.
    ///
    /// # Errors
    ///
    /// `Ignored` with its reason; the batch counts for nothing. On `Gap` the caller drops the link
    /// and reconnects; on `StaleEpoch` it drops the link to that (fenced) primary.
    pub fn handle_batch(&mut self, batch: Batch) -> Result<Applied, Ignored> {
        if let Err(stale) = self.clock.accepts(batch.epoch) {
            self.counters.batches_stale += 1;
            return Err(Ignored { reason: IgnoreReason::StaleEpoch(stale) });
        }
        if batch.stream_seq <= self.applied {
            self.counters.batches_duplicate += 1;
            self.confirm_due = true;
            return Err(Ignored { reason: IgnoreReason::Duplicate { got: batch.stream_seq, applied: self.applied } });
        }
        let expected = self.applied.next();
        if batch.stream_seq != expected {
            self.counters.batches_gap += 1;
            return Err(Ignored { reason: IgnoreReason::Gap { expected, got: batch.stream_seq } });
        }
        self.applied = batch.stream_seq;
        self.counters.batches_applied += 1;
        self.counters.records_applied += batch.records.len() as u64;
        assert!(self.confirmed <= self.applied);
        Ok(Applied { stream_seq: batch.stream_seq, records: batch.records })
    }

    /// The confirm to send, "every batch up to this seq is applied", if there is news (or a
    /// duplicate asked for a repeat). One confirm covers every batch applied since the last.
    pub fn poll_confirm(&mut self) -> Option<StreamSeq> {
        if self.applied > self.confirmed || self.confirm_due && self.applied > StreamSeq(0) {
            assert!(self.applied >= self.confirmed, "confirms never go backwards");
            self.confirmed = self.applied;
            self.confirm_due = false;
            return Some(self.applied);
        }
        self.confirm_due = false;
        None
    }

    /// The seq of the last batch applied on this connection.
    pub fn applied(&self) -> StreamSeq {
        self.applied
    }

    /// The highest epoch seen.
    pub fn epoch_highest(&self) -> Epoch {
        self.clock.highest()
    }

    /// What was accepted and ignored, for metrics.
    pub fn counters(&self) -> BackupCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

    use bytes::{Bytes, BytesMut};
    use ringmq_core::frame::{Message, QueueOptions};
    use ringmq_core::ids::{ConnId, Seq, ShardId};
    use ringmq_core::replication_level::ReplicationLevel;

    use super::*;
    use crate::limits::BATCH_BYTES_MAX;
    use crate::link::record::{decode_batch, encode_batch, Position};
    use crate::primary::stream::{Hold, PrimaryStream};

    fn message(body: u64) -> Message {
        Message { body: Bytes::from(body.to_le_bytes().to_vec()), ..Message::default() }
    }

    fn batch(epoch: u64, seq: u64, records: Vec<Record>) -> Batch {
        Batch { epoch: Epoch(epoch), stream_seq: StreamSeq(seq), records }
    }

    fn created(name: &str) -> Record {
        Record::QueueCreated { name: name.into(), options: QueueOptions::default(), level: ReplicationLevel::All }
    }

    fn enqueued(queue: &str, first: u64, count: u64) -> Record {
        Record::Enqueued {
            queue: queue.into(),
            first_position: Position(first),
            messages: (first..first + count).map(message).collect(),
        }
    }

    fn dequeued(queue: &str, first: u64, last: u64) -> Record {
        Record::Dequeued { queue: queue.into(), ranges: vec![(Position(first), Position(last))] }
    }

    /// The test's stand-in for the backup shard's queues: applies records idempotently, as
    /// `Shard::apply_replica` does.
    #[derive(Debug, Default)]
    struct Replica {
        queues: BTreeMap<String, BTreeMap<u64, Message>>,
    }

    impl Replica {
        fn apply(&mut self, applied: Applied) -> StreamSeq {
            for record in applied.records {
                match record {
                    Record::QueueCreated { name, .. } => {
                        self.queues.entry(name).or_default();
                    }
                    Record::QueueDeleted { name } => {
                        self.queues.remove(&name);
                    }
                    Record::Enqueued { queue, first_position, messages } => {
                        if let Some(held) = self.queues.get_mut(&queue) {
                            for (offset, message) in messages.into_iter().enumerate() {
                                held.entry(first_position.0 + offset as u64).or_insert(message);
                            }
                        }
                    }
                    Record::Dequeued { queue, ranges } => {
                        if let Some(held) = self.queues.get_mut(&queue) {
                            held.retain(|position, _| !ranges.iter().any(|(f, l)| (f.0..=l.0).contains(position)));
                        }
                    }
                    // Configuration and dedup records change no queue's messages.
                    Record::ExchangeCreated { .. }
                    | Record::ExchangeDeleted { .. }
                    | Record::Bound { .. }
                    | Record::Unbound { .. }
                    | Record::DedupSeen { .. } => {}
                }
            }
            applied.stream_seq
        }

        fn positions(&self, queue: &str) -> Vec<u64> {
            self.queues.get(queue).map(|held| held.keys().copied().collect()).unwrap_or_default()
        }
    }

    #[test]
    fn backup_hands_back_records_of_batches_in_order_and_confirms_once_for_many() {
        // Goal: an accepted batch's records come back exactly as sent, in order; one confirm covers
        // every batch accepted since the last.
        let mut backup = BackupStream::new(Epoch(1));
        assert_eq!(backup.poll_confirm(), None);
        let first = vec![created("q"), enqueued("q", 0, 5)];
        let applied = backup.handle_batch(batch(1, 1, first.clone())).unwrap();
        assert_eq!(applied, Applied { stream_seq: StreamSeq(1), records: first });
        let applied = backup.handle_batch(batch(1, 2, vec![dequeued("q", 1, 3)])).unwrap();
        assert_eq!(applied.records, vec![dequeued("q", 1, 3)]);
        // One confirm for both batches, then nothing until more is accepted.
        assert_eq!(backup.poll_confirm(), Some(StreamSeq(2)));
        assert_eq!(backup.poll_confirm(), None);
        let counters = backup.counters();
        assert_eq!((counters.batches_applied, counters.records_applied), (2, 3));
    }

    #[test]
    fn backup_never_applies_a_batch_from_an_older_epoch() {
        // Goal: a fenced primary cannot change the replica, even with the right seq.
        let mut backup = BackupStream::new(Epoch(1));
        backup.handle_batch(batch(3, 1, vec![created("q")])).unwrap();
        // An epoch-2 primary comes back with the next seq: refused, naming both epochs.
        let ignored = backup.handle_batch(batch(2, 2, vec![enqueued("q", 0, 1)])).unwrap_err();
        assert_eq!(ignored.reason, IgnoreReason::StaleEpoch(StaleEpoch { ours: Epoch(3), theirs: Epoch(2) }));
        // An epoch learnt elsewhere fences too.
        backup.handle_epoch_observed(Epoch(4));
        assert!(matches!(
            backup.handle_batch(batch(3, 2, vec![enqueued("q", 0, 1)])),
            Err(Ignored { reason: IgnoreReason::StaleEpoch(_) })
        ));
        assert_eq!(backup.counters().batches_stale, 2);
        assert_eq!(backup.applied(), StreamSeq(1));
        assert_eq!(backup.epoch_highest(), Epoch(4));
        // The newer primary's batch with the next seq is accepted.
        assert!(backup.handle_batch(batch(4, 2, vec![enqueued("q", 0, 1)])).is_ok());
    }

    #[test]
    fn duplicate_batch_is_ignored_and_the_confirm_is_sent_again() {
        // Goal: a re-sent batch hands back nothing, and the primary hears the confirm again.
        let mut backup = BackupStream::new(Epoch(1));
        backup.handle_batch(batch(1, 1, vec![created("q"), enqueued("q", 0, 2)])).unwrap();
        assert_eq!(backup.poll_confirm(), Some(StreamSeq(1)));
        let ignored = backup.handle_batch(batch(1, 1, vec![dequeued("q", 0, 1)])).unwrap_err();
        assert_eq!(ignored.reason, IgnoreReason::Duplicate { got: StreamSeq(1), applied: StreamSeq(1) });
        assert_eq!(backup.poll_confirm(), Some(StreamSeq(1)));
        assert_eq!(backup.poll_confirm(), None);
        assert_eq!(backup.counters().records_applied, 2);
    }

    #[test]
    fn gap_in_stream_seqs_is_reported_and_nothing_is_applied() {
        // Goal: a lost batch is detected at the next one; the caller reconnects.
        let mut backup = BackupStream::new(Epoch(1));
        backup.handle_batch(batch(1, 1, vec![created("q")])).unwrap();
        let ignored = backup.handle_batch(batch(1, 3, vec![enqueued("q", 0, 1)])).unwrap_err();
        assert_eq!(ignored.reason, IgnoreReason::Gap { expected: StreamSeq(2), got: StreamSeq(3) });
        assert_eq!(ignored.to_string(), "batch ignored: batch 3 leaves a gap: batch 2 was expected next");
        assert_eq!(backup.applied(), StreamSeq(1));
        // After a reconnect the stream starts again at 1.
        backup.handle_connected();
        assert_eq!(backup.poll_confirm(), None);
        let applied = backup.handle_batch(batch(1, 1, vec![enqueued("q", 0, 1)])).unwrap();
        assert_eq!(applied.records, vec![enqueued("q", 0, 1)]);
        assert_eq!(backup.poll_confirm(), Some(StreamSeq(1)));
        assert_eq!(backup.counters().batches_gap, 1);
    }

    #[test]
    fn queue_deleted_with_messages_in_flight_leaves_the_backup_without_it() {
        // Goal: a delete after some messages were batched and some not: the unbatched ones never
        // go out (hold released at once), the batched ones keep their holds until the confirm, and
        // the backup ends without the queue.
        let mut primary = PrimaryStream::new(Epoch(1));
        let mut backup = BackupStream::new(Epoch(1));
        let mut replica = Replica::default();
        let hold = |seq| Some(Hold { shard: ShardId(1), conn: ConnId(2), seq: Seq(seq) });
        primary.handle_queue_created("q", QueueOptions::default(), ReplicationLevel::All);
        primary.handle_enqueued("q", Position(0), message(0), hold(0)).unwrap();
        let first = primary.poll_batch(4096).unwrap();
        primary.handle_enqueued("q", Position(1), message(1), hold(1)).unwrap();
        primary.handle_queue_deleted("q");
        let second = primary.poll_batch(4096).unwrap();
        assert_eq!(second.records, vec![Record::QueueDeleted { name: "q".into() }]);
        // The unbatched message's hold is back at once; the batched one waits.
        let mut released = Vec::new();
        primary.poll_released(&mut released);
        assert_eq!(released, vec![hold(1).unwrap()]);
        // The backup applies both; one confirm releases the batched message's hold.
        replica.apply(backup.handle_batch(first).unwrap());
        assert_eq!(replica.positions("q"), vec![0]);
        replica.apply(backup.handle_batch(second).unwrap());
        assert!(!replica.queues.contains_key("q"));
        primary.handle_confirm(backup.poll_confirm().unwrap()).unwrap();
        released.clear();
        primary.poll_released(&mut released);
        assert_eq!(released, vec![hold(0).unwrap()]);
    }

    /// A seeded xorshift64 generator: deterministic, no crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// What the test knows of one message.
    #[derive(Debug, Default)]
    struct Fate {
        /// The batch that carried its enqueue.
        enqueue_batch: Option<StreamSeq>,
        /// The batch that carried its dequeue.
        dequeue_batch: Option<StreamSeq>,
        /// Dequeued on the primary before it was batched.
        consumed_unsent: bool,
        /// Still on the primary's queue.
        live: bool,
    }

    #[test]
    fn primary_and_backup_stay_in_step_under_random_enqueues_dequeues_and_delays() {
        // Goal: under any interleaving of enqueues, dequeues, batching, in-order delivery with
        // random delays and confirms, (1) the backup holds exactly the messages whose enqueue
        // batch was delivered and whose dequeue batch was not (so, once the link is drained, exactly
        // the primary's un-dequeued messages), (2) no hold is released before the batch carrying
        // its message was confirmed, unless the message was dequeued before it was batched, and
        // every hold is released once.
        // Method: a primary and a backup stream joined by two simulated links (batches through
        // encode and decode), driven by a seeded xorshift; a model of every message's fate is
        // checked after each step; at the end the links are drained and everything compared.
        for seed in [1u64, 7, 42, 1234, 99_991, 0x5eed_cafe] {
            run_random_workload(seed, 4000);
        }
    }

    fn run_random_workload(seed: u64, steps: u64) {
        let mut rng = XorShift(seed);
        let queues = ["a", "b", "c"];
        let mut primary = PrimaryStream::new(Epoch(1));
        let mut backup = BackupStream::new(Epoch(1));
        let mut replica = Replica::default();
        let mut fates: HashMap<(usize, u64), Fate> = HashMap::new();
        let mut live: Vec<(usize, u64)> = Vec::new();
        let mut next_position = [0u64; 3];
        let mut next_seq = 0u64;
        let mut holds_by_seq: HashMap<u64, (usize, u64)> = HashMap::new();
        let mut released_seqs: HashSet<u64> = HashSet::new();
        // Links: (step at which it may be delivered, payload), delivered in order only.
        let mut to_backup: VecDeque<(u64, BytesMut)> = VecDeque::new();
        let mut to_primary: VecDeque<(u64, StreamSeq)> = VecDeque::new();
        let mut delivered = StreamSeq(0);
        for name in queues {
            primary.handle_queue_created(name, QueueOptions::default(), ReplicationLevel::All);
        }
        for step in 0..steps + 1000 {
            let draining = step >= steps;
            let op = if draining { 60 + step % 40 } else { rng.below(100) };
            match op {
                // Enqueue, usually with a hold.
                0..=39 => {
                    let q = rng.below(3) as usize;
                    let position = next_position[q];
                    next_position[q] += 1;
                    let hold = (rng.below(10) < 7).then(|| {
                        next_seq += 1;
                        holds_by_seq.insert(next_seq, (q, position));
                        Hold { shard: ShardId(0), conn: ConnId(3), seq: Seq(next_seq) }
                    });
                    primary.handle_enqueued(queues[q], Position(position), message(position), hold).unwrap();
                    fates.insert((q, position), Fate { live: true, ..Fate::default() });
                    live.push((q, position));
                }
                // Dequeue a random live message (a consume and ack, a reject, an expiry).
                40..=57 if !live.is_empty() => {
                    let key = live.swap_remove(rng.below(live.len() as u64) as usize);
                    dequeue(&mut primary, &mut fates, queues, key);
                }
                // Purge a queue: every live message of it.
                58..=59 => {
                    let q = rng.below(3) as usize;
                    let (purged, kept): (Vec<_>, Vec<_>) = live.iter().partition(|key| key.0 == q);
                    live = kept;
                    for key in purged {
                        dequeue(&mut primary, &mut fates, queues, key);
                    }
                }
                // Batch what is pending and put it on the link with a random delay.
                60..=74 => {
                    let bytes_max = 100 + rng.below(2000) as usize;
                    while let Some(batch) = primary.poll_batch(bytes_max) {
                        note_batch(&batch, &mut fates, queues);
                        let mut bytes = BytesMut::new();
                        encode_batch(&batch, &mut bytes);
                        to_backup.push_back((step + rng.below(6), bytes));
                    }
                }
                // Deliver due batches to the backup, and its confirm back with a delay.
                75..=87 => {
                    while to_backup.front().is_some_and(|(due, _)| *due <= step || draining) {
                        let (_, mut bytes) = to_backup.pop_front().unwrap();
                        let batch = decode_batch(&mut bytes, BATCH_BYTES_MAX).unwrap().unwrap();
                        delivered = replica.apply(backup.handle_batch(batch).unwrap());
                    }
                    if let Some(confirm) = backup.poll_confirm() {
                        to_primary.push_back((step + rng.below(6), confirm));
                    }
                }
                // Deliver due confirms to the primary.
                _ => {
                    while to_primary.front().is_some_and(|(due, _)| *due <= step || draining) {
                        let (_, confirm) = to_primary.pop_front().unwrap();
                        primary.handle_confirm(confirm).unwrap();
                    }
                }
            }
            // Every hold released now must be allowed: confirmed batch, or consumed unsent.
            let mut released = Vec::new();
            primary.poll_released(&mut released);
            for hold in released {
                assert!(released_seqs.insert(hold.seq.0), "seed {seed}: hold {hold:?} released twice");
                let fate = &fates[&holds_by_seq[&hold.seq.0]];
                let confirmed = fate.enqueue_batch.is_some_and(|seq| seq <= primary.confirmed());
                assert!(
                    confirmed || fate.consumed_unsent,
                    "seed {seed} step {step}: hold {hold:?} released early: {fate:?}, confirmed {:?}",
                    primary.confirmed()
                );
            }
            check_backup(seed, step, &replica, &fates, delivered, queues);
        }
        // Drained: everything sent, delivered and confirmed.
        assert_eq!(primary.pending_records(), 0, "seed {seed}");
        assert!(to_backup.is_empty() && to_primary.is_empty(), "seed {seed}");
        assert_eq!(primary.confirmed(), primary.sent_last(), "seed {seed}");
        assert_eq!(released_seqs.len(), holds_by_seq.len(), "seed {seed}: every hold released");
        for (q, name) in queues.iter().enumerate() {
            let mut on_primary: Vec<u64> = live.iter().filter(|key| key.0 == q).map(|key| key.1).collect();
            on_primary.sort_unstable();
            assert_eq!(replica.positions(name), on_primary, "seed {seed}: queue {name}");
        }
        assert!(primary.counters().messages_consumed_unsent > 0, "seed {seed}: the workload never cancelled");
    }

    fn dequeue(
        primary: &mut PrimaryStream,
        fates: &mut HashMap<(usize, u64), Fate>,
        queues: [&str; 3],
        key: (usize, u64),
    ) {
        let fate = fates.get_mut(&key).unwrap();
        assert!(fate.live);
        fate.live = false;
        fate.consumed_unsent = fate.enqueue_batch.is_none();
        primary.handle_dequeued(queues[key.0], Position(key.1)).unwrap();
    }

    /// Records in the model which batch carried each enqueue and dequeue, and checks that a
    /// message consumed before it was batched is never sent.
    fn note_batch(batch: &Batch, fates: &mut HashMap<(usize, u64), Fate>, queues: [&str; 3]) {
        for record in &batch.records {
            match record {
                Record::Enqueued { queue, first_position, messages } => {
                    let q = queues.iter().position(|name| name == queue).unwrap();
                    for (offset, message_sent) in messages.iter().enumerate() {
                        let position = first_position.0 + offset as u64;
                        let fate = fates.get_mut(&(q, position)).unwrap();
                        assert!(!fate.consumed_unsent, "message {q}/{position} consumed before batching was sent");
                        assert!(fate.enqueue_batch.is_none(), "message {q}/{position} sent twice");
                        assert_eq!(*message_sent, message(position));
                        fate.enqueue_batch = Some(batch.stream_seq);
                    }
                }
                Record::Dequeued { queue, ranges } => {
                    let q = queues.iter().position(|name| name == queue).unwrap();
                    for &(first, last) in ranges {
                        for position in first.0..=last.0 {
                            let fate = fates.get_mut(&(q, position)).unwrap();
                            assert!(!fate.live, "dequeue of live message {q}/{position} sent");
                            assert!(fate.enqueue_batch.is_some_and(|seq| seq < batch.stream_seq));
                            assert!(fate.dequeue_batch.is_none(), "dequeue of {q}/{position} sent twice");
                            fate.dequeue_batch = Some(batch.stream_seq);
                        }
                    }
                }
                Record::QueueCreated { .. }
                | Record::QueueDeleted { .. }
                | Record::DedupSeen { .. }
                | Record::ExchangeCreated { .. }
                | Record::ExchangeDeleted { .. }
                | Record::Bound { .. }
                | Record::Unbound { .. } => {}
            }
        }
    }

    /// The backup holds exactly the messages whose enqueue batch was delivered and whose dequeue
    /// batch was not.
    fn check_backup(
        seed: u64,
        step: u64,
        replica: &Replica,
        fates: &HashMap<(usize, u64), Fate>,
        delivered: StreamSeq,
        queues: [&str; 3],
    ) {
        for (q, name) in queues.iter().enumerate() {
            let mut expected: Vec<u64> = fates
                .iter()
                .filter(|(key, fate)| {
                    key.0 == q
                        && fate.enqueue_batch.is_some_and(|seq| seq <= delivered)
                        && fate.dequeue_batch.is_none_or(|seq| seq > delivered)
                })
                .map(|(key, _)| key.1)
                .collect();
            expected.sort_unstable();
            assert_eq!(replica.positions(name), expected, "seed {seed} step {step}: queue {name}");
            for (position, held) in replica.queues.get(*name).into_iter().flatten() {
                assert_eq!(*held, message(*position));
            }
        }
    }
}
