//! The command line, as clap types. Each command's behaviour lives in its own module.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ringmq: a low-latency message broker with active-passive high availability.
#[derive(Debug, Parser)]
#[command(name = "ringmq", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker: `ringmq broker [--config FILE] [--OPTION VALUE]...` (see `ringmq broker --help`).
    #[command(disable_help_flag = true)]
    Broker {
        /// Options, as `--name value`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Add, delete or list queues.
    Queue {
        /// Broker connection.
        #[command(flatten)]
        broker: BrokerArgs,
        /// What to do.
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Add, delete or list exchanges.
    Exchange {
        /// Broker connection.
        #[command(flatten)]
        broker: BrokerArgs,
        /// What to do.
        #[command(subcommand)]
        command: ExchangeCommand,
    },
    /// Bind a queue to an exchange.
    Bind {
        /// Broker connection.
        #[command(flatten)]
        broker: BrokerArgs,
        /// The binding.
        #[command(flatten)]
        binding: BindingArgs,
    },
    /// Remove a binding.
    Unbind {
        /// Broker connection.
        #[command(flatten)]
        broker: BrokerArgs,
        /// The binding.
        #[command(flatten)]
        binding: BindingArgs,
    },
    /// HA: a broker's state, and promotion (always as an admin connection).
    Ha {
        /// Broker connection.
        #[command(flatten)]
        broker: BrokerArgs,
        /// What to do.
        #[command(subcommand)]
        command: HaCommand,
    },
    /// Send messages: the arguments, lines of stdin, or `--count` generated ones.
    Send(SendArgs),
    /// Receive messages from a queue and print them (or count them).
    Receive(ReceiveArgs),
    /// Load generator: throughput and latency percentiles.
    Bench(ringmq_bench::BenchArgs),
    /// Start a local HA cluster on loopback (for trying it out): N brokers, the first promoted,
    /// the others ready; prints the client URL and how to stop them.
    Cluster(ClusterArgs),
}

/// `ringmq cluster`.
#[derive(Debug, Args, Clone)]
pub struct ClusterArgs {
    /// Number of brokers.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Port of the first broker; the others take the next ones.
    #[arg(long, default_value_t = 5672)]
    pub base_port: u16,
    /// Shards per broker (every member of a cluster has the same number).
    #[arg(long, default_value_t = 2)]
    pub shards: u16,
}

/// How to reach the broker.
#[derive(Debug, Args, Clone)]
pub struct BrokerArgs {
    /// Broker address, `host:port`; `send` and `receive` take a URL list,
    /// `[amqp:][user[/password]@]addr(,addr)*`, and use the first that accepts as primary.
    #[arg(short = 'b', long = "broker", default_value = "127.0.0.1:5672", global = true)]
    pub broker: String,
    /// Connect as an administrator (served even on an HA backup).
    #[arg(long = "ha-admin", global = true)]
    pub ha_admin: bool,
}

/// Queue management.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Declare a queue (idempotent when the options match).
    Add {
        /// Queue name.
        name: String,
        /// Most messages the queue holds.
        #[arg(long)]
        max_count: Option<u64>,
        /// Most body bytes the queue holds.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Delete it when its last consumer goes away.
        #[arg(long)]
        auto_delete: bool,
        /// HA replication level (none, configuration, all), sent as the declare argument
        /// `qpid.replicate`; without it the broker's `ha-replicate` applies.
        #[arg(long)]
        replicate: Option<ringmq_core::replication_level::ReplicationLevel>,
    },
    /// Delete a queue.
    Del {
        /// Queue name.
        name: String,
    },
    /// Drop a queue's ready messages.
    Purge {
        /// Queue name.
        name: String,
    },
    /// List queues with their depth and counts.
    List,
}

