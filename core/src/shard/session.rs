//! A shard's sessions: the connections it accepted, their preamble and kind, the dispatch of
//! their frames to the shard's operations (publish, subscribe, ack, declare, HA commands), and
//! their end (an `Error` frame, then close).
//!
//! HA: every shard holds a copy of the broker's HA state (`ha_view`), changed only by the
//! coordinator's broadcast `ConfigChange::HaState`. While the broker is a backup, a connection
//! without the admin flag gets an `Error` `NotPrimary` and is closed, and an admin connection's
//! requests that would change a replicated object get `Failed` `NotPrimary` (a publish: a confirm
//! with outcome `Rejected` `NotPrimary`). A backup link (preamble flag `PREAMBLE_FLAG_BACKUP`) is
//! admitted only by a primary, and may send only `hello` and heartbeats here: once admitted, the
//! HA layer takes it over (`handle_link_detached`) and speaks the replication link protocol on it.
//!
//! Invariants:
//! - Nothing is read from a session after its `Error` went out (`closing`), and nothing is
//!   written after it but the bytes already queued.
//! - A session's kind is set once, by its preamble, and never changes.

use super::*;
use crate::wire::WireProtocol;

impl Shard {
    /// Whether `conn` is an admitted backup link (it opened with `PREAMBLE_FLAG_BACKUP` and this
    /// broker is its primary), until the HA layer takes it over (`handle_link_detached`).
    pub fn is_backup_link(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_some_and(|s| s.kind == Some(ConnectionKind::BackupLink) && !s.closing)
    }

    /// A connection was accepted.
    ///
    /// # Panics
    /// If `conn` is already in use.
    pub fn handle_accept(&mut self, conn: ConnId) {
        let session = Session {
            kind: None,
            closing: false,
            out: BytesMut::new(),
            dirty: false,
            tracker: None,
            next_seq: None,
            subscriptions: HashMap::default(),
            list_gathers: HashMap::default(),
            confirms_due: false,
        };
        assert!(self.sessions.insert(conn, session).is_none(), "connection id reused");
    }

