//! ringmq-ha: active-passive high availability, as plain state and rules with no IO and no clock.
//!
//! This crate holds the HA decisions of a ringmq broker: which state a broker is in and which
//! step it may take next, which brokers a URL names, which objects are replicated, and which
//! epoch's records a backup may apply. It follows the Qpid C++ broker's HA design (the reference),
//! hardened where that design was weak: epochs fence old primaries, and URLs, levels and states
//! are checked strictly instead of being trusted.
//!
//! It does not open sockets, read files, spawn threads, read a clock or draw random numbers (it
//! logs through `tracing`, whose subscriber the binary installs). The transport crate drives it:
//! it feeds in what arrived (a promote command, a replication message, a timeout it measured) and
//! carries out what comes back. So the whole HA protocol can be run
//! deterministically in tests and in the simulator. Dependencies point one way:
//! `transport -> ha -> core`.
//!
//! Layout:
//! - `broker_state` (re-exported from `ringmq-core`): the six broker states, the table of legal
//!   transitions and their causes.
//! - `url`: the reference's broker URL grammar (`ha-brokers-url`, `ha-public-url`, client
//!   failover lists), parsed strictly and printed canonically.
//! - `replication_level`: `none` / `configuration` / `all`, the `qpid.replicate` argument, and which
//!   queues, exchanges and bindings are replicated.
//! - `epoch` (re-exported from `ringmq-core`): leadership generations; the rules that fence a
//!   stale primary.
//! - `limits`: every bound of this crate, with their relationships asserted at compile time.
//! - `record`: message replication's records (queue created/deleted, enqueued at positions,
//!   dequeued position ranges) and the batches that carry them, with their binary encoding.
//! - `primary_stream`: one primary shard's replication stream to one backup: batching, the window
//!   of unconfirmed batches, cumulative confirms, and the holds on publish confirms they release.
//! - `primary_replication`: one primary shard's replication to all its backups: a stream per backup
//!   link fed the shard's `ReplicationEvent`s, the catch-up of a link from the shard's snapshot
//!   (only the difference from the backup's holdings, interleaved with the live changes),
//!   holds released once per stream, overflowed links, and expected backups (recovering mode's,
//!   and detached ready ones), which hold publishes until their link caught up or
//!   `ha-backup-timeout` passed.
//! - `backup_stream`: the backup's side of one stream: epoch and sequence checks, handing records
//!   back in order for the backup shard to store, coalesced confirms.
//! - `link_frame`: every frame of a replication link (native `hello`/`heartbeat`/`error`, batches,
//!   confirms, link-open with the backup shard's holdings, link-accepted, marked-ready, members)
//!   and one decoder for the mixed stream.
//! - `backup_link`: a backup's outgoing link to the primary: which address of `ha-brokers-url` to
//!   dial next and when.
//! - `link_heartbeat`: heartbeats and dead-peer detection on a broker-to-broker link, either end.
//! - `membership`: the primary's view of its backups: which shards of each caught up, which
//!   backups are ready, and their list for the `members` frame.
//!
//! - `shard_node`: one shard with all of its HA protocol, the machine the transport and the
//!   simulator drive: bytes, closes, dial and probe answers and timeouts in, `node_output` out.
//!   Its parts: `backup_session` (a backup shard's link to the primary), `served_links` (the
//!   primary's end of backups' links), `primary_role` (shard 0 of a primary: readiness, `members`,
//!   recovering mode, `ha-backup-timeout` and detached ready backups), `ready_lease` (how long a
//!   backup stays `ready` without word from its primary) and `epoch_watch` (the probe for a newer
//!   primary).
//! - `node_output`: what a node asks its shell to do, and what the nodes of one broker tell
//!   each other.
//! - `node_shell`: the `NodeShell` trait every IO shell implements and `pump_and_carry_out`, the
//!   one carrying-out of a node's outputs that the broker and the simulator both call.
//!
//! `broker_state` and `epoch` live in `ringmq-core` because the configuration coordinator (shard 0
//! of `ringmq-core`) owns the broker's HA state and promotes it, and `ringmq-core` cannot depend
//! on this crate (this crate depends on it). They are re-exported here unchanged, so
//! `ringmq_ha::broker_state::transition` stays the one table every caller goes through.
//!
//! Invariants (each module states its own in detail):
//! - Nothing here performs IO or reads time; time, when a module needs it, comes in as an
//!   argument, and it never goes backwards.
//! - Bad input (option values, URLs, declare arguments, peers' epochs) comes back as a typed
//!   error naming what was allowed and what came; it never panics. Panics are for bugs only.
//! - A broker takes only the transitions in `broker_state`'s table.
//! - A backup never applies a record from an epoch older than the highest it has seen.

pub mod backup;
pub mod limits;
pub mod link;
pub mod node;
pub mod primary;
pub mod url;

pub use ringmq_core::{broker_state, epoch, replication_level};
