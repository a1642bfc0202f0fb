//! The coordinator of configuration changes: shard 0 decides every queue, exchange and binding
//! change, so that all shards apply the same changes in the same order.
//!
//! A change is validated here (queue redeclares must match, exclusive queues belong to one
//! connection), applied on the coordinator's own routing table (which validates exchanges and
//! bindings), then broadcast to every other shard. The requester's `Ok` goes out only once every
//! shard has applied it, so a client that declared a queue can publish to it from any connection.
//!
//! Not here: the routing table itself, or the queues' messages.
//!
//! Invariants:
//! - Change ids only grow; a change is answered exactly once, after `shard_count - 1` applied
//!   notices.
//! - `queues` mirrors the routing table's queue names on the coordinator shard.

use std::collections::HashMap;

use crate::frame::{ErrorCode, Frame, QueueOptions};
use crate::ids::RequestId;
use crate::shard_message::{ConfigChange, ConfigRequest, ConnRef};

/// Shard 0's bookkeeping for configuration changes.
#[derive(Debug, Default)]
pub struct ConfigCoordinator {
    /// Every queue with the options it was created with and its exclusive owner.
    queues: HashMap<String, (QueueOptions, Option<ConnRef>)>,
    /// The next change id.
    next_id: u64,
    /// Changes broadcast and not yet applied everywhere.
    pending: HashMap<u64, PendingChange>,
}

/// A broadcast change waiting for the other shards.
#[derive(Debug)]
struct PendingChange {
    /// Who asked, and their request id (`None` for the broker's own changes).
    origin: ConnRef,
    /// The request to answer.
    request: Option<RequestId>,
    /// Shards that have not yet applied it.
    remaining: u16,
}

/// What the coordinator decided about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answer at once with this frame; nothing changes.
    Reply(Frame),
    /// Apply these changes (validated by applying them on the coordinator first), then answer
    /// `Ok` once every shard applied them. An empty list answers `Ok` at once.
    Apply(Vec<ConfigChange>),
}

impl ConfigCoordinator {
    /// Decides what a request means.
    pub fn decide(&self, origin: ConnRef, request: Option<RequestId>, change: ConfigRequest) -> Decision {
        let request_id = request.unwrap_or_default();
        let failed = |code, message: String| Decision::Reply(Frame::Failed { request: request_id, code, message });
        match change {
            ConfigRequest::DeclareQueue { name, options } => {
                let max = crate::limits::NAME_BYTES_MAX as usize;
                if name.is_empty() || name.len() > max {
                    return failed(
                        ErrorCode::InvalidArgument,
                        format!("queue name must be 1..={max} bytes; got {}", name.len()),
                    );
                }
                match self.queues.get(&name) {
                    None if options.passive => failed(ErrorCode::NotFound, format!("no queue '{name}'")),
                    None => {
                        let exclusive_owner = options.exclusive.then_some(origin);
                        let options = QueueOptions { passive: false, ..options };
                        Decision::Apply(vec![ConfigChange::CreateQueue { name, options, exclusive_owner }])
                    }
                    Some((_, Some(owner))) if *owner != origin => {
                        failed(ErrorCode::ResourceLocked, format!("queue '{name}' is exclusive to another connection"))
                    }
                    Some(_) if options.passive => Decision::Apply(Vec::new()),
                    Some((existing, _)) => {
                        let declared = QueueOptions { passive: false, ..options };
                        if *existing == declared {
                            Decision::Apply(Vec::new())
                        } else {
                            failed(
                                ErrorCode::PreconditionFailed,
                                format!(
                                    "queue '{name}' exists with {}; declared with {}",
                                    describe(existing),
                                    describe(&declared)
                                ),
                            )
                        }
                    }
                }
            }
            ConfigRequest::DeclareExchange { name, kind, passive } => {
                Decision::Apply(if passive { Vec::new() } else { vec![ConfigChange::CreateExchange { name, kind }] })
            }
            ConfigRequest::Change(change) => Decision::Apply(vec![change]),
            ConfigRequest::ConnectionClosed => Decision::Apply(
                self.queues
                    .iter()
                    .filter(|(_, (_, owner))| *owner == Some(origin))
                    .map(|(name, _)| ConfigChange::DeleteQueue { name: name.clone() })
                    .collect(),
            ),
            ConfigRequest::AutoDelete { name } => Decision::Apply(if self.queues.contains_key(&name) {
                vec![ConfigChange::DeleteQueue { name }]
            } else {
                Vec::new()
            }),
        }
    }

    /// Records a change the coordinator applied on its own shard, and returns the id to
    /// broadcast it with.
    pub fn record_applied(&mut self, change: &ConfigChange) -> u64 {
        match change {
            ConfigChange::CreateQueue { name, options, exclusive_owner } => {
                self.queues.insert(name.clone(), (options.clone(), *exclusive_owner));
            }
            ConfigChange::DeleteQueue { name } => {
                self.queues.remove(name);
            }
            _ => {}
        }
        self.next_id += 1;
        self.next_id
    }

    /// Starts waiting for `remaining` shards to apply change `id` before answering.
    pub fn await_applied(&mut self, id: u64, origin: ConnRef, request: Option<RequestId>, remaining: u16) {
        assert!(remaining > 0);
        let previous = self.pending.insert(id, PendingChange { origin, request, remaining });
        assert!(previous.is_none(), "change id {id} reused");
    }

    /// A shard applied change `id`. Returns who to answer once every shard has.
    pub fn handle_applied(&mut self, id: u64) -> Option<(ConnRef, Option<RequestId>)> {
        let pending = self.pending.get_mut(&id).expect("applied notice for an unknown change");
        pending.remaining -= 1;
        if pending.remaining > 0 {
            return None;
        }
        let done = self.pending.remove(&id).expect("pending change present");
        Some((done.origin, done.request))
    }
}

/// Queue options in the words of the CLI, for error messages.
fn describe(options: &QueueOptions) -> String {
    let limit = |value: Option<u64>| value.map_or("unlimited".to_string(), |v| v.to_string());
    format!(
        "exclusive={} auto-delete={} max-count={} max-bytes={}",
        options.exclusive,
        options.auto_delete,
        limit(options.max_count),
        limit(options.max_bytes)
    )
}
