//! Fuzzes the client's reader: what it does with the broker's bytes, over a connection with
//! requests waiting, a subscription and publishes in flight (`ringmq_client::fuzzing`), so that a
//! corrupt or hostile broker can end a connection with an error but never panic the client.
//!
//! Method: the input's first byte chooses the outbox (publishes retained until confirmed, as with
//! `reconnect`, or not) and how the rest is cut into reads (each cut point steered by the input).
//! The bytes are handled twice, by two fresh states: in one read, and in those reads.
//! - Neither may panic, whatever the bytes.
//! - How the bytes are cut into reads changes nothing: both end with the same error, or both end
//!   without one and with the same observable outcome (replies, deliveries, confirms, counters,
//!   the partial frame left). After an error only the error is compared: frames after it in the
//!   same read were dispatched in one case and not read in the other.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq_client::fuzzing::ReaderRig;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else { return };
    let reconnect = choice & 1 == 1;

    let mut whole = ReaderRig::new(reconnect);
    let whole_result = whole.handle_read(bytes);

    let mut parts = ReaderRig::new(reconnect);
    let mut parts_result = Ok(());
    for read in reads(bytes, choice >> 1) {
        parts_result = parts.handle_read(read);
        if parts_result.is_err() {
            break;
        }
    }

    let (whole, parts) = (whole.outcome(), parts.outcome());
    assert_eq!(whole.ended, parts.ended, "one read gave {whole_result:?}, several {parts_result:?}");
    if whole.ended.is_none() {
        assert_eq!(whole, parts, "the cut into reads changed the outcome");
    }
});

/// `bytes` cut into reads: each read's length is the next byte of `bytes` (from the start, as
/// steering) plus `stride`, so both long and byte-by-byte reads occur.
fn reads(bytes: &[u8], stride: u8) -> Vec<&[u8]> {
    let mut reads = Vec::new();
    let mut rest = bytes;
    let mut steering = bytes.iter().copied().cycle();
    while !rest.is_empty() {
        let length = (usize::from(steering.next().unwrap_or(0) % 64) + usize::from(stride % 4)).clamp(1, rest.len());
        let (read, after) = rest.split_at(length);
        reads.push(read);
        rest = after;
    }
    reads
}
