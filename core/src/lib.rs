//! ringmq-core: the broker's state, with no IO and no clock.
//!
//! Everything here is a plain struct that takes inputs and returns outputs; time, when it matters,
//! comes in as an argument. An IO shell (the transport crate's, or the simulator's) feeds bytes
//! and timer ticks in and carries the outputs out, so the same code runs under io_uring, in tests, and in the deterministic simulator.
//!
//! Layout, by folder:
//! - `wire/`: the bytes on the wire. The native protocol's frames (`wire::frame`, re-exported as
//!   `frame`) and their codec, streaming writers, field primitives and frame-header parser, and
//!   the registry of every frame type byte (the replication link's included); see `PROTOCOL.md`.
//! - `model/`: what a broker holds. `queue` (FIFO with limits, consumers, unacked deliveries),
//!   `dedup_window` (a queue's memory of recent (producer, sequence) keys, `x-ringmq-dedup`),
//!   `exchange`, `topic` and `topic_trie` (routing), `routing_table` (what every shard knows of
//!   exchanges, bindings and queue names; which shard owns a queue is a hash, see `shard`), and
//!   `range_set` (sets of `u64` kept as inclusive ranges).
//! - `shard/`: one shard's whole state machine, composed of the above, one part per concept
//!   (`session`: connections and the dispatch of frames; `publish`: the publish path; `consumers`;
//!   `replica`: the replication API of both ends; `configuration`), with `shard_message` (what
//!   shards send each other) and `completion_tracker` (the one place that decides when publish
//!   acks are released).
//! - `wire::protocol`: which protocol a new connection speaks, by its first bytes: the seam where
//!   a second protocol (AMQP 1.0) enters.
//! - `replication`: positions, holds, records and the shard's replication events, shared with
//!   `ringmq-ha`'s streams; `replication_level`: which objects are replicated.
//! - `config_coordinator`: shard 0's ordering of configuration changes, HA promotion included.
//! - `broker_state`, `epoch`: the HA state table and leadership epochs (re-exported by
//!   `ringmq-ha`; they live here because the coordinator owns the broker's HA state), and
//!   `ha_view`: each shard's copy of that state and the admission rules.
//! - `ids`, `limits`, `hash_state`: identifier newtypes, every bound of the data path (their
//!   relationships asserted at compile time), and the seeded hasher of every map.
//!
//! Not here: sockets, threads, rings, timers (see `ringmq-transport`).

pub mod broker_state;
pub mod completion_tracker;
pub mod config_coordinator;
pub mod epoch;
pub mod ha_view;
pub mod hash_state;
pub mod ids;
pub mod limits;
pub mod model;
pub mod replication;
pub mod replication_level;
pub mod shard;
pub mod shard_message;
pub mod wire;

// The frames are named in most files of every crate; the short path stays.
pub use wire::frame;
