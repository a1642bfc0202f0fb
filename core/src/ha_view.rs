//! What one shard knows of the broker's HA state, and the admission rules that follow from it.
//!
//! The broker's HA state (`broker_state::BrokerState`) is owned by the configuration coordinator
//! (shard 0, `config_coordinator`): it alone decides a promotion and takes the epoch for it. It
//! then broadcasts the new state as a `ConfigChange::HaState`, which every shard applies in the
//! coordinator's order, exactly like a queue or exchange change; the promoter's `Ok` goes out only
//! once every shard has applied it. Each shard keeps its copy here and decides on its own, without
//! a round trip, whether a connection is admitted and whether a request may change a replicated
//! object.
//!
//! Why this lives in `ringmq-core` and not in `ringmq-ha`: dependencies point one way,
//! `transport -> ha -> core`, and the coordinator that owns the state is in core. So the state
//! table (`broker_state`) and the epoch clock (`epoch`) moved here from `ringmq-ha`, which
//! re-exports them unchanged; core never depends on ha. The broker URLs are parsed and validated
//! by the broker with `ringmq_ha::url::BrokerUrl` and reach the shards as their canonical text
//! (credentials hidden), which is all a shard needs: it shows them, it does not dial them.
//!
//! Admission rules (our HA issue; the reference only warned on writes to a backup, we refuse):
//! - a backup (joining, catchup, ready) answers a connection that is not an admin connection
//!   (preamble flag `PREAMBLE_FLAG_ADMIN`) with an `Error` of code `NotPrimary`, then closes it;
//! - on a backup, an admin connection is served for reading (queue and exchange lists, HA status,
//!   passive declares), and every request that would change a replicated object (declare,
//!   delete, bind, unbind, purge, publish, subscribe) is refused with `NotPrimary` and a reason;
//! - a primary (recovering, active) and a standalone broker serve every client and admin;
//! - a backup link (preamble flag `PREAMBLE_FLAG_BACKUP`, opened by a backup looking for its
//!   primary) is not a client: it is served only by a primary (recovering, active); a backup and a
//!   standalone broker answer it with an `Error` of code `NotPrimary` and close it, so the backup
//!   moves on to the next address of its `ha-brokers-url`.
//!
//! Not here: replication, membership, heartbeats, recovering mode's expected backups (there are
//! none until replication exists, so a promoted broker goes recovering -> active at once).
//!
//! Invariants:
//! - `state` only changes through `handle_change`, and only along a row of the state table
//!   (asserted: the coordinator checked it before broadcasting, so a failure here is a bug).
//! - `epoch` is 0 until the broker is promoted, then the epoch of its latest promotion; it only
//!   rises (a broker that stepped down may be promoted again, in a newer epoch).

use crate::broker_state::{transition, BrokerState, TransitionCause};
use crate::epoch::Epoch;
use crate::frame::{Frame, ReadySet};
use crate::ids::RequestId;
use crate::replication_level::ReplicationLevel;

/// The HA options a shard needs, validated by the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaSettings {
    /// `ha-cluster`: the broker is a member of an HA cluster (it starts `joining`).
    pub cluster: bool,
    /// `ha-brokers-url` in canonical form with credentials hidden; empty when unset.
    pub brokers_url: String,
    /// `ha-public-url` in canonical form with credentials hidden; empty when unset.
    pub public_url: String,
    /// `ha-replicate`: the replication level of queues and exchanges declared without a
    /// `qpid.replicate` argument (see `replication_level`).
    pub replicate: ReplicationLevel,
    /// This broker's place in `ha-brokers-url`, from 0: promotions of different members take
    /// different epochs (`epoch::EPOCH_MEMBER_SLOTS`).
    pub member: u16,
    /// This broker's own address as ready sets name it (`host:port`, the address it listens on
    /// and announces in its links); empty outside a cluster.
    pub name: String,
}

