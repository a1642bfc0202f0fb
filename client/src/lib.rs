//! ringmq-client: the Rust client of the ringmq native protocol, async (tokio) and blocking.
//!
//! ```no_run
//! # async fn example() -> Result<(), ringmq_client::ClientError> {
//! use ringmq_client::{ConnectOptions, Connection, Message};
//!
//! let connection = Connection::connect("127.0.0.1:5672", ConnectOptions::default()).await?;
//! connection.declare_queue("jobs", Default::default(), &[]).await?;
//! let publisher = connection.publisher()?;
//! publisher.publish("", Message { routing_key: "jobs".into(), body: "hello".into(), ..Default::default() }).await?;
//! let summary = publisher.wait_for_confirms().await?;
//! assert_eq!(summary.stored, 1);
//! let mut consumer = connection.subscribe("jobs", 100).await?;
//! if let Some(delivery) = consumer.recv().await? {
//!     consumer.ack(delivery.tag)?;
//! }
//! connection.close().await
//! # }
//! ```
//!
//! What it does: the handshake, management requests matched to replies by id, publishing with
//! sequence numbers, a publish window (backpressure) and confirms, subscriptions with prefetch
//! and batched settlements; URL lists in the reference grammar; with `ConnectOptions::reconnect`,
//! failover: every address in turn until one accepts as primary, unconfirmed publishes re-sent in
//! order, subscriptions made again; heartbeats that detect a dead or stalled broker; with
//! `producer_id`, the `x-ringmq-dedup` stamp the broker suppresses re-sends by. What it does not do
//! (yet): TLS (`ssl:` addresses are refused), AMQP.
//!
//! ```no_run
//! # async fn example() -> Result<(), ringmq_client::ClientError> {
//! use std::time::Duration;
//! use ringmq_client::{ConnectOptions, Connection};
//!
//! let options = ConnectOptions {
//!     reconnect: true,
//!     reconnect_timeout: Some(Duration::from_secs(30)),
//!     heartbeat_interval: Some(Duration::from_millis(500)),
//!     producer_id: Some("orders-1".into()),
//!     ..ConnectOptions::default()
//! };
//! let connection = Connection::connect("node1:5672,node2:5672,node3:5672", options).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Performance shape: `publish` appends to an outbox under a short mutex and never makes a
//! syscall; one writer task per connection writes whatever accumulated while the socket was busy,
//! as publish frames of up to `publish_frame_bytes` (natural batching: no timer, no frame and no
//! channel send per message). One reader task decodes with the zero-copy codec; a `Deliver` frame
//! is one channel send to its consumer; confirms and settlements travel as ranges.
//!
//! Layout, in layers; each imports only from the layers below it:
//! - Handles, what callers hold: `connection` (`Connection`: connect, management, `publisher`,
//!   `subscribe`, `close`), `publisher`, `consumer`, and `blocking` (the same API for plain
//!   threads, on a runtime owned by the connection).
//! - Tasks, one set per connection: `supervisor` (dialling, socket sessions, reconnect), `writer`
//!   and `reader` (the two tasks of a socket session).
//! - `shared`: `Shared`, the state the handles and the tasks share, behind short mutexes.
//! - State that `Shared` holds, pure accounting that never imports `Shared`: `outbox` (send
//!   queue, batching, publishes kept for re-sending) with `publish_window`, `confirm_queue`,
//!   `request_table`, `consumer_registry`; and beside it `settlement_batch` (a consumer's pending
//!   settlements) and `failover` with `broker_list` (the supervisor's address rotation, no IO).
//! - Values and checks: `options`, `limits`, `error`, `ha_status`, `argument_check`.
//! - `fuzzing` (feature `fuzzing` only): the reader's handling of the broker's bytes over a
//!   connection's state without a socket, for the fuzz targets.
//!
//! Invariants:
//! - No call waits forever on a dead connection: a broker `Error` frame, a lost socket, a silent
//!   broker (with heartbeats) or a protocol violation completes every waiter with the same
//!   `ClientError`; with `reconnect`, requests in flight get `Reconnecting`, and everything else
//!   the final cause once reconnecting gives up.
//! - The broker's error text reaches the caller unchanged (`ClientError::Failed`, `Refused`,
//!   `BrokerClosed`).
//! - Publish sequence numbers and delivery tags are consecutive from 0, across reconnects too, and
//!   checked against what the broker sends back.

