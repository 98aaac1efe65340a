//! The frames as SPEC §4 writes them, byte for byte where the order is fixed.

use serde_json::{json, Value};

use super::*;

fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn every_client_frame_parses_with_its_req() {
    let cases = [
        (json!({"type": "join", "room": "r", "after": 3, "req": "j"}), ClientFrame::Join { room: "r".into(), after: Some(3) }, Some(Id::from("j"))),
        (json!({"type": "join", "room": "r", "after": null}), ClientFrame::Join { room: "r".into(), after: None }, None),
        (json!({"type": "leave", "room": "r", "req": 1}), ClientFrame::Leave { room: "r".into() }, Some(Id::from(1))),
        (json!({"type": "send", "room": "r", "id": 7, "text": "t"}), ClientFrame::Send { room: "r".into(), id: Id::from(7), text: "t".into(), reply_to: None }, None),
        (
            json!({"type": "send", "room": "r", "id": 8, "text": "t", "reply_to": 3}),
            ClientFrame::Send { room: "r".into(), id: Id::from(8), text: "t".into(), reply_to: Some(3) },
            None,
        ),
        (
            json!({"type": "edit", "room": "r", "id": "e", "target": 3, "text": "t2"}),
            ClientFrame::Edit { room: "r".into(), id: Id::from("e"), target: 3, text: "t2".into() },
            None,
        ),
        (json!({"type": "delete", "room": "r", "id": "d", "target": 3}), ClientFrame::Delete { room: "r".into(), id: Id::from("d"), target: 3 }, None),
        (
            json!({"type": "react", "room": "r", "id": 1, "target": 3, "emoji": "👍", "req": 2}),
            ClientFrame::React { room: "r".into(), id: Id::from(1), target: 3, emoji: "👍".into() },
            Some(Id::from(2)),
        ),
        (
            json!({"type": "unreact", "room": "r", "id": 2, "target": 3, "emoji": "👍"}),
            ClientFrame::Unreact { room: "r".into(), id: Id::from(2), target: 3, emoji: "👍".into() },
            None,
        ),
        (json!({"type": "dm", "to": "bob", "id": "x", "text": "t"}), ClientFrame::Dm { to: "bob".into(), id: Id::from("x"), text: "t".into() }, None),
        (
            json!({"type": "history", "room": "r", "before": 9, "limit": 5, "consistency": "local"}),
            ClientFrame::History { room: "r".into(), after: None, before: Some(9), limit: Some(5), consistency: Some(Consistency::Local) },
            None,
        ),
        (json!({"type": "typing", "room": "r", "req": {"not": "an id"}}), ClientFrame::Typing { room: "r".into() }, None),
        (json!({"type": "read", "room": "r", "seq": 9}), ClientFrame::Read { room: "r".into(), seq: 9 }, None),
        (
            json!({"type": "room_action", "room": "r", "id": "k", "action": "ban", "user": "eve", "secs": 60, "req": 3}),
            ClientFrame::RoomAction { room: "r".into(), id: Id::from("k"), action: RoomAction::Ban { user: "eve".into(), secs: Some(60) } },
            Some(Id::from(3)),
        ),
        (
            json!({"type": "room_action", "room": "r", "id": 4, "action": "set_role", "user": "mo", "role": "moderator"}),
            ClientFrame::RoomAction { room: "r".into(), id: Id::from(4), action: RoomAction::SetRole { user: "mo".into(), role: Role::Moderator } },
            None,
        ),
        (
            json!({"type": "room_action", "room": "r", "id": 5, "action": "set_visibility", "visibility": "private"}),
            ClientFrame::RoomAction { room: "r".into(), id: Id::from(5), action: RoomAction::SetVisibility { visibility: Visibility::Private } },
            None,
        ),
    ];
    for (frame, want, want_req) in cases {
        let (got, req) = ClientFrame::parse(&frame.to_string()).unwrap();
        assert_eq!((&got, &req), (&want, &want_req), "{frame}");
        // What a client writes reads back the same.
        assert_eq!(ClientFrame::parse(&got.to_text(req.as_ref())).unwrap(), (want, want_req));
    }
}

