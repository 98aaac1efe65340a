//! The HTTP routes of SPEC §3, one test each, on an in-memory backend.

mod support;

use raft_store::chat::{Event, TablesRead};
use serde_json::json;
use support::{error_of, Api};
use wire::http::{Cluster, HistoryPage, Pick, Posted, RoomSummary};
use wire::ErrorCode;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn register_creates_a_user_once() {
    let api = Api::start().await;
    let creds = json!({ "name": "ann", "password": "correct horse" });
    let r = api.post("/v1/users").json(&creds).send().await.expect("register");
    assert_eq!(r.status(), 201);
    let again = api.post("/v1/users").json(&creds).send().await.expect("register again");
    assert_eq!(error_of(again).await, (409, ErrorCode::NameTaken));
    let bad = api.post("/v1/users").json(&json!({ "name": "no spaces", "password": "correct horse" })).send().await.expect("bad name");
    assert_eq!(error_of(bad).await, (400, ErrorCode::BadRequest));
    let not_json = api.post("/v1/users").header("content-type", "application/json").body("{").send().await.expect("not JSON");
    assert_eq!(error_of(not_json).await, (400, ErrorCode::BadRequest));
}

#[tokio::test]
async fn login_checks_the_password() {
    let api = Api::start().await;
    let token = api.user("ann").await;
    assert!(!token.is_empty());
    let wrong = api.post("/v1/sessions").json(&json!({ "name": "ann", "password": "wrong horse" })).send().await.expect("login");
    assert_eq!(error_of(wrong).await, (401, ErrorCode::Unauthorized));
    let unknown = api.post("/v1/sessions").json(&json!({ "name": "nobody", "password": "correct horse" })).send().await.expect("login");
    assert_eq!(error_of(unknown).await, (401, ErrorCode::Unauthorized));
}

#[tokio::test]
async fn rooms_lists_rooms_and_only_the_callers_direct_messages() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    for (from, room) in [("bob", "dm:ann:bob"), ("bob", "dm:bob:cat")] {
        api.backend.apply(Event::MessagePosted { room: room.into(), from: from.into(), client_id: "1".into(), text: "hi".into() });
    }
    let r = api.get("/v1/rooms").header("authorization", bearer(&ann)).send().await.expect("rooms");
    assert_eq!(r.status(), 200);
    let rooms: Vec<RoomSummary> = r.json().await.expect("room list");
    let names: Vec<&str> = rooms.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["dm:ann:bob", "lobby"]);
    assert_eq!((rooms[0].members, rooms[0].last_seq), (2, 1));
    let anonymous = api.get("/v1/rooms").send().await.expect("rooms");
    assert_eq!(error_of(anonymous).await, (401, ErrorCode::Unauthorized));
}

#[tokio::test]
async fn post_message_acks_members_and_refuses_the_rest() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    let post = |id: u64, text: &str| api.post("/v1/rooms/lobby/messages").header("authorization", bearer(&ann)).json(&json!({ "id": id, "text": text }));
    let posted: Posted = post(7, "hello").send().await.expect("post").json().await.expect("posted");
    assert_eq!((posted.seq, posted.duplicate), (1, false));
    let again: Posted = post(7, "hello").send().await.expect("post").json().await.expect("posted");
    assert_eq!((again.seq, again.duplicate), (1, true), "a retry is acked with the first seq");
    let big = post(8, &"x".repeat(5000)).send().await.expect("post");
    assert_eq!(error_of(big).await, (413, ErrorCode::TooLarge));
    let elsewhere = api.post("/v1/rooms/other/messages").header("authorization", bearer(&ann)).json(&json!({ "id": 9, "text": "hi" }));
    assert_eq!(error_of(elsewhere.send().await.expect("post")).await, (403, ErrorCode::NotMember));
}

#[tokio::test]
async fn history_pages_through_a_room() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    for i in 1..=5 {
        api.backend.apply(Event::MessagePosted { room: "lobby".into(), from: "ann".into(), client_id: i.to_string(), text: format!("m{i}") });
    }
    let page = |q: &str| api.get(&format!("/v1/rooms/lobby/messages{q}")).header("authorization", bearer(&ann)).send();
    let newest: HistoryPage = page("?limit=2").await.expect("history").json().await.expect("page");
    assert_eq!(newest.head, 5);
    assert_eq!(newest.messages.iter().map(|m| m.seq()).collect::<Vec<_>>(), [4, 5]);
    let after: HistoryPage = page("?after=1&limit=2").await.expect("history").json().await.expect("page");
    assert_eq!(after.messages.iter().map(|m| m.message().map_or("", |m| m.text.as_str())).collect::<Vec<_>>(), ["m2", "m3"]);
    assert_eq!(error_of(page("?limit=0").await.expect("history")).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(page("?limit=many").await.expect("history")).await, (400, ErrorCode::BadRequest));
    let dm = api.get("/v1/rooms/dm:bob:cat/messages").header("authorization", bearer(&ann)).send().await.expect("history");
    assert_eq!(error_of(dm).await, (403, ErrorCode::NotMember));
}

