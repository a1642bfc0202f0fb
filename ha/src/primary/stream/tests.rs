//! Tests of `PrimaryStream` as a whole, through its public calls.

use bytes::Bytes;

use super::*;
use ringmq_core::ids::{ConnId, Seq, ShardId};

fn message(body: u64) -> Message {
    Message { body: Bytes::from(body.to_le_bytes().to_vec()), ..Message::default() }
}

fn hold(seq: u64) -> Option<Hold> {
    Some(Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(seq) })
}

fn holds(seqs: &[u64]) -> Vec<Hold> {
    seqs.iter().map(|&seq| hold(seq).unwrap()).collect()
}

fn released(stream: &mut PrimaryStream) -> Vec<Hold> {
    let mut out = Vec::new();
    stream.poll_released(&mut out);
    out
}

fn enqueue(stream: &mut PrimaryStream, queue: &str, position: u64) {
    stream.handle_enqueued(queue, Position(position), message(position), hold(position)).unwrap();
}

fn ranges(pairs: &[(u64, u64)]) -> Vec<(Position, Position)> {
    pairs.iter().map(|&(first, last)| (Position(first), Position(last))).collect()
}

const BYTES: usize = 64 * 1024;

#[test]
fn catch_up_dequeue_ranges_merge_with_pending_ones_and_go_out_as_one_record() {
    // Goal: the diff's ranges of positions the primary no longer holds merge with each other
    // and with pending dequeues (overlapping or touching), and count one pending record each.
    let mut stream = PrimaryStream::new(Epoch(1));
    stream.handle_dequeued("q", Position(20)).unwrap();
    let ranges = [(Position(1), Position(3)), (Position(10), Position(19)), (Position(30), Position(30))];
    stream.handle_dequeued_ranges("q", &ranges).unwrap();
    assert_eq!(stream.pending_records(), 3, "1..=3, 10..=20, 30");
    stream.handle_dequeued_ranges("q", &[(Position(2), Position(12)), (Position(21), Position(29))]).unwrap();
    assert_eq!(stream.pending_records(), 1);
    let batch = stream.poll_batch(64 * 1024).unwrap();
    assert_eq!(batch.records, [Record::Dequeued { queue: "q".into(), ranges: vec![(Position(1), Position(30))] }]);
    assert_eq!(stream.pending_records(), 0);
}

#[test]
fn configuration_records_go_out_in_the_order_fed_before_queue_data() {
    // Goal: exchange creates and deletes, binds and unbinds are batched in one order with
    // queue creates and deletes, exactly as fed, and ahead of the data of any queue; a batch
    // too small for all of them keeps that order across batches; they count as pending.
    let mut stream = PrimaryStream::new(Epoch(1));
    stream.handle_exchange_created("x", ExchangeKind::Topic, ReplicationLevel::All);
    stream.handle_queue_created("q", QueueOptions::default(), ReplicationLevel::All);
    stream.handle_enqueued("q", Position(0), message(0), None).unwrap();
    stream.handle_bound("x", "q", "a.*");
    stream.handle_unbound("x", "q", "a.*");
    stream.handle_queue_deleted("old");
    stream.handle_exchange_deleted("x");
    assert_eq!(stream.pending_records(), 7);
    let config = vec![
        Record::ExchangeCreated { name: "x".into(), kind: ExchangeKind::Topic, level: ReplicationLevel::All },
        Record::QueueCreated { name: "q".into(), options: QueueOptions::default(), level: ReplicationLevel::All },
        Record::Bound { exchange: "x".into(), queue: "q".into(), key: "a.*".into() },
        Record::Unbound { exchange: "x".into(), queue: "q".into(), key: "a.*".into() },
        Record::QueueDeleted { name: "old".into() },
        Record::ExchangeDeleted { name: "x".into() },
    ];
    let data = Record::Enqueued { queue: "q".into(), first_position: Position(0), messages: vec![message(0)] };
    let batch = stream.poll_batch(BATCH_BYTES_MAX as usize).unwrap();
    let mut expected = config.clone();
    expected.push(data.clone());
    assert_eq!(batch.records, expected);
    assert_eq!(stream.pending_records(), 0);

    // Room for only a few records a batch: the same order, cut in several batches.
    let mut small = PrimaryStream::new(Epoch(1));
    small.handle_exchange_created("x", ExchangeKind::Topic, ReplicationLevel::All);
    small.handle_queue_created("q", QueueOptions::default(), ReplicationLevel::All);
    small.handle_enqueued("q", Position(0), message(0), None).unwrap();
    small.handle_bound("x", "q", "a.*");
    small.handle_unbound("x", "q", "a.*");
    small.handle_queue_deleted("old");
    small.handle_exchange_deleted("x");
    let budget = BATCH_HEADER_BYTES + record_encoded_len(&config[0]) + record_encoded_len(&config[1]);
    let mut sent = Vec::new();
    let mut batches = 0;
    while let Some(batch) = small.poll_batch(budget) {
        small.handle_confirm(batch.stream_seq).unwrap();
        sent.extend(batch.records);
        batches += 1;
    }
    assert!(batches >= 3, "{batches} batches");
    assert_eq!(sent, expected);
}

