//! Routing cost per published message, read as messages per second: the routing table's `route`
//! for each exchange kind, plus the topic matcher alone.
//!
//! Each iteration routes `KEYS` routing keys into one reused output vector, as the shard does per
//! publish frame. Every scenario checks its total number of targets on each iteration and prints
//! it once, so a change in what is measured shows.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmq_core::frame::Binding;
use ringmq_core::model::routing_table::RoutingTable;
use ringmq_core::model::topic::Pattern;

/// Routing keys per iteration: a frame's worth of messages.
const KEYS: usize = 1024;
/// Queues in the table.
const QUEUES: usize = 1000;

/// Builds a scenario.
type BuildScenario = fn() -> Scenario;

/// A scenario: an exchange in a table and the keys published to it.
struct Scenario {
    /// The table, with queues and bindings.
    table: RoutingTable,
    /// The exchange published to.
    exchange: &'static str,
    /// The routing keys, cycled through.
    keys: Vec<Vec<u8>>,
}

impl Scenario {
    /// Routes every key once; returns the number of targets found.
    fn run(&self, out: &mut Vec<Arc<str>>) -> usize {
        let mut targets = 0;
        for key in &self.keys {
            out.clear();
            self.table.route(self.exchange, key, out).expect("exchange exists");
            targets += out.len();
        }
        out.clear();
        targets
    }
}

fn binding(exchange: &str, queue: &str, key: &str) -> Binding {
    Binding { exchange: exchange.to_owned(), queue: queue.to_owned(), key: key.to_owned() }
}

/// A table with `QUEUES` queues named `queue-N`.
fn table_with_queues() -> RoutingTable {
    let mut table = RoutingTable::new();
    for index in 0..QUEUES {
        table.add_queue(&format!("queue-{index}")).expect("valid name");
    }
    table
}

/// The default exchange: one hash lookup by queue name.
fn default_exchange() -> Scenario {
    let table = table_with_queues();
    let keys = (0..KEYS).map(|i| format!("queue-{}", i * 7 % QUEUES).into_bytes()).collect();
    Scenario { table, exchange: "", keys }
}

/// `amq.direct`, each queue bound with its own key; one key in eight matches nothing.
fn direct() -> Scenario {
    let mut table = table_with_queues();
    for index in 0..QUEUES {
        let queue = format!("queue-{index}");
        table.bind(&binding("amq.direct", &queue, &format!("key-{index}"))).expect("bind");
    }
    let keys = (0..KEYS)
        .map(|i| if i % 8 == 7 { b"no-such-key".to_vec() } else { format!("key-{}", i * 7 % QUEUES).into_bytes() })
        .collect();
    Scenario { table, exchange: "amq.direct", keys }
}

/// `amq.fanout` with 10 queues bound.
fn fanout_10() -> Scenario {
    let mut table = table_with_queues();
    for index in 0..10 {
        table.bind(&binding("amq.fanout", &format!("queue-{index}"), "")).expect("bind");
    }
    let keys = vec![Vec::new(); KEYS];
    Scenario { table, exchange: "amq.fanout", keys }
}

/// `amq.topic` with 100 wildcard patterns and 100 literal keys, over keys of four words.
fn topic_100_patterns() -> Scenario {
    let mut table = table_with_queues();
    let regions = ["eu", "us", "ap", "sa", "af"];
    let kinds = ["orders", "payments", "shipments", "returns"];
    for index in 0..100 {
        let region = regions[index % regions.len()];
        let kind = kinds[index % kinds.len()];
        let pattern = match index % 4 {
            0 => format!("{region}.{kind}.#"),
            1 => format!("*.{kind}.created.{index}"),
            2 => format!("{region}.*.*.{index}"),
            _ => format!("#.{index}"),
        };
        table.bind(&binding("amq.topic", &format!("queue-{index}"), &pattern)).expect("bind");
        let literal = format!("{region}.{kind}.updated.{index}");
        table.bind(&binding("amq.topic", &format!("queue-{}", 100 + index), &literal)).expect("bind");
    }
    let keys = (0..KEYS)
        .map(|i| {
            let region = regions[i % regions.len()];
            let kind = kinds[i / 5 % kinds.len()];
            let event = if i % 2 == 0 { "created" } else { "updated" };
            format!("{region}.{kind}.{event}.{}", i % 150).into_bytes()
        })
        .collect();
    Scenario { table, exchange: "amq.topic", keys }
}

fn routing(c: &mut Criterion) {
    let scenarios: [(&str, BuildScenario); 4] = [
        ("default_exchange", default_exchange),
        ("direct_1000_queues", direct),
        ("fanout_10", fanout_10),
        ("topic_100_patterns", topic_100_patterns),
    ];
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(KEYS as u64));
    for (name, build) in scenarios {
        let scenario = build();
        let mut out = Vec::new();
        // Report what is measured, once, outside the timing.
        let expected = scenario.run(&mut out);
        println!("routing/{name}: {KEYS} keys, {expected} targets");
        group.bench_function(name, |b| {
            b.iter(|| {
                let targets = scenario.run(&mut out);
                assert_eq!(targets, expected);
                black_box(targets)
            })
        });
    }
    group.finish();

    // The matcher alone, on a pattern with a `#` in the middle (the backtracking case); half
    // the keys match.
    let pattern = Pattern::compile(b"eu.#.created.*");
    let events = ["created", "shipped"];
    let keys: Vec<Vec<u8>> =
        (0..KEYS).map(|i| format!("eu.orders.{}.{}.{i}", i % 3, events[i % 2]).into_bytes()).collect();
    let expected = keys.iter().filter(|key| pattern.matches(key)).count();
    println!("topic_match/hash_in_middle: {KEYS} keys, {expected} matches");
    let mut group = c.benchmark_group("topic_match");
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function("hash_in_middle", |b| {
        b.iter(|| {
            let matched = keys.iter().filter(|key| pattern.matches(black_box(key))).count();
            assert_eq!(matched, expected);
            matched
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
