//! One shard's whole state machine: the connections it accepted, the queues it owns, its copy of
//! the routing table, and (on shard 0) the configuration coordinator.
//!
//! Its parts, one concept each (all `impl Shard` on the state defined here):
//! - `session`: connections, their preamble and kind, the dispatch of frames to operations;
//! - `publish`: routing, storing, and the completion trackers' confirms (duplicate suppression);
//! - `consumers`: subscriptions and deliveries;
//! - `replica`: replication events, holds and delivery bounds on a primary, snapshots for a
//!   catch-up, and the primary's records applied on a backup;
//! - `configuration`: the coordinator's decisions and their application on every shard, HA state
//!   transitions and epochs.
//!
//! This file holds the state, the inputs and outputs every part shares, and messages from other
//! shards (`handle_peer`).
//!
//! Call contract (`now` is not needed yet: nothing here is timed):
//! - inputs: `handle_accept`, `handle_read` (bytes from a connection), `handle_closed`,
//!   `handle_link_detached`, `handle_peer` (a message from another shard), and the replication
//!   inputs of `replica`;
//! - then `drive()`, which runs loopback messages and delivers from queues that changed;
//! - outputs, in any order: `poll_transmit` (bytes for a connection, and whether to close it
//!   after), `poll_peer` (messages for other shards), `poll_replication`.
//!
//! Not here: sockets, rings, threads (the IO shell carries bytes and messages in and out), and
//! the replication protocol itself (`ringmq-ha`).
//!
//! Invariants (each part states its own in detail):
//! - A queue is owned by exactly one shard, `shard_of(name)`; only that shard holds its `Queue`.
//! - Every shard's routing table sees the same configuration changes in the same order.
//! - A publish is confirmed only through the connection's completion tracker, after every target
//!   queue reported and every hold was released.

mod configuration;
mod consumers;
mod publish;
mod replica;
mod session;

use std::collections::VecDeque;

use crate::hash_state::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;

use crate::broker_state::{BrokerState, TransitionCause};
use crate::completion_tracker::CompletionTracker;
use crate::config_coordinator::{ConfigCoordinator, Decision, TransitionRefused};
use crate::epoch::{Epoch, Observed};
use crate::frame::{
    preamble_version, Binding, ConfirmOutcome, ConfirmRange, Delivered, ErrorCode, Frame, Message, QueueInfo,
    QueueOptions, ReadySet, LINK_VERSION, PREAMBLE_FLAG_BACKUP, PROTOCOL_VERSION,
};
use crate::ha_view::{initial_state, Admission, ConnectionKind, HaSettings, HaView};
use crate::ids::{ConnId, ConsumerId, RequestId, Seq, ShardId, Tag};
use crate::limits::{DELIVER_FRAME_BYTES_TARGET, DELIVER_FRAME_OVERHEAD_BYTES};
use crate::model::exchange::Bound;
use crate::model::queue::{DeliveryBatch, Enqueued, Queue, SubscriberKey};
use crate::model::range_set::RangeSet;
use crate::model::routing_table::{Declared, RoutingTable};
use crate::replication::{
    CatchUpDiff, DedupSeenKeys, Hold, Position, QueueHoldings, Record, ReplicationEvent, DEDUP_SEEN_RANGES_MAX,
};
use crate::replication_level::{binding_replicated, ReplicationLevel};
use crate::shard_message::{ConfigChange, ConfigRequest, ConnRef, EnqueueItem, EnqueueResult, ShardMessage};
use crate::wire::{self as codec, ConfirmWriter, DecodeError, DeliverWriter};

use self::session::{not_found_queue, Session};

/// Bytes for one connection (`Shard::poll_transmit`).
#[derive(Debug)]
pub struct Transmit {
    /// The connection.
    pub conn: ConnId,
    /// Encoded frames, in order; may be empty when only `close` is news.
    pub bytes: BytesMut,
    /// Close the connection once `bytes` are written: an `Error` frame went out, nothing follows.
    pub close: bool,
}

/// Settings a shard needs from the broker's configuration.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Number of shards in the broker.
    pub shard_count: u16,
    /// `max-frame-size`: the largest frame accepted, in bytes.
    pub frame_bytes_max: u32,
    /// Most unconfirmed publishes per connection.
    pub publish_inflight_max: u32,
    /// Most messages per delivery batch.
    pub deliver_batch_max: usize,
    /// The broker's name for `Hello`.
    pub broker_name: String,
    /// `ha-cluster`, `ha-brokers-url`, `ha-public-url`, `ha-replicate`.
    pub ha: HaSettings,
    /// `dedup-window`: sequences remembered per producer per queue for duplicate suppression
    /// (`dedup_window`); 0 disables it. At most `DEDUP_WINDOW_MAX`.
    pub dedup_window: u32,
}

