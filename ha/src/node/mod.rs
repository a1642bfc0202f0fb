//! The node: one shard of one broker with all of its HA protocol (`shard_node`), what it asks
//! its IO shell to do (`output`), and the one carrying-out of those outputs that every shell
//! calls (`shell`).

pub mod output;
pub mod shard_node;
pub mod shell;

pub use shard_node::{NodeConfig, ShardNode};
