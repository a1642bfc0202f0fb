//! What must hold, checked as the run goes: the oracle keeps what clients saw and what brokers
//! were, and each check returns a `Violation` naming what broke.
//!
//! Safety, checked after every step:
//! - **One primary per epoch**: no two brokers serve clients (`recovering`, `active`) in the same
//!   epoch.
//! - **Epochs never go backwards** on a broker within one incarnation.
//! - **Legal transitions**: every change of a broker's state between two observations is a path of
//!   rows of `broker_state`'s table (several rows may pass within one step, so a path, not one row).
//! - **Confirmed means held by the required backups** (`check_confirm`): when the producer gets a
//!   confirm, every backup the primary counts as ready holds the message or it was acked.
//! - **Confirmed survives failover** (`check_promotion`): when a `ready` backup is promoted, it
//!   holds every confirmed message not yet acked.
//! - **Acked is not delivered again** (`check_delivery`): a message whose ack reached a broker is
//!   never delivered again by that broker (same incarnation); a redelivered flag never repeats on
//!   the connection that first got the message.
//!
//! Counted, not failed (the README's known windows, reported with every run):
//! - duplicates: a number delivered again without the redelivered flag (stored twice);
//! - stale confirms: a confirm from a primary after a newer one was promoted (the window between
//!   a paused primary resuming and its epoch probe); such a message may be lost;
//! - lost with the cluster: confirmed messages missing on a `joining` broker promoted because no
//!   broker was ready (every holder was gone), or after the cluster manager restarted the cluster.
//!
//! Liveness (`check_converged`) is asked by the runner after healing.
//!
//! Not here: how a broker's holdings are read (`runner`), when checks run.
//!
//! Invariants of the oracle itself:
//! - `confirmed` only grows; a number in `forgiven` or `stale` is never required again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ringmq_core::broker_state::{allowed_causes, BrokerState};
use ringmq_core::epoch::Epoch;

use super::clock::SimTime;
use super::network::SimConnId;

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which invariant, short.
    pub invariant: &'static str,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// A broker as observed after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerObservation {
    /// Its incarnation.
    pub incarnation: u32,
    /// Shard 0's state, `None` while the broker is down.
    pub state: Option<BrokerState>,
    /// Shard 0's epoch.
    pub epoch: Epoch,
}

/// Where an ack was sent.
#[derive(Debug, Clone, Copy)]
struct AckSent {
    /// The connection.
    conn: SimConnId,
    /// The offset in the consumer's byte stream after the ack.
    offset_end: u64,
    /// The broker and incarnation the connection goes to.
    broker: (usize, u32),
}

/// Counts of what is allowed but worth reporting.
#[derive(Debug, Default, Clone)]
pub struct OracleCounters {
    /// Numbers delivered again without the redelivered flag.
    pub duplicates: u64,
    /// Numbers delivered again with the redelivered flag.
    pub redelivered_again: u64,
    /// Confirms that came from a primary after a newer one was promoted.
    pub stale_confirms: u64,
    /// Confirmed messages given up because no holder of them remained.
    pub lost_with_cluster: u64,
    /// Confirmed messages a promoted ready backup lacked legitimately: every broker that held
    /// them when they were confirmed (the primary and its linked backups) crashed since, and the
    /// backup had left the primary's ready set (the price of not stalling for a hung backup;
    /// `ha-min-ready-backups` sets how many backups must hold a confirmed message).
    pub lost_with_holders: u64,
    /// Promotions observed.
    pub promotions: u64,
    /// Promotion checks of a ready backup (each compares its holdings).
    pub promotion_checks: u64,
    /// Confirm checks against the linked backups.
    pub confirm_checks: u64,
    /// Delivery checks against the linked backups.
    pub delivery_checks: u64,
}

