//! The completion tracker: the one place that decides when a producer's publishes are confirmed.
//!
//! One tracker per producer connection. Each publish has the next sequence number and is routed
//! to some number of target queues, possibly on other shards; each target reports once, stored or
//! rejected, in any order. A publish is *releasable* when every target has reported and every
//! hold on it (see below) is released. Confirms go out in sequence order only: a releasable
//! publish waits behind an older one that is not. They go out as ranges of consecutive sequence
//! numbers with the same outcome: `Rejected` if any target rejected (the first rejection's code and
//! reason), `Unroutable` if the publish had no targets, `Stored` otherwise.
//!
//! Call contract (no clock: nothing here expires):
//! - `handle_publish` for each publish, in sequence order, before any report about it. A full
//!   tracker hands the publish back as `Err(TrackerFull)`; the caller stops reading the producer
//!   (backpressure) until `poll_confirms` frees slots.
//! - `handle_enqueued` once per target. `handle_hold` / `handle_hold_released` for holds.
//! - `poll_confirms` after a batch of inputs; it drains everything releasable, and the caller
//!   cuts the ranges into frames of at most `limits::RANGES_MAX`.
//! - `clear` when the connection closes; reports still in flight for it must then be dropped by
//!   the caller (counted there as "to a closed connection"), never fed to a cleared tracker.
//!
//! Holds are the second, independent release condition, reserved for HA: "every ready backup has
//! confirmed the message, or it was consumed first". The HA layer takes holds on a publish with
//! `handle_hold(seq, n)` while the publish still has a target outstanding (typically in the same
//! step as the report of the target whose queue replicates it, just before `handle_enqueued`), and
//! releases each with `handle_hold_released(seq)` when a backup confirms, the message is consumed,
//! or the backup leaves. Without HA no hold is ever taken and the rule is just "every target has
//! reported".
//!
//! Not here: which queues a publish goes to (see `routing_table`), what a target does with it,
//! or encoding confirms.
//!
//! Invariants:
//! - A confirm is released only for a publish with no target outstanding and no hold outstanding;
//!   this is asserted where the confirm is released, as the pair of the checks that mark a
//!   publish releasable.
//! - Sequence numbers never go backwards or skip: each publish is the one after the previous
//!   (the first after construction or `clear` may start anywhere), and confirms are released in
//!   that same order, each exactly once.
//! - At most `capacity` publishes are tracked; the ring is allocated once, at construction, and
//!   nothing else allocates except storing a rejection's reason.
//! - Reports come from the broker's own shards, so a report for a publish that is not tracked, or
//!   one more report than it has targets, is a bug and fails an assert.

use crate::frame::{ConfirmOutcome, ConfirmRange, ErrorCode};
use crate::ids::Seq;
use crate::limits::PUBLISH_INFLIGHT_MAX;

/// Unreleased publishes of one producer connection, in a fixed-capacity ring.
#[derive(Debug)]
pub struct CompletionTracker {
    /// One slot per tracked publish: the publish `base() + i` sits at `(head + i) % capacity`.
    slots: Box<[Slot]>,
    /// Index in `slots` of the oldest tracked publish.
    head: usize,
    /// How many publishes are tracked (published, not yet released).
    len: usize,
    /// The sequence number the next publish must have; `None` until the first publish.
    next: Option<Seq>,
    /// The last sequence number released, to assert that releases never go backwards.
    released_last: Option<Seq>,
}

/// A publish handed back by a full tracker, for the caller to retry once confirms went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "completion tracker holds {capacity} unconfirmed publishes, the most allowed; publish {} \
     (to {targets} queues) must wait for confirms",
    .seq.0
)]
pub struct TrackerFull {
    /// The sequence number of the publish handed back.
    pub seq: Seq,
    /// Its target count, as given.
    pub targets: u32,
    /// The tracker's capacity.
    pub capacity: usize,
}

