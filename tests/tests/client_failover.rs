//! Client failover with real broker processes: a numbered sender and receiver ride through kill -9
//! of the primary and the promotion of a backup; heartbeats detect a stopped (SIGSTOP) broker on
//! an open connection, on a new one, and while reconnecting; a consumer's deliveries from the lost
//! connection are redelivered and their old tags settle nothing.
//!
//! Method: three cluster brokers on loopback (`start_cluster`, link intervals 0.1 s and 0.2 s,
//! `--ha-replicate all`); the test acts as the cluster manager (`ringmq ha promote`). The CLI
//! tools run as processes (`ringmq send --numbered`, `ringmq receive --numbered`) in threads that
//! wait for them with a deadline; the client API runs in the test thread. `Stopped` holds a broker
//! with SIGSTOP. Every wait polls against a deadline; no fixed sleeps. Build the broker first:
//! `cargo build -p ringmq`.

use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq_client::{blocking, ClientError, ConnectOptions, Message, QueueOptions};
use ringmq_tests::ha::{promote, wait_state, SETTLE_WAIT};
use ringmq_tests::{eventually, run_cli_within, start_cluster, BrokerProcess, Stopped};

/// Longest a numbered sender or receiver may run in the failover test.
const TOOL_WAIT: Duration = Duration::from_secs(60);
/// The heartbeat interval of the detection tests.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Slack on top of twice the heartbeat interval for a detection (timers, a loaded machine).
const DETECTION_SLACK: Duration = Duration::from_millis(1500);

/// Starts a three-broker cluster, promotes broker 0 and waits until both others are ready.
fn ready_cluster() -> Vec<BrokerProcess> {
    let brokers = start_cluster(&[
        "--link-maintenance-interval",
        "0.1",
        "--link-heartbeat-interval",
        "0.2",
        "--ha-replicate",
        "all",
        "--ha-backup-timeout",
        "2s",
    ]);
    promote(&brokers[0]);
    for backup in &brokers[1..] {
        wait_state(backup, "ready");
    }
    brokers
}

/// The client URL of every broker of the cluster.
fn url(brokers: &[BrokerProcess]) -> String {
    brokers.iter().map(BrokerProcess::addr).collect::<Vec<_>>().join(",")
}

