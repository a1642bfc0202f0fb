//! State-machine tests of the shard's side of HA replication: several shards wired in memory
//! (`support::Mesh`), clients as byte buffers. No sockets, no threads, no clock.
//!
//! What is checked: events come only from a primary of an HA cluster; levels come from the
//! declare's arguments, the `ha-replicate` default and the temporary-queue rule, and a bad level
//! fails the declare; an enqueue into an `all` queue carries a hold and its confirm waits for
//! `handle_holds_released` (producer on the queue's shard or another); acks and purges report
//! dequeues at the messages' positions, in order with the enqueues; the catch-up snapshot; a
//! backup applies records (queue in routing on every shard, messages at the primary's positions);
//! promotion moves positions into the new epoch; the link's state transitions and epochs.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use ringmq_core::broker_state::{BrokerState, TransitionCause};
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{
    ConfirmOutcome, ConfirmRange, ErrorCode, ExchangeKind, Frame, Message, QueueOptions, Settlement, TagRange,
    PREAMBLE_FLAG_ADMIN,
};
use ringmq_core::ids::{ConnId, ConsumerId, RequestId, Seq, ShardId, Tag};
use ringmq_core::replication::{Hold, Position, Record, ReplicationEvent};
use ringmq_core::replication_level::ReplicationLevel::{self, All, Configuration};
use support::{declare_with, ha_settings, name_on, promote, replication_events, Mesh};

/// The admin connection used to promote, on shard 0.
const ADMIN: u32 = 99;

/// The first position of a queue created or promoted in epoch 1.
const EPOCH_1: u64 = 1 << 40;

/// A joining backup of `count` shards with an admin connection on shard 0.
fn backup(count: u16) -> Mesh {
    let mut mesh = Mesh::new(count, ha_settings(true, ReplicationLevel::None));
    mesh.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
    mesh
}

/// A promoted (active) primary of `count` shards with `ha-replicate` = `replicate`.
fn primary(count: u16, replicate: ReplicationLevel) -> Mesh {
    let mut mesh = Mesh::new(count, ha_settings(true, replicate));
    mesh.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
    promote(&mut mesh, ADMIN);
    assert_eq!(mesh.states(), vec![BrokerState::Active; usize::from(count)]);
    mesh
}

fn declare_args(request: u32, name: &str, options: QueueOptions, arguments: &[(&str, &str)]) -> Frame {
    let Frame::QueueDeclare { request, name, options, .. } = declare_with(request, name, options) else {
        unreachable!()
    };
    let arguments = arguments.iter().map(|&(n, v)| (n.to_owned(), v.to_owned())).collect();
    Frame::QueueDeclare { request, name, options, arguments }
}

fn declare_ok(mesh: &mut Mesh, shard: u16, conn: u32, name: &str, arguments: &[(&str, &str)]) {
    let frames = mesh.ask(shard, conn, &declare_args(1, name, QueueOptions::default(), arguments));
    assert_eq!(frames, [Frame::Ok { request: RequestId(1) }], "declare {name}");
}

fn message(key: &str, body: &'static str) -> Message {
    Message {
        routing_key: Bytes::from(key.to_owned()),
        body: Bytes::from_static(body.as_bytes()),
        ..Message::default()
    }
}

