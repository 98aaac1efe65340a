//! openraft's own storage conformance suite, run against the RocksDB store.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::error::ErrorSource;
use openraft::impls::BoxedErrorSource;
use openraft::StorageError;
use raft_store::{LogStore, StateMachine, TypeConfig};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        let store = raft_store::open(dir.path()).map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        let sm = StateMachine::open(store.clone()).map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        let log = LogStore::new(store).map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}
