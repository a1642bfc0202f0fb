//! `ringmq ha status|promote`: a broker's HA state, and promotion, for people and cluster
//! managers. Every connection here is an admin connection, so backups answer.
//!
//! Exit status: 0 on success (for `status --expect`, only on a match); 1 when the broker refused,
//! could not be reached, or the state did not match; 2 for a command line refused before asking
//! anything (`promote` without `--cluster-manager`, an unknown `--expect` state).
//!
//! Before promoting a `joining` broker, `promote` does what the reference's StatusCheck did inside
//! the broker: it asks every other broker of the broker's `ha-brokers-url`, and refuses if one
//! that answers is past `joining` (a primary or a backup already exists, so this broker is not the
//! first primary of a new cluster). Brokers that do not answer are not counted, as in the
//! reference.
//!
//! Before promoting a `ready` broker, `promote` fences every other broker of `ha-brokers-url`
//! (`ha-fence`) and runs `ringmq_ha::promotion_check` on their answers: it refuses while another
//! broker serves as primary, when a newer ready set left this broker out (its primary confirmed
//! without it), or when a backup of its own last ready set does not answer.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use ringmq_client::blocking::Connection;
use ringmq_client::{ClientError, ConnectOptions, HaStatus};
use ringmq_ha::broker_state::BrokerState;
use ringmq_ha::promotion_check::{check_ready_promotion, MemberStatus, PromotionRefused};
use ringmq_ha::url::{BrokerUrl, UrlError};

use crate::cli::{BrokerArgs, HaCommand};

/// Runs `ringmq ha ...`.
pub fn run(broker: &BrokerArgs, command: HaCommand) -> ExitCode {
    match command {
        HaCommand::Status { expect, all } => status(broker, expect.as_deref(), all),
        HaCommand::Promote { cluster_manager } => promote(broker, cluster_manager),
    }
}

/// `ringmq ha status [--expect STATE] [--all]`.
fn status(broker: &BrokerArgs, expect: Option<&str>, all: bool) -> ExitCode {
    let expected = match expect.map(BrokerState::from_str).transpose() {
        Ok(expected) => expected,
        Err(error) => {
            eprintln!("ringmq ha status: --expect: {error}");
            return ExitCode::from(2);
        }
    };
    let own = match ask_status(&broker.broker, CONNECT_TIMEOUT) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("ringmq ha status: {}: {error}", broker.broker);
            return ExitCode::FAILURE;
        }
    };
    if !all {
        println!("{}", own.state);
        return verdict(expected, [own.state.as_str()]);
    }
    let members = match members(&own) {
        Ok(members) => members,
        Err(reason) => {
            eprintln!("ringmq ha status: {}: {reason}", broker.broker);
            return ExitCode::FAILURE;
        }
    };
    if members.is_empty() {
        // No ha-brokers-url: the broker is the only member there is.
        println!("{} {}", broker.broker, own.state);
        return verdict(expected, [own.state.as_str()]);
    }
    let mut states = Vec::new();
    for member in members {
        match ask_status(&member.dial, PEER_TIMEOUT) {
            Ok(status) => {
                println!("{} {}", member.shown, status.state);
                states.push(status.state);
            }
            Err(error) => {
                println!("{} unreachable: {error}", member.shown);
                states.push(String::new());
            }
        }
    }
    verdict(expected, states.iter().map(String::as_str))
}

