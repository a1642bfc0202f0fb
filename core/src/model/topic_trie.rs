//! A trie of topic patterns: every wildcard binding of a topic exchange, matched against a routing
//! key in one pass.
//!
//! Scanning a list of patterns costs one match per distinct pattern per message; at 100 patterns
//! the first version of `exchange` measured 3 µs per message. The trie shares pattern prefixes and
//! turns a literal word into one lookup among a node's children (a few compares, or a hash lookup
//! for wide nodes), whatever the number of patterns behind it.
//!
//! Matching simulates the trie as an automaton over the key's words, holding the *set* of nodes
//! reached so far (deduplicated at every word), not following paths one by one: backtracking
//! through `#` nodes takes exponential time on patterns like `#.a.#.a.#.a...` against a long key,
//! and a client can bind those. A node reached through `#` stays in the set while it
//! absorbs words. Since compiled patterns never hold `#.#` or `#.*` (see `topic`), a `#` node has
//! only literal children, which keeps the step simple.
//!
//! Not here: literal patterns (the exchange looks those up in a hash map) and duplicate removal
//! (the exchange does it: a queue bound with two matching patterns comes out twice here).
//!
//! Invariants:
//! - Node 0 is the root; every other node in use is reachable from it by exactly one edge.
//! - A node other than the root has children or is where a pattern ends: `remove` prunes emptied
//!   nodes and recycles their slots (last freed, first reused), so the trie's shape and numbering
//!   depend only on the sequence of inserts and removes.
//! - `route` touches at most (key words + 1) × (nodes) states, and no hash map is iterated.

use crate::hash_state::HashMap;

use crate::model::exchange::{Bound, Unbound};
use crate::model::topic::{key_words, Pattern, PatternWord};

/// Wildcard patterns and their queues, shared by prefix.
#[derive(Debug, Clone)]
pub struct TopicTrie<Q> {
    /// Nodes by index; node 0 is the root.
    nodes: Vec<Node<Q>>,
    /// Indexes of unused nodes, reused last-freed first.
    free: Vec<u32>,
    /// Distinct (pattern, queue) pairs held.
    len: usize,
}

impl<Q: Clone + Eq> Default for TopicTrie<Q> {
    fn default() -> Self {
        TopicTrie::new()
    }
}

impl<Q: Clone + Eq> TopicTrie<Q> {
    /// An empty trie.
    pub fn new() -> TopicTrie<Q> {
        TopicTrie { nodes: vec![Node::new(false)], free: Vec::new(), len: 0 }
    }

