//! A server frame, as a client (`chorusctl chat`, the fault-injection suite)
//! reads it: any text parses or is an error, never a panic; a parsed frame
//! round-trips through its text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ServerFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = ServerFrame::parse(text) {
        let again = ServerFrame::parse(&frame.to_text());
        assert_eq!(again.ok(), Some(frame), "a frame did not survive writing and reading back: {text:?}");
    }
});
