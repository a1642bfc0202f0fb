//! A publish that reaches its queue's shard ahead of the promotion it was accepted in, end to end
//! without IO: every shard of one broker is a `ShardNode`, the shard-to-shard rings and controls
//! are queues the test delivers from in the order it chooses, and clients are bytes.
//!
//! What is checked: a promoted broker in `recovering` holds the ack of a publish to a replicated
//! queue for its expected backup even when the queue's shard had not applied the promotion when
//! the publish reached it, whether the publish came on another ring than the promotion (the
//! producer's shard is neither shard 0 nor the queue's), or on the same ring right behind it with
//! no pump in between (as the broker's shell drains a ring in batches); the ack is released when
//! `ha-backup-timeout` gives up on that backup, and not before.
//!
//! Method: `Broker` is the shell. A broker `b0:1` of the cluster `b0:1,b1:1` starts `joining`, holds
//! a replica of a queue (`all`) that shard 1 owns, and learns from its primary's `members` that
//! `b1:1` is ready: promoted, it expects `b1:1`, which never links. Outputs are carried out after
//! every input, but messages between shards wait on their ring until the test delivers them.

mod support;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq_core::broker_state::BrokerState;
use ringmq_core::frame::{
    ConfirmOutcome, ConfirmRange, Frame, Message, Preamble, QueueOptions, PREAMBLE_FLAG_ADMIN, PROTOCOL_VERSION,
};
use ringmq_core::ids::{ConnId, RequestId, Seq, ShardId};
use ringmq_core::replication::Record;
use ringmq_core::replication_level::ReplicationLevel;
use ringmq_core::shard::{shard_of, Shard, ShardConfig};
use ringmq_core::shard_message::ShardMessage;
use ringmq_core::wire::{decode, encode, encode_preamble};
use ringmq_ha::node::output::{NodeControl, NodeOutput};
use ringmq_ha::node::{NodeConfig, ShardNode};

/// This broker's address, first in the cluster's URL.
const OWN: &str = "b0:1";
/// The other broker: ready under the previous primary, so expected after the promotion.
const EXPECTED: &str = "b1:1";
/// `ha-backup-timeout`.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The admin connection that promotes, on shard 0.
const ADMIN: u32 = 1;
/// The producer's connection.
const PRODUCER: u32 = 2;

/// One broker's shards and the queues between them.
struct Broker {
    /// The nodes; index = shard id.
    nodes: Vec<ShardNode>,
    /// Shard-to-shard messages not delivered yet, by (from, to), in order.
    rings: BTreeMap<(u16, u16), VecDeque<ShardMessage>>,
    /// Node controls not delivered yet, by (from, to), in order.
    controls: BTreeMap<(u16, u16), VecDeque<NodeControl>>,
    /// Frames written to each (shard, connection), decoded, not read by the test yet.
    received: HashMap<(u16, u32), Vec<Frame>>,
    /// Time zero of the virtual clock.
    start: Instant,
    /// The virtual clock: now.
    now: Instant,
}

impl Broker {
    /// A joining broker of `shard_count` shards holding a replica of the `all` queue `queue`,
    /// whose primary said `b0:1` and `b1:1` are ready.
    fn joining_backup(shard_count: u16, queue: &str) -> Broker {
        let config = ShardConfig { shard_count, ..support::cluster_shard_config("amqp:tcp:b0:1,tcp:b1:1") };
        let mut shards: Vec<Shard> = (0..shard_count).map(|id| Shard::new(ShardId(id), config.clone())).collect();
        // The queue's records, as the backup's links apply them: its owner makes the `Queue`,
        // shard 0 adds the name to every shard's routing.
        for shard in &mut shards {
            let options = QueueOptions::default();
            shard.apply_replica(Record::QueueCreated { name: queue.into(), options, level: ReplicationLevel::All });
        }
        settle_shards(&mut shards);
        // What shard 0's link does on `members`: a promotion will expect one backup.
        shards[0].set_expected_backups(1);
        let start = Instant::now();
        let node_config = NodeConfig {
            heartbeat_interval: Duration::from_millis(100),
            maintenance_interval: Duration::from_secs(3600),
            peer_addresses: vec![EXPECTED.into()],
            own_address: OWN.into(),
            backup_timeout: BACKUP_TIMEOUT,
            shard_count,
            min_ready_backups: 0,
            min_ready_timeout: None,
        };
        let nodes = shards.into_iter().map(|shard| ShardNode::new(shard, node_config.clone(), start)).collect();
        let mut broker = Broker {
            nodes,
            rings: BTreeMap::new(),
            controls: BTreeMap::new(),
            received: HashMap::new(),
            start,
            now: start,
        };
        for shard in 0..shard_count {
            // Every shard's copy of `members` (shard 0's link sends it to the others).
            let control = NodeControl::Members { ready: vec![OWN.into(), EXPECTED.into()] };
            broker.nodes[usize::from(shard)].handle_control(control, start);
            broker.carry_out(shard);
        }
        broker
    }

