//! Errors of the storage layer.

/// A failure to read or write the node's durable state. Any of these is fatal to
/// the Raft instance that sees it: openraft stops rather than risk a wrong log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // Not `#[from]`: that would also make the inner error the source, and an
    // error chain printed whole (`{:#}`) would say the same thing twice.
    #[cfg(feature = "rocksdb")]
    #[error("rocksdb: {0}")]
    Rocks(rocksdb::Error),
    #[error("io: {0}")]
    Io(std::io::Error),
    /// RocksDB found damaged files at open; the message names them when it can.
    #[error("damaged store: {0}")]
    Damaged(String),
    #[error("corrupt record: {0}")]
    Codec(String),
    /// Data of a feature level this binary does not read (see [`crate::format`]).
    #[error("{0}")]
    Unsupported(String),
    /// This node's Raft has stopped; its state is no longer served.
    #[error("this node has stopped serving: {0}")]
    Failed(String),
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
}

#[cfg(feature = "rocksdb")]
impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Rocks(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(io) => io,
            other => std::io::Error::other(other),
        }
    }
}
