//! The broker-to-broker replication link, either end.

pub mod frame;
pub mod heartbeat;
pub mod record;
