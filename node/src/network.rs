//! The Raft network over gRPC: one lazily connected, reused channel per peer,
//! a deadline on every call, and the cluster id and secret on every request.
//!
//! openraft messages travel as bincode inside `proto::v1::Bytes`; snapshots are
//! streamed from their file in fixed-size chunks.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use proto::v1::raft_client::RaftClient;
use proto::v1::{Bytes, SnapshotChunk};
use raft_store::codec::{decode, encode};
use raft_store::snapshot::SnapshotFile;
use raft_store::stages::{Stage, WriteStages};
use raft_store::types::{NodeId, Snapshot, Vote};
use raft_store::{NodeInfo, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::identity::Identity;
use crate::link::{CallError, Hello, Link};

/// Bytes per snapshot chunk on the wire.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// How long a whole snapshot transfer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The least deadline of an AppendEntries call that carries entries: see
/// [`append_deadline`].
const APPEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Connect timeout for a peer channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The channels to every peer this node talks to, keyed by raft address.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    pub identity: Identity,
    /// The local address outgoing connections are bound to, when configured.
    source_ip: Option<std::net::IpAddr>,
    /// Mutual TLS to the peers, when the raft port runs it.
    tls: Option<ClientTlsConfig>,
    /// Whether appends and forwarded proposals go over the peer link
    /// ([`crate::link`]): unless `CHORUS_PEER_LINK=off`.
    link: bool,
    /// The link's TLS, when the raft port runs it.
    link_tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Idle proposal links to the leader, by raft address, and the peers
    /// found not to speak the link.
    proposal_links: Arc<Mutex<ProposalLinks>>,
}

/// See [`Peers::proposal_links`].
#[derive(Default)]
struct ProposalLinks {
    idle: HashMap<String, Vec<Link>>,
    unsupported: std::collections::HashSet<String>,
}

/// Idle proposal links kept per peer: as many as batches a forwarder has in
/// flight.
const IDLE_PROPOSAL_LINKS: usize = crate::gather::MAX_IN_FLIGHT;

impl Peers {
    pub fn new(identity: Identity, source_ip: Option<std::net::IpAddr>, tls: Option<&crate::tls::Tls>) -> Self {
        let link = std::env::var("CHORUS_PEER_LINK").map_or(true, |v| v != "off");
        Peers {
            channels: Arc::default(),
            identity,
            source_ip,
            tls: tls.map(crate::tls::Tls::client),
            link,
            link_tls: tls.map(crate::tls::Tls::link_client),
            proposal_links: Arc::default(),
        }
    }

    /// A new peer link to `addr`, as this node, within `timeout` (at most
    /// [`CONNECT_TIMEOUT`]).
    async fn connect_link(&self, addr: &str, timeout: Duration) -> Result<Link, CallError> {
        Link::connect(addr, self.source_ip, self.link_tls.as_ref(), &Hello::of(&self.identity), timeout.min(CONNECT_TIMEOUT)).await
    }

    fn proposal_links(&self) -> std::sync::MutexGuard<'_, ProposalLinks> {
        // Every update under the lock is one insert or remove.
        self.proposal_links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards encoded proposals to the leader at `addr` over the peer link;
    /// `None` when they must go over gRPC instead (the link is off, or the
    /// leader does not speak it). A failure before the request was sent is
    /// [`Retry::NotSent`]; after, [`Retry::Unknown`].
    pub(crate) async fn propose_on_link(
        &self,
        addr: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Option<Result<Vec<crate::rpc::ProposeReply>, crate::node::Retry>> {
        use crate::node::Retry;
        if !self.link {
            return None;
        }
        let idle = {
            let mut links = self.proposal_links();
            if links.unsupported.contains(addr) {
                return None;
            }
            links.idle.get_mut(addr).and_then(Vec::pop)
        };
        let began = Instant::now();
        let mut link = match idle {
            Some(link) => link,
            None => match self.connect_link(addr, timeout).await {
                Ok(link) => link,
                Err(CallError::Unsupported) => {
                    tracing::info!(%addr, "leader does not speak the peer link; forwarding over gRPC");
                    self.proposal_links().unsupported.insert(addr.to_string());
                    return None;
                }
                Err(e) => return Some(Err(Retry::NotSent(e.to_string()))),
            },
        };
        let answer = match link.call(crate::link::PROPOSE, data, timeout.saturating_sub(began.elapsed())).await {
            Ok(answer) => answer,
            // Sent, perhaps proposed: the link is dropped (see `Link::call`).
            Err(e) => return Some(Err(Retry::Unknown(format!("leader at {addr}: {e}")))),
        };
        {
            let mut links = self.proposal_links();
            // Links to a former leader are of no more use.
            links.idle.retain(|a, _| a == addr);
            let idle = links.idle.entry(addr.to_string()).or_default();
            if idle.len() < IDLE_PROPOSAL_LINKS {
                idle.push(link);
            }
        }
        let result: Result<Vec<crate::rpc::ProposeReply>, String> = match decode(&answer) {
            Ok(result) => result,
            Err(e) => return Some(Err(Retry::Unknown(e.to_string()))),
        };
        Some(result.map_err(|why| Retry::Unknown(format!("leader at {addr}: {why}"))))
    }

    /// The channel to `addr`, created on first use and reused after.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = match &self.tls {
            // The peer's certificate must name the host of `addr`.
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone())?,
            None => Endpoint::from_shared(format!("http://{addr}"))?,
        };
        let ch = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.source_ip)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A request carrying this node's cluster id and the secret, with a deadline.
    pub fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        self.identity.stamp(req.metadata_mut());
        req
    }

    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.channel(addr)?).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
    }
}

