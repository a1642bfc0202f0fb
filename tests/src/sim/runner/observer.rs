//! The observer: the invariants checked after every step (through the oracle), what each broker
//! holds, whether the cluster converged, and the run's outcome and summary.
//!
//! Invariants:
//! - It only reads the brokers' state; nothing it does changes a node or the agenda.

use ringmq_core::wire::frame_type::{FrameType, LINK_FRAME_TYPES};

use super::*;

impl Simulation {
    /// For every broker whose link to the queue's shard of `primary` was accepted before
    /// `published_at` and is open at both ends: whether it holds `number`. The primary's stream
    /// to such a link holds the confirm of a publish enqueued after it opened until the backup
    /// applied it (a link opened later has it in its catch-up, which holds no confirm).
    pub(super) fn linked_holders(&mut self, primary: usize, published_at: SimTime, number: u64) -> Vec<(usize, bool)> {
        let queue_shard = ringmq_core::shard::shard_of(self.config.queue, self.config.shards).0;
        let mut linked: Vec<usize> = Vec::new();
        for connection in self.network.connections.values() {
            if connection.closed != [false, false] {
                continue;
            }
            let (End::Node { node: from, .. }, End::Node { node: to, .. }) = (connection.ends[0], connection.ends[1])
            else {
                continue;
            };
            let accepted_before = connection.link_accepted_at.is_some_and(|at| at < published_at);
            if to.broker == primary && from.broker != primary && from.shard == queue_shard && accepted_before {
                linked.push(from.broker);
            }
        }
        linked.sort_unstable();
        linked.dedup();
        linked.into_iter().map(|b| (b, self.held_cached(b).contains(&number))).collect()
    }

    /// For every backup in `primary`'s own ready set (shard 0's, as `ha-status` shows it) that is
    /// `ready` now: whether it holds `number`. A restarted member (`joining`) is left out: the
    /// primary counts it until it sees its links end.
    pub(super) fn ready_set_holders(&mut self, primary: usize, number: u64) -> Vec<(usize, bool)> {
        let Some(status) = self.brokers[primary].member_status() else { return Vec::new() };
        let members: Vec<usize> = status
            .ready_set
            .members
            .iter()
            .filter_map(|name| self.resolve(name))
            .filter(|&b| self.brokers[b].status().is_some_and(|(state, _)| state == BrokerState::Ready))
            .collect();
        members.into_iter().map(|b| (b, self.held_cached(b).contains(&number))).collect()
    }

    /// `held`, computed once per step and broker.
    pub(super) fn held_cached(&mut self, broker: usize) -> &BTreeSet<u64> {
        let steps = self.steps;
        if self.held_cache[broker].as_ref().is_none_or(|(at, _)| *at != steps) {
            let held = self.held(broker);
            self.held_cache[broker] = Some((steps, held));
        }
        &self.held_cache[broker].as_ref().expect("just filled").1
    }

    /// Checks the invariants after a step.
    pub(super) fn check(&mut self) -> Result<(), Violation> {
        let observations: Vec<BrokerObservation> = self
            .brokers
            .iter()
            .map(|b| {
                let status = b.status();
                BrokerObservation {
                    incarnation: b.incarnation,
                    state: status.map(|(s, _)| s),
                    epoch: status.map(|(_, e)| e).unwrap_or_default(),
                }
            })
            .collect();
        let promoted = self.oracle.observe(&observations)?;
        for (broker, before) in promoted {
            let held = self.held(broker);
            self.trace.record(format!(
                "{} b{broker} promoted from {before:?} in epoch {}, holds {} messages",
                self.now,
                observations[broker].epoch,
                held.len()
            ));
            self.oracle.check_promotion(broker, before, &held)?;
        }
        Ok(())
    }

    /// The numbers broker `broker` holds in the queue (ready or delivered and unacked).
    pub(super) fn held(&self, broker: usize) -> BTreeSet<u64> {
        let mut held = BTreeSet::new();
        let mut events = Vec::new();
        for node in &self.brokers[broker].nodes {
            events.clear();
            node.shard().replication_snapshot(&mut events);
            for event in &events {
                if let ReplicationEvent::Enqueued { queue, message, .. } = event {
                    if &**queue == self.config.queue {
                        if let Some(number) = std::str::from_utf8(&message.body).ok().and_then(|t| t.parse().ok()) {
                            held.insert(number);
                        }
                    }
                }
            }
        }
        held
    }