#[test]
fn batching_merges_consecutive_enqueues_and_range_compresses_dequeues() {
    // Goal: many changes become few records: one Enqueued per run of positions per queue, one
    // Dequeued per queue with merged ranges.
    let mut stream = PrimaryStream::new(Epoch(2));
    // Five messages to "a", three to "b", interleaved.
    for position in 0..5 {
        enqueue(&mut stream, "a", position);
        if position < 3 {
            enqueue(&mut stream, "b", 100 + position);
        }
    }
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!((batch.epoch, batch.stream_seq), (Epoch(2), StreamSeq(1)));
    assert_eq!(batch.records.len(), 2);
    assert_eq!(
        batch.records[0],
        Record::Enqueued { queue: "a".into(), first_position: Position(0), messages: (0..5).map(message).collect() }
    );
    assert!(
        matches!(&batch.records[1], Record::Enqueued { queue, messages, .. } if queue == "b" && messages.len() == 3)
    );
    // Dequeues out of order: 3, 0, 1, 4 merge into 0..=1 and 3..=4.
    for position in [3, 0, 1, 4] {
        stream.handle_dequeued("a", Position(position)).unwrap();
    }
    assert_eq!(stream.pending_records(), 2);
    // Then 2 joins them into one range.
    stream.handle_dequeued("a", Position(2)).unwrap();
    assert_eq!(stream.pending_records(), 1);
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(batch.stream_seq, StreamSeq(2));
    assert_eq!(batch.records, vec![Record::Dequeued { queue: "a".into(), ranges: ranges(&[(0, 4)]) }]);
    assert_eq!(stream.poll_batch(BYTES), None);
}

#[test]
fn message_consumed_before_replication_is_never_sent_and_its_hold_is_released_at_once() {
    // Goal: the rule: consumed and acked before replicated means not sent at all.
    let mut stream = PrimaryStream::new(Epoch(1));
    for position in 0..4 {
        enqueue(&mut stream, "q", position);
    }
    // Position 1 is consumed before any batch: its hold comes back now.
    stream.handle_dequeued("q", Position(1)).unwrap();
    assert_eq!(released(&mut stream), holds(&[1]));
    // The batch has two runs (0, then 2..=3) and no dequeue.
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(
        batch.records,
        vec![
            Record::Enqueued { queue: "q".into(), first_position: Position(0), messages: vec![message(0)] },
            Record::Enqueued { queue: "q".into(), first_position: Position(2), messages: vec![message(2), message(3)] },
        ]
    );
    // Consuming every pending message leaves nothing to send.
    enqueue(&mut stream, "q", 4);
    stream.handle_dequeued("q", Position(4)).unwrap();
    assert_eq!(stream.poll_batch(BYTES), None);
    assert_eq!(stream.sent_last(), StreamSeq(1));
    assert_eq!(stream.counters().messages_consumed_unsent, 2);
    // The confirm releases only the holds of the messages that were sent.
    stream.handle_confirm(StreamSeq(1)).unwrap();
    assert_eq!(released(&mut stream), holds(&[4, 0, 2, 3]));
}

