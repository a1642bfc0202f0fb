//! State-machine tests of exchange and binding replication on the shards (`support::Mesh`): no
//! sockets, no threads, no clock.
//!
//! What is checked: on a primary, shard 0 reports the replicated configuration in the
//! coordinator's order (every replicated queue whichever shard owns it, exchanges at their level,
//! bindings only when both ends are replicated, unbinds, deletes; never the built-ins, nothing for
//! level `none`), and the owner still reports its own queue; shard 0's snapshot describes queues,
//! then exchanges, then bindings; a backup applies configuration records on shard 0 to every
//! shard's routing, idempotently, refuses clients' changes, survives misordered records, and
//! `clear_replicas` on shard 0 removes replicated exchanges and bindings before a resync; a
//! promoted backup routes a publish through a replicated binding and reports new bindings of
//! replicated objects.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::frame::{
    Binding, ConfirmOutcome, ConfirmRange, ErrorCode, ExchangeInfo, ExchangeKind, Frame, Message, QueueOptions,
    PREAMBLE_FLAG_ADMIN,
};
use ringmq_core::ha_view::HaSettings;
use ringmq_core::ids::{RequestId, Seq};
use ringmq_core::replication::{Record, ReplicationEvent};
use ringmq_core::replication_level::ReplicationLevel::{self, All, Configuration};
use support::{ha_settings, name_on, promote, replication_events, Mesh};

/// The admin connection on every shard.
const ADMIN: u32 = 99;
/// A client connection.
const CLIENT: u32 = 1;

/// A joining backup of `count` shards with an admin connection on every shard.
fn backup(count: u16) -> Mesh {
    let mut mesh = Mesh::new(count, ha_settings(true, ReplicationLevel::None));
    for shard in 0..count {
        mesh.connect(shard, ADMIN, PREAMBLE_FLAG_ADMIN);
    }
    mesh
}

/// A promoted primary of `count` shards with `ha-replicate` = `replicate` and a client on shard 0.
fn primary(count: u16, replicate: ReplicationLevel) -> Mesh {
    let mut mesh = Mesh::new(count, ha_settings(true, replicate));
    mesh.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
    promote(&mut mesh, ADMIN);
    assert_eq!(mesh.states(), vec![BrokerState::Active; usize::from(count)]);
    mesh.connect(0, CLIENT, 0);
    mesh
}

/// Sends `frame` from the client on shard 0; it must be answered `Ok`.
fn ok(mesh: &mut Mesh, frame: Frame) {
    let frames = mesh.ask(0, CLIENT, &frame);
    assert_eq!(frames, [Frame::Ok { request: RequestId(1) }], "{frame:?}");
}

fn declare_queue(name: &str, arguments: &[(&str, &str)]) -> Frame {
    let arguments = arguments.iter().map(|&(n, v)| (n.to_owned(), v.to_owned())).collect();
    Frame::QueueDeclare { request: RequestId(1), name: name.into(), options: QueueOptions::default(), arguments }
}

fn declare_exchange(name: &str, kind: ExchangeKind, arguments: &[(&str, &str)]) -> Frame {
    let arguments = arguments.iter().map(|&(n, v)| (n.to_owned(), v.to_owned())).collect();
    Frame::ExchangeDeclare { request: RequestId(1), name: name.into(), kind, passive: false, arguments }
}

fn binding(exchange: &str, queue: &str, key: &str) -> Binding {
    Binding { exchange: exchange.into(), queue: queue.into(), key: key.into() }
}

fn bind(exchange: &str, queue: &str, key: &str) -> Frame {
    Frame::Bind { request: RequestId(1), binding: binding(exchange, queue, key) }
}

fn unbind(exchange: &str, queue: &str, key: &str) -> Frame {
    Frame::Unbind { request: RequestId(1), binding: binding(exchange, queue, key) }
}

fn queue_created(name: &str, level: ReplicationLevel) -> ReplicationEvent {
    ReplicationEvent::QueueCreated { name: Arc::from(name), options: QueueOptions::default(), level }
}

fn queue_deleted(name: &str) -> ReplicationEvent {
    ReplicationEvent::QueueDeleted { name: Arc::from(name) }
}

fn exchange_created(name: &str, kind: ExchangeKind, level: ReplicationLevel) -> ReplicationEvent {
    ReplicationEvent::ExchangeCreated { name: Arc::from(name), kind, level }
}

