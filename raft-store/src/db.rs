//! The node's one RocksDB instance and its column families.
//!
//! The Raft log, the vote, the state machine and node-local facts share one
//! database, and therefore one write-ahead log. That ordering is what makes the
//! unsynced state-machine writes safe: a state-machine batch is written after the
//! log entries it applies, so any WAL prefix that survives a crash and holds the
//! batch also holds those entries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteOptions, DB};

use crate::chat::Table;
use crate::error::StoreError;

/// Raft log entries, keyed by big-endian index.
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, committed, last purged.
pub const CF_RAFT: &str = "raft";
/// State machine metadata: last applied, membership, current snapshot.
pub const CF_SM: &str = "sm";
/// Facts about this node that are not replicated: the cluster it belongs to.
pub const CF_NODE: &str = "node";

fn all_cfs() -> Vec<&'static str> {
    let mut cfs = vec![CF_LOG, CF_RAFT, CF_SM, CF_NODE];
    cfs.extend(Table::ALL.iter().map(|t| t.name()));
    cfs
}

/// Options for a synced write: the write is in the RocksDB write-ahead log and
/// fsynced to disk before the call returns, so once it returns the write
/// survives a crash of the process or of the machine. Writes made with the
/// default options are in the WAL but not yet fsynced when the call returns.
pub(crate) fn synced_write_options() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// The `CF_NODE` key of the cluster id this node belongs to.
pub const NODE_CLUSTER_ID: &str = "cluster_id";

/// A handle to the open database, shared by the log store and the state machine.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    pub(crate) dir: PathBuf,
    /// Held for writing while a snapshot install wipes and reloads the chat
    /// tables, and for reading by every read of them, so no reader ever sees
    /// the tables half-replaced.
    pub(crate) install_gate: Arc<std::sync::RwLock<()>>,
    /// The cluster's feature level as of the applied state: a copy of the
    /// `Meta` record kept in step by the state machine, read by the proposer
    /// for every batch.
    pub(crate) level: Arc<std::sync::atomic::AtomicU32>,
    /// Set once this node's Raft has stopped on an error: from then on every
    /// read of the chat state is refused, because the state may be behind or
    /// half-applied and nothing will bring it forward.
    pub(crate) failed: Arc<std::sync::OnceLock<String>>,
}

/// The write-ahead log kept before old WAL files are forced out by flushes.
const MAX_TOTAL_WAL: u64 = 64 << 20;

/// Opens (or creates) the database under `dir`.
pub fn open(dir: &Path) -> Result<Store, StoreError> {
    std::fs::create_dir_all(dir)?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // A record torn at the end of the write-ahead log was being written when the
    // node died, so it was never synced and never acknowledged: recovery drops
    // it. Corruption anywhere before the end may be a synced entry or vote, and
    // the default (point-in-time recovery) would silently truncate the log
    // there; this mode refuses to open instead, with RocksDB's error naming
    // the file. (Absolute consistency would also refuse a torn tail, which any
    // crash mid-write can leave.)
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_paranoid_checks(true);
    // Keep memory modest: many small nodes run on one machine in tests.
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_background_jobs(2);
    // A WAL file is deleted only once every column family with writes in it
    // has flushed them; the small families (vote, node identity) would keep
    // every WAL alive up to RocksDB's default bound of four times all write
    // buffers, hundreds of MiB that a restart after a crash replays. Past
    // this total, RocksDB flushes the families holding the oldest WAL, so a
    // restart replays at most about this much.
    opts.set_max_total_wal_size(MAX_TOTAL_WAL);
    let cfs = all_cfs().into_iter().map(|name| {
        let mut cf = Options::default();
        cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
        cf.set_write_buffer_size(16 << 20);
        // Applying a message looks up keys that mostly do not exist yet (its
        // dedup record) or sit among many others (its room's members). Bloom
        // filters over whole keys, in the memtable and in every table file,
        // answer those without walking the skiplist or reading blocks.
        cf.set_memtable_whole_key_filtering(true);
        cf.set_memtable_prefix_bloom_ratio(0.1);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        cf.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(name, cf)
    });
    let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs).map_err(|e| match e.kind() {
        rocksdb::ErrorKind::Corruption => StoreError::Damaged(format!("{e}{}", damaged_files(&dir.join("db")))),
        _ => StoreError::Rocks(e),
    })?;
    std::fs::create_dir_all(dir.join("snapshots"))?;
    Ok(Store { db: Arc::new(db), dir: dir.to_path_buf(), install_gate: Arc::default(), level: Arc::default(), failed: Arc::default() })
}

/// What RocksDB's own log (`db/LOG`) says of the damage it found at open: its
/// error names no file, but the log line before it does ("…/000004.log:
/// dropping 5257 bytes; Corruption: checksum mismatch").
fn damaged_files(db_dir: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(db_dir.join("LOG")) else { return String::new() };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Corruption") && !l.contains("EVENT_LOG") && !l.contains("DB::Open() failed"))
        .map(|l| l.rsplit_once("] ").map_or(l, |(_, rest)| rest))
        .collect();
    match lines.last() {
        Some(last) => format!(" ({last})"),
        None => String::new(),
    }
}

impl Store {
    /// Stops RocksDB's background work: cancels its periodic tasks, flushes
    /// the memtables, and waits for any flush or compaction under way. For a
    /// node that is going away: a process that exits while such work runs can
    /// abort in RocksDB ("pthread lock: Invalid argument") as its static
    /// objects are torn down under it. The store must not be written after.
    pub fn stop_background_work(&self) {
        // RocksDB does not flush on close when every write went through the WAL;
        // flushing here leaves a short WAL to replay at the next start. A
        // failure only means a longer replay.
        for name in all_cfs() {
            if let Some(cf) = self.db.cf_handle(name) {
                if let Err(e) = self.db.flush_cf(cf) {
                    tracing::warn!(cf = name, error = %e, "flush at shutdown failed; the next start replays the WAL");
                }
            }
        }
        self.db.cancel_all_background_work(true);
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or(StoreError::MissingColumnFamily(name))
    }

    /// Marks the store failed (the node's Raft stopped on `why`): every later
    /// read through a [`crate::state_machine::ChatReader`] is refused with it.
    pub fn fail(&self, why: String) {
        let _ = self.failed.set(why);
    }

    /// Why the store was marked failed, if it was.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// The data dir the store lives in.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Reads a node-local fact.
    pub fn node_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_NODE)?, key)?)
    }

    /// Writes a node-local fact, synced: these are identities (cluster id) that
    /// must not be forgotten after a crash.
    pub fn node_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.put_cf_opt(self.cf(CF_NODE)?, key, value, &synced_write_options())?;
        Ok(())
    }
}