mod argument_check;
pub mod blocking;
mod broker_list;
mod confirm_queue;
mod connection;
mod consumer;
mod consumer_registry;
mod error;
mod failover;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod ha_status;
pub mod limits;
mod options;
mod outbox;
mod publish_window;
mod publisher;
mod reader;
mod request_table;
mod settlement_batch;
mod shared;
mod supervisor;
mod writer;

pub use confirm_queue::{ConfirmSummary, Rejection};
pub use connection::{Connection, ConnectionStats};
pub use consumer::{Consumer, Delivery};
pub use error::ClientError;
pub use ha_status::HaStatus;
pub use options::ConnectOptions;
pub use outbox::DEDUP_HEADER;
pub use publisher::Publisher;
pub use ringmq_core::frame::{
    ConfirmOutcome, ConfirmRange, ErrorCode, ExchangeInfo, ExchangeKind, Header, Message, QueueInfo, QueueOptions,
    ReadySet,
};
pub use ringmq_core::ids::{Seq, Tag};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_type<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    /// Never called: it only has to compile.
    #[allow(dead_code)]
    fn futures_are_send(connection: &Connection, publisher: &Publisher, consumer: &mut Consumer) {
        assert_send(&Connection::connect("127.0.0.1:1", ConnectOptions::default()));
        assert_send(&connection.list_queues());
        assert_send(&connection.subscribe("q", 1));
        assert_send(&publisher.publish("", Message::default()));
        assert_send(&publisher.next_confirm());
        assert_send(&publisher.wait_for_confirms());
        assert_send(&consumer.recv());
        assert_send(&consumer.cancel());
    }

    #[test]
    fn handles_can_move_between_threads() {
        // Goal: every handle, and (in `futures_are_send`) every future, works with
        // `tokio::spawn` on a multi-thread runtime: nothing holds a lock guard across an await.
        assert_send_sync::<Connection>();
        assert_send_sync::<Publisher>();
        assert_send_type::<Consumer>();
        assert_send_sync::<ClientError>();
        assert_send_sync::<blocking::Connection>();
        assert_send_sync::<blocking::Publisher>();
        assert_send_type::<blocking::Consumer>();
    }

    #[test]
    fn state_modules_never_import_the_layers_above() {
        // Goal: dependencies point one way (handles and tasks -> `Shared` -> the state it holds),
        // so each piece of state can be read and tested without the rest. Method: no state or
        // value module names a module of the layers above it.
        let below_shared = [
            ("outbox.rs", include_str!("outbox.rs")),
            ("publish_window.rs", include_str!("publish_window.rs")),
            ("confirm_queue.rs", include_str!("confirm_queue.rs")),
            ("request_table.rs", include_str!("request_table.rs")),
            ("consumer_registry.rs", include_str!("consumer_registry.rs")),
            ("settlement_batch.rs", include_str!("settlement_batch.rs")),
            ("failover.rs", include_str!("failover.rs")),
            ("broker_list.rs", include_str!("broker_list.rs")),
            ("options.rs", include_str!("options.rs")),
            ("limits.rs", include_str!("limits.rs")),
            ("error.rs", include_str!("error.rs")),
            ("ha_status.rs", include_str!("ha_status.rs")),
            ("argument_check.rs", include_str!("argument_check.rs")),
        ];
        let above = ["shared", "connection", "publisher", "consumer", "blocking", "supervisor", "reader", "writer"];
        for (file, text) in below_shared {
            for module in above {
                let import = format!("crate::{module}::");
                assert!(!text.contains(&import), "{file} imports {import}: state must not depend on its users");
            }
        }
    }
}
