//! How the client ends: a broker `Error` frame or a dropped socket fails every waiter with a
//! clear error (never a hang); a refused request keeps the broker's text and the connection.

mod support;

use std::time::Duration;

use bytes::Bytes;
use ringmq_client::{ClientError, ConnectOptions, Connection, ErrorCode, Message, QueueOptions};
use ringmq_core::frame::Frame;
use support::{listen, FakePeer};

/// Longest any waiter may take to fail once the connection ended.
const FAIL_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_refused_handshake_returns_the_brokers_code_and_text() {
    // Goal: a backup's "not primary" reaches the caller word for word.
    let (listener, addr) = listen().await;
    let peer = async {
        let mut peer = FakePeer::accept(&listener).await;
        peer.send(&Frame::Error { code: ErrorCode::NotPrimary, message: "broker b1 is a backup".into() }).await;
        peer
    };
    let (result, _peer) = tokio::join!(Connection::connect(addr, ConnectOptions::default()), peer);
    match result {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::NotPrimary);
            assert_eq!(message, "broker b1 is a backup");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn the_admin_flag_is_sent_in_the_preamble() {
    // Goal: `ConnectOptions::admin` sets preamble bit 0.
    let (listener, addr) = listen().await;
    let options = ConnectOptions { admin: true, ..ConnectOptions::default() };
    let (connection, peer) = tokio::join!(Connection::connect(addr, options), FakePeer::accept_with_hello(&listener));
    assert_eq!(connection.unwrap().broker(), "fake 0");
    assert_eq!(peer.flags, 1);
}

#[tokio::test]
async fn a_failed_request_keeps_the_brokers_text_and_the_connection() {
    // Goal: `Failed` becomes `ClientError::Failed` with code and text; the next request works.
    let (listener, addr) = listen().await;
    let (connection, mut peer) =
        tokio::join!(Connection::connect(addr, ConnectOptions::default()), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let text = "queue q exists with max-count 5; got max-count 6";
    let broker = async {
        // Refuse the declare.
        let Some(Frame::QueueDeclare { request, name, options, arguments }) = peer.recv_not_heartbeat().await else {
            panic!("expected a declare")
        };
        assert_eq!((name.as_str(), options.max_count), ("q", Some(6)));
        assert_eq!(arguments, vec![("qpid.replicate".to_string(), "all".to_string())]);
        peer.send(&Frame::Failed { request, code: ErrorCode::PreconditionFailed, message: text.into() }).await;
        // Answer the list.
        let Some(Frame::QueueList { request }) = peer.recv_not_heartbeat().await else { panic!("expected a list") };
        peer.send(&Frame::QueueListReply { request, queues: Vec::new() }).await;
    };
    let client = async {
        let options = QueueOptions { max_count: Some(6), ..QueueOptions::default() };
        let err = connection.declare_queue("q", options, &[("qpid.replicate", "all")]).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed));
        match &err {
            ClientError::Failed { message, .. } => assert_eq!(message, text),
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(connection.list_queues().await.unwrap(), Vec::new());
    };
    tokio::join!(broker, client);
}

#[tokio::test]
async fn a_broker_error_frame_fails_every_waiter_with_its_text() {
    // Goal: a request, a publish blocked on the window, a next_confirm and a consumer's recv all
    // fail with `BrokerClosed` carrying the broker's words, promptly.
    let (listener, addr) = listen().await;
    let options = ConnectOptions { publish_window: 1, ..ConnectOptions::default() };
    let (connection, mut peer) =
        tokio::join!(Connection::connect(addr, options), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    // A subscription the broker accepts.
    let subscribe = connection.subscribe("q", 10);
    let accept = async {
        let Some(Frame::Subscribe { request, .. }) = peer.recv_not_heartbeat().await else {
            panic!("expected subscribe")
        };
        peer.send(&Frame::Ok { request }).await;
    };
    let (consumer, ()) = tokio::join!(subscribe, accept);
    let mut consumer = consumer.unwrap();
    let publisher = connection.publisher().unwrap();
    publisher.publish("", Message { body: Bytes::from_static(b"0"), ..Message::default() }).await.unwrap();
    let waiters = async {
        tokio::join!(
            connection.purge_queue("q"),
            publisher.publish("", Message::default()),
            publisher.next_confirm(),
            consumer.recv(),
        )
    };
    let broker = async {
        // Let the purge arrive, then fail the connection.
        loop {
            if let Some(Frame::QueuePurge { .. }) = peer.recv_not_heartbeat().await {
                break;
            }
        }
        peer.send(&Frame::Error { code: ErrorCode::Internal, message: "disk /var/ringmq failed".into() }).await;
    };
    let ((purge, publish, confirm, recv), ()) =
        tokio::time::timeout(FAIL_WITHIN, async { tokio::join!(waiters, broker) }).await.expect("a waiter hung");
    for err in [purge.unwrap_err(), publish.unwrap_err(), confirm.unwrap_err(), recv.unwrap_err()] {
        assert!(
            matches!(&err, ClientError::BrokerClosed { code: ErrorCode::Internal, message } if message == "disk /var/ringmq failed"),
            "{err:?}"
        );
    }
    // Later calls fail the same way, at once.
    assert!(matches!(connection.list_queues().await, Err(ClientError::BrokerClosed { .. })));
    assert!(matches!(connection.closed_reason(), Some(ClientError::BrokerClosed { .. })));
}

#[tokio::test]
async fn a_dropped_socket_fails_every_waiter_with_connection_lost() {
    // Goal: the broker vanishing without a word is reported as such, to every waiter.
    let (listener, addr) = listen().await;
    let (connection, mut peer) =
        tokio::join!(Connection::connect(addr, ConnectOptions::default()), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let waiters = async { tokio::join!(connection.list_exchanges(), connection.delete_exchange("x")) };
    let broker = async {
        let _ = peer.recv_not_heartbeat().await;
        drop(peer);
    };
    let ((list, delete), ()) =
        tokio::time::timeout(FAIL_WITHIN, async { tokio::join!(waiters, broker) }).await.expect("a waiter hung");
    for err in [list.unwrap_err(), delete.unwrap_err()] {
        assert!(matches!(&err, ClientError::ConnectionLost { .. }), "{err:?}");
        assert!(err.to_string().contains("broker closed the connection"), "{err}");
    }
}

#[tokio::test]
async fn close_sends_what_was_queued_then_shuts_down() {
    // Goal: a graceful close loses nothing queued before it, and the broker sees end of stream.
    let (listener, addr) = listen().await;
    let (connection, mut peer) =
        tokio::join!(Connection::connect(addr, ConnectOptions::default()), FakePeer::accept_with_hello(&listener));
    let connection = connection.unwrap();
    let publisher = connection.publisher().unwrap();
    for _ in 0..100 {
        publisher.publish("", Message::default()).await.unwrap();
    }
    let close = connection.close();
    let broker = async {
        let mut published = 0;
        while let Some(frame) = peer.recv().await {
            if let Frame::Publish { messages, .. } = frame {
                published += messages.len();
            }
        }
        // The end of stream came after every publish; closing our side lets the client finish.
        drop(peer);
        published
    };
    let (closed, published) = tokio::join!(close, broker);
    closed.unwrap();
    assert_eq!(published, 100);
    // The publisher reports the close.
    assert!(matches!(publisher.publish("", Message::default()).await, Err(ClientError::Closed)));
}
