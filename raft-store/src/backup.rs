//! Backups, and seeding a data dir from one.
//!
//! A backup is a snapshot of the chat state (the [`crate::snapshot`] file, as
//! it is), preceded by where it came from and followed by a checksum of the
//! whole file:
//!
//! ```text
//! "CHORUSBAK1\n" | header_len u32 LE | header (bincode BackupHeader)
//!              | the snapshot file's bytes | sha256 of every byte before
//! ```
//!
//! The snapshot inside carries its own checksum and feature level, so a backup
//! is verified twice: whole, and record by record.
//!
//! `chorusctl restore` and `chorusctl cluster force-new` leave a backup named
//! [`SEED_FILE`] in an otherwise empty data dir. A `chorusd` starting on it
//! calls [`seed`] before Raft starts: the state is installed as the snapshot of
//! a log that is purged up to the backup's last entry, with this node its one
//! voter, under a new cluster id. The history, the accounts and the token key
//! are the backup's, so tokens issued before stay valid; the new cluster id
//! keeps the old cluster's members (which may still hold the old log) from
//! ever talking to the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::vote::RaftLeaderId;
use openraft::RaftSnapshotBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chat::{self, ClusterRecord, Table};
use crate::codec::{decode, encode};
use crate::db::{synced_write_options, Store, CF_LOG, CF_NODE, CF_RAFT};
use crate::error::StoreError;
use crate::log_store::{self, LogStore};
use crate::snapshot::{SnapshotFile, SnapshotReader, SnapshotWriter};
use crate::state_machine::{self, StateMachine};
use crate::types::{LogId, NodeId, NodeInfo, SnapshotMeta, StoredMembership, Vote};

const MAGIC: &[u8] = b"CHORUSBAK1\n";
const DIGEST_LEN: u64 = 32;
/// A header is a few strings and numbers; anything larger is not a backup.
const MAX_HEADER: u32 = 1 << 20;

/// The backup a restore leaves in a data dir, for `chorusd` to seed from.
pub const SEED_FILE: &str = "restore.chorusbak";
/// Set (synced) while [`seed`] runs; lets a seed that a crash interrupted be
/// redone on a store it already wrote to.
const KEY_SEEDING: &str = "seeding";

/// Where a backup came from and what it holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    /// The cluster the state was taken from.
    pub cluster_id: String,
    /// The last log entry the state includes.
    pub last_log_id: Option<LogId>,
    /// The feature level of the state (and of its snapshot).
    pub level: u32,
    /// When the backup was taken, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Length of the snapshot that follows the header.
    pub snapshot_bytes: u64,
    /// Who took it: "node 2 at 10.0.0.2:9080", "force-new from /var/lib/chorus".
    pub source: String,
}

impl BackupHeader {
    /// The index of the last entry the backup includes.
    pub fn index(&self) -> u64 {
        self.last_log_id.as_ref().map_or(0, |id| id.index)
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Codec(format!("not a usable backup: {what}"))
}

/// Writes a backup as a byte stream: the header first, then the snapshot's
/// bytes, then (from [`BackupStream::finish`]) the checksum.
pub struct BackupStream {
    hash: Sha256,
}

impl BackupStream {
    /// The stream's first bytes: magic, header length and header.
    pub fn start(header: &BackupHeader) -> Result<(Self, Vec<u8>), StoreError> {
        let body = encode(header)?;
        let mut prefix = Vec::with_capacity(MAGIC.len() + 4 + body.len());
        prefix.extend_from_slice(MAGIC);
        let len = u32::try_from(body.len()).map_err(|_| corrupt("header too large"))?;
        prefix.extend_from_slice(&len.to_le_bytes());
        prefix.extend_from_slice(&body);
        let mut hash = Sha256::new();
        hash.update(&prefix);
        Ok((BackupStream { hash }, prefix))
    }

    /// Counts `bytes` (of the snapshot) into the checksum.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
    }

    /// The stream's last bytes: the checksum of everything before.
    pub fn finish(self) -> [u8; 32] {
        self.hash.finalize().into()
    }

    /// The whole stream's length for a header and snapshot of these sizes.
    pub fn total_len(header: &BackupHeader) -> Result<u64, StoreError> {
        Ok(MAGIC.len() as u64 + 4 + encode(header)?.len() as u64 + header.snapshot_bytes + DIGEST_LEN)
    }
}

