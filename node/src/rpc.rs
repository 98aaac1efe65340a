//! The node-to-node gRPC service (`chorus.v1.Raft`): Raft messages in, and the
//! chat plane's forwarding of writes and read-index requests to the leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use proto::v1::raft_server::Raft as RaftRpc;
use proto::v1::{Bytes, Empty, ReadIndexReply, SnapshotChunk};
use raft_store::chat::{Event, Outcome};
use raft_store::codec::{decode, encode};
use raft_store::snapshot::SnapshotFile;
use raft_store::types::{Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::network::Peers;
use crate::node::{Committed, Node, Retry};

/// How a leader answers a forwarded proposal.
#[derive(Serialize, Deserialize, Debug)]
pub enum ProposeReply {
    Committed { outcome: Outcome, index: u64 },
    NotLeader,
    Unknown(String),
    Fatal(String),
}

pub struct RaftService {
    pub node: Arc<Node>,
    /// Held while a snapshot is received: one at a time, so a peer cannot
    /// fill the disk with streams in parallel.
    pub receiving: tokio::sync::Mutex<()>,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node, receiving: tokio::sync::Mutex::new(()) }
    }
}

/// How long a snapshot stream may go without a chunk before it is dropped.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable payload: {e}"))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<Bytes>, Status> {
    Ok(Response::new(Bytes { data: encode(value).map_err(|e| Status::internal(e.to_string()))? }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        self.node.peers.identity.check_peer(request.metadata())?;
        let req = decode(&request.into_inner().data).map_err(bad_payload)?;
        let result = self.node.raft.vote(req).await.map_err(|e| e.to_string());
        reply(&result)
    }

    async fn append(&self, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        self.node.peers.identity.check_peer(request.metadata())?;
        let arrived = std::time::Instant::now();
        let req: openraft::raft::AppendEntriesRequest<raft_store::TypeConfig> = decode(&request.into_inner().data).map_err(bad_payload)?;
        let carries_entries = !req.entries.is_empty();
        let result = self.node.raft.append_entries(req).await.map_err(|e| e.to_string());
        let answer = reply(&result);
        if carries_entries {
            self.node.stages.observe(raft_store::stages::Stage::FollowerAppend, arrived.elapsed());
        }
        answer
    }

    async fn snapshot(&self, request: Request<Streaming<SnapshotChunk>>) -> Result<Response<Bytes>, Status> {
        self.node.peers.identity.check_peer(request.metadata())?;
        let _receiving = self.receiving.try_lock().map_err(|_| Status::resource_exhausted("a snapshot is being received already; try again later"))?;
        let max = self.node.config.max_snapshot_bytes;
        let mut chunks = request.into_inner();
        let first = chunks.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&first.header).map_err(bad_payload)?;

        // Received into our own snapshot directory; the state machine moves it
        // into place once it verified the checksum.
        let dir = self.node.config.data_dir().join("snapshots");
        let path = dir.join(format!("incoming-{}-{}.recv", self.node.id, crate::node::now_ms()));
        let result = async {
            let mut file = tokio::fs::File::create(&path).await?;
            let mut written = 0u64;
            let mut next = Some(first);
            while let Some(chunk) = next {
                written += chunk.data.len() as u64;
                if written > max {
                    return Err(std::io::Error::other(format!("the snapshot is larger than --max-snapshot-bytes ({max})")));
                }
                file.write_all(&chunk.data).await?;
                next = match tokio::time::timeout(CHUNK_TIMEOUT, chunks.next()).await {
                    Ok(chunk) => chunk.transpose().map_err(std::io::Error::other)?,
                    Err(_) => return Err(std::io::Error::other(format!("no chunk for {} s", CHUNK_TIMEOUT.as_secs()))),
                };
            }
            // Synced before openraft is handed the file, so an installed
            // snapshot is on disk whole.
            file.sync_all().await?;
            SnapshotFile::open(path.clone())
        }
        .await;
        let file = match result {
            Ok(file) => file,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Status::aborted(format!("snapshot transfer failed: {e}")));
            }
        };
        let result = self.node.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: file }).await;
        if path.exists() {
            // Not consumed by the install (refused or failed).
            let _ = tokio::fs::remove_file(&path).await;
        }
        reply(&result.map_err(|e| e.to_string()))
    }

    async fn transfer_leader(&self, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        self.node.peers.identity.check_peer(request.metadata())?;
        let req = decode(&request.into_inner().data).map_err(bad_payload)?;
        let result = self.node.raft.handle_transfer_leader(req).await.map_err(|e| e.to_string());
        reply(&result)
    }

    /// A batch of events forwarded by a follower (or sent by a benchmark); each
    /// gets its own answer, in order. The leader's Proposer packs them with its
    /// own clients' commands.
    async fn propose(&self, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        self.node.peers.identity.check_peer(request.metadata())?;
        let events: Vec<Event> = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&answer_proposals(&self.node, events).await.map_err(Status::permission_denied)?)
    }

    async fn read_index(&self, request: Request<Empty>) -> Result<Response<ReadIndexReply>, Status> {
        self.node.peers.identity.check_peer(request.metadata())?;
        match self.node.read_index_local().await {
            Ok(index) => Ok(Response::new(ReadIndexReply { index })),
            Err(Retry::Fatal(why)) => Err(Status::internal(why)),
            Err(Retry::NotSent(why) | Retry::Unknown(why)) => Err(Status::unavailable(why)),
        }
    }

    async fn signal(&self, request: Request<Bytes>) -> Result<Response<Empty>, Status> {
        self.node.peers.identity.check_peer(request.metadata())?;
        let signal = decode(&request.into_inner().data).map_err(bad_payload)?;
        self.node.presence.receive(signal, Instant::now());
        Ok(Response::new(Empty {}))
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))
}

