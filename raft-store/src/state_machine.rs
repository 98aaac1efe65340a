//! The event-sourced state machine, persisted in RocksDB.
//!
//! Applying a run of entries builds one `WriteBatch` holding every table change
//! and the new last-applied log id, and writes it atomically: after a restart the
//! state and the applied index always agree, and the node serves at once without
//! replaying the log. These writes are not synced on their own (see [`crate::db`]
//! for why that is safe); answers go to proposers only after the batch is written,
//! so a client that is acknowledged can read its write on this node.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use tokio::sync::{broadcast, watch};

use crate::chat::{self, Message, Outcome, RoomRecord, StateDigest, Table, Tables, TablesRead, UserRecord};
use crate::codec::{decode, encode};
use crate::db::{Store, CF_SM};
use crate::error::StoreError;
use crate::format;
use crate::snapshot::{self, SnapshotFile, SnapshotReader, SnapshotWriter};
use crate::types::{LogId, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The current snapshot: its meta and file name.
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Present while a snapshot install is under way; a restart finishes it.
const KEY_INSTALLING: &[u8] = b"installing";

/// Entries applied per write batch; bounds the memory of one batch.
const APPLY_BATCH: usize = 1024;
/// Bytes of records per write batch while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Every chat key sorts below this (keys start with a name byte, a length byte
/// or a big-endian millisecond clock), so `[]..END_OF_KEYS` covers a table.
const END_OF_KEYS: [u8; 32] = [0xFF; 32];

/// What the state machine tells this node's delivery plane.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A message was stored.
    Message(Arc<Message>),
    /// A snapshot replaced the state: subscribers must re-read from storage, as
    /// messages may have arrived that were never delivered one by one.
    Reset,
}

/// The state machine openraft drives. Cheap to clone handles are given out with
/// [`StateMachine::reader`] and [`StateMachine::deliveries`].
pub struct StateMachine {
    store: Store,
    deliveries: broadcast::Sender<Delivery>,
    applied: watch::Sender<u64>,
    /// Serialises updates of the current-snapshot pointer between the builder
    /// task and installs, so an older build never replaces a newer install.
    snapshot_lock: Arc<Mutex<()>>,
}

impl StateMachine {
    /// Opens the state machine over `store`, finishing a snapshot install that a
    /// crash interrupted.
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let sm_cf = store.cf(CF_SM)?;
        if let Some(bytes) = store.db.get_cf(sm_cf, KEY_INSTALLING)? {
            let (meta, name): (SnapshotMeta, String) = decode(&bytes)?;
            tracing::warn!(snapshot = %name, "finishing an interrupted snapshot install");
            load_snapshot(&store, &meta, &name)?;
        }
        // The current snapshot is what a lagging follower will be sent and what a
        // restart after an interrupted install reloads: a damaged one is found
        // now, by name, not when a peer needs it.
        if let Some((_, name)) = current_snapshot(&store)? {
            let path = store.snapshot_dir().join(&name);
            snapshot::verify(&path).map_err(|e| StoreError::Damaged(format!("snapshot {}: {e}", path.display())))?;
        }
        let reader = ChatReader { store: store.clone() };
        let applied_index = reader.applied_log_id()?.map_or(0, |id| id.index);
        reader.reload_level()?;
        let (deliveries, _) = broadcast::channel(8192);
        Ok(StateMachine {
            store,
            deliveries,
            applied: watch::Sender::new(applied_index),
            snapshot_lock: Arc::new(Mutex::new(())),
        })
    }

    pub fn reader(&self) -> ChatReader {
        ChatReader { store: self.store.clone() }
    }

    /// Subscribes to deliveries; a receiver that lags is told so by `broadcast`.
    pub fn deliveries(&self) -> broadcast::Sender<Delivery> {
        self.deliveries.clone()
    }

    /// The applied index, updated after each batch is written.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

