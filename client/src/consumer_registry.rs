//! The subscriptions of one connection, by id: where the reader task sends each `Deliver` frame,
//! and what a reconnect must subscribe again.
//!
//! Owns one `ConsumerSlot` per active subscription: the channel to its `Consumer`, the broker tag
//! the next `Deliver` frame must start at, and the queue and prefetch to subscribe with again.
//! Pure accounting plus channel sends, no IO and no lock: `Shared` keeps it behind a mutex, and it
//! imports nothing of `Shared`.
//!
//! Invariants:
//! - A subscription id is registered at most once; a slot leaves the registry when the
//!   subscription ends (cancelled here or by the broker, refused after a reconnect, or the
//!   connection closed), and never comes back.
//! - `Deliver` frames for a subscription start at consecutive broker tags: each frame's first tag
//!   is the slot's `next_tag`, which starts at 0 and again at 0 on each new socket session
//!   (`restart`). A frame that breaks this is refused (`DeliverTagError`) and nothing is sent.
//! - A consumer that dropped its receiver is never an error: the event is discarded.

use std::collections::HashMap;

use ringmq_core::frame::Delivered;
use ringmq_core::ids::{ConsumerId, Tag};
use tokio::sync::mpsc;

use crate::error::ClientError;

/// Active subscriptions by id.
#[derive(Debug, Default)]
pub(crate) struct ConsumerRegistry {
    /// One slot per active subscription.
    slots: HashMap<ConsumerId, ConsumerSlot>,
}

/// The reader task's side of a subscription.
#[derive(Debug)]
pub(crate) struct ConsumerSlot {
    /// Where events go.
    events: mpsc::UnboundedSender<ConsumerEvent>,
    /// The broker tag the next `Deliver` frame must start at (0 again on each socket session).
    next_tag: Tag,
    /// The queue, to subscribe again after a reconnect.
    queue: String,
    /// The prefetch, to subscribe again after a reconnect.
    prefetch: u32,
}

/// What the reader task tells a subscription.
#[derive(Debug)]
pub(crate) enum ConsumerEvent {
    /// One `Deliver` frame.
    Deliveries {
        /// Tag of the first message.
        first_tag: Tag,
        /// The messages.
        messages: Vec<Delivered>,
    },
    /// The broker ended the subscription.
    Cancelled {
        /// The broker's reason.
        reason: String,
    },
    /// The connection ended.
    Closed(ClientError),
    /// The connection was re-established and the subscription made again on socket session
    /// `session`; its broker tags start at 0 again.
    Resubscribed {
        /// The new session.
        session: u64,
    },
}

/// A subscription to ask the broker for again, on a new socket session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// Its id.
    pub(crate) consumer: ConsumerId,
    /// The queue consumed from.
    pub(crate) queue: String,
    /// The prefetch asked for.
    pub(crate) prefetch: u32,
}

/// What `handle_deliver` did with a `Deliver` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliverOutcome {
    /// Sent to its consumer.
    Delivered,
    /// No such subscription: it was cancelled here, and the broker returns these messages to the
    /// queue when it processes the cancel.
    AfterCancel {
        /// Messages in the frame.
        count: usize,
    },
    /// The consumer was dropped between its cancel and the removal of its slot; the slot is
    /// removed now, and its cancel returns these messages to the queue.
    ConsumerGone,
}

/// A `Deliver` frame that does not start at the subscription's next broker tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deliver to consumer {} must start at tag {}; got {}", consumer.0, expected.0, got.0)]
pub(crate) struct DeliverTagError {
    /// The subscription.
    pub(crate) consumer: ConsumerId,
    /// The tag the frame had to start at.
    pub(crate) expected: Tag,
    /// The tag it started at.
    pub(crate) got: Tag,
}

impl ConsumerRegistry {
    /// Registers subscription `consumer`.
    ///
    /// # Panics
    /// If the id is registered already: ids come from a counter and are never reused.
    pub(crate) fn insert(&mut self, consumer: ConsumerId, slot: ConsumerSlot) {
        let previous = self.slots.insert(consumer, slot);
        assert!(previous.is_none(), "consumer id {} reused", consumer.0);
    }

    /// Removes subscription `consumer`; its slot, if it was registered.
    pub(crate) fn remove(&mut self, consumer: ConsumerId) -> Option<ConsumerSlot> {
        self.slots.remove(&consumer)
    }

    /// Hands one `Deliver` frame to its subscription.
    ///
    /// # Errors
    /// `DeliverTagError` when `first_tag` is not the subscription's next broker tag (a protocol
    /// violation by the broker); nothing is sent then.
    pub(crate) fn handle_deliver(
        &mut self,
        consumer: ConsumerId,
        first_tag: Tag,
        messages: Vec<Delivered>,
    ) -> Result<DeliverOutcome, DeliverTagError> {
        let Some(slot) = self.slots.get_mut(&consumer) else {
            return Ok(DeliverOutcome::AfterCancel { count: messages.len() });
        };
        if first_tag != slot.next_tag {
            return Err(DeliverTagError { consumer, expected: slot.next_tag, got: first_tag });
        }
        slot.next_tag.0 += messages.len() as u64;
        if slot.events.send(ConsumerEvent::Deliveries { first_tag, messages }).is_err() {
            self.slots.remove(&consumer);
            return Ok(DeliverOutcome::ConsumerGone);
        }
        Ok(DeliverOutcome::Delivered)
    }

