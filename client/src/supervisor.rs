//! The supervisor task: dials, runs one socket session after another, and decides what a lost
//! socket means.
//!
//! Owns the dialling (TCP connect, preamble, `Hello`, bounded in time), the reader and writer
//! tasks of each socket session, and the `Failover` state. `Connection::connect` calls
//! `dial_any` for the first socket and spawns `supervise` with it.
//!
//! Call contract: `supervise` runs until the connection is closed (by the caller, by a cause that
//! does not reconnect, or by reconnecting giving up); `Connection::close` awaits it.
//!
//! Invariants:
//! - Every dial is bounded: by `connect_timeout`, by twice `heartbeat_interval` when heartbeats
//!   are on (a stopped broker accepts TCP but never says `Hello`), and by the reconnect deadline.
//! - Without `reconnect`, the first cause that ends a socket session closes the connection:
//!   every waiter gets it. With `reconnect`, a lost socket (`ConnectionLost`, `Silent`, a broker
//!   `Error` of code `NotPrimary` or `Internal`) suspends the connection, then every address is
//!   tried in turn (`failover.rs`) until one accepts as primary; a protocol violation or any other
//!   broker `Error` still closes it (reconnecting would only repeat it).
//! - A new session re-sends subscriptions, then unconfirmed publishes, before anything else
//!   (`Shared::resume`); a subscription the new primary refuses ends with the broker's reason.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ringmq_core::frame::{ErrorCode, Frame, Preamble, PREAMBLE_FLAG_ADMIN, PROTOCOL_VERSION};
use ringmq_core::wire::codec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::broker_list::learned_from_public_url;
use crate::consumer_registry::ConsumerEvent;
use crate::error::ClientError;
use crate::failover::{Failover, Step};
use crate::limits::READ_BUFFER_BYTES;
use crate::options::ConnectOptions;
use crate::reader::run_reader;
use crate::request_table::Reply;
use crate::shared::{locked, Resubscription, Shared};
use crate::writer::run_writer;

/// A socket that completed the handshake.
#[derive(Debug)]
pub(crate) struct Dialled {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// Bytes read after `Hello`.
    pub(crate) buf: BytesMut,
    /// The broker's name and version from `Hello`.
    pub(crate) broker: String,
    /// The address dialled, `host:port`.
    pub(crate) addr: String,
}

/// Dials the addresses of `failover` until one accepts as primary. Without `reconnect`, one pass:
/// the last failure is returned. With it, passes with back-off until `reconnect_timeout`. With
/// `shared`, stops when the connection is closed meanwhile.
///
/// # Errors
/// The last dial's error (one pass), `ReconnectFailed`, or the close cause.
pub(crate) async fn dial_any(
    failover: &mut Failover,
    options: &ConnectOptions,
    shared: Option<&Shared>,
) -> Result<Dialled, ClientError> {
    failover.begin(std::time::Instant::now());
    let mut last: Option<ClientError> = None;
    loop {
        if let Some(cause) = shared.and_then(|shared| shared.closed.get()) {
            return Err(cause.clone());
        }
        let now = std::time::Instant::now();
        match failover.next_step(now) {
            Step::Dial(addr) => {
                let attempt = dial(&addr, options, failover.deadline());
                let result = match shared {
                    Some(shared) => tokio::select! {
                        result = attempt => result,
                        _ = shared.closing.notified() => continue,
                    },
                    None => attempt.await,
                };
                match result {
                    Ok(dialled) => {
                        failover.handle_connected(&addr);
                        return Ok(dialled);
                    }
                    Err(error) => {
                        tracing::debug!(%addr, %error, "ringmq dial failed");
                        match &error {
                            ClientError::Refused { code: ErrorCode::NotPrimary, message } => {
                                failover.handle_not_primary(&error, message);
                            }
                            _ => failover.handle_failed(&error),
                        }
                        last = Some(error);
                    }
                }
            }
            Step::Wait(until) => {
                if !options.reconnect {
                    return Err(last.expect("a pass dials at least one address"));
                }
                let sleep = tokio::time::sleep_until(Instant::from_std(until));
                match shared {
                    Some(shared) => tokio::select! {
                        () = sleep => {}
                        _ = shared.closing.notified() => {}
                    },
                    None => sleep.await,
                }
            }
            Step::GiveUp => return Err(failover.give_up_error(now)),
        }
    }
}

/// Runs socket sessions until the connection is closed; `first` is the socket `connect` dialled.
pub(crate) async fn supervise(shared: Arc<Shared>, mut failover: Failover, first: Dialled) {
    let mut dialled = first;
    loop {
        let cause = run_session(&shared, dialled).await;
        if shared.closed.get().is_some() {
            return;
        }
        if !shared.options.reconnect || !reconnects_after(&cause) {
            shared.close(cause);
            return;
        }
        shared.suspend(&cause);
        failover.handle_failed(&cause);
        failover.learn(std::mem::take(&mut *locked(&shared.learned)));
        dialled = match dial_any(&mut failover, &shared.options, Some(&shared)).await {
            Ok(dialled) => dialled,
            Err(error) => {
                shared.close(error);
                return;
            }
        };
        tracing::debug!(addr = %dialled.addr, broker = %dialled.broker, "ringmq connection re-established");
        let Some(resubscriptions) = shared.resume(dialled.addr.clone()) else { return };
        for resubscription in resubscriptions {
            tokio::spawn(await_resubscription(Arc::clone(&shared), resubscription));
        }
    }
}

