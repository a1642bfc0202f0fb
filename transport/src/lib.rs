//! ringmq-transport: the broker's only IO shell.
//!
//! One thread per shard, pinned to its core, runs one io_uring loop (compio, pinned to an exact
//! version and used only through this crate). The loop turns socket reads and ring messages into
//! calls on `ringmq_core::shard::Shard` and carries its outputs (bytes for connections, batches for
//! other shards) out. Shards talk only over single-producer/single-consumer rings; there is no
//! lock on the message path.
//!
//! Layout:
//! - `runtime`: starts the shard threads.
//! - `listener`: the SO_REUSEPORT listening sockets.
//! - `shard_loop`: one shard's tasks (acceptor, connection readers and writers, inbox) and pump.
//! - `shard_ring`: the ring mesh between shards.
//! - `doorbell`: the cross-thread wakeup for a shard's inbox.
//! - `link`: broker-to-broker links: a backup's link to its primary (dialling, handshake) and
//!   both ends' heartbeats, driven by `ringmq_ha::backup_link` and `ringmq_ha::link_heartbeat`.
//!
//! Not here: any protocol or broker logic (see `ringmq-core`).

pub mod doorbell;
pub mod link;
pub mod listener;
pub mod runtime;
pub mod shard_loop;
pub mod shard_ring;
