//! What a `ShardNode` asks its IO shell to do, and the messages the nodes of one broker's shards
//! send each other. The shell is the broker's IO shell (`ringmq-transport`: sockets, io_uring,
//! timers) or the simulator; both carry these out the same way (`node::shell`), and neither decides
//! anything about replication: they only carry bytes, closes, dials and timers.
//!
//! Invariants:
//! - Outputs for one connection are carried out in the order they were produced: a `Close`
//!   after the `Write`s queued before it.
//! - `Control`s from one shard to another arrive in the order they were produced, and so do
//!   `Peer` messages (a separate channel: the core's ring between the two shards).

use std::collections::VecDeque;

use bytes::BytesMut;
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{ErrorCode, Frame};
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::shard_message::ShardMessage;
use ringmq_core::wire::codec;

use crate::link::frame::{encode_link_frame, LinkFrame, LinkOpen};

/// One thing for the IO shell to do.
#[derive(Debug)]
pub enum NodeOutput {
    /// Write `bytes` on the connection, after everything written before.
    Write {
        /// The connection (a client's or a broker-to-broker link).
        conn: ConnId,
        /// Encoded frames.
        bytes: BytesMut,
    },
    /// Close the connection once the writes queued before it went out.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Close the connection now, in both directions: its peer went silent, or the broker's role
    /// changed. The shell reports the end with `handle_closed` as for any end (the node ignores it
    /// if it already forgot the connection).
    Shutdown {
        /// The connection.
        conn: ConnId,
    },
    /// Open a connection to the peer broker at `address` for this shard's backup link. The shell
    /// answers exactly once: `handle_dialed` with the new connection's id, or
    /// `handle_dial_failed` (no connection within `LINK_SILENT_INTERVALS_MAX` heartbeat
    /// intervals, refused, unreachable).
    Dial {
        /// `host:port`.
        address: String,
    },
    /// The backup link `conn` belongs to another shard of this broker: from now on its bytes go
    /// there, which serves it (`handle_link_adopted`). This node forgot it.
    HandOver {
        /// The connection.
        conn: ConnId,
        /// The shard that serves it.
        shard: u16,
        /// The backup's request, already read.
        open: LinkOpen,
        /// Bytes read after the request.
        pending: BytesMut,
    },
    /// Deliver `control` to another shard of this broker (`handle_control`).
    Control {
        /// The receiving shard.
        shard: u16,
        /// What it learns.
        control: NodeControl,
    },
    /// Ask the broker at `address` for its HA state and epoch (an admin `ha-status`); answer with
    /// `handle_probe_answer`, `None` when it did not answer within the maintenance interval.
    Probe {
        /// `host:port`.
        address: String,
    },
    /// Deliver `message` from this shard's core to shard `shard`'s (`ShardNode::handle_peer`
    /// there), after every message produced for that shard before it.
    Peer {
        /// The receiving shard.
        shard: ShardId,
        /// The core's message.
        message: ShardMessage,
    },
}

/// What one shard's node tells another shard's node of the same broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeControl {
    /// To shard 0 of a primary: a backup's link on `shard` opened; its catch-up begins. A backup
    /// that links again before its old link's end was seen has two links on one shard for a
    /// while: `conn` tells them apart, and reports about the older are ignored.
    LinkOpened {
        /// The backup's name (its address).
        backup: String,
        /// The primary shard it links to.
        shard: u16,
        /// The link's connection on that shard (on shard 0: where `marked-ready` and `members`
        /// go).
        conn: ConnId,
    },
    /// To shard 0 of a primary: a backup's link on `shard` holds everything that shard had when
    /// it opened.
    CaughtUp {
        /// The backup's name.
        backup: String,
        /// The primary shard whose backlog it holds.
        shard: u16,
        /// The link's connection on that shard.
        conn: ConnId,
    },
    /// To shard 0 of a primary: a backup's link on `shard` ended.
    LinkLost {
        /// The backup's name.
        backup: String,
        /// The primary shard whose link ended.
        shard: u16,
        /// The link's connection on that shard.
        conn: ConnId,
        /// That shard keeps the acks the link held for the backup, and holds new ones, until
        /// a new link of its catches up there or shard 0 sends `ExpectedTimedOut`.
        kept: bool,
    },
    /// To shard 0 of a primary: a backup holds the ready set of `version` (`members-held` on its
    /// shard-0 link `conn`).
    MembersHeld {
        /// The backup's name.
        backup: String,
        /// Its shard-0 link.
        conn: ConnId,
        /// The ready set's version.
        version: u64,
    },
    /// To shard 0: a backup linked with a newer epoch than ours; another primary exists.
    Superseded {
        /// The newer epoch.
        epoch: Epoch,
    },
    /// From a backup's shard 0 to its other shards: the primary's ready backups (`members`).
    Members {
        /// Their addresses.
        ready: Vec<String>,
    },
    /// From shard 0 of a primary to every shard, with `ha-min-ready-backups` above 0: the ready
    /// backups, after each change to the set (`PrimaryReplication::set_ready_backups`).
    ReadyBackups {
        /// Their addresses.
        ready: Vec<String>,
    },
    /// From shard 0 of a primary: stop holding acks for these expected backups
    /// (`ha-backup-timeout` passed, or they cannot be ready on this primary's account).
    ExpectedTimedOut {
        /// Their addresses.
        backups: Vec<String>,
    },
}

/// The outputs a node has produced and the shell has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    queue: VecDeque<NodeOutput>,
}

impl Outputs {
    /// Queues `output`.
    pub(crate) fn push(&mut self, output: NodeOutput) {
        self.queue.push_back(output);
    }

    /// The oldest output.
    pub(crate) fn pop(&mut self) -> Option<NodeOutput> {
        self.queue.pop_front()
    }

    /// Queues `bytes` for `conn`, unless empty.
    pub(crate) fn write(&mut self, conn: ConnId, bytes: BytesMut) {
        if !bytes.is_empty() {
            self.push(NodeOutput::Write { conn, bytes });
        }
    }

    /// Queues one native frame for `conn`.
    pub(crate) fn write_frame(&mut self, conn: ConnId, frame: &Frame) {
        let mut bytes = BytesMut::new();
        codec::encode(frame, &mut bytes);
        self.write(conn, bytes);
    }

    /// Queues one link frame for `conn`.
    pub(crate) fn write_link_frame(&mut self, conn: ConnId, frame: &LinkFrame) {
        let mut bytes = BytesMut::new();
        encode_link_frame(frame, &mut bytes);
        self.write(conn, bytes);
    }

    /// Writes an `error` frame on `conn` and closes it.
    pub(crate) fn refuse(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.write_frame(conn, &Frame::Error { code, message });
        self.push(NodeOutput::Close { conn });
    }
}
