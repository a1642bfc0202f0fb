//! A test network of Linux network namespaces: a bridge in the test's own namespace and one
//! namespace per broker, each joined to the bridge by a veth pair. The partition and
//! fault-injection tests run their brokers in it (`BrokerProcess::start_in_namespace`).
//!
//! Per run, with the test's PREFIX (`rmqp` for the partition test, `rmqf` for the fault-injection
//! run): a bridge `PREFIXPIDbr` with address 10.77.S.254/24 in the test's namespace (the subnet S
//! is the first free one from the PID on), and namespaces `PREFIXPIDnK` (K = 1..count) each with
//! one end of a veth pair, address 10.77.S.K/24; the other end `PREFIXPIDhK` is a port of the
//! bridge. The test reaches the brokers from its own namespace through the bridge. `cut(k)` sets
//! the bridge's end of namespace K's veth down (no frame passes either way, nothing is reset);
//! `heal(k)` sets it up. `add_bridge_address` gives the bridge more addresses of the subnet (the
//! fault-injection run's proxy listens on them).
//!
//! It does not filter traffic by address or port (the `firewall` module does that), and starts no
//! process.
//!
//! Invariants:
//! - Everything `Network::create` made is deleted when the `Network` is dropped, even when the
//!   creation failed half-way, so a failing test leaves nothing behind.
//! - Names carry the PID, so parallel runs do not collide; leftovers of runs whose process is gone
//!   (killed before their guard ran) are deleted by the next `create` with the same prefix.
//! - The bridge's first address is 10.77.S.254, so connections the test opens to a broker come
//!   from there unless they bind another source.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

/// With this set (to anything but `0`), a machine that cannot run a network-namespace test fails
/// it instead of skipping it.
pub const REQUIRE_ENV: &str = "RINGMQ_REQUIRE_NETNS";

/// The test's network: a bridge in the test's namespace, and one namespace per broker with a veth
/// pair to the bridge. Deleted on drop.
#[derive(Debug)]
pub struct Network {
    /// `PREFIXPID`, the start of every name.
    name: String,
    /// The third octet of the subnet 10.77.S.0/24.
    subnet: u8,
    /// Whether the bridge exists, for the cleanup.
    bridge: bool,
    /// The namespaces created so far, for the cleanup.
    namespaces: Vec<u8>,
}

