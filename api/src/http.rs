//! The JSON routes of SPEC §3, over the operations in [`crate::ops`].

use std::net::SocketAddr;
use std::sync::Arc;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use raft_store::chat::{self, Event, Outcome};
use raft_store::ChatRead;
use wire::http::{
    Credentials, HistoryPage, HistoryQuery, PasswordChange, Pick, PostMessage, Posted, Registered, Revoked, RoomSummary, RoomsQuery, Session,
    ThreadPage, ThreadQuery,
};

use crate::error::{ApiError, ApiResult, Code};
use crate::ops::{add_entry, read_history, read_thread, unexpected, unread_counts, Entry};
use crate::{auth, validate, App, ChatBackend};

fn body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b).map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(Code::TooLarge, e.body_text()),
        _ => ApiError::bad_request(e.body_text()),
    })
}

pub(crate) fn bearer<B: ChatBackend>(app: &App<B>, headers: &HeaderMap) -> ApiResult<String> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing Authorization: Bearer token"))?;
    app.authenticate(token.trim()).map(|claims| claims.user)
}

pub async fn readyz<B: ChatBackend>(State(app): State<Arc<App<B>>>) -> (StatusCode, &'static str) {
    if app.backend.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such route")
}

/// A route that exists, asked with a method it does not serve.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(Code::MethodNotAllowed, format!("{} does not take {method}", uri.path()))
}

/// The client's address, as the listener saw it ([`crate::serve`] puts it in
/// every request).
type Peer = axum::Extension<ConnectInfo<SocketAddr>>;

pub async fn register<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    axum::Extension(ConnectInfo(peer)): Peer,
    creds: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    app.account_attempt(peer.ip())?;
    let Credentials { name, password } = body(creds)?;
    validate::user_name(&name)?;
    validate::password(&password)?;
    if app.backend.reader().user(&name)?.is_some() {
        return Err(ApiError::new(Code::NameTaken, format!("{name} is taken")));
    }
    // argon2 is deliberately slow: off the async workers, a few at a time.
    let password_hash = app.passwords.hash(password).await.map_err(|e| ApiError::new(Code::Unavailable, e))?;
    match app.backend.propose(Event::UserRegistered { name: name.clone(), password_hash }).await? {
        Outcome::Registered => Ok((StatusCode::CREATED, Json(Registered { name }))),
        Outcome::NameTaken => Err(ApiError::new(Code::NameTaken, format!("{name} is taken"))),
        other => Err(unexpected(other)),
    }
}

pub async fn login<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    axum::Extension(ConnectInfo(peer)): Peer,
    creds: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<Json<Session>> {
    app.account_attempt(peer.ip())?;
    let Credentials { name, password } = body(creds)?;
    let denied = || ApiError::new(Code::Unauthorized, "wrong name or password");
    if validate::user_name(&name).is_err() {
        return Err(denied());
    }
    // A user registered on another node a moment ago must be able to log in here.
    app.backend.read_barrier().await?;
    let user = app.backend.reader().user(&name)?;
    // An unknown name costs the same argon2 check as a wrong password.
    let ok = app.passwords.check(password, user.map(|u| u.password_hash)).await;
    if !ok {
        return Err(denied());
    }
    let expires_at = crate::now_ms() + auth::TOKEN_LIFETIME_MS;
    let token = app.issue_token(&name, expires_at)?;
    Ok(Json(Session { token, expires_at }))
}

/// Changes the caller's password, given the current one, and with it revokes
/// every token of the caller (this one too).
pub async fn change_password<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    axum::Extension(ConnectInfo(peer)): Peer,
    headers: HeaderMap,
    change: Result<Json<PasswordChange>, JsonRejection>,
) -> ApiResult<Json<Revoked>> {
    let name = bearer(&app, &headers)?;
    app.account_attempt(peer.ip())?;
    let PasswordChange { password, new_password } = body(change)?;
    validate::password(&new_password)?;
    let user = app.backend.reader().user(&name)?;
    if !app.passwords.check(password, user.map(|u| u.password_hash)).await {
        return Err(ApiError::new(Code::Unauthorized, "wrong password"));
    }
    let password_hash = app.passwords.hash(new_password).await.map_err(|e| ApiError::new(Code::Unavailable, e))?;
    match app.backend.propose(Event::PasswordChanged { user: name.clone(), password_hash }).await? {
        Outcome::Revoked { .. } => Ok(Json(Revoked { name })),
        other => Err(unexpected(other)),
    }
}

