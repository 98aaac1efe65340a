//! The workload: sending clients that retry with the same id on any node,
//! subscribers that resume from the last seq they saw, and history reads with
//! both consistencies. Every operation is recorded with its invocation and
//! completion time and its outcome (a timeout is unknown, never failed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;
use wire::http::{Credentials, HistoryPage, Session};
use wire::{ClientFrame, ErrorCode, HistoryEntry, ServerFrame};

use crate::history::{Change, History, MarkOp, Msg, Outcome, ReadOp, SendOp, Subscription};

pub const ROOM: &str = "jepsen";

pub fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(client_addr: &str, token: &str) -> Option<Ws> {
    let url = format!("ws://{client_addr}/v1/ws?token={token}");
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await.ok()?.ok()?;
    send_frame(&mut ws, ClientFrame::Join { room: ROOM.into(), after: None }).await.ok()?;
    loop {
        if let Frame::Known(ServerFrame::Joined { .. }) = next_frame(&mut ws, 5).await? {
            return Some(ws);
        }
    }
}

async fn send_frame(ws: &mut Ws, f: ClientFrame) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::Text(f.to_text(None).into())).await
}

/// A text frame from a node: one of SPEC's, or one this suite does not know.
enum Frame {
    Known(ServerFrame),
    Other,
}

/// The next text frame within `secs`; `None` if the connection ended or went quiet.
async fn next_frame(ws: &mut Ws, secs: u64) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return Some(ServerFrame::parse(t.as_str()).map_or(Frame::Other, Frame::Known)),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

