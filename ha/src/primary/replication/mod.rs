//! One primary shard's replication to all its backups: a `PrimaryStream` per backup link, fed the
//! shard's `ReplicationEvent`s, with each backup's catch-up and the holds on publish acks.
//!
//! Each backup opens one link per shard (backup shard N to primary shard N); the primary shard keeps
//! one `PrimaryReplication`, and in it one stream per open link, keyed by its
//! `LinkId` (the link's connection).
//!
//! The parts, each in its own module: `catch_up` (one link: its stream, its catch-up backlog, its
//! overflow), `delivery_gate` (how far each queue's held messages may be delivered) and
//! `expected_backups` (backups that hold acks without a link caught up here: recovering mode's
//! and detached ones) and `ready_quorum` (`ha-min-ready-backups`: one more holder while too few
//! backups are ready here). This type fans each event out to them and keeps the holds'
//! accounting.
//!
//! Holds: an `Enqueued` event's hold goes to every stream, and each stream releases it once
//! (`poll_released` yields it once per stream), so the shard counts `holding_streams()` releases
//! per publish (`Shard::set_replica_holds`). A stream that overflowed (`StreamOverflow`: its backup
//! cannot keep up) takes no more records and is reported by `poll_overflowed`; until the node
//! closes the link and calls `handle_link_lost`, it still counts in `holding_streams()`, and every
//! hold that comes for it waits with the stream's own, so the count the shard uses and the
//! releases it gets always agree. What a lost link's holds become depends on its backup (`expected_backups`,
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
//! Call contract (single-threaded, on the shard's thread):
//! - feed every event the shard reports (`Shard::poll_replication`) to `handle_event`, in order;
//! - drain those events *before* `handle_link_opened`, `handle_link_lost`, `expect_backups` and
//!   `handle_expected_timed_out`, and right after any of them call
//!   `Shard::set_replica_holds(holding_streams())`: every event is then fed to exactly the streams
//!   (and expected backups) its hold was counted for. In the broker, `NodeCore::change_holders`
//!   is the one place that does this, and each event's `holders` is asserted equal to
//!   `holding_streams()` where it is fed;
//! - `handle_confirm` for each confirm a backup sends; on `Err`, close the link and call
//!   `handle_link_lost`;
//! - then `poll_released` (hand the holds to the shard) and `poll_replicated` (hand the delivery
//!   bounds to the shard's `handle_replicated`), `poll_overflowed` (close those links and
//!   call `handle_link_lost`), `poll_caught_up` (tell membership), and `poll_batch` for each of
//!   `links()` until it returns `None` (encode and send);
//! - then `handle_timeout(now, timeout)`, and again at `confirm_deadline(timeout)`: each link it
//!   returns has left its oldest batch unconfirmed for `timeout` (`PrimaryStream`, "Confirm
//!   timeout"); close it as lost and call `handle_link_lost`;
//! - while `producers_must_pause()`, the shard stops reading producers.
//!
//! Not here: IO, a clock (time comes in as `now`), the link's handshake (`link::frame`) and
//! heartbeats (`link::heartbeat`), which backups are ready (`membership`), which exchanges and
//! bindings are replicated (shard 0 reports them as events like any other; they reach the stream
//! in order).
//!
//! Invariants (each part states its own):
//! - Every hold an event brings is released exactly once per stream or collecting expected backup
//!   counted in `holding_streams()` when the event came (by a confirm, by being dropped unsent, or
//!   by the stream's loss; for an expected backup, and a lost link's holds kept for it, by the
//!   catch-up of its link, its timeout, or the message's dequeue). A `Barrier`'s hold too, never
//!   by a dequeue, and never before that stream's backup confirmed every enqueue of its queue fed
//!   to it before the barrier, snapshot messages included.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmq_core::epoch::Epoch;
use ringmq_core::replication::Position;
pub use ringmq_core::replication::ReplicationEvent;

use crate::link::record::{Batch, StreamSeq};
pub use crate::link::LinkId;
use crate::primary::stream::{ConfirmError, ConfirmOverdue, Hold, PrimaryStream};

mod catch_up;
mod delivery_gate;
mod expected_backups;
mod ready_quorum;

