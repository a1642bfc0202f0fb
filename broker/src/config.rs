//! The broker's options: one table, read from a `key=value` config file (`#` comments) and from
//! `--key value` flags (flags win). Every option has a type, a default and a line of help; an
//! unknown option or a bad value is an error naming the option, what is allowed and what came.
//!
//! Invariants: a `BrokerConfig` only exists with every value validated.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ringmq_core::ha_view::HaSettings;
use ringmq_core::limits::{
    DEDUP_WINDOW_DEFAULT, DEDUP_WINDOW_MAX, FRAME_BYTES_CONFIGURABLE_MAX, FRAME_BYTES_DEFAULT, PUBLISH_INFLIGHT_MAX,
};
use ringmq_core::replication_level::ReplicationLevel;
use ringmq_ha::limits::{LINK_HEARTBEAT_INTERVAL_MAX, LINK_HEARTBEAT_INTERVAL_MIN};
use ringmq_ha::url::{BrokerUrl, Transport};

/// A validated broker configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `host`: address to listen on.
    pub host: IpAddr,
    /// `port`: TCP port to listen on (0 picks a free one).
    pub port: u16,
    /// `shards`: shard threads, one per core by default.
    pub shards: u16,
    /// `pin-cores`: pin shard threads to cores.
    pub pin_cores: bool,
    /// `max-frame-size`: largest frame accepted, in bytes.
    pub frame_bytes_max: u32,
    /// `max-inflight`: most unconfirmed publishes per connection.
    pub publish_inflight_max: u32,
    /// `deliver-batch`: most messages per delivery frame.
    pub deliver_batch_max: u32,
    /// `io-uring-entries`: submission queue size of each shard's ring.
    pub ring_entries: u32,
    /// `log`: tracing filter.
    pub log: String,
    /// `ha-cluster`: member of an HA cluster (starts as a `joining` backup).
    pub ha_cluster: bool,
    /// `ha-brokers-url`: every broker of the cluster; required with `ha-cluster`.
    pub ha_brokers_url: Option<BrokerUrl>,
    /// `ha-public-url`: the cluster's addresses as clients should use them.
    pub ha_public_url: Option<BrokerUrl>,
    /// `ha-replicate`: the replication level of queues and exchanges declared without a
    /// `qpid.replicate` argument.
    pub ha_replicate: ReplicationLevel,
    /// `link-maintenance-interval`: time between two dials of a backup's link to the primary.
    pub link_maintenance_interval: Duration,
    /// `link-heartbeat-interval`: heartbeat period of broker-to-broker links; a link silent for
    /// twice this is closed.
    pub link_heartbeat_interval: Duration,
    /// `ha-backup-timeout`: how long a newly promoted primary holds confirms for a backup that was
    /// ready under the previous primary and has not come back ready.
    pub ha_backup_timeout: Duration,
    /// `ha-min-ready-backups`: a primary with fewer ready backups holds publish confirms (0: it
    /// confirms without backups, as the reference).
    pub ha_min_ready_backups: usize,
    /// `ha-min-ready-timeout`: how long a publish held for want of ready backups waits before it
    /// is rejected; `None` (`none`): until enough backups are ready.
    pub ha_min_ready_timeout: Option<Duration>,
    /// `dedup-window`: sequences remembered per producer per queue for duplicate suppression; 0
    /// disables it.
    pub dedup_window: u32,
}

/// A configuration error, naming the option and what was allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The option is not one the broker knows.
    #[error("unknown option '{name}'{source_note}; known options: {known}")]
    UnknownOption {
        /// What came.
        name: String,
        /// Where it came from (`" (config file line 3)"`), or empty for a flag.
        source_note: String,
        /// Every known option.
        known: String,
    },
    /// The value does not parse or is out of range.
    #[error("option '{name}': {allowed}; got '{value}'")]
    BadValue {
        /// Option name.
        name: String,
        /// What is allowed.
        allowed: String,
        /// What came.
        value: String,
    },
    /// A flag without its value.
    #[error("option '--{0}' needs a value")]
    MissingValue(String),
    /// A config file line that is not `key=value`.
    #[error("config file {file} line {line}: expected 'key=value' or a '#' comment; got '{text}'")]
    BadLine {
        /// File name.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {file}: {error}")]
    Unreadable {
        /// File name.
        file: String,
        /// The IO error.
        error: String,
    },
}

