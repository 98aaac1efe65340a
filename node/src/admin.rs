//! The operator service (`chorus.v1.Admin`) behind `chorusctl cluster …`.
//!
//! Any member accepts every command. Membership changes run on the leader: a
//! follower forwards the call to it and relays the answer, so the operator never
//! has to find the leader.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::{ChangeMembers, ServerState};
use proto::v1::admin_client::AdminClient;
use proto::v1::admin_server::Admin;
use proto::v1::{
    AddProgress, AddRequest, ClusterStatus, CreateInviteReply, CreateInviteRequest, Empty, IdRequest, InitRequest, Invite, InviteList, Member,
    NodeInfo as NodeInfoMsg, RevokeInviteRequest, RevokeReply, SetRoomOwnerRequest, RevokeRequest, RotateKeyReply, RotateKeyRequest, SnapshotReply, UpgradeRequest,
};
use raft_store::accounts::{self, InviteRecord};
use raft_store::chat::{Command, Event, Outcome};
use raft_store::types::NodeId;
use raft_store::NodeInfo;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::identity::Need;
use crate::node::{Committed, Node, NodeError};
use crate::upgrade;

/// Deadline of one admin call from node to node.
const PEER_ADMIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `cluster status` waits for each member's own figures: a member that
/// does not answer in time is shown unreachable, so status answers within ~1 s
/// even while a member is partitioned away.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a leadership hand-over may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// A learner is promoted once it is this close to the leader's log.
const CAUGHT_UP_LAG: u64 = 64;
/// How long `cluster add` waits for a learner to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

pub struct AdminService {
    pub node: Arc<Node>,
}

type AddStream = Pin<Box<dyn Stream<Item = Result<AddProgress, Status>> + Send + 'static>>;

fn role_name(state: ServerState, voter: bool) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        // A node shutting down is not serving any role; it shows as what it
        // is in the membership (SPEC §2 lists no other role).
        ServerState::Follower | ServerState::Shutdown if voter => "follower",
        ServerState::Follower | ServerState::Learner | ServerState::Shutdown => "learner",
    }
}

/// "Ask the leader at `leader`": chorusctl repeats the call there. Nodes do
/// not forward admin calls themselves: under mutual TLS they would make them
/// with a member's certificate, which admin calls do not accept.
fn redirect(leader: &str) -> Status {
    let mut status = Status::failed_precondition(format!("this node is not the leader; the leader is at {leader}"));
    if let Ok(v) = MetadataValue::try_from(leader) {
        status.metadata_mut().insert(proto::LEADER_HEADER, v);
    }
    status
}

fn raft_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

