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

mod agenda;
mod clients;
mod connections;
mod fault_injector;
mod observer;
mod shell;

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::ids::ConnId;
use ringmq_core::replication::ReplicationEvent;
use ringmq_ha::link::frame::LinkOpen;
use ringmq_ha::node::shell::pump_and_carry_out;
use ringmq_ha::promotion_check::{check_ready_promotion, MemberStatus, PromotionRefused};

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
    /// Backup links the primaries closed because a batch stayed unconfirmed (their confirm
    /// timeout), over every broker's lives.
    pub links_closed_unconfirmed: u64,
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