use catch_up::Link;
use delivery_gate::DeliveryGates;
use expected_backups::ExpectedBackups;
use ready_quorum::ReadyQuorum;
pub use ready_quorum::TooFewReadyBackups;

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
    /// Backups expected back after promotion, or detached, and still pending here.
    expected: ExpectedBackups,
    /// Delivery gates, per queue that had a held enqueue.
    gates: DeliveryGates,
    /// `ha-min-ready-backups`: the holder of publishes made while too few backups are ready.
    quorum: ReadyQuorum,
    /// The time of the events fed from now on (`set_time`), for the quorum's timeout.
    now: Option<Instant>,
}

impl PrimaryReplication {
    /// A shard's replication for a primary in `epoch`, with no link and no ready quorum
    /// (`ha-min-ready-backups` 0).
    pub fn new(epoch: Epoch) -> Self {
        PrimaryReplication::with_quorum(epoch, 0, None)
    }

    /// A shard's replication for a primary in `epoch`, with no link, that holds every publish
    /// while fewer than `required` backups are ready here (`ha-min-ready-backups`; 0: never), and
    /// rejects one held for longer than `timeout` (`ha-min-ready-timeout`; `None`: never). With
    /// `required` above 0 it starts short (no backup is ready yet); with a `timeout`, the caller
    /// gives the time with `set_time` before feeding events.
    pub fn with_quorum(epoch: Epoch, required: usize, timeout: Option<Duration>) -> Self {
        PrimaryReplication {
            epoch,
            links: BTreeMap::new(),
            released: Vec::new(),
            overflowed: VecDeque::new(),
            expected: ExpectedBackups::default(),
            gates: DeliveryGates::default(),
            quorum: ReadyQuorum::new(required, timeout),
            now: None,
        }
    }

    /// The time of the events fed from now on.
    ///
    /// # Panics
    ///
    /// If `now` is before the time given last: time never goes backwards.
    pub fn set_time(&mut self, now: Instant) {
        assert!(self.now.is_none_or(|before| before <= now), "time went backwards");
        self.now = Some(now);
    }

    /// Shard 0's ready backups changed to `ready` (`NodeControl::ReadyBackups`): the quorum counts
    /// those with a caught-up link here, and releases what it held once there are enough. A
    /// change to `holding_streams()`: drain the events first (`NodeCore::change_holders`).
    pub fn set_ready_backups(&mut self, ready: &[String]) {
        self.quorum.set_listed(ready);
        self.recount_quorum();
    }

    /// Backups ready here at the last count, and `ha-min-ready-backups`; fewer than that: every
    /// new publish is held (`ready_quorum`).
    pub fn quorum_ready(&self) -> (usize, usize) {
        self.quorum.ready()
    }

    /// How many holds the ready quorum has (for status and tests).
    pub fn quorum_held(&self) -> usize {
        self.quorum.held()
    }

    /// When the oldest hold of the ready quorum reaches `ha-min-ready-timeout` (`None`: no
    /// timeout, or nothing held).
    pub fn poll_quorum_timeout(&self) -> Option<Instant> {
        self.quorum.poll_timeout()
    }

    /// At `now`: the ready quorum's holds taken `ha-min-ready-timeout` ago or longer are appended
    /// to `rejected`, and released: hand them to the shard's `handle_holds_rejected` with the
    /// returned reason (`Some` exactly when any was appended).
    pub fn handle_quorum_timeout(&mut self, now: Instant, rejected: &mut Vec<Hold>) -> Option<TooFewReadyBackups> {
        self.quorum.handle_timeout(now, rejected)
    }

    /// A backup's link for this shard opened: a new `PrimaryStream` with the catch-up `snapshot`
    /// (from `Shard::replication_snapshot_for`): its messages become the link's backlog, the rest
    /// goes to the stream now, in order (see `catch_up`).
    ///
    /// # Panics
    ///
    /// If `link` is already open (the node reuses no id), or a snapshot event carries a hold.
    pub fn handle_link_opened(&mut self, link: LinkId, backup: &str, snapshot: Vec<ReplicationEvent>) {
        assert!(!self.links.contains_key(&link), "link {link} opened twice");
        let entry = Link::open(link, backup, self.epoch, snapshot, &mut self.released, &mut self.overflowed);
        self.links.insert(link, entry);
        if self.expected.handle_link_opened(backup, link) {
            // It stops collecting: the new stream takes the holds from now on.
            self.settle_expected();
        }
    }

