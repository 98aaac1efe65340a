//! One WebSocket session (SPEC §4).
//!
//! A session is one task per connection: it reads client frames, answers them,
//! and replays rooms from storage. Live messages do not go through it: the
//! node's fan-out thread writes them to the socket itself ([`crate::fanout`]),
//! presence and typing frames come from the node's signal relay
//! ([`crate::relay`]), and everything written to a connection goes
//! through its [`Outbox`], in order and whole. The session drains what the
//! socket could not take at once, and acts on what the fan-out leaves it: a
//! room to fill from storage, or a close.
//!
//! Nothing in a session waits on the client without a bound. A client that
//! stops reading is closed with 4008 ("slow consumer") as soon as its queue
//! overflows, not when it next reads; a replay that finds the queue full for
//! [`STALL`] closes with 4008 too; and the close frame itself gets
//! [`CLOSE_GRACE`] to reach the client before the socket is dropped. Sends are
//! committed in tasks of their own, which hand their ack back through a
//! channel, so a slow commit holds up nothing else.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use raft_store::chat::{self, Event, Message, Outcome};
use raft_store::lifecycle::Kind;
use raft_store::ChatRead;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use wire::http::HistoryQuery;
use wire::{ClientFrame, Id, ServerFrame};

use crate::error::{ApiError, Code};
use crate::fanout::{text_frame, ConnIo, Outbox, OutboxEvent, SESSION_REVOKED, SLOW_CONSUMER};
use crate::ops::{add_entry, entry_frame_text, read_history, unexpected, unread_counts, Entry};
use crate::presence::PeerSignal;
use crate::{validate, App, ChatBackend};

mod upgrade;
pub use upgrade::{upgrade, WsQuery};

/// Sends one connection may have awaiting their ack.
const MAX_IN_FLIGHT: usize = 256;
/// Rows read from storage at a time when replaying.
const REPLAY_PAGE: usize = 500;
/// How long a replay waits for room in a full queue before the client counts
/// as a slow consumer: the socket has not taken one frame in that time.
pub const STALL: Duration = Duration::from_secs(5);
/// How long the close frame may wait behind unread data before the socket is
/// dropped without it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long a closed connection's socket is read (and what comes dropped)
/// after its close frame, for the client to take that frame before the
/// socket goes (see [`Outbox::linger`]).
pub const LINGER: Duration = Duration::from_secs(2);

/// Where a `send` or `dm` goes.
enum Target {
    Room(String),
    /// A direct message to this user.
    User(String),
}

/// A `send` or `dm` outcome: on failure the error, with the frame's `id` for
/// the error frame to echo.
type SendResult = Result<(), (ApiError, Option<Id>)>;

struct Session<B: ChatBackend> {
    app: Arc<App<B>>,
    user: String,
    /// Client frames in; control frames (pongs, close) out through `out`.
    ws: WebSocketStream<ConnIo>,
    out: Arc<Outbox>,
    /// The client's side has ended: nothing more can be read or sent.
    gone: bool,
    in_flight: Arc<Semaphore>,
    /// Acks and errors from this session's send tasks.
    acks: mpsc::Sender<ServerFrame>,
    /// Send tasks whose answer has not come through `acks` yet.
    awaiting: usize,
}

/// Closes `out` with [`SESSION_REVOKED`] if its user's sessions were revoked
/// since the token it was opened with was issued, or the key that signed the
/// token was dropped.
fn close_if_revoked<B: ChatBackend>(app: &App<B>, out: &Outbox) {
    let reader = app.backend.reader();
    match (reader.session_epoch(&out.user), reader.signing_keys()) {
        (Ok(epoch), _) if epoch > out.epoch => out.close_with(SESSION_REVOKED, "session revoked"),
        (_, Ok(keys)) if keys.version(out.key_version).is_none() => out.close_with(SESSION_REVOKED, "signing key dropped"),
        (Ok(_), Ok(_)) => {}
        (Err(e), _) | (_, Err(e)) => tracing::warn!(user = %out.user, error = %e, "cannot read the session epoch or keys"),
    }
}

impl<B: ChatBackend> Drop for Session<B> {
    /// The fan-out forgets the connection however the session ends, even by a
    /// panic, so the socket closes instead of taking deliveries forever.
    fn drop(&mut self) {
        self.out.close_with(1011, "session ended");
        self.app.registry.disconnect(&self.out, &self.out.rooms());
    }
}

