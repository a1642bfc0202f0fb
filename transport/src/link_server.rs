//! The primary's end of a backup's replication link: the IO around `ringmq_ha`'s
//! `PrimaryReplication` for one shard.
//!
//! A backup opens one link per shard (see `link`). Any shard of the primary may accept it (the
//! port is shared, SO_REUSEPORT), so after the preamble and `hello` the accepting shard reads the
//! backup's `link-open`, which names the shard it wants, and hands the socket to that shard
//! (`Control::AdoptLink`) unless it is that shard. The serving shard then:
//! - checks the request (same shard count, this broker a primary, the backup's epoch not newer)
//!   and answers `link-accepted` or an `error`;
//! - opens a replication stream whose catch-up is the shard's snapshot of its replicated queues
//!   (only the difference from the holdings the backup's `link-open` carried, when it did), taken
//!   in the same step, so that every later change follows it on the stream (its messages
//!   interleave with the live changes: `PrimaryReplication`);
//! - reads confirms and heartbeats until the link ends, then drops the stream, which releases
//!   the confirms it held, and tells shard 0 (`Control::LinkLost`).
//!
//! Batches are written by the shard's pump (`shard_loop::pump`), which feeds the streams.
//!
//! Invariants:
//! - A stream exists exactly while its link is served: opened before the first batch, dropped
//!   (holds released) when the read loop ends for any reason.
//! - The shard's replica hold count equals the number of open streams after every change to them.

use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::io::AsyncReadExt;
use compio::net::TcpStream;
use ringmq_core::codec;
use ringmq_core::frame::{ErrorCode, Frame};
use ringmq_core::ids::ConnId;
use ringmq_ha::limits::{BATCH_BYTES_MAX, LINK_SILENT_INTERVALS_MAX};
use ringmq_ha::link_frame::{decode_link_frame, encode_link_frame, LinkAccepted, LinkFrame, LinkOpen};
use ringmq_ha::primary_replication::PrimaryReplication;

use crate::link::{heartbeat_task, LinkTimer};
use crate::shard_control::Control;
use crate::shard_loop::{pump, writer_task, ShardContext, WriteQueue, READ_BUFFER_BYTES};

/// A connection the shard admitted as a backup link, past `hello`: reads its `link-open` and
/// serves it here or hands it to the shard it names.
pub(crate) async fn accept_backup_link(
    context: Rc<ShardContext>,
    stream: Rc<TcpStream>,
    conn: ConnId,
    queue: Rc<WriteQueue>,
    mut buffer: BytesMut,
) {
    let deadline = Instant::now() + context.link.heartbeat_interval * LINK_SILENT_INTERVALS_MAX;
    let open = loop {
        match decode_link_frame(&mut buffer, BATCH_BYTES_MAX) {
            Ok(Some(LinkFrame::Open(open))) => break open,
            Ok(Some(other)) => {
                let message = format!("a backup link must begin with link-open; got {}", frame_name(&other));
                return refuse(&queue, ErrorCode::UnexpectedFrame, message);
            }
            Ok(None) => {}
            Err(error) => return refuse(&queue, error.code(), error.to_string()),
        }
        buffer.reserve(READ_BUFFER_BYTES);
        let mut reader: &TcpStream = &stream;
        let read = reader.append(buffer);
        let BufResult(result, returned) = match compio::runtime::time::timeout_at(deadline, read).await {
            Ok(read) => read,
            Err(_) => {
                let message = "no link-open within 2x link-heartbeat-interval of hello".to_string();
                return refuse(&queue, ErrorCode::Malformed, message);
            }
        };
        buffer = returned;
        match result {
            Ok(0) | Err(_) => return queue.push(BytesMut::new(), true),
            Ok(_) => {}
        }
    };
    let own = context.shard.borrow().id().0;
    if open.shard == own {
        serve_backup_link(context, stream, conn, queue, buffer, open).await;
        return;
    }
    if open.shard >= context.shard_count() {
        let message = format!(
            "backup shard {} does not exist here: this primary has {} shards, and every member of a cluster must \
             have the same number",
            open.shard,
            context.shard_count()
        );
        return refuse(&queue, ErrorCode::PreconditionFailed, message);
    }
    // Hand the socket over: the writer ends without shutting it down, and our descriptor is
    // closed once the duplicate travels.
    queue.detach();
    let handed = stream.as_fd().try_clone_to_owned().map(std::net::TcpStream::from);
    drop(stream);
    match handed {
        Ok(stream) => {
            let target = open.shard;
            context.controls.send(target, Control::AdoptLink { stream, pending: buffer, open });
        }
        Err(error) => tracing::warn!(%error, "could not hand a backup link to its shard"),
    }
}

