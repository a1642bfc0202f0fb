//! Ending the broker process for what it cannot recover from: its exit statuses, `fatal`, and
//! the panic hook that turns any panic into a fatal end.
//!
//! Not here: refusing a bad option (the daemon returns `ExitStatus::Config` before anything
//! started).
//!
//! Invariants:
//! - Once a shard failed or anything panicked, the process ends with the status of the cause and
//!   one line on stderr naming the shard and the reason; no shard serves on without the others.
//! - The process ends with `_exit`: the other shard threads keep running until it does, and the
//!   atexit handlers `exit` would run (the allocator's among them) would race them.

use std::io::Write;

use ringmq_transport::shard_exit::{current_shard, panic_message};

/// The broker's exit statuses besides 0 (never: it runs until killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// A bad option or configuration, or an address it cannot listen on: nothing started.
    Config = 2,
    /// A shard's runtime failed or its loop stopped: the environment, not a bug.
    ShardFailed = 3,
    /// A shard (or any thread of the broker) panicked: a bug.
    Panicked = 4,
}

impl ExitStatus {
    /// The status as the process reports it.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Ends the process with `status` for a failure no in-process action can fix, rather than
/// leaving the other shards half alive; `reason` names the shard and what happened.
pub fn fatal(status: ExitStatus, reason: &str) -> ! {
    tracing::error!(reason, status = status.code(), "fatal");
    eprintln!("ringmq broker: fatal: {reason}");
    // What the broker printed must not be lost with the buffers `_exit` does not flush.
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` ends the process at once; it touches no memory of ours.
    unsafe { libc::_exit(i32::from(status.code())) }
}

/// Makes any panic of the process fatal (`ExitStatus::Panicked`), on top of the default report.
///
/// A hook, not a join of the shard threads: a panic in a task of a shard's loop is caught by the
/// runtime and kept for a handle nobody reads, so the thread never sees it and the shard would
/// serve on without that task. The hook runs where the panic happens, before any unwinding.
/// Not `panic = "abort"`: that ends the process by SIGABRT, with no status of its own and no line
/// naming the shard, and the deterministic simulation catches panics to report the failing seed.
pub fn exit_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The default report: thread, location, message, and a backtrace when asked for.
        default_hook(info);
        let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        let message = panic_message(info.payload());
        let reason = match current_shard() {
            Some(shard) => format!("shard {} panicked{location}: {message}", shard.0),
            None => {
                let thread = std::thread::current();
                format!("thread '{}' panicked{location}: {message}", thread.name().unwrap_or("unnamed"))
            }
        };
        fatal(ExitStatus::Panicked, &reason)
    }));
}
