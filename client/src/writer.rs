//! The writer task: drains the outbox into the socket.
//!
//! Each round takes every queued item under the outbox lock (a pointer swap), encodes publish
//! groups into frames of at most `publish_frame_bytes` (a message larger than that goes alone),
//! and writes with `write_all` whenever `WRITE_CHUNK_BYTES` have accumulated and at the end of the
//! round. While it writes, publishers fill the next round: that is the batching. When the outbox
//! is empty it marks itself idle and sleeps until a push wakes it (or the heartbeat interval
//! passes, when heartbeats are on). With heartbeats, a `Heartbeat` goes out once per interval
//! whether or not other frames do: the broker echoes it, and the reader counts on that echo to
//! tell a live broker from a stalled one.
//!
//! Invariants:
//! - Frames reach the socket in outbox order; a publish group's frames carry consecutive
//!   sequence numbers.
//! - A write error ends the socket session with that error (returned to the supervisor);
//!   nothing is retried here. A suspended outbox (the reader lost the socket) stops the writer.
//! - On a graceful close the writer sends everything queued before the close, then shuts the
//!   socket's write side down; on a failed one it stops at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ringmq_core::frame::{Frame, Message};
use ringmq_core::ids::Seq;
use ringmq_core::wire::{codec, message_bytes_len, PublishWriter};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;

use crate::error::ClientError;
use crate::limits::{PUBLISH_BATCH_MESSAGES_MAX, WRITE_CHUNK_BYTES};
use crate::outbox::{OutItem, OutboxState};
use crate::shared::{locked, Shared};

/// Runs until the socket session ends; returns the write error that ended it, if one did.
pub(crate) async fn run_writer(shared: Arc<Shared>, mut socket: OwnedWriteHalf) -> Option<ClientError> {
    let publish_frame_bytes = shared.options.publish_frame_bytes as usize;
    let heartbeat_interval = shared.options.heartbeat_interval;
    let mut heartbeat_last = Instant::now();
    let mut items: Vec<OutItem> = Vec::new();
    let mut emptied: Vec<Vec<Message>> = Vec::new();
    let mut buf = BytesMut::with_capacity(WRITE_CHUNK_BYTES + publish_frame_bytes);
    loop {
        let state = {
            let mut outbox = locked(&shared.outbox);
            for messages in emptied.drain(..) {
                outbox.recycle(messages);
            }
            let state = outbox.state();
            if state != OutboxState::Stopped && state != OutboxState::Suspended {
                if outbox.is_empty() {
                    outbox.set_writer_idle();
                } else {
                    outbox.take_items(&mut items);
                }
            }
            state
        };
        if state == OutboxState::Stopped || state == OutboxState::Suspended {
            return None;
        }
        let heartbeat_due = heartbeat_interval.is_some_and(|interval| heartbeat_last.elapsed() >= interval);
        if items.is_empty() && !heartbeat_due {
            if state == OutboxState::Draining {
                // Everything queued before the close is written; tell the broker we are done.
                // A failure here changes nothing: the connection is closing either way.
                let _ = socket.shutdown().await;
                return None;
            }
            let wait = heartbeat_interval.map(|interval| interval.saturating_sub(heartbeat_last.elapsed()));
            wait_for_items(&shared, wait).await;
            continue;
        }
        if heartbeat_due {
            codec::encode(&Frame::Heartbeat, &mut buf);
            heartbeat_last = Instant::now();
        }
        if let Err(err) = write_items(&mut socket, &mut items, &mut emptied, &mut buf, publish_frame_bytes).await {
            return Some(ClientError::lost("writing to the broker", &err));
        }
    }
}

/// Encodes a prefix of `messages` (at least one) as one `Publish` frame to `exchange` starting at
/// `first_seq`; returns how many it took. The frame stays within `frame_bytes_target` unless its
/// single message is larger, and within the batch limit.
pub(crate) fn encode_publish_frame(
    exchange: &str,
    first_seq: Seq,
    messages: &[Message],
    frame_bytes_target: usize,
    out: &mut BytesMut,
) -> usize {
    assert!(!messages.is_empty());
    let mut writer = PublishWriter::begin(out, exchange, first_seq);
    for message in messages {
        let full = writer.count() == PUBLISH_BATCH_MESSAGES_MAX
            || writer.bytes_len() + message_bytes_len(message) > frame_bytes_target;
        if full && writer.count() > 0 {
            break;
        }
        writer.push(message);
    }
    let count = writer.count() as usize;
    writer.finish();
    assert!(count >= 1);
    count
}

