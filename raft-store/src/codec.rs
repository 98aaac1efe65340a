//! One encoding for everything Chorus writes to disk or sends between nodes:
//! bincode's standard configuration over serde.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::StoreError;
use crate::format;

/// The most memory one decode may claim for strings and sequences: four
/// times the largest gRPC message a node takes (64 MiB), since a sequence
/// claims its elements' size in memory, which may exceed their encoded size.
/// The limit only checks; it does not change the encoding.
pub const DECODE_LIMIT: usize = 256 << 20;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| StoreError::Codec(e.to_string()))
}

/// A value of a feature level this binary does not read is
/// [`StoreError::Unsupported`], not corruption: the data is fine, the binary old.
///
/// Decoding claims at most [`DECODE_LIMIT`] bytes in all: a length prefix
/// that claims more (a damaged record, a hostile peer) is an error, not an
/// allocation that aborts the process.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let (value, _) = bincode::serde::decode_from_slice(bytes, config).map_err(|e| {
        let msg = e.to_string();
        if format::is_unsupported(&msg) {
            StoreError::Unsupported(msg)
        } else {
            StoreError::Codec(msg)
        }
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Batch;

    /// Found by the `log_entry` fuzz target: a level-3 entry whose message
    /// text claims 2^57 bytes aborted the process on allocation.
    #[test]
    fn a_length_that_claims_more_than_the_limit_is_an_error() {
        let entry = [
            0xfd, 0x03, 0, 0, 0, 0, 0x01, 0, 0, 0x04, 0x01, 0x03, 0xfd, 0x01, 0, 0, 0x01, 0, 0, 0, 0x03, 0x05, 0x32, 0x03, 0x61, 0x4e, 0x6e, 0x06,
            0x06, 0x20, 0x09, 0x09, 0x09, 0x09, 0x09, 0x01, 0x03, 0x61, 0x6e, 0x6e, 0x0b, 0x03, 0x61, 0x6e, 0x6e, 0x03, 0x04, 0x05, 0x6c, 0x6f,
            0x62, 0x61, 0x79, 0x03, 0x69, 0x6e, 0x6e, 0x01, 0x62, 0x79, 0x03, 0x61, 0x09, 0x6e, 0x6e, 0x03, 0x09, 0x04, 0x05, 0x09, 0x65,
        ];
        assert!(matches!(decode::<Batch>(&entry), Err(StoreError::Codec(_))));
        // A string that claims just past the limit, with nothing behind it.
        let mut long = Vec::new();
        long.push(0xfc);
        long.extend_from_slice(&((DECODE_LIMIT as u32) + 1).to_le_bytes());
        assert!(matches!(decode::<String>(&long), Err(StoreError::Codec(_))));
    }
}
