//! The Chorus client API: HTTP routes and the WebSocket chat protocol (SPEC §3, §4).
//!
//! # Layout
//!
//! - `backend`: [`ChatBackend`], what the API needs from a node (propose
//!   through the leader, read barrier, local reads through
//!   [`raft_store::ChatRead`], deliveries, presence transport, cluster view).
//!   `node` implements it; this crate does not depend on `node`.
//! - `app`: [`App`], the shared state of one node's API: backend, limits, rate
//!   limiter, metrics, the cluster-view cache. [`router`] serves it.
//!   `limits`: [`Limits`] and the [`RateLimiter`].
//! - [`ops`]: the operations HTTP and WebSocket share (send, history), and the
//!   stored message as the wire writes it.
//! - [`http`]: the JSON routes. [`ws`]: one WebSocket session.
//!   [`fanout`]: the thread that writes live messages to the sockets.
//!   [`serve`]: the client listener (hyper, so an upgrade keeps its socket).
//! - [`auth`]: password hashes and signed tokens. [`validate`]: input rules.
//! - [`presence`]: the ephemeral online/typing plane.
//! - [`relay`]: writes presence and typing frames to the connections that should see them.
//! - [`error`]: the SPEC's error codes. [`metrics`]: `/metrics`.

mod app;
pub mod auth;
mod backend;
pub mod error;
pub mod fanout;
pub mod http;
mod limits;
pub mod metrics;
pub mod ops;
pub mod presence;
pub mod relay;
pub mod search;
pub mod serve;
pub mod validate;
pub mod web;
pub mod ws;

pub use app::{router, App, CLUSTER_VIEW_TTL, PASSWORD_WORKERS};
pub(crate) use app::now_ms;
pub use backend::{BackendError, ChatBackend, ClusterView, MemberView, RaftGauges};
pub use limits::{Limits, RateLimiter};
