//! The simulated network: connections as two ordered byte pipes, with latency, partitions between
//! brokers, resets, and frame-level loss and duplication on broker-to-broker links.
//!
//! A connection is opened by a dialer (a broker shard or a simulated client) towards a broker; its
//! two ends are `End::Node` or `End::Client`. Each direction is a `Pipe`: a FIFO of chunks, each
//! due at a time drawn from the seed's latency range but never before the chunk ahead of it, so a
//! connection keeps its order (like TCP) while chunks of different connections overtake each
//! other. A pipe between two brokers that are partitioned in its direction stalls: its chunks wait
//! (as TCP retransmits would) until the partition heals or the connection ends. Closing follows
//! TCP too: a graceful close is a FIN after the data; a shutdown ends the local end at once and
//! sends a FIN after the data in flight; a reset drops everything in flight and ends both.
//!
//! Frame faults (`LinkFaults`): on a broker-to-broker pipe, whole replication batch frames (type
//! 0x50) may be dropped or sent twice, as a test of the receiver's gap and duplicate checks
//! (`BackupStream`) and of the primary's confirm timeout (`PrimaryStream`): a lost batch with
//! nothing after it is a gap the backup cannot see, which only the primary's timeout finds (a
//! stalled or half-dead peer, or a proxy, does that to a TCP stream too). Other frames are never
//! touched: TCP does not lose bytes, and a lost `marked-ready` would only test the fault, not the
//! code.
//!
//! Not here: what arrives means (`runner` feeds it to nodes and clients), when faults happen
//! (`faults`).
//!
//! Invariants:
//! - Within one pipe, chunks are delivered in the order they were sent, each at most once (a
//!   duplicated frame is a new chunk, sent right after the original).
//! - An end is told `closed` at most once, and receives nothing after it.
//! - A chunk's due time is at or after its send time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use bytes::{BufMut, BytesMut};

use super::clock::SimTime;
use super::event::NodeRef;
use super::rng::SimRng;

/// A connection's id, unique over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimConnId(pub u64);

impl fmt::Display for SimConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A broker's shard, with the id it knows the connection by.
    Node {
        /// The node.
        node: NodeRef,
        /// The node's id for the connection (changes when the connection is handed over).
        conn: ringmq_core::ids::ConnId,
    },
    /// A simulated client, by index.
    Client(usize),
    /// Not yet accepted: the dial is on its way to this broker.
    Pending {
        /// The broker dialled.
        broker: usize,
        /// Its incarnation when dialled.
        incarnation: u32,
    },
}

impl End {
    /// The broker of a node end (or of a pending accept).
    pub fn broker(&self) -> Option<usize> {
        match self {
            End::Node { node, .. } => Some(node.broker),
            End::Pending { broker, .. } => Some(*broker),
            End::Client(_) => None,
        }
    }
}

/// A chunk in a pipe.
#[derive(Debug)]
struct Chunk {
    /// When it may be delivered.
    due: SimTime,
    /// The bytes; empty with `fin`.
    bytes: BytesMut,
    /// The sender closed after the bytes before this chunk.
    fin: bool,
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub struct Pipe {
    /// Chunks in flight, in order.
    chunks: VecDeque<Chunk>,
    /// The due time of the last chunk sent, so later ones never overtake it.
    last_due: SimTime,
    /// Whether an `Event::Pipe` is scheduled for the head chunk.
    pub scheduled: bool,
    /// Whether the head chunk waits for a partition to heal (no event scheduled).
    pub stalled: bool,
    /// Whether a FIN was sent: nothing more may be.
    fin_sent: bool,
    /// Bytes delivered to the receiver so far.
    pub delivered_bytes: u64,
    /// Bytes written so far, delivered or not (the offset after the last byte written).
    pub sent_bytes: u64,
    /// The frame splitter of a broker-to-broker pipe with frame faults.
    splitter: FrameSplitter,
}

/// A connection.
#[derive(Debug)]
pub struct Connection {
    /// End 0 dialled, end 1 accepted.
    pub ends: [End; 2],
    /// `pipes[d]` carries bytes from `ends[d]` to `ends[1 - d]`.
    pub pipes: [Pipe; 2],
    /// Whether each end has been told the connection closed.
    pub closed: [bool; 2],
    /// Whether both ends are brokers (frame faults and partitions apply).
    pub broker_link: bool,
    /// On a broker-to-broker link: when the acceptor (the primary) wrote `link-accepted`, from
    /// which on its stream to the dialer holds the confirms of new publishes.
    pub link_accepted_at: Option<SimTime>,
}

/// Rates of the frame faults on broker-to-broker links.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkFaults {
    /// Probability per batch frame that it is lost, per million.
    pub loss_per_million: u32,
    /// Probability per batch frame that it is delivered twice, per million.
    pub duplicate_per_million: u32,
}

