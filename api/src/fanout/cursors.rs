//! The per-room cursor protocol, with no sockets: where a connection stands
//! in a room, and what a delivery of a group of messages does to it (see the
//! module docs of [`crate::fanout`] for why nothing is lost or repeated).

use super::window::Group;

/// Where a connection stands in one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The last seq sent on this connection.
    pub last: u64,
    /// The fan-out may send the next seq; otherwise the session is replaying
    /// the room from storage.
    pub live: bool,
    /// While not live: the fan-out passed over a newer message (or lost some)
    /// since the session last started a read of storage, which therefore may
    /// not hold it ([`Outbox::replay_from`], [`Outbox::go_live`]).
    ///
    /// [`Outbox::replay_from`]: super::Outbox::replay_from
    /// [`Outbox::go_live`]: super::Outbox::go_live
    skipped: bool,
}

impl Cursor {
    /// A room the session is about to replay from after `last`.
    pub(super) fn replaying(last: u64) -> Self {
        Cursor { last, live: false, skipped: false }
    }

    /// A direct-message room opened for a replay after the fan-out lost
    /// messages: it must read storage before it may go live.
    pub(super) fn opened_after_loss(last: u64) -> Self {
        Cursor { last, live: false, skipped: true }
    }

    /// A live room whose last frame sent is `last`.
    pub(super) fn sent(last: u64) -> Self {
        Cursor { last, live: true, skipped: false }
    }

    /// The fan-out lost messages: the room goes back to storage.
    pub(super) fn lose(&mut self) {
        self.live = false;
        self.skipped = true;
    }

    /// The fan-out passed over a newer message while the room replays.
    pub(super) fn pass_over(&mut self) {
        self.skipped = true;
    }

    /// A read of storage after `last` is about to begin.
    pub(super) fn begin_read(&mut self) {
        self.skipped = false;
    }

    /// Makes the cursor live after a read that found nothing after `last`,
    /// unless the fan-out passed over a newer message since the read began.
    /// Returns whether the cursor is live.
    pub(super) fn go_live(&mut self, last: u64) -> bool {
        if self.live {
            return true;
        }
        if self.skipped || self.last != last {
            return false;
        }
        self.live = true;
        true
    }
}

/// What a delivery of a group does to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing: not the connection's room, or nothing in it the connection lacks.
    Nothing,
    /// The session is replaying the room and the group holds a newer message:
    /// the cursor is marked, so the replay reads storage again before it goes live.
    PassOver,
    /// The group starts after a gap: the room gets this cursor (not live) and
    /// the session fills the gap from storage.
    Stale(Cursor),
    /// Write the group's frames from this index on; the cursor then stands at
    /// the group's last seq, live.
    WriteFrom(usize),
    /// A direct-message room the connection would enter with this group, but
    /// the fan-out lost messages and the room may hold some stamped since the
    /// connection was registered before the group: where the connection
    /// enters is read from storage ([`Dm::Place`]).
    Place,
}

/// A connection and a direct-message room it has no cursor in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dm {
    /// Not a DM room, or the connection's user is not one of its two users.
    NotMine,
    /// One of its two users: the connection gets the messages stamped at or
    /// after this, the cluster clock once it was registered (`None` before).
    Since(Option<u64>),
    /// One of its two users, receiving direct messages stamped since this,
    /// but the fan-out lost messages since then and the session has not yet
    /// read this room from storage: a group can no longer tell where the
    /// connection enters.
    Place(u64),
}

/// What delivering `group` does to a connection whose cursor in its room is
/// `cursor`; `dm` says how a direct-message room without a cursor is entered
/// ([`dm_start`]).
pub(super) fn decide(cursor: Option<Cursor>, dm: Dm, group: &Group) -> Step {
    let cursor = match (cursor, dm) {
        (Some(c), _) => c,
        (None, Dm::NotMine) => return Step::Nothing,
        (None, Dm::Since(since)) => match dm_start(since, group) {
            Some(c) => c,
            None => return Step::Nothing,
        },
        // Messages before this group may be stamped since the connection was
        // registered and never have reached it; a group with nothing that
        // recent needs nothing, as `ts` never decreases within a room.
        (None, Dm::Place(since)) => return if dm_start(Some(since), group).is_some() { Step::Place } else { Step::Nothing },
    };
    if cursor.last >= group.last() {
        return Step::Nothing;
    }
    if !cursor.live {
        // The session is replaying the room: it must read storage again
        // before it goes live.
        return Step::PassOver;
    }
    if cursor.last + 1 < group.first {
        return Step::Stale(Cursor { live: false, ..cursor });
    }
    // Frames already sent (from storage, by a replay) are skipped.
    Step::WriteFrom((cursor.last + 1 - group.first) as usize)
}

