//! One shard's event loop: an io_uring runtime (compio) on a thread pinned to its core, that
//! accepts connections on the shared port, reads and writes them, drains the rings from other
//! shards, and feeds it all to the shard's state machine.
//!
//! Tasks on the shard's thread: one acceptor, one inbox task, and a reader and a writer per
//! connection. They share the `Shard` through a `RefCell` that is never borrowed across an
//! await, so no two of them ever see it half-changed.
//!
//! After every input the loop *pumps*: `Shard::drive`, then every `poll_transmit` goes to its
//! connection's writer and every `poll_peer` batch into its ring.
//!
//! Broker-to-broker links (module `link`): on a primary, a connection the shard admitted as a
//! backup link also gets a heartbeat task; on shard 0 of a backup, a link task dials the primary.
//!
//! Invariants:
//! - Only this thread touches the shard, its connections and its ring ends.
//! - A connection's writer writes buffers in the order `poll_transmit` produced them; after a
//!   buffer marked `close`, it shuts the socket down and writes nothing more.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::shard::Shard;

use crate::link::{backup_link_task, heartbeat_task, LinkConfig, LinkTimer};
use crate::shard_ring::ShardRings;

/// Bytes reserved in a connection's read buffer before each read. Large enough that one read
/// takes several 64 KiB publish frames at once.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// How long the inbox task waits before retrying a full ring.
const OVERFLOW_RETRY: Duration = Duration::from_micros(50);
/// Most messages taken from one inbound ring before looking at the others, for fairness.
const INBOX_BATCH_MAX: usize = 64;

/// Everything the shard's tasks share.
pub(crate) struct ShardContext {
    /// The state machine.
    pub(crate) shard: RefCell<Shard>,
    /// This shard's ring ends.
    rings: RefCell<ShardRings>,
    /// Writers of the open connections.
    writers: RefCell<HashMap<ConnId, Rc<WriteQueue>>>,
    /// The next connection id.
    next_conn: Cell<u32>,
    /// Heartbeat clocks of the admitted backup links (on a primary), by connection.
    link_timers: RefCell<HashMap<ConnId, Rc<LinkTimer>>>,
    /// Broker-to-broker link settings.
    pub(crate) link: LinkConfig,
}

/// Buffers waiting for one connection's writer task.
#[derive(Default)]
pub(crate) struct WriteQueue {
    /// Buffers in order.
    buffers: RefCell<VecDeque<BytesMut>>,
    /// Close the socket after the queued buffers.
    close: Cell<bool>,
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
}

/// Runs shard `rings.id` on the current thread until the listener fails.
///
/// # Errors
/// The listener could not be registered with the runtime.
pub async fn run_shard(
    shard: Shard,
    rings: ShardRings,
    listener: std::net::TcpListener,
    link: LinkConfig,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let context = Rc::new(ShardContext {
        shard: RefCell::new(shard),
        rings: RefCell::new(rings),
        writers: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        link_timers: RefCell::new(HashMap::new()),
        link,
    });
    compio::runtime::spawn(inbox_task(context.clone())).detach();
    // One outgoing link per backup broker, on shard 0 for now: once replication exists, each
    // shard gets its own link to the primary's same shard, carrying that shard's streams.
    let is_coordinator = context.shard.borrow().id() == ShardId(0);
    if is_coordinator && !context.link.primary_addresses.is_empty() {
        compio::runtime::spawn(backup_link_task(context.clone())).detach();
    }
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or similar: keep serving the open connections.
                tracing::warn!(%error, "accept failed");
                compio::runtime::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "TCP_NODELAY failed");
        }
        let conn = ConnId(context.next_conn.get());
        context.next_conn.set(conn.0.wrapping_add(1));
        let queue = Rc::new(WriteQueue::default());
        context.writers.borrow_mut().insert(conn, queue.clone());
        context.shard.borrow_mut().handle_accept(conn);
        let stream = Rc::new(stream);
        compio::runtime::spawn(writer_task(stream.clone(), queue)).detach();
        compio::runtime::spawn(reader_task(context.clone(), stream, conn)).detach();
    }
}