/// One shard's copy of the broker's HA state.
#[derive(Debug, Clone)]
pub struct HaView {
    /// The options.
    settings: HaSettings,
    /// The broker's state, as last broadcast by the coordinator.
    state: BrokerState,
    /// The epoch of this broker's promotion; `Epoch(0)` before it.
    epoch: Epoch,
    /// On a backup: the address (`host:port` of `ha-brokers-url`) of the primary its link on this
    /// shard was last accepted by, named in the refusal a client gets; `None` before any.
    primary_followed: Option<String>,
    /// Shard 0: the newest ready set this broker knows (its own as a primary, its primary's as a
    /// backup), shown by `HaStatusReply`.
    ready_set: ReadySet,
    /// Shard 0: a promotion check fenced this broker (`HaFence`) when the newest epoch it had seen
    /// was this one: it tells no primary of this epoch or older that it holds a ready set.
    fenced: Epoch,
}

/// What a connection announced itself as in its preamble flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// No flag: a client.
    Client,
    /// `PREAMBLE_FLAG_ADMIN`: an administrative connection.
    Admin,
    /// `PREAMBLE_FLAG_BACKUP`: a backup's link to what it hopes is the primary (this flag wins
    /// over the admin flag).
    BackupLink,
}

impl ConnectionKind {
    /// The kind a preamble's flags announce.
    pub fn from_flags(flags: u16) -> ConnectionKind {
        if flags & crate::frame::PREAMBLE_FLAG_BACKUP != 0 {
            ConnectionKind::BackupLink
        } else if flags & crate::frame::PREAMBLE_FLAG_ADMIN != 0 {
            ConnectionKind::Admin
        } else {
            ConnectionKind::Client
        }
    }
}

/// Whether a new connection is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Serve it.
    Served,
    /// Answer with an `Error` of code `NotPrimary` carrying this message, then close it.
    RefusedNotPrimary {
        /// Why, for the client.
        message: String,
    },
}

impl HaView {
    /// The state a broker starts in: `joining` with `ha-cluster`, else `standalone`.
    pub fn new(settings: HaSettings) -> HaView {
        let state = initial_state(&settings);
        HaView {
            settings,
            state,
            epoch: Epoch(0),
            primary_followed: None,
            ready_set: ReadySet::default(),
            fenced: Epoch(0),
        }
    }

    /// The broker's HA state.
    pub fn state(&self) -> BrokerState {
        self.state
    }

    /// The epoch of this broker's promotion (`Epoch(0)` before it).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Whether a connection of `kind` that sent its preamble is served.
    pub fn admission(&self, kind: ConnectionKind) -> Admission {
        if kind == ConnectionKind::BackupLink {
            if self.state.is_primary() && self.state != BrokerState::Standalone {
                return Admission::Served;
            }
            let message = format!(
                "not primary: this broker is in HA state {} and accepts backup links only as the primary",
                self.state
            );
            return Admission::RefusedNotPrimary { message };
        }
        if kind == ConnectionKind::Admin || !self.state.is_backup() {
            return Admission::Served;
        }
        let mut message = format!(
            "not primary: this broker is an HA backup in state {} and serves only admin connections \
             (--ha-admin)",
            self.state
        );
        // `ha-public-url` first: it is the cluster's own word on where clients go. Without it, the
        // primary this backup follows, in the same form, so that clients move on to it at once.
        match (&self.settings.public_url, &self.primary_followed) {
            (url, _) if !url.is_empty() => message.push_str(&format!("; connect to the cluster at {url}")),
            (_, Some(primary)) => {
                message.push_str(&format!("; connect to the cluster at {primary} (the primary this backup follows)"))
            }
            (_, None) => message.push_str("; connect to the cluster's primary"),
        }
        Admission::RefusedNotPrimary { message }
    }

    /// A backup's link was accepted by the primary at `address` (`host:port`); refusals name it
    /// until another primary accepts a link.
    pub fn set_primary_followed(&mut self, address: &str) {
        if self.primary_followed.as_deref() != Some(address) {
            self.primary_followed = Some(address.to_string());
        }
    }

    /// `Some(reason)` when this broker is a backup, so `what` (a frame name such as
    /// `queue-declare`) would change a replicated object and must be refused with `NotPrimary`.
    pub fn refusal(&self, what: &str) -> Option<String> {
        self.state.is_backup().then(|| {
            format!(
                "not primary: this broker is an HA backup in state {}; {what} changes replicated state and \
                 is served only by the primary",
                self.state
            )
        })
    }

