//! The state one connection shares between the caller's handles and its background tasks.
//!
//! `Connection`, `Publisher` and every `Consumer` hold an `Arc<Shared>`; so do the supervisor,
//! the reader task (which completes requests, releases the publish window and hands deliveries
//! to consumers) and the writer task (which drains the outbox into the socket).
//!
//! Owns: the outbox (`outbox.rs`, with the publish window), the confirm queue
//! (`confirm_queue.rs`), the request table (`request_table.rs`), the consumer registry
//! (`consumer_registry.rs`), the wake-ups between them, the close cause and the counters of
//! ignored input. Each of those types is defined in its own module, which imports nothing of
//! `Shared`: dependencies point from the handles and tasks to `Shared`, and from `Shared` to the
//! state it holds, never back. What `Shared` adds is what spans several of them at once (a
//! subscription registered and its request queued; a close that completes every waiter).
//!
//! Locks are `std::sync::Mutex`, held for a few instructions and never across an `.await`, and
//! never two at a time (every path takes one, releases it, then takes the next), except
//! `subscribe` and `resume`, which must be atomic with respect to each other and nest them in one
//! order: `consumers`, then `requests`, then `outbox`.
//!
//! Invariants:
//! - `closed` is set once, to the first cause; afterwards no request, publish or subscription
//!   is accepted, and `close` has completed every waiter (requests, consumers, publisher) with
//!   that cause. A waiter checks `closed` under the same lock it registers under, so none is
//!   registered after `close` drained the tables.
//! - A graceful close (`ClientError::Closed`) lets the writer send what was queued before it;
//!   any other cause stops the writer at once.
//! - With `reconnect`, a lost socket is not a close: `suspend` fails the requests in flight with
//!   `Reconnecting` (their outcome is unknown) and keeps publishes and subscriptions; `resume`
//!   starts the next socket session with every active subscription re-sent, then every
//!   unconfirmed publish. `closed` is set only when the caller closes or reconnecting gives up.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use bytes::{Bytes, BytesMut};
use ringmq_core::frame::Frame;
use ringmq_core::ids::{ConsumerId, RequestId};
use ringmq_core::wire::codec;
use tokio::sync::{oneshot, Notify};

use crate::confirm_queue::ConfirmQueue;
use crate::consumer_registry::{ConsumerEvent, ConsumerRegistry, ConsumerSlot};
use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::outbox::{Outbox, OutboxState, Retention, SessionPush};
use crate::request_table::{Reply, ReplyResult, RequestTable};

/// One connection's shared state.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The options the connection was opened with.
    pub(crate) options: ConnectOptions,
    /// What waits to be written, and the publish window.
    pub(crate) outbox: Mutex<Outbox>,
    /// Wakes the writer when the outbox gets items while it was idle (`notify_one`: a wake
    /// before the writer waits is kept as a permit).
    pub(crate) writer_wake: Notify,
    /// Confirm ranges received and the running summary.
    pub(crate) confirms: Mutex<ConfirmQueue>,
    /// Wakes publishers waiting for window room or confirms, on every confirm frame and on close
    /// (`notify_waiters`: waiters enable their `Notified` before checking).
    pub(crate) confirm_wake: Notify,
    /// Requests waiting for replies.
    pub(crate) requests: Mutex<RequestTable>,
    /// Subscriptions by id.
    pub(crate) consumers: Mutex<ConsumerRegistry>,
    /// The cause the connection ended with; set once.
    pub(crate) closed: OnceLock<ClientError>,
    /// Wakes the reader when the connection starts closing, so it stops after a linger.
    pub(crate) closing: Notify,
    /// The next subscription id.
    next_consumer: AtomicU32,
    /// True once `Connection::publisher` handed out the publisher.
    pub(crate) publisher_taken: AtomicBool,
    /// Replies whose request id no waiter had (a broker bug, or a reply to a detached request).
    pub(crate) replies_unmatched: AtomicU64,
    /// Deliveries for a subscription this client already cancelled; the broker returns them to
    /// the queue when it processes the cancel.
    pub(crate) deliveries_after_cancel: AtomicU64,
    /// Settle frames dropped because their tags belonged to a socket session that was lost.
    pub(crate) settlements_stale: AtomicU64,
    /// Times the connection was re-established after a loss.
    pub(crate) reconnects: AtomicU64,
    /// The address of the broker of the current session.
    pub(crate) peer: Mutex<String>,
    /// Addresses learned from the primary's `ha-public-url`, for the supervisor to add.
    pub(crate) learned: Mutex<Vec<String>>,
}

/// A subscription to re-establish on a new socket session, and the wait for its reply.
#[derive(Debug)]
pub(crate) struct Resubscription {
    /// The subscription.
    pub(crate) consumer: ConsumerId,
    /// The broker's reply to the new `Subscribe`.
    pub(crate) reply: oneshot::Receiver<ReplyResult>,
}

/// A `Subscribe` queued by `Shared::subscribe`, and the wait for its reply.
#[derive(Debug)]
pub(crate) struct PendingSubscribe {
    /// The broker's reply.
    pub(crate) reply: oneshot::Receiver<ReplyResult>,
    /// The socket session the subscription's deliveries and settlements belong to.
    pub(crate) session: u64,
}

