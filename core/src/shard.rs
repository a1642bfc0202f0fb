//! One shard's whole state machine: the connections it accepted, the queues it owns, its copy of
//! the routing table, and (on shard 0) the configuration coordinator.
//!
//! Call contract (`now` is not needed yet: nothing here is timed):
//! - inputs: `handle_accept`, `handle_read` (bytes from a connection), `handle_closed`,
//!   `handle_peer` (a message from another shard);
//! - then `drive()`, which runs loopback messages and delivers from queues that changed;
//! - outputs, in any order: `poll_transmit` (bytes for a connection, and whether to close it
//!   after), `poll_peer` (messages for other shards).
//!
//! HA: every shard holds a copy of the broker's HA state (`ha_view`), changed only by the
//! coordinator's broadcast `ConfigChange::HaState`. While the broker is a backup, a connection
//! without the admin flag gets an `Error` `NotPrimary` and is closed, and an admin connection's
//! requests that would change a replicated object get `Failed` `NotPrimary` (a publish: a confirm
//! with outcome `Rejected` `NotPrimary`). A backup link (preamble flag `PREAMBLE_FLAG_BACKUP`) is
//! admitted only by a primary, and may send only `hello` and heartbeats here: once admitted, the
//! HA layer takes it over (`handle_link_detached`) and speaks the replication link protocol on it.
//!
//! Replication (see `replication`, `replication_level`): every queue has a level, decided by the
//! coordinator at declare. While this broker is a primary (`recovering`, `active`; never
//! standalone, never a backup), the owner of a replicated queue reports each change it makes to
//! it, in order, through `poll_replication`: creation and deletion for levels `configuration` and
//! `all`, each stored and each removed message (ack, reject, purge) for `all`. A message stored
//! in an `all` queue while the HA layer has backup streams on this shard (`set_replica_holds`)
//! holds its publish's confirm: the producer's tracker takes that many holds before the target is
//! counted, and each is released by `handle_holds_released` once a stream's backup confirmed it.
//! Such a message is also *gated* (`Queue::gate_delivery`): it is delivered to consumers only once
//! the backups hold it, when replication reports its queue's new delivery bound
//! (`handle_replicated`), so a message consumed here is never one a promoted backup lacks (and,
//! with duplicate suppression, never stored twice when its unconfirmed producer re-sends it after a
//! failover). A message stored without a hold (no stream then) is delivered at once; a promotion
//! or stepping down opens every queue. Gating starts with the first `handle_replicated` call: a
//! shell that never calls it would otherwise never deliver a held message, so until then held
//! messages are delivered at once, as before gating existed.
//! Shard 0 also reports the replicated configuration, in the coordinator's order: the creation and
//! deletion of every replicated queue (whichever shard owns it), of every replicated exchange, and
//! every bind and unbind between a replicated exchange and a replicated queue
//! (`replication_level::binding_replicated`). `replication_snapshot` describes every replicated
//! queue this shard owns, for a catch-up, and on shard 0 the rest of the configuration;
//! `replication_snapshot_for` only the difference from a backup shard's holdings
//! (`replica_holdings`, sent with its link-open).
//!
//! On a backup, `apply_replica` applies the primary's records: the owner of a queue keeps its
//! `Queue` (a `QueueCreated` record makes it at once, level `all`, so the records after it apply;
//! `QueueDeleted` drops it), and shard 0 alone changes the routing tables, asking the coordinator
//! for what its configuration records imply (queue names, exchanges, bindings), in their order.
//! These requests are the broker's own and are accepted in any HA state, although clients'
//! changes are refused on a backup. Before a full resync, `clear_replicas` drops messages, and on
//! shard 0 every replicated exchange and binding, which the snapshot then re-creates; before a
//! catch-up by difference only the latter (`clear_replica_configuration`), and messages stay. Shard 0 takes
//! the link's state transitions (`handle_ha_transition`) and the primary's epoch
//! (`observe_epoch`). A promotion (`recovering`) makes every owned queue continue its positions in
//! the new epoch (`Queue::begin_epoch`), and a queue created under a deleted one's name continues
//! above its positions: a position names one message of a queue name cluster-wide.
//!
//! Duplicate suppression (`dedup_window`): every queue is made with the `dedup-window` of the
//! config. A publish its queue finds a duplicate of (same `x-ringmq-dedup` key) is confirmed
//! `Stored` without being stored or replicated, and counted (`duplicates_suppressed`). Its confirm
//! follows the same rule as an enqueue's: in an `all` queue of a primary with holding streams it
//! takes the same holds, and a `ReplicationEvent::Barrier` (after the original's `Enqueued`)
//! releases each once that stream's backup confirmed the queue's records fed before it, so a
//! duplicate is never confirmed before the original could be. A backup's replica queues record the
//! keys of what they apply, so a promoted backup suppresses re-sends of messages it received by
//! replication.
//!
//! Not here: sockets, rings, threads (the IO shell carries bytes and messages in and out), and
//! the replication protocol itself (`ringmq-ha`).
//!
//! Invariants:
//! - A queue is owned by exactly one shard, `shard_of(name)`; only that shard holds its `Queue`.
//! - Every shard's routing table sees the same configuration changes in the same order (the
//!   coordinator's), so routing the same publish gives the same queues on every shard.
//! - A publish is confirmed only through the connection's completion tracker, after every target
//!   queue reported.
//! - On shard 0, the `HaView`'s state equals the coordinator's after every applied change.
//! - Replication events exist only while the state is `recovering` or `active`, per queue they
//!   are in the order of the changes, and shard 0's configuration events in the coordinator's; a hold is taken on the producer's tracker before the
//!   target's report, and its release reaches that tracker after it (same ring, later message).
//! - Once `handle_replicated` was called, a message stored with a hold is not delivered before a
//!   later `handle_replicated` reached its position, unless the broker was promoted or stopped
//!   being a primary first.

use std::collections::VecDeque;

use crate::hash_state::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;

