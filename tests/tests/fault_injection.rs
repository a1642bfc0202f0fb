//! The fault-injection run (Jepsen-style): real broker processes on a real (namespaced) network,
//! a numbered producer and consumer, a nemesis that breaks processes and links from a seeded
//! random schedule, a Pacemaker-like cluster manager, and a checker at the end.
//!
//! What is checked: a three-broker cluster (`ha-replicate all`, 2 shards, link intervals 0.1 s
//! maintenance and 0.25 s heartbeat, `ha-backup-timeout` 5 s) serves a `ringmq send --numbered
//! --reconnect --producer-id` at `RATE` msg/s and a `ringmq receive --numbered --reconnect`, both
//! with client heartbeats of 0.5 s and the cluster's URL list, while the nemesis runs its schedule.
//! After the last fault is healed, the cluster converges, the producer is stopped (it waits for its
//! outstanding confirms) and the consumer drains the queue. Then: every confirmed number was
//! received (0 missing), duplicates are counted (numbers stored twice although the producer's
//! re-sends should be suppressed by the broker: an open defect, so they fail the run only with
//! `RINGMQ_FAULTS_STRICT_DUPLICATES=1`), the producer had every message it sent confirmed, and the cluster
//! ends with exactly one `active` primary and the two others `ready`. A report gives the seed, the
//! faults done by kind, the numbers sent, confirmed and received, duplicates, redeliveries, the
//! cluster manager's promotions and the time taken.
//!
//! The nemesis: a schedule of faults drawn from a seed (printed first; `RINGMQ_FAULTS_SEED=S`
//! replays it), of `RINGMQ_FAULTS_DURATION` seconds (default 90) of faults and pauses, one fault
//! at a time, each healed before the next:
//! - `kill`: SIGKILL a broker, restart it after a while (it comes back empty and catches up);
//! - `pause`: SIGSTOP a broker, SIGCONT it after a while;
//! - `isolate`: set the bridge's end of a broker's veth down (no frame passes: brokers, clients
//!   and the cluster manager all lose it), then up;
//! - `partition`: nftables drops the traffic between a broker and both others (clients and the
//!   manager still reach every broker), both ways or one way (only its packets, or only the
//!   others' packets to it);
//! - `split`: the same between two brokers only, the third still reaching both;
//! - `delay`, `stall`, `cut` on a broker-to-broker link (a backup's replication link to the
//!   primary, or the primary's link to a backup) or on the clients' link to the primary: the
//!   harness's fault proxy adds latency to every byte, stops forwarding for a while, or resets
//!   every connection.
//!
//! Faults pick their broker by role when they start (the primary, or one of the backups, by the
//! `ha status` answers), so a replayed schedule hits the same roles. Before each fault that takes
//! a broker or a link away (all but `delay` and `cut`), the nemesis waits until the cluster is
//! whole again (one `active`, two `ready`): the cluster promises to survive one failure at a time,
//! not two (a second broker lost while the first still catches up can leave no `ready` broker to
//! promote). The time it waited is the recovery time, reported (the longest too). A cluster that
//! is not whole within `RECOVERY_WAIT` fails the run: a broker stuck.
//!
//! The cluster manager (`ringmq_tests::cluster_manager`) runs throughout: every 0.5 s it asks each
//! broker `ringmq ha status` (2 s timeout) and, when none answers as a primary, promotes a `ready`
//! one with `ringmq ha promote --cluster-manager`, never a `joining` or `catchup` one.
//!
//! Method: the network of `ringmq_tests::netns` (prefix `rmqf`): broker K in namespace K at
//! 10.77.S.K:5672. Every connection between processes passes the harness's fault proxy
//! (`ringmq_tests::fault_proxy`), which listens on extra addresses of the bridge: the link from
//! broker K to broker J on 10.77.S.(100+10K+J):5672 (it connects to J from that address too), and
//! the clients' link to broker J on 10.77.S.(200+J):5672. Broker K's `ha-brokers-url` lists its own
//! address at its place and the proxy links K->J for the others (so its member index, and its
//! epochs, are its own), and `ha-public-url` lists the clients' links. Since every packet of the
//! link K->J has 10.77.S.(100+10K+J) at one end, an nftables rule on the test's namespace
//! (`ringmq_tests::firewall`) drops one direction between two brokers (`ip saddr K ip daddr
//! {link K->J, link J->K}`). The cluster manager and the checks reach the brokers directly.
//! Guards heal and delete everything on drop (a stopped broker is continued, processes are
//! killed, the firewall table and the namespaces deleted), so a failing run leaves nothing behind.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables; `scripts/test` installs both when root).
//! Without them the test prints `SKIPPED: ...` and passes without having run;
//! `RINGMQ_REQUIRE_NETNS=1` makes that a failure. CI runs the short schedule (`scripts/test`);
//! the hour-long run:
//! `RINGMQ_FAULTS_DURATION=3600 cargo nextest run --release -P faults -p ringmq-tests --test fault_injection`
//! (the `faults` nextest profile gives it the time). Build the broker first: `cargo build
//! --release -p ringmq`, and set `RINGMQ_BIN` to it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringmq_tests::cluster_manager::{is_primary, states, ClusterManager, ManagerReport};
use ringmq_tests::fault_proxy::{FaultProxy, LinkId};
use ringmq_tests::firewall::{DropRule, Firewall};
use ringmq_tests::netns::{skip, Network};
use ringmq_tests::{run_cli, run_cli_within, success, BrokerProcess, CliProcess, Stopped};

