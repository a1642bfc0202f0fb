//! ringmq-transport: the broker's only IO shell.
//!
//! One thread per shard, pinned to its core, runs one io_uring loop (compio, pinned to an exact
//! version and used only through this crate). The loop turns socket reads and ring messages into
//! calls on the shard's sans-IO node (`ringmq_ha::node::shard_node::ShardNode`: the core shard and its HA
//! protocol) and carries its outputs (bytes for connections, dials, probes, batches for other
//! shards) out. Shards talk only over single-producer/single-consumer rings; there is no
//! lock on the message path.
//!
//! Layout:
//! - `limits`: every queue, buffer, batch, retry and wait bound of the shell.
//! - `runtime`: starts the shard threads.
//! - `shard_exit`: how a shard thread ended, reported to the starter; which shard a thread runs.
//! - `listener`: the SO_REUSEPORT listening sockets.
//! - `connection_stream`: the one type a connection's bytes go through (TCP today), so another
//!   transport is a variant there and no change to the readers and writers.
//! - `shard_loop`: one shard's tasks (acceptor, connection readers and writers, inbox, timer)
//!   and pump.
//! - `shard_ring`: the ring mesh between shards.
//! - `doorbell`: the cross-thread wakeup for a shard's inbox.
//! - `node_shell`: carries out the node's outputs: writes, closes, dials of a backup's links,
//!   probes of peers, and the hand-over of a backup link to the shard it names. The HA protocol
//!   itself is `ringmq_ha::node::shard_node`, sans-IO.
//! - `shard_control`: rare messages between the shards' IO shells (a link handed over, the nodes'
//!   controls).
//!
//! Not here: any protocol or broker logic (see `ringmq-core` and `ringmq-ha`).

mod connection_stream;
pub mod doorbell;
pub mod limits;
pub mod listener;
mod node_shell;
pub mod runtime;
mod shard_control;
pub mod shard_exit;
pub mod shard_loop;
pub mod shard_ring;
