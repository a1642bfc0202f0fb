//! The shard-to-shard ring's cost: one thread pushes batches (as `ShardMessage::Enqueue` would
//! carry them) into an SPSC ring, another pops them, for 1M messages per iteration. Read as
//! messages per second; the result hash (messages received) is printed once.

use std::hint::black_box;
use std::thread;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Messages per iteration: a multiple of every batch size below.
const MESSAGES: u64 = 1_024_000;
/// Ring capacity, in batches (as in the transport).
const RING_CAPACITY: usize = 4096;

/// Sends `MESSAGES` messages in batches of `batch` through a fresh ring; returns the count
/// received.
fn run(batch: u64) -> u64 {
    let (mut producer, mut consumer) = rtrb::RingBuffer::<Vec<u64>>::new(RING_CAPACITY);
    let receiver = thread::spawn(move || {
        let mut received = 0u64;
        while received < MESSAGES {
            match consumer.pop() {
                Ok(items) => received += items.len() as u64,
                Err(_) => std::hint::spin_loop(),
            }
        }
        received
    });
    let mut sent = 0u64;
    while sent < MESSAGES {
        let items: Vec<u64> = (sent..sent + batch).collect();
        let mut pending = items;
        loop {
            match producer.push(pending) {
                Ok(()) => break,
                Err(rtrb::PushError::Full(back)) => {
                    pending = back;
                    std::hint::spin_loop();
                }
            }
        }
        sent += batch;
    }
    receiver.join().expect("receiver thread")
}

fn ring_throughput(c: &mut Criterion) {
    for batch in [1u64, 64, 1000] {
        assert_eq!(MESSAGES % batch, 0);
        let mut group = c.benchmark_group(format!("shard_ring/batch{batch}"));
        group.throughput(Throughput::Elements(MESSAGES));
        group.sample_size(10);
        println!("result hash batch{batch}: {}", run(batch));
        group.bench_function("push_pop", |b| b.iter(|| black_box(run(batch))));
        group.finish();
    }
}

criterion_group!(benches, ring_throughput);
criterion_main!(benches);
