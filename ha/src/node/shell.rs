//! The one carrying-out of a node's outputs, shared by every IO shell: the broker's io_uring
//! shell (`ringmq-transport`) and the deterministic simulator (`ringmq-tests`) both call
//! `pump_and_carry_out`, so the simulation runs the same order of effects as production.
//!
//! A shell implements `NodeShell`: how to reach its node, and how to do each kind of output
//! (write and close a connection, dial, probe, hand a link to another shard, deliver a message to
//! another shard's node or core). What to do, and in which order, is decided here and in the
//! node; the shell only does the IO, and says at the end of each round whether paused readers may
//! go on.
//!
//! Invariants:
//! - After an input, the node is pumped once and every output it produced is carried out in the
//!   order it was produced: the node's own outputs first, then its core's messages for the other
//!   shards, by destination, in order per destination.
//! - `outputs_done` is called exactly once per round, after the last output, with the node's
//!   answer to `producers_must_pause` as it stands then.
//! - A shell's failure (the simulator's contract checks) stops the round at once and is handed
//!   back; the real shell never fails (`std::convert::Infallible`).

use std::time::Instant;

use bytes::BytesMut;
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::shard_message::ShardMessage;

use crate::link::frame::LinkOpen;
use crate::node::output::{NodeControl, NodeOutput};
use crate::node::ShardNode;

/// What an IO shell does for one shard's node. Each method does one kind of `NodeOutput`; see
/// that enum for what each must guarantee (answers to dials and probes, hand-over ownership).
pub trait NodeShell {
    /// Why carrying out an output failed (`Infallible` for a real shell).
    type Error;

    /// The node this shell drives.
    fn node(&mut self) -> &mut ShardNode;

    /// `NodeOutput::Write`.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn write(&mut self, conn: ConnId, bytes: BytesMut) -> Result<(), Self::Error>;

    /// `NodeOutput::Close`.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn close(&mut self, conn: ConnId) -> Result<(), Self::Error>;

    /// `NodeOutput::Shutdown`.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn shutdown(&mut self, conn: ConnId) -> Result<(), Self::Error>;

    /// `NodeOutput::Dial`.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn dial(&mut self, address: String) -> Result<(), Self::Error>;

    /// `NodeOutput::Probe`.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn probe(&mut self, address: String) -> Result<(), Self::Error>;

    /// `NodeOutput::HandOver`.
    ///
    /// # Errors
    /// The shell's own contract check failed (e.g. an unknown connection).
    fn hand_over(&mut self, conn: ConnId, shard: u16, open: LinkOpen, pending: BytesMut) -> Result<(), Self::Error>;

    /// `NodeOutput::Control`.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn send_control(&mut self, shard: u16, control: NodeControl) -> Result<(), Self::Error>;

    /// `NodeOutput::Peer`.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn send_peer(&mut self, shard: ShardId, message: ShardMessage) -> Result<(), Self::Error>;

    /// Every output of this round was carried out (flush what was batched, such as the other
    /// shards' doorbells). `producers_paused` is the node's `producers_must_pause()`: while it is
    /// false, client reads held back by `ShardNode::read_paused` may go on.
    ///
    /// # Errors
    /// The shell's own contract check failed.
    fn outputs_done(&mut self, producers_paused: bool) -> Result<(), Self::Error>;
}

/// Pumps the shell's node at `now` and carries out every output it produced, in order, then calls
/// `outputs_done`.
///
/// # Errors
/// The first output the shell failed to carry out; the outputs after it stay queued in the node.
pub fn pump_and_carry_out<S: NodeShell>(shell: &mut S, now: Instant) -> Result<(), S::Error> {
    shell.node().pump(now);
    while let Some(output) = shell.node().poll_output() {
        match output {
            NodeOutput::Write { conn, bytes } => shell.write(conn, bytes)?,
            NodeOutput::Close { conn } => shell.close(conn)?,
            NodeOutput::Shutdown { conn } => shell.shutdown(conn)?,
            NodeOutput::Dial { address } => shell.dial(address)?,
            NodeOutput::Probe { address } => shell.probe(address)?,
            NodeOutput::HandOver { conn, shard, open, pending } => shell.hand_over(conn, shard, open, pending)?,
            NodeOutput::Control { shard, control } => shell.send_control(shard, control)?,
            NodeOutput::Peer { shard, message } => shell.send_peer(shard, message)?,
        }
    }
    let producers_paused = shell.node().producers_must_pause();
    shell.outputs_done(producers_paused)
}
