//! Checks of caller-given names, arguments and messages against the protocol's structural limits.
//!
//! The codec asserts these limits when encoding (sending a frame the broker must refuse would be
//! a bug), so the client checks them first and turns a violation into
//! `ClientError::InvalidArgument` instead of a panic.
//!
//! Invariants: a value accepted here never trips an encoding assertion of `ringmq_core::wire`.

use ringmq_core::frame::Message;
use ringmq_core::limits::{ARGUMENTS_MAX, HEADERS_MAX, NAME_BYTES_MAX, PREFETCH_MAX};

use crate::error::ClientError;

/// A queue, exchange, binding-key or argument name: at most `NAME_BYTES_MAX` bytes.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), ClientError> {
    if name.len() > NAME_BYTES_MAX as usize {
        return Err(ClientError::InvalidArgument {
            name: what,
            allowed: format!("at most {NAME_BYTES_MAX} bytes"),
            got: format!("{} bytes", name.len()),
        });
    }
    Ok(())
}

/// Declare arguments: at most `ARGUMENTS_MAX` pairs, names within `NAME_BYTES_MAX`, values within
/// a `u16` length.
pub(crate) fn check_arguments(arguments: &[(String, String)]) -> Result<(), ClientError> {
    if arguments.len() > ARGUMENTS_MAX as usize {
        return Err(ClientError::InvalidArgument {
            name: "arguments",
            allowed: format!("at most {ARGUMENTS_MAX} pairs"),
            got: format!("{} pairs", arguments.len()),
        });
    }
    for (name, value) in arguments {
        check_name("argument name", name)?;
        check_field16("argument value", value.len())?;
    }
    Ok(())
}

/// A subscription's prefetch: `1..=PREFETCH_MAX`.
pub(crate) fn check_prefetch(prefetch: u32) -> Result<(), ClientError> {
    if !(1..=PREFETCH_MAX).contains(&prefetch) {
        return Err(ClientError::InvalidArgument {
            name: "prefetch",
            allowed: format!("1..={PREFETCH_MAX}"),
            got: prefetch.to_string(),
        });
    }
    Ok(())
}

/// A message's fields fit their length prefixes and it has at most `HEADERS_MAX` headers. Its
/// total size is checked against the frame bound by the publisher.
pub(crate) fn check_message(message: &Message) -> Result<(), ClientError> {
    check_field16("routing key", message.routing_key.len())?;
    check_field16("message id", message.message_id.len())?;
    if message.headers.len() > HEADERS_MAX as usize {
        return Err(ClientError::InvalidArgument {
            name: "headers",
            allowed: format!("at most {HEADERS_MAX} headers"),
            got: format!("{} headers", message.headers.len()),
        });
    }
    for header in &message.headers {
        check_field16("header name", header.name.len())?;
        check_field16("header value", header.value.len())?;
    }
    Ok(())
}

/// A field with a `u16` length prefix.
fn check_field16(what: &'static str, len: usize) -> Result<(), ClientError> {
    if len > u16::MAX as usize {
        return Err(ClientError::InvalidArgument {
            name: what,
            allowed: format!("at most {} bytes", u16::MAX),
            got: format!("{len} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringmq_core::frame::Header;

    #[test]
    fn limits_are_checked_and_named() {
        // Goal: each structural limit gives an error naming the field, not an encoder panic.
        assert!(check_name("queue name", &"q".repeat(NAME_BYTES_MAX as usize)).is_ok());
        let err = check_name("queue name", &"q".repeat(NAME_BYTES_MAX as usize + 1)).unwrap_err();
        assert!(err.to_string().contains("queue name"), "{err}");

        assert!(check_prefetch(0).is_err());
        assert!(check_prefetch(PREFETCH_MAX).is_ok());
        assert!(check_prefetch(PREFETCH_MAX + 1).is_err());

        let too_many = vec![("a".to_string(), "b".to_string()); ARGUMENTS_MAX as usize + 1];
        assert!(check_arguments(&too_many).is_err());

        let header = Header { name: Bytes::from_static(b"h"), value: Bytes::from_static(b"v") };
        let message = Message { headers: vec![header; HEADERS_MAX as usize + 1], ..Message::default() };
        assert!(check_message(&message).unwrap_err().to_string().contains("headers"));
        let message = Message { routing_key: Bytes::from(vec![0; 70_000]), ..Message::default() };
        assert!(check_message(&message).unwrap_err().to_string().contains("routing key"));
    }
}
