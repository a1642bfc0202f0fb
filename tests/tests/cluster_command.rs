//! `ringmq cluster`: the local HA cluster for trying ringmq out, as a user runs it.
//!
//! What is checked: `ringmq cluster --nodes 3 --base-port P` exits 0 once the first broker is the
//! primary and the other two are ready backups, prints the client URL of all three, and the `kill`
//! command with their pids; `ha status --all` then shows active, ready, ready; a message sent to the
//! primary is on both backups.
//!
//! Method: the command runs in a fresh temporary directory (it writes `ringmq-node-PORT.log` there)
//! on three consecutive ports found free just before; the test kills the printed pids at the end,
//! also when it fails (a guard). Build the broker first: `cargo build -p ringmq`.

use std::net::TcpListener;
use std::process::Command;

use ringmq_tests::broker_binary;

/// Kills the cluster's pids on drop.
struct Pids(Vec<String>);

impl Drop for Pids {
    fn drop(&mut self) {
        for pid in &self.0 {
            // Already gone is fine.
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// A port P such that P, P+1 and P+2 are free on loopback right now.
fn three_free_ports() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if first > u16::MAX - 3 {
            continue;
        }
        if (1..3).all(|offset| TcpListener::bind(("127.0.0.1", first + offset)).is_ok()) {
            return first;
        }
    }
    panic!("no three consecutive free ports");
}

/// Runs `ringmq ARGS` in `dir` and returns its exit success, stdout and stderr.
fn ringmq(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(broker_binary()).args(args).current_dir(dir).output().expect("running ringmq");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn cluster_starts_three_brokers_promotes_one_and_waits_until_the_others_are_ready() {
    let dir = std::env::temp_dir().join(format!("ringmq-cluster-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = three_free_ports();
    let base_text = base.to_string();
    let (ok, out, err) = ringmq(&dir, &["cluster", "--nodes", "3", "--base-port", &base_text]);
    let pids = Pids(
        out.lines()
            .find_map(|line| line.split_once("stop the cluster with: kill "))
            .map(|(_, pids)| pids.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    );
    assert!(ok, "ringmq cluster failed: {out} {err}");
    assert_eq!(pids.0.len(), 3, "{out}");
    let addresses: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    assert!(out.contains(&format!("client URL: {}", addresses.join(","))), "{out}");

    let (ok, status, err) = ringmq(&dir, &["ha", "status", "-b", &addresses[0], "--all"]);
    assert!(ok, "{status} {err}");
    let states: Vec<&str> = status.lines().filter_map(|line| line.split_whitespace().nth(1)).collect();
    assert_eq!(states, ["active", "ready", "ready"], "{status}");

    let (ok, out, err) = ringmq(&dir, &["queue", "add", "demo", "-b", &addresses[0]]);
    assert!(ok, "{out} {err}");
    let (ok, out, err) = ringmq(&dir, &["send", "-b", &addresses[0], "-k", "demo", "hello"]);
    assert!(ok, "{out} {err}");
    for backup in &addresses[1..] {
        let listed =
            ringmq_tests::eventually("the backup holds the message", std::time::Duration::from_secs(10), || {
                let (_, out, _) = ringmq(&dir, &["queue", "list", "-b", backup, "--ha-admin"]);
                let depth = out.lines().find(|l| l.starts_with("demo ")).and_then(|l| l.split_whitespace().nth(1));
                if depth == Some("1") {
                    Ok(out)
                } else {
                    Err(out)
                }
            });
        assert!(listed.contains("demo"));
    }
    drop(pids);
    let _ = std::fs::remove_dir_all(&dir);
}
