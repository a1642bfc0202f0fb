//! Configuration: declares, deletes, binds and HA state changes go to shard 0's coordinator
//! (`coordinate`), which decides them in one order and broadcasts the changes; every shard applies
//! each change to its routing table and queues (`apply_config`). Shard 0 also takes the HA layer's
//! state transitions and the primary's epoch.
//!
//! Invariants:
//! - Every shard's routing table sees the same configuration changes in the same order (the
//!   coordinator's), so routing the same publish gives the same queues on every shard.
//! - On shard 0, the `HaView`'s state equals the coordinator's after every applied change.

use super::*;

impl Shard {
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

    /// Shard 0: a promotion check fenced this broker (`HaFence`) for a candidate that knows
    /// `candidate`: it acknowledges no ready set of a primary of that epoch, of the newest epoch it
    /// has seen itself, or older (a broker that restarted knows no epoch, but its next primary
    /// may be the one the candidate replaces).
    ///
    /// # Panics
    /// On a shard other than 0.
    pub fn fence_for_promotion(&mut self, candidate: Epoch) {
        let coordinator = self.coordinator.as_ref().expect("fence_for_promotion is for shard 0, the coordinator");
        self.ha.fence(coordinator.highest_epoch().max(candidate));
    }

    /// Shard 0: the newest ready set this broker knows changed (`HaStatusReply` shows it).
    ///
    /// # Panics
    /// On a shard other than 0.
    pub fn set_ready_set(&mut self, set: ReadySet) {
        assert_eq!(self.id.0, 0, "the ready set is shard 0's");
        self.ha.set_ready_set(set);
    }

    /// Shard 0: learns the epoch of the primary this backup replicates from, so that a later
    /// promotion takes an epoch above it. Returns how it compares with the highest seen.
    ///
    /// # Panics
    /// On a shard other than 0.
    pub fn observe_epoch(&mut self, epoch: Epoch) -> Observed {
        self.coordinator.as_mut().expect("observe_epoch is for shard 0, the coordinator").observe_epoch(epoch)
    }

    /// Shard 0: answers an `ha-status` or `ha-fence` from `origin`, fencing first for the latter
    /// (the fence concerns only shard 0's replication link, in `ringmq-ha`).
    pub(super) fn answer_ha_status(&mut self, origin: ConnRef, request: RequestId, fence: Option<Epoch>) {
        if let Some(candidate) = fence {
            self.fence_for_promotion(candidate);
        }
        self.reply(origin, self.ha.status_reply(request));
    }

    /// Shard 0: decide a configuration request, apply it here, broadcast it.
    pub(super) fn coordinate(&mut self, origin: ConnRef, request: Option<RequestId>, change: ConfigRequest) {
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
    pub(super) fn apply_config(&mut self, change: ConfigChange) -> Result<(), (ErrorCode, String)> {
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
            ConfigChange::AddReplicaQueue { name, .. } => {
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
                    self.report_configuration(|| ReplicationEvent::ExchangeCreated { name, kind, level });
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

    /// Asks the coordinator to delete an auto-delete queue that lost its last consumer. The
    /// broker itself asks, so no connection is answered: the request carries no id, and the
    /// origin only fills the field.
    pub(super) fn request_auto_delete(&mut self, name: String) {
        let origin = self.conn_ref(BROKER_ITSELF);
        let change = ConfigRequest::AutoDelete { name };
        self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: None, change });
    }
}