#[test]
fn a_bad_frame_says_why_and_keeps_its_id_and_req() {
    let bad = |text: &str| ClientFrame::parse(text).unwrap_err();
    assert!(bad("{nope").message.starts_with("malformed JSON"));
    assert_eq!(bad("[1]").message, "a frame is a JSON object");
    assert_eq!(bad(r#"{"room":"r"}"#).message, "a frame needs a \"type\"");
    assert_eq!(bad(r#"{"type":5}"#).message, "\"type\" is a string");
    let e = bad(r#"{"type":"fly","id":"m1","req":4}"#);
    assert!(e.message.contains("fly"), "{}", e.message);
    assert_eq!((e.id, e.req), (Some(Id::from("m1")), Some(Id::from(4))));
    assert!(bad(r#"{"type":"send","room":"r","id":1}"#).message.contains("text"));
    assert!(bad(r#"{"type":"join","room":"r","after":-1}"#).message.contains("-1"));
    assert!(bad(r#"{"type":"join","room":"r","after":1.5}"#).message.contains("1.5"));
    assert!(bad(r#"{"type":"send","room":"r","id":{},"text":"t"}"#).message.contains("a string or a number"));
    assert!(bad(r#"{"type":"history","room":"r","consistency":"eventual"}"#).message.contains("eventual"));
}

#[test]
fn server_frames_are_written_as_spec_shows_them() {
    let m = Message::posted("r", 2, "c1", "ann", "hi", 10);
    assert_eq!(
        ServerFrame::Message(m.clone()).to_text(),
        r#"{"type":"message","room":"r","seq":2,"id":"c1","from":"ann","text":"hi","ts":10}"#
    );
    let history = ServerFrame::History { room: "r".into(), head: 2, messages: vec![m.clone().into()], req: Some(Id::from("h")) };
    assert_eq!(
        value(&history.to_text()),
        json!({"type": "history", "room": "r", "head": 2, "req": "h",
               "messages": [{"type": "message", "room": "r", "seq": 2, "id": "c1", "from": "ann", "text": "hi", "ts": 10}]})
    );
    let ack = ServerFrame::Ack { room: "r".into(), id: Id::from(7), seq: 2, ts: 10, duplicate: false, req: None };
    assert_eq!(ack.to_text(), r#"{"type":"ack","room":"r","id":7,"seq":2,"ts":10,"duplicate":false}"#);
    let joined = ServerFrame::Joined { room: "r".into(), head: 0, online: vec!["ann".into()], unread: None, req: None };
    assert_eq!(joined.to_text(), r#"{"type":"joined","room":"r","head":0,"online":["ann"]}"#);
    let unread = Some(UnreadCounts { read: 2, unread: 5, mentions: 1, capped: false });
    let joined = ServerFrame::Joined { room: "r".into(), head: 7, online: vec![], unread, req: None };
    assert_eq!(
        value(&joined.to_text()),
        json!({"type": "joined", "room": "r", "head": 7, "online": [], "unread": {"read": 2, "unread": 5, "mentions": 1}})
    );
    let marked = ServerFrame::Marked { room: "r".into(), seq: 7, req: Some(Id::from(3)) };
    assert_eq!(marked.to_text(), r#"{"type":"marked","room":"r","seq":7,"req":3}"#);
    let error = ServerFrame::error(ErrorCode::NotMember, "no", Some(Id::from("m")), None);
    assert_eq!(error.to_text(), r#"{"type":"error","code":"not_member","message":"no","id":"m"}"#);
    assert_eq!(
        ServerFrame::Presence { room: "r".into(), user: "u".into(), online: true }.to_text(),
        r#"{"type":"presence","room":"r","user":"u","online":true}"#
    );
    assert_eq!(ServerFrame::Typing { room: "r".into(), user: "u".into() }.to_text(), r#"{"type":"typing","room":"r","user":"u"}"#);
    assert_eq!(ServerFrame::Left { room: "r".into(), req: Some(Id::from(1)) }.to_text(), r#"{"type":"left","room":"r","req":1}"#);
}

#[test]
fn a_message_frame_is_told_from_its_first_bytes() {
    let m = Message::posted("r", 1, "c", "u", "{\"type\":\"message\",", 1);
    assert!(is_message(&ServerFrame::Message(m.clone()).to_text()));
    let history = ServerFrame::History { room: "r".into(), head: 1, messages: vec![m.into()], req: None };
    assert!(!is_message(&history.to_text()), "a history page holds messages but is not one");
    assert!(!is_message(&ServerFrame::Typing { room: "r".into(), user: "u".into() }.to_text()));
}

#[test]
fn server_frames_read_back() {
    let m = Message::posted("r", 2, "c1", "ann", "hi", 10);
    let frames = [
        ServerFrame::Message(m.clone()),
        ServerFrame::History { room: "r".into(), head: 2, messages: vec![m.into()], req: None },
        ServerFrame::error(ErrorCode::Unavailable, "no leader", None, Some(Id::from("q"))),
        ServerFrame::Ack { room: "r".into(), id: Id::from("c"), seq: 1, ts: 1, duplicate: true, req: Some(Id::from(3)) },
    ];
    for f in frames {
        assert_eq!(ServerFrame::parse(&f.to_text()).unwrap(), f);
    }
    // A frame type this client does not know is an error, not a panic.
    assert!(ServerFrame::parse(r#"{"type":"reaction","room":"r"}"#).is_err());
    assert!(ServerFrame::parse(r#"{"type":"promotion","room":"r"}"#).is_err());
}

#[test]
fn a_number_id_is_stored_as_its_decimal_text() {
    assert_eq!(Id::from(42).text(), "42");
    assert_eq!(Id::from("42").text(), "42");
    assert_eq!(Id::from_value(&json!(true)), None);
}

#[test]
fn error_codes_are_spelled_as_spec_spells_them() {
    for code in [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::NotMember,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Overloaded,
        ErrorCode::NameTaken,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Forbidden,
    ] {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
    }
}

/// Found by `scripts/fuzz.sh` (http_bodies): a numeric id of many digits was
/// read as a slightly different f64 than its own written form, so an ack
/// echoing it named another number. Read exactly, it reads back the same.
#[test]
fn a_long_numeric_id_reads_back_as_the_same_number() {
    let sent = format!("{{\"id\":-6{},\"text\":\"\"}}", "9".repeat(92));
    let post: crate::http::PostMessage = serde_json::from_str(&sent).unwrap();
    let again: crate::http::PostMessage = serde_json::from_str(&serde_json::to_string(&post).unwrap()).unwrap();
    assert_eq!(again, post);
    assert_eq!(again.id.text(), post.id.text());
}

#[test]
fn lifecycle_frames_are_written_and_read_as_protocol_shows_them() {
    let mut m = Message::posted("r", 4, "c4", "bob", "yes", 11);
    m.reply_to = Some(2);
    m.thread = Some(1);
    m.edited_ts = Some(12);
    m.reactions.insert("👍".into(), vec!["ann".into()]);
    assert_eq!(
        value(&ServerFrame::Message(m.clone()).to_text()),
        json!({"type": "message", "room": "r", "seq": 4, "id": "c4", "from": "bob", "text": "yes", "ts": 11,
               "reply_to": 2, "thread": 1, "edited_ts": 12, "reactions": {"👍": ["ann"]}})
    );
    let edit = Edit { room: "r".into(), seq: 5, id: "e".into(), from: "bob".into(), target: 4, text: "yes!".into(), ts: 12 };
    assert_eq!(
        value(&ServerFrame::Edit(edit.clone()).to_text()),
        json!({"type": "edit", "room": "r", "seq": 5, "id": "e", "from": "bob", "target": 4, "text": "yes!", "ts": 12})
    );
    let delete = Delete { room: "r".into(), seq: 6, id: "d".into(), from: "bob".into(), target: 4, ts: 13 };
    let reaction = Reaction { room: "r".into(), seq: 7, id: "x".into(), from: "ann".into(), target: 4, emoji: "👍".into(), added: false, ts: 14 };
    assert_eq!(
        value(&ServerFrame::Reaction(reaction.clone()).to_text()),
        json!({"type": "reaction", "room": "r", "seq": 7, "id": "x", "from": "ann", "target": 4, "emoji": "👍", "added": false, "ts": 14})
    );
    let entries: Vec<HistoryEntry> =
        vec![m.into(), HistoryEntry::Edit(edit), HistoryEntry::Delete(delete.clone()), HistoryEntry::Reaction(reaction)];
    assert_eq!(entries.iter().map(HistoryEntry::seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
    let history = ServerFrame::History { room: "r".into(), head: 7, messages: entries.clone(), req: None };
    assert_eq!(ServerFrame::parse(&history.to_text()).unwrap(), history);
    for e in entries {
        let frame = e.clone().into_frame();
        assert_eq!(ServerFrame::parse(&frame.to_text()).unwrap().entry(), Some(e));
    }
    assert!(value(&ServerFrame::Delete(delete).to_text()).get("text").is_none());
}

#[test]
fn room_actions_are_entries_flat_under_their_action() {
    let c = RoomChange {
        room: "r".into(),
        seq: 8,
        id: "m".into(),
        from: "ann".into(),
        ts: 20,
        action: RoomAction::Mute { user: "eve".into(), secs: Some(5) },
        until: Some(5_020),
    };
    let frame = ServerFrame::RoomAction(c.clone());
    assert_eq!(
        value(&frame.to_text()),
        json!({"type": "room_action", "room": "r", "seq": 8, "id": "m", "from": "ann", "ts": 20, "action": "mute", "user": "eve", "secs": 5, "until": 5020})
    );
    assert_eq!(ServerFrame::parse(&frame.to_text()).unwrap().entry(), Some(HistoryEntry::RoomAction(c)));
    let topic = json!({"type": "room_action", "room": "r", "seq": 9, "id": "t", "from": "ann", "ts": 21, "action": "set_topic", "topic": "hi"});
    assert!(matches!(ServerFrame::parse(&topic.to_string()).unwrap(), ServerFrame::RoomAction(RoomChange { action: RoomAction::SetTopic { .. }, until: None, .. })));
    assert!(ClientFrame::parse(r#"{"type":"room_action","room":"r","id":1,"action":"promote","user":"x"}"#).is_err());
    assert_eq!(value(&ServerFrame::Removed { room: "r".into() }.to_text()), json!({"type": "removed", "room": "r"}));
}
