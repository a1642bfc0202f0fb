//! A backup's outgoing link to the primary: which address of `ha-brokers-url` to try next, when,
//! and what the link is doing.
//!
//! As in the reference (section 6 of its internals), a backup does not know which broker is the
//! primary: it tries each address of `ha-brokers-url` in turn (its own address left out by the
//! caller). Another backup answers with an `error` `NotPrimary` and closes; the primary answers
//! `hello` and keeps the link. When the link drops (closed by the peer, or its heartbeats stop:
//! `link::heartbeat`), the backup goes back to trying addresses, starting with the one after the
//! address it was connected to.
//!
//! Pacing (ours; the reference made one attempt per `link-maintenance-interval`): attempts go in
//! *passes* over the addresses. Within a pass, a refusal or a failed dial moves on to the next
//! address at once; a new pass starts at most once per `link-maintenance-interval`. After a
//! failover that matters: the backup's first try of the new primary often comes before the
//! promotion did, and one attempt per interval per address made it wait up to one interval per
//! address before trying again. For the same reason, during the first interval after it lost a
//! link that was up, passes repeat every tenth of the interval (`FAST_PASSES_PER_INTERVAL`): the
//! new primary is usually promoted within milliseconds of the old one's death, and a new primary
//! holds its publishers' confirms until every backup that was ready comes back. The attempt rate
//! stays bounded (the number of addresses times ten per interval, for one interval after a loss;
//! the number of addresses per interval otherwise), so no backoff is needed.
//!
//! Call contract: `poll_connect(now)` names the address to dial when an attempt is due; the caller
//! reports how it ended with exactly one of `handle_connected` (the peer said `hello`),
//! `handle_refused` (it said `error`, e.g. `NotPrimary`) or `handle_closed` (the dial failed or the
//! link ended). `poll_timeout()` is the next instant an attempt is due. `handle_stop` ends it all
//! (the broker is no longer a backup). `now` never goes backwards.
//!
//! Not here: the preamble and the frames (`backup::session` writes and reads them; the shell only
//! carries the bytes), and any change of the backup's HA state: `backup::session` moves joining ->
//! catchup once the primary accepted the link, and a backup that loses its primary keeps its state
//! (`broker_state`'s `primary-lost` rows).
//!
//! Invariants:
//! - At most one pass over the addresses starts per `link-maintenance-interval` (per tenth of it
//!   during the interval after a lost link), and a pass tries each address at most once.
//! - At most one attempt or link is open at a time (`poll_connect` returns `None` meanwhile).
//! - The addresses are tried in order, cyclically.

use std::fmt;
use std::time::{Duration, Instant};

/// The link's state machine. See the module doc for the call contract.
#[derive(Debug, Clone)]
pub struct BackupLink {
    /// The addresses to try, `host:port`, in the URL's order; never empty.
    addresses: Vec<String>,
    /// `link-maintenance-interval`: the time between two attempts.
    maintenance_interval: Duration,
    /// Index of the address the next attempt dials.
    next_index: usize,
    /// When the next attempt may start.
    attempt_next_at: Instant,
    /// When the current pass started.
    pass_started_at: Instant,
    /// Attempts made in the current pass.
    pass_attempts: usize,
    /// Until when passes repeat fast: one interval after a link that was up was lost.
    fast_until: Option<Instant>,
    /// What the link does now.
    phase: Phase,
    /// Attempts since the link was last connected (or since the start).
    attempts_since_connected: u64,
    /// Totals since the start.
    counters: LinkCounters,
}

/// Totals since the link started, for the log and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Dials started.
    pub attempts: u64,
    /// Links that reached `hello`.
    pub connected: u64,
    /// Links a peer refused (another backup: `NotPrimary`).
    pub refused: u64,
    /// Dials that failed and links that ended, heartbeat timeouts included.
    pub closed: u64,
}

/// What the link does, as `ringmq` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Not running: the broker is not a backup.
    Stopped,
    /// Between attempts or dialling; `address` is the last one dialled (or the first to dial).
    Trying {
        /// The address.
        address: String,
        /// Attempts since the link was last connected.
        attempts: u64,
    },
    /// Connected to the primary at `address`.
    Connected {
        /// The address.
        address: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `attempt_next_at`.
    Waiting,
    /// Dialled `addresses[index]`, no answer yet.
    Dialling { index: usize },
    /// `addresses[index]` said `hello`.
    Connected { index: usize },
    /// `handle_stop` was called.
    Stopped,
}