/// Brokers in the cluster.
const BROKERS: usize = 3;
/// The port every broker and every proxy link listens on, each on its own address.
const PORT: u16 = 5672;
/// Prefix of every name this test gives a namespace, an interface or a firewall table.
const PREFIX: &str = "rmqf";
/// The queue the producer and consumer use.
const QUEUE: &str = "faults";
/// The producer's rate, in messages per second.
const RATE: u64 = 500;
/// Seconds of faults and pauses when `RINGMQ_FAULTS_DURATION` is not set.
const DURATION_DEFAULT_S: u64 = 90;
/// The cluster manager's monitor interval.
const MONITOR_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a broker may take to answer `ha status` before the manager counts it as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the cluster may take to be whole again (one active, two ready) after a healed fault:
/// a restart, a promotion, catch-up and the recovering primary's wait for its backups take
/// seconds; this bounds a stuck broker.
const RECOVERY_WAIT: Duration = Duration::from_secs(60);
/// Longest the producer may take to have its outstanding messages confirmed once stopped, and the
/// consumer to drain the queue.
const FINISH_WAIT: Duration = Duration::from_secs(60);

#[test]
fn numbered_producer_and_consumer_lose_nothing_under_a_seeded_fault_schedule() {
    // Goal: the fault-injection run: across a random schedule of process, network and link
    // faults, every confirmed number is delivered, none is stored twice, and the cluster converges
    // to one primary and two ready backups. Method: see the file's comment.
    let seed = seed();
    let duration = Duration::from_secs(duration_s());
    println!("fault-injection seed {seed} (replay: RINGMQ_FAULTS_SEED={seed}), {duration:?} of faults");
    let schedule = schedule(seed, duration);
    for (index, step) in schedule.iter().enumerate() {
        println!("  schedule {index}: {} then {:.1?} quiet", step.fault, step.pause_after);
    }

    // The network, the firewall, the proxy links and the brokers.
    let network = match Network::create(PREFIX, BROKERS as u8) {
        Ok(network) => network,
        Err(reason) => return skip("fault-injection test", &reason),
    };
    let firewall = match Firewall::create(PREFIX, network.name()) {
        Ok(firewall) => firewall,
        Err(reason) => return skip("fault-injection test", &format!("no nftables: {reason}")),
    };
    let cluster = Cluster::create(&network);
    let mut brokers = cluster.start_brokers(&network);
    let addrs: Vec<String> = brokers.iter().map(BrokerProcess::addr).collect();
    success(&run_cli(&["ha", "promote", "-b", &addrs[0], "--cluster-manager"]));
    wait_whole(&addrs, RECOVERY_WAIT).unwrap_or_else(|seen| panic!("the new cluster is not whole: {seen:?}"));
    success(&run_cli(&["queue", "add", QUEUE, "-b", &addrs[0]]));
    // The backups linked to the primary through the proxy, so its faults reach the links.
    for k in 1..BROKERS {
        let link = cluster.links[k][0].expect("two brokers");
        assert!(cluster.proxy.connections(link) > 0, "backup {k} linked around the proxy");
    }

    // The producer, the consumer and the cluster manager run through the whole schedule.
    let client_url = cluster.client_url();
    let failover = ["-b", client_url.as_str(), "--reconnect", "--heartbeat", "0.5", "--numbered"];
    let (rate, producer_id) = (RATE.to_string(), format!("faults-{seed}"));
    let mut producer = CliProcess::spawn(
        &[&["send"], &failover[..], &["-k", QUEUE, "--rate", &rate, "--producer-id", &producer_id]].concat(),
    );
    let mut consumer = CliProcess::spawn(&[&["receive"], &failover[..], &[QUEUE]].concat());
    let manager = ClusterManager::start(addrs.clone(), MONITOR_INTERVAL, STATUS_TIMEOUT);

    // The nemesis.
    let started = Instant::now();
    let mut nemesis = Nemesis { network: &network, firewall: &firewall, cluster: &cluster, brokers: &mut brokers };
    let mut done: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut recovery_longest = Duration::ZERO;
    for (index, step) in schedule.iter().enumerate() {
        for (what, process) in [("producer", &mut producer), ("consumer", &mut consumer)] {
            if let Some(status) = process.exited() {
                panic!("seed {seed}: the {what} exited during the schedule with {status}; {}", process.output());
            }
        }
        if step.fault.takes_something_away() {
            let waited = Instant::now();
            wait_whole(&addrs, RECOVERY_WAIT).unwrap_or_else(|seen| {
                panic!(
                    "seed {seed}: before fault {index} ({}), the cluster was not whole within {RECOVERY_WAIT:?}: a \
                     broker is stuck; states {seen:?}; manager {:?}\n{}",
                    step.fault,
                    manager.report(),
                    nemesis.logs()
                )
            });
            recovery_longest = recovery_longest.max(waited.elapsed());
        }
        let roles = Roles::of(&states(&addrs, STATUS_TIMEOUT));
        println!("nemesis at {:.1?}: fault {index}: {} ({roles:?})", started.elapsed(), step.fault);
        nemesis.run(&step.fault, &roles);
        *done.entry(step.fault.kind()).or_default() += 1;
        std::thread::sleep(step.pause_after);
    }
    let faults_took = started.elapsed();

    // Every fault is healed: the cluster converges, the producer stops and has its confirms, the
    // consumer drains the queue.
    let waited = Instant::now();
    let whole = wait_whole(&addrs, RECOVERY_WAIT)
        .unwrap_or_else(|seen| panic!("seed {seed}: not whole after the schedule: {seen:?}\n{}", nemesis.logs()));
    recovery_longest = recovery_longest.max(waited.elapsed());
    producer.terminate();
    let (status, sent_text) = producer
        .wait_within(FINISH_WAIT)
        .unwrap_or_else(|failure| panic!("seed {seed}: the producer did not finish: {failure}"));
    let [sent, confirmed] = numbers_of(&sent_text, "sent ")[..] else {
        panic!("seed {seed}: unexpected producer summary: {}", producer.output())
    };
    let producer_ok = status.success();
    let primary = whole;
    drained(&addrs[primary], FINISH_WAIT)
        .unwrap_or_else(|seen| panic!("seed {seed}: the queue was not drained: {seen}; {}", consumer.output()));
    consumer.terminate();
    let (status, received_text) = consumer
        .wait_within(FINISH_WAIT)
        .unwrap_or_else(|failure| panic!("seed {seed}: the consumer did not finish: {failure}"));
    let [distinct, duplicates, missing, redelivered] = numbers_of(&received_text, "received ")[..] else {
        panic!("seed {seed}: unexpected consumer summary: {}", consumer.output())
    };
    let consumer_ok = status.success();
    let end_states = states(&addrs, STATUS_TIMEOUT);
    let manager = manager.stop();
    let evidence = nemesis.evidence();

    // The report, then the verdict.
    let report = Report {
        seed,
        faults_took,
        total: started.elapsed(),
        done,
        recovery_longest,
        sent,
        confirmed,
        distinct,
        duplicates,
        missing,
        redelivered,
        end_states: end_states.clone(),
        manager,
        evidence,
    };
    println!("{report}");
    assert!(producer_ok, "seed {seed}: the producer failed; {}\n{report}", producer.output());
    assert_eq!(sent, confirmed, "seed {seed}: sent but not confirmed; {}\n{report}", producer.output());
    assert_eq!(missing, 0, "seed {seed}: confirmed numbers missing; {}\n{report}", consumer.output());
    assert!(distinct >= confirmed, "seed {seed}: confirmed numbers never received\n{report}");
    assert!(consumer_ok, "seed {seed}: the consumer failed; {}\n{report}", consumer.output());
    // Numbers stored twice despite duplicate suppression are an open defect (seen after kills of
    // the primary; seeds 1796668111933466285 and 1796668824695453191): they are counted and shown,
    // and fail the run only with RINGMQ_FAULTS_STRICT_DUPLICATES=1 until it is fixed. Nothing
    // confirmed may be missing, whatever the setting.
    if duplicates > 0 {
        println!("DUPLICATES: seed {seed}: {duplicates} numbers stored twice despite suppression (open defect)");
        let strict = std::env::var("RINGMQ_FAULTS_STRICT_DUPLICATES").is_ok_and(|v| v != "0");
        assert!(!strict, "seed {seed}: numbers stored twice despite suppression\n{report}");
    }
    let primaries = end_states.iter().flatten().filter(|state| state.as_str() == "active").count();
    let ready = end_states.iter().flatten().filter(|state| state.as_str() == "ready").count();
    assert_eq!((primaries, ready), (1, BROKERS - 1), "seed {seed}: the cluster did not end whole\n{report}");
}

