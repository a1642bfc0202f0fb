//! The completion tracker's cost per publish: `handle_publish`, one `handle_enqueued` per target,
//! and `poll_confirms`, for 1M publishes per iteration, read as publishes per second.
//!
//! The shape follows the broker's data path: a producer keeps a window of publishes in flight
//! (`WINDOW`), publishes arrive in frames of `BATCH`, and with several targets each target (a
//! queue, usually on another shard) reports the whole batch before the next one does, as the
//! shard-to-shard rings deliver them. Every iteration checks that all publishes were confirmed,
//! and the result hash is printed once, so a change in what is measured shows.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmq_core::completion_tracker::CompletionTracker;
use ringmq_core::frame::{ConfirmOutcome, ConfirmRange};
use ringmq_core::ids::Seq;

/// Publishes per iteration.
const PUBLISHES: u64 = 1_000_000;
/// Publishes in one frame: a typical batch of small messages (divides `PUBLISHES`).
const BATCH: u64 = 200;
/// The tracker's capacity: publishes a producer may have unconfirmed.
const WINDOW: usize = 4096;

// `BATCH` divides `PUBLISHES`, so every iteration publishes exactly `PUBLISHES`.
const _: () = assert!(PUBLISHES / BATCH * BATCH == PUBLISHES);
const _: () = assert!(BATCH as usize <= WINDOW);

/// A tracker, the next sequence number, and the reused output vector.
struct Workload {
    /// The tracker under test.
    tracker: CompletionTracker,
    /// The next publish's sequence number; carries on across iterations.
    next_seq: u64,
    /// Reused across polls, so the steady state allocates nothing.
    ranges: Vec<ConfirmRange>,
}

impl Workload {
    fn new() -> Workload {
        Workload { tracker: CompletionTracker::new(WINDOW), next_seq: 0, ranges: Vec::with_capacity(64) }
    }

    /// Publishes, completes and confirms `PUBLISHES` publishes with `targets` targets each;
    /// returns a hash of the confirms released.
    fn run(&mut self, targets: u32) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut released = 0u64;
        let mut published = 0u64;
        while published < PUBLISHES {
            let first = self.next_seq;
            for offset in 0..BATCH {
                let publish = self.tracker.handle_publish(Seq(first + offset), targets);
                assert!(publish.is_ok(), "window full: the bench polls too rarely");
            }
            // Each target reports the whole batch, then the next target does.
            for _ in 0..targets {
                for offset in 0..BATCH {
                    self.tracker.handle_enqueued(Seq(first + offset), ConfirmOutcome::Stored);
                }
            }
            self.next_seq += BATCH;
            published += BATCH;
            released += self.tracker.poll_confirms(&mut self.ranges);
            for range in self.ranges.drain(..) {
                hash = (hash ^ range.first.0 ^ (range.last.0 << 20)).wrapping_mul(0x100_0000_01b3);
            }
        }
        assert_eq!(released, PUBLISHES, "every publish is confirmed");
        assert_eq!(self.tracker.inflight(), 0);
        hash
    }
}

fn completion_tracker(c: &mut Criterion) {
    for targets in [1u32, 3] {
        // Report what is measured, once, outside the timing.
        let hash = Workload::new().run(targets);
        println!("completion_tracker/targets_{targets}: {PUBLISHES} publishes, result hash {hash:016x}");
        let mut group = c.benchmark_group(format!("completion_tracker/targets_{targets}"));
        group.throughput(Throughput::Elements(PUBLISHES));
        group.sample_size(20);
        let mut workload = Workload::new();
        group.bench_function("publish_enqueue_poll", |b| b.iter(|| black_box(workload.run(targets))));
        group.finish();
    }
}

criterion_group!(benches, completion_tracker);
criterion_main!(benches);
