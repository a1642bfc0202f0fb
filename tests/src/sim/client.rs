//! Simulated clients: a numbered producer and a consumer that acks, speaking the native protocol
//! through `ringmq_core::wire`, and failing over as the real client does.
//!
//! Both connect to the brokers in turn until one answers `hello` (a backup answers `error`
//! `NotPrimary` and closes, and the client moves on at once; after a whole pass it waits
//! `retry_interval`). Once connected they declare the queue (`qpid.replicate=all`, idempotent) and
//! then:
//! - the producer publishes numbered messages (body = the number in decimal) with the header
//!   `x-ringmq-dedup: <id>/<number>`, as the real client does with a producer id, keeping at most
//!   `window` unconfirmed. After a failover it sends every unconfirmed message again, in order,
//!   with the same header, before new ones. A rejected confirm closes the connection so the
//!   message is sent again after the reconnect (the real client would report it; here it must
//!   still arrive).
//! - the consumer subscribes with a prefetch, records each delivery (number, redelivered flag)
//!   and acks after a short delay.
//!
//! What they saw goes to the runner as `ClientNote`s, which the invariants check.
//!
//! Not here: the bytes' travel (`network`), judging what was seen (`invariants`).
//!
//! Invariants:
//! - A producer's numbers are consecutive from 0; a number is in `unconfirmed` from its first send
//!   until a `stored` confirm for it arrives, and in `confirmed` after.
//! - Publish sequence numbers restart at 0 on each connection and are consecutive on it.
//! - The consumer acks only tags of its current connection.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ringmq_core::frame::{
    ConfirmOutcome, Frame, Header, Message, Preamble, QueueOptions, Settlement, TagRange, PROTOCOL_VERSION,
};
use ringmq_core::ids::{ConsumerId, RequestId, Seq, Tag};
use ringmq_core::wire::codec;

use super::clock::SimTime;
use super::network::SimConnId;
use super::rng::SimRng;

/// The queue the clients use by default: owned by shard 0 (`shard_of`).
pub const QUEUE: &str = "sim";
/// A queue owned by shard 1 of a broker of two shards, for runs whose replication must cross to
/// the other shard's streams (`SimConfig::queue`).
pub const QUEUE_SHARD_1: &str = "sim-2";

/// What a client asks the runner to do.
#[derive(Debug)]
pub enum ClientAction {
    /// Open a connection to a broker.
    Dial {
        /// The broker's index.
        broker: usize,
    },
    /// Write bytes on the connection.
    Write {
        /// The connection.
        conn: SimConnId,
        /// The bytes.
        bytes: BytesMut,
    },
    /// Close the connection (graceful).
    Close {
        /// The connection.
        conn: SimConnId,
    },
    /// Wake the client at this time.
    WakeAt(SimTime),
}

/// What a client saw, for the invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientNote {
    /// The producer got a `stored` confirm for this number on this connection.
    Confirmed {
        /// The message number.
        number: u64,
        /// The connection it came on.
        conn: SimConnId,
        /// When its last publish was sent (on that connection).
        published_at: SimTime,
    },
    /// The consumer got a delivery.
    Delivered {
        /// The message number.
        number: u64,
        /// The broker's redelivered flag.
        redelivered: bool,
        /// The connection it came on.
        conn: SimConnId,
    },
    /// The consumer sent an ack for these numbers on this connection (the runner adds the
    /// stream offset that tells when the broker got it).
    Acked {
        /// The message numbers.
        numbers: Vec<u64>,
        /// The connection.
        conn: SimConnId,
    },
    /// A confirm other than `stored` (the message is sent again after a reconnect).
    Rejected {
        /// The message number.
        number: u64,
        /// The reason.
        reason: String,
    },
    /// The client connected to a broker and was served.
    Served {
        /// The broker's index.
        broker: usize,
    },
}

