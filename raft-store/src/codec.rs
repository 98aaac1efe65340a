//! One encoding for everything Chorus writes to disk or sends between nodes:
//! bincode's standard configuration over serde.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::StoreError;
use crate::format;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| StoreError::Codec(e.to_string()))
}

/// A value of a feature level this binary does not read is
/// [`StoreError::Unsupported`], not corruption: the data is fine, the binary old.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let (value, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| {
        let msg = e.to_string();
        if format::is_unsupported(&msg) {
            StoreError::Unsupported(msg)
        } else {
            StoreError::Codec(msg)
        }
    })?;
    Ok(value)
}