#[test]
fn confirms_release_exactly_the_holds_of_confirmed_batches_in_order() {
    // Goal: a cumulative confirm releases every hold of the batches it covers, oldest first,
    // and nothing of later batches.
    let mut stream = PrimaryStream::new(Epoch(1));
    for seq in 1..=3 {
        enqueue(&mut stream, "q", 2 * seq);
        enqueue(&mut stream, "q", 2 * seq + 1);
        assert_eq!(stream.poll_batch(BYTES).unwrap().stream_seq, StreamSeq(seq));
    }
    // Nothing is released before a confirm.
    assert!(released(&mut stream).is_empty());
    // Confirming 2 releases batches 1 and 2.
    stream.handle_confirm(StreamSeq(2)).unwrap();
    assert_eq!(released(&mut stream), holds(&[2, 3, 4, 5]));
    // A repeated confirm releases nothing more.
    stream.handle_confirm(StreamSeq(2)).unwrap();
    assert!(released(&mut stream).is_empty());
    stream.handle_confirm(StreamSeq(3)).unwrap();
    assert_eq!(released(&mut stream), holds(&[6, 7]));
    assert_eq!(stream.counters().holds_released_by_confirm, 6);
}

#[test]
fn confirm_above_the_last_sent_batch_or_going_backwards_is_an_error() {
    // Goal: a misbehaving backup gets an error naming both seqs, never a panic.
    let mut stream = PrimaryStream::new(Epoch(1));
    enqueue(&mut stream, "q", 0);
    stream.poll_batch(BYTES).unwrap();
    enqueue(&mut stream, "q", 1);
    stream.poll_batch(BYTES).unwrap();
    let error = stream.handle_confirm(StreamSeq(3)).unwrap_err();
    assert_eq!(error, ConfirmError::Ahead { confirmed: StreamSeq(3), sent_last: StreamSeq(2) });
    assert_eq!(error.to_string(), "backup confirmed batch 3, but only batches up to 2 were sent");
    stream.handle_confirm(StreamSeq(2)).unwrap();
    assert_eq!(
        stream.handle_confirm(StreamSeq(1)),
        Err(ConfirmError::Backwards { confirmed: StreamSeq(1), previous: StreamSeq(2) })
    );
}

#[test]
fn full_window_stops_batching_until_a_confirm_opens_it() {
    // Goal: at most BATCHES_UNCONFIRMED_MAX batches in flight; records wait, then go.
    let mut stream = PrimaryStream::new(Epoch(1));
    for position in 0..BATCHES_UNCONFIRMED_MAX as u64 {
        enqueue(&mut stream, "q", position);
        assert!(stream.poll_batch(BYTES).is_some());
    }
    // The window is full: the next record waits.
    enqueue(&mut stream, "q", 1000);
    assert_eq!(stream.poll_batch(BYTES), None);
    assert_eq!(stream.pending_records(), 1);
    // One confirm opens one slot.
    stream.handle_confirm(StreamSeq(1)).unwrap();
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(batch.stream_seq, StreamSeq(BATCHES_UNCONFIRMED_MAX as u64 + 1));
    assert_eq!(stream.poll_batch(BYTES), None);
}

#[test]
fn backup_lost_releases_every_hold_still_waiting() {
    // Goal: a dropped backup stops holding publishers: holds of unconfirmed batches and of
    // unbatched messages all come back, each once.
    let mut stream = PrimaryStream::new(Epoch(1));
    enqueue(&mut stream, "q", 0);
    enqueue(&mut stream, "q", 1);
    stream.poll_batch(BYTES).unwrap();
    enqueue(&mut stream, "q", 2);
    stream.poll_batch(BYTES).unwrap();
    stream.handle_confirm(StreamSeq(1)).unwrap();
    assert_eq!(released(&mut stream), holds(&[0, 1]));
    // One message in flight (2), one unbatched (3), one unbatched without hold.
    enqueue(&mut stream, "q", 3);
    stream.handle_enqueued("q", Position(4), message(4), None).unwrap();
    stream.handle_backup_lost();
    assert_eq!(released(&mut stream), holds(&[2, 3]));
    assert_eq!(stream.poll_batch(BYTES), None);
    assert_eq!(stream.pending_records(), 0);
    assert_eq!(stream.counters().holds_released_by_loss, 2);
    // A late confirm from the dropped backup is refused, not applied.
    assert_eq!(stream.handle_confirm(StreamSeq(2)), Err(ConfirmError::AfterLoss { confirmed: StreamSeq(2) }));
}

