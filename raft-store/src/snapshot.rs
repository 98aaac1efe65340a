//! The snapshot file: the chat tables streamed record by record.
//!
//! A snapshot is built from a RocksDB point-in-time snapshot straight into a file
//! and installed from a file in bounded batches, so neither side ever holds the
//! whole state in memory. Layout:
//!
//! ```text
//! magic "CHORUSSNAP1\n"
//! record*: tag u8 | key_len u32 LE | key | value_len u32 LE | value
//! end:     0xFF | record count u64 LE | sha256 of every byte before the end tag
//! ```

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::chat::Table;

/// One snapshot record: its table, key and value.
pub type Record = (Table, Vec<u8>, Vec<u8>);

const MAGIC: &[u8] = b"CHORUSSNAP1\n";
const END_TAG: u8 = 0xFF;
/// No key or value in the chat tables comes near this; a larger length means a
/// corrupt or hostile file, and is refused before allocating.
const MAX_RECORD_PART: u32 = 64 << 20;

/// A snapshot as openraft carries it: an open file. The handle keeps the data
/// readable even if a newer snapshot replaces (unlinks) this one while it is
/// being sent.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

impl SnapshotFile {
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        Ok(SnapshotFile { path, file })
    }
}

/// Writes a snapshot file from an iterator of `(table, key, value)` records.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hash: Sha256,
    count: u64,
    /// Bytes written since the file was last synced.
    unsynced: usize,
}

/// A snapshot file is synced every this many bytes as it is written. One sync
/// of the whole file at the end would hand the disk tens of MiB at once, and
/// the WAL fsync that every commit waits for could queue behind it.
const SYNC_EVERY: usize = 4 << 20;

impl SnapshotWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(256 << 10, File::create(path)?),
            hash: Sha256::new(),
            count: 0,
            unsynced: 0,
        };
        w.write_hashed(MAGIC)?;
        Ok(w)
    }

    fn write_hashed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)?;
        self.unsynced += bytes.len();
        if self.unsynced >= SYNC_EVERY {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }

    pub fn record(&mut self, table: Table, key: &[u8], value: &[u8]) -> io::Result<()> {
        let key_len = u32::try_from(key.len()).map_err(io::Error::other)?;
        let value_len = u32::try_from(value.len()).map_err(io::Error::other)?;
        self.write_hashed(&[table.tag()])?;
        self.write_hashed(&key_len.to_le_bytes())?;
        self.write_hashed(key)?;
        self.write_hashed(&value_len.to_le_bytes())?;
        self.write_hashed(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs the file.
    pub fn finish(mut self) -> io::Result<u64> {
        self.out.write_all(&[END_TAG])?;
        self.out.write_all(&self.count.to_le_bytes())?;
        let digest = self.hash.finalize();
        self.out.write_all(&digest)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(self.count)
    }
}

/// Reads records back, checking the trailer's count and checksum at the end.
/// A caller must read to the end ([`SnapshotReader::next_record`] returning
/// `None`) before trusting what it read.
pub struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    hash: Sha256,
    count: u64,
    done: bool,
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt snapshot: {what}"))
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> io::Result<Self> {
        let mut r = SnapshotReader { input: BufReader::with_capacity(256 << 10, input), hash: Sha256::new(), count: 0, done: false };
        let mut magic = [0u8; MAGIC.len()];
        r.input.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(corrupt("bad magic"));
        }
        r.hash.update(magic);
        Ok(r)
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf)?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn read_part(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.read_hashed(&mut len)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD_PART {
            return Err(corrupt("record too large"));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_hashed(&mut buf)?;
        Ok(buf)
    }

    /// The next record, or `None` at a verified end.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag)?;
        if tag[0] == END_TAG {
            let mut count = [0u8; 8];
            self.input.read_exact(&mut count)?;
            let mut digest = [0u8; 32];
            self.input.read_exact(&mut digest)?;
            if u64::from_le_bytes(count) != self.count {
                return Err(corrupt("record count mismatch"));
            }
            let actual = std::mem::take(&mut self.hash).finalize();
            if actual.as_slice() != digest {
                return Err(corrupt("checksum mismatch"));
            }
            self.done = true;
            return Ok(None);
        }
        self.hash.update(tag);
        let table = Table::from_tag(tag[0]).ok_or_else(|| corrupt("unknown table"))?;
        let key = self.read_part()?;
        let value = self.read_part()?;
        self.count += 1;
        Ok(Some((table, key, value)))
    }
}

/// Reads a snapshot file to its end, only to verify it.
pub fn verify(path: &Path) -> io::Result<u64> {
    let mut r = SnapshotReader::new(File::open(path)?)?;
    let mut n = 0;
    while r.next_record()?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = SnapshotWriter::create(&path).unwrap();
        w.record(Table::Users, b"alice", b"x").unwrap();
        w.record(Table::Messages, b"k", &[7; 1000]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        assert_eq!(verify(&path).unwrap(), 2);

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err());

        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(verify(&path).is_err(), "truncated file");
    }
}
