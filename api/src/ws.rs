//! One WebSocket session (SPEC §4).
//!
//! A session is one task that owns its socket whole: it reads client frames,
//! takes deliveries and presence signals, and writes to the socket, polling the
//! write side without ever waiting on it. Frames the socket cannot take yet wait
//! in the session's bounded queue (`pending`); a live frame that does not fit
//! closes the connection with 4008 ("slow consumer") rather than being dropped,
//! so what a client receives has no silent gap.
//!
//! Nothing in a session waits on the client without a bound. A client that
//! stops reading is closed as soon as its queue overflows, not when it next
//! reads; a replay that finds the queue full for [`STALL`] closes with 4008 too;
//! and the close frame itself gets [`CLOSE_GRACE`] to reach the client before the
//! socket is dropped. Sends are committed in tasks of their own, which hand
//! their ack back through a channel, so a slow commit holds up nothing else.
//!
//! Each applied message is serialised once by the [`relay`] and shared by every
//! session it goes to.
//!
//! Gap-free delivery: the session subscribes to the node's deliveries before it
//! reads anything from storage, and remembers per room the last seq it sent.
//! A delivery at that seq + 1 is sent; an older one is skipped (already sent from
//! storage); a newer one means something was missed (a snapshot install), and
//! the gap is filled from storage first.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use prometheus_client::metrics::histogram::Histogram;
use raft_store::chat::{self, Event, Message, Outcome};
use raft_store::state_machine::Delivery;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::error::{ApiError, Code};
use crate::http::{client_id_text, message_json, read_history, send_message, HistoryQuery};
use crate::presence::{LocalSignal, PeerSignal};
use crate::{validate, App, ChatBackend};

/// Frames queued to one connection before it counts as a slow consumer.
pub const OUTBOX_FRAMES: usize = 1024;
/// Largest client frame accepted.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Sends one connection may have awaiting their ack.
const MAX_IN_FLIGHT: usize = 256;
/// Close code for a connection whose queue overflowed.
pub const SLOW_CONSUMER: u16 = 4008;
/// Rows read from storage at a time when replaying.
const REPLAY_PAGE: usize = 500;
/// How long a replay waits for room in a full queue before the client counts
/// as a slow consumer: the socket has not taken one frame in that time.
pub const STALL: Duration = Duration::from_secs(5);
/// How long the close frame may wait behind unread data before the socket is
/// dropped without it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Deliveries a session takes in one turn before it writes them with one flush.
const WRITE_BATCH: usize = 64;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

pub async fn upgrade<B: ChatBackend>(
    State(app): State<Arc<App<B>>>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    let user = match app.authenticate(&token) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    // Small buffers: they are per connection, and the defaults (128 KiB each)
    // would dominate the memory of ten thousand mostly idle connections. The
    // read buffer is also zero-filled on every read attempt, and the session
    // polls its socket once per delivery: 1 KiB keeps that cheap. Client
    // frames are small; a large one just takes more reads.
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| session(app, user, socket))
}

