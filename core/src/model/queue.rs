//! One FIFO queue: its ready messages, its limits, its subscriptions and their unsettled
//! deliveries.
//!
//! A queue lives on exactly one shard (its owner) and is touched only by that shard's thread.
//! Subscribers may sit on any shard; they are named by a `SubscriberKey`, and deliveries come out
//! of `poll_deliveries` addressed to that key for the shard to route.
//!
//! Not here: routing (see `routing_table`), confirms (see `completion_tracker`), sockets.
//!
//! Replication (see `replication`): every held message, ready or unsettled, carries its
//! `Position`, assigned by `enqueue` (+1 each) and kept through deliveries, releases and cancels.
//! A queue of level `all` logs the position of every message it removes for good (ack or reject
//! settle, purge) for the shard to drain with `take_dequeued`; deleting the whole queue logs
//! nothing (the queue's deletion says it all). A backup's replica queue is fed with `enqueue_at`
//! (the primary's positions, no limits: the primary checked them) and `dequeue_at`, which log
//! nothing either: a backup replicates nothing onwards.
//!
//! Duplicate suppression (see `dedup_window`): a queue made `with_dedup_window` asks its window
//! about every message carrying the `x-ringmq-dedup` header. `enqueue` (the primary's way in)
//! stores nothing for a `Duplicate` and says so (`Enqueued::Duplicate`: the shard confirms it as
//! stored, since the queue holds it already or held it and it was consumed), and records every
//! key it stores; a message refused for a limit is not recorded, so its re-send is not suppressed.
//! `enqueue_at` (a backup's way in, live and catch-up) records the key of every message it is
//! given and stores it whatever the window says (the primary decided), so that after a failover
//! the new primary suppresses re-sends of what it received by replication. The window outlives
//! the messages: consuming, purging or clearing them forgets no key.
//!
//! Delivery gate (`gate_delivery`, `open_delivery_to`, `open_delivery`): on an HA primary, a
//! message stored while backup streams hold confirms may be delivered only once every such backup
//! holds it, so that a message a consumer took is never one a promoted backup lacks (its producer,
//! unconfirmed, would re-send it and the new primary store it again). The queue keeps one bound:
//! ready messages at or below it may be delivered, those above wait. A gated enqueue lowers the
//! bound to just below its position (if it was above), a message stored ungated raises it to its
//! position, and the shard raises it as the backups confirm (`Shard::handle_replicated`). Delivery
//! takes ready messages from the front while they are within the bound, so order is kept. An
//! ungated queue (every queue not on a primary with streams) has the bound at its maximum.
//!
//! Invariants:
//! - Every ready message above the delivery bound is in the queue's tail of messages stored by
//!   `enqueue`, in increasing position order (the bound only falls to just below a new position,
//!   above every message held, and a message released to the front was delivered, so it is within
//!   the bound): the messages within the bound are a prefix of the ready list.
//! - `held_count` = ready messages + unsettled deliveries, and `held_bytes` the same in body
//!   bytes; both stay within `max-count` / `max-bytes` when checked at `enqueue` (the client's way
//!   in; a replica's `enqueue_at` trusts the primary's checks).
//! - Positions are unique within the queue and `enqueue` only takes positions above every position
//!   the queue ever held or assigned (`next_position > highest_position`).
//! - On a backup (fed only by `enqueue_at` and `dequeue_at`), the ready list is sorted by position:
//!   `enqueue_at` below the highest position inserts in order.
//! - `dequeued_log` is empty unless the level is `all`.
//! - A subscription never holds more than `prefetch` unsettled deliveries.
//! - Tags of a subscription are consecutive from 0; a message released or returned by a cancel
//!   goes back to the head of the queue, flagged redelivered, in its original order.

use std::collections::VecDeque;

use crate::epoch::Epoch;
use crate::ids::{ConnId, ConsumerId, ShardId, Tag};
use crate::limits::DEDUP_PRODUCERS_PER_QUEUE_MAX;
use crate::model::dedup_window::{DedupCounters, DedupWindow, Verdict};
use crate::model::range_set::{ranges_contain, RangeSet};
use crate::replication::Position;
use crate::replication_level::ReplicationLevel;
use crate::wire::frame::{Delivered, ErrorCode, Message, QueueInfo, QueueOptions, Settlement, TagRange};

/// How many positions one epoch owns: a primary of epoch `e` starts its queues' positions at
/// `e << EPOCH_POSITION_SHIFT` (see `Queue::begin_epoch`).
pub const EPOCH_POSITION_SHIFT: u32 = 40;

/// The delivery bound of a queue with no gated message: every position is within it.
const UNGATED: Position = Position(u64::MAX);

/// Who a subscription belongs to: a consumer on a connection on a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberKey {
    /// The shard that holds the consumer's connection.
    pub shard: ShardId,
    /// The connection on that shard.
    pub conn: ConnId,
    /// The consumer on that connection.
    pub consumer: ConsumerId,
}

/// Deliveries to one subscription, consecutive tags from `first_tag`.
#[derive(Debug, PartialEq, Eq)]
pub struct DeliveryBatch {
    /// The subscription.
    pub subscriber: SubscriberKey,
    /// Tag of the first message.
    pub first_tag: Tag,
    /// The messages, with their redelivered flags.
    pub messages: Vec<Delivered>,
}

/// What `Queue::enqueue` did with a message it did not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored at this position.
    At(Position),
    /// Not stored: the dedup window knows its key (the queue holds it already, or held it).
    Duplicate,
}

impl Enqueued {
    /// The position it was stored at; `None` for a duplicate.
    pub fn position(self) -> Option<Position> {
        match self {
            Enqueued::At(position) => Some(position),
            Enqueued::Duplicate => None,
        }
    }
}

/// Why an enqueue was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// `max-count` reached.
    #[error("queue '{queue}' is full: max-count is {max}, it holds {held}")]
    CountFull {
        /// Queue name.
        queue: String,
        /// The limit.
        max: u64,
        /// Messages held.
        held: u64,
    },
    /// `max-bytes` would be exceeded.
    #[error("queue '{queue}' is full: max-bytes is {max}, it holds {held} and the message has {size}")]
    BytesFull {
        /// Queue name.
        queue: String,
        /// The limit.
        max: u64,
        /// Bytes held.
        held: u64,
        /// The refused message's size.
        size: u64,
    },
}

impl EnqueueError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::QueueFull
    }
}

/// Why a subscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The key already subscribes.
    #[error("consumer {0} already subscribes to queue '{1}'")]
    Duplicate(u32, String),
    /// Prefetch of 0 would never deliver.
    #[error("prefetch must be in 1..={max}; got {got}")]
    BadPrefetch {
        /// Upper bound.
        max: u32,
        /// What came.
        got: u32,
    },
}

/// What a settle did, for counters: settles naming tags the subscription does not hold (already
/// settled, or never delivered) are not errors, since a client may legitimately settle twice after
/// a reconnect; they are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SettleOutcome {
    /// Deliveries settled.
    pub settled: u64,
    /// Tags named that were not held.
    pub unknown: u64,
}

