//! The snapshot file: the chat tables streamed record by record.
//!
//! A snapshot is built from a RocksDB point-in-time snapshot straight into a file
//! and installed from a file in bounded batches, so neither side ever holds the
//! whole state in memory. Layout:
//!
//! ```text
//! header:  "CHORUSSNAP1\n"                        (feature level 1)
//!        | "CHORUSSNAP2\n" | level u32 LE          (feature level 2 and later)
//! record*: tag u8 | key_len u32 LE | key | value_len u32 LE | value
//! end:     0xFF | record count u64 LE | sha256 of every byte before the end tag
//! ```
//!
//! A snapshot is written at the feature level of the state it holds, so a
//! level-1 cluster's snapshots are byte for byte what binaries older than
//! levels write and read; a reader refuses a level newer than it knows.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::chat::Table;
use crate::format;

/// One snapshot record: its table, key and value.
pub type Record = (Table, Vec<u8>, Vec<u8>);

const MAGIC_LEGACY: &[u8] = b"CHORUSSNAP1\n";
const MAGIC: &[u8] = b"CHORUSSNAP2\n";
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
    /// A snapshot file of a state at feature level `level`.
    pub fn create(path: &Path, level: u32) -> io::Result<Self> {
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(256 << 10, File::create(path)?),
            hash: Sha256::new(),
            count: 0,
            unsynced: 0,
        };
        if level <= format::LEGACY {
            w.write_hashed(MAGIC_LEGACY)?;
        } else {
            w.write_hashed(MAGIC)?;
            w.write_hashed(&level.to_le_bytes())?;
        }
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
    level: u32,
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt snapshot: {what}"))
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header; refuses a file that is not a snapshot, or one of a
    /// feature level this binary does not read.
    pub fn new(input: R) -> io::Result<Self> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(256 << 10, input),
            hash: Sha256::new(),
            count: 0,
            done: false,
            level: format::LEGACY,
        };
        let mut magic = [0u8; MAGIC.len()];
        r.read_hashed(&mut magic)?;
        if magic == MAGIC {
            let mut level = [0u8; 4];
            r.read_hashed(&mut level)?;
            r.level = u32::from_le_bytes(level);
            if r.level <= format::LEGACY {
                return Err(corrupt("a level-2 header with a lower level"));
            }
            if r.level > format::CURRENT {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format::unsupported("this snapshot", r.level)));
            }
        } else if magic != MAGIC_LEGACY {
            return Err(corrupt("not a Chorus snapshot (bad magic)"));
        }
        Ok(r)
    }

    /// The feature level the snapshot was written at.
    pub fn level(&self) -> u32 {
        self.level
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
        let mut w = SnapshotWriter::create(&path, format::CURRENT).unwrap();
        w.record(Table::Users, b"alice", b"x").unwrap();
        w.record(Table::Messages, b"k", &[7; 1000]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        assert_eq!(verify(&path).unwrap(), 2);

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + 4 + 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err());

        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(verify(&path).is_err(), "truncated file");
    }

    fn write(path: &Path, level: u32) {
        let mut w = SnapshotWriter::create(path, level).unwrap();
        w.record(Table::Users, b"alice", b"x").unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn each_level_has_its_header_and_a_newer_level_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        // Level 1 is the format from before levels, unchanged.
        write(&path, format::LEGACY);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"CHORUSSNAP1\n") && bytes[12] == Table::Users.tag(), "{:?}", &bytes[..16]);
        assert_eq!(SnapshotReader::new(File::open(&path).unwrap()).unwrap().level(), 1);
        assert_eq!(verify(&path).unwrap(), 1);

        write(&path, 2);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"CHORUSSNAP2\n\x02\0\0\0"), "{:?}", &bytes[..16]);
        assert_eq!(SnapshotReader::new(File::open(&path).unwrap()).unwrap().level(), 2);
        assert_eq!(verify(&path).unwrap(), 1);

        // A level from a newer binary: refused by name, not called corrupt.
        let mut newer = bytes.clone();
        newer[12..16].copy_from_slice(&(format::CURRENT + 1).to_le_bytes());
        std::fs::write(&path, &newer).unwrap();
        let e = verify(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains(&format!("feature level {}", format::CURRENT + 1)), "{e}");

        std::fs::write(&path, b"NOTASNAPSHOT and some more bytes").unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("not a Chorus snapshot"));
    }
}
