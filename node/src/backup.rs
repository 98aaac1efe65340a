//! Backups served to `chorusctl backup`, and a data dir seeded from one at
//! start (`chorusctl restore`, `chorusctl cluster force-new`).
//!
//! The file format and the seeding itself are raft-store's
//! ([`raft_store::backup`]); this module decides when: what a backup must
//! include before it is taken, and where in a node's start a seed goes.

use std::io::Read;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use proto::v1::BackupChunk;
use raft_store::backup::{self, BackupHeader, BackupStream};
use raft_store::snapshot::{SnapshotFile, SnapshotReader};
use raft_store::{NodeInfo, Store};
use tonic::Status;

use crate::identity::Identity;
use crate::node::Node;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send + 'static>>;

/// How long a backup may wait for the read point and its snapshot.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of the file per streamed chunk.
const CHUNK: usize = 1 << 20;

/// A backup of this node's state as a stream of file pieces.
///
/// First a read point (a linearizable read through the leader): once this
/// node has applied it, its state holds every write acknowledged before the
/// call arrived, whichever member serves it. Then a snapshot covering that
/// point (built now if the latest does not), streamed from its open file, so
/// a newer snapshot replacing it meanwhile changes nothing.
pub async fn stream(node: &Node) -> Result<ChunkStream, Status> {
    let point = node.read_index(PREPARE_TIMEOUT).await.map_err(|e| {
        Status::unavailable(format!("cannot take a consistent backup: {e} (a backup needs a cluster with a quorum)"))
    })?;
    let (header, mut file) = covering_snapshot(node, point, "")
        .await?
        .ok_or_else(|| Status::internal("no snapshot to back up"))?;
    let total = BackupStream::total_len(&header).map_err(|e| Status::internal(e.to_string()))?;
    let (mut sum, prefix) = BackupStream::start(&header).map_err(|e| Status::internal(e.to_string()))?;
    std::io::Seek::seek(&mut file.file, std::io::SeekFrom::Start(0)).map_err(|e| Status::internal(e.to_string()))?;
    tracing::info!(index = header.index(), bytes = total, "serving a backup");

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<BackupChunk, Status>>(4);
    let index = header.index();
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(BackupChunk { data: prefix, total, index })).is_err() {
            return;
        }
        let mut buf = vec![0u8; CHUNK];
        let mut left = header.snapshot_bytes;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            if let Err(e) = file.file.read_exact(&mut buf[..want]) {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading the snapshot: {e}"))));
                return;
            }
            sum.update(&buf[..want]);
            left -= want as u64;
            // A receiver gone means the client hung up: stop reading.
            if tx.blocking_send(Ok(BackupChunk { data: buf[..want].to_vec(), total: 0, index: 0 })).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Ok(BackupChunk { data: sum.finish().to_vec(), total: 0, index: 0 }));
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// This node's snapshot covering log index `point` (built now if the latest
/// does not), opened, with the header of a backup of it; `None` if there is
/// no snapshot. `source` is appended to the header's "node N at ADDR".
async fn covering_snapshot(node: &Node, point: u64, source: &str) -> Result<Option<(BackupHeader, SnapshotFile)>, Status> {
    let internal = |e: &dyn std::fmt::Display| Status::internal(e.to_string());
    if node.snapshot_index() < point {
        node.raft.trigger().snapshot().await.map_err(|e| internal(&e))?;
        if node.snapshot_covering(point, PREPARE_TIMEOUT).await.is_none() {
            return Err(Status::deadline_exceeded("the snapshot for the backup did not finish in time"));
        }
    }
    let Some((meta, file)) = node.reader.current_snapshot().map_err(|e| internal(&e))? else { return Ok(None) };
    let level = SnapshotReader::new(&file.file).map_err(|e| Status::internal(format!("the snapshot: {e}")))?.level();
    let header = BackupHeader {
        cluster_id: node.peers.identity.cluster_id().unwrap_or_default(),
        last_log_id: meta.last_log_id,
        level,
        created_ms: backup::now_ms(),
        snapshot_bytes: file.file.metadata().map_err(|e| internal(&e))?.len(),
        source: format!("node {} at {}{source}", node.id, node.info.raft_addr),
    };
    Ok(Some((header, file)))
}