/// `RINGMQ_FAULTS_SEED`, else one from the clock.
fn seed() -> u64 {
    match std::env::var("RINGMQ_FAULTS_SEED") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("RINGMQ_FAULTS_SEED must be a number, got {text:?}")),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

/// `RINGMQ_FAULTS_DURATION`, else `DURATION_DEFAULT_S`.
fn duration_s() -> u64 {
    match std::env::var("RINGMQ_FAULTS_DURATION") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("RINGMQ_FAULTS_DURATION must be seconds, got {text:?}")),
        Err(_) => DURATION_DEFAULT_S,
    }
}

/// A broker a fault hits, chosen by role when the fault starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The broker that answers as primary.
    Primary,
    /// The first (0) or second (1) of the others, in URL order.
    Backup(usize),
}

/// Which packets a partition drops, seen from its first broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Both directions.
    Both,
    /// Only what the first broker sends.
    From,
    /// Only what is sent to the first broker.
    To,
}

/// A link of the fault proxy, chosen by role when the fault starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkTarget {
    /// The connections `from` opens to `to` (a backup's replication link to the primary, or the
    /// primary's probes of a backup).
    Brokers { from: Target, to: Target },
    /// The clients' connections to a broker.
    Clients(Target),
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    /// SIGKILL, restart after `down`.
    Kill { target: Target, down: Duration },
    /// SIGSTOP, SIGCONT after `length`.
    Pause { target: Target, length: Duration },
    /// The broker's veth down for `length`.
    Isolate { target: Target, length: Duration },
    /// nftables drops between `target` and both other brokers for `length`.
    Partition { target: Target, way: Way, length: Duration },
    /// nftables drops between `a` and `b` only for `length`.
    Split { a: Target, b: Target, way: Way, length: Duration },
    /// Every byte of `link` waits `delay` more, for `length`.
    Delay { link: LinkTarget, delay: Duration, length: Duration },
    /// `link` forwards nothing for `length`.
    Stall { link: LinkTarget, length: Duration },
    /// Every connection of `link` is reset.
    Cut { link: LinkTarget },
}

