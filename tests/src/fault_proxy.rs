//! A fault-injecting TCP proxy: links that each listen on one address and forward every
//! connection to one target, and that a test can slow down (delay), stall (stop forwarding for a
//! while) or cut (reset every connection). The fault-injection run puts one between every pair of
//! brokers and in front of every broker for the clients, since the kernel it runs on has no
//! `tc netem`.
//!
//! Each accepted connection gets its own connection to the target (from the link's source address
//! when it has one, so a firewall can tell the links apart), and two directions, each a reader
//! and a writer joined by a bounded channel of chunks stamped with their arrival time: the writer
//! sends a chunk once the link's delay has passed since its arrival and the link is not stalled.
//! So a delay adds latency without cutting throughput, and a stall holds bytes (and, once the
//! channel is full, the sender, by TCP backpressure) until it ends. A cut resets both sides of
//! every connection open at that moment (SO_LINGER 0); later connections are served as usual.
//!
//! It does not drop or reorder bytes (TCP would hide it), and does not filter by address (the
//! `firewall` module does). A target that refuses or does not answer within `CONNECT_TIMEOUT`
//! resets the accepted connection.
//!
//! Invariants:
//! - Bytes of one connection and direction are forwarded in order, each at most once.
//! - A delay or stall change applies to every connection of the link, the open ones included.
//! - Dropping the proxy closes every listener and connection (its runtime shuts down).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The proxy: its links and the runtime that serves them.
pub struct FaultProxy {
    /// Serves every listener and connection; shut down on drop.
    runtime: tokio::runtime::Runtime,
    /// The links, indexed by `LinkId`.
    links: Vec<Arc<Link>>,
}

/// One link of a `FaultProxy`, as `add_link` returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(usize);

impl FaultProxy {
    /// A proxy without links.
    ///
    /// # Panics
    /// If the runtime cannot be built (no threads).
    pub fn new() -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("building the proxy's runtime");
        FaultProxy { runtime, links: Vec::new() }
    }

    /// A link named `name` listening on `listen` (port 0: any free one) that forwards each
    /// connection to `target`, connecting from `source` (any port) when given.
    ///
    /// # Errors
    /// `listen` cannot be bound.
    pub fn add_link(
        &mut self,
        name: &str,
        listen: SocketAddr,
        target: SocketAddr,
        source: Option<IpAddr>,
    ) -> std::io::Result<LinkId> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let listen = listener.local_addr()?;
        let (cut, _) = watch::channel(0u64);
        let link = Arc::new(Link {
            name: name.to_owned(),
            listen,
            target,
            source,
            delay: Mutex::new(Duration::ZERO),
            stalled: AtomicBool::new(false),
            cut,
            connections: AtomicU64::new(0),
        });
        let listener = {
            let _entered = self.runtime.enter();
            TcpListener::from_std(listener)?
        };
        self.runtime.spawn(accept_loop(listener, Arc::clone(&link)));
        self.links.push(link);
        Ok(LinkId(self.links.len() - 1))
    }

    /// Where link `id` listens.
    pub fn addr(&self, id: LinkId) -> SocketAddr {
        self.links[id.0].listen
    }

    /// The name given to link `id`.
    pub fn name(&self, id: LinkId) -> &str {
        &self.links[id.0].name
    }

    /// Every byte of link `id` is forwarded `delay` after it arrived (zero: at once).
    pub fn set_delay(&self, id: LinkId, delay: Duration) {
        *self.links[id.0].delay.lock().expect("the delay lock is never poisoned") = delay;
    }

    /// Link `id` stops forwarding (`true`) or forwards again what it held and what comes
    /// (`false`).
    pub fn set_stalled(&self, id: LinkId, stalled: bool) {
        self.links[id.0].stalled.store(stalled, Ordering::SeqCst);
    }

    /// Resets both sides of every connection link `id` has open now.
    pub fn cut(&self, id: LinkId) {
        let link = &self.links[id.0];
        link.cut.send_modify(|generation| *generation += 1);
    }

    /// Every link forwards at once again: no delay, no stall.
    pub fn heal_all(&self) {
        for index in 0..self.links.len() {
            self.set_delay(LinkId(index), Duration::ZERO);
            self.set_stalled(LinkId(index), false);
        }
    }

    /// Connections link `id` accepted so far.
    pub fn connections(&self, id: LinkId) -> u64 {
        self.links[id.0].connections.load(Ordering::Relaxed)
    }
}

