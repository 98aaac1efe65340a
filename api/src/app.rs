//! [`App`], the API state of one node (backend, limits, rate limiter, metrics,
//! the cluster-view cache), and [`router`], which serves it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use raft_store::sessions::SigningKeys;
use raft_store::ChatRead;

use crate::backend::{ChatBackend, ClusterView, MemberView};
use crate::error::{ApiError, Code};
use crate::limits::{Limits, RateLimiter};
use crate::presence::Presence;
use crate::{auth, fanout, http, metrics, web, ws};

/// The API state of one node.
pub struct App<B: ChatBackend> {
    pub backend: Arc<B>,
    pub limits: Limits,
    pub presence: Arc<Presence>,
    pub rate: RateLimiter,
    /// Registrations and logins per client address.
    pub account_rate: RateLimiter,
    /// Joins, leaves and reads per user (`--request-rate-limit`).
    pub request_rate: RateLimiter,
    pub metrics: metrics::ApiMetrics,
    /// Open WebSocket connections on this node.
    pub connections: Arc<AtomicU64>,
    /// This node's connections by room and user, for the fan-out.
    pub registry: Arc<fanout::Registry>,
    /// argon2 for register and login, a few at a time.
    pub passwords: auth::PasswordWork,
    /// The members as last probed, shared by `/v1/cluster` and `/v1/cluster/pick`.
    cluster_view: tokio::sync::Mutex<Option<CachedView>>,
    /// This node's search index, once [`App::start_search`] opened it.
    pub search: Option<Arc<search::SearchIndex>>,
}

/// argon2 runs at once per node (each holds about 19 MiB while it runs).
pub const PASSWORD_WORKERS: usize = 4;

/// How long a probe of the members answers `/v1/cluster` and `/v1/cluster/pick`.
/// Each probe asks every member over gRPC; a burst of clients picking a node
/// would otherwise send one probe per client to every member.
pub const CLUSTER_VIEW_TTL: Duration = Duration::from_millis(250);

struct CachedView {
    at: Instant,
    view: ClusterView,
    /// Clients sent to each member by `pick` since the probe: they count as its
    /// connections, so a burst is spread instead of all sent to the member that
    /// had the fewest when probed.
    picked: HashMap<u64, u64>,
}

