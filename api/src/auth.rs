//! Accounts: argon2 password hashes, the bounded pool they run on, and the
//! bearer tokens of [`raft_store::token`] (HMAC-SHA256 under the cluster's
//! replicated keys, so a token from one node works on every node).

pub use raft_store::token::{issue, verify, Claims};

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

#[cfg(test)]
mod tests {
    use super::*;

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
