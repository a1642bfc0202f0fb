//! The shard's replication API, both ends: on a primary, the events of every change to a
//! replicated queue, exchange or binding (`poll_replication`), the holds on publish confirms and
//! the delivery bounds the HA layer hands back, and the snapshots a backup's catch-up starts from;
//! on a backup, applying the primary's records.
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
//! `Queue` (a `QueueCreated` record makes it at once, at the level the record carries, the
//! primary's, so the records after it apply; `QueueDeleted` drops it), and shard 0 alone changes
//! the routing tables, asking the coordinator for what its configuration records imply (queue
//! names and levels, exchanges and levels, bindings), in their order. A promoted backup so
//! replicates each object as the old primary did: a `configuration` queue without its messages.
//! These requests are the broker's own and are accepted in any HA state, although clients'
//! changes are refused on a backup. Before a full resync, `clear_replicas` drops messages, and on
//! shard 0 every replicated exchange and binding, which the snapshot then re-creates; before a
//! catch-up by difference only the latter (`clear_replica_configuration`), and messages stay. Shard 0 takes
//! the link's state transitions (`handle_ha_transition`) and the primary's epoch
//! (`observe_epoch`). A promotion (`recovering`) makes every owned queue continue its positions in
//! the new epoch (`Queue::begin_epoch`), and a queue created under a deleted one's name continues
//! above its positions: a position names one message of a queue name cluster-wide.
//!
//! Invariants:
//! - Replication events exist only while the state is `recovering` or `active`; per queue they
//!   are in the order of the changes, and shard 0's configuration events in the coordinator's.
//! - A hold's release reaches the producer's tracker after the report that took it (same ring,
//!   later message).
//! - Once `handle_replicated` was called, a message stored with a hold is not delivered before a
//!   later `handle_replicated` reached its position, unless the broker was promoted or stopped
//!   being a primary first.

use super::*;

impl Shard {
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

    /// Releases one hold per entry with a rejection (`code`, `reason`), on the producer's
    /// tracker: here, or through the producer's shard (`ShardMessage::HoldsRejected`); the
    /// publish's confirm is then `Rejected` with them, unless a target rejected it first. Same
    /// rules as `handle_holds_released`.
    pub fn handle_holds_rejected(&mut self, holds: &[Hold], code: ErrorCode, reason: &str) {
        let mut remote: Vec<(ShardId, ConnId, Vec<Seq>)> = Vec::new();
        for hold in holds {
            if hold.shard == self.id {
                self.reject_hold(hold.conn, hold.seq, code, reason);
                continue;
            }
            match remote.iter_mut().find(|(shard, conn, _)| *shard == hold.shard && *conn == hold.conn) {
                Some((_, _, seqs)) => seqs.push(hold.seq),
                None => remote.push((hold.shard, hold.conn, vec![hold.seq])),
            }
        }
        for (shard, conn, seqs) in remote {
            self.send(shard, ShardMessage::HoldsRejected { conn, seqs, code, reason: reason.to_owned() });
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
    pub(super) fn snapshot_configuration(&self, out: &mut Vec<ReplicationEvent>) {
        let Some(coordinator) = self.coordinator.as_ref() else { return };
        for (name, options, level) in coordinator.replicated_queues() {
            if shard_of(name, self.config.shard_count) != self.id {
                out.push(ReplicationEvent::QueueCreated { name: Arc::from(name), options: options.clone(), level });
            }
        }
        for (name, kind, level) in coordinator.replicated_exchanges() {
            out.push(ReplicationEvent::ExchangeCreated { name: Arc::from(name), kind, level });
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
    /// records to the `Queue`: a `QueueCreated` makes it at once (at the record's level, not
    /// exclusive here: its owner is on the primary), so the records after it apply, or gives a
    /// queue held already the record's level; a `QueueDeleted` drops it.
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
            Record::QueueCreated { name, options, level } => {
                assert!(level.replicates_configuration(), "queue-created record of '{name}' at level none");
                let owner = shard_of(&name, self.config.shard_count) == self.id;
                if !owner && !coordinator {
                    self.counters.replica_records_ignored += 1;
                    return;
                }
                let options = QueueOptions { passive: false, exclusive: false, ..options };
                if owner {
                    match self.queues.get_mut(name.as_str()) {
                        // Announced again (a reconnect): the queue here keeps its messages, and
                        // takes the primary's level (the catch-up drops what that level excludes).
                        Some(queue) => queue.set_level(level),
                        None => {
                            let queue = Queue::new(name.clone(), options.clone(), None, level)
                                .with_dedup_window(self.config.dedup_window);
                            self.queues.insert(Arc::from(name.as_str()), queue);
                        }
                    }
                }
                if coordinator {
                    self.request_replica_change(ConfigRequest::ReplicaQueueCreated { name, options, level });
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
            Record::ExchangeCreated { name, kind, level } if coordinator => {
                assert!(level.replicates_configuration(), "exchange-created record of '{name}' at level none");
                self.request_replica_change(ConfigRequest::ReplicaExchangeCreated { name, kind, level });
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

    /// A backup's link on this shard was accepted by the primary at `address` (`host:port`): the
    /// refusal a client gets here names it, unless `ha-public-url` is set.
    pub fn handle_primary_followed(&mut self, address: &str) {
        self.ha.set_primary_followed(address);
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

    /// Whether this shard reports replication events: the broker is a primary of an HA cluster.
    pub(super) fn replicating(&self) -> bool {
        matches!(self.ha.state(), BrokerState::Recovering | BrokerState::Active)
    }

    /// Shard 0 of a primary: reports a configuration event, in the coordinator's order. Other
    /// shards, and shard 0 of a broker not replicating, report nothing (`event` is not built).
    pub(super) fn report_configuration(&mut self, event: impl FnOnce() -> ReplicationEvent) {
        if self.coordinator.is_some() && self.replicating() {
            self.replication.push(event());
        }
    }

    /// Shard 0: whether a binding is replicated, both its exchange and its queue being
    /// replicated at all, as the coordinator recorded their levels (built-ins have none). False on
    /// other shards.
    pub(super) fn binding_replicated(&self, binding: &Binding) -> bool {
        let Some(coordinator) = self.coordinator.as_ref() else { return false };
        let exchange = coordinator.exchange_level(&binding.exchange).unwrap_or(ReplicationLevel::None);
        let queue = coordinator.queue_level(&binding.queue).unwrap_or(ReplicationLevel::None);
        binding_replicated(exchange, queue)
    }

    /// Drains the dequeued log of queue `name` after a change, into `Dequeued` events while
    /// replicating (the log is drained, and dropped, on a standalone broker too).
    pub(super) fn report_dequeued(&mut self, name: &str) {
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

    /// Asks the coordinator for a routing change that a replication record made; nobody is
    /// answered.
    pub(super) fn request_replica_change(&mut self, change: ConfigRequest) {
        let origin = self.conn_ref(BROKER_ITSELF);
        self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: None, change });
    }
}

/// Appends `keys` (a queue's dedup window) as `DedupSeen` events of at most
/// `DEDUP_SEEN_RANGES_MAX` ranges each (a producer's ranges may be split across two); nothing
/// when empty.
pub(super) fn push_dedup_seen(queue: &Arc<str>, keys: DedupSeenKeys, out: &mut Vec<ReplicationEvent>) {
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