impl<B: ChatBackend> Session<B> {
    /// Queues a frame; on overflow, closes the connection as a slow consumer.
    fn push(&mut self, frame: ServerFrame) -> bool {
        self.out.push(text_frame(frame.to_text()))
    }

    /// Sends a replayed message (which the client asked for), waiting for room
    /// in the queue, but no longer than [`STALL`]: a client that takes nothing
    /// in that time is a slow consumer.
    async fn push_replayed(&mut self, room: &str, m: &Message) -> bool {
        if !self.room_in_queue().await {
            return false;
        }
        self.out.push_replayed(room, m.seq, text_frame(entry_frame_text(m)))
    }

    /// Waits for room in the queue, but no longer than [`STALL`]: a client
    /// that takes nothing in that time is closed as a slow consumer. What a
    /// client asks for in bulk (replays, history pages) waits here, so asking
    /// faster than it reads holds its own session up, not the node's memory.
    async fn room_in_queue(&mut self) -> bool {
        if tokio::time::timeout(STALL, poll_fn(|cx| self.out.poll_room(cx))).await.is_err() {
            self.close_with(SLOW_CONSUMER, "slow consumer");
            return false;
        }
        true
    }

    fn close_with(&mut self, code: u16, reason: &'static str) {
        self.out.close_with(code, reason);
    }

    /// Ends the session: the fan-out stops writing to it, a frame already
    /// partly written goes out whole, then the close frame, which gets
    /// [`CLOSE_GRACE`] to reach a client that is not reading; frames still
    /// queued are dropped.
    async fn finish(mut self) {
        let (code, reason) = self.out.closing().unwrap_or((1000, "bye"));
        self.out.close_with(code, reason);
        self.app.registry.disconnect(&self.out, &self.out.rooms());
        self.out.wind_down();
        if self.gone || self.out.is_gone() {
            return;
        }
        if code == SLOW_CONSUMER {
            self.app.metrics.slow_consumer_closes.inc();
        }
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        if tokio::time::timeout(CLOSE_GRACE, self.ws.send(WsMessage::Close(Some(frame)))).await.is_err() {
            tracing::debug!(code, "close frame not taken within the grace period; dropping the socket");
            return;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.close(None)).await;
        // tungstenite may have left its reply to the client's close queued in
        // the outbox without waiting for it: send it before the socket drops.
        let _ = tokio::time::timeout(CLOSE_GRACE, poll_fn(|cx| self.out.poll_flushed(cx))).await;
        self.out.linger(LINGER).await;
    }

    async fn client_frame(&mut self, text: &str) {
        let (frame, req) = match ClientFrame::parse(text) {
            Ok(parsed) => parsed,
            Err(bad) => return self.fail(ApiError::bad_request(bad.message), bad.id, bad.req),
        };
        let no_id = |e: ApiError| (e, None);
        let result = match frame {
            ClientFrame::Join { room, after } => self.join(room, after, req.clone()).await.map_err(no_id),
            ClientFrame::Leave { room } => self.leave(room, req.clone()).await.map_err(no_id),
            ClientFrame::Send { room, id, text, reply_to } => self.send(Target::Room(room), id, Entry::Post { text, reply_to }, req.clone()),
            ClientFrame::Dm { to, id, text } => self.send(Target::User(to), id, Entry::Post { text, reply_to: None }, req.clone()),
            ClientFrame::Edit { room, id, target, text } => self.send(Target::Room(room), id, Entry::Edit { target, text }, req.clone()),
            ClientFrame::Delete { room, id, target } => self.send(Target::Room(room), id, Entry::Delete { target }, req.clone()),
            ClientFrame::React { room, id, target, emoji } => {
                self.send(Target::Room(room), id, Entry::React { target, emoji, added: true }, req.clone())
            }
            ClientFrame::Unreact { room, id, target, emoji } => {
                self.send(Target::Room(room), id, Entry::React { target, emoji, added: false }, req.clone())
            }
            ClientFrame::History { room, after, before, limit, consistency } => {
                self.history(room, HistoryQuery { after, before, limit, consistency }, req.clone()).await.map_err(no_id)
            }
            ClientFrame::Typing { room } => self.typing(room).map_err(no_id),
            ClientFrame::Read { room, seq } => self.mark_read(room, seq, req.clone()).await.map_err(no_id),
            ClientFrame::RoomAction { room, id, action } => self.send(Target::Room(room), id, Entry::Room(action), req.clone()),
        };
        if let Err((e, id)) = result {
            self.fail(e, id, req);
        }
    }

