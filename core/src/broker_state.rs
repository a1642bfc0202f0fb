//! The HA state of one broker, and the only transitions between states that are legal.
//!
//! A broker is in exactly one state. The backup states are `joining`, `catchup` and `ready`; the
//! primary states are `recovering` and `active`; `standalone` is not in a cluster and serves
//! clients, so it counts as primary (as in the reference, where `isPrimary` holds for it).
//!
//! Every legal transition, with the causes that may make it (`from -> to: cause`):
//!
//! | from       | to         | cause                                                              |
//! |------------|------------|--------------------------------------------------------------------|
//! | standalone | joining    | `ha-cluster-enabled`: the broker starts with `ha-cluster=yes`      |
//! | joining    | catchup    | `primary-contacted`: the first message arrives from the primary    |
//! | joining    | recovering | `promoted`: first primary of a new cluster (no broker is past joining) |
//! | catchup    | ready      | `marked-ready-by-primary`: the primary holds that it has everything |
//! | catchup    | catchup    | `primary-lost`: the link to the primary dropped (issue, below)     |
//! | ready      | recovering | `promoted`                                                         |
//! | ready      | catchup    | `expected-backup-timed-out`: a recovering primary gave up on it    |
//! | ready      | catchup    | `reconnected-behind-primary`: its new primary has more than it     |
//! | ready      | ready      | `primary-lost`: the link to the primary dropped (issue, below)     |
//! | ready      | joining    | `primary-lost-too-long`: its ready lease ran out (below)           |
//! | recovering | active     | `expected-backups-settled`: every expected backup is ready or timed out |
//! | recovering | joining    | `superseded-by-newer-epoch`: another broker was promoted later     |
//! | active     | joining    | `superseded-by-newer-epoch` (issue, below)                         |
//!
//! Everything else is illegal, including every other pair of a state with itself: `active` only
//! steps down, `standalone` only ever joins, `recovering` only becomes `active` or steps down, and
//! a `catchup` backup cannot be promoted (the reference refuses with "still catching up").
//!
//! The `primary-lost` rows come from our HA issue, not the reference's table: a backup whose
//! primary is gone keeps its state and its data and reconnects (the reference does the same
//! without calling it a transition). Naming it lets the caller validate the event instead of
//! skipping the table for it. What the reference did not have, and we add, is the epoch
//! (`crate::epoch`): a ready backup that reconnects to a new primary holding records it lacks
//! goes back to `catchup`, and nothing from an older epoch is applied.
//!
//! Not here: the conditions behind a cause. Whether no other broker is past `joining` (so a
//! joining broker may be promoted), whether a backup's catch-up queues are all ready, and the
//! `ha-backup-timeout` are decided by the membership and primary state machines; this module only
//! says whether the step they ask for is in the table.
//!
//! The `primary-lost-too-long` row is ours as well. A ready backup that lost its primary stays
//! ready so that it can be promoted if the primary died; but if the primary lives on, it holds
//! confirms for that backup only for `ha-backup-timeout` (plus a margin), then confirms without
//! it. So the backup stops counting as ready once `ha-backup-timeout` has passed since that
//! primary last answered it (its ready lease, `ringmq-ha`'s `ready_lease`): as `joining`, it may be promoted only as the first primary of a new
//! cluster, which loses what it lacks and is the cluster manager's explicit choice. (In the
//! reference the backup stayed ready for good, and a promotion could lose confirmed messages.)
//!
//! The `superseded-by-newer-epoch` rows are ours too: the reference has no demotion and trusted
//! the cluster manager never to leave two primaries. A primary that learns of a newer epoch (see
//! `crate::epoch`) stops serving clients by becoming a joining backup of the newer primary.
//!
//! Invariants:
//! - `transition` returns `Ok(to)` exactly for the rows above, and `allowed_targets` lists exactly
//!   the `to` of the rows for a `from` (tested on all 36 pairs).
//! - Every state is exactly one of `is_primary` and `is_backup`.
//! - `name` and `FromStr` are inverse: the reference's spelling, lower case, no aliases.

use std::fmt;
use std::str::FromStr;

