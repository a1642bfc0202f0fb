//! The delivery gates of one primary shard ("deliver only what the backups hold"): per queue, how
//! far its held messages may go to consumers, given what each link confirmed.
//!
//! A message whose enqueue took holds may
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
//! (only expected backups collect) is reported at once: expected backups hold acks, never
//! delivery, so a recovering primary does not stall its consumers for `ha-backup-timeout`. A
//! gated message dequeued unsent (a purge) leaves its link's run open until a later enqueue of
//! the queue is confirmed; it only ever holds back messages that link must confirm anyway.
//!
//! Not here: which links are open or overflowed (`PrimaryReplication` says, as events and batches
//! come), the holds on publish acks (released by the streams, not the gates).
//!
//! Invariants:
//! - A queue's reported delivery bound only rises, never exceeds the last enqueue event seen for
//!   it, and stays below every held position an open, not overflowed link that took its hold has
//!   not confirmed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ringmq_core::replication::Position;

use crate::link::record::{Batch, Record, StreamSeq};
use crate::link::LinkId;

/// Every delivery gate of one primary shard.
#[derive(Debug, Default)]
pub(super) struct DeliveryGates {
    /// Per queue that had a held enqueue; removed with their queue.
    gates: BTreeMap<Arc<str>, Gate>,
    /// Queues whose delivery bound may have risen, each once (`Gate::dirty`).
    dirty: Vec<Arc<str>>,
    /// Delivery bounds raised, for `poll_replicated`.
    replicated: Vec<(Arc<str>, Position)>,
    /// Per link, per batch sent and not confirmed, per gated queue it carries enqueues of, the
    /// highest such position: on the confirm, the queue's `LinkGate::confirmed`.
    tops: BTreeMap<LinkId, VecDeque<(StreamSeq, Arc<str>, Position)>>,
}

impl DeliveryGates {
    /// A live enqueue: with a hold, every link of `gating` (the open links that are not
    /// overflowed) gates it (it is fed to them next); with none of those, it is deliverable at once
    /// and reported so.
    pub(super) fn handle_enqueued(
        &mut self,
        queue: &Arc<str>,
        position: Position,
        held: bool,
        gating: impl Iterator<Item = LinkId>,
    ) {
        if !self.gates.contains_key(queue) {
            if !held {
                return;
            }
            let gate = Gate { highest: position, reported: Position(0), dirty: false, links: Vec::new() };
            self.gates.insert(queue.clone(), gate);
        }
        let gate = self.gates.get_mut(queue).expect("inserted above");
        gate.highest = gate.highest.max(position);
        let mut gating_any = false;
        if held {
            for id in gating {
                gating_any = true;
                match gate.links.iter_mut().find(|entry| entry.link == id) {
                    Some(entry) => entry.last = position,
                    None => {
                        gate.links.push(LinkGate { link: id, first: position, last: position, confirmed: Position(0) })
                    }
                }
            }
        }
        if !gating_any {
            gate.mark_dirty(queue, &mut self.dirty);
        }
    }

    /// The queue `name` was deleted: its messages are gone; a queue re-created under the name
    /// starts a new gate.
    pub(super) fn handle_queue_deleted(&mut self, name: &Arc<str>) {
        self.gates.remove(name);
    }

    /// `batch` went out on `link`: notes the highest position of each gated queue it carries, to
    /// raise on its confirm.
    pub(super) fn handle_batch_sent(&mut self, link: LinkId, batch: &Batch) {
        for record in &batch.records {
            let Record::Enqueued { queue, first_position, messages } = record else { continue };
            let Some((name, gate)) = self.gates.get_key_value(queue.as_str()) else { continue };
            if gate.links.iter().any(|held| held.link == link) {
                let top = Position(first_position.0 + messages.len() as u64 - 1);
                self.tops.entry(link).or_default().push_back((batch.stream_seq, name.clone(), top));
            }
        }
    }

    /// The backup of `link` confirmed every batch up to `seq`: the queues those batches carried
    /// may deliver further.
    pub(super) fn handle_confirm(&mut self, link: LinkId, seq: StreamSeq) {
        let Some(tops) = self.tops.get_mut(&link) else { return };
        while tops.front().is_some_and(|&(batch, _, _)| batch <= seq) {
            let (_, queue, top) = tops.pop_front().expect("front checked above");
            // A queue deleted since has no gate (or a new one, whose positions are all above).
            let Some(gate) = self.gates.get_mut(&queue) else { continue };
            if let Some(held) = gate.links.iter_mut().find(|held| held.link == link) {
                held.confirmed = held.confirmed.max(top);
                gate.mark_dirty(&queue, &mut self.dirty);
            }
        }
    }

    /// `link` gates nothing any more (lost, or overflowed): every queue it gated may deliver on.
    pub(super) fn ungate(&mut self, link: LinkId) {
        self.tops.remove(&link);
        for (name, gate) in &mut self.gates {
            let before = gate.links.len();
            gate.links.retain(|entry| entry.link != link);
            if gate.links.len() != before {
                gate.mark_dirty(name, &mut self.dirty);
            }
        }
    }

