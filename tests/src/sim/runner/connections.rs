//! The brokers' and clients' connections over the simulated network: dials and their answers,
//! accepts, bytes delivered from a pipe to a node or a client, reads held back while producers
//! must pause, and ends of connections.
//!
//! Invariants:
//! - A node reads a connection's bytes in the order they arrived; bytes it did not consume stay
//!   in its buffer only while the node still knows the connection.
//! - Every dial is answered exactly once (a connection or a failure).

use super::*;

impl Simulation {
    /// Opens a connection from `dialer` to the broker at `address`, or fails the dial.
    pub(super) fn dial(&mut self, dialer: Dialer, address: &str) {
        let from_broker = match dialer {
            Dialer::Node(node) => Some(node.broker),
            Dialer::Client(_) => None,
        };
        let latency = self.network.latency(&mut self.rng);
        let Some(target) = self.resolve(address) else {
            self.queue.schedule(self.now.plus_nanos(latency), Event::DialAnswer { dialer, conn: None });
            return;
        };
        if !self.brokers[target].up() {
            // Refused: a reset comes back after a round trip.
            self.queue.schedule(self.now.plus_nanos(2 * latency), Event::DialAnswer { dialer, conn: None });
            return;
        }
        if let Some(from) = from_broker {
            if self.partitioned(from, target) || self.partitioned(target, from) {
                // No answer at all: the transport gives up after twice the heartbeat interval.
                let at = self.now.after(self.config.heartbeat * 2);
                self.queue.schedule(at, Event::DialAnswer { dialer, conn: None });
                return;
            }
        }
        let dialer_end = match dialer {
            Dialer::Node(node) => End::Node { node, conn: ConnId(u32::MAX) },
            Dialer::Client(client) => End::Client(client),
        };
        let acceptor = End::Pending { broker: target, incarnation: self.brokers[target].incarnation };
        let conn = self.network.open(dialer_end, acceptor);
        self.queue.schedule(self.now.plus_nanos(latency), Event::Accept { conn });
        self.queue.schedule(self.now.plus_nanos(2 * latency), Event::DialAnswer { dialer, conn: Some(conn) });
    }

    /// A dialled connection reaches its broker: a random shard accepts it (SO_REUSEPORT).
    pub(super) fn accept(&mut self, conn: SimConnId) -> Result<(), Violation> {
        let Some(connection) = self.network.connections.get(&conn) else { return Ok(()) };
        let End::Pending { broker, incarnation } = connection.ends[1] else { return Ok(()) };
        if self.brokers[broker].incarnation != incarnation || !self.brokers[broker].up() {
            self.reset(conn);
            return Ok(());
        }
        let shard = self.rng.index(usize::from(self.config.shards)) as u16;
        let b = &mut self.brokers[broker];
        let id = b.new_conn(shard);
        b.conns.insert((shard, id.0), (conn, 1));
        let node = b.node_ref(shard);
        if let Some(connection) = self.network.connections.get_mut(&conn) {
            connection.ends[1] = End::Node { node, conn: id };
        }
        self.trace.record(format!("{} {} accept {conn}", self.now, node_name(node)));
        self.with_node(node, |node, _| node.handle_accept(id))?;
        // Bytes that arrived before the accept was carried out.
        for dir in 0..2 {
            if let Some(at) = self.network.reschedule(conn, dir) {
                self.queue.schedule(at.max(self.now), Event::Pipe { conn, dir });
            }
        }
        Ok(())
    }

