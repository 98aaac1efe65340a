//! The JSON bodies of SPEC §3's routes, requests and answers.

use serde::{Deserialize, Serialize};

use crate::{Consistency, ErrorCode, HistoryEntry, Id};

/// `POST /v1/users` and `POST /v1/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub name: String,
    pub password: String,
}

/// `POST /v1/users`: [`Credentials`] and, on a node started with
/// `--registration invite`, an operator's invite code (level 6), which the
/// registration uses up one of. Other nodes ignore `invite`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
}

/// Who may register on a node (`chorusd --registration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone (SPEC's behaviour).
    #[default]
    Open,
    /// Only with an operator's invite code (`chorusctl invites create`).
    Invite,
    /// Nobody: `POST /v1/users` is `forbidden`.
    Closed,
}

impl RegistrationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMode::Open => "open",
            RegistrationMode::Invite => "invite",
            RegistrationMode::Closed => "closed",
        }
    }
}

impl std::fmt::Display for RegistrationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RegistrationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(RegistrationMode::Open),
            "invite" => Ok(RegistrationMode::Invite),
            "closed" => Ok(RegistrationMode::Closed),
            other => Err(format!("registration is open, invite or closed, not {other:?}")),
        }
    }
}

/// `GET /v1/registration` → 200: how this node registers users, so a client
/// knows whether to ask for an invite code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationInfo {
    pub mode: RegistrationMode,
}

/// `POST /v1/users/profile` (level 6, with a bearer token): the caller's
/// display name, up to 64 characters, no control characters and no space at
/// either end; `""` clears it. → 200 [`Profile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileChange {
    pub display_name: String,
}

/// A user's public profile: `POST /v1/users/profile`'s answer, and one row of
/// `GET /v1/users/profile?names=a,b` (registered users only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// Absent when the user has set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// `GET /v1/users/profile`: up to [`MAX_PROFILES`] comma-separated names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfilesQuery {
    #[serde(default)]
    pub names: String,
}

/// The most names one `GET /v1/users/profile` asks about.
pub const MAX_PROFILES: usize = 100;

/// `POST /v1/users` → 201.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub name: String,
}

/// `POST /v1/sessions` → 200: a bearer token, valid on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    /// Milliseconds since the epoch.
    pub expires_at: u64,
}

/// `POST /v1/users/password` (with a bearer token): the caller's current
/// password and the new one. → 200 [`Revoked`]: every token of the caller,
/// this one too, is refused from then on; log in with the new password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChange {
    pub password: String,
    pub new_password: String,
}

/// `POST /v1/sessions/revoke` → 200: every token of `name` issued before
/// this is refused, on each node once it has applied the revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub name: String,
}

/// One row of `GET /v1/rooms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub name: String,
    pub members: u64,
    pub last_seq: u64,
    /// The caller's read state (from level 4; for rooms the caller belongs to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<crate::UnreadCounts>,
    /// From level 5, for rooms made since: who may see, join and read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<crate::Visibility>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The caller's role, if a member of a room made since level 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::Role>,
    /// The caller holds an invitation to this (private) room.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub invited: bool,
}

/// `POST /v1/rooms` (level 5): create `name` with the caller as its owner
/// and first member. → 201 [`RoomDetails`]; 409 `name_taken` if it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRoom {
    pub name: String,
    /// `public` when absent.
    #[serde(default)]
    pub visibility: crate::Visibility,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub topic: String,
}

/// One member of a room as `GET /v1/rooms/{room}` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMember {
    pub name: String,
    pub role: crate::Role,
    /// Muted until this (ms since the epoch); absent if not muted. A mute
    /// with no end reads as 18446744073709551615.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<u64>,
    /// The member's display name, if set (level 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// `GET /v1/rooms/{room}` → 200: a room the caller may read, its settings
