//! The expected backups of one primary shard: backups that hold publish acks without a link
//! caught up here, either because they were ready under the previous primary (recovering mode) or
//! because their link here was lost while they may still be ready (detached backups).
//!
//! Detached backups: a backup that was marked ready stays `ready` when its link drops, so that it
//! can be promoted if this primary died; until it can no longer be promoted as ready (its ready
//! lease ran out, `backup::ready_lease`) the acks it may hold must stay held. So a link lost (or
//! overflowed) after its catch-up was confirmed, or of a backup already expected here, does not
//! release its holds: they are *kept* for its backup, which becomes expected here (below) as if it
//! had collected them (by queue and position, so that a dequeue releases them as it does
//! collected ones), and collects new holds from then on. `handle_link_lost` says so, and shard 0
//! decides how long (`primary::role`): until a new link of the backup catches up here, or until
//! `handle_expected_timed_out`. A link lost before its catch-up, of a backup not expected,
//! releases its holds: that backup is not ready on its account.
//!
//! Recovering mode (`PROTOCOL.md`, "Recovering"; the reference's expected backups and
//! `ha-backup-timeout`): a newly promoted primary calls `expect_backups` with every backup that was
//! ready under the previous primary, before any client is served. Until such an *expected backup*
//! has a link on this shard, it *collects* the hold of every new `Enqueued` event, one each, as a
//! stream would, and counts in `holding_streams()`. When its link opens here it stops collecting
//! (the new stream takes the holds from then on, so the count is unchanged), and once that link is
//! caught up everything it collected is released, because all those messages were in the snapshot
//! the backup just confirmed; it is then no longer expected on this shard. If the link is lost
//! before that, the collected holds stay held and the backup collects again until a new link of
//! its catches up. `handle_expected_timed_out` (the timeout passed, or the backup is known lost for
//! good) releases everything it collected and stops it. A collected hold is also released when its
//! message is dequeued (or its queue deleted) first: the publish is then confirmed as consumed, as
//! the reference confirms a message every backup confirmed *or* that was consumed. The collected
//! holds are kept per queue and position; they are bounded by the producers' unconfirmed publishes
//! (`PUBLISH_INFLIGHT_MAX` per connection) and, in time, by `ha-backup-timeout`. A `Barrier`'s hold
//! is collected too, per queue, and released by the catch-up, the timeout or its queue's deletion,
//! but not by a dequeue: it has no position of its own, and the original it waits for was stored
//! before the backup's link opened, so the snapshot of its catch-up carries it (or the original
//! was consumed, which releases the duplicate's ack as late as it would the original's).
//!
//! The broker-wide rule while recovering is the caller's (`primary::role` on shard 0): the primary
//! is `recovering` until every backup it expects is ready again or timed out; the
//! `ha-backup-timeout` timer, measured by the caller, ends in `handle_expected_timed_out` on every
//! shard for each backup still pending (the reference times out only backups that are not
//! connected; either is safe here). The same call ends a detached backup's hold.
//!
//! A timed-out backup's holds go to the ready quorum (`ready_quorum`) while it is short; they are
//! released otherwise.
//!
//! Invariants:
//! - An expected backup collects exactly while it has no link on this shard; it is released (and
//!   forgotten) only by the catch-up of a link opened after everything it collected, or by its
//!   timeout.
//! - Every hold collected or kept is released exactly once: by the catch-up of its backup's link,
//!   its timeout, or the message's dequeue (a `Barrier`'s never by a dequeue).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ringmq_core::replication::{Position, ReplicationEvent};

use crate::limits::BACKUPS_MAX;
use crate::link::LinkId;
use crate::primary::stream::{HeldRecord, Hold};

/// The expected backups of one primary shard, by address.
#[derive(Debug, Default)]
pub(super) struct ExpectedBackups {
    /// Backups expected back after promotion, or detached, and still pending here.
    by_backup: BTreeMap<String, Expected>,
}

