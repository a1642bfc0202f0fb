//! One backup shard's link to the primary's same-numbered shard, as a sans-IO machine: which
//! address to dial (`backup::link`), the handshake, applying the primary's batches to the shard
//! (`backup::stream`), confirming them, heartbeats (`link::heartbeat`), and the HA transitions the
//! link decides on shard 0.
//!
//! A link, from the backup: dial (the shell gives up after `2 x link-heartbeat-interval`), send
//! the preamble with `PREAMBLE_FLAG_BACKUP` and `LINK_VERSION` (a broker of another link version
//! refuses it, and a `hello` of another version ends it), wait (as long) for `hello` or `error`; send
//! `link-open` (this shard, the shard count, the highest epoch seen, the shard's holdings), wait
//! for `link-accepted`; then apply batches in order, confirm them cumulatively after each read,
//! and exchange heartbeats until one end hears nothing for twice the interval. Shard 0 moves the
//! broker to catch-up when the primary accepts and to ready on `marked-ready`, passes `members` to
//! the other shards, and asks for its ready lease (`lease-request`, `backup::ready_lease`).
//!
//! Catch-up sends only the difference: `link-open` carries what the shard holds of its queues
//! (`Shard::replica_holdings`), and the primary sends the messages it lacks, drops those it no
//! longer holds and deletes the queues it no longer has. When the holdings exceed
//! `HOLDINGS_QUEUES_MAX` queues or `HOLDINGS_RANGES_MAX` ranges none are sent, and catch-up is a
//! full resync: the shard drops the replicated messages it held.
//!
//! Invariants:
//! - At most one dial or link at a time; none once the broker is not a backup (`stop`).
//! - A batch is applied only on an accepted link, in order, never from an older epoch.
//! - Every `Dial` output is answered once (`handle_dialed` or `handle_dial_failed`); a dial that
//!   completes after `stop` is closed at once.

use std::time::Instant;

use bytes::BytesMut;
use ringmq_core::broker_state::{BrokerState, TransitionCause};
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{Frame, Preamble, ReadySet, LINK_VERSION, PREAMBLE_FLAG_BACKUP};
use ringmq_core::ids::ConnId;
use ringmq_core::shard::Shard;
use ringmq_core::wire::codec;

use crate::backup::link::{BackupLink, LinkStatus};
use crate::backup::ready_lease::LeaseRequests;
use crate::backup::stream::{BackupStream, IgnoreReason, Ignored};
use crate::limits::{BATCH_BYTES_MAX, HOLDINGS_QUEUES_MAX, HOLDINGS_RANGES_MAX, LINK_SILENT_INTERVALS_MAX};
use crate::link::frame::{decode_link_frame, LinkFrame, LinkOpen};
use crate::link::heartbeat::{HeartbeatAction, LinkHeartbeat};
use crate::link::record::{encode_confirm, Batch};
use crate::node::config::NodeConfig;
use crate::node::output::{NodeControl, NodeOutput, Outputs};

/// A backup shard's link to the primary. See the module doc.
#[derive(Debug)]
pub(crate) struct BackupSession {
    /// Which address to dial and when.
    link: BackupLink,
    /// The stream of batches: epochs, sequence numbers, confirms.
    replica: BackupStream,
    /// A `Dial` is out, unanswered.
    dialing: bool,
    /// The connection, once dialled.
    connection: Option<Connection>,
    /// `stop` was called: the broker is no longer a backup.
    stopped: bool,
    /// Shard 0: the lease requests on accepted links and the last one granted (`backup::ready_lease`).
    lease: Option<LeaseRequests>,
}

/// The dialled connection.
#[derive(Debug)]
struct Connection {
    /// Its id.
    conn: ConnId,
    /// The address dialled.
    address: String,
    /// Where the handshake is.
    handshake: Handshake,
    /// Until when the peer may take to answer the handshake.
    handshake_deadline: Instant,
    /// Heartbeats, once accepted.
    heartbeat: Option<LinkHeartbeat>,
    /// Whether the `link-open` carried the shard's holdings (else the catch-up is a full resync).
    holdings_sent: bool,
    /// When the `link-open` went out: `link-accepted` grants it as a lease request.
    open_sent: Option<Instant>,
    /// The primary's epoch, once accepted.
    primary_epoch: Option<Epoch>,
}

