//! The failover torture test: a numbered sender and receiver run through repeated kill -9 of the
//! primary, and nothing may be lost or (with duplicate suppression) duplicated.
//!
//! What is checked: on a three-broker loopback cluster (`ha-replicate all`, link intervals 0.1 s
//! maintenance and 0.25 s heartbeat), a `ringmq send --numbered --producer-id` at 2000 msg/s and a
//! `ringmq receive --numbered`, both with `--reconnect --heartbeat 0.5` and the URL of all three
//! brokers, ride through ROUNDS failovers; each round kills the primary with SIGKILL, promotes a
//! ready backup (as the cluster manager would), restarts the killed broker and waits until it is a
//! ready backup of the new primary. At the end the sender printed `sent N, confirmed N` for its
//! whole count, and the receiver `received N distinct, 0 duplicates, 0 missing, R redelivered
//! again`: no number stored twice. A number delivered again flagged redelivered (a new primary
//! flags every message it holds, since the old one may have delivered it before its ack was
//! replicated) is at-least-once delivery, not a duplicate enqueue; R is reported.
//!
//! ROUNDS is 10, or `RINGMQ_TORTURE_ROUNDS`; `RINGMQ_TORTURE_NO_DEDUP=1` sends without a producer
//! id, to count what duplicate suppression saves (duplicates are then reported, not asserted). The 100-round run (the `torture` nextest profile
//! allows it the time):
//! `RINGMQ_TORTURE_ROUNDS=100 cargo nextest run -P torture -p ringmq-tests --test torture`.
//!
//! Method: `start_cluster` and `BrokerProcess::restart` for the brokers, `run_cli` for `ha status`
//! and `ha promote`, `CliProcess` for the sender and receiver (killed by PID on drop). Every wait
//! polls with a deadline; no fixed sleeps. The sender's count is its rate times a generous
//! estimate of the rounds' duration, so it normally still runs when the last round ends (the test
//! prints whether it did). Build the broker first: `cargo build -p ringmq`.

use std::time::{Duration, Instant};

use ringmq_tests::ha::{state, wait_state, SETTLE_WAIT};
use ringmq_tests::{eventually, run_cli, start_cluster, success, BrokerProcess, CliProcess};

/// Messages that must pass through a new primary before the next round kills it.
const TRAFFIC_PER_ROUND: u64 = 200;
/// Rounds when `RINGMQ_TORTURE_ROUNDS` is not set.
const ROUNDS_DEFAULT: u64 = 10;
/// The sender's rate, in messages per second.
const RATE: u64 = 2000;
/// A generous estimate of one round (kill, promote, restart, ready, `TRAFFIC_PER_ROUND` through the
/// new primary); about 0.15 s on loopback.
const ROUND_ESTIMATE: Duration = Duration::from_millis(500);
/// Longest the sender and receiver may take after their last message is due.
const FINISH_WAIT: Duration = Duration::from_secs(60);
/// The queue.
const QUEUE: &str = "torture";

/// `RINGMQ_TORTURE_ROUNDS`, else `ROUNDS_DEFAULT`.
fn rounds() -> u64 {
    match std::env::var("RINGMQ_TORTURE_ROUNDS") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("RINGMQ_TORTURE_ROUNDS must be a number, got {text:?}")),
        Err(_) => ROUNDS_DEFAULT,
    }
}

