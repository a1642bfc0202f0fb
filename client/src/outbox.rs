//! The outbox: everything the connection has to send, in order, waiting for the writer task.
//!
//! This is where natural batching happens. `Publisher::publish` appends its message to the
//! publish group at the tail (same exchange: no new group), under a short `std::sync::Mutex`, and
//! wakes the writer only if the writer was idle. The writer takes every item at once, encodes
//! them into as few frames as the size target allows, and writes them with one `write_all`. While
//! that write is in progress, the next publishes pile up into the next group: the busier the
//! socket, the larger the frames, with no timer and no per-message channel send or syscall.
//!
//! Control frames (requests, settlements) are encoded by the caller and queued as bytes, behind
//! the publishes queued before them, so the broker sees every frame in the order it was queued.
//!
//! Invariants:
//! - Items leave in the order they were pushed; within a publish group, messages have consecutive
//!   sequence numbers starting at its `first_seq`, and groups follow each other without gaps.
//! - Every queued publish holds a reservation in `window`, so the outbox never holds more
//!   messages than the publish window.
//! - Nothing is pushed after the outbox stopped accepting (`Draining` or `Stopped`).
//! - With `Retention::UntilConfirmed` (the connection reconnects), every publish stays in `retained` until its
//!   confirm, in sequence order: `retained` holds exactly the seqs `confirmed_next..next` of the
//!   window. While `Suspended` (the socket was lost, a reconnect is under way) publishes are
//!   accepted into `retained` only and encoded frames are refused; `resume` starts a new session
//!   whose items are the given frames followed by every retained publish, in order.
//! - With a producer id, every publish carries the header `x-ringmq-dedup` = `<id>/<seq>`.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use ringmq_core::frame::{Frame, Header, Message};
use ringmq_core::ids::Seq;
use ringmq_core::wire::{codec, message_bytes_len};

use crate::argument_check::{check_message, check_name};
use crate::error::ClientError;
use crate::limits::SPARE_MESSAGE_VECS_MAX;
use crate::publish_window::{ConfirmRangeError, PublishWindow};

/// The header that carries `<producer-id>/<seq>` when `ConnectOptions::producer_id` is set.
pub const DEDUP_HEADER: &str = "x-ringmq-dedup";

/// One thing to send.
#[derive(Debug)]
pub(crate) enum OutItem {
    /// Consecutive publishes to one exchange; the writer splits them into frames.
    Publish {
        /// Exchange name.
        exchange: String,
        /// Sequence number of the first message.
        first_seq: Seq,
        /// The messages, in sequence order.
        messages: Vec<Message>,
    },
    /// A complete frame, already encoded.
    Encoded(Bytes),
}

/// Whether the outbox accepts items and whether the writer should keep writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxState {
    /// Accepting items.
    Open,
    /// The socket was lost and a reconnect is under way: publishes are kept for the next
    /// session, encoded frames are refused, the writer of the lost session stops.
    Suspended,
    /// Closing gracefully: no new items; the writer sends what is queued, then shuts down.
    Draining,
    /// Failed: nothing more is sent.
    Stopped,
}

/// What `push_publish` did.
#[derive(Debug)]
pub(crate) enum PublishPush {
    /// Queued with this sequence number.
    Queued(Seq),
    /// The window is full; the message is handed back for a later try.
    WindowFull(Message),
}

/// How long the outbox keeps a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retention {
    /// Until the writer took it: the connection does not reconnect, so nothing is re-sent.
    UntilSent,
    /// Until its confirm, for re-sending on the next socket session after a reconnect.
    UntilConfirmed,
}

/// What `push_in_session` did with a frame of a socket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionPush {
    /// Its session is the current one: queued.
    Queued,
    /// Its session is over: dropped, since its tags would name other deliveries now.
    Stale,
}

/// Why the outbox refused an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxClosed;

