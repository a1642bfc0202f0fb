//! State-machine tests of `Shard`: several shards wired in memory (`support::Mesh`), clients as
//! byte buffers. No sockets, no threads, no clock.

mod support;

use bytes::Bytes;
use ringmq_core::frame::{ConfirmOutcome, ErrorCode, Frame, Message, QueueOptions, Settlement, TagRange};
use ringmq_core::ids::{ConnId, ConsumerId, RequestId, Seq, ShardId, Tag};
use ringmq_core::shard::shard_of;
use support::{declare, declare_with, Mesh};

fn message(key: &str, body: &str) -> Message {
    Message { routing_key: Bytes::from(key.to_string()), body: Bytes::from(body.to_string()), ..Message::default() }
}

/// A queue name owned by `shard` among `count`.
fn queue_on(shard: u16, count: u16) -> String {
    (0..).map(|i| format!("q{i}")).find(|name| shard_of(name, count) == ShardId(shard)).expect("some name hashes there")
}

#[test]
fn publish_on_one_shard_consume_on_another_through_a_third_shards_queue() {
    // Goal: the cross-shard paths (enqueue, enqueued, deliver, settle) carry a message end to end.
    // Method: 3 shards; producer on shard 0, consumer on shard 1, queue owned by shard 2.
    let mut mesh = Mesh::standalone(3);
    let queue = queue_on(2, 3);
    mesh.connect(0, 1, 0);
    mesh.connect(1, 1, 0);
    // Declare from the producer's shard; Ok comes after every shard applied it.
    mesh.send(0, 1, &declare(1, &queue));
    assert_eq!(mesh.take(0, 1), vec![Frame::Ok { request: RequestId(1) }]);
    // Subscribe from shard 1.
    mesh.send(
        1,
        1,
        &Frame::Subscribe { request: RequestId(2), consumer: ConsumerId(7), queue: queue.clone(), prefetch: 10 },
    );
    assert_eq!(mesh.take(1, 1), vec![Frame::Ok { request: RequestId(2) }]);
    // Publish two messages; both are confirmed as stored in one range.
    let messages = vec![message(&queue, "a"), message(&queue, "b")];
    mesh.send(0, 1, &Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages });
    let confirms = mesh.take(0, 1);
    let Frame::Confirm { ranges } = &confirms[0] else { panic!("expected a confirm, got {confirms:?}") };
    assert_eq!((ranges[0].first, ranges[0].last, &ranges[0].outcome), (Seq(0), Seq(1), &ConfirmOutcome::Stored));
    // The consumer got both, tags 0 and 1.
    let deliveries = mesh.take(1, 1);
    let Frame::Deliver { consumer, first_tag, messages } = &deliveries[0] else { panic!("{deliveries:?}") };
    assert_eq!((*consumer, *first_tag, messages.len()), (ConsumerId(7), Tag(0), 2));
    assert_eq!(&messages[1].message.body[..], b"b");
    // Release tag 0: it comes back flagged redelivered with tag 2.
    mesh.send(
        1,
        1,
        &Frame::Settle {
            consumer: ConsumerId(7),
            settlement: Settlement::Release,
            ranges: vec![TagRange { first: Tag(0), last: Tag(0) }],
        },
    );
    let again = mesh.take(1, 1);
    let Frame::Deliver { first_tag, messages, .. } = &again[0] else { panic!("{again:?}") };
    assert_eq!((*first_tag, messages[0].redelivered, &messages[0].message.body[..]), (Tag(2), true, &b"a"[..]));
}

#[test]
fn closing_a_consumer_connection_requeues_its_unsettled_deliveries() {
    // Goal: a consumer that goes away gives its deliveries back, flagged redelivered.
    let mut mesh = Mesh::standalone(2);
    let queue = queue_on(1, 2);
    mesh.connect(0, 1, 0);
    mesh.connect(0, 2, 0);
    mesh.send(0, 1, &declare(1, &queue));
    mesh.send(
        0,
        1,
        &Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![message(&queue, "x")] },
    );
    mesh.take(0, 1);
    // First consumer takes the message and disconnects without settling.
    mesh.send(
        0,
        2,
        &Frame::Subscribe { request: RequestId(1), consumer: ConsumerId(1), queue: queue.clone(), prefetch: 5 },
    );
    assert_eq!(mesh.take(0, 2).len(), 2);
    mesh.shards[0].handle_closed(ConnId(2));
    mesh.settle();
    // A second consumer gets it redelivered.
    mesh.send(
        0,
        1,
        &Frame::Subscribe { request: RequestId(2), consumer: ConsumerId(1), queue: queue.clone(), prefetch: 5 },
    );
    let frames = mesh.take(0, 1);
    let Frame::Deliver { messages, .. } = &frames[1] else { panic!("{frames:?}") };
    assert!(messages[0].redelivered);
}

