//! The publish path: routing a publish to its target queues (here or on other shards, batched
//! per shard), storing it in each, reporting each target's outcome to the producer's completion
//! tracker (with the holds replication takes), and writing the confirms the trackers release.
//!
//! Duplicate suppression (`dedup_window`): every queue is made with the `dedup-window` of the
//! config. A publish its queue finds a duplicate of (same `x-ringmq-dedup` key) is confirmed
//! `Stored` without being stored or replicated, and counted (`duplicates_suppressed`). Its confirm
//! follows the same rule as an enqueue's: in an `all` queue of a primary with holding streams it
//! takes the same holds, and a `ReplicationEvent::Barrier` (after the original's `Enqueued`)
//! releases each once that stream's backup confirmed the queue's records fed before it, so a
//! duplicate is never confirmed before the original could be. A backup's replica queues record the
//! keys of what they apply, so a promoted backup suppresses re-sends of messages it received by
//! replication.
//!
//! A publish another shard accepted comes with the epoch that shard had applied: the owner stores
//! it only once it has applied that epoch too (the promotion then set the holds it must take).
//!
//! Invariants:
//! - A publish is confirmed only through its connection's completion tracker, after every target
//!   queue reported and every hold was released (asserted there).
//! - A publish is stored in the epoch it was accepted in or a later one, never before its shard
//!   applied that promotion (asserted in `enqueue_forwarded`).
//! - A hold is taken on the producer's tracker before the target's report, in the same result.

use super::*;

impl Shard {
    /// Routes one publish frame and gathers its enqueues per owning shard; `flush_enqueues`
    /// sends them (to ourselves too) at the end of the read, so local and remote queues take the
    /// same path and every queue is looked up once per run of messages, not once per message.
    pub(super) fn publish(&mut self, conn: ConnId, exchange: &str, first_seq: Seq, messages: Vec<Message>) {
        let inflight_max = self.config.publish_inflight_max;
        // On an HA backup nothing is routed: every message is confirmed as refused.
        let refusal = self.ha.refusal("publish").map(|reason| {
            self.counters.requests_refused_not_primary += 1;
            ConfirmOutcome::Rejected { code: ErrorCode::NotPrimary, reason }
        });
        let session = self.sessions.get_mut(&conn).expect("session of a frame");
        let expected = *session.next_seq.get_or_insert(first_seq);
        if first_seq != expected {
            let message = format!("publish sequence must continue at {}; got {}", expected.0, first_seq.0);
            self.fail_connection(conn, ErrorCode::Malformed, message);
            return;
        }
        session.next_seq = Some(Seq(first_seq.0 + messages.len() as u64));
        let tracker = session.tracker.get_or_insert_with(|| CompletionTracker::new(inflight_max as usize));
        let mut targets = std::mem::take(&mut self.route_scratch);
        // Messages of a batch usually share their routing key: route each distinct key once.
        let mut routed_key: Option<bytes::Bytes> = None;
        let mut routed: Result<(), ConfirmOutcome> = Ok(());

        let mut overflow = false;
        for (offset, message) in messages.into_iter().enumerate() {
            let seq = Seq(first_seq.0 + offset as u64);
            if let Some(outcome) = &refusal {
                routed = Err(outcome.clone());
            } else if routed_key.as_ref() != Some(&message.routing_key) {
                targets.clear();
                routed = self
                    .routing
                    .route(exchange, &message.routing_key, &mut targets)
                    .map_err(|error| ConfirmOutcome::Rejected { code: error.code(), reason: error.to_string() });
                routed_key = Some(message.routing_key.clone());
            }
            let target_count = if routed.is_err() { 1 } else { targets.len() as u32 };
            if tracker.handle_publish(seq, target_count).is_err() {
                overflow = true;
                break;
            }
            if let Err(outcome) = &routed {
                tracker.handle_enqueued(seq, outcome.clone());
                continue;
            }
            let mut message = Some(message);
            for (index, queue) in targets.iter().enumerate() {
                // Every target but the last gets a clone (reference counts, not bytes).
                let message = if index + 1 == targets.len() { message.take() } else { message.clone() };
                let owner = shard_of(queue, self.config.shard_count);
                let item = EnqueueItem { queue: queue.clone(), seq, message: message.expect("message present") };
                self.pending_enqueues[usize::from(owner.0)].push(item);
            }
        }
        self.route_scratch = targets;
        if overflow {
            let message = format!("more than {inflight_max} publishes unconfirmed; wait for confirms");
            self.fail_connection(conn, ErrorCode::LimitExceeded, message);
            return;
        }
        self.mark_confirms_due(conn);
    }