#[tokio::test]
async fn cluster_and_pick_describe_the_members() {
    let api = Api::start().await;
    let r = api.get("/v1/cluster").send().await.expect("cluster");
    assert_eq!(r.headers().get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));
    let view: Cluster = r.json().await.expect("view");
    assert_eq!((view.cluster_id.as_str(), view.leader, view.members.len()), ("mem", Some(1), 1));
    let pick: Pick = api.get("/v1/cluster/pick").send().await.expect("pick").json().await.expect("pick body");
    assert_eq!(pick.client_url, "http://mem");
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let api = Api::start().await;
    assert_eq!(api.get("/healthz").send().await.expect("healthz").text().await.expect("body"), "ok");
    assert_eq!(api.get("/readyz").send().await.expect("readyz").status(), 200);
    let metrics = api.get("/metrics").send().await.expect("metrics").text().await.expect("body");
    assert!(metrics.contains("chorus_"), "{metrics}");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_error_bodies() {
    let api = Api::start().await;
    assert_eq!(error_of(api.get("/v2/nothing").send().await.expect("get")).await, (404, ErrorCode::NotFound));
    assert_eq!(error_of(api.http.delete(format!("{}/v1/users", api.url)).send().await.expect("delete")).await, (405, ErrorCode::MethodNotAllowed));
}

/// A storage read that fails reaches the client as `unavailable`, never as an
/// empty answer or another error.
#[tokio::test]
async fn a_failed_storage_read_is_unavailable_on_every_route() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    api.backend.fail_reads(true);
    let auth = bearer(&ann);
    let answers = [
        api.get("/v1/rooms").header("authorization", &auth).send().await.expect("rooms"),
        api.get("/v1/rooms/lobby/messages").header("authorization", &auth).send().await.expect("history"),
        api.post("/v1/users").json(&json!({ "name": "bob", "password": "correct horse" })).send().await.expect("register"),
        api.post("/v1/sessions").json(&json!({ "name": "ann", "password": "correct horse" })).send().await.expect("login"),
    ];
    for r in answers {
        assert_eq!(error_of(r).await, (503, ErrorCode::Unavailable));
    }
}

/// Each registration and login costs an argon2 run: one address gets
/// `--account-rate-limit` of them per window, then 429 `rate_limited`.
#[tokio::test]
async fn registrations_and_logins_are_limited_per_address() {
    let limits = api::Limits { rate_messages: 0, account_rate: 5, account_window: std::time::Duration::from_secs(60), ..api::Limits::default() };
    let api = Api::with_limits(limits).await;
    let mut codes = Vec::new();
    for i in 0..4 {
        let r = api.post("/v1/users").json(&json!({ "name": format!("u{i}"), "password": "correct horse" })).send().await.expect("register");
        codes.push(r.status().as_u16());
    }
    let login = api.post("/v1/sessions").json(&json!({ "name": "u0", "password": "correct horse" })).send().await.expect("login");
    codes.push(login.status().as_u16());
    assert_eq!(codes, [201, 201, 201, 201, 200]);
    let refused = api.post("/v1/users").json(&json!({ "name": "u9", "password": "correct horse" })).send().await.expect("register");
    assert_eq!(error_of(refused).await, (429, ErrorCode::RateLimited));
    let refused = api.post("/v1/sessions").json(&json!({ "name": "u0", "password": "correct horse" })).send().await.expect("login");
    assert_eq!(error_of(refused).await, (429, ErrorCode::RateLimited));
}

