//! The power-loss nemesis: a crash that also loses every write not yet synced.
//!
//! SIGKILL alone leaves the page cache alone, so a missing fsync can never show
//! up. This machine has no device-mapper (no dm-flakey, no dm-log-writes), and a
//! FUSE layer would put a second file system under RocksDB; so a node the
//! nemesis may power off runs with `powerloss/powerloss.c` preloaded. The
//! library journals each write to a file under the node's data directory (with
//! the bytes it overwrites) and each completed fsync/fdatasync (with the size
//! it covered). After the kill, [`drop_unsynced`] replays that journal
//! backwards: every write after a file's last sync is undone and the file is
//! cut back to the size the sync covered. What is left is what the disk would
//! hold had the machine lost power at the moment of the kill.
//!
//! Renames, unlinks and truncations are taken as durable at once (RocksDB
//! syncs the directory after each rename it relies on); mmap'd writes are not
//! seen (RocksDB writes through `write`/`pwrite`).

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

const SOURCE: &str = include_str!("../powerloss/powerloss.c");
const KIND_WRITE: u64 = 1;
const KIND_SYNC: u64 = 2;

/// The compiled library, built once per process with the system's C compiler
/// beside the chorusd binary.
pub fn library() -> anyhow::Result<PathBuf> {
    static LIB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LIB.get_or_init(|| build().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow::anyhow!("cannot build the power-loss library: {e}"))
}

fn build() -> anyhow::Result<PathBuf> {
    let bin = crate::cluster::bin("chorusd")?;
    let dir = bin.parent().context("chorusd has no directory")?.to_path_buf();
    let out = dir.join("libchorus_powerloss.so");
    let src = dir.join(format!("chorus_powerloss.{}.c", std::process::id()));
    let tmp = dir.join(format!("libchorus_powerloss.{}.so", std::process::id()));
    std::fs::write(&src, SOURCE).with_context(|| format!("cannot write {}", src.display()))?;
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .context("cannot run cc (apt-get install gcc)")?;
    let _ = std::fs::remove_file(&src);
    if !status.success() {
        bail!("cc failed on powerloss.c ({status})");
    }
    // Concurrent test processes each build their own and the last rename wins:
    // every copy is the same library.
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// What one replay undid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Files with writes after their last sync.
    pub files: usize,
    /// Bytes cut off the ends of those files.
    pub truncated: u64,
    /// Bytes of overwrites put back to what was synced.
    pub restored: u64,
}

struct Write1 {
    offset: u64,
    size_before: u64,
    undo: Vec<u8>,
}

/// Per file, in journal order: its writes and, for each sync, the size it covered.
enum Rec {
    Write(Write1),
    Sync(u64),
}

fn parse(journal: &[u8]) -> anyhow::Result<BTreeMap<PathBuf, Vec<Rec>>> {
    let mut files: BTreeMap<PathBuf, Vec<Rec>> = BTreeMap::new();
    let mut at = 0usize;
    let word = |at: usize| -> Option<u64> { journal.get(at..at + 8).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))) };
    while at < journal.len() {
        let head: Option<Vec<u64>> = (0..5).map(|i| word(at + 8 * i)).collect();
        let Some(head) = head else { bail!("the journal ends inside a record header at byte {at}") };
        let (kind, a, b, c, path_len) = (head[0], head[1], head[2], head[3], head[4]);
        let path_start = at + 40;
        let path_end = path_start.checked_add(usize::try_from(path_len)?).context("path length overflows")?;
        let path = journal.get(path_start..path_end).context("the journal ends inside a path")?;
        let path = PathBuf::from(String::from_utf8(path.to_vec()).context("a journal path is not UTF-8")?);
        let rec = match kind {
            KIND_WRITE => {
                let undo_len = c.saturating_sub(a).min(b);
                let undo_end = path_end.checked_add(usize::try_from(undo_len)?).context("undo length overflows")?;
                let undo = journal.get(path_end..undo_end).context("the journal ends inside undo bytes")?.to_vec();
                at = undo_end;
                Rec::Write(Write1 { offset: a, size_before: c, undo })
            }
            KIND_SYNC => {
                at = path_end;
                Rec::Sync(a)
            }
            other => bail!("unknown journal record kind {other} at byte {}", path_start - 40),
        };
        files.entry(path).or_default().push(rec);
    }
    Ok(files)
}

