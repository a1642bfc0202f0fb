//! The ready quorum of one primary shard (`ha-min-ready-backups`, beyond the reference; like
//! Kafka's `min.insync.replicas`): while fewer backups than the minimum are ready here, the shard's
//! publishes are held by one more holder, the quorum, so that an isolated primary cannot confirm
//! what no other broker has.
//!
//! *Ready here*: a backup that shard 0 counts as ready (its last `ready` list,
//! `NodeControl::ReadyBackups`) and that has a caught-up link on this shard. Shard 0 decides
//! readiness for the broker (`primary::membership`); this shard checks its own links too, because
//! the list comes by message: a link lost here counts at once, before shard 0's next list.
//!
//! While *short* (fewer ready here than the minimum) the quorum counts as one holder
//! (`holding_streams()`), and *collects* the hold of every new `Enqueued` and `Barrier` event, as
//! an expected backup does (`expected_backups`). It also takes the holds an expected backup
//! collected or kept when that backup times out (`ha-backup-timeout`, detached backups): released
//! then, they would confirm messages only this broker may hold. Once enough backups are ready
//! here, everything it holds is released: each such message was stored before the ready backup's
//! link here opened (so its catch-up carried it, and it confirmed it), or after (so that link's
//! stream holds it on its own), or was consumed. A collected hold is also released when its
//! message is dequeued first, as expected backups' are (the reference's "confirmed or consumed").
//! With `ha-min-ready-timeout`, a hold it took longer ago than that is *rejected*: the publish's
//! confirm becomes `Rejected` `NotEnoughBackups`, naming the option, the backups ready and the
//! number required (the message stays stored on this broker).
//!
//! Invariants:
//! - With a minimum of 0 it never holds and never counts.
//! - It counts in `holding_streams()` exactly while short; it changes between short and not only
//!   in `set_ready` and `handle_link_lost` (both through `NodeCore::change_holders`).
//! - Every hold it takes is released exactly once: by enough ready backups, the message's dequeue
//!   (a barrier's never), its queue's deletion, or the timeout (rejected).
//! - Nothing is held while not short: leaving short releases everything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmq_core::replication::{Position, ReplicationEvent};

use crate::primary::stream::{HeldRecord, Hold};

/// The reason a publish held for want of ready backups was rejected (`ha-min-ready-timeout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not confirmed: {ready} backups ready, ha-min-ready-backups requires {required}, for longer than \
     ha-min-ready-timeout ({timeout:?}); the message may be stored on the primary only"
)]
pub struct TooFewReadyBackups {
    /// Backups ready on the rejecting shard when it gave up.
    pub ready: usize,
    /// `ha-min-ready-backups`.
    pub required: usize,
    /// `ha-min-ready-timeout`.
    pub timeout: Duration,
}

/// Holds with their ids (for the timeout).
type IdentifiedHolds = Vec<(u64, Hold)>;

/// The quorum of one primary shard. See the module doc.
#[derive(Debug)]
pub(super) struct ReadyQuorum {
    /// `ha-min-ready-backups`; 0: never holds.
    required: usize,
    /// `ha-min-ready-timeout`; `None`: holds until enough backups are ready.
    timeout: Option<Duration>,
    /// Shard 0's ready backups, as last told.
    ready_listed: BTreeSet<String>,
    /// Backups ready here at the last count.
    ready_here: usize,
    /// Collected holds by queue and message position, each with its id; a message may have two
    /// (its own, and one taken over from an expected backup).
    collected: BTreeMap<Arc<str>, BTreeMap<Position, IdentifiedHolds>>,
    /// Collected `Barrier` holds by queue, in order, each with its id.
    barriers: BTreeMap<Arc<str>, VecDeque<(u64, Hold)>>,
    /// With a timeout: each hold's deadline, in the order taken (so in deadline order), with
    /// where it is kept; entries of holds released meanwhile are skipped when reached.
    deadlines: VecDeque<(Instant, Arc<str>, Option<Position>, u64)>,
    /// The next hold's id.
    next_id: u64,
}

