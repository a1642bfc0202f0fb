//! The primary's side of replication: per shard, the replication to every backup (`replication`,
//! each stream in `stream`) and the serving of backups' links (`served_links`); on shard 0, the
//! cluster-wide bookkeeping (`role`, `membership`) and the fencing of a superseded primary
//! (`epoch_watch`). No IO: the node (`node::ShardNode`) drives these, and its shell carries the
//! bytes.

pub(crate) mod epoch_watch;
pub mod membership;
pub mod replication;
pub(crate) mod role;
pub(crate) mod served_links;
pub mod stream;
