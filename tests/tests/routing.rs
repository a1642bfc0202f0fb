//! Routing through every exchange type, seen from a client: which queues a publish reaches, and
//! how a publish that reaches none, or names no exchange, is confirmed.
//!
//! Every test runs a broker with two shards and uses the same eight queue names. Queues live on
//! the shard their name hashes to, and the names are checked to cover both shards, so whichever
//! shard a connection lands on, some of its publishes, bindings and consumers cross to the other
//! shard.
//!
//! Method throughout: publish with keys chosen to hit and miss each binding, wait for every
//! confirm (a confirm is released only once every target queue stored the message, so queue
//! depths are exact right after), check the confirm counts, then check every queue's depth and
//! consume it to compare bodies in order.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ringmq_client::blocking::{Connection, Publisher};
use ringmq_client::{
    ConfirmOutcome, ConfirmSummary, ConnectOptions, ErrorCode, ExchangeKind, Message, QueueOptions, Seq,
};
use ringmq_core::ids::ShardId;
use ringmq_core::shard::shard_of;
use ringmq_tests::{assert_failed, eventually, BrokerProcess};

/// The queues every test declares; between them they live on both shards (checked).
const QUEUES: [&str; 8] = ["route-0", "route-1", "route-2", "route-3", "route-4", "route-5", "route-6", "route-7"];
/// Shards the broker runs.
const SHARDS: u16 = 2;
/// Longest a test waits for one delivery or for queue counts to settle.
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn direct_exchange_routes_each_key_to_the_queues_bound_with_it() {
    // Goal: a direct exchange delivers a message to exactly the queues bound with its key, once
    // per queue, and nowhere when no key matches (keys compare byte for byte).
    // Method: route-N bound with "kN", route-0 also with "k1", one binding made twice; publish
    // every key plus two near misses.
    let (_broker, connection) = start_with_queues();
    let publisher = connection.publisher().unwrap();

    // Declare the exchange and bind each queue with its own key.
    connection.declare_exchange("orders", ExchangeKind::Direct).unwrap();
    for (index, queue) in QUEUES.iter().enumerate() {
        connection.bind("orders", queue, &format!("k{index}")).unwrap();
    }
    // route-0 also takes k1; binding route-7 again changes nothing.
    connection.bind("orders", "route-0", "k1").unwrap();
    connection.bind("orders", "route-7", "k7").unwrap();
    assert_eq!(bindings_of(&connection, "orders"), 9);

    // Publish one message per key, then a key in the wrong case and a prefix of a key.
    let mut messages: Vec<(String, String)> = (0..8).map(|i| (format!("k{i}"), format!("m{i}"))).collect();
    messages.push(("K1".into(), "upper".into()));
    messages.push(("k".into(), "prefix".into()));
    let messages: Vec<(&str, &str)> = messages.iter().map(|(k, b)| (k.as_str(), b.as_str())).collect();
    let summary = publish(&publisher, "orders", &messages);
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (8, 2, 0), "{summary:?}");

    // Each queue holds its own message; route-0 also holds k1's.
    assert_queues_hold(
        &connection,
        &[
            ("route-0", &["m0", "m1"]),
            ("route-1", &["m1"]),
            ("route-2", &["m2"]),
            ("route-3", &["m3"]),
            ("route-4", &["m4"]),
            ("route-5", &["m5"]),
            ("route-6", &["m6"]),
            ("route-7", &["m7"]),
        ],
    );
}