#[test]
fn queue_create_goes_before_its_data_and_a_delete_drops_unsent_messages() {
    // Goal: creates and deletes keep their order with the data of their queue.
    let mut stream = PrimaryStream::new(Epoch(1));
    // An old queue "q" with an unsent message, deleted, then created again with a new message.
    enqueue(&mut stream, "q", 7);
    stream.handle_queue_deleted("q");
    assert_eq!(released(&mut stream), holds(&[7]));
    stream.handle_queue_created("q", QueueOptions::default(), ReplicationLevel::All);
    enqueue(&mut stream, "q", 0);
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(
        batch.records,
        vec![
            Record::QueueDeleted { name: "q".into() },
            Record::QueueCreated { name: "q".into(), options: QueueOptions::default(), level: ReplicationLevel::All },
            Record::Enqueued { queue: "q".into(), first_position: Position(0), messages: vec![message(0)] },
        ]
    );
    assert_eq!(stream.counters().messages_deleted_unsent, 1);
}

#[test]
fn batches_keep_to_bytes_max_and_a_larger_message_goes_alone() {
    // Goal: batches are cut by size without losing order, and no message is too big to send.
    let mut stream = PrimaryStream::new(Epoch(1));
    let big = Message { body: Bytes::from(vec![0u8; 4000]), ..Message::default() };
    for position in 0..10 {
        stream.handle_enqueued("q", Position(position), big.clone(), None).unwrap();
    }
    let mut next = 0;
    while let Some(batch) = stream.poll_batch(10_000) {
        assert!(batch.encoded_len() <= 10_000, "batch of {} bytes", batch.encoded_len());
        let Record::Enqueued { first_position, messages, .. } = &batch.records[0] else { panic!() };
        assert_eq!(first_position.0, next);
        next += messages.len() as u64;
        stream.handle_confirm(batch.stream_seq).unwrap();
    }
    assert_eq!(next, 10);
    // A message larger than bytes_max goes in a batch of its own.
    stream.handle_enqueued("q", Position(10), big.clone(), None).unwrap();
    stream.handle_enqueued("q", Position(11), big, None).unwrap();
    assert_eq!(stream.poll_batch(100).unwrap().records.len(), 1);
    assert_eq!(stream.poll_batch(100).unwrap().records.len(), 1);
}

#[test]
fn stream_asks_producers_to_pause_then_refuses_past_its_bound_handing_the_hold_back() {
    // Goal: the backpressure policy: pause at STREAM_PENDING_PAUSE, refuse at STREAM_PENDING_MAX.
    let mut stream = PrimaryStream::new(Epoch(1));
    for position in 0..STREAM_PENDING_PAUSE as u64 {
        stream.handle_enqueued("q", Position(position), Message::default(), None).unwrap();
    }
    assert!(stream.producers_must_pause());
    for position in STREAM_PENDING_PAUSE as u64..STREAM_PENDING_MAX as u64 {
        stream.handle_enqueued("q", Position(position), Message::default(), None).unwrap();
    }
    let error = stream.handle_enqueued("q", Position(u64::MAX), Message::default(), hold(9)).unwrap_err();
    assert_eq!(error, StreamOverflow { hold: hold(9), pending: STREAM_PENDING_MAX, max: STREAM_PENDING_MAX });
    // Draining batches ends the pause.
    while let Some(batch) = stream.poll_batch(BATCH_BYTES_MAX as usize) {
        stream.handle_confirm(batch.stream_seq).unwrap();
    }
    assert!(!stream.producers_must_pause());
    assert_eq!(stream.pending_records(), 0);
}

#[test]
fn mark_turns_confirmed_once_every_record_fed_before_it_is_in_a_confirmed_batch() {
    // Goal: the catch-up rule: records fed after the mark do not delay it, and records fed
    // before it count once batched and confirmed, or dropped unsent.
    let mut stream = PrimaryStream::new(Epoch(1));
    // An empty mark is confirmed at once.
    stream.mark_fed();
    assert!(stream.mark_confirmed());
    // A snapshot: two queues, three messages; one of them is consumed before it is batched.
    stream.handle_queue_created("a", QueueOptions::default(), ReplicationLevel::All);
    stream.handle_queue_created("b", QueueOptions::default(), ReplicationLevel::All);
    stream.handle_enqueued("a", Position(0), message(0), None).unwrap();
    stream.handle_enqueued("a", Position(1), message(1), None).unwrap();
    stream.handle_enqueued("b", Position(5), message(5), None).unwrap();
    stream.mark_fed();
    assert!(!stream.mark_confirmed());
    stream.handle_dequeued("a", Position(1)).unwrap();
    // Live records after the mark, on both queues.
    stream.handle_enqueued("a", Position(2), message(2), hold(2)).unwrap();
    stream.handle_enqueued("b", Position(6), message(6), hold(6)).unwrap();
    // Small batches: the creates, then one message at a time.
    let mut seqs = Vec::new();
    while let Some(batch) = stream.poll_batch(BATCH_HEADER_BYTES + 40) {
        seqs.push(batch.stream_seq);
    }
    assert!(seqs.len() >= 3, "{seqs:?}");
    // Confirming all but the last batch may or may not cover the mark; confirming everything does.
    for &seq in &seqs {
        stream.handle_confirm(seq).unwrap();
    }
    assert!(stream.mark_confirmed());
    // Losing the backup un-confirms nothing, but a lost stream is never caught up.
    stream.handle_backup_lost();
    assert!(!stream.mark_confirmed());
}