/// The cursor a connection with no cursor in a direct-message room starts
/// with for `group`: just before its first message stamped at or after
/// `since`; none before the session has read the clock, or if no message is
/// that recent.
pub(super) fn dm_start(since: Option<u64>, group: &Group) -> Option<Cursor> {
    // `ts` never decreases within a room, so these are the group's tail: the
    // cursor starts just before it.
    let since = since?;
    let i = group.ts.iter().position(|&ts| ts >= since)?;
    Some(Cursor::sent(group.first + i as u64 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A group of `room` of messages `seqs`, message n stamped 10 n; no frames.
    fn group(room: &str, seqs: std::ops::RangeInclusive<u64>) -> Group {
        let n = seqs.clone().count();
        Group { first: *seqs.start(), bytes: Bytes::new(), starts: vec![0; n], ts: seqs.map(|s| 10 * s).collect(), room: room.into() }
    }

    #[test]
    fn a_live_cursor_gets_what_it_lacks_and_goes_stale_on_a_gap() {
        let live = Some(Cursor::sent(5));
        // Already sent, all or part.
        assert_eq!(decide(live, Dm::NotMine, &group("r", 3..=5)), Step::Nothing);
        assert_eq!(decide(live, Dm::NotMine, &group("r", 3..=7)), Step::WriteFrom(3));
        assert_eq!(decide(live, Dm::NotMine, &group("r", 6..=8)), Step::WriteFrom(0));
        // A gap: 6 was never sent.
        assert_eq!(decide(live, Dm::NotMine, &group("r", 7..=8)), Step::Stale(Cursor { last: 5, live: false, skipped: false }));
        // Not in the room.
        assert_eq!(decide(None, Dm::NotMine, &group("r", 1..=3)), Step::Nothing);
    }

    #[test]
    fn a_replaying_cursor_takes_nothing_and_is_marked_only_by_something_newer() {
        let replaying = Some(Cursor::replaying(5));
        assert_eq!(decide(replaying, Dm::NotMine, &group("r", 4..=5)), Step::Nothing);
        assert_eq!(decide(replaying, Dm::NotMine, &group("r", 6..=6)), Step::PassOver);
        assert_eq!(decide(replaying, Dm::NotMine, &group("r", 9..=9)), Step::PassOver);
        assert_eq!(decide(replaying, Dm::Since(Some(0)), &group("dm:a:b", 9..=9)), Step::PassOver);
    }

    #[test]
    fn a_replay_goes_live_only_if_nothing_was_passed_over_since_its_read_began() {
        let mut c = Cursor::replaying(5);
        c.begin_read();
        // Message 6 is applied while the read runs, and passed over.
        if decide(Some(c), Dm::NotMine, &group("r", 6..=6)) == Step::PassOver {
            c.pass_over();
        }
        assert!(!c.go_live(5), "went live past a message it never sent");
        // The next read finds 6 and sends it.
        c.begin_read();
        c.last = 6;
        assert!(!c.go_live(5), "went live after a seq it was not at");
        assert!(c.go_live(6));
        assert!(c.go_live(0), "a live cursor stays live");
        assert_eq!(decide(Some(c), Dm::NotMine, &group("r", 5..=7)), Step::WriteFrom(2));
        // Lost messages send it back to storage, and a read begun before must read again.
        c.lose();
        assert!(!c.go_live(6));
        c.begin_read();
        assert!(c.go_live(6));
        // A room opened after a loss must read before it goes live.
        let mut opened = Cursor::opened_after_loss(3);
        assert!(!opened.go_live(3));
        opened.begin_read();
        assert!(opened.go_live(3));
    }

    #[test]
    fn a_connection_with_no_cursor_in_a_dm_room_starts_at_the_first_message_stamped_since_it_was_registered() {
        let dm = group("dm:ann:bob", 1..=3); // stamped 10, 20, 30
        // Before the session has read the clock, nothing.
        assert_eq!(dm_start(None, &dm), None);
        assert_eq!(decide(None, Dm::Since(None), &dm), Step::Nothing);
        // Since 20 (or 11 to 20): messages 2 and 3.
        assert_eq!(dm_start(Some(20), &dm), Some(Cursor::sent(1)));
        assert_eq!(dm_start(Some(11), &dm), Some(Cursor::sent(1)));
        assert_eq!(decide(None, Dm::Since(Some(20)), &dm), Step::WriteFrom(1));
        // Since the first or earlier: all of them.
        assert_eq!(dm_start(Some(0), &dm), Some(Cursor::sent(0)));
        assert_eq!(decide(None, Dm::Since(Some(10)), &dm), Step::WriteFrom(0));
        // Nothing that recent.
        assert_eq!(dm_start(Some(31), &dm), None);
        assert_eq!(decide(None, Dm::Since(Some(31)), &dm), Step::Nothing);
        // Not one of the two users: no cursor, nothing.
        assert_eq!(decide(None, Dm::NotMine, &dm), Step::Nothing);
        // With a cursor, the DM room is like any other.
        assert_eq!(decide(Some(Cursor::sent(2)), Dm::Since(Some(0)), &dm), Step::WriteFrom(2));
        assert_eq!(decide(Some(Cursor::sent(3)), Dm::Since(Some(0)), &dm), Step::Nothing);
    }

    #[test]
    fn after_a_loss_a_dm_room_without_a_cursor_is_entered_from_storage() {
        let dm = group("dm:ann:bob", 4..=5); // stamped 40, 50
        // Messages 2 and 3 may have been lost and stamped since 20: the group
        // cannot say where the connection enters.
        assert_eq!(decide(None, Dm::Place(20), &dm), Step::Place);
        // Nothing in the group that recent, so nothing before it either.
        assert_eq!(decide(None, Dm::Place(51), &dm), Step::Nothing);
        // A room that has a cursor goes on as before.
        assert_eq!(decide(Some(Cursor::sent(4)), Dm::Place(20), &dm), Step::WriteFrom(1));
        assert_eq!(decide(None, Dm::NotMine, &dm), Step::Nothing);
    }
}
