//! SIGINT and SIGTERM as a flag, for commands that run until told to stop (`send --numbered`
//! without `--count`, `receive --numbered`), so they can finish cleanly: wait for outstanding
//! confirms, print their summary line.
//!
//! Call contract: `install()` once, early; then poll `requested()` between units of work.
//!
//! Invariants: the handler only stores to an atomic (async-signal-safe); after `install`, the
//! first SIGINT or SIGTERM sets the flag instead of ending the process.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the handler.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Routes SIGINT and SIGTERM to the flag.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler is async-signal-safe (one atomic store) and lives for the whole
        // program; `signal` has no other precondition.
        let previous = unsafe { libc::signal(signal, handler) };
        assert_ne!(previous, libc::SIG_ERR, "installing the handler of signal {signal}");
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}
