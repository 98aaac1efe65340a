//! Accounts: argon2 password hashes, and bearer tokens signed with the cluster's
//! replicated keys (HMAC-SHA256), so a token from one node works on every node.
//!
//! Token: `base64url(payload) "." base64url(hmac(key, payload))`, where the
//! payload is `user "\n" expires_at_ms "\n" key_version "\n" epoch`, or just
//! `user "\n" expires_at_ms` for key version 0 at epoch 0 (the format of
//! binaries before rotation and revocation, so both read each other's tokens
//! during a rolling upgrade). The key version picks the key to check the
//! signature with; the epoch is the user's session epoch when it was issued
//! ([`raft_store::sessions`]), and a token below the user's current epoch is
//! revoked.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

use raft_store::sessions::{SigningKey, SigningKeys};

/// How long a session token is valid.
pub use raft_store::sessions::TOKEN_LIFETIME_MS;

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

/// The argon2 work of register and login, bounded. Each hash or check holds
/// about 19 MiB for tens of milliseconds on a blocking thread: unbounded, a
/// flood of logins could hold gigabytes at once. At most `permits` run at a
/// time; the rest wait their turn (holding only their request). A login for
/// a name nobody has does the same work against a throwaway hash, so the
/// answer's timing does not tell which names exist.
pub struct PasswordWork {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// A hash of a random password, for logins of unknown users.
    decoy: std::sync::OnceLock<String>,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The most argon2 runs seen at once, for tests and figures.
    pub peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Every argon2 run (hash or check) done.
    pub runs: std::sync::atomic::AtomicU64,
}

impl PasswordWork {
    pub fn new(permits: usize) -> Self {
        PasswordWork {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(permits.max(1))),
            decoy: std::sync::OnceLock::new(),
            in_flight: Default::default(),
            peak: Default::default(),
            runs: Default::default(),
        }
    }

    /// One argon2 run on a blocking thread, under a permit. The permit moves
    /// into the blocking task: a request dropped while argon2 runs (its client
    /// hung up) must not free a permit that the still-running work holds.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        use std::sync::atomic::Ordering::Relaxed;
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        self.runs.fetch_add(1, Relaxed);
        let (in_flight, peak) = (self.in_flight.clone(), self.peak.clone());
        tokio::task::spawn_blocking(move || {
            let now = in_flight.fetch_add(1, Relaxed) + 1;
            peak.fetch_max(now, Relaxed);
            let result = work();
            in_flight.fetch_sub(1, Relaxed);
            drop(permit);
            result
        })
        .await
        .map_err(|e| e.to_string())
    }

    pub async fn hash(&self, password: String) -> Result<String, String> {
        self.run(move || hash_password(&password)).await?
    }

    /// Whether `password` matches `hash`; with no hash (an unknown user), the
    /// same work against the decoy, and false.
    pub async fn check(&self, password: String, hash: Option<String>) -> bool {
        let known = hash.is_some();
        let hash = match hash {
            Some(h) => h,
            None => match self.decoy.get() {
                Some(d) => d.clone(),
                None => {
                    let random: [u8; 16] = rand::Rng::random(&mut rand::rng());
                    let Ok(d) = self.run(move || hash_password(&format!("{random:?}"))).await.and_then(|r| r) else { return false };
                    self.decoy.get_or_init(|| d).clone()
                }
            },
        };
        let ok = self.run(move || verify_password(&password, &hash)).await.unwrap_or(false);
        ok && known
    }
}

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
    fn payload(&self) -> String {
        let Claims { user, expires_at_ms, key_version, epoch } = self;
        if *key_version == 0 && *epoch == 0 {
            format!("{user}\n{expires_at_ms}")
        } else {
            format!("{user}\n{expires_at_ms}\n{key_version}\n{epoch}")
        }
    }

    fn parse(payload: &str) -> Option<Claims> {
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

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_work_is_bounded_and_unknown_users_cost_the_same() {
        use std::sync::atomic::Ordering::Relaxed;
        let work = std::sync::Arc::new(PasswordWork::new(2));
        let hash = work.hash("correct horse".into()).await.unwrap();
        let checks: Vec<_> = (0..12)
            .map(|i| {
                let (work, hash) = (work.clone(), hash.clone());
                tokio::spawn(async move { work.check(if i % 2 == 0 { "correct horse" } else { "wrong" }.into(), Some(hash)).await })
            })
            .collect();
        let mut ok = 0;
        for c in checks {
            ok += usize::from(c.await.unwrap());
        }
        assert_eq!(ok, 6);
        assert!(work.peak.load(Relaxed) <= 2, "{} argon2 runs at once", work.peak.load(Relaxed));
        // An unknown user: refused, after a real argon2 check (the decoy is
        // hashed once, on first use).
        let before = work.runs.load(Relaxed);
        assert!(!work.check("correct horse".into(), None).await);
        let first = work.runs.load(Relaxed) - before;
        assert_eq!(first, 2, "decoy hash + check");
        assert!(!work.check("anything".into(), None).await);
        assert_eq!(work.runs.load(Relaxed) - before, 3, "one check, as for a known user");
    }
}