    /// A dial's answer reaches its dialer.
    pub(super) fn dial_answer(&mut self, dialer: Dialer, conn: Option<SimConnId>) -> Result<(), Violation> {
        match dialer {
            Dialer::Node(node) => {
                let broker = &mut self.brokers[node.broker];
                if broker.incarnation != node.incarnation || !broker.up() {
                    if let Some(conn) = conn {
                        self.reset(conn);
                    }
                    return Ok(());
                }
                broker.dialing[usize::from(node.shard)] = false;
                match conn {
                    Some(sim) => {
                        let id = broker.new_conn(node.shard);
                        broker.conns.insert((node.shard, id.0), (sim, 0));
                        if let Some(connection) = self.network.connections.get_mut(&sim) {
                            connection.ends[0] = End::Node { node, conn: id };
                        }
                        self.trace.record(format!("{} {} dialed {sim}", self.now, node_name(node)));
                        let result = self.with_node(node, |node, now| node.handle_dialed(id, now));
                        // The connection may have been reset before the dialer knew it.
                        if !self.network.connections.contains_key(&sim) {
                            self.queue.schedule(self.now, Event::Closed { conn: sim, end: 0 });
                        }
                        result
                    }
                    None => {
                        self.trace.record(format!("{} {} dial failed", self.now, node_name(node)));
                        self.with_node(node, |node, now| node.handle_dial_failed(now))
                    }
                }
            }
            Dialer::Client(client) => {
                let live = conn.filter(|c| self.network.connections.get(c).is_some_and(|c| !c.closed[0]));
                self.trace.record(format!("{} client {client} dialed: {live:?}", self.now));
                let mut actions = std::mem::take(&mut self.actions);
                actions.clear();
                match client {
                    PRODUCER => self.producer.dialed(live, self.now, &mut actions),
                    CONSUMER => self.consumer.dialed(live, self.now, &mut actions),
                    _ => self.manager.dialed(live, &mut actions),
                }
                self.client_actions(client, &mut actions)?;
                self.actions = actions;
                Ok(())
            }
        }
    }

    /// Delivers the head chunk of a pipe.
    pub(super) fn deliver_pipe(&mut self, conn: SimConnId, dir: usize) -> Result<(), Violation> {
        let Some(connection) = self.network.connections.get(&conn) else { return Ok(()) };
        let receiver = connection.ends[1 - dir];
        if matches!(receiver, End::Pending { .. }) {
            // Not accepted yet: the accept reschedules the pipe.
            if let Some(c) = self.network.connections.get_mut(&conn) {
                c.pipes[dir].scheduled = false;
            }
            return Ok(());
        }
        let delivery = self.network.deliver(conn, dir, self.now);
        if let Some(at) = self.network.reschedule(conn, dir) {
            self.queue.schedule(at.max(self.now), Event::Pipe { conn, dir });
        }
        match delivery {
            Delivery::Nothing | Delivery::Stalled => Ok(()),
            Delivery::Fin => {
                self.trace.record(format!("{} {conn} fin to end {}", self.now, 1 - dir));
                self.closed(conn, 1 - dir)?;
                // Our side's reader sees the end once the peer closed in turn.
                self.queue.schedule(self.now, Event::Closed { conn, end: dir });
                Ok(())
            }
            Delivery::Bytes(bytes) => {
                self.trace.record(format!("{} {conn} {}B to end {}", self.now, bytes.len(), 1 - dir));
                match receiver {
                    End::Node { node, conn: id } => {
                        if self.consumer.conn() == Some(conn) {
                            let delivered =
                                self.network.connections.get(&conn).map_or(0, |c| c.pipes[dir].delivered_bytes);
                            self.oracle.consumer_bytes_delivered(conn, delivered);
                        }
                        self.node_bytes(node, id, bytes)
                    }
                    End::Client(client) => self.client_bytes(client, conn, &bytes),
                    End::Pending { .. } => Ok(()),
                }
            }
        }
    }

    /// Bytes for a node's connection: appended to its buffer and read unless reads are paused.
    pub(super) fn node_bytes(&mut self, node: NodeRef, id: ConnId, bytes: BytesMut) -> Result<(), Violation> {
        let broker = &mut self.brokers[node.broker];
        if broker.incarnation != node.incarnation || !broker.up() {
            return Ok(());
        }
        let key = (node.shard, id.0);
        broker.rx.entry(key).or_default().extend_from_slice(&bytes);
        if broker.nodes[usize::from(node.shard)].read_paused(id) {
            self.paused_reads[node.broker].insert(key);
            return Ok(());
        }
        self.read_buffer(node, id)
    }

    /// Lets the node read its buffer of `id`.
    pub(super) fn read_buffer(&mut self, node: NodeRef, id: ConnId) -> Result<(), Violation> {
        let key = (node.shard, id.0);
        let Some(mut buffer) = self.brokers[node.broker].rx.remove(&key) else { return Ok(()) };
        let result = self.with_node(node, |shard, now| shard.handle_read(id, &mut buffer, now));
        // The connection may have been handed over or closed meanwhile; the rest stays only if
        // the node still knows it here.
        let broker = &mut self.brokers[node.broker];
        if broker.conns.contains_key(&key) && !buffer.is_empty() {
            put_back(&mut broker.rx, key, buffer);
        }
        result
    }

