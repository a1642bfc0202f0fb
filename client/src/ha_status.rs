//! A broker's HA state as a client sees it: the reply to `Connection::ha_status`.
//!
//! A plain value: the reader task builds it from a `HaStatusReply` frame, the request table
//! carries it to the waiter, the supervisor reads its `public_url` to learn addresses. It imports
//! nothing of the client, so every one of them can name it without importing the others.
//!
//! Invariants:
//! - The fields are the broker's, unchanged: the URLs are as the broker shows them (credentials
//!   hidden by the broker), `state` is one of the broker's state names.

/// A broker's HA state, as `HaStatusReply` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaStatus {
    /// standalone, joining, catchup, ready, recovering or active.
    pub state: String,
    /// The epoch the broker was promoted in; 0 while it has not been.
    pub epoch: u64,
    /// Its `ha-brokers-url` (credentials hidden); empty if unset.
    pub brokers_url: String,
    /// Its `ha-public-url` (credentials hidden); empty if unset.
    pub public_url: String,
    /// Its own address as ready sets name it; empty outside a cluster.
    pub name: String,
    /// The newest ready set it knows (its own as a primary, its primary's as a backup).
    pub ready_set: crate::ReadySet,
}
