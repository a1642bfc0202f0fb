//! One primary shard's replication to all its backups: a `PrimaryStream` per backup link, fed the
//! shard's `ReplicationEvent`s, with each backup's catch-up and the holds on publish confirms.
//!
//! Each backup opens one link per shard (backup shard N to primary shard N); the primary shard keeps
//! one `PrimaryReplication`, and in it one stream per open link, keyed by the transport's `LinkId`.
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
//! Holds: an `Enqueued` event's hold goes to every stream, and each stream releases it once
//! (`poll_released` yields it once per stream), so the shard counts `holding_streams()` releases
//! per publish (`Shard::set_replica_holds`). A stream that overflowed (`StreamOverflow`: its backup
//! cannot keep up) takes no more records and is reported by `poll_overflowed`; until the transport
//! closes the link and calls `handle_link_lost`, it still counts in `holding_streams()`, and every
//! hold that comes for it waits with the stream's own, so the count the shard uses and the
//! releases it gets always agree. What a lost link's holds become depends on its backup (below,
//! "Detached backups").
//!
//! Barriers: a `Barrier` event (a suppressed duplicate publish, `Shard::enqueue_batch`) brings a
//! hold like an `Enqueued` one, counted the same, and every stream releases it once: once the
//! backup confirmed every enqueue of its queue fed to the stream before it
//! (`PrimaryStream::handle_barrier`), the original message among them. A link whose backlog still
//! holds messages of that queue (the original may be one of them) keeps the barrier aside, and
//! hands it to the stream only once that queue's backlog is fed or dropped. An overflowed stream
//! releases it at once, a lost one with its other holds.
//!
//! Delivery gates ("deliver only what the backups hold"): a message whose enqueue took holds may
//! be delivered to consumers only once every link that took one (open, not overflowed, when the
//! event came) confirmed it, or ended. Otherwise a consumer could take a message that the backup
//! promoted after a crash lacks, while its producer, unconfirmed, re-sends it, and the new
//! primary would store it again (duplicate suppression cannot know a key it never received).
//! Per queue, each link gates one run of positions: from the first held enqueue it was fed to the
//! last, minus what its backup confirmed. A stream sends a queue's live enqueues in position order
//! (every catch-up message of the queue is below them) and is confirmed cumulatively, so the
//! confirmed part only grows from the bottom: the queue's *delivery bound*, the highest position
//! below every link's unconfirmed run, only rises. `poll_batch` notes, per batch, the highest
//! position of each gated queue it carries; `handle_confirm` raises that link's confirmed position;
//! `handle_link_lost` and an overflow drop the link's runs. `poll_replicated` reports each queue
//! whose bound rose, for `Shard::handle_replicated`. An enqueue that took holds with no link open
//! (only expected backups collect) is reported at once: expected backups hold confirms, never
//! delivery, so a recovering primary does not stall its consumers for `ha-backup-timeout`. A
//! gated message dequeued unsent (a purge) leaves its link's run open until a later enqueue of
//! the queue is confirmed; it only ever holds back messages that link must confirm anyway.
//!
//! Detached backups: a backup that was marked ready stays `ready` when its link drops, so that it
//! can be promoted if this primary died; until it can no longer be promoted as ready (its ready
//! lease ran out, `ready_lease`) the confirms it may hold must stay held. So a link lost (or
//! overflowed) after its catch-up was confirmed, or of a backup already expected here, does not
//! release its holds: they are *kept* for its backup, which becomes expected here (below) as if it
//! had collected them (by queue and position, so that a dequeue releases them as it does
//! collected ones), and collects new holds from then on. `handle_link_lost` says so, and shard 0
//! decides how long (`primary_role`): until a new link of the backup catches up here, or until
//! `handle_expected_timed_out`. A link lost before its catch-up, of a backup not expected,
//! releases its holds: that backup is not ready on its account.
//!
//! Recovering mode (`PROTOCOL.md`, "Recovering"; the reference's expected backups and
//! `ha-backup-timeout`): a newly promoted primary calls `expect_backups` with every backup that was
//! ready under the previous primary, before any client is served. Until such an *expected backup*
//! has a link on this shard, it *collects* the hold of every new `Enqueued` event, one each, as a
//! stream would, and counts in `holding_streams()`. When its link opens here it stops collecting
//! (the new stream takes the holds from then on, so the count is unchanged), and once that link is
//! caught up everything it collected is released, because all those messages were in the snapshot
//! the backup just confirmed; it is then no longer expected on this shard. If the link is lost
//! before that, the collected holds stay held and the backup collects again until a new link of
//! its catches up. `handle_expected_timed_out` (the timeout passed, or the backup is known lost for
//! good) releases everything it collected and stops it. A collected hold is also released when its
//! message is dequeued (or its queue deleted) first: the publish is then confirmed as consumed, as
//! the reference confirms a message every backup confirmed *or* that was consumed. The collected
//! holds are kept per queue and position; they are bounded by the producers' unconfirmed publishes
//! (`PUBLISH_INFLIGHT_MAX` per connection) and, in time, by `ha-backup-timeout`. A `Barrier`'s hold
//! is collected too, per queue, and released by the catch-up, the timeout or its queue's deletion,
//! but not by a dequeue: it has no position of its own, and the original it waits for was stored
//! before the backup's link opened, so the snapshot of its catch-up carries it (or the original
//! was consumed, which releases the duplicate's confirm as late as it would the original's).
//!
//! Call contract (single-threaded, on the shard's thread):
//! - feed every event the shard reports (`Shard::poll_replication`) to `handle_event`, in order;
//! - drain those events *before* `handle_link_opened`, `handle_link_lost`, `expect_backups` and
//!   `handle_expected_timed_out`, and right after any of them call
//!   `Shard::set_replica_holds(holding_streams())`: every event is then fed to exactly the streams
//!   (and expected backups) its hold was counted for;
//! - `handle_confirm` for each confirm a backup sends; on `Err`, close the link and call
//!   `handle_link_lost`;
//! - then `poll_released` (hand the holds to the shard) and `poll_replicated` (hand the delivery
//!   bounds to the shard's `handle_replicated`), `poll_overflowed` (close those links and
//!   call `handle_link_lost`), `poll_caught_up` (tell membership), and `poll_batch` for each of
//!   `links()` until it returns `None` (encode and send);
//! - while `producers_must_pause()`, the shard stops reading producers.
//!
//! - while recovering, the broker-wide rule is the caller's (`primary_role` on shard 0): the
//!   primary is `recovering` until every backup it expects is ready again or timed out; the
//!   `ha-backup-timeout` timer, measured by the caller, ends in `handle_expected_timed_out` on every
//!   shard for each backup still pending (the reference times out only backups that are not
//!   connected; either is safe here). The same call ends a detached backup's hold.
//!
//! Not here: IO, time, the link's handshake (`link_frame`) and heartbeats (`link_heartbeat`), which
//! backups are ready (`membership`), which exchanges and bindings are replicated (shard 0 reports
//! them as events like any other; they reach the stream in order).
//!
//! Invariants:
//! - Every hold an event brings is released exactly once per stream or collecting expected backup
//!   counted in `holding_streams()` when the event came (by a confirm, by being dropped unsent, or
//!   by the stream's loss; for an expected backup, and a lost link's holds kept for it, by the
//!   catch-up of its link, its timeout, or the message's dequeue). A `Barrier`'s hold too, never
//!   by a dequeue, and never before that stream's backup confirmed every enqueue of its queue fed
//!   to it before the barrier, snapshot messages included.
//! - An expected backup collects exactly while it has no link on this shard; it is released (and
//!   forgotten) only by the catch-up of a link opened after everything it collected, or by its
//!   timeout.
//! - Per link, the stream receives the snapshot's non-message events first, then later events in
//!   order, with backlog messages fed between them only while the stream has nothing pending; per
//!   queue, every backlog position is below every live one.
//! - A link is reported caught up at most once, and only after every snapshot record was
//!   confirmed by its backup; an overflowed or lost link never is.
//! - A queue's reported delivery bound only rises, never exceeds the last enqueue event seen for
//!   it, and stays below every held position an open, not overflowed link that took its hold has
//!   not confirmed.
//! - Only snapshot messages wait in memory outside a stream (the backlog, no larger than the
//!   snapshot); live events are bounded by the producers' pause at `STREAM_PENDING_PAUSE`, as a
//!   stream's pending records are.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ringmq_core::epoch::Epoch;
use ringmq_core::frame::Message;
use ringmq_core::replication::Position;
pub use ringmq_core::replication::ReplicationEvent;
use ringmq_core::wire::message_bytes_len;

use crate::limits::{BACKUPS_MAX, BATCHES_UNCONFIRMED_MAX, BATCH_HEADER_BYTES, BATCH_MESSAGES_MAX};
use crate::primary_stream::{ConfirmError, HeldRecord, Hold, PrimaryStream, StreamOverflow};
use crate::record::{Batch, Record, StreamSeq};

/// The transport's id of one link connection.
pub type LinkId = u64;

/// One primary shard's replication streams, one per backup link.
#[derive(Debug)]
pub struct PrimaryReplication {
    /// The primary's epoch, stamped on every batch.
    epoch: Epoch,
    /// Every link opened and not yet lost, overflowed ones included.
    links: BTreeMap<LinkId, Link>,
    /// Holds released and not yet polled.
    released: Vec<Hold>,
    /// Links that overflowed, not yet polled.
    overflowed: VecDeque<LinkId>,
    /// Backups expected back after promotion and still pending here, by address (recovering mode).
    expected: BTreeMap<String, Expected>,
    /// Delivery gates, per queue that had a held enqueue; removed with their queue.
    gates: BTreeMap<Arc<str>, Gate>,
    /// Queues whose delivery bound may have risen, each once (`Gate::dirty`).
    gates_dirty: Vec<Arc<str>>,
    /// Delivery bounds raised, for `poll_replicated`.
    replicated: Vec<(Arc<str>, Position)>,
}

