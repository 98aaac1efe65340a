//! The lines of `chorusctl chat` for what happens to a message after it is
//! posted: the commands that reply to, edit, delete and react to one, the
//! room commands (invite, kick, ban, mute, roles, topic…), and how each room
//! entry is shown.

use wire::{ClientFrame, HistoryEntry, Id};

/// The commands of this module, for the help line.
pub const USAGE: &str = "/reply SEQ TEXT, /edit SEQ TEXT, /delete SEQ, /react SEQ EMOJI, /unreact SEQ EMOJI";

/// A typed change to the message at a seq of the current room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Typed {
    Reply { to: u64, text: String },
    Edit { target: u64, text: String },
    Delete { target: u64 },
    React { target: u64, emoji: String },
    Unreact { target: u64, emoji: String },
}

impl Typed {
    /// Reads one of this module's commands: `None` if `line` is none of
    /// them, else the change or the usage of the command it misspells.
    pub fn parse(line: &str) -> Option<Result<Typed, &'static str>> {
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (usage, wants_rest) = match command {
            "/reply" => ("/reply SEQ TEXT", true),
            "/edit" => ("/edit SEQ TEXT", true),
            "/delete" => ("/delete SEQ", false),
            "/react" => ("/react SEQ EMOJI", true),
            "/unreact" => ("/unreact SEQ EMOJI", true),
            _ => return None,
        };
        let rest = rest.trim();
        let (seq, arg) = rest.split_once(' ').map_or((rest, ""), |(s, a)| (s, a.trim()));
        let Ok(seq) = seq.parse::<u64>() else { return Some(Err(usage)) };
        if wants_rest == arg.is_empty() {
            return Some(Err(usage));
        }
        let arg = arg.to_string();
        Some(Ok(match command {
            "/reply" => Typed::Reply { to: seq, text: arg },
            "/edit" => Typed::Edit { target: seq, text: arg },
            "/delete" => Typed::Delete { target: seq },
            "/react" => Typed::React { target: seq, emoji: arg },
            _ => Typed::Unreact { target: seq, emoji: arg },
        }))
    }

    /// The frame that makes this change in `room`, with client id `id`.
    pub fn frame(self, room: String, id: Id) -> ClientFrame {
        match self {
            Typed::Reply { to, text } => ClientFrame::Send { room, id, text, reply_to: Some(to) },
            Typed::Edit { target, text } => ClientFrame::Edit { room, id, target, text },
            Typed::Delete { target } => ClientFrame::Delete { room, id, target },
            Typed::React { target, emoji } => ClientFrame::React { room, id, target, emoji },
            Typed::Unreact { target, emoji } => ClientFrame::Unreact { room, id, target, emoji },
        }
    }
}

/// A room entry as a line: `[room #seq] from: text`, with what has happened
/// to a message since, or what a change did.
pub fn describe(e: &HistoryEntry) -> String {
    let at = |room: &str, seq: u64| format!("[{room} #{seq}]");
    match e {
        HistoryEntry::Message(m) => {
            let mut line = format!("{} {}:", at(&m.room, m.seq), m.from);
            if let Some(to) = m.reply_to {
                line.push_str(&format!(" (re #{to})"));
            }
            if m.deleted {
                line.push_str(" (deleted)");
            } else {
                line.push(' ');
                line.push_str(&m.text);
            }
            if m.edited_ts.is_some() && !m.deleted {
                line.push_str(" (edited)");
            }
            if !m.reactions.is_empty() {
                let counts: Vec<String> = m.reactions.iter().map(|(emoji, users)| format!("{emoji} {}", users.len())).collect();
                line.push_str(&format!(" [{}]", counts.join(", ")));
            }
            line
        }
        HistoryEntry::Edit(x) if x.text.is_empty() => format!("{} {} edited #{} (since deleted)", at(&x.room, x.seq), x.from, x.target),
        HistoryEntry::Edit(x) => format!("{} {} edited #{}: {}", at(&x.room, x.seq), x.from, x.target, x.text),
        HistoryEntry::Delete(x) => format!("{} {} deleted #{}", at(&x.room, x.seq), x.from, x.target),
        HistoryEntry::Reaction(x) if x.added => format!("{} {} reacted {} to #{}", at(&x.room, x.seq), x.from, x.emoji, x.target),
        HistoryEntry::Reaction(x) => format!("{} {} took back {} from #{}", at(&x.room, x.seq), x.from, x.emoji, x.target),
        HistoryEntry::RoomAction(x) => format!("{} {} {}", at(&x.room, x.seq), x.from, room_action(&x.action, x.until)),
    }
}

