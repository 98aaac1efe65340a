//! A Raft log entry's payload as a node decodes it from its log or from a
//! peer: any bytes decode to a batch or are refused, never a panic; a decoded
//! batch encodes and decodes back to itself; and applying its commands to a
//! formed cluster's state never panics (a command may be rejected, or stop
//! apply with an error, but not crash the node).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_store::chat::{apply, Command, Event, MemTables};
use raft_store::codec::{decode, encode};
use raft_store::types::Batch;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = decode::<Batch>(data) else { return };
    let again: Batch = decode(&encode(&batch).expect("a decoded batch encodes")).expect("an encoded batch decodes");
    assert_eq!(again, batch);
    let mut t = MemTables::default();
    let formed = Command { ts_ms: 1, event: Event::ClusterFormed { cluster_id: "fuzz".into(), signing_key: vec![7; 32] } };
    apply(&mut t, &formed).expect("formation applies");
    for cmd in batch.commands.iter().take(256) {
        let _ = cmd.to_string();
        if apply(&mut t, cmd).is_err() {
            break;
        }
    }
});
