//! `chorusctl chat`: a terminal chat client over the public HTTP and WebSocket API.
//!
//! Lines typed are sent to the current room; commands: `/history`, `/dm USER TEXT`,
//! `/who`, `/join ROOM`, `/quit`. When the connection drops it reconnects (to the
//! same URL, then to any member `/v1/cluster/pick` names) and resumes every room
//! with `after`, so nothing is missed or shown twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct ChatArgs<'a> {
    pub url: &'a str,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub room: &'a str,
}

/// Registers `user` if new, logs in, and returns a token.
pub async fn session(http: &reqwest::Client, url: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let creds = json!({ "name": user, "password": password });
    let r = http.post(format!("{url}/v1/users")).json(&creds).send().await.with_context(|| format!("cannot reach {url}"))?;
    if !(r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT) {
        bail!("register: {}", error_text(r).await);
    }
    let r = http.post(format!("{url}/v1/sessions")).json(&creds).send().await?;
    if !r.status().is_success() {
        bail!("login: {}", error_text(r).await);
    }
    let body: Value = r.json().await?;
    body["token"].as_str().map(str::to_string).ok_or_else(|| anyhow!("login answered without a token"))
}

async fn error_text(r: reqwest::Response) -> String {
    let status = r.status();
    match r.json::<Value>().await {
        Ok(v) => format!("{} ({})", v["message"].as_str().unwrap_or("?"), v["error"].as_str().unwrap_or(status.as_str())),
        Err(_) => status.to_string(),
    }
}

pub async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    let ws_url = format!("{}/v1/ws?token={token}", url.replacen("http", "ws", 1));
    // tungstenite's default 128 KiB read buffer is zeroed on every read attempt;
    // chat frames are a few hundred bytes, and the bench holds thousands of these
    // connections, each read once per frame.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(2 * 1024);
    Ok(tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true)
        .await
        .with_context(|| format!("cannot open a WebSocket to {url}"))?
        .0)
}

struct State {
    room: String,
    /// Joined rooms → last seq shown.
    rooms: BTreeMap<String, u64>,
    online: BTreeSet<String>,
    next_id: u64,
    id_prefix: String,
}

fn print_frame(state: &mut State, f: &Value) {
    match f["type"].as_str() {
        Some("message") => {
            let room = f["room"].as_str().unwrap_or("?").to_string();
            let seq = f["seq"].as_u64().unwrap_or(0);
            let last = state.rooms.entry(room.clone()).or_insert(0);
            if seq <= *last {
                return;
            }
            *last = seq;
            println!("[{room} #{seq}] {}: {}", f["from"].as_str().unwrap_or("?"), f["text"].as_str().unwrap_or(""));
        }
        Some("joined") => {
            state.online = f["online"].as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_string)).collect();
            println!("* joined {} (head {}); online: {}", f["room"].as_str().unwrap_or("?"), f["head"], state.online.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        Some("presence") => {
            let user = f["user"].as_str().unwrap_or("?").to_string();
            if f["online"] == true {
                state.online.insert(user.clone());
                println!("* {user} is online");
            } else {
                state.online.remove(&user);
                println!("* {user} went offline");
            }
        }
        Some("typing") => println!("* {} is typing in {}", f["user"].as_str().unwrap_or("?"), f["room"].as_str().unwrap_or("?")),
        Some("history") => {
            for m in f["messages"].as_array().into_iter().flatten() {
                println!("  [{} #{}] {}: {}", m["room"].as_str().unwrap_or("?"), m["seq"], m["from"].as_str().unwrap_or("?"), m["text"].as_str().unwrap_or(""));
            }
        }
        Some("error") => eprintln!("! {}: {}", f["code"].as_str().unwrap_or("error"), f["message"].as_str().unwrap_or("")),
        Some("left") => println!("* left {}", f["room"].as_str().unwrap_or("?")),
        _ => {}
    }
}

/// Turns a typed line into a frame, or handles it locally.
fn line_frame(state: &mut State, line: &str) -> Option<Value> {
    let line = line.trim_end();
    if line.is_empty() {
        return None;
    }
    let mut id = || {
        state.next_id += 1;
        format!("{}-{}", state.id_prefix, state.next_id)
    };
    if let Some(rest) = line.strip_prefix("/dm ") {
        let (to, text) = rest.split_once(' ')?;
        return Some(json!({ "type": "dm", "to": to, "id": id(), "text": text }));
    }
    match line {
        "/history" => Some(json!({ "type": "history", "room": state.room, "limit": 20 })),
        "/who" => {
            println!("* online in {}: {}", state.room, state.online.iter().cloned().collect::<Vec<_>>().join(", "));
            None
        }
        l if l.starts_with("/join ") => {
            state.room = l["/join ".len()..].trim().to_string();
            Some(json!({ "type": "join", "room": state.room }))
        }
        l if l.starts_with('/') => {
            eprintln!("! commands: /history, /dm USER TEXT, /who, /join ROOM, /quit");
            None
        }
        text => Some(json!({ "type": "send", "room": state.room, "id": id(), "text": text })),
    }
}

pub async fn run(args: ChatArgs<'_>) -> anyhow::Result<()> {
    let password = match args.password {
        Some(p) => p.to_string(),
        None => std::env::var("CHORUS_PASSWORD").map_err(|_| anyhow!("pass --password or set CHORUS_PASSWORD"))?,
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let mut url = args.url.trim_end_matches('/').to_string();
    let token = session(&http, &url, args.user, &password).await?;
    let mut state = State {
        room: args.room.to_string(),
        rooms: BTreeMap::new(),
        online: BTreeSet::new(),
        next_id: 0,
        id_prefix: format!("{}-{:x}", args.user, rand::random::<u32>()),
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut pending: Option<Value> = None;
    state.rooms.insert(state.room.clone(), 0);
    let mut first = true;
    loop {
        let mut ws = match connect(&url, &token).await {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("! {e:#}; trying another member");
                url = pick(&http, &url).await.unwrap_or(url);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // (Re)join every room, resuming after what was shown.
        for (room, last) in &state.rooms {
            let mut f = json!({ "type": "join", "room": room });
            if !first {
                f["after"] = json!(last);
            }
            ws.send(Message::Text(f.to_string().into())).await?;
        }
        first = false;
        if let Some(f) = pending.take() {
            ws.send(Message::Text(f.to_string().into())).await?;
        }
        loop {
            tokio::select! {
                line = lines.next_line() => match line? {
                    None => return Ok(()),
                    Some(l) if l.trim() == "/quit" => return Ok(()),
                    Some(l) => if let Some(f) = line_frame(&mut state, &l) {
                        if f["type"] == "join" {
                            state.rooms.entry(state.room.clone()).or_insert(0);
                        }
                        if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                            // Resent with the same id after reconnecting: no duplicate.
                            pending = Some(f);
                            break;
                        }
                    }
                },
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(f) = serde_json::from_str::<Value>(t.as_str()) {
                            print_frame(&mut state, &f);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        eprintln!("! disconnected from {url}; reconnecting");
                        break;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        url = pick(&http, &url).await.unwrap_or(url);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The member `/v1/cluster/pick` suggests, asked of `url`.
async fn pick(http: &reqwest::Client, url: &str) -> Option<String> {
    let v: Value = http.get(format!("{url}/v1/cluster/pick")).send().await.ok()?.json().await.ok()?;
    v["client_url"].as_str().map(str::to_string)
}
