//! A snapshot file as a node reads it when it installs or restores one: any
//! bytes are read to a verified end or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_store::snapshot::SnapshotReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = SnapshotReader::new(data) else { return };
    assert!(reader.level() >= raft_store::format::LEGACY && reader.level() <= raft_store::format::CURRENT);
    // Every record costs input bytes, so this ends; the bound is a backstop.
    for _ in 0..100_000 {
        match reader.next_record() {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
});
