//! State-machine tests of HA admission and promotion in `Shard`: several shards wired in memory
//! (`support::Mesh`), clients as byte buffers. No sockets, no threads, no clock.
//!
//! What is checked: a backup refuses plain clients and serves admin ones for reading; changes to
//! replicated objects are refused on a backup; promotion goes through the coordinator, reaches
//! every shard before its `Ok`, takes epoch 1, and then the broker serves everyone; the state
//! table's refusals (standalone, already primary) come back as `Failed` with the reason; a backup
//! link is refused by a backup and a standalone broker and admitted by a primary, where it may
//! send only heartbeats; a backup link must announce the replication link version, and a client
//! the protocol version.

mod support;

use bytes::Bytes;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{
    ConfirmOutcome, ErrorCode, ExchangeKind, Frame, Message, Preamble, LINK_VERSION, PREAMBLE_FLAG_ADMIN,
    PREAMBLE_FLAG_BACKUP, PROTOCOL_VERSION,
};
use ringmq_core::ha_view::HaSettings;
use ringmq_core::ids::{ConnId, ConsumerId, RequestId, Seq};
use ringmq_core::wire::encode_preamble;
use support::{declare, Mesh};

fn failed_not_primary(frames: &[Frame], what: &str) {
    match frames {
        [Frame::Failed { code: ErrorCode::NotPrimary, message, .. }] => {
            assert!(message.contains("backup in state joining"), "{message}");
            assert!(message.contains(what), "{message}");
        }
        other => panic!("{what}: expected Failed NotPrimary, got {other:?}"),
    }
}

#[test]
fn a_joining_backup_refuses_a_plain_client_and_closes_it() {
    // Goal: a backup admits no client connection. Method: a cluster broker of 2 shards, a
    // preamble without the admin flag on each shard.
    let mut mesh = Mesh::cluster(2);
    assert_eq!(mesh.states(), [BrokerState::Joining, BrokerState::Joining]);
    for shard in 0..2 {
        // An Error NotPrimary naming the state and the public URL, no Hello, then the close.
        let frames = mesh.open(shard, 1, 0);
        let [Frame::Error { code: ErrorCode::NotPrimary, message }] = frames.as_slice() else {
            panic!("expected one Error NotPrimary, got {frames:?}");
        };
        assert!(message.contains("backup in state joining"), "{message}");
        assert!(message.contains("amqp:tcp:vip:5672"), "{message}");
        assert!(mesh.closed.contains(&(shard, 1)));
        assert_eq!(mesh.shards[usize::from(shard)].counters().refused_not_primary, 1);
        assert_eq!(mesh.shards[usize::from(shard)].counters().protocol_errors, 0);
    }
}

#[test]
fn an_admin_connection_on_a_backup_reads_but_cannot_change_replicated_objects() {
    // Goal: admin connections are served for reading; every change of a replicated object is
    // refused with NotPrimary (the reference only warned). Method: an admin connection on shard 1
    // of a joining broker sends each kind of request.
    let mut mesh = Mesh::cluster(2);
    mesh.connect(1, 1, PREAMBLE_FLAG_ADMIN);
    // Reads are served.
    let frames = mesh.ask(1, 1, &Frame::QueueList { request: RequestId(1) });
    assert_eq!(frames, [Frame::QueueListReply { request: RequestId(1), queues: vec![] }]);
    let frames = mesh.ask(1, 1, &Frame::ExchangeList { request: RequestId(2) });
    assert!(matches!(frames.as_slice(), [Frame::ExchangeListReply { .. }]), "{frames:?}");
    let frames = mesh.ask(1, 1, &Frame::HaStatus { request: RequestId(3) });
    assert_eq!(
        frames,
        [Frame::HaStatusReply {
            request: RequestId(3),
            state: "joining".into(),
            epoch: 0,
            brokers_url: "amqp:tcp:127.0.0.1:1,tcp:127.0.0.1:2".into(),
            public_url: "amqp:tcp:vip:5672".into(),
            name: String::new(),
            ready_set: ringmq_core::frame::ReadySet::default(),
        }]
    );
    // Changes are refused, each naming the request.
    failed_not_primary(&mesh.ask(1, 1, &declare(4, "q")), "queue-declare");
    let exchange = Frame::ExchangeDeclare {
        request: RequestId(5),
        name: "x".into(),
        kind: ExchangeKind::Fanout,
        passive: false,
        arguments: vec![],
    };
    failed_not_primary(&mesh.ask(1, 1, &exchange), "exchange-declare");
    failed_not_primary(
        &mesh.ask(1, 1, &Frame::QueueDelete { request: RequestId(6), name: "q".into() }),
        "queue-delete",
    );
    failed_not_primary(&mesh.ask(1, 1, &Frame::QueuePurge { request: RequestId(7), name: "q".into() }), "queue-purge");
    let subscribe = Frame::Subscribe { request: RequestId(8), consumer: ConsumerId(1), queue: "q".into(), prefetch: 1 };
    failed_not_primary(&mesh.ask(1, 1, &subscribe), "subscribe");
    // A publish is confirmed as rejected with NotPrimary; nothing is stored.
    let message = Message { routing_key: Bytes::from_static(b"q"), ..Message::default() };
    let frames =
        mesh.ask(1, 1, &Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![message] });
    let [Frame::Confirm { ranges }] = frames.as_slice() else { panic!("expected a confirm, got {frames:?}") };
    assert!(
        matches!(&ranges[0].outcome, ConfirmOutcome::Rejected { code: ErrorCode::NotPrimary, reason } if reason.contains("publish")),
        "{ranges:?}"
    );
    // The connection stays open, and nothing was created.
    assert!(mesh.closed.is_empty());
    assert_eq!(mesh.ask(1, 1, &Frame::QueueList { request: RequestId(9) }).len(), 1);
}