/// What delivering a pipe's head chunk gave.
#[derive(Debug)]
pub enum Delivery {
    /// Bytes for the receiving end.
    Bytes(BytesMut),
    /// The sender's FIN: the receiver sees the end of the connection.
    Fin,
    /// Nothing due (a stale event).
    Nothing,
    /// The pipe is blocked by a partition; it stalled.
    Stalled,
}

/// Counters of what the network did, for the run's summary.
#[derive(Debug, Default, Clone)]
pub struct NetworkCounters {
    /// Connections opened.
    pub connections: u64,
    /// Batch frames dropped by the loss fault.
    pub frames_lost: u64,
    /// Batch frames delivered twice.
    pub frames_duplicated: u64,
    /// Connections reset by the fault injector or by a crash.
    pub resets: u64,
    /// Bytes written to a connection whose receiving end was already closed.
    pub bytes_to_closed: u64,
}

/// Every connection, the partitions, and the latency range.
#[derive(Debug)]
pub struct Network {
    /// Open connections (both ends not yet told closed).
    pub connections: BTreeMap<SimConnId, Connection>,
    /// Directed broker pairs `(from, to)` whose bytes do not flow.
    pub blocked: BTreeSet<(usize, usize)>,
    /// Lowest one-way latency, nanoseconds.
    pub latency_min_nanos: u64,
    /// Highest one-way latency, nanoseconds.
    pub latency_max_nanos: u64,
    /// Frame faults on broker-to-broker links.
    pub link_faults: LinkFaults,
    /// The next connection id.
    next_id: u64,
    /// Counters.
    pub counters: NetworkCounters,
}

impl Network {
    /// An empty network with this latency range (nanoseconds).
    pub fn new(latency_min_nanos: u64, latency_max_nanos: u64, link_faults: LinkFaults) -> Network {
        assert!(latency_min_nanos <= latency_max_nanos, "latency range inverted");
        Network {
            connections: BTreeMap::new(),
            blocked: BTreeSet::new(),
            latency_min_nanos,
            latency_max_nanos,
            link_faults,
            next_id: 0,
            counters: NetworkCounters::default(),
        }
    }

    /// A latency drawn from the range.
    pub fn latency(&self, rng: &mut SimRng) -> u64 {
        rng.between(self.latency_min_nanos, self.latency_max_nanos)
    }

    /// Opens a connection from `dialer` to `acceptor` (not yet accepted).
    pub fn open(&mut self, dialer: End, acceptor: End) -> SimConnId {
        let id = SimConnId(self.next_id);
        self.next_id += 1;
        let broker_link = matches!(dialer, End::Node { .. }) && acceptor.broker().is_some();
        let connection = Connection {
            ends: [dialer, acceptor],
            pipes: [Pipe::default(), Pipe::default()],
            closed: [false, false],
            broker_link,
            link_accepted_at: None,
        };
        self.connections.insert(id, connection);
        self.counters.connections += 1;
        id
    }

    /// Whether bytes from broker `from` to broker `to` are blocked by a partition.
    pub fn is_blocked(&self, from: Option<usize>, to: Option<usize>) -> bool {
        match (from, to) {
            (Some(from), Some(to)) => self.blocked.contains(&(from, to)),
            _ => false,
        }
    }

