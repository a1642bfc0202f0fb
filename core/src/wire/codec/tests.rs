use std::collections::BTreeSet;

use bytes::Bytes;

use super::*;
use crate::ids::RequestId;
use crate::limits::NAME_BYTES_MAX;
use crate::wire::decode_preamble;
use crate::wire::frame::{
    Binding, ConfirmOutcome, ErrorCode, ExchangeKind, Header, Message, Settlement, PREAMBLE_FLAG_ADMIN,
    PROTOCOL_VERSION,
};
use crate::wire::frame_type::NATIVE_FRAME_TYPES as FRAME_TYPES;
use crate::wire::primitives::{
    error_code_from_u16, message_bytes_len, ERROR_CODES, ERROR_CODE_FIRST, ERROR_CODE_LAST, OUTCOME_STORED,
};
use crate::wire::writers::{ConfirmWriter, DeliverWriter, PublishWriter};

// ----- helpers -----

fn encoded(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    out
}

/// Decodes `bytes` as one whole frame and checks that it consumed all of them.
fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let result = decode(&mut buf, FRAME_BYTES_MAX);
    if let Ok(Some(_)) = result {
        assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    }
    result
}

/// A frame of `frame_type` with `body`, length computed.
fn raw_frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
    out.push(frame_type);
    out.extend_from_slice(body);
    out
}

fn message(key: &str, id: &str, headers: &[(&str, &str)], body: &[u8]) -> Message {
    Message {
        routing_key: Bytes::copy_from_slice(key.as_bytes()),
        message_id: Bytes::copy_from_slice(id.as_bytes()),
        headers: headers
            .iter()
            .map(|(name, value)| Header {
                name: Bytes::copy_from_slice(name.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
            })
            .collect(),
        body: Bytes::copy_from_slice(body),
    }
}

fn messages() -> Vec<Message> {
    vec![
        message("orders.eu", "m-1", &[("content-type", "text/plain"), ("x", "")], b"hello"),
        Message::default(),
        message("", "m-3", &[], &[0xff; 300]),
    ]
}

fn binding() -> Binding {
    Binding { exchange: "amq.topic".into(), queue: "q1".into(), key: "orders.#".into() }
}

/// One or more frames of every variant, with empty, typical and extreme field values.
fn sample_frames() -> Vec<Frame> {
    let rejected =
        ConfirmOutcome::Rejected { code: ErrorCode::QueueFull, reason: "queue q1 is full: max-count 10".into() };
    vec![
        Frame::QueueDeclare {
            request: RequestId(1),
            name: "q1".into(),
            options: QueueOptions {
                exclusive: true,
                auto_delete: false,
                passive: true,
                max_count: Some(10),
                max_bytes: None,
            },
            arguments: vec![("qpid.replicate".into(), "all".into()), ("é".into(), "".into())],
        },
        Frame::QueueDeclare {
            request: RequestId(u32::MAX),
            name: "n".repeat(NAME_BYTES_MAX as usize),
            options: QueueOptions { max_bytes: Some(u64::MAX), ..QueueOptions::default() },
            arguments: vec![],
        },
        Frame::QueueDelete { request: RequestId(2), name: "q1".into() },
        Frame::QueuePurge { request: RequestId(3), name: String::new() },
        Frame::QueueList { request: RequestId(4) },
        Frame::ExchangeDeclare {
            request: RequestId(5),
            name: "ex".into(),
            kind: ExchangeKind::Topic,
            passive: false,
            arguments: vec![("a".into(), "b".into())],
        },
        Frame::ExchangeDeclare {
            request: RequestId(5),
            name: "fan".into(),
            kind: ExchangeKind::Fanout,
            passive: true,
            arguments: vec![],
        },
        Frame::ExchangeDelete { request: RequestId(6), name: "ex".into() },
        Frame::ExchangeList { request: RequestId(7) },
        Frame::Bind { request: RequestId(8), binding: binding() },
        Frame::Unbind { request: RequestId(9), binding: binding() },
        Frame::Publish { exchange: "amq.topic".into(), first_seq: Seq(7), messages: messages() },
        Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![] },
        Frame::Publish { exchange: String::new(), first_seq: Seq(u64::MAX), messages: vec![Message::default()] },
        Frame::Subscribe { request: RequestId(10), consumer: ConsumerId(3), queue: "q1".into(), prefetch: 1000 },
        Frame::Cancel { request: RequestId(11), consumer: ConsumerId(3) },
        Frame::Settle {
            consumer: ConsumerId(3),
            settlement: Settlement::Ack,
            ranges: vec![TagRange { first: Tag(0), last: Tag(9) }, TagRange { first: Tag(5), last: Tag(5) }],
        },
        Frame::Settle { consumer: ConsumerId(0), settlement: Settlement::Reject, ranges: vec![] },
        Frame::Settle {
            consumer: ConsumerId(1),
            settlement: Settlement::Release,
            ranges: vec![TagRange { first: Tag(u64::MAX), last: Tag(u64::MAX) }],
        },
        Frame::Heartbeat,
        Frame::Hello { version: PROTOCOL_VERSION, broker: "ringmq 0.1.0".into() },
        Frame::Ok { request: RequestId(12) },
        Frame::Failed { request: RequestId(13), code: ErrorCode::NotFound, message: "queue q9 not found".into() },
        Frame::Error { code: ErrorCode::NotPrimary, message: "not primary".into() },
        Frame::Confirm {
            ranges: vec![
                ConfirmRange { first: Seq(0), last: Seq(4), outcome: ConfirmOutcome::Stored },
                ConfirmRange { first: Seq(5), last: Seq(5), outcome: ConfirmOutcome::Unroutable },
                ConfirmRange { first: Seq(6), last: Seq(9), outcome: rejected },
                ConfirmRange { first: Seq(20), last: Seq(20), outcome: ConfirmOutcome::Stored },
            ],
        },
        Frame::Confirm { ranges: vec![] },
        Frame::Deliver {
            consumer: ConsumerId(3),
            first_tag: Tag(100),
            messages: messages()
                .into_iter()
                .enumerate()
                .map(|(index, message)| Delivered { redelivered: index == 1, message })
                .collect(),
        },
        Frame::QueueListReply {
            request: RequestId(14),
            queues: vec![
                QueueInfo {
                    name: "q1".into(),
                    depth: 1,
                    bytes: 2,
                    unacked: 3,
                    consumers: 4,
                    enqueued: 5,
                    dequeued: u64::MAX,
                },
                QueueInfo {
                    name: String::new(),
                    depth: 0,
                    bytes: 0,
                    unacked: 0,
                    consumers: 0,
                    enqueued: 0,
                    dequeued: 0,
                },
            ],
        },
        Frame::ExchangeListReply {
            request: RequestId(15),
            exchanges: vec![
                ExchangeInfo { name: String::new(), kind: ExchangeKind::Direct, bindings: 0 },
                ExchangeInfo { name: "amq.topic".into(), kind: ExchangeKind::Topic, bindings: 7 },
            ],
        },
        Frame::ConsumerCancelled { consumer: ConsumerId(3), reason: "queue deleted".into() },
        Frame::HaStatus { request: RequestId(16) },
        Frame::HaPromote { request: RequestId(17) },
        Frame::HaFence { request: RequestId(20), epoch: 66 },
        Frame::HaStatusReply {
            request: RequestId(18),
            state: "active".into(),
            epoch: 1,
            brokers_url: "amqp:tcp:10.0.0.1:5672,tcp:10.0.0.2:5672".into(),
            public_url: String::new(),
            name: "10.0.0.1:5672".into(),
            ready_set: ReadySet { epoch: 1, version: 7, members: vec!["10.0.0.2:5672".into(), "10.0.0.3:5672".into()] },
        },
        Frame::HaStatusReply {
            request: RequestId(19),
            state: "joining".into(),
            epoch: u64::MAX,
            brokers_url: String::new(),
            public_url: "amqp:tcp:vip:5672".into(),
            name: String::new(),
            ready_set: ReadySet::default(),
        },
    ]
}

