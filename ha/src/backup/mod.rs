//! The backup's side of replication: per shard, the link to the primary (`session`, dialling with
//! `link`), the checks on what arrives (`stream`), and on shard 0 the ready lease
//! (`ready_lease`). No IO: the node (`node::ShardNode`) drives these, and its shell carries the
//! bytes.

pub mod link;
pub(crate) mod ready_lease;
pub(crate) mod session;
pub mod stream;