/// The leader's answers to proposals a peer forwarded (over gRPC or the
/// link), or why the whole batch is refused.
pub(crate) async fn answer_proposals(node: &Node, events: Vec<Event>) -> Result<Vec<ProposeReply>, String> {
    // A peer forwards its clients' writes, nothing else: the formation and
    // the feature level are proposed by the leader itself, behind their own
    // checks. And no event type newer than the cluster's level.
    let level = node.reader.feature_level();
    if let Some(e) = events.iter().find(|e| !e.from_client() || e.level() > level) {
        return Err(format!(
            "a peer may forward client events of feature level {level} or below, not {}",
            raft_store::chat::Command { ts_ms: 0, event: e.clone() }
        ));
    }
    if !node.is_leader() {
        return Ok(events.iter().map(|_| ProposeReply::NotLeader).collect());
    }
    Ok(futures::future::join_all(events.into_iter().map(|event| async {
        match node.propose_local(event).await {
            Ok(Committed { outcome, index }) => ProposeReply::Committed { outcome, index },
            Err(Retry::NotSent(_)) => ProposeReply::NotLeader,
            Err(Retry::Unknown(why)) => ProposeReply::Unknown(why),
            Err(Retry::Fatal(why)) => ProposeReply::Fatal(why),
        }
    }))
    .await)
}

/// Sends a batch of proposals to the leader at `addr` (over the peer link, or
/// gRPC for a leader that does not speak it); one result per event.
pub(crate) async fn forward_proposals(peers: &Peers, addr: &str, events: &[Event], timeout: Duration) -> Vec<Result<Committed, Retry>> {
    let all = |r: Retry| events.iter().map(|_| Err(r.clone())).collect::<Vec<_>>();
    let data = match encode(events) {
        Ok(d) => d,
        Err(e) => return all(Retry::Fatal(e.to_string())),
    };
    let answers = match peers.propose_on_link(addr, &data, timeout).await {
        Some(Ok(answers)) => answers,
        Some(Err(retry)) => return all(retry),
        None => match propose_over_grpc(peers, addr, data, timeout).await {
            Ok(answers) => answers,
            Err(retry) => return all(retry),
        },
    };
    if answers.len() != events.len() {
        return all(Retry::Unknown(format!("{} answers for {} proposals", answers.len(), events.len())));
    }
    answers
        .into_iter()
        .map(|a| match a {
            ProposeReply::Committed { outcome, index } => Ok(Committed { outcome, index }),
            ProposeReply::NotLeader => Err(Retry::NotSent(format!("{addr} is no longer the leader"))),
            ProposeReply::Unknown(why) => Err(Retry::Unknown(why)),
            ProposeReply::Fatal(why) => Err(Retry::Unknown(format!("leader failed: {why}"))),
        })
        .collect()
}