/// One FIFO queue. See the module doc for its invariants.
#[derive(Debug)]
pub struct Queue {
    /// Queue name.
    name: String,
    /// The options it was declared with.
    options: QueueOptions,
    /// The connection that owns an exclusive queue.
    exclusive_owner: Option<(ShardId, ConnId)>,
    /// How much of this queue is replicated.
    level: ReplicationLevel,
    /// Messages waiting for a consumer, oldest first (a released message goes back to the front).
    ready: VecDeque<Held>,
    /// The position `enqueue` gives the next message.
    next_position: Position,
    /// The highest position this queue ever held or assigned; `Position(0)` for none.
    highest_position: Position,
    /// Level `all`: positions removed for good since the last `take_dequeued`, in removal order.
    dequeued_log: Vec<Position>,
    /// Subscriptions in round-robin order.
    subscriptions: Vec<Subscription>,
    /// Index into `subscriptions` where the next delivery round starts.
    next_subscription: usize,
    /// Ready plus unsettled messages.
    held_count: u64,
    /// Ready plus unsettled body bytes.
    held_bytes: u64,
    /// Messages ever enqueued.
    enqueued_total: u64,
    /// Messages ever removed (acked, rejected, purged).
    dequeued_total: u64,
    /// Recent producer keys, for duplicate suppression (disabled unless `with_dedup_window`).
    dedup: DedupWindow,
    /// Ready messages at or below this position may be delivered; `UNGATED` when none waits.
    delivery_bound: Position,
}

/// One consumer's view of the queue.
#[derive(Debug)]
struct Subscription {
    /// Who consumes.
    key: SubscriberKey,
    /// Most unsettled deliveries allowed.
    prefetch: u32,
    /// Tag of `unsettled[0]`.
    base_tag: Tag,
    /// Delivered, indexed by `tag - base_tag`; `None` once settled. The front is never `None`.
    unsettled: VecDeque<Option<Held>>,
    /// `Some` entries in `unsettled`.
    unsettled_count: u32,
}

/// One held message with its position.
#[derive(Debug, Clone)]
struct Held {
    /// Its place in the queue.
    position: Position,
    /// The message and its redelivered flag.
    delivered: Delivered,
}

impl Queue {
    /// A new, empty queue of replication level `level`. `exclusive_owner` must be given for
    /// exclusive queues. Its first position is 1 (see `begin_epoch` for a primary's).
    ///
    /// # Panics
    /// If `options.exclusive` and `exclusive_owner` disagree.
    pub fn new(
        name: String,
        options: QueueOptions,
        exclusive_owner: Option<(ShardId, ConnId)>,
        level: ReplicationLevel,
    ) -> Queue {
        assert_eq!(options.exclusive, exclusive_owner.is_some());
        Queue {
            name,
            options,
            exclusive_owner,
            level,
            ready: VecDeque::new(),
            next_position: Position(1),
            highest_position: Position(0),
            dequeued_log: Vec::new(),
            subscriptions: Vec::new(),
            next_subscription: 0,
            held_count: 0,
            held_bytes: 0,
            enqueued_total: 0,
            dequeued_total: 0,
            dedup: DedupWindow::disabled(),
            delivery_bound: UNGATED,
        }
    }

    /// The queue with duplicate suppression over the last `window` sequences of each producer
    /// (at most `DEDUP_PRODUCERS_PER_QUEUE_MAX` producers); 0 leaves it off. Set at creation only:
    /// the window's keys are not carried over.
    ///
    /// # Panics
    /// If `window` is above `DEDUP_WINDOW_MAX`.
    pub fn with_dedup_window(mut self, window: u32) -> Queue {
        self.dedup = DedupWindow::new(window, DEDUP_PRODUCERS_PER_QUEUE_MAX);
        self
    }

    /// What this queue's dedup window remembers, for a backup's catch-up: per producer (least
    /// recently used first) the sequences seen within the window as ranges, at most `ranges_max`
    /// (the most recent) per producer (`DedupWindow::seen`). Empty when suppression is off.
    pub fn dedup_seen(&self, ranges_max: usize) -> Vec<(String, Vec<(u64, u64)>)> {
        self.dedup.seen(ranges_max)
    }

    /// Backup: records the keys of a `DedupSeen` record (the primary's window remembers them) in
    /// this queue's window, storing nothing (`DedupWindow::record_ranges`); ignored when
    /// suppression is off.
    pub fn record_dedup_keys(&mut self, keys: &[(String, Vec<(u64, u64)>)]) {
        for (producer, ranges) in keys {
            self.dedup.record_ranges(producer, ranges);
        }
    }

    /// What duplicate suppression did on this queue (all zero when it is off).
    pub fn dedup_counters(&self) -> DedupCounters {
        self.dedup.counters()
    }

    /// Queue name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declared options.
    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// The connection owning an exclusive queue.
    pub fn exclusive_owner(&self) -> Option<(ShardId, ConnId)> {
        self.exclusive_owner
    }

    /// How much of this queue is replicated.
    pub fn level(&self) -> ReplicationLevel {
        self.level
    }

    /// Backup: takes the level of the primary's queue of this name, from a queue-created record
    /// announcing a queue held here already (a catch-up after the primary re-created it at
    /// another level). Leaving `all` drops the dequeued log, kept only at that level; the
    /// catch-up removes the messages a `configuration` queue must not hold.
    pub fn set_level(&mut self, level: ReplicationLevel) {
        self.level = level;
        if level != ReplicationLevel::All {
            self.dequeued_log.clear();
        }
    }

    /// Messages ready for delivery.
    pub fn depth(&self) -> u64 {
        self.ready.len() as u64
    }

    /// Number of subscriptions.
    pub fn consumer_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Counts for `QueueList`.
    pub fn info(&self) -> QueueInfo {
        QueueInfo {
            name: self.name.clone(),
            depth: self.depth(),
            bytes: self.held_bytes,
            unacked: self.held_count - self.depth(),
            consumers: self.subscriptions.len() as u32,
            enqueued: self.enqueued_total,
            dequeued: self.dequeued_total,
        }
    }

    /// Appends a message at the next position, or refuses it when a limit would be exceeded, or
    /// drops it as a duplicate when the dedup window knows its key (`Enqueued::Duplicate`; checked
    /// before the limits, so a duplicate on a full queue is not refused).
    ///
    /// # Errors
    /// `EnqueueError` naming the limit, when the queue is full; the message is not stored, no
    /// position is taken and its key is not recorded.
    pub fn enqueue(&mut self, message: Message) -> Result<Enqueued, EnqueueError> {
        let full = self.check_limits(&message);
        if let Some(key) = self.dedup.key_of(&message.headers) {
            if full.is_err() {
                // Only a duplicate is let through a full queue; nothing is recorded otherwise.
                if self.dedup.check(key.producer, key.seq) == Verdict::Duplicate {
                    self.dedup.check_and_record(key.producer, key.seq);
                    return Ok(Enqueued::Duplicate);
                }
            } else if self.dedup.check_and_record(key.producer, key.seq) == Verdict::Duplicate {
                return Ok(Enqueued::Duplicate);
            }
        }
        full?;
        let position = self.next_position;
        assert!(position > self.highest_position, "position {position} reused");
        self.next_position = position.0.checked_add(1).map(Position).expect("positions exhausted");
        self.highest_position = position;
        self.store(position, message);
        Ok(Enqueued::At(position))
    }