#[test]
fn mark_waits_for_the_batch_carrying_the_last_marked_record_not_for_later_ones() {
    // Goal: exactly the batch that carried the last marked record must be confirmed.
    let mut stream = PrimaryStream::new(Epoch(1));
    stream.handle_queue_created("q", QueueOptions::default(), ReplicationLevel::All);
    stream.handle_enqueued("q", Position(0), message(0), None).unwrap();
    stream.mark_fed();
    let first = stream.poll_batch(BYTES).unwrap();
    // A later record in a later batch.
    stream.handle_enqueued("q", Position(1), message(1), hold(1)).unwrap();
    let second = stream.poll_batch(BYTES).unwrap();
    assert!(!stream.mark_confirmed());
    stream.handle_confirm(first.stream_seq).unwrap();
    assert!(stream.mark_confirmed(), "the later batch does not delay the mark");
    stream.handle_confirm(second.stream_seq).unwrap();
    assert!(stream.mark_confirmed());
    // A pending dequeue is covered by a new mark.
    stream.handle_dequeued("q", Position(0)).unwrap();
    stream.mark_fed();
    assert!(!stream.mark_confirmed());
    let third = stream.poll_batch(BYTES).unwrap();
    assert!(!stream.mark_confirmed());
    stream.handle_confirm(third.stream_seq).unwrap();
    assert!(stream.mark_confirmed());
}

#[test]
fn a_barrier_waits_for_the_confirm_of_every_earlier_enqueue_of_its_queue() {
    // Goal: a duplicate's hold is never released before the backup confirmed the batch that
    // carried the original (fed earlier), whether the original was pending or in flight;
    // enqueues of other queues and later ones do not delay it; a loss releases it.
    let mut stream = PrimaryStream::new(Epoch(1));
    stream.handle_enqueued("q", Position(0), message(0), hold(1)).unwrap();
    // The original is pending: the barrier waits for its batch and that batch's confirm.
    stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(2) });
    stream.handle_enqueued("q", Position(1), message(1), None).unwrap();
    assert!(released(&mut stream).is_empty());
    let first = stream.poll_batch(BYTES).unwrap();
    assert!(released(&mut stream).is_empty(), "sent, not confirmed");
    // In flight: a barrier now waits for the same batch.
    stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(3) });
    // A barrier of a queue with nothing fed is released at once (nothing sent, nothing pending).
    let mut idle = PrimaryStream::new(Epoch(1));
    idle.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(9) });
    assert_eq!(released(&mut idle), holds(&[9]));
    stream.handle_enqueued("q", Position(2), message(2), None).unwrap();
    stream.handle_enqueued("other", Position(0), message(0), None).unwrap();
    let second = stream.poll_batch(BYTES).unwrap();
    stream.handle_confirm(first.stream_seq).unwrap();
    assert_eq!(released(&mut stream), holds(&[1, 2, 3]));
    assert_eq!(stream.barriers_held(), 0);
    // A barrier behind an unsent enqueue that is dequeued before batching: released once the
    // batches sent by then are confirmed.
    stream.handle_enqueued("q", Position(3), message(3), None).unwrap();
    stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(4) });
    stream.handle_dequeued("q", Position(3)).unwrap();
    assert!(released(&mut stream).is_empty(), "the second batch is unconfirmed");
    stream.handle_confirm(second.stream_seq).unwrap();
    assert_eq!(released(&mut stream), holds(&[4]));
    // A loss releases a waiting barrier.
    stream.handle_enqueued("q", Position(4), message(4), None).unwrap();
    stream.handle_barrier("q", Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(5) });
    stream.poll_batch(BYTES).unwrap();
    stream.handle_backup_lost();
    assert_eq!(released(&mut stream), holds(&[5]));
    assert_eq!(stream.counters().holds_released_by_loss, 1);
}