impl Shared {
    /// Fresh state for a connection with these (validated) options.
    pub(crate) fn new(options: ConnectOptions, peer: String) -> Shared {
        let outbox = Outbox::with_failover(
            options.publish_window,
            options.frame_bytes_max,
            if options.reconnect { Retention::UntilConfirmed } else { Retention::UntilSent },
            options.producer_id.clone(),
        );
        Shared {
            outbox: Mutex::new(outbox),
            options,
            writer_wake: Notify::new(),
            confirms: Mutex::new(ConfirmQueue::default()),
            confirm_wake: Notify::new(),
            requests: Mutex::new(RequestTable::default()),
            consumers: Mutex::new(ConsumerRegistry::default()),
            closed: OnceLock::new(),
            closing: Notify::new(),
            next_consumer: AtomicU32::new(0),
            publisher_taken: AtomicBool::new(false),
            replies_unmatched: AtomicU64::new(0),
            deliveries_after_cancel: AtomicU64::new(0),
            settlements_stale: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            peer: Mutex::new(peer),
            learned: Mutex::new(Vec::new()),
        }
    }

    /// The socket was lost with `cause` and a reconnect begins: requests in flight fail with
    /// `Reconnecting`, publishes are kept, the writer of the lost session stops.
    pub(crate) fn suspend(&self, cause: &ClientError) {
        let text = cause.to_string();
        tracing::debug!(cause = %text, "ringmq connection lost; reconnecting");
        locked(&self.outbox).suspend(text.clone());
        self.writer_wake.notify_one();
        locked(&self.requests).fail_all(&ClientError::Reconnecting { cause: text });
    }

    /// A new socket session begins (to `peer`): queues a `Subscribe` for every active
    /// subscription, then every unconfirmed publish, and tells each subscription its tags start
    /// again. Returns the replies to wait for, or `None` when the connection was closed meanwhile.
    pub(crate) fn resume(&self, peer: String) -> Option<Vec<Resubscription>> {
        *locked(&self.peer) = peer;
        // Held throughout (order: consumers, requests, outbox, as in `subscribe`), so a
        // subscription is either re-sent here or sent by its own `subscribe`, never both or none.
        let mut consumers = locked(&self.consumers);
        let mut frames: Vec<Bytes> = Vec::new();
        let mut waits = Vec::new();
        for subscription in consumers.restart() {
            let (waiter, reply) = oneshot::channel();
            let request = locked(&self.requests).register(waiter);
            let frame = Frame::Subscribe {
                request,
                consumer: subscription.consumer,
                queue: subscription.queue,
                prefetch: subscription.prefetch,
            };
            let mut bytes = BytesMut::new();
            codec::encode(&frame, &mut bytes);
            frames.push(bytes.freeze());
            waits.push(Resubscription { consumer: subscription.consumer, reply });
        }
        let session = locked(&self.outbox).resume(frames)?;
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        // The lock is held since `restart`: the slots told are exactly the ones re-sent.
        consumers.tell_resubscribed(session);
        Some(waits)
    }

    /// Registers subscription `consumer` (its `slot`) and queues its `Subscribe`, atomically with
    /// respect to `resume`. Returns the reply to wait for and the socket session it belongs to.
    /// While suspended the frame is not queued: the waiter gets `Reconnecting` and the slot stays,
    /// so the next `resume` subscribes it.
    ///
    /// # Errors
    /// The close cause when closed (nothing is registered then).
    pub(crate) fn subscribe(&self, consumer: ConsumerId, slot: ConsumerSlot) -> Result<PendingSubscribe, ClientError> {
        let mut consumers = locked(&self.consumers);
        self.check_open()?;
        let subscription = slot.subscription(consumer);
        // Registered before the request goes out: deliveries may follow the `Ok` at once.
        consumers.insert(consumer, slot);
        let (waiter, reply) = oneshot::channel();
        let request = locked(&self.requests).register(waiter);
        let mut bytes = BytesMut::new();
        let frame = Frame::Subscribe { request, consumer, queue: subscription.queue, prefetch: subscription.prefetch };
        codec::encode(&frame, &mut bytes);
        let mut outbox = locked(&self.outbox);
        let session = outbox.session();
        match outbox.push_encoded(bytes.freeze()) {
            Ok(()) => {
                if outbox.take_writer_wake() {
                    self.writer_wake.notify_one();
                }
            }
            Err(_closed) => {
                let cause = match outbox.state() {
                    OutboxState::Suspended => ClientError::Reconnecting { cause: outbox.suspended_cause().to_string() },
                    _ => {
                        consumers.remove(consumer);
                        self.closed_error()
                    }
                };
                drop(outbox);
                // The id is ours and registered just above.
                let _ = locked(&self.requests).complete(request, Err(cause));
            }
        }
        Ok(PendingSubscribe { reply, session })
    }