fn publish(mesh: &mut Mesh, shard: u16, conn: u32, first_seq: u64, queue: &str, bodies: &[&'static str]) -> Vec<Frame> {
    let messages = bodies.iter().map(|body| message(queue, body)).collect();
    mesh.ask(shard, conn, &Frame::Publish { exchange: String::new(), first_seq: Seq(first_seq), messages })
}

fn stored(first: u64, last: u64) -> Frame {
    Frame::Confirm {
        ranges: vec![ConfirmRange { first: Seq(first), last: Seq(last), outcome: ConfirmOutcome::Stored }],
    }
}

fn created(name: &str, level: ReplicationLevel) -> ReplicationEvent {
    ReplicationEvent::QueueCreated { name: Arc::from(name), options: QueueOptions::default(), level }
}

fn enqueued(queue: &str, position: u64, body: &'static str, hold: Option<Hold>) -> ReplicationEvent {
    enqueued_held(queue, position, body, hold, 0)
}

/// An `Enqueued` event whose publish took `holders` holds.
fn enqueued_held(queue: &str, position: u64, body: &'static str, hold: Option<Hold>, holders: u32) -> ReplicationEvent {
    let message = message(queue, body);
    ReplicationEvent::Enqueued { queue: Arc::from(queue), position: Position(position), message, hold, holders }
}

fn dequeued(queue: &str, position: u64) -> ReplicationEvent {
    ReplicationEvent::Dequeued { queue: Arc::from(queue), position: Position(position) }
}

fn depth(mesh: &mut Mesh, shard: u16, conn: u32, name: &str) -> Option<u64> {
    let frames = mesh.ask(shard, conn, &Frame::QueueList { request: RequestId(77) });
    let [Frame::QueueListReply { queues, .. }] = frames.as_slice() else { panic!("{frames:?}") };
    queues.iter().find(|q| q.name == name).map(|q| q.depth)
}

#[test]
fn events_come_only_from_a_primary_of_an_ha_cluster() {
    // Goal: a standalone broker (even with ha-replicate=all and the argument) and a backup make
    // no events; the same steps on a promoted primary do. Method: declare and publish on a
    // standalone broker; apply records on a backup; then promote it and publish.
    let mut standalone = Mesh::new(2, ha_settings(false, All));
    standalone.connect(1, 1, 0);
    declare_ok(&mut standalone, 1, 1, "q", &[("qpid.replicate", "all")]);
    assert_eq!(publish(&mut standalone, 1, 1, 0, "q", &["a"]), [stored(0, 0)]);
    assert!(replication_events(&mut standalone).iter().all(Vec::is_empty));

    let mut mesh = backup(2);
    let name = name_on(1, 2, "r");
    // The owner's stream and shard 0's configuration stream both announce the queue.
    mesh.shards[0].apply_replica(Record::QueueCreated {
        name: name.clone(),
        options: QueueOptions::default(),
        level: ReplicationLevel::All,
    });
    mesh.shards[1].apply_replica(Record::QueueCreated {
        name: name.clone(),
        options: QueueOptions::default(),
        level: ReplicationLevel::All,
    });
    let messages = vec![message(&name, "a")];
    mesh.shards[1].apply_replica(Record::Enqueued { queue: name.clone(), first_position: Position(1), messages });
    mesh.settle();
    assert!(replication_events(&mut mesh).iter().all(Vec::is_empty));
    // Promoted: a publish to the replica queue (level all) is reported by its owner.
    promote(&mut mesh, ADMIN);
    mesh.connect(0, 1, 0);
    assert_eq!(publish(&mut mesh, 0, 1, 0, &name, &["b"]), [stored(0, 0)]);
    assert_eq!(replication_events(&mut mesh), [vec![], vec![enqueued(&name, EPOCH_1, "b", None)]]);
}

#[test]
fn levels_come_from_the_argument_the_default_and_the_temporary_rule() {
    // Goal: the effective level decides which events a queue makes; a bad or conflicting level
    // fails the declare with InvalidArgument and creates nothing. Method: a primary of one shard
    // with ha-replicate=configuration, queues declared with each kind of argument.
    let mut mesh = primary(1, Configuration);
    mesh.connect(0, 1, 0);
    declare_ok(&mut mesh, 0, 1, "plain", &[]);
    declare_ok(&mut mesh, 0, 1, "none", &[("qpid.replicate", "none")]);
    declare_ok(&mut mesh, 0, 1, "all", &[("replicate", "all")]);
    let temporary = QueueOptions { exclusive: true, auto_delete: true, ..QueueOptions::default() };
    assert_eq!(mesh.ask(0, 1, &declare_args(1, "temp", temporary.clone(), &[])), [Frame::Ok { request: RequestId(1) }]);
    let asked = declare_args(1, "temp-all", temporary.clone(), &[("qpid.replicate", "all")]);
    assert_eq!(mesh.ask(0, 1, &asked), [Frame::Ok { request: RequestId(1) }]);
    let expected_temp = ReplicationEvent::QueueCreated { name: Arc::from("temp-all"), options: temporary, level: All };
    assert_eq!(
        replication_events(&mut mesh),
        [vec![created("plain", Configuration), created("all", All), expected_temp]]
    );
    // Only the `all` queue reports its messages.
    for queue in ["plain", "none", "all"] {
        publish(
            &mut mesh,
            0,
            1,
            ["plain", "none", "all"].iter().position(|q| *q == queue).unwrap() as u64,
            queue,
            &["m"],
        );
    }
    assert_eq!(replication_events(&mut mesh), [vec![enqueued("all", EPOCH_1, "m", None)]]);
    // A bad value and a conflict are refused, naming the problem; nothing is created.
    for (arguments, text) in [
        (
            vec![("qpid.replicate", "everything")],
            "argument qpid.replicate: replication level must be one of none, configuration, all; got 'everything'",
        ),
        (vec![("qpid.replicate", "all"), ("replicate", "none")], "arguments disagree on the replication level"),
    ] {
        let frames = mesh.ask(0, 1, &declare_args(2, "bad", QueueOptions::default(), &arguments));
        let [Frame::Failed { code: ErrorCode::InvalidArgument, message, .. }] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        assert!(message.starts_with(text), "{message}");
    }
    assert_eq!(depth(&mut mesh, 0, 1, "bad"), None);
    assert!(replication_events(&mut mesh).iter().all(Vec::is_empty));
    // Exchanges: a bad level is refused too; a good one is accepted.
    let exchange = |request, value: &str| Frame::ExchangeDeclare {
        request: RequestId(request),
        name: "x".into(),
        kind: ExchangeKind::Fanout,
        passive: false,
        arguments: vec![("qpid.replicate".into(), value.into())],
    };
    let frames = mesh.ask(0, 1, &exchange(3, "bogus"));
    assert!(matches!(frames.as_slice(), [Frame::Failed { code: ErrorCode::InvalidArgument, .. }]), "{frames:?}");
    assert_eq!(mesh.ask(0, 1, &exchange(4, "all")), [Frame::Ok { request: RequestId(4) }]);
}

#[test]
fn a_replicated_enqueue_holds_its_confirm_until_every_stream_released_it() {
    // Goal: with backup streams on the queue's shard, the Enqueued event carries the producer's
    // hold and the confirm waits for as many releases as streams, for a producer on the queue's
    // shard and one on another shard. Method: 2 shards, queue owned by shard 1, two streams.
    let mut mesh = primary(2, All);
    let name = name_on(1, 2, "held");
    mesh.connect(1, 1, 0);
    mesh.connect(0, 2, 0);
    declare_ok(&mut mesh, 1, 1, &name, &[]);
    assert_eq!(replication_events(&mut mesh)[1], [created(&name, All)]);
    mesh.shards[1].set_replica_holds(2);
    for (shard, conn) in [(1u16, 1u32), (0, 2)] {
        let frames = publish(&mut mesh, shard, conn, 10, &name, &["a", "b"]);
        assert_eq!(frames, [], "confirm released before the backups confirmed");
        let hold = |seq| Some(Hold { shard: ShardId(shard), conn: ConnId(conn), seq: Seq(seq) });
        let all = replication_events(&mut mesh);
        assert!(all[0].is_empty());
        let [ReplicationEvent::Enqueued { position: first, .. }, ReplicationEvent::Enqueued { position: second, .. }] =
            all[1].as_slice()
        else {
            panic!("{all:?}")
        };
        assert_eq!(second.0, first.0 + 1);
        assert_eq!(
            all[1],
            [enqueued_held(&name, first.0, "a", hold(10), 2), enqueued_held(&name, second.0, "b", hold(11), 2)]
        );
        // One stream confirmed both, the other only the second: nothing goes out (in order).
        let holds = [hold(10).unwrap(), hold(11).unwrap(), hold(11).unwrap()];
        mesh.shards[1].handle_holds_released(&holds);
        mesh.settle();
        assert_eq!(mesh.take(shard, conn), []);
        // The last release frees both.
        mesh.shards[1].handle_holds_released(&[hold(10).unwrap()]);
        mesh.settle();
        assert_eq!(mesh.take(shard, conn), [stored(10, 11)]);
    }
    // A release for a connection that closed is counted, never a panic.
    let frames = publish(&mut mesh, 0, 2, 12, &name, &["c"]);
    assert_eq!(frames, []);
    let gone = Hold { shard: ShardId(0), conn: ConnId(2), seq: Seq(12) };
    assert!(
        matches!(replication_events(&mut mesh)[1].as_slice(), [ReplicationEvent::Enqueued { hold: Some(h), .. }] if *h == gone)
    );
    mesh.shards[0].handle_closed(ConnId(2));
    mesh.settle();
    mesh.shards[1].handle_holds_released(&[gone, gone]);
    mesh.settle();
    assert_eq!(mesh.shards[0].counters().holds_released_to_closed_connection, 2);
    // Without streams, no hold: the confirm goes out at once.
    mesh.shards[1].set_replica_holds(0);
    assert_eq!(publish(&mut mesh, 1, 1, 12, &name, &["d"]), [stored(12, 12)]);
    assert!(matches!(replication_events(&mut mesh)[1].as_slice(), [ReplicationEvent::Enqueued { hold: None, .. }]));
}

/// The bodies of the `Deliver` frames among `frames`, in order.
fn delivered_bodies(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Deliver { messages, .. } => Some(messages.iter().map(|m| m.message.body.to_vec())),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_held_enqueue_is_delivered_only_once_replication_reports_its_position() {
    // Goal: "deliver only what the backups hold": with streams holding confirms, a message is not
    // delivered before `handle_replicated` reaches its position, is after, in order; without
    // streams it goes at once, and opens what was held before it; before the shell ever
    // reported, nothing is gated (nothing would open it). Method: one shard, producer and
    // consumer on it, holds set by hand, bounds fed by hand.
    let mut mesh = primary(1, All);
    mesh.connect(0, 1, 0);
    mesh.connect(0, 2, 0);
    declare_ok(&mut mesh, 0, 1, "q", &[]);
    let subscribe =
        Frame::Subscribe { request: RequestId(2), consumer: ConsumerId(1), queue: "q".into(), prefetch: 100 };
    assert!(matches!(mesh.ask(0, 2, &subscribe).as_slice(), [Frame::Ok { .. }]));
    replication_events(&mut mesh);
    mesh.shards[0].set_replica_holds(1);
    // Not wired yet: a held message is delivered at once (its confirm still waits).
    assert_eq!(publish(&mut mesh, 0, 1, 0, "q", &["early"]), []);
    assert_eq!(delivered_bodies(&mesh.take(0, 2)), [b"early".to_vec()]);
    // Wired: held messages wait for their position to be reported.
    assert!(!mesh.shards[0].handle_replicated(std::iter::empty()));
    assert_eq!(publish(&mut mesh, 0, 1, 1, "q", &["a", "b", "c"]), []);
    mesh.settle();
    assert_eq!(delivered_bodies(&mesh.take(0, 2)), Vec::<Vec<u8>>::new(), "delivered before the backups held it");
    let positions: Vec<Position> = replication_events(&mut mesh)[0]
        .iter()
        .filter_map(|event| match event {
            ReplicationEvent::Enqueued { position, .. } => Some(*position),
            _ => None,
        })
        .collect();
    assert_eq!(positions.len(), 4);
    // The backups hold a and b: those two go out, c waits.
    assert!(mesh.shards[0].handle_replicated([(Arc::from("q"), positions[2])]));
    mesh.settle();
    assert_eq!(delivered_bodies(&mesh.take(0, 2)), [b"a".to_vec(), b"b".to_vec()]);
    // A report for a queue that is gone is skipped.
    assert!(!mesh.shards[0].handle_replicated([(Arc::from("gone"), Position(1))]));
    // No stream any more: a new message is delivered at once, and with it everything before it.
    mesh.shards[0].set_replica_holds(0);
    // (Its confirm still waits behind the earlier, held ones.)
    assert_eq!(publish(&mut mesh, 0, 1, 4, "q", &["d"]), []);
    assert_eq!(delivered_bodies(&mesh.take(0, 2)), [b"c".to_vec(), b"d".to_vec()]);
}

#[test]
fn acks_and_purges_report_dequeues_at_the_messages_positions_in_order() {
    // Goal: the owner reports per queue: created, enqueues, then each ack and purge as a dequeue
    // of the right position, then deleted; a release reports nothing. Method: 2 shards, queue on
    // shard 0, consumer on shard 1.
    let mut mesh = primary(2, All);
    let name = name_on(0, 2, "acked");
    mesh.connect(1, 1, 0);
    declare_ok(&mut mesh, 1, 1, &name, &[]);
    assert_eq!(publish(&mut mesh, 1, 1, 0, &name, &["a", "b", "c", "d"]), [stored(0, 3)]);
    let subscribe =
        Frame::Subscribe { request: RequestId(2), consumer: ConsumerId(1), queue: name.clone(), prefetch: 2 };
    let frames = mesh.ask(1, 1, &subscribe);
    assert!(matches!(frames.as_slice(), [Frame::Ok { .. }, Frame::Deliver { .. }]), "{frames:?}");
    let settle = |settlement, first, last| Frame::Settle {
        consumer: ConsumerId(1),
        settlement,
        ranges: vec![TagRange { first: Tag(first), last: Tag(last) }],
    };
    // Ack b (tag 1), release a (tag 0): only b is a dequeue.
    mesh.send(1, 1, &settle(Settlement::Ack, 1, 1));
    mesh.send(1, 1, &settle(Settlement::Release, 0, 0));
    // Cancel so the rest stays ready, then purge and delete.
    mesh.ask(1, 1, &Frame::Cancel { request: RequestId(3), consumer: ConsumerId(1) });
    assert_eq!(
        mesh.ask(1, 1, &Frame::QueuePurge { request: RequestId(4), name: name.clone() }),
        [Frame::Ok { request: RequestId(4) }]
    );
    assert_eq!(
        mesh.ask(1, 1, &Frame::QueueDelete { request: RequestId(5), name: name.clone() }),
        [Frame::Ok { request: RequestId(5) }]
    );
    let p = EPOCH_1;
    let expected = vec![
        created(&name, All),
        enqueued(&name, p, "a", None),
        enqueued(&name, p + 1, "b", None),
        enqueued(&name, p + 2, "c", None),
        enqueued(&name, p + 3, "d", None),
        dequeued(&name, p + 1),
        // c went out after the ack and a again after its release; the cancel put both back in
        // front, in delivery order, and the purge takes the ready messages front to back.
        dequeued(&name, p + 2),
        dequeued(&name, p),
        dequeued(&name, p + 3),
        ReplicationEvent::QueueDeleted { name: Arc::from(name.as_str()) },
    ];
    assert_eq!(replication_events(&mut mesh), [expected, vec![]]);
}

#[test]
fn the_snapshot_describes_every_replicated_queue_and_its_held_messages() {
    // Goal: the catch-up snapshot has each queue of level configuration or all, and for all every
    // held message (ready or unsettled) in position order, without holds. Method: one shard,
    // three queues, one message delivered and unsettled.
    let mut mesh = primary(1, All);
    mesh.connect(0, 1, 0);
    declare_ok(&mut mesh, 0, 1, "a-all", &[]);
    declare_ok(&mut mesh, 0, 1, "b-conf", &[("replicate", "configuration")]);
    declare_ok(&mut mesh, 0, 1, "c-none", &[("replicate", "none")]);
    mesh.shards[0].set_replica_holds(1);
    publish(&mut mesh, 0, 1, 0, "a-all", &["x", "y"]);
    publish(&mut mesh, 0, 1, 2, "b-conf", &["z"]);
    let subscribe =
        Frame::Subscribe { request: RequestId(2), consumer: ConsumerId(1), queue: "a-all".into(), prefetch: 1 };
    mesh.ask(0, 1, &subscribe);
    let mut snapshot = Vec::new();
    mesh.shards[0].replication_snapshot(&mut snapshot);
    assert_eq!(
        snapshot,
        [
            created("a-all", All),
            enqueued("a-all", EPOCH_1, "x", None),
            enqueued("a-all", EPOCH_1 + 1, "y", None),
            created("b-conf", Configuration),
        ]
    );
}

#[test]
fn a_backup_applies_records_and_a_promotion_continues_in_the_new_epoch() {
    // Goal: a QueueCreated record makes the queue on its owner at once, and (from shard 0's
    // configuration stream) in every shard's routing; messages land at the primary's positions; dequeues, duplicates, foreign records,
    // a delete followed by a re-create, and clear_replicas behave; promoted, the queue takes
    // publishes from every shard at positions of epoch 1. Method: a joining broker of 3 shards.
    let mut mesh = backup(3);
    let name = name_on(2, 3, "replica");
    let exclusive = QueueOptions { exclusive: true, ..QueueOptions::default() };
    mesh.shards[2].apply_replica(Record::QueueCreated {
        name: name.clone(),
        options: exclusive.clone(),
        level: ReplicationLevel::All,
    });
    mesh.shards[0].apply_replica(Record::QueueCreated {
        name: name.clone(),
        options: exclusive,
        level: ReplicationLevel::All,
    });
    let messages = vec![message(&name, "a"), message(&name, "b"), message(&name, "c")];
    mesh.shards[2].apply_replica(Record::Enqueued { queue: name.clone(), first_position: Position(5), messages });
    // Applied twice: ignored and counted.
    let again = vec![message(&name, "b")];
    mesh.shards[2].apply_replica(Record::Enqueued {
        queue: name.clone(),
        first_position: Position(6),
        messages: again,
    });
    assert_eq!(mesh.shards[2].counters().replica_messages_ignored, 1);
    // A record for a queue another shard owns is counted and ignored.
    mesh.shards[1].apply_replica(Record::QueueCreated {
        name: name.clone(),
        options: QueueOptions::default(),
        level: ReplicationLevel::All,
    });
    assert_eq!(mesh.shards[1].counters().replica_records_ignored, 1);
    mesh.shards[2].apply_replica(Record::Dequeued { queue: name.clone(), ranges: vec![(Position(6), Position(6))] });
    mesh.settle();
    assert_eq!(depth(&mut mesh, 0, ADMIN, &name), Some(2));
    let mut snapshot = Vec::new();
    mesh.shards[2].replication_snapshot(&mut snapshot);
    let options = QueueOptions::default();
    assert_eq!(
        snapshot,
        [
            ReplicationEvent::QueueCreated { name: Arc::from(name.as_str()), options, level: All },
            enqueued(&name, 5, "a", None),
            enqueued(&name, 7, "c", None),
        ]
    );
    // Deleted and re-created before the coordinator ran: the new queue survives, in routing.
    let other = name_on(1, 3, "gone");
    for shard in [1, 0] {
        mesh.shards[shard].apply_replica(Record::QueueCreated {
            name: other.clone(),
            options: QueueOptions::default(),
            level: ReplicationLevel::All,
        });
        mesh.shards[shard].apply_replica(Record::QueueDeleted { name: other.clone() });
        mesh.shards[shard].apply_replica(Record::QueueCreated {
            name: other.clone(),
            options: QueueOptions::default(),
            level: ReplicationLevel::All,
        });
    }
    let messages = vec![message(&other, "new")];
    mesh.shards[1].apply_replica(Record::Enqueued { queue: other.clone(), first_position: Position(1), messages });
    mesh.settle();
    assert_eq!(depth(&mut mesh, 0, ADMIN, &other), Some(1));
    // clear_replicas drops the messages of the queues a shard owns.
    assert_eq!(mesh.shards[1].clear_replicas(), 1);
    assert_eq!(depth(&mut mesh, 0, ADMIN, &other), Some(0));
    assert!(replication_events(&mut mesh).iter().all(Vec::is_empty));

    promote(&mut mesh, ADMIN);
    for shard in 0..3 {
        mesh.connect(shard, 10, 0);
        assert_eq!(publish(&mut mesh, shard, 10, 0, &name, &["p"]), [stored(0, 0)], "publish from shard {shard}");
    }
    assert_eq!(depth(&mut mesh, 0, ADMIN, &name), Some(5));
    let all = replication_events(&mut mesh);
    let expected: Vec<ReplicationEvent> = (0..3).map(|i| enqueued(&name, EPOCH_1 + i, "p", None)).collect();
    assert_eq!(all[2], expected);
}

#[test]
fn the_replication_link_moves_the_backup_through_the_state_table() {
    // Goal: handle_ha_transition takes legal steps on every shard and refuses others with the
    // table's reason; observe_epoch makes a later promotion go above the primary's epoch.
    // Method: a joining broker of 2 shards.
    let mut mesh = backup(2);
    let refused = mesh.shards[0].handle_ha_transition(BrokerState::Ready, TransitionCause::MarkedReadyByPrimary);
    assert!(refused.unwrap_err().to_string().contains("illegal HA state transition joining -> ready"));
    let promotion = mesh.shards[0].handle_ha_transition(BrokerState::Recovering, TransitionCause::Promoted);
    assert!(promotion.is_err());
    assert_eq!(mesh.shards[0].counters().ha_transitions_refused, 2);
    assert_eq!(mesh.states(), [BrokerState::Joining; 2]);
    mesh.shards[0].handle_ha_transition(BrokerState::CatchUp, TransitionCause::PrimaryContacted).unwrap();
    mesh.settle();
    assert_eq!(mesh.states(), [BrokerState::CatchUp; 2]);
    mesh.shards[0].handle_ha_transition(BrokerState::Ready, TransitionCause::MarkedReadyByPrimary).unwrap();
    mesh.settle();
    assert_eq!(mesh.states(), [BrokerState::Ready; 2]);
    mesh.shards[0].handle_ha_transition(BrokerState::CatchUp, TransitionCause::ReconnectedBehindPrimary).unwrap();
    mesh.shards[0].handle_ha_transition(BrokerState::Ready, TransitionCause::MarkedReadyByPrimary).unwrap();
    mesh.settle();
    assert_eq!(mesh.states(), [BrokerState::Ready; 2]);
    mesh.shards[0].observe_epoch(Epoch(5));
    promote(&mut mesh, ADMIN);
    // The first member of ha-brokers-url promotes into epochs 1, 65, 129, ...: above 5, 65.
    assert!(mesh.shards.iter().all(|s| s.ha().epoch() == Epoch(65)));
}
