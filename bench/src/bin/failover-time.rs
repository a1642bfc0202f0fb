//! `failover-time`: measures how long publishers wait across a failover: from kill -9 of the
//! primary to the first publish confirm from the new primary, with the promotion issued at once
//! (as a cluster manager that detected the death would).
//!
//! Each round starts a fresh 3-broker cluster on loopback (`ringmq broker` processes, `ha-replicate
//! all`, the given link intervals), promotes the first broker, waits until the others are ready,
//! then runs one producer (failover URL of all three, `reconnect`, the given heartbeat and
//! reconnect interval) publishing 1 KiB messages at a steady rate. After a second of steady
//! publishing it kills the primary (SIGKILL), promotes the second broker, and records the time to
//! the first confirm that arrives after the client reconnected. The new primary is `recovering`
//! until the third broker (ready under the old primary) links to it and catches up, so the figure
//! includes that: it is the time a publisher is held, not only the client's reconnect.
//!
//! Usage: `cargo run --release -p ringmq-bench --bin failover-time -- --ringmq target/release/ringmq`
//! (`--help` for the intervals and the round count).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use ringmq_bench::loopback_cluster::{admin, run_rounds, start_cluster, wait_for_state, ClusterConfig};
use ringmq_client::{blocking, ConnectOptions};
use ringmq_core::frame::{Message, QueueOptions};

/// Options.
#[derive(Debug, Parser)]
struct Args {
    /// The `ringmq` binary.
    #[arg(long)]
    ringmq: String,
    /// Rounds (one fresh cluster each).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// `link-heartbeat-interval` of the brokers, seconds.
    #[arg(long, default_value_t = 0.1)]
    link_heartbeat: f64,
    /// `link-maintenance-interval` of the brokers, seconds.
    #[arg(long, default_value_t = 0.1)]
    link_maintenance: f64,
    /// The client's heartbeat interval, seconds.
    #[arg(long, default_value_t = 0.1)]
    heartbeat: f64,
    /// The client's first wait between two passes over the addresses, seconds.
    #[arg(long, default_value_t = 0.01)]
    reconnect_interval: f64,
    /// Publishes per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
}

fn main() {
    let args = Args::parse();
    println!(
        "failover time: kill -9 of the primary to the first confirm from the new primary; link heartbeat {}s, \
         maintenance {}s, client heartbeat {}s, reconnect interval {}s, {} msg/s",
        args.link_heartbeat, args.link_maintenance, args.heartbeat, args.reconnect_interval, args.rate
    );
    run_rounds(args.rounds, || measure(&args));
}

/// One round; returns the failover time.
fn measure(args: &Args) -> Result<Duration, String> {
    let config = ClusterConfig {
        ringmq: args.ringmq.clone(),
        link_heartbeat_s: args.link_heartbeat,
        link_maintenance_s: args.link_maintenance,
        ha_backup_timeout_s: None,
    };
    let mut cluster = start_cluster(&config)?;
    admin(&cluster.addresses()[0])?.ha_promote().map_err(|e| format!("promote: {e}"))?;
    for address in &cluster.addresses()[1..] {
        wait_for_state(address, "ready")?;
    }
    let url = cluster.addresses().join(",");
    let options = ConnectOptions {
        reconnect: true,
        heartbeat_interval: Some(Duration::from_secs_f64(args.heartbeat)),
        reconnect_interval: Duration::from_secs_f64(args.reconnect_interval),
        reconnect_timeout: Some(Duration::from_secs(10)),
        ..ConnectOptions::default()
    };
    let connection = Arc::new(blocking::Connection::connect(url.as_str(), options).map_err(|e| e.to_string())?);
    connection.declare_queue("failover", QueueOptions::default(), &[]).map_err(|e| e.to_string())?;
    let publisher = Arc::new(connection.publisher().map_err(|e| e.to_string())?);
    let stop = Arc::new(AtomicBool::new(false));
    // Confirms arriving after a reconnect, with their arrival time.
    let first_after_reconnect: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let confirms = std::thread::spawn({
        let (publisher, connection, stop, first) =
            (publisher.clone(), connection.clone(), stop.clone(), first_after_reconnect.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                match publisher.next_confirm() {
                    Ok(Some(_)) if connection.stats().reconnects > 0 => {
                        first.lock().expect("not poisoned").get_or_insert_with(Instant::now);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    });
    let publishing = std::thread::spawn({
        let (publisher, stop) = (publisher.clone(), stop.clone());
        let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        move || {
            let body = Bytes::from(vec![b'x'; 1024]);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let message = Message {
                    routing_key: Bytes::from_static(b"failover"),
                    message_id: Bytes::new(),
                    headers: Vec::new(),
                    body: body.clone(),
                };
                if publisher.publish("", message).is_err() {
                    break;
                }
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    cluster.kill(0);
    let promoted = admin(&cluster.addresses()[1]).and_then(|c| c.ha_promote().map_err(|e| format!("promote: {e}")));
    let deadline = killed_at + Duration::from_secs(10);
    let first = loop {
        if let Some(first) = *first_after_reconnect.lock().expect("not poisoned") {
            break Some(first);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    stop.store(true, Ordering::Relaxed);
    drop(cluster);
    let _ = publishing.join();
    let _ = confirms.join();
    promoted?;
    first.map(|first| first.duration_since(killed_at)).ok_or_else(|| "no confirm within 10 s of the kill".to_string())
}
