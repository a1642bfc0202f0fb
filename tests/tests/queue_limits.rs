//! Queue limits and queue management against a real broker: `max-count` and `max-bytes` refuse
//! publishes with a reason naming the limit (through the client and through `ringmq send`), room
//! comes back once messages are acked, redeclares are checked, and purge, delete and list do what
//! they say.
//!
//! Every test runs a broker with two shards, so a queue and the connection publishing to it may
//! sit on different shards and a rejection may travel back across them.

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::blocking::{Connection, Consumer, Publisher};
use ringmq_client::{ConfirmSummary, ConnectOptions, ErrorCode, ExchangeKind, Message, QueueInfo, QueueOptions, Seq};
use ringmq_tests::{assert_failed, eventually, success, BrokerProcess};

/// Longest a test waits for one delivery or for queue counts to settle.
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn max_count_refuses_publishes_naming_the_limit_until_acks_free_room() {
    // Goal: a queue with max-count 2 stores two messages and rejects the third with QueueFull and
    // the reason "queue 'small' is full: max-count is 2, it holds 2"; a delivered but unacked
    // message still counts; once it is acked there is room for exactly one more.
    // Method: publish three, take one delivery without acking, publish again, ack, publish two.
    let (_broker, connection) = start();
    let publisher = connection.publisher().unwrap();
    let full = "queue 'small' is full: max-count is 2, it holds 2";
    connection.declare_queue("small", limits(Some(2), None), &[]).unwrap();

    // Three publishes: two stored, seq 2 rejected with the reason.
    let summary = publish(&publisher, "", "small", &["a", "b", "c"]);
    assert_rejected(&summary, (2, 0, 1), (Seq(2), Seq(2)), ErrorCode::QueueFull, full);
    assert_counts(&connection, "small", (2, 0));

    // One delivery, not acked yet: the queue still holds two, so the next publish is rejected.
    let mut consumer = connection.subscribe("small", 1).unwrap();
    let first = receive(&mut consumer);
    assert_eq!(first.1, "a");
    let summary = publish(&publisher, "", "small", &["d"]);
    assert_rejected(&summary, (0, 0, 1), (Seq(3), Seq(3)), ErrorCode::QueueFull, full);

    // Ack it; once the broker counts it gone, one publish fits and the next does not.
    consumer.ack(first.0).unwrap();
    consumer.flush().unwrap();
    eventually("the ack of 'a' is counted", WAIT, || {
        let info = info(&connection, "small");
        if info.dequeued == 1 {
            Ok(())
        } else {
            Err(info)
        }
    });
    let summary = publish(&publisher, "", "small", &["e", "f"]);
    assert_rejected(&summary, (1, 0, 1), (Seq(5), Seq(5)), ErrorCode::QueueFull, full);

    // What was stored arrives in order: b, then e.
    let second = receive(&mut consumer);
    consumer.ack(second.0).unwrap();
    let third = receive(&mut consumer);
    consumer.ack(third.0).unwrap();
    assert_eq!((second.1.as_str(), third.1.as_str()), ("b", "e"));
    consumer.cancel().unwrap();
    wait_until_empty(&connection, "small");
}

