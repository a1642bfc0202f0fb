//! Every bound of the HA crate, in one place, with their relationships asserted at compile time.

/// Most addresses in one broker URL (`ha-brokers-url`, `ha-public-url`, a client's failover
/// list). A cluster lists each broker once, and with the all-backups confirm rule a cluster of more
/// than a handful of brokers only adds latency; 64 is far past that, and it bounds how long a
/// joining backup or a failing-over client cycles through the list.
pub const URL_ADDRESSES_MAX: usize = 64;
/// Longest user name or password in a broker URL, in bytes. Common SASL implementations cap
/// both at 255.
pub const URL_CREDENTIAL_BYTES_MAX: usize = 255;
/// Longest host name, in bytes, in its text form (RFC 1035; not ours to choose).
pub const HOST_NAME_BYTES_MAX: usize = 253;
/// Longest label of a host name (the part between dots), in bytes (RFC 1035).
pub const HOST_LABEL_BYTES_MAX: usize = 63;
/// Longest broker URL, in bytes. Checked before anything else, so a huge option value or peer
/// string is refused without being scanned or echoed; large enough for every URL the other limits
/// allow (asserted below), so it never refuses a URL they accept.
pub const URL_BYTES_MAX: usize = 32 * 1024;

/// The longest address text: "rdma:" plus the longest host plus ":65535" plus a comma (an IPv6
/// literal, at most 45 bytes plus brackets, is shorter than the longest host name).
const ADDRESS_TEXT_BYTES_MAX: usize = "rdma:".len() + HOST_NAME_BYTES_MAX + ":65535".len() + ",".len();
const _: () = assert!(HOST_NAME_BYTES_MAX >= "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]".len());
const _: () = assert!(HOST_LABEL_BYTES_MAX <= HOST_NAME_BYTES_MAX);
// "amqp:", user, "/", password, "@", then every address.
const _: () = assert!(
    URL_BYTES_MAX >= "amqp:".len() + 2 * URL_CREDENTIAL_BYTES_MAX + 2 + URL_ADDRESSES_MAX * ADDRESS_TEXT_BYTES_MAX
);
const _: () = assert!(URL_ADDRESSES_MAX >= 1);

// ----- message replication (`record`, `primary::stream`, `backup::stream`) -----

/// Largest replication batch on the wire, in bytes, length prefix included: the native protocol's
/// frame cap, so the link reads batches with the same buffers as client frames. A batch of one
/// message of the largest publishable size still fits (asserted below), so no message is ever too
/// big to replicate.
pub const BATCH_BYTES_MAX: u32 = ringmq_core::limits::FRAME_BYTES_MAX;
/// Most records in one batch. Bounds the work one batch makes a backup do; with many queues a
/// batch carries one or two records per queue, so 4096 queues fit in one batch.
pub const BATCH_RECORDS_MAX: u32 = 4096;
/// Most messages in one batch, across all its `Enqueued` records: the same bound as a publish
/// frame, so a replicated batch costs the backup no more than one client publish.
pub const BATCH_MESSAGES_MAX: u32 = ringmq_core::limits::BATCH_MESSAGES_MAX;
/// Most dequeue ranges in one batch, across all its `Dequeued` records: the same bound as a settle
/// frame's ranges.
pub const BATCH_RANGES_MAX: u32 = ringmq_core::limits::RANGES_MAX;
/// Most dedup sequence ranges in one batch, across all its `DedupSeen` records: one full record
/// (`ringmq_core::replication::DEDUP_SEEN_RANGES_MAX`). With the longest producer ids that is
/// under 1 MiB, far below `BATCH_BYTES_MAX` (asserted below).
pub const BATCH_DEDUP_RANGES_MAX: u32 = ringmq_core::replication::DEDUP_SEEN_RANGES_MAX as u32;
/// Most batches a primary stream has sent and the backup has not confirmed. With the target batch
/// of 64 KiB this is 2 MiB in flight per stream: at 10 Gbit/s that covers a 1.6 ms round trip,
/// far above loopback or a LAN, and it bounds the holds and batches a stream remembers.
pub const BATCHES_UNCONFIRMED_MAX: usize = 32;
/// Pending records (messages not yet in a batch, dequeue ranges, queue creates and deletes) at
/// which a primary stream asks its shard to stop reading producers (`producers_must_pause`). A
/// backup that falls behind then slows publishers instead of growing the primary's memory.
pub const STREAM_PENDING_PAUSE: usize = 64 * 1024;
/// Pending records past which a primary stream refuses more (`StreamOverflow`): the pause point
/// plus room for what the shard had already read when it paused (a few publish frames, each of at
/// most `BATCH_MESSAGES_MAX` messages, possibly routed to several queues). Reaching it means the
/// shard did not pause; the stream then cannot keep its backup exact and the backup is dropped.
pub const STREAM_PENDING_MAX: usize = STREAM_PENDING_PAUSE + 64 * BATCH_MESSAGES_MAX as usize;

