//! `chorusctl chat`: a terminal chat client over the public HTTP and WebSocket API.
//!
//! Lines typed are sent to the current room; commands: `/history`, `/dm USER TEXT`,
//! `/who`, `/join ROOM`, `/read` (marks the room read up to the last message
//! shown, for every device), `/quit`, and those that change a message by its seq
//! (`/reply`, `/edit`, `/delete`, `/react`, `/unreact`; see [`lines`]). While connected it keeps the cluster's member list
//! (`GET /v1/cluster`). When the connection drops it asks any member that answers for
//! `/v1/cluster/pick`, falling back to each known member and `--url` in turn; there it
//! resumes every room with `after` the last message shown (nothing missed or shown
//! twice) and resends every `send`/`dm` not yet acknowledged with its id (stored once).
//! An `https://` URL is reached over TLS, trusting the cluster's CA (`--ca`, the
//! `ca.crt` of `chorusctl certs init`) for HTTPS and WSS alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wire::http::{Cluster as ClusterView, Pick};
use wire::{ClientFrame, ErrorCode, Id, ServerFrame};

mod conn;
mod lines;

pub use conn::{client_tls, connect, connect_with, http_client, session};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long to wait before sending a `send`, `dm` or `join` again after the cluster
/// answered it `unavailable` or `overloaded`.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// The deadline of one HTTP call made while looking for a member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The deadline for opening a WebSocket (a host that is down may never answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the member list is read again while connected.
const MEMBERS_EVERY: Duration = Duration::from_secs(30);
/// How long `/quit` waits for the acks of messages still in flight.
const QUIT_GRACE: Duration = Duration::from_secs(5);

pub struct ChatArgs<'a> {
    pub url: &'a str,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub room: &'a str,
    /// An invite code for registering on a node run with `--registration invite`.
    pub invite: Option<&'a str>,
    /// The CA that signed the nodes' client-port certificates, for `https://`.
    pub ca: Option<&'a Path>,
}

/// A room this client follows: joined, or a DM room one of whose messages it was shown.
#[derive(Default)]
struct Room {
    /// The last seq shown here, or the `head` of the first `joined`; `None` before either,
    /// when a join needs no `after`.
    last: Option<u64>,
    /// Who is online here: `joined.online`, then this room's `presence` frames.
    online: BTreeSet<String>,
    /// When to send the `join` again, after the cluster could not take it.
    rejoin_at: Option<Instant>,
}

/// A frame to send, with its `req`.
#[derive(Clone, Debug, PartialEq)]
struct Outgoing {
    frame: ClientFrame,
    req: Option<Id>,
}

impl Outgoing {
    fn text(&self) -> String {
        self.frame.to_text(self.req.as_ref())
    }
}

/// A `send` or `dm` frame whose ack has not come.
struct Unacked {
    id: String,
    frame: Outgoing,
    /// When to send it again, after the cluster could not take it.
    resend_at: Option<Instant>,
}

/// What the client has shown and what it still owes the cluster, across connections.
/// Pure: the caller sends the frames it returns and prints what it shows.
struct State {
    /// The room lines are sent to.
    room: String,
    rooms: BTreeMap<String, Room>,
    /// In the order typed.
    unacked: Vec<Unacked>,
    next_id: u64,
    id_prefix: String,
}

/// A line for the terminal: standard output or (errors) standard error.
#[derive(Debug, PartialEq)]
enum Shown {
    Out(String),
    Err(String),
}

impl Shown {
    fn print(self) {
        match self {
            Shown::Out(s) => println!("{s}"),
            Shown::Err(s) => eprintln!("{s}"),
        }
    }
}

/// A `join` frame; its `req` names the room, so an error answering it can be traced back.
fn join_frame(room: &str, after: Option<u64>) -> Outgoing {
    Outgoing { frame: ClientFrame::Join { room: room.to_string(), after }, req: Some(Id::Text(format!("join:{room}"))) }
}