    /// How many (pattern, queue) pairs it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `queue` under `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, queue: Q) -> Bound {
        let mut node = ROOT;
        for word in pattern.words() {
            node = match self.child(node, word) {
                Some(child) => child,
                None => self.add_child(node, word),
            };
        }
        // Patterns that normalize alike (`#` and `#.#`) end at one node, yet are distinct
        // bindings: each keeps its own entry, by source.
        let ends = &mut self.nodes[node as usize].ends;
        let end = match ends.iter().position(|end| *end.source == *pattern.source()) {
            Some(at) => &mut ends[at],
            None => {
                ends.push(PatternEnd { source: pattern.source().into(), queues: Vec::new() });
                ends.last_mut().expect("just pushed")
            }
        };
        if end.queues.contains(&queue) {
            return Bound::Existed;
        }
        end.queues.push(queue);
        self.len += 1;
        Bound::Created
    }

    /// Removes `queue` from under `pattern`, pruning nodes left empty.
    pub fn remove(&mut self, pattern: &Pattern, queue: &Q) -> Unbound {
        // The path from the root, as (parent, word) for each edge taken.
        let mut path: Vec<(u32, PatternWord<'_>)> = Vec::new();
        let mut node = ROOT;
        for word in pattern.words() {
            let Some(child) = self.child(node, word) else {
                return Unbound::NotBound;
            };
            path.push((node, word));
            node = child;
        }
        let ends = &mut self.nodes[node as usize].ends;
        let Some(end_at) = ends.iter().position(|end| *end.source == *pattern.source()) else {
            return Unbound::NotBound;
        };
        let queues = &mut ends[end_at].queues;
        let Some(at) = queues.iter().position(|held| held == queue) else {
            return Unbound::NotBound;
        };
        queues.remove(at);
        if queues.is_empty() {
            ends.remove(end_at);
        }
        self.len -= 1;
        // Prune from the end of the path while nodes are left with nothing.
        while let Some((parent, word)) = path.pop() {
            if !self.nodes[node as usize].is_empty() {
                break;
            }
            self.remove_edge(parent, word);
            self.nodes[node as usize] = Node::new(false);
            self.free.push(node);
            node = parent;
        }
        Unbound::Removed
    }

    /// Appends the queues of every pattern `routing_key` matches; a queue under several matching
    /// patterns is appended once per pattern. Returns how many patterns contributed queues: with
    /// fewer than two, `out`'s new entries are distinct.
    pub fn route(&self, routing_key: &[u8], out: &mut Vec<Q>) -> u32 {
        if self.is_empty() {
            return 0;
        }
        let mut current = StateSet::default();
        let mut next = StateSet::default();
        self.enter(&mut current, ROOT);
        current.finish_step();
        for word in key_words(routing_key) {
            next.clear();
            for &state in current.as_slice() {
                let node = &self.nodes[state as usize];
                if node.after_hash {
                    // The `#` absorbs this word.
                    next.insert(state);
                }
                if let Some(child) = node.words.get(word) {
                    self.enter(&mut next, child);
                }
                if let Some(child) = node.star {
                    self.enter(&mut next, child);
                }
            }
            next.finish_step();
            std::mem::swap(&mut current, &mut next);
            if current.as_slice().is_empty() {
                return 0;
            }
        }
        let mut contributed = 0u32;
        for &state in current.as_slice() {
            for end in &self.nodes[state as usize].ends {
                out.extend_from_slice(&end.queues);
                contributed += 1;
            }
        }
        contributed
    }

    /// Every (binding key, queue) pair held, in node order: for cleanup, not for output.
    pub fn bindings(&self) -> impl Iterator<Item = (&[u8], &Q)> + '_ {
        self.nodes
            .iter()
            .flat_map(|node| node.ends.iter().flat_map(|end| end.queues.iter().map(move |queue| (&*end.source, queue))))
    }

    /// Adds `node` to `set`, with the `#` child it reaches by absorbing zero words.
    fn enter(&self, set: &mut StateSet, node: u32) {
        set.insert(node);
        if let Some(hash) = self.nodes[node as usize].hash {
            // A `#` node has no `#` child (patterns hold no `#.#`), so one level is the closure.
            assert!(self.nodes[hash as usize].hash.is_none(), "`#` node with a `#` child");
            set.insert(hash);
        }
    }

    /// The child of `node` along `word`, if it exists.
    fn child(&self, node: u32, word: PatternWord<'_>) -> Option<u32> {
        let node = &self.nodes[node as usize];
        match word {
            PatternWord::Literal(literal) => node.words.get(literal),
            PatternWord::Star => node.star,
            PatternWord::Hash => node.hash,
        }
    }

    /// Creates the child of `node` along `word`.
    fn add_child(&mut self, node: u32, word: PatternWord<'_>) -> u32 {
        let after_hash = word == PatternWord::Hash;
        let child = match self.free.pop() {
            Some(index) => {
                assert!(self.nodes[index as usize].is_empty(), "reused a node in use");
                self.nodes[index as usize] = Node::new(after_hash);
                index
            }
            None => {
                let index = u32::try_from(self.nodes.len()).expect("topic trie nodes overflow u32");
                self.nodes.push(Node::new(after_hash));
                index
            }
        };
        let parent = &mut self.nodes[node as usize];
        match word {
            PatternWord::Literal(literal) => {
                parent.words.insert(literal, child);
            }
            PatternWord::Star => {
                // Normalized patterns put `*` before `#` in a run of wildcards.
                assert!(!parent.after_hash, "`*` after `#` in a normalized pattern");
                assert!(parent.star.replace(child).is_none());
            }
            PatternWord::Hash => {
                assert!(!parent.after_hash, "`#` after `#` in a normalized pattern");
                assert!(parent.hash.replace(child).is_none());
            }
        }
        child
    }

    /// Removes the edge from `node` along `word`.
    fn remove_edge(&mut self, node: u32, word: PatternWord<'_>) {
        let parent = &mut self.nodes[node as usize];
        let removed = match word {
            PatternWord::Literal(literal) => parent.words.remove(literal),
            PatternWord::Star => parent.star.take(),
            PatternWord::Hash => parent.hash.take(),
        };
        assert!(removed.is_some(), "pruned an edge that is not there");
    }
}

