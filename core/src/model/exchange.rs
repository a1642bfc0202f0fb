//! One exchange: its kind, its bindings, and which queues a routing key leads to.
//!
//! Routing runs once per published message, so each kind keeps the index its rule needs:
//! - direct: a hash map from binding key to the queues bound with it, one lookup per message;
//! - fanout: the list of distinct bound queues, copied out as is;
//! - topic: binding keys without wildcards in a hash map (one lookup), and wildcard patterns in a
//!   trie (`topic_trie`), matched in one pass over the key's words. A list of patterns scanned
//!   one by one came first and measured 3 µs per message at 100 patterns.
//!
//! The queue reference `Q` is generic: the routing table uses an interned `QueueName` (an
//! `Arc<str>`: cloning it into the output is a reference count increment), benches and tests may
//! use plain integers.
//!
//! Not here: exchange names, queue existence, the default exchange, or errors (see
//! `routing_table`). An `Exchange` accepts any key and any queue; it only keeps its indexes right.
//!
//! Invariants:
//! - A binding is a (key, queue) pair; it is held once, however often it was bound.
//! - `route` appends each matching queue once, even when several bindings match it.
//! - Hash maps are only looked up, never iterated where the order shows: every output (`route`'s
//!   order included) depends only on the sequence of binds and unbinds, so identical copies of an
//!   exchange on different shards route identically.
//! - `binding_count` equals the number of distinct (key, queue) pairs held.

use crate::hash_state::{HashMap, HashSet};
use std::hash::Hash;

use crate::model::topic::Pattern;
use crate::model::topic_trie::TopicTrie;
use crate::wire::frame::ExchangeKind;

/// An exchange's bindings and the index its kind routes with.
#[derive(Debug, Clone)]
pub struct Exchange<Q> {
    /// How routing keys are matched against binding keys.
    kind: ExchangeKind,
    /// Distinct (key, queue) bindings held.
    binding_count: u32,
    /// The index for `kind`.
    routes: Routes<Q>,
}

/// What `bind` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The binding is new.
    Created,
    /// The same (key, queue) binding was already there; nothing changed.
    Existed,
}

/// What `unbind` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbound {
    /// The binding was there and is gone.
    Removed,
    /// There was no such (key, queue) binding; nothing changed.
    NotBound,
}

impl<Q: Clone + Eq + Hash> Exchange<Q> {
    /// An exchange of `kind` with no bindings.
    pub fn new(kind: ExchangeKind) -> Exchange<Q> {
        let routes = match kind {
            ExchangeKind::Direct => Routes::Direct { by_key: HashMap::default() },
            ExchangeKind::Fanout => Routes::Fanout { queues: Vec::new(), keys_by_queue: HashMap::default() },
            ExchangeKind::Topic => Routes::Topic { literal: HashMap::default(), trie: TopicTrie::new() },
        };
        Exchange { kind, binding_count: 0, routes }
    }

    /// The exchange's kind.
    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    /// How many distinct (key, queue) bindings it holds.
    pub fn binding_count(&self) -> u32 {
        self.binding_count
    }

    /// Binds `queue` with `key`: a routing key for direct, a pattern for topic, ignored by fanout
    /// for routing (though two keys to one queue are two bindings there too).
    ///
    /// # Panics
    ///
    /// If the exchange already holds `u32::MAX` bindings; the routing table bounds it far lower
    /// (`limits::BINDINGS_PER_EXCHANGE_MAX`).
    pub fn bind(&mut self, key: &[u8], queue: Q) -> Bound {
        let bound = match &mut self.routes {
            Routes::Direct { by_key } => add_unique(by_key.entry(key.into()).or_default(), queue),
            Routes::Fanout { queues, keys_by_queue } => match keys_by_queue.get_mut(&queue) {
                Some(target) if target.keys.iter().any(|held| **held == *key) => Bound::Existed,
                Some(target) => {
                    target.keys.push(key.into());
                    Bound::Created
                }
                None => {
                    let target = FanoutTarget { position: queues.len(), keys: vec![key.into()] };
                    keys_by_queue.insert(queue.clone(), target);
                    queues.push(queue);
                    Bound::Created
                }
            },
            Routes::Topic { literal, trie } => {
                let pattern = Pattern::compile(key);
                if pattern.is_literal() {
                    add_unique(literal.entry(key.into()).or_default(), queue)
                } else {
                    trie.insert(&pattern, queue)
                }
            }
        };
        if bound == Bound::Created {
            self.binding_count = self.binding_count.checked_add(1).expect("binding count overflow");
        }
        self.assert_fanout_positions();
        bound
    }

