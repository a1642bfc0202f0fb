//! Partitions by address with nftables: a table of the test's own (`inet PREFIXPIDfw`) with one
//! chain on the input hook of the test's network namespace, holding `drop` rules for packets from
//! one address to a set of others. The fault-injection run routes every broker-to-broker
//! connection through its proxy, on addresses of the test's namespace, so a rule there drops one
//! direction of the traffic between two brokers while clients still reach both.
//!
//! It does not filter what the kernel forwards between namespaces (nothing is forwarded in the
//! networks of `netns`: every broker-to-broker connection ends at the proxy), and it keeps no
//! state of its own: `set_drops` replaces the whole rule set in one `nft -f` transaction.
//!
//! Invariants:
//! - The table exists from `Firewall::create` until the `Firewall` is dropped, even during a
//!   panic; nothing else of the machine's ruleset is touched.
//! - Leftover tables of runs whose process is gone are deleted by the next `create` with the same
//!   prefix.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::netns::{command_output, of_a_run_that_is_gone};

/// An nftables table of drop rules; deleted on drop.
#[derive(Debug)]
pub struct Firewall {
    /// `PREFIXPIDfw`.
    table: String,
}

/// Packets from `from` to any of `to` are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropRule {
    /// The source address.
    pub from: Ipv4Addr,
    /// The destination addresses.
    pub to: Vec<Ipv4Addr>,
}

impl Firewall {
    /// Creates table `inet NAMEfw` (`name` = `PREFIXPID`, as `Network::name` gives it) with an
    /// empty input chain that accepts by default.
    ///
    /// # Errors
    /// `nft` is missing, or the kernel refused the table (no nf_tables).
    pub fn create(prefix: &str, name: &str) -> Result<Firewall, String> {
        remove_leftovers(prefix);
        let firewall = Firewall { table: format!("{name}fw") };
        firewall.apply(&format!(
            "add table inet {0}\nadd chain inet {0} input {{ type filter hook input priority 0 ; policy accept ; }}\n",
            firewall.table
        ))?;
        Ok(firewall)
    }

    /// Replaces every rule with `drops` (none: everything passes).
    ///
    /// # Panics
    /// If `nft` fails (the table was made by `create`, so that is an environment failure).
    pub fn set_drops(&self, drops: &[DropRule]) {
        let mut script = format!("flush chain inet {} input\n", self.table);
        for drop in drops.iter().filter(|drop| !drop.to.is_empty()) {
            let to = drop.to.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ");
            script.push_str(&format!(
                "add rule inet {} input ip saddr {} ip daddr {{ {to} }} drop\n",
                self.table, drop.from
            ));
        }
        self.apply(&script).unwrap_or_else(|error| panic!("setting the firewall's drops: {error}"));
    }

    /// Runs `nft -f -` with `script` on stdin.
    fn apply(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("`nft -f -`: {error}"))?;
        let mut stdin = child.stdin.take().expect("a piped stdin");
        stdin.write_all(script.as_bytes()).map_err(|error| format!("writing to `nft -f -`: {error}"))?;
        drop(stdin);
        let output = child.wait_with_output().map_err(|error| format!("`nft -f -`: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "`nft -f -` with\n{script}: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        // Best effort, and reported rather than raised: this may run during a panic.
        if let Err(error) = command_output("nft", &["delete", "table", "inet", &self.table]) {
            eprintln!("firewall cleanup: {error}");
        }
    }
}

/// Deletes the tables `inet PREFIXPIDfw` of PIDs that do not exist.
fn remove_leftovers(prefix: &str) {
    for line in command_output("nft", &["list", "tables"]).unwrap_or_default().lines() {
        // `table inet NAME`.
        let Some(name) = line.strip_prefix("table inet ") else { continue };
        if of_a_run_that_is_gone(prefix, name, |tail| tail == "fw") {
            eprintln!("firewall: deleting table {name} of a run that is gone");
            let _ = command_output("nft", &["delete", "table", "inet", name]);
        }
    }
}
