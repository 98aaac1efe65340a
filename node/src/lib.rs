//! A Chorus node as a library: `start(config, listeners) -> NodeHandle`.
//!
//! # Layout
//!
//! - [`config`]: the SPEC §1 flags (`chorusd` parses them, tests build them).
//! - [`identity`]: the cluster id this node belongs to, and who may call it
//!   (the shared secret; under mutual TLS, the role of each caller).
//! - [`tls`]: mutual TLS on the raft port, and the roles certificates grant.
//! - [`network`]: openraft's network over gRPC, one channel per peer.
//! - [`gather`]: batching of concurrent requests (proposer, forwarder, benchmark).
//! - [`node`]: [`Node`], the running Raft with propose / read-index / wait-applied.
//! - [`rpc`]: the node-to-node gRPC service (Raft, forwarded writes and reads).
//! - [`admin`]: the operator gRPC service behind `chorusctl cluster`.
//! - [`backup`]: backups served to `chorusctl backup`; a data dir seeded from
//!   one at start.
//! - [`ready`]: the record of a started node's bound addresses (`--ready-file`).
//! - [`procs`]: real `chorusd` processes for process-level tests and benchmarks.
//!
//! `chorusd` (in `src/bin`) only parses flags, sets up logging and calls [`start`].

pub mod admin;
pub mod backup;
pub mod config;
pub mod gather;
pub mod identity;
pub mod link;
pub mod network;
pub mod node;
pub mod peer_conns;
pub mod procs;
pub mod ready;
pub mod rpc;
pub mod tls;
pub mod upgrade;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use openraft::SnapshotPolicy;
use raft_store::chat::Event;
use raft_store::stages::WriteStages;
use raft_store::{LogStore, NodeInfo, StateMachine, WalSync};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
pub use node::{Node, NodeError};
pub use ready::Ready;

/// Listeners the node serves on. Tests bind `127.0.0.1:0` and pass them in;
/// `chorusd` binds the configured addresses (port 0 too).
pub struct Listeners {
    pub client: TcpListener,
    pub raft: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let client = TcpListener::bind(config.client_addr)
            .await
            .with_context(|| format!("cannot listen on client address {}", config.client_addr))?;
        let raft = TcpListener::bind(config.raft_addr)
            .await
            .with_context(|| format!("cannot listen on raft address {}", config.raft_addr))?;
        Ok(Listeners { client, raft })
    }
}

/// How long [`NodeHandle::shutdown`] waits for WebSocket sessions to finish
/// their close handshake.
pub const GOODBYE: Duration = Duration::from_secs(2);

/// A started node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub node: Arc<Node>,
    pub client_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store: raft_store::Store,
}

impl NodeHandle {
    /// Stops serving, shuts Raft down and waits for every task, so the data
    /// directory can be reopened once this returns. WebSocket connections are
    /// closed with 1001; this waits up to [`GOODBYE`] for them to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // Raft's shutdown dropped the state machine and with it the delivery
        // channel, so the fan-out is closing every connection with 1001. A
        // process that exits right after this should have said so first.
        let deadline = tokio::time::Instant::now() + GOODBYE;
        while self.node.connections.load(std::sync::atomic::Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Last, so nothing writes any more: no flush or compaction may still
        // run when the process exits.
        let store = self.store;
        if tokio::task::spawn_blocking(move || store.stop_background_work()).await.is_err() {
            tracing::warn!("stopping the store's background work failed");
        }
    }
}

pub(crate) fn new_cluster_id() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn open_store(dir: &std::path::Path) -> anyhow::Result<raft_store::Store> {
    // A node restarted in the same process may find the previous instance's
    // background threads still releasing the RocksDB lock for a moment.
    let mut last = None;
    for _ in 0..100 {
        match raft_store::open(dir) {
            Ok(s) => return Ok(s),
            Err(e) if e.to_string().contains("lock") => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open the data dir {}", dir.display())),
        }
    }
    Err(anyhow::anyhow!("data dir {} is locked by another process: {:?}", dir.display(), last))
}

fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "chorus".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_ms,
        election_timeout_max: config.election_ms * 2,
        install_snapshot_timeout: 60_000,
        // Snapshots are asked for by `compaction_policy`, which also weighs the
        // size of the state.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.snapshot_keep,
        // openraft purges only once this many entries are purgeable; keep it small
        // so the log is compacted soon after each snapshot.
        purge_batch_size: 64,
        max_payload_entries: 2048,
        ..Default::default()
    };
    Ok(c.validate()?)
}

/// Starts a node: opens its data, starts Raft and both servers, and forms a
/// single-node cluster on an empty data dir unless `--no-bootstrap`.
pub async fn start(config: Config, listeners: Listeners) -> anyhow::Result<NodeHandle> {
    let client_addr = listeners.client.local_addr()?;
    let raft_addr = listeners.raft.local_addr()?;
    config.check_exposure(client_addr, raft_addr)?;
    let info = NodeInfo {
        raft_addr: config.advertise_raft.clone().unwrap_or_else(|| raft_addr.to_string()),
        client_url: config.client_url(client_addr),
    };
    let Opened { node, store, identity, tls, writes } = open_node(&config, info).await?;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = vec![
        serve_grpc(&node, tls.as_ref(), listeners.raft, config.max_peer_connections, stop_rx.clone())?,
        serve_api(&node, &config, listeners.client, writes, stop_rx.clone())?,
    ];
    if !config.no_bootstrap && identity.cluster_id().is_none() && !node.raft.is_initialized().await? {
        let cluster_id = new_cluster_id();
        identity.adopt(&cluster_id).map_err(|s| anyhow::anyhow!(s.message().to_string()))?;
        node.raft
            .initialize(BTreeMap::from([(config.id, node.info.clone())]))
            .await
            .context("cannot form a single-node cluster")?;
        tracing::info!(cluster_id, "formed a single-node cluster");
    }
    tasks.push(tokio::spawn(compaction_policy(node.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(presence_heartbeats(node.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(backup::automatic(node.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(record_formation(node.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(refuse_reads_once_failed(node.clone(), store.clone(), stop_rx)));

    tracing::info!(id = config.id, %client_addr, %raft_addr, "node started");
    Ok(NodeHandle { node, client_addr, raft_addr, stop, tasks, store })
}

/// What [`open_node`] gives [`start`].
struct Opened {
    node: Arc<Node>,
    store: raft_store::Store,
    identity: identity::Identity,
    /// Mutual TLS for the raft port, if configured.
    tls: Option<tls::Tls>,
    /// What the log store, state machine and Raft time, exported on `/metrics`.
    writes: api::metrics::WriteFigures,
}

/// Opens the data dir (restoring a backup placed in it), the state machine and
/// the log, and starts Raft with its proposer and forwarder.
async fn open_node(config: &Config, info: NodeInfo) -> anyhow::Result<Opened> {
    let dir = config.data_dir();
    let store = open_store(&dir)?;
    remove_partial_transfers(&store.snapshot_dir());
    let tls = tls::Tls::load(config.tls_cert.as_deref(), config.tls_key.as_deref(), config.tls_ca.as_deref())?;
    let identity = identity::Identity::load(store.clone(), config.cluster_secret.clone(), tls.is_some())?;
    backup::seed_if_present(&store, &identity, config.id, &info)
        .with_context(|| format!("cannot restore the backup in {}", dir.display()))?;
    let writes = api::metrics::WriteFigures::default();
    let stages = WriteStages::new(writes.observer());
    let sm = StateMachine::open(store.clone())?.with_stages(stages.clone());
    let reader = sm.reader();
    let applied = sm.applied_watch();
    let deliveries = sm.deliveries().downgrade();
    let log_store = {
        let sync = if config.unsafe_skip_wal_sync {
            tracing::warn!("--unsafe-skip-wal-sync: Raft appends are not fsynced; a power loss can lose acknowledged messages");
            WalSync::SkipUnsafe
        } else {
            WalSync::Fsync
        };
        LogStore::with_wal_sync(store.clone(), stages.clone(), sync)?
    };

    let peers = network::Peers::new(identity.clone(), config.peer_source_ip, tls.as_ref());
    let raft = openraft::Raft::new(
        config.id,
        Arc::new(raft_config(config)?),
        network::NetworkFactory { id: config.id, peers: peers.clone(), stages: stages.clone() },
        log_store,
        sm,
    )
    .await
    .context("cannot start raft")?;

    let proposer = node::Proposer::start(raft.clone(), reader.clone(), stages.clone());
    let forwarder = node::Forwarder::start(raft.clone(), peers.clone(), info.raft_addr.clone());
    let node = Arc::new(Node {
        id: config.id,
        raft,
        reader,
        peers,
        info,
        config: config.clone(),
        applied,
        deliveries,
        proposer,
        forwarder,
        presence: Arc::new(api::presence::Presence::new(config.id)),
        connections: Arc::default(),
        stages,
        level_gate: tokio::sync::Mutex::new(()),
    });
    Ok(Opened { node, store, identity, tls, writes })
}

/// Requests one connection to the raft port may have in progress at once.
const PEER_STREAMS: u32 = 256;

/// Serves gRPC on the raft listener: Raft between nodes and the admin service,
/// over mutual TLS if configured. Each service checks its caller (the secret,
/// the certificate's role) in an interceptor, before a request body is read.
fn serve_grpc(
    node: &Arc<Node>,
    tls: Option<&tls::Tls>,
    listener: TcpListener,
    max_per_address: usize,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    use identity::Need;
    use tonic::service::interceptor::InterceptedService;
    let gate = |need: Need| {
        let identity = node.peers.identity.clone();
        move |req: tonic::Request<()>| identity.authorize(&req, need).map(|()| req)
    };
    let raft = proto::v1::raft_server::RaftServer::new(rpc::RaftService::new(node.clone()))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let admin = proto::v1::admin_server::AdminServer::new(admin::AdminService { node: node.clone() });
    // TLS, when configured, is terminated in the accept loop below, not by
    // tonic: the handshake's ALPN tells the peer link from gRPC.
    let server = tonic::transport::Server::builder();
    // A peer behind a slow or lossy link cancels many timed-out heartbeats before
    // this side accepts them; h2's default limit (20) answers that with GOAWAY,
    // which drops the whole channel and every append in flight on it. The raft
    // port faces cluster members, so a higher bound against rapid-reset floods
    // is enough.
    // Each caller's connection serves at most PEER_STREAMS requests at once
    // (more wait for a place): replication, heartbeats, a snapshot stream and
    // admin calls need a few.
    let grpc = server
        .http2_max_pending_accept_reset_streams(Some(256))
        .max_concurrent_streams(Some(PEER_STREAMS))
        .concurrency_limit_per_connection(PEER_STREAMS as usize)
        .add_service(InterceptedService::new(raft, gate(Need::Peer)))
        .add_service(InterceptedService::new(admin, gate(Need::PeerOrOperator)));
    // At most `max_per_address` connections per source address, counted at
    // accept; small Raft messages must not wait for Nagle's algorithm. Without
    // TLS, a connection that opens with the peer link's magic is served by
    // `link` and every other goes to tonic. With TLS the handshake comes first
    // (a client certificate from the cluster's CA required, as tonic's own
    // TLS would), and the protocol it agreed (ALPN) decides: the link, for a
    // caller whose certificate is a member's, or gRPC.
    let caps = peer_conns::PeerConnections::new(max_per_address);
    let (accepted_tx, accepted) = tokio::sync::mpsc::channel::<peer_conns::Counted>(64);
    let accepting = {
        let stop = stop.clone();
        async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = until_stopped(stop.clone()) => return,
                };
                match accepted {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        if let Some(conn) = caps.admit(s) {
                            if accepted_tx.send(conn).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // Out of descriptors, most likely. Pause rather than spin.
                        tracing::warn!(error = %e, "raft port accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
    tokio::spawn(accepting);
    let node = node.clone();
    let tls = tls.map(tls::Tls::port);
    Ok(tokio::spawn(async move {
        let served = match tls {
            None => {
                let incoming = route_plain(node, accepted, stop.clone());
                grpc.serve_with_incoming_shutdown(incoming, until_stopped(stop)).await
            }
            Some(config) => {
                let incoming = route_tls(node, config, accepted, stop.clone());
                grpc.serve_with_incoming_shutdown(incoming, until_stopped(stop)).await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }))
}

/// Plain raft-port connections: each that opens with the link's magic is
/// served by [`link::serve`]; the others come out of the stream, for tonic.
fn route_plain(
    node: Arc<node::Node>,
    mut accepted: tokio::sync::mpsc::Receiver<peer_conns::Counted>,
    stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<peer_conns::Counted>> {
    let (to_grpc, incoming) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(conn) = accepted.recv().await {
            let (node, stop, to_grpc) = (node.clone(), stop.clone(), to_grpc.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(link::HELLO_TIMEOUT, opens_link(&conn)).await {
                    Ok(Ok(true)) => {
                        let mut conn = conn;
                        let mut magic = [0u8; 4];
                        if tokio::io::AsyncReadExt::read_exact(&mut conn, &mut magic).await.is_ok() {
                            link::serve(node, conn, stop).await;
                        }
                    }
                    // Not the link, or nothing sent yet: tonic's, as before.
                    Ok(Ok(false)) | Err(_) => {
                        let _ = to_grpc.send(Ok(conn)).await;
                    }
                    Ok(Err(_)) => {}
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// TLS raft-port connections: each handshake runs in a task of its own (a
/// slow one holds up no other); a connection that agreed on the link and
/// presents a member's certificate is served by [`link::serve`], after its
/// magic; the rest come out of the stream, for tonic.
fn route_tls(
    node: Arc<node::Node>,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    mut accepted: tokio::sync::mpsc::Receiver<peer_conns::Counted>,
    stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<peer_conns::Counted>>> {
    let (to_grpc, incoming) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Some(conn) = accepted.recv().await {
            let (node, stop, to_grpc, acceptor) = (node.clone(), stop.clone(), to_grpc.clone(), acceptor.clone());
            tokio::spawn(async move {
                let mut conn = match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "raft port TLS handshake failed"),
                    Err(_) => return tracing::debug!("raft port TLS handshake timed out"),
                };
                let session = conn.get_ref().1;
                if session.alpn_protocol() != Some(tls::LINK_ALPN) {
                    let _ = to_grpc.send(Ok(conn)).await;
                    return;
                }
                // The link is for members only, as the Raft service is.
                match tls::role_of(session) {
                    Some(tls::Caller::Peer(_)) => {}
                    other => return tracing::debug!(caller = ?other, "refused a peer link from a certificate that is not a member's"),
                }
                let mut magic = [0u8; 4];
                let read = tokio::time::timeout(link::HELLO_TIMEOUT, tokio::io::AsyncReadExt::read_exact(&mut conn, &mut magic)).await;
                if matches!(read, Ok(Ok(_))) && magic == link::MAGIC {
                    link::serve(node, conn, stop).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Whether a raft-port connection opens with the peer link's magic, looked
/// at without taking the bytes: `false` as soon as what has arrived cannot
/// be it (an HTTP/2 preface, say).
async fn opens_link(conn: &peer_conns::Counted) -> std::io::Result<bool> {
    let mut first = [0u8; 4];
    loop {
        let n = conn.peek(&mut first).await?;
        if n == 0 {
            return Ok(false);
        }
        if first[..n] != link::MAGIC[..n] {
            return Ok(false);
        }
        if n == first.len() {
            return Ok(true);
        }
        // Part of the magic so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves HTTP and WebSocket on the client listener, with the node's limits,
/// and starts the fan-out thread and the presence relay.
fn serve_api(
    node: &Arc<Node>,
    config: &Config,
    listener: TcpListener,
    writes: api::metrics::WriteFigures,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let limits = api::Limits {
        max_message_bytes: config.max_message_bytes,
        rate_messages: config.rate_limit.messages,
        rate_window: config.rate_limit.window,
        max_outbox_bytes: usize::try_from(config.max_outbox_bytes).unwrap_or(usize::MAX),
        account_rate: config.account_rate_limit.messages,
        account_window: config.account_rate_limit.window,
        request_rate: config.request_rate_limit.messages,
        request_window: config.request_rate_limit.window,
        max_rooms_per_user: config.max_rooms_per_user,
        http_timeout: Duration::from_secs(config.http_timeout_secs),
        max_connections: config.max_connections,
        registration: config.registration,
    };
    let mut app = api::App::new(Arc::new(Backend(node.clone())), limits, node.presence.clone(), node.connections.clone(), writes)
        .context("cannot start the fan-out thread")?;
    // Derived data beside RocksDB: a node serves without it (search answers
    // `unavailable`) rather than not at all.
    let search_dir = config.data_dir().join("search");
    if config.no_search {
        tracing::info!("search is off on this node (--no-search)");
    } else if let Err(e) = app.start_search(&search_dir) {
        tracing::warn!(dir = %search_dir.display(), error = %e, "search is off on this node");
    }
    let api_app = Arc::new(app);
    api::relay::start(&api_app);
    let tls = tls::client_port(config.client_tls_cert.as_deref(), config.client_tls_key.as_deref())?;
    let router = api::router(api_app.clone());
    Ok(tokio::spawn(api::serve::serve(listener, router, tls, api_app.limits.http_timeout, until_stopped(stop))))
}

async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Snapshot files left half-received by a crash are useless; remove them.
fn remove_partial_transfers(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".recv") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Once this node leads a cluster whose formation is not yet in the log, it
/// records it: the cluster id and a fresh token-signing key, replicated to all.
async fn record_formation(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.raft.metrics();
    loop {
        let formed = matches!(raft_store::ChatRead::cluster(&node.reader), Ok(Some(_)));
        if formed {
            return;
        }
        if node.is_leader() {
            if let Some(cluster_id) = node.peers.identity.cluster_id() {
                let signing_key: [u8; 32] = rand::rng().random();
                let event = Event::ClusterFormed { cluster_id, signing_key: signing_key.to_vec() };
                match node.propose(event, node::DEFAULT_TIMEOUT).await {
                    Ok(_) => return raise_at_formation(&node, &mut stop).await,
                    Err(e) => tracing::warn!(error = %e, "cannot record the cluster formation yet"),
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = metrics.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A new cluster starts at the newest feature level all its founding members
/// read, so it need not be upgraded before its first feature. Tries for a
/// while (a founder may still be starting); a cluster left at level 1 works,
/// and `chorusctl cluster upgrade` raises it later.
async fn raise_at_formation(node: &Node, stop: &mut watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match admin::raise_level(node, 0).await {
            Ok(level) => {
                tracing::info!(level, "the new cluster's feature level");
                return;
            }
            Err(e) if tokio::time::Instant::now() >= deadline || !node.is_leader() => {
                tracing::warn!(error = %e.message(), "the new cluster stays at its feature level; raise it with chorusctl cluster upgrade");
                return;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Once Raft stops on an error (a failed disk write, data it cannot read), this
/// node's state will not move again: it is marked failed, so every read of it
/// answers `unavailable` instead of serving a state that may be stale or half
/// applied. `/readyz` already answers 503 then (`Node::ready`).
async fn refuse_reads_once_failed(node: Arc<Node>, store: raft_store::Store, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.raft.metrics();
    loop {
        // `Stopped` is a clean shutdown, not a failure.
        let failed = match &metrics.borrow_watched().running_state {
            Ok(()) | Err(openraft::errors::Fatal::Stopped) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            tracing::error!(error = %e, "raft stopped on an error; this node no longer serves reads");
            store.fail(format!("raft stopped: {e}"));
            return;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// How long a policy-requested snapshot may take before it is asked for again.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(300);

/// Asks openraft for a snapshot (which then compacts the log) once the entries
/// applied since the last one number at least `--snapshot-every` and at least
/// `--snapshot-ratio` times the index that snapshot covered.
///
/// A snapshot copies every record of the state, and chat history only grows:
/// each entry adds at most a few records, so the state is bounded by a multiple
/// of the log index. With a fixed interval the copying per write would grow with
/// the history (a 30 s run at 256 writers spent 15 % more CPU per write than
/// with no snapshots at all); with intervals that grow with the index it stays
/// bounded, at the price of keeping a log of up to that fraction of it.
async fn compaction_policy(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let (every, ratio) = (node.config.snapshot_every.max(1), node.config.snapshot_ratio.max(0.0));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let (applied, snapshot) = (node.applied_index(), node.snapshot_index());
        let since = applied.saturating_sub(snapshot);
        if since < every || (since as f64) < snapshot as f64 * ratio {
            continue;
        }
        tracing::info!(applied, since_last = since, "building a snapshot");
        if let Err(e) = node.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "cannot start a snapshot");
            continue;
        }
        // Wait for it, so that it is not asked for again while it is built.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            done = node.snapshot_covering(applied, SNAPSHOT_PATIENCE) => {
                if done.is_none() {
                    tracing::warn!(applied, "a snapshot did not finish in time; asking again");
                }
            }
        }
    }
}

/// Repeats this node's online users to its peers and forgets silent peers.
async fn presence_heartbeats(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(api::presence::HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        node.broadcast_signal(&node.presence.heartbeat());
        node.presence.expire(std::time::Instant::now());
    }
}

/// The node as the API sees it.
struct Backend(Arc<Node>);

fn backend_error(e: NodeError) -> api::BackendError {
    match e {
        NodeError::Unavailable(m) => api::BackendError::Unavailable(m),
        NodeError::Fatal(m) => api::BackendError::Fatal(m),
        NodeError::NotEnabled(m) => api::BackendError::NotEnabled(m),
    }
}

impl api::ChatBackend for Backend {
    fn node_id(&self) -> u64 {
        self.0.id
    }

    fn ready(&self) -> bool {
        self.0.ready()
    }

    type Reader = raft_store::state_machine::ChatReader;

    fn reader(&self) -> &Self::Reader {
        &self.0.reader
    }

    fn propose(&self, event: Event) -> impl std::future::Future<Output = Result<raft_store::chat::Outcome, api::BackendError>> + Send {
        let node = self.0.clone();
        async move { node.propose(event, node::DEFAULT_TIMEOUT).await.map(|c| c.outcome).map_err(backend_error) }
    }

    fn read_barrier(&self) -> impl std::future::Future<Output = Result<(), api::BackendError>> + Send {
        let node = self.0.clone();
        async move { node.read_index(node::DEFAULT_TIMEOUT).await.map(|_| ()).map_err(backend_error) }
    }

    fn deliveries(&self) -> tokio::sync::broadcast::Receiver<raft_store::state_machine::Delivery> {
        self.0.subscribe()
    }

    fn send_signal(&self, signal: api::presence::PeerSignal) {
        self.0.broadcast_signal(&signal);
    }

    fn cluster(&self) -> impl std::future::Future<Output = api::ClusterView> + Send {
        let node = self.0.clone();
        async move { admin::cluster_view(&node).await }
    }

    fn raft_gauges(&self) -> api::RaftGauges {
        let m = self.0.raft.metrics().borrow_watched().clone();
        api::RaftGauges {
            term: m.current_term,
            leader: m.current_leader.unwrap_or(0),
            committed: m.local_committed.map_or(0, |c| c.index),
            applied: self.0.applied_index(),
        }
    }
}
