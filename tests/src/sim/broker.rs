//! One simulated broker: its shards' real drivers (`ShardNode`s, each owning a real `Shard`), its
//! clock, whether it is up or paused, and the bookkeeping a process would keep in its transport:
//! which connection id each shard uses for which simulated connection, each connection's
//! receive buffer, and the in-process queues between its shards.
//!
//! A broker starts exactly as a daemon with `ha-cluster=yes` does: every shard is a `Shard` with
//! the cluster's HA settings, in state `joining`, and its driver gets the link settings. A crash
//! throws everything away (nodes, buffers, queues) and raises the incarnation, so that events for
//! the old life are recognised and dropped; a restart builds fresh nodes.
//!
//! The cross-shard queues keep the order of each (from, to) pair, as the rings and the control
//! queues of the real transport do; the runner delivers their heads as events.
//!
//! Not here: routing outputs (`runner`), the network (`network`).
//!
//! Invariants:
//! - `nodes` is empty exactly while the broker is down.
//! - Every entry of `conns` names a connection its shard's node knows (accepted, dialled or
//!   adopted, and not yet told closed).
//! - Connection ids are never reused within a shard of one incarnation.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::ha_view::HaSettings;
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::replication_level::ReplicationLevel;
use ringmq_core::shard::{Shard, ShardConfig};
use ringmq_core::shard_message::ShardMessage;

use super::clock::{BrokerClock, SimTime};
use super::event::{Event, NodeRef};
use super::network::SimConnId;
use super::node::{NodeConfig, NodeControl, ShardNode};
use ringmq_ha::promotion_check::MemberStatus;

/// The settings every broker of a run shares.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Shards per broker.
    pub shard_count: u16,
    /// Every broker's address, by index.
    pub addresses: Vec<String>,
    /// `link-heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `link-maintenance-interval`.
    pub maintenance_interval: Duration,
    /// `ha-backup-timeout`.
    pub backup_timeout: Duration,
}

/// One broker.
pub struct SimBroker {
    /// Its index in the cluster.
    pub index: usize,
    /// Which life (raised by each crash).
    pub incarnation: u32,
    /// Its clock.
    pub clock: BrokerClock,
    /// Until when it is paused.
    pub paused_until: Option<SimTime>,
    /// Events that came due while it was paused, in order.
    pub deferred: Vec<Event>,
    /// The shards' drivers; empty while down.
    pub nodes: Vec<ShardNode>,
    /// Per shard, the next connection id.
    next_conn: Vec<u32>,
    /// Per (shard, connection id), the simulated connection and which end of it this is.
    pub conns: BTreeMap<(u16, u32), (SimConnId, usize)>,
    /// Per (shard, connection id), bytes received and not yet consumed by the node.
    pub rx: BTreeMap<(u16, u32), BytesMut>,
    /// Core messages between shards, per (from, to).
    pub peer_queues: BTreeMap<(u16, u16), VecDeque<ShardMessage>>,
    /// Driver controls between shards, per (from, to).
    pub control_queues: BTreeMap<(u16, u16), VecDeque<NodeControl>>,
    /// Per shard, whether a dial is out (the driver waits for its answer).
    pub dialing: Vec<bool>,
    /// Settings.
    settings: BrokerSettings,
    /// Served backup links its earlier lives closed because a batch stayed unconfirmed.
    links_unconfirmed_before: u64,
}

impl SimBroker {
    /// A broker that is down until `start`.
    pub fn new(index: usize, settings: BrokerSettings, base: Instant) -> SimBroker {
        SimBroker {
            index,
            incarnation: 0,
            clock: BrokerClock::new(base),
            paused_until: None,
            deferred: Vec::new(),
            nodes: Vec::new(),
            next_conn: Vec::new(),
            conns: BTreeMap::new(),
            rx: BTreeMap::new(),
            peer_queues: BTreeMap::new(),
            control_queues: BTreeMap::new(),
            dialing: Vec::new(),
            settings,
            links_unconfirmed_before: 0,
        }
    }

