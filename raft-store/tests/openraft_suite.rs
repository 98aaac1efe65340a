//! openraft's own storage conformance suite, run against the RocksDB store.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::error::ErrorSource;
use openraft::impls::BoxedErrorSource;
use openraft::StorageError;
use raft_store::{LogStore, StateMachine, TypeConfig};
use tempfile::TempDir;

/// Every store the suite opened: its sub-tests drop their stores in their own
/// time, and a RocksDB whose background work still runs when the test process
/// exits can abort it ("pthread lock: Invalid argument") as RocksDB's static
/// objects are torn down. The test stops them all before it returns.
static OPENED: std::sync::Mutex<Vec<raft_store::Store>> = std::sync::Mutex::new(Vec::new());

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        let store = raft_store::open(dir.path()).map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        OPENED.lock().unwrap_or_else(|p| p.into_inner()).push(store.clone());
        let sm = StateMachine::open(store.clone()).map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        let log = LogStore::new(store).map_err(|e| StorageError::read(BoxedErrorSource::from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    let result = Suite::test_all(RocksBuilder).await;
    for store in OPENED.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        store.stop_background_work();
    }
    result
}
