//! What a primary shard tells replication about its replicated queues, and what a backup shard
//! applies: the vocabulary shared by the shard (`shard`) and the replication streams of
//! `ringmq-ha`, which encode these on the wire.
//!
//! - `Position`: a message's place in one queue, +1 per enqueue, never reused; a backup holds a
//!   replicated message at the primary's position, so dequeues name the same message everywhere.
//! - `Hold`: a publish whose confirm waits for one backup's confirm of the message.
//! - `Record`: one change to one replicated queue, exchange or binding, as a backup applies it.
//! - `ReplicationEvent`: one change a primary shard made to one replicated object, as the shard
//!   reports it (`Shard::poll_replication`, `Shard::replication_snapshot`); the replication stream
//!   turns these into `Record`s.
//! - `QueueHoldings`: what a reconnecting backup shard holds of one queue (positions as ranges),
//!   so that its catch-up carries only the difference (`CatchUpDiff` counts it). Positions
//!   identify a message cluster-wide: each queue's positions are assigned once, by one primary
//!   (a new primary continues at `epoch << 40`, a re-created queue above the deleted one's).
//!
//! Two kinds of stream carry them. Every shard reports the queues it owns (creation, deletion,
//! messages). Shard 0, the configuration coordinator, also reports the whole replicated
//! configuration in the one order the coordinator decided it: every replicated queue's creation
//! and deletion (whichever shard owns it), every replicated exchange's, every replicated binding
//! and unbinding. So shard 0's stream alone orders a binding after its queue and its exchange; a
//! queue owned by shard 0 is reported once, serving both.
//!
//! Invariants:
//! - Within one queue, positions only grow: every enqueue takes a position above every earlier one.
//! - A shard reports the events of one queue in the order it made the changes: `QueueCreated`,
//!   then enqueues and dequeues as they happened, then `QueueDeleted`. A `Barrier` follows the
//!   `Enqueued` of the message it duplicates (or that message was stored before replication began).
//! - Shard 0 reports configuration events in the coordinator's order: a `Bound` follows the
//!   `QueueCreated` of its queue and the `ExchangeCreated` of its exchange, and precedes their
//!   deletion.

use std::fmt;
use std::sync::Arc;

use crate::frame::{ExchangeKind, Message, QueueOptions};
use crate::ids::{ConnId, Seq, ShardId};
use crate::replication_level::ReplicationLevel;

/// A message's place in one queue of the primary: +1 per enqueued message, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position(pub u64);

impl Position {
    /// The next position.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A publish whose confirm waits for a backup: the producer's connection and the publish's
/// sequence number. The producer may be on another shard than the queue, so the shard is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hold {
    /// The shard holding the producer's connection (and its completion tracker).
    pub shard: ShardId,
    /// The producer's connection on that shard.
    pub conn: ConnId,
    /// The publish's sequence number on that connection.
    pub seq: Seq,
}

/// One change to one replicated queue, exchange or binding of the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A queue was created (or is announced to a backup that does not know it yet).
    QueueCreated {
        /// Queue name.
        name: String,
        /// Its options as declared.
        options: QueueOptions,
        /// Its level on the primary, `configuration` or `all`: the backup's replica takes it, so
        /// that once promoted it replicates the queue as the primary did.
        level: ReplicationLevel,
    },
    /// A queue was deleted, with every message it held.
    QueueDeleted {
        /// Queue name.
        name: String,
    },
    /// Messages enqueued at consecutive positions.
    Enqueued {
        /// Queue name.
        queue: String,
        /// The position of the first message; the rest follow, +1 each.
        first_position: Position,
        /// The messages, at least one.
        messages: Vec<Message>,
    },
    /// Messages removed from the queue, for any reason.
    Dequeued {
        /// Queue name.
        queue: String,
        /// Inclusive position ranges, increasing, neither overlapping nor adjacent; at least one.
        ranges: Vec<(Position, Position)>,
    },
    /// An exchange was created (or is announced to a backup that does not know it yet).
    ExchangeCreated {
        /// Exchange name (never a built-in one).
        name: String,
        /// Its type.
        kind: ExchangeKind,
        /// Its level on the primary, `configuration` or `all`, which the backup's exchange takes.
        level: ReplicationLevel,
    },
    /// An exchange was deleted, with its bindings.
    ExchangeDeleted {
        /// Exchange name.
        name: String,
    },
    /// A queue was bound to an exchange (or the binding is announced again).
    Bound {
        /// Exchange name.
        exchange: String,
        /// Queue name.
        queue: String,
        /// Binding key.
        key: String,
    },
    /// A binding was removed.
    Unbound {
        /// Exchange name.
        exchange: String,
        /// Queue name.
        queue: String,
        /// Binding key.
        key: String,
    },
    /// Dedup keys the primary's window of `queue` remembers (`dedup_window`) whose messages the
    /// backup never received: consumed before they were replicated (live), or the whole window
    /// (catch-up). The backup records them in its window of the queue and stores nothing, so that
    /// once promoted it suppresses re-sends of them.
    DedupSeen {
        /// Queue name.
        queue: String,
        /// The keys; see `DedupSeenKeys`.
        keys: DedupSeenKeys,
    },
}

/// Dedup keys, grouped: per producer id (a valid `x-ringmq-dedup` producer id), its sequences as
/// inclusive ranges `(first, last)`, increasing, neither overlapping nor adjacent, at least one.
/// At most `DEDUP_SEEN_RANGES_MAX` ranges in all (so at most that many producers).
pub type DedupSeenKeys = Vec<(String, Vec<(u64, u64)>)>;

