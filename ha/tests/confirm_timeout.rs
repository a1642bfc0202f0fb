//! The confirm timeout of a served backup link, end to end without IO: one promoted primary shard
//! (`ShardNode`) serving one backup link played by hand (preamble, `link-open`, heartbeats and
//! confirms as bytes), on a virtual clock.
//!
//! What is checked: a batch the backup never confirms ends the link (shut down, counted as
//! `unconfirmed`) exactly `LINK_UNCONFIRMED_INTERVALS_MAX` heartbeat intervals after it was sent,
//! and not before, although the backup's heartbeats kept the link from counting as silent; a
//! confirm that comes in time keeps the link, and the next batch's wait starts at that confirm.
//!
//! Method: `Primary` is the shell: every input is followed by `pump` and the outputs are carried
//! out at once (writes kept per connection, closes noted); time moves only when the test says,
//! and `handle_timeout` runs whenever `poll_timeout` is due, as a shell's timer would.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq_core::frame::{
    Frame, Preamble, QueueOptions, LINK_VERSION, PREAMBLE_FLAG_ADMIN, PREAMBLE_FLAG_BACKUP, PROTOCOL_VERSION,
};
use ringmq_core::ids::{ConnId, RequestId, ShardId};
use ringmq_core::shard::Shard;
use ringmq_core::wire::{encode, encode_preamble};
use ringmq_ha::limits::{BATCH_BYTES_MAX, LINK_UNCONFIRMED_INTERVALS_MAX};
use ringmq_ha::link::frame::{decode_link_frame, encode_link_frame, LinkFrame, LinkOpen};
use ringmq_ha::link::record::{encode_confirm, StreamSeq};
use ringmq_ha::node::output::NodeOutput;
use ringmq_ha::node::{NodeConfig, ShardNode};

/// `link-heartbeat-interval`.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// The admin connection that promotes.
const ADMIN: u32 = 1;
/// The client that declares queues.
const CLIENT: u32 = 2;
/// The backup's link.
const LINK: u32 = 3;

/// A promoted one-shard primary in a cluster of two, with its outputs carried out.
struct Primary {
    /// The node.
    node: ShardNode,
    /// Time zero of the virtual clock.
    start: Instant,
    /// The virtual clock: now.
    now: Instant,
    /// Bytes written to each connection and not read by the test yet.
    written: HashMap<u32, BytesMut>,
    /// Connections the node closed or shut down, in order.
    ended: Vec<u32>,
    /// The next request id.
    request: u32,
}

impl Primary {
    /// A shard of `b0:1` in the cluster `b0:1,b1:1`, promoted by an admin connection.
    fn promoted() -> Primary {
        let config = support::cluster_shard_config("amqp:tcp:b0:1,tcp:b1:1");
        let node_config = NodeConfig {
            heartbeat_interval: HEARTBEAT,
            maintenance_interval: Duration::from_secs(3600),
            peer_addresses: vec!["b1:1".into()],
            own_address: "b0:1".into(),
            backup_timeout: Duration::from_secs(10),
            shard_count: 1,
            min_ready_backups: 0,
            min_ready_timeout: None,
        };
        let start = Instant::now();
        let node = ShardNode::new(Shard::new(ShardId(0), config), node_config, start);
        let mut primary = Primary { node, start, now: start, written: HashMap::new(), ended: Vec::new(), request: 0 };
        primary.carry_out();
        primary.connect(ADMIN, PREAMBLE_FLAG_ADMIN);
        let request = primary.next_request();
        primary.client_frame(ADMIN, &Frame::HaPromote { request });
        assert!(primary.node.shard().ha().state().is_primary(), "promoted");
        primary.connect(CLIENT, 0);
        primary
    }

    /// Pumps the node and carries out its outputs.
    fn carry_out(&mut self) {
        self.node.pump(self.now);
        while let Some(output) = self.node.poll_output() {
            match output {
                NodeOutput::Write { conn, bytes } => self.written.entry(conn.0).or_default().extend_from_slice(&bytes),
                NodeOutput::Close { conn } | NodeOutput::Shutdown { conn } => self.ended.push(conn.0),
                // Dials, probes and controls to other shards: none matters to one shard's link.
                _ => {}
            }
        }
    }

