//! A running node: the Raft instance with its stores, and the operations the chat
//! API and the admin plane build on — propose a command through the leader, read
//! linearizably, wait for the local state machine to catch up.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ReadPolicy;
use raft_store::chat::{Command, Event, Outcome};
use raft_store::state_machine::{ChatReader, Delivery};
use raft_store::types::{NodeId, Raft};
use raft_store::NodeInfo;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use raft_store::stages::{Stage, WriteStages};
use raft_store::types::Batch;

use crate::config::Config;
use crate::gather::{self, Gatherer};
use crate::network::Peers;

/// How long a write or read waits for a leader (and for the local apply) before
/// answering `unavailable`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a write or a linearizable read did not happen.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No leader, no quorum, or no answer within the timeout. For a write the
    /// command may or may not have been committed: retry with the same id.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This node cannot serve at all (storage failed, shutting down).
    #[error("node failure: {0}")]
    Fatal(String),
    /// The event needs a feature level the cluster has not been raised to.
    #[error("not enabled: {0}")]
    NotEnabled(String),
}

/// The committed result of a proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub outcome: Outcome,
    pub index: u64,
}

pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: ChatReader,
    pub peers: Peers,
    /// What this node advertises about itself.
    pub info: NodeInfo,
    pub config: Config,
    pub(crate) applied: watch::Receiver<u64>,
    /// Weak, so that only the state machine keeps the channel open: when Raft
    /// shuts down and drops it, the fan-out sees the channel close, closes this
    /// node's WebSocket connections with 1001 and ends.
    pub(crate) deliveries: broadcast::WeakSender<Delivery>,
    pub(crate) proposer: mpsc::Sender<Pending>,
    pub(crate) forwarder: mpsc::Sender<Pending>,
    /// The ephemeral presence and typing plane.
    pub presence: Arc<api::presence::Presence>,
    /// Open WebSocket connections on this node.
    pub connections: Arc<std::sync::atomic::AtomicU64>,
    /// Held on the leader by a feature-level raise and by a `cluster add` from
    /// its level check to the learner's addition, so a node that reads less
    /// cannot join between an upgrade's look at the members and its raise.
    pub(crate) level_gate: tokio::sync::Mutex<()>,
    /// Where this node times the stages of its writes ([`raft_store::stages`]).
    pub(crate) stages: Arc<WriteStages>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// The leader's id and its node info, as this node currently knows them.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        // Borrowed, not cloned: this runs on every forwarded write.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The log index this node's latest snapshot covers (0: none yet).
    pub fn snapshot_index(&self) -> u64 {
        self.raft.metrics().borrow_watched().snapshot.map_or(0, |s| s.index)
    }

    /// Waits until this node's latest snapshot covers `index`; its index, or
    /// `None` if that takes longer than `timeout`.
    pub async fn snapshot_covering(&self, index: u64, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snap = self.snapshot_index();
            if snap >= index {
                return Some(snap);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Subscribes to the state machine's deliveries on this node; once the
    /// node has shut down, the receiver is already closed.
    pub fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        match self.deliveries.upgrade() {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// The members of the cluster as this node knows them: id → (info, voter).
    pub fn members(&self) -> BTreeMap<NodeId, (NodeInfo, bool)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership.nodes().map(|(id, info)| (*id, (info.clone(), voters.contains(id)))).collect()
    }

    /// Waits until the local state machine has applied `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), NodeError> {
        let mut rx = self.applied.clone();
        let wait = async { rx.wait_for(|applied| *applied >= index).await.map(|_| ()) };
        let result = tokio::time::timeout_at(deadline.into(), wait).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Fatal("state machine stopped".into())),
            Err(_) => Err(NodeError::Unavailable(format!("index {index} not applied here in time"))),
        }
    }

    /// Commits `event` through the leader (stamping the leader's clock there),
    /// then waits until this node has applied it, so the caller can read its own
    /// write here.
    pub async fn propose(&self, event: Event, timeout: Duration) -> Result<Committed, NodeError> {
        // An event type newer than the cluster's level would reach members that
        // cannot decode it. The event raising the level is gated by the upgrade
        // itself (every member must read the new level first).
        let level = self.reader.feature_level();
        if let Event::FeatureLevelRaised { level: to } = &event {
            if *to > raft_store::format::CURRENT {
                return Err(NodeError::NotEnabled(raft_store::format::unsupported("the requested level", *to)));
            }
        } else if event.level() > level {
            return Err(NodeError::NotEnabled(format!(
                "{} needs feature level {}, the cluster is at {level}: run chorusctl cluster upgrade",
                Command { ts_ms: 0, event: event.clone() },
                event.level()
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Forwarded writes time the leader's answer and this node's
            // catching up with it apart (`Stage::Forward`, `Stage::CatchUp`).
            let mut forwarded = false;
            let attempt = if self.is_leader() {
                self.propose_local(event.clone()).await
            } else if !event.from_client() {
                // The formation and the feature level are the leader's own to
                // propose (a peer's `Propose` refuses them); if this node lost
                // the lead meanwhile, the caller learns it, and does not spoil a
                // forwarded batch of other clients' writes.
                Err(Retry::NotSent("this node is no longer the leader".into()))
            } else {
                match self.leader() {
                    Some((_, leader)) if leader.raft_addr != self.info.raft_addr => {
                        let sent = Instant::now();
                        let answer = self.forward(event.clone(), deadline).await;
                        if answer.is_ok() {
                            forwarded = true;
                            self.stages.observe(Stage::Forward, sent.elapsed());
                        }
                        answer
                    }
                    _ => Err(Retry::NotSent("no leader known".into())),
                }
            };
            match attempt {
                Ok(committed) => {
                    let answered = Instant::now();
                    self.wait_applied(committed.index, deadline).await?;
                    if forwarded {
                        self.stages.observe(Stage::CatchUp, answered.elapsed());
                    }
                    return Ok(committed);
                }
                // Not appended anywhere: safe to try again until the deadline.
                Err(Retry::NotSent(why)) => {
                    if Instant::now() + Duration::from_millis(50) >= deadline {
                        return Err(NodeError::Unavailable(why));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Retry::Unknown(why)) => return Err(NodeError::Unavailable(why)),
                Err(Retry::Fatal(why)) => return Err(NodeError::Fatal(why)),
            }
        }
    }

    /// Sends `event` to the leader through the [`Forwarder`], which packs the
    /// writes of this node's clients into shared RPCs.
    async fn forward(&self, event: Event, deadline: Instant) -> Result<Committed, Retry> {
        let (tx, rx) = oneshot::channel();
        if self.forwarder.send(Pending { event, at: Instant::now(), reply: tx }).await.is_err() {
            return Err(Retry::Fatal("the forwarder stopped".into()));
        }
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Retry::Unknown("the forwarded proposal was dropped".into())),
            Err(_) => Err(Retry::Unknown("no answer from the leader in time".into())),
        }
    }

    /// Proposes on this node as leader, through the [`Proposer`] that packs
    /// concurrent commands into shared log entries.
    pub(crate) async fn propose_local(&self, event: Event) -> Result<Committed, Retry> {
        let (tx, rx) = oneshot::channel();
        if self.proposer.send(Pending { event, at: Instant::now(), reply: tx }).await.is_err() {
            return Err(Retry::Fatal("the proposer stopped".into()));
        }
        rx.await.unwrap_or_else(|_| Err(Retry::Unknown("the proposal was dropped".into())))
    }

    /// A linearizable read point: once this node has applied the returned index,
    /// its state reflects every write acknowledged before the call began.
    pub async fn read_index(&self, timeout: Duration) -> Result<u64, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = if self.is_leader() {
                self.read_index_local().await
            } else {
                match self.leader() {
                    Some((_, leader)) if leader.raft_addr != self.info.raft_addr => {
                        crate::rpc::forward_read_index(&self.peers, &leader.raft_addr, deadline).await
                    }
                    _ => Err(Retry::NotSent("no leader known".into())),
                }
            };
            match attempt {
                Ok(index) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(index);
                }
                Err(Retry::Fatal(why)) => return Err(NodeError::Fatal(why)),
                Err(Retry::NotSent(why) | Retry::Unknown(why)) => {
                    // A read changes nothing, so any failure may be retried.
                    if Instant::now() + Duration::from_millis(50) >= deadline {
                        return Err(NodeError::Unavailable(why));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub(crate) async fn read_index_local(&self) -> Result<u64, Retry> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => Ok(read.index()),
            Err(RaftError::APIError(e)) => Err(Retry::NotSent(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Retry::Fatal(e.to_string())),
        }
    }

    /// Sends an ephemeral signal to every other member, best-effort: a peer that
    /// is down misses it, and presence heartbeats repair what was missed.
    pub fn broadcast_signal(&self, signal: &api::presence::PeerSignal) {
        let Ok(data) = raft_store::codec::encode(signal) else { return };
        for (id, (info, _)) in self.members() {
            if id == self.id {
                continue;
            }
            let Ok(mut client) = self.peers.raft_client(&info.raft_addr) else { continue };
            let req = self.peers.request(proto::v1::Bytes { data: data.clone() }, Duration::from_secs(1));
            tokio::spawn(async move {
                let _ = client.signal(req).await;
            });
        }
    }

    /// `/readyz`: in a cluster, with a known leader, and caught up with what this
    /// node knows to be committed.
    pub fn ready(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        let committed = m.local_committed.map_or(0, |c| c.index);
        m.current_leader.is_some() && self.applied_index() >= committed && m.running_state.is_ok()
    }
}

/// The result of one attempt to reach the leader.
#[derive(Debug, Clone)]
pub(crate) enum Retry {
    /// Nothing was appended; try again.
    NotSent(String),
    /// It may have been committed; only the client can retry (with its id).
    Unknown(String),
    Fatal(String),
}

pub type SharedNode = Arc<Node>;

/// A command waiting to be proposed, and where its result goes.
pub(crate) struct Pending {
    event: Event,
    /// When the proposal was handed over, for [`Stage::Propose`](raft_store::stages::Stage::Propose).
    at: Instant,
    reply: oneshot::Sender<Result<Committed, Retry>>,
}

/// Gathers the commands that arrive while the batch before them is in flight
/// and proposes each gathered group as one log entry, stamped with one leader
/// time. One writer alone gets a batch of one, with no added wait.
pub(crate) struct Proposer;

impl Proposer {
    /// `reader` gives the cluster's feature level, which every batch is written at.
    /// `stages` times each batch from its first proposal's hand-over.
    pub(crate) fn start(raft: Raft, reader: ChatReader, stages: Arc<WriteStages>) -> mpsc::Sender<Pending> {
        let (tx, gatherer) = gather::channel();
        tokio::spawn(Self::run(raft, reader, stages, gatherer));
        tx
    }

    async fn run(raft: Raft, reader: ChatReader, stages: Arc<WriteStages>, mut gatherer: Gatherer<Pending>) {
        // One batch in flight: each is awaited here before the next is taken.
        // A second entry proposed while the first replicates would wait anyway
        // (one AppendEntries in flight per follower); held back, its commands
        // join the next entry (`chorus-bench breakdown --writers 16`,
        // 2026-12-08: 0.16 against 0.27 entries per ack, 349-352 against
        // 367-376 µs of CPU per ack; docs/PERFORMANCE.md).
        while let Some((slot, batch)) = gatherer.next_batch().await {
            Self::propose_batch(&raft, reader.feature_level(), &stages, batch).await;
            drop(slot);
        }
    }

    async fn propose_batch(raft: &Raft, level: u32, stages: &WriteStages, batch: Vec<Pending>) {
        let ts_ms = now_ms();
        let first = batch.first().map_or_else(Instant::now, |p| p.at);
        let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (Command { ts_ms, event: p.event }, p.reply)).unzip();
        let n = commands.len();
        let written = raft.client_write(Batch::new(level, commands)).await;
        if let Ok(resp) = &written {
            stages.answered(resp.log_id.index, first);
        }
        match written {
            Ok(resp) if resp.data.outcomes.len() == n => {
                for (reply, outcome) in replies.into_iter().zip(resp.data.outcomes) {
                    let _ = reply.send(Ok(Committed { outcome, index: resp.log_id.index }));
                }
            }
            Ok(resp) => {
                let why = format!("{} outcomes for {n} commands", resp.data.outcomes.len());
                for reply in replies {
                    let _ = reply.send(Err(Retry::Fatal(why.clone())));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(Retry::from_write_error(&e)));
                }
            }
        }
    }
}

