//! Helpers the HA process tests share: a promoted three-broker cluster, HA states, admin and client
//! connections, queue depths read from any broker (backups included), and a broker's log without
//! colour codes.
//!
//! Every wait polls against `SETTLE_WAIT`, a ceiling for links, catch-up and promotion on a loaded
//! 2-core machine; a passing test waits only as long as the cluster needs.

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{blocking, ConnectOptions};
use ringmq_core::frame::{Message, QueueInfo};

use crate::{eventually, run_cli, start_cluster, BrokerProcess};

/// Longest wait for a cluster to settle (links, catch-up, promotion, ready).
pub const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Starts a three-broker cluster with link intervals of 0.1 s (maintenance) and 0.2 s (heartbeat)
/// and `extra` options (later ones win), promotes broker 0 and waits until both others are ready.
pub fn ready_cluster(extra: &[&str]) -> Vec<BrokerProcess> {
    let mut options = vec!["--link-maintenance-interval", "0.1", "--link-heartbeat-interval", "0.2"];
    options.extend_from_slice(extra);
    let brokers = start_cluster(&options);
    promote(&brokers[0]);
    for backup in &brokers[1..] {
        wait_state(backup, "ready");
    }
    brokers
}

/// `ringmq ha promote` on `broker`, which must succeed.
///
/// # Panics
/// If the promotion is refused.
pub fn promote(broker: &BrokerProcess) {
    let output = run_cli(&["ha", "promote", "-b", &broker.addr(), "--cluster-manager"]);
    assert!(output.status.success(), "promote {}: {}", broker.addr(), String::from_utf8_lossy(&output.stderr));
}

/// Promotes `broker` over an admin connection, without `ringmq ha promote`'s checks: for tests
/// whose point is what a primary does with an expected backup that is dead or stopped, which the
/// promotion check refuses to promote beside (a silent member of the candidate's ready set).
///
/// # Panics
/// If the broker refuses.
pub fn promote_unchecked(broker: &BrokerProcess) {
    admin(broker).ha_promote().unwrap_or_else(|error| panic!("promote {}: {error}", broker.addr()));
}

/// What `ringmq ha status` prints for `broker` (empty if it did not answer).
pub fn state(broker: &BrokerProcess) -> String {
    String::from_utf8_lossy(&run_cli(&["ha", "status", "-b", &broker.addr()]).stdout).trim().to_owned()
}

/// Waits until `broker` reports HA state `wanted`.
///
/// # Panics
/// If it does not within `SETTLE_WAIT`.
pub fn wait_state(broker: &BrokerProcess, wanted: &str) {
    eventually(&format!("{} is {wanted}", broker.addr()), SETTLE_WAIT, || match state(broker) {
        seen if seen == wanted => Ok(()),
        seen => Err(seen),
    });
}

/// An admin connection (`--ha-admin`), served by backups too.
///
/// # Panics
/// If the broker cannot be reached.
pub fn admin(broker: &BrokerProcess) -> blocking::Connection {
    let options = ConnectOptions { admin: true, ..ConnectOptions::default() };
    blocking::Connection::connect(broker.addr().as_str(), options).unwrap()
}

/// A client connection (served by a primary only).
///
/// # Panics
/// If the broker cannot be reached or refuses clients.
pub fn client(broker: &BrokerProcess) -> blocking::Connection {
    blocking::Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap()
}

/// `queue` as `broker` lists it to an admin connection, if it has it; an error if the broker could
/// not be asked.
pub fn try_queue_info(broker: &BrokerProcess, queue: &str) -> Result<Option<QueueInfo>, String> {
    let options = ConnectOptions { admin: true, ..ConnectOptions::default() };
    let connection = blocking::Connection::connect(broker.addr().as_str(), options).map_err(|e| e.to_string())?;
    let queues = connection.list_queues().map_err(|e| e.to_string())?;
    let _ = connection.close();
    Ok(queues.into_iter().find(|q| q.name == queue))
}

/// `queue` as `broker` lists it, if it has it.
///
/// # Panics
/// If the broker cannot be asked.
pub fn queue_info(broker: &BrokerProcess, queue: &str) -> Option<QueueInfo> {
    try_queue_info(broker, queue).unwrap()
}

/// Waits until `broker` holds exactly `depth` ready messages in `queue` (a broker that cannot be
/// asked yet is asked again).
///
/// # Panics
/// If it does not within `SETTLE_WAIT`.
pub fn wait_depth(broker: &BrokerProcess, queue: &str, depth: u64) {
    eventually(&format!("{queue} holds {depth} on {}", broker.addr()), SETTLE_WAIT, || {
        match try_queue_info(broker, queue) {
            Ok(Some(info)) if info.depth == depth => Ok(()),
            other => Err(other),
        }
    });
}

/// A broker's log without terminal colour codes.
pub fn plain_log(broker: &BrokerProcess) -> String {
    let output = broker.output();
    let mut plain = String::with_capacity(output.len());
    let mut chars = output.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip an escape sequence: ESC [ ... letter.
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Message `index` for queue `queue` (default exchange), its body the decimal index.
pub fn numbered(queue: &str, index: u64) -> Message {
    Message {
        routing_key: Bytes::from(queue.to_owned()),
        message_id: Bytes::new(),
        headers: Vec::new(),
        body: Bytes::from(index.to_string()),
    }
}
