//! What a run records: every operation with its invocation and completion time
//! and its outcome, what each subscription received, and each node's final
//! history. A timeout is `Unknown`, never `Fail`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// A stored message as a node reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub ts: u64,
}

/// One `send` (possibly retried with the same id): the outcome of the whole.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SendOp {
    pub client: usize,
    pub node: u64,
    pub user: String,
    pub room: String,
    pub id: String,
    /// Milliseconds since the run started.
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
    pub seq: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReadOp {
    pub node: u64,
    pub room: String,
    pub linearizable: bool,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
    /// `(user, id)` of every message the read returned.
    pub seen: Vec<(String, String)>,
}

/// What one subscription (join with `after`, then live) received, in order.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Subscription {
    pub client: usize,
    pub node: u64,
    pub room: String,
    /// The `after` it joined with.
    pub after: u64,
    pub received: Vec<Msg>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct History {
    pub sends: Vec<SendOp>,
    pub reads: Vec<ReadOp>,
    pub subscriptions: Vec<Subscription>,
    /// Node id → the room's full history as that node serves it at the end.
    pub finals: BTreeMap<u64, Vec<Msg>>,
    /// What the run must have done to count at all: see [`Expected`].
    #[serde(default)]
    pub expected: Expected,
    /// Node id → why its final read failed, for nodes missing from `finals`.
    #[serde(default)]
    pub final_errors: BTreeMap<u64, String>,
    /// Every scheduled fault that did not take effect, or could not be undone.
    #[serde(default)]
    pub fault_failures: Vec<String>,
}

/// The floor under a run: a history that misses it is invalid however clean it
/// looks, because an empty or partial history passes every property vacuously.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Expected {
    /// Every node of the cluster: each must give a final history.
    pub nodes: Vec<u64>,
    /// Acknowledged sends the run must reach.
    pub min_acked: usize,
}
