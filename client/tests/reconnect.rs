//! Reconnect against scripted brokers: what the client re-sends after a lost connection, in which
//! order, to which address, and what becomes of the lost connection's delivery tags.

mod support;

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{ConnectOptions, Connection, ErrorCode, Message, DEDUP_HEADER};
use ringmq_core::frame::{ConfirmOutcome, ConfirmRange, Delivered, Frame, Settlement, TagRange};
use ringmq_core::ids::{Seq, Tag};
use support::{listen, FakePeer};

fn message(body: &'static [u8]) -> Message {
    Message { routing_key: Bytes::from_static(b"q"), body: Bytes::from_static(body), ..Message::default() }
}

fn stored(first: u64, last: u64) -> Frame {
    Frame::Confirm {
        ranges: vec![ConfirmRange { first: Seq(first), last: Seq(last), outcome: ConfirmOutcome::Stored }],
    }
}

/// The `x-ringmq-dedup` values of `messages`, in order.
fn stamps(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            let header = m.headers.iter().find(|h| h.name.as_ref() == DEDUP_HEADER.as_bytes()).expect("stamped");
            String::from_utf8(header.value.to_vec()).unwrap()
        })
        .collect()
}

/// Frames from `peer` until `want` publishes arrived, skipping heartbeats and answering
/// `ha-status`; returns the other frames and the publishes as (first seq, messages).
async fn frames_until_publishes(peer: &mut FakePeer, want: usize) -> (Vec<Frame>, Vec<(u64, Vec<Message>)>) {
    let mut others = Vec::new();
    let mut publishes = Vec::new();
    let mut count = 0;
    while count < want {
        match peer.recv_not_heartbeat().await.expect("the client closed") {
            Frame::Publish { first_seq, messages, .. } => {
                count += messages.len();
                publishes.push((first_seq.0, messages));
            }
            Frame::HaStatus { request } => {
                let reply = Frame::HaStatusReply {
                    request,
                    state: "active".into(),
                    epoch: 1,
                    brokers_url: String::new(),
                    public_url: String::new(),
                    name: String::new(),
                    ready_set: ringmq_client::ReadySet::default(),
                };
                peer.send(&reply).await;
            }
            other => others.push(other),
        }
    }
    (others, publishes)
}

