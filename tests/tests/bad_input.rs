//! Bad bytes from a client, sent over a raw `TcpStream`: the broker answers each with an `Error`
//! frame that names the problem (what was allowed and what came), closes that connection, and
//! keeps serving everyone else.
//!
//! Method throughout: write the bad bytes by hand, decode the reply with `ringmq_core::wire`,
//! expect exactly one `Error` frame followed by end of stream within a deadline; then check that
//! a connection opened before the bad one, and a fresh one opened after, still declare, publish
//! and consume.
//!
//! Every broker runs with `--max-frame-size 65536`, so the frame-size limit can be probed with
//! small frames.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use ringmq_client::blocking::Connection;
use ringmq_client::{ConnectOptions, Message, QueueOptions};
use ringmq_core::frame::{ConfirmOutcome, ConfirmRange, ErrorCode, Frame, Preamble, PROTOCOL_VERSION};
use ringmq_core::ids::{RequestId, Seq};
use ringmq_core::limits::FRAME_BYTES_MAX;
use ringmq_core::wire::codec;
use ringmq_tests::BrokerProcess;

/// The broker's `max-frame-size` in these tests, in bytes.
const FRAME_SIZE_MAX: u32 = 65_536;
/// Longest a test waits for a reply, for the end of a stream, or for a delivery.
const WAIT: Duration = Duration::from_secs(10);
/// Bytes of a one-message publish frame besides the body, for a 3-byte routing key: length 4,
/// type 1, exchange 2, first seq 8, count 4, key 2 + 3, message id 2, header count 2, body
/// length 4.
const PUBLISH_OVERHEAD_BYTES: u64 = 4 + 1 + 2 + 8 + 4 + 2 + 3 + 2 + 2 + 4;