#[test]
fn fanout_exchange_copies_every_message_to_every_bound_queue() {
    // Goal: a fanout exchange ignores keys and gives each bound queue one copy of every message,
    // in publish order, also for batches that cross shards; unbound queues get nothing.
    // Method: bind five of the eight queues (one of them twice, with different keys), publish a
    // few messages with various keys, then a batch of 300.
    let (_broker, connection) = start_with_queues();
    let publisher = connection.publisher().unwrap();

    // Bind route-0..route-4 with assorted keys; route-0 twice.
    connection.declare_exchange("news", ExchangeKind::Fanout).unwrap();
    for (queue, key) in [
        ("route-0", ""),
        ("route-1", "x"),
        ("route-2", "any.thing"),
        ("route-3", "#"),
        ("route-4", "*"),
        ("route-0", "again"),
    ] {
        connection.bind("news", queue, key).unwrap();
    }
    assert_eq!(bindings_of(&connection, "news"), 6);

    // Three messages with different keys reach each bound queue once.
    let summary = publish(&publisher, "news", &[("a", "n0"), ("b.c", "n1"), ("", "n2")]);
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (3, 0, 0), "{summary:?}");
    let three: &[&str] = &["n0", "n1", "n2"];
    assert_queues_hold(
        &connection,
        &[("route-0", three), ("route-1", three), ("route-2", three), ("route-3", three), ("route-4", three)],
    );

    // A batch of 300 arrives complete and in order on every bound queue.
    let bodies: Vec<String> = (0..300).map(|i| format!("batch-{i}")).collect();
    let messages: Vec<(&str, &str)> = bodies.iter().map(|b| ("k", b.as_str())).collect();
    let summary = publish(&publisher, "news", &messages);
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (300, 0, 0), "{summary:?}");
    let all: Vec<&str> = bodies.iter().map(String::as_str).collect();
    assert_queues_hold(
        &connection,
        &[("route-0", &all), ("route-1", &all), ("route-2", &all), ("route-3", &all), ("route-4", &all)],
    );
}

#[test]
fn topic_exchange_matches_star_and_hash_patterns() {
    // Goal: `*` matches exactly one word, `#` zero or more, literal words match themselves; each
    // matching queue gets one copy. Unbinding `#` makes its messages unroutable.
    // Method: one pattern per queue, keys chosen to separate the patterns (the `#` binding makes
    // every key routable), then unbind `#` and publish again.
    let (_broker, connection) = start_with_queues();
    let publisher = connection.publisher().unwrap();

    // One pattern per queue.
    connection.declare_exchange("logs", ExchangeKind::Topic).unwrap();
    let patterns = ["a.*.c", "a.#", "#", "*.b.*", "a.b.c", "#.c", "a.*", "a.#.c"];
    for (queue, pattern) in QUEUES.iter().zip(patterns) {
        connection.bind("logs", queue, pattern).unwrap();
    }

    // Publish keys of 0 to 4 words; the body is the key (the empty key as "<empty>").
    let keys = ["a.b.c", "a.c", "a", "a.x.y.c", "b.b.b", "x", ""];
    let messages: Vec<(&str, &str)> = keys.iter().map(|k| (*k, if k.is_empty() { "<empty>" } else { k })).collect();
    let summary = publish(&publisher, "logs", &messages);
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (7, 0, 0), "{summary:?}");
    assert_queues_hold(
        &connection,
        &[
            ("route-0", &["a.b.c"]),                                                 // a.*.c
            ("route-1", &["a.b.c", "a.c", "a", "a.x.y.c"]),                          // a.#
            ("route-2", &["a.b.c", "a.c", "a", "a.x.y.c", "b.b.b", "x", "<empty>"]), // #
            ("route-3", &["a.b.c", "b.b.b"]),                                        // *.b.*
            ("route-4", &["a.b.c"]),                                                 // a.b.c
            ("route-5", &["a.b.c", "a.c", "a.x.y.c"]),                               // #.c
            ("route-6", &["a.c"]),                                                   // a.*
            ("route-7", &["a.b.c", "a.c", "a.x.y.c"]),                               // a.#.c
        ],
    );

    // Without the `#` binding, "x" matches nothing and "b.b.b" only `*.b.*`.
    connection.unbind("logs", "route-2", "#").unwrap();
    let summary = publish(&publisher, "logs", &[("x", "x-again"), ("b.b.b", "bbb-again")]);
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (1, 1, 0), "{summary:?}");
    assert_queues_hold(&connection, &[("route-3", &["bbb-again"])]);
}

