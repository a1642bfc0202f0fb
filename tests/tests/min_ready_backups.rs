//! `ha-min-ready-backups` and `ha-min-ready-timeout` with real broker processes: three cluster
//! brokers on loopback, two shards each, `--ha-replicate all`, link intervals of 0.1 s
//! (maintenance) and 0.2 s (heartbeat), at least one ready backup required.
//!
//! What is checked: a primary whose two backups were killed confirms nothing it stores (it would
//! be the only broker holding it); once a backup is restarted and ready again, the held publishes
//! are confirmed, and later ones too; with `ha-min-ready-timeout`, a held publish is rejected
//! after it, with `NotEnoughBackups` and a reason naming the options, the backups ready and the
//! number required.
//!
//! Method: `ready_cluster` for the brokers, the blocking client for publishes, whose confirms are
//! awaited on a thread so that the test can check that none came within a bound. Build the broker
//! first: `cargo build -p ringmq`.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ringmq_client::ConfirmSummary;
use ringmq_core::frame::{ErrorCode, QueueOptions};
use ringmq_tests::ha::{client, numbered, ready_cluster, wait_state};
use ringmq_tests::BrokerProcess;

/// How long a held publish must stay unconfirmed: past the loss of the backups' links (2x the
/// heartbeat), and past their detached hold (`ha-backup-timeout` 0.5 s plus a heartbeat), twice.
const HELD_AT_LEAST: Duration = Duration::from_secs(3);
/// Longest wait for confirms that are due.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// Publishes `count` messages to `queue` on `broker` from a thread; the receiver gets their
/// confirms' summary once every one came.
fn publish_on_a_thread(broker: &BrokerProcess, queue: &str, count: u64) -> mpsc::Receiver<ConfirmSummary> {
    let connection = client(broker);
    let queue = queue.to_owned();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let publisher = connection.publisher().unwrap();
        for index in 0..count {
            publisher.publish("", numbered(&queue, index)).unwrap();
        }
        let summary = publisher.wait_for_confirms().unwrap();
        // The test may have ended (failed) already; nobody is left to tell then.
        let _ = sender.send(summary);
        connection.close().unwrap();
    });
    receiver
}

/// The options of every test's cluster, with `extra`.
fn cluster(extra: &[&str]) -> Vec<BrokerProcess> {
    let mut options = vec!["--ha-replicate", "all", "--ha-backup-timeout", "0.5", "--ha-min-ready-backups", "1"];
    options.extend_from_slice(extra);
    ready_cluster(&options)
}

#[test]
fn a_primary_without_ready_backups_confirms_nothing_until_one_is_ready_again() {
    // Goal: with ha-min-ready-backups 1, an isolated primary (both backups killed) does not
    // confirm what it alone holds; a backup restarted and ready again releases those confirms.
    // Method: 10 publishes confirmed with both backups; kill -9 both; 20 publishes: no confirm
    // within HELD_AT_LEAST; restart backup 1; once it is ready, all 20 are confirmed stored, and
    // so are 5 more.
    let mut brokers = cluster(&[]);
    client(&brokers[0]).declare_queue("q", QueueOptions::default(), &[]).unwrap();
    let before = publish_on_a_thread(&brokers[0], "q", 10).recv_timeout(CONFIRM_WAIT).unwrap();
    assert_eq!((before.stored, before.rejected), (10, 0), "{before:?}");
    // Both backups die: no broker but the primary holds what comes next.
    brokers[1].kill();
    brokers[2].kill();
    let held = publish_on_a_thread(&brokers[0], "q", 20);
    match held.recv_timeout(HELD_AT_LEAST) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("confirmed with no ready backup: {other:?}\n{}", brokers[0].output()),
    }
    // Backup 1 comes back: once ready, it holds them all, and the confirms go out.
    brokers[1].restart().unwrap();
    wait_state(&brokers[1], "ready");
    let summary = held.recv_timeout(CONFIRM_WAIT).unwrap();
    assert_eq!((summary.stored, summary.rejected), (20, 0), "{summary:?}");
    let after = publish_on_a_thread(&brokers[0], "q", 5).recv_timeout(CONFIRM_WAIT).unwrap();
    assert_eq!((after.stored, after.rejected), (5, 0), "{after:?}");
}

#[test]
fn a_publish_held_past_the_timeout_is_rejected_with_the_reason() {
    // Goal: with ha-min-ready-timeout, a publish held for want of ready backups is rejected
    // after it, with NotEnoughBackups and a reason naming ha-min-ready-backups, the backups ready
    // (0) and the number required (1), and ha-min-ready-timeout; a ready backup ends that.
    // Method: kill -9 both backups; 5 publishes: all rejected; restart backup 2; once it is
    // ready, 5 more are confirmed stored.
    let mut brokers = cluster(&["--ha-min-ready-timeout", "1"]);
    client(&brokers[0]).declare_queue("q", QueueOptions::default(), &[]).unwrap();
    brokers[1].kill();
    brokers[2].kill();
    let summary = publish_on_a_thread(&brokers[0], "q", 5).recv_timeout(CONFIRM_WAIT).unwrap();
    assert_eq!((summary.stored, summary.rejected), (0, 5), "{summary:?}");
    let rejection = summary.first_rejection.unwrap();
    assert_eq!(rejection.code, ErrorCode::NotEnoughBackups);
    assert!(
        rejection.reason.starts_with("not confirmed: 0 backups ready, ha-min-ready-backups requires 1, for longer than ha-min-ready-timeout (1s)"),
        "{}",
        rejection.reason
    );
    brokers[2].restart().unwrap();
    wait_state(&brokers[2], "ready");
    let after = publish_on_a_thread(&brokers[0], "q", 5).recv_timeout(CONFIRM_WAIT).unwrap();
    assert_eq!((after.stored, after.rejected), (5, 0), "{after:?}");
}
