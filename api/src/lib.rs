//! The Chorus client API: HTTP routes and the WebSocket chat protocol (SPEC §3, §4).
//!
//! # Layout
//!
//! - [`ChatBackend`]: what the API needs from a node (propose through the leader,
//!   read barrier, local reads, deliveries, presence transport, cluster view).
//!   `node` implements it; this crate does not depend on `node`.
//! - [`App`]: the shared state of one node's API: backend, limits, rate limiter,
//!   metrics. [`router`] serves it.
//! - [`http`]: the JSON routes. [`ws`]: one WebSocket session.
//!   [`fanout`]: the thread that writes live messages to the sockets.
//!   [`serve`]: the client listener (hyper, so an upgrade keeps its socket).
//! - [`auth`]: password hashes and signed tokens. [`validate`]: input rules.
//! - [`presence`]: the ephemeral online/typing plane.
//! - [`relay`]: writes presence and typing frames to the connections that should see them.
//! - [`error`]: the SPEC's error codes. [`metrics`]: `/metrics`.

pub mod auth;
pub mod error;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod presence;
pub mod relay;
pub mod serve;
pub mod validate;
pub mod web;
pub mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use prometheus_client::metrics::histogram::Histogram;
use raft_store::chat::{Event, Outcome};
use raft_store::state_machine::{ChatReader, Delivery};
use tokio::sync::broadcast;

use crate::error::{ApiError, Code};
use crate::presence::{PeerSignal, Presence};

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
    /// Local reads of the applied state.
    fn reader(&self) -> &ChatReader;
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

/// Limits from the node's flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Messages per user per node per `rate_window`; 0 disables.
    pub rate_messages: u32,
    pub rate_window: Duration,
}

impl Limits {
    /// The largest client frame or HTTP body taken in: 64 KiB, or more if
    /// that is what a `text` of `max_message_bytes` needs at worst in JSON
    /// (six bytes for each escaped byte), so that an oversized text is read
    /// and refused with `too_large` rather than cut off as a frame.
    pub fn frame_bytes(&self) -> usize {
        (self.max_message_bytes.saturating_mul(6).saturating_add(4096)).max(64 * 1024)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_bytes: 4096, rate_messages: 20, rate_window: Duration::from_secs(10) }
    }
}