impl ExpectedBackups {
    /// Whether no backup is expected here.
    pub(super) fn is_empty(&self) -> bool {
        self.by_backup.is_empty()
    }

    /// Whether `backup` is expected here.
    pub(super) fn contains(&self, backup: &str) -> bool {
        self.by_backup.contains_key(backup)
    }

    /// How many expected backups collect holds (they have no link on this shard).
    pub(super) fn collecting(&self) -> usize {
        self.by_backup.values().filter(|expected| expected.links.is_empty()).count()
    }

    /// Expects each of `backups` not expected yet, with its links open here (`links_of`).
    ///
    /// # Panics
    ///
    /// If that makes more than `BACKUPS_MAX` backups expected.
    pub(super) fn expect(&mut self, backups: &[String], links_of: impl Fn(&str) -> BTreeSet<LinkId>) {
        for backup in backups {
            if self.by_backup.contains_key(backup) {
                continue;
            }
            let links = links_of(backup);
            self.by_backup.insert(backup.clone(), Expected { links, ..Expected::default() });
        }
        assert!(
            self.by_backup.len() <= BACKUPS_MAX,
            "{} expected backups, at most {BACKUPS_MAX} allowed",
            self.by_backup.len()
        );
    }

    /// A link of `backup` opened here as `link`: if the backup is expected, it stops collecting
    /// (the new stream takes the holds from now on). Returns whether it is expected.
    pub(super) fn handle_link_opened(&mut self, backup: &str, link: LinkId) -> bool {
        let Some(expected) = self.by_backup.get_mut(backup) else { return false };
        expected.links.insert(link);
        true
    }

    /// The link `lost` of `backup` was lost, with its holds `held` kept for the backup, which is
    /// expected from now on (with `others`, its other links here, if it was not yet).
    pub(super) fn keep(
        &mut self,
        backup: &str,
        lost: LinkId,
        others: BTreeSet<LinkId>,
        held: Vec<HeldRecord>,
        released: &mut Vec<Hold>,
    ) {
        let expected = self
            .by_backup
            .entry(backup.to_string())
            .or_insert_with(|| Expected { links: others, ..Expected::default() });
        expected.links.remove(&lost);
        for held in held {
            expected.keep(held, released);
        }
    }

    /// Before `event` goes to the streams: expected backups without a link collect its hold; a
    /// dequeue or a queue's deletion releases what they collected for it.
    pub(super) fn collect(&mut self, event: &ReplicationEvent, released: &mut Vec<Hold>) {
        match event {
            ReplicationEvent::Enqueued { queue, position, hold: Some(hold), .. } => {
                for expected in self.by_backup.values_mut().filter(|expected| expected.links.is_empty()) {
                    let held = expected.collected.entry(queue.clone()).or_default();
                    // Positions are never reused within a queue; should one be, the earlier hold
                    // is released rather than lost, so that no publisher waits forever.
                    released.extend(held.insert(*position, *hold));
                }
            }
            ReplicationEvent::Dequeued { queue, position } => {
                for expected in self.by_backup.values_mut() {
                    let Some(held) = expected.collected.get_mut(queue) else { continue };
                    released.extend(held.remove(position));
                    if held.is_empty() {
                        expected.collected.remove(queue);
                    }
                }
            }
            ReplicationEvent::Barrier { queue, hold, .. } => {
                for expected in self.by_backup.values_mut().filter(|expected| expected.links.is_empty()) {
                    expected.barriers.entry(queue.clone()).or_default().push(*hold);
                }
            }
            ReplicationEvent::QueueDeleted { name } => {
                for expected in self.by_backup.values_mut() {
                    if let Some(held) = expected.collected.remove(name) {
                        released.extend(held.into_values());
                    }
                    released.extend(expected.barriers.remove(name).into_iter().flatten());
                }
            }
            _ => {}
        }
    }

