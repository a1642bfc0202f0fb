//! Duplicate suppression: one queue's bounded memory of the (producer, sequence) keys it stored.
//!
//! A producer that wants suppression sends every message with the header `x-ringmq-dedup` =
//! `<producer-id>/<seq>` (`limits::DEDUP_HEADER`; PROTOCOL.md 2.5.4): the
//! producer id is non-empty UTF-8 without `/`, at most `DEDUP_PRODUCER_ID_BYTES_MAX` bytes; the
//! sequence is a decimal `u64`, the producer's own, increasing, continuing across reconnects. The
//! queue (`queue`) asks its window about each message before storing it; a `Duplicate` is not
//! stored again but confirmed as stored (it is held already, or was and has been consumed).
//!
//! Owns, per queue: for each producer, the highest sequence seen and which of the last `window`
//! sequences up to it were seen (a bitset ring, one bit per sequence); and the producers in
//! least-recently-used order, at most `producers_max` of them. The ring is not a `RangeSet`: it
//! is a sliding window that forgets a sequence as soon as the highest one moves `window` past it,
//! and costs one bit per sequence whatever the gaps, so a lookup never allocates or searches. Only
//! `seen` (a catch-up's copy of the window) speaks in ranges, and builds them with `RangeSet`.
//!
//! What it promises, and where it stops (documented in README, "Duplicate suppression"):
//! - A key is a `Duplicate` if it was recorded and is still remembered: its producer was not
//!   evicted, and its sequence is within `window` of the producer's highest. Sequences may arrive
//!   out of order within the window.
//! - Beyond the window (a sequence `window` or more below the producer's highest) the key is
//!   `BeyondWindow`: accepted and counted, since the window no longer knows; beyond the window a
//!   re-send may be stored twice. So is a re-send from a producer that was evicted (counted).
//! - A message without the header is never suppressed. A malformed header value is not an error
//!   for the message: the message is stored as if it had no header, and counted (`malformed`).
//! - Suppression is independent of the queue's content: a key stays remembered after its message
//!   is consumed and acked.
//! - A window of 0 disables suppression: nothing is parsed, recorded or suppressed.
//!
//! Invariants:
//! - At most `producers_max` producers; each producer's ring has `window` bits; bit `s % window`
//!   stands for sequence `s` for `highest - window < s <= highest`, and only those bits are set.
//! - `lru` is a doubly linked list over every slot in `slots`, most recently used first.
//!
//! Cost: one hash lookup per message with the header; a sequence jump of `k` clears `min(k,
//! window)` bits (each bit once per advance, so O(1) amortised for increasing sequences).

use crate::hash_state::HashMap;
use crate::limits::{DEDUP_HEADER, DEDUP_PRODUCER_ID_BYTES_MAX, DEDUP_WINDOW_MAX};
use crate::model::range_set::RangeSet;
use crate::wire::frame::Header;

/// What the window says of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen (within what the window remembers): store it.
    Fresh,
    /// Seen and remembered: do not store it again.
    Duplicate,
    /// Older than the window of its producer: it cannot tell, so the message is accepted (a
    /// re-send this old may be stored twice).
    BeyondWindow,
}

/// A parsed `x-ringmq-dedup` value: `<producer>/<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupKey<'a> {
    /// The producer's id: non-empty UTF-8 without `/`, at most `DEDUP_PRODUCER_ID_BYTES_MAX` bytes.
    pub producer: &'a str,
    /// The producer's sequence number for the message.
    pub seq: u64,
}

/// Why an `x-ringmq-dedup` value is malformed. The message is stored anyway (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not UTF-8.
    #[error("x-ringmq-dedup must be UTF-8 '<producer-id>/<seq>'; got {len} bytes that are not UTF-8")]
    NotUtf8 {
        /// The value's length.
        len: usize,
    },
    /// No `/` between producer and sequence.
    #[error("x-ringmq-dedup must be '<producer-id>/<seq>'; got '{got}'")]
    NoSeparator {
        /// The value.
        got: String,
    },
    /// The producer id is empty or too long.
    #[error("x-ringmq-dedup producer id must be 1..={max} bytes; got {got}")]
    ProducerLength {
        /// Longest allowed.
        max: usize,
        /// Its length.
        got: usize,
    },
    /// The sequence is not a decimal `u64`.
    #[error("x-ringmq-dedup sequence must be a decimal number in 0..={max}; got '{got}'")]
    BadSeq {
        /// Largest allowed.
        max: u64,
        /// What came after the `/`.
        got: String,
    },
}