/// Items waiting for the writer, plus the publish window and the writer's wake state.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Items in send order.
    items: Vec<OutItem>,
    /// Published-but-unconfirmed accounting.
    window: PublishWindow,
    /// True while the writer waits for items: the next push must wake it.
    writer_idle: bool,
    /// Accepting, draining or stopped.
    state: OutboxState,
    /// Largest frame the connection may send, in bytes.
    frame_bytes_max: u32,
    /// Bytes of an empty publish frame to the default exchange (`""`); a named exchange adds its
    /// length.
    publish_head_bytes: usize,
    /// Message vectors the writer emptied, reused for new publish groups.
    spare_messages: Vec<Vec<Message>>,
    /// How long publishes are kept.
    retention: Retention,
    /// Unconfirmed publishes in sequence order (only with `Retention::UntilConfirmed`).
    retained: VecDeque<RetainedRun>,
    /// The id put in every publish's `x-ringmq-dedup` header.
    producer_id: Option<String>,
    /// The socket session: 0 for the first, +1 per `resume`.
    session: u64,
    /// Why the outbox is `Suspended`.
    suspended_cause: String,
}

/// Consecutive unconfirmed publishes to one exchange.
#[derive(Debug)]
struct RetainedRun {
    /// Exchange name.
    exchange: String,
    /// Sequence number of the first message.
    first_seq: Seq,
    /// The messages, in sequence order.
    messages: VecDeque<Message>,
}

impl Outbox {
    /// An open, empty outbox, without retention or producer id.
    #[cfg(test)]
    pub(crate) fn new(publish_window: u64, frame_bytes_max: u32) -> Outbox {
        Outbox::with_failover(publish_window, frame_bytes_max, Retention::UntilSent, None)
    }

