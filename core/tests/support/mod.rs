//! A broker's shards wired together in memory for state-machine tests: the rings are replaced
//! by a loop that moves every `poll_peer` output to its destination, and clients are byte buffers
//! encoded and decoded with the codec. No sockets, no threads, no clock.

// Each test binary uses part of this module.
#![allow(dead_code)]

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::frame::{preamble_version, Frame, Preamble, QueueOptions};
use ringmq_core::ha_view::HaSettings;
use ringmq_core::ids::{ConnId, RequestId, ShardId};
use ringmq_core::replication::ReplicationEvent;
use ringmq_core::replication_level::ReplicationLevel;
use ringmq_core::shard::{shard_of, Shard, ShardConfig, Transmit};
use ringmq_core::wire::{decode, encode, encode_preamble};

/// Shards wired together in memory.
pub struct Mesh {
    /// The shards; index = shard id.
    pub shards: Vec<Shard>,
    /// Frames each (shard, conn) received, decoded.
    pub inbox: std::collections::HashMap<(u16, u32), Vec<Frame>>,
    /// Connections the broker asked to close.
    pub closed: Vec<(u16, u32)>,
}

impl Mesh {
    pub fn new(count: u16, ha: HaSettings) -> Mesh {
        Mesh::with_dedup_window(count, ha, ringmq_core::limits::DEDUP_WINDOW_DEFAULT)
    }

    /// A mesh whose queues remember `window` sequences per producer (`dedup-window`; 0: off).
    pub fn with_dedup_window(count: u16, ha: HaSettings, window: u32) -> Mesh {
        let config = ShardConfig {
            shard_count: count,
            frame_bytes_max: 1 << 20,
            publish_inflight_max: 1024,
            deliver_batch_max: 64,
            broker_name: "test".into(),
            ha,
            dedup_window: window,
        };
        let shards = (0..count).map(|i| Shard::new(ShardId(i), config.clone())).collect();
        Mesh { shards, inbox: Default::default(), closed: Vec::new() }
    }

    /// A mesh of a broker without HA (standalone).
    pub fn standalone(count: u16) -> Mesh {
        Mesh::new(count, HaSettings::default())
    }

    /// A mesh of a broker started with `ha-cluster`: it starts joining.
    pub fn cluster(count: u16) -> Mesh {
        Mesh::new(
            count,
            HaSettings {
                cluster: true,
                brokers_url: "amqp:tcp:127.0.0.1:1,tcp:127.0.0.1:2".into(),
                public_url: "amqp:tcp:vip:5672".into(),
                replicate: ReplicationLevel::None,
                member: 0,
                name: String::new(),
            },
        )
    }

    /// Opens a connection on `shard` with the given preamble flags; returns what came back.
    pub fn open(&mut self, shard: u16, conn: u32, flags: u16) -> Vec<Frame> {
        self.shards[usize::from(shard)].handle_accept(ConnId(conn));
        let mut bytes = BytesMut::new();
        encode_preamble(Preamble { version: preamble_version(flags), flags }, &mut bytes);
        self.feed(shard, conn, bytes);
        self.take(shard, conn)
    }

    /// Opens a connection that must be served.
    pub fn connect(&mut self, shard: u16, conn: u32, flags: u16) {
        let frames = self.open(shard, conn, flags);
        assert!(matches!(frames.as_slice(), [Frame::Hello { .. }]), "{frames:?}");
    }

    pub fn send(&mut self, shard: u16, conn: u32, frame: &Frame) {
        let mut bytes = BytesMut::new();
        encode(frame, &mut bytes);
        self.feed(shard, conn, bytes);
    }

    /// Sends `frame` and returns what came back.
    pub fn ask(&mut self, shard: u16, conn: u32, frame: &Frame) -> Vec<Frame> {
        self.send(shard, conn, frame);
        self.take(shard, conn)
    }

    pub fn feed(&mut self, shard: u16, conn: u32, mut bytes: BytesMut) {
        self.shards[usize::from(shard)].handle_read(ConnId(conn), &mut bytes);
        self.settle();
    }

    /// Moves messages between shards until nothing moves, collecting client output.
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.shards.len() {
                self.shards[from].drive();
                while let Some(Transmit { conn, mut bytes, close }) = self.shards[from].poll_transmit() {
                    let frames = self.inbox.entry((from as u16, conn.0)).or_default();
                    while let Some(frame) = decode(&mut bytes, 1 << 24).expect("broker output decodes") {
                        frames.push(frame);
                    }
                    if close {
                        self.closed.push((from as u16, conn.0));
                    }
                }
                for to in 0..self.shards.len() {
                    if to == from {
                        continue;
                    }
                    let messages: Vec<_> = self.shards[from].poll_peer(ShardId(to as u16)).collect();
                    for message in messages {
                        moved = true;
                        self.shards[to].handle_peer(message);
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    pub fn take(&mut self, shard: u16, conn: u32) -> Vec<Frame> {
        self.inbox.remove(&(shard, conn)).unwrap_or_default()
    }

    /// Every shard's HA state.
    pub fn states(&self) -> Vec<BrokerState> {
        self.shards.iter().map(|s| s.ha().state()).collect()
    }
}

/// HA settings of a cluster member (`cluster`) or a standalone broker, with `ha-replicate` =
/// `replicate`.
pub fn ha_settings(cluster: bool, replicate: ReplicationLevel) -> HaSettings {
    HaSettings {
        cluster,
        brokers_url: if cluster { "amqp:tcp:127.0.0.1:1,tcp:127.0.0.1:2".into() } else { String::new() },
        public_url: String::new(),
        replicate,
        member: 0,
        name: String::new(),
    }
}

/// Promotes the mesh through the admin connection `admin` on shard 0; the promotion must succeed.
pub fn promote(mesh: &mut Mesh, admin: u32) {
    let frames = mesh.ask(0, admin, &Frame::HaPromote { request: RequestId(9000) });
    assert_eq!(frames, [Frame::Ok { request: RequestId(9000) }]);
}

/// Every shard's replication events since the last call, by shard.
pub fn replication_events(mesh: &mut Mesh) -> Vec<Vec<ReplicationEvent>> {
    mesh.shards
        .iter_mut()
        .map(|shard| {
            let mut out = Vec::new();
            shard.poll_replication(&mut out);
            out
        })
        .collect()
}

/// A queue name starting with `prefix` that shard `shard` of `count` owns.
pub fn name_on(shard: u16, count: u16, prefix: &str) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|name| shard_of(name, count) == ShardId(shard)).expect("a name")
}

/// A declare of queue `name` with default options.
pub fn declare(request: u32, name: &str) -> Frame {
    declare_with(request, name, QueueOptions::default())
}

/// A declare of queue `name` with `options`.
pub fn declare_with(request: u32, name: &str, options: QueueOptions) -> Frame {
    Frame::QueueDeclare { request: RequestId(request), name: name.into(), options, arguments: vec![] }
}
