//! The client listener.
//!
//! Connections are served as HTTP/1.1 by hyper directly rather than through
//! `axum::serve`, whose connections go through hyper-util's protocol sniffing:
//! that wraps each socket in a private type, so an upgraded connection could not
//! be turned back into its `TcpStream`. The WebSocket sessions need the socket
//! itself (see [`crate::ws`]): the fan-out writes each delivery to it directly.
//!
//! With a TLS configuration (`--client-tls-cert`) every connection first
//! completes a TLS handshake, within the header timeout, and is then served
//! the same way; its upgraded WebSocket keeps the socket and the rustls
//! session (see [`crate::fanout::Wire`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// How long requests in progress get to finish once the node stops.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes, then lets requests
/// in progress finish (for at most [`DRAIN`]). Upgraded WebSocket connections
/// have left hyper by then and are not waited for. A client gets
/// `header_timeout` to finish the TLS handshake (with `tls`) and to send each
/// request's headers; hyper starts that clock when the connection opens and
/// again once an answer is written, so an idle kept-alive connection is closed
/// after it too.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let acceptor = tls.map(TlsAcceptor::from);
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
        let service = WithPeer { router: router.clone(), peer };
        let stop = stop_rx.clone();
        match &acceptor {
            None => connections.spawn(connection(stream, service, header_timeout, stop)),
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                connections.spawn(async move {
                    match tokio::time::timeout(header_timeout, handshake).await {
                        Ok(Ok(tls)) => connection(tls, service, header_timeout, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                })
            }
        };
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(left = connections.len(), "client connections still busy at shutdown; dropping them");
    }
}

/// Serves one connection (a `TcpStream`, or TLS over one) until it ends or,
/// once the node stops, until its request in progress is answered.
async fn connection<S>(stream: S, service: WithPeer, header_timeout: Duration, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return log_end(result),
        _ = stop.wait_for(|stopping| *stopping) => conn.as_mut().graceful_shutdown(),
    }
    log_end(conn.await);
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
