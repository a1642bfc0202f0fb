//! Every queue, batch, buffer, retry and wait bound of the IO shell, in one place, with their
//! relationships asserted at compile time.
//!
//! Not here: the bounds of the protocol and of the shard's data path (`ringmq_core::limits`) and
//! of the HA protocol (`ringmq_ha::limits`); this file only adds what the shell itself decides.
//!
//! Invariants (asserted below):
//! - A shard's readers pause before its overflow toward a peer passes `OVERFLOW_MESSAGES_MAX`
//!   and resume only once every overflow is down to `OVERFLOW_MESSAGES_RESUME`, strictly less, so
//!   the readers do not flap on and off at one message's difference.
//! - The overflow limit is below a ring's capacity: the readers pause while the batches they
//!   caused are still mostly in the ring, not after the overflow dwarfed it.
//! - The inbox task's batch from one ring fits the ring.

use std::time::Duration;

/// Bytes reserved in a connection's read buffer before each read. Large enough that one read
/// takes several 64 KiB publish frames at once; decoded frames keep slices of the buffer alive
/// (zero copy), so it is replaced, not compacted.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Capacity of one shard-to-shard ring, in messages (each a batch: an `Enqueue` holds every
/// message one read produced for that shard). 4096 batches of up to 4096 messages each is far
/// more than a peer can fall behind by before the producers' own windows stop them.
pub const RING_CAPACITY: usize = 4096;

/// Messages (batches) a shard may hold in its overflow toward one peer, behind a full ring,
/// before it stops reading its client connections. 1024 batches behind 4096 in the ring means
/// the peer is far behind; stopping the clients that feed it is cheaper than growing memory
/// without bound. Messages that arrive anyway (from connections already read, from the inbox,
/// from timers) still go into the overflow: nothing is ever dropped, so this bounds the overflow
/// to about this plus what one pass over the read connections produces.
pub const OVERFLOW_MESSAGES_MAX: usize = 1024;

/// Messages (batches) every overflow of a shard must be down to before its paused client
/// readers resume: a quarter of `OVERFLOW_MESSAGES_MAX`, so that a resumed reader has room to
/// work before the next pause.
pub const OVERFLOW_MESSAGES_RESUME: usize = OVERFLOW_MESSAGES_MAX / 4;

/// How long the inbox task waits before retrying a full ring. Short: a peer drains a whole ring
/// in well under a millisecond, and the client readers wait on this retry while backed up.
pub const OVERFLOW_RETRY: Duration = Duration::from_micros(50);

/// Most messages the inbox task takes from one inbound ring before looking at the others, for
/// fairness between the shards that send to it.
pub const INBOX_BATCH_MAX: usize = 64;

/// How long the acceptor waits after a failed `accept` (out of file descriptors or similar)
/// before trying again, while the open connections go on being served.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// How far ahead the timer task sleeps while the node has no timeout: only a bound on a sleep
/// that `pump` cuts short when a timeout appears.
pub const TIMER_IDLE_SLEEP: Duration = Duration::from_secs(3600);

/// Backlog of each shard's listener, in connections waiting for `accept`: enough for a burst of
/// reconnecting clients after a failover.
pub const LISTEN_BACKLOG: i32 = 1024;

/// How long a port found listening may take to be released before startup fails: a broker that
/// was just killed keeps its listening sockets for a few milliseconds while the kernel tears its
/// io_uring down.
pub const PORT_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The least time a probe of a peer broker may take, whatever the maintenance interval: a
/// connect, a preamble, one request and one reply on a loaded machine.
pub const PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(100);

/// Read buffer of a probe, in bytes: a hello and a status reply, each well under a kilobyte.
pub const PROBE_BUFFER_BYTES: usize = 4096;

const _: () = assert!(PROBE_BUFFER_BYTES <= READ_BUFFER_BYTES);
const _: () = assert!(RING_CAPACITY >= 2);
const _: () = assert!(OVERFLOW_MESSAGES_RESUME < OVERFLOW_MESSAGES_MAX);
const _: () = assert!(OVERFLOW_MESSAGES_MAX <= RING_CAPACITY);
const _: () = assert!(INBOX_BATCH_MAX >= 1);
const _: () = assert!(INBOX_BATCH_MAX <= RING_CAPACITY);
const _: () = assert!(OVERFLOW_RETRY.as_nanos() < PROBE_TIMEOUT_MIN.as_nanos());
const _: () = assert!(LISTEN_BACKLOG > 0);
