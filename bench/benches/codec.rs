//! Native codec micro-benchmarks: a 64 KiB `publish` frame (the batch size measured best on
//! loopback, see `limits.rs`) filled with 1 KiB messages, and one filled with 128 B messages.
//!
//! Each group measures three things, in messages per second:
//! - `encode`: `codec::encode` of a `Frame::Publish` built beforehand;
//! - `publish_writer`: the same bytes streamed with `PublishWriter`, as the client does;
//! - `decode`: `codec::decode` of the frame, zero-copy (the copy into a fresh buffer is setup,
//!   outside the measurement).
//!
//! `cargo bench -p ringmq-bench --bench codec -- --test` runs every routine once as a check. Each
//! case prints the FNV-1a hash of its frame and asserts it against a pinned value, so that a change
//! to the workload cannot go unnoticed: update the pin and say why in the commit.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringmq_core::frame::{Frame, Header, Message};
use ringmq_core::ids::Seq;
use ringmq_core::limits::FRAME_BYTES_MAX;
use ringmq_core::wire::{codec, message_bytes_len, PublishWriter};

/// One benchmarked workload.
struct Case {
    /// The criterion group name.
    name: &'static str,
    /// Body size of every message, in bytes.
    body_bytes: usize,
    /// FNV-1a 64 of the encoded frame; pins the workload.
    frame_hash: u64,
}

const CASES: [Case; 2] = [
    Case { name: "publish_64KiB_1KiB_messages", body_bytes: 1024, frame_hash: 0x86b1_e2a3_f863_da12 },
    Case { name: "publish_64KiB_128B_messages", body_bytes: 128, frame_hash: 0x3e27_bdb4_16e7_fcf3 },
];

fn codec_benches(c: &mut Criterion) {
    for case in &CASES {
        let messages = messages(case.body_bytes);
        let message_count = messages.len() as u64;
        let frame =
            Frame::Publish { exchange: EXCHANGE.to_string(), first_seq: Seq(FIRST_SEQ), messages: messages.clone() };
        let mut encoded = BytesMut::new();
        codec::encode(&frame, &mut encoded);
        let frame_hash = fnv1a64(&encoded);
        println!(
            "{}: {} messages, {} bytes, frame fnv1a64 {:016x}",
            case.name,
            message_count,
            encoded.len(),
            frame_hash
        );
        // What is measured: the frame fills but does not exceed the target, decodes back to
        // itself, and the writer produces the same bytes.
        assert!(encoded.len() <= FRAME_BYTES_TARGET);
        assert_eq!(frame_hash, case.frame_hash, "{}: workload changed", case.name);
        assert_eq!(decode_copy(&encoded).as_ref(), Some(&frame));
        assert_eq!(write(&messages, BytesMut::new()), encoded);

        let mut group = c.benchmark_group(case.name);
        group.throughput(Throughput::Elements(message_count));
        group.bench_function("encode", |b| {
            let mut out = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                out.clear();
                codec::encode(black_box(&frame), &mut out);
                black_box(out.len())
            })
        });
        group.bench_function("publish_writer", |b| {
            let mut out = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                out.clear();
                let mut writer = PublishWriter::begin(&mut out, EXCHANGE, Seq(FIRST_SEQ));
                for message in black_box(&messages) {
                    writer.push(message);
                }
                writer.finish();
                black_box(out.len())
            })
        });
        group.bench_function("decode", |b| {
            b.iter_batched(
                || BytesMut::from(&encoded[..]),
                |mut buf| codec::decode(&mut buf, FRAME_BYTES_MAX),
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);

/// As many messages with `body_bytes` bodies as fit a frame of `FRAME_BYTES_TARGET` bytes. The
/// content is a fixed function of the index, so the frame hash is stable.
fn messages(body_bytes: usize) -> Vec<Message> {
    let mut frame_bytes = FRAME_HEAD_BYTES;
    let mut messages = Vec::new();
    loop {
        let index = messages.len();
        let message = Message {
            routing_key: Bytes::from(format!("orders.eu.{:05}", index % 100)),
            message_id: Bytes::from(format!("m-{index:08}")),
            headers: vec![Header {
                name: Bytes::from_static(b"content-type"),
                value: Bytes::from_static(b"application/octet-stream"),
            }],
            body: (0..body_bytes).map(|offset| (index * 31 + offset) as u8).collect(),
        };
        frame_bytes += message_bytes_len(&message);
        if frame_bytes > FRAME_BYTES_TARGET {
            return messages;
        }
        messages.push(message);
    }
}

fn write(messages: &[Message], mut out: BytesMut) -> BytesMut {
    let mut writer = PublishWriter::begin(&mut out, EXCHANGE, Seq(FIRST_SEQ));
    for message in messages {
        writer.push(message);
    }
    writer.finish();
    out
}

fn decode_copy(encoded: &[u8]) -> Option<Frame> {
    let mut buf = BytesMut::from(encoded);
    let frame = codec::decode(&mut buf, FRAME_BYTES_MAX).expect("the frame is valid");
    assert!(buf.is_empty());
    frame
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Frame size each case fills, in bytes, length prefix included.
const FRAME_BYTES_TARGET: usize = 64 * 1024;
/// The exchange every case publishes to.
const EXCHANGE: &str = "amq.topic";
/// The first sequence number of every case's batch.
const FIRST_SEQ: u64 = 1_000_000;
/// Bytes of a publish frame before its first message: length, type, exchange, first seq, count.
const FRAME_HEAD_BYTES: usize = 4 + 1 + 2 + EXCHANGE.len() + 8 + 4;