#[test]
fn default_exchange_routes_to_the_queue_named_by_the_key() {
    // Goal: the default exchange `""` is listed as direct, routes a message to the queue its key
    // names (on whichever shard that queue lives), finds nothing for other keys, and refuses
    // bindings.
    // Method: publish once to every queue name, then to an undeclared name and the empty key.
    let (_broker, connection) = start_with_queues();
    let publisher = connection.publisher().unwrap();

    // The default exchange is listed, as direct.
    let exchanges = connection.list_exchanges().unwrap();
    let default = exchanges.iter().find(|e| e.name.is_empty()).expect("default exchange listed");
    assert_eq!(default.kind, ExchangeKind::Direct);

    // One message per queue name, then two keys that name no queue.
    let mut messages: Vec<(&str, &str)> = QUEUES.iter().map(|q| (*q, *q)).collect();
    messages.push(("route-8", "nobody"));
    messages.push(("", "empty"));
    let summary = publish(&publisher, "", &messages);
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (8, 2, 0), "{summary:?}");
    let expected: Vec<(&str, [&str; 1])> = QUEUES.iter().map(|q| (*q, [*q])).collect();
    let expected: Vec<(&str, &[&str])> = expected.iter().map(|(q, b)| (*q, &b[..])).collect();
    assert_queues_hold(&connection, &expected);

    // Binding to the default exchange is refused with a reason.
    let error = connection.bind("", "route-0", "other").unwrap_err();
    assert_failed(&error, ErrorCode::InvalidArgument, "default exchange '' routes by queue name and takes no bindings");
}

#[test]
fn builtin_exchanges_exist_and_route_by_their_kind() {
    // Goal: amq.direct, amq.topic and amq.fanout exist from the start with their kinds, route
    // like declared exchanges of that kind, cannot be deleted or redeclared with another kind,
    // and their `amq.` prefix is reserved.
    // Method: bind queues to each, publish matching and non-matching keys, then try to change
    // the built-ins.
    let (_broker, connection) = start_with_queues();
    let publisher = connection.publisher().unwrap();

    // All four built-ins are listed with their kinds and no bindings.
    let listed: BTreeMap<String, (ExchangeKind, u32)> =
        connection.list_exchanges().unwrap().into_iter().map(|e| (e.name, (e.kind, e.bindings))).collect();
    assert_eq!(listed.get(""), Some(&(ExchangeKind::Direct, 0)));
    assert_eq!(listed.get("amq.direct"), Some(&(ExchangeKind::Direct, 0)));
    assert_eq!(listed.get("amq.topic"), Some(&(ExchangeKind::Topic, 0)));
    assert_eq!(listed.get("amq.fanout"), Some(&(ExchangeKind::Fanout, 0)));

    // Bind: amq.direct by key, amq.topic by pattern, amq.fanout to two queues.
    connection.bind("amq.direct", "route-0", "d").unwrap();
    connection.bind("amq.topic", "route-1", "t.*").unwrap();
    connection.bind("amq.fanout", "route-2", "ignored").unwrap();
    connection.bind("amq.fanout", "route-3", "").unwrap();

    // amq.direct: exact key only.
    let summary = publish(&publisher, "amq.direct", &[("d", "direct-hit"), ("t.x", "direct-miss")]);
    assert_eq!((summary.stored, summary.unroutable), (1, 1), "{summary:?}");
    // amq.topic: `*` needs exactly one more word.
    let summary =
        publish(&publisher, "amq.topic", &[("t.x", "topic-hit"), ("t", "topic-miss"), ("t.x.y", "topic-miss2")]);
    assert_eq!((summary.stored, summary.unroutable), (1, 2), "{summary:?}");
    // amq.fanout: every bound queue, whatever the key.
    let summary = publish(&publisher, "amq.fanout", &[("whatever", "fan")]);
    assert_eq!((summary.stored, summary.unroutable), (1, 0), "{summary:?}");
    assert_queues_hold(
        &connection,
        &[("route-0", &["direct-hit"]), ("route-1", &["topic-hit"]), ("route-2", &["fan"]), ("route-3", &["fan"])],
    );

    // Built-ins cannot be deleted; redeclaring with the same kind is fine, another kind is not.
    let error = connection.delete_exchange("amq.direct").unwrap_err();
    assert_failed(&error, ErrorCode::InvalidArgument, "cannot be deleted; got 'amq.direct'");
    connection.declare_exchange("amq.topic", ExchangeKind::Topic).unwrap();
    let error = connection.declare_exchange("amq.topic", ExchangeKind::Direct).unwrap_err();
    assert_failed(&error, ErrorCode::PreconditionFailed, "exchange 'amq.topic' exists as topic");
    // New `amq.` names are reserved.
    let error = connection.declare_exchange("amq.custom", ExchangeKind::Direct).unwrap_err();
    assert_failed(&error, ErrorCode::InvalidArgument, "reserved for the built-in exchanges; got 'amq.custom'");
}

