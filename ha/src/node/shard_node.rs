//! One shard of one broker with all of its HA protocol, as a sans-IO machine: the core `Shard`
//! plus the broker-to-broker links of that shard, their heartbeats, replication, and on shard 0
//! the cluster-wide roles. The broker's IO shell and the simulator drive it the same way: they
//! feed in what happened (bytes read, a connection closed, a dial answered, a timeout, a message
//! from another shard) with the time, call `pump`, and carry out `poll_output` (`node::output`).
//!
//! The node owns its parts and routes each input to the one it concerns; the parts take the state
//! they share (`node::core`: the shard, its replication, the outputs) as an argument, so that they
//! depend on it and never on the node:
//! - `backup::session`: a backup shard's link to the primary (dialling, handshake, batches).
//! - `primary::served_links`: the primary's end of backups' links (hand-over to the named shard,
//!   catch-up, confirms), feeding this shard's `PrimaryReplication`.
//! - `primary::role`: shard 0 of a primary: readiness of backups, `members`, recovering mode and
//!   `ha-backup-timeout`.
//! - `primary::epoch_watch`: shard 0 of a primary probes its peers and steps down for a newer
//!   primary.
//! - `backup::ready_lease`: shard 0 of a backup leaves `ready` when its primary was silent too
//!   long.
//! - `node::early_enqueues`: publishes another shard accepted under a promotion this shard has not
//!   applied yet, kept until it has.
//!
//! Every connection, client or link, accepted or dialled, has a `ConnId` the shell allocates. A
//! connection the core admits as a backup link (its preamble says so and this broker is the
//! primary) leaves the core after `hello` and is served here.
//!
//! Call contract: after any `handle_*` call `pump(now)`, then take every `poll_output`
//! (`node::shell::pump_and_carry_out` does both, for every shell); call `handle_timeout(now)` at
//! `poll_timeout()`. `now` never goes backwards. Messages from other
//! shards' cores go through `handle_peer`, so that the checks due before any input run first.
//!
//! Promotions: the node follows a change of the broker's HA state (a promotion sets the holders of
//! the shard's publishes: expected backups, the ready quorum) before the shard takes any further
//! input, even when the shell hands it several inputs before one `pump`; and a publish another
//! shard accepted in an epoch this shard has not applied waits in `early_enqueues` until it has.
//! So a publish is stored only once the holders of the epoch it was accepted in are in place.
//!
//! Invariants:
//! - The shard's replica hold count equals the number of holders of its publishes (streams,
//!   collecting expected backups and a short ready quorum), after every change to them (`node::core`, `change_holders`).
//! - No enqueue reaches the shard before the node followed the shard's HA state, nor before the
//!   shard applied the epoch it was accepted in (asserted where it is handed over, and by the
//!   shard where it is stored).
//! - A replication stream exists only while the broker is a primary; a backup session only while
//!   it is a backup of a cluster.
//! - Controls a node sends itself are handled within the same `pump`, in order.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::shard::Shard;
use ringmq_core::shard_message::ShardMessage;

use crate::backup::ready_lease;
use crate::backup::session::BackupSession;
use crate::link::frame::LinkOpen;
pub use crate::node::config::NodeConfig;
use crate::node::core::NodeCore;
use crate::node::early_enqueues::{Arrival, EarlyEnqueues};
use crate::node::output::{NodeControl, NodeOutput};
use crate::primary::epoch_watch::{self, EpochWatch};
use crate::primary::replication::PrimaryReplication;
use crate::primary::role::{self, PrimaryRole};
pub use crate::primary::served_links::LinkLossCounters;
use crate::primary::served_links::ServedLinks;

/// One shard and its HA protocol. See the module doc.
pub struct ShardNode {
    /// The shard, its replication and the outputs, shared by the parts below.
    core: NodeCore,
    /// Backups' links served here.
    served: ServedLinks,
    /// The link to the primary, while a backup of a cluster.
    backup: Option<BackupSession>,
    /// Shard 0 of a primary: its backups and recovering mode.
    role: PrimaryRole,
    /// Shard 0 of a primary: probes for a newer primary.
    watch: EpochWatch,
    /// On a backup: the primary's ready backups as it last said (`members`); the others are
    /// this broker's expected backups if it is promoted.
    ready_members: Vec<String>,
    /// The HA state as of the last pump, to act on changes.
    seen_state: BrokerState,
    /// The core's messages for other shards, taken out for `poll_output`, not handed out yet.
    peer_outbox: VecDeque<(ShardId, ShardMessage)>,
    /// Publishes accepted by other shards in an epoch this shard has not applied yet.
    early_enqueues: EarlyEnqueues,
}

