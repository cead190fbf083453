//! openraft's storage conformance suite against the sled-backed log store and state machine.

use gantry_control_plane::store::{KvBackend, LogStore, SledBackend, StateMachine};
use gantry_control_plane::types::{NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv: Arc<dyn KvBackend> = Arc::new(SledBackend::open(dir.path()).expect("open sled"));
        let sm = StateMachine::open(kv.clone(), 100).expect("open state machine");
        Ok((dir, LogStore::new(kv), sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(SledStoreBuilder).expect("openraft storage suite");
}
