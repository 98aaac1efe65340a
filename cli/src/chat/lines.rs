//! The lines of `chorusctl chat` for what happens to a message after it is
//! posted: the commands that reply to, edit, delete and react to one, and how
//! each room entry is shown.

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
    }
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