/// One queue's delivery gate: what the links still have to confirm before its held messages may
/// be delivered.
#[derive(Debug)]
struct Gate {
    /// The highest position of a live enqueue seen.
    highest: Position,
    /// The bound last reported by `poll_replicated` (`Position(0)`: none yet).
    reported: Position,
    /// Set while the queue is in `gates_dirty`.
    dirty: bool,
    /// Per link that took holds on this queue's enqueues and may not have confirmed them all.
    links: Vec<LinkGate>,
}

/// What one link gates of one queue: every live enqueue from `first` to `last` took a hold on it;
/// its backup confirmed every position up to `confirmed` that the link was sent. Since a stream
/// sends a queue's live enqueues in position order (the catch-up's all below them) and is
/// confirmed cumulatively, the link gates exactly its held positions above
/// `max(confirmed, first - 1)`, while `last > confirmed`.
#[derive(Debug, Clone, Copy)]
struct LinkGate {
    /// The link.
    link: LinkId,
    /// The first position it held.
    first: Position,
    /// The last position it held.
    last: Position,
    /// The highest position of the queue in a batch its backup confirmed.
    confirmed: Position,
}

/// One expected backup on this shard: ready under the previous primary (recovering mode), or
/// detached from this one (a lost link's holds kept for it).
#[derive(Debug, Default)]
struct Expected {
    /// Its links open on this shard; while there is none, it collects holds.
    links: BTreeSet<LinkId>,
    /// The holds it collected, by queue and message position.
    collected: BTreeMap<Arc<str>, BTreeMap<Position, Hold>>,
    /// The `Barrier` holds it collected, by queue.
    barriers: BTreeMap<Arc<str>, Vec<Hold>>,
}

/// One backup's link to this shard.
#[derive(Debug)]
struct Link {
    /// The backup's address, as its `LinkOpen` named it.
    backup: String,
    /// The stream to it.
    stream: PrimaryStream,
    /// Snapshot messages not fed to the stream yet, per queue by position.
    backlog: BTreeMap<Arc<str>, BTreeMap<Position, Message>>,
    /// `Barrier` holds for queues still in `backlog`, in order: each goes to the stream once its
    /// queue has left the backlog.
    barriers_waiting: Vec<(Arc<str>, Hold)>,
    /// Messages in `backlog`.
    backlog_len: usize,
    /// Set once the backlog is empty and the stream was marked.
    marked: bool,
    /// Set when its stream overflowed: it takes no more records, waiting for `handle_link_lost`.
    overflowed: bool,
    /// Holds of events that came after the overflow (and of the one refused): they wait with the
    /// stream's own.
    held_after_overflow: Vec<HeldRecord>,
    /// Set once `poll_caught_up` reported it.
    caught_up_reported: bool,
    /// Per batch sent and not confirmed, per gated queue it carries enqueues of, the highest such
    /// position: on the confirm, the queue's `LinkGate::confirmed`.
    gate_tops: VecDeque<(StreamSeq, Arc<str>, Position)>,
}

impl PrimaryReplication {
    /// A shard's replication for a primary in `epoch`, with no link.
    pub fn new(epoch: Epoch) -> Self {
        PrimaryReplication {
            epoch,
            links: BTreeMap::new(),
            released: Vec::new(),
            overflowed: VecDeque::new(),
            expected: BTreeMap::new(),
            gates: BTreeMap::new(),
            gates_dirty: Vec::new(),
            replicated: Vec::new(),
        }
    }

    /// A backup's link for this shard opened: a new `PrimaryStream` with the catch-up `snapshot`
    /// (from `Shard::replication_snapshot_for`): its messages become the link's backlog, the rest
    /// goes to the stream now, in order (see the module doc).
    ///
    /// # Panics
    ///
    /// If `link` is already open (the transport reuses no id), or a snapshot event carries a hold.
    pub fn handle_link_opened(&mut self, link: LinkId, backup: &str, snapshot: Vec<ReplicationEvent>) {
        assert!(!self.links.contains_key(&link), "link {link} opened twice");
        let mut entry = Link {
            backup: backup.to_string(),
            stream: PrimaryStream::new(self.epoch),
            backlog: BTreeMap::new(),
            barriers_waiting: Vec::new(),
            backlog_len: 0,
            marked: false,
            overflowed: false,
            held_after_overflow: Vec::new(),
            caught_up_reported: false,
            gate_tops: VecDeque::new(),
        };
        for event in snapshot {
            match event {
                ReplicationEvent::Enqueued { queue, position, message, hold } => {
                    assert!(hold.is_none(), "a snapshot's enqueues carry no hold");
                    if entry.backlog.entry(queue).or_default().insert(position, message).is_none() {
                        entry.backlog_len += 1;
                    }
                }
                ReplicationEvent::Barrier { .. } => panic!("a snapshot carries no barrier"),
                event => entry.feed(event, &mut self.released, &mut self.overflowed, link),
            }
        }
        entry.mark_if_fed();
        self.links.insert(link, entry);
        if let Some(expected) = self.expected.get_mut(backup) {
            // It stops collecting: the new stream takes the holds from now on.
            expected.links.insert(link);
            self.settle_expected();
        }
    }

    /// A change to this shard's replicated queues: fed to every stream at once, not behind its
    /// catch-up backlog (see the module doc). An `Enqueued` event's hold goes to every stream, and
    /// each releases it once.
    ///
    /// While recovering, each expected backup without a link collects the hold too, and a
    /// `Dequeued` (or `QueueDeleted`) event releases the holds collected for its message (queue).
    pub fn handle_event(&mut self, event: ReplicationEvent) {
        if !self.expected.is_empty() {
            self.collect_for_expected(&event);
        }
        match &event {
            ReplicationEvent::Enqueued { queue, position, hold, .. } => self.gate(queue, *position, hold.is_some()),
            ReplicationEvent::QueueDeleted { name } => {
                // Its messages are gone; a queue re-created under the name starts a new gate.
                self.gates.remove(name);
            }
            _ => {}
        }
        let overflowed_before = self.overflowed.len();
        let hold = match &event {
            ReplicationEvent::Enqueued { hold, .. } => *hold,
            ReplicationEvent::Barrier { hold, .. } => Some(*hold),
            _ => None,
        };
        let links = self.links.len();
        let mut event = Some(event);
        for (index, (&id, link)) in self.links.iter_mut().enumerate() {
            if link.overflowed {
                // Counted by the shard, but taking no records: its share of the hold waits with it.
                if let (Some(hold), Some(event)) = (hold, event.as_ref()) {
                    link.held_after_overflow.push(held_record(event, hold));
                }
                continue;
            }
            // The last stream takes the event itself, the others a clone (message bodies are
            // shared, not copied).
            let Some(event) = (if index + 1 == links { event.take() } else { event.clone() }) else { break };
            if link.take_from_backlog(&event) {
                // Dequeued before it was fed: neither is sent.
                link.flush_barriers(&mut self.released);
                link.mark_if_fed();
                continue;
            }
            link.feed(event, &mut self.released, &mut self.overflowed, id);
            link.flush_barriers(&mut self.released);
            link.mark_if_fed();
        }
        self.ungate_overflowed(overflowed_before);
        if !self.expected.is_empty() {
            self.settle_expected();
        }
    }

