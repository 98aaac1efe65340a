//! The openraft type configuration shared by every Chorus crate.

use serde::{Deserialize, Serialize};

use crate::chat::{Command, Outcome};
use crate::snapshot::SnapshotFile;

/// What the cluster knows of a member: where to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// gRPC address for Raft and admin traffic (`host:port`).
    pub raft_addr: String,
    /// Base URL of the HTTP + WebSocket API (`http://host:port`).
    pub client_url: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.raft_addr, self.client_url)
    }
}

/// One Raft log entry's application data: the commands the leader gathered from
/// concurrent clients and proposed together. Packing them shares one entry's
/// replication, fsync and apply among many writes; each command keeps its own
/// outcome, in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Batch(pub Vec<Command>);

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => write!(f, "batch of {} commands", many.len()),
        }
    }
}

/// The response a proposer gets once its entry is applied: one outcome per
/// command of the batch (none for blank and membership entries).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    /// Chorus's openraft configuration: chat commands in, outcomes out.
    pub TypeConfig:
        D = Batch,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;
