//! The mesh of single-producer/single-consumer rings between shards: one ring for every ordered
//! pair of distinct shards, so no ring ever has two writers and no lock is taken.
//!
//! Each ring carries `ShardMessage`s, which are themselves batches (an `Enqueue` holds every
//! message one read produced for that shard), so a push is one per batch, not per message.
//!
//! A full ring hands the message back; the sender keeps it in its overflow queue toward that
//! peer and retries. The overflow is bounded by backpressure, not by dropping: once one holds
//! more than `OVERFLOW_MESSAGES_MAX` messages the shard is *backed up* (`backed_up`), and its IO
//! shell stops reading client connections (see `shard_loop::wait_until_readable`) until every
//! overflow is down to `OVERFLOW_MESSAGES_RESUME`. What still arrives meanwhile (the inbox's
//! replies, backup links, timers) is queued all the same.
//!
//! Invariants:
//! - Messages from shard A to shard B arrive in the order A sent them.
//! - Nothing is dropped: every message sent is in the ring, in the overflow, or delivered.
//! - `backed_up` turns on when an overflow passes `OVERFLOW_MESSAGES_MAX` and off only once every
//!   overflow is at most `OVERFLOW_MESSAGES_RESUME`.

use std::collections::VecDeque;
use std::sync::Arc;

use ringmq_core::ids::ShardId;
use ringmq_core::shard_message::ShardMessage;

use crate::doorbell::Doorbell;
use crate::limits::{OVERFLOW_MESSAGES_MAX, OVERFLOW_MESSAGES_RESUME, RING_CAPACITY};

/// One shard's ends of the mesh.
pub struct ShardRings {
    /// This shard.
    pub id: ShardId,
    /// Ring from every other shard to us, with the sender's id.
    pub inbound: Vec<(ShardId, rtrb::Consumer<ShardMessage>)>,
    /// Ring from us to every other shard, indexed by destination (`None` for ourselves).
    pub outbound: Vec<Option<rtrb::Producer<ShardMessage>>>,
    /// Messages that did not fit a full ring, by destination; sent before anything newer.
    overflow: Vec<VecDeque<ShardMessage>>,
    /// Every shard's doorbell, by index (ours included, for the inbox task).
    pub doorbells: Vec<Arc<Doorbell>>,
    /// Whether an overflow passed `OVERFLOW_MESSAGES_MAX` and has not drained to
    /// `OVERFLOW_MESSAGES_RESUME` since: the client readers must wait.
    backed_up: bool,
}