    /// Removes the (key, queue) binding if it is held.
    pub fn unbind(&mut self, key: &[u8], queue: &Q) -> Unbound {
        let unbound = match &mut self.routes {
            Routes::Direct { by_key } => remove_from_keyed(by_key, key, queue),
            Routes::Fanout { queues, keys_by_queue } => {
                let Some(target) = keys_by_queue.get_mut(queue) else {
                    return Unbound::NotBound;
                };
                let Some(at) = target.keys.iter().position(|held| **held == *key) else {
                    return Unbound::NotBound;
                };
                target.keys.remove(at);
                if target.keys.is_empty() {
                    let position = target.position;
                    keys_by_queue.remove(queue);
                    queues.swap_remove(position);
                    // The queue that was last now sits at `position`: keep its index right.
                    if let Some(moved) = queues.get(position) {
                        keys_by_queue.get_mut(moved).expect("fanout queue without keys").position = position;
                    }
                }
                Unbound::Removed
            }
            Routes::Topic { literal, trie } => {
                let pattern = Pattern::compile(key);
                if pattern.is_literal() {
                    remove_from_keyed(literal, key, queue)
                } else {
                    trie.remove(&pattern, queue)
                }
            }
        };
        if unbound == Unbound::Removed {
            assert!(self.binding_count > 0, "removed a binding from an exchange holding none");
            self.binding_count -= 1;
        }
        self.assert_fanout_positions();
        unbound
    }

    /// Appends to `out` every queue `routing_key` leads to, each once. `out` is not cleared, and
    /// what it held before is left alone (and not deduplicated against). The order is
    /// deterministic: bind order for direct, the fanout list's order, and for topic the literal
    /// match first, then the trie's.
    pub fn route(&self, routing_key: &[u8], out: &mut Vec<Q>) {
        match &self.routes {
            Routes::Direct { by_key } => {
                if let Some(queues) = by_key.get(routing_key) {
                    out.extend_from_slice(queues);
                }
            }
            Routes::Fanout { queues, .. } => out.extend_from_slice(queues),
            Routes::Topic { literal, trie } => {
                let start = out.len();
                // Each source below holds distinct queues; duplicates need two sources.
                let mut sources = 0u32;
                if let Some(queues) = literal.get(routing_key) {
                    out.extend_from_slice(queues);
                    sources += 1;
                }
                sources += trie.route(routing_key, out);
                if sources > 1 {
                    dedup_tail(out, start);
                }
            }
        }
    }

    /// Every (key, queue) binding, in an unspecified order: for cleanup that does not depend on
    /// order (deleting the exchange), never for output.
    pub fn bindings(&self) -> Box<dyn Iterator<Item = (&[u8], &Q)> + '_> {
        match &self.routes {
            Routes::Direct { by_key } => {
                Box::new(by_key.iter().flat_map(|(key, queues)| queues.iter().map(move |q| (&**key, q))))
            }
            Routes::Fanout { keys_by_queue, .. } => {
                Box::new(keys_by_queue.iter().flat_map(|(q, target)| target.keys.iter().map(move |key| (&**key, q))))
            }
            Routes::Topic { literal, trie } => Box::new(
                literal.iter().flat_map(|(key, queues)| queues.iter().map(move |q| (&**key, q))).chain(trie.bindings()),
            ),
        }
    }

    /// Pair assertion for the fanout index: each queue's recorded position is where it sits.
    /// Cheap enough only in debug builds, as it walks every fanout queue.
    fn assert_fanout_positions(&self) {
        if cfg!(debug_assertions) {
            if let Routes::Fanout { queues, keys_by_queue } = &self.routes {
                assert_eq!(queues.len(), keys_by_queue.len());
                for (position, queue) in queues.iter().enumerate() {
                    assert_eq!(keys_by_queue[queue].position, position);
                }
            }
        }
    }
}

