//! A subscription: deliveries in, settlements out.
//!
//! The reader task hands each `Deliver` frame to the subscription's channel as one event (one
//! channel send per frame, not per message); `recv` takes messages from the current frame
//! without touching the channel. `ack`, `reject` and `release` only record the tag in a
//! `SettlementBatch`; the batch goes out as `Settle` frames of ranges when `recv` is about to
//! wait, when a quarter of the prefetch credit is pending, or on `flush` and `cancel`.
//!
//! Invariants:
//! - Deliveries come out in tag order, with consecutive tags from 0 (the consumer registry checks
//!   the broker's `first_tag` against the subscription's next tag).
//! - Only tags already returned by `recv` can be settled; pending settlements are sent before
//!   `recv` waits, so a consumer never starves itself of credit.
//! - The event channel is unbounded in type but bounded by the prefetch: every delivery in it is
//!   unsettled, and the broker keeps at most `prefetch` unsettled per subscription.
//! - After the subscription ended, `recv` returns what arrived before the end and then `None` (or
//!   the error the connection failed with); settlements are refused with the reason.
//! - Across a reconnect (`ConnectOptions::reconnect`) the subscription is made again on the new
//!   socket (same queue, same prefetch) and tags keep increasing: the new session's broker tag 0
//!   gets the tag after the last one `recv` returned. Deliveries of the lost session are not
//!   settled by the broker that delivered them (it is gone; the new primary delivers them again):
//!   those already received may still come out of `recv` before the new session's, and settling
//!   any of their tags, or a settlement still pending from that session, does nothing (counted in
//!   `ConnectionStats::settlements_stale`), so it can never settle a delivery of the new session.

use std::sync::Arc;

use ringmq_core::frame::{Delivered, Frame, Message, Settlement};
use ringmq_core::ids::{ConsumerId, Tag};
use tokio::sync::mpsc;

use crate::consumer_registry::{ConsumerEvent, Subscription};
use crate::error::ClientError;
use crate::limits::SETTLE_FLUSH_PREFETCH_DIVISOR;
use crate::settlement_batch::SettlementBatch;
use crate::shared::{locked, Shared};

/// One message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The delivery tag, to settle it with.
    pub tag: Tag,
    /// True when the message was delivered before and not acked.
    pub redelivered: bool,
    /// The message; its fields are slices of the frame it arrived in.
    pub message: Message,
}

/// A subscription to one queue.
#[derive(Debug)]
pub struct Consumer {
    /// The connection.
    shared: Arc<Shared>,
    /// The subscription's id on its connection.
    id: ConsumerId,
    /// The queue consumed from.
    queue: String,
    /// The most unsettled deliveries the broker keeps outstanding.
    prefetch: u32,
    /// Events from the reader task.
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    /// The rest of the current `Deliver` frame.
    batch: std::vec::IntoIter<Delivered>,
    /// The tag the next message `recv` returns gets; every tag below was returned.
    next_tag: Tag,
    /// The tag the current socket session's broker tag 0 maps to; tags below are stale.
    session_base: u64,
    /// The socket session the pending settlements belong to.
    session: u64,
    /// Settlements not sent yet.
    settlements: SettlementBatch,
    /// Pending settled tags that trigger a flush.
    flush_tags_threshold: u64,
    /// How the subscription ended, once it has.
    end: Option<ConsumerEnd>,
}

