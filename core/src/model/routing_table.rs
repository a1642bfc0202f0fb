//! The routing table: every exchange by name, every queue name, and the bindings between them.
//!
//! Every shard keeps an identical copy. Configuration changes (declare, delete, bind, unbind, queue
//! add and remove) are decided once and applied on every shard in the same order; a publish is
//! then routed on the shard that read it, without asking anyone. So applying a change must be
//! cheap and deterministic, and routing must not allocate beyond the caller's output vector.
//!
//! Built in, always present and never deletable:
//! - the default exchange `""`: direct, routes a message to the queue named by its routing key
//!   if that queue exists; it takes no explicit bindings;
//! - `amq.direct`, `amq.topic`, `amq.fanout`: ordinary exchanges of their kind, to bind to.
//!
//! Other names starting with `amq.` are reserved.
//!
//! Not here: which shard owns a queue (a hash of its name, see `shard`), queue options or
//! contents (see `queue`), and passive declares or redeclare checks of queues (the coordinator
//! decides those before a change reaches this table).
//!
//! Invariants:
//! - Queue names are interned: each queue's `Arc<str>` is allocated once by `add_queue`, and every
//!   binding and every `route` output shares it, so routing a message to n queues costs n
//!   reference-count increments and no copies.
//! - Each binding is recorded twice, in its exchange's index and in its queue's list; the two
//!   always agree (asserted on every bind, unbind and removal).
//! - No exchange holds a binding to a queue that does not exist: `remove_queue` removes them.
//! - Outputs depend only on the sequence of changes applied: hash maps are only looked up, and
//!   `exchanges()` lists in name order.
//! - Every name and key held is at most `limits::NAME_BYTES_MAX` bytes; there are at most
//!   `limits::EXCHANGES_MAX` exchanges, each with at most `limits::BINDINGS_PER_EXCHANGE_MAX`
//!   bindings.

use crate::hash_state::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::limits::{BINDINGS_PER_EXCHANGE_MAX, EXCHANGES_MAX, NAME_BYTES_MAX};
use crate::model::exchange::{Bound, Exchange, Unbound};
use crate::wire::frame::{Binding, ErrorCode, ExchangeInfo, ExchangeKind};

/// Every exchange, queue name and binding, as one shard knows them.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Exchanges by name: the `amq.*` built-ins and declared ones. The default exchange is not
    /// here: it has no bindings and routes through `queues`.
    exchanges: HashMap<Arc<str>, Exchange<Arc<str>>>,
    /// Every existing queue by its interned name, with the bindings that lead to it in bind order.
    queues: HashMap<Arc<str>, Vec<QueueBinding>>,
}

/// What a declare did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// The exchange or queue is new.
    Created,
    /// An equal one existed; nothing changed.
    Existed,
}

/// What a delete or removal took with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Bindings removed along with the exchange or queue.
    pub bindings: u32,
}

