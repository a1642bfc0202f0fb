//! The fault injector: at each fault tick, the seed's faults (crashes and restarts, pauses,
//! partitions, stalls, lost and doubled batches); at the end of the safety phase, healing all of
//! them for the liveness phase.
//!
//! Invariants:
//! - Every fault is drawn from the run's `SimRng`, so the seed decides it.
//! - After `heal`, no fault is in force and none is injected again.

use super::*;

impl Simulation {
    /// Whether bytes from broker `from` to `to` are blocked.
    pub(super) fn partitioned(&self, from: usize, to: usize) -> bool {
        self.network.blocked.contains(&(from, to))
    }

    /// A paused broker runs again: what came meanwhile is delivered, in order.
    pub(super) fn resume(&mut self, broker: usize) {
        self.trace.record(format!("{} b{broker} resumes", self.now));
        let b = &mut self.brokers[broker];
        b.paused_until = None;
        for event in std::mem::take(&mut b.deferred) {
            self.queue.schedule(self.now, event);
        }
    }

    /// Crashes a broker: its connections reset, its memory is lost; it restarts at `restart_at`.
    pub(super) fn crash(&mut self, broker: usize, restart_at: Option<SimTime>) {
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

    /// One tick of the fault injector.
    pub(super) fn inject_faults(&mut self) -> Result<(), Violation> {
        let plan = self.config.faults.clone();
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

    /// Blocks exactly the pairs of the partitions that have not ended, and lets stalled pipes of
    /// the others go.
    pub(super) fn block_partitions(&mut self) {
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
    pub(super) fn heal(&mut self) -> Result<(), Violation> {
        self.phase = Phase::Liveness;
        self.trace.record(format!("{} liveness: every fault heals", self.now));
        self.network.blocked.clear();
        self.partitions.clear();
        // A batch lost just before is found by its primary's confirm timeout, as any other.
        self.network.link_faults = Default::default();
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

    /// Schedules the pipes a healed partition had stalled.
    pub(super) fn unstall(&mut self) {
        for (conn, dir) in self.network.unstall() {
            if let Some(at) = self.network.reschedule(conn, dir) {
                self.queue.schedule(at.max(self.now), Event::Pipe { conn, dir });
            }
        }
    }
}