/// Serves a backup link handed over by another shard.
pub(crate) fn adopt_backup_link(
    context: &Rc<ShardContext>,
    stream: std::net::TcpStream,
    pending: BytesMut,
    open: LinkOpen,
) {
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => Rc::new(stream),
        Err(error) => {
            tracing::warn!(%error, "could not adopt a backup link");
            return;
        }
    };
    let conn = context.new_conn();
    let queue = Rc::new(WriteQueue::default());
    compio::runtime::spawn(writer_task(stream.clone(), queue.clone())).detach();
    compio::runtime::spawn(serve_backup_link(context.clone(), stream, conn, queue, pending, open)).detach();
}

/// Serves one backup link on the shard it asked for, until it ends.
async fn serve_backup_link(
    context: Rc<ShardContext>,
    stream: Rc<TcpStream>,
    conn: ConnId,
    queue: Rc<WriteQueue>,
    mut buffer: BytesMut,
    open: LinkOpen,
) {
    if let Err((code, message)) = open_stream(&context, conn, &queue, &open) {
        tracing::warn!(backup = %open.backup, shard = open.shard, "backup link refused: {message}");
        if open.epoch_highest > context.shard.borrow().ha().epoch() && code == ErrorCode::NotPrimary {
            context.controls.send(0, Control::Superseded { epoch: open.epoch_highest });
        }
        return refuse(&queue, code, message);
    }
    tracing::info!(backup = %open.backup, shard = open.shard, "backup link accepted");
    let timer = Rc::new(LinkTimer::new(Instant::now(), context.link.heartbeat_interval));
    context.link_timers.borrow_mut().insert(conn, timer.clone());
    context.link_streams.borrow_mut().insert(conn, stream.clone());
    let name = format!("backup {} shard {}", open.backup, open.shard);
    compio::runtime::spawn(heartbeat_task(stream.clone(), queue.clone(), timer.clone(), name)).detach();
    pump(&context);
    let reason = read_confirms(&context, &stream, conn, &timer, &mut buffer).await;
    timer.close();
    context.link_timers.borrow_mut().remove(&conn);
    context.link_streams.borrow_mut().remove(&conn);
    context.writers.borrow_mut().remove(&conn);
    queue.push(BytesMut::new(), true);
    // Changes made before the loss still go to this stream, so their holds come back with it.
    pump(&context);
    {
        let mut shard = context.shard.borrow_mut();
        let mut replication = context.replication.borrow_mut();
        if let Some(replication) = replication.as_mut() {
            replication.handle_link_lost(u64::from(conn.0));
            shard.set_replica_holds(replication.holding_streams());
        }
    }
    tracing::warn!(backup = %open.backup, shard = open.shard, "backup link lost: {reason}");
    context.controls.send(0, Control::LinkLost { backup: open.backup, shard: open.shard });
    pump(&context);
}