/// Runs one socket session: its reader and writer, until one of them ends it. Returns the cause.
async fn run_session(shared: &Arc<Shared>, dialled: Dialled) -> ClientError {
    let (read_half, write_half) = dialled.stream.into_split();
    let mut writer = tokio::spawn(run_writer(Arc::clone(shared), write_half));
    let mut reader = tokio::spawn(run_reader(Arc::clone(shared), read_half, dialled.buf, dialled.addr));
    if shared.options.reconnect {
        tokio::spawn(learn_public_url(Arc::clone(shared)));
    }
    let panicked = |what: &str| ClientError::Protocol { reason: format!("the client's {what} task panicked") };
    tokio::select! {
        read = &mut reader => {
            let cause = read.unwrap_or_else(|_| panicked("reader"));
            if shared.closed.get().is_some() {
                // Closing: the writer finishes what was queued (or stops) on its own.
                let _ = writer.await;
            } else {
                writer.abort();
            }
            cause
        }
        written = &mut writer => match written {
            Ok(Some(cause)) => {
                reader.abort();
                cause
            }
            // The writer finished a graceful close (or stopped): the reader ends after its linger.
            Ok(None) => reader.await.unwrap_or_else(|_| panicked("reader")),
            Err(_) => {
                reader.abort();
                panicked("writer")
            }
        },
    }
}

/// Whether a socket session ending with `cause` is worth a reconnect.
fn reconnects_after(cause: &ClientError) -> bool {
    match cause {
        ClientError::ConnectionLost { .. } | ClientError::Silent { .. } => true,
        ClientError::BrokerClosed { code, .. } => matches!(code, ErrorCode::NotPrimary | ErrorCode::Internal),
        _ => false,
    }
}

/// Waits for the new primary's answer to a re-sent `Subscribe`; a refusal ends the subscription
/// with the broker's reason (a loss meanwhile is retried by the next session).
async fn await_resubscription(shared: Arc<Shared>, resubscription: Resubscription) {
    let reason = match resubscription.reply.await {
        Ok(Ok(Reply::Done)) | Ok(Err(ClientError::Reconnecting { .. })) | Err(_) => return,
        Ok(Ok(other)) => other.unexpected("subscribe").to_string(),
        Ok(Err(error)) => format!("subscribing again after a reconnect failed: {error}"),
    };
    let slot = locked(&shared.consumers).remove(resubscription.consumer);
    if let Some(slot) = slot {
        slot.tell(ConsumerEvent::Cancelled { reason });
    }
}

/// Asks the broker for its `ha-public-url` and keeps its addresses for the next reconnect.
async fn learn_public_url(shared: Arc<Shared>) {
    if let Ok(Reply::HaStatus(status)) = shared.request("ha status", |request| Frame::HaStatus { request }).await {
        let learned = learned_from_public_url(&status.public_url);
        if !learned.is_empty() {
            locked(&shared.learned).extend(learned);
        }
    }
}

/// TCP connect, preamble, `Hello` to `addr`, bounded by the handshake timeout and `deadline`.
async fn dial(
    addr: &str,
    options: &ConnectOptions,
    deadline: Option<std::time::Instant>,
) -> Result<Dialled, ClientError> {
    let mut timeout = options.handshake_timeout();
    if let Some(deadline) = deadline {
        timeout =
            timeout.min(deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1)));
    }
    match tokio::time::timeout(timeout, handshake(addr, options)).await {
        Ok(result) => result,
        Err(_elapsed) => match options.heartbeat_interval {
            Some(interval) if timeout == interval * 2 => Err(ClientError::Silent {
                addr: addr.to_string(),
                during: "the handshake",
                silent_ms: timeout.as_millis(),
                heartbeat_ms: interval.as_millis(),
            }),
            _ => Err(ClientError::ConnectTimeout { addr: addr.to_string(), timeout_ms: timeout.as_millis() }),
        },
    }
}

/// TCP connect, preamble, `Hello`.
async fn handshake(addr: &str, options: &ConnectOptions) -> Result<Dialled, ClientError> {
    let connect_error = |err: std::io::Error| ClientError::Connect { addr: addr.to_string(), source: Arc::new(err) };
    let mut stream = TcpStream::connect(addr).await.map_err(connect_error)?;
    // Frames are batched by the writer already; Nagle would only add latency.
    stream.set_nodelay(true).map_err(connect_error)?;
    let mut preamble = BytesMut::new();
    let flags = if options.admin { PREAMBLE_FLAG_ADMIN } else { 0 };
    codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags }, &mut preamble);
    stream.write_all(&preamble).await.map_err(|err| ClientError::lost("sending the preamble", &err))?;
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let frame = loop {
        match codec::decode(&mut buf, options.frame_bytes_max) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(err) => return Err(ClientError::Protocol { reason: format!("handshake: {err}") }),
        }
        let read = stream.read_buf(&mut buf).await.map_err(|err| ClientError::lost("waiting for Hello", &err))?;
        if read == 0 {
            return Err(ClientError::ConnectionLost {
                reason: "the broker closed the connection before sending Hello".to_string(),
            });
        }
    };
    match frame {
        Frame::Hello { version, broker } if version == PROTOCOL_VERSION => {
            Ok(Dialled { stream, buf, broker, addr: addr.to_string() })
        }
        Frame::Hello { version, .. } => Err(ClientError::Protocol {
            reason: format!("handshake: broker must speak protocol version {PROTOCOL_VERSION}; it speaks {version}"),
        }),
        Frame::Error { code, message } => Err(ClientError::Refused { code, message }),
        other => Err(ClientError::Protocol { reason: format!("handshake: expected Hello or Error; got {other:?}") }),
    }
}
