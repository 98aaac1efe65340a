//! The node's limits on what one user may send, and the per-user rate limiter.

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
        }
    }
}

/// Fixed-window message counts per user on this node.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn check(&self, user: &str, limits: &Limits, now: Instant) -> Result<(), ApiError> {
        if limits.rate_messages == 0 {
            return Ok(());
        }
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < limits.rate_window);
        }
        let entry = w.entry(user.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= limits.rate_window {
            *entry = (now, 0);
        }
        if entry.1 >= limits.rate_messages {
            return Err(ApiError::new(
                Code::RateLimited,
                format!("at most {} messages per {} s", limits.rate_messages, limits.rate_window.as_secs()),
            ));
        }
        entry.1 += 1;
        Ok(())
    }
}