/// What the clients saw and what the brokers were.
#[derive(Debug, Default)]
pub struct Oracle {
    /// Numbers confirmed `stored`, with when.
    pub confirmed: BTreeMap<u64, SimTime>,
    /// For each confirmed number, the brokers (and their incarnations) that held it at its first
    /// confirm: the primary and the linked backups holding it.
    keepers: BTreeMap<u64, Vec<(usize, u32)>>,
    /// Numbers whose last ack was sent, where.
    acks: BTreeMap<u64, AckSent>,
    /// Numbers acked (an ack sent at least once).
    pub acked: BTreeSet<u64>,
    /// Bytes of each consumer connection delivered to its broker.
    consumer_bytes_delivered: BTreeMap<SimConnId, u64>,
    /// Per consumer connection, the numbers delivered on it.
    delivered_on: BTreeMap<SimConnId, BTreeSet<u64>>,
    /// Numbers ever delivered.
    pub delivered: BTreeSet<u64>,
    /// Confirmed numbers that may be lost legitimately (no holder remained).
    pub forgiven: BTreeSet<u64>,
    /// Numbers confirmed by a superseded primary.
    pub stale: BTreeSet<u64>,
    /// The last observation of each broker.
    observed: Vec<Option<BrokerObservation>>,
    /// The highest epoch any broker was promoted in.
    pub epoch_highest: Epoch,
    /// Per broker: the rank of its last promotion in this life among all seen (later is higher).
    promotion_order: Vec<Option<u64>>,
    /// Per broker: whether it serves clients now.
    serving: Vec<bool>,
    /// Promotions seen.
    promotions_seen: u64,
    /// Counters.
    pub counters: OracleCounters,
}

impl Oracle {
    /// An oracle for `brokers` brokers.
    pub fn new(brokers: usize) -> Oracle {
        Oracle {
            observed: vec![None; brokers],
            promotion_order: vec![None; brokers],
            serving: vec![false; brokers],
            ..Oracle::default()
        }
    }

    /// Whether another broker serves clients since a later promotion than `broker`'s last one: a
    /// confirm from `broker` (sent while it was a primary, perhaps received after it stepped
    /// down) is then stale: the cluster manager's choice is the later one, whatever the epochs
    /// say.
    pub fn superseded(&self, broker: usize) -> bool {
        let Some(own) = self.promotion_order[broker] else { return false };
        (0..self.serving.len())
            .any(|other| other != broker && self.serving[other] && self.promotion_order[other].is_some_and(|o| o > own))
    }

    /// The last observed state of a broker.
    pub fn state(&self, broker: usize) -> Option<BrokerState> {
        self.observed[broker].and_then(|o| o.state)
    }

    /// Checks the brokers' states after a step: legal transitions, epochs, one primary per
    /// epoch. Returns the brokers promoted since the last observation, with their state before.
    ///
    /// # Errors
    /// A violation of one of those invariants.
    pub fn observe(&mut self, now: &[BrokerObservation]) -> Result<Vec<(usize, Option<BrokerState>)>, Violation> {
        let mut promoted = Vec::new();
        for (broker, current) in now.iter().enumerate() {
            // The state before, within the same incarnation (a restart starts afresh).
            let before = self.observed[broker].filter(|b| b.incarnation == current.incarnation);
            let old = before.and_then(|b| b.state);
            if let (Some(before), Some(old), Some(state)) = (before, old, current.state) {
                if old != state && !reachable(old, state) {
                    return Err(Violation {
                        invariant: "legal transitions",
                        detail: format!(
                            "broker {broker} went {old} -> {state}, which no row (or two) of the table allows"
                        ),
                    });
                }
                if current.epoch < before.epoch {
                    return Err(Violation {
                        invariant: "epochs never go backwards",
                        detail: format!("broker {broker} went from epoch {} to {}", before.epoch, current.epoch),
                    });
                }
            }
            if before.is_none() {
                // A restart (or the first look): no promotion in this life yet.
                self.promotion_order[broker] = None;
            }
            let primary = current.state.is_some_and(BrokerState::is_primary);
            if primary && !old.is_some_and(BrokerState::is_primary) {
                promoted.push((broker, old));
                self.promotions_seen += 1;
                self.promotion_order[broker] = Some(self.promotions_seen);
            }
            self.serving[broker] = primary;
            if primary && current.epoch > self.epoch_highest {
                self.epoch_highest = current.epoch;
            }
            self.observed[broker] = Some(*current);
        }
        let mut serving: BTreeMap<Epoch, usize> = BTreeMap::new();
        for (broker, current) in now.iter().enumerate() {
            if current.state.is_some_and(BrokerState::is_primary) {
                if let Some(other) = serving.insert(current.epoch, broker) {
                    return Err(Violation {
                        invariant: "one primary per epoch",
                        detail: format!("brokers {other} and {broker} both serve clients in epoch {}", current.epoch),
                    });
                }
            }
        }
        self.counters.promotions += promoted.len() as u64;
        Ok(promoted)
    }

