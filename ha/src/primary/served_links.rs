//! The primary's end of backups' replication links, on one shard: the `ShardNode`'s side of
//! `PrimaryReplication`.
//!
//! A backup opens one link per shard (`backup::session`). Any shard of the primary may accept it
//! (the port is shared), so after the preamble and `hello` the accepting shard reads the backup's
//! `link-open`, which names the shard it wants, and hands the connection over
//! (`NodeOutput::HandOver`) unless it is that shard. The serving shard then:
//! - checks the request (same shard count, this broker a primary, the backup's epoch not newer)
//!   and answers `link-accepted` or an `error`; a newer epoch makes shard 0 step down;
//! - opens a replication stream whose catch-up is the shard's snapshot of its replicated queues
//!   (only the difference from the holdings the `link-open` carried), taken in the same step, so
//!   every later change follows it on the stream;
//! - reads confirms, heartbeats and lease requests (answered at once, `backup::ready_lease`) until the
//!   link ends, then drops the stream, and tells shard 0 (`NodeControl::LinkLost`). The confirms
//!   the stream held are released, or, when its backup may be ready on its account (the catch-up
//!   was confirmed), kept for that backup until shard 0 says otherwise (`primary::replication`,
//!   "Detached backups").
//!
//! A link ends when the backup closes it, when it breaks the protocol, when its stream overflows,
//! when nothing came from the backup for `LINK_SILENT_INTERVALS_MAX` heartbeat intervals, or when
//! the stream's oldest batch stayed unconfirmed for `LINK_UNCONFIRMED_INTERVALS_MAX` intervals
//! (`primary::stream`, "Confirm timeout": a lost batch that heartbeats cannot reveal). Each way
//! has a log line and a counter (`LinkLossCounters`); all of them end the link alike.
//!
//! Invariants:
//! - A stream exists exactly while its link is served: opened before the first batch, dropped
//!   (holds released or kept) when the link ends for any reason.
//! - Changes the shard made before a stream opened go to the streams open before it, never to it.
//! - After every pump, and at its deadline, each stream's confirm timeout has been checked at
//!   `now`, so a wait is timed from the input that began it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq_core::broker_state::BrokerState;
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{ErrorCode, Frame};
use ringmq_core::ids::ConnId;

use crate::limits::{BATCH_BYTES_MAX, LINK_SILENT_INTERVALS_MAX, LINK_UNCONFIRMED_INTERVALS_MAX};
use crate::link::frame::{decode_link_frame, LinkAccepted, LinkDecodeError, LinkFrame, LinkOpen};
use crate::link::heartbeat::{HeartbeatAction, LinkHeartbeat};
use crate::link::record::encode_batch;
use crate::link::LinkId;
use crate::node::core::NodeCore;
use crate::node::output::{NodeControl, NodeOutput};

/// The backup links of one shard, by connection (ordered, so that outputs come in one order).
#[derive(Debug, Default)]
pub(crate) struct ServedLinks {
    /// Admitted links waiting for their `link-open`, with the deadline for it.
    awaiting: BTreeMap<ConnId, Instant>,
    /// Links served here.
    served: BTreeMap<ConnId, Served>,
    /// Scratch for `send_batches`: the links to write batches to.
    batch_links: Vec<LinkId>,
    /// Served links that ended, by why.
    lost: LinkLossCounters,
}

/// Served backup links of one shard that ended, by why; every end of a served link is counted
/// in exactly one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkLossCounters {
    /// Closed by the backup (or the network).
    pub closed: u64,
    /// The backup broke the link protocol: a bad confirm, an unexpected or undecodable frame.
    pub protocol_error: u64,
    /// Nothing came from the backup for `LINK_SILENT_INTERVALS_MAX` heartbeat intervals.
    pub silent: u64,
    /// The oldest batch stayed unconfirmed for `LINK_UNCONFIRMED_INTERVALS_MAX` heartbeat
    /// intervals while the backup was not silent.
    pub unconfirmed: u64,
    /// The stream overflowed: the backup could not keep up.
    pub overflowed: u64,
    /// Ended by this primary because another link of the same ready backup was lost
    /// (`primary::role`), so that the backup leaves `ready` in time.
    pub another_link_lost: u64,
}