/// One known option.
struct OptionSpec {
    /// Its name, as in the file and after `--`.
    name: &'static str,
    /// Default, as text (empty: computed).
    default: &'static str,
    /// One line of help.
    help: &'static str,
}

/// Every option the broker knows. README.md's option table mirrors this list.
const OPTIONS: &[OptionSpec] = &[
    OptionSpec { name: "host", default: "0.0.0.0", help: "address to listen on" },
    OptionSpec { name: "port", default: "5672", help: "TCP port for clients (native protocol; 0 picks a free port)" },
    OptionSpec { name: "shards", default: "", help: "shard threads; default one per core" },
    OptionSpec { name: "pin-cores", default: "true", help: "pin each shard thread to its core" },
    OptionSpec { name: "max-frame-size", default: "1048576", help: "largest frame accepted, in bytes" },
    OptionSpec { name: "max-inflight", default: "65536", help: "most unconfirmed publishes per connection" },
    OptionSpec { name: "deliver-batch", default: "256", help: "most messages per delivery frame" },
    OptionSpec { name: "io-uring-entries", default: "1024", help: "submission queue entries per shard" },
    OptionSpec { name: "log", default: "info", help: "log filter (error, warn, info, debug, trace)" },
    OptionSpec {
        name: "ha-cluster",
        default: "false",
        help: "join an HA cluster: start as a backup (joining) that refuses clients until promoted",
    },
    OptionSpec {
        name: "ha-brokers-url",
        default: "",
        help: "URL of every broker in the cluster, [amqp:][user[/password]@]addr(,addr)*; required with ha-cluster",
    },
    OptionSpec {
        name: "ha-public-url",
        default: "",
        help: "URL clients use for the cluster; shown to clients a backup refuses",
    },
    OptionSpec {
        name: "ha-replicate",
        default: "none",
        help: "replication level of queues and exchanges declared without qpid.replicate: none, configuration, all",
    },
    OptionSpec {
        name: "ha-backup-timeout",
        default: "10s",
        help: "how long a new primary waits for the backups that were ready under the old one before it drops them",
    },
    OptionSpec {
        name: "ha-min-ready-backups",
        default: "0",
        help: "a primary with fewer ready backups than this holds publish confirms instead of confirming alone \
               (0: confirm without backups; at most the other brokers of ha-brokers-url)",
    },
    OptionSpec {
        name: "ha-min-ready-timeout",
        default: "none",
        help: "how long a publish held by ha-min-ready-backups waits before it is rejected (none: until enough \
               backups are ready)",
    },
    OptionSpec {
        name: "link-maintenance-interval",
        default: "2s",
        help: "how often a backup dials the next address of ha-brokers-url looking for the primary (0.1 = 100ms)",
    },
    OptionSpec {
        name: "link-heartbeat-interval",
        default: "120s",
        help: "heartbeat period of broker-to-broker links; a link silent for twice this is closed",
    },
    OptionSpec {
        name: "dedup-window",
        default: "10000",
        help: "duplicate suppression: x-ringmq-dedup sequences remembered per producer per queue (0 disables; \
               an older re-send may be stored twice)",
    },
];

/// The option table as `(name, default, help)`, for `--help`.
pub fn option_table() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    OPTIONS.iter().map(|o| (o.name, o.default, o.help))
}

