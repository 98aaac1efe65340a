//! Property tests of the state machine: the same events give the same state, in
//! RocksDB as in the in-memory model, and a snapshot installed elsewhere gives
//! the same state again.
//!
//! proptest prints the failing case and persists its seed under
//! `proptest-regressions/`; set `PROPTEST_CASES` to run more cases.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream;
use raft_store::ChatRead;
use openraft::storage::RaftStateMachine;
use openraft::{Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use proptest::prelude::*;
use raft_store::accounts;
use raft_store::chat::{self, Command, Event, MemTables};
use raft_store::lifecycle::Kind;
use raft_store::rooms::{self, Role, RoomAction, Visibility};
use raft_store::{StateMachine, TypeConfig};

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["ann", "bob", "cy", "dee"]).prop_map(String::from)
}

fn room() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["general", "ops", "x"]).prop_map(String::from),
        1 => Just(chat::dm_room("ann", "bob")),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => (name(), "[a-z]{1,4}").prop_map(|(name, h)| Event::UserRegistered { name, password_hash: h }),
        2 => (room(), name()).prop_map(|(room, user)| Event::RoomJoined { room, user }),
        1 => (room(), name()).prop_map(|(room, user)| Event::RoomLeft { room, user }),
        4 => (room(), name(), 0u8..12, "[a-z ]{0,12}")
            .prop_map(|(room, from, id, text)| Event::MessagePosted { room, from, client_id: id.to_string(), text }),
        2 => lifecycle_event(),
        1 => (room(), name(), 0u64..12).prop_map(|(room, user, seq)| Event::ReadMarked { room, user, seq }),
        1 => Just(Event::FeatureLevelRaised { level: rooms::LEVEL }),
        1 => (name(), "[A-Z]{1,4}").prop_map(|(user, h)| Event::PasswordChanged { user, password_hash: format!("NEW-{h}") }),
        1 => name().prop_map(|user| Event::SessionsRevoked { user }),
        3 => room_event(),
        3 => account_event(),
    ]
}

/// Level-6 events: invite codes issued, revoked and used (`k3` is never
/// issued), and display names, some malformed.
fn account_event() -> impl Strategy<Value = Event> {
    let code = || prop::sample::select(vec!["k1", "k2", "k3"]).prop_map(accounts::code_hash);
    let lasting = prop_oneof![Just(None), (1u64..10_000).prop_map(Some)];
    let display = prop_oneof![Just(String::new()), Just(" padded".to_string()), "[A-Z][a-z]{0,3}"];
    prop_oneof![
        2 => (code(), 1u32..3, lasting).prop_map(|(code_hash, uses, expires_in_ms)| Event::InviteIssued { code_hash, uses, expires_in_ms, note: String::new() }),
        1 => code().prop_map(|code_hash| Event::InviteRevoked { code_hash }),
        3 => (name(), code()).prop_map(|(name, code_hash)| Event::InvitedUserRegistered { name, password_hash: "inv".into(), code_hash }),
        2 => (name(), display).prop_map(|(user, display_name)| Event::ProfileSet { user, display_name }),
        1 => Just(Event::FeatureLevelRaised { level: accounts::LEVEL }),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::Member, Role::Moderator, Role::Owner])
}

