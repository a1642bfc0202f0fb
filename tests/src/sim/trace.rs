//! The run's trace: a line per event, a hash over all of them, and the last lines kept for a
//! failure report.
//!
//! Every event the runner carries out is described in one line (time, what, to whom), hashed with
//! FNV-1a 64 (stable across platforms and Rust releases, which `std`'s hashers are not promised to
//! be), and kept in a ring of the last `TRACE_LINES_KEPT` lines. Two runs of one seed must give
//! the same hash: that is the determinism test. With `verbose`, every line is also printed as it
//! happens (the `--seed` replay of the command-line tool).
//!
//! Not here: deciding what is worth a line (the runner writes one per event it handles).
//!
//! Invariants:
//! - The hash covers every line recorded, in order, with a separator, so two traces with the same
//!   hash have (barring collisions) the same lines.
//! - At most `TRACE_LINES_KEPT` lines are kept.

use std::collections::VecDeque;

/// Lines kept for the failure report.
pub const TRACE_LINES_KEPT: usize = 50;

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    /// FNV-1a 64 over every line and a newline after each.
    hash: u64,
    /// The last lines.
    recent: VecDeque<String>,
    /// Lines recorded.
    lines: u64,
    /// Print every line as it is recorded.
    verbose: bool,
}

impl Trace {
    /// An empty trace; `verbose` prints every line.
    pub fn new(verbose: bool) -> Trace {
        Trace { hash: FNV_OFFSET, recent: VecDeque::with_capacity(TRACE_LINES_KEPT), lines: 0, verbose }
    }

    /// Records one line.
    pub fn record(&mut self, line: String) {
        for &byte in line.as_bytes().iter().chain(b"\n") {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        if self.verbose {
            println!("{line}");
        }
        if self.recent.len() == TRACE_LINES_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
        self.lines += 1;
    }

    /// Whether lines are printed as they come (callers may skip building detail otherwise).
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Lines recorded.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The last lines, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }
}

/// FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0100_0000_01b3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_lines_same_hash_and_the_ring_keeps_the_last() {
        // Goal: the hash depends only on the lines, and only the last ones are kept.
        // Method: two traces of the same lines; one more line than the ring holds.
        let mut a = Trace::new(false);
        let mut b = Trace::new(false);
        for i in 0..=TRACE_LINES_KEPT {
            a.record(format!("line {i}"));
            b.record(format!("line {i}"));
        }
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.recent().count(), TRACE_LINES_KEPT);
        assert_eq!(a.recent().next(), Some("line 1"));
        b.record("another".into());
        assert_ne!(a.hash(), b.hash());
    }
}