    /// Bytes arrived on a connection. Consumes every complete frame of `buf`, leaving a partial
    /// one in place.
    pub fn handle_read(&mut self, conn: ConnId, buf: &mut BytesMut) {
        let Some(session) = self.sessions.get_mut(&conn) else { return };
        if session.closing {
            buf.clear();
            return;
        }
        if session.kind.is_none() {
            match codec::detect_protocol(buf) {
                None => return,
                Some(WireProtocol::Native) => {}
                // The seam of a second protocol: an AMQP 1.0 engine would take the connection here
                // and hand its operations to the shard. None is served yet, so the header is
                // refused as the native preamble decoder refuses any bad magic (below).
                Some(WireProtocol::Amqp) => {}
            }
            match codec::decode_preamble(buf) {
                Ok(None) => return,
                Ok(Some(preamble)) if preamble.version != preamble_version(preamble.flags) => {
                    let message = if preamble.flags & PREAMBLE_FLAG_BACKUP != 0 {
                        format!(
                            "replication link version {} is not supported; this broker speaks {LINK_VERSION} (the \
                             brokers of a cluster must run releases with the same link version)",
                            preamble.version
                        )
                    } else {
                        format!(
                            "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                            preamble.version
                        )
                    };
                    self.fail_connection(conn, ErrorCode::UnsupportedVersion, message);
                    return;
                }
                Ok(Some(preamble)) => {
                    let _ = buf.split_to(crate::frame::PREAMBLE_LEN);
                    let kind = ConnectionKind::from_flags(preamble.flags);
                    session.kind = Some(kind);
                    if let Admission::RefusedNotPrimary { message } = self.ha.admission(kind) {
                        if kind == ConnectionKind::BackupLink {
                            self.counters.backup_links_refused_not_primary += 1;
                        } else {
                            self.counters.refused_not_primary += 1;
                        }
                        self.close_with_error(conn, ErrorCode::NotPrimary, message);
                        buf.clear();
                        return;
                    }
                    let hello = Frame::Hello { version: preamble.version, broker: self.config.broker_name.clone() };
                    self.write_frame(conn, &hello);
                }
                Err(error) => {
                    self.fail_decode(conn, &error);
                    return;
                }
            }
        }
        loop {
            match codec::decode(buf, self.config.frame_bytes_max) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    self.handle_frame(conn, frame);
                    if self.sessions.get(&conn).is_none_or(|s| s.closing) {
                        buf.clear();
                        break;
                    }
                }
                Err(error) => {
                    self.fail_decode(conn, &error);
                    buf.clear();
                    break;
                }
            }
        }
        self.flush_enqueues(conn);
    }

    /// A connection closed (by the peer or after an error). Its subscriptions are cancelled and
    /// their unsettled deliveries returned; its exclusive queues are deleted.
    pub fn handle_closed(&mut self, conn: ConnId) {
        if self.sessions.remove(&conn).is_none() {
            return;
        }
        let origin = self.conn_ref(conn);
        for shard in 0..self.config.shard_count {
            self.send(ShardId(shard), ShardMessage::ConnectionClosed { origin });
        }
        self.send(
            ShardId(0),
            ShardMessage::ConfigRequest { origin, request: None, change: ConfigRequest::ConnectionClosed },
        );
    }

    /// The admitted backup link `conn` leaves the core, still open: past its `hello` it speaks the
    /// replication link protocol, which the HA layer serves. The core forgets it as it would a
    /// closed connection (the other shards and the coordinator hear of its end as a client's, so
    /// nothing it could hold outlives it).
    ///
    /// # Panics
    /// If `conn` is not an admitted backup link (`is_backup_link`).
    pub fn handle_link_detached(&mut self, conn: ConnId) {
        assert!(self.is_backup_link(conn), "connection {} detached but it is not an admitted backup link", conn.0);
        self.handle_closed(conn);
    }

    pub(super) fn handle_frame(&mut self, conn: ConnId, frame: Frame) {
        let origin = self.conn_ref(conn);
        if self.is_backup_link(conn) && frame != Frame::Heartbeat {
            // Before the HA layer takes it over, a backup link carries heartbeats only.
            let message = format!("a backup link may send only heartbeat; got {}", frame.name());
            self.fail_connection(conn, ErrorCode::UnexpectedFrame, message);
            return;
        }
        if let Some(request) = changes_replicated_state(&frame) {
            if let Some(message) = self.ha.refusal(frame.name()) {
                self.counters.requests_refused_not_primary += 1;
                self.write_frame(conn, &Frame::Failed { request, code: ErrorCode::NotPrimary, message });
                return;
            }
        }
        match frame {
            Frame::Publish { exchange, first_seq, messages } => self.publish(conn, &exchange, first_seq, messages),
            Frame::Settle { consumer, settlement, ranges } => {
                let Some(queue) = self.subscription_queue(conn, consumer) else {
                    let message = format!("settle for consumer {} which does not subscribe", consumer.0);
                    self.fail_connection(conn, ErrorCode::NotFound, message);
                    return;
                };
                let message = ShardMessage::Settle { origin, consumer, queue: queue.to_string(), settlement, ranges };
                self.send(shard_of(&queue, self.config.shard_count), message);
            }
            Frame::QueueDeclare { request, name, options, arguments } => {
                let change = ConfigRequest::DeclareQueue { name, options, arguments };
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::QueueDelete { request, name } => {
                let change = ConfigRequest::Change(ConfigChange::DeleteQueue { name });
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::ExchangeDeclare { request, name, kind, passive, arguments } => {
                let change = ConfigRequest::DeclareExchange { name, kind, passive, arguments };
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::ExchangeDelete { request, name } => {
                let change = ConfigRequest::Change(ConfigChange::DeleteExchange { name });
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::Bind { request, binding } => {
                let change = ConfigRequest::Change(ConfigChange::Bind(binding));
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::Unbind { request, binding } => {
                let change = ConfigRequest::Change(ConfigChange::Unbind(binding));
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::QueuePurge { request, name } => {
                let owner = shard_of(&name, self.config.shard_count);
                self.send(owner, ShardMessage::Purge { origin, request, queue: name });
            }
            Frame::QueueList { request } => {
                let session = self.sessions.get_mut(&conn).expect("session of a frame");
                session.list_gathers.insert(request, (self.config.shard_count, Vec::new()));
                for shard in 0..self.config.shard_count {
                    self.send(ShardId(shard), ShardMessage::ListQueues { origin, request });
                }
            }
            Frame::ExchangeList { request } => {
                let exchanges = self.routing.exchanges().collect();
                self.write_frame(conn, &Frame::ExchangeListReply { request, exchanges });
            }
            Frame::Subscribe { request, consumer, queue, prefetch } => {
                self.subscribe(conn, request, consumer, queue, prefetch)
            }
            Frame::Cancel { request, consumer } => {
                let session = self.sessions.get_mut(&conn).expect("session of a frame");
                match session.subscriptions.remove(&consumer) {
                    Some(queue) => {
                        let owner = shard_of(&queue, self.config.shard_count);
                        let queue = queue.to_string();
                        self.send(owner, ShardMessage::Cancel { origin, request: Some(request), consumer, queue });
                    }
                    None => {
                        let message = format!("consumer {} does not subscribe", consumer.0);
                        self.write_frame(conn, &Frame::Failed { request, code: ErrorCode::NotFound, message });
                    }
                }
            }
            Frame::HaStatus { request } => {
                self.send(ShardId(0), ShardMessage::HaStatus { origin, request, fence: None });
            }
            Frame::HaFence { request, epoch } => {
                self.send(ShardId(0), ShardMessage::HaStatus { origin, request, fence: Some(Epoch(epoch)) });
            }
            Frame::HaPromote { request } => {
                let change = ConfigRequest::HaPromote;
                self.send(ShardId(0), ShardMessage::ConfigRequest { origin, request: Some(request), change });
            }
            Frame::Heartbeat => {
                // Echoed so that a client detects a dead or stalled broker by the silence
                // (PROTOCOL.md 1.3); a backup link's heartbeats are its own business.
                if !self.is_backup_link(conn) {
                    self.write_frame(conn, &Frame::Heartbeat);
                }
            }
            other => {
                let message = format!("a client may not send {}", other.name());
                self.fail_connection(conn, ErrorCode::UnexpectedFrame, message);
            }
        }
    }

    pub(super) fn gather_queue_infos(&mut self, conn: ConnId, request: RequestId, queues: Vec<QueueInfo>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            self.counters.to_closed_connection += 1;
            return;
        };
        let Some((remaining, gathered)) = session.list_gathers.get_mut(&request) else { return };
        gathered.extend(queues);
        *remaining -= 1;
        if *remaining > 0 {
            return;
        }
        let (_, mut queues) = session.list_gathers.remove(&request).expect("gather present");
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_frame(conn, &Frame::QueueListReply { request, queues });
    }

    /// A newer primary exists: every client connection (not admin ones) gets `NotPrimary` and is
    /// closed, so that nothing more is published to or consumed from this broker's copy.
    pub(super) fn close_clients_superseded(&mut self) {
        let clients: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(s.kind, Some(ConnectionKind::Client | ConnectionKind::BackupLink)) && !s.closing)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in clients {
            let message = "this broker was a primary and another broker was promoted in a newer epoch; connect to the \
                           new primary"
                .to_string();
            self.counters.refused_not_primary += 1;
            self.close_with_error(conn, ErrorCode::NotPrimary, message);
        }
    }

    pub(super) fn fail_decode(&mut self, conn: ConnId, error: &DecodeError) {
        self.fail_connection(conn, error.code(), error.to_string());
    }

    /// Writes an `Error` frame and marks the connection to be closed once it is written.
    pub(super) fn fail_connection(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.counters.protocol_errors += 1;
        self.close_with_error(conn, code, message);
    }

    /// Writes an `Error` frame and marks the connection to be closed once it is written, without
    /// counting it as the client's protocol error.
    pub(super) fn close_with_error(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.write_frame(conn, &Frame::Error { code, message });
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.closing = true;
        }
        self.mark_session(conn);
    }
}

/// A client connection's state on the shard that accepted it.
#[derive(Debug)]
pub(super) struct Session {
    /// What the preamble announced: a client, an admin connection (`--ha-admin`), or a backup's
    /// link to us as its primary (`PREAMBLE_FLAG_BACKUP`), which sends only heartbeats until the
    /// HA layer takes it over; `None` until the preamble arrived.
    pub(super) kind: Option<ConnectionKind>,
    /// Set once an `Error` went out; nothing more is read.
    pub(super) closing: bool,
    /// Bytes waiting to be written.
    pub(super) out: BytesMut,
    /// Whether the session is in `dirty_sessions`.
    pub(super) dirty: bool,
    /// Publish confirms; created by the first publish.
    pub(super) tracker: Option<CompletionTracker>,
    /// The seq the next publish must carry.
    pub(super) next_seq: Option<Seq>,
    /// Subscriptions: consumer to queue name.
    pub(super) subscriptions: HashMap<ConsumerId, Arc<str>>,
    /// Queue lists being gathered from every shard.
    pub(super) list_gathers: HashMap<RequestId, (u16, Vec<QueueInfo>)>,
    /// Whether the tracker may have confirms to release.
    pub(super) confirms_due: bool,
}

/// The request id of a frame that would change a replicated object (and so is refused on an HA
/// backup); `None` for reads, settles, cancels and heartbeats. Passive declares only read. A
/// publish has no request id: `publish` refuses it through its confirms.
pub(super) fn changes_replicated_state(frame: &Frame) -> Option<RequestId> {
    match frame {
        Frame::QueueDeclare { request, options, .. } if !options.passive => Some(*request),
        Frame::ExchangeDeclare { request, passive: false, .. } => Some(*request),
        Frame::QueueDelete { request, .. }
        | Frame::QueuePurge { request, .. }
        | Frame::ExchangeDelete { request, .. }
        | Frame::Bind { request, .. }
        | Frame::Unbind { request, .. }
        | Frame::Subscribe { request, .. } => Some(*request),
        _ => None,
    }
}

pub(super) fn not_found_queue(request: RequestId, queue: &str) -> Frame {
    Frame::Failed { request, code: ErrorCode::NotFound, message: format!("no queue '{queue}'") }
}
