//! A leader's own log appends are reported flushed before its disk flush ends, so openraft
//! replicates them in parallel with that flush; yet nothing is applied (so no client is
//! answered) until the flush is done. Checked on a real member whose log flush is held back.

mod common;

use common::{init_tracing, DEADLINE};
use futures::future::BoxFuture;
use gantry_control_plane::raft::{GrpcNetwork, RaftTuning};
use gantry_control_plane::store::kv::Pair;
use gantry_control_plane::store::{
    Durability, KvBackend, LogStore, SledBackend, StateMachine, StoreError, WriteBatch,
};
use gantry_control_plane::types::{MemberNode, NodeId, Raft, Request};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// sled whose flushes wait while the gate is closed.
struct GatedKv {
    inner: SledBackend,
    open: watch::Receiver<bool>,
}

impl KvBackend for GatedKv {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn apply(&self, tree: &str, batch: WriteBatch) -> Result<(), StoreError> {
        self.inner.apply(tree, batch)
    }
    fn range(&self, tree: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<Pair>, StoreError> {
        self.inner.range(tree, start, end)
    }
    fn last_in(
        &self,
        tree: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Option<Pair>, StoreError> {
        self.inner.last_in(tree, start, end)
    }
    fn clear(&self, tree: &str) -> Result<(), StoreError> {
        self.inner.clear(tree)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut open = self.open.clone();
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            self.inner.flush().await
        })
    }
}

const ID: NodeId = 7;

fn own_matched(raft: &Raft) -> Option<u64> {
    let m = raft.metrics().borrow().clone();
    m.replication?.get(&ID).copied().flatten().map(|l| l.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_appends_count_as_flushed_at_once_but_apply_waits_for_the_flush() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (gate, open) = watch::channel(true);
    let log_kv: Arc<dyn KvBackend> = Arc::new(GatedKv {
        inner: SledBackend::open(&dir.path().join("db")).unwrap(),
        open,
    });
    let sm_kv: Arc<dyn KvBackend> = Arc::new(SledBackend::open(&dir.path().join("state")).unwrap());
    let durability = Durability::new();
    let raft = Raft::new(
        ID,
        Arc::new(RaftTuning::default().to_config().unwrap()),
        GrpcNetwork::new("test").with_durability(durability.clone()),
        LogStore::with_early_leader_appends(log_kv, ID, durability.clone()),
        StateMachine::open(sm_kv, 100)
            .unwrap()
            .with_durability(durability),
    )
    .await
    .unwrap();
    let node = MemberNode {
        name: "s1".into(),
        addr: "127.0.0.1:1".into(),
    };
    raft.initialize(BTreeMap::from([(ID, node)])).await.unwrap();
    raft.wait(Some(DEADLINE))
        .metrics(
            |m| m.current_leader == Some(ID) && m.last_applied.is_some(),
            "leading",
        )
        .await
        .unwrap();
    let before = raft.metrics().borrow().last_log_index.unwrap();

    // Flushes now hang: the write's entry is appended, and the leader counts it as its own
    // flushed log at once (its progress reaches the entry) ...
    gate.send_replace(false);
    let write = tokio::spawn({
        let raft = raft.clone();
        async move {
            raft.client_write(Request::Create {
                kind: "Node".into(),
                name: "n1".into(),
                json: r#"{"kind":"Node","metadata":{"name":"n1"}}"#.into(),
            })
            .await
        }
    });
    let started = std::time::Instant::now();
    while own_matched(&raft) <= Some(before) {
        assert!(
            started.elapsed() < DEADLINE,
            "the leader's own progress stayed at {:?} while its flush was held: its appends \
             were not reported early",
            own_matched(&raft)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let last = raft.metrics().borrow().last_log_index;
    assert_eq!(own_matched(&raft), last);

    // ... but nothing is applied, and the writer is not answered, before the flush.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !write.is_finished(),
        "answered before its entry was flushed"
    );
    let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
    assert!(
        applied < last,
        "applied {applied:?} before the flush of {last:?}"
    );

    gate.send_replace(true);
    let answer = tokio::time::timeout(DEADLINE, write)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(raft.metrics().borrow().last_applied.map(|l| l.index), last);
    raft.shutdown().await.unwrap();
}