    /// Every expected backup with a caught-up link here (`is_caught_up`) releases what it
    /// collected and is no longer expected on this shard.
    pub(super) fn settle(&mut self, is_caught_up: impl Fn(LinkId) -> bool, released: &mut Vec<Hold>) {
        self.by_backup.retain(|_, expected| {
            let caught_up = expected.links.iter().any(|&id| is_caught_up(id));
            if caught_up {
                std::mem::take(expected).release(released);
            }
            !caught_up
        });
    }

    /// `backup` was given up on: it is no longer expected, and every hold it collected or kept
    /// is handed back, with what it waited for, for the caller to release (or hold on: the ready
    /// quorum). A backup not expected is ignored (nothing is handed back).
    pub(super) fn handle_timed_out(&mut self, backup: &str) -> Vec<HeldRecord> {
        self.by_backup.remove(backup).map_or_else(Vec::new, Expected::into_held)
    }

    /// The expected backups, by address.
    pub(super) fn pending(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_backup.keys().map(String::as_str)
    }

    /// How many holds `backup` has collected and not released (0 if not expected).
    pub(super) fn held(&self, backup: &str) -> usize {
        self.by_backup.get(backup).map_or(0, |expected| {
            expected.collected.values().map(BTreeMap::len).sum::<usize>()
                + expected.barriers.values().map(Vec::len).sum::<usize>()
        })
    }
}

/// One expected backup on this shard: ready under the previous primary (recovering mode), or
/// detached from this one (a lost link's holds kept for it).
#[derive(Debug, Default)]
struct Expected {
    /// Its links open on this shard; while there is none, it collects holds.
    links: BTreeSet<LinkId>,
    /// The holds it collected, by queue and message position.
    collected: BTreeMap<Arc<str>, BTreeMap<Position, Hold>>,
    /// The `Barrier` holds it collected, by queue.
    barriers: BTreeMap<Arc<str>, Vec<Hold>>,
}

impl Expected {
    /// Releases every hold collected.
    fn release(self, released: &mut Vec<Hold>) {
        for held in self.collected.into_values() {
            released.extend(held.into_values());
        }
        released.extend(self.barriers.into_values().flatten());
    }

    /// Every hold collected, with its queue and position (a barrier's without).
    fn into_held(self) -> Vec<HeldRecord> {
        let mut held = Vec::new();
        for (queue, collected) in self.collected {
            held.extend(collected.into_iter().map(|(position, hold)| HeldRecord {
                queue: queue.to_string(),
                position: Some(position),
                hold,
            }));
        }
        for (queue, barriers) in self.barriers {
            held.extend(barriers.into_iter().map(|hold| HeldRecord { queue: queue.to_string(), position: None, hold }));
        }
        held
    }

