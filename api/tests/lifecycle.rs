//! Replies, threads, edits, deletes and reactions (feature level 4) over the
//! WebSocket and HTTP, on an in-memory backend: each change is acked, reaches
//! the room's subscribers as a frame of its own, replays after `join` with
//! `after`, and shows in history as the message is now.

mod support;

use serde_json::json;
use support::{error_of, Api, Client};
use wire::http::{HistoryPage, ThreadPage};
use wire::{ClientFrame, ErrorCode, HistoryEntry, Id, ServerFrame};

/// Sends `frame` and returns its ack's seq, skipping the deliveries that may
/// come before the ack.
async fn acked(c: &mut Client, frame: ClientFrame) -> u64 {
    c.send(frame).await;
    loop {
        match c.next().await {
            ServerFrame::Ack { seq, .. } => return seq,
            ServerFrame::Error { code, message, .. } => panic!("refused: {code} {message}"),
            _ => {}
        }
    }
}

/// Sends `frame` and returns the code of the error it is answered with.
async fn refused(c: &mut Client, frame: ClientFrame) -> ErrorCode {
    c.send(frame).await;
    loop {
        match c.next().await {
            ServerFrame::Error { code, .. } => return code,
            ServerFrame::Ack { seq, .. } => panic!("acked as {seq}"),
            _ => {}
        }
    }
}

/// The next room entry delivered to `c`.
async fn entry(c: &mut Client) -> HistoryEntry {
    loop {
        if let Some(e) = c.next().await.entry() {
            return e;
        }
    }
}

fn id(s: &str) -> Id {
    Id::from(s)
}

fn send(text: &str, i: &str, reply_to: Option<u64>) -> ClientFrame {
    ClientFrame::Send { room: "lobby".into(), id: id(i), text: text.into(), reply_to }
}

