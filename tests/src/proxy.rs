//! Fault-injecting TCP proxies on 127.0.0.1, one per *directional* link.
//!
//! Every broker dials the addresses in its own `dLegerPeers`. Giving node `i` a peer list whose
//! entry for node `j` is the proxy for link `i → j` (and whose own entry is its real listen
//! address) routes every connection that `i` opens to `j` through that one proxy. Blocking a
//! link therefore cuts what `i` can ask of `j` (requests *and* their responses travel on the
//! connection `i` opened), while `j → i` is a separate proxy.
//!
//! Modes:
//! - `Pass`: bytes flow as they arrive.
//! - `Block`: new connections are accepted and closed at once (the dialer sees a reset/EOF),
//!   existing connections stall: nothing is read or written, so TCP back-pressure builds up like
//!   on a cut cable. Bytes already read are kept and flow again after the link is healed.
//! - `Delay(ms)`: every chunk is held `ms` milliseconds before it is written (a latency, not a
//!   throughput cap: chunks are pipelined through a bounded queue).
//!
//! `reset_connections` additionally drops every open connection of a link (both halves), for
//! tests that want a partition to look like a crash of the peer's sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes read per chunk: one syscall's worth; large Raft batches are split, never buffered whole.
const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Chunks in flight between the reader and the writer of one direction of one connection
/// (bounds memory per connection to CHUNK_BYTES_MAX * CHUNKS_IN_FLIGHT_MAX).
const CHUNKS_IN_FLIGHT_MAX: usize = 64;
/// Connections one link proxy serves at once; more are refused (a broker needs a handful).
const CONNECTIONS_PER_LINK_MAX: u64 = 256;
/// Upper bound on an injected delay: a longer one is a test bug, not a fault.
pub const DELAY_MS_MAX: u64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Block,
    Delay { delay_ms: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkControl {
    mode: LinkMode,
    /// Incremented by `reset_connections`: a connection started under an older generation ends.
    generation: u64,
}

/// Counters of one link, for test output and for asserting that traffic actually went through.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub bytes_forwarded: AtomicU64,
}

/// One listening proxy: `listen_addr` forwards to `target_addr`.
pub struct LinkProxy {
    listen_addr: SocketAddr,
    target_addr: SocketAddr,
    control: watch::Sender<LinkControl>,
    stats: Arc<LinkStats>,
    accept_task: JoinHandle<()>,
}