fn bound(exchange: &str, queue: &str, key: &str) -> ReplicationEvent {
    ReplicationEvent::Bound { exchange: Arc::from(exchange), queue: Arc::from(queue), key: Arc::from(key) }
}

fn unbound(exchange: &str, queue: &str, key: &str) -> ReplicationEvent {
    ReplicationEvent::Unbound { exchange: Arc::from(exchange), queue: Arc::from(queue), key: Arc::from(key) }
}

/// The records a backup's shard 0 would get for these events (what the stream sends).
fn records(events: &[ReplicationEvent]) -> Vec<Record> {
    events
        .iter()
        .map(|event| match event.clone() {
            ReplicationEvent::QueueCreated { name, options, level } => {
                Record::QueueCreated { name: name.to_string(), options, level }
            }
            ReplicationEvent::QueueDeleted { name } => Record::QueueDeleted { name: name.to_string() },
            ReplicationEvent::ExchangeCreated { name, kind, level } => {
                Record::ExchangeCreated { name: name.to_string(), kind, level }
            }
            ReplicationEvent::ExchangeDeleted { name } => Record::ExchangeDeleted { name: name.to_string() },
            ReplicationEvent::Bound { exchange, queue, key } => {
                Record::Bound { exchange: exchange.to_string(), queue: queue.to_string(), key: key.to_string() }
            }
            ReplicationEvent::Unbound { exchange, queue, key } => {
                Record::Unbound { exchange: exchange.to_string(), queue: queue.to_string(), key: key.to_string() }
            }
            other => panic!("not a configuration event: {other:?}"),
        })
        .collect()
}

/// The exchanges shard `shard` routes with (not the built-ins), as (name, kind, bindings).
fn exchanges_on(mesh: &mut Mesh, shard: u16) -> Vec<(String, ExchangeKind, u32)> {
    let frames = mesh.ask(shard, ADMIN, &Frame::ExchangeList { request: RequestId(7) });
    let [Frame::ExchangeListReply { exchanges, .. }] = frames.as_slice() else { panic!("{frames:?}") };
    exchanges
        .iter()
        .filter(|ExchangeInfo { name, .. }| !name.is_empty() && !name.starts_with("amq."))
        .map(|info| (info.name.clone(), info.kind, info.bindings))
        .collect()
}

/// Every shard's exchanges, which must agree; returns them.
fn exchanges_everywhere(mesh: &mut Mesh) -> Vec<(String, ExchangeKind, u32)> {
    let first = exchanges_on(mesh, 0);
    for shard in 1..mesh.shards.len() as u16 {
        assert_eq!(exchanges_on(mesh, shard), first, "shard {shard} disagrees with shard 0");
    }
    first
}

fn message(key: &str) -> Message {
    Message { routing_key: Bytes::from(key.to_owned()), body: Bytes::from_static(b"m"), ..Message::default() }
}

#[test]
fn shard_0_reports_the_replicated_configuration_in_the_coordinators_order() {
    // Goal: shard 0 reports replicated exchanges and bindings, and every replicated queue's
    // creation and deletion (also one shard 1 owns, which shard 1 reports too), in the order they
    // were made; nothing for level none, built-in exchanges, bindings with an unreplicated end, a
    // repeated bind; deleting a queue or an exchange reports no unbinds. Method: 2 shards,
    // ha-replicate configuration.
    let mut mesh = primary(2, Configuration);
    let queue = name_on(1, 2, "q");
    let local_queue = name_on(0, 2, "local");
    ok(&mut mesh, declare_queue(&queue, &[]));
    ok(&mut mesh, declare_queue(&local_queue, &[("replicate", "none")]));
    ok(&mut mesh, declare_exchange("x", ExchangeKind::Topic, &[]));
    ok(&mut mesh, declare_exchange("local-x", ExchangeKind::Direct, &[("qpid.replicate", "none")]));
    ok(&mut mesh, declare_exchange("amq.topic", ExchangeKind::Topic, &[("qpid.replicate", "all")]));
    // A redeclare with another level changes nothing, and reports nothing.
    ok(&mut mesh, declare_exchange("x", ExchangeKind::Topic, &[("qpid.replicate", "none")]));
    ok(&mut mesh, bind("x", &queue, "a.*"));
    ok(&mut mesh, bind("x", &queue, "a.*"));
    ok(&mut mesh, bind("x", &local_queue, "a.*"));
    ok(&mut mesh, bind("local-x", &queue, "k"));
    ok(&mut mesh, bind("amq.topic", &queue, "#"));
    ok(&mut mesh, unbind("x", &queue, "a.*"));
    ok(&mut mesh, unbind("x", &local_queue, "a.*"));
    ok(&mut mesh, bind("x", &queue, "b"));
    ok(&mut mesh, Frame::QueueDelete { request: RequestId(1), name: queue.clone() });
    ok(&mut mesh, Frame::ExchangeDelete { request: RequestId(1), name: "x".into() });
    ok(&mut mesh, Frame::ExchangeDelete { request: RequestId(1), name: "local-x".into() });
    let [shard_0, shard_1] = <[_; 2]>::try_from(replication_events(&mut mesh)).unwrap();
    assert_eq!(
        shard_0,
        [
            queue_created(&queue, Configuration),
            exchange_created("x", ExchangeKind::Topic, Configuration),
            bound("x", &queue, "a.*"),
            unbound("x", &queue, "a.*"),
            bound("x", &queue, "b"),
            queue_deleted(&queue),
            ReplicationEvent::ExchangeDeleted { name: Arc::from("x") },
        ]
    );
    assert_eq!(shard_1, [queue_created(&queue, Configuration), queue_deleted(&queue)]);
}

