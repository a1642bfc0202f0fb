//! What shards say to each other over the shard-to-shard rings.
//!
//! Every message is a batch or a rare control message: enqueues travel as one `Enqueue` per
//! (producer connection, destination shard) per read, deliveries as one `Deliver` per batch.
//!
//! Invariants:
//! - Between two shards, messages arrive in the order they were sent (the rings are FIFO), which
//!   is what orders a subscribe's `Ok` before its first delivery, and a configuration change
//!   before any publish that depends on it. Messages from different shards have no order: a
//!   promotion (shard 0's `ApplyConfig`) may reach a shard after a publish another shard accepted
//!   under it, so every `Enqueue` names the epoch it was accepted in, and the owner stores it
//!   only in that epoch or a later one (asserted there).
//! - A message addressed to a connection that has since closed is dropped on arrival, with a
//!   counter: the queue's owner already took back what the connection held.

use std::sync::Arc;

use crate::broker_state::{BrokerState, TransitionCause};
use crate::epoch::Epoch;
use crate::frame::{
    Binding, ConfirmRange, Delivered, ErrorCode, ExchangeKind, Frame, QueueInfo, QueueOptions, Settlement, TagRange,
};
use crate::ids::{ConnId, ConsumerId, RequestId, Seq, ShardId, Tag};
use crate::replication_level::ReplicationLevel;

/// A connection somewhere in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The shard that owns the connection.
    pub shard: ShardId,
    /// The connection on that shard.
    pub conn: ConnId,
}

/// One message to enqueue on one queue, on behalf of a producer.
#[derive(Debug, Clone)]
pub struct EnqueueItem {
    /// Target queue.
    pub queue: Arc<str>,
    /// The producer's sequence number for it.
    pub seq: Seq,
    /// The message.
    pub message: crate::frame::Message,
}

/// A configuration change, decided by the coordinator shard and applied by every shard in the
/// same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// Create a queue.
    CreateQueue {
        /// Queue name.
        name: String,
        /// Its options.
        options: QueueOptions,
        /// The owning connection, for exclusive queues.
        exclusive_owner: Option<ConnRef>,
        /// How much of it is replicated, decided at declare.
        level: ReplicationLevel,
    },
    /// Delete a queue and its bindings; cancel its consumers.
    DeleteQueue {
        /// Queue name.
        name: String,
    },
    /// Create an exchange.
    CreateExchange {
        /// Exchange name.
        name: String,
        /// Its type.
        kind: ExchangeKind,
        /// How much of it is replicated, decided at declare (stored by the coordinator only).
        level: ReplicationLevel,
    },
    /// Backup: add a replica queue's name to the routing table (shard 0's stream asked). Its owner
    /// shard creates the `Queue` itself when its own stream's `QueueCreated` record comes, and
    /// keeps it: this change never creates or replaces a `Queue`, so records applied meanwhile are
    /// not lost.
    AddReplicaQueue {
        /// Queue name.
        name: String,
        /// Its options, as the owner created it.
        options: QueueOptions,
        /// Its level on the primary (stored by the coordinator only, which replicates the queue
        /// at that level once this broker is promoted).
        level: ReplicationLevel,
    },
    /// Backup: remove a replica queue's name (and its bindings) from the routing table (shard 0's
    /// stream asked). Its owner shard drops the `Queue` when its own stream's `QueueDeleted`
    /// record comes; a `Queue` of the same name held now is a newer replica and stays.
    RemoveReplicaQueue {
        /// Queue name.
        name: String,
    },
    /// Delete an exchange and its bindings.
    DeleteExchange {
        /// Exchange name.
        name: String,
    },
    /// Add a binding.
    Bind(Binding),
    /// Remove a binding.
    Unbind(Binding),
    /// The broker's HA state changed (a promotion); every shard's `HaView` takes it.
    HaState {
        /// The new state.
        state: BrokerState,
        /// The epoch of the promotion (`Epoch(0)` while never promoted).
        epoch: Epoch,
        /// Why, for the state table.
        cause: TransitionCause,
    },
}

