//! Rooms with owners and access (feature level 5): visibility, roles,
//! invitations, kicks, bans, mutes, topics and titles.
//!
//! From level 5 a room has an owner: whoever creates it, by
//! [`Event::RoomCreated`](crate::chat::Event) (which names its visibility) or
//! by being its first joiner (a public room, as every room was before). Rooms
//! made before level 5 have no owner and no [`RoomInfo`]: they stay public,
//! and nobody moderates them until an operator names an owner
//! ([`Event::RoomOwnerSet`](crate::chat::Event), level 6, `chorusctl rooms
//! set-owner`), which also hands on a room whose owner has gone.
//!
//! Every change to a room's access is an entry of the room
//! ([`Kind::Room`](crate::lifecycle::Kind)) with the next seq, like a message:
//! members see it live, `join` with `after` resumes it, and history shows it.
//!
//! # Who may do what
//!
//! An actor must be a member. Invite, kick, ban, unban, mute, unmute, topic and
//! title need a moderator or the owner; roles and visibility need the owner.
//! Kick, ban and mute act only on someone of a lower role than the actor's, so
//! a moderator cannot remove the owner or another moderator. The owner may hand
//! the room on (`SetRole` to `Owner`), becoming a moderator.
//!
//! # Stored layout
//!
//! - `RoomInfo` (room → [`RoomInfo`]): the owner, visibility, title, topic.
//! - `Members` (room, user): empty for a plain member, as before level 5, or
//!   a [`MemberRecord`] (a role, a mute).
//! - `Access` (room, user → [`AccessRecord`]): a standing invitation, a ban.

use serde::{Deserialize, Serialize};

use crate::chat::{self, Applied, Outcome, Table, Tables, TablesRead};
use crate::codec::{decode, encode};
use crate::error::StoreError;
use crate::lifecycle::Kind;

/// The feature level that brought rooms with owners.
pub const LEVEL: u32 = 5;
/// Largest room title, in bytes.
pub const MAX_TITLE: usize = 128;
/// Largest room topic, in bytes.
pub const MAX_TOPIC: usize = 1024;
/// An expiry that never comes: a ban or mute with no end.
pub const FOREVER: u64 = u64::MAX;

/// Who may see, join and read a room.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// Listed, anyone may join, anyone logged in may read.
    #[default]
    Public,
    /// Listed to its members and invitees only; joined by invitation; read by
    /// members only.
    Private,
}

/// A member's role in a room, in rising order of what it may do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    #[default]
    Member,
    Moderator,
    Owner,
}

/// What a room made at level 5 or later records of itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomInfo {
    pub owner: String,
    pub visibility: Visibility,
    pub title: String,
    pub topic: String,
}

/// A member's standing in a room. The default (a plain member) is stored as
/// an empty value, as every membership was before level 5.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberRecord {
    pub role: Role,
    /// The member may not post, reply, edit or react before this (cluster
    /// clock, ms; [`FOREVER`] for no end).
    pub muted_until: Option<u64>,
}

impl MemberRecord {
    pub fn muted(&self, now: u64) -> bool {
        self.muted_until.is_some_and(|until| until > now)
    }

    /// The answer to a post, reply, edit or reaction by this member now, if
    /// it is refused: while muted.
    pub(crate) fn silenced(&self, now: u64) -> Option<Applied> {
        self.muted(now).then(|| forbidden("muted in this room"))
    }

    /// Whether this member may delete another member's message.
    pub(crate) fn moderates(&self) -> bool {
        self.role >= Role::Moderator
    }
}

/// A user's access to a room they are not (or not yet) a member of.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessRecord {
    /// Invited: may join a private room (once; joining uses the invitation).
    pub invited: bool,
    /// Banned until this (cluster clock, ms; [`FOREVER`] for no end).
    pub banned_until: Option<u64>,
}

impl AccessRecord {
    pub fn banned(&self, now: u64) -> bool {
        self.banned_until.is_some_and(|until| until > now)
    }
}

