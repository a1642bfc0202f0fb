//! One shard of one broker with all of its HA protocol, as a sans-IO machine: the core `Shard`
//! plus the broker-to-broker links of that shard, their heartbeats, replication, and on shard 0
//! the cluster-wide roles. The real transport and the simulator drive it the same way: they feed
//! in what happened (bytes read, a connection closed, a dial answered, a timeout, a message from
//! another shard) with the time, call `pump`, and carry out `poll_output` (`node_output`).
//!
//! The parts, each in its own module, all `impl ShardNode` or driven from here:
//! - `backup_session`: a backup shard's link to the primary (dialling, handshake, batches).
//! - `served_links`: the primary's end of backups' links (hand-over to the named shard, catch-up,
//!   confirms), feeding this shard's `PrimaryReplication`.
//! - `primary_role`: shard 0 of a primary: readiness of backups, `members`, recovering mode and
//!   `ha-backup-timeout`.
//! - `epoch_watch`: shard 0 of a primary probes its peers and steps down for a newer primary.
//! - `ready_lease`: shard 0 of a backup leaves `ready` when its primary was silent too long.
//!
//! Every connection, client or link, accepted or dialled, has a `ConnId` the shell allocates. A
//! connection the core admits as a backup link (its preamble says so and this broker is the
//! primary) leaves the core after `hello` and is served here.
//!
//! Call contract: after any `handle_*` call `pump(now)`, then take every `poll_output`
//! (`node_shell::pump_and_carry_out` does both, for every shell); call `handle_timeout(now)` at
//! `poll_timeout()`. `now` never goes backwards. Messages from other
//! shards' cores go through `handle_peer`, so that the checks due before any input run first.
//!
//! Invariants:
//! - The shard's replica hold count equals the number of holders of its publishes (streams and
//!   collecting expected backups), after every change to them: they change only through
//!   `change_holders`, and each live event's hold count is asserted equal to the holders it
//!   reaches where it is fed (`replicate`).
//! - A replication stream exists only while the broker is a primary; a backup session only while
//!   it is a backup of a cluster.
//! - Controls a node sends itself are handled within the same `pump`, in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::replication::{Hold, ReplicationEvent};
use ringmq_core::shard::Shard;
use ringmq_core::shard_message::ShardMessage;

use crate::backup::session::BackupSession;
use crate::link::frame::LinkOpen;
use crate::link::LinkId;
use crate::node::output::{NodeControl, NodeOutput, Outputs};
use crate::primary::epoch_watch::EpochWatch;
use crate::primary::replication::PrimaryReplication;
use crate::primary::role::PrimaryRole;
use crate::primary::served_links::ServedLinks;

/// A shard's HA settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `link-heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `link-maintenance-interval`: pacing of a backup's dials, period of a primary's probes.
    pub maintenance_interval: Duration,
    /// The other brokers of `ha-brokers-url`, `host:port`, this broker left out; empty when the
    /// broker is not in a cluster (no links, no probes).
    pub peer_addresses: Vec<String>,
    /// This broker's own address, `host:port`: its name to the primary (`link-open`).
    pub own_address: String,
    /// `ha-backup-timeout`: how long a newly promoted primary holds confirms for each backup that
    /// was ready under the previous primary, waiting for it to come back ready.
    pub backup_timeout: Duration,
    /// Shards in the broker (every member of a cluster has the same number).
    pub shard_count: u16,
}