/// `GET /v1/rooms` pages by name: `limit` rooms at most, the next page named
/// by a `Link: rel="next"` header, other users' DM rooms left out.
#[tokio::test]
async fn rooms_are_listed_in_pages_by_name() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    for room in ["a", "b", "c", "d", "e"] {
        api.backend.apply(Event::RoomJoined { room: room.into(), user: "ann".into() });
    }
    // A DM room exists once it has a message.
    api.backend.apply(Event::MessagePosted { room: "dm:bob:cy".into(), from: "bob".into(), client_id: "1".into(), text: "psst".into() });
    assert!(api.backend.reader.tables.read().expect("tables").get(raft_store::chat::Table::Rooms, b"dm:bob:cy").expect("read").is_some());
    let page = |query: String| {
        let r = api.get(&format!("/v1/rooms{query}")).bearer_auth(&ann).send();
        async move {
            let r = r.await.expect("rooms");
            assert_eq!(r.status(), 200);
            let next = r.headers().get("link").map(|v| v.to_str().expect("an ASCII link").to_string());
            let names: Vec<String> = r.json::<Vec<RoomSummary>>().await.expect("rooms body").into_iter().map(|s| s.name).collect();
            (names, next)
        }
    };
    assert_eq!(page(String::new()).await, (vec!["a", "b", "c", "d", "e"].into_iter().map(String::from).collect(), None));
    let (names, next) = page("?limit=2".into()).await;
    assert_eq!(names, ["a", "b"]);
    assert_eq!(next.as_deref(), Some("</v1/rooms?after=b&limit=2>; rel=\"next\""));
    let (names, next) = page("?after=b&limit=2".into()).await;
    assert_eq!((names, next.as_deref()), (vec!["c".to_string(), "d".to_string()], Some("</v1/rooms?after=d&limit=2>; rel=\"next\"")));
    // Bob's DM room is scanned but not shown: a short page that is not the last.
    let (names, next) = page("?after=d&limit=2".into()).await;
    assert_eq!((names, next.as_deref()), (vec!["e".to_string()], Some("</v1/rooms?after=e&limit=2>; rel=\"next\"")));
    assert_eq!(page("?after=e&limit=2".into()).await, (vec![], None));
    for bad in ["?limit=0", "?limit=1001", "?after=no%20spaces", "?limit=x"] {
        let r = api.get(&format!("/v1/rooms{bad}")).bearer_auth(&ann).send().await.expect("rooms");
        assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "{bad}");
    }
}

/// Reads `stream` until the peer closes it (or 5 s pass): what came, and
/// whether it was closed.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// A client that sends nothing, idles on a kept-alive connection, or sends
/// its body too slowly is cut off after `--http-timeout-secs`.
#[tokio::test]
async fn idle_and_slow_clients_are_cut_off_after_the_http_timeout() {
    use tokio::io::AsyncWriteExt;
    let limits = api::Limits { rate_messages: 0, http_timeout: std::time::Duration::from_secs(1), ..api::Limits::default() };
    let api = Api::with_limits(limits).await;
    let addr = api.url.trim_start_matches("http://").to_string();

    // Connected, and not a byte sent.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let (_, closed) = read_to_close(&mut silent).await;
    assert!(closed, "a connection that sent nothing was kept open");

    // One request answered, then idle.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let answered = std::time::Instant::now();
    let (got, closed) = read_to_close(&mut idle).await;
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "{got:?}");
    assert!(closed, "an idle kept-alive connection was kept open");
    assert!(answered.elapsed() >= std::time::Duration::from_millis(500), "closed at once, not kept alive");

    // A body promised and never sent: 408.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"name\"").await.expect("write");
    let (got, _) = read_to_close(&mut slow).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
}

/// A post without a token is refused before its body is read: the answer
/// comes although the body never does.
#[tokio::test]
async fn a_post_without_a_token_is_refused_before_its_body_is_read() {
    use tokio::io::AsyncWriteExt;
    let api = Api::start().await;
    let addr = api.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = "POST /v1/rooms/lobby/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n";
    s.write_all(head.as_bytes()).await.expect("write");
    let (got, _) = read_to_close(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 401"), "{got:?}");
}

#[tokio::test]
async fn another_origin_may_call_the_api_with_a_bearer_token() {
    let api = Api::start().await;
    let token = api.user("ann").await;
    // The browser's preflight for a GET with an Authorization header.
    let preflight = api
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/search?q=x", api.url))
        .header("origin", "http://127.0.0.2:8080")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(h.get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));
    assert!(h.get("access-control-allow-headers").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("authorization")), "{h:?}");
    assert!(h.get("access-control-allow-credentials").is_none(), "no credentials mode: {h:?}");
    // The request itself is answered as from the same origin, its Link header readable.
    let r = api.get("/v1/rooms?limit=1").header("origin", "http://127.0.0.2:8080").header("authorization", bearer(&token)).send().await.expect("rooms");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));
    assert!(r.headers().get("access-control-expose-headers").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("link")));
}
