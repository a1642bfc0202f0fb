//! Rare messages between shards' IO shells that the core never sees: a backup link handed to the
//! shard that serves it, and the progress of backups' catch-up reported to shard 0.
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
use ringmq_ha::link_frame::LinkOpen;

use crate::doorbell::Doorbell;

/// One control message.
pub(crate) enum Control {
    /// A backup's link for this shard, accepted by another shard: serve it here.
    AdoptLink {
        /// The connection, already past the preamble and `hello`.
        stream: std::net::TcpStream,
        /// Bytes read after the `link-open` frame (normally none).
        pending: BytesMut,
        /// What the backup asked for.
        open: LinkOpen,
    },
    /// To shard 0: a backup's link on `shard` opened; its catch-up begins.
    LinkOpened {
        /// The backup's name (its address).
        backup: String,
        /// The primary shard it links to.
        shard: u16,
        /// For a shard-0 link, its connection on shard 0 (where `marked-ready` and `members` go).
        conn: Option<ringmq_core::ids::ConnId>,
    },
    /// From a backup's shard 0 to its other shards: the primary's ready backups (`members`).
    Members {
        /// Their addresses.
        ready: Vec<String>,
    },
    /// From shard 0 of a recovering primary: `ha-backup-timeout` passed for these expected
    /// backups; stop holding confirms for them.
    ExpectedTimedOut {
        /// Their addresses.
        backups: Vec<String>,
    },
    /// To shard 0: a backup's link on `shard` holds everything that shard had when it opened.
    CaughtUp {
        /// The backup's name (its address).
        backup: String,
        /// The primary shard whose backlog it holds.
        shard: u16,
    },
    /// To shard 0: a backup linked with a newer epoch than ours: another primary exists.
    Superseded {
        /// The newer epoch.
        epoch: ringmq_core::epoch::Epoch,
    },
    /// To shard 0: a backup's link on `shard` ended.
    LinkLost {
        /// The backup's name.
        backup: String,
        /// The primary shard whose link ended.
        shard: u16,
    },
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

    /// Shards in the broker.
    pub(crate) fn len(&self) -> u16 {
        self.queues.len() as u16
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
