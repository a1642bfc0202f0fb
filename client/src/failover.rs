//! Which address to dial next, when to wait, and when to give up: the reconnect state, no IO.
//!
//! Owns the address list of one connection (the caller's, then the ones learned from brokers),
//! the rotation over it, the back-off between passes and the `reconnect_timeout` deadline. The
//! connection's supervisor (`supervisor.rs`) does the dialling and reports each outcome here.
//!
//! Call contract: `begin(now)` when a connection is lost (or before the first connect); then
//! loop on `next_step(now)`: `Dial(addr)` → dial it and report `handle_failed`,
//! `handle_not_primary` or `handle_connected`; `Wait(until)` → sleep until then (or until the
//! deadline); `GiveUp` → stop, with `give_up_error`. `now` never goes backwards.
//!
//! Invariants:
//! - One pass dials every address once, in list order, starting after the address that was
//!   connected last (the one that just failed is tried last); a `NotPrimary` refusal moves on to
//!   the next address at once.
//! - Between two passes it waits `interval`, which starts at `reconnect_interval` and doubles
//!   after each failed pass up to `RECONNECT_INTERVAL_MAX`; a success starts it again.
//! - With a timeout, `next_step` returns `GiveUp` once `timeout` has passed since `begin`, and
//!   no `Wait` ends after that deadline.
//! - The list never holds an address twice, nor more than `FAILOVER_ADDRESSES_MAX`.

use std::time::{Duration, Instant};

use crate::broker_list::learned_from_refusal;
use crate::error::ClientError;
use crate::limits::{FAILOVER_ADDRESSES_MAX, RECONNECT_INTERVAL_MAX};

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Dial this `host:port`.
    Dial(String),
    /// Every address failed in this pass: wait until then.
    Wait(Instant),
    /// `reconnect_timeout` passed.
    GiveUp,
}

/// The reconnect state of one connection; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    /// Addresses in dial order; never empty.
    addresses: Vec<String>,
    /// Index of the next address to dial.
    next: usize,
    /// Addresses dialled in the current pass.
    dialled_in_pass: usize,
    /// `reconnect_interval`: the first wait between passes.
    interval_first: Duration,
    /// The wait after the next failed pass.
    interval: Duration,
    /// `reconnect_timeout`.
    timeout: Option<Duration>,
    /// When the current outage began.
    began: Option<Instant>,
    /// End of the wait between passes, while waiting.
    wait_until: Option<Instant>,
    /// The last failure, for the give-up error.
    last_failure: String,
}

impl Failover {
    /// The state for `addresses` (at least one).
    ///
    /// # Panics
    /// If `addresses` is empty: the URL parser never returns an empty list.
    pub(crate) fn new(addresses: Vec<String>, interval: Duration, timeout: Option<Duration>) -> Failover {
        assert!(!addresses.is_empty(), "a connection has at least one address");
        let mut failover = Failover {
            addresses: Vec::new(),
            next: 0,
            dialled_in_pass: 0,
            interval_first: interval,
            interval,
            timeout,
            began: None,
            wait_until: None,
            last_failure: "no attempt yet".to_string(),
        };
        failover.learn(addresses);
        failover
    }

    /// An outage (or the first connect) begins at `now`.
    pub(crate) fn begin(&mut self, now: Instant) {
        self.began = Some(now);
        self.dialled_in_pass = 0;
        self.wait_until = None;
    }