/// Counters of things dropped or ignored, each with its reason.
#[derive(Debug, Default, Clone)]
pub struct ShardCounters {
    /// Messages for connections that had closed.
    pub to_closed_connection: u64,
    /// Settles naming tags not held.
    pub settle_unknown_tags: u64,
    /// Connections closed for a protocol error.
    pub protocol_errors: u64,
    /// Connections refused because the broker is an HA backup and they were not admin.
    pub refused_not_primary: u64,
    /// Requests refused on an admin connection because the broker is an HA backup.
    pub requests_refused_not_primary: u64,
    /// Backup links refused because this broker is not a primary (a backup or standalone).
    pub backup_links_refused_not_primary: u64,
    /// Hold releases for publishes of connections that had closed.
    pub holds_released_to_closed_connection: u64,
    /// Replication records for queues this shard does not own or does not hold.
    pub replica_records_ignored: u64,
    /// Replicated messages not stored: their position was not above the queue's highest.
    pub replica_messages_ignored: u64,
    /// HA transitions asked by the replication link and refused by the state table.
    pub ha_transitions_refused: u64,
    /// Changes the broker asked of itself (replication records, auto-deletes) that the routing
    /// table refused; nobody was waiting for them.
    pub own_changes_refused: u64,
    /// Publishes not stored because their queue's dedup window knew their key; confirmed as
    /// stored (per queue: `Queue::dedup_counters`).
    pub duplicates_suppressed: u64,
}

/// Which queue a shard owns: a stable hash of the name.
pub fn shard_of(name: &str, shard_count: u16) -> ShardId {
    // FNV-1a: stable across builds and platforms, which a hash-map hasher is not promised to be.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ShardId((hash % u64::from(shard_count)) as u16)
}

/// One shard. See the module doc for the call contract.
#[derive(Debug)]
pub struct Shard {
    /// This shard.
    id: ShardId,
    /// Settings.
    config: ShardConfig,
    /// Exchanges, bindings and queue names, identical on every shard.
    routing: RoutingTable,
    /// Queues this shard owns.
    queues: HashMap<Arc<str>, Queue>,
    /// Connections this shard accepted.
    sessions: HashMap<ConnId, Session>,
    /// Shard 0 only: decides configuration changes and owns the HA state.
    coordinator: Option<ConfigCoordinator>,
    /// This shard's copy of the broker's HA state.
    ha: HaView,
    /// Messages for other shards, by destination index.
    outbox: Vec<Vec<ShardMessage>>,
    /// Messages to ourselves, run by `drive`.
    loopback: VecDeque<ShardMessage>,
    /// Queues that may be able to deliver.
    dirty_queues: HashSet<Arc<str>>,
    /// Connections with bytes to write or to close.
    dirty_sessions: Vec<ConnId>,
    /// Connections whose trackers may have confirms to release.
    confirms_due: Vec<ConnId>,
    /// Per destination shard: enqueues gathered while reading one connection.
    pending_enqueues: Vec<Vec<EnqueueItem>>,
    /// Scratch for routing results.
    route_scratch: Vec<Arc<str>>,
    /// Drop counters.
    counters: ShardCounters,
    /// Replication events not yet polled, in the order of the changes.
    replication: Vec<ReplicationEvent>,
    /// Backup streams on this shard: holds each replicated enqueue takes.
    replica_holds: u32,
    /// Set by the first `handle_replicated`: only then are held enqueues gated, since before it
    /// nothing would ever open the gate (a shell that does not carry replication's delivery
    /// bounds to the shard keeps delivering at once rather than never).
    delivery_reports: bool,
    /// Scratch for positions drained from a queue's dequeued log.
    dequeued_scratch: Vec<Position>,
    /// The highest `next_position` of any queue deleted here: a queue created later continues
    /// above it, so that positions stay unique per queue name across a delete and re-create.
    deleted_positions_high: Position,
}