#[test]
fn max_bytes_refuses_a_message_that_would_not_fit_until_acks_free_room() {
    // Goal: max-bytes counts body bytes: a message that would take the queue past the limit is
    // rejected with the reason naming the limit, what is held and the message's size; one that
    // fills it exactly is stored; acking frees its bytes.
    // Method: max-bytes 10; publish 11, 5, 6, 5 and 1 bytes, consume one, publish 5 again.
    let (_broker, connection) = start();
    let publisher = connection.publisher().unwrap();
    connection.declare_queue("bytes", limits(None, Some(10)), &[]).unwrap();

    // A message larger than the whole limit never fits, even in an empty queue.
    let summary = publish(&publisher, "", "bytes", &["eleven-byte"]);
    let reason = "queue 'bytes' is full: max-bytes is 10, it holds 0 and the message has 11";
    assert_rejected(&summary, (0, 0, 1), (Seq(0), Seq(0)), ErrorCode::QueueFull, reason);

    // 5 bytes fit; 6 more would make 11.
    let summary = publish(&publisher, "", "bytes", &["12345", "123456"]);
    let reason = "queue 'bytes' is full: max-bytes is 10, it holds 5 and the message has 6";
    assert_rejected(&summary, (1, 0, 1), (Seq(2), Seq(2)), ErrorCode::QueueFull, reason);

    // 5 more fill it exactly; then not one byte more.
    let summary = publish(&publisher, "", "bytes", &["abcde", "x"]);
    let reason = "queue 'bytes' is full: max-bytes is 10, it holds 10 and the message has 1";
    assert_rejected(&summary, (1, 0, 1), (Seq(4), Seq(4)), ErrorCode::QueueFull, reason);
    assert_eq!((info(&connection, "bytes").depth, info(&connection, "bytes").bytes), (2, 10));

    // Consume and ack the first: its 5 bytes are free again.
    let mut consumer = connection.subscribe("bytes", 1).unwrap();
    let (tag, body) = receive(&mut consumer);
    assert_eq!(body, "12345");
    consumer.ack(tag).unwrap();
    consumer.cancel().unwrap();
    eventually("the ack frees 5 bytes", WAIT, || {
        let info = info(&connection, "bytes");
        if info.bytes == 5 && info.unacked == 0 {
            Ok(())
        } else {
            Err(info)
        }
    });
    let summary = publish(&publisher, "", "bytes", &["fghij"]);
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (1, 0, 0), "{summary:?}");
    assert_eq!(info(&connection, "bytes").bytes, 10);
}

#[test]
fn publish_to_a_full_queue_through_fanout_is_rejected_but_stored_on_the_others() {
    // Goal: a publish routed to several queues is confirmed Rejected, with the full queue's
    // reason, when one of them refuses it, while the queues with room keep their copy.
    // Method: a fanout to a max-count 1 queue and an unbounded one; publish two messages.
    let (_broker, connection) = start();
    let publisher = connection.publisher().unwrap();
    connection.declare_queue("tiny", limits(Some(1), None), &[]).unwrap();
    connection.declare_queue("roomy", QueueOptions::default(), &[]).unwrap();
    connection.declare_exchange("both", ExchangeKind::Fanout).unwrap();
    connection.bind("both", "tiny", "").unwrap();
    connection.bind("both", "roomy", "").unwrap();

    // The first fits both; the second only roomy, and is confirmed rejected.
    let summary = publish(&publisher, "both", "", &["one", "two"]);
    let reason = "queue 'tiny' is full: max-count is 1, it holds 1";
    assert_rejected(&summary, (1, 0, 1), (Seq(1), Seq(1)), ErrorCode::QueueFull, reason);
    assert_counts(&connection, "tiny", (1, 0));
    assert_counts(&connection, "roomy", (2, 0));
}

