//! Fencing a superseded primary: while this broker is a primary of a cluster, shard 0 asks every
//! other broker of `ha-brokers-url`, once per `link-maintenance-interval`, for its HA state and
//! epoch (an admin `ha-status`). When one of them is a primary of a newer epoch, this broker steps
//! down (`superseded-by-newer-epoch`): it closes its client connections, becomes a joining backup
//! and links to the newer primary, which resynchronises it.
//!
//! This covers a primary that was paused (SIGSTOP, a long GC-like stall, a partition) while the
//! cluster manager promoted another broker, and that then comes back still believing it is the
//! primary. The reference relied on the cluster manager alone for this. A backup link that
//! carries a newer epoch than ours (`link_server`) makes us step down at once, without waiting for
//! the next probe.
//!
//! The window this leaves: between the resumption of a superseded primary and its next probe (at
//! most one maintenance interval plus the probe's round trip), it may still confirm publishes that
//! no backup holds, since its backups left it. Clients that fail over re-send what was not
//! confirmed by the new primary; what the old one confirmed in that window is lost with it.
//!
//! Invariants:
//! - Only a primary state (`recovering`, `active`) steps down, and only for a peer that reports
//!   a primary state with a strictly newer epoch.
//! - A peer that does not answer within the interval is skipped: silence never demotes.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use ringmq_core::broker_state::{BrokerState, TransitionCause};
use ringmq_core::codec;
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{Frame, Preamble, PREAMBLE_FLAG_ADMIN, PROTOCOL_VERSION};
use ringmq_core::ids::RequestId;
use ringmq_core::limits::FRAME_BYTES_MAX;

use crate::shard_loop::{ensure_backup_links, pump, ShardContext};

/// Shard 0 of a cluster broker: probes the peers while this broker is a primary.
pub(crate) async fn epoch_watch_task(context: Rc<ShardContext>) {
    let interval = context.link.maintenance_interval;
    loop {
        compio::runtime::time::sleep(interval).await;
        let (state, ours) = {
            let shard = context.shard.borrow();
            (shard.ha().state(), shard.ha().epoch())
        };
        if !matches!(state, BrokerState::Recovering | BrokerState::Active) {
            continue;
        }
        for address in context.link.primary_addresses.clone() {
            let Some((state, epoch)) = probe(&address, interval.max(PROBE_TIMEOUT_MIN)).await else { continue };
            if epoch > ours && matches!(state, BrokerState::Recovering | BrokerState::Active) {
                tracing::warn!(peer = %address, %epoch, ours = %ours, "a newer primary exists: stepping down");
                step_down(&context, epoch);
                break;
            }
        }
    }
}

/// Shard 0: this primary learned of a newer epoch; it becomes a joining backup.
pub(crate) fn step_down(context: &Rc<ShardContext>, epoch: Epoch) {
    {
        let mut shard = context.shard.borrow_mut();
        if !shard.ha().state().is_primary() || shard.ha().state() == BrokerState::Standalone {
            return;
        }
        shard.observe_epoch(epoch);
        if let Err(error) = shard.handle_ha_transition(BrokerState::Joining, TransitionCause::SupersededByNewerEpoch) {
            tracing::warn!(%error, "could not step down");
            return;
        }
    }
    // The pump of every shard drops its streams once it sees the backup state.
    pump(context);
    ensure_backup_links(context);
}

/// Asks the broker at `address` for its HA state and epoch over an admin connection, within
/// `timeout`; `None` if it does not answer properly in time.
async fn probe(address: &str, timeout: Duration) -> Option<(BrokerState, Epoch)> {
    match compio::runtime::time::timeout(timeout, ask_status(address)).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(reason)) => {
            tracing::debug!(peer = %address, %reason, "epoch probe failed");
            None
        }
        Err(_) => None,
    }
}

/// One `ha-status` exchange; see `probe`.
async fn ask_status(address: &str) -> Result<(BrokerState, Epoch), String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let mut request = BytesMut::new();
    codec::encode_preamble(Preamble { version: PROTOCOL_VERSION, flags: PREAMBLE_FLAG_ADMIN }, &mut request);
    codec::encode(&Frame::HaStatus { request: RequestId(1) }, &mut request);
    let BufResult(written, _) = (&stream).write_all(request).await;
    written.map_err(|e| format!("write: {e}"))?;
    let mut buffer = BytesMut::with_capacity(PROBE_BUFFER_BYTES);
    loop {
        loop {
            match codec::decode(&mut buffer, FRAME_BYTES_MAX).map_err(|e| e.to_string())? {
                None => break,
                Some(Frame::HaStatusReply { state, epoch, .. }) => {
                    let state = state.parse::<BrokerState>().map_err(|e| e.to_string())?;
                    return Ok((state, Epoch(epoch)));
                }
                Some(Frame::Error { message, .. }) => return Err(message),
                Some(_) => {}
            }
        }
        buffer.reserve(PROBE_BUFFER_BYTES);
        let BufResult(read, returned) = (&stream).append(buffer).await;
        buffer = returned;
        match read {
            Ok(0) => return Err("closed".into()),
            Ok(_) => {}
            Err(error) => return Err(format!("read: {error}")),
        }
    }
}

/// The least time a probe may take, whatever the maintenance interval.
const PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Read buffer of a probe: a hello and a status reply.
const PROBE_BUFFER_BYTES: usize = 4096;