/// Why a routing table change or a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// The named exchange was never declared, or was deleted.
    #[error("exchange '{name}' does not exist; only declared and built-in exchanges can be used")]
    ExchangeNotFound {
        /// The name that came.
        name: String,
    },
    /// The named queue does not exist.
    #[error("queue '{name}' does not exist; only declared queues can be used")]
    QueueNotFound {
        /// The name that came.
        name: String,
    },
    /// An unbind named a binding that is not there.
    #[error(
        "queue '{queue}' is not bound to exchange '{exchange}' with key '{key}'; only existing bindings can be removed"
    )]
    BindingNotFound {
        /// Exchange name.
        exchange: String,
        /// Queue name.
        queue: String,
        /// Binding key.
        key: String,
    },
    /// A redeclare asked for a different kind than the existing exchange has.
    #[error("exchange '{name}' exists as {}; a redeclare must use the same kind, got {}", kind_name(*.existing), kind_name(*.requested))]
    KindMismatch {
        /// Exchange name.
        name: String,
        /// The kind it has.
        existing: ExchangeKind,
        /// The kind asked for.
        requested: ExchangeKind,
    },
    /// A declare used a name reserved for built-in exchanges.
    #[error("exchange names starting with '{RESERVED_PREFIX}' are reserved for the built-in exchanges; got '{name}'")]
    ReservedName {
        /// The name that came.
        name: String,
    },
    /// A delete named a built-in exchange.
    #[error("the built-in exchanges ('', amq.direct, amq.topic, amq.fanout) cannot be deleted; got '{name}'")]
    BuiltinExchange {
        /// The name that came.
        name: String,
    },
    /// A bind or unbind named the default exchange.
    #[error("the default exchange '' routes by queue name and takes no bindings; got a binding of queue '{queue}' with key '{key}'")]
    DefaultExchangeBinding {
        /// Queue name.
        queue: String,
        /// Binding key.
        key: String,
    },
    /// A name or key longer than `limits::NAME_BYTES_MAX`.
    #[error("{what} must be at most {NAME_BYTES_MAX} bytes; got {len}")]
    NameTooLong {
        /// Which name.
        what: NameKind,
        /// Its length in bytes.
        len: usize,
    },
    /// A queue with the empty name, which the default exchange could not tell from "no queue".
    #[error("a queue name must be 1..={NAME_BYTES_MAX} bytes; got 0")]
    QueueNameEmpty,
    /// A declare past `limits::EXCHANGES_MAX`.
    #[error("at most {EXCHANGES_MAX} exchanges may exist; got a declare of '{name}' past that")]
    TooManyExchanges {
        /// The name that came.
        name: String,
    },
    /// A bind past `limits::BINDINGS_PER_EXCHANGE_MAX`.
    #[error("an exchange may hold at most {BINDINGS_PER_EXCHANGE_MAX} bindings; got one more on '{exchange}'")]
    TooManyBindings {
        /// Exchange name.
        exchange: String,
    },
}

/// Which kind of name a `NameTooLong` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// An exchange name.
    Exchange,
    /// A queue name.
    Queue,
    /// A binding key.
    BindingKey,
}

impl RoutingError {
    /// The protocol error code a client receives for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            RoutingError::ExchangeNotFound { .. }
            | RoutingError::QueueNotFound { .. }
            | RoutingError::BindingNotFound { .. } => ErrorCode::NotFound,
            RoutingError::KindMismatch { .. } => ErrorCode::PreconditionFailed,
            RoutingError::ReservedName { .. }
            | RoutingError::BuiltinExchange { .. }
            | RoutingError::DefaultExchangeBinding { .. }
            | RoutingError::QueueNameEmpty => ErrorCode::InvalidArgument,
            RoutingError::NameTooLong { .. }
            | RoutingError::TooManyExchanges { .. }
            | RoutingError::TooManyBindings { .. } => ErrorCode::LimitExceeded,
        }
    }
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable::new()
    }
}

impl RoutingTable {
    /// A table with only the built-in exchanges and no queues.
    pub fn new() -> RoutingTable {
        let exchanges = BUILTIN_EXCHANGES.iter().map(|&(name, kind)| (Arc::from(name), Exchange::new(kind))).collect();
        RoutingTable { exchanges, queues: HashMap::default() }
    }

    /// Declares an exchange, or checks that one of the same kind exists.
    ///
    /// # Errors
    ///
    /// `NameTooLong`; `KindMismatch` if it exists with another kind (built-ins included);
    /// `ReservedName` for a new name starting with `amq.`; `TooManyExchanges`.
    pub fn declare_exchange(&mut self, name: &str, kind: ExchangeKind) -> Result<Declared, RoutingError> {
        check_name_length(NameKind::Exchange, name)?;
        let existing = if name == DEFAULT_EXCHANGE {
            Some(ExchangeKind::Direct)
        } else {
            self.exchanges.get(name).map(Exchange::kind)
        };
        match existing {
            Some(existing) if existing == kind => return Ok(Declared::Existed),
            Some(existing) => {
                return Err(RoutingError::KindMismatch { name: name.to_owned(), existing, requested: kind })
            }
            None => {}
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(RoutingError::ReservedName { name: name.to_owned() });
        }
        if self.exchanges.len() >= EXCHANGES_MAX as usize {
            return Err(RoutingError::TooManyExchanges { name: name.to_owned() });
        }
        self.exchanges.insert(Arc::from(name), Exchange::new(kind));
        Ok(Declared::Created)
    }

