//! Accounts beyond a name and a password, from feature level 6: display names,
//! and the operator's invite codes that registration by invitation uses.
//!
//! An invite code is a secret the operator hands out (`chorusctl invites
//! create`). The log never holds the code itself, only its SHA-256
//! ([`code_hash`]), so neither a snapshot, a backup nor a log dump lets anyone
//! register. A code allows a number of registrations until an optional expiry
//! on the cluster clock; each [`Event::InvitedUserRegistered`] that applies
//! uses one, atomically with the registration, so two nodes racing to register
//! with the last use of a code cannot both succeed.
//!
//! Whether a node asks for a code at all is its `--registration` flag
//! (`open`, `invite`, `closed`), checked by the API before proposing: the
//! replicated state only says which codes are good.
//!
//! [`Event::InvitedUserRegistered`]: crate::chat::Event::InvitedUserRegistered

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chat::{self, get_record, put_record, Applied, Outcome, Table, Tables, TablesRead};
use crate::error::StoreError;

/// The feature level that brought display names and invite codes.
pub const LEVEL: u32 = 6;

/// The longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// The most registrations one invite code may allow.
pub const MAX_INVITE_USES: u32 = 10_000;

/// The longest operator's note on an invite, in bytes.
pub const MAX_INVITE_NOTE_BYTES: usize = 200;

/// A user's profile; absent while the user has set nothing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileRecord {
    /// What clients show for the user beside (or instead of) the name.
    pub display_name: String,
}

/// An invite code that is still good for `uses_left` registrations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InviteRecord {
    pub uses_left: u32,
    /// When the code stops working (cluster clock, ms); `None` for never.
    pub expires_at_ms: Option<u64>,
    pub issued_ms: u64,
    /// The operator's reminder of whom the code is for.
    pub note: String,
}

impl InviteRecord {
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now)
    }
}

/// The stored name of an invite code: its SHA-256, in hex.
pub fn code_hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// Whether `name` may be a display name, as `apply` decides it: at most
/// [`MAX_DISPLAY_NAME_CHARS`] characters, no control character (Unicode's
/// `Cc`, fixed for good), no bidirectional override or isolate (which could
/// make a name read as another), and no space or tab at either end. The
/// empty name clears the profile.
///
/// Every rule here is a fixed set of characters, never a Unicode property
/// table that a newer Rust could extend: nodes built with different
/// toolchains must agree on every command they apply. The API may refuse
/// more before proposing (it does: any Unicode white space at either end).
pub fn valid_display_name(name: &str) -> bool {
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    let edge = |c: Option<char>| c.is_some_and(|c| matches!(c, ' ' | '\t' | '\u{A0}' | '\u{3000}'));
    name.chars().count() <= MAX_DISPLAY_NAME_CHARS
        && !name.chars().any(|c| c.is_control() || bidi(c))
        && !edge(name.chars().next())
        && !edge(name.chars().next_back())
}

/// `user`'s profile, if they set one.
pub fn profile(t: &(impl TablesRead + ?Sized), user: &str) -> Result<Option<ProfileRecord>, StoreError> {
    get_record(t, Table::Profiles, user.as_bytes())
}

/// The invite stored under `hash`, if any (expired ones too).
pub fn invite(t: &(impl TablesRead + ?Sized), hash: &str) -> Result<Option<InviteRecord>, StoreError> {
    get_record(t, Table::Invites, hash.as_bytes())
}

/// Every invite code still stored, by hash, with what is left of it.
pub fn invites<R: crate::read::ChatRead + ?Sized>(r: &R) -> Result<Vec<(String, InviteRecord)>, StoreError> {
    r.scan(Table::Invites, &[], None, usize::MAX, crate::read::Order::Ascending)?
        .into_iter()
        .map(|(key, value)| Ok((String::from_utf8_lossy(&key).into_owned(), crate::codec::decode(&value)?)))
        .collect()
}

