//! ringmq-ha: active-passive high availability, as plain state and rules with no IO and no clock.
//!
//! This crate holds the HA decisions of a ringmq broker: which state a broker is in and which
//! step it may take next, which brokers a URL names, which objects are replicated, and which
//! epoch's records a backup may apply. It follows the Qpid C++ broker's HA design (the reference),
//! hardened where that design was weak: epochs fence old primaries, and URLs, levels and states
//! are checked strictly instead of being trusted.
//!
//! It does not open sockets, read files, spawn threads, read a clock or draw random numbers (it
//! logs through `tracing`, whose subscriber the binary installs). The replication protocol runs in
//! the node (`node::ShardNode`) and its parts; an IO shell feeds it what arrived (bytes, closes,
//! dial answers, timeouts it measured) and carries out what comes back (`node::shell`), and only
//! carries bytes. The broker's shell (`ringmq-transport`) and the simulator (`ringmq-tests`) call
//! the same carrying-out, so the whole HA protocol runs deterministically in tests and in the
//! simulator. Dependencies point one way: `transport -> ha -> core`, and inside this crate the node
//! on its parts, the parts on `node::core`.
//!
//! Layout:
//! - `node/`: one shard with all of its HA protocol. `shard_node` (the machine every shell drives:
//!   inputs in, `output` out), `core` (the state the parts share and the one hold path: who holds
//!   each publish's ack, `change_holders`), `early_enqueues` (publishes that reached their queue's
//!   shard ahead of their promotion, kept until it arrives), `config`, `output` (what a node asks
//!   its shell to do, and what the nodes of one broker tell each other), `shell` (`NodeShell` and
//!   `pump_and_carry_out`, the one carrying-out of a node's outputs).
//! - `primary/`: the primary's side. `replication/` (one shard's replication to all its backups:
//!   fan-out of events to the streams, `catch_up` backlogs, `delivery_gate`s, `expected_backups`,
//!   `ready_quorum`),
//!   `stream` (one stream to one backup: batching, the window of unconfirmed batches, cumulative
//!   confirms), `served_links` (the primary's end of backups' links), `role` (shard 0: readiness,
//!   `members`, recovering mode, detached backups), `membership` (which backups are ready),
//!   `epoch_watch` (the probe for a newer primary).
//! - `backup/`: the backup's side. `session` (a backup shard's link to the primary), `stream`
//!   (epoch and sequence checks, records in order, coalesced confirms), `link` (which address of
//!   `ha-brokers-url` to dial next and when), `ready_lease` (how long a backup stays `ready`
//!   without word from its primary).
//! - `link/`: the broker-to-broker link, either end. `frame` (every frame of a replication link and
//!   one decoder for the mixed stream), `record` (replication records and the batches that carry
//!   them, with their bytes), `heartbeat` (dead-peer detection), `LinkId`.
//! - `promotion_check`: before a `ready` backup is promoted, whether a newer ready set left it out
//!   (run by `ringmq ha promote` and any cluster manager, on the other brokers' fenced answers).
//! - `url`: the reference's broker URL grammar (`ha-brokers-url`, `ha-public-url`, client
//!   failover lists), parsed strictly and printed canonically.
//! - `limits`: every bound of this crate, with their relationships asserted at compile time.
//! - Re-exported from `ringmq-core`: `broker_state` (the six broker states, the table of legal
//!   transitions and their causes), `epoch` (leadership generations; the rules that fence a stale
//!   primary), `replication_level` (`none` / `configuration` / `all`, and which queues, exchanges
//!   and bindings are replicated).
//!
//! Terms: an *ack* is what a client receives for a publish; a *confirm* is what a backup sends the
//! primary for a batch. A publish's ack is *held* once per holder (stream or expected backup) and
//! released when each holder's backup confirmed it (or it ended).
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
pub mod promotion_check;
pub mod url;

pub use ringmq_core::{broker_state, epoch, replication_level};