#[test]
fn unroutable_and_unknown_exchange_publishes_are_confirmed_as_such() {
    // Goal: each publish gets its own outcome, in sequence order: stored, unroutable (an exchange
    // without a matching binding), or rejected with a reason naming the unknown exchange; the
    // connection stays usable after a rejection.
    // Method: four publishes with different fates, confirms taken one range at a time; then a
    // batch of each fate for the counts.
    let (_broker, connection) = start_with_queues();
    let publisher = connection.publisher().unwrap();
    connection.declare_exchange("empty-x", ExchangeKind::Direct).unwrap();
    let unknown_reason = "exchange 'no-such-exchange' does not exist; only declared and built-in exchanges can be used";

    // Seq 0 stored, 1 unroutable, 2 rejected, 3 stored.
    publisher.publish("", message("route-5", "first")).unwrap();
    publisher.publish("empty-x", message("k", "lost")).unwrap();
    publisher.publish("no-such-exchange", message("k", "refused")).unwrap();
    publisher.publish("", message("route-5", "last")).unwrap();
    // The ranges come back one per fate, in order.
    // `next_confirm` waits for the next range, so take ranges until seq 3 is covered.
    let mut outcomes: Vec<(Seq, Seq, ConfirmOutcome)> = Vec::new();
    while outcomes.last().is_none_or(|(_, last, _)| *last < Seq(3)) {
        let range = publisher.next_confirm().unwrap().expect("a confirm range before close");
        outcomes.push((range.first, range.last, range.outcome));
    }
    let rejected = ConfirmOutcome::Rejected { code: ErrorCode::NotFound, reason: unknown_reason.to_string() };
    assert_eq!(
        outcomes,
        vec![
            (Seq(0), Seq(0), ConfirmOutcome::Stored),
            (Seq(1), Seq(1), ConfirmOutcome::Unroutable),
            (Seq(2), Seq(2), rejected),
            (Seq(3), Seq(3), ConfirmOutcome::Stored),
        ]
    );
    // The summary counts them too; taking it starts the next count from zero.
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (2, 1, 1), "{summary:?}");

    // In bulk: 5 unroutable, then 3 rejected, counted separately, the first rejection named.
    let fates: Vec<(&str, &str)> =
        (0..5).map(|_| ("empty-x", "u")).chain((0..3).map(|_| ("no-such-exchange", "r"))).collect();
    for (exchange, body) in &fates {
        publisher.publish(exchange, message("k", body)).unwrap();
    }
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (0, 5, 3), "{summary:?}");
    let rejection = summary.first_rejection.expect("a rejection is reported");
    assert_eq!((rejection.first, rejection.last), (Seq(9), Seq(11)));
    assert_eq!(rejection.code, ErrorCode::NotFound);
    assert_eq!(rejection.reason, unknown_reason);

    // The connection still works: only the two stored messages are in route-5.
    assert!(connection.closed_reason().is_none());
    assert_queues_hold(&connection, &[("route-5", &["first", "last"])]);
}