impl Shard {
    /// A new shard; shard 0 is also the configuration coordinator.
    ///
    /// # Panics
    /// If `id` is not below `config.shard_count`, or `config.dedup_window` is above
    /// `DEDUP_WINDOW_MAX`.
    pub fn new(id: ShardId, config: ShardConfig) -> Shard {
        assert!(id.0 < config.shard_count, "{id} of {} shards", config.shard_count);
        let window_max = crate::limits::DEDUP_WINDOW_MAX;
        assert!(
            config.dedup_window <= window_max,
            "dedup-window must be in 0..={window_max}; got {}",
            config.dedup_window
        );
        let count = usize::from(config.shard_count);
        Shard {
            id,
            routing: RoutingTable::new(),
            queues: HashMap::default(),
            sessions: HashMap::default(),
            coordinator: (id.0 == 0)
                .then(|| ConfigCoordinator::new(initial_state(&config.ha), config.ha.replicate, config.ha.member)),
            ha: HaView::new(config.ha.clone()),
            outbox: (0..count).map(|_| Vec::new()).collect(),
            loopback: VecDeque::new(),
            dirty_queues: HashSet::default(),
            dirty_sessions: Vec::new(),
            confirms_due: Vec::new(),
            pending_enqueues: (0..count).map(|_| Vec::new()).collect(),
            route_scratch: Vec::new(),
            counters: ShardCounters::default(),
            replication: Vec::new(),
            replica_holds: 0,
            delivery_reports: false,
            dequeued_scratch: Vec::new(),
            deleted_positions_high: Position(0),
            config,
        }
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Drop counters.
    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// This shard's copy of the broker's HA state.
    pub fn ha(&self) -> &HaView {
        &self.ha
    }

    /// A message from another shard (or from ourselves).
    pub fn handle_peer(&mut self, message: ShardMessage) {
        match message {
            ShardMessage::Enqueue { origin, epoch, items } => self.enqueue_forwarded(origin, epoch, items),
            ShardMessage::Enqueued { conn, results } => {
                for result in results {
                    self.record_enqueued(conn, result);
                }
            }
            ShardMessage::HoldsReleased { conn, seqs } => {
                for seq in seqs {
                    self.release_hold(conn, seq);
                }
            }
            ShardMessage::HoldsRejected { conn, seqs, code, reason } => {
                for seq in seqs {
                    self.reject_hold(conn, seq, code, &reason);
                }
            }
            ShardMessage::Subscribe { origin, request, consumer, queue, prefetch } => {
                let result = self.subscribe_local(origin, consumer, &queue, prefetch);
                let message = ShardMessage::Subscribed { conn: origin.conn, request, consumer, result };
                self.send(origin.shard, message);
            }
            ShardMessage::Subscribed { conn, request, consumer, result } => {
                let frame = match result {
                    Ok(()) => Frame::Ok { request },
                    Err((code, message)) => {
                        // A failed subscribe leaves no subscription behind.
                        if let Some(session) = self.sessions.get_mut(&conn) {
                            session.subscriptions.remove(&consumer);
                        }
                        Frame::Failed { request, code, message }
                    }
                };
                self.write_frame(conn, &frame);
            }
            ShardMessage::Cancel { origin, request, consumer, queue } => {
                self.cancel_local(origin, consumer, &queue);
                if let Some(request) = request {
                    self.reply(origin, Frame::Ok { request });
                }
            }
            ShardMessage::Settle { origin, consumer, queue, settlement, ranges } => {
                let key = SubscriberKey { shard: origin.shard, conn: origin.conn, consumer };
                if let Some(entry) = self.queues.get_mut(queue.as_str()) {
                    if let Some(outcome) = entry.settle(key, settlement, &ranges) {
                        self.counters.settle_unknown_tags += outcome.unknown;
                        self.mark_queue(&queue);
                        self.report_dequeued(&queue);
                    }
                }
            }
            ShardMessage::Purge { origin, request, queue } => {
                let reply = match self.queues.get_mut(queue.as_str()) {
                    Some(entry) => {
                        entry.purge();
                        self.report_dequeued(&queue);
                        Frame::Ok { request }
                    }
                    None => not_found_queue(request, &queue),
                };
                self.reply(origin, reply);
            }
            ShardMessage::ListQueues { origin, request } => {
                let queues = self.queues.values().map(Queue::info).collect();
                self.send(origin.shard, ShardMessage::QueueInfos { conn: origin.conn, request, queues });
            }
            ShardMessage::QueueInfos { conn, request, queues } => self.gather_queue_infos(conn, request, queues),
            ShardMessage::Deliver { conn, consumer, first_tag, messages } => {
                self.write_deliveries(conn, consumer, first_tag, messages);
            }
            ShardMessage::Reply { conn, frame } => {
                if let Frame::ConsumerCancelled { consumer, .. } = &frame {
                    if let Some(session) = self.sessions.get_mut(&conn) {
                        session.subscriptions.remove(consumer);
                    }
                }
                self.write_frame(conn, &frame);
            }
            ShardMessage::ConfigRequest { origin, request, change } => self.coordinate(origin, request, change),
            ShardMessage::HaStatus { origin, request, fence } => self.answer_ha_status(origin, request, fence),
            ShardMessage::ApplyConfig { id, change } => {
                if let Err((_, message)) = self.apply_config(change) {
                    panic!("{}: change {id} failed on a non-coordinator shard: {message}", self.id);
                }
                self.send(ShardId(0), ShardMessage::ConfigApplied { id });
            }
            ShardMessage::ConfigApplied { id } => {
                let coordinator = self.coordinator.as_mut().expect("ConfigApplied sent to a non-coordinator");
                if let Some((origin, Some(request))) = coordinator.handle_applied(id) {
                    self.reply(origin, Frame::Ok { request });
                }
            }
            ShardMessage::ConnectionClosed { origin } => {
                let mut emptied = Vec::new();
                for (name, queue) in &mut self.queues {
                    if queue.cancel_connection(origin.shard, origin.conn) > 0 {
                        self.dirty_queues.insert(name.clone());
                        if queue.consumer_count() == 0 && queue.options().auto_delete {
                            emptied.push(name.to_string());
                        }
                    }
                }
                for name in emptied {
                    self.request_auto_delete(name);
                }
            }
        }
    }

    /// Runs loopback messages and delivers from changed queues, until nothing moves.
    pub fn drive(&mut self) {
        loop {
            while let Some(message) = self.loopback.pop_front() {
                self.handle_peer(message);
            }
            let own = usize::from(self.id.0);
            if !self.outbox[own].is_empty() {
                self.loopback.extend(self.outbox[own].drain(..));
                continue;
            }
            if self.dirty_queues.is_empty() {
                break;
            }
            self.deliver_dirty_queues();
        }
        self.release_confirms();
    }

    /// The next bytes to write, and whether to close the connection once they are written.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        while let Some(conn) = self.dirty_sessions.pop() {
            let Some(session) = self.sessions.get_mut(&conn) else { continue };
            session.dirty = false;
            if session.out.is_empty() && !session.closing {
                continue;
            }
            return Some(Transmit { conn, bytes: session.out.split(), close: session.closing });
        }
        None
    }

    /// Messages for shard `to`, in order. Never returns our own messages (see `drive`).
    pub fn poll_peer(&mut self, to: ShardId) -> std::vec::Drain<'_, ShardMessage> {
        assert_ne!(to, self.id);
        self.outbox[usize::from(to.0)].drain(..)
    }

    /// Whether any other shard has messages waiting.
    pub fn has_peer_output(&self) -> bool {
        self.outbox.iter().enumerate().any(|(i, o)| i != usize::from(self.id.0) && !o.is_empty())
    }

    fn subscription_queue(&self, conn: ConnId, consumer: ConsumerId) -> Option<Arc<str>> {
        self.sessions.get(&conn)?.subscriptions.get(&consumer).cloned()
    }

    fn conn_ref(&self, conn: ConnId) -> ConnRef {
        ConnRef { shard: self.id, conn }
    }

    fn send(&mut self, to: ShardId, message: ShardMessage) {
        self.outbox[usize::from(to.0)].push(message);
    }

    fn reply(&mut self, origin: ConnRef, frame: Frame) {
        if origin.shard == self.id {
            self.write_frame(origin.conn, &frame);
        } else {
            self.send(origin.shard, ShardMessage::Reply { conn: origin.conn, frame });
        }
    }

    fn mark_queue(&mut self, name: &str) {
        if let Some((key, _)) = self.queues.get_key_value(name) {
            self.dirty_queues.insert(key.clone());
        }
    }

    fn write_frame(&mut self, conn: ConnId, frame: &Frame) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            self.counters.to_closed_connection += 1;
            return;
        };
        if session.closing {
            return;
        }
        codec::encode(frame, &mut session.out);
        self.mark_session(conn);
    }

    fn mark_session(&mut self, conn: ConnId) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            if !session.dirty {
                session.dirty = true;
                self.dirty_sessions.push(conn);
            }
        }
    }
}

/// The origin of requests the broker makes by itself; never answered, so never looked up.
const BROKER_ITSELF: ConnId = ConnId(u32::MAX);
