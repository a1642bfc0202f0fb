//! The per-shard HA driver the simulator runs: `ringmq_ha::node::shard_node::ShardNode`, the same code
//! the real transport drives, with its outputs and cross-shard controls.

pub use ringmq_ha::node::output::{NodeControl, NodeOutput};
pub use ringmq_ha::node::shard_node::{NodeConfig, ShardNode};