/// Level-5 events: rooms created with a visibility, and every room action.
/// Topics and titles are upper case, so no message text is ever among them.
fn room_event() -> impl Strategy<Value = Event> {
    let visibility = || prop::sample::select(vec![Visibility::Public, Visibility::Private]);
    let lasting = || prop_oneof![Just(None), (1u64..10_000).prop_map(Some)];
    let action = prop_oneof![
        2 => name().prop_map(|user| RoomAction::Invite { user }),
        1 => name().prop_map(|user| RoomAction::Kick { user }),
        1 => (name(), lasting()).prop_map(|(user, for_ms)| RoomAction::Ban { user, for_ms }),
        1 => name().prop_map(|user| RoomAction::Unban { user }),
        1 => (name(), lasting()).prop_map(|(user, for_ms)| RoomAction::Mute { user, for_ms }),
        1 => name().prop_map(|user| RoomAction::Unmute { user }),
        2 => (name(), role()).prop_map(|(user, role)| RoomAction::SetRole { user, role }),
        1 => "[A-Z]{0,6}".prop_map(|topic| RoomAction::SetTopic { topic }),
        1 => "[A-Z]{0,6}".prop_map(|title| RoomAction::SetTitle { title }),
        1 => visibility().prop_map(|visibility| RoomAction::SetVisibility { visibility }),
    ];
    prop_oneof![
        1 => (room(), name(), visibility(), "[A-Z]{0,4}")
            .prop_map(|(room, owner, visibility, title)| Event::RoomCreated { room, owner, visibility, title, topic: String::new() }),
        4 => (room(), name(), 40u8..60, action).prop_map(|(room, from, id, action)| Event::RoomActed { room, from, client_id: id.to_string(), action }),
        1 => (room(), name()).prop_map(|(room, owner)| Event::RoomOwnerSet { room, owner }),
    ]
}

fn emoji() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["👍", "🎉", "👀"]).prop_map(String::from)
}

/// Level-4 events aimed at the first few seqs of a room, so that most hit a
/// message (and some an edit, a deleted message or nothing).
fn lifecycle_event() -> impl Strategy<Value = Event> {
    let at = || (room(), name(), 12u8..40, 1u64..8);
    prop_oneof![
        1 => (at(), "[a-z]{0,6}").prop_map(|((room, from, id, reply_to), text)| Event::ReplyPosted { room, from, client_id: id.to_string(), text, reply_to }),
        2 => (at(), "[a-z]{0,6}").prop_map(|((room, from, id, target), text)| Event::MessageEdited { room, from, client_id: id.to_string(), target, text }),
        1 => at().prop_map(|(room, from, id, target)| Event::MessageDeleted { room, from, client_id: id.to_string(), target }),
        2 => (at(), emoji(), any::<bool>()).prop_map(|((room, from, id, target), emoji, added)| Event::ReactionChanged {
            room,
            from,
            client_id: id.to_string(),
            target,
            emoji,
            added,
        }),
    ]
}

/// Commands with a leader clock that mostly advances but sometimes steps back
/// (a new leader with a slower clock) and sometimes leaps past the dedup retention.
fn commands() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec((event(), prop_oneof![8 => 0u64..5_000, 1 => Just(chat::DEDUP_RETENTION_MS), 1 => Just(0)]), 1..120)
        .prop_map(|evs| {
            let mut ts = 1_700_000_000_000u64;
            evs.into_iter()
                .map(|(event, step)| {
                    ts = if step == 0 { ts.saturating_sub(3_000) } else { ts + step };
                    Command { ts_ms: ts, event }
                })
                .collect()
        })
}

fn entries(cmds: &[Command]) -> Vec<Entry<openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>, openraft::type_config::alias::PayloadOf<TypeConfig>>> {
    let leader = openraft::impls::leader_id_adv::LeaderId { term: 1u64, node_id: 1u64 };
    cmds.iter()
        .enumerate()
        .map(|(i, c)| Entry { log_id: LogId::new(leader, i as u64 + 1), payload: EntryPayload::Normal(raft_store::types::Batch::new(1, vec![c.clone()])) })
        .collect()
}

async fn apply_all(sm: &mut StateMachine, cmds: &[Command], chunk: usize) {
    for part in entries(cmds).chunks(chunk) {
        let items: Vec<_> = part.iter().cloned().map(|e| Ok((e, None))).collect();
        sm.apply(stream::iter(items)).await.unwrap();
    }
}

