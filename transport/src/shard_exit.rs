//! How a shard thread ended, told to the thread that started the shards, and which shard the
//! current thread runs.
//!
//! A shard thread ends only on a failure: its loop serves until the process ends. Each thread
//! catches its own unwind and reports its end over one channel, so the starter learns of the
//! first shard to end, whichever it is. Joining the threads in order did not: a failed shard 1
//! went unnoticed while shard 0 served, and the broker ran half-alive.
//!
//! A panic in a task of a shard's loop (a reader, the inbox, the timer) does not reach the
//! thread: the runtime (compio) catches it and keeps it for the task's handle, which nobody reads
//! for a detached task. Only a panic hook sees those; `current_shard` lets one name the shard.
//!
//! Invariants:
//! - Every shard thread that started reports exactly one `ShardExit`, as the last thing it does.
//! - `current_shard` is `Some` exactly on a shard's thread.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::io;

use ringmq_core::ids::ShardId;

/// One shard thread's end.
#[derive(Debug)]
pub struct ShardExit {
    /// The shard whose thread ended.
    pub shard: ShardId,
    /// Why it ended.
    pub cause: ShardExitCause,
}

/// Why a shard thread ended.
#[derive(Debug)]
pub enum ShardExitCause {
    /// Its loop returned without an error (it never should).
    Stopped,
    /// Its runtime could not be built or its listener registered: the environment, not a bug.
    RuntimeFailed(io::Error),
    /// Its thread panicked, with the panic's message.
    Panicked(String),
}

impl fmt::Display for ShardExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shard = self.shard.0;
        match &self.cause {
            ShardExitCause::Stopped => write!(f, "shard {shard} stopped"),
            ShardExitCause::RuntimeFailed(error) => write!(f, "shard {shard}'s runtime failed: {error}"),
            ShardExitCause::Panicked(message) => write!(f, "shard {shard} panicked: {message}"),
        }
    }
}

/// The shard the current thread runs, if it is a shard's thread.
pub fn current_shard() -> Option<ShardId> {
    CURRENT_SHARD.get()
}

/// The text of a panic's payload: its message when it has one (`panic!` with a literal or a
/// format), a placeholder otherwise.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        return (*message).to_string();
    }
    if let Some(message) = payload.downcast_ref::<String>() {
        return message.clone();
    }
    "a panic without a message".to_string()
}

/// Marks the current thread as shard `shard`'s.
pub(crate) fn enter_shard(shard: ShardId) {
    CURRENT_SHARD.set(Some(shard));
}

thread_local! {
    /// The shard this thread runs; set once, when its thread starts.
    static CURRENT_SHARD: Cell<Option<ShardId>> = const { Cell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_message_is_read_from_either_payload_type() {
        // Goal: the report names the reason whether the panic had a literal or a formatted
        // message. Method: catch both kinds, and one with a payload of another type.
        let literal = std::panic::catch_unwind(|| panic!("literal")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "literal");
        let shard = 1;
        let formatted = std::panic::catch_unwind(|| panic!("shard {shard}")).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "shard 1");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "a panic without a message");
    }

    #[test]
    fn only_a_shard_thread_has_a_current_shard() {
        // Goal: a panic hook can tell a shard's thread from any other.
        assert_eq!(current_shard(), None);
        let on_shard = std::thread::spawn(|| {
            enter_shard(ShardId(3));
            current_shard()
        });
        assert_eq!(on_shard.join().unwrap(), Some(ShardId(3)));
        assert_eq!(current_shard(), None);
    }
}
