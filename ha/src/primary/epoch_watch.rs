//! Fencing a superseded primary: while this broker is a primary of a cluster, shard 0 asks every
//! other broker of `ha-brokers-url`, once per `link-maintenance-interval`, for its HA state and
//! epoch (`NodeOutput::Probe`). When one of them is a primary of a newer epoch, this broker steps
//! down (`superseded-by-newer-epoch`): its client connections close, it becomes a joining backup
//! and links to the newer primary, which resynchronises it.
//!
//! This covers a primary that was paused (SIGSTOP, a long stall, a partition) while the cluster
//! manager promoted another broker, and that comes back still believing it is the primary. The
//! reference relied on the cluster manager alone for this. A backup link that carries a newer
//! epoch than ours (`served_links`) makes us step down at once, without waiting for the next probe.
//!
//! Until the probe finds the newer primary (at most one maintenance interval plus the probe's round
//! trip after it resumes), a superseded primary should confirm nothing its backups lack: the
//! backup that was promoted was ready here, so its lost link holds confirms for
//! `ha-backup-timeout` (`primary::role`, "Detached backups"), and the other backups were fenced by
//! the promotion check, so none of them lets it go sooner. A primary with no ready backup at all
//! confirms alone, as it would anyway without `ha-min-ready-backups`. The window is not closed:
//! the simulation, which checks every message a superseded primary confirmed, still finds such
//! confirms lost in 5 of 100,000 seeds (`tests/SIMULATION.md`, "Open").
//!
//! Invariants:
//! - Only a primary state of a cluster (`recovering`, `active`) steps down, and only for a peer
//!   that reports a primary state with a strictly newer epoch.
//! - A peer that does not answer is skipped: silence never demotes.

use std::time::{Duration, Instant};

use ringmq_core::broker_state::{BrokerState, TransitionCause};
use ringmq_core::epoch::Epoch;

use crate::node::core::NodeCore;
use crate::node::output::NodeOutput;

/// When shard 0 probes its peers next.
#[derive(Debug)]
pub(crate) struct EpochWatch {
    /// `link-maintenance-interval`.
    interval: Duration,
    /// The next round of probes.
    next_at: Instant,
}

impl EpochWatch {
    /// A watch whose first round is one interval after `now`.
    pub(crate) fn new(now: Instant, interval: Duration) -> EpochWatch {
        EpochWatch { interval, next_at: now + interval }
    }

    /// The next round of probes, while this shard probes.
    pub(crate) fn poll_timeout(&self, core: &NodeCore) -> Option<Instant> {
        watches(core).then_some(self.next_at)
    }

    /// Starts a round of probes when one is due.
    pub(crate) fn handle_timeout(&mut self, now: Instant, core: &mut NodeCore) {
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.interval;
        if !watches(core) {
            return;
        }
        for address in &core.config.peer_addresses {
            core.outputs.push(NodeOutput::Probe { address: address.clone() });
        }
    }
}

/// Whether this shard probes: shard 0 of a primary of a cluster.
fn watches(core: &NodeCore) -> bool {
    let state = core.shard.ha().state();
    core.shard.id().0 == 0
        && !core.config.peer_addresses.is_empty()
        && matches!(state, BrokerState::Recovering | BrokerState::Active)
}

/// A probe of `address` answered with its state and epoch, or not at all (`None`).
pub(crate) fn handle_probe_answer(address: &str, answer: Option<(BrokerState, Epoch)>, core: &mut NodeCore) {
    let Some((state, epoch)) = answer else { return };
    let ours = core.shard.ha().epoch();
    if epoch > ours && matches!(state, BrokerState::Recovering | BrokerState::Active) && watches(core) {
        tracing::warn!(peer = %address, %epoch, %ours, "a newer primary exists: stepping down");
        step_down(epoch, core);
    }
}

/// Shard 0: this primary learned of a newer epoch; it becomes a joining backup. The other
/// shards follow through the core, and each node drops its streams when it sees the backup
/// state (`ShardNode::pump`).
pub(crate) fn step_down(epoch: Epoch, core: &mut NodeCore) {
    let state = core.shard.ha().state();
    if !state.is_primary() || state == BrokerState::Standalone {
        return;
    }
    core.shard.observe_epoch(epoch);
    if let Err(error) = core.shard.handle_ha_transition(BrokerState::Joining, TransitionCause::SupersededByNewerEpoch) {
        tracing::warn!(%error, "could not step down");
    }
}
