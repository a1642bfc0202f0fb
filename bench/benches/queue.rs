//! A queue's cost per message on the broker's path: enqueue, deliver in batches to one
//! subscription, ack in ranges. Read as messages per second; the result hash (bytes delivered)
//! is printed once so a change in what is measured shows.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmq_core::frame::{Message, QueueOptions, Settlement, TagRange};
use ringmq_core::ids::{ConnId, ConsumerId, ShardId, Tag};
use ringmq_core::model::queue::{Queue, SubscriberKey};

/// Messages per iteration.
const MESSAGES: u64 = 102_400;
/// Messages enqueued between delivery rounds: one publish frame's worth.
const BATCH: u64 = 64;
/// The subscription's credit.
const PREFETCH: u32 = 10_000;

const _: () = assert!(MESSAGES.is_multiple_of(BATCH));

/// Enqueues, delivers and acks `MESSAGES` messages of `size` bytes; returns bytes delivered.
fn run(queue: &mut Queue, key: SubscriberKey, body: &Bytes, next_tag: &mut u64) -> u64 {
    let mut delivered_bytes = 0u64;
    for _ in 0..MESSAGES / BATCH {
        for _ in 0..BATCH {
            let message = Message { routing_key: Bytes::from_static(b"q"), body: body.clone(), ..Message::default() };
            queue.enqueue(message).expect("unbounded queue");
        }
        let mut last = None;
        queue.poll_deliveries(256, |batch| {
            delivered_bytes += batch.messages.iter().map(|d| d.message.body.len() as u64).sum::<u64>();
            last = Some(batch.first_tag.0 + batch.messages.len() as u64 - 1);
        });
        let last = last.expect("a batch was delivered");
        let range = TagRange { first: Tag(*next_tag), last: Tag(last) };
        queue.settle(key, Settlement::Ack, &[range]).expect("subscribed");
        *next_tag = last + 1;
    }
    delivered_bytes
}

fn queue_throughput(c: &mut Criterion) {
    for size in [128usize, 1024] {
        let mut group = c.benchmark_group(format!("queue/enqueue_deliver_ack/{size}B"));
        group.throughput(Throughput::Elements(MESSAGES));
        let key = SubscriberKey { shard: ShardId(0), conn: ConnId(0), consumer: ConsumerId(0) };
        let mut queue = Queue::new(
            "q".into(),
            QueueOptions::default(),
            None,
            ringmq_core::replication_level::ReplicationLevel::None,
        );
        queue.subscribe(key, PREFETCH).expect("subscribe");
        let body = Bytes::from(vec![7u8; size]);
        let mut next_tag = 0;
        println!("result hash {size}B: {}", run(&mut queue, key, &body, &mut next_tag));
        group.bench_function("batch64", |b| b.iter(|| black_box(run(&mut queue, key, &body, &mut next_tag))));
        group.finish();
    }
}

criterion_group!(benches, queue_throughput);
criterion_main!(benches);
