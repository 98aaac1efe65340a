//! The node's limits on what one user (or one address) may send, and the
//! fixed-window rate limiter that counts it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ApiError, Code};

/// Limits from the node's flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Messages per user per node per `rate_window`; 0 disables.
    pub rate_messages: u32,
    pub rate_window: Duration,
    /// Bytes one connection's outgoing queue may hold before it is closed
    /// as a slow consumer (`--max-outbox-bytes`).
    pub max_outbox_bytes: usize,
    /// Registrations and logins per client address per node per
    /// `account_window` (`--account-rate-limit`); 0 disables. Each runs
    /// argon2, so this is what one address can make the node hash.
    pub account_rate: u32,
    pub account_window: Duration,
    /// `join`, `leave` and `history` frames and room and history reads over
    /// HTTP per user per node per `request_window` (`--request-rate-limit`);
    /// 0 disables.
    pub request_rate: u32,
    pub request_window: Duration,
    /// Rooms one user may create (`--max-rooms-per-user`); 0: no limit.
    pub max_rooms_per_user: u64,
    /// How long a client may take to send a request's headers (on a kept-alive
    /// connection, counted from the end of the last answer, so this is also
    /// how long an idle connection stays open), and then to finish a request:
    /// send its body and get its answer (`--http-timeout-secs`). A request
    /// that takes longer gets 408.
    pub http_timeout: Duration,
    /// WebSocket connections this node serves at once (`--max-connections`);
    /// past it an upgrade is answered 503 `overloaded`. 0: no limit.
    pub max_connections: usize,
    /// Who may register on this node (`--registration`).
    pub registration: wire::http::RegistrationMode,
}

impl Limits {
    /// The largest client frame or HTTP body taken in: 64 KiB, or more if
    /// that is what a `text` of `max_message_bytes` needs at worst in JSON
    /// (six bytes for each escaped byte), so that an oversized text is read
    /// and refused with `too_large` rather than cut off as a frame.
    pub fn frame_bytes(&self) -> usize {
        (self.max_message_bytes.saturating_mul(6).saturating_add(4096)).max(64 * 1024)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4096,
            rate_messages: 20,
            rate_window: Duration::from_secs(10),
            max_outbox_bytes: crate::fanout::OUTBOX_BYTES,
            account_rate: 60,
            account_window: Duration::from_secs(10),
            request_rate: 300,
            request_window: Duration::from_secs(10),
            max_rooms_per_user: 1000,
            http_timeout: Duration::from_secs(30),
            max_connections: 0,
            registration: wire::http::RegistrationMode::Open,
        }
    }
}

/// Fixed-window counts per key (a user, a client address) on this node.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    /// Counts one `what` for `key`: refused with `rate_limited` once `key` had
    /// `limit` in the current `window` (0: no limit).
    pub fn check(&self, key: &str, limit: u32, window: Duration, what: &str, now: Instant) -> Result<(), ApiError> {
        if limit == 0 {
            return Ok(());
        }
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = w.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            return Err(ApiError::new(Code::RateLimited, format!("at most {limit} {what} per {} s", window.as_secs())));
        }
        entry.1 += 1;
        Ok(())
    }
}
