//! Duplicate suppression with real broker processes: messages carry the header `x-ringmq-dedup` =
//! `<producer-id>/<seq>` (set here by hand through the client API), and a re-send of a key a
//! queue already stored is confirmed "stored" without a second copy.
//!
//! What is checked: re-sends on a new connection (as after a reconnect) leave one copy of each
//! message, two producers' equal sequence numbers do not collide, and messages without the header
//! are never suppressed; `--dedup-window 0` turns suppression off; across a failover (3-broker
//! cluster, kill -9 of the primary, promotion of a ready backup) re-sends of messages the new
//! primary received by replication, consumed ones included, are not stored twice; the Rust
//! client's `producer_id` stamp is the same convention.
//!
//! Method: `BrokerProcess` / `start_cluster` for the brokers, the blocking client for data and
//! for admin connections (`--ha-admin`) that read queue depths. Every wait polls with a deadline
//! (`eventually`); no fixed sleeps. Build the broker first: `cargo build -p ringmq`.

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{blocking, ConnectOptions};
use ringmq_core::frame::{Header, Message, QueueOptions};
use ringmq_core::limits::DEDUP_HEADER;
use ringmq_tests::ha::{client, promote, queue_info, wait_depth, wait_state};
use ringmq_tests::{start_cluster, BrokerProcess};

/// Longest wait for one message.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// Message `seq` of `producer` for `queue`: body `<producer>/<seq>`, and the dedup header with
/// the same value when `keyed`.
fn message(queue: &str, producer: &str, seq: u64, keyed: bool) -> Message {
    let key = format!("{producer}/{seq}");
    let headers = if keyed {
        vec![Header { name: Bytes::from_static(DEDUP_HEADER), value: Bytes::from(key.clone()) }]
    } else {
        Vec::new()
    };
    Message { routing_key: Bytes::from(queue.to_owned()), message_id: Bytes::new(), headers, body: Bytes::from(key) }
}

/// Publishes `producer`'s messages `seqs` to `queue` on a new connection and waits for every
/// confirm, which must be "stored" (a suppressed duplicate is confirmed stored too).
fn send(broker: &BrokerProcess, queue: &str, producer: &str, seqs: std::ops::Range<u64>, keyed: bool) {
    let connection = client(broker);
    let publisher = connection.publisher().unwrap();
    let count = seqs.end - seqs.start;
    for seq in seqs {
        publisher.publish("", message(queue, producer, seq, keyed)).unwrap();
    }
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!((summary.stored, summary.rejected, summary.unroutable), (count, 0, 0), "{summary:?}");
    connection.close().unwrap();
}

/// Receives and acks `count` messages of `queue`; returns their bodies, sorted.
fn receive(broker: &BrokerProcess, queue: &str, count: usize) -> Vec<String> {
    let connection = client(broker);
    let mut consumer = connection.subscribe(queue, 100).unwrap();
    let mut bodies = Vec::new();
    for _ in 0..count {
        let delivery = consumer.recv_timeout(MESSAGE_WAIT).unwrap().expect("a delivery");
        bodies.push(String::from_utf8(delivery.message.body.to_vec()).unwrap());
        consumer.ack(delivery.tag).unwrap();
    }
    consumer.flush().unwrap();
    consumer.cancel().unwrap();
    connection.close().unwrap();
    bodies.sort();
    bodies
}

/// The bodies `<producer>/<seq>` for `seqs`, sorted as `receive` sorts.
fn bodies(producer: &str, seqs: std::ops::Range<u64>) -> Vec<String> {
    let mut out: Vec<String> = seqs.map(|seq| format!("{producer}/{seq}")).collect();
    out.sort();
    out
}