/// A valid publish frame of one message, as raw bytes, for corrupting.
fn publish_bytes() -> Vec<u8> {
    let frame = Frame::Publish {
        exchange: "ex".into(),
        first_seq: Seq(1),
        messages: vec![message("k", "id", &[("h", "v")], b"body")],
    };
    encoded(&frame).to_vec()
}

fn invalid_reason(result: Result<Option<Frame>, DecodeError>) -> String {
    match result {
        Err(error @ DecodeError::Invalid { .. }) => error.to_string(),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

// ----- round trips -----

#[test]
fn every_frame_variant_round_trips() {
    // Goal: decode(encode(f)) == f for every variant. Method: encode each sample, decode it
    // from a buffer holding exactly its bytes, compare.
    for frame in sample_frames() {
        let bytes = encoded(&frame);
        let decoded = decode_one(&bytes).unwrap_or_else(|error| panic!("{frame:?}: {error}"));
        assert_eq!(decoded.as_ref(), Some(&frame));
    }
}

#[test]
fn sample_frames_cover_every_frame_type() {
    // Goal: the round-trip test cannot silently miss a variant added later. Method: collect
    // the frame type of every sample and compare with the list of all types.
    let covered: BTreeSet<FrameType> = sample_frames().iter().map(FrameType::of).collect();
    let all: BTreeSet<FrameType> = FRAME_TYPES.iter().copied().collect();
    assert_eq!(covered, all);
}

#[test]
fn frame_types_are_distinct_and_split_by_direction() {
    // Goal: the numbers in PROTOCOL.md hold: unique, client to broker below 0x80, broker to
    // client from 0x80, and `from_u8` is the inverse of `as u8`.
    let numbers: BTreeSet<u8> = FRAME_TYPES.iter().map(|t| *t as u8).collect();
    assert_eq!(numbers.len(), FRAME_TYPES.len());
    for frame_type in FRAME_TYPES {
        assert_eq!(FrameType::from_u8(frame_type as u8), Some(frame_type));
        let to_broker = matches!(
            frame_type,
            FrameType::Heartbeat
                | FrameType::QueueDeclare
                | FrameType::QueueDelete
                | FrameType::QueuePurge
                | FrameType::QueueList
                | FrameType::ExchangeDeclare
                | FrameType::ExchangeDelete
                | FrameType::ExchangeList
                | FrameType::Bind
                | FrameType::Unbind
                | FrameType::Publish
                | FrameType::Subscribe
                | FrameType::Cancel
                | FrameType::Settle
                | FrameType::HaStatus
                | FrameType::HaPromote
                | FrameType::HaFence
        );
        assert_eq!(to_broker, (frame_type as u8) < 0x80, "{frame_type:?}");
    }
    // Spot-check the published numbers.
    assert_eq!(encoded(&Frame::Heartbeat)[..], [1, 0, 0, 0, 0x01]);
    assert_eq!(encoded(&Frame::Ok { request: RequestId(2) })[..], [5, 0, 0, 0, 0x81, 2, 0, 0, 0]);
}

#[test]
fn publish_bytes_match_the_protocol_md_example() {
    // Goal: pin the wire format to the example in PROTOCOL.md, section 3, byte for byte.
    let frame = Frame::Publish {
        exchange: String::new(),
        first_seq: Seq(0),
        messages: vec![Message {
            routing_key: Bytes::from_static(b"k"),
            body: Bytes::from_static(b"hi"),
            ..Message::default()
        }],
    };
    let expected: &[u8] = &[
        0x1c, 0, 0, 0,    // length 28
        0x30, // publish
        0, 0, // exchange ""
        0, 0, 0, 0, 0, 0, 0, 0, // first seq 0
        1, 0, 0, 0, // 1 message
        1, 0, b'k', // routing key "k"
        0, 0, // message id ""
        0, 0, // 0 headers
        2, 0, 0, 0, b'h', b'i', // body "hi"
    ];
    assert_eq!(encoded(&frame)[..], *expected);
}

#[test]
fn error_codes_round_trip_with_stable_numbers() {
    // Goal: every ErrorCode has the number PROTOCOL.md lists, and 0 and 12 are no code.
    for (index, code) in ERROR_CODES.iter().enumerate() {
        let number = error_code_to_u16(*code);
        assert_eq!(number, ERROR_CODE_FIRST + index as u16);
        assert_eq!(error_code_from_u16(number), Some(*code));
    }
    assert_eq!(error_code_to_u16(ErrorCode::Malformed), 1);
    assert_eq!(error_code_to_u16(ErrorCode::Internal), 11);
    assert_eq!(error_code_from_u16(0), None);
    assert_eq!(error_code_from_u16(ERROR_CODE_LAST + 1), None);
}

#[test]
fn preamble_round_trips_and_waits_for_eight_bytes() {
    // Goal: the preamble is 8 bytes; fewer is incomplete; bytes after it are not its business.
    let preamble = Preamble { version: PROTOCOL_VERSION, flags: PREAMBLE_FLAG_ADMIN };
    let mut out = BytesMut::new();
    encode_preamble(preamble, &mut out);
    assert_eq!(out[..], *b"RNMQ\x01\x00\x01\x00");
    for len in 0..PREAMBLE_LEN {
        assert_eq!(decode_preamble(&out[..len]), Ok(None), "prefix of {len} bytes");
    }
    // Frames that follow in the same read do not disturb the preamble.
    encode(&Frame::Heartbeat, &mut out);
    assert_eq!(decode_preamble(&out), Ok(Some(preamble)));
}

#[test]
fn preamble_with_bad_magic_names_expected_and_received_bytes() {
    // Goal: an AMQP header (or anything else) is refused with both magics in the message.
    let error = decode_preamble(b"AMQP\x00\x01\x00\x00").unwrap_err();
    assert_eq!(error, DecodeError::BadMagic { got: *b"AMQP" });
    assert_eq!(error.to_string(), r#"expected preamble "RNMQ", got "AMQP""#);
    assert_eq!(error.code(), ErrorCode::Malformed);
    let error = decode_preamble(b"\x16\x03\x01\x00rest").unwrap_err();
    assert_eq!(error.to_string(), r#"expected preamble "RNMQ", got "\x16\x03\x01\x00""#);
}

// ----- incomplete versus invalid -----

#[test]
fn every_proper_prefix_is_incomplete_and_consumes_nothing() {
    // Goal: a frame that arrives byte by byte is never mistaken for an invalid one. Method:
    // decode every proper prefix of every sample; each must be Ok(None) and leave the buffer
    // as it was.
    for frame in sample_frames() {
        let bytes = encoded(&frame);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(None), "{frame:?} at {len}");
            assert_eq!(buf[..], bytes[..len]);
        }
    }
}

#[test]
fn two_frames_back_to_back_decode_one_at_a_time() {
    // Goal: decode consumes exactly one frame. Method: two frames and half of a third in one
    // buffer; decode three times.
    let first = Frame::Ok { request: RequestId(1) };
    let second = Frame::Publish { exchange: "e".into(), first_seq: Seq(3), messages: messages() };
    let third = Frame::Heartbeat;
    let mut buf = encoded(&first);
    encode(&second, &mut buf);
    let third_bytes = encoded(&third);
    buf.extend_from_slice(&third_bytes[..2]);
    // One frame per call, in order.
    assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(Some(first)));
    assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(Some(second)));
    // The third is incomplete until its last bytes arrive.
    assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(None));
    assert_eq!(buf.len(), 2);
    buf.extend_from_slice(&third_bytes[2..]);
    assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(Some(third)));
    assert!(buf.is_empty());
    assert_eq!(decode(&mut buf, FRAME_BYTES_MAX), Ok(None));
}

