//! `ringmq queue|exchange|bind|unbind`: management over the native protocol with the blocking
//! client. Each command prints one line on success; a broker refusal prints the broker's reason
//! to stderr and exits 1.

use std::process::ExitCode;

use ringmq_client::blocking::Connection;
use ringmq_client::{ClientError, ConnectOptions};
use ringmq_core::frame::{ExchangeKind, QueueOptions};
use ringmq_core::replication_level::REPLICATE_ARGUMENT;

use crate::cli::{BindingArgs, BrokerArgs, ExchangeCommand, ExchangeType, QueueCommand};

/// `ringmq queue ...`
pub fn queue(broker: &BrokerArgs, command: QueueCommand) -> ExitCode {
    run(broker, |connection| match command {
        QueueCommand::Add { name, max_count, max_bytes, auto_delete, replicate } => {
            let options = QueueOptions { auto_delete, max_count, max_bytes, ..QueueOptions::default() };
            let arguments: Vec<(&str, &str)> =
                replicate.iter().map(|level| (REPLICATE_ARGUMENT, level.name())).collect();
            connection.declare_queue(&name, options, &arguments)?;
            println!("queue '{name}' declared");
            Ok(())
        }
        QueueCommand::Del { name } => {
            connection.delete_queue(&name)?;
            println!("queue '{name}' deleted");
            Ok(())
        }
        QueueCommand::Purge { name } => {
            connection.purge_queue(&name)?;
            println!("queue '{name}' purged");
            Ok(())
        }
        QueueCommand::List => {
            let queues = connection.list_queues()?;
            println!(
                "{:<32} {:>10} {:>12} {:>9} {:>9} {:>12} {:>12}",
                "queue", "depth", "bytes", "unacked", "consumers", "enqueued", "dequeued"
            );
            for q in queues {
                println!(
                    "{:<32} {:>10} {:>12} {:>9} {:>9} {:>12} {:>12}",
                    q.name, q.depth, q.bytes, q.unacked, q.consumers, q.enqueued, q.dequeued
                );
            }
            Ok(())
        }
    })
}

/// `ringmq exchange ...`
pub fn exchange(broker: &BrokerArgs, command: ExchangeCommand) -> ExitCode {
    run(broker, |connection| match command {
        ExchangeCommand::Add { name, kind } => {
            connection.declare_exchange(&name, exchange_kind(kind))?;
            println!("exchange '{name}' declared");
            Ok(())
        }
        ExchangeCommand::Del { name } => {
            connection.delete_exchange(&name)?;
            println!("exchange '{name}' deleted");
            Ok(())
        }
        ExchangeCommand::List => {
            println!("{:<32} {:<8} {:>8}", "exchange", "type", "bindings");
            for e in connection.list_exchanges()? {
                let name = if e.name.is_empty() { "(default)".to_string() } else { e.name };
                println!("{:<32} {:<8} {:>8}", name, format!("{:?}", e.kind).to_lowercase(), e.bindings);
            }
            Ok(())
        }
    })
}

/// `ringmq bind` and `ringmq unbind`.
pub fn bind(broker: &BrokerArgs, binding: BindingArgs, add: bool) -> ExitCode {
    run(broker, |connection| {
        let BindingArgs { exchange, queue, key } = &binding;
        if add {
            connection.bind(exchange, queue, key)?;
            println!("bound '{queue}' to '{exchange}' with key '{key}'");
        } else {
            connection.unbind(exchange, queue, key)?;
            println!("unbound '{queue}' from '{exchange}' with key '{key}'");
        }
        Ok(())
    })
}

/// Connects, runs `action`, and turns its outcome into an exit status.
pub fn run(broker: &BrokerArgs, action: impl FnOnce(&Connection) -> Result<(), ClientError>) -> ExitCode {
    let outcome = connect(broker).and_then(|connection| {
        action(&connection)?;
        connection.close()
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringmq: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A blocking connection as the command line asked for it.
///
/// # Errors
/// The broker cannot be reached or refused the connection.
pub fn connect(broker: &BrokerArgs) -> Result<Connection, ClientError> {
    let options = ConnectOptions { admin: broker.ha_admin, ..ConnectOptions::default() };
    Connection::connect(broker.broker.as_str(), options)
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Topic => ExchangeKind::Topic,
    }
}
