//! Accounts: argon2 password hashes, and bearer tokens signed with the cluster's
//! replicated key (HMAC-SHA256), so a token from one node works on every node.
//!
//! Token: `base64url(user "\n" expires_at_ms) "." base64url(hmac(key, payload))`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a session token is valid.
pub const TOKEN_LIFETIME_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Hashes a password with argon2id and a fresh salt (PHC string format).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

fn mac(key: &[u8], payload: &[u8]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(payload);
    Some(m)
}

/// Issues a token for `user`, valid until `expires_at_ms`.
pub fn issue(key: &[u8], user: &str, expires_at_ms: u64) -> Option<String> {
    let payload = format!("{user}\n{expires_at_ms}");
    let tag = mac(key, payload.as_bytes())?.finalize().into_bytes();
    Some(format!("{}.{}", B64.encode(payload), B64.encode(tag)))
}

/// The user a token names, if its signature is good and it has not expired.
pub fn verify(key: &[u8], token: &str, now_ms: u64) -> Option<String> {
    let (payload, tag) = token.split_once('.')?;
    let payload = B64.decode(payload).ok()?;
    let tag = B64.decode(tag).ok()?;
    mac(key, &payload)?.verify_slice(&tag).ok()?;
    let payload = String::from_utf8(payload).ok()?;
    let (user, expires) = payload.rsplit_once('\n')?;
    let expires: u64 = expires.parse().ok()?;
    (now_ms < expires).then(|| user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_the_key_and_before_expiry() {
        let t = issue(b"key-1", "alice", 1_000).unwrap();
        assert_eq!(verify(b"key-1", &t, 999).as_deref(), Some("alice"));
        assert_eq!(verify(b"key-1", &t, 1_000), None, "expired");
        assert_eq!(verify(b"key-2", &t, 1), None, "other key");
        let forged = t.replacen(&t[..4], "AAAA", 1);
        assert_eq!(verify(b"key-1", &forged, 1), None);
        assert_eq!(verify(b"key-1", "garbage", 1), None);
        assert_eq!(verify(b"key-1", "", 1), None);
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