impl AdminService {
    /// This node's own view of itself.
    pub fn local_info(node: &Node) -> NodeInfoMsg {
        let m = node.raft.metrics().borrow_watched().clone();
        let voter = m.membership_config.membership().voter_ids().any(|id| id == node.id);
        let in_cluster = m.membership_config.membership().nodes().any(|(id, _)| *id == node.id);
        NodeInfoMsg {
            id: node.id,
            raft_addr: node.info.raft_addr.clone(),
            client_url: node.info.client_url.clone(),
            cluster_id: node.peers.identity.cluster_id().unwrap_or_default(),
            initialized: in_cluster || m.last_log_index.is_some(),
            role: if in_cluster { role_name(m.state, voter).to_string() } else { String::new() },
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: node.applied_index(),
            leader: m.current_leader.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |s| s.index),
            connections: node.connections.load(std::sync::atomic::Ordering::Relaxed),
            max_feature_level: raft_store::format::CURRENT,
            feature_level: node.reader.feature_level(),
        }
    }

    async fn remote_info(&self, addr: &str) -> Result<NodeInfoMsg, Status> {
        remote_info(&self.node, addr, PEER_ADMIN_TIMEOUT).await
    }

    /// Refuses a call only the leader can carry out when this node is not
    /// the leader, naming the leader (see [`redirect`]).
    fn at_leader(&self) -> Result<(), Status> {
        if self.node.is_leader() {
            return Ok(());
        }
        match self.node.leader() {
            Some((_, info)) => Err(redirect(&info.raft_addr)),
            None => Err(Status::unavailable("no leader is known; is a majority of voters up?")),
        }
    }

    async fn status(&self) -> ClusterStatus {
        let view = members_view(&self.node, STATUS_PROBE_TIMEOUT).await;
        let members = view
            .rows
            .into_iter()
            .map(|r| Member {
                id: r.id,
                raft_addr: r.info.raft_addr,
                client_addr: r.info.client_url,
                role: r.role,
                voter: r.voter,
                term: r.live.as_ref().map_or(0, |i| i.term),
                last_log_index: r.live.as_ref().map_or(0, |i| i.last_log_index),
                applied_index: r.live.as_ref().map_or(0, |i| i.applied_index),
                lag: r.lag,
                reachable: r.live.is_some(),
                max_feature_level: r.live.as_ref().map_or(0, |i| upgrade::reads(i.max_feature_level)),
            })
            .collect();
        ClusterStatus {
            cluster_id: view.cluster_id,
            leader: view.leader.unwrap_or(0),
            term: view.term,
            members,
            feature_level: self.node.reader.feature_level(),
        }
    }

    async fn wait_for_leader(&self, want: Option<NodeId>, timeout: Duration) -> Result<NodeId, Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.node.raft.metrics().borrow_watched().current_leader;
            match (leader, want) {
                (Some(l), Some(w)) if l == w => return Ok(l),
                (Some(l), None) => return Ok(l),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Status::deadline_exceeded("no leader emerged in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    type AddStream = AddStream;
    type BackupStream = crate::backup::ChunkStream;

    async fn info(&self, _request: Request<Empty>) -> Result<Response<NodeInfoMsg>, Status> {
        // Members ask each other this; the interceptor let in peers and operators.
        Ok(Response::new(Self::local_info(&self.node)))
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let addrs = request.into_inner().raft_addrs;
        if addrs.is_empty() {
            return Err(Status::invalid_argument("cluster init needs at least one raft address"));
        }
        let me = Self::local_info(&self.node);
        if me.initialized || !me.cluster_id.is_empty() {
            return Err(Status::already_exists(format!(
                "the node at {} is already in cluster {}",
                me.raft_addr,
                if me.cluster_id.is_empty() { "(unknown)" } else { &me.cluster_id }
            )));
        }
        let mut members = BTreeMap::new();
        for addr in &addrs {
            let info = if *addr == me.raft_addr { me.clone() } else { self.remote_info(addr).await? };
            if info.initialized || !info.cluster_id.is_empty() {
                return Err(Status::already_exists(format!(
                    "the node at {addr} already belongs to cluster {}",
                    if info.cluster_id.is_empty() { "(unknown)" } else { &info.cluster_id }
                )));
            }
            let node = NodeInfo { raft_addr: info.raft_addr.clone(), client_url: info.client_url.clone() };
            if members.insert(info.id, node).is_some() {
                return Err(Status::invalid_argument(format!("two nodes have id {}", info.id)));
            }
        }
        if !members.contains_key(&self.node.id) {
            return Err(Status::invalid_argument(format!(
                "send init to one of the nodes being formed (this is {})",
                me.raft_addr
            )));
        }
        let cluster_id = crate::new_cluster_id();
        self.node.peers.identity.adopt(&cluster_id)?;
        self.node.raft.initialize(members).await.map_err(raft_status)?;
        self.wait_for_leader(None, Duration::from_secs(10)).await?;
        Ok(Response::new(self.status().await))
    }

    async fn add(&self, request: Request<AddRequest>) -> Result<Response<AddStream>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let req = request.into_inner();
        self.at_leader()?;
        let info = self.remote_info(&req.raft_addr).await?;
        let ours = self.node.peers.identity.cluster_id().unwrap_or_default();
        if !info.cluster_id.is_empty() && info.cluster_id != ours {
            return Err(Status::failed_precondition(format!(
                "the node at {} belongs to another cluster ({}); start it with --no-bootstrap on an empty data dir",
                req.raft_addr, info.cluster_id
            )));
        }
        upgrade::admit(self.node.reader.feature_level(), info.id, info.max_feature_level).map_err(Status::failed_precondition)?;
        let members = self.node.members();
        let mut learner = req.learner;
        if let Some((existing, voter)) = members.get(&info.id) {
            if existing.raft_addr != info.raft_addr {
                // A moved member rejoins as what it was.
                self.remove_moved_member(&info, existing, *voter).await?;
                learner = !*voter;
            }
        }
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let svc = AdminService { node: node.clone() };
        tokio::spawn(async move {
            let result = svc.run_add(info, learner, &tx).await;
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn promote(&self, request: Request<IdRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let id = request.into_inner().id;
        self.at_leader()?;
        match self.node.members().get(&id) {
            None => return Err(Status::not_found(format!("no member has id {id}"))),
            Some((_, true)) => return Err(Status::already_exists(format!("member {id} is already a voter"))),
            Some((_, false)) => {}
        }
        self.node
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
            .map_err(raft_status)?;
        Ok(Response::new(self.status().await))
    }

    async fn remove(&self, request: Request<IdRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let id = request.into_inner().id;
        self.at_leader()?;
        let members = self.node.members();
        let voters: Vec<NodeId> = members.iter().filter(|(_, (_, v))| *v).map(|(id, _)| *id).collect();
        let Some((_, voter)) = members.get(&id) else {
            return Err(Status::not_found(format!("no member has id {id}")));
        };
        if *voter && voters.len() == 1 {
            return Err(Status::failed_precondition(format!("member {id} is the last voter; it cannot be removed")));
        }
        if id == self.node.id {
            // Hand leadership to another voter first, then let it remove us.
            let Some(&next) = voters.iter().find(|v| **v != id) else {
                return Err(Status::failed_precondition("no other voter to hand leadership to"));
            };
            self.node.raft.trigger().transfer_leader(next).await.map_err(raft_status)?;
            self.wait_for_leader(Some(next), TRANSFER_TIMEOUT).await?;
            let addr = members.get(&next).map(|(i, _)| i.raft_addr.clone()).unwrap_or_default();
            return Err(redirect(&addr));
        }
        let change = if *voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.node.raft.change_membership(change, false).await.map_err(raft_status)?;
        Ok(Response::new(self.status().await))
    }

    async fn transfer_leader(&self, request: Request<IdRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let id = request.into_inner().id;
        self.at_leader()?;
        match self.node.members().get(&id) {
            None => return Err(Status::not_found(format!("no member has id {id}"))),
            Some((_, false)) => return Err(Status::failed_precondition(format!("member {id} is a learner, not a voter"))),
            Some((_, true)) => {}
        }
        if id != self.node.id {
            self.node.raft.trigger().transfer_leader(id).await.map_err(raft_status)?;
            self.wait_for_leader(Some(id), TRANSFER_TIMEOUT).await?;
        }
        Ok(Response::new(self.status().await))
    }

    async fn status(&self, request: Request<Empty>) -> Result<Response<ClusterStatus>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        Ok(Response::new(AdminService::status(self).await))
    }

    async fn upgrade(&self, request: Request<UpgradeRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let req = request.into_inner();
        self.at_leader()?;
        raise_level(&self.node, req.level).await?;
        Ok(Response::new(self.status().await))
    }

    async fn backup(&self, request: Request<Empty>) -> Result<Response<Self::BackupStream>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        Ok(Response::new(crate::backup::stream(&self.node).await?))
    }

    async fn rotate_key(&self, request: Request<RotateKeyRequest>) -> Result<Response<RotateKeyReply>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        self.at_leader()?;
        let key: [u8; 32] = rand::Rng::random(&mut rand::rng());
        let event = Event::SigningKeyRotated { key: key.to_vec(), drop_old: request.get_ref().drop_old };
        match commit_operator(&self.node, event).await? {
            Outcome::KeyRotated { version } => Ok(Response::new(RotateKeyReply { version })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn revoke(&self, request: Request<RevokeRequest>) -> Result<Response<RevokeReply>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        self.at_leader()?;
        let user = request.into_inner().user;
        match commit_operator(&self.node, Event::SessionsRevoked { user }).await? {
            Outcome::Revoked { epoch } => Ok(Response::new(RevokeReply { epoch })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn create_invite(&self, request: Request<CreateInviteRequest>) -> Result<Response<CreateInviteReply>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        self.at_leader()?;
        let CreateInviteRequest { uses, expires_in_secs, note } = request.into_inner();
        // 120 random bits: out of reach of guessing, short enough to paste.
        let bytes: [u8; 15] = rand::Rng::random(&mut rand::rng());
        let code = hex::encode(bytes);
        let code_hash = accounts::code_hash(&code);
        let expires_in_ms = (expires_in_secs > 0).then(|| expires_in_secs.saturating_mul(1000));
        let event = Event::InviteIssued { code_hash: code_hash.clone(), uses, expires_in_ms, note: note.clone() };
        match commit_operator(&self.node, event).await? {
            Outcome::InviteIssued { expires_at_ms } => {
                // Proposing waited for this node to apply it: the record is here.
                let stored = accounts::invite(&self.node.reader, &code_hash).map_err(|e| Status::internal(e.to_string()))?;
                let record = stored.unwrap_or(InviteRecord { uses_left: uses, expires_at_ms, issued_ms: 0, note });
                Ok(Response::new(CreateInviteReply { code, invite: Some(invite_row(&code_hash, &record)) }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn list_invites(&self, request: Request<Empty>) -> Result<Response<InviteList>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let invites = accounts::invites(&self.node.reader).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(InviteList { invites: invites.iter().map(|(hash, record)| invite_row(hash, record)).collect() }))
    }

    async fn revoke_invite(&self, request: Request<RevokeInviteRequest>) -> Result<Response<Empty>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        self.at_leader()?;
        let id = request.into_inner().id.trim().to_string();
        let prefix = id.to_ascii_lowercase();
        let invites = accounts::invites(&self.node.reader).map_err(|e| Status::internal(e.to_string()))?;
        let code_hash = accounts::code_hash(&id);
        let matching: Vec<&String> = invites
            .iter()
            .map(|(hash, _)| hash)
            .filter(|hash| **hash == code_hash || (prefix.len() >= INVITE_ID_MIN && hash.starts_with(&prefix)))
            .collect();
        let code_hash = match matching.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(Status::not_found(format!("no invite {id:?}; `chorusctl invites list` shows their ids"))),
            _ => return Err(Status::invalid_argument(format!("{id:?} names more than one invite: give more of its id"))),
        };
        match commit_operator(&self.node, Event::InviteRevoked { code_hash }).await? {
            Outcome::InviteRevoked { .. } => Ok(Response::new(Empty {})),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn set_room_owner(&self, request: Request<SetRoomOwnerRequest>) -> Result<Response<Empty>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        self.at_leader()?;
        let SetRoomOwnerRequest { room, user } = request.into_inner();
        if raft_store::ChatRead::room(&self.node.reader, &room).map_err(|e| Status::internal(e.to_string()))?.is_none() {
            return Err(Status::not_found(format!("no room {room:?}")));
        }
        match commit_operator(&self.node, Event::RoomOwnerSet { room, owner: user.clone() }).await? {
            Outcome::OwnerSet => Ok(Response::new(Empty {})),
            Outcome::NoSuchUser => Err(Status::not_found(format!("no user {user:?}"))),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn snapshot(&self, request: Request<Empty>) -> Result<Response<SnapshotReply>, Status> {
        self.node.peers.identity.check_role(&request, Need::Operator)?;
        let target = self.node.applied_index();
        self.node.raft.trigger().snapshot().await.map_err(raft_status)?;
        match self.node.snapshot_covering(target, Duration::from_secs(120)).await {
            Some(index) => Ok(Response::new(SnapshotReply { index })),
            None => Err(Status::deadline_exceeded("the snapshot did not finish in time")),
        }
    }
}

/// How many hex digits of a code's hash name an invite.
const INVITE_ID: usize = 12;
/// The shortest id prefix `invites revoke` takes.
const INVITE_ID_MIN: usize = 8;

fn invite_row(hash: &str, record: &InviteRecord) -> Invite {
    Invite {
        id: hash.chars().take(INVITE_ID).collect(),
        uses_left: record.uses_left,
        expires_at_ms: record.expires_at_ms.unwrap_or(0),
        issued_ms: record.issued_ms,
        note: record.note.clone(),
    }
}

/// On the leader: commits an operator's event (a key rotation, a revocation,
/// an invite, a room owner) and returns its outcome.
async fn commit_operator(node: &Node, event: Event) -> Result<Outcome, Status> {
    // Display names the event without its secrets (never the key itself).
    let what = Command { ts_ms: 0, event: event.clone() }.to_string();
    match node.propose(event, TRANSFER_TIMEOUT).await {
        Ok(Committed { outcome: Outcome::Rejected { reason }, .. }) => Err(Status::invalid_argument(reason)),
        Ok(Committed { outcome, .. }) => {
            tracing::info!(%what, ?outcome, "committed an operator's change");
            Ok(outcome)
        }
        Err(e @ NodeError::NotEnabled(_)) => Err(Status::failed_precondition(e.to_string())),
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

/// On the leader: raises the cluster's feature level to `requested` (0: the
/// newest every member reads) once every member reports reading it; returns
/// the level the cluster is at afterwards.
pub async fn raise_level(node: &Node, requested: u32) -> Result<u32, Status> {
    let _gate = node.level_gate.lock().await;
    let reports: Vec<(NodeId, Option<u32>)> =
        member_infos(node, PEER_ADMIN_TIMEOUT).await.into_iter().map(|(id, info)| (id, info.map(|i| i.max_feature_level))).collect();
    let target = upgrade::target(requested, &reports).map_err(Status::failed_precondition)?;
    let current = node.reader.feature_level();
    if target <= current {
        return Ok(current);
    }
    match node.propose(Event::FeatureLevelRaised { level: target }, TRANSFER_TIMEOUT).await {
        Ok(Committed { outcome: Outcome::LevelRaised { level }, .. }) => {
            tracing::info!(from = current, to = level, "raised the cluster's feature level");
            Ok(level)
        }
        Ok(other) => Err(Status::internal(format!("unexpected outcome {:?}", other.outcome))),
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

/// Asks the node at `addr` about itself.
pub async fn remote_info(node: &Node, addr: &str, timeout: Duration) -> Result<NodeInfoMsg, Status> {
    let ch = node.peers.channel(addr).map_err(|e| Status::invalid_argument(format!("bad address {addr}: {e}")))?;
    // The deadline covers the wait for a connection too: a channel that is
    // (re)connecting to a partitioned peer holds requests until its connect
    // timeout, before the request's own timeout starts.
    let mut client = AdminClient::new(ch);
    let call = client.info(node.peers.request(Empty {}, timeout));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(Status::unavailable(format!("cannot reach the node at {addr}: {}", s.message()))),
        Err(_) => Err(Status::unavailable(format!("cannot reach the node at {addr}: no answer in {} ms", timeout.as_millis()))),
    }
}

/// Every member's own view of itself, asked in parallel; `None` if unreachable.
pub async fn member_infos(node: &Node, timeout: Duration) -> BTreeMap<NodeId, Option<NodeInfoMsg>> {
    let lookups = node.members().into_iter().map(|(id, (info, _))| async move {
        if id == node.id {
            (id, Some(AdminService::local_info(node)))
        } else {
            (id, remote_info(node, &info.raft_addr, timeout).await.ok())
        }
    });
    futures::future::join_all(lookups).await.into_iter().collect()
}

/// One member as this node sees it, with what it says of itself (`None`: unreachable).
struct MemberRow {
    id: NodeId,
    info: NodeInfo,
    voter: bool,
    role: String,
    live: Option<NodeInfoMsg>,
    /// The leader's last log index minus this member's applied index.
    lag: u64,
}

struct MembersView {
    cluster_id: String,
    leader: Option<NodeId>,
    term: u64,
    rows: Vec<MemberRow>,
}

/// Every member, asked about itself in parallel: what `cluster status` and
/// `/v1/cluster` both show.
async fn members_view(node: &Node, timeout: Duration) -> MembersView {
    let (leader, term, own_last) = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow_watched();
        (m.current_leader, m.current_term, m.last_log_index.unwrap_or(0))
    };
    let infos = member_infos(node, timeout).await;
    let leader_last = leader.and_then(|l| infos.get(&l).cloned().flatten()).map_or(own_last, |i| i.last_log_index);
    let rows = node
        .members()
        .into_iter()
        .map(|(id, (info, voter))| {
            let live = infos.get(&id).cloned().flatten();
            let role = match &live {
                Some(i) if !i.role.is_empty() => i.role.clone(),
                // Unreachable from here: the role this node knows it has.
                _ if leader == Some(id) => "leader".into(),
                _ if voter => "follower".into(),
                _ => "learner".into(),
            };
            let lag = live.as_ref().map_or(0, |i| leader_last.saturating_sub(i.applied_index));
            MemberRow { id, info, voter, role, live, lag }
        })
        .collect();
    MembersView { cluster_id: node.peers.identity.cluster_id().unwrap_or_default(), leader, term, rows }
}

/// `/v1/cluster`: the members as clients see them.
pub async fn cluster_view(node: &Node) -> api::ClusterView {
    let view = members_view(node, Duration::from_secs(1)).await;
    let members = view
        .rows
        .into_iter()
        .map(|r| api::MemberView {
            id: r.id,
            client_url: r.info.client_url,
            role: r.role,
            connections: r.live.as_ref().map_or(0, |i| i.connections),
            applied_index: r.live.as_ref().map_or(0, |i| i.applied_index),
            reachable: r.live.is_some(),
            term: r.live.as_ref().map_or(0, |i| i.term),
            last_log_index: r.live.as_ref().map_or(0, |i| i.last_log_index),
            lag: r.lag,
        })
        .collect();
    api::ClusterView { cluster_id: view.cluster_id, leader: view.leader, term: view.term, members }
}

impl AdminService {
    /// `cluster add` of a member that now answers at another address: the same
    /// id and this cluster's id, restarted elsewhere on its data. It is removed
    /// under its old address, so the add that follows brings it back under the
    /// new one (openraft's advice over rewriting a member's address in place,
    /// which could split the cluster if the new address were another node's).
    /// Refused if anything still answers as that member at the old address: two
    /// processes with one member's vote could both vote in one term.
    async fn remove_moved_member(&self, info: &NodeInfoMsg, existing: &NodeInfo, voter: bool) -> Result<(), Status> {
        let ours = self.node.peers.identity.cluster_id().unwrap_or_default();
        if ours.is_empty() || info.cluster_id != ours {
            return Err(Status::already_exists(format!("id {} is already used by the member at {}", info.id, existing.raft_addr)));
        }
        if info.id == self.node.id {
            return Err(Status::failed_precondition("the leader itself moved: transfer leadership to another voter, then add it again"));
        }
        if let Ok(old) = self.remote_info(&existing.raft_addr).await {
            if old.id == info.id {
                return Err(Status::failed_precondition(format!(
                    "member {} still answers at {}; stop it there before it rejoins from {}",
                    info.id, existing.raft_addr, info.raft_addr
                )));
            }
        }
        let voters = self.node.members().values().filter(|(_, v)| *v).count();
        if voter && voters <= 1 {
            return Err(Status::failed_precondition(format!("member {} is the last voter; it cannot be moved", info.id)));
        }
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([info.id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([info.id]))
        };
        self.node.raft.change_membership(change, false).await.map_err(raft_status)?;
        tracing::info!(id = info.id, from = %existing.raft_addr, to = %info.raft_addr, "member moved: removed under its old address, adding it under the new one");
        Ok(())
    }

    /// Adds a learner, reports its catch-up, then promotes it unless `learner`.
    async fn run_add(
        &self,
        info: NodeInfoMsg,
        learner: bool,
        tx: &tokio::sync::mpsc::Sender<Result<AddProgress, Status>>,
    ) -> Result<(), Status> {
        let id = info.id;
        let node = NodeInfo { raft_addr: info.raft_addr.clone(), client_url: info.client_url.clone() };
        let progress = |matched, target, phase: &str, done| AddProgress { id, matched, target, done, phase: phase.into() };
        let already_voter = self.node.members().get(&id).is_some_and(|(_, v)| *v);
        if !already_voter {
            // Checked again under the gate: a raise may have landed since `add`
            // looked, and none may land until the learner is a member (then the
            // next raise sees it).
            let _gate = self.node.level_gate.lock().await;
            upgrade::admit(self.node.reader.feature_level(), id, info.max_feature_level).map_err(Status::failed_precondition)?;
            self.node.raft.add_learner(id, node, false).await.map_err(raft_status)?;
        }
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let target = self.node.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
            let matched = match self.remote_info(&info.raft_addr).await {
                Ok(i) => i.last_log_index.max(i.applied_index),
                Err(_) => 0,
            };
            let _ = tx.send(Ok(progress(matched, target, "catching up", false))).await;
            if matched + CAUGHT_UP_LAG >= target && matched > 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!("node {id} did not catch up in time")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !learner && !already_voter {
            let _ = tx.send(Ok(progress(0, 0, "promoting", false))).await;
            self.node
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
                .map_err(raft_status)?;
        }
        let target = self.node.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        let _ = tx.send(Ok(progress(target, target, if learner { "learner" } else { "voter" }, true))).await;
        Ok(())
    }
}