    /// Sends the enqueues gathered while reading `conn` to their shards, with the epoch this
    /// shard accepted them in; ours are stored now.
    pub(super) fn flush_enqueues(&mut self, conn: ConnId) {
        let origin = self.conn_ref(conn);
        let epoch = self.ha.epoch();
        for shard in 0..self.config.shard_count {
            let items = std::mem::take(&mut self.pending_enqueues[usize::from(shard)]);
            if items.is_empty() {
                continue;
            }
            if ShardId(shard) == self.id {
                self.enqueue_batch(origin, items);
            } else {
                self.send(ShardId(shard), ShardMessage::Enqueue { origin, epoch, items });
            }
        }
    }

    /// Stores a batch of enqueues another shard accepted in `epoch` (`flush_enqueues` there).
    ///
    /// # Panics
    /// If this shard has not applied `epoch` yet: the batch would take none of the holds that
    /// promotion brings, and its acks could go out without the backups it expects (the HA layer
    /// keeps such a batch until the promotion is applied and followed, `ringmq_ha`'s
    /// `node::early_enqueues`).
    pub(super) fn enqueue_forwarded(&mut self, origin: ConnRef, epoch: Epoch, items: Vec<EnqueueItem>) {
        // The pair of `flush_enqueues`: the owner is in the producer's epoch or a later one.
        assert!(
            epoch <= self.ha.epoch(),
            "{}: an enqueue accepted in epoch {} reached its queue's shard in epoch {}, before the promotion",
            self.id,
            epoch.0,
            self.ha.epoch().0
        );
        self.enqueue_batch(origin, items);
    }

    /// Stores a batch of enqueues and reports the outcomes to the producer's shard. On a primary,
    /// a message stored in an `all` queue is reported to replication, holding its confirm for
    /// every backup stream of this shard. A duplicate (its queue's dedup window knows its key) is
    /// not stored, and is confirmed as stored: at once, unless it is in an `all` queue of a primary
    /// whose streams hold confirms; then it takes as many holds as an enqueue and is reported as a
    /// `ReplicationEvent::Barrier`, so that its confirm waits until every holding backup has what
    /// the original was (PROTOCOL.md 2.5.4).
    pub(super) fn enqueue_batch(&mut self, origin: ConnRef, items: Vec<EnqueueItem>) {
        let replicating = self.replicating();
        let stream_holds = if replicating { self.replica_holds } else { 0 };
        let gating = self.delivery_reports;
        let mut results: Vec<EnqueueResult> = Vec::new();
        let mut items = items.into_iter().peekable();
        while let Some(first) = items.next() {
            // A run of items for the same queue costs one lookup.
            let queue_name = first.queue.clone();
            let mut queue = self.queues.get_mut(&queue_name);
            let mut item = Some(first);
            while let Some(current) = item.take() {
                let mut holds = 0;
                let outcome = match queue.as_deref_mut() {
                    Some(queue) => {
                        // A clone costs reference counts, not bytes; only replicated messages pay it.
                        let replicated =
                            (replicating && queue.level().replicates_messages()).then(|| current.message.clone());
                        match queue.enqueue(current.message) {
                            // Held already (or it was, and was consumed): not stored again. On a
                            // primary whose streams hold confirms, the original may not be on every
                            // backup yet: the duplicate takes the holds an enqueue would, released by
                            // a `Barrier` once each backup confirmed what it was fed of the queue.
                            Ok(Enqueued::Duplicate) => {
                                self.counters.duplicates_suppressed += 1;
                                if replicated.is_some() && stream_holds > 0 {
                                    let hold = Hold { shard: origin.shard, conn: origin.conn, seq: current.seq };
                                    holds = stream_holds;
                                    let queue = queue_name.clone();
                                    self.replication.push(ReplicationEvent::Barrier { queue, hold, holders: holds });
                                }
                                ConfirmOutcome::Stored
                            }
                            Ok(Enqueued::At(position)) => {
                                if let Some(message) = replicated {
                                    let hold = (stream_holds > 0).then_some(Hold {
                                        shard: origin.shard,
                                        conn: origin.conn,
                                        seq: current.seq,
                                    });
                                    holds = if hold.is_some() { stream_holds } else { 0 };
                                    // Held for the backups: consumers get it once they hold it
                                    // too (`handle_replicated`).
                                    if hold.is_some() && gating {
                                        queue.gate_delivery(position);
                                    } else {
                                        queue.open_delivery_to(position);
                                    }
                                    let queue = queue_name.clone();
                                    self.replication.push(ReplicationEvent::Enqueued {
                                        queue,
                                        position,
                                        message,
                                        hold,
                                        holders: holds,
                                    });
                                }
                                ConfirmOutcome::Stored
                            }
                            Err(error) => ConfirmOutcome::Rejected { code: error.code(), reason: error.to_string() },
                        }
                    }
                    // Deleted between routing and arrival.
                    None => ConfirmOutcome::Rejected {
                        code: ErrorCode::NotFound,
                        reason: format!("no queue '{queue_name}'"),
                    },
                };
                match results.last_mut() {
                    Some(result)
                        if result.range.last.next() == current.seq
                            && result.range.outcome == outcome
                            && result.holds == holds =>
                    {
                        result.range.last = current.seq
                    }
                    _ => results.push(EnqueueResult {
                        range: ConfirmRange { first: current.seq, last: current.seq, outcome },
                        holds,
                    }),
                }
                item = items.next_if(|next| Arc::ptr_eq(&next.queue, &queue_name) || next.queue == queue_name);
            }
            if queue.is_some_and(|q| q.can_deliver()) {
                self.dirty_queues.insert(queue_name);
            }
        }
        if origin.shard == self.id {
            for result in results {
                self.record_enqueued(origin.conn, result);
            }
        } else {
            self.send(origin.shard, ShardMessage::Enqueued { conn: origin.conn, results });
        }
    }