/// One trie node: the end of some pattern prefix.
#[derive(Debug, Clone)]
struct Node<Q> {
    /// Children along literal words.
    words: Children,
    /// Child along `*`.
    star: Option<u32>,
    /// Child along `#`.
    hash: Option<u32>,
    /// This node was reached along `#`, so it absorbs any number of words.
    after_hash: bool,
    /// The patterns that end here: usually one, several when binding keys normalize alike.
    ends: Vec<PatternEnd<Q>>,
}

/// One binding key ending at a node, with its queues.
#[derive(Debug, Clone)]
struct PatternEnd<Q> {
    /// The binding key as bound.
    source: Box<[u8]>,
    /// Distinct queues, in bind order (never empty).
    queues: Vec<Q>,
}

impl<Q> Node<Q> {
    /// A node without children or queues.
    fn new(after_hash: bool) -> Node<Q> {
        Node { words: Children::default(), star: None, hash: None, after_hash, ends: Vec::new() }
    }

    /// True when nothing ends here or below.
    fn is_empty(&self) -> bool {
        self.words.is_empty() && self.star.is_none() && self.hash.is_none() && self.ends.is_empty()
    }
}

/// A node's children along literal words. Most nodes have a handful, where comparing the
/// words one by one beats hashing the key's word (SipHash dominated the route time when every
/// node used a hash map); past `CHILDREN_LINEAR_MAX` a hash map bounds the work per word.
#[derive(Debug, Clone)]
enum Children {
    /// Few children, in insertion order.
    Few(Vec<(Box<[u8]>, u32)>),
    /// Many children, by word. Never turns back into `Few`, which keeps the shape a function
    /// of the bind history alone.
    Many(HashMap<Box<[u8]>, u32>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    /// The child along `word`.
    fn get(&self, word: &[u8]) -> Option<u32> {
        match self {
            Children::Few(children) => children.iter().find(|(held, _)| **held == *word).map(|&(_, child)| child),
            Children::Many(children) => children.get(word).copied(),
        }
    }

    /// Adds the child along `word`, which must not exist yet.
    fn insert(&mut self, word: &[u8], child: u32) {
        assert!(self.get(word).is_none(), "trie edge added twice");
        match self {
            Children::Few(children) if children.len() < CHILDREN_LINEAR_MAX => {
                children.push((word.into(), child));
            }
            Children::Few(children) => {
                let mut many: HashMap<Box<[u8]>, u32> = std::mem::take(children).into_iter().collect();
                many.insert(word.into(), child);
                *self = Children::Many(many);
            }
            Children::Many(children) => {
                children.insert(word.into(), child);
            }
        }
    }

    /// Removes the child along `word`, returning it.
    fn remove(&mut self, word: &[u8]) -> Option<u32> {
        match self {
            Children::Few(children) => {
                let at = children.iter().position(|(held, _)| **held == *word)?;
                Some(children.remove(at).1)
            }
            Children::Many(children) => children.remove(word),
        }
    }

    /// True when there are no children.
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(children) => children.is_empty(),
            Children::Many(children) => children.is_empty(),
        }
    }
}

/// The nodes reached after some words of a key, each once. Up to `STATES_INLINE` nodes live in
/// an inline array, in the order first reached, so the usual route allocates nothing; a larger
/// set moves to the heap and is kept in node order.
#[derive(Debug)]
struct StateSet {
    /// The first nodes, while the set is small: `inline[..inline_len]`.
    inline: [u32; STATES_INLINE],
    /// How many of `inline` are in use; 0 once spilled.
    inline_len: usize,
    /// Every node once the set outgrew `inline`; may repeat within a step until `finish_step`.
    spilled: Vec<u32>,
}