    /// A new socket session begins: every subscription's broker tags start at 0 again. Returns
    /// what to subscribe again.
    pub(crate) fn restart(&mut self) -> Vec<Subscription> {
        self.slots
            .iter_mut()
            .map(|(id, slot)| {
                slot.next_tag = Tag(0);
                Subscription { consumer: *id, queue: slot.queue.clone(), prefetch: slot.prefetch }
            })
            .collect()
    }

    /// Tells every subscription it was made again on socket session `session`.
    pub(crate) fn tell_resubscribed(&self, session: u64) {
        for slot in self.slots.values() {
            slot.tell(ConsumerEvent::Resubscribed { session });
        }
    }

    /// Removes every subscription (the connection ends); the caller tells each one why.
    pub(crate) fn take_all(&mut self) -> Vec<ConsumerSlot> {
        self.slots.drain().map(|(_, slot)| slot).collect()
    }
}

impl ConsumerSlot {
    /// The slot of a new subscription to `queue` with `prefetch`, whose events go to `events`.
    pub(crate) fn new(events: mpsc::UnboundedSender<ConsumerEvent>, queue: String, prefetch: u32) -> ConsumerSlot {
        ConsumerSlot { events, next_tag: Tag(0), queue, prefetch }
    }

    /// The subscription as it must be asked for.
    pub(crate) fn subscription(&self, consumer: ConsumerId) -> Subscription {
        Subscription { consumer, queue: self.queue.clone(), prefetch: self.prefetch }
    }

    /// Sends `event` to the consumer.
    pub(crate) fn tell(&self, event: ConsumerEvent) {
        // A consumer that was dropped has nobody to tell.
        let _ = self.events.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::frame::Message;

    fn delivered(count: usize) -> Vec<Delivered> {
        (0..count).map(|_| Delivered { redelivered: false, message: Message::default() }).collect()
    }

    fn registered(registry: &mut ConsumerRegistry, id: u32) -> mpsc::UnboundedReceiver<ConsumerEvent> {
        let (events, receiver) = mpsc::unbounded_channel();
        registry.insert(ConsumerId(id), ConsumerSlot::new(events, format!("q{id}"), 10));
        receiver
    }

    #[test]
    fn deliver_frames_must_follow_each_other_by_tag() {
        // Goal: consecutive frames are passed on; a gap or an overlap is refused, not delivered.
        let mut registry = ConsumerRegistry::default();
        let mut receiver = registered(&mut registry, 1);
        assert_eq!(registry.handle_deliver(ConsumerId(1), Tag(0), delivered(3)), Ok(DeliverOutcome::Delivered));
        assert_eq!(registry.handle_deliver(ConsumerId(1), Tag(3), delivered(2)), Ok(DeliverOutcome::Delivered));
        // A frame that skips tag 5 names what was expected and what came.
        let err = registry.handle_deliver(ConsumerId(1), Tag(6), delivered(1)).unwrap_err();
        assert_eq!(err.to_string(), "deliver to consumer 1 must start at tag 5; got 6");
        let mut firsts = Vec::new();
        while let Ok(ConsumerEvent::Deliveries { first_tag, .. }) = receiver.try_recv() {
            firsts.push(first_tag);
        }
        assert_eq!(firsts, vec![Tag(0), Tag(3)]);
    }

    #[test]
    fn deliveries_after_a_cancel_or_a_drop_are_named() {
        // Goal: a frame nobody can take is reported with its reason, and a gone consumer's slot
        // leaves.
        let mut registry = ConsumerRegistry::default();
        assert_eq!(
            registry.handle_deliver(ConsumerId(9), Tag(0), delivered(4)),
            Ok(DeliverOutcome::AfterCancel { count: 4 })
        );
        drop(registered(&mut registry, 2));
        assert_eq!(registry.handle_deliver(ConsumerId(2), Tag(0), delivered(1)), Ok(DeliverOutcome::ConsumerGone));
        assert!(registry.remove(ConsumerId(2)).is_none());
    }

    #[test]
    fn a_restart_begins_every_subscription_at_tag_zero() {
        // Goal: after a reconnect the new broker's tag 0 is accepted, and every subscription is
        // listed to be made again.
        let mut registry = ConsumerRegistry::default();
        let _first = registered(&mut registry, 1);
        let _second = registered(&mut registry, 2);
        registry.handle_deliver(ConsumerId(1), Tag(0), delivered(5)).unwrap();
        let mut again = registry.restart();
        again.sort_by_key(|subscription| subscription.consumer);
        assert_eq!(
            again,
            vec![
                Subscription { consumer: ConsumerId(1), queue: "q1".into(), prefetch: 10 },
                Subscription { consumer: ConsumerId(2), queue: "q2".into(), prefetch: 10 },
            ]
        );
        assert_eq!(registry.handle_deliver(ConsumerId(1), Tag(0), delivered(1)), Ok(DeliverOutcome::Delivered));
    }
}
