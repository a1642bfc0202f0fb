//! Helpers for the integration tests: start real `ringmq` processes and reach them.
//!
//! `BrokerProcess::start(args)` runs `ringmq broker --port P ARGS...` on a free loopback port,
//! waits until the port accepts connections (polling against a deadline, never a fixed sleep),
//! and kills the process by its PID when dropped, so a failing test leaves no broker behind.
//!
//! The binary is found without `CARGO_BIN_EXE_*` (it belongs to another package): the `RINGMQ_BIN`
//! environment variable when set, otherwise the newest of `target/debug/ringmq` and
//! `target/release/ringmq` under the workspace's target directory (`CARGO_TARGET_DIR` when set).
//! Build it first: `cargo build -p ringmq`.
//!
//! `BrokerProcess::start_in_namespace(ns, addr, args)` runs it through `ip netns exec NS` on an
//! address of that network namespace instead (the partition test).
//!
//! Module `ha`: what the HA process tests share (a promoted cluster, states, depths on backups).
//! Module `netns`: a bridge and one network namespace per broker (partition and fault-injection
//! tests); `firewall`: nftables drop rules between addresses; `fault_proxy`: a TCP proxy that
//! delays, stalls and cuts links; `cluster_manager`: a Pacemaker-like loop that promotes a ready
//! broker when no primary answers.
//! Module `sim`: the deterministic simulation of the HA protocol (no processes; see its doc).
//!
//! `eventually` polls a condition against a deadline, for state that settles asynchronously (queue
//! counts after acks).
//!
//! Invariants:
//! - A `BrokerProcess` that exists is accepting connections on `addr()`, or has been killed by
//!   the test itself.
//! - The process never outlives its `BrokerProcess`.

pub mod cluster_manager;
pub mod fault_proxy;
pub mod firewall;
pub mod ha;
pub mod netns;
pub mod sim;

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A running broker started by a test.
#[derive(Debug)]
pub struct BrokerProcess {
    /// The child process; killed by PID on drop.
    child: Child,
    /// The port it listens on.
    port: u16,
    /// Where its stdout and stderr go, for the failure message.
    log_path: PathBuf,
    /// The arguments after `ringmq broker`, to restart it the same way.
    args: Vec<String>,
    /// The address clients reach it on (loopback unless started in a network namespace).
    addr: SocketAddr,
    /// The command that runs the binary, before it (`ip netns exec NS`); empty to run it directly.
    launcher: Vec<String>,
}

impl BrokerProcess {
    /// Starts `ringmq broker --host 127.0.0.1 --port P --pin-cores false ARGS...` on a free port
    /// and waits until it accepts TCP connections. Later options override earlier ones, so
    /// `args` may change the defaults (tests run in parallel, hence no core pinning).
    ///
    /// # Panics
    /// If the binary cannot be found or started, if it exits during startup, or if it does not
    /// accept connections within `STARTUP_TIMEOUT`; the message includes its output.
    pub fn start(args: &[&str]) -> BrokerProcess {
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            let port = free_port();
            match BrokerProcess::try_start(port, args) {
                Ok(broker) => return broker,
                // Another process may have taken the port between our probe and the bind.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("broker did not start after {START_ATTEMPTS_MAX} attempts; last failure: {last_failure}");
    }

    /// The address clients connect to, `127.0.0.1:PORT` (or the namespace's address given to
    /// `start_in_namespace`).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL) and starts it again with the same arguments on the same port.
    ///
    /// # Errors
    /// As `start_exact`.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let args = self.args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        *self = BrokerProcess::spawn(&self.launcher.clone(), &args, self.addr)?;
        Ok(())
    }

