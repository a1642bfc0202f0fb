//! The bytes on the wire: the native protocol's frames and everything shared by the codecs built on
//! its framing (this crate's native codec, and `ringmq-ha`'s replication records and link frames).
//!
//! Layout:
//! - `frame`: the native frames as Rust values (their meaning).
//! - `frame_type`: the registry of every frame type byte, native and replication link, with a
//!   compile-time no-collision check.
//! - `frame_header`: the `u32 length, u8 type` head every frame starts with; its one parser.
//! - `primitives` and `reader`: the field encoders (`put_*`) and the bounds-checked `Reader`.
//! - `decode_error`: why bytes are not a valid frame (*invalid*; *incomplete* is `Ok(None)`).
//! - `codec`: the preamble, and `encode` / `decode` of whole native frames.
//! - `writers`: streaming writers of the hot batch frames (publish, deliver, confirm).
//! - `protocol`: which protocol a new connection speaks, by its first bytes (native or AMQP).
//!
//! The layout of every frame is specified in `PROTOCOL.md` at the repository root.
//!
//! Invariants: see each module. In short, decoders never panic and keep incomplete apart from
//! invalid; encoders assert what decoders check; no two frames share a type byte.

pub mod codec;
pub mod decode_error;
pub mod frame;
pub mod frame_header;
pub mod frame_type;
pub mod primitives;
pub mod protocol;
pub mod reader;
pub mod writers;

pub use codec::{decode, decode_preamble, encode, encode_preamble};
pub use decode_error::DecodeError;
pub use primitives::{
    exchange_kind_byte, exchange_kind_from_byte, message_bytes_len, put_bool, put_bytes16, put_message, put_name,
    put_option_u64, put_queue_options,
};
pub use protocol::{detect_protocol, WireProtocol};
pub use reader::Reader;
pub use writers::{ConfirmWriter, DeliverWriter, PublishWriter};
