//! `ringmq`: the broker daemon and every command-line tool, in one binary.
//!
//! - `broker`: run a broker (`daemon`, options in the library's `config`).
//! - `queue`, `exchange`, `bind`, `unbind`: management over the native protocol (`manage`).
//! - `ha status`, `ha promote`: HA state and promotion (`ha`).
//! - `send`, `receive`: messages from the shell (`shell`).
//! - `bench`: the load generator (`ringmq-bench`).
//! - `cluster`: a local HA cluster on loopback, for trying it out (`cluster`).

mod cli;
mod cluster;
mod daemon;
mod fatal;
mod ha;
mod manage;
mod shell;
mod stop_signal;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Broker { args } => daemon::run(&args),
        cli::Command::Queue { broker, command } => manage::queue(&broker, command),
        cli::Command::Exchange { broker, command } => manage::exchange(&broker, command),
        cli::Command::Bind { broker, binding } => manage::bind(&broker, binding, true),
        cli::Command::Unbind { broker, binding } => manage::bind(&broker, binding, false),
        cli::Command::Ha { broker, command } => ha::run(&broker, command),
        cli::Command::Send(args) => shell::send(args),
        cli::Command::Receive(args) => shell::receive(args),
        cli::Command::Bench(args) => shell::bench(args),
        cli::Command::Cluster(args) => cluster::run(&args),
    }
}
