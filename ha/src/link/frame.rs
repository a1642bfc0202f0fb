//! Every frame that travels on a broker-to-broker replication link, and the one decoder for the
//! link's mixed byte stream.
//!
//! A replication link is a native-protocol connection opened by a backup shard with the backup
//! preamble flag (`PROTOCOL.md`, "Broker-to-broker replication link"). Native frames (`hello`,
//! `heartbeat`, `error`) and replication frames share it. Both are `u32 length, u8 type, body`, and
//! the type byte tells them apart: the replication frames use 0x50..=0x5f, which the native
//! protocol leaves unused. Every type byte is declared once, in `ringmq_core::wire::frame_type`
//! (which asserts at compile time that none collides), and the `u32 length, u8 type` head is read
//! by `ringmq_core::wire::frame_header`, as for native frames and batches.
//!
//! | type | frame          | direction          | body                                              |
//! |------|----------------|--------------------|---------------------------------------------------|
//! | 0x50 | batch          | primary -> backup  | see `link::record`                                |
//! | 0x51 | confirm        | backup -> primary  | `u64 stream_seq`                                  |
//! | 0x52 | link-open      | backup -> primary  | `bytes16 backup, u16 shard, u16 shard_count, u64 epoch_highest, u8 has_holdings`, then if 1: `u32 count, count x (name, u32 ranges, ranges x (u64 first, u64 last))` |
//! | 0x53 | link-accepted  | primary -> backup  | `u64 epoch, u16 shard_count`                      |
//! | 0x54 | marked-ready   | primary -> backup  | nothing                                           |
//! | 0x55 | members        | primary -> backup  | `u64 version, u16 count, count x bytes16 address` |
//! | 0x56 | lease-request  | backup -> primary  | `u64 token`                                       |
//! | 0x57 | lease-grant    | primary -> backup  | `u64 token` (the request's)                       |
//! | 0x58 | members-held   | backup -> primary  | `u64 version` (the `members`')                    |
//!
//! Owns: the link-only frames (`LinkOpen`, `LinkAccepted`, marked-ready, members and
//! members-held, the lease frames), their bytes, and the
//! dispatch of a mixed stream to the native codec (`ringmq_core::wire`) or the record codec
//! (`link::record`). Not here: which frame may come when (the link's state machines, `primary::served_links` and `backup::session`),
//! what a batch means (`primary::stream`, `backup::stream`).
//!
//! Call contract: the reader of a link calls `decode_link_frame` on its receive buffer until it
//! returns `Ok(None)`; on `Err` it sends an `error` frame with `LinkDecodeError::code` and closes
//! the link. The writer calls `encode_link_frame` (or the record module's encoders) per frame.
//!
//! Invariants:
//! - `decode_link_frame` never panics, whatever the bytes; it keeps *incomplete* (`Ok(None)`,
//!   nothing consumed) apart from *invalid* (`Err`), and a frame it returns was consumed exactly.
//!   After an `Err` nothing about the buffer may be relied on: a refused body may have been
//!   consumed with its frame, and the link is closed anyway.
//! - A frame larger than `bytes_max` is refused as soon as its length has arrived, and an unknown
//!   type as soon as its type byte has.
//! - The encoding is canonical: `encode_link_frame` of a decoded frame gives back its bytes, and
//!   the encoder asserts every property the decoder checks.
//! - Every native frame decodes (the codec's own rules apply); refusing one that may not come on
//!   a link (a `publish`, say) is the link state machine's decision, as on a client connection.

use bytes::{BufMut, BytesMut};
use ringmq_core::epoch::Epoch;
use ringmq_core::frame::{ErrorCode, Frame};
use ringmq_core::replication::{Position, QueueHoldings};
use ringmq_core::wire::frame_header::{
    begin_frame, end_frame, peek_frame_header, FrameHeader, FrameHeaderError, FRAME_HEADER_BYTES,
};
use ringmq_core::wire::frame_type::{
    LINK_ACCEPTED, LINK_BATCH, LINK_CONFIRM, LINK_LEASE_GRANT, LINK_LEASE_REQUEST, LINK_MARKED_READY, LINK_MEMBERS,
    LINK_MEMBERS_HELD, LINK_OPEN,
};
use ringmq_core::wire::{codec, put_bytes16, put_name, DecodeError, Reader};

use crate::limits::{BACKUPS_MAX, BATCH_BYTES_MAX, HOLDINGS_QUEUES_MAX, HOLDINGS_RANGES_MAX, LINK_ADDRESS_BYTES_MAX};
use crate::link::record::{
    decode_batch, decode_confirm, encode_batch, encode_confirm, Batch, RecordDecodeError, StreamSeq, ZERO_LENGTH,
};

