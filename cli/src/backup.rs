//! `chorusctl backup`, `chorusctl restore` and `chorusctl cluster force-new`.
//!
//! A backup streams from any member over the admin service. Restore and
//! force-new work offline on data dirs (no chorusd may run on them): they
//! leave a backup in a data dir for `chorusd` to seed a new one-member
//! cluster from when it starts there (see `raft_store::backup`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use proto::v1::Empty;
use raft_store::backup::{self, BackupHeader, SEED_FILE};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::admin::{connect, failed, request};
use crate::Cli;

/// A backup may take long to stream; the call is cut only when it stalls
/// this long between chunks.
const STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// Streams a backup from `--node` into `file` (written beside it, then
/// renamed, so `file` is always whole), with a progress bar.
pub async fn backup(cli: &Cli, file: &Path) -> anyhow::Result<()> {
    let mut client = connect(cli, &cli.node).await?;
    let mut req = request(cli, Empty {}, STALL);
    // The deadline is for the whole call; stalls are caught per chunk below.
    req.set_timeout(std::time::Duration::from_secs(24 * 3600));
    let mut stream = client.backup(req).await.map_err(failed)?.into_inner();
    let partial = with_suffix(file, ".partial");
    let mut out = std::io::BufWriter::new(
        backup::create_private(&partial).with_context(|| format!("cannot create {}", partial.display()))?,
    );
    let mut hash = Sha256::new();
    let (mut written, mut total, mut index) = (0u64, 0u64, 0u64);
    let bar = (!cli.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("backup [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let result: anyhow::Result<()> = async {
        loop {
            let next = tokio::time::timeout(STALL, stream.message())
                .await
                .map_err(|_| anyhow!("the node sent nothing for {} s", STALL.as_secs()))?;
            let Some(chunk) = next.map_err(failed)? else { break };
            if written == 0 {
                total = chunk.total;
                index = chunk.index;
                if let Some(bar) = &bar {
                    bar.set_length(total);
                }
            }
            hash.update(&chunk.data);
            out.write_all(&chunk.data)?;
            written += chunk.data.len() as u64;
            if let Some(bar) = &bar {
                bar.set_position(written);
            }
        }
        if written != total {
            bail!("the stream ended after {written} of {total} bytes");
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    }
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    // The checksum inside covers the whole stream; the snapshot checks itself.
    let header = match backup::verify(&partial) {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            bail!("the backup arrived damaged: {e}");
        }
    };
    std::fs::rename(&partial, file).with_context(|| format!("cannot move the backup to {}", file.display()))?;
    sync_parent(file)?;
    let sha = hex::encode(hash.finalize());
    if cli.json {
        println!(
            "{}",
            json!({ "file": file, "bytes": written, "sha256": sha, "index": index, "cluster_id": header.cluster_id, "source": header.source })
        );
    } else {
        println!("backup of cluster {} up to log index {index} from {}", header.cluster_id, header.source);
        println!("{sha}  {}  ({written} bytes, sha256)", file.display());
    }
    Ok(())
}

/// Checks `file` and leaves it in the empty data dir `dir` for a chorusd to
/// start a new cluster from.
pub fn restore(cli: &Cli, file: &Path, dir: &Path) -> anyhow::Result<()> {
    let header = backup::verify(file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty: a restore prepares a fresh data dir", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    place_seed(file, dir)?;
    report(cli, "restore", &header, dir)
}

/// From stopped members' data dirs, picks the one whose log reaches furthest,
/// moves its data aside and leaves in its place a backup of everything it
/// held, for its chorusd to start a new one-member cluster from.
pub async fn force_new(cli: &Cli, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let mut best: Option<(usize, raft_store::types::LogId)> = None;
    for (i, dir) in dirs.iter().enumerate() {
        if !dir.join("db").is_dir() {
            bail!("{} holds no Chorus data (no db/ inside)", dir.display());
        }
        let store = open(dir)?;
        let end = backup::log_end(&store).await?;
        drop(store);
        eprintln!("{}: log ends at {}", dir.display(), end.map_or("(empty)".to_string(), |id| id.to_string()));
        if let Some(end) = end {
            if best.as_ref().is_none_or(|(_, b)| end > *b) {
                best = Some((i, end));
            }
        }
    }
    let (chosen, _) = best.ok_or_else(|| anyhow!("none of these data dirs holds a log"))?;
    let dir = &dirs[chosen];
    let store = open(dir)?;
    let tmp = dir.join(format!("{SEED_FILE}.tmp"));
    let header = backup::export_all(&store, &tmp, &format!("force-new from {}", dir.display())).await?;
    store.stop_background_work();
    drop(store);
    let aside = dir.join(format!("pre-force-new-{}", backup::now_ms() / 1000));
    std::fs::create_dir(&aside)?;
    for part in ["db", "snapshots"] {
        if dir.join(part).exists() {
            std::fs::rename(dir.join(part), aside.join(part))?;
        }
    }
    std::fs::rename(&tmp, dir.join(SEED_FILE))?;
    sync_parent(&dir.join(SEED_FILE))?;
    report(cli, "force-new", &header, dir)?;
    if !cli.json {
        println!("the old data is kept in {} (delete it once the new cluster serves)", aside.display());
        for (_, other) in dirs.iter().enumerate().filter(|(i, _)| *i != chosen) {
            println!("{}: not used; empty it, start its chorusd with --no-bootstrap, then chorusctl cluster add it", other.display());
        }
    }
    Ok(())
}

fn open(dir: &Path) -> anyhow::Result<raft_store::Store> {
    raft_store::open(dir).map_err(|e| {
        if e.to_string().contains("lock") {
            anyhow!("{} is in use: stop its chorusd first", dir.display())
        } else {
            anyhow!("cannot open {}: {e}", dir.display())
        }
    })
}

fn place_seed(file: &Path, dir: &Path) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{SEED_FILE}.tmp"));
    let mut out = backup::create_private(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    std::io::copy(&mut std::fs::File::open(file)?, &mut out).with_context(|| format!("cannot copy the backup into {}", dir.display()))?;
    out.sync_all()?;
    std::fs::rename(&tmp, dir.join(SEED_FILE))?;
    sync_parent(&dir.join(SEED_FILE))
}

fn report(cli: &Cli, what: &str, header: &BackupHeader, dir: &Path) -> anyhow::Result<()> {
    if cli.json {
        println!(
            "{}",
            json!({ "data_dir": dir, "index": header.index(), "from_cluster": header.cluster_id, "source": header.source, "level": header.level })
        );
    } else {
        println!(
            "{what}: {} now holds the state of cluster {} up to log index {} ({})",
            dir.display(),
            header.cluster_id,
            header.index(),
            header.source
        );
        println!(
            "start chorusd with --data-dir {} and the id this node should have: it forms a new one-member cluster \
             (new cluster id, same history and accounts, tokens still valid); grow it with chorusctl cluster add",
            dir.display()
        );
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}
