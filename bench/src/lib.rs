//! The load generator behind `ringmq bench`: producers publish numbered messages with confirms,
//! consumers receive and ack them, and the report gives throughput, confirm and end-to-end
//! latency percentiles (hdrhistogram), and a check that exactly the messages sent were received.
//!
//! Every producer and consumer is a task on one single-threaded tokio runtime, so the load
//! generator takes one core and leaves the rest to the broker.
//!
//! Each body starts with a 16-byte stamp: the producer's index and the message's number
//! (packed in a `u64`: producer in the top 24 bits, number in the low 40), then the time it was
//! handed to the client, in nanoseconds since the run began. In fixed-rate mode, publishes are
//! paced on the runtime's 1 ms timer ticks.
//!
//! Invariants: a run fails (`lost > 0`) if any sent message was not received; duplicates are
//! counted and reported, never hidden.
//!
//! `loopback_cluster` starts the three-broker loopback clusters of the HA measurement binaries in
//! `src/bin` (`failover-time`, `hung-backup-stall`).

pub mod loopback_cluster;
mod report;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use ringmq_client::{ClientError, ConnectOptions, Connection};
use ringmq_core::frame::{Message, QueueOptions};

pub use report::Report;

/// `ringmq bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Broker address, `host:port`.
    #[arg(short = 'b', long = "broker", default_value = "127.0.0.1:5672")]
    pub broker: String,
    /// Queue to use; declared if missing and purged before the run.
    #[arg(long, default_value = "bench")]
    pub queue: String,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumer connections. With 0, publish only: the run then checks that the queue holds
    /// every message confirmed (counted as received), and purges it.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Body size in bytes (at least 16: the stamp).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per producer (ignored with --duration).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Publish for this long instead of a count (seconds, or with a unit: 10s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Total publish rate in msg/s, spread over the producers; default: as fast as confirms allow.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Unconfirmed publishes per producer.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// Publish frame target size in bytes.
    #[arg(long, default_value_t = 65536)]
    pub frame_bytes: u32,
    /// Consumer credit (prefetch).
    #[arg(long, default_value_t = 10_000)]
    pub prefetch: u32,
}

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A client operation failed.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The options make no sense.
    #[error("{0}")]
    Options(String),
    /// The consumers stopped receiving before every message arrived.
    #[error("consumers received nothing for {idle:?} with {missing} messages still missing")]
    Stalled {
        /// How long nothing arrived.
        idle: Duration,
        /// Messages not received.
        missing: u64,
    },
}

/// How long consumers wait with nothing arriving before the run is declared stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of the stamp at the start of every body.
const STAMP_BYTES: usize = 16;