    /// Reads client frames, the outbox's events and the send tasks' answers
    /// until the client is gone or the connection is closing.
    async fn serve(&mut self, mut acked: mpsc::Receiver<ServerFrame>) {
        while !self.gone && self.out.closing().is_none() {
            // The handlers are boxed: a future holds room for the largest
            // state of everything it awaits inline, and the task of every
            // connection, idle or not, is allocated at that size. Boxed, a
            // handler's state exists only while it runs.
            tokio::select! {
                frame = self.ws.next() => Box::pin(self.read(frame)).await,
                event = poll_fn(|cx| self.out.poll_event(cx)) => Box::pin(self.outbox_event(event)).await,
                // Polled only while a send awaits its answer: an empty channel still costs a poll per turn.
                Some(frame) = acked.recv(), if self.awaiting > 0 => {
                    self.awaiting -= 1;
                    self.push(frame);
                }
            }
        }
    }

    async fn read(&mut self, frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) {
        match frame {
            Some(Ok(WsMessage::Text(text))) => self.client_frame(text.as_str()).await,
            Some(Ok(WsMessage::Binary(_))) => self.fail(ApiError::bad_request("frames are JSON text"), None, None),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
            // The close reply (queued by the protocol layer) still goes out.
            Some(Ok(WsMessage::Close(_))) => self.close_with(1000, "bye"),
            Some(Err(e)) => {
                // Oversized or malformed at the protocol level, or the socket failed: say so, then close.
                tracing::debug!(user = %self.user, error = %e, "websocket read failed");
                if let tokio_tungstenite::tungstenite::Error::Capacity(c) = &e {
                    // The rest of the frame is still unread, so the connection cannot go on.
                    self.fail(ApiError::new(Code::TooLarge, format!("{c}")), None, None);
                }
                self.close_with(1009, "frame too large or malformed");
            }
            None => self.gone = true,
        }
    }

    async fn outbox_event(&mut self, event: OutboxEvent) {
        match event {
            OutboxEvent::Gone => self.gone = true,
            OutboxEvent::Closing(..) => {}
            OutboxEvent::Stale => {
                // The fan-out lost deliveries, perhaps a revocation among them.
                close_if_revoked(&self.app, &self.out);
                if let Some(since) = self.out.take_dm_lost() {
                    self.open_lost_dms(since);
                }
                for room in self.out.stale_rooms() {
                    self.catch_up(&room).await;
                }
            }
        }
    }

    fn fail(&mut self, e: ApiError, id: Option<Id>, req: Option<Id>) {
        self.push(e.frame(id, req));
    }

    async fn join(&mut self, room: String, after: Option<u64>, req: Option<Id>) -> Result<(), ApiError> {
        validate::room_name(&room)?;
        self.app.request_attempt(&self.user)?;
        let head = if let Some((a, b)) = chat::dm_participants(&room) {
            if self.user != a && self.user != b {
                return Err(ApiError::new(Code::NotMember, "not your direct-message room"));
            }
            self.app.backend.reader().room(&room)?.map_or(0, |r| r.last_seq)
        } else {
            self.app.may_create(&self.user, &room)?;
            match self.app.backend.propose(Event::RoomJoined { room: room.clone(), user: self.user.clone() }).await? {
                Outcome::Joined { head } => head,
                other => return Err(unexpected(other)),
            }
        };
        let online = self.online_members(&room)?;
        let fresh = self.out.cursor(&room).is_none();
        let unread = unread_counts(self.app.backend.reader(), &room, &self.user)?;
        let joined = ServerFrame::Joined { room: room.clone(), head, online, unread, req };
        // Replay from storage, then go live from where the replay stopped. Without
        // `after`, live delivery starts after the head the client was told.
        if !self.out.start_room(&room, after.unwrap_or(head), text_frame(joined.to_text())) {
            return Ok(());
        }
        if fresh {
            // Members already in the room learn that this (online) user is now one of them.
            let sig = PeerSignal::Joined { room: room.clone(), user: self.user.clone() };
            self.app.presence.receive(sig.clone(), std::time::Instant::now());
            self.app.backend.send_signal(sig);
        }
        if chat::dm_participants(&room).is_none() {
            // Direct messages reach both users' connections without this.
            self.app.registry.join(&room, &self.out);
        }
        self.catch_up(&room).await;
        Ok(())
    }