/// Parses an `x-ringmq-dedup` value: `<producer>/<seq>`, split at the first `/` (so a producer id
/// never holds one, and a second `/` makes the sequence malformed).
///
/// # Errors
/// `KeyError` naming what is allowed and what came.
pub fn parse_key(value: &[u8]) -> Result<DedupKey<'_>, KeyError> {
    let text = std::str::from_utf8(value).map_err(|_| KeyError::NotUtf8 { len: value.len() })?;
    let (producer, seq) = text.split_once('/').ok_or_else(|| KeyError::NoSeparator { got: text.to_string() })?;
    if producer.is_empty() || producer.len() > DEDUP_PRODUCER_ID_BYTES_MAX {
        return Err(KeyError::ProducerLength { max: DEDUP_PRODUCER_ID_BYTES_MAX, got: producer.len() });
    }
    let bad_seq = || KeyError::BadSeq { max: u64::MAX, got: seq.to_string() };
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_seq());
    }
    let seq = seq.parse::<u64>().map_err(|_| bad_seq())?;
    Ok(DedupKey { producer, seq })
}

/// The message's dedup key: `None` without an `x-ringmq-dedup` header (the first one counts when
/// there are several), else the parsed value.
pub fn dedup_key(headers: &[Header]) -> Option<Result<DedupKey<'_>, KeyError>> {
    headers.iter().find(|h| &h.name[..] == DEDUP_HEADER).map(|h| parse_key(&h.value))
}

/// What one window did, for the queue's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupCounters {
    /// Keys found `Duplicate` by `check_and_record`: messages not stored again.
    pub duplicates: u64,
    /// Keys found `BeyondWindow` by `check_and_record`: accepted without knowing.
    pub beyond_window: u64,
    /// Producers forgotten to make room for a new one (least recently used first).
    pub producers_evicted: u64,
    /// Messages whose header value was malformed: stored as if they had none.
    pub malformed: u64,
}

/// "No slot" in the LRU list.
const NIL: usize = usize::MAX;

/// One producer's memory.
#[derive(Debug)]
struct Slot {
    /// The producer's id (also the key of `index`).
    producer: Box<str>,
    /// The highest sequence recorded.
    highest: u64,
    /// Bit `s % window` is set when sequence `s` (within the window below `highest`) was seen.
    bits: Box<[u64]>,
    /// More recently used neighbour, or `NIL`.
    prev: usize,
    /// Less recently used neighbour, or `NIL`.
    next: usize,
}

/// One queue's dedup window. See the module doc for what it promises.
#[derive(Debug)]
pub struct DedupWindow {
    /// Sequences remembered per producer; 0 disables the window.
    window: u32,
    /// Most producers remembered.
    producers_max: usize,
    /// Producer id to its slot.
    index: HashMap<Box<str>, usize>,
    /// Every producer's memory; never shrinks (an evicted producer's slot is reused).
    slots: Vec<Slot>,
    /// Most recently used slot, or `NIL`.
    head: usize,
    /// Least recently used slot, or `NIL`.
    tail: usize,
    /// What it did.
    counters: DedupCounters,
}

