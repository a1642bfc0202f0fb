//! Fuzzes the native frame decoder with arbitrary bytes.
//!
//! Method: decode frames from the input until the decoder says incomplete or invalid. For every
//! frame decoded:
//! - `decode` must not panic, whatever the bytes;
//! - re-encoding the frame gives back exactly the bytes it was decoded from (the encoding is
//!   canonical), and those bytes decode to an equal frame;
//! - for `publish` and `deliver`, the streaming writers produce the same bytes as `encode`.
//!
//! The preamble decoder gets the same input.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq_core::frame::Frame;
use ringmq_core::limits::FRAME_BYTES_MAX;
use ringmq_core::wire::{codec, DeliverWriter, PublishWriter};

fuzz_target!(|data: &[u8]| {
    // The result does not matter, only that it neither panics nor reads out of bounds.
    let _ = codec::decode_preamble(data);

    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    while let Ok(Some(frame)) = codec::decode(&mut buf, FRAME_BYTES_MAX) {
        let consumed = data.len() - buf.len() - offset;
        let frame_bytes = &data[offset..offset + consumed];
        offset += consumed;

        let mut encoded = BytesMut::new();
        codec::encode(&frame, &mut encoded);
        assert_eq!(&encoded[..], frame_bytes, "re-encoding {frame:?} changed its bytes");

        let again = codec::decode(&mut encoded, FRAME_BYTES_MAX)
            .expect("a re-encoded frame decodes")
            .expect("a re-encoded frame is complete");
        assert_eq!(again, frame);
        assert!(encoded.is_empty(), "decode left bytes of a re-encoded frame");

        assert_writer_equals_encode(&frame, frame_bytes);
    }
});

/// Writes `frame` with its streaming writer, if it has one, and compares with `expected`.
fn assert_writer_equals_encode(frame: &Frame, expected: &[u8]) {
    let mut written = BytesMut::new();
    match frame {
        Frame::Publish { exchange, first_seq, messages } => {
            let mut writer = PublishWriter::begin(&mut written, exchange, *first_seq);
            for message in messages {
                writer.push(message);
            }
            writer.finish();
        }
        Frame::Deliver { consumer, first_tag, messages } => {
            let mut writer = DeliverWriter::begin(&mut written, *consumer, *first_tag);
            for delivered in messages {
                writer.push(delivered.redelivered, &delivered.message);
            }
            writer.finish();
        }
        _ => return,
    }
    assert_eq!(&written[..], expected, "writer differs from encode for {frame:?}");
}