/// A change to a room's access or settings, by one of its members.
///
/// New variants go at the end: bincode encodes a variant by its index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RoomAction {
    /// `user` may join the (private) room.
    Invite { user: String },
    /// `user` is no longer a member (and may join again).
    Kick { user: String },
    /// `user` is no longer a member and may not join for `for_ms` (ever, if
    /// `None`), counted from the entry's `ts_ms`.
    Ban { user: String, for_ms: Option<u64> },
    Unban { user: String },
    /// `user` may not post, reply, edit or react for `for_ms` (ever, if `None`).
    Mute { user: String, for_ms: Option<u64> },
    Unmute { user: String },
    /// `user`'s role becomes `role`; to [`Role::Owner`], the room is handed on
    /// and the old owner becomes a moderator.
    SetRole { user: String, role: Role },
    SetTopic { topic: String },
    SetTitle { title: String },
    SetVisibility { visibility: Visibility },
}

impl RoomAction {
    /// The user the action is about, if it is about one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            RoomAction::Invite { user }
            | RoomAction::Kick { user }
            | RoomAction::Ban { user, .. }
            | RoomAction::Unban { user }
            | RoomAction::Mute { user, .. }
            | RoomAction::Unmute { user }
            | RoomAction::SetRole { user, .. } => Some(user),
            RoomAction::SetTopic { .. } | RoomAction::SetTitle { .. } | RoomAction::SetVisibility { .. } => None,
        }
    }

    /// Whether applying the action ends `user`'s membership, if they had one.
    pub fn removes(&self) -> Option<&str> {
        match self {
            RoomAction::Kick { user } | RoomAction::Ban { user, .. } => Some(user),
            _ => None,
        }
    }

    /// The role an actor needs for this action.
    fn needs(&self) -> Role {
        match self {
            RoomAction::SetRole { .. } | RoomAction::SetVisibility { .. } => Role::Owner,
            _ => Role::Moderator,
        }
    }
}

/// When something lasting `for_ms` from `now` ends.
pub fn until(now: u64, for_ms: Option<u64>) -> u64 {
    for_ms.map_or(FOREVER, |d| now.saturating_add(d))
}

/// The room's settings, if it was made at level 5 or later.
pub fn info(t: &(impl TablesRead + ?Sized), room: &str) -> Result<Option<RoomInfo>, StoreError> {
    chat::get_record(t, Table::RoomInfo, room.as_bytes())
}

/// `user`'s standing in `room`, if a member.
pub fn member(t: &(impl TablesRead + ?Sized), room: &str, user: &str) -> Result<Option<MemberRecord>, StoreError> {
    t.get(Table::Members, &chat::member_key(room, user))?.map(|v| member_from(&v)).transpose()
}

/// A `Members` value as its record.
pub fn member_from(value: &[u8]) -> Result<MemberRecord, StoreError> {
    if value.is_empty() {
        return Ok(MemberRecord::default());
    }
    decode(value)
}

/// A member's record as its `Members` value: empty for a plain member, as
/// before level 5.
fn member_value(record: &MemberRecord) -> Result<Vec<u8>, StoreError> {
    if *record == MemberRecord::default() {
        Ok(Vec::new())
    } else {
        encode(record)
    }
}

fn put_member(t: &mut impl Tables, room: &str, user: &str, record: &MemberRecord) -> Result<(), StoreError> {
    t.put(Table::Members, &chat::member_key(room, user), &member_value(record)?);
    Ok(())
}

/// `user`'s invitation and ban in `room`.
pub fn access(t: &(impl TablesRead + ?Sized), room: &str, user: &str) -> Result<AccessRecord, StoreError> {
    Ok(chat::get_record(t, Table::Access, &chat::member_key(room, user))?.unwrap_or_default())
}

fn put_access(t: &mut impl Tables, room: &str, user: &str, record: &AccessRecord) -> Result<(), StoreError> {
    let key = chat::member_key(room, user);
    if *record == AccessRecord::default() {
        t.delete(Table::Access, &key);
        Ok(())
    } else {
        chat::put_record(t, Table::Access, &key, record)
    }
}

/// Whether `user` may read `room`'s history and find its messages: a DM
/// room's two users; a private room's members; anyone for a public room.
pub fn may_read(t: &(impl TablesRead + ?Sized), room: &str, user: &str) -> Result<bool, StoreError> {
    if chat::dm_participants(room).is_some() {
        return chat::is_member(t, room, user);
    }
    match info(t, room)? {
        Some(i) if i.visibility == Visibility::Private => chat::is_member(t, room, user),
        _ => Ok(true),
    }
}