/// The HA state of one broker. Spelled as in the reference by `name`, `Display` and `FromStr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerState {
    /// Not part of a HA cluster; serves clients.
    Standalone,
    /// A newly started cluster broker, not yet connected to a primary.
    Joining,
    /// A backup connected to the primary and downloading its state (queues, messages).
    CatchUp,
    /// A backup that holds everything the primary holds, and may be promoted.
    Ready,
    /// A newly promoted primary, holding confirms for the backups it expects to reconnect.
    Recovering,
    /// The primary, with every expected backup ready or timed out.
    Active,
}

/// Why a broker asks to change state. Each legal transition lists the causes that may make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionCause {
    /// The broker was started with `ha-cluster=yes`.
    HaClusterEnabled,
    /// The first message arrived from the primary on the replication link.
    PrimaryContacted,
    /// The cluster manager promoted the broker (`ringmq ha promote --cluster-manager`).
    Promoted,
    /// The primary marked the backup ready: it holds every catch-up queue.
    MarkedReadyByPrimary,
    /// The link to the primary dropped; the backup keeps its state and data and reconnects.
    PrimaryLost,
    /// A ready backup heard nothing from the primary that marked it ready for `ha-backup-timeout`:
    /// that primary no longer holds confirms for it, so it is no longer ready.
    PrimaryLostTooLong,
    /// A recovering primary's `ha-backup-timeout` passed before this expected backup was ready.
    ExpectedBackupTimedOut,
    /// The backup reconnected to a (new) primary that holds records the backup lacks.
    ReconnectedBehindPrimary,
    /// Every backup a recovering primary expected is ready or has timed out (or there were none).
    ExpectedBackupsSettled,
    /// A primary learned that another broker was promoted in a newer epoch: it stops serving
    /// clients and becomes a backup (beyond the reference, which relied on the cluster manager).
    SupersededByNewerEpoch,
}

/// A transition that the table does not allow; the broker must not take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    /// `to` cannot be reached from `from` for any cause.
    #[error(
        "illegal HA state transition {from} -> {to} ({cause}): from {from} the allowed targets are {}",
        StateList(from.allowed_targets())
    )]
    Target {
        /// The state the broker is in.
        from: BrokerState,
        /// The state that was asked for.
        to: BrokerState,
        /// The cause given.
        cause: TransitionCause,
    },
    /// `to` can be reached from `from`, but not for this cause.
    #[error(
        "HA state transition {from} -> {to} cannot be caused by {cause}; allowed causes: {}",
        CauseList(allowed_causes(*from, *to))
    )]
    Cause {
        /// The state the broker is in.
        from: BrokerState,
        /// The state that was asked for.
        to: BrokerState,
        /// The cause given.
        cause: TransitionCause,
    },
}

/// A state name that is not one of the six.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HA broker state must be one of {}; got '{got}'", StateList(&BrokerState::ALL))]
pub struct UnknownState {
    /// The text that was given.
    pub got: String,
}

/// Moves a broker from `from` to `to` for `cause`, if the table allows it.
///
/// # Errors
/// `IllegalTransition::Target` when `to` is not an allowed target of `from`;
/// `IllegalTransition::Cause` when it is, but not for `cause`.
pub fn transition(
    from: BrokerState,
    to: BrokerState,
    cause: TransitionCause,
) -> Result<BrokerState, IllegalTransition> {
    let causes = allowed_causes(from, to);
    if causes.is_empty() {
        return Err(IllegalTransition::Target { from, to, cause });
    }
    if !causes.contains(&cause) {
        return Err(IllegalTransition::Cause { from, to, cause });
    }
    Ok(to)
}

/// The causes that may move a broker from `from` to `to`; empty when the pair is illegal.
pub fn allowed_causes(from: BrokerState, to: BrokerState) -> &'static [TransitionCause] {
    use BrokerState::*;
    use TransitionCause::*;
    match (from, to) {
        (Standalone, Joining) => &[HaClusterEnabled],
        (Joining, CatchUp) => &[PrimaryContacted],
        (Joining, Recovering) => &[Promoted],
        (CatchUp, Ready) => &[MarkedReadyByPrimary],
        (CatchUp, CatchUp) => &[PrimaryLost],
        (Ready, Recovering) => &[Promoted],
        (Ready, CatchUp) => &[ExpectedBackupTimedOut, ReconnectedBehindPrimary],
        (Ready, Ready) => &[PrimaryLost],
        (Ready, Joining) => &[PrimaryLostTooLong],
        (Recovering, Active) => &[ExpectedBackupsSettled],
        (Recovering, Joining) | (Active, Joining) => &[SupersededByNewerEpoch],
        _ => &[],
    }
}

