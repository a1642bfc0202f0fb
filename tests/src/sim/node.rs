//! The per-shard HA driver the simulator runs.
//!
//! Until `ringmq_ha::shard_node::ShardNode` is on main, this is a stand-in with the same API that
//! serves clients with the bare `Shard` and has no HA at all (brokers stay `joining` unless
//! promoted, and nothing is replicated): enough to build the simulator's plumbing against. It is
//! replaced by re-exports of the real driver when that lands.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::ids::ConnId;
use ringmq_core::shard::Shard;
use ringmq_ha::link_frame::LinkOpen;

/// The node's settings (as the real driver's).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `link-heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `link-maintenance-interval`.
    pub maintenance_interval: Duration,
    /// `ha-brokers-url` without the own address.
    pub peer_addresses: Vec<String>,
    /// This broker's address.
    pub own_address: String,
    /// `ha-backup-timeout`.
    pub backup_timeout: Duration,
    /// Shards of the broker.
    pub shard_count: u16,
}

/// A message between two shards' drivers (none in the stand-in).
#[derive(Debug)]
pub enum NodeControl {}

/// What the node asks its shell to do (as the real driver's).
#[derive(Debug)]
pub enum NodeOutput {
    /// Bytes to write on a connection.
    Write {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: BytesMut,
    },
    /// Close after the writes queued before.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Close now, both directions.
    Shutdown {
        /// The connection.
        conn: ConnId,
    },
    /// Dial a peer broker.
    Dial {
        /// `host:port`.
        address: String,
    },
    /// Hand a connection to another shard.
    HandOver {
        /// The connection.
        conn: ConnId,
        /// The shard.
        shard: u16,
        /// Its link-open.
        open: LinkOpen,
        /// Bytes read after it.
        pending: BytesMut,
    },
    /// A control for another shard.
    Control {
        /// The shard.
        shard: u16,
        /// The control.
        control: NodeControl,
    },
    /// Ask a broker for its state.
    Probe {
        /// `host:port`.
        address: String,
    },
}

/// The stand-in driver: a shard and its outputs.
#[derive(Debug)]
pub struct ShardNode {
    /// The shard.
    shard: Shard,
    /// Outputs not yet polled.
    outputs: VecDeque<NodeOutput>,
}

impl ShardNode {
    /// A node around `shard`.
    pub fn new(shard: Shard, _config: NodeConfig, _now: Instant) -> ShardNode {
        ShardNode {
            shard,
            outputs: VecDeque::new(),
        }
    }
    /// The shard.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }
    /// The shard, for cross-shard messages.
    pub fn shard_mut(&mut self) -> &mut Shard {
        &mut self.shard
    }
    /// An incoming connection.
    pub fn handle_accept(&mut self, conn: ConnId) {
        self.shard.handle_accept(conn);
    }
    /// Bytes arrived.
    pub fn handle_read(&mut self, conn: ConnId, buf: &mut BytesMut, _now: Instant) {
        self.shard.handle_read(conn, buf);
    }
    /// The connection ended.
    pub fn handle_closed(&mut self, conn: ConnId, _now: Instant) {
        self.shard.handle_closed(conn);
    }
    /// A dial connected (never asked for here).
    pub fn handle_dialed(&mut self, conn: ConnId, _now: Instant) {
        self.outputs.push_back(NodeOutput::Shutdown { conn });
    }
    /// A dial failed.
    pub fn handle_dial_failed(&mut self, _now: Instant) {}
    /// A link handed over (never here).
    pub fn handle_link_adopted(
        &mut self,
        _conn: ConnId,
        _open: LinkOpen,
        _pending: BytesMut,
        _now: Instant,
    ) {
    }
    /// A control from another shard.
    pub fn handle_control(&mut self, control: NodeControl) {
        match control {}
    }
    /// A probe's answer (never asked for here).
    pub fn handle_probe_answer(&mut self, _address: &str, _answer: Option<(BrokerState, Epoch)>) {}
    /// Time passed.
    pub fn handle_timeout(&mut self, _now: Instant) {}
    /// The next timeout: none.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Whether reading `conn` should wait: never.
    pub fn read_paused(&self, _conn: ConnId) -> bool {
        false
    }
    /// Whether producers must wait: never.
    pub fn producers_must_pause(&self) -> bool {
        false
    }
    /// Drives the shard and queues its outputs.
    pub fn pump(&mut self, _now: Instant) {
        self.shard.drive();
        while let Some((conn, bytes, close)) = self.shard.poll_transmit() {
            if !bytes.is_empty() {
                self.outputs.push_back(NodeOutput::Write { conn, bytes });
            }
            if close {
                self.outputs.push_back(NodeOutput::Close { conn });
            }
        }
    }
    /// The next output.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }
}