impl ReadyQuorum {
    /// A quorum of `required` ready backups (0: none), with nothing ready yet: short unless
    /// `required` is 0.
    pub(super) fn new(required: usize, timeout: Option<Duration>) -> ReadyQuorum {
        ReadyQuorum {
            required,
            timeout,
            ready_listed: BTreeSet::new(),
            ready_here: 0,
            collected: BTreeMap::new(),
            barriers: BTreeMap::new(),
            deadlines: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Whether fewer backups than required are ready here: it collects, and counts as a holder.
    pub(super) fn is_short(&self) -> bool {
        self.ready_here < self.required
    }

    /// 1 while short, else 0: its share of `holding_streams()`.
    pub(super) fn collecting(&self) -> usize {
        usize::from(self.is_short())
    }

    /// Backups ready here at the last count, and the number required.
    pub(super) fn ready(&self) -> (usize, usize) {
        (self.ready_here, self.required)
    }

    /// How many holds it has (for status and tests).
    pub(super) fn held(&self) -> usize {
        let collected = self.collected.values().flat_map(BTreeMap::values).map(Vec::len).sum::<usize>();
        collected + self.barriers.values().map(VecDeque::len).sum::<usize>()
    }

    /// Shard 0's ready backups changed to `ready`; then `recount`.
    pub(super) fn set_listed(&mut self, ready: &[String]) {
        self.ready_listed = ready.iter().cloned().collect();
    }

    /// Counts the listed backups `is_ready_here`; leaving short releases every hold.
    pub(super) fn recount(&mut self, is_ready_here: impl Fn(&str) -> bool, released: &mut Vec<Hold>) {
        self.ready_here = self.ready_listed.iter().filter(|backup| is_ready_here(backup)).count();
        if !self.is_short() {
            for held in std::mem::take(&mut self.collected).into_values() {
                released.extend(held.into_values().flatten().map(|(_, hold)| hold));
            }
            for held in std::mem::take(&mut self.barriers).into_values() {
                released.extend(held.into_iter().map(|(_, hold)| hold));
            }
            self.deadlines.clear();
        }
    }

    /// Before `event` goes to the streams, at `now`: while short, collects its hold; a dequeue or
    /// a queue's deletion releases what it holds for it.
    pub(super) fn collect(&mut self, event: &ReplicationEvent, now: Option<Instant>, released: &mut Vec<Hold>) {
        match event {
            ReplicationEvent::Enqueued { queue, position, hold: Some(hold), .. } if self.is_short() => {
                self.take(queue, Some(*position), *hold, now);
            }
            ReplicationEvent::Barrier { queue, hold, .. } if self.is_short() => {
                self.take(queue, None, *hold, now);
            }
            ReplicationEvent::Dequeued { queue, position } => {
                let Some(held) = self.collected.get_mut(queue) else { return };
                released.extend(held.remove(position).into_iter().flatten().map(|(_, hold)| hold));
                if held.is_empty() {
                    self.collected.remove(queue);
                }
            }
            ReplicationEvent::QueueDeleted { name } => {
                if let Some(held) = self.collected.remove(name) {
                    released.extend(held.into_values().flatten().map(|(_, hold)| hold));
                }
                released.extend(self.barriers.remove(name).into_iter().flatten().map(|(_, hold)| hold));
            }
            _ => {}
        }
    }

    /// Holds `held` (what an expected backup collected or kept, given up on) if short; else
    /// releases it.
    pub(super) fn take_over(&mut self, held: Vec<HeldRecord>, now: Option<Instant>, released: &mut Vec<Hold>) {
        for record in held {
            if self.is_short() {
                self.take(&Arc::from(record.queue), record.position, record.hold, now);
            } else {
                released.push(record.hold);
            }
        }
    }

    /// When the oldest hold's timeout passes (it may have been released meanwhile).
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.front().map(|(deadline, ..)| *deadline)
    }

    /// At `now`: every hold taken `ha-min-ready-timeout` ago or longer is rejected (appended to
    /// `rejected`). Returns the reason when any was.
    pub(super) fn handle_timeout(&mut self, now: Instant, rejected: &mut Vec<Hold>) -> Option<TooFewReadyBackups> {
        let before = rejected.len();
        while let Some((deadline, queue, position, id)) = self.deadlines.front().cloned() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            match position {
                Some(position) => {
                    let Some(held) = self.collected.get_mut(&queue) else { continue };
                    if let Some(holds) = held.get_mut(&position) {
                        if let Some(index) = holds.iter().position(|(held_id, _)| *held_id == id) {
                            rejected.push(holds.swap_remove(index).1);
                        }
                        if holds.is_empty() {
                            held.remove(&position);
                        }
                    }
                    if held.is_empty() {
                        self.collected.remove(&queue);
                    }
                }
                None => {
                    let Some(held) = self.barriers.get_mut(&queue) else { continue };
                    // Barriers leave a queue's list from its front only, in the order taken.
                    if held.front().is_some_and(|(held_id, _)| *held_id == id) {
                        rejected.extend(held.pop_front().map(|(_, hold)| hold));
                    }
                    if held.is_empty() {
                        self.barriers.remove(&queue);
                    }
                }
            }
        }
        let timeout = self.timeout?;
        (rejected.len() > before).then_some(TooFewReadyBackups {
            ready: self.ready_here,
            required: self.required,
            timeout,
        })
    }