impl ShardNode {
    /// A node around `shard`, starting at `now`.
    pub fn new(shard: Shard, config: NodeConfig, now: Instant) -> ShardNode {
        let seen_state = shard.ha().state();
        let mut node = ShardNode {
            role: PrimaryRole::new(config.shard_count),
            watch: EpochWatch::new(now, config.maintenance_interval),
            core: NodeCore::new(shard, config, now),
            served: ServedLinks::default(),
            backup: None,
            ready_members: Vec::new(),
            seen_state,
            peer_outbox: VecDeque::new(),
            early_enqueues: EarlyEnqueues::default(),
        };
        node.follow_state(now);
        node
    }

    /// The core shard.
    pub fn shard(&self) -> &Shard {
        &self.core.shard
    }

    /// Settings.
    pub fn config(&self) -> &NodeConfig {
        &self.core.config
    }

    /// A connection was accepted.
    pub fn handle_accept(&mut self, conn: ConnId) {
        self.core.shard.handle_accept(conn);
    }

    /// Bytes arrived on a connection; every complete frame of `buf` is consumed.
    pub fn handle_read(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) {
        self.before_input(now);
        let core = &mut self.core;
        if let Some(backup) = self.backup.as_mut().filter(|b| b.owns(conn)) {
            backup.handle_read(buf, now, &core.config, &mut core.shard, &mut self.ready_members, &mut core.outputs);
            return;
        }
        if self.served.knows(conn) {
            self.served.handle_read(conn, buf, now, core);
            return;
        }
        core.shard.handle_read(conn, buf);
        if core.shard.is_backup_link(conn) {
            // Past `hello`, a backup link speaks the replication link protocol, served here; the
            // core forgets it once its `hello` is out.
            core.settle();
            core.transmit();
            core.shard.handle_link_detached(conn);
            self.served.handle_admitted(conn, now, core);
            self.served.handle_read(conn, buf, now, core);
        }
    }