pub async fn login(http: &reqwest::Client, client_addr: &str, user: &str) -> anyhow::Result<String> {
    let creds = Credentials { name: user.to_string(), password: "jepsen-password".to_string() };
    for _ in 0..100 {
        let _ = http.post(format!("http://{client_addr}/v1/users")).json(&creds).send().await;
        if let Ok(r) = http.post(format!("http://{client_addr}/v1/sessions")).json(&creds).send().await {
            if r.status().is_success() {
                let session: Session = r.json().await?;
                return Ok(session.token);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("cannot log {user} in")
}

/// One sending client: unique ids, retried with the same id on another node
/// until acked or out of attempts (then the outcome is unknown).
///
/// With `owner` (this client created the room, so it owns it) a tenth of its
/// ops set the room's topic, a room action only the owner may take.
#[allow(clippy::too_many_arguments)]
pub async fn sender(
    i: usize,
    addrs: Vec<(u64, String)>,
    token: String,
    seed: u64,
    start: Instant,
    deadline: Instant,
    owner: bool,
    h: Arc<Mutex<History>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((i as u64 + 1) * 0x9E37_79B9));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let user = format!("c{i}");
    let mut conn: Option<(u64, Ws)> = None;
    let mut n = 0;
    // This client's acked messages not (known to be) deleted: what it may edit, delete or react to.
    let mut mine: Vec<u64> = Vec::new();
    // The highest seq an ack gave this client: how far it has "read" the room.
    let mut high = 0u64;
    while Instant::now() < deadline {
        n += 1;
        if n % 5 == 0 && high > 0 {
            if let Some((node, ws)) = conn.as_mut() {
                let op = mark_read(ws, *node, i, &user, high, n, start).await;
                if op.outcome == Outcome::Unknown {
                    conn = None;
                }
                h.lock().unwrap_or_else(|p| p.into_inner()).marks.push(op);
                continue;
            }
        }
        if n % 7 == 0 {
            let (node, addr) = &addrs[rng.random_range(0..addrs.len())];
            let linearizable = rng.random_bool(0.7);
            let invoke = ms(start);
            // The first page carries the consistency; later pages are local reads of
            // the same node, whose state only moves forward.
            let (outcome, seen, changed) = match read_room(&http, addr, &token, linearizable).await {
                Ok(msgs) => (Outcome::Ok, msgs.iter().map(|m| (m.from.clone(), m.id.clone())).collect(), changed_only(msgs)),
                Err(ReadError::Refused) => (Outcome::Fail, Vec::new(), Vec::new()),
                Err(ReadError::Unknown) => (Outcome::Unknown, Vec::new(), Vec::new()),
            };
            let op = ReadOp { node: *node, room: ROOM.into(), linearizable, invoke_ms: invoke, complete_ms: ms(start), outcome, seen, changed };
            h.lock().unwrap_or_else(|p| p.into_inner()).reads.push(op);
        }
        let id = format!("{user}-{n}");
        // A quarter of the ops change one of this client's acked messages.
        let change = if owner && rng.random_bool(0.1) {
            Some(Change::Topic { text: format!("{id} topic") })
        } else if rng.random_bool(0.25) {
            change_of(&mut rng, &mine, &id)
        } else {
            None
        };
        let invoke = ms(start);
        let mut outcome = Outcome::Unknown;
        let mut seq = None;
        let mut node_used = 0;
        for _attempt in 0..4 {
            if conn.is_none() {
                let (node, addr) = &addrs[rng.random_range(0..addrs.len())];
                conn = ws_connect(addr, &token).await.map(|ws| (*node, ws));
            }
            let Some((node, ws)) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            node_used = *node;
            let frame = frame_of(&id, change.as_ref());
            if send_frame(ws, frame).await.is_err() {
                conn = None;
                continue;
            }
            let answer = loop {
                match next_frame(ws, 6).await {
                    Some(Frame::Known(f @ (ServerFrame::Ack { .. } | ServerFrame::Error { .. }))) if answers(&f, &id) => break Some(f),
                    Some(_) => continue,
                    None => break None,
                }
            };
            match answer {
                Some(ServerFrame::Ack { seq: s, .. }) => {
                    outcome = Outcome::Ok;
                    seq = Some(s);
                    break;
                }
                Some(ServerFrame::Error { code: ErrorCode::Unavailable, .. }) => {
                    conn = None;
                }
                Some(_) => {
                    outcome = Outcome::Fail;
                    break;
                }
                None => conn = None,
            }
        }
        high = high.max(seq.unwrap_or(0));
        match (&change, seq) {
            (None, Some(seq)) => mine.push(seq),
            (Some(Change::Delete { target }), Some(_)) => mine.retain(|s| s != target),
            _ => {}
        }
        let op = SendOp { client: i, node: node_used, user: user.clone(), room: ROOM.into(), id, invoke_ms: invoke, complete_ms: ms(start), outcome, seq, change };
        h.lock().unwrap_or_else(|p| p.into_inner()).sends.push(op);
    }
}

/// Marks the room read up to `asked` over `ws` and waits for the answer: the
/// marker after it applied, an error (failed), or nothing in time (unknown;
/// the read frame may still apply). A mark is not retried: a later one asks
/// at least as much.
async fn mark_read(ws: &mut Ws, node: u64, client: usize, user: &str, asked: u64, n: usize, start: Instant) -> MarkOp {
    let invoke = ms(start);
    let req = wire::Id::from(format!("mark-{n}").as_str());
    let mut outcome = Outcome::Unknown;
    let mut marked = None;
    let frame = ClientFrame::Read { room: ROOM.into(), seq: asked };
    let give_up = Instant::now() + Duration::from_secs(6);
    if ws.send(Message::Text(frame.to_text(Some(&req)).into())).await.is_ok() {
        while Instant::now() < give_up {
            match next_frame(ws, 6).await {
                Some(Frame::Known(ServerFrame::Marked { seq, req: Some(r), .. })) if r == req => {
                    outcome = Outcome::Ok;
                    marked = Some(seq);
                    break;
                }
                Some(Frame::Known(ServerFrame::Error { req: Some(r), code, .. })) if r == req => {
                    if code != ErrorCode::Unavailable {
                        outcome = Outcome::Fail;
                    }
                    break;
                }
                Some(_) => continue,
                None => break,
            }
        }
    }
    MarkOp { client, node, user: user.to_string(), asked, invoke_ms: invoke, complete_ms: ms(start), outcome, marked }
}

/// Each sender's read marker in the room as `addr` serves it (`GET
/// /v1/rooms`, this node's applied state); a user the row does not give a
/// marker for has none (0).
pub async fn read_markers(http: &reqwest::Client, addr: &str, users: &[(String, String)]) -> Result<BTreeMap<String, u64>, ReadError> {
    let mut out = BTreeMap::new();
    for (user, token) in users {
        let r = http.get(format!("http://{addr}/v1/rooms")).bearer_auth(token).send().await.map_err(|_| ReadError::Unknown)?;
        if r.status().is_client_error() {
            return Err(ReadError::Refused);
        }
        let rows: Vec<wire::http::RoomSummary> = r.error_for_status().map_err(|_| ReadError::Unknown)?.json().await.map_err(|_| ReadError::Unknown)?;
        let read = rows.iter().find(|row| row.name == ROOM).and_then(|row| row.unread.as_ref()).map_or(0, |u| u.read);
        out.insert(user.clone(), read);
    }
    Ok(out)
}

/// A change to one of `mine` (none while there is nothing to change): mostly
/// edits and reactions, some deletes. Texts carry the op's id, so every text
/// the suite writes is unique.
fn change_of(rng: &mut StdRng, mine: &[u64], id: &str) -> Option<Change> {
    let target = *mine.get(rng.random_range(0..mine.len().max(1)))?;
    Some(match rng.random_range(0..8) {
        0..=2 => Change::Edit { target, text: format!("{id} edit") },
        3 => Change::Delete { target },
        k => Change::React { target, emoji: ["👍", "🎉"][k % 2].to_string(), added: k != 7 },
    })
}

/// The frame of an op with client id `id`: a plain send, or the change.
fn frame_of(id: &str, change: Option<&Change>) -> ClientFrame {
    let (room, id_) = (ROOM.to_string(), wire::Id::from(id));
    match change.cloned() {
        None => ClientFrame::Send { room, id: id_, text: format!("{id} payload"), reply_to: None },
        Some(Change::Edit { target, text }) => ClientFrame::Edit { room, id: id_, target, text },
        Some(Change::Delete { target }) => ClientFrame::Delete { room, id: id_, target },
        Some(Change::React { target, emoji, added: true }) => ClientFrame::React { room, id: id_, target, emoji },
        Some(Change::React { target, emoji, added: false }) => ClientFrame::Unreact { room, id: id_, target, emoji },
        Some(Change::Topic { text }) => ClientFrame::RoomAction { room, id: id_, action: wire::RoomAction::SetTopic { topic: text } },
    }
}

/// The change entries of a read and the messages they target: what the
/// lifecycle checks need of it.
fn changed_only(entries: Vec<Msg>) -> Vec<Msg> {
    let targets: std::collections::BTreeSet<u64> = entries.iter().filter_map(|e| e.change.as_ref().and_then(Change::target)).collect();
    entries.into_iter().filter(|e| e.change.is_some() || targets.contains(&e.seq)).collect()
}

/// Whether an ack or error frame answers the send with client id `id`.
fn answers(f: &ServerFrame, id: &str) -> bool {
    match f {
        ServerFrame::Ack { id: got, .. } | ServerFrame::Error { id: Some(got), .. } => got.text() == id,
        _ => false,
    }
}

/// A room entry as the history records it: every kind has a seq, an id and a sender.
fn recorded(e: HistoryEntry) -> Msg {
    match e {
        HistoryEntry::Message(m) => Msg {
            room: m.room,
            seq: m.seq,
            id: m.id,
            from: m.from,
            ts: m.ts,
            text: m.text,
            change: None,
            edited: m.edited_ts.is_some(),
            deleted: m.deleted,
            reactions: m.reactions,
            as_of: 0,
        },
        HistoryEntry::Edit(e) => {
            let change = Some(Change::Edit { target: e.target, text: e.text.clone() });
            Msg { room: e.room, seq: e.seq, id: e.id, from: e.from, ts: e.ts, text: e.text, change, ..Msg::default() }
        }
        HistoryEntry::Delete(d) => {
            let change = Some(Change::Delete { target: d.target });
            Msg { room: d.room, seq: d.seq, id: d.id, from: d.from, ts: d.ts, change, ..Msg::default() }
        }
        HistoryEntry::Reaction(r) => {
            let change = Some(Change::React { target: r.target, emoji: r.emoji, added: r.added });
            Msg { room: r.room, seq: r.seq, id: r.id, from: r.from, ts: r.ts, change, ..Msg::default() }
        }
        // The only room action the workload takes is the owner's topic; any
        // other read here is an entry nobody sent, which the checker reports.
        HistoryEntry::RoomAction(c) => {
            let change = match c.action {
                wire::RoomAction::SetTopic { topic } => Some(Change::Topic { text: topic }),
                _ => None,
            };
            Msg { room: c.room, seq: c.seq, id: c.id, from: c.from, ts: c.ts, change, ..Msg::default() }
        }
    }
}

/// A subscriber: joins with `after`, records what it receives, and on any
/// disconnect resumes on another node from the last seq it saw.
pub async fn subscriber(i: usize, addrs: Vec<(u64, String)>, token: String, seed: u64, deadline: Instant, h: Arc<Mutex<History>>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xABCD ^ i as u64);
    let mut last = 0u64;
    while Instant::now() < deadline {
        let (node, addr) = addrs[rng.random_range(0..addrs.len())].clone();
        let url = format!("ws://{addr}/v1/ws?token={token}");
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if send_frame(&mut ws, ClientFrame::Join { room: ROOM.into(), after: Some(last) }).await.is_err() {
            continue;
        }
        let mut sub = Subscription { client: 1000 + i, node, room: ROOM.into(), after: last, received: Vec::new() };
        while Instant::now() < deadline + Duration::from_secs(2) {
            match next_frame(&mut ws, 3).await {
                Some(Frame::Known(frame)) => {
                    if let Some(entry) = frame.entry() {
                        let m = recorded(entry);
                        last = last.max(m.seq);
                        sub.received.push(m);
                    }
                }
                Some(_) => {}
                None if Instant::now() < deadline => break,
                None => {}
            }
        }
        h.lock().unwrap_or_else(|p| p.into_inner()).subscriptions.push(sub);
    }
}

pub enum ReadError {
    /// The node answered with a client error: nothing was read.
    Refused,
    Unknown,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadError::Refused => "the node refused the read (4xx)",
            ReadError::Unknown => "no answer (connection, timeout, 5xx or a bad body)",
        })
    }
}

