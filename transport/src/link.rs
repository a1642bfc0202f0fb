//! Broker-to-broker links: the IO of a backup's link to its primary, and the heartbeats of both
//! ends. Every decision is made by the sans-IO machines of `ringmq-ha`: `BackupLink` says which
//! address to dial and when, `LinkHeartbeat` when to send a heartbeat and when the peer is dead.
//! This module only dials, reads, writes, sleeps until their deadlines and closes sockets.
//!
//! Every shard of a backup keeps its own link (`backup_link_task`) to the primary's shard of the
//! same number, which streams that shard's replicated queues. A link, from the backup: dial (at
//! most `2 x link-heartbeat-interval`), send the preamble with `PREAMBLE_FLAG_BACKUP`, wait (as
//! long) for `hello` or `error`; send `link-open` (this shard, the shard count, the highest epoch
//! seen), wait for `link-accepted`; then apply the primary's batches to the shard's queues in order
//! (`BackupStream` checks epochs and sequence numbers), confirm them cumulatively after each read,
//! and exchange heartbeats until one end hears nothing for twice the interval and shuts the socket
//! down. Shard 0 also takes the broker's HA transitions: catch-up when the primary accepts,
//! ready when it says `marked-ready`.
//!
//! Catch-up sends only the difference: `link-open` carries what the shard holds of its queues
//! (`Shard::replica_holdings`, positions as ranges), and the primary sends the messages it lacks,
//! drops those the primary no longer holds and deletes the queues the primary no longer has; the
//! shard keeps its messages. When the holdings exceed `HOLDINGS_QUEUES_MAX` queues or
//! `HOLDINGS_RANGES_MAX` ranges none are sent, and catch-up is a full resync: the shard drops the
//! replicated messages it held and the primary sends everything it holds.
//!
//! The link's progress goes to the log (`link: trying ADDR (N attempts)`, `link: connected to
//! ADDR`, `link: lost ADDR: ...`), with the link's totals.
//!
//! Invariants:
//! - A heartbeat task ends when its link closes (woken by `LinkTimer::close`), or closes the link
//!   itself when the peer went silent.
//! - At most one outgoing link per shard is open at a time, and none once the broker is not a
//!   backup (the pump closes it on promotion).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::os::fd::AsFd;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use ringmq_core::broker_state::{BrokerState, TransitionCause};
use ringmq_core::codec;
use ringmq_core::frame::{Frame, Preamble, PREAMBLE_FLAG_BACKUP, PROTOCOL_VERSION};
use ringmq_ha::backup_link::{BackupLink, LinkStatus};
use ringmq_ha::backup_stream::{BackupStream, IgnoreReason};
use ringmq_ha::limits::{BATCH_BYTES_MAX, HOLDINGS_QUEUES_MAX, HOLDINGS_RANGES_MAX, LINK_SILENT_INTERVALS_MAX};
use ringmq_ha::link_frame::{decode_link_frame, encode_link_frame, LinkFrame, LinkOpen};
use ringmq_ha::link_heartbeat::{HeartbeatAction, LinkHeartbeat};
use ringmq_ha::record::{encode_confirm, Batch};

use crate::link_server::frame_name;
use crate::shard_control::Control;
use crate::shard_loop::{pump, writer_task, ShardContext, WriteQueue};

/// Broker-to-broker link settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `link-heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `link-maintenance-interval`: time between two dials of the backup's link.
    pub maintenance_interval: Duration,
    /// The addresses of `ha-brokers-url` a backup dials, `host:port`, its own left out; empty
    /// when the broker is not in a cluster (no outgoing link).
    pub primary_addresses: Vec<String>,
    /// This broker's own address, `host:port`: its name to the primary (`link-open`).
    pub own_address: String,
    /// `ha-backup-timeout`: how long a newly promoted primary holds confirms for each backup that
    /// was ready under the previous primary, waiting for it to come back ready.
    pub backup_timeout: Duration,
}