#[test]
fn a_queue_shard_0_owns_is_reported_once_and_nothing_comes_from_a_backup() {
    // Goal: a queue owned by shard 0 is reported once (its owner's event serves both streams);
    // a broker that is not a primary reports no configuration.
    let mut mesh = primary(2, All);
    let queue = name_on(0, 2, "own");
    ok(&mut mesh, declare_queue(&queue, &[]));
    ok(&mut mesh, declare_exchange("x", ExchangeKind::Fanout, &[]));
    ok(&mut mesh, bind("x", &queue, ""));
    assert_eq!(
        replication_events(&mut mesh),
        [
            vec![queue_created(&queue, All), exchange_created("x", ExchangeKind::Fanout, All), bound("x", &queue, "")],
            vec![]
        ]
    );

    let mut standalone = Mesh::new(2, HaSettings { replicate: All, ..HaSettings::default() });
    standalone.connect(0, CLIENT, 0);
    ok(&mut standalone, declare_queue("q", &[]));
    ok(&mut standalone, declare_exchange("x", ExchangeKind::Fanout, &[]));
    ok(&mut standalone, bind("x", "q", ""));
    assert!(replication_events(&mut standalone).iter().all(Vec::is_empty));
}

#[test]
fn shard_0_snapshot_lists_queues_then_exchanges_then_bindings() {
    // Goal: shard 0's catch-up snapshot has its own queues (with messages), then every other
    // replicated queue, then every replicated exchange by name, then every replicated binding by
    // queue; never level none or built-ins. Another shard's snapshot has only its own queues.
    let mut mesh = primary(2, All);
    let q0 = name_on(0, 2, "q");
    let q1 = name_on(1, 2, "q");
    let local = name_on(1, 2, "local");
    ok(&mut mesh, declare_queue(&q0, &[]));
    ok(&mut mesh, declare_queue(&q1, &[("replicate", "configuration")]));
    ok(&mut mesh, declare_queue(&local, &[("replicate", "none")]));
    ok(&mut mesh, declare_exchange("b-x", ExchangeKind::Fanout, &[]));
    ok(&mut mesh, declare_exchange("a-x", ExchangeKind::Direct, &[("replicate", "configuration")]));
    ok(&mut mesh, declare_exchange("none-x", ExchangeKind::Direct, &[("replicate", "none")]));
    ok(&mut mesh, bind("a-x", &q1, "k"));
    ok(&mut mesh, bind("b-x", &q0, ""));
    ok(&mut mesh, bind("a-x", &local, "k"));
    ok(&mut mesh, bind("none-x", &q0, "k"));
    ok(&mut mesh, bind("amq.direct", &q1, "k"));
    let mut snapshot = Vec::new();
    mesh.shards[0].replication_snapshot(&mut snapshot);
    assert_eq!(
        snapshot,
        [
            queue_created(&q0, All),
            queue_created(&q1, Configuration),
            exchange_created("a-x", ExchangeKind::Direct, Configuration),
            exchange_created("b-x", ExchangeKind::Fanout, All),
            bound("b-x", &q0, ""),
            bound("a-x", &q1, "k"),
        ]
    );
    let mut snapshot = Vec::new();
    mesh.shards[1].replication_snapshot(&mut snapshot);
    assert_eq!(snapshot, [queue_created(&q1, Configuration)]);
}

