//! The primary's cluster-wide bookkeeping, on shard 0: which backups are linked and ready
//! (`membership`), telling backups when they are ready (`marked-ready`) and who else is
//! (`members`), and recovering mode after a promotion.
//!
//! Recovering mode (the reference's, section 7 of its internals): a newly promoted primary
//! expects every backup that was ready under the previous primary (the last `members` list this
//! broker received as a backup, itself left out). Each shard's `PrimaryReplication` holds new
//! acks for them (`expect_backups`); shard 0 counts an expected backup settled when it is
//! ready again (every shard's link caught up) or when `ha-backup-timeout` passes, and moves the
//! broker to `active` once all are settled. A primary that expects nobody is `active` at once (the
//! coordinator does that at promotion, see `Shard::set_expected_backups`). Each shard reaches
//! recovering mode when it applies the promotion, not all at once: a publish another shard
//! accepted under the promotion waits until the queue's shard applied it and held its acks for
//! the expected backups (`node::early_enqueues`; the node follows a promotion before its shard
//! takes another input), so no publish is acked without them however the shards' rings run.
//!
//! Detached backups: a backup this primary marked ready stays `ready` when a link of its drops,
//! and the shard of that link keeps the acks it held (`NodeControl::LinkLost { kept }`,
//! `primary::replication`, "Detached backups"). The backup leaves `ready` `ha-backup-timeout` after
//! it sent the last `lease-request` we answered on its shard-0 link (`backup::ready_lease`); so that link
//! must end too: when another shard's link is lost, shard 0 closes it. Every request we answered
//! was sent before the link ended, so from its end every shard holds acks for the backup for
//! `ha-backup-timeout` plus a clock allowance (`detached_hold`), then gives up on it
//! (`ExpectedTimedOut`), unless it is marked ready again first. A backup never marked ready by
//! this primary is not ready on its account: what a lost link kept for it is released at once (in
//! recovering mode, an expected backup's are released by the recovering timeout instead).
//!
//! Told members: the hold ends sooner when other ready backups remain. Each `members` carries the
//! set's version, and each backup answers `members-held`. Once every backup of the current ready
//! set (at least one) holds a set without the detached backup, its holds are released at once:
//! whatever is confirmed from then on is held by every ready backup, and a promotion check
//! (`crate::promotion_check`, which `ringmq ha promote` and cluster managers run) asks those
//! backups and refuses to promote the detached one, which a newer set left out. A backup fenced
//! by such a check (`HaFence`, before it promotes another broker) stops answering `members-held`
//! to this primary, so a check that passed is never overtaken by a release here. With no ready
//! backup left there is nobody to tell, and the lease's hold stands (`ha-min-ready-backups`
//! holds confirms in that case anyway).
//!
//! Invariants:
//! - `marked-ready` goes to a backup once per change to ready; `members` goes to every linked
//!   backup after each change to the set of ready backups.
//! - The broker leaves `recovering` only when no expected backup is left unsettled.
//! - Every publish accepted in `recovering` is held for the expected backups on its queue's shard,
//!   whichever shard accepted it (the shard asserts that it stores no publish before applying the
//!   epoch it was accepted in).
//! - While a backup may be `ready` on this primary's account (its `marked-ready` link is open, or
//!   ended less than `detached_hold` ago), no shard releases the acks a lost link of its
//!   kept, except for messages dequeued meanwhile, until every backup of a non-empty ready set
//!   without it holds that set.
//! - Ready set versions rise by one at each `members`, starting from 1 in each promotion.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ringmq_core::broker_state::{BrokerState, TransitionCause};
use ringmq_core::frame::ReadySet;
use ringmq_core::ids::ConnId;

use crate::limits::LEASE_CLOCK_ALLOWANCE_MAX;
use crate::link::frame::LinkFrame;
use crate::node::core::NodeCore;
use crate::node::output::{NodeControl, NodeOutput};
use crate::primary::membership::Membership;
use crate::primary::served_links::ServedLinks;

