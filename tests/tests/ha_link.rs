//! The backup-to-primary link with real broker processes: three cluster brokers on loopback with
//! `--link-maintenance-interval 0.1 --link-heartbeat-interval 0.2`.
//!
//! What is checked: after one broker is promoted, the two backups find it by trying each address
//! of `ha-brokers-url` (the other backup refuses them) and connect; when the primary is stopped
//! (SIGSTOP), each backup declares its link dead within about twice the heartbeat interval and
//! goes back to trying addresses, and reconnects once the primary continues (SIGCONT); when a
//! backup is stopped, the primary drops its link the same way; a standalone broker and a backup
//! refuse a backup link with `NotPrimary`. Each broker has two shards, and each shard its own link.
//!
//! Method: `BrokerProcess` for the brokers, `run_cli` for `ringmq ha promote`. The link reports
//! itself in the broker's log (`link: connected to ADDR`, `link: lost ADDR: ...`,
//! `link: trying ADDR (N attempts)`), which the tests poll with deadlines (`eventually`), never
//! with fixed sleeps. A stopped broker is continued by a guard on drop, so a failing test leaves
//! no stopped process behind. Build the broker first: `cargo build -p ringmq`.

use std::time::{Duration, Instant};

use ringmq_core::frame::{ErrorCode, Frame, PREAMBLE_FLAG_BACKUP};
use ringmq_tests::{eventually, frames_until_closed, free_port, run_cli, start_cluster, BrokerProcess, Stopped};

/// `link-heartbeat-interval` of the test brokers.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Longest wait for a link to be established (a few rounds of 0.1 s dials, plus startup noise).
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Longest a silent peer may take to be detected: 2x the heartbeat interval, plus a margin for
/// timers on a loaded machine (tests run in parallel) and the 10 ms polling of the log.
const DETECT_WAIT: Duration = Duration::from_millis(2 * 200 + 1600);

/// Three cluster brokers that know each other's addresses.
struct Cluster {
    /// The brokers, in the order of the URL.
    brokers: Vec<BrokerProcess>,
}

impl Cluster {
    /// Starts three cluster brokers that know each other's addresses.
    fn start() -> Cluster {
        Cluster { brokers: start_cluster(&["--link-maintenance-interval", "0.1", "--link-heartbeat-interval", "0.2"]) }
    }

    /// Promotes broker `index` (the others are all joining) and waits until both other brokers
    /// report their link to it connected.
    fn promote_and_link(&self, index: usize) {
        let addr = self.brokers[index].addr();
        let output = run_cli(&["ha", "promote", "-b", &addr, "--cluster-manager"]);
        assert!(output.status.success(), "promote: {}", String::from_utf8_lossy(&output.stderr));
        for (other, broker) in self.brokers.iter().enumerate().filter(|&(i, _)| i != index) {
            let what = format!("broker {other} links to the primary {addr}");
            eventually(&what, CONNECT_WAIT, || count_or_log(broker, &connected_line(&addr), 1));
        }
    }
}

/// `link: connected to ADDR`, as the backup logs it.
fn connected_line(addr: &str) -> String {
    format!("link: connected to {addr}")
}

/// `Ok(())` when `broker`'s log holds `line` at least `count` times, else its log.
fn count_or_log(broker: &BrokerProcess, line: &str, count: usize) -> Result<(), String> {
    let output = broker.output();
    if output.matches(line).count() >= count {
        Ok(())
    } else {
        Err(output)
    }
}

#[test]
fn backups_find_the_primary_detect_it_stopped_and_reconnect() {
    // Goal: item 2 and 3 of the link: the backups link to the promoted broker, notice within
    // about 2x the heartbeat interval that it stopped, try addresses again, and reconnect when it
    // continues. Method: promote broker 0; SIGSTOP it; poll the backups' logs; SIGCONT it.
    let cluster = Cluster::start();
    let primary = cluster.brokers[0].addr();
    // Both backups link to the primary (the other backup refuses them on the way).
    cluster.promote_and_link(0);
    // The primary stops answering: each backup declares its link dead in about 2x 0.2 s.
    let stopped = Stopped::stop(&cluster.brokers[0]);
    let start = Instant::now();
    let lost = format!("link: lost {primary}: nothing received for");
    for backup in &cluster.brokers[1..] {
        eventually("a backup detects the stopped primary", DETECT_WAIT, || count_or_log(backup, &lost, 1));
    }
    let detected_after = start.elapsed();
    assert!(detected_after >= HEARTBEAT, "detected after {detected_after:?}, before one heartbeat interval");
    // Each backup goes back to trying the addresses.
    for backup in &cluster.brokers[1..] {
        eventually("a backup tries addresses again", CONNECT_WAIT, || {
            let output = backup.output();
            let after_loss = &output[output.find(&lost).expect("loss logged")..];
            if after_loss.contains("link: trying ") {
                Ok(())
            } else {
                Err(output)
            }
        });
    }
    // The primary continues: both backups connect again (two shards, two lines per connection;
    // a third line is a shard's reconnection).
    stopped.resume();
    for backup in &cluster.brokers[1..] {
        eventually("a backup reconnects", CONNECT_WAIT, || count_or_log(backup, &connected_line(&primary), 3));
    }
}

#[test]
fn primary_drops_the_link_of_a_stopped_backup() {
    // Goal: the primary's end of the link also watches heartbeats: a backup that stops answering
    // is dropped within about 2x the interval. Method: promote broker 0, SIGSTOP broker 2, poll
    // the primary's log; SIGCONT it and see it reconnect.
    let cluster = Cluster::start();
    let primary = cluster.brokers[0].addr();
    cluster.promote_and_link(0);
    let stopped = Stopped::stop(&cluster.brokers[2]);
    // The primary's heartbeat task closes the silent link, and the link is closed.
    eventually("the primary drops the stopped backup", DETECT_WAIT, || {
        count_or_log(&cluster.brokers[0], "link peer silent for 2x link-heartbeat-interval", 1)
    });
    eventually("the dropped link is closed", DETECT_WAIT, || count_or_log(&cluster.brokers[0], "backup link lost", 1));
    // The backup continues: it finds its link dead too and reconnects (each of its two shards
    // logs its own link: two lines per connection).
    stopped.resume();
    eventually("the continued backup reconnects", CONNECT_WAIT, || {
        count_or_log(&cluster.brokers[2], &connected_line(&primary), 3)
    });
}

#[test]
fn backups_and_standalone_brokers_refuse_a_backup_link() {
    // Goal: admission: only a primary accepts a backup link. Method: open one by hand, with a raw
    // socket, to a standalone broker and to a joining backup.
    let standalone = BrokerProcess::start(&[]);
    let backup =
        BrokerProcess::start(&["--ha-cluster", "true", "--ha-brokers-url", &format!("127.0.0.1:{}", free_port())]);
    for (broker, state) in [(&standalone, "standalone"), (&backup, "joining")] {
        let frames = frames_until_closed(&broker.addr(), PREAMBLE_FLAG_BACKUP, CONNECT_WAIT);
        let [Frame::Error { code, message }] = frames.as_slice() else { panic!("{state}: got {frames:?}") };
        assert_eq!(*code, ErrorCode::NotPrimary, "{message}");
        assert!(message.contains(&format!("HA state {state}")), "{message}");
    }
}