    /// Whether this user is still a member of `room`; if not (kicked or
    /// banned while this connection joined or replayed, or in a snapshot this
    /// node installed), the connection leaves the room with a `removed`
    /// frame. A kick applied after this check reaches the fan-out, which
    /// finds the connection registered and removes it.
    fn still_member(&mut self, room: &str) -> bool {
        if chat::dm_participants(room).is_some() {
            return true;
        }
        match self.app.backend.reader().is_member(room, &self.user) {
            Ok(true) => true,
            Ok(false) => {
                self.out.leave_room(room);
                self.app.registry.leave(room, &self.out);
                self.push(ServerFrame::Removed { room: room.to_string() });
                false
            }
            Err(e) => {
                self.storage_failed(room, &e);
                false
            }
        }
    }

    /// Sends the stored messages of `room` after its cursor, then makes the
    /// cursor live (see [`crate::fanout`] for why nothing is lost or repeated).
    async fn catch_up(&mut self, room: &str) {
        loop {
            if !self.still_member(room) {
                return;
            }
            let Some(cursor) = self.out.replay_from(room) else { return };
            if cursor.live {
                return;
            }
            let page = match self.app.backend.reader().history(room, Some(cursor.last), None, REPLAY_PAGE) {
                Ok(p) => p,
                Err(e) => return self.storage_failed(room, &e),
            };
            if page.messages.is_empty() {
                if self.out.go_live(room, cursor.last) {
                    return;
                }
                continue;
            }
            for m in &page.messages {
                if !self.push_replayed(room, m).await {
                    return;
                }
                self.app.metrics.deliveries.inc();
                // A kick of this user: if it still holds (applied after the
                // check above, not one the user has since rejoined after),
                // nothing after it is sent.
                if matches!(&m.kind, Kind::Room(a) if a.removes() == Some(self.user.as_str())) && !self.still_member(room) {
                    return;
                }
            }
        }
    }

    /// The fan-out lost messages, so a direct-message room this connection has
    /// no cursor in may hold some stamped at or after `since` that it never
    /// got: each such room gets a cursor just before them, and is replayed
    /// with the other stale rooms. Lost messages are rare (a snapshot was
    /// installed, or the fan-out fell behind), which pays for the scan of
    /// every room.
    fn open_lost_dms(&mut self, since: u64) {
        let rooms = match self.app.backend.reader().rooms() {
            Ok(rooms) => rooms,
            Err(e) => return self.storage_failed("(all)", &e),
        };
        for (room, record) in rooms {
            let mine = chat::dm_participants(&room).is_some_and(|(a, b)| a == self.user || b == self.user);
            if mine && record.last_seq > 0 && self.out.cursor(&room).is_none() && !self.open_dm_from(&room, since) {
                return;
            }
        }
        // Until here the fan-out entered no DM room without a cursor; those it
        // had messages for meanwhile may have held none when `rooms` was read.
        // Each holds a message stamped since `since` (the fan-out had it), so
        // it is opened.
        for room in self.out.finish_dm_scan() {
            if !self.open_dm_from(&room, since) {
                return;
            }
        }
    }

    /// Opens DM room `room` for a replay of its messages stamped at or after
    /// `since`, if it holds any. Returns false if storage failed (the
    /// connection is then closing).
    fn open_dm_from(&mut self, room: &str, since: u64) -> bool {
        match self.app.backend.reader().last_stamped_before(room, since, REPLAY_PAGE) {
            Ok(Some(last)) => {
                self.out.open_dm(room, last);
                true
            }
            Ok(None) => true,
            Err(e) => {
                self.storage_failed(room, &e);
                false
            }
        }
    }

    /// A room cannot be read: the client is told to come back (with `after`)
    /// rather than left with a room that silently stopped.
    fn storage_failed(&mut self, room: &str, e: &dyn std::fmt::Display) {
        tracing::warn!(room, error = %e, "history read failed during replay");
        self.close_with(1011, "storage error");
    }