/// Most sequence ranges in one `DedupSeen` record or event (all producers together). A catch-up
/// window larger than that goes as several. It keeps a record (at most 4096 producer ids of
/// `DEDUP_PRODUCER_ID_BYTES_MAX` bytes, plus the ranges) far below a replication batch.
pub const DEDUP_SEEN_RANGES_MAX: usize = 4096;

/// One change a primary shard made to one replicated object, reported in the order it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// A queue of level `configuration` or `all` was created (on its owner shard, and on shard 0
    /// for every such queue).
    QueueCreated {
        /// Queue name.
        name: Arc<str>,
        /// Its options as created.
        options: QueueOptions,
        /// Its level, `configuration` or `all`.
        level: ReplicationLevel,
    },
    /// A queue of level `configuration` or `all` was deleted, with every message it held (on its
    /// owner shard, and on shard 0 for every such queue).
    QueueDeleted {
        /// Queue name.
        name: Arc<str>,
    },
    /// Shard 0 only: an exchange of level `configuration` or `all` was created.
    ExchangeCreated {
        /// Exchange name.
        name: Arc<str>,
        /// Its type.
        kind: ExchangeKind,
        /// Its level, `configuration` or `all`.
        level: ReplicationLevel,
    },
    /// Shard 0 only: an exchange of level `configuration` or `all` was deleted, with its bindings.
    ExchangeDeleted {
        /// Exchange name.
        name: Arc<str>,
    },
    /// Shard 0 only: a binding between a replicated exchange and a replicated queue was made.
    Bound {
        /// Exchange name.
        exchange: Arc<str>,
        /// Queue name.
        queue: Arc<str>,
        /// Binding key.
        key: Arc<str>,
    },
    /// Shard 0 only: a binding between a replicated exchange and a replicated queue was removed.
    Unbound {
        /// Exchange name.
        exchange: Arc<str>,
        /// Queue name.
        queue: Arc<str>,
        /// Binding key.
        key: Arc<str>,
    },
    /// A message was stored in a queue of level `all`.
    Enqueued {
        /// Queue name.
        queue: Arc<str>,
        /// The message's position.
        position: Position,
        /// The message.
        message: Message,
        /// The publish whose confirm waits for this backup stream's confirm of the message; `None`
        /// when no stream held it (no stream then, or a catch-up snapshot). Each stream of the
        /// shard must release it once (`Shard::handle_holds_released`).
        hold: Option<Hold>,
        /// How many holds the publish took for it (`Shard::set_replica_holds` when it was stored;
        /// 0 without a hold): replication asserts that exactly that many holders receive it.
        holders: u32,
    },
    /// A message was removed for good (acked, rejected, purged) from a queue of level `all`.
    Dequeued {
        /// Queue name.
        queue: Arc<str>,
        /// The message's position.
        position: Position,
    },
    /// A publish to a queue of level `all` was found a duplicate (`dedup_window`) of a message
    /// stored earlier, while backup streams held confirms: nothing is stored or sent, but the
    /// duplicate's confirm waits until each stream's backup confirmed every record of `queue` fed
    /// to it before this event (the original among them, unless consumed), as an enqueue's would.
    /// Each stream of the shard must release `hold` once, like an `Enqueued` event's hold; never
    /// part of a snapshot, never sent to a backup.
    Barrier {
        /// Queue name (the duplicate's and the original's).
        queue: Arc<str>,
        /// The duplicate publish, whose confirm waits.
        hold: Hold,
        /// How many holds the duplicate took, as for an `Enqueued` event.
        holders: u32,
    },
    /// Catch-up only (`Shard::replication_snapshot_for`): what the queue's dedup window remembers
    /// (`Queue::dedup_seen`), so that the backup suppresses re-sends of messages consumed before
    /// it caught up. Never fed a hold; at most `DEDUP_SEEN_RANGES_MAX` ranges.
    DedupSeen {
        /// Queue name.
        queue: Arc<str>,
        /// The keys.
        keys: DedupSeenKeys,
    },
    /// Catch-up only (`Shard::replication_snapshot_for`): the backup holds messages at these
    /// positions that this primary no longer holds; the backup drops them. Never fed a hold.
    DequeuedRanges {
        /// Queue name.
        queue: Arc<str>,
        /// Inclusive position ranges, increasing, neither overlapping nor adjacent; at least one.
        ranges: Vec<(Position, Position)>,
    },
}

impl ReplicationEvent {
    /// For a live `Enqueued` or `Barrier` event: how many holds its publish took, each of which
    /// one holder (a stream, or an expected backup collecting) must release. `None` for the
    /// other events, which bring no hold.
    pub fn holders(&self) -> Option<u32> {
        match self {
            ReplicationEvent::Enqueued { holders, .. } | ReplicationEvent::Barrier { holders, .. } => Some(*holders),
            _ => None,
        }
    }
}

/// What a backup shard holds of one queue it owns, sent with its link-open so that the primary
/// sends only the difference (`Shard::replica_holdings`, `Shard::replication_snapshot_for`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueHoldings {
    /// Queue name.
    pub name: String,
    /// Held positions as inclusive ranges, increasing, neither overlapping nor adjacent.
    pub ranges: Vec<(Position, Position)>,
}

/// What a catch-up diff found, for the primary's log: messages the backup lacked (sent),
/// positions it held that the primary no longer holds (dequeued), messages it held already
/// (not sent), and queues it held that the primary does not replicate (deleted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUpDiff {
    /// Messages put in the snapshot as `Enqueued`.
    pub sent: u64,
    /// Positions the backup holds and the primary does not, sent as `DequeuedRanges`.
    pub dequeued: u64,
    /// Messages the backup holds already: not sent.
    pub held: u64,
    /// Queues the backup holds and the primary does not replicate: sent as `QueueDeleted`.
    pub queues_deleted: u64,
}
