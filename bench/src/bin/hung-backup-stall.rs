//! `hung-backup-stall`: measures how long publishers are held when a ready backup hangs while
//! another ready backup is left: from SIGSTOP of one backup to the confirms of what was published
//! meanwhile.
//!
//! Each round starts a fresh 3-broker cluster on loopback (`ringmq broker` processes, `--shards 1`,
//! `ha-replicate all`, the given link intervals and `ha-backup-timeout`), promotes the first
//! broker, waits until the others are ready, then runs one producer on the primary publishing
//! 1 KiB messages at a steady rate, with a thread reading the confirms. After a second of steady
//! publishing it stops the third broker (SIGSTOP, then waits until every thread of it is stopped,
//! since `kill` returns before the process stops), and records the stall: the longest time any
//! message published from the signal on waited for its confirm. The round ends 3 s after the
//! confirm that set that figure, once nothing is waiting longer, or fails 30 s after the signal.
//! The stopped broker is continued (SIGCONT) and every broker killed at the end of the round.
//!
//! The primary confirms nothing while the hung backup is ready: it drops it after twice
//! `link-heartbeat-interval` without a word from it, and releases the held confirms once the other
//! ready backup holds a ready set without it, or after `ha-backup-timeout` at the latest.
//!
//! Usage: `cargo run --release -p ringmq-bench --bin hung-backup-stall -- --ringmq
//! target/release/ringmq` (`--help` for the intervals, the rate and the round count).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use ringmq_bench::loopback_cluster::{admin, run_rounds, start_cluster, wait_for_state, ClusterConfig};
use ringmq_client::{blocking, ConnectOptions};
use ringmq_core::frame::{ConfirmOutcome, Message, QueueOptions};

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
    #[arg(long, default_value_t = 0.5)]
    link_heartbeat: f64,
    /// `link-maintenance-interval` of the brokers, seconds.
    #[arg(long, default_value_t = 0.1)]
    link_maintenance: f64,
    /// `ha-backup-timeout` of the brokers, seconds; the broker's default (10 s) if not given.
    #[arg(long)]
    backup_timeout: Option<f64>,
    /// Publishes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
}

fn main() {
    let args = Args::parse();
    let backup_timeout = args.backup_timeout.map_or_else(|| "default".to_string(), |t| format!("{t}s"));
    println!(
        "hung backup stall: SIGSTOP of one of two ready backups to the confirms of what was published meanwhile \
         (longest confirm wait); link heartbeat {}s, maintenance {}s, ha-backup-timeout {backup_timeout}, {} msg/s",
        args.link_heartbeat, args.link_maintenance, args.rate
    );
    run_rounds(args.rounds, || measure(&args));
}

/// What the publishing and the confirm-reading threads share.
#[derive(Debug, Default)]
struct ConfirmWaits {
    /// Sequence number and send time of every unconfirmed publish, oldest first.
    unconfirmed: VecDeque<(u64, Instant)>,
    /// When the backup was sent SIGSTOP; only publishes from then on count.
    stopped_at: Option<Instant>,
    /// The longest confirm wait of a publish sent from `stopped_at` on.
    wait_longest: Duration,
    /// When the confirm that set `wait_longest` arrived.
    wait_longest_confirmed_at: Option<Instant>,
    /// Publishes confirmed other than stored (refused or unroutable).
    not_stored: u64,
}

impl ConfirmWaits {
    /// How long the oldest publish sent from `stopped_at` on and still unconfirmed has waited.
    fn wait_open(&self, now: Instant) -> Duration {
        let Some(stopped_at) = self.stopped_at else { return Duration::ZERO };
        let first_after_stop = self.unconfirmed.partition_point(|&(_, sent)| sent < stopped_at);
        self.unconfirmed.get(first_after_stop).map_or(Duration::ZERO, |&(_, sent)| now.duration_since(sent))
    }
}