/// Runs a benchmark and returns its report.
///
/// # Errors
/// Bad options, a client failure, or a stall.
pub fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.size < STAMP_BYTES {
        return Err(BenchError::Options(format!("--size must be at least {STAMP_BYTES}; got {}", args.size)));
    }
    if args.producers == 0 {
        return Err(BenchError::Options("--producers must be at least 1; got 0".into()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Options(format!("cannot start the load generator's runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run_async(args.clone()))
}

/// What all tasks of a run share.
struct RunState {
    /// Time zero of the run.
    start: Instant,
    /// Publish-to-confirm latency, ns.
    confirm_ns: RefCell<Histogram<u64>>,
    /// Publish-to-receive latency, ns.
    end_to_end_ns: RefCell<Histogram<u64>>,
    /// Per producer: a bit per message number, set when received.
    seen: RefCell<Vec<Vec<u64>>>,
    /// Distinct messages received.
    received: RefCell<u64>,
    /// Messages received more than once.
    duplicates: RefCell<u64>,
    /// Per producer: how many it published (known once it finishes).
    published: RefCell<Vec<Option<u64>>>,
    /// Time of the last receive.
    last_receive: RefCell<Instant>,
}

async fn run_async(args: BenchArgs) -> Result<Report, BenchError> {
    let options = ConnectOptions {
        publish_window: args.window,
        publish_frame_bytes: args.frame_bytes,
        ..ConnectOptions::default()
    };
    let admin = Connection::connect(args.broker.as_str(), options.clone()).await?;
    admin.declare_queue(&args.queue, QueueOptions::default(), &[]).await?;
    admin.purge_queue(&args.queue).await?;

    let per_producer_max = if args.duration.is_some() { u64::from(u32::MAX) } else { args.count };
    let histogram = || Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    let state = Rc::new(RunState {
        start: Instant::now(),
        confirm_ns: RefCell::new(histogram()),
        end_to_end_ns: RefCell::new(histogram()),
        seen: RefCell::new((0..args.producers).map(|_| Vec::new()).collect()),
        received: RefCell::new(0),
        duplicates: RefCell::new(0),
        published: RefCell::new(vec![None; args.producers as usize]),
        last_receive: RefCell::new(Instant::now()),
    });

    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let connection = Connection::connect(args.broker.as_str(), options.clone()).await?;
        let consumer = connection.subscribe(&args.queue, args.prefetch).await?;
        consumers.push(tokio::task::spawn_local(consume(connection, consumer, state.clone())));
    }
    let mut producers = Vec::new();
    for index in 0..args.producers {
        let connection = Connection::connect(args.broker.as_str(), options.clone()).await?;
        let task = produce(connection, index, per_producer_max, args.clone(), state.clone());
        producers.push(tokio::task::spawn_local(task));
    }
    let mut publish_failure = None;
    for producer in producers {
        if let Err(error) = producer.await.expect("producer task panicked") {
            publish_failure.get_or_insert(error);
        }
    }
    let publish_end = state.start.elapsed();
    if let Some(error) = publish_failure {
        return Err(error.into());
    }
    let sent: u64 = state.published.borrow().iter().map(|p| p.unwrap_or(0)).sum();
    if args.consumers == 0 {
        return publish_only_report(&args, admin, &state, sent, publish_end).await;
    }
    // Wait for the consumers to see everything, or to stall.
    loop {
        let received = *state.received.borrow();
        if received >= sent {
            break;
        }
        let idle = state.last_receive.borrow().elapsed();
        if idle > STALL_TIMEOUT {
            return Err(BenchError::Stalled { idle, missing: sent - received });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = state.last_receive.borrow().duration_since(state.start);
    for consumer in consumers {
        consumer.abort();
    }
    admin.close().await?;
    let received = *state.received.borrow();
    let report = Report::new(
        &args,
        sent,
        received,
        *state.duplicates.borrow(),
        publish_end,
        end,
        &state.confirm_ns.borrow(),
        &state.end_to_end_ns.borrow(),
    );
    Ok(report)
}

/// The end of a run without consumers: every confirmed message must be in the queue (it is then
/// counted as received), and the queue is purged.
async fn publish_only_report(
    args: &BenchArgs,
    admin: Connection,
    state: &RunState,
    sent: u64,
    publish_end: Duration,
) -> Result<Report, BenchError> {
    let queues = admin.list_queues().await?;
    let held = queues.iter().find(|q| q.name == args.queue).map_or(0, |q| q.depth);
    admin.purge_queue(&args.queue).await?;
    admin.close().await?;
    let no_receives = state.end_to_end_ns.borrow();
    Ok(Report::new(args, sent, held.min(sent), 0, publish_end, publish_end, &state.confirm_ns.borrow(), &no_receives))
}

/// One producer: publishes numbered, stamped messages and records confirm latency.
async fn produce(
    connection: Connection,
    index: u32,
    max: u64,
    args: BenchArgs,
    state: Rc<RunState>,
) -> Result<(), ClientError> {
    let publisher = Rc::new(connection.publisher()?);
    // Send times of unconfirmed publishes, oldest first.
    let sent_at: Rc<RefCell<VecDeque<u64>>> = Rc::new(RefCell::new(VecDeque::new()));
    let recorder = tokio::task::spawn_local(record_confirms(publisher.clone(), sent_at.clone(), state.clone()));
    let interval_ns = args.rate.map(|rate| 1e9 * f64::from(args.producers) / rate.max(1) as f64);
    let deadline = args.duration.map(|d| state.start + d);
    let padding = Bytes::from(vec![b'x'; args.size - STAMP_BYTES]);
    let routing_key = Bytes::from(args.queue.clone().into_bytes());
    let mut number = 0u64;
    while number < max {
        // The deadline is checked every 1024 messages: a clock read per message costs the
        // generator several percent.
        if number.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(interval) = interval_ns {
            // Paced on the runtime's timer (1 ms ticks): messages due within a tick go together,
            // each stamped with the time it was actually handed to the client.
            let scheduled = Duration::from_nanos((number as f64 * interval) as u64);
            let now = state.start.elapsed();
            if scheduled > now {
                tokio::time::sleep(scheduled - now).await;
            }
        }
        let stamp_ns = state.start.elapsed().as_nanos() as u64;
        let mut body = BytesMut::with_capacity(args.size);
        body.put_u64_le((u64::from(index) << 40) | number);
        body.put_u64_le(stamp_ns);
        body.extend_from_slice(&padding);
        sent_at.borrow_mut().push_back(stamp_ns);
        let message = Message { routing_key: routing_key.clone(), body: body.freeze(), ..Message::default() };
        publisher.publish("", message).await?;
        number += 1;
    }
    state.published.borrow_mut()[index as usize] = Some(number);
    // Every confirm is recorded once the recorder has emptied the send times.
    while !sent_at.borrow().is_empty() {
        if recorder.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    recorder.abort();
    let summary = publisher.wait_for_confirms().await?;
    if let Some(rejection) = summary.first_rejection {
        return Err(ClientError::Failed { code: rejection.code, message: rejection.reason });
    }
    connection.close().await
}

/// Records each confirmed publish's latency, matching confirms to send times in order.
async fn record_confirms(
    publisher: Rc<ringmq_client::Publisher>,
    sent_at: Rc<RefCell<VecDeque<u64>>>,
    state: Rc<RunState>,
) {
    while let Ok(Some(range)) = publisher.next_confirm().await {
        let now_ns = state.start.elapsed().as_nanos() as u64;
        let mut sent_at = sent_at.borrow_mut();
        let mut histogram = state.confirm_ns.borrow_mut();
        for _ in range.first.0..=range.last.0 {
            let Some(sent) = sent_at.pop_front() else { break };
            histogram.saturating_record(now_ns.saturating_sub(sent).max(1));
        }
    }
}

/// One consumer: receives, checks numbers, records end-to-end latency, acks.
async fn consume(
    connection: Connection,
    mut consumer: ringmq_client::Consumer,
    state: Rc<RunState>,
) -> Result<(), ClientError> {
    while let Some(delivery) = consumer.recv().await? {
        let body = &delivery.message.body;
        // One clock read per message serves both the latency and the stall detector.
        let now = Instant::now();
        let now_ns = now.duration_since(state.start).as_nanos() as u64;
        if body.len() >= STAMP_BYTES {
            let id = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
            let stamp = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
            let (producer, number) = ((id >> 40) as usize, id & ((1 << 40) - 1));
            let mut seen = state.seen.borrow_mut();
            if let Some(bits) = seen.get_mut(producer) {
                let word = (number / 64) as usize;
                if bits.len() <= word {
                    bits.resize(word + 1, 0);
                }
                let mask = 1u64 << (number % 64);
                if bits[word] & mask == 0 {
                    bits[word] |= mask;
                    *state.received.borrow_mut() += 1;
                    state.end_to_end_ns.borrow_mut().saturating_record(now_ns.saturating_sub(stamp).max(1));
                } else {
                    *state.duplicates.borrow_mut() += 1;
                }
            }
        }
        *state.last_receive.borrow_mut() = now;
        consumer.ack(delivery.tag)?;
    }
    drop(connection);
    Ok(())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1.0)
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!("must be a positive duration such as 10, 10s or 500ms; got '{text}'")),
    }
}
