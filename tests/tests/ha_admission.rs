//! HA admission and promotion with real broker processes: a cluster of three brokers on loopback,
//! each started with `--ha-cluster true --ha-brokers-url` listing all three.
//!
//! What is checked: every broker starts joining; a backup refuses a plain client with `NotPrimary`
//! and closes the connection; an admin connection reads but cannot change replicated objects;
//! `ringmq ha promote` needs `--cluster-manager`; the first promotion makes a broker active in
//! epoch 1 and it then serves clients; a second joining broker is refused by the StatusCheck,
//! which names the active one; `ha status --all` lists all three; a standalone broker refuses
//! promotion.
//!
//! Method: `BrokerProcess` for the brokers, `run_cli` for the `ringmq ha` commands (read from
//! their exit status and output), the blocking client and a raw TCP socket for clients. Waits
//! poll with deadlines (`eventually`), never fixed sleeps. Build the broker first:
//! `cargo build -p ringmq`.

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{blocking, ClientError, ConnectOptions, ErrorCode, Message, QueueOptions};
use ringmq_core::frame::Frame;
use ringmq_tests::{eventually, frames_until_closed, run_cli, start_cluster, BrokerProcess};

/// Longest a test waits for a broker's answer or for a connection to close.
const WAIT: Duration = Duration::from_secs(10);

/// Three cluster brokers that know each other's addresses.
struct Cluster {
    /// The brokers, in the order of the URL.
    brokers: Vec<BrokerProcess>,
}

impl Cluster {
    /// Starts three cluster brokers that know each other's addresses.
    fn start() -> Cluster {
        Cluster { brokers: start_cluster(&[]) }
    }

    fn addr(&self, index: usize) -> String {
        self.brokers[index].addr()
    }
}

/// `ringmq ARGS...`: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let output = run_cli(args);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn admin(addr: &str) -> blocking::Connection {
    blocking::Connection::connect(addr, ConnectOptions { admin: true, ..ConnectOptions::default() })
        .unwrap_or_else(|error| panic!("admin connection to {addr}: {error}"))
}

fn client(addr: &str) -> Result<blocking::Connection, ClientError> {
    blocking::Connection::connect(addr, ConnectOptions::default())
}

fn assert_not_primary(result: Result<(), ClientError>, what: &str) {
    match result {
        Err(ClientError::Failed { code: ErrorCode::NotPrimary, message }) => {
            assert!(message.contains("backup in state joining"), "{what}: {message}");
        }
        other => panic!("{what}: expected Failed NotPrimary, got {other:?}"),
    }
}

