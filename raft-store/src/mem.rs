//! The in-memory tables the property tests and the API's route tests run
//! `apply` and the queries on, and the digest that compares them with RocksDB.

use crate::chat::{Table, Tables, TablesRead};
use crate::error::StoreError;

/// An in-memory [`Tables`]: the model the property tests compare RocksDB with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemTables {
    pub tables: std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>>,
}

impl TablesRead for MemTables {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.get(&(table, key.to_vec())).cloned())
    }

    fn keys_below(&self, table: Table, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .tables
            .range((table, Vec::new())..(table, end.to_vec()))
            .take(limit)
            .map(|((_, k), _)| k.clone())
            .collect())
    }
}

impl Tables for MemTables {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.tables.insert((table, key.to_vec()), value.to_vec());
    }

    fn delete(&mut self, table: Table, key: &[u8]) {
        self.tables.remove(&(table, key.to_vec()));
    }
}

impl MemTables {
    /// The same digest [`crate::state_machine::ChatReader::digest`] computes over RocksDB.
    pub fn digest(&self) -> String {
        let mut d = StateDigest::default();
        for ((table, key), value) in &self.tables {
            d.add(*table, key, value);
        }
        d.finish()
    }
}

/// A digest of the chat tables, in table then key order: equal digests mean equal
/// state.
#[derive(Default)]
pub struct StateDigest(sha2::Sha256);

impl StateDigest {
    pub fn add(&mut self, table: Table, key: &[u8], value: &[u8]) {
        use sha2::Digest;
        self.0.update([table.tag()]);
        self.0.update((key.len() as u64).to_le_bytes());
        self.0.update(key);
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
    }

    pub fn finish(self) -> String {
        use sha2::Digest;
        hex::encode(self.0.finalize())
    }
}
