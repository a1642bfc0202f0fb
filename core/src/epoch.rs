//! Epochs: the generation of leadership, so that an old primary cannot make a new one's data
//! diverge. Beyond the reference, which relied only on the cluster manager (see our HA issue).
//!
//! Every promotion starts a new epoch, strictly higher than any the broker has seen. Replication
//! links carry the epoch of the primary that sends on them, and every broker keeps the highest
//! epoch it has seen in an `EpochClock`. Two rules follow:
//! - a backup never applies records from an epoch older than the highest it has seen
//!   (`accepts`), so a killed or paused primary that comes back cannot feed it;
//! - a primary that learns of a newer epoch must stop serving clients (`primary_must_step_down`):
//!   it steps down to a backup, and may be promoted again later, in a newer epoch still.
//!
//! Epochs fence older primaries; they do not elect one: promoting one broker at a time stays the
//! cluster manager's job, as in the reference. But two brokers promoted from the same highest
//! epoch (one never heard of the other's promotion, say across a partition) never share an epoch:
//! each member of `ha-brokers-url` promotes only into epochs `e` with
//! `e % EPOCH_MEMBER_SLOTS == (its place in the URL + 1) % EPOCH_MEMBER_SLOTS`, so one of the two is
//! strictly newer, and the other steps down when it learns of it. A clock belongs to one cluster: a queue replicated from another cluster
//! (`ringmq ha replicate`) carries that cluster's epochs and needs its own clock.
//!
//! Not here: carrying the epoch on the wire, persisting it, or acting on the answers (dropping a
//! link, refusing clients); the HA layer's primary and backup state machines (`ringmq-ha`) do that.
//!
//! Invariants:
//! - `highest` never decreases; `Epoch(0)` means no promotion has been seen.
//! - `promoted`, once set, is at most `highest`, and each promotion sets it higher than before (a
//!   broker that stepped down may be promoted again).
//! - `accepts(e)` is `Ok` iff `e >= highest` (before the call), and afterwards `highest >= e`.
//! - `primary_must_step_down()` iff `promoted < highest`; once true it stays true until the next
//!   promotion.

use std::fmt;

/// A generation of leadership. Higher is newer; `Epoch(0)` is before any promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Epoch(pub u64);

/// How many members' promotions the epochs keep apart: a member promotes only into the epochs
/// congruent to its place in `ha-brokers-url` modulo this (places wrap around beyond it).
pub const EPOCH_MEMBER_SLOTS: u64 = 64;

/// The highest epoch a broker has seen, and the epoch it was promoted in, if it was.
#[derive(Debug, Clone)]
pub struct EpochClock {
    /// The highest epoch seen: from this broker's own promotion or from any peer.
    highest: Epoch,
    /// The epoch this broker was promoted in; `None` while it has not been promoted.
    promoted: Option<Epoch>,
    /// The remainder modulo `EPOCH_MEMBER_SLOTS` of this broker's epochs: its place in
    /// `ha-brokers-url` plus one, so that the first member's first promotion is epoch 1.
    member_slot: u64,
}

/// How an epoch from a peer compares with the highest one seen before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The peer's epoch is newer; the clock has moved up to it. A primary hearing this must step
    /// down (`primary_must_step_down` now says so).
    Newer {
        /// The highest epoch seen before.
        ours: Epoch,
        /// The peer's epoch, now the highest.
        theirs: Epoch,
    },
    /// The peer is in the epoch this broker has as its highest.
    Same,
    /// The peer's epoch is older: it has missed a promotion. Its records must not be applied.
    Stale {
        /// The highest epoch seen.
        ours: Epoch,
        /// The peer's older epoch.
        theirs: Epoch,
    },
}

/// A record from an epoch older than the highest one seen: a backup must not apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "record from epoch {theirs} is stale: epoch {ours} has been seen, and a backup applies records only \
     from epoch {ours} or later"
)]
pub struct StaleEpoch {
    /// The highest epoch seen.
    pub ours: Epoch,
    /// The record's epoch.
    pub theirs: Epoch,
}