#[test]
fn promotion_reaches_every_shard_before_its_ok_and_then_clients_are_served() {
    // Goal: promote joining -> recovering -> active through the coordinator, epoch 1, applied on
    // every shard before the Ok; afterwards plain clients connect and declare. Method: 3 shards,
    // the promote sent on shard 2 (not the coordinator).
    let mut mesh = Mesh::cluster(3);
    mesh.connect(2, 1, PREAMBLE_FLAG_ADMIN);
    let frames = mesh.ask(2, 1, &Frame::HaPromote { request: RequestId(1) });
    assert_eq!(frames, [Frame::Ok { request: RequestId(1) }]);
    // Every shard is active in epoch 1.
    assert_eq!(mesh.states(), [BrokerState::Active; 3]);
    assert!(mesh.shards.iter().all(|s| s.ha().epoch() == Epoch(1)));
    let frames = mesh.ask(2, 1, &Frame::HaStatus { request: RequestId(2) });
    assert!(
        matches!(frames.as_slice(), [Frame::HaStatusReply { state, epoch: 1, .. }] if state == "active"),
        "{frames:?}"
    );
    // A plain client is now served on every shard, and may declare.
    for shard in 0..3 {
        mesh.connect(shard, 10, 0);
    }
    assert_eq!(mesh.ask(1, 10, &declare(3, "q")), [Frame::Ok { request: RequestId(3) }]);
    // A second promotion is refused: already primary.
    let frames = mesh.ask(2, 1, &Frame::HaPromote { request: RequestId(4) });
    let [Frame::Failed { code: ErrorCode::PreconditionFailed, message, .. }] = frames.as_slice() else {
        panic!("{frames:?}")
    };
    assert!(message.contains("already primary"), "{message}");
    assert!(mesh.shards.iter().all(|s| s.ha().epoch() == Epoch(1)));
}

#[test]
fn a_standalone_broker_refuses_promotion_and_serves_everyone() {
    // Goal: without ha-cluster the broker is standalone: clients are served, promotion is
    // refused with the reason. Method: 2 shards, default HA settings.
    let mut mesh = Mesh::new(2, HaSettings::default());
    assert_eq!(mesh.states(), [BrokerState::Standalone; 2]);
    mesh.connect(1, 1, 0);
    assert_eq!(mesh.ask(1, 1, &declare(1, "q")), [Frame::Ok { request: RequestId(1) }]);
    let frames = mesh.ask(1, 1, &Frame::HaPromote { request: RequestId(2) });
    let [Frame::Failed { code: ErrorCode::PreconditionFailed, message, .. }] = frames.as_slice() else {
        panic!("{frames:?}")
    };
    assert!(message.contains("not in a cluster: ha-cluster is off"), "{message}");
    assert_eq!(mesh.states(), [BrokerState::Standalone; 2]);
}

#[test]
fn promotion_on_a_single_shard_broker_answers_at_once() {
    // Goal: with no other shard to wait for, the coordinator answers after applying locally.
    // Method: 1 shard, promote from an admin connection.
    let mut mesh = Mesh::cluster(1);
    mesh.connect(0, 1, PREAMBLE_FLAG_ADMIN);
    assert_eq!(mesh.ask(0, 1, &Frame::HaPromote { request: RequestId(1) }), [Frame::Ok { request: RequestId(1) }]);
    assert_eq!(mesh.states(), [BrokerState::Active]);
}