    /// Keeps a lost link's hold as if collected: by queue and position, a barrier's by queue.
    fn keep(&mut self, held: HeldRecord, released: &mut Vec<Hold>) {
        let queue: Arc<str> = Arc::from(held.queue);
        match held.position {
            // Positions are never reused within a queue; should one be, the earlier hold is
            // released rather than lost.
            Some(position) => released.extend(self.collected.entry(queue).or_default().insert(position, held.hold)),
            None => self.barriers.entry(queue).or_default().push(held.hold),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::primary::replication::test_support::*;

    #[test]
    fn an_expected_backup_holds_confirms_until_its_link_opens_and_catches_up() {
        // Goal: recovering mode: publishes made before the expected backup reconnects are confirmed
        // only once its new link caught up (their messages are in its snapshot), not before.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1"]));
        assert_eq!(pending(&replication), vec!["b1:1"]);
        assert_eq!(replication.holding_streams(), 1, "it collects like a stream");
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(enqueued("q", 1, Some(2)));
        assert!(released(&mut replication).is_empty());
        assert_eq!(replication.expected_held("b1:1"), 2);
        // It reconnects: the stream takes the holds from now on, the count is unchanged.
        replication.handle_link_opened(
            link(1),
            "b1:1",
            vec![created("q"), enqueued("q", 0, None), enqueued("q", 1, None)],
        );
        assert_eq!(replication.holding_streams(), 1);
        replication.handle_event(enqueued("q", 2, Some(3)));
        assert_eq!(replication.expected_held("b1:1"), 2, "the stream holds the new one");
        // Sent, not confirmed: still held. The live enqueue goes first, then the snapshot's.
        let live = replication.poll_batch(link(1), BYTES).unwrap();
        assert_eq!(positions(&live.records, "q"), vec![2]);
        let batch = replication.poll_batch(link(1), BYTES).unwrap();
        assert_eq!(positions(&batch.records, "q"), vec![0, 1]);
        assert!(released(&mut replication).is_empty());
        assert_eq!(pending(&replication), vec!["b1:1"]);
        // The live batch confirmed: its hold only.
        replication.handle_confirm(link(1), live.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(3)]);
        assert_eq!(pending(&replication), vec!["b1:1"]);
        // Confirmed: caught up; the collected holds come back, once each.
        replication.handle_confirm(link(1), batch.stream_seq).unwrap();
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(2)]);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.poll_caught_up(), Some((link(1), "b1:1".to_string())));
        assert_eq!(replication.holding_streams(), 1);
        // A timeout after the catch-up changes nothing.
        replication.handle_expected_timed_out("b1:1");
        assert!(released(&mut replication).is_empty());
    }

    #[test]
    fn the_timeout_releases_what_an_expected_backup_collected_and_it_collects_no_more() {
        // Goal: `ha-backup-timeout`: a backup that does not come back stops holding publishers.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["gone:1"]));
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(enqueued("q", 1, Some(2)));
        assert!(released(&mut replication).is_empty());
        replication.handle_expected_timed_out("gone:1");
        assert_eq!(released(&mut replication), vec![hold(1), hold(2)]);
        assert_eq!(replication.holding_streams(), 0);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.expected_held("gone:1"), 0);
        // Timed out twice, or a backup never expected: ignored.
        replication.handle_expected_timed_out("gone:1");
        replication.handle_expected_timed_out("never:1");
        assert!(released(&mut replication).is_empty());
        // When it does come back, it is an ordinary link.
        replication.handle_link_opened(link(1), "gone:1", vec![created("q")]);
        assert_eq!(replication.holding_streams(), 1);
        assert!(pending(&replication).is_empty());
    }

    #[test]
    fn a_dequeue_or_a_queue_deletion_releases_the_holds_collected_for_its_messages() {
        // Goal: a message consumed before the expected backup came back no longer holds its publish.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1"]));
        replication.handle_event(created("q"));
        replication.handle_event(created("r"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(enqueued("q", 1, Some(2)));
        replication.handle_event(enqueued("r", 0, Some(3)));
        replication.handle_event(dequeued("q", 1));
        assert_eq!(released(&mut replication), vec![hold(2)]);
        // A dequeue of a message with no collected hold, or of an unknown queue: nothing.
        replication.handle_event(dequeued("q", 7));
        replication.handle_event(dequeued("nowhere", 0));
        assert!(released(&mut replication).is_empty());
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("r") });
        assert_eq!(released(&mut replication), vec![hold(3)]);
        assert_eq!(replication.expected_held("b1:1"), 1);
        assert_eq!(pending(&replication), vec!["b1:1"], "still expected");
        replication.handle_expected_timed_out("b1:1");
        assert_eq!(released(&mut replication), vec![hold(1)]);
    }

    #[test]
    fn the_holding_count_follows_links_opening_and_closing_and_a_link_lost_before_catch_up_keeps_the_holds() {
        // Goal: the count the shard uses always matches who holds; an expected backup whose link is
        // lost before its catch-up collects again and keeps what it had.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1", "b2:1"]));
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        // A backup that was not expected adds a stream.
        replication.handle_link_opened(link(3), "new:1", vec![created("q"), enqueued("q", 0, None)]);
        assert_eq!(replication.holding_streams(), 3);
        // b1's link replaces its collecting: unchanged.
        replication.handle_link_opened(link(1), "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        assert_eq!(replication.holding_streams(), 3);
        replication.handle_event(enqueued("q", 1, Some(2)));
        assert_eq!((replication.expected_held("b1:1"), replication.expected_held("b2:1")), (1, 2));
        // b1's link is lost before its catch-up: its stream's hold is kept with the collected.
        assert!(replication.handle_link_lost(link(1)));
        assert_eq!(replication.holding_streams(), 3);
        assert!(released(&mut replication).is_empty());
        assert_eq!(replication.expected_held("b1:1"), 2);
        assert_eq!(pending(&replication), vec!["b1:1", "b2:1"]);
        replication.handle_event(enqueued("q", 2, Some(3)));
        assert_eq!(replication.expected_held("b1:1"), 3, "collecting again");
        // b1 reconnects and catches up: everything it collected comes back.
        replication.handle_link_opened(
            link(4),
            "b1:1",
            vec![created("q"), enqueued("q", 0, None), enqueued("q", 1, None), enqueued("q", 2, None)],
        );
        assert_eq!(positions(&drain(&mut replication, link(4)), "q"), vec![0, 1, 2]);
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(2), hold(3)]);
        assert_eq!(pending(&replication), vec!["b2:1"]);
        // The unexpected backup and b2 still hold 1, 2 and 3 (b2 collected them).
        assert_eq!(replication.expected_held("b2:1"), 3);
        drain(&mut replication, link(3));
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(2), hold(3)], "the unexpected link's stream held 2 and 3");
        // The unexpected backup's link had caught up: it is detached, and collects.
        assert!(replication.handle_link_lost(link(3)));
        assert_eq!(replication.holding_streams(), 3, "b1's link, b2 and new:1 collecting");
        replication.handle_expected_timed_out("b2:1");
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(2), hold(3)]);
        replication.handle_expected_timed_out("new:1");
        assert!(released(&mut replication).is_empty(), "nothing came after its loss");
        assert_eq!(replication.holding_streams(), 1);
    }

    #[test]
    fn two_expected_backups_each_hold_until_their_own_catch_up_or_timeout() {
        // Goal: with two expected backups every publish comes back twice, once per backup, each
        // when that backup caught up or timed out; and an expected backup already linked and caught
        // up is not pending.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.handle_link_opened(link(9), "early:1", Vec::new());
        replication.expect_backups(&names(&["early:1", "b1:1", "b2:1"]));
        assert_eq!(pending(&replication), vec!["b1:1", "b2:1"], "early:1 caught up here already");
        assert_eq!(replication.holding_streams(), 3);
        assert!(replication.handle_link_lost(link(9)), "caught up: kept for early:1");
        assert_eq!(replication.holding_streams(), 3);
        replication.handle_expected_timed_out("early:1");
        // Expecting again is a no-op for those already expected.
        replication.expect_backups(&names(&["b1:1"]));
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        assert!(released(&mut replication).is_empty());
        replication.handle_link_opened(link(1), "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        drain(&mut replication, link(1));
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert_eq!(pending(&replication), vec!["b2:1"]);
        replication.handle_event(enqueued("q", 1, Some(2)));
        drain(&mut replication, link(1));
        assert_eq!(released(&mut replication), vec![hold(2)], "b1's stream only; b2 holds it");
        replication.handle_expected_timed_out("b2:1");
        assert_eq!(released(&mut replication), vec![hold(1), hold(2)]);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.holding_streams(), 1);
    }

    #[test]
    fn a_lost_link_keeps_its_holds_only_when_its_backup_may_be_ready() {
        // Goal: a link lost during its catch-up releases its holds (its backup is not ready on
        // its account); one lost after its catch-up keeps them for its backup, which then collects
        // new ones; a dequeue releases a kept hold as it does a collected one, and a new link's
        // catch-up releases the rest.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, None));
        // Catching up (the snapshot's message not confirmed): lost, released.
        replication.handle_link_opened(link(1), "slow:1", vec![created("q"), enqueued("q", 0, None)]);
        replication.handle_event(enqueued("q", 1, Some(1)));
        assert!(!replication.handle_link_lost(link(1)));
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert!(pending(&replication).is_empty());
        // Caught up, then lost with two publishes unconfirmed: both kept.
        replication.handle_link_opened(
            link(2),
            "b:1",
            vec![created("q"), enqueued("q", 0, None), enqueued("q", 1, None)],
        );
        drain(&mut replication, link(2));
        assert_eq!(replication.poll_caught_up(), Some((link(2), "b:1".to_string())));
        replication.handle_event(enqueued("q", 2, Some(2)));
        replication.handle_event(enqueued("q", 3, Some(3)));
        assert_eq!(
            replication.poll_batch(link(2), BYTES).map(|batch| positions(&batch.records, "q")),
            Some(vec![2, 3])
        );
        assert!(replication.handle_link_lost(link(2)));
        assert!(released(&mut replication).is_empty());
        assert_eq!(pending(&replication), vec!["b:1"]);
        assert_eq!(replication.holding_streams(), 1, "b:1 collects");
        replication.handle_event(enqueued("q", 4, Some(4)));
        assert_eq!(replication.expected_held("b:1"), 3);
        // Consumed meanwhile: confirmed as consumed.
        replication.handle_event(dequeued("q", 2));
        assert_eq!(released(&mut replication), vec![hold(2)]);
        // A new link of b:1 catches up: the rest comes back, and b:1 is an ordinary link again.
        let snapshot = vec![
            created("q"),
            enqueued("q", 0, None),
            enqueued("q", 1, None),
            enqueued("q", 3, None),
            enqueued("q", 4, None),
        ];
        replication.handle_link_opened(link(3), "b:1", snapshot);
        drain(&mut replication, link(3));
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(3), hold(4)]);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.holding_streams(), 1);
    }

    #[test]
    fn an_expected_backup_whose_link_overflows_keeps_its_holds_until_its_timeout() {
        // Goal: an overflowed link never counts as caught up, so it releases no collected hold.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1"]));
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_link_opened(link(1), "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        let mut position = 1;
        while replication.poll_overflowed().is_none() {
            replication.handle_event(enqueued("q", position, None));
            position += 1;
        }
        assert_eq!(replication.expected_held("b1:1"), 1);
        replication.handle_link_lost(link(1));
        assert_eq!(replication.holding_streams(), 1, "collecting again");
        replication.handle_expected_timed_out("b1:1");
        assert_eq!(released(&mut replication), vec![hold(1)]);
    }

    #[test]
    fn an_expected_backup_collects_a_barrier_until_its_catch_up_and_a_dequeue_does_not_release_it() {
        // Goal: recovering mode: a duplicate's hold is collected by an expected backup without a
        // link like an enqueue's; a dequeue does not release it (it has no position), its link's
        // catch-up or its timeout does; a deletion of its queue does too.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1", "b2:1"]));
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(created("r"));
        // The original came from the previous primary, without a hold here.
        replication.handle_event(barrier("q", 1));
        replication.handle_event(barrier("r", 2));
        replication.handle_event(dequeued("q", 0));
        assert!(released(&mut replication).is_empty(), "a dequeue does not release a barrier");
        assert_eq!(replication.expected_held("b1:1"), 2);
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("r") });
        assert_eq!(released(&mut replication), vec![hold(2), hold(2)]);
        // b1 reconnects and catches up: its share comes back; b2 times out: its share too.
        replication.handle_link_opened(link(1), "b1:1", vec![created("q"), enqueued("q", 1, None)]);
        assert!(released(&mut replication).is_empty());
        drain(&mut replication, link(1));
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert_eq!(pending(&replication), vec!["b2:1"]);
        replication.handle_expected_timed_out("b2:1");
        assert_eq!(released(&mut replication), vec![hold(1)]);
    }
}
