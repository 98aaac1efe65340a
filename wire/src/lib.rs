//! The Chorus client protocol, written once: the WebSocket frames of SPEC §4,
//! the JSON bodies of SPEC §3 and the error codes, as serde types. The node's
//! API, `chorusctl` (chat and bench) and the fault-injection suite all speak it
//! through this crate, so a frame is defined in one place.
//!
//! # Layout
//!
//! - [`Id`]: a client's `id` or `req`, a string or a number, echoed as sent.
//! - [`ClientFrame`]: what a client sends over the WebSocket, and
//!   [`ClientFrame::parse`], which also recovers `id` and `req` from a frame that
//!   does not parse, for the error frame.
//! - [`ServerFrame`]: what a node sends; [`Message`] is SPEC's MESSAGE.
//! - [`ErrorCode`]: the codes of error frames and error bodies.
//! - [`http`]: request and answer bodies of the JSON routes.
//! - [`Ready`]: what `chorusd --ready-file` writes once a node serves.
//!
//! Nothing here does I/O: no tokio, no RocksDB, no HTTP.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub mod http;

/// A client's `id` (of a message) or `req` (of a request): a string or a
/// number. Echoed exactly as it was sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Id {
    Text(String),
    Number(serde_json::Number),
}

impl Id {
    /// The id as a client id is stored: a string as it is, a number as its
    /// decimal text (so `7` and `"7"` are the same message).
    pub fn text(&self) -> String {
        match self {
            Id::Text(s) => s.clone(),
            Id::Number(n) => n.to_string(),
        }
    }

    /// `v` if it is a string or a number; anything else is no id.
    pub fn from_value(v: &Value) -> Option<Id> {
        match v {
            Value::String(s) => Some(Id::Text(s.clone())),
            Value::Number(n) => Some(Id::Number(n.clone())),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Id, E> {
                Ok(Id::Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id::Number(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                serde_json::Number::from_f64(v).map(Id::Number).ok_or_else(|| E::custom("a number must be finite"))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::Text(s.to_string())
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id::Text(s)
    }
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(n.into())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// How fresh a history read must be (SPEC §3 `consistency`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Reflects every message acked anywhere before the read began.
    #[default]
    Linearizable,
    /// What this node has applied; may lag.
    Local,
}

/// A frame a client sends (SPEC §4). Every frame may also carry `req`, which
/// the direct answer echoes; it is read by [`ClientFrame::parse`], not here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Become a member of `room` (stored, idempotent) and subscribe this
    /// connection. Answered by [`ServerFrame::Joined`], then every message
    /// after `after` if given, then live ones: in seq order, no gap, no
    /// duplicate.
    Join {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// End the membership, then this connection's subscription. Answered by
    /// [`ServerFrame::Left`].
    Leave { room: String },
    /// Post `text` to `room`, as a reply to the message `reply_to` if given.
    /// Answered by [`ServerFrame::Ack`] once committed on a majority and
    /// applied here; a retry with the same `id` gets the first seq with
    /// `duplicate: true`.
    Send {
        room: String,
        id: Id,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
    },
    /// A direct message to user `to`, in room `dm:<a>:<b>` (the two names
    /// sorted). Acked like `send`; every connection of both users receives it
    /// without joining.
    Dm { to: String, id: Id, text: String },
    /// One page of `room`'s history. Answered by [`ServerFrame::History`].
    History {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consistency: Option<Consistency>,
    },
    /// Tells the other online members that this user is typing. Not stored,
    /// not answered.
    Typing { room: String },
    /// Replace the text of one's own message `target`. Like every change to
    /// a message, an entry of its own with the room's next seq, acked like
    /// `send` (and deduplicated by `id` the same way).
    Edit { room: String, id: Id, target: u64, text: String },
    /// Delete one's own message `target`: its text, edits and reactions are
    /// removed from the cluster's state.
    Delete { room: String, id: Id, target: u64 },
    /// Add a reaction to the message `target`.
    React { room: String, id: Id, target: u64, emoji: String },
    /// Take one's reaction back.
    Unreact { room: String, id: Id, target: u64, emoji: String },
    /// This user has read `room` up to `seq`: the read marker, shared by the
    /// user's devices on every node, moves there unless it is already
    /// further. Answered by [`ServerFrame::Marked`].
    Read { room: String, seq: u64 },
    /// Change the room's access or settings (level 5): invite, kick, ban,
    /// mute, a role, the topic, title or visibility, named by `action`. An
    /// entry of the room, acked like `send` and deduplicated by `id`.
    RoomAction {
        room: String,
        id: Id,
        #[serde(flatten)]
        action: RoomAction,
    },
}

/// A member's role in a room (level 5): what they may do there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    /// Invites, kicks, bans, mutes, sets the topic and title, deletes others'
    /// messages.
    Moderator,
    /// As a moderator, and sets roles and the visibility; one per room.
    Owner,
}

/// Who may see, join and read a room (level 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Listed to everyone; anyone may join and read (every room before level 5).
    #[default]
    Public,
    /// Listed to members and invitees; joined by invitation; read by members.
    Private,
}

/// A change to a room's access or settings, tagged by `action`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RoomAction {
    /// `user` may join the private room, once.
    Invite { user: String },
    /// `user`'s membership ends; they may join again.
    Kick { user: String },
    /// `user`'s membership ends and they may not join for `secs` seconds
    /// (without `secs`, until unbanned).
    Ban {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secs: Option<u64>,
    },
    Unban { user: String },
    /// `user` may not post, reply, edit or react for `secs` seconds (without
    /// `secs`, until unmuted).
    Mute {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secs: Option<u64>,
    },
    Unmute { user: String },
    /// `user`'s role becomes `role`; `owner` hands the room on.
    SetRole { user: String, role: Role },
    SetTopic { topic: String },
    SetTitle { title: String },
    SetVisibility { visibility: Visibility },
}

/// A room action as stored: an entry of the room with its own seq, live (a
/// `room_action` frame) or from history. `until` is when a ban or mute with
/// `secs` ends (ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomChange {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub ts: u64,
    #[serde(flatten)]
    pub action: RoomAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// A client frame that could not be read, with what the error frame echoes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFrame {
    pub message: String,
    pub id: Option<Id>,
    pub req: Option<Id>,
}

