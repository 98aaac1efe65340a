//! The operations the HTTP routes and the WebSocket session share: adding an
//! entry to a room (a message, reply, edit, delete or reaction) and reading a
//! page of history or a thread, with their validation, limits and
//! consistency; and a stored entry as the wire protocol writes it.

use std::time::Instant;

use raft_store::chat::{self, Event, Message, Outcome};
use raft_store::lifecycle::Kind;
use raft_store::rooms::{self, Role, RoomAction, Visibility};
use raft_store::ChatRead;
use wire::http::{HistoryPage, HistoryQuery, Posted, ThreadPage, ThreadQuery};
use wire::{Consistency, HistoryEntry, Id};

use crate::error::{ApiError, ApiResult, Code};
use crate::{validate, App, ChatBackend};

/// Largest page of history.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 50;

/// A stored room entry as the wire protocol writes it.
pub fn wire_entry(m: &Message) -> HistoryEntry {
    let (room, seq, id, from, ts) = (m.room.clone(), m.seq, m.client_id.clone(), m.from.clone(), m.ts_ms);
    match &m.kind {
        Kind::Post(s) => HistoryEntry::Message(wire::Message {
            room,
            seq,
            id,
            from,
            text: m.text.clone(),
            ts,
            reply_to: s.reply_to,
            thread: s.thread,
            edited_ts: s.edited_ts,
            deleted: s.deleted,
            reactions: s.reactions.iter().map(|(emoji, users)| (emoji.clone(), users.iter().cloned().collect())).collect(),
        }),
        Kind::Edit { target } => HistoryEntry::Edit(wire::Edit { room, seq, id, from, target: *target, text: m.text.clone(), ts }),
        Kind::Delete { target } => HistoryEntry::Delete(wire::Delete { room, seq, id, from, target: *target, ts }),
        Kind::Reaction { target, emoji, added } => {
            HistoryEntry::Reaction(wire::Reaction { room, seq, id, from, target: *target, emoji: emoji.clone(), added: *added, ts })
        }
        Kind::Room(action) => {
            let until = match action {
                RoomAction::Ban { for_ms: Some(d), .. } | RoomAction::Mute { for_ms: Some(d), .. } => Some(ts.saturating_add(*d)),
                _ => None,
            };
            HistoryEntry::RoomAction(wire::RoomChange { room, seq, id, from, ts, action: wire_action(action), until })
        }
    }
}

pub fn wire_role(r: Role) -> wire::Role {
    match r {
        Role::Member => wire::Role::Member,
        Role::Moderator => wire::Role::Moderator,
        Role::Owner => wire::Role::Owner,
    }
}

pub fn wire_visibility(v: Visibility) -> wire::Visibility {
    match v {
        Visibility::Public => wire::Visibility::Public,
        Visibility::Private => wire::Visibility::Private,
    }
}

pub fn store_visibility(v: wire::Visibility) -> Visibility {
    match v {
        wire::Visibility::Public => Visibility::Public,
        wire::Visibility::Private => Visibility::Private,
    }
}

/// A stored room action as the wire protocol writes it (durations in seconds).
fn wire_action(a: &RoomAction) -> wire::RoomAction {
    let secs = |d: &Option<u64>| d.map(|ms| ms / 1000);
    match a {
        RoomAction::Invite { user } => wire::RoomAction::Invite { user: user.clone() },
        RoomAction::Kick { user } => wire::RoomAction::Kick { user: user.clone() },
        RoomAction::Ban { user, for_ms } => wire::RoomAction::Ban { user: user.clone(), secs: secs(for_ms) },
        RoomAction::Unban { user } => wire::RoomAction::Unban { user: user.clone() },
        RoomAction::Mute { user, for_ms } => wire::RoomAction::Mute { user: user.clone(), secs: secs(for_ms) },
        RoomAction::Unmute { user } => wire::RoomAction::Unmute { user: user.clone() },
        RoomAction::SetRole { user, role } => wire::RoomAction::SetRole { user: user.clone(), role: wire_role(*role) },
        RoomAction::SetTopic { topic } => wire::RoomAction::SetTopic { topic: topic.clone() },
        RoomAction::SetTitle { title } => wire::RoomAction::SetTitle { title: title.clone() },
        RoomAction::SetVisibility { visibility } => wire::RoomAction::SetVisibility { visibility: wire_visibility(*visibility) },
    }
}