/// and its first [`MEMBERS_LISTED`] members by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomDetails {
    pub name: String,
    pub visibility: crate::Visibility,
    /// Absent for a room made before level 5 (it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub title: String,
    pub topic: String,
    pub last_seq: u64,
    /// How many members the room has.
    pub member_count: u64,
    pub members: Vec<RoomMember>,
    /// The caller's role, if a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::Role>,
}

/// The most members [`RoomDetails`] lists.
pub const MEMBERS_LISTED: usize = 1000;

/// `POST /v1/rooms/{room}/actions` (level 5): a [`crate::RoomAction`] with a
/// client id, as the `room_action` frame carries it. → 200 [`Posted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostRoomAction {
    pub id: Id,
    #[serde(flatten)]
    pub action: crate::RoomAction,
}

/// The query of `GET /v1/rooms`: a page of rooms by name. Without `after`,
/// the first; the answer's `Link: <…>; rel="next"` header names the next
/// page while there may be one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsQuery {
    /// Only rooms whose name sorts after this one.
    pub after: Option<String>,
    /// At most 1000; 1000 when absent.
    pub limit: Option<u64>,
    /// Only rooms whose name or title holds this text (case-insensitive):
    /// the room directory's search.
    pub q: Option<String>,
}

/// The query of `GET /v1/rooms/{room}/messages`, and the fields of a
/// `history` frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub after: Option<u64>,
    pub before: Option<u64>,
    /// At most 1000; 50 when absent.
    pub limit: Option<u64>,
    pub consistency: Option<Consistency>,
}

/// `GET /v1/rooms/{room}/messages` → 200: the room's entries ascending by
/// seq (see [`HistoryEntry`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub room: String,
    /// The room's last seq.
    pub head: u64,
    pub messages: Vec<HistoryEntry>,
}

/// `POST /v1/rooms/{room}/messages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostMessage {
    pub id: Id,
    pub text: String,
    /// Post as a reply to this message of the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
}

/// The query of `GET /v1/rooms/{room}/messages/{seq}/thread`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadQuery {
    /// Only entries of seq above this.
    pub after: Option<u64>,
    /// At most 1000; 50 when absent.
    pub limit: Option<u64>,
    pub consistency: Option<Consistency>,
}

/// `GET /v1/rooms/{room}/messages/{seq}/thread` → 200: the thread's first
/// message and its replies, ascending by seq, each as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadPage {
    pub room: String,
    pub root: u64,
    pub messages: Vec<HistoryEntry>,
}

/// `POST /v1/rooms/{room}/messages` → 200, once committed and applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    /// Where the message is stored (for a duplicate, where it was first posted).
    pub room: String,
    pub seq: u64,
    pub id: Id,
    pub ts: u64,
    pub duplicate: bool,
}

/// The query of `GET /v1/search`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// Words, `"phrases"`, `-excluded`, `AND`/`OR`; 1-256 bytes.
    pub q: String,
    /// At most 100; 20 when absent.
    pub limit: Option<u64>,
    /// Results to skip (at most 10,000), for the next page.
    pub offset: Option<u64>,
}

/// `GET /v1/search` → 200: the best matches first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    pub q: String,
    pub results: Vec<SearchResult>,
    /// The `offset` of the next page, while there may be one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
}

/// One match: the message as it is now, and its rank's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub score: f32,
    pub message: crate::Message,
}

/// One member in `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub client_url: String,
    /// `leader`, `follower`, `learner` or `candidate`.
    pub role: String,
    pub connections: u64,
    pub applied_index: u64,
    /// Additions to SPEC's fields, for the cluster view.
    pub reachable: bool,
    pub term: u64,
    pub last_log_index: u64,
    /// The leader's last log index minus this member's applied index.
    pub lag: u64,
}

/// `GET /v1/cluster` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub cluster_id: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<Member>,
}

/// `GET /v1/cluster/pick` → 200: the reachable member with the fewest connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    pub client_url: String,
}

/// Every error answer: a code and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
}
