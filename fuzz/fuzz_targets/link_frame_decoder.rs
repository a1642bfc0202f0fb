//! Fuzzes the replication link's decoder (link frames and the records inside batches) with
//! arbitrary bytes: a backup must survive a corrupt or hostile primary, and a primary a corrupt or
//! hostile backup.
//!
//! Method: decode link frames from the input until the decoder says incomplete or invalid. For
//! every frame decoded:
//! - `decode_link_frame` must not panic, whatever the bytes;
//! - re-encoding the frame gives back exactly the bytes it was decoded from (the encoding is
//!   canonical), and those bytes decode to an equal frame.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq_ha::limits::BATCH_BYTES_MAX;
use ringmq_ha::link::frame::{decode_link_frame, encode_link_frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    while let Ok(Some(frame)) = decode_link_frame(&mut buf, BATCH_BYTES_MAX) {
        let consumed = data.len() - buf.len() - offset;
        let frame_bytes = &data[offset..offset + consumed];
        offset += consumed;

        let mut encoded = BytesMut::new();
        encode_link_frame(&frame, &mut encoded);
        assert_eq!(&encoded[..], frame_bytes, "re-encoding {frame:?} changed its bytes");

        let again = decode_link_frame(&mut encoded, BATCH_BYTES_MAX)
            .expect("a re-encoded link frame decodes")
            .expect("a re-encoded link frame is complete");
        assert_eq!(again, frame);
        assert!(encoded.is_empty(), "decode left bytes of a re-encoded link frame");
    }
});
