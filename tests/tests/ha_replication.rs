//! Message replication with real broker processes: three cluster brokers on loopback, each with
//! two shards, `--ha-replicate all` unless a test says otherwise, and link intervals of 0.1 s
//! (maintenance) and 0.2 s (heartbeat).
//!
//! What is checked: backups become ready after the primary's catch-up; a sender of 1000 and a
//! receiver of 990 leave exactly the last 10 on every backup; after kill -9 of the primary and the
//! promotion of a ready backup, every confirmed message is on the new primary, in order, and the
//! other backup follows the new primary; a backup restarted after messages were sent downloads
//! them (catch-up) before it is ready; the levels `none`, `configuration` and `all` decide what a
//! backup has.
//!
//! Method: `start_cluster` for the brokers, the blocking client for data (publish with confirms,
//! consume with acks) and for admin connections (`--ha-admin`) that read a backup's queues and
//! state. Every wait polls with a deadline (`eventually`); no fixed sleeps. Build the broker
//! first: `cargo build -p ringmq`.

use std::time::Duration;

use ringmq_core::frame::{ErrorCode, Frame, Message, QueueOptions};
use ringmq_tests::ha::{
    client, numbered, plain_log, promote, promote_unchecked, queue_info, ready_cluster, state, wait_depth, wait_state,
    SETTLE_WAIT,
};
use ringmq_tests::{eventually, frames_until_closed, run_cli, BrokerProcess, Stopped};

/// Longest wait for one message or one confirm.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// The number in a message's body.
fn number_of(message: &Message) -> u64 {
    std::str::from_utf8(&message.body).unwrap().parse().unwrap()
}

/// Publishes messages `range` to queue `queue` through the default exchange and waits for every
/// confirm, which must be "stored".
fn send(broker: &BrokerProcess, queue: &str, range: std::ops::Range<u64>) {
    let connection = client(broker);
    let publisher = connection.publisher().unwrap();
    let count = range.end - range.start;
    for index in range {
        publisher.publish("", numbered(queue, index)).unwrap();
    }
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!((summary.stored, summary.rejected, summary.unroutable), (count, 0, 0), "{summary:?}");
    connection.close().unwrap();
}

/// Receives and acks `count` messages from `queue`; returns their numbers in arrival order.
fn receive(broker: &BrokerProcess, queue: &str, count: u64) -> Vec<u64> {
    let connection = client(broker);
    let mut consumer = connection.subscribe(queue, 100).unwrap();
    let mut numbers = Vec::new();
    for _ in 0..count {
        let delivery = consumer.recv_timeout(MESSAGE_WAIT).unwrap().expect("a delivery");
        numbers.push(number_of(&delivery.message));
        consumer.ack(delivery.tag).unwrap();
    }
    consumer.cancel().unwrap();
    connection.close().unwrap();
    numbers
}

#[test]
fn consumed_messages_leave_backups_and_the_rest_survive_a_failover() {
    // Goal: enqueues and dequeues reach every backup, in order, and a promoted backup serves
    // exactly what the old primary held, after kill -9 of the primary; the other backup follows
    // the new primary.
    // Method: 1000 sent with confirms, 990 received and acked on the primary; each backup's depth
    // must become 10; kill -9 the primary; promote broker 1; receive the 10 there.
    let mut brokers = ready_cluster(&["--ha-replicate", "all"]);
    client(&brokers[0]).declare_queue("orders", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "orders", 0..1000);
    assert_eq!(receive(&brokers[0], "orders", 990), (0..990).collect::<Vec<_>>());
    for backup in &brokers[1..] {
        wait_depth(backup, "orders", 10);
    }
    brokers[0].kill();
    promote(&brokers[1]);
    assert_eq!(receive(&brokers[1], "orders", 10), (990..1000).collect::<Vec<_>>());
    // The remaining backup links to the new primary, resynchronises and is ready again, holding
    // what the new primary holds: nothing, now.
    wait_state(&brokers[2], "ready");
    wait_depth(&brokers[2], "orders", 0);
    send(&brokers[1], "orders", 1000..1005);
    wait_depth(&brokers[2], "orders", 5);
    // The killed primary, restarted, does not become a second primary: it joins as a backup of the
    // new one and holds what that one holds.
    brokers[0].restart().expect("restart on the same port");
    wait_state(&brokers[0], "ready");
    wait_depth(&brokers[0], "orders", 5);
}

