//! Publishing against a scripted broker: frames are batched, sequence numbers are consecutive
//! across frames and exchanges, the window pushes back, confirms come out in order with the
//! broker's reasons.

mod support;

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{ConfirmOutcome, ConfirmRange, ConnectOptions, Connection, ErrorCode, Message, Seq};
use ringmq_core::frame::Frame;
use support::{listen, FakePeer};

fn message(body: Bytes) -> Message {
    Message { routing_key: Bytes::from_static(b"q"), body, ..Message::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_travel_in_large_frames_with_consecutive_seqs() {
    // Goal: many publishes become few frames (natural batching), none above 64 KiB, with
    // consecutive sequence numbers; confirms per frame keep the window moving.
    // Method: a client publishes 20,000 1 KiB messages through a 2,000 window; the fake broker
    // checks each Publish frame and confirms it at once.
    const TOTAL: u64 = 20_000;
    let (listener, addr) = listen().await;
    let client = tokio::spawn(async move {
        let options = ConnectOptions { publish_window: 2_000, ..ConnectOptions::default() };
        let connection = Connection::connect(addr, options).await.unwrap();
        let publisher = connection.publisher().unwrap();
        let body = Bytes::from(vec![b'x'; 1024]);
        for expected in 0..TOTAL {
            assert_eq!(publisher.publish("", message(body.clone())).await.unwrap(), Seq(expected));
        }
        let summary = publisher.wait_for_confirms().await.unwrap();
        connection.close().await.unwrap();
        summary
    });
    let mut peer = FakePeer::accept_with_hello(&listener).await;
    let mut next_seq = 0;
    let mut frames = 0u64;
    while next_seq < TOTAL {
        let Some(Frame::Publish { exchange, first_seq, messages }) = peer.recv_not_heartbeat().await else {
            panic!("expected a publish");
        };
        // Each frame continues where the last ended.
        assert_eq!(exchange, "");
        assert_eq!(first_seq, Seq(next_seq));
        let bytes: usize = messages.iter().map(|m| m.body.len() + 12).sum();
        assert!(bytes <= 64 * 1024, "frame of {bytes} bytes");
        next_seq += messages.len() as u64;
        frames += 1;
        let range = ConfirmRange { first: first_seq, last: Seq(next_seq - 1), outcome: ConfirmOutcome::Stored };
        peer.send(&Frame::Confirm { ranges: vec![range] }).await;
    }
    // The client closes; answer its end of stream with ours.
    while peer.recv().await.is_some() {}
    drop(peer);
    let summary = client.await.unwrap();
    assert_eq!(summary.stored, TOTAL);
    assert_eq!(summary.total(), TOTAL);
    // Batching: far fewer frames than messages (a full frame holds 63 of these).
    assert!(frames * 8 <= TOTAL, "{frames} frames for {TOTAL} messages");
}

#[tokio::test]
async fn a_full_window_makes_publish_wait_until_a_confirm() {
    // Goal: backpressure: publish returns at once while the window has room, then waits for
    // a confirm, and sequence numbers run on across exchanges.
    let (listener, addr) = listen().await;
    let connect = Connection::connect(addr, ConnectOptions { publish_window: 3, ..ConnectOptions::default() });
    let (connection, mut peer) = tokio::join!(connect, FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let publisher = connection.publisher().unwrap();
    // Three publishes fit, to two exchanges.
    assert_eq!(publisher.publish("a", message(Bytes::from_static(b"0"))).await.unwrap(), Seq(0));
    assert_eq!(publisher.publish("a", message(Bytes::from_static(b"1"))).await.unwrap(), Seq(1));
    assert_eq!(publisher.publish("b", message(Bytes::from_static(b"2"))).await.unwrap(), Seq(2));
    assert_eq!(publisher.unconfirmed(), 3);
    // The fourth waits.
    let fourth = publisher.publish("b", message(Bytes::from_static(b"3")));
    tokio::pin!(fourth);
    assert!(tokio::time::timeout(Duration::from_millis(100), &mut fourth).await.is_err());
    // The broker saw one frame per exchange, with consecutive seqs.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let Some(Frame::Publish { exchange, first_seq, messages }) = peer.recv_not_heartbeat().await {
            seen.push((exchange, first_seq.0, messages.len()));
        }
    }
    assert_eq!(seen, vec![("a".to_string(), 0, 2), ("b".to_string(), 2, 1)]);
    // One confirm makes room for the fourth.
    let range = ConfirmRange { first: Seq(0), last: Seq(0), outcome: ConfirmOutcome::Stored };
    peer.send(&Frame::Confirm { ranges: vec![range] }).await;
    assert_eq!(fourth.await.unwrap(), Seq(3));
}

#[tokio::test]
async fn confirms_come_out_in_order_and_the_summary_keeps_the_first_rejection() {
    // Goal: next_confirm returns ranges in seq order with their outcomes; wait_for_confirms
    // counts every outcome and keeps the broker's reason for the first rejection.
    let (listener, addr) = listen().await;
    let (connection, mut peer) =
        tokio::join!(Connection::connect(addr, ConnectOptions::default()), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let publisher = connection.publisher().unwrap();
    for _ in 0..10 {
        publisher.publish("x", message(Bytes::from_static(b"m"))).await.unwrap();
    }
    let mut received = 0;
    while received < 10 {
        if let Some(Frame::Publish { messages, .. }) = peer.recv_not_heartbeat().await {
            received += messages.len();
        }
    }
    let reason = "queue q holds max-count 5; got a 6th message";
    let ranges = vec![
        ConfirmRange { first: Seq(0), last: Seq(3), outcome: ConfirmOutcome::Stored },
        ConfirmRange { first: Seq(4), last: Seq(4), outcome: ConfirmOutcome::Unroutable },
        ConfirmRange {
            first: Seq(5),
            last: Seq(6),
            outcome: ConfirmOutcome::Rejected { code: ErrorCode::QueueFull, reason: reason.to_string() },
        },
        ConfirmRange { first: Seq(7), last: Seq(9), outcome: ConfirmOutcome::Stored },
    ];
    peer.send(&Frame::Confirm { ranges: ranges.clone() }).await;
    // Ranges come out as sent.
    for range in &ranges {
        assert_eq!(publisher.next_confirm().await.unwrap().as_ref(), Some(range));
    }
    // Nothing more is confirmed: next_confirm waits for the next one.
    assert!(tokio::time::timeout(Duration::from_millis(50), publisher.next_confirm()).await.is_err());
    let summary = publisher.wait_for_confirms().await.unwrap();
    assert_eq!((summary.stored, summary.unroutable, summary.rejected), (7, 1, 2));
    let rejection = summary.first_rejection.unwrap();
    assert_eq!((rejection.first, rejection.last, rejection.code), (Seq(5), Seq(6), ErrorCode::QueueFull));
    assert_eq!(rejection.reason, reason);
    // After this client closes, next_confirm ends.
    let broker = async move { while peer.recv().await.is_some() {} };
    let (closed, ()) = tokio::join!(connection.close(), broker);
    closed.unwrap();
    assert_eq!(publisher.next_confirm().await.unwrap(), None);
}

#[tokio::test]
async fn a_confirm_for_an_unpublished_seq_ends_the_connection_as_a_protocol_violation() {
    // Goal: the client never trusts a confirm it cannot account for.
    let (listener, addr) = listen().await;
    let (connection, mut peer) =
        tokio::join!(Connection::connect(addr, ConnectOptions::default()), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let publisher = connection.publisher().unwrap();
    publisher.publish("", message(Bytes::from_static(b"m"))).await.unwrap();
    let range = ConfirmRange { first: Seq(0), last: Seq(5), outcome: ConfirmOutcome::Stored };
    peer.send(&Frame::Confirm { ranges: vec![range] }).await;
    let err = publisher.wait_for_confirms().await.unwrap_err();
    assert!(err.to_string().contains("protocol violation"), "{err}");
    assert!(err.to_string().contains("next unpublished seq 1"), "{err}");
}