fn open_sm(dir: &std::path::Path) -> StateMachine {
    StateMachine::open(raft_store::open(dir).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rocksdb_state_matches_the_model_and_snapshots_carry_it(cmds in commands(), chunk in 1usize..40) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut model = MemTables::default();
            let mut outcomes = Vec::new();
            for c in &cmds {
                outcomes.push(chat::apply(&mut model, c).unwrap().outcome);
            }

            // Applied in arbitrary batch sizes, RocksDB ends in the model's state.
            let a = tempfile::tempdir().unwrap();
            let mut sm = open_sm(a.path());
            apply_all(&mut sm, &cmds, chunk).await;
            let digest = sm.reader().digest().unwrap();
            prop_assert_eq!(&digest, &model.digest());

            // Snapshot → install on a fresh node → same digest and applied index.
            let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            let b = tempfile::tempdir().unwrap();
            let mut other = open_sm(b.path());
            other.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
            prop_assert_eq!(other.reader().digest().unwrap(), digest.clone());
            prop_assert_eq!(other.reader().applied_log_id().unwrap().map(|l| l.index), Some(cmds.len() as u64));

            // Reopened from disk, the state is still there.
            drop(sm);
            let reopened = open_sm_retry(a.path());
            prop_assert_eq!(reopened.reader().digest().unwrap(), digest);
            let _ = outcomes;
            Ok(())
        })?;
    }

    #[test]
    fn same_commands_same_state(cmds in commands()) {
        let mut x = MemTables::default();
        let mut y = MemTables::default();
        let ox: Vec<_> = cmds.iter().map(|c| chat::apply(&mut x, c).unwrap()).collect();
        let oy: Vec<_> = cmds.iter().map(|c| chat::apply(&mut y, c).unwrap()).collect();
        prop_assert_eq!(ox, oy);
        prop_assert_eq!(x.digest(), y.digest());
    }

    #[test]
    fn room_seqs_are_dense_and_ts_never_decreases(cmds in commands()) {
        let mut t = MemTables::default();
        let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for c in &cmds {
            let applied = chat::apply(&mut t, c).unwrap();
            if let Some(m) = applied.delivery {
                let (seq, ts) = last.get(&m.room).copied().unwrap_or((0, 0));
                prop_assert_eq!(m.seq, seq + 1);
                prop_assert!(m.ts_ms >= ts);
                last.insert(m.room.clone(), (m.seq, m.ts_ms));
            }
        }
    }
}

/// What the applied level-4 events say each message should now be: its text
/// (the post's, then each acked edit's), whether it was deleted, and for each
/// (emoji, user) whether the last acked reaction added it.
#[derive(Default)]
struct Expected {
    text: BTreeMap<(String, u64), String>,
    deleted: BTreeMap<(String, u64), Vec<String>>,
    reactions: BTreeMap<(String, u64), BTreeMap<(String, String), bool>>,
}