/// One shard and its HA protocol. See the module doc.
pub struct ShardNode {
    /// The core state machine.
    pub(crate) shard: Shard,
    /// Settings.
    pub(crate) config: NodeConfig,
    /// Streams to this shard's backups, while a primary (from the first link or the promotion).
    pub(crate) replication: Option<PrimaryReplication>,
    /// Backups' links served here.
    pub(crate) served: ServedLinks,
    /// The link to the primary, while a backup of a cluster.
    pub(crate) backup: Option<BackupSession>,
    /// Shard 0 of a primary: its backups and recovering mode.
    pub(crate) role: PrimaryRole,
    /// Shard 0 of a primary: probes for a newer primary.
    pub(crate) watch: EpochWatch,
    /// On a backup: the primary's ready backups as it last said (`members`); the others are
    /// this broker's expected backups if it is promoted.
    pub(crate) ready_members: Vec<String>,
    /// The HA state as of the last pump, to act on changes.
    seen_state: BrokerState,
    /// Outputs not taken yet.
    pub(crate) outputs: Outputs,
    /// Controls this node sent itself, handled in `pump`.
    own_controls: VecDeque<NodeControl>,
    /// Scratch for `settle`: replication events and released holds.
    scratch: (Vec<ReplicationEvent>, Vec<Hold>),
    /// Scratch for `send_batches`: the links to write batches to.
    pub(crate) batch_links: Vec<LinkId>,
    /// The core's messages for other shards, taken out for `poll_output`, not handed out yet.
    peer_outbox: VecDeque<(ShardId, ShardMessage)>,
}

impl ShardNode {
    /// A node around `shard`, starting at `now`.
    pub fn new(shard: Shard, config: NodeConfig, now: Instant) -> ShardNode {
        let seen_state = shard.ha().state();
        let mut node = ShardNode {
            role: PrimaryRole::new(config.shard_count),
            watch: EpochWatch::new(now, config.maintenance_interval),
            shard,
            config,
            replication: None,
            served: ServedLinks::default(),
            backup: None,
            ready_members: Vec::new(),
            seen_state,
            outputs: Outputs::default(),
            own_controls: VecDeque::new(),
            scratch: (Vec::new(), Vec::new()),
            batch_links: Vec::new(),
            peer_outbox: VecDeque::new(),
        };
        node.follow_state(now);
        node
    }

    /// The core shard.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// Settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// A connection was accepted.
    pub fn handle_accept(&mut self, conn: ConnId) {
        self.shard.handle_accept(conn);
    }

    /// Bytes arrived on a connection; every complete frame of `buf` is consumed.
    pub fn handle_read(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) {
        self.before_input(now);
        if let Some(backup) = self.backup.as_mut().filter(|b| b.owns(conn)) {
            backup.handle_read(buf, now, &self.config, &mut self.shard, &mut self.ready_members, &mut self.outputs);
            return;
        }
        if self.served.knows(conn) {
            self.handle_served_read(conn, buf, now);
            return;
        }
        self.shard.handle_read(conn, buf);
        if self.shard.is_backup_link(conn) {
            // Past `hello`, a backup link speaks the replication link protocol, served here; the
            // core forgets it once its `hello` is out.
            self.settle();
            self.transmit();
            self.shard.handle_link_detached(conn);
            self.handle_link_admitted(conn, now);
            self.handle_served_read(conn, buf, now);
        }
    }