/// Where a client's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection; dial when `retry_at` comes.
    Idle,
    /// A dial is out.
    Dialing,
    /// Preamble sent; waiting for `hello` or `error`.
    AwaitHello,
    /// Declare sent.
    AwaitDeclare(RequestId),
    /// Subscribe sent (consumer).
    AwaitSubscribe(RequestId),
    /// Serving.
    Ready,
    /// Closing: waiting for the end of the connection.
    Closing,
}

/// The connection and failover state both clients share.
#[derive(Debug)]
struct ClientLink {
    /// The current connection.
    conn: Option<SimConnId>,
    /// The broker it goes to.
    broker: usize,
    /// Where it is.
    phase: Phase,
    /// Bytes received and not yet decoded.
    rx: BytesMut,
    /// When to dial next while idle.
    retry_at: SimTime,
    /// Brokers tried in this pass.
    tried_in_pass: usize,
    /// Brokers in the cluster.
    brokers: usize,
    /// The wait after a whole pass failed.
    retry_interval: Duration,
    /// The next request id.
    next_request: u32,
    /// The queue.
    queue: &'static str,
}

impl ClientLink {
    fn new(brokers: usize, first: usize, retry_interval: Duration, queue: &'static str) -> ClientLink {
        ClientLink {
            conn: None,
            broker: first,
            phase: Phase::Idle,
            rx: BytesMut::new(),
            retry_at: SimTime(0),
            tried_in_pass: 0,
            brokers,
            retry_interval,
            next_request: 0,
            queue,
        }
    }

    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// While idle and due, dials the next broker.
    fn wake(&mut self, now: SimTime, actions: &mut Vec<ClientAction>) {
        if self.phase == Phase::Idle {
            if now >= self.retry_at {
                self.phase = Phase::Dialing;
                actions.push(ClientAction::Dial { broker: self.broker });
            } else {
                actions.push(ClientAction::WakeAt(self.retry_at));
            }
        }
    }

    /// The dial answered; sends the preamble.
    fn dialed(&mut self, conn: Option<SimConnId>, flags: u16, now: SimTime, actions: &mut Vec<ClientAction>) {
        assert_eq!(self.phase, Phase::Dialing, "a dial answer without a dial");
        match conn {
            Some(conn) => {
                self.conn = Some(conn);
                self.phase = Phase::AwaitHello;
                self.rx.clear();
                let mut bytes = BytesMut::new();
                codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags }, &mut bytes);
                actions.push(ClientAction::Write { conn, bytes });
            }
            None => self.next_broker(now, actions),
        }
    }

    /// Moves on to the next broker: at once within a pass, after `retry_interval` at its end.
    fn next_broker(&mut self, now: SimTime, actions: &mut Vec<ClientAction>) {
        self.conn = None;
        self.phase = Phase::Idle;
        self.broker = (self.broker + 1) % self.brokers;
        self.tried_in_pass += 1;
        if self.tried_in_pass >= self.brokers {
            self.tried_in_pass = 0;
            self.retry_at = now.after(self.retry_interval);
        } else {
            self.retry_at = now;
        }
        actions.push(ClientAction::WakeAt(self.retry_at));
    }

    /// Closes the connection on our side; the end comes back through `closed`.
    fn close(&mut self, actions: &mut Vec<ClientAction>) {
        if let Some(conn) = self.conn {
            if self.phase != Phase::Closing {
                self.phase = Phase::Closing;
                actions.push(ClientAction::Close { conn });
            }
        }
    }

    /// The connection ended.
    fn closed(&mut self, now: SimTime, actions: &mut Vec<ClientAction>) {
        let served = self.phase == Phase::Ready;
        if served {
            // A served connection was lost: start a new pass from the next broker.
            self.tried_in_pass = 0;
        }
        self.next_broker(now, actions);
    }

    /// Decodes the frames received; `Err` when the bytes are not valid (a bug of the broker).
    fn frames(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, String> {
        self.rx.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            match codec::decode(&mut self.rx, ringmq_core::limits::FRAME_BYTES_MAX) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return Ok(frames),
                Err(error) => return Err(format!("undecodable frame from the broker: {error}")),
            }
        }
    }

    fn declare(&mut self, conn: SimConnId, actions: &mut Vec<ClientAction>) {
        let request = self.request();
        let frame = Frame::QueueDeclare {
            request,
            name: self.queue.to_string(),
            options: QueueOptions::default(),
            arguments: vec![("qpid.replicate".to_string(), "all".to_string())],
        };
        self.phase = Phase::AwaitDeclare(request);
        actions.push(ClientAction::Write { conn, bytes: encoded(&frame) });
    }
}

