//! Exchange and binding replication with real broker processes: three cluster brokers on loopback,
//! each with two shards, link intervals of 0.1 s (maintenance) and 0.2 s (heartbeat).
//!
//! What is checked: exchanges reach ready backups at their level (the `qpid.replicate` or
//! `replicate` declare argument, else `ha-replicate`), bindings only when both ends are
//! replicated, never the built-in exchanges' bindings; unbinds and deletes follow; a backup
//! restarted after changes (kill, restart) and a backup that was stopped and dropped and then
//! resynchronised both hold exactly the primary's replicated configuration; after kill -9 of the
//! primary and the promotion of a backup, a publish to a replicated exchange routes through the
//! replicated binding to the replicated queue, and the other backup follows, holding the `all`
//! queue's messages and none of the `configuration` queue's (each replica keeps its level).
//!
//! Method: `start_cluster` for the brokers; the blocking client for queues, bindings, data and
//! admin reads (`--ha-admin` connections, served by backups); a raw connection for exchange
//! declares with arguments, which the client API does not take. A backup's configuration is read
//! as its exchange list (name, kind, binding count) and compared with what the rules give; every
//! wait polls with a deadline (`eventually`), no fixed sleeps. Build the broker first:
//! `cargo build -p ringmq`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ringmq_core::frame::{ExchangeKind, Frame, Message, Preamble, QueueOptions, PROTOCOL_VERSION};
use ringmq_core::ids::RequestId;
use ringmq_core::wire::codec;
use ringmq_tests::ha::{
    admin, client, plain_log, promote, queue_info, ready_cluster, wait_depth, wait_state, SETTLE_WAIT,
};
use ringmq_tests::{eventually, BrokerProcess, Stopped};

/// Longest wait for one message or one reply.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// An exchange as a broker lists it: name, kind, number of bindings.
type ExchangeRow = (String, ExchangeKind, u32);

/// Declares exchange `name` on `broker` with declare `arguments`, over a raw connection (the
/// client API declares exchanges without arguments); the broker must answer `Ok`.
fn declare_exchange(broker: &BrokerProcess, name: &str, kind: ExchangeKind, arguments: &[(&str, &str)]) {
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut out = BytesMut::new();
    codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags: 0 }, &mut out);
    let arguments = arguments.iter().map(|&(n, v)| (n.to_owned(), v.to_owned())).collect();
    let request = RequestId(1);
    codec::encode(&Frame::ExchangeDeclare { request, name: name.into(), kind, passive: false, arguments }, &mut out);
    stream.write_all(&out).unwrap();
    let mut received = BytesMut::new();
    let mut frames = Vec::new();
    let deadline = std::time::Instant::now() + MESSAGE_WAIT;
    while frames.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no reply to the declare of {name}: {frames:?}");
        while let Some(frame) = codec::decode(&mut received, 1 << 24).expect("the broker's frames decode") {
            frames.push(frame);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("reading the declare's reply: {error}"),
        }
    }
    assert!(matches!(frames.as_slice(), [Frame::Hello { .. }, Frame::Ok { request: RequestId(1) }]), "{frames:?}");
}

/// Every exchange `broker` lists but the default one, by name.
fn exchanges(broker: &BrokerProcess) -> Vec<ExchangeRow> {
    admin(broker)
        .list_exchanges()
        .unwrap()
        .into_iter()
        .filter(|info| !info.name.is_empty())
        .map(|info| (info.name, info.kind, info.bindings))
        .collect()
}

/// The exchanges of `broker` that are not built in.
fn declared_exchanges(broker: &BrokerProcess) -> Vec<ExchangeRow> {
    exchanges(broker).into_iter().filter(|(name, ..)| !name.starts_with("amq.")).collect()
}