/// Reads the text of a config file (`file` names it in errors) into `values`: `key=value` lines,
/// keys and values trimmed; `#` starts a comment; blank lines are skipped. A later line for the
/// same key wins.
///
/// # Errors
/// `BadLine` for a line that is not `key=value`, `UnknownOption` for a key that is not an option.
pub fn parse_config_text(file: &str, text: &str, values: &mut BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(ConfigError::BadLine { file: file.to_string(), line: index + 1, text: raw.to_string() });
        };
        let name = name.trim();
        check_known(name, &format!(" (config file {file} line {})", index + 1))?;
        values.insert(name.to_string(), value.trim().to_string());
    }
    Ok(())
}

impl BrokerConfig {
    /// Reads `--config FILE` (if given) and then every `--key value` / `--key=value` flag.
    ///
    /// # Errors
    /// Any unknown option, bad value or unreadable file.
    pub fn from_args(args: &[String]) -> Result<BrokerConfig, ConfigError> {
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError::UnknownOption {
                    name: arg.clone(),
                    source_note: " (options are given as --name value)".into(),
                    known: known_names(),
                });
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = iter.next().ok_or_else(|| ConfigError::MissingValue(flag.to_string()))?;
                    (flag.to_string(), value.clone())
                }
            };
            flags.push((name, value));
        }
        if let Some((_, file)) = flags.iter().find(|(name, _)| name == "config") {
            read_file(Path::new(file), &mut values)?;
        }
        for (name, value) in flags.into_iter().filter(|(name, _)| name != "config") {
            check_known(&name, "")?;
            values.insert(name, value);
        }
        BrokerConfig::from_values(&values)
    }

    /// Builds a configuration from option values, filling defaults.
    ///
    /// # Errors
    /// A bad value.
    pub fn from_values(values: &BTreeMap<String, String>) -> Result<BrokerConfig, ConfigError> {
        let get = |name: &str| -> String {
            values.get(name).cloned().unwrap_or_else(|| {
                OPTIONS.iter().find(|o| o.name == name).map(|o| o.default.to_string()).unwrap_or_default()
            })
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u16;
        let shards = match values.get("shards") {
            Some(value) => parse_int("shards", value, 1, 256)? as u16,
            None => cores,
        };
        let ha_cluster = parse_bool("ha-cluster", &get("ha-cluster"))?;
        let ha_brokers_url = parse_url("ha-brokers-url", &get("ha-brokers-url"))?;
        let ha_public_url = parse_url("ha-public-url", &get("ha-public-url"))?;
        if ha_cluster && ha_brokers_url.is_none() {
            return Err(bad(
                "ha-brokers-url",
                "is required when ha-cluster is true: a broker URL listing every broker of the cluster",
                "",
            ));
        }
        let ha_min_ready_backups = parse_min_ready_backups(ha_cluster, ha_brokers_url.as_ref(), &get)?;
        let ha_min_ready_timeout = match get("ha-min-ready-timeout").trim() {
            "none" => None,
            value => Some(parse_duration("ha-min-ready-timeout", value).map_err(|_| {
                bad(
                    "ha-min-ready-timeout",
                    "must be 'none' or a duration: seconds as a number (0.1) or with a unit (10s, 10ms)",
                    value,
                )
            })?),
        };
        Ok(BrokerConfig {
            ha_min_ready_backups,
            ha_min_ready_timeout,
            link_maintenance_interval: parse_link_interval(
                "link-maintenance-interval",
                &get("link-maintenance-interval"),
            )?,
            link_heartbeat_interval: parse_link_interval("link-heartbeat-interval", &get("link-heartbeat-interval"))?,
            ha_backup_timeout: parse_duration("ha-backup-timeout", &get("ha-backup-timeout"))?,
            dedup_window: parse_int("dedup-window", &get("dedup-window"), 0, u64::from(DEDUP_WINDOW_MAX))? as u32,
            ha_cluster,
            ha_brokers_url,
            ha_public_url,
            ha_replicate: parse_level("ha-replicate", &get("ha-replicate"))?,
            host: parse_ip("host", &get("host"))?,
            port: parse_int("port", &get("port"), 0, u64::from(u16::MAX))? as u16,
            shards,
            pin_cores: parse_bool("pin-cores", &get("pin-cores"))?,
            frame_bytes_max: parse_int(
                "max-frame-size",
                &get("max-frame-size"),
                4096,
                u64::from(FRAME_BYTES_CONFIGURABLE_MAX),
            )? as u32,
            publish_inflight_max: parse_int("max-inflight", &get("max-inflight"), 1, PUBLISH_INFLIGHT_MAX)? as u32,
            deliver_batch_max: parse_int(
                "deliver-batch",
                &get("deliver-batch"),
                1,
                u64::from(ringmq_core::limits::BATCH_MESSAGES_MAX),
            )? as u32,
            ring_entries: parse_int("io-uring-entries", &get("io-uring-entries"), 8, 32768)? as u32,
            log: get("log"),
        })
    }

    /// The HA options as the shards take them: URLs in canonical form, credentials hidden; `member`
    /// is left 0, since only the daemon knows its listening address (`member_index`).
    pub fn ha_settings(&self) -> HaSettings {
        let text = |url: &Option<BrokerUrl>| url.as_ref().map(|u| u.redacted().to_string()).unwrap_or_default();
        HaSettings {
            cluster: self.ha_cluster,
            brokers_url: text(&self.ha_brokers_url),
            public_url: text(&self.ha_public_url),
            replicate: self.ha_replicate,
            member: 0,
            name: String::new(),
        }
    }

    /// This broker's place in `ha-brokers-url`, from 0 (its first address `is_own`); 0 when the URL
    /// does not name it.
    pub fn member_index(&self, is_own: impl Fn(&str, u16) -> bool) -> u16 {
        let Some(url) = self.ha_brokers_url.as_ref() else { return 0 };
        let place = url.addresses().iter().position(|address| is_own(address.host(), address.port()));
        place.map_or(0, |place| place as u16)
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The addresses of `ha-brokers-url` a backup dials looking for its primary, as `host:port`:
    /// the TCP ones (TLS and RDMA links come with those transports), without this broker's own
    /// address when `is_own` recognises it. Empty when the broker is not in a cluster. An own
    /// address that is not recognised (a host name for a wildcard listener) costs one refused dial
    /// per round: this broker, a backup, refuses its own backup link like any other.
    pub fn link_addresses(&self, is_own: impl Fn(&str, u16) -> bool) -> Vec<String> {
        let Some(url) = self.ha_brokers_url.as_ref().filter(|_| self.ha_cluster) else { return Vec::new() };
        url.addresses()
            .iter()
            .filter(|address| address.transport() == Transport::Tcp && !is_own(address.host(), address.port()))
            .map(|address| {
                let host = address.host();
                if host.contains(':') {
                    format!("[{host}]:{}", address.port())
                } else {
                    format!("{host}:{}", address.port())
                }
            })
            .collect()
    }
}

/// Whether `ip:port` is `listen`: the same address, or a loopback or unspecified address on the
/// same port when `listen` is a wildcard.
pub fn is_listen_address(listen: SocketAddr, ip: IpAddr, port: u16) -> bool {
    port == listen.port()
        && (ip == listen.ip() || (listen.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
}

const _: () = assert!(FRAME_BYTES_DEFAULT == 1_048_576, "keep the option table's default in step");
const _: () = assert!(DEDUP_WINDOW_DEFAULT == 10_000, "keep the option table's default in step");

fn read_file(path: &Path, values: &mut BTreeMap<String, String>) -> Result<(), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::Unreadable { file: file.clone(), error: error.to_string() })?;
    parse_config_text(&file, &text, values)
}

fn check_known(name: &str, source_note: &str) -> Result<(), ConfigError> {
    if OPTIONS.iter().any(|o| o.name == name) {
        Ok(())
    } else {
        Err(ConfigError::UnknownOption {
            name: name.to_string(),
            source_note: source_note.to_string(),
            known: known_names(),
        })
    }
}

fn known_names() -> String {
    let mut names: Vec<&str> = OPTIONS.iter().map(|o| o.name).collect();
    names.push("config");
    names.join(", ")
}

fn bad(name: &str, allowed: impl Into<String>, value: &str) -> ConfigError {
    ConfigError::BadValue { name: name.to_string(), allowed: allowed.into(), value: value.to_string() }
}

fn parse_int(name: &str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(name, format!("must be an integer in {min}..={max}"), value)),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(bad(name, "must be true/false (or yes/no, on/off, 1/0)", value)),
    }
}

