//! The broker's IO shell for a shard's node: `ShardShell` implements `ringmq_ha::node::shell::
//! NodeShell` over io_uring (compio) sockets, the shard rings and the control queues, and `pump`
//! runs the one carrying-out the simulator runs too (`pump_and_carry_out`). Writes, closes, dials
//! of a backup's link, probes of peers, the hand-over of a backup link's socket to the shard that
//! serves it, and messages to other shards. Every decision was made by the node; this module only
//! does the IO and reports how it ended.
//!
//! Invariants:
//! - Every `Dial` is answered exactly once, `handle_dialed` or `handle_dial_failed`, within
//!   `LINK_SILENT_INTERVALS_MAX` heartbeat intervals.
//! - Every `Probe` is answered exactly once, within the maintenance interval (at least
//!   `PROBE_TIMEOUT_MIN`).
//! - A handed-over socket is owned by exactly one shard at a time: this shard drops its handle
//!   before the other adopts the duplicate.
//! - A peer shard's doorbell rings once per round that sent it something, after the round's last
//!   message for it.

use std::cell::RefMut;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use compio::buf::BufResult;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{Frame, Preamble, PREAMBLE_FLAG_ADMIN, PROTOCOL_VERSION};
use ringmq_core::ids::{ConnId, RequestId, ShardId};
use ringmq_core::limits::FRAME_BYTES_MAX;
use ringmq_core::shard_message::ShardMessage;
use ringmq_core::wire::codec;
use ringmq_ha::limits::LINK_SILENT_INTERVALS_MAX;
use ringmq_ha::link::frame::LinkOpen;
use ringmq_ha::node::output::NodeControl;
use ringmq_ha::node::shard_node::ShardNode;
use ringmq_ha::node::shell::{pump_and_carry_out, NodeShell};

use crate::connection_stream::ConnectionStream;
use crate::limits::{PROBE_BUFFER_BYTES, PROBE_TIMEOUT_MIN, READ_BUFFER_BYTES};
use crate::shard_control::Control;
use crate::shard_loop::{reader_task, shutdown, ReaderOrigin, ShardContext};

/// Most shards a broker runs (the `shards` option's bound): the doorbell bits of a round.
const SHARDS_MAX: usize = 256;
const _: () = assert!(SHARDS_MAX <= 2 * 128, "ShardShell::woken holds one bit per shard");

/// Pumps the node and carries out every output it produced (`pump_and_carry_out`, the same
/// function the simulator calls), then re-arms the timer if the node's next timeout moved
/// earlier.
pub(crate) fn pump(context: &ShardContext) {
    let mut shell = ShardShell { node: context.node.borrow_mut(), context, woken: [0; 2], overflow_retried: false };
    let Ok(()) = pump_and_carry_out(&mut shell, Instant::now());
    let next = shell.node.poll_timeout();
    drop(shell);
    context.rearm_timer(next);
}

/// The shell of one round: the node, borrowed for the round (no output touches it), and the
/// shard's IO.
struct ShardShell<'a> {
    /// The node.
    node: RefMut<'a, ShardNode>,
    /// Sockets, writers, rings, controls.
    context: &'a ShardContext,
    /// Peer shards sent a message this round whose doorbell must ring: one bit per shard index
    /// (`SHARDS_MAX` bits).
    woken: [u128; 2],
    /// Whether this round already retried the rings' overflow, before its first peer message.
    overflow_retried: bool,
}