impl Default for FaultProxy {
    fn default() -> FaultProxy {
        FaultProxy::new()
    }
}

/// A link's configuration and the faults set on it.
struct Link {
    /// For messages.
    name: String,
    /// Where it listens.
    listen: SocketAddr,
    /// Where it forwards to.
    target: SocketAddr,
    /// The address its connections to the target come from; any when `None`.
    source: Option<IpAddr>,
    /// Added to every chunk's forwarding time.
    delay: Mutex<Duration>,
    /// While set, nothing is forwarded.
    stalled: AtomicBool,
    /// Bumped by each cut; every connection watches it.
    cut: watch::Sender<u64>,
    /// Connections accepted.
    connections: AtomicU64,
}

impl Link {
    fn delay(&self) -> Duration {
        *self.delay.lock().expect("the delay lock is never poisoned")
    }
}

/// Accepts connections on `listener` for ever (until the runtime shuts down), each served by its
/// own task.
async fn accept_loop(listener: TcpListener, link: Arc<Link>) {
    loop {
        match listener.accept().await {
            Ok((inbound, _)) => {
                link.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(inbound, Arc::clone(&link)));
            }
            // Too many open files or a connection reset before it was accepted: try again after a
            // moment rather than spin.
            Err(error) => {
                eprintln!("fault proxy {}: accept: {error}", link.name);
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Forwards one accepted connection until both directions ended, one failed, or a cut.
async fn serve(inbound: TcpStream, link: Arc<Link>) {
    let mut cut = link.cut.subscribe();
    cut.borrow_and_update();
    let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&link)).await {
        Ok(Ok(outbound)) => outbound,
        // The target is down or unreachable: the client sees its connection reset, as soon as
        // a real connection to a dead port would be refused.
        Ok(Err(_)) | Err(_) => {
            reset(&inbound);
            return;
        }
    };
    // Small frames (heartbeats, confirms) must not wait for Nagle.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let forward = async {
        tokio::try_join!(direction(&mut in_read, &mut out_write, &link), direction(&mut out_read, &mut in_write, &link))
    };
    let ended = tokio::select! {
        outcome = forward => outcome.is_ok(),
        _ = cut.changed() => false,
    };
    if !ended {
        // A cut or a failed side: both sides see a reset, as after a network fault.
        reset(in_read.as_ref());
        reset(out_read.as_ref());
    }
}

/// A connection to the link's target, from its source address when it has one.
async fn connect(link: &Link) -> std::io::Result<TcpStream> {
    let socket = match link.target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = link.source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(link.target).await
}

/// Makes the close of `stream` (when its last half is dropped) a reset.
fn reset(stream: &TcpStream) {
    // The socket may be gone already (reset by the peer); then there is nothing to reset.
    let _ = stream.set_zero_linger();
}

/// Forwards `from` to `to`: a reader stamps each chunk with its arrival, a writer sends it once
/// the delay has passed and the link is not stalled. `Ok` once `from` ended and everything was
/// forwarded (then `to` is shut down for writing).
async fn direction(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, link: &Link) -> std::io::Result<()> {
    let (chunks, mut arrived) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let read = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            let count = from.read(&mut buffer).await?;
            if count == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if chunks.send((Instant::now(), buffer[..count].to_vec())).await.is_err() {
                // The writer failed, and says why.
                return Ok(());
            }
        }
    };
    let write = async {
        while let Some((at, chunk)) = arrived.recv().await {
            tokio::time::sleep_until(at + link.delay()).await;
            while link.stalled.load(Ordering::SeqCst) {
                tokio::time::sleep(STALL_POLL).await;
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(drop)
}

/// Threads of the proxy's runtime: forwarding is light, and the machine has few cores.
const WORKER_THREADS: usize = 2;
/// Most bytes read at once from one side.
const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Most chunks held per direction (delayed or stalled) before the reader waits: 1024 x 16 KiB =
/// 16 MiB at most, far above what a delay at the test's rates holds.
const CHUNKS_IN_FLIGHT_MAX: usize = 1024;
/// How often a stalled writer looks whether the stall ended.
const STALL_POLL: Duration = Duration::from_millis(5);
/// Longest wait for the target to accept: an isolated target never answers a SYN.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