impl BackupLink {
    /// A link that may make its first attempt at `now`.
    ///
    /// # Panics
    /// If `addresses` is empty or `maintenance_interval` is zero: the broker starts a link only
    /// with other brokers to try and checks the option, so either is a bug.
    pub fn new(now: Instant, addresses: Vec<String>, maintenance_interval: Duration) -> BackupLink {
        assert!(!addresses.is_empty(), "a backup link needs an address to try");
        assert!(!maintenance_interval.is_zero(), "a zero maintenance interval would dial in a busy loop");
        BackupLink {
            addresses,
            maintenance_interval,
            next_index: 0,
            attempt_next_at: now,
            pass_started_at: now,
            pass_attempts: 0,
            fast_until: None,
            phase: Phase::Waiting,
            attempts_since_connected: 0,
            counters: LinkCounters::default(),
        }
    }

    /// The address to dial now, when an attempt is due.
    pub fn poll_connect(&mut self, now: Instant) -> Option<&str> {
        if self.phase != Phase::Waiting || now < self.attempt_next_at {
            return None;
        }
        let index = self.next_index;
        self.next_index = (index + 1) % self.addresses.len();
        if self.pass_attempts == 0 {
            self.pass_started_at = now;
        }
        self.pass_attempts += 1;
        self.phase = Phase::Dialling { index };
        self.attempts_since_connected += 1;
        self.counters.attempts += 1;
        Some(&self.addresses[index])
    }

    /// When the next attempt is due; `None` while dialling, connected or stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.phase == Phase::Waiting).then_some(self.attempt_next_at)
    }

    /// The dialled peer answered `hello`: the link is up.
    ///
    /// # Panics
    /// If nothing was being dialled (a caller bug).
    pub fn handle_connected(&mut self, _now: Instant) {
        let Phase::Dialling { index } = self.phase else { panic!("connected while {:?}", self.phase) };
        self.phase = Phase::Connected { index };
        // A link lost later starts a new pass at once (its pass began at least an interval ago).
        self.pass_attempts = 0;
        self.attempts_since_connected = 0;
        self.counters.connected += 1;
    }

    /// The dialled peer refused the link (an `error` frame, `NotPrimary` from another backup). The
    /// next address is tried at once, unless every address was tried in this pass.
    pub fn handle_refused(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Dialling { .. }) {
            self.counters.refused += 1;
            self.end_attempt(now);
        }
    }

    /// The dial failed or the link ended (peer closed, heartbeat timeout). The next attempt goes
    /// to the next address: at once within a pass, else when the next pass is due (one interval
    /// after the previous pass started; at once after a link that was up).
    pub fn handle_closed(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Dialling { .. } | Phase::Connected { .. }) {
            if matches!(self.phase, Phase::Connected { .. }) {
                self.fast_until = Some(now + self.maintenance_interval);
            }
            self.counters.closed += 1;
            self.end_attempt(now);
        }
    }

    /// An attempt ended without a link: the next one is due at once within the pass, or at the
    /// start of the next pass.
    fn end_attempt(&mut self, now: Instant) {
        self.phase = Phase::Waiting;
        if self.pass_attempts > 0 && self.pass_attempts < self.addresses.len() {
            self.attempt_next_at = now;
        } else {
            let fast = self.fast_until.is_some_and(|until| now < until);
            let pause =
                if fast { self.maintenance_interval / FAST_PASSES_PER_INTERVAL } else { self.maintenance_interval };
            self.attempt_next_at = self.pass_started_at + pause;
            self.pass_attempts = 0;
        }
    }

    /// The broker is no longer a backup: no more attempts.
    pub fn handle_stop(&mut self) {
        self.phase = Phase::Stopped;
    }

    /// What the link does now.
    pub fn status(&self) -> LinkStatus {
        match self.phase {
            Phase::Stopped => LinkStatus::Stopped,
            Phase::Connected { index } => LinkStatus::Connected { address: self.addresses[index].clone() },
            Phase::Dialling { index } => {
                LinkStatus::Trying { address: self.addresses[index].clone(), attempts: self.attempts_since_connected }
            }
            Phase::Waiting => LinkStatus::Trying {
                address: self.addresses[self.next_index].clone(),
                attempts: self.attempts_since_connected,
            },
        }
    }

    /// Totals since the start.
    pub fn counters(&self) -> LinkCounters {
        self.counters
    }
}

impl fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkStatus::Stopped => f.write_str("stopped"),
            LinkStatus::Trying { address, attempts } => write!(f, "trying {address} ({attempts} attempts)"),
            LinkStatus::Connected { address } => write!(f, "connected to {address}"),
        }
    }
}