/// The writes of one apply batch. Reads see the batch's own writes first; each
/// key is written to RocksDB once, with its final value, when the batch
/// commits. A batch of messages to one room rewrites the clock and the room
/// record once per message, so this saves most of the memtable inserts.
struct Txn<'a> {
    store: &'a Store,
    overlay: BTreeMap<Table, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'a> Txn<'a> {
    fn new(store: &'a Store) -> Self {
        Txn { store, overlay: BTreeMap::new() }
    }

    fn pending(&self, table: Table, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.overlay.get(&table).and_then(|t| t.get(key))
    }

    /// The batch's final writes, in key order.
    fn into_batch(self) -> Result<WriteBatch, StoreError> {
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

type Responder = openraft::storage::ApplyResponder<TypeConfig>;

impl StateMachine {
    /// Writes one batch, then answers its proposers and tells subscribers.
    fn commit(
        &self,
        txn: Txn<'_>,
        last: &Option<LogId>,
        membership: Option<&StoredMembership>,
        replies: &mut Vec<(Responder, Response)>,
        delivered: &mut Vec<Message>,
        level: Option<u32>,
    ) -> Result<(), StoreError> {
        let sm = self.store.cf(CF_SM)?;
        let mut batch = txn.into_batch()?;
        batch.put_cf(sm, KEY_APPLIED, encode(last)?);
        if let Some(m) = membership {
            batch.put_cf(sm, KEY_MEMBERSHIP, encode(m)?);
        }
        self.store.db.write(batch)?;
        if let Some(level) = level {
            self.store.level.store(level, Ordering::Release);
        }
        if let Some(id) = last {
            self.applied.send_replace(id.index);
        }
        for message in delivered.drain(..) {
            // No receiver is not an error: nobody is subscribed on this node.
            let _ = self.deliveries.send(Delivery::Message(Arc::new(message)));
        }
        for (responder, response) in replies.drain(..) {
            responder.send(response);
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let reader = self.reader();
        Ok((reader.applied_log_id()?, reader.membership()?))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + openraft::OptionalSend,
    {
        let store = self.store.clone();
        let mut txn = Txn::new(&store);
        let mut last: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        let mut replies = Vec::new();
        let mut delivered = Vec::new();
        // A feature level raised in this run of entries, published once written.
        let mut level = None;
        let mut in_batch = 0;

        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            last = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    Response::default()
                }
                EntryPayload::Normal(batch) => {
                    let mut outcomes = Vec::with_capacity(batch.commands.len());
                    for cmd in &batch.commands {
                        let applied = chat::apply(&mut txn, cmd)?;
                        if let Outcome::LevelRaised { level: l } = applied.outcome {
                            level = Some(l);
                        }
                        outcomes.push(applied.outcome);
                        delivered.extend(applied.delivery);
                    }
                    Response { outcomes }
                }
            };
            if let Some(r) = responder {
                replies.push((r, response));
            }
            in_batch += 1;
            if in_batch >= APPLY_BATCH {
                let full = std::mem::replace(&mut txn, Txn::new(&store));
                self.commit(full, &last, membership.take().as_ref(), &mut replies, &mut delivered, level.take())?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.commit(txn, &last, membership.as_ref(), &mut replies, &mut delivered, level)?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { store: self.store.clone(), lock: self.snapshot_lock.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let store = self.store.clone();
        let lock = self.snapshot_lock.clone();
        let meta = meta.clone();
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            install_blocking(&store, &meta, snapshot)
        })
        .await
        .map_err(io::Error::other)??;
        self.reader().reload_level()?;
        self.applied.send_replace(index);
        let _ = self.deliveries.send(Delivery::Reset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some((meta, name)) = current_snapshot(&self.store)? else {
            return Ok(None);
        };
        let file = SnapshotFile::open(self.store.snapshot_dir().join(&name))?;
        Ok(Some(Snapshot { meta, snapshot: file }))
    }
}

fn current_snapshot(store: &Store) -> Result<Option<(SnapshotMeta, String)>, StoreError> {
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

fn install_blocking(store: &Store, meta: &SnapshotMeta, mut snapshot: SnapshotFile) -> Result<(), StoreError> {
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

    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    store.db.put_cf_opt(store.cf(CF_SM)?, KEY_INSTALLING, encode(&(meta, &name))?, &wo)?;
    // Readers wait out the wipe and reload; they see the old state or the new.
    let _gate = store.install_gate.write().unwrap_or_else(|p| p.into_inner());
    load_snapshot(store, meta, &name)
}

/// Replaces the chat tables with a snapshot's records. Idempotent, so that a
/// restart can redo an install a crash interrupted (the `installing` marker is
/// removed only in the final, synced batch).
fn load_snapshot(store: &Store, meta: &SnapshotMeta, name: &str) -> Result<(), StoreError> {
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
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    store.db.write_opt(batch, &wo)?;
    remove_other_snapshots(&store.snapshot_dir(), name);
    Ok(())
}

/// Builds snapshots from a RocksDB point-in-time view while apply continues.
pub struct SnapshotBuilder {
    store: Store,
    lock: Arc<Mutex<()>>,
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
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    store.db.put_cf_opt(sm, KEY_SNAPSHOT, encode(&(&meta, &name))?, &wo)?;
    remove_other_snapshots(&dir, &name);
    Ok(Snapshot { meta, snapshot: SnapshotFile::open(path)? })
}

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

/// One page of a room's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The room's last seq when the page was read.
    pub head: u64,
    pub messages: Vec<Message>,
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
    fn reload_level(&self) -> Result<u32, StoreError> {
        let level = chat::feature_level(self)?;
        self.store.level.store(level, Ordering::Release);
        Ok(level)
    }

    pub fn cluster(&self) -> Result<Option<chat::ClusterRecord>, StoreError> {
        chat::cluster(self)
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        chat::user(self, name)
    }

    pub fn room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError> {
        chat::room(self, name)
    }

    pub fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        chat::is_member(self, room, user)
    }

    /// The members of a room, by name.
    pub fn members(&self, room: &str) -> Result<Vec<String>, StoreError> {
        let prefix = chat::key2(room, &[]);
        let mut out = Vec::new();
        let _gate = self.gate()?;
        let cf = self.store.cf(Table::Members.name())?;
        for item in self.store.db.iterator_cf(cf, IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
            let (key, _) = item?;
            let Some(user) = key.strip_prefix(prefix.as_slice()) else { break };
            out.push(String::from_utf8_lossy(user).into_owned());
        }
        Ok(out)
    }

    /// Every room with its record, by name.
    pub fn rooms(&self) -> Result<Vec<(String, RoomRecord)>, StoreError> {
        let _gate = self.gate()?;
        let mut out = Vec::new();
        for item in self.store.db.iterator_cf(self.store.cf(Table::Rooms.name())?, IteratorMode::Start) {
            let (key, value) = item?;
            out.push((String::from_utf8_lossy(&key).into_owned(), decode(&value)?));
        }
        Ok(out)
    }

    /// Messages with `after < seq < before`, ascending, at most `limit`. With
    /// `after`, the page starts just after it; without, it ends at the newest
    /// message (or just before `before`), which is how clients scroll back.
    pub fn history(&self, room: &str, after: Option<u64>, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        let head = self.room(room)?.map_or(0, |r| r.last_seq);
        // After `room` released it: the messages up to `head` are there in
        // this state and in any installed after it.
        let _gate = self.gate()?;
        let cf = self.store.cf(Table::Messages.name())?;
        let upper = before.unwrap_or(u64::MAX).min(head.saturating_add(1));
        let mut messages = Vec::new();
        match after {
            Some(after) => {
                let start = chat::message_key(room, after.saturating_add(1));
                let end = chat::message_key(room, upper);
                let mut opts = rocksdb::ReadOptions::default();
                opts.set_iterate_upper_bound(end);
                for item in self.store.db.iterator_cf_opt(cf, opts, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
                    if messages.len() >= limit {
                        break;
                    }
                    let (_, value) = item?;
                    messages.push(decode(&value)?);
                }
            }
            None => {
                let lower = chat::message_key(room, 1);
                let end = chat::message_key(room, upper);
                let mut opts = rocksdb::ReadOptions::default();
                opts.set_iterate_lower_bound(lower);
                opts.set_iterate_upper_bound(end.clone());
                for item in self.store.db.iterator_cf_opt(cf, opts, IteratorMode::End) {
                    if messages.len() >= limit {
                        break;
                    }
                    let (_, value) = item?;
                    messages.push(decode(&value)?);
                }
                messages.reverse();
            }
        }
        Ok(HistoryPage { head, messages })
    }

    /// The last seq of `room` stamped (`ts_ms`) before `since`, or 0 if none
    /// is; `None` if the newest message is, so none is stamped at or after
    /// `since`. Reads back from the head `page` messages at a time, which
    /// works because `ts` never decreases within a room.
    pub fn last_stamped_before(&self, room: &str, since: u64, page: usize) -> Result<Option<u64>, StoreError> {
        let mut before = None;
        let mut head = None;
        loop {
            let p = self.history(room, None, before, page.max(1))?;
            let head = *head.get_or_insert(p.head);
            let Some(first) = p.messages.first() else { return Ok(Some(0)) };
            if let Some(m) = p.messages.iter().rev().find(|m| m.ts_ms < since) {
                return Ok((m.seq != head).then_some(m.seq));
            }
            before = Some(first.seq);
        }
    }

    /// A digest of every chat table: equal on two nodes iff their state is equal.
    pub fn digest(&self) -> Result<String, StoreError> {
        let mut d = StateDigest::default();
        let _gate = self.gate()?;
        for table in Table::ALL {
            for item in self.store.db.iterator_cf(self.store.cf(table.name())?, IteratorMode::Start) {
                let (key, value) = item?;
                d.add(table, &key, &value);
            }
        }
        Ok(d.finish())
    }
}