    /// An open, empty outbox; `retention` says whether unconfirmed publishes are kept for
    /// re-sending, `producer_id`
    /// stamps every publish with the dedup header.
    pub(crate) fn with_failover(
        publish_window: u64,
        frame_bytes_max: u32,
        retention: Retention,
        producer_id: Option<String>,
    ) -> Outbox {
        let mut head = BytesMut::new();
        codec::encode(&Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: Vec::new() }, &mut head);
        Outbox {
            items: Vec::new(),
            window: PublishWindow::new(publish_window),
            writer_idle: false,
            state: OutboxState::Open,
            frame_bytes_max,
            publish_head_bytes: head.len(),
            spare_messages: Vec::new(),
            retention,
            retained: VecDeque::new(),
            producer_id,
            session: 0,
            suspended_cause: String::new(),
        }
    }

    /// Queues one publish, or hands the message back when the window is full.
    ///
    /// # Errors
    /// `InvalidArgument` for an exchange name or message field past its limit, `MessageTooLarge`
    /// when the message alone does not fit a frame. `Ok(Err(OutboxClosed))` when closed.
    pub(crate) fn push_publish(
        &mut self,
        exchange: &str,
        mut message: Message,
    ) -> Result<Result<PublishPush, OutboxClosed>, ClientError> {
        if !matches!(self.state, OutboxState::Open | OutboxState::Suspended) {
            return Ok(Err(OutboxClosed));
        }
        let same_group = self.state == OutboxState::Open
            && matches!(self.items.last(), Some(OutItem::Publish { exchange: tail, .. }) if tail == exchange);
        if !same_group {
            check_name("exchange name", exchange)?;
        }
        let stamped = match &self.producer_id {
            Some(id) => {
                let value = format!("{id}/{}", self.window.next().0);
                message.headers.push(Header { name: Bytes::from_static(DEDUP_HEADER.as_bytes()), value: value.into() });
                true
            }
            None => false,
        };
        check_message(&message)?;
        let encoded_bytes = self.publish_head_bytes + exchange.len() + message_bytes_len(&message);
        if encoded_bytes > self.frame_bytes_max as usize {
            return Err(ClientError::MessageTooLarge { encoded_bytes, frame_bytes_max: self.frame_bytes_max });
        }
        let Some(seq) = self.window.try_reserve() else {
            if stamped {
                // The seq in the stamp may not be this message's when it comes back.
                message.headers.pop();
            }
            return Ok(Ok(PublishPush::WindowFull(message)));
        };
        if self.retention == Retention::UntilConfirmed {
            self.retain_publish(exchange, seq, message.clone());
        }
        if self.state == OutboxState::Suspended {
            return Ok(Ok(PublishPush::Queued(seq)));
        }
        match self.items.last_mut() {
            Some(OutItem::Publish { first_seq, messages, .. }) if same_group => {
                assert_eq!(first_seq.0 + messages.len() as u64, seq.0, "publish group has a gap");
                messages.push(message);
            }
            _ => {
                let mut messages = self.spare_messages.pop().unwrap_or_default();
                assert!(messages.is_empty());
                messages.push(message);
                self.items.push(OutItem::Publish { exchange: exchange.to_owned(), first_seq: seq, messages });
            }
        }
        Ok(Ok(PublishPush::Queued(seq)))
    }

    /// Keeps publish `seq` until its confirm.
    fn retain_publish(&mut self, exchange: &str, seq: Seq, message: Message) {
        match self.retained.back_mut() {
            Some(run) if run.exchange == exchange => {
                assert_eq!(run.first_seq.0 + run.messages.len() as u64, seq.0, "retained publishes have a gap");
                run.messages.push_back(message);
            }
            _ => self.retained.push_back(RetainedRun {
                exchange: exchange.to_owned(),
                first_seq: seq,
                messages: VecDeque::from([message]),
            }),
        }
    }

    /// Releases the confirmed range `first..=last` from the window and from the retained
    /// publishes; returns how many it released.
    ///
    /// # Errors
    /// As `PublishWindow::handle_confirm`; nothing is released then.
    pub(crate) fn handle_confirm(&mut self, first: Seq, last: Seq) -> Result<u64, ConfirmRangeError> {
        let released = self.window.handle_confirm(first, last)?;
        let mut left = released;
        while left > 0 && self.retention == Retention::UntilConfirmed {
            let run = self.retained.front_mut().expect("every unconfirmed publish is retained");
            assert_eq!(run.first_seq.0, last.0 + 1 - left, "retained publishes follow the window");
            let take = left.min(run.messages.len() as u64);
            run.messages.drain(..take as usize);
            run.first_seq.0 += take;
            left -= take;
            if run.messages.is_empty() {
                self.retained.pop_front();
            }
        }
        Ok(released)
    }

    /// The socket was lost (`cause`): drop what was queued for it and keep accepting publishes
    /// for the next session. Does nothing unless `Open`.
    pub(crate) fn suspend(&mut self, cause: String) {
        if self.state != OutboxState::Open {
            return;
        }
        self.state = OutboxState::Suspended;
        self.suspended_cause = cause;
        self.items.clear();
    }

    /// Why the outbox is suspended.
    pub(crate) fn suspended_cause(&self) -> &str {
        &self.suspended_cause
    }

    /// Starts the next session: `frames` first, then every retained publish in order. Returns the
    /// new session number, or `None` when the outbox was closed meanwhile (not `Suspended`).
    pub(crate) fn resume(&mut self, frames: Vec<Bytes>) -> Option<u64> {
        if self.state != OutboxState::Suspended {
            return None;
        }
        self.session += 1;
        self.state = OutboxState::Open;
        self.items.clear();
        self.writer_idle = false;
        self.items.extend(frames.into_iter().map(OutItem::Encoded));
        for run in &self.retained {
            self.items.push(OutItem::Publish {
                exchange: run.exchange.clone(),
                first_seq: run.first_seq,
                messages: run.messages.iter().cloned().collect(),
            });
        }
        Some(self.session)
    }

    /// The current socket session.
    pub(crate) fn session(&self) -> u64 {
        self.session
    }

    /// Queues an encoded frame that belongs to socket session `session` (a settlement: its tags
    /// are that session's); drops it, returning `SessionPush::Stale`, when that session is over.
    pub(crate) fn push_in_session(&mut self, frame: Bytes, session: u64) -> Result<SessionPush, OutboxClosed> {
        match self.state {
            OutboxState::Open if self.session == session => self.push_encoded(frame).map(|()| SessionPush::Queued),
            OutboxState::Open | OutboxState::Suspended => Ok(SessionPush::Stale),
            OutboxState::Draining | OutboxState::Stopped => Err(OutboxClosed),
        }
    }

    /// Queues an encoded frame.
    pub(crate) fn push_encoded(&mut self, frame: Bytes) -> Result<(), OutboxClosed> {
        if self.state != OutboxState::Open {
            return Err(OutboxClosed);
        }
        assert!(!frame.is_empty());
        self.items.push(OutItem::Encoded(frame));
        Ok(())
    }

    /// True when the writer was idle and must be notified; it counts as notified afterwards.
    pub(crate) fn take_writer_wake(&mut self) -> bool {
        std::mem::replace(&mut self.writer_idle, false)
    }

    /// Moves every queued item into `into` (which must be empty), in order.
    pub(crate) fn take_items(&mut self, into: &mut Vec<OutItem>) {
        assert!(into.is_empty());
        std::mem::swap(&mut self.items, into);
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The writer found nothing to do and is about to wait.
    pub(crate) fn set_writer_idle(&mut self) {
        self.writer_idle = true;
    }

    /// Gives emptied message vectors back for reuse (a few are kept).
    pub(crate) fn recycle(&mut self, mut messages: Vec<Message>) {
        messages.clear();
        if self.spare_messages.len() < SPARE_MESSAGE_VECS_MAX {
            self.spare_messages.push(messages);
        }
    }

    /// Accepting, draining or stopped.
    pub(crate) fn state(&self) -> OutboxState {
        self.state
    }

    /// Stops accepting items; `Draining` sends what is queued, `Stopped` drops it.
    ///
    /// # Panics
    /// If asked to become `Open` again.
    pub(crate) fn close(&mut self, state: OutboxState) {
        assert_ne!(state, OutboxState::Open, "a closed outbox never reopens");
        if self.state == OutboxState::Stopped {
            return;
        }
        self.state = state;
        if state == OutboxState::Stopped {
            self.items.clear();
        }
    }

    /// The publish window.
    pub(crate) fn window(&mut self) -> &mut PublishWindow {
        &mut self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(body: &'static [u8]) -> Message {
        Message { body: Bytes::from_static(body), ..Message::default() }
    }

    fn queued(push: Result<Result<PublishPush, OutboxClosed>, ClientError>) -> Seq {
        match push.unwrap().unwrap() {
            PublishPush::Queued(seq) => seq,
            PublishPush::WindowFull(_) => panic!("window full"),
        }
    }

    #[test]
    fn publishes_to_one_exchange_share_a_group_and_control_frames_keep_their_place() {
        // Goal: consecutive publishes coalesce, an exchange change or a control frame starts a
        // new item, and sequence numbers run across all of them.
        let mut outbox = Outbox::new(100, 1 << 20);
        assert_eq!(queued(outbox.push_publish("x", message(b"a"))), Seq(0));
        assert_eq!(queued(outbox.push_publish("x", message(b"b"))), Seq(1));
        outbox.push_encoded(Bytes::from_static(b"frame")).unwrap();
        assert_eq!(queued(outbox.push_publish("x", message(b"c"))), Seq(2));
        assert_eq!(queued(outbox.push_publish("y", message(b"d"))), Seq(3));
        let mut items = Vec::new();
        outbox.take_items(&mut items);
        assert!(outbox.is_empty());
        let shape: Vec<(String, u64, usize)> = items
            .iter()
            .map(|item| match item {
                OutItem::Publish { exchange, first_seq, messages } => (exchange.clone(), first_seq.0, messages.len()),
                OutItem::Encoded(_) => ("<frame>".to_string(), 0, 0),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("x".to_string(), 0, 2),
                ("<frame>".to_string(), 0, 0),
                ("x".to_string(), 2, 1),
                ("y".to_string(), 3, 1)
            ]
        );
    }

    #[test]
    fn a_full_window_hands_the_message_back() {
        // Goal: backpressure returns the message instead of queueing past the window.
        let mut outbox = Outbox::new(1, 1 << 20);
        queued(outbox.push_publish("", message(b"a")));
        match outbox.push_publish("", message(b"b")).unwrap().unwrap() {
            PublishPush::WindowFull(back) => assert_eq!(back.body, Bytes::from_static(b"b")),
            PublishPush::Queued(seq) => panic!("queued {seq:?} past the window"),
        }
        // A confirm releases room.
        outbox.window().handle_confirm(Seq(0), Seq(0)).unwrap();
        assert_eq!(queued(outbox.push_publish("", message(b"b"))), Seq(1));
    }

    #[test]
    fn a_message_larger_than_a_frame_is_refused_without_taking_a_seq() {
        // Goal: an oversize message is an error naming both sizes, and leaves no seq hole.
        let mut outbox = Outbox::new(10, 64 * 1024);
        let big = Message { body: Bytes::from(vec![0u8; 64 * 1024]), ..Message::default() };
        let err = outbox.push_publish("", big).unwrap_err();
        assert!(matches!(err, ClientError::MessageTooLarge { frame_bytes_max: 65536, .. }), "{err}");
        assert_eq!(queued(outbox.push_publish("", message(b"a"))), Seq(0));
    }

    #[test]
    fn a_closed_outbox_refuses_and_a_stopped_one_drops_its_items() {
        // Goal: nothing is queued after close; a failed connection sends nothing more.
        let mut outbox = Outbox::new(10, 1 << 20);
        queued(outbox.push_publish("", message(b"a")));
        outbox.close(OutboxState::Draining);
        assert!(outbox.push_publish("", message(b"b")).unwrap().is_err());
        assert!(outbox.push_encoded(Bytes::from_static(b"f")).is_err());
        // Draining keeps what was queued for the writer.
        assert!(!outbox.is_empty());
        outbox.close(OutboxState::Stopped);
        assert!(outbox.is_empty());
        // Stopped is final.
        outbox.close(OutboxState::Draining);
        assert_eq!(outbox.state(), OutboxState::Stopped);
    }

    #[test]
    fn retained_publishes_are_resent_in_order_after_resume_and_released_by_confirms() {
        // Goal: a reconnect re-sends exactly the unconfirmed publishes, in order, with their own
        // seqs and dedup stamps, after the frames of the new session; publishes made while
        // suspended join them.
        let mut outbox = Outbox::with_failover(10, 1 << 20, Retention::UntilConfirmed, Some("p1".into()));
        for body in [b"a", b"b", b"c"] {
            queued(outbox.push_publish("x", message(body)));
        }
        assert_eq!(outbox.handle_confirm(Seq(0), Seq(0)), Ok(1));
        outbox.suspend("lost".into());
        assert!(outbox.is_empty());
        assert!(outbox.push_encoded(Bytes::from_static(b"f")).is_err());
        assert_eq!(outbox.push_in_session(Bytes::from_static(b"s"), 0), Ok(SessionPush::Stale));
        assert_eq!(queued(outbox.push_publish("y", message(b"d"))), Seq(3));
        assert_eq!(outbox.resume(vec![Bytes::from_static(b"subscribe")]), Some(1));
        let mut items = Vec::new();
        outbox.take_items(&mut items);
        let shape: Vec<(String, u64, Vec<String>)> = items
            .iter()
            .map(|item| match item {
                OutItem::Publish { exchange, first_seq, messages } => (
                    exchange.clone(),
                    first_seq.0,
                    messages.iter().map(|m| String::from_utf8_lossy(&m.headers[0].value).into_owned()).collect(),
                ),
                OutItem::Encoded(_) => ("<frame>".to_string(), 0, Vec::new()),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("<frame>".to_string(), 0, vec![]),
                ("x".to_string(), 1, vec!["p1/1".to_string(), "p1/2".to_string()]),
                ("y".to_string(), 3, vec!["p1/3".to_string()]),
            ]
        );
        // Old-session settlements are dropped, new ones go.
        assert_eq!(outbox.push_in_session(Bytes::from_static(b"s"), 0), Ok(SessionPush::Stale));
        assert_eq!(outbox.push_in_session(Bytes::from_static(b"s"), 1), Ok(SessionPush::Queued));
        // Confirms release the retained ones across runs.
        assert_eq!(outbox.handle_confirm(Seq(1), Seq(3)), Ok(3));
        assert!(outbox.retained.is_empty());
    }
}
