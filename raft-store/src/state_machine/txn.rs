//! The write transaction of one apply batch: [`Txn`], a pending-write overlay
//! over the store that [`chat::apply`](crate::chat::apply) reads and writes
//! through [`TablesRead`] and [`Tables`].
//!
//! Invariants: a `Txn` never writes to RocksDB itself. Reads see the batch's
//! own writes (and deletes) before the stored state; [`Txn::into_batch`] turns
//! the overlay into one `WriteBatch` holding each written key once, with its
//! final value, which the caller writes atomically with the applied log id.

use std::collections::BTreeMap;

use rocksdb::{IteratorMode, WriteBatch};

use crate::chat::{Table, Tables, TablesRead};
use crate::db::Store;
use crate::error::StoreError;

/// The writes of one apply batch. Reads see the batch's own writes first; each
/// key is written to RocksDB once, with its final value, when the batch
/// commits. A batch of messages to one room rewrites the clock and the room
/// record once per message, so this saves most of the memtable inserts.
pub(super) struct Txn<'a> {
    store: &'a Store,
    overlay: BTreeMap<Table, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'a> Txn<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Txn { store, overlay: BTreeMap::new() }
    }

    fn pending(&self, table: Table, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.overlay.get(&table).and_then(|t| t.get(key))
    }

    /// The batch's final writes, in key order.
    pub(super) fn into_batch(self) -> Result<WriteBatch, StoreError> {
        let mut batch = WriteBatch::default();
        for (table, writes) in self.overlay {
            let cf = self.store.cf(table.name())?;
            for (key, value) in writes {
                match value {
                    Some(v) => batch.put_cf(cf, key, v),
                    None => batch.delete_cf(cf, key),
                }
            }
        }
        Ok(batch)
    }
}

impl TablesRead for Txn<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending(table, key) {
            return Ok(v.clone());
        }
        Ok(self.store.db.get_cf(self.store.cf(table.name())?, key)?)
    }

    fn keys_below(&self, table: Table, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        for item in self.store.db.iterator_cf(self.store.cf(table.name())?, IteratorMode::Start) {
            let (key, _) = item?;
            if &*key >= end || keys.len() >= limit {
                break;
            }
            if !matches!(self.pending(table, &key), Some(None)) {
                keys.push(key.to_vec());
            }
        }
        if let Some(writes) = self.overlay.get(&table) {
            let below = writes.range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Excluded(end)));
            keys.extend(below.filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()));
        }
        keys.sort();
        keys.dedup();
        keys.truncate(limit);
        Ok(keys)
    }
}

impl Tables for Txn<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.overlay.entry(table).or_default().insert(key.to_vec(), Some(value.to_vec()));
    }

    fn delete(&mut self, table: Table, key: &[u8]) {
        self.overlay.entry(table).or_default().insert(key.to_vec(), None);
    }
}
