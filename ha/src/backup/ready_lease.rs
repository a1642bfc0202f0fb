//! The backup's side of a detached ready backup (`primary::role`, "Detached backups"): how long a
//! `ready` broker may stay ready without word from its primary.
//!
//! A ready backup whose link dropped stays `ready` (`primary-lost`), so that the cluster manager
//! can promote it if the primary died. But a primary that lives on holds acks for it only for
//! `ha-backup-timeout` plus a clock allowance after its `marked-ready` link ended, then confirms
//! without it; a promotion after that would lose what it missed. So a ready broker holds a
//! *lease*, and leaves `ready` for `joining` (`primary-lost-too-long`) when it runs out.
//!
//! The lease: on its accepted shard-0 link, the backup sends `lease-request` with a fresh token at
//! once and then every `ha-backup-timeout / LEASE_REQUESTS_PER_TIMEOUT`; the primary answers each
//! with `lease-grant` at once. A grant proves the primary still served the link after the request
//! was sent, so the lease lasts until `ha-backup-timeout` after the *sending* of the newest
//! granted request. However late a grant arrives (a partition that healed, a backup that was
//! stopped), it never stretches the lease past `ha-backup-timeout` after the primary saw the link
//! end. The `link-open` is the first request, and `link-accepted` its grant: `marked-ready` may
//! come before the answer to any `lease-request` (an empty catch-up is confirmed at once).
//!
//! Any new accepted shard-0 link moves a ready broker to `catchup` first, so a ready broker's
//! lease always comes from the link that carried its `marked-ready` (or a later `marked-ready`).
//!
//! Invariants:
//! - Before any input is handled (`ShardNode::before_input`), an expired lease takes effect: a broker that
//!   was stopped (a pause, SIGSTOP) and resumes never answers anyone, nor takes a promotion, as
//!   `ready` on a lease that ran out meanwhile.
//! - The lease's end is `poll_timeout`'s too, so an idle broker leaves `ready` on time.
//! - A ready broker without a granted request counts as expired.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ringmq_core::broker_state::{BrokerState, TransitionCause};

use crate::limits::LEASE_REQUESTS_PER_TIMEOUT;
use crate::node::core::NodeCore;

/// Lease requests not answered that a backup remembers; older ones are forgotten (their grants,
/// should they come, are then ignored, which only shortens the lease).
const REQUESTS_REMEMBERED_MAX: usize = 16;

/// A backup shard 0's lease requests and the last one granted.
#[derive(Debug)]
pub(crate) struct LeaseRequests {
    /// Between two requests on an accepted link.
    interval: Duration,
    /// The token of the next request.
    next_token: u64,
    /// Requests sent on the current link and not answered, oldest first, with when each was sent.
    asked: VecDeque<(u64, Instant)>,
    /// When the newest granted request was sent: the lease runs from there.
    granted: Option<Instant>,
    /// When the next request is due, while a link is accepted.
    due: Option<Instant>,
}

impl LeaseRequests {
    /// No request yet, for leases of `backup_timeout`.
    pub(crate) fn new(backup_timeout: Duration) -> LeaseRequests {
        LeaseRequests {
            interval: backup_timeout / LEASE_REQUESTS_PER_TIMEOUT,
            next_token: 0,
            asked: VecDeque::new(),
            granted: None,
            due: None,
        }
    }

    /// A link whose `link-open` was sent at `open_sent` was accepted at `now`: that grants the
    /// `link-open` as a request, and a `lease-request` is due at once.
    pub(crate) fn handle_accepted(&mut self, open_sent: Instant, now: Instant) {
        self.granted = Some(self.granted.map_or(open_sent, |granted| granted.max(open_sent)));
        self.due = Some(now);
    }

    /// The link ended: nothing more will be granted on it.
    pub(crate) fn handle_link_ended(&mut self) {
        self.asked.clear();
        self.due = None;
    }

    /// The token of a request to send now, if one is due.
    pub(crate) fn poll_request(&mut self, now: Instant) -> Option<u64> {
        if self.due.is_none_or(|due| now < due) {
            return None;
        }
        let token = self.next_token;
        self.next_token += 1;
        if self.asked.len() == REQUESTS_REMEMBERED_MAX {
            self.asked.pop_front();
        }
        self.asked.push_back((token, now));
        self.due = Some(now + self.interval);
        Some(token)
    }