/// `ringmq ha promote --cluster-manager`.
fn promote(broker: &BrokerArgs, cluster_manager: bool) -> ExitCode {
    if !cluster_manager {
        eprintln!(
            "ringmq ha promote: refused without --cluster-manager: promotion is a cluster manager's command; \
             promoting the wrong broker, or a second one, can lose messages. Pass --cluster-manager if you \
             are acting as the cluster manager."
        );
        return ExitCode::from(2);
    }
    let addr = &broker.broker;
    let outcome = admin_connect(addr, CONNECT_TIMEOUT).and_then(|connection| {
        let status = connection.ha_status()?;
        Ok((connection, status))
    });
    let (connection, status) = match outcome {
        Ok(pair) => pair,
        Err(error) => {
            eprintln!("ringmq ha promote: {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let checked = match status.state.as_str() {
        state if state == BrokerState::Joining.name() => status_check(addr, &status),
        state if state == BrokerState::Ready.name() => ready_check(addr, &status),
        _ => Ok(()),
    };
    if let Err(reason) = checked {
        eprintln!("ringmq ha promote: refused: {reason}");
        return ExitCode::FAILURE;
    }
    let promoted = connection.ha_promote().and_then(|()| connection.ha_status());
    // The connection's close outcome does not change what happened to the promotion.
    let closed = connection.close();
    match promoted {
        Ok(now) => {
            if let Err(error) = closed {
                tracing::debug!(%error, "closing the admin connection after promote");
            }
            println!("broker {addr} promoted: {} in epoch {}", now.state, now.epoch);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringmq ha promote: {addr}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Why `promote` refuses: the StatusCheck for a joining broker, the promotion check for a ready one.
#[derive(Debug, thiserror::Error)]
enum StatusCheckError {
    /// Another broker of `ha-brokers-url` answered with a state past `joining`.
    #[error(
        "broker {shown} is {state}: a joining broker may be promoted only when no other broker of \
         ha-brokers-url is past joining (the first primary of a new cluster); promote a ready backup instead"
    )]
    PeerPastJoining {
        /// The other broker, as its `ha-brokers-url` shows it.
        shown: String,
        /// The state it answered with.
        state: String,
    },
    /// The broker's own `ha-brokers-url` cannot be read, so its peers are unknown.
    #[error(transparent)]
    Members(#[from] MembersError),
    /// A ready broker's promotion check refused (`ringmq_ha::promotion_check`).
    #[error(transparent)]
    Ready(#[from] PromotionRefused),
    /// A broker answered with a state this command does not know.
    #[error("broker {shown} answered the unknown state '{state}'")]
    UnknownState {
        /// The broker, as its `ha-brokers-url` shows it.
        shown: String,
        /// What it answered.
        state: String,
    },
}

/// Why the members of a broker's cluster cannot be listed.
#[derive(Debug, thiserror::Error)]
enum MembersError {
    /// The `ha-brokers-url` the broker reported is outside the URL grammar.
    #[error("its ha-brokers-url does not parse: {0}")]
    BrokersUrl(#[from] UrlError),
}

/// One broker of a `ha-brokers-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// The address as the URL shows it.
    shown: String,
    /// `host:port` to dial (an IPv6 host in brackets).
    dial: String,
}

/// The reference's StatusCheck: `Err` naming the first other broker of `ha-brokers-url` that
/// answers with a state other than `joining`.
fn status_check(addr: &str, status: &HaStatus) -> Result<(), StatusCheckError> {
    for member in other_members(addr, status)? {
        // A broker that does not answer is not counted, as in the reference.
        let Ok(other) = ask_status(&member.dial, PEER_TIMEOUT) else { continue };
        if other.state != BrokerState::Joining.name() {
            return Err(StatusCheckError::PeerPastJoining { shown: member.shown, state: other.state });
        }
    }
    Ok(())
}

/// The check before promoting a ready broker: fences every other broker of `ha-brokers-url` and
/// runs `ringmq_ha::promotion_check` on the answers.
fn ready_check(addr: &str, status: &HaStatus) -> Result<(), StatusCheckError> {
    let candidate = member_status(addr, status)?;
    // The candidate's primary: a broker that restarted since knows no epoch.
    let known = candidate.epoch.max(candidate.ready_set.epoch);
    let mut peers = Vec::new();
    for member in other_members(addr, status)? {
        let answer = admin_connect(&member.dial, PEER_TIMEOUT).and_then(|connection| {
            let fenced = connection.ha_fence(known)?;
            connection.close()?;
            Ok(fenced)
        });
        let answer = match answer {
            Ok(fenced) => Some(member_status(&member.shown, &fenced)?),
            Err(error) => {
                tracing::debug!(member = %member.shown, %error, "no answer to the fence");
                None
            }
        };
        peers.push((member.shown, answer));
    }
    check_ready_promotion(&candidate, &peers)?;
    Ok(())
}

/// A broker's answer as the promotion check reads it.
fn member_status(shown: &str, status: &HaStatus) -> Result<MemberStatus, StatusCheckError> {
    let unknown = || StatusCheckError::UnknownState { shown: shown.to_string(), state: status.state.clone() };
    Ok(MemberStatus {
        name: status.name.clone(),
        state: BrokerState::from_str(&status.state).map_err(|_| unknown())?,
        epoch: status.epoch,
        ready_set: status.ready_set.clone(),
    })
}

/// The brokers of the broker's `ha-brokers-url` but the broker at `addr` itself (by address, or by
/// what both resolve to).
fn other_members(addr: &str, status: &HaStatus) -> Result<Vec<Member>, MembersError> {
    let own: HashSet<SocketAddr> = addr.to_socket_addrs().map(Iterator::collect).unwrap_or_default();
    Ok(members(status)?
        .into_iter()
        .filter(|member| {
            let resolved: HashSet<SocketAddr> =
                member.dial.to_socket_addrs().map(Iterator::collect).unwrap_or_default();
            member.dial != addr && (resolved.is_empty() || resolved.is_disjoint(&own))
        })
        .collect())
}

/// The brokers of the broker's `ha-brokers-url`; none when it has none.
fn members(status: &HaStatus) -> Result<Vec<Member>, MembersError> {
    if status.brokers_url.is_empty() {
        return Ok(Vec::new());
    }
    let url: BrokerUrl = status.brokers_url.parse()?;
    Ok(url
        .addresses()
        .iter()
        .map(|address| {
            let host =
                if address.host().contains(':') { format!("[{}]", address.host()) } else { address.host().to_string() };
            Member { shown: address.to_string(), dial: format!("{host}:{}", address.port()) }
        })
        .collect())
}

/// Exit 0 when there is nothing to expect or every state matches.
fn verdict<'a>(expected: Option<BrokerState>, states: impl IntoIterator<Item = &'a str>) -> ExitCode {
    match expected {
        Some(expected) if !states.into_iter().all(|state| state == expected.name()) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn ask_status(addr: &str, timeout: Duration) -> Result<HaStatus, ClientError> {
    let connection = admin_connect(addr, timeout)?;
    let status = connection.ha_status()?;
    connection.close()?;
    Ok(status)
}

fn admin_connect(addr: &str, timeout: Duration) -> Result<Connection, ClientError> {
    let options = ConnectOptions { admin: true, connect_timeout: timeout, ..ConnectOptions::default() };
    Connection::connect(addr, options)
}

/// Longest wait for the broker named with `-b`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for each other broker in the StatusCheck and `--all`: a dead peer must not hold a
/// cluster manager's promote for long.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(brokers_url: &str) -> HaStatus {
        HaStatus {
            state: "joining".to_string(),
            epoch: 0,
            brokers_url: brokers_url.to_string(),
            public_url: String::new(),
            name: String::new(),
            ready_set: ringmq_client::ReadySet::default(),
        }
    }

    #[test]
    fn members_are_shown_as_in_the_url_and_dialled_with_brackets() {
        // Goal: an IPv6 member is dialled as `[host]:port`, shown as the URL gives it.
        let listed = members(&status_with("tcp:node1:5672,tcp:[::1]:5673")).unwrap();
        let dialled: Vec<&str> = listed.iter().map(|member| member.dial.as_str()).collect();
        assert_eq!(dialled, ["node1:5672", "[::1]:5673"]);
        assert!(members(&status_with("")).unwrap().is_empty());
    }

    #[test]
    fn refusals_keep_their_text() {
        // Goal: the typed errors print what the command printed before they were typed.
        let refusal = StatusCheckError::PeerPastJoining { shown: "tcp:b:5672".into(), state: "active".into() };
        assert_eq!(
            refusal.to_string(),
            "broker tcp:b:5672 is active: a joining broker may be promoted only when no other broker of \
             ha-brokers-url is past joining (the first primary of a new cluster); promote a ready backup instead"
        );
        let unreadable = members(&status_with("ssl:")).unwrap_err();
        assert!(unreadable.to_string().starts_with("its ha-brokers-url does not parse: "), "{unreadable}");
    }
}