    /// A change to this shard's replicated queues: fed to every stream at once, not behind its
    /// catch-up backlog (see `catch_up`). An `Enqueued` event's hold goes to every stream, and
    /// each releases it once.
    ///
    /// While recovering, each expected backup without a link collects the hold too, and a
    /// `Dequeued` (or `QueueDeleted`) event releases the holds collected for its message (queue).
    pub fn handle_event(&mut self, event: ReplicationEvent) {
        self.quorum.collect(&event, self.now, &mut self.released);
        if !self.expected.is_empty() {
            self.expected.collect(&event, &mut self.released);
        }
        match &event {
            ReplicationEvent::Enqueued { queue, position, hold, .. } => {
                let gating = self.links.iter().filter(|(_, link)| !link.overflowed).map(|(&id, _)| id);
                self.gates.handle_enqueued(queue, *position, hold.is_some(), gating);
            }
            ReplicationEvent::QueueDeleted { name } => self.gates.handle_queue_deleted(name),
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
                    link.keep_after_overflow(event, hold);
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
        self.gates.poll_replicated()
    }

    /// How many holds each new enqueue takes (the shard's `set_replica_holds`): one per link not
    /// yet lost, overflowed ones included (they release their share at once), plus one per expected
    /// backup without a link on this shard (it collects them).
    pub fn holding_streams(&self) -> u32 {
        (self.links.len() + self.expected.collecting() + self.quorum.collecting()) as u32
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
        let links = &self.links;
        self.expected.expect(backups, |backup| {
            links.iter().filter(|(_, link)| link.backup == backup).map(|(&id, _)| id).collect()
        });
        self.settle_expected();
    }

    /// The expected `backup` was given up on (`ha-backup-timeout` passed) or is known lost for
    /// good: every hold it collected is released, and it collects no more. Its links, if any, go on
    /// as ordinary streams. A backup not expected (caught up here already, timed out before, or
    /// never expected) is ignored.
    pub fn handle_expected_timed_out(&mut self, backup: &str) {
        let held = self.expected.handle_timed_out(backup);
        self.quorum.take_over(held, self.now, &mut self.released);
    }

    /// The expected backups still pending on this shard (neither caught up here nor timed out),
    /// by address: recovering mode's and detached ones alike.
    pub fn expected_pending(&self) -> impl Iterator<Item = &str> + '_ {
        self.expected.pending()
    }

    /// How many holds the expected `backup` has collected and not released (0 if not expected),
    /// for status and metrics.
    pub fn expected_held(&self, backup: &str) -> usize {
        self.expected.held(backup)
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
        self.gates.handle_confirm(link, seq);
        if !self.expected.is_empty() {
            self.settle_expected();
        }
        Ok(())
    }