impl Expected {
    fn fold(&mut self, cmd: &Command, outcome: &chat::Outcome) {
        let chat::Outcome::Posted { seq, duplicate: false, .. } = outcome else { return };
        match &cmd.event {
            Event::MessagePosted { room, text, .. } | Event::ReplyPosted { room, text, .. } => {
                self.text.insert((room.clone(), *seq), text.clone());
            }
            Event::MessageEdited { room, target, text, .. } => {
                let old = self.text.insert((room.clone(), *target), text.clone());
                self.deleted.entry((room.clone(), *target)).or_default().extend(old);
            }
            Event::MessageDeleted { room, target, .. } => {
                let old = self.text.remove(&(room.clone(), *target));
                self.deleted.entry((room.clone(), *target)).or_default().extend(old);
                self.reactions.remove(&(room.clone(), *target));
            }
            Event::ReactionChanged { room, target, emoji, added, from, .. } => {
                self.reactions.entry((room.clone(), *target)).or_default().insert((emoji.clone(), from.clone()), *added);
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A read marker never moves back and never passes its room's last entry,
    /// so markers from several devices end at the furthest whatever their order.
    #[test]
    fn read_markers_only_move_forward(cmds in commands()) {
        let mut t = MemTables::default();
        let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
        for c in &cmds {
            chat::apply(&mut t, c).unwrap();
            if let Event::ReadMarked { room, user, .. } = &c.event {
                let now = raft_store::markers::marker(&t, user, room).unwrap();
                let head = chat::room(&t, room).unwrap().map_or(0, |r| r.last_seq);
                let before = seen.insert((room.clone(), user.clone()), now).unwrap_or(0);
                prop_assert!(now >= before && now <= head, "marker {before} -> {now}, head {head}");
            }
        }
    }

    /// Edits serve the last acked text, a delete removes every text the
    /// message had from the whole state, and reactions add up per (emoji,
    /// user) whatever order other users' reactions came in.
    #[test]
    fn edits_deletes_and_reactions_fold_as_acked(cmds in commands()) {
        let mut t = MemTables::default();
        let mut want = Expected::default();
        for c in &cmds {
            let applied = chat::apply(&mut t, c).unwrap();
            want.fold(c, &applied.outcome);
        }
        for ((room, seq), text) in &want.text {
            let m = t.entry(room, *seq).unwrap().expect("an acked message is stored");
            prop_assert_eq!(&m.text, text);
        }
        for ((room, seq), texts) in &want.deleted {
            if want.text.contains_key(&(room.clone(), *seq)) {
                continue; // edited, not deleted: older texts may live on in the edit entries
            }
            let m = t.entry(room, *seq).unwrap().expect("a deleted message keeps its entry");
            prop_assert!(matches!(&m.kind, Kind::Post(s) if s.deleted && s.reactions.is_empty()));
            for text in texts.iter().filter(|t| t.len() >= 3) {
                let stored = t.tables.values().any(|v| v.windows(text.len()).any(|w| w == text.as_bytes()));
                // The same letters may be the text of a live message, or an
                // older text of one, which its edit entries keep.
                let live_edits = want.deleted.iter().filter(|(k, _)| want.text.contains_key(*k)).flat_map(|(_, v)| v);
                let elsewhere = want.text.values().chain(live_edits).any(|live| live.contains(text.as_str()));
                prop_assert!(!stored || elsewhere, "{text:?} of a deleted message is still stored");
            }
        }
        for ((room, seq), reactions) in &want.reactions {
            let m = t.entry(room, *seq).unwrap().expect("a reacted-to message is stored");
            let Kind::Post(state) = &m.kind else { panic!("reactions on a non-message") };
            let got: Vec<(String, String)> = state.reactions.iter().flat_map(|(e, us)| us.iter().map(move |u| (e.clone(), u.clone()))).collect();
            let expected: Vec<(String, String)> = reactions.iter().filter(|(_, added)| **added).map(|(k, _)| k.clone()).collect();
            prop_assert_eq!(got, expected);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A password change of a registered user replaces the hash and raises
    /// the session epoch by one, as a revocation does; of anyone else it
    /// changes nothing. Epochs never go down, whatever else applies.
    #[test]
    fn password_changes_replace_the_hash_and_revoke(cmds in commands()) {
        let mut t = MemTables::default();
        for c in &cmds {
            let before = t.clone();
            let epochs = |t: &MemTables| ["ann", "bob", "cy", "dee"].map(|u| raft_store::sessions::session_epoch(t, u).unwrap());
            let outcome = chat::apply(&mut t, c).unwrap().outcome;
            let (old, new) = (epochs(&before), epochs(&t));
            prop_assert!(old.iter().zip(&new).all(|(o, n)| n >= o), "an epoch went down: {old:?} -> {new:?}");
            if let Event::PasswordChanged { user, password_hash } = &c.event {
                let epoch = |t: &MemTables| raft_store::sessions::session_epoch(t, user).unwrap();
                match chat::user(&before, user).unwrap() {
                    Some(_) => {
                        prop_assert_eq!(&chat::user(&t, user).unwrap().unwrap().password_hash, password_hash);
                        prop_assert_eq!(epoch(&t), epoch(&before) + 1);
                        prop_assert_eq!(outcome, chat::Outcome::Revoked { epoch: epoch(&t) });
                    }
                    None => {
                        prop_assert!(matches!(outcome, chat::Outcome::Rejected { .. }), "{outcome:?}");
                        prop_assert!(chat::user(&t, user).unwrap().is_none());
                        prop_assert_eq!(epoch(&t), epoch(&before));
                    }
                }
            }
        }
    }
}

/// The cluster clock after `cmd` applies, as `apply` computes it.
fn clock_after(t: &MemTables, cmd: &Command) -> u64 {
    chat::clock(t).unwrap().max(cmd.ts_ms)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Rooms with owners keep to their rules whatever the order of events:
    /// one owner, who is the room's recorded owner; nobody banned is a
    /// member; a private room is joined only by its owner or an invitee; a
    /// muted member's posts are refused; only a moderator deletes another's
    /// message; kicks and bans end a membership; member counts are true.
    #[test]
    fn rooms_keep_their_owners_bans_mutes_and_invitations(cmds in commands()) {
        // Level-5 rules: the gate at propose keeps RoomCreated and RoomActed
        // from ever reaching a cluster below it.
        let mut t = MemTables::default();
        chat::apply(&mut t, &Command { ts_ms: 1, event: Event::FeatureLevelRaised { level: rooms::LEVEL } }).unwrap();
        for c in &cmds {
            let before = t.clone();
            let now = clock_after(&before, c);
            let outcome = chat::apply(&mut t, c).unwrap().outcome;
            let posted = matches!(outcome, chat::Outcome::Posted { duplicate: false, .. });
            match &c.event {
                Event::RoomJoined { room, user } if matches!(outcome, chat::Outcome::Joined { .. }) => {
                    if let Some(info) = rooms::info(&before, room).unwrap() {
                        let was_member = chat::is_member(&before, room, user).unwrap();
                        let acc = rooms::access(&before, room, user).unwrap();
                        prop_assert!(was_member || !acc.banned(now), "{user} joined {room} while banned");
                        if info.visibility == Visibility::Private {
                            prop_assert!(was_member || acc.invited || info.owner == *user, "{user} joined private {room} uninvited");
                        }
                    }
                }
                Event::MessagePosted { room, from, .. } | Event::ReplyPosted { room, from, .. } if posted => {
                    let muted = rooms::member(&before, room, from).unwrap().is_some_and(|m| m.muted(now));
                    prop_assert!(!muted, "{from} posted to {room} while muted");
                }
                Event::MessageDeleted { room, from, target, .. } if posted => {
                    let author = t.entry(room, *target).unwrap().map(|m| m.from);
                    if author.as_deref() != Some(from.as_str()) {
                        prop_assert!(rooms::member(&before, room, from).unwrap().is_some_and(|m| m.role >= Role::Moderator));
                    }
                }
                Event::RoomOwnerSet { room, owner } if outcome == chat::Outcome::OwnerSet => {
                    prop_assert!(chat::is_member(&before, room, owner).unwrap(), "{owner} owns {room} without being a member");
                    prop_assert_eq!(rooms::info(&t, room).unwrap().map(|i| i.owner), Some(owner.clone()));
                }
                Event::RoomOwnerSet { room, owner } => {
                    prop_assert_eq!(rooms::info(&t, room).unwrap(), rooms::info(&before, room).unwrap(), "a refused owner change by {}", owner);
                }
                Event::RoomActed { room, action, .. } if posted => {
                    if let Some(user) = action.removes() {
                        prop_assert!(!chat::is_member(&t, room, user).unwrap(), "{user} still in {room} after {action:?}");
                    }
                }
                _ => {}
            }
            for (name, record) in t.rooms().unwrap() {
                if chat::dm_participants(&name).is_some() {
                    continue;
                }
                let members = rooms::members(&t, &name).unwrap();
                prop_assert_eq!(record.members, members.len() as u64, "member count of {}", name);
                let owners: Vec<&String> = members.iter().filter(|(_, m)| m.role == Role::Owner).map(|(u, _)| u).collect();
                match rooms::info(&t, &name).unwrap() {
                    Some(info) => {
                        prop_assert!(owners.len() <= 1 && owners.iter().all(|o| **o == info.owner), "owners {owners:?} of {name}, recorded {}", info.owner);
                        for (user, _) in &members {
                            prop_assert!(!rooms::access(&t, &name, user).unwrap().banned(now), "{user} is banned from {name} and a member");
                        }
                    }
                    None => prop_assert!(owners.is_empty() && members.iter().all(|(_, m)| *m == rooms::MemberRecord::default())),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// An invite code registers at most as many users as it was issued for,
    /// and only while it is good (issued, not revoked, not expired on the
    /// cluster clock); a refused registration (taken name, bad code) uses
    /// nothing and registers nobody. A display name is set only for a
    /// registered user, exactly as given, and the empty name clears it.
    #[test]
    fn invite_codes_register_no_more_than_they_allow(cmds in commands()) {
        let mut t = MemTables::default();
        chat::apply(&mut t, &Command { ts_ms: 1, event: Event::FeatureLevelRaised { level: accounts::LEVEL } }).unwrap();
        // code hash -> (registrations it was issued for, registrations made with it)
        let mut issued: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for c in &cmds {
            let before = t.clone();
            let now = clock_after(&before, c);
            let outcome = chat::apply(&mut t, c).unwrap().outcome;
            match &c.event {
                Event::InviteIssued { code_hash, uses, .. } if matches!(outcome, chat::Outcome::InviteIssued { .. }) => {
                    prop_assert!(accounts::invite(&before, code_hash).unwrap().is_none(), "a code was issued twice");
                    issued.insert(code_hash.clone(), (*uses, 0));
                }
                Event::InviteRevoked { code_hash } => {
                    prop_assert!(accounts::invite(&t, code_hash).unwrap().is_none());
                    issued.remove(code_hash);
                }
                Event::InvitedUserRegistered { name, code_hash, .. } => {
                    let (had, left) = (accounts::invite(&before, code_hash).unwrap(), accounts::invite(&t, code_hash).unwrap());
                    if outcome == chat::Outcome::Registered {
                        let Some(had) = had else { return Err(TestCaseError::fail("registered with a code never issued")) };
                        prop_assert!(!had.expired(now), "registered with an expired code");
                        prop_assert!(chat::user(&before, name).unwrap().is_none());
                        prop_assert_eq!(left.map_or(0, |l| l.uses_left), had.uses_left - 1);
                        let (allowed, used) = issued.get_mut(code_hash).expect("an issued code is tracked");
                        *used += 1;
                        prop_assert!(*used <= *allowed, "{} registrations with a code for {}", used, allowed);
                    } else {
                        prop_assert_eq!(had, left, "a refused registration used the code");
                        prop_assert_eq!(chat::user(&before, name).unwrap(), chat::user(&t, name).unwrap());
                    }
                }
                Event::ProfileSet { user, display_name } => {
                    let profile = accounts::profile(&t, user).unwrap().map(|p| p.display_name);
                    if matches!(outcome, chat::Outcome::ProfileSet { .. }) {
                        prop_assert!(chat::user(&before, user).unwrap().is_some());
                        prop_assert_eq!(profile, (!display_name.is_empty()).then(|| display_name.clone()));
                    } else {
                        prop_assert_eq!(profile, accounts::profile(&before, user).unwrap().map(|p| p.display_name));
                    }
                }
                _ => {}
            }
            for (_, invite) in accounts::invites(&t).unwrap() {
                prop_assert!(invite.uses_left >= 1, "a used-up code stays stored");
            }
        }
    }
}

/// The WAL sync thread may still hold the database for a moment after drop.
fn open_sm_retry(dir: &std::path::Path) -> StateMachine {
    for _ in 0..100 {
        if let Ok(store) = raft_store::open(dir) {
            return StateMachine::open(store).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    open_sm(dir)
}

#[test]
fn history_pages_forward_and_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open_sm(dir.path());
        let mut cmds = vec![Command { ts_ms: 1, event: Event::RoomJoined { room: "r".into(), user: "u".into() } }];
        for i in 0..10 {
            cmds.push(Command {
                ts_ms: 2 + i,
                event: Event::MessagePosted { room: "r".into(), from: "u".into(), client_id: i.to_string(), text: format!("m{i}") },
            });
        }
        apply_all(&mut sm, &cmds, 4).await;
        let r = sm.reader();
        let seqs = |p: raft_store::state_machine::HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.history("r", None, None, 3).unwrap()), vec![8, 9, 10]);
        assert_eq!(seqs(r.history("r", Some(2), None, 3).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(r.history("r", None, Some(4), 50).unwrap()), vec![1, 2, 3]);
        assert_eq!(seqs(r.history("r", Some(8), Some(10), 50).unwrap()), vec![9]);
        assert_eq!(r.history("r", None, None, 3).unwrap().head, 10);
        assert!(r.history("other", None, None, 3).unwrap().messages.is_empty());
        // Message n is stamped n + 1; pages of 3 make the search read back.
        assert_eq!(r.last_stamped_before("r", 100, 3).unwrap(), None, "all stamped before");
        assert_eq!(r.last_stamped_before("r", 12, 3).unwrap(), None, "the newest too");
        assert_eq!(r.last_stamped_before("r", 11, 3).unwrap(), Some(9));
        assert_eq!(r.last_stamped_before("r", 6, 3).unwrap(), Some(4));
        assert_eq!(r.last_stamped_before("r", 2, 3).unwrap(), Some(0), "none stamped before");
        assert_eq!(r.last_stamped_before("r", 0, 50).unwrap(), Some(0));
        assert_eq!(r.last_stamped_before("other", 5, 3).unwrap(), Some(0));
        let _ = Arc::new(());
    });
}

/// Readers on a node installing a snapshot see the old state or the new one,
/// never the tables half wiped: every page they read is the room's whole
/// history up to the head they saw.
#[test]
fn readers_never_see_a_half_installed_snapshot() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let post = |i: u64| Command {
            ts_ms: 2 + i,
            event: Event::MessagePosted { room: "r".into(), from: "u".into(), client_id: i.to_string(), text: format!("message {i}") },
        };
        let mut cmds = vec![Command { ts_ms: 1, event: Event::RoomJoined { room: "r".into(), user: "u".into() } }];
        cmds.extend((0..3000).map(post));
        // The source has 3,000 messages; the target starts with the first 100.
        let (src_dir, dst_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut src = open_sm(src_dir.path());
        apply_all(&mut src, &cmds, 500).await;
        let mut dst = open_sm(dst_dir.path());
        apply_all(&mut dst, &cmds[..101], 50).await;

        let reader = dst.reader();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let page = reader.history("r", Some(0), None, 5000).unwrap();
                    assert_eq!(page.messages.len() as u64, page.head, "a read saw {} of {} messages", page.messages.len(), page.head);
                    assert!(page.head == 100 || page.head == 3000, "head {}", page.head);
                    reads += 1;
                }
                reads
            })
        };
        // Install the same snapshot several times (each wipes and reloads).
        for _ in 0..5 {
            let snap = src.get_snapshot_builder().await.build_snapshot().await.unwrap();
            dst.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = checker.join().expect("a reader saw a half-installed snapshot");
        assert!(reads > 0);
        assert_eq!(dst.reader().digest().unwrap(), src.reader().digest().unwrap());
    });
}