    /// What to do at `now`.
    pub(crate) fn next_step(&mut self, now: Instant) -> Step {
        let deadline = self.deadline();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Step::GiveUp;
        }
        if let Some(until) = self.wait_until {
            if now < until {
                return Step::Wait(until);
            }
            self.wait_until = None;
            self.dialled_in_pass = 0;
        }
        if self.dialled_in_pass >= self.addresses.len() {
            let until = now + self.interval;
            self.interval = (self.interval * 2).min(RECONNECT_INTERVAL_MAX);
            let until = deadline.map_or(until, |deadline| until.min(deadline));
            self.wait_until = Some(until);
            return Step::Wait(until);
        }
        // Taken modulo here, not when advancing: addresses learned since then come next.
        let index = self.next % self.addresses.len();
        let address = self.addresses[index].clone();
        self.next = index + 1;
        self.dialled_in_pass += 1;
        Step::Dial(address)
    }

    /// The dial of the last `Dial` failed with `error`.
    pub(crate) fn handle_failed(&mut self, error: &ClientError) {
        self.last_failure = error.to_string();
    }

    /// The last `Dial` reached a backup, which refused with `message`: learn the addresses it
    /// names; the next step dials the next address at once.
    pub(crate) fn handle_not_primary(&mut self, error: &ClientError, message: &str) {
        self.last_failure = error.to_string();
        self.learn(learned_from_refusal(message));
    }

    /// `address` accepted as primary: the outage is over, the back-off starts again, and the next
    /// outage starts with the address after this one.
    pub(crate) fn handle_connected(&mut self, address: &str) {
        self.began = None;
        self.wait_until = None;
        self.interval = self.interval_first;
        if let Some(index) = self.addresses.iter().position(|a| a == address) {
            self.next = index + 1;
        }
    }

    /// Adds the addresses not already known, at the end, up to `FAILOVER_ADDRESSES_MAX`.
    pub(crate) fn learn(&mut self, addresses: Vec<String>) {
        for address in addresses {
            if self.addresses.len() >= FAILOVER_ADDRESSES_MAX {
                break;
            }
            if !self.addresses.contains(&address) {
                self.addresses.push(address);
            }
        }
    }

    /// When the current outage gives up, with a timeout.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        Some(self.began? + self.timeout?)
    }

    /// The error after `GiveUp` at `now`.
    pub(crate) fn give_up_error(&self, now: Instant) -> ClientError {
        ClientError::ReconnectFailed {
            tried_ms: self.began.map_or(0, |began| now.saturating_duration_since(began).as_millis()),
            timeout_ms: self.timeout.map_or(0, |t| t.as_millis()),
            addresses: self.addresses.join(","),
            last: self.last_failure.clone(),
        }
    }

    /// Every address known, in dial order.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> &[String] {
        &self.addresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::frame::ErrorCode;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn lost() -> ClientError {
        ClientError::ConnectionLost { reason: "refused".into() }
    }

    #[test]
    fn a_pass_tries_every_address_then_waits_with_doubling_backoff() {
        // Goal: rotation in order, a wait between passes that doubles up to the maximum.
        let t0 = Instant::now();
        let mut failover = Failover::new(list(&["a", "b"]), Duration::from_secs(1), None);
        failover.begin(t0);
        assert_eq!(failover.next_step(t0), Step::Dial("a".into()));
        failover.handle_failed(&lost());
        assert_eq!(failover.next_step(t0), Step::Dial("b".into()));
        failover.handle_failed(&lost());
        assert_eq!(failover.next_step(t0), Step::Wait(t0 + Duration::from_secs(1)));
        // Asking early changes nothing.
        assert_eq!(failover.next_step(t0), Step::Wait(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(failover.next_step(t1), Step::Dial("a".into()));
        assert_eq!(failover.next_step(t1), Step::Dial("b".into()));
        assert_eq!(failover.next_step(t1), Step::Wait(t1 + Duration::from_secs(2)));
        // The wait is capped.
        let mut now = t1;
        for _ in 0..10 {
            now += RECONNECT_INTERVAL_MAX;
            failover.next_step(now);
            failover.next_step(now);
            let Step::Wait(until) = failover.next_step(now) else { panic!("expected a wait") };
            assert!(until - now <= RECONNECT_INTERVAL_MAX);
        }
    }

    #[test]
    fn not_primary_moves_on_at_once_and_teaches_the_public_url() {
        // Goal: a backup costs no wait, and the addresses it names join the list once.
        let t0 = Instant::now();
        let mut failover = Failover::new(list(&["a:1"]), Duration::from_secs(1), None);
        failover.begin(t0);
        assert_eq!(failover.next_step(t0), Step::Dial("a:1".into()));
        let message = "not primary: backup; connect to the cluster at tcp:a:1,tcp:b:2";
        let error = ClientError::Refused { code: ErrorCode::NotPrimary, message: message.into() };
        failover.handle_not_primary(&error, message);
        assert_eq!(failover.next_step(t0), Step::Dial("b:2".into()));
        assert_eq!(failover.addresses(), ["a:1", "b:2"]);
    }

    #[test]
    fn after_a_success_the_next_outage_starts_after_the_lost_address_and_backoff_resets() {
        // Goal: the broker that just failed is tried last; the wait starts small again.
        let t0 = Instant::now();
        let mut failover = Failover::new(list(&["a", "b", "c"]), Duration::from_millis(100), None);
        failover.begin(t0);
        for _ in 0..3 {
            failover.next_step(t0);
        }
        assert_eq!(failover.next_step(t0), Step::Wait(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(failover.next_step(t1), Step::Dial("a".into()));
        assert_eq!(failover.next_step(t1), Step::Dial("b".into()));
        failover.handle_connected("b");
        failover.begin(t1);
        assert_eq!(failover.next_step(t1), Step::Dial("c".into()));
        assert_eq!(failover.next_step(t1), Step::Dial("a".into()));
        assert_eq!(failover.next_step(t1), Step::Dial("b".into()));
        assert_eq!(failover.next_step(t1), Step::Wait(t1 + Duration::from_millis(100)));
    }

    #[test]
    fn the_timeout_gives_up_and_no_wait_ends_after_it() {
        // Goal: reconnect_timeout bounds the outage, waits included, and the error says why.
        let t0 = Instant::now();
        let mut failover = Failover::new(list(&["a"]), Duration::from_secs(5), Some(Duration::from_secs(2)));
        failover.begin(t0);
        assert_eq!(failover.next_step(t0), Step::Dial("a".into()));
        failover.handle_failed(&lost());
        assert_eq!(failover.next_step(t0), Step::Wait(t0 + Duration::from_secs(2)));
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(failover.next_step(t2), Step::GiveUp);
        let text = failover.give_up_error(t2).to_string();
        assert!(text.contains("2000 ms") && text.contains("refused") && text.contains('a'), "{text}");
    }

    #[test]
    fn learned_addresses_are_bounded_and_never_repeated() {
        // Goal: a broker cannot grow the list without bound.
        let mut failover = Failover::new(list(&["a"]), Duration::from_secs(1), None);
        failover.learn((0..200).map(|i| format!("h{i}:1")).chain(["a".to_string()]).collect());
        assert_eq!(failover.addresses().len(), FAILOVER_ADDRESSES_MAX);
        assert_eq!(failover.addresses().iter().filter(|a| *a == "a").count(), 1);
    }
}
