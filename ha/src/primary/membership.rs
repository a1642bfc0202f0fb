//! The primary's view of its backups: which backups have links, which of their shards caught up,
//! and which backups are `ready` (every shard caught up), for `marked-ready` and `ha status --all`.
//!
//! A backup opens one link per shard (`link_frame::LinkOpen`). Each primary shard reports its link's
//! catch-up (`PrimaryReplication::poll_caught_up`) and loss to the configuration coordinator (shard
//! 0), which keeps one `Membership` for the broker. A backup is *ready* once every shard
//! `0..shard_count` has caught up; the primary then sends it `marked-ready` on its shard-0 link.
//! Losing any shard's link makes it `CatchUp` again (that shard will catch up again on its next
//! link); losing its last link forgets it.
//!
//! Call contract: `handle_shard_opened` when a primary shard accepted a backup's `LinkOpen`,
//! `handle_shard_caught_up` when that link is caught up (it returns true exactly when the backup
//! just became ready: send `marked-ready`), `handle_shard_lost` when the link closed. Whenever the
//! set of ready backups changed (a backup became ready, or a ready one lost a link), send
//! `ready_list()` as a `members` frame on every ready backup's shard-0 link, the one just marked
//! ready included (after its `marked-ready`).
//!
//! Invariants:
//! - A backup is ready if and only if every one of the `shard_count` shards has caught up on its
//!   current link; `handle_shard_caught_up` returns true once per transition to ready.
//! - At most `BACKUPS_MAX` backups are known; a shard number is always below `shard_count`.
//! - A backup with no link is not known.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::BACKUPS_MAX;

/// A backup's state as the primary sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackupState {
    /// Some shard has not caught up (or has no link).
    CatchUp,
    /// Every shard caught up: the backup holds everything the primary holds.
    Ready,
}

/// The primary refused a new backup: `BACKUPS_MAX` are known already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backup {backup} refused: at most {max} backups, and {max} are linked")]
pub struct TooManyBackups {
    /// The backup refused.
    pub backup: String,
    /// `BACKUPS_MAX`.
    pub max: usize,
}

/// The primary's backups and their shards' catch-up.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Shards of this broker (and of every backup: the link handshake checks they match).
    shard_count: u16,
    /// Every backup with at least one link, by address.
    backups: BTreeMap<String, Backup>,
}

/// One backup's shards.
#[derive(Debug, Clone, Default)]
struct Backup {
    /// Shards with an open link.
    linked: BTreeSet<u16>,
    /// Shards whose current link caught up; a subset of `linked`.
    caught_up: BTreeSet<u16>,
}

impl Membership {
    /// No backups, for a broker of `shard_count` shards.
    ///
    /// # Panics
    ///
    /// If `shard_count` is 0.
    pub fn new(shard_count: u16) -> Self {
        assert!(shard_count >= 1, "a broker has at least one shard");
        Membership { shard_count, backups: BTreeMap::new() }
    }

    /// A link of `backup` for `shard` opened; the backup is known from now on (in `CatchUp`, or
    /// back to it if that shard had caught up on an earlier link).
    ///
    /// # Errors
    ///
    /// `TooManyBackups` when `backup` is new and `BACKUPS_MAX` backups are known; nothing changed,
    /// and the caller refuses the link.
    ///
    /// # Panics
    ///
    /// If `shard` is not below the shard count (the handshake refuses such links).
    pub fn handle_shard_opened(&mut self, backup: &str, shard: u16) -> Result<(), TooManyBackups> {
        self.assert_shard(shard);
        if !self.backups.contains_key(backup) && self.backups.len() >= BACKUPS_MAX {
            return Err(TooManyBackups { backup: backup.to_string(), max: BACKUPS_MAX });
        }
        let entry = self.backups.entry(backup.to_string()).or_default();
        entry.linked.insert(shard);
        entry.caught_up.remove(&shard);
        Ok(())
    }

    /// `shard`'s link of `backup` caught up. Returns true when that makes every shard of the
    /// backup caught up: it just became ready (send it `marked-ready`). False when it was ready
    /// already, still misses a shard, or is not known (a report that raced the link's loss).
    ///
    /// # Panics
    ///
    /// If `shard` is not below the shard count.
    pub fn handle_shard_caught_up(&mut self, backup: &str, shard: u16) -> bool {
        self.assert_shard(shard);
        let shard_count = usize::from(self.shard_count);
        let Some(entry) = self.backups.get_mut(backup) else { return false };
        if !entry.linked.contains(&shard) {
            return false;
        }
        let was_ready = entry.caught_up.len() == shard_count;
        entry.caught_up.insert(shard);
        !was_ready && entry.caught_up.len() == shard_count
    }

    /// `shard`'s link of `backup` closed: the backup is `CatchUp` again, and forgotten if it has
    /// no link left. Unknown backups and shards are ignored.
    ///
    /// # Panics
    ///
    /// If `shard` is not below the shard count.
    pub fn handle_shard_lost(&mut self, backup: &str, shard: u16) {
        self.assert_shard(shard);
        let Some(entry) = self.backups.get_mut(backup) else { return };
        entry.linked.remove(&shard);
        entry.caught_up.remove(&shard);
        if entry.linked.is_empty() {
            self.backups.remove(backup);
        }
    }

    /// True when every shard of `backup` caught up.
    pub fn is_ready(&self, backup: &str) -> bool {
        self.state(backup) == Some(BackupState::Ready)
    }

