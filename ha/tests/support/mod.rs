//! What the ha crate's state-machine tests share: the settings of a one-shard broker of a
//! two-broker cluster, `ha-replicate all`, whose first address is its own.

use ringmq_core::ha_view::HaSettings;
use ringmq_core::replication_level::ReplicationLevel;
use ringmq_core::shard::ShardConfig;

/// A one-shard broker's settings: member 0 of the cluster `brokers_url`, replicating everything.
pub fn cluster_shard_config(brokers_url: &str) -> ShardConfig {
    let ha = HaSettings {
        cluster: true,
        brokers_url: brokers_url.into(),
        public_url: String::new(),
        replicate: ReplicationLevel::All,
        member: 0,
        name: String::new(),
    };
    ShardConfig {
        shard_count: 1,
        frame_bytes_max: 1 << 20,
        publish_inflight_max: 1024,
        deliver_batch_max: 64,
        broker_name: "test".into(),
        ha,
        dedup_window: 0,
    }
}