    /// A promotion of `broker` (state before: `before`), which holds `held`: a ready backup must
    /// hold every confirmed message not acked; a joining one (no broker was ready) loses what it
    /// lacks, which is forgiven and counted.
    ///
    /// # Errors
    /// A ready backup lacks a confirmed, unacked message.
    pub fn check_promotion(
        &mut self,
        broker: usize,
        before: Option<BrokerState>,
        held: &BTreeSet<u64>,
    ) -> Result<(), Violation> {
        let missing: Vec<u64> = self
            .confirmed
            .keys()
            .copied()
            .filter(|n| !self.acked.contains(n) && !self.forgiven.contains(n))
            .filter(|n| !held.contains(n))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if before == Some(BrokerState::Ready) {
            // Lost with every broker that held it: not the promotion's doing.
            let (lost, missing): (Vec<u64>, Vec<u64>) = missing.into_iter().partition(|n| {
                self.keepers.get(n).is_some_and(|keepers| {
                    keepers.iter().all(|&(keeper, incarnation)| {
                        self.observed[keeper].is_none_or(|o| o.state.is_none() || o.incarnation != incarnation)
                    })
                })
            });
            self.counters.lost_with_holders += lost.len() as u64;
            self.forgiven.extend(lost);
            if missing.is_empty() {
                return Ok(());
            }
            self.counters.promotion_checks += 1;
            return Err(Violation {
                invariant: "confirmed survives failover",
                detail: format!(
                    "broker {broker}, promoted from ready, lacks {} confirmed unacked messages: {}",
                    missing.len(),
                    list(&missing)
                ),
            });
        }
        self.counters.lost_with_cluster += missing.len() as u64;
        self.forgiven.extend(missing);
        Ok(())
    }

    /// The whole cluster restarted: every confirmed, unacked message is given up.
    pub fn cluster_restarted(&mut self) {
        let lost: Vec<u64> =
            self.confirmed.keys().copied().filter(|n| !self.acked.contains(n) && !self.forgiven.contains(n)).collect();
        self.counters.lost_with_cluster += lost.len() as u64;
        self.forgiven.extend(lost);
    }

