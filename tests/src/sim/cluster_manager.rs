//! The simulated cluster manager: promotes a ready backup when no primary has been alive for a
//! while, as the reference's resource manager (rgmanager, Pacemaker) does, through the real
//! command: an admin connection (`PREAMBLE_FLAG_ADMIN`) carrying `ha-promote`, the frame
//! `ringmq ha promote --cluster-manager` sends.
//!
//! Each tick it looks at every broker it can reach (up and not paused; it reads shard 0's state
//! as a status probe would) and:
//! - while a broker serves clients (`recovering`, `active`), does nothing;
//! - once none has for `promote_after`, promotes a `ready` broker that passes the promotion check
//!   (`ringmq_ha::promotion_check`, on the answers of the brokers its host reaches, which it fences
//!   first, as `ringmq ha promote` does); it never promotes a `catchup` one;
//! - when every broker is up and `joining` (a new cluster, or one that lost every member),
//!   promotes one, as `ringmq ha promote` allows for the first primary;
//! - when no broker has been ready for `restart_after` while none serves (the holders of the data
//!   are gone and the rest can never catch up), restarts every broker: the data is lost, and the
//!   oracle is told.
//!
//! Not here: the bytes of the admin connection's travel (`network`), the decision's check
//! (`invariants`).
//!
//! Invariants:
//! - At most one promotion is in flight; it ends with the broker's answer, the connection's end,
//!   or `PROMOTION_TIMEOUT`.
//! - Only brokers observed `ready` (or, for a new cluster, all `joining`) are promoted.

use std::time::Duration;

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::frame::{Frame, Preamble, PREAMBLE_FLAG_ADMIN, PROTOCOL_VERSION};
use ringmq_core::ids::RequestId;
use ringmq_core::wire::codec;
use ringmq_ha::promotion_check::PromotionRefused;

use super::client::{encoded, ClientAction};
use super::clock::SimTime;
use super::network::SimConnId;
use super::rng::SimRng;

/// What the manager sees of one broker at a tick.
#[derive(Debug, Clone)]
pub struct BrokerStatus {
    /// Up and not paused: it would answer a status probe.
    pub reachable: bool,
    /// Shard 0's state when reachable.
    pub state: Option<BrokerState>,
    /// For a reachable `ready` broker: the promotion check on the answers of the brokers its host
    /// reaches (`ringmq_ha::promotion_check`).
    pub checked: Option<Result<(), PromotionRefused>>,
}

/// What the manager decided at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerDecision {
    /// Nothing to do.
    Wait,
    /// Open an admin connection to this broker and promote it.
    Promote(usize),
    /// Restart every broker.
    RestartCluster,
}

/// The broker's answer to a promote: which broker, and `Ok` promoted or `Err(reason)` refused.
pub type PromoteAnswer = (usize, Result<(), String>);

/// A promotion in flight.
#[derive(Debug)]
struct Promotion {
    /// The broker.
    broker: usize,
    /// The admin connection, once dialled.
    conn: Option<SimConnId>,
    /// When it started.
    started: SimTime,
    /// Bytes received.
    rx: BytesMut,
}

/// The cluster manager.
#[derive(Debug)]
pub struct ClusterManager {
    /// How long no primary may be alive before a promotion.
    pub promote_after: Duration,
    /// How long nobody may be ready, with no primary, before the cluster is restarted.
    pub restart_after: Duration,
    /// Since when no primary was seen.
    no_primary_since: Option<SimTime>,
    /// The promotion in flight.
    promotion: Option<Promotion>,
    /// Promotions asked.
    pub promotions: u64,
    /// Promotions the broker refused (`failed`).
    pub refused: u64,
    /// Ready brokers passed over because the promotion check refused them, summed over ticks.
    pub refused_by_check: u64,
    /// Cluster restarts.
    pub restarts: u64,
}

impl ClusterManager {
    /// A manager whose wait is drawn from `rng` around the heartbeat interval.
    pub fn new(rng: &mut SimRng, heartbeat: Duration, backup_timeout: Duration) -> ClusterManager {
        ClusterManager {
            promote_after: heartbeat.mul_f64(rng.between(5, 30) as f64 / 10.0),
            restart_after: (backup_timeout + heartbeat * 4) * 4,
            no_primary_since: None,
            promotion: None,
            promotions: 0,
            refused: 0,
            refused_by_check: 0,
            restarts: 0,
        }
    }

    /// Whether a promotion is in flight.
    pub fn promoting(&self) -> bool {
        self.promotion.is_some()
    }