/// Writes the backup of `snapshot` (a snapshot file) to `path`, synced.
pub fn write_file(path: &Path, header: &BackupHeader, snapshot: &Path) -> Result<(), StoreError> {
    write_file_from(path, header, File::open(snapshot)?)
}

/// [`write_file`] from an open snapshot file, read from its start.
pub fn write_file_from(path: &Path, header: &BackupHeader, mut input: File) -> Result<(), StoreError> {
    let (mut stream, prefix) = BackupStream::start(header)?;
    let mut out = BufWriter::new(create_private(path)?);
    out.write_all(&prefix)?;
    input.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.write_all(&stream.finish())?;
    out.into_inner().map_err(|e| StoreError::Io(e.into_error()))?.sync_all()?;
    Ok(())
}

/// Creates (or truncates) `path` readable and writable by its owner only: a
/// backup holds every password hash and the token-signing key.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// Reads a backup's header after checking the whole file's checksum and the
/// snapshot inside it, record by record.
pub fn verify(path: &Path) -> Result<BackupHeader, StoreError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < MAGIC.len() as u64 + 4 + DIGEST_LEN {
        return Err(corrupt("too short"));
    }
    let mut hash = Sha256::new();
    let mut rest = len - DIGEST_LEN;
    let mut input = BufReader::with_capacity(1 << 20, &mut file);
    let mut buf = vec![0u8; 1 << 20];
    while rest > 0 {
        let want = rest.min(buf.len() as u64) as usize;
        input.read_exact(&mut buf[..want])?;
        hash.update(&buf[..want]);
        rest -= want as u64;
    }
    let mut digest = [0u8; 32];
    input.read_exact(&mut digest)?;
    drop(input);
    if hash.finalize().as_slice() != digest {
        return Err(corrupt("checksum mismatch (the file is damaged or incomplete)"));
    }
    let (header, offset) = read_header(&mut file)?;
    if offset + header.snapshot_bytes + DIGEST_LEN != len {
        return Err(corrupt("the snapshot's length does not match the file's"));
    }
    let mut snapshot = SnapshotReader::new(BufReader::new(file.take(header.snapshot_bytes)))
        .map_err(|e| corrupt(format!("the snapshot inside: {e}")))?;
    if snapshot.level() != header.level {
        return Err(corrupt("the header's feature level is not the snapshot's"));
    }
    while snapshot.next_record().map_err(|e| corrupt(format!("the snapshot inside: {e}")))?.is_some() {}
    Ok(header)
}

/// Reads the header from the start of `file`; returns it and where the
/// snapshot begins.
fn read_header(file: &mut File) -> Result<(BackupHeader, u64), StoreError> {
    file.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; MAGIC.len()];
    file.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(corrupt("not a Chorus backup (bad magic)"));
    }
    let mut len = [0u8; 4];
    file.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(corrupt("header too large"));
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact(&mut body)?;
    Ok((decode(&body)?, MAGIC.len() as u64 + 4 + u64::from(len)))
}

/// The backup a restore left in `dir` for `chorusd` to seed from, if any.
pub fn pending_seed(dir: &Path) -> Option<PathBuf> {
    let path = dir.join(SEED_FILE);
    path.is_file().then_some(path)
}

/// Whether the store holds no Raft state at all: no vote, no log, nothing
/// applied.
fn is_empty(store: &Store) -> Result<bool, StoreError> {
    let raft = store.cf(CF_RAFT)?;
    let empty_raft = store.db.iterator_cf(raft, rocksdb::IteratorMode::Start).next().is_none();
    let empty_log = store.db.iterator_cf(store.cf(CF_LOG)?, rocksdb::IteratorMode::Start).next().is_none();
    let applied = crate::state_machine::ChatReader::of(store).applied_log_id()?;
    Ok(empty_raft && empty_log && applied.is_none())
}

