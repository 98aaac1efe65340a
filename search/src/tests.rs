use raft_store::chat::{apply, Command, Event, MemTables};

use super::*;

struct Room {
    state: MemTables,
    ts: u64,
}

impl Room {
    fn new() -> Self {
        let mut r = Room { state: MemTables::default(), ts: 1 };
        for user in ["ann", "bob"] {
            r.run(Event::RoomJoined { room: "r".into(), user: user.into() });
        }
        r
    }

    /// Applies `event`; the entry it stored, if any.
    fn run(&mut self, event: Event) -> Option<Message> {
        self.ts += 1;
        apply(&mut self.state, &Command { ts_ms: self.ts, event }).expect("apply").delivery
    }

    fn post(&mut self, room: &str, from: &str, id: &str, text: &str) -> Option<Message> {
        self.run(Event::MessagePosted { room: room.into(), from: from.into(), client_id: id.into(), text: text.into() })
    }
}

fn seqs(index: &SearchIndex, q: &str, user: &str) -> Vec<(String, u64)> {
    index.search(q, user, 10, 0).expect("search").into_iter().map(|h| (h.room, h.seq)).collect()
}

#[test]
fn edits_and_deletes_keep_the_index_in_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = SearchIndex::open(dir.path()).expect("open");
    let mut r = Room::new();
    let live = |index: &SearchIndex, r: &Room, m: Option<Message>| {
        index.apply(&r.state, &m.expect("an entry")).expect("apply");
        index.commit().expect("commit");
    };
    let m = r.post("r", "ann", "1", "the quarterly report is late");
    live(&index, &r, m);
    let m = r.post("r", "bob", "2", "lunch at noon");
    live(&index, &r, m);
    assert_eq!(seqs(&index, "report", "bob"), [("r".to_string(), 1)]);
    let m = r.run(Event::MessageEdited { room: "r".into(), from: "ann".into(), client_id: "3".into(), target: 1, text: "the budget is late".into() });
    live(&index, &r, m);
    assert!(seqs(&index, "report", "bob").is_empty(), "the old text is not found");
    assert_eq!(seqs(&index, "budget", "bob"), [("r".to_string(), 1)]);
    let m = r.run(Event::MessageDeleted { room: "r".into(), from: "ann".into(), client_id: "4".into(), target: 1 });
    live(&index, &r, m);
    assert!(seqs(&index, "budget", "bob").is_empty(), "a deleted message is not found");
    assert_eq!(index.documents(), 1);
}

#[test]
fn a_direct_message_is_found_by_its_two_users_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = SearchIndex::open(dir.path()).expect("open");
    let mut r = Room::new();
    let dm = chat::dm_room("ann", "bob");
    r.post(&dm, "ann", "1", "secret plans");
    r.post("r", "ann", "2", "public plans");
    index.catch_up(&r.state).expect("catch up");
    index.commit().expect("commit");
    assert_eq!(seqs(&index, "plans", "bob").len(), 2);
    assert_eq!(seqs(&index, "plans", "cy"), [("r".to_string(), 1)]);
}

#[test]
fn a_rebuild_from_the_state_finds_what_live_indexing_found() {
    let mut r = Room::new();
    let (live_dir, rebuilt_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let live = SearchIndex::open(live_dir.path()).expect("open");
    let mut entries = Vec::new();
    entries.extend(r.post("r", "ann", "1", "alpha one"));
    entries.extend(r.post("r", "bob", "2", "beta two"));
    entries.extend(r.run(Event::MessageEdited { room: "r".into(), from: "ann".into(), client_id: "3".into(), target: 1, text: "gamma".into() }));
    entries.extend(r.run(Event::MessageEdited { room: "r".into(), from: "ann".into(), client_id: "4".into(), target: 1, text: "delta".into() }));
    entries.extend(r.run(Event::MessageDeleted { room: "r".into(), from: "bob".into(), client_id: "5".into(), target: 2 }));
    entries.extend(r.post("r", "bob", "6", "epsilon"));
    for m in &entries {
        live.apply(&r.state, m).expect("apply");
    }
    live.commit().expect("commit");
    let rebuilt = SearchIndex::open(rebuilt_dir.path()).expect("open");
    assert_eq!(rebuilt.catch_up(&r.state).expect("catch up"), 6);
    rebuilt.commit().expect("commit");
    for q in ["alpha", "beta", "gamma", "delta", "epsilon"] {
        assert_eq!(seqs(&live, q, "ann"), seqs(&rebuilt, q, "ann"), "{q}");
    }
    assert_eq!(seqs(&rebuilt, "delta", "ann"), [("r".to_string(), 1)]);
    assert!(seqs(&rebuilt, "beta", "ann").is_empty());
}

#[test]
fn a_gap_is_read_from_the_state_and_positions_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = Room::new();
    r.post("r", "ann", "1", "first words");
    let last = r.post("r", "ann", "2", "second words").expect("stored");
    {
        let index = SearchIndex::open(dir.path()).expect("open");
        index.apply(&r.state, &last).expect("apply past a gap");
        index.commit().expect("commit");
        assert_eq!(seqs(&index, "words", "bob").len(), 2, "the missed entry was read from the state");
    }
    let index = SearchIndex::open(dir.path()).expect("reopen");
    assert_eq!(index.position("r"), 2);
    assert_eq!(index.catch_up(&r.state).expect("catch up"), 0, "nothing to redo");
    // A state that is behind the index (say, an older snapshot) makes it rebuild.
    let mut older = Room::new();
    older.post("r", "ann", "1", "first words");
    index.catch_up(&older.state).expect("catch up");
    index.commit().expect("commit");
    assert_eq!((index.position("r"), seqs(&index, "words", "bob").len()), (1, 1));
}

#[test]
fn a_damaged_index_is_rebuilt_and_bad_queries_are_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("meta.json"), b"{not json").expect("damage");
    let index = SearchIndex::open(dir.path()).expect("reopened empty");
    let mut r = Room::new();
    r.post("r", "ann", "1", "hello (world");
    index.catch_up(&r.state).expect("catch up");
    index.commit().expect("commit");
    assert_eq!(seqs(&index, "hello (", "bob").len(), 1);
    assert!(seqs(&index, "", "bob").is_empty());
}