impl Fault {
    /// The kind, for the report: the variant, and for link faults which link.
    fn kind(&self) -> &'static str {
        let brokers = |link: &LinkTarget| matches!(link, LinkTarget::Brokers { .. });
        match self {
            Fault::Kill { .. } => "kill -9 + restart",
            Fault::Pause { .. } => "SIGSTOP + SIGCONT",
            Fault::Isolate { .. } => "isolate (link down)",
            Fault::Partition { way: Way::Both, .. } => "partition from both others, both ways",
            Fault::Partition { .. } => "partition from both others, one way",
            Fault::Split { way: Way::Both, .. } => "split two brokers, both ways",
            Fault::Split { .. } => "split two brokers, one way",
            Fault::Delay { link, .. } if brokers(link) => "delay broker link",
            Fault::Delay { .. } => "delay client link",
            Fault::Stall { link, .. } if brokers(link) => "stall broker link",
            Fault::Stall { .. } => "stall client link",
            Fault::Cut { link } if brokers(link) => "cut broker link",
            Fault::Cut { .. } => "cut client link",
        }
    }

    /// Whether it takes a broker or a link away for a while (all but delays and cuts).
    fn takes_something_away(&self) -> bool {
        !matches!(self, Fault::Delay { .. } | Fault::Cut { .. })
    }

    /// How long it lasts.
    fn length(&self) -> Duration {
        match self {
            Fault::Kill { down: length, .. }
            | Fault::Pause { length, .. }
            | Fault::Isolate { length, .. }
            | Fault::Partition { length, .. }
            | Fault::Split { length, .. }
            | Fault::Delay { length, .. }
            | Fault::Stall { length, .. } => *length,
            Fault::Cut { .. } => Duration::ZERO,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill { target, down } => write!(f, "kill -9 {target:?}, restart after {down:.1?}"),
            Fault::Pause { target, length } => write!(f, "SIGSTOP {target:?} for {length:.1?}"),
            Fault::Isolate { target, length } => write!(f, "isolate {target:?} for {length:.1?}"),
            Fault::Partition { target, way, length } => {
                write!(f, "partition {target:?} from the others ({way:?}) for {length:.1?}")
            }
            Fault::Split { a, b, way, length } => write!(f, "split {a:?} from {b:?} ({way:?}) for {length:.1?}"),
            Fault::Delay { link, delay, length } => write!(f, "delay {link:?} by {delay:.0?} for {length:.1?}"),
            Fault::Stall { link, length } => write!(f, "stall {link:?} for {length:.1?}"),
            Fault::Cut { link } => write!(f, "cut {link:?}"),
        }
    }
}

