//! Session credentials as replicated state: the token-signing keys (with
//! versions, so a key can be rotated while tokens signed by the old one stay
//! good until they expire) and each user's session epoch (raised by a
//! revocation: every token issued at a lower epoch is refused).
//!
//! Both live in the `Meta` table and came with feature level 3
//! ([`Event::SigningKeyRotated`](crate::chat::Event::SigningKeyRotated),
//! [`Event::SessionsRevoked`](crate::chat::Event::SessionsRevoked)). A cluster
//! that never rotated has one key, version 0, the one in its
//! [`ClusterRecord`](crate::chat::ClusterRecord); a user never revoked is at
//! epoch 0. Tokens of version 0 and epoch 0 are the format older binaries
//! issue and read, so a cluster in the middle of a rolling upgrade agrees on
//! every token.

use serde::{Deserialize, Serialize};

use crate::chat::{self, get_record, put_record, Applied, Outcome, Table, Tables, TablesRead};
use crate::error::StoreError;

/// How long a session token is valid, in milliseconds: 7 days. A retired key
/// is kept (and accepted) this long after it was retired, and no longer.
pub const TOKEN_LIFETIME_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The most keys kept at once: the current one and those retired within a
/// token lifetime. Rotating more often than that drops the oldest early.
pub const MAX_KEYS: usize = 16;

const META_KEYS: &[u8] = b"signing_keys";
const META_EPOCH_PREFIX: &[u8] = b"session_epoch/";

/// One version of the signing key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SigningKey {
    pub version: u32,
    pub key: Vec<u8>,
    /// When the next version replaced it (cluster clock); `None` while current.
    /// A token it signed is refused if it claims to expire later than one
    /// lifetime after this, so a leaked retired key cannot mint long tokens.
    pub retired_ms: Option<u64>,
}

/// Every key a token may be signed with; the last is the current one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SigningKeys {
    pub keys: Vec<SigningKey>,
}

impl SigningKeys {
    /// The key new tokens are signed with.
    pub fn current(&self) -> Option<&SigningKey> {
        self.keys.last()
    }

    pub fn version(&self, version: u32) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.version == version)
    }
}

/// The keys as of this state: the rotated set, or the formation's key as
/// version 0, or none before the cluster is formed.
pub fn signing_keys(t: &(impl TablesRead + ?Sized)) -> Result<SigningKeys, StoreError> {
    if let Some(keys) = get_record::<SigningKeys>(t, Table::Meta, META_KEYS)? {
        return Ok(keys);
    }
    Ok(match chat::cluster(t)? {
        Some(c) => SigningKeys { keys: vec![SigningKey { version: 0, key: c.signing_key, retired_ms: None }] },
        None => SigningKeys::default(),
    })
}

fn epoch_key(user: &str) -> Vec<u8> {
    let mut k = META_EPOCH_PREFIX.to_vec();
    k.extend_from_slice(user.as_bytes());
    k
}

/// The user's session epoch: a token issued at a lower one is revoked.
pub fn session_epoch(t: &(impl TablesRead + ?Sized), user: &str) -> Result<u64, StoreError> {
    Ok(get_record(t, Table::Meta, &epoch_key(user))?.unwrap_or(0))
}

/// A new current key. The previous one is retired `now`; keys retired more
/// than a token lifetime ago are dropped, and with `drop_old` every older key
/// is (each token they signed is refused at once: everyone logs in again).
pub(crate) fn rotate_key(t: &mut impl Tables, now: u64, key: &[u8], drop_old: bool) -> Result<Applied, StoreError> {
    if key.len() < 16 {
        return Ok(chat::rejected("a signing key needs at least 16 bytes"));
    }
    let mut keys = signing_keys(t)?;
    if keys.keys.is_empty() {
        return Ok(chat::rejected("the cluster is not formed"));
    }
    let version = keys.keys.iter().map(|k| k.version).max().unwrap_or(0) + 1;
    for k in &mut keys.keys {
        k.retired_ms.get_or_insert(now);
    }
    keys.keys.retain(|k| !drop_old && k.retired_ms.is_some_and(|r| r.saturating_add(TOKEN_LIFETIME_MS) > now));
    keys.keys.push(SigningKey { version, key: key.to_vec(), retired_ms: None });
    let excess = keys.keys.len().saturating_sub(MAX_KEYS);
    keys.keys.drain(..excess);
    put_record(t, Table::Meta, META_KEYS, &keys)?;
    Ok(Applied::outcome(Outcome::KeyRotated { version }))
}

/// Replaces the user's password hash and revokes every session of the user
/// ([`revoke`]): a stolen token does not outlive the password it came from.
pub(crate) fn change_password(t: &mut impl Tables, user: &str, password_hash: &str) -> Result<Applied, StoreError> {
    if chat::user(t, user)?.is_none() {
        return Ok(chat::rejected(&format!("no user named {user}")));
    }
    put_record(t, Table::Users, user.as_bytes(), &chat::UserRecord { password_hash: password_hash.to_string() })?;
    revoke(t, user)
}

