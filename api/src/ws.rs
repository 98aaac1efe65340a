//! One WebSocket session (SPEC §4).
//!
//! A session has three parts: the reader loop here, which handles client frames
//! and fans in deliveries and presence signals; a writer task that owns the
//! socket's sink; and the [`Outbox`] between them, a bounded queue. Live frames
//! that do not fit close the connection with 4008 ("slow consumer") rather than
//! being dropped, so what a client receives has no silent gap.
//!
//! Nothing in a session waits on the client without a bound. The writer races
//! every socket write against the close request, so a client that stops reading
//! is closed as soon as its queue overflows, not when it next reads; a replay
//! that finds the queue full for [`STALL`] closes with 4008 too; and the close
//! frame itself gets [`CLOSE_GRACE`] to reach the client before the socket is
//! dropped.
//!
//! Each applied message is serialised once by the [`relay`] and shared by every
//! session it goes to.
//!
//! Gap-free delivery: the session subscribes to the node's deliveries before it
//! reads anything from storage, and remembers per room the last seq it sent.
//! A delivery at that seq + 1 is sent; an older one is skipped (already sent from
//! storage); a newer one means something was missed (a snapshot install), and
//! the gap is filled from storage first.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use raft_store::chat::{self, Event, Message, Outcome};
use raft_store::state_machine::Delivery;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

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
/// as a slow consumer: the writer has not got one frame out in that time.
pub const STALL: Duration = Duration::from_secs(5);
/// How long the close frame may wait behind unread data before the socket is
/// dropped without it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Frames the writer hands to the socket before one flush.
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

enum Out {
    Frame(String),
    /// A frame shared by every session it goes to.
    Shared(Utf8Bytes),
}

