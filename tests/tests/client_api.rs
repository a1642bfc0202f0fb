//! The Rust client against a real `ringmq broker` process: management, publish with confirms,
//! consume with acks, from plain threads (blocking API) and from tokio tasks, and redelivery of
//! what a closed connection left unsettled.
//!
//! Each test starts its own broker on a free port (`BrokerProcess`), so tests run in parallel and
//! a failure leaves no process behind. Build the broker first: `cargo build -p ringmq`.

use std::thread;
use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{
    blocking, ClientError, ConnectOptions, Connection, ErrorCode, ExchangeKind, Message, QueueInfo, QueueOptions,
};
use ringmq_tests::{eventually, eventually_async, BrokerProcess};

/// Longest a test waits for one delivery or for queue counts to settle.
const WAIT: Duration = Duration::from_secs(20);

/// Message number `index`, routed by `key`; its body is the number in decimal.
fn numbered(key: &str, index: u64) -> Message {
    Message {
        routing_key: Bytes::copy_from_slice(key.as_bytes()),
        body: Bytes::from(index.to_string()),
        ..Message::default()
    }
}

fn number_of(message: &Message) -> u64 {
    std::str::from_utf8(&message.body).unwrap().parse().unwrap()
}

fn queue<'a>(queues: &'a [QueueInfo], name: &str) -> &'a QueueInfo {
    queues.iter().find(|q| q.name == name).unwrap_or_else(|| panic!("queue {name} not listed in {queues:?}"))
}

/// `Ok` when queue `name` is empty and has nothing unacked; otherwise its counts.
fn drained(queues: Vec<QueueInfo>, name: &str) -> Result<QueueInfo, QueueInfo> {
    let info = queue(&queues, name).clone();
    if info.depth == 0 && info.unacked == 0 {
        Ok(info)
    } else {
        Err(info)
    }
}