/// Raises the user's epoch by one: every token issued before this is refused.
pub(crate) fn revoke(t: &mut impl Tables, user: &str) -> Result<Applied, StoreError> {
    if chat::user(t, user)?.is_none() {
        return Ok(chat::rejected(&format!("no user named {user}")));
    }
    let epoch = session_epoch(t, user)? + 1;
    put_record(t, Table::Meta, &epoch_key(user), &epoch)?;
    Ok(Applied::outcome(Outcome::Revoked { epoch }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{apply, Command, Event, MemTables};

    fn run(t: &mut MemTables, ts_ms: u64, event: Event) -> Outcome {
        apply(t, &Command { ts_ms, event }).unwrap().outcome
    }

    fn formed() -> MemTables {
        let mut t = MemTables::default();
        run(&mut t, 1, Event::ClusterFormed { cluster_id: "c".into(), signing_key: vec![1; 32] });
        run(&mut t, 2, Event::UserRegistered { name: "ann".into(), password_hash: "h".into() });
        t
    }

    #[test]
    fn the_formation_key_is_version_zero_until_a_rotation() {
        let mut t = formed();
        let keys = signing_keys(&t).unwrap();
        assert_eq!(keys.current().map(|k| (k.version, k.key.clone())), Some((0, vec![1; 32])));
        assert_eq!(run(&mut t, 10, Event::SigningKeyRotated { key: vec![2; 32], drop_old: false }), Outcome::KeyRotated { version: 1 });
        let keys = signing_keys(&t).unwrap();
        assert_eq!(keys.current().map(|k| k.version), Some(1));
        assert_eq!(keys.version(0).and_then(|k| k.retired_ms), Some(10), "the old key is kept, retired");
    }

    #[test]
    fn retired_keys_go_after_a_lifetime_or_at_once_when_asked() {
        let mut t = formed();
        run(&mut t, 10, Event::SigningKeyRotated { key: vec![2; 32], drop_old: false });
        run(&mut t, 10 + TOKEN_LIFETIME_MS, Event::SigningKeyRotated { key: vec![3; 32], drop_old: false });
        let versions: Vec<u32> = signing_keys(&t).unwrap().keys.iter().map(|k| k.version).collect();
        assert_eq!(versions, vec![1, 2], "version 0 retired a lifetime ago");
        run(&mut t, 11 + TOKEN_LIFETIME_MS, Event::SigningKeyRotated { key: vec![4; 32], drop_old: true });
        let versions: Vec<u32> = signing_keys(&t).unwrap().keys.iter().map(|k| k.version).collect();
        assert_eq!(versions, vec![3]);
        for i in 0..40u8 {
            run(&mut t, 20 + TOKEN_LIFETIME_MS, Event::SigningKeyRotated { key: vec![i; 32], drop_old: false });
        }
        assert_eq!(signing_keys(&t).unwrap().keys.len(), MAX_KEYS);
    }

    #[test]
    fn short_keys_and_unformed_clusters_are_refused() {
        let mut t = MemTables::default();
        let e = Event::SigningKeyRotated { key: vec![2; 32], drop_old: false };
        assert!(matches!(run(&mut t, 1, e), Outcome::Rejected { .. }));
        let mut t = formed();
        let before = t.clone();
        assert!(matches!(run(&mut t, 1, Event::SigningKeyRotated { key: vec![2; 8], drop_old: false }), Outcome::Rejected { .. }));
        assert_eq!(signing_keys(&t).unwrap(), signing_keys(&before).unwrap());
    }

    #[test]
    fn a_password_change_replaces_the_hash_and_revokes_every_session() {
        let mut t = MemTables::default();
        let change = |hash: &str| Event::PasswordChanged { user: "ann".into(), password_hash: hash.into() };
        assert!(matches!(run(&mut t, 1, change("h2")), Outcome::Rejected { .. }), "no such user");
        run(&mut t, 2, Event::UserRegistered { name: "ann".into(), password_hash: "h1".into() });
        assert_eq!(run(&mut t, 3, change("h2")), Outcome::Revoked { epoch: 1 });
        assert_eq!(chat::user(&t, "ann").unwrap().map(|u| u.password_hash), Some("h2".into()));
        assert_eq!(session_epoch(&t, "ann").unwrap(), 1);
    }

    #[test]
    fn a_revocation_raises_the_users_epoch() {
        let mut t = formed();
        assert_eq!(session_epoch(&t, "ann").unwrap(), 0);
        assert_eq!(run(&mut t, 5, Event::SessionsRevoked { user: "ann".into() }), Outcome::Revoked { epoch: 1 });
        assert_eq!(run(&mut t, 6, Event::SessionsRevoked { user: "ann".into() }), Outcome::Revoked { epoch: 2 });
        assert_eq!(session_epoch(&t, "ann").unwrap(), 2);
        assert!(matches!(run(&mut t, 7, Event::SessionsRevoked { user: "nobody".into() }), Outcome::Rejected { .. }));
        assert_eq!(session_epoch(&t, "nobody").unwrap(), 0);
    }
}
