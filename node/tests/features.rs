//! The chat features of feature levels 4 and 5 over in-process three-node clusters,
//! each user on a node of their own: replies, threads, edits, deletes and
//! reactions; read markers with unread and mention counts; search; password
//! changes; and of level 5: private rooms, roles, invitations, kicks, bans,
//! mutes, topics and the room directory; of level 6: invite codes and display
//! names. Every change made through one node is
//! checked as another serves it.

mod common;

use std::time::{Duration, Instant};

use common::client::{self, connect, join, login, next, next_of, send, Ws};
use common::TestCluster;
use serde_json::{json, Value};

fn unlimited(c: &mut node::Config) {
    c.rate_limit = "0".parse().unwrap();
}

async fn get(base: &str, token: &str, path: &str) -> reqwest::Response {
    client::http().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap()
}

async fn get_json(base: &str, token: &str, path: &str) -> Value {
    let r = get(base, token, path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// Sends `frame` and returns the answer that echoes its `id` (an ack or an
/// error), skipping every other frame.
async fn answer(ws: &mut Ws, frame: Value) -> Value {
    let id = frame["id"].clone();
    send(ws, frame).await;
    loop {
        let f = next(ws, 10).await.expect("an answer");
        if (f["type"] == "ack" || f["type"] == "error") && f["id"] == id {
            return f;
        }
    }
}

/// The seq an acked change took.
async fn acked(ws: &mut Ws, frame: Value) -> u64 {
    let a = answer(ws, frame).await;
    assert_eq!(a["type"], "ack", "{a}");
    a["seq"].as_u64().unwrap()
}

/// The room's history as node `base` serves it, linearizable.
async fn history(base: &str, token: &str, room: &str) -> Vec<Value> {
    let page = get_json(base, token, &format!("/v1/rooms/{room}/messages?after=0&limit=1000&consistency=linearizable")).await;
    page["messages"].as_array().unwrap().clone()
}

fn by_seq(entries: &[Value], seq: u64) -> Value {
    entries.iter().find(|m| m["seq"] == seq).cloned().unwrap_or_else(|| panic!("no seq {seq} in {entries:?}"))
}

/// A three-node cluster with ann on node 1 and ben on node 2, both joined to
/// `lobby`.
struct Lobby {
    c: TestCluster,
    bases: [String; 3],
    ta: String,
    tb: String,
    a: Ws,
    b: Ws,
}

impl Lobby {
    async fn start() -> Self {
        let c = TestCluster::start_with(3, unlimited).await;
        let bases = [c.base(1), c.base(2), c.base(3)];
        let (ta, tb) = (login(&bases[0], "ann").await, login(&bases[1], "ben").await);
        let mut a = connect(&bases[0], &ta).await;
        let mut b = connect(&bases[1], &tb).await;
        join(&mut a, "lobby", None).await;
        join(&mut b, "lobby", None).await;
        Lobby { c, bases, ta, tb, a, b }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_edits_deletes_and_reactions_reach_every_node() {
    let Lobby { c, bases: [b1, b2, b3], ta, tb, mut a, mut b } = Lobby::start().await;
    // A connection that only listens, on the third node.
    let mut watch = connect(&b3, &tb).await;
    join(&mut watch, "lobby", None).await;

    let root = acked(&mut a, json!({"type": "send", "room": "lobby", "id": "a1", "text": "first draft"})).await;
    let reply = acked(&mut b, json!({"type": "send", "room": "lobby", "id": "b1", "text": "an answer", "reply_to": root})).await;
    let edit = acked(&mut a, json!({"type": "edit", "room": "lobby", "id": "a2", "target": root, "text": "final text"})).await;
    let react = acked(&mut b, json!({"type": "react", "room": "lobby", "id": "b2", "target": root, "emoji": "👍"})).await;
    // A reaction sent twice is one reaction; its retry (same id) is a duplicate.
    let react2 = acked(&mut a, json!({"type": "react", "room": "lobby", "id": "a3", "target": root, "emoji": "👍"})).await;
    let again = answer(&mut b, json!({"type": "react", "room": "lobby", "id": "b2", "target": root, "emoji": "👍"})).await;
    assert_eq!((again["seq"].as_u64(), again["duplicate"].clone()), (Some(react), json!(true)), "{again}");

    // Each change reaches the listener live as a frame of its own, in seq order.
    let mut live = Vec::new();
    while live.len() < 5 {
        let f = next(&mut watch, 10).await.expect("live entries");
        if ["message", "edit", "reaction"].contains(&f["type"].as_str().unwrap_or("")) {
            live.push(f);
        }
    }
    let kinds: Vec<(u64, &str)> = live.iter().map(|f| (f["seq"].as_u64().unwrap(), f["type"].as_str().unwrap())).collect();
    assert_eq!(kinds, [(root, "message"), (reply, "message"), (edit, "edit"), (react, "reaction"), (react2, "reaction")]);
    assert_eq!(live[1]["reply_to"].as_u64(), Some(root), "{}", live[1]);
    let e = &live[2];
    assert_eq!((e["target"].as_u64(), e["text"].clone(), e["from"].clone()), (Some(root), json!("final text"), json!("ann")), "{e}");
    let r = &live[3];
    assert_eq!((r["target"].as_u64(), r["emoji"].clone(), r["added"].clone(), r["from"].clone()), (Some(root), json!("👍"), json!(true), json!("ben")), "{r}");

    // Whom each change is allowed to: ben cannot edit or delete ann's message;
    // a target that is no message of the room, or a bad emoji, is refused.
    let e = answer(&mut b, json!({"type": "edit", "room": "lobby", "id": "b3", "target": root, "text": "mine now"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = answer(&mut b, json!({"type": "delete", "room": "lobby", "id": "b4", "target": root})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = answer(&mut a, json!({"type": "edit", "room": "lobby", "id": "a4", "target": edit, "text": "x"})).await;
    assert_eq!(e["code"], "not_found", "an edit entry is not a message: {e}");
    let e = answer(&mut a, json!({"type": "react", "room": "lobby", "id": "a5", "target": 999, "emoji": "🎉"})).await;
    assert_eq!(e["code"], "not_found", "{e}");
    let e = answer(&mut a, json!({"type": "react", "room": "lobby", "id": "a6", "target": root, "emoji": "two words"})).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    let e = answer(&mut a, json!({"type": "edit", "room": "nowhere", "id": "a7", "target": root, "text": "x"})).await;
    assert_eq!(e["code"], "not_member", "{e}");

    // A third node serves the message as it is now, and the thread by its root.
    let entries = history(&b3, &ta, "lobby").await;
    let m = by_seq(&entries, root);
    assert_eq!(m["text"], "final text", "{m}");
    assert!(m["edited_ts"].as_u64().is_some(), "{m}");
    let mut fans: Vec<String> = m["reactions"]["👍"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect();
    fans.sort();
    assert_eq!(fans, ["ann", "ben"], "{m}");
    assert_eq!(by_seq(&entries, reply)["reply_to"].as_u64(), Some(root));
    assert_eq!(by_seq(&entries, edit)["type"], "edit");
    let thread = get_json(&b3, &ta, &format!("/v1/rooms/lobby/messages/{root}/thread?consistency=linearizable")).await;
    let seqs: Vec<u64> = thread["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [root, reply], "{thread}");
    assert_eq!(get(&b3, &ta, &format!("/v1/rooms/lobby/messages/{edit}/thread")).await.status(), 404);
    assert_eq!(get(&b3, &ta, "/v1/rooms/lobby/messages/first/thread").await.status(), 400);

    // A delete redacts: no node serves the text, its edits' texts or its reactions.
    let delete = acked(&mut a, json!({"type": "delete", "room": "lobby", "id": "a8", "target": root})).await;
    for base in [&b1, &b2, &b3] {
        let entries = history(base, &tb, "lobby").await;
        let m = by_seq(&entries, root);
        assert_eq!((m["deleted"].clone(), m["text"].clone()), (json!(true), json!("")), "{base}: {m}");
        assert!(m.get("reactions").is_none(), "{base}: {m}");
        assert_eq!(by_seq(&entries, edit)["text"], "", "{base}: the edit's text is redacted too");
        assert!(!serde_json::to_string(&entries).unwrap().contains("first draft"), "{base}");
    }
    let e = answer(&mut a, json!({"type": "edit", "room": "lobby", "id": "a9", "target": root, "text": "back"})).await;
    assert_eq!(e["code"], "not_found", "a deleted message cannot be edited: {e}");

    // Joining with `after` on another node replays the changes in seq order.
    let mut late = connect(&b3, &tb).await;
    join(&mut late, "lobby", Some(reply)).await;
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let f = next(&mut late, 10).await.expect("replayed changes");
        if ["edit", "reaction", "delete", "message"].contains(&f["type"].as_str().unwrap_or("")) {
            kinds.push((f["seq"].as_u64().unwrap(), f["type"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(kinds.first(), Some(&(edit, "edit".to_string())), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&(delete, "delete".to_string())), "{kinds:?}");
    assert!(kinds.windows(2).all(|w| w[0].0 < w[1].0), "{kinds:?}");
    c.shutdown().await;
}

/// Waits until `GET /v1/rooms` on `base` (which reads this node's applied
/// state) shows `want` as the caller's read state in `lobby`.
async fn lobby_unread_until(base: &str, token: &str, want: Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rooms = get_json(base, token, "/v1/rooms").await;
        let got = rooms.as_array().unwrap().iter().find(|r| r["name"] == "lobby").map(|r| r["unread"].clone());
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "{base}: lobby's unread is {got:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_markers_and_unread_counts_are_shared_across_nodes() {
    let Lobby { c, bases: [b1, _, b3], tb, mut a, mut b, .. } = Lobby::start().await;
    for (i, text) in ["hello all", "@ben are you there", "mail to @benjamin", "@ben again"].iter().enumerate() {
        acked(&mut a, json!({"type": "send", "room": "lobby", "id": format!("m{i}"), "text": text})).await;
    }
    acked(&mut b, json!({"type": "send", "room": "lobby", "id": "own", "text": "my own @ben"})).await;

    // ben's counts on a node he never used: the other user's four, two naming him.
    lobby_unread_until(&b3, &tb, json!({"read": 0, "unread": 4, "mentions": 2})).await;

    send(&mut b, json!({"type": "read", "room": "lobby", "seq": 2, "req": "r1"})).await;
    let marked = next_of(&mut b, "marked").await;
    assert_eq!((marked["seq"].as_u64(), marked["req"].clone()), (Some(2), json!("r1")));
    // Monotonic: an older marker changes nothing; one past the end stops at it.
    send(&mut b, json!({"type": "read", "room": "lobby", "seq": 1})).await;
    assert_eq!(next_of(&mut b, "marked").await["seq"].as_u64(), Some(2));

    // Another device of ben's on node 3 starts from the same marker.
    let mut other = connect(&b3, &tb).await;
    let joined = join(&mut other, "lobby", None).await;
    assert_eq!(joined["unread"], json!({"read": 2, "unread": 2, "mentions": 1}), "{joined}");
    send(&mut other, json!({"type": "read", "room": "lobby", "seq": 1_000_000})).await;
    assert_eq!(next_of(&mut other, "marked").await["seq"].as_u64(), Some(5), "a marker never passes the last entry");
    lobby_unread_until(&b1, &tb, json!({"read": 5, "unread": 0, "mentions": 0})).await;

    // Outside the room: not_member, and no counts.
    let tc = login(&b1, "cat").await;
    let mut cat = connect(&b1, &tc).await;
    send(&mut cat, json!({"type": "read", "room": "lobby", "seq": 1, "req": "c"})).await;
    assert_eq!(next_of(&mut cat, "error").await["code"], "not_member");
    let rooms = get_json(&b1, &tc, "/v1/rooms").await;
    let lobby = rooms.as_array().unwrap().iter().find(|r| r["name"] == "lobby").unwrap().clone();
    assert!(lobby.get("unread").is_none(), "{lobby}");
    c.shutdown().await;
}

/// Searches on `base` until `check` holds for the answer (the index commits
/// within about a second of an apply), or fails after 10 s with the last answer.
async fn search_until(base: &str, token: &str, q: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::http().get(format!("{base}/v1/search")).query(&[("q", q)]).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200, "search {q}");
        let answer: Value = r.json().await.unwrap();
        if check(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "search {q} on {base}: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn texts(answer: &Value) -> Vec<String> {
    answer["results"].as_array().unwrap().iter().map(|r| r["message"]["text"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_follows_edits_deletes_and_reading_rights_on_every_node() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b2, b3) = (c.base(1), c.base(2), c.base(3));
    let (ta, tb, tc) = (login(&b1, "ann").await, login(&b2, "ben").await, login(&b3, "cat").await);
    let mut a = connect(&b1, &ta).await;
    join(&mut a, "lobby", None).await;
    let kept = acked(&mut a, json!({"type": "send", "room": "lobby", "id": "1", "text": "the blue heron lands"})).await;
    let edited = acked(&mut a, json!({"type": "send", "room": "lobby", "id": "2", "text": "a heron in typo"})).await;
    let gone = acked(&mut a, json!({"type": "send", "room": "lobby", "id": "3", "text": "heron secret to delete"})).await;
    acked(&mut a, json!({"type": "dm", "to": "ben", "id": "4", "text": "heron between us"})).await;

    // Every node indexes what it applies: ben searches on node 2, cat on node 3.
    let found = search_until(&b2, &tb, "heron", |r| r["results"].as_array().unwrap().len() == 4).await;
    assert!(texts(&found).contains(&"heron between us".to_string()), "ben reads his DM room: {found}");
    let found = search_until(&b3, &tc, "heron", |r| r["results"].as_array().unwrap().len() == 3).await;
    assert!(!texts(&found).contains(&"heron between us".to_string()), "cat does not read ann and ben's DM room: {found}");
    // Ranked: the message with the phrase comes first for a phrase query.
    let found = search_until(&b3, &tc, "\"blue heron\"", |r| !r["results"].as_array().unwrap().is_empty()).await;
    assert_eq!(found["results"][0]["message"]["seq"].as_u64(), Some(kept), "{found}");

    acked(&mut a, json!({"type": "edit", "room": "lobby", "id": "5", "target": edited, "text": "a heron in flight"})).await;
    acked(&mut a, json!({"type": "delete", "room": "lobby", "id": "6", "target": gone})).await;
    for (base, token) in [(&b1, &ta), (&b2, &tb), (&b3, &tc)] {
        let found = search_until(base, token, "typo OR secret", |r| r["results"].as_array().unwrap().is_empty()).await;
        assert_eq!(found["results"], json!([]), "{base}");
        let found = search_until(base, token, "flight", |r| r["results"].as_array().unwrap().len() == 1).await;
        assert_eq!(found["results"][0]["message"]["seq"].as_u64(), Some(edited), "{base}: {found}");
    }

    // Paging: one result per page, next_offset until the last.
    let first = get_json(&b3, &tc, "/v1/search?q=heron&limit=1").await;
    assert_eq!((first["results"].as_array().unwrap().len(), first["next_offset"].as_u64()), (1, Some(1)), "{first}");
    let second = get_json(&b3, &tc, "/v1/search?q=heron&limit=1&offset=1").await;
    assert_ne!(first["results"][0]["message"]["seq"], second["results"][0]["message"]["seq"]);

    // Errors: no query, an empty or oversized one, a bad limit, no token.
    for q in ["", "?q=", "?q=heron&limit=0", "?q=heron&limit=101", "?q=heron&offset=10001"] {
        assert_eq!(get(&b1, &ta, &format!("/v1/search{q}")).await.status(), 400, "{q}");
    }
    assert_eq!(get(&b1, &ta, &format!("/v1/search?q={}", "a".repeat(257))).await.status(), 400);
    assert_eq!(get(&b1, "forged", "/v1/search?q=heron").await.status(), 401);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_with_no_search_answers_unavailable_while_the_others_search() {
    let c = TestCluster::start_with(3, |cfg| {
        cfg.rate_limit = "0".parse().unwrap();
        cfg.no_search = cfg.id == 3;
    })
    .await;
    let (b1, b3) = (c.base(1), c.base(3));
    let (ta, tc) = (login(&b1, "ann").await, login(&b3, "cat").await);
    let mut a = connect(&b1, &ta).await;
    join(&mut a, "lobby", None).await;
    acked(&mut a, json!({"type": "send", "room": "lobby", "id": "1", "text": "an egret wades"})).await;
    search_until(&b1, &ta, "egret", |r| r["results"].as_array().unwrap().len() == 1).await;
    let r = get(&b3, &tc, "/v1/search?q=egret").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    // The node without an index still serves the message itself.
    let entries = history(&b3, &tc, "lobby").await;
    assert!(entries.iter().any(|m| m["text"] == "an egret wades"), "{entries:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_change_on_one_node_revokes_every_session_everywhere() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b2, b3) = (c.base(1), c.base(2), c.base(3));
    let token = login(&b1, "ann").await;
    let mut elsewhere = connect(&b2, &token).await;
    join(&mut elsewhere, "lobby", None).await;

    let change = |base: &str, token: &str, old: &str, new: &str| {
        client::http().post(format!("{base}/v1/users/password")).bearer_auth(token).json(&json!({"password": old, "new_password": new})).send()
    };
    let r = change(&b3, &token, "wrong-password", "password-2").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = change(&b3, &token, "password-1", "short").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = change(&b3, &token, "password-1", "password-2").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"name": "ann"}));

    // The WebSocket on node 2 is closed with 4001, and no node takes the token.
    let deadline = Instant::now() + Duration::from_secs(10);
    let close = loop {
        use futures::StreamExt;
        match tokio::time::timeout_at(deadline.into(), elsewhere.next()).await.expect("closed within 10 s") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, Some(4001));
    for base in [&b1, &b2, &b3] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(base, &token, "/v1/rooms").await.status() != 401 {
            assert!(Instant::now() < deadline, "{base} still takes the old token");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let login_with = |password: &'static str| client::http().post(format!("{b2}/v1/sessions")).json(&json!({"name": "ann", "password": password})).send();
    assert_eq!(login_with("password-1").await.unwrap().status(), 401);
    assert_eq!(login_with("password-2").await.unwrap().status(), 200);
    c.shutdown().await;
}

async fn post_json(base: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = client::http().post(format!("{base}{path}")).bearer_auth(token).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A room action over HTTP: its status and answer.
async fn room_action(base: &str, token: &str, room: &str, body: Value) -> (u16, Value) {
    post_json(base, token, &format!("/v1/rooms/{room}/actions"), body).await
}

/// Waits until `GET /v1/rooms` on `base` (this node's applied state) lists
/// `room` to the caller as `listed` says, and returns its row.
async fn listed_until(base: &str, token: &str, room: &str, listed: bool) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rooms = get_json(base, token, "/v1/rooms").await;
        let row = rooms.as_array().unwrap().iter().find(|r| r["name"] == room).cloned();
        if row.is_some() == listed {
            return row;
        }
        assert!(Instant::now() < deadline, "{base}: {room} listed is {}, not {listed}", row.is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `ws` gets a frame about `room` within `ms` (presence and typing
/// aside).
async fn hears_of(ws: &mut Ws, room: &str, ms: u64) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) = tokio::time::timeout(left, futures::StreamExt::next(ws)).await else {
            return None;
        };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        if f["room"] == room && f["type"] != "presence" && f["type"] != "typing" {
            return Some(f);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_rooms_roles_and_moderation_hold_on_every_node() {
    let c = TestCluster::start_with(3, unlimited).await;
    let [b1, b2, b3] = [c.base(1), c.base(2), c.base(3)];
    let (ta, tb, tc) = (login(&b1, "ann").await, login(&b2, "ben").await, login(&b3, "cy").await);

    // ann creates a private room; it exists once.
    let create = json!({"name": "secret", "visibility": "private", "title": "Secret Plans", "topic": "launch"});
    let (status, room) = post_json(&b1, &ta, "/v1/rooms", create.clone()).await;
    assert_eq!(status, 201, "{room}");
    assert_eq!((room["owner"].clone(), room["role"].clone(), room["visibility"].clone()), (json!("ann"), json!("owner"), json!("private")), "{room}");
    assert_eq!(post_json(&b2, &tb, "/v1/rooms", create).await.0, 409);
    assert_eq!(post_json(&b2, &tb, "/v1/rooms", json!({"name": "x", "visibility": "secretive"})).await.0, 400);
    let mut a = connect(&b1, &ta).await;
    join(&mut a, "secret", None).await;
    let hush = acked(&mut a, json!({"type": "send", "room": "secret", "id": "a1", "text": "hush now"})).await;

    // To ben, who is not invited, the room is not there: not listed, not
    // readable, not joinable (nor found by search, below).
    assert!(listed_until(&b2, &tb, "secret", false).await.is_none());
    let r = get(&b2, &tb, "/v1/rooms/secret/messages?consistency=linearizable").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_member");
    assert_eq!(get(&b2, &tb, "/v1/rooms/secret").await.status(), 403);
    let mut b = connect(&b2, &tb).await;
    send(&mut b, json!({"type": "join", "room": "secret", "req": "j1"})).await;
    let e = next_of(&mut b, "error").await;
    assert_eq!((e["code"].clone(), e["req"].clone()), (json!("forbidden"), json!("j1")), "{e}");
    // Only a moderator or the owner invites, and only a registered user.
    let (status, e) = room_action(&b1, &ta, "secret", json!({"id": "i0", "action": "invite", "user": "nobody"})).await;
    assert_eq!((status, e["error"].clone()), (404, json!("not_found")), "{e}");
    let (status, _) = room_action(&b1, &ta, "secret", json!({"id": "i0", "action": "promote", "user": "ben"})).await;
    assert_eq!(status, 400);

    // Invited, ben sees it listed, joins on his node, and reads and finds it.
    let (status, ack) = room_action(&b1, &ta, "secret", json!({"id": "i1", "action": "invite", "user": "ben"})).await;
    assert_eq!(status, 200, "{ack}");
    let row = listed_until(&b2, &tb, "secret", true).await.unwrap();
    assert_eq!((row["invited"].clone(), row["title"].clone(), row["visibility"].clone()), (json!(true), json!("Secret Plans"), json!("private")), "{row}");
    join(&mut b, "secret", Some(0)).await;
    assert_eq!(next_of(&mut b, "message").await["seq"].as_u64(), Some(hush));
    let invite = next_of(&mut b, "room_action").await;
    assert_eq!((invite["action"].clone(), invite["user"].clone(), invite["from"].clone()), (json!("invite"), json!("ben"), json!("ann")), "{invite}");
    // Once node 2's index holds it, ben finds it there and cy, not invited
    // yet, does not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&b2, &tb, "/v1/search?q=hush").await["results"].as_array().unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "ben never finds the message");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = get_json(&b2, &tc, "/v1/search?q=hush").await;
    assert_eq!(found["results"].as_array().unwrap().len(), 0, "{found}");

    // ann makes ben a moderator and invites cy, who joins on the third node.
    acked(&mut a, json!({"type": "room_action", "room": "secret", "id": "r1", "action": "set_role", "user": "ben", "role": "moderator"})).await;
    acked(&mut a, json!({"type": "room_action", "room": "secret", "id": "i2", "action": "invite", "user": "cy"})).await;
    let mut cy = connect(&b3, &tc).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send(&mut cy, json!({"type": "join", "room": "secret", "req": "j"})).await;
        let f = next(&mut cy, 10).await.unwrap();
        if f["type"] == "joined" {
            break;
        }
        assert!(f["code"] == "forbidden" && Instant::now() < deadline, "{f}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let details = get_json(&b3, &tc, "/v1/rooms/secret").await;
    let roles: Vec<(String, String)> =
        details["members"].as_array().unwrap().iter().map(|m| (m["name"].as_str().unwrap().into(), m["role"].as_str().unwrap().into())).collect();
    assert!(roles.contains(&("ben".into(), "moderator".into())) && roles.contains(&("cy".into(), "member".into())), "{details}");
    assert_eq!((details["member_count"].clone(), details["role"].clone()), (json!(3), json!("member")), "{details}");

    // A member may not moderate; a moderator may not act on the owner.
    let e = answer(&mut cy, json!({"type": "room_action", "room": "secret", "id": "c0", "action": "kick", "user": "ben"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = answer(&mut b, json!({"type": "room_action", "room": "secret", "id": "b1", "action": "kick", "user": "ann"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = answer(&mut b, json!({"type": "room_action", "room": "secret", "id": "b2", "action": "set_visibility", "visibility": "public"})).await;
    assert_eq!(e["code"], "forbidden", "only the owner sets the visibility: {e}");

    // Muted, cy cannot post; unmuted, cy can. A moderator deletes cy's message.
    acked(&mut b, json!({"type": "room_action", "room": "secret", "id": "b3", "action": "mute", "user": "cy", "secs": 600})).await;
    // The mute was applied before the send, whichever node takes it.
    let e = answer(&mut cy, json!({"type": "send", "room": "secret", "id": "c1", "text": "let me talk"})).await;
    assert_eq!(e["code"], "forbidden", "cy posted while muted: {e}");
    acked(&mut b, json!({"type": "room_action", "room": "secret", "id": "b4", "action": "unmute", "user": "cy"})).await;
    let spam = acked(&mut cy, json!({"type": "send", "room": "secret", "id": "c2", "text": "buy cheap watches"})).await;
    acked(&mut b, json!({"type": "delete", "room": "secret", "id": "b5", "target": spam})).await;
    let entries = history(&b3, &tc, "secret").await;
    assert_eq!(by_seq(&entries, spam)["deleted"], true);

    // Kicked, cy's connection gets the kick, then `removed`, then nothing of
    // the room; cy can no longer read it, nor join again uninvited.
    let kick = acked(&mut b, json!({"type": "room_action", "room": "secret", "id": "b6", "action": "kick", "user": "cy"})).await;
    // Entries before the kick may still arrive first, in order.
    let f = loop {
        let f = hears_of(&mut cy, "secret", 10_000).await.expect("the kick");
        if f["seq"].as_u64() >= Some(kick) || f["type"] == "removed" {
            break f;
        }
    };
    assert_eq!((f["type"].clone(), f["action"].clone(), f["seq"].as_u64()), (json!("room_action"), json!("kick"), Some(kick)), "{f}");
    assert_eq!(hears_of(&mut cy, "secret", 5_000).await.map(|f| f["type"].clone()), Some(json!("removed")));
    acked(&mut a, json!({"type": "send", "room": "secret", "id": "a2", "text": "now it is just us"})).await;
    assert_eq!(hears_of(&mut cy, "secret", 1_000).await, None, "a kicked connection hears nothing more");
    assert_eq!(get(&b3, &tc, "/v1/rooms/secret/messages?consistency=linearizable").await.status(), 403);
    let e = answer(&mut cy, json!({"type": "send", "room": "secret", "id": "c4", "text": "hello?"})).await;
    assert_eq!(e["code"], "not_member", "{e}");
    send(&mut cy, json!({"type": "join", "room": "secret", "req": "j2"})).await;
    assert_eq!(next_of(&mut cy, "error").await["code"], "forbidden");

    // Banned, cy cannot be invited back until unbanned.
    acked(&mut b, json!({"type": "room_action", "room": "secret", "id": "b7", "action": "ban", "user": "cy"})).await;
    let e = answer(&mut b, json!({"type": "room_action", "room": "secret", "id": "b8", "action": "invite", "user": "cy"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    acked(&mut b, json!({"type": "room_action", "room": "secret", "id": "b9", "action": "unban", "user": "cy"})).await;
    acked(&mut b, json!({"type": "room_action", "room": "secret", "id": "b10", "action": "invite", "user": "cy"})).await;

    // The topic and the visibility change for every node; the directory finds
    // the room by its title, case aside.
    acked(&mut b, json!({"type": "room_action", "room": "secret", "id": "b11", "action": "set_topic", "topic": "launch day"})).await;
    acked(&mut a, json!({"type": "room_action", "room": "secret", "id": "a3", "action": "set_visibility", "visibility": "public"})).await;
    assert_eq!(post_json(&b3, &tc, "/v1/rooms", json!({"name": "garden", "title": "Plants"})).await.0, 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dir = get_json(&b3, &tc, "/v1/rooms?q=PLANS").await;
        let names: Vec<&str> = dir.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        if names == ["secret"] {
            let row = &dir[0];
            assert_eq!((row["topic"].clone(), row["visibility"].clone()), (json!("launch day"), json!("public")), "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "directory: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_json(&b3, &tc, "/v1/rooms?q=plant").await[0]["name"], "garden");
    let entries = history(&b3, &tc, "secret").await;
    let actions: Vec<&str> = entries.iter().filter(|e| e["type"] == "room_action").map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["invite", "set_role", "invite", "mute", "unmute", "kick", "ban", "unban", "invite", "set_topic", "set_visibility"]);
    assert_eq!(get(&b3, &tc, "/v1/rooms/nowhere").await.status(), 404);

    // cy, unbanned and invited, joins again with `after: 0`: the replay goes
    // past the old kick (cy is a member again) to the end.
    let mut back = connect(&b3, &tc).await;
    join(&mut back, "secret", Some(0)).await;
    loop {
        let f = next(&mut back, 10).await.expect("the replay");
        assert_ne!(f["type"], "removed", "{f}");
        if f["type"] == "message" && f["text"] == "now it is just us" {
            break;
        }
    }
    c.shutdown().await;
}

/// Nodes 1 and 2 register by invitation; node 3 does not register at all.
fn by_invitation(c: &mut node::Config) {
    unlimited(c);
    c.registration = if c.id == 3 { "closed" } else { "invite" }.parse().unwrap();
}

async fn register(base: &str, name: &str, invite: Option<&str>) -> (u16, Value) {
    let mut body = json!({"name": name, "password": "password-1"});
    if let Some(code) = invite {
        body["invite"] = json!(code);
    }
    let r = client::http().post(format!("{base}/v1/users")).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn session(base: &str, name: &str) -> String {
    let r = client::http().post(format!("{base}/v1/sessions")).json(&json!({"name": name, "password": "password-1"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "login {name} at {base}");
    r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invite_codes_and_display_names_hold_on_every_node() {
    use proto::v1::{CreateInviteRequest, Empty, RevokeInviteRequest};
    let c = TestCluster::start_with(3, by_invitation).await;
    let [b1, b2, b3] = [c.base(1), c.base(2), c.base(3)];
    // A new cluster is raised to the newest level just after it forms.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (1..=3).any(|id| c.handle(id).node.reader.feature_level() < raft_store::format::CURRENT) {
        assert!(Instant::now() < deadline, "the new cluster never reached level {}", raft_store::format::CURRENT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let anon = |base: &str, path: &str| client::http().get(format!("{base}{path}")).send();
    for (base, mode) in [(&b1, "invite"), (&b2, "invite"), (&b3, "closed")] {
        let r: Value = anon(base, "/v1/registration").await.unwrap().json().await.unwrap();
        assert_eq!(r, json!({"mode": mode}), "{base}");
    }

    // Without a code, or with one nobody issued, nobody registers.
    let (status, e) = register(&b1, "ann", None).await;
    assert_eq!((status, e["error"].clone()), (403, json!("forbidden")), "{e}");
    let (status, e) = register(&b1, "ann", Some("guessed")).await;
    assert_eq!((status, e["error"].clone()), (403, json!("forbidden")), "{e}");
    let (status, e) = register(&b1, "ann", Some(&"x".repeat(129))).await;
    assert_eq!((status, e["error"].clone()), (400, json!("bad_request")), "{e}");

    // The operator makes a code for two registrations at the leader.
    let leader = c.wait_leader().await;
    let mut admin = c.admin(leader).await;
    let create = CreateInviteRequest { uses: 2, expires_in_secs: 3600, note: "the team".into() };
    let made = admin.create_invite(create).await.unwrap().into_inner();
    let invite = made.invite.clone().unwrap();
    assert_eq!((invite.uses_left, invite.note.as_str(), invite.id.len()), (2, "the team", 12), "{invite:?}");
    assert!(invite.expires_at_ms > invite.issued_ms + 3_500_000, "{invite:?}");
    // A follower does not make codes: it names the leader.
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let e = c.admin(follower).await.create_invite(CreateInviteRequest { uses: 1, expires_in_secs: 0, note: String::new() }).await.unwrap_err();
    assert!(c.redirected(&e).await.is_some(), "{e:?}");

    // Its two uses register ann on node 1 and ben on node 2, and then it is spent.
    assert_eq!(register(&b1, "ann", Some(&made.code)).await.0, 201);
    let (status, e) = register(&b2, "ann", Some(&made.code)).await;
    assert_eq!((status, e["error"].clone()), (409, json!("name_taken")), "a taken name uses nothing: {e}");
    assert_eq!(register(&b2, "ben", Some(&made.code)).await.0, 201);
    let (status, e) = register(&b2, "cy", Some(&made.code)).await;
    assert_eq!((status, e["error"].clone()), (403, json!("forbidden")), "{e}");
    let listed = c.admin(follower).await.list_invites(Empty {}).await.unwrap().into_inner();
    assert!(listed.invites.iter().all(|i| i.id != invite.id), "a spent code is gone: {listed:?}");

    // Node 3 registers nobody, with or without a code, but logs in users of the others.
    let (status, e) = register(&b3, "cy", Some(&made.code)).await;
    assert_eq!((status, e["error"].clone()), (403, json!("forbidden")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("closed"), "{e}");
    let t3 = session(&b3, "ben").await;

    // A revoked code registers nobody; revoking takes the listed id.
    let other = admin.create_invite(CreateInviteRequest { uses: 5, expires_in_secs: 0, note: "spare".into() }).await.unwrap().into_inner();
    let listed = admin.list_invites(Empty {}).await.unwrap().into_inner();
    let row = listed.invites.iter().find(|i| i.note == "spare").expect("listed").clone();
    assert_eq!((row.uses_left, row.expires_at_ms), (5, 0), "{row:?}");
    let e = admin.revoke_invite(RevokeInviteRequest { id: "zz".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    admin.revoke_invite(RevokeInviteRequest { id: row.id.clone() }).await.unwrap();
    let (status, _) = register(&b1, "cy", Some(&other.code)).await;
    assert_eq!(status, 403);

    // Display names: set through node 1, read through nodes 2 and 3.
    let t1 = session(&b1, "ann").await;
    let (status, p) = post_json(&b1, &t1, "/v1/users/profile", json!({"display_name": "Ann Lee 🌱"})).await;
    assert_eq!((status, p.clone()), (200, json!({"name": "ann", "display_name": "Ann Lee 🌱"})), "{p}");
    for bad in [" Ann", "Ann\u{7}", &"n".repeat(65)] {
        let (status, e) = post_json(&b1, &t1, "/v1/users/profile", json!({"display_name": bad})).await;
        assert_eq!((status, e["error"].clone()), (400, json!("bad_request")), "{bad:?}: {e}");
    }
    let t2 = session(&b2, "ben").await;
    let profiles = get_json(&b3, &t3, "/v1/users/profile?names=ann,ben,nobody,ann").await;
    assert_eq!(profiles, json!([{"name": "ann", "display_name": "Ann Lee 🌱"}, {"name": "ben"}]), "{profiles}");
    let r = get(&b2, &t2, "/v1/users/profile?names=ann,bad%20name").await;
    assert_eq!(r.status(), 400);

    // A room's member list carries them too.
    let mut a = connect(&b1, &t1).await;
    join(&mut a, "den", None).await;
    let mut b = connect(&b2, &t2).await;
    join(&mut b, "den", None).await;
    let details = get_json(&b2, &t2, "/v1/rooms/den").await;
    let members = details["members"].as_array().unwrap();
    assert_eq!(members.iter().find(|m| m["name"] == "ann").unwrap()["display_name"], "Ann Lee 🌱", "{details}");
    assert!(members.iter().find(|m| m["name"] == "ben").unwrap().get("display_name").is_none(), "{details}");

    // An operator hands den (ann's, as its first joiner) to ben: ann becomes a moderator.
    use proto::v1::SetRoomOwnerRequest;
    let set = |room: &str, user: &str| SetRoomOwnerRequest { room: room.into(), user: user.into() };
    admin.set_room_owner(set("den", "ben")).await.unwrap();
    let details = get_json(&b1, &t1, "/v1/rooms/den").await;
    assert_eq!(details["owner"], "ben", "{details}");
    let role = |d: &Value, who: &str| d["members"].as_array().unwrap().iter().find(|m| m["name"] == who).unwrap()["role"].clone();
    assert_eq!((role(&details, "ben"), role(&details, "ann")), (json!("owner"), json!("moderator")), "{details}");
    let e = admin.set_room_owner(set("den", "nobody")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = admin.set_room_owner(set("nowhere", "ann")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Clearing it is an empty name.
    let (status, p) = post_json(&b1, &t1, "/v1/users/profile", json!({"display_name": ""})).await;
    assert_eq!((status, p), (200, json!({"name": "ann"})));
    let profiles = get_json(&b1, &t1, "/v1/users/profile?names=ann").await;
    assert_eq!(profiles, json!([{"name": "ann"}]));
    let index = c.handle(leader).node.applied_index();
    c.assert_converged(index).await;
}