    /// Whether `message` fits `max-count` and `max-bytes`.
    fn check_limits(&self, message: &Message) -> Result<(), EnqueueError> {
        if let Some(max) = self.options.max_count {
            if self.held_count >= max {
                return Err(EnqueueError::CountFull { queue: self.name.clone(), max, held: self.held_count });
            }
        }
        let size = message.size();
        if let Some(max) = self.options.max_bytes {
            if self.held_bytes + size > max {
                return Err(EnqueueError::BytesFull { queue: self.name.clone(), max, held: self.held_bytes, size });
            }
        }
        Ok(())
    }

    /// A primary with backup streams holding confirms: the message `enqueue` just stored at
    /// `position` may not be delivered until `open_delivery_to` reaches it (every holding backup
    /// confirmed it, or its stream ended). Messages stored before it stay within the bound.
    ///
    /// # Panics
    /// If `position` is not the last one `enqueue` assigned.
    pub fn gate_delivery(&mut self, position: Position) {
        assert_eq!(position, self.highest_position, "only the message just stored is gated");
        assert!(position.0 > 0);
        self.delivery_bound = self.delivery_bound.min(Position(position.0 - 1));
    }

    /// Messages at or below `position` may be delivered (the bound only rises): a message stored
    /// ungated (its own position), or the backups confirmed up to `position`.
    ///
    /// # Panics
    /// If `position` is above every position this queue assigned: a bound there would let later
    /// gated messages through.
    pub fn open_delivery_to(&mut self, position: Position) {
        assert!(
            position <= self.highest_position,
            "queue {}: delivery opened to {position}, above its highest position {}",
            self.name,
            self.highest_position
        );
        self.delivery_bound = self.delivery_bound.max(position);
    }

    /// Every message may be delivered, now and until the next `gate_delivery`: the broker is no
    /// longer a primary with streams (it stepped down, or it was just promoted).
    pub fn open_delivery(&mut self) {
        self.delivery_bound = UNGATED;
    }

    /// Ready messages that wait for the backups (above the delivery bound).
    pub fn gated_count(&self) -> u64 {
        (self.ready.len() - self.deliverable_len()) as u64
    }

    /// Ready messages within the delivery bound: a prefix of the ready list (module invariants).
    /// O(log n) while gated.
    fn deliverable_len(&self) -> usize {
        if self.delivery_bound == UNGATED {
            return self.ready.len();
        }
        let bound = self.delivery_bound;
        self.ready.partition_point(|held| held.position <= bound)
    }

    /// Backup: stores a message the primary enqueued at `position`, ignoring `max-count` and
    /// `max-bytes` (the primary checked them). Above every position this queue ever held or
    /// assigned it goes to the back (the usual case); below, it is inserted in position order
    /// among the ready messages (a catch-up sends a message the backup lacks in the middle, or a
    /// live enqueue overtook older catch-up positions). Returns false, storing nothing, when the
    /// queue holds `position` already (ready or unsettled: a record applied twice).
    ///
    /// The ready list stays sorted by position as long as the queue is fed only by `enqueue_at`
    /// and `dequeue_at`, as on a backup (no consumer releases messages to the front there).
    /// The message's dedup key, if any, is recorded in the window whatever it says (the primary
    /// stored the message, so it is stored here too), so that this queue, once its broker is
    /// promoted, suppresses re-sends of it.
    ///
    /// Cost: O(1) at the back; O(log n) to find the place below, plus the move of the shorter side.
    pub fn enqueue_at(&mut self, position: Position, message: Message) -> bool {
        if let Some(key) = self.dedup.key_of(&message.headers) {
            self.dedup.record(key.producer, key.seq);
        }
        if position > self.highest_position {
            self.highest_position = position;
            self.next_position = self.next_position.max(Position(position.0.saturating_add(1)));
            self.store(position, message);
            return true;
        }
        let index = match self.ready.binary_search_by_key(&position, |held| held.position) {
            Ok(_) => return false,
            Err(index) => index,
        };
        if self.unsettled().any(|held| held.position == position) {
            return false;
        }
        self.held_count += 1;
        self.held_bytes += message.size();
        self.enqueued_total += 1;
        self.ready.insert(index, Held { position, delivered: Delivered { redelivered: false, message } });
        true
    }

    /// Backup, before a catch-up by difference: puts the ready messages in position order, the
    /// order `enqueue_at` keeps. Only a broker that was a primary (consumers released messages to
    /// the front) can hold them otherwise. Linear when they are in order already.
    pub fn sort_ready_by_position(&mut self) {
        self.ready.make_contiguous().sort_by_key(|held| held.position);
    }

    /// Backup: appends every held position (ready and unsettled) to `out` as inclusive ranges,
    /// increasing, neither overlapping nor adjacent; returns how many ranges it appended. Returns
    /// `None`, appending nothing, when more than `ranges_max` would be needed.
    pub fn held_ranges(&self, ranges_max: usize, out: &mut Vec<(Position, Position)>) -> Option<usize> {
        let held: RangeSet = self.ready.iter().chain(self.unsettled()).map(|h| (h.position.0, h.position.0)).collect();
        if held.len() > ranges_max {
            return None;
        }
        out.extend(held.iter().map(|(first, last)| (Position(first), Position(last))));
        Some(held.len())
    }

    /// Forgets every dedup key (`DedupWindow::forget_all`).
    pub fn forget_dedup_keys(&mut self) {
        self.dedup.forget_all();
    }

    /// The position `enqueue` gives the next message.
    pub fn next_position(&self) -> Position {
        self.next_position
    }

    /// A primary: positions continue at `max(next, position)`. A queue re-created under the name
    /// of a deleted one continues above the deleted one's positions, so that a backup that missed
    /// the deletion never takes a new message for one it holds.
    pub fn continue_from(&mut self, position: Position) {
        self.next_position = self.next_position.max(position);
    }

    /// Counts and stores a message at the back.
    fn store(&mut self, position: Position, message: Message) {
        self.held_count += 1;
        self.held_bytes += message.size();
        self.enqueued_total += 1;
        self.ready.push_back(Held { position, delivered: Delivered { redelivered: false, message } });
    }

    /// Counts a message removed for good, and logs its position on a queue of level `all`.
    fn removed(&mut self, held: &Held) {
        self.held_count -= 1;
        self.held_bytes -= held.delivered.message.size();
        self.dequeued_total += 1;
        if self.level == ReplicationLevel::All {
            self.dequeued_log.push(held.position);
        }
    }

    /// Drops every ready message (not the unsettled ones) and returns how many. On a queue of
    /// level `all`, their positions go to the dequeued log.
    pub fn purge(&mut self) -> u64 {
        let purged = std::mem::take(&mut self.ready);
        for held in &purged {
            self.removed(held);
        }
        purged.len() as u64
    }

    /// Appends to `out` the positions removed for good (ack, reject, purge) since the last call,
    /// in removal order, and forgets them. Always empty unless the level is `all`.
    pub fn take_dequeued(&mut self, out: &mut Vec<Position>) {
        out.append(&mut self.dequeued_log);
    }