/// No epoch above the highest one seen exists (`u64::MAX` was seen), so no promotion is possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot promote: epoch {highest} has been seen and no higher epoch exists")]
pub struct EpochsExhausted {
    /// The highest epoch seen.
    pub highest: Epoch,
}

impl Default for EpochClock {
    fn default() -> EpochClock {
        EpochClock::new()
    }
}

impl EpochClock {
    /// A clock that has seen no promotion (`Epoch(0)`), for a broker that is starting, at place 0
    /// of `ha-brokers-url`.
    pub fn new() -> EpochClock {
        EpochClock::for_member(0)
    }

    /// A clock for the broker at place `member` of `ha-brokers-url`.
    pub fn for_member(member: u16) -> EpochClock {
        let member_slot = (u64::from(member) + 1) % EPOCH_MEMBER_SLOTS;
        EpochClock { highest: Epoch(0), promoted: None, member_slot }
    }

    /// The epoch a promotion would take now: the first above the highest seen in this member's
    /// slot (see the module doc).
    ///
    /// # Errors
    /// `EpochsExhausted` when no such epoch fits in 64 bits.
    pub fn next_for_promotion_peek(&self) -> Result<Epoch, EpochsExhausted> {
        let exhausted = EpochsExhausted { highest: self.highest };
        let above = self.highest.0.checked_add(1).ok_or(exhausted)?;
        let gap = (self.member_slot + EPOCH_MEMBER_SLOTS - above % EPOCH_MEMBER_SLOTS) % EPOCH_MEMBER_SLOTS;
        above.checked_add(gap).map(Epoch).ok_or(exhausted)
    }

    /// The highest epoch seen.
    pub fn highest(&self) -> Epoch {
        self.highest
    }

    /// The epoch this broker was promoted in, if it was.
    pub fn promoted(&self) -> Option<Epoch> {
        self.promoted
    }

    /// Takes in an epoch a peer announced, raising the highest epoch seen if it is newer.
    pub fn observe(&mut self, theirs: Epoch) -> Observed {
        let ours = self.highest;
        let observed = match theirs.cmp(&ours) {
            std::cmp::Ordering::Greater => {
                self.highest = theirs;
                Observed::Newer { ours, theirs }
            }
            std::cmp::Ordering::Equal => Observed::Same,
            std::cmp::Ordering::Less => Observed::Stale { ours, theirs },
        };
        assert!(self.highest >= ours);
        assert!(self.highest >= theirs);
        observed
    }

    /// The epoch this broker's promotion starts: the first above the highest seen in its slot
    /// (`next_for_promotion_peek`), so above any earlier promotion of this broker too (one that
    /// stepped down is promoted again in a newer epoch). Records it as both the highest epoch and
    /// this broker's own.
    ///
    /// # Errors
    /// `EpochsExhausted` when `u64::MAX` has been seen (only a corrupt or hostile peer gets there;
    /// refusing the promotion beats wrapping to an epoch every backup would refuse).
    pub fn next_for_promotion(&mut self) -> Result<Epoch, EpochsExhausted> {
        let next = self.next_for_promotion_peek()?;
        assert!(next > self.highest && self.promoted.is_none_or(|earlier| next > earlier));
        self.highest = next;
        self.promoted = Some(next);
        Ok(next)
    }

    /// Whether a backup may apply a record from `record_epoch`: only if it is not older than the
    /// highest epoch seen. A record from a newer epoch is accepted and raises the highest epoch,
    /// so that nothing older is applied after it.
    ///
    /// # Errors
    /// `StaleEpoch` for a record from an older epoch; the clock does not change.
    pub fn accepts(&mut self, record_epoch: Epoch) -> Result<(), StaleEpoch> {
        match self.observe(record_epoch) {
            Observed::Newer { .. } | Observed::Same => Ok(()),
            Observed::Stale { ours, theirs } => Err(StaleEpoch { ours, theirs }),
        }
    }

