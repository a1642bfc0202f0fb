//! The one error type of the client.
//!
//! Invariants:
//! - A broker's own words are never lost: `Failed`, `Refused` and `BrokerClosed` carry the code and
//!   the text the broker sent, unchanged.
//! - The error is `Clone`: when a connection ends, the same cause is handed to every waiter (each
//!   request, the publisher, every consumer), so none of them hangs and all say the same thing.

use std::sync::Arc;

use ringmq_core::frame::ErrorCode;
use ringmq_core::ids::Tag;

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        /// The address as the caller gave it.
        addr: String,
        /// The socket error.
        source: Arc<std::io::Error>,
    },
    /// Connect plus handshake took longer than allowed.
    #[error("connecting to {addr}: no Hello from the broker within {timeout_ms} ms")]
    ConnectTimeout {
        /// The address as the caller gave it.
        addr: String,
        /// The allowed time, in milliseconds.
        timeout_ms: u128,
    },
    /// The blocking client could not start its runtime.
    #[error("starting the client runtime failed: {source}")]
    Runtime {
        /// The OS error.
        source: Arc<std::io::Error>,
    },
    /// The broker answered the preamble with an `Error` frame (wrong version, not primary...).
    #[error("broker refused the connection: {code:?}: {message}")]
    Refused {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's text.
        message: String,
    },
    /// A request was refused; the connection stays open.
    #[error("request failed: {code:?}: {message}")]
    Failed {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's text.
        message: String,
    },
    /// The broker sent an `Error` frame and closed the connection.
    #[error("broker closed the connection: {code:?}: {message}")]
    BrokerClosed {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's text.
        message: String,
    },
    /// The socket failed or the broker closed it without an `Error` frame.
    #[error("connection lost: {reason}")]
    ConnectionLost {
        /// What happened, with the OS error when there was one.
        reason: String,
    },
    /// The broker sent bytes or a frame the protocol does not allow here; the client closed.
    #[error("protocol violation by the broker: {reason}")]
    Protocol {
        /// What was expected and what came.
        reason: String,
    },
    /// The connection was closed by this client (`close` or dropping the `Connection`).
    #[error("connection closed by the client")]
    Closed,
    /// An option or argument is outside what is allowed.
    #[error("invalid {name}: allowed {allowed}; got {got}")]
    InvalidArgument {
        /// Which option or argument.
        name: &'static str,
        /// What is allowed.
        allowed: String,
        /// What was given.
        got: String,
    },
    /// A message does not fit in one frame.
    #[error("message of {encoded_bytes} encoded bytes does not fit a frame of at most {frame_bytes_max} bytes")]
    MessageTooLarge {
        /// The frame size a publish of this message alone needs, in bytes.
        encoded_bytes: usize,
        /// The connection's `frame_bytes_max`.
        frame_bytes_max: u32,
    },
    /// A request frame does not fit in one frame (too many or too long arguments).
    #[error("{what} frame of {encoded_bytes} encoded bytes does not fit a frame of at most {frame_bytes_max} bytes")]
    FrameTooLarge {
        /// Which frame.
        what: &'static str,
        /// Its encoded size, in bytes.
        encoded_bytes: usize,
        /// The connection's `frame_bytes_max`.
        frame_bytes_max: u32,
    },
    /// The subscription ended (cancelled by this client or by the broker); its unsettled
    /// deliveries are no longer held for it and cannot be settled.
    #[error("subscription ended: {reason}")]
    SubscriptionEnded {
        /// Who ended it and why.
        reason: String,
    },
    /// A blocking call waited longer than the caller allowed.
    #[error("{what}: nothing within {timeout_ms} ms")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The allowed time, in milliseconds.
        timeout_ms: u128,
    },
    /// A settlement named a tag this subscription has not been delivered yet.
    #[error("cannot settle tag {tag}: tags delivered so far are below {delivered_end}")]
    UnknownTag {
        /// The tag given.
        tag: u64,
        /// One past the highest tag delivered so far.
        delivered_end: u64,
    },
    /// Nothing came from the broker for twice `heartbeat_interval` (on an open connection, or
    /// while waiting for its `Hello`): it is dead or stalled, and the connection was closed.
    #[error("no frame from {addr} for {silent_ms} ms (allowed: twice heartbeat_interval of {heartbeat_ms} ms) while {during}: the broker is dead or stalled")]
    Silent {
        /// The broker's address.
        addr: String,
        /// What the client was waiting for: `the handshake` or `the connection was open`.
        during: &'static str,
        /// How long nothing came, in milliseconds.
        silent_ms: u128,
        /// `heartbeat_interval`, in milliseconds.
        heartbeat_ms: u128,
    },
    /// With `reconnect`, no address accepted as primary within `reconnect_timeout`.
    #[error("reconnect gave up after {tried_ms} ms (reconnect_timeout {timeout_ms} ms) over {addresses}; last failure: {last}")]
    ReconnectFailed {
        /// How long it tried, in milliseconds.
        tried_ms: u128,
        /// `reconnect_timeout`, in milliseconds.
        timeout_ms: u128,
        /// The addresses it tried, comma-separated.
        addresses: String,
        /// The last attempt's error.
        last: String,
    },
    /// With `reconnect`, the connection was lost and is being re-established: this request was
    /// not sent, or its reply was lost with the connection (its outcome is unknown). Retry it.
    #[error("connection lost and reconnecting ({cause}); the request was not sent or its outcome is unknown")]
    Reconnecting {
        /// Why the connection was lost.
        cause: String,
    },
    /// `Connection::publisher` was called a second time; a connection has one publish stream.
    #[error("this connection already has its publisher; open another connection for a second one")]
    PublisherTaken,
}

impl ClientError {
    /// The broker's error code, when the broker gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. }
            | ClientError::Failed { code, .. }
            | ClientError::BrokerClosed { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn lost(context: &str, err: &std::io::Error) -> ClientError {
        ClientError::ConnectionLost { reason: format!("{context}: {err}") }
    }

    pub(crate) fn unknown_tag(tag: Tag, delivered_end: Tag) -> ClientError {
        ClientError::UnknownTag { tag: tag.0, delivered_end: delivered_end.0 }
    }
}
