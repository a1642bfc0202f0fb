//! One shard's event loop: an io_uring runtime (compio) on a thread pinned to its core, that
//! accepts connections on the shared port, reads and writes them, drains the rings from other
//! shards, sleeps until the node's next timeout, and feeds it all to the shard's sans-IO node
//! (`ringmq_ha::node::shard_node::ShardNode`: the core shard and its HA protocol).
//!
//! Tasks on the shard's thread: one acceptor, one inbox task, one timer task, a reader and a
//! writer per connection (clients and broker-to-broker links alike), and the short tasks that
//! carry out a node's dials and probes (`node_shell`). They share the node through a `RefCell`
//! that is never borrowed across an await, so no two of them ever see it half-changed.
//!
//! After every input the loop *pumps* (`node_shell::pump`): `ShardNode::pump`, then every output
//! is carried out by `ringmq_ha::node::shell::pump_and_carry_out` (the simulator's too), the core's
//! messages for other shards going into their rings, and the timer is re-armed if the node's next
//! timeout moved earlier.
//!
//! Invariants:
//! - Only this thread touches the node, its connections and its ring ends.
//! - A connection's writer writes buffers in the order the node produced them; after a buffer
//!   marked `close`, it shuts the socket down and writes nothing more.
//! - The timer task sleeps no later than the node's `poll_timeout()`.
//! - A client connection is not read while the node asks producers to pause or while the shard's
//!   rings are backed up (`ShardRings::backed_up`); a broker-to-broker link and the inbox are
//!   always read, since they are what drains both.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::net::TcpListener;
use ringmq_core::ids::ConnId;
use ringmq_core::shard::Shard;
use ringmq_ha::node::shard_node::{NodeConfig, ShardNode};

use crate::connection_stream::ConnectionStream;
use crate::limits::{ACCEPT_RETRY, INBOX_BATCH_MAX, OVERFLOW_RETRY, READ_BUFFER_BYTES, TIMER_IDLE_SLEEP};
use crate::node_shell::{adopt_link, pump};
use crate::shard_control::{Control, ShardControls};
use crate::shard_ring::ShardRings;

/// Everything the shard's tasks share.
pub(crate) struct ShardContext {
    /// The sans-IO shard and its HA protocol.
    pub(crate) node: RefCell<ShardNode>,
    /// This shard's ring ends.
    pub(crate) rings: RefCell<ShardRings>,
    /// Writers of the open connections.
    pub(crate) writers: RefCell<HashMap<ConnId, Rc<WriteQueue>>>,
    /// Streams of the open connections, to shut one down or hand it over.
    pub(crate) streams: RefCell<HashMap<ConnId, Rc<ConnectionStream>>>,
    /// Connections handed to another shard, whose readers must stop.
    pub(crate) handed_over: RefCell<HashSet<ConnId>>,
    /// The next connection id.
    next_conn: Cell<u32>,
    /// The control queues between the shards' IO shells.
    pub(crate) controls: ShardControls,
    /// Client readers waiting for the replication streams (`producers_must_pause`) or the
    /// overflow toward other shards (`ShardRings::backed_up`) to drain.
    paused_readers: RefCell<Vec<Waker>>,
    /// The instant the timer task sleeps until, and the task while it sleeps.
    timer: (Cell<Option<Instant>>, RefCell<Option<Waker>>),
    /// This context itself, for the tasks its outputs start.
    this: Weak<ShardContext>,
}

impl ShardContext {
    /// A fresh connection id.
    pub(crate) fn new_conn(&self) -> ConnId {
        let conn = ConnId(self.next_conn.get());
        self.next_conn.set(conn.0.wrapping_add(1));
        conn
    }

    /// This context, while it lives.
    pub(crate) fn this(&self) -> Option<Rc<ShardContext>> {
        self.this.upgrade()
    }

    /// The node's settings.
    pub(crate) fn config(&self) -> NodeConfig {
        self.node.borrow().config().clone()
    }

