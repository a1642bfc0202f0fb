//! `ringmq send`, `ringmq receive` and `ringmq bench`: messages from the shell.
//!
//! `send` waits for every confirm before it exits and exits 1 if the broker refused any message
//! (a full queue, an unknown exchange), printing the broker's reason. `receive` acks what it
//! printed, so what it reports received is gone from the queue.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use ringmq_client::ClientError;
use ringmq_core::frame::Message;

use crate::cli::{ReceiveArgs, SendArgs};
use crate::config::parse_duration;
use crate::manage::connect;

/// `ringmq send`.
pub fn send(args: SendArgs) -> ExitCode {
    match send_messages(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringmq send: {error}");
            ExitCode::FAILURE
        }
    }
}

fn send_messages(args: &SendArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let connection = connect(&args.broker)?;
    let publisher = connection.publisher()?;
    let routing_key = Bytes::from(args.routing_key.clone().into_bytes());
    let publish = |body: Bytes| {
        let message = Message { routing_key: routing_key.clone(), body, ..Message::default() };
        publisher.publish(&args.exchange, message).map(|_| ())
    };
    let started = Instant::now();
    if let Some(count) = args.count {
        let body = Bytes::from(vec![b'x'; args.size]);
        for _ in 0..count {
            publish(body.clone())?;
        }
    } else if !args.messages.is_empty() {
        for text in &args.messages {
            publish(Bytes::from(text.clone().into_bytes()))?;
        }
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            publish(Bytes::from(line.into_bytes()))?;
        }
    }
    let summary = publisher.wait_for_confirms()?;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = summary.total() as f64 / elapsed.max(1e-9);
    println!(
        "sent {} messages: {} stored, {} unroutable, {} rejected ({:.0} msg/s)",
        summary.total(),
        summary.stored,
        summary.unroutable,
        summary.rejected,
        rate
    );
    connection.close()?;
    if let Some(rejection) = summary.first_rejection {
        eprintln!("ringmq send: rejected from seq {}: {}", rejection.first.0, rejection.reason);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `ringmq receive`.
pub fn receive(args: ReceiveArgs) -> ExitCode {
    let timeout = match args.timeout.as_deref().map(|t| parse_duration("timeout", t)).transpose() {
        Ok(timeout) => timeout,
        Err(error) => {
            eprintln!("ringmq receive: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = (|| -> Result<(u64, u64), ClientError> {
        let connection = connect(&args.broker)?;
        let mut consumer = connection.subscribe(&args.queue, args.prefetch)?;
        let mut received = 0u64;
        let mut redelivered = 0u64;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while args.count.is_none_or(|count| received < count) {
            let delivery = match timeout {
                // An idle timeout ends the receive normally.
                Some(timeout) => match consumer.recv_timeout(timeout) {
                    Err(ClientError::Timeout { .. }) => None,
                    other => other?,
                },
                None => consumer.recv()?,
            };
            let Some(delivery) = delivery else { break };
            received += 1;
            redelivered += u64::from(delivery.redelivered);
            if !args.quiet {
                // A closed stdout (a pipe into `head`) ends the receive, not the process.
                if writeln!(out, "{}", String::from_utf8_lossy(&delivery.message.body)).is_err() {
                    break;
                }
            }
            consumer.ack(delivery.tag)?;
        }
        consumer.flush()?;
        connection.close()?;
        Ok((received, redelivered))
    })();
    match outcome {
        Ok((received, redelivered)) => {
            let summary = format!("received {received} messages ({redelivered} redelivered)");
            if args.quiet {
                println!("{summary}");
            } else {
                eprintln!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringmq receive: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `ringmq bench`.
pub fn bench(args: ringmq_bench::BenchArgs) -> ExitCode {
    match ringmq_bench::run(&args) {
        Ok(report) => {
            println!("{report}");
            if report.lost > 0 {
                eprintln!("ringmq bench: {} messages lost", report.lost);
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringmq bench: {error}");
            ExitCode::FAILURE
        }
    }
}
