//! The JSON routes of SPEC §3, over the operations in [`crate::ops`].

use std::net::SocketAddr;
use std::sync::Arc;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use raft_store::accounts;
use raft_store::chat::{self, Event, Outcome};
use raft_store::ChatRead;
use raft_store::rooms;
use wire::http::{
    CreateRoom, Credentials, HistoryPage, HistoryQuery, NewUser, PasswordChange, Pick, PostMessage, PostRoomAction, Posted, Profile, ProfileChange,
    ProfilesQuery, Registered, RegistrationInfo, RegistrationMode, Revoked, RoomDetails, RoomMember, RoomSummary, RoomsQuery, Session, ThreadPage,
    ThreadQuery, MAX_PROFILES, MEMBERS_LISTED,
};

use crate::error::{ApiError, ApiResult, Code};
use crate::ops::{add_entry, read_history, read_thread, store_visibility, unexpected, unread_counts, wire_role, wire_visibility, Entry};
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
    creds: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    app.account_attempt(peer.ip())?;
    let NewUser { name, password, invite } = body(creds)?;
    let code = match app.limits.registration {
        RegistrationMode::Open => None,
        RegistrationMode::Closed => return Err(ApiError::new(Code::Forbidden, "registration is closed on this node: ask an operator for an account")),
        RegistrationMode::Invite => match invite {
            Some(code) if !code.is_empty() && code.len() <= MAX_INVITE_CODE => Some(code),
            Some(_) => return Err(ApiError::bad_request(format!("an invite code is 1 to {MAX_INVITE_CODE} bytes"))),
            None => return Err(ApiError::new(Code::Forbidden, "registration on this node needs an invite code (\"invite\")")),
        },
    };
    // A code this node does not hold is refused before any hashing or
    // proposing (and before the name is looked at); applying the
    // registration checks the code again, and that check is the one that counts.
    let code_hash = code.as_deref().map(accounts::code_hash);
    if let Some(hash) = &code_hash {
        let reader = app.backend.reader();
        let now = reader.clock()?;
        if accounts::invite(reader, hash)?.is_none_or(|i| i.expired(now)) {
            return Err(ApiError::new(Code::Forbidden, "the invite code is unknown, used up or expired"));
        }
    }
    validate::user_name(&name)?;
    validate::password(&password)?;
    if app.backend.reader().user(&name)?.is_some() {
        return Err(ApiError::new(Code::NameTaken, format!("{name} is taken")));
    }
    // argon2 is deliberately slow: off the async workers, a few at a time.
    let password_hash = app.passwords.hash(password).await.map_err(|e| ApiError::new(Code::Unavailable, e))?;
    let event = match code_hash {
        None => Event::UserRegistered { name: name.clone(), password_hash },
        // The log holds the code's hash, never the code.
        Some(code_hash) => Event::InvitedUserRegistered { name: name.clone(), password_hash, code_hash },
    };
    match app.backend.propose(event).await? {
        Outcome::Registered => Ok((StatusCode::CREATED, Json(Registered { name }))),
        Outcome::NameTaken => Err(ApiError::new(Code::NameTaken, format!("{name} is taken"))),
        Outcome::Forbidden { reason } => Err(ApiError::new(Code::Forbidden, reason)),
        other => Err(unexpected(other)),
    }
}

/// The longest invite code taken, in bytes (`chorusctl` makes 30).
pub const MAX_INVITE_CODE: usize = 128;

/// `GET /v1/registration`: this node's `--registration`.
pub async fn registration<B: ChatBackend>(State(app): State<Arc<App<B>>>) -> Json<RegistrationInfo> {
    Json(RegistrationInfo { mode: app.limits.registration })
}