/// Makes `store` hold the backup at `backup` as a cluster of one voter, `me`
/// at `info`, named `cluster_id` (see the module docs). Refuses a store that
/// already holds Raft state, unless an earlier seed of it was interrupted.
/// Everything is synced before this returns; [`finish_seed`] then removes the
/// backup.
pub fn seed(store: &Store, backup: &Path, me: NodeId, info: &NodeInfo, cluster_id: &str) -> Result<BackupHeader, StoreError> {
    let redo = store.node_get(KEY_SEEDING)?.is_some();
    if !redo && !is_empty(store)? {
        return Err(StoreError::Codec(format!(
            "{} holds a node's data and a backup to restore ({}): restore into an empty data dir, or move the backup away to start on the data",
            store.dir.display(),
            backup.display()
        )));
    }
    let header = verify(backup)?;
    let last = header.last_log_id.ok_or_else(|| corrupt("it holds no state (taken before the cluster's first entry)"))?;
    let wo = synced_write_options();
    store.db.put_cf_opt(store.cf(CF_NODE)?, KEY_SEEDING, b"1", &wo)?;

    // The snapshot, with the cluster record renamed. Written into the
    // snapshot dir so the install moves it into place.
    let tmp = store.snapshot_dir().join("seed.tmp");
    rename_cluster(backup, &header, &tmp, cluster_id)?;
    let membership = openraft::Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, info.clone())]))
        .map_err(|e| StoreError::Codec(e.to_string()))?;
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
    };
    state_machine::install_seed(store, &meta, SnapshotFile::open(tmp)?)?;

    // The log: purged up to the snapshot, committed there, and a vote in the
    // snapshot's term, so this node's first election is in a later term than
    // every entry it holds.
    let term = last.committed_leader_id().term();
    let mut batch = rocksdb::WriteBatch::default();
    let raft = store.cf(CF_RAFT)?;
    batch.put_cf(raft, log_store::KEY_PURGED, encode(&last)?);
    batch.put_cf(raft, log_store::KEY_COMMITTED, encode(&Some(last))?);
    batch.put_cf(raft, log_store::KEY_VOTE, encode(&Vote::new(term, me))?);
    store.db.write_opt(batch, &wo)?;
    Ok(header)
}

/// Removes the backup a finished [`seed`] came from, then the mark that a
/// seed is under way (in that order: a crash between the two leaves a mark
/// that nothing reads).
pub fn finish_seed(store: &Store, backup: &Path) -> Result<(), StoreError> {
    std::fs::remove_file(backup)?;
    if let Some(dir) = backup.parent() {
        File::open(dir)?.sync_all()?;
    }
    store.db.delete_cf_opt(store.cf(CF_NODE)?, KEY_SEEDING, &synced_write_options())?;
    Ok(())
}

/// Copies the snapshot inside `backup` to `dest`, with the cluster record's id
/// replaced by `cluster_id` (the token key is kept).
fn rename_cluster(backup: &Path, header: &BackupHeader, dest: &Path, cluster_id: &str) -> Result<(), StoreError> {
    let mut file = File::open(backup)?;
    let (_, offset) = read_header(&mut file)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = SnapshotReader::new(BufReader::new(file.take(header.snapshot_bytes)))?;
    let mut writer = SnapshotWriter::create(dest, reader.level())?;
    let mut renamed = false;
    while let Some((table, key, value)) = reader.next_record()? {
        if table == Table::Meta && key == chat::META_CLUSTER {
            let mut record: ClusterRecord = decode(&value)?;
            record.cluster_id = cluster_id.to_string();
            writer.record(table, &key, &encode(&record)?)?;
            renamed = true;
        } else {
            writer.record(table, &key, &value)?;
        }
    }
    if !renamed {
        return Err(corrupt("it holds no cluster record"));
    }
    writer.finish()?;
    Ok(())
}

/// The last entry the store's log holds (committed or not), or the last one
/// its snapshot covers when the log is empty.
pub async fn log_end(store: &Store) -> Result<Option<LogId>, StoreError> {
    let state = LogStore::new(store.clone())?.get_log_state().await?;
    let applied = state_machine::ChatReader::of(store).applied_log_id()?;
    Ok(state.last_log_id.max(applied))
}

