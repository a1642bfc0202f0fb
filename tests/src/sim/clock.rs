//! Simulated time: the run's global clock and each broker's own view of it.
//!
//! The run's clock (`SimTime`, nanoseconds since the start) only moves when the runner takes the
//! next event. A broker reads it through its `BrokerClock`, which adds an offset that clock-jump
//! faults raise (never lower), so each broker's `now` never goes backwards while brokers may
//! disagree about the time within the bounds the faults allow. The state machines take
//! `std::time::Instant`s; a `BrokerClock` turns simulated time into one by adding it to a base
//! `Instant` taken once per run, so only differences between instants matter and the run stays
//! deterministic (no `Instant` is ever printed or hashed).
//!
//! Not here: deciding when clocks jump (`faults`).
//!
//! Invariants:
//! - `BrokerClock::now` is non-decreasing over a run for a given broker (offsets only grow and
//!   `SimTime` only grows).
//! - `to_sim` inverts `now` for any instant at or after the base.

use std::fmt;
use std::time::{Duration, Instant};

/// Simulated time: nanoseconds since the run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SimTime(pub u64);

impl SimTime {
    /// The time `duration` later (saturating).
    pub fn after(self, duration: Duration) -> SimTime {
        SimTime(self.0.saturating_add(duration.as_nanos().min(u128::from(u64::MAX)) as u64))
    }

    /// The time `nanos` later (saturating).
    pub fn plus_nanos(self, nanos: u64) -> SimTime {
        SimTime(self.0.saturating_add(nanos))
    }

    /// The time since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: SimTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Milliseconds with microseconds: short in a trace and precise enough to order events.
        write!(f, "{}.{:06}s", self.0 / 1_000_000_000, (self.0 % 1_000_000_000) / 1000)
    }
}

/// One broker's clock: simulated time plus an offset that only grows.
#[derive(Debug, Clone, Copy)]
pub struct BrokerClock {
    /// The `Instant` that simulated time 0 maps to (with no offset).
    base: Instant,
    /// How far ahead of simulated time this broker's clock runs, in nanoseconds.
    offset_nanos: u64,
}

impl BrokerClock {
    /// A clock without offset.
    pub fn new(base: Instant) -> BrokerClock {
        BrokerClock { base, offset_nanos: 0 }
    }

    /// The broker's `now` at simulated time `at`.
    pub fn now(&self, at: SimTime) -> Instant {
        self.base + Duration::from_nanos(at.0.saturating_add(self.offset_nanos))
    }

    /// The simulated time at which this broker's clock shows `instant` (at the earliest time 0).
    pub fn to_sim(&self, instant: Instant) -> SimTime {
        let since_base = instant.saturating_duration_since(self.base).as_nanos().min(u128::from(u64::MAX)) as u64;
        SimTime(since_base.saturating_sub(self.offset_nanos))
    }

    /// Moves the clock forward by `jump` (a clock-jump fault).
    pub fn jump(&mut self, jump: Duration) {
        self.offset_nanos = self.offset_nanos.saturating_add(jump.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// How far ahead of simulated time this clock is.
    pub fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_moves_now_forward_and_to_sim_inverts_it() {
        // Goal: offsets only move a broker's clock forward, and conversion round-trips.
        // Method: read now before and after a jump; convert back.
        let mut clock = BrokerClock::new(Instant::now());
        let at = SimTime(5_000_000);
        let before = clock.now(at);
        clock.jump(Duration::from_millis(3));
        let after = clock.now(at);
        assert_eq!(after - before, Duration::from_millis(3));
        assert_eq!(clock.to_sim(after), at);
        assert_eq!(format!("{at}"), "0.005000s");
    }
}