impl Retry {
    fn from_write_error(e: &RaftError<raft_store::TypeConfig, ClientWriteError<raft_store::TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Retry::NotSent("leader changed".into()),
            RaftError::APIError(e) => Retry::Unknown(e.to_string()),
            RaftError::Fatal(e) => Retry::Fatal(e.to_string()),
        }
    }
}

/// On a follower: gathers the commands its clients send while earlier batches
/// are in flight and forwards each group to the leader in one `Propose` RPC.
pub(crate) struct Forwarder;

impl Forwarder {
    pub(crate) fn start(raft: Raft, peers: Peers, self_addr: String) -> mpsc::Sender<Pending> {
        let (tx, gatherer) = gather::channel();
        tokio::spawn(Self::run(raft, peers, self_addr, gatherer));
        tx
    }

    async fn run(raft: Raft, peers: Peers, self_addr: String, mut gatherer: Gatherer<Pending>) {
        while let Some((slot, batch)) = gatherer.next_batch().await {
            let leader = {
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).map(|n| n.raft_addr.clone()))
            };
            let peers = peers.clone();
            let self_addr = self_addr.clone();
            tokio::spawn(async move {
                let (events, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.event, p.reply)).unzip();
                let results = match leader {
                    Some(addr) if addr != self_addr => crate::rpc::forward_proposals(&peers, &addr, &events, DEFAULT_TIMEOUT).await,
                    _ => events.iter().map(|_| Err(Retry::NotSent("no leader known".into()))).collect(),
                };
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                drop(slot);
            });
        }
    }
}