/// For `chorusctl cluster force-new`, on a stopped node's store: applies every
/// entry its log holds beyond the applied state (committed or not: whether
/// the lost majority committed the tail cannot be known, and keeping it loses
/// nothing a client was told was written), builds a snapshot of the result,
/// and writes it as a backup to `dest`.
pub async fn export_all(store: &Store, dest: &Path, source: &str) -> Result<BackupHeader, StoreError> {
    let log = LogStore::new(store.clone())?;
    let applied = state_machine::ChatReader::of(store).applied_log_id()?;
    let from = applied.as_ref().map_or(0, |id| id.index + 1);
    let tail = log.read_range(from, None)?;
    let mut sm = StateMachine::open(store.clone())?;
    if !tail.is_empty() {
        tracing::info!(entries = tail.len(), from, "applying the log's unapplied tail");
        sm.apply(futures::stream::iter(tail.into_iter().map(|e| Ok((e, None))))).await?;
    }
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
    let level = SnapshotReader::new(File::open(&snapshot.snapshot.path)?)?.level();
    let cluster_id = match store.node_get(crate::db::NODE_CLUSTER_ID)? {
        Some(bytes) => String::from_utf8(bytes).map_err(|e| StoreError::Codec(e.to_string()))?,
        None => String::new(),
    };
    let header = BackupHeader {
        cluster_id,
        last_log_id: snapshot.meta.last_log_id,
        level,
        created_ms: now_ms(),
        snapshot_bytes: snapshot.snapshot.file.metadata()?.len(),
        source: source.to_string(),
    };
    write_file(dest, &header, &snapshot.snapshot.path)?;
    Ok(header)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::UserRecord;
    use crate::read::ChatRead;

    fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
        LogId::new(RaftLeaderId::new(term, node), index)
    }

    /// A backup of a state holding a cluster record and one user, at index 40
    /// of term 3 (leader 2).
    fn sample(dir: &Path) -> PathBuf {
        let snap = dir.join("s.snap");
        let mut w = SnapshotWriter::create(&snap, crate::format::CURRENT).unwrap();
        let cluster = ClusterRecord { cluster_id: "old".into(), signing_key: vec![7; 32] };
        w.record(Table::Meta, chat::META_CLUSTER, &encode(&cluster).unwrap()).unwrap();
        w.record(Table::Users, b"ann", &encode(&UserRecord { password_hash: "h".into() }).unwrap()).unwrap();
        w.finish().unwrap();
        let header = BackupHeader {
            cluster_id: "old".into(),
            last_log_id: Some(log_id(3, 2, 40)),
            level: crate::format::CURRENT,
            created_ms: 1,
            snapshot_bytes: std::fs::metadata(&snap).unwrap().len(),
            source: "test".into(),
        };
        let path = dir.join("b.bak");
        write_file(&path, &header, &snap).unwrap();
        assert_eq!(BackupStream::total_len(&header).unwrap(), std::fs::metadata(&path).unwrap().len());
        path
    }

    #[test]
    fn a_backup_verifies_and_any_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let h = verify(&path).unwrap();
        assert_eq!((h.cluster_id.as_str(), h.index()), ("old", 40));
        let bytes = std::fs::read(&path).unwrap();
        for at in [0, 12, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(verify(&path).is_err(), "a flip at byte {at} passed");
        }
        std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        let e = verify(&path).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn a_seed_makes_a_one_voter_cluster_under_the_new_id_and_refuses_a_used_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let store = crate::open(&dir.path().join("data")).unwrap();
        let info = NodeInfo { raft_addr: "127.0.0.1:1".into(), client_url: "http://127.0.0.1:2".into() };
        seed(&store, &path, 5, &info, "new").unwrap();
        finish_seed(&store, &path).unwrap();
        assert!(!path.exists());
        let reader = state_machine::ChatReader::of(&store);
        assert_eq!(reader.applied_log_id().unwrap(), Some(log_id(3, 2, 40)));
        let members = reader.membership().unwrap();
        assert_eq!(members.membership().voter_ids().collect::<Vec<_>>(), vec![5]);
        let cluster = reader.cluster().unwrap().unwrap();
        assert_eq!((cluster.cluster_id.as_str(), cluster.signing_key.as_slice()), ("new", [7u8; 32].as_slice()));
        assert!(reader.user("ann").unwrap().is_some());
        let vote: Vote = decode(&store.db.get_cf(store.cf(CF_RAFT).unwrap(), log_store::KEY_VOTE).unwrap().unwrap()).unwrap();
        assert_eq!(vote, Vote::new(3, 5));

        // The store now holds a node's data: a second backup is refused.
        let again = sample(dir.path());
        let e = seed(&store, &again, 5, &info, "other").unwrap_err().to_string();
        assert!(e.contains("holds a node's data"), "{e}");
    }
}