/// Shard 0's view of the cluster while this broker is a primary.
#[derive(Debug)]
pub(crate) struct PrimaryRole {
    /// Which shards of which backup are linked and caught up.
    membership: Membership,
    /// The current link of each backup on each shard, by backup name and shard: reports about an
    /// older link of the same backup and shard are ignored. The shard-0 links are where
    /// `marked-ready` and `members` go.
    links: BTreeMap<(String, u16), ConnId>,
    /// Expected backups not yet settled (recovering mode).
    expected: BTreeSet<String>,
    /// When `ha-backup-timeout` passes for the expected backups.
    expected_deadline: Option<Instant>,
    /// The shard-0 link each backup was last marked ready on (this backup's lease, on its side).
    marked_on: BTreeMap<String, ConnId>,
    /// Backups whose `marked-ready` link ended while links of theirs kept acks, with the
    /// instant every shard stops holding acks for them.
    detached: BTreeMap<String, Instant>,
    /// The version of the last ready set sent (`members`); 0 before any.
    ready_set_version: u64,
    /// The newest ready set version each backup holds (`members-held` on its current shard-0 link).
    held: BTreeMap<String, u64>,
}

impl PrimaryRole {
    /// No backups yet, for a broker of `shard_count` shards.
    pub(crate) fn new(shard_count: u16) -> PrimaryRole {
        PrimaryRole {
            membership: Membership::new(shard_count),
            links: BTreeMap::new(),
            expected: BTreeSet::new(),
            expected_deadline: None,
            marked_on: BTreeMap::new(),
            detached: BTreeMap::new(),
            ready_set_version: 0,
            held: BTreeMap::new(),
        }
    }

