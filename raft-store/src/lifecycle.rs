//! What happens to a message after it is posted: replies and threads, edits,
//! deletes and reactions (feature level 4).
//!
//! Every change is an entry of its own in the room, with the next seq, stored
//! in `Messages` beside the posts: a room is one dense sequence of entries, so
//! `join` with `after` resumes edits, deletes and reactions exactly as it
//! resumes messages. Applying a change also rewrites the post it targets
//! ([`PostState`]), so history serves each message as it is now: its latest
//! text with `edited_ts`, its reactions, and, once deleted, no text at all.
//!
//! A delete is a redaction: the post's text, the texts of its edits and its
//! reactions are overwritten in the state machine, so no later read or
//! snapshot holds them.
//!
//! # Stored layout
//!
//! A post that has never changed is stored as every post was before level 4
//! ([`PlainRecord`]), so old data and old snapshots read unchanged and the
//! common case costs nothing more. Any other entry is [`ENTRY_TAG`], a layout
//! version, then the bincode of [`Message`] with its [`Kind`]. Bincode's
//! length prefix, which starts a plain record, never begins with `0xFF`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::chat::{self, Applied, Message, Outcome, Table, Tables, TablesRead};
use crate::codec::{decode, encode};
use crate::error::StoreError;

/// How many edits one message may have; the post's record lists them.
pub const MAX_EDITS: usize = 1000;
/// How many distinct emoji one message may carry.
pub const MAX_EMOJI: usize = 64;
/// Largest emoji (or short reaction text), in bytes.
pub const MAX_EMOJI_BYTES: usize = 64;

/// The first byte of an entry that is not a plain post.
const ENTRY_TAG: u8 = 0xFF;
/// The layout after [`ENTRY_TAG`] that this binary writes and reads.
const ENTRY_LAYOUT: u8 = 1;

/// What a room entry is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A message (perhaps a reply) and what has happened to it since.
    Post(PostState),
    /// The author replaced the text of `target` with this entry's text.
    Edit { target: u64 },
    /// `target` was deleted (redacted).
    Delete { target: u64 },
    /// The sender added (or removed) `emoji` on `target`.
    Reaction { target: u64, emoji: String, added: bool },
    /// A member changed the room's access or settings (level 5,
    /// [`crate::rooms`]).
    Room(crate::rooms::RoomAction),
}

impl Default for Kind {
    fn default() -> Self {
        Kind::Post(PostState::default())
    }
}

impl Kind {
    /// The post this entry changes, unless it is a post itself.
    pub fn target(&self) -> Option<u64> {
        match self {
            Kind::Post(_) | Kind::Room(_) => None,
            Kind::Edit { target } | Kind::Delete { target } | Kind::Reaction { target, .. } => Some(*target),
        }
    }
}

/// A post's replies, edits, reactions and deletion, as folded so far.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PostState {
    /// The message this one answers.
    pub reply_to: Option<u64>,
    /// The first message of the thread this one is in (for a reply).
    pub thread: Option<u64>,
    /// When the text was last edited.
    pub edited_ts: Option<u64>,
    /// Deleted: the text and reactions are gone.
    pub deleted: bool,
    /// Emoji → who reacted with it.
    pub reactions: BTreeMap<String, BTreeSet<String>>,
    /// The seqs of this post's edit entries, so a delete can redact them.
    pub edits: Vec<u64>,
}

/// A change to an existing post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    Edit { text: &'a str },
    Delete,
    React { emoji: &'a str, added: bool },
}

/// A post as stored before level 4: [`Message`] without its kind.
#[derive(Serialize, Deserialize)]
struct PlainRecord<'a> {
    room: Cow<'a, str>,
    seq: u64,
    client_id: Cow<'a, str>,
    from: Cow<'a, str>,
    text: Cow<'a, str>,
    ts_ms: u64,
}

/// The bytes a room entry is stored as (see the module's layout).
pub fn encode_entry(m: &Message) -> Result<Vec<u8>, StoreError> {
    if matches!(&m.kind, Kind::Post(state) if *state == PostState::default()) {
        return encode(&PlainRecord {
            room: Cow::Borrowed(&m.room),
            seq: m.seq,
            client_id: Cow::Borrowed(&m.client_id),
            from: Cow::Borrowed(&m.from),
            text: Cow::Borrowed(&m.text),
            ts_ms: m.ts_ms,
        });
    }
    let mut bytes = vec![ENTRY_TAG, ENTRY_LAYOUT];
    bytes.extend(encode(m)?);
    Ok(bytes)
}

