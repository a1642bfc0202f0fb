//! What a broker holds, as plain data structures with no knowledge of shards or connections:
//! queues and their dedup windows, exchanges and the routing table, topic patterns, and the range
//! set they share.
//!
//! Layout:
//! - `queue`: one queue: its messages, limits, consumers and unacked deliveries.
//! - `dedup_window`: a queue's bounded memory of recent (producer, sequence) keys.
//! - `exchange`, `topic`, `topic_trie`: one exchange's bindings and how a routing key matches.
//! - `routing_table`: every exchange, binding and queue name a shard knows.
//! - `range_set`: a set of `u64` kept as inclusive ranges.
//!
//! Invariants: see each module. None of them does IO, reads a clock, or knows which shard it is on.

pub mod dedup_window;
pub mod exchange;
pub mod queue;
pub mod range_set;
pub mod routing_table;
pub mod topic;
pub mod topic_trie;
