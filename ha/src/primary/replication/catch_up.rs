//! One backup's link on a primary shard, as `PrimaryReplication` keeps it: the link's
//! `PrimaryStream`, its catch-up *backlog*, its overflow, and whether it is caught up.
//!
//! Catch-up: a link opens with the shard's snapshot (`Shard::replication_snapshot_for`: with the
//! backup's holdings only the difference; every replicated queue as `QueueCreated`, its dedup
//! window as `DedupSeen` (keys of consumed messages included, so that a backup that rejoins
//! suppresses their re-sends once promoted), the messages the backup lacks as `Enqueued` without a
//! hold, what it holds and the primary no longer does as `DequeuedRanges` or `QueueDeleted`).
//! Everything but the messages goes to the stream at once (it is bounded by the queues, their
//! dedup windows' ranges and the holdings' ranges). The messages are the link's *backlog*,
//! kept per queue by position, and live events do not wait behind it: they go to the stream as
//! they come, and the backlog is fed one batch's worth at a time, only when the stream has nothing
//! else pending (`poll_batch`). So live records and catch-up batches interleave: a publish made
//! during the copy of a deep queue is confirmed after at most the batches already in flight, not
//! after the whole copy. Per queue this stays exact: a live `Enqueued` takes a position above every
//! backlog one and may reach the backup first (the backup inserts in position order,
//! `Queue::enqueue_at`); a live `Dequeued` of a position still in the backlog removes it there, and
//! neither is sent (as a message consumed before it was replicated); one of a position already fed
//! goes through the stream (dropped unsent or sent as a dequeue); a live `QueueDeleted` drops the
//! queue's backlog. Once the backlog is empty (fed or dropped) the stream is marked
//! (`PrimaryStream::mark_fed`), and the link is *caught up* when every marked record is in a
//! confirmed batch (`poll_caught_up`, once per link): every snapshot record is then confirmed. An
//! empty backlog is marked at once.
//!
//! A `Barrier` (a suppressed duplicate publish) for a queue whose backlog still holds messages (the
//! original may be one of them) is kept aside, and handed to the stream only once that queue's
//! backlog is fed or dropped.
//!
//! Not here: which links an event goes to, the holds' accounting across links (`PrimaryReplication`),
//! delivery (`delivery_gate`), what a lost link's holds become (`expected_backups`).
//!
//! Invariants:
//! - Per link, the stream receives the snapshot's non-message events first, then later events in
//!   order, with backlog messages fed between them only while the stream has nothing pending; per
//!   queue, every backlog position is below every live one.
//! - A link is reported caught up at most once, and only after every snapshot record was
//!   confirmed by its backup; an overflowed or lost link never is.
//! - Only snapshot messages wait in memory outside a stream (the backlog, no larger than the
//!   snapshot); live events are bounded by the producers' pause at `STREAM_PENDING_PAUSE`, as a
//!   stream's pending records are.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ringmq_core::epoch::Epoch;
use ringmq_core::frame::Message;
use ringmq_core::replication::{Position, ReplicationEvent};
use ringmq_core::wire::message_bytes_len;

use crate::limits::{BATCHES_UNCONFIRMED_MAX, BATCH_HEADER_BYTES, BATCH_MESSAGES_MAX};
use crate::link::LinkId;
use crate::primary::stream::{HeldRecord, Hold, PrimaryStream, StreamOverflow};

/// One backup's link to this shard.
#[derive(Debug)]
pub(super) struct Link {
    /// The backup's address, as its `LinkOpen` named it.
    pub(super) backup: String,
    /// The stream to it.
    pub(super) stream: PrimaryStream,
    /// Snapshot messages not fed to the stream yet, per queue by position.
    backlog: BTreeMap<Arc<str>, BTreeMap<Position, Message>>,
    /// `Barrier` holds for queues still in `backlog`, in order: each goes to the stream once its
    /// queue has left the backlog.
    barriers_waiting: Vec<(Arc<str>, Hold)>,
    /// Messages in `backlog`.
    pub(super) backlog_len: usize,
    /// Set once the backlog is empty and the stream was marked.
    marked: bool,
    /// Set when its stream overflowed: it takes no more records, waiting for `handle_link_lost`.
    pub(super) overflowed: bool,
    /// Holds of events that came after the overflow (and of the one refused): they wait with the
    /// stream's own.
    held_after_overflow: Vec<HeldRecord>,
    /// Set once `poll_caught_up` reported it.
    pub(super) caught_up_reported: bool,
}