/// Runs `ringmq ARGS...` in a thread; the handle gives its exit status, stdout and stderr.
fn spawn_cli(args: Vec<String>) -> thread::JoinHandle<(bool, String, String)> {
    thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run_cli_within(&args, TOOL_WAIT).unwrap_or_else(|output| {
            panic!(
                "`ringmq {}` did not exit within {TOOL_WAIT:?}; stdout:\n{}\nstderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.success(), text(&output.stdout), text(&output.stderr))
    })
}

/// `queue` as an admin connection to `broker` lists it.
fn enqueued(broker: &BrokerProcess, queue: &str) -> Result<u64, String> {
    let options = ConnectOptions { admin: true, ..ConnectOptions::default() };
    let connection = blocking::Connection::connect(broker.addr().as_str(), options).map_err(|e| e.to_string())?;
    let queues = connection.list_queues().map_err(|e| e.to_string())?;
    queues.into_iter().find(|q| q.name == queue).map(|q| q.enqueued).ok_or_else(|| format!("no queue {queue}"))
}

/// The number in a message's body.
fn number(message: &Message) -> u64 {
    std::str::from_utf8(&message.body).unwrap().parse().unwrap()
}

/// A connection to the primary of `brokers` that reconnects, with heartbeats.
fn failover_client(brokers: &[BrokerProcess]) -> blocking::Connection {
    let options = ConnectOptions {
        reconnect: true,
        heartbeat_interval: Some(HEARTBEAT),
        reconnect_timeout: Some(Duration::from_secs(30)),
        ..ConnectOptions::default()
    };
    blocking::Connection::connect(url(brokers), options).unwrap()
}

#[test]
fn numbered_sender_and_receiver_lose_nothing_across_kill_and_promotion() {
    // Goal: the failover test: a sender continues across kill -9 of the primary and the
    // promotion of a backup, and the receiver sees every number (duplicates are allowed: a
    // re-sent publish the new primary already held, a redelivery of an unacked delivery).
    // Method: numbered send (3000 at 1000/s) and receive (3000 distinct) as processes with
    // --reconnect over the three addresses; once the primary has enqueued 500, kill -9 it and
    // promote broker 1 at once; both tools must end with every number confirmed and received.
    let mut brokers = ready_cluster();
    let primary = blocking::Connection::connect(brokers[0].addr().as_str(), ConnectOptions::default()).unwrap();
    primary.declare_queue("numbers", QueueOptions::default(), &[]).unwrap();
    primary.close().unwrap();
    let url = url(&brokers);
    let common = |tool: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = tool.iter().map(|s| s.to_string()).collect();
        args.extend(["-b", &url, "--reconnect", "--heartbeat", "0.2", "--reconnect-timeout", "30s"].map(String::from));
        args
    };
    let sender = spawn_cli(common(&[
        "send",
        "--numbered",
        "-k",
        "numbers",
        "--count",
        "3000",
        "--rate",
        "1000",
        "--producer-id",
        "failover-test",
    ]));
    let receiver = spawn_cli(common(&["receive", "--numbered", "numbers", "--count", "3000", "--timeout", "30s"]));
    eventually("the primary has enqueued 500", SETTLE_WAIT, || match enqueued(&brokers[0], "numbers") {
        Ok(count) if count >= 500 => Ok(()),
        other => Err(other),
    });
    brokers[0].kill();
    promote(&brokers[1]);
    let (sent_ok, sent_out, sent_err) = sender.join().unwrap();
    let (received_ok, received_out, received_err) = receiver.join().unwrap();
    assert!(sent_ok, "sender failed: {sent_out} {sent_err}");
    assert_eq!(sent_out.trim(), "sent 3000, confirmed 3000", "{sent_err}");
    assert!(received_ok, "receiver failed: {received_out} {received_err}");
    let line = received_out.trim();
    assert!(line.starts_with("received 3000 distinct, ") && line.contains(", 0 missing, "), "{line} {received_err}");
}

#[test]
fn a_consumer_gets_its_unacked_deliveries_again_and_old_tags_settle_nothing() {
    // Goal: after a failover the subscription is made again (same queue, same prefetch), the new
    // primary delivers again what was not acked, and acking a tag of the lost connection neither
    // fails nor settles a delivery of the new one.
    // Method: 10 messages; receive 3 without acking; kill -9 the primary, promote broker 1; the
    // new connection's deliveries include those 3 again, and every number arrives; the old tags
    // are acked (no-ops, counted as stale). (Whether the new primary flags them redelivered is
    // the broker's replication of delivery state, not checked here.)
    let mut brokers = ready_cluster();
    let connection = failover_client(&brokers);
    connection.declare_queue("work", QueueOptions::default(), &[]).unwrap();
    let publisher = connection.publisher().unwrap();
    for index in 0..10u64 {
        let message = Message {
            routing_key: Bytes::from_static(b"work"),
            body: Bytes::from(index.to_string()),
            ..Message::default()
        };
        publisher.publish("", message).unwrap();
    }
    assert_eq!(publisher.wait_for_confirms().unwrap().stored, 10);
    let mut consumer = connection.subscribe("work", 5).unwrap();
    let wait = Duration::from_secs(20);
    let first: Vec<_> = (0..3).map(|_| consumer.recv_timeout(wait).unwrap().expect("a delivery")).collect();
    brokers[0].kill();
    promote(&brokers[1]);
    // Deliveries of the lost connection that were already on their way may still come out
    // first; then the new primary delivers all 10 again (none was acked), the first 3 included.
    let first_numbers: Vec<u64> = first.iter().map(|d| number(&d.message)).collect();
    let mut numbers = Vec::new();
    let mut first_again = Vec::new();
    while numbers.len() < 10 || first_again.len() < first_numbers.len() {
        let delivery = consumer.recv_timeout(wait).unwrap().expect("a delivery");
        let number = number(&delivery.message);
        if first_numbers.contains(&number) && !first_again.contains(&number) {
            first_again.push(number);
        }
        if !numbers.contains(&number) {
            numbers.push(number);
        }
        consumer.ack(delivery.tag).unwrap();
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (0..10).collect::<Vec<_>>());
    let stale_before = connection.stats().settlements_stale;
    for delivery in &first {
        consumer.ack(delivery.tag).unwrap();
    }
    consumer.flush().unwrap();
    let stats = connection.stats();
    assert_eq!(stats.settlements_stale - stale_before, 3, "{stats:?}");
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(connection.peer(), brokers[1].addr());
}

