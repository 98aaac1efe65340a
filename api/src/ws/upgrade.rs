//! The WebSocket upgrade (RFC 6455 §4.2) and the start of a session: the
//! request is checked and the token verified before anything is upgraded,
//! the connection is counted against `--max-connections`, and the socket is
//! taken over from hyper (with its TLS session, over TLS) and handed to the
//! fan-out's [`Outbox`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use raft_store::ChatRead;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::{close_if_revoked, Session, MAX_IN_FLIGHT};
use crate::error::{ApiError, Code};
use crate::fanout::{ConnIo, Outbox, Wire};
use crate::{auth, App, ChatBackend};

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The upgrade request (RFC 6455 §4.2): checked first, then the token (a bad
/// one gets 401 before any upgrade), then the socket is taken over from HTTP.
pub async fn upgrade<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    if !header_has(headers, header::CONNECTION, "upgrade") || !header_has(headers, header::UPGRADE, "websocket") {
        return ApiError::bad_request("this route only speaks WebSocket: Connection: upgrade, Upgrade: websocket").into_response();
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        // RFC 6455 §4.4: 426 Upgrade Required, naming the version this node speaks.
        let mut r = ApiError::bad_request("Sec-WebSocket-Version must be 13").into_response();
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return ApiError::bad_request("Sec-WebSocket-Key is missing").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    let claims = match app.authenticate(&token) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        let mut r = ApiError::bad_request("this connection cannot be upgraded (HTTP/1.1 is needed)").into_response();
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        return r;
    };
    // The connection counts from here, so a burst of upgrades cannot pass the
    // cap between checking it and opening the sessions.
    let open = app.connections.fetch_add(1, Ordering::Relaxed);
    let max = app.limits.max_connections;
    if max > 0 && open >= max as u64 {
        app.connections.fetch_sub(1, Ordering::Relaxed);
        let e = ApiError::new(Code::Overloaded, format!("this node serves its limit of {max} connections; GET /v1/cluster/pick names another"));
        return e.into_response();
    }
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                app.connections.fetch_sub(1, Ordering::Relaxed);
                return tracing::debug!(error = %e, "WebSocket upgrade failed");
            }
        };
        // The client listener serves TCP, or TLS over TCP (see `serve`);
        // anything else has no socket to hand to the fan-out.
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return session(app, claims, Wire::from(parts.io.into_inner()), parts.read_buf).await,
            Err(other) => other,
        };
        match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
            Ok(parts) => {
                let (sock, conn) = parts.io.into_inner().into_inner();
                session(app, claims, Wire::tls(sock, conn), parts.read_buf).await
            }
            Err(_) => {
                app.connections.fetch_sub(1, Ordering::Relaxed);
                tracing::error!("an upgraded connection is not a TCP or TLS stream; is the API served by api::serve?")
            }
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    match HeaderValue::from_str(&accept) {
        Ok(v) => {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        // Base64 is always a valid header value.
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
    r
}

/// The WebSocket over `out`'s socket, with the bytes the client sent along
/// with its upgrade request.
async fn websocket<B: ChatBackend>(app: &App<B>, out: &Arc<Outbox>, read_buf: Bytes) -> WebSocketStream<ConnIo> {
    // A small read buffer: it is per connection, and the default (128 KiB)
    // would dominate the memory of ten thousand mostly idle connections.
    // Client frames are small; a large one just takes more reads. Writes are
    // not buffered by tungstenite: they are control frames, and go to `out`.
    let config = WebSocketConfig::default()
        .max_message_size(Some(app.limits.frame_bytes()))
        .max_frame_size(Some(app.limits.frame_bytes()))
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let io = ConnIo(out.clone());
    // `read_buf` shares hyper's whole read buffer (kilobytes) even when empty:
    // copy out what it holds and let the buffer go, not keep it for the session.
    let early = (!read_buf.is_empty()).then(|| read_buf.to_vec());
    drop(read_buf);
    match early {
        None => WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await,
        // The client's first bytes came in with the upgrade request.
        Some(bytes) => WebSocketStream::from_partially_read(io, bytes, Role::Server, Some(config)).await,
    }
}

async fn session<B: ChatBackend>(app: Arc<App<B>>, claims: auth::Claims, wire: Wire, read_buf: Bytes) {
    let user = claims.user.clone();
    let out = Outbox::new(wire, claims, app.limits.max_outbox_bytes);
    let ws = websocket(&app, &out, read_buf).await;
    // From here on, direct messages to this user reach this connection: the
    // fan-out sees it, and then learns from when (see `receive_dms_since`).
    app.registry.connect(&out);
    match app.backend.reader().clock() {
        Ok(clock) => out.receive_dms_since(clock),
        Err(e) => {
            // Every direct message the fan-out still holds, then.
            tracing::warn!(user = %user, error = %e, "cannot read the cluster clock");
            out.receive_dms_since(0);
        }
    }
    // A revocation applied between `authenticate` and `connect` passed this
    // connection by in the fan-out: look once more, now that it is registered.
    close_if_revoked(&app, &out);
    let (acks, acked) = mpsc::channel(MAX_IN_FLIGHT);
    // Counted by `upgrade` already; uncounted when the session ends, below.
    if let Some(sig) = app.presence.connected(&user) {
        app.backend.send_signal(sig);
    }

    let mut s = Session {
        app: app.clone(),
        user: user.clone(),
        ws,
        out,
        gone: false,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        acks,
        awaiting: 0,
    };
    s.serve(acked).await;
    // Boxed for the reason `serve` boxes its handlers.
    Box::pin(s.finish()).await;
    app.connections.fetch_sub(1, Ordering::Relaxed);
    if let Some(sig) = app.presence.disconnected(&user) {
        app.backend.send_signal(sig);
    }
}
