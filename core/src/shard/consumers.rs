//! Consumers: subscriptions to the queues this shard owns (for connections on any shard), and
//! the delivery of what changed queues can give their subscribers, in frames of at most
//! `DELIVER_FRAME_BYTES_TARGET`.
//!
//! Invariants:
//! - A subscription's unsettled deliveries never exceed its prefetch (the queue's rule).
//! - Only queues marked dirty since the last `drive` are looked at.

use super::*;

impl Shard {
    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        request: RequestId,
        consumer: ConsumerId,
        queue: String,
        prefetch: u32,
    ) {
        let origin = self.conn_ref(conn);
        let session = self.sessions.get_mut(&conn).expect("session of a frame");
        let max = crate::limits::CONSUMERS_PER_CONNECTION_MAX as usize;
        let failure = if session.subscriptions.contains_key(&consumer) {
            Some((ErrorCode::PreconditionFailed, format!("consumer {} already subscribes", consumer.0)))
        } else if session.subscriptions.len() >= max {
            Some((ErrorCode::LimitExceeded, format!("a connection may have at most {max} consumers")))
        } else {
            None
        };
        if let Some((code, message)) = failure {
            self.write_frame(conn, &Frame::Failed { request, code, message });
            return;
        }
        session.subscriptions.insert(consumer, Arc::from(queue.as_str()));
        let owner = shard_of(&queue, self.config.shard_count);
        self.send(owner, ShardMessage::Subscribe { origin, request, consumer, queue, prefetch });
    }

    pub(super) fn subscribe_local(
        &mut self,
        origin: ConnRef,
        consumer: ConsumerId,
        queue: &str,
        prefetch: u32,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(entry) = self.queues.get_mut(queue) else {
            return Err((ErrorCode::NotFound, format!("no queue '{queue}'")));
        };
        if let Some(owner) = entry.exclusive_owner() {
            if owner != (origin.shard, origin.conn) {
                return Err((ErrorCode::ResourceLocked, format!("queue '{queue}' is exclusive to another connection")));
            }
        }
        let key = SubscriberKey { shard: origin.shard, conn: origin.conn, consumer };
        entry.subscribe(key, prefetch).map_err(|error| (ErrorCode::InvalidArgument, error.to_string()))?;
        self.mark_queue(queue);
        Ok(())
    }

    pub(super) fn cancel_local(&mut self, origin: ConnRef, consumer: ConsumerId, queue: &str) {
        let Some(entry) = self.queues.get_mut(queue) else { return };
        let key = SubscriberKey { shard: origin.shard, conn: origin.conn, consumer };
        if entry.cancel(key) {
            let emptied = entry.consumer_count() == 0 && entry.options().auto_delete;
            self.mark_queue(queue);
            if emptied {
                self.request_auto_delete(queue.to_string());
            }
        }
    }

    pub(super) fn deliver_dirty_queues(&mut self) {
        let batch_max = self.config.deliver_batch_max;
        let mut batches: Vec<DeliveryBatch> = Vec::new();
        for name in std::mem::take(&mut self.dirty_queues) {
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.poll_deliveries(batch_max, |batch| batches.push(batch));
            }
        }
        for batch in batches {
            let key = batch.subscriber;
            if key.shard == self.id {
                self.write_deliveries(key.conn, key.consumer, batch.first_tag, batch.messages);
            } else {
                let message = ShardMessage::Deliver {
                    conn: key.conn,
                    consumer: key.consumer,
                    first_tag: batch.first_tag,
                    messages: batch.messages,
                };
                self.send(key.shard, message);
            }
        }
    }

    /// Writes deliveries to a consumer's connection, in frames of at most
    /// `DELIVER_FRAME_BYTES_TARGET` (a single larger message goes alone in its frame).
    pub(super) fn write_deliveries(
        &mut self,
        conn: ConnId,
        consumer: ConsumerId,
        first_tag: Tag,
        messages: Vec<Delivered>,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            self.counters.to_closed_connection += 1;
            return;
        };
        if !session.subscriptions.contains_key(&consumer) || session.closing {
            // Cancelled meanwhile: the queue took these back when it processed the cancel. Or the
            // connection is closing after an Error: nothing follows it, and the queue takes these
            // back when the close arrives.
            self.counters.to_closed_connection += 1;
            return;
        }
        let total: usize = messages.iter().map(|d| codec::message_bytes_len(&d.message) + 1).sum();
        session.out.reserve(total + DELIVER_FRAME_OVERHEAD_BYTES * (1 + total / DELIVER_FRAME_BYTES_TARGET));
        let mut tag = first_tag;
        let mut remaining = messages.iter().peekable();
        while remaining.peek().is_some() {
            let mut writer = DeliverWriter::begin(&mut session.out, consumer, tag);
            while let Some(delivered) = remaining.peek() {
                let size = codec::message_bytes_len(&delivered.message) + 1;
                if writer.count() > 0 && writer.bytes_len() + size > DELIVER_FRAME_BYTES_TARGET {
                    break;
                }
                writer.push(delivered.redelivered, &delivered.message);
                tag = tag.next();
                remaining.next();
            }
            writer.finish();
        }
        self.mark_session(conn);
    }
}