fn listing(names: &BTreeSet<String>) -> String {
    names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

impl State {
    fn new(room: &str, id_prefix: String) -> Self {
        State {
            room: room.to_string(),
            rooms: BTreeMap::from([(room.to_string(), Room::default())]),
            unacked: Vec::new(),
            next_id: 0,
            id_prefix,
        }
    }

    /// The frames that pick up where the last connection left off: a `join` of every room,
    /// with `after` the last message shown, then every unacknowledged frame, as first sent.
    fn resume(&mut self) -> Vec<Outgoing> {
        let joins = self.rooms.iter_mut().map(|(name, room)| {
            room.rejoin_at = None;
            join_frame(name, room.last)
        });
        let mut frames: Vec<Outgoing> = joins.collect();
        frames.extend(self.unacked.iter_mut().map(|u| {
            u.resend_at = None;
            u.frame.clone()
        }));
        frames
    }

    /// When the next frame refused for now is due to be sent again.
    fn next_retry(&self) -> Option<Instant> {
        let rejoins = self.rooms.values().filter_map(|r| r.rejoin_at);
        rejoins.chain(self.unacked.iter().filter_map(|u| u.resend_at)).min()
    }

    /// The frames refused for now whose pause is over, to be sent again.
    fn due(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut frames = Vec::new();
        for (name, room) in &mut self.rooms {
            if room.rejoin_at.is_some_and(|t| t <= now) {
                room.rejoin_at = None;
                frames.push(join_frame(name, room.last));
            }
        }
        for u in &mut self.unacked {
            if u.resend_at.is_some_and(|t| t <= now) {
                u.resend_at = None;
                frames.push(u.frame.clone());
            }
        }
        frames
    }

    /// Makes a `send` or `dm` with the next id and keeps it until its ack.
    fn outgoing(&mut self, make: impl FnOnce(Id) -> ClientFrame) -> Outgoing {
        self.next_id += 1;
        let id = format!("{}-{}", self.id_prefix, self.next_id);
        let frame = Outgoing { frame: make(Id::Text(id.clone())), req: None };
        self.unacked.push(Unacked { id, frame: frame.clone(), resend_at: None });
        frame
    }

    /// `/who`: who is online in the current room.
    fn who(&self) -> String {
        let online = self.rooms.get(&self.room).map(|r| listing(&r.online)).unwrap_or_default();
        format!("* online in {}: {online}", self.room)
    }

    /// Turns a typed line into a frame to send, or handles it here.
    fn line(&mut self, line: &str) -> Option<Outgoing> {
        let line = line.trim_end();
        if line.is_empty() {
            return None;
        }
        if let Some(rest) = line.strip_prefix("/dm ") {
            let Some((to, text)) = rest.split_once(' ') else {
                eprintln!("! usage: /dm USER TEXT");
                return None;
            };
            return Some(self.outgoing(|id| ClientFrame::Dm { to: to.to_string(), id, text: text.to_string() }));
        }
        if let Some(room) = line.strip_prefix("/join ") {
            let room = room.trim();
            self.room = room.to_string();
            let last = self.rooms.entry(self.room.clone()).or_default().last;
            return Some(join_frame(room, last));
        }
        match lines::room_command(line) {
            Some(Ok(action)) => {
                let room = self.room.clone();
                return Some(self.outgoing(|id| ClientFrame::RoomAction { room, id, action }));
            }
            Some(Err(usage)) => {
                eprintln!("! usage: {usage}");
                return None;
            }
            None => {}
        }
        match lines::Typed::parse(line) {
            Some(Ok(typed)) => {
                let room = self.room.clone();
                return Some(self.outgoing(|id| typed.frame(room, id)));
            }
            Some(Err(usage)) => {
                eprintln!("! usage: {usage}");
                return None;
            }
            None => {}
        }
        match line {
            "/history" => {
                let frame = ClientFrame::History { room: self.room.clone(), after: None, before: None, limit: Some(20), consistency: None };
                Some(Outgoing { frame, req: None })
            }
            "/read" => {
                // Everything shown here is read: the marker moves to the last seq shown.
                let seq = self.rooms.get(&self.room).and_then(|r| r.last).unwrap_or(0);
                Some(Outgoing { frame: ClientFrame::Read { room: self.room.clone(), seq }, req: None })
            }
            "/who" => {
                println!("{}", self.who());
                None
            }
            l if l.starts_with('/') => {
                eprintln!("! commands: /history, /dm USER TEXT, /who, /join ROOM, /read, /search TEXT, /rooms [TEXT], /thread SEQ, /nick NAME, /logout, {}, {}, /quit", lines::USAGE, lines::ROOM_USAGE);
                None
            }
            text => {
                let room = self.room.clone();
                Some(self.outgoing(|id| ClientFrame::Send { room, id, text: text.to_string(), reply_to: None }))
            }
        }
    }

    /// Takes in a frame from the server and returns what to show of it.
    fn receive(&mut self, f: &ServerFrame, now: Instant) -> Option<Shown> {
        match f {
            ServerFrame::Message(_) | ServerFrame::Edit(_) | ServerFrame::Delete(_) | ServerFrame::Reaction(_) | ServerFrame::RoomAction(_) => {
                let entry = f.clone().entry()?;
                // A DM room is followed from its first message, to be resumed like the others.
                let last = &mut self.rooms.entry(entry.room().to_string()).or_default().last;
                if last.is_some_and(|last| entry.seq() <= last) {
                    return None;
                }
                *last = Some(entry.seq());
                Some(Shown::Out(lines::describe(&entry)))
            }
            ServerFrame::Joined { room: name, head, online, unread, .. } => {
                let room = self.rooms.entry(name.clone()).or_default();
                room.online = online.iter().cloned().collect();
                // A join with `after` resumes from `last`; one without starts at the head.
                if room.last.is_none() {
                    room.last = Some(*head);
                }
                let unread = unread.as_ref().map(lines::unread).unwrap_or_default();
                Some(Shown::Out(format!("* joined {name} (head {head}{unread}); online: {}", listing(&room.online))))
            }
            ServerFrame::Presence { room: name, user, online } => {
                // Shown when it changes who is online in a room this client follows.
                let room = self.rooms.get_mut(name)?;
                let changed = if *online { room.online.insert(user.clone()) } else { room.online.remove(user) };
                let what = if *online { "is online" } else { "went offline" };
                changed.then(|| Shown::Out(format!("* {user} {what} in {name}")))
            }
            ServerFrame::Ack { id, .. } => {
                // A duplicate ack (a resend of a stored message) is as good as the first.
                let id = id.text();
                self.unacked.retain(|u| u.id != id);
                None
            }
            ServerFrame::Error { code, message, id, req } => Some(Shown::Err(self.refused(*code, message, id.as_ref(), req.as_ref(), now))),
            ServerFrame::Typing { room, user } => Some(Shown::Out(format!("* {user} is typing in {room}"))),
            ServerFrame::History { messages, .. } => {
                let shown: Vec<String> = messages.iter().map(|m| format!("  {}", lines::describe(m))).collect();
                (!shown.is_empty()).then(|| Shown::Out(shown.join("\n")))
            }
            ServerFrame::Left { room, .. } => Some(Shown::Out(format!("* left {room}"))),
            ServerFrame::Removed { room } => Some(Shown::Out(format!("* removed from {room}: you are no longer a member"))),
            ServerFrame::Marked { room, seq, .. } => Some(Shown::Out(format!("* {room} read up to #{seq}"))),
        }
    }

    /// An error frame: a `send`/`dm` (by `id`) or `join` (by `req`) the cluster could not
    /// take for now is sent again after a pause, the same id, so it is stored at most once;
    /// one it refused is dropped.
    fn refused(&mut self, code: ErrorCode, message: &str, id: Option<&Id>, req: Option<&Id>, now: Instant) -> String {
        let mut text = format!("! {code}: {message}");
        let retry = matches!(code, ErrorCode::Unavailable | ErrorCode::Overloaded);
        if let Some(id) = id.map(Id::text) {
            if let Some(i) = self.unacked.iter().position(|u| u.id == id) {
                if retry {
                    self.unacked[i].resend_at = Some(now + RETRY_AFTER);
                    text.push_str("; sending it again");
                } else {
                    self.unacked.remove(i);
                }
            }
        } else if let Some(Id::Text(req)) = req {
            if let Some(name) = req.strip_prefix("join:") {
                if !retry {
                    self.rooms.remove(name);
                } else if let Some(room) = self.rooms.get_mut(name) {
                    room.rejoin_at = Some(now + RETRY_AFTER);
                    text.push_str("; joining again");
                }
            }
        }
        text
    }
}

/// How to reach the cluster: its members as last seen, and a token that every member
/// takes (tokens are signed with the cluster's key).
struct Cluster<'a> {
    http: reqwest::Client,
    /// TLS for `wss://` members, with the CA given.
    tls: Option<Arc<ClientConfig>>,
    /// `--url`: the last resort.
    origin: String,
    /// `members[].client_url` from the last `GET /v1/cluster` answered.
    members: Vec<String>,
    user: &'a str,
    password: &'a str,
    token: String,
}

