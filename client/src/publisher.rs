//! The publish side of a connection: one per connection, since sequence numbers and confirms are
//! per connection.
//!
//! `publish` queues the message in the outbox (see `outbox.rs` for how that batches) and returns
//! its sequence number at once; it waits only while the publish window is full. Confirms come
//! back through the reader task into the confirm queue, read by `next_confirm` (range by range)
//! and `wait_for_confirms` (a summary).
//!
//! The methods take `&self`, so one task can publish while another takes confirms (share the
//! `Publisher` in an `Arc`).
//!
//! Invariants:
//! - Sequence numbers are returned in the order the messages reach the broker, consecutive from
//!   0 across every exchange.
//! - A `publish` that waits is woken by every confirm frame and by the connection ending; none
//!   waits on a connection that has ended.

use std::pin::pin;
use std::sync::Arc;

use ringmq_core::frame::{ConfirmRange, Message};
use ringmq_core::ids::Seq;

use crate::confirm_queue::ConfirmSummary;
use crate::error::ClientError;
use crate::outbox::PublishPush;
use crate::shared::{locked, Shared};

/// The connection's publish stream.
#[derive(Debug)]
pub struct Publisher {
    /// The connection.
    shared: Arc<Shared>,
}

impl Publisher {
    /// Publishes `message` to `exchange` (`""` is the default exchange, which routes by queue
    /// name); returns its sequence number. Waits only while `publish_window` publishes are
    /// unconfirmed.
    ///
    /// # Errors
    /// `InvalidArgument` or `MessageTooLarge` for a message that cannot be sent (nothing is
    /// queued, no sequence number is used); the connection's cause when it ended.
    pub async fn publish(&self, exchange: &str, message: Message) -> Result<Seq, ClientError> {
        let mut message = match self.try_publish(exchange, message)? {
            PublishPush::Queued(seq) => return Ok(seq),
            PublishPush::WindowFull(message) => message,
        };
        loop {
            // Enable the wake-up before looking, so a confirm between the look and the wait is
            // not missed.
            let mut wake = pin!(self.shared.confirm_wake.notified());
            wake.as_mut().enable();
            message = match self.try_publish(exchange, message)? {
                PublishPush::Queued(seq) => return Ok(seq),
                PublishPush::WindowFull(message) => message,
            };
            wake.await;
        }
    }

    /// The next confirm range, in sequence order; waits until one arrives. `Ok(None)` once the
    /// connection was closed by this client and every range received was taken, like
    /// `Consumer::recv`: a latency tracker can loop on it in its own task while another task
    /// publishes.
    ///
    /// When the caller leaves ranges untaken, equal neighbours merge; past
    /// `CONFIRM_RANGES_QUEUED_MAX` distinct ranges the oldest are dropped from this queue (they
    /// stay counted by `wait_for_confirms`, which also forgets the ranges not taken).
    ///
    /// # Errors
    /// The connection's cause when it failed, once the ranges received before were taken.
    pub async fn next_confirm(&self) -> Result<Option<ConfirmRange>, ClientError> {
        loop {
            let mut wake = pin!(self.shared.confirm_wake.notified());
            wake.as_mut().enable();
            if let Some(range) = locked(&self.shared.confirms).pop() {
                return Ok(Some(range));
            }
            match self.shared.closed.get() {
                Some(ClientError::Closed) => return Ok(None),
                Some(cause) => return Err(cause.clone()),
                None => {}
            }
            wake.await;
        }
    }

    /// Waits until every publish made so far is confirmed; returns how the publishes confirmed
    /// since the previous call ended (counts per outcome, the first rejection with the broker's
    /// reason) and forgets the ranges `next_confirm` did not take.
    ///
    /// # Errors
    /// The connection's cause when it ends first.
    pub async fn wait_for_confirms(&self) -> Result<ConfirmSummary, ClientError> {
        let target = locked(&self.shared.outbox).window().next();
        loop {
            let mut wake = pin!(self.shared.confirm_wake.notified());
            wake.as_mut().enable();
            {
                let mut confirms = locked(&self.shared.confirms);
                if confirms.received_next() >= target {
                    return Ok(confirms.take_summary());
                }
            }
            self.shared.check_open()?;
            wake.await;
        }
    }

    /// Publishes sent or queued and not yet confirmed.
    pub fn unconfirmed(&self) -> u64 {
        locked(&self.shared.outbox).window().inflight()
    }

    /// The sequence number the next publish gets.
    pub fn next_seq(&self) -> Seq {
        locked(&self.shared.outbox).window().next()
    }

    /// A publisher for a connection.
    pub(crate) fn new(shared: Arc<Shared>) -> Publisher {
        Publisher { shared }
    }

    /// Queues the message if the window has room, else hands it back; never waits.
    ///
    /// # Errors
    /// As `publish`.
    pub(crate) fn try_publish(&self, exchange: &str, message: Message) -> Result<PublishPush, ClientError> {
        let (push, wake) = {
            let mut outbox = locked(&self.shared.outbox);
            let push = outbox.push_publish(exchange, message)?;
            let wake = matches!(push, Ok(PublishPush::Queued(_))) && outbox.take_writer_wake();
            (push, wake)
        };
        if wake {
            self.shared.writer_wake.notify_one();
        }
        push.map_err(|_closed| self.shared.closed_error())
    }
}