    /// Decides at a tick.
    pub fn tick(&mut self, now: SimTime, brokers: &[BrokerStatus], rng: &mut SimRng) -> ManagerDecision {
        if let Some(promotion) = &self.promotion {
            if now.since(promotion.started) < PROMOTION_TIMEOUT {
                return ManagerDecision::Wait;
            }
            // No answer: give up this one; the connection's end comes back later and is ignored.
            self.promotion = None;
        }
        let alive = |b: &BrokerStatus| b.reachable && b.state.is_some_and(BrokerState::is_primary);
        if brokers.iter().any(alive) {
            self.no_primary_since = None;
            return ManagerDecision::Wait;
        }
        let since = *self.no_primary_since.get_or_insert(now);
        let all_joining = brokers.iter().all(|b| b.reachable && b.state == Some(BrokerState::Joining));
        if all_joining {
            return ManagerDecision::Promote(rng.index(brokers.len()));
        }
        if now.since(since) < self.promote_after {
            return ManagerDecision::Wait;
        }
        let ready: Vec<usize> = (0..brokers.len())
            .filter(|&i| brokers[i].reachable && brokers[i].state == Some(BrokerState::Ready))
            .collect();
        let promotable: Vec<usize> =
            ready.iter().copied().filter(|&i| matches!(brokers[i].checked, Some(Ok(())))).collect();
        self.refused_by_check += (ready.len() - promotable.len()) as u64;
        if !promotable.is_empty() {
            return ManagerDecision::Promote(promotable[rng.index(promotable.len())]);
        }
        if !ready.is_empty() {
            // A ready broker the check refused waits for an answer, or for its lease to end.
            return ManagerDecision::Wait;
        }
        if now.since(since) >= self.restart_after {
            self.no_primary_since = None;
            self.restarts += 1;
            return ManagerDecision::RestartCluster;
        }
        ManagerDecision::Wait
    }

    /// Starts promoting `broker`: dial it.
    pub fn begin(&mut self, broker: usize, now: SimTime, actions: &mut Vec<ClientAction>) {
        assert!(self.promotion.is_none(), "one promotion at a time");
        self.promotions += 1;
        self.promotion = Some(Promotion { broker, conn: None, started: now, rx: BytesMut::new() });
        actions.push(ClientAction::Dial { broker });
    }

    /// The dial answered.
    pub fn dialed(&mut self, conn: Option<SimConnId>, actions: &mut Vec<ClientAction>) {
        let Some(promotion) = self.promotion.as_mut() else {
            if let Some(conn) = conn {
                actions.push(ClientAction::Close { conn });
            }
            return;
        };
        match conn {
            Some(conn) => {
                promotion.conn = Some(conn);
                let mut bytes = BytesMut::new();
                codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags: PREAMBLE_FLAG_ADMIN }, &mut bytes);
                actions.push(ClientAction::Write { conn, bytes });
            }
            None => self.promotion = None,
        }
    }

    /// Bytes arrived on the admin connection `conn`. Returns the broker's answer to the promote,
    /// once it came: `Ok(())` promoted, `Err(reason)` refused.
    ///
    /// # Errors
    /// The bytes do not decode.
    pub fn received(
        &mut self,
        conn: SimConnId,
        bytes: &[u8],
        actions: &mut Vec<ClientAction>,
    ) -> Result<Option<PromoteAnswer>, String> {
        let Some(promotion) = self.promotion.as_mut().filter(|p| p.conn == Some(conn)) else { return Ok(None) };
        promotion.rx.extend_from_slice(bytes);
        loop {
            let frame = codec::decode(&mut promotion.rx, ringmq_core::limits::FRAME_BYTES_MAX)
                .map_err(|error| format!("undecodable frame on the admin connection: {error}"))?;
            let Some(frame) = frame else { return Ok(None) };
            match frame {
                Frame::Hello { .. } => {
                    actions.push(ClientAction::Write { conn, bytes: encoded(&Frame::HaPromote { request: PROMOTE }) });
                }
                Frame::Ok { request } if request == PROMOTE => {
                    let broker = promotion.broker;
                    self.promotion = None;
                    actions.push(ClientAction::Close { conn });
                    return Ok(Some((broker, Ok(()))));
                }
                Frame::Failed { request, message, .. } if request == PROMOTE => {
                    let broker = promotion.broker;
                    self.promotion = None;
                    self.refused += 1;
                    actions.push(ClientAction::Close { conn });
                    return Ok(Some((broker, Err(message))));
                }
                Frame::Error { message, .. } => {
                    let broker = promotion.broker;
                    self.promotion = None;
                    actions.push(ClientAction::Close { conn });
                    return Ok(Some((broker, Err(message))));
                }
                _ => {}
            }
        }
    }

    /// The admin connection `conn` ended.
    pub fn closed(&mut self, conn: SimConnId) {
        if self.promotion.as_ref().is_some_and(|p| p.conn == Some(conn)) {
            self.promotion = None;
        }
    }
}

/// The request id of the promote.
const PROMOTE: RequestId = RequestId(1);
/// How long a promotion may take before the manager gives up on it.
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(2);
