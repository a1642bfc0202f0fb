//! `ringmq send`, `ringmq receive` and `ringmq bench`: messages from the shell.
//!
//! `send` waits for every confirm before it exits and exits 1 if the broker refused any message
//! (a full queue, an unknown exchange), printing the broker's reason. `receive` acks what it
//! printed, so what it reports received is gone from the queue.
//!
//! Both take a URL list with `-b` and the failover flags (`--reconnect`, `--heartbeat`,
//! `--reconnect-timeout`), and have a numbered mode, the tools that prove a cluster loses
//! nothing across failovers:
//! - `send --numbered` sends the bodies "0", "1", "2"... (at `--rate`, `--count` of them or until
//!   SIGINT/SIGTERM), waits for the outstanding confirms and prints `sent N, confirmed N`;
//! - `receive --numbered` prints `received N distinct, D duplicates, M missing, R redelivered
//!   again`, where missing counts the numbers below the highest seen that never arrived,
//!   duplicates the numbers that came again not flagged redelivered (stored twice), and
//!   redelivered again those that came again flagged redelivered (delivered again after a
//!   failover, as at-least-once allows); exits 1 if M > 0.
//!
//! Those two lines are read by scripts and tests: their words do not change.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq_broker::config::parse_duration;
use ringmq_client::blocking::Connection;
use ringmq_client::{ClientError, ConnectOptions};
use ringmq_core::frame::Message;

use crate::cli::{BrokerArgs, FailoverArgs, ReceiveArgs, SendArgs};
use crate::stop_signal;

/// How often a numbered receive looks at the stop flag while no message comes.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Connects with the failover flags; `producer_id` stamps every publish.
fn connect(
    broker: &BrokerArgs,
    failover: &FailoverArgs,
    producer_id: Option<String>,
) -> Result<Connection, Box<dyn std::error::Error>> {
    let heartbeat_interval = failover.heartbeat.as_deref().map(|t| parse_duration("heartbeat", t)).transpose()?;
    let reconnect_timeout =
        failover.reconnect_timeout.as_deref().map(|t| parse_duration("reconnect-timeout", t)).transpose()?;
    let options = ConnectOptions {
        admin: broker.ha_admin,
        heartbeat_interval,
        reconnect: failover.reconnect,
        reconnect_timeout,
        producer_id,
        ..ConnectOptions::default()
    };
    Ok(Connection::connect(broker.broker.as_str(), options)?)
}

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
    if args.numbered {
        return send_numbered(args);
    }
    let connection = connect(&args.broker, &args.failover, args.producer_id.clone())?;
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

