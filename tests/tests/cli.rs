//! The `ringmq` command line against a real broker, as a user types it: the quick start (declare,
//! send, receive), exchanges and bindings, bulk send and quiet receive, and management errors.
//!
//! Method throughout: run the `ringmq` binary with `-b ADDR` and check its exit status and its
//! exact output; broker state is checked with further commands, not with the client library.

use std::process::Output;
use std::time::Duration;

use ringmq_tests::{eventually, free_port, run_cli, success, BrokerProcess};

/// Longest a test waits for queue counts to settle.
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn quick_start_declares_sends_and_receives() {
    // Goal: the README quick start works as written: `queue add q`, `send -k q hello world`,
    // `receive q --count 2` prints hello and world, and the queue is empty afterwards.
    // Method: the three commands, then `queue list`.
    let broker = BrokerProcess::start(&[]);

    // Declare the queue.
    assert_eq!(success(&broker.cli(&["queue", "add", "q"])), "queue 'q' declared\n");

    // Send two messages through the default exchange.
    let stdout = success(&broker.cli(&["send", "-k", "q", "hello", "world"]));
    assert!(stdout.starts_with("sent 2 messages: 2 stored, 0 unroutable, 0 rejected ("), "{stdout}");
    assert_queue_row(&broker, "q", ["q", "2", "10", "0", "0", "2", "0"]);

    // Receive both: the bodies on stdout, in order; the count on stderr.
    let output = broker.cli(&["receive", "q", "--count", "2"]);
    assert_eq!(success(&output), "hello\nworld\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "received 2 messages (0 redelivered)\n");

    // receive acks what it printed: nothing is left, ready or unacked.
    assert_queue_row(&broker, "q", ["q", "0", "0", "0", "0", "2", "2"]);
}

#[test]
fn exchanges_and_bindings_made_with_the_cli_route_accordingly() {
    // Goal: `exchange add --type`, `exchange list`, `bind` and `unbind` from the shell build the
    // routing that `send -e EXCHANGE -k KEY` then follows; `exchange del` removes it.
    // Method: a topic exchange with a `*.error` and a `#` binding, a fanout and a direct one;
    // send keys that hit one, both or neither, and read each queue back with `receive`.
    let broker = BrokerProcess::start(&[]);
    for queue in ["errors", "everything"] {
        success(&broker.cli(&["queue", "add", queue]));
    }

    // Three exchanges, one of each type.
    assert_eq!(success(&broker.cli(&["exchange", "add", "logs", "--type", "topic"])), "exchange 'logs' declared\n");
    assert_eq!(
        success(&broker.cli(&["exchange", "add", "copies", "--type", "fanout"])),
        "exchange 'copies' declared\n"
    );
    assert_eq!(success(&broker.cli(&["exchange", "add", "exact"])), "exchange 'exact' declared\n");

    // Bind: topic patterns, a fanout binding, a direct key.
    assert_eq!(
        success(&broker.cli(&["bind", "logs", "errors", "*.error"])),
        "bound 'errors' to 'logs' with key '*.error'\n"
    );
    success(&broker.cli(&["bind", "logs", "everything", "#"]));
    success(&broker.cli(&["bind", "copies", "errors"]));
    success(&broker.cli(&["bind", "exact", "everything", "the-key"]));

    // The list shows every exchange, built-ins included, with its type and bindings.
    assert_eq!(
        table(&broker.cli(&["exchange", "list"])),
        [
            vec!["exchange", "type", "bindings"],
            vec!["(default)", "direct", "0"],
            vec!["amq.direct", "direct", "0"],
            vec!["amq.fanout", "fanout", "0"],
            vec!["amq.topic", "topic", "0"],
            vec!["copies", "fanout", "1"],
            vec!["exact", "direct", "1"],
            vec!["logs", "topic", "2"],
        ]
    );

    // Sends: app.error hits both topic bindings, app.info only '#', the fanout and direct
    // exchanges their one queue, a wrong direct key nothing.
    assert_sent(
        &broker,
        &["-e", "logs", "-k", "app.error", "boom"],
        "sent 1 messages: 1 stored, 0 unroutable, 0 rejected (",
    );
    assert_sent(
        &broker,
        &["-e", "logs", "-k", "app.info", "fine"],
        "sent 1 messages: 1 stored, 0 unroutable, 0 rejected (",
    );
    assert_sent(
        &broker,
        &["-e", "copies", "-k", "whatever", "copied"],
        "sent 1 messages: 1 stored, 0 unroutable, 0 rejected (",
    );
    assert_sent(
        &broker,
        &["-e", "exact", "-k", "the-key", "exactly"],
        "sent 1 messages: 1 stored, 0 unroutable, 0 rejected (",
    );
    assert_sent(
        &broker,
        &["-e", "exact", "-k", "other-key", "lost"],
        "sent 1 messages: 0 stored, 1 unroutable, 0 rejected (",
    );
    assert_eq!(success(&broker.cli(&["receive", "errors", "--count", "2"])), "boom\ncopied\n");
    assert_eq!(success(&broker.cli(&["receive", "everything", "--count", "3"])), "boom\nfine\nexactly\n");

    // Unbind '#': app.info now routes nowhere, app.error still to errors.
    assert_eq!(
        success(&broker.cli(&["unbind", "logs", "everything", "#"])),
        "unbound 'everything' from 'logs' with key '#'\n"
    );
    assert_sent(
        &broker,
        &["-e", "logs", "-k", "app.info", "x", "y"],
        "sent 2 messages: 0 stored, 2 unroutable, 0 rejected (",
    );
    assert_sent(
        &broker,
        &["-e", "logs", "-k", "db.error", "z"],
        "sent 1 messages: 1 stored, 0 unroutable, 0 rejected (",
    );
    assert_queue_row(&broker, "everything", ["everything", "0", "0", "0", "0", "3", "3"]);
    assert_eq!(success(&broker.cli(&["receive", "errors", "--count", "1"])), "z\n");

    // Delete an exchange: it leaves the list, and sending to it fails with the broker's reason.
    assert_eq!(success(&broker.cli(&["exchange", "del", "logs"])), "exchange 'logs' deleted\n");
    let rows = table(&broker.cli(&["exchange", "list"]));
    assert!(rows.iter().all(|row| row[0] != "logs"), "{rows:?}");
    let output = broker.cli(&["send", "-e", "logs", "-k", "app.error", "gone"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "ringmq send: rejected from seq 0: exchange 'logs' does not exist; only declared and built-in exchanges can be used\n"
    );
}

#[test]
fn bulk_send_then_quiet_receive_reports_the_count() {
    // Goal: `send --count 1000 --size 100` stores 1000 messages of 100 bytes, and `receive
    // --count 1000 --quiet` takes exactly those and reports only the count.
    // Method: send, check the queue's depth and bytes, receive, check it is empty.
    let broker = BrokerProcess::start(&[]);
    success(&broker.cli(&["queue", "add", "q"]));

    // 1000 generated messages of 100 bytes.
    let stdout = success(&broker.cli(&["send", "-k", "q", "--count", "1000", "--size", "100"]));
    assert!(stdout.starts_with("sent 1000 messages: 1000 stored, 0 unroutable, 0 rejected ("), "{stdout}");
    assert_queue_row(&broker, "q", ["q", "1000", "100000", "0", "0", "1000", "0"]);

    // Quiet receive prints one line with the count, and nothing else.
    let output = broker.cli(&["receive", "q", "--count", "1000", "--quiet"]);
    assert_eq!(success(&output), "received 1000 messages (0 redelivered)\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_queue_row(&broker, "q", ["q", "0", "0", "0", "0", "1000", "1000"]);
}

#[test]
fn receive_with_a_timeout_stops_when_no_message_arrives() {
    // Goal: `receive --timeout` means "stop when no message arrived for this long" (its help
    // text): it receives what there is, then ends normally, exit 0, and reports the count.
    // Method: three messages in the queue, `receive q --timeout 200ms --quiet`.
    // Regression: the idle timeout once surfaced as an error (exit 1, no count).
    let broker = BrokerProcess::start(&[]);
    success(&broker.cli(&["queue", "add", "q"]));
    success(&broker.cli(&["send", "-k", "q", "a", "b", "c"]));

    // All three are received, then the idle timeout ends the command normally.
    let output = broker.cli(&["receive", "q", "--timeout", "200ms", "--quiet"]);
    assert_eq!(success(&output), "received 3 messages (0 redelivered)\n");
    assert_queue_row(&broker, "q", ["q", "0", "0", "0", "0", "3", "3"]);

    // On an empty queue it reports 0.
    let output = broker.cli(&["receive", "q", "--timeout", "200ms", "--quiet"]);
    assert_eq!(success(&output), "received 0 messages (0 redelivered)\n");
}

#[test]
fn management_errors_exit_1_with_the_brokers_reason() {
    // Goal: a refused management command exits 1 and prints the broker's reason (the code and
    // the text naming what was wrong); an unreachable broker is reported with its address.
    // Method: commands that name missing queues, exchanges and bindings, a reserved name, and
    // a port nobody listens on.
    let broker = BrokerProcess::start(&[]);
    success(&broker.cli(&["queue", "add", "q"]));

    // Each refusal: exit 1, and the broker's words on stderr.
    let cases: [(&[&str], &str); 5] = [
        (&["queue", "del", "missing"], "NotFound: queue 'missing' does not exist"),
        (&["bind", "no-exchange", "q", "k"], "NotFound: exchange 'no-exchange' does not exist"),
        (&["bind", "amq.direct", "no-queue", "k"], "NotFound: queue 'no-queue' does not exist"),
        (&["unbind", "amq.direct", "q", "k"], "NotFound: queue 'q' is not bound to exchange 'amq.direct' with key 'k'"),
        (&["exchange", "add", "amq.mine"], "InvalidArgument: exchange names starting with 'amq.' are reserved"),
    ];
    for (args, reason) in cases {
        let output = broker.cli(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("ringmq: request failed: "), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: expected {reason:?} in {stderr}");
    }

    // A broker that is not there.
    let addr = format!("127.0.0.1:{}", free_port());
    let output = run_cli(&["queue", "list", "-b", &addr]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with(&format!("ringmq: connecting to {addr} failed: ")), "{stderr}");
}

// ----- helpers -----

/// Runs `ringmq send ARGS...`, expects exit 0 and stdout starting with `expected`.
fn assert_sent(broker: &BrokerProcess, args: &[&str], expected: &str) {
    let mut all = vec!["send"];
    all.extend_from_slice(args);
    let stdout = success(&broker.cli(&all));
    assert!(stdout.starts_with(expected), "send {args:?}: {stdout}");
}

/// A successful command's stdout as rows of whitespace-separated words.
fn table(output: &Output) -> Vec<Vec<String>> {
    success(output).lines().map(|line| line.split_whitespace().map(str::to_string).collect()).collect()
}

/// Polls `ringmq queue list` until queue `name`'s row (name, depth, bytes, unacked, consumers,
/// enqueued, dequeued) is `expected`, for at most `WAIT`.
///
/// Polled because `receive` does not wait for the broker to count its acks: it sends them and
/// closes, so a list on a new connection may be answered before the acks are counted.
fn assert_queue_row(broker: &BrokerProcess, name: &str, expected: [&str; 7]) {
    eventually(&format!("queue list row {expected:?}"), WAIT, || {
        let rows = table(&broker.cli(&["queue", "list"]));
        assert_eq!(rows[0], ["queue", "depth", "bytes", "unacked", "consumers", "enqueued", "dequeued"]);
        let row = rows.into_iter().find(|row| row[0] == name).unwrap_or_else(|| panic!("queue {name} not listed"));
        if row == expected {
            Ok(())
        } else {
            Err(row)
        }
    });
}