/// A fault and the quiet time after its heal.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// The fault.
    fault: Fault,
    /// Time without a fault after it was healed.
    pause_after: Duration,
}

/// The schedule of `seed`: steps until their faults and pauses fill `duration`.
fn schedule(seed: u64, duration: Duration) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    while total < duration {
        let fault = draw_fault(&mut rng);
        let pause_after = between(&mut rng, 500, 3000);
        total += fault.length() + pause_after;
        steps.push(Step { fault, pause_after });
    }
    steps
}

/// One fault: its kind by `WEIGHTS`, its targets and lengths uniformly.
fn draw_fault(rng: &mut ChaCha8Rng) -> Fault {
    let total: u64 = WEIGHTS.iter().map(|(weight, _)| weight).sum();
    let mut pick = rng.next_u64() % total;
    let kind = WEIGHTS
        .iter()
        .find(|(weight, _)| {
            let found = pick < *weight;
            pick = pick.saturating_sub(*weight);
            found
        })
        .map(|(_, kind)| *kind)
        .expect("the pick is below the total");
    let target = draw_target(rng);
    let way = [Way::Both, Way::From, Way::To][(rng.next_u64() % 3) as usize];
    match kind {
        "kill" => Fault::Kill { target, down: between(rng, 200, 4000) },
        "pause" => Fault::Pause { target, length: between(rng, 500, 6000) },
        "isolate" => Fault::Isolate { target, length: between(rng, 1000, 6000) },
        "partition" => Fault::Partition { target, way, length: between(rng, 1000, 6000) },
        "split" => {
            let (a, b) = if rng.next_u64().is_multiple_of(3) {
                (Target::Backup(0), Target::Backup(1))
            } else {
                (Target::Primary, Target::Backup((rng.next_u64() % 2) as usize))
            };
            Fault::Split { a, b, way, length: between(rng, 1000, 6000) }
        }
        "delay" => {
            Fault::Delay { link: draw_link(rng), delay: between(rng, 10, 300), length: between(rng, 2000, 8000) }
        }
        "stall" => Fault::Stall { link: draw_link(rng), length: between(rng, 300, 3000) },
        "cut" => Fault::Cut { link: draw_link(rng) },
        other => unreachable!("no fault kind {other}"),
    }
}

/// The primary half the time, else either backup.
fn draw_target(rng: &mut ChaCha8Rng) -> Target {
    match rng.next_u64() % 4 {
        0 | 1 => Target::Primary,
        other => Target::Backup((other - 2) as usize),
    }
}

/// A backup's replication link to the primary (most often), the primary's link to a backup, or
/// the clients' link to the primary.
fn draw_link(rng: &mut ChaCha8Rng) -> LinkTarget {
    let backup = Target::Backup((rng.next_u64() % 2) as usize);
    match rng.next_u64() % 10 {
        0..=3 => LinkTarget::Brokers { from: backup, to: Target::Primary },
        4 | 5 => LinkTarget::Brokers { from: Target::Primary, to: backup },
        _ => LinkTarget::Clients(Target::Primary),
    }
}

/// A duration of `low_ms..high_ms` milliseconds.
fn between(rng: &mut ChaCha8Rng, low_ms: u64, high_ms: u64) -> Duration {
    Duration::from_millis(low_ms + rng.next_u64() % (high_ms - low_ms))
}

/// How often each fault kind is drawn, relative to the others.
const WEIGHTS: [(u64, &str); 8] =
    [(3, "kill"), (2, "pause"), (2, "isolate"), (3, "partition"), (1, "split"), (2, "delay"), (2, "stall"), (2, "cut")];

/// Which broker has which role right now, from `ha status` answers.
#[derive(Debug, Clone, Copy)]
struct Roles {
    /// The broker answering as primary (broker 0 when none does: a fault then hits by position).
    primary: usize,
}