impl Default for StateSet {
    fn default() -> Self {
        StateSet { inline: [0; STATES_INLINE], inline_len: 0, spilled: Vec::new() }
    }
}

impl StateSet {
    /// The nodes in the set.
    fn as_slice(&self) -> &[u32] {
        if self.spilled.is_empty() {
            &self.inline[..self.inline_len]
        } else {
            &self.spilled
        }
    }

    /// Adds a node unless present. Small sets check pairwise (at most `STATES_INLINE` compares);
    /// spilled ones deduplicate in `finish_step`.
    fn insert(&mut self, node: u32) {
        if !self.spilled.is_empty() {
            self.spilled.push(node);
            return;
        }
        if self.inline[..self.inline_len].contains(&node) {
            return;
        }
        if self.inline_len < STATES_INLINE {
            self.inline[self.inline_len] = node;
            self.inline_len += 1;
            return;
        }
        self.spilled.extend_from_slice(&self.inline);
        self.spilled.push(node);
        self.inline_len = 0;
    }

    /// Ends a step: deduplicates a spilled set (into node order, as deterministic as any).
    fn finish_step(&mut self) {
        if !self.spilled.is_empty() {
            self.spilled.sort_unstable();
            self.spilled.dedup();
        }
    }

    /// Empties the set, keeping its buffer.
    fn clear(&mut self) {
        self.inline_len = 0;
        self.spilled.clear();
    }
}

