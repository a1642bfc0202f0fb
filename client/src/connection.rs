//! A connection to a broker: the handshake, management requests, and the handles to publish and
//! consume.
//!
//! `connect` takes a URL list in the reference grammar (`[amqp:][user[/password]@]addr(,addr)*`,
//! `tcp:` addresses; `broker_list.rs`), dials the addresses in turn until one accepts (a backup
//! refuses with `NotPrimary`), then hands the socket to a supervisor task (`supervisor.rs`) that
//! splits it between a writer task (`writer.rs`) and a reader task (`reader.rs`), and, with
//! `ConnectOptions::reconnect`, dials again when the socket is lost. Every method takes `&self`
//! and may be called from many tasks at once; replies are matched by request id.
//!
//! The connection closes when `close` is called or the `Connection` is dropped: what was queued
//! before (publishes, settlements, cancels) is still sent, then the socket is shut down. The
//! `Publisher` and `Consumer` handles do not keep it open; after it closed they report `Closed`
//! (consumers: `recv` returns `None`).
//!
//! Invariants:
//! - Nothing is sent before the broker's `Hello`; a connection that was not accepted is never
//!   returned.
//! - Every method returns once its reply arrives or the connection ends: a broker `Error` frame, a
//!   lost socket or a protocol violation completes every waiter with that cause.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ringmq_core::frame::{Binding, ExchangeInfo, ExchangeKind, Frame, QueueInfo, QueueOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::argument_check::{check_arguments, check_name, check_prefetch};
use crate::broker_list::parse_broker_list;
use crate::consumer::Consumer;
use crate::consumer_registry::ConsumerSlot;
use crate::error::ClientError;
use crate::failover::Failover;
use crate::ha_status::HaStatus;
use crate::options::ConnectOptions;
use crate::publisher::Publisher;
use crate::request_table::Reply;
use crate::shared::{locked, Shared};
use crate::supervisor::{dial_any, supervise};

/// An open connection to a broker.
#[derive(Debug)]
pub struct Connection {
    /// State shared with the handles and the background tasks.
    shared: Arc<Shared>,
    /// The broker's name and version from the first `Hello`.
    broker: String,
    /// The supervisor task (which runs the reader and writer); awaited by `close`.
    supervisor: Option<JoinHandle<()>>,
}

/// Counters of things the connection ignored, each with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    /// Replies whose request id had no waiter (the reply to a cancel sent on a consumer's drop).
    pub replies_unmatched: u64,
    /// Deliveries that arrived for a subscription already cancelled here; the broker returns them
    /// to the queue.
    pub deliveries_after_cancel: u64,
    /// Confirm ranges dropped from `next_confirm`'s queue because the caller left too many
    /// untaken (still counted by `wait_for_confirms`).
    pub confirm_ranges_dropped: u64,
    /// Publishes sent or queued and not yet confirmed.
    pub unconfirmed: u64,
    /// Times the connection was re-established after a loss (`reconnect`).
    pub reconnects: u64,
    /// Settlements dropped because their deliveries came on a socket that was lost: the broker
    /// redelivers those messages.
    pub settlements_stale: u64,
}