impl CompletionTracker {
    /// A tracker for at most `capacity` unreleased publishes. The ring takes about
    /// `capacity × 24` bytes, allocated here once.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 or above `limits::PUBLISH_INFLIGHT_MAX`.
    pub fn new(capacity: usize) -> CompletionTracker {
        assert!(capacity > 0, "completion tracker capacity must be at least 1");
        assert!(
            capacity as u64 <= PUBLISH_INFLIGHT_MAX,
            "completion tracker capacity must be at most {PUBLISH_INFLIGHT_MAX}; got {capacity}"
        );
        CompletionTracker {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            head: 0,
            len: 0,
            next: None,
            released_last: None,
        }
    }

    /// Tracks a publish routed to `targets` queues; with no targets it is releasable at once, as
    /// `Unroutable`.
    ///
    /// # Errors
    ///
    /// `TrackerFull` when `capacity` publishes are unreleased; nothing changed, and the same
    /// publish may be offered again later.
    ///
    /// # Panics
    ///
    /// If `seq` is not the one after the previous publish (after construction or `clear`, any
    /// `seq` may start).
    pub fn handle_publish(&mut self, seq: Seq, targets: u32) -> Result<(), TrackerFull> {
        if let Some(next) = self.next {
            assert_eq!(seq, next, "publish sequence numbers must be consecutive");
        }
        if self.len == self.slots.len() {
            return Err(TrackerFull { seq, targets, capacity: self.slots.len() });
        }
        let index = self.index(self.len);
        let slot = &mut self.slots[index];
        assert_eq!(slot.state, SlotState::Free, "publish into a slot in use");
        assert!(slot.rejection.is_none());
        slot.targets_pending = targets;
        slot.holds_pending = 0;
        slot.unroutable = targets == 0;
        slot.state = if targets == 0 { SlotState::Releasable } else { SlotState::Waiting };
        self.len += 1;
        self.next = Some(seq.next());
        Ok(())
    }

    /// One target of publish `seq` reported: `Stored`, or `Rejected` with its code and reason.
    /// The first rejection of a publish is the one its confirm carries.
    ///
    /// # Panics
    ///
    /// If `seq` is not tracked, if all its targets already reported, or if `outcome` is
    /// `Unroutable` (a property of a publish, never of one target's report).
    pub fn handle_enqueued(&mut self, seq: Seq, outcome: ConfirmOutcome) {
        let slot = self.waiting_slot_mut(seq);
        assert!(slot.targets_pending > 0, "more reports than targets for publish {}", seq.0);
        match outcome {
            ConfirmOutcome::Stored => {}
            ConfirmOutcome::Rejected { code, reason } => {
                if slot.rejection.is_none() {
                    slot.rejection = Some(Box::new(Rejection { code, reason }));
                }
            }
            ConfirmOutcome::Unroutable => {
                panic!("a target reported Unroutable for publish {}", seq.0)
            }
        }
        slot.targets_pending -= 1;
        slot.mark_if_releasable();
    }

    /// Takes `holds` more holds on publish `seq` (HA: backup confirms it must wait for).
    ///
    /// # Panics
    ///
    /// If `seq` is not tracked, or if all its targets already reported: a hold taken then could
    /// come after its confirm was released, so holds must be taken while a target is outstanding.
    pub fn handle_hold(&mut self, seq: Seq, holds: u32) {
        let slot = self.waiting_slot_mut(seq);
        assert!(slot.targets_pending > 0, "hold on publish {} taken after its last target reported", seq.0);
        slot.holds_pending = slot.holds_pending.checked_add(holds).expect("holds overflow u32");
    }

    /// Releases one hold on publish `seq` (a backup confirmed it, it was consumed, or the backup
    /// left).
    ///
    /// # Panics
    ///
    /// If `seq` is not tracked or has no hold outstanding.
    pub fn handle_hold_released(&mut self, seq: Seq) {
        let slot = self.waiting_slot_mut(seq);
        assert!(slot.holds_pending > 0, "hold released on publish {} without one", seq.0);
        slot.holds_pending -= 1;
        slot.mark_if_releasable();
    }