impl DedupWindow {
    /// A window remembering the last `window` sequences of each of at most `producers_max`
    /// producers; a `window` of 0 disables it (and allocates nothing).
    ///
    /// # Panics
    /// If `window` is above `DEDUP_WINDOW_MAX` or `producers_max` is 0.
    pub fn new(window: u32, producers_max: usize) -> DedupWindow {
        assert!(window <= DEDUP_WINDOW_MAX, "dedup window must be in 0..={DEDUP_WINDOW_MAX}; got {window}");
        assert!(producers_max > 0, "a dedup window remembers at least one producer");
        DedupWindow {
            window,
            producers_max,
            index: HashMap::default(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            counters: DedupCounters::default(),
        }
    }

    /// Forgets every producer and every key (its counters stay): a backup about to catch up takes
    /// its primary's window from the catch-up instead (`Shard::clear_replica_configuration`).
    pub fn forget_all(&mut self) {
        let counters = self.counters;
        *self = DedupWindow::new(self.window, self.producers_max);
        self.counters = counters;
    }

    /// A disabled window: nothing is suppressed.
    pub fn disabled() -> DedupWindow {
        DedupWindow::new(0, 1)
    }

    /// Sequences remembered per producer (0: disabled).
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Whether suppression is on.
    pub fn enabled(&self) -> bool {
        self.window > 0
    }

    /// Producers remembered now.
    pub fn producers(&self) -> usize {
        self.index.len()
    }

    /// What the window did so far.
    pub fn counters(&self) -> DedupCounters {
        self.counters
    }

    /// The key of a message with these headers, when the window is on and the header is present
    /// and well formed; a malformed value is counted and gives `None` (the message is stored as
    /// if it had no header).
    pub fn key_of<'m>(&mut self, headers: &'m [Header]) -> Option<DedupKey<'m>> {
        if !self.enabled() {
            return None;
        }
        match dedup_key(headers)? {
            Ok(key) => Some(key),
            Err(_) => {
                self.counters.malformed += 1;
                None
            }
        }
    }

    /// What `check_and_record` would say, changing nothing (not even the producer's recency).
    pub fn check(&self, producer: &str, seq: u64) -> Verdict {
        if !self.enabled() {
            return Verdict::Fresh;
        }
        match self.index.get(producer) {
            None => Verdict::Fresh,
            Some(&slot) => self.verdict_of(&self.slots[slot], seq),
        }
    }

    /// Says whether `(producer, seq)` was seen, and records it as seen: the primary's check before
    /// storing a message. `Duplicate` and `BeyondWindow` are counted. A disabled window says
    /// `Fresh` and records nothing.
    pub fn check_and_record(&mut self, producer: &str, seq: u64) -> Verdict {
        let verdict = self.record(producer, seq);
        match verdict {
            Verdict::Duplicate => self.counters.duplicates += 1,
            Verdict::BeyondWindow => self.counters.beyond_window += 1,
            Verdict::Fresh => {}
        }
        verdict
    }

    /// Records `(producer, seq)` as seen and returns what the window knew of it, counting nothing
    /// but evictions: a backup's record of a message its primary stored (the primary decided).
    pub fn record(&mut self, producer: &str, seq: u64) -> Verdict {
        if !self.enabled() {
            return Verdict::Fresh;
        }
        let slot = match self.index.get(producer) {
            Some(&slot) => {
                self.touch(slot);
                slot
            }
            None => {
                self.insert(producer, seq);
                return Verdict::Fresh;
            }
        };
        let window = u64::from(self.window);
        let verdict = self.verdict_of(&self.slots[slot], seq);
        let entry = &mut self.slots[slot];
        match verdict {
            Verdict::Fresh if seq > entry.highest => {
                if seq - entry.highest >= window {
                    entry.bits.fill(0);
                } else {
                    for cleared in entry.highest + 1..seq {
                        clear_bit(&mut entry.bits, cleared % window);
                    }
                }
                set_bit(&mut entry.bits, seq % window);
                entry.highest = seq;
            }
            Verdict::Fresh => set_bit(&mut entry.bits, seq % window),
            Verdict::Duplicate | Verdict::BeyondWindow => {}
        }
        verdict
    }

    /// What the window remembers, for a backup's catch-up (`ReplicationEvent::DedupSeen`): per
    /// producer, least recently used first (so that recording them in this order keeps the
    /// recency), the sequences seen within its window as inclusive ranges, increasing; at most the
    /// `ranges_max` most recent ranges of each producer (a window this fragmented is rare; older
    /// ranges are left out, and their re-sends may be stored twice after a failover). Empty when
    /// disabled.
    ///
    /// Cost: O(window / 64) per producer when its bits are mostly clear, O(window) at worst.
    pub fn seen(&self, ranges_max: usize) -> Vec<(String, Vec<(u64, u64)>)> {
        let mut out = Vec::new();
        if !self.enabled() || ranges_max == 0 {
            return out;
        }
        let window = u64::from(self.window);
        let mut slot = self.tail;
        while slot != NIL {
            let entry = &self.slots[slot];
            let mut ranges = RangeSet::new();
            let mut seq = entry.highest.saturating_sub(window - 1);
            loop {
                let index = seq % window;
                if index.is_multiple_of(64)
                    && index + 64 <= window
                    && entry.bits[(index / 64) as usize] == 0
                    && entry.highest - seq >= 64
                {
                    seq += 64;
                    continue;
                }
                if bit(&entry.bits, index) {
                    // Ascending: `seq` extends the last range or starts a new one, which pushes
                    // the oldest out once there are `ranges_max`.
                    ranges.insert(seq);
                    if ranges.len() > ranges_max {
                        ranges.pop_first();
                    }
                }
                if seq == entry.highest {
                    break;
                }
                seq += 1;
            }
            if !ranges.is_empty() {
                out.push((entry.producer.to_string(), ranges.iter().collect()));
            }
            slot = entry.prev;
        }
        out
    }

    /// Records every sequence of `ranges` (inclusive) of `producer` as seen, as `record` does
    /// (counting nothing but evictions): a backup's record of keys its primary remembers
    /// (`Record::DedupSeen`). Only the sequences within `window` of the highest one given are
    /// recorded (the others are beyond the window anyway), so the work is at most O(window) per
    /// call whatever the ranges. Nothing on a disabled window.
    pub fn record_ranges(&mut self, producer: &str, ranges: &[(u64, u64)]) {
        if !self.enabled() {
            return;
        }
        let Some(top) = ranges.iter().map(|&(_, last)| last).max() else { return };
        let floor = top.saturating_sub(u64::from(self.window) - 1);
        for &(first, last) in ranges {
            let first = first.max(floor);
            if first > last {
                continue;
            }
            let mut seq = first;
            loop {
                self.record(producer, seq);
                if seq == last {
                    break;
                }
                seq += 1;
            }
        }
    }

    /// The verdict on `seq` of one producer's memory.
    fn verdict_of(&self, slot: &Slot, seq: u64) -> Verdict {
        let window = u64::from(self.window);
        if seq > slot.highest {
            Verdict::Fresh
        } else if slot.highest - seq >= window {
            Verdict::BeyondWindow
        } else if bit(&slot.bits, seq % window) {
            Verdict::Duplicate
        } else {
            Verdict::Fresh
        }
    }

    /// Remembers a new producer with `seq` seen, evicting the least recently used one when full.
    fn insert(&mut self, producer: &str, seq: u64) {
        let window = u64::from(self.window);
        let slot = if self.index.len() >= self.producers_max {
            let victim = self.tail;
            self.unlink(victim);
            let old = std::mem::replace(&mut self.slots[victim].producer, Box::from(producer));
            self.index.remove(&old);
            self.slots[victim].bits.fill(0);
            self.counters.producers_evicted += 1;
            victim
        } else {
            let words = usize::try_from(window.div_ceil(64)).expect("window fits memory");
            self.slots.push(Slot {
                producer: Box::from(producer),
                highest: 0,
                bits: vec![0; words].into_boxed_slice(),
                prev: NIL,
                next: NIL,
            });
            self.slots.len() - 1
        };
        let entry = &mut self.slots[slot];
        entry.highest = seq;
        set_bit(&mut entry.bits, seq % window);
        self.index.insert(Box::from(producer), slot);
        self.push_front(slot);
    }

    /// Makes `slot` the most recently used.
    fn touch(&mut self, slot: usize) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    /// Takes `slot` out of the LRU list.
    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.slots[slot].prev, self.slots[slot].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].prev = prev;
        }
        self.slots[slot].prev = NIL;
        self.slots[slot].next = NIL;
    }

    /// Puts `slot` (unlinked) at the front of the LRU list.
    fn push_front(&mut self, slot: usize) {
        self.slots[slot].next = self.head;
        if self.head == NIL {
            self.tail = slot;
        } else {
            self.slots[self.head].prev = slot;
        }
        self.head = slot;
    }
}

