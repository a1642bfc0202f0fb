//! A cross-thread wakeup for a shard's inbox: rung by a producer shard when it pushes into a ring
//! the consumer may be sleeping on.
//!
//! The consumer announces `sleeping` before its last look at the rings, and a producer rings only
//! when it sees that announcement, so a busy shard costs its producers no wakeups at all and an
//! idle one is never missed (both sides use sequentially consistent operations).

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use atomic_waker::AtomicWaker;

/// One shard's doorbell; shared by every shard that sends to it.
#[derive(Debug, Default)]
pub struct Doorbell {
    /// The inbox task's waker.
    waker: AtomicWaker,
    /// True while the inbox task is (about to be) parked.
    sleeping: AtomicBool,
}

impl Doorbell {
    /// Consumer side: register `waker` and announce that we are about to sleep. The caller must
    /// look at its rings once more after this and call `awake` if it found work.
    pub fn prepare_sleep(&self, waker: &Waker) {
        self.waker.register(waker);
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Consumer side: we found work after all, or were woken.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Producer side: call after pushing; wakes the consumer if it was going to sleep.
    pub fn ring(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }
}