    /// Releases one hold on publish `seq` with a rejection: the HA layer gave up waiting for the
    /// condition the hold stood for (`ha-min-ready-timeout`). The publish's confirm carries the
    /// first rejection it got, from a target or a hold, once nothing else is outstanding.
    ///
    /// # Panics
    ///
    /// If `seq` is not tracked or has no hold outstanding.
    pub fn handle_hold_rejected(&mut self, seq: Seq, code: ErrorCode, reason: String) {
        let slot = self.waiting_slot_mut(seq);
        assert!(slot.holds_pending > 0, "hold rejected on publish {} without one", seq.0);
        if slot.rejection.is_none() {
            slot.rejection = Some(Box::new(Rejection { code, reason }));
        }
        slot.holds_pending -= 1;
        slot.mark_if_releasable();
    }

    /// Appends every confirm that can be released now, oldest first, merging consecutive
    /// publishes with the same outcome into one range (only among ranges this call appends).
    /// Returns how many publishes were released.
    ///
    /// It appends at most `capacity` ranges (one per publish, when outcomes alternate); a confirm
    /// frame carries at most `limits::RANGES_MAX`, so the caller splits. An earlier version
    /// stopped at `RANGES_MAX` and asked to be called again, which left confirms stranded when
    /// the caller polled once per event and no further event came.
    pub fn poll_confirms(&mut self, out: &mut Vec<ConfirmRange>) -> u64 {
        let first_new = out.len();
        let mut released = 0u64;
        while self.len > 0 {
            let seq = self.base();
            let slot = &mut self.slots[self.head];
            if slot.state != SlotState::Releasable {
                break;
            }
            // The release rule, asserted where the confirm is released (its pair is
            // `mark_if_releasable`).
            assert_eq!(slot.targets_pending, 0, "confirm released with targets outstanding");
            assert_eq!(slot.holds_pending, 0, "confirm released with holds outstanding");
            let extends = out.len() > first_new
                && out.last().is_some_and(|range| range.last.next() == seq && slot.outcome_is(&range.outcome));
            let outcome = slot.release();
            if let Some(last) = self.released_last {
                assert_eq!(seq, last.next(), "confirms released out of sequence order");
            }
            self.released_last = Some(seq);
            if extends {
                out.last_mut().expect("checked above").last = seq;
            } else {
                out.push(ConfirmRange { first: seq, last: seq, outcome });
            }
            self.head = self.index(1);
            self.len -= 1;
            released += 1;
        }
        released
    }

    /// Publishes tracked and not yet released.
    pub fn inflight(&self) -> u64 {
        self.len as u64
    }

    /// The most publishes this tracker holds at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Forgets every tracked publish (the connection closed); the next publish may start at any
    /// sequence number. Returns how many publishes were forgotten unreleased.
    pub fn clear(&mut self) -> u64 {
        let forgotten = self.len as u64;
        for offset in 0..self.len {
            let index = self.index(offset);
            self.slots[index] = Slot::default();
        }
        self.head = 0;
        self.len = 0;
        self.next = None;
        self.released_last = None;
        forgotten
    }

    /// The oldest tracked publish's sequence number.
    fn base(&self) -> Seq {
        let next = self.next.expect("a tracked publish implies a first publish");
        Seq(next.0 - self.len as u64)
    }

    /// The slot index `offset` publishes after the oldest tracked one.
    fn index(&self, offset: usize) -> usize {
        assert!(offset <= self.slots.len());
        let index = self.head + offset;
        if index >= self.slots.len() {
            index - self.slots.len()
        } else {
            index
        }
    }

    /// The slot of publish `seq`, which must be tracked and waiting for reports or holds.
    fn waiting_slot_mut(&mut self, seq: Seq) -> &mut Slot {
        assert!(self.len > 0, "report for publish {} with nothing tracked", seq.0);
        let base = self.base();
        assert!(seq >= base, "report for publish {} already confirmed (oldest tracked {})", seq.0, base.0);
        let offset = seq.0 - base.0;
        assert!(offset < self.len as u64, "report for publish {} never made", seq.0);
        let index = self.index(offset as usize);
        let slot = &mut self.slots[index];
        assert_eq!(slot.state, SlotState::Waiting, "report for publish {} that is releasable", seq.0);
        slot
    }
}