/// One link's heartbeat clock, shared by its reader and its heartbeat task.
pub(crate) struct LinkTimer {
    /// The sans-IO clock.
    pub(crate) heartbeat: RefCell<LinkHeartbeat>,
    /// Set when the link closed; the heartbeat task then ends.
    closed: Cell<bool>,
    /// Set by the heartbeat task when it closed the link because the peer went silent.
    silent_for: Cell<Option<Duration>>,
    /// The heartbeat task, while it sleeps.
    waker: RefCell<Option<Waker>>,
}

impl LinkTimer {
    pub(crate) fn new(now: Instant, interval: Duration) -> LinkTimer {
        LinkTimer {
            heartbeat: RefCell::new(LinkHeartbeat::new(now, interval)),
            closed: Cell::new(false),
            silent_for: Cell::new(None),
            waker: RefCell::new(None),
        }
    }

    /// Set when the heartbeat task closed the link because the peer went silent: for how long.
    pub(crate) fn silent_for(&self) -> Option<Duration> {
        self.silent_for.get()
    }

    /// The link closed: wake the heartbeat task so it ends now, not at its next deadline.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Sends heartbeats on an idle link and closes it when the peer went silent, as `timer` decides.
pub(crate) async fn heartbeat_task(stream: Rc<TcpStream>, queue: Rc<WriteQueue>, timer: Rc<LinkTimer>, name: String) {
    loop {
        let deadline = timer.heartbeat.borrow().poll_timeout();
        let mut sleep = pin!(compio::runtime::time::sleep_until(deadline));
        poll_fn(|cx| {
            if timer.closed.get() {
                return Poll::Ready(());
            }
            *timer.waker.borrow_mut() = Some(cx.waker().clone());
            sleep.as_mut().poll(cx)
        })
        .await;
        if timer.closed.get() {
            return;
        }
        let action = timer.heartbeat.borrow_mut().handle_timeout(Instant::now());
        match action {
            None => {}
            Some(HeartbeatAction::SendHeartbeat) => {
                let mut buffer = BytesMut::new();
                codec::encode(&Frame::Heartbeat, &mut buffer);
                queue.push(buffer, false);
            }
            Some(HeartbeatAction::ClosePeerSilent { silent_for }) => {
                tracing::warn!(link = %name, ?silent_for, "link peer silent for 2x link-heartbeat-interval; closing");
                timer.silent_for.set(Some(silent_for));
                // Both directions: the link's reader is woken with end-of-stream and cleans up,
                // even though the silent peer will never send its own close.
                if let Err(error) = socket2::SockRef::from(&stream.as_fd()).shutdown(std::net::Shutdown::Both) {
                    tracing::debug!(%error, link = %name, "shutdown of a silent link failed");
                }
                return;
            }
        }
    }
}

/// A shard of a backup: keeps its link to the primary's same-numbered shard, trying each address
/// in turn, until the broker is no longer a backup.
pub(crate) async fn backup_link_task(context: Rc<ShardContext>) {
    run_backup_link(&context).await;
    context.link_task_running.set(false);
}

/// The loop of `backup_link_task`.
async fn run_backup_link(context: &Rc<ShardContext>) {
    let config = context.link.clone();
    let mut link = BackupLink::new(Instant::now(), config.primary_addresses.clone(), config.maintenance_interval);
    let mut replica = BackupStream::new(context.shard.borrow().ha().epoch());
    loop {
        if !context.shard.borrow().ha().state().is_backup() {
            link.handle_stop();
            tracing::info!("link: stopped: this broker is no longer a backup");
            return;
        }
        let now = Instant::now();
        let Some(address) = link.poll_connect(now).map(str::to_owned) else {
            if let Some(deadline) = link.poll_timeout() {
                compio::runtime::time::sleep_until(deadline).await;
            }
            continue;
        };
        if let LinkStatus::Trying { attempts, .. } = link.status() {
            if attempts.is_power_of_two() {
                tracing::info!("link: trying {address} ({attempts} attempts)");
            } else {
                tracing::debug!("link: trying {address} ({attempts} attempts)");
            }
        }
        let end = run_link(context, &address, &mut link, &mut replica).await;
        let now = Instant::now();
        let counters = link.counters();
        match end {
            LinkEnd::Refused { message } => {
                link.handle_refused(now);
                tracing::debug!(?counters, "link: {address} refused: {message}");
            }
            LinkEnd::Failed { reason } => {
                link.handle_closed(now);
                tracing::debug!(?counters, "link: {address} failed: {reason}");
            }
            LinkEnd::Lost { reason } => {
                link.handle_closed(now);
                tracing::warn!(?counters, replica = ?replica.counters(), "link: lost {address}: {reason}");
            }
        }
    }
}

/// How one dial ended.
enum LinkEnd {
    /// The peer answered `error` before accepting (another backup: `NotPrimary`).
    Refused {
        /// Its message.
        message: String,
    },
    /// Never connected: the dial, the preamble or the wait for `hello` failed.
    Failed {
        /// Why.
        reason: String,
    },
    /// Connected, then lost.
    Lost {
        /// Why.
        reason: String,
    },
}

/// Dials `address`, opens this shard's replication link and runs it until it ends. Calls
/// `link.handle_connected` when the primary accepts it.
async fn run_link(
    context: &Rc<ShardContext>,
    address: &str,
    link: &mut BackupLink,
    replica: &mut BackupStream,
) -> LinkEnd {
    // Nothing from the peer for as long as its heartbeats may take counts as dead, before hello
    // as after.
    let silent_max = context.link.heartbeat_interval * LINK_SILENT_INTERVALS_MAX;
    let stream = match compio::runtime::time::timeout(silent_max, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => Rc::new(stream),
        Ok(Err(error)) => return LinkEnd::Failed { reason: format!("connect: {error}") },
        Err(_) => return LinkEnd::Failed { reason: format!("connect: no answer within {silent_max:?}") },
    };
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY failed on a backup link");
    }
    let mut preamble = BytesMut::new();
    codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags: PREAMBLE_FLAG_BACKUP }, &mut preamble);
    let BufResult(written, _) = (&*stream).write_all(preamble).await;
    if let Err(error) = written {
        return LinkEnd::Failed { reason: format!("preamble: {error}") };
    }
    let queue = Rc::new(WriteQueue::default());
    compio::runtime::spawn(writer_task(stream.clone(), queue.clone())).detach();
    *context.outgoing_link.borrow_mut() = Some(stream.clone());
    let end = read_link(context, &stream, &queue, address, link, replica).await;
    context.outgoing_link.borrow_mut().take();
    // Ends the writer (which shuts our side down) and any heartbeat task.
    queue.push(BytesMut::new(), true);
    end
}