    /// Deletes an exchange and its bindings.
    ///
    /// # Errors
    ///
    /// `BuiltinExchange` for the default and `amq.*` built-ins; `ExchangeNotFound`.
    pub fn delete_exchange(&mut self, name: &str) -> Result<Removed, RoutingError> {
        if is_builtin(name) {
            return Err(RoutingError::BuiltinExchange { name: name.to_owned() });
        }
        let Some(exchange) = self.exchanges.remove(name) else {
            return Err(RoutingError::ExchangeNotFound { name: name.to_owned() });
        };
        // Order does not matter here: each removal takes one specific entry out of one queue's
        // list and keeps the rest of that list in order.
        let mut bindings = 0u32;
        for (key, queue) in exchange.bindings() {
            let list = self.queues.get_mut(queue).expect("binding to a queue that does not exist");
            let at = list
                .iter()
                .position(|held| &*held.exchange == name && *held.key == *key)
                .expect("exchange binding missing from its queue's list");
            list.remove(at);
            bindings += 1;
        }
        assert_eq!(bindings, exchange.binding_count());
        Ok(Removed { bindings })
    }

    /// Adds a queue name, so the default exchange routes to it and bindings may name it.
    ///
    /// # Errors
    ///
    /// `QueueNameEmpty`; `NameTooLong`.
    pub fn add_queue(&mut self, name: &str) -> Result<Declared, RoutingError> {
        if name.is_empty() {
            return Err(RoutingError::QueueNameEmpty);
        }
        check_name_length(NameKind::Queue, name)?;
        if self.queues.contains_key(name) {
            return Ok(Declared::Existed);
        }
        self.queues.insert(Arc::from(name), Vec::new());
        Ok(Declared::Created)
    }

    /// Removes a queue name and every binding to it, in every exchange.
    ///
    /// # Errors
    ///
    /// `QueueNotFound`.
    pub fn remove_queue(&mut self, name: &str) -> Result<Removed, RoutingError> {
        let Some((queue, bindings)) = self.queues.remove_entry(name) else {
            return Err(RoutingError::QueueNotFound { name: name.to_owned() });
        };
        for binding in &bindings {
            let exchange = self.exchanges.get_mut(&binding.exchange).expect("queue bound to a missing exchange");
            let unbound = exchange.unbind(&binding.key, &queue);
            assert_eq!(unbound, Unbound::Removed, "queue's binding missing from its exchange");
        }
        Ok(Removed { bindings: u32::try_from(bindings.len()).expect("bindings of one queue overflow u32") })
    }

    /// Binds a queue to an exchange with a key; binding again is a no-op.
    ///
    /// # Errors
    ///
    /// `NameTooLong` for the key; `DefaultExchangeBinding`; `ExchangeNotFound`; `QueueNotFound`;
    /// `TooManyBindings`.
    pub fn bind(&mut self, binding: &Binding) -> Result<Bound, RoutingError> {
        check_name_length(NameKind::BindingKey, &binding.key)?;
        let (exchange_name, queue) = self.binding_ends(binding)?;
        let exchange = self.exchanges.get_mut(&exchange_name).expect("looked up above");
        let queue_bindings = self.queues.get_mut(&queue).expect("looked up above");
        let key = binding.key.as_bytes();
        let held = queue_bindings.iter().position(|held| held.exchange == exchange_name && *held.key == *key);
        if held.is_none() && exchange.binding_count() >= BINDINGS_PER_EXCHANGE_MAX {
            return Err(RoutingError::TooManyBindings { exchange: binding.exchange.clone() });
        }
        let bound = exchange.bind(key, queue);
        // Pair assertion: the exchange's index and the queue's list agree.
        match bound {
            Bound::Created => {
                assert!(held.is_none(), "exchange lacked a binding its queue's list holds");
                queue_bindings.push(QueueBinding { exchange: exchange_name, key: key.into() });
            }
            Bound::Existed => assert!(held.is_some(), "queue's list lacked a binding its exchange holds"),
        }
        Ok(bound)
    }