/// Reads a connection until it closes, feeding the shard.
async fn reader_task(context: Rc<ShardContext>, stream: Rc<TcpStream>, conn: ConnId) {
    let mut buffer = BytesMut::with_capacity(READ_BUFFER_BYTES);
    // Set once the shard admits this connection as a backup link.
    let mut link_timer: Option<Rc<LinkTimer>> = None;
    loop {
        buffer.reserve(READ_BUFFER_BYTES);
        // `append` reads after the partial frame already in the buffer; `read` would overwrite it.
        let BufResult(result, returned) = (&*stream).append(buffer).await;
        buffer = returned;
        match result {
            Ok(0) => break,
            Ok(_) => {
                context.shard.borrow_mut().handle_read(conn, &mut buffer);
                match &link_timer {
                    Some(timer) => timer.heartbeat.borrow_mut().handle_received(Instant::now()),
                    None if context.shard.borrow().is_backup_link(conn) => {
                        link_timer = Some(start_link_heartbeat(&context, &stream, conn));
                    }
                    None => {}
                }
                pump(&context);
            }
            Err(error) => {
                tracing::debug!(%error, conn = conn.0, "read failed");
                break;
            }
        }
    }
    if let Some(timer) = link_timer {
        timer.close();
        context.link_timers.borrow_mut().remove(&conn);
        tracing::info!(conn = conn.0, "backup link closed");
    }
    context.shard.borrow_mut().handle_closed(conn);
    if let Some(queue) = context.writers.borrow_mut().remove(&conn) {
        queue.push(BytesMut::new(), true);
    }
    pump(&context);
}

/// A primary admitted `conn` as a backup link: starts its heartbeats.
fn start_link_heartbeat(context: &Rc<ShardContext>, stream: &Rc<TcpStream>, conn: ConnId) -> Rc<LinkTimer> {
    let timer = Rc::new(LinkTimer::new(Instant::now(), context.link.heartbeat_interval));
    context.link_timers.borrow_mut().insert(conn, timer.clone());
    let queue = context.writers.borrow().get(&conn).cloned();
    if let Some(queue) = queue {
        tracing::info!(conn = conn.0, "backup link accepted");
        compio::runtime::spawn(heartbeat_task(stream.clone(), queue, timer.clone(), format!("backup link {}", conn.0)))
            .detach();
    }
    timer
}

/// Writes a connection's buffers in order; shuts it down when told to close.
pub(crate) async fn writer_task(stream: Rc<TcpStream>, queue: Rc<WriteQueue>) {
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
        let BufResult(result, _) = (&*stream).write_all(buffer).await;
        if let Err(error) = result {
            tracing::debug!(%error, "write failed");
            break;
        }
    }
    // Shutting down the write side makes the peer see the end; our reader then sees EOF or an
    // error and cleans up the session.
    if let Err(error) = AsyncWrite::shutdown(&mut &*stream).await {
        tracing::debug!(%error, "shutdown failed");
    }
}

/// Drains the rings from other shards into the shard, sleeping on the doorbell when idle.
async fn inbox_task(context: Rc<ShardContext>) {
    let doorbell = {
        let rings = context.rings.borrow();
        rings.doorbells[usize::from(rings.id.0)].clone()
    };
    loop {
        let mut moved = false;
        {
            let mut rings = context.rings.borrow_mut();
            let mut shard = context.shard.borrow_mut();
            for (_, consumer) in rings.inbound.iter_mut() {
                for _ in 0..INBOX_BATCH_MAX {
                    match consumer.pop() {
                        Ok(message) => {
                            shard.handle_peer(message);
                            moved = true;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        if moved {
            pump(&context);
            // Let connection tasks run between inbox batches.
            yield_now().await;
            continue;
        }
        let overflow = context.rings.borrow_mut().retry_overflow();
        if overflow {
            compio::runtime::time::sleep(OVERFLOW_RETRY).await;
            continue;
        }
        poll_fn(|cx| {
            doorbell.prepare_sleep(cx.waker());
            if context.rings.borrow().has_inbound() {
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

/// Runs the shard until nothing moves and carries its outputs out.
fn pump(context: &ShardContext) {
    let mut shard = context.shard.borrow_mut();
    shard.drive();
    {
        let writers = context.writers.borrow();
        let link_timers = context.link_timers.borrow();
        while let Some((conn, buffer, close)) = shard.poll_transmit() {
            if let Some(queue) = writers.get(&conn) {
                if let Some(timer) = link_timers.get(&conn) {
                    timer.heartbeat.borrow_mut().handle_sent(Instant::now());
                }
                queue.push(buffer, close);
            }
        }
    }
    if !shard.has_peer_output() {
        return;
    }
    let mut rings = context.rings.borrow_mut();
    rings.retry_overflow();
    let own = shard.id();
    for index in 0..rings.outbound.len() {
        let to = ShardId(index as u16);
        if to == own {
            continue;
        }
        let mut wake = false;
        for message in shard.poll_peer(to) {
            wake |= rings.send(to, message);
        }
        if wake {
            rings.doorbells[index].ring();
        }
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