/// Any frame of a replication link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    /// A native protocol frame: `hello`, `heartbeat` and `error` are the ones a link uses.
    Native(Frame),
    /// Records of the primary shard (primary to backup).
    Batch(Batch),
    /// "Every batch up to this seq is applied" (backup to primary).
    Confirm(StreamSeq),
    /// The backup opens replication of one shard (backup to primary, right after `hello`).
    Open(LinkOpen),
    /// The primary accepted the `LinkOpen` (primary to backup); batches follow.
    Accepted(LinkAccepted),
    /// The backup now holds everything the primary holds and is `ready` (primary to backup, on the
    /// backup's shard-0 link, once every shard of that backup caught up).
    MarkedReady,
    /// The addresses of every `ready` backup of the primary (primary to backup, on each backup's
    /// shard-0 link, right after `marked-ready` and whenever that set changes): at most
    /// `BACKUPS_MAX`, each 1..=`LINK_ADDRESS_BYTES_MAX` bytes of UTF-8, sent sorted, with the set's
    /// version (from 1, raised at each change within the primary's epoch). A backup keeps the
    /// last set it got and answers `MembersHeld`; when promoted, the other addresses in it are
    /// its expected backups (`PrimaryReplication::expect_backups`).
    Members {
        /// The set's number within the primary's epoch.
        version: u64,
        /// The ready backups' addresses, sorted.
        ready: Vec<String>,
    },
    /// "I hold the ready set of this version" (backup to primary, on its shard-0 link, answering
    /// `Members` unless a promotion check fenced it): the primary stops holding confirms for a
    /// backup that left its ready set once every ready backup holds a set without it
    /// (`primary::role`, "Detached backups").
    MembersHeld(u64),
    /// "Are you still serving this link?" (backup to primary, on its shard-0 link, while accepted):
    /// a token the backup picks, answered by `LeaseGrant`.
    LeaseRequest(u64),
    /// The answer to `LeaseRequest` with its token (primary to backup, at once): the primary held
    /// this link open after the request was sent, so the backup's ready lease runs from then
    /// (`backup::ready_lease`).
    LeaseGrant(u64),
}

impl LinkFrame {
    /// The frame's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            LinkFrame::Native(frame) => frame.name(),
            LinkFrame::Batch(_) => "replication-batch",
            LinkFrame::Confirm(_) => "replication-confirm",
            LinkFrame::Open(_) => "link-open",
            LinkFrame::Accepted(_) => "link-accepted",
            LinkFrame::MarkedReady => "marked-ready",
            LinkFrame::Members { .. } => "members",
            LinkFrame::MembersHeld(_) => "members-held",
            LinkFrame::LeaseRequest(_) => "lease-request",
            LinkFrame::LeaseGrant(_) => "lease-grant",
        }
    }
}

/// A backup shard asks the primary for its shard's replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOpen {
    /// The backup's own address, `host:port` (how the cluster knows it); 1..=`LINK_ADDRESS_BYTES_MAX`
    /// bytes of UTF-8.
    pub backup: String,
    /// The backup shard opening this link; the primary serves it from its same-numbered shard.
    pub shard: u16,
    /// The backup's shard count; `shard < shard_count`. The primary refuses a count unlike its own.
    pub shard_count: u16,
    /// The highest epoch the backup has seen; the primary refuses the link if it is above its own.
    pub epoch_highest: Epoch,
    /// What the backup shard holds of the queues it owns (`Shard::replica_holdings`): the primary
    /// then sends only the difference, and the backup keeps its messages. `None` asks for a full
    /// resync (the backup drops its replicated messages first), as when the holdings would exceed
    /// `HOLDINGS_QUEUES_MAX` queues or `HOLDINGS_RANGES_MAX` ranges. Queues sorted by name, each
    /// once; ranges increasing, `first <= last`, neither overlapping nor adjacent.
    pub holdings: Option<Vec<QueueHoldings>>,
}

/// The primary accepted a `LinkOpen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAccepted {
    /// The primary's epoch, the epoch of every batch on this link.
    pub epoch: Epoch,
    /// The primary's shard count, at least 1.
    pub shard_count: u16,
}

/// Why bytes are not a valid link frame. Every message names what was allowed and what came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkDecodeError {
    /// The length prefix announces a frame larger than the link allows.
    #[error("link frame of {size} bytes exceeds the limit {max}")]
    FrameTooLarge {
        /// The announced size in bytes, length prefix included (saturating at `u32::MAX`).
        size: u32,
        /// The most allowed, in bytes, length prefix included.
        max: u32,
    },
    /// A native protocol frame (or an unknown type byte) that the native codec refused.
    #[error(transparent)]
    Native(#[from] DecodeError),
    /// A batch or confirm that the record codec refused.
    #[error(transparent)]
    Replication(#[from] RecordDecodeError),
    /// A `link-open`, `link-accepted`, `marked-ready` or `members` frame that is not valid.
    #[error("{frame}: {reason}")]
    Invalid {
        /// The frame's name (`link-open`, `link-accepted`, `marked-ready`, `members`, or `link frame`).
        frame: &'static str,
        /// What was allowed and what came.
        reason: String,
    },
}

impl LinkDecodeError {
    /// The error code to send in the `error` frame that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            LinkDecodeError::FrameTooLarge { .. }
            | LinkDecodeError::Replication(RecordDecodeError::FrameTooLarge { .. })
            | LinkDecodeError::Replication(RecordDecodeError::BadCount { .. }) => ErrorCode::LimitExceeded,
            LinkDecodeError::Native(error) => error.code(),
            LinkDecodeError::Replication(_) | LinkDecodeError::Invalid { .. } => ErrorCode::Malformed,
        }
    }
}

