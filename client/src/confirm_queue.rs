//! Confirm dispatch: where confirm ranges wait for the publisher, and the running summary.
//!
//! The reader task hands every confirm range here once the publish window accepted it. Two
//! consumers read it: `Publisher::next_confirm` takes ranges one by one (for per-seq latency),
//! `Publisher::wait_for_confirms` takes the summary (counts per outcome and the first rejection)
//! and forgets the ranges not taken.
//!
//! Invariants:
//! - Every confirmed publish is counted in the summary exactly once, whether or not its range
//!   was taken by `next_confirm`.
//! - The queue holds at most `CONFIRM_RANGES_QUEUED_MAX` ranges: adjacent ranges with equal
//!   outcomes merge, and when outcomes alternate past the bound the oldest ranges are dropped
//!   from the queue (counted in `ranges_dropped`, still counted in the summary).
//! - Ranges leave in sequence order.

use std::collections::VecDeque;

use ringmq_core::frame::{ConfirmOutcome, ConfirmRange, ErrorCode};
use ringmq_core::ids::Seq;

use crate::limits::CONFIRM_RANGES_QUEUED_MAX;

/// How the publishes confirmed since the previous `wait_for_confirms` ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfirmSummary {
    /// Publishes stored on every queue they routed to.
    pub stored: u64,
    /// Publishes that routed to no queue.
    pub unroutable: u64,
    /// Publishes the broker refused.
    pub rejected: u64,
    /// The first refusal, with the broker's reason.
    pub first_rejection: Option<Rejection>,
}

impl ConfirmSummary {
    /// Every publish counted, whatever its outcome.
    pub fn total(&self) -> u64 {
        self.stored + self.unroutable + self.rejected
    }
}

/// A refused publish range, as the broker explained it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The first refused sequence number.
    pub first: Seq,
    /// The last refused sequence number of that range (inclusive).
    pub last: Seq,
    /// The broker's error code.
    pub code: ErrorCode,
    /// The broker's reason: names the limit and the value.
    pub reason: String,
}

/// Confirm ranges received and not yet taken, plus the summary since the last take.
#[derive(Debug, Default)]
pub(crate) struct ConfirmQueue {
    /// Ranges `next_confirm` has not returned yet, in sequence order.
    ranges: VecDeque<ConfirmRange>,
    /// Counts since the last `take_summary`.
    summary: ConfirmSummary,
    /// Every sequence number below this one has had its confirm received.
    received_next: Seq,
    /// Ranges dropped from the queue because the caller left more than the bound untaken.
    ranges_dropped: u64,
}

impl ConfirmQueue {
    /// Records one confirm range. The caller (the publish window) has checked that it starts at
    /// `received_next`.
    ///
    /// # Panics
    /// If the range does not start at `received_next` or is inverted.
    pub(crate) fn handle_range(&mut self, range: ConfirmRange) {
        assert_eq!(range.first, self.received_next, "confirm ranges arrive in order, without gaps");
        assert!(range.first <= range.last, "confirm range inverted");
        self.received_next = range.last.next();
        let count = range.last.0 - range.first.0 + 1;
        match &range.outcome {
            ConfirmOutcome::Stored => self.summary.stored += count,
            ConfirmOutcome::Unroutable => self.summary.unroutable += count,
            ConfirmOutcome::Rejected { code, reason } => {
                self.summary.rejected += count;
                if self.summary.first_rejection.is_none() {
                    self.summary.first_rejection =
                        Some(Rejection { first: range.first, last: range.last, code: *code, reason: reason.clone() });
                }
            }
        }
        if let Some(tail) = self.ranges.back_mut() {
            if tail.outcome == range.outcome && tail.last.next() == range.first {
                tail.last = range.last;
                return;
            }
        }
        if self.ranges.len() == CONFIRM_RANGES_QUEUED_MAX {
            // The caller is not taking ranges; they stay counted in the summary.
            self.ranges.pop_front();
            self.ranges_dropped += 1;
        }
        self.ranges.push_back(range);
        assert!(self.ranges.len() <= CONFIRM_RANGES_QUEUED_MAX);
    }