/// Why the primary refuses a backup's link (answered with an `error` frame, then closed). Each
/// message names what was allowed and what came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinkRefused {
    /// The first frame after `hello` was not `link-open`.
    #[error("a backup link must begin with link-open; got {got}")]
    NotLinkOpen {
        /// The frame that came.
        got: &'static str,
    },
    /// The first frame after `hello` could not be decoded.
    #[error("{0}")]
    Undecodable(LinkDecodeError),
    /// No `link-open` came in time.
    #[error("no link-open within 2x link-heartbeat-interval of hello")]
    NoLinkOpen,
    /// The `link-open` names a shard this broker does not have.
    #[error(
        "backup shard {shard} does not exist here: this primary has {shard_count} shards, and every member of a \
         cluster must have the same number"
    )]
    NoSuchShard {
        /// The shard asked for.
        shard: u16,
        /// The shards of this broker.
        shard_count: u16,
    },
    /// The backup has another number of shards.
    #[error(
        "the backup has {backup} shards and this primary {primary}: every member of a cluster must have the \
         same number of shards"
    )]
    ShardCountMismatch {
        /// The backup's shard count.
        backup: u16,
        /// This broker's.
        primary: u16,
    },
    /// This broker is not a primary (any more).
    #[error("this broker is {}, not a primary", .state.name())]
    NotPrimary {
        /// Its state.
        state: BrokerState,
    },
    /// The backup has seen a newer epoch than this primary's: a newer primary exists.
    #[error("this primary's epoch {primary} is older than epoch {backup} the backup has seen: a newer primary exists")]
    NewerEpochSeen {
        /// This primary's epoch.
        primary: Epoch,
        /// The highest the backup has seen.
        backup: Epoch,
    },
}

impl LinkRefused {
    /// The code of the `error` frame that answers it.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            LinkRefused::NotLinkOpen { .. } => ErrorCode::UnexpectedFrame,
            LinkRefused::Undecodable(error) => error.code(),
            LinkRefused::NoLinkOpen => ErrorCode::Malformed,
            LinkRefused::NoSuchShard { .. } | LinkRefused::ShardCountMismatch { .. } => ErrorCode::PreconditionFailed,
            LinkRefused::NotPrimary { .. } | LinkRefused::NewerEpochSeen { .. } => ErrorCode::NotPrimary,
        }
    }
}

/// One served link.
#[derive(Debug)]
struct Served {
    /// The backup's name (its address).
    backup: String,
    /// Heartbeats.
    heartbeat: LinkHeartbeat,
}

impl ServedLinks {
    /// Whether `conn` is a backup link here, served or awaiting its `link-open`.
    pub(crate) fn knows(&self, conn: ConnId) -> bool {
        self.awaiting.contains_key(&conn) || self.served.contains_key(&conn)
    }

    /// The next instant a heartbeat or a deadline is due: a link's `link-open`, heartbeat or
    /// confirm timeout.
    pub(crate) fn poll_timeout(&self, core: &NodeCore) -> Option<Instant> {
        let awaiting = self.awaiting.values().copied();
        let confirms = core.replication.as_ref().and_then(|r| r.confirm_deadline(confirm_timeout(core)));
        awaiting.chain(self.served.values().map(|s| s.heartbeat.poll_timeout())).chain(confirms).min()
    }

    /// Served links that ended, by why.
    pub(crate) fn loss_counters(&self) -> LinkLossCounters {
        self.lost
    }

    /// The core admitted `conn` as a backup link: its `link-open` is due within the heartbeat
    /// bound.
    pub(crate) fn handle_admitted(&mut self, conn: ConnId, now: Instant, core: &NodeCore) {
        let deadline = now + core.config.heartbeat_interval * LINK_SILENT_INTERVALS_MAX;
        self.awaiting.insert(conn, deadline);
    }