/// Messages the torture queue has taken on `broker` (0 if it could not be asked).
fn enqueued_on(broker: &BrokerProcess) -> u64 {
    let output = run_cli(&["queue", "list", "-b", &broker.addr(), "--ha-admin"]);
    let listing = String::from_utf8_lossy(&output.stdout);
    let line = listing.lines().find(|line| line.split_whitespace().next() == Some(QUEUE));
    // Columns: queue, depth, bytes, unacked, consumers, enqueued, dequeued.
    line.and_then(|line| line.split_whitespace().nth(5)).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Promotes a ready broker other than `killed`, polling `ha status` until one is ready and
/// accepts; returns its index.
fn promote_a_ready_backup(brokers: &[BrokerProcess], killed: usize) -> usize {
    eventually("a ready backup accepts promotion", SETTLE_WAIT, || {
        for (index, broker) in brokers.iter().enumerate().filter(|&(index, _)| index != killed) {
            if state(broker) == "ready" {
                let output = run_cli(&["ha", "promote", "-b", &broker.addr(), "--cluster-manager"]);
                if output.status.success() {
                    return Ok(index);
                }
                return Err(String::from_utf8_lossy(&output.stderr).into_owned());
            }
        }
        Err("no ready backup".to_owned())
    })
}

/// Fails at once if `process` exited before its time, showing its output.
fn assert_running(process: &mut CliProcess, what: &str) {
    if let Some(status) = process.exited() {
        panic!("the {what} exited during the rounds with {status}; {}", process.output());
    }
}

/// The numbers of `line`, a line of `text` that starts with `prefix` (`sent 5, confirmed 5` gives
/// `[5, 5]`).
fn numbers_of(text: &str, prefix: &str) -> Vec<u64> {
    let line = text.lines().find(|line| line.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in {text}"));
    line.split(|c: char| !c.is_ascii_digit()).filter(|word| !word.is_empty()).map(|n| n.parse().unwrap()).collect()
}

#[test]
fn numbered_sender_and_receiver_lose_nothing_across_repeated_failovers() {
    // Goal: the torture test: zero missing numbers and, with duplicate suppression,
    // zero duplicates across ROUNDS kill -9 failovers. Method: see the file's comment.
    let rounds = rounds();
    let mut brokers = start_cluster(&[
        "--ha-replicate",
        "all",
        "--link-maintenance-interval",
        "0.1",
        "--link-heartbeat-interval",
        "0.25",
    ]);
    success(&run_cli(&["ha", "promote", "-b", &brokers[0].addr(), "--cluster-manager"]));
    for backup in &brokers[1..] {
        wait_state(backup, "ready");
    }
    success(&run_cli(&["queue", "add", QUEUE, "-b", &brokers[0].addr()]));
    let url = brokers.iter().map(BrokerProcess::addr).collect::<Vec<_>>().join(",");
    let sending_for = ROUND_ESTIMATE * u32::try_from(rounds).expect("rounds fit in u32") + Duration::from_secs(5);
    let count = (RATE * sending_for.as_secs()).to_string();
    let rate = RATE.to_string();
    let failover = ["-b", &url, "--reconnect", "--heartbeat", "0.5", "--numbered"];
    // `RINGMQ_TORTURE_NO_DEDUP=1` sends without a producer id, to count the duplicates that
    // suppression saves.
    let suppression = std::env::var_os("RINGMQ_TORTURE_NO_DEDUP").is_none();
    let dedup: &[&str] = if suppression { &["--producer-id", "torture-1"] } else { &[] };
    let mut sender = CliProcess::spawn(
        &[&["send"], &failover[..], &["-k", QUEUE, "--rate", &rate, "--count", &count], dedup].concat(),
    );
    let mut receiver = CliProcess::spawn(&[&["receive"], &failover[..], &[QUEUE, "--count", &count]].concat());

    let start = Instant::now();
    let mut primary = 0;
    for round in 1..=rounds {
        assert_running(&mut sender, "sender");
        assert_running(&mut receiver, "receiver");
        brokers[primary].kill();
        let promoted = promote_a_ready_backup(&brokers, primary);
        brokers[primary].restart().unwrap_or_else(|failure| panic!("round {round}: restart: {failure}"));
        for (index, broker) in brokers.iter().enumerate().filter(|&(index, _)| index != promoted) {
            eventually(&format!("round {round}: broker {index} is ready"), SETTLE_WAIT, || match state(broker) {
                seen if seen == "ready" => Ok(()),
                seen => Err(seen),
            });
        }
        primary = promoted;
        // Under load: each failover happens while messages flow, not while the sender and
        // receiver are still starting (the rounds alone take about 0.1 s each).
        let enqueued = enqueued_on(&brokers[primary]);
        eventually(&format!("round {round}: messages flow through the new primary"), SETTLE_WAIT, || {
            let now = enqueued_on(&brokers[primary]);
            if now >= enqueued + TRAFFIC_PER_ROUND {
                Ok(())
            } else {
                Err(now)
            }
        });
    }
    let rounds_took = start.elapsed();
    let sender_still_ran = sender.exited().is_none();

    let (status, sent) = sender
        .wait_within(sending_for.saturating_sub(rounds_took) + FINISH_WAIT)
        .unwrap_or_else(|failure| panic!("the sender did not finish: {failure}"));
    assert!(status.success(), "sender: {status}; {}", sender.output());
    let expected: u64 = count.parse().unwrap();
    assert_eq!(numbers_of(&sent, "sent "), [expected, expected], "{}", sender.output());
    let (status, received) =
        receiver.wait_within(FINISH_WAIT).unwrap_or_else(|failure| panic!("the receiver did not finish: {failure}"));
    let [distinct, duplicates, missing, redelivered] = numbers_of(&received, "received ")[..] else {
        panic!("unexpected receiver summary: {}", receiver.output())
    };
    assert_eq!(missing, 0, "{}", receiver.output());
    assert!(status.success(), "receiver: {status}; {}", receiver.output());
    assert_eq!(distinct, expected, "{}", receiver.output());
    // With suppression, no number is stored twice: a message is delivered only once every linked
    // backup holds it (and its dedup key), so whatever the killed primary's consumer took, the
    // promoted backup knows, and the producer's re-send of it is suppressed. Without suppression
    // duplicates are expected (a re-send of a message the old primary stored but had not
    // confirmed is stored again) and only reported.
    if suppression {
        assert_eq!(duplicates, 0, "numbers stored twice with duplicate suppression; {}", receiver.output());
    } else if duplicates > 0 {
        println!("duplicate enqueues without suppression: {duplicates}");
    }
    println!(
        "{rounds} rounds in {rounds_took:?}; {expected} sent and received, 0 missing, {duplicates} duplicates, \
         {redelivered} redelivered again after failovers; the sender {} when the last round ended",
        if sender_still_ran { "still ran" } else { "had finished" }
    );
}