/// Where a link is in its handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Waiting for the primary's `hello`.
    Hello,
    /// `link-open` sent, waiting for `link-accepted`.
    Accepted,
    /// Replicating.
    Open,
}

/// Reads the link until it ends; see `run_link`.
async fn read_link(
    context: &Rc<ShardContext>,
    stream: &Rc<TcpStream>,
    queue: &Rc<WriteQueue>,
    address: &str,
    link: &mut BackupLink,
    replica: &mut BackupStream,
) -> LinkEnd {
    let interval = context.link.heartbeat_interval;
    let handshake_deadline = Instant::now() + interval * LINK_SILENT_INTERVALS_MAX;
    let mut buffer = BytesMut::with_capacity(LINK_READ_BUFFER_BYTES);
    let mut timer: Option<Rc<LinkTimer>> = None;
    let mut handshake = Handshake::Hello;
    // Whether the link-open carried this shard's holdings (else the catch-up is a full resync).
    let mut holdings_sent = false;
    let end = loop {
        buffer.reserve(LINK_READ_BUFFER_BYTES);
        let mut reader: &TcpStream = stream;
        let read = reader.append(buffer);
        let BufResult(result, returned) = if timer.is_some() {
            read.await
        } else {
            // Before the primary accepts there is no heartbeat task: the wait itself is bounded.
            // Losing the buffer to the cancelled read does not matter, the link is given up.
            match compio::runtime::time::timeout_at(handshake_deadline, read).await {
                Ok(read) => read,
                Err(_) => {
                    break LinkEnd::Failed { reason: "no link-accepted within 2x link-heartbeat-interval".into() }
                }
            }
        };
        buffer = returned;
        match result {
            Ok(0) => break ended(&timer, "closed by the peer".into()),
            Ok(_) => {}
            Err(error) => break ended(&timer, format!("read: {error}")),
        }
        let now = Instant::now();
        if let Some(timer) = &timer {
            timer.heartbeat.borrow_mut().handle_received(now);
        }
        let mut outcome = None;
        loop {
            let frame = match decode_link_frame(&mut buffer, BATCH_BYTES_MAX) {
                Ok(None) => break,
                Ok(Some(frame)) => frame,
                Err(error) => {
                    outcome = Some(ended(&timer, format!("undecodable frame: {error}")));
                    break;
                }
            };
            match (handshake, frame) {
                (Handshake::Hello, LinkFrame::Native(Frame::Hello { .. })) => {
                    holdings_sent = send_link_open(context, queue, replica);
                    handshake = Handshake::Accepted;
                }
                (Handshake::Accepted, LinkFrame::Accepted(accepted)) => {
                    link.handle_connected(now);
                    replica.handle_connected();
                    replica.handle_epoch_observed(accepted.epoch);
                    if context.shard.borrow().id().0 == 0 {
                        // A later promotion of this broker takes an epoch above the primary's.
                        context.shard.borrow_mut().observe_epoch(accepted.epoch);
                    }
                    begin_catch_up(context, holdings_sent);
                    tracing::info!(counters = ?link.counters(), epoch = %accepted.epoch, "link: connected to {address}");
                    let started = Rc::new(LinkTimer::new(now, interval));
                    let name = format!("to {address}");
                    compio::runtime::spawn(heartbeat_task(stream.clone(), queue.clone(), started.clone(), name))
                        .detach();
                    timer = Some(started);
                    handshake = Handshake::Open;
                }
                (Handshake::Open, LinkFrame::Batch(batch)) => {
                    if let Err(reason) = apply_batch(context, replica, batch) {
                        outcome = Some(ended(&timer, reason));
                        break;
                    }
                }
                (Handshake::Open, LinkFrame::MarkedReady) => {
                    transition(context, BrokerState::Ready, TransitionCause::MarkedReadyByPrimary);
                }
                (Handshake::Open, LinkFrame::Members(ready)) => {
                    // The primary's ready backups: expected by this broker if it is promoted.
                    for shard in 1..context.shard_count() {
                        context.controls.send(shard, Control::Members { ready: ready.clone() });
                    }
                    context.shard.borrow_mut().set_expected_backups(expected_count(context, &ready));
                    *context.ready_members.borrow_mut() = ready;
                }
                (_, LinkFrame::Native(Frame::Heartbeat)) if timer.is_some() => {}
                (_, LinkFrame::Native(Frame::Error { code, message })) => {
                    outcome = Some(match timer {
                        None => LinkEnd::Refused { message: format!("{code:?}: {message}") },
                        Some(_) => LinkEnd::Lost { reason: format!("error {code:?}: {message}") },
                    });
                    break;
                }
                (_, other) => {
                    outcome = Some(ended(&timer, format!("unexpected {} on a backup link", frame_name(&other))));
                    break;
                }
            }
        }
        if let Some(confirmed) = replica.poll_confirm() {
            let mut buffer = BytesMut::new();
            encode_confirm(confirmed, &mut buffer);
            if let Some(timer) = &timer {
                timer.heartbeat.borrow_mut().handle_sent(now);
            }
            queue.push(buffer, false);
        }
        pump(context);
        if let Some(outcome) = outcome {
            break outcome;
        }
    };
    if let Some(timer) = timer {
        timer.close();
    }
    end
}

