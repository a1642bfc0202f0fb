//! A benchmark run's results, printed as one block a person can read and a script can grep.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::BenchArgs;

/// Results of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Messages per producer, producers, consumers, size, window, rate: the workload.
    pub workload: String,
    /// Messages published and confirmed.
    pub sent: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Sent but not received.
    pub lost: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Time until the last publish was confirmed.
    pub publish_elapsed: Duration,
    /// Time until the last message was received.
    pub elapsed: Duration,
    /// Messages per second, first publish to last receive.
    pub msgs_per_sec: f64,
    /// Megabytes (10^6) of body per second.
    pub mb_per_sec: f64,
    /// Confirm latency percentiles, microseconds: p50, p99, p99.9.
    pub confirm_us: [f64; 3],
    /// End-to-end latency percentiles, microseconds: p50, p99, p99.9.
    pub end_to_end_us: [f64; 3],
}

impl Report {
    /// Builds a report from a run's counts and histograms (nanoseconds).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &BenchArgs,
        sent: u64,
        received: u64,
        duplicates: u64,
        publish_elapsed: Duration,
        elapsed: Duration,
        confirm_ns: &Histogram<u64>,
        end_to_end_ns: &Histogram<u64>,
    ) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let percentiles =
            |h: &Histogram<u64>| [50.0, 99.0, 99.9].map(|q| h.value_at_quantile(q / 100.0) as f64 / 1000.0);
        let rate = args.rate.map_or("max".to_string(), |r| format!("{r} msg/s"));
        Report {
            workload: format!(
                "{} producers x {} msgs, {} consumers, {} B, window {}, frame {} B, prefetch {}, rate {}",
                args.producers,
                args.count,
                args.consumers,
                args.size,
                args.window,
                args.frame_bytes,
                args.prefetch,
                rate
            ),
            sent,
            received,
            lost: sent.saturating_sub(received),
            duplicates,
            publish_elapsed,
            elapsed,
            msgs_per_sec: received as f64 / seconds,
            mb_per_sec: received as f64 * args.size as f64 / seconds / 1e6,
            confirm_us: percentiles(confirm_ns),
            end_to_end_us: percentiles(end_to_end_ns),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "workload:    {}", self.workload)?;
        writeln!(f, "sent:        {}", self.sent)?;
        writeln!(f, "received:    {} (lost {}, duplicates {})", self.received, self.lost, self.duplicates)?;
        writeln!(f, "elapsed:     {:.3} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "throughput:  {:.0} msg/s, {:.1} MB/s", self.msgs_per_sec, self.mb_per_sec)?;
        let [c50, c99, c999] = self.confirm_us;
        writeln!(f, "confirm_us:  p50 {c50:.1}  p99 {c99:.1}  p99.9 {c999:.1}")?;
        let [e50, e99, e999] = self.end_to_end_us;
        write!(f, "e2e_us:      p50 {e50:.1}  p99 {e99:.1}  p99.9 {e999:.1}")
    }
}