#[test]
fn a_new_cluster_starts_joining_and_promotes_its_first_primary() {
    // Goal: the whole first slice of HA on real processes, in the order a cluster manager meets
    // it. Method: start the cluster, then one step per behaviour below.
    let cluster = Cluster::start();
    let (a0, a1, a2) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));

    // Every broker starts joining: `ha status --expect joining` exits 0, `--expect active` 1.
    for addr in [&a0, &a1, &a2] {
        let (code, stdout, stderr) = cli(&["ha", "status", "-b", addr, "--expect", "joining"]);
        assert_eq!(code, Some(0), "{addr}: {stdout}{stderr}");
        assert_eq!(stdout.trim(), "joining");
    }
    let (code, _, _) = cli(&["ha", "status", "-b", &a0, "--expect", "active"]);
    assert_eq!(code, Some(1));

    // A plain client is refused with NotPrimary, and the connection closes after the Error.
    match client(&a0) {
        Err(ClientError::Refused { code: ErrorCode::NotPrimary, message }) => {
            assert!(message.contains("backup in state joining"), "{message}");
        }
        other => panic!("expected a NotPrimary refusal, got {:?}", other.map(|_| "a connection")),
    }
    let frames = frames_until_closed(&a0, 0, WAIT);
    assert!(
        matches!(frames.as_slice(), [Frame::Error { code: ErrorCode::NotPrimary, .. }]),
        "expected one Error NotPrimary before the close, got {frames:?}"
    );

    // An admin client lists queues and exchanges, but a declare is refused with NotPrimary.
    let backup_admin = admin(&a0);
    assert_eq!(backup_admin.list_queues().unwrap(), vec![]);
    assert!(!backup_admin.list_exchanges().unwrap().is_empty());
    assert_not_primary(backup_admin.declare_queue("q", QueueOptions::default(), &[]), "queue declare");
    assert_not_primary(backup_admin.bind("amq.direct", "q", "k"), "bind");
    backup_admin.close().unwrap();

    // Promote without --cluster-manager: refused by the tool with status 2, saying why.
    let (code, _, stderr) = cli(&["ha", "promote", "-b", &a0]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--cluster-manager"), "{stderr}");
    let (code, _, _) = cli(&["ha", "status", "-b", &a0, "--expect", "joining"]);
    assert_eq!(code, Some(0), "a refused promote changed the state");

    // Promote broker 0 (the first of the URL): active in epoch 1.
    let (code, stdout, stderr) = cli(&["ha", "promote", "-b", &a0, "--cluster-manager"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("active in epoch 1"), "{stdout}");
    let (code, stdout, _) = cli(&["ha", "status", "-b", &a0, "--expect", "active"]);
    assert_eq!((code, stdout.trim()), (Some(0), "active"));
    let status = admin(&a0).ha_status().unwrap();
    assert_eq!((status.state.as_str(), status.epoch), ("active", 1));

    // Clients are now served there: declare, publish with a confirm, consume and ack.
    let connection = eventually("a plain client served by the new primary", WAIT, || client(&a0));
    connection.declare_queue("after-promote", QueueOptions::default(), &[]).unwrap();
    let publisher = connection.publisher().unwrap();
    let message = Message { routing_key: Bytes::from_static(b"after-promote"), ..Message::default() };
    publisher.publish("", Message { body: Bytes::from_static(b"hello"), ..message }).unwrap();
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!((summary.stored, summary.rejected), (1, 0));
    let mut consumer = connection.subscribe("after-promote", 10).unwrap();
    let delivery = consumer.recv_timeout(WAIT).unwrap().expect("a delivery");
    assert_eq!(&delivery.message.body[..], b"hello");
    consumer.ack(delivery.tag).unwrap();
    consumer.cancel().unwrap();
    connection.close().unwrap();

    // Promote broker 1: the StatusCheck finds broker 0 active and refuses, naming it.
    let (code, stdout, stderr) = cli(&["ha", "promote", "-b", &a1, "--cluster-manager"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("broker tcp:{a0} is active")), "{stderr}");
    let (code, _, _) = cli(&["ha", "status", "-b", &a1, "--expect", "joining"]);
    assert_eq!(code, Some(0), "the refused broker changed state");

    // `ha status --all` lists all three with their states.
    let (code, stdout, stderr) = cli(&["ha", "status", "-b", &a2, "--all"]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, [format!("tcp:{a0} active"), format!("tcp:{a1} joining"), format!("tcp:{a2} joining")]);
    // With --expect, --all matches only if every broker is in that state.
    let (code, _, _) = cli(&["ha", "status", "-b", &a2, "--all", "--expect", "joining"]);
    assert_eq!(code, Some(1));
}

#[test]
fn a_ready_backup_refuses_a_client_naming_the_primary_it_follows() {
    // Goal: without `ha-public-url`, a backup's refusal names the primary it follows, in the form
    // the client learns addresses from, so clients and people move on at once.
    // Method: promote broker 0, wait until broker 1 is ready (every shard's link accepted, so
    // whichever shard takes the connection knows), then read broker 1's refusal from a raw
    // socket, and connect the ringmq client to broker 1 alone.
    let cluster = Cluster::start();
    let (a0, a1) = (cluster.addr(0), cluster.addr(1));
    let (code, stdout, stderr) = cli(&["ha", "promote", "-b", &a0, "--cluster-manager"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    eventually("broker 1 ready", WAIT, || match cli(&["ha", "status", "-b", &a1, "--expect", "ready"]) {
        (Some(0), _, _) => Ok(()),
        (_, stdout, stderr) => Err(format!("{stdout}{stderr}")),
    });
    // On the wire: one Error NotPrimary naming the primary, then the close.
    let named = format!("connect to the cluster at {a0} (the primary this backup follows)");
    match frames_until_closed(&a1, 0, WAIT).as_slice() {
        [Frame::Error { code: ErrorCode::NotPrimary, message }] => assert!(message.ends_with(&named), "{message}"),
        other => panic!("expected one Error NotPrimary before the close, got {other:?}"),
    }
    // The ringmq client, given only the backup's address (no reconnect), moves on to the
    // primary it names at once: the connection it gets is served as the primary serves.
    let connection = client(&a1).expect("the client follows the refusal to the primary");
    connection.declare_queue("declared-through-the-backups-refusal", QueueOptions::default(), &[]).unwrap();
    connection.close().unwrap();
    let primary_admin = admin(&a0);
    assert!(primary_admin.list_queues().unwrap().iter().any(|q| q.name == "declared-through-the-backups-refusal"));
}

#[test]
fn a_standalone_broker_serves_clients_and_refuses_promotion() {
    // Goal: without ha-cluster nothing changes for clients, and promotion is refused with the
    // reason. Method: a broker with default options; a client declares; `ha promote`.
    let broker = BrokerProcess::start(&[]);
    let addr = broker.addr();
    let (code, stdout, _) = cli(&["ha", "status", "-b", &addr, "--expect", "standalone"]);
    assert_eq!((code, stdout.trim()), (Some(0), "standalone"));
    // A plain client is served.
    let connection = client(&addr).unwrap();
    connection.declare_queue("standalone-q", QueueOptions::default(), &[]).unwrap();
    connection.close().unwrap();
    // Promotion is refused by the broker, with the reason, status 1.
    let (code, stdout, stderr) = cli(&["ha", "promote", "-b", &addr, "--cluster-manager"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("not in a cluster: ha-cluster is off"), "{stderr}");
    let (code, _, _) = cli(&["ha", "status", "-b", &addr, "--expect", "standalone"]);
    assert_eq!(code, Some(0));
}

#[test]
fn ha_cluster_without_brokers_url_or_with_a_bad_url_stops_the_broker() {
    // Goal: the HA options are checked before the broker listens: status 2, the option named.
    // Method: `ringmq broker` with each bad combination.
    let (code, _, stderr) = cli(&["broker", "--port", "0", "--ha-cluster", "true"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("option 'ha-brokers-url': is required when ha-cluster is true"), "{stderr}");
    let (code, _, stderr) = cli(&["broker", "--port", "0", "--ha-brokers-url", "h:99999"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("option 'ha-brokers-url': must be a broker URL"), "{stderr}");
    assert!(stderr.contains("got 'h:99999'"), "{stderr}");
    let (code, _, stderr) = cli(&["broker", "--port", "0", "--ha-public-url", "a,,b"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("option 'ha-public-url'"), "{stderr}");
}