/// A message carrying the dedup key `producer/seq`.
fn keyed(producer: &str, seq: u64) -> Message {
    let header = ringmq_core::frame::Header {
        name: Bytes::from_static(ringmq_core::limits::DEDUP_HEADER),
        value: Bytes::from(format!("{producer}/{seq}")),
    };
    Message { headers: vec![header], ..message(seq) }
}

fn dedup_seen(queue: &str, keys: &[(&str, &[(u64, u64)])]) -> Record {
    let keys = keys.iter().map(|(producer, ranges)| (producer.to_string(), ranges.to_vec())).collect();
    Record::DedupSeen { queue: queue.to_string(), keys }
}

#[test]
fn a_consumed_unsent_keyed_message_sends_its_key_in_the_next_batch() {
    // Goal: a message dequeued before it was batched is not sent, but its dedup key is, as a
    // DedupSeen record of compact ranges per producer; unkeyed or malformed ones send nothing;
    // a message dequeued after its batch needs no key (the backup stored it).
    let mut stream = PrimaryStream::new(Epoch(1));
    for seq in 1..=6 {
        stream.handle_enqueued("q", Position(seq), keyed("p", seq), hold(seq)).unwrap();
    }
    stream.handle_enqueued("q", Position(7), keyed("a", 40), hold(7)).unwrap();
    stream.handle_enqueued("q", Position(8), message(8), hold(8)).unwrap();
    let malformed = ringmq_core::frame::Header {
        name: Bytes::from_static(ringmq_core::limits::DEDUP_HEADER),
        value: Bytes::from_static(b"no-seq"),
    };
    stream.handle_enqueued("q", Position(9), Message { headers: vec![malformed], ..message(9) }, hold(9)).unwrap();
    for position in [1, 2, 3, 5, 7, 8, 9] {
        stream.handle_dequeued("q", Position(position)).unwrap();
    }
    // The consumed messages' holds come back at once, as before.
    assert_eq!(released(&mut stream), holds(&[1, 2, 3, 5, 7, 8, 9]));
    // Pending: messages 4 and 6, and three ranges (p: 1..=3, 5; a: 40).
    assert_eq!(stream.pending_records(), 5);
    assert_eq!(stream.counters().dedup_keys_kept, 5);
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(
        batch.records,
        vec![
            Record::Enqueued { queue: "q".into(), first_position: Position(4), messages: vec![keyed("p", 4)] },
            Record::Enqueued { queue: "q".into(), first_position: Position(6), messages: vec![keyed("p", 6)] },
            dedup_seen("q", &[("a", &[(40, 40)]), ("p", &[(1, 3), (5, 5)])]),
        ]
    );
    assert_eq!(stream.pending_records(), 0);
    // Dequeued after its batch: a Dequeued record, no key.
    stream.handle_dequeued("q", Position(4)).unwrap();
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(batch.records, vec![Record::Dequeued { queue: "q".into(), ranges: ranges(&[(4, 4)]) }]);
    // A key kept for a queue that is then deleted goes nowhere (its window is gone too).
    stream.handle_enqueued("q", Position(10), keyed("p", 10), None).unwrap();
    stream.handle_dequeued("q", Position(10)).unwrap();
    assert_eq!(stream.pending_records(), 1);
    stream.handle_queue_deleted("q");
    assert_eq!(stream.pending_records(), 1, "only the delete");
    assert_eq!(stream.poll_batch(BYTES).unwrap().records, vec![Record::QueueDeleted { name: "q".into() }]);
}