    /// Takes `hold` for the message at `position` of `queue` (a barrier's: `None`) at `now`.
    ///
    /// # Panics
    ///
    /// If not short, or with a timeout but no time given (`PrimaryReplication::set_time`).
    fn take(&mut self, queue: &Arc<str>, position: Option<Position>, hold: Hold, now: Option<Instant>) {
        assert!(self.is_short(), "the quorum holds only while short");
        let id = self.next_id;
        self.next_id += 1;
        match position {
            Some(position) => {
                self.collected.entry(queue.clone()).or_default().entry(position).or_default().push((id, hold))
            }
            None => self.barriers.entry(queue.clone()).or_default().push_back((id, hold)),
        }
        if let Some(timeout) = self.timeout {
            let now = now.expect("a ready quorum with a timeout is given the time before any event");
            assert!(self.deadlines.back().is_none_or(|(last, ..)| *last <= now + timeout), "time went backwards");
            self.deadlines.push_back((now + timeout, queue.clone(), position, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::primary::replication::test_support::*;
    use crate::primary::replication::TooFewReadyBackups;

    /// A replication requiring `required` ready backups, timing out after `timeout`, at `now`.
    fn quorum(required: usize, timeout: Option<Duration>, now: Instant) -> PrimaryReplication {
        let mut replication = PrimaryReplication::with_quorum(Epoch(1), required, timeout);
        replication.set_time(now);
        replication
    }

    #[test]
    fn a_primary_with_too_few_ready_backups_holds_confirms_until_one_is_ready() {
        // Goal: min 1 and no ready backup: every publish is held by the quorum, even with a link
        // open (catching up); once shard 0 lists that backup ready and its link here is caught up,
        // everything is released, once each, and new publishes take only the stream's hold.
        let mut replication = quorum(1, None, Instant::now());
        assert_eq!(replication.holding_streams(), 1, "short from the start: the quorum holds");
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(barrier("q", 2));
        assert!(released(&mut replication).is_empty());
        assert_eq!(replication.quorum_held(), 2);
        // A backup links: catching up, it holds on its own; the quorum still holds.
        replication.handle_link_opened(link(1), "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(enqueued("q", 1, Some(3)));
        // Listed ready before its link here caught up (a stale list): not ready here.
        replication.set_ready_backups(&names(&["b1:1"]));
        assert_eq!(replication.quorum_ready(), (0, 1));
        assert_eq!(replication.holding_streams(), 2);
        let mut holds = released(&mut replication);
        drain(&mut replication, link(1));
        holds.extend(released(&mut replication));
        holds.sort();
        assert_eq!(holds, vec![hold(3)], "the stream's share of what came after its link opened");
        assert_eq!(replication.quorum_held(), 3);
        // Caught up here, and listed again: enough; the quorum lets go of everything.
        replication.set_ready_backups(&names(&["b1:1"]));
        assert_eq!(replication.quorum_ready(), (1, 1));
        assert_eq!(replication.holding_streams(), 1, "the stream only");
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(2), hold(3)]);
        assert_eq!(replication.quorum_held(), 0);
        replication.handle_event(enqueued("q", 2, Some(4)));
        assert_eq!(replication.quorum_held(), 0, "not short: the quorum takes nothing");
        drain(&mut replication, link(1));
        assert_eq!(released(&mut replication), vec![hold(4)]);
    }

    #[test]
    fn losing_the_ready_backups_link_holds_again_and_its_kept_holds_stay_held_after_its_timeout() {
        // Goal: the ready backup's link here is lost: short at once (before shard 0's next list);
        // what its stream held is kept for it (detached) and, when it times out, the quorum holds
        // it on instead of confirming what only this broker may have. A dequeue releases a held
        // message's hold.
        let mut replication = quorum(1, None, Instant::now());
        replication.handle_link_opened(link(1), "b1:1", vec![created("q")]);
        drain(&mut replication, link(1));
        replication.set_ready_backups(&names(&["b1:1"]));
        assert_eq!(replication.holding_streams(), 1);
        replication.handle_event(enqueued("q", 0, Some(1)));
        assert!(replication.poll_batch(link(1), BYTES).is_some(), "sent, never confirmed");
        assert!(replication.handle_link_lost(link(1)), "kept for b1, which may be ready");
        assert_eq!(replication.quorum_ready(), (0, 1));
        assert_eq!(replication.holding_streams(), 2, "b1 collects, and the quorum does");
        replication.handle_event(enqueued("q", 1, Some(2)));
        replication.handle_event(enqueued("q", 2, Some(3)));
        replication.handle_expected_timed_out("b1:1");
        let released_now = released(&mut replication);
        assert!(released_now.is_empty(), "held on by the quorum: {released_now:?}");
        assert_eq!(replication.holding_streams(), 1);
        // The quorum holds 1 (taken over), and 2 and 3 twice (its own and b1's, taken over).
        assert_eq!(replication.quorum_held(), 5);
        replication.handle_event(dequeued("q", 1));
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(2), hold(2)], "consumed: both its holds");
        // A backup ready again here releases the rest.
        replication.handle_link_opened(link(2), "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        drain(&mut replication, link(2));
        replication.set_ready_backups(&names(&["b1:1"]));
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(3), hold(3)]);
    }

