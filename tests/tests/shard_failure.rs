//! A broker never runs half-alive: when any shard fails, the whole process ends, with the status
//! documented for the cause and a line on stderr naming the shard and the reason.
//!
//! Method: run the real `ringmq broker` with the test fault trigger `RINGMQ_FAULT_PANIC_SHARD`,
//! which makes one shard panic in a task of its loop (the kind of panic the runtime catches and
//! keeps, so only the broker's panic hook sees it), and read its exit status and stderr.

use std::time::Duration;

use ringmq_tests::{free_port, run_cli_with_env_within};

/// Longest the broker may take to start and end.
const EXIT_WAIT: Duration = Duration::from_secs(20);
/// The broker's exit status when a shard panicked (see the README, "Broker options").
const EXIT_SHARD_PANICKED: i32 = 4;

#[test]
fn a_panic_on_shard_1_ends_the_broker_with_status_4_naming_the_shard() {
    // Goal: a panic on shard 1, while shard 0 serves, ends the whole process (it used to go
    // unnoticed while the daemon joined shard 0), with status 4 and a fatal line naming shard 1.
    // Method: a 2-shard broker with RINGMQ_FAULT_PANIC_SHARD=1; wait for it to exit.
    let port = free_port().to_string();
    let args = ["broker", "--host", "127.0.0.1", "--port", &port, "--pin-cores", "false", "--shards", "2"];

    // It exits by itself, not killed by the deadline.
    let output = run_cli_with_env_within(&args, &[("RINGMQ_FAULT_PANIC_SHARD", "1")], EXIT_WAIT)
        .unwrap_or_else(|output| panic!("the broker still ran after {EXIT_WAIT:?}: {output:?}"));
    let stderr = String::from_utf8_lossy(&output.stderr);

    // With the status of a panic, and a line that names the shard and the panic's message.
    assert_eq!(output.status.code(), Some(EXIT_SHARD_PANICKED), "stderr:\n{stderr}");
    let fatal = stderr
        .lines()
        .find(|line| line.starts_with("ringmq broker: fatal: "))
        .unwrap_or_else(|| panic!("no fatal line on stderr:\n{stderr}"));
    assert!(fatal.starts_with("ringmq broker: fatal: shard 1 panicked at "), "{fatal}");
    assert!(fatal.ends_with(": test fault: a deliberate panic in a task of this shard"), "{fatal}");
}

#[test]
fn a_fault_trigger_naming_no_shard_is_refused_with_status_2() {
    // Goal: the trigger is checked like an option: a value that names no shard stops the broker
    // before it listens, with status 2 and a message naming the variable and the allowed range.
    // Method: RINGMQ_FAULT_PANIC_SHARD=2 on a 2-shard broker.
    let port = free_port().to_string();
    let args = ["broker", "--host", "127.0.0.1", "--port", &port, "--pin-cores", "false", "--shards", "2"];
    let output = run_cli_with_env_within(&args, &[("RINGMQ_FAULT_PANIC_SHARD", "2")], EXIT_WAIT)
        .unwrap_or_else(|output| panic!("the broker still ran after {EXIT_WAIT:?}: {output:?}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(
        stderr,
        "ringmq broker: environment variable RINGMQ_FAULT_PANIC_SHARD (test fault trigger): must be a shard \
         index in 0..2; got '2'\n"
    );
}