    /// Kills the broker now (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        // The process may already have exited; kill then fails with InvalidInput, which is fine.
        let _ = self.child.kill();
        // Reaping can only fail if the child was already reaped.
        let _ = self.child.wait();
    }

    fn try_start(port: u16, args: &[&str]) -> Result<BrokerProcess, String> {
        let port_text = port.to_string();
        let mut all = vec!["--host", "127.0.0.1", "--port", &port_text, "--pin-cores", "false"];
        all.extend_from_slice(args);
        BrokerProcess::start_exact(&all, port)
    }

    /// Waits until the broker says it listens and accepts a TCP connection on its port. The
    /// line matters: a broker killed just before may leave its listening socket accepting (and
    /// resetting) for a moment while the kernel tears its io_uring down, so an accepted
    /// connection alone does not prove the new broker is there.
    fn wait_until_serving(mut self) -> Result<BrokerProcess, String> {
        let addr = self.addr;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("broker exited during startup with {status}; output:\n{}", self.output()));
            }
            if self.output().contains(LISTENING_LINE)
                && TcpStream::connect_timeout(&addr, CONNECT_PROBE_TIMEOUT).is_ok()
            {
                return Ok(self);
            }
            if Instant::now() >= deadline {
                let output = self.output();
                self.kill();
                return Err(format!(
                    "broker did not accept connections on {addr} within {STARTUP_TIMEOUT:?}; output:\n{output}"
                ));
            }
            std::thread::sleep(STARTUP_POLL_INTERVAL);
        }
    }
}

/// A broker stopped with SIGSTOP (a hung peer); continued with SIGCONT on `resume` or on drop, so
/// a failing test leaves no stopped process behind.
pub struct Stopped {
    /// The stopped process.
    pid: u32,
    /// Whether it was continued already.
    resumed: bool,
}

impl Stopped {
    /// Stops `broker` with SIGSTOP.
    ///
    /// # Panics
    /// If `kill` fails.
    pub fn stop(broker: &BrokerProcess) -> Stopped {
        let pid = broker.pid();
        signal("-STOP", pid);
        // `kill` returns once the signal is queued; the process stops when the thread that took
        // it next runs, and until then its other threads go on serving IO (on a loaded machine,
        // for milliseconds: a stopped backup was seen confirming a batch after `kill` returned).
        eventually(&format!("every thread of process {pid} stopped"), Duration::from_secs(10), || {
            let states = thread_states(pid);
            if !states.is_empty() && states.iter().all(|&state| state == 'T' || state == 't') {
                Ok(())
            } else {
                Err(states)
            }
        });
        Stopped { pid, resumed: false }
    }

    /// Continues it with SIGCONT.
    pub fn resume(mut self) {
        self.resumed = true;
        signal("-CONT", self.pid);
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

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.resumed {
            signal("-CONT", self.pid);
        }
    }
}

/// Sends signal `which` (`-STOP`, `-CONT`) to `pid` with `kill`.
fn signal(which: &str, pid: u32) {
    let status = Command::new("kill").args([which, &pid.to_string()]).status().expect("running kill");
    assert!(status.success(), "kill {which} {pid}: {status}");
}