async fn propose_over_grpc(peers: &Peers, addr: &str, data: Vec<u8>, timeout: Duration) -> Result<Vec<ProposeReply>, Retry> {
    let mut client = peers.raft_client(addr).map_err(|e| Retry::NotSent(e.to_string()))?;
    let reply = match client.propose(peers.request(Bytes { data }, timeout)).await {
        Ok(r) => r.into_inner(),
        // Refused before the leader looked at it: nothing was proposed.
        Err(s) if s.code() == tonic::Code::Unavailable && s.message().contains("connect") => return Err(Retry::NotSent(s.to_string())),
        Err(s) => return Err(Retry::Unknown(format!("leader at {addr}: {}", s.message()))),
    };
    decode(&reply.data).map_err(|e| Retry::Unknown(e.to_string()))
}

/// Asks the leader at `addr` for a read index.
pub(crate) async fn forward_read_index(peers: &Peers, addr: &str, deadline: Instant) -> Result<u64, Retry> {
    let mut client = peers.raft_client(addr).map_err(|e| Retry::NotSent(e.to_string()))?;
    match client.read_index(peers.request(Empty {}, remaining(deadline))).await {
        Ok(r) => Ok(r.into_inner().index),
        Err(s) => Err(Retry::NotSent(s.message().to_string())),
    }
}

/// Proposes `event` at the node at `addr` from outside the cluster (benchmarks
/// and process-level tests), identifying as a member of `cluster_id`. Only the
/// leader accepts; others answer [`ProposeReply::NotLeader`].
pub async fn propose_at(
    client: &mut proto::v1::raft_client::RaftClient<tonic::transport::Channel>,
    cluster_id: &str,
    secret: Option<&str>,
    event: &Event,
    timeout: Duration,
) -> Result<ProposeReply, Status> {
    let answers = propose_batch_at(client, cluster_id, secret, std::slice::from_ref(event), timeout).await?;
    answers.into_iter().next().ok_or_else(|| Status::internal("no answer"))
}

/// [`propose_at`] for several events in one RPC: each is proposed on its own
/// and gets its own answer, in order.
pub async fn propose_batch_at(
    client: &mut proto::v1::raft_client::RaftClient<tonic::transport::Channel>,
    cluster_id: &str,
    secret: Option<&str>,
    events: &[Event],
    timeout: Duration,
) -> Result<Vec<ProposeReply>, Status> {
    let data = encode(events).map_err(|e| Status::internal(e.to_string()))?;
    let mut req = Request::new(Bytes { data });
    req.set_timeout(timeout);
    let md = req.metadata_mut();
    md.insert(proto::CLUSTER_HEADER, cluster_id.parse().map_err(|_| Status::invalid_argument("bad cluster id"))?);
    if let Some(secret) = secret {
        md.insert(proto::SECRET_HEADER, secret.parse().map_err(|_| Status::invalid_argument("bad secret"))?);
    }
    let reply = client.propose(req).await?.into_inner();
    let answers: Vec<ProposeReply> = decode(&reply.data).map_err(|e| Status::internal(e.to_string()))?;
    if answers.len() != events.len() {
        return Err(Status::internal(format!("{} answers for {} proposals", answers.len(), events.len())));
    }
    Ok(answers)
}