impl Roles {
    fn of(seen: &[Option<String>]) -> Roles {
        let primary = seen.iter().position(|state| state.as_deref().is_some_and(is_primary)).unwrap_or(0);
        Roles { primary }
    }

    /// The broker `target` names.
    fn broker(&self, target: Target) -> usize {
        match target {
            Target::Primary => self.primary,
            Target::Backup(nth) => (0..BROKERS).filter(|&k| k != self.primary).nth(nth).expect("two backups"),
        }
    }
}

/// The proxy links and addresses of the cluster (see the file's comment).
struct Cluster {
    /// Every link; broker-to-broker ones first.
    proxy: FaultProxy,
    /// `links[k][j]`: the link broker K opens to broker J (none for K = J).
    links: Vec<Vec<Option<LinkId>>>,
    /// `clients[j]`: the clients' link to broker J.
    clients: Vec<LinkId>,
    /// Each broker's address.
    brokers: Vec<SocketAddr>,
}

impl Cluster {
    /// Adds the proxy's addresses to the bridge and starts its links.
    ///
    /// # Panics
    /// If an address cannot be added or a link cannot listen.
    fn create(network: &Network) -> Cluster {
        let mut proxy = FaultProxy::new();
        let brokers: Vec<SocketAddr> = (1..=BROKERS as u8).map(|k| network.addr(k, PORT)).collect();
        let mut links = vec![vec![None; BROKERS]; BROKERS];
        for (k, row) in links.iter_mut().enumerate() {
            for (j, link) in row.iter_mut().enumerate().filter(|&(j, _)| j != k) {
                let host = link_host(k, j);
                network.add_bridge_address(host).unwrap_or_else(|error| panic!("{error}"));
                let listen = network.addr(host, PORT);
                let source = Some(IpAddr::V4(network.ip(host)));
                let name = format!("broker {k} -> broker {j}");
                *link = Some(proxy.add_link(&name, listen, brokers[j], source).expect("a proxy link listens"));
            }
        }
        let clients = (0..BROKERS)
            .map(|j| {
                let host = 201 + j as u8;
                network.add_bridge_address(host).unwrap_or_else(|error| panic!("{error}"));
                let name = format!("clients -> broker {j}");
                proxy.add_link(&name, network.addr(host, PORT), brokers[j], None).expect("a proxy link listens")
            })
            .collect();
        Cluster { proxy, links, clients, brokers }
    }

    /// Starts the brokers, each in its namespace, with its own `ha-brokers-url`.
    fn start_brokers(&self, network: &Network) -> Vec<BrokerProcess> {
        let public = self.client_url();
        (0..BROKERS)
            .map(|k| {
                let url = (0..BROKERS)
                    .map(|j| match self.links[k][j] {
                        None => self.brokers[k].to_string(),
                        Some(link) => self.proxy.addr(link).to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let options = [
                    "--shards",
                    "2",
                    "--ha-cluster",
                    "true",
                    "--ha-brokers-url",
                    &url,
                    "--ha-public-url",
                    &public,
                    "--ha-replicate",
                    "all",
                    "--link-maintenance-interval",
                    "0.1",
                    "--link-heartbeat-interval",
                    "0.25",
                    "--ha-backup-timeout",
                    "5",
                ];
                let namespace = network.namespace(k as u8 + 1);
                BrokerProcess::start_in_namespace(&namespace, self.brokers[k], &options)
                    .unwrap_or_else(|failure| panic!("broker {k}: {failure}"))
            })
            .collect()
    }

    /// The clients' URL: their proxy link to each broker.
    fn client_url(&self) -> String {
        self.clients.iter().map(|&link| self.proxy.addr(link).to_string()).collect::<Vec<_>>().join(",")
    }

    /// The proxy link `link` names under `roles`.
    fn link(&self, link: LinkTarget, roles: &Roles) -> LinkId {
        match link {
            LinkTarget::Brokers { from, to } => {
                let (from, to) = (roles.broker(from), roles.broker(to));
                self.links[from][to].expect("two different brokers")
            }
            LinkTarget::Clients(to) => self.clients[roles.broker(to)],
        }
    }
}

/// The last octet of the proxy address of the link broker K opens to broker J (from 0).
fn link_host(k: usize, j: usize) -> u8 {
    100 + 10 * (k as u8 + 1) + (j as u8 + 1)
}

/// What the nemesis acts on.
struct Nemesis<'a> {
    /// For `isolate`.
    network: &'a Network,
    /// For partitions.
    firewall: &'a Firewall,
    /// For link faults, and the addresses partitions drop.
    cluster: &'a Cluster,
    /// For kills and pauses.
    brokers: &'a mut Vec<BrokerProcess>,
}

impl Nemesis<'_> {
    /// Does `fault` with its broker chosen by `roles`, waits its length, heals it.
    ///
    /// # Panics
    /// If a killed broker does not start again.
    fn run(&mut self, fault: &Fault, roles: &Roles) {
        match *fault {
            Fault::Kill { target, down } => {
                let k = roles.broker(target);
                self.brokers[k].kill();
                std::thread::sleep(down);
                self.brokers[k].restart().unwrap_or_else(|failure| panic!("restarting broker {k}: {failure}"));
            }
            Fault::Pause { target, length } => {
                let stopped = Stopped::stop(&self.brokers[roles.broker(target)]);
                std::thread::sleep(length);
                stopped.resume();
            }
            Fault::Isolate { target, length } => {
                let k = roles.broker(target) as u8 + 1;
                self.network.cut(k);
                std::thread::sleep(length);
                self.network.heal(k);
            }
            Fault::Partition { target, way, length } => {
                let k = roles.broker(target);
                let pairs: Vec<(usize, usize)> = (0..BROKERS).filter(|&j| j != k).map(|j| (k, j)).collect();
                self.partition(&pairs, way, length);
            }
            Fault::Split { a, b, way, length } => {
                self.partition(&[(roles.broker(a), roles.broker(b))], way, length);
            }
            Fault::Delay { link, delay, length } => {
                let link = self.cluster.link(link, roles);
                self.cluster.proxy.set_delay(link, delay);
                std::thread::sleep(length);
                self.cluster.proxy.set_delay(link, Duration::ZERO);
            }
            Fault::Stall { link, length } => {
                let link = self.cluster.link(link, roles);
                self.cluster.proxy.set_stalled(link, true);
                std::thread::sleep(length);
                self.cluster.proxy.set_stalled(link, false);
            }
            Fault::Cut { link } => self.cluster.proxy.cut(self.cluster.link(link, roles)),
        }
    }

