//! The WebSocket frames of SPEC §4, one test each, on an in-memory backend.

mod support;

use raft_store::chat::Event;
use support::Api;
use wire::{ClientFrame, ErrorCode, Id, ServerFrame};

fn num(id: u64) -> Id {
    Id::Number(id.into())
}

fn send(room: &str, id: u64, text: &str) -> ClientFrame {
    ClientFrame::Send { room: room.into(), id: num(id), text: text.into(), reply_to: None }
}

#[tokio::test]
async fn join_answers_with_the_head_and_replays_after() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    for i in 1..=3 {
        api.backend.apply(Event::MessagePosted { room: "lobby".into(), from: "ann".into(), client_id: i.to_string(), text: format!("m{i}") });
    }
    let mut c = api.connect(&ann).await;
    c.send(ClientFrame::Join { room: "lobby".into(), after: Some(1) }).await;
    assert!(matches!(c.next().await, ServerFrame::Joined { head: 3, .. }));
    for seq in [2, 3] {
        match c.next().await {
            ServerFrame::Message(m) => assert_eq!((m.seq, m.text), (seq, format!("m{seq}"))),
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn send_is_acked_and_delivered_to_the_room() {
    let api = Api::start().await;
    let (ann, bob) = (api.user("ann").await, api.user("bob").await);
    let (mut a, mut b) = (api.connect(&ann).await, api.connect(&bob).await);
    assert_eq!(a.join("lobby").await, 0);
    b.join("lobby").await;
    a.send(send("lobby", 1, "hello")).await;
    let mut acked = false;
    let mut delivered = false;
    while !(acked && delivered) {
        match a.next().await {
            ServerFrame::Ack { seq: 1, duplicate: false, .. } => acked = true,
            ServerFrame::Message(m) if m.seq == 1 => delivered = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    match b.next().await {
        ServerFrame::Message(m) => assert_eq!((m.from.as_str(), m.text.as_str(), m.seq), ("ann", "hello", 1)),
        other => panic!("expected the message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_send_outside_a_joined_room_is_not_member() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    let mut c = api.connect(&ann).await;
    c.send(send("elsewhere", 5, "hi")).await;
    match c.next().await {
        ServerFrame::Error { code: ErrorCode::NotMember, id: Some(id), .. } if id == num(5) => {}
        other => panic!("expected not_member for id 5, got {other:?}"),
    }
}

#[tokio::test]
async fn dm_reaches_the_other_user_without_a_join() {
    let api = Api::start().await;
    let (ann, bob) = (api.user("ann").await, api.user("bob").await);
    let (mut a, mut b) = (api.connect(&ann).await, api.connect(&bob).await);
    a.send(ClientFrame::Dm { to: "bob".into(), id: num(1), text: "psst".into() }).await;
    match b.next().await {
        ServerFrame::Message(m) => assert_eq!((m.room.as_str(), m.text.as_str()), ("dm:ann:bob", "psst")),
        other => panic!("expected the DM, got {other:?}"),
    }
    a.send(ClientFrame::Dm { to: "nobody".into(), id: num(2), text: "hello?".into() }).await;
    loop {
        match a.next().await {
            ServerFrame::Error { code: ErrorCode::BadRequest, id: Some(id), .. } if id == num(2) => break,
            ServerFrame::Ack { .. } | ServerFrame::Message(_) => continue,
            other => panic!("expected an error for the DM to nobody, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn history_frame_answers_a_page_with_req() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    for i in 1..=4 {
        api.backend.apply(Event::MessagePosted { room: "lobby".into(), from: "ann".into(), client_id: i.to_string(), text: format!("m{i}") });
    }
    let mut c = api.connect(&ann).await;
    let frame = ClientFrame::History { room: "lobby".into(), after: None, before: Some(4), limit: Some(2), consistency: None };
    c.send_text(frame.to_text(Some(&Id::Text("h1".into())))).await;
    match c.next().await {
        ServerFrame::History { head: 4, messages, req: Some(Id::Text(req)), .. } => {
            assert_eq!(req, "h1");
            assert_eq!(messages.iter().map(|m| m.seq()).collect::<Vec<_>>(), [2, 3]);
        }
        other => panic!("expected a history page, got {other:?}"),
    }
}

#[tokio::test]
async fn leave_ends_the_membership() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    let mut c = api.connect(&ann).await;
    c.join("lobby").await;
    c.send(ClientFrame::Leave { room: "lobby".into() }).await;
    assert!(matches!(c.next().await, ServerFrame::Left { .. }));
    c.send(send("lobby", 3, "still here?")).await;
    assert!(matches!(c.next().await, ServerFrame::Error { code: ErrorCode::NotMember, .. }));
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_bad_request_and_the_session_goes_on() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    let mut c = api.connect(&ann).await;
    for text in ["{", "[1]", r#"{"room":"x"}"#, r#"{"type":"shout","req":"r1"}"#, r#"{"type":"send","room":"lobby","req":7}"#] {
        c.send_text(text.to_string()).await;
        match c.next().await {
            ServerFrame::Error { code: ErrorCode::BadRequest, .. } => {}
            other => panic!("expected bad_request for {text}, got {other:?}"),
        }
    }
    assert_eq!(c.join("lobby").await, 0, "the session still serves");
}

/// A storage read that fails is `unavailable` on the frame that needed it,
/// not a head of 0 or an empty page.
#[tokio::test]
async fn a_failed_storage_read_is_unavailable_on_join_and_history() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    let mut c = api.connect(&ann).await;
    api.backend.fail_reads(true);
    c.send(ClientFrame::Join { room: "lobby".into(), after: None }).await;
    assert!(matches!(c.next().await, ServerFrame::Error { code: ErrorCode::Unavailable, .. }));
    c.send(ClientFrame::History { room: "lobby".into(), after: None, before: None, limit: None, consistency: None }).await;
    assert!(matches!(c.next().await, ServerFrame::Error { code: ErrorCode::Unavailable, .. }));
    c.send(ClientFrame::Dm { to: "bob".into(), id: num(4), text: "hi".into() }).await;
    assert!(matches!(c.next().await, ServerFrame::Error { code: ErrorCode::Unavailable, id: Some(id), .. } if id == num(4)));
}

/// Past `--max-connections`, an upgrade is answered 503 `overloaded` and the
/// node keeps serving the connections it has; a closed one frees its place.
#[tokio::test]
async fn past_the_connection_limit_an_upgrade_gets_503() {
    let api = Api::with_limits(api::Limits { rate_messages: 0, max_connections: 2, ..api::Limits::default() }).await;
    let ann = api.user("ann").await;
    let mut first = api.connect(&ann).await;
    let second = api.connect(&ann).await;
    let url = format!("{}/v1/ws?token={ann}", api.url.replacen("http", "ws", 1));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a third connection was not refused: {other:?}"),
    }
    assert_eq!(first.join("lobby").await, 0, "the first connection still serves");
    drop(second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if tokio_tungstenite::connect_async(url.as_str()).await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the closed connection's place was not freed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn history(room: &str) -> ClientFrame {
    ClientFrame::History { room: room.into(), after: None, before: None, limit: None, consistency: None }
}

/// Past `--request-rate-limit`, `join`, `leave`, `history` and HTTP reads get
/// `rate_limited`; the connection stays open, and other users are not counted.
#[tokio::test]
async fn joins_leaves_and_reads_are_metered_per_user() {
    let limits = api::Limits { rate_messages: 0, request_rate: 4, request_window: std::time::Duration::from_secs(60), ..api::Limits::default() };
    let api = Api::with_limits(limits).await;
    let (ann, bob) = (api.user("ann").await, api.user("bob").await);
    let mut a = api.connect(&ann).await;
    a.join("lobby").await;
    a.send(history("lobby")).await;
    assert!(matches!(a.next().await, ServerFrame::History { .. }));
    a.send(ClientFrame::Leave { room: "lobby".into() }).await;
    assert!(matches!(a.next().await, ServerFrame::Left { .. }));
    a.join("lobby").await;
    // The fifth in the window, of any of the three kinds, is refused.
    for frame in [history("lobby"), ClientFrame::Join { room: "dev".into(), after: None }, ClientFrame::Leave { room: "lobby".into() }] {
        a.send(frame).await;
        assert!(matches!(a.next().await, ServerFrame::Error { code: ErrorCode::RateLimited, .. }));
    }
    let r = api.get("/v1/rooms").bearer_auth(&ann).send().await.expect("rooms");
    assert_eq!(support::error_of(r).await, (429, ErrorCode::RateLimited));
    // The connection still serves: sends are metered apart (and off here).
    a.send(send("lobby", 1, "still here")).await;
    loop {
        match a.next().await {
            ServerFrame::Ack { seq, .. } => break assert_eq!(seq, 1),
            ServerFrame::Message(m) => assert_eq!(m.text, "still here"),
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    // Another user is counted apart.
    let mut b = api.connect(&bob).await;
    assert_eq!(b.join("lobby").await, 1);
    let r = api.get("/v1/rooms/lobby/messages").bearer_auth(&bob).send().await.expect("history");
    assert_eq!(r.status(), 200);
}

/// Past `--max-rooms-per-user`, a join that would create a room is refused;
/// joining rooms that exist is not.
#[tokio::test]
async fn a_user_may_create_only_so_many_rooms() {
    let api = Api::with_limits(api::Limits { rate_messages: 0, max_rooms_per_user: 2, ..api::Limits::default() }).await;
    let (ann, bob) = (api.user("ann").await, api.user("bob").await);
    let mut b = api.connect(&bob).await;
    b.join("bobs").await;
    let mut a = api.connect(&ann).await;
    a.join("one").await;
    a.join("two").await;
    a.send(ClientFrame::Join { room: "three".into(), after: None }).await;
    match a.next().await {
        ServerFrame::Error { code: ErrorCode::RateLimited, message, .. } => assert!(message.contains("created 2 rooms"), "{message}"),
        other => panic!("a third room was not refused: {other:?}"),
    }
    // Rooms that exist may be joined, again or for the first time.
    a.join("one").await;
    a.join("bobs").await;
    b.join("three").await;
    a.join("three").await;
}