    fn online_members(&self, room: &str) -> Result<Vec<String>, ApiError> {
        if let Some((a, b)) = chat::dm_participants(room) {
            // A DM room's members are its two users, with no membership stored.
            return Ok([a, b].into_iter().filter(|u| self.app.presence.is_online(u)).map(str::to_string).collect());
        }
        let members = self.app.backend.reader().members(room)?;
        Ok(members.into_iter().filter(|u| self.app.presence.is_online(u)).collect())
    }

    /// Leaving a room ends the user's membership, then this connection's
    /// subscription; if the leave is not committed, both stay. A direct-message
    /// room cannot be left: its messages reach both users' connections whatever
    /// they do, so `left` changes nothing there.
    async fn leave(&mut self, room: String, req: Option<Id>) -> Result<(), ApiError> {
        validate::room_name(&room)?;
        self.app.request_attempt(&self.user)?;
        if chat::dm_participants(&room).is_none() {
            self.app.backend.propose(Event::RoomLeft { room: room.clone(), user: self.user.clone() }).await?;
            self.out.leave_room(&room);
            self.app.registry.leave(&room, &self.out);
        }
        self.push(ServerFrame::Left { room, req });
        Ok(())
    }

    /// `send`, `dm`, `edit`, `delete`, `react` and `unreact`: committed in a
    /// task of their own, so a slow commit does not hold up this connection's
    /// other frames; the ack comes when it is applied.
    fn send(&mut self, target: Target, id: Id, entry: Entry, req: Option<Id>) -> SendResult {
        let room = match target {
            Target::Room(room) => room,
            Target::User(to) => {
                let refused = |e: ApiError| (e, Some(id.clone()));
                validate::user_name(&to).map_err(refused)?;
                if to == self.user {
                    return Err(refused(ApiError::bad_request("a direct message needs another user")));
                }
                if self.app.backend.reader().user(&to).map_err(|e| refused(e.into()))?.is_none() {
                    return Err(refused(ApiError::bad_request(format!("no user named {to}"))));
                }
                chat::dm_room(&self.user, &to)
            }
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let e = ApiError::new(Code::Overloaded, format!("more than {MAX_IN_FLIGHT} sends awaiting their ack"));
            return Err((e, Some(id)));
        };
        let (app, user, acks) = (self.app.clone(), self.user.clone(), self.acks.clone());
        self.awaiting += 1;
        tokio::spawn(async move {
            let frame = match add_entry(&app, &user, &room, &id.text(), entry).await {
                Ok(ack) => ack.frame(id, req),
                Err(e) => e.frame(Some(id), req),
            };
            // The session may be gone; then nobody is waiting for the ack.
            let _ = acks.send(frame).await;
            drop(permit);
        });
        Ok(())
    }

    async fn history(&mut self, room: String, q: HistoryQuery, req: Option<Id>) -> Result<(), ApiError> {
        self.app.request_attempt(&self.user)?;
        if !self.room_in_queue().await {
            return Ok(());
        }
        let page = read_history(&self.app, &self.user, &room, &q).await?;
        self.push(ServerFrame::History { room: page.room, head: page.head, messages: page.messages, req });
        Ok(())
    }

    /// Moves this user's read marker in `room`, through the log, so every
    /// device and node agrees on it.
    async fn mark_read(&mut self, room: String, seq: u64, req: Option<Id>) -> Result<(), ApiError> {
        validate::room_name(&room)?;
        self.app.request_attempt(&self.user)?;
        match self.app.backend.propose(Event::ReadMarked { room: room.clone(), user: self.user.clone(), seq }).await? {
            Outcome::Marked { seq } => {
                self.push(ServerFrame::Marked { room, seq, req });
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    fn typing(&self, room: String) -> Result<(), ApiError> {
        validate::room_name(&room)?;
        if self.out.cursor(&room).is_none() {
            return Err(ApiError::new(Code::NotMember, "join the room first"));
        }
        let sig = PeerSignal::Typing { room, user: self.user.clone() };
        // Coalesced here first: a typing flood costs the peers nothing either.
        if self.app.presence.receive(sig.clone(), std::time::Instant::now()) {
            self.app.backend.send_signal(sig);
        }
        Ok(())
    }
}