/// Bytes of a batch that are not records: length, type, epoch, stream seq, record count.
pub const BATCH_HEADER_BYTES: usize = 4 + 1 + 8 + 8 + 4;
/// Bytes of an `Enqueued` record that are not messages, with the longest queue name: kind, name,
/// first position, message count.
const ENQUEUED_HEADER_BYTES_MAX: usize = 1 + 2 + ringmq_core::limits::NAME_BYTES_MAX as usize + 8 + 4;

const _: () = assert!(
    ringmq_core::limits::FRAME_BYTES_CONFIGURABLE_MAX as usize + BATCH_HEADER_BYTES + ENQUEUED_HEADER_BYTES_MAX
        <= BATCH_BYTES_MAX as usize
);
// A batch of nothing but `DedupSeen` records at their limit: one record per range at worst
// (kind, longest queue name, producer count; longest producer id, range count, one range).
const _: () = assert!(
    BATCH_HEADER_BYTES
        + BATCH_DEDUP_RANGES_MAX as usize
            * (1 + 2
                + ringmq_core::limits::NAME_BYTES_MAX as usize
                + 4
                + 2
                + ringmq_core::limits::DEDUP_PRODUCER_ID_BYTES_MAX
                + 4
                + 16)
        <= BATCH_BYTES_MAX as usize
);
const _: () = assert!(BATCH_DEDUP_RANGES_MAX >= 1);
const _: () = assert!(BATCHES_UNCONFIRMED_MAX >= 1);
const _: () = assert!(BATCH_RECORDS_MAX >= 1 && BATCH_MESSAGES_MAX >= 1 && BATCH_RANGES_MAX >= 1);
const _: () = assert!(STREAM_PENDING_PAUSE < STREAM_PENDING_MAX);
// A catching-up stream is fed one batch's worth of its backlog at a time (`primary::replication`).
const _: () = assert!(BATCH_MESSAGES_MAX as usize <= STREAM_PENDING_PAUSE);
// A paused shard still finishes the publish frame it is in: the slack must hold at least one.
const _: () = assert!(STREAM_PENDING_MAX - STREAM_PENDING_PAUSE >= BATCH_MESSAGES_MAX as usize);

// ----- broker-to-broker links (`backup::link`, `link::heartbeat`) -----

/// Shortest `link-heartbeat-interval` and `link-maintenance-interval`. Sub-second intervals must
/// work (the reference truncated to whole seconds and silently disabled heartbeats below 1 s);
/// below a millisecond a heartbeat or a dial per interval is a busy loop, not a liveness check.
pub const LINK_HEARTBEAT_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_millis(1);
/// Longest `link-heartbeat-interval` and `link-maintenance-interval`: one day. Longer would detect
/// nothing useful, and it keeps `now + 2 * interval` far from `Instant`'s overflow.
pub const LINK_HEARTBEAT_INTERVAL_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Intervals without receiving anything after which a link's peer counts as dead (the
/// reference's rule: two).
pub const LINK_SILENT_INTERVALS_MAX: u32 = 2;
/// Intervals a primary stream's oldest unconfirmed batch may wait for its confirm (counted from
/// when it became the oldest) before the link counts as lost (`primary::stream`, "Confirm
/// timeout"). A live backup confirms a batch on the read that brings it, so a healthy wait is one
/// round trip plus the backup's apply; a batch lost on the way (or its confirm) leaves a gap no
/// heartbeat reveals, and this bound is what finds it. The same two intervals as for a silent
/// peer: a lost batch is detected as fast as a dead one, and a forward clock jump of less than
/// one interval cannot fake it.
pub const LINK_UNCONFIRMED_INTERVALS_MAX: u32 = 2;

