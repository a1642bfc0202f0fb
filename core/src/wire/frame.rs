//! The frames of the native protocol, as Rust values.
//!
//! This module owns the *meaning* of each frame; `codec` owns their bytes. The layout on the
//! wire, the handshake and the error codes are specified in `PROTOCOL.md` at the repository root.
//!
//! Batches are the normal case: a `Publish` carries many messages with consecutive sequence
//! numbers, a `Confirm` carries ranges of sequence numbers, a `Deliver` carries many messages with
//! consecutive delivery tags, and a `Settle` carries ranges of tags.
//!
//! Invariants:
//! - Message fields are `Bytes` slices of the frame they arrived in: decoding a publish copies no
//!   body.
//! - Sequence numbers are per producer connection and delivery tags are per subscription; both
//!   start at 0 and only grow.

use bytes::Bytes;

use crate::ids::{ConsumerId, RequestId, Seq, Tag};

/// The first bytes a client sends, before any frame: `RNMQ`, then the version and flags.
pub const PREAMBLE_MAGIC: [u8; 4] = *b"RNMQ";
/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The length of the preamble in bytes: magic, `u16` version, `u16` flags.
pub const PREAMBLE_LEN: usize = 8;

/// What a client announces in its preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// The protocol version the client speaks.
    pub version: u16,
    /// Bit flags, see `PREAMBLE_FLAG_*`.
    pub flags: u16,
}

/// Preamble flag: an administrative connection (`--ha-admin`), served even on a backup.
pub const PREAMBLE_FLAG_ADMIN: u16 = 1;
/// Preamble flag: a backup broker's link to the primary, served only by a primary (recovering or
/// active); anything else answers `Error` `NotPrimary` and closes it.
pub const PREAMBLE_FLAG_BACKUP: u16 = 2;
/// The replication link's version, which a backup link's preamble (`PREAMBLE_FLAG_BACKUP`)
/// carries instead of `PROTOCOL_VERSION`: the replication records change apart from the client
/// protocol, and brokers of two releases must refuse each other's links rather than misread
/// records. 2: queue-created and exchange-created records carry the object's replication level
/// (version 1 had none, and a backup's replicas took level `all`). 3: `members` carries the ready
/// set's version, which the backup acknowledges with `members-held`.
pub const LINK_VERSION: u16 = 3;

/// The version a connection opened with preamble `flags` must announce, and the broker's `hello`
/// answers with: `LINK_VERSION` for a backup link, `PROTOCOL_VERSION` for any other.
pub fn preamble_version(flags: u16) -> u16 {
    if flags & PREAMBLE_FLAG_BACKUP != 0 {
        LINK_VERSION
    } else {
        PROTOCOL_VERSION
    }
}

/// One message as published and as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The key exchanges route by.
    pub routing_key: Bytes,
    /// The producer's identifier for the message; opaque to the broker.
    pub message_id: Bytes,
    /// Application headers, in the order the producer gave them.
    pub headers: Vec<Header>,
    /// The payload.
    pub body: Bytes,
}

impl Message {
    /// The bytes this message counts against a queue's `max-bytes`: its body.
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }
}

/// One application header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub name: Bytes,
    /// Header value.
    pub value: Bytes,
}

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes to queues bound with a key equal to the message's routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by pattern: words separated by `.`, `*` matches one word, `#` zero or more.
    Topic,
}

/// What a settlement does with the deliveries it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: the queue forgets the messages.
    Ack,
    /// Refused: the queue drops the messages (counted as rejected).
    Reject,
    /// Given back: the messages return to the queue, marked redelivered.
    Release,
}

/// An inclusive range of delivery tags of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagRange {
    /// The first tag in the range.
    pub first: Tag,
    /// The last tag in the range (inclusive).
    pub last: Tag,
}

/// How a range of publishes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// On every queue it routed to.
    Stored,
    /// Routed to no queue; nothing was stored.
    Unroutable,
    /// Refused (a full queue, an unknown exchange); nothing was stored on the refusing queue.
    Rejected {
        /// Why, as an error code.
        code: ErrorCode,
        /// Why, in words: names the limit and the value.
        reason: String,
    },
}

/// An inclusive range of publish sequence numbers that ended the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRange {
    /// The first sequence number in the range.
    pub first: Seq,
    /// The last sequence number in the range (inclusive).
    pub last: Seq,
    /// How they ended.
    pub outcome: ConfirmOutcome,
}

/// One message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// True when the message was delivered before and not acked.
    pub redelivered: bool,
    /// The message.
    pub message: Message,
}

/// Options of a queue declare.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueOptions {
    /// Only the declaring connection may consume; deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// Only check that the queue exists; never create it.
    pub passive: bool,
    /// `max-count`: the most messages the queue holds (ready plus unacked); `None` is unbounded.
    pub max_count: Option<u64>,
    /// `max-bytes`: the most body bytes the queue holds; `None` is unbounded.
    pub max_bytes: Option<u64>,
}

