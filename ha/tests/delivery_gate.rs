//! "Deliver only what the backups hold", end to end without IO: one primary shard (`Shard`) and its
//! replication (`PrimaryReplication`), wired the way the shell wires them, a producer and a
//! consumer as byte buffers, and a backup played by hand (batches taken, confirms given).
//!
//! What is checked: with a linked backup a message in an `all` queue is neither delivered nor
//! confirmed before the backup confirmed its batch, and is both right after, in order; a lost link
//! releases delivery; an expected backup (recovering mode, no link yet) holds the confirm but not
//! the delivery.
//!
//! Method: `Primary::pump` is the shell's loop: `drive`, then `replicate` (the events to the
//! streams, released holds and delivery bounds back to the shard) until nothing moves, then the
//! client bytes, decoded.

mod support;

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use ringmq_core::frame::{
    preamble_version, ConfirmOutcome, ConfirmRange, Frame, Message, Preamble, QueueOptions, PREAMBLE_FLAG_ADMIN,
};
use ringmq_core::ids::{ConnId, ConsumerId, RequestId, Seq, ShardId};
use ringmq_core::replication::{Hold, ReplicationEvent};
use ringmq_core::shard::{Shard, Transmit};
use ringmq_core::wire::{decode, encode, encode_preamble};
use ringmq_ha::link::LinkId;
use ringmq_ha::primary::replication::PrimaryReplication;

/// The admin connection that promotes.
const ADMIN: u32 = 99;
/// The producer's connection.
const PRODUCER: u32 = 1;
/// The consumer's connection.
const CONSUMER: u32 = 2;

/// A promoted one-shard primary (`ha-replicate all`) and its replication.
struct Primary {
    /// The shard.
    shard: Shard,
    /// Its replication streams.
    replication: PrimaryReplication,
    /// Scratch: events polled from the shard.
    events: Vec<ReplicationEvent>,
    /// Scratch: holds released by the streams.
    holds: Vec<Hold>,
    /// Frames each connection received, decoded.
    inbox: HashMap<u32, Vec<Frame>>,
}

impl Primary {
    fn new() -> Primary {
        let config = support::cluster_shard_config("amqp:tcp:127.0.0.1:1,tcp:127.0.0.1:2");
        let shard = Shard::new(ShardId(0), config);
        let replication = PrimaryReplication::new(shard.ha().epoch());
        let mut primary = Primary { shard, replication, events: Vec::new(), holds: Vec::new(), inbox: HashMap::new() };
        primary.connect(ADMIN, PREAMBLE_FLAG_ADMIN);
        let request = RequestId(1);
        assert_eq!(primary.ask(ADMIN, &Frame::HaPromote { request }), [Frame::Ok { request }]);
        // Promoted now: the streams stamp the new epoch.
        primary.replication = PrimaryReplication::new(primary.shard.ha().epoch());
        for conn in [PRODUCER, CONSUMER] {
            primary.connect(conn, 0);
        }
        primary
    }

    fn connect(&mut self, conn: u32, flags: u16) {
        self.shard.handle_accept(ConnId(conn));
        let mut bytes = BytesMut::new();
        encode_preamble(Preamble { version: preamble_version(flags), flags }, &mut bytes);
        self.shard.handle_read(ConnId(conn), &mut bytes);
        self.pump();
        assert!(matches!(self.take(conn).as_slice(), [Frame::Hello { .. }]));
    }

    fn ask(&mut self, conn: u32, frame: &Frame) -> Vec<Frame> {
        let mut bytes = BytesMut::new();
        encode(frame, &mut bytes);
        self.shard.handle_read(ConnId(conn), &mut bytes);
        self.pump();
        self.take(conn)
    }

    fn take(&mut self, conn: u32) -> Vec<Frame> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// The shell's pump: drive and replicate until nothing moves, then collect client output.
    fn pump(&mut self) {
        loop {
            self.shard.drive();
            if !self.replicate() {
                break;
            }
        }
        while let Some(Transmit { conn, mut bytes, .. }) = self.shard.poll_transmit() {
            let frames = self.inbox.entry(conn.0).or_default();
            while let Some(frame) = decode(&mut bytes, 1 << 24).expect("broker output decodes") {
                frames.push(frame);
            }
        }
    }

    /// The shell's `replicate`: events to the streams, then released holds and delivery bounds to
    /// the shard. Returns whether the shard has confirms or deliveries to drive.
    fn replicate(&mut self) -> bool {
        self.shard.poll_replication(&mut self.events);
        for event in self.events.drain(..) {
            self.replication.handle_event(event);
        }
        self.holds.clear();
        let released = self.replication.poll_released(&mut self.holds);
        self.shard.handle_holds_released(&self.holds);
        let deliverable = self.shard.handle_replicated(self.replication.poll_replicated());
        released > 0 || deliverable
    }

    /// A backup's link opens with the shard's snapshot (after pumping, as the shell does).
    fn open_link(&mut self, id: u32, backup: &str) {
        self.pump();
        let mut snapshot = Vec::new();
        self.shard.replication_snapshot_for(None, &mut snapshot);
        self.replication.handle_link_opened(link(id), backup, snapshot);
        self.shard.set_replica_holds(self.replication.holding_streams());
    }

    /// The backup of `link` confirms every batch there is to send.
    fn confirm_all(&mut self, id: u32) {
        while let Some(batch) = self.replication.poll_batch(link(id), 64 * 1024) {
            self.replication.handle_confirm(link(id), batch.stream_seq).unwrap();
        }
        self.pump();
    }