    /// Whether the cluster converged: one active primary, every other broker ready, everything
    /// confirmed and received.
    pub(super) fn converged(&self) -> bool {
        let states: Vec<Option<BrokerState>> = self.brokers.iter().map(|b| b.status().map(|(s, _)| s)).collect();
        let active = states.iter().filter(|s| **s == Some(BrokerState::Active)).count();
        let ready = states.iter().filter(|s| **s == Some(BrokerState::Ready)).count();
        // The states and the producer first: the missing numbers cost a pass over every number.
        active == 1
            && active + ready == self.brokers.len()
            && self.producer.all_confirmed()
            && self.consumer.received.len() as u64 + self.oracle.forgiven.len() as u64 >= self.producer.next_number
            && self.oracle.missing(self.producer.next_number, &self.consumer.received).is_empty()
    }

    /// Why the run did not converge.
    pub(super) fn stuck_report(&self) -> String {
        let states: Vec<String> = self
            .brokers
            .iter()
            .map(|b| match b.status() {
                Some((s, e)) => format!("b{}: {s} epoch {e}", b.index),
                None => format!("b{}: down", b.index),
            })
            .collect();
        let missing = self.oracle.missing(self.producer.next_number, &self.consumer.received);
        let holders: Vec<String> = (0..self.brokers.len())
            .map(|b| {
                let held = self.held(b);
                format!("b{b} holds {} of them", missing.iter().filter(|n| held.contains(n)).count())
            })
            .collect();
        format!(
            "not converged within {:?} of healing: {}; producer: {} published, {} unconfirmed ({}); consumer: {} \
             missing {:?} ({}; {})",
            self.config.liveness,
            states.join(", "),
            self.producer.next_number,
            self.producer.unconfirmed.len(),
            self.producer.describe(),
            missing.len(),
            &missing[..missing.len().min(10)],
            self.consumer.describe(),
            holders.join(", ")
        )
    }

    /// The run's outcome.
    pub(super) fn outcome(&self, result: Result<(), Violation>) -> Outcome {
        let counters = &self.oracle.counters;
        let links_closed_unconfirmed = self.brokers.iter().map(SimBroker::links_closed_unconfirmed).sum::<u64>();
        let summary = format!(
            "{} published, {} confirmed, {} delivered; duplicates {}, redelivered again {}, stale confirms {} ({} never delivered), lost with \
             cluster {}, lost with their holders {}; checks: {} confirms, {} deliveries; promotions {}, cluster restarts {}; faults: resets {}, partitions {}, crashes {}, pauses {}, \
             clock jumps {}; batches lost {}, duplicated {}; links closed with a batch unconfirmed {}",
            self.producer.next_number,
            self.oracle.confirmed.len(),
            self.oracle.delivered.len(),
            counters.duplicates,
            counters.redelivered_again,
            counters.stale_confirms,
            self.oracle.stale.iter().filter(|n| !self.consumer.received.contains(n)).count(),
            counters.lost_with_cluster,
            counters.lost_with_holders,
            counters.confirm_checks,
            counters.delivery_checks,
            counters.promotions,
            self.manager.restarts,
            self.faults_done[0],
            self.faults_done[1],
            self.faults_done[2],
            self.faults_done[3],
            self.faults_done[4],
            self.network.counters.frames_lost,
            self.network.counters.frames_duplicated,
            links_closed_unconfirmed,
        );
        Outcome {
            seed: self.config.seed,
            steps: self.steps,
            sim_time: self.now,
            trace_hash: self.trace.hash(),
            failure: result.err().map(|violation| Failure {
                violation,
                trace_tail: self.trace.recent().map(str::to_owned).collect(),
                config: format!(
                    "{} brokers x {} shards, heartbeat {:?}, maintenance {:?}, backup timeout {:?}; {}",
                    self.config.brokers,
                    self.config.shards,
                    self.config.heartbeat,
                    self.config.maintenance,
                    self.config.backup_timeout,
                    self.config.faults.describe()
                ),
            }),
            summary,
            counters: self.oracle.counters.clone(),
            links_closed_unconfirmed,
        }
    }
}

/// The names of the whole frames at the start of `bytes`, for the verbose trace: each type byte's
/// name in the frame-type registry, native or link, and `other` for a byte it does not know.
pub(super) fn frame_kinds(bytes: &[u8]) -> String {
    let mut kinds = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        kinds.push(frame_type_name(rest[4]));
        if length == 0 || rest.len() < 4 + length {
            break;
        }
        rest = &rest[4 + length..];
    }
    format!("[{}]", kinds.join(" "))
}

/// The name of the frame type `byte` in `ringmq_core::wire::frame_type`: a native type's
/// (`FrameType::name`), a replication link type's (`LINK_FRAME_TYPES`), or `other`.
fn frame_type_name(byte: u8) -> &'static str {
    if let Some(frame_type) = FrameType::from_u8(byte) {
        return frame_type.name();
    }
    LINK_FRAME_TYPES.iter().find(|(link, _)| *link == byte).map_or("other", |(_, name)| name)
}