    /// Drains the delivery bounds raised since the last call: per queue, a position up to which
    /// every message whose enqueue took holds is confirmed by every link that took one and is
    /// still open (lost and overflowed links gate nothing), and nothing later than the last
    /// enqueue event seen. The shard's `handle_replicated` takes them. Each queue's reported bound
    /// only rises. Enqueues that took holds with no link open (only expected backups) are
    /// reported at once: expected backups never gate delivery.
    pub fn poll_replicated(&mut self) -> std::vec::Drain<'_, (Arc<str>, Position)> {
        for name in self.gates_dirty.drain(..) {
            let Some(gate) = self.gates.get_mut(&name) else { continue };
            gate.dirty = false;
            gate.links.retain(|entry| entry.last > entry.confirmed);
            let bound = gate.bound();
            if bound > gate.reported {
                gate.reported = bound;
                self.replicated.push((name, bound));
            }
        }
        self.replicated.drain(..)
    }

    /// How many holds each new enqueue takes (the shard's `set_replica_holds`): one per link not
    /// yet lost, overflowed ones included (they release their share at once), plus one per expected
    /// backup without a link on this shard (it collects them).
    pub fn holding_streams(&self) -> u32 {
        let collecting = self.expected.values().filter(|expected| expected.links.is_empty()).count();
        (self.links.len() + collecting) as u32
    }

    /// Recovering mode: on promotion, before any client is served, every backup that was ready
    /// under the previous primary (the last `members` frame, without this broker). Each collects
    /// the hold of every new enqueue until a link of its on this shard is caught up, or
    /// `handle_expected_timed_out`. A backup already expected is left as it is; one with a link
    /// open here already does not collect.
    ///
    /// # Panics
    ///
    /// If that makes more than `BACKUPS_MAX` backups expected (the list comes from a decoded
    /// `members` frame, which holds at most that many).
    pub fn expect_backups(&mut self, backups: &[String]) {
        for backup in backups {
            if self.expected.contains_key(backup) {
                continue;
            }
            let links = self.links.iter().filter(|(_, link)| link.backup == *backup).map(|(&id, _)| id).collect();
            self.expected.insert(backup.clone(), Expected { links, ..Expected::default() });
        }
        assert!(
            self.expected.len() <= BACKUPS_MAX,
            "{} expected backups, at most {BACKUPS_MAX} allowed",
            self.expected.len()
        );
        self.settle_expected();
    }

    /// The expected `backup` was given up on (`ha-backup-timeout` passed) or is known lost for
    /// good: every hold it collected is released, and it collects no more. Its links, if any, go on
    /// as ordinary streams. A backup not expected (caught up here already, timed out before, or
    /// never expected) is ignored.
    pub fn handle_expected_timed_out(&mut self, backup: &str) {
        if let Some(expected) = self.expected.remove(backup) {
            expected.release(&mut self.released);
        }
    }

    /// The expected backups still pending on this shard (neither caught up here nor timed out),
    /// by address: recovering mode's and detached ones alike.
    pub fn expected_pending(&self) -> impl Iterator<Item = &str> + '_ {
        self.expected.keys().map(String::as_str)
    }

    /// How many holds the expected `backup` has collected and not released (0 if not expected),
    /// for status and metrics.
    pub fn expected_held(&self, backup: &str) -> usize {
        self.expected.get(backup).map_or(0, |expected| {
            expected.collected.values().map(BTreeMap::len).sum::<usize>()
                + expected.barriers.values().map(Vec::len).sum::<usize>()
        })
    }

    /// The backup of `link` confirmed every batch up to `seq`: holds released (the backlog is fed
    /// on by `poll_batch`).
    ///
    /// # Errors
    ///
    /// `ConfirmError` when the confirm is above the last batch sent, goes backwards, or the link is
    /// unknown or overflowed (`AfterLoss`); nothing changed, and the caller drops the link.
    pub fn handle_confirm(&mut self, link: LinkId, seq: StreamSeq) -> Result<(), ConfirmError> {
        let Some(entry) = self.links.get_mut(&link).filter(|entry| !entry.overflowed) else {
            return Err(ConfirmError::AfterLoss { confirmed: seq });
        };
        entry.stream.handle_confirm(seq)?;
        entry.stream.poll_released(&mut self.released);
        while entry.gate_tops.front().is_some_and(|&(batch, _, _)| batch <= seq) {
            let (_, queue, top) = entry.gate_tops.pop_front().expect("front checked above");
            // A queue deleted since has no gate (or a new one, whose positions are all above).
            let Some(gate) = self.gates.get_mut(&queue) else { continue };
            if let Some(held) = gate.links.iter_mut().find(|held| held.link == link) {
                held.confirmed = held.confirmed.max(top);
                gate.mark_dirty(&queue, &mut self.gates_dirty);
            }
        }
        if !self.expected.is_empty() {
            self.settle_expected();
        }
        Ok(())
    }

    /// The link closed, its heartbeat expired, or it overflowed and the transport closed it: it no
    /// longer counts in `holding_streams()`, and gates nothing. Unknown links are ignored (a link
    /// lost twice).
    ///
    /// If its catch-up had been confirmed, or its backup is expected here, every hold it still has
    /// is kept for its backup, which is expected here from now on (see the module doc, "Detached
    /// backups"): with no other link here it collects (and counts instead). Otherwise the holds are
    /// released. Returns whether the backup is expected here after the loss: then only a caught-up
    /// link of its, or `handle_expected_timed_out`, releases what is kept.
    pub fn handle_link_lost(&mut self, link: LinkId) -> bool {
        let Some(mut entry) = self.links.remove(&link) else { return false };
        self.ungate(link);
        self.overflowed.retain(|&id| id != link);
        let keep = entry.snapshot_confirmed() || self.expected.contains_key(&entry.backup);
        if !keep {
            entry.finish(&mut self.released);
            return false;
        }
        let backup = std::mem::take(&mut entry.backup);
        let others = self.links.iter().filter(|(_, other)| other.backup == backup).map(|(&id, _)| id).collect();
        let expected =
            self.expected.entry(backup.clone()).or_insert_with(|| Expected { links: others, ..Expected::default() });
        expected.links.remove(&link);
        for held in entry.take_held() {
            expected.keep(held, &mut self.released);
        }
        self.settle_expected();
        self.expected.contains_key(&backup)
    }

    /// The next batch to send on `link`: `None` when nothing is ready, the window is full, or the
    /// link is unknown or overflowed.
    ///
    /// # Panics
    ///
    /// If `bytes_max` is above `BATCH_BYTES_MAX`.
    pub fn poll_batch(&mut self, link: LinkId, bytes_max: usize) -> Option<Batch> {
        let entry = self.links.get_mut(&link)?;
        if entry.overflowed {
            return None;
        }
        let overflowed_before = self.overflowed.len();
        entry.feed_backlog(bytes_max, &mut self.released, &mut self.overflowed, link);
        let batch = entry.stream.poll_batch(bytes_max);
        entry.stream.poll_released(&mut self.released);
        if let Some(batch) = &batch {
            for record in &batch.records {
                let Record::Enqueued { queue, first_position, messages } = record else { continue };
                let Some((name, gate)) = self.gates.get_key_value(queue.as_str()) else { continue };
                if gate.links.iter().any(|held| held.link == link) {
                    let top = Position(first_position.0 + messages.len() as u64 - 1);
                    entry.gate_tops.push_back((batch.stream_seq, name.clone(), top));
                }
            }
        }
        self.ungate_overflowed(overflowed_before);
        if !self.expected.is_empty() {
            self.settle_expected();
        }
        batch
    }

    /// Links that may have a batch to send: not overflowed, with records pending or a backlog,
    /// and room in their window. The transport need not ask the others.
    pub fn links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.links
            .iter()
            .filter(|(_, link)| {
                !link.overflowed
                    && (link.stream.pending_records() > 0 || link.backlog_len > 0)
                    && link.stream.unconfirmed_batches() < BATCHES_UNCONFIRMED_MAX
            })
            .map(|(&id, _)| id)
    }

    /// Appends the holds released since the last call (one per stream for each publish); returns
    /// how many.
    pub fn poll_released(&mut self, out: &mut Vec<Hold>) -> usize {
        let count = self.released.len();
        out.append(&mut self.released);
        count
    }

    /// A link whose catch-up backlog has been fully confirmed since the last poll (each reported
    /// once), with the backup's name. (An expected backup's collected holds were released as soon
    /// as its link caught up, before this report.)
    pub fn poll_caught_up(&mut self) -> Option<(LinkId, String)> {
        let (&id, link) = self.links.iter_mut().find(|(_, link)| !link.caught_up_reported && link.is_caught_up())?;
        link.caught_up_reported = true;
        Some((id, link.backup.clone()))
    }

    /// A link whose stream overflowed (`StreamOverflow`), each reported once: the transport closes
    /// it, then calls `handle_link_lost`.
    pub fn poll_overflowed(&mut self) -> Option<LinkId> {
        self.overflowed.pop_front()
    }

    /// True while the shard must stop reading producers: a stream has `STREAM_PENDING_PAUSE`
    /// records pending (a catch-up backlog never counts: it is fed one batch at a time).
    pub fn producers_must_pause(&self) -> bool {
        self.links.values().any(|link| !link.overflowed && link.stream.producers_must_pause())
    }

    /// Catch-up messages of `link` not yet fed to its stream (0 if unknown), for status and tests.
    pub fn backlog_len(&self, link: LinkId) -> usize {
        self.links.get(&link).map_or(0, |link| link.backlog_len)
    }

    /// The epoch stamped on every batch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The stream of `link`, for metrics and status (`None` if unknown).
    pub fn stream(&self, link: LinkId) -> Option<&PrimaryStream> {
        self.links.get(&link).map(|link| &link.stream)
    }

    /// A live enqueue: with a hold, every open link that is not overflowed gates it (it is fed
    /// to them next); with none of those, it is deliverable at once and reported so.
    fn gate(&mut self, queue: &Arc<str>, position: Position, held: bool) {
        if !self.gates.contains_key(queue) {
            if !held {
                return;
            }
            let gate = Gate { highest: position, reported: Position(0), dirty: false, links: Vec::new() };
            self.gates.insert(queue.clone(), gate);
        }
        let gate = self.gates.get_mut(queue).expect("inserted above");
        gate.highest = gate.highest.max(position);
        let mut gating = false;
        if held {
            for (&id, _) in self.links.iter().filter(|(_, link)| !link.overflowed) {
                gating = true;
                match gate.links.iter_mut().find(|entry| entry.link == id) {
                    Some(entry) => entry.last = position,
                    None => {
                        gate.links.push(LinkGate { link: id, first: position, last: position, confirmed: Position(0) })
                    }
                }
            }
        }
        if !gating {
            gate.mark_dirty(queue, &mut self.gates_dirty);
        }
    }

    /// `link` gates nothing any more (lost, or overflowed): every queue it gated may deliver on.
    fn ungate(&mut self, link: LinkId) {
        for (name, gate) in &mut self.gates {
            let before = gate.links.len();
            gate.links.retain(|entry| entry.link != link);
            if gate.links.len() != before {
                gate.mark_dirty(name, &mut self.gates_dirty);
            }
        }
    }

    /// Ungates the links that overflowed since `self.overflowed` had `before` entries.
    fn ungate_overflowed(&mut self, before: usize) {
        for index in before..self.overflowed.len() {
            let link = self.overflowed[index];
            self.ungate(link);
        }
    }

    /// Recovering mode, before `event` goes to the streams: expected backups without a link
    /// collect its hold; a dequeue or a queue's deletion releases what they collected for it.
    fn collect_for_expected(&mut self, event: &ReplicationEvent) {
        match event {
            ReplicationEvent::Enqueued { queue, position, hold: Some(hold), .. } => {
                for expected in self.expected.values_mut().filter(|expected| expected.links.is_empty()) {
                    let held = expected.collected.entry(queue.clone()).or_default();
                    // Positions are never reused within a queue; should one be, the earlier hold
                    // is released rather than lost, so that no publisher waits forever.
                    self.released.extend(held.insert(*position, *hold));
                }
            }
            ReplicationEvent::Dequeued { queue, position } => {
                for expected in self.expected.values_mut() {
                    let Some(held) = expected.collected.get_mut(queue) else { continue };
                    self.released.extend(held.remove(position));
                    if held.is_empty() {
                        expected.collected.remove(queue);
                    }
                }
            }
            ReplicationEvent::Barrier { queue, hold } => {
                for expected in self.expected.values_mut().filter(|expected| expected.links.is_empty()) {
                    expected.barriers.entry(queue.clone()).or_default().push(*hold);
                }
            }
            ReplicationEvent::QueueDeleted { name } => {
                for expected in self.expected.values_mut() {
                    if let Some(held) = expected.collected.remove(name) {
                        self.released.extend(held.into_values());
                    }
                    self.released.extend(expected.barriers.remove(name).into_iter().flatten());
                }
            }
            _ => {}
        }
    }

    /// Recovering mode: every expected backup with a caught-up link here releases what it
    /// collected and is no longer expected on this shard.
    fn settle_expected(&mut self) {
        let links = &self.links;
        let released = &mut self.released;
        self.expected.retain(|_, expected| {
            let caught_up = expected.links.iter().any(|id| links.get(id).is_some_and(Link::is_caught_up));
            if caught_up {
                std::mem::take(expected).release(released);
            }
            !caught_up
        });
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

impl Gate {
    /// The highest position every open link holding this queue's messages has confirmed (or
    /// holds none above), never above the last enqueue seen.
    fn bound(&self) -> Position {
        let mut bound = self.highest;
        for entry in &self.links {
            let below_first = Position(entry.first.0.saturating_sub(1));
            bound = bound.min(entry.confirmed.max(below_first));
        }
        bound
    }

    /// Puts the queue in `dirty` once, for the next `poll_replicated`.
    fn mark_dirty(&mut self, name: &Arc<str>, dirty: &mut Vec<Arc<str>>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(name.clone());
        }
    }
}

