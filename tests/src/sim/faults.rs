//! Which faults a run injects and how often: drawn once per seed (swarm testing), then applied at
//! each fault tick of the safety phase.
//!
//! Swarm testing (TigerBeetle's `options_swarm`): rather than one mix of every fault at a middling
//! rate, each seed switches each kind of fault on or off and draws its own rate, so some runs hammer
//! one mechanism (many resets and nothing else) while others mix everything. Each rate is a
//! probability per fault tick (`FAULT_TICK`), in parts per million.
//!
//! The kinds: connection resets; partitions between two brokers, one-way or both ways; crash and
//! later restart of a broker (it loses everything); pauses (the broker takes no inputs and no
//! timeouts, like SIGSTOP); forward clock jumps of one broker, each below the heartbeat interval;
//! and on broker-to-broker links, loss and duplication of whole replication batches (see
//! `network`). Latency is always on, its range drawn per seed.
//!
//! Not here: carrying a fault out (`runner`); the liveness phase, which heals everything.
//!
//! Invariants:
//! - Every duration here is bounded: partitions, pauses and crashes end by themselves, and the
//!   liveness phase ends any that remain.
//! - A clock jump is below the heartbeat interval, so it is a skew the protocol must tolerate,
//!   not a broken clock.

use std::time::Duration;

use super::network::LinkFaults;
use super::rng::SimRng;

/// How often the fault injector decides, in simulated time.
pub const FAULT_TICK: Duration = Duration::from_millis(10);

/// The seed's fault mix.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Lowest one-way network latency.
    pub latency_min: Duration,
    /// Highest one-way network latency.
    pub latency_max: Duration,
    /// Per tick, per million: reset one random connection.
    pub reset_per_million: u32,
    /// Per tick, per million: partition two brokers (one way or both).
    pub partition_per_million: u32,
    /// How long a partition lasts at most.
    pub partition_max: Duration,
    /// Per tick, per million: crash a broker.
    pub crash_per_million: u32,
    /// How long a crashed broker stays down at most.
    pub down_max: Duration,
    /// Per tick, per million: pause a broker.
    pub pause_per_million: u32,
    /// How long a pause lasts at most.
    pub pause_max: Duration,
    /// Per tick, per million: jump one broker's clock forward.
    pub clock_jump_per_million: u32,
    /// The largest clock jump (below the heartbeat interval).
    pub clock_jump_max: Duration,
    /// Frame faults on broker-to-broker links.
    pub link: LinkFaults,
}

impl FaultPlan {
    /// Draws a fault mix. `heartbeat` bounds the clock jumps and scales partitions and pauses.
    pub fn draw(rng: &mut SimRng, heartbeat: Duration) -> FaultPlan {
        let latency_min = Duration::from_micros(rng.between(10, 200));
        let latency_max = latency_min + Duration::from_micros(rng.between(0, 5_000));
        let heartbeat_ms = heartbeat.as_millis() as u64;
        let rate = |rng: &mut SimRng, max: u32| {
            // Off in a third of the seeds; otherwise a rate up to `max`.
            if rng.below(3) == 0 {
                0
            } else {
                rng.between(1, u64::from(max)) as u32
            }
        };
        FaultPlan {
            latency_min,
            latency_max,
            reset_per_million: rate(rng, 20_000),
            partition_per_million: rate(rng, 10_000),
            partition_max: Duration::from_millis(rng.between(heartbeat_ms, heartbeat_ms * 8)),
            crash_per_million: rate(rng, 5_000),
            down_max: Duration::from_millis(rng.between(50, 2_000)),
            pause_per_million: rate(rng, 5_000),
            pause_max: Duration::from_millis(rng.between(heartbeat_ms / 2, heartbeat_ms * 6)),
            clock_jump_per_million: rate(rng, 10_000),
            clock_jump_max: heartbeat.mul_f64(0.9),
            link: LinkFaults { loss_per_million: rate(rng, 50_000), duplicate_per_million: rate(rng, 50_000) },
        }
    }

    /// A plan with no faults at all (and a fixed small latency).
    pub fn none() -> FaultPlan {
        FaultPlan {
            latency_min: Duration::from_micros(50),
            latency_max: Duration::from_micros(200),
            reset_per_million: 0,
            partition_per_million: 0,
            partition_max: Duration::ZERO,
            crash_per_million: 0,
            down_max: Duration::ZERO,
            pause_per_million: 0,
            pause_max: Duration::ZERO,
            clock_jump_per_million: 0,
            clock_jump_max: Duration::ZERO,
            link: LinkFaults::default(),
        }
    }

    /// One line naming the faults that are on, for the trace and the failure report.
    pub fn describe(&self) -> String {
        format!(
            "latency {:?}..{:?}, reset {}, partition {} (<= {:?}), crash {} (down <= {:?}), pause {} (<= {:?}), \
             clock jump {} (<= {:?}), batch loss {}, batch duplicate {} (per million per tick or frame)",
            self.latency_min,
            self.latency_max,
            self.reset_per_million,
            self.partition_per_million,
            self.partition_max,
            self.crash_per_million,
            self.down_max,
            self.pause_per_million,
            self.pause_max,
            self.clock_jump_per_million,
            self.clock_jump_max,
            self.link.loss_per_million,
            self.link.duplicate_per_million,
        )
    }
}