#[test]
fn ringmq_send_to_a_full_queue_exits_1_with_the_brokers_reason() {
    // Goal: from the shell, `ringmq queue add --max-count` sets the limit and `ringmq send` to a
    // full queue reports the counts, prints the broker's reason and exits 1; after `ringmq
    // receive` (which acks) there is room again and `send` exits 0.
    // Method: the commands a user would type, with their exact output checked.
    let (broker, _connection) = start();

    // Declare with a limit of 2.
    let output = broker.cli(&["queue", "add", "small", "--max-count", "2"]);
    assert_eq!(success(&output), "queue 'small' declared\n");

    // Send three: two stored, one rejected, exit status 1, the reason on stderr.
    let output = broker.cli(&["send", "-k", "small", "a", "b", "c"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("sent 3 messages: 2 stored, 0 unroutable, 1 rejected ("), "{stdout}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "ringmq send: rejected from seq 2: queue 'small' is full: max-count is 2, it holds 2\n"
    );

    // Receive (and ack) both; then one more send fits and exits 0.
    let output = broker.cli(&["receive", "small", "--count", "2"]);
    assert_eq!(success(&output), "a\nb\n");
    let output = broker.cli(&["send", "-k", "small", "c"]);
    assert!(success(&output).starts_with("sent 1 messages: 1 stored, 0 unroutable, 0 rejected ("), "{output:?}");

    // With a max-bytes limit the reason names that limit.
    assert_eq!(
        success(&broker.cli(&["queue", "add", "three-bytes", "--max-bytes", "3"])),
        "queue 'three-bytes' declared\n"
    );
    let output = broker.cli(&["send", "-k", "three-bytes", "abcd"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "ringmq send: rejected from seq 0: queue 'three-bytes' is full: max-bytes is 3, it holds 0 and the message has 4\n"
    );
}

#[test]
fn redeclare_with_other_options_fails_naming_both_and_same_options_is_idempotent() {
    // Goal: declaring an existing queue with the same options succeeds and changes nothing;
    // with other options it fails with PreconditionFailed naming the existing and the asked-for
    // options, through the client and through `ringmq queue add`; a passive declare only checks.
    // Method: declare, publish one message, redeclare in several ways, check the message stayed.
    let (broker, connection) = start();
    let publisher = connection.publisher().unwrap();
    connection.declare_queue("limited", limits(Some(2), None), &[]).unwrap();
    publish(&publisher, "", "limited", &["kept"]);

    // Same options: fine, and the message is still there.
    connection.declare_queue("limited", limits(Some(2), None), &[]).unwrap();
    assert_counts(&connection, "limited", (1, 0));

    // Another max-count: refused, naming both.
    let error = connection.declare_queue("limited", limits(Some(3), None), &[]).unwrap_err();
    assert_failed(
        &error,
        ErrorCode::PreconditionFailed,
        "queue 'limited' exists with exclusive=false auto-delete=false max-count=2 max-bytes=unlimited; \
         declared with exclusive=false auto-delete=false max-count=3 max-bytes=unlimited",
    );
    // No limits at all is different options too.
    let error = connection.declare_queue("limited", QueueOptions::default(), &[]).unwrap_err();
    assert_failed(
        &error,
        ErrorCode::PreconditionFailed,
        "declared with exclusive=false auto-delete=false max-count=unlimited",
    );

    // Passive: an existing queue passes whatever the options; a missing one is NotFound.
    connection.declare_queue("limited", QueueOptions { passive: true, ..QueueOptions::default() }, &[]).unwrap();
    let error = connection
        .declare_queue("missing", QueueOptions { passive: true, ..QueueOptions::default() }, &[])
        .unwrap_err();
    assert_failed(&error, ErrorCode::NotFound, "no queue 'missing'");
    assert!(connection.list_queues().unwrap().iter().all(|q| q.name != "missing"));

    // The same through the CLI: same options exit 0, other options exit 1 naming both.
    assert_eq!(success(&broker.cli(&["queue", "add", "limited", "--max-count", "2"])), "queue 'limited' declared\n");
    let output = broker.cli(&["queue", "add", "limited", "--max-bytes", "100"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PreconditionFailed"), "{stderr}");
    assert!(
        stderr.contains("exists with exclusive=false auto-delete=false max-count=2 max-bytes=unlimited"),
        "{stderr}"
    );
    assert!(
        stderr.contains("declared with exclusive=false auto-delete=false max-count=unlimited max-bytes=100"),
        "{stderr}"
    );

    // After all that, the queue still has its one message and its limit of 2.
    assert_counts(&connection, "limited", (1, 0));
    let summary = publish(&publisher, "", "limited", &["second", "third"]);
    assert_eq!((summary.stored, summary.rejected), (1, 1), "{summary:?}");
}

#[test]
fn purge_drops_ready_messages_and_delete_removes_the_queue_and_cancels_consumers() {
    // Goal: purge drops the ready messages (not the unacked one) and counts them dequeued;
    // delete removes the queue, cancels its consumer with a reason, and makes its name
    // unroutable; both fail with NotFound for a queue that does not exist, also from the CLI.
    // Method: five messages, one delivered and held unacked, purge, then delete.
    let (broker, connection) = start();
    let publisher = connection.publisher().unwrap();
    connection.declare_queue("work", QueueOptions::default(), &[]).unwrap();
    publish(&publisher, "", "work", &["1", "2", "3", "4", "5"]);

    // Hold one delivery unacked.
    let consumer_connection = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
    let mut consumer = consumer_connection.subscribe("work", 1).unwrap();
    let (_tag, body) = receive(&mut consumer);
    assert_eq!(body, "1");
    eventually("one delivery unacked", WAIT, || {
        let info = info(&connection, "work");
        if info.unacked == 1 {
            Ok(())
        } else {
            Err(info)
        }
    });

    // Purge: the four ready ones go, the unacked one stays.
    connection.purge_queue("work").unwrap();
    let after = info(&connection, "work");
    assert_eq!((after.depth, after.unacked, after.bytes, after.enqueued, after.dequeued), (0, 1, 1, 5, 4), "{after:?}");

    // CLI purge of the now empty queue works too; of a missing one fails naming it.
    assert_eq!(success(&broker.cli(&["queue", "purge", "work"])), "queue 'work' purged\n");
    let output = broker.cli(&["queue", "purge", "nope"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("NotFound: no queue 'nope'"), "{output:?}");

    // Delete: the consumer is told why, the queue is gone, its name routes nowhere.
    connection.delete_queue("work").unwrap();
    let ended = consumer.recv_timeout(WAIT).unwrap();
    assert!(ended.is_none(), "no delivery after the delete: {ended:?}");
    assert_eq!(consumer.cancel_reason(), Some("cancelled by the broker: queue 'work' was deleted"));
    assert!(connection.list_queues().unwrap().iter().all(|q| q.name != "work"));
    let summary = publish(&publisher, "", "work", &["after"]);
    assert_eq!((summary.stored, summary.unroutable), (0, 1), "{summary:?}");

    // Deleting again fails, from the client and from the CLI.
    let error = connection.delete_queue("work").unwrap_err();
    assert_failed(&error, ErrorCode::NotFound, "queue 'work' does not exist");
    let output = broker.cli(&["queue", "del", "work"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("queue 'work' does not exist"), "{output:?}");

    // CLI add and del round trip.
    assert_eq!(success(&broker.cli(&["queue", "add", "short-lived"])), "queue 'short-lived' declared\n");
    assert_eq!(success(&broker.cli(&["queue", "del", "short-lived"])), "queue 'short-lived' deleted\n");
    assert!(connection.list_queues().unwrap().is_empty());
}

#[test]
fn queue_list_reports_depth_bytes_unacked_consumers_and_totals() {
    // Goal: `list_queues` and `ringmq queue list` report, per queue, the ready messages, the
    // body bytes held, the unacked deliveries, the consumers and the totals ever enqueued and
    // dequeued, in name order.
    // Method: two queues; three messages in one, one delivery acked and one held; compare
    // the client's numbers and the CLI's table.
    let (broker, connection) = start();
    let publisher = connection.publisher().unwrap();
    connection.declare_queue("listed-b", QueueOptions::default(), &[]).unwrap();
    connection.declare_queue("listed-a", QueueOptions::default(), &[]).unwrap();
    publish(&publisher, "", "listed-a", &["aaaa", "bbbbbb", "cc"]);

    // Consume with prefetch 1 and ack the first: the broker then delivers the second, which
    // stays unacked, and the third waits for credit; nothing moves after that.
    let mut consumer = connection.subscribe("listed-a", 1).unwrap();
    let (first, _) = receive(&mut consumer);
    consumer.ack(first).unwrap();
    consumer.flush().unwrap();
    let expected_a =
        QueueInfo { name: "listed-a".into(), depth: 1, bytes: 8, unacked: 1, consumers: 1, enqueued: 3, dequeued: 1 };
    let expected_b =
        QueueInfo { name: "listed-b".into(), depth: 0, bytes: 0, unacked: 0, consumers: 0, enqueued: 0, dequeued: 0 };
    let listed = eventually("the ack is counted and the second delivered", WAIT, || {
        let listed = connection.list_queues().unwrap();
        if listed.first().is_some_and(|a| a.dequeued == 1 && a.unacked == 1) {
            Ok(listed)
        } else {
            Err(listed)
        }
    });
    assert_eq!(listed, vec![expected_a, expected_b]);

    // The CLI shows the same numbers under its header.
    let output = broker.cli(&["queue", "list"]);
    let table = success(&output);
    let rows: Vec<Vec<&str>> = table.lines().map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        vec![
            vec!["queue", "depth", "bytes", "unacked", "consumers", "enqueued", "dequeued"],
            vec!["listed-a", "1", "8", "1", "1", "3", "1"],
            vec!["listed-b", "0", "0", "0", "0", "0", "0"],
        ]
    );
}

// ----- helpers -----

/// Starts a two-shard broker and connects to it.
fn start() -> (BrokerProcess, Connection) {
    let broker = BrokerProcess::start(&["--shards", "2", "--pin-cores", "false"]);
    let connection = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
    (broker, connection)
}

/// Queue options with these limits.
fn limits(max_count: Option<u64>, max_bytes: Option<u64>) -> QueueOptions {
    QueueOptions { max_count, max_bytes, ..QueueOptions::default() }
}

/// Publishes `bodies` to `exchange` with routing key `key`, and waits for their confirms.
fn publish(publisher: &Publisher, exchange: &str, key: &str, bodies: &[&str]) -> ConfirmSummary {
    for body in bodies {
        let message = Message {
            routing_key: Bytes::copy_from_slice(key.as_bytes()),
            body: Bytes::copy_from_slice(body.as_bytes()),
            ..Message::default()
        };
        publisher.publish(exchange, message).unwrap();
    }
    publisher.wait_for_confirms().unwrap()
}

/// Asserts the (stored, unroutable, rejected) counts and that the first rejection covers
/// `seqs` with `code` and exactly `reason`.
fn assert_rejected(summary: &ConfirmSummary, counts: (u64, u64, u64), seqs: (Seq, Seq), code: ErrorCode, reason: &str) {
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), counts, "{summary:?}");
    let rejection = summary.first_rejection.as_ref().expect("a rejection is reported");
    assert_eq!((rejection.first, rejection.last), seqs, "{rejection:?}");
    assert_eq!(rejection.code, code, "{rejection:?}");
    assert_eq!(rejection.reason, reason);
}

/// The next delivery's tag and body, within `WAIT`.
fn receive(consumer: &mut Consumer) -> (ringmq_client::Tag, String) {
    let delivery = consumer.recv_timeout(WAIT).unwrap().expect("the subscription ended");
    (delivery.tag, String::from_utf8(delivery.message.body.to_vec()).unwrap())
}

/// Queue `name` as `list_queues` reports it.
fn info(connection: &Connection, name: &str) -> QueueInfo {
    let queues = connection.list_queues().unwrap();
    queues.iter().find(|q| q.name == name).cloned().unwrap_or_else(|| panic!("queue {name} not listed in {queues:?}"))
}

/// Asserts queue `name`'s (depth, unacked).
fn assert_counts(connection: &Connection, name: &str, counts: (u64, u64)) {
    let info = info(connection, name);
    assert_eq!((info.depth, info.unacked), counts, "{info:?}");
}

/// Waits until queue `name` has nothing ready and nothing unacked.
fn wait_until_empty(connection: &Connection, name: &str) {
    eventually("queue empty and acked", WAIT, || {
        let info = info(connection, name);
        if info.depth == 0 && info.unacked == 0 {
            Ok(())
        } else {
            Err(info)
        }
    });
}