/// Whether `user` may see that `room` exists (in the room list): as
/// [`may_read`], and a private room's invitees too.
pub fn may_see(t: &(impl TablesRead + ?Sized), room: &str, user: &str) -> Result<bool, StoreError> {
    if may_read(t, room, user)? {
        return Ok(true);
    }
    Ok(chat::dm_participants(room).is_none() && access(t, room, user)?.invited)
}

fn forbidden(reason: impl Into<String>) -> Applied {
    Applied::outcome(Outcome::Forbidden { reason: reason.into() })
}

/// Creates `room` with `owner` as its owner and first member.
pub(crate) fn create(t: &mut impl Tables, room: &str, owner: &str, visibility: Visibility, title: &str, topic: &str) -> Result<Applied, StoreError> {
    if room.is_empty() || owner.is_empty() || room.len() > 255 || owner.len() > 255 || chat::dm_participants(room).is_some() {
        return Ok(chat::rejected("malformed room or user name"));
    }
    if title.len() > MAX_TITLE || topic.len() > MAX_TOPIC {
        return Ok(chat::rejected("title or topic too long"));
    }
    if chat::room(t, room)?.is_some() {
        return Ok(Applied::outcome(Outcome::NameTaken));
    }
    found(t, room, owner, visibility, title, topic)?;
    Ok(Applied::outcome(Outcome::Joined { head: 0 }))
}

/// Writes a new room with its owner as its one member.
fn found(t: &mut impl Tables, room: &str, owner: &str, visibility: Visibility, title: &str, topic: &str) -> Result<(), StoreError> {
    crate::quota::count_room_created(t, owner)?;
    chat::put_record(t, Table::Rooms, room.as_bytes(), &chat::RoomRecord { last_seq: 0, members: 1 })?;
    put_member(t, room, owner, &MemberRecord { role: Role::Owner, muted_until: None })?;
    let info = RoomInfo { owner: owner.to_string(), visibility, title: title.to_string(), topic: topic.to_string() };
    chat::put_record(t, Table::RoomInfo, room.as_bytes(), &info)
}

/// `join` from level 5: the first joiner founds a public room and owns it; a
/// banned user is refused, and so is one without an invitation to a private
/// room. Joining uses the invitation. Idempotent for a member.
pub(crate) fn join(t: &mut impl Tables, now: u64, room: &str, user: &str) -> Result<Applied, StoreError> {
    let Some(mut record) = chat::room(t, room)? else {
        found(t, room, user, Visibility::Public, "", "")?;
        return Ok(Applied::outcome(Outcome::Joined { head: 0 }));
    };
    if chat::is_member(t, room, user)? {
        return Ok(Applied::outcome(Outcome::Joined { head: record.last_seq }));
    }
    let info = info(t, room)?;
    let mut acc = access(t, room, user)?;
    if acc.banned(now) {
        return Ok(forbidden("banned from this room"));
    }
    let owner = info.as_ref().is_some_and(|i| i.owner == user);
    if info.as_ref().is_some_and(|i| i.visibility == Visibility::Private) && !acc.invited && !owner {
        return Ok(forbidden("a private room: joining needs an invitation"));
    }
    acc.invited = false;
    if acc.banned_until.is_some() {
        // An expired ban is forgotten once it has been outlived.
        acc.banned_until = None;
    }
    put_access(t, room, user, &acc)?;
    let role = if owner { Role::Owner } else { Role::Member };
    let value = member_value(&MemberRecord { role, muted_until: None })?;
    chat::add_member(t, room, user, &value, &mut record)?;
    Ok(Applied::outcome(Outcome::Joined { head: record.last_seq }))
}