    /// Removes a binding.
    ///
    /// # Errors
    ///
    /// `DefaultExchangeBinding`; `ExchangeNotFound`; `QueueNotFound`; `BindingNotFound`.
    pub fn unbind(&mut self, binding: &Binding) -> Result<(), RoutingError> {
        let (exchange_name, queue) = self.binding_ends(binding)?;
        let exchange = self.exchanges.get_mut(&exchange_name).expect("looked up above");
        let queue_bindings = self.queues.get_mut(&queue).expect("looked up above");
        let key = binding.key.as_bytes();
        let held = queue_bindings.iter().position(|held| held.exchange == exchange_name && *held.key == *key);
        match exchange.unbind(key, &queue) {
            Unbound::Removed => {
                let at = held.expect("queue's list lacked a binding its exchange held");
                queue_bindings.remove(at);
                Ok(())
            }
            Unbound::NotBound => {
                assert!(held.is_none(), "exchange lacked a binding its queue's list holds");
                Err(RoutingError::BindingNotFound {
                    exchange: binding.exchange.clone(),
                    queue: binding.queue.clone(),
                    key: binding.key.clone(),
                })
            }
        }
    }

    /// Appends to `out` every queue a message published to `exchange` with `routing_key` goes
    /// to, each once; appends nothing when it is unroutable. `out` is not cleared first.
    ///
    /// # Errors
    ///
    /// `ExchangeNotFound`; `out` is then unchanged.
    pub fn route(&self, exchange: &str, routing_key: &[u8], out: &mut Vec<Arc<str>>) -> Result<(), RoutingError> {
        if exchange == DEFAULT_EXCHANGE {
            // A routing key that is not UTF-8 cannot name a queue: unroutable, not an error.
            let queue = std::str::from_utf8(routing_key).ok().and_then(|name| self.queues.get_key_value(name));
            if let Some((queue, _)) = queue {
                out.push(Arc::clone(queue));
            }
            return Ok(());
        }
        match self.exchanges.get(exchange) {
            Some(found) => {
                found.route(routing_key, out);
                Ok(())
            }
            None => Err(RoutingError::ExchangeNotFound { name: exchange.to_owned() }),
        }
    }

    /// Every exchange, the default one first, then by name. The default exchange reports no
    /// bindings: its routes to queues are implicit.
    pub fn exchanges(&self) -> impl Iterator<Item = ExchangeInfo> + '_ {
        let mut named: Vec<(&Arc<str>, &Exchange<Arc<str>>)> = self.exchanges.iter().collect();
        named.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let default = ExchangeInfo { name: DEFAULT_EXCHANGE.to_owned(), kind: ExchangeKind::Direct, bindings: 0 };
        std::iter::once(default).chain(named.into_iter().map(|(name, exchange)| ExchangeInfo {
            name: name.to_string(),
            kind: exchange.kind(),
            bindings: exchange.binding_count(),
        }))
    }

    /// The kind of the named exchange, if it exists (for passive declares).
    pub fn exchange_kind(&self, name: &str) -> Option<ExchangeKind> {
        if name == DEFAULT_EXCHANGE {
            return Some(ExchangeKind::Direct);
        }
        self.exchanges.get(name).map(Exchange::kind)
    }

    /// Every binding, by queue name, then in bind order: for catch-up snapshots, which must not
    /// depend on hash order. Keys are held as the UTF-8 bytes of a `Binding`'s key, so they
    /// convert back exactly.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut queues: Vec<(&Arc<str>, &Vec<QueueBinding>)> = self.queues.iter().collect();
        queues.sort_unstable_by(|a, b| a.0.cmp(b.0));
        queues
            .into_iter()
            .flat_map(|(queue, list)| {
                list.iter().map(move |held| Binding {
                    exchange: held.exchange.to_string(),
                    queue: queue.to_string(),
                    key: String::from_utf8_lossy(&held.key).into_owned(),
                })
            })
            .collect()
    }

    /// True when a queue of that name exists.
    pub fn queue_exists(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    /// How many queues exist.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Looks up both ends of a binding: the exchange's and the queue's interned names.
    fn binding_ends(&self, binding: &Binding) -> Result<(Arc<str>, Arc<str>), RoutingError> {
        if binding.exchange == DEFAULT_EXCHANGE {
            return Err(RoutingError::DefaultExchangeBinding {
                queue: binding.queue.clone(),
                key: binding.key.clone(),
            });
        }
        let Some((exchange_name, _)) = self.exchanges.get_key_value(binding.exchange.as_str()) else {
            return Err(RoutingError::ExchangeNotFound { name: binding.exchange.clone() });
        };
        let exchange_name = Arc::clone(exchange_name);
        let Some((queue, _)) = self.queues.get_key_value(binding.queue.as_str()) else {
            return Err(RoutingError::QueueNotFound { name: binding.queue.clone() });
        };
        Ok((exchange_name, Arc::clone(queue)))
    }
}