impl Link {
    /// The link `id` of `backup` opened with the catch-up `snapshot`: its messages become the
    /// backlog, the rest goes to a new stream in `epoch` now, in order.
    ///
    /// # Panics
    ///
    /// If a snapshot event carries a hold, or is a barrier.
    pub(super) fn open(
        id: LinkId,
        backup: &str,
        epoch: Epoch,
        snapshot: Vec<ReplicationEvent>,
        released: &mut Vec<Hold>,
        overflowed: &mut VecDeque<LinkId>,
    ) -> Link {
        let mut link = Link {
            backup: backup.to_string(),
            stream: PrimaryStream::new(epoch),
            backlog: BTreeMap::new(),
            barriers_waiting: Vec::new(),
            backlog_len: 0,
            marked: false,
            overflowed: false,
            held_after_overflow: Vec::new(),
            caught_up_reported: false,
        };
        for event in snapshot {
            match event {
                ReplicationEvent::Enqueued { queue, position, message, hold, .. } => {
                    assert!(hold.is_none(), "a snapshot's enqueues carry no hold");
                    if link.backlog.entry(queue).or_default().insert(position, message).is_none() {
                        link.backlog_len += 1;
                    }
                }
                ReplicationEvent::Barrier { .. } => panic!("a snapshot carries no barrier"),
                event => link.feed(event, released, overflowed, id),
            }
        }
        link.mark_if_fed();
        link
    }

    /// Whether the link may have a batch to send: not overflowed, with records pending or a
    /// backlog, and room in its window.
    pub(super) fn may_send(&self) -> bool {
        !self.overflowed
            && (self.stream.pending_records() > 0 || self.backlog_len > 0)
            && self.stream.unconfirmed_batches() < BATCHES_UNCONFIRMED_MAX
    }

    /// An overflowed link's share of the hold `hold` of `event`: it waits with the stream's own.
    pub(super) fn keep_after_overflow(&mut self, event: &ReplicationEvent, hold: Hold) {
        self.held_after_overflow.push(held_record(event, hold));
    }

    /// True once every snapshot event was fed and confirmed by the backup (never when overflowed).
    pub(super) fn is_caught_up(&self) -> bool {
        !self.overflowed && self.snapshot_confirmed()
    }

    /// True once every snapshot event was fed and confirmed by the backup, overflowed or not.
    pub(super) fn snapshot_confirmed(&self) -> bool {
        self.marked && self.stream.mark_confirmed()
    }

    /// Marks the stream once the backlog is empty (each link once).
    pub(super) fn mark_if_fed(&mut self) {
        if !self.marked && !self.overflowed && self.backlog_len == 0 {
            self.stream.mark_fed();
            self.marked = true;
        }
    }

    /// Removes the backlog's part that `event` makes moot: a `Dequeued` position still in the
    /// backlog (returns true: the event must not be fed, neither record is sent), or the whole
    /// backlog of a deleted queue (returns false: the deletion is fed).
    pub(super) fn take_from_backlog(&mut self, event: &ReplicationEvent) -> bool {
        if self.backlog_len == 0 {
            return false;
        }
        match event {
            ReplicationEvent::Dequeued { queue, position } => {
                let Some(messages) = self.backlog.get_mut(queue) else { return false };
                if messages.remove(position).is_none() {
                    return false;
                }
                if messages.is_empty() {
                    self.backlog.remove(queue);
                }
                self.backlog_len -= 1;
                true
            }
            ReplicationEvent::QueueDeleted { name } => {
                if let Some(messages) = self.backlog.remove(name) {
                    self.backlog_len -= messages.len();
                }
                false
            }
            _ => false,
        }
    }

