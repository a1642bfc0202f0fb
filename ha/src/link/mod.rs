//! The broker-to-broker replication link, either end: its frames (`frame`), the records and
//! batches a primary sends (`record`), dead-peer detection (`heartbeat`), and `LinkId`, the
//! primary's name for one backup's link.

pub mod frame;
pub mod heartbeat;
pub mod record;

use std::fmt;

use ringmq_core::ids::ConnId;

/// One backup's replication link on a primary shard, named by the connection it came on (the
/// node's `ConnId` for it): the key of its stream in `PrimaryReplication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub ConnId);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0 .0)
    }
}