impl NodeShell for ShardShell<'_> {
    type Error = Infallible;

    fn node(&mut self) -> &mut ShardNode {
        &mut self.node
    }

    fn write(&mut self, conn: ConnId, bytes: BytesMut) -> Result<(), Infallible> {
        if let Some(queue) = self.context.writers.borrow().get(&conn) {
            queue.push(bytes, false);
        }
        Ok(())
    }

    fn close(&mut self, conn: ConnId) -> Result<(), Infallible> {
        if let Some(queue) = self.context.writers.borrow().get(&conn) {
            queue.push(BytesMut::new(), true);
        }
        Ok(())
    }

    fn shutdown(&mut self, conn: ConnId) -> Result<(), Infallible> {
        if let Some(stream) = self.context.streams.borrow().get(&conn) {
            shutdown(stream);
        }
        Ok(())
    }

    fn dial(&mut self, address: String) -> Result<(), Infallible> {
        spawn_with_context(self.context, |context| dial(context, address));
        Ok(())
    }

    fn probe(&mut self, address: String) -> Result<(), Infallible> {
        spawn_with_context(self.context, |context| probe(context, address));
        Ok(())
    }

    fn hand_over(&mut self, conn: ConnId, shard: u16, open: LinkOpen, pending: BytesMut) -> Result<(), Infallible> {
        hand_over(self.context, conn, shard, open, pending);
        Ok(())
    }

    fn send_control(&mut self, shard: u16, control: NodeControl) -> Result<(), Infallible> {
        self.context.controls.send(shard, Control::Node(control));
        Ok(())
    }

    fn send_peer(&mut self, shard: ShardId, message: ShardMessage) -> Result<(), Infallible> {
        let mut rings = self.context.rings.borrow_mut();
        if !self.overflow_retried {
            // Older messages that did not fit go first.
            self.overflow_retried = true;
            rings.retry_overflow();
        }
        if rings.send(shard, message) {
            let index = usize::from(shard.0);
            self.woken[index / 128] |= 1 << (index % 128);
        }
        Ok(())
    }

    fn outputs_done(&mut self, producers_paused: bool) -> Result<(), Infallible> {
        for (index, doorbell) in self.context.rings.borrow().doorbells.iter().enumerate() {
            if self.woken[index / 128] & (1 << (index % 128)) != 0 {
                doorbell.ring();
            }
        }
        self.context.resume_paused_readers(producers_paused);
        Ok(())
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
    let stream = match compio::runtime::time::timeout(limit, ConnectionStream::connect(&address)).await {
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
    if let Err(error) = stream.set_nodelay() {
        tracing::debug!(%error, "TCP_NODELAY failed on a backup link");
    }
    let conn = context.new_conn();
    context.register(conn, &stream);
    context.node.borrow_mut().handle_dialed(conn, Instant::now());
    pump(&context);
    reader_task(context, stream, conn, BytesMut::with_capacity(READ_BUFFER_BYTES), ReaderOrigin::Link).await;
}

/// Hands the backup link `conn` to shard `shard`: its writer ends without shutting the socket
/// down, its reader stops, and the other shard adopts a duplicate of the descriptor.
fn hand_over(context: &ShardContext, conn: ConnId, shard: u16, open: LinkOpen, pending: BytesMut) {
    if let Some(queue) = context.writers.borrow_mut().remove(&conn) {
        queue.detach();
    }
    context.handed_over.borrow_mut().insert(conn);
    let Some(stream) = context.streams.borrow_mut().remove(&conn) else { return };
    match stream.hand_over() {
        Ok(stream) => context.controls.send(shard, Control::AdoptLink { stream, pending, open }),
        Err(error) => tracing::warn!(%error, "could not hand a backup link to its shard"),
    }
}

/// Serves a backup link another shard handed over.
pub(crate) fn adopt_link(context: &ShardContext, stream: std::net::TcpStream, pending: BytesMut, open: LinkOpen) {
    let stream = match ConnectionStream::adopt(stream) {
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
        reader_task(context, stream, conn, BytesMut::with_capacity(READ_BUFFER_BYTES), ReaderOrigin::Link)
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
    let stream = ConnectionStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let mut request = BytesMut::new();
    codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags: PREAMBLE_FLAG_ADMIN }, &mut request);
    codec::encode(&Frame::HaStatus { request: RequestId(1) }, &mut request);
    let BufResult(written, _) = stream.write_all(request).await;
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
        let BufResult(read, returned) = stream.append(buffer).await;
        buffer = returned;
        match read {
            Ok(0) => return Err("closed".into()),
            Ok(_) => {}
            Err(error) => return Err(format!("read: {error}")),
        }
    }
}