/// Where a link is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Waiting for the primary's `hello`.
    Hello,
    /// `link-open` sent, waiting for `link-accepted`.
    Accepted,
    /// Replicating.
    Open,
}

/// How a link ended.
enum LinkEnd {
    /// The peer answered `error` before accepting (another backup: `NotPrimary`).
    Refused(String),
    /// Never accepted: the handshake failed or took too long.
    Failed(String),
    /// Accepted, then lost.
    Lost(String),
}

impl BackupSession {
    /// A session that may dial at `now`, for a broker whose shard has seen `shard`'s epoch.
    pub(crate) fn new(now: Instant, config: &NodeConfig, shard: &Shard) -> BackupSession {
        BackupSession {
            link: BackupLink::new(now, config.peer_addresses.clone(), config.maintenance_interval),
            replica: BackupStream::new(shard.ha().epoch()),
            dialing: false,
            connection: None,
            stopped: false,
            lease: (shard.id().0 == 0).then(|| LeaseRequests::new(config.backup_timeout)),
        }
    }

    /// Shard 0: when the newest `lease-request` the primary answered was sent, if any was.
    pub(crate) fn lease_granted(&self) -> Option<Instant> {
        self.lease.as_ref().and_then(LeaseRequests::granted)
    }

    /// Ends the link, if one is accepted, as lost for `reason`; the session dials again in its
    /// time. A link still in its handshake goes on.
    pub(crate) fn drop_accepted_link(&mut self, reason: String, now: Instant, outputs: &mut Outputs) {
        if let Some(connection) = self.connection.as_ref().filter(|c| c.heartbeat.is_some()) {
            outputs.push(NodeOutput::Shutdown { conn: connection.conn });
            self.end(LinkEnd::Lost(reason), now, outputs);
        }
    }

    /// Whether `conn` is this session's link.
    pub(crate) fn owns(&self, conn: ConnId) -> bool {
        self.connection.as_ref().is_some_and(|c| c.conn == conn)
    }

    /// Asks for a dial when one is due.
    pub(crate) fn poll_dial(&mut self, now: Instant, outputs: &mut Outputs) {
        if self.stopped || self.dialing || self.connection.is_some() {
            return;
        }
        let Some(address) = self.link.poll_connect(now).map(str::to_owned) else { return };
        if let LinkStatus::Trying { attempts, .. } = self.link.status() {
            if attempts.is_power_of_two() {
                tracing::info!("link: trying {address} ({attempts} attempts)");
            } else {
                tracing::debug!("link: trying {address} ({attempts} attempts)");
            }
        }
        self.dialing = true;
        outputs.push(NodeOutput::Dial { address });
    }

    /// The dial connected as `conn`: sends the preamble.
    pub(crate) fn handle_dialed(&mut self, conn: ConnId, now: Instant, config: &NodeConfig, outputs: &mut Outputs) {
        let LinkStatus::Trying { address, .. } = self.link.status() else {
            // Stopped meanwhile: the broker is no longer a backup.
            outputs.push(NodeOutput::Shutdown { conn });
            return;
        };
        if !std::mem::replace(&mut self.dialing, false) {
            // A dial of an earlier session of this shard.
            outputs.push(NodeOutput::Shutdown { conn });
            return;
        }
        let mut preamble = BytesMut::new();
        codec::encode_preamble(Preamble { version: LINK_VERSION, flags: PREAMBLE_FLAG_BACKUP }, &mut preamble);
        outputs.write(conn, preamble);
        self.connection = Some(Connection {
            conn,
            address,
            handshake: Handshake::Hello,
            handshake_deadline: now + config.heartbeat_interval * LINK_SILENT_INTERVALS_MAX,
            heartbeat: None,
            holdings_sent: false,
            open_sent: None,
            primary_epoch: None,
        });
    }

    /// The dial failed.
    pub(crate) fn handle_dial_failed(&mut self, now: Instant) {
        if self.dialing {
            self.dialing = false;
            let counters = self.link.counters();
            tracing::debug!(?counters, "link: {} failed: no connection", self.link.status());
            self.link.handle_closed(now);
        }
    }