impl ShardRings {
    /// Builds the whole mesh for `count` shards and returns each shard's ends, in shard order.
    pub fn mesh(count: u16) -> Vec<ShardRings> {
        let n = usize::from(count);
        let doorbells: Vec<Arc<Doorbell>> = (0..n).map(|_| Arc::new(Doorbell::default())).collect();
        let mut rings: Vec<ShardRings> = (0..n)
            .map(|i| ShardRings {
                id: ShardId(i as u16),
                inbound: Vec::new(),
                outbound: (0..n).map(|_| None).collect(),
                overflow: (0..n).map(|_| VecDeque::new()).collect(),
                doorbells: doorbells.clone(),
                backed_up: false,
            })
            .collect();
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    let (producer, consumer) = rtrb::RingBuffer::new(RING_CAPACITY);
                    rings[from].outbound[to] = Some(producer);
                    rings[to].inbound.push((ShardId(from as u16), consumer));
                }
            }
        }
        rings
    }

    /// Sends `message` to shard `to` (or queues it behind earlier overflow, never dropping it).
    /// Returns whether the destination should be woken. An overflow that passes
    /// `OVERFLOW_MESSAGES_MAX` makes the shard `backed_up`.
    ///
    /// # Panics
    /// If `to` is this shard.
    pub fn send(&mut self, to: ShardId, message: ShardMessage) -> bool {
        let index = usize::from(to.0);
        let overflow = &mut self.overflow[index];
        if overflow.is_empty() {
            let producer = self.outbound[index].as_mut().expect("no ring to ourselves");
            match producer.push(message) {
                Ok(()) => return true,
                Err(rtrb::PushError::Full(message)) => overflow.push_back(message),
            }
            // Our own inbox task retries the overflow; it may be asleep on our doorbell, and the
            // readers that would otherwise retry it may be about to pause.
            self.doorbells[usize::from(self.id.0)].ring();
        } else {
            overflow.push_back(message);
        }
        if overflow.len() > OVERFLOW_MESSAGES_MAX {
            self.backed_up = true;
        }
        false
    }

    /// Moves what it can from the overflow queues into the rings; returns whether any remains.
    pub fn retry_overflow(&mut self) -> bool {
        let mut remaining = false;
        for index in 0..self.overflow.len() {
            let mut pushed = false;
            while let Some(message) = self.overflow[index].pop_front() {
                let producer = self.outbound[index].as_mut().expect("overflow only for other shards");
                match producer.push(message) {
                    Ok(()) => pushed = true,
                    Err(rtrb::PushError::Full(message)) => {
                        self.overflow[index].push_front(message);
                        remaining = true;
                        break;
                    }
                }
            }
            if pushed {
                self.doorbells[index].ring();
            }
        }
        if self.backed_up && self.overflow.iter().all(|overflow| overflow.len() <= OVERFLOW_MESSAGES_RESUME) {
            self.backed_up = false;
        }
        remaining
    }

    /// Whether the shard must stop reading its client connections: an overflow passed
    /// `OVERFLOW_MESSAGES_MAX` and not every overflow is down to `OVERFLOW_MESSAGES_RESUME` yet.
    pub fn backed_up(&self) -> bool {
        self.backed_up
    }

    /// Messages waiting in the overflow toward shard `to`, behind its full ring.
    pub fn overflow_len(&self, to: ShardId) -> usize {
        self.overflow[usize::from(to.0)].len()
    }

    /// Whether any overflow holds a message.
    pub fn has_overflow(&self) -> bool {
        self.overflow.iter().any(|overflow| !overflow.is_empty())
    }

    /// Whether any inbound ring has a message.
    pub fn has_inbound(&self) -> bool {
        self.inbound.iter().any(|(_, consumer)| !consumer.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use ringmq_core::ids::ConnId;

    use super::*;

    /// A message that says which one it was: a release of no holds on connection `n`.
    fn numbered(n: u32) -> ShardMessage {
        ShardMessage::HoldsReleased { conn: ConnId(n), seqs: Vec::new() }
    }

    /// The number `numbered` put in a message.
    fn number(message: &ShardMessage) -> u32 {
        match message {
            ShardMessage::HoldsReleased { conn, .. } => conn.0,
            other => panic!("not a numbered message: {other:?}"),
        }
    }

    #[test]
    fn a_full_ring_backs_the_shard_up_past_the_overflow_limit_and_drains_in_order_without_loss() {
        // Goal: the overflow is bounded by backpressure, not by dropping. Sending into a ring
        // nobody pops fills the ring, then the overflow; past `OVERFLOW_MESSAGES_MAX` the shard
        // is backed up, and only draining to `OVERFLOW_MESSAGES_RESUME` clears it. Every message
        // arrives, in order.
        // Method: a mesh of two shards; shard 0 sends numbered messages to shard 1, whose
        // consumer end is popped by hand.
        let mut mesh = ShardRings::mesh(2);
        let mut receiver = mesh.pop().unwrap();
        let mut sender = mesh.pop().unwrap();
        let to = ShardId(1);
        let total = RING_CAPACITY + OVERFLOW_MESSAGES_MAX + 1;

        // The ring takes `RING_CAPACITY` messages, each worth a wake-up.
        for n in 0..RING_CAPACITY {
            assert!(sender.send(to, numbered(n as u32)));
        }
        assert_eq!(sender.overflow_len(to), 0);
        // Up to the limit the overflow grows without backing up; nothing wakes the receiver.
        for n in RING_CAPACITY..total - 1 {
            assert!(!sender.send(to, numbered(n as u32)));
            assert!(!sender.backed_up(), "backed up at {n}");
        }
        assert_eq!(sender.overflow_len(to), OVERFLOW_MESSAGES_MAX);
        // One more passes the limit: the shard is backed up, and the message is still kept.
        assert!(!sender.send(to, numbered(total as u32 - 1)));
        assert!(sender.backed_up());
        assert_eq!(sender.overflow_len(to), OVERFLOW_MESSAGES_MAX + 1);
        // A retry with the ring still full moves nothing and changes nothing.
        assert!(sender.retry_overflow());
        assert!(sender.backed_up());

        let (_, consumer) = &mut receiver.inbound[0];
        let mut received = Vec::with_capacity(total);
        // The receiver pops enough that the overflow fits the ring above the resume mark: still
        // backed up (hysteresis).
        let above_resume = OVERFLOW_MESSAGES_MAX + 1 - (OVERFLOW_MESSAGES_RESUME + 1);
        for _ in 0..above_resume {
            received.push(number(&consumer.pop().unwrap()));
        }
        assert!(sender.retry_overflow());
        assert_eq!(sender.overflow_len(to), OVERFLOW_MESSAGES_RESUME + 1);
        assert!(sender.backed_up());
        // One more popped and retried: down to the resume mark, no longer backed up.
        received.push(number(&consumer.pop().unwrap()));
        assert!(sender.retry_overflow());
        assert_eq!(sender.overflow_len(to), OVERFLOW_MESSAGES_RESUME);
        assert!(!sender.backed_up());
        // Draining the rest empties the overflow; every message came, in the order sent.
        while received.len() < total {
            match consumer.pop() {
                Ok(message) => received.push(number(&message)),
                // The ring is empty: the next retry moves more of the overflow in.
                Err(_) => {
                    sender.retry_overflow();
                }
            }
        }
        assert!(!sender.retry_overflow());
        assert_eq!(sender.overflow_len(to), 0);
        assert!(consumer.pop().is_err());
        assert_eq!(received, (0..total as u32).collect::<Vec<_>>());
    }

    #[test]
    fn a_message_behind_overflow_waits_its_turn_even_when_the_ring_has_room() {
        // Goal: order is kept across the overflow: once a message waits there, a newer one never
        // overtakes it through a ring that just got room.
        // Method: fill the ring and one overflow slot, pop one, send another; the newer must be
        // queued, and arrive last.
        let mut mesh = ShardRings::mesh(2);
        let mut receiver = mesh.pop().unwrap();
        let mut sender = mesh.pop().unwrap();
        let to = ShardId(1);
        for n in 0..=RING_CAPACITY as u32 {
            sender.send(to, numbered(n));
        }
        let (_, consumer) = &mut receiver.inbound[0];
        assert_eq!(number(&consumer.pop().unwrap()), 0);
        // The ring has a free slot, yet the new message goes behind the waiting one.
        assert!(!sender.send(to, numbered(RING_CAPACITY as u32 + 1)));
        assert_eq!(sender.overflow_len(to), 2);
        assert!(sender.retry_overflow());
        let mut last = 0;
        while let Ok(message) = consumer.pop() {
            last = number(&message);
        }
        assert_eq!(last, RING_CAPACITY as u32);
        assert!(!sender.retry_overflow());
        assert_eq!(number(&consumer.pop().unwrap()), RING_CAPACITY as u32 + 1);
    }
}