    /// The oldest range not yet taken.
    pub(crate) fn pop(&mut self) -> Option<ConfirmRange> {
        self.ranges.pop_front()
    }

    /// The summary since the last take; forgets the ranges not taken by `pop`.
    pub(crate) fn take_summary(&mut self) -> ConfirmSummary {
        self.ranges.clear();
        std::mem::take(&mut self.summary)
    }

    /// Every sequence number below this one has had its confirm received.
    pub(crate) fn received_next(&self) -> Seq {
        self.received_next
    }

    /// True when no range waits to be taken.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Ranges dropped because the caller left more than the bound untaken.
    pub(crate) fn ranges_dropped(&self) -> u64 {
        self.ranges_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(first: u64, last: u64) -> ConfirmRange {
        ConfirmRange { first: Seq(first), last: Seq(last), outcome: ConfirmOutcome::Stored }
    }

    fn rejected(first: u64, last: u64, reason: &str) -> ConfirmRange {
        ConfirmRange {
            first: Seq(first),
            last: Seq(last),
            outcome: ConfirmOutcome::Rejected { code: ErrorCode::QueueFull, reason: reason.into() },
        }
    }

    #[test]
    fn ranges_come_out_in_order_and_equal_neighbours_merge() {
        // Goal: `next_confirm` sees every seq once, in order, in as few ranges as possible.
        let mut queue = ConfirmQueue::default();
        // Two stored ranges arrive before the caller looks: they merge.
        queue.handle_range(stored(0, 4));
        queue.handle_range(stored(5, 9));
        // A rejection does not merge with stored.
        queue.handle_range(rejected(10, 10, "queue q holds max-count 10; got an 11th"));
        queue.handle_range(stored(11, 11));
        assert_eq!(queue.pop(), Some(stored(0, 9)));
        assert_eq!(queue.pop(), Some(rejected(10, 10, "queue q holds max-count 10; got an 11th")));
        assert_eq!(queue.pop(), Some(stored(11, 11)));
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.received_next(), Seq(12));
    }

    #[test]
    fn summary_counts_every_outcome_and_keeps_the_first_rejection() {
        // Goal: `wait_for_confirms` reports counts whether or not `next_confirm` took ranges.
        let mut queue = ConfirmQueue::default();
        queue.handle_range(stored(0, 2));
        queue.handle_range(ConfirmRange { first: Seq(3), last: Seq(3), outcome: ConfirmOutcome::Unroutable });
        queue.handle_range(rejected(4, 5, "first reason"));
        queue.handle_range(rejected(6, 6, "second reason"));
        // Taking a range does not remove it from the summary.
        assert_eq!(queue.pop(), Some(stored(0, 2)));
        let summary = queue.take_summary();
        assert_eq!(summary.stored, 3);
        assert_eq!(summary.unroutable, 1);
        assert_eq!(summary.rejected, 3);
        assert_eq!(summary.total(), 7);
        let first = summary.first_rejection.unwrap();
        assert_eq!((first.first, first.last), (Seq(4), Seq(5)));
        assert_eq!(first.reason, "first reason");
        // The take forgot the untaken ranges and reset the counts.
        assert!(queue.is_empty());
        assert_eq!(queue.take_summary(), ConfirmSummary::default());
    }

    #[test]
    fn untaken_alternating_ranges_are_bounded() {
        // Goal: a caller that never calls `next_confirm` cannot grow the queue without bound.
        let mut queue = ConfirmQueue::default();
        let total = CONFIRM_RANGES_QUEUED_MAX as u64 + 10;
        for seq in 0..total {
            // Alternate outcomes so that nothing merges.
            if seq % 2 == 0 {
                queue.handle_range(stored(seq, seq));
            } else {
                queue.handle_range(rejected(seq, seq, "full"));
            }
        }
        assert_eq!(queue.ranges_dropped(), 10);
        // The oldest were dropped; the newest are kept.
        assert_eq!(queue.pop().unwrap().first, Seq(10));
        // All of them are still counted.
        assert_eq!(queue.take_summary().total(), total);
    }
}
