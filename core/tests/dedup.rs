//! State-machine tests of duplicate suppression (`dedup_window`, the `x-ringmq-dedup` header)
//! through whole shards wired in memory (`support::Mesh`): clients as byte buffers, no sockets,
//! no threads, no clock.
//!
//! What is checked: a re-sent publish with the same key, on another connection, is confirmed
//! `Stored` and the queue holds one copy (producer and queue on different shards too); different
//! producers, and messages without the header, never collide; on a primary with backup streams a
//! duplicate is not replicated again but takes the holds an enqueue would (a `Barrier` event) and is
//! confirmed only after each is released, and without streams at once; a backup that applied `Enqueued` records and is then
//! promoted suppresses re-sends of them, even after they were consumed, and so it does of keys it
//! got only as `DedupSeen` records (messages consumed before they were replicated) or in a
//! catch-up snapshot's window; `dedup-window` 0 turns suppression off.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::frame::{
    ConfirmOutcome, ConfirmRange, Frame, Header, Message, QueueOptions, Settlement, TagRange, PREAMBLE_FLAG_ADMIN,
};
use ringmq_core::ids::{ConnId, ConsumerId, RequestId, Seq, ShardId, Tag};
use ringmq_core::limits::DEDUP_HEADER;
use ringmq_core::replication::{Hold, Position, Record, ReplicationEvent};
use ringmq_core::replication_level::ReplicationLevel;
use support::{declare, declare_with, ha_settings, name_on, promote, replication_events, Mesh};

/// The admin connection used to promote, on shard 0.
const ADMIN: u32 = 99;

/// A message for `queue` (default exchange) carrying the dedup key `key`, or no header.
fn message(queue: &str, key: Option<&str>, body: &str) -> Message {
    let headers = key
        .map(|key| vec![Header { name: Bytes::from_static(DEDUP_HEADER), value: Bytes::from(key.to_owned()) }])
        .unwrap_or_default();
    Message {
        routing_key: Bytes::from(queue.to_owned()),
        headers,
        body: Bytes::from(body.to_owned()),
        ..Message::default()
    }
}

/// Publishes messages keyed `keys` (body = key) to `queue` from `(shard, conn)` and returns what
/// came back.
fn publish(mesh: &mut Mesh, shard: u16, conn: u32, first_seq: u64, queue: &str, keys: &[&str]) -> Vec<Frame> {
    let messages = keys.iter().map(|key| message(queue, Some(key), key)).collect();
    mesh.ask(shard, conn, &Frame::Publish { exchange: String::new(), first_seq: Seq(first_seq), messages })
}

fn stored(first: u64, last: u64) -> Frame {
    Frame::Confirm {
        ranges: vec![ConfirmRange { first: Seq(first), last: Seq(last), outcome: ConfirmOutcome::Stored }],
    }
}

/// Depth of `name` as a queue list on `(shard, conn)` reports it.
fn depth(mesh: &mut Mesh, shard: u16, conn: u32, name: &str) -> u64 {
    let frames = mesh.ask(shard, conn, &Frame::QueueList { request: RequestId(77) });
    let [Frame::QueueListReply { queues, .. }] = frames.as_slice() else { panic!("{frames:?}") };
    queues.iter().find(|q| q.name == name).map(|q| q.depth).expect("queue listed")
}

/// Subscribes on `(shard, conn)` and returns the bodies delivered, acking them all.
fn consume_all(mesh: &mut Mesh, shard: u16, conn: u32, queue: &str) -> Vec<String> {
    let subscribe =
        Frame::Subscribe { request: RequestId(5), consumer: ConsumerId(1), queue: queue.into(), prefetch: 100 };
    let mut bodies = Vec::new();
    for frame in mesh.ask(shard, conn, &subscribe) {
        if let Frame::Deliver { messages, .. } = frame {
            bodies.extend(messages.iter().map(|d| String::from_utf8(d.message.body.to_vec()).unwrap()));
        }
    }
    let last = bodies.len() as u64 - 1;
    let ack = Frame::Settle {
        consumer: ConsumerId(1),
        settlement: Settlement::Ack,
        ranges: vec![TagRange { first: Tag(0), last: Tag(last) }],
    };
    mesh.send(shard, conn, &ack);
    bodies
}