/// One binding as its queue records it.
#[derive(Debug, Clone)]
struct QueueBinding {
    /// The exchange's interned name.
    exchange: Arc<str>,
    /// The binding key.
    key: Box<[u8]>,
}

/// Checks a name against `limits::NAME_BYTES_MAX`.
fn check_name_length(what: NameKind, name: &str) -> Result<(), RoutingError> {
    if name.len() > NAME_BYTES_MAX as usize {
        return Err(RoutingError::NameTooLong { what, len: name.len() });
    }
    Ok(())
}

/// True for the default exchange and the `amq.*` built-ins.
fn is_builtin(name: &str) -> bool {
    name == DEFAULT_EXCHANGE || BUILTIN_EXCHANGES.iter().any(|&(builtin, _)| builtin == name)
}

/// An exchange kind as a word, for messages.
fn kind_name(kind: ExchangeKind) -> &'static str {
    match kind {
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
        ExchangeKind::Topic => "topic",
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Exchange => "an exchange name",
            NameKind::Queue => "a queue name",
            NameKind::BindingKey => "a binding key",
        })
    }
}

/// The default exchange's name.
pub const DEFAULT_EXCHANGE: &str = "";
/// The prefix reserved for built-in exchanges.
pub const RESERVED_PREFIX: &str = "amq.";
/// The built-in exchanges besides the default one, always present.
pub const BUILTIN_EXCHANGES: [(&str, ExchangeKind); 3] =
    [("amq.direct", ExchangeKind::Direct), ("amq.topic", ExchangeKind::Topic), ("amq.fanout", ExchangeKind::Fanout)];

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding from its three parts.
    fn binding(exchange: &str, queue: &str, key: &str) -> Binding {
        Binding { exchange: exchange.to_owned(), queue: queue.to_owned(), key: key.to_owned() }
    }

    /// Routes into a fresh vector of names, sorted (topic output order is not the bind order).
    fn routed_sorted(table: &RoutingTable, exchange: &str, key: &str) -> Result<Vec<String>, RoutingError> {
        let mut names = routed(table, exchange, key)?;
        names.sort_unstable();
        Ok(names)
    }

    /// Routes into a fresh vector of names.
    fn routed(table: &RoutingTable, exchange: &str, key: &str) -> Result<Vec<String>, RoutingError> {
        let mut out = Vec::new();
        table.route(exchange, key.as_bytes(), &mut out)?;
        Ok(out.iter().map(|queue| queue.to_string()).collect())
    }

    #[test]
    fn bindings_list_every_binding_by_queue_then_bind_order() {
        // Goal: `bindings` lists what was bound, by queue name, each queue's in bind order, without
        // what was unbound or removed with its exchange, whatever the hash order.
        let mut table = RoutingTable::new();
        for queue in ["b", "a", "c"] {
            table.add_queue(queue).unwrap();
        }
        table.declare_exchange("x", ExchangeKind::Topic).unwrap();
        table.declare_exchange("y", ExchangeKind::Fanout).unwrap();
        for (exchange, queue, key) in
            [("x", "b", "k.*"), ("amq.direct", "b", "k"), ("y", "a", ""), ("x", "a", "#"), ("y", "c", "")]
        {
            table.bind(&binding(exchange, queue, key)).unwrap();
        }
        table.unbind(&binding("x", "a", "#")).unwrap();
        table.delete_exchange("y").unwrap();
        table.bind(&binding("x", "a", "z")).unwrap();
        assert_eq!(
            table.bindings(),
            [binding("x", "a", "z"), binding("x", "b", "k.*"), binding("amq.direct", "b", "k")]
        );
    }

    // Goal: a new table has the four built-ins, and the default exchange routes by queue name
    // to existing queues only.
    #[test]
    fn builtins_exist_and_default_exchange_routes_by_queue_name() {
        let mut table = RoutingTable::new();
        let names: Vec<(String, ExchangeKind)> = table.exchanges().map(|info| (info.name, info.kind)).collect();
        assert_eq!(
            names,
            [
                (String::new(), ExchangeKind::Direct),
                ("amq.direct".to_owned(), ExchangeKind::Direct),
                ("amq.fanout".to_owned(), ExchangeKind::Fanout),
                ("amq.topic".to_owned(), ExchangeKind::Topic),
            ]
        );
        // No queue yet: unroutable, not an error.
        assert_eq!(routed(&table, "", "q").unwrap(), Vec::<String>::new());
        assert_eq!(table.add_queue("q"), Ok(Declared::Created));
        assert_eq!(table.add_queue("q"), Ok(Declared::Existed));
        assert_eq!(routed(&table, "", "q").unwrap(), ["q"]);
        // Bytes that are not UTF-8 name no queue.
        let mut out = Vec::new();
        table.route("", &[0xFF, 0xFE], &mut out).unwrap();
        assert!(out.is_empty());
        // The built-ins cannot be deleted.
        for name in ["", "amq.direct", "amq.topic", "amq.fanout"] {
            let error = table.delete_exchange(name).unwrap_err();
            assert_eq!(error, RoutingError::BuiltinExchange { name: name.to_owned() });
            assert_eq!(error.code(), ErrorCode::InvalidArgument);
        }
        assert_eq!(table.exchanges().count(), 4);
    }

    // Goal: declares are idempotent for the same kind and refused, with both kinds named, for
    // another; reserved and over-long names are refused.
    #[test]
    fn declare_exchange_errors_name_what_was_allowed_and_what_came() {
        let mut table = RoutingTable::new();
        // Same kind twice: created, then existed.
        assert_eq!(table.declare_exchange("logs", ExchangeKind::Topic), Ok(Declared::Created));
        assert_eq!(table.declare_exchange("logs", ExchangeKind::Topic), Ok(Declared::Existed));
        // Another kind: precondition failed, naming both.
        let error = table.declare_exchange("logs", ExchangeKind::Fanout).unwrap_err();
        assert_eq!(error.code(), ErrorCode::PreconditionFailed);
        assert_eq!(
            error.to_string(),
            "exchange 'logs' exists as topic; a redeclare must use the same kind, got fanout"
        );
        // Built-ins redeclare like any other exchange, and keep their kind.
        assert_eq!(table.declare_exchange("amq.topic", ExchangeKind::Topic), Ok(Declared::Existed));
        assert_eq!(table.declare_exchange("", ExchangeKind::Direct), Ok(Declared::Existed));
        let error = table.declare_exchange("", ExchangeKind::Topic).unwrap_err();
        assert_eq!(error.code(), ErrorCode::PreconditionFailed);
        // New `amq.` names are reserved.
        let error = table.declare_exchange("amq.mine", ExchangeKind::Direct).unwrap_err();
        assert_eq!(error, RoutingError::ReservedName { name: "amq.mine".to_owned() });
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert!(error.to_string().contains("got 'amq.mine'"), "{error}");
        // Names are bounded by NAME_BYTES_MAX.
        let long = "x".repeat(NAME_BYTES_MAX as usize + 1);
        let error = table.declare_exchange(&long, ExchangeKind::Direct).unwrap_err();
        assert_eq!(error.code(), ErrorCode::LimitExceeded);
        assert_eq!(error.to_string(), "an exchange name must be at most 255 bytes; got 256");
        let longest = "x".repeat(NAME_BYTES_MAX as usize);
        assert_eq!(table.declare_exchange(&longest, ExchangeKind::Direct), Ok(Declared::Created));
        // Deleting an unknown exchange, and routing through it, are errors.
        let error = table.delete_exchange("nope").unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound);
        assert_eq!(table.delete_exchange("logs"), Ok(Removed { bindings: 0 }));
        let error = routed(&table, "logs", "k").unwrap_err();
        assert_eq!(error, RoutingError::ExchangeNotFound { name: "logs".to_owned() });
        assert_eq!(table.exchange_kind("logs"), None);
        assert_eq!(table.exchange_kind(""), Some(ExchangeKind::Direct));
    }

    // Goal: bind and unbind refuse what cannot be bound, and bind is idempotent.
    #[test]
    fn bind_errors_for_unknown_ends_and_the_default_exchange() {
        let mut table = RoutingTable::new();
        table.add_queue("q").unwrap();
        // The default exchange takes no bindings.
        let error = table.bind(&binding("", "q", "q")).unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert!(error.to_string().contains("takes no bindings"), "{error}");
        assert_eq!(table.unbind(&binding("", "q", "q")).unwrap_err().code(), ErrorCode::InvalidArgument);
        // Unknown exchange, unknown queue.
        let error = table.bind(&binding("nope", "q", "k")).unwrap_err();
        assert_eq!(error, RoutingError::ExchangeNotFound { name: "nope".to_owned() });
        let error = table.bind(&binding("amq.direct", "nope", "k")).unwrap_err();
        assert_eq!(error, RoutingError::QueueNotFound { name: "nope".to_owned() });
        assert_eq!(error.code(), ErrorCode::NotFound);
        // Bind twice: created, then existed; one binding.
        assert_eq!(table.bind(&binding("amq.direct", "q", "k")), Ok(Bound::Created));
        assert_eq!(table.bind(&binding("amq.direct", "q", "k")), Ok(Bound::Existed));
        assert_eq!(bindings_of(&table, "amq.direct"), 1);
        // Over-long keys are refused.
        let long = "k".repeat(NAME_BYTES_MAX as usize + 1);
        let error = table.bind(&binding("amq.direct", "q", &long)).unwrap_err();
        assert_eq!(error.to_string(), "a binding key must be at most 255 bytes; got 256");
        // Unbinding what is not bound says so.
        let error = table.unbind(&binding("amq.direct", "q", "other")).unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound);
        assert_eq!(
            error.to_string(),
            "queue 'q' is not bound to exchange 'amq.direct' with key 'other'; only existing bindings can be removed"
        );
        assert_eq!(table.unbind(&binding("amq.direct", "q", "k")), Ok(()));
        assert_eq!(bindings_of(&table, "amq.direct"), 0);
        // Empty queue names are refused.
        assert_eq!(table.add_queue("").unwrap_err().code(), ErrorCode::InvalidArgument);
    }

    // Goal: removing a queue removes its bindings in every exchange; deleting an exchange
    // removes its bindings from every queue.
    #[test]
    fn removing_a_queue_or_exchange_removes_its_bindings_everywhere() {
        let mut table = RoutingTable::new();
        table.add_queue("a").unwrap();
        table.add_queue("b").unwrap();
        table.declare_exchange("t", ExchangeKind::Topic).unwrap();
        // `a` on three exchanges, `b` on two.
        table.bind(&binding("amq.direct", "a", "k")).unwrap();
        table.bind(&binding("amq.fanout", "a", "")).unwrap();
        table.bind(&binding("t", "a", "x.#")).unwrap();
        table.bind(&binding("t", "a", "x.y")).unwrap();
        table.bind(&binding("amq.fanout", "b", "")).unwrap();
        table.bind(&binding("t", "b", "*.y")).unwrap();
        assert_eq!(routed_sorted(&table, "t", "x.y").unwrap(), ["a", "b"]);
        // Removing `a` takes its four bindings.
        assert_eq!(table.remove_queue("a"), Ok(Removed { bindings: 4 }));
        assert!(!table.queue_exists("a"));
        assert_eq!(routed(&table, "t", "x.y").unwrap(), ["b"]);
        assert_eq!(routed(&table, "amq.fanout", "").unwrap(), ["b"]);
        assert_eq!(routed(&table, "amq.direct", "k").unwrap(), Vec::<String>::new());
        assert_eq!(routed(&table, "", "a").unwrap(), Vec::<String>::new());
        assert_eq!(table.remove_queue("a").unwrap_err().code(), ErrorCode::NotFound);
        // Re-adding `a` starts with no bindings.
        table.add_queue("a").unwrap();
        assert_eq!(routed(&table, "amq.fanout", "").unwrap(), ["b"]);
        // Deleting `t` takes `b`'s binding there, and `b` can be removed cleanly after.
        assert_eq!(table.delete_exchange("t"), Ok(Removed { bindings: 1 }));
        assert_eq!(table.remove_queue("b"), Ok(Removed { bindings: 1 }));
        assert_eq!(bindings_of(&table, "amq.fanout"), 0);
    }

    // Goal: a queue appears once in the output even when several bindings lead to it, and
    // each exchange kind follows its rule through the table.
    #[test]
    fn route_lists_each_queue_once_per_message() {
        let mut table = RoutingTable::new();
        for queue in ["q1", "q2", "q3"] {
            table.add_queue(queue).unwrap();
        }
        // q1 bound to amq.topic three ways that all match `a.b`.
        table.bind(&binding("amq.topic", "q1", "a.b")).unwrap();
        table.bind(&binding("amq.topic", "q1", "a.*")).unwrap();
        table.bind(&binding("amq.topic", "q1", "#")).unwrap();
        table.bind(&binding("amq.topic", "q2", "*.b")).unwrap();
        table.bind(&binding("amq.topic", "q3", "c.#")).unwrap();
        assert_eq!(routed_sorted(&table, "amq.topic", "a.b").unwrap(), ["q1", "q2"]);
        assert_eq!(routed_sorted(&table, "amq.topic", "c").unwrap(), ["q1", "q3"]);
        // Fanout: q2 bound with two keys is one target.
        table.bind(&binding("amq.fanout", "q2", "x")).unwrap();
        table.bind(&binding("amq.fanout", "q2", "y")).unwrap();
        assert_eq!(routed(&table, "amq.fanout", "anything").unwrap(), ["q2"]);
        assert_eq!(bindings_of(&table, "amq.fanout"), 2);
        // Direct: exact key only.
        table.bind(&binding("amq.direct", "q3", "k")).unwrap();
        assert_eq!(routed(&table, "amq.direct", "k").unwrap(), ["q3"]);
        assert_eq!(routed(&table, "amq.direct", "k2").unwrap(), Vec::<String>::new());
        // The output vector is appended to, not cleared.
        let mut out = vec![Arc::from("earlier")];
        table.route("amq.direct", b"k", &mut out).unwrap();
        assert_eq!(out.len(), 2);
    }

    // Goal: two tables fed the same changes in the same order agree on every output, even
    // though each hash map has its own random seed.
    #[test]
    fn identical_change_sequences_give_identical_outputs() {
        let build = || {
            let mut table = RoutingTable::new();
            table.declare_exchange("t", ExchangeKind::Topic).unwrap();
            for index in 0..50 {
                let queue = format!("q{index}");
                table.add_queue(&queue).unwrap();
                table.bind(&binding("t", &queue, &format!("k.{}.#", index % 7))).unwrap();
                table.bind(&binding("t", &queue, "#")).unwrap();
                table.bind(&binding("amq.fanout", &queue, "")).unwrap();
            }
            for index in (0..50).step_by(3) {
                table.remove_queue(&format!("q{index}")).unwrap();
            }
            table
        };
        let (first, second) = (build(), build());
        for exchange in ["t", "amq.fanout"] {
            assert_eq!(routed(&first, exchange, "k.3.z").unwrap(), routed(&second, exchange, "k.3.z").unwrap());
        }
        assert_eq!(first.exchanges().collect::<Vec<_>>(), second.exchanges().collect::<Vec<_>>());
    }

    /// The binding count `exchanges()` reports for one exchange.
    fn bindings_of(table: &RoutingTable, name: &str) -> u32 {
        table.exchanges().find(|info| info.name == name).expect("exchange listed").bindings
    }
}
