//! Input rules of SPEC §3: names, passwords, message ids and sizes.

use crate::error::{ApiError, Code};

fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn user_name(s: &str) -> Result<(), ApiError> {
    if name_ok(s, 32) {
        Ok(())
    } else {
        Err(ApiError::bad_request("user names are 1-32 of A-Z a-z 0-9 _ . -"))
    }
}

/// A room a client may name: a plain room, or a DM room it is part of.
pub fn room_name(s: &str) -> Result<(), ApiError> {
    if name_ok(s, 64) {
        return Ok(());
    }
    if let Some((a, b)) = raft_store::chat::dm_participants(s) {
        if name_ok(a, 32) && name_ok(b, 32) && a < b {
            return Ok(());
        }
    }
    Err(ApiError::bad_request("room names are 1-64 of A-Z a-z 0-9 _ . -"))
}

pub fn password(s: &str) -> Result<(), ApiError> {
    if (8..=128).contains(&s.len()) {
        Ok(())
    } else {
        Err(ApiError::bad_request("passwords are 8-128 bytes"))
    }
}

/// Client message ids: 1-128 bytes, no control characters.
pub fn client_id(s: &str) -> Result<(), ApiError> {
    if !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::bad_request("message ids are 1-128 bytes of printable text"))
    }
}

pub fn text(s: &str, max_bytes: usize) -> Result<(), ApiError> {
    if s.len() > max_bytes {
        return Err(ApiError::new(Code::TooLarge, format!("message text is over {max_bytes} bytes")));
    }
    if s.is_empty() {
        return Err(ApiError::bad_request("message text is empty"));
    }
    Ok(())
}

/// A reaction: 1-64 bytes, no whitespace or control characters.
pub fn emoji(s: &str) -> Result<(), ApiError> {
    if raft_store::lifecycle::well_formed_emoji(s) {
        Ok(())
    } else {
        Err(ApiError::bad_request("a reaction is 1-64 bytes without spaces"))
    }
}

/// A room's topic or title: at most `max` bytes, no control characters but
/// newlines in a topic.
pub fn setting(what: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.len() > max {
        return Err(ApiError::bad_request(format!("{what} is at most {max} bytes")));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request(format!("{what} holds a control character")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(user_name("alice_1.x-y").is_ok());
        assert!(user_name("").is_err());
        assert!(user_name(&"a".repeat(33)).is_err());
        assert!(user_name("al ice").is_err());
        assert!(user_name("dm:a:b").is_err());
        assert!(room_name(&"r".repeat(64)).is_ok());
        assert!(room_name(&"r".repeat(65)).is_err());
        assert!(room_name("dm:amy:zed").is_ok());
        assert!(room_name("dm:zed:amy").is_err(), "unsorted");
        assert!(room_name("dm:amy").is_err());
    }

    #[test]
    fn sizes() {
        assert!(password("1234567").is_err());
        assert!(password("12345678").is_ok());
        assert!(text(&"x".repeat(10), 10).is_ok());
        assert_eq!(text(&"x".repeat(11), 10).unwrap_err().code, Code::TooLarge);
        assert!(client_id("a\u{0}").is_err());
        assert!(emoji("👍").is_ok());
        assert!(emoji("").is_err());
        assert!(emoji("a b").is_err());
    }
}