impl ClientFrame {
    /// Reads one text frame: the frame and its `req`, or why it is not one.
    /// A `req` that is neither a string nor a number is ignored, as SPEC has
    /// it carry only those.
    pub fn parse(text: &str) -> Result<(ClientFrame, Option<Id>), BadFrame> {
        let value: Value = serde_json::from_str(text).map_err(|e| BadFrame { message: format!("malformed JSON: {e}"), id: None, req: None })?;
        let Value::Object(fields) = &value else {
            return Err(BadFrame { message: "a frame is a JSON object".into(), id: None, req: None });
        };
        let (id, req) = (fields.get("id").and_then(Id::from_value), fields.get("req").and_then(Id::from_value));
        match fields.get("type") {
            None => return Err(BadFrame { message: "a frame needs a \"type\"".into(), id, req }),
            Some(Value::String(_)) => {}
            Some(_) => return Err(BadFrame { message: "\"type\" is a string".into(), id, req }),
        }
        match ClientFrame::deserialize(value) {
            Ok(frame) => Ok((frame, req)),
            Err(e) => Err(BadFrame { message: e.to_string(), id, req }),
        }
    }

    /// The frame as JSON text, with `req` if given.
    pub fn to_text(&self, req: Option<&Id>) -> String {
        match req {
            None => serde_json::to_string(self).unwrap_or_default(),
            Some(req) => with_req(serde_json::to_value(self), req),
        }
    }
}