/// What a room action did, as the words after who did it.
pub fn room_action(a: &wire::RoomAction, until: Option<u64>) -> String {
    use wire::RoomAction as A;
    let lasting = |secs: &Option<u64>| match (secs, until) {
        (Some(s), Some(until)) => format!(" for {s}s (until {until} ms)"),
        (Some(s), None) => format!(" for {s}s"),
        (None, _) => String::new(),
    };
    let role = |r: &wire::Role| match r {
        wire::Role::Member => "a member",
        wire::Role::Moderator => "a moderator",
        wire::Role::Owner => "the owner",
    };
    match a {
        A::Invite { user } => format!("invited {user}"),
        A::Kick { user } => format!("removed {user}"),
        A::Ban { user, secs } => format!("banned {user}{}", lasting(secs)),
        A::Unban { user } => format!("lifted the ban on {user}"),
        A::Mute { user, secs } => format!("muted {user}{}", lasting(secs)),
        A::Unmute { user } => format!("unmuted {user}"),
        A::SetRole { user, role: r } => format!("made {user} {}", role(r)),
        A::SetTopic { topic } => format!("set the topic: {topic}"),
        A::SetTitle { title } => format!("set the title: {title}"),
        A::SetVisibility { visibility: wire::Visibility::Public } => "made the room public".to_string(),
        A::SetVisibility { visibility: wire::Visibility::Private } => "made the room private".to_string(),
    }
}

/// A page of search results as lines, best first: `[room #seq] from: text`.
pub fn search_results(page: &wire::http::SearchPage) -> String {
    if page.results.is_empty() {
        return format!("* nothing found for {:?}", page.q);
    }
    let more = if page.next_offset.is_some() { "+" } else { "" };
    let mut out = format!("* {}{more} found for {:?}:", page.results.len(), page.q);
    for r in &page.results {
        out.push('\n');
        out.push_str(&describe(&HistoryEntry::Message(r.message.clone())));
    }
    out
}

/// `/rooms [TEXT]`: the room directory as lines, one room each.
pub fn room_list(rows: &[wire::http::RoomSummary], q: &str) -> String {
    let rooms: Vec<&wire::http::RoomSummary> = rows.iter().filter(|r| !r.name.starts_with("dm:")).collect();
    let matching = if q.is_empty() { String::new() } else { format!(" matching {q:?}") };
    if rooms.is_empty() {
        return format!("* no rooms{matching}");
    }
    let mut out = format!("* {} room(s){matching}:", rooms.len());
    for r in rooms {
        let lock = if r.visibility == Some(wire::Visibility::Private) { "🔒 " } else { "" };
        let mut about = vec![format!("{} member(s)", r.members)];
        if let Some(role) = r.role {
            let role = match role {
                wire::Role::Owner => "owner",
                wire::Role::Moderator => "moderator",
                wire::Role::Member => "member",
            };
            about.push(format!("you: {role}"));
        } else if r.invited {
            about.push("you are invited".into());
        }
        if let Some(topic) = r.topic.as_deref().filter(|t| !t.is_empty()) {
            about.push(topic.to_string());
        }
        let title = r.title.as_deref().filter(|t| !t.is_empty()).map(|t| format!(" {t}")).unwrap_or_default();
        out.push_str(&format!("\n  {lock}#{}{title} — {}", r.name, about.join(" · ")));
    }
    out
}

/// `/thread SEQ`: a thread's first message and its replies, as lines.
pub fn thread(page: &wire::http::ThreadPage) -> String {
    let replies = page.messages.len().saturating_sub(1);
    let mut out = format!("* thread of #{} in {} ({replies} repl{}):", page.root, page.room, if replies == 1 { "y" } else { "ies" });
    for e in &page.messages {
        out.push('\n');
        out.push_str(&describe(e));
    }
    out
}

/// The room commands, for the help line.
pub const ROOM_USAGE: &str =
    "/invite USER, /kick USER, /ban USER [SECS], /unban USER, /mute USER [SECS], /unmute USER, /mod USER, /demote USER, /owner USER, /topic TEXT, /title TEXT, /private, /public";