#[test]
fn kept_dedup_keys_merge_into_ranges_and_split_at_the_batch_limits() {
    // Goal: keys compact into ranges as they come (in any order), the pending count follows
    // the ranges, and more ranges than a batch allows go out over several batches in order.
    let mut stream = PrimaryStream::new(Epoch(1));
    // Positions 1..=6 carry the sequences 5, 3, 4, 9, 1, 2.
    for (position, seq) in [(1, 5), (2, 3), (3, 4), (4, 9), (5, 1), (6, 2)] {
        stream.handle_enqueued("q", Position(position), keyed("p", seq), None).unwrap();
    }
    for position in [1, 2, 4, 5] {
        stream.handle_dequeued("q", Position(position)).unwrap();
    }
    assert_eq!(stream.pending_records(), 2 + 4, "messages 3 and 6; keys 1, 3, 5, 9");
    stream.handle_dequeued("q", Position(3)).unwrap(); // 4 joins 3..=5
    stream.handle_dequeued("q", Position(6)).unwrap(); // 2 joins 1..=5
    assert_eq!(stream.pending_records(), 2, "1..=5 and 9");
    assert_eq!(stream.poll_batch(BYTES).unwrap().records, vec![dedup_seen("q", &[("p", &[(1, 5), (9, 9)])])]);
    // BATCH_DEDUP_RANGES_MAX + 1 separate keys: two batches, lowest first, nothing lost.
    let count = BATCH_DEDUP_RANGES_MAX as u64 + 1;
    for index in 0..count {
        let position = 100 + index;
        stream.handle_enqueued("q", Position(position), keyed("p", 100 + 2 * index), None).unwrap();
        stream.handle_dequeued("q", Position(position)).unwrap();
    }
    assert_eq!(stream.pending_records(), count as usize);
    let mut seen = Vec::new();
    while let Some(batch) = stream.poll_batch(BATCH_BYTES_MAX as usize) {
        assert!(batch.encoded_len() <= BATCH_BYTES_MAX as usize);
        let [Record::DedupSeen { keys, .. }] = &batch.records[..] else { panic!("{:?}", batch.records) };
        assert!(keys.iter().map(|(_, r)| r.len()).sum::<usize>() <= BATCH_DEDUP_RANGES_MAX as usize);
        seen.extend(keys.iter().flat_map(|(_, ranges)| ranges.iter().map(|&(first, _)| first)));
        stream.handle_confirm(batch.stream_seq).unwrap();
    }
    assert_eq!(seen, (0..count).map(|index| 100 + 2 * index).collect::<Vec<_>>());
    assert_eq!(stream.sent_last(), StreamSeq(3));
    // A small byte budget splits a producer's ranges across batches too.
    for index in 0..10u64 {
        stream.handle_enqueued("q", Position(10_000 + index), keyed("p", 10_000 + 2 * index), None).unwrap();
        stream.handle_dequeued("q", Position(10_000 + index)).unwrap();
    }
    let mut batches = 0;
    let mut total = 0;
    while let Some(batch) = stream.poll_batch(BATCH_HEADER_BYTES + 60) {
        batches += 1;
        let [Record::DedupSeen { keys, .. }] = &batch.records[..] else { panic!() };
        total += keys.iter().map(|(_, ranges)| ranges.len()).sum::<usize>();
        stream.handle_confirm(batch.stream_seq).unwrap();
    }
    assert_eq!(total, 10);
    assert!(batches > 1, "{batches}");
}

#[test]
fn catch_up_dedup_keys_go_with_the_queue_creates_and_count_for_the_mark() {
    // Goal: a snapshot's DedupSeen goes out right after its queue's create, before any queue
    // data; the mark waits for it, and for live keys kept before the mark.
    let mut stream = PrimaryStream::new(Epoch(1));
    stream.handle_queue_created("q", QueueOptions::default(), ReplicationLevel::All);
    stream.handle_dedup_seen("q", vec![("p".to_string(), vec![(1, 10)])]);
    stream.handle_enqueued("q", Position(11), keyed("p", 11), None).unwrap();
    stream.handle_dequeued("q", Position(11)).unwrap();
    stream.mark_fed();
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(
        batch.records,
        vec![
            Record::QueueCreated { name: "q".into(), options: QueueOptions::default(), level: ReplicationLevel::All },
            dedup_seen("q", &[("p", &[(1, 10)])]),
            dedup_seen("q", &[("p", &[(11, 11)])]),
        ]
    );
    assert!(!stream.mark_confirmed());
    stream.handle_confirm(batch.stream_seq).unwrap();
    assert!(stream.mark_confirmed());
    // A live key pending at a mark holds it until its batch is confirmed.
    stream.handle_enqueued("q", Position(12), keyed("p", 12), None).unwrap();
    stream.handle_dequeued("q", Position(12)).unwrap();
    stream.mark_fed();
    assert!(!stream.mark_confirmed());
    let batch = stream.poll_batch(BYTES).unwrap();
    assert_eq!(batch.records, vec![dedup_seen("q", &[("p", &[(12, 12)])])]);
    assert!(!stream.mark_confirmed());
    stream.handle_confirm(batch.stream_seq).unwrap();
    assert!(stream.mark_confirmed());
}