impl Network {
    /// Creates the bridge and `count` namespaces, numbered from 1, each linked to the bridge; every
    /// name starts with `prefix` (at most 4 characters: interface names have at most 15).
    ///
    /// # Errors
    /// Why the machine cannot: not root, no `ip`, or a command that failed (with its output).
    ///
    /// # Panics
    /// If `prefix` is longer than 4 characters or `count` is above 250.
    pub fn create(prefix: &str, count: u8) -> Result<Network, String> {
        assert!(prefix.len() <= 4, "prefix {prefix:?}: interface names allow at most 4 characters of it");
        assert!(count <= 250, "{count} namespaces: the subnet has room for 250");
        // `ip` refuses to create namespaces for non-root users with a less clear message.
        let uid = command_output("id", &["-u"])?;
        if uid.trim() != "0" {
            return Err(format!("needs root for network namespaces (uid {})", uid.trim()));
        }
        remove_leftovers(prefix);
        let name = format!("{prefix}{}", std::process::id());
        let mut network = Network { subnet: free_subnet()?, name, bridge: false, namespaces: Vec::new() };
        let bridge = network.bridge_name();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        network.bridge = true;
        ip(&["addr", "add", &format!("{}/24", network.ip(254)), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for k in 1..=count {
            let namespace = network.namespace(k);
            ip(&["netns", "add", &namespace])?;
            network.namespaces.push(k);
            let (host_end, inner_end) = (network.host_end(k), format!("{}p{k}", network.name));
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &inner_end])?;
            // Moved first: deleting the namespace then deletes the pair.
            ip(&["link", "set", &inner_end, "netns", &namespace])?;
            ip(&["link", "set", &host_end, "master", &bridge, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{}/24", network.ip(k)), "dev", &inner_end])?;
            ip(&["-n", &namespace, "link", "set", &inner_end, "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// `10.77.S.host`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// `10.77.S.host:port`.
    pub fn addr(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip(host), port))
    }

    /// The name of namespace `k`.
    pub fn namespace(&self, k: u8) -> String {
        format!("{}n{k}", self.name)
    }

    /// `PREFIXPID`, the start of every name of this run (the firewall's table takes it too).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds 10.77.S.host/24 to the bridge, so the test can listen (and bind sources) there.
    ///
    /// # Errors
    /// `ip` failed.
    pub fn add_bridge_address(&self, host: u8) -> Result<(), String> {
        ip(&["addr", "add", &format!("{}/24", self.ip(host)), "dev", &self.bridge_name()]).map(drop)
    }

    /// Cuts namespace `k` off: its veth's bridge end goes down, so no frame passes either way.
    ///
    /// # Panics
    /// If `ip` fails.
    pub fn cut(&self, k: u8) {
        ip(&["link", "set", &self.host_end(k), "down"]).expect("cutting a namespace off");
    }

    /// Undoes `cut`.
    ///
    /// # Panics
    /// If `ip` fails.
    pub fn heal(&self, k: u8) {
        ip(&["link", "set", &self.host_end(k), "up"]).expect("healing a namespace");
    }

    fn bridge_name(&self) -> String {
        format!("{}br", self.name)
    }

    /// The bridge's end of namespace `k`'s veth pair.
    fn host_end(&self, k: u8) -> String {
        format!("{}h{k}", self.name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Best effort: each part is deleted even if another could not be; a failure is reported,
        // not raised, since this may run during a panic. The veth pairs go first and by name: a
        // deleted namespace lingers, with its end of the pair, while a socket of it is still
        // closing (and setup may have failed before the pair existed, hence no report).
        for &k in &self.namespaces {
            let _ = ip(&["link", "del", &self.host_end(k)]);
        }
        for &k in &self.namespaces {
            if let Err(error) = ip(&["netns", "del", &self.namespace(k)]) {
                eprintln!("network namespace cleanup: {error}");
            }
        }
        if self.bridge {
            if let Err(error) = ip(&["link", "del", &self.bridge_name()]) {
                eprintln!("network namespace cleanup: {error}");
            }
        }
    }
}

/// Says why `test` does not run, on stdout and stderr with `SKIPPED:` first, and fails if
/// `RINGMQ_REQUIRE_NETNS` demands that it runs.
///
/// # Panics
/// If `RINGMQ_REQUIRE_NETNS` is set to anything but `0`.
pub fn skip(test: &str, reason: &str) {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|value| value != "0");
    assert!(!required, "{REQUIRE_ENV} is set but the {test} cannot run: {reason}");
    println!("SKIPPED: {test}: network namespaces unavailable: {reason}");
    eprintln!("SKIPPED: {test}: network namespaces unavailable: {reason}");
}

/// Runs `program ARGS...` and returns its stdout.
///
/// # Errors
/// It could not be run or exited non-zero; the message holds the command and its stderr.
pub fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let command = format!("`{program} {}`", args.join(" "));
    let output = Command::new(program).args(args).output().map_err(|error| format!("{command}: {error}"))?;
    if !output.status.success() {
        return Err(format!("{command}: {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `name` is `PREFIXPID...` for a PID that no longer exists; `tail_ours` says whether the
/// rest after the PID is one of the names this module (or the firewall) gives.
pub fn of_a_run_that_is_gone(prefix: &str, name: &str, tail_ours: impl Fn(&str) -> bool) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else { return false };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    !digits.is_empty() && tail_ours(&rest[digits.len()..]) && !std::path::Path::new(&format!("/proc/{digits}")).exists()
}

/// Runs `ip ARGS...`.
fn ip(args: &[&str]) -> Result<String, String> {
    command_output("ip", args)
}

/// A subnet 10.77.S.0/24 no route of this namespace uses, starting from one picked by the PID.
fn free_subnet() -> Result<u8, String> {
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    let first = std::process::id() % 250;
    (0..250)
        .map(|offset| ((first + offset) % 250 + 1) as u8)
        .find(|subnet| !routes.contains(&format!("10.77.{subnet}.")))
        .ok_or_else(|| "every subnet 10.77.1-250.0/24 is routed already".to_owned())
}

/// Deletes the namespaces and bridges of earlier runs with `prefix` whose process is gone. Only
/// names `PREFIXPIDnK`, `PREFIXPIDhK` and `PREFIXPIDbr` of PIDs that do not exist are touched.
fn remove_leftovers(prefix: &str) {
    let ours = |tail: &str| {
        let numbered = |letter| tail.strip_prefix(letter).is_some_and(|k: &str| k.parse::<u8>().is_ok());
        tail == "br" || numbered('n') || numbered('h')
    };
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        if let Some(namespace) = line.split_whitespace().next().filter(|name| of_a_run_that_is_gone(prefix, name, ours))
        {
            eprintln!("network namespaces: deleting namespace {namespace} of a run that is gone");
            let _ = ip(&["netns", "del", namespace]);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        // `N: NAME: <FLAGS> ...`, NAME `rmqpPIDh1@if14` for a veth.
        let name = line.split(": ").nth(1).and_then(|name| name.split('@').next());
        if let Some(link) = name.filter(|name| of_a_run_that_is_gone(prefix, name, ours)) {
            eprintln!("network namespaces: deleting link {link} of a run that is gone");
            let _ = ip(&["link", "del", link]);
        }
    }
}