/// The root node's index.
const ROOT: u32 = 0;
/// Most literal children a node compares one by one before switching to a hash map.
const CHILDREN_LINEAR_MAX: usize = 8;
/// Most nodes a state set holds inline: routes reaching more (many overlapping wildcard
/// patterns) pay one allocation and a sort per word.
const STATES_INLINE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes through the trie into a sorted vector.
    fn routed(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.route(key.as_bytes(), &mut out);
        out.sort_unstable();
        out
    }

    // Goal: the trie matches like the patterns it holds, including shared prefixes and `#`.
    #[test]
    fn trie_routes_like_its_patterns() {
        let mut trie = TopicTrie::new();
        // Patterns sharing prefixes, and `#` at the start, middle and end.
        for (queue, pattern) in ["a.*", "a.#", "a.#.b", "#", "#.b", "*.*", "a.b.c"].iter().enumerate() {
            assert_eq!(trie.insert(&Pattern::compile(pattern.as_bytes()), queue as u32), Bound::Created);
        }
        assert_eq!(trie.insert(&Pattern::compile(b"a.*"), 0), Bound::Existed);
        assert_eq!(trie.len(), 7);
        assert_eq!(routed(&trie, ""), [3]);
        assert_eq!(routed(&trie, "a"), [1, 3]);
        assert_eq!(routed(&trie, "a.b"), [0, 1, 2, 3, 4, 5]);
        assert_eq!(routed(&trie, "a.b.c"), [1, 3, 6]);
        assert_eq!(routed(&trie, "x.y.b"), [3, 4]);
    }

    // Goal: binding keys that normalize alike are distinct bindings at one node, and a queue under
    // both is reported per pattern (the exchange deduplicates).
    #[test]
    fn keys_that_normalize_alike_stay_distinct_bindings() {
        let mut trie = TopicTrie::new();
        assert_eq!(trie.insert(&Pattern::compile(b"#"), 1), Bound::Created);
        assert_eq!(trie.insert(&Pattern::compile(b"#.#"), 1), Bound::Created);
        assert_eq!(trie.len(), 2);
        let mut out = Vec::new();
        assert_eq!(trie.route(b"x", &mut out), 2);
        assert_eq!(out, [1, 1]);
        let mut keys: Vec<&[u8]> = trie.bindings().map(|(key, _)| key).collect();
        keys.sort_unstable();
        assert_eq!(keys, [b"#".as_slice(), b"#.#"]);
        // Removing one keeps the other.
        assert_eq!(trie.remove(&Pattern::compile(b"#.#"), &1), Unbound::Removed);
        assert_eq!(routed(&trie, "x"), [1]);
        assert_eq!(trie.remove(&Pattern::compile(b"#.#"), &1), Unbound::NotBound);
    }

    // Goal: removing patterns prunes the trie back to the root and recycles nodes, and
    // unknown removals change nothing.
    #[test]
    fn removal_prunes_empty_nodes() {
        let mut trie = TopicTrie::new();
        let long = Pattern::compile(b"a.*.#.b.c");
        let short = Pattern::compile(b"a.*");
        trie.insert(&long, 1);
        trie.insert(&short, 2);
        let nodes_in_use = trie.nodes.len() - trie.free.len();
        // Removing what is not there: nothing happens.
        assert_eq!(trie.remove(&long, &2), Unbound::NotBound);
        assert_eq!(trie.remove(&Pattern::compile(b"a.#"), &1), Unbound::NotBound);
        assert_eq!(trie.nodes.len() - trie.free.len(), nodes_in_use);
        // Removing the long one prunes its tail but keeps `a.*`.
        assert_eq!(trie.remove(&long, &1), Unbound::Removed);
        assert_eq!(trie.nodes.len() - trie.free.len(), 3);
        assert_eq!(routed(&trie, "a.x"), [2]);
        // Removing the last leaves only the root.
        assert_eq!(trie.remove(&short, &2), Unbound::Removed);
        assert_eq!(trie.nodes.len() - trie.free.len(), 1);
        assert!(trie.nodes[0].is_empty());
        assert!(trie.is_empty());
        // Freed nodes are reused.
        let before = trie.nodes.len();
        trie.insert(&long, 1);
        assert_eq!(trie.nodes.len(), before);
    }

    // Goal: the trie agrees with matching each pattern on its own, over random binds, unbinds
    // and keys. Method: seeded xorshift; words from a tiny alphabet so that matches and shared
    // prefixes are common; the reference is a list of (pattern, queue) checked one by one.
    #[test]
    fn random_binds_agree_with_pattern_by_pattern_matching() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let pattern_words = ["a", "b", "", "*", "#"];
        let key_words = ["a", "b", ""];
        let mut trie = TopicTrie::new();
        let mut reference: Vec<(Pattern, u32)> = Vec::new();
        for step in 0..10_000 {
            let pattern_len = next(5) as usize;
            let pattern: Vec<&str> = (0..pattern_len).map(|_| pattern_words[next(5) as usize]).collect();
            let mut pattern = Pattern::compile(pattern.join(".").as_bytes());
            let mut queue = next(4) as u32;
            if next(2) == 0 {
                // Unbind, half the time something bound, so the set stays small and churns.
                if !reference.is_empty() && next(2) == 0 {
                    let (held_pattern, held_queue) = &reference[next(reference.len() as u64) as usize];
                    pattern = held_pattern.clone();
                    queue = *held_queue;
                }
                let held = reference.iter().position(|(p, q)| p.source() == pattern.source() && *q == queue);
                let expected = if held.is_some() { Unbound::Removed } else { Unbound::NotBound };
                if let Some(at) = held {
                    reference.remove(at);
                }
                assert_eq!(trie.remove(&pattern, &queue), expected, "step {step}");
            } else {
                // Bind.
                let held = reference.iter().any(|(p, q)| p.source() == pattern.source() && *q == queue);
                let expected = if held { Bound::Existed } else { Bound::Created };
                if !held {
                    reference.push((pattern.clone(), queue));
                }
                assert_eq!(trie.insert(&pattern, queue), expected, "step {step}");
            }
            assert_eq!(trie.len(), reference.len());
            // Route a few random keys both ways.
            for _ in 0..4 {
                let key_len = next(6) as usize;
                let key: Vec<&str> = (0..key_len).map(|_| key_words[next(3) as usize]).collect();
                let key = key.join(".");
                let mut expected: Vec<u32> =
                    reference.iter().filter(|(p, _)| p.matches(key.as_bytes())).map(|(_, q)| *q).collect();
                expected.sort_unstable();
                assert_eq!(routed(&trie, &key), expected, "step {step} key {key:?}");
            }
        }
        // Unbinding everything left prunes the trie back to its root.
        for (pattern, queue) in reference.drain(..) {
            assert_eq!(trie.remove(&pattern, &queue), Unbound::Removed);
        }
        assert!(trie.is_empty());
        assert_eq!(trie.nodes.len() - trie.free.len(), 1, "only the root is left");
        assert!(trie.nodes[ROOT as usize].is_empty());
    }

    // Goal: many `#` patterns against a long key stay polynomial (no path explosion).
    #[test]
    fn hash_heavy_patterns_against_a_long_key_finish_quickly() {
        let mut trie = TopicTrie::new();
        for count in 1..20u32 {
            let pattern = vec!["#.a"; count as usize].join(".") + ".b";
            trie.insert(&Pattern::compile(pattern.as_bytes()), count);
        }
        // Only `a` words: every pattern's final `b` fails, after up to 40 states were live at
        // once (the state set spilled to the heap).
        let key = vec!["a"; 2000].join(".");
        assert_eq!(routed(&trie, &key), Vec::<u32>::new());
        // Ending in `b` after enough `a`s: every pattern matches.
        let key = vec!["a"; 30].join(".") + ".b";
        assert_eq!(routed(&trie, &key), (1..20).collect::<Vec<u32>>());
        // Ending in `b` after 5 `a`s: exactly the patterns with at most 5.
        let key = ["a"; 5].join(".") + ".b";
        assert_eq!(routed(&trie, &key), (1..=5).collect::<Vec<u32>>());
    }

    // Goal: a node with more literal children than the linear limit switches to a hash map and
    // routes, removes and prunes the same.
    #[test]
    fn wide_nodes_switch_to_a_hash_map_and_keep_routing() {
        let mut trie = TopicTrie::new();
        // 20 children under the `#` node, and `*.N` for contrast.
        for index in 0..20u32 {
            trie.insert(&Pattern::compile(format!("#.w{index}").as_bytes()), index);
            trie.insert(&Pattern::compile(format!("*.w{index}").as_bytes()), 100 + index);
        }
        let hash = trie.nodes[ROOT as usize].hash.expect("`#` child");
        assert!(matches!(trie.nodes[hash as usize].words, Children::Many(_)));
        assert_eq!(routed(&trie, "x.w7"), [7, 107]);
        assert_eq!(routed(&trie, "w19"), [19]);
        // Removing half keeps the rest routable; removing all prunes to the root.
        for index in (0..20u32).step_by(2) {
            assert_eq!(trie.remove(&Pattern::compile(format!("#.w{index}").as_bytes()), &index), Unbound::Removed);
        }
        assert_eq!(routed(&trie, "x.w7"), [7, 107]);
        assert_eq!(routed(&trie, "x.w8"), [108]);
        for index in 0..20u32 {
            if index % 2 == 1 {
                trie.remove(&Pattern::compile(format!("#.w{index}").as_bytes()), &index);
            }
            trie.remove(&Pattern::compile(format!("*.w{index}").as_bytes()), &(100 + index));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.nodes.len() - trie.free.len(), 1);
    }

    // Goal: the state set deduplicates both inline and after spilling to the heap.
    #[test]
    fn state_set_deduplicates_inline_and_spilled() {
        let mut set = StateSet::default();
        // Inline: first-reached order, repeats dropped.
        for node in [3, 1, 3, 2, 1] {
            set.insert(node);
        }
        set.finish_step();
        assert_eq!(set.as_slice(), [3, 1, 2]);
        // Spilled: node order, repeats dropped at the end of the step.
        set.clear();
        for node in (0..40).rev().chain(0..40) {
            set.insert(node);
        }
        set.finish_step();
        assert_eq!(set.as_slice(), (0..40).collect::<Vec<u32>>());
        // Cleared, it is inline again.
        set.clear();
        set.insert(9);
        assert_eq!(set.as_slice(), [9]);
    }
}
