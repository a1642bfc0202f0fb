//! Heartbeats and failure detection on one broker-to-broker link, for either end.
//!
//! Both ends of a link send a `heartbeat` frame every `link-heartbeat-interval` in which they sent
//! nothing else, and an end that has received nothing for twice that interval declares the peer
//! dead and closes the link (the reference, section 9 of its internals: the backup then
//! reconnects, the primary drops the backup). Unlike the reference, which truncated the interval
//! to whole seconds and so silently disabled heartbeats below 1 s, any interval from
//! `LINK_HEARTBEAT_INTERVAL_MIN` up works as given.
//!
//! Call contract: `handle_sent(now)` after anything was sent, `handle_received(now)` after
//! anything arrived; `poll_timeout()` is the next instant `handle_timeout(now)` must be called at
//! (earlier calls do nothing); `handle_timeout` returns what to do. `now` never goes backwards.
//!
//! Not here: the bytes of a heartbeat and the socket: the node (`primary::served_links`,
//! `backup::session`) writes the heartbeat and asks for the close, and its shell carries them out.
//!
//! Invariants:
//! - `poll_timeout()` is never later than `last_received + 2 * interval`, so a silent peer is
//!   detected no later than that (plus the timer's own lateness).
//! - `handle_timeout` never asks to send a heartbeat while the peer counts as dead.

use std::time::{Duration, Instant};

use crate::limits::{LINK_HEARTBEAT_INTERVAL_MAX, LINK_HEARTBEAT_INTERVAL_MIN, LINK_SILENT_INTERVALS_MAX};

/// One link's heartbeat clock. See the module doc for the call contract.
#[derive(Debug, Clone)]
pub struct LinkHeartbeat {
    /// `link-heartbeat-interval`.
    interval: Duration,
    /// When anything was last sent (the link's start counts).
    sent_last: Instant,
    /// When anything was last received (the link's start counts).
    received_last: Instant,
}

/// What `handle_timeout` asks the link's owner (the node) to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Send a `heartbeat` frame: nothing was sent for an interval.
    SendHeartbeat,
    /// Close the link: nothing was received for `LINK_SILENT_INTERVALS_MAX` intervals.
    ClosePeerSilent {
        /// How long nothing came.
        silent_for: Duration,
    },
}

impl LinkHeartbeat {
    /// A link that opened at `now`.
    ///
    /// # Panics
    /// If `interval` is outside `LINK_HEARTBEAT_INTERVAL_MIN..=LINK_HEARTBEAT_INTERVAL_MAX` (the
    /// broker's option parser refuses such values, so this is a bug).
    pub fn new(now: Instant, interval: Duration) -> LinkHeartbeat {
        assert!(interval >= LINK_HEARTBEAT_INTERVAL_MIN, "heartbeat interval {interval:?} below the minimum");
        assert!(interval <= LINK_HEARTBEAT_INTERVAL_MAX, "heartbeat interval {interval:?} above the maximum");
        LinkHeartbeat { interval, sent_last: now, received_last: now }
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Something (anything) was sent at `now`.
    pub fn handle_sent(&mut self, now: Instant) {
        self.sent_last = self.sent_last.max(now);
    }

    /// Something (anything) was received at `now`.
    pub fn handle_received(&mut self, now: Instant) {
        self.received_last = self.received_last.max(now);
    }

    /// When the peer counts as dead if nothing arrives before.
    pub fn peer_deadline(&self) -> Instant {
        self.received_last + self.interval * LINK_SILENT_INTERVALS_MAX
    }

    /// The next instant `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Instant {
        (self.sent_last + self.interval).min(self.peer_deadline())
    }

    /// The timer fired at `now`: what to do, if anything yet.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<HeartbeatAction> {
        if now >= self.peer_deadline() {
            return Some(HeartbeatAction::ClosePeerSilent {
                silent_for: now.saturating_duration_since(self.received_last),
            });
        }
        if now >= self.sent_last + self.interval {
            self.sent_last = now;
            return Some(HeartbeatAction::SendHeartbeat);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(200);

    #[test]
    fn an_idle_link_sends_a_heartbeat_every_interval() {
        // Goal: with a live peer, a heartbeat goes out once per interval and only then.
        // Method: a virtual clock; the peer answers every heartbeat at once.
        let start = Instant::now();
        let mut link = LinkHeartbeat::new(start, INTERVAL);
        assert_eq!(link.poll_timeout(), start + INTERVAL);
        // Early: nothing to do.
        assert_eq!(link.handle_timeout(start + INTERVAL / 2), None);
        for round in 1..=5u32 {
            let now = start + INTERVAL * round;
            assert_eq!(link.poll_timeout(), now);
            assert_eq!(link.handle_timeout(now), Some(HeartbeatAction::SendHeartbeat));
            link.handle_received(now);
        }
    }

    #[test]
    fn other_traffic_postpones_the_heartbeat() {
        // Goal: heartbeats are sent only when nothing else was. Method: send at half an interval.
        let start = Instant::now();
        let mut link = LinkHeartbeat::new(start, INTERVAL);
        link.handle_sent(start + INTERVAL / 2);
        link.handle_received(start + INTERVAL / 2);
        assert_eq!(link.poll_timeout(), start + INTERVAL + INTERVAL / 2);
        assert_eq!(link.handle_timeout(start + INTERVAL), None);
    }

    #[test]
    fn a_silent_peer_is_declared_dead_after_two_intervals() {
        // Goal: the close comes exactly at 2x the interval after the last receive, sub-second.
        // Method: never receive; follow poll_timeout.
        let start = Instant::now();
        let mut link = LinkHeartbeat::new(start, Duration::from_millis(100));
        let mut now;
        let mut sent = 0;
        loop {
            now = link.poll_timeout();
            match link.handle_timeout(now) {
                Some(HeartbeatAction::SendHeartbeat) => sent += 1,
                Some(HeartbeatAction::ClosePeerSilent { silent_for }) => {
                    assert_eq!(silent_for, Duration::from_millis(200));
                    break;
                }
                None => panic!("poll_timeout named an instant with nothing to do"),
            }
        }
        assert_eq!(now, start + Duration::from_millis(200));
        assert_eq!(sent, 1);
    }

    #[test]
    #[should_panic(expected = "below the minimum")]
    fn a_zero_interval_is_a_bug() {
        // Goal: a zero interval (a busy loop) cannot get in. Method: construct one.
        LinkHeartbeat::new(Instant::now(), Duration::ZERO);
    }
}