#[test]
fn unbind_and_deletes_stop_routing() {
    // Goal: after an unbind the queue gets no more messages from that binding; deleting a queue
    // takes its bindings with it; deleting an exchange makes publishes to it rejected; unbinding
    // a binding that is not there fails naming it.
    // Method: bind all eight queues with one key and publish after each change.
    let (_broker, connection) = start_with_queues();
    let publisher = connection.publisher().unwrap();
    connection.declare_exchange("jobs", ExchangeKind::Direct).unwrap();
    for queue in QUEUES {
        connection.bind("jobs", queue, "work").unwrap();
    }

    // Every bound queue gets the message.
    let summary = publish(&publisher, "jobs", &[("work", "w1")]);
    assert_eq!((summary.stored, summary.unroutable), (1, 0), "{summary:?}");
    let expected: Vec<(&str, &[&str])> = QUEUES.iter().map(|q| (*q, &["w1"][..])).collect();
    assert_queues_hold(&connection, &expected);

    // Unbind the first four: only the last four get the next one.
    for queue in &QUEUES[..4] {
        connection.unbind("jobs", queue, "work").unwrap();
    }
    assert_eq!(bindings_of(&connection, "jobs"), 4);
    let summary = publish(&publisher, "jobs", &[("work", "w2")]);
    assert_eq!((summary.stored, summary.unroutable), (1, 0), "{summary:?}");
    let expected: Vec<(&str, &[&str])> = QUEUES[4..].iter().map(|q| (*q, &["w2"][..])).collect();
    assert_queues_hold(&connection, &expected);

    // Unbinding again fails, naming the binding.
    let error = connection.unbind("jobs", "route-0", "work").unwrap_err();
    assert_failed(&error, ErrorCode::NotFound, "queue 'route-0' is not bound to exchange 'jobs' with key 'work'");

    // Deleting route-7 removes its binding: route-4..route-6 remain.
    connection.delete_queue("route-7").unwrap();
    assert_eq!(bindings_of(&connection, "jobs"), 3);
    let summary = publish(&publisher, "jobs", &[("work", "w3")]);
    assert_eq!((summary.stored, summary.unroutable), (1, 0), "{summary:?}");
    assert_queues_hold(&connection, &[("route-4", &["w3"]), ("route-5", &["w3"]), ("route-6", &["w3"])]);

    // Unbinding the rest makes the key unroutable.
    for queue in &QUEUES[4..7] {
        connection.unbind("jobs", queue, "work").unwrap();
    }
    let summary = publish(&publisher, "jobs", &[("work", "w4")]);
    assert_eq!((summary.stored, summary.unroutable), (0, 1), "{summary:?}");

    // Deleting the exchange: it is no longer listed and publishing to it is rejected.
    connection.delete_exchange("jobs").unwrap();
    assert!(connection.list_exchanges().unwrap().iter().all(|e| e.name != "jobs"));
    let summary = publish(&publisher, "jobs", &[("work", "w5")]);
    assert_eq!(summary.rejected, 1, "{summary:?}");
    let rejection = summary.first_rejection.expect("a rejection is reported");
    assert_eq!(rejection.code, ErrorCode::NotFound);
    assert!(rejection.reason.contains("exchange 'jobs' does not exist"), "{}", rejection.reason);
}

#[test]
fn publishers_and_consumers_on_several_connections_reach_queues_on_both_shards() {
    // Goal: routing does not depend on which shard a connection landed on: publishes from
    // several connections reach every bound queue, and consumers on other connections get them.
    // Method: four producer connections (the kernel spreads connections over the shards) each
    // publish 50 messages through a fanout exchange; every queue must hold all 200, each
    // producer's messages in its own order.
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 50;
    let (broker, connection) = start_with_queues();
    connection.declare_exchange("spread", ExchangeKind::Fanout).unwrap();
    for queue in QUEUES {
        connection.bind("spread", queue, "").unwrap();
    }

    // Each producer publishes on its own connection and waits for its confirms.
    for producer in 0..PRODUCERS {
        let producer_connection = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
        let publisher = producer_connection.publisher().unwrap();
        let bodies: Vec<String> = (0..PER_PRODUCER).map(|i| format!("p{producer}-{i}")).collect();
        let messages: Vec<(&str, &str)> = bodies.iter().map(|b| ("", b.as_str())).collect();
        let summary = publish(&publisher, "spread", &messages);
        assert_eq!((summary.stored, summary.unroutable, summary.rejected), (PER_PRODUCER as u64, 0, 0), "{summary:?}");
        producer_connection.close().unwrap();
    }

    // Every queue holds all of them; producers published one after another, so in that order.
    let all: Vec<String> = (0..PRODUCERS).flat_map(|p| (0..PER_PRODUCER).map(move |i| format!("p{p}-{i}"))).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    // Each queue is consumed on a fresh connection, which may sit on either shard.
    for queue in QUEUES {
        let consumer_connection = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
        assert_eq!(consume(&consumer_connection, queue, all.len()), all, "bodies of {queue}");
        consumer_connection.close().unwrap();
    }
    wait_until_empty(&connection);
}

