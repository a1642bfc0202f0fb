//! What a caller may choose about a connection.
//!
//! Invariants: `ConnectOptions::validate` accepts only values inside `crate::limits`; a
//! connection is never opened with options it did not accept.

use std::time::Duration;

use crate::error::ClientError;
use crate::limits::{
    CONNECT_TIMEOUT_DEFAULT, FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT, FRAME_BYTES_MAX_MIN,
    PRODUCER_ID_BYTES_MAX, PUBLISH_FRAME_BYTES_DEFAULT, PUBLISH_WINDOW_DEFAULT, PUBLISH_WINDOW_MAX,
    RECONNECT_INTERVAL_DEFAULT, RECONNECT_INTERVAL_MAX,
};

/// Options of `Connection::connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Open an administrative connection (`--ha-admin`): served even by an HA backup.
    pub admin: bool,
    /// Largest frame this client sends or accepts, in bytes, length prefix included.
    pub frame_bytes_max: u32,
    /// Target size of one publish frame, in bytes. Publishes accumulate into a frame up to this
    /// size while the socket is busy; a single larger message still goes, alone, if it fits
    /// `frame_bytes_max`.
    pub publish_frame_bytes: u32,
    /// Most unconfirmed publishes before `Publisher::publish` waits. With `reconnect` this is
    /// also the capacity of the publishes kept for re-sending: every unconfirmed publish is kept,
    /// so a full window is the backpressure.
    pub publish_window: u64,
    /// Time allowed for TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Send a `Heartbeat` every interval (the broker echoes it), and treat a broker that sent
    /// nothing for twice the interval as dead or stalled: the connection (or the handshake, or a
    /// reconnect attempt) fails with `ClientError::Silent`. `None`: no heartbeats, no detection.
    pub heartbeat_interval: Option<Duration>,
    /// When the connection is lost (socket error, end of stream, silence, a primary that stepped
    /// down), connect again: try every address in turn until one accepts as primary, re-send the
    /// unconfirmed publishes, re-subscribe. Off: a lost connection is an error to every caller.
    pub reconnect: bool,
    /// With `reconnect`, give up (`ClientError::ReconnectFailed`) after trying for this long;
    /// `None` tries forever. Also bounds the first connect when `reconnect` is on.
    pub reconnect_timeout: Option<Duration>,
    /// With `reconnect`, the wait after a pass over every address failed; it doubles after each
    /// failed pass up to `RECONNECT_INTERVAL_MAX`, and starts again after a success.
    pub reconnect_interval: Duration,
    /// When set, every published message carries the header `x-ringmq-dedup` =
    /// `<producer_id>/<seq>` (the publisher's sequence number, which continues across
    /// reconnects), so a broker can drop a re-send it already holds. At most
    /// `PRODUCER_ID_BYTES_MAX` bytes, not empty.
    pub producer_id: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            admin: false,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            publish_frame_bytes: PUBLISH_FRAME_BYTES_DEFAULT,
            publish_window: PUBLISH_WINDOW_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            heartbeat_interval: None,
            reconnect: false,
            reconnect_timeout: None,
            reconnect_interval: RECONNECT_INTERVAL_DEFAULT,
            producer_id: None,
        }
    }
}

impl ConnectOptions {
    /// Checks every option against its bounds.
    ///
    /// # Errors
    /// `ClientError::InvalidArgument` naming the first option out of bounds, what is allowed and
    /// what was given.
    pub fn validate(&self) -> Result<(), ClientError> {
        if !(FRAME_BYTES_MAX_MIN..=FRAME_BYTES_MAX_LIMIT).contains(&self.frame_bytes_max) {
            return Err(ClientError::InvalidArgument {
                name: "frame_bytes_max",
                allowed: format!("{FRAME_BYTES_MAX_MIN}..={FRAME_BYTES_MAX_LIMIT} bytes"),
                got: self.frame_bytes_max.to_string(),
            });
        }
        if self.publish_frame_bytes == 0 || self.publish_frame_bytes > self.frame_bytes_max {
            return Err(ClientError::InvalidArgument {
                name: "publish_frame_bytes",
                allowed: format!("1..={} bytes (frame_bytes_max)", self.frame_bytes_max),
                got: self.publish_frame_bytes.to_string(),
            });
        }
        if !(1..=PUBLISH_WINDOW_MAX).contains(&self.publish_window) {
            return Err(ClientError::InvalidArgument {
                name: "publish_window",
                allowed: format!("1..={PUBLISH_WINDOW_MAX} messages"),
                got: self.publish_window.to_string(),
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(ClientError::InvalidArgument {
                name: "connect_timeout",
                allowed: "a positive duration".to_string(),
                got: format!("{:?}", self.connect_timeout),
            });
        }
        if self.heartbeat_interval.is_some_and(|d| d.is_zero()) {
            return Err(ClientError::InvalidArgument {
                name: "heartbeat_interval",
                allowed: "a positive duration or none".to_string(),
                got: format!("{:?}", self.heartbeat_interval),
            });
        }
        if self.reconnect_interval.is_zero() || self.reconnect_interval > RECONNECT_INTERVAL_MAX {
            return Err(ClientError::InvalidArgument {
                name: "reconnect_interval",
                allowed: format!("a positive duration up to {RECONNECT_INTERVAL_MAX:?}"),
                got: format!("{:?}", self.reconnect_interval),
            });
        }
        if self.reconnect_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ClientError::InvalidArgument {
                name: "reconnect_timeout",
                allowed: "a positive duration or none (forever)".to_string(),
                got: format!("{:?}", self.reconnect_timeout),
            });
        }
        if let Some(id) = &self.producer_id {
            if id.is_empty() || id.len() > PRODUCER_ID_BYTES_MAX {
                return Err(ClientError::InvalidArgument {
                    name: "producer_id",
                    allowed: format!("1..={PRODUCER_ID_BYTES_MAX} bytes"),
                    got: format!("{} bytes", id.len()),
                });
            }
        }
        Ok(())
    }

    /// How long the handshake may take: `connect_timeout`, or less with heartbeats (a broker
    /// silent for twice the interval is stalled).
    pub(crate) fn handshake_timeout(&self) -> Duration {
        match self.heartbeat_interval {
            Some(interval) => self.connect_timeout.min(interval * 2),
            None => self.connect_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ConnectOptions::default().validate().unwrap();
    }

    #[test]
    fn out_of_bounds_options_name_the_option_and_the_value() {
        // Goal: each bound is checked and the error says which option and what came.
        let options = ConnectOptions { publish_window: 0, ..ConnectOptions::default() };
        let text = options.validate().unwrap_err().to_string();
        assert!(text.contains("publish_window"), "{text}");
        assert!(text.contains("got 0"), "{text}");

        let options = ConnectOptions { frame_bytes_max: 10, ..ConnectOptions::default() };
        assert!(options.validate().unwrap_err().to_string().contains("frame_bytes_max"));

        let options = ConnectOptions { publish_frame_bytes: FRAME_BYTES_MAX_DEFAULT + 1, ..ConnectOptions::default() };
        assert!(options.validate().unwrap_err().to_string().contains("publish_frame_bytes"));

        let options = ConnectOptions { reconnect_interval: Duration::ZERO, ..ConnectOptions::default() };
        assert!(options.validate().unwrap_err().to_string().contains("reconnect_interval"));
        let options = ConnectOptions { producer_id: Some(String::new()), ..ConnectOptions::default() };
        assert!(options.validate().unwrap_err().to_string().contains("producer_id"));
    }
}
