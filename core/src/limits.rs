//! Every bound of the broker's data path, in one place, with their relationships asserted at
//! compile time. Runtime options (`max-frame-size` and friends) may lower these, never raise them.

/// Largest frame, in bytes, including its 4-byte length prefix. A publish of 64 KiB-frame batches
/// (the sweet spot measured for loopback) fits 256 times over; larger frames only add latency.
pub const FRAME_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Default `max-frame-size`, in bytes: 1 MiB holds a full batch of 1 KiB messages.
pub const FRAME_BYTES_DEFAULT: u32 = 1024 * 1024;
/// Most messages in one publish or deliver frame. Bounds the work one frame can cause.
pub const BATCH_MESSAGES_MAX: u32 = 4096;
/// Deliveries are cut into frames of about this many bytes (a single larger message goes alone).
/// Big enough that a frame carries many messages (64 of 1 KiB), small enough that the consumer
/// starts on the first messages while the rest are in flight, and far below any client's
/// `max-frame-size`.
pub const DELIVER_FRAME_BYTES_TARGET: usize = 64 * 1024;
/// Bytes of a deliver frame that are not messages: length, type, consumer, first tag, count.
pub const DELIVER_FRAME_OVERHEAD_BYTES: usize = 4 + 1 + 4 + 8 + 4;
/// Most ranges in one confirm or settle frame.
pub const RANGES_MAX: u32 = 4096;
/// Most application headers on one message.
pub const HEADERS_MAX: u32 = 64;
/// Longest queue, exchange or binding-key name, in bytes.
pub const NAME_BYTES_MAX: u32 = 255;
/// Most exchanges a broker holds, built-ins included. Every shard keeps a copy of each, and a
/// client could otherwise grow every shard's memory without bound.
pub const EXCHANGES_MAX: u32 = 65_536;
/// Most bindings on one exchange. A topic exchange scans its distinct wildcard patterns on every
/// publish, so this also bounds the work one message can cause; 2^20 is far past any deployment
/// we know of and fits `ExchangeInfo::bindings` (`u32`).
pub const BINDINGS_PER_EXCHANGE_MAX: u32 = 1 << 20;
/// Most arguments on a declare.
pub const ARGUMENTS_MAX: u32 = 64;
/// Most entries in a list reply.
pub const LIST_ENTRIES_MAX: u32 = 65_536;
/// Most publishes a connection may have unconfirmed. A producer past it gets a `LimitExceeded`
/// error: it should have waited for confirms (the client does).
pub const PUBLISH_INFLIGHT_MAX: u64 = 1 << 20;
/// Largest prefetch (credit) a subscription may ask for.
pub const PREFETCH_MAX: u32 = 1 << 20;
/// Most subscriptions on one connection.
pub const CONSUMERS_PER_CONNECTION_MAX: u32 = 1024;

const _: () = assert!(FRAME_BYTES_DEFAULT <= FRAME_BYTES_MAX);
const _: () = assert!(DELIVER_FRAME_BYTES_TARGET <= FRAME_BYTES_DEFAULT as usize);
/// The largest `max-frame-size` a broker may be configured with, in bytes. A deliver frame of one
/// message is a few bytes larger than the publish frame it came in, so the option stays this far
/// below the hard cap and that frame still encodes.
pub const FRAME_BYTES_CONFIGURABLE_MAX: u32 = FRAME_BYTES_MAX - 1024;
const _: () = assert!(BATCH_MESSAGES_MAX as u64 <= PUBLISH_INFLIGHT_MAX);
const _: () = assert!(RANGES_MAX >= 2);
// A name must fit the u16 length prefix of a string on the wire.
const _: () = assert!(NAME_BYTES_MAX <= u16::MAX as u32);

/// The header a producer sets for duplicate suppression: `<producer-id>/<seq>` (see
/// `dedup_window` and PROTOCOL.md 2.5.4).
pub const DEDUP_HEADER: &[u8] = b"x-ringmq-dedup";
/// Longest producer id in a dedup header, in bytes. Each producer a queue remembers keeps its id,
/// so this bounds that memory. The client's `producer_id` bound (`PRODUCER_ID_BYTES_MAX` of
/// `ringmq-client`) is the same.
pub const DEDUP_PRODUCER_ID_BYTES_MAX: usize = 200;
/// Largest `dedup-window`, in sequence numbers per producer per queue: one bit each, so a
/// producer's window costs at most 128 KiB.
pub const DEDUP_WINDOW_MAX: u32 = 1 << 20;
/// Default `dedup-window`: the last 10000 sequence numbers of each producer (1.25 KiB each).
pub const DEDUP_WINDOW_DEFAULT: u32 = 10_000;
/// Most producers one queue's dedup window remembers; past it, the least recently used one is
/// forgotten (counted). With the default window, a queue's whole window costs at most 1.5 MB.
pub const DEDUP_PRODUCERS_PER_QUEUE_MAX: usize = 1024;

const _: () = assert!(DEDUP_WINDOW_DEFAULT <= DEDUP_WINDOW_MAX);
const _: () = assert!(DEDUP_PRODUCER_ID_BYTES_MAX <= NAME_BYTES_MAX as usize);