    /// The link's connection ended (the shell saw it close).
    pub(crate) fn handle_closed(&mut self, now: Instant, outputs: &mut Outputs) {
        let Some(connection) = &self.connection else { return };
        let end = ended(Some(connection), "closed by the peer".into());
        self.end(end, now, outputs);
    }

    /// Bytes arrived on the link.
    pub(crate) fn handle_read(
        &mut self,
        buf: &mut BytesMut,
        now: Instant,
        config: &NodeConfig,
        shard: &mut Shard,
        ready_members: &mut Vec<String>,
        outputs: &mut Outputs,
    ) {
        let Some(connection) = self.connection.as_mut() else { return };
        let conn = connection.conn;
        if let Some(heartbeat) = connection.heartbeat.as_mut() {
            heartbeat.handle_received(now);
        }
        let mut end = None;
        loop {
            let frame = match decode_link_frame(buf, BATCH_BYTES_MAX) {
                Ok(None) => break,
                Ok(Some(frame)) => frame,
                Err(error) => {
                    end = Some(ended(self.connection.as_ref(), format!("undecodable frame: {error}")));
                    break;
                }
            };
            let Some(connection) = self.connection.as_mut() else { break };
            match (connection.handshake, frame) {
                (Handshake::Hello, LinkFrame::Native(Frame::Hello { version, .. })) if version != LINK_VERSION => {
                    // A broker that accepted another link version would send records this one
                    // misreads.
                    let reason =
                        format!("hello of replication link version {version}; this broker speaks {LINK_VERSION}");
                    end = Some(LinkEnd::Refused(reason));
                    break;
                }
                (Handshake::Hello, LinkFrame::Native(Frame::Hello { .. })) => {
                    connection.holdings_sent = send_link_open(conn, config, shard, &self.replica, outputs);
                    connection.open_sent = Some(now);
                    connection.handshake = Handshake::Accepted;
                }
                (Handshake::Accepted, LinkFrame::Accepted(accepted)) => {
                    self.link.handle_connected(now);
                    self.replica.handle_connected();
                    self.replica.handle_epoch_observed(accepted.epoch);
                    if shard.id().0 == 0 {
                        // A later promotion of this broker takes an epoch above the primary's.
                        shard.observe_epoch(accepted.epoch);
                    }
                    connection.primary_epoch = Some(accepted.epoch);
                    begin_catch_up(shard, connection.holdings_sent);
                    shard.handle_primary_followed(&connection.address);
                    tracing::info!(counters = ?self.link.counters(), epoch = %accepted.epoch, "link: connected to {}", connection.address);
                    connection.heartbeat = Some(LinkHeartbeat::new(now, config.heartbeat_interval));
                    connection.handshake = Handshake::Open;
                    if let (Some(lease), Some(open_sent)) = (self.lease.as_mut(), connection.open_sent) {
                        lease.handle_accepted(open_sent, now);
                    }
                }
                (Handshake::Open, LinkFrame::Batch(batch)) => {
                    if let Err(ignored) = apply_batch(shard, &mut self.replica, batch) {
                        end = Some(LinkEnd::Lost(ignored.to_string()));
                        break;
                    }
                }
                (Handshake::Open, LinkFrame::MarkedReady) => {
                    transition(shard, BrokerState::Ready, TransitionCause::MarkedReadyByPrimary);
                }
                (Handshake::Open, LinkFrame::Members { version, ready }) => {
                    // The primary's ready backups: expected by this broker if it is promoted.
                    for other in 1..config.shard_count {
                        let control = NodeControl::Members { ready: ready.clone() };
                        outputs.push(NodeOutput::Control { shard: other, control });
                    }
                    let epoch = connection.primary_epoch.expect("an open link was accepted");
                    shard.set_ready_set(ReadySet { epoch: epoch.0, version, members: ready.clone() });
                    if shard.ha().acknowledges_ready_sets_of(epoch) {
                        outputs.write_link_frame(conn, &LinkFrame::MembersHeld(version));
                    } else {
                        tracing::info!(
                            version,
                            "a promotion check fenced this broker: not acknowledging the ready set"
                        );
                    }
                    let expected = ready.iter().filter(|name| **name != config.own_address).count();
                    shard.set_expected_backups(expected);
                    *ready_members = ready;
                }
                (Handshake::Open, LinkFrame::Native(Frame::Heartbeat)) => {}
                (Handshake::Open, LinkFrame::LeaseGrant(token)) => {
                    if let Some(lease) = self.lease.as_mut() {
                        lease.handle_grant(token);
                    }
                }
                (handshake, LinkFrame::Native(Frame::Error { code, message })) => {
                    end = Some(match handshake {
                        Handshake::Open => LinkEnd::Lost(format!("error {code:?}: {message}")),
                        _ => LinkEnd::Refused(format!("{code:?}: {message}")),
                    });
                    break;
                }
                (_, other) => {
                    end = Some(ended(Some(connection), format!("unexpected {} on a backup link", other.name())));
                    break;
                }
            }
        }
        self.send_lease_requests(now, outputs);
        if let Some(confirmed) = self.replica.poll_confirm() {
            let mut bytes = BytesMut::new();
            encode_confirm(confirmed, &mut bytes);
            if let Some(heartbeat) = self.connection.as_mut().and_then(|c| c.heartbeat.as_mut()) {
                heartbeat.handle_sent(now);
            }
            outputs.write(conn, bytes);
        }
        if let Some(end) = end {
            buf.clear();
            self.end(end, now, outputs);
        }
    }

