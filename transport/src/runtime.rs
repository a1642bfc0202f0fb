//! Starts the broker's shards: one OS thread per shard, pinned to its core, each running its own
//! io_uring runtime and its own `Shard`; and tells the starter when the first of them ends.
//!
//! Invariants:
//! - Each shard thread reports its end exactly once (`shard_exit`), panic included, so
//!   `RunningBroker::wait` returns as soon as any shard ends, whichever it is.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use ringmq_core::ids::ShardId;
use ringmq_core::shard::{Shard, ShardConfig};
use ringmq_ha::node::shard_node::NodeConfig;

use crate::listener::bind_shared;
use crate::shard_control::ShardControls;
use crate::shard_exit::{enter_shard, panic_message, ShardExit, ShardExitCause};
use crate::shard_loop::run_shard;
use crate::shard_ring::ShardRings;

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The address every shard listens on.
    pub listen: SocketAddr,
    /// Pin shard `i` to CPU `i % cpus` (on by default; off when sharing a small machine).
    pub pin_cores: bool,
    /// io_uring submission queue entries per shard.
    pub ring_entries: u32,
    /// The HA settings of every shard: heartbeats, the cluster's other brokers.
    pub link: NodeConfig,
    /// Test fault trigger: this shard panics in a task of its loop as soon as it runs, to test
    /// that a broker never runs on with a shard gone. `None` outside such tests.
    pub panic_shard: Option<ShardId>,
}

/// A running broker: its address and the ends of its shard threads.
pub struct RunningBroker {
    /// The bound address (the real port when 0 was asked for).
    pub local_addr: SocketAddr,
    /// Where every shard thread reports its end; a thread ends only on a failure.
    exits: mpsc::Receiver<ShardExit>,
}

impl RunningBroker {
    /// Blocks until the first shard thread ends, and tells which and why. `None` only if every
    /// thread ended without a report, which `shard_exit`'s invariant rules out.
    pub fn wait(&self) -> Option<ShardExit> {
        self.exits.recv().ok()
    }
}

/// Binds the listeners and starts every shard.
///
/// # Errors
/// Binding the address failed; nothing was started.
pub fn start(transport: &TransportConfig, shard_config: ShardConfig) -> io::Result<RunningBroker> {
    disable_transparent_huge_pages();
    let count = shard_config.shard_count;
    let listeners = bind_shared(transport.listen, count)?;
    let local_addr = listeners[0].local_addr()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (report, exits) = mpsc::channel();
    let mesh = ShardRings::mesh(count);
    let controls = ShardControls::new(mesh[0].doorbells.clone());
    for ((index, listener), rings) in listeners.into_iter().enumerate().zip(mesh) {
        let id = ShardId(index as u16);
        let shard = Shard::new(id, shard_config.clone());
        let pin = transport.pin_cores.then_some(index % cpus);
        let ring_entries = transport.ring_entries;
        let link = transport.link.clone();
        let controls = controls.clone();
        let panics = transport.panic_shard == Some(id);
        let report = report.clone();
        std::thread::Builder::new().name(format!("ringmq-shard-{index}")).spawn(move || {
            enter_shard(id);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let mut builder = compio::runtime::RuntimeBuilder::new();
                if let Some(cpu) = pin {
                    builder.thread_affinity(HashSet::from([cpu]));
                }
                let mut proactor = compio::driver::ProactorBuilder::new();
                proactor.capacity(ring_entries);
                builder.with_proactor(proactor);
                let runtime = builder.build()?;
                runtime.block_on(run_shard(shard, rings, listener, link, controls, panics))
            }));
            let cause = match outcome {
                Ok(Ok(())) => ShardExitCause::Stopped,
                Ok(Err(error)) => ShardExitCause::RuntimeFailed(error),
                Err(payload) => ShardExitCause::Panicked(panic_message(payload.as_ref())),
            };
            // The starter may have stopped listening (it ends the process on the first report).
            let _ = report.send(ShardExit { shard: id, cause });
        })?;
    }
    Ok(RunningBroker { local_addr, exits })
}

/// Turns transparent huge pages off for this process.
///
/// Queued messages keep their read buffers, so a filling queue is a steady stream of fresh
/// allocations. With THP (the allocator asks for it), every first touch of a 2 MiB region
/// faults in and zeroes a whole huge page; storing 1 KiB messages into a queue without
/// consumers ran at 164,000 msg/s with 83 % of the broker's time in `clear_page_erms`, and at
/// 543,000 msg/s with THP off (see tuning.md). Failure only costs that speed, so it is logged.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "could not disable transparent huge pages");
    }
}