#[test]
fn garbage_instead_of_the_preamble_is_refused_naming_the_bad_magic() {
    // Goal: a connection that does not start with "RNMQ" gets one Error frame (Malformed) whose
    // message quotes the four bytes that came, then end of stream; other clients are unaffected.
    // Method: an HTTP request, then an AMQP 1.0 header (AMQP is not served yet), each on its own
    // connection, while a good connection stays open.
    let broker = start();
    let bystander = Bystander::open(&broker);

    // An HTTP request line where the preamble belongs.
    let mut stream = connect(&broker);
    stream.write_all(b"GET / HTTP/1.1\r\nHost: ringmq\r\n\r\n").unwrap();
    assert_eq!(
        error_then_close(&mut stream),
        (ErrorCode::Malformed, r#"expected preamble "RNMQ", got "GET ""#.to_string())
    );

    // The AMQP 1.0 protocol header.
    let mut stream = connect(&broker);
    stream.write_all(b"AMQP\x00\x01\x00\x00").unwrap();
    assert_eq!(
        error_then_close(&mut stream),
        (ErrorCode::Malformed, r#"expected preamble "RNMQ", got "AMQP""#.to_string())
    );

    // Binary garbage is quoted escaped.
    let mut stream = connect(&broker);
    stream.write_all(&[0xff, 0x00, 0x52, 0x0a, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert_eq!(
        error_then_close(&mut stream),
        (ErrorCode::Malformed, r#"expected preamble "RNMQ", got "\xff\x00R\n""#.to_string())
    );

    // The broker still serves the connection opened before, and new ones.
    bystander.assert_serves("bystander-after-garbage");
    assert_broker_serves(&broker, "fresh-after-garbage");
}

#[test]
fn unsupported_protocol_version_is_refused_naming_the_supported_one() {
    // Goal: a preamble with a version other than 1 gets an UnsupportedVersion Error naming the
    // version that came and the one the broker speaks, then end of stream.
    // Method: versions 0, 2 and 65535, each on its own connection.
    let broker = start();
    let bystander = Bystander::open(&broker);

    // Each wrong version, refused with both numbers.
    for version in [0u16, 2, u16::MAX] {
        let mut stream = connect(&broker);
        stream.write_all(&preamble(version)).unwrap();
        let expected = format!("protocol version {version} is not supported; this broker speaks {PROTOCOL_VERSION}");
        assert_eq!(error_then_close(&mut stream), (ErrorCode::UnsupportedVersion, expected));
    }

    // Others are unaffected.
    bystander.assert_serves("bystander-after-version");
    assert_broker_serves(&broker, "fresh-after-version");
}

#[test]
fn unknown_frame_type_is_refused_as_soon_as_its_type_byte_arrives() {
    // Goal: after a good handshake, a frame whose type byte names no frame gets a Malformed
    // Error naming the type, without the broker waiting for the body the length announced.
    // Method: send only the length (100) and the type byte 0x7f, then wait for the Error.
    let broker = start();
    let bystander = Bystander::open(&broker);

    // Handshake, then the head of a frame of an unknown type.
    let mut stream = connect(&broker);
    handshake(&mut stream);
    let mut head = 100u32.to_le_bytes().to_vec();
    head.push(0x7f);
    stream.write_all(&head).unwrap();
    assert_eq!(error_then_close(&mut stream), (ErrorCode::Malformed, "unknown frame type 0x7f".to_string()));

    // Others are unaffected.
    bystander.assert_serves("bystander-after-type");
    assert_broker_serves(&broker, "fresh-after-type");
}

#[test]
fn frame_above_max_frame_size_is_refused_before_its_body_is_sent() {
    // Goal: with --max-frame-size 65536, a frame of exactly 65536 bytes is accepted, and a
    // length prefix announcing more is refused with LimitExceeded naming the size and the limit
    // as soon as the 4 length bytes arrive: the client never has to send the body.
    // Method: a publish of exactly the limit on a raw connection (confirmed stored), then a
    // header claiming 1 MiB; on a second connection, a frame one byte over the limit.
    let broker = start();
    let bystander = Bystander::open(&broker);
    bystander.connection.declare_queue("big", QueueOptions::default(), &[]).unwrap();

    // A publish frame of exactly max-frame-size bytes is stored.
    let mut stream = connect(&broker);
    handshake(&mut stream);
    let frame = publish_frame_of_size(FRAME_SIZE_MAX as usize, "big", Seq(0));
    stream.write_all(&frame).unwrap();
    let mut buffer = BytesMut::new();
    let confirm = read_frame(&mut stream, &mut buffer);
    let stored = ConfirmRange { first: Seq(0), last: Seq(0), outcome: ConfirmOutcome::Stored };
    assert_eq!(confirm, Frame::Confirm { ranges: vec![stored] });

    // Only the 4 length bytes of a 1 MiB frame: refused at once, naming size and limit.
    stream.write_all(&(1024u32 * 1024).to_le_bytes()).unwrap();
    let expected = format!("frame of {} bytes exceeds max-frame-size {FRAME_SIZE_MAX}", 1024 * 1024 + 4);
    assert_eq!(error_then_close_after(&mut stream, buffer), (ErrorCode::LimitExceeded, expected));

    // One byte over the limit is refused too (the whole frame is sent this time).
    let mut stream = connect(&broker);
    handshake(&mut stream);
    let frame = publish_frame_of_size(FRAME_SIZE_MAX as usize + 1, "big", Seq(0));
    stream.write_all(&frame).unwrap();
    let expected = format!("frame of {} bytes exceeds max-frame-size {FRAME_SIZE_MAX}", FRAME_SIZE_MAX + 1);
    assert_eq!(error_then_close(&mut stream), (ErrorCode::LimitExceeded, expected));

    // The stored message is intact, and others are unaffected.
    let info = bystander.connection.list_queues().unwrap().into_iter().find(|q| q.name == "big").unwrap();
    assert_eq!((info.depth, info.bytes), (1, u64::from(FRAME_SIZE_MAX) - PUBLISH_OVERHEAD_BYTES));
    bystander.assert_serves("bystander-after-size");
    assert_broker_serves(&broker, "fresh-after-size");
}

#[test]
fn invalid_frames_after_the_handshake_are_refused_naming_the_problem() {
    // Goal: each kind of invalid frame gets an Error with the right code and a message naming
    // the frame, what was allowed and what came; the connection is then closed.
    // Method: one connection per case, each a hand-made frame after a good handshake.
    let broker = start();
    let bystander = Bystander::open(&broker);
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        (
            "zero length",
            frame_bytes(&[]),
            ErrorCode::Malformed,
            "frame: length is 0, at least 1 needed (the frame type)",
        ),
        (
            "trailing bytes",
            frame_bytes(&[0x01, 1, 2, 3]),
            ErrorCode::Malformed,
            "heartbeat: trailing 3 bytes after frame body",
        ),
        (
            "truncated field",
            frame_bytes(&[0x11, 7, 0]),
            ErrorCode::Malformed,
            "queue-delete: truncated: request needs 4 bytes, 2 remain",
        ),
        (
            "enum out of range",
            // exchange-declare: request 1, name "x", kind 3, passive false, no arguments.
            frame_bytes(&[0x18, 1, 0, 0, 0, 1, 0, b'x', 3, 0, 0, 0, 0, 0]),
            ErrorCode::Malformed,
            "exchange-declare: exchange kind is 3, must be 0 (direct), 1 (fanout) or 2 (topic)",
        ),
        (
            "batch over the limit",
            // publish: exchange "", first seq 0, a count of 10000 and no messages.
            frame_bytes(&[0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x27, 0, 0]),
            ErrorCode::LimitExceeded,
            "publish: batch of 10000 messages exceeds the limit 4096",
        ),
        (
            "wrong direction",
            encoded(&Frame::Ok { request: RequestId(1) }),
            ErrorCode::UnexpectedFrame,
            "a client may not send ok",
        ),
    ];
    for (case, bytes, code, message) in cases {
        // A good handshake, then the invalid frame.
        let mut stream = connect(&broker);
        handshake(&mut stream);
        stream.write_all(&bytes).unwrap();
        assert_eq!(error_then_close(&mut stream), (code, message.to_string()), "case: {case}");
    }

    // Others are unaffected.
    bystander.assert_serves("bystander-after-frames");
    assert_broker_serves(&broker, "fresh-after-frames");
}

#[test]
fn frames_arriving_one_byte_at_a_time_are_assembled_not_refused() {
    // Goal: incomplete input is not invalid input: a preamble and a frame that arrive one byte
    // per write are answered as if they came whole; a client that vanishes mid-frame leaves the
    // broker serving.
    // Method: write a preamble and a queue-declare byte by byte (TCP_NODELAY, so most bytes
    // travel alone), expect Hello and Ok; then abandon a connection halfway through a frame.
    let broker = start();

    // The preamble and a declare, one byte per write.
    let mut stream = connect(&broker);
    stream.set_nodelay(true).unwrap();
    let mut bytes = preamble(PROTOCOL_VERSION).to_vec();
    let declare = Frame::QueueDeclare {
        request: RequestId(7),
        name: "trickled".into(),
        options: QueueOptions::default(),
        arguments: Vec::new(),
    };
    bytes.extend_from_slice(&encoded(&declare));
    for byte in &bytes {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let mut buffer = BytesMut::new();
    assert!(matches!(read_frame(&mut stream, &mut buffer), Frame::Hello { version: PROTOCOL_VERSION, .. }));
    assert_eq!(read_frame(&mut stream, &mut buffer), Frame::Ok { request: RequestId(7) });

    // A connection dropped halfway through a frame.
    let mut abandoned = connect(&broker);
    handshake(&mut abandoned);
    abandoned.write_all(&bytes[8..bytes.len() / 2 + 4]).unwrap();
    drop(abandoned);

    // The declared queue exists and the broker serves.
    let client = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
    assert!(client.list_queues().unwrap().iter().any(|q| q.name == "trickled"));
    assert_broker_serves(&broker, "fresh-after-trickle");
}

#[test]
fn four_bytes_of_garbage_are_enough_to_refuse_the_connection() {
    // Goal: PROTOCOL.md 1.1: the listener picks the protocol from the first 4 bytes, and anything
    // but "RNMQ" (or "AMQP") is refused with an Error and closed. Four wrong bytes can never
    // become a preamble, so they are invalid, not incomplete: a client that sends them and waits
    // must get its answer.
    // Method: send exactly "HTTP" and nothing more; expect the Error and the close.
    // Regression: `decode_preamble` once waited for all 8 preamble bytes before judging the
    // magic, so the broker waited forever and this client never heard why.
    let broker = start();
    let mut stream = connect(&broker);
    stream.write_all(b"HTTP").unwrap();
    assert_eq!(
        error_then_close(&mut stream),
        (ErrorCode::Malformed, r#"expected preamble "RNMQ", got "HTTP""#.to_string())
    );
    assert_broker_serves(&broker, "fresh-after-short-garbage");
}

#[test]
fn publishing_past_max_inflight_is_refused_and_nothing_follows_the_error() {
    // Goal: a producer that ignores the confirm window and has more than `max-inflight`
    // publishes unconfirmed gets a LimitExceeded Error naming the limit, and (PROTOCOL.md 2.5,
    // `error`: "the broker closes it after this frame") nothing after it but the close.
    // Method: a broker with --max-inflight 4; one raw publish frame of 10 messages to an existing
    // queue; expect exactly one Error frame, then end of stream.
    // Regression: the broker once appended a Confirm after the Error frame, because confirms
    // and deliveries were encoded without checking that the session was closing.
    let broker = BrokerProcess::start(&["--max-inflight", "4", "--shards", "1"]);
    let client = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
    client.declare_queue("q", QueueOptions::default(), &[]).unwrap();

    // Ten publishes in one frame, no waiting for confirms.
    let mut stream = connect(&broker);
    handshake(&mut stream);
    let messages = (0..10)
        .map(|i| Message {
            routing_key: Bytes::from_static(b"q"),
            body: Bytes::from(format!("{i}")),
            ..Message::default()
        })
        .collect();
    stream.write_all(&encoded(&Frame::Publish { exchange: String::new(), first_seq: Seq(0), messages })).unwrap();
    let expected = "more than 4 publishes unconfirmed; wait for confirms".to_string();
    assert_eq!(error_then_close(&mut stream), (ErrorCode::LimitExceeded, expected));
    assert_broker_serves(&broker, "fresh-after-inflight");
}

// ----- helpers -----

/// A client connection opened before the bad input, to show the broker kept serving it.
struct Bystander {
    /// The connection.
    connection: Connection,
}

impl Bystander {
    /// Opens a client connection to `broker`.
    fn open(broker: &BrokerProcess) -> Bystander {
        Bystander { connection: Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap() }
    }

    /// Asserts the connection still declares, publishes and consumes (see `declare_publish_consume`).
    fn assert_serves(&self, queue: &str) {
        assert!(self.connection.closed_reason().is_none(), "{:?}", self.connection.closed_reason());
        declare_publish_consume(&self.connection, queue);
    }
}

/// Starts a broker with `--max-frame-size 65536` and two shards.
fn start() -> BrokerProcess {
    BrokerProcess::start(&["--max-frame-size", &FRAME_SIZE_MAX.to_string(), "--shards", "2", "--pin-cores", "false"])
}

/// A raw TCP connection to `broker`, with reads bounded by `WAIT`.
fn connect(broker: &BrokerProcess) -> TcpStream {
    let stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// The 8-byte preamble announcing `version`, no flags.
fn preamble(version: u16) -> [u8; 8] {
    let mut out = BytesMut::new();
    codec::encode_preamble(Preamble { version, flags: 0 }, &mut out);
    out[..].try_into().unwrap()
}

/// Sends a version-1 preamble and expects Hello.
fn handshake(stream: &mut TcpStream) {
    stream.write_all(&preamble(PROTOCOL_VERSION)).unwrap();
    let mut buffer = BytesMut::new();
    match read_frame(stream, &mut buffer) {
        Frame::Hello { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
        other => panic!("expected Hello, got {other:?}"),
    }
    assert!(buffer.is_empty(), "bytes after Hello: {buffer:?}");
}

/// `frame` encoded.
fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec::encode(frame, &mut out);
    out.to_vec()
}

/// A frame made of a length prefix and `type_and_body` (the type byte, then the body).
fn frame_bytes(type_and_body: &[u8]) -> Vec<u8> {
    let mut out = (type_and_body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(type_and_body);
    out
}

/// A publish frame of exactly `size` bytes (length prefix included): one message to the default
/// exchange, routed by `queue` (3 bytes long), with a body of `size - PUBLISH_OVERHEAD_BYTES`.
fn publish_frame_of_size(size: usize, queue: &str, seq: Seq) -> Vec<u8> {
    assert_eq!(queue.len(), 3, "PUBLISH_OVERHEAD_BYTES assumes a 3-byte key");
    let overhead = PUBLISH_OVERHEAD_BYTES as usize;
    let message = Message {
        routing_key: Bytes::copy_from_slice(queue.as_bytes()),
        body: Bytes::from(vec![b'x'; size - overhead]),
        ..Message::default()
    };
    let bytes = encoded(&Frame::Publish { exchange: String::new(), first_seq: seq, messages: vec![message] });
    assert_eq!(bytes.len(), size);
    bytes
}

/// Reads until `buffer` holds a whole frame, and returns it.
///
/// # Panics
/// On end of stream, on bytes that do not decode, or after `WAIT`.
fn read_frame(stream: &mut TcpStream, buffer: &mut BytesMut) -> Frame {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(frame) = codec::decode(buffer, FRAME_BYTES_MAX).expect("the broker sent an invalid frame") {
            return frame;
        }
        assert!(Instant::now() < deadline, "no whole frame within {WAIT:?}; have {buffer:?}");
        match read_some(stream) {
            Some(bytes) if bytes.is_empty() => panic!("end of stream before a whole frame; have {buffer:?}"),
            Some(bytes) => buffer.put_slice(&bytes),
            None => {}
        }
    }
}

/// One read: `Some(empty)` at end of stream, `None` when the read timed out.
fn read_some(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(n) => Some(chunk[..n].to_vec()),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(error) => panic!("read failed: {error}"),
    }
}

/// Expects exactly one `Error` frame, then end of stream; returns the error's code and message.
fn error_then_close(stream: &mut TcpStream) -> (ErrorCode, String) {
    error_then_close_after(stream, BytesMut::new())
}

/// As `error_then_close`, with `buffer` holding bytes already read.
fn error_then_close_after(stream: &mut TcpStream, mut buffer: BytesMut) -> (ErrorCode, String) {
    let (code, message) = match read_frame(stream, &mut buffer) {
        Frame::Error { code, message } => (code, message),
        other => panic!("expected an Error frame, got {other:?}"),
    };
    assert!(buffer.is_empty(), "bytes after the Error frame: {buffer:?}");
    // Then the broker closes: a read returns 0 bytes, with nothing before it.
    let deadline = Instant::now() + WAIT;
    loop {
        match read_some(stream) {
            Some(bytes) if bytes.is_empty() => break,
            Some(bytes) => panic!("bytes after the Error frame ({message}): {bytes:?}"),
            None => assert!(Instant::now() < deadline, "connection not closed within {WAIT:?} after: {message}"),
        }
    }
    (code, message)
}

/// Asserts a fresh client connection declares, publishes and consumes.
fn assert_broker_serves(broker: &BrokerProcess, queue: &str) {
    let connection = Connection::connect(broker.addr().as_str(), ConnectOptions::default()).unwrap();
    declare_publish_consume(&connection, queue);
    connection.close().unwrap();
}

/// Declares `queue`, publishes three messages to it (all confirmed stored), and consumes and acks
/// exactly those three, in order.
fn declare_publish_consume(connection: &Connection, queue: &str) {
    connection.declare_queue(queue, QueueOptions::default(), &[]).unwrap();
    let publisher = connection.publisher().unwrap();
    for index in 0..3 {
        let message = Message {
            routing_key: Bytes::copy_from_slice(queue.as_bytes()),
            body: Bytes::from(format!("m{index}")),
            ..Message::default()
        };
        publisher.publish("", message).unwrap();
    }
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (3, 0, 0), "{summary:?}");
    let mut consumer = connection.subscribe(queue, 10).unwrap();
    for index in 0..3 {
        let delivery = consumer.recv_timeout(WAIT).unwrap().expect("the subscription ended");
        assert_eq!(delivery.message.body, Bytes::from(format!("m{index}")));
        consumer.ack(delivery.tag).unwrap();
    }
    consumer.cancel().unwrap();
}