    /// Wakes the client readers `wait_until_readable` parked, once neither the node's streams
    /// (`producers_paused`, its `producers_must_pause()`) nor the rings ask for a pause.
    pub(crate) fn resume_paused_readers(&self, producers_paused: bool) {
        if self.paused_readers.borrow().is_empty() || producers_paused || self.rings.borrow().backed_up() {
            return;
        }
        for waker in self.paused_readers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Wakes the timer task if the node's next timeout `next` is earlier than the one it sleeps
    /// until.
    pub(crate) fn rearm_timer(&self, next: Option<Instant>) {
        let armed = self.timer.0.get();
        if next.is_some_and(|next| armed.is_none_or(|armed| next < armed)) {
            self.timer.0.set(next);
            if let Some(waker) = self.timer.1.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// Registers a connection's socket and starts its writer.
    pub(crate) fn register(&self, conn: ConnId, stream: &Rc<ConnectionStream>) {
        let queue = Rc::new(WriteQueue::default());
        self.writers.borrow_mut().insert(conn, queue.clone());
        self.streams.borrow_mut().insert(conn, stream.clone());
        compio::runtime::spawn(writer_task(stream.clone(), queue)).detach();
    }
}

/// Buffers waiting for one connection's writer task.
#[derive(Default)]
pub(crate) struct WriteQueue {
    /// Buffers in order.
    buffers: RefCell<VecDeque<BytesMut>>,
    /// Close the socket after the queued buffers.
    close: Cell<bool>,
    /// End without shutting the socket down: it was handed to another shard.
    detached: Cell<bool>,
    /// The writer task, when parked.
    waker: RefCell<Option<Waker>>,
}

impl WriteQueue {
    pub(crate) fn push(&self, buffer: BytesMut, close: bool) {
        if !buffer.is_empty() {
            self.buffers.borrow_mut().push_back(buffer);
        }
        if close {
            self.close.set(true);
        }
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Ends the writer once its buffers are written, leaving the socket open (it was handed over).
    pub(crate) fn detach(&self) {
        self.detached.set(true);
        self.push(BytesMut::new(), true);
    }
}

/// Runs shard `rings.id` on the current thread until the listener fails; `panics` is the test
/// fault of `TransportConfig::panic_shard`.
///
/// # Errors
/// The listener could not be registered with the runtime.
pub(crate) async fn run_shard(
    shard: Shard,
    rings: ShardRings,
    listener: std::net::TcpListener,
    config: NodeConfig,
    controls: ShardControls,
    panics: bool,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let context = Rc::new_cyclic(|this| ShardContext {
        node: RefCell::new(ShardNode::new(shard, config, Instant::now())),
        rings: RefCell::new(rings),
        writers: RefCell::new(HashMap::new()),
        streams: RefCell::new(HashMap::new()),
        handed_over: RefCell::new(HashSet::new()),
        next_conn: Cell::new(0),
        controls,
        paused_readers: RefCell::new(Vec::new()),
        timer: (Cell::new(None), RefCell::new(None)),
        this: this.clone(),
    });
    compio::runtime::spawn(inbox_task(context.clone())).detach();
    compio::runtime::spawn(timer_task(context.clone())).detach();
    if panics {
        // The test fault (`TransportConfig::panic_shard`): a panic in a task, the kind the
        // runtime catches and keeps, so only a panic hook sees it.
        compio::runtime::spawn(async { panic!("test fault: a deliberate panic in a task of this shard") }).detach();
    }
    pump(&context);
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or similar: keep serving the open connections.
                tracing::warn!(%error, "accept failed");
                compio::runtime::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let stream = ConnectionStream::from(stream);
        if let Err(error) = stream.set_nodelay() {
            tracing::warn!(%error, "TCP_NODELAY failed");
        }
        let conn = context.new_conn();
        let stream = Rc::new(stream);
        context.register(conn, &stream);
        context.node.borrow_mut().handle_accept(conn);
        let buffer = BytesMut::with_capacity(READ_BUFFER_BYTES);
        compio::runtime::spawn(reader_task(context.clone(), stream, conn, buffer, ReaderOrigin::Accepted)).detach();
    }
}

/// How a connection came to this shard, which decides whether its reader may pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReaderOrigin {
    /// Accepted on the shared port: a client, an admin tool, or a backup's link once it opened
    /// (the node knows which).
    Accepted,
    /// A broker-to-broker link this shell dialed, or adopted from another shard.
    Link,
}

/// Reads a connection until it closes or is handed to another shard, feeding the node; `buffer`
/// holds bytes already read.
pub(crate) async fn reader_task(
    context: Rc<ShardContext>,
    stream: Rc<ConnectionStream>,
    conn: ConnId,
    mut buffer: BytesMut,
    origin: ReaderOrigin,
) {
    loop {
        wait_until_readable(&context, conn, origin).await;
        buffer.reserve(READ_BUFFER_BYTES);
        // `append` reads after the partial frame already in the buffer; `read` would overwrite it.
        let BufResult(result, returned) = stream.append(buffer).await;
        buffer = returned;
        match result {
            Ok(0) => break,
            Ok(_) => {
                context.node.borrow_mut().handle_read(conn, &mut buffer, Instant::now());
                pump(&context);
                if context.handed_over.borrow_mut().remove(&conn) {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(%error, conn = conn.0, "read failed");
                break;
            }
        }
    }
    context.node.borrow_mut().handle_closed(conn, Instant::now());
    context.streams.borrow_mut().remove(&conn);
    if let Some(queue) = context.writers.borrow_mut().remove(&conn) {
        queue.push(BytesMut::new(), true);
    }
    pump(&context);
}

/// Backpressure: while a replication stream of this shard holds too many unsent records, or the
/// shard's overflow toward another shard passed its limit, client connections are not read
/// (neither publishes nor acks, which both add records and messages for other shards) until
/// batches went out and confirms came back, and the other shards took their messages. Backup
/// links are read on, since their confirms end the first wait and their heartbeats must not stop.
async fn wait_until_readable(context: &ShardContext, conn: ConnId, origin: ReaderOrigin) {
    poll_fn(|cx| {
        if reader_must_wait(&context.node.borrow(), &context.rings.borrow(), conn, origin) {
            context.paused_readers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
}

/// Whether the reader of `conn` must wait before its next read: the node pauses it for its
/// replication streams, or the rings are backed up and it is not a broker-to-broker link.
fn reader_must_wait(node: &ShardNode, rings: &ShardRings, conn: ConnId, origin: ReaderOrigin) -> bool {
    if node.read_paused(conn) {
        return true;
    }
    rings.backed_up() && origin == ReaderOrigin::Accepted && !node.shard().is_backup_link(conn)
}

/// Writes a connection's buffers in order; shuts it down when told to close.
pub(crate) async fn writer_task(stream: Rc<ConnectionStream>, queue: Rc<WriteQueue>) {
    loop {
        let next = poll_fn(|cx| {
            if let Some(buffer) = queue.buffers.borrow_mut().pop_front() {
                return Poll::Ready(Some(buffer));
            }
            if queue.close.get() {
                return Poll::Ready(None);
            }
            *queue.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(buffer) = next else { break };
        let BufResult(result, _) = stream.write_all(buffer).await;
        if let Err(error) = result {
            tracing::debug!(%error, "write failed");
            break;
        }
    }
    if queue.detached.get() {
        return;
    }
    // Shutting down the write side makes the peer see the end; our reader then sees EOF or an
    // error and cleans up the session.
    if let Err(error) = stream.shutdown_write().await {
        tracing::debug!(%error, "shutdown failed");
    }
}

/// Drains the rings and control queue from other shards into the node, sleeping on the doorbell
/// when idle.
async fn inbox_task(context: Rc<ShardContext>) {
    let doorbell = {
        let rings = context.rings.borrow();
        rings.doorbells[usize::from(rings.id.0)].clone()
    };
    let own = context.rings.borrow().id.0;
    loop {
        let mut moved = false;
        {
            let mut rings = context.rings.borrow_mut();
            let mut node = context.node.borrow_mut();
            let now = Instant::now();
            for (_, consumer) in rings.inbound.iter_mut() {
                for _ in 0..INBOX_BATCH_MAX {
                    match consumer.pop() {
                        Ok(message) => {
                            node.handle_peer(message, now);
                            moved = true;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        for control in context.controls.take(own) {
            match control {
                Control::Node(control) => context.node.borrow_mut().handle_control(control, Instant::now()),
                Control::AdoptLink { stream, pending, open } => adopt_link(&context, stream, pending, open),
            }
            moved = true;
        }
        // Retried on every turn, not only when idle: a shard busy with its inbox must still move
        // its overflow, or its paused client readers would wait for the inbox to go quiet.
        let overflow = context.rings.borrow_mut().retry_overflow();
        let producers_paused = context.node.borrow().producers_must_pause();
        context.resume_paused_readers(producers_paused);
        if moved {
            pump(&context);
            // Let connection tasks run between inbox batches.
            yield_now().await;
            continue;
        }
        if overflow {
            compio::runtime::time::sleep(OVERFLOW_RETRY).await;
            continue;
        }
        poll_fn(|cx| {
            doorbell.prepare_sleep(cx.waker());
            let rings = context.rings.borrow();
            if rings.has_inbound() || rings.has_overflow() || context.controls.has_pending(own) {
                doorbell.awake();
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        doorbell.awake();
    }
}

/// Calls the node's `handle_timeout` at its `poll_timeout`, sleeping in between; `pump` wakes it
/// when the next timeout moved earlier.
async fn timer_task(context: Rc<ShardContext>) {
    loop {
        let deadline = context.node.borrow().poll_timeout();
        context.timer.0.set(deadline);
        let mut sleep = pin!(compio::runtime::time::sleep_until(deadline.unwrap_or_else(far_future)));
        poll_fn(|cx| {
            if context.timer.0.get() != deadline {
                return Poll::Ready(());
            }
            *context.timer.1.borrow_mut() = Some(cx.waker().clone());
            sleep.as_mut().poll(cx)
        })
        .await;
        let now = Instant::now();
        if deadline.is_some_and(|deadline| deadline <= now) {
            context.node.borrow_mut().handle_timeout(now);
            pump(&context);
        }
    }
}

/// An instant the timer never reaches while the node has no timeout.
fn far_future() -> Instant {
    Instant::now() + TIMER_IDLE_SLEEP
}

/// Shuts a socket down in both directions, so that its reader sees the end.
pub(crate) fn shutdown(stream: &ConnectionStream) {
    if let Err(error) = stream.shutdown_now() {
        tracing::debug!(%error, "shutdown failed");
    }
}

/// Gives other tasks on this thread a turn.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringmq_core::ha_view::HaSettings;
    use ringmq_core::ids::ShardId;
    use ringmq_core::shard::ShardConfig;
    use ringmq_core::shard_message::ShardMessage;

    use super::*;
    use crate::limits::{OVERFLOW_MESSAGES_MAX, RING_CAPACITY};

    /// Shard 0 of two, alone, with no cluster.
    fn node() -> ShardNode {
        let config = ShardConfig {
            shard_count: 2,
            frame_bytes_max: 1 << 20,
            publish_inflight_max: 1024,
            deliver_batch_max: 64,
            broker_name: "test".into(),
            ha: HaSettings::default(),
            dedup_window: 0,
        };
        let shard = Shard::new(ShardId(0), config);
        let config = NodeConfig {
            heartbeat_interval: Duration::from_secs(1),
            maintenance_interval: Duration::from_secs(1),
            peer_addresses: Vec::new(),
            own_address: "127.0.0.1:5672".into(),
            backup_timeout: Duration::from_secs(10),
            shard_count: 2,
            min_ready_backups: 0,
            min_ready_timeout: None,
        };
        ShardNode::new(shard, config, Instant::now())
    }

    #[test]
    fn a_backed_up_shard_pauses_its_client_readers_and_never_its_links() {
        // Goal: the overflow's bound feeds the reader's pause. While shard 0's overflow toward
        // shard 1 is past its limit, an accepted client connection waits before its next read;
        // a broker-to-broker link never does; once shard 1 drained the ring, the client reads on.
        // Method: a real node and a mesh of two shards; shard 1's consumer end is popped by hand.
        let mut node = node();
        let client = ConnId(1);
        let link = ConnId(2);
        node.handle_accept(client);
        let mut mesh = ShardRings::mesh(2);
        let mut receiver = mesh.pop().unwrap();
        let mut rings = mesh.pop().unwrap();

        // Nothing waits yet: both are read.
        assert!(!reader_must_wait(&node, &rings, client, ReaderOrigin::Accepted));
        assert!(!reader_must_wait(&node, &rings, link, ReaderOrigin::Link));

        // Shard 0 sends past the ring and the overflow limit, shard 1 taking nothing.
        for n in 0..=(RING_CAPACITY + OVERFLOW_MESSAGES_MAX) as u32 {
            rings.send(ShardId(1), ShardMessage::HoldsReleased { conn: ConnId(n), seqs: Vec::new() });
        }
        assert!(rings.backed_up());
        // The client waits; the link is read on.
        assert!(reader_must_wait(&node, &rings, client, ReaderOrigin::Accepted));
        assert!(!reader_must_wait(&node, &rings, link, ReaderOrigin::Link));

        // Shard 1 drains its ring and shard 0 retries until its overflow is empty.
        let (_, consumer) = &mut receiver.inbound[0];
        while rings.has_overflow() {
            while consumer.pop().is_ok() {}
            rings.retry_overflow();
        }
        // The client is read again.
        assert!(!rings.backed_up());
        assert!(!reader_must_wait(&node, &rings, client, ReaderOrigin::Accepted));
    }
}
