//! A cluster manager for process tests, in the manner of Pacemaker: a thread that watches a
//! cluster only through `ringmq ha status` and acts only through `ringmq ha promote
//! --cluster-manager`, as an outside manager must.
//!
//! Every monitor interval it asks each broker for its state (in parallel, each within a status
//! timeout, so a stopped or unreachable broker counts as not answering rather than holding the
//! round). When no broker answers as a primary (`active` or `recovering`), it promotes one that
//! answered `ready` (the first in URL order), and then waits a monitor interval, as Pacemaker
//! waits for the next monitor before it acts again. It never promotes a `joining` or `catchup`
//! broker: with no ready broker it waits (a joining broker holds only what it caught up, so
//! promoting it could lose acknowledged messages; that decision is a person's).
//!
//! It does not fence: a primary that is only unreachable may still be serving. Rounds where more
//! than one broker answered as a primary are counted, not acted on (a superseded primary steps
//! down on its own once it hears of the newer epoch).
//!
//! Invariants:
//! - Only `ready` brokers are promoted, and only while no broker answered as a primary in the same
//!   round.
//! - The thread ends when the manager is stopped or dropped; every CLI command it runs is bounded
//!   by a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::run_cli_within;

/// The running manager; stopped on drop.
pub struct ClusterManager {
    /// Set to end the loop.
    stop: Arc<AtomicBool>,
    /// The loop's thread.
    thread: Option<JoinHandle<()>>,
    /// What it did so far.
    report: Arc<Mutex<ManagerReport>>,
}

/// What the manager saw and did.
#[derive(Debug, Clone, Default)]
pub struct ManagerReport {
    /// Monitor rounds run.
    pub rounds: u64,
    /// Rounds where no broker answered as a primary.
    pub rounds_without_primary: u64,
    /// Rounds where no broker answered as a primary and none was ready: nothing to promote.
    pub rounds_without_candidate: u64,
    /// Rounds where more than one broker answered as a primary.
    pub rounds_with_two_primaries: u64,
    /// Promotions made: when (since the manager started), which broker (index in the URL), and
    /// what `ha promote` printed.
    pub promotions: Vec<(Duration, usize, String)>,
    /// Promotions the broker refused (it was no longer ready), with the reason.
    pub refusals: Vec<(Duration, usize, String)>,
}

impl ClusterManager {
    /// Starts watching the brokers at `addrs` every `interval`, with `status_timeout` per status
    /// request.
    pub fn start(addrs: Vec<String>, interval: Duration, status_timeout: Duration) -> ClusterManager {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ManagerReport::default()));
        let thread = {
            let (stop, report) = (Arc::clone(&stop), Arc::clone(&report));
            std::thread::Builder::new()
                .name("cluster-manager".to_owned())
                .spawn(move || monitor(&addrs, interval, status_timeout, &stop, &report))
                .expect("starting the cluster manager's thread")
        };
        ClusterManager { stop, thread: Some(thread), report }
    }

    /// What it did so far.
    pub fn report(&self) -> ManagerReport {
        self.report.lock().expect("the manager's report lock is never poisoned").clone()
    }

    /// Stops the loop (after its current round) and returns what it did.
    ///
    /// # Panics
    /// If the loop panicked.
    pub fn stop(mut self) -> ManagerReport {
        self.halt();
        self.report()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the cluster manager's loop panicked");
        }
    }
}

impl Drop for ClusterManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // During a panic of the test, a panic of the loop is not worth a second one.
            let _ = thread.join();
        }
    }
}

/// Each broker's state as `ringmq ha status` prints it, asked in parallel, each within `timeout`;
/// `None` for a broker that did not answer.
pub fn states(addrs: &[String], timeout: Duration) -> Vec<Option<String>> {
    let askers: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let output = run_cli_within(&["ha", "status", "-b", &addr], timeout).ok()?;
                output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            })
        })
        .collect();
    askers.into_iter().map(|asker| asker.join().ok().flatten()).collect()
}

/// Whether `state` is a primary's: `active` or `recovering`.
pub fn is_primary(state: &str) -> bool {
    state == "active" || state == "recovering"
}

/// The loop: see the module's doc.
fn monitor(
    addrs: &[String],
    interval: Duration,
    status_timeout: Duration,
    stop: &AtomicBool,
    report: &Mutex<ManagerReport>,
) {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let seen = states(addrs, status_timeout);
        let primaries = seen.iter().flatten().filter(|state| is_primary(state)).count();
        let ready = seen.iter().position(|state| state.as_deref() == Some("ready"));
        let mut report_now = report.lock().expect("the manager's report lock is never poisoned");
        report_now.rounds += 1;
        if primaries > 1 {
            report_now.rounds_with_two_primaries += 1;
        }
        if primaries == 0 {
            report_now.rounds_without_primary += 1;
            match ready {
                None => report_now.rounds_without_candidate += 1,
                Some(index) => {
                    drop(report_now);
                    let at = started.elapsed();
                    let args = ["ha", "promote", "-b", &addrs[index], "--cluster-manager"];
                    let (promoted, said) = match run_cli_within(&args, PROMOTE_TIMEOUT) {
                        Ok(output) => (
                            output.status.success(),
                            format!(
                                "{}{}",
                                String::from_utf8_lossy(&output.stdout).trim(),
                                String::from_utf8_lossy(&output.stderr).trim()
                            ),
                        ),
                        Err(_) => (false, format!("no answer within {PROMOTE_TIMEOUT:?}")),
                    };
                    println!("cluster manager at {at:.1?}: states {seen:?}; promote broker {index}: {said}");
                    let mut report_now = report.lock().expect("the manager's report lock is never poisoned");
                    if promoted {
                        report_now.promotions.push((at, index, said));
                    } else {
                        report_now.refusals.push((at, index, said));
                    }
                }
            }
        }
        std::thread::sleep(interval);
    }
}

/// Longest a `ha promote` may take: it answers in milliseconds; this bounds a hang.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(10);
