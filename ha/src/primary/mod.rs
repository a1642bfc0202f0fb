//! The primary's side of replication.

pub(crate) mod epoch_watch;
pub mod membership;
pub mod replication;
pub(crate) mod role;
pub(crate) mod served_links;
pub mod stream;
