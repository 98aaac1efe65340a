//! The event-sourced state machine, persisted in RocksDB.
//!
//! Applying a run of entries builds one `WriteBatch` holding every table change
//! and the new last-applied log id, and writes it atomically: after a restart the
//! state and the applied index always agree, and the node serves at once without
//! replaying the log. These writes are not synced on their own (see [`crate::db`]
//! for why that is safe); answers go to proposers only after the batch is written,
//! so a client that is acknowledged can read its write on this node.
//!
//! # Layout
//!
//! - this module: [`StateMachine`], the adapter openraft drives (apply, the
//!   commit of one batch, snapshot hand-off), and [`Delivery`]; the keys of
//!   the `sm` column family.
//! - `txn`: the pending-write overlay one apply batch reads and writes
//!   through, turned into one `WriteBatch` at commit.
//! - `snapshots`: building, installing and finding the current snapshot
//!   ([`SnapshotBuilder`]).
//! - `reader`: [`ChatReader`], read access to the applied state (its chat
//!   queries are [`crate::read::ChatRead`]'s).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::EntryPayload;
use tokio::sync::{broadcast, watch};

use crate::chat::{self, Event, Message, Outcome};
use crate::codec::{decode, encode};
use crate::db::{Store, CF_SM};
use crate::error::StoreError;
use crate::snapshot::{self, SnapshotFile};
use crate::stages::WriteStages;
use crate::types::{LogId, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

mod reader;
mod snapshots;
mod txn;

pub use crate::read::HistoryPage;
pub use reader::ChatReader;
pub(crate) use snapshots::install_seed;
pub use snapshots::SnapshotBuilder;
use snapshots::{current_snapshot, install_blocking, load_snapshot};
use txn::Txn;

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The current snapshot: its meta and file name.
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Present while a snapshot install is under way; a restart finishes it.
const KEY_INSTALLING: &[u8] = b"installing";

/// Entries applied per write batch; bounds the memory of one batch.
const APPLY_BATCH: usize = 1024;

/// What the state machine tells this node's delivery plane.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A message was stored.
    Message(Arc<Message>),
    /// A snapshot replaced the state: subscribers must re-read from storage, as
    /// messages may have arrived that were never delivered one by one.
    Reset,
    /// The user's sessions were revoked: connections opened with a token
    /// below `epoch` are to be closed.
    Revoked { user: String, epoch: u64 },
    /// Every signing key older than `oldest` was dropped: connections opened
    /// with a token they signed are to be closed.
    KeysDropped { oldest: u32 },
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
    stages: Arc<WriteStages>,
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
        let reader = ChatReader::of(&store);
        let applied_index = reader.applied_log_id()?.map_or(0, |id| id.index);
        reader.reload_level()?;
        let (deliveries, _) = broadcast::channel(8192);
        Ok(StateMachine {
            store,
            deliveries,
            applied: watch::Sender::new(applied_index),
            snapshot_lock: Arc::new(Mutex::new(())),
            stages: WriteStages::off(),
        })
    }

    /// Times each run of entries applied (and the wait before it) into `stages`.
    pub fn with_stages(self, stages: Arc<WriteStages>) -> Self {
        StateMachine { stages, ..self }
    }

    pub fn reader(&self) -> ChatReader {
        ChatReader::of(&self.store)
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

type Responder = openraft::storage::ApplyResponder<TypeConfig>;

impl StateMachine {
    /// Writes one batch (a run of entries up to `last`, begun at `began`),
    /// then answers its proposers and tells subscribers.
    fn commit(
        &self,
        txn: Txn<'_>,
        (last, began): (&Option<LogId>, Instant),
        membership: Option<&StoredMembership>,
        replies: &mut Vec<(Responder, Response)>,
        delivered: &mut Vec<Delivery>,
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
            self.stages.applied(id.index, began, Instant::now());
            self.applied.send_replace(id.index);
        }
        for delivery in delivered.drain(..) {
            // No receiver is not an error: nobody is subscribed on this node.
            let _ = self.deliveries.send(delivery);
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
        let mut began = Instant::now();

        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            if in_batch == 0 {
                began = Instant::now();
            }
            self.stages.applying(entry.log_id.index, began);
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
                        match (&applied.outcome, &cmd.event) {
                            (Outcome::LevelRaised { level: l }, _) => level = Some(*l),
                            (Outcome::Revoked { epoch }, Event::SessionsRevoked { user } | Event::PasswordChanged { user, .. }) => {
                                delivered.push(Delivery::Revoked { user: user.clone(), epoch: *epoch })
                            }
                            (Outcome::KeyRotated { version }, Event::SigningKeyRotated { drop_old: true, .. }) => {
                                delivered.push(Delivery::KeysDropped { oldest: *version })
                            }
                            _ => {}
                        }
                        delivered.extend(applied.delivery.map(|m| Delivery::Message(Arc::new(m))));
                        outcomes.push(applied.outcome);
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
                self.commit(full, (&last, began), membership.take().as_ref(), &mut replies, &mut delivered, level.take())?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.commit(txn, (&last, began), membership.as_ref(), &mut replies, &mut delivered, level)?;
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