/// The numbered producer.
#[derive(Debug)]
pub struct Producer {
    /// Its connection.
    link: ClientLink,
    /// The producer id in the dedup header.
    id: String,
    /// The next number to publish.
    pub next_number: u64,
    /// Numbers sent and not yet confirmed `stored`.
    pub unconfirmed: BTreeSet<u64>,
    /// Numbers confirmed `stored`.
    pub confirmed: BTreeSet<u64>,
    /// On the current connection: publish seq to number.
    seq_numbers: BTreeMap<u64, u64>,
    /// When each unconfirmed number was last sent.
    sent_at: BTreeMap<u64, SimTime>,
    /// When each number was first sent.
    first_sent: BTreeMap<u64, SimTime>,
    /// The next publish seq on the current connection.
    next_seq: u64,
    /// Most unconfirmed messages.
    window: usize,
    /// Most messages per publish frame.
    batch_max: u64,
    /// Longest wait between two publishes.
    interval_max: Duration,
    /// When to publish next.
    next_publish: SimTime,
    /// Whether new numbers are published (the liveness phase stops them).
    pub producing: bool,
    /// Rejected confirms seen.
    pub rejected: u64,
}

impl Producer {
    /// A producer to `queue` with behaviour drawn from `rng`.
    pub fn new(rng: &mut SimRng, brokers: usize, queue: &'static str) -> Producer {
        let retry = Duration::from_millis(rng.between(5, 50));
        Producer {
            link: ClientLink::new(brokers, rng.index(brokers), retry, queue),
            id: "p0".to_string(),
            next_number: 0,
            unconfirmed: BTreeSet::new(),
            confirmed: BTreeSet::new(),
            seq_numbers: BTreeMap::new(),
            sent_at: BTreeMap::new(),
            first_sent: BTreeMap::new(),
            next_seq: 0,
            window: rng.between(1, 64) as usize,
            batch_max: rng.between(1, 8),
            interval_max: Duration::from_millis(rng.between(1, 30)),
            next_publish: SimTime(0),
            producing: true,
            rejected: 0,
        }
    }

    /// The current connection.
    pub fn conn(&self) -> Option<SimConnId> {
        self.link.conn
    }

    /// When `number` was first sent.
    pub fn first_sent(&self, number: u64) -> Option<SimTime> {
        self.first_sent.get(&number).copied()
    }

    /// Where the producer is, for a failure report.
    pub fn describe(&self) -> String {
        format!(
            "{:?} on {:?} to b{}, unconfirmed {:?}, in flight on this connection {:?}",
            self.link.phase,
            self.link.conn,
            self.link.broker,
            self.unconfirmed.iter().take(10).collect::<Vec<_>>(),
            self.seq_numbers.iter().take(10).collect::<Vec<_>>()
        )
    }

    /// Whether every number published was confirmed.
    pub fn all_confirmed(&self) -> bool {
        self.unconfirmed.is_empty()
    }