/// A client's room action, checked, as the state machine takes it.
fn store_action(a: wire::RoomAction) -> ApiResult<RoomAction> {
    let ms = |secs: Option<u64>| -> ApiResult<Option<u64>> {
        match secs {
            Some(0) => Err(ApiError::bad_request("secs is at least 1 (leave it out for no end)")),
            Some(s) => Ok(Some(s.saturating_mul(1000))),
            None => Ok(None),
        }
    };
    let role = |r: wire::Role| match r {
        wire::Role::Member => Role::Member,
        wire::Role::Moderator => Role::Moderator,
        wire::Role::Owner => Role::Owner,
    };
    let user = |u: String| validate::user_name(&u).map(|()| u);
    Ok(match a {
        wire::RoomAction::Invite { user: u } => RoomAction::Invite { user: user(u)? },
        wire::RoomAction::Kick { user: u } => RoomAction::Kick { user: user(u)? },
        wire::RoomAction::Ban { user: u, secs } => RoomAction::Ban { user: user(u)?, for_ms: ms(secs)? },
        wire::RoomAction::Unban { user: u } => RoomAction::Unban { user: user(u)? },
        wire::RoomAction::Mute { user: u, secs } => RoomAction::Mute { user: user(u)?, for_ms: ms(secs)? },
        wire::RoomAction::Unmute { user: u } => RoomAction::Unmute { user: user(u)? },
        wire::RoomAction::SetRole { user: u, role: r } => RoomAction::SetRole { user: user(u)?, role: role(r) },
        wire::RoomAction::SetTopic { topic } => {
            validate::setting("topic", &topic, rooms::MAX_TOPIC)?;
            RoomAction::SetTopic { topic }
        }
        wire::RoomAction::SetTitle { title } => {
            validate::setting("title", &title, rooms::MAX_TITLE)?;
            RoomAction::SetTitle { title }
        }
        wire::RoomAction::SetVisibility { visibility } => RoomAction::SetVisibility { visibility: store_visibility(visibility) },
    })
}

/// A stored room entry as the text of the frame that delivers it.
pub fn entry_frame_text(m: &Message) -> String {
    wire_entry(m).into_frame().to_text()
}

/// An outcome the operation did not expect, as the fitting client error.
pub(crate) fn unexpected(o: Outcome) -> ApiError {
    match o {
        Outcome::Rejected { reason } => ApiError::bad_request(reason),
        Outcome::NotMember => ApiError::new(Code::NotMember, "not a member of this room"),
        Outcome::Forbidden { reason } => ApiError::new(Code::Forbidden, reason),
        Outcome::NoSuchMessage => ApiError::new(Code::NotFound, "no such message in this room"),
        Outcome::NoSuchUser => ApiError::new(Code::NotFound, "no such user"),
        other => ApiError::new(Code::Unavailable, format!("unexpected outcome {other:?}")),
    }
}

/// The page size asked for, checked; then the read barrier the consistency
/// asks for; then whether `user` may read `room` (a DM room's two users, a
/// private room's members, anyone for a public room).
async fn before_read<B: ChatBackend>(app: &App<B>, user: &str, room: &str, limit: Option<u64>, c: Option<Consistency>) -> ApiResult<usize> {
    validate::room_name(room)?;
    if let Some((a, b)) = chat::dm_participants(room) {
        if user != a && user != b {
            return Err(ApiError::new(Code::NotMember, "not your direct-message room"));
        }
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE as u64);
    if limit == 0 || limit > MAX_PAGE as u64 {
        return Err(ApiError::bad_request(format!("limit is 1-{MAX_PAGE}")));
    }
    match c.unwrap_or_default() {
        Consistency::Linearizable => app.backend.read_barrier().await?,
        Consistency::Local => {}
    }
    if !rooms::may_read(app.backend.reader(), room, user)? {
        return Err(ApiError::new(Code::NotMember, "a private room: only its members read it"));
    }
    Ok(limit as usize)
}