    /// A connection ended.
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.before_input(now);
        if let Some(backup) = self.backup.as_mut().filter(|b| b.owns(conn)) {
            backup.handle_closed(now, &mut self.outputs);
        } else if self.served.knows(conn) {
            self.handle_served_closed(conn, "closed by the backup");
        } else {
            self.shard.handle_closed(conn);
        }
    }

    /// The dial asked for by `NodeOutput::Dial` connected as `conn`.
    pub fn handle_dialed(&mut self, conn: ConnId, now: Instant) {
        self.before_input(now);
        match self.backup.as_mut() {
            Some(backup) => backup.handle_dialed(conn, now, &self.config, &mut self.outputs),
            None => self.outputs.push(NodeOutput::Shutdown { conn }),
        }
    }

    /// The dial asked for by `NodeOutput::Dial` failed.
    pub fn handle_dial_failed(&mut self, now: Instant) {
        self.before_input(now);
        if let Some(backup) = self.backup.as_mut() {
            backup.handle_dial_failed(now);
        }
    }

    /// A message from another shard's core of this broker (`Shard::poll_peer` there).
    pub fn handle_peer(&mut self, message: ShardMessage, now: Instant) {
        self.before_input(now);
        self.shard.handle_peer(message);
    }

    /// A message from another shard's node of this broker.
    pub fn handle_control(&mut self, control: NodeControl, now: Instant) {
        self.before_input(now);
        self.apply_control(control, now);
    }

    /// Acts on a control, from another shard or this one.
    fn apply_control(&mut self, control: NodeControl, now: Instant) {
        match control {
            NodeControl::LinkOpened { backup, shard, conn } => self.role_link_opened(&backup, shard, conn),
            NodeControl::CaughtUp { backup, shard, conn } => self.role_caught_up(&backup, shard, conn),
            NodeControl::LinkLost { backup, shard, conn, kept } => self.role_link_lost(&backup, shard, conn, kept, now),
            NodeControl::Superseded { epoch } => self.step_down(epoch),
            NodeControl::Members { ready } => self.ready_members = ready,
            NodeControl::ExpectedTimedOut { backups } => self.expected_timed_out(&backups),
        }
    }

    /// Time passed: heartbeats, handshakes, dials, `ha-backup-timeout`, probes.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.served_timeouts(now);
        if let Some(backup) = self.backup.as_mut() {
            backup.handle_timeout(now, &mut self.outputs);
        }
        self.before_input(now);
        self.role_timeout(now);
        self.watch_timeout(now);
    }

    /// The next instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.served.poll_timeout(),
            self.backup.as_ref().and_then(BackupSession::poll_timeout),
            self.role.poll_timeout(),
            self.watch_poll_timeout(),
            self.ready_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether reading `conn` should wait: a client's publishes and acks add replication records,
    /// and while a stream holds too many unsent ones, clients are not read. Links are read on,
    /// since their confirms end the wait.
    pub fn read_paused(&self, conn: ConnId) -> bool {
        self.producers_must_pause() && !self.served.knows(conn) && !self.backup.as_ref().is_some_and(|b| b.owns(conn))
    }

    /// Whether a replication stream holds so many unsent records that clients must wait.
    pub fn producers_must_pause(&self) -> bool {
        self.replication.as_ref().is_some_and(PrimaryReplication::producers_must_pause)
    }

    /// Runs the shard and its replication until nothing moves, queues their outputs, and acts on
    /// a change of the broker's HA state.
    pub fn pump(&mut self, now: Instant) {
        loop {
            self.settle();
            self.transmit();
            self.send_batches(now);
            self.follow_state(now);
            let Some(control) = self.own_controls.pop_front() else { break };
            self.apply_control(control, now);
        }
    }

    /// The next thing for the shell to do: the node's own outputs in order, then its core's
    /// messages for the other shards (`NodeOutput::Peer`), by destination, in order per
    /// destination.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        if let Some(output) = self.outputs.pop() {
            return Some(output);
        }
        if self.peer_outbox.is_empty() && self.shard.has_peer_output() {
            let own = self.shard.id();
            for to in (0..self.config.shard_count).map(ShardId).filter(|&to| to != own) {
                self.peer_outbox.extend(self.shard.poll_peer(to).map(|message| (to, message)));
            }
        }
        let (shard, message) = self.peer_outbox.pop_front()?;
        Some(NodeOutput::Peer { shard, message })
    }

    /// Sends `control` to shard `to` of this broker (handled in this `pump` when `to` is this
    /// shard).
    pub(crate) fn send_control(&mut self, to: u16, control: NodeControl) {
        if to == self.shard.id().0 {
            self.own_controls.push_back(control);
        } else {
            self.outputs.push(NodeOutput::Control { shard: to, control });
        }
    }

    /// Drives the shard and feeds its replication events to the streams until no held confirm is
    /// released any more.
    pub(crate) fn settle(&mut self) {
        loop {
            self.shard.drive();
            if !self.replicate() {
                break;
            }
        }
    }

    /// Feeds the shard's replication events to its streams and hands released holds and raised
    /// delivery bounds back to the shard. Returns whether either happened (the shard has confirms
    /// or deliveries to drive).
    fn replicate(&mut self) -> bool {
        let (events, holds) = &mut self.scratch;
        self.shard.poll_replication(events);
        let Some(replication) = self.replication.as_mut() else {
            // No backup has linked to this shard yet: there is nobody to tell.
            events.clear();
            return false;
        };
        for event in events.drain(..) {
            // The pair of the count the shard took the holds with (`Shard::set_replica_holds`, kept
            // by `change_holders`): exactly the holders that will release them receive the event.
            if let Some(holders) = event.holders() {
                assert_eq!(
                    holders,
                    replication.holding_streams(),
                    "a publish took {holders} holds, but {} holders receive its event",
                    replication.holding_streams()
                );
            }
            replication.handle_event(event);
        }
        holds.clear();
        let released = replication.poll_released(holds);
        if released > 0 {
            self.shard.handle_holds_released(holds);
        }
        // Delivery waits for the backups: messages they all confirmed may now go to consumers.
        let deliverable = self.shard.handle_replicated(replication.poll_replicated());
        released > 0 || deliverable
    }

    /// The one way the holders of this shard's publishes change (streams opened or lost,
    /// expected backups added or timed out): every event made so far first goes to the holders its
    /// holds were counted for, then `change` runs, then the shard takes as many holds per new
    /// publish as there now are holders. A primary's first change creates its replication.
    /// `replicate` asserts the pair: each event's hold count equals the holders it reaches.
    pub(crate) fn change_holders<R>(&mut self, change: impl FnOnce(&mut PrimaryReplication) -> R) -> R {
        self.settle();
        let epoch = self.shard.ha().epoch();
        let replication = self.replication.get_or_insert_with(|| PrimaryReplication::new(epoch));
        let result = change(replication);
        self.shard.set_replica_holds(replication.holding_streams());
        result
    }

    /// Stepped down: the streams and every hold they had end with them (a backup confirms no
    /// publish); new publishes take no hold.
    fn drop_holders(&mut self) {
        self.replication = None;
        self.shard.set_replica_holds(0);
    }

    /// Queues the core's bytes for its client connections.
    fn transmit(&mut self) {
        while let Some((conn, bytes, close)) = self.shard.poll_transmit() {
            self.outputs.write(conn, bytes);
            if close {
                self.outputs.push(NodeOutput::Close { conn });
            }
        }
    }

    /// Follows the broker's HA state: a backup of a cluster keeps a link to the primary; a broker
    /// that became a backup drops its streams; a promoted one stops its link and, entering
    /// `recovering`, holds confirms for its expected backups.
    fn follow_state(&mut self, now: Instant) {
        let state = self.shard.ha().state();
        if state.is_backup() {
            if self.replication.is_some() {
                // Stepped down: the streams to our former backups end, and with them their links.
                self.drop_holders();
                self.drop_served_links();
            }
            if self.backup.is_none() && !self.config.peer_addresses.is_empty() {
                self.backup = Some(BackupSession::new(now, &self.config, &self.shard));
            }
            if let Some(backup) = self.backup.as_mut() {
                backup.poll_dial(now, &mut self.outputs);
            }
        } else if let Some(mut backup) = self.backup.take() {
            // Promoted: the link to the old primary ends.
            backup.stop(&mut self.outputs);
        }
        let previous = std::mem::replace(&mut self.seen_state, state);
        if state == previous {
            return;
        }
        if state.is_primary() && !previous.is_primary() {
            // A fresh view of the backups: links of an earlier term as primary are gone.
            self.role = PrimaryRole::new(self.config.shard_count);
        }
        if state == BrokerState::Recovering {
            self.begin_recovery(now);
        }
    }

    /// Adopts a backup link another shard of this broker accepted and handed over.
    pub fn handle_link_adopted(&mut self, conn: ConnId, open: LinkOpen, pending: BytesMut, now: Instant) {
        self.before_input(now);
        self.serve_link(conn, open, pending, now);
    }
}