#[tokio::test]
async fn a_lost_connection_is_made_again_past_a_backup_with_publishes_resent_and_the_subscription_renewed() {
    // Goal: after the socket to A is lost, the client tries B (a backup: NotPrimary naming C),
    // learns C and moves on to it at once; on C it subscribes again (same consumer, queue and
    // prefetch), then re-sends the unconfirmed publishes with their own seqs and dedup stamps;
    // each publish is confirmed once; an ack of a tag from A settles nothing on C, and tags go on
    // increasing.
    let (listener_a, addr_a) = listen().await;
    let (listener_b, addr_b) = listen().await;
    let (listener_c, addr_c) = listen().await;
    let options = ConnectOptions {
        reconnect: true,
        reconnect_interval: Duration::from_millis(10),
        reconnect_timeout: Some(Duration::from_secs(10)),
        producer_id: Some("p".into()),
        ..ConnectOptions::default()
    };
    let url = format!("{addr_a},{addr_b}");
    let (connection, peer_a) =
        tokio::join!(Connection::connect(url, options), FakePeer::accept_with_hello(&listener_a));
    let (connection, mut peer_a) = (connection.unwrap(), peer_a);
    let publisher = connection.publisher().unwrap();
    for body in [b"m0", b"m1", b"m2"] {
        publisher.publish("", message(body)).await.unwrap();
    }
    let (_, publishes) = frames_until_publishes(&mut peer_a, 3).await;
    let all: Vec<Message> = publishes.iter().flat_map(|(_, m)| m.clone()).collect();
    assert_eq!(publishes[0].0, 0);
    assert_eq!(stamps(&all), ["p/0", "p/1", "p/2"]);
    peer_a.send(&stored(0, 0)).await;

    let (subscribed, subscribe) = tokio::join!(connection.subscribe("q", 7), async {
        loop {
            match peer_a.recv_not_heartbeat().await.unwrap() {
                Frame::Subscribe { request, consumer, queue, prefetch } => {
                    peer_a.send(&Frame::Ok { request }).await;
                    break (consumer, queue, prefetch);
                }
                Frame::HaStatus { .. } => {}
                other => panic!("expected subscribe, got {other:?}"),
            }
        }
    });
    let mut consumer = subscribed.unwrap();
    let (consumer_id, _, _) = subscribe.clone();
    let delivered = |body: &'static [u8]| Delivered { redelivered: false, message: message(body) };
    peer_a
        .send(&Frame::Deliver {
            consumer: consumer_id,
            first_tag: Tag(0),
            messages: vec![delivered(b"d0"), delivered(b"d1")],
        })
        .await;
    let old = consumer.recv().await.unwrap().unwrap();
    assert_eq!(old.tag, Tag(0));
    drop(peer_a);

    // B is a backup: it names C.
    let mut peer_b = FakePeer::accept(&listener_b).await;
    let refusal =
        format!("not primary: this broker is an HA backup in state ready; connect to the cluster at tcp:{addr_c}");
    peer_b.send(&Frame::Error { code: ErrorCode::NotPrimary, message: refusal }).await;
    drop(peer_b);

    let mut peer_c = FakePeer::accept_with_hello(&listener_c).await;
    let (others, publishes) = frames_until_publishes(&mut peer_c, 2).await;
    let [Frame::Subscribe { request, consumer: again_id, queue, prefetch }] = others.as_slice() else {
        panic!("expected the subscription first, then the publishes; got {others:?}");
    };
    assert_eq!((*again_id, queue.clone(), *prefetch), subscribe);
    peer_c.send(&Frame::Ok { request: *request }).await;
    let all: Vec<Message> = publishes.iter().flat_map(|(_, m)| m.clone()).collect();
    assert_eq!(publishes[0].0, 1, "re-sent with their own seqs");
    assert_eq!(stamps(&all), ["p/1", "p/2"]);
    peer_c.send(&stored(1, 2)).await;
    let summary = publisher.wait_for_confirms().await.unwrap();
    assert_eq!(summary.stored, 3, "each publish confirmed once: {summary:?}");

    // A's d1 had arrived before the loss: it still comes out (tag 1), but it belongs to A, so
    // acking it, like acking tag 0, does nothing. C's tag 0 comes out as tag 2, the next one.
    consumer.ack(old.tag).unwrap();
    let leftover = consumer.recv().await.unwrap().unwrap();
    assert_eq!((leftover.tag, leftover.message.body.as_ref()), (Tag(1), b"d1".as_ref()));
    consumer.ack(leftover.tag).unwrap();
    peer_c.send(&Frame::Deliver { consumer: consumer_id, first_tag: Tag(0), messages: vec![delivered(b"d0")] }).await;
    let again = consumer.recv().await.unwrap().unwrap();
    assert_eq!(again.tag, Tag(2));
    assert_eq!(again.message.body, Bytes::from_static(b"d0"));
    consumer.ack(again.tag).unwrap();
    consumer.flush().unwrap();
    loop {
        match peer_c.recv_not_heartbeat().await.unwrap() {
            Frame::Settle { settlement, ranges, .. } => {
                assert_eq!(settlement, Settlement::Ack);
                assert_eq!(ranges, vec![TagRange { first: Tag(0), last: Tag(0) }], "C's own tag 0, nothing else");
                break;
            }
            Frame::HaStatus { .. } => {}
            other => panic!("expected settle, got {other:?}"),
        }
    }
    let stats = connection.stats();
    assert_eq!((stats.reconnects, stats.settlements_stale), (1, 2), "{stats:?}");
    assert_eq!(connection.peer(), addr_c);
}

#[tokio::test]
async fn without_reconnect_a_silent_broker_fails_the_waiters_within_twice_the_heartbeat() {
    // Goal: a broker that stops answering (here: never echoes a heartbeat) is an error to every
    // waiter after about twice the interval, never a hang.
    let (listener, addr) = listen().await;
    let options = ConnectOptions { heartbeat_interval: Some(Duration::from_millis(100)), ..ConnectOptions::default() };
    let (connection, _peer) = tokio::join!(Connection::connect(addr, options), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let started = std::time::Instant::now();
    let error = connection.list_queues().await.unwrap_err();
    assert!(matches!(error, ringmq_client::ClientError::Silent { .. }), "{error}");
    assert!(error.to_string().contains("twice heartbeat_interval of 100 ms"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}