    /// The link closed, its heartbeat expired, or it overflowed and the node closed it: it no
    /// longer counts in `holding_streams()`, and gates nothing. Unknown links are ignored (a link
    /// lost twice).
    ///
    /// If its catch-up had been confirmed, or its backup is expected here, every hold it still has
    /// is kept for its backup, which is expected here from now on (see `expected_backups`,
    /// "Detached backups"): with no other link here it collects (and counts instead). Otherwise the
    /// holds are released. Returns whether the backup is expected here after the loss: then only a
    /// caught-up link of its, or `handle_expected_timed_out`, releases what is kept.
    pub fn handle_link_lost(&mut self, link: LinkId) -> bool {
        let Some(mut entry) = self.links.remove(&link) else { return false };
        self.gates.ungate(link);
        self.overflowed.retain(|&id| id != link);
        // A ready backup without its link here is not ready here: short at once, not after
        // shard 0's next list.
        self.recount_quorum();
        let keep = entry.snapshot_confirmed() || self.expected.contains(&entry.backup);
        if !keep {
            entry.finish(&mut self.released);
            return false;
        }
        let backup = std::mem::take(&mut entry.backup);
        let others = self.links.iter().filter(|(_, other)| other.backup == backup).map(|(&id, _)| id).collect();
        self.expected.keep(&backup, link, others, entry.take_held(), &mut self.released);
        self.settle_expected();
        self.expected.contains(&backup)
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
            self.gates.handle_batch_sent(link, batch);
        }
        self.ungate_overflowed(overflowed_before);
        if !self.expected.is_empty() {
            self.settle_expected();
        }
        batch
    }

    /// The confirm timeouts at `now` (`PrimaryStream::handle_timeout`): notes the wait of each
    /// link's oldest unconfirmed batch, and returns the links whose oldest unconfirmed batch has
    /// waited `timeout` or longer, in link order. The caller closes each as lost and calls
    /// `handle_link_lost` (until then a link is returned again). Overflowed links are left out:
    /// they are being closed already.
    pub fn handle_timeout(&mut self, now: Instant, timeout: Duration) -> Vec<(LinkId, ConfirmOverdue)> {
        let mut overdue = Vec::new();
        for (&id, link) in self.links.iter_mut().filter(|(_, link)| !link.overflowed) {
            if let Err(error) = link.stream.handle_timeout(now, timeout) {
                overdue.push((id, error));
            }
        }
        overdue
    }

    /// The earliest instant a link's oldest unconfirmed batch will have waited `timeout` (see
    /// `handle_timeout`); `None` when no batch is unconfirmed.
    pub fn confirm_deadline(&self, timeout: Duration) -> Option<Instant> {
        let open = self.links.values().filter(|link| !link.overflowed);
        open.filter_map(|link| link.stream.confirm_deadline(timeout)).min()
    }

    /// Links that may have a batch to send: not overflowed, with records pending or a backlog,
    /// and room in their window. The node need not ask the others.
    pub fn links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.links.iter().filter(|(_, link)| link.may_send()).map(|(&id, _)| id)
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

    /// A link whose stream overflowed (`StreamOverflow`), each reported once: the node closes
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

    /// Ungates the links that overflowed since `self.overflowed` had `before` entries.
    fn ungate_overflowed(&mut self, before: usize) {
        for index in before..self.overflowed.len() {
            let link = self.overflowed[index];
            self.gates.ungate(link);
        }
    }

    /// Counts the backups ready here for the quorum: listed by shard 0, with a caught-up link.
    fn recount_quorum(&mut self) {
        let links = &self.links;
        self.quorum.recount(
            |backup| links.values().any(|link| link.backup == backup && link.is_caught_up()),
            &mut self.released,
        );
    }

    /// Every expected backup with a caught-up link here releases what it collected and is no
    /// longer expected on this shard.
    fn settle_expected(&mut self) {
        let links = &self.links;
        self.expected.settle(|id| links.get(&id).is_some_and(Link::is_caught_up), &mut self.released);
    }
}

/// What the tests of replication and its parts share.
#[cfg(test)]
mod test_support {
    pub(crate) use std::collections::{BTreeMap, BTreeSet};
    pub(crate) use std::sync::Arc;

    pub(crate) use bytes::Bytes;
    pub(crate) use ringmq_core::epoch::Epoch;
    pub(crate) use ringmq_core::frame::{Message, QueueOptions};
    pub(crate) use ringmq_core::ids::{ConnId, Seq, ShardId};
    pub(crate) use ringmq_core::replication::Position;
    pub(crate) use ringmq_core::replication_level::ReplicationLevel;

    pub(crate) use super::{LinkId, PrimaryReplication, ReplicationEvent};
    pub(crate) use crate::limits::{BATCH_MESSAGES_MAX, STREAM_PENDING_MAX, STREAM_PENDING_PAUSE};
    pub(crate) use crate::link::record::{Record, StreamSeq};
    pub(crate) use crate::primary::stream::{ConfirmError, Hold};

    /// The link of connection `id`.
    pub(crate) fn link(id: u32) -> LinkId {
        LinkId(ConnId(id))
    }

    pub(crate) const BYTES: usize = 64 * 1024;

    pub(crate) fn hold(seq: u64) -> Hold {
        Hold { shard: ShardId(0), conn: ConnId(1), seq: Seq(seq) }
    }

