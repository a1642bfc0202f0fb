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
//! - `link`: a backup's replication links to its primary, one per shard (dialling, handshake,
//!   applying batches, confirming), and both ends' heartbeats, driven by `ringmq_ha`'s
//!   `backup_link`, `backup_stream` and `link_heartbeat`.
//! - `link_server`: the primary's end of those links: handing each to the shard it names,
//!   catch-up, confirms, driven by `ringmq_ha::primary_replication`.
//! - `primary_role`: shard 0 of a primary: its backups' readiness, `members`, recovering mode and
//!   `ha-backup-timeout`.
//! - `epoch_watch`: a primary's probe of its peers; it steps down when another broker is a
//!   primary of a newer epoch.
//! - `shard_control`: rare messages between the shards' IO shells (a link handed over, a backup's
//!   catch-up progress).
//!
//! Not here: any protocol or broker logic (see `ringmq-core`).

pub mod doorbell;
mod epoch_watch;
pub mod link;
mod link_server;
pub mod listener;
mod primary_role;
pub mod runtime;
mod shard_control;
pub mod shard_loop;
pub mod shard_ring;