impl BrokerState {
    /// Every state, in the order a broker usually passes through them.
    pub const ALL: [BrokerState; 6] = [
        BrokerState::Standalone,
        BrokerState::Joining,
        BrokerState::CatchUp,
        BrokerState::Ready,
        BrokerState::Recovering,
        BrokerState::Active,
    ];

    /// The reference's spelling: "standalone", "joining", "catchup", "ready", "recovering",
    /// "active".
    pub fn name(self) -> &'static str {
        match self {
            BrokerState::Standalone => "standalone",
            BrokerState::Joining => "joining",
            BrokerState::CatchUp => "catchup",
            BrokerState::Ready => "ready",
            BrokerState::Recovering => "recovering",
            BrokerState::Active => "active",
        }
    }

    /// True for the states that serve clients: recovering, active, and standalone.
    pub fn is_primary(self) -> bool {
        matches!(self, BrokerState::Standalone | BrokerState::Recovering | BrokerState::Active)
    }

    /// True for the backup states: joining, catchup and ready. A backup refuses clients.
    pub fn is_backup(self) -> bool {
        matches!(self, BrokerState::Joining | BrokerState::CatchUp | BrokerState::Ready)
    }

    /// The states `transition` may move this one to, for some cause, in the order of `ALL`;
    /// never empty.
    pub fn allowed_targets(self) -> &'static [BrokerState] {
        use BrokerState::*;
        match self {
            Standalone => &[Joining],
            Joining => &[CatchUp, Recovering],
            CatchUp => &[CatchUp, Ready],
            Ready => &[Joining, CatchUp, Ready, Recovering],
            Recovering => &[Joining, Active],
            Active => &[Joining],
        }
    }
}

impl TransitionCause {
    /// Every cause.
    pub const ALL: [TransitionCause; 10] = [
        TransitionCause::HaClusterEnabled,
        TransitionCause::PrimaryContacted,
        TransitionCause::Promoted,
        TransitionCause::MarkedReadyByPrimary,
        TransitionCause::PrimaryLost,
        TransitionCause::PrimaryLostTooLong,
        TransitionCause::ExpectedBackupTimedOut,
        TransitionCause::ReconnectedBehindPrimary,
        TransitionCause::ExpectedBackupsSettled,
        TransitionCause::SupersededByNewerEpoch,
    ];

    /// The cause as a word, for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            TransitionCause::HaClusterEnabled => "ha-cluster-enabled",
            TransitionCause::PrimaryContacted => "primary-contacted",
            TransitionCause::Promoted => "promoted",
            TransitionCause::MarkedReadyByPrimary => "marked-ready-by-primary",
            TransitionCause::PrimaryLost => "primary-lost",
            TransitionCause::PrimaryLostTooLong => "primary-lost-too-long",
            TransitionCause::ExpectedBackupTimedOut => "expected-backup-timed-out",
            TransitionCause::ReconnectedBehindPrimary => "reconnected-behind-primary",
            TransitionCause::ExpectedBackupsSettled => "expected-backups-settled",
            TransitionCause::SupersededByNewerEpoch => "superseded-by-newer-epoch",
        }
    }
}

impl fmt::Display for BrokerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for TransitionCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BrokerState {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<BrokerState, UnknownState> {
        BrokerState::ALL
            .into_iter()
            .find(|state| state.name() == text)
            .ok_or_else(|| UnknownState { got: text.to_owned() })
    }
}

/// Lists states for a message: "catchup, recovering", or "none (terminal)".
struct StateList<'a>(&'a [BrokerState]);

impl fmt::Display for StateList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none (terminal)");
        }
        for (index, state) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            f.write_str(state.name())?;
        }
        Ok(())
    }
}

