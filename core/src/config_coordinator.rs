//! The coordinator of configuration changes: shard 0 decides every queue, exchange and binding
//! change, so that all shards apply the same changes in the same order.
//!
//! A change is validated here (queue redeclares must match, exclusive queues belong to one
//! connection), applied on the coordinator's own routing table (which validates exchanges and
//! bindings), then broadcast to every other shard. The requester's `Ok` goes out only once every
//! shard has applied it, so a client that declared a queue can publish to it from any connection.
//!
//! The coordinator also owns the broker's HA state (see `ha_view` for why it lives here): a
//! promotion is decided here through the state table (`broker_state::transition`), takes a new
//! epoch from the `EpochClock`, and is broadcast as `ConfigChange::HaState` like any other change,
//! so every shard admits clients only once the promoter's `Ok` could go out. Until replication
//! exists a new primary has no expected backups, so a promotion is two changes applied in order:
//! `recovering` (cause `promoted`) then `active` (cause `expected-backups-settled`).
//!
//! Replication levels are decided here, at declare (`replication_level`): from the declare's
//! `qpid.replicate` argument, the `ha-replicate` default and the temporary-queue rule. A bad level
//! fails the declare with `InvalidArgument`; nothing is created.
//!
//! On a primary, the coordinator's records of every queue's and exchange's level let shard 0
//! report the replicated configuration in its one order (`replication`): `queue_level`,
//! `exchange_level`, and for a catch-up snapshot `replicated_queues`, `replicated_exchanges`.
//!
//! On a backup, the replication link's changes come as the broker's own requests (no request id,
//! nobody answered) and are accepted in every HA state. Shard 0 applies the primary's
//! configuration records, in the primary coordinator's order, by asking for the routing changes
//! they imply (`ReplicaQueueCreated`, `ReplicaQueueDeleted`, `ReplicaExchangeCreated`,
//! `ReplicaExchangeDeleted`, `ReplicaBind`, `ReplicaUnbind`); since only shard 0's ordered stream
//! changes the backup's routing, a binding always finds its queue and exchange (the owner of a
//! replica queue creates and drops the `Queue` itself, from its own stream). Before a full resync
//! shard 0 asks `ReplicaConfigurationCleared`: every replicated exchange (so every replicated
//! binding) is deleted and every replicated queue name leaves routing (its owner keeps the
//! `Queue`), and the snapshot that follows re-creates exactly the primary's. Objects
//! created from records get the level the record carries, the one they have on the primary: a
//! promoted backup replicates them on exactly as the old primary did (a `configuration` queue
//! without its messages, bindings by `replication_level::binding_replicated`). Before records
//! carried it, every replica took level `all`, and a promoted backup replicated the messages of
//! `configuration` queues.
//! Shard 0 also asks for the link's state transitions (`HaTransition`: joining -> catchup,
//! catchup -> ready, ready -> catchup), checked against the state table like a promotion.
//! `observe_epoch` lets the clock learn the primary's epoch, so that a later promotion takes an
//! epoch above it.
//!
//! Not here: the routing table itself, or the queues' messages.
//!
//! Invariants:
//! - Change ids only grow; a change is answered exactly once, after `shard_count - 1` applied
//!   notices.
//! - `queues` mirrors the routing table's queue names, and `exchanges` its declared exchanges, on
//!   the coordinator shard.
//! - An exchange's level is the one of the declare that created it; a redeclare does not change it.
//! - `ha_state` changes only along the state table; `epochs` is asked for a promotion epoch
//!   exactly once, when `recovering` is recorded, and that epoch is the one `decide` broadcast.

use crate::hash_state::HashMap;

use crate::broker_state::{transition, BrokerState, IllegalTransition, TransitionCause};
use crate::epoch::{Epoch, EpochClock, Observed};
use crate::ids::RequestId;
use crate::replication_level::{effective_level, exchange_level, ReplicationLevel};
use crate::shard_message::{ConfigChange, ConfigRequest, ConnRef};
use crate::wire::frame::{ErrorCode, ExchangeKind, Frame, QueueOptions};

