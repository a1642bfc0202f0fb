//! The check before a `ready` backup is promoted: did a newer ready set leave it out?
//!
//! A primary that loses a ready backup (a hang, a partition) keeps holding confirms for it
//! (`primary::role`, "Detached backups") until every other ready backup holds a ready set without
//! it; from then on it confirms without it. The dropped backup cannot know: it still says `ready`
//! until its lease runs out. So before promoting a `ready` broker, the cluster manager (`ringmq ha
//! promote --cluster-manager`, or any manager doing the same) fences every other broker of
//! `ha-brokers-url` it can reach (`HaFence`: from then on a backup no longer tells its primary that
//! it holds a new ready set, so no release can follow the check) and reads their answers. The
//! promotion is refused when:
//! - another broker serves as a primary (`recovering`, `active`): the cluster has one;
//! - another broker knows a newer ready set (greater epoch and version) that leaves the candidate
//!   out: confirms may have been given without it;
//! - a backup of the candidate's own last ready set did not answer: it may know such a set. The
//!   refusal lasts until it answers, or until the candidate's lease ends and it is `joining`
//!   (promotable as a new cluster's first primary only when no other broker is past `joining`).
//!
//! Brokers outside the candidate's ready set that do not answer are not counted, as in the
//! reference's status check: they held nothing the candidate lacks.
//!
//! Invariants:
//! - The check decides from the answers alone; it never promotes, and a refusal names the broker
//!   and what it answered.

use ringmq_core::broker_state::BrokerState;
use ringmq_core::frame::ReadySet;

/// What a broker answered to a fence (or a status request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its own address as ready sets name it.
    pub name: String,
    /// Its HA state.
    pub state: BrokerState,
    /// The epoch it was promoted in (0 if never).
    pub epoch: u64,
    /// The newest ready set it knows.
    pub ready_set: ReadySet,
}

/// Why a `ready` broker must not be promoted now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromotionRefused {
    /// Another broker serves as a primary.
    #[error("broker {peer} is {state} in epoch {epoch}: the cluster has a primary")]
    PrimaryServing {
        /// The other broker, as the caller named it.
        peer: String,
        /// Its state.
        state: BrokerState,
        /// Its epoch.
        epoch: u64,
    },
    /// Another broker knows a newer ready set without the candidate.
    #[error(
        "broker {peer} holds ready set {version} of epoch {epoch}, which leaves {candidate} out: its primary \
         confirmed messages without it; promote a broker of that set"
    )]
    LeftOut {
        /// The other broker.
        peer: String,
        /// The candidate's name.
        candidate: String,
        /// The set's epoch.
        epoch: u64,
        /// The set's version.
        version: u64,
    },
    /// A backup of the candidate's last ready set did not answer.
    #[error(
        "broker {member}, ready with {candidate} in the last ready set it knows, did not answer: it may hold a \
         newer set that leaves {candidate} out; retry when it answers"
    )]
    MemberSilent {
        /// The silent member's name.
        member: String,
        /// The candidate's name.
        candidate: String,
    },
}

