//! Building and installing snapshots of the state machine, and the pointer to
//! the current snapshot (`KEY_SNAPSHOT` in the `sm` column family).
//!
//! Invariants: a snapshot file is in the snapshot dir, and the dir synced,
//! before the pointer names it, and the pointer is written synced.
//! While Raft runs, builds and installs update the pointer under the state
//! machine's snapshot lock, so an older build never replaces a newer install.
//! An install writes the synced `installing` marker before it wipes the chat
//! tables and removes it only in its final, synced batch, so a restart can
//! finish an install a crash interrupted (`load_snapshot` is idempotent).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::RaftSnapshotBuilder;
use rocksdb::{IteratorMode, WriteBatch};

use super::{KEY_APPLIED, KEY_INSTALLING, KEY_MEMBERSHIP, KEY_SNAPSHOT};
use crate::chat::{self, Table};
use crate::codec::{decode, encode};
use crate::db::{synced_write_options, Store, CF_SM};
use crate::error::StoreError;
use crate::format;
use crate::snapshot::{self, SnapshotFile, SnapshotReader, SnapshotWriter};
use crate::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// Bytes of records per write batch while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Every chat key sorts below this (keys start with a name byte, a length byte
/// or a big-endian millisecond clock), so `[]..END_OF_KEYS` covers a table.
const END_OF_KEYS: [u8; 32] = [0xFF; 32];

pub(super) fn current_snapshot(store: &Store) -> Result<Option<(SnapshotMeta, String)>, StoreError> {
    match store.db.get_cf(store.cf(CF_SM)?, KEY_SNAPSHOT)? {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

fn snapshot_name(meta: &SnapshotMeta) -> String {
    let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("snap-{index:020}-{nanos}.snap")
}

/// Removes every snapshot file but `keep` (and files still being received).
fn remove_other_snapshots(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name != keep && !name.ends_with(".recv") {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, error = %e, "cannot remove an old snapshot");
            }
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Installs a snapshot into a store whose Raft has not started (seeding a data
/// dir from a backup: see [`crate::backup`]).
pub(crate) fn install_seed(store: &Store, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), StoreError> {
    install_blocking(store, meta, snapshot)
}

pub(super) fn install_blocking(store: &Store, meta: &SnapshotMeta, mut snapshot: SnapshotFile) -> Result<(), StoreError> {
    let dir = store.snapshot_dir();
    let name = snapshot_name(meta);
    let dest = dir.join(&name);
    // A snapshot received over the network already sits in our directory and is
    // moved; one from elsewhere (another store, in tests) is copied.
    if snapshot.path.parent() == Some(dir.as_path()) {
        std::fs::rename(&snapshot.path, &dest)?;
    } else {
        let mut out = std::fs::File::create(&dest)?;
        io::Seek::seek(&mut snapshot.file, io::SeekFrom::Start(0))?;
        io::copy(&mut snapshot.file, &mut out)?;
        out.sync_all()?;
    }
    sync_dir(&dir)?;
    snapshot::verify(&dest)?;

    store.db.put_cf_opt(store.cf(CF_SM)?, KEY_INSTALLING, encode(&(meta, &name))?, &synced_write_options())?;
    // Readers wait out the wipe and reload; they see the old state or the new.
    let _gate = store.install_gate.write().unwrap_or_else(|p| p.into_inner());
    load_snapshot(store, meta, &name)
}

/// Replaces the chat tables with a snapshot's records. Idempotent, so that a
/// restart can redo an install a crash interrupted (the `installing` marker is
/// removed only in the final, synced batch).
pub(super) fn load_snapshot(store: &Store, meta: &SnapshotMeta, name: &str) -> Result<(), StoreError> {
    let path = store.snapshot_dir().join(name);
    let mut wipe = WriteBatch::default();
    for table in Table::ALL {
        wipe.delete_range_cf(store.cf(table.name())?, [].as_slice(), END_OF_KEYS.as_slice());
    }
    store.db.write(wipe)?;

    let mut reader = SnapshotReader::new(std::fs::File::open(&path)?)?;
    let mut batch = WriteBatch::default();
    while let Some((table, key, value)) = reader.next_record()? {
        batch.put_cf(store.cf(table.name())?, &key, &value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            store.db.write(std::mem::take(&mut batch))?;
        }
    }
    let sm = store.cf(CF_SM)?;
    batch.put_cf(sm, KEY_APPLIED, encode(&meta.last_log_id)?);
    batch.put_cf(sm, KEY_MEMBERSHIP, encode(&meta.last_membership)?);
    batch.put_cf(sm, KEY_SNAPSHOT, encode(&(meta, name))?);
    batch.delete_cf(sm, KEY_INSTALLING);
    store.db.write_opt(batch, &synced_write_options())?;
    remove_other_snapshots(&store.snapshot_dir(), name);
    Ok(())
}

/// Builds snapshots from a RocksDB point-in-time view while apply continues.
pub struct SnapshotBuilder {
    pub(super) store: Store,
    /// The state machine's snapshot lock, held while the pointer is updated.
    pub(super) lock: Arc<Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let store = self.store.clone();
        let lock = self.lock.clone();
        let snapshot = tokio::task::spawn_blocking(move || build_blocking(&store, &lock))
            .await
            .map_err(io::Error::other)??;
        Ok(snapshot)
    }
}

fn build_blocking(store: &Store, lock: &Mutex<()>) -> Result<Snapshot, StoreError> {
    let view = store.db.snapshot();
    let sm = store.cf(CF_SM)?;
    let last_log_id: Option<LogId> = match view.get_cf(sm, KEY_APPLIED)? {
        Some(b) => decode(&b)?,
        None => None,
    };
    let last_membership: StoredMembership = match view.get_cf(sm, KEY_MEMBERSHIP)? {
        Some(b) => decode(&b)?,
        None => StoredMembership::default(),
    };
    // The snapshot is written at the level of the state it holds.
    let level: u32 = match view.get_cf(store.cf(Table::Meta.name())?, chat::META_LEVEL)? {
        Some(b) => decode(&b)?,
        None => format::LEGACY,
    };
    let meta = SnapshotMeta { last_log_id, last_membership };
    let dir = store.snapshot_dir();
    let name = snapshot_name(&meta);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut writer = SnapshotWriter::create(&tmp, level)?;
    for table in Table::ALL {
        for item in view.iterator_cf(store.cf(table.name())?, IteratorMode::Start) {
            let (key, value) = item?;
            writer.record(table, &key, &value)?;
        }
    }
    writer.finish()?;
    drop(view);

    let path: PathBuf = dir.join(&name);
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((current, _)) = current_snapshot(store)? {
        if current.last_log_id > meta.last_log_id {
            // An install overtook this build; keep the newer snapshot.
            std::fs::remove_file(&tmp)?;
            let (meta, name) = current_snapshot(store)?.ok_or(StoreError::Codec("snapshot vanished".into()))?;
            return Ok(Snapshot { meta, snapshot: SnapshotFile::open(dir.join(name))? });
        }
    }
    std::fs::rename(&tmp, &path)?;
    sync_dir(&dir)?;
    store.db.put_cf_opt(sm, KEY_SNAPSHOT, encode(&(&meta, &name))?, &synced_write_options())?;
    remove_other_snapshots(&dir, &name);
    Ok(Snapshot { meta, snapshot: SnapshotFile::open(path)? })
}
