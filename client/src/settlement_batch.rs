//! Settlements a consumer made and has not sent yet, coalesced into tag ranges.
//!
//! `Consumer::ack`, `reject` and `release` add one tag each; the consumer drains the batch into
//! `Settle` frames when it is about to wait for deliveries, when enough tags are pending to
//! matter for its prefetch credit, or when a kind reaches the range bound. Acking in delivery
//! order, the normal case, keeps one range per kind however many tags are pending.
//!
//! Invariants:
//! - Every tag added leaves in exactly one drained range of its kind; ranges leave sorted,
//!   disjoint and non-adjacent (adjacent ones are merged).
//! - A drained frame holds at most `SETTLE_RANGES_MAX` ranges.
//! - Tags settled twice within one batch with the same kind leave once (the ranges merge); a
//!   tag settled with two kinds leaves in both, and the broker answers the second.

use ringmq_core::frame::{Settlement, TagRange};
use ringmq_core::ids::Tag;

use crate::limits::SETTLE_RANGES_MAX;

/// One `Settle` frame's worth: a kind and its ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SettleChunk {
    /// What the ranges get.
    pub(crate) settlement: Settlement,
    /// Sorted, disjoint ranges; at most `SETTLE_RANGES_MAX`.
    pub(crate) ranges: Vec<TagRange>,
}

/// Pending settlements of one subscription.
#[derive(Debug, Default)]
pub(crate) struct SettlementBatch {
    /// Ranges per kind, in the order `KINDS` lists; coalesced on the way in when contiguous.
    ranges: [Vec<TagRange>; 3],
    /// Tags added since the last drain.
    tags_pending: u64,
}

impl SettlementBatch {
    /// Adds one settled tag.
    pub(crate) fn add(&mut self, settlement: Settlement, tag: Tag) {
        let ranges = &mut self.ranges[kind_index(settlement)];
        self.tags_pending += 1;
        if let Some(last) = ranges.last_mut() {
            if last.last.next() == tag {
                last.last = tag;
                return;
            }
        }
        ranges.push(TagRange { first: tag, last: tag });
    }

    /// Tags added since the last drain.
    pub(crate) fn tags_pending(&self) -> u64 {
        self.tags_pending
    }

    /// True when some kind holds as many ranges as one frame may carry: drain before adding.
    pub(crate) fn is_full(&self) -> bool {
        self.ranges.iter().any(|ranges| ranges.len() >= SETTLE_RANGES_MAX)
    }

    /// True when nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.tags_pending == 0
    }

    /// Takes everything pending as frames: sorted, merged, split at the range bound.
    pub(crate) fn drain(&mut self) -> Vec<SettleChunk> {
        let mut chunks = Vec::new();
        for (index, settlement) in KINDS.into_iter().enumerate() {
            let mut ranges = std::mem::take(&mut self.ranges[index]);
            if ranges.is_empty() {
                continue;
            }
            let merged = merge(&mut ranges);
            for part in merged.chunks(SETTLE_RANGES_MAX) {
                chunks.push(SettleChunk { settlement, ranges: part.to_vec() });
            }
        }
        self.tags_pending = 0;
        chunks
    }
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(ranges: &mut [TagRange]) -> Vec<TagRange> {
    ranges.sort_unstable_by_key(|range| range.first);
    let mut merged: Vec<TagRange> = Vec::with_capacity(ranges.len());
    for range in ranges.iter() {
        assert!(range.first <= range.last);
        match merged.last_mut() {
            Some(last) if range.first.0 <= last.last.0.saturating_add(1) => {
                last.last = last.last.max(range.last);
            }
            _ => merged.push(*range),
        }
    }
    merged
}

fn kind_index(settlement: Settlement) -> usize {
    match settlement {
        Settlement::Ack => 0,
        Settlement::Reject => 1,
        Settlement::Release => 2,
    }
}

/// The kinds, in the order of `SettlementBatch::ranges`.
const KINDS: [Settlement; 3] = [Settlement::Ack, Settlement::Reject, Settlement::Release];

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, last: u64) -> TagRange {
        TagRange { first: Tag(first), last: Tag(last) }
    }

    #[test]
    fn in_order_acks_coalesce_into_one_range() {
        // Goal: the normal case sends one range however many messages were acked.
        let mut batch = SettlementBatch::default();
        for tag in 0..1000 {
            batch.add(Settlement::Ack, Tag(tag));
        }
        assert_eq!(batch.tags_pending(), 1000);
        let chunks = batch.drain();
        assert_eq!(chunks, vec![SettleChunk { settlement: Settlement::Ack, ranges: vec![range(0, 999)] }]);
        assert!(batch.is_empty());
        assert!(batch.drain().is_empty());
    }

    #[test]
    fn mixed_kinds_and_out_of_order_tags_leave_sorted_and_merged_per_kind() {
        // Goal: each kind becomes its own frame with sorted, merged ranges.
        let mut batch = SettlementBatch::default();
        // Acks out of order: 5, 6, 0, 1, 2, 4 (3 is released, 7 rejected).
        for tag in [5, 6, 0, 1, 2, 4] {
            batch.add(Settlement::Ack, Tag(tag));
        }
        batch.add(Settlement::Release, Tag(3));
        batch.add(Settlement::Reject, Tag(7));
        let chunks = batch.drain();
        assert_eq!(
            chunks,
            vec![
                SettleChunk { settlement: Settlement::Ack, ranges: vec![range(0, 2), range(4, 6)] },
                SettleChunk { settlement: Settlement::Reject, ranges: vec![range(7, 7)] },
                SettleChunk { settlement: Settlement::Release, ranges: vec![range(3, 3)] },
            ]
        );
    }

    #[test]
    fn a_tag_acked_twice_in_one_batch_leaves_once() {
        // Goal: duplicates never widen or repeat a range.
        let mut batch = SettlementBatch::default();
        for tag in [0, 1, 1, 2] {
            batch.add(Settlement::Ack, Tag(tag));
        }
        assert_eq!(batch.drain()[0].ranges, vec![range(0, 2)]);
    }

    #[test]
    fn a_kind_past_the_range_bound_is_full_and_splits_into_frames() {
        // Goal: no settle frame exceeds the broker's range bound.
        let mut batch = SettlementBatch::default();
        // Every other tag: nothing coalesces.
        let mut tag = 0;
        while !batch.is_full() {
            batch.add(Settlement::Ack, Tag(tag));
            tag += 2;
        }
        assert_eq!(batch.tags_pending(), SETTLE_RANGES_MAX as u64);
        // One more still fits in the batch; it splits into a second frame.
        batch.add(Settlement::Ack, Tag(tag));
        let chunks = batch.drain();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].ranges.len(), SETTLE_RANGES_MAX);
        assert_eq!(chunks[1].ranges, vec![range(tag, tag)]);
    }
}
