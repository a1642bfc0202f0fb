//! One simulation run: builds the cluster, the clients and the cluster manager from a seed, then
//! takes events one at a time, carrying out every output of the real state machines, and checks
//! the invariants after each step.
//!
//! A run has two phases:
//! - **safety** (`SimConfig::safety`): the producer publishes, the consumer consumes, the fault
//!   injector does its seed's faults, the cluster manager promotes; every step is checked;
//! - **liveness** (at most `SimConfig::liveness`): every fault heals (partitions end, paused
//!   brokers resume, crashed ones restart, frame faults stop), the producer stops taking new
//!   numbers, and the cluster must converge: one broker `active`, every other `ready`, every
//!   number confirmed and received.
//!
//! A step is either the next event of the agenda or the earliest node timeout, whichever comes
//! first (a timeout first on a tie). Each input to a node is followed by `pump` and the carrying
//! out of every output (`NodeOutput`), then the node's messages for its broker's other shards
//! are queued (in order per pair, delivered as later events). Inputs that a node's output makes
//! for another node of the same broker at once (a hand-over) go through a work list within the
//! same step.
//!
//! Not here: the network's pipes (`network`), the clients' protocol (`client`), the checks
//! (`invariants`).
//!
//! Invariants:
//! - Everything is decided by the seed: the agenda's order, every draw of the `SimRng`, and
//!   nothing else (no wall clock, no hash-map iteration in the simulator).
//! - A broker's node receives inputs only while the broker is up and not paused; what comes for
//!   it while paused is deferred, in order, until it resumes.
//! - Each node's `now` never goes backwards.

mod shell;

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::ids::ConnId;
use ringmq_core::replication::ReplicationEvent;
use ringmq_ha::link::frame::LinkOpen;
use ringmq_ha::node::shell::pump_and_carry_out;

use self::shell::SimShell;
use super::broker::{BrokerSettings, SimBroker};
use super::client::{ClientAction, ClientNote, Consumer, Producer, QUEUE};
use super::clock::SimTime;
use super::cluster_manager::{BrokerStatus, ClusterManager, ManagerDecision};
use super::event::{Dialer, Event, EventQueue, LocalKind, NodeRef};
use super::faults::{FaultPlan, FAULT_TICK};
use super::invariants::{BrokerObservation, Oracle, OracleCounters, Violation};
use super::network::{Delivery, End, Network, SimConnId};
use super::node::ShardNode;
use super::rng::SimRng;
use super::trace::Trace;

/// The settings of one run, all drawn from its seed (`SimConfig::from_seed`).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Brokers in the cluster.
    pub brokers: usize,
    /// Shards per broker.
    pub shards: u16,
    /// `link-heartbeat-interval`.
    pub heartbeat: Duration,
    /// `link-maintenance-interval`.
    pub maintenance: Duration,
    /// `ha-backup-timeout`.
    pub backup_timeout: Duration,
    /// Simulated time of the safety phase.
    pub safety: Duration,
    /// Simulated time the liveness phase may take at most.
    pub liveness: Duration,
    /// Most steps in all (a run that loops without advancing time fails).
    pub steps_max: u64,
    /// The queue the clients use (`client::QUEUE`, on shard 0, unless changed).
    pub queue: &'static str,
    /// The fault mix.
    pub faults: FaultPlan,
}

impl SimConfig {
    /// Draws a run's settings from `seed`.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = SimRng::new(seed ^ CONFIG_SEED_SALT);
        let heartbeat = Duration::from_millis(rng.between(50, 300));
        let maintenance = Duration::from_millis(rng.between(10, 150));
        // The cluster manager must promote a ready backup before its lease runs out (at the
        // earliest three quarters of `ha-backup-timeout` after the primary's end): it notices
        // within a maintenance interval and waits at most 3 heartbeat intervals.
        let backup_timeout = (maintenance + heartbeat) * 4 + Duration::from_millis(rng.between(0, 1000));
        let faults = FaultPlan::draw(&mut rng, heartbeat);
        SimConfig {
            seed,
            brokers: if rng.below(4) == 0 { 2 } else { 3 },
            shards: rng.between(1, 2) as u16,
            heartbeat,
            maintenance,
            backup_timeout,
            safety: Duration::from_millis(rng.between(2_000, 6_000)),
            liveness: Duration::from_secs(40),
            steps_max: 3_000_000,
            queue: QUEUE,
            faults,
        }
    }

    /// The same run with the clients on `queue` (e.g. `client::QUEUE_SHARD_1`).
    pub fn with_queue(mut self, queue: &'static str) -> SimConfig {
        self.queue = queue;
        self
    }

    /// The same run without any fault (latency only).
    pub fn without_faults(mut self) -> SimConfig {
        self.faults = FaultPlan::none();
        self
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Steps taken.
    pub steps: u64,
    /// Simulated time at the end.
    pub sim_time: SimTime,
    /// The trace's hash.
    pub trace_hash: u64,
    /// The failure, with the trace's last lines.
    pub failure: Option<Failure>,
    /// One line of counts for the summary.
    pub summary: String,
    /// The oracle's counts (duplicates, stale confirms, losses written off, checks).
    pub counters: OracleCounters,
}

/// A failed run.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What broke.
    pub violation: Violation,
    /// The last trace lines, oldest first.
    pub trace_tail: Vec<String>,
    /// The run's settings, described.
    pub config: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.violation)?;
        writeln!(f, "settings: {}", self.config)?;
        writeln!(f, "last {} events:", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64, verbose: bool) -> Outcome {
    run(SimConfig::from_seed(seed), verbose)
}

/// Runs one configuration.
pub fn run(config: SimConfig, verbose: bool) -> Outcome {
    let mut simulation = Simulation::new(config, verbose);
    // A panic (an assert of the brokers' code or of the simulator) fails the seed like a
    // violation, with the trace up to it.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| simulation.run()));
    let result = result.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        Err(violation("no panic", message))
    });
    simulation.outcome(result)
}

/// Which phase a run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Faults on, invariants checked.
    Safety,
    /// Faults healed, convergence awaited.
    Liveness,
}

/// An input for a node, queued within a step.
enum NodeInput {
    /// `handle_link_adopted`.
    Adopt {
        /// The connection's id on the adopting shard.
        conn: ConnId,
        /// The backup's link-open.
        open: LinkOpen,
        /// Bytes read after it.
        pending: BytesMut,
    },
    /// Feed bytes held back while the node paused reads.
    ResumeReads,
}

/// Client indices: the producer, the consumer, the cluster manager.
const PRODUCER: usize = 0;
const CONSUMER: usize = 1;
const MANAGER: usize = 2;