/// The operator makes `owner`, a member of `room`, its owner. A room from
/// before level 5 gets its settings (public, no title or topic); a room with
/// another owner is handed on, the old owner (if still a member) becoming a
/// moderator, as when an owner hands it on. Not a room entry: members see the
/// new roles in the room's details.
pub(crate) fn set_owner(t: &mut impl Tables, room: &str, owner: &str) -> Result<Applied, StoreError> {
    if chat::dm_participants(room).is_some() {
        return Ok(chat::rejected("a direct-message room has no owner"));
    }
    if chat::room(t, room)?.is_none() {
        return Ok(chat::rejected("no such room"));
    }
    if chat::user(t, owner)?.is_none() {
        return Ok(Applied::outcome(Outcome::NoSuchUser));
    }
    let Some(mut record) = member(t, room, owner)? else {
        return Ok(chat::rejected("the new owner must be a member of the room"));
    };
    let settings = match info(t, room)? {
        Some(mut i) => {
            if i.owner != owner {
                if let Some(mut old) = member(t, room, &i.owner)? {
                    old.role = Role::Moderator;
                    put_member(t, room, &i.owner, &old)?;
                }
                i.owner = owner.to_string();
            }
            i
        }
        None => RoomInfo { owner: owner.to_string(), visibility: Visibility::Public, title: String::new(), topic: String::new() },
    };
    chat::put_record(t, Table::RoomInfo, room.as_bytes(), &settings)?;
    record.role = Role::Owner;
    put_member(t, room, owner, &record)?;
    Ok(Applied::outcome(Outcome::OwnerSet))
}

/// Applies `action` by `from` to `room` and stores it as the room's next
/// entry; see the module for who may do what.
pub(crate) fn act(t: &mut impl Tables, now: u64, room: &str, from: &str, client_id: &str, action: &RoomAction) -> Result<Applied, StoreError> {
    let actor = match chat::admit(t, room, from, client_id)? {
        Ok(standing) => standing.role,
        Err(done) => return Ok(done),
    };
    if chat::dm_participants(room).is_some() {
        return Ok(forbidden("a direct-message room has no moderation"));
    }
    let Some(mut room_info) = info(t, room)? else {
        return Ok(forbidden("this room has no owner: it was made before feature level 5"));
    };
    if actor < action.needs() {
        let who = if action.needs() == Role::Owner { "the owner" } else { "a moderator or the owner" };
        return Ok(forbidden(format!("only {who} may do this")));
    }
    if let Some(user) = action.subject() {
        if user.is_empty() || user.len() > 255 {
            return Ok(chat::rejected("malformed user name"));
        }
        if chat::user(t, user)?.is_none() {
            return Ok(Applied::outcome(Outcome::NoSuchUser));
        }
        if user == from {
            return Ok(chat::rejected("this acts on another member, not oneself"));
        }
    }
    // The subject's standing, where the action needs it.
    let target = match action.subject() {
        Some(user) => member(t, room, user)?,
        None => None,
    };
    let outranked = |target: &Option<MemberRecord>| target.unwrap_or_default().role >= actor;
    match action {
        RoomAction::Invite { user } => {
            if target.is_some() {
                return Ok(chat::rejected("already a member"));
            }
            let mut acc = access(t, room, user)?;
            if acc.banned(now) {
                return Ok(forbidden("banned from this room: unban first"));
            }
            acc.invited = true;
            put_access(t, room, user, &acc)?;
        }
        RoomAction::Kick { user } => {
            if target.is_none() {
                return Ok(chat::rejected("not a member"));
            }
            if outranked(&target) {
                return Ok(forbidden("only someone of a lower role may be removed"));
            }
            chat::remove_member(t, room, user)?;
        }
        RoomAction::Ban { user, for_ms } => {
            if outranked(&target) {
                return Ok(forbidden("only someone of a lower role may be banned"));
            }
            chat::remove_member(t, room, user)?;
            put_access(t, room, user, &AccessRecord { invited: false, banned_until: Some(until(now, *for_ms)) })?;
        }
        RoomAction::Unban { user } => {
            let mut acc = access(t, room, user)?;
            if !acc.banned(now) {
                return Ok(chat::rejected("not banned"));
            }
            acc.banned_until = None;
            put_access(t, room, user, &acc)?;
        }
        RoomAction::Mute { user, for_ms } => {
            let Some(mut record) = target else { return Ok(chat::rejected("not a member")) };
            if outranked(&target) {
                return Ok(forbidden("only someone of a lower role may be muted"));
            }
            record.muted_until = Some(until(now, *for_ms));
            put_member(t, room, user, &record)?;
        }
        RoomAction::Unmute { user } => {
            let Some(mut record) = target.filter(|r| r.muted(now)) else { return Ok(chat::rejected("not a muted member")) };
            record.muted_until = None;
            put_member(t, room, user, &record)?;
        }
        RoomAction::SetRole { user, role } => {
            let Some(mut record) = target else { return Ok(chat::rejected("not a member")) };
            record.role = *role;
            put_member(t, room, user, &record)?;
            if *role == Role::Owner {
                let mut own = member(t, room, from)?.unwrap_or_default();
                own.role = Role::Moderator;
                put_member(t, room, from, &own)?;
                room_info.owner = user.clone();
                chat::put_record(t, Table::RoomInfo, room.as_bytes(), &room_info)?;
            }
        }
        RoomAction::SetTopic { topic } => {
            if topic.len() > MAX_TOPIC {
                return Ok(chat::rejected("topic too long"));
            }
            room_info.topic = topic.clone();
            chat::put_record(t, Table::RoomInfo, room.as_bytes(), &room_info)?;
        }
        RoomAction::SetTitle { title } => {
            if title.len() > MAX_TITLE {
                return Ok(chat::rejected("title too long"));
            }
            room_info.title = title.clone();
            chat::put_record(t, Table::RoomInfo, room.as_bytes(), &room_info)?;
        }
        RoomAction::SetVisibility { visibility } => {
            room_info.visibility = *visibility;
            chat::put_record(t, Table::RoomInfo, room.as_bytes(), &room_info)?;
        }
    }
    chat::append(t, now, room, from, client_id, "", Kind::Room(action.clone()))
}