/// Checks a `link-open` and, if it is acceptable, opens its stream with the shard's snapshot as
/// backlog and queues `link-accepted`. Everything happens in one step, without awaiting, so no
/// change to the queues falls between the snapshot and the stream.
fn open_stream(
    context: &ShardContext,
    conn: ConnId,
    queue: &Rc<WriteQueue>,
    open: &LinkOpen,
) -> Result<(), (ErrorCode, String)> {
    let shard = context.shard.borrow();
    let shard_count = context.shard_count();
    if open.shard_count != shard_count {
        let message = format!(
            "the backup has {} shards and this primary {shard_count}: every member of a cluster must have the same \
             number of shards",
            open.shard_count
        );
        return Err((ErrorCode::PreconditionFailed, message));
    }
    let state = shard.ha().state();
    if !state.is_primary() {
        return Err((ErrorCode::NotPrimary, format!("this broker is {}, not a primary", state.name())));
    }
    let epoch = shard.ha().epoch();
    if open.epoch_highest > epoch {
        let message = format!(
            "this primary's epoch {epoch} is older than epoch {} the backup has seen: a newer primary exists",
            open.epoch_highest
        );
        return Err((ErrorCode::NotPrimary, message));
    }
    // Changes made before the snapshot go to the streams already open, not to the new one.
    drop(shard);
    pump(context);
    let mut shard = context.shard.borrow_mut();
    let mut snapshot = Vec::new();
    let diff = shard.replication_snapshot_for(open.holdings.as_deref(), &mut snapshot);
    match open.holdings {
        Some(_) => tracing::info!(
            backup = %open.backup,
            shard = open.shard,
            "catch-up: {} messages sent, {} dequeued, {} already held, {} queues deleted",
            diff.sent,
            diff.dequeued,
            diff.held,
            diff.queues_deleted
        ),
        None => {
            tracing::info!(backup = %open.backup, shard = open.shard, "catch-up: full resync of {} messages", diff.sent)
        }
    }
    let mut replication = context.replication.borrow_mut();
    let replication = replication.get_or_insert_with(|| PrimaryReplication::new(epoch));
    replication.handle_link_opened(u64::from(conn.0), &open.backup, snapshot);
    shard.set_replica_holds(replication.holding_streams());
    context.writers.borrow_mut().insert(conn, queue.clone());
    let shard0_conn = (open.shard == 0).then_some(conn);
    context.controls.send(0, Control::LinkOpened { backup: open.backup.clone(), shard: open.shard, conn: shard0_conn });
    let mut accepted = BytesMut::new();
    encode_link_frame(&LinkFrame::Accepted(LinkAccepted { epoch, shard_count }), &mut accepted);
    queue.push(accepted, false);
    Ok(())
}

/// Reads a served link's confirms and heartbeats until it ends; returns why it ended.
async fn read_confirms(
    context: &Rc<ShardContext>,
    stream: &Rc<TcpStream>,
    conn: ConnId,
    timer: &Rc<LinkTimer>,
    buffer: &mut BytesMut,
) -> String {
    let link = u64::from(conn.0);
    loop {
        loop {
            match decode_link_frame(buffer, BATCH_BYTES_MAX) {
                Ok(None) => break,
                Ok(Some(LinkFrame::Confirm(seq))) => {
                    let mut replication = context.replication.borrow_mut();
                    let confirmed = replication.as_mut().map(|r| r.handle_confirm(link, seq));
                    if let Some(Err(error)) = confirmed {
                        return format!("bad confirm: {error}");
                    }
                }
                Ok(Some(LinkFrame::Native(Frame::Heartbeat))) => {}
                Ok(Some(other)) => return format!("unexpected {} from a backup", frame_name(&other)),
                Err(error) => return format!("undecodable frame: {error}"),
            }
        }
        pump(context);
        let mut owned = std::mem::take(buffer);
        owned.reserve(READ_BUFFER_BYTES);
        let BufResult(result, returned) = (&**stream).append(owned).await;
        *buffer = returned;
        match result {
            Ok(0) => {
                return match timer.silent_for() {
                    Some(silent_for) => format!("nothing received for {silent_for:?} (2x link-heartbeat-interval)"),
                    None => "closed by the backup".to_string(),
                }
            }
            Ok(_) => timer.heartbeat.borrow_mut().handle_received(Instant::now()),
            Err(error) => return format!("read: {error}"),
        }
    }
}

/// Writes an `error` and closes the connection.
fn refuse(queue: &WriteQueue, code: ErrorCode, message: String) {
    let mut buffer = BytesMut::new();
    codec::encode(&Frame::Error { code, message }, &mut buffer);
    queue.push(buffer, true);
}

/// A link frame's name, for errors.
pub(crate) fn frame_name(frame: &LinkFrame) -> &'static str {
    match frame {
        LinkFrame::Native(frame) => frame.name(),
        LinkFrame::Batch(_) => "replication-batch",
        LinkFrame::Confirm(_) => "replication-confirm",
        LinkFrame::Open(_) => "link-open",
        LinkFrame::Accepted(_) => "link-accepted",
        LinkFrame::MarkedReady => "marked-ready",
        LinkFrame::Members(_) => "members",
    }
}
