//! The client for plain threads: the async API driven by a runtime the connection owns.
//!
//! `Connection::connect` starts a one-worker tokio runtime; the connection's reader and writer
//! tasks run on that worker, so confirms and deliveries keep flowing between calls. Each method
//! blocks the calling thread with `block_on` until the async method completes. The hot paths skip
//! `block_on` when they can: `Publisher::publish` queues directly while the window has room, and
//! `Consumer::recv` returns a delivery of the frame already received without entering the runtime.
//!
//! Not for async code: calling these methods (or dropping the last handle, which shuts the
//! runtime down) from inside a tokio runtime panics. Use the async API there.
//!
//! Invariants:
//! - The runtime lives as long as the last handle (`Connection`, `Publisher`, `Consumer`) of the
//!   connection, so a handle never blocks on a runtime that stopped.
//! - Dropping the `Connection` closes it gracefully (queued frames are sent) before returning.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::confirm_queue::ConfirmSummary;
use crate::connection::ConnectionStats;
use crate::consumer::Delivery;
use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::outbox::PublishPush;
use ringmq_core::frame::{ConfirmRange, ExchangeInfo, ExchangeKind, Message, QueueInfo, QueueOptions};
use ringmq_core::ids::{ConsumerId, Seq, Tag};

/// A blocking connection; see the module doc.
#[derive(Debug)]
pub struct Connection {
    /// The async connection; `None` only while closing.
    inner: Option<crate::Connection>,
    /// The runtime its tasks run on, shared with the handles.
    runtime: Arc<Runtime>,
}

impl Connection {
    /// Connects and completes the handshake; see `crate::Connection::connect`.
    ///
    /// # Errors
    /// `Runtime` when the runtime cannot start; otherwise as `crate::Connection::connect`.
    ///
    /// # Panics
    /// When called from inside a tokio runtime.
    pub fn connect<A>(addr: A, options: ConnectOptions) -> Result<Connection, ClientError>
    where
        A: fmt::Display,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ringmq-client")
            .enable_all()
            .build()
            .map_err(|err| ClientError::Runtime { source: Arc::new(err) })?;
        let inner = runtime.block_on(crate::Connection::connect(addr, options))?;
        Ok(Connection { inner: Some(inner), runtime: Arc::new(runtime) })
    }

    /// See `crate::Connection::declare_queue`.
    ///
    /// # Errors
    /// As the async method.
    pub fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
        arguments: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().declare_queue(name, options, arguments))
    }

    /// See `crate::Connection::delete_queue`.
    ///
    /// # Errors
    /// As the async method.
    pub fn delete_queue(&self, name: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().delete_queue(name))
    }

    /// See `crate::Connection::purge_queue`.
    ///
    /// # Errors
    /// As the async method.
    pub fn purge_queue(&self, name: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().purge_queue(name))
    }

    /// See `crate::Connection::list_queues`.
    ///
    /// # Errors
    /// As the async method.
    pub fn list_queues(&self) -> Result<Vec<QueueInfo>, ClientError> {
        self.runtime.block_on(self.inner().list_queues())
    }

    /// See `crate::Connection::ha_status`.
    ///
    /// # Errors
    /// As the async method.
    pub fn ha_status(&self) -> Result<crate::HaStatus, ClientError> {
        self.runtime.block_on(self.inner().ha_status())
    }

    /// See `crate::Connection::ha_fence`.
    ///
    /// # Errors
    /// As the async method.
    pub fn ha_fence(&self, epoch: u64) -> Result<crate::HaStatus, ClientError> {
        self.runtime.block_on(self.inner().ha_fence(epoch))
    }

    /// See `crate::Connection::ha_promote`.
    ///
    /// # Errors
    /// As the async method.
    pub fn ha_promote(&self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().ha_promote())
    }

    /// See `crate::Connection::declare_exchange`.
    ///
    /// # Errors
    /// As the async method.
    pub fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().declare_exchange(name, kind))
    }

    /// See `crate::Connection::delete_exchange`.
    ///
    /// # Errors
    /// As the async method.
    pub fn delete_exchange(&self, name: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().delete_exchange(name))
    }

    /// See `crate::Connection::list_exchanges`.
    ///
    /// # Errors
    /// As the async method.
    pub fn list_exchanges(&self) -> Result<Vec<ExchangeInfo>, ClientError> {
        self.runtime.block_on(self.inner().list_exchanges())
    }

    /// See `crate::Connection::bind`.
    ///
    /// # Errors
    /// As the async method.
    pub fn bind(&self, exchange: &str, queue: &str, key: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().bind(exchange, queue, key))
    }

    /// See `crate::Connection::unbind`.
    ///
    /// # Errors
    /// As the async method.
    pub fn unbind(&self, exchange: &str, queue: &str, key: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner().unbind(exchange, queue, key))
    }

    /// See `crate::Connection::publisher`.
    ///
    /// # Errors
    /// As the async method.
    pub fn publisher(&self) -> Result<Publisher, ClientError> {
        Ok(Publisher { inner: self.inner().publisher()?, runtime: Arc::clone(&self.runtime) })
    }

    /// See `crate::Connection::subscribe`.
    ///
    /// # Errors
    /// As the async method.
    pub fn subscribe(&self, queue: &str, prefetch: u32) -> Result<Consumer, ClientError> {
        let inner = self.runtime.block_on(self.inner().subscribe(queue, prefetch))?;
        Ok(Consumer { inner, runtime: Arc::clone(&self.runtime) })
    }

    /// Closes gracefully; see `crate::Connection::close`.
    ///
    /// # Errors
    /// The cause the connection had already failed with, if it had.
    pub fn close(mut self) -> Result<(), ClientError> {
        match self.inner.take() {
            Some(inner) => self.runtime.block_on(inner.close()),
            None => Ok(()),
        }
    }

    /// The broker's name and version, as its first `Hello` gave them.
    pub fn broker(&self) -> &str {
        self.inner().broker()
    }

    /// See `crate::Connection::peer`.
    pub fn peer(&self) -> String {
        self.inner().peer()
    }

    /// Why the connection ended, once it has.
    pub fn closed_reason(&self) -> Option<ClientError> {
        self.inner().closed_reason()
    }

    /// See `crate::Connection::stats`.
    pub fn stats(&self) -> ConnectionStats {
        self.inner().stats()
    }

    fn inner(&self) -> &crate::Connection {
        self.inner.as_ref().expect("the inner connection is present until close or drop")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // Dropping cannot report; a failure was already reported to every waiter.
            let _ = self.runtime.block_on(inner.close());
        }
    }
}