    /// When `ha-backup-timeout` passes, while backups are expected, or the first detached
    /// backup's hold ends.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let expected = self.expected_deadline.filter(|_| !self.expected.is_empty());
        expected.into_iter().chain(self.detached.values().copied()).min()
    }

    /// Shard 0: a backup's link on `shard` opened as `conn` there.
    pub(crate) fn handle_link_opened(&mut self, backup: &str, shard: u16, conn: ConnId) {
        if let Err(error) = self.membership.handle_shard_opened(backup, shard) {
            tracing::warn!(%error, "backup not tracked");
            return;
        }
        self.links.insert((backup.to_owned(), shard), conn);
    }

    /// Whether `conn` is `backup`'s current link on `shard`.
    fn is_current_link(&self, backup: &str, shard: u16, conn: ConnId) -> bool {
        self.links.get(&(backup.to_owned(), shard)) == Some(&conn)
    }

    /// Shard 0: a backup's link on `shard` holds everything that shard had when it opened.
    pub(crate) fn handle_caught_up(&mut self, backup: &str, shard: u16, conn: ConnId, core: &mut NodeCore) {
        if !self.is_current_link(backup, shard, conn) || !self.membership.handle_shard_caught_up(backup, shard) {
            return;
        }
        tracing::info!(%backup, "backup holds everything: marked ready");
        if let Some(&conn) = self.links.get(&(backup.to_owned(), 0)) {
            core.outputs.write_link_frame(conn, &LinkFrame::MarkedReady);
            // A fresh lease: what earlier links kept for it was released by their catch-ups.
            self.marked_on.insert(backup.to_owned(), conn);
            self.detached.remove(backup);
        }
        let settled = self.expected.remove(backup);
        self.send_members(core);
        if settled {
            self.settle_if_done(core);
        }
    }

    /// Shard 0: a backup's link on `shard` ended; that shard `kept` the acks it held.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn handle_link_lost(
        &mut self,
        backup: &str,
        shard: u16,
        conn: ConnId,
        kept: bool,
        now: Instant,
        core: &mut NodeCore,
        served: &mut ServedLinks,
    ) {
        if kept {
            self.hold_for_detached(backup, shard, conn, now, core, served);
        }
        // An older link was already replaced by a newer one of the same backup and shard.
        if self.is_current_link(backup, shard, conn) {
            self.links.remove(&(backup.to_owned(), shard));
            let was_ready = self.membership.is_ready(backup);
            self.membership.handle_shard_lost(backup, shard);
            if was_ready {
                self.send_members(core);
            }
        }
        // A set that left it out may be held everywhere already.
        self.release_told(core);
    }

    /// Shard 0: `shard` keeps acks for `backup`, whose link `lost` there ended. Decides until
    /// when (see the module doc, "Detached backups").
    fn hold_for_detached(
        &mut self,
        backup: &str,
        shard: u16,
        lost: ConnId,
        now: Instant,
        core: &mut NodeCore,
        served: &mut ServedLinks,
    ) {
        if self.detached.contains_key(backup) {
            // Its lease ended already; nothing held after that can matter past the deadline.
            return;
        }
        let Some(&marked_on) = self.marked_on.get(backup) else {
            if !self.expected.contains(backup) {
                // Never ready on our account: nothing to keep for it.
                let backups = vec![backup.to_owned()];
                core.send_control(shard, NodeControl::ExpectedTimedOut { backups });
            }
            return;
        };
        let hold = detached_hold(core.config.backup_timeout, core.config.heartbeat_interval);
        tracing::warn!(
            %backup,
            shard,
            ?hold,
            "ready backup detached: holding its confirms until it is ready again, or every other ready backup \
             holds a ready set without it, or the hold ends"
        );
        self.detached.insert(backup.to_owned(), now + hold);
        if self.is_current_link(backup, 0, marked_on) && (shard, lost) != (0, marked_on) {
            // Its lease runs on while this link lives: end it, so that it leaves `ready` in time.
            core.outputs.push(NodeOutput::Shutdown { conn: marked_on });
            served.handle_another_link_lost(marked_on, core);
        }
    }

    /// Any shard: the broker was just promoted (it is `recovering`). Opens the shard's replication
    /// with the expected backups, and on shard 0 starts the `ha-backup-timeout` clock.
    pub(crate) fn begin_recovery(&mut self, now: Instant, ready_members: &[String], core: &mut NodeCore) {
        let own = &core.config.own_address;
        let expected: Vec<String> = ready_members.iter().filter(|name| *name != own).cloned().collect();
        // Changes made before are not held for the expected backups (there were none to hold).
        core.change_holders(|replication| replication.expect_backups(&expected));
        if core.shard.id().0 != 0 || expected.is_empty() {
            return;
        }
        let timeout = core.config.backup_timeout;
        tracing::info!(?expected, ?timeout, "recovering: waiting for the backups that were ready");
        self.expected = expected.into_iter().collect();
        self.expected_deadline = Some(now + timeout);
    }

    /// Shard 0: `ha-backup-timeout` passed for the backups still expected, or a detached
    /// backup's hold ended.
    pub(crate) fn handle_timeout(&mut self, now: Instant, core: &mut NodeCore) {
        if self.poll_timeout().is_none_or(|deadline| now < deadline) {
            return;
        }
        let ended: Vec<String> =
            self.detached.iter().filter(|(_, deadline)| **deadline <= now).map(|(name, _)| name.clone()).collect();
        if !ended.is_empty() {
            tracing::warn!(backups = ?ended, "detached backups not ready again in time: no longer holding confirms for them");
            self.release_detached(ended, core);
        }
        if self.expected_deadline.is_none_or(|deadline| now < deadline) || self.expected.is_empty() {
            return;
        }
        self.expected_deadline = None;
        let late: Vec<String> = std::mem::take(&mut self.expected).into_iter().collect();
        tracing::warn!(?late, "ha-backup-timeout passed: no longer waiting for these backups");
        for shard in 0..core.config.shard_count {
            core.send_control(shard, NodeControl::ExpectedTimedOut { backups: late.clone() });
        }
        self.settle_if_done(core);
    }

    /// Shard 0: `active` once no expected backup is left.
    fn settle_if_done(&mut self, core: &mut NodeCore) {
        if !self.expected.is_empty() || core.shard.ha().state() != BrokerState::Recovering {
            return;
        }
        match core.shard.handle_ha_transition(BrokerState::Active, TransitionCause::ExpectedBackupsSettled) {
            Ok(()) => tracing::info!("every expected backup is ready or timed out: active"),
            Err(error) => tracing::warn!(%error, "could not leave recovering"),
        }
    }

    /// Shard 0: `backup` holds the ready set of `version` (its `members-held` on `conn`).
    pub(crate) fn handle_members_held(&mut self, backup: &str, conn: ConnId, version: u64, core: &mut NodeCore) {
        if !self.is_current_link(backup, 0, conn) {
            return;
        }
        self.held.insert(backup.to_owned(), version);
        self.release_told(core);
    }

    /// Shard 0: releases the detached backups' holds once every backup of the current ready set,
    /// which leaves them out, holds that set (see the module doc, "Told members").
    fn release_told(&mut self, core: &mut NodeCore) {
        if self.detached.is_empty() {
            return;
        }
        let ready = self.membership.ready_list();
        let version = self.ready_set_version;
        if ready.is_empty() || !ready.iter().all(|backup| self.held.get(backup) == Some(&version)) {
            return;
        }
        let told: Vec<String> = self.detached.keys().filter(|name| !ready.contains(name)).cloned().collect();
        if told.is_empty() {
            return;
        }
        tracing::warn!(
            backups = ?told,
            ?ready,
            version,
            "every ready backup holds a ready set without these detached backups: no longer holding confirms for them"
        );
        self.release_detached(told, core);
    }

    /// Shard 0: every shard stops holding acks for the detached `backups`.
    fn release_detached(&mut self, backups: Vec<String>, core: &mut NodeCore) {
        for backup in &backups {
            self.detached.remove(backup);
            self.marked_on.remove(backup);
        }
        for shard in 0..core.config.shard_count {
            core.send_control(shard, NodeControl::ExpectedTimedOut { backups: backups.clone() });
        }
    }

    /// Shard 0: tells every linked backup which backups are ready, as a new version of the set,
    /// and, with `ha-min-ready-backups`, every shard (`NodeControl::ReadyBackups`).
    fn send_members(&mut self, core: &mut NodeCore) {
        let ready = self.membership.ready_list();
        self.ready_set_version += 1;
        let version = self.ready_set_version;
        let frame = LinkFrame::Members { version, ready: ready.clone() };
        for ((_, shard), conn) in &self.links {
            if *shard == 0 {
                core.outputs.write_link_frame(*conn, &frame);
            }
        }
        let epoch = core.shard.ha().epoch().0;
        core.shard.set_ready_set(ReadySet { epoch, version, members: ready.clone() });
        let required = core.config.min_ready_backups;
        if required == 0 {
            return;
        }
        if ready.len() < required {
            tracing::warn!(
                ready = ready.len(),
                required,
                "fewer ready backups than ha-min-ready-backups: holding confirms"
            );
        } else {
            tracing::info!(ready = ready.len(), required, "ha-min-ready-backups met: confirming");
        }
        for shard in 0..core.config.shard_count {
            core.send_control(shard, NodeControl::ReadyBackups { ready: ready.clone() });
        }
    }
}

/// Any shard: shard 0 gave up waiting for `backups`; the acks held for them are released.
pub(crate) fn release_expected(backups: &[String], core: &mut NodeCore) {
    core.settle();
    if core.replication.is_none() {
        return;
    }
    core.change_holders(|replication| {
        for backup in backups {
            replication.handle_expected_timed_out(backup);
        }
    });
}

/// Any shard: shard 0's ready backups changed to `ready` (`ha-min-ready-backups`); the ready
/// quorum counts them.
pub(crate) fn set_ready_backups(ready: &[String], core: &mut NodeCore) {
    core.settle();
    if core.replication.is_none() {
        // No longer a primary: nothing is held.
        return;
    }
    core.change_holders(|replication| replication.set_ready_backups(ready));
}

/// How long shards hold acks for a detached backup after its `marked-ready` link ended: its
/// lease's length plus room for the clocks (`LEASE_CLOCK_ALLOWANCE_MAX`).
pub(crate) fn detached_hold(backup_timeout: Duration, heartbeat_interval: Duration) -> Duration {
    backup_timeout + heartbeat_interval.min(LEASE_CLOCK_ALLOWANCE_MAX)
}