    /// Queues `bytes` from end `from` of `conn`. Returns whether the pipe needs an
    /// `Event::Pipe` scheduled at the returned time.
    pub fn send(
        &mut self,
        conn: SimConnId,
        from: usize,
        bytes: BytesMut,
        now: SimTime,
        rng: &mut SimRng,
    ) -> Option<SimTime> {
        let latency = self.latency(rng);
        let faults = self.link_faults;
        let Some(connection) = self.connections.get_mut(&conn) else {
            self.counters.bytes_to_closed += bytes.len() as u64;
            return None;
        };
        if connection.closed[1 - from] || connection.closed[from] || connection.pipes[from].fin_sent {
            // Counted as sent, never delivered: an ack written here must not look received.
            connection.pipes[from].sent_bytes += bytes.len() as u64;
            self.counters.bytes_to_closed += bytes.len() as u64;
            return None;
        }
        let broker_link = connection.broker_link;
        if broker_link && from == 1 && connection.link_accepted_at.is_none() && carries_link_accepted(&bytes) {
            connection.link_accepted_at = Some(now);
        }
        let pipe = &mut connection.pipes[from];
        pipe.sent_bytes += bytes.len() as u64;
        let mut pieces = Vec::new();
        if broker_link && (faults.loss_per_million > 0 || faults.duplicate_per_million > 0) {
            // The dialer's first 8 bytes are the preamble, not a frame.
            if from == 0 && !pipe.splitter.preamble_skipped {
                pipe.splitter.skip = 8;
                pipe.splitter.preamble_skipped = true;
            }
            pipe.splitter.split(bytes, faults, rng, &mut pieces, &mut self.counters);
        } else {
            pieces.push(bytes);
        }
        let due = now.plus_nanos(latency).max(pipe.last_due);
        for piece in pieces {
            if piece.is_empty() {
                continue;
            }
            pipe.chunks.push_back(Chunk { due, bytes: piece, fin: false });
        }
        pipe.last_due = due;
        schedule_head(pipe)
    }

    /// Queues a FIN from end `from` after its data. Returns when to schedule the pipe, if needed.
    pub fn send_fin(&mut self, conn: SimConnId, from: usize, now: SimTime, rng: &mut SimRng) -> Option<SimTime> {
        let latency = self.latency(rng);
        let connection = self.connections.get_mut(&conn)?;
        let pipe = &mut connection.pipes[from];
        if pipe.fin_sent {
            return None;
        }
        pipe.fin_sent = true;
        let due = now.plus_nanos(latency).max(pipe.last_due);
        pipe.chunks.push_back(Chunk { due, bytes: BytesMut::new(), fin: true });
        pipe.last_due = due;
        schedule_head(pipe)
    }

    /// Takes the head chunk of pipe `dir` of `conn` if it is due at `now` and not blocked.
    pub fn deliver(&mut self, conn: SimConnId, dir: usize, now: SimTime) -> Delivery {
        let Some(connection) = self.connections.get(&conn) else { return Delivery::Nothing };
        let blocked = self.is_blocked(connection.ends[dir].broker(), connection.ends[1 - dir].broker());
        let connection = self.connections.get_mut(&conn).expect("looked up above");
        let pipe = &mut connection.pipes[dir];
        pipe.scheduled = false;
        let Some(head) = pipe.chunks.front() else { return Delivery::Nothing };
        if head.due > now {
            return Delivery::Nothing;
        }
        if blocked {
            pipe.stalled = true;
            return Delivery::Stalled;
        }
        let chunk = pipe.chunks.pop_front().expect("head exists");
        if chunk.fin {
            return Delivery::Fin;
        }
        pipe.delivered_bytes += chunk.bytes.len() as u64;
        Delivery::Bytes(chunk.bytes)
    }

    /// When pipe `dir` of `conn` next needs an event, if it has chunks and none is scheduled.
    pub fn reschedule(&mut self, conn: SimConnId, dir: usize) -> Option<SimTime> {
        let connection = self.connections.get_mut(&conn)?;
        schedule_head(&mut connection.pipes[dir])
    }