/// A queue as `QueueList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Messages ready for delivery.
    pub depth: u64,
    /// Body bytes held (ready plus unacked).
    pub bytes: u64,
    /// Messages delivered and not yet settled.
    pub unacked: u64,
    /// Subscriptions.
    pub consumers: u32,
    /// Messages ever enqueued.
    pub enqueued: u64,
    /// Messages ever removed (acked, rejected, purged).
    pub dequeued: u64,
}

/// An exchange as `ExchangeList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeInfo {
    /// Exchange name; the default exchange is the empty string.
    pub name: String,
    /// Its type.
    pub kind: ExchangeKind,
    /// How many bindings it has.
    pub bindings: u32,
}

/// A binding between an exchange and a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Exchange name.
    pub exchange: String,
    /// Queue name.
    pub queue: String,
    /// Binding key (a pattern for topic exchanges, ignored by fanout).
    pub key: String,
}

/// Error codes carried by `Failed`, `Error` and rejected confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The bytes are not a valid frame.
    Malformed,
    /// A frame, batch or window exceeded a limit.
    LimitExceeded,
    /// The client speaks a version this broker does not.
    UnsupportedVersion,
    /// A frame that may not be sent in this direction or state.
    UnexpectedFrame,
    /// The named queue, exchange, binding or consumer does not exist.
    NotFound,
    /// A redeclare with different options, or a name already in use.
    PreconditionFailed,
    /// A queue is full (`max-count` or `max-bytes`).
    QueueFull,
    /// An argument has a value that is not allowed.
    InvalidArgument,
    /// An exclusive queue belongs to another connection.
    ResourceLocked,
    /// This broker does not serve clients (it is an HA backup).
    NotPrimary,
    /// The broker failed; the connection should be retried.
    Internal,
    /// The primary had fewer ready backups than `ha-min-ready-backups` for
    /// `ha-min-ready-timeout`: the message was not confirmed (it may be stored on the primary
    /// alone).
    NotEnoughBackups,
}

/// Every frame of the native protocol, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    // ----- client to broker -----
    /// Create a queue, or check that an equal one exists.
    QueueDeclare {
        /// Correlates the reply.
        request: RequestId,
        /// Queue name.
        name: String,
        /// Declare options.
        options: QueueOptions,
        /// Further arguments (`qpid.replicate` and friends), as text.
        arguments: Vec<(String, String)>,
    },
    /// Delete a queue; its consumers are cancelled.
    QueueDelete {
        /// Correlates the reply.
        request: RequestId,
        /// Queue name.
        name: String,
    },
    /// Drop every ready message of a queue.
    QueuePurge {
        /// Correlates the reply.
        request: RequestId,
        /// Queue name.
        name: String,
    },
    /// Ask for every queue with its counts.
    QueueList {
        /// Correlates the reply.
        request: RequestId,
    },
    /// Create an exchange, or check that an equal one exists.
    ExchangeDeclare {
        /// Correlates the reply.
        request: RequestId,
        /// Exchange name.
        name: String,
        /// Its type.
        kind: ExchangeKind,
        /// Only check that it exists.
        passive: bool,
        /// Further arguments, as text.
        arguments: Vec<(String, String)>,
    },
    /// Delete an exchange and its bindings.
    ExchangeDelete {
        /// Correlates the reply.
        request: RequestId,
        /// Exchange name.
        name: String,
    },
    /// Ask for every exchange.
    ExchangeList {
        /// Correlates the reply.
        request: RequestId,
    },
    /// Add a binding (idempotent).
    Bind {
        /// Correlates the reply.
        request: RequestId,
        /// The binding.
        binding: Binding,
    },
    /// Remove a binding.
    Unbind {
        /// Correlates the reply.
        request: RequestId,
        /// The binding.
        binding: Binding,
    },
    /// Publish a batch of messages to one exchange.
    Publish {
        /// Exchange name; empty for the default exchange.
        exchange: String,
        /// Sequence number of the first message; the rest follow consecutively.
        first_seq: Seq,
        /// The messages.
        messages: Vec<Message>,
    },
    /// Start consuming from a queue.
    Subscribe {
        /// Correlates the reply.
        request: RequestId,
        /// The client's name for this subscription, unique on its connection.
        consumer: ConsumerId,
        /// Queue name.
        queue: String,
        /// The most unsettled deliveries this subscription may hold (credit).
        prefetch: u32,
    },
    /// Stop consuming; unsettled deliveries return to the queue.
    Cancel {
        /// Correlates the reply.
        request: RequestId,
        /// The subscription.
        consumer: ConsumerId,
    },
    /// Settle deliveries of one subscription.
    Settle {
        /// The subscription.
        consumer: ConsumerId,
        /// What to do with them.
        settlement: Settlement,
        /// Which deliveries.
        ranges: Vec<TagRange>,
    },
    /// Keeps an idle connection alive; either side may send it.
    Heartbeat,
    /// Asks for the broker's HA state; answered by `HaStatusReply`, also on a backup.
    HaStatus {
        /// Correlates the reply.
        request: RequestId,
    },
    /// Asks the broker to become the primary (a cluster manager's command); answered by `Ok` or
    /// by `Failed` with the reason the state table refused it.
    HaPromote {
        /// Correlates the reply.
        request: RequestId,
    },
    /// A promotion check's fence (a cluster manager's command, before promoting another broker):
    /// from now on this broker tells no primary of `epoch` or older, nor of the newest epoch it
    /// has seen itself, that it holds a new ready set (`members-held`), so that such a primary
    /// cannot stop holding confirms for a backup it dropped. Answered by `HaStatusReply` once in
    /// force.
    HaFence {
        /// Correlates the reply.
        request: RequestId,
        /// The newest epoch the candidate of the promotion knows (its primary's).
        epoch: u64,
    },

    // ----- broker to client -----
    /// The broker accepted the preamble.
    Hello {
        /// The protocol version the broker speaks.
        version: u16,
        /// The broker's name and version, for humans.
        broker: String,
    },
    /// A request succeeded.
    Ok {
        /// The request.
        request: RequestId,
    },
    /// A request failed; the connection stays open.
    Failed {
        /// The request.
        request: RequestId,
        /// What kind of failure.
        code: ErrorCode,
        /// What was allowed and what came.
        message: String,
    },
    /// The connection failed; the broker closes it after this frame.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What was allowed and what came.
        message: String,
    },
    /// Publishes that ended, in ranges.
    Confirm {
        /// Ranges in increasing sequence order.
        ranges: Vec<ConfirmRange>,
    },
    /// A batch of deliveries to one subscription.
    Deliver {
        /// The subscription.
        consumer: ConsumerId,
        /// Tag of the first message; the rest follow consecutively.
        first_tag: Tag,
        /// The messages.
        messages: Vec<Delivered>,
    },
    /// Reply to `QueueList`.
    QueueListReply {
        /// The request.
        request: RequestId,
        /// Every queue.
        queues: Vec<QueueInfo>,
    },
    /// Reply to `ExchangeList`.
    ExchangeListReply {
        /// The request.
        request: RequestId,
        /// Every exchange.
        exchanges: Vec<ExchangeInfo>,
    },
    /// The broker ended a subscription (its queue was deleted).
    ConsumerCancelled {
        /// The subscription.
        consumer: ConsumerId,
        /// Why.
        reason: String,
    },
    /// The broker's HA state, answering `HaStatus`.
    HaStatusReply {
        /// The request.
        request: RequestId,
        /// The state in the reference's spelling: standalone, joining, catchup, ready,
        /// recovering or active.
        state: String,
        /// The epoch this broker was promoted in; 0 while it has not been promoted.
        epoch: u64,
        /// `ha-brokers-url` as configured (canonical form, credentials hidden); empty if unset.
        brokers_url: String,
        /// `ha-public-url` as configured (canonical form, credentials hidden); empty if unset.
        public_url: String,
        /// The broker's own address as its cluster names it in ready sets (`host:port`); empty
        /// outside a cluster.
        name: String,
        /// The newest ready set this broker knows: its own as a primary, the last one its primary
        /// sent as a backup.
        ready_set: ReadySet,
    },
}

