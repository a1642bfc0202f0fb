//! ringmq-core: the broker's state, with no IO and no clock.
//!
//! Everything here is a plain struct that takes inputs and returns outputs; time, when it matters,
//! comes in as an argument. The transport crate feeds bytes and timer ticks in and carries the
//! outputs out, so the same code runs under io_uring, in tests, and in the deterministic simulator.
//!
//! Layout:
//! - `ids`: identifier newtypes.
//! - `limits`: every bound of the data path, with their relationships asserted at compile time.
//! - `frame`, `codec`: the native protocol's frames and their bytes (see `PROTOCOL.md`).
//! - `message`-level state: `queue` (FIFO with limits, consumers, unacked deliveries),
//!   `exchange`, `topic` and `topic_trie` (routing), `routing_table` (what every shard knows of
//!   exchanges, bindings and queue names; which shard owns a queue is a hash, see `shard`).
//! - `dedup_window`: a queue's bounded memory of recent (producer, sequence) keys, for duplicate
//!   suppression (the `x-ringmq-dedup` header).
//! - `completion_tracker`: the one place that decides when publish confirms are released.
//! - `replication`: positions, holds, records and the shard's replication events (queues on their
//!   owner shard; the whole replicated configuration, exchanges and bindings included, on shard 0),
//!   shared with `ringmq-ha`'s replication streams; `replication_level`: which objects are
//!   replicated (re-exported by `ringmq-ha`).
//! - `shard`: one shard's whole state machine, composed of the above.
//! - `config_coordinator`: shard 0's ordering of configuration changes, HA promotion included.
//! - `broker_state`, `epoch`: the HA state table and leadership epochs (re-exported by
//!   `ringmq-ha`; they live here because the coordinator owns the broker's HA state, see
//!   `ha_view`), and `ha_view`: each shard's copy of that state and the admission rules.
//!
//! Not here: sockets, threads, rings, timers (see `ringmq-transport`).

pub mod broker_state;
pub mod codec;
pub mod completion_tracker;
pub mod config_coordinator;
pub mod dedup_window;
pub mod epoch;
pub mod exchange;
pub mod frame;
pub mod ha_view;
pub mod hash_state;
pub mod ids;
pub mod limits;
pub mod queue;
pub mod replication;
pub mod replication_level;
pub mod routing_table;
pub mod shard;
pub mod shard_message;
pub mod topic;
pub mod topic_trie;