/// Waits until `broker` lists exactly `expected` as its declared exchanges, and its built-in
/// exchanges have no bindings (bindings to built-ins are never replicated).
fn wait_exchanges(broker: &BrokerProcess, expected: &[(&str, ExchangeKind, u32)]) {
    let expected: Vec<ExchangeRow> = expected.iter().map(|&(name, kind, n)| (name.to_owned(), kind, n)).collect();
    eventually(&format!("exchanges of {}", broker.addr()), SETTLE_WAIT, || {
        let listed = exchanges(broker);
        let builtins_bound: Vec<_> = listed.iter().filter(|(name, _, n)| name.starts_with("amq.") && *n > 0).collect();
        let declared: Vec<ExchangeRow> =
            listed.iter().filter(|(name, ..)| !name.starts_with("amq.")).cloned().collect();
        if declared == expected && builtins_bound.is_empty() {
            Ok(())
        } else {
            Err(listed)
        }
    });
}

/// Whether `broker` has queue `queue`.
fn has_queue(broker: &BrokerProcess, queue: &str) -> bool {
    admin(broker).list_queues().unwrap().iter().any(|q| q.name == queue)
}

/// A message with routing key `key` and body `body`.
fn keyed(key: &str, body: &str) -> Message {
    Message {
        routing_key: Bytes::from(key.to_owned()),
        message_id: Bytes::new(),
        headers: Vec::new(),
        body: Bytes::from(body.to_owned()),
    }
}

/// Publishes one message to `exchange` with `key` and returns (stored, unroutable, rejected).
fn publish(broker: &BrokerProcess, exchange: &str, key: &str, body: &str) -> (u64, u64, u64) {
    let connection = client(broker);
    let publisher = connection.publisher().unwrap();
    publisher.publish(exchange, keyed(key, body)).unwrap();
    let summary = publisher.wait_for_confirms().unwrap();
    connection.close().unwrap();
    (summary.stored, summary.unroutable, summary.rejected)
}

/// Receives and acks one message from `queue`; returns its body.
fn receive_one(broker: &BrokerProcess, queue: &str) -> String {
    let connection = client(broker);
    let mut consumer = connection.subscribe(queue, 10).unwrap();
    let delivery = consumer.recv_timeout(MESSAGE_WAIT).unwrap().expect("a delivery");
    consumer.ack(delivery.tag).unwrap();
    consumer.cancel().unwrap();
    connection.close().unwrap();
    String::from_utf8(delivery.message.body.to_vec()).unwrap()
}

#[test]
fn exchanges_and_bindings_reach_ready_backups_at_their_levels() {
    // Goal: on ready backups (steady state), an exchange exists iff its level is configuration or
    // all (argument in either spelling, else ha-replicate, here none); a binding iff both ends
    // are replicated; bindings to built-in exchanges never; unbinds, exchange deletes and queue
    // deletes follow.
    let brokers = ready_cluster(&["--ha-replicate", "none"]);
    let primary = client(&brokers[0]);
    primary.declare_queue("q-all", QueueOptions::default(), &[("qpid.replicate", "all")]).unwrap();
    primary.declare_queue("q-conf", QueueOptions::default(), &[("replicate", "configuration")]).unwrap();
    primary.declare_queue("q-none", QueueOptions::default(), &[]).unwrap();
    declare_exchange(&brokers[0], "x-all", ExchangeKind::Topic, &[("qpid.replicate", "all")]);
    declare_exchange(&brokers[0], "x-conf", ExchangeKind::Direct, &[("replicate", "configuration")]);
    declare_exchange(&brokers[0], "x-none", ExchangeKind::Fanout, &[("qpid.replicate", "none")]);
    declare_exchange(&brokers[0], "x-default", ExchangeKind::Fanout, &[]);
    primary.bind("x-all", "q-all", "a.#").unwrap();
    primary.bind("x-all", "q-conf", "b.*").unwrap();
    primary.bind("x-all", "q-none", "c").unwrap();
    primary.bind("x-conf", "q-all", "k").unwrap();
    primary.bind("x-none", "q-all", "").unwrap();
    primary.bind("x-default", "q-conf", "").unwrap();
    primary.bind("amq.direct", "q-all", "k").unwrap();
    primary.bind("amq.topic", "q-conf", "#").unwrap();
    // The primary has everything.
    assert_eq!(declared_exchanges(&brokers[0]).len(), 4);
    for backup in &brokers[1..] {
        wait_exchanges(backup, &[("x-all", ExchangeKind::Topic, 2), ("x-conf", ExchangeKind::Direct, 1)]);
        assert!(has_queue(backup, "q-all") && has_queue(backup, "q-conf") && !has_queue(backup, "q-none"));
    }
    // A backup refuses clients' configuration changes.
    let refused = admin(&brokers[1]).bind("x-all", "q-all", "z");
    assert!(refused.is_err(), "a backup took a client's bind");

    primary.unbind("x-all", "q-conf", "b.*").unwrap();
    primary.delete_exchange("x-conf").unwrap();
    for backup in &brokers[1..] {
        wait_exchanges(backup, &[("x-all", ExchangeKind::Topic, 1)]);
    }
    primary.bind("x-all", "q-conf", "again").unwrap();
    primary.delete_queue("q-all").unwrap();
    for backup in &brokers[1..] {
        wait_exchanges(backup, &[("x-all", ExchangeKind::Topic, 1)]);
        eventually("q-all deleted on the backup", SETTLE_WAIT, || match has_queue(backup, "q-all") {
            false => Ok(()),
            true => Err("still there"),
        });
    }
    primary.delete_exchange("x-all").unwrap();
    for backup in &brokers[1..] {
        wait_exchanges(backup, &[]);
    }
}