    /// Feeds one batch's worth of the backlog (at most `BATCH_MESSAGES_MAX` messages and about
    /// `bytes_max` bytes; a larger first message goes alone), lowest positions of the first queue
    /// first, but only while the stream has nothing else pending: live records go out first, and
    /// a live enqueue is never queued behind catch-up messages in the stream. Marks the stream when
    /// the backlog is empty.
    pub(super) fn feed_backlog(
        &mut self,
        bytes_max: usize,
        released: &mut Vec<Hold>,
        overflowed: &mut VecDeque<LinkId>,
        id: LinkId,
    ) {
        if self.overflowed || self.backlog_len == 0 || self.stream.pending_records() > 0 {
            return;
        }
        let mut bytes = BATCH_HEADER_BYTES;
        let mut messages = 0usize;
        while messages < BATCH_MESSAGES_MAX as usize {
            let Some(mut entry) = self.backlog.first_entry() else { break };
            let queue = entry.key().clone();
            let Some((&position, message)) = entry.get().first_key_value() else { unreachable!("no empty queue") };
            // Name, position, count: an Enqueued header, counted per message to stay on the safe side.
            let size = message_bytes_len(message) + queue.len() + 14;
            if messages > 0 && bytes + size > bytes_max {
                break;
            }
            let message = entry.get_mut().remove(&position).expect("first key present");
            if entry.get().is_empty() {
                entry.remove();
            }
            self.backlog_len -= 1;
            bytes += size;
            messages += 1;
            let event = ReplicationEvent::Enqueued { queue, position, message, hold: None, holders: 0 };
            self.feed(event, released, overflowed, id);
            if self.overflowed {
                return;
            }
        }
        self.flush_barriers(released);
        self.mark_if_fed();
    }

    /// Hands each waiting barrier whose queue has left the backlog to the stream, in order.
    pub(super) fn flush_barriers(&mut self, released: &mut Vec<Hold>) {
        if self.barriers_waiting.is_empty() || self.overflowed {
            return;
        }
        let backlog = &self.backlog;
        let stream = &mut self.stream;
        self.barriers_waiting.retain(|(queue, hold)| {
            if backlog.contains_key(queue) {
                return true;
            }
            stream.handle_barrier(queue, *hold);
            false
        });
        self.stream.poll_released(released);
    }

    /// Feeds one event to the stream; on overflow, finishes the link.
    pub(super) fn feed(
        &mut self,
        event: ReplicationEvent,
        released: &mut Vec<Hold>,
        overflowed: &mut VecDeque<LinkId>,
        id: LinkId,
    ) {
        let result = match event {
            ReplicationEvent::QueueCreated { name, options, level } => {
                self.stream.handle_queue_created(&name, options, level);
                Ok(())
            }
            ReplicationEvent::QueueDeleted { name } => {
                self.stream.handle_queue_deleted(&name);
                Ok(())
            }
            ReplicationEvent::Enqueued { queue, position, message, hold, .. } => {
                let result = self.stream.handle_enqueued(&queue, position, message, hold);
                if let Err(StreamOverflow { hold: Some(hold), .. }) = &result {
                    let queue = queue.to_string();
                    self.held_after_overflow.push(HeldRecord { queue, position: Some(position), hold: *hold });
                }
                result
            }
            ReplicationEvent::Dequeued { queue, position } => self.stream.handle_dequeued(&queue, position),
            ReplicationEvent::DequeuedRanges { queue, ranges } => self.stream.handle_dequeued_ranges(&queue, &ranges),
            ReplicationEvent::DedupSeen { queue, keys } => {
                self.stream.handle_dedup_seen(&queue, keys);
                Ok(())
            }
            ReplicationEvent::Barrier { queue, hold, .. } => {
                if self.backlog.contains_key(&queue) {
                    // The original may still be in the backlog: the barrier waits for it to be fed.
                    self.barriers_waiting.push((queue, hold));
                } else {
                    self.stream.handle_barrier(&queue, hold);
                }
                Ok(())
            }
            ReplicationEvent::ExchangeCreated { name, kind, level } => {
                self.stream.handle_exchange_created(&name, kind, level);
                Ok(())
            }
            ReplicationEvent::ExchangeDeleted { name } => {
                self.stream.handle_exchange_deleted(&name);
                Ok(())
            }
            ReplicationEvent::Bound { exchange, queue, key } => {
                self.stream.handle_bound(&exchange, &queue, &key);
                Ok(())
            }
            ReplicationEvent::Unbound { exchange, queue, key } => {
                self.stream.handle_unbound(&exchange, &queue, &key);
                Ok(())
            }
        };
        self.stream.poll_released(released);
        if result.is_err() {
            // The stream takes nothing more; its holds (the refused record's with them, above)
            // wait for the loss, which decides whether they are released or kept for the backup.
            // The backlog will never be sent.
            self.overflowed = true;
            self.backlog.clear();
            self.backlog_len = 0;
            overflowed.push_back(id);
        }
    }