/// A request for a configuration change, sent to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigRequest {
    /// Declare a queue (create, or check an existing one matches).
    DeclareQueue {
        /// Queue name.
        name: String,
        /// Declare options.
        options: QueueOptions,
        /// Declare arguments (`qpid.replicate`).
        arguments: Vec<(String, String)>,
    },
    /// Declare an exchange.
    DeclareExchange {
        /// Exchange name.
        name: String,
        /// Its type.
        kind: ExchangeKind,
        /// Only check that it exists.
        passive: bool,
        /// Declare arguments (`qpid.replicate`).
        arguments: Vec<(String, String)>,
    },
    /// Any change that needs no further validation than the routing table's.
    Change(ConfigChange),
    /// The connection closed: delete its exclusive queues.
    ConnectionClosed,
    /// The named queue lost its last consumer and is auto-delete.
    AutoDelete {
        /// Queue name.
        name: String,
    },
    /// Promote the broker to primary (`ringmq ha promote --cluster-manager`).
    HaPromote,
    /// Backup: shard 0 applied a `QueueCreated` record (its stream carries every replicated
    /// queue); add the name to every shard's routing table. The queue's owner creates the `Queue`
    /// from its own stream's record. Asked by the broker itself, in any HA state.
    ReplicaQueueCreated {
        /// Queue name.
        name: String,
        /// Its options.
        options: QueueOptions,
        /// Its level on the primary, `configuration` or `all`.
        level: ReplicationLevel,
    },
    /// Backup: shard 0 applied a `QueueDeleted` record; remove the name (and its bindings) from
    /// every shard's routing table. The owner drops the `Queue` for its own stream's record.
    /// Asked by the broker itself, in any HA state.
    ReplicaQueueDeleted {
        /// Queue name.
        name: String,
    },
    /// Backup: shard 0 applied an `ExchangeCreated` record; create the exchange at the primary's
    /// level on every shard, or re-create it if it exists with another kind or level. Asked by the
    /// broker itself, in any HA state, like every `Replica*` request.
    ReplicaExchangeCreated {
        /// Exchange name.
        name: String,
        /// Its type.
        kind: ExchangeKind,
        /// Its level on the primary, `configuration` or `all`.
        level: ReplicationLevel,
    },
    /// Backup: shard 0 applied an `ExchangeDeleted` record; delete the exchange and its bindings
    /// if it exists.
    ReplicaExchangeDeleted {
        /// Exchange name.
        name: String,
    },
    /// Backup: shard 0 applied a `Bound` record; add the binding (a no-op if it exists).
    ReplicaBind(Binding),
    /// Backup: shard 0 applied an `Unbound` record; remove the binding if it exists.
    ReplicaUnbind(Binding),
    /// Backup: shard 0's link is about to resynchronise from the primary's snapshot; delete every
    /// replicated exchange, and with them every replicated binding, and remove every replicated
    /// queue's name from routing (owners keep their `Queue`s), so that the snapshot leaves exactly
    /// the primary's routing.
    ReplicaConfigurationCleared,
    /// Backup: the replication link moved the broker to another HA state (checked against the
    /// state table; never a promotion).
    HaTransition {
        /// The state asked for.
        to: BrokerState,
        /// Why.
        cause: TransitionCause,
    },
}

/// How the enqueues of a run of consecutive seqs on one queue ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueResult {
    /// The seqs and their outcome; each seq counts as one target done.
    pub range: ConfirmRange,
    /// Holds to take on each seq of the range before its target is counted (the backup streams
    /// that replicate the message and must confirm it); 0 for rejected messages and queues not
    /// replicated.
    pub holds: u32,
}