#[test]
fn only_a_primary_admits_a_backup_link_and_it_carries_only_heartbeats() {
    // Goal: the admission rule for backup links, in the shard. Method: a backup-link preamble on
    // a standalone broker, on a joining one, then on the same broker once promoted; on the
    // admitted link a heartbeat is accepted and anything else is an UnexpectedFrame error.
    let mut standalone = Mesh::standalone(2);
    let frames = standalone.open(1, 1, PREAMBLE_FLAG_BACKUP);
    assert!(matches!(frames.as_slice(), [Frame::Error { code: ErrorCode::NotPrimary, .. }]), "{frames:?}");
    assert_eq!(standalone.shards[1].counters().backup_links_refused_not_primary, 1);
    let mut mesh = Mesh::cluster(2);
    // A joining backup refuses it, naming its state, and closes it.
    let frames = mesh.open(1, 1, PREAMBLE_FLAG_BACKUP | PREAMBLE_FLAG_ADMIN);
    let [Frame::Error { code: ErrorCode::NotPrimary, message }] = frames.as_slice() else {
        panic!("expected one Error NotPrimary, got {frames:?}");
    };
    assert!(message.contains("HA state joining"), "{message}");
    assert!(mesh.closed.contains(&(1, 1)));
    assert_eq!(mesh.shards[1].counters().backup_links_refused_not_primary, 1);
    assert_eq!(mesh.shards[1].counters().refused_not_primary, 0);
    // Promoted: the link is admitted with hello, and marked for the transport's heartbeats.
    mesh.connect(0, 2, PREAMBLE_FLAG_ADMIN);
    assert_eq!(mesh.ask(0, 2, &Frame::HaPromote { request: RequestId(1) }), [Frame::Ok { request: RequestId(1) }]);
    mesh.connect(1, 3, PREAMBLE_FLAG_BACKUP);
    assert!(mesh.shards[1].is_backup_link(ConnId(3)));
    assert!(!mesh.shards[0].is_backup_link(ConnId(2)));
    // Heartbeats are accepted silently; a client request is not.
    assert_eq!(mesh.ask(1, 3, &Frame::Heartbeat), []);
    let frames = mesh.ask(1, 3, &declare(2, "q"));
    let [Frame::Error { code: ErrorCode::UnexpectedFrame, message }] = frames.as_slice() else {
        panic!("expected one Error UnexpectedFrame, got {frames:?}");
    };
    assert!(message.contains("a backup link may send only heartbeat; got queue-declare"), "{message}");
}

#[test]
fn a_backup_link_of_another_link_version_is_refused_naming_both_versions() {
    // Goal: brokers whose replication records differ refuse each other's links at the preamble
    // instead of misreading records: a backup link must announce LINK_VERSION (and is answered
    // hello with it), a client PROTOCOL_VERSION. Method: a promoted broker of 1 shard; preambles
    // with each flag and each version.
    let mut mesh = Mesh::cluster(1);
    mesh.connect(0, 1, PREAMBLE_FLAG_ADMIN);
    assert_eq!(mesh.ask(0, 1, &Frame::HaPromote { request: RequestId(1) }), [Frame::Ok { request: RequestId(1) }]);
    let mut open = |conn: u32, version: u16, flags: u16| {
        mesh.shards[0].handle_accept(ConnId(conn));
        let mut bytes = bytes::BytesMut::new();
        encode_preamble(Preamble { version, flags }, &mut bytes);
        mesh.feed(0, conn, bytes);
        mesh.take(0, conn)
    };
    // A backup of link version 1 (records without levels) is refused.
    let frames = open(2, 1, PREAMBLE_FLAG_BACKUP);
    let expected = format!(
        "replication link version 1 is not supported; this broker speaks {LINK_VERSION} (the brokers of a cluster \
         must run releases with the same link version)"
    );
    assert_eq!(frames, [Frame::Error { code: ErrorCode::UnsupportedVersion, message: expected }]);
    // The current link version is admitted, and hello answers with it.
    let frames = open(3, LINK_VERSION, PREAMBLE_FLAG_BACKUP);
    assert!(matches!(frames.as_slice(), [Frame::Hello { version: LINK_VERSION, .. }]), "{frames:?}");
    // A client announcing the link version is refused with the protocol's version.
    assert_ne!(LINK_VERSION, PROTOCOL_VERSION);
    let frames = open(4, LINK_VERSION, 0);
    let expected = format!("protocol version {LINK_VERSION} is not supported; this broker speaks {PROTOCOL_VERSION}");
    assert_eq!(frames, [Frame::Error { code: ErrorCode::UnsupportedVersion, message: expected }]);
}
