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
use std::os::fd::AsFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use ringmq_core::broker_state::BrokerState;
use ringmq_core::ids::{ConnId, ShardId};
use ringmq_core::shard::Shard;

use ringmq_core::replication::{Hold, ReplicationEvent};
use ringmq_ha::limits::BATCH_BYTES_MAX;
use ringmq_ha::primary_replication::PrimaryReplication;
use ringmq_ha::record::encode_batch;

use crate::epoch_watch::{epoch_watch_task, step_down};
use crate::link::{backup_link_task, LinkConfig, LinkTimer};
use crate::link_server::{accept_backup_link, adopt_backup_link};
use crate::primary_role::{
    begin_recovery, handle_caught_up, handle_expected_timed_out, handle_link_lost, handle_link_opened, PrimaryRole,
};
use crate::shard_control::{Control, ShardControls};
use crate::shard_ring::ShardRings;

/// Bytes reserved in a connection's read buffer before each read. Large enough that one read
/// takes several 64 KiB publish frames at once.
pub(crate) const READ_BUFFER_BYTES: usize = 256 * 1024;
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
    /// Writers of the open connections, backup links served here included.
    pub(crate) writers: RefCell<HashMap<ConnId, Rc<WriteQueue>>>,
    /// The next connection id.
    next_conn: Cell<u32>,
    /// Heartbeat clocks of the backup links served here (on a primary), by connection.
    pub(crate) link_timers: RefCell<HashMap<ConnId, Rc<LinkTimer>>>,
    /// Sockets of the backup links served here, to close one whose stream overflowed.
    pub(crate) link_streams: RefCell<HashMap<ConnId, Rc<TcpStream>>>,
    /// This shard's replication streams to its backups (on a primary, from the first link on).
    pub(crate) replication: RefCell<Option<PrimaryReplication>>,
    /// Shard 0 of a primary: its backups, and recovering mode (module `primary_role`).
    pub(crate) primary_role: RefCell<PrimaryRole>,
    /// The HA state as of the last pump, to act on changes (promotion, stepping down).
    seen_state: Cell<BrokerState>,
    /// This context itself, for the tasks `pump` may start.
    this: Weak<ShardContext>,
    /// The control queues between the shards' IO shells.
    pub(crate) controls: ShardControls,
    /// On a backup's shard 0: the primary's ready backups as it last said (`members`); the
    /// others are this broker's expected backups if it is promoted.
    pub(crate) ready_members: RefCell<Vec<String>>,
    /// Whether this shard's `backup_link_task` runs.
    pub(crate) link_task_running: Cell<bool>,
    /// On a backup: this shard's link to the primary, to close it when the broker is promoted.
    pub(crate) outgoing_link: RefCell<Option<Rc<TcpStream>>>,
    /// Client readers waiting for the replication streams to drain (`producers_must_pause`).
    paused_readers: RefCell<Vec<Waker>>,
    /// Scratch for `pump`: replication events, released holds, and the links to write batches to.
    scratch: RefCell<(Vec<ReplicationEvent>, Vec<Hold>, Vec<u64>)>,
    /// Broker-to-broker link settings.
    pub(crate) link: LinkConfig,
}

impl ShardContext {
    /// A fresh connection id.
    pub(crate) fn new_conn(&self) -> ConnId {
        let conn = ConnId(self.next_conn.get());
        self.next_conn.set(conn.0.wrapping_add(1));
        conn
    }