    /// Bytes arrived on a backup link of this shard.
    pub(crate) fn handle_read(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant, core: &mut NodeCore) {
        if self.awaiting.contains_key(&conn) {
            self.read_link_open(conn, buf, now, core);
            return;
        }
        let Some(served) = self.served.get_mut(&conn) else { return };
        served.heartbeat.handle_received(now);
        let link = LinkId(conn);
        loop {
            let reason = match decode_link_frame(buf, BATCH_BYTES_MAX) {
                Ok(None) => return,
                Ok(Some(LinkFrame::Confirm(seq))) => {
                    match core.replication.as_mut().map(|r| r.handle_confirm(link, seq)) {
                        Some(Err(error)) => format!("bad confirm: {error}"),
                        _ => continue,
                    }
                }
                Ok(Some(LinkFrame::Native(Frame::Heartbeat))) => continue,
                Ok(Some(LinkFrame::MembersHeld(version))) if core.shard.id().0 == 0 => {
                    let backup = served.backup.clone();
                    core.send_control(0, NodeControl::MembersHeld { backup, conn, version });
                    continue;
                }
                Ok(Some(LinkFrame::LeaseRequest(token))) => {
                    // Served, so the backup's ready lease may run from the request's sending.
                    core.outputs.write_link_frame(conn, &LinkFrame::LeaseGrant(token));
                    continue;
                }
                Ok(Some(other)) => format!("unexpected {} from a backup", other.name()),
                Err(error) => format!("undecodable frame: {error}"),
            };
            buf.clear();
            core.outputs.push(NodeOutput::Close { conn });
            self.lost.protocol_error += 1;
            self.end_link(conn, &reason, core);
            return;
        }
    }

    /// Reads an admitted link's `link-open`, then serves it here or hands it over.
    fn read_link_open(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant, core: &mut NodeCore) {
        let open = match decode_link_frame(buf, BATCH_BYTES_MAX) {
            Ok(None) => return,
            Ok(Some(LinkFrame::Open(open))) => open,
            Ok(Some(other)) => {
                return self.refuse_link(conn, buf, LinkRefused::NotLinkOpen { got: other.name() }, core);
            }
            Err(error) => return self.refuse_link(conn, buf, LinkRefused::Undecodable(error), core),
        };
        self.awaiting.remove(&conn);
        let own = core.shard.id().0;
        let shard_count = core.config.shard_count;
        if open.shard == own {
            self.serve(conn, open, buf.split(), now, core);
        } else if open.shard >= shard_count {
            self.refuse_link(conn, buf, LinkRefused::NoSuchShard { shard: open.shard, shard_count }, core);
        } else {
            let shard = open.shard;
            core.outputs.push(NodeOutput::HandOver { conn, shard, open, pending: buf.split() });
        }
    }

    /// Answers `error` on an admitted link and forgets it.
    fn refuse_link(&mut self, conn: ConnId, buf: &mut BytesMut, error: LinkRefused, core: &mut NodeCore) {
        buf.clear();
        self.awaiting.remove(&conn);
        core.outputs.refuse(conn, error.code(), error.to_string());
    }

    /// Serves the link `conn` that asked for this shard with `open`; `pending` are bytes read
    /// after it.
    pub(crate) fn serve(
        &mut self,
        conn: ConnId,
        open: LinkOpen,
        mut pending: BytesMut,
        now: Instant,
        core: &mut NodeCore,
    ) {
        if let Err(error) = open_stream(conn, &open, core) {
            tracing::warn!(backup = %open.backup, shard = open.shard, "backup link refused: {error}");
            if open.epoch_highest > core.shard.ha().epoch() && error.code() == ErrorCode::NotPrimary {
                core.send_control(0, NodeControl::Superseded { epoch: open.epoch_highest });
            }
            return core.outputs.refuse(conn, error.code(), error.to_string());
        }
        tracing::info!(backup = %open.backup, shard = open.shard, "backup link accepted");
        let heartbeat = LinkHeartbeat::new(now, core.config.heartbeat_interval);
        self.served.insert(conn, Served { backup: open.backup, heartbeat });
        if !pending.is_empty() {
            self.handle_read(conn, &mut pending, now, core);
        }
    }

