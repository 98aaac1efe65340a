//! Session tokens: `base64url(payload) "." base64url(hmac(key, payload))`
//! (HMAC-SHA256 under one of the cluster's replicated [`SigningKeys`]), where the
//! payload is `user "\n" expires_at_ms "\n" key_version "\n" epoch`, or just
//! `user "\n" expires_at_ms` for key version 0 at epoch 0 (the format of
//! binaries before rotation and revocation, so both read each other's tokens
//! during a rolling upgrade). The key version picks the key to check the
//! signature with; the epoch is the user's session epoch when it was issued
//! ([`crate::sessions`]), and a token below the user's current epoch is
//! revoked. Pure (no storage), so the fuzz targets reach it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::sessions::{SigningKey, SigningKeys, TOKEN_LIFETIME_MS};

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], payload: &[u8]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(payload);
    Some(m)
}

/// What a token says, once its signature has been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub expires_at_ms: u64,
    pub key_version: u32,
    pub epoch: u64,
}

impl Claims {
    /// The signed text of these claims.
    pub fn payload(&self) -> String {
        let Claims { user, expires_at_ms, key_version, epoch } = self;
        if *key_version == 0 && *epoch == 0 {
            format!("{user}\n{expires_at_ms}")
        } else {
            format!("{user}\n{expires_at_ms}\n{key_version}\n{epoch}")
        }
    }

    /// The claims a payload states, if it is well formed; nothing is trusted
    /// until a signature over it has been checked.
    pub fn parse(payload: &str) -> Option<Claims> {
        let mut parts = payload.split('\n');
        let user = parts.next()?.to_string();
        let expires_at_ms = parts.next()?.parse().ok()?;
        let (key_version, epoch) = match (parts.next(), parts.next()) {
            (None, None) => (0, 0),
            (Some(v), Some(e)) => (v.parse().ok()?, e.parse().ok()?),
            _ => return None,
        };
        parts.next().is_none().then_some(Claims { user, expires_at_ms, key_version, epoch })
    }
}

/// Issues a token for `claims.user`, signed with `key` (whose version it records).
pub fn issue(key: &SigningKey, user: &str, expires_at_ms: u64, epoch: u64) -> Option<String> {
    let claims = Claims { user: user.to_string(), expires_at_ms, key_version: key.version, epoch };
    let payload = claims.payload();
    let tag = mac(&key.key, payload.as_bytes())?.finalize().into_bytes();
    Some(format!("{}.{}", B64.encode(payload), B64.encode(tag)))
}

/// What a token says, if one of `keys` signed it, it has not expired, and (for
/// a retired key) it expires no later than a lifetime after the key's
/// retirement. The epoch is the caller's to check against the user's.
pub fn verify(keys: &SigningKeys, token: &str, now_ms: u64) -> Option<Claims> {
    let (payload, tag) = token.split_once('.')?;
    let payload = B64.decode(payload).ok()?;
    let tag = B64.decode(tag).ok()?;
    // Parsed before the signature is checked only to find the key; nothing
    // of it is trusted until the check passes.
    let claims = Claims::parse(std::str::from_utf8(&payload).ok()?)?;
    let key = keys.version(claims.key_version)?;
    mac(&key.key, &payload)?.verify_slice(&tag).ok()?;
    let within_retirement = key.retired_ms.is_none_or(|r| claims.expires_at_ms <= r.saturating_add(TOKEN_LIFETIME_MS));
    (now_ms < claims.expires_at_ms && within_retirement).then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: u32, byte: u8, retired_ms: Option<u64>) -> SigningKey {
        SigningKey { version, key: vec![byte; 32], retired_ms }
    }

    fn keys(list: &[SigningKey]) -> SigningKeys {
        SigningKeys { keys: list.to_vec() }
    }

    fn user(claims: Option<Claims>) -> Option<String> {
        claims.map(|c| c.user)
    }

    #[test]
    fn tokens_verify_only_with_the_key_and_before_expiry() {
        let k1 = keys(&[key(0, 1, None)]);
        let t = issue(&key(0, 1, None), "alice", 1_000, 0).unwrap();
        assert_eq!(user(verify(&k1, &t, 999)).as_deref(), Some("alice"));
        assert_eq!(verify(&k1, &t, 1_000), None, "expired");
        assert_eq!(verify(&keys(&[key(0, 2, None)]), &t, 1), None, "other key");
        let forged = t.replacen(&t[..4], "AAAA", 1);
        assert_eq!(verify(&k1, &forged, 1), None);
        assert_eq!(verify(&k1, "garbage", 1), None);
        assert_eq!(verify(&k1, "", 1), None);
    }

    #[test]
    fn version_zero_epoch_zero_tokens_keep_the_old_format() {
        // The payload older binaries sign and read: `user \n expires`.
        let t = issue(&key(0, 1, None), "alice", 1_000, 0).unwrap();
        let payload = B64.decode(t.split_once('.').unwrap().0).unwrap();
        assert_eq!(payload, b"alice\n1000");
        let t = issue(&key(3, 1, None), "alice", 1_000, 2).unwrap();
        let claims = verify(&keys(&[key(3, 1, None)]), &t, 1).unwrap();
        assert_eq!((claims.key_version, claims.epoch), (3, 2));
    }

    #[test]
    fn a_rotated_key_keeps_old_tokens_until_they_expire_and_no_longer() {
        let old = key(0, 1, Some(500));
        let new = key(1, 2, None);
        let both = keys(&[old.clone(), new.clone()]);
        let before = issue(&key(0, 1, None), "alice", 400 + TOKEN_LIFETIME_MS, 0).unwrap();
        assert_eq!(user(verify(&both, &before, 600)).as_deref(), Some("alice"), "signed before the rotation");
        let minted = issue(&old, "mallory", 501 + TOKEN_LIFETIME_MS, 0).unwrap();
        assert_eq!(verify(&both, &minted, 600), None, "a retired key cannot mint tokens outliving it");
        let fresh = issue(&new, "alice", 700 + TOKEN_LIFETIME_MS, 0).unwrap();
        assert_eq!(user(verify(&both, &fresh, 600)).as_deref(), Some("alice"));
        assert_eq!(verify(&keys(&[new]), &before, 600), None, "the old key dropped");
        // A token naming a version it was not signed with.
        let lying = issue(&key(1, 1, None), "alice", 700, 0).unwrap();
        assert_eq!(verify(&both, &lying, 600), None);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        for payload in ["alice", "alice\nsoon", "alice\n5\n1", "alice\n5\n1\n2\n3", "alice\n5\nx\n1"] {
            assert_eq!(Claims::parse(payload), None, "{payload:?}");
        }
    }
}