    pub(crate) fn created(name: &str) -> ReplicationEvent {
        ReplicationEvent::QueueCreated {
            name: Arc::from(name),
            options: QueueOptions::default(),
            level: ReplicationLevel::All,
        }
    }

    pub(crate) fn enqueued(queue: &str, position: u64, hold_seq: Option<u64>) -> ReplicationEvent {
        ReplicationEvent::Enqueued {
            queue: Arc::from(queue),
            position: Position(position),
            message: Message { body: Bytes::from(position.to_le_bytes().to_vec()), ..Message::default() },
            hold: hold_seq.map(hold),
            holders: u32::from(hold_seq.is_some()),
        }
    }

    pub(crate) fn released(replication: &mut PrimaryReplication) -> Vec<Hold> {
        let mut out = Vec::new();
        replication.poll_released(&mut out);
        out
    }

    /// Sends every ready batch of `link` and confirms it at once; returns the records sent.
    pub(crate) fn drain(replication: &mut PrimaryReplication, link: LinkId) -> Vec<Record> {
        let mut records = Vec::new();
        while let Some(batch) = replication.poll_batch(link, BYTES) {
            replication.handle_confirm(link, batch.stream_seq).unwrap();
            records.extend(batch.records);
        }
        records
    }

    /// The positions of `queue`'s enqueues among `records`, in order.
    pub(crate) fn positions(records: &[Record], queue: &str) -> Vec<u64> {
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

    pub(crate) fn dequeued(queue: &str, position: u64) -> ReplicationEvent {
        ReplicationEvent::Dequeued { queue: Arc::from(queue), position: Position(position) }
    }

    pub(crate) fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    pub(crate) fn pending(replication: &PrimaryReplication) -> Vec<&str> {
        replication.expected_pending().collect()
    }

    pub(crate) fn barrier(queue: &str, hold_seq: u64) -> ReplicationEvent {
        ReplicationEvent::Barrier { queue: Arc::from(queue), hold: hold(hold_seq), holders: 1 }
    }

    /// The record a lone `enqueued(queue, position, _)` goes out as.
    pub(crate) fn positions_record(queue: &str, position: u64) -> Vec<Record> {
        let message = Message { body: Bytes::from(position.to_le_bytes().to_vec()), ..Message::default() };
        vec![Record::Enqueued { queue: queue.to_string(), first_position: Position(position), messages: vec![message] }]
    }

    /// A seeded xorshift generator: `next(bound)` is below `bound`.
    pub(crate) fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |bound| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        }
    }

    /// The delivery bounds reported since the last call, as (queue, position).
    pub(crate) fn bounds(replication: &mut PrimaryReplication) -> Vec<(String, u64)> {
        replication.poll_replicated().map(|(queue, position)| (queue.to_string(), position.0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::primary::replication::test_support::*;

    #[test]
    fn every_stream_gets_every_event_and_releases_each_hold_once() {
        // Goal: with two backups, a publish's hold comes back twice, once per stream, each after
        // that backup confirmed the batch carrying the message.
        let mut replication = PrimaryReplication::new(Epoch(3));
        replication.handle_link_opened(link(1), "b1:5672", Vec::new());
        replication.handle_link_opened(link(2), "b2:5672", Vec::new());
        assert_eq!(replication.holding_streams(), 2);
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(10)));
        assert_eq!(replication.links().collect::<Vec<_>>(), vec![link(1), link(2)]);
        let first = replication.poll_batch(link(1), BYTES).unwrap();
        let second = replication.poll_batch(link(2), BYTES).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.epoch, Epoch(3));
        assert!(released(&mut replication).is_empty());
        replication.handle_confirm(link(1), first.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(10)]);
        replication.handle_confirm(link(2), second.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(10)]);
        // Nothing left to send: no link is listed.
        assert_eq!(replication.links().count(), 0);
        // Dequeued events reach the backups too.
        replication.handle_event(ReplicationEvent::Dequeued { queue: Arc::from("q"), position: Position(0) });
        assert_eq!(
            drain(&mut replication, link(1)),
            vec![Record::Dequeued { queue: "q".into(), ranges: vec![(Position(0), Position(0))] }]
        );
        // A confirm on an unknown link is the backup's error, not a panic.
        assert_eq!(
            replication.handle_confirm(link(9), StreamSeq(1)),
            Err(ConfirmError::AfterLoss { confirmed: StreamSeq(1) })
        );
    }

    #[test]
    fn an_overflowed_stream_is_reported_once_and_every_hold_for_it_comes_back() {
        // Goal: a backup that never confirms makes its stream overflow; the link is reported for
        // dropping, holds arriving before `handle_link_lost` wait with the stream's own, the loss
        // keeps them for the (caught-up, so maybe ready) backup until it times out, and the other
        // backup is not affected.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(link(1), "fast:1", Vec::new());
        replication.handle_link_opened(link(2), "stuck:1", Vec::new());
        replication.handle_event(created("q"));
        let mut holds_out = 0u64;
        let mut position = 0u64;
        while replication.poll_overflowed().is_none() {
            replication.handle_event(enqueued("q", position, Some(position)));
            holds_out += 2;
            position += 1;
            if position.is_multiple_of(4096) {
                drain(&mut replication, link(1));
            }
            assert!(position <= STREAM_PENDING_MAX as u64 + 10, "never overflowed");
        }
        assert_eq!(replication.poll_overflowed(), None, "reported once");
        // Still counted until the node closes it; its share of new holds waits with it.
        assert_eq!(replication.holding_streams(), 2);
        assert_eq!(replication.poll_batch(link(2), BYTES), None);
        assert!(!replication.links().any(|id| id == link(2)));
        replication.handle_event(enqueued("q", position, Some(position)));
        holds_out += 2;
        assert_eq!(
            replication.handle_confirm(link(2), StreamSeq(1)),
            Err(ConfirmError::AfterLoss { confirmed: StreamSeq(1) })
        );
        assert!(replication.handle_link_lost(link(2)), "its empty catch-up was confirmed: kept for stuck:1");
        assert_eq!(replication.holding_streams(), 2, "stuck:1 collects");
        drain(&mut replication, link(1));
        assert_eq!(released(&mut replication).len() as u64, holds_out / 2, "the fast stream's share");
        assert_eq!(replication.expected_held("stuck:1") as u64, holds_out / 2);
        replication.handle_expected_timed_out("stuck:1");
        assert_eq!(replication.holding_streams(), 1);
        // Every hold came back: once from each stream.
        assert_eq!(released(&mut replication).len() as u64, holds_out / 2);
        assert!(!replication.producers_must_pause());
        assert_eq!(replication.poll_caught_up(), Some((link(1), "fast:1".to_string())));
        assert_eq!(replication.poll_caught_up(), None, "an overflowed link is never caught up");
    }

    #[test]
    fn a_lost_link_releases_the_holds_in_its_stream_and_its_backlog() {
        // Goal: a closed link stops holding publishers at once, wherever its holds were.
        let mut replication = PrimaryReplication::new(Epoch(1));
        let mut snapshot = vec![created("q")];
        snapshot.extend((0..STREAM_PENDING_PAUSE as u64 + 10).map(|position| enqueued("q", position, None)));
        replication.handle_link_opened(link(1), "b:1", snapshot);
        let first = STREAM_PENDING_PAUSE as u64 + 10;
        // These go to the stream, the snapshot's messages stay in the backlog.
        replication.handle_event(enqueued("q", first, Some(1)));
        replication.handle_event(enqueued("q", first + 1, Some(2)));
        assert!(released(&mut replication).is_empty());
        replication.handle_link_lost(link(1));
        assert_eq!(released(&mut replication), vec![hold(1), hold(2)]);
        assert_eq!(replication.holding_streams(), 0);
        assert_eq!(replication.poll_batch(link(1), BYTES), None);
        assert_eq!(replication.poll_caught_up(), None);
        // Losing it again changes nothing.
        replication.handle_link_lost(link(1));
        assert!(released(&mut replication).is_empty());
    }

    #[test]
    fn a_barrier_is_released_by_each_stream_only_once_its_backup_confirmed_the_original() {
        // Goal: a duplicate's hold comes back once per stream, each only after that backup
        // confirmed the batch carrying the original; a lost link's with its other holds. Nothing
        // is sent for a barrier.
        let mut replication = PrimaryReplication::new(Epoch(3));
        replication.handle_link_opened(link(1), "b1:1", Vec::new());
        replication.handle_link_opened(link(2), "b2:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 0, Some(10)));
        replication.handle_event(barrier("q", 11));
        let first = replication.poll_batch(link(1), BYTES).unwrap();
        let second = replication.poll_batch(link(2), BYTES).unwrap();
        assert_eq!(first, second);
        assert_eq!(positions(&first.records, "q"), vec![0]);
        assert!(released(&mut replication).is_empty(), "sent, not confirmed");
        replication.handle_confirm(link(1), first.stream_seq).unwrap();
        assert_eq!(released(&mut replication), vec![hold(10), hold(11)]);
        // The second backup has not confirmed: its share of both is still held, until it is lost.
        replication.handle_event(enqueued("q", 1, Some(12)));
        replication.handle_event(barrier("q", 13));
        assert!(released(&mut replication).is_empty());
        assert!(replication.handle_link_lost(link(2)), "kept for b2, which may be ready");
        assert!(released(&mut replication).is_empty());
        replication.handle_expected_timed_out("b2:1");
        let mut holds = released(&mut replication);
        holds.sort();
        assert_eq!(holds, vec![hold(10), hold(11), hold(12), hold(13)]);
        assert_eq!(drain(&mut replication, link(1)), positions_record("q", 1));
        assert_eq!(released(&mut replication), vec![hold(12), hold(13)]);
        // A barrier for a queue whose every record is confirmed comes back at once.
        replication.handle_event(barrier("q", 14));
        assert_eq!(released(&mut replication), vec![hold(14)]);
    }

    #[test]
    fn random_links_events_and_timeouts_release_every_hold_once_per_counted_holder() {
        // Goal: the accounting invariant under any interleaving: each publish's hold comes back
        // exactly as many times as `holding_streams()` said when it was made.
        // Method: a seeded sequence of enqueues, duplicates (barriers), dequeues, link opens (with
        // the shard's snapshot), losses, confirms and timeouts over two expected backups and one
        // other; at the end every link is lost and every expected backup timed out. Every third
        // round also requires one ready backup (`ready_quorum`), listing random backups ready; at
        // its end a new link catches up and is listed.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let backups = ["b1:1", "b2:1", "other:1"];
        for round in 0..30 {
            let required = usize::from(round % 3 == 2);
            let mut replication = PrimaryReplication::with_quorum(Epoch(2), required, None);
            replication.expect_backups(&names(&backups[..2]));
            replication.handle_event(created("q"));
            let mut held: BTreeMap<u64, u32> = BTreeMap::new();
            let mut stored: BTreeSet<u64> = BTreeSet::new();
            let mut open: Vec<LinkId> = Vec::new();
            let (mut position, mut next_link) = (0u64, link(1));
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
                        next_link = link(next_link.0 .0 + 1);
                    }
                    5 if !open.is_empty() => {
                        let link = open.swap_remove(next(open.len() as u64) as usize);
                        replication.handle_link_lost(link);
                    }
                    6 if !open.is_empty() => {
                        drain(&mut replication, open[next(open.len() as u64) as usize]);
                        if required > 0 {
                            let listed = backups.iter().filter(|_| next(2) == 0).map(|b| b.to_string());
                            replication.set_ready_backups(&listed.collect::<Vec<_>>());
                        }
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
            if required > 0 {
                // What only the quorum holds now goes once a backup is ready here again.
                let mut snapshot = vec![created("q")];
                snapshot.extend(stored.iter().map(|&p| enqueued("q", p, None)));
                replication.handle_link_opened(next_link, "last:1", snapshot);
                drain(&mut replication, next_link);
                replication.set_ready_backups(&names(&["last:1"]));
                replication.handle_link_lost(next_link);
                replication.handle_expected_timed_out("last:1");
            }
            replication.poll_released(&mut out);
            let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
            for hold in out {
                *counts.entry(hold.seq.0).or_default() += 1;
            }
            assert_eq!(counts, held, "round {round}");
            assert_eq!(replication.quorum_held(), 0, "round {round}");
            assert_eq!(replication.holding_streams(), required as u32, "short again: only the quorum counts");
        }
    }
}