#[test]
fn a_backup_applies_configuration_on_every_shard_and_a_resync_leaves_exactly_the_primarys() {
    // Goal: configuration records applied on shard 0 reach every shard's routing, idempotently;
    // clients' changes stay refused; a bind that names a missing queue is counted, not a panic;
    // configuration records on other shards are ignored; clear_replicas on shard 0 deletes every
    // replicated exchange (and binding) so that a snapshot leaves exactly the primary's; promoted,
    // the backup routes through the replicated binding and reports new bindings.
    // Method: a primary of 3 shards makes the events, a backup of 3 shards applies them.
    let mut primary = primary(3, All);
    let queue = name_on(2, 3, "orders");
    ok(&mut primary, declare_queue(&queue, &[]));
    ok(&mut primary, declare_exchange("x", ExchangeKind::Topic, &[]));
    ok(&mut primary, declare_exchange("gone", ExchangeKind::Direct, &[]));
    ok(&mut primary, bind("x", &queue, "eu.#"));
    ok(&mut primary, bind("x", &queue, "old"));
    ok(&mut primary, bind("gone", &queue, "k"));
    ok(&mut primary, declare_queue("stale", &[]));
    ok(&mut primary, bind("x", "stale", "s"));
    let all = replication_events(&mut primary);
    let mut backup = backup(3);
    // The owner's stream and shard 0's stream, each applied twice (a reconnect resends).
    for _ in 0..2 {
        for record in records(&all[2]) {
            backup.shards[2].apply_replica(record);
        }
        for record in records(&all[0]) {
            backup.shards[0].apply_replica(record);
        }
        backup.settle();
    }
    assert_eq!(
        exchanges_everywhere(&mut backup),
        [("gone".to_string(), ExchangeKind::Direct, 1), ("x".to_string(), ExchangeKind::Topic, 3)]
    );
    // A client's change is refused on a backup.
    let refused = backup.ask(0, ADMIN, &bind("x", &queue, "us"));
    assert!(matches!(refused.as_slice(), [Frame::Failed { code: ErrorCode::NotPrimary, .. }]), "{refused:?}");
    // Configuration records on a shard other than 0 are ignored and counted.
    let ignored = backup.shards[1].counters().replica_records_ignored;
    backup.shards[1].apply_replica(Record::ExchangeCreated {
        name: "stray".into(),
        kind: ExchangeKind::Direct,
        level: ReplicationLevel::All,
    });
    assert_eq!(backup.shards[1].counters().replica_records_ignored, ignored + 1);
    // A bind naming a queue that does not exist is refused by routing and counted.
    backup.shards[0].apply_replica(Record::Bound { exchange: "x".into(), queue: "missing".into(), key: "k".into() });
    backup.settle();
    assert_eq!(backup.shards[0].counters().own_changes_refused, 1);

    // While the backup is away: "gone" is deleted, a binding removed, another exchange made.
    ok(&mut primary, Frame::ExchangeDelete { request: RequestId(1), name: "gone".into() });
    ok(&mut primary, unbind("x", &queue, "old"));
    ok(&mut primary, declare_exchange("new", ExchangeKind::Fanout, &[]));
    ok(&mut primary, bind("new", &queue, ""));
    ok(&mut primary, Frame::QueueDelete { request: RequestId(1), name: "stale".into() });
    replication_events(&mut primary);
    // The resync: clear, then the primary's snapshot.
    backup.shards[0].clear_replicas();
    let mut snapshot = Vec::new();
    primary.shards[0].replication_snapshot(&mut snapshot);
    for record in records(&snapshot) {
        backup.shards[0].apply_replica(record);
    }
    backup.settle();
    assert_eq!(
        exchanges_everywhere(&mut backup),
        [("new".to_string(), ExchangeKind::Fanout, 1), ("x".to_string(), ExchangeKind::Topic, 1)]
    );
    // The queue deleted while away left routing: a bind to it is refused.
    backup.shards[0].apply_replica(Record::Bound { exchange: "x".into(), queue: "stale".into(), key: "s".into() });
    backup.settle();
    assert_eq!(backup.shards[0].counters().own_changes_refused, 2);

    // Promoted: a publish from any shard routes through the replicated binding.
    promote(&mut backup, ADMIN);
    replication_events(&mut backup);
    backup.connect(1, CLIENT, 0);
    let publish = Frame::Publish { exchange: "x".into(), first_seq: Seq(0), messages: vec![message("eu.fr")] };
    let confirm = backup.ask(1, CLIENT, &publish);
    let stored = ConfirmRange { first: Seq(0), last: Seq(0), outcome: ConfirmOutcome::Stored };
    assert_eq!(confirm, [Frame::Confirm { ranges: vec![stored] }]);
    // Replicated objects stay replicated on the new primary: a new binding is reported.
    let frames = backup.ask(1, CLIENT, &bind("x", &queue, "us"));
    assert_eq!(frames, [Frame::Ok { request: RequestId(1) }]);
    assert_eq!(replication_events(&mut backup)[0], [bound("x", &queue, "us")]);
}

