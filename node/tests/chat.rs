//! The chat API against in-process three-node clusters, with real WebSocket
//! clients: every route of SPEC §3, the frames of §4, and the error codes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::client::{self, connect, join, login, next, next_of, send};
use common::TestCluster;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};

fn unlimited(c: &mut node::Config) {
    c.rate_limit = "0".parse().unwrap();
}

fn base(c: &TestCluster, id: u64) -> String {
    c.base(id)
}

/// Posts `text` as the holder of `token` to `room` through `base`.
async fn post(base: &str, token: &str, room: &str, id: Value, text: &str) -> reqwest::Response {
    client::http().post(format!("{base}/v1/rooms/{room}/messages")).bearer_auth(token).json(&json!({ "id": id, "text": text })).send().await.unwrap()
}

async fn error_code(r: reqwest::Response) -> Value {
    r.json::<Value>().await.unwrap()["error"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_and_log_in_on_any_node() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b2, b3) = (base(&c, 1), base(&c, 2), base(&c, 3));
    let http = client::http();
    let creds = json!({ "name": "alice", "password": "password-1" });

    let r = http.post(format!("{b1}/v1/users")).json(&creds).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "name": "alice" }));
    let r = http.post(format!("{b2}/v1/users")).json(&creds).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "name_taken");
    for bad in [json!({ "name": "no spaces", "password": "password-1" }), json!({ "name": "bob", "password": "short" }), json!({ "name": 5 })] {
        let r = http.post(format!("{b1}/v1/users")).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(error_code(r).await, "bad_request");
    }
    let r = http.post(format!("{b1}/v1/users")).body("{not json").header("content-type", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // Log in on node 2 right after registering on node 1; the token works on node 3.
    let r = http.post(format!("{b2}/v1/sessions")).json(&creds).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let session: Value = r.json().await.unwrap();
    let token = session["token"].as_str().unwrap().to_string();
    assert!(session["expires_at"].as_u64().unwrap() > 0);
    let r = http.get(format!("{b3}/v1/rooms")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let wrong = json!({ "name": "alice", "password": "password-2" });
    let r = http.post(format!("{b1}/v1/sessions")).json(&wrong).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "unauthorized");
    let r = http.get(format!("{b3}/v1/rooms")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = http.get(format!("{b3}/v1/rooms")).bearer_auth("forged.token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posting_needs_membership_and_an_id_is_stored_once() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b3) = (base(&c, 1), base(&c, 3));
    let token = login(&b1, "alice").await;
    let r = post(&b3, &token, "general", json!("c1"), "hi").await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "not_member");
    // Joining (over WebSocket) gives membership.
    let mut ws = connect(&b3, &token).await;
    let joined = join(&mut ws, "general", None).await;
    assert_eq!((joined["head"].clone(), joined["req"].clone()), (json!(0), json!("j")));
    let r = post(&b3, &token, "general", json!("c1"), "hi").await;
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    assert_eq!((ack["room"].clone(), ack["seq"].clone(), ack["id"].clone(), ack["duplicate"].clone()), (json!("general"), json!(1), json!("c1"), json!(false)));
    let again: Value = post(&b3, &token, "general", json!("c1"), "hi").await.json().await.unwrap();
    assert_eq!((again["seq"].clone(), again["duplicate"].clone()), (json!(1), json!(true)));
    // The id reused in another room stores nothing there, and the ack names
    // the room the message is in.
    join(&mut ws, "elsewhere", None).await;
    let reused: Value = post(&b3, &token, "elsewhere", json!("c1"), "hi again").await.json().await.unwrap();
    assert_eq!((reused["room"].clone(), reused["seq"].clone(), reused["duplicate"].clone()), (json!("general"), json!(1), json!(true)));
    let r = post(&b3, &token, "general", json!(7), &"x".repeat(4097)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "too_large");
    // A body over the frame limit is refused as too large, not as malformed.
    let r = post(&b3, &token, "general", json!(8), &"x".repeat(70 * 1024)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "too_large");
    assert_eq!(post(&b3, &token, "general", json!(7), "numeric id").await.status(), 200);

    // History, both consistencies, on every node; the room list.
    let http = client::http();
    for b in [&b1, &base(&c, 2), &b3] {
        let url = format!("{b}/v1/rooms/general/messages?consistency=linearizable&limit=10");
        let page: Value = http.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["head"], 2, "{b}");
        let msgs = page["messages"].as_array().unwrap();
        assert_eq!((msgs[0]["text"].clone(), msgs[0]["from"].clone(), msgs[1]["id"].clone()), (json!("hi"), json!("alice"), json!("7")));
        let r = http.get(format!("{b}/v1/rooms/general/messages?consistency=local")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{b}");
    }
    for query in ["limit=5000", "after=x"] {
        let r = http.get(format!("{b1}/v1/rooms/general/messages?{query}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
    }
    let rooms: Value = http.get(format!("{b1}/v1/rooms")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    // Each row carries the caller's read state in it (feature level 4): alice
    // posted both messages herself, so nothing is unread. From level 5 a row
    // also says the room's visibility and, to a member, their role: alice
    // joined both first, so she owns them.
    let read = json!({ "read": 0, "unread": 0, "mentions": 0 });
    let row = |name: &str, last_seq: u64| json!({ "name": name, "members": 1, "last_seq": last_seq, "unread": read, "visibility": "public", "role": "owner" });
    assert_eq!(rooms, json!([row("elsewhere", 0), row("general", 2)]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_routes_name_every_member_and_spread_picks() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b3) = (base(&c, 1), base(&c, 3));
    let http = client::http();
    let token = login(&b1, "alice").await;
    let _ws = connect(&b3, &token).await;
    // The connection counts once the session is open.
    let mut cluster = Value::Null;
    for _ in 0..50 {
        cluster = http.get(format!("{}/v1/cluster", base(&c, 2))).send().await.unwrap().json().await.unwrap();
        if cluster["members"].as_array().unwrap().iter().any(|m| m["id"] == 3 && m["connections"] == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_3 = cluster["members"].as_array().unwrap().iter().find(|m| m["id"] == 3).unwrap().clone();
    assert_eq!(on_3["connections"], 1, "{cluster}");
    let leader = cluster["leader"].as_u64().unwrap();
    assert!(cluster["members"].as_array().unwrap().iter().any(|m| m["id"] == leader && m["role"] == "leader"));
    // Every node names the same cluster, a term, and each member's client URL
    // (the address it serves on) and applied index.
    let mut cluster_ids = Vec::new();
    for id in 1..=3 {
        let view: Value = http.get(format!("{}/v1/cluster", base(&c, id))).send().await.unwrap().json().await.unwrap();
        cluster_ids.push(view["cluster_id"].as_str().unwrap_or_else(|| panic!("no cluster_id: {view}")).to_string());
        assert!(view["term"].as_u64().is_some_and(|t| t >= 1), "term: {view}");
        let members = view["members"].as_array().unwrap();
        let mut ids: Vec<u64> = members.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, [1, 2, 3], "{view}");
        for m in members {
            let mid = m["id"].as_u64().unwrap();
            assert_eq!(m["client_url"], json!(base(&c, mid)), "{view}");
            assert!(m["applied_index"].as_u64().is_some_and(|i| i > 0), "applied_index: {view}");
        }
    }
    assert!(!cluster_ids[0].is_empty());
    assert!(cluster_ids.iter().all(|i| *i == cluster_ids[0]), "{cluster_ids:?}");
    let pick: Value = http.get(format!("{b3}/v1/cluster/pick")).send().await.unwrap().json().await.unwrap();
    assert_ne!(pick["client_url"], json!(b3), "node 3 has the one connection");
    // A burst of clients picking at once is spread over the members, not all
    // sent to the one that had the fewest connections when probed.
    let burst = futures::future::join_all((0..6).map(|_| {
        let (http, url) = (http.clone(), format!("{b1}/v1/cluster/pick"));
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap()["client_url"].clone() }
    }))
    .await;
    let distinct: std::collections::BTreeSet<String> = burst.iter().map(|u| u.to_string()).collect();
    assert!(distinct.len() >= 2, "a burst of picks all went to one member: {burst:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_unknown_routes() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b3) = (base(&c, 1), base(&c, 3));
    let http = client::http();
    let token = login(&b1, "alice").await;
    let mut ws = connect(&b3, &token).await;
    join(&mut ws, "general", None).await;
    for id in ["m1", "m2"] {
        assert_eq!(post(&b3, &token, "general", json!(id), "hi").await.status(), 200);
    }
    assert_eq!(http.get(format!("{b1}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{b1}/readyz")).send().await.unwrap().status(), 200);
    let metrics = http.get(format!("{b3}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in ["chorus_raft_term", "chorus_raft_leader", "chorus_raft_commit_index", "chorus_raft_applied_index", "chorus_ws_connections", "chorus_messages_committed_total", "chorus_ack_latency_seconds_bucket", "chorus_delivery_lag_seconds_bucket", "chorus_deliveries_total", "chorus_slow_consumer_closes_total", "chorus_log_sync_seconds_bucket", "chorus_write_stage_seconds_count{stage=\"commit\"}", "chorus_write_stage_seconds_count{stage=\"sync\"}"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // Node 3 synced its log for them (every node syncs what it appends).
    let syncs = metrics.lines().find_map(|l| l.strip_prefix("chorus_log_sync_seconds_count ")).and_then(|v| v.trim().parse::<u64>().ok());
    assert!(syncs.is_some_and(|n| n > 0), "no log syncs counted: {syncs:?}");
    // Both messages were applied on node 3 while a session was open there. The
    // second may still be waiting for its delivery round (at most 75 ms).
    let mut metrics = metrics;
    for _ in 0..50 {
        if metrics.contains("chorus_delivery_lag_seconds_count 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = http.get(format!("{b3}/metrics")).send().await.unwrap().text().await.unwrap();
    }
    assert!(metrics.contains("chorus_delivery_lag_seconds_count 2"), "{metrics}");
    // The delivery rounds that wrote them were timed.
    assert!(metrics.contains("chorus_fanout_round_seconds_count"), "{metrics}");
    assert!(!metrics.contains("chorus_fanout_round_seconds_count 0\n"), "{metrics}");
    assert_eq!(http.get(format!("{b1}/nope")).send().await.unwrap().status(), 404);
    // A route asked with a method it does not serve: 405, with the error body.
    for (method, path) in [(reqwest::Method::POST, "/v1/ws"), (reqwest::Method::DELETE, "/v1/users"), (reqwest::Method::PUT, "/v1/rooms")] {
        let r = http.request(method.clone(), format!("{b1}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(error_code(r).await, "method_not_allowed", "{method} {path}");
    }
    c.shutdown().await;
}

/// DM rooms: listed for their two users only, with both as members, and
/// readable by them only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dm_rooms_are_listed_and_readable_by_their_two_users_only() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b3) = (base(&c, 1), base(&c, 3));
    let http = client::http();
    let token = login(&b1, "alice").await;
    let bob = login(&b1, "bob").await;
    let carl = login(&b1, "carl").await;
    let mut ws = connect(&b3, &token).await;
    join(&mut ws, "general", None).await;
    send(&mut ws, json!({ "type": "dm", "to": "bob", "id": "d1", "text": "psst" })).await;
    assert_eq!(next_of(&mut ws, "ack").await["room"], "dm:alice:bob");
    // Each row carries the caller's read state: alice's DM is unread for bob only.
    for (who, tok, unread) in [("alice", &token, 0), ("bob", &bob, 1)] {
        let rooms: Value = http.get(format!("{b3}/v1/rooms")).bearer_auth(tok).send().await.unwrap().json().await.unwrap();
        let row = json!({ "name": "dm:alice:bob", "members": 2, "last_seq": 1, "unread": { "read": 0, "unread": unread, "mentions": 0 } });
        assert!(rooms.as_array().unwrap().contains(&row), "{who}: {rooms}");
        let page: Value = http.get(format!("{b3}/v1/rooms/dm:alice:bob/messages")).bearer_auth(tok).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["messages"][0]["text"], "psst", "{who}");
    }
    let rooms: Value = http.get(format!("{b3}/v1/rooms")).bearer_auth(&carl).send().await.unwrap().json().await.unwrap();
    assert_eq!(rooms, json!([{ "name": "general", "members": 1, "last_seq": 0, "visibility": "public" }]));
    let r = http.get(format!("{b3}/v1/rooms/dm:alice:bob/messages")).bearer_auth(&carl).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "not_member");
    c.shutdown().await;
}

/// History paging, in a room with more than a default page (50) of messages,
/// over HTTP on node 1 and WebSocket on node 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_pages_hold_every_message_as_acknowledged() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b3) = (base(&c, 1), base(&c, 3));
    let http = client::http();
    let token = login(&b1, "alice").await;
    let mut ws = connect(&b3, &token).await;
    join(&mut ws, "paging", None).await;
    let acks = futures::future::join_all((1..=55).map(|i| {
        let (b3, token) = (b3.clone(), token.clone());
        async move {
            let r = post(&b3, &token, "paging", json!(format!("p{i}")), &format!("page {i}")).await;
            assert_eq!(r.status(), 200, "post p{i}");
            r.json::<Value>().await.unwrap()
        }
    }))
    .await;
    // Which message got which seq, as acknowledged.
    let by_seq: BTreeMap<u64, String> = acks.iter().map(|a| (a["seq"].as_u64().unwrap(), a["id"].as_str().unwrap().to_string())).collect();
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (1..=55).collect::<Vec<_>>());
    // Each page: its head, its seqs (ascending), and every message as acknowledged.
    let check = |what: &str, page: &Value, seqs: std::ops::RangeInclusive<u64>| {
        assert_eq!(page["head"], 55, "{what}: {page}");
        assert_eq!(page["room"], "paging", "{what}");
        let msgs = page["messages"].as_array().unwrap_or_else(|| panic!("{what}: {page}"));
        let got: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(got, seqs.collect::<Vec<_>>(), "{what}");
        for m in msgs {
            let id = &by_seq[&m["seq"].as_u64().unwrap()];
            assert_eq!((m["id"].as_str(), m["text"].clone()), (Some(id.as_str()), json!(format!("page {}", &id[1..]))), "{what}");
        }
    };
    for (query, seqs) in [
        ("", 6..=55),
        ("before=20", 1..=19),
        ("before=20&limit=5", 15..=19),
        ("after=10&before=20", 11..=19),
        ("after=10&before=20&limit=3", 11..=13),
    ] {
        let r = http.get(format!("{b1}/v1/rooms/paging/messages?{query}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{query}");
        check(query, &r.json().await.unwrap(), seqs);
    }
    // The same over WebSocket, on node 3, which applied every post before acking it.
    for (frame, seqs) in [
        (json!({ "before": 20, "limit": 5 }), 15..=19),
        (json!({ "consistency": "local" }), 6..=55),
        (json!({ "consistency": "local", "after": 10, "before": 20 }), 11..=19),
    ] {
        let mut f = frame.clone();
        f["type"] = json!("history");
        f["room"] = json!("paging");
        f["req"] = json!("hp");
        send(&mut ws, f).await;
        let h = next_of(&mut ws, "history").await;
        assert_eq!(h["req"], "hp", "{frame}");
        check(&frame.to_string(), &h, seqs);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_frames_across_nodes() {
    let c = TestCluster::start_with(3, unlimited).await;
    let (b1, b2) = (base(&c, 1), base(&c, 2));
    let ta = login(&b1, "ann").await;
    let tb = login(&b2, "ben").await;

    // A bad or missing token gets 401 before the upgrade.
    for query in ["?token=nope", ""] {
        let url = format!("{}/v1/ws{query}", b1.replacen("http", "ws", 1));
        match tokio_tungstenite::connect_async_tls_with_config(url, None, false, client::connector()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401, "{query}"),
            other => panic!("expected 401 for {query:?}, got {other:?}"),
        }
    }
    // A WebSocket version the node does not speak gets 426 and the version it
    // does (RFC 6455 §4.4).
    let r = client::http()
        .get(format!("{b1}/v1/ws?token={ta}"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    assert_eq!(r.headers().get("sec-websocket-version").map(|v| v.as_bytes()), Some(&b"13"[..]));

    let mut a = connect(&b1, &ta).await;
    let mut b = connect(&b2, &tb).await;
    join(&mut a, "lobby", None).await;
    let joined = join(&mut b, "lobby", None).await;
    assert_eq!(joined["online"].as_array().unwrap().iter().filter(|u| *u == "ann").count(), 1, "{joined}");

    send(&mut a, json!({ "type": "send", "room": "lobby", "id": "a1", "text": "hello", "req": 9 })).await;
    // The sender's own connection gets the ack and the message, in either order.
    let (mut ack, mut own) = (Value::Null, Value::Null);
    while ack.is_null() || own.is_null() {
        let f = next(&mut a, 10).await.expect("ack and message");
        match f["type"].as_str() {
            Some("ack") => ack = f,
            Some("message") => own = f,
            _ => {}
        }
    }
    assert_eq!(own["seq"], 1);
    assert_eq!((ack["seq"].clone(), ack["id"].clone(), ack["duplicate"].clone(), ack["req"].clone()), (json!(1), json!("a1"), json!(false), json!(9)));
    let got = next_of(&mut b, "message").await;
    assert_eq!((got["room"].clone(), got["seq"].clone(), got["from"].clone(), got["text"].clone()), (json!("lobby"), json!(1), json!("ann"), json!("hello")));
    assert_eq!(got["ts"], ack["ts"]);

    // A retry (on another node) is acknowledged with the first seq.
    send(&mut b, json!({ "type": "send", "room": "lobby", "id": "b1", "text": "yo" })).await;
    let first = next_of(&mut b, "ack").await;
    let mut b_again = connect(&base(&c, 3), &tb).await;
    send(&mut b_again, json!({ "type": "send", "room": "lobby", "id": "b1", "text": "yo" })).await;
    let dup = next_of(&mut b_again, "ack").await;
    assert_eq!((dup["seq"].clone(), dup["duplicate"].clone()), (first["seq"].clone(), json!(true)));

    // History frame.
    send(&mut a, json!({ "type": "history", "room": "lobby", "limit": 10, "req": "h" })).await;
    let h = next_of(&mut a, "history").await;
    assert_eq!(h["head"], 2);
    assert_eq!(h["req"], "h");
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);

    // Typing reaches the other member, on another node.
    send(&mut a, json!({ "type": "typing", "room": "lobby" })).await;
    let t = next_of(&mut b, "typing").await;
    assert_eq!((t["room"].clone(), t["user"].clone()), (json!("lobby"), json!("ann")));

    // A DM reaches every connection of both users without a join.
    send(&mut a, json!({ "type": "dm", "to": "ben", "id": "d1", "text": "psst" })).await;
    // Ann's own copy and her ack come in either order (skipping the DM while
    // waiting for the ack would lose it).
    let (mut ack, mut own) = (Value::Null, Value::Null);
    while ack.is_null() || own.is_null() {
        let f = next(&mut a, 10).await.expect("ack and own copy of the DM");
        match f["type"].as_str() {
            Some("ack") => ack = f,
            Some("message") if f["room"] == "dm:ann:ben" => own = f,
            _ => {}
        }
    }
    assert_eq!((ack["room"].clone(), ack["id"].clone()), (json!("dm:ann:ben"), json!("d1")));
    assert_eq!((own["from"].clone(), own["text"].clone(), own["seq"].clone()), (json!("ann"), json!("psst"), ack["seq"].clone()));
    for ws in [&mut b, &mut b_again] {
        // b's own "yo" may still be on its way: a message and its ack come in either order.
        let mut m = next_of(ws, "message").await;
        while m["room"] == "lobby" && m["text"] == "yo" {
            m = next_of(ws, "message").await;
        }
        assert_eq!((m["room"].clone(), m["text"].clone()), (json!("dm:ann:ben"), json!("psst")));
    }
    // Having had a DM, ben may type in that room, and ann (on another node),
    // whose copy has come too, sees it.
    send(&mut b, json!({ "type": "typing", "room": "dm:ann:ben" })).await;
    let t = next_of(&mut a, "typing").await;
    assert_eq!((t["room"].clone(), t["user"].clone()), (json!("dm:ann:ben"), json!("ben")));

    // Errors: each answered, none closes the connection.
    let cases = [
        (json!("{not json"), "bad_request"),
        (json!({ "type": "fly" }), "bad_request"),
        (json!({ "type": "send", "room": "lobby", "id": "x", "text": "y".repeat(5000) }), "too_large"),
        (json!({ "type": "send", "room": "elsewhere", "id": "x", "text": "y" }), "not_member"),
        (json!({ "type": "send", "room": "bad room", "id": "x", "text": "y" }), "bad_request"),
        (json!({ "type": "join", "room": "dm:ben:zed" }), "not_member"),
        (json!({ "type": "dm", "to": "nobody", "id": "x", "text": "y" }), "bad_request"),
        (json!({ "type": "history", "room": "lobby", "limit": 0 }), "bad_request"),
        (json!({ "type": "history", "room": "lobby", "consistency": "eventual" }), "bad_request"),
    ];
    for (frame, code) in cases {
        let text = match &frame { Value::String(s) => s.clone(), f => f.to_string() };
        futures::SinkExt::send(&mut a, tokio_tungstenite::tungstenite::Message::Text(text.into())).await.unwrap();
        let e = next_of(&mut a, "error").await;
        assert_eq!(e["code"], code, "{frame}");
    }
    send(&mut a, json!({ "type": "leave", "room": "lobby", "req": 1 })).await;
    assert_eq!(next_of(&mut a, "left").await["room"], "lobby");

    // Presence: ben's last connection closing is seen by ann, in the room they
    // share and in their DM room, which ann's connection has open since the DM.
    join(&mut a, "lobby", None).await;
    drop(b);
    drop(b_again);
    let mut rooms = Vec::new();
    while rooms.len() < 2 {
        let p = next_of(&mut a, "presence").await;
        assert_eq!((p["user"].clone(), p["online"].clone()), (json!("ben"), json!(false)), "{p}");
        rooms.push(p["room"].as_str().unwrap_or_default().to_string());
    }
    rooms.sort();
    assert_eq!(rooms, ["dm:ann:ben", "lobby"]);

    // Ben's first connection opening again, now on node 3, is seen online by
    // ann on node 1 in both rooms.
    let mut b = connect(&base(&c, 3), &tb).await;
    expect_presence(&mut a, "ben", true, &["dm:ann:ben", "lobby"]).await;
    join(&mut b, "lobby", None).await;
    // A user who is in no room yet joins one: its online members, on other
    // nodes, see them online there.
    let tc = login(&b2, "cat").await;
    let mut cat = connect(&b2, &tc).await;
    join(&mut cat, "lobby", None).await;
    expect_presence(&mut a, "cat", true, &["lobby"]).await;
    expect_presence(&mut b, "cat", true, &["lobby"]).await;
    c.shutdown().await;
}

/// How soon a presence change reaches the members online (SPEC §4: seconds).
const PRESENCE_WITHIN: Duration = Duration::from_secs(2);

/// Waits at most [`PRESENCE_WITHIN`] for `{"type":"presence","user":user,"online":online}`
/// in each of `rooms`, skipping other frames.
async fn expect_presence(ws: &mut common::client::Ws, user: &str, online: bool, rooms: &[&str]) {
    let deadline = tokio::time::Instant::now() + PRESENCE_WITHIN;
    let mut missing: std::collections::BTreeSet<&str> = rooms.iter().copied().collect();
    let mut others = Vec::new();
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, next(ws, 10)).await {
            Ok(Some(f)) => {
                if f["type"] == "presence" && f["user"] == user && f["online"] == online && f["room"].as_str().is_some_and(|r| missing.remove(r)) {
                    continue;
                }
                others.push(f);
            }
            Ok(None) => panic!("connection closed before presence of {user} in {missing:?}"),
            Err(_) => panic!("no presence {user} online={online} in {missing:?} within {PRESENCE_WITHIN:?}; got {others:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_on_another_node_gets_every_message_once_in_order() {
    let c = TestCluster::start_with(3, unlimited).await;
    let ta = login(&base(&c, 1), "ann").await;
    let tb = login(&base(&c, 2), "ben").await;
    let mut b = connect(&base(&c, 2), &tb).await;
    join(&mut b, "r", None).await;
    let mut a = connect(&base(&c, 1), &ta).await;
    join(&mut a, "r", None).await;
    for i in 1..=5 {
        send(&mut b, json!({ "type": "send", "room": "r", "id": i, "text": format!("m{i}") })).await;
    }
    let mut seen = 0;
    while seen < 5 {
        let m = next_of(&mut a, "message").await;
        seen = m["seq"].as_u64().unwrap();
    }
    drop(a);
    // Sent while ann is away; and more keep coming while she rejoins.
    let sender = tokio::spawn(async move {
        for i in 6..=60 {
            send(&mut b, json!({ "type": "send", "room": "r", "id": i, "text": format!("m{i}") })).await;
            if i == 30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut acks = 0;
        while acks < 55 {
            if next(&mut b, 10).await.unwrap()["type"] == "ack" {
                acks += 1;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut a = connect(&base(&c, 3), &ta).await;
    join(&mut a, "r", Some(5)).await;
    let mut seqs = Vec::new();
    while seqs.len() < 55 {
        let m = next_of(&mut a, "message").await;
        seqs.push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (6..=60).collect::<Vec<_>>(), "in order, no gap, no duplicate");
    sender.await.unwrap();
    assert!(next(&mut a, 1).await.is_none_or(|f| f["type"] != "message"), "nothing more");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_messages_survive_a_leader_failover_exactly_once() {
    let mut c = TestCluster::start_with(3, unlimited).await;
    let tokens: Vec<String> = futures::future::join_all((1..=3).map(|i| {
        let b = base(&c, i);
        async move { login(&b, &format!("u{i}")).await }
    }))
    .await;
    let mut writers = Vec::new();
    for i in 1..=3u64 {
        let b = base(&c, i);
        let others: Vec<String> = (1..=3).filter(|j| *j != i).map(|j| base(&c, j)).collect();
        let token = tokens[i as usize - 1].clone();
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut ws = connect(&b, &token).await;
            join(&mut ws, "f", None).await;
            for n in 0..40 {
                let id = format!("{i}-{n}");
                // Retry with the same id until acked, switching node on a dead connection.
                let mut attempt = 0;
                loop {
                    send(&mut ws, json!({ "type": "send", "room": "f", "id": id, "text": id })).await;
                    match next_ack(&mut ws, &id).await {
                        Some(seq) => {
                            acked.insert(id.clone(), seq);
                            break;
                        }
                        None => {
                            attempt += 1;
                            let target = &others[attempt % others.len()];
                            let url = format!("{}/v1/ws?token={token}", target.replacen("http", "ws", 1));
                            if let Ok((w, _)) = tokio_tungstenite::connect_async_tls_with_config(url, None, false, client::connector()).await {
                                ws = w;
                            }
                        }
                    }
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = c.wait_leader().await;
    c.stop(leader).await;
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert_eq!(acked.len(), 120);
    let survivors: Vec<u64> = c.running().map(|n| n.id).collect();
    let http = client::http();
    for id in survivors {
        let url = format!("{}/v1/rooms/f/messages?limit=1000", base(&c, id));
        let page: Value = http.get(url).bearer_auth(&tokens[0]).send().await.unwrap().json().await.unwrap();
        let msgs = page["messages"].as_array().unwrap();
        let ids: Vec<&str> = msgs.iter().map(|m| m["id"].as_str().unwrap()).collect();
        let unique: HashSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "node {id}: a message is stored twice");
        for (cid, seq) in &acked {
            let m = msgs.iter().find(|m| m["id"] == *cid).unwrap_or_else(|| panic!("node {id} lost acked {cid}"));
            assert_eq!(m["seq"], *seq);
        }
        let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "dense");
    }

    // Two of three down: no quorum. The survivor, ready until then, stops being
    // ready, and a send on it gets `unavailable`, with its id, once the node's
    // timeout has passed (but one over the connection's limit, `overloaded` at once).
    let ready = |b: String| {
        let http = http.clone();
        async move { http.get(format!("{b}/readyz")).send().await.unwrap().status().as_u16() }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for n in c.running().map(|n| n.id).collect::<Vec<_>>() {
        while ready(base(&c, n)).await != 200 {
            assert!(tokio::time::Instant::now() < deadline, "node {n} not ready after the failover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let leader = c.wait_leader().await;
    c.stop(leader).await;
    let survivor = c.running().map(|n| n.id).collect::<Vec<_>>();
    let [survivor] = survivor[..] else { panic!("{survivor:?}") };
    let mut ws = connect(&base(&c, survivor), &tokens[0]).await;
    let sent_at = tokio::time::Instant::now();
    send(&mut ws, json!({ "type": "send", "room": "f", "id": "lost", "text": "x", "req": "q" })).await;
    // Every send now waits for its timeout, and a connection has at most 256
    // awaiting their answer: one more is refused at once with `overloaded`.
    for i in 1..256 {
        send(&mut ws, json!({ "type": "send", "room": "f", "id": format!("w{i}"), "text": "x" })).await;
    }
    send(&mut ws, json!({ "type": "send", "room": "f", "id": "over", "text": "x" })).await;
    let over = loop {
        match tokio::time::timeout_at(sent_at + node::node::DEFAULT_TIMEOUT, next(&mut ws, 30)).await {
            Ok(Some(f)) if f["type"] == "error" => break f,
            Ok(Some(f)) => assert_ne!(f["type"], "ack", "acked without quorum: {f}"),
            Ok(None) => panic!("connection closed instead of overloaded"),
            Err(_) => panic!("no answer to the send over the limit"),
        }
    };
    assert_eq!((over["code"].clone(), over["id"].clone()), (json!("overloaded"), json!("over")), "{over}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = ready(base(&c, survivor)).await;
        if status == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz on node {survivor} without quorum: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node answers once its timeout has passed; allow for a loaded machine.
    let deadline = sent_at + node::node::DEFAULT_TIMEOUT + Duration::from_secs(5);
    let e = loop {
        match tokio::time::timeout_at(deadline, next(&mut ws, 30)).await {
            Ok(Some(f)) if f["type"] == "error" && f["id"] == "lost" => break f,
            Ok(Some(f)) => assert_ne!(f["type"], "ack", "acked without quorum: {f}"),
            Ok(None) => panic!("connection closed instead of unavailable"),
            Err(_) => panic!("no answer to a send without quorum"),
        }
    };
    assert_eq!((e["code"].clone(), e["id"].clone(), e["req"].clone()), (json!("unavailable"), json!("lost"), json!("q")), "{e}");
    c.shutdown().await;
}

/// The ack for `id`, or `None` on `unavailable`, a closed connection or silence.
async fn next_ack(ws: &mut common::client::Ws, id: &str) -> Option<u64> {
    loop {
        let f = next(ws, 8).await?;
        if f["id"] == id {
            return match f["type"].as_str() {
                Some("ack") => f["seq"].as_u64(),
                _ => None,
            };
        }
    }
}

fn tight_rate(c: &mut node::Config) {
    c.rate_limit = "3/60".parse().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_refuses_the_fourth_message() {
    let c = TestCluster::start_with(1, tight_rate).await;
    let b = base(&c, 1);
    let t = login(&b, "ann").await;
    let mut a = connect(&b, &t).await;
    join(&mut a, "r", None).await;
    for i in 0..3 {
        send(&mut a, json!({ "type": "send", "room": "r", "id": i, "text": "x" })).await;
        next_of(&mut a, "ack").await;
    }
    send(&mut a, json!({ "type": "send", "room": "r", "id": 3, "text": "x" })).await;
    assert_eq!(next_of(&mut a, "error").await["code"], "rate_limited");
    // The same count holds for HTTP posts on this node.
    let r = client::http().post(format!("{b}/v1/rooms/r/messages")).bearer_auth(&t).json(&json!({ "id": 4, "text": "x" })).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "rate_limited");
    // A frame over the limit is answered with too_large, then the connection
    // closes with 1009: the rest of the frame is unread, so it cannot go on.
    let big = json!({ "type": "send", "room": "r", "id": 5, "text": "x".repeat(70 * 1024) });
    a.send(tokio_tungstenite::tungstenite::Message::Text(big.to_string().into())).await.unwrap();
    let (mut too_large, mut close) = (false, None);
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), a.next()).await {
        match m {
            tokio_tungstenite::tungstenite::Message::Text(t) => too_large |= serde_json::from_str::<Value>(t.as_str()).unwrap()["code"] == "too_large",
            tokio_tungstenite::tungstenite::Message::Close(f) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert!(too_large, "no too_large error before the close");
    assert_eq!(close, Some(1009));
    c.shutdown().await;
}

/// A WebSocket client with a small fixed receive buffer (no autotuning up to
/// tens of MiB), so a client that does not read fills up after a known amount.
async fn connect_small(base: &str, token: &str) -> common::client::Ws {
    let (scheme, host) = base.split_once("://").unwrap();
    let addr: std::net::SocketAddr = host.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let url = format!("{}://{addr}/v1/ws?token={token}", scheme.replacen("http", "ws", 1));
    tokio_tungstenite::client_async_tls_with_config(url, tcp, None, client::connector()).await.unwrap().0
}

/// `chorus_slow_consumer_closes_total` on the node at `base`.
async fn slow_closes(base: &str) -> u64 {
    let m = client::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("chorus_slow_consumer_closes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("slow-consumer metric")
}

/// Reads what reached a client that stopped reading: every message frame must
/// follow the one before (no gap), and the stream must end with a 4008 close.
/// Returns the last seq received.
async fn drain_until_4008(ws: &mut common::client::Ws) -> u64 {
    use tokio_tungstenite::tungstenite::Message;
    let mut last = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(ws)).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let f: Value = serde_json::from_str(t.as_str()).unwrap();
                if f["type"] == "message" {
                    let seq = f["seq"].as_u64().unwrap();
                    assert_eq!(seq, last + 1, "gap before the close");
                    last = seq;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4008));
                return last;
            }
            other => panic!("expected frames then a 4008 close, got {other:?} after seq {last}"),
        }
    }
}

/// Sends `count` 4000-byte messages to `room` from `sender` (a member's
/// connection that has not joined the room, so only acks come back), keeping at most 200
/// unanswered; with `stop_on_close`, stops once the node has closed a slow
/// consumer. Returns how many were sent.
async fn flood(b: &str, sender: common::client::Ws, room: &str, count: u64, stop_on_close: bool) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let (mut tx, mut rx) = sender.split();
    // Acks (and errors) are counted as they come.
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let f: Value = serde_json::from_str(t.as_str()).unwrap();
                if f["type"] == "ack" || f["type"] == "error" {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let text = "z".repeat(4000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut sent = 0;
    while sent < count {
        assert!(tokio::time::Instant::now() < deadline, "flood stalled after {sent} sends");
        if sent - answered.load(Ordering::Relaxed) >= 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let frame = json!({ "type": "send", "room": room, "id": sent, "text": text });
        tx.send(tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into())).await.unwrap();
        sent += 1;
        if stop_on_close && sent % 100 == 0 && slow_closes(b).await > 0 {
            break;
        }
    }
    while answered.load(Ordering::Relaxed) < sent {
        assert!(tokio::time::Instant::now() < deadline, "acks missing after {sent} sends");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_closed_with_4008() {
    let c = TestCluster::start_with(1, unlimited).await;
    let b = base(&c, 1);
    let (ts, tr) = (login(&b, "sender").await, login(&b, "sloth").await);
    let mut sloth = connect_small(&b, &tr).await;
    join(&mut sloth, "big", None).await;
    // The sender is a member but floods from a connection that is not
    // subscribed: one that reads its own flood back can fall behind on a busy
    // machine and be closed as a slow consumer itself.
    join(&mut connect(&b, &ts).await, "big", None).await;
    let sender = connect(&b, &ts).await;
    // The sloth never reads. Once its socket buffers and then its queue are
    // full, it is closed at once: the metric moves while it is still not reading.
    let sent = flood(&b, sender, "big", 20_000, true).await;
    assert_eq!(slow_closes(&b).await, 1, "no slow-consumer close after {sent} messages");
    // What was written before the close arrives in order, then the 4008.
    let last = drain_until_4008(&mut sloth).await;
    assert!(last > 0 && last < sent, "got up to seq {last} of {sent}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_to_a_client_that_does_not_read_ends_with_4008() {
    let c = TestCluster::start_with(1, unlimited).await;
    let b = base(&c, 1);
    let (ts, tr) = (login(&b, "writer").await, login(&b, "sloth").await);
    // Not subscribed, like the sender above.
    join(&mut connect(&b, &ts).await, "past", None).await;
    let writer = connect(&b, &ts).await;
    // More history than the queue and both socket buffers hold.
    let sent = flood(&b, writer, "past", 3000, false).await;
    assert_eq!(slow_closes(&b).await, 0);
    let mut sloth = connect_small(&b, &tr).await;
    join(&mut sloth, "past", Some(0)).await;
    // The replay fills everything, finds no room for a while, and gives up.
    let deadline = tokio::time::Instant::now() + ws_stall_bound();
    while slow_closes(&b).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "a replay into a full socket never gave up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = drain_until_4008(&mut sloth).await;
    assert!(last > 0 && last < sent, "got up to seq {last} of {sent}");
    c.shutdown().await;
}

/// The replay's stall limit plus slack for a loaded machine.
fn ws_stall_bound() -> Duration {
    api::ws::STALL + Duration::from_secs(20)
}

/// A node that shuts down closes its WebSocket connections with 1001 ("going
/// away"), instead of leaving them open with nothing left to write to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_shutting_down_closes_its_connections_with_1001() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut c = TestCluster::start_with(1, unlimited).await;
    let b = base(&c, 1);
    let t = login(&b, "ann").await;
    let mut ws = connect(&b, &t).await;
    join(&mut ws, "lobby", None).await;
    c.stop(1).await;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    c.shutdown().await;
}

/// One user sending `typing` in a loop costs the room's other members at most
/// one typing frame a second (SPEC §5.9: one user's flood never closes another
/// user's connection), on the sender's node and on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_typing_flood_is_coalesced_and_closes_no_one() {
    let c = TestCluster::start_with(2, unlimited).await;
    let (b1, b2) = (base(&c, 1), base(&c, 2));
    let (ta, tb, tc) = (login(&b1, "ann").await, login(&b2, "ben").await, login(&b1, "cat").await);
    let (mut a, mut b, mut cat) = (connect(&b1, &ta).await, connect(&b2, &tb).await, connect(&b1, &tc).await);
    for ws in [&mut a, &mut b, &mut cat] {
        join(ws, "lobby", None).await;
    }
    // The flood lasts a few seconds, so several signals pass the coalescing:
    // a typing signal to a peer is best effort (one lost under load is not a
    // fault), the count's lower bound needs only one of them to arrive.
    let started = std::time::Instant::now();
    let mut flooded = 0;
    while started.elapsed() < Duration::from_millis(2500) || flooded < 3000 {
        send(&mut a, json!({ "type": "typing", "room": "lobby" })).await;
        flooded += 1;
        if flooded % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    send(&mut a, json!({ "type": "send", "room": "lobby", "id": "after-flood", "text": "done" })).await;
    assert!(acked(&mut a, "after-flood").await, "the flooder's own send is answered");
    let allowed = started.elapsed().as_secs() + 1;
    for (name, ws) in [("ben", &mut b), ("cat", &mut cat)] {
        let mut typing = 0;
        loop {
            let f = next(ws, 10).await.unwrap_or_else(|| panic!("{name}'s connection closed or went quiet"));
            match f["type"].as_str() {
                Some("typing") => typing += 1,
                Some("message") if f["text"] == "done" => break,
                _ => {}
            }
        }
        // A typing signal relayed between nodes and a message committed
        // through the log are not ordered: a late one may follow "done".
        while let Some(f) = next(ws, 1).await {
            if f["type"] == "typing" {
                typing += 1;
            }
        }
        // One per second of flood, plus one for a second boundary between nodes.
        assert!((1..=allowed + 1).contains(&typing), "{name} got {typing} typing frames for a {allowed} s flood");
    }
    // Still open both ways.
    send(&mut b, json!({ "type": "send", "room": "lobby", "id": "b-after", "text": "still here" })).await;
    assert!(acked(&mut b, "b-after").await);
    c.shutdown().await;
}

/// Whether an ack for `id` comes (skipping every other frame, the sender's own
/// copy of the message included).
async fn acked(ws: &mut common::client::Ws, id: &str) -> bool {
    while let Some(f) = next(ws, 8).await {
        if f["type"] == "ack" && f["id"] == id {
            return true;
        }
    }
    false
}
