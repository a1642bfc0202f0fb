//! The primary's cluster-wide bookkeeping, on shard 0: which backups are linked and ready
//! (`ringmq_ha::membership`), telling backups when they are ready (`marked-ready`) and who else is
//! (`members`), and recovering mode after a promotion.
//!
//! Recovering mode (the reference's, §7 of its internals): a newly promoted primary expects every
//! backup that was ready under the previous primary (the last `members` list this broker received
//! as a backup, itself left out). Each shard's `PrimaryReplication` holds new confirms for them
//! (`expect_backups`); shard 0 counts an expected backup settled when it is ready again (every
//! shard's link caught up) or when `ha-backup-timeout` passes, and moves the broker to `active`
//! once all are settled. A primary that expects nobody is `active` at once (the coordinator does
//! that at promotion, see `Shard::set_expected_backups`).
//!
//! Invariants:
//! - `marked-ready` goes to a backup once per change to ready; `members` goes to every linked
//!   backup after each change to the set of ready backups.
//! - The broker leaves `recovering` only when no expected backup is left unsettled.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use bytes::BytesMut;
use ringmq_core::broker_state::{BrokerState, TransitionCause};
use ringmq_core::ids::ConnId;
use ringmq_ha::link_frame::{encode_link_frame, LinkFrame};
use ringmq_ha::membership::Membership;
use ringmq_ha::primary_replication::PrimaryReplication;

use crate::shard_control::Control;
use crate::shard_loop::{pump, ShardContext};

/// Shard 0's view of the cluster while this broker is a primary.
pub(crate) struct PrimaryRole {
    /// Which shards of which backup are linked and caught up.
    membership: Membership,
    /// Each backup's shard-0 link, by backup name: where `marked-ready` and `members` go.
    shard0_links: HashMap<String, ConnId>,
    /// Expected backups not yet settled (recovering mode).
    expected: BTreeSet<String>,
}

impl PrimaryRole {
    /// No backups yet, for a broker of `shard_count` shards.
    pub(crate) fn new(shard_count: u16) -> PrimaryRole {
        PrimaryRole {
            membership: Membership::new(shard_count),
            shard0_links: HashMap::new(),
            expected: BTreeSet::new(),
        }
    }
}

/// Shard 0: a backup's link on `shard` opened.
pub(crate) fn handle_link_opened(context: &ShardContext, backup: &str, shard: u16, conn: Option<ConnId>) {
    let mut role = context.primary_role.borrow_mut();
    if let Err(error) = role.membership.handle_shard_opened(backup, shard) {
        tracing::warn!(%error, "backup not tracked");
    }
    if let Some(conn) = conn {
        role.shard0_links.insert(backup.to_owned(), conn);
    }
}

/// Shard 0: a backup's link on `shard` holds everything that shard had when it opened.
pub(crate) fn handle_caught_up(context: &Rc<ShardContext>, backup: &str, shard: u16) {
    let settled = {
        let mut role = context.primary_role.borrow_mut();
        if !role.membership.handle_shard_caught_up(backup, shard) {
            return;
        }
        tracing::info!(%backup, "backup holds everything: marked ready");
        if let Some(conn) = role.shard0_links.get(backup) {
            send_link_frame(context, *conn, &LinkFrame::MarkedReady);
        }
        role.expected.remove(backup)
    };
    send_members(context);
    if settled {
        settle_if_done(context);
    }
}

/// Shard 0: a backup's link on `shard` ended.
pub(crate) fn handle_link_lost(context: &ShardContext, backup: &str, shard: u16) {
    let was_ready = {
        let mut role = context.primary_role.borrow_mut();
        let was_ready = role.membership.is_ready(backup);
        role.membership.handle_shard_lost(backup, shard);
        if shard == 0 {
            role.shard0_links.remove(backup);
        }
        was_ready
    };
    if was_ready {
        send_members(context);
    }
}

/// Any shard: the broker was just promoted (it is `recovering`). Opens the shard's replication
/// with the expected backups, and on shard 0 starts the `ha-backup-timeout` clock.
pub(crate) fn begin_recovery(context: &Rc<ShardContext>) {
    let own = context.link.own_address.clone();
    let expected: Vec<String> = context.ready_members.borrow().iter().filter(|name| **name != own).cloned().collect();
    {
        // Changes made before are not held for the expected backups (there were none to hold).
        pump(context);
        let mut shard = context.shard.borrow_mut();
        let epoch = shard.ha().epoch();
        let mut replication = context.replication.borrow_mut();
        let replication = replication.get_or_insert_with(|| PrimaryReplication::new(epoch));
        replication.expect_backups(&expected);
        shard.set_replica_holds(replication.holding_streams());
    }
    if context.shard.borrow().id().0 != 0 || expected.is_empty() {
        return;
    }
    tracing::info!(?expected, timeout = ?context.link.backup_timeout, "recovering: waiting for the backups that were ready");
    context.primary_role.borrow_mut().expected = expected.into_iter().collect();
    let timer = context.clone();
    compio::runtime::spawn(async move {
        compio::runtime::time::sleep(timer.link.backup_timeout).await;
        let late: Vec<String> = std::mem::take(&mut timer.primary_role.borrow_mut().expected).into_iter().collect();
        if late.is_empty() {
            return;
        }
        tracing::warn!(?late, "ha-backup-timeout passed: no longer waiting for these backups");
        for shard in 0..timer.shard_count() {
            timer.controls.send(shard, Control::ExpectedTimedOut { backups: late.clone() });
        }
        settle_if_done(&timer);
    })
    .detach();
}

/// Any shard: shard 0 gave up waiting for `backups`; the confirms held for them are released.
pub(crate) fn handle_expected_timed_out(context: &ShardContext, backups: &[String]) {
    pump(context);
    let mut shard = context.shard.borrow_mut();
    let mut replication = context.replication.borrow_mut();
    if let Some(replication) = replication.as_mut() {
        for backup in backups {
            replication.handle_expected_timed_out(backup);
        }
        shard.set_replica_holds(replication.holding_streams());
    }
}

/// Shard 0: `active` once no expected backup is left.
fn settle_if_done(context: &Rc<ShardContext>) {
    if !context.primary_role.borrow().expected.is_empty() {
        return;
    }
    let mut shard = context.shard.borrow_mut();
    if shard.ha().state() != BrokerState::Recovering {
        return;
    }
    match shard.handle_ha_transition(BrokerState::Active, TransitionCause::ExpectedBackupsSettled) {
        Ok(()) => tracing::info!("every expected backup is ready or timed out: active"),
        Err(error) => tracing::warn!(%error, "could not leave recovering"),
    }
    drop(shard);
    pump(context);
}

/// Shard 0: tells every linked backup which backups are ready.
fn send_members(context: &ShardContext) {
    let role = context.primary_role.borrow();
    let frame = LinkFrame::Members(role.membership.ready_list());
    for conn in role.shard0_links.values() {
        send_link_frame(context, *conn, &frame);
    }
}

/// Queues `frame` on the served link `conn`, if it is still open.
fn send_link_frame(context: &ShardContext, conn: ConnId, frame: &LinkFrame) {
    if let Some(queue) = context.writers.borrow().get(&conn) {
        let mut buffer = BytesMut::new();
        encode_link_frame(frame, &mut buffer);
        queue.push(buffer, false);
    }
}
