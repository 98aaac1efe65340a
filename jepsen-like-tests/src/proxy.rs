//! A TCP fault proxy in front of each node's raft address. Every node advertises
//! its proxy's address, so all node-to-node traffic into node `b` passes through
//! proxy `b`. The proxy can delay it (slow links: this kernel has no netem), and,
//! when it can tell which node opened a connection (by the source IP each node
//! dials from, `chorusd --peer-source-ip`), stall a link or cut connections at
//! random.
//!
//! A stalled link stops forwarding in both directions of the connections that
//! link carries and resumes with every byte intact when healed, as a TCP flow
//! does across a short partition; the peers' keep-alive timeouts decide whether
//! the connection survives it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Node ids are u64 > 0; traffic from anything that is not a node (chorusctl,
/// or a node the proxy cannot identify) is never faulted.
pub type NodeId = u64;

#[derive(Default)]
struct Rules {
    /// `(from, to)`: traffic that `from` sends on connections to `to` is held.
    stalled: HashSet<(NodeId, NodeId)>,
    /// Extra one-way delay on every connection into a node, both directions.
    delay: HashMap<NodeId, Duration>,
    /// Probability per forwarded chunk that the connection is reset.
    cut: f64,
}

/// The shared rule set of every proxy of one run.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
}

impl Faults {
    fn with<T>(&self, f: impl FnOnce(&mut Rules) -> T) -> T {
        f(&mut self.rules.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn stall(&self, from: NodeId, to: NodeId) {
        self.with(|r| r.stalled.insert((from, to)));
    }

    pub fn slow(&self, node: NodeId, delay: Duration) {
        self.with(|r| r.delay.insert(node, delay));
    }

    pub fn cut(&self, probability: f64) {
        self.with(|r| r.cut = probability);
    }

    pub fn heal(&self) {
        self.with(|r| *r = Rules::default());
    }

    /// Whether bytes `from` → `to` are held now.
    fn held(&self, from: Option<NodeId>, to: Option<NodeId>) -> bool {
        match (from, to) {
            (Some(a), Some(b)) => self.with(|r| r.stalled.contains(&(a, b))),
            _ => false,
        }
    }

    fn delay(&self, node: NodeId) -> Duration {
        self.with(|r| r.delay.get(&node).copied().unwrap_or_default())
    }

    fn cut_now(&self, faulted: bool) -> bool {
        let p = self.with(|r| r.cut);
        faulted && p > 0.0 && rand::rng().random_bool(p.min(1.0))
    }
}

/// Listens on `listener` for connections to node `node` and forwards them to
/// `upstream`. `identify` maps a connection's source IP to the node that made it.
pub fn spawn(
    listener: TcpListener,
    node: NodeId,
    upstream: SocketAddr,
    identify: Arc<dyn Fn(IpAddr) -> Option<NodeId> + Send + Sync>,
    faults: Faults,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((down, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let source = identify(peer.ip());
            let faults = faults.clone();
            tokio::spawn(async move {
                let Ok(Ok(up)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream)).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (down_r, down_w) = down.into_split();
                let (up_r, up_w) = up.into_split();
                // Requests flow source → node, answers node → source.
                let forward = pump(down_r, up_w, source, Some(node), node, faults.clone());
                let backward = pump(up_r, down_w, Some(node), source, node, faults);
                // When either direction ends, the whole connection ends.
                tokio::select! {
                    _ = forward => {}
                    _ = backward => {}
                }
            });
        }
    })
}

/// Copies one direction of a connection, each chunk no earlier than its read
/// time plus the node's delay and never while `from` → `to` is stalled.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    from: Option<NodeId>,
    to: Option<NodeId>,
    node: NodeId,
    faults: Faults,
) {
    // Bounded: a held link backs up into the sender's TCP window, as a real one does.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let faulted = from.is_some() && to.is_some();
    let writer = async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            let due = read_at + faults.delay(node);
            tokio::time::sleep_until(due).await;
            while faults.held(from, to) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if faults.cut_now(faulted) {
                return;
            }
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    // The writer drains what was read before the reader's end; a writer that
    // stops first (cut, or the other side gone) takes the reader with it.
    let reader = tokio::spawn(reader);
    writer.await;
    reader.abort();
}