/// Builds one [`PeerNetwork`] per replication target for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    /// This node's id.
    pub id: NodeId,
    pub peers: Peers,
    /// Where replication round trips are timed.
    pub stages: Arc<WriteStages>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        let link = if self.peers.link { LinkState::Closed } else { LinkState::Off };
        PeerNetwork { id: self.id, target, addr: node.raft_addr.clone(), peers: self.peers.clone(), stages: self.stages.clone(), link }
    }
}

/// The connection to one peer, as openraft uses it. openraft makes one for
/// each of its streams to a peer (replication, heartbeats), so each has a
/// peer link of its own and none waits behind another's call.
pub struct PeerNetwork {
    id: NodeId,
    target: NodeId,
    addr: String,
    peers: Peers,
    stages: Arc<WriteStages>,
    link: LinkState,
}

/// Where this peer's appends go.
enum LinkState {
    /// Over the peer link, connected at the next call.
    Closed,
    /// Over the peer link, connected.
    Open(Link),
    /// Over gRPC: the link is off, or the peer does not speak it.
    Off,
}

/// The deadline of an AppendEntries call. openraft offers the heartbeat interval
/// (50 ms by default) for every call, which suits a heartbeat; but a follower
/// answers an append that carries entries only once it has synced them, and one
/// slow sync of the shared disk would then fail the call. So those get at least
/// [`APPEND_TIMEOUT`].
fn append_deadline(carries_entries: bool, option: &RPCOption) -> Duration {
    if carries_entries {
        option.hard_ttl().max(APPEND_TIMEOUT)
    } else {
        option.hard_ttl()
    }
}

fn unreachable<E: std::error::Error + 'static>(e: &E) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(e))
}

/// A gRPC status as openraft should see it: transport failures make the peer
/// unreachable (openraft backs off), anything else is a network error.
fn status_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => unreachable(status),
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

/// A failed call as openraft should see it. A call whose deadline passed (the
/// client cancels it: `Cancelled`; or the server gave up: `DeadlineExceeded`)
/// is a timeout: the peer is slow, not gone. openraft pauses replication to a
/// peer for 200 ms after a single unreachable error, but only after several
/// timeouts in a row; with timeouts reported as unreachable, one slow sync on
/// both followers stalled every write for a quarter of a second.
fn call_error(status: &tonic::Status, timeout: Timeout<TypeConfig>) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(timeout),
        _ => status_error(status),
    }
}

impl PeerNetwork {
    async fn call<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        req: &Req,
        timeout: Duration,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<Bytes>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Bytes>, tonic::Status>>,
    {
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self.peers.raft_client(&self.addr).map_err(|e| unreachable(&e))?;
        let reply = f(client, self.peers.request(Bytes { data }, timeout))
            .await
            .map_err(|s| call_error(&s, Timeout { action, id: self.id, target: self.target, timeout }))?;
        // The peer answers with its own Raft's result; its errors (shutting down,
        // fatal storage) mean it cannot serve: unreachable, for now.
        let result: Result<Resp, String> =
            decode(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|msg| unreachable(&std::io::Error::other(msg)))
    }
}

