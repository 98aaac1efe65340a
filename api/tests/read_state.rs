//! Read markers and unread counts (feature level 4) on an in-memory backend:
//! a `read` frame moves the marker, `joined` and `GET /v1/rooms` carry the
//! unread and mention counts after it, and a marker never moves back.

mod support;

use raft_store::chat::Event;
use support::Api;
use wire::http::RoomSummary;
use wire::{ClientFrame, ErrorCode, ServerFrame, UnreadCounts};

fn post(api: &Api, from: &str, id: &str, text: &str) {
    api.backend.apply(Event::MessagePosted { room: "lobby".into(), from: from.into(), client_id: id.into(), text: text.into() });
}

#[tokio::test]
async fn unread_counts_follow_the_marker_across_devices() {
    let api = Api::start().await;
    let (ann, _bob) = (api.user("ann").await, api.user("bob").await);
    for user in ["ann", "bob"] {
        api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: user.into() });
    }
    post(&api, "bob", "1", "morning");
    post(&api, "bob", "2", "@ann are you there");
    post(&api, "ann", "3", "yes");
    post(&api, "bob", "4", "good");

    let mut phone = api.connect(&ann).await;
    phone.send(ClientFrame::Join { room: "lobby".into(), after: None }).await;
    match phone.next().await {
        ServerFrame::Joined { head: 4, unread, .. } => assert_eq!(unread, Some(UnreadCounts { read: 0, unread: 3, mentions: 1, capped: false })),
        other => panic!("expected joined, got {other:?}"),
    }
    phone.send(ClientFrame::Read { room: "lobby".into(), seq: 2 }).await;
    assert_eq!(phone.next().await, ServerFrame::Marked { room: "lobby".into(), seq: 2, req: None });
    // An older device's marker does not move it back.
    phone.send(ClientFrame::Read { room: "lobby".into(), seq: 1 }).await;
    assert_eq!(phone.next().await, ServerFrame::Marked { room: "lobby".into(), seq: 2, req: None });

    // Another device of the same user sees the same state.
    let mut laptop = api.connect(&ann).await;
    laptop.send(ClientFrame::Join { room: "lobby".into(), after: Some(4) }).await;
    match laptop.next().await {
        ServerFrame::Joined { unread, .. } => assert_eq!(unread, Some(UnreadCounts { read: 2, unread: 1, mentions: 0, capped: false })),
        other => panic!("expected joined, got {other:?}"),
    }
    let rooms: Vec<RoomSummary> =
        api.get("/v1/rooms").header("authorization", format!("Bearer {ann}")).send().await.expect("rooms").json().await.expect("list");
    let lobby = rooms.iter().find(|r| r.name == "lobby").expect("lobby listed");
    assert_eq!(lobby.unread, Some(UnreadCounts { read: 2, unread: 1, mentions: 0, capped: false }));
}

#[tokio::test]
async fn a_marker_needs_membership_and_a_room_name() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "bob".into() });
    let mut c = api.connect(&ann).await;
    c.send(ClientFrame::Read { room: "lobby".into(), seq: 1 }).await;
    assert!(matches!(c.next().await, ServerFrame::Error { code: ErrorCode::NotMember, .. }));
    c.send(ClientFrame::Read { room: "no spaces".into(), seq: 1 }).await;
    assert!(matches!(c.next().await, ServerFrame::Error { code: ErrorCode::BadRequest, .. }));
    // Rooms the caller is not in carry no read state.
    let rooms: Vec<RoomSummary> =
        api.get("/v1/rooms").header("authorization", format!("Bearer {ann}")).send().await.expect("rooms").json().await.expect("list");
    assert_eq!(rooms.iter().find(|r| r.name == "lobby").map(|r| r.unread), Some(None));
}