/// Whether bit `index` is set.
fn bit(bits: &[u64], index: u64) -> bool {
    bits[(index / 64) as usize] & (1 << (index % 64)) != 0
}

/// Sets bit `index`.
fn set_bit(bits: &mut [u64], index: u64) {
    bits[(index / 64) as usize] |= 1 << (index % 64);
}

/// Clears bit `index`.
fn clear_bit(bits: &mut [u64], index: u64) {
    bits[(index / 64) as usize] &= !(1 << (index % 64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn fresh_then_duplicate_per_producer() {
        // Goal: a key recorded once is a duplicate after; producers don't collide.
        let mut window = DedupWindow::new(8, 4);
        assert_eq!(window.check_and_record("a", 1), Verdict::Fresh);
        assert_eq!(window.check_and_record("a", 1), Verdict::Duplicate);
        assert_eq!(window.check_and_record("b", 1), Verdict::Fresh);
        assert_eq!(window.check_and_record("a", 2), Verdict::Fresh);
        assert_eq!(window.check("a", 2), Verdict::Duplicate);
        assert_eq!(window.check("a", 3), Verdict::Fresh);
        assert_eq!(window.counters(), DedupCounters { duplicates: 1, ..DedupCounters::default() });
        assert_eq!(window.producers(), 2);
    }

    #[test]
    fn forgetting_all_keeps_the_settings_and_counters_and_nothing_else() {
        // Goal: after `forget_all` every key is fresh again, the window's size and producer bound
        // are unchanged, and what it counted before stays counted.
        let mut window = DedupWindow::new(8, 2);
        window.check_and_record("a", 1);
        window.check_and_record("a", 1);
        window.forget_all();
        assert_eq!(window.producers(), 0);
        assert_eq!(window.window(), 8);
        assert_eq!(window.check_and_record("a", 1), Verdict::Fresh);
        assert_eq!(window.check_and_record("a", 1), Verdict::Duplicate);
        assert_eq!(window.counters(), DedupCounters { duplicates: 2, ..DedupCounters::default() });
    }

    #[test]
    fn out_of_order_seqs_within_the_window_are_each_fresh_once() {
        // Goal: gaps below the highest are remembered as unseen, then as seen once filled.
        let mut window = DedupWindow::new(16, 4);
        assert_eq!(window.check_and_record("p", 10), Verdict::Fresh);
        assert_eq!(window.check_and_record("p", 7), Verdict::Fresh);
        assert_eq!(window.check_and_record("p", 12), Verdict::Fresh);
        assert_eq!(window.check_and_record("p", 11), Verdict::Fresh);
        for seq in [7, 10, 11, 12] {
            assert_eq!(window.check_and_record("p", seq), Verdict::Duplicate, "{seq}");
        }
        for seq in [8, 9] {
            assert_eq!(window.check("p", seq), Verdict::Fresh, "{seq}");
        }
        // A jump clears the bits it passes, even those whose ring index an older seq had.
        assert_eq!(window.check_and_record("p", 12 + 15), Verdict::Fresh);
        assert_eq!(window.check("p", 12), Verdict::Duplicate);
        assert_eq!(window.check("p", 12 + 14), Verdict::Fresh);
        assert_eq!(window.check("p", 11), Verdict::BeyondWindow);
    }

    #[test]
    fn beyond_the_window_is_accepted_and_counted() {
        // Goal: a seq `window` or more below the highest is BeyondWindow, never a duplicate.
        let mut window = DedupWindow::new(4, 4);
        for seq in 0..10 {
            assert_eq!(window.check_and_record("p", seq), Verdict::Fresh);
        }
        // Highest 9, window 4: 6..=9 are remembered, 5 and below are not.
        assert_eq!(window.check_and_record("p", 6), Verdict::Duplicate);
        assert_eq!(window.check_and_record("p", 5), Verdict::BeyondWindow);
        assert_eq!(window.check_and_record("p", 0), Verdict::BeyondWindow);
        // A jump past the whole window forgets everything below it.
        assert_eq!(window.check_and_record("p", 100), Verdict::Fresh);
        assert_eq!(window.check_and_record("p", 97), Verdict::Fresh);
        assert_eq!(window.check_and_record("p", 96), Verdict::BeyondWindow);
        let counters = window.counters();
        assert_eq!((counters.duplicates, counters.beyond_window), (1, 3));
    }

    #[test]
    fn the_least_recently_used_producer_is_evicted_and_counted() {
        // Goal: the bound on producers holds; the one evicted is the least recently used, and its
        // keys are forgotten (a re-send is fresh again); others keep theirs.
        let mut window = DedupWindow::new(8, 3);
        for producer in ["a", "b", "c"] {
            window.check_and_record(producer, 1);
        }
        // Touch a: b is now the least recently used.
        assert_eq!(window.check_and_record("a", 2), Verdict::Fresh);
        assert_eq!(window.check_and_record("d", 1), Verdict::Fresh);
        assert_eq!(window.producers(), 3);
        assert_eq!(window.counters().producers_evicted, 1);
        assert_eq!(window.check("b", 1), Verdict::Fresh);
        for producer in ["a", "c", "d"] {
            assert_eq!(window.check(producer, 1), Verdict::Duplicate, "{producer}");
        }
        // Re-admitting b evicts c (least recently used now), and b's slot starts clean.
        assert_eq!(window.check_and_record("b", 5), Verdict::Fresh);
        assert_eq!(window.check("c", 1), Verdict::Fresh);
        assert_eq!(window.check("b", 1), Verdict::Fresh);
        assert_eq!(window.check("b", 5), Verdict::Duplicate);
        assert_eq!(window.counters().producers_evicted, 2);
        // A window of one producer evicts on every change of producer.
        let mut single = DedupWindow::new(8, 1);
        single.check_and_record("x", 1);
        single.check_and_record("y", 1);
        assert_eq!(single.check("x", 1), Verdict::Fresh);
        assert_eq!(single.check("y", 1), Verdict::Duplicate);
    }

    #[test]
    fn a_disabled_window_suppresses_nothing() {
        let mut window = DedupWindow::disabled();
        assert_eq!(window.check_and_record("p", 1), Verdict::Fresh);
        assert_eq!(window.check_and_record("p", 1), Verdict::Fresh);
        let headers = [Header { name: Bytes::from_static(DEDUP_HEADER), value: Bytes::from_static(b"p/1") }];
        assert_eq!(window.key_of(&headers), None);
        assert_eq!(window.producers(), 0);
    }

    #[test]
    fn record_counts_no_duplicates() {
        // Goal: a backup's record of the primary's messages leaves the duplicate counter alone.
        let mut window = DedupWindow::new(8, 2);
        assert_eq!(window.record("p", 3), Verdict::Fresh);
        assert_eq!(window.record("p", 3), Verdict::Duplicate);
        assert_eq!(window.counters(), DedupCounters::default());
        assert_eq!(window.check_and_record("p", 3), Verdict::Duplicate);
    }

    #[test]
    fn window_sizes_not_a_multiple_of_64_and_the_largest_seqs() {
        let mut window = DedupWindow::new(100, 2);
        for seq in (u64::MAX - 150)..=u64::MAX {
            assert_eq!(window.check_and_record("p", seq), Verdict::Fresh);
        }
        assert_eq!(window.check("p", u64::MAX - 99), Verdict::Duplicate);
        assert_eq!(window.check("p", u64::MAX - 100), Verdict::BeyondWindow);
    }

    #[test]
    fn header_values_parse_or_say_what_was_wrong() {
        assert_eq!(parse_key(b"orders-1/42"), Ok(DedupKey { producer: "orders-1", seq: 42 }));
        assert_eq!(parse_key(b"p/18446744073709551615").map(|k| k.seq), Ok(u64::MAX));
        assert_eq!(
            parse_key(b"p/x").unwrap_err().to_string(),
            format!("x-ringmq-dedup sequence must be a decimal number in 0..={}; got 'x'", u64::MAX)
        );
        for bad in [&b"p/"[..], b"p/+1", b"p/1/2", b"p/18446744073709551616", b"p/ 1"] {
            assert!(matches!(parse_key(bad), Err(KeyError::BadSeq { .. })), "{bad:?}");
        }
        assert_eq!(parse_key(b"/1"), Err(KeyError::ProducerLength { max: DEDUP_PRODUCER_ID_BYTES_MAX, got: 0 }));
        let long = format!("{}/1", "p".repeat(DEDUP_PRODUCER_ID_BYTES_MAX + 1));
        assert_eq!(
            parse_key(long.as_bytes()).unwrap_err().to_string(),
            format!("x-ringmq-dedup producer id must be 1..={DEDUP_PRODUCER_ID_BYTES_MAX} bytes; got 201")
        );
        assert!(matches!(parse_key(b"p1"), Err(KeyError::NoSeparator { .. })));
        assert_eq!(parse_key(b"\xff/1"), Err(KeyError::NotUtf8 { len: 3 }));
    }

    #[test]
    fn key_of_finds_the_first_header_and_counts_malformed_values() {
        let header = |name: &'static str, value: &'static str| Header {
            name: Bytes::from_static(name.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        };
        let mut window = DedupWindow::new(8, 2);
        assert_eq!(window.key_of(&[]), None);
        let headers = [header("other", "x"), header("x-ringmq-dedup", "p/7"), header("x-ringmq-dedup", "q/8")];
        assert_eq!(window.key_of(&headers), Some(DedupKey { producer: "p", seq: 7 }));
        // The name is matched exactly (lower case).
        assert_eq!(window.key_of(&[header("X-RingMQ-Dedup", "p/7")]), None);
        assert_eq!(window.counters().malformed, 0);
        assert_eq!(window.key_of(&[header("x-ringmq-dedup", "no-seq")]), None);
        assert_eq!(window.counters().malformed, 1);
    }

    #[test]
    fn seen_gives_the_window_as_ranges_and_record_ranges_rebuilds_it() {
        // Goal: the catch-up's view of a window (ranges per producer, least recent first, within
        // the window) recorded elsewhere says Duplicate for exactly the same keys.
        let mut window = DedupWindow::new(100, 4);
        for seq in (1..=50).chain(52..=60).chain([70, 120]) {
            window.check_and_record("a", seq);
        }
        for seq in 5..=7 {
            window.check_and_record("b", seq);
        }
        let seen = window.seen(16);
        assert_eq!(
            seen,
            vec![("a".to_string(), vec![(21, 50), (52, 60), (70, 70), (120, 120)]), ("b".to_string(), vec![(5, 7)])]
        );
        let mut copy = DedupWindow::new(100, 4);
        for (producer, ranges) in &seen {
            copy.record_ranges(producer, ranges);
        }
        for producer in ["a", "b"] {
            for seq in 0..=130 {
                let expected = window.check(producer, seq);
                assert_eq!(copy.check(producer, seq), expected, "{producer}/{seq}");
            }
        }
        assert_eq!(copy.counters(), DedupCounters::default());
        // Gaps inside the window become separate ranges; only the most recent are kept.
        let mut gappy = DedupWindow::new(64, 1);
        for seq in (1..=20).step_by(2) {
            gappy.record("p", seq);
        }
        assert_eq!(gappy.seen(3), vec![("p".to_string(), vec![(15, 15), (17, 17), (19, 19)])]);
        assert_eq!(gappy.seen(100)[0].1.len(), 10);
        // A long run across word boundaries and the ring's wrap stays one range.
        let mut run = DedupWindow::new(1000, 1);
        for seq in 1..=5000 {
            run.record("p", seq);
        }
        assert_eq!(run.seen(8), vec![("p".to_string(), vec![(4001, 5000)])]);
        // A disabled window gives nothing and records nothing.
        assert!(DedupWindow::disabled().seen(8).is_empty());
        let mut off = DedupWindow::disabled();
        off.record_ranges("p", &[(1, 5)]);
        assert_eq!(off.producers(), 0);
    }

    #[test]
    fn record_ranges_records_only_the_top_window_of_a_huge_range() {
        // Goal: a range far wider than the window costs O(window) and keeps the top of it.
        let mut window = DedupWindow::new(8, 2);
        window.record_ranges("p", &[(0, u64::MAX - 1)]);
        assert_eq!(window.check("p", u64::MAX - 1), Verdict::Duplicate);
        assert_eq!(window.check("p", u64::MAX - 8), Verdict::Duplicate);
        assert_eq!(window.check("p", u64::MAX - 9), Verdict::BeyondWindow);
        assert_eq!(window.check("p", u64::MAX), Verdict::Fresh);
    }
}
