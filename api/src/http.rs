//! The JSON routes of SPEC §3, and the message operations the WebSocket shares.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use raft_store::chat::{self, Event, Message, Outcome};
use wire::http::{Credentials, HistoryPage, HistoryQuery, Pick, PostMessage, Posted, Registered, RoomSummary, Session};
use wire::{Consistency, Id};

use crate::error::{ApiError, ApiResult, Code};
use crate::{auth, validate, App, ChatBackend};

/// Largest page of history.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 50;

/// A stored message as the wire protocol writes it.
pub fn wire_message(m: &Message) -> wire::Message {
    wire::Message { room: m.room.clone(), seq: m.seq, id: m.client_id.clone(), from: m.from.clone(), text: m.text.clone(), ts: m.ts_ms }
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b).map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(Code::TooLarge, e.body_text()),
        _ => ApiError::bad_request(e.body_text()),
    })
}

fn bearer<B: ChatBackend>(app: &App<B>, headers: &HeaderMap) -> ApiResult<String> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing Authorization: Bearer token"))?;
    app.authenticate(token.trim())
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

pub async fn register<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    creds: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
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

fn unexpected(o: Outcome) -> ApiError {
    match o {
        Outcome::Rejected { reason } => ApiError::bad_request(reason),
        Outcome::NotMember => ApiError::new(Code::NotMember, "not a member of this room"),
        other => ApiError::new(Code::Unavailable, format!("unexpected outcome {other:?}")),
    }
}

pub async fn login<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    creds: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<Json<Session>> {
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
    let token = auth::issue(app.signing_key()?, &name, expires_at)
        .ok_or_else(|| ApiError::new(Code::Unavailable, "cannot sign a token"))?;
    Ok(Json(Session { token, expires_at }))
}

pub async fn rooms<B: ChatBackend>(State(app): State<Arc<App<B>>>, headers: HeaderMap) -> ApiResult<Json<Vec<RoomSummary>>> {
    let user = bearer(&app, &headers)?;
    let rooms = app.backend.reader().rooms()?;
    let list = rooms
        .into_iter()
        .filter(|(name, _)| chat::dm_participants(name).is_none_or(|(a, b)| a == user || b == user))
        .map(|(name, r)| {
            // A DM room's members are its two users, with no membership stored.
            let members = if chat::dm_participants(&name).is_some() { 2 } else { r.members };
            RoomSummary { name, members, last_seq: r.last_seq }
        })
        .collect();
    Ok(Json(list))
}

/// Reads one page of history for `user`, with the asked consistency.
pub async fn read_history<B: ChatBackend>(app: &App<B>, user: &str, room: &str, q: &HistoryQuery) -> ApiResult<HistoryPage> {
    validate::room_name(room)?;
    if let Some((a, b)) = chat::dm_participants(room) {
        if user != a && user != b {
            return Err(ApiError::new(Code::NotMember, "not your direct-message room"));
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE as u64);
    if limit == 0 || limit > MAX_PAGE as u64 {
        return Err(ApiError::bad_request(format!("limit is 1-{MAX_PAGE}")));
    }
    match q.consistency.unwrap_or_default() {
        Consistency::Linearizable => app.backend.read_barrier().await?,
        Consistency::Local => {}
    }
    let page = app.backend.reader().history(room, q.after, q.before, limit as usize)?;
    let messages = page.messages.iter().map(|m| wire_message(m).into()).collect();
    Ok(HistoryPage { room: room.to_string(), head: page.head, messages })
}

pub async fn history<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<HistoryPage>> {
    let user = bearer(&app, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(read_history(&app, &user, &room, &q).await?))
}

/// The acknowledgement of a stored message.
pub struct Ack {
    /// Where the message is stored (for a duplicate, where it was first posted).
    pub room: String,
    pub seq: u64,
    pub ts_ms: u64,
    pub duplicate: bool,
}

impl Ack {
    /// The answer to a post with client id `id`, over HTTP.
    pub fn posted(self, id: Id) -> Posted {
        Posted { room: self.room, seq: self.seq, id, ts: self.ts_ms, duplicate: self.duplicate }
    }

    /// The answer to a `send` or `dm` frame with `id` and `req`.
    pub fn frame(self, id: Id, req: Option<Id>) -> wire::ServerFrame {
        wire::ServerFrame::Ack { room: self.room, id, seq: self.seq, ts: self.ts_ms, duplicate: self.duplicate, req }
    }
}

/// Posts `text` to `room` as `user` with client id `id`: validates, rate-limits,
/// commits through the leader and returns once applied on this node.
pub async fn send_message<B: ChatBackend>(app: &App<B>, user: &str, room: &str, id: &str, text: &str) -> ApiResult<Ack> {
    validate::room_name(room)?;
    validate::client_id(id)?;
    validate::text(text, app.limits.max_message_bytes)?;
    app.rate.check(user, &app.limits, Instant::now())?;
    let started = Instant::now();
    let event = Event::MessagePosted { room: room.into(), from: user.into(), client_id: id.into(), text: text.into() };
    match app.backend.propose(event).await? {
        Outcome::Posted { room, seq, ts_ms, duplicate } => {
            app.metrics.acked(started.elapsed(), duplicate);
            Ok(Ack { room, seq, ts_ms, duplicate })
        }
        other => Err(unexpected(other)),
    }
}

pub async fn post_message<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    post: Result<Json<PostMessage>, JsonRejection>,
) -> ApiResult<Json<Posted>> {
    let user = bearer(&app, &headers)?;
    let PostMessage { id, text } = body(post)?;
    let ack = send_message(&app, &user, &room, &id.text(), &text).await?;
    Ok(Json(ack.posted(id)))
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