    /// Heartbeats, the handshake's deadline and the dial pacing, at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant, outputs: &mut Outputs) {
        if let Some(connection) = self.connection.as_mut() {
            match connection.heartbeat.as_mut() {
                None if now >= connection.handshake_deadline => {
                    let reason = match connection.handshake {
                        Handshake::Hello => "no hello within 2x link-heartbeat-interval",
                        _ => "no link-accepted within 2x link-heartbeat-interval",
                    };
                    self.end(LinkEnd::Failed(reason.into()), now, outputs);
                }
                None => {}
                Some(heartbeat) => match heartbeat.handle_timeout(now) {
                    None => {}
                    Some(HeartbeatAction::SendHeartbeat) => outputs.write_frame(connection.conn, &Frame::Heartbeat),
                    Some(HeartbeatAction::ClosePeerSilent { silent_for }) => {
                        let link = &connection.address;
                        tracing::warn!(%link, ?silent_for, "link peer silent for 2x link-heartbeat-interval; closing");
                        let reason = format!("nothing received for {silent_for:?} (2x link-heartbeat-interval)");
                        outputs.push(NodeOutput::Shutdown { conn: connection.conn });
                        self.end(LinkEnd::Lost(reason), now, outputs);
                    }
                },
            }
        }
        self.send_lease_requests(now, outputs);
        self.poll_dial(now, outputs);
    }

    /// Shard 0, on an accepted link: sends the lease requests due.
    fn send_lease_requests(&mut self, now: Instant, outputs: &mut Outputs) {
        let (Some(lease), Some(connection)) = (self.lease.as_mut(), self.connection.as_ref()) else { return };
        if connection.heartbeat.is_none() {
            return;
        }
        while let Some(token) = lease.poll_request(now) {
            outputs.write_link_frame(connection.conn, &LinkFrame::LeaseRequest(token));
        }
    }

    /// The next instant `handle_timeout` has work.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.connection {
            Some(connection) => Some(match &connection.heartbeat {
                Some(heartbeat) => {
                    let lease = self.lease.as_ref().and_then(LeaseRequests::poll_timeout);
                    lease.map_or(heartbeat.poll_timeout(), |due| due.min(heartbeat.poll_timeout()))
                }
                None => connection.handshake_deadline,
            }),
            None if self.stopped || self.dialing => None,
            None => self.link.poll_timeout(),
        }
    }

    /// The broker is no longer a backup: closes the link, dials no more.
    pub(crate) fn stop(&mut self, outputs: &mut Outputs) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.link.handle_stop();
        if let Some(connection) = self.connection.take() {
            outputs.push(NodeOutput::Shutdown { conn: connection.conn });
        }
        tracing::info!("link: stopped: this broker is no longer a backup");
    }

    /// Ends the link: closes its connection and tells the dial pacing.
    fn end(&mut self, end: LinkEnd, now: Instant, outputs: &mut Outputs) {
        let Some(connection) = self.connection.take() else { return };
        if let Some(lease) = self.lease.as_mut() {
            lease.handle_link_ended();
        }
        outputs.push(NodeOutput::Close { conn: connection.conn });
        let counters = self.link.counters();
        let address = connection.address;
        match end {
            LinkEnd::Refused(message) => {
                self.link.handle_refused(now);
                tracing::debug!(?counters, "link: {address} refused: {message}");
            }
            LinkEnd::Failed(reason) => {
                self.link.handle_closed(now);
                tracing::debug!(?counters, "link: {address} failed: {reason}");
            }
            LinkEnd::Lost(reason) => {
                self.link.handle_closed(now);
                tracing::warn!(?counters, replica = ?self.replica.counters(), "link: lost {address}: {reason}");
            }
        }
    }
}

