//! What every part of a node shares: the core `Shard`, the settings, the shard's replication (the
//! holders of its publishes), the outputs for the shell and the controls the node sent itself;
//! and the one hold path: running the shard and feeding its events to the holders (`settle`),
//! and changing who holds (`change_holders`).
//!
//! The parts of a node (`primary::served_links`, `primary::role`, `primary::epoch_watch`,
//! `backup::session`, `backup::ready_lease`) take a `NodeCore` (or the pieces of it they need) as
//! an argument; `ShardNode` owns it and the parts, so that dependencies point one way: the node
//! on its parts, the parts on this.
//!
//! Invariants:
//! - The shard's replica hold count equals the number of holders of its publishes (streams,
//!   collecting expected backups and a short ready quorum), after every change to them: they change only through
//!   `change_holders`, and each live event's hold count is asserted equal to the holders it
//!   reaches where it is fed (`replicate`).
//! - Every event the shard reported goes to the holders counted when it was made: `settle` runs
//!   before any change to them.

use std::collections::VecDeque;
use std::time::Instant;

use ringmq_core::frame::ErrorCode;
use ringmq_core::replication::{Hold, ReplicationEvent};
use ringmq_core::shard::{Shard, Transmit};

use crate::node::config::NodeConfig;
use crate::node::output::{NodeControl, NodeOutput, Outputs};
use crate::primary::replication::PrimaryReplication;

/// The state the parts of one node share. See the module doc.
pub(crate) struct NodeCore {
    /// The core state machine.
    pub(crate) shard: Shard,
    /// Settings.
    pub(crate) config: NodeConfig,
    /// Streams to this shard's backups, while a primary (from the first link or the promotion).
    pub(crate) replication: Option<PrimaryReplication>,
    /// Outputs not taken yet.
    pub(crate) outputs: Outputs,
    /// Controls this node sent itself, handled in `pump`.
    own_controls: VecDeque<NodeControl>,
    /// Scratch for `settle`: replication events and released holds.
    scratch: (Vec<ReplicationEvent>, Vec<Hold>),
    /// The time of the input being handled (`set_time`): when the events it makes happen.
    now: Instant,
}

impl NodeCore {
    /// The shared state around `shard`, with no replication and no output, at `now`.
    pub(crate) fn new(shard: Shard, config: NodeConfig, now: Instant) -> NodeCore {
        NodeCore {
            shard,
            config,
            replication: None,
            outputs: Outputs::default(),
            own_controls: VecDeque::new(),
            scratch: (Vec::new(), Vec::new()),
            now,
        }
    }

    /// An input at `now` is being handled: the events the shard makes from now on happen then.
    /// `now` never goes backwards; should a shell pass an earlier instant than before (one taken
    /// before its last call), the later one is kept.
    pub(crate) fn set_time(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// `ha-min-ready-timeout` passed at `now` for publishes held for want of ready backups: they
    /// are rejected (`NotEnoughBackups`, naming the option, the backups ready and the number
    /// required). The hold count is unchanged: a rejection releases a hold like a confirm.
    pub(crate) fn handle_quorum_timeout(&mut self, now: Instant) {
        self.settle();
        let Some(replication) = self.replication.as_mut() else { return };
        let mut rejected = Vec::new();
        if let Some(reason) = replication.handle_quorum_timeout(now, &mut rejected) {
            tracing::warn!(publishes = rejected.len(), %reason, "ha-min-ready-timeout: rejecting held publishes");
            self.shard.handle_holds_rejected(&rejected, ErrorCode::NotEnoughBackups, &reason.to_string());
        }
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

    /// The next control this node sent itself, in order.
    pub(crate) fn poll_own_control(&mut self) -> Option<NodeControl> {
        self.own_controls.pop_front()
    }

    /// Drives the shard and feeds its replication events to the streams until no held ack is
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
        replication.set_time(self.now);
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
        let (required, timeout) = (self.config.min_ready_backups, self.config.min_ready_timeout);
        let now = self.now;
        let replication = self.replication.get_or_insert_with(|| {
            let mut replication = PrimaryReplication::with_quorum(epoch, required, timeout);
            replication.set_time(now);
            replication
        });
        let result = change(replication);
        self.shard.set_replica_holds(replication.holding_streams());
        result
    }

    /// Stepped down: the streams and every hold they had end with them (a backup confirms no
    /// publish); new publishes take no hold.
    pub(crate) fn drop_holders(&mut self) {
        self.replication = None;
        self.shard.set_replica_holds(0);
    }

    /// Queues the core's bytes for its client connections.
    pub(crate) fn transmit(&mut self) {
        while let Some(Transmit { conn, bytes, close }) = self.shard.poll_transmit() {
            self.outputs.write(conn, bytes);
            if close {
                self.outputs.push(NodeOutput::Close { conn });
            }
        }
    }
}