    /// Drops the traffic between each pair (a, b) (`way` seen from a) for `length`.
    fn partition(&self, pairs: &[(usize, usize)], way: Way, length: Duration) {
        let mut drops = Vec::new();
        for &(a, b) in pairs {
            if way != Way::To {
                drops.push(self.drop_between(a, b));
            }
            if way != Way::From {
                drops.push(self.drop_between(b, a));
            }
        }
        self.firewall.set_drops(&drops);
        std::thread::sleep(length);
        self.firewall.set_drops(&[]);
    }

    /// Drops what broker `from` sends to broker `to`: its packets to the proxy addresses of the
    /// links between them, the one it opens and the one `to` opens.
    fn drop_between(&self, from: usize, to: usize) -> DropRule {
        let address = |link: Option<LinkId>| match self.cluster.proxy.addr(link.expect("two brokers")).ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("the test network is IPv4"),
        };
        let from_ip = match self.cluster.brokers[from].ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("the test network is IPv4"),
        };
        let to: Vec<Ipv4Addr> = vec![address(self.cluster.links[from][to]), address(self.cluster.links[to][from])];
        DropRule { from: from_ip, to }
    }

    /// How often the brokers' logs (of their current processes: a restart starts a new log) say
    /// that links were lost, that a primary stepped down, and that backups became ready: the
    /// faults' effect, for the report.
    fn evidence(&self) -> BTreeMap<&'static str, usize> {
        let logs: Vec<String> = self.brokers.iter().map(ringmq_tests::ha::plain_log).collect();
        EVIDENCE.iter().map(|&(what, line)| (what, logs.iter().map(|log| log.matches(line).count()).sum())).collect()
    }

    /// The last lines of every broker's log, for a failure message.
    fn logs(&self) -> String {
        self.brokers
            .iter()
            .enumerate()
            .map(|(k, broker)| {
                let log = ringmq_tests::ha::plain_log(broker);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                format!("--- broker {k} ({}), last lines:\n{tail}", broker.addr())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What `Nemesis::evidence` counts: a name, and the log text that shows it.
const EVIDENCE: [(&str, &str); 5] = [
    ("backup links lost (primary side)", "backup link lost"),
    ("links lost (backup side)", "link: lost"),
    ("primaries stepped down", "a newer primary exists: stepping down"),
    ("ready backups detached (confirms held)", "ready backup detached"),
    ("backups marked ready", "backup holds everything: marked ready"),
];

/// Lines of each broker's log shown when the run fails.
const LOG_TAIL_LINES: usize = 40;

/// Waits until exactly one broker answers `active` and the others `ready`; returns the primary.
///
/// # Errors
/// Not within `timeout`: the last states seen.
fn wait_whole(addrs: &[String], timeout: Duration) -> Result<usize, Vec<Option<String>>> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = states(addrs, STATUS_TIMEOUT);
        let active: Vec<usize> = (0..seen.len()).filter(|&k| seen[k].as_deref() == Some("active")).collect();
        let ready = seen.iter().filter(|state| state.as_deref() == Some("ready")).count();
        if let ([primary], true) = (active.as_slice(), ready == addrs.len() - 1) {
            return Ok(*primary);
        }
        if Instant::now() >= deadline {
            return Err(seen);
        }
        std::thread::sleep(WHOLE_POLL);
    }
}

/// How often `wait_whole` asks.
const WHOLE_POLL: Duration = Duration::from_millis(200);

/// Waits until the queue on the primary at `addr` holds no message, ready or unacked.
///
/// # Errors
/// Not within `timeout`: the last listing line.
fn drained(addr: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let listing = run_cli_within(&["queue", "list", "-b", addr, "--ha-admin"], STATUS_TIMEOUT)
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let line = listing.lines().find(|line| line.split_whitespace().next() == Some(QUEUE)).unwrap_or("");
        // Columns: queue, depth, bytes, unacked, consumers, enqueued, dequeued.
        let columns: Vec<&str> = line.split_whitespace().collect();
        if columns.len() > 3 && columns[1] == "0" && columns[3] == "0" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(line.to_owned());
        }
        std::thread::sleep(WHOLE_POLL);
    }
}

