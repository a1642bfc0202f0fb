//! A set of `u64` values kept as inclusive ranges: queue positions a backup holds or a primary
//! still has to send as dequeued, and dedup sequence numbers of one producer. Sets like these are
//! mostly runs of consecutive values, so a range costs one entry however long it is.
//!
//! [`RangeSet`] is the mutable set; [`ranges_contain`] answers membership on the wire form of a
//! range list (a slice of increasing `(first, last)` pairs, as records and link frames carry it)
//! without building a set, for paths that must not allocate.
//!
//! Invariants:
//! - Ranges are inclusive, `first <= last`, kept in increasing order, and neither overlap nor
//!   touch: two ranges are always separated by at least one value not in the set. So a set has
//!   exactly one range form, and `len` (the range count) is the smallest possible.
//! - Inserting or removing one value changes the range count by at most one, and allocates at
//!   most one tree node; no operation allocates a temporary.

use std::collections::BTreeMap;

/// A set of `u64` kept as inclusive ranges, neither overlapping nor touching (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// `first -> last` of each range.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// How many ranges the set holds (not how many values).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `value` is in the set.
    pub fn contains(&self, value: u64) -> bool {
        self.ranges.range(..=value).next_back().is_some_and(|(_, &last)| value <= last)
    }

    /// Adds `value`, merging with the range below and the range above when it touches them.
    /// Adding a value already present changes nothing.
    pub fn insert(&mut self, value: u64) {
        let below = self.ranges.range(..=value).next_back().map(|(&first, &last)| (first, last));
        if below.is_some_and(|(_, last)| value <= last) {
            return;
        }
        // `last < value` here, so `last + 1` does not overflow.
        let joins_below = below.filter(|&(_, last)| last + 1 == value);
        let above = value.checked_add(1).and_then(|next| self.ranges.get(&next).map(|&last| (next, last)));
        match (joins_below, above) {
            (Some((first, _)), Some((above_first, above_last))) => {
                self.ranges.remove(&above_first);
                self.ranges.insert(first, above_last);
            }
            (Some((first, _)), None) => {
                self.ranges.insert(first, value);
            }
            (None, Some((above_first, above_last))) => {
                self.ranges.remove(&above_first);
                self.ranges.insert(value, above_last);
            }
            (None, None) => {
                self.ranges.insert(value, value);
            }
        }
    }

    /// Adds every value of `first..=last`, merging every range it overlaps or touches.
    ///
    /// # Panics
    ///
    /// When `first > last`.
    pub fn insert_range(&mut self, first: u64, last: u64) {
        assert!(first <= last, "range {first}..={last} has first > last");
        let mut merged = (first, last);
        // The highest range starting at or below `last + 1` touches the new one if it ends at or
        // above `first - 1`; once one does not, no lower one does either.
        while let Some((&start, &end)) = self.ranges.range(..=last.saturating_add(1)).next_back() {
            if end.saturating_add(1) < first {
                break;
            }
            self.ranges.remove(&start);
            merged = (merged.0.min(start), merged.1.max(end));
        }
        self.ranges.insert(merged.0, merged.1);
    }

    /// Whether `insert_range(first, last)` would add a range: it overlaps and touches none. A
    /// caller with a bound on the range count asks this before inserting.
    ///
    /// # Panics
    ///
    /// When `first > last`.
    pub fn adds_range(&self, first: u64, last: u64) -> bool {
        assert!(first <= last, "range {first}..={last} has first > last");
        self.ranges.range(..=last.saturating_add(1)).next_back().is_none_or(|(_, &end)| end.saturating_add(1) < first)
    }

    /// Removes `value`, splitting its range in two when it was inside one. Returns whether it was
    /// in the set.
    pub fn remove(&mut self, value: u64) -> bool {
        let Some((&first, &last)) = self.ranges.range(..=value).next_back() else {
            return false;
        };
        if value > last {
            return false;
        }
        if first < value {
            // `first < value`, so `value - 1` does not underflow; this replaces the range's end.
            self.ranges.insert(first, value - 1);
        } else {
            self.ranges.remove(&first);
        }
        if value < last {
            self.ranges.insert(value + 1, last);
        }
        true
    }

    /// The lowest range, `(first, last)`.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.ranges.first_key_value().map(|(&first, &last)| (first, last))
    }

    /// The highest range, `(first, last)`.
    pub fn last(&self) -> Option<(u64, u64)> {
        self.ranges.last_key_value().map(|(&first, &last)| (first, last))
    }

    /// Removes and returns the lowest range.
    pub fn pop_first(&mut self) -> Option<(u64, u64)> {
        self.ranges.pop_first()
    }

    /// The ranges, `(first, last)`, lowest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, u64)> + ExactSizeIterator + '_ {
        self.ranges.iter().map(|(&first, &last)| (first, last))
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

impl FromIterator<(u64, u64)> for RangeSet {
    /// The set of every value of the given inclusive ranges, in any order, overlapping or not.
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(ranges: I) -> RangeSet {
        let mut set = RangeSet::new();
        for (first, last) in ranges {
            set.insert_range(first, last);
        }
        set
    }
}

