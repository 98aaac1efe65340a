//! [`ChatRead`]: the queries the API and the admin plane ask of the applied
//! chat state, written once over one ranged scan.
//!
//! Two stores implement it: the RocksDB [`crate::state_machine::ChatReader`]
//! of a running node, and the in-memory [`MemTables`] that `apply`'s property
//! tests and the API's route tests run on. Each supplies only
//! [`TablesRead::get`] and [`ChatRead::scan`]; every query here (history pages,
//! members, the room list…) is the same code on both, so a test on
//! `MemTables` exercises the queries a node serves.

use crate::chat::{self, ClusterRecord, MemTables, Message, RoomRecord, Table, TablesRead, UserRecord};
use crate::codec::decode;
use crate::error::StoreError;

/// One page of a room's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The room's last seq when the page was read.
    pub head: u64,
    pub messages: Vec<Message>,
}

/// The order of a [`ChatRead::scan`], and so which end of its range a
/// `limit` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The lowest keys first.
    Ascending,
    /// The highest keys first.
    Descending,
}

/// One stored key and its value, as a ranged scan returns them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Read access to the applied chat state.
pub trait ChatRead: TablesRead + Send + Sync {
    /// Up to `limit` entries of `table` with `lower <= key < upper` (no upper
    /// bound if `None`), in `order` (so a limit keeps the lowest or the highest keys).
    fn scan(
        &self,
        table: Table,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<KeyValue>, StoreError>;

    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        chat::user(self, name)
    }

    fn room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError> {
        chat::room(self, name)
    }

    fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        chat::is_member(self, room, user)
    }

    fn cluster(&self) -> Result<Option<ClusterRecord>, StoreError> {
        chat::cluster(self)
    }

    /// The token-signing keys ([`crate::sessions::signing_keys`]).
    fn signing_keys(&self) -> Result<crate::sessions::SigningKeys, StoreError> {
        crate::sessions::signing_keys(self)
    }

    /// The user's session epoch ([`crate::sessions::session_epoch`]).
    fn session_epoch(&self, user: &str) -> Result<u64, StoreError> {
        crate::sessions::session_epoch(self, user)
    }

    /// How many rooms the user created ([`crate::quota::rooms_created`]).
    fn rooms_created(&self, user: &str) -> Result<u64, StoreError> {
        crate::quota::rooms_created(self, user)
    }

    /// The cluster clock ([`chat::clock`]).
    fn clock(&self) -> Result<u64, StoreError> {
        chat::clock(self)
    }

    /// The members of a room, by name. A DM room stores none (its members are
    /// its two users, see [`chat::is_member`]).
    fn members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        let prefix = chat::key2(room, &[]);
        let end = prefix_end(&prefix);
        let entries = self.scan(Table::Members, &prefix, end.as_deref(), usize::MAX, Order::Ascending)?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix(prefix.as_slice()).map(|u| String::from_utf8_lossy(u).into_owned()))
            .collect())
    }

    /// Every room with its record, by name.
    fn rooms(&self) -> Result<Vec<(String, RoomRecord)>, StoreError> {
        self.rooms_page(None, usize::MAX)
    }

    /// At most `limit` rooms, by name, starting after `after`.
    fn rooms_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, RoomRecord)>, StoreError> {
        // The smallest key greater than `after` is `after` with a 0 byte added.
        let lower = after.map(|a| [a.as_bytes(), &[0]].concat()).unwrap_or_default();
        self.scan(Table::Rooms, &lower, None, limit, Order::Ascending)?
            .into_iter()
            .map(|(key, value)| Ok((String::from_utf8_lossy(&key).into_owned(), decode(&value)?)))
            .collect()
    }

    /// Messages with `after < seq < before`, ascending, at most `limit`. With
    /// `after`, the page starts just after it; without, it ends at the newest
    /// message (or just before `before`), which is how clients scroll back.
    fn history(&self, room: &str, after: Option<u64>, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        let head = self.room(room)?.map_or(0, |r| r.last_seq);
        // Bounded by `head` as read above: a message applied since is not in
        // the page, so `head` and the page agree.
        let upper = chat::message_key(room, before.unwrap_or(u64::MAX).min(head.saturating_add(1)));
        let (lower, order) = match after {
            Some(after) => (chat::message_key(room, after.saturating_add(1)), Order::Ascending),
            None => (chat::message_key(room, 1), Order::Descending),
        };
        let mut messages = self
            .scan(Table::Messages, &lower, Some(&upper), limit, order)?
            .into_iter()
            .map(|(_, value)| crate::lifecycle::decode_entry(&value))
            .collect::<Result<Vec<Message>, _>>()?;
        if order == Order::Descending {
            messages.reverse();
        }
        Ok(HistoryPage { head, messages })
    }

    /// `user`'s read marker in `room` and the unread and mention counts after
    /// it ([`crate::markers::unread`]).
    fn unread(&self, room: &str, user: &str) -> Result<crate::markers::Unread, StoreError> {
        crate::markers::unread(self, room, user)
    }

    /// The entry at `seq` of `room` ([`crate::lifecycle::entry`]).
    fn entry(&self, room: &str, seq: u64) -> Result<Option<Message>, StoreError> {
        crate::lifecycle::entry(self, room, seq)
    }

    /// The thread rooted at the message `root`: the entries of seq above
    /// `after` among the root and its replies, ascending, at most `limit`;
    /// `None` if `root` is not a message of the room. Replies are served as
    /// they are now (edited, reacted to, deleted).
    fn thread(&self, room: &str, root: u64, after: Option<u64>, limit: usize) -> Result<Option<Vec<Message>>, StoreError> {
        let Some(first) = self.entry(room, root)?.filter(|m| matches!(m.kind, crate::lifecycle::Kind::Post(_))) else {
            return Ok(None);
        };
        let after = after.unwrap_or(0);
        let mut entries = Vec::new();
        if after < root && limit > 0 {
            entries.push(first);
        }
        let rest = limit - entries.len();
        for seq in crate::lifecycle::thread_seqs(self, room, root, after.max(root), rest)? {
            entries.extend(self.entry(room, seq)?);
        }
        Ok(Some(entries))
    }

    /// The last seq of `room` stamped (`ts_ms`) before `since`, or 0 if none
    /// is; `None` if the newest message is, so none is stamped at or after
    /// `since`. Reads back from the head `page` messages at a time, which
    /// works because `ts` never decreases within a room.
    fn last_stamped_before(&self, room: &str, since: u64, page: usize) -> Result<Option<u64>, StoreError> {
        let mut before = None;
        let mut head = None;
        loop {
            let p = self.history(room, None, before, page.max(1))?;
            let head = *head.get_or_insert(p.head);
            let Some(first) = p.messages.first() else { return Ok(Some(0)) };
            if let Some(m) = p.messages.iter().rev().find(|m| m.ts_ms < since) {
                return Ok((m.seq != head).then_some(m.seq));
            }
            before = Some(first.seq);
        }
    }
}