#[test]
fn oversized_length_is_rejected_before_the_body_arrives() {
    // Goal: a peer cannot make the broker buffer a frame above max-frame-size. Method: only
    // the 4 length bytes are in the buffer.
    let max = 1024 * 1024;
    let mut buf = BytesMut::from(&20_000_000u32.to_le_bytes()[..]);
    let error = decode(&mut buf, max).unwrap_err();
    assert_eq!(error, DecodeError::FrameTooLarge { size: 20_000_004, max });
    assert_eq!(error.to_string(), "frame of 20000004 bytes exceeds max-frame-size 1048576");
    assert_eq!(error.code(), ErrorCode::LimitExceeded);
    // The largest length saturates instead of overflowing.
    let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
    assert_eq!(
        decode(&mut buf, FRAME_BYTES_MAX),
        Err(DecodeError::FrameTooLarge { size: u32::MAX, max: FRAME_BYTES_MAX })
    );
}

#[test]
fn max_frame_size_counts_the_length_prefix() {
    // Goal: a frame of exactly max-frame-size bytes (prefix included) passes, one more fails.
    let frame = Frame::Error { code: ErrorCode::Internal, message: "x".repeat(100) };
    let bytes = encoded(&frame);
    let size = bytes.len() as u32;
    let mut buf = bytes.clone();
    assert_eq!(decode(&mut buf, size), Ok(Some(frame)));
    let mut buf = bytes.clone();
    assert_eq!(decode(&mut buf, size - 1), Err(DecodeError::FrameTooLarge { size, max: size - 1 }));
}