    /// Backup: removes the ready messages at positions in `ranges` (inclusive, increasing) and
    /// returns how many. Nothing is logged (a backup replicates nothing onwards). An unsettled
    /// message in a range is left with its subscription: a backup has no consumers, so this does
    /// not arise there, and a message a consumer holds is not ours to take back.
    ///
    /// Cost: the front of the queue is checked first (the usual case, the primary's consumers
    /// take from the front); a range not found there costs one pass over the ready messages.
    pub fn dequeue_at(&mut self, ranges: &[(Position, Position)]) -> u64 {
        let in_ranges = |position: Position| ranges_contain(ranges, position);
        let wanted: u64 = ranges.iter().map(|&(first, last)| (last.0 + 1).saturating_sub(first.0)).sum();
        let mut removed = 0u64;
        while let Some(held) = self.ready.front() {
            if !in_ranges(held.position) {
                break;
            }
            let held = self.ready.pop_front().expect("front present");
            self.removed_by_replica(&held);
            removed += 1;
        }
        if removed < wanted {
            let mut kept = VecDeque::with_capacity(self.ready.len());
            for held in std::mem::take(&mut self.ready) {
                if in_ranges(held.position) {
                    self.removed_by_replica(&held);
                    removed += 1;
                } else {
                    kept.push_back(held);
                }
            }
            self.ready = kept;
        }
        removed
    }

    /// Counts a message removed by the primary's order, without logging it.
    fn removed_by_replica(&mut self, held: &Held) {
        self.held_count -= 1;
        self.held_bytes -= held.delivered.message.size();
        self.dequeued_total += 1;
    }

    /// Backup: drops every ready message, before a full resync, and returns how many. Nothing is
    /// logged, and the position high-water mark falls back to the highest unsettled position (0
    /// when none), so that the resync's `enqueue_at` may reuse the primary's positions.
    pub fn clear_messages(&mut self) -> u64 {
        let cleared = std::mem::take(&mut self.ready);
        for held in &cleared {
            self.removed_by_replica(held);
        }
        self.highest_position = self.unsettled().map(|h| h.position).max().unwrap_or_default();
        cleared.len() as u64
    }

    /// A primary: positions continue at `max(next, Position(epoch << 40))`, so that a new primary
    /// never reuses a position that an older primary (of a lower epoch, which started at most at
    /// `(epoch - 1) << 40`) may have assigned and a backup may still hold. That holds while one
    /// epoch assigns fewer than 2^40 positions per queue; epochs of 2^24 and above saturate.
    pub fn begin_epoch(&mut self, epoch: Epoch) {
        let start = Position(epoch.0.saturating_mul(1 << EPOCH_POSITION_SHIFT));
        self.next_position = self.next_position.max(start);
    }

    /// Flags every ready message redelivered: done when a backup is promoted, since the old primary
    /// may have delivered any of them before it died (its consumers' acks are not replicated
    /// until they happen). The flag means "may have been delivered before"; a consumer that sees
    /// a number twice can tell a redelivery after a failover from a duplicate enqueue by it.
    pub fn mark_redelivered(&mut self) {
        for held in &mut self.ready {
            held.delivered.redelivered = true;
        }
    }

    /// Visits every held message (ready and unsettled) in position order, for a catch-up snapshot.
    pub fn for_each_held(&self, mut f: impl FnMut(Position, &Message)) {
        let mut held: Vec<&Held> = self.ready.iter().chain(self.unsettled()).collect();
        held.sort_unstable_by_key(|h| h.position);
        for h in held {
            f(h.position, &h.delivered.message);
        }
    }

