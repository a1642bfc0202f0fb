//! Fuzzes the replication record codec directly: what a backup decodes from its primary (batches
//! of records) and what a primary decodes from a backup (confirms).
//!
//! `link_frame_decoder` reaches the same decoders through the link's dispatch, but most of its
//! inputs end at a length or a type byte. Here the input is the body of a batch (and of a
//! confirm), wrapped in a valid frame head, so every execution reaches the records.
//!
//! Method, for the batch frame built from the input:
//! - `decode_batch` must not panic, whatever the body;
//! - a batch decoded re-encodes to exactly the frame's bytes (the encoding is canonical), its
//!   `encoded_len` is that length, and the whole frame was consumed;
//! - every strict prefix of the frame (one split point per input) is incomplete: `Ok(None)`,
//!   nothing consumed; a `bytes_max` one byte below the frame's size refuses it as too large;
//! - the link's dispatch (`decode_link_frame`) gives the same batch or the same error.
//!
//! For the confirm frame: a confirm decoded re-encodes to the frame's bytes.

#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringmq_core::wire::frame_header::FRAME_HEADER_BYTES;
use ringmq_core::wire::frame_type::{LINK_BATCH, LINK_CONFIRM};
use ringmq_ha::limits::BATCH_BYTES_MAX;
use ringmq_ha::link::frame::{decode_link_frame, LinkDecodeError, LinkFrame};
use ringmq_ha::link::record::{decode_batch, decode_confirm, encode_batch, encode_confirm, RecordDecodeError};

fuzz_target!(|data: &[u8]| {
    if data.len() + FRAME_HEADER_BYTES > BATCH_BYTES_MAX as usize {
        return;
    }
    let batch = framed(LINK_BATCH, data);
    check_batch(&batch, split_point(data, batch.len()));
    check_confirm(&framed(LINK_CONFIRM, data));
});

/// Decodes `frame` as a batch and checks the properties in the module doc; `split` is below the
/// frame's length.
fn check_batch(frame: &[u8], split: usize) {
    let mut buf = BytesMut::from(frame);
    let decoded = decode_batch(&mut buf, BATCH_BYTES_MAX);
    match &decoded {
        Ok(Some(batch)) => {
            assert!(buf.is_empty(), "decode_batch left {} bytes of one frame", buf.len());
            let mut encoded = BytesMut::new();
            encode_batch(batch, &mut encoded);
            assert_eq!(&encoded[..], frame, "re-encoding {batch:?} changed its bytes");
            assert_eq!(batch.encoded_len(), frame.len(), "encoded_len of {batch:?}");
        }
        Ok(None) => panic!("a whole batch frame of {} bytes decoded as incomplete", frame.len()),
        // After an error nothing about the buffer is promised: the link is dropped.
        Err(_) => {}
    }

    let mut prefix = BytesMut::from(&frame[..split]);
    let partial = decode_batch(&mut prefix, BATCH_BYTES_MAX);
    assert!(matches!(partial, Ok(None)), "a {split}-byte prefix of a {}-byte batch gave {partial:?}", frame.len());
    assert_eq!(prefix.len(), split, "an incomplete batch consumed bytes");

    let too_small = frame.len() as u32 - 1;
    let refused = decode_batch(&mut BytesMut::from(frame), too_small);
    assert!(
        matches!(refused, Err(RecordDecodeError::FrameTooLarge { .. })),
        "a {}-byte batch with bytes_max {too_small} gave {refused:?}",
        frame.len()
    );

    let dispatched = decode_link_frame(&mut BytesMut::from(frame), BATCH_BYTES_MAX);
    match (&decoded, dispatched) {
        (Ok(Some(batch)), Ok(Some(LinkFrame::Batch(again)))) => assert_eq!(&again, batch),
        (Err(error), Err(LinkDecodeError::Replication(again))) => assert_eq!(&again, error),
        (direct, dispatched) => panic!("decode_batch gave {direct:?}, decode_link_frame {dispatched:?}"),
    }
}

/// Decodes `frame` as a confirm and checks that one decoded re-encodes to the same bytes.
fn check_confirm(frame: &[u8]) {
    let mut buf = BytesMut::from(frame);
    // The confirm frame is refused as too large unless the body is exactly its 8 bytes.
    if let Ok(Some(seq)) = decode_confirm(&mut buf) {
        assert!(buf.is_empty(), "decode_confirm left bytes of one frame");
        let mut encoded = BytesMut::new();
        encode_confirm(seq, &mut encoded);
        assert_eq!(&encoded[..], frame, "re-encoding confirm {seq:?} changed its bytes");
    }
}

/// A frame of type `type_byte` with `body`: `u32` length (type and body), type, body.
fn framed(type_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    frame.put_u32_le(1 + body.len() as u32);
    frame.put_u8(type_byte);
    frame.put_slice(body);
    frame
}

/// A split point in `0..frame_len` that the fuzzer steers through the input's last byte.
fn split_point(data: &[u8], frame_len: usize) -> usize {
    let steer = data.last().copied().unwrap_or(0) as usize;
    steer * frame_len / 256
}