/// Fixed-window message counts per user on this node.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn check(&self, user: &str, limits: &Limits, now: Instant) -> Result<(), ApiError> {
        if limits.rate_messages == 0 {
            return Ok(());
        }
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < limits.rate_window);
        }
        let entry = w.entry(user.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= limits.rate_window {
            *entry = (now, 0);
        }
        if entry.1 >= limits.rate_messages {
            return Err(ApiError::new(
                Code::RateLimited,
                format!("at most {} messages per {} s", limits.rate_messages, limits.rate_window.as_secs()),
            ));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// The API state of one node.
pub struct App<B: ChatBackend> {
    pub backend: Arc<B>,
    pub limits: Limits,
    pub presence: Arc<Presence>,
    pub rate: RateLimiter,
    pub metrics: metrics::ApiMetrics,
    /// Open WebSocket connections on this node.
    pub connections: Arc<AtomicU64>,
    /// This node's connections by room and user, for the fan-out.
    pub registry: Arc<fanout::Registry>,
    /// argon2 for register and login, a few at a time.
    pub passwords: auth::PasswordWork,
    signing_key: OnceLock<Vec<u8>>,
    /// The members as last probed, shared by `/v1/cluster` and `/v1/cluster/pick`.
    cluster_view: tokio::sync::Mutex<Option<CachedView>>,
}

/// argon2 runs at once per node (each holds about 19 MiB while it runs).
pub const PASSWORD_WORKERS: usize = 4;

/// How long a probe of the members answers `/v1/cluster` and `/v1/cluster/pick`.
/// Each probe asks every member over gRPC; a burst of clients picking a node
/// would otherwise send one probe per client to every member.
pub const CLUSTER_VIEW_TTL: std::time::Duration = std::time::Duration::from_millis(250);

struct CachedView {
    at: std::time::Instant,
    view: ClusterView,
    /// Clients sent to each member by `pick` since the probe: they count as its
    /// connections, so a burst is spread instead of all sent to the member that
    /// had the fewest when probed.
    picked: HashMap<u64, u64>,
}

impl<B: ChatBackend> App<B> {
    /// Starts the node's fan-out thread, which ends with the backend's deliveries.
    /// `wal_syncs`: the log store's fsync histogram
    /// ([`metrics::wal_sync_histogram`]), exported with the API's own figures.
    pub fn new(backend: Arc<B>, limits: Limits, presence: Arc<Presence>, connections: Arc<AtomicU64>, wal_syncs: Histogram) -> std::io::Result<Self> {
        let metrics = metrics::ApiMetrics::new(wal_syncs);
        let registry = Arc::new(fanout::Registry::default());
        let figures = fanout::FanoutMetrics {
            deliveries: metrics.deliveries.clone(),
            lag: metrics.delivery_lag.clone(),
            late: metrics.late_messages.clone(),
            rounds: metrics.fanout_rounds.clone(),
        };
        fanout::start(backend.node_id(), backend.deliveries(), registry.clone(), figures)?;
        Ok(App {
            backend,
            limits,
            presence,
            rate: RateLimiter::default(),
            metrics,
            connections,
            registry,
            passwords: auth::PasswordWork::new(PASSWORD_WORKERS),
            signing_key: OnceLock::new(),
            cluster_view: tokio::sync::Mutex::new(None),
        })
    }

    /// The members, probed at most once per [`CLUSTER_VIEW_TTL`]; callers that
    /// arrive during a probe wait for it rather than starting their own.
    pub async fn cluster_view(&self) -> ClusterView {
        self.cached_view(|_| {}).await
    }

    /// The reachable member with the fewest connections (counting the clients
    /// already sent to it since the last probe), and counts this one.
    pub async fn pick_member(&self) -> Option<MemberView> {
        let mut chosen = None;
        self.cached_view(|c| {
            let best = c
                .view
                .members
                .iter()
                .filter(|m| m.reachable)
                .min_by_key(|m| (m.connections + c.picked.get(&m.id).copied().unwrap_or(0), m.id))
                .cloned();
            if let Some(m) = &best {
                *c.picked.entry(m.id).or_default() += 1;
            }
            chosen = best;
        })
        .await;
        chosen
    }

    async fn cached_view(&self, mut with: impl FnMut(&mut CachedView)) -> ClusterView {
        let mut cache = self.cluster_view.lock().await;
        let c = match cache.take().filter(|c| c.at.elapsed() < CLUSTER_VIEW_TTL) {
            Some(c) => cache.insert(c),
            None => {
                let view = self.backend.cluster().await;
                cache.insert(CachedView { at: std::time::Instant::now(), view, picked: HashMap::new() })
            }
        };
        with(c);
        c.view.clone()
    }

    /// The cluster's token key, replicated at formation.
    pub fn signing_key(&self) -> Result<&[u8], ApiError> {
        if let Some(k) = self.signing_key.get() {
            return Ok(k);
        }
        match self.backend.reader().cluster() {
            Ok(Some(c)) => Ok(self.signing_key.get_or_init(|| c.signing_key)),
            Ok(None) => Err(ApiError::new(Code::Unavailable, "the cluster is not formed yet")),
            Err(e) => Err(e.into()),
        }
    }

    /// The user a bearer token names.
    pub fn authenticate(&self, token: &str) -> Result<String, ApiError> {
        let key = self.signing_key()?;
        auth::verify(key, token, now_ms()).ok_or_else(|| ApiError::new(Code::Unauthorized, "missing, bad or expired token"))
    }

    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The router for the client address.
pub fn router<B: ChatBackend>(app: Arc<App<B>>) -> Router {
    Router::new()
        .route("/", get(web::chat_page))
        .route("/cluster", get(web::cluster_page))
        .route("/assets/{file}", get(web::asset))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(http::readyz::<B>))
        .route("/metrics", get(metrics::serve::<B>))
        .route("/v1/users", post(http::register::<B>))
        .route("/v1/sessions", post(http::login::<B>))
        .route("/v1/rooms", get(http::rooms::<B>))
        .route("/v1/rooms/{room}/messages", get(http::history::<B>).post(http::post_message::<B>))
        .route("/v1/cluster", get(http::cluster::<B>))
        .route("/v1/cluster/pick", get(http::pick::<B>))
        .route("/v1/ws", get(ws::upgrade::<B>))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(app.limits.frame_bytes()))
        .with_state(app)
}
