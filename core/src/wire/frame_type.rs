//! The registry of frame type bytes: every type byte that travels on a ringmq connection is
//! declared here and nowhere else, the native protocol's ([`FrameType`]) and the broker-to-broker
//! replication link's (`LINK_*`, decoded by `ringmq-ha`'s `link::record` and `link::frame`).
//!
//! Native numbers: client to broker below 0x80, broker to client from 0x80; `Heartbeat` travels
//! both ways. The replication link uses 0x50..=0x5f, which the native protocol leaves unused, so
//! a link that mixes native frames (hello, heartbeat, error) with its own tells them apart by the
//! type byte alone. `PROTOCOL.md` lists the same numbers.
//!
//! Not here: what a frame means (`frame`), its bytes (`codec`, `ringmq-ha`), its header
//! (`frame_header`).
//!
//! Invariants:
//! - No two frames share a type byte, native and link together: asserted at compile time over
//!   [`NATIVE_FRAME_TYPES`] and [`LINK_FRAME_TYPES`].
//! - A number never changes meaning and is never reused.
//! - [`FrameType::from_u8`] knows the native types only: on a client connection a link type byte
//!   is an unknown frame type.

use crate::wire::frame::Frame;

/// Native frame type numbers (see the module doc for the numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameType {
    Heartbeat = 0x01,
    QueueDeclare = 0x10,
    QueueDelete = 0x11,
    QueuePurge = 0x12,
    QueueList = 0x13,
    ExchangeDeclare = 0x18,
    ExchangeDelete = 0x19,
    ExchangeList = 0x1a,
    Bind = 0x20,
    Unbind = 0x21,
    Publish = 0x30,
    Subscribe = 0x31,
    Cancel = 0x32,
    Settle = 0x33,
    HaStatus = 0x40,
    HaPromote = 0x41,
    HaFence = 0x42,
    Hello = 0x80,
    Ok = 0x81,
    Failed = 0x82,
    Error = 0x83,
    Confirm = 0x90,
    Deliver = 0x91,
    ConsumerCancelled = 0x92,
    QueueListReply = 0xa0,
    ExchangeListReply = 0xa1,
    HaStatusReply = 0xa2,
}

impl FrameType {
    /// The native frame type numbered `value`; `None` for any other byte, a link type included.
    pub fn from_u8(value: u8) -> Option<FrameType> {
        NATIVE_FRAME_TYPES.iter().copied().find(|frame_type| *frame_type as u8 == value)
    }

    /// Its type byte.
    pub fn byte(self) -> u8 {
        self as u8
    }

    /// The frame's name in `PROTOCOL.md` and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Heartbeat => "heartbeat",
            FrameType::QueueDeclare => "queue-declare",
            FrameType::QueueDelete => "queue-delete",
            FrameType::QueuePurge => "queue-purge",
            FrameType::QueueList => "queue-list",
            FrameType::ExchangeDeclare => "exchange-declare",
            FrameType::ExchangeDelete => "exchange-delete",
            FrameType::ExchangeList => "exchange-list",
            FrameType::Bind => "bind",
            FrameType::Unbind => "unbind",
            FrameType::Publish => "publish",
            FrameType::Subscribe => "subscribe",
            FrameType::Cancel => "cancel",
            FrameType::Settle => "settle",
            FrameType::Hello => "hello",
            FrameType::Ok => "ok",
            FrameType::Failed => "failed",
            FrameType::Error => "error",
            FrameType::Confirm => "confirm",
            FrameType::Deliver => "deliver",
            FrameType::ConsumerCancelled => "consumer-cancelled",
            FrameType::QueueListReply => "queue-list-reply",
            FrameType::ExchangeListReply => "exchange-list-reply",
            FrameType::HaStatus => "ha-status",
            FrameType::HaPromote => "ha-promote",
            FrameType::HaFence => "ha-fence",
            FrameType::HaStatusReply => "ha-status-reply",
        }
    }

    /// The type of `frame`.
    pub fn of(frame: &Frame) -> FrameType {
        match frame {
            Frame::QueueDeclare { .. } => FrameType::QueueDeclare,
            Frame::QueueDelete { .. } => FrameType::QueueDelete,
            Frame::QueuePurge { .. } => FrameType::QueuePurge,
            Frame::QueueList { .. } => FrameType::QueueList,
            Frame::ExchangeDeclare { .. } => FrameType::ExchangeDeclare,
            Frame::ExchangeDelete { .. } => FrameType::ExchangeDelete,
            Frame::ExchangeList { .. } => FrameType::ExchangeList,
            Frame::Bind { .. } => FrameType::Bind,
            Frame::Unbind { .. } => FrameType::Unbind,
            Frame::Publish { .. } => FrameType::Publish,
            Frame::Subscribe { .. } => FrameType::Subscribe,
            Frame::Cancel { .. } => FrameType::Cancel,
            Frame::Settle { .. } => FrameType::Settle,
            Frame::Heartbeat => FrameType::Heartbeat,
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Ok { .. } => FrameType::Ok,
            Frame::Failed { .. } => FrameType::Failed,
            Frame::Error { .. } => FrameType::Error,
            Frame::Confirm { .. } => FrameType::Confirm,
            Frame::Deliver { .. } => FrameType::Deliver,
            Frame::ConsumerCancelled { .. } => FrameType::ConsumerCancelled,
            Frame::QueueListReply { .. } => FrameType::QueueListReply,
            Frame::ExchangeListReply { .. } => FrameType::ExchangeListReply,
            Frame::HaStatus { .. } => FrameType::HaStatus,
            Frame::HaPromote { .. } => FrameType::HaPromote,
            Frame::HaFence { .. } => FrameType::HaFence,
            Frame::HaStatusReply { .. } => FrameType::HaStatusReply,
        }
    }
}