impl<B: ChatBackend> App<B> {
    /// Starts the node's fan-out thread, which ends with the backend's deliveries.
    /// `writes`: the figures the log store and Raft feed
    /// ([`metrics::WriteFigures`]), exported with the API's own.
    pub fn new(backend: Arc<B>, limits: Limits, presence: Arc<Presence>, connections: Arc<AtomicU64>, writes: metrics::WriteFigures) -> std::io::Result<Self> {
        let metrics = metrics::ApiMetrics::new(writes);
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
            account_rate: RateLimiter::default(),
            request_rate: RateLimiter::default(),
            metrics,
            connections,
            registry,
            passwords: auth::PasswordWork::new(PASSWORD_WORKERS),
            cluster_view: tokio::sync::Mutex::new(None),
            search: None,
        })
    }

    /// Opens (or creates) the search index in `dir` and starts the thread that
    /// keeps it in step with the state ([`crate::search`]).
    pub fn start_search(&mut self, dir: &std::path::Path) -> Result<(), search::SearchError> {
        let index = Arc::new(search::SearchIndex::open(dir)?);
        crate::search::start(self.backend.clone(), index.clone())?;
        self.search = Some(index);
        Ok(())
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
                cache.insert(CachedView { at: Instant::now(), view, picked: HashMap::new() })
            }
        };
        with(c);
        c.view.clone()
    }

    /// The cluster's token keys, replicated (formation, then each rotation).
    pub fn signing_keys(&self) -> Result<SigningKeys, ApiError> {
        let keys = self.backend.reader().signing_keys()?;
        match keys.current() {
            Some(_) => Ok(keys),
            None => Err(ApiError::new(Code::Unavailable, "the cluster is not formed yet")),
        }
    }

    /// A token for `user`, signed with the current key at the user's session
    /// epoch as this node has applied it.
    pub fn issue_token(&self, user: &str, expires_at_ms: u64) -> Result<String, ApiError> {
        let keys = self.signing_keys()?;
        let epoch = self.backend.reader().session_epoch(user)?;
        keys.current()
            .and_then(|key| auth::issue(key, user, expires_at_ms, epoch))
            .ok_or_else(|| ApiError::new(Code::Unavailable, "cannot sign a token"))
    }

    /// The user a bearer token names: signed by a key the cluster holds, not
    /// expired, and not revoked (issued at the user's current session epoch).
    pub fn authenticate(&self, token: &str) -> Result<auth::Claims, ApiError> {
        let refused = || ApiError::new(Code::Unauthorized, "missing, bad, expired or revoked token");
        let claims = auth::verify(&self.signing_keys()?, token, now_ms()).ok_or_else(refused)?;
        if claims.epoch < self.backend.reader().session_epoch(&claims.user)? {
            return Err(refused());
        }
        Ok(claims)
    }

    /// Counts one registration or login from `peer`: refused with
    /// `rate_limited` past `--account-rate-limit` (each costs an argon2 run).
    pub fn account_attempt(&self, peer: std::net::IpAddr) -> Result<(), ApiError> {
        let l = &self.limits;
        self.account_rate.check(&peer.to_string(), l.account_rate, l.account_window, "registrations and logins from one address", Instant::now())
    }

    /// Counts one `join`, `leave`, `history` or room listing by `user`:
    /// refused with `rate_limited` past `--request-rate-limit`.
    pub fn request_attempt(&self, user: &str) -> Result<(), ApiError> {
        let l = &self.limits;
        self.request_rate.check(user, l.request_rate, l.request_window, "joins, leaves and reads", Instant::now())
    }

    /// Refuses, with `rate_limited`, a join by `user` that would create `room`
    /// once the user created `--max-rooms-per-user` rooms (as the log counts
    /// them: [`raft_store::quota`]).
    pub fn may_create(&self, user: &str, room: &str) -> Result<(), ApiError> {
        let max = self.limits.max_rooms_per_user;
        let reader = self.backend.reader();
        if max == 0 || reader.room(room)?.is_some() {
            return Ok(());
        }
        let created = reader.rooms_created(user)?;
        if created >= max {
            return Err(ApiError::new(Code::RateLimited, format!("{user} created {created} rooms, the most one user may: join an existing room")));
        }
        Ok(())
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
        .route("/v1/users/password", post(http::change_password::<B>))
        .route("/v1/users/profile", get(http::profiles::<B>).post(http::set_profile::<B>))
        .route("/v1/registration", get(http::registration::<B>))
        .route("/v1/sessions", post(http::login::<B>))
        .route("/v1/sessions/revoke", post(http::revoke::<B>))
        .route("/v1/rooms", get(http::rooms::<B>).post(http::create_room::<B>))
        .route("/v1/rooms/{room}", get(http::room::<B>))
        .route("/v1/rooms/{room}/actions", post(http::room_action::<B>))
        .route("/v1/search", get(crate::search::search::<B>))
        .route("/v1/rooms/{room}/messages", get(http::history::<B>).post(http::post_message::<B>))
        .route("/v1/rooms/{room}/messages/{seq}/thread", get(http::thread::<B>))
        .route("/v1/cluster", get(http::cluster::<B>))
        .route("/v1/cluster/pick", get(http::pick::<B>))
        .route("/v1/ws", get(ws::upgrade::<B>))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(app.limits.frame_bytes()))
        // A client that sends its body slowly (or not at all) holds its request
        // no longer than this; a WebSocket upgrade is answered at once, and the
        // session that follows is not a request any more.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, app.limits.http_timeout))
        .layer(cross_origin())
        .with_state(app)
}

/// Cross-origin calls to the API are allowed from any origin: the web page
/// served by one member goes on with another when its own goes away, and
/// programs in other pages may call any node. Every route is authorised by a
/// bearer token the caller holds, never by a cookie, so another origin gains
/// nothing it did not already have (credentials mode stays off).
fn cross_origin() -> tower_http::cors::CorsLayer {
    use axum::http::{header, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LINK])
        .max_age(std::time::Duration::from_secs(600))
}
