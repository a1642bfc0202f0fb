//! Rare messages between shards' IO shells that the core never sees: a backup link handed to the
//! shard that serves it, and the nodes' controls (`NodeControl`: backups' catch-up progress
//! reported to shard 0, `members`, recovering mode's timeout).
//!
//! These travel a few times per backup connection, never per message, so one mutex-guarded queue
//! per shard is enough; the message path keeps its lock-free rings (`shard_ring`). A sender pushes
//! and then rings the receiver's doorbell; the inbox task drains the queue with its rings.
//!
//! Invariants:
//! - Controls from one sender to one receiver arrive in the order they were pushed.
//! - A handed-over socket is owned by exactly one shard at a time: the sender dropped its own
//!   handle before the push.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use ringmq_ha::link::frame::LinkOpen;
use ringmq_ha::node::output::NodeControl;

use crate::doorbell::Doorbell;

/// One control message.
pub(crate) enum Control {
    /// A backup's link for this shard, accepted by another shard: serve it here.
    AdoptLink {
        /// The connection, already past the preamble, `hello` and `link-open`.
        stream: std::net::TcpStream,
        /// Bytes read after the `link-open` frame (normally none).
        pending: BytesMut,
        /// What the backup asked for.
        open: LinkOpen,
    },
    /// A message between the shards' nodes.
    Node(NodeControl),
}

/// The control queues of every shard, by index, with their doorbells.
#[derive(Clone)]
pub(crate) struct ShardControls {
    /// One queue per shard.
    queues: Arc<[Mutex<VecDeque<Control>>]>,
    /// Every shard's doorbell (the inbox task sleeps on it).
    doorbells: Vec<Arc<Doorbell>>,
}

impl ShardControls {
    /// Queues for `doorbells.len()` shards.
    pub(crate) fn new(doorbells: Vec<Arc<Doorbell>>) -> ShardControls {
        let queues = doorbells.iter().map(|_| Mutex::new(VecDeque::new())).collect();
        ShardControls { queues, doorbells }
    }

    /// Sends `control` to shard `to` and wakes it.
    pub(crate) fn send(&self, to: u16, control: Control) {
        let index = usize::from(to);
        self.queues[index].lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(control);
        self.doorbells[index].ring();
    }

    /// Takes everything waiting for shard `id`.
    pub(crate) fn take(&self, id: u16) -> VecDeque<Control> {
        std::mem::take(&mut *self.queues[usize::from(id)].lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Whether anything waits for shard `id`.
    pub(crate) fn has_pending(&self, id: u16) -> bool {
        !self.queues[usize::from(id)].lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
    }
}
