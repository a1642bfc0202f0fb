//! The run's agenda: every future event, ordered by simulated time and then by the order in which
//! it was scheduled.
//!
//! Each event names its target by value (a broker index and incarnation, a connection, a client),
//! never by reference, so an event for something that no longer exists (a crashed incarnation, a
//! closed connection) is recognised and dropped when it comes due.
//!
//! Not here: what an event does (`runner`).
//!
//! Invariants:
//! - `pop` returns events in non-decreasing time; two events due at the same time come out in the
//!   order they were scheduled, so the agenda is deterministic without comparing events.
//! - Nothing is scheduled in the past: `schedule` asserts `at >= now` of the last pop.

use std::collections::BTreeMap;

use super::clock::SimTime;
use super::network::SimConnId;

/// Where a broker node is: broker index, incarnation (restarts), shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeRef {
    /// Index of the broker in the cluster.
    pub broker: usize,
    /// Which life of that broker (raised by each restart).
    pub incarnation: u32,
    /// The shard.
    pub shard: u16,
}

/// Who opened a connection and waits for the dial's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialer {
    /// A broker's shard (its backup link).
    Node(NodeRef),
    /// A simulated client (producer, consumer or cluster manager), by index.
    Client(usize),
}

/// Which cross-shard channel of a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// The core's shard-to-shard ring (`Shard::poll_peer` / `handle_peer`).
    Peer,
    /// The driver's control queue (`NodeOutput::Control` / `handle_control`).
    Control,
}

/// Something that happens at a simulated time.
#[derive(Debug, Clone)]
pub enum Event {
    /// The head chunk of one direction of a connection is due at its receiver.
    Pipe {
        /// The connection.
        conn: SimConnId,
        /// The direction: 0 carries the dialer's bytes, 1 the acceptor's.
        dir: usize,
    },
    /// A dialled connection reaches its acceptor (a broker shard accepts it).
    Accept {
        /// The connection.
        conn: SimConnId,
    },
    /// The dialer learns whether its dial connected.
    DialAnswer {
        /// Who dialled.
        dialer: Dialer,
        /// The connection, or `None` when the dial failed.
        conn: Option<SimConnId>,
    },
    /// A probe reaches its target broker, which answers with its state.
    ProbeArrive {
        /// The prober.
        from: NodeRef,
        /// The address probed.
        address: String,
    },
    /// A probe's answer reaches the prober.
    ProbeAnswer {
        /// The prober.
        to: NodeRef,
        /// The address probed.
        address: String,
        /// `(state, epoch)`, or `None` when nobody answered in time.
        answer: Option<(ringmq_core::broker_state::BrokerState, ringmq_core::epoch::Epoch)>,
    },
    /// The next message of one cross-shard channel of a broker is due.
    Local {
        /// The broker.
        broker: usize,
        /// Its incarnation when the message was sent.
        incarnation: u32,
        /// Sending shard.
        from: u16,
        /// Receiving shard.
        to: u16,
        /// Which channel.
        kind: LocalKind,
    },
    /// One end of a connection learns that it ended.
    Closed {
        /// The connection.
        conn: SimConnId,
        /// Which end: 0 the dialer, 1 the acceptor.
        end: usize,
    },
    /// A client's timer.
    ClientWake {
        /// The client.
        client: usize,
    },
    /// A crashed broker starts again, with no memory.
    Restart {
        /// The broker.
        broker: usize,
    },
    /// A paused broker runs again.
    Resume {
        /// The broker.
        broker: usize,
    },
    /// A partition's time is up: the blocked pairs are recomputed.
    PartitionEnds,
    /// The fault injector's tick.
    FaultTick,
    /// The cluster manager's tick.
    ManagerTick,
}

/// The agenda.
#[derive(Debug, Default)]
pub struct EventQueue {
    /// Events by (time, scheduling order).
    events: BTreeMap<(SimTime, u64), Event>,
    /// The next scheduling order number.
    next_order: u64,
    /// The time of the last popped event.
    now: SimTime,
}

impl EventQueue {
    /// Schedules `event` at `at`.
    ///
    /// # Panics
    /// If `at` is before the last popped event's time.
    pub fn schedule(&mut self, at: SimTime, event: Event) {
        assert!(at >= self.now, "event scheduled in the past: {at} < {}", self.now);
        self.events.insert((at, self.next_order), event);
        self.next_order += 1;
    }

    /// The time of the next event.
    pub fn peek_time(&self) -> Option<SimTime> {
        self.events.keys().next().map(|&(at, _)| at)
    }

    /// Takes the next event.
    pub fn pop(&mut self) -> Option<(SimTime, Event)> {
        let ((at, _), event) = self.events.pop_first()?;
        self.now = at;
        Some((at, event))
    }

    /// Marks `at` as the present (the runner advanced to a node timeout, not an event).
    pub fn advance(&mut self, at: SimTime) {
        assert!(at >= self.now, "time went backwards: {at} < {}", self.now);
        self.now = at;
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}