impl Expected {
    /// Releases every hold collected.
    fn release(self, released: &mut Vec<Hold>) {
        for held in self.collected.into_values() {
            released.extend(held.into_values());
        }
        released.extend(self.barriers.into_values().flatten());
    }

    /// Keeps a lost link's hold as if collected: by queue and position, a barrier's by queue.
    fn keep(&mut self, held: HeldRecord, released: &mut Vec<Hold>) {
        let queue: Arc<str> = Arc::from(held.queue);
        match held.position {
            // Positions are never reused within a queue; should one be, the earlier hold is
            // released rather than lost.
            Some(position) => released.extend(self.collected.entry(queue).or_default().insert(position, held.hold)),
            None => self.barriers.entry(queue).or_default().push(held.hold),
        }
    }
}

impl Link {
    /// True once every snapshot event was fed and confirmed by the backup (never when overflowed).
    fn is_caught_up(&self) -> bool {
        !self.overflowed && self.snapshot_confirmed()
    }

    /// True once every snapshot event was fed and confirmed by the backup, overflowed or not.
    fn snapshot_confirmed(&self) -> bool {
        self.marked && self.stream.mark_confirmed()
    }

    /// Marks the stream once the backlog is empty (each link once).
    fn mark_if_fed(&mut self) {
        if !self.marked && !self.overflowed && self.backlog_len == 0 {
            self.stream.mark_fed();
            self.marked = true;
        }
    }

    /// Removes the backlog's part that `event` makes moot: a `Dequeued` position still in the
    /// backlog (returns true: the event must not be fed, neither record is sent), or the whole
    /// backlog of a deleted queue (returns false: the deletion is fed).
    fn take_from_backlog(&mut self, event: &ReplicationEvent) -> bool {
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
    fn feed_backlog(
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
            let event = ReplicationEvent::Enqueued { queue, position, message, hold: None };
            self.feed(event, released, overflowed, id);
            if self.overflowed {
                return;
            }
        }
        self.flush_barriers(released);
        self.mark_if_fed();
    }