/// Sleeps until the outbox has items, or at most `wait` (the time left to the next heartbeat).
async fn wait_for_items(shared: &Shared, wait: Option<Duration>) {
    match wait {
        // The idle mark is left set: a push during the write that follows still wakes us.
        Some(wait) => drop(tokio::time::timeout(wait, shared.writer_wake.notified()).await),
        None => shared.writer_wake.notified().await,
    }
}

/// Encodes and writes every item, in order; returns emptied message vectors in `emptied`.
async fn write_items(
    socket: &mut OwnedWriteHalf,
    items: &mut Vec<OutItem>,
    emptied: &mut Vec<Vec<Message>>,
    buf: &mut BytesMut,
    publish_frame_bytes: usize,
) -> std::io::Result<()> {
    for item in items.drain(..) {
        match item {
            OutItem::Encoded(frame) => {
                buf.extend_from_slice(&frame);
                if buf.len() >= WRITE_CHUNK_BYTES {
                    write_buf(socket, buf).await?;
                }
            }
            OutItem::Publish { exchange, first_seq, messages } => {
                let mut done = 0;
                while done < messages.len() {
                    let seq = Seq(first_seq.0 + done as u64);
                    done += encode_publish_frame(&exchange, seq, &messages[done..], publish_frame_bytes, buf);
                    if buf.len() >= WRITE_CHUNK_BYTES {
                        write_buf(socket, buf).await?;
                    }
                }
                emptied.push(messages);
            }
        }
    }
    if !buf.is_empty() {
        write_buf(socket, buf).await?;
    }
    Ok(())
}

async fn write_buf(socket: &mut OwnedWriteHalf, buf: &mut BytesMut) -> std::io::Result<()> {
    socket.write_all(buf).await?;
    buf.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringmq_core::limits::FRAME_BYTES_MAX;

    fn decode_all(mut bytes: BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = codec::decode(&mut bytes, FRAME_BYTES_MAX).unwrap() {
            frames.push(frame);
        }
        assert!(bytes.is_empty());
        frames
    }

    fn publish_shape(frame: &Frame) -> (u64, usize) {
        match frame {
            Frame::Publish { first_seq, messages, .. } => (first_seq.0, messages.len()),
            other => panic!("expected publish, got {other:?}"),
        }
    }

    #[test]
    fn a_group_splits_into_frames_at_the_size_target_with_consecutive_seqs() {
        // Goal: 1 KiB messages fill 64 KiB frames, and every message is encoded once, in order.
        let message = Message { body: Bytes::from(vec![7u8; 1024]), ..Message::default() };
        let messages = vec![message; 200];
        let mut out = BytesMut::new();
        let mut done = 0;
        while done < messages.len() {
            done += encode_publish_frame("ex", Seq(1000 + done as u64), &messages[done..], 64 * 1024, &mut out);
        }
        let frames = decode_all(out);
        let shapes: Vec<(u64, usize)> = frames.iter().map(publish_shape).collect();
        // Each message takes 1024 + 12 bytes, so 63 fit beside the frame head.
        assert_eq!(shapes, vec![(1000, 63), (1063, 63), (1126, 63), (1189, 11)]);
        let total: usize = shapes.iter().map(|(_, count)| count).sum();
        assert_eq!(total, 200);
    }

    #[test]
    fn a_message_larger_than_the_target_goes_alone() {
        // Goal: the size target never refuses a message the frame bound allows.
        let small = Message { body: Bytes::from_static(b"s"), ..Message::default() };
        let big = Message { body: Bytes::from(vec![0u8; 100_000]), ..Message::default() };
        let messages = [small.clone(), big, small];
        let mut out = BytesMut::new();
        let mut done = 0;
        while done < messages.len() {
            done += encode_publish_frame("", Seq(done as u64), &messages[done..], 64 * 1024, &mut out);
        }
        let shapes: Vec<(u64, usize)> = decode_all(out).iter().map(publish_shape).collect();
        assert_eq!(shapes, vec![(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn tiny_messages_stop_at_the_batch_limit() {
        // Goal: no frame carries more messages than the broker's batch bound.
        let messages = vec![Message::default(); PUBLISH_BATCH_MESSAGES_MAX as usize + 1];
        let mut out = BytesMut::new();
        let taken = encode_publish_frame("", Seq(0), &messages, usize::MAX, &mut out);
        assert_eq!(taken, PUBLISH_BATCH_MESSAGES_MAX as usize);
        let frames = decode_all(out);
        assert_eq!(publish_shape(&frames[0]), (0, PUBLISH_BATCH_MESSAGES_MAX as usize));
    }
}