fn parse_level(name: &str, value: &str) -> Result<ReplicationLevel, ConfigError> {
    value.trim().parse().map_err(|_| bad(name, "must be one of none, configuration, all", value))
}

fn parse_ip(name: &str, value: &str) -> Result<IpAddr, ConfigError> {
    value.trim().parse().map_err(|_| bad(name, "must be an IP address such as 127.0.0.1 or ::", value))
}

/// Parses a broker URL option; empty means unset. A value with credentials is echoed with
/// everything before its last '@' hidden, so a bad URL never prints a password.
fn parse_url(name: &str, value: &str) -> Result<Option<BrokerUrl>, ConfigError> {
    let text = value.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<BrokerUrl>().map(Some).map_err(|error| {
        let shown = match text.rsplit_once('@') {
            Some((_, addresses)) => format!("***@{addresses}"),
            None => text.to_string(),
        };
        bad(name, format!("must be a broker URL, [amqp:][user[/password]@]addr(,addr)*: {error}"), &shown)
    })
}

/// Parses a duration: a plain number is seconds (`0.1`), or a number with `s`, `ms`, `us` or `ns`.
///
/// # Errors
/// Anything else, negative values included.
pub fn parse_duration(name: &str, value: &str) -> Result<Duration, ConfigError> {
    let text = value.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1.0)
    };
    let allowed = "must be a duration: seconds as a number (0.1) or with a unit (10s, 10ms, 10us, 10ns)";
    match number.trim().parse::<f64>() {
        // `try_from`: a huge value is refused rather than overflowing `Duration` (a panic).
        Ok(n) if n.is_finite() && n >= 0.0 => {
            Duration::try_from_secs_f64(n * scale).map_err(|_| bad(name, allowed, value))
        }
        _ => Err(bad(name, allowed, value)),
    }
}