    /// The timer fired.
    pub fn wake(&mut self, now: SimTime, rng: &mut SimRng, actions: &mut Vec<ClientAction>) {
        self.link.wake(now, actions);
        if self.link.phase != Phase::Ready || !self.producing {
            return;
        }
        if now < self.next_publish {
            actions.push(ClientAction::WakeAt(self.next_publish));
            return;
        }
        let room = (self.window.saturating_sub(self.unconfirmed.len()) as u64)
            .min(PRODUCER_MESSAGES_MAX.saturating_sub(self.next_number));
        let count = room.min(rng.between(1, self.batch_max));
        if count > 0 {
            let numbers: Vec<u64> = (self.next_number..self.next_number + count).collect();
            self.next_number += count;
            self.unconfirmed.extend(numbers.iter().copied());
            self.publish(&numbers, now, actions);
        }
        let wait = rng.between(0, self.interval_max.as_nanos() as u64);
        self.next_publish = now.plus_nanos(wait.max(1));
        actions.push(ClientAction::WakeAt(self.next_publish));
    }

    /// A dial answered.
    pub fn dialed(&mut self, conn: Option<SimConnId>, now: SimTime, actions: &mut Vec<ClientAction>) {
        self.link.dialed(conn, 0, now, actions);
    }

    /// Bytes arrived.
    ///
    /// # Errors
    /// The broker sent bytes that do not decode, or a confirm for a seq never published.
    pub fn received(
        &mut self,
        bytes: &[u8],
        now: SimTime,
        actions: &mut Vec<ClientAction>,
        notes: &mut Vec<ClientNote>,
    ) -> Result<(), String> {
        let Some(conn) = self.link.conn else { return Ok(()) };
        for frame in self.link.frames(bytes)? {
            match (self.link.phase, frame) {
                (Phase::Closing, _) => {}
                (Phase::AwaitHello, Frame::Hello { .. }) => self.link.declare(conn, actions),
                (Phase::AwaitDeclare(request), Frame::Ok { request: answered }) if request == answered => {
                    self.link.phase = Phase::Ready;
                    notes.push(ClientNote::Served { broker: self.link.broker });
                    self.seq_numbers.clear();
                    self.next_seq = 0;
                    // Everything unconfirmed again, in order, before anything new.
                    let numbers: Vec<u64> = self.unconfirmed.iter().copied().collect();
                    for chunk in numbers.chunks(PUBLISH_FRAME_MESSAGES_MAX) {
                        self.publish(chunk, now, actions);
                    }
                    self.next_publish = now;
                    actions.push(ClientAction::WakeAt(now));
                }
                (_, Frame::Confirm { ranges }) => {
                    for range in ranges {
                        for seq in range.first.0..=range.last.0 {
                            let Some(number) = self.seq_numbers.remove(&seq) else {
                                return Err(format!(
                                    "confirm for seq {seq}, which was not published or already confirmed"
                                ));
                            };
                            match &range.outcome {
                                ConfirmOutcome::Stored => {
                                    self.unconfirmed.remove(&number);
                                    self.confirmed.insert(number);
                                    let published_at = self.sent_at.remove(&number).unwrap_or_default();
                                    notes.push(ClientNote::Confirmed { number, conn, published_at });
                                }
                                other => {
                                    self.rejected += 1;
                                    notes.push(ClientNote::Rejected { number, reason: format!("{other:?}") });
                                    self.link.close(actions);
                                }
                            }
                        }
                    }
                }
                (_, Frame::Error { .. }) | (_, Frame::Failed { .. }) => self.link.close(actions),
                (_, Frame::Heartbeat) => {}
                (phase, frame) => return Err(format!("producer in {phase:?} got an unexpected {}", frame.name())),
            }
        }
        Ok(())
    }

    /// The connection ended.
    pub fn closed(&mut self, now: SimTime, actions: &mut Vec<ClientAction>) {
        self.seq_numbers.clear();
        self.link.closed(now, actions);
    }