/// The ready backups of a primary, as that primary numbered the set: `(epoch, version)` orders
/// sets, a greater pair being newer. A primary raises `version` at each change of its set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadySet {
    /// The epoch of the primary that made the set; 0 for none known.
    pub epoch: u64,
    /// Its number within that epoch, from 1; 0 for none known.
    pub version: u64,
    /// The ready backups' names (their `host:port`), sorted.
    pub members: Vec<String>,
}

impl ReadySet {
    /// The order of sets: by epoch, then by version.
    pub fn key(&self) -> (u64, u64) {
        (self.epoch, self.version)
    }
}

impl Frame {
    /// The frame's name as `PROTOCOL.md` spells it, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::QueueDeclare { .. } => "queue-declare",
            Frame::QueueDelete { .. } => "queue-delete",
            Frame::QueuePurge { .. } => "queue-purge",
            Frame::QueueList { .. } => "queue-list",
            Frame::ExchangeDeclare { .. } => "exchange-declare",
            Frame::ExchangeDelete { .. } => "exchange-delete",
            Frame::ExchangeList { .. } => "exchange-list",
            Frame::Bind { .. } => "bind",
            Frame::Unbind { .. } => "unbind",
            Frame::Publish { .. } => "publish",
            Frame::Subscribe { .. } => "subscribe",
            Frame::Cancel { .. } => "cancel",
            Frame::Settle { .. } => "settle",
            Frame::Heartbeat => "heartbeat",
            Frame::HaStatus { .. } => "ha-status",
            Frame::HaPromote { .. } => "ha-promote",
            Frame::HaFence { .. } => "ha-fence",
            Frame::Hello { .. } => "hello",
            Frame::Ok { .. } => "ok",
            Frame::Failed { .. } => "failed",
            Frame::Error { .. } => "error",
            Frame::Confirm { .. } => "confirm",
            Frame::Deliver { .. } => "deliver",
            Frame::QueueListReply { .. } => "queue-list-reply",
            Frame::ExchangeListReply { .. } => "exchange-list-reply",
            Frame::ConsumerCancelled { .. } => "consumer-cancelled",
            Frame::HaStatusReply { .. } => "ha-status-reply",
        }
    }
}