/// Makes the workload's room with the first client as its owner (feature
/// level 5): whether it did, so that client may set the topic.
pub async fn create_room(http: &reqwest::Client, addr: &str, token: &str) -> bool {
    let body = wire::http::CreateRoom { name: ROOM.into(), visibility: wire::Visibility::Public, title: String::new(), topic: String::new() };
    for _ in 0..50 {
        match http.post(format!("http://{addr}/v1/rooms")).bearer_auth(token).json(&body).send().await {
            Ok(r) if r.status().is_success() => return true,
            // A retry of a create that applied: c0 owns it if the room says so.
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                let owner = async {
                    let r = http.get(format!("http://{addr}/v1/rooms/{ROOM}")).bearer_auth(token).send().await.ok()?;
                    r.json::<wire::http::RoomDetails>().await.ok()?.owner
                };
                return owner.await.as_deref() == Some("c0");
            }
            Ok(r) if r.status().is_client_error() => {
                eprintln!("chorus-jepsen: creating the room was refused ({}): no topic changes in this run", r.status());
                return false;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    false
}

/// The room's topic as `addr` serves it, with the room's last seq when read
/// (a linearizable read).
pub async fn read_topic(http: &reqwest::Client, addr: &str, token: &str) -> Result<(String, u64), ReadError> {
    let r = http.get(format!("http://{addr}/v1/rooms/{ROOM}")).bearer_auth(token).send().await.map_err(|_| ReadError::Unknown)?;
    if r.status().is_client_error() {
        return Err(ReadError::Refused);
    }
    let d: wire::http::RoomDetails = r.error_for_status().map_err(|_| ReadError::Unknown)?.json().await.map_err(|_| ReadError::Unknown)?;
    Ok((d.topic, d.last_seq))
}

/// Every message of the room as `addr` serves it, paged; the first page with the
/// asked consistency.
pub async fn read_room(http: &reqwest::Client, addr: &str, token: &str, linearizable: bool) -> Result<Vec<Msg>, ReadError> {
    let mut out: Vec<Msg> = Vec::new();
    loop {
        let after = out.last().map_or(0, |m| m.seq);
        let consistency = if linearizable && out.is_empty() { "linearizable" } else { "local" };
        let url = format!("http://{addr}/v1/rooms/{ROOM}/messages?after={after}&limit=1000&consistency={consistency}");
        let r = http.get(url).bearer_auth(token).send().await.map_err(|_| ReadError::Unknown)?;
        if r.status().is_client_error() {
            return Err(ReadError::Refused);
        }
        let page: HistoryPage = r.error_for_status().map_err(|_| ReadError::Unknown)?.json().await.map_err(|_| ReadError::Unknown)?;
        if page.messages.is_empty() {
            return Ok(out);
        }
        out.extend(page.messages.into_iter().map(|e| Msg { as_of: page.head, ..recorded(e) }));
    }
}

