//! Versions of everything Chorus replicates: log entries and snapshots.
//!
//! A cluster has one **feature level**, recorded in its state (the `Meta`
//! table) by a replicated [`Event::FeatureLevelRaised`](crate::chat::Event).
//! Every log entry ([`Batch`](crate::types::Batch)) and every snapshot file
//! carries the level it was written at, and a node refuses, with an error that
//! says so, an entry or snapshot of a level newer than its binary reads. The
//! leader writes at the cluster's level, so a mixed cluster never sees an entry
//! one of its members cannot read; the level is raised (`chorusctl cluster
//! upgrade`) only once every member reports a binary that reads the new one.
//!
//! | level | what it adds |
//! |---|---|
//! | 1 | the format before versioning: an entry is a bare list of commands, a snapshot starts `CHORUSSNAP1\n`. Every cluster formed before levels existed is at 1 |
//! | 2 | entries and snapshots say their level; the `FeatureLevelRaised` event |
//! | 3 | `SigningKeyRotated` and `SessionsRevoked`: versioned token keys and revocation ([`crate::sessions`]) |
//! | 4 | `ReplyPosted`, `MessageEdited`, `MessageDeleted` and `ReactionChanged`: replies, threads, edits, deletes and reactions as room entries ([`crate::lifecycle`]); `ReadMarked`: read markers ([`crate::markers`]) |
//! | 5 | `RoomCreated` and `RoomActed`: rooms with owners, visibility, roles, invitations, kicks, bans, mutes, topics and titles ([`crate::rooms`]); a join may be refused |
//! | 6 | `ProfileSet`: display names; `InviteIssued`, `InviteRevoked` and `InvitedUserRegistered`: registration by operator-made invite codes ([`crate::accounts`]); `RoomOwnerSet`: an operator names a room's owner ([`crate::rooms::set_owner`]) |
//!
//! A level only goes up. A binary that reads level N also reads every level
//! below it, so a cluster is upgraded one binary at a time and then raised.

/// The level of data written before levels existed (and of a cluster whose
/// state records none).
pub const LEGACY: u32 = 1;

/// The newest level this binary reads and writes.
pub const CURRENT: u32 = 6;

/// Why a level cannot be read, for an error that tells the operator what to do.
pub fn unsupported(what: &str, level: u32) -> String {
    format!("{what} is at feature level {level}, but {READS} {LEGACY} to {CURRENT}: run a newer chorusd on this data")
}

const READS: &str = "this chorusd reads levels";

/// Whether an error message (say, one a decoder passed through) came from
/// [`unsupported`].
pub fn is_unsupported(msg: &str) -> bool {
    msg.contains(READS)
}
