//! Every bound of the client, in one place, with their relationships asserted at compile time.
//!
//! Options in `ConnectOptions` may choose values inside these bounds; the bounds themselves come
//! from `ringmq_core::limits`, so that a client never sends what a broker must refuse.
//!
//! Invariants: every bound derived from the broker's is at most the broker's; the defaults lie
//! inside their bounds; the relationships below hold at compile time (`const _: () = assert!`).

use std::time::Duration;

use ringmq_core::limits::{BATCH_MESSAGES_MAX, FRAME_BYTES_DEFAULT, FRAME_BYTES_MAX};
use ringmq_core::limits::{PUBLISH_INFLIGHT_MAX, RANGES_MAX};

/// Default target size of one publish frame, in bytes. 64 KiB batches were measured as the sweet
/// spot on loopback: larger frames add latency without adding throughput.
pub const PUBLISH_FRAME_BYTES_DEFAULT: u32 = 64 * 1024;
/// Most messages in one publish frame: the broker's batch bound.
pub const PUBLISH_BATCH_MESSAGES_MAX: u32 = BATCH_MESSAGES_MAX;
/// Default publish window, in messages: how many publishes may be unconfirmed before `publish`
/// waits. 16 Ki messages of 1 KiB keep 16 MiB in flight, which covers a 16 ms confirm round trip
/// at 1,000,000 msg/s.
pub const PUBLISH_WINDOW_DEFAULT: u64 = 16 * 1024;
/// Largest publish window, in messages: the broker refuses a connection with more unconfirmed.
pub const PUBLISH_WINDOW_MAX: u64 = PUBLISH_INFLIGHT_MAX;
/// Most confirm ranges kept for `Publisher::next_confirm` when the caller does not take them.
/// Adjacent ranges with equal outcomes merge, so this is only reached when outcomes alternate;
/// past it the oldest ranges are dropped from that queue (they stay counted in the summary).
pub const CONFIRM_RANGES_QUEUED_MAX: usize = 16 * 1024;
/// Most tag ranges in one settle frame: the broker's range bound.
pub const SETTLE_RANGES_MAX: usize = RANGES_MAX as usize;
/// Default largest frame, in bytes, the client sends or accepts.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = FRAME_BYTES_DEFAULT;
/// Largest `frame_bytes_max` a client may choose: the protocol's bound.
pub const FRAME_BYTES_MAX_LIMIT: u32 = FRAME_BYTES_MAX;
/// Smallest `frame_bytes_max` a client may choose, in bytes: room for any management frame
/// (names are at most 255 bytes, arguments at most 64 pairs) and a message of a few KiB.
pub const FRAME_BYTES_MAX_MIN: u32 = 64 * 1024;
/// Bytes the reader asks the socket for at least, per read: a read of less would mean one frame
/// per syscall under load.
pub const READ_CHUNK_BYTES_MIN: usize = 64 * 1024;
/// Bytes the reader allocates when its buffer runs out of room. Decoded frames keep slices of
/// the old allocation alive (zero copy), so the buffer is replaced, not compacted.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Settlements are flushed once `prefetch / SETTLE_FLUSH_PREFETCH_DIVISOR` tags (at least one) are
/// pending, so the broker gets credit back well before the consumer runs dry, while in-order acks
/// still leave as one range per flush.
pub const SETTLE_FLUSH_PREFETCH_DIVISOR: u32 = 4;
/// Emptied publish message vectors the outbox keeps for reuse: one per publish group in flight
/// is plenty, and each may hold a window's worth of capacity.
pub const SPARE_MESSAGE_VECS_MAX: usize = 4;
/// Bytes the writer encodes before writing them: large enough that one write moves many frames,
/// small enough that the first frame of a big round is not held back long.
pub const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// Longest the reader keeps reading after the connection started closing, so the broker's last
/// frames and its end of stream are consumed and the close is clean rather than a reset.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Default time allowed for TCP connect plus the preamble/`Hello` handshake.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default `reconnect_interval`: the first wait between two passes over the address list.
pub const RECONNECT_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Longest wait between two passes over the address list: the interval doubles after every
/// failed pass up to this. Also the largest `reconnect_interval` a caller may choose.
pub const RECONNECT_INTERVAL_MAX: Duration = Duration::from_secs(2);
/// Most addresses a connection keeps: the ones given plus the ones learned from brokers'
/// `ha-public-url`; more are ignored (the URL grammar allows as many in one URL).
pub const FAILOVER_ADDRESSES_MAX: usize = 64;
/// Longest `producer_id`, in bytes: with `/` and a 20-digit sequence number the
/// `x-ringmq-dedup` header value stays far below a `u16` field.
pub const PRODUCER_ID_BYTES_MAX: usize = 200;

const _: () = assert!(PUBLISH_FRAME_BYTES_DEFAULT <= FRAME_BYTES_MAX_MIN);
const _: () = assert!(FRAME_BYTES_MAX_MIN <= FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(FRAME_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_LIMIT);
const _: () = assert!(PUBLISH_WINDOW_DEFAULT <= PUBLISH_WINDOW_MAX);
const _: () = assert!(PUBLISH_WINDOW_DEFAULT >= PUBLISH_BATCH_MESSAGES_MAX as u64);
const _: () = assert!(READ_CHUNK_BYTES_MIN <= READ_BUFFER_BYTES);
const _: () = assert!(WRITE_CHUNK_BYTES >= PUBLISH_FRAME_BYTES_DEFAULT as usize);
const _: () = assert!(SETTLE_RANGES_MAX >= 2);
const _: () = assert!(SETTLE_FLUSH_PREFETCH_DIVISOR >= 1);
const _: () = assert!(CONFIRM_RANGES_QUEUED_MAX >= 2);
const _: () = assert!(RECONNECT_INTERVAL_DEFAULT.as_nanos() <= RECONNECT_INTERVAL_MAX.as_nanos());
const _: () = assert!(FAILOVER_ADDRESSES_MAX >= 1);
const _: () = assert!(PRODUCER_ID_BYTES_MAX + 21 <= u16::MAX as usize);
