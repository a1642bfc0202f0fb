//! The agenda: which step comes next (the next event or the earliest node timeout, a timeout first
//! on a tie), and what each event does.
//!
//! Invariants:
//! - Simulated time never goes backwards: a step's time is at least the previous one's.
//! - An event for a paused broker is deferred, in order, until it resumes; one for a crashed
//!   incarnation is dropped.

use super::*;

impl Simulation {
    /// The time of the next step: the next event or the earliest node timeout.
    pub(super) fn next_time(&self) -> Option<SimTime> {
        let event = self.queue.peek_time();
        let timeout = self.next_timeout().map(|(at, _)| at);
        match (event, timeout) {
            (Some(e), Some(t)) => Some(e.min(t)),
            (e, t) => e.or(t),
        }
    }

    /// The earliest due node timeout of a running broker, in simulated time (never before now).
    pub(super) fn next_timeout(&self) -> Option<(SimTime, NodeRef)> {
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
    pub(super) fn step(&mut self) -> Result<(), Violation> {
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
    pub(super) fn handle_event(&mut self, event: Event) -> Result<(), Violation> {
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
    pub(super) fn event_target(&self, event: &Event) -> Option<usize> {
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
}
