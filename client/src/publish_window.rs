//! The publish window: which sequence numbers are published and not yet confirmed.
//!
//! Pure accounting, no IO: `Publisher::publish` reserves a sequence number here (and waits when
//! the window is full), the reader task releases ranges as `Confirm` frames arrive.
//!
//! Invariants:
//! - `confirmed_next <= next` and `next - confirmed_next <= window`: the broker never sees more
//!   unconfirmed publishes from this connection than the window allows.
//! - Confirms arrive in sequence order without gaps: each range starts at `confirmed_next` and
//!   ends below `next`. Anything else is the broker breaking the protocol and is refused, never
//!   applied.

use ringmq_core::ids::Seq;

/// Published-but-unconfirmed accounting of one connection.
#[derive(Debug)]
pub(crate) struct PublishWindow {
    /// Most unconfirmed publishes allowed.
    window: u64,
    /// The sequence number the next publish gets.
    next: Seq,
    /// Every sequence number below this one is confirmed.
    confirmed_next: Seq,
}

/// A confirm range the window cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConfirmRangeError {
    /// The range does not start where the previous one ended.
    #[error("confirm range must start at seq {expected}; got {first}..={last}")]
    OutOfOrder {
        /// The first unconfirmed sequence number.
        expected: u64,
        /// The range's first.
        first: u64,
        /// The range's last.
        last: u64,
    },
    /// The range ends before it starts.
    #[error("confirm range must have first <= last; got {first}..={last}")]
    Inverted {
        /// The range's first.
        first: u64,
        /// The range's last.
        last: u64,
    },
    /// The range names sequence numbers that were never published.
    #[error("confirm range must end below the next unpublished seq {next}; got ..={last}")]
    Unpublished {
        /// The next unpublished sequence number.
        next: u64,
        /// The range's last.
        last: u64,
    },
}

impl PublishWindow {
    /// A window allowing `window` unconfirmed publishes, starting at seq 0.
    ///
    /// # Panics
    /// If `window` is 0: the options check rules that out.
    pub(crate) fn new(window: u64) -> PublishWindow {
        assert!(window > 0, "publish window must be positive");
        PublishWindow { window, next: Seq(0), confirmed_next: Seq(0) }
    }

    /// Takes the next sequence number, or `None` when the window is full.
    pub(crate) fn try_reserve(&mut self) -> Option<Seq> {
        if self.inflight() >= self.window {
            return None;
        }
        let seq = self.next;
        self.next = seq.next();
        assert!(self.inflight() <= self.window);
        Some(seq)
    }

    /// Releases the confirmed range `first..=last`; returns how many publishes it released.
    ///
    /// # Errors
    /// `ConfirmRangeError` when the range is not the next one in sequence order; nothing is
    /// released then.
    pub(crate) fn handle_confirm(&mut self, first: Seq, last: Seq) -> Result<u64, ConfirmRangeError> {
        if last < first {
            return Err(ConfirmRangeError::Inverted { first: first.0, last: last.0 });
        }
        if first != self.confirmed_next {
            return Err(ConfirmRangeError::OutOfOrder {
                expected: self.confirmed_next.0,
                first: first.0,
                last: last.0,
            });
        }
        if last >= self.next {
            return Err(ConfirmRangeError::Unpublished { next: self.next.0, last: last.0 });
        }
        self.confirmed_next = last.next();
        assert!(self.confirmed_next <= self.next);
        Ok(last.0 - first.0 + 1)
    }

    /// Publishes sent (or being sent) and not yet confirmed.
    pub(crate) fn inflight(&self) -> u64 {
        self.next.0 - self.confirmed_next.0
    }

    /// The sequence number the next publish gets.
    pub(crate) fn next(&self) -> Seq {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_window_refuses_until_a_confirm_releases_room() {
        // Goal: publish waits exactly when `window` publishes are unconfirmed.
        let mut window = PublishWindow::new(3);
        // Three reservations fit, in order.
        assert_eq!(window.try_reserve(), Some(Seq(0)));
        assert_eq!(window.try_reserve(), Some(Seq(1)));
        assert_eq!(window.try_reserve(), Some(Seq(2)));
        // The fourth does not.
        assert_eq!(window.try_reserve(), None);
        assert_eq!(window.inflight(), 3);
        // Confirming 0..=1 makes room for two more.
        assert_eq!(window.handle_confirm(Seq(0), Seq(1)), Ok(2));
        assert_eq!(window.try_reserve(), Some(Seq(3)));
        assert_eq!(window.try_reserve(), Some(Seq(4)));
        assert_eq!(window.try_reserve(), None);
    }

    #[test]
    fn confirms_out_of_order_or_for_unpublished_seqs_are_refused() {
        // Goal: a broker bug never corrupts the accounting; each bad range names what came.
        let mut window = PublishWindow::new(10);
        for _ in 0..4 {
            window.try_reserve().unwrap();
        }
        // A gap: 0 is not confirmed yet.
        assert_eq!(
            window.handle_confirm(Seq(1), Seq(2)),
            Err(ConfirmRangeError::OutOfOrder { expected: 0, first: 1, last: 2 })
        );
        // Beyond what was published.
        assert_eq!(window.handle_confirm(Seq(0), Seq(4)), Err(ConfirmRangeError::Unpublished { next: 4, last: 4 }));
        // Inverted.
        assert_eq!(window.handle_confirm(Seq(2), Seq(1)), Err(ConfirmRangeError::Inverted { first: 2, last: 1 }));
        // Nothing was released by the refusals.
        assert_eq!(window.inflight(), 4);
        // A confirmed range cannot be confirmed twice.
        assert_eq!(window.handle_confirm(Seq(0), Seq(3)), Ok(4));
        assert!(window.handle_confirm(Seq(0), Seq(0)).is_err());
        assert_eq!(window.inflight(), 0);
    }
}
