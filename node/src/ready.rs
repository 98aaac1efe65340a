//! The ready record: what a started node tells whoever started it. With port 0
//! in `--client-addr` or `--raft-addr` the OS picks the ports, so tests and
//! scripts learn them here instead of guessing free ports (a port probed free
//! and released can be handed to someone else before the node binds it).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::NodeHandle;

pub use wire::Ready;

/// The record of a started node: its bound and advertised addresses.
pub fn of(handle: &NodeHandle) -> Ready {
    Ready {
        id: handle.node.id,
        pid: std::process::id(),
        client_addr: handle.client_addr,
        raft_addr: handle.raft_addr,
        client_url: handle.node.info.client_url.clone(),
        advertise_raft: handle.node.info.raft_addr.clone(),
    }
}

pub fn to_json(r: &Ready) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// Writes the record whole: to `PATH.tmp` first, then renamed over `PATH`, so
/// a reader never sees half of it.
pub fn write(r: &Ready, path: &Path) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(to_json(r).as_bytes())?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write the ready file {}", path.display()))
}

/// The record at `path`, or `None` while there is none.
pub fn read(path: &Path) -> anyhow::Result<Option<Ready>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("bad ready file {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Removes a ready file left by an earlier run (or at a clean shutdown).
pub fn remove(path: &Path) -> anyhow::Result<()> {
    for p in [path.to_path_buf(), tmp_path(path)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_record_reads_back_and_is_gone_after_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.ready");
        assert_eq!(read(&path).unwrap(), None);
        let r = Ready {
            id: 3,
            pid: 42,
            client_addr: "127.0.0.1:41000".parse().unwrap(),
            raft_addr: "127.0.0.1:41001".parse().unwrap(),
            client_url: "http://127.0.0.1:41000".into(),
            advertise_raft: "127.0.0.1:41001".into(),
        };
        write(&r, &path).unwrap();
        assert_eq!(read(&path).unwrap(), Some(r));
        assert!(!tmp_path(&path).exists());
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
        remove(&path).unwrap();
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.ready");
        std::fs::write(&path, b"{\"id\":").unwrap();
        assert!(read(&path).is_err());
    }
}