#[test]
fn unknown_frame_type_is_rejected_once_its_byte_arrives() {
    // Goal: the type is checked before the body is awaited.
    for type_byte in [0x00, 0x02, 0x7f, 0xff] {
        let mut buf = BytesMut::from(&[100, 0, 0, 0, type_byte][..]);
        let error = decode(&mut buf, FRAME_BYTES_MAX).unwrap_err();
        assert_eq!(error, DecodeError::UnknownFrameType(type_byte));
        assert_eq!(error.code(), ErrorCode::Malformed);
    }
    assert_eq!(DecodeError::UnknownFrameType(0x7f).to_string(), "unknown frame type 0x7f");
}

#[test]
fn zero_length_frame_is_invalid() {
    // Goal: a frame always has at least its type byte.
    let reason = invalid_reason(decode_one(&[0, 0, 0, 0]));
    assert_eq!(reason, "frame: length is 0, at least 1 needed (the frame type)");
}

#[test]
fn trailing_bytes_after_the_body_are_invalid() {
    // Goal: a frame is exactly as long as its length says. Method: a heartbeat and an ok with
    // extra bytes inside their length.
    assert_eq!(
        invalid_reason(decode_one(&raw_frame(0x01, &[1, 2, 3]))),
        "heartbeat: trailing 3 bytes after frame body"
    );
    assert_eq!(invalid_reason(decode_one(&raw_frame(0x81, &[1, 0, 0, 0, 9]))), "ok: trailing 1 bytes after frame body");
}

