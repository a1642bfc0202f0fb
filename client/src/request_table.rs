//! Management requests waiting for their reply, by request id.
//!
//! A caller registers a one-shot sender and gets a fresh `RequestId`; the reader task completes it
//! when the `Ok`, `Failed` or list reply with that id arrives; a closing connection fails every
//! waiter with the same cause.
//!
//! Invariants:
//! - An id is in use by at most one waiter; ids are never reused while their waiter waits.
//! - Every registered waiter is completed exactly once: by its reply, or by `fail_all`.
//! - A waiter whose caller stopped waiting (dropped the receiver) is completed harmlessly: the
//!   reply is discarded, it is not an error of the connection.

use std::collections::HashMap;

use ringmq_core::frame::{ExchangeInfo, QueueInfo};
use ringmq_core::ids::RequestId;
use tokio::sync::oneshot;

use crate::error::ClientError;
use crate::ha_status::HaStatus;

/// What a successful request returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `Ok`.
    Done,
    /// `QueueListReply`.
    Queues(Vec<QueueInfo>),
    /// `ExchangeListReply`.
    Exchanges(Vec<ExchangeInfo>),
    /// `HaStatusReply`.
    HaStatus(HaStatus),
}

impl Reply {
    /// `Ok(())` for `Done`; a reply of another kind is a broker bug, reported to the caller.
    pub(crate) fn expect_done(self, what: &'static str) -> Result<(), ClientError> {
        match self {
            Reply::Done => Ok(()),
            other => Err(other.unexpected(what)),
        }
    }

    /// The error for a reply of the wrong kind for a `what` request.
    pub(crate) fn unexpected(&self, what: &'static str) -> ClientError {
        let got = match self {
            Reply::Done => "Ok",
            Reply::Queues(_) => "QueueListReply",
            Reply::Exchanges(_) => "ExchangeListReply",
            Reply::HaStatus(_) => "HaStatusReply",
        };
        ClientError::Protocol { reason: format!("unexpected reply to {what}: got {got}") }
    }
}

/// A reply, or why there is none.
pub(crate) type ReplyResult = Result<Reply, ClientError>;

/// A reply arrived for an id nobody registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnknownRequest(pub(crate) RequestId);

/// Waiters by request id.
#[derive(Debug, Default)]
pub(crate) struct RequestTable {
    /// The id the next registration tries first.
    next: u32,
    /// Registered waiters.
    waiters: HashMap<RequestId, oneshot::Sender<ReplyResult>>,
}

impl RequestTable {
    /// Registers a waiter; returns the id to put in the request frame.
    ///
    /// # Panics
    /// If every `u32` id is in use (four billion requests outstanding).
    pub(crate) fn register(&mut self, waiter: oneshot::Sender<ReplyResult>) -> RequestId {
        assert!(self.waiters.len() < u32::MAX as usize, "every request id is in use");
        loop {
            let id = RequestId(self.next);
            self.next = self.next.wrapping_add(1);
            if let std::collections::hash_map::Entry::Vacant(entry) = self.waiters.entry(id) {
                entry.insert(waiter);
                return id;
            }
        }
    }

    /// Completes the waiter of `id`.
    ///
    /// # Errors
    /// `UnknownRequest` when no waiter has that id.
    pub(crate) fn complete(&mut self, id: RequestId, result: ReplyResult) -> Result<(), UnknownRequest> {
        let waiter = self.waiters.remove(&id).ok_or(UnknownRequest(id))?;
        // The caller may have stopped waiting (its future was dropped); the reply is then moot.
        let _ = waiter.send(result);
        Ok(())
    }

    /// Completes every waiter with `cause`.
    pub(crate) fn fail_all(&mut self, cause: &ClientError) {
        for (_, waiter) in self.waiters.drain() {
            // As in `complete`: a caller that stopped waiting needs no error.
            let _ = waiter.send(Err(cause.clone()));
        }
    }

    /// Waiters registered and not completed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::frame::ErrorCode;

    #[test]
    fn replies_reach_their_own_waiter_in_any_order() {
        // Goal: replies are matched by id, not by arrival order.
        let mut table = RequestTable::default();
        let (first_tx, mut first_rx) = oneshot::channel();
        let (second_tx, mut second_rx) = oneshot::channel();
        let first = table.register(first_tx);
        let second = table.register(second_tx);
        assert_ne!(first, second);
        // The second is answered first.
        table.complete(second, Ok(Reply::Queues(Vec::new()))).unwrap();
        table
            .complete(first, Err(ClientError::Failed { code: ErrorCode::NotFound, message: "no queue q".into() }))
            .unwrap();
        assert_eq!(second_rx.try_recv().unwrap().unwrap(), Reply::Queues(Vec::new()));
        let err = first_rx.try_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("no queue q"), "{err}");
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_reply_for_an_unknown_id_is_reported() {
        // Goal: a stray reply is named, never silently matched to someone else.
        let mut table = RequestTable::default();
        assert_eq!(table.complete(RequestId(7), Ok(Reply::Done)), Err(UnknownRequest(RequestId(7))));
    }

    #[test]
    fn fail_all_completes_every_waiter_with_the_cause() {
        // Goal: a closing connection leaves no request hanging.
        let mut table = RequestTable::default();
        let mut receivers: Vec<_> = (0..3)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                table.register(tx);
                rx
            })
            .collect();
        // One caller gave up waiting; that is not an error.
        drop(receivers.pop());
        table.fail_all(&ClientError::ConnectionLost { reason: "reset".into() });
        for mut rx in receivers {
            assert!(rx.try_recv().unwrap().unwrap_err().to_string().contains("reset"));
        }
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn ids_in_use_are_skipped_after_wrapping() {
        // Goal: a long-lived connection never gives two waiters the same id.
        let mut table = RequestTable { next: u32::MAX, ..RequestTable::default() };
        let (tx, _rx_max) = oneshot::channel();
        assert_eq!(table.register(tx), RequestId(u32::MAX));
        let (tx, _rx_zero) = oneshot::channel();
        assert_eq!(table.register(tx), RequestId(0));
        // Wrap again onto the ids still waiting.
        table.next = u32::MAX;
        let (tx, _rx) = oneshot::channel();
        assert_eq!(table.register(tx), RequestId(1));
    }
}