impl Connection {
    /// Connects to the first broker of `url` that accepts as primary and completes the
    /// handshake. `url` is `host:port`, a `SocketAddr`, or a list in the reference grammar
    /// (`[amqp:][user[/password]@]addr(,addr)*`, `addr` = `[tcp:]host[:port]`; credentials are
    /// ignored). Without `reconnect` each address is tried once, in order; with it, passes over
    /// the list repeat (with back-off) until `reconnect_timeout`. Must run inside a tokio
    /// runtime: it spawns the connection's tasks.
    ///
    /// # Errors
    /// `InvalidArgument` for options out of bounds or a URL outside the grammar (`ssl:` included,
    /// until TLS exists). Otherwise the last address's error: `Connect` when TCP fails; `Refused`
    /// with the broker's code and text when it answers with `Error` (unsupported version, not
    /// primary); `ConnectTimeout` when no `Hello` came within `connect_timeout`, or `Silent`
    /// within twice `heartbeat_interval`; `Protocol` for anything else than `Hello`. With
    /// `reconnect`: `ReconnectFailed` once `reconnect_timeout` passed.
    pub async fn connect<A>(url: A, options: ConnectOptions) -> Result<Connection, ClientError>
    where
        A: fmt::Display,
    {
        options.validate()?;
        let addresses = parse_broker_list(&url.to_string())?;
        let mut failover = Failover::new(addresses, options.reconnect_interval, options.reconnect_timeout);
        let dialled = dial_any(&mut failover, &options, None).await?;
        let broker = dialled.broker.clone();
        tracing::debug!(addr = %dialled.addr, %broker, "ringmq connection open");
        let shared = Arc::new(Shared::new(options, dialled.addr.clone()));
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), failover, dialled));
        Ok(Connection { shared, broker, supervisor: Some(supervisor) })
    }

    /// Creates queue `name`, or checks that an equal one exists (`options.passive`: only checks).
    /// `arguments` are further settings as text (`qpid.replicate` and friends).
    ///
    /// # Errors
    /// `Failed` with the broker's code and text (`PreconditionFailed` for a different existing
    /// queue...); `InvalidArgument` for names or arguments past their limits; the connection's
    /// cause when it ended.
    pub async fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
        arguments: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        check_name("queue name", name)?;
        let arguments: Vec<(String, String)> = arguments.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        check_arguments(&arguments)?;
        let name = name.to_owned();
        self.shared
            .request("queue declare", |request| Frame::QueueDeclare { request, name, options, arguments })
            .await?
            .expect_done("queue declare")
    }

    /// Deletes queue `name`; its subscriptions are cancelled.
    ///
    /// # Errors
    /// As `declare_queue` (`NotFound` when there is no such queue).
    pub async fn delete_queue(&self, name: &str) -> Result<(), ClientError> {
        check_name("queue name", name)?;
        let name = name.to_owned();
        self.shared
            .request("queue delete", |request| Frame::QueueDelete { request, name })
            .await?
            .expect_done("queue delete")
    }

    /// Drops every ready message of queue `name`.
    ///
    /// # Errors
    /// As `delete_queue`.
    pub async fn purge_queue(&self, name: &str) -> Result<(), ClientError> {
        check_name("queue name", name)?;
        let name = name.to_owned();
        self.shared
            .request("queue purge", |request| Frame::QueuePurge { request, name })
            .await?
            .expect_done("queue purge")
    }

    /// Every queue with its counts.
    ///
    /// # Errors
    /// `Failed` or the connection's cause.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>, ClientError> {
        match self.shared.request("queue list", |request| Frame::QueueList { request }).await? {
            Reply::Queues(queues) => Ok(queues),
            other => Err(other.unexpected("queue list")),
        }
    }

    /// Creates exchange `name` of type `kind`, or checks that an equal one exists.
    ///
    /// # Errors
    /// As `declare_queue`.
    pub async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), ClientError> {
        check_name("exchange name", name)?;
        let name = name.to_owned();
        self.shared
            .request("exchange declare", |request| Frame::ExchangeDeclare {
                request,
                name,
                kind,
                passive: false,
                arguments: Vec::new(),
            })
            .await?
            .expect_done("exchange declare")
    }

    /// Deletes exchange `name` and its bindings.
    ///
    /// # Errors
    /// As `delete_queue`.
    pub async fn delete_exchange(&self, name: &str) -> Result<(), ClientError> {
        check_name("exchange name", name)?;
        let name = name.to_owned();
        self.shared
            .request("exchange delete", |request| Frame::ExchangeDelete { request, name })
            .await?
            .expect_done("exchange delete")
    }

    /// Every exchange.
    ///
    /// # Errors
    /// `Failed` or the connection's cause.
    pub async fn list_exchanges(&self) -> Result<Vec<ExchangeInfo>, ClientError> {
        match self.shared.request("exchange list", |request| Frame::ExchangeList { request }).await? {
            Reply::Exchanges(exchanges) => Ok(exchanges),
            other => Err(other.unexpected("exchange list")),
        }
    }

    /// The broker's HA state. Served on a backup too, to an admin connection.
    ///
    /// # Errors
    /// `Failed` or the connection's cause.
    pub async fn ha_status(&self) -> Result<HaStatus, ClientError> {
        match self.shared.request("ha status", |request| Frame::HaStatus { request }).await? {
            Reply::HaStatus(status) => Ok(status),
            other => Err(other.unexpected("ha status")),
        }
    }

    /// A promotion check's fence (a cluster manager's command, before promoting another broker
    /// that knows `epoch`): the broker stops acknowledging the ready sets of any primary of that
    /// epoch or older (or of the newest it has seen), so such a primary keeps holding confirms for
    /// any backup it drops; then its HA state, as `ha_status`.
    ///
    /// # Errors
    /// `Failed` or the connection's cause.
    pub async fn ha_fence(&self, epoch: u64) -> Result<HaStatus, ClientError> {
        match self.shared.request("ha fence", |request| Frame::HaFence { request, epoch }).await? {
            Reply::HaStatus(status) => Ok(status),
            other => Err(other.unexpected("ha fence")),
        }
    }

    /// Asks the broker to become the primary (a cluster manager's command).
    ///
    /// # Errors
    /// `Failed` with the broker's reason when its state does not allow it (standalone, catching
    /// up, already primary); the connection's cause when it ended.
    pub async fn ha_promote(&self) -> Result<(), ClientError> {
        self.shared.request("ha promote", |request| Frame::HaPromote { request }).await?.expect_done("ha promote")
    }

    /// Binds `queue` to `exchange` with binding key `key` (idempotent).
    ///
    /// # Errors
    /// As `declare_queue`.
    pub async fn bind(&self, exchange: &str, queue: &str, key: &str) -> Result<(), ClientError> {
        let binding = binding(exchange, queue, key)?;
        self.shared.request("bind", |request| Frame::Bind { request, binding }).await?.expect_done("bind")
    }

    /// Removes the binding of `queue` to `exchange` with key `key`.
    ///
    /// # Errors
    /// As `declare_queue`.
    pub async fn unbind(&self, exchange: &str, queue: &str, key: &str) -> Result<(), ClientError> {
        let binding = binding(exchange, queue, key)?;
        self.shared.request("unbind", |request| Frame::Unbind { request, binding }).await?.expect_done("unbind")
    }

    /// The connection's publisher. There is one per connection: sequence numbers and confirms
    /// belong to the connection.
    ///
    /// # Errors
    /// `PublisherTaken` on a second call; the connection's cause when it ended.
    pub fn publisher(&self) -> Result<Publisher, ClientError> {
        self.shared.check_open()?;
        if self.shared.publisher_taken.swap(true, Ordering::AcqRel) {
            return Err(ClientError::PublisherTaken);
        }
        Ok(Publisher::new(Arc::clone(&self.shared)))
    }

    /// Subscribes to `queue`; the broker keeps at most `prefetch` deliveries unsettled for it.
    /// With `reconnect` the subscription is made again on every new connection; a subscribe whose
    /// request was lost with the connection still returns the `Consumer`, subscribed on the next.
    ///
    /// # Errors
    /// `InvalidArgument` for a prefetch outside `1..=PREFETCH_MAX` or a long name; `Failed` with
    /// the broker's code and text (`NotFound`, `ResourceLocked`...); the connection's cause.
    pub async fn subscribe(&self, queue: &str, prefetch: u32) -> Result<Consumer, ClientError> {
        check_name("queue name", queue)?;
        check_prefetch(prefetch)?;
        let consumer = self.shared.next_consumer_id();
        let (events, receiver) = mpsc::unbounded_channel();
        let slot = ConsumerSlot::new(events, queue.to_owned(), prefetch);
        let subscription = slot.subscription(consumer);
        let pending = self.shared.subscribe(consumer, slot)?;
        let result = match pending.reply.await {
            Ok(result) => result.and_then(|reply| reply.expect_done("subscribe")),
            // The table only drops a waiter by completing it.
            Err(_) => Err(self.shared.closed_error()),
        };
        match result {
            // The socket was lost: the slot stays, so the reconnect subscribes it again.
            Ok(()) | Err(ClientError::Reconnecting { .. }) => {}
            Err(err) => {
                locked(&self.shared.consumers).remove(consumer);
                return Err(err);
            }
        }
        Ok(Consumer::new(Arc::clone(&self.shared), subscription, receiver, pending.session))
    }

    /// Closes the connection: what was queued is sent, the socket is shut down, and the call
    /// returns once the broker closed its side (or after `CLOSE_LINGER`). Unconfirmed publishes
    /// are not waited for: call `Publisher::wait_for_confirms` first.
    ///
    /// # Errors
    /// The cause the connection had already failed with, if it had.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let earlier = self.shared.closed.get().cloned();
        self.shared.close(ClientError::Closed);
        if let Some(task) = self.supervisor.take() {
            // It ends by itself once closed; a panic inside it was an assertion, already
            // reported by the panic hook, and the connection is closed either way.
            let _ = task.await;
        }
        match earlier {
            Some(ClientError::Closed) | None => Ok(()),
            Some(cause) => Err(cause),
        }
    }

    /// The broker's name and version, as its first `Hello` gave them.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// The address (`host:port`) of the broker the connection uses now (the last one reached).
    pub fn peer(&self) -> String {
        locked(&self.shared.peer).clone()
    }

    /// Why the connection ended, once it has.
    pub fn closed_reason(&self) -> Option<ClientError> {
        self.shared.closed.get().cloned()
    }

    /// Counters of ignored input, and the publishes in flight.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            replies_unmatched: self.shared.replies_unmatched.load(Ordering::Relaxed),
            deliveries_after_cancel: self.shared.deliveries_after_cancel.load(Ordering::Relaxed),
            confirm_ranges_dropped: locked(&self.shared.confirms).ranges_dropped(),
            unconfirmed: locked(&self.shared.outbox).window().inflight(),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            settlements_stale: self.shared.settlements_stale.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Connection {
    /// Starts a graceful close; the tasks finish sending what was queued on their own.
    fn drop(&mut self) {
        self.shared.close(ClientError::Closed);
    }
}

fn binding(exchange: &str, queue: &str, key: &str) -> Result<Binding, ClientError> {
    check_name("exchange name", exchange)?;
    check_name("queue name", queue)?;
    check_name("binding key", key)?;
    Ok(Binding { exchange: exchange.to_owned(), queue: queue.to_owned(), key: key.to_owned() })
}