/// The first key after every key that starts with `prefix`, or `None` if
/// there is none (the prefix is all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl ChatRead for MemTables {
    fn scan(
        &self,
        table: Table,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let start = Bound::Included((table, lower.to_vec()));
        let end = match upper {
            Some(u) => Bound::Excluded((table, u.to_vec())),
            // Every key of `table` sorts before the next table's empty key.
            None => match Table::ALL.iter().find(|t| **t > table) {
                Some(next) => Bound::Excluded((*next, Vec::new())),
                None => Bound::Unbounded,
            },
        };
        let range = self.tables.range((start, end)).map(|((_, k), v)| (k.clone(), v.clone()));
        Ok(match order {
            Order::Ascending => range.take(limit).collect(),
            Order::Descending => range.rev().take(limit).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{apply, Command, Event};

    fn post(t: &mut MemTables, room: &str, ts_ms: u64) {
        let event = Event::MessagePosted { room: room.into(), from: "ann".into(), client_id: format!("c{ts_ms}"), text: "hi".into() };
        apply(t, &Command { ts_ms, event }).expect("apply");
    }

    fn seqs(p: HistoryPage) -> Vec<u64> {
        p.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    #[test]
    fn history_pages_and_members_on_mem_tables() {
        let mut t = MemTables::default();
        apply(&mut t, &Command { ts_ms: 1, event: Event::UserRegistered { name: "ann".into(), password_hash: "h".into() } }).expect("register");
        apply(&mut t, &Command { ts_ms: 1, event: Event::RoomJoined { room: "r".into(), user: "ann".into() } }).expect("join");
        apply(&mut t, &Command { ts_ms: 1, event: Event::RoomJoined { room: "rr".into(), user: "bob".into() } }).expect("join");
        for ts in 1..=10 {
            post(&mut t, "r", ts + 1);
        }
        assert_eq!(seqs(t.history("r", None, None, 3).expect("page")), vec![8, 9, 10]);
        assert_eq!(seqs(t.history("r", Some(2), None, 3).expect("page")), vec![3, 4, 5]);
        assert_eq!(seqs(t.history("r", None, Some(4), 50).expect("page")), vec![1, 2, 3]);
        assert_eq!(t.history("r", None, None, 3).expect("page").head, 10);
        assert!(t.history("rr", None, None, 3).expect("page").messages.is_empty(), "a room whose name extends another's");
        assert_eq!(t.last_stamped_before("r", 6, 3).expect("scan"), Some(4));
        assert_eq!(t.last_stamped_before("r", 100, 3).expect("scan"), None);
        assert_eq!(t.members("r").expect("members"), vec!["ann".to_string()]);
        assert_eq!(t.members("rr").expect("members"), vec!["bob".to_string()]);
        let rooms: Vec<String> = t.rooms().expect("rooms").into_iter().map(|(n, _)| n).collect();
        assert_eq!(rooms, vec!["r".to_string(), "rr".to_string()]);
    }
}