/// Appends `frame` to `out`.
///
/// # Panics
///
/// When the frame breaks a rule the decoder checks (see `codec::encode` and `encode_batch`; for a
/// `LinkOpen`: an empty or too long address, `shard >= shard_count`; for a `LinkAccepted`: a shard
/// count of 0; for `Members`: more than `BACKUPS_MAX` addresses, an empty or too long one): sending
/// it would be a bug.
pub fn encode_link_frame(frame: &LinkFrame, out: &mut BytesMut) {
    match frame {
        LinkFrame::Native(frame) => codec::encode(frame, out),
        LinkFrame::Batch(batch) => encode_batch(batch, out),
        LinkFrame::Confirm(seq) => encode_confirm(*seq, out),
        LinkFrame::Open(open) => {
            assert_address(&open.backup);
            assert!(open.shard < open.shard_count, "shard {} of {} shards", open.shard, open.shard_count);
            let start = begin_frame(out, LINK_OPEN);
            put_bytes16(out, open.backup.as_bytes());
            out.put_u16_le(open.shard);
            out.put_u16_le(open.shard_count);
            out.put_u64_le(open.epoch_highest.0);
            put_holdings(out, open.holdings.as_deref());
            end_frame(out, start);
        }
        LinkFrame::Accepted(accepted) => {
            assert!(accepted.shard_count >= 1, "link-accepted with 0 shards");
            let start = begin_frame(out, LINK_ACCEPTED);
            out.put_u64_le(accepted.epoch.0);
            out.put_u16_le(accepted.shard_count);
            end_frame(out, start);
        }
        LinkFrame::MarkedReady => {
            let start = begin_frame(out, LINK_MARKED_READY);
            end_frame(out, start);
        }
        LinkFrame::Members { version, ready } => {
            assert!(ready.len() <= BACKUPS_MAX, "{} members, at most {BACKUPS_MAX} allowed", ready.len());
            let start = begin_frame(out, LINK_MEMBERS);
            out.put_u64_le(*version);
            out.put_u16_le(ready.len() as u16);
            for member in ready {
                assert_address(member);
                put_bytes16(out, member.as_bytes());
            }
            end_frame(out, start);
        }
        LinkFrame::LeaseRequest(token) | LinkFrame::LeaseGrant(token) | LinkFrame::MembersHeld(token) => {
            let type_byte = match frame {
                LinkFrame::LeaseRequest(_) => LINK_LEASE_REQUEST,
                LinkFrame::LeaseGrant(_) => LINK_LEASE_GRANT,
                _ => LINK_MEMBERS_HELD,
            };
            let start = begin_frame(out, type_byte);
            out.put_u64_le(*token);
            end_frame(out, start);
        }
    }
}

