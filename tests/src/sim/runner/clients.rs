//! The producer, the consumer and the cluster manager: bytes for them, what they ask for
//! (connect, write, close), and what they report to the oracle (published, confirmed, received).
//!
//! Invariants:
//! - Every confirm and delivery a client reports is checked by the oracle at once.

use super::*;

impl Simulation {
    /// Bytes for a client.
    pub(super) fn client_bytes(&mut self, client: usize, conn: SimConnId, bytes: &[u8]) -> Result<(), Violation> {
        let mut actions = std::mem::take(&mut self.actions);
        let mut notes = std::mem::take(&mut self.notes);
        actions.clear();
        notes.clear();
        let received = match client {
            PRODUCER => self.producer.received(bytes, self.now, &mut actions, &mut notes),
            CONSUMER => self.consumer.received(bytes, self.now, &mut self.rng, &mut actions, &mut notes),
            _ => match self.manager.received(conn, bytes, &mut actions) {
                Ok(Some((broker, answer))) => {
                    self.trace.record(format!("{} manager: promote b{broker}: {answer:?}", self.now));
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            },
        };
        if let Err(error) = received {
            return Err(violation("protocol", format!("client {client} on {conn}: {error}")));
        }
        self.client_actions(client, &mut actions)?;
        self.client_notes(&mut notes)?;
        self.actions = actions;
        self.notes = notes;
        Ok(())
    }

    /// Carries out a client's actions.
    pub(super) fn client_actions(&mut self, client: usize, actions: &mut Vec<ClientAction>) -> Result<(), Violation> {
        for action in actions.drain(..) {
            match action {
                ClientAction::Dial { broker } => {
                    let address = self.brokers[broker].address().to_string();
                    self.dial(Dialer::Client(client), &address);
                }
                ClientAction::Write { conn, bytes } => {
                    if let Some(at) = self.network.send(conn, 0, bytes, self.now, &mut self.rng) {
                        self.queue.schedule(at, Event::Pipe { conn, dir: 0 });
                    }
                }
                ClientAction::Close { conn } => {
                    if let Some(at) = self.network.send_fin(conn, 0, self.now, &mut self.rng) {
                        self.queue.schedule(at, Event::Pipe { conn, dir: 0 });
                    }
                }
                ClientAction::WakeAt(at) => self.queue.schedule(at.max(self.now), Event::ClientWake { client }),
            }
        }
        Ok(())
    }

    /// Hands a client's notes to the oracle.
    pub(super) fn client_notes(&mut self, notes: &mut Vec<ClientNote>) -> Result<(), Violation> {
        for note in notes.drain(..) {
            match note {
                ClientNote::Confirmed { number, conn, published_at } => {
                    let Some(broker) = self.broker_of(conn) else { continue };
                    if self.trace.verbose() {
                        self.trace.record(format!("{} producer: {number} confirmed by b{}", self.now, broker.0));
                    }
                    let superseded = self.oracle.superseded(broker.0);
                    let holders = self.linked_holders(broker.0, published_at, number);
                    let keepers = std::iter::once(broker.0)
                        .chain(holders.iter().filter(|(_, holds)| *holds).map(|&(backup, _)| backup))
                        .map(|keeper| (keeper, self.brokers[keeper].incarnation))
                        .collect();
                    self.oracle.confirmed(number, self.now, superseded, &holders, keepers)?;
                    if !superseded {
                        let members = self.ready_set_holders(broker.0, number);
                        self.oracle.confirmed_by_ready_set(number, broker.0, &members)?;
                    }
                }
                ClientNote::Delivered { number, redelivered, conn } => {
                    let Some(broker) = self.broker_of(conn) else { continue };
                    if self.trace.verbose() {
                        self.trace.record(format!("{} consumer got {number} redelivered={redelivered}", self.now));
                    }
                    self.oracle.delivered(number, redelivered, conn, broker)?;
                    // Delivery waits for the backups: a message first published after a backup
                    // linked took a hold for it, and is delivered only once that backup has it.
                    if let Some(first_sent) = self.producer.first_sent(number) {
                        let holders = self.linked_holders(broker.0, first_sent, number);
                        self.oracle.delivered_held(number, &holders)?;
                    }
                }
                ClientNote::Acked { numbers, conn } => {
                    let Some(broker) = self.broker_of(conn) else { continue };
                    let offset = self.network.connections.get(&conn).map_or(u64::MAX, |c| c.pipes[0].sent_bytes);
                    self.oracle.acked(&numbers, conn, offset, broker);
                }
                ClientNote::Rejected { number, reason } => {
                    self.trace.record(format!("{} producer: {number} rejected: {reason}", self.now));
                }
                ClientNote::Served { broker } => {
                    self.trace.record(format!("{} client served by b{broker}", self.now));
                }
            }
        }
        Ok(())
    }

    /// Whether `peer` answers an admin connection from `broker`'s host (the cluster manager runs
    /// its check there, as a resource agent does).
    fn answers(&self, broker: usize, peer: usize) -> bool {
        peer != broker
            && self.brokers[peer].reachable()
            && !self.partitioned(broker, peer)
            && !self.partitioned(peer, broker)
    }

    /// `ringmq_ha::promotion_check` for the ready `broker`, on what the brokers that answer from
    /// its host would say.
    fn promotion_check(&self, broker: usize) -> Result<(), PromotionRefused> {
        let candidate = self.brokers[broker].member_status().expect("a reachable broker is up");
        let peers: Vec<(String, Option<MemberStatus>)> = (0..self.brokers.len())
            .filter(|&peer| peer != broker)
            .map(|peer| {
                let answer = self.answers(broker, peer).then(|| self.brokers[peer].member_status()).flatten();
                (format!("b{peer}"), answer)
            })
            .collect();
        check_ready_promotion(&candidate, &peers)
    }

    /// The cluster manager's tick.
    pub(super) fn manager_tick(&mut self) -> Result<(), Violation> {
        for broker in 0..self.brokers.len() {
            if self.brokers[broker].reachable() {
                // A status probe is an input: the broker first runs what is due (a resumed ready
                // broker whose lease ended answers `joining`).
                let node = self.brokers[broker].node_ref(0);
                self.with_node(node, |node, now| node.handle_timeout(now))?;
            }
        }
        let statuses: Vec<BrokerStatus> = (0..self.brokers.len())
            .map(|broker| {
                let b = &self.brokers[broker];
                let state = b.status().map(|(s, _)| s);
                let checked = match state {
                    Some(BrokerState::Ready) if b.reachable() => Some(self.promotion_check(broker)),
                    _ => None,
                };
                BrokerStatus { reachable: b.reachable(), state, checked }
            })
            .collect();
        if self.trace.verbose() {
            for (broker, status) in statuses.iter().enumerate() {
                if let Some(Err(refused)) = &status.checked {
                    self.trace.record(format!("{} manager: b{broker} not promotable: {refused}", self.now));
                }
            }
        }
        match self.manager.tick(self.now, &statuses, &mut self.rng) {
            ManagerDecision::Wait => Ok(()),
            ManagerDecision::Promote(broker) => {
                self.trace.record(format!("{} manager promotes b{broker} ({:?})", self.now, statuses[broker].state));
                if statuses[broker].state == Some(BrokerState::Ready) {
                    // `ringmq ha promote` fences every broker that answers before it promotes.
                    let candidate = self.brokers[broker].member_status().expect("a ready broker is up");
                    let known = Epoch(candidate.epoch.max(candidate.ready_set.epoch));
                    let answering: Vec<usize> =
                        (0..self.brokers.len()).filter(|&peer| self.answers(broker, peer)).collect();
                    for peer in answering {
                        let node = self.brokers[peer].node_ref(0);
                        self.with_node(node, |node, now| node.handle_fence(known, now))?;
                    }
                }
                let mut actions = std::mem::take(&mut self.actions);
                actions.clear();
                self.manager.begin(broker, self.now, &mut actions);
                self.client_actions(MANAGER, &mut actions)?;
                self.actions = actions;
                Ok(())
            }
            ManagerDecision::RestartCluster => {
                self.trace.record(format!("{} manager restarts the cluster: no broker can become primary", self.now));
                self.oracle.cluster_restarted();
                for broker in 0..self.brokers.len() {
                    if self.brokers[broker].up() {
                        self.crash(broker, None);
                    }
                    self.queue.schedule(self.now, Event::Restart { broker });
                }
                Ok(())
            }
        }
    }
}