    /// The reply to `HaStatus` and `HaFence` (answered by shard 0, which holds the ready set).
    pub fn status_reply(&self, request: RequestId) -> Frame {
        Frame::HaStatusReply {
            request,
            state: self.state.name().to_string(),
            epoch: self.epoch.0,
            brokers_url: self.settings.brokers_url.clone(),
            public_url: self.settings.public_url.clone(),
            name: self.settings.name.clone(),
            ready_set: self.ready_set.clone(),
        }
    }

    /// Shard 0: the newest ready set this broker knows.
    pub fn ready_set(&self) -> &ReadySet {
        &self.ready_set
    }

    /// This broker's own address as ready sets name it.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Shard 0: the newest ready set this broker knows changed to `set`.
    pub fn set_ready_set(&mut self, set: ReadySet) {
        self.ready_set = set;
    }

    /// Shard 0: a promotion check fenced this broker while `highest` was the newest epoch it had
    /// seen (fences only add up).
    pub fn fence(&mut self, highest: Epoch) {
        self.fenced = self.fenced.max(highest);
    }

    /// Shard 0: whether this backup may tell its primary, of `epoch`, that it holds a ready set:
    /// only when no promotion check fenced it since it saw that epoch.
    pub fn acknowledges_ready_sets_of(&self, epoch: Epoch) -> bool {
        epoch > self.fenced
    }

    /// Applies a state change broadcast by the coordinator.
    ///
    /// # Panics
    /// If the change is not a row of the state table, or if it changes the epoch of a promoted
    /// broker: the coordinator checked both before broadcasting, so either is a bug.
    pub fn handle_change(&mut self, state: BrokerState, epoch: Epoch, cause: TransitionCause) {
        let from = self.state;
        self.state = transition(from, state, cause).unwrap_or_else(|error| panic!("broadcast HA change: {error}"));
        if self.epoch != epoch {
            assert!(epoch > self.epoch, "a broker's epoch went back from {} to {epoch}", self.epoch);
            self.epoch = epoch;
        }
        assert!(self.state.is_backup() || self.epoch > Epoch(0) || self.state == BrokerState::Standalone);
    }
}