/// The most a primary holds acks for a detached ready backup beyond `ha-backup-timeout`
/// (`primary::role`), as room for the two machines' clocks to disagree on how much time passed;
/// the allowance is one `link-heartbeat-interval`, at most this. (The backup's lease runs from the
/// sending of a `lease-request` the primary answered, which is before the primary saw the link
/// end, so network delays need no room. Monotonic clocks drift by parts per million; the
/// simulator's clock jumps stay below one heartbeat interval.)
pub const LEASE_CLOCK_ALLOWANCE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// A backup's lease requests go out every `ha-backup-timeout` divided by this (`backup::ready_lease`), so
/// that a live link renews its lease long before it runs out.
pub const LEASE_REQUESTS_PER_TIMEOUT: u32 = 4;

const _: () = assert!(LINK_SILENT_INTERVALS_MAX >= 2, "one interval would race the peer's own heartbeat");
const _: () = assert!(
    LINK_UNCONFIRMED_INTERVALS_MAX >= LINK_SILENT_INTERVALS_MAX,
    "a slow confirm must not end a link sooner than silence would"
);
const _: () = assert!(LINK_HEARTBEAT_INTERVAL_MIN.as_nanos() < LINK_HEARTBEAT_INTERVAL_MAX.as_nanos());

// ----- the replication link's own frames (`link::frame`) -----

/// Longest backup address in a `LinkOpen` frame (`host:port`), in bytes: the longest host name
/// plus `:65535`. A bracketed IPv6 literal is shorter than the longest host name (asserted above).
pub const LINK_ADDRESS_BYTES_MAX: usize = HOST_NAME_BYTES_MAX + ":65535".len();

const _: () = assert!(LINK_ADDRESS_BYTES_MAX <= u16::MAX as usize, "the address travels with a u16 length");

/// Most queues in the holdings of one `LinkOpen` (what a reconnecting backup shard holds). A
/// shard that owns more replica queues sends no holdings and gets a full resync.
pub const HOLDINGS_QUEUES_MAX: usize = 16 * 1024;
/// Most position ranges in the holdings of one `LinkOpen`, across its queues. A backup's queue is
/// one range unless messages in its middle were consumed on the primary, so this is far above
/// the usual; a shard whose holdings need more gets a full resync. It bounds the frame (1 MiB of
/// ranges) and the primary's diff work.
pub const HOLDINGS_RANGES_MAX: usize = 64 * 1024;
/// Bytes of the largest `LinkOpen`: length, type, address, shard, shard count, epoch, holdings
/// flag and queue count, then every queue with the longest name and its range count, then every
/// range.
pub const LINK_OPEN_BYTES_MAX: usize = 4
    + 1
    + (2 + LINK_ADDRESS_BYTES_MAX)
    + 2
    + 2
    + 8
    + 1
    + 4
    + HOLDINGS_QUEUES_MAX * (2 + ringmq_core::limits::NAME_BYTES_MAX as usize + 4)
    + HOLDINGS_RANGES_MAX * 16;

const _: () = assert!(LINK_OPEN_BYTES_MAX <= BATCH_BYTES_MAX as usize, "a link-open fits any link read");
const _: () = assert!(HOLDINGS_QUEUES_MAX <= u32::MAX as usize, "the queue count travels as a u32");
const _: () = assert!(HOLDINGS_RANGES_MAX <= u32::MAX as usize, "range counts travel as u32s");

// ----- the primary's view of its backups (`membership`) -----

/// Most backups a primary tracks at once: one per address a cluster's `ha-brokers-url` may list.
/// A peer inventing new names cannot grow the primary's membership past it.
pub const BACKUPS_MAX: usize = URL_ADDRESSES_MAX;

/// Bytes of the largest `members` frame (`link::frame`): length, type, version, count, then
/// `BACKUPS_MAX` addresses of the longest length, each with its `u16` length.
pub const MEMBERS_FRAME_BYTES_MAX: usize = 4 + 1 + 8 + 2 + BACKUPS_MAX * (2 + LINK_ADDRESS_BYTES_MAX);

const _: () = assert!(BACKUPS_MAX <= u16::MAX as usize, "the members count travels as a u16");
const _: () = assert!(MEMBERS_FRAME_BYTES_MAX <= BATCH_BYTES_MAX as usize, "a members frame fits any link read");