impl LinkProxy {
    /// Binds 127.0.0.1:0 and starts forwarding to `target_addr` (which need not be up yet:
    /// a connection to a dead target is closed, as a dead peer would be).
    pub async fn start(target_addr: SocketAddr) -> Result<Self> {
        ensure!(target_addr.ip().is_loopback(), "proxy target {target_addr} is not loopback");
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind proxy listener")?;
        let listen_addr = listener.local_addr()?;
        let (control, control_rx) = watch::channel(LinkControl { mode: LinkMode::Pass, generation: 0 });
        let stats = Arc::new(LinkStats::default());
        let accept_task = tokio::spawn(accept_loop(listener, target_addr, control_rx, stats.clone()));
        Ok(Self { listen_addr, target_addr, control, stats, accept_task })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn target_addr(&self) -> SocketAddr {
        self.target_addr
    }

    pub fn mode(&self) -> LinkMode {
        self.control.borrow().mode
    }

    pub fn set_mode(&self, mode: LinkMode) {
        if let LinkMode::Delay { delay_ms } = mode {
            assert!(delay_ms <= DELAY_MS_MAX, "delay {delay_ms} ms exceeds {DELAY_MS_MAX} ms");
        }
        self.control.send_modify(|c| c.mode = mode);
    }

    /// Drops every connection open now; the link mode is unchanged.
    pub fn reset_connections(&self) {
        self.control.send_modify(|c| c.generation += 1);
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Ends every connection task: they all watch the control channel.
        self.control.send_modify(|c| c.generation += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target_addr: SocketAddr,
    control: watch::Receiver<LinkControl>,
    stats: Arc<LinkStats>,
) {
    let open = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Accept errors (EMFILE and the like) are transient; do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = *control.borrow();
        if now.mode == LinkMode::Block || open.load(Ordering::Relaxed) >= CONNECTIONS_PER_LINK_MAX {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        }
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        open.fetch_add(1, Ordering::Relaxed);
        let control = control.clone();
        let stats = stats.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _ = serve_connection(inbound, target_addr, control, now.generation, &stats).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_connection(
    inbound: TcpStream,
    target_addr: SocketAddr,
    mut control: watch::Receiver<LinkControl>,
    generation: u64,
    stats: &LinkStats,
) -> Result<()> {
    let outbound = tokio::select! {
        r = TcpStream::connect(target_addr) => r?,
        () = until_reset(&mut control, generation) => return Ok(()),
    };
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut reset_watch = control.clone();
    let forward = pump(in_read, out_write, control.clone(), stats);
    let backward = pump(out_read, in_write, control.clone(), stats);
    tokio::select! {
        // Either direction ending (EOF or error) ends the connection: half-open proxying is
        // not needed by gRPC and would keep dead peers' sockets around.
        _ = forward => {}
        _ = backward => {}
        () = until_reset(&mut reset_watch, generation) => {}
    }
    Ok(())
}

async fn until_reset(control: &mut watch::Receiver<LinkControl>, generation: u64) {
    loop {
        if control.borrow_and_update().generation != generation {
            return;
        }
        if control.changed().await.is_err() {
            return;
        }
    }
}

/// Waits while the link is blocked.
async fn wait_unblocked(control: &mut watch::Receiver<LinkControl>) {
    loop {
        if control.borrow_and_update().mode != LinkMode::Block {
            return;
        }
        if control.changed().await.is_err() {
            return;
        }
    }
}

/// One direction of one connection: a reader task stamps chunks with their due time, the
/// writer sends each when it is due and the link is not blocked.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: watch::Receiver<LinkControl>,
    stats: &LinkStats,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let mut read_control = control.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            // Stall before reading: a blocked link must not drain the sender's socket.
            wait_unblocked(&mut read_control).await;
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), anyhow::Error>(());
            }
            // The delay in force when the chunk arrived (the read may have waited long).
            let delay = match read_control.borrow().mode {
                LinkMode::Delay { delay_ms } => Duration::from_millis(delay_ms),
                LinkMode::Pass | LinkMode::Block => Duration::ZERO,
            };
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_control = control;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            // A link blocked after the chunk was read holds it until healed.
            wait_unblocked(&mut write_control).await;
            to.write_all(&chunk).await?;
            stats.bytes_forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
        Ok::<(), anyhow::Error>(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

/// The 6 (for 3 nodes; n·(n-1) in general) link proxies of one Raft group.
pub struct ProxyMesh {
    /// Real Raft listen addresses, by node index.
    node_addrs: Vec<SocketAddr>,
    /// `links[from][to]`, `None` on the diagonal.
    links: Vec<Vec<Option<LinkProxy>>>,
}

impl ProxyMesh {
    pub async fn start(node_addrs: &[SocketAddr]) -> Result<Self> {
        ensure!(node_addrs.len() >= 2 && node_addrs.len() <= 9, "mesh of {} nodes", node_addrs.len());
        let mut links = Vec::with_capacity(node_addrs.len());
        for from in 0..node_addrs.len() {
            let mut row = Vec::with_capacity(node_addrs.len());
            for (to, addr) in node_addrs.iter().enumerate() {
                row.push(if from == to { None } else { Some(LinkProxy::start(*addr).await?) });
            }
            links.push(row);
        }
        Ok(Self { node_addrs: node_addrs.to_vec(), links })
    }

    pub fn node_count(&self) -> usize {
        self.node_addrs.len()
    }

    pub fn link(&self, from: usize, to: usize) -> &LinkProxy {
        assert_ne!(from, to, "no link from a node to itself");
        self.links[from][to].as_ref().expect("off-diagonal link exists")
    }

    /// The address node `from` must dial to reach node `to`.
    pub fn dial_addr(&self, from: usize, to: usize) -> SocketAddr {
        if from == to { self.node_addrs[to] } else { self.link(from, to).listen_addr() }
    }

    pub fn set_link(&self, from: usize, to: usize, mode: LinkMode) {
        self.link(from, to).set_mode(mode);
    }

    /// Cuts node `x` off from every other node, in both directions.
    pub fn isolate(&self, x: usize) {
        for other in 0..self.node_count() {
            if other != x {
                self.set_link(x, other, LinkMode::Block);
                self.set_link(other, x, LinkMode::Block);
            }
        }
    }

    /// Splits the group: links between nodes in different sides are blocked, links within a
    /// side pass. `side[i]` names node `i`'s side.
    pub fn partition(&self, side: &[u8]) {
        assert_eq!(side.len(), self.node_count());
        for from in 0..self.node_count() {
            for to in 0..self.node_count() {
                if from != to {
                    let mode = if side[from] == side[to] { LinkMode::Pass } else { LinkMode::Block };
                    self.set_link(from, to, mode);
                }
            }
        }
    }

    pub fn heal_all(&self) {
        for from in 0..self.node_count() {
            for to in 0..self.node_count() {
                if from != to {
                    self.set_link(from, to, LinkMode::Pass);
                }
            }
        }
    }

    /// Drops the open connections of every link touching `x` (both directions).
    pub fn reset_node_connections(&self, x: usize) {
        for other in 0..self.node_count() {
            if other != x {
                self.link(x, other).reset_connections();
                self.link(other, x).reset_connections();
            }
        }
    }

    pub fn bytes_forwarded_total(&self) -> u64 {
        self.links.iter().flatten().flatten().map(|l| l.stats().bytes_forwarded.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            for _ in 0..64 {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn pass_block_heal_delay() {
        let (echo, _task) = echo_server().await;
        let proxy = LinkProxy::start(echo).await.unwrap();
        let mut conn = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        assert_eq!(roundtrip(&mut conn, b"hello").await.unwrap(), b"hello");

        // Block: the existing connection stalls, a new one is closed at once.
        proxy.set_mode(LinkMode::Block);
        let stalled = tokio::time::timeout(Duration::from_millis(300), roundtrip(&mut conn, b"x")).await;
        assert!(stalled.is_err(), "blocked link must stall, got {stalled:?}");
        let mut refused = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "refused connection must be closed, got {r:?}");
        assert_eq!(proxy.stats().connections_refused.load(Ordering::Relaxed), 1);

        // Heal: the stalled byte arrives, the connection lives on.
        proxy.set_mode(LinkMode::Pass);
        let mut got = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"x");

        // Delay: a round trip crosses the proxy twice.
        proxy.set_mode(LinkMode::Delay { delay_ms: 100 });
        let start = Instant::now();
        assert_eq!(roundtrip(&mut conn, b"slow").await.unwrap(), b"slow");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "delayed round trip took {took:?}");

        // Reset drops the connection.
        proxy.set_mode(LinkMode::Pass);
        proxy.reset_connections();
        let r = tokio::time::timeout(Duration::from_secs(2), roundtrip(&mut conn, b"gone")).await.unwrap();
        assert!(r.is_err(), "reset connection must fail, got {r:?}");
    }

    #[tokio::test]
    async fn mesh_routes_each_direction_through_its_own_proxy() {
        let (a, _ta) = echo_server().await;
        let (b, _tb) = echo_server().await;
        let (c, _tc) = echo_server().await;
        let mesh = ProxyMesh::start(&[a, b, c]).await.unwrap();
        assert_eq!(mesh.dial_addr(0, 0), a);
        assert_ne!(mesh.dial_addr(0, 1), mesh.dial_addr(2, 1));
        assert_eq!(mesh.link(0, 1).target_addr(), b);

        mesh.isolate(1);
        // 0 → 2 still passes, 0 → 1 and 1 → 2 are cut.
        let mut ok = TcpStream::connect(mesh.dial_addr(0, 2)).await.unwrap();
        assert_eq!(roundtrip(&mut ok, b"ok").await.unwrap(), b"ok");
        for (from, to) in [(0, 1), (1, 2), (2, 1), (1, 0)] {
            let mut s = TcpStream::connect(mesh.dial_addr(from, to)).await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(1), roundtrip(&mut s, b"no")).await;
            assert!(!matches!(r, Ok(Ok(_))), "link {from}->{to} must be cut");
        }
        mesh.heal_all();
        let mut s = TcpStream::connect(mesh.dial_addr(1, 0)).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"back").await.unwrap(), b"back");
        assert!(mesh.bytes_forwarded_total() > 0);
    }
}
