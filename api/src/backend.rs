//! [`ChatBackend`]: what the API needs from the node it runs on, and the
//! errors and figures that cross that line.
//!
//! `node` implements it over Raft and RocksDB; this crate does not depend on
//! `node`. Reads go through [`ChatRead`], so the routes also run on an
//! in-memory backend (`MemTables`) in tests: api depends on raft-store for the
//! chat types, the events it proposes and the read queries, not for RocksDB.

use std::future::Future;

use raft_store::chat::{Event, Outcome};
use raft_store::state_machine::Delivery;
use raft_store::ChatRead;
use tokio::sync::broadcast;

use crate::error::{ApiError, Code};
use crate::presence::PeerSignal;

/// Why the backend could not do what was asked.
#[derive(Debug, Clone)]
pub enum BackendError {
    /// No leader or quorum in time; a write may or may not have been committed.
    Unavailable(String),
    /// The node cannot serve.
    Fatal(String),
    /// The request needs a feature the cluster's level does not enable yet.
    NotEnabled(String),
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(m) => ApiError::new(Code::Unavailable, m),
            BackendError::Fatal(m) => ApiError::new(Code::Unavailable, format!("node failure: {m}")),
            BackendError::NotEnabled(m) => ApiError::new(Code::BadRequest, m),
        }
    }
}

/// `/v1/cluster` and its members, as the wire protocol writes them.
pub use wire::http::{Cluster as ClusterView, Member as MemberView};

/// Raft figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RaftGauges {
    pub term: u64,
    pub leader: u64,
    pub committed: u64,
    pub applied: u64,
}

/// What the HTTP and WebSocket handlers need from the node they run on.
pub trait ChatBackend: Send + Sync + 'static {
    fn node_id(&self) -> u64;
    /// In a cluster with a known leader, and caught up with what it knows is committed.
    fn ready(&self) -> bool;
    /// How this node reads its applied state: RocksDB on a node, `MemTables`
    /// in tests.
    type Reader: ChatRead;
    /// Local reads of the applied state.
    fn reader(&self) -> &Self::Reader;
    /// Commits `event` through the leader and waits until it is applied here.
    fn propose(&self, event: Event) -> impl Future<Output = Result<Outcome, BackendError>> + Send;
    /// Returns once this node's state reflects every write acknowledged anywhere
    /// before the call.
    fn read_barrier(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Messages as this node applies them.
    fn deliveries(&self) -> broadcast::Receiver<Delivery>;
    /// Best-effort: sends an ephemeral signal to every other member.
    fn send_signal(&self, signal: PeerSignal);
    fn cluster(&self) -> impl Future<Output = ClusterView> + Send;
    fn raft_gauges(&self) -> RaftGauges;
}