/// One tracked publish.
#[derive(Debug, Default)]
struct Slot {
    /// Targets that have not reported yet.
    targets_pending: u32,
    /// Holds (HA conditions) not released yet.
    holds_pending: u32,
    /// Where the publish stands.
    state: SlotState,
    /// The publish had no targets.
    unroutable: bool,
    /// The first rejection a target reported. Boxed so that the slot stays small: rejections are
    /// the exception, and the ring holds up to `limits::PUBLISH_INFLIGHT_MAX` slots.
    rejection: Option<Box<Rejection>>,
}

/// Where a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum SlotState {
    /// Holds no publish.
    #[default]
    Free,
    /// Waiting for target reports or hold releases.
    Waiting,
    /// Every target reported and every hold was released; confirmed when it reaches the head.
    Releasable,
}

/// A target's refusal, as its confirm will carry it.
#[derive(Debug)]
struct Rejection {
    /// Why, as an error code.
    code: ErrorCode,
    /// Why, in words.
    reason: String,
}

impl Slot {
    /// Marks a waiting slot releasable once nothing is outstanding; `poll_confirms` asserts the
    /// same condition when it releases the slot.
    fn mark_if_releasable(&mut self) {
        assert_eq!(self.state, SlotState::Waiting);
        if self.targets_pending == 0 && self.holds_pending == 0 {
            self.state = SlotState::Releasable;
        }
    }

    /// True when this releasable slot's outcome equals `outcome`.
    fn outcome_is(&self, outcome: &ConfirmOutcome) -> bool {
        match (&self.rejection, outcome) {
            (Some(rejection), ConfirmOutcome::Rejected { code, reason }) => {
                rejection.code == *code && rejection.reason == *reason
            }
            (Some(_), _) => false,
            (None, ConfirmOutcome::Unroutable) => self.unroutable,
            (None, ConfirmOutcome::Stored) => !self.unroutable,
            (None, ConfirmOutcome::Rejected { .. }) => false,
        }
    }