impl PeerNetwork {
    /// One append over the peer link, connecting first if need be; `None`
    /// when it must go over gRPC instead (the link is off, or the peer turned
    /// out not to speak it, which is then remembered).
    async fn append_on_link(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        deadline: Duration,
    ) -> Option<Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>>> {
        if matches!(self.link, LinkState::Off) {
            return None;
        }
        let timeout = Timeout { action: RPCTypes::AppendEntries, id: self.id, target: self.target, timeout: deadline };
        let data = match encode(rpc) {
            Ok(data) => data,
            Err(e) => return Some(Err(RPCError::Network(NetworkError::new(&e)))),
        };
        let began = Instant::now();
        let mut link = match std::mem::replace(&mut self.link, LinkState::Closed) {
            LinkState::Open(link) => link,
            _ => match self.peers.connect_link(&self.addr, deadline).await {
                Ok(link) => link,
                Err(CallError::Unsupported) => {
                    tracing::info!(target = self.target, addr = %self.addr, "peer does not speak the peer link; appending over gRPC");
                    self.link = LinkState::Off;
                    return None;
                }
                Err(e) => return Some(Err(link_error(e, timeout))),
            },
        };
        let left = deadline.saturating_sub(began.elapsed());
        match link.call(crate::link::APPEND, &data, left).await {
            Ok(answer) => {
                self.link = LinkState::Open(link);
                // As over gRPC: the peer's own Raft failing means it cannot serve.
                let result: Result<AppendEntriesResponse<TypeConfig>, String> = match decode(&answer) {
                    Ok(result) => result,
                    Err(e) => return Some(Err(RPCError::Network(NetworkError::new(&e)))),
                };
                Some(result.map_err(|msg| unreachable(&std::io::Error::other(msg))))
            }
            // The link is dropped: a late answer must not be read as the next.
            Err(e) => Some(Err(link_error(e, timeout))),
        }
    }
}

/// A failed link call as openraft should see it, as [`call_error`] does for
/// gRPC: a passed deadline is a timeout, a broken connection unreachable, a
/// refusal a network error.
fn link_error(e: CallError, timeout: Timeout<TypeConfig>) -> RPCError<TypeConfig> {
    match e {
        CallError::Timeout(_) => RPCError::Timeout(timeout),
        CallError::Io(e) => unreachable(&e),
        e @ (CallError::Refused(_) | CallError::Unsupported) => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let carries_entries = !rpc.entries.is_empty();
        let deadline = append_deadline(carries_entries, &option);
        let sent = Instant::now();
        let answer = match self.append_on_link(&rpc, deadline).await {
            Some(answer) => answer,
            None => self.call(RPCTypes::AppendEntries, &rpc, deadline, |mut c, r| async move { c.append(r).await }).await,
        };
        if carries_entries && answer.is_ok() {
            self.stages.observe(Stage::Replicate, sent.elapsed());
        }
        answer
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl(), |mut c, r| async move { c.vote(r).await }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::TransferLeader, &req, option.hard_ttl(), |mut c, r| async move { c.transfer_leader(r).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = encode(&(&vote, &snapshot.meta)).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let client = self.peers.raft_client(&self.addr).map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)));
        let mut client = client?;
        let target = self.target;

        // Chunks are read from the file by a blocking task and fed to the stream
        // through a small channel: at most a few chunks are in memory at once.
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let mut file = snapshot.snapshot.file;
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(0))?;
            let mut header = Some(header);
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                let last = filled < SNAPSHOT_CHUNK;
                let chunk = SnapshotChunk { header: header.take().unwrap_or_default(), data: buf };
                if tx.blocking_send(chunk).is_err() || last {
                    return Ok(());
                }
            }
        });

        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let request = self.peers.request(stream, SNAPSHOT_TIMEOUT);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = client.snapshot(request) => reply,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        let reply = reply.map_err(|s| match status_error(&s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            _ => StreamingError::Network(NetworkError::new(&s)),
        })?;
        let result: Result<SnapshotResponse<TypeConfig>, String> =
            decode(&reply.into_inner().data).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        result.map_err(|msg| {
            tracing::warn!(target, error = %msg, "peer refused the snapshot");
            StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout() -> Timeout<TypeConfig> {
        Timeout { action: RPCTypes::AppendEntries, id: 1, target: 2, timeout: Duration::from_millis(50) }
    }

    #[test]
    fn a_passed_deadline_is_a_timeout_and_a_dead_peer_is_unreachable() {
        // tonic's client reports its own deadline as Cancelled ("Timeout expired").
        for status in [tonic::Status::cancelled("Timeout expired"), tonic::Status::deadline_exceeded("late")] {
            assert!(matches!(call_error(&status, timeout()), RPCError::Timeout(_)), "{status:?}");
        }
        assert!(matches!(call_error(&tonic::Status::unavailable("refused"), timeout()), RPCError::Unreachable(_)));
        assert!(matches!(call_error(&tonic::Status::internal("bug"), timeout()), RPCError::Network(_)));
    }

    #[test]
    fn appends_with_entries_wait_for_a_slow_sync_and_heartbeats_do_not() {
        let option = RPCOption::new(Duration::from_millis(50));
        assert_eq!(append_deadline(false, &option), Duration::from_millis(50));
        assert_eq!(append_deadline(true, &option), APPEND_TIMEOUT);
        let long = RPCOption::new(Duration::from_secs(5));
        assert_eq!(append_deadline(true, &long), Duration::from_secs(5));
    }
}
