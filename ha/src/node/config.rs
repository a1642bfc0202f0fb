//! A shard's HA settings, as the broker's options give them: the pacing of links and probes, the
//! other members of the cluster, this broker's own address, `ha-backup-timeout` and the ready
//! quorum (`ha-min-ready-backups`, `ha-min-ready-timeout`).
//!
//! Invariants: every shard of one broker gets the same settings; `shard_count` is the same on
//! every member of a cluster (a backup link of another count is refused).

use std::time::Duration;

/// A shard's HA settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `link-heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `link-maintenance-interval`: pacing of a backup's dials, period of a primary's probes.
    pub maintenance_interval: Duration,
    /// The other brokers of `ha-brokers-url`, `host:port`, this broker left out; empty when the
    /// broker is not in a cluster (no links, no probes).
    pub peer_addresses: Vec<String>,
    /// This broker's own address, `host:port`: its name to the primary (`link-open`).
    pub own_address: String,
    /// `ha-backup-timeout`: how long a newly promoted primary holds acks for each backup that
    /// was ready under the previous primary, waiting for it to come back ready.
    pub backup_timeout: Duration,
    /// Shards in the broker (every member of a cluster has the same number).
    pub shard_count: u16,
    /// `ha-min-ready-backups`: while a primary has fewer ready backups, it holds every new
    /// publish's confirm (0: never; `primary::replication`, "ready quorum").
    pub min_ready_backups: usize,
    /// `ha-min-ready-timeout`: how long a publish held for want of ready backups waits before it
    /// is rejected (`None`: until enough backups are ready).
    pub min_ready_timeout: Option<Duration>,
}