/// Decodes the link frame at the front of `buf`, whichever kind it is.
///
/// Returns `Ok(None)` while `buf` holds only part of a frame; nothing is consumed. Returns
/// `Ok(Some(frame))` after consuming exactly that frame's bytes. A length above `bytes_max` (length
/// prefix included) and an unknown type byte are errors as soon as they arrive.
///
/// # Errors
///
/// Any [`LinkDecodeError`]: the bytes are not a valid frame. Nothing about `buf` may be relied on
/// afterwards; the caller answers with an `error` frame carrying [`LinkDecodeError::code`] and
/// closes the link.
///
/// # Panics
///
/// When `bytes_max` is above `BATCH_BYTES_MAX`: a runtime option may lower a limit, never raise it.
pub fn decode_link_frame(buf: &mut BytesMut, bytes_max: u32) -> Result<Option<LinkFrame>, LinkDecodeError> {
    assert!(bytes_max <= BATCH_BYTES_MAX, "bytes_max {bytes_max} is above BATCH_BYTES_MAX {BATCH_BYTES_MAX}");
    let header = peek_frame_header(buf, bytes_max).map_err(|error| match error {
        FrameHeaderError::TooLarge { size, max } => LinkDecodeError::FrameTooLarge { size, max },
        FrameHeaderError::ZeroLength => {
            LinkDecodeError::Invalid { frame: "link frame", reason: ZERO_LENGTH.to_string() }
        }
    })?;
    let Some(FrameHeader { size, type_byte }) = header else { return Ok(None) };
    match type_byte {
        LINK_BATCH => Ok(decode_batch(buf, bytes_max)?.map(LinkFrame::Batch)),
        LINK_CONFIRM => Ok(decode_confirm(buf)?.map(LinkFrame::Confirm)),
        LINK_OPEN | LINK_ACCEPTED | LINK_MARKED_READY | LINK_MEMBERS | LINK_LEASE_REQUEST | LINK_LEASE_GRANT
        | LINK_MEMBERS_HELD => {
            // `size <= bytes_max <= BATCH_BYTES_MAX`, so it fits a `usize`.
            if buf.len() < size as usize {
                return Ok(None);
            }
            let bytes = buf.split_to(size as usize).freeze();
            let frame = match type_byte {
                LINK_OPEN => decode_open(Reader::new("link-open", bytes, FRAME_HEADER_BYTES))?,
                LINK_ACCEPTED => decode_accepted(Reader::new("link-accepted", bytes, FRAME_HEADER_BYTES))?,
                LINK_MEMBERS => decode_members(Reader::new("members", bytes, FRAME_HEADER_BYTES))?,
                LINK_LEASE_REQUEST => {
                    LinkFrame::LeaseRequest(decode_token(Reader::new("lease-request", bytes, FRAME_HEADER_BYTES))?)
                }
                LINK_LEASE_GRANT => {
                    LinkFrame::LeaseGrant(decode_token(Reader::new("lease-grant", bytes, FRAME_HEADER_BYTES))?)
                }
                LINK_MEMBERS_HELD => {
                    LinkFrame::MembersHeld(decode_token(Reader::new("members-held", bytes, FRAME_HEADER_BYTES))?)
                }
                _ => {
                    Reader::new("marked-ready", bytes, FRAME_HEADER_BYTES).finish()?;
                    LinkFrame::MarkedReady
                }
            };
            Ok(Some(frame))
        }
        _ => Ok(codec::decode(buf, bytes_max)?.map(LinkFrame::Native)),
    }
}

// ----- helpers -----

/// Reads a lease frame's token or a `members-held` version, the whole body.
fn decode_token(mut r: Reader) -> Result<u64, LinkDecodeError> {
    let token = r.u64("token")?;
    r.finish()?;
    Ok(token)
}

fn decode_open(mut r: Reader) -> Result<LinkFrame, LinkDecodeError> {
    let invalid = |reason: String| LinkDecodeError::Invalid { frame: "link-open", reason };
    let backup = decode_address(&mut r, "link-open", "backup")?;
    let shard = r.u16("shard")?;
    let shard_count = r.u16("shard count")?;
    if shard >= shard_count {
        return Err(invalid(format!("shard must be below the shard count {shard_count}; got {shard}")));
    }
    let epoch_highest = Epoch(r.u64("epoch highest")?);
    let holdings = match r.u8("has holdings")? {
        0 => None,
        1 => Some(decode_holdings(&mut r)?),
        other => return Err(invalid(format!("has holdings must be 0 or 1; got {other}"))),
    };
    r.finish()?;
    Ok(LinkFrame::Open(LinkOpen { backup, shard, shard_count, epoch_highest, holdings }))
}

/// Reads a link-open's holdings (after its flag): bounded by `HOLDINGS_QUEUES_MAX` queues and
/// `HOLDINGS_RANGES_MAX` ranges in all, names strictly increasing, ranges increasing with gaps.
fn decode_holdings(r: &mut Reader) -> Result<Vec<QueueHoldings>, LinkDecodeError> {
    let invalid = |reason: String| LinkDecodeError::Invalid { frame: "link-open", reason };
    let count = r.u32("holdings count")?;
    if count as usize > HOLDINGS_QUEUES_MAX {
        return Err(invalid(format!("holdings count must be at most {HOLDINGS_QUEUES_MAX}; got {count}")));
    }
    // Each entry grows the vectors only after its bytes were read: memory follows the frame's size.
    let mut holdings: Vec<QueueHoldings> = Vec::new();
    let mut ranges_total = 0usize;
    for _ in 0..count {
        let name = r.name("holdings queue")?;
        if let Some(previous) = holdings.last() {
            if name <= previous.name {
                return Err(invalid(format!(
                    "holdings queues must be sorted by name, each once; got '{name}' after '{}'",
                    previous.name
                )));
            }
        }
        let ranges_count = r.u32("holdings ranges")? as usize;
        ranges_total = ranges_total.saturating_add(ranges_count);
        if ranges_total > HOLDINGS_RANGES_MAX {
            return Err(invalid(format!(
                "holdings must have at most {HOLDINGS_RANGES_MAX} ranges in all; got at least {ranges_total}"
            )));
        }
        let mut ranges: Vec<(Position, Position)> = Vec::new();
        for _ in 0..ranges_count {
            let (first, last) = (r.u64("range first")?, r.u64("range last")?);
            if first > last {
                return Err(invalid(format!("queue '{name}': range first must be at most last {last}; got {first}")));
            }
            if let Some(&(_, previous)) = ranges.last() {
                if first <= previous.0.saturating_add(1) {
                    return Err(invalid(format!(
                        "queue '{name}': ranges must increase with a gap; got first {first} after last {}",
                        previous.0
                    )));
                }
            }
            ranges.push((Position(first), Position(last)));
        }
        holdings.push(QueueHoldings { name, ranges });
    }
    Ok(holdings)
}

