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

/// A stored room entry as a node reports it: a message, or a change to one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Msg {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub ts: u64,
    /// A message's text as served, or an edit entry's.
    #[serde(default)]
    pub text: String,
    /// What this entry changes, if it is a change.
    #[serde(default)]
    pub change: Option<Change>,
    /// A message's state as served: edited, deleted, reactions (emoji → users).
    #[serde(default)]
    pub edited: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub reactions: BTreeMap<String, Vec<String>>,
    /// The room's head when the page holding this entry was read (0: not
    /// known): a message is served with every change up to that seq folded
    /// in, and none after. A paged read's pages are read one after another,
    /// so a later page may hold changes made after an earlier page was read.
    #[serde(default)]
    pub as_of: u64,
}

/// A change to the message at `target` (an edit, a delete or a reaction), or
/// to the room itself: its owner's `set_topic` room action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Edit { target: u64, text: String },
    Delete { target: u64 },
    React { target: u64, emoji: String, added: bool },
    Topic { text: String },
}

impl Change {
    /// Its name, as history.json spells it.
    pub fn op(&self) -> &'static str {
        match self {
            Change::Edit { .. } => "edit",
            Change::Delete { .. } => "delete",
            Change::React { .. } => "react",
            Change::Topic { .. } => "topic",
        }
    }

    /// The message it changes; `None` for a change to the room.
    pub fn target(&self) -> Option<u64> {
        match self {
            Change::Edit { target, .. } | Change::Delete { target } | Change::React { target, .. } => Some(*target),
            Change::Topic { .. } => None,
        }
    }
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
    /// What the op changed, if it was an edit, delete or reaction rather than
    /// a message: those are entries with their own seq, checked like sends.
    #[serde(default)]
    pub change: Option<Change>,
}

/// One `read` frame: `user` has read the room up to `asked`. Acked with the
/// user's marker after it applied (`marked`), which never moves back.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MarkOp {
    pub client: usize,
    pub node: u64,
    pub user: String,
    pub asked: u64,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
    pub marked: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReadOp {
    pub node: u64,
    pub room: String,
    pub linearizable: bool,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
    /// `(user, id)` of every entry the read returned.
    pub seen: Vec<(String, String)>,
    /// The change entries the read returned and the messages they target, as
    /// served (see [`crate::checker`]'s lifecycle checks).
    #[serde(default)]
    pub changed: Vec<Msg>,
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
    /// Read markers set by the senders.
    #[serde(default)]
    pub marks: Vec<MarkOp>,
    /// User → node id → the user's read marker in the room as that node
    /// serves it at the end (`GET /v1/rooms`).
    #[serde(default)]
    pub final_markers: BTreeMap<String, BTreeMap<u64, u64>>,
    pub subscriptions: Vec<Subscription>,
    /// Node id → the room's full history as that node serves it at the end.
    pub finals: BTreeMap<u64, Vec<Msg>>,
    /// What the run must have done to count at all: see [`Expected`].
    #[serde(default)]
    pub expected: Expected,
    /// Node id → why its final read failed, for nodes missing from `finals`.
    #[serde(default)]
    pub final_errors: BTreeMap<u64, String>,
    /// Node id → the room's topic as that node serves it at the end
    /// (`GET /v1/rooms/{room}`), read after the final histories, and the
    /// room's last seq at that read.
    #[serde(default)]
    pub final_topics: BTreeMap<u64, (String, u64)>,
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
    /// Acknowledged edits, deletes and reactions the run must reach (among
    /// them at least one delete, when this is not 0).
    #[serde(default)]
    pub min_changes: usize,
    /// Acknowledged topic changes the run must reach: 1 when its first
    /// client created the room and so owns it, else 0.
    #[serde(default)]
    pub min_topics: usize,
    /// Acknowledged read markers the run must reach.
    #[serde(default)]
    pub min_marks: usize,
}
