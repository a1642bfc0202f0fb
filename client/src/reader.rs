//! The reader task: decodes the broker's frames and dispatches them.
//!
//! It reads into one `BytesMut`, decodes every complete frame with the zero-copy codec (message
//! fields are slices of the read buffer) and hands each to its waiter: replies to the request
//! table, `Deliver` frames to their subscription through the consumer registry (one channel send
//! per frame), `Confirm` ranges to the publish window and the confirm queue. Confirms of all the
//! frames decoded from one read are applied together, under one lock each.
//!
//! Invariants:
//! - Any frame the broker may not send, a `Deliver` whose first tag is not the subscription's
//!   next tag, or a confirm out of sequence order ends the connection with `Protocol`; an `Error`
//!   frame ends it with `BrokerClosed`; end of stream or a read error with `ConnectionLost`;
//!   with heartbeats, nothing received for twice `heartbeat_interval` with `Silent`. The cause is
//!   returned to the supervisor, which closes the connection or reconnects.
//! - After the connection started closing the reader keeps reading (so the broker's last frames
//!   and its end of stream are consumed and the close is clean) for at most `CLOSE_LINGER`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use ringmq_core::frame::{ConfirmRange, Frame};
use ringmq_core::wire::codec;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Instant;

use crate::consumer_registry::{ConsumerEvent, DeliverOutcome};
use crate::error::ClientError;
use crate::ha_status::HaStatus;
use crate::limits::{CLOSE_LINGER, READ_BUFFER_BYTES, READ_CHUNK_BYTES_MIN};
use crate::request_table::Reply;
use crate::shared::{locked, Shared};

/// Runs until the socket session ends and returns why; `buf` holds bytes already read after the
/// handshake, `addr` is the broker's address (for the silence error).
pub(crate) async fn run_reader(
    shared: Arc<Shared>,
    mut socket: OwnedReadHalf,
    mut buf: BytesMut,
    addr: String,
) -> ClientError {
    read_until_end(&shared, &mut socket, &mut buf, &addr).await
}

