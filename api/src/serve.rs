//! The client listener.
//!
//! Connections are served as HTTP/1.1 by hyper directly rather than through
//! `axum::serve`, whose connections go through hyper-util's protocol sniffing:
//! that wraps each socket in a private type, so an upgraded connection could not
//! be turned back into its `TcpStream`. The WebSocket sessions need the socket
//! itself (see [`crate::ws`]): the fan-out writes each delivery to it directly.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long requests in progress get to finish once the node stops.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes, then lets requests
/// in progress finish (for at most [`DRAIN`]). Upgraded WebSocket connections
/// have left hyper by then and are not waited for. A client gets
/// `header_timeout` to send each request's headers; hyper starts that clock
/// when the connection opens and again once an answer is written, so an idle
/// kept-alive connection is closed after it too.
pub async fn serve(listener: TcpListener, router: Router, header_timeout: Duration, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "cannot accept a client connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        // A delivery is one small write; Nagle's algorithm would hold it back
        // until the client acks the one before (and the client delays its acks).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a client connection");
        }
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(WithPeer { router: router.clone(), peer }))
            .with_upgrades();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let mut conn = pin!(conn);
            tokio::select! {
                result = conn.as_mut() => return log_end(result),
                _ = stop.wait_for(|stopping| *stopping) => conn.as_mut().graceful_shutdown(),
            }
            log_end(conn.await);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(left = connections.len(), "client connections still busy at shutdown; dropping them");
    }
}

/// The router, with the client's address put in each request as
/// `ConnectInfo<SocketAddr>` (for the per-address limits). Cheaper
/// than `Router::layer` per connection, which rebuilds every route.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
}

impl<B> tower_service::Service<axum::http::Request<B>> for WithPeer
where
    Router: tower_service::Service<axum::http::Request<B>>,
{
    type Response = <Router as tower_service::Service<axum::http::Request<B>>>::Response;
    type Error = <Router as tower_service::Service<axum::http::Request<B>>>::Error;
    type Future = <Router as tower_service::Service<axum::http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<axum::http::Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.router.call(req)
    }
}

fn log_end(result: hyper::Result<()>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