/// Lists causes for a message: "expected-backup-timed-out, reconnected-behind-primary".
struct CauseList(&'static [TransitionCause]);

impl fmt::Display for CauseList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, cause) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            f.write_str(cause.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::BrokerState::*;
    use super::TransitionCause::*;
    use super::*;

    /// The table of the module doc, written out again independently of `allowed_causes`, so that a
    /// change to either one fails the pair tests.
    const EXPECTED: [(BrokerState, BrokerState, &[TransitionCause]); 12] = [
        (Standalone, Joining, &[HaClusterEnabled]),
        (Joining, CatchUp, &[PrimaryContacted]),
        (Joining, Recovering, &[Promoted]),
        (CatchUp, Ready, &[MarkedReadyByPrimary]),
        (CatchUp, CatchUp, &[PrimaryLost]),
        (Ready, Recovering, &[Promoted]),
        (Ready, CatchUp, &[ExpectedBackupTimedOut, ReconnectedBehindPrimary]),
        (Ready, Ready, &[PrimaryLost]),
        (Ready, Joining, &[PrimaryLostTooLong]),
        (Recovering, Active, &[ExpectedBackupsSettled]),
        (Recovering, Joining, &[SupersededByNewerEpoch]),
        (Active, Joining, &[SupersededByNewerEpoch]),
    ];

    /// The causes the expected table gives for a pair; empty when the pair is illegal.
    fn expected_causes(from: BrokerState, to: BrokerState) -> &'static [TransitionCause] {
        EXPECTED.iter().find(|&&(f, t, _)| f == from && t == to).map_or(&[], |&(_, _, causes)| causes)
    }

    #[test]
    fn every_legal_pair_passes_with_each_of_its_causes() {
        // Goal: the 12 legal rows of the table are accepted, each for every cause it lists.
        // Method: walk all 36 pairs; for the legal ones, call transition with each listed cause.
        let mut legal_pairs = 0;
        for from in BrokerState::ALL {
            for to in BrokerState::ALL {
                let causes = expected_causes(from, to);
                if causes.is_empty() {
                    continue;
                }
                legal_pairs += 1;
                for &cause in causes {
                    assert_eq!(transition(from, to, cause), Ok(to), "{from} -> {to} ({cause})");
                }
            }
        }
        assert_eq!(legal_pairs, 12);
    }

    #[test]
    fn every_illegal_pair_fails_naming_from_to_and_allowed_targets() {
        // Goal: the 24 pairs outside the table are refused for every cause, and the message names
        // the state the broker is in, the state asked for, and every allowed target.
        // Method: walk all 36 pairs; for the illegal ones, try every cause and read the message.
        let mut illegal_pairs = 0;
        for from in BrokerState::ALL {
            for to in BrokerState::ALL {
                if !expected_causes(from, to).is_empty() {
                    continue;
                }
                illegal_pairs += 1;
                for cause in TransitionCause::ALL {
                    let error = transition(from, to, cause).unwrap_err();
                    assert_eq!(error, IllegalTransition::Target { from, to, cause });
                    let message = error.to_string();
                    assert!(message.contains(&format!("{from} -> {to}")), "{message}");
                    let targets: Vec<&str> = BrokerState::ALL
                        .into_iter()
                        .filter(|&target| !expected_causes(from, target).is_empty())
                        .map(BrokerState::name)
                        .collect();
                    let listed = if targets.is_empty() { "none (terminal)".to_owned() } else { targets.join(", ") };
                    assert!(message.ends_with(&format!("allowed targets are {listed}")), "{message}");
                }
            }
        }
        assert_eq!(illegal_pairs, 24);
    }

    #[test]
    fn legal_pair_with_a_cause_it_does_not_list_is_refused_naming_the_allowed_causes() {
        // Goal: the cause is checked too, so a timeout cannot masquerade as a promotion.
        // Method: for each legal pair, try every cause the table does not list for it.
        for &(from, to, causes) in &EXPECTED {
            for cause in TransitionCause::ALL {
                if causes.contains(&cause) {
                    continue;
                }
                let error = transition(from, to, cause).unwrap_err();
                assert_eq!(error, IllegalTransition::Cause { from, to, cause });
                let names: Vec<&str> = causes.iter().map(|c| c.name()).collect();
                assert!(error.to_string().ends_with(&format!("allowed causes: {}", names.join(", "))));
            }
        }
    }

    #[test]
    fn catchup_backup_cannot_be_promoted() {
        // Goal: promoting a backup that is still catching up is refused with a readable reason.
        let error = transition(CatchUp, Recovering, Promoted).unwrap_err();
        assert_eq!(
            error.to_string(),
            "illegal HA state transition catchup -> recovering (promoted): \
             from catchup the allowed targets are catchup, ready"
        );
    }

    #[test]
    fn ready_backup_goes_back_to_catchup_for_either_reason() {
        // Goal: both ways a ready backup falls behind are accepted, and promote is not one of them.
        assert_eq!(transition(Ready, CatchUp, ExpectedBackupTimedOut), Ok(CatchUp));
        assert_eq!(transition(Ready, CatchUp, ReconnectedBehindPrimary), Ok(CatchUp));
        assert_eq!(
            transition(Ready, CatchUp, Promoted).unwrap_err().to_string(),
            "HA state transition ready -> catchup cannot be caused by promoted; \
             allowed causes: expected-backup-timed-out, reconnected-behind-primary"
        );
    }

    #[test]
    fn backup_that_loses_its_primary_keeps_its_state() {
        // Goal: losing the primary leaves a ready or catch-up backup where it was (our issue), and
        // is not a way for any other state to stay put.
        assert_eq!(transition(Ready, Ready, PrimaryLost), Ok(Ready));
        assert_eq!(transition(CatchUp, CatchUp, PrimaryLost), Ok(CatchUp));
        for state in [Standalone, Joining, Recovering, Active] {
            assert!(transition(state, state, PrimaryLost).is_err(), "{state}");
        }
    }

    #[test]
    fn ready_backup_unheard_from_for_too_long_becomes_joining_and_nothing_else_does() {
        // Goal: only a ready backup leaves for joining when its primary was silent too long; a
        // backup catching up has nothing to give up, and a primary never takes that cause.
        assert_eq!(transition(Ready, Joining, PrimaryLostTooLong), Ok(Joining));
        for state in [Standalone, Joining, CatchUp, Recovering, Active] {
            assert!(transition(state, Joining, PrimaryLostTooLong).is_err(), "{state}");
        }
        let error = transition(Ready, Joining, PrimaryLost).unwrap_err();
        assert!(error.to_string().ends_with("allowed causes: primary-lost-too-long"), "{error}");
    }

    #[test]
    fn active_only_steps_down_for_a_newer_epoch() {
        // Goal: active leaves only to joining, only when superseded, and the message says so.
        assert_eq!(Active.allowed_targets(), &[Joining]);
        assert_eq!(transition(Active, Joining, SupersededByNewerEpoch), Ok(Joining));
        let error = transition(Active, Joining, PrimaryLost).unwrap_err();
        assert!(error.to_string().ends_with("allowed causes: superseded-by-newer-epoch"), "{error}");
    }

    #[test]
    fn allowed_targets_agree_with_allowed_causes() {
        // Goal: the two views of the table cannot drift apart (pair assertion).
        for from in BrokerState::ALL {
            for to in BrokerState::ALL {
                let listed = from.allowed_targets().contains(&to);
                assert_eq!(listed, !allowed_causes(from, to).is_empty(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn names_round_trip_through_from_str() {
        // Goal: every state parses back from its reference spelling, and that spelling is exact.
        let names: Vec<&str> = BrokerState::ALL.into_iter().map(BrokerState::name).collect();
        assert_eq!(names, ["standalone", "joining", "catchup", "ready", "recovering", "active"]);
        for state in BrokerState::ALL {
            assert_eq!(state.name().parse::<BrokerState>(), Ok(state));
            assert_eq!(state.to_string(), state.name());
        }
    }

    #[test]
    fn unknown_state_name_error_lists_allowed_names() {
        // Goal: a misspelt or differently cased name is refused, and the message lists the six.
        for bad in ["catch-up", "Ready", "primary", ""] {
            let error = bad.parse::<BrokerState>().unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "HA broker state must be one of standalone, joining, catchup, ready, recovering, \
                     active; got '{bad}'"
                )
            );
        }
    }

    #[test]
    fn every_state_is_exactly_one_of_primary_or_backup() {
        // Goal: admission can rely on the two predicates being complementary.
        for state in BrokerState::ALL {
            assert_ne!(state.is_primary(), state.is_backup(), "{state}");
        }
        let primaries: Vec<BrokerState> = BrokerState::ALL.into_iter().filter(|s| s.is_primary()).collect();
        assert_eq!(primaries, [Standalone, Recovering, Active]);
    }
}