/// The numbers of the line of `text` that starts with `prefix` (`sent 5, confirmed 5` gives
/// `[5, 5]`); empty if there is no such line.
fn numbers_of(text: &str, prefix: &str) -> Vec<u64> {
    let Some(line) = text.lines().find(|line| line.starts_with(prefix)) else { return Vec::new() };
    line.split(|c: char| !c.is_ascii_digit()).filter(|word| !word.is_empty()).filter_map(|n| n.parse().ok()).collect()
}

/// What a run did and saw.
struct Report {
    /// The schedule's seed.
    seed: u64,
    /// Time from the first fault to the end of the last pause.
    faults_took: Duration,
    /// Time from the first fault to the end of the checks.
    total: Duration,
    /// Faults done, by kind.
    done: BTreeMap<&'static str, u64>,
    /// The longest wait for the cluster to be whole again after a fault.
    recovery_longest: Duration,
    /// Numbers the producer sent.
    sent: u64,
    /// Numbers the producer had confirmed.
    confirmed: u64,
    /// Distinct numbers the consumer received.
    distinct: u64,
    /// Numbers it received again, not flagged redelivered: stored twice.
    duplicates: u64,
    /// Numbers below the highest it received that never came.
    missing: u64,
    /// Numbers it received again flagged redelivered (after a failover).
    redelivered: u64,
    /// `ha status` of each broker at the end.
    end_states: Vec<Option<String>>,
    /// What the cluster manager did.
    manager: ManagerReport,
    /// What the brokers' logs say, by `EVIDENCE`.
    evidence: BTreeMap<&'static str, usize>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: u64 = self.done.values().sum();
        writeln!(f, "fault-injection report: seed {} (RINGMQ_FAULTS_SEED={})", self.seed, self.seed)?;
        writeln!(f, "  {faults} faults in {:.1?} ({:.1?} with the final checks):", self.faults_took, self.total)?;
        for (kind, count) in &self.done {
            writeln!(f, "    {count:>4} {kind}")?;
        }
        writeln!(f, "  longest wait for the cluster to be whole again: {:.1?}", self.recovery_longest)?;
        writeln!(f, "  producer: sent {}, confirmed {}", self.sent, self.confirmed)?;
        writeln!(
            f,
            "  consumer: received {} distinct, {} duplicates, {} missing, {} redelivered again",
            self.distinct, self.duplicates, self.missing, self.redelivered
        )?;
        let manager = &self.manager;
        writeln!(
            f,
            "  cluster manager: {} rounds, {} without a primary ({} without a ready broker to promote), {} with two \
             primaries answering; {} promotions, {} refused",
            manager.rounds,
            manager.rounds_without_primary,
            manager.rounds_without_candidate,
            manager.rounds_with_two_primaries,
            manager.promotions.len(),
            manager.refusals.len()
        )?;
        writeln!(f, "  the brokers' current logs:")?;
        for (what, count) in &self.evidence {
            writeln!(f, "    {count:>4} {what}")?;
        }
        write!(f, "  end states: {:?}", self.end_states)
    }
}
