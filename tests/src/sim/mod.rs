//! A deterministic simulation of ringmq's HA protocol: N brokers' real state machines (each
//! shard a `ringmq_ha::node::shard_node::ShardNode` owning a `ringmq_core::shard::Shard`) in one thread,
//! with a simulated clock, network, clients and cluster manager, seeded faults, and invariants
//! checked after every step.
//!
//! One `u64` seed decides everything: the cluster's shape and settings, the fault mix (swarm
//! testing), every latency, every fault, the clients' behaviour. The same seed gives the same
//! trace and the same trace hash; a failure prints the seed, what broke and the last events.
//!
//! Layout (one concept per file):
//! - `rng`: the seeded ChaCha8 generator.
//! - `clock`: simulated time and each broker's clock (offsets from clock jumps).
//! - `event`: the agenda of future events.
//! - `network`: connections as ordered byte pipes; latency, partitions, resets, frame faults.
//! - `faults`: the seed's fault mix.
//! - `node`: the driver the simulator runs (`ShardNode`).
//! - `broker`: one broker: its nodes, clock, pause and crash state, connection bookkeeping.
//! - `client`: the numbered producer and the consumer, speaking the native protocol.
//! - `cluster_manager`: promotes a ready backup when no primary is alive.
//! - `invariants`: the oracle and every check.
//! - `trace`: the trace's lines, hash and tail.
//! - `runner`: one run: phases, steps, carrying outputs out.
//!
//! Not here: a model of the protocol. Everything a broker does is the real code; the simulator
//! only carries bytes, time and messages between shards, as the real transport does.
//!
//! Invariants:
//! - Nothing but the seed decides a run: no wall clock, no thread, no iteration over a hash map
//!   in the simulator itself.

pub mod broker;
pub mod client;
pub mod clock;
pub mod cluster_manager;
pub mod event;
pub mod faults;
pub mod invariants;
pub mod network;
pub mod node;
pub mod rng;
pub mod runner;
pub mod trace;

pub use client::{QUEUE, QUEUE_SHARD_1};
pub use runner::{run, run_seed, Failure, Outcome, SimConfig};