    fn publish(&mut self, first_seq: u64, bodies: &[&'static str]) {
        let messages = bodies
            .iter()
            .map(|body| Message {
                routing_key: Bytes::from_static(b"q"),
                body: Bytes::from_static(body.as_bytes()),
                ..Message::default()
            })
            .collect();
        let publish = Frame::Publish { exchange: String::new(), first_seq: Seq(first_seq), messages };
        let mut bytes = BytesMut::new();
        encode(&publish, &mut bytes);
        self.shard.handle_read(ConnId(PRODUCER), &mut bytes);
        self.pump();
    }

    /// The bodies delivered to the consumer since the last call, in order.
    fn delivered(&mut self) -> Vec<String> {
        let mut bodies = Vec::new();
        for frame in self.take(CONSUMER) {
            if let Frame::Deliver { messages, .. } = frame {
                for delivered in messages {
                    bodies.push(String::from_utf8(delivered.message.body.to_vec()).unwrap());
                }
            }
        }
        bodies
    }

    /// The producer's confirmed seqs since the last call, as (first, last) ranges.
    fn confirmed(&mut self) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        for frame in self.take(PRODUCER) {
            if let Frame::Confirm { ranges: confirmed } = frame {
                for ConfirmRange { first, last, outcome } in confirmed {
                    assert_eq!(outcome, ConfirmOutcome::Stored);
                    ranges.push((first.0, last.0));
                }
            }
        }
        ranges
    }
}

/// A primary with queue `q` (level `all`) and a consumer subscribed to it.
fn primary_with_consumer() -> Primary {
    let mut primary = Primary::new();
    let declare = Frame::QueueDeclare {
        request: RequestId(2),
        name: "q".into(),
        options: QueueOptions::default(),
        arguments: vec![],
    };
    assert_eq!(primary.ask(PRODUCER, &declare), [Frame::Ok { request: RequestId(2) }]);
    let subscribe =
        Frame::Subscribe { request: RequestId(3), consumer: ConsumerId(1), queue: "q".into(), prefetch: 100 };
    assert_eq!(primary.ask(CONSUMER, &subscribe), [Frame::Ok { request: RequestId(3) }]);
    primary
}

#[test]
fn a_message_reaches_the_consumer_only_once_the_linked_backup_confirmed_it() {
    // Goal: the rule on the shell's wiring: neither delivery nor confirm before the
    // backup's confirm, both right after, in publish order.
    let mut primary = primary_with_consumer();
    primary.open_link(1, "b1:1");
    primary.publish(0, &["a", "b"]);
    assert!(primary.delivered().is_empty(), "delivered before the backup held it");
    assert_eq!(primary.confirmed(), []);
    // The batch is sent but not confirmed yet: still nothing.
    let batch = primary.replication.poll_batch(link(1), 64 * 1024).unwrap();
    primary.pump();
    assert!(primary.delivered().is_empty());
    primary.replication.handle_confirm(link(1), batch.stream_seq).unwrap();
    primary.pump();
    assert_eq!(primary.delivered(), ["a", "b"]);
    assert_eq!(primary.confirmed(), [(0, 1)]);
    // Later publishes follow the same rule, behind the earlier ones.
    primary.publish(2, &["c"]);
    assert!(primary.delivered().is_empty());
    primary.confirm_all(1);
    assert_eq!(primary.delivered(), ["c"]);
    assert_eq!(primary.confirmed(), [(2, 2)]);
}

#[test]
fn a_lost_link_releases_delivery_and_without_a_backup_messages_go_at_once() {
    // Goal: a backup that is dropped stops holding consumers (as it stops holding publishers);
    // with no backup linked a message is delivered at once.
    let mut primary = primary_with_consumer();
    // No link yet: delivered and confirmed at once.
    primary.publish(0, &["early"]);
    assert_eq!(primary.delivered(), ["early"]);
    assert_eq!(primary.confirmed(), [(0, 0)]);
    primary.open_link(1, "b1:1");
    primary.publish(1, &["held"]);
    primary.replication.poll_batch(link(1), 64 * 1024).unwrap();
    primary.pump();
    assert!(primary.delivered().is_empty());
    // The backup is dropped (heartbeat expired): delivery and confirm go on.
    primary.pump();
    primary.replication.handle_link_lost(link(1));
    primary.shard.set_replica_holds(primary.replication.holding_streams());
    primary.pump();
    assert_eq!(primary.delivered(), ["held"]);
    assert_eq!(primary.confirmed(), [(1, 1)]);
}

#[test]
fn an_expected_backup_holds_the_confirm_but_not_the_delivery() {
    // Goal: recovering mode: a backup expected back but not linked yet holds confirms (until it
    // caught up or timed out), never consumers.
    let mut primary = primary_with_consumer();
    primary.pump();
    primary.replication.expect_backups(&["b1:1".to_string()]);
    primary.shard.set_replica_holds(primary.replication.holding_streams());
    primary.publish(0, &["a"]);
    assert_eq!(primary.delivered(), ["a"], "an expected backup stalled the consumer");
    assert_eq!(primary.confirmed(), [], "confirmed before the expected backup came back");
    // It links and catches up: the confirm comes.
    primary.open_link(1, "b1:1");
    primary.confirm_all(1);
    assert_eq!(primary.confirmed(), [(0, 0)]);
}

/// The replication link of connection `id`.
fn link(id: u32) -> LinkId {
    LinkId(ConnId(id))
}