#[test]
fn an_exchange_recreated_with_another_kind_is_replaced_on_the_backup() {
    // Goal: an ExchangeCreated record for an exchange held with another kind replaces it (its
    // bindings go with the old one); unbound and deleted records apply, and repeat harmlessly.
    let mut backup = backup(2);
    let queue = name_on(1, 2, "q");
    backup.shards[1].apply_replica(Record::QueueCreated {
        name: queue.clone(),
        options: QueueOptions::default(),
        level: ReplicationLevel::All,
    });
    let steps = [
        Record::QueueCreated { name: queue.clone(), options: QueueOptions::default(), level: ReplicationLevel::All },
        Record::ExchangeCreated { name: "x".into(), kind: ExchangeKind::Direct, level: ReplicationLevel::All },
        Record::Bound { exchange: "x".into(), queue: queue.clone(), key: "a".into() },
        Record::Bound { exchange: "x".into(), queue: queue.clone(), key: "b".into() },
        Record::Unbound { exchange: "x".into(), queue: queue.clone(), key: "a".into() },
        Record::Unbound { exchange: "x".into(), queue: queue.clone(), key: "a".into() },
    ];
    for record in steps {
        backup.shards[0].apply_replica(record);
    }
    backup.settle();
    assert_eq!(exchanges_everywhere(&mut backup), [("x".to_string(), ExchangeKind::Direct, 1)]);
    backup.shards[0].apply_replica(Record::ExchangeCreated {
        name: "x".into(),
        kind: ExchangeKind::Fanout,
        level: ReplicationLevel::All,
    });
    backup.settle();
    assert_eq!(exchanges_everywhere(&mut backup), [("x".to_string(), ExchangeKind::Fanout, 0)]);
    for _ in 0..2 {
        backup.shards[0].apply_replica(Record::ExchangeDeleted { name: "x".into() });
    }
    backup.settle();
    assert_eq!(exchanges_everywhere(&mut backup), []);
    // Deleting the queue through shard 0's stream removes it from routing.
    backup.shards[0].apply_replica(Record::ExchangeCreated {
        name: "y".into(),
        kind: ExchangeKind::Fanout,
        level: ReplicationLevel::All,
    });
    backup.shards[0].apply_replica(Record::Bound { exchange: "y".into(), queue: queue.clone(), key: String::new() });
    backup.shards[0].apply_replica(Record::QueueDeleted { name: queue.clone() });
    backup.settle();
    assert_eq!(exchanges_everywhere(&mut backup), [("y".to_string(), ExchangeKind::Fanout, 0)]);
}