/// Shard 0's bookkeeping for configuration changes.
#[derive(Debug)]
pub struct ConfigCoordinator {
    /// The broker's HA state; every shard holds a copy in its `HaView`.
    ha_state: BrokerState,
    /// The highest epoch seen and the one this broker was promoted in.
    epochs: EpochClock,
    /// Every queue with the options it was created with, its exclusive owner and its level.
    queues: HashMap<String, (QueueOptions, Option<ConnRef>, ReplicationLevel)>,
    /// `ha-replicate`: the level of objects declared without a `qpid.replicate` argument.
    replicate_default: ReplicationLevel,
    /// The kind and replication level of every exchange declared since start (not the built-ins).
    exchanges: HashMap<String, (ExchangeKind, ReplicationLevel)>,
    /// The next change id.
    next_id: u64,
    /// Changes broadcast and not yet applied everywhere.
    pending: HashMap<u64, PendingChange>,
    /// Backups this broker would expect if promoted now (those the current primary last said
    /// were ready, itself left out): a promotion with none goes straight to `active`.
    expected_backups: usize,
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

/// Why the coordinator refused an HA state transition the replication link asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionRefused {
    /// A promotion: only `ha promote` makes one, since it takes a new epoch.
    #[error("HA state transition {from} -> {to} (promoted) is a promotion: only ha promote makes one")]
    Promotion {
        /// The state the broker is in.
        from: BrokerState,
        /// The state asked for.
        to: BrokerState,
    },
    /// Off the state table (`broker_state::transition`).
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

impl ConfigCoordinator {
    /// A coordinator for a broker starting in HA state `ha_state` (`standalone` or `joining`),
    /// with `replicate_default` from `ha-replicate`.
    pub fn new(ha_state: BrokerState, replicate_default: ReplicationLevel, member: u16) -> ConfigCoordinator {
        ConfigCoordinator {
            ha_state,
            epochs: EpochClock::for_member(member),
            queues: HashMap::default(),
            replicate_default,
            exchanges: HashMap::default(),
            next_id: 0,
            pending: HashMap::default(),
            expected_backups: 0,
        }
    }

    /// How many backups a promotion would wait for in `recovering` (see the field).
    pub fn set_expected_backups(&mut self, count: usize) {
        self.expected_backups = count;
    }

    /// The broker's HA state as the coordinator holds it.
    pub fn ha_state(&self) -> BrokerState {
        self.ha_state
    }

    /// The highest epoch seen (0 before any promotion or primary was seen).
    pub fn highest_epoch(&self) -> Epoch {
        self.epochs.highest()
    }

    /// Takes in the epoch of the primary a backup replicates from, so that a later promotion of
    /// this broker takes an epoch above it.
    pub fn observe_epoch(&mut self, epoch: Epoch) -> Observed {
        self.epochs.observe(epoch)
    }

    /// The replication level an exchange was declared with; `None` for an unknown or built-in
    /// exchange.
    pub fn exchange_level(&self, name: &str) -> Option<ReplicationLevel> {
        self.exchanges.get(name).map(|&(_, level)| level)
    }

    /// The replication level a queue was created with; `None` for an unknown queue.
    pub fn queue_level(&self, name: &str) -> Option<ReplicationLevel> {
        self.queues.get(name).map(|&(_, _, level)| level)
    }

    /// Every queue replicated at all (`configuration` or `all`), by name, with its options and level.
    pub fn replicated_queues(&self) -> Vec<(&str, &QueueOptions, ReplicationLevel)> {
        let mut queues: Vec<_> = self
            .queues
            .iter()
            .filter(|(_, (_, _, level))| level.replicates_configuration())
            .map(|(name, (options, _, level))| (name.as_str(), options, *level))
            .collect();
        queues.sort_unstable_by(|a, b| a.0.cmp(b.0));
        queues
    }

    /// Every exchange replicated at all (`configuration` or `all`), by name, with its kind and level.
    pub fn replicated_exchanges(&self) -> Vec<(&str, ExchangeKind, ReplicationLevel)> {
        let mut exchanges: Vec<_> = self
            .exchanges
            .iter()
            .filter(|(_, (_, level))| level.replicates_configuration())
            .map(|(name, &(kind, level))| (name.as_str(), kind, level))
            .collect();
        exchanges.sort_unstable_by(|a, b| a.0.cmp(b.0));
        exchanges
    }