/// The per-kind index.
#[derive(Debug, Clone)]
enum Routes<Q> {
    /// Direct: binding key to the queues bound with it, in bind order.
    Direct {
        /// Binding key to queues.
        by_key: HashMap<Box<[u8]>, Vec<Q>>,
    },
    /// Fanout: every bound queue once.
    Fanout {
        /// Distinct bound queues; what `route` copies out.
        queues: Vec<Q>,
        /// Each queue's keys and its position in `queues`, for bind and unbind.
        keys_by_queue: HashMap<Q, FanoutTarget>,
    },
    /// Topic: literal keys by hash, wildcard patterns in a trie.
    Topic {
        /// Keys without wildcards to their queues: a topic binding `a.b` is a direct binding.
        literal: HashMap<Box<[u8]>, Vec<Q>>,
        /// Every binding key with a wildcard, with its queues.
        trie: TopicTrie<Q>,
    },
}

/// A fanout queue's bindings.
#[derive(Debug, Clone)]
struct FanoutTarget {
    /// Where the queue sits in the fanout list.
    position: usize,
    /// The keys it is bound with (never empty).
    keys: Vec<Box<[u8]>>,
}

/// Pushes `queue` unless it is already in `queues`.
fn add_unique<Q: Eq>(queues: &mut Vec<Q>, queue: Q) -> Bound {
    if queues.contains(&queue) {
        Bound::Existed
    } else {
        queues.push(queue);
        Bound::Created
    }
}

/// Removes `queue` from `queues`, keeping the order of the rest.
fn remove_value<Q: Eq>(queues: &mut Vec<Q>, queue: &Q) -> Unbound {
    match queues.iter().position(|held| held == queue) {
        Some(at) => {
            queues.remove(at);
            Unbound::Removed
        }
        None => Unbound::NotBound,
    }
}

/// Removes `queue` from the list under `key`, dropping the key when its list empties.
fn remove_from_keyed<Q: Eq>(map: &mut HashMap<Box<[u8]>, Vec<Q>>, key: &[u8], queue: &Q) -> Unbound {
    let Some(queues) = map.get_mut(key) else {
        return Unbound::NotBound;
    };
    let unbound = remove_value(queues, queue);
    if queues.is_empty() {
        map.remove(key);
    }
    unbound
}

/// Removes repeats from `out[start..]`, keeping each queue's first occurrence in place order.
/// Short tails (the usual case) compare pairwise without allocating; long ones use a set.
fn dedup_tail<Q: Clone + Eq + Hash>(out: &mut Vec<Q>, start: usize) {
    let tail = out.len() - start;
    let mut kept = start;
    if tail <= DEDUP_PAIRWISE_MAX {
        for index in start..out.len() {
            if !out[start..kept].contains(&out[index]) {
                out.swap(kept, index);
                kept += 1;
            }
        }
    } else {
        let mut seen = HashSet::with_capacity_and_hasher(tail, Default::default());
        for index in start..out.len() {
            if seen.insert(out[index].clone()) {
                out.swap(kept, index);
                kept += 1;
            }
        }
    }
    out.truncate(kept);
}

