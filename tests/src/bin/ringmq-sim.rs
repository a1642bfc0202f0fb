//! `ringmq-sim`: runs the deterministic HA simulation from the command line.
//!
//! - `ringmq-sim --seed S [--verbose]`: runs seed S and prints its outcome; on a failure, what
//!   broke and the last events. `--verbose` prints every event as it happens. The same seed
//!   always replays the same run.
//! - `--queue-on-shard-1` (with either): the clients use a queue that shard 1 owns (on brokers
//!   of two shards), so that replication crosses to the other shard's streams.
//! - `ringmq-sim --seeds N [--from K] [--jobs J]`: runs seeds K..K+N on J threads (default: one per
//!   core), printing every failure's seed and violation as it comes, then the totals: seeds, steps,
//!   steps per second, failures. Exits 1 if any seed failed.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ringmq_tests::sim::{run, SimConfig, QUEUE, QUEUE_SHARD_1};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Command::One { seed, verbose, options }) => one(seed, verbose, options),
        Ok(Command::Many { count, from, jobs, options }) => many(count, from, jobs, options),
        Err(message) => {
            eprintln!("ringmq-sim: {message}");
            eprintln!(
                "usage: ringmq-sim --seed S [--verbose] | --seeds N [--from K] [--jobs J]; either with \
                 [--queue-on-shard-1]"
            );
            ExitCode::from(2)
        }
    }
}

/// What to run.
enum Command {
    /// One seed, with its trace on failure.
    One {
        /// The seed.
        seed: u64,
        /// Print every event.
        verbose: bool,
        /// The run's options.
        options: Options,
    },
    /// Many seeds.
    Many {
        /// How many.
        count: u64,
        /// The first.
        from: u64,
        /// Threads.
        jobs: usize,
        /// The runs' options.
        options: Options,
    },
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut seed = None;
    let mut count = None;
    let mut from = 0;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut verbose = false;
    let mut shard_1 = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let text = iter.next().ok_or_else(|| format!("{name} needs a value"))?;
            text.parse().map_err(|_| format!("{name} must be an unsigned integer; got '{text}'"))
        };
        match arg.as_str() {
            "--seed" => seed = Some(value("--seed")?),
            "--seeds" => count = Some(value("--seeds")?),
            "--from" => from = value("--from")?,
            "--jobs" => jobs = value("--jobs")?.max(1) as usize,
            "--verbose" => verbose = true,
            "--queue-on-shard-1" => shard_1 = true,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    match (seed, count) {
        (Some(seed), None) => Ok(Command::One { seed, verbose, options: Options { shard_1 } }),
        (None, Some(count)) => Ok(Command::Many { count, from, jobs, options: Options { shard_1 } }),
        _ => Err("give exactly one of --seed S and --seeds N".into()),
    }
}

/// What the command line changes in a seed's settings.
#[derive(Clone, Copy)]
struct Options {
    /// `--queue-on-shard-1`.
    shard_1: bool,
}

/// The settings of `seed` with the options.
fn config(seed: u64, options: Options) -> SimConfig {
    let queue = if options.shard_1 { QUEUE_SHARD_1 } else { QUEUE };
    SimConfig::from_seed(seed).with_queue(queue)
}

fn one(seed: u64, verbose: bool, options: Options) -> ExitCode {
    let started = Instant::now();
    let outcome = run(config(seed, options), verbose);
    let elapsed = started.elapsed();
    println!(
        "seed {seed}: {} steps, {} simulated, {:.0} steps/s, trace hash {:016x}",
        outcome.steps,
        outcome.sim_time,
        outcome.steps as f64 / elapsed.as_secs_f64(),
        outcome.trace_hash
    );
    println!("  {}", outcome.summary);
    match outcome.failure {
        None => ExitCode::SUCCESS,
        Some(failure) => {
            println!("seed {seed} FAILED: {failure}");
            ExitCode::FAILURE
        }
    }
}

fn many(count: u64, from: u64, jobs: usize, options: Options) -> ExitCode {
    // A panic fails its seed with the message (the run catches it); the default hook's report,
    // a backtrace per failing seed, would bury the summary.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(from));
    let end = from.saturating_add(count);
    let steps = Arc::new(AtomicU64::new(0));
    // Over all seeds: duplicates, stale confirms, lost with cluster.
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, steps, done, failures) = (next.clone(), steps.clone(), done.clone(), failures.clone());
            let counts = counts.clone();
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let outcome = run(config(seed, options), false);
                steps.fetch_add(outcome.steps, Ordering::Relaxed);
                let c = &outcome.counters;
                for (total, value) in
                    counts.iter().zip([c.duplicates, c.stale_confirms, c.lost_with_cluster, c.lost_with_holders])
                {
                    total.fetch_add(value, Ordering::Relaxed);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(failure) = outcome.failure {
                    println!("seed {seed} FAILED: {}", failure.violation);
                    failures.lock().expect("no thread panics holding it").push(seed);
                }
                if finished % 1000 == 0 {
                    println!("{finished} seeds run");
                }
            })
        })
        .collect();
    for thread in threads {
        if thread.join().is_err() {
            eprintln!("ringmq-sim: a run panicked (see above); its seed is the one printed with the panic");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let steps = steps.load(Ordering::Relaxed);
    let mut failures = failures.lock().expect("threads ended").clone();
    failures.sort_unstable();
    println!(
        "{} seeds from {from} in {elapsed:.1} s on {jobs} threads: {steps} steps, {:.0} steps/s, {} failed{}",
        done.load(Ordering::Relaxed),
        steps as f64 / elapsed,
        failures.len(),
        if failures.is_empty() { String::new() } else { format!(": {failures:?}") }
    );
    let [duplicates, stale, cluster, holders] = &*counts;
    println!(
        "over all seeds: {} duplicates, {} stale confirms, {} written off with the cluster, {} lost with their holders",
        duplicates.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
        cluster.load(Ordering::Relaxed),
        holders.load(Ordering::Relaxed)
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