#[test]
fn a_re_sent_publish_is_confirmed_stored_and_held_once() {
    // Goal: the re-send of keys already stored, on a new connection (as after a reconnect), is
    // confirmed Stored and not stored again, with the producer on another shard than the queue.
    // Method: standalone broker of 2 shards; producer on shard 0, queue owned by shard 1.
    let mut mesh = Mesh::standalone(2);
    let queue = name_on(1, 2, "orders");
    mesh.connect(0, 1, 0);
    assert_eq!(mesh.ask(0, 1, &declare(1, &queue)), [Frame::Ok { request: RequestId(1) }]);
    assert_eq!(publish(&mut mesh, 0, 1, 0, &queue, &["p/0", "p/1", "p/2"]), [stored(0, 2)]);
    mesh.connect(0, 2, 0);
    assert_eq!(publish(&mut mesh, 0, 2, 0, &queue, &["p/1", "p/2", "p/3"]), [stored(0, 2)]);
    assert_eq!(depth(&mut mesh, 0, 2, &queue), 4);
    assert_eq!(mesh.shards[1].counters().duplicates_suppressed, 2);
    assert_eq!(consume_all(&mut mesh, 0, 2, &queue), ["p/0", "p/1", "p/2", "p/3"]);
}

#[test]
fn different_producers_and_messages_without_the_header_never_collide() {
    // Goal: the key is (producer, seq): the same seq from two producers is two messages; messages
    // without the header, or with a malformed value, are always stored.
    let mut mesh = Mesh::standalone(1);
    mesh.connect(0, 1, 0);
    mesh.ask(0, 1, &declare(1, "q"));
    assert_eq!(publish(&mut mesh, 0, 1, 0, "q", &["a/1", "b/1", "a/2", "b/2"]), [stored(0, 3)]);
    let plain = vec![message("q", None, "x"), message("q", None, "x"), message("q", Some("a/oops"), "y")];
    let frames = mesh.ask(0, 1, &Frame::Publish { exchange: String::new(), first_seq: Seq(4), messages: plain });
    assert_eq!(frames, [stored(4, 6)]);
    assert_eq!(publish(&mut mesh, 0, 1, 7, "q", &["a/oops"]), [stored(7, 7)]);
    assert_eq!(depth(&mut mesh, 0, 1, "q"), 8);
    assert_eq!(mesh.shards[0].counters().duplicates_suppressed, 0);
}

/// The holds of `Enqueued` events and of `Barrier` events among `events`, in that order.
fn holds_of(events: &[ReplicationEvent]) -> (Vec<Hold>, Vec<Hold>) {
    let enqueued = events
        .iter()
        .filter_map(|event| match event {
            ReplicationEvent::Enqueued { hold, .. } => *hold,
            _ => None,
        })
        .collect();
    let barriers = events
        .iter()
        .filter_map(|event| match event {
            ReplicationEvent::Barrier { hold, .. } => Some(*hold),
            _ => None,
        })
        .collect();
    (enqueued, barriers)
}