/// Replication link: a batch of records (primary to backup).
pub const LINK_BATCH: u8 = 0x50;
/// Replication link: a confirm of batches (backup to primary).
pub const LINK_CONFIRM: u8 = 0x51;
/// Replication link: `link-open` (backup to primary).
pub const LINK_OPEN: u8 = 0x52;
/// Replication link: `link-accepted` (primary to backup).
pub const LINK_ACCEPTED: u8 = 0x53;
/// Replication link: `marked-ready` (primary to backup).
pub const LINK_MARKED_READY: u8 = 0x54;
/// Replication link: `members` (primary to backup).
pub const LINK_MEMBERS: u8 = 0x55;
/// Replication link: `lease-request` (backup to primary).
pub const LINK_LEASE_REQUEST: u8 = 0x56;
/// Replication link: `lease-grant` (primary to backup).
pub const LINK_LEASE_GRANT: u8 = 0x57;
/// Replication link: `members-held` (backup to primary).
pub const LINK_MEMBERS_HELD: u8 = 0x58;

/// Every native frame type, for decoding the type byte.
pub const NATIVE_FRAME_TYPES: [FrameType; 27] = [
    FrameType::Heartbeat,
    FrameType::QueueDeclare,
    FrameType::QueueDelete,
    FrameType::QueuePurge,
    FrameType::QueueList,
    FrameType::ExchangeDeclare,
    FrameType::ExchangeDelete,
    FrameType::ExchangeList,
    FrameType::Bind,
    FrameType::Unbind,
    FrameType::Publish,
    FrameType::Subscribe,
    FrameType::Cancel,
    FrameType::Settle,
    FrameType::Hello,
    FrameType::Ok,
    FrameType::Failed,
    FrameType::Error,
    FrameType::Confirm,
    FrameType::Deliver,
    FrameType::ConsumerCancelled,
    FrameType::QueueListReply,
    FrameType::ExchangeListReply,
    FrameType::HaStatus,
    FrameType::HaPromote,
    FrameType::HaFence,
    FrameType::HaStatusReply,
];

/// Every replication link frame type with its name (as `ringmq-ha`'s `LinkFrame::name` gives it).
pub const LINK_FRAME_TYPES: [(u8, &str); 9] = [
    (LINK_BATCH, "replication-batch"),
    (LINK_CONFIRM, "replication-confirm"),
    (LINK_OPEN, "link-open"),
    (LINK_ACCEPTED, "link-accepted"),
    (LINK_MARKED_READY, "marked-ready"),
    (LINK_MEMBERS, "members"),
    (LINK_LEASE_REQUEST, "lease-request"),
    (LINK_LEASE_GRANT, "lease-grant"),
    (LINK_MEMBERS_HELD, "members-held"),
];

/// The `index`th type byte of the whole registry: the native types, then the link types.
const fn registry_byte(index: usize) -> u8 {
    if index < NATIVE_FRAME_TYPES.len() {
        NATIVE_FRAME_TYPES[index] as u8
    } else {
        LINK_FRAME_TYPES[index - NATIVE_FRAME_TYPES.len()].0
    }
}

/// Whether every type byte of the registry, native and link together, is used once.
const fn registry_bytes_distinct() -> bool {
    let count = NATIVE_FRAME_TYPES.len() + LINK_FRAME_TYPES.len();
    let mut i = 0;
    while i < count {
        let mut j = i + 1;
        while j < count {
            if registry_byte(i) == registry_byte(j) {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

/// Whether every link type byte is in 0x50..=0x5f, the block the native protocol leaves to it.
const fn link_bytes_in_their_block() -> bool {
    let mut i = 0;
    while i < LINK_FRAME_TYPES.len() {
        let byte = LINK_FRAME_TYPES[i].0;
        if byte < 0x50 || byte > 0x5f {
            return false;
        }
        i += 1;
    }
    true
}

const _: () = assert!(registry_bytes_distinct(), "two frame types share a type byte");
const _: () = assert!(link_bytes_in_their_block(), "a link frame type is outside 0x50..=0x5f");
// A native frame type that `NATIVE_FRAME_TYPES` missed would not decode; `FrameType::of` is
// exhaustive over `Frame`, and the codec's tests check every variant round-trips.
const _: () = assert!(NATIVE_FRAME_TYPES.len() == 27);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_link_type_byte_decodes_as_a_native_frame_type() {
        // Goal: a link frame on a client connection is an unknown frame type, never a native one.
        for (byte, _) in LINK_FRAME_TYPES {
            assert_eq!(FrameType::from_u8(byte), None);
        }
    }
}