/// Sets (or, with the empty name, clears) `user`'s display name.
pub(crate) fn set_profile(t: &mut impl Tables, user: &str, display_name: &str) -> Result<Applied, StoreError> {
    if !valid_display_name(display_name) {
        return Ok(chat::rejected("malformed display name"));
    }
    if chat::user(t, user)?.is_none() {
        return Ok(Applied::outcome(Outcome::NoSuchUser));
    }
    if display_name.is_empty() {
        t.delete(Table::Profiles, user.as_bytes());
    } else {
        put_record(t, Table::Profiles, user.as_bytes(), &ProfileRecord { display_name: display_name.to_string() })?;
    }
    Ok(Applied::outcome(Outcome::ProfileSet { display_name: display_name.to_string() }))
}

fn well_formed_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Stores a new invite code (by its hash) good for `uses` registrations,
/// until `expires_in_ms` from now if given.
pub(crate) fn issue(t: &mut impl Tables, now: u64, hash: &str, uses: u32, expires_in_ms: Option<u64>, note: &str) -> Result<Applied, StoreError> {
    if !well_formed_hash(hash) {
        return Ok(chat::rejected("malformed invite code hash"));
    }
    if uses == 0 || uses > MAX_INVITE_USES {
        return Ok(chat::rejected("an invite allows 1 to 10000 registrations"));
    }
    if note.len() > MAX_INVITE_NOTE_BYTES {
        return Ok(chat::rejected("the invite's note is too long"));
    }
    if invite(t, hash)?.is_some() {
        return Ok(chat::rejected("this invite code exists already"));
    }
    let expires_at_ms = expires_in_ms.map(|d| now.saturating_add(d));
    let record = InviteRecord { uses_left: uses, expires_at_ms, issued_ms: now, note: note.to_string() };
    put_record(t, Table::Invites, hash.as_bytes(), &record)?;
    Ok(Applied::outcome(Outcome::InviteIssued { expires_at_ms }))
}

/// Forgets the invite code stored under `hash`; its unused registrations go.
pub(crate) fn revoke(t: &mut impl Tables, hash: &str) -> Result<Applied, StoreError> {
    let found = invite(t, hash)?.is_some();
    if found {
        t.delete(Table::Invites, hash.as_bytes());
    }
    Ok(Applied::outcome(Outcome::InviteRevoked { found }))
}