/// Asks the primary for this shard's stream, with what the shard holds of its queues (nothing
/// changes them until the link is accepted: only this link feeds them). Returns whether the
/// holdings were sent (false: they exceed the bounds, and the catch-up is a full resync).
fn send_link_open(context: &ShardContext, queue: &WriteQueue, replica: &BackupStream) -> bool {
    let shard = context.shard.borrow();
    let holdings = shard.replica_holdings(HOLDINGS_QUEUES_MAX, HOLDINGS_RANGES_MAX);
    if holdings.is_none() {
        tracing::info!(
            "link: holdings exceed {HOLDINGS_QUEUES_MAX} queues or {HOLDINGS_RANGES_MAX} ranges: asking for a full resync"
        );
    }
    let sent = holdings.is_some();
    let open = LinkOpen {
        backup: context.link.own_address.clone(),
        shard: shard.id().0,
        shard_count: context.shard_count(),
        epoch_highest: replica.epoch_highest().max(shard.ha().epoch()),
        holdings,
    };
    let mut buffer = BytesMut::new();
    encode_link_frame(&LinkFrame::Open(open), &mut buffer);
    queue.push(buffer, false);
    sent
}

/// The primary accepted this shard's link. With holdings sent, the shard keeps its messages (the
/// primary sends the difference) and shard 0 only clears the replicated configuration its snapshot
/// re-creates; without, what this shard held of its queues is dropped, since the primary sends
/// everything it holds first (a full resync; see the module doc). Shard 0 moves the broker to
/// catch-up.
fn begin_catch_up(context: &ShardContext, holdings_sent: bool) {
    if holdings_sent {
        context.shard.borrow_mut().clear_replica_configuration();
    } else {
        let dropped = context.shard.borrow_mut().clear_replicas();
        if dropped > 0 {
            tracing::info!(dropped, "link: replicated messages dropped before the primary's resync");
        }
    }
    let state = context.shard.borrow().ha().state();
    match state {
        BrokerState::Joining => transition(context, BrokerState::CatchUp, TransitionCause::PrimaryContacted),
        BrokerState::Ready => transition(context, BrokerState::CatchUp, TransitionCause::ReconnectedBehindPrimary),
        _ => {}
    }
}

