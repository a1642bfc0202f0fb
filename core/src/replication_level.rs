//! How much of a queue, exchange or binding is replicated to the backups, and how that is decided.
//!
//! A level is `none`, `configuration` (the object's existence, not its messages) or `all` (the
//! object and, for a queue, every enqueue and dequeue). The broker option `ha-replicate` gives the
//! default. A queue or exchange declare may override it with the argument `qpid.replicate`, also
//! accepted as `replicate` (our issue), taking the same values.
//!
//! The rules, from the reference and our issue:
//! - the argument, when given, wins, whatever the default and whatever the queue's kind;
//! - a temporary queue (exclusive *and* auto-delete) is not replicated unless the argument is given;
//!   an exclusive-only or auto-delete-only queue follows the default (the reference's
//!   `test_auto_delete_exclusive`; it also excludes queues with an auto-delete timeout, which
//!   ringmq does not have);
//! - an invalid value is an error at declare, not a silent default;
//! - two occurrences that disagree (`qpid.replicate=all` and `replicate=none`, or the same name
//!   twice) are an error: we cannot know which one the client meant;
//! - the built-in exchanges (the default exchange `""` and every `amq.*` name) are never
//!   replicated, so bindings to them are not either; the backups have their own built-ins;
//! - a binding is replicated only if both its exchange and its queue are replicated at all
//!   (`configuration` or `all`).
//!
//! Not here: stamping the effective level into the object's arguments so that backups trust the
//! stamp instead of re-deriving it (the reference does that in `Primary::queueCreate`), and the
//! reference's per-binding `qpid.replicate` that can disable one binding; both come with the
//! primary's configuration replication.
//!
//! Invariants:
//! - `effective_level` and `exchange_level` are pure: the same inputs give the same level.
//! - `replicates_messages()` implies `replicates_configuration()`.
//! - `name` and `FromStr` are inverse: lower case, no aliases.

use std::fmt;
use std::str::FromStr;

use crate::model::routing_table::{DEFAULT_EXCHANGE, RESERVED_PREFIX};

/// How much of an object is replicated. Ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReplicationLevel {
    /// Not replicated: backups do not have it.
    None,
    /// Its existence (and for a queue its options and bindings) is replicated; its messages are not.
    Configuration,
    /// The object and its messages: every enqueue and dequeue, in order.
    All,
}

/// A level name that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replication level must be one of none, configuration, all; got '{got}'")]
pub struct UnknownLevel {
    /// The text that was given.
    pub got: String,
}

/// Declare arguments that do not give one valid replication level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// The argument's value is not a level.
    #[error("argument {argument}: replication level must be one of none, configuration, all; got '{got}'")]
    Invalid {
        /// The argument's name as given (`qpid.replicate` or `replicate`).
        argument: &'static str,
        /// Its value.
        got: String,
    },
    /// Two occurrences give different levels.
    #[error(
        "arguments disagree on the replication level: {first_argument}={first} but \
         {second_argument}={second}; give it once"
    )]
    Conflict {
        /// The name of the first occurrence.
        first_argument: &'static str,
        /// The level it gives.
        first: ReplicationLevel,
        /// The name of the first occurrence that disagrees with it.
        second_argument: &'static str,
        /// The level that one gives.
        second: ReplicationLevel,
    },
}

/// The level a new queue gets: its `qpid.replicate` (or `replicate`) argument if given; otherwise
/// `none` for a temporary queue (`exclusive` and `auto_delete`); otherwise `default`.
///
/// # Errors
/// `LevelError::Invalid` for a value that is not a level; `LevelError::Conflict` when two
/// occurrences of the argument disagree.
pub fn effective_level(
    default: ReplicationLevel,
    arguments: &[(String, String)],
    exclusive: bool,
    auto_delete: bool,
) -> Result<ReplicationLevel, LevelError> {
    let temporary = exclusive && auto_delete;
    Ok(match explicit_level(arguments)? {
        Some(level) => level,
        None if temporary => ReplicationLevel::None,
        None => default,
    })
}

/// The level an exchange gets: `none` for a built-in one (`""` and `amq.*`); otherwise its
/// argument if given, else `default`.
///
/// # Errors
/// As `effective_level`; the arguments are checked even for a built-in name, so a bad value is
/// never accepted silently.
pub fn exchange_level(
    default: ReplicationLevel,
    name: &str,
    arguments: &[(String, String)],
) -> Result<ReplicationLevel, LevelError> {
    let explicit = explicit_level(arguments)?;
    if is_builtin_exchange(name) {
        return Ok(ReplicationLevel::None);
    }
    Ok(explicit.unwrap_or(default))
}