/// Reads one page of history for `user`, with the asked consistency.
pub async fn read_history<B: ChatBackend>(app: &App<B>, user: &str, room: &str, q: &HistoryQuery) -> ApiResult<HistoryPage> {
    let limit = before_read(app, user, room, q.limit, q.consistency).await?;
    let page = app.backend.reader().history(room, q.after, q.before, limit)?;
    let messages = page.messages.iter().map(wire_entry).collect();
    Ok(HistoryPage { room: room.to_string(), head: page.head, messages })
}

/// `user`'s read state in `room`, from feature level 4 and for a member only
/// (`None` otherwise, so older clusters answer as they always did).
pub fn unread_counts<R: ChatRead + ?Sized>(reader: &R, room: &str, user: &str) -> ApiResult<Option<wire::UnreadCounts>> {
    if chat::feature_level(reader)? < 4 || !reader.is_member(room, user)? {
        return Ok(None);
    }
    let u = reader.unread(room, user)?;
    Ok(Some(wire::UnreadCounts { read: u.read, unread: u.messages, mentions: u.mentions, capped: u.capped }))
}

/// Reads the thread rooted at message `root` of `room` for `user`.
pub async fn read_thread<B: ChatBackend>(app: &App<B>, user: &str, room: &str, root: u64, q: &ThreadQuery) -> ApiResult<ThreadPage> {
    let limit = before_read(app, user, room, q.limit, q.consistency).await?;
    let entries = app.backend.reader().thread(room, root, q.after, limit)?;
    let entries = entries.ok_or_else(|| ApiError::new(Code::NotFound, "no such message in this room"))?;
    Ok(ThreadPage { room: room.to_string(), root, messages: entries.iter().map(wire_entry).collect() })
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

/// A room entry a client asks to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A message, perhaps a reply.
    Post { text: String, reply_to: Option<u64> },
    Edit { target: u64, text: String },
    Delete { target: u64 },
    React { target: u64, emoji: String, added: bool },
    /// A change to the room's access or settings (level 5).
    Room(wire::RoomAction),
}

impl Entry {
    fn validate(&self, max_bytes: usize) -> ApiResult<()> {
        match self {
            Entry::Post { text, .. } | Entry::Edit { text, .. } => validate::text(text, max_bytes),
            Entry::Delete { .. } => Ok(()),
            Entry::React { emoji, .. } => validate::emoji(emoji),
            Entry::Room(_) => Ok(()),
        }
    }

    fn event(self, room: &str, from: &str, id: &str) -> ApiResult<Event> {
        let (room, from, client_id) = (room.to_string(), from.to_string(), id.to_string());
        Ok(match self {
            Entry::Post { text, reply_to: None } => Event::MessagePosted { room, from, client_id, text },
            Entry::Post { text, reply_to: Some(reply_to) } => Event::ReplyPosted { room, from, client_id, text, reply_to },
            Entry::Edit { target, text } => Event::MessageEdited { room, from, client_id, target, text },
            Entry::Delete { target } => Event::MessageDeleted { room, from, client_id, target },
            Entry::React { target, emoji, added } => Event::ReactionChanged { room, from, client_id, target, emoji, added },
            Entry::Room(action) => Event::RoomActed { room, from, client_id, action: store_action(action)? },
        })
    }
}

/// Adds `entry` to `room` as `user` with client id `id`: validates,
/// rate-limits (every entry counts as a message), commits through the leader
/// and returns once applied on this node.
pub async fn add_entry<B: ChatBackend>(app: &App<B>, user: &str, room: &str, id: &str, entry: Entry) -> ApiResult<Ack> {
    validate::room_name(room)?;
    validate::client_id(id)?;
    entry.validate(app.limits.max_message_bytes)?;
    app.rate.check(user, app.limits.rate_messages, app.limits.rate_window, "messages", Instant::now())?;
    let event = entry.event(room, user, id)?;
    let started = Instant::now();
    match app.backend.propose(event).await? {
        Outcome::Posted { room, seq, ts_ms, duplicate } => {
            app.metrics.acked(started.elapsed(), duplicate);
            Ok(Ack { room, seq, ts_ms, duplicate })
        }
        other => Err(unexpected(other)),
    }
}
