//! What a caller may choose about a connection.
//!
//! Invariants: `ConnectOptions::validate` accepts only values inside `crate::limits`; a
//! connection is never opened with options it did not accept.

use std::time::Duration;

use crate::error::ClientError;
use crate::limits::{
    CONNECT_TIMEOUT_DEFAULT, FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT, FRAME_BYTES_MAX_MIN,
    PUBLISH_FRAME_BYTES_DEFAULT, PUBLISH_WINDOW_DEFAULT, PUBLISH_WINDOW_MAX,
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
    /// Most unconfirmed publishes before `Publisher::publish` waits.
    pub publish_window: u64,
    /// Time allowed for TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Send a `Heartbeat` when nothing was written for this long; `None` sends none.
    pub heartbeat_interval: Option<Duration>,
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
        Ok(())
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
    }
}