#[test]
fn field_running_past_the_frame_end_is_invalid() {
    // Goal: inside a complete frame, a missing field is invalid, not incomplete. Method:
    // shrink the length of a valid frame and drop its last bytes.
    let bytes = raw_frame(0x81, &[1, 0]);
    assert_eq!(invalid_reason(decode_one(&bytes)), "ok: truncated: request needs 4 bytes, 2 remain");
    // A body length larger than the rest of the frame.
    let mut bytes = publish_bytes();
    let body_len_at = bytes.len() - 4 - 4;
    bytes[body_len_at..body_len_at + 4].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(invalid_reason(decode_one(&bytes)), "publish: truncated: body needs 5 bytes, 4 remain");
}

#[test]
fn corrupt_field_values_are_invalid() {
    // Goal: every enum, bool, flag and option byte outside its allowed values is refused, with
    // a message naming the field, what came and what is allowed.
    let declare = encoded(&Frame::QueueDeclare {
        request: RequestId(1),
        name: "q".into(),
        options: QueueOptions::default(),
        arguments: vec![],
    });
    // Frame header 5, request 4, name 3: the exclusive bool is at 12.
    let mut bytes = declare.to_vec();
    bytes[12] = 2;
    assert_eq!(invalid_reason(decode_one(&bytes)), "queue-declare: exclusive is 2, a bool must be 0 or 1");
    // An absent max-count (at 15, value at 16..24) that carries a value.
    let mut bytes = declare.to_vec();
    bytes[16] = 5;
    assert_eq!(
        invalid_reason(decode_one(&bytes)),
        "queue-declare: max-count is absent but carries 5; an absent value must be 0"
    );

    // Exchange kind 3 (frame header 5, request 4, name "x" 3: kind at 12).
    let mut bytes = encoded(&Frame::ExchangeDeclare {
        request: RequestId(1),
        name: "x".into(),
        kind: ExchangeKind::Direct,
        passive: false,
        arguments: vec![],
    })
    .to_vec();
    bytes[12] = 3;
    assert_eq!(
        invalid_reason(decode_one(&bytes)),
        "exchange-declare: exchange kind is 3, must be 0 (direct), 1 (fanout) or 2 (topic)"
    );

    // Settlement 3 (frame header 5, consumer 4: settlement at 9).
    let mut bytes =
        encoded(&Frame::Settle { consumer: ConsumerId(1), settlement: Settlement::Ack, ranges: vec![] }).to_vec();
    bytes[9] = 3;
    assert!(invalid_reason(decode_one(&bytes)).starts_with("settle: settlement is 3"));

    // Error code 0 and 13.
    for code in [0u16, 13] {
        let mut body = code.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0]);
        assert_eq!(
            invalid_reason(decode_one(&raw_frame(0x83, &body))),
            format!("error: error code is {code}, must be in 1..=12")
        );
    }

    // Confirm outcome 3.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    body.push(3);
    assert!(invalid_reason(decode_one(&raw_frame(0x90, &body))).starts_with("confirm: outcome is 3"));

    // Deliver flags with a reserved bit (frame header 5, consumer 4, tag 8, count 4: 21).
    let mut bytes = encoded(&Frame::Deliver {
        consumer: ConsumerId(1),
        first_tag: Tag(0),
        messages: vec![Delivered { redelivered: true, message: Message::default() }],
    })
    .to_vec();
    bytes[21] = 0x03;
    assert_eq!(invalid_reason(decode_one(&bytes)), "deliver: flags are 0x03, only bit 0 (redelivered) may be set");
}

#[test]
fn strings_must_be_utf8() {
    // Goal: names and texts are UTF-8; byte fields (routing key, body) need not be.
    let mut body = 1u16.to_le_bytes().to_vec();
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&[0xc3, 0x28]);
    let reason = invalid_reason(decode_one(&raw_frame(0x80, &body)));
    assert!(reason.starts_with("hello: broker is not UTF-8"), "{reason}");
    let frame = Frame::Publish {
        exchange: String::new(),
        first_seq: Seq(0),
        messages: vec![Message {
            routing_key: Bytes::from_static(&[0xc3, 0x28]),
            body: Bytes::from_static(&[0xff, 0xfe]),
            ..Message::default()
        }],
    };
    assert_eq!(decode_one(&encoded(&frame)), Ok(Some(frame)));
}

#[test]
fn ranges_need_first_at_most_last() {
    // Goal: settle and confirm refuse a range with first > last.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&9u64.to_le_bytes());
    body.extend_from_slice(&8u64.to_le_bytes());
    assert_eq!(invalid_reason(decode_one(&raw_frame(0x33, &body))), "settle: range 9..=8 has first > last");
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&9u64.to_le_bytes());
    body.extend_from_slice(&8u64.to_le_bytes());
    body.push(OUTCOME_STORED);
    assert_eq!(invalid_reason(decode_one(&raw_frame(0x90, &body))), "confirm: range 9..=8 has first > last");
}