    /// True when this broker was promoted and has since seen a newer epoch: another broker was
    /// promoted after it, so it must stop serving clients. It stays true for the life of the clock.
    ///
    /// This is a query on the clock rather than on one `Observed`, so that a newer epoch learnt
    /// through any call (`observe` or `accepts`) fences the primary, and a later `Same` for that
    /// newer epoch cannot un-fence it.
    pub fn primary_must_step_down(&self) -> bool {
        match self.promoted {
            Some(own) => own < self.highest,
            None => false,
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_clock_has_seen_no_promotion_and_the_first_one_is_epoch_1() {
        // Goal: a new cluster's first primary starts epoch 1, above the "nothing seen" epoch 0.
        let mut clock = EpochClock::new();
        assert_eq!(clock.highest(), Epoch(0));
        assert_eq!(clock.promoted(), None);
        assert_eq!(clock.next_for_promotion(), Ok(Epoch(1)));
        assert_eq!((clock.highest(), clock.promoted()), (Epoch(1), Some(Epoch(1))));
    }

    #[test]
    fn observe_reports_newer_same_and_stale_and_only_rises() {
        // Goal: each comparison is reported with both epochs, and the highest never falls.
        let mut clock = EpochClock::new();
        // A newer epoch moves the clock up.
        assert_eq!(clock.observe(Epoch(3)), Observed::Newer { ours: Epoch(0), theirs: Epoch(3) });
        assert_eq!(clock.highest(), Epoch(3));
        // The same epoch changes nothing.
        assert_eq!(clock.observe(Epoch(3)), Observed::Same);
        // An older one is stale and changes nothing.
        assert_eq!(clock.observe(Epoch(2)), Observed::Stale { ours: Epoch(3), theirs: Epoch(2) });
        assert_eq!(clock.highest(), Epoch(3));
        assert_eq!(clock.observe(Epoch(7)), Observed::Newer { ours: Epoch(3), theirs: Epoch(7) });
    }

    #[test]
    fn promotion_epoch_is_strictly_higher_than_any_seen() {
        // Goal: a promoted backup starts an epoch above every epoch it heard of, even one heard
        // from a broker that is not its primary (member 9: its slot allows epoch 10).
        let mut clock = EpochClock::for_member(9);
        clock.observe(Epoch(4));
        clock.observe(Epoch(9));
        clock.observe(Epoch(6));
        assert_eq!(clock.next_for_promotion(), Ok(Epoch(10)));
    }

    #[test]
    fn promotion_is_refused_when_no_higher_epoch_exists() {
        // Goal: a peer announcing u64::MAX cannot make the epoch wrap to 0.
        let mut clock = EpochClock::new();
        clock.observe(Epoch(u64::MAX));
        let error = clock.next_for_promotion().unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot promote: epoch 18446744073709551615 has been seen and no higher epoch exists"
        );
        assert_eq!(clock.promoted(), None);
    }

    #[test]
    fn members_promoted_from_the_same_epoch_never_share_one() {
        // Goal: two brokers that both last saw epoch 1 (neither heard of the other's promotion)
        // take different epochs, each in its own slot; the first member's first epoch is 1.
        assert_eq!(EpochClock::for_member(0).next_for_promotion().unwrap(), Epoch(1));
        let promoted_from = |member: u16| {
            let mut clock = EpochClock::for_member(member);
            clock.observe(Epoch(1));
            clock.next_for_promotion().unwrap()
        };
        let epochs: Vec<Epoch> = (0..3).map(promoted_from).collect();
        assert_eq!(epochs, vec![Epoch(65), Epoch(2), Epoch(3)]);
        // Places beyond the slots wrap around; the largest epoch left is refused, not wrapped.
        assert_eq!(promoted_from(64), Epoch(65));
        let mut clock = EpochClock::for_member(1);
        clock.observe(Epoch(u64::MAX - 10));
        assert!(clock.next_for_promotion_peek().is_err());
    }

    #[test]
    fn a_broker_that_stepped_down_is_promoted_again_in_a_newer_epoch() {
        // Goal: a primary superseded by epoch 5 steps down; promoted again later, it takes an
        // epoch above both its first and the one that superseded it, and serves again.
        let mut clock = EpochClock::new();
        assert_eq!(clock.next_for_promotion().unwrap(), Epoch(1));
        clock.observe(Epoch(5));
        assert!(clock.primary_must_step_down());
        assert_eq!(clock.next_for_promotion().unwrap(), Epoch(65));
        assert_eq!(clock.promoted(), Some(Epoch(65)));
        assert!(!clock.primary_must_step_down());
    }

    #[test]
    fn backup_never_applies_records_from_an_older_epoch() {
        // Goal: records from the current and newer epochs apply; older ones are refused with both
        // epochs named, and the refusal does not move the clock.
        let mut clock = EpochClock::new();
        clock.observe(Epoch(5));
        assert_eq!(clock.accepts(Epoch(5)), Ok(()));
        let error = clock.accepts(Epoch(4)).unwrap_err();
        assert_eq!(error, StaleEpoch { ours: Epoch(5), theirs: Epoch(4) });
        assert_eq!(
            error.to_string(),
            "record from epoch 4 is stale: epoch 5 has been seen, and a backup applies records only from \
             epoch 5 or later"
        );
        assert_eq!(clock.highest(), Epoch(5));
    }

    #[test]
    fn newer_record_raises_the_floor_so_older_ones_are_refused_after_it() {
        // Goal: once a record of epoch 6 is applied, the epoch-5 stream is cut off.
        let mut clock = EpochClock::new();
        clock.observe(Epoch(5));
        assert_eq!(clock.accepts(Epoch(6)), Ok(()));
        assert_eq!(clock.highest(), Epoch(6));
        assert_eq!(clock.accepts(Epoch(5)), Err(StaleEpoch { ours: Epoch(6), theirs: Epoch(5) }));
    }

    #[test]
    fn primary_steps_down_once_a_newer_epoch_is_seen_and_stays_down() {
        // Goal: a primary fenced by a newer epoch stays fenced, even when it later hears only
        // that same newer epoch (Same) or older ones (member 2: promoted after epoch 2, it takes 3).
        let mut clock = EpochClock::for_member(2);
        clock.observe(Epoch(2));
        clock.next_for_promotion().unwrap();
        // Its own epoch and older ones do not fence it.
        assert_eq!(clock.observe(Epoch(3)), Observed::Same);
        assert_eq!(clock.observe(Epoch(1)), Observed::Stale { ours: Epoch(3), theirs: Epoch(1) });
        assert!(!clock.primary_must_step_down());
        // A newer epoch does.
        assert_eq!(clock.observe(Epoch(4)), Observed::Newer { ours: Epoch(3), theirs: Epoch(4) });
        assert!(clock.primary_must_step_down());
        // Hearing epoch 4 again is Same, and it is still fenced.
        assert_eq!(clock.observe(Epoch(4)), Observed::Same);
        assert!(clock.primary_must_step_down());
    }

    #[test]
    fn broker_that_was_never_promoted_never_has_to_step_down() {
        // Goal: backups follow newer epochs without being told to step down from anything.
        let mut clock = EpochClock::new();
        clock.observe(Epoch(8));
        clock.accepts(Epoch(9)).unwrap();
        assert!(!clock.primary_must_step_down());
    }

    #[test]
    fn killed_primary_that_comes_back_cannot_feed_a_backup_of_the_new_primary() {
        // Goal: the scenario: A is primary, B and C are backups; A is paused, B is
        // promoted; A resumes and still thinks it is primary.
        // Method: one clock per broker; messages between them are epochs passed by hand.
        let (mut a, mut b, mut c) = (EpochClock::new(), EpochClock::new(), EpochClock::new());
        // A is promoted in a new cluster; B and C connect and learn its epoch.
        let first = a.next_for_promotion().unwrap();
        b.accepts(first).unwrap();
        c.accepts(first).unwrap();
        // A is paused; B is promoted, and C follows B.
        let second = b.next_for_promotion().unwrap();
        assert!(second > first);
        c.accepts(second).unwrap();
        // A resumes and sends C a record from its epoch: refused.
        assert_eq!(c.accepts(first), Err(StaleEpoch { ours: second, theirs: first }));
        // A hears of B's epoch (from C or from B) and must stop serving.
        assert!(!a.primary_must_step_down());
        a.observe(second);
        assert!(a.primary_must_step_down());
        // B, the current primary, keeps serving.
        assert!(!b.primary_must_step_down());
    }
}