#[test]
fn a_stopped_broker_is_detected_on_an_open_connection_within_twice_the_heartbeat() {
    // Goal: heartbeats are echoed (an idle connection stays up) and silence ends the connection
    // as dead after about twice the interval, as an error, never a hang.
    let broker = BrokerProcess::start(&[]);
    let options = ConnectOptions { heartbeat_interval: Some(HEARTBEAT), ..ConnectOptions::default() };
    let connection = blocking::Connection::connect(broker.addr().as_str(), options).unwrap();
    connection.declare_queue("idle", QueueOptions::default(), &[]).unwrap();
    let mut consumer = connection.subscribe("idle", 1).unwrap();
    // Idle for five intervals: the echoes keep it alive.
    match consumer.recv_timeout(HEARTBEAT * 5) {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("an idle connection with heartbeats must stay up; got {other:?}"),
    }
    let stopped = Stopped::stop(&broker);
    let started = Instant::now();
    let result = consumer.recv_timeout(Duration::from_secs(30));
    let elapsed = started.elapsed();
    match result {
        Err(ClientError::Silent { during, .. }) => assert_eq!(during, "the connection was open"),
        other => panic!("expected Silent, got {other:?}"),
    }
    assert!(elapsed <= HEARTBEAT * 2 + DETECTION_SLACK, "detected after {elapsed:?}");
    stopped.resume();
}

#[test]
fn connecting_to_a_stopped_broker_fails_within_twice_the_heartbeat() {
    // Goal: a broker that accepts TCP but never says Hello is an error on a new connection.
    let broker = BrokerProcess::start(&[]);
    let _stopped = Stopped::stop(&broker);
    let options = ConnectOptions { heartbeat_interval: Some(HEARTBEAT), ..ConnectOptions::default() };
    let started = Instant::now();
    let result = blocking::Connection::connect(broker.addr().as_str(), options);
    let elapsed = started.elapsed();
    match result {
        Err(ClientError::Silent { during, .. }) => assert_eq!(during, "the handshake"),
        other => panic!("expected Silent, got {other:?}"),
    }
    assert!(elapsed <= HEARTBEAT * 2 + DETECTION_SLACK, "failed after {elapsed:?}");
}

#[test]
fn reconnecting_only_to_stopped_brokers_gives_up_at_the_reconnect_timeout() {
    // Goal: while reconnecting, a stopped broker costs one silence each, and reconnect_timeout
    // bounds the whole outage: the caller gets ReconnectFailed, not a hang.
    let first = BrokerProcess::start(&[]);
    let second = BrokerProcess::start(&[]);
    let reconnect_timeout = Duration::from_secs(1);
    let options = ConnectOptions {
        heartbeat_interval: Some(HEARTBEAT),
        reconnect: true,
        reconnect_timeout: Some(reconnect_timeout),
        ..ConnectOptions::default()
    };
    let url = format!("{},{}", first.addr(), second.addr());
    let connection = blocking::Connection::connect(url.as_str(), options).unwrap();
    connection.declare_queue("q", QueueOptions::default(), &[]).unwrap();
    let mut consumer = connection.subscribe("q", 1).unwrap();
    let _stopped = [Stopped::stop(&first), Stopped::stop(&second)];
    let started = Instant::now();
    let result = consumer.recv_timeout(Duration::from_secs(30));
    let elapsed = started.elapsed();
    match result {
        Err(ClientError::ReconnectFailed { last, .. }) => {
            // The last attempt met a silence, possibly cut short by the deadline.
            assert!(last.contains("no frame from") || last.contains("no Hello"), "{last}")
        }
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    assert!(elapsed <= HEARTBEAT * 2 + reconnect_timeout + DETECTION_SLACK, "gave up after {elapsed:?}");
}