#[test]
fn a_restarted_backup_catches_up_with_exactly_the_primarys_configuration() {
    // Goal: a backup killed and restarted after exchanges and bindings were made, changed and
    // deleted downloads the primary's replicated configuration (catch-up) and nothing else.
    let mut brokers = ready_cluster(&["--ha-replicate", "all"]);
    let primary = client(&brokers[0]);
    for queue in ["q1", "q2"] {
        primary.declare_queue(queue, QueueOptions::default(), &[]).unwrap();
    }
    primary.declare_exchange("x1", ExchangeKind::Direct).unwrap();
    primary.declare_exchange("x2", ExchangeKind::Topic).unwrap();
    primary.bind("x1", "q1", "k").unwrap();
    primary.bind("x2", "q2", "#").unwrap();
    wait_exchanges(&brokers[2], &[("x1", ExchangeKind::Direct, 1), ("x2", ExchangeKind::Topic, 1)]);
    brokers[2].kill();
    primary.delete_exchange("x2").unwrap();
    primary.unbind("x1", "q1", "k").unwrap();
    primary.bind("x1", "q2", "new").unwrap();
    primary.bind("x1", "q1", "other").unwrap();
    primary.declare_exchange("x3", ExchangeKind::Fanout).unwrap();
    primary.bind("x3", "q1", "").unwrap();
    declare_exchange(&brokers[0], "x-local", ExchangeKind::Fanout, &[("replicate", "none")]);
    primary.bind("x-local", "q1", "").unwrap();
    brokers[2].restart().expect("restart on the same port");
    wait_state(&brokers[2], "ready");
    let expected = [("x1", ExchangeKind::Direct, 2), ("x3", ExchangeKind::Fanout, 1)];
    wait_exchanges(&brokers[2], &expected);
    wait_exchanges(&brokers[1], &expected);
}

