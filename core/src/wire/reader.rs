//! The bounds-checked cursor over one complete frame that every decoder on the native framing
//! reads with: the native codec and `ringmq-ha`'s replication records and link frames. Each read
//! matches a `put_*` of `primitives`.
//!
//! Invariants:
//! - No input makes a read panic: every read checks the bounds first, and a failed read is a
//!   `DecodeError::Invalid` (or `TooMany`, `NameTooLong`) naming the frame and the field.
//! - Byte fields come out as slices of the frame: no body is copied.
//! - A count is checked against its limit, and the capacity it suggests is capped by the bytes
//!   left, before anything is allocated for it.

use bytes::Bytes;

use crate::ids::RequestId;
use crate::limits::{ARGUMENTS_MAX, HEADERS_MAX, NAME_BYTES_MAX};
use crate::wire::decode_error::DecodeError;
use crate::wire::frame::{Binding, ConfirmOutcome, ErrorCode, ExchangeKind, Header, Message, Settlement};
use crate::wire::primitives::{
    error_code_from_u16, exchange_kind_from_byte, ERROR_CODE_FIRST, ERROR_CODE_LAST, OUTCOME_REJECTED, OUTCOME_STORED,
    OUTCOME_UNROUTABLE,
};

/// make it panic; errors name the frame and the field.
pub struct Reader {
    /// The frame's name, for error messages.
    frame: &'static str,
    /// The whole frame, length prefix included.
    bytes: Bytes,
    /// Offset of the next unread byte in `bytes`.
    position: usize,
}

impl Reader {
    /// A reader over `bytes` (a whole frame, length prefix included) for the frame named `frame`,
    /// starting at `position`.
    pub fn new(frame: &'static str, bytes: Bytes, position: usize) -> Reader {
        Reader { frame, bytes, position }
    }

