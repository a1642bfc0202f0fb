//! Consuming against a scripted broker: deliveries come out in tag order, settlements travel as
//! coalesced ranges in few frames, cancel and broker cancellation end `recv` with `None`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{ClientError, ConnectOptions, Connection, Consumer, Message, Tag};
use ringmq_core::frame::{Delivered, Frame, Settlement, TagRange};
use ringmq_core::ids::ConsumerId;
use support::{listen, FakePeer};

fn delivered(body: &'static [u8], redelivered: bool) -> Delivered {
    Delivered { redelivered, message: Message { body: Bytes::from_static(body), ..Message::default() } }
}

/// Connects, subscribes to `q` with `prefetch`, and returns both ends.
async fn subscribed(prefetch: u32) -> (Connection, Consumer, FakePeer, ConsumerId) {
    let (listener, addr) = listen().await;
    let (connection, mut peer) =
        tokio::join!(Connection::connect(addr, ConnectOptions::default()), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let accept = async {
        let Some(Frame::Subscribe { request, consumer, queue, prefetch: asked }) = peer.recv_not_heartbeat().await
        else {
            panic!("expected subscribe")
        };
        assert_eq!((queue.as_str(), asked), ("q", prefetch));
        peer.send(&Frame::Ok { request }).await;
        consumer
    };
    let (consumer, id) = tokio::join!(connection.subscribe("q", prefetch), accept);
    (connection, consumer.unwrap(), peer, id)
}

/// Settle frames until `count` tags were settled; returns them in arrival order.
async fn settles(peer: &mut FakePeer, count: u64) -> Vec<(Settlement, Vec<TagRange>)> {
    let mut frames = Vec::new();
    let mut settled = 0;
    while settled < count {
        match peer.recv_not_heartbeat().await {
            Some(Frame::Settle { settlement, ranges, .. }) => {
                settled += ranges.iter().map(|r| r.last.0 - r.first.0 + 1).sum::<u64>();
                frames.push((settlement, ranges));
            }
            other => panic!("expected settle, got {other:?}"),
        }
    }
    frames
}

#[tokio::test]
async fn acks_in_order_travel_as_one_range_per_flush() {
    // Goal: 400 acks become a handful of Settle frames of one range each, covering every tag.
    // Method: prefetch 400 (flush every 100 pending tags); two Deliver frames of 200.
    let (_connection, mut consumer, mut peer, id) = subscribed(400).await;
    for first in [0u64, 200] {
        let messages = (0..200).map(|_| delivered(b"m", false)).collect();
        peer.send(&Frame::Deliver { consumer: id, first_tag: Tag(first), messages }).await;
    }
    for expected in 0..400 {
        let delivery = consumer.recv().await.unwrap().unwrap();
        assert_eq!(delivery.tag, Tag(expected));
        consumer.ack(delivery.tag).unwrap();
    }
    let frames = settles(&mut peer, 400).await;
    assert_eq!(frames.len(), 4, "{frames:?}");
    let mut next = 0;
    for (settlement, ranges) in frames {
        assert_eq!(settlement, Settlement::Ack);
        assert_eq!(ranges, vec![TagRange { first: Tag(next), last: Tag(next + 99) }]);
        next += 100;
    }
}

#[tokio::test]
async fn pending_settlements_are_flushed_before_recv_waits() {
    // Goal: a consumer never starves itself of credit: with prefetch 100 and 3 acks pending
    // (below the flush threshold), waiting in recv sends them.
    let (_connection, mut consumer, mut peer, id) = subscribed(100).await;
    let messages = vec![delivered(b"a", false), delivered(b"b", true), delivered(b"c", false)];
    peer.send(&Frame::Deliver { consumer: id, first_tag: Tag(0), messages }).await;
    let mut tags = Vec::new();
    for _ in 0..3 {
        let delivery = consumer.recv().await.unwrap().unwrap();
        tags.push((delivery.tag.0, delivery.redelivered, delivery.message.body.clone()));
    }
    // The redelivered flag and the body come through.
    assert_eq!(tags[1], (1, true, Bytes::from_static(b"b")));
    consumer.ack(Tag(0)).unwrap();
    consumer.release(Tag(1)).unwrap();
    consumer.reject(Tag(2)).unwrap();
    // Nothing is buffered: recv waits, and flushes first.
    assert!(tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await.is_err());
    let frames = settles(&mut peer, 3).await;
    assert_eq!(
        frames,
        vec![
            (Settlement::Ack, vec![TagRange { first: Tag(0), last: Tag(0) }]),
            (Settlement::Reject, vec![TagRange { first: Tag(2), last: Tag(2) }]),
            (Settlement::Release, vec![TagRange { first: Tag(1), last: Tag(1) }]),
        ]
    );
}

#[tokio::test]
async fn settling_a_tag_not_yet_received_is_refused() {
    // Goal: a caller bug is an error naming the tag, not a frame the broker must refuse.
    let (_connection, mut consumer, _peer, _id) = subscribed(10).await;
    let err = consumer.ack(Tag(0)).unwrap_err();
    assert!(matches!(err, ClientError::UnknownTag { tag: 0, delivered_end: 0 }), "{err:?}");
}

#[tokio::test]
async fn cancel_sends_pending_acks_first_and_ends_recv() {
    // Goal: acks made before cancel are not lost; after cancel, recv returns None.
    let (_connection, mut consumer, mut peer, id) = subscribed(100).await;
    peer.send(&Frame::Deliver { consumer: id, first_tag: Tag(0), messages: vec![delivered(b"a", false)] }).await;
    let delivery = consumer.recv().await.unwrap().unwrap();
    consumer.ack(delivery.tag).unwrap();
    let broker = async {
        let frames = settles(&mut peer, 1).await;
        assert_eq!(frames[0].0, Settlement::Ack);
        let Some(Frame::Cancel { request, consumer }) = peer.recv_not_heartbeat().await else {
            panic!("expected cancel")
        };
        assert_eq!(consumer, id);
        peer.send(&Frame::Ok { request }).await;
    };
    let (cancelled, ()) = tokio::join!(consumer.cancel(), broker);
    cancelled.unwrap();
    assert_eq!(consumer.recv().await.unwrap(), None);
    assert!(matches!(consumer.ack(Tag(0)), Err(ClientError::SubscriptionEnded { .. })));
}

#[tokio::test]
async fn a_broker_cancellation_ends_recv_after_what_arrived_before_it() {
    // Goal: deliveries before ConsumerCancelled are still returned, then None with the reason.
    let (_connection, mut consumer, mut peer, id) = subscribed(100).await;
    peer.send(&Frame::Deliver { consumer: id, first_tag: Tag(0), messages: vec![delivered(b"a", false)] }).await;
    peer.send(&Frame::ConsumerCancelled { consumer: id, reason: "queue q was deleted".into() }).await;
    assert_eq!(consumer.recv().await.unwrap().unwrap().tag, Tag(0));
    assert_eq!(consumer.recv().await.unwrap(), None);
    assert!(consumer.cancel_reason().unwrap().contains("queue q was deleted"));
}

#[tokio::test]
async fn a_deliver_with_a_tag_gap_ends_the_connection() {
    // Goal: tags are checked; a broker skipping tags is a protocol violation, reported.
    let (_connection, mut consumer, mut peer, id) = subscribed(100).await;
    peer.send(&Frame::Deliver { consumer: id, first_tag: Tag(5), messages: vec![delivered(b"a", false)] }).await;
    let err = consumer.recv().await.unwrap_err();
    assert!(err.to_string().contains("must start at tag 0; got 5"), "{err}");
}

#[test]
fn the_blocking_api_publishes_and_consumes_from_a_plain_thread() {
    // Goal: the blocking wrapper works from threads with no runtime of their own.
    // Method: the fake broker runs on its own runtime thread; the client on the test thread.
    let broker_runtime = tokio::runtime::Runtime::new().unwrap();
    let (listener, addr) = broker_runtime.block_on(listen());
    let broker = broker_runtime.spawn(async move {
        let mut peer = FakePeer::accept_with_hello(&listener).await;
        // Confirm the publish.
        let Some(Frame::Publish { first_seq, messages, .. }) = peer.recv_not_heartbeat().await else { panic!() };
        let range = ringmq_core::frame::ConfirmRange {
            first: first_seq,
            last: first_seq,
            outcome: ringmq_core::frame::ConfirmOutcome::Stored,
        };
        peer.send(&Frame::Confirm { ranges: vec![range] }).await;
        // Accept the subscription and deliver the message back.
        let Some(Frame::Subscribe { request, consumer, .. }) = peer.recv_not_heartbeat().await else { panic!() };
        peer.send(&Frame::Ok { request }).await;
        let messages = vec![Delivered { redelivered: false, message: messages[0].clone() }];
        peer.send(&Frame::Deliver { consumer, first_tag: Tag(0), messages }).await;
        // The ack arrives (flushed when the connection closes at the latest).
        settles(&mut peer, 1).await
    });
    let connection = ringmq_client::blocking::Connection::connect(addr, ConnectOptions::default()).unwrap();
    let publisher = connection.publisher().unwrap();
    let message = Message { body: Bytes::from_static(b"hello"), ..Message::default() };
    assert_eq!(publisher.publish("", message).unwrap().0, 0);
    assert_eq!(publisher.wait_for_confirms().unwrap().stored, 1);
    let mut consumer = connection.subscribe("q", 10).unwrap();
    let delivery = consumer.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(delivery.message.body, Bytes::from_static(b"hello"));
    consumer.ack(delivery.tag).unwrap();
    consumer.flush().unwrap();
    let frames = broker_runtime.block_on(broker).unwrap();
    assert_eq!(frames, vec![(Settlement::Ack, vec![TagRange { first: Tag(0), last: Tag(0) }])]);
}