    /// The producer got a `stored` confirm from a primary, `superseded` when a running broker
    /// serves clients in a newer epoch (the confirm is then stale). `ready_holders` are, for each backup the primary counts as ready, whether it holds the message (when the
    /// driver tells which backups those are).
    ///
    /// # Errors
    /// A ready backup lacks the message and it was not acked.
    pub fn confirmed(
        &mut self,
        number: u64,
        at: SimTime,
        superseded: bool,
        ready_holders: &[(usize, bool)],
        keepers: Vec<(usize, u32)>,
    ) -> Result<(), Violation> {
        self.confirmed.entry(number).or_insert(at);
        self.keepers.entry(number).or_insert(keepers);
        if superseded {
            self.counters.stale_confirms += 1;
            self.stale.insert(number);
        }
        for &(backup, holds) in ready_holders {
            self.counters.confirm_checks += 1;
            if !holds && !self.acked.contains(&number) {
                return Err(Violation {
                    invariant: "confirmed means held",
                    detail: format!(
                        "message {number} confirmed while backup {backup}, linked to the primary before it was \
                         published, does not hold it"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The producer got a `stored` confirm from `primary`, not stale: `members` are, for each
    /// backup of the primary's own ready set that is `ready`, whether it holds the message.
    ///
    /// # Errors
    /// A member lacks the message and it was not acked: the primary confirmed without a backup it
    /// counts as ready.
    pub fn confirmed_by_ready_set(
        &mut self,
        number: u64,
        primary: usize,
        members: &[(usize, bool)],
    ) -> Result<(), Violation> {
        for &(backup, holds) in members {
            self.counters.confirm_checks += 1;
            if !holds && !self.acked.contains(&number) {
                return Err(Violation {
                    invariant: "confirmed means held by the ready set",
                    detail: format!(
                        "message {number} confirmed by broker {primary} while backup {backup}, in its ready set, does \
                         not hold it"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The consumer sent an ack for `numbers` on `conn` to `broker`; its bytes end at
    /// `offset_end` of the connection's stream.
    pub fn acked(&mut self, numbers: &[u64], conn: SimConnId, offset_end: u64, broker: (usize, u32)) {
        for &number in numbers {
            self.acked.insert(number);
            self.acks.insert(number, AckSent { conn, offset_end, broker });
        }
    }

    /// `bytes` of consumer connection `conn` have reached its broker in all.
    pub fn consumer_bytes_delivered(&mut self, conn: SimConnId, bytes: u64) {
        self.consumer_bytes_delivered.insert(conn, bytes);
    }

    /// A delivery of `number` on `conn` from `broker`.
    ///
    /// # Errors
    /// The same broker delivered a message whose ack it had received, or the redelivered flag
    /// came for a message already delivered on the same connection.
    pub fn delivered(
        &mut self,
        number: u64,
        redelivered: bool,
        conn: SimConnId,
        broker: (usize, u32),
    ) -> Result<(), Violation> {
        let seen_before = !self.delivered.insert(number);
        let on_conn = self.delivered_on.entry(conn).or_default();
        let seen_on_conn = !on_conn.insert(number);
        if let Some(ack) = self.acks.get(&number) {
            let ack_arrived = self.consumer_bytes_delivered.get(&ack.conn).is_some_and(|&d| d >= ack.offset_end);
            if ack_arrived && ack.broker == broker && redelivered {
                return Err(Violation {
                    invariant: "acked is not delivered again",
                    detail: format!(
                        "broker {} (incarnation {}) delivered message {number} again after it received its ack on {}",
                        broker.0, broker.1, ack.conn
                    ),
                });
            }
        }
        if seen_on_conn && redelivered {
            return Err(Violation {
                invariant: "acked is not delivered again",
                detail: format!("message {number} came again on {conn}, flagged redelivered, without being released"),
            });
        }
        if seen_before {
            if redelivered {
                self.counters.redelivered_again += 1;
            } else {
                self.counters.duplicates += 1;
            }
        }
        Ok(())
    }

    /// A delivery of `number` by a primary: `holders` are, for each backup linked to it since
    /// before the message was first published, whether it holds the message.
    ///
    /// # Errors
    /// A linked backup lacks the message (and it was not acked).
    pub fn delivered_held(&mut self, number: u64, holders: &[(usize, bool)]) -> Result<(), Violation> {
        for &(backup, holds) in holders {
            self.counters.delivery_checks += 1;
            if !holds && !self.acked.contains(&number) {
                return Err(Violation {
                    invariant: "delivered means held",
                    detail: format!(
                        "message {number} delivered while backup {backup}, linked to the primary before it was first \
                         published, does not hold it"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether everything published arrived: the numbers below `published` that the consumer
    /// never got, less those given up (`forgiven`, `stale`).
    pub fn missing(&self, published: u64, received: &BTreeSet<u64>) -> Vec<u64> {
        (0..published).filter(|n| !received.contains(n) && !self.forgiven.contains(n)).collect()
    }
}

/// Whether `to` can follow `from` through one or two rows of the state table (a step may carry
/// a link's accept and its marked-ready together).
fn reachable(from: BrokerState, to: BrokerState) -> bool {
    let row = |a: BrokerState, b: BrokerState| !allowed_causes(a, b).is_empty();
    row(from, to) || BrokerState::ALL.iter().any(|&middle| row(from, middle) && row(middle, to))
}

/// A short list of numbers for a message.
fn list(numbers: &[u64]) -> String {
    let shown: Vec<String> = numbers.iter().take(20).map(u64::to_string).collect();
    if numbers.len() > 20 {
        format!("{} ...", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_the_table_are_reachable_and_others_not() {
        // Goal: the transition check accepts several rows in one step and nothing else.
        // Method: a two-row path, and pairs no path allows.
        assert!(reachable(BrokerState::Joining, BrokerState::Ready));
        assert!(reachable(BrokerState::Ready, BrokerState::Active));
        assert!(!reachable(BrokerState::Joining, BrokerState::Standalone));
        assert!(!reachable(BrokerState::Active, BrokerState::Ready));
        assert!(!reachable(BrokerState::CatchUp, BrokerState::Active));
    }
}
