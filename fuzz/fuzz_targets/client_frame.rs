//! A client frame, as a node reads it off a WebSocket: any text either parses
//! or is refused with a message, never a panic; and a parsed frame, written
//! back out, parses to the same frame and request id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ClientFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ClientFrame::parse(text) {
        Ok((frame, req)) => {
            let again = ClientFrame::parse(&frame.to_text(req.as_ref()));
            assert_eq!(again.ok(), Some((frame, req)), "a frame did not survive writing and reading back: {text:?}");
        }
        Err(bad) => assert!(!bad.message.is_empty(), "a refusal without a message: {text:?}"),
    }
});