    /// Accepts `conn` and reads its preamble.
    fn connect(&mut self, conn: u32, flags: u16) {
        self.node.handle_accept(ConnId(conn));
        let mut bytes = BytesMut::new();
        // A backup link announces the replication link's version, a client the protocol's.
        let version = if flags & PREAMBLE_FLAG_BACKUP != 0 { LINK_VERSION } else { PROTOCOL_VERSION };
        encode_preamble(Preamble { version, flags }, &mut bytes);
        self.read(conn, bytes);
    }

    /// `bytes` arrive on `conn` now.
    fn read(&mut self, conn: u32, mut bytes: BytesMut) {
        self.node.handle_read(ConnId(conn), &mut bytes, self.now);
        self.carry_out();
    }

    /// A client frame arrives on `conn` now.
    fn client_frame(&mut self, conn: u32, frame: &Frame) {
        let mut bytes = BytesMut::new();
        encode(frame, &mut bytes);
        self.read(conn, bytes);
    }

    /// A link frame from the backup arrives now.
    fn link_frame(&mut self, frame: &LinkFrame) {
        let mut bytes = BytesMut::new();
        encode_link_frame(frame, &mut bytes);
        self.read(LINK, bytes);
    }

    fn next_request(&mut self) -> RequestId {
        self.request += 1;
        RequestId(self.request)
    }

    /// The backup `b1:1` links: preamble, then `link-open` for shard 0 with nothing held.
    fn open_link(&mut self) {
        self.connect(LINK, PREAMBLE_FLAG_BACKUP);
        let epoch_highest = self.node.shard().ha().epoch();
        let open = LinkOpen { backup: "b1:1".into(), shard: 0, shard_count: 1, epoch_highest, holdings: None };
        self.link_frame(&LinkFrame::Open(open));
        assert!(self.link_frames().iter().any(|frame| matches!(frame, LinkFrame::Accepted(_))), "link accepted");
    }

    /// A replicated queue is declared: the stream sends a batch with its create.
    fn declare(&mut self, name: &str) {
        let request = self.next_request();
        let declare =
            Frame::QueueDeclare { request, name: name.into(), options: QueueOptions::default(), arguments: vec![] };
        self.client_frame(CLIENT, &declare);
    }

    /// The seqs of the batches the primary wrote on the link since the last call (other frames
    /// are dropped).
    fn batches(&mut self) -> Vec<StreamSeq> {
        let frames = self.link_frames();
        frames
            .into_iter()
            .filter_map(|frame| if let LinkFrame::Batch(b) = frame { Some(b.stream_seq) } else { None })
            .collect()
    }

    /// The link frames written on the link since the last call.
    fn link_frames(&mut self) -> Vec<LinkFrame> {
        let mut bytes = self.written.remove(&LINK).unwrap_or_default();
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            match decode_link_frame(&mut bytes, BATCH_BYTES_MAX) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => panic!("a partial frame on the link"),
                Err(error) => panic!("the primary wrote an undecodable frame on the link: {error}"),
            }
        }
        frames
    }

    /// Moves the clock to `at` (from the start) in steps: the backup sends a heartbeat every half
    /// interval (so the link never counts as silent), every deadline on the way is handled, and
    /// `handle_timeout` runs at `at` itself (an early wake-up, which a shell's timer may have).
    fn run_until(&mut self, at: Duration) {
        let end = self.start + at;
        let mut next_heartbeat = self.now + HEARTBEAT / 2;
        while self.now < end {
            let deadline = self.node.poll_timeout().unwrap_or(end);
            let step = deadline.min(next_heartbeat).min(end).max(self.now);
            self.now = step;
            // At `end` too, due or not: the checks at `end` see exactly what the node decides then.
            if deadline <= self.now || self.now == end {
                self.node.handle_timeout(self.now);
                self.carry_out();
                // Else a shell would wake again at once, for ever (and this loop too).
                let next = self.node.poll_timeout();
                assert!(next.is_none_or(|next| next > self.now), "a deadline at {next:?} still due after handling it");
            }
            if next_heartbeat <= self.now {
                if !self.ended.contains(&LINK) {
                    self.link_frame(&LinkFrame::Native(Frame::Heartbeat));
                }
                next_heartbeat = self.now + HEARTBEAT / 2;
            }
            if step == end {
                break;
            }
        }
    }

    /// The backup confirms every batch up to `seq` now.
    fn confirm(&mut self, seq: StreamSeq) {
        let mut bytes = BytesMut::new();
        encode_confirm(seq, &mut bytes);
        self.read(LINK, bytes);
    }
}