/// What the broker prints once its listeners are bound.
const LISTENING_LINE: &str = "ringmq broker listening on";

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
        // Keep the log only while debugging; it was shown in any failure message.
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The `ringmq` binary: `RINGMQ_BIN`, else the newest of the debug and release builds.
///
/// # Panics
/// If neither exists.
pub fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGMQ_BIN") {
        return PathBuf::from(path);
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    let candidates = [target_dir.join("debug").join("ringmq"), target_dir.join("release").join("ringmq")];
    candidates
        .iter()
        .filter_map(|path| {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
            Some((modified, path))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path.clone())
        .unwrap_or_else(|| {
            panic!(
                "no ringmq binary: looked for {} and {}; run `cargo build -p ringmq` or set RINGMQ_BIN",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// Polls `check` every `POLL_INTERVAL` until it returns `Some`, for at most `timeout`.
///
/// # Panics
/// When `timeout` passes first; the message names `what` and shows the last value seen.
pub fn eventually<T, S: std::fmt::Debug>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, S>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last seen: {last:?}"),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// As `eventually`, for async checks in tokio tests.
///
/// # Panics
/// As `eventually`.
pub async fn eventually_async<T, S: std::fmt::Debug, F: std::future::Future<Output = Result<T, S>>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last seen: {last:?}"),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// A loopback port nobody listens on right now.
///
/// # Panics
/// If the OS gives no ephemeral port.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("binding an ephemeral loopback port");
    listener.local_addr().expect("local address of a bound listener").port()
}

/// Longest a broker may take to accept connections after spawning.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often startup polls the port.
const STARTUP_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often `eventually` checks.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Longest one probe connect may take.
const CONNECT_PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Ports tried before giving up (a port may be taken between the probe and the broker's bind).
const START_ATTEMPTS_MAX: u32 = 3;

/// Runs `ringmq ARGS...` (a CLI command, or `broker` with options it should refuse) to completion,
/// with stdin closed, and returns its exit status and output.
///
/// # Panics
/// If the binary cannot be started, or if it has not exited within `CLI_TIMEOUT` (it is killed
/// first); the message includes what it printed.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    run_cli_within(args, CLI_TIMEOUT).unwrap_or_else(|output| {
        panic!(
            "`ringmq {}` did not exit within {CLI_TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// As `run_cli`, but waits at most `timeout`.
///
/// # Errors
/// The command had not exited within `timeout`: it was killed, and `Err` holds what it printed
/// up to then (with the status of the kill).
///
/// # Panics
/// If the binary cannot be started.
pub fn run_cli_within(args: &[&str], timeout: Duration) -> Result<std::process::Output, std::process::Output> {
    run_cli_with_env_within(args, &[], timeout)
}

/// As `run_cli_within`, with the environment variables `env` (name, value) added to the
/// inherited ones: a test fault trigger, for one.
///
/// # Errors
/// As `run_cli_within`.
///
/// # Panics
/// As `run_cli_within`.
pub fn run_cli_with_env_within(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<std::process::Output, std::process::Output> {
    let binary = broker_binary();
    let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let out_path = std::env::temp_dir().join(format!("ringmq-test-cli-{}-{stamp}.out", std::process::id()));
    let err_path = std::env::temp_dir().join(format!("ringmq-test-cli-{}-{stamp}.err", std::process::id()));
    // Output goes to files, not pipes, so a chatty command cannot block on a full pipe while we
    // poll for its exit.
    let stdout = File::create(&out_path).unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
    let stderr = File::create(&err_path).unwrap_or_else(|e| panic!("creating {}: {e}", err_path.display()));
    let mut child = Command::new(&binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
    let deadline = Instant::now() + timeout;
    let (status, exited) = loop {
        if let Some(status) = child.try_wait().expect("waiting for a CLI child") {
            break (status, true);
        }
        if Instant::now() >= deadline {
            // It may have exited just now; a failed kill is then harmless.
            let _ = child.kill();
            break (child.wait().expect("reaping a killed CLI child"), false);
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    // The files were only a transport for the output, which is returned.
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    let output = std::process::Output { status, stdout, stderr };
    if exited {
        Ok(output)
    } else {
        Err(output)
    }
}

impl BrokerProcess {
    /// Starts `ringmq broker ARGS...` exactly as given (no `--host`, `--port` or `--pin-cores`
    /// added) and waits until it accepts TCP connections on loopback `port`, which `args` (or a
    /// config file they name) must make it listen on.
    ///
    /// # Errors
    /// The broker exited during startup or did not accept connections on `port` within
    /// `STARTUP_TIMEOUT` (it is killed then); the message includes its output.
    ///
    /// # Panics
    /// If the binary cannot be found.
    pub fn start_exact(args: &[&str], port: u16) -> Result<BrokerProcess, String> {
        BrokerProcess::spawn(&[], args, ([127, 0, 0, 1], port).into())
    }

    /// Starts `ip netns exec NAMESPACE ringmq broker --host IP --port PORT --pin-cores false
    /// ARGS...` for `addr` = `IP:PORT`, an address of the network namespace `namespace`, and waits
    /// until it accepts TCP connections there (from the caller's namespace, which must be able to
    /// reach `addr`). `ip netns exec` execs the binary, so `pid()` and the kill on drop are the
    /// broker's own; `restart` starts it in the same namespace again.
    ///
    /// # Errors
    /// As `start_exact` (a namespace that does not exist makes `ip` exit during startup).
    ///
    /// # Panics
    /// If the binary cannot be found.
    pub fn start_in_namespace(namespace: &str, addr: SocketAddr, args: &[&str]) -> Result<BrokerProcess, String> {
        let launcher = ["ip", "netns", "exec", namespace].map(str::to_owned);
        let host = addr.ip().to_string();
        let port = addr.port().to_string();
        let mut all = vec!["--host", host.as_str(), "--port", port.as_str(), "--pin-cores", "false"];
        all.extend_from_slice(args);
        BrokerProcess::spawn(&launcher, &all, addr)
    }

    /// Runs `LAUNCHER... BINARY broker ARGS...` and waits until it serves on `addr`.
    fn spawn(launcher: &[String], args: &[&str], addr: SocketAddr) -> Result<BrokerProcess, String> {
        let binary = broker_binary();
        let port = addr.port();
        let log_path = std::env::temp_dir().join(format!(
            "ringmq-test-broker-{}-{port}-{}.log",
            std::process::id(),
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        let log = File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("cloning log handle: {e}"))?;
        let mut command = match launcher.split_first() {
            Some((program, before)) => {
                let mut command = Command::new(program);
                command.args(before).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let child = command
            .arg("broker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawning {} (launcher {launcher:?}): {e}", binary.display()))?;
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let broker = BrokerProcess { child, port, log_path, args, addr, launcher: launcher.to_vec() };
        broker.wait_until_serving()
    }
}

/// Longest a CLI command may run in `run_cli`: every command the tests run finishes in well under
/// a second, so this only bounds a hang.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

impl BrokerProcess {
    /// Runs `ringmq ARGS... -b ADDR` against this broker.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let addr = self.addr();
        let mut all = args.to_vec();
        all.extend(["-b", addr.as_str()]);
        run_cli(&all)
    }
}

/// Asserts the command exited 0 and returns its stdout.
///
/// # Panics
/// If it did not, showing its status and stderr.
pub fn success(output: &std::process::Output) -> String {
    assert!(output.status.success(), "exit {:?}; stderr: {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// Asserts `error` is a request failure with `code` whose text contains `text`.
///
/// # Panics
/// If it is not.
pub fn assert_failed(error: &ringmq_client::ClientError, code: ringmq_core::frame::ErrorCode, text: &str) {
    match error {
        ringmq_client::ClientError::Failed { code: got, message } => {
            assert_eq!(*got, code, "{message}");
            assert!(message.contains(text), "expected {text:?} in {message:?}");
        }
        other => panic!("expected a Failed error with {code:?}, got {other:?}"),
    }
}

/// Attempts at starting a cluster on free ports (a port may be taken between probe and bind).
const CLUSTER_ATTEMPTS_MAX: u32 = 3;

/// Starts three brokers on free loopback ports, each with `--shards 2 --ha-cluster true`, an
/// `--ha-brokers-url` listing all three, and `extra` arguments; returns them in URL order.
///
/// # Panics
/// If the cluster does not start after `CLUSTER_ATTEMPTS_MAX` attempts.
pub fn start_cluster(extra: &[&str]) -> Vec<BrokerProcess> {
    let mut last_failure = String::new();
    for _ in 0..CLUSTER_ATTEMPTS_MAX {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let url = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut brokers = Vec::new();
        for &port in &ports {
            let port_text = port.to_string();
            let mut args = vec![
                "--host",
                "127.0.0.1",
                "--port",
                &port_text,
                "--pin-cores",
                "false",
                "--shards",
                "2",
                "--ha-cluster",
                "true",
                "--ha-brokers-url",
                &url,
            ];
            args.extend_from_slice(extra);
            match BrokerProcess::start_exact(&args, port) {
                Ok(broker) => brokers.push(broker),
                Err(failure) => {
                    last_failure = failure;
                    break;
                }
            }
        }
        if brokers.len() == 3 {
            return brokers;
        }
    }
    panic!("cluster did not start after {CLUSTER_ATTEMPTS_MAX} attempts; last failure: {last_failure}");
}

/// Opens a raw socket to `addr`, sends a preamble with `flags`, and returns every frame the broker
/// sent before it closed the connection (a reset after the last frame also ends it).
///
/// # Panics
/// If the broker does not close the connection within `wait`, or a read fails otherwise.
pub fn frames_until_closed(addr: &str, flags: u16, wait: Duration) -> Vec<ringmq_core::frame::Frame> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|error| panic!("connecting to {addr}: {error}"));
    let deadline = Instant::now() + wait;
    stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    let mut preamble = bytes::BytesMut::new();
    let version = ringmq_core::frame::preamble_version(flags);
    ringmq_core::wire::encode_preamble(ringmq_core::frame::Preamble { version, flags }, &mut preamble);
    stream.write_all(&preamble).expect("sending the preamble");
    let mut received = bytes::BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                assert!(Instant::now() < deadline, "connection not closed within {wait:?}; got {received:?}");
            }
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("reading from {addr}: {error}"),
        }
    }
    let mut frames = Vec::new();
    while let Some(frame) =
        ringmq_core::wire::decode(&mut received, ringmq_core::limits::FRAME_BYTES_MAX).expect("broker output decodes")
    {
        frames.push(frame);
    }
    frames
}

/// A `ringmq` CLI command running in the background (a sender or receiver that runs while the test
/// does something else); killed by PID on drop, so a failing test leaves none behind.
#[derive(Debug)]
pub struct CliProcess {
    /// The child process.
    child: Child,
    /// Where its stdout goes.
    out_path: PathBuf,
    /// Where its stderr goes.
    err_path: PathBuf,
    /// The command line, for messages.
    command: String,
}

impl CliProcess {
    /// Starts `ringmq ARGS...` with stdin closed and its output going to files.
    ///
    /// # Panics
    /// If the binary cannot be started.
    pub fn spawn(args: &[&str]) -> CliProcess {
        let binary = broker_binary();
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let base = std::env::temp_dir().join(format!("ringmq-test-bg-{}-{stamp}", std::process::id()));
        let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
        let stdout = File::create(&out_path).unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
        let stderr = File::create(&err_path).unwrap_or_else(|e| panic!("creating {}: {e}", err_path.display()));
        let child = Command::new(&binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        CliProcess { child, out_path, err_path, command: format!("ringmq {}", args.join(" ")) }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    ///
    /// # Panics
    /// If waiting fails.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("waiting for a CLI child")
    }

    /// What it printed so far: stdout, then stderr.
    pub fn output(&self) -> String {
        let stdout = std::fs::read_to_string(&self.out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.err_path).unwrap_or_default();
        format!("`{}` stdout:\n{stdout}\nstderr:\n{stderr}", self.command)
    }

    /// Waits at most `timeout` for it to exit; returns its status and stdout.
    ///
    /// # Errors
    /// It had not exited within `timeout` (it is killed then): what it printed up to then.
    pub fn wait_within(&mut self, timeout: Duration) -> Result<(std::process::ExitStatus, String), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Ok((status, std::fs::read_to_string(&self.out_path).unwrap_or_default()));
            }
            if Instant::now() >= deadline {
                let output = self.output();
                self.kill();
                return Err(format!("not exited within {timeout:?}; {output}"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Asks it to finish (SIGTERM): `send --numbered` and `receive --numbered` then wait for
    /// their outstanding confirms or acks and print their summary.
    ///
    /// # Panics
    /// If `kill` fails (the process was reaped already).
    pub fn terminate(&self) {
        signal("-TERM", self.pid());
    }

    /// Kills it now (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        // It may have exited already; the kill then fails harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        self.kill();
        // The files were only a transport for the output, shown in any failure message.
        let _ = std::fs::remove_file(&self.out_path);
        let _ = std::fs::remove_file(&self.err_path);
    }
}