/// One round; returns the stall.
fn measure(args: &Args) -> Result<Duration, String> {
    let config = ClusterConfig {
        ringmq: args.ringmq.clone(),
        link_heartbeat_s: args.link_heartbeat,
        link_maintenance_s: args.link_maintenance,
        ha_backup_timeout_s: args.backup_timeout,
    };
    let cluster = start_cluster(&config)?;
    admin(&cluster.addresses()[0])?.ha_promote().map_err(|e| format!("promote: {e}"))?;
    for address in &cluster.addresses()[1..] {
        wait_for_state(address, "ready")?;
    }
    let connection = blocking::Connection::connect(cluster.addresses()[0].as_str(), ConnectOptions::default())
        .map_err(|e| e.to_string())?;
    connection.declare_queue(QUEUE, QueueOptions::default(), &[]).map_err(|e| e.to_string())?;
    let publisher = Arc::new(connection.publisher().map_err(|e| e.to_string())?);
    let waits = Arc::new(Mutex::new(ConfirmWaits::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let confirms = std::thread::spawn({
        let (publisher, waits) = (publisher.clone(), waits.clone());
        move || read_confirms(&publisher, &waits)
    });
    let publishing = std::thread::spawn({
        let (publisher, waits, stop) = (publisher.clone(), waits.clone(), stop.clone());
        let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        move || publish_steadily(&publisher, &waits, &stop, interval)
    });
    std::thread::sleep(STEADY_BEFORE_STOP);
    let stopped_at = Instant::now();
    waits.lock().expect("not poisoned").stopped_at = Some(stopped_at);
    let stopped = Stopped::stop(cluster.pid(HUNG_BROKER_INDEX));
    let result = stopped.and_then(|stopped| {
        let stall = wait_for_stall_end(&waits, stopped_at);
        stopped.resume();
        stall
    });
    stop.store(true, Ordering::Relaxed);
    // Killing the brokers ends both threads: their next publish or confirm read fails.
    drop(cluster);
    let _ = publishing.join();
    let _ = confirms.join();
    let not_stored = waits.lock().expect("not poisoned").not_stored;
    if not_stored > 0 {
        return Err(format!("{not_stored} publishes were confirmed as not stored"));
    }
    result
}

/// Publishes 1 KiB messages every `interval` until `stop` is set or a publish fails, noting each
/// one's sequence number and send time in `waits` before handing it to the client (so the
/// confirm can never be read first).
fn publish_steadily(
    publisher: &blocking::Publisher,
    waits: &Mutex<ConfirmWaits>,
    stop: &AtomicBool,
    interval: Duration,
) {
    let body = Bytes::from(vec![b'x'; MESSAGE_BYTES]);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let message = Message {
            routing_key: Bytes::from_static(QUEUE.as_bytes()),
            message_id: Bytes::new(),
            headers: Vec::new(),
            body: body.clone(),
        };
        let seq = publisher.next_seq().0;
        waits.lock().expect("not poisoned").unconfirmed.push_back((seq, Instant::now()));
        match publisher.publish("", message) {
            Ok(published) => assert_eq!(published.0, seq, "the only publishing thread got another sequence number"),
            Err(_) => break,
        }
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// Reads confirms until the connection ends, recording in `waits` the longest confirm wait of the
/// publishes sent after the stop.
fn read_confirms(publisher: &blocking::Publisher, waits: &Mutex<ConfirmWaits>) {
    while let Ok(Some(range)) = publisher.next_confirm() {
        let now = Instant::now();
        let mut waits = waits.lock().expect("not poisoned");
        if range.outcome != ConfirmOutcome::Stored {
            waits.not_stored += range.last.0 - range.first.0 + 1;
        }
        while let Some(&(seq, sent)) = waits.unconfirmed.front() {
            if seq > range.last.0 {
                break;
            }
            waits.unconfirmed.pop_front();
            let wait = now.duration_since(sent);
            if waits.stopped_at.is_some_and(|stopped_at| sent >= stopped_at) && wait > waits.wait_longest {
                waits.wait_longest = wait;
                waits.wait_longest_confirmed_at = Some(now);
            }
        }
    }
}

/// Waits until the stall is over: `MEASURE_AFTER_RESUME` after the confirm that set the longest
/// wait, with no publish waiting longer. Returns the longest wait.
fn wait_for_stall_end(waits: &Mutex<ConfirmWaits>, stopped_at: Instant) -> Result<Duration, String> {
    let deadline = stopped_at + MEASURE_MAX;
    loop {
        let now = Instant::now();
        {
            let waits = waits.lock().expect("not poisoned");
            let settled = waits.wait_longest_confirmed_at.is_some_and(|at| now >= at + MEASURE_AFTER_RESUME);
            if settled && waits.wait_open(now) < waits.wait_longest {
                return Ok(waits.wait_longest);
            }
            if now >= deadline {
                return Err(format!(
                    "confirms not resumed {} s after the stop (longest wait so far {:.1} ms, open wait {:.1} ms)",
                    MEASURE_MAX.as_secs(),
                    waits.wait_longest.as_secs_f64() * 1e3,
                    waits.wait_open(now).as_secs_f64() * 1e3
                ));
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A broker stopped with SIGSTOP (hung); continued with SIGCONT on `resume` or on drop.
struct Stopped {
    /// The stopped process.
    pid: u32,
    /// Whether it was continued already.
    resumed: bool,
}

impl Stopped {
    /// Stops process `pid` with SIGSTOP and waits (at most 10 s) until every thread of it is
    /// stopped.
    fn stop(pid: u32) -> Result<Stopped, String> {
        signal(pid, libc::SIGSTOP)?;
        let stopped = Stopped { pid, resumed: false };
        // `kill` returns once the signal is queued; the process stops when the thread that took it
        // next runs, and until then its other threads go on serving IO.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states = thread_states(pid);
            if !states.is_empty() && states.iter().all(|&state| state == 'T' || state == 't') {
                return Ok(stopped);
            }
            if Instant::now() >= deadline {
                return Err(format!("process {pid} not stopped within 10 s of SIGSTOP (thread states {states:?})"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Continues it with SIGCONT.
    fn resume(mut self) {
        self.resumed = true;
        // The brokers are killed next; one that is gone needs no SIGCONT.
        let _ = signal(self.pid, libc::SIGCONT);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.resumed {
            // As in `resume`.
            let _ = signal(self.pid, libc::SIGCONT);
        }
    }
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: libc::c_int) -> Result<(), String> {
    let pid_t = libc::pid_t::try_from(pid).map_err(|_| format!("process id {pid} out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let status = unsafe { libc::kill(pid_t, signal) };
    if status == 0 {
        Ok(())
    } else {
        Err(format!("kill({pid}, {signal}): {}", std::io::Error::last_os_error()))
    }
}

/// The state letter of every thread of process `pid` (`/proc/PID/task/*/stat`: `R` running, `S`
/// sleeping, `T` stopped, ...); empty if the process is gone.
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        // The name, in parentheses, may hold spaces: the state is the first field after it.
        .filter_map(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .collect()
}

/// The queue published to.
const QUEUE: &str = "hung-backup";
/// Body bytes of each message.
const MESSAGE_BYTES: usize = 1024;
/// Which broker hangs: the second backup (the first broker is the primary).
const HUNG_BROKER_INDEX: usize = 2;
/// Steady publishing before the stop, so the stall is measured from a flowing pipeline.
const STEADY_BEFORE_STOP: Duration = Duration::from_secs(1);
/// How long the round goes on after the confirm that set the longest wait, to catch a later,
/// longer one.
const MEASURE_AFTER_RESUME: Duration = Duration::from_secs(3);
/// The most a round waits after the stop; beyond it the round fails.
const MEASURE_MAX: Duration = Duration::from_secs(30);
/// How often the stall's end and the stopped threads are checked.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