#[test]
fn confirm_ranges_must_increase() {
    // Goal: confirm ranges are in increasing sequence order (frame.rs), so the client can
    // release them in one pass. Method: a range that overlaps its predecessor.
    let mut body = 2u32.to_le_bytes().to_vec();
    for (first, last) in [(0u64, 5u64), (5, 6)] {
        body.extend_from_slice(&first.to_le_bytes());
        body.extend_from_slice(&last.to_le_bytes());
        body.push(OUTCOME_STORED);
    }
    let reason = invalid_reason(decode_one(&raw_frame(0x90, &body)));
    assert!(reason.contains("range 5..=6 does not start after the previous range's last 5"));
}

#[test]
fn batch_whose_numbers_overflow_u64_is_invalid() {
    // Goal: the broker may compute first_seq + index for every message without overflow.
    let frame =
        Frame::Publish { exchange: String::new(), first_seq: Seq(u64::MAX), messages: vec![Message::default()] };
    let mut bytes = encoded(&frame).to_vec();
    // Frame header 5, exchange 2, first_seq 8: count at 15; claim 2 messages and add one.
    bytes[15] = 2;
    bytes.extend_from_slice(&encoded_message(&Message::default()));
    let length = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&length.to_le_bytes());
    assert_eq!(
        invalid_reason(decode_one(&bytes)),
        "publish: first-seq 18446744073709551615 plus 2 items overflows u64"
    );
}

fn encoded_message(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_message(&mut out, message);
    out.to_vec()
}

// ----- limits -----

#[test]
fn over_limit_counts_are_rejected_without_allocating() {
    // Goal: a count above its limit is refused as soon as it is read, before the items are
    // awaited or allocated. Method: frames that carry only the count, nothing after it.
    let cases: [(u8, Vec<u8>, &str, u32); 6] = [
        (0x30, [&[0, 0][..], &[0; 8]].concat(), "publish: batch of 10000 messages exceeds the limit 4096", 10_000),
        (0x91, [&[0; 4][..], &[0; 8]].concat(), "deliver: batch of 4097 messages exceeds the limit 4096", 4097),
        (0x90, vec![], "confirm: batch of 4097 ranges exceeds the limit 4096", 4097),
        (0x33, vec![0, 0, 0, 0, 0], "settle: batch of 4097 ranges exceeds the limit 4096", 4097),
        (0xa0, vec![0; 4], "queue-list-reply: batch of 65537 entries exceeds the limit 65536", 65_537),
        (0xa1, vec![0; 4], "exchange-list-reply: batch of 4294967295 entries exceeds the limit 65536", u32::MAX),
    ];
    for (type_byte, head, message, count) in cases {
        let mut body = head;
        body.extend_from_slice(&count.to_le_bytes());
        let error = decode_one(&raw_frame(type_byte, &body)).unwrap_err();
        assert_eq!(error.to_string(), message);
        assert_eq!(error.code(), ErrorCode::LimitExceeded);
    }
    // Arguments of a declare (request 4, name 2, 3 bools, 2 options).
    let mut body = vec![0; 4 + 2 + 3 + 9 + 9];
    body.extend_from_slice(&65u32.to_le_bytes());
    assert_eq!(
        decode_one(&raw_frame(0x10, &body)).unwrap_err().to_string(),
        "queue-declare: batch of 65 arguments exceeds the limit 64"
    );
    // Headers of a message (empty routing key and id, then the u16 header count).
    let mut body = [&[0, 0][..], &[0; 8], &1u32.to_le_bytes(), &[0, 0, 0, 0]].concat();
    body.extend_from_slice(&65u16.to_le_bytes());
    assert_eq!(
        decode_one(&raw_frame(0x30, &body)).unwrap_err().to_string(),
        "publish: batch of 65 headers exceeds the limit 64"
    );
}

#[test]
fn in_limit_count_in_a_short_frame_is_truncated() {
    // Goal: a frame that claims 4096 messages but holds none is invalid, quickly, and its
    // capacity is bounded by its remaining bytes (zero here), not by the count.
    let body = [&[0, 0][..], &[0; 8], &BATCH_MESSAGES_MAX.to_le_bytes()].concat();
    let reason = invalid_reason(decode_one(&raw_frame(0x30, &body)));
    assert_eq!(reason, "publish: truncated: routing key needs 2 bytes, 0 remain");
    let mut reader = Reader::new("publish", Bytes::from(BATCH_MESSAGES_MAX.to_le_bytes().to_vec()), 0);
    assert_eq!(reader.count("messages", BATCH_MESSAGES_MAX, MESSAGE_BYTES_MIN), Ok((BATCH_MESSAGES_MAX, 0)));
}