#[test]
fn the_oldest_unconfirmed_batch_is_overdue_after_the_bound_and_not_before() {
    // Goal: the confirm timeout reports the oldest unconfirmed batch once it has waited the
    // bound since it became the oldest, not a nanosecond before, and again if asked again; with
    // nothing unconfirmed, or the backup lost, nothing is ever overdue.
    // Method: a virtual clock (`at(ms)`); `handle_timeout` after each round, as the node calls it.
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let timeout = Duration::from_millis(200);
    let mut stream = PrimaryStream::new(Epoch(1));
    // Nothing sent: no deadline, never overdue.
    assert_eq!(stream.handle_timeout(at(0), timeout), Ok(()));
    assert_eq!(stream.confirm_deadline(timeout), None);
    assert_eq!(stream.handle_timeout(at(10_000), timeout), Ok(()));
    // Batch 1 at 10 s: its wait starts then.
    enqueue(&mut stream, "q", 0);
    assert_eq!(stream.poll_batch(BYTES).unwrap().stream_seq, StreamSeq(1));
    assert_eq!(stream.handle_timeout(at(10_000), timeout), Ok(()));
    assert_eq!(stream.confirm_deadline(timeout), Some(at(10_200)));
    // A batch sent behind it does not move the deadline.
    enqueue(&mut stream, "q", 1);
    assert_eq!(stream.poll_batch(BYTES).unwrap().stream_seq, StreamSeq(2));
    assert_eq!(stream.handle_timeout(at(10_100), timeout), Ok(()));
    assert_eq!(stream.confirm_deadline(timeout), Some(at(10_200)));
    // Not before the bound; at it, batch 1 is overdue, and stays so.
    assert_eq!(stream.handle_timeout(at(10_200) - Duration::from_nanos(1), timeout), Ok(()));
    let overdue = ConfirmOverdue { seq: StreamSeq(1), waited: timeout, timeout };
    assert_eq!(stream.handle_timeout(at(10_200), timeout), Err(overdue));
    let later = ConfirmOverdue { seq: StreamSeq(1), waited: Duration::from_millis(250), timeout };
    assert_eq!(stream.handle_timeout(at(10_250), timeout), Err(later));
    assert_eq!(stream.counters().confirms_overdue, 2);
    // A lost backup has nothing to wait for.
    stream.handle_backup_lost();
    assert_eq!(stream.handle_timeout(at(20_000), timeout), Ok(()));
    assert_eq!(stream.confirm_deadline(timeout), None);
}

#[test]
fn a_confirm_in_time_restarts_the_wait_from_the_confirm() {
    // Goal: a backup that confirms within the bound is never overdue, even when the batch behind
    // the confirmed one was sent a full bound ago: that batch waits from the confirm that made it
    // the oldest. Once everything is confirmed, the wait ends.
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let timeout = Duration::from_millis(200);
    let mut stream = PrimaryStream::new(Epoch(1));
    // Batches 1 and 2 both at 0 ms.
    enqueue(&mut stream, "q", 0);
    stream.poll_batch(BYTES).unwrap();
    enqueue(&mut stream, "q", 1);
    stream.poll_batch(BYTES).unwrap();
    assert_eq!(stream.unconfirmed_batches(), 2);
    assert_eq!(stream.handle_timeout(at(0), timeout), Ok(()));
    // Batch 1 confirmed at 199 ms: batch 2's wait starts there.
    stream.handle_confirm(StreamSeq(1)).unwrap();
    assert_eq!(stream.handle_timeout(at(199), timeout), Ok(()));
    assert_eq!(stream.confirm_deadline(timeout), Some(at(399)));
    assert_eq!(stream.handle_timeout(at(398), timeout), Ok(()), "sent 398 ms ago, the oldest for 199 ms");
    // Confirmed in time: nothing waits, however late it gets.
    stream.handle_confirm(StreamSeq(2)).unwrap();
    assert_eq!(stream.handle_timeout(at(398), timeout), Ok(()));
    assert_eq!(stream.confirm_deadline(timeout), None);
    assert_eq!(stream.handle_timeout(at(100_000), timeout), Ok(()));
    // A new batch waits from the call that first sees it.
    enqueue(&mut stream, "q", 2);
    stream.poll_batch(BYTES).unwrap();
    assert_eq!(stream.handle_timeout(at(100_000), timeout), Ok(()));
    assert_eq!(stream.confirm_deadline(timeout), Some(at(100_200)));
    assert_eq!(stream.counters().confirms_overdue, 0);
}