// ----- helpers -----

/// Starts a two-shard broker, connects, and declares `QUEUES`, which must span both shards.
fn start_with_queues() -> (BrokerProcess, Connection) {
    let owners: HashSet<ShardId> = QUEUES.iter().map(|q| shard_of(q, SHARDS)).collect();
    assert_eq!(owners.len(), usize::from(SHARDS), "the queue names must live on every shard");
    let broker = BrokerProcess::start(&["--shards", &SHARDS.to_string(), "--pin-cores", "false"]);
    let connection = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
    for queue in QUEUES {
        connection.declare_queue(queue, QueueOptions::default(), &[]).unwrap();
    }
    (broker, connection)
}

/// A message with routing key `key` and body `body`.
fn message(key: &str, body: &str) -> Message {
    Message {
        routing_key: Bytes::copy_from_slice(key.as_bytes()),
        body: Bytes::copy_from_slice(body.as_bytes()),
        ..Message::default()
    }
}

/// Publishes `(key, body)` pairs to `exchange` and waits for all their confirms.
fn publish(publisher: &Publisher, exchange: &str, messages: &[(&str, &str)]) -> ConfirmSummary {
    for (key, body) in messages {
        publisher.publish(exchange, message(key, body)).unwrap();
    }
    publisher.wait_for_confirms().unwrap()
}

/// The number of bindings `list_exchanges` reports for `exchange`.
fn bindings_of(connection: &Connection, exchange: &str) -> u32 {
    let exchanges = connection.list_exchanges().unwrap();
    exchanges.iter().find(|e| e.name == exchange).unwrap_or_else(|| panic!("{exchange} not in {exchanges:?}")).bindings
}

/// Asserts that each of `QUEUES` holds exactly the bodies `expected` gives it (none when not
/// named), in order; consumes them all, leaving every queue empty.
fn assert_queues_hold(connection: &Connection, expected: &[(&str, &[&str])]) {
    let expected: BTreeMap<&str, &[&str]> = expected.iter().copied().collect();
    // Depths first: exact, since every publish was confirmed.
    let listed = connection.list_queues().unwrap();
    let depths: BTreeMap<&str, u64> =
        listed.iter().filter(|q| QUEUES.contains(&q.name.as_str())).map(|q| (q.name.as_str(), q.depth)).collect();
    let expected_depths: BTreeMap<&str, u64> = QUEUES
        .iter()
        .filter(|q| depths.contains_key(*q) || expected.contains_key(*q))
        .map(|q| (*q, expected.get(q).map_or(0, |b| b.len() as u64)))
        .collect();
    assert_eq!(depths, expected_depths, "queue depths");
    // Then the bodies, in order.
    for (queue, bodies) in &expected {
        if !bodies.is_empty() {
            assert_eq!(consume(connection, queue, bodies.len()), *bodies, "bodies of {queue}");
        }
    }
    wait_until_empty(connection);
}

/// Subscribes to `queue`, receives and acks `count` messages, cancels, and returns their bodies.
fn consume(connection: &Connection, queue: &str, count: usize) -> Vec<String> {
    let mut consumer = connection.subscribe(queue, count as u32).unwrap();
    let mut bodies = Vec::with_capacity(count);
    for _ in 0..count {
        let delivery = consumer.recv_timeout(WAIT).unwrap().unwrap_or_else(|| panic!("subscription to {queue} ended"));
        assert!(!delivery.redelivered, "first delivery of {delivery:?} is flagged redelivered");
        bodies.push(String::from_utf8(delivery.message.body.to_vec()).unwrap());
        consumer.ack(delivery.tag).unwrap();
    }
    consumer.cancel().unwrap();
    bodies
}

/// Waits until none of `QUEUES` holds a ready or unacked message (acks settle asynchronously).
fn wait_until_empty(connection: &Connection) {
    eventually("every queue empty and acked", WAIT, || {
        let busy: Vec<_> = connection
            .list_queues()
            .unwrap()
            .into_iter()
            .filter(|q| QUEUES.contains(&q.name.as_str()) && (q.depth > 0 || q.unacked > 0))
            .collect();
        if busy.is_empty() {
            Ok(())
        } else {
            Err(busy)
        }
    });
}