/// A blocking publisher; see `crate::Publisher`.
#[derive(Debug)]
pub struct Publisher {
    /// The async publisher.
    inner: crate::Publisher,
    /// The connection's runtime.
    runtime: Arc<Runtime>,
}

impl Publisher {
    /// Publishes; blocks only while the publish window is full. See `crate::Publisher::publish`.
    ///
    /// # Errors
    /// As the async method.
    pub fn publish(&self, exchange: &str, message: Message) -> Result<Seq, ClientError> {
        match self.inner.try_publish(exchange, message)? {
            PublishPush::Queued(seq) => Ok(seq),
            PublishPush::WindowFull(message) => self.runtime.block_on(self.inner.publish(exchange, message)),
        }
    }

    /// See `crate::Publisher::next_confirm`.
    ///
    /// # Errors
    /// As the async method.
    pub fn next_confirm(&self) -> Result<Option<ConfirmRange>, ClientError> {
        self.runtime.block_on(self.inner.next_confirm())
    }

    /// See `crate::Publisher::wait_for_confirms`.
    ///
    /// # Errors
    /// As the async method.
    pub fn wait_for_confirms(&self) -> Result<ConfirmSummary, ClientError> {
        self.runtime.block_on(self.inner.wait_for_confirms())
    }

    /// Publishes sent or queued and not yet confirmed.
    pub fn unconfirmed(&self) -> u64 {
        self.inner.unconfirmed()
    }

    /// The sequence number the next publish gets.
    pub fn next_seq(&self) -> Seq {
        self.inner.next_seq()
    }
}

/// A blocking consumer; see `crate::Consumer`.
#[derive(Debug)]
pub struct Consumer {
    /// The async consumer.
    inner: crate::Consumer,
    /// The connection's runtime.
    runtime: Arc<Runtime>,
}

impl Consumer {
    /// The next delivery; blocks until one arrives. See `crate::Consumer::recv`.
    ///
    /// # Errors
    /// As the async method.
    pub fn recv(&mut self) -> Result<Option<Delivery>, ClientError> {
        if let Some(delivery) = self.inner.try_next() {
            return Ok(Some(delivery));
        }
        self.runtime.block_on(self.inner.recv())
    }

    /// As `recv`, waiting at most `timeout`.
    ///
    /// # Errors
    /// `Timeout` when nothing arrived in time; otherwise as `recv`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        if let Some(delivery) = self.inner.try_next() {
            return Ok(Some(delivery));
        }
        let inner = &mut self.inner;
        // The timer must be created inside the runtime.
        match self.runtime.block_on(async { tokio::time::timeout(timeout, inner.recv()).await }) {
            Ok(result) => result,
            Err(_elapsed) => Err(ClientError::Timeout { what: "recv", timeout_ms: timeout.as_millis() }),
        }
    }

    /// See `crate::Consumer::ack`.
    ///
    /// # Errors
    /// As the async method.
    pub fn ack(&mut self, tag: Tag) -> Result<(), ClientError> {
        self.inner.ack(tag)
    }

    /// See `crate::Consumer::reject`.
    ///
    /// # Errors
    /// As the async method.
    pub fn reject(&mut self, tag: Tag) -> Result<(), ClientError> {
        self.inner.reject(tag)
    }

    /// See `crate::Consumer::release`.
    ///
    /// # Errors
    /// As the async method.
    pub fn release(&mut self, tag: Tag) -> Result<(), ClientError> {
        self.inner.release(tag)
    }

    /// See `crate::Consumer::flush`.
    ///
    /// # Errors
    /// As the async method.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.inner.flush()
    }

    /// See `crate::Consumer::cancel`.
    ///
    /// # Errors
    /// As the async method.
    pub fn cancel(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.cancel())
    }

    /// The subscription's id on its connection.
    pub fn id(&self) -> ConsumerId {
        self.inner.id()
    }

    /// The queue consumed from.
    pub fn queue(&self) -> &str {
        self.inner.queue()
    }

    /// Why the broker ended the subscription, once it has.
    pub fn cancel_reason(&self) -> Option<&str> {
        self.inner.cancel_reason()
    }
}