#[test]
fn a_promoted_backup_replicates_each_object_at_the_level_the_primary_gave_it() {
    // Goal: a backup creates each replica queue and exchange at the level its record carries, so
    // that once promoted it replicates exactly what the old primary did: a `configuration` queue
    // as an object only (no message events), an `all` queue with its messages, exchanges at their
    // levels and bindings by `binding_replicated`. Before records carried the level, every replica
    // took `all` and the promoted backup reported the `configuration` queue's messages.
    // Method: a primary of 2 shards with ha-replicate all declares a `configuration` queue (shard
    // 1), an `all` queue (shard 0), a `configuration` and an `all` exchange, and binds them; one
    // backup applies the live events (each owner's stream and shard 0's), another the catch-up
    // snapshots; each is promoted, then publishes to both queues and binds anew.
    let mut primary = primary(2, All);
    let config_queue = name_on(1, 2, "settings");
    let all_queue = name_on(0, 2, "orders");
    ok(&mut primary, declare_queue(&config_queue, &[("qpid.replicate", "configuration")]));
    ok(&mut primary, declare_queue(&all_queue, &[]));
    ok(&mut primary, declare_exchange("config-x", ExchangeKind::Fanout, &[("replicate", "configuration")]));
    ok(&mut primary, declare_exchange("all-x", ExchangeKind::Fanout, &[]));
    ok(&mut primary, bind("config-x", &config_queue, ""));
    ok(&mut primary, bind("all-x", &all_queue, ""));
    let live = replication_events(&mut primary);
    let snapshots: Vec<Vec<ReplicationEvent>> = primary
        .shards
        .iter()
        .map(|shard| {
            let mut out = Vec::new();
            shard.replication_snapshot(&mut out);
            out
        })
        .collect();
    // What the old primary's shard 0 would describe to a backup: every object at its level.
    let expected_snapshot = [
        queue_created(&all_queue, All),
        queue_created(&config_queue, Configuration),
        exchange_created("all-x", ExchangeKind::Fanout, All),
        exchange_created("config-x", ExchangeKind::Fanout, Configuration),
        bound("all-x", &all_queue, ""),
        bound("config-x", &config_queue, ""),
    ];
    assert_eq!(snapshots[0], expected_snapshot);
    for (source, events) in [("live events", live), ("catch-up snapshots", snapshots)] {
        let mut backup = backup(2);
        // Shard 1's stream first: the owner creates its queue, as it may before shard 0's.
        for record in records(&events[1]) {
            backup.shards[1].apply_replica(record);
        }
        for record in records(&events[0]) {
            backup.shards[0].apply_replica(record);
        }
        backup.settle();
        assert_eq!(
            exchanges_everywhere(&mut backup),
            [("all-x".to_string(), ExchangeKind::Fanout, 1), ("config-x".to_string(), ExchangeKind::Fanout, 1)],
            "{source}"
        );

        // Promoted, it describes every object at the old primary's level.
        promote(&mut backup, ADMIN);
        assert!(replication_events(&mut backup).iter().all(Vec::is_empty), "{source}");
        let mut snapshot = Vec::new();
        backup.shards[0].replication_snapshot(&mut snapshot);
        assert_eq!(snapshot[..4], expected_snapshot[..4], "{source}");
        // Bindings go by queue: the backup's routing may hold its queues in another order.
        assert_eq!(snapshot.len(), expected_snapshot.len(), "{source}");
        assert!(expected_snapshot[4..].iter().all(|bound| snapshot[4..].contains(bound)), "{source}: {snapshot:?}");
        let mut snapshot = Vec::new();
        backup.shards[1].replication_snapshot(&mut snapshot);
        assert_eq!(snapshot, [queue_created(&config_queue, Configuration)], "{source}");

        // A message to each queue, through each exchange: only the `all` queue's is reported.
        backup.connect(0, CLIENT, 0);
        for (seq, exchange) in [(Seq(0), "config-x"), (Seq(1), "all-x")] {
            let publish = Frame::Publish { exchange: exchange.into(), first_seq: seq, messages: vec![message("k")] };
            let confirm = backup.ask(0, CLIENT, &publish);
            let stored = ConfirmRange { first: seq, last: seq, outcome: ConfirmOutcome::Stored };
            assert_eq!(confirm, [Frame::Confirm { ranges: vec![stored] }], "{source}: {exchange}");
        }
        let [on_0, on_1] = <[_; 2]>::try_from(replication_events(&mut backup)).unwrap();
        assert!(on_1.is_empty(), "{source}: the configuration queue's message was reported: {on_1:?}");
        assert!(
            matches!(on_0.as_slice(), [ReplicationEvent::Enqueued { queue, .. }] if **queue == *all_queue),
            "{source}: {on_0:?}"
        );

        // Bindings follow binding_replicated on the levels the records carried: a new binding
        // between the replicated objects is reported, one to a queue of level none is not.
        let local = name_on(1, 2, "local");
        ok(&mut backup, declare_queue(&local, &[("replicate", "none")]));
        ok(&mut backup, bind("config-x", &all_queue, "k"));
        ok(&mut backup, bind("config-x", &local, "k"));
        assert_eq!(replication_events(&mut backup), [vec![bound("config-x", &all_queue, "k")], vec![]], "{source}");
    }
}
