//! The JSON bodies of SPEC §3 as a node decodes them: any bytes decode or are
//! refused, never a panic; whatever decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wire::http::{Credentials, HistoryPage, HistoryQuery, PostMessage, RoomsQuery};

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_vec(&value).expect("a decoded body encodes");
        let again: T = serde_json::from_slice(&text).expect("an encoded body decodes");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the body, so each gets the whole corpus's shapes.
    let Some((which, body)) = data.split_first() else { return };
    match which % 5 {
        0 => round_trip::<Credentials>(body),
        1 => round_trip::<PostMessage>(body),
        2 => round_trip::<HistoryQuery>(body),
        3 => round_trip::<RoomsQuery>(body),
        _ => round_trip::<HistoryPage>(body),
    }
});