/// Longest route output deduplicated by pairwise comparison (at most 32 × 32 / 2 = 512 compares)
/// before a hash set is cheaper than the quadratic scan.
const DEDUP_PAIRWISE_MAX: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes `key` through `exchange` into a fresh vector, sorted: for topic exchanges, whose
    /// output order is deterministic but not the bind order.
    fn routed_sorted(exchange: &Exchange<u32>, key: &str) -> Vec<u32> {
        let mut out = routed(exchange, key);
        out.sort_unstable();
        out
    }

    /// Routes `key` through `exchange` into a fresh vector.
    fn routed(exchange: &Exchange<u32>, key: &str) -> Vec<u32> {
        let mut out = Vec::new();
        exchange.route(key.as_bytes(), &mut out);
        out
    }

    // Goal: a direct exchange routes by exact key, to every queue bound with it, in bind order.
    #[test]
    fn direct_exchange_routes_by_exact_key() {
        let mut exchange = Exchange::new(ExchangeKind::Direct);
        // Two queues on `k`, one on `other`.
        assert_eq!(exchange.bind(b"k", 1), Bound::Created);
        assert_eq!(exchange.bind(b"k", 2), Bound::Created);
        assert_eq!(exchange.bind(b"other", 3), Bound::Created);
        // Rebinding is idempotent.
        assert_eq!(exchange.bind(b"k", 1), Bound::Existed);
        assert_eq!(exchange.binding_count(), 3);
        assert_eq!(routed(&exchange, "k"), [1, 2]);
        assert_eq!(routed(&exchange, "other"), [3]);
        // No pattern semantics on a direct exchange.
        assert_eq!(routed(&exchange, "k.x"), Vec::<u32>::new());
        assert_eq!(exchange.bind(b"#", 4), Bound::Created);
        assert_eq!(routed(&exchange, "k"), [1, 2]);
        // Unbinding removes exactly that pair.
        assert_eq!(exchange.unbind(b"k", &1), Unbound::Removed);
        assert_eq!(exchange.unbind(b"k", &1), Unbound::NotBound);
        assert_eq!(exchange.unbind(b"nokey", &1), Unbound::NotBound);
        assert_eq!(routed(&exchange, "k"), [2]);
        assert_eq!(exchange.binding_count(), 3);
    }

    // Goal: a fanout exchange routes to every bound queue once, whatever the keys.
    #[test]
    fn fanout_exchange_routes_to_each_queue_once() {
        let mut exchange = Exchange::new(ExchangeKind::Fanout);
        // Queue 1 bound twice with different keys: two bindings, one target.
        assert_eq!(exchange.bind(b"a", 1), Bound::Created);
        assert_eq!(exchange.bind(b"b", 1), Bound::Created);
        assert_eq!(exchange.bind(b"a", 1), Bound::Existed);
        assert_eq!(exchange.bind(b"", 2), Bound::Created);
        assert_eq!(exchange.bind(b"", 3), Bound::Created);
        assert_eq!(exchange.binding_count(), 4);
        assert_eq!(routed(&exchange, "anything"), [1, 2, 3]);
        // Dropping one of queue 1's keys keeps it routed.
        assert_eq!(exchange.unbind(b"a", &1), Unbound::Removed);
        assert_eq!(routed(&exchange, ""), [1, 2, 3]);
        // Dropping its last key removes it; the last queue takes its place.
        assert_eq!(exchange.unbind(b"b", &1), Unbound::Removed);
        assert_eq!(routed(&exchange, ""), [3, 2]);
        assert_eq!(exchange.unbind(b"b", &1), Unbound::NotBound);
        assert_eq!(exchange.unbind(b"zzz", &2), Unbound::NotBound);
        assert_eq!(exchange.binding_count(), 2);
    }

    // Goal: a topic exchange routes by pattern, and a queue matched by several bindings
    // appears once.
    #[test]
    fn topic_exchange_routes_by_pattern_without_duplicates() {
        let mut exchange = Exchange::new(ExchangeKind::Topic);
        // Queue 1 matches `a.b` three ways; queue 2 by a literal key; queue 3 by `*.b`.
        exchange.bind(b"a.#", 1);
        exchange.bind(b"#", 1);
        exchange.bind(b"a.b", 1);
        exchange.bind(b"a.b", 2);
        exchange.bind(b"*.b", 3);
        exchange.bind(b"x.*", 4);
        assert_eq!(exchange.binding_count(), 6);
        assert_eq!(routed_sorted(&exchange, "a.b"), [1, 2, 3]);
        assert_eq!(routed_sorted(&exchange, "x.y"), [1, 4]);
        assert_eq!(routed_sorted(&exchange, ""), [1]);
        // Two queues on one pattern share it; removing one keeps the other.
        exchange.bind(b"x.*", 5);
        assert_eq!(exchange.unbind(b"x.*", &4), Unbound::Removed);
        assert_eq!(routed_sorted(&exchange, "x.y"), [1, 5]);
        // Removing the last queue of a pattern drops the pattern; the others stay findable.
        assert_eq!(exchange.unbind(b"a.#", &1), Unbound::Removed);
        assert_eq!(exchange.unbind(b"#", &1), Unbound::Removed);
        assert_eq!(routed_sorted(&exchange, "a.b"), [1, 2, 3]);
        assert_eq!(exchange.unbind(b"*.b", &3), Unbound::Removed);
        assert_eq!(exchange.unbind(b"x.*", &5), Unbound::Removed);
        assert_eq!(exchange.unbind(b"x.*", &5), Unbound::NotBound);
        assert_eq!(routed_sorted(&exchange, "a.b"), [1, 2]);
        assert_eq!(routed_sorted(&exchange, "x.y"), Vec::<u32>::new());
        assert_eq!(exchange.binding_count(), 2);
    }

    // Goal: deduplication keeps first occurrences in order, for short and long outputs alike,
    // and leaves what `out` held before alone.
    #[test]
    fn route_output_deduplicates_long_fan_in() {
        let mut exchange = Exchange::new(ExchangeKind::Topic);
        // 100 queues under `#` and again under `*`: 200 candidates, 100 distinct.
        for queue in 0..100 {
            exchange.bind(b"#", queue);
            exchange.bind(b"*", 99 - queue);
        }
        let mut out = vec![7, 7];
        exchange.route(b"k", &mut out);
        assert_eq!(out[..2], [7, 7]);
        let mut routed = out[2..].to_vec();
        routed.sort_unstable();
        assert_eq!(routed, (0..100).collect::<Vec<u32>>());
    }

    // Goal: a topic exchange (literal map, trie and deduplication together) routes each
    // matching queue exactly once, over random binds and unbinds. Method: seeded xorshift, tiny
    // word alphabet, and a reference list of (key, queue) matched pattern by pattern.
    #[test]
    fn random_topic_bindings_route_each_matching_queue_once() {
        let mut state = 0xD1B5_4A32_D192_ED03u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let pattern_words = ["a", "b", "*", "#"];
        let mut exchange = Exchange::new(ExchangeKind::Topic);
        let mut reference: Vec<(String, u32)> = Vec::new();
        for step in 0..5_000 {
            let key: Vec<&str> = (0..next(4)).map(|_| pattern_words[next(4) as usize]).collect();
            let key = key.join(".");
            let queue = next(6) as u32;
            let held = reference.iter().position(|(k, q)| *k == key && *q == queue);
            if next(3) == 0 {
                // Unbind.
                let expected = if held.is_some() { Unbound::Removed } else { Unbound::NotBound };
                if let Some(at) = held {
                    reference.remove(at);
                }
                assert_eq!(exchange.unbind(key.as_bytes(), &queue), expected, "step {step}");
            } else {
                // Bind.
                let expected = if held.is_some() { Bound::Existed } else { Bound::Created };
                if held.is_none() {
                    reference.push((key.clone(), queue));
                }
                assert_eq!(exchange.bind(key.as_bytes(), queue), expected, "step {step}");
            }
            assert_eq!(exchange.binding_count() as usize, reference.len());
            let routing_key: Vec<&str> = (0..next(4)).map(|_| ["a", "b"][next(2) as usize]).collect();
            let routing_key = routing_key.join(".");
            let mut expected: Vec<u32> = reference
                .iter()
                .filter(|(k, _)| crate::model::topic::matches(k.as_bytes(), routing_key.as_bytes()))
                .map(|(_, q)| *q)
                .collect();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(routed_sorted(&exchange, &routing_key), expected, "step {step} key {routing_key:?}");
        }
    }

    // Goal: `bindings` lists every held pair exactly once, for each kind.
    #[test]
    fn bindings_lists_every_pair() {
        for kind in [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic] {
            let mut exchange = Exchange::new(kind);
            exchange.bind(b"a.*", 1);
            exchange.bind(b"a.b", 1);
            exchange.bind(b"a.b", 2);
            let mut pairs: Vec<(Vec<u8>, u32)> = exchange.bindings().map(|(key, q)| (key.to_vec(), *q)).collect();
            pairs.sort();
            assert_eq!(pairs, [(b"a.*".to_vec(), 1), (b"a.b".to_vec(), 1), (b"a.b".to_vec(), 2)], "{kind:?}");
            assert_eq!(exchange.binding_count(), 3);
        }
    }
}