    /// Bytes not read yet.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn invalid(&self, reason: String) -> DecodeError {
        DecodeError::Invalid { frame: self.frame, reason }
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, field: &'static str, needed: usize) -> DecodeError {
        self.invalid(format!("truncated: {field} needs {needed} bytes, {} remain", self.remaining()))
    }

    /// The next `len` bytes, borrowed.
    #[inline]
    fn take(&mut self, field: &'static str, len: usize) -> Result<&[u8], DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(field, len));
        }
        let start = self.position;
        self.position += len;
        match self.bytes.get(start..self.position) {
            Some(slice) => Ok(slice),
            None => Err(self.truncated(field, len)),
        }
    }

    /// The next `len` bytes, as a slice of the frame (no copy).
    #[inline]
    fn slice(&mut self, field: &'static str, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(field, len));
        }
        let start = self.position;
        self.position += len;
        Ok(self.bytes.slice(start..self.position))
    }

    #[inline]
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        if N > self.remaining() {
            return Err(self.truncated(field, N));
        }
        let start = self.position;
        self.position += N;
        match self.bytes.get(start..self.position).map(<[u8; N]>::try_from) {
            Some(Ok(array)) => Ok(array),
            _ => Err(self.truncated(field, N)),
        }
    }

    #[inline]
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [byte] = self.array(field)?;
        Ok(byte)
    }

    #[inline]
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_le_bytes)
    }

    #[inline]
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    #[inline]
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_le_bytes)
    }

    pub(crate) fn request(&mut self) -> Result<RequestId, DecodeError> {
        self.u32("request").map(RequestId)
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(format!("{field} is {other}, a bool must be 0 or 1"))),
        }
    }

    pub fn option_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        let present = self.bool(field)?;
        let value = self.u64(field)?;
        match (present, value) {
            (true, value) => Ok(Some(value)),
            (false, 0) => Ok(None),
            (false, value) => {
                Err(self.invalid(format!("{field} is absent but carries {value}; an absent value must be 0")))
            }
        }
    }

    /// A `u16`-prefixed byte field, as a slice of the frame.
    #[inline]
    pub fn bytes16(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.slice(field, usize::from(len))
    }

    /// A `u16`-prefixed UTF-8 string of any length.
    pub(crate) fn text(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)?;
        self.utf8(field, usize::from(len))
    }

    /// A `u16`-prefixed UTF-8 string of at most `NAME_BYTES_MAX` bytes.
    pub fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > NAME_BYTES_MAX as usize {
            return Err(DecodeError::NameTooLong { frame: self.frame, field, len, max: NAME_BYTES_MAX });
        }
        self.utf8(field, len)
    }

    fn utf8(&mut self, field: &'static str, len: usize) -> Result<String, DecodeError> {
        let frame = self.frame;
        let bytes = self.take(field, len)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_string()),
            Err(error) => Err(DecodeError::Invalid { frame, reason: format!("{field} is not UTF-8: {error}") }),
        }
    }

    /// A `u32` count checked against `count_max`, and the capacity to allocate for it: no more
    /// than the remaining bytes could fill with items of `item_bytes_min` bytes, so that a short
    /// frame claiming many items cannot make the decoder allocate much.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        count_max: u32,
        item_bytes_min: usize,
    ) -> Result<(u32, usize), DecodeError> {
        let count = self.u32(what)?;
        if count > count_max {
            return Err(DecodeError::TooMany { frame: self.frame, what, count, max: count_max });
        }
        let capacity = (count as usize).min(self.remaining() / item_bytes_min);
        Ok((count, capacity))
    }

    /// Refuses a batch whose last sequence number or tag would overflow `u64`, so that the
    /// broker can compute `first + index` for every item without overflow.
    pub(crate) fn check_batch_fits_u64(&self, field: &'static str, first: u64, count: u32) -> Result<(), DecodeError> {
        match count.checked_sub(1) {
            Some(last_offset) if first.checked_add(u64::from(last_offset)).is_none() => {
                Err(self.invalid(format!("{field} {first} plus {count} items overflows u64")))
            }
            _ => Ok(()),
        }
    }

    /// An inclusive range: `u64 first`, `u64 last`, with `first <= last`.
    pub(crate) fn range(&mut self) -> Result<(u64, u64), DecodeError> {
        let first = self.u64("range first")?;
        let last = self.u64("range last")?;
        if first > last {
            return Err(self.invalid(format!("range {first}..={last} has first > last")));
        }
        Ok((first, last))
    }

    pub fn message(&mut self) -> Result<Message, DecodeError> {
        let routing_key = self.bytes16("routing key")?;
        let message_id = self.bytes16("message id")?;
        let header_count = self.u16("headers")?;
        if u32::from(header_count) > HEADERS_MAX {
            return Err(DecodeError::TooMany {
                frame: self.frame,
                what: "headers",
                count: u32::from(header_count),
                max: HEADERS_MAX,
            });
        }
        let capacity = usize::from(header_count).min(self.remaining() / HEADER_BYTES_MIN);
        let mut headers = Vec::with_capacity(capacity);
        for _ in 0..header_count {
            headers.push(Header { name: self.bytes16("header name")?, value: self.bytes16("header value")? });
        }
        let body_len = self.u32("body")?;
        let body = self.slice("body", body_len as usize)?;
        Ok(Message { routing_key, message_id, headers, body })
    }

    pub(crate) fn arguments(&mut self) -> Result<Vec<(String, String)>, DecodeError> {
        let (count, capacity) = self.count("arguments", ARGUMENTS_MAX, ARGUMENT_BYTES_MIN)?;
        let mut arguments = Vec::with_capacity(capacity);
        for _ in 0..count {
            arguments.push((self.name("argument name")?, self.text("argument value")?));
        }
        Ok(arguments)
    }

    pub(crate) fn binding(&mut self) -> Result<Binding, DecodeError> {
        Ok(Binding { exchange: self.name("exchange")?, queue: self.name("queue")?, key: self.name("key")? })
    }

    pub(crate) fn exchange_kind(&mut self) -> Result<ExchangeKind, DecodeError> {
        let byte = self.u8("exchange kind")?;
        exchange_kind_from_byte(byte).ok_or_else(|| {
            self.invalid(format!("exchange kind is {byte}, must be 0 (direct), 1 (fanout) or 2 (topic)"))
        })
    }

    pub(crate) fn settlement(&mut self) -> Result<Settlement, DecodeError> {
        match self.u8("settlement")? {
            0 => Ok(Settlement::Ack),
            1 => Ok(Settlement::Reject),
            2 => Ok(Settlement::Release),
            other => Err(self.invalid(format!("settlement is {other}, must be 0 (ack), 1 (reject) or 2 (release)"))),
        }
    }

    pub(crate) fn error_code(&mut self) -> Result<ErrorCode, DecodeError> {
        let value = self.u16("error code")?;
        error_code_from_u16(value).ok_or_else(|| {
            self.invalid(format!("error code is {value}, must be in {}..={}", ERROR_CODE_FIRST, ERROR_CODE_LAST))
        })
    }

    pub(crate) fn confirm_outcome(&mut self) -> Result<ConfirmOutcome, DecodeError> {
        match self.u8("outcome")? {
            OUTCOME_STORED => Ok(ConfirmOutcome::Stored),
            OUTCOME_UNROUTABLE => Ok(ConfirmOutcome::Unroutable),
            OUTCOME_REJECTED => Ok(ConfirmOutcome::Rejected { code: self.error_code()?, reason: self.text("reason")? }),
            other => {
                Err(self.invalid(format!("outcome is {other}, must be 0 (stored), 1 (unroutable) or 2 (rejected)")))
            }
        }
    }

    /// Refuses bytes left over after the body: a frame is exactly as long as its length says.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            trailing => Err(self.invalid(format!("trailing {trailing} bytes after frame body"))),
        }
    }
}

/// Smallest encoded header, in bytes: empty name and value.
const HEADER_BYTES_MIN: usize = 2 + 2;
/// Smallest encoded argument, in bytes: empty name and value.
const ARGUMENT_BYTES_MIN: usize = 2 + 2;