/// Passes per `link-maintenance-interval` during the interval after a lost link.
const FAST_PASSES_PER_INTERVAL: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    fn link(start: Instant) -> BackupLink {
        BackupLink::new(start, vec!["a:1".into(), "b:2".into(), "c:3".into()], INTERVAL)
    }

    #[test]
    fn refusing_backups_make_the_link_try_every_address_once_per_interval() {
        // Goal: addresses are tried in order, cyclically; within a pass a refusal moves on to the
        // next address at once, and a new pass starts one interval after the previous one.
        // Method: refuse every attempt; follow poll_timeout.
        let start = Instant::now();
        let mut link = link(start);
        let mut dialled = Vec::new();
        for pass in 0..2u32 {
            let pass_start = start + INTERVAL * pass;
            for attempt in 0..3u32 {
                let now = pass_start + INTERVAL / 100 * attempt;
                assert_eq!(link.poll_timeout(), Some(now), "pass {pass} attempt {attempt}");
                dialled.push(link.poll_connect(now).expect("an attempt is due").to_string());
                // One attempt at a time.
                assert_eq!(link.poll_connect(now), None);
                assert_eq!(link.poll_timeout(), None);
                link.handle_refused(now + INTERVAL / 100);
            }
            // Every address refused: the next pass waits for the interval.
            assert_eq!(link.poll_timeout(), Some(pass_start + INTERVAL));
            assert_eq!(link.poll_connect(pass_start + INTERVAL / 2), None);
        }
        assert_eq!(dialled, ["a:1", "b:2", "c:3", "a:1", "b:2", "c:3"]);
        assert_eq!(link.status(), LinkStatus::Trying { address: "a:1".into(), attempts: 6 });
        assert_eq!(link.status().to_string(), "trying a:1 (6 attempts)");
        assert_eq!(link.counters(), LinkCounters { attempts: 6, connected: 0, refused: 6, closed: 0 });
    }

    #[test]
    fn a_lost_link_retries_from_the_next_address() {
        // Goal: connected, then lost (heartbeat timeout or close): the backup tries again at once,
        // starting after the lost address.
        let start = Instant::now();
        let mut link = link(start);
        assert_eq!(link.poll_connect(start), Some("a:1"));
        link.handle_closed(start);
        // Within the pass: the next address at once.
        assert_eq!(link.poll_timeout(), Some(start));
        let now = start + INTERVAL / 10;
        assert_eq!(link.poll_connect(now), Some("b:2"));
        link.handle_connected(now);
        assert_eq!(link.status().to_string(), "connected to b:2");
        assert_eq!(link.poll_timeout(), None);
        // Lost ten intervals later: a new pass, due right away.
        let lost = now + INTERVAL * 10;
        link.handle_closed(lost);
        assert!(link.poll_timeout().is_some_and(|due| due <= lost), "{:?}", link.poll_timeout());
        assert_eq!(link.poll_connect(lost), Some("c:3"));
        assert_eq!(link.status(), LinkStatus::Trying { address: "c:3".into(), attempts: 1 });
        assert_eq!(link.counters(), LinkCounters { attempts: 3, connected: 1, refused: 0, closed: 2 });
    }

    #[test]
    fn after_a_lost_link_passes_repeat_fast_for_one_interval() {
        // Goal: a backup that lost its primary retries every tenth of the interval while the new
        // primary is being promoted, then falls back to one pass per interval.
        let start = Instant::now();
        let mut link = link(start);
        assert_eq!(link.poll_connect(start), Some("a:1"));
        link.handle_connected(start);
        let lost = start + INTERVAL * 10;
        link.handle_closed(lost);
        // A pass of refusals (b, c) and a failed dial of a: the next pass a tenth later.
        for address in ["b:2", "c:3", "a:1"] {
            let now = link.poll_timeout().expect("due");
            assert_eq!(link.poll_connect(now), Some(address));
            link.handle_refused(now);
        }
        let fast_pass = link.poll_timeout().expect("due");
        assert!(fast_pass <= lost + INTERVAL / 10, "{:?}", fast_pass - lost);
        // Once the interval after the loss is over, passes are an interval apart again.
        let late = lost + INTERVAL * 2;
        for _ in 0..3 {
            let now = link.poll_timeout().expect("due").max(late);
            link.poll_connect(now).expect("an attempt");
            link.handle_refused(now);
        }
        assert_eq!(link.poll_timeout(), Some(late + INTERVAL));
    }

    #[test]
    fn a_stopped_link_never_dials() {
        // Goal: once the broker is no longer a backup, nothing is dialled. Method: stop, then poll.
        let start = Instant::now();
        let mut link = link(start);
        link.handle_stop();
        assert_eq!(link.poll_connect(start + INTERVAL * 100), None);
        assert_eq!(link.poll_timeout(), None);
        assert_eq!(link.status(), LinkStatus::Stopped);
    }
}