#[test]
fn names_longer_than_the_limit_are_rejected() {
    // Goal: queue, exchange, binding-key and argument names are at most NAME_BYTES_MAX bytes;
    // the error names the field, its length and the limit.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&300u16.to_le_bytes());
    body.extend_from_slice(&[b'q'; 300]);
    let error = decode_one(&raw_frame(0x10, &body)).unwrap_err();
    assert_eq!(error.to_string(), "queue-declare: name is 300 bytes, at most 255 allowed");
    assert_eq!(error.code(), ErrorCode::LimitExceeded);
    // Checked from the length alone: the 300 bytes need not have arrived.
    let error = decode_one(&raw_frame(0x10, &body[..6])).unwrap_err();
    assert!(matches!(error, DecodeError::NameTooLong { len: 300, .. }));
    // A binding key.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0]);
    body.extend_from_slice(&256u16.to_le_bytes());
    let error = decode_one(&raw_frame(0x20, &body)).unwrap_err();
    assert_eq!(error.to_string(), "bind: key is 256 bytes, at most 255 allowed");
}

#[test]
#[should_panic(expected = "name of 256 bytes exceeds NAME_BYTES_MAX")]
fn encoding_a_name_above_the_limit_is_a_bug() {
    // Goal: the pair assertion: what decode refuses, encode refuses to write.
    encode(&Frame::QueueDelete { request: RequestId(1), name: "q".repeat(256) }, &mut BytesMut::new());
}

#[test]
#[should_panic(expected = "does not follow")]
fn encoding_unordered_confirm_ranges_is_a_bug() {
    // Goal: the pair assertion for confirm range order.
    let ranges = vec![
        ConfirmRange { first: Seq(5), last: Seq(6), outcome: ConfirmOutcome::Stored },
        ConfirmRange { first: Seq(1), last: Seq(2), outcome: ConfirmOutcome::Stored },
    ];
    encode(&Frame::Confirm { ranges }, &mut BytesMut::new());
}

// ----- zero copy -----

#[test]
fn message_fields_are_slices_of_the_frame() {
    // Goal: decoding a publish copies no message bytes. Method: every decoded field's pointer
    // lies inside the buffer the frame was read into.
    let frame = Frame::Publish { exchange: "e".into(), first_seq: Seq(0), messages: messages() };
    let mut buf = encoded(&frame);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Ok(Some(Frame::Publish { messages: decoded, .. })) = decode(&mut buf, FRAME_BYTES_MAX) else {
        panic!("publish did not decode");
    };
    let inside = |bytes: &Bytes| bytes.is_empty() || range.contains(&(bytes.as_ptr() as usize));
    for message in &decoded {
        assert!(inside(&message.routing_key));
        assert!(inside(&message.message_id));
        assert!(inside(&message.body));
        for header in &message.headers {
            assert!(inside(&header.name));
            assert!(inside(&header.value));
        }
    }
    assert!(!decoded[2].body.is_empty() && inside(&decoded[2].body));
}

// ----- writers -----

#[test]
fn publish_writer_equals_encode() {
    // Goal: the streaming writer and encode produce the same bytes. Method: write the same
    // messages both ways, after some unrelated bytes already in the buffer.
    let messages = messages();
    let mut out = BytesMut::from(&b"prefix"[..]);
    let mut writer = PublishWriter::begin(&mut out, "amq.topic", Seq(7));
    let mut expected_len = writer.bytes_len();
    for message in &messages {
        writer.push(message);
        expected_len += message_bytes_len(message);
        assert_eq!(writer.bytes_len(), expected_len);
    }
    assert_eq!(writer.count(), 3);
    writer.finish();
    assert_eq!(out.len(), b"prefix".len() + expected_len);
    let frame = Frame::Publish { exchange: "amq.topic".into(), first_seq: Seq(7), messages };
    assert_eq!(out[b"prefix".len()..], encoded(&frame)[..]);

    // An empty batch too.
    let mut out = BytesMut::new();
    PublishWriter::begin(&mut out, "", Seq(0)).finish();
    let empty = Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages: vec![] };
    assert_eq!(out, encoded(&empty));
}