    /// Every unsettled delivery of every subscription.
    fn unsettled(&self) -> impl Iterator<Item = &Held> + '_ {
        self.subscriptions.iter().flat_map(|s| s.unsettled.iter().flatten())
    }

    /// Adds a subscription.
    ///
    /// # Errors
    /// A duplicate key or a prefetch outside `1..=PREFETCH_MAX`.
    pub fn subscribe(&mut self, key: SubscriberKey, prefetch: u32) -> Result<(), SubscribeError> {
        let max = crate::limits::PREFETCH_MAX;
        if prefetch == 0 || prefetch > max {
            return Err(SubscribeError::BadPrefetch { max, got: prefetch });
        }
        if self.subscriptions.iter().any(|s| s.key == key) {
            return Err(SubscribeError::Duplicate(key.consumer.0, self.name.clone()));
        }
        self.subscriptions.push(Subscription {
            key,
            prefetch,
            base_tag: Tag(0),
            unsettled: VecDeque::new(),
            unsettled_count: 0,
        });
        Ok(())
    }

    /// Ends a subscription; its unsettled deliveries return to the head of the queue, flagged
    /// redelivered. Returns false if there was no such subscription.
    pub fn cancel(&mut self, key: SubscriberKey) -> bool {
        let Some(index) = self.subscriptions.iter().position(|s| s.key == key) else {
            return false;
        };
        let subscription = self.subscriptions.remove(index);
        if self.next_subscription > index {
            self.next_subscription -= 1;
        }
        for mut held in subscription.unsettled.into_iter().rev().flatten() {
            held.delivered.redelivered = true;
            self.ready.push_front(held);
        }
        true
    }

    /// Ends every subscription whose consumer lives on `(shard, conn)`. Returns how many.
    pub fn cancel_connection(&mut self, shard: ShardId, conn: ConnId) -> usize {
        let keys: Vec<SubscriberKey> =
            self.subscriptions.iter().filter(|s| s.key.shard == shard && s.key.conn == conn).map(|s| s.key).collect();
        for key in &keys {
            self.cancel(*key);
        }
        keys.len()
    }

    /// Every subscriber, for telling them when the queue goes away.
    pub fn subscribers(&self) -> impl Iterator<Item = SubscriberKey> + '_ {
        self.subscriptions.iter().map(|s| s.key)
    }

    /// Settles tags of one subscription. Returns `None` if the key does not subscribe.
    pub fn settle(&mut self, key: SubscriberKey, settlement: Settlement, ranges: &[TagRange]) -> Option<SettleOutcome> {
        let index = self.subscriptions.iter().position(|s| s.key == key)?;
        let mut outcome = SettleOutcome::default();
        let mut released = Vec::new();
        let subscription = &mut self.subscriptions[index];
        for range in ranges {
            let mut tag = range.first.0.max(subscription.base_tag.0);
            outcome.unknown += tag - range.first.0;
            while tag <= range.last.0 {
                let offset = tag - subscription.base_tag.0;
                match subscription.unsettled.get_mut(offset as usize).and_then(Option::take) {
                    Some(held) => {
                        outcome.settled += 1;
                        subscription.unsettled_count -= 1;
                        match settlement {
                            Settlement::Ack | Settlement::Reject => {
                                // Inline `removed`: `subscription` borrows `self.subscriptions`.
                                self.held_count -= 1;
                                self.held_bytes -= held.delivered.message.size();
                                self.dequeued_total += 1;
                                if self.level == ReplicationLevel::All {
                                    self.dequeued_log.push(held.position);
                                }
                            }
                            Settlement::Release => released.push(held),
                        }
                    }
                    None => {
                        // Past the last delivered tag, nothing more can match in this range.
                        if offset as usize >= subscription.unsettled.len() {
                            outcome.unknown += range.last.0 - tag + 1;
                            break;
                        }
                        outcome.unknown += 1;
                    }
                }
                tag += 1;
            }
        }
        while let Some(None) = subscription.unsettled.front() {
            subscription.unsettled.pop_front();
            subscription.base_tag = subscription.base_tag.next();
        }
        for mut held in released.into_iter().rev() {
            held.delivered.redelivered = true;
            self.ready.push_front(held);
        }
        Some(outcome)
    }

    /// Hands ready messages to subscriptions with credit, round robin, in batches of at most
    /// `batch_max` per subscription per round. Calls `out` once per batch.
    pub fn poll_deliveries(&mut self, batch_max: usize, mut out: impl FnMut(DeliveryBatch)) {
        let count = self.subscriptions.len();
        if count == 0 {
            return;
        }
        let mut idle_rounds = 0;
        let mut index = self.next_subscription % count;
        // Only the front within the delivery bound goes out; the rest waits for the backups.
        let mut deliverable = self.deliverable_len();
        while deliverable > 0 && idle_rounds < count {
            let subscription = &mut self.subscriptions[index];
            let credit = subscription.prefetch.saturating_sub(subscription.unsettled_count) as usize;
            let take = credit.min(batch_max).min(deliverable);
            if take == 0 {
                idle_rounds += 1;
            } else {
                idle_rounds = 0;
                let first_tag = Tag(subscription.base_tag.0 + subscription.unsettled.len() as u64);
                deliverable -= take;
                let mut messages = Vec::with_capacity(take);
                for held in self.ready.drain(..take) {
                    assert!(held.position <= self.delivery_bound, "gated message delivered");
                    messages.push(held.delivered.clone());
                    subscription.unsettled.push_back(Some(held));
                }
                subscription.unsettled_count += take as u32;
                assert!(subscription.unsettled_count <= subscription.prefetch);
                out(DeliveryBatch { subscriber: subscription.key, first_tag, messages });
            }
            index = (index + 1) % count;
        }
        self.next_subscription = index;
    }

    /// Whether the queue has ready messages within the delivery bound and a subscription with
    /// credit.
    pub fn can_deliver(&self) -> bool {
        self.ready.front().is_some_and(|held| held.position <= self.delivery_bound)
            && self.subscriptions.iter().any(|s| s.unsettled_count < s.prefetch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(body: &'static str) -> Message {
        Message { body: Bytes::from_static(body.as_bytes()), ..Message::default() }
    }

    fn key(consumer: u32) -> SubscriberKey {
        SubscriberKey { shard: ShardId(0), conn: ConnId(1), consumer: ConsumerId(consumer) }
    }

    fn range(first: u64, last: u64) -> TagRange {
        TagRange { first: Tag(first), last: Tag(last) }
    }

    fn bodies(batch: &DeliveryBatch) -> Vec<&[u8]> {
        batch.messages.iter().map(|q| &q.message.body[..]).collect()
    }

    fn drain(queue: &mut Queue) -> Vec<DeliveryBatch> {
        let mut batches = Vec::new();
        queue.poll_deliveries(64, |b| batches.push(b));
        batches
    }

    #[test]
    fn delivers_in_fifo_order_within_prefetch() {
        // Goal: FIFO order and the credit bound. Method: 5 messages, prefetch 3, ack, poll again.
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None, ReplicationLevel::None);
        for body in ["a", "b", "c", "d", "e"] {
            queue.enqueue(message(body)).unwrap();
        }
        queue.subscribe(key(1), 3).unwrap();
        // Only three fit the credit.
        let batches = drain(&mut queue);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].first_tag, Tag(0));
        assert_eq!(bodies(&batches[0]), vec![b"a", b"b", b"c"]);
        assert!(drain(&mut queue).is_empty());
        // Acking two frees two credits.
        let outcome = queue.settle(key(1), Settlement::Ack, &[range(0, 1)]).unwrap();
        assert_eq!(outcome, SettleOutcome { settled: 2, unknown: 0 });
        let batches = drain(&mut queue);
        assert_eq!(batches[0].first_tag, Tag(3));
        assert_eq!(bodies(&batches[0]), vec![b"d", b"e"]);
        assert_eq!(queue.info().dequeued, 2);
        assert_eq!(queue.info().unacked, 3);
    }

    #[test]
    fn cancel_returns_unsettled_to_head_flagged_redelivered() {
        // Goal: redelivery after a consumer goes away keeps order and flags the messages.
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None, ReplicationLevel::None);
        for body in ["a", "b", "c"] {
            queue.enqueue(message(body)).unwrap();
        }
        queue.subscribe(key(1), 2).unwrap();
        drain(&mut queue);
        assert!(queue.cancel(key(1)));
        queue.subscribe(key(2), 10).unwrap();
        let batches = drain(&mut queue);
        assert_eq!(bodies(&batches[0]), vec![b"a", b"b", b"c"]);
        let flags: Vec<bool> = batches[0].messages.iter().map(|q| q.redelivered).collect();
        assert_eq!(flags, vec![true, true, false]);
    }

    #[test]
    fn release_requeues_and_unknown_tags_are_counted() {
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None, ReplicationLevel::None);
        queue.enqueue(message("a")).unwrap();
        queue.enqueue(message("b")).unwrap();
        queue.subscribe(key(1), 1).unwrap();
        drain(&mut queue);
        // Release tag 0 and name tags never delivered.
        let outcome = queue.settle(key(1), Settlement::Release, &[range(0, 5)]).unwrap();
        assert_eq!(outcome, SettleOutcome { settled: 1, unknown: 5 });
        let batches = drain(&mut queue);
        assert_eq!(batches[0].first_tag, Tag(1));
        assert_eq!(bodies(&batches[0]), vec![b"a"]);
        assert!(batches[0].messages[0].redelivered);
        // A second ack of a settled tag is unknown, not an error.
        queue.settle(key(1), Settlement::Ack, &[range(1, 1)]).unwrap();
        let again = queue.settle(key(1), Settlement::Ack, &[range(1, 1)]).unwrap();
        assert_eq!(again, SettleOutcome { settled: 0, unknown: 1 });
        assert!(queue.settle(key(9), Settlement::Ack, &[range(0, 0)]).is_none());
    }

    #[test]
    fn full_queue_rejects_with_the_limit_named() {
        let options = QueueOptions { max_count: Some(2), max_bytes: Some(5), ..QueueOptions::default() };
        let mut queue = Queue::new("small".into(), options, None, ReplicationLevel::None);
        queue.enqueue(message("ab")).unwrap();
        let too_big = queue.enqueue(message("abcd")).unwrap_err();
        assert_eq!(too_big.to_string(), "queue 'small' is full: max-bytes is 5, it holds 2 and the message has 4");
        queue.enqueue(message("c")).unwrap();
        let too_many = queue.enqueue(message("d")).unwrap_err();
        assert_eq!(too_many.to_string(), "queue 'small' is full: max-count is 2, it holds 2");
        // Unacked messages still count; acked ones free room.
        queue.subscribe(key(1), 10).unwrap();
        drain(&mut queue);
        assert!(queue.enqueue(message("d")).is_err());
        queue.settle(key(1), Settlement::Ack, &[range(0, 0)]).unwrap();
        queue.enqueue(message("d")).unwrap();
        assert_eq!(queue.info().bytes, 2);
    }

    #[test]
    fn round_robin_between_consumers_and_purge_keeps_unacked() {
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None, ReplicationLevel::None);
        queue.subscribe(key(1), 1).unwrap();
        queue.subscribe(key(2), 1).unwrap();
        for body in ["a", "b", "c"] {
            queue.enqueue(message(body)).unwrap();
        }
        let batches = drain(&mut queue);
        let consumers: Vec<u32> = batches.iter().map(|b| b.subscriber.consumer.0).collect();
        assert_eq!(consumers, vec![1, 2]);
        assert_eq!(queue.purge(), 1);
        assert_eq!(queue.info().unacked, 2);
        assert_eq!(queue.depth(), 0);
        assert_eq!(
            queue.subscribe(key(1), 0),
            Err(SubscribeError::BadPrefetch { max: crate::limits::PREFETCH_MAX, got: 0 })
        );
    }

    fn replicated() -> Queue {
        Queue::new("r".into(), QueueOptions::default(), None, ReplicationLevel::All)
    }

    fn held(queue: &Queue) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        queue.for_each_held(|position, message| out.push((position.0, message.body.to_vec())));
        out
    }

    #[test]
    fn positions_grow_by_one_and_survive_release_and_cancel() {
        // Goal: enqueue assigns 1, 2, 3...; a refused message takes no position; released and
        // cancelled deliveries keep theirs. Method: enqueue, deliver, release, cancel, list held.
        let options = QueueOptions { max_count: Some(3), ..QueueOptions::default() };
        let mut queue = Queue::new("q".into(), options, None, ReplicationLevel::All);
        assert_eq!(queue.level(), ReplicationLevel::All);
        let positions: Vec<u64> =
            ["a", "b", "c"].map(|b| queue.enqueue(message(b)).unwrap().position().unwrap().0).to_vec();
        assert_eq!(positions, [1, 2, 3]);
        assert!(queue.enqueue(message("full")).is_err());
        queue.subscribe(key(1), 2).unwrap();
        drain(&mut queue);
        queue.settle(key(1), Settlement::Release, &[range(1, 1)]).unwrap();
        assert!(queue.cancel(key(1)));
        // Ready again: a, b (redelivered) and c, each at its first position.
        assert_eq!(held(&queue), [(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]);
        queue.purge();
        assert_eq!(queue.enqueue(message("d")).unwrap(), Enqueued::At(Position(4)));
        // Released and cancelled messages are not dequeues: only the purge logged positions.
        let mut dequeued = Vec::new();
        queue.take_dequeued(&mut dequeued);
        assert_eq!(dequeued, [Position(1), Position(2), Position(3)]);
    }

    #[test]
    fn ack_reject_and_purge_log_their_positions_only_at_level_all() {
        // Goal: the dequeued log holds exactly the removed positions, in removal order, and is
        // empty below level all. Method: same steps on an `all` and a `configuration` queue.
        for level in [ReplicationLevel::All, ReplicationLevel::Configuration] {
            let mut queue = Queue::new("q".into(), QueueOptions::default(), None, level);
            for body in ["a", "b", "c", "d", "e"] {
                queue.enqueue(message(body)).unwrap();
            }
            queue.subscribe(key(1), 3).unwrap();
            drain(&mut queue);
            queue.settle(key(1), Settlement::Ack, &[range(1, 1)]).unwrap();
            queue.settle(key(1), Settlement::Reject, &[range(0, 0)]).unwrap();
            queue.settle(key(1), Settlement::Release, &[range(2, 2)]).unwrap();
            queue.purge();
            let mut dequeued = Vec::new();
            queue.take_dequeued(&mut dequeued);
            let expected: Vec<Position> =
                if level == ReplicationLevel::All { [2, 1, 3, 4, 5].map(Position).to_vec() } else { Vec::new() };
            assert_eq!(dequeued, expected, "{level}");
            // Drained: a second take is empty.
            dequeued.clear();
            queue.take_dequeued(&mut dequeued);
            assert!(dequeued.is_empty());
            let info = queue.info();
            assert_eq!((info.enqueued, info.dequeued, info.bytes, info.depth), (5, 5, 0, 0));
        }
    }

    #[test]
    fn enqueue_at_ignores_limits_and_refuses_positions_held_already() {
        // Goal: a replica stores the primary's positions without limits, once each, in order; a
        // position below the highest that is not held is inserted in its place.
        let options = QueueOptions { max_count: Some(1), max_bytes: Some(1), ..QueueOptions::default() };
        let mut queue = Queue::new("q".into(), options, None, ReplicationLevel::All);
        assert!(queue.enqueue_at(Position(10), message("ab")));
        assert!(queue.enqueue_at(Position(12), message("cd")));
        assert!(!queue.enqueue_at(Position(12), message("again")));
        assert!(queue.enqueue_at(Position(11), message("late")));
        assert!(!queue.enqueue_at(Position(11), message("late again")));
        assert_eq!(held(&queue), [(10, b"ab".to_vec()), (11, b"late".to_vec()), (12, b"cd".to_vec())]);
        let info = queue.info();
        assert_eq!((info.depth, info.bytes, info.enqueued), (3, 8, 3));
        // A primary's enqueue after them continues above the highest.
        let mut fresh = replicated();
        fresh.enqueue_at(Position(7), message("x"));
        assert_eq!(fresh.enqueue(message("y")).unwrap(), Enqueued::At(Position(8)));
        assert!(!fresh.enqueue_at(Position(8), message("z")));
    }

    /// The ready messages' positions and bodies, in delivery order.
    fn ready_order(queue: &mut Queue) -> Vec<(u64, Vec<u8>)> {
        queue.ready.iter().map(|h| (h.position.0, h.delivered.message.body.to_vec())).collect()
    }

    #[test]
    fn enqueue_at_below_the_highest_inserts_in_position_order_and_keeps_counters() {
        // Goal: a catch-up that sends what a backup lacks in the middle, or a live enqueue that
        // overtook older catch-up positions, leaves the ready list sorted by position, so that a
        // consumer after promotion gets the primary's order; counters count each message once.
        // Method: back, front, middle and duplicate inserts; then dequeues and an unsettled one.
        let mut queue = replicated();
        for position in [5, 9] {
            assert!(queue.enqueue_at(Position(position), message("m")));
        }
        assert!(queue.enqueue_at(Position(1), message("front")));
        assert!(queue.enqueue_at(Position(7), message("middle")));
        assert!(queue.enqueue_at(Position(6), message("six")));
        assert!(!queue.enqueue_at(Position(6), message("dup")));
        assert!(queue.enqueue_at(Position(12), message("back")));
        let order: Vec<u64> = ready_order(&mut queue).into_iter().map(|(p, _)| p).collect();
        assert_eq!(order, [1, 5, 6, 7, 9, 12]);
        let info = queue.info();
        assert_eq!((info.depth, info.enqueued, info.bytes), (6, 6, 5 + 1 + 6 + 3 + 1 + 4));
        // Dequeues after inserts find them; a re-sent position already dequeued is stored again
        // (the primary still holds it: its view wins).
        assert_eq!(queue.dequeue_at(&[(Position(5), Position(7))]), 3);
        assert!(queue.enqueue_at(Position(6), message("six")));
        let order: Vec<u64> = ready_order(&mut queue).into_iter().map(|(p, _)| p).collect();
        assert_eq!(order, [1, 6, 9, 12]);
        // An unsettled message counts as held: not stored twice.
        queue.subscribe(key(1), 1).unwrap();
        drain(&mut queue);
        assert!(!queue.enqueue_at(Position(1), message("front")));
        assert_eq!(queue.info().enqueued, 7);
        // The next primary position is still above the highest.
        assert_eq!(queue.enqueue(message("n")).unwrap(), Enqueued::At(Position(13)));
    }

    #[test]
    fn a_former_primarys_ready_messages_are_sorted_before_inserts() {
        // Goal: releases by two consumers leave the ready list out of position order on a primary;
        // once sorted, inserts below the highest find their place and duplicates are refused.
        let mut queue = replicated();
        for body in ["a", "b", "c", "d", "e"] {
            queue.enqueue(message(body)).unwrap();
        }
        queue.subscribe(key(1), 2).unwrap();
        queue.subscribe(key(2), 2).unwrap();
        drain(&mut queue);
        queue.cancel(key(1));
        queue.cancel(key(2));
        let before: Vec<u64> = ready_order(&mut queue).into_iter().map(|(p, _)| p).collect();
        assert_ne!(before, [1, 2, 3, 4, 5]);
        queue.sort_ready_by_position();
        queue.dequeue_at(&[(Position(2), Position(2))]);
        assert!(!queue.enqueue_at(Position(4), message("dup")));
        assert!(queue.enqueue_at(Position(2), message("b")));
        let after: Vec<u64> = ready_order(&mut queue).into_iter().map(|(p, _)| p).collect();
        assert_eq!(after, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn held_ranges_lists_ready_and_unsettled_positions_as_ranges_within_the_bound() {
        // Goal: holdings for a reconnecting backup: merged runs, in order, bounded.
        let mut queue = replicated();
        for position in [1, 2, 3, 7, 9, 10] {
            queue.enqueue_at(Position(position), message("m"));
        }
        queue.subscribe(key(1), 2).unwrap();
        drain(&mut queue);
        let mut out = vec![(Position(100), Position(100))];
        assert_eq!(queue.held_ranges(3, &mut out), Some(3));
        let ranges: Vec<(u64, u64)> = out[1..].iter().map(|&(a, b)| (a.0, b.0)).collect();
        assert_eq!(ranges, [(1, 3), (7, 7), (9, 10)]);
        let mut out = Vec::new();
        assert_eq!(queue.held_ranges(2, &mut out), None);
        assert_eq!(replicated().held_ranges(0, &mut Vec::new()), Some(0));
    }

    #[test]
    fn continue_from_moves_positions_up_only() {
        let mut queue = replicated();
        queue.continue_from(Position(50));
        queue.continue_from(Position(20));
        assert_eq!(queue.next_position(), Position(50));
        assert_eq!(queue.enqueue(message("m")).unwrap(), Enqueued::At(Position(50)));
    }

    #[test]
    fn dequeue_at_removes_ready_messages_in_ranges_and_logs_nothing() {
        // Goal: ranges name positions inclusively, at the front or in the middle; unknown
        // positions are skipped; counters follow; nothing is logged on a replica.
        let mut queue = replicated();
        for position in 1..=8 {
            assert!(queue.enqueue_at(Position(position), message("m")));
        }
        assert_eq!(queue.dequeue_at(&[(Position(1), Position(2))]), 2);
        assert_eq!(queue.dequeue_at(&[(Position(4), Position(5)), (Position(7), Position(9))]), 4);
        assert_eq!(queue.dequeue_at(&[(Position(1), Position(1))]), 0);
        let remaining: Vec<u64> = held(&queue).into_iter().map(|(p, _)| p).collect();
        assert_eq!(remaining, [3, 6]);
        let info = queue.info();
        assert_eq!((info.depth, info.bytes, info.dequeued), (2, 2, 6));
        let mut dequeued = Vec::new();
        queue.take_dequeued(&mut dequeued);
        assert!(dequeued.is_empty());
    }

    #[test]
    fn dequeue_at_leaves_unsettled_messages_with_their_subscription() {
        // Goal: the documented rule: only ready messages are removed.
        let mut queue = replicated();
        for position in 1..=3 {
            queue.enqueue_at(Position(position), message("m"));
        }
        queue.subscribe(key(1), 1).unwrap();
        drain(&mut queue);
        assert_eq!(queue.dequeue_at(&[(Position(1), Position(3))]), 2);
        assert_eq!(queue.info().unacked, 1);
        assert_eq!(held(&queue).len(), 1);
    }

    #[test]
    fn clear_messages_drops_ready_and_lets_a_resync_reuse_positions() {
        // Goal: a full resync after clear_messages stores the primary's positions again.
        let mut queue = replicated();
        for position in 5..=7 {
            queue.enqueue_at(Position(position), message("m"));
        }
        assert_eq!(queue.clear_messages(), 3);
        assert_eq!((queue.depth(), queue.info().bytes), (0, 0));
        assert!(queue.enqueue_at(Position(6), message("m")));
        assert_eq!(held(&queue).len(), 1);
        let mut dequeued = Vec::new();
        queue.take_dequeued(&mut dequeued);
        assert!(dequeued.is_empty());
    }

    #[test]
    fn begin_epoch_moves_positions_above_every_older_epoch() {
        // Goal: a new primary of epoch e assigns from e << 40, or above what it holds if higher.
        let mut queue = replicated();
        queue.enqueue_at(Position(3), message("m"));
        queue.begin_epoch(Epoch(2));
        assert_eq!(queue.enqueue(message("m")).unwrap(), Enqueued::At(Position(2 << 40)));
        assert_eq!(queue.enqueue(message("m")).unwrap(), Enqueued::At(Position((2 << 40) + 1)));
        // An older epoch never moves positions back.
        queue.begin_epoch(Epoch(1));
        assert_eq!(queue.enqueue(message("m")).unwrap(), Enqueued::At(Position((2 << 40) + 2)));
        // Held above the epoch's start: positions continue above the highest.
        let mut ahead = replicated();
        ahead.enqueue_at(Position((3 << 40) + 5), message("m"));
        ahead.begin_epoch(Epoch(3));
        assert_eq!(ahead.enqueue(message("m")).unwrap(), Enqueued::At(Position((3 << 40) + 6)));
    }

    #[test]
    fn for_each_held_visits_ready_and_unsettled_in_position_order() {
        // Goal: a snapshot sees every held message once, by position, wherever it sits.
        let mut queue = replicated();
        for body in ["a", "b", "c", "d"] {
            queue.enqueue(message(body)).unwrap();
        }
        queue.subscribe(key(1), 2).unwrap();
        queue.subscribe(key(2), 1).unwrap();
        drain(&mut queue);
        // Consumer 2 releases c: ready is now c (redelivered) then d; a and b are unsettled.
        queue.settle(key(2), Settlement::Release, &[range(0, 0)]).unwrap();
        let bodies: Vec<(u64, Vec<u8>)> = held(&queue);
        assert_eq!(bodies, [(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec()), (4, b"d".to_vec())]);
    }

    /// The bodies of every batch, in delivery order.
    fn delivered(batches: &[DeliveryBatch]) -> Vec<Vec<u8>> {
        batches.iter().flat_map(|batch| batch.messages.iter().map(|m| m.message.body.to_vec())).collect()
    }

    #[test]
    fn gated_messages_wait_for_the_bound_and_go_out_in_order() {
        // Goal: "deliver only what the backups hold": a gated message is not delivered before the
        // bound reaches it, is after, and order is kept across gated and ungated messages.
        // Method: one ungated message, three gated ones; raise the bound step by step.
        let mut queue = replicated();
        queue.subscribe(key(1), 100).unwrap();
        let first = queue.enqueue(message("a")).unwrap().position().unwrap();
        queue.open_delivery_to(first);
        let mut gated = Vec::new();
        for body in ["b", "c", "d"] {
            let position = queue.enqueue(message(body)).unwrap().position().unwrap();
            queue.gate_delivery(position);
            gated.push(position);
        }
        // Only the ungated message goes out; the rest waits.
        assert!(queue.can_deliver());
        assert_eq!(delivered(&drain(&mut queue)), [b"a".to_vec()]);
        assert!(!queue.can_deliver());
        assert_eq!(queue.gated_count(), 3);
        assert!(drain(&mut queue).is_empty());
        // The backups hold b and c: those go, d waits.
        queue.open_delivery_to(gated[1]);
        assert_eq!(delivered(&drain(&mut queue)), [b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(queue.gated_count(), 1);
        // An older bound changes nothing (it only rises).
        queue.open_delivery_to(gated[0]);
        assert!(drain(&mut queue).is_empty());
        queue.open_delivery_to(gated[2]);
        assert_eq!(delivered(&drain(&mut queue)), [b"d".to_vec()]);
        assert_eq!(queue.gated_count(), 0);
    }

    #[test]
    fn released_messages_stay_deliverable_ahead_of_gated_ones() {
        // Goal: a delivered message released back to the front is within the bound, so it goes
        // out again ahead of the gated tail; `open_delivery` (promotion, stepping down) lets
        // everything through. Method: deliver a, gate b, release a, then open fully.
        let mut queue = replicated();
        queue.subscribe(key(1), 100).unwrap();
        let a = queue.enqueue(message("a")).unwrap().position().unwrap();
        queue.open_delivery_to(a);
        assert_eq!(delivered(&drain(&mut queue)), [b"a".to_vec()]);
        let b = queue.enqueue(message("b")).unwrap().position().unwrap();
        queue.gate_delivery(b);
        queue.settle(key(1), Settlement::Release, &[range(0, 0)]).unwrap();
        let again = drain(&mut queue);
        assert_eq!(delivered(&again), [b"a".to_vec()]);
        assert!(again[0].messages[0].redelivered);
        // c is gated too; opening the whole queue lets both through, in order.
        let c = queue.enqueue(message("c")).unwrap().position().unwrap();
        queue.gate_delivery(c);
        assert!(drain(&mut queue).is_empty());
        queue.open_delivery();
        assert_eq!(delivered(&drain(&mut queue)), [b"b".to_vec(), b"c".to_vec()]);
        // An ungated message stored after them goes at once.
        let d = queue.enqueue(message("d")).unwrap().position().unwrap();
        queue.open_delivery_to(d);
        assert_eq!(delivered(&drain(&mut queue)), [b"d".to_vec()]);
    }

    #[test]
    #[should_panic(expected = "above its highest position")]
    fn a_bound_above_every_position_is_a_bug() {
        // Goal: a bound beyond the last enqueue would let later gated messages through.
        let mut queue = replicated();
        queue.enqueue(message("a")).unwrap();
        queue.open_delivery_to(Position(2));
    }

    /// A message carrying the dedup key `producer/seq`.
    fn keyed(body: &'static str, key: &'static str) -> Message {
        let header = crate::wire::frame::Header {
            name: Bytes::from_static(crate::limits::DEDUP_HEADER),
            value: Bytes::from_static(key.as_bytes()),
        };
        Message { headers: vec![header], ..message(body) }
    }

    #[test]
    fn a_duplicate_key_is_not_stored_even_after_its_message_was_consumed() {
        // Goal: a re-send is dropped while its key is remembered, whether the first copy is ready
        // or acked; messages without the key, or with a malformed one, are always stored.
        let mut queue = replicated().with_dedup_window(100);
        assert_eq!(queue.enqueue(keyed("a", "p/1")).unwrap(), Enqueued::At(Position(1)));
        assert_eq!(queue.enqueue(keyed("a", "p/1")).unwrap(), Enqueued::Duplicate);
        assert_eq!(queue.enqueue(keyed("a", "q/1")).unwrap(), Enqueued::At(Position(2)));
        queue.subscribe(key(1), 10).unwrap();
        drain(&mut queue);
        queue.settle(key(1), Settlement::Ack, &[range(0, 1)]).unwrap();
        assert_eq!(queue.enqueue(keyed("a", "p/1")).unwrap(), Enqueued::Duplicate);
        for _ in 0..2 {
            assert!(queue.enqueue(message("plain")).unwrap().position().is_some());
            assert!(queue.enqueue(keyed("bad", "p/not-a-number")).unwrap().position().is_some());
        }
        let counters = queue.dedup_counters();
        assert_eq!((counters.duplicates, counters.malformed), (2, 2));
        assert_eq!(queue.info().enqueued, 6);
    }

    #[test]
    fn a_full_queue_lets_duplicates_through_and_does_not_record_refused_keys() {
        // Goal: a refused message's re-send is stored once there is room; a duplicate of a held
        // message is confirmed even when the queue is full.
        let options = QueueOptions { max_count: Some(1), ..QueueOptions::default() };
        let mut queue = Queue::new("q".into(), options, None, ReplicationLevel::None).with_dedup_window(8);
        queue.enqueue(keyed("a", "p/1")).unwrap();
        assert!(queue.enqueue(keyed("b", "p/2")).is_err());
        assert_eq!(queue.enqueue(keyed("a", "p/1")).unwrap(), Enqueued::Duplicate);
        queue.purge();
        assert_eq!(queue.enqueue(keyed("b", "p/2")).unwrap(), Enqueued::At(Position(2)));
    }

    #[test]
    fn enqueue_at_records_keys_so_a_promoted_replica_suppresses_re_sends() {
        // Goal: a replica stores what the primary sent whatever its window says, and remembers
        // the keys for when it is the primary.
        let mut queue = replicated().with_dedup_window(8);
        assert!(queue.enqueue_at(Position(5), keyed("a", "p/1")));
        // The primary stored the same key twice (beyond its window, say): stored twice here too.
        assert!(queue.enqueue_at(Position(6), keyed("a", "p/1")));
        assert_eq!(queue.dedup_counters().duplicates, 0);
        assert_eq!(queue.clear_messages(), 2);
        assert_eq!(queue.enqueue(keyed("a", "p/1")).unwrap(), Enqueued::Duplicate);
        assert_eq!(queue.enqueue(keyed("b", "p/2")).unwrap(), Enqueued::At(Position(7)));
    }

    #[test]
    fn without_a_window_keys_are_ignored() {
        let mut queue = replicated();
        for _ in 0..2 {
            assert!(queue.enqueue(keyed("a", "p/1")).unwrap().position().is_some());
        }
        assert_eq!(queue.dedup_counters(), DedupCounters::default());
    }
}