async fn read_until_end(shared: &Shared, socket: &mut OwnedReadHalf, buf: &mut BytesMut, addr: &str) -> ClientError {
    // With heartbeats the broker echoes ours at least once per interval; twice that in silence
    // means it is dead or stalled.
    let silence_max = shared.options.heartbeat_interval.map(|interval| interval * 2);
    let mut confirms: Vec<ConfirmRange> = Vec::new();
    let mut linger_until: Option<Instant> = None;
    loop {
        if let Err(cause) = handle_read(shared, buf, &mut confirms) {
            return cause;
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES_MIN {
            // Decoded frames share the old allocation, so this allocates anew; doubling keeps a
            // large partial frame from being copied many times.
            buf.reserve(READ_BUFFER_BYTES.max(buf.len()));
        }
        if linger_until.is_none() && shared.closed.get().is_some() {
            linger_until = Some(Instant::now() + CLOSE_LINGER);
        }
        let read = match linger_until {
            Some(deadline) => match tokio::time::timeout_at(deadline, socket.read_buf(buf)).await {
                Ok(read) => read,
                Err(_elapsed) => return ClientError::Closed,
            },
            None => {
                let silence = async {
                    match silence_max {
                        Some(max) => tokio::time::sleep(max).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    read = socket.read_buf(buf) => read,
                    _ = shared.closing.notified() => continue,
                    () = silence => {
                        let max = silence_max.expect("silence only fires with heartbeats");
                        return ClientError::Silent {
                            addr: addr.to_string(),
                            during: "the connection was open",
                            silent_ms: max.as_millis(),
                            heartbeat_ms: (max / 2).as_millis(),
                        };
                    }
                }
            }
        };
        match read {
            Ok(0) if buf.is_empty() => {
                return ClientError::ConnectionLost { reason: "the broker closed the connection".to_string() };
            }
            Ok(0) => {
                return ClientError::ConnectionLost {
                    reason: format!(
                        "the broker closed the connection in the middle of a frame ({} bytes buffered)",
                        buf.len()
                    ),
                };
            }
            Ok(_) => {}
            Err(err) => return ClientError::lost("reading from the broker", &err),
        }
    }
}

/// Handles what one read added to `buf`: decodes and dispatches every complete frame, then
/// applies the confirms among them together; a partial frame stays in `buf`. `confirms` is the
/// reader's scratch vector, empty between calls.
///
/// # Errors
/// The cause that ends the connection: a frame that does not decode or may not come, or a
/// confirm out of sequence order (confirms decoded before it still count).
pub(crate) fn handle_read(
    shared: &Shared,
    buf: &mut BytesMut,
    confirms: &mut Vec<ConfirmRange>,
) -> Result<(), ClientError> {
    let decoded = decode_and_dispatch(shared, buf, shared.options.frame_bytes_max, confirms);
    // Confirms decoded before an error still count.
    apply_confirms(shared, confirms)?;
    decoded
}

/// Decodes and dispatches every complete frame in `buf`; confirm ranges are collected into
/// `confirms` for the caller to apply.
fn decode_and_dispatch(
    shared: &Shared,
    buf: &mut BytesMut,
    frame_bytes_max: u32,
    confirms: &mut Vec<ConfirmRange>,
) -> Result<(), ClientError> {
    loop {
        let frame = match codec::decode(buf, frame_bytes_max) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(err) => return Err(ClientError::Protocol { reason: err.to_string() }),
        };
        dispatch(shared, frame, confirms)?;
    }
}

/// Handles one frame from the broker.
fn dispatch(shared: &Shared, frame: Frame, confirms: &mut Vec<ConfirmRange>) -> Result<(), ClientError> {
    match frame {
        Frame::Ok { request } => complete(shared, request, Ok(Reply::Done)),
        Frame::Failed { request, code, message } => {
            complete(shared, request, Err(ClientError::Failed { code, message }))
        }
        Frame::QueueListReply { request, queues } => complete(shared, request, Ok(Reply::Queues(queues))),
        Frame::ExchangeListReply { request, exchanges } => complete(shared, request, Ok(Reply::Exchanges(exchanges))),
        Frame::HaStatusReply { request, state, epoch, brokers_url, public_url, name, ready_set } => {
            let status = HaStatus { state, epoch, brokers_url, public_url, name, ready_set };
            complete(shared, request, Ok(Reply::HaStatus(status)))
        }
        Frame::Confirm { ranges } => confirms.extend(ranges),
        Frame::Deliver { consumer, first_tag, messages } => {
            let outcome = locked(&shared.consumers).handle_deliver(consumer, first_tag, messages);
            match outcome.map_err(|err| ClientError::Protocol { reason: err.to_string() })? {
                DeliverOutcome::Delivered | DeliverOutcome::ConsumerGone => {}
                DeliverOutcome::AfterCancel { count } => {
                    shared.deliveries_after_cancel.fetch_add(count as u64, Ordering::Relaxed);
                    tracing::debug!(consumer = consumer.0, count, "deliveries for a cancelled subscription");
                }
            }
        }
        Frame::ConsumerCancelled { consumer, reason } => {
            let slot = locked(&shared.consumers).remove(consumer);
            match slot {
                Some(slot) => slot.tell(ConsumerEvent::Cancelled { reason }),
                None => {
                    tracing::debug!(consumer = consumer.0, "broker cancelled a subscription already cancelled here")
                }
            }
        }
        Frame::Error { code, message } => return Err(ClientError::BrokerClosed { code, message }),
        Frame::Heartbeat => {}
        other => {
            return Err(ClientError::Protocol {
                reason: format!("a broker may send replies, confirms, deliveries and errors; got {}", other.name()),
            });
        }
    }
    Ok(())
}

/// Completes a request; an unknown id is counted, not fatal (its caller may have been a
/// detached cancel whose waiter was removed).
fn complete(shared: &Shared, request: ringmq_core::ids::RequestId, result: Result<Reply, ClientError>) {
    if locked(&shared.requests).complete(request, result).is_err() {
        shared.replies_unmatched.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(request = request.0, "reply for an unknown request id");
    }
}

/// Releases confirmed ranges from the publish window, then queues them for the publisher.
fn apply_confirms(shared: &Shared, confirms: &mut Vec<ConfirmRange>) -> Result<(), ClientError> {
    if confirms.is_empty() {
        return Ok(());
    }
    let mut refused = None;
    let mut accepted = 0;
    {
        let mut outbox = locked(&shared.outbox);
        for range in confirms.iter() {
            if let Err(err) = outbox.handle_confirm(range.first, range.last) {
                refused = Some(ClientError::Protocol { reason: err.to_string() });
                break;
            }
            accepted += 1;
        }
    }
    {
        let mut queue = locked(&shared.confirms);
        for range in confirms.drain(..).take(accepted) {
            queue.handle_range(range);
        }
    }
    shared.confirm_wake.notify_waiters();
    match refused {
        Some(cause) => Err(cause),
        None => Ok(()),
    }
}