impl Cluster<'_> {
    /// `/search TEXT`: the best matches among the rooms this user may read,
    /// as `url`'s index has them, as lines.
    async fn search(&self, url: &str, q: &str) -> String {
        let mut target = match reqwest::Url::parse(&format!("{url}/v1/search")) {
            Ok(u) => u,
            Err(e) => return format!("! search: {e}"),
        };
        target.query_pairs_mut().append_pair("q", q).append_pair("limit", "20");
        match self.ask::<wire::http::SearchPage>("search", self.http.get(target)).await {
            Ok(page) => lines::search_results(&page),
            Err(line) => line,
        }
    }

    /// Sends `request` with this user's token and reads its JSON answer; a
    /// failure (unreachable, refused, unreadable) as its one `! what: …` line.
    async fn ask<T: DeserializeOwned>(&self, what: &str, request: reqwest::RequestBuilder) -> Result<T, String> {
        let answer = request.bearer_auth(&self.token).send().await.map_err(|e| format!("! {what}: {e}"))?;
        if !answer.status().is_success() {
            return Err(failure(what, answer).await);
        }
        answer.json::<T>().await.map_err(|e| format!("! {what}: {e}"))
    }

    /// `/logout`: revokes every session of this user (this one too).
    async fn logout(&self, url: &str) -> String {
        match self.http.post(format!("{url}/v1/sessions/revoke")).bearer_auth(&self.token).send().await {
            Ok(r) if r.status().is_success() => format!("* logged out: every session of {} is revoked", self.user),
            Ok(r) => failure("logout", r).await,
            Err(e) => format!("! logout: {e}"),
        }
    }

    /// `/rooms [TEXT]`: the rooms this user may see and join, by name or
    /// title matching `q` if given.
    async fn directory(&self, url: &str, q: &str) -> String {
        let mut target = match reqwest::Url::parse(&format!("{url}/v1/rooms")) {
            Ok(u) => u,
            Err(e) => return format!("! rooms: {e}"),
        };
        target.query_pairs_mut().append_pair("limit", "200");
        if !q.is_empty() {
            target.query_pairs_mut().append_pair("q", q);
        }
        match self.ask::<Vec<wire::http::RoomSummary>>("rooms", self.http.get(target)).await {
            Ok(rows) => lines::room_list(&rows, q),
            Err(line) => line,
        }
    }

    /// `/thread SEQ`: the thread of message `seq` in `room`, as the server holds it.
    async fn thread(&self, url: &str, room: &str, seq: u64) -> String {
        let target = format!("{url}/v1/rooms/{}/messages/{seq}/thread?limit=200", urlencode(room));
        match self.ask::<wire::http::ThreadPage>("thread", self.http.get(target)).await {
            Ok(page) => lines::thread(&page),
            Err(line) => line,
        }
    }

    /// `/nick NAME`: sets (or with no name clears) this user's display name.
    async fn set_display_name(&self, url: &str, name: &str) -> String {
        let change = wire::http::ProfileChange { display_name: name.to_string() };
        match self.ask::<wire::http::Profile>("nick", self.http.post(format!("{url}/v1/users/profile")).json(&change)).await {
            Ok(wire::http::Profile { display_name: Some(shown), .. }) => format!("* you are shown as {shown}"),
            Ok(_) => "* your display name is cleared".to_string(),
            Err(line) => line,
        }
    }

    /// Reads the member list from `url`; keeps the old one if it does not answer.
    async fn refresh(&mut self, url: &str) {
        let Some(view) = get_json::<ClusterView>(&self.http, &format!("{url}/v1/cluster")).await else { return };
        let members: Vec<String> = view.members.iter().map(|m| m.client_url.trim_end_matches('/').to_string()).collect();
        if !members.is_empty() {
            self.members = members;
        }
    }

    /// Opens a WebSocket to `url`, logging in again there if it refuses the token.
    async fn open(&mut self, url: &str) -> anyhow::Result<Ws> {
        match open_ws(url, &self.token, self.tls.as_ref()).await {
            Err(e) if is_unauthorized(&e) => {
                eprintln!("! {url} refused the session token; logging in again");
                self.token = session(&self.http, url, self.user, self.password, None).await?;
                open_ws(url, &self.token, self.tls.as_ref()).await
            }
            opened => opened,
        }
    }

    /// Connects again after `failed` dropped: to the member `/v1/cluster/pick` names, asked
    /// of each known member until one answers, else to each known member in turn; retries,
    /// pausing longer each round, until one takes the connection.
    async fn reconnect(&mut self, failed: &str) -> (String, Ws) {
        let mut pause = Duration::from_millis(300);
        loop {
            let mut urls = fallbacks(&self.members, &self.origin, failed);
            for asked in urls.clone() {
                if let Some(picked) = pick(&self.http, &asked).await {
                    urls.retain(|u| *u != picked);
                    urls.insert(0, picked);
                    break;
                }
            }
            for url in urls {
                match self.open(&url).await {
                    Ok(ws) => {
                        eprintln!("* connected to {url}");
                        return (url, ws);
                    }
                    Err(e) => eprintln!("! {e:#}"),
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

/// A room name in a URL path: room names are `[A-Za-z0-9_.-]` or `dm:a:b`,
/// so only `:` needs escaping.
fn urlencode(room: &str) -> String {
    room.replace(':', "%3A")
}

/// A refused request's answer as one line: `! what: message (code)`.
async fn failure(what: &str, answer: reqwest::Response) -> String {
    let status = answer.status();
    match answer.json::<wire::http::ErrorBody>().await {
        Ok(e) => format!("! {what}: {} ({})", e.message, e.error),
        Err(_) => format!("! {what}: {status}"),
    }
}

/// The URLs to try after `failed` dropped, each once: the known members, then `--url`;
/// `failed` last, as it may well be down.
fn fallbacks(members: &[String], origin: &str, failed: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for url in members.iter().map(String::as_str).chain([origin]) {
        if !urls.iter().any(|u| u == url) {
            urls.push(url.to_string());
        }
    }
    urls.sort_by_key(|u| u == failed);
    urls
}

async fn open_ws(url: &str, token: &str, tls: Option<&Arc<ClientConfig>>) -> anyhow::Result<Ws> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_with(url, token, tls)).await.map_err(|_| anyhow!("timed out opening a WebSocket to {url}"))?
}

/// Whether the WebSocket upgrade was answered 401 (a token this node does not take).
fn is_unauthorized(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<WsError>(), Some(WsError::Http(r)) if r.status().as_u16() == 401)
}

async fn get_json<T: DeserializeOwned>(http: &reqwest::Client, url: &str) -> Option<T> {
    http.get(url).timeout(PROBE_TIMEOUT).send().await.ok()?.error_for_status().ok()?.json().await.ok()
}

/// The member `/v1/cluster/pick` suggests, asked of `url`.
async fn pick(http: &reqwest::Client, url: &str) -> Option<String> {
    let p = get_json::<Pick>(http, &format!("{url}/v1/cluster/pick")).await?;
    Some(p.client_url.trim_end_matches('/').to_string())
}

async fn send(ws: &mut Ws, frame: &Outgoing) -> Result<(), WsError> {
    ws.send(Message::Text(frame.text().into())).await
}

/// How a connection ended.
enum Ended {
    Quit,
    Dropped,
}

pub async fn run(args: ChatArgs<'_>) -> anyhow::Result<()> {
    let password = match args.password {
        Some(p) => p.to_string(),
        None => std::env::var("CHORUS_PASSWORD").map_err(|_| anyhow!("pass --password or set CHORUS_PASSWORD"))?,
    };
    let http = http_client(args.ca, Duration::from_secs(10))?;
    let tls = args.ca.map(client_tls).transpose()?;
    let origin = args.url.trim_end_matches('/').to_string();
    let token = session(&http, &origin, args.user, &password, args.invite).await?;
    let mut cluster = Cluster { http, tls, origin: origin.clone(), members: Vec::new(), user: args.user, password: &password, token };
    let mut state = State::new(args.room, format!("{}-{:x}", args.user, rand::random::<u32>()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let (mut url, mut ws) = match cluster.open(&origin).await {
        Ok(ws) => (origin, ws),
        Err(e) => {
            eprintln!("! {e:#}; trying another member");
            cluster.reconnect(&origin).await
        }
    };
    loop {
        cluster.refresh(&url).await;
        if let Ended::Quit = converse(&mut state, &mut ws, &mut lines, &mut cluster, &url).await? {
            return Ok(());
        }
        (url, ws) = cluster.reconnect(&url).await;
    }
}

/// Chats over the connection to `url` until the user quits or the connection drops.
async fn converse(
    state: &mut State,
    ws: &mut Ws,
    lines: &mut Lines<BufReader<Stdin>>,
    cluster: &mut Cluster<'_>,
    url: &str,
) -> anyhow::Result<Ended> {
    let mut quit_by: Option<Instant> = None;
    let dropped = |state: &State, quit_by: Option<Instant>, why: &str| {
        if quit_by.is_some() {
            eprintln!("! {why}; quitting with {} messages unacknowledged", state.unacked.len());
            Ended::Quit
        } else {
            eprintln!("! {why}; reconnecting");
            Ended::Dropped
        }
    };
    let lost = format!("lost the connection to {url}");
    for f in state.resume() {
        if send(ws, &f).await.is_err() {
            return Ok(dropped(state, quit_by, &lost));
        }
    }
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + MEMBERS_EVERY, MEMBERS_EVERY);
    let at = |t: Option<Instant>| tokio::time::sleep_until(t.unwrap_or_else(Instant::now).into());
    loop {
        if quit_by.is_some() && state.unacked.is_empty() {
            return Ok(Ended::Quit);
        }
        let retry_at = state.next_retry();
        tokio::select! {
            line = lines.next_line(), if quit_by.is_none() => match line? {
                Some(l) if l.trim().starts_with("/search ") => {
                    let q = l.trim()["/search ".len()..].trim();
                    println!("{}", cluster.search(url, q).await);
                }
                Some(l) if l.trim() == "/logout" => {
                    // Every token of this user is refused from now on, on every node.
                    let line = cluster.logout(url).await;
                    let done = !line.starts_with('!');
                    println!("{line}");
                    if done {
                        return Ok(Ended::Quit);
                    }
                }
                Some(l) if l.trim() == "/rooms" || l.trim().starts_with("/rooms ") => {
                    let q = l.trim()["/rooms".len()..].trim();
                    println!("{}", cluster.directory(url, q).await);
                }
                Some(l) if l.trim().starts_with("/thread ") => {
                    let seq = l.trim()["/thread ".len()..].trim();
                    match seq.trim_start_matches('#').parse::<u64>() {
                        Ok(seq) => println!("{}", cluster.thread(url, &state.room, seq).await),
                        Err(_) => eprintln!("! usage: /thread SEQ"),
                    }
                }
                Some(l) if l.trim() == "/nick" || l.trim().starts_with("/nick ") => {
                    let name = l.trim()["/nick".len()..].trim();
                    println!("{}", cluster.set_display_name(url, name).await);
                }
                Some(l) if l.trim() != "/quit" => {
                    // A send or dm is kept until acked: one not written now is resent on reconnect.
                    if let Some(f) = state.line(&l) {
                        if send(ws, &f).await.is_err() {
                            return Ok(dropped(state, quit_by, &lost));
                        }
                    }
                }
                _ => {
                    if !state.unacked.is_empty() {
                        eprintln!("* waiting for {} messages to be acknowledged", state.unacked.len());
                    }
                    quit_by = Some(Instant::now() + QUIT_GRACE);
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    // A frame this client does not know is skipped.
                    if let Ok(f) = ServerFrame::parse(t.as_str()) {
                        if let Some(shown) = state.receive(&f, Instant::now()) {
                            shown.print();
                        }
                    }
                }
                Some(Ok(Message::Close(Some(c)))) => {
                    let why = format!("{url} closed the connection ({} {})", u16::from(c.code), c.reason.as_str());
                    return Ok(dropped(state, quit_by, &why));
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Ok(dropped(state, quit_by, &lost)),
                Some(Ok(_)) => {}
            },
            _ = at(retry_at), if retry_at.is_some() => {
                for f in state.due(Instant::now()) {
                    if send(ws, &f).await.is_err() {
                        return Ok(dropped(state, quit_by, &lost));
                    }
                }
            }
            _ = at(quit_by), if quit_by.is_some() => {
                eprintln!("! quitting with {} messages unacknowledged", state.unacked.len());
                return Ok(Ended::Quit);
            }
            _ = refresh.tick() => cluster.refresh(url).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// A server frame written as SPEC writes it.
    fn server(v: Value) -> ServerFrame {
        serde_json::from_value(v).expect("a server frame")
    }

    /// An outgoing frame as it goes on the wire.
    fn wire(o: &Outgoing) -> Value {
        serde_json::from_str(&o.text()).expect("JSON")
    }

    fn message(room: &str, seq: u64) -> Value {
        json!({ "type": "message", "room": room, "seq": seq, "id": "x", "from": "bob", "text": format!("m{seq}"), "ts": 1 })
    }

    fn shown(state: &mut State, frame: Value) -> Option<String> {
        match state.receive(&server(frame), Instant::now()) {
            Some(Shown::Out(s)) => Some(s),
            Some(Shown::Err(e)) => panic!("{e}"),
            None => None,
        }
    }

    #[test]
    fn resumes_each_room_after_the_last_message_shown() {
        let mut s = State::new("lobby", "ann-1".into());
        assert_eq!(s.resume().iter().map(wire).collect::<Vec<_>>(), vec![json!({ "type": "join", "room": "lobby", "req": "join:lobby" })], "a first join has no after");
        shown(&mut s, json!({ "type": "joined", "room": "lobby", "head": 3, "online": [] }));
        assert_eq!(shown(&mut s, message("lobby", 3)), None, "at or before the head");
        assert_eq!(shown(&mut s, message("lobby", 4)).as_deref(), Some("[lobby #4] bob: m4"));
        shown(&mut s, message("dm:ann:bob", 2)).expect("a DM is shown without a join");

        let resumed: Vec<Value> = s.resume().iter().map(wire).collect();
        assert_eq!(resumed[0], json!({ "type": "join", "room": "dm:ann:bob", "req": "join:dm:ann:bob", "after": 2 }));
        assert_eq!(resumed[1], json!({ "type": "join", "room": "lobby", "req": "join:lobby", "after": 4 }));
        assert_eq!(resumed.len(), 2);
        // The resumed join's head does not move the mark; its replay is shown once.
        shown(&mut s, json!({ "type": "joined", "room": "lobby", "head": 6, "online": [] }));
        assert_eq!(shown(&mut s, message("lobby", 4)), None);
        assert!(shown(&mut s, message("lobby", 5)).is_some());
        assert_eq!(shown(&mut s, message("lobby", 5)), None);
        assert!(shown(&mut s, message("lobby", 6)).is_some());
        assert_eq!(wire(&s.resume()[1])["after"], 6);
    }

    #[test]
    fn keeps_sends_until_acked_and_resends_them_with_their_ids() {
        let mut s = State::new("lobby", "ann-1".into());
        let a = s.line("first").expect("a send");
        let b = s.line("/dm bob second").expect("a dm");
        let c = s.line("third").expect("a send");
        let (a_wire, b_wire) = (wire(&a), wire(&b));
        assert_eq!((a_wire["id"].as_str(), b_wire["type"].as_str(), b_wire["to"].as_str()), (Some("ann-1-1"), Some("dm"), Some("bob")));
        assert_eq!(s.line("/who"), None);
        let ack = json!({ "type": "ack", "room": "lobby", "id": "ann-1-1", "seq": 1, "ts": 1, "duplicate": false });
        assert_eq!(s.receive(&server(ack), Instant::now()), None);

        // Unacked frames follow the joins on a new connection, unchanged and in order.
        let resumed = s.resume();
        assert_eq!(&resumed[1..], &[b.clone(), c.clone()]);

        // `unavailable`: the same frame again after a pause; a refusal drops it.
        let now = Instant::now();
        let unavailable = json!({ "type": "error", "code": "unavailable", "message": "no leader", "id": "ann-1-3" });
        assert!(matches!(s.receive(&server(unavailable), now), Some(Shown::Err(_))));
        assert_eq!(s.next_retry(), Some(now + RETRY_AFTER));
        assert!(s.due(now).is_empty());
        assert_eq!(s.due(now + RETRY_AFTER), vec![c.clone()]);
        assert_eq!(s.next_retry(), None);
        s.receive(&server(json!({ "type": "error", "code": "not_member", "message": "no", "id": "ann-1-2" })), now);
        // A duplicate ack (the first attempt was stored) settles it as well.
        s.receive(&server(json!({ "type": "ack", "room": "lobby", "id": "ann-1-3", "seq": 2, "ts": 1, "duplicate": true })), now);
        assert_eq!(s.resume().len(), 1, "only the join is left");
    }

    #[test]
    fn joins_refused_for_now_are_sent_again() {
        let mut s = State::new("lobby", "ann-1".into());
        let now = Instant::now();
        s.receive(&server(json!({ "type": "error", "code": "unavailable", "message": "", "req": "join:lobby" })), now);
        assert_eq!(s.due(now + RETRY_AFTER), vec![join_frame("lobby", None)]);
        s.line("/join bad!").expect("a join");
        s.receive(&server(json!({ "type": "error", "code": "bad_request", "message": "", "req": "join:bad!" })), now);
        assert_eq!(s.rooms.keys().collect::<Vec<_>>(), ["lobby"], "not joined again on reconnect");
    }

    #[test]
    fn who_lists_the_current_room_only() {
        let mut s = State::new("lobby", "ann-1".into());
        shown(&mut s, json!({ "type": "joined", "room": "lobby", "head": 0, "online": ["ann", "bob"] }));
        s.line("/join dev").expect("a join");
        shown(&mut s, json!({ "type": "joined", "room": "dev", "head": 0, "online": ["ann"] }));
        shown(&mut s, json!({ "type": "presence", "room": "lobby", "user": "cy", "online": true }));
        shown(&mut s, json!({ "type": "presence", "room": "dm:ann:dee", "user": "dee", "online": true }));
        assert_eq!(s.who(), "* online in dev: ann");
        assert!(shown(&mut s, json!({ "type": "presence", "room": "dev", "user": "bob", "online": true })).is_some());
        assert_eq!(shown(&mut s, json!({ "type": "presence", "room": "dev", "user": "bob", "online": true })), None, "no change");
        assert_eq!(s.who(), "* online in dev: ann, bob");
        s.line("/join lobby").expect("a join");
        shown(&mut s, json!({ "type": "presence", "room": "lobby", "user": "bob", "online": false }));
        assert_eq!(s.who(), "* online in lobby: ann, cy");
    }

    #[test]
    fn failover_tries_every_known_member_the_failed_one_last() {
        let members = ["http://a:1", "http://b:1", "http://c:1"].map(String::from);
        assert_eq!(fallbacks(&members, "http://b:1", "http://a:1"), ["http://b:1", "http://c:1", "http://a:1"]);
        assert_eq!(fallbacks(&[], "http://o:1", "http://o:1"), ["http://o:1"]);
        assert_eq!(fallbacks(&members, "http://o:1", "http://o:1"), ["http://a:1", "http://b:1", "http://c:1", "http://o:1"]);
    }

    #[test]
    fn a_refused_token_is_recognised() {
        use tokio_tungstenite::tungstenite::http::Response;
        let refused = |status: u16| {
            let response = Response::builder().status(status).body(None).expect("a response");
            anyhow::Error::from(WsError::Http(Box::new(response))).context("cannot open a WebSocket")
        };
        assert!(is_unauthorized(&refused(401)));
        assert!(!is_unauthorized(&refused(503)));
        assert!(!is_unauthorized(&anyhow!("connection refused")));
    }
}