#[test]
fn on_a_primary_a_duplicate_is_held_like_an_enqueue_until_each_stream_releases_it() {
    // Goal: a re-send recognised as a duplicate while its original's confirm is still held for
    // backups is not confirmed before them: it takes as many holds as an enqueue (one per backup
    // stream), reported as a `Barrier`, and is confirmed only after the last release; it is still
    // not stored or replicated again.
    // Method: a promoted primary of 2 shards with two backup streams on the queue's shard
    // (holds = 2); producer on shard 0, queue owned by shard 1; releases given to shard 1 one by one.
    let mut mesh = Mesh::new(2, ha_settings(true, ReplicationLevel::All));
    mesh.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
    promote(&mut mesh, ADMIN);
    let queue = name_on(1, 2, "q");
    mesh.connect(0, 1, 0);
    mesh.ask(0, 1, &declare(1, &queue));
    replication_events(&mut mesh);
    mesh.shards[1].set_replica_holds(2);
    assert_eq!(publish(&mut mesh, 0, 1, 0, &queue, &["p/7"]), []);
    let (originals, barriers) = holds_of(&replication_events(&mut mesh).remove(1));
    assert_eq!((originals.len(), barriers.len()), (1, 0));
    // The re-send, on a new connection, while the original's two holds are still taken.
    mesh.connect(0, 2, 0);
    assert_eq!(publish(&mut mesh, 0, 2, 0, &queue, &["p/7"]), [], "confirmed before any backup released it");
    let events = replication_events(&mut mesh).remove(1);
    assert_eq!(
        events,
        [ReplicationEvent::Barrier {
            queue: Arc::from(queue.as_str()),
            hold: Hold { shard: ShardId(0), conn: ConnId(2), seq: Seq(0) },
            holders: 2
        }]
    );
    let (_, barriers) = holds_of(&events);
    // One stream released each: neither publish is confirmed yet.
    mesh.shards[1].handle_holds_released(&[originals[0], barriers[0]]);
    mesh.settle();
    assert_eq!(mesh.take(0, 1), []);
    assert_eq!(mesh.take(0, 2), [], "a duplicate's confirm waits for the second release");
    // The second stream released both.
    mesh.shards[1].handle_holds_released(&[originals[0], barriers[0]]);
    mesh.settle();
    assert_eq!(mesh.take(0, 1), [stored(0, 0)]);
    assert_eq!(mesh.take(0, 2), [stored(0, 0)]);
    assert_eq!(depth(&mut mesh, 0, 2, &queue), 1);
    assert_eq!(mesh.shards[1].counters().duplicates_suppressed, 1);
    // Without holding streams, a duplicate is confirmed at once and makes no event.
    mesh.shards[1].set_replica_holds(0);
    mesh.connect(0, 3, 0);
    assert_eq!(publish(&mut mesh, 0, 3, 0, &queue, &["p/7"]), [stored(0, 0)]);
    assert_eq!(replication_events(&mut mesh), [vec![], vec![]]);
}

#[test]
fn a_promoted_backup_suppresses_re_sends_of_what_it_received_by_replication() {
    // Goal: after a failover, the new primary suppresses re-sends of messages it got from the old
    // primary's `Enqueued` records, even those consumed since; a key it never got is stored.
    // Method: a joining backup of 2 shards applies a queue and three keyed messages, is promoted;
    // one message is consumed; the producer re-sends all three and a new one.
    let mut mesh = Mesh::new(2, ha_settings(true, ReplicationLevel::None));
    mesh.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
    let queue = name_on(1, 2, "r");
    for shard in 0..2 {
        let record = Record::QueueCreated {
            name: queue.clone(),
            options: QueueOptions::default(),
            level: ReplicationLevel::All,
        };
        mesh.shards[shard].apply_replica(record);
    }
    let messages = ["p/10", "p/11", "p/12"].map(|key| message(&queue, Some(key), key)).to_vec();
    mesh.shards[1].apply_replica(Record::Enqueued { queue: queue.clone(), first_position: Position(1), messages });
    mesh.settle();
    promote(&mut mesh, ADMIN);
    assert_eq!(mesh.states(), [BrokerState::Active, BrokerState::Active]);
    mesh.connect(1, 1, 0);
    // A consumer takes and acks the first one: its key stays in the window.
    mesh.connect(1, 3, 0);
    let subscribe =
        Frame::Subscribe { request: RequestId(5), consumer: ConsumerId(1), queue: queue.clone(), prefetch: 1 };
    mesh.ask(1, 3, &subscribe);
    let ack = Frame::Settle {
        consumer: ConsumerId(1),
        settlement: Settlement::Ack,
        ranges: vec![TagRange { first: Tag(0), last: Tag(0) }],
    };
    mesh.send(1, 3, &ack);
    mesh.send(1, 3, &Frame::Cancel { request: RequestId(6), consumer: ConsumerId(1) });
    assert_eq!(depth(&mut mesh, 1, 1, &queue), 2);
    assert_eq!(publish(&mut mesh, 1, 1, 0, &queue, &["p/10", "p/11", "p/12", "p/13"]), [stored(0, 3)]);
    assert_eq!(depth(&mut mesh, 1, 1, &queue), 3);
    assert_eq!(mesh.shards[1].counters().duplicates_suppressed, 3);
    let events = replication_events(&mut mesh);
    let enqueued: Vec<_> =
        events[1].iter().filter(|event| matches!(event, ReplicationEvent::Enqueued { .. })).collect();
    assert_eq!(enqueued.len(), 1, "only the new key is replicated: {events:?}");
}