impl Consumer {
    /// The next delivery; waits for one. `Ok(None)` once the subscription was cancelled (by
    /// `cancel` or by the broker) or the connection was closed by this client.
    ///
    /// Pending settlements are sent before waiting.
    ///
    /// # Errors
    /// The cause when the connection failed (broker `Error` frame, lost socket, protocol
    /// violation); deliveries that arrived before the failure are returned first.
    pub async fn recv(&mut self) -> Result<Option<Delivery>, ClientError> {
        loop {
            if let Some(delivery) = self.try_next() {
                return Ok(Some(delivery));
            }
            if let Some(end) = &self.end {
                return end.recv_result();
            }
            let event = match self.events.try_recv() {
                Ok(event) => event,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // A failure here means the connection ended; the event saying so is next.
                    let _ = self.flush();
                    match self.events.recv().await {
                        Some(event) => event,
                        None => ConsumerEvent::Closed(self.shared.closed_error()),
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => ConsumerEvent::Closed(self.shared.closed_error()),
            };
            self.handle_event(event);
        }
    }

    /// Acknowledges delivery `tag`: the queue forgets the message.
    ///
    /// # Errors
    /// `UnknownTag` for a tag `recv` has not returned; `SubscriptionEnded` or the connection's
    /// cause when the subscription ended.
    pub fn ack(&mut self, tag: Tag) -> Result<(), ClientError> {
        self.settle(Settlement::Ack, tag)
    }

    /// Rejects delivery `tag`: the queue drops the message (counted as rejected).
    ///
    /// # Errors
    /// As `ack`.
    pub fn reject(&mut self, tag: Tag) -> Result<(), ClientError> {
        self.settle(Settlement::Reject, tag)
    }

    /// Releases delivery `tag`: the message goes back to the queue, marked redelivered.
    ///
    /// # Errors
    /// As `ack`.
    pub fn release(&mut self, tag: Tag) -> Result<(), ClientError> {
        self.settle(Settlement::Release, tag)
    }

    /// Sends pending settlements now.
    ///
    /// # Errors
    /// The connection's cause when it ended.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.settlements.is_empty() {
            return Ok(());
        }
        for chunk in self.settlements.drain() {
            let frame = Frame::Settle { consumer: self.id, settlement: chunk.settlement, ranges: chunk.ranges };
            self.shared.send_in_session(&frame, self.session)?;
        }
        Ok(())
    }

    /// Ends the subscription: sends pending settlements, then `Cancel`, and waits for the reply.
    /// Unsettled deliveries, including any not yet returned by `recv`, go back to the queue;
    /// `recv` returns `None` afterwards. Cancelling an ended subscription does nothing.
    ///
    /// # Errors
    /// `Failed` when the broker refuses; the connection's cause when it failed.
    pub async fn cancel(&mut self) -> Result<(), ClientError> {
        match &self.end {
            Some(ConsumerEnd::Failed(ClientError::Closed)) | Some(ConsumerEnd::Cancelled { .. }) => return Ok(()),
            Some(ConsumerEnd::Failed(cause)) => return Err(cause.clone()),
            None => {}
        }
        let flushed = self.flush();
        let id = self.id;
        let result = match flushed {
            Ok(()) => self.shared.request("cancel", |request| Frame::Cancel { request, consumer: id }).await,
            Err(err) => Err(err),
        };
        locked(&self.shared.consumers).remove(self.id);
        self.batch = Vec::new().into_iter();
        self.end = Some(ConsumerEnd::Cancelled { reason: "cancelled by this client".to_string() });
        match result {
            // The lost socket took the subscription with it, and it is no longer re-made.
            Err(ClientError::Reconnecting { .. }) => Ok(()),
            other => other?.expect_done("cancel"),
        }
    }

    /// The subscription's id on its connection.
    pub fn id(&self) -> ConsumerId {
        self.id
    }

    /// The queue consumed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The prefetch (credit) asked for.
    pub fn prefetch(&self) -> u32 {
        self.prefetch
    }

    /// Why the broker ended the subscription, once it has (`ConsumerCancelled`).
    pub fn cancel_reason(&self) -> Option<&str> {
        match &self.end {
            Some(ConsumerEnd::Cancelled { reason }) => Some(reason),
            _ => None,
        }
    }

    /// The next delivery of the current frame, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<Delivery> {
        let delivered = self.batch.next()?;
        let tag = self.next_tag;
        self.next_tag = tag.next();
        Some(Delivery { tag, redelivered: delivered.redelivered, message: delivered.message })
    }

    /// A consumer for a subscription the broker accepted.
    pub(crate) fn new(
        shared: Arc<Shared>,
        subscription: Subscription,
        events: mpsc::UnboundedReceiver<ConsumerEvent>,
        session: u64,
    ) -> Consumer {
        let Subscription { consumer: id, queue, prefetch } = subscription;
        Consumer {
            shared,
            id,
            queue,
            prefetch,
            events,
            batch: Vec::new().into_iter(),
            next_tag: Tag(0),
            session_base: 0,
            session,
            settlements: SettlementBatch::default(),
            flush_tags_threshold: u64::from(prefetch / SETTLE_FLUSH_PREFETCH_DIVISOR).max(1),
            end: None,
        }
    }

    fn settle(&mut self, settlement: Settlement, tag: Tag) -> Result<(), ClientError> {
        match &self.end {
            None => {}
            Some(ConsumerEnd::Cancelled { reason }) => {
                return Err(ClientError::SubscriptionEnded { reason: reason.clone() })
            }
            Some(ConsumerEnd::Failed(cause)) => return Err(cause.clone()),
        }
        if tag >= self.next_tag {
            return Err(ClientError::unknown_tag(tag, self.next_tag));
        }
        if tag.0 < self.session_base {
            // Delivered on a socket that was lost: the broker redelivers it on the new one.
            self.shared.settlements_stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        if self.settlements.is_full() {
            self.flush()?;
        }
        self.settlements.add(settlement, Tag(tag.0 - self.session_base));
        if self.settlements.tags_pending() >= self.flush_tags_threshold {
            self.flush()?;
        }
        Ok(())
    }

    fn handle_event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Deliveries { first_tag, messages } => {
                assert_eq!(
                    first_tag.0 + self.session_base,
                    self.next_tag.0,
                    "the consumer registry checks tags are consecutive"
                );
                assert_eq!(self.batch.len(), 0, "a new frame is taken only when the last is used up");
                self.batch = messages.into_iter();
            }
            ConsumerEvent::Cancelled { reason } => {
                self.end = Some(ConsumerEnd::Cancelled { reason: format!("cancelled by the broker: {reason}") });
            }
            ConsumerEvent::Closed(cause) => self.end = Some(ConsumerEnd::Failed(cause)),
            ConsumerEvent::Resubscribed { session } => {
                // What the lost session delivered and `recv` did not return yet is redelivered;
                // its pending settlements would name other deliveries now.
                self.batch = Vec::new().into_iter();
                self.settlements = SettlementBatch::default();
                self.session_base = self.next_tag.0;
                self.session = session;
            }
        }
    }
}

impl Drop for Consumer {
    /// An active subscription is cancelled without waiting: pending settlements go first, so
    /// acks made before the drop are not lost.
    fn drop(&mut self) {
        if self.end.is_some() || self.shared.check_open().is_err() {
            return;
        }
        // Failures mean the connection ended, which ends the subscription too.
        let _ = self.flush();
        let id = self.id;
        let _ = self.shared.request_detached("cancel", |request| Frame::Cancel { request, consumer: id });
        locked(&self.shared.consumers).remove(self.id);
    }
}

/// How a subscription ended.
#[derive(Debug)]
enum ConsumerEnd {
    /// Cancelled by this client or by the broker.
    Cancelled {
        /// Who and why.
        reason: String,
    },
    /// The connection ended; `Closed` when this client closed it.
    Failed(ClientError),
}

impl ConsumerEnd {
    fn recv_result(&self) -> Result<Option<Delivery>, ClientError> {
        match self {
            ConsumerEnd::Cancelled { .. } | ConsumerEnd::Failed(ClientError::Closed) => Ok(None),
            ConsumerEnd::Failed(cause) => Err(cause.clone()),
        }
    }
}