    /// Frees a releasable slot and returns its outcome.
    fn release(&mut self) -> ConfirmOutcome {
        assert_eq!(self.state, SlotState::Releasable);
        let outcome = match self.rejection.take() {
            Some(rejection) => {
                let Rejection { code, reason } = *rejection;
                ConfirmOutcome::Rejected { code, reason }
            }
            None if self.unroutable => ConfirmOutcome::Unroutable,
            None => ConfirmOutcome::Stored,
        };
        *self = Slot::default();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A rejection outcome with a fixed code.
    fn rejected(reason: &str) -> ConfirmOutcome {
        ConfirmOutcome::Rejected { code: ErrorCode::QueueFull, reason: reason.to_owned() }
    }

    /// A confirm range.
    fn range(first: u64, last: u64, outcome: ConfirmOutcome) -> ConfirmRange {
        ConfirmRange { first: Seq(first), last: Seq(last), outcome }
    }

    /// Polls into a fresh vector.
    fn polled(tracker: &mut CompletionTracker) -> Vec<ConfirmRange> {
        let mut out = Vec::new();
        tracker.poll_confirms(&mut out);
        out
    }

    // Goal: completions arriving out of order release confirms in sequence order only.
    #[test]
    fn out_of_order_completions_release_in_seq_order() {
        let mut tracker = CompletionTracker::new(8);
        // Three publishes, one target each.
        for seq in 0..3 {
            tracker.handle_publish(Seq(seq), 1).unwrap();
        }
        // The newest two complete first: nothing is released past the oldest.
        tracker.handle_enqueued(Seq(2), ConfirmOutcome::Stored);
        tracker.handle_enqueued(Seq(1), ConfirmOutcome::Stored);
        assert_eq!(polled(&mut tracker), []);
        assert_eq!(tracker.inflight(), 3);
        // The oldest completes: all three go out as one range.
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        assert_eq!(polled(&mut tracker), [range(0, 2, ConfirmOutcome::Stored)]);
        assert_eq!(tracker.inflight(), 0);
        assert_eq!(polled(&mut tracker), []);
    }

    // Goal: a publish with several targets waits for all of them, whatever their order.
    #[test]
    fn publish_waits_for_every_target() {
        let mut tracker = CompletionTracker::new(8);
        // One publish to three queues.
        tracker.handle_publish(Seq(0), 3).unwrap();
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        assert_eq!(polled(&mut tracker), []);
        // The third report releases it.
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        assert_eq!(polled(&mut tracker), [range(0, 0, ConfirmOutcome::Stored)]);
    }

    // Goal: consecutive publishes with the same outcome merge into one range, within one poll.
    #[test]
    fn consecutive_same_outcomes_merge_into_one_range() {
        let mut tracker = CompletionTracker::new(16);
        // Ten stored publishes, then two unroutable ones.
        for seq in 0..10 {
            tracker.handle_publish(Seq(seq), 1).unwrap();
            tracker.handle_enqueued(Seq(seq), ConfirmOutcome::Stored);
        }
        tracker.handle_publish(Seq(10), 0).unwrap();
        tracker.handle_publish(Seq(11), 0).unwrap();
        assert_eq!(
            polled(&mut tracker),
            [range(0, 9, ConfirmOutcome::Stored), range(10, 11, ConfirmOutcome::Unroutable)]
        );
        // A later poll starts a new range even for the same outcome.
        tracker.handle_publish(Seq(12), 0).unwrap();
        let mut out = vec![range(10, 11, ConfirmOutcome::Unroutable)];
        assert_eq!(tracker.poll_confirms(&mut out), 1);
        assert_eq!(out.len(), 2);
    }

    // Goal: a rejected publish in the middle splits the ranges around it, carries the first
    // rejection's reason, and waits for the rest of its targets.
    #[test]
    fn rejected_in_the_middle_splits_ranges() {
        let mut tracker = CompletionTracker::new(8);
        for seq in 0..5 {
            tracker.handle_publish(Seq(seq), 2).unwrap();
        }
        // Publish 2: one target rejects first, a second rejection differs, then it is done.
        tracker.handle_enqueued(Seq(2), rejected("queue 'a' is full"));
        tracker.handle_enqueued(Seq(2), rejected("queue 'b' is full"));
        // Publish 3 rejects once and is stored once: still rejected.
        tracker.handle_enqueued(Seq(3), ConfirmOutcome::Stored);
        tracker.handle_enqueued(Seq(3), rejected("queue 'a' is full"));
        for seq in [0, 1, 4] {
            tracker.handle_enqueued(Seq(seq), ConfirmOutcome::Stored);
            tracker.handle_enqueued(Seq(seq), ConfirmOutcome::Stored);
        }
        assert_eq!(
            polled(&mut tracker),
            [
                range(0, 1, ConfirmOutcome::Stored),
                range(2, 3, rejected("queue 'a' is full")),
                range(4, 4, ConfirmOutcome::Stored),
            ]
        );
    }

    // Goal: a full tracker hands the publish back unchanged, and takes it once confirms freed a
    // slot.
    #[test]
    fn full_tracker_hands_back_the_publish() {
        let mut tracker = CompletionTracker::new(2);
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_publish(Seq(1), 1).unwrap();
        // Third publish: handed back with its seq and targets.
        let full = tracker.handle_publish(Seq(2), 5).unwrap_err();
        assert_eq!(full, TrackerFull { seq: Seq(2), targets: 5, capacity: 2 });
        assert_eq!(
            full.to_string(),
            "completion tracker holds 2 unconfirmed publishes, the most allowed; publish 2 (to 5 queues) must wait for confirms"
        );
        // Completing the second frees nothing: the first still blocks the head.
        tracker.handle_enqueued(Seq(1), ConfirmOutcome::Stored);
        assert_eq!(polled(&mut tracker), []);
        assert!(tracker.handle_publish(Seq(2), 5).is_err());
        // Completing the first frees both slots; the handed-back publish now fits, wrapping around.
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        assert_eq!(polled(&mut tracker), [range(0, 1, ConfirmOutcome::Stored)]);
        tracker.handle_publish(Seq(2), 5).unwrap();
        tracker.handle_publish(Seq(3), 0).unwrap();
        assert_eq!(tracker.inflight(), 2);
    }

    // Goal: the first publish may start at any seq.
    #[test]
    fn first_publish_sets_the_starting_seq() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(1_000), 0).unwrap();
        tracker.handle_publish(Seq(1_001), 1).unwrap();
        tracker.handle_enqueued(Seq(1_001), ConfirmOutcome::Stored);
        assert_eq!(
            polled(&mut tracker),
            [range(1_000, 1_000, ConfirmOutcome::Unroutable), range(1_001, 1_001, ConfirmOutcome::Stored)]
        );
    }

    // Goal: holds are a second condition: a publish whose targets all reported waits for its
    // holds, and the order rule still applies.
    #[test]
    fn holds_delay_release_until_released() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_publish(Seq(1), 1).unwrap();
        // Publish 0: two backups must confirm; the hold is taken before its target reports.
        tracker.handle_hold(Seq(0), 2);
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        tracker.handle_enqueued(Seq(1), ConfirmOutcome::Stored);
        assert_eq!(polled(&mut tracker), []);
        // One backup confirms: still held.
        tracker.handle_hold_released(Seq(0));
        assert_eq!(polled(&mut tracker), []);
        // The other confirms: both go out.
        tracker.handle_hold_released(Seq(0));
        assert_eq!(polled(&mut tracker), [range(0, 1, ConfirmOutcome::Stored)]);
    }

    // Goal: a hold released with a rejection (ha-min-ready-timeout) makes the confirm `Rejected`
    // with its reason, once the publish's other holds are released too; a target's earlier
    // rejection wins.
    #[test]
    fn a_rejected_hold_rejects_the_publish_once_nothing_else_is_outstanding() {
        let mut tracker = CompletionTracker::new(4);
        let too_few =
            |reason: &str| ConfirmOutcome::Rejected { code: ErrorCode::NotEnoughBackups, reason: reason.to_owned() };
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_publish(Seq(1), 1).unwrap();
        tracker.handle_hold(Seq(0), 2);
        tracker.handle_hold(Seq(1), 1);
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        tracker.handle_enqueued(Seq(1), rejected("q full"));
        // Publish 0: its quorum hold gives up, a stream's hold is still out.
        tracker.handle_hold_rejected(Seq(0), ErrorCode::NotEnoughBackups, "too few".into());
        assert_eq!(polled(&mut tracker), []);
        tracker.handle_hold_released(Seq(0));
        assert_eq!(polled(&mut tracker), [range(0, 0, too_few("too few"))]);
        // Publish 1: the target's rejection came first and is the one reported.
        tracker.handle_hold_rejected(Seq(1), ErrorCode::NotEnoughBackups, "too few".into());
        assert_eq!(polled(&mut tracker), [range(1, 1, rejected("q full"))]);
    }

    // Goal: one poll drains everything releasable, even past a confirm frame's range limit
    // (the caller splits frames), so no confirm waits for an event that may never come.
    #[test]
    fn poll_drains_everything_releasable_past_the_frame_limit() {
        let count = u64::from(crate::limits::RANGES_MAX) + 10;
        let mut tracker = CompletionTracker::new(count as usize);
        // Alternate stored and unroutable, so that no two neighbours merge.
        for seq in 0..count {
            let targets = u32::from(seq % 2 == 0);
            tracker.handle_publish(Seq(seq), targets).unwrap();
            if targets == 1 {
                tracker.handle_enqueued(Seq(seq), ConfirmOutcome::Stored);
            }
        }
        let mut out = Vec::new();
        assert_eq!(tracker.poll_confirms(&mut out), count);
        assert_eq!(out.len() as u64, count);
        assert_eq!(out.last().map(|r| r.last), Some(Seq(count - 1)));
        assert_eq!(tracker.inflight(), 0);
    }

    // Goal: `clear` forgets everything, reports how much, and lets a new sequence start.
    #[test]
    fn clear_forgets_everything_and_accepts_a_new_start() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(5), 1).unwrap();
        tracker.handle_publish(Seq(6), 1).unwrap();
        tracker.handle_enqueued(Seq(6), rejected("full"));
        assert_eq!(tracker.clear(), 2);
        assert_eq!(tracker.inflight(), 0);
        // A new connection's numbering starts anywhere.
        tracker.handle_publish(Seq(0), 0).unwrap();
        assert_eq!(polled(&mut tracker), [range(0, 0, ConfirmOutcome::Unroutable)]);
    }

    // Goal: inconsistent inputs from the shards are bugs, and fail loudly.
    #[test]
    #[should_panic(expected = "publish sequence numbers must be consecutive")]
    fn skipped_seq_panics() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_publish(Seq(2), 1).unwrap();
    }

    #[test]
    #[should_panic(expected = "more reports than targets")]
    fn extra_report_panics() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_publish(Seq(1), 1).unwrap();
        tracker.handle_hold(Seq(0), 1);
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
    }

    #[test]
    #[should_panic(expected = "already confirmed")]
    fn report_after_release_panics() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_publish(Seq(1), 1).unwrap();
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
        polled(&mut tracker);
        tracker.handle_enqueued(Seq(0), ConfirmOutcome::Stored);
    }

    #[test]
    #[should_panic(expected = "never made")]
    fn report_for_unpublished_seq_panics() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_enqueued(Seq(1), ConfirmOutcome::Stored);
    }

    #[test]
    #[should_panic(expected = "after its last target reported")]
    fn hold_after_last_target_panics() {
        let mut tracker = CompletionTracker::new(4);
        tracker.handle_publish(Seq(0), 1).unwrap();
        tracker.handle_publish(Seq(1), 1).unwrap();
        tracker.handle_hold(Seq(1), 1);
        tracker.handle_enqueued(Seq(1), ConfirmOutcome::Stored);
        tracker.handle_hold(Seq(1), 1);
    }

    // Goal: the tracker behaves like an obviously correct model over long random runs.
    // Method: a seeded xorshift drives publishes (0..=3 targets), reports in random order
    // (stored, or rejected with one of two reasons), holds, hold releases, polls and the odd
    // `clear`, against a model that keeps every publish in a queue and releases from its front.
    // After every step the in-flight counts agree; after every poll the ranges, expanded to one
    // outcome per seq, equal the model's releases, and no two neighbouring ranges could have
    // merged.
    #[test]
    fn random_operations_match_reference_model() {
        let (mut released, mut handed_back) = (0u64, 0u64);
        for seed in 1..=20u64 {
            let stats = run_against_model(seed, 5_000);
            released += stats.released;
            handed_back += stats.handed_back;
        }
        // The run is not vacuous: many confirms went out and the ring filled up often.
        assert!(released > 10_000, "released {released}");
        assert!(handed_back > 100, "handed back {handed_back}");
    }

    /// One publish as the model sees it.
    struct ModelPublish {
        seq: u64,
        targets_pending: u32,
        holds_pending: u32,
        unroutable: bool,
        rejection: Option<ConfirmOutcome>,
    }

    /// What one random run exercised.
    struct RunStats {
        /// Publishes confirmed.
        released: u64,
        /// Publishes handed back by a full tracker.
        handed_back: u64,
    }

    /// Drives a tracker and the model with the same `steps` random operations.
    fn run_against_model(seed: u64, steps: usize) -> RunStats {
        let mut stats = RunStats { released: 0, handed_back: 0 };
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let capacity = 1 + rng.below(16) as usize;
        let mut tracker = CompletionTracker::new(capacity);
        let mut model: VecDeque<ModelPublish> = VecDeque::new();
        let mut next_seq = rng.below(1_000_000);
        let mut released_last: Option<u64> = None;
        for step in 0..steps {
            let context = format!("seed {seed} step {step}");
            match rng.below(100) {
                // Publish.
                0..=29 => {
                    let targets = rng.below(4) as u32;
                    let result = tracker.handle_publish(Seq(next_seq), targets);
                    if model.len() == capacity {
                        assert_eq!(result, Err(TrackerFull { seq: Seq(next_seq), targets, capacity }), "{context}");
                        stats.handed_back += 1;
                    } else {
                        assert_eq!(result, Ok(()), "{context}");
                        model.push_back(ModelPublish {
                            seq: next_seq,
                            targets_pending: targets,
                            holds_pending: 0,
                            unroutable: targets == 0,
                            rejection: None,
                        });
                        next_seq += 1;
                    }
                }
                // A target reports.
                30..=64 => {
                    let Some(publish) = pick(&mut model, &mut rng, |p| p.targets_pending > 0) else {
                        continue;
                    };
                    let outcome = match rng.below(10) {
                        0 => rejected("reason one"),
                        1 => rejected("reason two"),
                        _ => ConfirmOutcome::Stored,
                    };
                    publish.targets_pending -= 1;
                    if matches!(outcome, ConfirmOutcome::Rejected { .. }) && publish.rejection.is_none() {
                        publish.rejection = Some(outcome.clone());
                    }
                    tracker.handle_enqueued(Seq(publish.seq), outcome);
                }
                // A hold is taken (only while a target is outstanding).
                65..=72 => {
                    let Some(publish) = pick(&mut model, &mut rng, |p| p.targets_pending > 0) else {
                        continue;
                    };
                    let holds = 1 + rng.below(2) as u32;
                    publish.holds_pending += holds;
                    tracker.handle_hold(Seq(publish.seq), holds);
                }
                // A hold is released.
                73..=82 => {
                    let Some(publish) = pick(&mut model, &mut rng, |p| p.holds_pending > 0) else {
                        continue;
                    };
                    publish.holds_pending -= 1;
                    tracker.handle_hold_released(Seq(publish.seq));
                }
                // The connection closes; numbering restarts somewhere else.
                83 => {
                    assert_eq!(tracker.clear(), model.len() as u64, "{context}");
                    model.clear();
                    next_seq = rng.below(1_000_000);
                    released_last = None;
                }
                // Poll.
                _ => {
                    let mut out = Vec::new();
                    let released = tracker.poll_confirms(&mut out);
                    let mut expected = Vec::new();
                    while model.front().is_some_and(|p| p.targets_pending == 0 && p.holds_pending == 0) {
                        let publish = model.pop_front().expect("front exists");
                        let outcome = match publish.rejection {
                            Some(rejection) => rejection,
                            None if publish.unroutable => ConfirmOutcome::Unroutable,
                            None => ConfirmOutcome::Stored,
                        };
                        expected.push((publish.seq, outcome));
                    }
                    assert_eq!(released, expected.len() as u64, "{context}");
                    stats.released += released;
                    let mut actual = Vec::new();
                    for (index, range) in out.iter().enumerate() {
                        assert!(range.first <= range.last, "{context}");
                        if index > 0 {
                            let previous = &out[index - 1];
                            assert_eq!(previous.last.next(), range.first, "{context}: ranges not contiguous");
                            assert_ne!(previous.outcome, range.outcome, "{context}: mergeable ranges");
                        }
                        for seq in range.first.0..=range.last.0 {
                            actual.push((seq, range.outcome.clone()));
                        }
                    }
                    assert_eq!(actual, expected, "{context}");
                    if let (Some(last), Some(first)) = (released_last, actual.first()) {
                        assert_eq!(first.0, last + 1, "{context}: release skipped a seq");
                    }
                    if let Some(last) = actual.last() {
                        released_last = Some(last.0);
                    }
                }
            }
            assert_eq!(tracker.inflight(), model.len() as u64, "{context}");
        }
        stats
    }

    /// A random publish of the model among those satisfying `eligible`.
    fn pick<'a>(
        model: &'a mut VecDeque<ModelPublish>,
        rng: &mut XorShift,
        eligible: impl Fn(&ModelPublish) -> bool,
    ) -> Option<&'a mut ModelPublish> {
        let candidates: Vec<usize> = (0..model.len()).filter(|&i| eligible(&model[i])).collect();
        if candidates.is_empty() {
            return None;
        }
        let chosen = candidates[rng.below(candidates.len() as u64) as usize];
        model.get_mut(chosen)
    }

    /// xorshift64: a seeded, dependency-free random source for tests.
    struct XorShift(u64);

    impl XorShift {
        /// A number in `0..bound`.
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }
}