/// The bound: `LINK_UNCONFIRMED_INTERVALS_MAX` heartbeat intervals.
fn bound() -> Duration {
    HEARTBEAT * LINK_UNCONFIRMED_INTERVALS_MAX
}

#[test]
fn a_batch_never_confirmed_ends_the_link_after_the_bound_and_not_before() {
    // Goal: a lost batch (the backup alive, heartbeating, never confirming) is found by the
    // primary itself: the link is shut down and counted `unconfirmed` once the batch waited the
    // bound, not a moment earlier, and not as silent.
    let mut primary = Primary::promoted();
    primary.open_link();
    assert!(primary.batches().is_empty(), "nothing to catch up");
    // At 10 ms a queue is declared: batch 1 goes out, and is never confirmed.
    primary.run_until(Duration::from_millis(10));
    primary.declare("q");
    assert_eq!(primary.batches(), [StreamSeq(1)]);
    // Just before the bound the link stands.
    primary.run_until(Duration::from_millis(10) + bound() - Duration::from_millis(1));
    assert!(primary.ended.is_empty(), "ended before the bound: {:?}", primary.ended);
    assert_eq!(primary.node.link_loss_counters().unconfirmed, 0);
    // At the bound the node's deadline ends the link as unconfirmed.
    primary.run_until(Duration::from_millis(10) + bound());
    assert_eq!(primary.ended, [LINK]);
    let counters = primary.node.link_loss_counters();
    assert_eq!((counters.unconfirmed, counters.silent, counters.closed), (1, 0, 0));
    // The shell reports the end; the node already forgot the link, and counts nothing twice.
    primary.node.handle_closed(ConnId(LINK), primary.now);
    primary.carry_out();
    assert_eq!(primary.node.link_loss_counters(), counters);
}

#[test]
fn a_confirm_in_time_keeps_the_link_and_restarts_the_wait_for_the_next_batch() {
    // Goal: a backup that confirms within the bound keeps its link however long the run, and a
    // batch sent before the confirm of the one ahead of it waits only from that confirm.
    let mut primary = Primary::promoted();
    primary.open_link();
    // Batch 1 at 0 ms, batch 2 at 100 ms (half the bound later).
    primary.declare("q1");
    primary.run_until(HEARTBEAT);
    primary.declare("q2");
    assert_eq!(primary.batches(), [StreamSeq(1), StreamSeq(2)]);
    // Batch 1 confirmed 1 ms before its bound: batch 2 now waits from here.
    let first_confirm = bound() - Duration::from_millis(1);
    primary.run_until(first_confirm);
    primary.confirm(StreamSeq(1));
    // Batch 2 was sent a full bound ago, and still the link stands: it became the oldest at the
    // confirm.
    primary.run_until(HEARTBEAT + bound());
    assert!(primary.ended.is_empty(), "ended: {:?}", primary.ended);
    // Confirmed in time too; then nothing is unconfirmed, and nothing ends the link.
    primary.run_until(first_confirm + bound() - Duration::from_millis(1));
    primary.confirm(StreamSeq(2));
    primary.run_until(first_confirm + bound() * 5);
    assert!(primary.ended.is_empty(), "ended: {:?}", primary.ended);
    assert_eq!(primary.node.link_loss_counters().unconfirmed, 0);
    // Batch 3, never confirmed, still ends it: the timer did not stop for good.
    primary.declare("q3");
    assert_eq!(primary.batches(), [StreamSeq(3)]);
    let sent = primary.now - primary.start;
    primary.run_until(sent + bound());
    assert_eq!(primary.ended, [LINK]);
    assert_eq!(primary.node.link_loss_counters().unconfirmed, 1);
}