/// SPEC's MESSAGE: one stored message of a room, live or from history. The
/// fields after `ts` are additions of feature level 4, each left out when it
/// says nothing, so a plain message is written exactly as SPEC shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub room: String,
    /// Dense per room from 1.
    pub seq: u64,
    /// The client id it was sent with (a number's decimal text).
    pub id: String,
    pub from: String,
    pub text: String,
    /// Milliseconds since the epoch, stamped by the leader; never decreasing
    /// within a room.
    pub ts: u64,
    /// The message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// The first message of this reply's thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    /// When the text was last edited (history serves the latest text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    /// Deleted: `text` is empty and stays so.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Emoji → the users who reacted with it, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, Vec<String>>,
}

impl Message {
    /// A message as it was posted, with nothing happened to it since.
    pub fn posted(room: impl Into<String>, seq: u64, id: impl Into<String>, from: impl Into<String>, text: impl Into<String>, ts: u64) -> Self {
        Message { room: room.into(), seq, id: id.into(), from: from.into(), text: text.into(), ts, ..Message::default() }
    }
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// A user's read state in a room: `read` is the marker; `unread` counts the
/// other users' messages after it and `mentions` those of them that name
/// `@user`; `capped` says more than 1000 entries follow the marker, so both
/// counts are a floor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadCounts {
    pub read: u64,
    pub unread: u64,
    pub mentions: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub capped: bool,
}

/// An edit of the message `target`: its new text. An entry of the room with
/// its own seq, live or from history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    pub room: String,
    pub seq: u64,
    /// The client id of the edit.
    pub id: String,
    pub from: String,
    pub target: u64,
    /// Empty once the message is deleted.
    pub text: String,
    pub ts: u64,
}

/// The deletion of the message `target`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub target: u64,
    pub ts: u64,
}

/// A reaction `emoji` added to (or, `added: false`, taken back from) the
/// message `target` by `from`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub target: u64,
    pub emoji: String,
    pub added: bool,
    pub ts: u64,
}

/// A frame a node sends (SPEC §4). Answers to a client frame carry its `req`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A member's message, live or replayed after a `join` with `after`.
    Message(Message),
    /// A message was edited (live or replayed, like a message).
    Edit(Edit),
    /// A message was deleted.
    Delete(Delete),
    /// A reaction was added or taken back.
    Reaction(Reaction),
    /// A room's access or settings changed (level 5).
    RoomAction(RoomChange),
    /// This connection gets nothing more of `room`: its user was kicked or
    /// banned (the `room_action` entry saying so comes first when the
    /// connection was live in the room).
    Removed { room: String },
    /// The answer to `join`: the room's last seq, and which members are online.
    /// From level 4 also the user's read marker and the unread messages and
    /// mentions after it.
    Joined {
        room: String,
        head: u64,
        online: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unread: Option<UnreadCounts>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Id>,
    },
    /// The answer to `read`: the marker as it now is.
    Marked {
        room: String,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Id>,
    },
    /// The answer to `leave`.
    Left {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Id>,
    },
    /// A `send` or `dm` is committed: `room` is where the message is stored
    /// (for a duplicate, where it was first posted).
    Ack {
        room: String,
        id: Id,
        seq: u64,
        ts: u64,
        duplicate: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Id>,
    },
    /// The answer to `history`: the room's entries ascending by seq
    /// (messages, and from level 4 edits, deletes and reactions).
    History {
        room: String,
        head: u64,
        messages: Vec<HistoryEntry>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Id>,
    },
    /// A member online in the room is typing (not stored).
    Typing { room: String, user: String },
    /// A member's first connection opened, or last one closed, anywhere in
    /// the cluster.
    Presence { room: String, user: String, online: bool },
    /// Something was wrong; `id` and `req` name the frame it answers.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<Id>,
    },
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a node's frame.
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, id: Option<Id>, req: Option<Id>) -> Self {
        ServerFrame::Error { code, message: message.into(), id, req }
    }
}

/// How every MESSAGE frame a node writes begins: serde writes the tag first.
const MESSAGE_START: &str = r#"{"type":"message","#;

/// Whether `text` is a MESSAGE frame as a node writes it, told without parsing
/// it: for load generators that count many thousands of deliveries a second
/// and parse only a sample.
pub fn is_message(text: &str) -> bool {
    text.starts_with(MESSAGE_START)
}