/// Writes a link-open's holdings flag and holdings.
///
/// # Panics
///
/// When they break a rule `decode_holdings` checks.
fn put_holdings(out: &mut BytesMut, holdings: Option<&[QueueHoldings]>) {
    let Some(holdings) = holdings else {
        out.put_u8(0);
        return;
    };
    out.put_u8(1);
    assert!(holdings.len() <= HOLDINGS_QUEUES_MAX, "{} holdings queues", holdings.len());
    let ranges: usize = holdings.iter().map(|queue| queue.ranges.len()).sum();
    assert!(ranges <= HOLDINGS_RANGES_MAX, "{ranges} holdings ranges");
    assert!(holdings.windows(2).all(|pair| pair[0].name < pair[1].name), "holdings queues not sorted");
    out.put_u32_le(holdings.len() as u32);
    for queue in holdings {
        put_name(out, &queue.name);
        out.put_u32_le(queue.ranges.len() as u32);
        let mut previous: Option<Position> = None;
        for &(first, last) in &queue.ranges {
            assert!(first <= last && previous.is_none_or(|p| first.0 > p.0.saturating_add(1)), "bad holdings range");
            previous = Some(last);
            out.put_u64_le(first.0);
            out.put_u64_le(last.0);
        }
    }
}

fn decode_accepted(mut r: Reader) -> Result<LinkFrame, LinkDecodeError> {
    let epoch = Epoch(r.u64("epoch")?);
    let shard_count = r.u16("shard count")?;
    if shard_count == 0 {
        return Err(LinkDecodeError::Invalid {
            frame: "link-accepted",
            reason: "shard count must be at least 1; got 0".to_string(),
        });
    }
    r.finish()?;
    Ok(LinkFrame::Accepted(LinkAccepted { epoch, shard_count }))
}

fn decode_members(mut r: Reader) -> Result<LinkFrame, LinkDecodeError> {
    let version = r.u64("version")?;
    let count = r.u16("count")?;
    if usize::from(count) > BACKUPS_MAX {
        return Err(LinkDecodeError::Invalid {
            frame: "members",
            reason: format!("count must be at most {BACKUPS_MAX}; got {count}"),
        });
    }
    // At most `BACKUPS_MAX` addresses, each bounded: the vector's size is bounded whatever the bytes.
    let mut members = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        members.push(decode_address(&mut r, "members", "address")?);
    }
    r.finish()?;
    Ok(LinkFrame::Members { version, ready: members })
}

/// Reads a broker address: `bytes16`, 1..=`LINK_ADDRESS_BYTES_MAX` bytes of UTF-8.
fn decode_address(r: &mut Reader, frame: &'static str, field: &'static str) -> Result<String, LinkDecodeError> {
    let invalid = |reason: String| LinkDecodeError::Invalid { frame, reason };
    let bytes = r.bytes16(field)?;
    if !(1..=LINK_ADDRESS_BYTES_MAX).contains(&bytes.len()) {
        return Err(invalid(format!("{field} is {} bytes, 1..={LINK_ADDRESS_BYTES_MAX} allowed", bytes.len())));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(error) => Err(invalid(format!("{field} is not UTF-8: {error}"))),
    }
}

