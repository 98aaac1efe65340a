//! The operations the HTTP routes and the WebSocket session share: posting a
//! message and reading a page of history, with their validation, limits and
//! consistency; and a stored message as the wire protocol writes it.

use std::time::Instant;

use raft_store::chat::{self, Event, Message, Outcome};
use raft_store::ChatRead;
use wire::http::{HistoryPage, HistoryQuery, Posted};
use wire::{Consistency, Id};

use crate::error::{ApiError, ApiResult, Code};
use crate::{validate, App, ChatBackend};

/// Largest page of history.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 50;

/// A stored message as the wire protocol writes it.
pub fn wire_message(m: &Message) -> wire::Message {
    wire::Message { room: m.room.clone(), seq: m.seq, id: m.client_id.clone(), from: m.from.clone(), text: m.text.clone(), ts: m.ts_ms }
}

/// An outcome the operation did not expect, as the fitting client error.
pub(crate) fn unexpected(o: Outcome) -> ApiError {
    match o {
        Outcome::Rejected { reason } => ApiError::bad_request(reason),
        Outcome::NotMember => ApiError::new(Code::NotMember, "not a member of this room"),
        other => ApiError::new(Code::Unavailable, format!("unexpected outcome {other:?}")),
    }
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
    app.rate.check(user, app.limits.rate_messages, app.limits.rate_window, "messages", Instant::now())?;
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