/// Seeds the store from the backup a restore or force-new left in the data
/// dir, if there is one; before Raft starts, so it starts on the seeded
/// state. The new cluster id is kept from an interrupted earlier attempt.
pub fn seed_if_present(store: &Store, identity: &Identity, id: u64, info: &NodeInfo) -> anyhow::Result<()> {
    let Some(path) = backup::pending_seed(&store.dir()) else { return Ok(()) };
    let cluster_id = identity.cluster_id().unwrap_or_else(crate::new_cluster_id);
    let header = backup::seed(store, &path, id, info, &cluster_id)?;
    identity.adopt(&cluster_id).map_err(|s| anyhow::anyhow!(s.message().to_string()))?;
    backup::finish_seed(store, &path)?;
    tracing::info!(
        from = %header.source,
        old_cluster = %header.cluster_id,
        cluster_id,
        index = header.index(),
        "formed a one-member cluster from a backup; grow it with chorusctl cluster add"
    );
    Ok(())
}

/// Prefix and suffix of automatic backup files.
const AUTO_PREFIX: &str = "chorus-";
const AUTO_SUFFIX: &str = ".chorusbak";

/// Writes a backup of this node's applied state into `--backup-dir` every
/// `--backup-interval`, keeping the newest `--backup-keep`. Local, so it
/// works on any member and without a quorum: each file holds a prefix of the
/// log, up to what this node had applied (a follower's may trail the leader).
pub async fn automatic(node: std::sync::Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(dir) = node.config.backup_dir.clone() else { return };
    let every = Duration::from_secs(node.config.backup_interval);
    let keep = node.config.backup_keep as usize;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        match write_local(&node, &dir, keep).await {
            Ok(Some(path)) => tracing::info!(file = %path.display(), "wrote an automatic backup"),
            Ok(None) => tracing::debug!("no state to back up yet"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "automatic backup failed"),
        }
    }
}

/// One backup of what this node has applied, into `dir`; `None` before the
/// cluster's first entry.
pub async fn write_local(node: &Node, dir: &std::path::Path, keep: usize) -> anyhow::Result<Option<std::path::PathBuf>> {
    let applied = node.applied_index();
    if applied == 0 {
        return Ok(None);
    }
    let Some((header, file)) =
        covering_snapshot(node, applied, " (automatic)").await.map_err(|s| anyhow::anyhow!(s.message().to_string()))?
    else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir)?;
    // Names sort by time: the millisecond clock, zero-padded.
    let name = format!("{AUTO_PREFIX}{:015}-{:012}{AUTO_SUFFIX}", header.created_ms, header.index());
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let (h, t) = (header.clone(), tmp.clone());
    // The open handle keeps the data even if the file is replaced; copy from
    // it rather than from the path.
    tokio::task::spawn_blocking(move || backup::write_file_from(&t, &h, file.file)).await??;
    // Room for the new one is made only once it is written, so there are
    // never more than `keep`, and never fewer than `keep - 1` complete ones.
    rotate(dir, keep.saturating_sub(1), &tmp);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Some(path))
}

/// Removes all but the newest `keep` automatic backups in `dir`, and any
/// `.tmp` a crash left (but `writing`).
fn rotate(dir: &std::path::Path, keep: usize, writing: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut ours: Vec<std::path::PathBuf> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(AUTO_PREFIX) {
            continue;
        }
        if name.ends_with(".tmp") {
            if e.path() != writing {
                let _ = std::fs::remove_file(e.path());
            }
        } else if name.ends_with(AUTO_SUFFIX) {
            ours.push(e.path());
        }
    }
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    for old in &ours[..excess] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "cannot remove an old backup");
        }
    }
}
