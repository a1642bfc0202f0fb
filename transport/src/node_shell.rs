//! Carries out what a shard's node asks for (`ringmq_ha::node_output::NodeOutput`): writes,
//! closes, dials of a backup's link, probes of peers, and the hand-over of a backup link's socket
//! to the shard that serves it. Every decision was made by the node; this module only does the IO
//! and reports how it ended.
//!
//! Invariants:
//! - Every `Dial` is answered exactly once, `handle_dialed` or `handle_dial_failed`, within
//!   `LINK_SILENT_INTERVALS_MAX` heartbeat intervals.
//! - Every `Probe` is answered exactly once, within the maintenance interval (at least
//!   `PROBE_TIMEOUT_MIN`).
//! - A handed-over socket is owned by exactly one shard at a time: this shard drops its handle
//!   before the other adopts the duplicate.

use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{Frame, Preamble, PREAMBLE_FLAG_ADMIN, PROTOCOL_VERSION};
use ringmq_core::ids::{ConnId, RequestId};
use ringmq_core::limits::FRAME_BYTES_MAX;
use ringmq_core::wire::codec;
use ringmq_ha::limits::LINK_SILENT_INTERVALS_MAX;
use ringmq_ha::link_frame::LinkOpen;
use ringmq_ha::node_output::NodeOutput;

use crate::shard_control::Control;
use crate::shard_loop::{pump, reader_task, shutdown, ShardContext, READ_BUFFER_BYTES};

/// The least time a probe may take, whatever the maintenance interval.
const PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Read buffer of a probe: a hello and a status reply.
const PROBE_BUFFER_BYTES: usize = 4096;

/// Carries out one output of the node.
pub(crate) fn carry_out(context: &ShardContext, output: NodeOutput) {
    match output {
        NodeOutput::Write { conn, bytes } => {
            if let Some(queue) = context.writers.borrow().get(&conn) {
                queue.push(bytes, false);
            }
        }
        NodeOutput::Close { conn } => {
            if let Some(queue) = context.writers.borrow().get(&conn) {
                queue.push(BytesMut::new(), true);
            }
        }
        NodeOutput::Shutdown { conn } => {
            if let Some(stream) = context.streams.borrow().get(&conn) {
                shutdown(stream);
            }
        }
        NodeOutput::Dial { address } => spawn_with_context(context, |context| dial(context, address)),
        NodeOutput::Probe { address } => spawn_with_context(context, |context| probe(context, address)),
        NodeOutput::HandOver { conn, shard, open, pending } => hand_over(context, conn, shard, open, pending),
        NodeOutput::Control { shard, control } => context.controls.send(shard, Control::Node(control)),
    }
}

/// Spawns `task` on this shard's runtime with a handle on the context.
fn spawn_with_context<F, T>(context: &ShardContext, task: F)
where
    F: FnOnce(Rc<ShardContext>) -> T,
    T: std::future::Future<Output = ()> + 'static,
{
    let Some(context) = context.this() else { return };
    compio::runtime::spawn(task(context)).detach();
}

/// Dials a backup link to `address`, then reads it until it ends.
async fn dial(context: Rc<ShardContext>, address: String) {
    let limit = context.config().heartbeat_interval * LINK_SILENT_INTERVALS_MAX;
    let stream = match compio::runtime::time::timeout(limit, TcpStream::connect(&address)).await {
        Ok(Ok(stream)) => Rc::new(stream),
        outcome => {
            match outcome {
                Ok(Err(error)) => tracing::debug!(%error, "link: connect to {address} failed"),
                _ => tracing::debug!("link: connect to {address}: no answer within {limit:?}"),
            }
            context.node.borrow_mut().handle_dial_failed(Instant::now());
            pump(&context);
            return;
        }
    };
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY failed on a backup link");
    }
    let conn = context.new_conn();
    context.register(conn, &stream);
    context.node.borrow_mut().handle_dialed(conn, Instant::now());
    pump(&context);
    reader_task(context, stream, conn, BytesMut::with_capacity(READ_BUFFER_BYTES)).await;
}

/// Hands the backup link `conn` to shard `shard`: its writer ends without shutting the socket
/// down, its reader stops, and the other shard adopts a duplicate of the descriptor.
fn hand_over(context: &ShardContext, conn: ConnId, shard: u16, open: LinkOpen, pending: BytesMut) {
    if let Some(queue) = context.writers.borrow_mut().remove(&conn) {
        queue.detach();
    }
    context.handed_over.borrow_mut().insert(conn);
    let Some(stream) = context.streams.borrow_mut().remove(&conn) else { return };
    match stream.as_fd().try_clone_to_owned().map(std::net::TcpStream::from) {
        Ok(stream) => context.controls.send(shard, Control::AdoptLink { stream, pending, open }),
        Err(error) => tracing::warn!(%error, "could not hand a backup link to its shard"),
    }
}

/// Serves a backup link another shard handed over.
pub(crate) fn adopt_link(context: &ShardContext, stream: std::net::TcpStream, pending: BytesMut, open: LinkOpen) {
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => Rc::new(stream),
        Err(error) => {
            tracing::warn!(%error, "could not adopt a backup link");
            return;
        }
    };
    let conn = context.new_conn();
    context.register(conn, &stream);
    context.node.borrow_mut().handle_link_adopted(conn, open, pending, Instant::now());
    spawn_with_context(context, move |context| {
        reader_task(context, stream, conn, BytesMut::with_capacity(READ_BUFFER_BYTES))
    });
}

/// Asks the broker at `address` for its HA state and epoch and gives the node the answer.
async fn probe(context: Rc<ShardContext>, address: String) {
    let limit = context.config().maintenance_interval.max(PROBE_TIMEOUT_MIN);
    let answer = match compio::runtime::time::timeout(limit, ask_status(&address)).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(reason)) => {
            tracing::debug!(peer = %address, %reason, "epoch probe failed");
            None
        }
        Err(_) => None,
    };
    context.node.borrow_mut().handle_probe_answer(&address, answer);
    pump(&context);
}

/// One `ha-status` exchange over an admin connection; see `probe`.
async fn ask_status(address: &str) -> Result<(BrokerState, Epoch), String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let mut request = BytesMut::new();
    codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags: PREAMBLE_FLAG_ADMIN }, &mut request);
    codec::encode(&Frame::HaStatus { request: RequestId(1) }, &mut request);
    let BufResult(written, _) = (&stream).write_all(request).await;
    written.map_err(|e| format!("write: {e}"))?;
    let mut buffer = BytesMut::with_capacity(PROBE_BUFFER_BYTES);
    loop {
        loop {
            match codec::decode(&mut buffer, FRAME_BYTES_MAX).map_err(|e| e.to_string())? {
                None => break,
                Some(Frame::HaStatusReply { state, epoch, .. }) => {
                    let state = state.parse::<BrokerState>().map_err(|e| e.to_string())?;
                    return Ok((state, Epoch(epoch)));
                }
                Some(Frame::Error { message, .. }) => return Err(message),
                Some(_) => {}
            }
        }
        buffer.reserve(PROBE_BUFFER_BYTES);
        let BufResult(read, returned) = (&stream).append(buffer).await;
        buffer = returned;
        match read {
            Ok(0) => return Err("closed".into()),
            Ok(_) => {}
            Err(error) => return Err(format!("read: {error}")),
        }
    }
}
