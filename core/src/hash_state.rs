//! The hasher of every hash map and set in `ringmq-core`: SipHash keyed by a process-wide seed,
//! so that iteration orders, and with them the order of a shard's outputs, depend only on the
//! seed and the inputs. The broker draws a random seed at startup (`set_seed`), which keeps
//! client-chosen names (queues, routing keys) from being crafted into collisions; the
//! deterministic simulation keeps the default seed, so one run replays exactly.
//!
//! Invariants:
//! - A map keeps the seed it was made with; `set_seed` is called before any shard is built, or
//!   not at all, so every map of a process hashes with the same seed.

use std::hash::{BuildHasher, DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The seed every `SeededState` starts its hashers with.
static SEED: AtomicU64 = AtomicU64::new(0);

/// Sets the seed of every map built from now on. Call once, before the shards are built.
pub fn set_seed(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
}

/// Builds SipHash hashers that first absorb a seed: the process's seed as it was when this state
/// was made (so a map's hashes never change under it).
#[derive(Debug, Clone, Copy)]
pub struct SeededState {
    /// The seed.
    seed: u64,
}

impl SeededState {
    /// A state with an explicit seed.
    pub fn with_seed(seed: u64) -> SeededState {
        SeededState { seed }
    }
}

impl Default for SeededState {
    /// A state with the process's seed.
    fn default() -> SeededState {
        SeededState::with_seed(SEED.load(Ordering::Relaxed))
    }
}

impl BuildHasher for SeededState {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(self.seed);
        hasher
    }
}

/// A hash map with the seeded hasher.
pub type HashMap<K, V> = std::collections::HashMap<K, V, SeededState>;
/// A hash set with the seeded hasher.
pub type HashSet<K> = std::collections::HashSet<K, SeededState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_order_and_another_seed_may_not() {
        let order = || {
            let set: HashSet<String> = (0..64).map(|i| format!("queue-{i}")).collect();
            set.into_iter().collect::<Vec<_>>()
        };
        let first = order();
        assert_eq!(first, order(), "one seed, one order");
        let hash = |seed: u64| SeededState::with_seed(seed).hash_one("orders");
        assert_ne!(hash(0), hash(0x5eed), "the seed keys the hash");
        assert_eq!(hash(0x5eed), hash(0x5eed));
    }
}