    /// The primary granted the request `token` (and, answering in order, every earlier one).
    pub(crate) fn handle_grant(&mut self, token: u64) {
        let Some(index) = self.asked.iter().position(|&(asked, _)| asked == token) else { return };
        let (_, sent) = self.asked[index];
        self.asked.drain(..=index);
        self.granted = Some(self.granted.map_or(sent, |granted| granted.max(sent)));
    }

    /// When the next request is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// When the newest granted request was sent.
    pub(crate) fn granted(&self) -> Option<Instant> {
        self.granted
    }
}

/// When a ready broker's lease ends (shard 0): `ha-backup-timeout` after the sending of the
/// newest request its primary granted (`granted`, `LeaseRequests::granted`). `None` on other
/// shards, in other states, and when no request was granted (then the lease is over already).
pub(crate) fn ready_deadline(core: &NodeCore, granted: Option<Instant>) -> Option<Instant> {
    if core.shard.id().0 != 0 || core.shard.ha().state() != BrokerState::Ready {
        return None;
    }
    Some(granted? + core.config.backup_timeout)
}

/// Shard 0, before any input at `now`: a ready broker whose lease ended becomes `joining`.
/// Returns whether it did; then the caller ends the link the lease ran on, so that the broker
/// links and catches up again as any joining backup does.
pub(crate) fn expire_ready(granted: Option<Instant>, now: Instant, core: &mut NodeCore) -> bool {
    if core.shard.id().0 != 0 || core.shard.ha().state() != BrokerState::Ready {
        return false;
    }
    if ready_deadline(core, granted).is_some_and(|deadline| now < deadline) {
        return false;
    }
    let timeout = core.config.backup_timeout;
    match core.shard.handle_ha_transition(BrokerState::Joining, TransitionCause::PrimaryLostTooLong) {
        Ok(()) => {
            tracing::warn!(?timeout, "no lease granted by the primary for ha-backup-timeout: no longer ready")
        }
        Err(error) => tracing::warn!(%error, "could not leave ready"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_renews_the_lease_from_the_sending_of_its_request_and_late_ones_never_stretch_it() {
        // Goal: the lease runs from when the granted request was sent, never from when the grant
        // arrived; requests go out at once on accepting, then every timeout / 4; a link's end
        // forgets its requests, so a grant that comes after it counts for nothing.
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut lease = LeaseRequests::new(Duration::from_millis(400));
        assert_eq!(lease.poll_request(at(0)), None, "no link accepted");
        assert_eq!(lease.granted(), None);
        lease.handle_accepted(at(2), at(10));
        assert_eq!(lease.granted(), Some(at(2)), "the link-open was the first request");
        assert_eq!(lease.poll_request(at(10)), Some(0));
        assert_eq!(lease.poll_request(at(10)), None);
        assert_eq!(lease.poll_timeout(), Some(at(110)));
        assert_eq!(lease.poll_request(at(115)), Some(1));
        // Granted late, in order: each counts from its sending.
        lease.handle_grant(0);
        assert_eq!(lease.granted(), Some(at(10)));
        lease.handle_grant(1);
        assert_eq!(lease.granted(), Some(at(115)));
        lease.handle_grant(1);
        lease.handle_grant(99);
        assert_eq!(lease.granted(), Some(at(115)), "unknown or repeated tokens change nothing");
        // A request whose link ended is forgotten; its grant cannot come on a later link.
        assert_eq!(lease.poll_request(at(215)), Some(2));
        lease.handle_link_ended();
        assert_eq!(lease.poll_request(at(900)), None);
        lease.handle_grant(2);
        assert_eq!(lease.granted(), Some(at(115)));
    }

    #[test]
    fn only_the_newest_requests_are_remembered() {
        // Goal: an unanswering primary cannot grow the backup's memory: past the bound, the
        // oldest request is forgotten, and its grant counts for nothing.
        let start = Instant::now();
        let mut lease = LeaseRequests::new(Duration::from_millis(4));
        lease.handle_accepted(start, start);
        let mut now = start;
        for _ in 0..=REQUESTS_REMEMBERED_MAX {
            assert!(lease.poll_request(now).is_some());
            now += Duration::from_millis(1);
        }
        lease.handle_grant(0);
        assert_eq!(lease.granted(), Some(start), "only the link-open's");
        lease.handle_grant(1);
        assert_eq!(lease.granted(), Some(start + Duration::from_millis(1)));
    }
}