/// `POST /v1/users/profile` (level 6): sets or clears the caller's display name.
pub async fn set_profile<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    change: Result<Json<ProfileChange>, JsonRejection>,
) -> ApiResult<Json<Profile>> {
    let name = bearer(&app, &headers)?;
    app.request_attempt(&name)?;
    let ProfileChange { display_name } = body(change)?;
    if !accounts::valid_display_name(&display_name) || display_name.trim() != display_name {
        return Err(ApiError::bad_request(format!(
            "a display name is up to {} characters, with no control characters and no space at either end",
            accounts::MAX_DISPLAY_NAME_CHARS
        )));
    }
    match app.backend.propose(Event::ProfileSet { user: name.clone(), display_name }).await? {
        Outcome::ProfileSet { display_name } => Ok(Json(Profile { name, display_name: (!display_name.is_empty()).then_some(display_name) })),
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/users/profile?names=a,b`: the profiles of those that are
/// registered users, in the order asked, each once.
pub async fn profiles<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    query: Result<Query<ProfilesQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<Profile>>> {
    let user = bearer(&app, &headers)?;
    app.request_attempt(&user)?;
    let Query(ProfilesQuery { names }) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let listed: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
    if listed.len() > MAX_PROFILES {
        return Err(ApiError::bad_request(format!("at most {MAX_PROFILES} names at once")));
    }
    let mut asked: Vec<&str> = Vec::with_capacity(listed.len());
    for name in listed {
        validate::user_name(name)?;
        if !asked.contains(&name) {
            asked.push(name);
        }
    }
    let reader = app.backend.reader();
    let mut out = Vec::with_capacity(asked.len());
    for name in asked {
        if reader.user(name)?.is_some() {
            let display_name = accounts::profile(reader, name)?.map(|p| p.display_name);
            out.push(Profile { name: name.to_string(), display_name });
        }
    }
    Ok(Json(out))
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
/// Longest `q` of the room directory, in bytes.
pub const MAX_ROOM_QUERY: usize = 64;

/// Every byte but the unreserved ones as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Creates a room with the caller as its owner (level 5): public or private,
/// with a title and topic. 409 `name_taken` if the room exists.
pub async fn create_room<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    create: Result<Json<CreateRoom>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RoomDetails>)> {
    let user = bearer(&app, &headers)?;
    app.request_attempt(&user)?;
    let CreateRoom { name, visibility, title, topic } = body(create)?;
    validate::room_name(&name)?;
    if chat::dm_participants(&name).is_some() {
        return Err(ApiError::bad_request("a direct-message room is not created"));
    }
    validate::setting("title", &title, rooms::MAX_TITLE)?;
    validate::setting("topic", &topic, rooms::MAX_TOPIC)?;
    app.may_create(&user, &name)?;
    let event = Event::RoomCreated { room: name.clone(), owner: user.clone(), visibility: store_visibility(visibility), title, topic };
    match app.backend.propose(event).await? {
        Outcome::Joined { .. } => Ok((StatusCode::CREATED, Json(room_details(app.backend.reader(), &name, &user)?))),
        Outcome::NameTaken => Err(ApiError::new(Code::NameTaken, format!("room {name} exists"))),
        other => Err(unexpected(other)),
    }
}

/// A room's settings and members as `user` sees them.
fn room_details<R: ChatRead + ?Sized>(reader: &R, name: &str, user: &str) -> ApiResult<RoomDetails> {
    let record = reader.room(name)?.ok_or_else(|| ApiError::new(Code::NotFound, "no such room"))?;
    let info = rooms::info(reader, name)?;
    let members = rooms::members(reader, name)?;
    let role = members.iter().find(|(m, _)| m == user).map(|(_, r)| wire_role(r.role));
    let now = reader.clock()?;
    let members = members
        .into_iter()
        .take(MEMBERS_LISTED)
        .map(|(name, r)| {
            let display_name = accounts::profile(reader, &name)?.map(|p| p.display_name);
            Ok(RoomMember { name, role: wire_role(r.role), muted_until: r.muted_until.filter(|&u| u > now), display_name })
        })
        .collect::<ApiResult<_>>()?;
    let (owner, visibility, title, topic) = match info {
        Some(i) => (Some(i.owner), wire_visibility(i.visibility), i.title, i.topic),
        None => (None, wire::Visibility::Public, String::new(), String::new()),
    };
    Ok(RoomDetails { name: name.to_string(), visibility, owner, title, topic, last_seq: record.last_seq, member_count: record.members, members, role })
}

/// `GET /v1/rooms/{room}`: a room the caller may read, with its members.
pub async fn room<B: ChatBackend>(State(app): State<Arc<App<B>>>, Path(room): Path<String>, headers: HeaderMap) -> ApiResult<Json<RoomDetails>> {
    let user = bearer(&app, &headers)?;
    app.request_attempt(&user)?;
    validate::room_name(&room)?;
    if chat::dm_participants(&room).is_some() {
        return Err(ApiError::bad_request("a direct-message room has no settings"));
    }
    // Read after the caller's own writes anywhere (a join on another node).
    app.backend.read_barrier().await?;
    let reader = app.backend.reader();
    if reader.room(&room)?.is_none() {
        return Err(ApiError::new(Code::NotFound, "no such room"));
    }
    if !rooms::may_read(reader, &room, &user)? {
        return Err(ApiError::new(Code::NotMember, "a private room: only its members see it"));
    }
    Ok(Json(room_details(reader, &room, &user)?))
}

/// `POST /v1/rooms/{room}/actions`: invite, kick, ban, mute, a role, the
/// topic, title or visibility, as an entry of the room.
pub async fn room_action<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    action: Result<Json<PostRoomAction>, JsonRejection>,
) -> ApiResult<Json<Posted>> {
    let user = bearer(&app, &headers)?;
    let PostRoomAction { id, action } = body(action)?;
    let ack = add_entry(&app, &user, &room, &id.text(), Entry::Room(action)).await?;
    Ok(Json(ack.posted(id)))
}

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
    let needle = match q.q.as_deref().map(str::trim) {
        Some(n) if n.len() > MAX_ROOM_QUERY => return Err(ApiError::bad_request(format!("q is at most {MAX_ROOM_QUERY} bytes"))),
        Some(n) if !n.is_empty() => Some(n.to_lowercase()),
        _ => None,
    };
    // Rooms the caller may not see (other users' DM rooms, private rooms
    // without membership or invitation) and, with `q`, rooms that do not
    // match are scanned and left out, so a page may hold fewer rooms than
    // `limit` and still have a next one.
    let rooms = app.backend.reader().rooms_page(q.after.as_deref(), limit as usize)?;
    let next = (rooms.len() as u64 == limit).then(|| rooms.last().map(|(name, _)| name.clone())).flatten();
    let reader = app.backend.reader();
    let mut list = Vec::new();
    for (name, r) in rooms {
        if !rooms::may_see(reader, &name, &user)? {
            continue;
        }
        let info = rooms::info(reader, &name)?;
        if let Some(needle) = &needle {
            let title = info.as_ref().map_or("", |i| i.title.as_str());
            if !name.to_lowercase().contains(needle.as_str()) && !title.to_lowercase().contains(needle.as_str()) {
                continue;
            }
        }
        // A DM room's members are its two users, with no membership stored.
        let members = if chat::dm_participants(&name).is_some() { 2 } else { r.members };
        let unread = unread_counts(reader, &name, &user)?;
        let role = match &info {
            Some(_) => rooms::member(reader, &name, &user)?.map(|m| wire_role(m.role)),
            None => None,
        };
        let invited = info.is_some() && role.is_none() && rooms::access(reader, &name, &user)?.invited;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        list.push(RoomSummary {
            members,
            last_seq: r.last_seq,
            unread,
            visibility: info.as_ref().map(|i| wire_visibility(i.visibility)),
            title: info.as_ref().and_then(|i| nonempty(&i.title)),
            topic: info.as_ref().and_then(|i| nonempty(&i.topic)),
            role,
            invited,
            name,
        });
    }
    let mut headers = HeaderMap::new();
    if let Some(last) = next {
        // Room names are of A-Z a-z 0-9 _ . - and `:`: nothing to escape in
        // a query; `q` is carried on, percent-encoded.
        let q = needle.map(|n| format!("&q={}", percent_encode(&n))).unwrap_or_default();
        let link = format!("</v1/rooms?after={last}&limit={limit}{q}>; rel=\"next\"");
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
