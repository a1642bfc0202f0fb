//! State-machine tests of a catch-up that sends only the difference: a backup shard's holdings
//! (`Shard::replica_holdings`) and the primary's snapshot diffed against them
//! (`Shard::replication_snapshot_for`). Shards wired in memory (`support::Mesh`); no sockets.
//!
//! What is checked: holdings list each replica queue's held positions as ranges, within bounds;
//! the diff sends only the messages the backup lacks, dequeues the positions the primary no
//! longer holds, deletes the queues it does not have, and counts all of it; applied to the
//! backup, the diff leaves exactly the primary's messages, in position order; a queue re-created
//! under a deleted one's name continues above its positions.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use ringmq_core::frame::{Frame, Message, QueueOptions, PREAMBLE_FLAG_ADMIN};
use ringmq_core::ids::{RequestId, Seq};
use ringmq_core::replication::{CatchUpDiff, Position, QueueHoldings, Record, ReplicationEvent};
use ringmq_core::replication_level::ReplicationLevel;
use support::{declare, ha_settings, Mesh};

/// The first position of a queue created in epoch 1.
const E1: u64 = 1 << 40;

/// An active primary of one shard replicating everything, with a client on connection 1.
fn primary() -> Mesh {
    let mut mesh = Mesh::new(1, ha_settings(true, ReplicationLevel::All));
    mesh.connect(0, 99, PREAMBLE_FLAG_ADMIN);
    let frames = mesh.ask(0, 99, &Frame::HaPromote { request: RequestId(9000) });
    assert_eq!(frames, [Frame::Ok { request: RequestId(9000) }]);
    mesh.connect(0, 1, 0);
    mesh
}

fn message(queue: &str, body: &'static str) -> Message {
    Message {
        routing_key: Bytes::from(queue.to_owned()),
        body: Bytes::from_static(body.as_bytes()),
        ..Message::default()
    }
}

