//! The backup's side of replication.

pub mod link;
pub(crate) mod ready_lease;
pub(crate) mod session;
pub mod stream;