/// Why and how a session ends, once decided.
type Closing = Option<(u16, &'static str)>;

/// How many deliveries the relay buffers for sessions before a slow one lags.
pub const LIVE_CAPACITY: usize = 8192;

/// A delivery as sessions receive it.
#[derive(Clone, Debug)]
pub enum Live {
    Message { message: Arc<Message>, frame: Utf8Bytes },
    /// Storage may hold messages that were not delivered one by one.
    Reset,
}

/// Serialises each applied message once and hands it to every session. If the
/// relay itself falls behind, sessions are told to re-read from storage.
pub async fn relay(mut from: broadcast::Receiver<Delivery>, to: broadcast::Sender<Live>, lag: Histogram) {
    loop {
        let live = match from.recv().await {
            // Nobody to serialise for: no session is open on this node.
            Ok(Delivery::Message(_)) if to.receiver_count() == 0 => continue,
            Ok(Delivery::Message(m)) => {
                lag.observe(crate::now_ms().saturating_sub(m.ts_ms) as f64 / 1000.0);
                let frame = Utf8Bytes::from(message_json(&m).to_string());
                Live::Message { message: m, frame }
            }
            Ok(Delivery::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => Live::Reset,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // No receivers is fine: no session is open.
        let _ = to.send(live);
    }
}

/// What the socket did, as seen by the session loop.
enum SocketEvent {
    Frame(WsMessage),
    /// The client closed, or a read or write failed: nothing more can be sent.
    Gone,
    /// A protocol-level read error (oversized or malformed frame).
    Invalid(String),
}

fn error_frame(e: &ApiError, id: Option<&Value>, req: Option<&Value>) -> String {
    let mut v = json!({ "type": "error", "code": e.code.as_str(), "message": e.message });
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    if let Some(req) = req {
        v["req"] = req.clone();
    }
    v.to_string()
}

fn with_req(mut v: Value, req: Option<&Value>) -> String {
    if let Some(req) = req {
        v["req"] = req.clone();
    }
    v.to_string()
}

struct Session<B: ChatBackend> {
    app: Arc<App<B>>,
    user: String,
    ws: WebSocket,
    /// Frames waiting for the socket, oldest first; at most [`OUTBOX_FRAMES`].
    pending: VecDeque<WsMessage>,
    /// Frames handed to the socket since its last flush.
    unflushed: bool,
    /// Set once; the first reason wins.
    closing: Closing,
    /// The socket can take nothing more (the client left or a write failed).
    gone: bool,
    /// Subscribed rooms (and DM rooms seen) → last seq sent.
    rooms: HashMap<String, u64>,
    in_flight: Arc<Semaphore>,
    /// Acks and errors from this session's send tasks.
    acks: mpsc::Sender<String>,
    /// Send tasks whose answer has not come through `acks` yet.
    awaiting: usize,
}

async fn session<B: ChatBackend>(app: Arc<App<B>>, user: String, ws: WebSocket) {
    // Subscribe before anything is read from storage: see the module docs.
    let mut deliveries = app.live.subscribe();
    // Presence and typing are rare next to deliveries; a stream keeps its one
    // pending receive across turns instead of re-registering it on every one.
    let mut signals = tokio_stream::wrappers::BroadcastStream::new(app.presence.subscribe());
    let (acks, mut acked) = mpsc::channel(MAX_IN_FLIGHT);
    app.connections.fetch_add(1, Ordering::Relaxed);
    if let Some(sig) = app.presence.connected(&user) {
        app.backend.send_signal(sig);
    }

    let mut s = Session {
        app: app.clone(),
        user: user.clone(),
        ws,
        pending: VecDeque::new(),
        unflushed: false,
        closing: None,
        gone: false,
        rooms: HashMap::new(),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        acks,
        awaiting: 0,
    };
    while s.closing.is_none() && !s.gone {
        tokio::select! {
            ev = poll_fn(|cx| s.poll_socket(cx)) => match ev {
                SocketEvent::Frame(WsMessage::Text(text)) => s.client_frame(text.as_str()).await,
                SocketEvent::Frame(WsMessage::Binary(_)) => {
                    s.fail(ApiError::bad_request("frames are JSON text"), None, None);
                }
                SocketEvent::Frame(WsMessage::Ping(_) | WsMessage::Pong(_)) => {}
                // The close reply (queued by the protocol layer) still goes out.
                SocketEvent::Frame(WsMessage::Close(_)) => s.close_with(1000, "bye"),
                SocketEvent::Gone => s.gone = true,
                SocketEvent::Invalid(e) => {
                    // Oversized or malformed at the protocol level: say so, then close.
                    tracing::debug!(user = %s.user, error = %e, "websocket read failed");
                    s.close_with(1009, "frame too large or malformed");
                }
            },
            d = deliveries.recv() => {
                // Take what else is already waiting, so one flush carries it all.
                let mut next = Some(d);
                let mut taken = 0;
                while let Some(d) = next.take() {
                    match d {
                        Ok(Live::Message { message, frame }) => s.deliver(&message, frame).await,
                        Ok(Live::Reset) => s.resync().await,
                        Err(broadcast::error::RecvError::Lagged(_)) => s.close_with(SLOW_CONSUMER, "slow consumer"),
                        Err(broadcast::error::RecvError::Closed) => s.close_with(1001, "node shutting down"),
                    }
                    taken += 1;
                    if taken < WRITE_BATCH && s.closing.is_none() {
                        next = match deliveries.try_recv() {
                            Ok(d) => Some(Ok(d)),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => None,
                        };
                    }
                }
            }
            sig = signals.next() => match sig {
                Some(Ok(sig)) => s.signal(sig),
                // Presence and typing are best-effort; a lagging receiver skips some.
                Some(Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(_))) => {}
                None => s.close_with(1001, "node shutting down"),
            },
            // Polled only while a send awaits its answer: an empty channel still costs a poll per turn.
            Some(frame) = acked.recv(), if s.awaiting > 0 => {
                s.awaiting -= 1;
                s.push(frame);
            }
        }
        // Hand whatever the turn queued to the socket now, without waiting on it.
        poll_fn(|cx| {
            s.poll_write(cx);
            Poll::Ready(())
        })
        .await;
    }
    s.finish().await;
    app.connections.fetch_sub(1, Ordering::Relaxed);
    if let Some(sig) = app.presence.disconnected(&user) {
        app.backend.send_signal(sig);
    }
}

impl<B: ChatBackend> Session<B> {
    /// Drives queued frames into the socket as far as it takes them without
    /// waiting, then reads the next client frame if there is one. Never waits on
    /// the client for a write: a full socket leaves frames in `pending`.
    fn poll_socket(&mut self, cx: &mut Context<'_>) -> Poll<SocketEvent> {
        self.poll_write(cx);
        if self.gone {
            return Poll::Ready(SocketEvent::Gone);
        }
        match self.ws.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(m))) => Poll::Ready(SocketEvent::Frame(m)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(SocketEvent::Invalid(e.to_string())),
            Poll::Ready(None) => Poll::Ready(SocketEvent::Gone),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Hands pending frames to the socket and flushes them, as far as it goes
    /// without blocking; the task is woken when the socket can take more.
    fn poll_write(&mut self, cx: &mut Context<'_>) {
        while !self.gone && !self.pending.is_empty() {
            match self.ws.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => self.gone = true,
                Poll::Pending => break,
            }
            if let Some(frame) = self.pending.pop_front() {
                if self.ws.start_send_unpin(frame).is_err() {
                    self.gone = true;
                }
                self.unflushed = true;
            }
        }
        if self.unflushed && !self.gone {
            match self.ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => self.gone = true,
                Poll::Pending => {}
            }
        }
    }

    /// Queues a frame; on overflow, closes the connection as a slow consumer.
    fn queue(&mut self, frame: WsMessage) -> bool {
        if self.closing.is_some() || self.gone {
            return false;
        }
        if self.pending.len() >= OUTBOX_FRAMES {
            self.close_with(SLOW_CONSUMER, "slow consumer");
            return false;
        }
        self.pending.push_back(frame);
        true
    }

    fn push(&mut self, frame: String) -> bool {
        self.queue(WsMessage::Text(frame.into()))
    }

    /// Queues a frame, waiting for room (replays, which the client asked for),
    /// but no longer than [`STALL`]: a client that takes nothing in that time is
    /// a slow consumer.
    async fn push_wait(&mut self, frame: String) -> bool {
        if self.closing.is_some() || self.gone {
            return false;
        }
        if self.pending.len() >= OUTBOX_FRAMES {
            let room = poll_fn(|cx| {
                self.poll_write(cx);
                if self.gone || self.pending.len() < OUTBOX_FRAMES {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            if tokio::time::timeout(STALL, room).await.is_err() {
                self.close_with(SLOW_CONSUMER, "slow consumer");
                return false;
            }
        }
        self.push(frame)
    }

    fn close_with(&mut self, code: u16, reason: &'static str) {
        if self.closing.is_none() {
            self.closing = Some((code, reason));
        }
    }

    /// Ends the session: frames already handed to the socket go out whole and in
    /// order, then the close frame, which gets [`CLOSE_GRACE`] to reach a client
    /// that is not reading; frames still pending are dropped.
    async fn finish(mut self) {
        self.pending.clear();
        if self.gone {
            return;
        }
        let (code, reason) = self.closing.unwrap_or((1000, "bye"));
        if code == SLOW_CONSUMER {
            self.app.metrics.slow_consumer_closes.inc();
        }
        let frame = CloseFrame { code, reason: reason.into() };
        if tokio::time::timeout(CLOSE_GRACE, self.ws.send(WsMessage::Close(Some(frame)))).await.is_err() {
            tracing::debug!(code, "close frame not taken within the grace period; dropping the socket");
            return;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.close()).await;
    }

    async fn client_frame(&mut self, text: &str) {
        let frame: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return self.fail(ApiError::bad_request("a frame is a JSON object"), None, None),
            Err(e) => return self.fail(ApiError::bad_request(format!("malformed JSON: {e}")), None, None),
        };
        let req = frame.get("req").filter(|r| r.is_string() || r.is_number()).cloned();
        let kind = frame.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        let result = match kind.as_str() {
            "join" => self.join(&frame, req.as_ref()).await,
            "leave" => self.leave(&frame, req.as_ref()).await,
            "send" => self.send(&frame, req.clone(), false),
            "dm" => self.send(&frame, req.clone(), true),
            "history" => self.history(&frame, req.as_ref()).await,
            "typing" => self.typing(&frame),
            "" => Err(ApiError::bad_request("a frame needs a \"type\"")),
            other => Err(ApiError::bad_request(format!("unknown frame type {other:?}"))),
        };
        if let Err(e) = result {
            self.fail(e, frame.get("id"), req.as_ref());
        }
    }

    fn fail(&mut self, e: ApiError, id: Option<&Value>, req: Option<&Value>) {
        self.push(error_frame(&e, id, req));
    }

    fn room_of(frame: &Value) -> Result<String, ApiError> {
        let room = frame.get("room").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("\"room\" is required"))?;
        validate::room_name(room)?;
        Ok(room.to_string())
    }

    fn seq_field(frame: &Value, name: &str) -> Result<Option<u64>, ApiError> {
        match frame.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| ApiError::bad_request(format!("\"{name}\" must be a non-negative integer"))),
        }
    }

    async fn join(&mut self, frame: &Value, req: Option<&Value>) -> Result<(), ApiError> {
        let room = Self::room_of(frame)?;
        let after = Self::seq_field(frame, "after")?;
        let head = if let Some((a, b)) = chat::dm_participants(&room) {
            if self.user != a && self.user != b {
                return Err(ApiError::new(Code::NotMember, "not your direct-message room"));
            }
            self.app.backend.reader().room(&room).ok().flatten().map_or(0, |r| r.last_seq)
        } else {
            match self.app.backend.propose(Event::RoomJoined { room: room.clone(), user: self.user.clone() }).await? {
                Outcome::Joined { head } => head,
                other => return Err(ApiError::new(Code::Unavailable, format!("unexpected outcome {other:?}"))),
            }
        };
        let online = self.online_members(&room);
        self.push(with_req(json!({ "type": "joined", "room": room, "head": head, "online": online }), req));
        if !self.rooms.contains_key(&room) {
            // Members already in the room learn that this (online) user is now one of them.
            let sig = PeerSignal::Joined { room: room.clone(), user: self.user.clone() };
            self.app.presence.receive(sig.clone(), std::time::Instant::now());
            self.app.backend.send_signal(sig);
        }
        // Replay from storage, then go live from where the replay stopped. Without
        // `after`, live delivery starts after the head the client was told.
        let start = after.unwrap_or(head);
        let last = self.replay(&room, start).await;
        self.rooms.insert(room, last);
        Ok(())
    }

    /// Sends every stored message of `room` after `after`; returns the last seq sent.
    async fn replay(&mut self, room: &str, after: u64) -> u64 {
        let mut last = after;
        loop {
            let page = match self.app.backend.reader().history(room, Some(last), None, REPLAY_PAGE) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(room, error = %e, "history read failed during replay");
                    return last;
                }
            };
            if page.messages.is_empty() {
                return last;
            }
            for m in &page.messages {
                if !self.push_wait(message_json(m).to_string()).await {
                    return last;
                }
                self.app.metrics.deliveries.inc();
                last = m.seq;
            }
        }
    }

    fn online_members(&self, room: &str) -> Vec<String> {
        match self.app.backend.reader().members(room) {
            Ok(members) => members.into_iter().filter(|u| self.app.presence.is_online(u)).collect(),
            Err(_) => Vec::new(),
        }
    }

    async fn leave(&mut self, frame: &Value, req: Option<&Value>) -> Result<(), ApiError> {
        let room = Self::room_of(frame)?;
        self.rooms.remove(&room);
        if chat::dm_participants(&room).is_none() {
            self.app.backend.propose(Event::RoomLeft { room: room.clone(), user: self.user.clone() }).await?;
        }
        self.push(with_req(json!({ "type": "left", "room": room }), req));
        Ok(())
    }

    /// `send` and `dm`: committed in a task of their own, so a slow commit does not
    /// hold up this connection's other frames; the ack comes when it is applied.
    fn send(&mut self, frame: &Value, req: Option<Value>, dm: bool) -> Result<(), ApiError> {
        let id = frame.get("id").cloned().ok_or_else(|| ApiError::bad_request("\"id\" is required"))?;
        let id_text = client_id_text(&id)?;
        let text = frame.get("text").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("\"text\" is required"))?;
        let room = if dm {
            let to = frame.get("to").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("\"to\" is required"))?;
            validate::user_name(to)?;
            if to == self.user {
                return Err(ApiError::bad_request("a direct message needs another user"));
            }
            if self.app.backend.reader().user(to).ok().flatten().is_none() {
                return Err(ApiError::bad_request(format!("no user named {to}")));
            }
            chat::dm_room(&self.user, to)
        } else {
            Self::room_of(frame)?
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return Err(ApiError::new(Code::Overloaded, format!("more than {MAX_IN_FLIGHT} sends awaiting their ack")));
        };
        let (app, user, acks, text) = (self.app.clone(), self.user.clone(), self.acks.clone(), text.to_string());
        self.awaiting += 1;
        tokio::spawn(async move {
            let frame = match send_message(&app, &user, &room, &id_text, &text).await {
                Ok(ack) => with_req(
                    json!({ "type": "ack", "room": room, "id": id, "seq": ack.seq, "ts": ack.ts_ms, "duplicate": ack.duplicate }),
                    req.as_ref(),
                ),
                Err(e) => error_frame(&e, Some(&id), req.as_ref()),
            };
            // The session may be gone; then nobody is waiting for the ack.
            let _ = acks.send(frame).await;
            drop(permit);
        });
        Ok(())
    }

    async fn history(&mut self, frame: &Value, req: Option<&Value>) -> Result<(), ApiError> {
        let room = Self::room_of(frame)?;
        let q = HistoryQuery {
            after: Self::seq_field(frame, "after")?,
            before: Self::seq_field(frame, "before")?,
            limit: Self::seq_field(frame, "limit")?.map(|l| l as usize),
            consistency: frame.get("consistency").and_then(Value::as_str).map(str::to_string),
        };
        let mut page = read_history(&self.app, &self.user, &room, &q).await?;
        page["type"] = json!("history");
        self.push(with_req(page, req));
        Ok(())
    }

    fn typing(&self, frame: &Value) -> Result<(), ApiError> {
        let room = Self::room_of(frame)?;
        if !self.rooms.contains_key(&room) {
            return Err(ApiError::new(Code::NotMember, "join the room first"));
        }
        let sig = PeerSignal::Typing { room, user: self.user.clone() };
        self.app.presence.receive(sig.clone(), std::time::Instant::now());
        self.app.backend.send_signal(sig);
        Ok(())
    }

    /// A message applied on this node.
    async fn deliver(&mut self, m: &Message, frame: Utf8Bytes) {
        let last = match self.rooms.get(&m.room) {
            Some(last) => *last,
            None => match chat::dm_participants(&m.room) {
                // DMs reach both users without a join: start at this message.
                Some((a, b)) if a == self.user || b == self.user => m.seq.saturating_sub(1),
                _ => return,
            },
        };
        if m.seq <= last {
            return;
        }
        if m.seq > last + 1 {
            let filled = self.replay(&m.room, last).await;
            self.rooms.insert(m.room.clone(), filled);
            return;
        }
        if self.queue(WsMessage::Text(frame)) {
            self.app.metrics.deliveries.inc();
            match self.rooms.get_mut(&m.room) {
                Some(l) => *l = m.seq,
                None => {
                    self.rooms.insert(m.room.clone(), m.seq);
                }
            }
        }
    }

    /// The state was replaced by a snapshot: fill every room from storage.
    async fn resync(&mut self) {
        let rooms: Vec<(String, u64)> = self.rooms.iter().map(|(r, l)| (r.clone(), *l)).collect();
        for (room, last) in rooms {
            let filled = self.replay(&room, last).await;
            self.rooms.insert(room, filled);
        }
    }

    fn signal(&mut self, sig: LocalSignal) {
        match sig {
            LocalSignal::Typing { room, user } => {
                if user != self.user && self.rooms.contains_key(&room) {
                    self.push(json!({ "type": "typing", "room": room, "user": user }).to_string());
                }
            }
            LocalSignal::Joined { room, user } => {
                if user != self.user && self.rooms.contains_key(&room) {
                    self.push(json!({ "type": "presence", "room": room, "user": user, "online": true }).to_string());
                }
            }
            LocalSignal::Presence { user, online } => {
                if user == self.user {
                    return;
                }
                let reader = self.app.backend.reader();
                let rooms: Vec<String> = self.rooms.keys().filter(|room| reader.is_member(room, &user).unwrap_or(false)).cloned().collect();
                for room in rooms {
                    self.push(json!({ "type": "presence", "room": room, "user": user, "online": online }).to_string());
                }
            }
        }
    }
}