#[test]
fn a_restarted_backup_catches_up_before_it_is_ready() {
    // Goal: a backup that was down while messages were sent downloads them when it comes back,
    // and is ready only once it holds them; publishes confirmed meanwhile are not held by it.
    // Method: kill -9 backup 2, send 500, restart it on its port, wait ready, compare depths.
    let mut brokers = ready_cluster(&["--ha-replicate", "all"]);
    client(&brokers[0]).declare_queue("backlog", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "backlog", 0..100);
    wait_depth(&brokers[2], "backlog", 100);
    brokers[2].kill();
    send(&brokers[0], "backlog", 100..600);
    brokers[2].restart().expect("restart on the same port");
    wait_state(&brokers[2], "ready");
    wait_depth(&brokers[2], "backlog", 600);
    wait_depth(&brokers[1], "backlog", 600);
}

#[test]
fn replication_levels_decide_what_a_backup_holds() {
    // Goal: `none` queues are not on backups, `configuration` queues exist there without their
    // messages, `all` queues with them; the broker default (`ha-replicate configuration` here) is
    // overridden per queue by the `qpid.replicate` argument; a bad level is refused at declare.
    let brokers = ready_cluster(&["--ha-replicate", "configuration"]);
    let primary = client(&brokers[0]);
    primary.declare_queue("by-default", QueueOptions::default(), &[]).unwrap();
    primary.declare_queue("everything", QueueOptions::default(), &[("qpid.replicate", "all")]).unwrap();
    primary.declare_queue("local", QueueOptions::default(), &[("replicate", "none")]).unwrap();
    let refused = primary.declare_queue("bad", QueueOptions::default(), &[("qpid.replicate", "some")]);
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("none, configuration, all") && error.contains("some"), "{error}");
    for queue in ["by-default", "everything", "local"] {
        send(&brokers[0], queue, 0..7);
    }
    for backup in &brokers[1..] {
        wait_depth(backup, "everything", 7);
        wait_depth(backup, "by-default", 0);
        assert!(queue_info(backup, "local").is_none(), "a queue replicated at level none is on a backup");
        assert!(queue_info(backup, "bad").is_none());
    }
}

#[test]
fn a_stopped_backup_holds_confirms_until_it_can_no_longer_be_promoted() {
    // Goal: a confirm waits for every backup. A hung (SIGSTOPped) ready backup, the only one,
    // holds publishers past the loss of its links (2x link-heartbeat-interval): until
    // ha-backup-timeout plus a heartbeat later it could still be promoted as ready, so what is
    // confirmed must be on it. Then the held confirms are released. Continued, the backup finds
    // that its primary was silent too long, leaves ready, reconnects, catches up and is ready
    // again.
    // Method: kill backup 1, so backup 2 is the only ready backup; stop backup 2, publish 100; the
    // confirms must come only after the primary logged the loss of backup 2's links and the end
    // of its hold (there is no other ready backup to tell).
    let options = ["--ha-replicate", "all", "--link-heartbeat-interval", "0.25", "--ha-backup-timeout", "0.5"];
    let mut brokers = ready_cluster(&options);
    client(&brokers[0]).declare_queue("held", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "held", 0..10);
    brokers[1].kill();
    let name = brokers[2].addr();
    let released = |log: &str| {
        log.lines()
            .any(|line| line.contains("not ready again in time: no longer holding confirms") && line.contains(&name))
    };
    let stopped = Stopped::stop(&brokers[2]);
    let dropped = |log: &str| log.lines().any(|line| line.contains("backup link lost") && line.contains(&name));
    let detached = |log: &str| log.lines().any(|line| line.contains("ready backup detached") && line.contains(&name));
    assert!(!dropped(&plain_log(&brokers[0])), "backup 2 lost before it was stopped");
    let connection = client(&brokers[0]);
    let publisher = connection.publisher().unwrap();
    for index in 10..110 {
        publisher.publish("", numbered("held", index)).unwrap();
    }
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!(summary.stored, 100);
    let log = plain_log(&brokers[0]);
    assert!(dropped(&log) && detached(&log), "confirmed before the stopped backup was dropped:\n{log}");
    assert!(released(&log), "confirmed while the detached backup was still held for:\n{log}");
    // Backup 2 leaves ready once continued, then catches up.
    stopped.resume();
    wait_depth(&brokers[2], "held", 110);
    wait_state(&brokers[2], "ready");
    let log = plain_log(&brokers[2]);
    assert!(log.contains("for ha-backup-timeout: no longer ready"), "{log}");
}

