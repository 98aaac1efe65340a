//! The Chorus client API: HTTP routes and (later) the WebSocket chat protocol.
//!
//! # Layout
//!
//! - [`ChatBackend`]: what the API needs from a node. `node` implements it; tests
//!   can implement it with anything.
//! - [`router`]: the axum router for the client address.
//!
//! This crate does not depend on `node`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// What the HTTP and WebSocket handlers need from the node they run on.
pub trait ChatBackend: Send + Sync + 'static {
    /// In a cluster with a known leader, and caught up with what it knows is
    /// committed.
    fn ready(&self) -> bool;
}

/// The router for the client address.
pub fn router(backend: Arc<dyn ChatBackend>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(backend)
}

async fn readyz(State(backend): State<Arc<dyn ChatBackend>>) -> (StatusCode, &'static str) {
    if backend.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