    /// Feeds the reads held back on `node` while producers had to pause.
    pub(super) fn feed_held_reads(&mut self, node: NodeRef) {
        let held: Vec<(u16, u32)> =
            self.paused_reads[node.broker].iter().copied().filter(|&(shard, _)| shard == node.shard).collect();
        for key in held {
            let broker = &self.brokers[node.broker];
            if broker.nodes[usize::from(node.shard)].producers_must_pause() {
                return;
            }
            self.paused_reads[node.broker].remove(&key);
            let id = ConnId(key.1);
            let Some(mut buffer) = self.brokers[node.broker].rx.remove(&key) else { continue };
            let broker = &mut self.brokers[node.broker];
            let now = broker.clock.now(self.now);
            let shard = &mut broker.nodes[usize::from(node.shard)];
            shard.handle_read(id, &mut buffer, now);
            shard.pump(now);
            if broker.conns.contains_key(&key) && !buffer.is_empty() {
                put_back(&mut broker.rx, key, buffer);
            }
            // Outputs are drained by the caller (`with_node`'s work loop).
        }
    }

    /// The broker (and incarnation) a client connection goes to.
    pub(super) fn broker_of(&self, conn: SimConnId) -> Option<(usize, u32)> {
        match self.network.connections.get(&conn)?.ends[1] {
            End::Node { node, .. } => Some((node.broker, node.incarnation)),
            _ => None,
        }
    }

    /// End `end` of `conn` learns the connection ended.
    pub(super) fn closed(&mut self, conn: SimConnId, end: usize) -> Result<(), Violation> {
        let Some(connection) = self.network.connections.get(&conn) else { return Ok(()) };
        let who = connection.ends[end];
        if !self.network.mark_closed(conn, end) {
            return Ok(());
        }
        match who {
            End::Node { node, conn: id } => {
                let broker = &mut self.brokers[node.broker];
                if broker.incarnation != node.incarnation || !broker.up() {
                    return Ok(());
                }
                if id.0 == u32::MAX {
                    // A dial whose answer has not come yet: the answer will find it closed.
                    return Ok(());
                }
                let key = (node.shard, id.0);
                broker.conns.remove(&key);
                broker.rx.remove(&key);
                self.paused_reads[node.broker].remove(&key);
                self.trace.record(format!("{} {} closed {conn}", self.now, node_name(node)));
                self.with_node(node, |node, now| node.handle_closed(id, now))
            }
            End::Client(client) => {
                let current = match client {
                    PRODUCER => self.producer.conn(),
                    CONSUMER => self.consumer.conn(),
                    _ => Some(conn),
                };
                if current != Some(conn) {
                    // Reset before the dial's answer reached the client: the answer says so.
                    return Ok(());
                }
                self.trace.record(format!("{} client {client} closed {conn}", self.now));
                let mut actions = std::mem::take(&mut self.actions);
                actions.clear();
                match client {
                    PRODUCER => self.producer.closed(self.now, &mut actions),
                    CONSUMER => self.consumer.closed(self.now, &mut actions),
                    _ => self.manager.closed(conn),
                }
                self.client_actions(client, &mut actions)?;
                self.actions = actions;
                Ok(())
            }
            End::Pending { .. } => Ok(()),
        }
    }

    /// Resets a connection: everything in flight is lost and both ends see the end.
    pub(super) fn reset(&mut self, conn: SimConnId) {
        self.network.drop_in_flight(conn);
        self.network.counters.resets += 1;
        let latency = self.network.latency(&mut self.rng);
        for end in 0..2 {
            self.queue.schedule(self.now.plus_nanos(latency), Event::Closed { conn, end });
        }
    }

    /// The broker at `address`.
    pub(super) fn resolve(&self, address: &str) -> Option<usize> {
        self.brokers.iter().position(|b| b.address() == address)
    }
}

/// Puts the unread rest of a buffer back in front of anything that came meanwhile.
pub(super) fn put_back(rx: &mut std::collections::BTreeMap<(u16, u32), BytesMut>, key: (u16, u32), mut rest: BytesMut) {
    if let Some(later) = rx.remove(&key) {
        rest.extend_from_slice(&later);
    }
    rx.insert(key, rest);
}