/// Parses `ha-min-ready-backups`: 0 (the default), or with `ha-cluster`, at most the number of
/// other brokers `ha-brokers-url` lists (a primary could never have more backups ready).
fn parse_min_ready_backups(
    ha_cluster: bool,
    brokers_url: Option<&BrokerUrl>,
    get: &impl Fn(&str) -> String,
) -> Result<usize, ConfigError> {
    const NAME: &str = "ha-min-ready-backups";
    let value = get(NAME);
    let others = brokers_url.map_or(0, |url| url.addresses().len().saturating_sub(1));
    let required = parse_int(NAME, &value, 0, ringmq_ha::limits::BACKUPS_MAX as u64)? as usize;
    if required > 0 && !ha_cluster {
        return Err(bad(NAME, "must be 0 without ha-cluster true (a standalone broker has no backups)", &value));
    }
    if required > others {
        return Err(bad(
            NAME,
            format!(
                "must be at most {others}, the brokers of ha-brokers-url other than the primary (a primary \
                 could never have more backups ready)"
            ),
            &value,
        ));
    }
    Ok(required)
}

/// Parses a link interval: a duration (`parse_duration`) in
/// `LINK_HEARTBEAT_INTERVAL_MIN..=LINK_HEARTBEAT_INTERVAL_MAX`. Sub-second values are kept exactly
/// (the reference truncated them to whole seconds, which disabled heartbeats).
fn parse_link_interval(name: &str, value: &str) -> Result<Duration, ConfigError> {
    let duration = parse_duration(name, value)?;
    if (LINK_HEARTBEAT_INTERVAL_MIN..=LINK_HEARTBEAT_INTERVAL_MAX).contains(&duration) {
        Ok(duration)
    } else {
        Err(bad(
            name,
            format!(
                "must be a duration from {:?} to {:?} (seconds as a number, or with a unit: 0.1, 100ms, 2s)",
                LINK_HEARTBEAT_INTERVAL_MIN, LINK_HEARTBEAT_INTERVAL_MAX
            ),
            value,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn durations_accept_every_documented_form() {
        assert_eq!(parse_duration("d", "0.1").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("d", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("d", "10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("d", "10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse_duration("d", "10ns").unwrap(), Duration::from_nanos(10));
        let error = parse_duration("link-heartbeat-interval", "ten").unwrap_err();
        assert!(error.to_string().starts_with("option 'link-heartbeat-interval': must be a duration"), "{error}");
        assert!(parse_duration("d", "-1s").is_err());
    }

    #[test]
    fn link_intervals_take_sub_second_values_and_refuse_zero() {
        // Goal: the link options default to the reference's 2s and 120s, sub-second values are kept
        // exactly, zero and absurd values are refused. Method: from_args on each case.
        let config = BrokerConfig::from_args(&[]).unwrap();
        assert_eq!(config.link_maintenance_interval, Duration::from_secs(2));
        assert_eq!(config.link_heartbeat_interval, Duration::from_secs(120));
        assert_eq!(config.ha_backup_timeout, Duration::from_secs(10));
        let config = BrokerConfig::from_args(&args(&[
            "--link-maintenance-interval",
            "0.1",
            "--link-heartbeat-interval",
            "200ms",
        ]))
        .unwrap();
        assert_eq!(config.link_maintenance_interval, Duration::from_millis(100));
        assert_eq!(config.link_heartbeat_interval, Duration::from_millis(200));
        for bad_value in ["0", "1e300", "-1", "soon"] {
            let error = BrokerConfig::from_args(&args(&["--link-heartbeat-interval", bad_value])).unwrap_err();
            assert!(error.to_string().starts_with("option 'link-heartbeat-interval': must be a duration"), "{error}");
        }
    }

    /// A broker on port 2, in the middle of a three-broker `ha-brokers-url`.
    fn member_of_three() -> BrokerConfig {
        BrokerConfig::from_args(&args(&[
            "--ha-cluster",
            "true",
            "--ha-brokers-url",
            "127.0.0.1:1,127.0.0.1:2,[::1]:3",
            "--port",
            "2",
        ]))
        .unwrap()
    }

    #[test]
    fn link_addresses_leave_out_the_own_address() {
        // Goal: a backup dials every other broker of ha-brokers-url, never itself. Method: a URL
        // with this broker's address in the middle.
        let config = member_of_three();
        let listen = config.listen_addr();
        let own = |host: &str, port: u16| host.parse().is_ok_and(|ip| is_listen_address(listen, ip, port));
        assert_eq!(config.link_addresses(own), ["127.0.0.1:1", "[::1]:3"]);
        let wildcard: SocketAddr = "0.0.0.0:5".parse().unwrap();
        assert!(is_listen_address(wildcard, "127.0.0.1".parse().unwrap(), 5));
        assert!(!is_listen_address(wildcard, "127.0.0.1".parse().unwrap(), 6));
        // Not in a cluster: no link.
        assert!(BrokerConfig::from_args(&[]).unwrap().link_addresses(|_, _| false).is_empty());
    }

    #[test]
    fn member_index_is_the_place_of_the_own_address_in_the_brokers_url() {
        // Goal: the place that keeps this broker's epochs apart from the others' is its position
        // in ha-brokers-url (0 when the URL does not name it).
        let config = member_of_three();
        assert_eq!(config.member_index(|_, port| port == 2), 1);
        assert_eq!(config.member_index(|_, port| port == 3), 2);
        assert_eq!(config.member_index(|_, _| false), 0);
    }

    #[test]
    fn unknown_options_and_bad_values_name_what_came() {
        let error = BrokerConfig::from_args(&args(&["--prot", "5"])).unwrap_err();
        assert!(error.to_string().starts_with("unknown option 'prot'; known options: host, port"), "{error}");
        let error = BrokerConfig::from_args(&args(&["--port", "70000"])).unwrap_err();
        assert_eq!(error.to_string(), "option 'port': must be an integer in 0..=65535; got '70000'");
        let error = BrokerConfig::from_args(&args(&["--port"])).unwrap_err();
        assert_eq!(error, ConfigError::MissingValue("port".into()));
    }

    #[test]
    fn ha_options_are_checked_and_brokers_url_is_required_with_ha_cluster() {
        // Goal: the HA options parse with the reference grammar, a bad one names the option, and
        // ha-cluster without ha-brokers-url is refused. Method: from_args on each case.
        let config = BrokerConfig::from_args(&args(&[
            "--ha-cluster",
            "yes",
            "--ha-brokers-url",
            "127.0.0.1:1,127.0.0.1:2",
            "--ha-public-url",
            "vip",
        ]))
        .unwrap();
        let settings = config.ha_settings();
        assert!(settings.cluster);
        assert_eq!(settings.brokers_url, "amqp:tcp:127.0.0.1:1,tcp:127.0.0.1:2");
        assert_eq!(settings.public_url, "amqp:tcp:vip:5672");
        let error = BrokerConfig::from_args(&args(&["--ha-cluster", "true"])).unwrap_err();
        assert!(
            error.to_string().starts_with("option 'ha-brokers-url': is required when ha-cluster is true"),
            "{error}"
        );
        let error = BrokerConfig::from_args(&args(&["--ha-brokers-url", "h:99999"])).unwrap_err();
        assert!(error.to_string().starts_with("option 'ha-brokers-url': must be a broker URL"), "{error}");
        assert!(error.to_string().ends_with("got 'h:99999'"), "{error}");
        let error = BrokerConfig::from_args(&args(&["--ha-public-url", "u/secret@h:0"])).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        let error = BrokerConfig::from_args(&args(&["--ha-cluster", "maybe"])).unwrap_err();
        assert!(error.to_string().starts_with("option 'ha-cluster': must be true/false"), "{error}");
        // Without ha-cluster the broker is standalone.
        assert!(!BrokerConfig::from_args(&[]).unwrap().ha_settings().cluster);
    }

    #[test]
    fn min_ready_backups_and_its_timeout_are_checked_against_the_cluster() {
        // Goal: ha-min-ready-backups defaults to 0, takes up to the other brokers of
        // ha-brokers-url, needs ha-cluster, and a bad value names the option, what is allowed and
        // what came; ha-min-ready-timeout is 'none' or a duration. Method: from_args on each case.
        let cluster = ["--ha-cluster", "true", "--ha-brokers-url", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"];
        let with = |extra: &[&str]| BrokerConfig::from_args(&args(&[&cluster[..], extra].concat()));
        let config = with(&[]).unwrap();
        assert_eq!(config.ha_min_ready_backups, 0);
        assert_eq!(config.ha_min_ready_timeout, None);
        let config = with(&["--ha-min-ready-backups", "2", "--ha-min-ready-timeout", "1.5"]).unwrap();
        assert_eq!(config.ha_min_ready_backups, 2);
        assert_eq!(config.ha_min_ready_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(with(&["--ha-min-ready-timeout", "0"]).unwrap().ha_min_ready_timeout, Some(Duration::ZERO));
        assert_eq!(with(&["--ha-min-ready-timeout", "none"]).unwrap().ha_min_ready_timeout, None);
        let error = with(&["--ha-min-ready-backups", "3"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "option 'ha-min-ready-backups': must be at most 2, the brokers of ha-brokers-url other than the \
             primary (a primary could never have more backups ready); got '3'"
        );
        let error = with(&["--ha-min-ready-backups", "-1"]).unwrap_err();
        assert_eq!(error.to_string(), "option 'ha-min-ready-backups': must be an integer in 0..=64; got '-1'");
        let error = BrokerConfig::from_args(&args(&["--ha-min-ready-backups", "1"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "option 'ha-min-ready-backups': must be 0 without ha-cluster true (a standalone broker has no \
             backups); got '1'"
        );
        let error = with(&["--ha-min-ready-timeout", "soon"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "option 'ha-min-ready-timeout': must be 'none' or a duration: seconds as a number (0.1) or with a \
             unit (10s, 10ms); got 'soon'"
        );
    }

    #[test]
    fn ha_replicate_takes_the_three_levels_and_names_them_when_bad() {
        // Goal: ha-replicate reaches the shards' settings, defaults to none, and a bad value names
        // the allowed levels and what came. Method: from_args on each level and on bad values.
        assert_eq!(BrokerConfig::from_args(&[]).unwrap().ha_settings().replicate, ReplicationLevel::None);
        for level in ReplicationLevel::ALL {
            let config = BrokerConfig::from_args(&args(&["--ha-replicate", level.name()])).unwrap();
            assert_eq!(config.ha_settings().replicate, level);
        }
        for bad_value in ["All", "yes", ""] {
            let error = BrokerConfig::from_args(&args(&["--ha-replicate", bad_value])).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("option 'ha-replicate': must be one of none, configuration, all; got '{bad_value}'")
            );
        }
    }

    #[test]
    fn dedup_window_defaults_takes_zero_and_refuses_above_the_bound() {
        assert_eq!(BrokerConfig::from_args(&[]).unwrap().dedup_window, DEDUP_WINDOW_DEFAULT);
        assert_eq!(BrokerConfig::from_args(&args(&["--dedup-window", "0"])).unwrap().dedup_window, 0);
        let error = BrokerConfig::from_args(&args(&["--dedup-window", "1048577"])).unwrap_err();
        assert_eq!(error.to_string(), "option 'dedup-window': must be an integer in 0..=1048576; got '1048577'");
    }

    #[test]
    fn flags_override_the_config_file() {
        let path = std::env::temp_dir().join(format!("ringmq-config-test-{}.conf", std::process::id()));
        std::fs::write(&path, "# a comment\nport = 6000\nshards=2 # trailing comment\n").unwrap();
        let config = BrokerConfig::from_args(&args(&["--config", path.to_str().unwrap(), "--port=7000"])).unwrap();
        assert_eq!(config.port, 7000);
        assert_eq!(config.shards, 2);
        std::fs::write(&path, "port 6000\n").unwrap();
        let error = BrokerConfig::from_args(&args(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(matches!(error, ConfigError::BadLine { line: 1, .. }), "{error}");
        std::fs::write(&path, "bogus=1\n").unwrap();
        let error = BrokerConfig::from_args(&args(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(error.to_string().contains("(config file"), "{error}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn config_text_trims_skips_comments_and_names_the_bad_line() {
        // Goal: the text of a config file reads the same as the file would, with no file. Method:
        // comments, blank lines, padding, a repeated key, then a bad line and an unknown key.
        let mut values = BTreeMap::new();
        parse_config_text("b.conf", "# c\n\n port = 6000 \r\nlog=debug # x\nport=6001\n", &mut values).unwrap();
        let expected =
            BTreeMap::from([("log".to_string(), "debug".to_string()), ("port".to_string(), "6001".to_string())]);
        assert_eq!(values, expected);
        // A line without '=' names the file and its 1-based line.
        let error = parse_config_text("b.conf", "port=1\nport 2\n", &mut values).unwrap_err();
        assert_eq!(error, ConfigError::BadLine { file: "b.conf".into(), line: 2, text: "port 2".into() });
        // An unknown key names itself and where it came from.
        let error = parse_config_text("b.conf", "prot=1\n", &mut values).unwrap_err().to_string();
        assert!(error.starts_with("unknown option 'prot' (config file b.conf line 1)"), "{error}");
    }
}