    /// Publishes `numbers` in one frame on the current connection.
    fn publish(&mut self, numbers: &[u64], now: SimTime, actions: &mut Vec<ClientAction>) {
        let Some(conn) = self.link.conn else { return };
        if numbers.is_empty() {
            return;
        }
        let first_seq = Seq(self.next_seq);
        let mut messages = Vec::with_capacity(numbers.len());
        for &number in numbers {
            self.sent_at.insert(number, now);
            self.first_sent.entry(number).or_insert(now);
            self.seq_numbers.insert(self.next_seq, number);
            self.next_seq += 1;
            messages.push(Message {
                routing_key: Bytes::from_static(self.link.queue.as_bytes()),
                message_id: Bytes::new(),
                headers: vec![Header {
                    name: Bytes::from_static(ringmq_core::limits::DEDUP_HEADER),
                    value: Bytes::from(format!("{}/{number}", self.id)),
                }],
                body: Bytes::from(number.to_string()),
            });
        }
        let frame = Frame::Publish { exchange: String::new(), first_seq, messages };
        actions.push(ClientAction::Write { conn, bytes: encoded(&frame) });
    }
}

/// The consumer.
#[derive(Debug)]
pub struct Consumer {
    /// Its connection.
    link: ClientLink,
    /// Subscription credit.
    prefetch: u32,
    /// Tags delivered on the current connection and not yet acked, with their numbers.
    unacked: BTreeMap<u64, u64>,
    /// Longest wait before acking.
    ack_delay_max: Duration,
    /// When the pending acks go out.
    ack_at: Option<SimTime>,
    /// Every number received at least once.
    pub received: BTreeSet<u64>,
}

impl Consumer {
    /// A consumer of `queue` with behaviour drawn from `rng`.
    pub fn new(rng: &mut SimRng, brokers: usize, queue: &'static str) -> Consumer {
        let retry = Duration::from_millis(rng.between(5, 50));
        Consumer {
            link: ClientLink::new(brokers, rng.index(brokers), retry, queue),
            prefetch: rng.between(1, 32) as u32,
            unacked: BTreeMap::new(),
            ack_delay_max: Duration::from_millis(rng.between(0, 5)),
            ack_at: None,
            received: BTreeSet::new(),
        }
    }

    /// The current connection.
    pub fn conn(&self) -> Option<SimConnId> {
        self.link.conn
    }

    /// Where the consumer is, for a failure report.
    pub fn describe(&self) -> String {
        format!(
            "{:?} on {:?} to b{}, {} unacked",
            self.link.phase,
            self.link.conn,
            self.link.broker,
            self.unacked.len()
        )
    }

    /// The timer fired.
    pub fn wake(&mut self, now: SimTime, actions: &mut Vec<ClientAction>, notes: &mut Vec<ClientNote>) {
        self.link.wake(now, actions);
        let Some(at) = self.ack_at else { return };
        if now < at {
            actions.push(ClientAction::WakeAt(at));
            return;
        }
        self.ack_at = None;
        if self.unacked.is_empty() {
            return;
        }
        let Some(conn) = self.link.conn.filter(|_| self.link.phase == Phase::Ready) else {
            // Deliveries may come before the subscribe's `ok`: ack them once it came.
            let at = now.after(ACK_RETRY);
            self.ack_at = Some(at);
            actions.push(ClientAction::WakeAt(at));
            return;
        };
        let mut ranges: Vec<TagRange> = Vec::new();
        for &tag in self.unacked.keys() {
            match ranges.last_mut() {
                Some(last) if last.last.0 + 1 == tag => last.last = Tag(tag),
                _ => ranges.push(TagRange { first: Tag(tag), last: Tag(tag) }),
            }
        }
        let numbers: Vec<u64> = self.unacked.values().copied().collect();
        self.unacked.clear();
        let frame = Frame::Settle { consumer: CONSUMER, settlement: Settlement::Ack, ranges };
        actions.push(ClientAction::Write { conn, bytes: encoded(&frame) });
        notes.push(ClientNote::Acked { numbers, conn });
    }