    /// The connection `conn` closed (the backup closed it, or the network): a served link ends.
    pub(crate) fn handle_closed(&mut self, conn: ConnId, core: &mut NodeCore) {
        if self.awaiting.remove(&conn).is_some() {
            return;
        }
        if self.served.contains_key(&conn) {
            self.lost.closed += 1;
            self.end_link(conn, "closed by the backup", core);
        }
    }

    /// The primary ended the served link `conn` (the caller shut it down) because another link of
    /// its ready backup was lost (`primary::role`).
    pub(crate) fn handle_another_link_lost(&mut self, conn: ConnId, core: &mut NodeCore) {
        if self.served.contains_key(&conn) {
            self.lost.another_link_lost += 1;
            self.end_link(conn, "another link of this backup was lost", core);
        }
    }

    /// A served link ended for `reason`: its stream is dropped, its holds released or kept for its
    /// backup, and shard 0 learns it. The caller closed the connection, or saw it close, and
    /// counted why.
    fn end_link(&mut self, conn: ConnId, reason: &str, core: &mut NodeCore) {
        let Some(served) = self.served.remove(&conn) else { return };
        // Changes made before the loss still go to this stream, so their holds come back with it.
        core.settle();
        let kept =
            core.replication.is_some() && core.change_holders(|replication| replication.handle_link_lost(LinkId(conn)));
        let shard = core.shard.id().0;
        tracing::warn!(backup = %served.backup, shard, kept, "backup link lost: {reason}");
        core.send_control(0, NodeControl::LinkLost { backup: served.backup, shard, conn, kept });
    }

    /// Queues every batch the streams have ready for their links, reports caught-up backups to
    /// shard 0, and closes links whose stream overflowed.
    pub(crate) fn send_batches(&mut self, now: Instant, core: &mut NodeCore) {
        let Some(replication) = core.replication.as_mut() else { return };
        // Kept between pumps: this runs after every input of a primary.
        self.batch_links.clear();
        self.batch_links.extend(replication.links());
        for &link in &self.batch_links {
            let LinkId(conn) = link;
            let mut bytes = BytesMut::new();
            while let Some(batch) = replication.poll_batch(link, BATCH_BYTES_MAX as usize) {
                // One allocation per batch: growing the buffer while encoding copied it again and again.
                bytes.reserve(batch.encoded_len());
                encode_batch(&batch, &mut bytes);
            }
            if !bytes.is_empty() {
                // Something was sent: the heartbeat need not be.
                if let Some(served) = self.served.get_mut(&conn) {
                    served.heartbeat.handle_sent(now);
                }
                core.outputs.write(conn, bytes);
            }
        }
        let mut caught_up = Vec::new();
        while let Some((link, backup)) = replication.poll_caught_up() {
            caught_up.push((backup, link.0));
        }
        let mut overflowed = Vec::new();
        while let Some(link) = replication.poll_overflowed() {
            overflowed.push(link.0);
        }
        let shard = core.shard.id().0;
        for (backup, conn) in caught_up {
            core.send_control(0, NodeControl::CaughtUp { backup, shard, conn });
        }
        for conn in overflowed {
            tracing::warn!(conn = conn.0, "a backup fell too far behind its replication stream; dropping its link");
            core.outputs.push(NodeOutput::Shutdown { conn });
            self.lost.overflowed += 1;
            self.end_link(conn, "its replication stream overflowed", core);
        }
        self.check_confirms(now, core);
    }

    /// The streams' confirm timeouts at `now` (`primary::stream`, "Confirm timeout"): a link whose
    /// oldest batch has stayed unconfirmed for `LINK_UNCONFIRMED_INTERVALS_MAX` heartbeat
    /// intervals is closed as lost, as a silent one is.
    fn check_confirms(&mut self, now: Instant, core: &mut NodeCore) {
        let timeout = confirm_timeout(core);
        let Some(replication) = core.replication.as_mut() else { return };
        for (LinkId(conn), overdue) in replication.handle_timeout(now, timeout) {
            let backup = self.served.get(&conn).map_or("?", |served| served.backup.as_str());
            tracing::warn!(
                %backup,
                conn = conn.0,
                "backup link unconfirmed for 2x link-heartbeat-interval; closing: {overdue}"
            );
            core.outputs.push(NodeOutput::Shutdown { conn });
            self.lost.unconfirmed += 1;
            self.end_link(conn, &format!("unconfirmed: {overdue}"), core);
        }
    }