/// Revokes every token of the caller (this one too), on every node once it
/// has applied the revocation.
pub async fn revoke<B: ChatBackend>(State(app): State<Arc<App<B>>>, headers: HeaderMap) -> ApiResult<Json<Revoked>> {
    let name = bearer(&app, &headers)?;
    match app.backend.propose(Event::SessionsRevoked { user: name.clone() }).await? {
        Outcome::Revoked { .. } => Ok(Json(Revoked { name })),
        other => Err(unexpected(other)),
    }
}

/// The most rooms one `GET /v1/rooms` answers with.
pub const ROOMS_PAGE: u64 = 1000;

/// A page of rooms by name (plain rooms and the caller's own DM rooms); a
/// `Link: rel="next"` header names the next page while there may be one.
pub async fn rooms<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let user = bearer(&app, &headers)?;
    app.request_attempt(&user)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(after) = &q.after {
        validate::room_name(after)?;
    }
    let limit = q.limit.unwrap_or(ROOMS_PAGE);
    if !(1..=ROOMS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1-{ROOMS_PAGE}")));
    }
    // Other users' DM rooms are scanned and left out, so a page may hold
    // fewer rooms than `limit` and still have a next one.
    let rooms = app.backend.reader().rooms_page(q.after.as_deref(), limit as usize)?;
    let next = (rooms.len() as u64 == limit).then(|| rooms.last().map(|(name, _)| name.clone())).flatten();
    let reader = app.backend.reader();
    let list = rooms
        .into_iter()
        .filter(|(name, _)| chat::dm_participants(name).is_none_or(|(a, b)| a == user || b == user))
        .map(|(name, r)| {
            // A DM room's members are its two users, with no membership stored.
            let members = if chat::dm_participants(&name).is_some() { 2 } else { r.members };
            let unread = unread_counts(reader, &name, &user)?;
            Ok(RoomSummary { name, members, last_seq: r.last_seq, unread })
        })
        .collect::<ApiResult<Vec<RoomSummary>>>()?;
    let mut headers = HeaderMap::new();
    if let Some(last) = next {
        // Room names are of A-Z a-z 0-9 _ . - and `:`: nothing to escape in a query.
        let link = format!("</v1/rooms?after={last}&limit={limit}>; rel=\"next\"");
        if let Ok(v) = axum::http::HeaderValue::from_str(&link) {
            headers.insert(axum::http::header::LINK, v);
        }
    }
    Ok((headers, Json(list)))
}

pub async fn history<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<HistoryPage>> {
    let user = bearer(&app, &headers)?;
    app.request_attempt(&user)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(read_history(&app, &user, &room, &q).await?))
}

/// The token is checked before the body is read: a caller without one gets
/// 401 having sent at most the headers' worth.
pub async fn post_message<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    Path(room): Path<String>,
    request: axum::extract::Request,
) -> ApiResult<Json<Posted>> {
    let user = bearer(&app, request.headers())?;
    let post = <Json<PostMessage> as axum::extract::FromRequest<()>>::from_request(request, &()).await;
    let PostMessage { id, text, reply_to } = body(post)?;
    let ack = add_entry(&app, &user, &room, &id.text(), Entry::Post { text, reply_to }).await?;
    Ok(Json(ack.posted(id)))
}

/// The thread rooted at message `seq`: that message and its replies.
pub async fn thread<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    path: Result<Path<(String, u64)>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<ThreadQuery>, QueryRejection>,
) -> ApiResult<Json<ThreadPage>> {
    let user = bearer(&app, &headers)?;
    let Path((room, seq)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    app.request_attempt(&user)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(read_thread(&app, &user, &room, seq, &q).await?))
}

/// Public, and read by web pages served from other members when they fail over.
const ANY_ORIGIN: [(axum::http::HeaderName, &str); 1] = [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];

pub async fn cluster<B: ChatBackend>(State(app): State<Arc<App<B>>>) -> impl axum::response::IntoResponse {
    let view = app.cluster_view().await;
    (ANY_ORIGIN, Json(view))
}

pub async fn pick<B: ChatBackend>(State(app): State<Arc<App<B>>>) -> ApiResult<impl axum::response::IntoResponse> {
    let best = app.pick_member().await.ok_or_else(|| ApiError::new(Code::Unavailable, "no reachable member"))?;
    Ok((ANY_ORIGIN, Json(Pick { client_url: best.client_url })))
}
