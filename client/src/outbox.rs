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

use bytes::{Bytes, BytesMut};
use ringmq_core::codec::{self, message_bytes_len};
use ringmq_core::frame::{Frame, Message};
use ringmq_core::ids::Seq;

use crate::argument_check::{check_message, check_name};
use crate::error::ClientError;
use crate::limits::SPARE_MESSAGE_VECS_MAX;
use crate::publish_window::PublishWindow;

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
}

impl Outbox {
    /// An open, empty outbox.
    pub(crate) fn new(publish_window: u64, frame_bytes_max: u32) -> Outbox {
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
        message: Message,
    ) -> Result<Result<PublishPush, OutboxClosed>, ClientError> {
        if self.state != OutboxState::Open {
            return Ok(Err(OutboxClosed));
        }
        let same_group = matches!(self.items.last(), Some(OutItem::Publish { exchange: tail, .. }) if tail == exchange);
        if !same_group {
            check_name("exchange name", exchange)?;
        }
        check_message(&message)?;
        let encoded_bytes = self.publish_head_bytes + exchange.len() + message_bytes_len(&message);
        if encoded_bytes > self.frame_bytes_max as usize {
            return Err(ClientError::MessageTooLarge { encoded_bytes, frame_bytes_max: self.frame_bytes_max });
        }
        let Some(seq) = self.window.try_reserve() else {
            return Ok(Ok(PublishPush::WindowFull(message)));
        };
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

    /// The publish window, for confirms.
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
}