/// HA commands.
#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// Print the broker's HA state (standalone, joining, catchup, ready, recovering, active).
    Status {
        /// Exit 0 only if the state is this one (with --all: if every broker's is), 1 otherwise.
        #[arg(long)]
        expect: Option<String>,
        /// Ask every broker of the broker's ha-brokers-url and print each with its state.
        #[arg(long)]
        all: bool,
    },
    /// Promote the broker to primary. A cluster manager's command: refused without
    /// --cluster-manager.
    Promote {
        /// Confirm that a cluster manager (or a person acting as one) is promoting.
        #[arg(long)]
        cluster_manager: bool,
    },
}

/// Exchange types on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExchangeType {
    /// Route by exact key.
    Direct,
    /// Route to every bound queue.
    Fanout,
    /// Route by pattern (`*` one word, `#` any words).
    Topic,
}

/// Exchange management.
#[derive(Debug, Subcommand)]
pub enum ExchangeCommand {
    /// Declare an exchange.
    Add {
        /// Exchange name.
        name: String,
        /// Its type.
        #[arg(long = "type", value_enum, default_value = "direct")]
        kind: ExchangeType,
    },
    /// Delete an exchange and its bindings.
    Del {
        /// Exchange name.
        name: String,
    },
    /// List exchanges.
    List,
}

/// A binding.
#[derive(Debug, Args)]
pub struct BindingArgs {
    /// Exchange name.
    pub exchange: String,
    /// Queue name.
    pub queue: String,
    /// Binding key (a pattern for topic exchanges; ignored by fanout).
    #[arg(default_value = "")]
    pub key: String,
}

/// Failover of `send` and `receive`.
#[derive(Debug, Args, Clone)]
pub struct FailoverArgs {
    /// When the connection is lost, connect again: every address of `-b` in turn (and those the
    /// cluster's ha-public-url names) until one accepts as primary; unconfirmed messages are sent
    /// again, the subscription is made again.
    #[arg(long)]
    pub reconnect: bool,
    /// Heartbeat interval (`0.5`, `500ms`, `2s`): a broker silent for twice this is taken as dead
    /// or stalled (default: no heartbeats).
    #[arg(long)]
    pub heartbeat: Option<String>,
    /// With --reconnect, give up after trying this long (default: forever).
    #[arg(long)]
    pub reconnect_timeout: Option<String>,
}

/// `ringmq send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Broker connection.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Failover.
    #[command(flatten)]
    pub failover: FailoverArgs,
    /// Exchange to publish to (default: the default exchange, which routes by queue name).
    #[arg(short, long, default_value = "")]
    pub exchange: String,
    /// Routing key (for the default exchange: the queue name).
    #[arg(short = 'k', long = "key", default_value = "")]
    pub routing_key: String,
    /// Send this many generated messages instead of arguments or stdin (with --numbered: this
    /// many numbers; without it, numbers until SIGINT or SIGTERM).
    #[arg(long)]
    pub count: Option<u64>,
    /// Body size of generated messages, in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Send the bodies "0", "1", "2"...; at the end print `sent N, confirmed N`.
    #[arg(long)]
    pub numbered: bool,
    /// With --numbered, at most this many messages per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stamp every message with the header x-ringmq-dedup = ID/SEQ, so the broker can drop a
    /// re-send it already holds.
    #[arg(long)]
    pub producer_id: Option<String>,
    /// Message bodies; without them (and without --count), each line of stdin is one message.
    pub messages: Vec<String>,
}

/// `ringmq receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Broker connection.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Failover.
    #[command(flatten)]
    pub failover: FailoverArgs,
    /// Queue to consume from.
    pub queue: String,
    /// Stop after this many messages (with --numbered: this many distinct numbers).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop when no message arrived for this long (`0.5`, `2s`, `100ms`); default: wait forever.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Credit: most unacknowledged deliveries at once.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u32,
    /// Only report how many were received, not the bodies.
    #[arg(short, long)]
    pub quiet: bool,
    /// Expect the bodies of `send --numbered`; at the end print
    /// `received N distinct, D duplicates, M missing` and exit 1 if any is missing.
    #[arg(long)]
    pub numbered: bool,
}