    /// Starts the broker (again): fresh shards in state `joining`.
    ///
    /// # Panics
    /// If it is already up.
    pub fn start(&mut self, at: SimTime) {
        assert!(self.nodes.is_empty(), "broker {} started twice", self.index);
        let settings = &self.settings;
        let own = settings.addresses[self.index].clone();
        let brokers_url =
            format!("amqp:{}", settings.addresses.iter().map(|a| format!("tcp:{a}")).collect::<Vec<_>>().join(","));
        let shard_config = ShardConfig {
            shard_count: settings.shard_count,
            frame_bytes_max: 1 << 20,
            publish_inflight_max: 65_536,
            deliver_batch_max: 64,
            broker_name: format!("sim {own}"),
            ha: HaSettings {
                cluster: true,
                brokers_url,
                public_url: String::new(),
                replicate: ReplicationLevel::None,
                member: self.index as u16,
                name: own.clone(),
            },
            dedup_window: ringmq_core::limits::DEDUP_WINDOW_DEFAULT,
        };
        let node_config = NodeConfig {
            heartbeat_interval: settings.heartbeat_interval,
            maintenance_interval: settings.maintenance_interval,
            peer_addresses: settings.addresses.iter().filter(|a| **a != own).cloned().collect(),
            own_address: own,
            backup_timeout: settings.backup_timeout,
            shard_count: settings.shard_count,
            // `ha-min-ready-backups` stays 0 (the reference's rule): the pinned trace hash holds.
            min_ready_backups: 0,
            min_ready_timeout: None,
        };
        let now = self.clock.now(at);
        self.nodes = (0..settings.shard_count)
            .map(|id| ShardNode::new(Shard::new(ShardId(id), shard_config.clone()), node_config.clone(), now))
            .collect();
        self.next_conn = vec![0; usize::from(settings.shard_count)];
        self.dialing = vec![false; usize::from(settings.shard_count)];
    }

    /// Crashes the broker: everything in memory is lost and the incarnation moves on.
    pub fn crash(&mut self) {
        self.links_unconfirmed_before = self.links_closed_unconfirmed();
        self.nodes.clear();
        self.conns.clear();
        self.rx.clear();
        self.peer_queues.clear();
        self.control_queues.clear();
        self.deferred.clear();
        self.dialing.clear();
        self.paused_until = None;
        self.incarnation += 1;
    }

    /// Served backup links it closed, over all its lives, because the oldest batch stayed
    /// unconfirmed (the primary's confirm timeout, `ShardNode::link_loss_counters`).
    pub fn links_closed_unconfirmed(&self) -> u64 {
        let now: u64 = self.nodes.iter().map(|node| node.link_loss_counters().unconfirmed).sum();
        self.links_unconfirmed_before + now
    }

    /// Whether it runs (its nodes exist).
    pub fn up(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// Whether it is paused at `now`.
    pub fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Whether it would answer: up and not paused.
    pub fn reachable(&self) -> bool {
        self.up() && !self.paused()
    }

    /// Shard 0's HA state and epoch, `None` while down.
    pub fn status(&self) -> Option<(BrokerState, Epoch)> {
        let shard = self.nodes.first()?.shard();
        Some((shard.ha().state(), shard.ha().epoch()))
    }

    /// What shard 0 would answer a promotion check's fence, `None` while down.
    pub fn member_status(&self) -> Option<MemberStatus> {
        let ha = self.nodes.first()?.shard().ha();
        Some(MemberStatus {
            name: ha.name().to_string(),
            state: ha.state(),
            epoch: ha.epoch().0,
            ready_set: ha.ready_set().clone(),
        })
    }

    /// A fresh connection id on `shard`.
    pub fn new_conn(&mut self, shard: u16) -> ConnId {
        let next = &mut self.next_conn[usize::from(shard)];
        let conn = ConnId(*next);
        *next += 1;
        conn
    }

    /// A reference to shard `shard` of this incarnation.
    pub fn node_ref(&self, shard: u16) -> NodeRef {
        NodeRef { broker: self.index, incarnation: self.incarnation, shard }
    }

    /// The address of this broker.
    pub fn address(&self) -> &str {
        &self.settings.addresses[self.index]
    }
}
