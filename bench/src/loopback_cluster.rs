//! A cluster of three `ringmq broker` processes on loopback, for the HA measurement binaries
//! (`failover-time`, `hung-backup-stall`): starting it, waiting for a broker's HA state, admin
//! connections, and the rounds of a measurement with their report.
//!
//! It does not promote anyone, publish, or judge what it measures; the binaries do.
//!
//! Invariants: every broker started is killed and reaped when the `Cluster` is dropped, so a round
//! that fails leaves no process behind; the brokers listen on loopback ports that were free when
//! the cluster started.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringmq_client::{blocking, ConnectOptions};

/// How a loopback cluster's brokers are configured.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `ringmq` binary.
    pub ringmq: String,
    /// `link-heartbeat-interval` of the brokers, seconds.
    pub link_heartbeat_s: f64,
    /// `link-maintenance-interval` of the brokers, seconds.
    pub link_maintenance_s: f64,
    /// `ha-backup-timeout` of the brokers, seconds; `None` keeps the broker's default.
    pub ha_backup_timeout_s: Option<f64>,
}

/// Three brokers (`--shards 1`, `ha-replicate all`), killed on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The broker processes, in the order of `addresses`.
    children: Vec<Child>,
    /// Their addresses, `127.0.0.1:port`.
    addresses: Vec<String>,
}

impl Cluster {
    /// The brokers' addresses, `127.0.0.1:port`, in start order.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The process id of broker `index`.
    ///
    /// # Panics
    /// If `index` is not a broker of the cluster.
    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].id()
    }

    /// Kills broker `index` (SIGKILL) and reaps it; one already gone is fine.
    ///
    /// # Panics
    /// If `index` is not a broker of the cluster.
    pub fn kill(&mut self, index: usize) {
        let child = &mut self.children[index];
        // Already gone is fine: the broker is dead either way.
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
    }
}

/// Starts three cluster brokers on free loopback ports and waits until each reports `joining`.
///
/// # Errors
/// A broker that cannot be started or does not come up within 10 s; the ones started are killed.
pub fn start_cluster(config: &ClusterConfig) -> Result<Cluster, String> {
    let ports: Vec<u16> = (0..BROKER_COUNT).map(|_| free_port()).collect::<Result<_, _>>()?;
    let addresses: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    let url = addresses.join(",");
    let mut cluster = Cluster { children: Vec::new(), addresses };
    for port in &ports {
        let mut command = Command::new(&config.ringmq);
        command
            .arg("broker")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--pin-cores", "false", "--shards", "1"])
            .args(["--ha-cluster", "true", "--ha-brokers-url", &url, "--ha-replicate", "all"])
            .args(["--link-heartbeat-interval", &config.link_heartbeat_s.to_string()])
            .args(["--link-maintenance-interval", &config.link_maintenance_s.to_string()]);
        if let Some(timeout) = config.ha_backup_timeout_s {
            command.args(["--ha-backup-timeout", &timeout.to_string()]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", config.ringmq))?;
        cluster.children.push(child);
    }
    for address in &cluster.addresses {
        wait_for_state(address, "joining")?;
    }
    Ok(cluster)
}

/// Waits (at most 10 s) until the broker at `address` reports `state`.
///
/// # Errors
/// The broker did not report `state` in time; the message gives the last state or error seen.
pub fn wait_for_state(address: &str, state: &str) -> Result<(), String> {
    let deadline = Instant::now() + STATE_WAIT_MAX;
    let mut last = String::new();
    while Instant::now() < deadline {
        match admin(address).and_then(|c| c.ha_status().map_err(|e| e.to_string())) {
            Ok(status) if status.state == state => return Ok(()),
            Ok(status) => last = status.state,
            Err(error) => last = error,
        }
        std::thread::sleep(STATE_POLL_INTERVAL);
    }
    Err(format!("{address} not {state} within {} s (last: {last})", STATE_WAIT_MAX.as_secs()))
}

/// An admin connection to the broker at `address`.
///
/// # Errors
/// The connection failed.
pub fn admin(address: &str) -> Result<blocking::Connection, String> {
    let options = ConnectOptions { admin: true, ..ConnectOptions::default() };
    blocking::Connection::connect(address, options).map_err(|e| e.to_string())
}

/// A port free on loopback right now.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Brokers in a cluster: a primary and two backups.
const BROKER_COUNT: usize = 3;
/// How long `wait_for_state` waits, whole seconds (its error message gives them).
const STATE_WAIT_MAX: Duration = Duration::from_secs(10);
/// How often `wait_for_state` asks.
const STATE_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `rounds` rounds of `measure` (each on a fresh cluster), printing each round's time in ms
/// or why it failed, then the median, min and max of the rounds that succeeded.
pub fn run_rounds(rounds: u32, mut measure: impl FnMut() -> Result<Duration, String>) {
    let mut times = Vec::new();
    for round in 1..=rounds {
        match measure() {
            Ok(time) => {
                println!("round {round}: {:.1} ms", time.as_secs_f64() * 1e3);
                times.push(time);
            }
            Err(error) => println!("round {round}: failed: {error}"),
        }
    }
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let median = times[times.len() / 2];
        println!(
            "median {:.1} ms, min {:.1} ms, max {:.1} ms over {} rounds",
            median.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            times.len()
        );
    }
}
