//! The simulator's IO shell: `SimShell` implements `ringmq_ha::node::shell::NodeShell` over the
//! simulated network, the agenda and each broker's shard channels, so that a node's outputs are
//! carried out by the same `pump_and_carry_out` the broker runs.
//!
//! Invariants:
//! - A write, close or shutdown on a connection the broker never had, or a hand-over of one, is a
//!   contract violation of the node (it fails the seed), except a close or shutdown of one already
//!   gone, which the node may ask for after its end.
//! - Messages from one shard to another (controls and the core's peer messages) are delivered in
//!   the order produced, each as a later event.

use bytes::BytesMut;
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::shard_message::ShardMessage;
use ringmq_ha::link::frame::LinkOpen;
use ringmq_ha::node::output::NodeControl;
use ringmq_ha::node::shell::NodeShell;

use super::observer::frame_kinds;
use super::{node_name, violation, NodeInput, Simulation};
use crate::sim::event::{Dialer, Event, LocalKind, NodeRef};
use crate::sim::invariants::Violation;
use crate::sim::network::End;
use crate::sim::node::ShardNode;

/// One round of carrying out the outputs of `node`.
pub(super) struct SimShell<'a> {
    /// The whole simulation.
    pub(super) sim: &'a mut Simulation,
    /// The node whose outputs these are.
    pub(super) node: NodeRef,
}

impl SimShell<'_> {
    /// The simulated connection and end behind the node's `conn`.
    fn connection(&self, conn: ConnId) -> Option<(crate::sim::network::SimConnId, usize)> {
        self.sim.brokers[self.node.broker].conns.get(&(self.node.shard, conn.0)).copied()
    }
}

impl NodeShell for SimShell<'_> {
    type Error = Violation;

    fn node(&mut self) -> &mut ShardNode {
        &mut self.sim.brokers[self.node.broker].nodes[usize::from(self.node.shard)]
    }

    fn write(&mut self, conn: ConnId, bytes: BytesMut) -> Result<(), Violation> {
        let name = node_name(self.node);
        let Some((sim_conn, end)) = self.connection(conn) else {
            return Err(violation("driver contract", format!("{name} wrote on unknown connection {}", conn.0)));
        };
        let sim = &mut *self.sim;
        if sim.trace.verbose() {
            let kinds = frame_kinds(&bytes);
            sim.trace.record(format!("{} {name} write {sim_conn} {}B {kinds}", sim.now, bytes.len()));
        } else {
            sim.trace.record(format!("{} {name} write {sim_conn} {}B", sim.now, bytes.len()));
        }
        let (lost, duplicated) = (sim.network.counters.frames_lost, sim.network.counters.frames_duplicated);
        if let Some(at) = sim.network.send(sim_conn, end, bytes, sim.now, &mut sim.rng) {
            sim.queue.schedule(at, Event::Pipe { conn: sim_conn, dir: end });
        }
        let lost = sim.network.counters.frames_lost - lost;
        let duplicated = sim.network.counters.frames_duplicated - duplicated;
        if lost + duplicated > 0 {
            sim.trace.record(format!("{} fault: {sim_conn}: {lost} batches lost, {duplicated} doubled", sim.now));
        }
        Ok(())
    }

    fn close(&mut self, conn: ConnId) -> Result<(), Violation> {
        let Some((sim_conn, end)) = self.connection(conn) else { return Ok(()) };
        let sim = &mut *self.sim;
        sim.trace.record(format!("{} {} close {sim_conn}", sim.now, node_name(self.node)));
        if let Some(at) = sim.network.send_fin(sim_conn, end, sim.now, &mut sim.rng) {
            sim.queue.schedule(at, Event::Pipe { conn: sim_conn, dir: end });
        }
        Ok(())
    }

    fn shutdown(&mut self, conn: ConnId) -> Result<(), Violation> {
        let Some((sim_conn, end)) = self.connection(conn) else { return Ok(()) };
        let sim = &mut *self.sim;
        sim.trace.record(format!("{} {} shutdown {sim_conn}", sim.now, node_name(self.node)));
        if let Some(at) = sim.network.send_fin(sim_conn, end, sim.now, &mut sim.rng) {
            sim.queue.schedule(at, Event::Pipe { conn: sim_conn, dir: end });
        }
        sim.queue.schedule(sim.now, Event::Closed { conn: sim_conn, end });
        Ok(())
    }

    fn dial(&mut self, address: String) -> Result<(), Violation> {
        let sim = &mut *self.sim;
        sim.trace.record(format!("{} {} dial {address}", sim.now, node_name(self.node)));
        sim.brokers[self.node.broker].dialing[usize::from(self.node.shard)] = true;
        sim.dial(Dialer::Node(self.node), &address);
        Ok(())
    }

    fn probe(&mut self, address: String) -> Result<(), Violation> {
        let sim = &mut *self.sim;
        let delay = sim.network.latency(&mut sim.rng);
        sim.queue.schedule(sim.now.plus_nanos(delay), Event::ProbeArrive { from: self.node, address });
        Ok(())
    }

    fn hand_over(&mut self, conn: ConnId, shard: u16, open: LinkOpen, pending: BytesMut) -> Result<(), Violation> {
        let name = node_name(self.node);
        let node = self.node;
        let sim = &mut *self.sim;
        let broker = &mut sim.brokers[node.broker];
        let Some((sim_conn, end)) = broker.conns.remove(&(node.shard, conn.0)) else {
            return Err(violation("driver contract", format!("{name} handed over unknown connection {}", conn.0)));
        };
        let leftover = broker.rx.remove(&(node.shard, conn.0)).unwrap_or_default();
        if !leftover.is_empty() {
            return Err(violation(
                "driver contract",
                format!("{name} handed over {sim_conn} with {} bytes left in its read buffer", leftover.len()),
            ));
        }
        let adopted = broker.new_conn(shard);
        broker.conns.insert((shard, adopted.0), (sim_conn, end));
        let target = broker.node_ref(shard);
        if let Some(connection) = sim.network.connections.get_mut(&sim_conn) {
            connection.ends[end] = End::Node { node: target, conn: adopted };
        }
        sim.trace.record(format!("{} {name} hand over {sim_conn} to shard {shard}", sim.now));
        sim.work.push_back((target, NodeInput::Adopt { conn: adopted, open, pending }));
        Ok(())
    }

    fn send_control(&mut self, shard: u16, control: NodeControl) -> Result<(), Violation> {
        let node = self.node;
        let broker = &mut self.sim.brokers[node.broker];
        broker.control_queues.entry((node.shard, shard)).or_default().push_back(control);
        self.sim.schedule_local(node.broker, node.shard, shard, LocalKind::Control);
        Ok(())
    }

    fn send_peer(&mut self, shard: ShardId, message: ShardMessage) -> Result<(), Violation> {
        let node = self.node;
        let broker = &mut self.sim.brokers[node.broker];
        broker.peer_queues.entry((node.shard, shard.0)).or_default().push_back(message);
        self.sim.schedule_local(node.broker, node.shard, shard.0, LocalKind::Peer);
        Ok(())
    }

    fn outputs_done(&mut self, producers_paused: bool) -> Result<(), Violation> {
        // Reads held back while producers had to pause go on once they no longer must.
        let node = self.node;
        let held = self.sim.paused_reads[node.broker].iter().any(|&(shard, _)| shard == node.shard);
        if held && !producers_paused {
            self.sim.work.push_back((node, NodeInput::ResumeReads));
        }
        Ok(())
    }
}