/// A whole run's state.
struct Simulation {
    /// Settings.
    config: SimConfig,
    /// The seeded generator.
    rng: SimRng,
    /// The agenda.
    queue: EventQueue,
    /// Simulated time.
    now: SimTime,
    /// Connections.
    network: Network,
    /// The brokers.
    brokers: Vec<SimBroker>,
    /// The producer.
    producer: Producer,
    /// The consumer.
    consumer: Consumer,
    /// The cluster manager.
    manager: ClusterManager,
    /// What must hold.
    oracle: Oracle,
    /// The trace.
    trace: Trace,
    /// Steps taken.
    steps: u64,
    /// Which phase.
    phase: Phase,
    /// Inputs queued within the current step.
    work: VecDeque<(NodeRef, NodeInput)>,
    /// Per broker: (shard, conn) whose reads are held back.
    paused_reads: Vec<BTreeSet<(u16, u32)>>,
    /// Scratch for client actions.
    actions: Vec<ClientAction>,
    /// Scratch for client notes.
    notes: Vec<ClientNote>,
    /// Faults injected, by kind, for the summary.
    faults_done: [u64; 5],
    /// Partitions in force: until when, from, to, both ways.
    partitions: Vec<(SimTime, usize, usize, bool)>,
    /// Per broker, its holdings as computed at a step (`held_cached`).
    held_cache: Vec<Option<(u64, BTreeSet<u64>)>>,
}

impl Simulation {
    fn new(config: SimConfig, verbose: bool) -> Simulation {
        let mut rng = SimRng::new(config.seed);
        let base = Instant::now();
        let addresses: Vec<String> = (0..config.brokers).map(|i| format!("b{i}:5672")).collect();
        let settings = BrokerSettings {
            shard_count: config.shards,
            addresses,
            heartbeat_interval: config.heartbeat,
            maintenance_interval: config.maintenance,
            backup_timeout: config.backup_timeout,
        };
        let brokers = (0..config.brokers).map(|i| SimBroker::new(i, settings.clone(), base)).collect();
        let network = Network::new(
            config.faults.latency_min.as_nanos() as u64,
            config.faults.latency_max.as_nanos() as u64,
            config.faults.link,
        );
        let producer = Producer::new(&mut rng, config.brokers, config.queue);
        let consumer = Consumer::new(&mut rng, config.brokers, config.queue);
        let manager = ClusterManager::new(&mut rng, config.heartbeat, config.backup_timeout);
        let mut trace = Trace::new(verbose);
        trace.record(format!(
            "seed {}: {} brokers x {} shards, heartbeat {:?}, maintenance {:?}, backup timeout {:?}, safety {:?}; {}",
            config.seed,
            config.brokers,
            config.shards,
            config.heartbeat,
            config.maintenance,
            config.backup_timeout,
            config.safety,
            config.faults.describe()
        ));
        let config_brokers = config.brokers;
        let oracle = Oracle::new(config.brokers);
        Simulation {
            oracle,
            paused_reads: vec![BTreeSet::new(); config.brokers],
            config,
            rng,
            queue: EventQueue::default(),
            now: SimTime(0),
            network,
            brokers,
            producer,
            consumer,
            manager,
            trace,
            steps: 0,
            phase: Phase::Safety,
            work: VecDeque::new(),
            actions: Vec::new(),
            notes: Vec::new(),
            faults_done: [0; 5],
            partitions: Vec::new(),
            held_cache: vec![None; config_brokers],
        }
    }

    /// Runs until convergence or a violation.
    fn run(&mut self) -> Result<(), Violation> {
        for broker in 0..self.brokers.len() {
            self.brokers[broker].start(self.now);
            self.drain_all(broker)?;
        }
        self.queue.schedule(self.now, Event::ClientWake { client: PRODUCER });
        self.queue.schedule(self.now, Event::ClientWake { client: CONSUMER });
        self.queue.schedule(self.now, Event::ManagerTick);
        self.queue.schedule(self.now.after(FAULT_TICK), Event::FaultTick);
        let safety_end = SimTime(0).after(self.config.safety);
        let liveness_end = safety_end.after(self.config.liveness);
        loop {
            if self.steps >= self.config.steps_max {
                return Err(violation("step budget", format!("{} steps without converging", self.steps)));
            }
            if self.phase == Phase::Safety && self.next_time().is_none_or(|t| t >= safety_end) {
                self.now = self.now.max(safety_end);
                self.queue.advance(self.now);
                self.heal()?;
            }
            if self.phase == Phase::Liveness {
                if self.converged() {
                    self.trace.record(format!("{} converged", self.now));
                    return Ok(());
                }
                if self.next_time().is_none_or(|t| t >= liveness_end) {
                    return Err(violation("liveness", self.stuck_report()));
                }
            }
            self.step()?;
            self.steps += 1;
            self.check()?;
        }
    }

    /// The time of the next step: the next event or the earliest node timeout.
    fn next_time(&self) -> Option<SimTime> {
        let event = self.queue.peek_time();
        let timeout = self.next_timeout().map(|(at, _)| at);
        match (event, timeout) {
            (Some(e), Some(t)) => Some(e.min(t)),
            (e, t) => e.or(t),
        }
    }