use crate::broker_state::{BrokerState, TransitionCause};
use crate::completion_tracker::CompletionTracker;
use crate::config_coordinator::{ConfigCoordinator, Decision, TransitionRefused};
use crate::epoch::{Epoch, Observed};
use crate::frame::{
    Binding, ConfirmOutcome, ConfirmRange, Delivered, ErrorCode, Frame, Message, QueueInfo, QueueOptions,
    PROTOCOL_VERSION,
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

/// A client connection's state on the shard that accepted it.
#[derive(Debug)]
struct Session {
    /// What the preamble announced: a client, an admin connection (`--ha-admin`), or a backup's
    /// link to us as its primary (`PREAMBLE_FLAG_BACKUP`), which sends only heartbeats until the
    /// HA layer takes it over; `None` until the preamble arrived.
    kind: Option<ConnectionKind>,
    /// Set once an `Error` went out; nothing more is read.
    closing: bool,
    /// Bytes waiting to be written.
    out: BytesMut,
    /// Whether the session is in `dirty_sessions`.
    dirty: bool,
    /// Publish confirms; created by the first publish.
    tracker: Option<CompletionTracker>,
    /// The seq the next publish must carry.
    next_seq: Option<Seq>,
    /// Subscriptions: consumer to queue name.
    subscriptions: HashMap<ConsumerId, Arc<str>>,
    /// Queue lists being gathered from every shard.
    list_gathers: HashMap<RequestId, (u16, Vec<QueueInfo>)>,
    /// Whether the tracker may have confirms to release.
    confirms_due: bool,
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

    /// Whether `conn` is an admitted backup link (it opened with `PREAMBLE_FLAG_BACKUP` and this
    /// broker is its primary), until the HA layer takes it over (`handle_link_detached`).
    pub fn is_backup_link(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_some_and(|s| s.kind == Some(ConnectionKind::BackupLink) && !s.closing)
    }

    /// A connection was accepted.
    ///
    /// # Panics
    /// If `conn` is already in use.
    pub fn handle_accept(&mut self, conn: ConnId) {
        let session = Session {
            kind: None,
            closing: false,
            out: BytesMut::new(),
            dirty: false,
            tracker: None,
            next_seq: None,
            subscriptions: HashMap::default(),
            list_gathers: HashMap::default(),
            confirms_due: false,
        };
        assert!(self.sessions.insert(conn, session).is_none(), "connection id reused");
    }

    /// Bytes arrived on a connection. Consumes every complete frame of `buf`, leaving a partial
    /// one in place.
    pub fn handle_read(&mut self, conn: ConnId, buf: &mut BytesMut) {
        let Some(session) = self.sessions.get_mut(&conn) else { return };
        if session.closing {
            buf.clear();
            return;
        }
        if session.kind.is_none() {
            match codec::decode_preamble(buf) {
                Ok(None) => return,
                Ok(Some(preamble)) if preamble.version != PROTOCOL_VERSION => {
                    let message = format!(
                        "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                        preamble.version
                    );
                    self.fail_connection(conn, ErrorCode::UnsupportedVersion, message);
                    return;
                }
                Ok(Some(preamble)) => {
                    let _ = buf.split_to(crate::frame::PREAMBLE_LEN);
                    let kind = ConnectionKind::from_flags(preamble.flags);
                    session.kind = Some(kind);
                    if let Admission::RefusedNotPrimary { message } = self.ha.admission(kind) {
                        if kind == ConnectionKind::BackupLink {
                            self.counters.backup_links_refused_not_primary += 1;
                        } else {
                            self.counters.refused_not_primary += 1;
                        }
                        self.close_with_error(conn, ErrorCode::NotPrimary, message);
                        buf.clear();
                        return;
                    }
                    let hello = Frame::Hello { version: PROTOCOL_VERSION, broker: self.config.broker_name.clone() };
                    self.write_frame(conn, &hello);
                }
                Err(error) => {
                    self.fail_decode(conn, &error);
                    return;
                }
            }
        }
        loop {
            match codec::decode(buf, self.config.frame_bytes_max) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    self.handle_frame(conn, frame);
                    if self.sessions.get(&conn).is_none_or(|s| s.closing) {
                        buf.clear();
                        break;
                    }
                }
                Err(error) => {
                    self.fail_decode(conn, &error);
                    buf.clear();
                    break;
                }
            }
        }
        self.flush_enqueues(conn);
    }

    /// A connection closed (by the peer or after an error). Its subscriptions are cancelled and
    /// their unsettled deliveries returned; its exclusive queues are deleted.
    pub fn handle_closed(&mut self, conn: ConnId) {
        if self.sessions.remove(&conn).is_none() {
            return;
        }
        let origin = self.conn_ref(conn);
        for shard in 0..self.config.shard_count {
            self.send(ShardId(shard), ShardMessage::ConnectionClosed { origin });
        }
        self.send(
            ShardId(0),
            ShardMessage::ConfigRequest { origin, request: None, change: ConfigRequest::ConnectionClosed },
        );
    }

    /// The admitted backup link `conn` leaves the core, still open: past its `hello` it speaks the
    /// replication link protocol, which the HA layer serves. The core forgets it as it would a
    /// closed connection (the other shards and the coordinator hear of its end as a client's, so
    /// nothing it could hold outlives it).
    ///
    /// # Panics
    /// If `conn` is not an admitted backup link (`is_backup_link`).
    pub fn handle_link_detached(&mut self, conn: ConnId) {
        assert!(self.is_backup_link(conn), "connection {} detached but it is not an admitted backup link", conn.0);
        self.handle_closed(conn);
    }

    /// A message from another shard (or from ourselves).
    pub fn handle_peer(&mut self, message: ShardMessage) {
        match message {
            ShardMessage::Enqueue { origin, items } => self.enqueue_batch(origin, items),
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

    /// Drains the replication events made since the last call, in the order of the changes
    /// (per queue: created, enqueues and dequeues as they happened, deleted). Events are made only
    /// while this broker is a primary of an HA cluster (`recovering`, `active`).
    pub fn poll_replication(&mut self, out: &mut Vec<ReplicationEvent>) {
        out.append(&mut self.replication);
    }

    /// How many holders (backup streams, expected backups) on this shard hold each new enqueue's
    /// confirm; the HA layer keeps it equal to their number (`NodeCore::change_holders` of
    /// `ringmq-ha`). Each of them must release each hold once.
    pub fn set_replica_holds(&mut self, holds: u32) {
        self.replica_holds = holds;
    }

    /// Releases one hold per entry, on the producer's tracker: here, or through the producer's
    /// shard (`ShardMessage::HoldsReleased`). Must be called on the shard whose events carried
    /// the holds, so that each release follows the `Enqueued` result that took the hold on the
    /// same ring. A release for a connection that closed is counted. Confirms go out at `drive`.
    pub fn handle_holds_released(&mut self, holds: &[Hold]) {
        let mut remote: Vec<(ShardId, ConnId, Vec<Seq>)> = Vec::new();
        for hold in holds {
            if hold.shard == self.id {
                self.release_hold(hold.conn, hold.seq);
                continue;
            }
            match remote.iter_mut().find(|(shard, conn, _)| *shard == hold.shard && *conn == hold.conn) {
                Some((_, _, seqs)) => seqs.push(hold.seq),
                None => remote.push((hold.shard, hold.conn, vec![hold.seq])),
            }
        }
        for (shard, conn, seqs) in remote {
            self.send(shard, ShardMessage::HoldsReleased { conn, seqs });
        }
    }

    /// The backups hold every gated message of each named queue up to its position (or the
    /// streams that gated them ended): those messages may now be delivered
    /// (`Queue::open_delivery_to`). Must be called on the shard whose events carried the
    /// enqueues, after those events were polled, once per `poll_released` (with no bounds too: the
    /// first call turns gating on, see the module doc). A queue gone meanwhile is skipped. Returns
    /// whether a queue may now deliver (deliveries go out at `drive`).
    ///
    /// # Panics
    /// If a position is above every position its queue assigned: the reporter saw no such enqueue.
    pub fn handle_replicated(&mut self, bounds: impl IntoIterator<Item = (Arc<str>, Position)>) -> bool {
        self.delivery_reports = true;
        let mut deliverable = false;
        for (name, position) in bounds {
            let Some(queue) = self.queues.get_mut(&name) else { continue };
            queue.open_delivery_to(position);
            if queue.can_deliver() {
                self.dirty_queues.insert(name);
                deliverable = true;
            }
        }
        deliverable
    }

    /// Appends a catch-up description of every replicated queue this shard owns, by name: its
    /// `QueueCreated`, then for level `all` its dedup window (`DedupSeen`) and an `Enqueued` (no hold) per held message, ready or
    /// unsettled, in position order. Shard 0 then appends the rest of the replicated
    /// configuration: a `QueueCreated` for every replicated queue another shard owns, an
    /// `ExchangeCreated` for every replicated exchange, then a `Bound` for every replicated
    /// binding (by queue, in bind order), each list by name; a backup's routing is then exactly
    /// the primary's replicated configuration (see `clear_replicas`).
    pub fn replication_snapshot(&self, out: &mut Vec<ReplicationEvent>) {
        self.replication_snapshot_for(None, out);
    }

    /// `replication_snapshot`, or with `holdings` (what the backup shard holds, from its
    /// link-open: `replica_holdings`) only the difference: first a `QueueDeleted` for every held
    /// queue this shard owns no replicated queue of, then per replicated queue its
    /// `QueueCreated`, then for level `all` its dedup window as `DedupSeen` events (the keys of
    /// every message it stored within the window, consumed ones included: `Queue::dedup_seen`,
    /// at most `DEDUP_SEEN_RANGES_MAX` ranges per producer and per event), then an `Enqueued`
    /// (no hold) for every held message the
    /// backup lacks, in position order, and one `DequeuedRanges` for the positions the backup
    /// holds that this queue does not (of a `configuration` queue: every position it holds).
    /// Shard 0's configuration part is the same either way. Returns what the diff found.
    pub fn replication_snapshot_for(
        &self,
        holdings: Option<&[QueueHoldings]>,
        out: &mut Vec<ReplicationEvent>,
    ) -> CatchUpDiff {
        let mut diff = CatchUpDiff::default();
        let mut held: HashMap<&str, &[(Position, Position)]> = HashMap::default();
        for queue in holdings.unwrap_or_default() {
            let replicated = self.queues.get(queue.name.as_str()).is_some_and(|q| q.level().replicates_configuration());
            if replicated {
                held.insert(queue.name.as_str(), &queue.ranges);
            } else {
                diff.queues_deleted += 1;
                out.push(ReplicationEvent::QueueDeleted { name: Arc::from(queue.name.as_str()) });
            }
        }
        let mut names: Vec<&Arc<str>> =
            self.queues.iter().filter(|(_, q)| q.level().replicates_configuration()).map(|(name, _)| name).collect();
        names.sort();
        for name in names {
            let queue = &self.queues[name];
            let level = queue.level();
            out.push(ReplicationEvent::QueueCreated { name: name.clone(), options: queue.options().clone(), level });
            if level.replicates_messages() {
                // The window before the messages: the backup then suppresses re-sends of messages
                // consumed before it (re)joined, which no `Enqueued` will carry.
                push_dedup_seen(name, queue.dedup_seen(DEDUP_SEEN_RANGES_MAX), out);
            }
            // What the backup holds that this queue does not: its holdings less every position
            // this queue holds.
            let backup_ranges: &[(Position, Position)] = held.get(&**name).copied().unwrap_or_default();
            let mut backup: RangeSet = backup_ranges.iter().map(|&(first, last)| (first.0, last.0)).collect();
            if level.replicates_messages() {
                queue.for_each_held(|position, message| {
                    if backup.remove(position.0) {
                        diff.held += 1;
                    } else {
                        diff.sent += 1;
                        let message = message.clone();
                        out.push(ReplicationEvent::Enqueued {
                            queue: name.clone(),
                            position,
                            message,
                            hold: None,
                            holders: 0,
                        });
                    }
                });
            }
            let ranges: Vec<(Position, Position)> =
                backup.iter().map(|(first, last)| (Position(first), Position(last))).collect();
            if !ranges.is_empty() {
                let positions = ranges.iter().map(|&(first, last)| (last.0 - first.0).saturating_add(1));
                diff.dequeued = positions.fold(diff.dequeued, u64::saturating_add);
                out.push(ReplicationEvent::DequeuedRanges { queue: name.clone(), ranges });
            }
        }
        self.snapshot_configuration(out);
        diff
    }

    /// Backup: what this shard holds of the queues it owns, for its link-open: per queue whose
    /// level replicates configuration (every replica queue), by name, its held positions as
    /// ranges (`Queue::held_ranges`). `None` when that takes more than `queues_max` queues or
    /// `ranges_max` ranges in all: the caller then asks for a full resync.
    pub fn replica_holdings(&self, queues_max: usize, ranges_max: usize) -> Option<Vec<QueueHoldings>> {
        let mut names: Vec<&Arc<str>> =
            self.queues.iter().filter(|(_, q)| q.level().replicates_configuration()).map(|(name, _)| name).collect();
        if names.len() > queues_max {
            return None;
        }
        names.sort();
        let mut left = ranges_max;
        let mut holdings = Vec::with_capacity(names.len());
        for name in names {
            let mut ranges = Vec::new();
            left -= self.queues[name].held_ranges(left, &mut ranges)?;
            holdings.push(QueueHoldings { name: name.to_string(), ranges });
        }
        Some(holdings)
    }

    /// Shard 0's part of a snapshot: the replicated configuration (see `replication_snapshot`).
    fn snapshot_configuration(&self, out: &mut Vec<ReplicationEvent>) {
        let Some(coordinator) = self.coordinator.as_ref() else { return };
        for (name, options, level) in coordinator.replicated_queues() {
            if shard_of(name, self.config.shard_count) != self.id {
                out.push(ReplicationEvent::QueueCreated { name: Arc::from(name), options: options.clone(), level });
            }
        }
        for (name, kind) in coordinator.replicated_exchanges() {
            out.push(ReplicationEvent::ExchangeCreated { name: Arc::from(name), kind });
        }
        for binding in self.routing.bindings() {
            if self.binding_replicated(&binding) {
                out.push(ReplicationEvent::Bound {
                    exchange: Arc::from(binding.exchange),
                    queue: Arc::from(binding.queue),
                    key: Arc::from(binding.key),
                });
            }
        }
    }

    /// Backup: applies one record of the primary's.
    ///
    /// Two streams meet here (see `replication`). The owner of a queue applies its stream's
    /// records to the `Queue`: a `QueueCreated` makes it at once (level `all`, not exclusive here:
    /// its owner is on the primary), so the records after it apply; a `QueueDeleted` drops it.
    /// Shard 0 applies the configuration stream to the routing tables, through its coordinator,
    /// as the broker's own requests (accepted in any HA state, though clients' changes are refused
    /// on a backup): queue names, exchanges, bindings, in the primary coordinator's order. Only
    /// that one ordered stream changes a backup's routing, so a `Bound` always finds its queue and
    /// exchange (the primary reported both before it), and a late record of another stream cannot
    /// undo a newer change. Every record is idempotent: applying it again changes nothing.
    ///
    /// Records for queues this shard neither owns nor (as shard 0) routes are counted and ignored,
    /// and so are configuration records on other shards than 0, and messages at positions not
    /// above the queue's highest. Called only while this broker is a backup.
    pub fn apply_replica(&mut self, record: Record) {
        let coordinator = self.coordinator.is_some();
        match record {
            Record::QueueCreated { name, options } => {
                let owner = shard_of(&name, self.config.shard_count) == self.id;
                if !owner && !coordinator {
                    self.counters.replica_records_ignored += 1;
                    return;
                }
                let options = QueueOptions { passive: false, exclusive: false, ..options };
                // Announced again (a reconnect): the queue here keeps its messages.
                if owner && !self.queues.contains_key(name.as_str()) {
                    let queue = Queue::new(name.clone(), options.clone(), None, ReplicationLevel::All)
                        .with_dedup_window(self.config.dedup_window);
                    self.queues.insert(Arc::from(name.as_str()), queue);
                }
                if coordinator {
                    self.request_replica_change(ConfigRequest::ReplicaQueueCreated { name, options });
                }
            }
            Record::QueueDeleted { name } => {
                let owner = shard_of(&name, self.config.shard_count) == self.id;
                let held = if owner { self.queues.remove(name.as_str()) } else { None };
                if held.is_none() && !coordinator {
                    self.counters.replica_records_ignored += 1;
                    return;
                }
                if let Some(queue) = held {
                    self.dirty_queues.remove(name.as_str());
                    for key in queue.subscribers().collect::<Vec<_>>() {
                        let reason = format!("queue '{name}' was deleted");
                        let frame = Frame::ConsumerCancelled { consumer: key.consumer, reason };
                        self.send(key.shard, ShardMessage::Reply { conn: key.conn, frame });
                    }
                }
                if coordinator {
                    self.request_replica_change(ConfigRequest::ReplicaQueueDeleted { name });
                }
            }
            Record::ExchangeCreated { name, kind } if coordinator => {
                self.request_replica_change(ConfigRequest::ReplicaExchangeCreated { name, kind });
            }
            Record::ExchangeDeleted { name } if coordinator => {
                self.request_replica_change(ConfigRequest::ReplicaExchangeDeleted { name });
            }
            Record::Bound { exchange, queue, key } if coordinator => {
                self.request_replica_change(ConfigRequest::ReplicaBind(Binding { exchange, queue, key }));
            }
            Record::Unbound { exchange, queue, key } if coordinator => {
                self.request_replica_change(ConfigRequest::ReplicaUnbind(Binding { exchange, queue, key }));
            }
            Record::ExchangeCreated { .. }
            | Record::ExchangeDeleted { .. }
            | Record::Bound { .. }
            | Record::Unbound { .. } => self.counters.replica_records_ignored += 1,
            Record::Enqueued { queue, first_position, messages } => {
                let Some(entry) = self.queues.get_mut(queue.as_str()) else {
                    self.counters.replica_records_ignored += 1;
                    return;
                };
                let mut position = first_position;
                for message in messages {
                    if !entry.enqueue_at(position, message) {
                        self.counters.replica_messages_ignored += 1;
                    }
                    position = position.next();
                }
            }
            Record::Dequeued { queue, ranges } => match self.queues.get_mut(queue.as_str()) {
                Some(entry) => {
                    entry.dequeue_at(&ranges);
                }
                None => self.counters.replica_records_ignored += 1,
            },
            Record::DedupSeen { queue, keys } => match self.queues.get_mut(queue.as_str()) {
                Some(entry) => entry.record_dedup_keys(&keys),
                None => self.counters.replica_records_ignored += 1,
            },
        }
    }

    /// Backup: drops every ready message of every `all` queue this shard owns, before a full
    /// resync; returns how many. On shard 0 it also asks the coordinator to delete every
    /// replicated exchange, and with them every replicated binding, and to remove every replicated
    /// queue's name from routing, before the records that follow (the request goes to the
    /// coordinator first, and a ring keeps order): the snapshot then re-creates exactly the
    /// primary's routing, so queues, exchanges and bindings deleted on the primary while this
    /// backup was away are gone from it. The owners keep their `Queue`s, with messages, across the
    /// resync (dropping one the primary deleted is the owner stream's business).
    pub fn clear_replicas(&mut self) -> u64 {
        self.clear_replica_configuration();
        self.queues.values_mut().filter(|q| q.level() == ReplicationLevel::All).map(Queue::clear_messages).sum()
    }

    /// Backup, before a catch-up that sends only the difference (the messages stay): on shard 0,
    /// the configuration part of `clear_replicas` (the request to the coordinator, made before
    /// the records that follow); on every shard, each owned queue's ready messages put in
    /// position order (`Queue::sort_ready_by_position`: a broker that was a primary may hold them
    /// otherwise), so that the catch-up's messages are inserted in their place; and each owned
    /// `all` queue's dedup keys forgotten: the catch-up carries the primary's window before any
    /// message, and a key only this broker has (of a message it stored as a primary whose epoch
    /// ended, and that the catch-up removes) would otherwise suppress that message's re-send once
    /// this broker is promoted, confirming a message stored nowhere.
    pub fn clear_replica_configuration(&mut self) {
        if self.coordinator.is_some() {
            self.request_replica_change(ConfigRequest::ReplicaConfigurationCleared);
        }
        for queue in self.queues.values_mut() {
            queue.sort_ready_by_position();
            if queue.level() == ReplicationLevel::All {
                queue.forget_dedup_keys();
            }
        }
    }

    /// Shard 0: moves the broker to HA state `to` for `cause`, as the replication link found
    /// (joining -> catchup, catchup -> ready, ready -> catchup), and broadcasts it to every shard
    /// like a promotion, in the current epoch.
    ///
    /// # Errors
    /// The state table's refusal (or that a promotion is not made here), counted in
    /// `ha_transitions_refused`; nothing changes.
    ///
    /// # Panics
    /// On a shard other than 0.
    pub fn handle_ha_transition(&mut self, to: BrokerState, cause: TransitionCause) -> Result<(), TransitionRefused> {
        let coordinator = self.coordinator.as_ref().expect("handle_ha_transition is for shard 0, the coordinator");
        if let Err(reason) = coordinator.decide_transition(to, cause) {
            self.counters.ha_transitions_refused += 1;
            return Err(reason);
        }
        let origin = self.conn_ref(BROKER_ITSELF);
        self.coordinate(origin, None, ConfigRequest::HaTransition { to, cause });
        Ok(())
    }

    /// Shard 0: how many backups a promotion of this broker would wait for in `recovering` (the
    /// current primary's ready backups, this broker left out); with none, a promotion makes the
    /// broker `active` at once.
    ///
    /// # Panics
    /// On a shard other than 0.
    pub fn set_expected_backups(&mut self, count: usize) {
        self.coordinator
            .as_mut()
            .expect("set_expected_backups is for shard 0, the coordinator")
            .set_expected_backups(count);
    }

    /// Shard 0: learns the epoch of the primary this backup replicates from, so that a later
    /// promotion takes an epoch above it. Returns how it compares with the highest seen.
    ///
    /// # Panics
    /// On a shard other than 0.
    pub fn observe_epoch(&mut self, epoch: Epoch) -> Observed {
        self.coordinator.as_mut().expect("observe_epoch is for shard 0, the coordinator").observe_epoch(epoch)
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

    fn handle_frame(&mut self, conn: ConnId, frame: Frame) {
        let origin = self.conn_ref(conn);
        if self.is_backup_link(conn) && frame != Frame::Heartbeat {
            // Before the HA layer takes it over, a backup link carries heartbeats only.
            let message = format!("a backup link may send only heartbeat; got {}", frame.name());
            self.fail_connection(conn, ErrorCode::UnexpectedFrame, message);
            return;
        }
        if let Some(request) = changes_replicated_state(&frame) {
            if let Some(message) = self.ha.refusal(frame.name()) {
                self.counters.requests_refused_not_primary += 1;
                self.write_frame(conn, &Frame::Failed { request, code: ErrorCode::NotPrimary, message });
                return;
            }
        }
        match frame {
            Frame::Publish { exchange, first_seq, messages } => self.publish(conn, &exchange, first_seq, messages),
            Frame::Settle { consumer, settlement, ranges } => {
                let Some(queue) = self.subscription_queue(conn, consumer) else {
                    let message = format!("settle for consumer {} which does not subscribe", consumer.0);
                    self.fail_connection(conn, ErrorCode::NotFound, message);
                    return;
                };
                let message = ShardMessage::Settle { origin, consumer, queue: queue.to_string(), settlement, ranges };
                self.send(shard_of(&queue, self.config.shard_count), message);
            }
            Frame::QueueDeclare { request, name, options, arguments } => {
                let change = ConfigRequest::DeclareQueue { name, options, arguments };
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::QueueDelete { request, name } => {
                let change = ConfigRequest::Change(ConfigChange::DeleteQueue { name });
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::ExchangeDeclare { request, name, kind, passive, arguments } => {
                let change = ConfigRequest::DeclareExchange { name, kind, passive, arguments };
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::ExchangeDelete { request, name } => {
                let change = ConfigRequest::Change(ConfigChange::DeleteExchange { name });
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::Bind { request, binding } => {
                let change = ConfigRequest::Change(ConfigChange::Bind(binding));
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::Unbind { request, binding } => {
                let change = ConfigRequest::Change(ConfigChange::Unbind(binding));
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::QueuePurge { request, name } => {
                let owner = shard_of(&name, self.config.shard_count);
                self.send(owner, ShardMessage::Purge { origin, request, queue: name });
            }
            Frame::QueueList { request } => {
                let session = self.sessions.get_mut(&conn).expect("session of a frame");
                session.list_gathers.insert(request, (self.config.shard_count, Vec::new()));
                for shard in 0..self.config.shard_count {
                    self.send(ShardId(shard), ShardMessage::ListQueues { origin, request });
                }
            }
            Frame::ExchangeList { request } => {
                let exchanges = self.routing.exchanges().collect();
                self.write_frame(conn, &Frame::ExchangeListReply { request, exchanges });
            }
            Frame::Subscribe { request, consumer, queue, prefetch } => {
                self.subscribe(conn, request, consumer, queue, prefetch)
            }
            Frame::Cancel { request, consumer } => {
                let session = self.sessions.get_mut(&conn).expect("session of a frame");
                match session.subscriptions.remove(&consumer) {
                    Some(queue) => {
                        let owner = shard_of(&queue, self.config.shard_count);
                        let queue = queue.to_string();
                        self.send(owner, ShardMessage::Cancel { origin, request: Some(request), consumer, queue });
                    }
                    None => {
                        let message = format!("consumer {} does not subscribe", consumer.0);
                        self.write_frame(conn, &Frame::Failed { request, code: ErrorCode::NotFound, message });
                    }
                }
            }
            Frame::HaStatus { request } => {
                let reply = self.ha.status_reply(request);
                self.write_frame(conn, &reply);
            }
            Frame::HaPromote { request } => {
                let change = ConfigRequest::HaPromote;
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::Heartbeat => {
                // Echoed so that a client detects a dead or stalled broker by the silence
                // (PROTOCOL.md 1.3); a backup link's heartbeats are its own business.
                if !self.is_backup_link(conn) {
                    self.write_frame(conn, &Frame::Heartbeat);
                }
            }
            other => {
                let message = format!("a client may not send {}", other.name());
                self.fail_connection(conn, ErrorCode::UnexpectedFrame, message);
            }
        }
    }

    /// Routes one publish frame and gathers its enqueues per owning shard; `flush_enqueues`
    /// sends them (to ourselves too) at the end of the read, so local and remote queues take the
    /// same path and every queue is looked up once per run of messages, not once per message.
    fn publish(&mut self, conn: ConnId, exchange: &str, first_seq: Seq, messages: Vec<Message>) {
        let inflight_max = self.config.publish_inflight_max;
        // On an HA backup nothing is routed: every message is confirmed as refused.
        let refusal = self.ha.refusal("publish").map(|reason| {
            self.counters.requests_refused_not_primary += 1;
            ConfirmOutcome::Rejected { code: ErrorCode::NotPrimary, reason }
        });
        let session = self.sessions.get_mut(&conn).expect("session of a frame");
        let expected = *session.next_seq.get_or_insert(first_seq);
        if first_seq != expected {
            let message = format!("publish sequence must continue at {}; got {}", expected.0, first_seq.0);
            self.fail_connection(conn, ErrorCode::Malformed, message);
            return;
        }
        session.next_seq = Some(Seq(first_seq.0 + messages.len() as u64));
        let tracker = session.tracker.get_or_insert_with(|| CompletionTracker::new(inflight_max as usize));
        let mut targets = std::mem::take(&mut self.route_scratch);
        // Messages of a batch usually share their routing key: route each distinct key once.
        let mut routed_key: Option<bytes::Bytes> = None;
        let mut routed: Result<(), ConfirmOutcome> = Ok(());

        let mut overflow = false;
        for (offset, message) in messages.into_iter().enumerate() {
            let seq = Seq(first_seq.0 + offset as u64);
            if let Some(outcome) = &refusal {
                routed = Err(outcome.clone());
            } else if routed_key.as_ref() != Some(&message.routing_key) {
                targets.clear();
                routed = self
                    .routing
                    .route(exchange, &message.routing_key, &mut targets)
                    .map_err(|error| ConfirmOutcome::Rejected { code: error.code(), reason: error.to_string() });
                routed_key = Some(message.routing_key.clone());
            }
            let target_count = if routed.is_err() { 1 } else { targets.len() as u32 };
            if tracker.handle_publish(seq, target_count).is_err() {
                overflow = true;
                break;
            }
            if let Err(outcome) = &routed {
                tracker.handle_enqueued(seq, outcome.clone());
                continue;
            }
            let mut message = Some(message);
            for (index, queue) in targets.iter().enumerate() {
                // Every target but the last gets a clone (reference counts, not bytes).
                let message = if index + 1 == targets.len() { message.take() } else { message.clone() };
                let owner = shard_of(queue, self.config.shard_count);
                let item = EnqueueItem { queue: queue.clone(), seq, message: message.expect("message present") };
                self.pending_enqueues[usize::from(owner.0)].push(item);
            }
        }
        self.route_scratch = targets;
        if overflow {
            let message = format!("more than {inflight_max} publishes unconfirmed; wait for confirms");
            self.fail_connection(conn, ErrorCode::LimitExceeded, message);
            return;
        }
        self.mark_confirms_due(conn);
    }

    /// Sends the enqueues gathered while reading `conn` to their shards; ours are stored now.
    fn flush_enqueues(&mut self, conn: ConnId) {
        let origin = self.conn_ref(conn);
        for shard in 0..self.config.shard_count {
            let items = std::mem::take(&mut self.pending_enqueues[usize::from(shard)]);
            if items.is_empty() {
                continue;
            }
            if ShardId(shard) == self.id {
                self.enqueue_batch(origin, items);
            } else {
                self.send(ShardId(shard), ShardMessage::Enqueue { origin, items });
            }
        }
    }

    /// Stores a batch of enqueues and reports the outcomes to the producer's shard. On a primary,
    /// a message stored in an `all` queue is reported to replication, holding its confirm for
    /// every backup stream of this shard. A duplicate (its queue's dedup window knows its key) is
    /// not stored, and is confirmed as stored: at once, unless it is in an `all` queue of a primary
    /// whose streams hold confirms; then it takes as many holds as an enqueue and is reported as a
    /// `ReplicationEvent::Barrier`, so that its confirm waits until every holding backup has what
    /// the original was (PROTOCOL.md 2.5.4).
    fn enqueue_batch(&mut self, origin: ConnRef, items: Vec<EnqueueItem>) {
        let replicating = self.replicating();
        let stream_holds = if replicating { self.replica_holds } else { 0 };
        let gating = self.delivery_reports;
        let mut results: Vec<EnqueueResult> = Vec::new();
        let mut items = items.into_iter().peekable();
        while let Some(first) = items.next() {
            // A run of items for the same queue costs one lookup.
            let queue_name = first.queue.clone();
            let mut queue = self.queues.get_mut(&queue_name);
            let mut item = Some(first);
            while let Some(current) = item.take() {
                let mut holds = 0;
                let outcome = match queue.as_deref_mut() {
                    Some(queue) => {
                        // A clone costs reference counts, not bytes; only replicated messages pay it.
                        let replicated =
                            (replicating && queue.level().replicates_messages()).then(|| current.message.clone());
                        match queue.enqueue(current.message) {
                            // Held already (or it was, and was consumed): not stored again. On a
                            // primary whose streams hold confirms, the original may not be on every
                            // backup yet: the duplicate takes the holds an enqueue would, released by
                            // a `Barrier` once each backup confirmed what it was fed of the queue.
                            Ok(Enqueued::Duplicate) => {
                                self.counters.duplicates_suppressed += 1;
                                if replicated.is_some() && stream_holds > 0 {
                                    let hold = Hold { shard: origin.shard, conn: origin.conn, seq: current.seq };
                                    holds = stream_holds;
                                    let queue = queue_name.clone();
                                    self.replication.push(ReplicationEvent::Barrier { queue, hold, holders: holds });
                                }
                                ConfirmOutcome::Stored
                            }
                            Ok(Enqueued::At(position)) => {
                                if let Some(message) = replicated {
                                    let hold = (stream_holds > 0).then_some(Hold {
                                        shard: origin.shard,
                                        conn: origin.conn,
                                        seq: current.seq,
                                    });
                                    holds = if hold.is_some() { stream_holds } else { 0 };
                                    // Held for the backups: consumers get it once they hold it
                                    // too (`handle_replicated`).
                                    if hold.is_some() && gating {
                                        queue.gate_delivery(position);
                                    } else {
                                        queue.open_delivery_to(position);
                                    }
                                    let queue = queue_name.clone();
                                    self.replication.push(ReplicationEvent::Enqueued {
                                        queue,
                                        position,
                                        message,
                                        hold,
                                        holders: holds,
                                    });
                                }
                                ConfirmOutcome::Stored
                            }
                            Err(error) => ConfirmOutcome::Rejected { code: error.code(), reason: error.to_string() },
                        }
                    }
                    // Deleted between routing and arrival.
                    None => ConfirmOutcome::Rejected {
                        code: ErrorCode::NotFound,
                        reason: format!("no queue '{queue_name}'"),
                    },
                };
                match results.last_mut() {
                    Some(result)
                        if result.range.last.next() == current.seq
                            && result.range.outcome == outcome
                            && result.holds == holds =>
                    {
                        result.range.last = current.seq
                    }
                    _ => results.push(EnqueueResult {
                        range: ConfirmRange { first: current.seq, last: current.seq, outcome },
                        holds,
                    }),
                }
                item = items.next_if(|next| Arc::ptr_eq(&next.queue, &queue_name) || next.queue == queue_name);
            }
            if queue.is_some_and(|q| q.can_deliver()) {
                self.dirty_queues.insert(queue_name);
            }
        }
        if origin.shard == self.id {
            for result in results {
                self.record_enqueued(origin.conn, result);
            }
        } else {
            self.send(origin.shard, ShardMessage::Enqueued { conn: origin.conn, results });
        }
    }

    /// One target of each seq in the result's range reported, after its holds were taken.
    fn record_enqueued(&mut self, conn: ConnId, result: EnqueueResult) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            self.counters.to_closed_connection += 1;
            return;
        };
        let tracker = session.tracker.as_mut().expect("enqueue result for a connection that never published");
        let EnqueueResult { range, holds } = result;
        let mut seq = range.first;
        while seq <= range.last {
            if holds > 0 {
                // Before the report, so the confirm cannot be released without the backups.
                tracker.handle_hold(seq, holds);
            }
            tracker.handle_enqueued(seq, range.outcome.clone());
            seq = seq.next();
        }
        if !session.confirms_due {
            session.confirms_due = true;
            self.confirms_due.push(conn);
        }
    }

    /// One hold on publish `seq` of local connection `conn` is released.
    fn release_hold(&mut self, conn: ConnId, seq: Seq) {
        let Some(tracker) = self.sessions.get_mut(&conn).and_then(|s| s.tracker.as_mut()) else {
            self.counters.holds_released_to_closed_connection += 1;
            return;
        };
        tracker.handle_hold_released(seq);
        self.mark_confirms_due(conn);
    }

    /// Whether this shard reports replication events: the broker is a primary of an HA cluster.
    fn replicating(&self) -> bool {
        matches!(self.ha.state(), BrokerState::Recovering | BrokerState::Active)
    }

    /// Shard 0 of a primary: reports a configuration event, in the coordinator's order. Other
    /// shards, and shard 0 of a broker not replicating, report nothing (`event` is not built).
    fn report_configuration(&mut self, event: impl FnOnce() -> ReplicationEvent) {
        if self.coordinator.is_some() && self.replicating() {
            self.replication.push(event());
        }
    }

    /// Shard 0: whether a binding is replicated, both its exchange and its queue being
    /// replicated at all, as the coordinator recorded their levels (built-ins have none). False on
    /// other shards.
    fn binding_replicated(&self, binding: &Binding) -> bool {
        let Some(coordinator) = self.coordinator.as_ref() else { return false };
        let exchange = coordinator.exchange_level(&binding.exchange).unwrap_or(ReplicationLevel::None);
        let queue = coordinator.queue_level(&binding.queue).unwrap_or(ReplicationLevel::None);
        binding_replicated(exchange, queue)
    }

    /// Drains the dequeued log of queue `name` after a change, into `Dequeued` events while
    /// replicating (the log is drained, and dropped, on a standalone broker too).
    fn report_dequeued(&mut self, name: &str) {
        let Some((key, queue)) = self.queues.get_key_value(name) else { return };
        let key = key.clone();
        if queue.level() != ReplicationLevel::All {
            return;
        }
        let mut positions = std::mem::take(&mut self.dequeued_scratch);
        self.queues.get_mut(name).expect("queue present").take_dequeued(&mut positions);
        if self.replicating() {
            for position in positions.drain(..) {
                self.replication.push(ReplicationEvent::Dequeued { queue: key.clone(), position });
            }
        }
        positions.clear();
        self.dequeued_scratch = positions;
    }

    fn mark_confirms_due(&mut self, conn: ConnId) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            if !session.confirms_due {
                session.confirms_due = true;
                self.confirms_due.push(conn);
            }
        }
    }

    /// Writes every releasable confirm; the tracker decides which.
    fn release_confirms(&mut self) {
        let mut ranges = Vec::new();
        let mut written = Vec::new();
        for conn in std::mem::take(&mut self.confirms_due) {
            let Some(session) = self.sessions.get_mut(&conn) else { continue };
            session.confirms_due = false;
            if session.closing {
                // Nothing follows an Error frame.
                continue;
            }
            let Some(tracker) = session.tracker.as_mut() else { continue };
            tracker.poll_confirms(&mut ranges);
            if ranges.is_empty() {
                continue;
            }
            for chunk in ranges.chunks(crate::limits::RANGES_MAX as usize) {
                let mut writer = ConfirmWriter::begin(&mut session.out);
                for range in chunk {
                    writer.push(range.clone());
                }
                writer.finish();
            }
            ranges.clear();
            written.push(conn);
        }
        for conn in written {
            self.mark_session(conn);
        }
    }

    fn subscribe(&mut self, conn: ConnId, request: RequestId, consumer: ConsumerId, queue: String, prefetch: u32) {
        let origin = self.conn_ref(conn);
        let session = self.sessions.get_mut(&conn).expect("session of a frame");
        let max = crate::limits::CONSUMERS_PER_CONNECTION_MAX as usize;
        let failure = if session.subscriptions.contains_key(&consumer) {
            Some((ErrorCode::PreconditionFailed, format!("consumer {} already subscribes", consumer.0)))
        } else if session.subscriptions.len() >= max {
            Some((ErrorCode::LimitExceeded, format!("a connection may have at most {max} consumers")))
        } else {
            None
        };
        if let Some((code, message)) = failure {
            self.write_frame(conn, &Frame::Failed { request, code, message });
            return;
        }
        session.subscriptions.insert(consumer, Arc::from(queue.as_str()));
        let owner = shard_of(&queue, self.config.shard_count);
        self.send(owner, ShardMessage::Subscribe { origin, request, consumer, queue, prefetch });
    }

    fn subscribe_local(
        &mut self,
        origin: ConnRef,
        consumer: ConsumerId,
        queue: &str,
        prefetch: u32,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(entry) = self.queues.get_mut(queue) else {
            return Err((ErrorCode::NotFound, format!("no queue '{queue}'")));
        };
        if let Some(owner) = entry.exclusive_owner() {
            if owner != (origin.shard, origin.conn) {
                return Err((ErrorCode::ResourceLocked, format!("queue '{queue}' is exclusive to another connection")));
            }
        }
        let key = SubscriberKey { shard: origin.shard, conn: origin.conn, consumer };
        entry.subscribe(key, prefetch).map_err(|error| (ErrorCode::InvalidArgument, error.to_string()))?;
        self.mark_queue(queue);
        Ok(())
    }

    fn cancel_local(&mut self, origin: ConnRef, consumer: ConsumerId, queue: &str) {
        let Some(entry) = self.queues.get_mut(queue) else { return };
        let key = SubscriberKey { shard: origin.shard, conn: origin.conn, consumer };
        if entry.cancel(key) {
            let emptied = entry.consumer_count() == 0 && entry.options().auto_delete;
            self.mark_queue(queue);
            if emptied {
                self.request_auto_delete(queue.to_string());
            }
        }
    }

    /// Asks the coordinator for a routing change that a replication record made; nobody is
    /// answered.
    fn request_replica_change(&mut self, change: ConfigRequest) {
        let origin = self.conn_ref(BROKER_ITSELF);
        self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: None, change });
    }

    /// Asks the coordinator to delete an auto-delete queue that lost its last consumer. The
    /// broker itself asks, so no connection is answered: the request carries no id, and the
    /// origin only fills the field.
    fn request_auto_delete(&mut self, name: String) {
        let origin = self.conn_ref(BROKER_ITSELF);
        let change = ConfigRequest::AutoDelete { name };
        self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: None, change });
    }

    fn deliver_dirty_queues(&mut self) {
        let batch_max = self.config.deliver_batch_max;
        let mut batches: Vec<DeliveryBatch> = Vec::new();
        for name in std::mem::take(&mut self.dirty_queues) {
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.poll_deliveries(batch_max, |batch| batches.push(batch));
            }
        }
        for batch in batches {
            let key = batch.subscriber;
            if key.shard == self.id {
                self.write_deliveries(key.conn, key.consumer, batch.first_tag, batch.messages);
            } else {
                let message = ShardMessage::Deliver {
                    conn: key.conn,
                    consumer: key.consumer,
                    first_tag: batch.first_tag,
                    messages: batch.messages,
                };
                self.send(key.shard, message);
            }
        }
    }

    /// Writes deliveries to a consumer's connection, in frames of at most
    /// `DELIVER_FRAME_BYTES_TARGET` (a single larger message goes alone in its frame).
    fn write_deliveries(&mut self, conn: ConnId, consumer: ConsumerId, first_tag: Tag, messages: Vec<Delivered>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            self.counters.to_closed_connection += 1;
            return;
        };
        if !session.subscriptions.contains_key(&consumer) || session.closing {
            // Cancelled meanwhile: the queue took these back when it processed the cancel. Or the
            // connection is closing after an Error: nothing follows it, and the queue takes these
            // back when the close arrives.
            self.counters.to_closed_connection += 1;
            return;
        }
        let total: usize = messages.iter().map(|d| codec::message_bytes_len(&d.message) + 1).sum();
        session.out.reserve(total + DELIVER_FRAME_OVERHEAD_BYTES * (1 + total / DELIVER_FRAME_BYTES_TARGET));
        let mut tag = first_tag;
        let mut remaining = messages.iter().peekable();
        while remaining.peek().is_some() {
            let mut writer = DeliverWriter::begin(&mut session.out, consumer, tag);
            while let Some(delivered) = remaining.peek() {
                let size = codec::message_bytes_len(&delivered.message) + 1;
                if writer.count() > 0 && writer.bytes_len() + size > DELIVER_FRAME_BYTES_TARGET {
                    break;
                }
                writer.push(delivered.redelivered, &delivered.message);
                tag = tag.next();
                remaining.next();
            }
            writer.finish();
        }
        self.mark_session(conn);
    }

    fn gather_queue_infos(&mut self, conn: ConnId, request: RequestId, queues: Vec<QueueInfo>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            self.counters.to_closed_connection += 1;
            return;
        };
        let Some((remaining, gathered)) = session.list_gathers.get_mut(&request) else { return };
        gathered.extend(queues);
        *remaining -= 1;
        if *remaining > 0 {
            return;
        }
        let (_, mut queues) = session.list_gathers.remove(&request).expect("gather present");
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_frame(conn, &Frame::QueueListReply { request, queues });
    }

    /// Shard 0: decide a configuration request, apply it here, broadcast it.
    fn coordinate(&mut self, origin: ConnRef, request: Option<RequestId>, change: ConfigRequest) {
        let coordinator = self.coordinator.as_ref().expect("configuration request sent to a non-coordinator");
        let changes = match coordinator.decide(origin, request, change) {
            Decision::Reply(frame) => {
                if request.is_some() {
                    self.reply(origin, frame);
                }
                return;
            }
            Decision::Apply(changes) => changes,
        };
        let count = changes.len();
        if count == 0 {
            if let Some(request) = request {
                self.reply(origin, Frame::Ok { request });
            }
            return;
        }
        for (index, change) in changes.into_iter().enumerate() {
            // Only the last change answers the request.
            let answer = if index + 1 == count { request } else { None };
            if let Err((code, message)) = self.apply_config(change.clone()) {
                match answer {
                    Some(request) => self.reply(origin, Frame::Failed { request, code, message }),
                    None if request.is_none() => self.counters.own_changes_refused += 1,
                    None => {}
                }
                continue;
            }
            let coordinator = self.coordinator.as_mut().expect("coordinator");
            let id = coordinator.record_applied(&change);
            // Pair assertion: the coordinator's HA state and this shard's copy moved together.
            assert_eq!(coordinator.ha_state(), self.ha.state(), "coordinator and shard 0 disagree on HA state");
            let others = self.config.shard_count - 1;
            if others == 0 {
                if let Some(request) = answer {
                    self.reply(origin, Frame::Ok { request });
                }
                continue;
            }
            coordinator.await_applied(id, origin, answer, others);
            for shard in 1..self.config.shard_count {
                self.send(ShardId(shard), ShardMessage::ApplyConfig { id, change: change.clone() });
            }
        }
    }

    /// Applies a configuration change to this shard's routing table and queues.
    fn apply_config(&mut self, change: ConfigChange) -> Result<(), (ErrorCode, String)> {
        let routing_error = |e: crate::model::routing_table::RoutingError| (e.code(), e.to_string());
        match change {
            ConfigChange::CreateQueue { name, options, exclusive_owner, level } => {
                let declared = self.routing.add_queue(&name).map_err(routing_error)?;
                let owner = shard_of(&name, self.config.shard_count) == self.id;
                if !owner && declared == Declared::Created && level.replicates_configuration() {
                    // Shard 0's configuration stream; an owner reports its own queues below.
                    let name: Arc<str> = Arc::from(name.as_str());
                    self.report_configuration(|| ReplicationEvent::QueueCreated { name, options, level });
                    return Ok(());
                }
                // A queue held here already is kept, with its messages.
                if owner && !self.queues.contains_key(name.as_str()) {
                    let owner = exclusive_owner.map(|c| (c.shard, c.conn));
                    let key: Arc<str> = Arc::from(name.as_str());
                    let mut queue =
                        Queue::new(name, options.clone(), owner, level).with_dedup_window(self.config.dedup_window);
                    queue.continue_from(self.deleted_positions_high);
                    if self.replicating() {
                        queue.begin_epoch(self.ha.epoch());
                        if level.replicates_configuration() {
                            self.replication.push(ReplicationEvent::QueueCreated { name: key.clone(), options, level });
                        }
                    }
                    self.queues.insert(key, queue);
                }
                Ok(())
            }
            ConfigChange::AddReplicaQueue { name, options: _ } => {
                self.routing.add_queue(&name).map(|_| ()).map_err(routing_error)
            }
            ConfigChange::RemoveReplicaQueue { name } => {
                self.routing.remove_queue(&name).map(|_| ()).map_err(routing_error)
            }
            ConfigChange::DeleteQueue { name } => {
                // Asked before the coordinator forgets the queue (it records after applying).
                let level = self.coordinator.as_ref().and_then(|c| c.queue_level(&name));
                self.routing.remove_queue(&name).map_err(routing_error)?;
                if shard_of(&name, self.config.shard_count) != self.id
                    && level.is_some_and(ReplicationLevel::replicates_configuration)
                {
                    let name: Arc<str> = Arc::from(name.as_str());
                    self.report_configuration(|| ReplicationEvent::QueueDeleted { name });
                }
                if let Some((key, queue)) = self.queues.remove_entry(name.as_str()) {
                    self.deleted_positions_high = self.deleted_positions_high.max(queue.next_position());
                    if self.replicating() && queue.level().replicates_configuration() {
                        self.replication.push(ReplicationEvent::QueueDeleted { name: key });
                    }
                    self.dirty_queues.remove(name.as_str());
                    let subscribers: Vec<SubscriberKey> = queue.subscribers().collect();
                    for key in subscribers {
                        let reason = format!("queue '{name}' was deleted");
                        let frame = Frame::ConsumerCancelled { consumer: key.consumer, reason };
                        self.send(key.shard, ShardMessage::Reply { conn: key.conn, frame });
                    }
                }
                Ok(())
            }
            ConfigChange::CreateExchange { name, kind, level } => {
                let declared = self.routing.declare_exchange(&name, kind).map_err(routing_error)?;
                if declared == Declared::Created && level.replicates_configuration() {
                    let name: Arc<str> = Arc::from(name.as_str());
                    self.report_configuration(|| ReplicationEvent::ExchangeCreated { name, kind });
                }
                Ok(())
            }
            ConfigChange::DeleteExchange { name } => {
                // Asked before the coordinator forgets the exchange (it records after applying).
                let level = self.coordinator.as_ref().and_then(|c| c.exchange_level(&name));
                self.routing.delete_exchange(&name).map_err(routing_error)?;
                if level.is_some_and(ReplicationLevel::replicates_configuration) {
                    let name: Arc<str> = Arc::from(name.as_str());
                    self.report_configuration(|| ReplicationEvent::ExchangeDeleted { name });
                }
                Ok(())
            }
            ConfigChange::Bind(binding) => {
                let bound = self.routing.bind(&binding).map_err(routing_error)?;
                if bound == Bound::Created && self.binding_replicated(&binding) {
                    self.report_configuration(|| ReplicationEvent::Bound {
                        exchange: Arc::from(binding.exchange.as_str()),
                        queue: Arc::from(binding.queue.as_str()),
                        key: Arc::from(binding.key.as_str()),
                    });
                }
                Ok(())
            }
            ConfigChange::Unbind(binding) => {
                self.routing.unbind(&binding).map_err(routing_error)?;
                if self.binding_replicated(&binding) {
                    self.report_configuration(|| ReplicationEvent::Unbound {
                        exchange: Arc::from(binding.exchange.as_str()),
                        queue: Arc::from(binding.queue.as_str()),
                        key: Arc::from(binding.key.as_str()),
                    });
                }
                Ok(())
            }
            ConfigChange::HaState { state, epoch, cause } => {
                self.ha.handle_change(state, epoch, cause);
                if state == BrokerState::Recovering {
                    for queue in self.queues.values_mut() {
                        queue.begin_epoch(epoch);
                        queue.mark_redelivered();
                    }
                }
                if state == BrokerState::Recovering || !self.replicating() {
                    // Promoted, or no longer a primary: no stream gates what is held, so nothing
                    // waits for a confirm that will not come.
                    for (name, queue) in &mut self.queues {
                        queue.open_delivery();
                        if queue.can_deliver() {
                            self.dirty_queues.insert(name.clone());
                        }
                    }
                }
                if cause == TransitionCause::SupersededByNewerEpoch {
                    self.close_clients_superseded();
                }
                Ok(())
            }
        }
    }

    /// A newer primary exists: every client connection (not admin ones) gets `NotPrimary` and is
    /// closed, so that nothing more is published to or consumed from this broker's copy.
    fn close_clients_superseded(&mut self) {
        let clients: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(s.kind, Some(ConnectionKind::Client | ConnectionKind::BackupLink)) && !s.closing)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in clients {
            let message = "this broker was a primary and another broker was promoted in a newer epoch; connect to the \
                           new primary"
                .to_string();
            self.counters.refused_not_primary += 1;
            self.close_with_error(conn, ErrorCode::NotPrimary, message);
        }
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

    fn fail_decode(&mut self, conn: ConnId, error: &DecodeError) {
        self.fail_connection(conn, error.code(), error.to_string());
    }

    /// Writes an `Error` frame and marks the connection to be closed once it is written.
    fn fail_connection(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.counters.protocol_errors += 1;
        self.close_with_error(conn, code, message);
    }

    /// Writes an `Error` frame and marks the connection to be closed once it is written, without
    /// counting it as the client's protocol error.
    fn close_with_error(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.write_frame(conn, &Frame::Error { code, message });
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.closing = true;
        }
        self.mark_session(conn);
    }
}

