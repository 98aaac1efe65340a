//! The Raft log and vote in RocksDB.
//!
//! # Durability
//!
//! - `save_vote` writes with `sync = true` and returns only after the fsync.
//! - `append` writes the entries to RocksDB at once (so they are readable for
//!   replication) and hands the completion callback to the [`WalSyncer`] thread,
//!   which fsyncs the write-ahead log and only then calls back. openraft counts an
//!   entry towards a quorum, or acknowledges it to a leader, only after that
//!   callback: nothing is acknowledged that is not on disk. Appends that arrive
//!   while a sync is in flight share the next sync (group commit).
//! - `truncate_after` and `purge` are not synced on their own: a lost truncation
//!   leaves uncommitted entries that the leader truncates again, and a lost purge
//!   leaves entries the snapshot already covers. The next synced write makes both
//!   durable, since the WAL is sequential.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::codec::{decode, encode};
use crate::db::{synced_write_options, Store, CF_LOG, CF_RAFT};
use crate::error::StoreError;
use crate::stages::{Stage, WriteStages};
use crate::types::{Entry, LogId, TypeConfig, Vote};

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_PURGED: &[u8] = b"last_purged";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Codec("log key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The RocksDB-backed Raft log store.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    syncer: Arc<WalSyncer>,
    stages: Arc<WriteStages>,
}

impl LogStore {
    /// Fails only if the WAL sync thread cannot be started.
    pub fn new(store: Store) -> Result<Self, StoreError> {
        Self::with_wal_sync(store, WriteStages::off(), WalSync::Fsync)
    }

    /// A log store that times its appends and syncs into `stages`, with the
    /// WAL sync chosen: only the fault-injection suite's proof that its
    /// power-loss nemesis bites asks for [`WalSync::SkipUnsafe`].
    pub fn with_wal_sync(store: Store, stages: Arc<WriteStages>, sync: WalSync) -> Result<Self, StoreError> {
        let syncer = Arc::new(WalSyncer::start(store.clone(), stages.clone(), sync)?);
        Ok(LogStore { store, syncer, stages })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.store.db.get_cf(self.store.cf(CF_RAFT)?, key)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let cf = self.store.cf(CF_LOG)?;
        match self.store.db.iterator_cf(cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item?;
                let entry: Entry = decode(&value)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let cf = self.store.cf(CF_LOG)?;
        let from = index_key(start);
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item?;
            let index = index_of(&key)?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            out.push(decode(&value)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e + 1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        Ok(self.read_range(start, end)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.get_meta(KEY_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // Synced: a vote forgotten in a crash could let this node vote twice in a term.
        let cf = self.store.cf(CF_RAFT)?;
        self.store.db.put_cf_opt(cf, KEY_VOTE, encode(vote)?, &synced_write_options()).map_err(StoreError::from)?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: it only lets a restart re-apply sooner; losing it is safe.
        let cf = self.store.cf(CF_RAFT)?;
        self.store.db.put_cf(cf, KEY_COMMITTED, encode(&committed)?).map_err(StoreError::from)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let began = Instant::now();
        let cf = self.store.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut last = None;
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode(&entry)?);
            last = Some(entry.log_id.index);
        }
        // Written now, readable now; durable once the syncer calls back.
        self.store.db.write(batch).map_err(StoreError::from)?;
        let written = Instant::now();
        if let Some(last) = last {
            self.stages.appended(last, began, written);
        }
        self.syncer.sync_then(callback, written);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let cf = self.store.cf(CF_LOG)?;
        self.store.db.delete_range_cf(cf, index_key(from), index_key(u64::MAX)).map_err(StoreError::from)?;
        // delete_range's end is exclusive; u64::MAX is never a real index.
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(CF_RAFT)?, KEY_PURGED, encode(&log_id)?);
        batch.delete_range_cf(self.store.cf(CF_LOG)?, index_key(0), index_key(log_id.index + 1));
        self.store.db.write(batch).map_err(StoreError::from)?;
        Ok(())
    }
}

/// Whether an append waits for an fsync of the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    /// Appends complete once the WAL is fsynced: what Raft needs.
    Fsync,
    /// Appends complete once the WAL is written to the OS, not synced. A
    /// power loss can then lose acknowledged entries; this exists only so the
    /// fault-injection suite can show that its power-loss nemesis catches that.
    SkipUnsafe,
}

/// A thread that fsyncs RocksDB's write-ahead log and then completes the append
/// callbacks that were waiting for it, in order.
pub struct WalSyncer {
    tx: std::sync::Mutex<Option<mpsc::Sender<Waiting>>>,
}

/// An append's completion, and when its write was made.
type Waiting = (IOFlushed<TypeConfig>, Instant);

impl WalSyncer {
    fn start(store: Store, stages: Arc<WriteStages>, sync: WalSync) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Waiting>();
        std::thread::Builder::new()
            .name("chorus-wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    // One fsync covers every write made before it.
                    let began = Instant::now();
                    let result = store.db.flush_wal(sync == WalSync::Fsync);
                    let synced = Instant::now();
                    stages.observe(Stage::Fsync, synced - began);
                    for (callback, written) in waiting {
                        stages.observe(Stage::Sync, synced.saturating_duration_since(written));
                        let r = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::other(e.to_string())),
                        };
                        callback.io_completed(r);
                    }
                }
            })
            .map_err(|e| StoreError::Io(io::Error::other(format!("cannot start the WAL sync thread: {e}"))))?;
        Ok(WalSyncer { tx: std::sync::Mutex::new(Some(tx)) })
    }

    fn sync_then(&self, callback: IOFlushed<TypeConfig>, written: Instant) {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError((callback, _))) = tx.send((callback, written)) {
                    callback.io_completed(Err(io::Error::other("WAL sync thread stopped")));
                }
            }
            None => callback.io_completed(Err(io::Error::other("log store closed"))),
        }
    }
}