/// Reads a stored room entry of either layout.
pub fn decode_entry(bytes: &[u8]) -> Result<Message, StoreError> {
    match bytes {
        [ENTRY_TAG, ENTRY_LAYOUT, rest @ ..] => decode(rest),
        [ENTRY_TAG, layout, ..] => Err(StoreError::Unsupported(crate::format::unsupported(&format!("a room entry of layout {layout}"), 4))),
        _ => {
            let p: PlainRecord<'static> = decode(bytes)?;
            Ok(Message {
                room: p.room.into_owned(),
                seq: p.seq,
                client_id: p.client_id.into_owned(),
                from: p.from.into_owned(),
                text: p.text.into_owned(),
                ts_ms: p.ts_ms,
                kind: Kind::default(),
            })
        }
    }
}

/// The entry at `seq` of `room`, if there is one.
pub fn entry(t: &(impl TablesRead + ?Sized), room: &str, seq: u64) -> Result<Option<Message>, StoreError> {
    t.get(Table::Messages, &chat::message_key(room, seq))?.map(|b| decode_entry(&b)).transpose()
}

pub(crate) fn put_entry(t: &mut impl Tables, m: &Message) -> Result<(), StoreError> {
    t.put(Table::Messages, &chat::message_key(&m.room, m.seq), &encode_entry(m)?);
    Ok(())
}

