//! The reader's handling of the broker's bytes, for the fuzz targets (feature `fuzzing`): the
//! code the reader task runs on each read (`reader::handle_read`), over the state of a connection
//! with requests waiting, a subscription and publishes in flight, with no socket and no runtime.
//!
//! Not part of the client's API, and not a model of the reader: what the fuzzer feeds goes through
//! the same decode, dispatch and confirm code as the broker's bytes on a socket.
//!
//! Invariants: a `ReaderRig` stops taking bytes after the first error, as the reader task stops
//! reading; its `outcome` is everything a caller of the connection could observe.

use bytes::{Bytes, BytesMut};
use ringmq_core::frame::{ConfirmRange, Message};
use tokio::sync::{mpsc, oneshot};

use crate::confirm_queue::ConfirmSummary;
use crate::consumer_registry::{ConsumerEvent, ConsumerSlot};
use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::outbox::PublishPush;
use crate::reader::handle_read;
use crate::request_table::ReplyResult;
use crate::shared::{locked, Shared};

/// A connection's state in front of the reader: `REQUESTS_WAITING` requests registered (ids from
/// 0), one subscription (consumer 0, registered with its own request), and
/// `PUBLISHES_IN_FLIGHT` publishes (seqs from 0) awaiting their confirms.
#[derive(Debug)]
pub struct ReaderRig {
    /// The state the reader task shares with the caller's handles.
    shared: Shared,
    /// Bytes received and not yet decoded (a partial frame).
    buf: BytesMut,
    /// The reader's scratch vector of confirm ranges.
    confirms: Vec<ConfirmRange>,
    /// The subscription's end of its event channel.
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    /// The waiting requests' ends, the subscription's first.
    replies: Vec<oneshot::Receiver<ReplyResult>>,
    /// The error that ended the connection, once one did.
    ended: Option<ClientError>,
}

/// What the broker's bytes did, as far as a caller of the connection could observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderOutcome {
    /// The error that ends the connection, as text, if any.
    pub ended: Option<String>,
    /// Each request's reply, as text, in registration order; `None` while it waits.
    pub replies: Vec<Option<String>>,
    /// The subscription's events, as text, in order.
    pub events: Vec<String>,
    /// The confirms the publisher would see.
    pub confirms: ConfirmSummary,
    /// Publishes still awaiting their confirm.
    pub inflight: u64,
    /// Replies whose request id no waiter had.
    pub replies_unmatched: u64,
    /// Deliveries for a subscription no longer registered.
    pub deliveries_after_cancel: u64,
    /// Bytes of a partial frame left in the buffer.
    pub buffered: usize,
}

impl ReaderRig {
    /// A fresh state; with `reconnect`, publishes are retained until confirmed (the failover
    /// outbox), else only until sent.
    ///
    /// # Panics
    /// If the state cannot be set up (a bug of this module).
    pub fn new(reconnect: bool) -> ReaderRig {
        let options = ConnectOptions { reconnect, ..ConnectOptions::default() };
        options.validate().expect("default options are valid");
        let shared = Shared::new(options, "broker".to_string());
        let (sender, events) = mpsc::unbounded_channel();
        let consumer = shared.next_consumer_id();
        let subscribed = shared
            .subscribe(consumer, ConsumerSlot::new(sender, "queue".to_string(), 16))
            .expect("a new connection is open");
        let mut replies = vec![subscribed.reply];
        for _ in 1..REQUESTS_WAITING {
            let (waiter, reply) = oneshot::channel();
            locked(&shared.requests).register(waiter);
            replies.push(reply);
        }
        for index in 0..PUBLISHES_IN_FLIGHT {
            let message = Message { body: Bytes::from(index.to_string()), ..Message::default() };
            let pushed = locked(&shared.outbox).push_publish("exchange", message);
            assert!(matches!(pushed, Ok(Ok(PublishPush::Queued(_)))), "publish {index}: {pushed:?}");
        }
        ReaderRig { shared, buf: BytesMut::new(), confirms: Vec::new(), events, replies, ended: None }
    }

    /// One read brought `bytes`: handles them as the reader task does. After an error the
    /// connection has ended, and further bytes are ignored.
    ///
    /// # Errors
    /// The error that ends the connection (the same one on every later call).
    pub fn handle_read(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if let Some(cause) = &self.ended {
            return Err(cause.clone());
        }
        self.buf.extend_from_slice(bytes);
        let handled = handle_read(&self.shared, &mut self.buf, &mut self.confirms);
        assert!(self.confirms.is_empty(), "confirms left for the next read");
        if let Err(cause) = &handled {
            self.ended = Some(cause.clone());
        }
        handled
    }

    /// Everything observable, taking the replies and events received so far.
    pub fn outcome(mut self) -> ReaderOutcome {
        let replies = self.replies.iter_mut().map(|reply| reply.try_recv().ok().map(|r| format!("{r:?}"))).collect();
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(format!("{event:?}"));
        }
        let confirms = locked(&self.shared.confirms).take_summary();
        let inflight = locked(&self.shared.outbox).window().inflight();
        let counted = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        ReaderOutcome {
            ended: self.ended.map(|cause| cause.to_string()),
            replies,
            events,
            confirms,
            inflight,
            replies_unmatched: counted(&self.shared.replies_unmatched),
            deliveries_after_cancel: counted(&self.shared.deliveries_after_cancel),
            buffered: self.buf.len(),
        }
    }
}

/// Requests waiting for a reply, the subscription's included.
pub const REQUESTS_WAITING: usize = 4;
/// Publishes awaiting their confirm.
pub const PUBLISHES_IN_FLIGHT: u64 = 8;