#[test]
fn a_window_of_zero_turns_suppression_off() {
    // Goal: `dedup-window 0`: every message is stored, header or not.
    let mut mesh = Mesh::with_dedup_window(1, ha_settings(false, ReplicationLevel::None), 0);
    mesh.connect(0, 1, 0);
    mesh.ask(0, 1, &declare_with(1, "q", QueueOptions::default()));
    assert_eq!(publish(&mut mesh, 0, 1, 0, "q", &["p/1", "p/1", "p/1"]), [stored(0, 2)]);
    assert_eq!(depth(&mut mesh, 0, 1, "q"), 3);
    assert_eq!(mesh.shards[0].counters().duplicates_suppressed, 0);
}

/// Makes `queue` on a fresh backup mesh of 2 shards (joining), applies `records` to its owner
/// (shard 1), promotes it, and re-sends `keys` to it from a new producer: returns the queue's
/// depth before and after, and the duplicates the owner suppressed.
fn promote_and_re_send(queue: &str, records: Vec<Record>, keys: &[&str]) -> (u64, u64, u64) {
    let mut mesh = Mesh::new(2, ha_settings(true, ReplicationLevel::None));
    mesh.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
    for shard in 0..2 {
        let record = Record::QueueCreated {
            name: queue.to_string(),
            options: QueueOptions::default(),
            level: ReplicationLevel::All,
        };
        mesh.shards[shard].apply_replica(record);
    }
    for record in records {
        mesh.shards[1].apply_replica(record);
    }
    mesh.settle();
    promote(&mut mesh, ADMIN);
    mesh.connect(1, 1, 0);
    let before = depth(&mut mesh, 1, 1, queue);
    let confirms = publish(&mut mesh, 1, 1, 0, queue, keys);
    assert_eq!(confirms, [stored(0, keys.len() as u64 - 1)]);
    let after = depth(&mut mesh, 1, 1, queue);
    (before, after, mesh.shards[1].counters().duplicates_suppressed)
}