/// Asserts what `decode_address` checks (UTF-8 is given by `String`).
fn assert_address(address: &str) {
    assert!(
        (1..=LINK_ADDRESS_BYTES_MAX).contains(&address.len()),
        "address of {} bytes, 1..={LINK_ADDRESS_BYTES_MAX} allowed",
        address.len()
    );
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ringmq_core::frame::Message;

    use super::*;

    use crate::link::record::{Position, Record};

    fn samples() -> Vec<LinkFrame> {
        vec![
            LinkFrame::Native(Frame::Hello { version: 1, broker: "ringmq test".to_string() }),
            LinkFrame::Native(Frame::Heartbeat),
            LinkFrame::Native(Frame::Error { code: ErrorCode::NotPrimary, message: "not primary".to_string() }),
            LinkFrame::Batch(Batch {
                epoch: Epoch(4),
                stream_seq: StreamSeq(9),
                records: vec![Record::Enqueued {
                    queue: "q".to_string(),
                    first_position: Position(3),
                    messages: vec![Message { body: Bytes::from_static(b"body"), ..Message::default() }],
                }],
            }),
            LinkFrame::Confirm(StreamSeq(77)),
            LinkFrame::Open(LinkOpen {
                backup: "backup-1.example:5672".to_string(),
                shard: 2,
                shard_count: 4,
                epoch_highest: Epoch(3),
                holdings: None,
            }),
            LinkFrame::Open(LinkOpen {
                backup: "b:1".to_string(),
                shard: 0,
                shard_count: 1,
                epoch_highest: Epoch(2),
                holdings: Some(vec![
                    QueueHoldings { name: "a".to_string(), ranges: Vec::new() },
                    QueueHoldings {
                        name: "q".to_string(),
                        ranges: vec![(Position(1), Position(3)), (Position(5), Position(5))],
                    },
                ]),
            }),
            LinkFrame::Accepted(LinkAccepted { epoch: Epoch(5), shard_count: 4 }),
            LinkFrame::MarkedReady,
            LinkFrame::Members { version: 1, ready: Vec::new() },
            LinkFrame::Members {
                version: u64::MAX,
                ready: vec!["b1.example:5672".to_string(), "[::1]:5673".to_string()],
            },
            LinkFrame::LeaseRequest(0),
            LinkFrame::LeaseGrant(u64::MAX),
            LinkFrame::MembersHeld(3),
        ]
    }

    fn encoded(frame: &LinkFrame) -> BytesMut {
        let mut out = BytesMut::new();
        encode_link_frame(frame, &mut out);
        out
    }

    #[test]
    fn every_link_frame_round_trips_in_one_mixed_stream() {
        // Goal: the decoder tells native and replication frames apart by their type byte, and
        // decode(encode(f)) == f for each, consuming exactly its bytes.
        let mut stream = BytesMut::new();
        for frame in samples() {
            encode_link_frame(&frame, &mut stream);
        }
        for frame in samples() {
            assert_eq!(decode_link_frame(&mut stream, BATCH_BYTES_MAX), Ok(Some(frame)));
        }
        assert!(stream.is_empty());
        assert_eq!(decode_link_frame(&mut stream, BATCH_BYTES_MAX), Ok(None));
    }

    #[test]
    fn marked_ready_and_link_frames_have_the_documented_bytes() {
        // Goal: the layouts in PROTOCOL.md, byte for byte.
        assert_eq!(&encoded(&LinkFrame::MarkedReady)[..], &[1, 0, 0, 0, 0x54]);
        assert_eq!(&encoded(&LinkFrame::LeaseRequest(7))[..], &[9, 0, 0, 0, 0x56, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&encoded(&LinkFrame::LeaseGrant(7))[..], &[9, 0, 0, 0, 0x57, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&encoded(&LinkFrame::MembersHeld(7))[..], &[9, 0, 0, 0, 0x58, 7, 0, 0, 0, 0, 0, 0, 0]);
        let members = encoded(&LinkFrame::Members { version: 2, ready: vec!["a:1".to_string(), "bc:2".to_string()] });
        assert_eq!(
            &members[..],
            &[22, 0, 0, 0, 0x55, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, b'a', b':', b'1', 4, 0, b'b', b'c', b':', b'2']
        );
        let empty = encoded(&LinkFrame::Members { version: 1, ready: Vec::new() });
        assert_eq!(&empty[..], &[11, 0, 0, 0, 0x55, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let accepted = encoded(&LinkFrame::Accepted(LinkAccepted { epoch: Epoch(2), shard_count: 3 }));
        assert_eq!(&accepted[..], &[11, 0, 0, 0, 0x53, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0]);
        let open = encoded(&LinkFrame::Open(LinkOpen {
            backup: "h:1".to_string(),
            shard: 1,
            shard_count: 2,
            epoch_highest: Epoch(7),
            holdings: None,
        }));
        assert_eq!(&open[..], &[19, 0, 0, 0, 0x52, 3, 0, b'h', b':', b'1', 1, 0, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
        // With holdings: queue "q" holds positions 2..=3.
        let open = encoded(&LinkFrame::Open(LinkOpen {
            backup: "h:1".to_string(),
            shard: 1,
            shard_count: 2,
            epoch_highest: Epoch(7),
            holdings: Some(vec![QueueHoldings { name: "q".to_string(), ranges: vec![(Position(2), Position(3))] }]),
        }));
        let mut expected = vec![46, 0, 0, 0, 0x52, 3, 0, b'h', b':', b'1', 1, 0, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1];
        expected.extend_from_slice(&[1, 0, 0, 0, 1, 0, b'q', 1, 0, 0, 0]);
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&open[..], &expected[..]);
    }

    #[test]
    fn every_prefix_of_every_frame_is_incomplete_and_consumes_nothing() {
        // Goal: a frame arriving byte by byte is `Ok(None)` until its last byte.
        for frame in samples() {
            let whole = encoded(&frame);
            for len in 0..whole.len() {
                let mut part = BytesMut::from(&whole[..len]);
                assert_eq!(decode_link_frame(&mut part, BATCH_BYTES_MAX), Ok(None), "{frame:?}: prefix of {len}");
                assert_eq!(part.len(), len);
            }
        }
    }

    #[test]
    fn bad_frames_are_errors_that_name_what_was_allowed_and_what_came() {
        // Goal: each broken rule is an error (not "incomplete"), with a message and an error code.
        // An unknown type byte, judged as soon as it arrives.
        let mut unknown = BytesMut::from(&[9, 0, 0, 0, 0x59][..]);
        let error = decode_link_frame(&mut unknown, BATCH_BYTES_MAX).unwrap_err();
        assert_eq!(error, LinkDecodeError::Native(DecodeError::UnknownFrameType(0x59)));
        assert_eq!(error.code(), ErrorCode::Malformed);
        // A lease frame with a short token.
        let mut short = BytesMut::from(&[5, 0, 0, 0, 0x56, 1, 2, 3, 4][..]);
        let error = decode_link_frame(&mut short, BATCH_BYTES_MAX).unwrap_err();
        assert!(error.to_string().contains("lease-request") && error.to_string().contains("token"), "{error}");
        // Too large, judged from the length alone.
        let mut large = BytesMut::from(&[100, 0, 0, 0][..]);
        let error = decode_link_frame(&mut large, 64).unwrap_err();
        assert_eq!(error.to_string(), "link frame of 104 bytes exceeds the limit 64");
        assert_eq!(error.code(), ErrorCode::LimitExceeded);
        // Length 0.
        let mut empty = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(decode_link_frame(&mut empty, 64).unwrap_err().to_string().contains("length is 0"));
        // A shard not below the shard count.
        let mut open = encoded(&LinkFrame::Open(LinkOpen {
            backup: "h:1".to_string(),
            shard: 1,
            shard_count: 2,
            epoch_highest: Epoch(7),
            holdings: None,
        }));
        open[10] = 2;
        assert_eq!(
            decode_link_frame(&mut open, 64).unwrap_err().to_string(),
            "link-open: shard must be below the shard count 2; got 2"
        );
        // An empty backup address.
        let mut open = BytesMut::from(&[17, 0, 0, 0, 0x52, 0, 0, 0, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        open[0] = (open.len() - 4) as u8;
        assert_eq!(
            decode_link_frame(&mut open, 64).unwrap_err().to_string(),
            "link-open: backup is 0 bytes, 1..=259 allowed"
        );
        // An address that is not UTF-8.
        let mut open = BytesMut::from(&[0, 0, 0, 0, 0x52, 1, 0, 0xff, 0, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        open[0] = (open.len() - 4) as u8;
        assert!(decode_link_frame(&mut open, 64).unwrap_err().to_string().contains("backup is not UTF-8"));
        // Holdings: a bad flag, names out of order, a range backwards, ranges touching, too many.
        let holdings_open = |tail: &[u8]| {
            let mut bytes = vec![0, 0, 0, 0, 0x52, 3, 0, b'h', b':', b'1', 1, 0, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0];
            bytes.extend_from_slice(tail);
            let length = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&length.to_le_bytes());
            let error = decode_link_frame(&mut BytesMut::from(&bytes[..]), BATCH_BYTES_MAX).unwrap_err();
            assert_eq!(error.code(), ErrorCode::Malformed);
            error.to_string()
        };
        assert_eq!(holdings_open(&[2]), "link-open: has holdings must be 0 or 1; got 2");
        let two = [1, 2, 0, 0, 0, 1, 0, b'q', 0, 0, 0, 0, 1, 0, b'a', 0, 0, 0, 0];
        assert_eq!(
            holdings_open(&two),
            "link-open: holdings queues must be sorted by name, each once; got 'a' after 'q'"
        );
        let mut backwards = vec![1, 1, 0, 0, 0, 1, 0, b'q', 1, 0, 0, 0];
        backwards.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(holdings_open(&backwards), "link-open: queue 'q': range first must be at most last 4; got 5");
        let mut touching = vec![1, 1, 0, 0, 0, 1, 0, b'q', 2, 0, 0, 0];
        touching.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        touching.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert!(holdings_open(&touching).contains("ranges must increase with a gap; got first 3 after last 2"));
        assert_eq!(
            holdings_open(&[1, 0xff, 0xff, 0, 0]),
            format!("link-open: holdings count must be at most {HOLDINGS_QUEUES_MAX}; got 65535")
        );
        assert!(holdings_open(&[1, 1, 0, 0, 0, 1, 0, b'q', 0xff, 0xff, 0xff, 0xff])
            .contains(&format!("at most {HOLDINGS_RANGES_MAX} ranges in all")));
        // A shard count of 0 in link-accepted.
        let mut accepted = encoded(&LinkFrame::Accepted(LinkAccepted { epoch: Epoch(2), shard_count: 3 }));
        accepted[13] = 0;
        assert_eq!(
            decode_link_frame(&mut accepted, 64).unwrap_err().to_string(),
            "link-accepted: shard count must be at least 1; got 0"
        );
        // marked-ready with a body.
        let mut ready = BytesMut::from(&[2, 0, 0, 0, 0x54, 0][..]);
        let error = decode_link_frame(&mut ready, 64).unwrap_err();
        assert_eq!(error.to_string(), "marked-ready: trailing 1 bytes after frame body");
        // members: too many addresses, an empty one, one not UTF-8, fewer than counted, a trailing byte.
        let mut members = BytesMut::from(&[11, 0, 0, 0, 0x55, 1, 0, 0, 0, 0, 0, 0, 0, 65, 0][..]);
        let error = decode_link_frame(&mut members, 64).unwrap_err();
        assert_eq!(error.to_string(), "members: count must be at most 64; got 65");
        assert_eq!(error.code(), ErrorCode::Malformed);
        let mut members = BytesMut::from(&[13, 0, 0, 0, 0x55, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0][..]);
        assert_eq!(
            decode_link_frame(&mut members, 64).unwrap_err().to_string(),
            "members: address is 0 bytes, 1..=259 allowed"
        );
        let mut members = BytesMut::from(&[14, 0, 0, 0, 0x55, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0xc3][..]);
        assert!(decode_link_frame(&mut members, 64).unwrap_err().to_string().contains("address is not UTF-8"));
        let mut members = BytesMut::from(&[14, 0, 0, 0, 0x55, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0, b'a'][..]);
        assert!(matches!(decode_link_frame(&mut members, 64), Err(LinkDecodeError::Native(_))));
        assert!(members.is_empty(), "a complete frame is consumed, even when invalid");
        let mut members = BytesMut::from(&[12, 0, 0, 0, 0x55, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9][..]);
        assert_eq!(
            decode_link_frame(&mut members, 64).unwrap_err().to_string(),
            "members: trailing 1 bytes after frame body"
        );
        // A confirm of the wrong length comes from the record codec, named as such.
        let mut confirm = BytesMut::from(&[20, 0, 0, 0, 0x51][..]);
        assert!(decode_link_frame(&mut confirm, 64).unwrap_err().to_string().starts_with("replication frame"));
    }

    #[test]
    fn the_largest_members_frame_round_trips_and_one_more_address_is_refused() {
        // Goal: `BACKUPS_MAX` addresses of the longest length fit a link frame; the encoder refuses
        // to send more, as the decoder would.
        let longest = |index: usize| format!("{index:0>width$}", width = LINK_ADDRESS_BYTES_MAX);
        let frame = LinkFrame::Members { version: u64::MAX, ready: (0..BACKUPS_MAX).map(longest).collect() };
        let mut bytes = encoded(&frame);
        assert_eq!(bytes.len(), crate::limits::MEMBERS_FRAME_BYTES_MAX);
        assert_eq!(decode_link_frame(&mut bytes, BATCH_BYTES_MAX), Ok(Some(frame)));
        let too_many = std::panic::catch_unwind(|| {
            let ready = (0..=BACKUPS_MAX).map(|index| format!("b{index}:1")).collect();
            encoded(&LinkFrame::Members { version: 1, ready })
        });
        assert!(too_many.is_err());
        let too_long =
            std::panic::catch_unwind(|| encoded(&LinkFrame::Members { version: 1, ready: vec![longest(0) + "0"] }));
        assert!(too_long.is_err());
    }

    /// A seeded xorshift64 generator: deterministic, no crate.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_and_corrupted_bytes_never_panic_and_what_decodes_re_encodes_to_its_bytes() {
        // Goal: network input never causes a panic, and the encoding is canonical.
        // Method: (1) every sample frame with each byte replaced by several seeded random values,
        // (2) random byte strings whose type byte is drawn among the link types and a few others.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut inputs = Vec::new();
        for frame in samples() {
            let whole = encoded(&frame);
            for index in 0..whole.len() {
                for _ in 0..6 {
                    let mut corrupt = whole.clone();
                    corrupt[index] = xorshift(&mut state) as u8;
                    inputs.push(corrupt);
                }
            }
        }
        for _ in 0..20_000 {
            let len = 5 + (xorshift(&mut state) % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
            bytes[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
            bytes[4] = [0x01, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x80, 0x83][(xorshift(&mut state) % 9) as usize];
            inputs.push(BytesMut::from(&bytes[..]));
        }
        let mut decoded = 0;
        for input in inputs {
            let mut buf = input.clone();
            match decode_link_frame(&mut buf, 4096) {
                Ok(Some(frame)) => {
                    decoded += 1;
                    let consumed = input.len() - buf.len();
                    assert_eq!(encoded(&frame)[..], input[..consumed], "{frame:?}");
                }
                Ok(None) => assert_eq!(buf.len(), input.len(), "incomplete consumed bytes"),
                Err(error) => assert!(!error.to_string().is_empty()),
            }
        }
        assert!(decoded > 0, "nothing decoded: the corruption test checks nothing");
    }
}