/// Whether `value` is in one of `ranges`: inclusive `(first, last)` pairs, increasing and
/// disjoint (the wire form of a range list). A binary search; allocates nothing.
pub fn ranges_contain<T: Ord + Copy>(ranges: &[(T, T)], value: T) -> bool {
    let index = ranges.partition_point(|&(_, last)| last < value);
    ranges.get(index).is_some_and(|&(first, _)| first <= value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn ranges(set: &RangeSet) -> Vec<(u64, u64)> {
        set.iter().collect()
    }

    #[test]
    fn inserts_merge_adjacent_and_overlapping_values_into_one_range() {
        // Goal: the range form stays the smallest one, whatever the insertion order.
        let mut set = RangeSet::new();
        set.insert(5);
        set.insert(7);
        assert_eq!(ranges(&set), [(5, 5), (7, 7)]);
        // 6 joins the range below and the range above.
        set.insert(6);
        assert_eq!(ranges(&set), [(5, 7)]);
        // A value already present changes nothing; one touching the end extends it.
        set.insert(6);
        set.insert(8);
        set.insert(4);
        assert_eq!(ranges(&set), [(4, 8)]);
        // A range swallows the ranges it overlaps or touches, and only those.
        set.insert_range(20, 25);
        set.insert_range(30, 30);
        set.insert_range(9, 19);
        assert_eq!(ranges(&set), [(4, 25), (30, 30)]);
        set.insert_range(0, 2);
        assert_eq!(ranges(&set), [(0, 2), (4, 25), (30, 30)]);
        set.insert_range(3, 29);
        assert_eq!(ranges(&set), [(0, 30)]);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn remove_splits_a_range_and_reports_whether_the_value_was_there() {
        // Goal: removal is the inverse of insertion, in the middle and at both ends.
        let mut set: RangeSet = [(1, 5)].into_iter().collect();
        assert!(set.remove(3));
        assert_eq!(ranges(&set), [(1, 2), (4, 5)]);
        assert!(!set.remove(3));
        assert!(set.remove(1));
        assert!(set.remove(5));
        assert_eq!(ranges(&set), [(2, 2), (4, 4)]);
        assert!(set.remove(2) && set.remove(4));
        assert!(set.is_empty());
        assert!(!set.remove(0));
    }

    #[test]
    fn contains_and_iteration_follow_the_values_lowest_first() {
        // Goal: membership at range edges and gaps; iteration in increasing order.
        let set: RangeSet = [(10, 12), (0, 0), (u64::MAX - 1, u64::MAX)].into_iter().collect();
        assert_eq!(ranges(&set), [(0, 0), (10, 12), (u64::MAX - 1, u64::MAX)]);
        assert_eq!(set.first(), Some((0, 0)));
        assert_eq!(set.last(), Some((u64::MAX - 1, u64::MAX)));
        for (value, expected) in [(0, true), (1, false), (9, false), (10, true), (12, true), (13, false)] {
            assert_eq!(set.contains(value), expected, "{value}");
        }
        assert!(set.contains(u64::MAX));
        let wire: Vec<(u64, u64)> = ranges(&set);
        for value in [0, 1, 9, 10, 11, 12, 13, u64::MAX - 2, u64::MAX] {
            assert_eq!(ranges_contain(&wire, value), set.contains(value), "{value}");
        }
        assert!(!ranges_contain::<u64>(&[], 0));
    }

    #[test]
    fn adds_range_tells_whether_an_insert_would_grow_the_range_count() {
        // Goal: a bounded caller can refuse exactly the inserts that need a new range.
        let set: RangeSet = [(5, 7), (10, 10)].into_iter().collect();
        assert!(!set.adds_range(6, 6));
        assert!(!set.adds_range(4, 4));
        assert!(!set.adds_range(8, 9));
        assert!(!set.adds_range(11, 11));
        assert!(set.adds_range(12, 12));
        assert!(set.adds_range(0, 3));
        assert!(RangeSet::new().adds_range(0, u64::MAX));
    }

    #[test]
    fn pop_first_drains_lowest_first() {
        let mut set: RangeSet = [(8, 9), (1, 2)].into_iter().collect();
        assert_eq!(set.pop_first(), Some((1, 2)));
        assert_eq!(set.pop_first(), Some((8, 9)));
        assert_eq!(set.pop_first(), None);
    }

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_operations_agree_with_a_set_of_values() {
        // Goal: the range form holds exactly the values a `BTreeSet` holds, and stays canonical.
        // Method: random inserts, range inserts and removes on a small domain (so that ranges
        // touch often), checking membership, the range count and the invariants after each.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50 {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for _ in 0..200 {
                let a = xorshift(&mut state) % 64;
                let b = a + xorshift(&mut state) % 6;
                match xorshift(&mut state) % 4 {
                    0 => {
                        set.insert(a);
                        model.insert(a);
                    }
                    1 => {
                        assert_eq!(set.adds_range(a, b), (a.saturating_sub(1)..=b + 1).all(|v| !model.contains(&v)));
                        set.insert_range(a, b);
                        model.extend(a..=b);
                    }
                    _ => assert_eq!(set.remove(a), model.remove(&a)),
                }
                let values: Vec<u64> = set.iter().flat_map(|(first, last)| first..=last).collect();
                assert_eq!(values, model.iter().copied().collect::<Vec<_>>());
                let pairs = ranges(&set);
                assert!(pairs.windows(2).all(|w| w[0].1 + 1 < w[1].0), "ranges touch: {pairs:?}");
                let runs = model.iter().zip(model.iter().skip(1)).filter(|(a, b)| **a + 1 != **b).count();
                assert_eq!(set.len(), if model.is_empty() { 0 } else { runs + 1 });
                for value in 0..72 {
                    assert_eq!(set.contains(value), model.contains(&value));
                    assert_eq!(ranges_contain(&pairs, value), model.contains(&value));
                }
            }
        }
    }
}