/// The key of a reply in its thread's index: (room, root seq, reply seq).
pub fn thread_key(room: &str, root: u64, seq: u64) -> Vec<u8> {
    let mut k = chat::key2(room, &root.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Whether `emoji` may be a reaction: 1 to [`MAX_EMOJI_BYTES`] bytes, no
/// whitespace or control characters.
pub fn well_formed_emoji(emoji: &str) -> bool {
    !emoji.is_empty() && emoji.len() <= MAX_EMOJI_BYTES && !emoji.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The live post at `seq` of `room`, or the outcome that says why there is none.
fn live_post(t: &impl Tables, room: &str, seq: u64) -> Result<Result<(Message, PostState), Applied>, StoreError> {
    if let Some(m) = entry(t, room, seq)? {
        if let Kind::Post(state) = &m.kind {
            if !state.deleted {
                let state = state.clone();
                return Ok(Ok((m, state)));
            }
        }
    }
    Ok(Err(Applied::outcome(Outcome::NoSuchMessage)))
}

/// Posts `text` as a reply to the live post `reply_to`, in its thread.
pub(crate) fn reply(t: &mut impl Tables, now: u64, room: &str, from: &str, client_id: &str, text: &str, reply_to: u64) -> Result<Applied, StoreError> {
    let standing = match chat::admit(t, room, from, client_id)? {
        Ok(standing) => standing,
        Err(done) => return Ok(done),
    };
    if let Some(muted) = standing.silenced(now) {
        return Ok(muted);
    }
    let root = match live_post(t, room, reply_to)? {
        Ok((target, state)) => state.thread.unwrap_or(target.seq),
        Err(no) => return Ok(no),
    };
    let state = PostState { reply_to: Some(reply_to), thread: Some(root), ..PostState::default() };
    let applied = chat::append(t, now, room, from, client_id, text, Kind::Post(state))?;
    if let Outcome::Posted { seq, .. } = applied.outcome {
        t.put(Table::Threads, &thread_key(room, root, seq), &[]);
    }
    Ok(applied)
}

/// Applies an edit, delete or reaction by `from` to the post `target`: a new
/// entry with the room's next seq, and the post rewritten to match.
///
/// Only the author edits; the author or (from level 5) a room moderator or owner
/// deletes; any member not muted reacts. A deleted or missing post is
/// [`Outcome::NoSuchMessage`].
pub(crate) fn change(t: &mut impl Tables, now: u64, room: &str, from: &str, client_id: &str, target: u64, change: Change<'_>) -> Result<Applied, StoreError> {
    let standing = match chat::admit(t, room, from, client_id)? {
        Ok(standing) => standing,
        Err(done) => return Ok(done),
    };
    if !matches!(change, Change::Delete) {
        if let Some(muted) = standing.silenced(now) {
            return Ok(muted);
        }
    }
    let (mut post, mut state) = match live_post(t, room, target)? {
        Ok(found) => found,
        Err(no) => return Ok(no),
    };
    let by_author = post.from == from;
    let (kind, text) = match change {
        Change::Edit { .. } if !by_author => return Ok(forbidden("only its author may edit a message")),
        Change::Delete if !by_author && !standing.moderates() => {
            return Ok(forbidden("only its author or a moderator may delete a message"))
        }
        Change::Edit { .. } if state.edits.len() >= MAX_EDITS => return Ok(chat::rejected("too many edits of one message")),
        Change::Edit { text } => (Kind::Edit { target }, text),
        Change::Delete => (Kind::Delete { target }, ""),
        Change::React { emoji, .. } if !well_formed_emoji(emoji) => return Ok(chat::rejected("malformed emoji")),
        Change::React { emoji, added: true } if !state.reactions.contains_key(emoji) && state.reactions.len() >= MAX_EMOJI => {
            return Ok(chat::rejected("too many distinct reactions on one message"))
        }
        Change::React { emoji, added } => (Kind::Reaction { target, emoji: emoji.to_string(), added }, ""),
    };
    let applied = chat::append(t, now, room, from, client_id, text, kind.clone())?;
    let Outcome::Posted { seq, .. } = applied.outcome else { return Ok(applied) };
    match kind {
        Kind::Edit { .. } => {
            post.text = text.to_string();
            state.edited_ts = Some(now);
            state.edits.push(seq);
        }
        Kind::Delete { .. } => redact(t, &mut post, &mut state)?,
        Kind::Reaction { emoji, added, .. } => react(&mut state, emoji, from, added),
        Kind::Post(_) | Kind::Room(_) => {}
    }
    post.kind = Kind::Post(state);
    put_entry(t, &post)?;
    Ok(applied)
}

fn forbidden(reason: &str) -> Applied {
    Applied::outcome(Outcome::Forbidden { reason: reason.to_string() })
}

/// Removes the post's text, its reactions and the texts of its edits.
fn redact(t: &mut impl Tables, post: &mut Message, state: &mut PostState) -> Result<(), StoreError> {
    for &seq in &state.edits {
        if let Some(mut edit) = entry(t, &post.room, seq)? {
            edit.text.clear();
            put_entry(t, &edit)?;
        }
    }
    post.text.clear();
    state.reactions.clear();
    state.deleted = true;
    Ok(())
}

fn react(state: &mut PostState, emoji: String, from: &str, added: bool) {
    if added {
        state.reactions.entry(emoji).or_default().insert(from.to_string());
    } else if let Some(users) = state.reactions.get_mut(&emoji) {
        users.remove(from);
        if users.is_empty() {
            state.reactions.remove(&emoji);
        }
    }
}

/// Up to `limit` seqs of replies in the thread rooted at `root`, after `after`.
pub fn thread_seqs(t: &(impl crate::ChatRead + ?Sized), room: &str, root: u64, after: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
    let lower = thread_key(room, root, after.saturating_add(1));
    let upper = thread_key(room, root, u64::MAX);
    let keys = t.scan(Table::Threads, &lower, Some(&upper), limit, crate::read::Order::Ascending)?;
    Ok(keys
        .iter()
        .filter_map(|(k, _)| k.len().checked_sub(8).and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok()))
        .map(u64::from_be_bytes)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{apply, Command, Event, MemTables};
    use crate::ChatRead;

    fn run(t: &mut MemTables, ts_ms: u64, event: Event) -> Outcome {
        apply(t, &Command { ts_ms, event }).expect("apply").outcome
    }

    fn setup() -> MemTables {
        let mut t = MemTables::default();
        for user in ["ann", "bob"] {
            run(&mut t, 1, Event::RoomJoined { room: "r".into(), user: user.into() });
        }
        run(&mut t, 2, Event::MessagePosted { room: "r".into(), from: "ann".into(), client_id: "p".into(), text: "hello".into() });
        t
    }

    fn edit(from: &str, id: &str, target: u64, text: &str) -> Event {
        Event::MessageEdited { room: "r".into(), from: from.into(), client_id: id.into(), target, text: text.into() }
    }

    fn seq_of(o: &Outcome) -> u64 {
        match o {
            Outcome::Posted { seq, .. } => *seq,
            other => panic!("expected Posted, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_post_keeps_the_old_layout_and_both_layouts_read_back() {
        let t = setup();
        let raw = t.get(Table::Messages, &chat::message_key("r", 1)).expect("get").expect("stored");
        assert_ne!(raw[0], ENTRY_TAG, "an unchanged post is stored as before level 4");
        let mut m = decode_entry(&raw).expect("decode");
        assert_eq!((m.text.as_str(), &m.kind), ("hello", &Kind::default()));
        m.kind = Kind::Reaction { target: 1, emoji: "👍".into(), added: true };
        assert_eq!(decode_entry(&encode_entry(&m).expect("encode")).expect("decode"), m);
        assert!(matches!(decode_entry(&[ENTRY_TAG, 9, 0]), Err(StoreError::Unsupported(_))));
    }

    #[test]
    fn an_edit_is_an_entry_and_the_post_serves_the_latest_text() {
        let mut t = setup();
        let o = run(&mut t, 5, edit("ann", "e1", 1, "hello!"));
        assert_eq!(seq_of(&o), 2);
        let post = t.entry("r", 1).expect("read").expect("post");
        assert_eq!(post.text, "hello!");
        assert!(matches!(&post.kind, Kind::Post(s) if s.edited_ts == Some(5) && s.edits == vec![2]));
        let e = t.entry("r", 2).expect("read").expect("edit");
        assert_eq!((e.kind, e.text.as_str()), (Kind::Edit { target: 1 }, "hello!"));
        assert!(matches!(run(&mut t, 6, edit("bob", "e2", 1, "mine")), Outcome::Forbidden { .. }));
        assert_eq!(run(&mut t, 6, edit("ann", "e3", 2, "an edit of an edit")), Outcome::NoSuchMessage);
        assert_eq!(run(&mut t, 6, edit("ann", "e4", 99, "nothing there")), Outcome::NoSuchMessage);
        // A retried edit is the first one's answer.
        assert!(matches!(run(&mut t, 7, edit("ann", "e1", 1, "hello!")), Outcome::Posted { seq: 2, duplicate: true, .. }));
    }

    #[test]
    fn a_delete_redacts_the_text_its_edits_and_reactions() {
        let mut t = setup();
        run(&mut t, 3, edit("ann", "e1", 1, "secret"));
        run(&mut t, 3, Event::ReactionChanged { room: "r".into(), from: "bob".into(), client_id: "x".into(), target: 1, emoji: "👀".into(), added: true });
        let bob = Event::MessageDeleted { room: "r".into(), from: "bob".into(), client_id: "d0".into(), target: 1 };
        assert!(matches!(run(&mut t, 4, bob), Outcome::Forbidden { .. }));
        let ann = Event::MessageDeleted { room: "r".into(), from: "ann".into(), client_id: "d".into(), target: 1 };
        assert_eq!(seq_of(&run(&mut t, 4, ann)), 4);
        for text in ["secret", "hello"] {
            let stored = t.tables.values().any(|v| v.windows(text.len()).any(|w| w == text.as_bytes()));
            assert!(!stored, "{text} is still stored");
        }
        let post = t.entry("r", 1).expect("read").expect("post");
        assert!(matches!(&post.kind, Kind::Post(s) if s.deleted && s.reactions.is_empty()));
        assert_eq!(run(&mut t, 5, edit("ann", "e2", 1, "back")), Outcome::NoSuchMessage);
    }

    #[test]
    fn reactions_are_sets_per_emoji_and_bounded() {
        let mut t = setup();
        let react = |from: &str, id: &str, emoji: &str, added| Event::ReactionChanged {
            room: "r".into(),
            from: from.into(),
            client_id: id.into(),
            target: 1,
            emoji: emoji.into(),
            added,
        };
        run(&mut t, 3, react("bob", "1", "👍", true));
        run(&mut t, 3, react("bob", "2", "👍", true));
        run(&mut t, 3, react("ann", "3", "👍", true));
        run(&mut t, 3, react("ann", "4", "🎉", true));
        run(&mut t, 3, react("ann", "5", "🎉", false));
        let Some(Message { kind: Kind::Post(s), .. }) = t.entry("r", 1).expect("read") else { panic!("no post") };
        assert_eq!(s.reactions.len(), 1);
        assert_eq!(s.reactions["👍"].len(), 2);
        assert!(matches!(run(&mut t, 3, react("ann", "6", "a b", true)), Outcome::Rejected { .. }));
        for i in 0..MAX_EMOJI {
            run(&mut t, 3, react("ann", &format!("m{i}"), &format!("e{i}"), true));
        }
        assert!(matches!(run(&mut t, 3, react("ann", "over", "one-more", true)), Outcome::Rejected { .. }));
    }

    #[test]
    fn replies_join_the_thread_of_their_root() {
        let mut t = setup();
        let reply = |id: &str, to| Event::ReplyPosted { room: "r".into(), from: "bob".into(), client_id: id.into(), text: "re".into(), reply_to: to };
        assert_eq!(seq_of(&run(&mut t, 3, reply("a", 1))), 2);
        assert_eq!(seq_of(&run(&mut t, 3, reply("b", 2))), 3);
        run(&mut t, 3, Event::MessagePosted { room: "r".into(), from: "ann".into(), client_id: "q".into(), text: "other".into() });
        assert_eq!(thread_seqs(&t, "r", 1, 0, 10).expect("thread"), vec![2, 3]);
        assert_eq!(thread_seqs(&t, "r", 1, 2, 10).expect("thread"), vec![3]);
        let Some(Message { kind: Kind::Post(s), .. }) = t.entry("r", 3).expect("read") else { panic!("no reply") };
        assert_eq!((s.reply_to, s.thread), (Some(2), Some(1)));
        assert_eq!(run(&mut t, 3, reply("c", 40)), Outcome::NoSuchMessage);
    }
}
