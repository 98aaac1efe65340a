//! The read side of the state machine: [`ChatReader`], read access to the
//! applied chat state for the API and the admin plane. Its chat queries are
//! [`ChatRead`]'s, over the ranged scan implemented here.
//!
//! Invariants: every read of the chat tables holds the store's install gate
//! (for reading), so it never sees a snapshot install half done, and is
//! refused once the store is marked failed. The gate is not reentrant: a
//! method holding it calls no other method that takes it.

use std::io;
use std::sync::atomic::Ordering;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::snapshots::current_snapshot;
use super::{KEY_APPLIED, KEY_MEMBERSHIP};
use crate::chat::{self, StateDigest, Table, TablesRead};
use crate::codec::decode;
use crate::db::{Store, CF_SM};
use crate::error::StoreError;
use crate::format;
use crate::read::{ChatRead, Order};
use crate::snapshot::SnapshotFile;
use crate::types::{LogId, SnapshotMeta, StoredMembership};

/// Read access to the applied chat state, for the API and the admin plane.
/// Reads see the state as of the last written batch, and never a snapshot
/// install half done: each read holds the store's install gate. A request that
/// reads several times may see an install land between two reads; the state
/// only moves forward (history is append-only), so what it read first is still
/// true of what it reads next.
#[derive(Clone)]
pub struct ChatReader {
    store: Store,
}

impl ChatReader {
    pub(crate) fn of(store: &Store) -> Self {
        ChatReader { store: store.clone() }
    }

    /// The current snapshot: its meta and the open file (which stays readable
    /// if a newer snapshot replaces it meanwhile).
    pub fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>, StoreError> {
        // A build may swap the snapshot and remove the old file between
        // reading the pointer and opening the file; read the pointer again.
        for _ in 0..3 {
            let Some((meta, name)) = current_snapshot(&self.store)? else { return Ok(None) };
            match SnapshotFile::open(self.store.snapshot_dir().join(&name)) {
                Ok(file) => return Ok(Some((meta, file))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Codec("the current snapshot kept changing while being opened".into()))
    }

    /// Not reentrant: a method holding it must not call another that takes it.
    /// Refused once the store is marked failed.
    fn gate(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>, StoreError> {
        if let Some(why) = self.store.failure() {
            return Err(StoreError::Failed(why.to_string()));
        }
        Ok(self.store.install_gate.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ChatRead for ChatReader {
    fn scan(
        &self,
        table: Table,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let _gate = self.gate()?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(lower);
        if let Some(upper) = upper {
            opts.set_iterate_upper_bound(upper);
        }
        let mode = match order {
            Order::Ascending => IteratorMode::From(lower, Direction::Forward),
            Order::Descending => IteratorMode::End,
        };
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf_opt(self.store.cf(table.name())?, opts, mode) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }
}

impl TablesRead for ChatReader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _gate = self.gate()?;
        Ok(self.store.db.get_cf(self.store.cf(table.name())?, key)?)
    }

    fn keys_below(&self, table: Table, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let _gate = self.gate()?;
        let mut keys = Vec::new();
        for item in self.store.db.iterator_cf(self.store.cf(table.name())?, IteratorMode::Start) {
            let (key, _) = item?;
            if &*key >= end || keys.len() >= limit {
                break;
            }
            keys.push(key.to_vec());
        }
        Ok(keys)
    }
}

impl ChatReader {
    pub fn applied_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let _gate = self.gate()?;
        match self.store.db.get_cf(self.store.cf(CF_SM)?, KEY_APPLIED)? {
            Some(b) => decode(&b),
            None => Ok(None),
        }
    }

    pub fn membership(&self) -> Result<StoredMembership, StoreError> {
        let _gate = self.gate()?;
        match self.store.db.get_cf(self.store.cf(CF_SM)?, KEY_MEMBERSHIP)? {
            Some(b) => decode(&b),
            None => Ok(StoredMembership::default()),
        }
    }

    /// The cluster's feature level as of the applied state (no storage read).
    pub fn feature_level(&self) -> u32 {
        self.store.level.load(Ordering::Acquire).max(format::LEGACY)
    }

    /// Reads the feature level from the state into the copy that
    /// [`ChatReader::feature_level`] serves: at open and after an install.
    pub(super) fn reload_level(&self) -> Result<u32, StoreError> {
        let level = chat::feature_level(self)?;
        self.store.level.store(level, Ordering::Release);
        Ok(level)
    }

    /// A digest of every chat table: equal on two nodes iff their state is equal.
    pub fn digest(&self) -> Result<String, StoreError> {
        Ok(self.applied_digest()?.1)
    }

    /// The applied index and the digest of the chat tables, both read from
    /// one RocksDB snapshot: the state exactly as of that index, even while
    /// apply writes the next batch. Two replicas at the same index must give
    /// the same digest.
    pub fn applied_digest(&self) -> Result<(u64, String), StoreError> {
        let mut d = StateDigest::default();
        let _gate = self.gate()?;
        let snap = self.store.db.snapshot();
        let applied: Option<LogId> = match snap.get_cf(self.store.cf(CF_SM)?, KEY_APPLIED)? {
            Some(b) => decode(&b)?,
            None => None,
        };
        for table in Table::ALL {
            for item in snap.iterator_cf(self.store.cf(table.name())?, IteratorMode::Start) {
                let (key, value) = item?;
                d.add(table, &key, &value);
            }
        }
        Ok((applied.map_or(0, |id| id.index), d.finish()))
    }
}