/// The state a broker with these settings starts in.
pub fn initial_state(settings: &HaSettings) -> BrokerState {
    if settings.cluster {
        // Taken through the table, so the start is a row like every other step.
        transition(BrokerState::Standalone, BrokerState::Joining, TransitionCause::HaClusterEnabled)
            .expect("standalone -> joining is in the table")
    } else {
        BrokerState::Standalone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(public_url: &str) -> HaView {
        HaView::new(HaSettings {
            cluster: true,
            brokers_url: "amqp:tcp:127.0.0.1:1,tcp:127.0.0.1:2".into(),
            public_url: public_url.into(),
            replicate: ReplicationLevel::None,
            member: 0,
            name: "127.0.0.1:1".into(),
        })
    }

    #[test]
    fn a_fence_stops_ready_set_acknowledgements_up_to_the_epoch_it_saw() {
        // Goal: a fenced backup tells no primary of the fenced epoch or older that it holds a
        // ready set; a newer primary's sets are acknowledged again; fences never go back.
        let mut view = cluster("");
        assert!(view.acknowledges_ready_sets_of(Epoch(1)));
        view.fence(Epoch(3));
        assert!(!view.acknowledges_ready_sets_of(Epoch(3)));
        assert!(!view.acknowledges_ready_sets_of(Epoch(2)));
        assert!(view.acknowledges_ready_sets_of(Epoch(4)));
        view.fence(Epoch(2));
        assert!(!view.acknowledges_ready_sets_of(Epoch(3)));
    }

    #[test]
    fn a_backup_refuses_clients_and_serves_admins() {
        // Goal: the admission rule of the module doc. Method: ask a joining view, then promote it.
        let mut view = cluster("amqp:tcp:vip:5672");
        assert_eq!(view.state(), BrokerState::Joining);
        assert_eq!(view.admission(ConnectionKind::Admin), Admission::Served);
        let Admission::RefusedNotPrimary { message } = view.admission(ConnectionKind::Client) else {
            panic!("served a client")
        };
        assert!(message.contains("backup in state joining"), "{message}");
        assert!(message.contains("amqp:tcp:vip:5672"), "{message}");
        assert!(view.refusal("queue-declare").is_some_and(|r| r.contains("queue-declare")));
        // Promoted: everyone is served, nothing is refused.
        view.handle_change(BrokerState::Recovering, Epoch(1), TransitionCause::Promoted);
        view.handle_change(BrokerState::Active, Epoch(1), TransitionCause::ExpectedBackupsSettled);
        assert_eq!(view.admission(ConnectionKind::Client), Admission::Served);
        assert_eq!(view.refusal("publish"), None);
        assert_eq!(view.epoch(), Epoch(1));
    }

    #[test]
    fn a_backups_refusal_names_where_clients_go() {
        // Goal: a refused client learns where to go: `ha-public-url` when set, else the primary
        // this backup follows once a link of it was accepted, else only that it should find the
        // primary. Method: refusals of views with and without a public URL, before and after
        // `set_primary_followed`.
        let refusal = |view: &HaView| match view.admission(ConnectionKind::Client) {
            Admission::RefusedNotPrimary { message } => message,
            Admission::Served => panic!("a backup served a client"),
        };
        let mut bare = cluster("");
        assert!(refusal(&bare).ends_with("; connect to the cluster's primary"), "{}", refusal(&bare));
        bare.set_primary_followed("10.0.0.7:5672");
        let message = refusal(&bare);
        assert!(
            message.ends_with("; connect to the cluster at 10.0.0.7:5672 (the primary this backup follows)"),
            "{message}"
        );
        let mut public = cluster("amqp:tcp:vip:5672");
        public.set_primary_followed("10.0.0.7:5672");
        let message = refusal(&public);
        assert!(message.ends_with("; connect to the cluster at amqp:tcp:vip:5672"), "{message}");
        assert!(!message.contains("10.0.0.7"), "{message}");
    }

    #[test]
    fn a_standalone_broker_serves_everyone() {
        // Goal: without ha-cluster nothing changes for clients. Method: ask a default view.
        let view = HaView::new(HaSettings::default());
        assert_eq!(view.state(), BrokerState::Standalone);
        assert_eq!(view.admission(ConnectionKind::Client), Admission::Served);
        assert_eq!(view.refusal("queue-declare"), None);
    }

    #[test]
    fn only_a_primary_accepts_a_backup_link() {
        // Goal: a backup link is let in by a recovering or active primary only; a backup and a
        // standalone broker refuse it with NotPrimary. Method: ask standalone, joining, then
        // promote through recovering to active.
        let refused =
            |view: &HaView| matches!(view.admission(ConnectionKind::BackupLink), Admission::RefusedNotPrimary { .. });
        assert!(refused(&HaView::new(HaSettings::default())));
        let mut view = cluster("");
        let Admission::RefusedNotPrimary { message } = view.admission(ConnectionKind::BackupLink) else {
            panic!("a joining backup served a backup link")
        };
        assert!(message.contains("HA state joining"), "{message}");
        view.handle_change(BrokerState::Recovering, Epoch(1), TransitionCause::Promoted);
        assert_eq!(view.admission(ConnectionKind::BackupLink), Admission::Served);
        view.handle_change(BrokerState::Active, Epoch(1), TransitionCause::ExpectedBackupsSettled);
        assert_eq!(view.admission(ConnectionKind::BackupLink), Admission::Served);
        // The backup flag wins over the admin flag.
        let both = crate::frame::PREAMBLE_FLAG_ADMIN | crate::frame::PREAMBLE_FLAG_BACKUP;
        assert_eq!(ConnectionKind::from_flags(both), ConnectionKind::BackupLink);
        assert_eq!(ConnectionKind::from_flags(crate::frame::PREAMBLE_FLAG_ADMIN), ConnectionKind::Admin);
        assert_eq!(ConnectionKind::from_flags(0), ConnectionKind::Client);
    }

    #[test]
    #[should_panic(expected = "illegal HA state transition")]
    fn an_illegal_broadcast_change_is_a_bug() {
        // Goal: a change off the table cannot be applied silently. Method: joining -> active.
        cluster("").handle_change(BrokerState::Active, Epoch(1), TransitionCause::ExpectedBackupsSettled);
    }
}