    /// Decides what a request means.
    pub fn decide(&self, origin: ConnRef, request: Option<RequestId>, change: ConfigRequest) -> Decision {
        let request_id = request.unwrap_or_default();
        let failed = |code, message: String| Decision::Reply(Frame::Failed { request: request_id, code, message });
        match change {
            ConfigRequest::DeclareQueue { name, options, arguments } => {
                let max = crate::limits::NAME_BYTES_MAX as usize;
                if name.is_empty() || name.len() > max {
                    return failed(
                        ErrorCode::InvalidArgument,
                        format!("queue name must be 1..={max} bytes; got {}", name.len()),
                    );
                }
                let level =
                    match effective_level(self.replicate_default, &arguments, options.exclusive, options.auto_delete) {
                        Ok(level) => level,
                        Err(error) => return failed(ErrorCode::InvalidArgument, error.to_string()),
                    };
                match self.queues.get(&name) {
                    None if options.passive => failed(ErrorCode::NotFound, format!("no queue '{name}'")),
                    None => {
                        let exclusive_owner = options.exclusive.then_some(origin);
                        let options = QueueOptions { passive: false, ..options };
                        Decision::Apply(vec![ConfigChange::CreateQueue { name, options, exclusive_owner, level }])
                    }
                    Some((_, Some(owner), _)) if *owner != origin => {
                        failed(ErrorCode::ResourceLocked, format!("queue '{name}' is exclusive to another connection"))
                    }
                    Some(_) if options.passive => Decision::Apply(Vec::new()),
                    Some((existing, _, _)) => {
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
            ConfigRequest::DeclareExchange { name, kind, passive, arguments } => {
                let level = match exchange_level(self.replicate_default, &name, &arguments) {
                    Ok(level) => level,
                    Err(error) => return failed(ErrorCode::InvalidArgument, error.to_string()),
                };
                Decision::Apply(if passive {
                    Vec::new()
                } else {
                    vec![ConfigChange::CreateExchange { name, kind, level }]
                })
            }
            ConfigRequest::Change(change) => Decision::Apply(vec![change]),
            ConfigRequest::ConnectionClosed => Decision::Apply(
                self.queues
                    .iter()
                    .filter(|(_, (_, owner, _))| *owner == Some(origin))
                    .map(|(name, _)| ConfigChange::DeleteQueue { name: name.clone() })
                    .collect(),
            ),
            ConfigRequest::AutoDelete { name } => Decision::Apply(if self.queues.contains_key(&name) {
                vec![ConfigChange::DeleteQueue { name }]
            } else {
                Vec::new()
            }),
            ConfigRequest::HaPromote => match self.decide_promotion() {
                Ok(changes) => Decision::Apply(changes),
                Err(reason) => failed(ErrorCode::PreconditionFailed, reason.to_string()),
            },
            ConfigRequest::ReplicaQueueCreated { name, options, level } => {
                Decision::Apply(match self.queues.get(&name) {
                    Some((existing, _, existing_level)) if *existing == options && *existing_level == level => {
                        Vec::new()
                    }
                    // Recreated on the primary with other options or another level while the old
                    // name was still here.
                    Some(_) => vec![
                        ConfigChange::RemoveReplicaQueue { name: name.clone() },
                        ConfigChange::AddReplicaQueue { name, options, level },
                    ],
                    None => vec![ConfigChange::AddReplicaQueue { name, options, level }],
                })
            }
            ConfigRequest::ReplicaQueueDeleted { name } => Decision::Apply(if self.queues.contains_key(&name) {
                vec![ConfigChange::RemoveReplicaQueue { name }]
            } else {
                Vec::new()
            }),
            ConfigRequest::ReplicaExchangeCreated { name, kind, level } => {
                Decision::Apply(match self.exchanges.get(&name) {
                    Some(&(existing, existing_level)) if existing == kind && existing_level == level => Vec::new(),
                    // Re-created on the primary with another kind or level while the old one was
                    // still here (or declared here, at another level, while this broker was a
                    // primary): a redeclare keeps the first level, so it is made anew.
                    Some(_) => vec![
                        ConfigChange::DeleteExchange { name: name.clone() },
                        ConfigChange::CreateExchange { name, kind, level },
                    ],
                    None => vec![ConfigChange::CreateExchange { name, kind, level }],
                })
            }
            ConfigRequest::ReplicaExchangeDeleted { name } => Decision::Apply(if self.exchanges.contains_key(&name) {
                vec![ConfigChange::DeleteExchange { name }]
            } else {
                Vec::new()
            }),
            // The routing table validates both ends; shard 0's order guarantees they exist.
            ConfigRequest::ReplicaBind(binding) => Decision::Apply(vec![ConfigChange::Bind(binding)]),
            ConfigRequest::ReplicaUnbind(binding) => Decision::Apply(vec![ConfigChange::Unbind(binding)]),
            // Exchanges first: deleting them takes their bindings, and the queue names after them
            // take the rest. Owners keep their `Queue`s: `RemoveReplicaQueue` never drops one.
            ConfigRequest::ReplicaConfigurationCleared => Decision::Apply(
                self.replicated_exchanges()
                    .into_iter()
                    .map(|(name, ..)| ConfigChange::DeleteExchange { name: name.to_owned() })
                    .chain(
                        self.replicated_queues()
                            .into_iter()
                            .map(|(name, ..)| ConfigChange::RemoveReplicaQueue { name: name.to_owned() }),
                    )
                    .collect(),
            ),
            ConfigRequest::HaTransition { to, cause } => match self.decide_transition(to, cause) {
                Ok(change) => Decision::Apply(vec![change]),
                Err(reason) => failed(ErrorCode::PreconditionFailed, reason.to_string()),
            },
        }
    }

    /// The change a transition asked by the replication link makes, or why it is refused (off the
    /// state table, or a promotion, which only `HaPromote` makes since it takes an epoch).
    ///
    /// # Errors
    /// `TransitionRefused` with the reason; nothing changes.
    pub fn decide_transition(
        &self,
        to: BrokerState,
        cause: TransitionCause,
    ) -> Result<ConfigChange, TransitionRefused> {
        if cause == TransitionCause::Promoted {
            return Err(TransitionRefused::Promotion { from: self.ha_state, to });
        }
        let state = transition(self.ha_state, to, cause)?;
        Ok(ConfigChange::HaState { state, epoch: self.epochs.promoted().unwrap_or_default(), cause })
    }

    /// The changes a promotion makes, or why it is refused. Whether the other brokers allow a
    /// `joining` broker to be promoted (the reference's StatusCheck) is checked by `ringmq ha
    /// promote` before it asks: the broker has no links to its peers yet.
    fn decide_promotion(&self) -> Result<Vec<ConfigChange>, String> {
        let from = self.ha_state;
        let refused = |why: &str| format!("cannot promote: {why} (this broker is {from})");
        match from {
            BrokerState::Standalone => return Err(refused("not in a cluster: ha-cluster is off")),
            BrokerState::CatchUp => return Err(refused("still catching up")),
            BrokerState::Recovering | BrokerState::Active => return Err(refused("already primary")),
            BrokerState::Joining | BrokerState::Ready => {}
        }
        let recovering = transition(from, BrokerState::Recovering, TransitionCause::Promoted)
            .map_err(|error| refused(&error.to_string()))?;
        let epoch = match self.epochs.next_for_promotion_peek() {
            Ok(next) => next,
            Err(_) => {
                return Err(refused(&format!(
                    "epoch {} has been seen and no higher epoch exists",
                    self.epochs.highest()
                )))
            }
        };
        let promoted = ConfigChange::HaState { state: recovering, epoch, cause: TransitionCause::Promoted };
        if self.expected_backups > 0 {
            // Recovering until the expected backups are ready again or time out (shard 0's HA
            // node decides, with `HaTransition`).
            return Ok(vec![promoted]);
        }
        let active = transition(recovering, BrokerState::Active, TransitionCause::ExpectedBackupsSettled)
            .expect("recovering -> active is in the table");
        Ok(vec![
            promoted,
            ConfigChange::HaState { state: active, epoch, cause: TransitionCause::ExpectedBackupsSettled },
        ])
    }

    /// Records a change the coordinator applied on its own shard, and returns the id to
    /// broadcast it with.
    pub fn record_applied(&mut self, change: &ConfigChange) -> u64 {
        match change {
            ConfigChange::CreateQueue { name, options, exclusive_owner, level } => {
                self.queues.insert(name.clone(), (options.clone(), *exclusive_owner, *level));
            }
            ConfigChange::AddReplicaQueue { name, options, level } => {
                self.queues.insert(name.clone(), (options.clone(), None, *level));
            }
            ConfigChange::DeleteQueue { name } | ConfigChange::RemoveReplicaQueue { name } => {
                self.queues.remove(name);
            }
            ConfigChange::CreateExchange { name, kind, level } => {
                // A redeclare (same kind, or the routing table refused it) keeps the first level.
                self.exchanges.entry(name.clone()).or_insert((*kind, *level));
            }
            ConfigChange::DeleteExchange { name } => {
                self.exchanges.remove(name);
            }
            ConfigChange::HaState { state, epoch, cause } => {
                self.ha_state = transition(self.ha_state, *state, *cause)
                    .unwrap_or_else(|error| panic!("coordinator recorded an HA change off the table: {error}"));
                if *cause == TransitionCause::Promoted {
                    let taken = self.epochs.next_for_promotion().expect("decide checked the epoch is available");
                    assert_eq!(taken, *epoch, "promotion epoch differs from the one decided");
                }
                assert_eq!(self.epochs.promoted().unwrap_or_default(), *epoch);
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
