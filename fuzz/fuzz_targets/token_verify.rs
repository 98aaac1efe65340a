//! Session tokens as a node checks them on every request (raft-store's
//! `token::verify`). Any text is refused or verified, never a panic; whatever
//! verifies is a token one of the keys signed, within its lifetime; a token
//! issued for any claims verifies to exactly those claims, and changing any
//! one of its bytes makes it fail.
//!
//! Input: 8 bytes of clock, 2 bytes of a position to tamper with, then the
//! text (read as a token, and as a user name to issue one for).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_store::sessions::{SigningKey, SigningKeys, TOKEN_LIFETIME_MS};
use raft_store::token::{issue, verify, Claims};

/// A key retired at 1,000,000 ms and the current one, as after one rotation.
fn keys() -> SigningKeys {
    SigningKeys {
        keys: vec![
            SigningKey { version: 0, key: vec![1; 32], retired_ms: Some(1_000_000) },
            SigningKey { version: 1, key: vec![2; 32], retired_ms: None },
        ],
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (clock, rest) = data.split_at(8);
    let now_ms = u64::from_le_bytes(clock.try_into().expect("8 bytes")) >> 2;
    let tamper_at = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let text = String::from_utf8_lossy(&rest[2..]);
    let keys = keys();

    if let Some(claims) = verify(&keys, &text, now_ms) {
        assert!(now_ms < claims.expires_at_ms, "an expired token verified: {claims:?}");
        let key = keys.version(claims.key_version).expect("verified under a key it holds");
        if let Some(retired) = key.retired_ms {
            assert!(claims.expires_at_ms <= retired + TOKEN_LIFETIME_MS, "outlives its retired key: {claims:?}");
        }
    }

    // Issue a token for this text as a user name (a name holds no newline:
    // the API refuses one at registration) and check it both ways.
    let user: String = text.chars().filter(|c| *c != '\n').collect();
    let epoch = now_ms % 7;
    let expires_at_ms = now_ms + 1 + (now_ms % TOKEN_LIFETIME_MS);
    let current = keys.version(1).expect("current key");
    let token = issue(current, &user, expires_at_ms, epoch).expect("an HMAC key of 32 bytes");
    let want = Claims { user, expires_at_ms, key_version: 1, epoch };
    assert_eq!(Claims::parse(&want.payload()).as_ref(), Some(&want));
    assert_eq!(verify(&keys, &token, now_ms), Some(want.clone()));
    assert_eq!(verify(&keys, &token, expires_at_ms), None, "verified at its expiry");

    // Flipping the lowest bit keeps the token ASCII (so still a &str) and
    // changes exactly one byte.
    let mut bytes = token.into_bytes();
    let i = tamper_at % bytes.len();
    bytes[i] ^= 1;
    let tampered = String::from_utf8(bytes).expect("ASCII stays ASCII");
    assert_eq!(verify(&keys, &tampered, now_ms), None, "a token changed at byte {i} still verified");
});