/// How a link ends for `reason`, by how far it got: lost once accepted, else failed.
fn ended(connection: Option<&Connection>, reason: String) -> LinkEnd {
    match connection.and_then(|c| c.heartbeat.as_ref()) {
        Some(_) => LinkEnd::Lost(reason),
        None => LinkEnd::Failed(reason),
    }
}

/// Asks the primary for this shard's stream, with what the shard holds of its queues (nothing
/// changes them until the link is accepted: only this link feeds them). Returns whether the
/// holdings were sent (false: they exceed the bounds, and the catch-up is a full resync).
fn send_link_open(
    conn: ConnId,
    config: &NodeConfig,
    shard: &Shard,
    replica: &BackupStream,
    outputs: &mut Outputs,
) -> bool {
    let holdings = shard.replica_holdings(HOLDINGS_QUEUES_MAX, HOLDINGS_RANGES_MAX);
    if holdings.is_none() {
        tracing::info!(
            "link: holdings exceed {HOLDINGS_QUEUES_MAX} queues or {HOLDINGS_RANGES_MAX} ranges: asking for a full resync"
        );
    }
    let sent = holdings.is_some();
    let open = LinkOpen {
        backup: config.own_address.clone(),
        shard: shard.id().0,
        shard_count: config.shard_count,
        epoch_highest: replica.epoch_highest().max(shard.ha().epoch()),
        holdings,
    };
    outputs.write_link_frame(conn, &LinkFrame::Open(open));
    sent
}

/// The primary accepted this shard's link. With holdings sent, the shard keeps its messages (the
/// primary sends the difference) and shard 0 only clears the replicated configuration its
/// snapshot re-creates; without, what this shard held of its queues is dropped, since the primary
/// sends everything it holds first. Shard 0 moves the broker to catch-up.
fn begin_catch_up(shard: &mut Shard, holdings_sent: bool) {
    if holdings_sent {
        shard.clear_replica_configuration();
    } else {
        let dropped = shard.clear_replicas();
        if dropped > 0 {
            tracing::info!(dropped, "link: replicated messages dropped before the primary's resync");
        }
    }
    match shard.ha().state() {
        BrokerState::Joining => transition(shard, BrokerState::CatchUp, TransitionCause::PrimaryContacted),
        BrokerState::Ready => transition(shard, BrokerState::CatchUp, TransitionCause::ReconnectedBehindPrimary),
        _ => {}
    }
}

/// Applies one batch from the primary to the shard's queues; a duplicate is ignored.
///
/// # Errors
///
/// The batch's `Ignored` when it cannot be followed (a gap: a batch went missing; or a primary of
/// an older epoch): the link ends.
fn apply_batch(shard: &mut Shard, replica: &mut BackupStream, batch: Batch) -> Result<(), Ignored> {
    match replica.handle_batch(batch) {
        Ok(applied) => {
            for record in applied.records {
                shard.apply_replica(record);
            }
            Ok(())
        }
        Err(ignored) => match ignored.reason {
            IgnoreReason::Duplicate { .. } => Ok(()),
            IgnoreReason::StaleEpoch(_) | IgnoreReason::Gap { .. } => Err(ignored),
        },
    }
}

/// Shard 0 takes an HA transition the link decided; other shards learn it from shard 0.
fn transition(shard: &mut Shard, to: BrokerState, cause: TransitionCause) {
    if shard.id().0 != 0 {
        return;
    }
    if let Err(error) = shard.handle_ha_transition(to, cause) {
        tracing::debug!(%error, "link: HA transition not taken");
    }
}
