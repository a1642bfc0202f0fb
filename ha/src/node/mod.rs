//! The node: one shard of one broker with all of its HA protocol (`shard_node`), the state its
//! parts share and the one hold path (`core`), publishes kept until their promotion reached the
//! shard (`early_enqueues`), its settings (`config`), what it asks its IO shell to do (`output`),
//! and the one carrying-out of those outputs that every shell calls (`shell`).

pub mod config;
pub(crate) mod core;
pub(crate) mod early_enqueues;
pub mod output;
pub mod shard_node;
pub mod shell;

pub use config::NodeConfig;
pub use shard_node::ShardNode;
