//! One FIFO queue: its ready messages, its limits, its subscriptions and their unsettled
//! deliveries.
//!
//! A queue lives on exactly one shard (its owner) and is touched only by that shard's thread.
//! Subscribers may sit on any shard; they are named by a `SubscriberKey`, and deliveries come out
//! of `poll_deliveries` addressed to that key for the shard to route.
//!
//! Not here: routing (see `routing_table`), confirms (see `completion_tracker`), sockets.
//!
//! Invariants:
//! - `held_count` = ready messages + unsettled deliveries, and `held_bytes` the same in body
//!   bytes; both stay within `max-count` / `max-bytes` (checked at enqueue, the only way in).
//! - A subscription never holds more than `prefetch` unsettled deliveries.
//! - Tags of a subscription are consecutive from 0; a message released or returned by a cancel
//!   goes back to the head of the queue, flagged redelivered, in its original order.

use std::collections::VecDeque;

use crate::frame::{Delivered, ErrorCode, Message, QueueInfo, QueueOptions, Settlement, TagRange};
use crate::ids::{ConnId, ConsumerId, ShardId, Tag};

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
    /// Messages waiting for a consumer, oldest first.
    ready: VecDeque<Delivered>,
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
    unsettled: VecDeque<Option<Delivered>>,
    /// `Some` entries in `unsettled`.
    unsettled_count: u32,
}

impl Queue {
    /// A new, empty queue. `exclusive_owner` must be given for exclusive queues.
    ///
    /// # Panics
    /// If `options.exclusive` and `exclusive_owner` disagree.
    pub fn new(name: String, options: QueueOptions, exclusive_owner: Option<(ShardId, ConnId)>) -> Queue {
        assert_eq!(options.exclusive, exclusive_owner.is_some());
        Queue {
            name,
            options,
            exclusive_owner,
            ready: VecDeque::new(),
            subscriptions: Vec::new(),
            next_subscription: 0,
            held_count: 0,
            held_bytes: 0,
            enqueued_total: 0,
            dequeued_total: 0,
        }
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

    /// Appends a message, or refuses it when a limit would be exceeded.
    ///
    /// # Errors
    /// `EnqueueError` naming the limit, when the queue is full; the message is not stored.
    pub fn enqueue(&mut self, message: Message) -> Result<(), EnqueueError> {
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
        self.held_count += 1;
        self.held_bytes += size;
        self.enqueued_total += 1;
        self.ready.push_back(Delivered { redelivered: false, message });
        Ok(())
    }

    /// Drops every ready message (not the unsettled ones) and returns how many.
    pub fn purge(&mut self) -> u64 {
        let purged = self.ready.len() as u64;
        for queued in self.ready.drain(..) {
            self.held_bytes -= queued.message.size();
        }
        self.held_count -= purged;
        self.dequeued_total += purged;
        purged
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
        for queued in subscription.unsettled.into_iter().rev().flatten() {
            self.ready.push_front(Delivered { redelivered: true, message: queued.message });
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
                    Some(queued) => {
                        outcome.settled += 1;
                        subscription.unsettled_count -= 1;
                        match settlement {
                            Settlement::Ack | Settlement::Reject => {
                                self.held_count -= 1;
                                self.held_bytes -= queued.message.size();
                                self.dequeued_total += 1;
                            }
                            Settlement::Release => released.push(queued.message),
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
        for message in released.into_iter().rev() {
            self.ready.push_front(Delivered { redelivered: true, message });
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
        while !self.ready.is_empty() && idle_rounds < count {
            let subscription = &mut self.subscriptions[index];
            let credit = subscription.prefetch.saturating_sub(subscription.unsettled_count) as usize;
            let take = credit.min(batch_max).min(self.ready.len());
            if take == 0 {
                idle_rounds += 1;
            } else {
                idle_rounds = 0;
                let first_tag = Tag(subscription.base_tag.0 + subscription.unsettled.len() as u64);
                let mut messages = Vec::with_capacity(take);
                for queued in self.ready.drain(..take) {
                    subscription.unsettled.push_back(Some(queued.clone()));
                    messages.push(queued);
                }
                subscription.unsettled_count += take as u32;
                assert!(subscription.unsettled_count <= subscription.prefetch);
                out(DeliveryBatch { subscriber: subscription.key, first_tag, messages });
            }
            index = (index + 1) % count;
        }
        self.next_subscription = index;
    }

    /// Whether the queue has ready messages and a subscription with credit.
    pub fn can_deliver(&self) -> bool {
        !self.ready.is_empty() && self.subscriptions.iter().any(|s| s.unsettled_count < s.prefetch)
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
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None);
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
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None);
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
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None);
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
        let mut queue = Queue::new("small".into(), options, None);
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
        let mut queue = Queue::new("q".into(), QueueOptions::default(), None);
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
}