fn publish(mesh: &mut Mesh, first_seq: u64, queue: &str, bodies: &[&'static str]) {
    let messages = bodies.iter().map(|body| message(queue, body)).collect();
    mesh.ask(0, 1, &Frame::Publish { exchange: String::new(), first_seq: Seq(first_seq), messages });
}

fn ranges(list: &[(u64, u64)]) -> Vec<(Position, Position)> {
    list.iter().map(|&(first, last)| (Position(first), Position(last))).collect()
}

/// A joining backup of one shard holding `queue` at `positions` (bodies "old<position>").
fn backup_holding(queue: &str, positions: &[u64]) -> Mesh {
    let mut mesh = Mesh::new(1, ha_settings(true, ReplicationLevel::None));
    mesh.shards[0].apply_replica(Record::QueueCreated {
        name: queue.to_string(),
        options: QueueOptions::default(),
        level: ReplicationLevel::All,
    });
    for &position in positions {
        let body: &'static str = Box::leak(format!("old{position}").into_boxed_str());
        let messages = vec![message(queue, body)];
        mesh.shards[0].apply_replica(Record::Enqueued {
            queue: queue.to_string(),
            first_position: Position(position),
            messages,
        });
    }
    mesh
}

/// Applies snapshot events to a backup as the link would (events to records).
fn apply(backup: &mut Mesh, snapshot: Vec<ReplicationEvent>) {
    for event in snapshot {
        let record = match event {
            ReplicationEvent::QueueCreated { name, options, level } => {
                Record::QueueCreated { name: name.to_string(), options, level }
            }
            ReplicationEvent::QueueDeleted { name } => Record::QueueDeleted { name: name.to_string() },
            ReplicationEvent::Enqueued { queue, position, message, .. } => {
                Record::Enqueued { queue: queue.to_string(), first_position: position, messages: vec![message] }
            }
            ReplicationEvent::DequeuedRanges { queue, ranges } => Record::Dequeued { queue: queue.to_string(), ranges },
            other => panic!("unexpected {other:?}"),
        };
        backup.shards[0].apply_replica(record);
    }
    backup.settle();
}

#[test]
fn holdings_list_each_replica_queue_as_ranges_within_the_bounds() {
    let mut backup = backup_holding("q", &[1, 2, 3, 4, 5, 9]);
    backup.shards[0].apply_replica(Record::Dequeued { queue: "q".into(), ranges: ranges(&[(3, 3)]) });
    backup.shards[0].apply_replica(Record::QueueCreated {
        name: "empty".into(),
        options: QueueOptions::default(),
        level: ReplicationLevel::All,
    });
    let holdings = backup.shards[0].replica_holdings(16, 16).unwrap();
    assert_eq!(
        holdings,
        [
            QueueHoldings { name: "empty".into(), ranges: Vec::new() },
            QueueHoldings { name: "q".into(), ranges: ranges(&[(1, 2), (4, 5), (9, 9)]) },
        ]
    );
    // Over either bound: none, and the link asks for a full resync.
    assert_eq!(backup.shards[0].replica_holdings(16, 2), None);
    assert_eq!(backup.shards[0].replica_holdings(1, 16), None);
    assert_eq!(backup.shards[0].replica_holdings(2, 3).map(|h| h.len()), Some(2));
}

#[test]
fn the_diff_sends_what_the_backup_lacks_and_drops_what_the_primary_no_longer_holds() {
    // Method: the primary holds a, b, c at E1..E1+2; the backup holds E1 and E1+2..E1+5 (E1+3..5
    // were assigned by an older primary and never reached this one) and a queue "gone".
    let mut mesh = primary();
    mesh.ask(0, 1, &declare(1, "q"));
    publish(&mut mesh, 0, "q", &["a", "b", "c"]);
    let holdings = vec![
        QueueHoldings { name: "gone".into(), ranges: ranges(&[(1, 4)]) },
        QueueHoldings { name: "q".into(), ranges: ranges(&[(E1, E1), (E1 + 2, E1 + 5)]) },
    ];
    let mut snapshot = Vec::new();
    let diff = mesh.shards[0].replication_snapshot_for(Some(&holdings), &mut snapshot);
    assert_eq!(diff, CatchUpDiff { sent: 1, dequeued: 3, held: 2, queues_deleted: 1 });
    let q: Arc<str> = Arc::from("q");
    assert_eq!(
        snapshot,
        [
            ReplicationEvent::QueueDeleted { name: Arc::from("gone") },
            ReplicationEvent::QueueCreated {
                name: q.clone(),
                options: QueueOptions::default(),
                level: ReplicationLevel::All
            },
            ReplicationEvent::Enqueued {
                queue: q.clone(),
                position: Position(E1 + 1),
                message: message("q", "b"),
                hold: None,
                holders: 0
            },
            ReplicationEvent::DequeuedRanges { queue: q.clone(), ranges: ranges(&[(E1 + 3, E1 + 5)]) },
        ]
    );
    // Without holdings: the full snapshot.
    let mut full = Vec::new();
    let diff = mesh.shards[0].replication_snapshot_for(None, &mut full);
    assert_eq!(diff, CatchUpDiff { sent: 3, ..CatchUpDiff::default() });
    assert_eq!(full.len(), 4);
}

#[test]
fn a_backup_applying_the_diff_holds_exactly_the_primarys_messages_in_order() {
    // Method: the backup holds E1 (same message as the primary's) and E1+7, E1+8 (never on this
    // primary); the primary holds E1..E1+3 (the backup lacks the middle ones). After the diff,
    // the backup's holdings and its delivery order equal the primary's.
    let mut mesh = primary();
    mesh.ask(0, 1, &declare(1, "q"));
    publish(&mut mesh, 0, "q", &["a", "b", "c", "d"]);
    let mut backup = backup_holding("q", &[E1, E1 + 7, E1 + 8]);
    let holdings = backup.shards[0].replica_holdings(16, 16).unwrap();
    let mut snapshot = Vec::new();
    let diff = mesh.shards[0].replication_snapshot_for(Some(&holdings), &mut snapshot);
    assert_eq!((diff.sent, diff.dequeued, diff.held), (3, 2, 1));
    apply(&mut backup, snapshot);
    let holdings = backup.shards[0].replica_holdings(16, 16).unwrap();
    assert_eq!(holdings, [QueueHoldings { name: "q".into(), ranges: ranges(&[(E1, E1 + 3)]) }]);
    let mut primary_bodies = Vec::new();
    mesh.shards[0].replication_snapshot(&mut primary_bodies);
    let mut backup_events = Vec::new();
    backup.shards[0].replication_snapshot(&mut backup_events);
    let bodies = |events: &[ReplicationEvent]| -> Vec<(u64, Bytes)> {
        events
            .iter()
            .filter_map(|event| match event {
                ReplicationEvent::Enqueued { position, message, .. } => Some((position.0, message.body.clone())),
                _ => None,
            })
            .collect()
    };
    // The backup kept its own copy of E1 ("old..."), the rest came from the primary.
    let expected: Vec<(u64, Bytes)> = vec![
        (E1, Bytes::from(format!("old{E1}"))),
        (E1 + 1, Bytes::from_static(b"b")),
        (E1 + 2, Bytes::from_static(b"c")),
        (E1 + 3, Bytes::from_static(b"d")),
    ];
    assert_eq!(bodies(&backup_events), expected);
    assert_eq!(bodies(&primary_bodies).len(), 4);
}

#[test]
fn a_queue_re_created_under_a_deleted_ones_name_continues_above_its_positions() {
    // Goal: positions identify a message per queue name: a backup that missed a delete and
    // re-create never takes a new message for one it holds.
    let mut mesh = primary();
    mesh.ask(0, 1, &declare(1, "q"));
    publish(&mut mesh, 0, "q", &["a", "b"]);
    mesh.ask(0, 1, &Frame::QueueDelete { request: RequestId(2), name: "q".into() });
    mesh.ask(0, 1, &declare(3, "q"));
    publish(&mut mesh, 2, "q", &["new"]);
    let mut snapshot = Vec::new();
    mesh.shards[0].replication_snapshot(&mut snapshot);
    let positions: Vec<u64> = snapshot
        .iter()
        .filter_map(|event| match event {
            ReplicationEvent::Enqueued { position, .. } => Some(position.0),
            _ => None,
        })
        .collect();
    assert_eq!(positions, [E1 + 2]);
}
