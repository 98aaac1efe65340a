//! One encoding for everything Chorus writes to disk or sends between nodes:
//! bincode's standard configuration over serde.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::StoreError;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| StoreError::Codec(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let (value, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| StoreError::Codec(e.to_string()))?;
    Ok(value)
}