    /// A dial answered.
    pub fn dialed(&mut self, conn: Option<SimConnId>, now: SimTime, actions: &mut Vec<ClientAction>) {
        self.link.dialed(conn, 0, now, actions);
    }

    /// Bytes arrived.
    ///
    /// # Errors
    /// The broker sent bytes that do not decode, or a delivery whose body is not a number.
    pub fn received(
        &mut self,
        bytes: &[u8],
        now: SimTime,
        rng: &mut SimRng,
        actions: &mut Vec<ClientAction>,
        notes: &mut Vec<ClientNote>,
    ) -> Result<(), String> {
        let Some(conn) = self.link.conn else { return Ok(()) };
        for frame in self.link.frames(bytes)? {
            match (self.link.phase, frame) {
                (Phase::Closing, _) => {}
                (Phase::AwaitHello, Frame::Hello { .. }) => self.link.declare(conn, actions),
                (Phase::AwaitDeclare(request), Frame::Ok { request: answered }) if request == answered => {
                    let request = self.link.request();
                    let frame = Frame::Subscribe {
                        request,
                        consumer: CONSUMER,
                        queue: self.link.queue.to_string(),
                        prefetch: self.prefetch,
                    };
                    self.link.phase = Phase::AwaitSubscribe(request);
                    actions.push(ClientAction::Write { conn, bytes: encoded(&frame) });
                }
                (Phase::AwaitSubscribe(request), Frame::Ok { request: answered }) if request == answered => {
                    self.link.phase = Phase::Ready;
                    notes.push(ClientNote::Served { broker: self.link.broker });
                }
                (_, Frame::Deliver { consumer, first_tag, messages }) => {
                    if consumer != CONSUMER {
                        return Err(format!("delivery to unknown consumer {consumer:?}"));
                    }
                    for (index, delivered) in messages.into_iter().enumerate() {
                        let tag = first_tag.0 + index as u64;
                        let number = std::str::from_utf8(&delivered.message.body)
                            .ok()
                            .and_then(|text| text.parse::<u64>().ok())
                            .ok_or_else(|| format!("delivery body {:?} is not a number", delivered.message.body))?;
                        self.received.insert(number);
                        self.unacked.insert(tag, number);
                        notes.push(ClientNote::Delivered { number, redelivered: delivered.redelivered, conn });
                    }
                    if self.ack_at.is_none() {
                        let at = now.plus_nanos(rng.between(0, self.ack_delay_max.as_nanos() as u64));
                        self.ack_at = Some(at);
                        actions.push(ClientAction::WakeAt(at));
                    }
                }
                (_, Frame::Error { .. }) | (_, Frame::Failed { .. }) | (_, Frame::ConsumerCancelled { .. }) => {
                    self.link.close(actions)
                }
                (_, Frame::Heartbeat) => {}
                (phase, frame) => return Err(format!("consumer in {phase:?} got an unexpected {}", frame.name())),
            }
        }
        Ok(())
    }

    /// The connection ended: its unacked deliveries are the broker's again.
    pub fn closed(&mut self, now: SimTime, actions: &mut Vec<ClientAction>) {
        self.unacked.clear();
        self.ack_at = None;
        self.link.closed(now, actions);
    }
}

/// Most numbers a producer publishes in a run: enough for many failovers under load, few enough
/// that a consumer with prefetch 1 drains them within the liveness phase.
const PRODUCER_MESSAGES_MAX: u64 = 3_000;
/// How long the consumer waits to ack deliveries that came before its subscription's `ok`.
const ACK_RETRY: Duration = Duration::from_millis(1);
/// The one subscription of the consumer.
const CONSUMER: ConsumerId = ConsumerId(1);
/// Most messages the producer puts in one publish frame when re-sending.
const PUBLISH_FRAME_MESSAGES_MAX: usize = 64;

/// A frame's bytes.
pub fn encoded(frame: &Frame) -> BytesMut {
    let mut bytes = BytesMut::new();
    codec::encode(frame, &mut bytes);
    bytes
}