    /// The pipes that stalled and are no longer blocked, with when to deliver them (`now`).
    pub fn unstall(&mut self) -> Vec<(SimConnId, usize)> {
        let mut ready = Vec::new();
        for (&id, connection) in &mut self.connections {
            for dir in 0..2 {
                let from = connection.ends[dir].broker();
                let to = connection.ends[1 - dir].broker();
                let blocked = matches!((from, to), (Some(f), Some(t)) if self.blocked.contains(&(f, t)));
                if connection.pipes[dir].stalled && !blocked {
                    connection.pipes[dir].stalled = false;
                    ready.push((id, dir));
                }
            }
        }
        ready
    }

    /// Marks end `end` of `conn` as told closed; drops the connection once both are. Returns
    /// whether the end had not been told yet.
    pub fn mark_closed(&mut self, conn: SimConnId, end: usize) -> bool {
        let Some(connection) = self.connections.get_mut(&conn) else { return false };
        if connection.closed[end] {
            return false;
        }
        connection.closed[end] = true;
        // Nothing more reaches this end.
        connection.pipes[1 - end].chunks.clear();
        if connection.closed == [true, true] {
            self.connections.remove(&conn);
        }
        true
    }

    /// Drops everything in flight on `conn` in both directions (a reset).
    pub fn drop_in_flight(&mut self, conn: SimConnId) {
        if let Some(connection) = self.connections.get_mut(&conn) {
            for pipe in &mut connection.pipes {
                pipe.chunks.clear();
                pipe.fin_sent = true;
            }
        }
    }

    /// The open connections with an end on `broker`, with which end.
    pub fn connections_of(&self, broker: usize) -> Vec<(SimConnId, usize)> {
        let mut found = Vec::new();
        for (&id, connection) in &self.connections {
            for end in 0..2 {
                if connection.ends[end].broker() == Some(broker) && !connection.closed[end] {
                    found.push((id, end));
                }
            }
        }
        found
    }
}

/// Whether whole frames at the start of `bytes` include a `link-accepted`.
fn carries_link_accepted(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while rest.len() >= 5 {
        if rest[4] == TYPE_LINK_ACCEPTED {
            return true;
        }
        let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if length == 0 || rest.len() < 4 + length {
            return false;
        }
        rest = &rest[4 + length..];
    }
    false
}

/// Marks a pipe scheduled and returns its head's due time, if it has a head and no event yet.
fn schedule_head(pipe: &mut Pipe) -> Option<SimTime> {
    if pipe.scheduled || pipe.stalled {
        return None;
    }
    let due = pipe.chunks.front()?.due;
    pipe.scheduled = true;
    Some(due)
}

/// Splits a broker-to-broker pipe's bytes into frames, to drop or duplicate whole batch frames.
#[derive(Debug, Default)]
struct FrameSplitter {
    /// Whether the dialer's preamble has been accounted for.
    preamble_skipped: bool,
    /// Bytes still to pass through before the next frame header (the rest of a frame, or the
    /// preamble).
    skip: usize,
    /// A frame header split across writes: its first bytes.
    header: Vec<u8>,
}

/// The replication batch frame's type byte.
const TYPE_BATCH: u8 = ringmq_core::wire::frame_type::LINK_BATCH;
/// The link-accepted frame's type byte.
const TYPE_LINK_ACCEPTED: u8 = ringmq_core::wire::frame_type::LINK_ACCEPTED;