    #[test]
    fn a_held_publish_is_rejected_after_the_timeout_with_the_reason() {
        // Goal: ha-min-ready-timeout: a hold taken that long ago is rejected, with a reason naming
        // both options, the backups ready and the number required; younger ones wait on, and one
        // released meanwhile is not rejected.
        let start = Instant::now();
        let timeout = Duration::from_secs(2);
        let mut replication = quorum(2, Some(timeout), start);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(enqueued("q", 1, Some(2)));
        replication.set_time(start + Duration::from_secs(1));
        replication.handle_event(barrier("q", 3));
        replication.handle_event(enqueued("q", 2, Some(4)));
        assert_eq!(replication.poll_quorum_timeout(), Some(start + timeout));
        replication.handle_event(dequeued("q", 1));
        assert_eq!(released(&mut replication), vec![hold(2)]);
        let mut rejected = Vec::new();
        assert_eq!(replication.handle_quorum_timeout(start + Duration::from_millis(1999), &mut rejected), None);
        let reason = replication.handle_quorum_timeout(start + timeout, &mut rejected).unwrap();
        assert_eq!(rejected, vec![hold(1)], "the consumed one is not rejected");
        assert_eq!(reason, TooFewReadyBackups { ready: 0, required: 2, timeout });
        assert_eq!(
            reason.to_string(),
            "not confirmed: 0 backups ready, ha-min-ready-backups requires 2, for longer than \
             ha-min-ready-timeout (2s); the message may be stored on the primary only"
        );
        assert_eq!(replication.poll_quorum_timeout(), Some(start + Duration::from_secs(3)));
        rejected.clear();
        replication.handle_quorum_timeout(start + Duration::from_secs(3), &mut rejected).unwrap();
        assert_eq!(rejected, vec![hold(3), hold(4)]);
        assert_eq!(replication.poll_quorum_timeout(), None);
        assert_eq!(replication.quorum_held(), 0);
        assert!(released(&mut replication).is_empty());
        assert_eq!(replication.holding_streams(), 1, "still short: new publishes are held");
    }

    #[test]
    fn with_a_minimum_of_zero_the_quorum_never_holds() {
        // Goal: the default (the reference's rule): no holder, no hold, whatever the ready list.
        let mut replication = quorum(0, Some(Duration::ZERO), Instant::now());
        assert_eq!(replication.holding_streams(), 0);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, None));
        replication.set_ready_backups(&[]);
        assert_eq!(replication.holding_streams(), 0);
        assert_eq!(replication.quorum_held(), 0);
        assert_eq!(replication.poll_quorum_timeout(), None);
    }
}