#[test]
fn re_sends_on_a_new_connection_are_confirmed_and_stored_once() {
    // Goal: a producer that reconnects and re-sends what it already sent gets every confirm, and
    // the queue holds one copy of each message; another producer's equal sequence numbers and
    // messages without the header are stored. Method: a standalone broker of 2 shards; 100 keyed
    // messages, then on a new connection 50..110 again; a second producer 0..10; 5 unkeyed twice.
    let broker = BrokerProcess::start(&["--shards", "2"]);
    client(&broker).declare_queue("orders", QueueOptions::default(), &[]).unwrap();
    send(&broker, "orders", "producer-a", 0..100, true);
    send(&broker, "orders", "producer-a", 50..110, true);
    wait_depth(&broker, "orders", 110);
    send(&broker, "orders", "producer-b", 0..10, true);
    send(&broker, "orders", "plain", 0..5, false);
    send(&broker, "orders", "plain", 0..5, false);
    wait_depth(&broker, "orders", 130);
    let mut expected = [bodies("producer-a", 0..110), bodies("producer-b", 0..10), bodies("plain", 0..5)].concat();
    expected.extend(bodies("plain", 0..5));
    expected.sort();
    assert_eq!(receive(&broker, "orders", 130), expected);
    // Consumed and acked, the keys are still remembered: a late re-send is not stored.
    send(&broker, "orders", "producer-a", 100..110, true);
    let info = queue_info(&broker, "orders").unwrap();
    assert_eq!((info.depth, info.enqueued), (0, 130), "{info:?}");
}

#[test]
fn a_window_of_zero_stores_every_re_send() {
    // Goal: `--dedup-window 0` turns suppression off end to end.
    let broker = BrokerProcess::start(&["--shards", "1", "--dedup-window", "0"]);
    client(&broker).declare_queue("orders", QueueOptions::default(), &[]).unwrap();
    send(&broker, "orders", "producer-a", 0..20, true);
    send(&broker, "orders", "producer-a", 0..20, true);
    wait_depth(&broker, "orders", 40);
}

#[test]
fn re_sends_to_a_new_primary_after_a_failover_are_not_stored_twice() {
    // Goal: the backups learn the keys with the messages, so the promoted backup suppresses a
    // producer's re-sends of what it got by replication (consumed ones too), and stores the rest.
    // Method: 3 brokers, ha-replicate all; 100 keyed messages sent with confirms (so every ready
    // backup holds them), 20 consumed on the primary; kill -9 the primary, promote broker 1;
    // re-send 0..100 and send 100..110 to it; it holds 90 messages, each once, and so does the
    // remaining backup once it follows the new primary.
    let mut brokers = {
        let options =
            ["--link-maintenance-interval", "0.1", "--link-heartbeat-interval", "0.2", "--ha-replicate", "all"];
        let brokers = start_cluster(&options);
        promote(&brokers[0]);
        for backup in &brokers[1..] {
            wait_state(backup, "ready");
        }
        brokers
    };
    client(&brokers[0]).declare_queue("orders", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "orders", "producer-a", 0..100, true);
    assert_eq!(receive(&brokers[0], "orders", 20).len(), 20);
    for backup in &brokers[1..] {
        wait_depth(backup, "orders", 80);
    }
    brokers[0].kill();
    promote(&brokers[1]);
    send(&brokers[1], "orders", "producer-a", 0..110, true);
    wait_depth(&brokers[1], "orders", 90);
    wait_state(&brokers[2], "ready");
    wait_depth(&brokers[2], "orders", 90);
    // Each of 20..110 once (0..20 were consumed before the failover).
    let mut seqs: Vec<u64> = receive(&brokers[1], "orders", 90)
        .iter()
        .map(|body| body.rsplit_once('/').unwrap().1.parse().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (20..110).collect::<Vec<_>>());
}

#[test]
fn the_clients_producer_id_stamp_is_understood() {
    // Goal: the Rust client's `producer_id` (which stamps `x-ringmq-dedup` = `<id>/<seq>`) and the
    // broker agree on the convention. Method: two connections with the same producer id publish
    // the same count of messages, numbered alike from the start: the second set is suppressed
    // (which is also why a producer that restarts its numbering must take a new id).
    let broker = BrokerProcess::start(&["--shards", "2"]);
    client(&broker).declare_queue("stamped", QueueOptions::default(), &[]).unwrap();
    for _ in 0..2 {
        let options = ConnectOptions { producer_id: Some("client-x".into()), ..ConnectOptions::default() };
        let connection = blocking::Connection::connect(broker.addr().as_str(), options).unwrap();
        let publisher = connection.publisher().unwrap();
        for seq in 0..10 {
            publisher.publish("", message("stamped", "unstamped", seq, false)).unwrap();
        }
        let summary = publisher.wait_for_confirms().unwrap();
        assert_eq!(summary.stored, 10, "{summary:?}");
        connection.close().unwrap();
    }
    let info = queue_info(&broker, "stamped").unwrap();
    assert_eq!((info.depth, info.enqueued), (10, 10), "{info:?}");
}