#[test]
fn a_stopped_backup_is_dropped_once_the_other_ready_backup_knows_and_cannot_be_promoted() {
    // Goal (a hung backup does not stall publishers for ha-backup-timeout): with another ready
    // backup left, the primary stops holding confirms for a hung one as soon as that backup holds
    // a ready set without it (about 2x link-heartbeat-interval), long before ha-backup-timeout
    // (60 s here). What it then confirms is not on the hung backup, so a promotion check refuses
    // to promote it while it still says ready, naming the backup that knows; the other backup
    // is promoted and has everything.
    // Method: stop backup 2, publish 100: all confirmed, and the primary's log shows the release
    // by the other backup's ready set, not by the hold's end. Kill -9 the primary, continue
    // backup 2 (its lease has 60 s to run, so it is ready), `ha promote` it: refused, naming
    // backup 1; promote backup 1: it has all 110; backup 2 follows it and gets them too.
    let options = ["--ha-replicate", "all", "--link-heartbeat-interval", "0.25", "--ha-backup-timeout", "60"];
    let mut brokers = ready_cluster(&options);
    client(&brokers[0]).declare_queue("told", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "told", 0..10);
    let stopped = Stopped::stop(&brokers[2]);
    let name = brokers[2].addr();
    let connection = client(&brokers[0]);
    let publisher = connection.publisher().unwrap();
    for index in 10..110 {
        publisher.publish("", numbered("told", index)).unwrap();
    }
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!(summary.stored, 100);
    let log = plain_log(&brokers[0]);
    let told = log.lines().any(|line| {
        line.contains("every ready backup holds a ready set without these detached backups") && line.contains(&name)
    });
    assert!(told, "confirmed without the other backup holding a ready set without backup 2:\n{log}");
    assert!(!log.contains("not ready again in time"), "released by the hold's end:\n{log}");
    // The primary dies; backup 2 is continued and still says ready, but a newer set left it out.
    brokers[0].kill();
    stopped.resume();
    assert_eq!(state(&brokers[2]), "ready");
    let refused = brokers[2].cli(&["ha", "promote", "--cluster-manager"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    let expected = format!("which leaves {name} out: its primary confirmed messages without it");
    assert!(stderr.contains(&expected) && stderr.contains(&brokers[1].addr()), "{stderr}");
    promote(&brokers[1]);
    assert_eq!(receive(&brokers[1], "told", 110), (0..110).collect::<Vec<u64>>());
    wait_state(&brokers[2], "ready");
}

#[test]
fn a_paused_primary_that_comes_back_steps_down_and_follows_the_new_one() {
    // Goal: epochs fence a superseded primary: one that was stopped while another broker was
    // promoted stops serving clients when it continues, becomes a backup of the new primary and
    // resynchronises from it, so the two never diverge.
    // Method: SIGSTOP the primary, promote a ready backup (epoch 2), SIGCONT the old primary;
    // it must leave the primary states, refuse clients, and become ready with the new data.
    let brokers = ready_cluster(&["--ha-replicate", "all"]);
    client(&brokers[0]).declare_queue("fenced", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "fenced", 0..20);
    wait_depth(&brokers[1], "fenced", 20);
    let stopped = Stopped::stop(&brokers[0]);
    promote(&brokers[1]);
    send(&brokers[1], "fenced", 20..30);
    wait_state(&brokers[2], "ready");
    stopped.resume();
    wait_state(&brokers[0], "ready");
    wait_depth(&brokers[0], "fenced", 30);
    // It refuses clients, naming the primary it now follows (a client given only its address
    // moves on there at once).
    match frames_until_closed(&brokers[0].addr(), 0, SETTLE_WAIT).as_slice() {
        [Frame::Error { code: ErrorCode::NotPrimary, message }] => {
            assert!(message.contains(&format!("connect to the cluster at {}", brokers[1].addr())), "{message}");
        }
        other => panic!("the old primary did not refuse a client: {other:?}"),
    }
}

#[test]
fn a_new_primary_recovers_until_its_expected_backup_is_ready_again() {
    // Goal: recovering mode ends by reconnection: a promoted backup waits (recovering) for the
    // other backup that was ready under the old primary, and becomes active once that one caught
    // up with it, long before ha-backup-timeout (60 s here).
    let mut brokers = ready_cluster(&["--ha-replicate", "all", "--ha-backup-timeout", "60"]);
    client(&brokers[0]).declare_queue("recovered", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "recovered", 0..50);
    wait_depth(&brokers[2], "recovered", 50);
    brokers[0].kill();
    promote(&brokers[1]);
    wait_state(&brokers[2], "ready");
    wait_state(&brokers[1], "active");
    let log = plain_log(&brokers[1]);
    assert!(log.contains("recovering: waiting for the backups that were ready"), "{log}");
    assert!(log.contains("every expected backup is ready or timed out: active"), "{log}");
    assert!(!log.contains("ha-backup-timeout passed"), "{log}");
    assert_eq!(receive(&brokers[1], "recovered", 50), (0..50).collect::<Vec<_>>());
}

#[test]
fn a_new_primary_stops_waiting_for_a_dead_backup_after_ha_backup_timeout() {
    // Goal: recovering mode ends by timeout: a promoted backup holds confirms for the other
    // backup that was ready under the old primary; that backup is dead, so after
    // ha-backup-timeout the confirms are released and the primary becomes active. Clients are
    // served while it recovers.
    let mut brokers = ready_cluster(&["--ha-replicate", "all", "--ha-backup-timeout", "1"]);
    client(&brokers[0]).declare_queue("timed", QueueOptions::default(), &[]).unwrap();
    brokers[2].kill();
    brokers[0].kill();
    // `ringmq ha promote` would wait for backup 2, silent and in backup 1's ready set.
    promote_unchecked(&brokers[1]);
    let status = run_cli(&["ha", "status", "-b", &brokers[1].addr()]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "recovering");
    send(&brokers[1], "timed", 0..10);
    let log = plain_log(&brokers[1]);
    assert!(log.contains("ha-backup-timeout passed"), "confirmed while still waiting for the dead backup:\n{log}");
    wait_state(&brokers[1], "active");
}

/// The `catch-up:` lines the primary `broker` logged for `backup`'s links, as (sent, dequeued,
/// already held) per line.
fn catch_up_lines(broker: &BrokerProcess, backup: &BrokerProcess) -> Vec<(u64, u64, u64)> {
    let tag = format!("backup={}", backup.addr());
    let number_before = |line: &str, word: &str| -> u64 {
        let end = line.find(word).unwrap_or_else(|| panic!("no '{word}' in {line}"));
        line[..end].trim_end().rsplit(' ').next().unwrap().parse().unwrap()
    };
    plain_log(broker)
        .lines()
        .filter(|line| line.contains("catch-up:") && line.contains(&tag) && line.contains("already held"))
        .map(|line| {
            (
                number_before(line, " messages sent"),
                number_before(line, " dequeued"),
                number_before(line, " already held"),
            )
        })
        .collect()
}

#[test]
fn after_a_failover_the_surviving_backup_downloads_only_what_it_lacks() {
    // Goal: a backup that reconnects to a new primary keeps what it holds: the new primary sends
    // only the messages it lacks and drops those the new primary no longer holds, and the backup
    // ends with exactly the new primary's messages, in order.
    // Method: 200 sent and 50 received on the old primary; backup 2 is stopped (SIGSTOP), the
    // primary killed, backup 1 promoted (ha-backup-timeout 1 s: the stopped backup does not hold
    // confirms for long); on the new primary 20 more are received (dequeued) and 30 sent; then
    // backup 2 resumes and links to the new primary. The new primary's log must show the diff
    // (30 sent, 20 dequeued, 130 already held). Finally backup 2 is promoted in turn and must
    // deliver 70..230 in order.
    let mut brokers = ready_cluster(&["--ha-replicate", "all", "--ha-backup-timeout", "1"]);
    client(&brokers[0]).declare_queue("kept", QueueOptions::default(), &[]).unwrap();
    send(&brokers[0], "kept", 0..200);
    assert_eq!(receive(&brokers[0], "kept", 50), (0..50).collect::<Vec<_>>());
    for backup in &brokers[1..] {
        wait_depth(backup, "kept", 150);
    }
    let stopped = Stopped::stop(&brokers[2]);
    brokers[0].kill();
    // `ringmq ha promote` would wait for backup 2, silent and in backup 1's ready set.
    promote_unchecked(&brokers[1]);
    assert_eq!(receive(&brokers[1], "kept", 20), (50..70).collect::<Vec<_>>());
    send(&brokers[1], "kept", 200..230);
    stopped.resume();
    wait_state(&brokers[2], "ready");
    wait_depth(&brokers[2], "kept", 160);
    let lines = catch_up_lines(&brokers[1], &brokers[2]);
    assert!(lines.contains(&(30, 20, 130)), "expected a catch-up of 30 sent, 20 dequeued, 130 held: {lines:?}");
    assert!(lines.iter().all(|&(sent, _, _)| sent <= 30), "something was downloaded again: {lines:?}");
    let log = plain_log(&brokers[1]);
    assert!(!log.lines().any(|l| l.contains("full resync") && l.contains(&brokers[2].addr())), "{log}");
    // Backup 2 holds exactly the new primary's messages, in the primary's order.
    let tag = format!("backup={}", brokers[2].addr());
    eventually("the new primary marked backup 2 ready", SETTLE_WAIT, || {
        let log = plain_log(&brokers[1]);
        if log.lines().any(|l| l.contains("marked ready") && l.contains(&tag)) {
            Ok(())
        } else {
            Err(())
        }
    });
    brokers[1].kill();
    promote(&brokers[2]);
    assert_eq!(receive(&brokers[2], "kept", 160), (70..230).collect::<Vec<_>>());
    assert_eq!(queue_info(&brokers[2], "kept").map(|info| info.depth), Some(0));
}

#[test]
fn a_backup_copying_a_deep_queue_does_not_hold_up_new_publishes() {
    // Goal: catch-up and live changes interleave: while a restarted backup downloads a deep queue,
    // publishes to another queue and to the deep queue itself are confirmed (every linked backup,
    // the catching-up one included, stored them) before that backup holds everything. And a
    // backup in catch-up refuses promotion.
    // Method: backup 2 is killed, 300k messages of 100 bytes are sent to "deep", backup 2
    // restarts; once the primary logged its catch-up of "deep", one message to "other" and one to
    // "deep" are published while backup 2 is stopped (SIGSTOP), then it continues and their
    // confirms are awaited; the primary must not have marked backup 2 ready yet. Then backup 2
    // becomes ready with every message.
    const DEEP: u64 = 300_000;
    let mut brokers = ready_cluster(&["--ha-replicate", "all", "--link-heartbeat-interval", "2"]);
    let primary = client(&brokers[0]);
    primary.declare_queue("deep", QueueOptions::default(), &[]).unwrap();
    primary.declare_queue("other", QueueOptions::default(), &[]).unwrap();
    brokers[2].kill();
    let count = DEEP.to_string();
    let sent = run_cli(&["send", "-b", &brokers[0].addr(), "-k", "deep", "--count", &count, "--size", "100"]);
    assert!(sent.status.success(), "send: {}", String::from_utf8_lossy(&sent.stderr));
    wait_depth(&brokers[1], "deep", DEEP);
    let ready = format!("backup={}", brokers[2].addr());
    let marked_ready = |log: &str| log.lines().filter(|l| l.contains("marked ready") && l.contains(&ready)).count();
    let marked_before = marked_ready(&plain_log(&brokers[0]));
    brokers[2].restart().expect("restart on the same port");
    // The deep queue's catch-up started: its link's diff sends every message.
    eventually("the catch-up of deep started", SETTLE_WAIT, || {
        let lines = catch_up_lines(&brokers[0], &brokers[2]);
        if lines.iter().any(|&(sent, _, _)| sent == DEEP) {
            Ok(())
        } else {
            Err(lines)
        }
    });
    // A backup in catch-up cannot be promoted. The primary is held still (SIGSTOP) meanwhile, so
    // that the copy cannot finish between the state check and the promotion.
    wait_state(&brokers[2], "catchup");
    let stopped = Stopped::stop(&brokers[0]);
    let refused = run_cli(&["ha", "promote", "-b", &brokers[2].addr(), "--cluster-manager"]);
    let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success() && stderr.contains("still catching up"), "promote in catch-up: {stderr}");
    // The backup is held still while the primary resumes and takes the publishes, so the copy is
    // unfinished when they come: its window of batches is out, the rest of the backlog waits, and
    // the publishes' records go out before that rest.
    let backup_stopped = Stopped::stop(&brokers[2]);
    stopped.resume();
    let publisher = primary.publisher().unwrap();
    publisher.publish("", numbered("other", 1)).unwrap();
    publisher.publish("", numbered("deep", DEEP)).unwrap();
    backup_stopped.resume();
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!((summary.stored, summary.rejected), (2, 0), "{summary:?}");
    let log = plain_log(&brokers[0]);
    assert_eq!(marked_ready(&log), marked_before, "the publishes were confirmed only after the whole copy:\n{log}");
    wait_state(&brokers[2], "ready");
    wait_depth(&brokers[2], "deep", DEEP + 1);
    wait_depth(&brokers[2], "other", 1);
}