#[test]
fn errors_name_the_problem_and_close_only_that_connection() {
    // Goal: bad input costs the sender its connection and nobody else anything.
    let mut mesh = Mesh::standalone(2);
    mesh.connect(0, 1, 0);
    mesh.connect(0, 2, 0);
    // A publish that skips sequence numbers is a protocol error.
    mesh.send(
        0,
        1,
        &Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![message("none", "x")] },
    );
    mesh.send(
        0,
        1,
        &Frame::Publish { exchange: String::new(), first_seq: Seq(5), messages: vec![message("none", "x")] },
    );
    let frames = mesh.take(0, 1);
    let error = frames.iter().find_map(|f| match f {
        Frame::Error { code, message } => Some((*code, message.clone())),
        _ => None,
    });
    assert_eq!(error, Some((ErrorCode::Malformed, "publish sequence must continue at 1; got 5".to_string())));
    assert_eq!(mesh.closed, vec![(0, 1)]);
    // The other connection still works: a passive declare of a missing queue fails cleanly.
    let options = QueueOptions { passive: true, ..QueueOptions::default() };
    mesh.send(0, 2, &Frame::QueueDeclare { request: RequestId(9), name: "missing".into(), options, arguments: vec![] });
    assert_eq!(
        mesh.take(0, 2),
        vec![Frame::Failed { request: RequestId(9), code: ErrorCode::NotFound, message: "no queue 'missing'".into() }]
    );
}

#[test]
fn deliveries_of_large_messages_are_cut_into_bounded_frames() {
    // Goal: a delivery batch never becomes one giant frame. Method: three 40 KiB messages
    // against the 64 KiB frame target must arrive as three deliver frames with consecutive tags.
    let mut mesh = Mesh::standalone(1);
    mesh.connect(0, 1, 0);
    mesh.send(0, 1, &declare(1, "big"));
    let body = "x".repeat(40 * 1024);
    let messages = (0..3).map(|_| message("big", &body)).collect();
    mesh.send(0, 1, &Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages });
    mesh.take(0, 1);
    mesh.send(
        0,
        1,
        &Frame::Subscribe { request: RequestId(2), consumer: ConsumerId(1), queue: "big".into(), prefetch: 10 },
    );
    let tags: Vec<(u64, usize)> = mesh
        .take(0, 1)
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Deliver { first_tag, messages, .. } => Some((first_tag.0, messages.len())),
            _ => None,
        })
        .collect();
    assert_eq!(tags, vec![(0, 1), (1, 1), (2, 1)]);
}

#[test]
fn exclusive_queues_belong_to_one_connection_and_go_with_it() {
    // Goal: an exclusive queue refuses other connections and is deleted when its owner closes.
    // Method: two shards; the owner on shard 0, another connection on shard 1.
    let mut mesh = Mesh::standalone(2);
    let queue = queue_on(1, 2);
    mesh.connect(0, 1, 0);
    mesh.connect(1, 1, 0);
    let exclusive = QueueOptions { exclusive: true, ..QueueOptions::default() };
    mesh.send(0, 1, &declare_with(1, &queue, exclusive.clone()));
    assert_eq!(mesh.take(0, 1), vec![Frame::Ok { request: RequestId(1) }]);
    // Another connection can neither redeclare nor consume it.
    mesh.send(1, 1, &declare_with(2, &queue, exclusive));
    mesh.send(
        1,
        1,
        &Frame::Subscribe { request: RequestId(3), consumer: ConsumerId(1), queue: queue.clone(), prefetch: 1 },
    );
    let refusals: Vec<(RequestId, ErrorCode)> = mesh
        .take(1, 1)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Failed { request, code, .. } => Some((request, code)),
            _ => None,
        })
        .collect();
    assert_eq!(refusals, vec![(RequestId(2), ErrorCode::ResourceLocked), (RequestId(3), ErrorCode::ResourceLocked)]);
    // The owner closes: the queue is gone everywhere.
    mesh.shards[0].handle_closed(ConnId(1));
    mesh.settle();
    let passive = QueueOptions { passive: true, ..QueueOptions::default() };
    mesh.send(1, 1, &declare_with(4, &queue, passive));
    assert!(matches!(mesh.take(1, 1).as_slice(), [Frame::Failed { code: ErrorCode::NotFound, .. }]));
}

#[test]
fn auto_delete_queues_go_when_their_last_consumer_does() {
    // Goal: an auto-delete queue is deleted once its last subscription is cancelled.
    let mut mesh = Mesh::standalone(2);
    let queue = queue_on(0, 2);
    mesh.connect(1, 1, 0);
    let auto_delete = QueueOptions { auto_delete: true, ..QueueOptions::default() };
    mesh.send(1, 1, &declare_with(1, &queue, auto_delete));
    mesh.send(
        1,
        1,
        &Frame::Subscribe { request: RequestId(2), consumer: ConsumerId(1), queue: queue.clone(), prefetch: 1 },
    );
    mesh.send(
        1,
        1,
        &Frame::Subscribe { request: RequestId(3), consumer: ConsumerId(2), queue: queue.clone(), prefetch: 1 },
    );
    mesh.take(1, 1);
    // One consumer left: the queue stays.
    mesh.send(1, 1, &Frame::Cancel { request: RequestId(4), consumer: ConsumerId(1) });
    let passive = QueueOptions { passive: true, ..QueueOptions::default() };
    mesh.send(1, 1, &declare_with(5, &queue, passive.clone()));
    assert_eq!(mesh.take(1, 1), vec![Frame::Ok { request: RequestId(4) }, Frame::Ok { request: RequestId(5) }]);
    // The last one goes: so does the queue.
    mesh.send(1, 1, &Frame::Cancel { request: RequestId(6), consumer: ConsumerId(2) });
    mesh.send(1, 1, &declare_with(7, &queue, passive));
    let frames = mesh.take(1, 1);
    assert_eq!(frames[0], Frame::Ok { request: RequestId(6) });
    assert!(matches!(frames[1], Frame::Failed { request: RequestId(7), code: ErrorCode::NotFound, .. }), "{frames:?}");
}
