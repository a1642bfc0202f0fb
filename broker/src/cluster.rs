//! `ringmq cluster`: starts a local HA cluster on loopback for trying it out: N brokers on
//! consecutive ports, each with the others in `ha-brokers-url`, messages replicated
//! (`ha-replicate all`); promotes the first, waits until every other is ready, and prints the client
//! URL and how to stop them. The brokers keep running after the command ends, each in its own
//! process group (so a Ctrl-C in the terminal does not reach them), logging to
//! `ringmq-node-PORT.log` in the current directory.
//!
//! Exit status: 0 when the cluster is ready; 1 when a broker did not start or the cluster did not
//! become ready in time (every broker it started is killed then); 2 for a bad command line.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ringmq_client::blocking::Connection;
use ringmq_client::ConnectOptions;

use crate::cli::ClusterArgs;

/// Runs `ringmq cluster`.
pub fn run(args: &ClusterArgs) -> ExitCode {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        eprintln!("ringmq cluster: --nodes must be in 1..={NODES_MAX}; got {}", args.nodes);
        return ExitCode::from(2);
    }
    let Some(last_port) = args.base_port.checked_add(args.nodes - 1) else {
        eprintln!("ringmq cluster: --base-port {} leaves no room for {} ports", args.base_port, args.nodes);
        return ExitCode::from(2);
    };
    let ports: Vec<u16> = (args.base_port..=last_port).collect();
    let addresses: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    let url = addresses.join(",");
    let mut nodes = Vec::new();
    for &port in &ports {
        match spawn_node(port, &url, args) {
            Ok(child) => nodes.push(child),
            Err(error) => return fail(nodes, &format!("cannot start the broker on port {port}: {error}")),
        }
    }
    for (node, address) in nodes.iter_mut().zip(&addresses) {
        if let Err(reason) = wait_serving(node, address) {
            return fail(nodes, &reason);
        }
    }
    let primary = &addresses[0];
    if let Err(error) = admin(primary).and_then(|c| c.ha_promote().map_err(|e| e.to_string())) {
        return fail(nodes, &format!("promoting {primary}: {error}"));
    }
    for address in &addresses[1..] {
        if let Err(reason) = wait_ready(address) {
            return fail(nodes, &reason);
        }
    }
    let pids: Vec<String> = nodes.iter().map(|node| node.id().to_string()).collect();
    println!("ringmq cluster: {} brokers, primary {primary}, every other ready", nodes.len());
    println!("client URL: {url}");
    println!("try: ringmq send -b {primary} -k demo hello   (after: ringmq queue add demo -b {primary})");
    println!("logs: ringmq-node-PORT.log; stop the cluster with: kill {}", pids.join(" "));
    ExitCode::SUCCESS
}

/// Starts one broker of the cluster, detached from the terminal's process group.
fn spawn_node(port: u16, url: &str, args: &ClusterArgs) -> std::io::Result<Child> {
    let log = File::create(format!("ringmq-node-{port}.log"))?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("broker")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--ha-cluster", "true", "--ha-brokers-url", url, "--ha-public-url", url])
        .args(["--ha-replicate", "all"])
        .args(["--link-maintenance-interval", "0.5", "--link-heartbeat-interval", "1"])
        .args(["--shards", &args.shards.to_string(), "--pin-cores", "false"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    command.spawn()
}

/// Waits until the broker at `address` answers an admin connection.
fn wait_serving(node: &mut Child, address: &str) -> Result<(), String> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Ok(Some(status)) = node.try_wait() {
            return Err(format!("the broker for {address} exited with {status}; see its log"));
        }
        if admin(address).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the broker for {address} did not answer within {START_WAIT:?}"));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until the broker at `address` is a ready backup.
fn wait_ready(address: &str) -> Result<(), String> {
    let deadline = Instant::now() + READY_WAIT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match admin(address).and_then(|c| c.ha_status().map_err(|e| e.to_string())) {
            Ok(status) if status.state == "ready" => return Ok(()),
            Ok(status) => last = status.state,
            Err(error) => last = error,
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(format!("{address} was not ready within {READY_WAIT:?} (last: {last})"))
}

/// An admin connection to `address`.
fn admin(address: &str) -> Result<Connection, String> {
    let options = ConnectOptions { admin: true, connect_timeout: POLL_INTERVAL * 10, ..ConnectOptions::default() };
    Connection::connect(address, options).map_err(|error| error.to_string())
}

/// Kills every broker started so far and reports `reason`.
fn fail(nodes: Vec<Child>, reason: &str) -> ExitCode {
    for mut node in nodes {
        // Already gone is fine: the point is that none is left behind.
        let _ = node.kill();
        let _ = node.wait();
    }
    eprintln!("ringmq cluster: {reason}; every broker it started was stopped");
    ExitCode::FAILURE
}

/// Most brokers `ringmq cluster` starts.
const NODES_MAX: u16 = 9;
/// Longest wait for one broker to answer after it was started.
const START_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a backup to become ready after the promotion.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Time between two looks at a broker.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