    /// The state of `backup`, if known.
    pub fn state(&self, backup: &str) -> Option<BackupState> {
        self.backups.get(backup).map(|entry| self.state_of(entry))
    }

    /// The ready backups, by address.
    pub fn ready_backups(&self) -> impl Iterator<Item = &str> + '_ {
        self.backups().filter(|(_, state)| *state == BackupState::Ready).map(|(backup, _)| backup)
    }

    /// The ready backups' addresses, sorted: the body of the `members` frame
    /// (`link_frame::LinkFrame::Members`) sent to each backup whenever this list changes.
    pub fn ready_list(&self) -> Vec<String> {
        self.ready_backups().map(str::to_string).collect()
    }

    /// Every known backup with its state, by address (for `ha status --all`).
    pub fn backups(&self) -> impl Iterator<Item = (&str, BackupState)> + '_ {
        self.backups.iter().map(|(backup, entry)| (backup.as_str(), self.state_of(entry)))
    }

    /// The shard count.
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    fn state_of(&self, entry: &Backup) -> BackupState {
        if entry.caught_up.len() == usize::from(self.shard_count) {
            BackupState::Ready
        } else {
            BackupState::CatchUp
        }
    }

    fn assert_shard(&self, shard: u16) {
        assert!(shard < self.shard_count, "shard {shard} of a broker with {} shards", self.shard_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(membership: &Membership) -> Vec<(&str, BackupState)> {
        membership.backups().collect()
    }

    #[test]
    fn a_backup_is_ready_once_every_shard_caught_up_and_is_told_once() {
        // Goal: readiness needs every shard, and the transition is reported exactly once.
        let mut membership = Membership::new(3);
        for shard in 0..3 {
            membership.handle_shard_opened("b1:5672", shard).unwrap();
        }
        assert_eq!(states(&membership), vec![("b1:5672", BackupState::CatchUp)]);
        assert!(!membership.handle_shard_caught_up("b1:5672", 2));
        assert!(!membership.handle_shard_caught_up("b1:5672", 0));
        assert!(!membership.is_ready("b1:5672"));
        assert!(membership.handle_shard_caught_up("b1:5672", 1), "the last shard makes it ready");
        assert!(membership.is_ready("b1:5672"));
        assert!(!membership.handle_shard_caught_up("b1:5672", 1), "told once");
        assert_eq!(membership.ready_backups().collect::<Vec<_>>(), vec!["b1:5672"]);
        assert_eq!(membership.ready_list(), vec!["b1:5672".to_string()]);
    }

    #[test]
    fn losing_a_shard_makes_the_backup_catch_up_again_and_losing_all_forgets_it() {
        // Goal: a ready backup that loses one shard's link is CatchUp until that shard catches up
        // again on a new link; one with no link left is not known.
        let mut membership = Membership::new(2);
        for shard in 0..2 {
            membership.handle_shard_opened("b:1", shard).unwrap();
        }
        membership.handle_shard_caught_up("b:1", 0);
        assert!(membership.handle_shard_caught_up("b:1", 1));
        membership.handle_shard_lost("b:1", 1);
        assert_eq!(membership.state("b:1"), Some(BackupState::CatchUp));
        assert_eq!(membership.ready_backups().count(), 0);
        // A catch-up report that raced the loss changes nothing.
        assert!(!membership.handle_shard_caught_up("b:1", 1));
        // The new link catches up: ready again, and told again.
        membership.handle_shard_opened("b:1", 1).unwrap();
        assert!(membership.handle_shard_caught_up("b:1", 1));
        // A re-opened shard that had caught up is back to catch-up.
        membership.handle_shard_opened("b:1", 0).unwrap();
        assert!(!membership.is_ready("b:1"));
        membership.handle_shard_lost("b:1", 0);
        membership.handle_shard_lost("b:1", 1);
        assert_eq!(membership.state("b:1"), None);
        assert!(states(&membership).is_empty());
        // Unknown backups are ignored.
        membership.handle_shard_lost("nobody:1", 0);
        assert!(!membership.handle_shard_caught_up("nobody:1", 0));
    }

    #[test]
    fn backups_are_listed_by_address_with_their_states_and_bounded() {
        // Goal: `ha status --all` gets every backup with its state; a single-shard broker makes a
        // backup ready with one report; the number of backups is bounded.
        let mut membership = Membership::new(1);
        membership.handle_shard_opened("c:1", 0).unwrap();
        membership.handle_shard_opened("a:1", 0).unwrap();
        assert!(membership.handle_shard_caught_up("c:1", 0));
        assert_eq!(states(&membership), vec![("a:1", BackupState::CatchUp), ("c:1", BackupState::Ready)]);
        membership.handle_shard_opened("b:1", 0).unwrap();
        assert!(membership.handle_shard_caught_up("b:1", 0));
        assert_eq!(membership.ready_list(), vec!["b:1".to_string(), "c:1".to_string()], "sorted, ready only");
        membership.handle_shard_lost("b:1", 0);
        for index in membership.backups().count()..BACKUPS_MAX {
            membership.handle_shard_opened(&format!("x{index}:1"), 0).unwrap();
        }
        assert_eq!(
            membership.handle_shard_opened("late:1", 0),
            Err(TooManyBackups { backup: "late:1".to_string(), max: BACKUPS_MAX })
        );
        // A known backup's new link is still admitted.
        membership.handle_shard_opened("a:1", 0).unwrap();
    }
}
