//! The mesh of single-producer/single-consumer rings between shards: one ring for every ordered
//! pair of distinct shards, so no ring ever has two writers and no lock is taken.
//!
//! Each ring carries `ShardMessage`s, which are themselves batches (an `Enqueue` holds every
//! message one read produced for that shard), so a push is one per batch, not per message.
//!
//! Invariants:
//! - Messages from shard A to shard B arrive in the order A sent them.
//! - A full ring hands the message back (`Err`); the sender keeps it in its overflow queue and
//!   retries, so nothing is dropped and the sender's own work slows down instead.

use std::collections::VecDeque;
use std::sync::Arc;

use ringmq_core::ids::ShardId;
use ringmq_core::shard_message::ShardMessage;

use crate::doorbell::Doorbell;
use crate::limits::RING_CAPACITY;

/// One shard's ends of the mesh.
pub struct ShardRings {
    /// This shard.
    pub id: ShardId,
    /// Ring from every other shard to us, with the sender's id.
    pub inbound: Vec<(ShardId, rtrb::Consumer<ShardMessage>)>,
    /// Ring from us to every other shard, indexed by destination (`None` for ourselves).
    pub outbound: Vec<Option<rtrb::Producer<ShardMessage>>>,
    /// Messages that did not fit a full ring, by destination; sent before anything newer.
    pub overflow: Vec<VecDeque<ShardMessage>>,
    /// Every shard's doorbell, by index (ours included, for the inbox task).
    pub doorbells: Vec<Arc<Doorbell>>,
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

    /// Sends `message` to shard `to` (or queues it behind earlier overflow). Returns whether the
    /// destination should be woken.
    pub fn send(&mut self, to: ShardId, message: ShardMessage) -> bool {
        let index = usize::from(to.0);
        let overflow = &mut self.overflow[index];
        if !overflow.is_empty() {
            overflow.push_back(message);
            return false;
        }
        let producer = self.outbound[index].as_mut().expect("no ring to ourselves");
        match producer.push(message) {
            Ok(()) => true,
            Err(rtrb::PushError::Full(message)) => {
                overflow.push_back(message);
                false
            }
        }
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
        remaining
    }

    /// Whether any inbound ring has a message.
    pub fn has_inbound(&self) -> bool {
        self.inbound.iter().any(|(_, consumer)| !consumer.is_empty())
    }
}