#[test]
fn a_dropped_backup_resynchronises_to_exactly_the_primarys_configuration() {
    // Goal: a backup that keeps its state across a lost link (stopped until the primary dropped
    // it, then continued) loses the exchanges and bindings deleted meanwhile and gains the new
    // ones: the resync leaves exactly the primary's replicated configuration.
    let brokers = ready_cluster(&["--ha-replicate", "all", "--link-heartbeat-interval", "0.3"]);
    let primary = client(&brokers[0]);
    primary.declare_queue("q", QueueOptions::default(), &[]).unwrap();
    primary.declare_exchange("kept", ExchangeKind::Direct).unwrap();
    primary.declare_exchange("gone", ExchangeKind::Topic).unwrap();
    primary.bind("kept", "q", "old").unwrap();
    primary.bind("gone", "q", "#").unwrap();
    wait_exchanges(&brokers[2], &[("gone", ExchangeKind::Topic, 1), ("kept", ExchangeKind::Direct, 1)]);
    let stopped = Stopped::stop(&brokers[2]);
    let lost = format!("backup={}", brokers[2].addr());
    eventually("the primary drops the stopped backup's shard-0 link", SETTLE_WAIT, || {
        let log = plain_log(&brokers[0]);
        // Shard 0's link carries the configuration: it must be the one dropped.
        let shard_0 =
            |line: &str| line.contains("backup link lost") && line.contains(&lost) && line.contains("shard=0");
        match log.lines().any(shard_0) {
            true => Ok(()),
            false => Err("not yet"),
        }
    });
    primary.delete_exchange("gone").unwrap();
    primary.unbind("kept", "q", "old").unwrap();
    primary.bind("kept", "q", "new-1").unwrap();
    primary.bind("kept", "q", "new-2").unwrap();
    primary.declare_exchange("fresh", ExchangeKind::Fanout).unwrap();
    stopped.resume();
    wait_exchanges(&brokers[2], &[("fresh", ExchangeKind::Fanout, 0), ("kept", ExchangeKind::Direct, 2)]);
    wait_state(&brokers[2], "ready");
    wait_exchanges(&brokers[2], &[("fresh", ExchangeKind::Fanout, 0), ("kept", ExchangeKind::Direct, 2)]);
}

#[test]
fn after_failover_a_replicated_binding_routes_on_the_new_primary() {
    // Goal: after kill -9 of the primary and the promotion of a ready backup, a message published
    // to a replicated exchange on the new primary routes through the replicated binding to the
    // replicated queue (and a key no binding matches is unroutable); the other backup follows the
    // new primary and holds the same configuration, then new bindings made there; the new primary
    // replicates each queue at the old primary's level: the `configuration` queue's messages are
    // not on its backup, the `all` queue's are.
    let mut brokers = ready_cluster(&["--ha-replicate", "all"]);
    let primary = client(&brokers[0]);
    primary.declare_queue("orders", QueueOptions::default(), &[]).unwrap();
    primary.declare_queue("audit", QueueOptions::default(), &[("replicate", "configuration")]).unwrap();
    primary.declare_exchange("events", ExchangeKind::Topic).unwrap();
    primary.bind("events", "orders", "eu.#").unwrap();
    primary.bind("events", "audit", "#").unwrap();
    for backup in &brokers[1..] {
        wait_exchanges(backup, &[("events", ExchangeKind::Topic, 2)]);
    }
    brokers[0].kill();
    promote(&brokers[1]);
    assert_eq!(publish(&brokers[1], "events", "eu.fr", "bonjour"), (1, 0, 0));
    assert_eq!(receive_one(&brokers[1], "orders"), "bonjour");
    assert_eq!(receive_one(&brokers[1], "audit"), "bonjour");
    assert_eq!(publish(&brokers[1], "events", "nowhere", "x"), (1, 0, 0), "audit binds #");
    let new_primary = client(&brokers[1]);
    new_primary.unbind("events", "audit", "#").unwrap();
    assert_eq!(publish(&brokers[1], "events", "us.ny", "hello"), (0, 1, 0));
    // The remaining backup follows the new primary, which replicates what it was replicated.
    wait_state(&brokers[2], "ready");
    new_primary.bind("events", "orders", "us.*").unwrap();
    wait_exchanges(&brokers[2], &[("events", ExchangeKind::Topic, 2)]);
    // ...at the levels the old primary gave: the `configuration` queue's messages (the one
    // published before the backup rejoined, one published after) stay on the new primary,
    // the `all` queue's reach the backup. A message to an `all` queue is confirmed only once the
    // ready backup holds it, so the backup is read right after the confirms.
    assert_eq!(publish(&brokers[1], "", "audit", "kept-here"), (1, 0, 0));
    assert_eq!(publish(&brokers[1], "events", "us.ca", "replicated"), (1, 0, 0));
    let on_primary = queue_info(&brokers[1], "audit").expect("audit on the new primary");
    assert_eq!(on_primary.depth, 2, "{on_primary:?}");
    wait_depth(&brokers[2], "orders", 1);
    let on_backup = queue_info(&brokers[2], "audit").expect("the configuration queue on the backup");
    assert_eq!((on_backup.depth, on_backup.enqueued), (0, 0), "{on_backup:?}");
}