    /// Pumps shard `shard`'s node and carries out its outputs: bytes are decoded per connection,
    /// messages and controls for other shards wait on their queues; dials, probes and closes do
    /// not matter here (the expected backup never links).
    fn carry_out(&mut self, shard: u16) {
        let node = &mut self.nodes[usize::from(shard)];
        node.pump(self.now);
        while let Some(output) = node.poll_output() {
            match output {
                NodeOutput::Write { conn, mut bytes } => {
                    let frames = self.received.entry((shard, conn.0)).or_default();
                    while let Some(frame) = decode(&mut bytes, 1 << 24).expect("the broker's output decodes") {
                        frames.push(frame);
                    }
                }
                NodeOutput::Peer { shard: to, message } => {
                    self.rings.entry((shard, to.0)).or_default().push_back(message);
                }
                NodeOutput::Control { shard: to, control } => {
                    self.controls.entry((shard, to)).or_default().push_back(control);
                }
                _ => {}
            }
        }
    }

    /// Accepts `conn` on `shard` with the preamble `flags`; it must be served.
    fn connect(&mut self, shard: u16, conn: u32, flags: u16) {
        self.nodes[usize::from(shard)].handle_accept(ConnId(conn));
        let mut bytes = BytesMut::new();
        encode_preamble(Preamble { version: PROTOCOL_VERSION, flags }, &mut bytes);
        self.read(shard, conn, bytes);
        let frames = self.take(shard, conn);
        assert!(matches!(frames.as_slice(), [Frame::Hello { .. }]), "not served: {frames:?}");
    }

    /// `frame` arrives on `conn` of `shard` now.
    fn send(&mut self, shard: u16, conn: u32, frame: &Frame) {
        let mut bytes = BytesMut::new();
        encode(frame, &mut bytes);
        self.read(shard, conn, bytes);
    }

    fn read(&mut self, shard: u16, conn: u32, mut bytes: BytesMut) {
        self.nodes[usize::from(shard)].handle_read(ConnId(conn), &mut bytes, self.now);
        self.carry_out(shard);
    }

    /// The frames written to `conn` of `shard` since the last call.
    fn take(&mut self, shard: u16, conn: u32) -> Vec<Frame> {
        self.received.remove(&(shard, conn)).unwrap_or_default()
    }

    /// Promotes the broker through the admin connection on shard 0; shard 0 applies it at once,
    /// the other shards when their ring from shard 0 is delivered.
    fn promote(&mut self) {
        self.connect(0, ADMIN, PREAMBLE_FLAG_ADMIN);
        self.send(0, ADMIN, &Frame::HaPromote { request: RequestId(1) });
        assert_eq!(self.nodes[0].shard().ha().state(), BrokerState::Recovering, "shard 0 promoted");
    }

    /// Delivers every message waiting on the ring `from` -> `to`, one input each, each followed
    /// by a pump.
    fn deliver_ring(&mut self, from: u16, to: u16) {
        while let Some(message) = self.rings.get_mut(&(from, to)).and_then(VecDeque::pop_front) {
            self.nodes[usize::from(to)].handle_peer(message, self.now);
            self.carry_out(to);
        }
    }

    /// Delivers every message waiting on the ring `from` -> `to` as the broker's shell drains a
    /// ring: one input per message, then one pump.
    fn deliver_ring_batch(&mut self, from: u16, to: u16) {
        let messages = self.rings.remove(&(from, to)).unwrap_or_default();
        assert!(!messages.is_empty(), "nothing on the ring {from} -> {to}");
        for message in messages {
            self.nodes[usize::from(to)].handle_peer(message, self.now);
        }
        self.carry_out(to);
    }

    /// Delivers every ring and control queue until nothing moves.
    fn deliver_all(&mut self) {
        loop {
            let ring = self.rings.iter().find(|(_, queue)| !queue.is_empty()).map(|(&key, _)| key);
            if let Some((from, to)) = ring {
                self.deliver_ring(from, to);
                continue;
            }
            let control = self.controls.iter_mut().find_map(|(&(_, to), queue)| Some((to, queue.pop_front()?)));
            let Some((to, control)) = control else { break };
            self.nodes[usize::from(to)].handle_control(control, self.now);
            self.carry_out(to);
        }
    }