/// Applies one batch from the primary to the shard's queues. An `Err` ends the link: a gap (a
/// batch went missing) or a primary of an older epoch cannot be followed.
fn apply_batch(context: &ShardContext, replica: &mut BackupStream, batch: Batch) -> Result<(), String> {
    match replica.handle_batch(batch) {
        Ok(applied) => {
            let mut shard = context.shard.borrow_mut();
            for record in applied.records {
                shard.apply_replica(record);
            }
            Ok(())
        }
        Err(ignored) => match ignored.reason {
            IgnoreReason::Duplicate { .. } => Ok(()),
            IgnoreReason::StaleEpoch(_) | IgnoreReason::Gap { .. } => Err(ignored.to_string()),
        },
    }
}

/// How many of the primary's ready backups this broker would expect if promoted: all but itself.
fn expected_count(context: &ShardContext, ready: &[String]) -> usize {
    ready.iter().filter(|name| **name != context.link.own_address).count()
}

/// Shard 0 takes an HA transition the link decided; other shards learn it from shard 0.
fn transition(context: &ShardContext, to: BrokerState, cause: TransitionCause) {
    let mut shard = context.shard.borrow_mut();
    if shard.id().0 != 0 {
        return;
    }
    if let Err(error) = shard.handle_ha_transition(to, cause) {
        tracing::debug!(%error, "link: HA transition not taken");
    }
}

/// How a link ended for `reason`: lost when it had connected (silent when its heartbeat task
/// closed it), failed when it never had.
fn ended(timer: &Option<Rc<LinkTimer>>, reason: String) -> LinkEnd {
    match timer {
        Some(timer) => match timer.silent_for() {
            Some(silent_for) => {
                LinkEnd::Lost { reason: format!("nothing received for {silent_for:?} (2x link-heartbeat-interval)") }
            }
            None => LinkEnd::Lost { reason },
        },
        None => LinkEnd::Failed { reason },
    }
}

/// Bytes reserved in a backup link's read buffer before each read: large enough for several
/// batches per read.
const LINK_READ_BUFFER_BYTES: usize = 256 * 1024;