impl FrameSplitter {
    /// Cuts `bytes` into pieces; drops or repeats whole batch frames that lie within this write.
    fn split(
        &mut self,
        mut bytes: BytesMut,
        faults: LinkFaults,
        rng: &mut SimRng,
        out: &mut Vec<BytesMut>,
        counters: &mut NetworkCounters,
    ) {
        let mut passthrough = BytesMut::new();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let take = self.skip.min(bytes.len());
                passthrough.put(bytes.split_to(take));
                self.skip -= take;
                continue;
            }
            if !self.header.is_empty() || bytes.len() < 5 {
                // A header split across writes: pass it through untouched, tracking its length.
                let need = 5 - self.header.len();
                let take = need.min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                passthrough.put(bytes.split_to(take));
                if self.header.len() == 5 {
                    let length = u32::from_le_bytes([self.header[0], self.header[1], self.header[2], self.header[3]]);
                    self.skip = (length as usize).saturating_sub(1);
                    self.header.clear();
                }
                continue;
            }
            let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let frame_bytes = 4 + length;
            if frame_bytes > bytes.len() {
                // The frame continues in a later write: pass it through.
                self.skip = frame_bytes - bytes.len();
                passthrough.put(bytes.split_to(bytes.len()));
                continue;
            }
            let frame = bytes.split_to(frame_bytes);
            if frame[4] != TYPE_BATCH {
                passthrough.put(frame);
                continue;
            }
            if rng.chance(faults.loss_per_million) {
                counters.frames_lost += 1;
                continue;
            }
            let twice = rng.chance(faults.duplicate_per_million);
            if twice {
                counters.frames_duplicated += 1;
                passthrough.put(&frame[..]);
            }
            passthrough.put(frame);
        }
        out.push(passthrough);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::ids::ConnId;

    /// A broker node end.
    fn node(broker: usize) -> End {
        End::Node { node: NodeRef { broker, incarnation: 0, shard: 0 }, conn: ConnId(0) }
    }

    /// A frame of `kind` with `body` bytes of body.
    fn frame(kind: u8, body: usize) -> Vec<u8> {
        let mut bytes = ((body + 1) as u32).to_le_bytes().to_vec();
        bytes.push(kind);
        bytes.extend(std::iter::repeat_n(0xAB, body));
        bytes
    }

    #[test]
    fn a_pipe_keeps_its_order_whatever_the_latencies() {
        // Goal: one connection's chunks arrive in the order sent, each once. Method: send many
        // chunks with a wide latency range, deliver at each due time, compare.
        let mut rng = SimRng::new(3);
        let mut network = Network::new(1, 5_000_000, LinkFaults::default());
        let conn = network.open(End::Client(0), node(0));
        let mut due = Vec::new();
        for i in 0..100u8 {
            if let Some(at) = network.send(conn, 0, BytesMut::from(&[i][..]), SimTime(u64::from(i) * 1000), &mut rng) {
                due.push(at);
            }
        }
        let mut got = Vec::new();
        let mut now = SimTime(0);
        while let Some(at) = network.reschedule(conn, 0).or(due.pop()) {
            now = now.max(at);
            if let Delivery::Bytes(bytes) = network.deliver(conn, 0, now) {
                got.extend_from_slice(&bytes);
            }
        }
        assert_eq!(got, (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn frame_faults_touch_whole_batch_frames_only() {
        // Goal: loss drops whole batch frames and nothing else. Method: a link write of a
        // preamble, a heartbeat, a batch and a confirm with every batch lost.
        let mut rng = SimRng::new(1);
        let faults = LinkFaults { loss_per_million: 1_000_000, duplicate_per_million: 0 };
        let mut network = Network::new(1, 1, faults);
        let conn = network.open(node(0), node(1));
        let mut bytes = b"RNMQ\x01\x00\x02\x00".to_vec();
        bytes.extend(frame(0x01, 0));
        bytes.extend(frame(TYPE_BATCH, 40));
        bytes.extend(frame(0x51, 8));
        network.send(conn, 0, BytesMut::from(&bytes[..]), SimTime(0), &mut rng);
        let Delivery::Bytes(got) = network.deliver(conn, 0, SimTime(10)) else { panic!("nothing delivered") };
        let mut expected = b"RNMQ\x01\x00\x02\x00".to_vec();
        expected.extend(frame(0x01, 0));
        expected.extend(frame(0x51, 8));
        assert_eq!(&got[..], &expected[..]);
        assert_eq!(network.counters.frames_lost, 1);
    }
}
