//! `ringmq broker`: validates the options, starts the shards and waits on them.
//!
//! Exit status: 0 never (the broker runs until killed), 2 for a configuration error, 3 when a
//! shard's runtime fails (the environment, not the input: see `fatal`).

use std::process::ExitCode;

use ringmq_core::ha_view::HaSettings;
use ringmq_core::shard::ShardConfig;
use ringmq_ha::node::shard_node::NodeConfig;
use ringmq_transport::runtime::{start, TransportConfig};

use crate::config::{is_listen_address, option_table, BrokerConfig};

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
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
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
    };
    let transport = TransportConfig { listen, pin_cores: config.pin_cores, ring_entries: config.ring_entries, link };
    let shard_config = ShardConfig {
        shard_count: config.shards,
        frame_bytes_max: config.frame_bytes_max,
        publish_inflight_max: config.publish_inflight_max,
        deliver_batch_max: config.deliver_batch_max as usize,
        broker_name: format!("ringmq {}", env!("CARGO_PKG_VERSION")),
        ha: HaSettings {
            member: config.member_index(|host, port| is_own_address(listen, host, port)),
            ..config.ha_settings()
        },
        dedup_window: config.dedup_window,
    };
    let broker = match start(&transport, shard_config) {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!("ringmq broker: cannot listen on {}: {error}", transport.listen);
            return ExitCode::from(2);
        }
    };
    println!("ringmq broker listening on {} with {} shards", broker.local_addr, config.shards);
    for thread in broker.threads {
        let outcome = thread.join();
        let reason = match outcome {
            Ok(Ok(())) => "a shard stopped".to_string(),
            Ok(Err(error)) => format!("a shard's runtime failed: {error}"),
            Err(_) => "a shard panicked".to_string(),
        };
        fatal(&reason);
    }
    fatal("no shards ran")
}

/// Ends the process for a failure no in-process action can fix, with a distinct status, rather
/// than leaving the other shards half alive.
fn fatal(reason: &str) -> ExitCode {
    tracing::error!(reason, "fatal");
    eprintln!("ringmq broker: fatal: {reason}");
    std::process::exit(3)
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