    /// Moves the clock to `at` (from the start), running every node's deadlines on the way and
    /// delivering what they send.
    fn run_until(&mut self, at: Duration) {
        let end = self.start + at;
        loop {
            let due = (0..self.nodes.len())
                .filter_map(|shard| Some((self.nodes[shard].poll_timeout()?, shard)))
                .filter(|(deadline, _)| *deadline <= end)
                .min();
            let Some((deadline, shard)) = due else { break };
            self.now = self.now.max(deadline);
            self.nodes[shard].handle_timeout(self.now);
            self.carry_out(shard as u16);
            self.deliver_all();
        }
        self.now = end;
    }
}

/// Moves messages between bare shards until nothing moves.
fn settle_shards(shards: &mut [Shard]) {
    loop {
        let mut moved = false;
        for from in 0..shards.len() {
            shards[from].drive();
            for to in (0..shards.len()).filter(|&to| to != from) {
                let messages: Vec<ShardMessage> = shards[from].poll_peer(ShardId(to as u16)).collect();
                for message in messages {
                    moved = true;
                    shards[to].handle_peer(message);
                }
            }
        }
        if !moved {
            break;
        }
    }
}

/// A queue name that shard `shard` of `count` owns.
fn queue_on(shard: u16, count: u16) -> String {
    (0..).map(|i| format!("q{i}")).find(|name| shard_of(name, count) == ShardId(shard)).expect("a name")
}

/// A publish of one message, seq 0, to `queue` through the default exchange.
fn publish(queue: &str) -> Frame {
    let message =
        Message { routing_key: Bytes::from(queue.to_owned()), body: Bytes::from_static(b"m"), ..Message::default() };
    Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![message] }
}

/// The confirm of seq 0 as stored.
fn stored() -> Frame {
    Frame::Confirm { ranges: vec![ConfirmRange { first: Seq(0), last: Seq(0), outcome: ConfirmOutcome::Stored }] }
}

#[test]
fn a_publish_on_another_ring_than_the_promotion_is_held_for_the_expected_backup() {
    // Goal: the producer's shard applied the promotion, the queue's shard had not when the
    // publish reached it (it came on another ring than the promotion); its ack still waits for
    // the expected backup.
    let queue = queue_on(1, 3);
    let mut broker = Broker::joining_backup(3, &queue);
    broker.promote();
    // Shard 2 applies the promotion and admits a producer; shard 1 has not applied it yet.
    broker.deliver_ring(0, 2);
    assert_eq!(broker.nodes[2].shard().ha().state(), BrokerState::Recovering);
    assert_eq!(broker.nodes[1].shard().ha().state(), BrokerState::Joining);
    broker.connect(2, PRODUCER, 0);
    broker.send(2, PRODUCER, &publish(&queue));
    // The publish reaches shard 1 ahead of the promotion; then everything else is delivered.
    broker.deliver_ring(2, 1);
    assert_eq!(broker.nodes[1].early_enqueues_kept(), 1, "kept for the promotion");
    broker.deliver_all();
    assert_eq!(broker.nodes[1].shard().ha().state(), BrokerState::Recovering);
    // Held for b1:1, which never links: no ack until `ha-backup-timeout` gives up on it.
    assert_eq!(broker.take(2, PRODUCER), [], "acked without the expected backup");
    broker.run_until(BACKUP_TIMEOUT - Duration::from_millis(1));
    assert_eq!(broker.take(2, PRODUCER), [], "acked before ha-backup-timeout");
    broker.run_until(BACKUP_TIMEOUT);
    assert_eq!(broker.take(2, PRODUCER), [stored()]);
    assert_eq!(broker.nodes[0].shard().ha().state(), BrokerState::Active);
}

#[test]
fn a_publish_right_behind_the_promotion_on_one_ring_is_held_for_the_expected_backup() {
    // Goal: the promotion and a publish behind it on the same ring, handled with no pump in
    // between (the broker's shell drains a ring in batches): the ack still waits for the
    // expected backup.
    let queue = queue_on(1, 2);
    let mut broker = Broker::joining_backup(2, &queue);
    broker.promote();
    // The producer on shard 0 publishes; its enqueue follows the promotion on the ring to shard 1.
    broker.connect(0, PRODUCER, 0);
    broker.send(0, PRODUCER, &publish(&queue));
    broker.deliver_ring_batch(0, 1);
    assert_eq!(broker.nodes[1].early_enqueues_kept(), 0, "in order behind the promotion: nothing to keep");
    broker.deliver_all();
    assert_eq!(broker.nodes[1].shard().ha().state(), BrokerState::Recovering);
    // Held for b1:1, which never links: no ack until `ha-backup-timeout` gives up on it.
    assert_eq!(broker.take(0, PRODUCER), [], "acked without the expected backup");
    broker.run_until(BACKUP_TIMEOUT - Duration::from_millis(1));
    assert_eq!(broker.take(0, PRODUCER), [], "acked before ha-backup-timeout");
    broker.run_until(BACKUP_TIMEOUT);
    assert_eq!(broker.take(0, PRODUCER), [stored()]);
}