    /// Hands each waiting barrier whose queue has left the backlog to the stream, in order.
    fn flush_barriers(&mut self, released: &mut Vec<Hold>) {
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
    fn feed(
        &mut self,
        event: ReplicationEvent,
        released: &mut Vec<Hold>,
        overflowed: &mut VecDeque<LinkId>,
        id: LinkId,
    ) {
        let result = match event {
            ReplicationEvent::QueueCreated { name, options, .. } => {
                self.stream.handle_queue_created(&name, options);
                Ok(())
            }
            ReplicationEvent::QueueDeleted { name } => {
                self.stream.handle_queue_deleted(&name);
                Ok(())
            }
            ReplicationEvent::Enqueued { queue, position, message, hold } => {
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
            ReplicationEvent::Barrier { queue, hold } => {
                if self.backlog.contains_key(&queue) {
                    // The original may still be in the backlog: the barrier waits for it to be fed.
                    self.barriers_waiting.push((queue, hold));
                } else {
                    self.stream.handle_barrier(&queue, hold);
                }
                Ok(())
            }
            ReplicationEvent::ExchangeCreated { name, kind } => {
                self.stream.handle_exchange_created(&name, kind);
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
    fn finish(&mut self, released: &mut Vec<Hold>) {
        released.extend(self.take_held().into_iter().map(|held| held.hold));
    }

    /// Hands back every hold the link still has, with its queue and position (see `finish`), and
    /// drops its backlog.
    fn take_held(&mut self) -> Vec<HeldRecord> {
        let mut held = self.stream.take_held();
        held.append(&mut self.held_after_overflow);
        let barriers = self.barriers_waiting.drain(..);
        held.extend(barriers.map(|(queue, hold)| HeldRecord { queue: queue.to_string(), position: None, hold }));
        self.backlog.clear();
        self.backlog_len = 0;
        held
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use bytes::Bytes;
    use ringmq_core::frame::{Message, QueueOptions};
    use ringmq_core::ids::{ConnId, Seq, ShardId};
    use ringmq_core::replication_level::ReplicationLevel;

    use super::*;
    use crate::limits::{STREAM_PENDING_MAX, STREAM_PENDING_PAUSE};
    use crate::record::{Position, Record};

    const BYTES: usize = 64 * 1024;

    fn hold(seq: u64) -> Hold {
        Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(seq) }
    }

    fn created(name: &str) -> ReplicationEvent {
        ReplicationEvent::QueueCreated {
            name: Arc::from(name),
            options: QueueOptions::default(),
            level: ReplicationLevel::All,
        }
    }

    fn enqueued(queue: &str, position: u64, hold_seq: Option<u64>) -> ReplicationEvent {
        ReplicationEvent::Enqueued {
            queue: Arc::from(queue),
            position: Position(position),
            message: Message { body: Bytes::from(position.to_le_bytes().to_vec()), ..Message::default() },
            hold: hold_seq.map(hold),
        }
    }

    fn released(replication: &mut PrimaryReplication) -> Vec<Hold> {
        let mut out = Vec::new();
        replication.poll_released(&mut out);
        out
    }

    /// Sends every ready batch of `link` and confirms it at once; returns the records sent.
    fn drain(replication: &mut PrimaryReplication, link: LinkId) -> Vec<Record> {
        let mut records = Vec::new();
        while let Some(batch) = replication.poll_batch(link, BYTES) {
            replication.handle_confirm(link, batch.stream_seq).unwrap();
            records.extend(batch.records);
        }
        records
    }

    /// The positions of `queue`'s enqueues among `records`, in order.
    fn positions(records: &[Record], queue: &str) -> Vec<u64> {
        records
            .iter()
            .filter_map(|record| match record {
                Record::Enqueued { queue: name, first_position, messages } if name == queue => {
                    Some((first_position.0..first_position.0 + messages.len() as u64).collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn every_stream_gets_every_event_and_releases_each_hold_once() {
        // Goal: with two backups, a publish's hold comes back twice, once per stream, each after
        // that backup confirmed the batch carrying the message.
        let mut replication = PrimaryReplication::new(Epoch(3));
        replication.handle_link_opened(1, "b1:5672", Vec::new());
        replication.handle_link_opened(2, "b2:5672", Vec::new());
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(10)));
        assert_eq!(replication.links().collect::<Vec<_>>(), vec![1, 2]);
        let first = replication.poll_batch(1, BYTES).unwrap();
        let second = replication.poll_batch(2, BYTES).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.epoch, Epoch(3));
        assert!(released(&mut replication).is_empty());
        replication.handle_confirm(1, first.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(10)]);
        replication.handle_confirm(2, second.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(10)]);
        // Nothing left to send: no link is listed.
        assert_eq!(replication.links().count(), 0);
        // Dequeued events reach the backups too.
        replication.handle_event(ReplicationEvent::Dequeued { queue: Arc::from("q"), position: Position(0) });
        assert_eq!(
            drain(&mut replication, 1),
            vec![Record::Dequeued { queue: "q".into(), ranges: vec![(Position(0), Position(0))] }]
        );
        // A confirm on an unknown link is the backup's error, not a panic.
        assert_eq!(
            replication.handle_confirm(9, StreamSeq(1)),
            Err(ConfirmError::AfterLoss { confirmed: StreamSeq(1) })
        );
    }

    #[test]
    fn queue_creates_go_first_live_records_do_not_wait_and_the_link_is_caught_up_once_confirmed() {
        // Goal: catch-up: the snapshot's queue creates precede everything, a later event goes out
        // before the snapshot's messages, and the link is reported caught up once, when the batch
        // carrying the last snapshot message is confirmed.
        let mut replication = PrimaryReplication::new(Epoch(1));
        // An empty snapshot is caught up at the first poll, and reported once.
        replication.handle_link_opened(7, "empty:1", Vec::new());
        assert_eq!(replication.poll_caught_up(), Some((7, "empty:1".to_string())));
        assert_eq!(replication.poll_caught_up(), None);
        // A snapshot of two queues; a later event comes before any batch.
        let snapshot = vec![created("a"), created("b"), enqueued("a", 0, None), enqueued("b", 4, None)];
        replication.handle_link_opened(8, "full:1", snapshot);
        replication.handle_event(enqueued("a", 1, Some(1)));
        assert_eq!(replication.poll_caught_up(), None);
        // The first batch: the creates and the live enqueue; its hold comes back on its confirm.
        let batch = replication.poll_batch(8, BYTES).unwrap();
        assert!(matches!(&batch.records[0], Record::QueueCreated { name, .. } if name == "a"));
        assert_eq!(positions(&batch.records, "a"), vec![1]);
        assert!(positions(&batch.records, "b").is_empty());
        replication.handle_confirm(8, batch.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert_eq!(replication.poll_caught_up(), None);
        // The second: the snapshot's messages; until it is confirmed, no catch-up.
        let batch = replication.poll_batch(8, BYTES).unwrap();
        assert_eq!(positions(&batch.records, "a"), vec![0]);
        assert_eq!(positions(&batch.records, "b"), vec![4]);
        assert_eq!(replication.poll_caught_up(), None);
        replication.handle_confirm(8, batch.stream_seq).unwrap();
        assert_eq!(replication.poll_caught_up(), Some((8, "full:1".to_string())));
        assert_eq!(replication.poll_caught_up(), None);
        // Link 7 got the later event but no snapshot; the hold: once per stream.
        assert_eq!(positions(&drain(&mut replication, 7), "a"), vec![1]);
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
        replication.handle_link_opened(1, "b:1", snapshot);
        assert_eq!(replication.backlog_len(1), depth as usize);
        // A few backlog batches go out (and are confirmed) first.
        let mut records = Vec::new();
        for _ in 0..3 {
            let batch = replication.poll_batch(1, BYTES).unwrap();
            replication.handle_confirm(1, batch.stream_seq).unwrap();
            records.extend(batch.records);
        }
        // Live: an enqueue to the deep queue and one to another, each with a hold, and a dequeue
        // of a snapshot message not yet sent.
        replication.handle_event(enqueued("deep", depth, Some(5)));
        replication.handle_event(enqueued("other", 0, Some(6)));
        replication.handle_event(dequeued("deep", depth - 1));
        assert!(!replication.producers_must_pause(), "live events do not pause producers");
        let batch = replication.poll_batch(1, BYTES).unwrap();
        assert_eq!(positions(&batch.records, "deep"), vec![depth], "the live enqueue is not behind the backlog");
        assert_eq!(positions(&batch.records, "other"), vec![0]);
        replication.handle_confirm(1, batch.stream_seq).unwrap();
        records.extend(batch.records);
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(5), hold(6)], "released before the backlog finished");
        assert!(replication.backlog_len(1) > depth as usize / 2, "most of the backlog is unsent");
        assert_eq!(replication.poll_caught_up(), None);
        records.extend(drain(&mut replication, 1));
        let mut sent = positions(&records, "deep");
        assert!(!sent.contains(&(depth - 1)), "a dequeued backlog message is not sent");
        assert!(!records.iter().any(|record| matches!(record, Record::Dequeued { .. })), "nor its dequeue");
        sent.sort_unstable();
        let expected: Vec<u64> = (0..=depth).filter(|&position| position != depth - 1).collect();
        assert_eq!(sent, expected, "every other position once");
        assert_eq!(replication.poll_caught_up(), Some((1, "b:1".to_string())));
        assert_eq!(replication.backlog_len(1), 0);
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
        replication.handle_link_opened(1, "b:1", snapshot);
        let batch = replication.poll_batch(1, BYTES).unwrap();
        assert!(matches!(&batch.records[0], Record::QueueDeleted { name } if name == "gone"));
        let ranges: Vec<&Record> = batch.records.iter().filter(|r| matches!(r, Record::Dequeued { .. })).collect();
        assert_eq!(ranges, [&Record::Dequeued { queue: "q".to_string(), ranges: vec![(Position(10), Position(12))] }]);
        assert!(positions(&batch.records, "q").is_empty(), "the diff's records go alone first");
        replication.handle_confirm(1, batch.stream_seq).unwrap();
        // The next batch carries q's three messages and the start of r's.
        let batch = replication.poll_batch(1, BYTES).unwrap();
        assert_eq!(positions(&batch.records, "q"), vec![0, 1, 2]);
        replication.handle_confirm(1, batch.stream_seq).unwrap();
        // q:1 was sent: its dequeue goes out. r is deleted: its backlog goes, the delete is sent.
        replication.handle_event(dequeued("q", 1));
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("r") });
        assert_eq!(replication.backlog_len(1), 0);
        let records = drain(&mut replication, 1);
        assert!(
            records.contains(&Record::Dequeued { queue: "q".to_string(), ranges: vec![(Position(1), Position(1))] })
        );
        assert!(records.contains(&Record::QueueDeleted { name: "r".to_string() }));
        assert!(positions(&records, "r").is_empty());
        assert_eq!(replication.poll_caught_up(), Some((1, "b:1".to_string())));
    }

    #[test]
    fn an_overflowed_stream_is_reported_once_and_every_hold_for_it_comes_back() {
        // Goal: a backup that never confirms makes its stream overflow; the link is reported for
        // dropping, holds arriving before `handle_link_lost` wait with the stream's own, the loss
        // keeps them for the (caught-up, so maybe ready) backup until it times out, and the other
        // backup is not affected.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(1, "fast:1", Vec::new());
        replication.handle_link_opened(2, "stuck:1", Vec::new());
        replication.handle_event(created("q"));
        let mut holds_out = 0u64;
        let mut position = 0u64;
        while replication.poll_overflowed().is_none() {
            replication.handle_event(enqueued("q", position, Some(position)));
            holds_out += 2;
            position += 1;
            if position.is_multiple_of(4096) {
                drain(&mut replication, 1);
            }
            assert!(position <= STREAM_PENDING_MAX as u64 + 10, "never overflowed");
        }
        assert_eq!(replication.poll_overflowed(), None, "reported once");
        // Still counted until the transport closes it; its share of new holds waits with it.
        assert_eq!(replication.holding_streams(), 2);
        assert_eq!(replication.poll_batch(2, BYTES), None);
        assert!(!replication.links().any(|link| link == 2));
        replication.handle_event(enqueued("q", position, Some(position)));
        holds_out += 2;
        assert_eq!(
            replication.handle_confirm(2, StreamSeq(1)),
            Err(ConfirmError::AfterLoss { confirmed: StreamSeq(1) })
        );
        assert!(replication.handle_link_lost(2), "its empty catch-up was confirmed: kept for stuck:1");
        assert_eq!(replication.holding_streams(), 2, "stuck:1 collects");
        drain(&mut replication, 1);
        assert_eq!(released(&mut replication).len() as u64, holds_out / 2, "the fast stream's share");
        assert_eq!(replication.expected_held("stuck:1") as u64, holds_out / 2);
        replication.handle_expected_timed_out("stuck:1");
        assert_eq!(replication.holding_streams(), 1);
        // Every hold came back: once from each stream.
        assert_eq!(released(&mut replication).len() as u64, holds_out / 2);
        assert!(!replication.producers_must_pause());
        assert_eq!(replication.poll_caught_up(), Some((1, "fast:1".to_string())));
        assert_eq!(replication.poll_caught_up(), None, "an overflowed link is never caught up");
    }

    #[test]
    fn a_lost_link_releases_the_holds_in_its_stream_and_its_backlog() {
        // Goal: a closed link stops holding publishers at once, wherever its holds were.
        let mut replication = PrimaryReplication::new(Epoch(1));
        let mut snapshot = vec![created("q")];
        snapshot.extend((0..STREAM_PENDING_PAUSE as u64 + 10).map(|position| enqueued("q", position, None)));
        replication.handle_link_opened(1, "b:1", snapshot);
        let first = STREAM_PENDING_PAUSE as u64 + 10;
        // These go to the stream, the snapshot's messages stay in the backlog.
        replication.handle_event(enqueued("q", first, Some(1)));
        replication.handle_event(enqueued("q", first + 1, Some(2)));
        assert!(released(&mut replication).is_empty());
        replication.handle_link_lost(1);
        assert_eq!(released(&mut replication), vec![hold(1), hold(2)]);
        assert_eq!(replication.holding_streams(), 0);
        assert_eq!(replication.poll_batch(1, BYTES), None);
        assert_eq!(replication.poll_caught_up(), None);
        // Losing it again changes nothing.
        replication.handle_link_lost(1);
        assert!(released(&mut replication).is_empty());
    }

    fn dequeued(queue: &str, position: u64) -> ReplicationEvent {
        ReplicationEvent::Dequeued { queue: Arc::from(queue), position: Position(position) }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn pending(replication: &PrimaryReplication) -> Vec<&str> {
        replication.expected_pending().collect()
    }

    #[test]
    fn an_expected_backup_holds_confirms_until_its_link_opens_and_catches_up() {
        // Goal: recovering mode: publishes made before the expected backup reconnects are confirmed
        // only once its new link caught up (their messages are in its snapshot), not before.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1"]));
        assert_eq!(pending(&replication), vec!["b1:1"]);
        assert_eq!(replication.holding_streams(), 1, "it collects like a stream");
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(enqueued("q", 1, Some(2)));
        assert!(released(&mut replication).is_empty());
        assert_eq!(replication.expected_held("b1:1"), 2);
        // It reconnects: the stream takes the holds from now on, the count is unchanged.
        replication.handle_link_opened(1, "b1:1", vec![created("q"), enqueued("q", 0, None), enqueued("q", 1, None)]);
        assert_eq!(replication.holding_streams(), 1);
        replication.handle_event(enqueued("q", 2, Some(3)));
        assert_eq!(replication.expected_held("b1:1"), 2, "the stream holds the new one");
        // Sent, not confirmed: still held. The live enqueue goes first, then the snapshot's.
        let live = replication.poll_batch(1, BYTES).unwrap();
        assert_eq!(positions(&live.records, "q"), vec![2]);
        let batch = replication.poll_batch(1, BYTES).unwrap();
        assert_eq!(positions(&batch.records, "q"), vec![0, 1]);
        assert!(released(&mut replication).is_empty());
        assert_eq!(pending(&replication), vec!["b1:1"]);
        // The live batch confirmed: its hold only.
        replication.handle_confirm(1, live.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(3)]);
        assert_eq!(pending(&replication), vec!["b1:1"]);
        // Confirmed: caught up; the collected holds come back, once each.
        replication.handle_confirm(1, batch.stream_seq).unwrap();
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(2)]);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.poll_caught_up(), Some((1, "b1:1".to_string())));
        assert_eq!(replication.holding_streams(), 1);
        // A timeout after the catch-up changes nothing.
        replication.handle_expected_timed_out("b1:1");
        assert!(released(&mut replication).is_empty());
    }

    #[test]
    fn the_timeout_releases_what_an_expected_backup_collected_and_it_collects_no_more() {
        // Goal: `ha-backup-timeout`: a backup that does not come back stops holding publishers.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["gone:1"]));
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(enqueued("q", 1, Some(2)));
        assert!(released(&mut replication).is_empty());
        replication.handle_expected_timed_out("gone:1");
        assert_eq!(released(&mut replication), vec![hold(1), hold(2)]);
        assert_eq!(replication.holding_streams(), 0);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.expected_held("gone:1"), 0);
        // Timed out twice, or a backup never expected: ignored.
        replication.handle_expected_timed_out("gone:1");
        replication.handle_expected_timed_out("never:1");
        assert!(released(&mut replication).is_empty());
        // When it does come back, it is an ordinary link.
        replication.handle_link_opened(1, "gone:1", vec![created("q")]);
        assert_eq!(replication.holding_streams(), 1);
        assert!(pending(&replication).is_empty());
    }

    #[test]
    fn a_dequeue_or_a_queue_deletion_releases_the_holds_collected_for_its_messages() {
        // Goal: a message consumed before the expected backup came back no longer holds its publish.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1"]));
        replication.handle_event(created("q"));
        replication.handle_event(created("r"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_event(enqueued("q", 1, Some(2)));
        replication.handle_event(enqueued("r", 0, Some(3)));
        replication.handle_event(dequeued("q", 1));
        assert_eq!(released(&mut replication), vec![hold(2)]);
        // A dequeue of a message with no collected hold, or of an unknown queue: nothing.
        replication.handle_event(dequeued("q", 7));
        replication.handle_event(dequeued("nowhere", 0));
        assert!(released(&mut replication).is_empty());
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("r") });
        assert_eq!(released(&mut replication), vec![hold(3)]);
        assert_eq!(replication.expected_held("b1:1"), 1);
        assert_eq!(pending(&replication), vec!["b1:1"], "still expected");
        replication.handle_expected_timed_out("b1:1");
        assert_eq!(released(&mut replication), vec![hold(1)]);
    }

    #[test]
    fn the_holding_count_follows_links_opening_and_closing_and_a_link_lost_before_catch_up_keeps_the_holds() {
        // Goal: the count the shard uses always matches who holds; an expected backup whose link is
        // lost before its catch-up collects again and keeps what it had.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1", "b2:1"]));
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        // A backup that was not expected adds a stream.
        replication.handle_link_opened(3, "new:1", vec![created("q"), enqueued("q", 0, None)]);
        assert_eq!(replication.holding_streams(), 3);
        // b1's link replaces its collecting: unchanged.
        replication.handle_link_opened(1, "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        assert_eq!(replication.holding_streams(), 3);
        replication.handle_event(enqueued("q", 1, Some(2)));
        assert_eq!((replication.expected_held("b1:1"), replication.expected_held("b2:1")), (1, 2));
        // b1's link is lost before its catch-up: its stream's hold is kept with the collected.
        assert!(replication.handle_link_lost(1));
        assert_eq!(replication.holding_streams(), 3);
        assert!(released(&mut replication).is_empty());
        assert_eq!(replication.expected_held("b1:1"), 2);
        assert_eq!(pending(&replication), vec!["b1:1", "b2:1"]);
        replication.handle_event(enqueued("q", 2, Some(3)));
        assert_eq!(replication.expected_held("b1:1"), 3, "collecting again");
        // b1 reconnects and catches up: everything it collected comes back.
        replication.handle_link_opened(
            4,
            "b1:1",
            vec![created("q"), enqueued("q", 0, None), enqueued("q", 1, None), enqueued("q", 2, None)],
        );
        assert_eq!(positions(&drain(&mut replication, 4), "q"), vec![0, 1, 2]);
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(2), hold(3)]);
        assert_eq!(pending(&replication), vec!["b2:1"]);
        // The unexpected backup and b2 still hold 1, 2 and 3 (b2 collected them).
        assert_eq!(replication.expected_held("b2:1"), 3);
        drain(&mut replication, 3);
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(2), hold(3)], "the unexpected link's stream held 2 and 3");
        // The unexpected backup's link had caught up: it is detached, and collects.
        assert!(replication.handle_link_lost(3));
        assert_eq!(replication.holding_streams(), 3, "b1's link, b2 and new:1 collecting");
        replication.handle_expected_timed_out("b2:1");
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(1), hold(2), hold(3)]);
        replication.handle_expected_timed_out("new:1");
        assert!(released(&mut replication).is_empty(), "nothing came after its loss");
        assert_eq!(replication.holding_streams(), 1);
    }

    #[test]
    fn two_expected_backups_each_hold_until_their_own_catch_up_or_timeout() {
        // Goal: with two expected backups every publish comes back twice, once per backup, each
        // when that backup caught up or timed out; and an expected backup already linked and caught
        // up is not pending.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.handle_link_opened(9, "early:1", Vec::new());
        replication.expect_backups(&names(&["early:1", "b1:1", "b2:1"]));
        assert_eq!(pending(&replication), vec!["b1:1", "b2:1"], "early:1 caught up here already");
        assert_eq!(replication.holding_streams(), 3);
        assert!(replication.handle_link_lost(9), "caught up: kept for early:1");
        assert_eq!(replication.holding_streams(), 3);
        replication.handle_expected_timed_out("early:1");
        // Expecting again is a no-op for those already expected.
        replication.expect_backups(&names(&["b1:1"]));
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        assert!(released(&mut replication).is_empty());
        replication.handle_link_opened(1, "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        drain(&mut replication, 1);
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert_eq!(pending(&replication), vec!["b2:1"]);
        replication.handle_event(enqueued("q", 1, Some(2)));
        drain(&mut replication, 1);
        assert_eq!(released(&mut replication), vec![hold(2)], "b1's stream only; b2 holds it");
        replication.handle_expected_timed_out("b2:1");
        assert_eq!(released(&mut replication), vec![hold(1), hold(2)]);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.holding_streams(), 1);
    }

    #[test]
    fn a_lost_link_keeps_its_holds_only_when_its_backup_may_be_ready() {
        // Goal: a link lost during its catch-up releases its holds (its backup is not ready on
        // its account); one lost after its catch-up keeps them for its backup, which then collects
        // new ones; a dequeue releases a kept hold as it does a collected one, and a new link's
        // catch-up releases the rest.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, None));
        // Catching up (the snapshot's message not confirmed): lost, released.
        replication.handle_link_opened(1, "slow:1", vec![created("q"), enqueued("q", 0, None)]);
        replication.handle_event(enqueued("q", 1, Some(1)));
        assert!(!replication.handle_link_lost(1));
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert!(pending(&replication).is_empty());
        // Caught up, then lost with two publishes unconfirmed: both kept.
        replication.handle_link_opened(2, "b:1", vec![created("q"), enqueued("q", 0, None), enqueued("q", 1, None)]);
        drain(&mut replication, 2);
        assert_eq!(replication.poll_caught_up(), Some((2, "b:1".to_string())));
        replication.handle_event(enqueued("q", 2, Some(2)));
        replication.handle_event(enqueued("q", 3, Some(3)));
        assert_eq!(replication.poll_batch(2, BYTES).map(|batch| positions(&batch.records, "q")), Some(vec![2, 3]));
        assert!(replication.handle_link_lost(2));
        assert!(released(&mut replication).is_empty());
        assert_eq!(pending(&replication), vec!["b:1"]);
        assert_eq!(replication.holding_streams(), 1, "b:1 collects");
        replication.handle_event(enqueued("q", 4, Some(4)));
        assert_eq!(replication.expected_held("b:1"), 3);
        // Consumed meanwhile: confirmed as consumed.
        replication.handle_event(dequeued("q", 2));
        assert_eq!(released(&mut replication), vec![hold(2)]);
        // A new link of b:1 catches up: the rest comes back, and b:1 is an ordinary link again.
        let snapshot = vec![
            created("q"),
            enqueued("q", 0, None),
            enqueued("q", 1, None),
            enqueued("q", 3, None),
            enqueued("q", 4, None),
        ];
        replication.handle_link_opened(3, "b:1", snapshot);
        drain(&mut replication, 3);
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(3), hold(4)]);
        assert!(pending(&replication).is_empty());
        assert_eq!(replication.holding_streams(), 1);
    }

    #[test]
    fn an_expected_backup_whose_link_overflows_keeps_its_holds_until_its_timeout() {
        // Goal: an overflowed link never counts as caught up, so it releases no collected hold.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1"]));
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(1)));
        replication.handle_link_opened(1, "b1:1", vec![created("q"), enqueued("q", 0, None)]);
        let mut position = 1;
        while replication.poll_overflowed().is_none() {
            replication.handle_event(enqueued("q", position, None));
            position += 1;
        }
        assert_eq!(replication.expected_held("b1:1"), 1);
        replication.handle_link_lost(1);
        assert_eq!(replication.holding_streams(), 1, "collecting again");
        replication.handle_expected_timed_out("b1:1");
        assert_eq!(released(&mut replication), vec![hold(1)]);
    }

    fn barrier(queue: &str, hold_seq: u64) -> ReplicationEvent {
        ReplicationEvent::Barrier { queue: Arc::from(queue), hold: hold(hold_seq) }
    }

    #[test]
    fn a_barrier_is_released_by_each_stream_only_once_its_backup_confirmed_the_original() {
        // Goal: a duplicate's hold comes back once per stream, each only after that backup
        // confirmed the batch carrying the original; a lost link's with its other holds. Nothing
        // is sent for a barrier.
        let mut replication = PrimaryReplication::new(Epoch(3));
        replication.handle_link_opened(1, "b1:1", Vec::new());
        replication.handle_link_opened(2, "b2:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(10)));
        replication.handle_event(barrier("q", 11));
        let first = replication.poll_batch(1, BYTES).unwrap();
        let second = replication.poll_batch(2, BYTES).unwrap();
        assert_eq!(first, second);
        assert_eq!(positions(&first.records, "q"), vec![0]);
        assert!(released(&mut replication).is_empty(), "sent, not confirmed");
        replication.handle_confirm(1, first.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(10), hold(11)]);
        // The second backup has not confirmed: its share of both is still held, until it is lost.
        replication.handle_event(enqueued("q", 1, Some(12)));
        replication.handle_event(barrier("q", 13));
        assert!(released(&mut replication).is_empty());
        assert!(replication.handle_link_lost(2), "kept for b2, which may be ready");
        assert!(released(&mut replication).is_empty());
        replication.handle_expected_timed_out("b2:1");
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(10), hold(11), hold(12), hold(13)]);
        assert_eq!(drain(&mut replication, 1), positions_record("q", 1));
        assert_eq!(released(&mut replication), vec![hold(12), hold(13)]);
        // A barrier for a queue whose every record is confirmed comes back at once.
        replication.handle_event(barrier("q", 14));
        assert_eq!(released(&mut replication), vec![hold(14)]);
    }

    /// The record a lone `enqueued(queue, position, _)` goes out as.
    fn positions_record(queue: &str, position: u64) -> Vec<Record> {
        let message = Message { body: Bytes::from(position.to_le_bytes().to_vec()), ..Message::default() };
        vec![Record::Enqueued { queue: queue.to_string(), first_position: Position(position), messages: vec![message] }]
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
        replication.handle_link_opened(1, "b:1", snapshot);
        // The original is the last backlog message of "deep".
        replication.handle_event(barrier("deep", 1));
        replication.handle_event(enqueued("q", 0, Some(2)));
        replication.handle_event(barrier("q", 3));
        // The creates and the live enqueue go first, before any backlog message.
        let live = replication.poll_batch(1, BYTES).unwrap();
        assert_eq!(positions(&live.records, "q"), vec![0]);
        assert!(positions(&live.records, "deep").is_empty());
        replication.handle_confirm(1, live.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(2), hold(3)], "q's barrier waits for q only");
        let mut sent = Vec::new();
        while replication.backlog_len(1) > 0 {
            let batch = replication.poll_batch(1, BYTES).unwrap();
            sent.extend(positions(&batch.records, "deep"));
            replication.handle_confirm(1, batch.stream_seq).unwrap();
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
        replication.handle_link_opened(2, "c:1", snapshot);
        replication.handle_event(barrier("deep", 4));
        assert_eq!(released(&mut replication), vec![hold(4)], "link 1 had confirmed everything");
        replication.poll_batch(2, BYTES).unwrap();
        replication.handle_link_lost(2);
        assert_eq!(released(&mut replication), vec![hold(4)]);
    }

    #[test]
    fn an_expected_backup_collects_a_barrier_until_its_catch_up_and_a_dequeue_does_not_release_it() {
        // Goal: recovering mode: a duplicate's hold is collected by an expected backup without a
        // link like an enqueue's; a dequeue does not release it (it has no position), its link's
        // catch-up or its timeout does; a deletion of its queue does too.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.expect_backups(&names(&["b1:1", "b2:1"]));
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(created("r"));
        // The original came from the previous primary, without a hold here.
        replication.handle_event(barrier("q", 1));
        replication.handle_event(barrier("r", 2));
        replication.handle_event(dequeued("q", 0));
        assert!(released(&mut replication).is_empty(), "a dequeue does not release a barrier");
        assert_eq!(replication.expected_held("b1:1"), 2);
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("r") });
        assert_eq!(released(&mut replication), vec![hold(2), hold(2)]);
        // b1 reconnects and catches up: its share comes back; b2 times out: its share too.
        replication.handle_link_opened(1, "b1:1", vec![created("q"), enqueued("q", 1, None)]);
        assert!(released(&mut replication).is_empty());
        drain(&mut replication, 1);
        assert_eq!(released(&mut replication), vec![hold(1)]);
        assert_eq!(pending(&replication), vec!["b2:1"]);
        replication.handle_expected_timed_out("b2:1");
        assert_eq!(released(&mut replication), vec![hold(1)]);
    }

    /// A seeded xorshift generator: `next(bound)` is below `bound`.
    fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |bound| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        }
    }

    #[test]
    fn random_links_events_and_timeouts_release_every_hold_once_per_counted_holder() {
        // Goal: the accounting invariant under any interleaving: each publish's hold comes back
        // exactly as many times as `holding_streams()` said when it was made.
        // Method: a seeded sequence of enqueues, duplicates (barriers), dequeues, link opens (with
        // the shard's snapshot), losses, confirms and timeouts over two expected backups and one
        // other; at the end every link is lost and every expected backup timed out.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let backups = ["b1:1", "b2:1", "other:1"];
        for round in 0..20 {
            let mut replication = PrimaryReplication::new(Epoch(2));
            replication.expect_backups(&names(&backups[..2]));
            replication.handle_event(created("q"));
            let mut held: BTreeMap<u64, u32> = BTreeMap::new();
            let mut stored: BTreeSet<u64> = BTreeSet::new();
            let mut open: Vec<LinkId> = Vec::new();
            let (mut position, mut next_link) = (0u64, 1 as LinkId);
            let mut out = Vec::new();
            for _ in 0..400 {
                match next(8) {
                    0..=2 => {
                        let count = replication.holding_streams();
                        let hold_seq = (count > 0).then_some(position);
                        if count > 0 {
                            held.insert(position, count);
                        }
                        replication.handle_event(enqueued("q", position, hold_seq));
                        stored.insert(position);
                        position += 1;
                    }
                    3 => {
                        if let Some(&first) = stored.iter().nth(next(stored.len() as u64 + 1) as usize) {
                            stored.remove(&first);
                            replication.handle_event(dequeued("q", first));
                        }
                    }
                    4 => {
                        let mut snapshot = vec![created("q")];
                        snapshot.extend(stored.iter().map(|&p| enqueued("q", p, None)));
                        replication.handle_link_opened(next_link, backups[next(3) as usize], snapshot);
                        open.push(next_link);
                        next_link += 1;
                    }
                    5 if !open.is_empty() => {
                        let link = open.swap_remove(next(open.len() as u64) as usize);
                        replication.handle_link_lost(link);
                    }
                    6 if !open.is_empty() => {
                        drain(&mut replication, open[next(open.len() as u64) as usize]);
                    }
                    7 if round % 2 == 0 && next(8) == 0 => {
                        replication.handle_expected_timed_out(backups[next(2) as usize])
                    }
                    7 if !stored.is_empty() => {
                        // A duplicate: held by as many holders as an enqueue, with its own seq.
                        let count = replication.holding_streams();
                        if count > 0 {
                            held.insert(position, count);
                            replication.handle_event(barrier("q", position));
                        }
                        position += 1;
                    }
                    _ => {}
                }
                replication.poll_released(&mut out);
                while replication.poll_caught_up().is_some() {}
            }
            for link in open {
                replication.handle_link_lost(link);
            }
            // Every backup may be expected by now: `other:1` too, after a caught-up link's loss.
            for backup in &backups {
                replication.handle_expected_timed_out(backup);
            }
            replication.poll_released(&mut out);
            let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
            for hold in out {
                *counts.entry(hold.seq.0).or_default() += 1;
            }
            assert_eq!(counts, held, "round {round}");
            assert_eq!(replication.holding_streams(), 0);
        }
    }

    #[test]
    fn a_catch_up_sends_the_dedup_window_with_its_queue_create_and_waits_for_its_confirm() {
        // Goal: a snapshot's DedupSeen goes to the stream at once, right after its queue's
        // create and before the backlog's messages, and the link is caught up only once the
        // batch carrying it is confirmed.
        let mut replication = PrimaryReplication::new(Epoch(1));
        let keys = vec![("p".to_string(), vec![(1, 9)])];
        let dedup = ReplicationEvent::DedupSeen { queue: Arc::from("q"), keys: keys.clone() };
        replication.handle_link_opened(1, "b:1", vec![created("q"), dedup, enqueued("q", 9, None)]);
        // The stream has the create and the window pending, so the backlog waits for them.
        let batch = replication.poll_batch(1, BYTES).unwrap();
        assert_eq!(
            batch.records,
            [
                Record::QueueCreated { name: "q".into(), options: QueueOptions::default() },
                Record::DedupSeen { queue: "q".into(), keys },
            ]
        );
        replication.handle_confirm(1, batch.stream_seq).unwrap();
        assert_eq!(replication.poll_caught_up(), None, "the backlog's message is not sent yet");
        assert_eq!(positions(&drain(&mut replication, 1), "q"), [9]);
        assert_eq!(replication.poll_caught_up(), Some((1, "b:1".to_string())));
    }
    /// The delivery bounds reported since the last call, as (queue, position).
    fn bounds(replication: &mut PrimaryReplication) -> Vec<(String, u64)> {
        replication.poll_replicated().map(|(queue, position)| (queue.to_string(), position.0)).collect()
    }

    #[test]
    fn a_held_message_is_deliverable_only_once_its_stream_confirmed_it() {
        // Goal: with one linked stream, a message is not reported deliverable while unsent or
        // sent and unconfirmed, and is once its batch is confirmed; the bound only rises, in
        // position order. Method: one link, enqueues with holds, batches confirmed one by one.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(1, "b:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 1, Some(1)));
        assert!(bounds(&mut replication).is_empty(), "unsent");
        let first = replication.poll_batch(1, BYTES).unwrap();
        replication.handle_event(enqueued("q", 2, Some(2)));
        replication.handle_event(enqueued("q", 3, Some(3)));
        let second = replication.poll_batch(1, BYTES).unwrap();
        assert!(bounds(&mut replication).is_empty(), "sent, not confirmed");
        replication.handle_confirm(1, first.stream_seq).unwrap();
        assert_eq!(bounds(&mut replication), [("q".to_string(), 1)]);
        assert!(bounds(&mut replication).is_empty(), "reported once");
        replication.handle_confirm(1, second.stream_seq).unwrap();
        assert_eq!(bounds(&mut replication), [("q".to_string(), 3)]);
        // Another queue's enqueue does not move this one's bound.
        replication.handle_event(created("r"));
        replication.handle_event(enqueued("r", 1, Some(4)));
        drain(&mut replication, 1);
        assert_eq!(bounds(&mut replication), [("r".to_string(), 1)]);
    }

    #[test]
    fn a_message_waits_for_every_link_and_a_lost_or_overflowed_link_gates_nothing() {
        // Goal: with two links a message is deliverable once both confirmed it, or once the one
        // that has not is lost; an overflowed link stops gating at once, before it is closed.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(1, "b1:1", Vec::new());
        replication.handle_link_opened(2, "b2:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 1, Some(1)));
        drain(&mut replication, 1);
        assert!(bounds(&mut replication).is_empty(), "link 2 has not confirmed");
        replication.poll_batch(2, BYTES).unwrap();
        replication.handle_link_lost(2);
        assert_eq!(bounds(&mut replication), [("q".to_string(), 1)]);
        // A link that never confirms overflows: what it gated is deliverable once the other
        // link confirmed it, without waiting for the transport to close it.
        replication.handle_link_opened(3, "stuck:1", Vec::new());
        let mut position = 2;
        while replication.poll_overflowed().is_none() {
            replication.handle_event(enqueued("q", position, Some(position)));
            position += 1;
            if position.is_multiple_of(4096) {
                drain(&mut replication, 1);
            }
        }
        drain(&mut replication, 1);
        assert_eq!(bounds(&mut replication), [("q".to_string(), position - 1)]);
    }

    #[test]
    fn expected_backups_never_gate_and_no_link_means_deliverable_at_once() {
        // Goal: recovering mode must not stall consumers: an enqueue whose hold only expected
        // backups collect is reported deliverable at once; once a link opens it gates the
        // following enqueues (not the earlier ones, in its snapshot); an enqueue without a hold
        // (no holder at all) is the shard's to deliver and is not reported.
        let mut replication = PrimaryReplication::new(Epoch(2));
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 1, None));
        assert!(bounds(&mut replication).is_empty());
        replication.expect_backups(&names(&["b1:1"]));
        replication.handle_event(enqueued("q", 2, Some(2)));
        replication.handle_event(enqueued("q", 3, Some(3)));
        assert_eq!(bounds(&mut replication), [("q".to_string(), 3)]);
        assert_eq!(replication.expected_held("b1:1"), 2, "its confirms are still held");
        // The backup links: its snapshot's messages are not gated, the next enqueue is.
        let snapshot = vec![created("q"), enqueued("q", 1, None), enqueued("q", 2, None), enqueued("q", 3, None)];
        replication.handle_link_opened(1, "b1:1", snapshot);
        replication.handle_event(enqueued("q", 4, Some(4)));
        assert!(bounds(&mut replication).is_empty());
        let live = replication.poll_batch(1, BYTES).unwrap();
        assert_eq!(positions(&live.records, "q"), [4]);
        replication.handle_confirm(1, live.stream_seq).unwrap();
        assert_eq!(bounds(&mut replication), [("q".to_string(), 4)], "the backlog does not gate");
    }

    #[test]
    fn a_purge_or_a_delete_leaves_no_message_stuck() {
        // Goal: gated messages dequeued before they were sent (a purge) hold back only later
        // messages that link must confirm anyway; a deleted queue's gate goes with it, and a
        // queue re-created under its name (positions above) is gated afresh.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(1, "b:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 1, Some(1)));
        replication.handle_event(enqueued("q", 2, Some(2)));
        replication.handle_event(dequeued("q", 1));
        replication.handle_event(dequeued("q", 2));
        drain(&mut replication, 1);
        assert!(bounds(&mut replication).is_empty(), "nothing was sent, nothing confirmed");
        replication.handle_event(enqueued("q", 3, Some(3)));
        assert!(bounds(&mut replication).is_empty());
        drain(&mut replication, 1);
        assert_eq!(bounds(&mut replication), [("q".to_string(), 3)]);
        // Deleted with a gated message in flight, then re-created above it.
        replication.handle_event(enqueued("q", 4, Some(4)));
        let inflight = replication.poll_batch(1, BYTES).unwrap();
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("q") });
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 10, Some(5)));
        replication.handle_confirm(1, inflight.stream_seq).unwrap();
        let reported = bounds(&mut replication);
        assert!(
            reported.iter().all(|(_, bound)| *bound < 10),
            "the old queue's confirm opened the new one: {reported:?}"
        );
        drain(&mut replication, 1);
        assert_eq!(bounds(&mut replication), [("q".to_string(), 10)]);
    }

    /// The model of one open link: held positions it has not confirmed, and its batches sent and
    /// not confirmed with the positions each carries.
    type LinkModel = (BTreeSet<u64>, Vec<(StreamSeq, Vec<u64>)>);

    #[test]
    fn random_links_and_confirms_never_report_a_message_an_open_link_has_not_confirmed() {
        // Goal: the gate's safety and liveness under any interleaving: a reported bound never
        // covers a held position that a link open since that enqueue has not confirmed, and once
        // every link confirmed everything (or was lost) the bound reaches the last enqueue.
        // Method: a seeded sequence of enqueues (with holds while links are open), dequeues,
        // link opens (with the shard's snapshot), losses, batches sent and confirmed late.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for round in 0..20 {
            let mut replication = PrimaryReplication::new(Epoch(1));
            replication.handle_event(created("q"));
            let mut stored: BTreeSet<u64> = BTreeSet::new();
            // Positions whose enqueue took holds (the others are the shard's to deliver).
            let mut held_positions: BTreeSet<u64> = BTreeSet::new();
            // Per open link: held positions not yet confirmed, and batches sent and unconfirmed.
            let mut open: BTreeMap<LinkId, LinkModel> = BTreeMap::new();
            let (mut position, mut next_link, mut bound) = (1u64, 1 as LinkId, 0u64);
            for _ in 0..400 {
                match next(7) {
                    0..=2 => {
                        let held = !open.is_empty();
                        replication.handle_event(enqueued("q", position, held.then_some(position)));
                        for (pending, _) in open.values_mut() {
                            pending.insert(position);
                        }
                        if held {
                            held_positions.insert(position);
                        }
                        stored.insert(position);
                        position += 1;
                    }
                    3 => {
                        if let Some(&first) = stored.iter().nth(next(stored.len() as u64 + 1) as usize) {
                            stored.remove(&first);
                            replication.handle_event(dequeued("q", first));
                            // Dropped unsent by every link that had not batched it: gone.
                            for (pending, _) in open.values_mut() {
                                pending.remove(&first);
                            }
                        }
                    }
                    4 => {
                        let mut snapshot = vec![created("q")];
                        snapshot.extend(stored.iter().map(|&p| enqueued("q", p, None)));
                        replication.handle_link_opened(next_link, "b:1", snapshot);
                        open.insert(next_link, (BTreeSet::new(), Vec::new()));
                        next_link += 1;
                    }
                    5 if !open.is_empty() => {
                        let link = *open.keys().nth(next(open.len() as u64) as usize).unwrap();
                        if next(4) == 0 {
                            replication.handle_link_lost(link);
                            open.remove(&link);
                        } else if let Some(batch) = replication.poll_batch(link, BYTES) {
                            let sent = positions(&batch.records, "q");
                            open.get_mut(&link).unwrap().1.push((batch.stream_seq, sent));
                        }
                    }
                    6 if !open.is_empty() => {
                        let link = *open.keys().nth(next(open.len() as u64) as usize).unwrap();
                        let (pending, inflight) = open.get_mut(&link).unwrap();
                        if !inflight.is_empty() {
                            let (seq, _) = inflight[next(inflight.len() as u64) as usize];
                            replication.handle_confirm(link, seq).unwrap();
                            for (_, sent) in inflight.iter().filter(|(batch, _)| *batch <= seq) {
                                for p in sent {
                                    pending.remove(p);
                                }
                            }
                            inflight.retain(|(batch, _)| *batch > seq);
                        }
                    }
                    _ => {}
                }
                for (queue, reported) in bounds(&mut replication) {
                    assert_eq!(queue, "q");
                    assert!(reported > bound, "round {round}: bounds only rise");
                    bound = reported;
                    assert!(bound < position, "round {round}: above the last enqueue");
                }
                // Safety: no stored message within the bound waits for an open link's confirm.
                for (link, (pending, _)) in &open {
                    if let Some(&lowest) = pending.iter().find(|p| stored.contains(p)) {
                        assert!(lowest > bound, "round {round}: {lowest} reported before link {link} confirmed it");
                    }
                }
            }
            // Liveness: every link confirms everything; the bound reaches the last enqueue.
            for (&link, (_, inflight)) in &open {
                if let Some(&(seq, _)) = inflight.last() {
                    replication.handle_confirm(link, seq).unwrap();
                }
                drain(&mut replication, link);
            }
            bound = bounds(&mut replication).last().map_or(bound, |(_, reported)| *reported);
            let stuck = stored.iter().find(|&&p| p > bound && held_positions.contains(&p));
            assert!(stuck.is_none(), "round {round}: {stuck:?} stuck above {bound}");
        }
    }
}