/// A room's members with their standing, by name.
pub fn members<R: crate::read::ChatRead + ?Sized>(r: &R, room: &str) -> Result<Vec<(String, MemberRecord)>, StoreError> {
    let prefix = chat::key2(room, &[]);
    let end = crate::read::prefix_end(&prefix);
    r.scan(Table::Members, &prefix, end.as_deref(), usize::MAX, crate::read::Order::Ascending)?
        .into_iter()
        .filter_map(|(key, value)| key.strip_prefix(prefix.as_slice()).map(|u| (String::from_utf8_lossy(u).into_owned(), value)))
        .map(|(user, value)| Ok((user, member_from(&value)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{apply, Command, Event, MemTables};

    fn run(t: &mut MemTables, ts_ms: u64, event: Event) -> Outcome {
        apply(t, &Command { ts_ms, event }).unwrap().outcome
    }

    fn setup() -> MemTables {
        let mut t = MemTables::default();
        run(&mut t, 1, Event::FeatureLevelRaised { level: LEVEL });
        for u in ["olive", "mo", "mia", "eve"] {
            run(&mut t, 1, Event::UserRegistered { name: u.into(), password_hash: "h".into() });
        }
        t
    }

    fn act(t: &mut MemTables, ts: u64, from: &str, id: &str, action: RoomAction) -> Outcome {
        run(t, ts, Event::RoomActed { room: "r".into(), from: from.into(), client_id: id.into(), action })
    }

    fn join(t: &mut MemTables, ts: u64, user: &str) -> Outcome {
        run(t, ts, Event::RoomJoined { room: "r".into(), user: user.into() })
    }

    #[test]
    fn an_operator_names_the_owner_of_an_old_room_or_hands_a_room_on() {
        // A room made before level 5 has no owner.
        let mut t = MemTables::default();
        for u in ["olive", "mia", "eve"] {
            run(&mut t, 1, Event::UserRegistered { name: u.into(), password_hash: "h".into() });
        }
        join(&mut t, 2, "olive");
        join(&mut t, 2, "mia");
        run(&mut t, 3, Event::FeatureLevelRaised { level: LEVEL });
        assert!(info(&t, "r").unwrap().is_none());
        let set = |owner: &str| Event::RoomOwnerSet { room: "r".into(), owner: owner.into() };
        assert!(matches!(run(&mut t, 4, set("eve")), Outcome::Rejected { .. }), "not a member");
        assert_eq!(run(&mut t, 4, set("zed")), Outcome::NoSuchUser);
        assert!(matches!(run(&mut t, 4, Event::RoomOwnerSet { room: "nope".into(), owner: "olive".into() }), Outcome::Rejected { .. }));
        assert_eq!(run(&mut t, 4, set("olive")), Outcome::OwnerSet);
        let i = info(&t, "r").unwrap().unwrap();
        assert_eq!((i.owner.as_str(), i.visibility), ("olive", Visibility::Public));
        assert_eq!(member(&t, "r", "olive").unwrap().unwrap().role, Role::Owner);
        // The owner may now moderate; handing the room to mia makes olive a moderator.
        assert!(matches!(act(&mut t, 5, "olive", "o1", RoomAction::SetTopic { topic: "T".into() }), Outcome::Posted { .. }));
        assert_eq!(run(&mut t, 6, set("mia")), Outcome::OwnerSet);
        assert_eq!(member(&t, "r", "olive").unwrap().unwrap().role, Role::Moderator);
        assert_eq!(member(&t, "r", "mia").unwrap().unwrap().role, Role::Owner);
        assert_eq!(info(&t, "r").unwrap().unwrap().topic, "T", "the settings stay");
    }

    #[test]
    fn the_first_joiner_owns_a_public_room() {
        let mut t = setup();
        assert_eq!(join(&mut t, 2, "olive"), Outcome::Joined { head: 0 });
        assert_eq!(join(&mut t, 2, "mia"), Outcome::Joined { head: 0 });
        assert_eq!(info(&t, "r").unwrap().unwrap().owner, "olive");
        assert_eq!(member(&t, "r", "olive").unwrap().unwrap().role, Role::Owner);
        assert_eq!(member(&t, "r", "mia").unwrap().unwrap().role, Role::Member);
        // A plain membership is stored as before level 5.
        assert_eq!(t.get(Table::Members, &chat::member_key("r", "mia")).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn a_private_room_is_joined_by_invitation_once() {
        let mut t = setup();
        let create = Event::RoomCreated { room: "r".into(), owner: "olive".into(), visibility: Visibility::Private, title: "R".into(), topic: "".into() };
        assert_eq!(run(&mut t, 2, create.clone()), Outcome::Joined { head: 0 });
        assert_eq!(run(&mut t, 2, create), Outcome::NameTaken);
        assert!(matches!(join(&mut t, 3, "mia"), Outcome::Forbidden { .. }));
        assert!(!may_read(&t, "r", "mia").unwrap());
        assert!(!may_see(&t, "r", "mia").unwrap());
        // A member may not invite; the owner may.
        assert!(matches!(act(&mut t, 3, "mia", "x", RoomAction::Invite { user: "eve".into() }), Outcome::NotMember));
        assert!(matches!(act(&mut t, 3, "olive", "i1", RoomAction::Invite { user: "mia".into() }), Outcome::Posted { seq: 1, .. }));
        assert!(may_see(&t, "r", "mia").unwrap() && !may_read(&t, "r", "mia").unwrap());
        assert_eq!(join(&mut t, 4, "mia"), Outcome::Joined { head: 1 });
        assert!(may_read(&t, "r", "mia").unwrap());
        run(&mut t, 5, Event::RoomLeft { room: "r".into(), user: "mia".into() });
        assert!(matches!(join(&mut t, 6, "mia"), Outcome::Forbidden { .. }), "the invitation was used");
        assert!(matches!(act(&mut t, 6, "olive", "i2", RoomAction::Invite { user: "nobody".into() }), Outcome::NoSuchUser));
    }

    #[test]
    fn moderators_act_only_below_their_role() {
        let mut t = setup();
        for u in ["olive", "mo", "mia"] {
            join(&mut t, 2, u);
        }
        assert!(matches!(act(&mut t, 3, "mo", "k0", RoomAction::Kick { user: "mia".into() }), Outcome::Forbidden { .. }));
        assert!(matches!(act(&mut t, 3, "mo", "r0", RoomAction::SetRole { user: "mo".into(), role: Role::Owner }), Outcome::Forbidden { .. }));
        assert!(matches!(act(&mut t, 3, "olive", "r1", RoomAction::SetRole { user: "mo".into(), role: Role::Moderator }), Outcome::Posted { .. }));
        assert!(matches!(act(&mut t, 4, "mo", "k1", RoomAction::Kick { user: "olive".into() }), Outcome::Forbidden { .. }));
        assert!(matches!(act(&mut t, 4, "mo", "k2", RoomAction::Kick { user: "mia".into() }), Outcome::Posted { .. }));
        assert!(!chat::is_member(&t, "r", "mia").unwrap());
        assert_eq!(chat::room(&t, "r").unwrap().unwrap().members, 2);
        // Kicked, not banned: mia may come back.
        assert!(matches!(join(&mut t, 5, "mia"), Outcome::Joined { .. }));
        // The same client id again is the first answer, not a second kick.
        assert!(matches!(act(&mut t, 6, "mo", "k2", RoomAction::Kick { user: "mia".into() }), Outcome::Posted { duplicate: true, .. }));
        assert!(chat::is_member(&t, "r", "mia").unwrap());
    }

    #[test]
    fn bans_and_mutes_expire_by_the_cluster_clock() {
        let mut t = setup();
        for u in ["olive", "mia", "eve"] {
            join(&mut t, 2, u);
        }
        assert!(matches!(act(&mut t, 10, "olive", "b", RoomAction::Ban { user: "mia".into(), for_ms: Some(100) }), Outcome::Posted { .. }));
        assert!(!chat::is_member(&t, "r", "mia").unwrap());
        assert!(matches!(join(&mut t, 109, "mia"), Outcome::Forbidden { .. }));
        assert!(matches!(join(&mut t, 110, "mia"), Outcome::Joined { .. }));
        assert_eq!(access(&t, "r", "mia").unwrap(), AccessRecord::default(), "the outlived ban is forgotten");

        assert!(matches!(act(&mut t, 200, "olive", "m", RoomAction::Mute { user: "eve".into(), for_ms: None }), Outcome::Posted { .. }));
        let post = |id: &str| Event::MessagePosted { room: "r".into(), from: "eve".into(), client_id: id.into(), text: "hi".into() };
        assert!(matches!(run(&mut t, 300, post("p1")), Outcome::Forbidden { .. }));
        assert!(matches!(act(&mut t, 301, "olive", "u", RoomAction::Unmute { user: "eve".into() }), Outcome::Posted { .. }));
        assert!(matches!(run(&mut t, 302, post("p2")), Outcome::Posted { .. }));
        assert_eq!(t.get(Table::Members, &chat::member_key("r", "eve")).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn the_owner_hands_the_room_on_and_moderators_delete_others_messages() {
        let mut t = setup();
        for u in ["olive", "mo", "mia"] {
            join(&mut t, 2, u);
        }
        let post = Event::MessagePosted { room: "r".into(), from: "mia".into(), client_id: "p".into(), text: "spam".into() };
        let Outcome::Posted { seq, .. } = run(&mut t, 3, post) else { panic!() };
        let delete = |from: &str, id: &str| Event::MessageDeleted { room: "r".into(), from: from.into(), client_id: id.into(), target: seq };
        assert!(matches!(run(&mut t, 4, delete("mo", "d1")), Outcome::Forbidden { .. }));
        act(&mut t, 5, "olive", "r", RoomAction::SetRole { user: "mo".into(), role: Role::Owner });
        assert_eq!(info(&t, "r").unwrap().unwrap().owner, "mo");
        assert_eq!(member(&t, "r", "olive").unwrap().unwrap().role, Role::Moderator);
        assert!(matches!(run(&mut t, 6, delete("olive", "d2")), Outcome::Posted { .. }));
        assert_eq!(crate::lifecycle::entry(&t, "r", seq).unwrap().unwrap().text, "");
    }

    #[test]
    fn rooms_from_before_level_5_have_no_owner() {
        let mut t = MemTables::default();
        run(&mut t, 1, Event::FeatureLevelRaised { level: 4 });
        run(&mut t, 1, Event::UserRegistered { name: "mia".into(), password_hash: "h".into() });
        join(&mut t, 2, "olive");
        join(&mut t, 2, "mia");
        run(&mut t, 3, Event::FeatureLevelRaised { level: LEVEL });
        assert!(info(&t, "r").unwrap().is_none());
        assert!(matches!(act(&mut t, 4, "olive", "k", RoomAction::Kick { user: "mia".into() }), Outcome::Forbidden { .. }));
        assert!(may_read(&t, "r", "eve").unwrap());
    }
}