#[tokio::test]
async fn every_change_is_acked_delivered_and_shown_in_history() {
    let api = Api::start().await;
    let (ann, bob) = (api.user("ann").await, api.user("bob").await);
    let (mut a, mut b, mut watch) = (api.connect(&ann).await, api.connect(&bob).await, api.connect(&bob).await);
    a.join("lobby").await;
    b.join("lobby").await;
    watch.join("lobby").await;

    assert_eq!(acked(&mut a, send("hello", "1", None)).await, 1);
    assert_eq!(acked(&mut b, send("hi ann", "2", Some(1))).await, 2);
    let edit = ClientFrame::Edit { room: "lobby".into(), id: id("3"), target: 1, text: "hello all".into() };
    assert_eq!(acked(&mut a, edit).await, 3);
    let react = ClientFrame::React { room: "lobby".into(), id: id("4"), target: 1, emoji: "👍".into() };
    assert_eq!(acked(&mut b, react).await, 4);

    // Bob's other connection sees each entry live, in seq order, as its own frame.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(entry(&mut watch).await);
    }
    assert_eq!(seen.iter().map(HistoryEntry::seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(matches!(&seen[1], HistoryEntry::Message(m) if m.reply_to == Some(1) && m.thread == Some(1)));
    assert!(matches!(&seen[2], HistoryEntry::Edit(e) if e.target == 1 && e.text == "hello all" && e.from == "ann"));
    assert!(matches!(&seen[3], HistoryEntry::Reaction(r) if r.target == 1 && r.emoji == "👍" && r.added));

    // History serves message 1 as it is now, and every change as an entry.
    let page: HistoryPage = api
        .get("/v1/rooms/lobby/messages")
        .header("authorization", format!("Bearer {bob}"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("page");
    assert_eq!(page.head, 4);
    let first = page.messages[0].message().expect("a message").clone();
    assert_eq!(first.text, "hello all");
    assert!(first.edited_ts.is_some());
    assert_eq!(first.reactions.get("👍"), Some(&vec!["bob".to_string()]));

    // A client that was away resumes the changes after the seq it had.
    let mut late = api.connect(&bob).await;
    late.send(ClientFrame::Join { room: "lobby".into(), after: Some(2) }).await;
    assert!(matches!(late.next().await, ServerFrame::Joined { head: 4, .. }));
    assert!(matches!(entry(&mut late).await, HistoryEntry::Edit(e) if e.seq == 3));
    assert!(matches!(entry(&mut late).await, HistoryEntry::Reaction(r) if r.seq == 4));
}

#[tokio::test]
async fn a_delete_removes_the_text_everywhere_and_only_the_author_may() {
    let api = Api::start().await;
    let (ann, bob) = (api.user("ann").await, api.user("bob").await);
    let (mut a, mut b) = (api.connect(&ann).await, api.connect(&bob).await);
    a.join("lobby").await;
    b.join("lobby").await;
    acked(&mut a, send("a secret", "1", None)).await;
    acked(&mut a, ClientFrame::Edit { room: "lobby".into(), id: id("2"), target: 1, text: "another secret".into() }).await;

    let bobs = ClientFrame::Delete { room: "lobby".into(), id: id("3"), target: 1 };
    assert_eq!(refused(&mut b, bobs).await, ErrorCode::Forbidden);
    let bobs_edit = ClientFrame::Edit { room: "lobby".into(), id: id("4"), target: 1, text: "mine now".into() };
    assert_eq!(refused(&mut b, bobs_edit).await, ErrorCode::Forbidden);
    assert_eq!(acked(&mut a, ClientFrame::Delete { room: "lobby".into(), id: id("5"), target: 1 }).await, 3);

    let page: HistoryPage = api
        .get("/v1/rooms/lobby/messages")
        .header("authorization", format!("Bearer {bob}"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("page");
    let text = serde_json::to_string(&page).expect("json");
    assert!(!text.contains("secret"), "a deleted text is served: {text}");
    assert!(matches!(&page.messages[0], HistoryEntry::Message(m) if m.deleted && m.text.is_empty()));
    assert!(matches!(&page.messages[2], HistoryEntry::Delete(d) if d.target == 1));

    // A deleted message takes no more changes.
    let again = ClientFrame::Edit { room: "lobby".into(), id: id("6"), target: 1, text: "back".into() };
    assert_eq!(refused(&mut a, again).await, ErrorCode::NotFound);
}

#[tokio::test]
async fn bad_changes_get_the_error_that_fits() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    let mut a = api.connect(&ann).await;
    a.join("lobby").await;
    acked(&mut a, send("hello", "1", None)).await;
    let react = |i: &str, target, emoji: &str| ClientFrame::React { room: "lobby".into(), id: id(i), target, emoji: emoji.into() };
    assert_eq!(refused(&mut a, react("2", 1, "two words")).await, ErrorCode::BadRequest);
    assert_eq!(refused(&mut a, react("3", 1, "")).await, ErrorCode::BadRequest);
    assert_eq!(refused(&mut a, react("4", 9, "👍")).await, ErrorCode::NotFound);
    assert_eq!(refused(&mut a, send("to nothing", "5", Some(9))).await, ErrorCode::NotFound);
    let empty = ClientFrame::Edit { room: "lobby".into(), id: id("6"), target: 1, text: String::new() };
    assert_eq!(refused(&mut a, empty).await, ErrorCode::BadRequest);
    let elsewhere = ClientFrame::Delete { room: "other".into(), id: id("7"), target: 1 };
    assert_eq!(refused(&mut a, elsewhere).await, ErrorCode::NotMember);
    // Reacting twice is one reaction; taking it back leaves none.
    acked(&mut a, react("8", 1, "👍")).await;
    acked(&mut a, react("9", 1, "👍")).await;
    acked(&mut a, ClientFrame::Unreact { room: "lobby".into(), id: id("10"), target: 1, emoji: "👍".into() }).await;
    let page: HistoryPage =
        api.get("/v1/rooms/lobby/messages?limit=1&before=2").header("authorization", format!("Bearer {ann}")).send().await.expect("history").json().await.expect("page");
    assert!(page.messages[0].message().expect("a message").reactions.is_empty());
}

#[tokio::test]
async fn a_thread_is_served_by_its_root_and_replies_post_over_http() {
    let api = Api::start().await;
    let (ann, bob) = (api.user("ann").await, api.user("bob").await);
    let mut a = api.connect(&ann).await;
    a.join("lobby").await;
    api.connect(&bob).await.join("lobby").await;
    acked(&mut a, send("question", "1", None)).await;
    acked(&mut a, send("unrelated", "2", None)).await;
    let post = |token: &str, body: serde_json::Value| {
        api.post("/v1/rooms/lobby/messages").header("authorization", format!("Bearer {token}")).json(&body).send()
    };
    let r = post(&bob, json!({"id": "b1", "text": "answer", "reply_to": 1})).await.expect("post");
    assert_eq!(r.status(), 200);
    // A reply to a reply joins the same thread.
    let r = post(&ann, json!({"id": "a3", "text": "thanks", "reply_to": 3})).await.expect("post");
    assert_eq!(r.status(), 200);
    let missing = post(&ann, json!({"id": "a4", "text": "?", "reply_to": 77})).await.expect("post");
    assert_eq!(error_of(missing).await, (404, ErrorCode::NotFound));

    let thread = |q: &str| api.get(&format!("/v1/rooms/lobby/messages/{q}")).header("authorization", format!("Bearer {ann}")).send();
    let page: ThreadPage = thread("1/thread").await.expect("thread").json().await.expect("page");
    assert_eq!((page.root, page.messages.iter().map(HistoryEntry::seq).collect::<Vec<_>>()), (1, vec![1, 3, 4]));
    let tail: ThreadPage = thread("1/thread?after=3").await.expect("thread").json().await.expect("page");
    assert_eq!(tail.messages.iter().map(HistoryEntry::seq).collect::<Vec<_>>(), [4]);
    assert_eq!(error_of(thread("99/thread").await.expect("thread")).await, (404, ErrorCode::NotFound));
    assert_eq!(error_of(thread("x/thread").await.expect("thread")).await.0, 400);
}
