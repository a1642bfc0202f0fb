//! `ringmq broker`: validates the options, starts the shards and watches them.
//!
//! A broker never runs half-alive: the first shard to end, whichever it is, ends the process,
//! with a line on stderr naming the shard and the reason. Two watches, one per kind of end:
//! - a panic, anywhere in the process, is caught by a panic hook (`fatal::exit_on_panic`) where
//!   it happens. Joining the shard threads could not see it: a panic in a task of a shard's loop
//!   (a reader, the inbox, the timer) is caught by the runtime and kept for a task handle nobody
//!   reads, and the shard would serve on without that task. `panic = "abort"` was not taken: it
//!   ends by SIGABRT with no status of its own and no line naming the shard, and the
//!   deterministic simulation catches panics to report the failing seed;
//! - a shard whose runtime fails or whose loop returns reports it over a channel
//!   (`RunningBroker::wait`), which this thread waits on. Joining the threads in order missed
//!   an end of shard 1 or above while shard 0 served.
//!
//! Exit statuses (`fatal::ExitStatus`): 0 never (the broker runs until killed); 2 for a bad
//! option or an address it cannot listen on (nothing started); 3 when a shard's runtime failed or
//! its loop stopped (the environment, not a bug); 4 when a shard, or any thread of the broker,
//! panicked (a bug).
//!
//! Test fault trigger: the environment variable `RINGMQ_FAULT_PANIC_SHARD=N` makes shard N panic
//! in a task of its loop as soon as it runs (read at start, also in release builds, since the
//! process tests run the release binary).

use std::process::ExitCode;

use ringmq_broker::config::{is_listen_address, option_table, BrokerConfig};
use ringmq_core::ha_view::HaSettings;
use ringmq_core::ids::ShardId;
use ringmq_core::shard::ShardConfig;
use ringmq_ha::node::shard_node::NodeConfig;
use ringmq_transport::runtime::{start, TransportConfig};
use ringmq_transport::shard_exit::ShardExitCause;

use crate::fatal::{exit_on_panic, fatal, ExitStatus};

/// The environment variable of the test fault trigger: the index of a shard that panics.
const FAULT_PANIC_SHARD_VAR: &str = "RINGMQ_FAULT_PANIC_SHARD";

/// Runs the broker with the raw option arguments that followed `ringmq broker`.
pub fn run(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print_help();
        return ExitCode::SUCCESS;
    }
    let config = match BrokerConfig::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ringmq broker: {error}");
            return ExitCode::from(ExitStatus::Config.code());
        }
    };
    let panic_shard = match fault_panic_shard(config.shards) {
        Ok(shard) => shard,
        Err(error) => {
            eprintln!("ringmq broker: {error}");
            return ExitCode::from(ExitStatus::Config.code());
        }
    };
    init_logging(&config.log);
    exit_on_panic();
    // Hash maps keyed by client-chosen names get a seed nobody outside knows.
    ringmq_core::hash_state::set_seed(std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8));
    let listen = config.listen_addr();
    let link = NodeConfig {
        heartbeat_interval: config.link_heartbeat_interval,
        maintenance_interval: config.link_maintenance_interval,
        peer_addresses: config.link_addresses(|host, port| is_own_address(listen, host, port)),
        own_address: listen.to_string(),
        backup_timeout: config.ha_backup_timeout,
        shard_count: config.shards,
        min_ready_backups: config.ha_min_ready_backups,
        min_ready_timeout: config.ha_min_ready_timeout,
    };
    let transport =
        TransportConfig { listen, pin_cores: config.pin_cores, ring_entries: config.ring_entries, link, panic_shard };
    let shard_config = ShardConfig {
        shard_count: config.shards,
        frame_bytes_max: config.frame_bytes_max,
        publish_inflight_max: config.publish_inflight_max,
        deliver_batch_max: config.deliver_batch_max as usize,
        broker_name: format!("ringmq {}", env!("CARGO_PKG_VERSION")),
        ha: HaSettings {
            member: config.member_index(|host, port| is_own_address(listen, host, port)),
            name: listen.to_string(),
            ..config.ha_settings()
        },
        dedup_window: config.dedup_window,
    };
    let broker = match start(&transport, shard_config) {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!("ringmq broker: cannot listen on {}: {error}", transport.listen);
            return ExitCode::from(ExitStatus::Config.code());
        }
    };
    println!("ringmq broker listening on {} with {} shards", broker.local_addr, config.shards);
    let Some(exit) = broker.wait() else { fatal(ExitStatus::ShardFailed, "every shard thread ended without a report") };
    let status = match exit.cause {
        ShardExitCause::Stopped | ShardExitCause::RuntimeFailed(_) => ExitStatus::ShardFailed,
        // Normally the hook ended the process first; a panic that unwound the thread lands here.
        ShardExitCause::Panicked(_) => ExitStatus::Panicked,
    };
    fatal(status, &exit.to_string())
}

/// The shard the test fault trigger makes panic, from `RINGMQ_FAULT_PANIC_SHARD`; `None` when
/// the variable is not set.
///
/// # Errors
/// The variable is set to anything but a shard index below `shards`.
fn fault_panic_shard(shards: u16) -> Result<Option<ShardId>, String> {
    let Some(value) = std::env::var_os(FAULT_PANIC_SHARD_VAR) else { return Ok(None) };
    let value = value.to_string_lossy();
    match value.parse::<u16>() {
        Ok(index) if index < shards => Ok(Some(ShardId(index))),
        _ => Err(format!(
            "environment variable {FAULT_PANIC_SHARD_VAR} (test fault trigger): must be a shard index in 0..{shards}; got '{value}'"
        )),
    }
}

/// Whether `host:port` of `ha-brokers-url` names this broker. A host name is resolved once, at
/// startup; one that does not resolve is not ours (it is dialled, and fails, like any other).
fn is_own_address(listen: std::net::SocketAddr, host: &str, port: u16) -> bool {
    if let Ok(ip) = host.parse() {
        return is_listen_address(listen, ip, port);
    }
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .is_ok_and(|mut resolved| resolved.any(|addr| is_listen_address(listen, addr.ip(), addr.port())))
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn print_help() {
    println!("Usage: ringmq broker [--config FILE] [--OPTION VALUE]...\n");
    println!("Options (also accepted as OPTION=VALUE lines in the config file):");
    for (name, default, help) in option_table() {
        let default = if default.is_empty() { String::new() } else { format!(" [default: {default}]") };
        println!("  --{name:<18} {help}{default}");
    }
}