/// The level the arguments give explicitly, if they give one.
///
/// # Errors
/// As `effective_level`.
pub fn explicit_level(arguments: &[(String, String)]) -> Result<Option<ReplicationLevel>, LevelError> {
    let mut found: Option<(&'static str, ReplicationLevel)> = None;
    for (name, value) in arguments {
        let Some(argument) = ARGUMENT_NAMES.into_iter().find(|&argument| argument == name) else {
            continue;
        };
        let level: ReplicationLevel =
            value.parse().map_err(|_| LevelError::Invalid { argument, got: value.clone() })?;
        match found {
            None => found = Some((argument, level)),
            Some((first_argument, first)) if first != level => {
                return Err(LevelError::Conflict { first_argument, first, second_argument: argument, second: level });
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(_, level)| level))
}

/// True when a binding between an exchange and a queue of these levels is replicated: both ends
/// must be replicated at all.
pub fn binding_replicated(exchange_level: ReplicationLevel, queue_level: ReplicationLevel) -> bool {
    exchange_level.replicates_configuration() && queue_level.replicates_configuration()
}

/// True for the built-in exchanges, which are never replicated: the default exchange `""` and
/// every name under the reserved `amq.` prefix.
pub fn is_builtin_exchange(name: &str) -> bool {
    name == DEFAULT_EXCHANGE || name.starts_with(RESERVED_PREFIX)
}

impl ReplicationLevel {
    /// Every level, from least to most.
    pub const ALL: [ReplicationLevel; 3] =
        [ReplicationLevel::None, ReplicationLevel::Configuration, ReplicationLevel::All];

    /// The option and argument spelling: "none", "configuration" or "all".
    pub fn name(self) -> &'static str {
        match self {
            ReplicationLevel::None => "none",
            ReplicationLevel::Configuration => "configuration",
            ReplicationLevel::All => "all",
        }
    }

    /// True when the object exists on the backups (`configuration` or `all`).
    pub fn replicates_configuration(self) -> bool {
        self != ReplicationLevel::None
    }

    /// True when a queue's messages are replicated (`all`).
    pub fn replicates_messages(self) -> bool {
        self == ReplicationLevel::All
    }
}

impl Default for ReplicationLevel {
    /// `none`, the default of `ha-replicate`.
    fn default() -> ReplicationLevel {
        ReplicationLevel::None
    }
}

impl fmt::Display for ReplicationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReplicationLevel {
    type Err = UnknownLevel;

    fn from_str(text: &str) -> Result<ReplicationLevel, UnknownLevel> {
        ReplicationLevel::ALL
            .into_iter()
            .find(|level| level.name() == text)
            .ok_or_else(|| UnknownLevel { got: text.to_owned() })
    }
}

/// The declare argument that overrides `ha-replicate`, in the reference's spelling.
pub const REPLICATE_ARGUMENT: &str = "qpid.replicate";
/// The same argument in the short spelling our issue also accepts.
pub const REPLICATE_ARGUMENT_SHORT: &str = "replicate";
/// Both spellings, the reference's first.
const ARGUMENT_NAMES: [&str; 2] = [REPLICATE_ARGUMENT, REPLICATE_ARGUMENT_SHORT];

#[cfg(test)]
mod tests {
    use super::ReplicationLevel::{All, Configuration};
    use super::*;

    /// The level `none`, named so that it cannot be mistaken for `Option::None`.
    const NONE: ReplicationLevel = ReplicationLevel::None;

    /// Declare arguments from pairs of text.
    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|&(name, value)| (name.to_owned(), value.to_owned())).collect()
    }

    /// The level of an ordinary (not exclusive, not auto-delete) queue.
    fn queue(default: ReplicationLevel, pairs: &[(&str, &str)]) -> Result<ReplicationLevel, LevelError> {
        effective_level(default, &args(pairs), false, false)
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_allowed_ones() {
        // Goal: the three spellings parse back exactly; anything else is refused with the list.
        for level in ReplicationLevel::ALL {
            assert_eq!(level.name().parse::<ReplicationLevel>(), Ok(level));
            assert_eq!(level.to_string(), level.name());
        }
        for bad in ["All", "config", "", "yes"] {
            assert_eq!(
                bad.parse::<ReplicationLevel>().unwrap_err().to_string(),
                format!("replication level must be one of none, configuration, all; got '{bad}'")
            );
        }
    }

    #[test]
    fn default_applies_without_the_argument() {
        // Goal: with no argument (or unrelated ones), the queue gets ha-replicate's value.
        for default in ReplicationLevel::ALL {
            assert_eq!(queue(default, &[]), Ok(default));
            assert_eq!(queue(default, &[("x-max-length", "10"), ("qpid.replicated", "all")]), Ok(default));
        }
    }

    #[test]
    fn argument_overrides_the_default_in_either_spelling() {
        // Goal: qpid.replicate and replicate both override, up and down.
        for default in ReplicationLevel::ALL {
            for level in ReplicationLevel::ALL {
                assert_eq!(queue(default, &[("qpid.replicate", level.name())]), Ok(level));
                assert_eq!(queue(default, &[("replicate", level.name())]), Ok(level));
            }
        }
    }

    #[test]
    fn temporary_queue_is_replicated_only_when_asked_explicitly() {
        // Goal: exclusive and auto-delete together mean temporary: not replicated by default.
        assert_eq!(effective_level(All, &[], true, true), Ok(NONE));
        // An explicit argument still replicates it.
        assert_eq!(effective_level(NONE, &args(&[("qpid.replicate", "all")]), true, true), Ok(All));
        assert_eq!(effective_level(All, &args(&[("replicate", "configuration")]), true, true), Ok(Configuration));
        // Exclusive-only and auto-delete-only queues are not temporary: they follow the default.
        assert_eq!(effective_level(All, &[], true, false), Ok(All));
        assert_eq!(effective_level(All, &[], false, true), Ok(All));
    }

    #[test]
    fn invalid_value_is_an_error_naming_argument_allowed_and_given() {
        // Goal: a typo is refused at declare, never silently replaced by the default.
        assert_eq!(
            queue(All, &[("qpid.replicate", "everything")]).unwrap_err().to_string(),
            "argument qpid.replicate: replication level must be one of none, configuration, all; got 'everything'"
        );
        assert_eq!(
            queue(NONE, &[("replicate", "")]).unwrap_err(),
            LevelError::Invalid { argument: "replicate", got: String::new() }
        );
        // Also on a temporary queue, whose level would otherwise be none.
        assert!(effective_level(NONE, &args(&[("replicate", "ALL")]), true, true).is_err());
    }

    #[test]
    fn disagreeing_occurrences_are_an_error_and_agreeing_ones_are_not() {
        // Goal: both spellings, or one spelling twice, must give the same level.
        assert_eq!(
            queue(NONE, &[("qpid.replicate", "all"), ("replicate", "none")]).unwrap_err().to_string(),
            "arguments disagree on the replication level: qpid.replicate=all but replicate=none; give it once"
        );
        assert_eq!(
            queue(NONE, &[("replicate", "configuration"), ("replicate", "all")]),
            Err(LevelError::Conflict {
                first_argument: "replicate",
                first: Configuration,
                second_argument: "replicate",
                second: All,
            })
        );
        assert_eq!(queue(NONE, &[("replicate", "all"), ("qpid.replicate", "all")]), Ok(All));
    }

    #[test]
    fn builtin_exchanges_are_never_replicated() {
        // Goal: "" and amq.* stay unreplicated whatever the default or the arguments; other
        // exchanges follow the same rules as queues.
        for name in ["", "amq.direct", "amq.topic", "amq.fanout", "amq.match"] {
            assert!(is_builtin_exchange(name), "{name:?}");
            assert_eq!(exchange_level(All, name, &[]), Ok(NONE));
            assert_eq!(exchange_level(All, name, &args(&[("qpid.replicate", "all")])), Ok(NONE));
        }
        // A bad argument is still an error on a built-in name.
        assert!(exchange_level(All, "amq.direct", &args(&[("replicate", "bogus")])).is_err());
        for name in ["orders", "amqp.x", "amq"] {
            assert!(!is_builtin_exchange(name), "{name:?}");
            assert_eq!(exchange_level(Configuration, name, &[]), Ok(Configuration));
            assert_eq!(exchange_level(NONE, name, &args(&[("replicate", "all")])), Ok(All));
        }
    }

    #[test]
    fn binding_is_replicated_only_if_both_ends_are() {
        // Goal: all nine combinations of levels, against the rule written out by hand.
        let expected = [
            (NONE, NONE, false),
            (NONE, Configuration, false),
            (NONE, All, false),
            (Configuration, NONE, false),
            (Configuration, Configuration, true),
            (Configuration, All, true),
            (All, NONE, false),
            (All, Configuration, true),
            (All, All, true),
        ];
        for (exchange, queue, replicated) in expected {
            assert_eq!(binding_replicated(exchange, queue), replicated, "{exchange} {queue}");
        }
        // A replicated queue bound to a built-in exchange: the binding is not replicated.
        let builtin = exchange_level(All, "amq.topic", &[]).unwrap();
        assert!(!binding_replicated(builtin, All));
    }

    #[test]
    fn only_all_replicates_messages() {
        // Goal: configuration replicates existence only; all implies configuration.
        assert_eq!(ReplicationLevel::ALL.map(ReplicationLevel::replicates_messages), [false, false, true]);
        assert_eq!(ReplicationLevel::ALL.map(ReplicationLevel::replicates_configuration), [false, true, true]);
        assert!(NONE < Configuration && Configuration < All);
    }
}