/// `ringmq send --numbered`: bodies "0", "1", ... until `--count` or a stop signal, at most
/// `--rate` per second; then every confirm, and the summary line.
fn send_numbered(args: &SendArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("--rate must be a positive number of messages per second; got {rate}").into());
        }
    }
    stop_signal::install();
    let connection = connect(&args.broker, &args.failover, args.producer_id.clone())?;
    let publisher = connection.publisher()?;
    let routing_key = Bytes::from(args.routing_key.clone().into_bytes());
    let started = Instant::now();
    let mut sent = 0u64;
    let mut failure: Option<ClientError> = None;
    while args.count.is_none_or(|count| sent < count) && !stop_signal::requested() {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(STOP_POLL));
                continue;
            }
        }
        let message =
            Message { routing_key: routing_key.clone(), body: Bytes::from(sent.to_string()), ..Message::default() };
        if let Err(error) = publisher.publish(&args.exchange, message) {
            failure = Some(error);
            break;
        }
        sent += 1;
    }
    let summary = match failure {
        Some(_) => None,
        None => match publisher.wait_for_confirms() {
            Ok(summary) => Some(summary),
            Err(error) => {
                failure = Some(error);
                None
            }
        },
    };
    let confirmed = match &summary {
        Some(summary) => summary.stored,
        None => sent - publisher.unconfirmed().min(sent),
    };
    println!("sent {sent}, confirmed {confirmed}");
    if let Some(error) = failure {
        eprintln!("ringmq send: {error}");
        return Ok(ExitCode::FAILURE);
    }
    let summary = summary.expect("confirms were awaited");
    let _ = connection.close();
    if summary.unroutable > 0 || summary.rejected > 0 {
        eprintln!("ringmq send: {} unroutable, {} rejected", summary.unroutable, summary.rejected);
        if let Some(rejection) = summary.first_rejection {
            eprintln!("ringmq send: rejected from seq {}: {}", rejection.first.0, rejection.reason);
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Which numbers a numbered receive has seen.
#[derive(Debug, Default)]
struct NumberedTally {
    /// Bit `n` is set once number `n` arrived.
    seen: Vec<u64>,
    /// Distinct numbers received.
    distinct: u64,
    /// Numbers received again, not flagged redelivered: stored twice.
    duplicates: u64,
    /// Numbers received again flagged redelivered: delivered again after a failover or a lost
    /// ack, as at-least-once allows.
    redelivered: u64,
    /// One past the highest number received.
    end: u64,
}

impl NumberedTally {
    /// Records number `n`, which came flagged `redelivered` or not.
    fn add(&mut self, n: u64, redelivered: bool) {
        let word = usize::try_from(n / 64).expect("a message number fits memory");
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let bit = 1u64 << (n % 64);
        if self.seen[word] & bit != 0 {
            if redelivered {
                self.redelivered += 1;
            } else {
                self.duplicates += 1;
            }
        } else {
            self.seen[word] |= bit;
            self.distinct += 1;
            self.end = self.end.max(n + 1);
        }
    }

    /// Numbers below the highest seen that never arrived.
    fn missing(&self) -> u64 {
        self.end - self.distinct
    }
}

/// `ringmq receive --numbered`: acks everything, counts distinct numbers and duplicates, stops at
/// `--count` distinct, an idle `--timeout`, or a stop signal; prints the summary line.
fn receive_numbered(args: &ReceiveArgs, idle: Option<Duration>) -> Result<ExitCode, Box<dyn std::error::Error>> {
    stop_signal::install();
    let connection = connect(&args.broker, &args.failover, None)?;
    let mut consumer = connection.subscribe(&args.queue, args.prefetch)?;
    let mut tally = NumberedTally::default();
    let mut last_arrival = Instant::now();
    let mut failure: Option<String> = None;
    while args.count.is_none_or(|count| tally.distinct < count) && !stop_signal::requested() {
        let wait = match idle {
            Some(idle) => {
                let left = idle.saturating_sub(last_arrival.elapsed());
                if left.is_zero() {
                    break;
                }
                left.min(STOP_POLL)
            }
            None => STOP_POLL,
        };
        let delivery = match consumer.recv_timeout(wait) {
            Err(ClientError::Timeout { .. }) => continue,
            Ok(Some(delivery)) => delivery,
            Ok(None) => break,
            Err(error) => {
                failure = Some(error.to_string());
                break;
            }
        };
        last_arrival = Instant::now();
        match std::str::from_utf8(&delivery.message.body).ok().and_then(|text| text.parse::<u64>().ok()) {
            Some(n) => tally.add(n, delivery.redelivered),
            None => {
                let body = String::from_utf8_lossy(&delivery.message.body).into_owned();
                failure = Some(format!("a body must be a number (send --numbered); got {body:?}"));
                break;
            }
        }
        consumer.ack(delivery.tag)?;
    }
    if failure.is_none() {
        consumer.flush()?;
        let _ = connection.close();
    }
    println!(
        "received {} distinct, {} duplicates, {} missing, {} redelivered again",
        tally.distinct,
        tally.duplicates,
        tally.missing(),
        tally.redelivered
    );
    if let Some(failure) = failure {
        eprintln!("ringmq receive: {failure}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if tally.missing() > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
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
    if args.numbered {
        return receive_numbered(&args, timeout).unwrap_or_else(|error| {
            eprintln!("ringmq receive: {error}");
            ExitCode::FAILURE
        });
    }
    let outcome = (|| -> Result<(u64, u64), Box<dyn std::error::Error>> {
        let connection = connect(&args.broker, &args.failover, None)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_distinct_duplicates_and_gaps_below_the_highest() {
        // Goal: the numbers the summary line prints.
        let mut tally = NumberedTally::default();
        for (n, redelivered) in [(0, false), (1, false), (1, false), (3, false), (200, false), (3, true)] {
            tally.add(n, redelivered);
        }
        assert_eq!((tally.distinct, tally.duplicates, tally.redelivered), (4, 1, 1));
        // 2 and 4..=199 never came.
        assert_eq!(tally.missing(), 197);
        assert_eq!(NumberedTally::default().missing(), 0);
    }
}