#[test]
fn blocking_clients_on_plain_threads_publish_confirm_consume_and_ack() {
    // Goal: the blocking API moves 10,000 messages end to end from plain threads, in order, each
    // confirmed stored and each acked once.
    // Method: one producer thread and one consumer thread, each with its own connection; a third
    // connection declares the queue and checks the counts at the end.
    const TOTAL: u64 = 10_000;
    let broker = BrokerProcess::start(&[]);
    let addr = broker.addr();
    let admin = blocking::Connection::connect(addr.as_str(), ConnectOptions::default()).unwrap();
    admin.declare_queue("blocking-q", QueueOptions::default(), &[]).unwrap();

    // Producer: publishes, then waits for every confirm.
    let producer = thread::spawn({
        let addr = addr.clone();
        move || {
            let connection = blocking::Connection::connect(addr.as_str(), ConnectOptions::default()).unwrap();
            let publisher = connection.publisher().unwrap();
            for index in 0..TOTAL {
                assert_eq!(publisher.publish("", numbered("blocking-q", index)).unwrap().0, index);
            }
            let summary = publisher.wait_for_confirms().unwrap();
            connection.close().unwrap();
            summary
        }
    });
    // Consumer: receives in order, acks each, then cancels.
    let consumer = thread::spawn({
        let addr = addr.clone();
        move || {
            let connection = blocking::Connection::connect(addr.as_str(), ConnectOptions::default()).unwrap();
            let mut consumer = connection.subscribe("blocking-q", 1000).unwrap();
            for index in 0..TOTAL {
                let delivery = consumer.recv_timeout(WAIT).unwrap().expect("subscription ended early");
                assert_eq!(number_of(&delivery.message), index);
                assert!(!delivery.redelivered);
                consumer.ack(delivery.tag).unwrap();
            }
            consumer.cancel().unwrap();
            connection.close().unwrap();
        }
    });
    let summary = producer.join().unwrap();
    consumer.join().unwrap();
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (TOTAL, 0, 0));
    // Every message was acked: nothing ready, nothing unacked.
    let info =
        eventually("blocking-q drained", WAIT, || admin.list_queues().map(|q| drained(q, "blocking-q")).unwrap());
    assert_eq!(info.enqueued, TOTAL);
    assert_eq!(info.dequeued, TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_clients_publish_through_an_exchange_consume_and_ack() {
    // Goal: the async API end to end through a direct exchange: stored and unroutable confirms
    // are told apart, per-seq confirms come back in order, deliveries come in order and acks
    // empty the queue.
    // Method: a producer task and a consumer task on separate connections.
    const TOTAL: u64 = 10_000;
    let broker = BrokerProcess::start(&[]);
    let admin = Connection::connect(broker.addr(), ConnectOptions::default()).await.unwrap();
    admin.declare_queue("async-q", QueueOptions::default(), &[]).await.unwrap();
    admin.declare_exchange("async-x", ExchangeKind::Direct).await.unwrap();
    admin.bind("async-x", "async-q", "k").await.unwrap();

    let consumer_connection = Connection::connect(broker.addr(), ConnectOptions::default()).await.unwrap();
    let mut consumer = consumer_connection.subscribe("async-q", 500).await.unwrap();
    let consuming = tokio::spawn(async move {
        for index in 0..TOTAL {
            let delivery =
                tokio::time::timeout(WAIT, consumer.recv()).await.expect("no delivery in time").unwrap().unwrap();
            assert_eq!(number_of(&delivery.message), index);
            consumer.ack(delivery.tag).unwrap();
        }
        consumer.cancel().await.unwrap();
        consumer_connection.close().await.unwrap();
    });

    let producer_connection = Connection::connect(broker.addr(), ConnectOptions::default()).await.unwrap();
    let publisher = producer_connection.publisher().unwrap();
    for index in 0..TOTAL {
        publisher.publish("async-x", numbered("k", index)).await.unwrap();
    }
    // One message no binding matches.
    let lost = publisher.publish("async-x", numbered("nowhere", 0)).await.unwrap();
    // Confirm ranges come back in order and cover every seq once.
    let mut next = 0;
    while next <= lost.0 {
        let range = tokio::time::timeout(WAIT, publisher.next_confirm()).await.expect("no confirm in time").unwrap();
        let range = range.expect("the connection is open");
        assert_eq!(range.first.0, next);
        next = range.last.0 + 1;
    }
    assert_eq!(next, TOTAL + 1);
    let summary = publisher.wait_for_confirms().await.unwrap();
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (TOTAL, 1, 0));
    assert_eq!(lost.0, TOTAL);
    consuming.await.unwrap();

    let info = eventually_async("async-q drained", WAIT, || async {
        Ok::<_, QueueInfo>(admin.list_queues().await.unwrap()).and_then(|q| drained(q, "async-q"))
    })
    .await;
    assert_eq!(info.enqueued, TOTAL);
    producer_connection.close().await.unwrap();
    admin.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_deliveries_are_redelivered_flagged_after_the_consumer_connection_closes() {
    // Goal: at-least-once: what a consumer received but did not settle goes back to the queue
    // when its connection closes, and comes again marked redelivered; what it acked does not.
    // Method: 10 messages; the first consumer takes all 10, acks 3, closes its connection; a
    // second consumer must get exactly the other 7, flagged, in order.
    let broker = BrokerProcess::start(&[]);
    let admin = Connection::connect(broker.addr(), ConnectOptions::default()).await.unwrap();
    admin.declare_queue("redeliver-q", QueueOptions::default(), &[]).await.unwrap();
    let publisher = admin.publisher().unwrap();
    for index in 0..10 {
        publisher.publish("", numbered("redeliver-q", index)).await.unwrap();
    }
    assert_eq!(publisher.wait_for_confirms().await.unwrap().stored, 10);

    // First consumer: receives all, acks 0..=2, leaves 3..=9 unsettled, closes the connection.
    let first = Connection::connect(broker.addr(), ConnectOptions::default()).await.unwrap();
    let mut consumer = first.subscribe("redeliver-q", 100).await.unwrap();
    for index in 0..10 {
        let delivery =
            tokio::time::timeout(WAIT, consumer.recv()).await.expect("no delivery in time").unwrap().unwrap();
        assert_eq!(number_of(&delivery.message), index);
        assert!(!delivery.redelivered);
        if index < 3 {
            consumer.ack(delivery.tag).unwrap();
        }
    }
    consumer.flush().unwrap();
    first.close().await.unwrap();
    // After close the consumer reports the end, not an error.
    assert_eq!(consumer.recv().await.unwrap(), None);

    // Second consumer: gets exactly 3..=9, redelivered, with fresh tags from 0.
    let second = Connection::connect(broker.addr(), ConnectOptions::default()).await.unwrap();
    let mut consumer = second.subscribe("redeliver-q", 100).await.unwrap();
    for (tag, index) in (3..10).enumerate() {
        let delivery =
            tokio::time::timeout(WAIT, consumer.recv()).await.expect("no redelivery in time").unwrap().unwrap();
        assert_eq!(number_of(&delivery.message), index);
        assert!(delivery.redelivered, "message {index} not flagged redelivered");
        assert_eq!(delivery.tag.0, tag as u64);
        consumer.ack(delivery.tag).unwrap();
    }
    consumer.flush().unwrap();
    let info = eventually_async("redeliver-q drained", WAIT, || async {
        Ok::<_, QueueInfo>(admin.list_queues().await.unwrap()).and_then(|q| drained(q, "redeliver-q"))
    })
    .await;
    assert_eq!(info.enqueued, 10);
    // Nothing more is delivered.
    assert!(tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await.is_err());
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_requests_round_trip_and_refusals_keep_the_brokers_text() {
    // Goal: declares, lists, binds, deletes work; a refused request returns the broker's code
    // and words and leaves the connection usable.
    let broker = BrokerProcess::start(&[]);
    let connection = Connection::connect(broker.addr(), ConnectOptions::default()).await.unwrap();
    let limited = QueueOptions { max_count: Some(5), ..QueueOptions::default() };
    connection.declare_queue("m-q", limited.clone(), &[]).await.unwrap();
    // The same declare again is fine; a different one is a precondition failure.
    connection.declare_queue("m-q", limited, &[]).await.unwrap();
    let other = QueueOptions { max_count: Some(6), ..QueueOptions::default() };
    let err = connection.declare_queue("m-q", other, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed), "{err}");
    assert!(matches!(&err, ClientError::Failed { message, .. } if !message.is_empty()), "{err:?}");
    // Unknown names are NotFound.
    let err = connection.delete_queue("no-such-queue").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    // Exchanges and bindings.
    connection.declare_exchange("m-x", ExchangeKind::Fanout).await.unwrap();
    connection.bind("m-x", "m-q", "").await.unwrap();
    let exchanges = connection.list_exchanges().await.unwrap();
    let exchange = exchanges.iter().find(|e| e.name == "m-x").expect("m-x listed");
    assert_eq!((exchange.kind, exchange.bindings), (ExchangeKind::Fanout, 1));
    connection.unbind("m-x", "m-q", "").await.unwrap();
    connection.delete_exchange("m-x").await.unwrap();
    connection.purge_queue("m-q").await.unwrap();
    connection.delete_queue("m-q").await.unwrap();
    assert!(connection.list_queues().await.unwrap().iter().all(|q| q.name != "m-q"));
    connection.close().await.unwrap();
}