    /// Queues a settle frame of socket session `session`; drops it (counted) when that session
    /// is over, since its tags would name other deliveries on the new one.
    ///
    /// # Errors
    /// The close cause when closed.
    pub(crate) fn send_in_session(&self, frame: &Frame, session: u64) -> Result<(), ClientError> {
        let mut bytes = BytesMut::new();
        codec::encode(frame, &mut bytes);
        let wake = {
            let mut outbox = locked(&self.outbox);
            match outbox.push_in_session(bytes.freeze(), session) {
                Ok(SessionPush::Queued) => outbox.take_writer_wake(),
                Ok(SessionPush::Stale) => {
                    self.settlements_stale.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Err(_closed) => {
                    drop(outbox);
                    return Err(self.closed_error());
                }
            }
        };
        if wake {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Ends the connection with `cause` (the first cause wins) and completes every waiter.
    pub(crate) fn close(&self, cause: ClientError) {
        if self.closed.set(cause.clone()).is_err() {
            return;
        }
        let graceful = matches!(cause, ClientError::Closed);
        if graceful {
            tracing::debug!("ringmq connection closing");
        } else {
            tracing::debug!(%cause, "ringmq connection failed");
        }
        locked(&self.outbox).close(if graceful { OutboxState::Draining } else { OutboxState::Stopped });
        self.writer_wake.notify_one();
        locked(&self.requests).fail_all(&cause);
        let slots = locked(&self.consumers).take_all();
        for slot in slots {
            slot.tell(ConsumerEvent::Closed(cause.clone()));
        }
        self.confirm_wake.notify_waiters();
        self.closing.notify_one();
    }

    /// The cause the connection ended with (`Closed` if it has not ended: only asked after a
    /// refusal that implies it has).
    pub(crate) fn closed_error(&self) -> ClientError {
        self.closed.get().cloned().unwrap_or(ClientError::Closed)
    }

    /// `Err(cause)` once the connection has ended.
    pub(crate) fn check_open(&self) -> Result<(), ClientError> {
        match self.closed.get() {
            Some(cause) => Err(cause.clone()),
            None => Ok(()),
        }
    }

    /// A fresh subscription id.
    pub(crate) fn next_consumer_id(&self) -> ConsumerId {
        ConsumerId(self.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    /// Encodes `frame` and queues it behind everything queued before.
    ///
    /// # Errors
    /// `FrameTooLarge` when it exceeds `frame_bytes_max`; the close cause when closed.
    pub(crate) fn send_frame(&self, what: &'static str, frame: &Frame) -> Result<(), ClientError> {
        let mut bytes = BytesMut::new();
        codec::encode(frame, &mut bytes);
        if bytes.len() > self.options.frame_bytes_max as usize {
            return Err(ClientError::FrameTooLarge {
                what,
                encoded_bytes: bytes.len(),
                frame_bytes_max: self.options.frame_bytes_max,
            });
        }
        let wake = {
            let mut outbox = locked(&self.outbox);
            if outbox.push_encoded(bytes.freeze()).is_err() {
                if outbox.state() == OutboxState::Suspended {
                    return Err(ClientError::Reconnecting { cause: outbox.suspended_cause().to_string() });
                }
                drop(outbox);
                return Err(self.closed_error());
            }
            outbox.take_writer_wake()
        };
        if wake {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Sends the request `build(id)` makes and waits for its reply.
    ///
    /// # Errors
    /// `Failed` with the broker's code and text; the close cause when the connection ends first;
    /// `FrameTooLarge` when the request does not fit a frame.
    pub(crate) async fn request(
        &self,
        what: &'static str,
        build: impl FnOnce(RequestId) -> Frame,
    ) -> Result<Reply, ClientError> {
        let (waiter, reply) = oneshot::channel();
        let id = self.register_request(waiter)?;
        if let Err(err) = self.send_frame(what, &build(id)) {
            // The waiter must not linger; the request was never sent. The id is still ours.
            let _ = locked(&self.requests).complete(id, Err(err.clone()));
            return Err(err);
        }
        match reply.await {
            Ok(result) => result,
            // The table only drops a waiter by completing it; a dropped sender means the
            // connection state was torn down.
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Sends the request `build(id)` makes without waiting for the reply (used from `Drop`).
    pub(crate) fn request_detached(
        &self,
        what: &'static str,
        build: impl FnOnce(RequestId) -> Frame,
    ) -> Result<(), ClientError> {
        let (waiter, _reply) = oneshot::channel();
        let id = self.register_request(waiter)?;
        let result = self.send_frame(what, &build(id));
        if result.is_err() {
            // Never sent: remove the waiter. The id is ours, so it is known.
            let _ = locked(&self.requests).complete(id, Ok(Reply::Done));
        }
        result
    }

    fn register_request(&self, waiter: oneshot::Sender<ReplyResult>) -> Result<RequestId, ClientError> {
        let mut requests = locked(&self.requests);
        self.check_open()?;
        Ok(requests.register(waiter))
    }
}

/// Locks a mutex of the connection state.
///
/// # Panics
/// If a thread panicked while holding it: that was a failed assertion, and the state it guarded
/// cannot be trusted.
pub(crate) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("connection state lock poisoned by an earlier panic")
}
