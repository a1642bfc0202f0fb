//! Publishes that reached their queue's shard ahead of the promotion they were accepted in.
//!
//! A promotion reaches each shard as the coordinator's `ConfigChange::HaState`, on the ring from
//! shard 0; a client's publish reaches its queue's shard as a `ShardMessage::Enqueue`, on the ring
//! from the shard that accepted it. Rings from different shards have no order between them, so a
//! shard that applied a promotion (and so admits clients) may forward a publish to a shard that has
//! not. Stored there, the message would take none of the holds the promotion brings (that shard
//! has no replication yet: no expected backups, no ready quorum) and its ack could go out without
//! the backups the new primary expects; if it then died, a promoted expected backup would lack a
//! message that was acked. So each `Enqueue` names the epoch its shard had applied, and the node
//! of the queue's shard keeps one from a newer epoch than its own here, until its shard applied
//! that epoch and the node followed it (`begin_recovery` set the holders); then hands it to the
//! shard, in the order it came.
//!
//! Not here: what arrives on the ring from shard 0 behind the promotion itself is in order; the
//! node only has to follow the promotion before the next input reaches the shard
//! (`ShardNode::handle_peer`).
//!
//! Bound: none of these publishes is acked while it waits, and a producer connection has at most
//! `publish-inflight-max` publishes unacked, so this holds at most that many per producer
//! connection of the other shards, for as long as one ring runs ahead of another.
//!
//! Invariants:
//! - An enqueue is handed to the shard only once its epoch is at most the shard's (the shard
//!   asserts it where it stores it, `Shard::handle_peer`).
//! - Enqueues are handed on in the order they arrived; those from one shard keep their ring's
//!   order (a shard's epoch only rises, so a later one from it never goes before an earlier one).

use std::collections::VecDeque;

use ringmq_core::epoch::Epoch;
use ringmq_core::shard_message::ShardMessage;

/// Enqueues from an epoch the shard has not applied yet. See the module doc.
#[derive(Debug, Default)]
pub(crate) struct EarlyEnqueues {
    /// Each kept `Enqueue` with its epoch, in arrival order.
    waiting: VecDeque<(Epoch, ShardMessage)>,
    /// How many enqueues were kept (since the node was made).
    kept_total: u64,
}

/// What to do with a message from another shard.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// The shard may handle it now.
    Handle(ShardMessage),
    /// An enqueue from an epoch the shard has not applied: kept until it has.
    Kept,
}

impl EarlyEnqueues {
    /// `message` arrived while the shard has applied `applied`: an `Enqueue` from a newer epoch
    /// is kept; anything else goes to the shard now.
    pub(crate) fn handle_arrival(&mut self, message: ShardMessage, applied: Epoch) -> Arrival {
        match message {
            ShardMessage::Enqueue { epoch, .. } if epoch > applied => {
                tracing::debug!(epoch = epoch.0, applied = applied.0, "publish ahead of its promotion: kept");
                self.waiting.push_back((epoch, message));
                self.kept_total += 1;
                Arrival::Kept
            }
            message => Arrival::Handle(message),
        }
    }

    /// The kept enqueues the shard may store now that it applied `applied`, in arrival order.
    pub(crate) fn poll_due(&mut self, applied: Epoch) -> Vec<ShardMessage> {
        if self.waiting.iter().all(|(epoch, _)| *epoch > applied) {
            return Vec::new();
        }
        let (due, still): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|(epoch, _)| *epoch <= applied);
        self.waiting = still;
        due.into_iter().map(|(_, message)| message).collect()
    }

    /// How many enqueues were kept for their promotion (since the node was made).
    pub(crate) fn kept_total(&self) -> u64 {
        self.kept_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_core::ids::{ConnId, ShardId};
    use ringmq_core::shard_message::ConnRef;

    /// An empty enqueue from connection `conn` of shard 2, accepted in `epoch`.
    fn enqueue(conn: u32, epoch: u64) -> ShardMessage {
        let origin = ConnRef { shard: ShardId(2), conn: ConnId(conn) };
        ShardMessage::Enqueue { origin, epoch: Epoch(epoch), items: Vec::new() }
    }

    /// The connection of an enqueue.
    fn conn_of(message: &ShardMessage) -> u32 {
        let ShardMessage::Enqueue { origin, .. } = message else { panic!("not an enqueue: {message:?}") };
        origin.conn.0
    }

    #[test]
    fn enqueues_wait_for_their_epoch_and_leave_in_arrival_order() {
        // Goal: an enqueue from the shard's epoch or an older one goes on at once; newer ones wait
        // until the shard applied their epoch, and leave in the order they came.
        let mut early = EarlyEnqueues::default();
        // In epoch 3: epochs 3 and 1 go on; 5, 4, 5 wait.
        assert!(matches!(early.handle_arrival(enqueue(1, 3), Epoch(3)), Arrival::Handle(_)));
        assert!(matches!(early.handle_arrival(enqueue(2, 1), Epoch(3)), Arrival::Handle(_)));
        for (conn, epoch) in [(3, 5), (4, 4), (5, 5)] {
            assert!(matches!(early.handle_arrival(enqueue(conn, epoch), Epoch(3)), Arrival::Kept));
        }
        assert_eq!(early.kept_total(), 3);
        // Nothing is due in epoch 3; epoch 4 releases one, epoch 5 the rest, in order.
        assert!(early.poll_due(Epoch(3)).is_empty());
        assert_eq!(early.poll_due(Epoch(4)).iter().map(conn_of).collect::<Vec<_>>(), [4]);
        assert_eq!(early.poll_due(Epoch(5)).iter().map(conn_of).collect::<Vec<_>>(), [3, 5]);
        assert!(early.poll_due(Epoch(9)).is_empty());
        // Other messages always go on.
        let other = ShardMessage::ConfigApplied { id: 1 };
        assert!(matches!(early.handle_arrival(other, Epoch(0)), Arrival::Handle(_)));
    }
}