    /// One target of each seq in the result's range reported, after its holds were taken.
    pub(super) fn record_enqueued(&mut self, conn: ConnId, result: EnqueueResult) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            self.counters.to_closed_connection += 1;
            return;
        };
        let tracker = session.tracker.as_mut().expect("enqueue result for a connection that never published");
        let EnqueueResult { range, holds } = result;
        let mut seq = range.first;
        while seq <= range.last {
            if holds > 0 {
                // Before the report, so the confirm cannot be released without the backups.
                tracker.handle_hold(seq, holds);
            }
            tracker.handle_enqueued(seq, range.outcome.clone());
            seq = seq.next();
        }
        if !session.confirms_due {
            session.confirms_due = true;
            self.confirms_due.push(conn);
        }
    }

    /// One hold on publish `seq` of local connection `conn` is released.
    pub(super) fn release_hold(&mut self, conn: ConnId, seq: Seq) {
        let Some(tracker) = self.sessions.get_mut(&conn).and_then(|s| s.tracker.as_mut()) else {
            self.counters.holds_released_to_closed_connection += 1;
            return;
        };
        tracker.handle_hold_released(seq);
        self.mark_confirms_due(conn);
    }

    /// One hold on publish `seq` of local connection `conn` is released with a rejection.
    pub(super) fn reject_hold(&mut self, conn: ConnId, seq: Seq, code: ErrorCode, reason: &str) {
        let Some(tracker) = self.sessions.get_mut(&conn).and_then(|s| s.tracker.as_mut()) else {
            self.counters.holds_released_to_closed_connection += 1;
            return;
        };
        tracker.handle_hold_rejected(seq, code, reason.to_owned());
        self.mark_confirms_due(conn);
    }

    pub(super) fn mark_confirms_due(&mut self, conn: ConnId) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            if !session.confirms_due {
                session.confirms_due = true;
                self.confirms_due.push(conn);
            }
        }
    }

    /// Writes every releasable confirm; the tracker decides which.
    pub(super) fn release_confirms(&mut self) {
        let mut ranges = Vec::new();
        let mut written = Vec::new();
        for conn in std::mem::take(&mut self.confirms_due) {
            let Some(session) = self.sessions.get_mut(&conn) else { continue };
            session.confirms_due = false;
            if session.closing {
                // Nothing follows an Error frame.
                continue;
            }
            let Some(tracker) = session.tracker.as_mut() else { continue };
            tracker.poll_confirms(&mut ranges);
            if ranges.is_empty() {
                continue;
            }
            for chunk in ranges.chunks(crate::limits::RANGES_MAX as usize) {
                let mut writer = ConfirmWriter::begin(&mut session.out);
                for range in chunk {
                    writer.push(range.clone());
                }
                writer.finish();
            }
            ranges.clear();
            written.push(conn);
        }
        for conn in written {
            self.mark_session(conn);
        }
    }
}