/// Reads a room command (moderation and settings of the current room):
/// `None` if `line` is none, else the action or the usage it misspells.
pub fn room_command(line: &str) -> Option<Result<wire::RoomAction, &'static str>> {
    use wire::RoomAction as A;
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let user = |usage: &'static str| match words.as_slice() {
        [u] => Ok(u.to_string()),
        _ => Err(usage),
    };
    let user_secs = |usage: &'static str| match words.as_slice() {
        [u] => Ok((u.to_string(), None)),
        [u, s] => s.parse::<u64>().map(|s| (u.to_string(), Some(s))).map_err(|_| usage),
        _ => Err(usage),
    };
    let text = |usage: &'static str| if rest.is_empty() { Err(usage) } else { Ok(rest.to_string()) };
    let role = |role: wire::Role, usage: &'static str| user(usage).map(|user| A::SetRole { user, role });
    Some(match command {
        "/invite" => user("/invite USER").map(|user| A::Invite { user }),
        "/kick" => user("/kick USER").map(|user| A::Kick { user }),
        "/ban" => user_secs("/ban USER [SECS]").map(|(user, secs)| A::Ban { user, secs }),
        "/unban" => user("/unban USER").map(|user| A::Unban { user }),
        "/mute" => user_secs("/mute USER [SECS]").map(|(user, secs)| A::Mute { user, secs }),
        "/unmute" => user("/unmute USER").map(|user| A::Unmute { user }),
        "/mod" => role(wire::Role::Moderator, "/mod USER"),
        "/demote" => role(wire::Role::Member, "/demote USER"),
        "/owner" => role(wire::Role::Owner, "/owner USER"),
        "/topic" => text("/topic TEXT").map(|topic| A::SetTopic { topic }),
        "/title" => text("/title TEXT").map(|title| A::SetTitle { title }),
        "/private" if rest.is_empty() => Ok(A::SetVisibility { visibility: wire::Visibility::Private }),
        "/public" if rest.is_empty() => Ok(A::SetVisibility { visibility: wire::Visibility::Public }),
        "/private" => Err("/private"),
        "/public" => Err("/public"),
        _ => return None,
    })
}