/// The request id of a frame that would change a replicated object (and so is refused on an HA
/// backup); `None` for reads, settles, cancels and heartbeats. Passive declares only read. A
/// publish has no request id: `publish` refuses it through its confirms.
fn changes_replicated_state(frame: &Frame) -> Option<RequestId> {
    match frame {
        Frame::QueueDeclare { request, options, .. } if !options.passive => Some(*request),
        Frame::ExchangeDeclare { request, passive: false, .. } => Some(*request),
        Frame::QueueDelete { request, .. }
        | Frame::QueuePurge { request, .. }
        | Frame::ExchangeDelete { request, .. }
        | Frame::Bind { request, .. }
        | Frame::Unbind { request, .. }
        | Frame::Subscribe { request, .. } => Some(*request),
        _ => None,
    }
}

/// The origin of requests the broker makes by itself; never answered, so never looked up.
const BROKER_ITSELF: ConnId = ConnId(u32::MAX);

/// Appends `keys` (a queue's dedup window) as `DedupSeen` events of at most
/// `DEDUP_SEEN_RANGES_MAX` ranges each (a producer's ranges may be split across two); nothing
/// when empty.
fn push_dedup_seen(queue: &Arc<str>, keys: DedupSeenKeys, out: &mut Vec<ReplicationEvent>) {
    let mut chunk: DedupSeenKeys = Vec::new();
    let mut ranges_in_chunk = 0;
    for (producer, ranges) in keys {
        let mut ranges = &ranges[..];
        while !ranges.is_empty() {
            let take = ranges.len().min(DEDUP_SEEN_RANGES_MAX - ranges_in_chunk);
            chunk.push((producer.clone(), ranges[..take].to_vec()));
            ranges_in_chunk += take;
            ranges = &ranges[take..];
            if ranges_in_chunk == DEDUP_SEEN_RANGES_MAX {
                out.push(ReplicationEvent::DedupSeen { queue: queue.clone(), keys: std::mem::take(&mut chunk) });
                ranges_in_chunk = 0;
            }
        }
    }
    if !chunk.is_empty() {
        out.push(ReplicationEvent::DedupSeen { queue: queue.clone(), keys: chunk });
    }
}

fn not_found_queue(request: RequestId, queue: &str) -> Frame {
    Frame::Failed { request, code: ErrorCode::NotFound, message: format!("no queue '{queue}'") }
}