    /// The earliest due node timeout of a running broker, in simulated time (never before now).
    fn next_timeout(&self) -> Option<(SimTime, NodeRef)> {
        let mut best: Option<(SimTime, NodeRef)> = None;
        for broker in &self.brokers {
            if !broker.reachable() {
                continue;
            }
            for (shard, node) in broker.nodes.iter().enumerate() {
                let Some(deadline) = node.poll_timeout() else { continue };
                let at = broker.clock.to_sim(deadline).max(self.now);
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, broker.node_ref(shard as u16)));
                }
            }
        }
        best
    }

    /// Takes one step.
    fn step(&mut self) -> Result<(), Violation> {
        let timeout = self.next_timeout();
        let event_at = self.queue.peek_time();
        if let Some((at, node)) = timeout {
            if event_at.is_none_or(|e| at <= e) {
                self.now = at;
                self.queue.advance(at);
                self.trace.record(format!("{at} {} timeout", node_name(node)));
                self.with_node(node, |node, now| node.handle_timeout(now))?;
                return Ok(());
            }
        }
        let Some((at, event)) = self.queue.pop() else {
            return Err(violation("liveness", "nothing left to happen".into()));
        };
        self.now = at;
        self.handle_event(event)
    }

    /// Carries out one event.
    fn handle_event(&mut self, event: Event) -> Result<(), Violation> {
        if let Some(broker) = self.event_target(&event) {
            if self.brokers[broker].paused() {
                self.brokers[broker].deferred.push(event);
                return Ok(());
            }
        }
        match event {
            Event::Pipe { conn, dir } => self.deliver_pipe(conn, dir),
            Event::Accept { conn } => self.accept(conn),
            Event::DialAnswer { dialer, conn } => self.dial_answer(dialer, conn),
            Event::ProbeArrive { from, address } => {
                let target = self.resolve(&address);
                let reachable = target.is_some_and(|t| {
                    self.brokers[t].reachable()
                        && !self.partitioned(from.broker, t)
                        && !self.partitioned(t, from.broker)
                });
                let (answer, delay) = match target.filter(|_| reachable) {
                    Some(t) => (self.brokers[t].status(), self.network.latency(&mut self.rng)),
                    None => (None, self.config.maintenance.as_nanos() as u64),
                };
                self.trace.record(format!("{} {} probe {address}: {answer:?}", self.now, node_name(from)));
                self.queue.schedule(self.now.plus_nanos(delay), Event::ProbeAnswer { to: from, address, answer });
                Ok(())
            }
            Event::ProbeAnswer { to, address, answer } => {
                self.trace.record(format!("{} {} probe answer {address}: {answer:?}", self.now, node_name(to)));
                self.with_node(to, |node, _| node.handle_probe_answer(&address, answer))
            }
            Event::Local { broker, incarnation, from, to, kind } => {
                if self.brokers[broker].incarnation != incarnation || !self.brokers[broker].up() {
                    return Ok(());
                }
                let node = self.brokers[broker].node_ref(to);
                match kind {
                    LocalKind::Peer => {
                        let Some(message) =
                            self.brokers[broker].peer_queues.get_mut(&(from, to)).and_then(VecDeque::pop_front)
                        else {
                            return Ok(());
                        };
                        if self.trace.verbose() {
                            self.trace.record(format!(
                                "{} {} peer from {from}: {message:?}",
                                self.now,
                                node_name(node)
                            ));
                        } else {
                            self.trace.record(format!("{} {} peer from {from}", self.now, node_name(node)));
                        }
                        self.with_node(node, |node, now| node.handle_peer(message, now))
                    }
                    LocalKind::Control => {
                        let Some(control) =
                            self.brokers[broker].control_queues.get_mut(&(from, to)).and_then(VecDeque::pop_front)
                        else {
                            return Ok(());
                        };
                        self.trace.record(format!("{} {} control from {from}: {control:?}", self.now, node_name(node)));
                        self.with_node(node, |node, now| node.handle_control(control, now))
                    }
                }
            }
            Event::Closed { conn, end } => self.closed(conn, end),
            Event::ClientWake { client } => {
                self.actions.clear();
                self.notes.clear();
                let mut actions = std::mem::take(&mut self.actions);
                let mut notes = std::mem::take(&mut self.notes);
                match client {
                    PRODUCER => self.producer.wake(self.now, &mut self.rng, &mut actions),
                    CONSUMER => self.consumer.wake(self.now, &mut actions, &mut notes),
                    _ => {}
                }
                self.client_actions(client, &mut actions)?;
                self.client_notes(&mut notes)?;
                self.actions = actions;
                self.notes = notes;
                Ok(())
            }
            Event::Restart { broker } => {
                if self.brokers[broker].up() {
                    return Ok(());
                }
                self.trace.record(format!("{} b{broker} restarts", self.now));
                self.brokers[broker].start(self.now);
                self.drain_all(broker)
            }
            Event::Resume { broker } => {
                let Some(until) = self.brokers[broker].paused_until else { return Ok(()) };
                if until > self.now {
                    return Ok(());
                }
                self.resume(broker);
                Ok(())
            }
            Event::PartitionEnds => {
                self.trace.record(format!("{} partitions end", self.now));
                self.block_partitions();
                Ok(())
            }
            Event::FaultTick => {
                if self.phase == Phase::Safety {
                    self.inject_faults()?;
                    self.queue.schedule(self.now.after(FAULT_TICK), Event::FaultTick);
                }
                Ok(())
            }
            Event::ManagerTick => {
                self.manager_tick()?;
                let period = self.config.maintenance.max(Duration::from_millis(10));
                self.queue.schedule(self.now.after(period), Event::ManagerTick);
                Ok(())
            }
        }
    }

    /// The broker an event is for, when it must wait while that broker is paused.
    fn event_target(&self, event: &Event) -> Option<usize> {
        match event {
            Event::Pipe { conn, dir } => self.network.connections.get(conn).and_then(|c| c.ends[1 - dir].broker()),
            Event::Accept { conn } => self.network.connections.get(conn).and_then(|c| c.ends[1].broker()),
            Event::DialAnswer { dialer: Dialer::Node(node), .. } => Some(node.broker),
            Event::ProbeAnswer { to, .. } => Some(to.broker),
            Event::Local { broker, .. } => Some(*broker),
            Event::Closed { conn, end } => self.network.connections.get(conn).and_then(|c| c.ends[*end].broker()),
            _ => None,
        }
    }

    /// Feeds one input to a node, pumps it and carries out its outputs, then any inputs this
    /// caused for other nodes within the step.
    fn with_node(&mut self, node: NodeRef, input: impl FnOnce(&mut ShardNode, Instant)) -> Result<(), Violation> {
        let broker = &mut self.brokers[node.broker];
        if broker.incarnation != node.incarnation || !broker.up() {
            return Ok(());
        }
        let now = broker.clock.now(self.now);
        input(&mut broker.nodes[usize::from(node.shard)], now);
        pump_and_carry_out(&mut SimShell { sim: self, node }, now)?;
        while let Some((target, input)) = self.work.pop_front() {
            let broker = &mut self.brokers[target.broker];
            if broker.incarnation != target.incarnation || !broker.up() {
                continue;
            }
            let now = broker.clock.now(self.now);
            match input {
                NodeInput::Adopt { conn, open, pending } => {
                    broker.nodes[usize::from(target.shard)].handle_link_adopted(conn, open, pending, now);
                }
                NodeInput::ResumeReads => self.feed_held_reads(target),
            }
            pump_and_carry_out(&mut SimShell { sim: self, node: target }, now)?;
        }
        Ok(())
    }

    /// Pumps every node of a broker (after a start) and carries out their outputs.
    fn drain_all(&mut self, broker: usize) -> Result<(), Violation> {
        for shard in 0..self.config.shards {
            let node = self.brokers[broker].node_ref(shard);
            self.with_node(node, |_, _| {})?;
        }
        Ok(())
    }

    /// Schedules delivery of the next message of a broker's (from, to) channel.
    fn schedule_local(&mut self, broker: usize, from: u16, to: u16, kind: LocalKind) {
        let delay = self.rng.between(1_000, 50_000);
        let incarnation = self.brokers[broker].incarnation;
        self.queue.schedule(self.now.plus_nanos(delay), Event::Local { broker, incarnation, from, to, kind });
    }

    /// Opens a connection from `dialer` to the broker at `address`, or fails the dial.
    fn dial(&mut self, dialer: Dialer, address: &str) {
        let from_broker = match dialer {
            Dialer::Node(node) => Some(node.broker),
            Dialer::Client(_) => None,
        };
        let latency = self.network.latency(&mut self.rng);
        let Some(target) = self.resolve(address) else {
            self.queue.schedule(self.now.plus_nanos(latency), Event::DialAnswer { dialer, conn: None });
            return;
        };
        if !self.brokers[target].up() {
            // Refused: a reset comes back after a round trip.
            self.queue.schedule(self.now.plus_nanos(2 * latency), Event::DialAnswer { dialer, conn: None });
            return;
        }
        if let Some(from) = from_broker {
            if self.partitioned(from, target) || self.partitioned(target, from) {
                // No answer at all: the transport gives up after twice the heartbeat interval.
                let at = self.now.after(self.config.heartbeat * 2);
                self.queue.schedule(at, Event::DialAnswer { dialer, conn: None });
                return;
            }
        }
        let dialer_end = match dialer {
            Dialer::Node(node) => End::Node { node, conn: ConnId(u32::MAX) },
            Dialer::Client(client) => End::Client(client),
        };
        let acceptor = End::Pending { broker: target, incarnation: self.brokers[target].incarnation };
        let conn = self.network.open(dialer_end, acceptor);
        self.queue.schedule(self.now.plus_nanos(latency), Event::Accept { conn });
        self.queue.schedule(self.now.plus_nanos(2 * latency), Event::DialAnswer { dialer, conn: Some(conn) });
    }

    /// A dialled connection reaches its broker: a random shard accepts it (SO_REUSEPORT).
    fn accept(&mut self, conn: SimConnId) -> Result<(), Violation> {
        let Some(connection) = self.network.connections.get(&conn) else { return Ok(()) };
        let End::Pending { broker, incarnation } = connection.ends[1] else { return Ok(()) };
        if self.brokers[broker].incarnation != incarnation || !self.brokers[broker].up() {
            self.reset(conn);
            return Ok(());
        }
        let shard = self.rng.index(usize::from(self.config.shards)) as u16;
        let b = &mut self.brokers[broker];
        let id = b.new_conn(shard);
        b.conns.insert((shard, id.0), (conn, 1));
        let node = b.node_ref(shard);
        if let Some(connection) = self.network.connections.get_mut(&conn) {
            connection.ends[1] = End::Node { node, conn: id };
        }
        self.trace.record(format!("{} {} accept {conn}", self.now, node_name(node)));
        self.with_node(node, |node, _| node.handle_accept(id))?;
        // Bytes that arrived before the accept was carried out.
        for dir in 0..2 {
            if let Some(at) = self.network.reschedule(conn, dir) {
                self.queue.schedule(at.max(self.now), Event::Pipe { conn, dir });
            }
        }
        Ok(())
    }

    /// A dial's answer reaches its dialer.
    fn dial_answer(&mut self, dialer: Dialer, conn: Option<SimConnId>) -> Result<(), Violation> {
        match dialer {
            Dialer::Node(node) => {
                let broker = &mut self.brokers[node.broker];
                if broker.incarnation != node.incarnation || !broker.up() {
                    if let Some(conn) = conn {
                        self.reset(conn);
                    }
                    return Ok(());
                }
                broker.dialing[usize::from(node.shard)] = false;
                match conn {
                    Some(sim) => {
                        let id = broker.new_conn(node.shard);
                        broker.conns.insert((node.shard, id.0), (sim, 0));
                        if let Some(connection) = self.network.connections.get_mut(&sim) {
                            connection.ends[0] = End::Node { node, conn: id };
                        }
                        self.trace.record(format!("{} {} dialed {sim}", self.now, node_name(node)));
                        let result = self.with_node(node, |node, now| node.handle_dialed(id, now));
                        // The connection may have been reset before the dialer knew it.
                        if !self.network.connections.contains_key(&sim) {
                            self.queue.schedule(self.now, Event::Closed { conn: sim, end: 0 });
                        }
                        result
                    }
                    None => {
                        self.trace.record(format!("{} {} dial failed", self.now, node_name(node)));
                        self.with_node(node, |node, now| node.handle_dial_failed(now))
                    }
                }
            }
            Dialer::Client(client) => {
                let live = conn.filter(|c| self.network.connections.get(c).is_some_and(|c| !c.closed[0]));
                self.trace.record(format!("{} client {client} dialed: {live:?}", self.now));
                let mut actions = std::mem::take(&mut self.actions);
                actions.clear();
                match client {
                    PRODUCER => self.producer.dialed(live, self.now, &mut actions),
                    CONSUMER => self.consumer.dialed(live, self.now, &mut actions),
                    _ => self.manager.dialed(live, &mut actions),
                }
                self.client_actions(client, &mut actions)?;
                self.actions = actions;
                Ok(())
            }
        }
    }

    /// Delivers the head chunk of a pipe.
    fn deliver_pipe(&mut self, conn: SimConnId, dir: usize) -> Result<(), Violation> {
        let Some(connection) = self.network.connections.get(&conn) else { return Ok(()) };
        let receiver = connection.ends[1 - dir];
        if matches!(receiver, End::Pending { .. }) {
            // Not accepted yet: the accept reschedules the pipe.
            if let Some(c) = self.network.connections.get_mut(&conn) {
                c.pipes[dir].scheduled = false;
            }
            return Ok(());
        }
        let delivery = self.network.deliver(conn, dir, self.now);
        if let Some(at) = self.network.reschedule(conn, dir) {
            self.queue.schedule(at.max(self.now), Event::Pipe { conn, dir });
        }
        match delivery {
            Delivery::Nothing | Delivery::Stalled => Ok(()),
            Delivery::Fin => {
                self.trace.record(format!("{} {conn} fin to end {}", self.now, 1 - dir));
                self.closed(conn, 1 - dir)?;
                // Our side's reader sees the end once the peer closed in turn.
                self.queue.schedule(self.now, Event::Closed { conn, end: dir });
                Ok(())
            }
            Delivery::Bytes(bytes) => {
                self.trace.record(format!("{} {conn} {}B to end {}", self.now, bytes.len(), 1 - dir));
                match receiver {
                    End::Node { node, conn: id } => {
                        if self.consumer.conn() == Some(conn) {
                            let delivered =
                                self.network.connections.get(&conn).map_or(0, |c| c.pipes[dir].delivered_bytes);
                            self.oracle.consumer_bytes_delivered(conn, delivered);
                        }
                        self.node_bytes(node, id, bytes)
                    }
                    End::Client(client) => self.client_bytes(client, conn, &bytes),
                    End::Pending { .. } => Ok(()),
                }
            }
        }
    }

    /// Bytes for a node's connection: appended to its buffer and read unless reads are paused.
    fn node_bytes(&mut self, node: NodeRef, id: ConnId, bytes: BytesMut) -> Result<(), Violation> {
        let broker = &mut self.brokers[node.broker];
        if broker.incarnation != node.incarnation || !broker.up() {
            return Ok(());
        }
        let key = (node.shard, id.0);
        broker.rx.entry(key).or_default().extend_from_slice(&bytes);
        if broker.nodes[usize::from(node.shard)].read_paused(id) {
            self.paused_reads[node.broker].insert(key);
            return Ok(());
        }
        self.read_buffer(node, id)
    }

    /// Lets the node read its buffer of `id`.
    fn read_buffer(&mut self, node: NodeRef, id: ConnId) -> Result<(), Violation> {
        let key = (node.shard, id.0);
        let Some(mut buffer) = self.brokers[node.broker].rx.remove(&key) else { return Ok(()) };
        let result = self.with_node(node, |shard, now| shard.handle_read(id, &mut buffer, now));
        // The connection may have been handed over or closed meanwhile; the rest stays only if
        // the node still knows it here.
        let broker = &mut self.brokers[node.broker];
        if broker.conns.contains_key(&key) && !buffer.is_empty() {
            put_back(&mut broker.rx, key, buffer);
        }
        result
    }

    /// Feeds the reads held back on `node` while producers had to pause.
    fn feed_held_reads(&mut self, node: NodeRef) {
        let held: Vec<(u16, u32)> =
            self.paused_reads[node.broker].iter().copied().filter(|&(shard, _)| shard == node.shard).collect();
        for key in held {
            let broker = &self.brokers[node.broker];
            if broker.nodes[usize::from(node.shard)].producers_must_pause() {
                return;
            }
            self.paused_reads[node.broker].remove(&key);
            let id = ConnId(key.1);
            let Some(mut buffer) = self.brokers[node.broker].rx.remove(&key) else { continue };
            let broker = &mut self.brokers[node.broker];
            let now = broker.clock.now(self.now);
            let shard = &mut broker.nodes[usize::from(node.shard)];
            shard.handle_read(id, &mut buffer, now);
            shard.pump(now);
            if broker.conns.contains_key(&key) && !buffer.is_empty() {
                put_back(&mut broker.rx, key, buffer);
            }
            // Outputs are drained by the caller (`with_node`'s work loop).
        }
    }

    /// Bytes for a client.
    fn client_bytes(&mut self, client: usize, conn: SimConnId, bytes: &[u8]) -> Result<(), Violation> {
        let mut actions = std::mem::take(&mut self.actions);
        let mut notes = std::mem::take(&mut self.notes);
        actions.clear();
        notes.clear();
        let received = match client {
            PRODUCER => self.producer.received(bytes, self.now, &mut actions, &mut notes),
            CONSUMER => self.consumer.received(bytes, self.now, &mut self.rng, &mut actions, &mut notes),
            _ => match self.manager.received(conn, bytes, &mut actions) {
                Ok(Some((broker, answer))) => {
                    self.trace.record(format!("{} manager: promote b{broker}: {answer:?}", self.now));
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            },
        };
        if let Err(error) = received {
            return Err(violation("protocol", format!("client {client} on {conn}: {error}")));
        }
        self.client_actions(client, &mut actions)?;
        self.client_notes(&mut notes)?;
        self.actions = actions;
        self.notes = notes;
        Ok(())
    }

    /// Carries out a client's actions.
    fn client_actions(&mut self, client: usize, actions: &mut Vec<ClientAction>) -> Result<(), Violation> {
        for action in actions.drain(..) {
            match action {
                ClientAction::Dial { broker } => {
                    let address = self.brokers[broker].address().to_string();
                    self.dial(Dialer::Client(client), &address);
                }
                ClientAction::Write { conn, bytes } => {
                    if let Some(at) = self.network.send(conn, 0, bytes, self.now, &mut self.rng) {
                        self.queue.schedule(at, Event::Pipe { conn, dir: 0 });
                    }
                }
                ClientAction::Close { conn } => {
                    if let Some(at) = self.network.send_fin(conn, 0, self.now, &mut self.rng) {
                        self.queue.schedule(at, Event::Pipe { conn, dir: 0 });
                    }
                }
                ClientAction::WakeAt(at) => self.queue.schedule(at.max(self.now), Event::ClientWake { client }),
            }
        }
        Ok(())
    }

    /// Hands a client's notes to the oracle.
    fn client_notes(&mut self, notes: &mut Vec<ClientNote>) -> Result<(), Violation> {
        for note in notes.drain(..) {
            match note {
                ClientNote::Confirmed { number, conn, published_at } => {
                    let Some(broker) = self.broker_of(conn) else { continue };
                    if self.trace.verbose() {
                        self.trace.record(format!("{} producer: {number} confirmed by b{}", self.now, broker.0));
                    }
                    let superseded = self.oracle.superseded(broker.0);
                    let holders = self.linked_holders(broker.0, published_at, number);
                    self.oracle.confirmed(number, self.now, superseded, &holders)?;
                }
                ClientNote::Delivered { number, redelivered, conn } => {
                    let Some(broker) = self.broker_of(conn) else { continue };
                    if self.trace.verbose() {
                        self.trace.record(format!("{} consumer got {number} redelivered={redelivered}", self.now));
                    }
                    self.oracle.delivered(number, redelivered, conn, broker)?;
                    // Delivery waits for the backups: a message first published after a backup
                    // linked took a hold for it, and is delivered only once that backup has it.
                    if let Some(first_sent) = self.producer.first_sent(number) {
                        let holders = self.linked_holders(broker.0, first_sent, number);
                        self.oracle.delivered_held(number, &holders)?;
                    }
                }
                ClientNote::Acked { numbers, conn } => {
                    let Some(broker) = self.broker_of(conn) else { continue };
                    let offset = self.network.connections.get(&conn).map_or(u64::MAX, |c| c.pipes[0].sent_bytes);
                    self.oracle.acked(&numbers, conn, offset, broker);
                }
                ClientNote::Rejected { number, reason } => {
                    self.trace.record(format!("{} producer: {number} rejected: {reason}", self.now));
                }
                ClientNote::Served { broker } => {
                    self.trace.record(format!("{} client served by b{broker}", self.now));
                }
            }
        }
        Ok(())
    }

    /// For every broker whose link to the queue's shard of `primary` was accepted before
    /// `published_at` and is open at both ends: whether it holds `number`. The primary's stream
    /// to such a link holds the confirm of a publish enqueued after it opened until the backup
    /// applied it (a link opened later has it in its catch-up, which holds no confirm).
    fn linked_holders(&mut self, primary: usize, published_at: SimTime, number: u64) -> Vec<(usize, bool)> {
        let queue_shard = ringmq_core::shard::shard_of(self.config.queue, self.config.shards).0;
        let mut linked: Vec<usize> = Vec::new();
        for connection in self.network.connections.values() {
            if connection.closed != [false, false] {
                continue;
            }
            let (End::Node { node: from, .. }, End::Node { node: to, .. }) = (connection.ends[0], connection.ends[1])
            else {
                continue;
            };
            let accepted_before = connection.link_accepted_at.is_some_and(|at| at < published_at);
            if to.broker == primary && from.broker != primary && from.shard == queue_shard && accepted_before {
                linked.push(from.broker);
            }
        }
        linked.sort_unstable();
        linked.dedup();
        linked.into_iter().map(|b| (b, self.held_cached(b).contains(&number))).collect()
    }

    /// `held`, computed once per step and broker.
    fn held_cached(&mut self, broker: usize) -> &BTreeSet<u64> {
        let steps = self.steps;
        if self.held_cache[broker].as_ref().is_none_or(|(at, _)| *at != steps) {
            let held = self.held(broker);
            self.held_cache[broker] = Some((steps, held));
        }
        &self.held_cache[broker].as_ref().expect("just filled").1
    }

    /// The broker (and incarnation) a client connection goes to.
    fn broker_of(&self, conn: SimConnId) -> Option<(usize, u32)> {
        match self.network.connections.get(&conn)?.ends[1] {
            End::Node { node, .. } => Some((node.broker, node.incarnation)),
            _ => None,
        }
    }

    /// End `end` of `conn` learns the connection ended.
    fn closed(&mut self, conn: SimConnId, end: usize) -> Result<(), Violation> {
        let Some(connection) = self.network.connections.get(&conn) else { return Ok(()) };
        let who = connection.ends[end];
        if !self.network.mark_closed(conn, end) {
            return Ok(());
        }
        match who {
            End::Node { node, conn: id } => {
                let broker = &mut self.brokers[node.broker];
                if broker.incarnation != node.incarnation || !broker.up() {
                    return Ok(());
                }
                if id.0 == u32::MAX {
                    // A dial whose answer has not come yet: the answer will find it closed.
                    return Ok(());
                }
                let key = (node.shard, id.0);
                broker.conns.remove(&key);
                broker.rx.remove(&key);
                self.paused_reads[node.broker].remove(&key);
                self.trace.record(format!("{} {} closed {conn}", self.now, node_name(node)));
                self.with_node(node, |node, now| node.handle_closed(id, now))
            }
            End::Client(client) => {
                let current = match client {
                    PRODUCER => self.producer.conn(),
                    CONSUMER => self.consumer.conn(),
                    _ => Some(conn),
                };
                if current != Some(conn) {
                    // Reset before the dial's answer reached the client: the answer says so.
                    return Ok(());
                }
                self.trace.record(format!("{} client {client} closed {conn}", self.now));
                let mut actions = std::mem::take(&mut self.actions);
                actions.clear();
                match client {
                    PRODUCER => self.producer.closed(self.now, &mut actions),
                    CONSUMER => self.consumer.closed(self.now, &mut actions),
                    _ => self.manager.closed(conn),
                }
                self.client_actions(client, &mut actions)?;
                self.actions = actions;
                Ok(())
            }
            End::Pending { .. } => Ok(()),
        }
    }

    /// Resets a connection: everything in flight is lost and both ends see the end.
    fn reset(&mut self, conn: SimConnId) {
        self.network.drop_in_flight(conn);
        self.network.counters.resets += 1;
        let latency = self.network.latency(&mut self.rng);
        for end in 0..2 {
            self.queue.schedule(self.now.plus_nanos(latency), Event::Closed { conn, end });
        }
    }

    /// Whether bytes from broker `from` to `to` are blocked.
    fn partitioned(&self, from: usize, to: usize) -> bool {
        self.network.blocked.contains(&(from, to))
    }

    /// The broker at `address`.
    fn resolve(&self, address: &str) -> Option<usize> {
        self.brokers.iter().position(|b| b.address() == address)
    }

    /// A paused broker runs again: what came meanwhile is delivered, in order.
    fn resume(&mut self, broker: usize) {
        self.trace.record(format!("{} b{broker} resumes", self.now));
        let b = &mut self.brokers[broker];
        b.paused_until = None;
        for event in std::mem::take(&mut b.deferred) {
            self.queue.schedule(self.now, event);
        }
    }

    /// Crashes a broker: its connections reset, its memory is lost; it restarts at `restart_at`.
    fn crash(&mut self, broker: usize, restart_at: Option<SimTime>) {
        self.trace.record(format!("{} b{broker} crashes", self.now));
        for (conn, end) in self.network.connections_of(broker) {
            self.network.mark_closed(conn, end);
            self.reset(conn);
        }
        self.brokers[broker].crash();
        self.paused_reads[broker].clear();
        if let Some(at) = restart_at {
            self.queue.schedule(at, Event::Restart { broker });
        }
    }

    /// The cluster manager's tick.
    fn manager_tick(&mut self) -> Result<(), Violation> {
        for broker in 0..self.brokers.len() {
            if self.brokers[broker].reachable() {
                // A status probe is an input: the broker first runs what is due (a resumed ready
                // broker whose lease ended answers `joining`).
                let node = self.brokers[broker].node_ref(0);
                self.with_node(node, |node, now| node.handle_timeout(now))?;
            }
        }
        let statuses: Vec<BrokerStatus> = self
            .brokers
            .iter()
            .map(|b| BrokerStatus { reachable: b.reachable(), state: b.status().map(|(s, _)| s) })
            .collect();
        match self.manager.tick(self.now, &statuses, &mut self.rng) {
            ManagerDecision::Wait => Ok(()),
            ManagerDecision::Promote(broker) => {
                self.trace.record(format!("{} manager promotes b{broker} ({:?})", self.now, statuses[broker].state));
                let mut actions = std::mem::take(&mut self.actions);
                actions.clear();
                self.manager.begin(broker, self.now, &mut actions);
                self.client_actions(MANAGER, &mut actions)?;
                self.actions = actions;
                Ok(())
            }
            ManagerDecision::RestartCluster => {
                self.trace.record(format!("{} manager restarts the cluster: no broker can become primary", self.now));
                self.oracle.cluster_restarted();
                for broker in 0..self.brokers.len() {
                    if self.brokers[broker].up() {
                        self.crash(broker, None);
                    }
                    self.queue.schedule(self.now, Event::Restart { broker });
                }
                Ok(())
            }
        }
    }

    /// One tick of the fault injector.
    fn inject_faults(&mut self) -> Result<(), Violation> {
        let plan = self.config.faults.clone();
        self.reset_tail_losses();
        if self.rng.chance(plan.reset_per_million) && !self.network.connections.is_empty() {
            let ids: Vec<SimConnId> = self.network.connections.keys().copied().collect();
            let conn = ids[self.rng.index(ids.len())];
            self.trace.record(format!("{} fault: reset {conn}", self.now));
            self.faults_done[0] += 1;
            self.reset(conn);
        }
        if self.rng.chance(plan.partition_per_million) && self.brokers.len() >= 2 {
            let a = self.rng.index(self.brokers.len());
            let b = (a + 1 + self.rng.index(self.brokers.len() - 1)) % self.brokers.len();
            let both = self.rng.below(2) == 0;
            let until = self.now.plus_nanos(self.rng.between(1, plan.partition_max.as_nanos() as u64));
            self.trace.record(format!(
                "{} fault: partition b{a} -> b{b}{} until {until}",
                self.now,
                if both { " both ways" } else { "" }
            ));
            self.faults_done[1] += 1;
            self.partitions.push((until, a, b, both));
            self.block_partitions();
            self.queue.schedule(until, Event::PartitionEnds);
        }
        if self.rng.chance(plan.crash_per_million) {
            let broker = self.rng.index(self.brokers.len());
            // Keep a holder of the data: a primary crashes only while another broker that runs
            // (not paused) is ready to take over. A primary alone holds what it confirmed alone;
            // losing that with it is no finding.
            let primary = self.brokers[broker].status().is_some_and(|(s, _)| s.is_primary());
            let ready_left = (0..self.brokers.len()).any(|other| {
                other != broker
                    && self.brokers[other].reachable()
                    && self.brokers[other].status().is_some_and(|(s, _)| s == BrokerState::Ready)
            });
            if self.brokers[broker].up() && (!primary || ready_left) {
                let down = self.rng.between(1, plan.down_max.as_nanos() as u64);
                self.faults_done[2] += 1;
                self.crash(broker, Some(self.now.plus_nanos(down)));
            }
        }
        if self.rng.chance(plan.pause_per_million) {
            let broker = self.rng.index(self.brokers.len());
            if self.brokers[broker].up() && !self.brokers[broker].paused() {
                let until = self.now.plus_nanos(self.rng.between(1, plan.pause_max.as_nanos() as u64));
                self.trace.record(format!("{} fault: pause b{broker} until {until}", self.now));
                self.faults_done[3] += 1;
                self.brokers[broker].paused_until = Some(until);
                self.queue.schedule(until, Event::Resume { broker });
            }
        }
        if self.rng.chance(plan.clock_jump_per_million) {
            let broker = self.rng.index(self.brokers.len());
            let jump = Duration::from_nanos(self.rng.between(1, plan.clock_jump_max.as_nanos().max(1) as u64));
            self.trace.record(format!("{} fault: b{broker} clock jumps {jump:?}", self.now));
            self.faults_done[4] += 1;
            self.brokers[broker].clock.jump(jump);
        }
        Ok(())
    }

    /// Resets the connections whose last batch was lost a while ago (see `Network::tail_losses`):
    /// a lost batch with nothing after it is a gap no receiver can see, which TCP never makes;
    /// the reset stands for the corrupted stream being noticed.
    fn reset_tail_losses(&mut self) {
        for conn in self.network.tail_losses(self.now, self.config.heartbeat * 2) {
            self.trace.record(format!("{} fault: reset {conn} after losing its last batch", self.now));
            self.reset(conn);
        }
    }

    /// Blocks exactly the pairs of the partitions that have not ended, and lets stalled pipes of
    /// the others go.
    fn block_partitions(&mut self) {
        let now = self.now;
        self.partitions.retain(|&(until, ..)| until > now);
        self.network.blocked.clear();
        for &(_, a, b, both) in &self.partitions {
            self.network.blocked.insert((a, b));
            if both {
                self.network.blocked.insert((b, a));
            }
        }
        self.unstall();
    }

    /// The liveness phase begins: every fault heals.
    fn heal(&mut self) -> Result<(), Violation> {
        self.phase = Phase::Liveness;
        self.trace.record(format!("{} liveness: every fault heals", self.now));
        self.network.blocked.clear();
        self.partitions.clear();
        self.network.link_faults = Default::default();
        self.reset_tail_losses_now();
        self.unstall();
        self.producer.producing = false;
        for broker in 0..self.brokers.len() {
            if self.brokers[broker].paused() {
                self.resume(broker);
            }
            if !self.brokers[broker].up() {
                self.queue.schedule(self.now, Event::Restart { broker });
            }
        }
        Ok(())
    }

    /// Resets every connection whose last batch was lost (the liveness phase starts clean).
    fn reset_tail_losses_now(&mut self) {
        for conn in self.network.tail_losses(self.now, Duration::ZERO) {
            self.trace.record(format!("{} heal: reset {conn}, which lost its last batch", self.now));
            self.reset(conn);
        }
    }

    /// Schedules the pipes a healed partition had stalled.
    fn unstall(&mut self) {
        for (conn, dir) in self.network.unstall() {
            if let Some(at) = self.network.reschedule(conn, dir) {
                self.queue.schedule(at.max(self.now), Event::Pipe { conn, dir });
            }
        }
    }

    /// Checks the invariants after a step.
    fn check(&mut self) -> Result<(), Violation> {
        let observations: Vec<BrokerObservation> = self
            .brokers
            .iter()
            .map(|b| {
                let status = b.status();
                BrokerObservation {
                    incarnation: b.incarnation,
                    state: status.map(|(s, _)| s),
                    epoch: status.map(|(_, e)| e).unwrap_or_default(),
                }
            })
            .collect();
        let promoted = self.oracle.observe(&observations)?;
        for (broker, before) in promoted {
            let held = self.held(broker);
            self.trace.record(format!(
                "{} b{broker} promoted from {before:?} in epoch {}, holds {} messages",
                self.now,
                observations[broker].epoch,
                held.len()
            ));
            self.oracle.check_promotion(broker, before, &held)?;
        }
        Ok(())
    }

    /// The numbers broker `broker` holds in the queue (ready or delivered and unacked).
    fn held(&self, broker: usize) -> BTreeSet<u64> {
        let mut held = BTreeSet::new();
        let mut events = Vec::new();
        for node in &self.brokers[broker].nodes {
            events.clear();
            node.shard().replication_snapshot(&mut events);
            for event in &events {
                if let ReplicationEvent::Enqueued { queue, message, .. } = event {
                    if &**queue == self.config.queue {
                        if let Some(number) = std::str::from_utf8(&message.body).ok().and_then(|t| t.parse().ok()) {
                            held.insert(number);
                        }
                    }
                }
            }
        }
        held
    }

    /// Whether the cluster converged: one active primary, every other broker ready, everything
    /// confirmed and received.
    fn converged(&self) -> bool {
        let states: Vec<Option<BrokerState>> = self.brokers.iter().map(|b| b.status().map(|(s, _)| s)).collect();
        let active = states.iter().filter(|s| **s == Some(BrokerState::Active)).count();
        let ready = states.iter().filter(|s| **s == Some(BrokerState::Ready)).count();
        // The states and the producer first: the missing numbers cost a pass over every number.
        active == 1
            && active + ready == self.brokers.len()
            && self.producer.all_confirmed()
            && self.consumer.received.len() as u64 + (self.oracle.forgiven.len() + self.oracle.stale.len()) as u64
                >= self.producer.next_number
            && self.oracle.missing(self.producer.next_number, &self.consumer.received).is_empty()
    }

    /// Why the run did not converge.
    fn stuck_report(&self) -> String {
        let states: Vec<String> = self
            .brokers
            .iter()
            .map(|b| match b.status() {
                Some((s, e)) => format!("b{}: {s} epoch {e}", b.index),
                None => format!("b{}: down", b.index),
            })
            .collect();
        let missing = self.oracle.missing(self.producer.next_number, &self.consumer.received);
        let holders: Vec<String> = (0..self.brokers.len())
            .map(|b| {
                let held = self.held(b);
                format!("b{b} holds {} of them", missing.iter().filter(|n| held.contains(n)).count())
            })
            .collect();
        format!(
            "not converged within {:?} of healing: {}; producer: {} published, {} unconfirmed ({}); consumer: {} \
             missing {:?} ({}; {})",
            self.config.liveness,
            states.join(", "),
            self.producer.next_number,
            self.producer.unconfirmed.len(),
            self.producer.describe(),
            missing.len(),
            &missing[..missing.len().min(10)],
            self.consumer.describe(),
            holders.join(", ")
        )
    }

    /// The run's outcome.
    fn outcome(&self, result: Result<(), Violation>) -> Outcome {
        let counters = &self.oracle.counters;
        let summary = format!(
            "{} published, {} confirmed, {} delivered; duplicates {}, redelivered again {}, stale confirms {} ({} never delivered), lost with \
             cluster {}; checks: {} confirms, {} deliveries; promotions {}, cluster restarts {}; faults: resets {}, partitions {}, crashes {}, pauses {}, \
             clock jumps {}; batches lost {}, duplicated {}",
            self.producer.next_number,
            self.oracle.confirmed.len(),
            self.oracle.delivered.len(),
            counters.duplicates,
            counters.redelivered_again,
            counters.stale_confirms,
            self.oracle.stale.iter().filter(|n| !self.consumer.received.contains(n)).count(),
            counters.lost_with_cluster,
            counters.confirm_checks,
            counters.delivery_checks,
            counters.promotions,
            self.manager.restarts,
            self.faults_done[0],
            self.faults_done[1],
            self.faults_done[2],
            self.faults_done[3],
            self.faults_done[4],
            self.network.counters.frames_lost,
            self.network.counters.frames_duplicated,
        );
        Outcome {
            seed: self.config.seed,
            steps: self.steps,
            sim_time: self.now,
            trace_hash: self.trace.hash(),
            failure: result.err().map(|violation| Failure {
                violation,
                trace_tail: self.trace.recent().map(str::to_owned).collect(),
                config: format!(
                    "{} brokers x {} shards, heartbeat {:?}, maintenance {:?}, backup timeout {:?}; {}",
                    self.config.brokers,
                    self.config.shards,
                    self.config.heartbeat,
                    self.config.maintenance,
                    self.config.backup_timeout,
                    self.config.faults.describe()
                ),
            }),
            summary,
            counters: self.oracle.counters.clone(),
        }
    }
}