/// Registers `name` if the invite under `hash` is good now, using one of its
/// registrations (the last one removes it). A taken or malformed name uses
/// nothing.
pub(crate) fn register_invited(t: &mut impl Tables, now: u64, name: &str, password_hash: &str, hash: &str) -> Result<Applied, StoreError> {
    let mut record = match invite(t, hash)? {
        Some(record) if !record.expired(now) => record,
        _ => return Ok(Applied::outcome(Outcome::Forbidden { reason: "the invite code is unknown, used up or expired".into() })),
    };
    let applied = chat::register(t, name, password_hash)?;
    if applied.outcome == Outcome::Registered {
        record.uses_left = record.uses_left.saturating_sub(1);
        if record.uses_left == 0 {
            t.delete(Table::Invites, hash.as_bytes());
        } else {
            put_record(t, Table::Invites, hash.as_bytes(), &record)?;
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{apply, Command, Event, MemTables};

    fn run(t: &mut MemTables, ts_ms: u64, event: Event) -> Outcome {
        apply(t, &Command { ts_ms, event }).unwrap().outcome
    }

    fn issue_code(t: &mut MemTables, ts: u64, code: &str, uses: u32, expires_in_ms: Option<u64>) -> Outcome {
        run(t, ts, Event::InviteIssued { code_hash: code_hash(code), uses, expires_in_ms, note: "for the team".into() })
    }

    fn register(t: &mut MemTables, ts: u64, name: &str, code: &str) -> Outcome {
        run(t, ts, Event::InvitedUserRegistered { name: name.into(), password_hash: "h".into(), code_hash: code_hash(code) })
    }

    #[test]
    fn a_code_registers_as_many_users_as_it_allows_then_none() {
        let mut t = MemTables::default();
        assert_eq!(issue_code(&mut t, 1, "sesame", 2, None), Outcome::InviteIssued { expires_at_ms: None });
        assert_eq!(register(&mut t, 2, "ann", "sesame"), Outcome::Registered);
        assert_eq!(invite(&t, &code_hash("sesame")).unwrap().unwrap().uses_left, 1);
        // A taken name uses nothing up.
        assert_eq!(register(&mut t, 3, "ann", "sesame"), Outcome::NameTaken);
        assert_eq!(register(&mut t, 4, "bob", "sesame"), Outcome::Registered);
        assert!(invite(&t, &code_hash("sesame")).unwrap().is_none(), "the last use removes the code");
        assert!(matches!(register(&mut t, 5, "cat", "sesame"), Outcome::Forbidden { .. }));
        assert!(chat::user(&t, "cat").unwrap().is_none());
        assert!(matches!(register(&mut t, 5, "cat", "guess"), Outcome::Forbidden { .. }));
    }

    #[test]
    fn a_code_expires_on_the_cluster_clock_and_can_be_revoked() {
        let mut t = MemTables::default();
        assert_eq!(issue_code(&mut t, 1_000, "soon", 5, Some(500)), Outcome::InviteIssued { expires_at_ms: Some(1_500) });
        assert_eq!(register(&mut t, 1_499, "ann", "soon"), Outcome::Registered);
        assert!(matches!(register(&mut t, 1_500, "bob", "soon"), Outcome::Forbidden { .. }));
        issue_code(&mut t, 2_000, "later", 5, None);
        assert_eq!(run(&mut t, 2_001, Event::InviteRevoked { code_hash: code_hash("later") }), Outcome::InviteRevoked { found: true });
        assert_eq!(run(&mut t, 2_002, Event::InviteRevoked { code_hash: code_hash("later") }), Outcome::InviteRevoked { found: false });
        assert!(matches!(register(&mut t, 2_003, "bob", "later"), Outcome::Forbidden { .. }));
    }

    #[test]
    fn bad_invites_are_refused_and_change_nothing() {
        let mut t = MemTables::default();
        let bad = |hash: &str, uses: u32, note: &str| Event::InviteIssued { code_hash: hash.into(), uses, expires_in_ms: None, note: note.into() };
        for event in [bad("abc", 1, ""), bad(&code_hash("x").to_uppercase(), 1, ""), bad(&code_hash("x"), 0, ""), bad(&code_hash("x"), 10_001, ""), bad(&code_hash("x"), 1, &"n".repeat(201))] {
            assert!(matches!(run(&mut t, 1, event.clone()), Outcome::Rejected { .. }), "{event:?}");
        }
        assert!(invites(&t).unwrap().is_empty());
        issue_code(&mut t, 1, "x", 1, None);
        assert!(matches!(issue_code(&mut t, 2, "x", 3, None), Outcome::Rejected { .. }), "a code is issued once");
        assert_eq!(invite(&t, &code_hash("x")).unwrap().unwrap().uses_left, 1);
    }

    #[test]
    fn display_names_are_set_cleared_and_checked() {
        let mut t = MemTables::default();
        run(&mut t, 1, Event::UserRegistered { name: "ann".into(), password_hash: "h".into() });
        let set = |name: &str| Event::ProfileSet { user: "ann".into(), display_name: name.into() };
        assert_eq!(run(&mut t, 2, set("Ann Lee 🌱")), Outcome::ProfileSet { display_name: "Ann Lee 🌱".into() });
        assert_eq!(profile(&t, "ann").unwrap().unwrap().display_name, "Ann Lee 🌱");
        for bad in [" Ann", "Ann ", "A\nnn", "\u{202E}nnA", "Ann\u{A0}", &"x".repeat(65)] {
            assert!(matches!(run(&mut t, 3, set(bad)), Outcome::Rejected { .. }), "{bad:?}");
        }
        assert_eq!(profile(&t, "ann").unwrap().unwrap().display_name, "Ann Lee 🌱");
        assert_eq!(run(&mut t, 4, set(&"é".repeat(64))), Outcome::ProfileSet { display_name: "é".repeat(64) });
        assert_eq!(run(&mut t, 5, set("")), Outcome::ProfileSet { display_name: String::new() });
        assert!(profile(&t, "ann").unwrap().is_none());
        let nobody = Event::ProfileSet { user: "zed".into(), display_name: "Zed".into() };
        assert_eq!(run(&mut t, 6, nobody), Outcome::NoSuchUser);
    }
}