    /// Releases every hold the link still has (in its stream, those that came after an overflow,
    /// and barriers waiting for the backlog; the backlog's messages hold none) and drops its
    /// backlog.
    pub(super) fn finish(&mut self, released: &mut Vec<Hold>) {
        released.extend(self.take_held().into_iter().map(|held| held.hold));
    }

    /// Hands back every hold the link still has, with its queue and position (see `finish`), and
    /// drops its backlog.
    pub(super) fn take_held(&mut self) -> Vec<HeldRecord> {
        let mut held = self.stream.take_held();
        held.append(&mut self.held_after_overflow);
        let barriers = self.barriers_waiting.drain(..);
        held.extend(barriers.map(|(queue, hold)| HeldRecord { queue: queue.to_string(), position: None, hold }));
        self.backlog.clear();
        self.backlog_len = 0;
        held
    }
}

/// The hold `hold` of `event` (an `Enqueued` or a `Barrier`) with its queue and position.
fn held_record(event: &ReplicationEvent, hold: Hold) -> HeldRecord {
    match event {
        ReplicationEvent::Enqueued { queue, position, .. } => {
            HeldRecord { queue: queue.to_string(), position: Some(*position), hold }
        }
        ReplicationEvent::Barrier { queue, .. } => HeldRecord { queue: queue.to_string(), position: None, hold },
        other => unreachable!("only enqueues and barriers carry holds, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::primary::replication::test_support::*;

    #[test]
    fn queue_creates_go_first_live_records_do_not_wait_and_the_link_is_caught_up_once_confirmed() {
        // Goal: catch-up: the snapshot's queue creates precede everything, a later event goes out
        // before the snapshot's messages, and the link is reported caught up once, when the batch
        // carrying the last snapshot message is confirmed.
        let mut replication = PrimaryReplication::new(Epoch(1));
        // An empty snapshot is caught up at the first poll, and reported once.
        replication.handle_link_opened(link(7), "empty:1", Vec::new());
        assert_eq!(replication.poll_caught_up(), Some((link(7), "empty:1".to_string())));
        assert_eq!(replication.poll_caught_up(), None);
        // A snapshot of two queues; a later event comes before any batch.
        let snapshot = vec![created("a"), created("b"), enqueued("a", 0, None), enqueued("b", 4, None)];
        replication.handle_link_opened(link(8), "full:1", snapshot);
        replication.handle_event(enqueued("a", 1, Some(1)));
        assert_eq!(replication.poll_caught_up(), None);
        // The first batch: the creates and the live enqueue; its hold comes back on its confirm.
        let batch = replication.poll_batch(link(8), BYTES).unwrap();
        assert!(matches!(&batch.records[0], Record::QueueCreated { name, .. } if name == "a"));
        assert_eq!(positions(&batch.records, "a"), vec![1]);
        assert!(positions(&batch.records, "b").is_empty());
        replication.handle_confirm(link(8), batch.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert_eq!(replication.poll_caught_up(), None);
        // The second: the snapshot's messages; until it is confirmed, no catch-up.
        let batch = replication.poll_batch(link(8), BYTES).unwrap();
        assert_eq!(positions(&batch.records, "a"), vec![0]);
        assert_eq!(positions(&batch.records, "b"), vec![4]);
        assert_eq!(replication.poll_caught_up(), None);
        replication.handle_confirm(link(8), batch.stream_seq).unwrap();
        assert_eq!(replication.poll_caught_up(), Some((link(8), "full:1".to_string())));
        assert_eq!(replication.poll_caught_up(), None);
        // Link 7 got the later event but no snapshot; the hold: once per stream.
        assert_eq!(positions(&drain(&mut replication, link(7)), "a"), vec![1]);
        assert_eq!(released(&mut replication), vec![hold(1)]);
    }

    #[test]
    fn a_deep_backlog_interleaves_with_live_records_and_a_live_hold_is_released_before_it_ends() {
        // Goal: a deep queue never overflows a catching-up stream nor pauses producers; a live
        // enqueue (same queue and another) goes out with the next batch and its hold comes back
        // while most of the backlog is still unsent; a live dequeue of a backlog position is
        // never sent, nor its message; every other position is sent once; caught up at the end.
        let depth = STREAM_PENDING_MAX as u64 + 1000;
        let mut snapshot = vec![created("deep"), created("other")];
        snapshot.extend((0..depth).map(|position| enqueued("deep", position, None)));
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(link(1), "b:1", snapshot);
        assert_eq!(replication.backlog_len(link(1)), depth as usize);
        // A few backlog batches go out (and are confirmed) first.
        let mut records = Vec::new();
        for _ in 0..3 {
            let batch = replication.poll_batch(link(1), BYTES).unwrap();
            replication.handle_confirm(link(1), batch.stream_seq).unwrap();
            records.extend(batch.records);
        }
        // Live: an enqueue to the deep queue and one to another, each with a hold, and a dequeue
        // of a snapshot message not yet sent.
        replication.handle_event(enqueued("deep", depth, Some(5)));
        replication.handle_event(enqueued("other", 0, Some(6)));
        replication.handle_event(dequeued("deep", depth - 1));
        assert!(!replication.producers_must_pause(), "live events do not pause producers");
        let batch = replication.poll_batch(link(1), BYTES).unwrap();
        assert_eq!(positions(&batch.records, "deep"), vec![depth], "the live enqueue is not behind the backlog");
        assert_eq!(positions(&batch.records, "other"), vec![0]);
        replication.handle_confirm(link(1), batch.stream_seq).unwrap();
        records.extend(batch.records);
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(5), hold(6)], "released before the backlog finished");
        assert!(replication.backlog_len(link(1)) > depth as usize / 2, "most of the backlog is unsent");
        assert_eq!(replication.poll_caught_up(), None);
        records.extend(drain(&mut replication, link(1)));
        let mut sent = positions(&records, "deep");
        assert!(!sent.contains(&(depth - 1)), "a dequeued backlog message is not sent");
        assert!(!records.iter().any(|record| matches!(record, Record::Dequeued { .. })), "nor its dequeue");
        sent.sort_unstable();
        let expected: Vec<u64> = (0..=depth).filter(|&position| position != depth - 1).collect();
        assert_eq!(sent, expected, "every other position once");
        assert_eq!(replication.poll_caught_up(), Some((link(1), "b:1".to_string())));
        assert_eq!(replication.backlog_len(link(1)), 0);
        assert_eq!(replication.poll_overflowed(), None);
    }

    #[test]
    fn live_dequeues_and_deletes_take_from_the_backlog_and_the_catch_up_diff_goes_first() {
        // Goal: a live dequeue of a position already fed is sent as a dequeue; a queue deleted
        // during catch-up drops its backlog (and the link is still caught up); the diff's
        // `DequeuedRanges` and `QueueDeleted` go out with the creates, before any message.
        let mut replication = PrimaryReplication::new(Epoch(1));
        let mut snapshot = vec![
            ReplicationEvent::QueueDeleted { name: Arc::from("gone") },
            created("q"),
            created("r"),
            ReplicationEvent::DequeuedRanges { queue: Arc::from("q"), ranges: vec![(Position(10), Position(12))] },
        ];
        snapshot.extend((0..3).map(|position| enqueued("q", position, None)));
        snapshot.extend((0..5000).map(|position| enqueued("r", position, None)));
        replication.handle_link_opened(link(1), "b:1", snapshot);
        let batch = replication.poll_batch(link(1), BYTES).unwrap();
        assert!(matches!(&batch.records[0], Record::QueueDeleted { name } if name == "gone"));
        let ranges: Vec<&Record> = batch.records.iter().filter(|r| matches!(r, Record::Dequeued { .. })).collect();
        assert_eq!(ranges, [&Record::Dequeued { queue: "q".to_string(), ranges: vec![(Position(10), Position(12))] }]);
        assert!(positions(&batch.records, "q").is_empty(), "the diff's records go alone first");
        replication.handle_confirm(link(1), batch.stream_seq).unwrap();
        // The next batch carries q's three messages and the start of r's.
        let batch = replication.poll_batch(link(1), BYTES).unwrap();
        assert_eq!(positions(&batch.records, "q"), vec![0, 1, 2]);
        replication.handle_confirm(link(1), batch.stream_seq).unwrap();
        // q:1 was sent: its dequeue goes out. r is deleted: its backlog goes, the delete is sent.
        replication.handle_event(dequeued("q", 1));
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("r") });
        assert_eq!(replication.backlog_len(link(1)), 0);
        let records = drain(&mut replication, link(1));
        assert!(
            records.contains(&Record::Dequeued { queue: "q".to_string(), ranges: vec![(Position(1), Position(1))] })
        );
        assert!(records.contains(&Record::QueueDeleted { name: "r".to_string() }));
        assert!(positions(&records, "r").is_empty());
        assert_eq!(replication.poll_caught_up(), Some((link(1), "b:1".to_string())));
    }

    #[test]
    fn a_barrier_on_a_catching_up_link_waits_for_the_original_in_the_backlog() {
        // Goal: a duplicate whose original is still in a link's catch-up backlog (unsent) is not
        // released by that link before the batch carrying the original is confirmed, although live
        // records overtake the backlog; a barrier of a queue not in the backlog does not wait for it.
        let mut replication = PrimaryReplication::new(Epoch(1));
        let depth = 3 * BATCH_MESSAGES_MAX as u64;
        let mut snapshot = vec![created("deep"), created("q")];
        snapshot.extend((0..depth).map(|position| enqueued("deep", position, None)));
        replication.handle_link_opened(link(1), "b:1", snapshot);
        // The original is the last backlog message of "deep".
        replication.handle_event(barrier("deep", 1));
        replication.handle_event(enqueued("q", 0, Some(2)));
        replication.handle_event(barrier("q", 3));
        // The creates and the live enqueue go first, before any backlog message.
        let live = replication.poll_batch(link(1), BYTES).unwrap();
        assert_eq!(positions(&live.records, "q"), vec![0]);
        assert!(positions(&live.records, "deep").is_empty());
        replication.handle_confirm(link(1), live.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(2), hold(3)], "q's barrier waits for q only");
        let mut sent = Vec::new();
        while replication.backlog_len(link(1)) > 0 {
            let batch = replication.poll_batch(link(1), BYTES).unwrap();
            sent.extend(positions(&batch.records, "deep"));
            replication.handle_confirm(link(1), batch.stream_seq).unwrap();
            if !sent.contains(&(depth - 1)) {
                assert!(released(&mut replication).is_empty(), "released before the original was sent");
            }
        }
        // The backlog is fed; the batch carrying its last message is confirmed by now.
        assert_eq!(sent.last(), Some(&(depth - 1)));
        assert_eq!(released(&mut replication), vec![hold(1)]);
        // Lost while a barrier waits for the backlog: released with the loss.
        let mut snapshot = vec![created("deep")];
        snapshot.extend((0..depth).map(|position| enqueued("deep", position, None)));
        replication.handle_link_opened(link(2), "c:1", snapshot);
        replication.handle_event(barrier("deep", 4));
        assert_eq!(released(&mut replication), vec![hold(4)], "link 1 had confirmed everything");
        replication.poll_batch(link(2), BYTES).unwrap();
        replication.handle_link_lost(link(2));
        assert_eq!(released(&mut replication), vec![hold(4)]);
    }

    #[test]
    fn a_catch_up_sends_the_dedup_window_with_its_queue_create_and_waits_for_its_confirm() {
        // Goal: a snapshot's DedupSeen goes to the stream at once, right after its queue's
        // create and before the backlog's messages, and the link is caught up only once the
        // batch carrying it is confirmed.
        let mut replication = PrimaryReplication::new(Epoch(1));
        let keys = vec![("p".to_string(), vec![(1, 9)])];
        let dedup = ReplicationEvent::DedupSeen { queue: Arc::from("q"), keys: keys.clone() };
        replication.handle_link_opened(link(1), "b:1", vec![created("q"), dedup, enqueued("q", 9, None)]);
        // The stream has the create and the window pending, so the backlog waits for them.
        let batch = replication.poll_batch(link(1), BYTES).unwrap();
        assert_eq!(
            batch.records,
            [
                Record::QueueCreated {
                    name: "q".into(),
                    options: QueueOptions::default(),
                    level: ReplicationLevel::All
                },
                Record::DedupSeen { queue: "q".into(), keys },
            ]
        );
        replication.handle_confirm(link(1), batch.stream_seq).unwrap();
        assert_eq!(replication.poll_caught_up(), None, "the backlog's message is not sent yet");
        assert_eq!(positions(&drain(&mut replication, link(1)), "q"), [9]);
        assert_eq!(replication.poll_caught_up(), Some((link(1), "b:1".to_string())));
    }
}
