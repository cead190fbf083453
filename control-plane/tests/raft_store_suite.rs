//! openraft's storage conformance suite against the sled-backed log store and state machine:
//! as tests and tools build them, and as a member does (a leader's own appends reported before
//! their flush, the state machine gated on it).

use gantry_control_plane::store::{Durability, KvBackend, LogStore, SledBackend, StateMachine};
use gantry_control_plane::types::{NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;

/// `Some(id)`: the store of member `id` with early leader appends.
struct SledStoreBuilder(Option<NodeId>);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv: Arc<dyn KvBackend> = Arc::new(SledBackend::open(dir.path()).expect("open sled"));
        let sm = StateMachine::open(kv.clone(), 100).expect("open state machine");
        Ok(match self.0 {
            None => (dir, LogStore::new(kv), sm),
            Some(own) => {
                let durability = Durability::new();
                let log = LogStore::with_early_leader_appends(kv, own, durability.clone());
                (dir, log, sm.with_durability(durability))
            }
        })
    }
}

#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(SledStoreBuilder(None)).expect("openraft storage suite");
}

#[test]
fn sled_store_with_early_leader_appends_passes_openraft_suite() {
    // The suite's entries and votes are mostly by node 0 and 1; try both as our own id.
    for own in [0, 1] {
        Suite::test_all(SledStoreBuilder(Some(own))).expect("openraft storage suite");
    }
}