    /// Drains the delivery bounds raised since the last call (see
    /// `PrimaryReplication::poll_replicated`).
    pub(super) fn poll_replicated(&mut self) -> std::vec::Drain<'_, (Arc<str>, Position)> {
        for name in self.dirty.drain(..) {
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

#[cfg(test)]
mod tests {
    use crate::primary::replication::test_support::*;

    #[test]
    fn a_held_message_is_deliverable_only_once_its_stream_confirmed_it() {
        // Goal: with one linked stream, a message is not reported deliverable while unsent or
        // sent and unconfirmed, and is once its batch is confirmed; the bound only rises, in
        // position order. Method: one link, enqueues with holds, batches confirmed one by one.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(link(1), "b:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 1, Some(1)));
        assert!(bounds(&mut replication).is_empty(), "unsent");
        let first = replication.poll_batch(link(1), BYTES).unwrap();
        replication.handle_event(enqueued("q", 2, Some(2)));
        replication.handle_event(enqueued("q", 3, Some(3)));
        let second = replication.poll_batch(link(1), BYTES).unwrap();
        assert!(bounds(&mut replication).is_empty(), "sent, not confirmed");
        replication.handle_confirm(link(1), first.stream_seq).unwrap();
        assert_eq!(bounds(&mut replication), [("q".to_string(), 1)]);
        assert!(bounds(&mut replication).is_empty(), "reported once");
        replication.handle_confirm(link(1), second.stream_seq).unwrap();
        assert_eq!(bounds(&mut replication), [("q".to_string(), 3)]);
        // Another queue's enqueue does not move this one's bound.
        replication.handle_event(created("r"));
        replication.handle_event(enqueued("r", 1, Some(4)));
        drain(&mut replication, link(1));
        assert_eq!(bounds(&mut replication), [("r".to_string(), 1)]);
    }

    #[test]
    fn a_message_waits_for_every_link_and_a_lost_or_overflowed_link_gates_nothing() {
        // Goal: with two links a message is deliverable once both confirmed it, or once the one
        // that has not is lost; an overflowed link stops gating at once, before it is closed.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(link(1), "b1:1", Vec::new());
        replication.handle_link_opened(link(2), "b2:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 1, Some(1)));
        drain(&mut replication, link(1));
        assert!(bounds(&mut replication).is_empty(), "link 2 has not confirmed");
        replication.poll_batch(link(2), BYTES).unwrap();
        replication.handle_link_lost(link(2));
        assert_eq!(bounds(&mut replication), [("q".to_string(), 1)]);
        // A link that never confirms overflows: what it gated is deliverable once the other
        // link confirmed it, without waiting for the node to close it.
        replication.handle_link_opened(link(3), "stuck:1", Vec::new());
        let mut position = 2;
        while replication.poll_overflowed().is_none() {
            replication.handle_event(enqueued("q", position, Some(position)));
            position += 1;
            if position.is_multiple_of(4096) {
                drain(&mut replication, link(1));
            }
        }
        drain(&mut replication, link(1));
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
        replication.handle_link_opened(link(1), "b1:1", snapshot);
        replication.handle_event(enqueued("q", 4, Some(4)));
        assert!(bounds(&mut replication).is_empty());
        let live = replication.poll_batch(link(1), BYTES).unwrap();
        assert_eq!(positions(&live.records, "q"), [4]);
        replication.handle_confirm(link(1), live.stream_seq).unwrap();
        assert_eq!(bounds(&mut replication), [("q".to_string(), 4)], "the backlog does not gate");
    }

    #[test]
    fn a_purge_or_a_delete_leaves_no_message_stuck() {
        // Goal: gated messages dequeued before they were sent (a purge) hold back only later
        // messages that link must confirm anyway; a deleted queue's gate goes with it, and a
        // queue re-created under its name (positions above) is gated afresh.
        let mut replication = PrimaryReplication::new(Epoch(1));
        replication.handle_link_opened(link(1), "b:1", Vec::new());
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 1, Some(1)));
        replication.handle_event(enqueued("q", 2, Some(2)));
        replication.handle_event(dequeued("q", 1));
        replication.handle_event(dequeued("q", 2));
        drain(&mut replication, link(1));
        assert!(bounds(&mut replication).is_empty(), "nothing was sent, nothing confirmed");
        replication.handle_event(enqueued("q", 3, Some(3)));
        assert!(bounds(&mut replication).is_empty());
        drain(&mut replication, link(1));
        assert_eq!(bounds(&mut replication), [("q".to_string(), 3)]);
        // Deleted with a gated message in flight, then re-created above it.
        replication.handle_event(enqueued("q", 4, Some(4)));
        let inflight = replication.poll_batch(link(1), BYTES).unwrap();
        replication.handle_event(ReplicationEvent::QueueDeleted { name: Arc::from("q") });
        replication.handle_event(created("q"));
        replication.handle_event(enqueued("q", 10, Some(5)));
        replication.handle_confirm(link(1), inflight.stream_seq).unwrap();
        let reported = bounds(&mut replication);
        assert!(
            reported.iter().all(|(_, bound)| *bound < 10),
            "the old queue's confirm opened the new one: {reported:?}"
        );
        drain(&mut replication, link(1));
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
            let (mut position, mut next_link, mut bound) = (1u64, link(1), 0u64);
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
                        next_link = link(next_link.0 .0 + 1);
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