    /// Shards in this broker.
    pub(crate) fn shard_count(&self) -> u16 {
        self.controls.len()
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

/// Runs shard `rings.id` on the current thread until the listener fails.
///
/// # Errors
/// The listener could not be registered with the runtime.
pub(crate) async fn run_shard(
    shard: Shard,
    rings: ShardRings,
    listener: std::net::TcpListener,
    link: LinkConfig,
    controls: ShardControls,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let shard_count = controls.len();
    let state = shard.ha().state();
    let context = Rc::new_cyclic(|this| ShardContext {
        shard: RefCell::new(shard),
        rings: RefCell::new(rings),
        writers: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        link_timers: RefCell::new(HashMap::new()),
        link_streams: RefCell::new(HashMap::new()),
        replication: RefCell::new(None),
        primary_role: RefCell::new(PrimaryRole::new(shard_count)),
        seen_state: Cell::new(state),
        this: this.clone(),
        controls,
        ready_members: RefCell::new(Vec::new()),
        link_task_running: Cell::new(false),
        outgoing_link: RefCell::new(None),
        paused_readers: RefCell::new(Vec::new()),
        scratch: RefCell::new((Vec::new(), Vec::new(), Vec::new())),
        link,
    });
    compio::runtime::spawn(inbox_task(context.clone())).detach();
    // On a backup, every shard keeps its own link to the primary's same-numbered shard, which
    // streams that shard's queues. Shard 0 of a primary watches for a newer primary.
    ensure_backup_links(&context);
    if context.shard.borrow().id() == ShardId(0) && !context.link.primary_addresses.is_empty() {
        compio::runtime::spawn(epoch_watch_task(context.clone())).detach();
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
        let conn = context.new_conn();
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
    loop {
        wait_for_replication(&context).await;
        buffer.reserve(READ_BUFFER_BYTES);
        // `append` reads after the partial frame already in the buffer; `read` would overwrite it.
        let BufResult(result, returned) = (&*stream).append(buffer).await;
        buffer = returned;
        match result {
            Ok(0) => break,
            Ok(_) => {
                context.shard.borrow_mut().handle_read(conn, &mut buffer);
                pump(&context);
                if context.shard.borrow().is_backup_link(conn) {
                    // Past `hello`, a backup link speaks the replication link protocol, which
                    // the transport serves (module `link_server`); the core forgets it.
                    context.shard.borrow_mut().handle_closed(conn);
                    let queue = context.writers.borrow_mut().remove(&conn);
                    pump(&context);
                    if let Some(queue) = queue {
                        accept_backup_link(context, stream, conn, queue, buffer).await;
                    }
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(%error, conn = conn.0, "read failed");
                break;
            }
        }
    }
    context.shard.borrow_mut().handle_closed(conn);
    if let Some(queue) = context.writers.borrow_mut().remove(&conn) {
        queue.push(BytesMut::new(), true);
    }
    pump(&context);
}

/// Backpressure: while a replication stream of this shard holds too many unsent records, client
/// connections are not read (neither publishes nor acks, which both add records) until batches
/// went out and confirms came back. Backup links are read on, since their confirms end the wait.
async fn wait_for_replication(context: &ShardContext) {
    poll_fn(|cx| {
        let paused = context.replication.borrow().as_ref().is_some_and(PrimaryReplication::producers_must_pause);
        if paused {
            context.paused_readers.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
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
    if queue.detached.get() {
        return;
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
        let own = context.shard.borrow().id().0;
        for control in context.controls.take(own) {
            handle_control(&context, control);
            moved = true;
        }
        if moved {
            pump(&context);
            ensure_backup_links(&context);
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
            if context.rings.borrow().has_inbound() || context.controls.has_pending(own) {
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

/// Runs the shard and its replication streams until nothing moves and carries their outputs out;
/// then acts on a change of the broker's HA state (`on_state_change`).
pub(crate) fn pump(context: &ShardContext) {
    let Some(state) = pump_shard(context) else { return };
    if let Some(context) = context.this.upgrade() {
        on_state_change(&context, state);
    }
}

/// The work of `pump`; returns the HA state if it changed since the last pump.
fn pump_shard(context: &ShardContext) -> Option<BrokerState> {
    let mut shard = context.shard.borrow_mut();
    loop {
        shard.drive();
        if !replicate(context, &mut shard) {
            break;
        }
    }
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
    send_batches(context, shard.id().0);
    resume_paused_readers(context);
    if shard.ha().state().is_backup() {
        if context.replication.borrow_mut().take().is_some() {
            // Stepped down: the streams to our former backups end, and with them their links.
            shard.set_replica_holds(0);
            for stream in context.link_streams.borrow().values() {
                shutdown(stream);
            }
        }
    } else if let Some(link) = context.outgoing_link.borrow_mut().take() {
        // Promoted: the link to the old primary ends; its task sees the end and stops.
        shutdown(&link);
    }
    let state = shard.ha().state();
    let changed = (state != context.seen_state.replace(state)).then_some(state);
    if !shard.has_peer_output() {
        return changed;
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
    changed
}

/// Feeds the shard's replication events to its streams and hands released holds back to the
/// shard. Returns whether holds were released (the shard has confirms to drive).
fn replicate(context: &ShardContext, shard: &mut Shard) -> bool {
    let mut scratch = context.scratch.borrow_mut();
    let (events, holds, _) = &mut *scratch;
    shard.poll_replication(events);
    let mut replication = context.replication.borrow_mut();
    let Some(replication) = replication.as_mut() else {
        // No backup has linked to this shard yet: there is nobody to tell.
        events.clear();
        return false;
    };
    for event in events.drain(..) {
        replication.handle_event(event);
    }
    holds.clear();
    if replication.poll_released(holds) == 0 {
        return false;
    }
    shard.handle_holds_released(holds);
    true
}

/// Writes every batch the streams have ready to their links, reports caught-up backups to shard
/// 0, and closes links whose stream overflowed.
fn send_batches(context: &ShardContext, own: u16) {
    let mut replication = context.replication.borrow_mut();
    let Some(replication) = replication.as_mut() else { return };
    let writers = context.writers.borrow();
    let link_timers = context.link_timers.borrow();
    let mut scratch = context.scratch.borrow_mut();
    let links = &mut scratch.2;
    links.clear();
    links.extend(replication.links());
    for &link in links.iter() {
        let conn = ConnId(link as u32);
        let mut buffer = BytesMut::new();
        while let Some(batch) = replication.poll_batch(link, BATCH_BYTES_MAX as usize) {
            // One allocation per batch: growing the buffer while encoding copied it again and again.
            buffer.reserve(batch.encoded_len());
            encode_batch(&batch, &mut buffer);
        }
        if buffer.is_empty() {
            continue;
        }
        if let Some(queue) = writers.get(&conn) {
            if let Some(timer) = link_timers.get(&conn) {
                timer.heartbeat.borrow_mut().handle_sent(Instant::now());
            }
            queue.push(buffer, false);
        }
    }
    while let Some((_, backup)) = replication.poll_caught_up() {
        context.controls.send(0, Control::CaughtUp { backup, shard: own });
    }
    while let Some(link) = replication.poll_overflowed() {
        tracing::warn!(link, "a backup fell too far behind its replication stream; dropping its link");
        if let Some(stream) = context.link_streams.borrow().get(&ConnId(link as u32)) {
            shutdown(stream);
        }
    }
}

/// Wakes the client readers `wait_for_replication` parked, once the streams no longer ask for a
/// pause.
fn resume_paused_readers(context: &ShardContext) {
    if context.paused_readers.borrow().is_empty() {
        return;
    }
    let paused = context.replication.borrow().as_ref().is_some_and(PrimaryReplication::producers_must_pause);
    if !paused {
        for waker in context.paused_readers.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// The broker's HA state changed: a promoted shard opens its replication for the expected
/// backups; a backup (again) links to the primary.
fn on_state_change(context: &Rc<ShardContext>, state: BrokerState) {
    if state == BrokerState::Recovering {
        begin_recovery(context);
    }
    ensure_backup_links(context);
}

/// Starts this shard's link to the primary if the broker is a backup of a cluster and none runs
/// (at startup, and after a primary stepped down).
pub(crate) fn ensure_backup_links(context: &Rc<ShardContext>) {
    if context.link.primary_addresses.is_empty() || context.link_task_running.get() {
        return;
    }
    if !context.shard.borrow().ha().state().is_backup() {
        return;
    }
    context.link_task_running.set(true);
    compio::runtime::spawn(backup_link_task(context.clone())).detach();
}

/// Carries out a control message from another shard (or this one).
fn handle_control(context: &Rc<ShardContext>, control: Control) {
    match control {
        Control::AdoptLink { stream, pending, open } => adopt_backup_link(context, stream, pending, open),
        Control::LinkOpened { backup, shard, conn } => handle_link_opened(context, &backup, shard, conn),
        Control::CaughtUp { backup, shard } => handle_caught_up(context, &backup, shard),
        Control::LinkLost { backup, shard } => handle_link_lost(context, &backup, shard),
        Control::Superseded { epoch } => step_down(context, epoch),
        Control::Members { ready } => *context.ready_members.borrow_mut() = ready,
        Control::ExpectedTimedOut { backups } => handle_expected_timed_out(context, &backups),
    }
}

/// Shuts a socket down in both directions, so that its reader sees the end.
pub(crate) fn shutdown(stream: &TcpStream) {
    if let Err(error) = socket2::SockRef::from(&stream.as_fd()).shutdown(std::net::Shutdown::Both) {
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