/// A room's read state as `joined` shows it: `, 3 unread, 1 mentioning you`.
pub fn unread(u: &wire::UnreadCounts) -> String {
    let more = if u.capped { "+" } else { "" };
    match (u.unread, u.mentions) {
        (0, _) => String::new(),
        (n, 0) => format!(", {n}{more} unread"),
        (n, m) => format!(", {n}{more} unread, {m} mentioning you"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_into_changes_or_their_usage() {
        assert_eq!(Typed::parse("/reply 4 sure thing"), Some(Ok(Typed::Reply { to: 4, text: "sure thing".into() })));
        assert_eq!(Typed::parse("/edit 2 fixed"), Some(Ok(Typed::Edit { target: 2, text: "fixed".into() })));
        assert_eq!(Typed::parse("/delete 9"), Some(Ok(Typed::Delete { target: 9 })));
        assert_eq!(Typed::parse("/react 3 👍"), Some(Ok(Typed::React { target: 3, emoji: "👍".into() })));
        assert_eq!(Typed::parse("/unreact 3 👍"), Some(Ok(Typed::Unreact { target: 3, emoji: "👍".into() })));
        assert_eq!(Typed::parse("/edit two words"), Some(Err("/edit SEQ TEXT")));
        assert_eq!(Typed::parse("/edit 2"), Some(Err("/edit SEQ TEXT")));
        assert_eq!(Typed::parse("/delete 9 now"), Some(Err("/delete SEQ")));
        assert_eq!(Typed::parse("/react"), Some(Err("/react SEQ EMOJI")));
        assert_eq!(Typed::parse("/who"), None);
        assert_eq!(Typed::parse("hello"), None);
        let frame = Typed::Reply { to: 4, text: "ok".into() }.frame("r".into(), Id::from("c-1"));
        assert_eq!(frame, ClientFrame::Send { room: "r".into(), id: Id::from("c-1"), text: "ok".into(), reply_to: Some(4) });
    }

    #[test]
    fn the_directory_and_a_thread_read_as_lines() {
        let row = |name: &str| wire::http::RoomSummary {
            name: name.into(),
            members: 3,
            last_seq: 9,
            unread: None,
            visibility: Some(wire::Visibility::Public),
            title: None,
            topic: None,
            role: None,
            invited: false,
        };
        let hideout = wire::http::RoomSummary { visibility: Some(wire::Visibility::Private), title: Some("Plans".into()), invited: true, ..row("hideout") };
        let general = wire::http::RoomSummary { role: Some(wire::Role::Owner), topic: Some("all hands".into()), ..row("general") };
        let listed = room_list(&[general, hideout, row("dm:ann:ben")], "");
        assert_eq!(listed, "* 2 room(s):\n  #general — 3 member(s) · you: owner · all hands\n  🔒 #hideout Plans — 3 member(s) · you are invited");
        assert_eq!(room_list(&[], "zz"), "* no rooms matching \"zz\"");
        let message = |seq: u64, text: &str, reply_to: Option<u64>| {
            HistoryEntry::Message(wire::Message { room: "r".into(), seq, id: format!("m{seq}"), from: "ann".into(), text: text.into(), ts: 1, reply_to, ..wire::Message::default() })
        };
        let page = wire::http::ThreadPage { room: "r".into(), root: 2, messages: vec![message(2, "plan?", None), message(5, "yes", Some(2))] };
        assert_eq!(thread(&page), "* thread of #2 in r (1 reply):\n[r #2] ann: plan?\n[r #5] ann: (re #2) yes");
    }

    #[test]
    fn room_commands_parse_into_actions_or_their_usage() {
        use wire::RoomAction as A;
        assert_eq!(room_command("/kick bob"), Some(Ok(A::Kick { user: "bob".into() })));
        assert_eq!(room_command("/ban bob 60"), Some(Ok(A::Ban { user: "bob".into(), secs: Some(60) })));
        assert_eq!(room_command("/mute bob"), Some(Ok(A::Mute { user: "bob".into(), secs: None })));
        assert_eq!(room_command("/mod bob"), Some(Ok(A::SetRole { user: "bob".into(), role: wire::Role::Moderator })));
        assert_eq!(room_command("/topic release  day"), Some(Ok(A::SetTopic { topic: "release  day".into() })));
        assert_eq!(room_command("/private"), Some(Ok(A::SetVisibility { visibility: wire::Visibility::Private })));
        assert_eq!(room_command("/ban bob soon"), Some(Err("/ban USER [SECS]")));
        assert_eq!(room_command("/invite"), Some(Err("/invite USER")));
        assert_eq!(room_command("/public now"), Some(Err("/public")));
        assert_eq!(room_command("/who"), None);
        let change = wire::RoomChange { room: "r".into(), seq: 7, id: "x".into(), from: "ann".into(), ts: 1, action: A::Ban { user: "bob".into(), secs: Some(60) }, until: Some(60_001) };
        assert_eq!(describe(&HistoryEntry::RoomAction(change)), "[r #7] ann banned bob for 60s (until 60001 ms)");
    }

    #[test]
    fn search_results_read_as_lines() {
        let hit = |seq, text: &str| wire::http::SearchResult { score: 1.0, message: wire::Message::posted("r", seq, "i", "ann", text, 1) };
        let page = wire::http::SearchPage { q: "cat".into(), results: vec![hit(3, "a cat"), hit(9, "cats")], next_offset: Some(2) };
        assert_eq!(search_results(&page), "* 2+ found for \"cat\":\n[r #3] ann: a cat\n[r #9] ann: cats");
        let none = wire::http::SearchPage { q: "dog".into(), results: vec![], next_offset: None };
        assert_eq!(search_results(&none), "* nothing found for \"dog\"");
    }

    #[test]
    fn unread_counts_read_as_a_clause() {
        let u = |unread, mentions, capped| wire::UnreadCounts { read: 1, unread, mentions, capped };
        assert_eq!(unread(&u(0, 0, false)), "");
        assert_eq!(unread(&u(3, 0, false)), ", 3 unread");
        assert_eq!(unread(&u(1000, 2, true)), ", 1000+ unread, 2 mentioning you");
    }

    #[test]
    fn entries_read_as_lines() {
        let mut m = wire::Message::posted("r", 5, "c", "ann", "hi", 1);
        assert_eq!(describe(&m.clone().into()), "[r #5] ann: hi");
        m.reply_to = Some(2);
        m.edited_ts = Some(3);
        m.reactions.insert("👍".into(), vec!["bob".into(), "cy".into()]);
        assert_eq!(describe(&m.clone().into()), "[r #5] ann: (re #2) hi (edited) [👍 2]");
        m.deleted = true;
        m.reactions.clear();
        assert_eq!(describe(&m.into()), "[r #5] ann: (re #2) (deleted)");
        let r = wire::Reaction { room: "r".into(), seq: 6, id: "x".into(), from: "bob".into(), target: 5, emoji: "🎉".into(), added: true, ts: 4 };
        assert_eq!(describe(&HistoryEntry::Reaction(r)), "[r #6] bob reacted 🎉 to #5");
        let d = wire::Delete { room: "r".into(), seq: 7, id: "y".into(), from: "ann".into(), target: 5, ts: 5 };
        assert_eq!(describe(&HistoryEntry::Delete(d)), "[r #7] ann deleted #5");
    }
}