/// Everything one shard sends another.
#[derive(Debug)]
pub enum ShardMessage {
    /// To a queue's owner: store these messages.
    Enqueue {
        /// The producer's connection.
        origin: ConnRef,
        /// The epoch the producer's shard had applied when it accepted them (`HaView::epoch`).
        /// The owner stores them only once it has applied that epoch too, so that they take the
        /// holds its promotion brings: over another ring than the promotion's, they may arrive
        /// first (the HA layer keeps them until then).
        epoch: Epoch,
        /// The messages, in the producer's order.
        items: Vec<EnqueueItem>,
    },
    /// To the producer's shard: how the enqueues of one `Enqueue` ended, one result per
    /// (queue, run of equal outcomes and holds).
    Enqueued {
        /// The producer's connection.
        conn: ConnId,
        /// Outcomes.
        results: Vec<EnqueueResult>,
    },
    /// To the producer's shard: one hold is released on each of these publishes (a backup
    /// confirmed the message). Sent by the queue's owner after the `Enqueued` that took the hold,
    /// so the rings' order keeps every release after its hold.
    HoldsReleased {
        /// The producer's connection.
        conn: ConnId,
        /// The publishes, one release each (a seq may repeat).
        seqs: Vec<Seq>,
    },
    /// To the producer's shard: one hold is released on each of these publishes with a
    /// rejection (the HA layer gave up waiting for enough ready backups,
    /// `ha-min-ready-timeout`). Sent after the `Enqueued` that took the hold, like
    /// `HoldsReleased`.
    HoldsRejected {
        /// The producer's connection.
        conn: ConnId,
        /// The publishes, one release each (a seq may repeat).
        seqs: Vec<Seq>,
        /// Why, as an error code.
        code: ErrorCode,
        /// Why, in words.
        reason: String,
    },
    /// To a queue's owner: add a subscription.
    Subscribe {
        /// The consumer's connection.
        origin: ConnRef,
        /// Correlates the reply.
        request: RequestId,
        /// The consumer.
        consumer: ConsumerId,
        /// Queue name.
        queue: String,
        /// Credit.
        prefetch: u32,
    },
    /// To the consumer's shard: how a subscribe ended (`Err` carries the failure).
    Subscribed {
        /// The consumer's connection.
        conn: ConnId,
        /// The request to answer.
        request: RequestId,
        /// The consumer.
        consumer: ConsumerId,
        /// The outcome.
        result: Result<(), (ErrorCode, String)>,
    },
    /// To a queue's owner: end a subscription.
    Cancel {
        /// The consumer's connection.
        origin: ConnRef,
        /// Correlates the reply; `None` when the connection is gone.
        request: Option<RequestId>,
        /// The consumer.
        consumer: ConsumerId,
        /// Queue name.
        queue: String,
    },
    /// To a queue's owner: settle deliveries.
    Settle {
        /// The consumer's connection.
        origin: ConnRef,
        /// The consumer.
        consumer: ConsumerId,
        /// Queue name.
        queue: String,
        /// What to do.
        settlement: Settlement,
        /// Which tags.
        ranges: Vec<TagRange>,
    },
    /// To a queue's owner: purge it.
    Purge {
        /// The requesting connection.
        origin: ConnRef,
        /// Correlates the reply.
        request: RequestId,
        /// Queue name.
        queue: String,
    },
    /// To every shard: report your queues.
    ListQueues {
        /// The requesting connection.
        origin: ConnRef,
        /// Correlates the reply.
        request: RequestId,
    },
    /// To the requester: this shard's queues.
    QueueInfos {
        /// The requesting connection.
        conn: ConnId,
        /// The request.
        request: RequestId,
        /// Queues owned by the sender.
        queues: Vec<QueueInfo>,
    },
    /// To a consumer's shard: deliveries.
    Deliver {
        /// The consumer's connection.
        conn: ConnId,
        /// The consumer.
        consumer: ConsumerId,
        /// First tag.
        first_tag: Tag,
        /// The messages.
        messages: Vec<Delivered>,
    },
    /// To a connection's shard: a frame to write as is (replies, cancellations).
    Reply {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// To shard 0, which holds the ready set and the fence: answer `HaStatusReply` to `origin`,
    /// after fencing for a promotion check when `fence` names the candidate's epoch
    /// (`Frame::HaFence`). Changes nothing else.
    HaStatus {
        /// The requesting connection.
        origin: ConnRef,
        /// Correlates the reply.
        request: RequestId,
        /// `Some(epoch)` for `ha-fence`: the newest epoch the promotion's candidate knows.
        fence: Option<Epoch>,
    },
    /// To the coordinator: please change the configuration.
    ConfigRequest {
        /// The requesting connection.
        origin: ConnRef,
        /// Correlates the reply; `None` for changes the broker makes by itself.
        request: Option<RequestId>,
        /// What.
        change: ConfigRequest,
    },
    /// From the coordinator to every other shard: apply this change.
    ApplyConfig {
        /// The coordinator's number for the change, echoed in `ConfigApplied`.
        id: u64,
        /// The change.
        change: ConfigChange,
    },
    /// To the coordinator: change `id` is applied here.
    ConfigApplied {
        /// The change.
        id: u64,
    },
    /// To every shard: a connection closed; cancel its subscriptions.
    ConnectionClosed {
        /// The connection.
        origin: ConnRef,
    },
}