    /// A connection ended.
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.before_input(now);
        if let Some(backup) = self.backup.as_mut().filter(|b| b.owns(conn)) {
            backup.handle_closed(now, &mut self.core.outputs);
        } else if self.served.knows(conn) {
            self.served.handle_closed(conn, &mut self.core);
        } else {
            self.core.shard.handle_closed(conn);
        }
    }

    /// The dial asked for by `NodeOutput::Dial` connected as `conn`.
    pub fn handle_dialed(&mut self, conn: ConnId, now: Instant) {
        self.before_input(now);
        match self.backup.as_mut() {
            Some(backup) => backup.handle_dialed(conn, now, &self.core.config, &mut self.core.outputs),
            None => self.core.outputs.push(NodeOutput::Shutdown { conn }),
        }
    }

    /// The dial asked for by `NodeOutput::Dial` failed.
    pub fn handle_dial_failed(&mut self, now: Instant) {
        self.before_input(now);
        if let Some(backup) = self.backup.as_mut() {
            backup.handle_dial_failed(now);
        }
    }

    /// A message from another shard's core of this broker (`Shard::poll_peer` there). A publish
    /// accepted in an epoch this shard has not applied waits for it (`node::early_enqueues`); a
    /// promotion this message brings is followed at once, then the publishes that waited for it
    /// go to the shard.
    pub fn handle_peer(&mut self, message: ShardMessage, now: Instant) {
        self.before_input(now);
        let applied = self.core.shard.ha().epoch();
        let Arrival::Handle(message) = self.early_enqueues.handle_arrival(message, applied) else { return };
        self.hand_to_shard(message);
        self.follow_state_change(now);
        let applied = self.core.shard.ha().epoch();
        for message in self.early_enqueues.poll_due(applied) {
            self.hand_to_shard(message);
        }
    }

    /// How many publishes from other shards waited for the promotion they were accepted in
    /// (since the node was made).
    pub fn early_enqueues_kept(&self) -> u64 {
        self.early_enqueues.kept_total()
    }

    /// Hands a message from another shard to the shard.
    fn hand_to_shard(&mut self, message: ShardMessage) {
        if matches!(message, ShardMessage::Enqueue { .. }) {
            // The holders of the shard's publishes are those of its current HA state.
            assert_eq!(
                self.seen_state,
                self.core.shard.ha().state(),
                "an enqueue reached the shard before the node followed its HA state"
            );
        }
        self.core.shard.handle_peer(message);
    }

    /// A message from another shard's node of this broker.
    pub fn handle_control(&mut self, control: NodeControl, now: Instant) {
        self.before_input(now);
        self.apply_control(control, now);
    }

    /// A probe of `address` answered with its state and epoch, or not at all (`None`).
    pub fn handle_probe_answer(&mut self, address: &str, answer: Option<(BrokerState, Epoch)>) {
        epoch_watch::handle_probe_answer(address, answer, &mut self.core);
    }

    /// Adopts a backup link another shard of this broker accepted and handed over.
    pub fn handle_link_adopted(&mut self, conn: ConnId, open: LinkOpen, pending: BytesMut, now: Instant) {
        self.before_input(now);
        self.served.serve(conn, open, pending, now, &mut self.core);
    }

    /// Shard 0: a promotion check for a candidate that knows `epoch` fenced this broker (the
    /// `ha-fence` an admin connection carries to the core; here for a driver that checks
    /// promotions itself, as the simulator does).
    pub fn handle_fence(&mut self, epoch: Epoch, now: Instant) {
        self.before_input(now);
        self.core.shard.fence_for_promotion(epoch);
    }

    /// Acts on a control, from another shard or this one.
    fn apply_control(&mut self, control: NodeControl, now: Instant) {
        let core = &mut self.core;
        match control {
            NodeControl::LinkOpened { backup, shard, conn } => self.role.handle_link_opened(&backup, shard, conn),
            NodeControl::CaughtUp { backup, shard, conn } => self.role.handle_caught_up(&backup, shard, conn, core),
            NodeControl::LinkLost { backup, shard, conn, kept } => {
                self.role.handle_link_lost(&backup, shard, conn, kept, now, core, &mut self.served)
            }
            NodeControl::MembersHeld { backup, conn, version } => {
                self.role.handle_members_held(&backup, conn, version, core)
            }
            NodeControl::Superseded { epoch } => epoch_watch::step_down(epoch, core),
            NodeControl::Members { ready } => self.ready_members = ready,
            NodeControl::ExpectedTimedOut { backups } => role::release_expected(&backups, core),
            NodeControl::ReadyBackups { ready } => role::set_ready_backups(&ready, core),
        }
    }

    /// Time passed: heartbeats, handshakes, dials, `ha-backup-timeout`, probes,
    /// `ha-min-ready-timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.set_time(now);
        self.served.handle_timeout(now, &mut self.core);
        if let Some(backup) = self.backup.as_mut() {
            backup.handle_timeout(now, &mut self.core.outputs);
        }
        self.before_input(now);
        self.role.handle_timeout(now, &mut self.core);
        self.watch.handle_timeout(now, &mut self.core);
        self.core.handle_quorum_timeout(now);
    }

    /// The next instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let granted = self.backup.as_ref().and_then(BackupSession::lease_granted);
        [
            self.served.poll_timeout(&self.core),
            self.backup.as_ref().and_then(BackupSession::poll_timeout),
            self.role.poll_timeout(),
            self.watch.poll_timeout(&self.core),
            ready_lease::ready_deadline(&self.core, granted),
            self.core.replication.as_ref().and_then(PrimaryReplication::poll_quorum_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The backup links served here that ended, by why (since the node was made).
    pub fn link_loss_counters(&self) -> LinkLossCounters {
        self.served.loss_counters()
    }

    /// Whether reading `conn` should wait: a client's publishes and acks add replication records,
    /// and while a stream holds too many unsent ones, clients are not read. Links are read on,
    /// since their confirms end the wait.
    pub fn read_paused(&self, conn: ConnId) -> bool {
        self.producers_must_pause() && !self.served.knows(conn) && !self.backup.as_ref().is_some_and(|b| b.owns(conn))
    }

    /// Whether a replication stream holds so many unsent records that clients must wait.
    pub fn producers_must_pause(&self) -> bool {
        self.core.replication.as_ref().is_some_and(PrimaryReplication::producers_must_pause)
    }

    /// Runs the shard and its replication until nothing moves, queues their outputs, and acts on
    /// a change of the broker's HA state.
    pub fn pump(&mut self, now: Instant) {
        self.core.set_time(now);
        loop {
            self.core.settle();
            self.core.transmit();
            self.served.send_batches(now, &mut self.core);
            self.follow_state(now);
            let Some(control) = self.core.poll_own_control() else { break };
            self.apply_control(control, now);
        }
    }

    /// The next thing for the shell to do: the node's own outputs in order, then its core's
    /// messages for the other shards (`NodeOutput::Peer`), by destination, in order per
    /// destination.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        if let Some(output) = self.core.outputs.pop() {
            return Some(output);
        }
        let shard = &mut self.core.shard;
        if self.peer_outbox.is_empty() && shard.has_peer_output() {
            let own = shard.id();
            for to in (0..self.core.config.shard_count).map(ShardId).filter(|&to| to != own) {
                self.peer_outbox.extend(shard.poll_peer(to).map(|message| (to, message)));
            }
        }
        let (shard, message) = self.peer_outbox.pop_front()?;
        Some(NodeOutput::Peer { shard, message })
    }

    /// Runs the checks that must precede any input at `now`: an expired ready lease takes effect
    /// (`backup::ready_lease`), and the link it ran on ends; then a change of the HA state not
    /// followed yet (made by that, or by an earlier input: a shell may hand over several inputs
    /// before one `pump`) is followed.
    fn before_input(&mut self, now: Instant) {
        self.core.set_time(now);
        let granted = self.backup.as_ref().and_then(BackupSession::lease_granted);
        if ready_lease::expire_ready(granted, now, &mut self.core) {
            if let Some(backup) = self.backup.as_mut() {
                let reason = "its ready lease ran out".to_string();
                backup.drop_accepted_link(reason, now, &mut self.core.outputs);
            }
        }
        self.follow_state_change(now);
    }

    /// Follows the broker's HA state now if it changed since the node last did.
    fn follow_state_change(&mut self, now: Instant) {
        if self.core.shard.ha().state() != self.seen_state {
            self.follow_state(now);
        }
    }

    /// Follows the broker's HA state: a backup of a cluster keeps a link to the primary; a broker
    /// that became a backup drops its streams; a promoted one stops its link and, entering
    /// `recovering`, holds acks for its expected backups.
    fn follow_state(&mut self, now: Instant) {
        let core = &mut self.core;
        let state = core.shard.ha().state();
        if state.is_backup() {
            if core.replication.is_some() {
                // Stepped down: the streams to our former backups end, and with them their links.
                core.drop_holders();
                self.served.drop_all(core);
            }
            if self.backup.is_none() && !core.config.peer_addresses.is_empty() {
                self.backup = Some(BackupSession::new(now, &core.config, &core.shard));
            }
            if let Some(backup) = self.backup.as_mut() {
                backup.poll_dial(now, &mut core.outputs);
            }
        } else if let Some(mut backup) = self.backup.take() {
            // Promoted: the link to the old primary ends.
            backup.stop(&mut core.outputs);
        }
        let previous = std::mem::replace(&mut self.seen_state, state);
        if state == previous {
            return;
        }
        if state.is_primary() && !previous.is_primary() {
            // A fresh view of the backups: links of an earlier term as primary are gone.
            self.role = PrimaryRole::new(core.config.shard_count);
            if core.config.min_ready_backups > 0 {
                // No backup is ready yet: the ready quorum holds from the first publish on, not
                // from the first link.
                core.change_holders(|_| ());
            }
        }
        if state == BrokerState::Recovering {
            self.role.begin_recovery(now, &self.ready_members, core);
        }
    }
}