impl Out {
    fn into_message(self) -> WsMessage {
        match self {
            Out::Frame(text) => WsMessage::Text(Utf8Bytes::from(text)),
            Out::Shared(text) => WsMessage::Text(text),
        }
    }
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
pub async fn relay(mut from: broadcast::Receiver<Delivery>, to: broadcast::Sender<Live>) {
    loop {
        let live = match from.recv().await {
            // Nobody to serialise for: no session is open on this node.
            Ok(Delivery::Message(_)) if to.receiver_count() == 0 => continue,
            Ok(Delivery::Message(m)) => {
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

/// The bounded queue to the writer task, shared by the session's tasks, and the
/// session's close request (set once; the first reason wins).
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Out>,
    close: Arc<watch::Sender<Closing>>,
}

impl Outbox {
    /// Queues a live frame; on overflow, closes the connection as a slow consumer.
    fn push(&self, frame: String) -> bool {
        self.push_out(Out::Frame(frame))
    }

    fn push_out(&self, out: Out) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close_with(SLOW_CONSUMER, "slow consumer");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a frame, waiting for room (replays, which the client asked for),
    /// but no longer than [`STALL`]: a client that takes nothing in that time is
    /// a slow consumer.
    async fn push_wait(&self, frame: String) -> bool {
        if self.closed() {
            return false;
        }
        match tokio::time::timeout(STALL, self.tx.send(Out::Frame(frame))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.close_with(SLOW_CONSUMER, "slow consumer");
                false
            }
        }
    }

    fn close_with(&self, code: u16, reason: &'static str) {
        self.close.send_if_modified(|c| {
            if c.is_some() {
                return false;
            }
            *c = Some((code, reason));
            true
        });
    }

    fn closed(&self) -> bool {
        self.close.borrow().is_some()
    }
}

/// Waits until the session's close has been requested, and says why.
async fn close_requested(rx: &mut watch::Receiver<Closing>) -> Closing {
    // An error means the outbox is gone, which only happens as the session ends.
    rx.wait_for(Option::is_some).await.map_or(None, |c| *c)
}

/// Hands queued frames to the socket, a batch at a time with one flush per
/// batch, until the queue ends or a write fails. Any await here may wait on the
/// client; the writer drops this future when a close is requested.
async fn pump(sink: &mut SplitSink<WebSocket, WsMessage>, rx: &mut mpsc::Receiver<Out>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        for out in batch.drain(..) {
            if sink.feed(out.into_message()).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// The writer task: owns the sink until the session closes.
async fn writer<B: ChatBackend>(
    app: Arc<App<B>>,
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<Out>,
    mut close: watch::Receiver<Closing>,
) {
    let closing = tokio::select! {
        biased;
        c = close_requested(&mut close) => c,
        () = pump(&mut sink, &mut rx) => None,
    };
    // A frame whose write was interrupted is still whole in the socket's buffer,
    // so the close goes out after it; frames still queued are dropped.
    drop(rx);
    if let Some((code, reason)) = closing {
        if code == SLOW_CONSUMER {
            app.metrics.slow_consumer_closes.inc();
        }
        let frame = CloseFrame { code, reason: reason.into() };
        if tokio::time::timeout(CLOSE_GRACE, sink.send(WsMessage::Close(Some(frame)))).await.is_err() {
            tracing::debug!(code, "close frame not taken within the grace period; dropping the socket");
            return;
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
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
    out: Outbox,
    /// Subscribed rooms (and DM rooms seen) → last seq sent.
    rooms: HashMap<String, u64>,
    in_flight: Arc<Semaphore>,
}

async fn session<B: ChatBackend>(app: Arc<App<B>>, user: String, socket: WebSocket) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Out>(OUTBOX_FRAMES);
    let (close_tx, close_rx) = watch::channel::<Closing>(None);
    let out = Outbox { tx, close: Arc::new(close_tx) };
    let mut closed = close_rx.clone();
    let writer = tokio::spawn(writer(app.clone(), sink, rx, close_rx));

    // Subscribe before anything is read from storage: see the module docs.
    let mut deliveries = app.live.subscribe();
    let mut signals = app.presence.subscribe();
    app.connections.fetch_add(1, Ordering::Relaxed);
    if let Some(sig) = app.presence.connected(&user) {
        app.backend.send_signal(sig);
    }

    let mut s = Session { app: app.clone(), user: user.clone(), out: out.clone(), rooms: HashMap::new(), in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) };
    // One waiter for the whole session, not one per loop turn.
    let close = close_requested(&mut closed);
    tokio::pin!(close);
    loop {
        tokio::select! {
            // A close requested here or elsewhere (an ack task's overflow).
            _ = &mut close => break,
            frame = stream.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => s.client_frame(text.as_str()).await,
                Some(Ok(WsMessage::Binary(_))) => {
                    s.out.push(error_frame(&ApiError::bad_request("frames are JSON text"), None, None));
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Err(e)) => {
                    // Oversized or malformed at the protocol level: say so, then close.
                    tracing::debug!(user = %s.user, error = %e, "websocket read failed");
                    s.out.close_with(1009, "frame too large or malformed");
                    break;
                }
            },
            d = deliveries.recv() => match d {
                Ok(Live::Message { message, frame }) => s.deliver(&message, frame).await,
                Ok(Live::Reset) => s.resync().await,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    s.out.close_with(SLOW_CONSUMER, "slow consumer");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            sig = signals.recv() => match sig {
                Ok(sig) => s.signal(sig),
                // Presence and typing are best-effort; a lagging receiver skips some.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }

    out.close_with(1000, "bye");
    drop(s);
    drop(out);
    let _ = writer.await;
    app.connections.fetch_sub(1, Ordering::Relaxed);
    if let Some(sig) = app.presence.disconnected(&user) {
        app.backend.send_signal(sig);
    }
}

impl<B: ChatBackend> Session<B> {
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

    fn fail(&self, e: ApiError, id: Option<&Value>, req: Option<&Value>) {
        self.out.push(error_frame(&e, id, req));
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
        self.out.push(with_req(json!({ "type": "joined", "room": room, "head": head, "online": online }), req));
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
    async fn replay(&self, room: &str, after: u64) -> u64 {
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
                if !self.out.push_wait(message_json(m).to_string()).await {
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
        self.out.push(with_req(json!({ "type": "left", "room": room }), req));
        Ok(())
    }

    /// `send` and `dm`: committed in a task of their own, so a slow commit does not
    /// hold up this connection's other frames; the ack comes when it is applied.
    fn send(&self, frame: &Value, req: Option<Value>, dm: bool) -> Result<(), ApiError> {
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
        let (app, user, out, text) = (self.app.clone(), self.user.clone(), self.out.clone(), text.to_string());
        tokio::spawn(async move {
            let frame = match send_message(&app, &user, &room, &id_text, &text).await {
                Ok(ack) => with_req(
                    json!({ "type": "ack", "room": room, "id": id, "seq": ack.seq, "ts": ack.ts_ms, "duplicate": ack.duplicate }),
                    req.as_ref(),
                ),
                Err(e) => error_frame(&e, Some(&id), req.as_ref()),
            };
            out.push(frame);
            drop(permit);
        });
        Ok(())
    }

    async fn history(&self, frame: &Value, req: Option<&Value>) -> Result<(), ApiError> {
        let room = Self::room_of(frame)?;
        let q = HistoryQuery {
            after: Self::seq_field(frame, "after")?,
            before: Self::seq_field(frame, "before")?,
            limit: Self::seq_field(frame, "limit")?.map(|l| l as usize),
            consistency: frame.get("consistency").and_then(Value::as_str).map(str::to_string),
        };
        let mut page = read_history(&self.app, &self.user, &room, &q).await?;
        page["type"] = json!("history");
        self.out.push(with_req(page, req));
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
        if self.out.push_out(Out::Shared(frame)) {
            self.app.metrics.deliveries.inc();
            self.rooms.insert(m.room.clone(), m.seq);
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

    fn signal(&self, sig: LocalSignal) {
        match sig {
            LocalSignal::Typing { room, user } => {
                if user != self.user && self.rooms.contains_key(&room) {
                    self.out.push(json!({ "type": "typing", "room": room, "user": user }).to_string());
                }
            }
            LocalSignal::Joined { room, user } => {
                if user != self.user && self.rooms.contains_key(&room) {
                    self.out.push(json!({ "type": "presence", "room": room, "user": user, "online": true }).to_string());
                }
            }
            LocalSignal::Presence { user, online } => {
                if user == self.user {
                    return;
                }
                let reader = self.app.backend.reader();
                for room in self.rooms.keys() {
                    if reader.is_member(room, &user).unwrap_or(false) {
                        self.out.push(json!({ "type": "presence", "room": room, "user": user, "online": online }).to_string());
                    }
                }
            }
        }
    }
}