/// One entry of a history page, written as its live frame is, `"type"` and all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HistoryEntry {
    Message(Message),
    Edit(Edit),
    Delete(Delete),
    Reaction(Reaction),
    RoomAction(RoomChange),
}

impl HistoryEntry {
    pub fn seq(&self) -> u64 {
        match self {
            HistoryEntry::Message(m) => m.seq,
            HistoryEntry::Edit(e) => e.seq,
            HistoryEntry::Delete(d) => d.seq,
            HistoryEntry::Reaction(r) => r.seq,
            HistoryEntry::RoomAction(c) => c.seq,
        }
    }

    pub fn room(&self) -> &str {
        match self {
            HistoryEntry::Message(m) => &m.room,
            HistoryEntry::Edit(e) => &e.room,
            HistoryEntry::Delete(d) => &d.room,
            HistoryEntry::Reaction(r) => &r.room,
            HistoryEntry::RoomAction(c) => &c.room,
        }
    }

    /// The message, if this entry is one.
    pub fn message(&self) -> Option<&Message> {
        match self {
            HistoryEntry::Message(m) => Some(m),
            _ => None,
        }
    }

    /// The entry as the frame that delivers it live.
    pub fn into_frame(self) -> ServerFrame {
        match self {
            HistoryEntry::Message(m) => ServerFrame::Message(m),
            HistoryEntry::Edit(e) => ServerFrame::Edit(e),
            HistoryEntry::Delete(d) => ServerFrame::Delete(d),
            HistoryEntry::Reaction(r) => ServerFrame::Reaction(r),
            HistoryEntry::RoomAction(c) => ServerFrame::RoomAction(c),
        }
    }
}

impl From<Message> for HistoryEntry {
    fn from(m: Message) -> Self {
        HistoryEntry::Message(m)
    }
}

impl ServerFrame {
    /// The room entry this frame delivers, if it delivers one.
    pub fn entry(self) -> Option<HistoryEntry> {
        match self {
            ServerFrame::Message(m) => Some(HistoryEntry::Message(m)),
            ServerFrame::Edit(e) => Some(HistoryEntry::Edit(e)),
            ServerFrame::Delete(d) => Some(HistoryEntry::Delete(d)),
            ServerFrame::Reaction(r) => Some(HistoryEntry::Reaction(r)),
            ServerFrame::RoomAction(c) => Some(HistoryEntry::RoomAction(c)),
            _ => None,
        }
    }
}

fn with_req(value: Result<Value, serde_json::Error>, req: &Id) -> String {
    let Ok(mut v) = value else { return String::new() };
    if let Value::Object(fields) = &mut v {
        fields.insert("req".into(), serde_json::to_value(req).unwrap_or(Value::Null));
    }
    v.to_string()
}

/// The error codes of SPEC §3-§4, in error frames (`code`) and HTTP error
/// bodies (`error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    NotMember,
    TooLarge,
    RateLimited,
    /// No leader or no quorum within the timeout: the message may or may not
    /// have been committed; retry with the same `id`.
    Unavailable,
    /// Too many sends of one connection await their ack.
    Overloaded,
    NameTaken,
    NotFound,
    MethodNotAllowed,
    /// The sender may not do this (say, edit another user's message).
    Forbidden,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotMember => "not_member",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `chorusd --ready-file PATH` writes once the node serves, and prints as
/// one JSON line on stdout. With port 0 in `--client-addr` or `--raft-addr`
/// the OS picks the ports, and this is how whoever started the node learns
/// them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub id: u64,
    pub pid: u32,
    /// The bound HTTP + WebSocket address.
    pub client_addr: SocketAddr,
    /// The bound gRPC address: `chorusctl --node`, `cluster init`, `cluster add`.
    pub raft_addr: SocketAddr,
    /// The client URL the node advertises.
    pub client_url: String,
    /// The raft address the node advertises to its peers.
    pub advertise_raft: String,
}

#[cfg(test)]
mod tests;