/// Undoes, in every file the journal names, each write made after the file's
/// last sync, then removes the journal. Call it only once the process that
/// wrote the journal is dead. A missing journal means nothing was written.
pub fn drop_unsynced(journal: &Path) -> anyhow::Result<Dropped> {
    let bytes = match std::fs::read(journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Dropped::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", journal.display())),
    };
    let mut dropped = Dropped::default();
    for (path, recs) in parse(&bytes).with_context(|| format!("bad journal {}", journal.display()))? {
        let last_sync = recs.iter().rposition(|r| matches!(r, Rec::Sync(_)));
        let (synced_size, unsynced) = match last_sync {
            Some(i) => (if let Rec::Sync(s) = recs[i] { s } else { 0 }, &recs[i + 1..]),
            // Never synced in this run: what it held before its first write here.
            None => (recs.iter().find_map(|r| if let Rec::Write(w) = r { Some(w.size_before) } else { None }).unwrap_or(0), &recs[..]),
        };
        let writes: Vec<&Write1> = unsynced.iter().filter_map(|r| if let Rec::Write(w) = r { Some(w) } else { None }).collect();
        if writes.is_empty() {
            continue;
        }
        let mut f = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            // Renamed or removed since: taken as durable, like the rename.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        dropped.files += 1;
        for w in writes.iter().rev() {
            if !w.undo.is_empty() && w.offset < synced_size {
                f.seek(SeekFrom::Start(w.offset))?;
                f.write_all(&w.undo)?;
                dropped.restored += w.undo.len() as u64;
            }
        }
        let size = f.metadata()?.len();
        if size > synced_size {
            f.set_len(synced_size)?;
            dropped.truncated += size - synced_size;
        }
    }
    std::fs::remove_file(journal).with_context(|| format!("cannot remove {}", journal.display()))?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u64, a: u64, b: u64, c: u64, path: &Path, undo: &[u8]) -> Vec<u8> {
        let p = path.to_str().expect("utf-8 path").as_bytes();
        let mut v = Vec::new();
        for w in [kind, a, b, c, p.len() as u64] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend_from_slice(p);
        v.extend_from_slice(undo);
        v
    }

    #[test]
    fn writes_after_the_last_sync_are_undone_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("wal");
        let fresh = dir.path().join("fresh");
        // wal: "abcd" synced, then "ef" appended and "XY" over "bc", unsynced.
        std::fs::write(&log, b"aXYdef").expect("write");
        // fresh: created and written in this run, never synced.
        std::fs::write(&fresh, b"never synced").expect("write");
        let mut j = Vec::new();
        j.extend(rec(KIND_WRITE, 0, 4, 0, &log, b""));
        j.extend(rec(KIND_SYNC, 4, 0, 0, &log, b""));
        j.extend(rec(KIND_WRITE, 4, 2, 4, &log, b""));
        j.extend(rec(KIND_WRITE, 1, 2, 6, &log, b"bc"));
        j.extend(rec(KIND_WRITE, 0, 12, 0, &fresh, b""));
        let journal = dir.path().join("journal");
        std::fs::write(&journal, &j).expect("write");

        let d = drop_unsynced(&journal).expect("replay");
        assert_eq!(std::fs::read(&log).expect("read"), b"abcd");
        assert_eq!(std::fs::read(&fresh).expect("read"), b"");
        assert_eq!(d, Dropped { files: 2, truncated: 2 + 12, restored: 2 });
        assert!(!journal.exists(), "the journal is consumed");
        assert_eq!(drop_unsynced(&journal).expect("no journal"), Dropped::default());
    }

    #[test]
    fn a_torn_journal_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal");
        let mut j = rec(KIND_SYNC, 4, 0, 0, &dir.path().join("wal"), b"");
        j.truncate(j.len() - 1);
        std::fs::write(&journal, &j).expect("write");
        assert!(drop_unsynced(&journal).is_err());
    }
}