/// Puts the unread rest of a buffer back in front of anything that came meanwhile.
fn put_back(rx: &mut std::collections::BTreeMap<(u16, u32), BytesMut>, key: (u16, u32), mut rest: BytesMut) {
    if let Some(later) = rx.remove(&key) {
        rest.extend_from_slice(&later);
    }
    rx.insert(key, rest);
}

/// The names of the whole frames at the start of `bytes`, for the verbose trace.
fn frame_kinds(bytes: &[u8]) -> String {
    let mut kinds = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = match rest[4] {
            0x01 => "heartbeat",
            0x50 => "batch",
            0x51 => "link-confirm",
            0x52 => "link-open",
            0x53 => "link-accepted",
            0x54 => "marked-ready",
            0x55 => "members",
            0x56 => "lease-request",
            0x57 => "lease-grant",
            0x80 => "hello",
            0x81 => "ok",
            0x82 => "failed",
            0x83 => "error",
            0x90 => "confirm",
            0x91 => "deliver",
            _ => "other",
        };
        kinds.push(kind);
        if length == 0 || rest.len() < 4 + length {
            break;
        }
        rest = &rest[4 + length..];
    }
    format!("[{}]", kinds.join(" "))
}

/// A node's name in the trace: `b1/0#2` is shard 0 of broker 1 in its incarnation 2.
fn node_name(node: NodeRef) -> String {
    format!("b{}/{}#{}", node.broker, node.shard, node.incarnation)
}

/// A violation.
fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Mixed into the seed for the settings' draws, so they do not share a stream with the run's.
const CONFIG_SEED_SALT: u64 = 0x5eed_c0f1_9000_0001;
