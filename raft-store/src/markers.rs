//! Read state (feature level 4): each user's read marker per room, replicated
//! so that every device and every node agrees on it, and the unread and
//! `@mention` counts served from it.
//!
//! A marker is the seq of the last entry the user has read in the room. It
//! only moves forward ([`mark`] keeps the larger of the old and the new), so
//! markers from two devices commute: whatever order they apply in, the marker
//! ends at the larger. Counts are not stored: [`unread`] reads the entries
//! after the marker, at most [`MAX_COUNTED`] of them, when asked.

use crate::chat::{self, Applied, Outcome, Table, Tables, TablesRead};
use crate::error::StoreError;
use crate::lifecycle::Kind;
use crate::read::ChatRead;

/// The most entries after a marker that [`unread`] reads; past it the counts
/// are a floor ([`Unread::capped`]).
pub const MAX_COUNTED: usize = 1000;

fn marker_key(user: &str, room: &str) -> Vec<u8> {
    chat::key2(user, room.as_bytes())
}

/// The user's read marker in `room` (0 if none).
pub fn marker(t: &(impl TablesRead + ?Sized), user: &str, room: &str) -> Result<u64, StoreError> {
    Ok(chat::get_record(t, Table::Markers, &marker_key(user, room))?.unwrap_or(0))
}

/// Moves `user`'s marker in `room` to `seq` if that is further, never past the
/// room's last entry. A member's (a DM room's two users') only.
pub(crate) fn mark(t: &mut impl Tables, room: &str, user: &str, seq: u64) -> Result<Applied, StoreError> {
    if room.is_empty() || user.is_empty() || room.len() > 255 || user.len() > 255 {
        return Ok(chat::rejected("malformed room or user name"));
    }
    if !chat::is_member(t, room, user)? {
        return Ok(Applied::outcome(Outcome::NotMember));
    }
    let head = chat::room(t, room)?.map_or(0, |r| r.last_seq);
    let old = marker(t, user, room)?;
    let new = old.max(seq.min(head));
    if new != old {
        chat::put_record(t, Table::Markers, &marker_key(user, room), &new)?;
    }
    Ok(Applied::outcome(Outcome::Marked { seq: new }))
}

/// A user's read state in one room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unread {
    /// The read marker.
    pub read: u64,
    /// Messages after the marker from other users (deleted ones not counted).
    pub messages: u64,
    /// Of those, the ones that mention `@user`.
    pub mentions: u64,
    /// More than [`MAX_COUNTED`] entries follow the marker: the counts are a floor.
    pub capped: bool,
}

/// Whether `text` mentions `@user`: the name after an `@` that does not
/// follow a name character, and ends there.
pub fn mentions(text: &str, user: &str) -> bool {
    let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    text.match_indices('@').any(|(at, _)| {
        let before_ok = text[..at].chars().next_back().is_none_or(|c| !name(c));
        let rest = &text[at + 1..];
        before_ok && rest.starts_with(user) && rest[user.len()..].chars().next().is_none_or(|c| !name(c))
    })
}

/// `user`'s marker in `room` and what came after it.
pub fn unread(t: &(impl ChatRead + ?Sized), room: &str, user: &str) -> Result<Unread, StoreError> {
    let read = marker(t, user, room)?;
    let page = t.history(room, Some(read), None, MAX_COUNTED + 1)?;
    let capped = page.messages.len() > MAX_COUNTED;
    let mut u = Unread { read, capped, ..Unread::default() };
    for m in page.messages.iter().take(MAX_COUNTED) {
        let live = matches!(&m.kind, Kind::Post(s) if !s.deleted);
        if live && m.from != user {
            u.messages += 1;
            u.mentions += u64::from(mentions(&m.text, user));
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{apply, Command, Event, MemTables};

    fn run(t: &mut MemTables, event: Event) -> Outcome {
        apply(t, &Command { ts_ms: 1, event }).expect("apply").outcome
    }

    fn post(t: &mut MemTables, from: &str, id: &str, text: &str) {
        run(t, Event::MessagePosted { room: "r".into(), from: from.into(), client_id: id.into(), text: text.into() });
    }

    #[test]
    fn a_marker_only_moves_forward_and_stops_at_the_head() {
        let mut t = MemTables::default();
        let mark = |seq| Event::ReadMarked { room: "r".into(), user: "ann".into(), seq };
        assert_eq!(run(&mut t, mark(1)), Outcome::NotMember);
        run(&mut t, Event::RoomJoined { room: "r".into(), user: "ann".into() });
        for i in 0..3 {
            post(&mut t, "ann", &i.to_string(), "hi");
        }
        assert_eq!(run(&mut t, mark(2)), Outcome::Marked { seq: 2 });
        assert_eq!(run(&mut t, mark(1)), Outcome::Marked { seq: 2 }, "an older device's marker does not move it back");
        assert_eq!(run(&mut t, mark(99)), Outcome::Marked { seq: 3 }, "never past the last entry");
        assert_eq!(marker(&t, "ann", "r").expect("read"), 3);
    }

    #[test]
    fn unread_counts_others_messages_and_mentions_after_the_marker() {
        let mut t = MemTables::default();
        for user in ["ann", "bob"] {
            run(&mut t, Event::RoomJoined { room: "r".into(), user: user.into() });
        }
        post(&mut t, "bob", "1", "morning");
        post(&mut t, "bob", "2", "@ann look");
        post(&mut t, "ann", "3", "mine, not unread");
        post(&mut t, "bob", "4", "mail bob@anna.example or @annie");
        run(&mut t, Event::MessageDeleted { room: "r".into(), from: "bob".into(), client_id: "5".into(), target: 1 });
        let u = unread(&t, "r", "ann").expect("unread");
        assert_eq!(u, Unread { read: 0, messages: 2, mentions: 1, capped: false });
        run(&mut t, Event::ReadMarked { room: "r".into(), user: "ann".into(), seq: 2 });
        assert_eq!(unread(&t, "r", "ann").expect("unread"), Unread { read: 2, messages: 1, mentions: 0, capped: false });
    }

    #[test]
    fn a_mention_is_the_whole_name_after_an_at() {
        assert!(mentions("@ann", "ann"));
        assert!(mentions("hi @ann, see", "ann"));
        assert!(!mentions("@anna", "ann"));
        assert!(!mentions("x@ann", "ann"));
        assert!(!mentions("ann", "ann"));
        assert!(mentions("@bob @ann", "ann"));
    }
}