/// Whether `candidate` (a `ready` broker) may be promoted, given what each other broker of its
/// cluster answered to a fence: `(how the caller names it, Some(answer))`, or `None` for no answer.
///
/// # Errors
/// The first reason found, in the order of the module doc.
pub fn check_ready_promotion(
    candidate: &MemberStatus,
    peers: &[(String, Option<MemberStatus>)],
) -> Result<(), PromotionRefused> {
    let answered = || peers.iter().filter_map(|(shown, status)| status.as_ref().map(|status| (shown, status)));
    for (shown, peer) in answered() {
        if matches!(peer.state, BrokerState::Recovering | BrokerState::Active) {
            return Err(PromotionRefused::PrimaryServing { peer: shown.clone(), state: peer.state, epoch: peer.epoch });
        }
    }
    for (shown, peer) in answered() {
        let set = &peer.ready_set;
        if set.key() > candidate.ready_set.key() && !set.members.contains(&candidate.name) {
            return Err(PromotionRefused::LeftOut {
                peer: shown.clone(),
                candidate: candidate.name.clone(),
                epoch: set.epoch,
                version: set.version,
            });
        }
    }
    for member in &candidate.ready_set.members {
        if *member != candidate.name && !answered().any(|(_, peer)| peer.name == *member) {
            return Err(PromotionRefused::MemberSilent { member: member.clone(), candidate: candidate.name.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: BrokerState, set: (u64, u64, &[&str])) -> MemberStatus {
        let (epoch, version, members) = set;
        let members = members.iter().map(|m| m.to_string()).collect();
        MemberStatus { name: name.into(), state, epoch: 0, ready_set: ReadySet { epoch, version, members } }
    }

    fn answered(status: MemberStatus) -> (String, Option<MemberStatus>) {
        (status.name.clone(), Some(status))
    }

    #[test]
    fn a_ready_backup_whose_set_every_member_confirms_is_promotable() {
        // Goal: the usual failover: the primary is gone, the other ready backup holds the same set.
        let b = status("b:1", BrokerState::Ready, (1, 4, &["b:1", "c:1"]));
        let c = status("c:1", BrokerState::Ready, (1, 4, &["b:1", "c:1"]));
        let peers = [("a:1".to_string(), None), answered(c)];
        assert_eq!(check_ready_promotion(&b, &peers), Ok(()));
    }

    #[test]
    fn a_backup_that_a_newer_set_left_out_is_refused_naming_who_knows() {
        // Goal: the primary dropped b (hung) and c holds the set without it: b lacks confirms.
        let b = status("b:1", BrokerState::Ready, (1, 4, &["b:1", "c:1"]));
        let c = status("c:1", BrokerState::Ready, (1, 5, &["c:1"]));
        let refused = check_ready_promotion(&b, &[("a:1".to_string(), None), answered(c)]).unwrap_err();
        assert_eq!(
            refused,
            PromotionRefused::LeftOut { peer: "c:1".into(), candidate: "b:1".into(), epoch: 1, version: 5 }
        );
        assert!(refused.to_string().contains("leaves b:1 out"), "{refused}");
        // The reverse holds: c may be promoted, b's older set does not count against it.
        let b = status("b:1", BrokerState::Ready, (1, 4, &["b:1", "c:1"]));
        let c = status("c:1", BrokerState::Ready, (1, 5, &["c:1"]));
        assert_eq!(check_ready_promotion(&c, &[("a:1".to_string(), None), answered(b)]), Ok(()));
    }

    #[test]
    fn a_newer_epoch_counts_whatever_the_version() {
        // Goal: sets order by epoch first; a newer primary's first set outranks any older one.
        let b = status("b:1", BrokerState::Ready, (1, 9, &["b:1"]));
        let c = status("c:1", BrokerState::CatchUp, (2, 1, &["a:1"]));
        let refused = check_ready_promotion(&b, &[answered(c)]).unwrap_err();
        assert!(matches!(refused, PromotionRefused::LeftOut { epoch: 2, version: 1, .. }), "{refused}");
    }

    #[test]
    fn a_silent_member_of_the_candidates_set_refuses_and_a_silent_outsider_does_not() {
        // Goal: only a member of the candidate's set can know a set without it.
        let b = status("b:1", BrokerState::Ready, (1, 4, &["b:1", "c:1"]));
        let peers = [("a:1".to_string(), None), ("c:1".to_string(), None)];
        let refused = check_ready_promotion(&b, &peers).unwrap_err();
        assert_eq!(refused, PromotionRefused::MemberSilent { member: "c:1".into(), candidate: "b:1".into() });
        let alone = status("b:1", BrokerState::Ready, (1, 4, &["b:1"]));
        assert_eq!(check_ready_promotion(&alone, &peers), Ok(()));
    }

    #[test]
    fn a_serving_primary_refuses_any_promotion() {
        // Goal: never a second primary beside one that answers.
        let b = status("b:1", BrokerState::Ready, (1, 4, &["b:1"]));
        let mut a = status("a:1", BrokerState::Active, (1, 4, &["b:1"]));
        a.epoch = 1;
        let refused = check_ready_promotion(&b, &[answered(a)]).unwrap_err();
        assert_eq!(refused.to_string(), "broker a:1 is active in epoch 1: the cluster has a primary");
    }
}