#[test]
fn deliver_writer_equals_encode() {
    // Goal: as for publish, with the per-message redelivered flag.
    let messages = messages();
    let mut out = BytesMut::new();
    let mut writer = DeliverWriter::begin(&mut out, ConsumerId(3), Tag(100));
    let mut expected_len = writer.bytes_len();
    for (index, message) in messages.iter().enumerate() {
        writer.push(index == 1, message);
        expected_len += message_bytes_len(message) + 1;
    }
    assert_eq!(writer.count(), 3);
    assert_eq!(writer.bytes_len(), expected_len);
    writer.finish();
    let frame = Frame::Deliver {
        consumer: ConsumerId(3),
        first_tag: Tag(100),
        messages: messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| Delivered { redelivered: index == 1, message })
            .collect(),
    };
    assert_eq!(out, encoded(&frame));
}

#[test]
fn confirm_writer_equals_encode_and_merges_adjacent_ranges_with_the_same_outcome() {
    // Goal: the writer merges a range into its predecessor exactly when it continues it with
    // an equal outcome, and writes what encode writes for the merged ranges.
    let full = |reason: &str| ConfirmOutcome::Rejected { code: ErrorCode::QueueFull, reason: reason.into() };
    let range = |first, last, outcome| ConfirmRange { first: Seq(first), last: Seq(last), outcome };
    let pushed = [
        range(0, 0, ConfirmOutcome::Stored),
        range(1, 3, ConfirmOutcome::Stored),     // continues: merged into 0..=3
        range(5, 5, ConfirmOutcome::Stored),     // gap: new range
        range(6, 6, ConfirmOutcome::Unroutable), // other outcome: new range
        range(7, 7, full("q1 full")),
        range(8, 9, full("q1 full")),   // same code and reason: merged into 7..=9
        range(10, 10, full("q2 full")), // other reason: new range
        range(11, 11, ConfirmOutcome::Rejected { code: ErrorCode::Internal, reason: "q2 full".into() }),
    ];
    let mut out = BytesMut::new();
    let mut writer = ConfirmWriter::begin(&mut out);
    for range in pushed {
        writer.push(range);
    }
    assert_eq!(writer.count(), 6);
    let bytes_len = writer.bytes_len();
    writer.finish();
    assert_eq!(out.len(), bytes_len);
    let expected = Frame::Confirm {
        ranges: vec![
            range(0, 3, ConfirmOutcome::Stored),
            range(5, 5, ConfirmOutcome::Stored),
            range(6, 6, ConfirmOutcome::Unroutable),
            range(7, 9, full("q1 full")),
            range(10, 10, full("q2 full")),
            range(11, 11, ConfirmOutcome::Rejected { code: ErrorCode::Internal, reason: "q2 full".into() }),
        ],
    };
    assert_eq!(out, encoded(&expected));
    assert_eq!(decode_one(&out), Ok(Some(expected)));

    // A reason that merely starts like the previous one does not merge.
    let mut out = BytesMut::new();
    let mut writer = ConfirmWriter::begin(&mut out);
    writer.push(range(0, 0, full("q1 full, more")));
    writer.push(range(1, 1, full("q1 full")));
    assert_eq!(writer.count(), 2);
    writer.finish();
}

#[test]
#[should_panic(expected = "batch already holds the limit of 4096 items")]
fn publish_writer_refuses_more_than_the_batch_limit() {
    // Goal: a writer never produces a frame the decoder would refuse.
    let mut out = BytesMut::new();
    let mut writer = PublishWriter::begin(&mut out, "", Seq(0));
    for _ in 0..=BATCH_MESSAGES_MAX {
        writer.push(&Message::default());
    }
}

// ----- robustness -----

#[test]
fn corrupting_any_byte_never_panics_and_keeps_the_encoding_canonical() {
    // Goal: a deterministic miniature of the fuzz target. Method: set every byte of every
    // sample to several values; decoding must not panic, and whatever decodes must re-encode
    // to exactly the bytes it came from.
    for frame in sample_frames() {
        let bytes = encoded(&frame).to_vec();
        for index in 0..bytes.len() {
            for value in [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff, bytes[index] ^ 0x01] {
                let mut corrupt = bytes.clone();
                corrupt[index] = value;
                let mut buf = BytesMut::from(&corrupt[..]);
                if let Ok(Some(decoded)) = decode(&mut buf, FRAME_BYTES_MAX) {
                    let consumed = corrupt.len() - buf.len();
                    assert_eq!(encoded(&decoded)[..], corrupt[..consumed]);
                }
            }
        }
    }
}

#[test]
fn error_messages_match_the_documented_forms() {
    // Goal: the messages in PROTOCOL.md are the ones the code produces.
    let too_many = DecodeError::TooMany { frame: "publish", what: "messages", count: 10_000, max: 4096 };
    assert_eq!(too_many.to_string(), "publish: batch of 10000 messages exceeds the limit 4096");
    let too_large = DecodeError::FrameTooLarge { size: 20_000_000, max: 1_048_576 };
    assert_eq!(too_large.to_string(), "frame of 20000000 bytes exceeds max-frame-size 1048576");
}
