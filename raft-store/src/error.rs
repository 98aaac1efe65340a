//! Errors of the storage layer.

/// A failure to read or write the node's durable state. Any of these is fatal to
/// the Raft instance that sees it: openraft stops rather than risk a wrong log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt record: {0}")]
    Codec(String),
    /// Data of a feature level this binary does not read (see [`crate::format`]).
    #[error("{0}")]
    Unsupported(String),
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(io) => io,
            other => std::io::Error::other(other),
        }
    }
}