#[test]
fn a_promoted_backup_suppresses_re_sends_of_keys_it_got_as_dedup_seen() {
    // Goal: keys of messages the backup never received (consumed on the primary before they were
    // replicated) reach its window through `DedupSeen` records, which store nothing; once promoted
    // it suppresses their re-sends. A `DedupSeen` for a queue it does not hold is ignored.
    // Method: a backup applies p/10 as a message and p/11..=12 and q/5 as dedup keys, is promoted,
    // and gets all four re-sent with a new key p/13.
    let queue = name_on(1, 2, "d");
    let records = vec![
        Record::Enqueued {
            queue: queue.clone(),
            first_position: Position(1),
            messages: vec![message(&queue, Some("p/10"), "p/10")],
        },
        Record::DedupSeen {
            queue: queue.clone(),
            keys: vec![("p".to_string(), vec![(11, 12)]), ("q".to_string(), vec![(5, 5)])],
        },
        Record::DedupSeen { queue: "elsewhere".to_string(), keys: vec![("p".to_string(), vec![(13, 13)])] },
    ];
    let keys = ["p/10", "p/11", "p/12", "q/5", "p/13"];
    let (before, after, suppressed) = promote_and_re_send(&queue, records, &keys);
    assert_eq!((before, after, suppressed), (1, 2, 4), "only p/13 is stored");
    // Without the DedupSeen records, the consumed keys are stored again: the bug this prevents.
    let only_message = vec![Record::Enqueued {
        queue: queue.clone(),
        first_position: Position(1),
        messages: vec![message(&queue, Some("p/10"), "p/10")],
    }];
    assert_eq!(promote_and_re_send(&queue, only_message, &keys), (1, 5, 1));
}

#[test]
fn the_catch_up_snapshot_carries_the_dedup_window_before_the_messages() {
    // Goal: a catch-up snapshot of an `all` queue carries its dedup window (keys of consumed
    // messages included) as `DedupSeen` right after the queue's create, before its messages; a
    // backup fed that snapshot and promoted suppresses re-sends of every key, consumed or held.
    // Method: a promoted primary of 2 shards stores p/1..=3, a consumer acks them, then p/4 and
    // r/9 are stored; the owner's snapshot is applied to a fresh backup, which is promoted.
    let mut mesh = Mesh::new(2, ha_settings(true, ReplicationLevel::All));
    mesh.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
    promote(&mut mesh, ADMIN);
    let queue = name_on(1, 2, "c");
    mesh.connect(0, 1, 0);
    mesh.ask(0, 1, &declare(1, &queue));
    assert_eq!(publish(&mut mesh, 0, 1, 0, &queue, &["p/1", "p/2", "p/3"]), [stored(0, 2)]);
    mesh.connect(0, 2, 0);
    assert_eq!(consume_all(&mut mesh, 0, 2, &queue), ["p/1", "p/2", "p/3"]);
    mesh.send(0, 2, &Frame::Cancel { request: RequestId(6), consumer: ConsumerId(1) });
    assert_eq!(publish(&mut mesh, 0, 1, 3, &queue, &["p/4", "r/9"]), [stored(3, 4)]);
    assert_eq!(depth(&mut mesh, 0, 1, &queue), 2);
    let mut snapshot = Vec::new();
    mesh.shards[1].replication_snapshot(&mut snapshot);
    let kinds: Vec<&str> = snapshot
        .iter()
        .map(|event| match event {
            ReplicationEvent::QueueCreated { .. } => "created",
            ReplicationEvent::DedupSeen { .. } => "dedup",
            ReplicationEvent::Enqueued { .. } => "enqueued",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["created", "dedup", "enqueued", "enqueued"]);
    // Least recently used producer first.
    let ReplicationEvent::DedupSeen { keys, .. } = &snapshot[1] else { unreachable!() };
    assert_eq!(keys, &vec![("p".to_string(), vec![(1, 4)]), ("r".to_string(), vec![(9, 9)])]);
    let records: Vec<Record> = snapshot
        .into_iter()
        .filter_map(|event| match event {
            ReplicationEvent::DedupSeen { queue, keys } => Some(Record::DedupSeen { queue: queue.to_string(), keys }),
            ReplicationEvent::Enqueued { queue, position, message, .. } => {
                Some(Record::Enqueued { queue: queue.to_string(), first_position: position, messages: vec![message] })
            }
            _ => None,
        })
        .collect();
    let keys = ["p/1", "p/2", "p/3", "p/4", "r/9", "p/5"];
    assert_eq!(promote_and_re_send(&queue, records, &keys), (2, 3, 5), "only p/5 is stored");
}