    /// Heartbeats of the served links and the deadlines of those awaiting `link-open`, at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant, core: &mut NodeCore) {
        let late: Vec<ConnId> =
            self.awaiting.iter().filter(|(_, deadline)| **deadline <= now).map(|(conn, _)| *conn).collect();
        for conn in late {
            self.awaiting.remove(&conn);
            let error = LinkRefused::NoLinkOpen;
            core.outputs.refuse(conn, error.code(), error.to_string());
        }
        let mut silent = Vec::new();
        for (conn, served) in &mut self.served {
            match served.heartbeat.handle_timeout(now) {
                None => {}
                Some(HeartbeatAction::SendHeartbeat) => core.outputs.write_frame(*conn, &Frame::Heartbeat),
                Some(HeartbeatAction::ClosePeerSilent { silent_for }) => silent.push((*conn, silent_for)),
            }
        }
        for (conn, silent_for) in silent {
            tracing::warn!(conn = conn.0, ?silent_for, "link peer silent for 2x link-heartbeat-interval; closing");
            core.outputs.push(NodeOutput::Shutdown { conn });
            let reason = format!("nothing received for {silent_for:?} (2x link-heartbeat-interval)");
            self.lost.silent += 1;
            self.end_link(conn, &reason, core);
        }
        self.check_confirms(now, core);
    }

    /// The broker stepped down: every served link ends (its stream is already gone).
    pub(crate) fn drop_all(&mut self, core: &mut NodeCore) {
        for conn in std::mem::take(&mut self.served).into_keys() {
            core.outputs.push(NodeOutput::Shutdown { conn });
        }
    }
}

/// How long a stream's oldest batch may stay unconfirmed (`LINK_UNCONFIRMED_INTERVALS_MAX`).
fn confirm_timeout(core: &NodeCore) -> Duration {
    core.config.heartbeat_interval * LINK_UNCONFIRMED_INTERVALS_MAX
}

/// Checks a `link-open` and, if it is acceptable, opens its stream with the shard's snapshot
/// as backlog and queues `link-accepted`, in one step, so no change to the queues falls
/// between the snapshot and the stream.
fn open_stream(conn: ConnId, open: &LinkOpen, core: &mut NodeCore) -> Result<(), LinkRefused> {
    let shard_count = core.config.shard_count;
    if open.shard_count != shard_count {
        return Err(LinkRefused::ShardCountMismatch { backup: open.shard_count, primary: shard_count });
    }
    let state = core.shard.ha().state();
    if !state.is_primary() {
        return Err(LinkRefused::NotPrimary { state });
    }
    let epoch = core.shard.ha().epoch();
    if open.epoch_highest > epoch {
        return Err(LinkRefused::NewerEpochSeen { primary: epoch, backup: open.epoch_highest });
    }
    // Changes made before the snapshot go to the streams already open, not to the new one.
    core.settle();
    let mut snapshot = Vec::new();
    let diff = core.shard.replication_snapshot_for(open.holdings.as_deref(), &mut snapshot);
    match open.holdings {
        Some(_) => tracing::info!(
            backup = %open.backup,
            shard = open.shard,
            "catch-up: {} messages sent, {} dequeued, {} already held, {} queues deleted",
            diff.sent,
            diff.dequeued,
            diff.held,
            diff.queues_deleted
        ),
        None => {
            tracing::info!(backup = %open.backup, shard = open.shard, "catch-up: full resync of {} messages", diff.sent)
        }
    }
    core.change_holders(|replication| replication.handle_link_opened(LinkId(conn), &open.backup, snapshot));
    core.send_control(0, NodeControl::LinkOpened { backup: open.backup.clone(), shard: open.shard, conn });
    core.outputs.write_link_frame(conn, &LinkFrame::Accepted(LinkAccepted { epoch, shard_count }));
    Ok(())
}
