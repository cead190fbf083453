//! [`StateMachine`]: the object store replicated by Raft, and [`ObjectStore`], the read side
//! shared with the API server.
//!
//! The state lives in one of two trees, `sm_a` or `sm_b`; the key `current` of tree `sm_meta`
//! names the live one. In the live tree:
//! - `o/<kind>/<name>` → a [`StoredObject`] (JSON),
//! - `h/<revision BE>` → a [`Change`] (the watch history, bounded),
//! - `m/applied`, `m/membership`, `m/compacted` → openraft's applied state and the oldest
//!   revision watch can resume from.
//!
//! Each log entry is applied together with `m/applied` in one atomic batch. A snapshot install
//! fills the other tree, flushes, then flips `current`, so a crash leaves either the old or the
//! new state, never a mix.

use super::{decode, encode, read_err, write_err, KvBackend, StoreError, WriteBatch};
use crate::types::{MemberNode, NodeId, Request, Response, StoredObject, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;

const SM_META: &str = "sm_meta";
const CURRENT: &[u8] = b"current";
const TREE_A: &str = "sm_a";
const TREE_B: &str = "sm_b";
const SNAPSHOT: &str = "sm_snapshot";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";
const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const COMPACTED: &[u8] = b"m/compacted";

/// How many changes the watch history keeps by default.
pub const DEFAULT_HISTORY: u64 = 10_000;

/// Live changes buffered for watchers by default.
pub const DEFAULT_RING: usize = 1024;

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeType {
    /// The object was created.
    Added,
    /// The object was replaced.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One change of the store, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What happened.
    pub change: ChangeType,
    /// The object after the change (for a delete: its last state, versioned at the delete).
    pub object: StoredObject,
    /// Revision of the change.
    pub revision: u64,
}

/// What live watchers receive.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// A change, in revision order.
    Change(Arc<Change>),
    /// The state was replaced by a snapshot: watchers must list again.
    Reset,
}

fn object_key(kind: &str, name: &str) -> Vec<u8> {
    format!("o/{kind}/{name}").into_bytes()
}

fn history_key(rev: u64) -> Vec<u8> {
    let mut k = b"h/".to_vec();
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// The snapshot payload: every object of the store.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    objects: Vec<StoredObject>,
}

struct Inner {
    kv: Arc<dyn KvBackend>,
    current: RwLock<&'static str>,
    applied: AtomicU64,
    compacted: AtomicU64,
    history: u64,
    events: broadcast::Sender<WatchItem>,
}

/// The read side of the object store, cheap to clone; shared by the API server.
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Inner>,
}

/// Errors of a watch start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The history no longer reaches back to the requested revision.
    #[error(
        "revision {requested} compacted, list again (oldest watchable revision is {compacted})"
    )]
    Compacted {
        /// The requested revision.
        requested: u64,
        /// The compaction revision.
        compacted: u64,
    },
    /// Reading the history failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ObjectStore {
    fn tree(&self) -> &'static str {
        match self.inner.current.read() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The last applied log index: the store's revision.
    pub fn revision(&self) -> u64 {
        self.inner.applied.load(Ordering::Acquire)
    }

    /// The oldest revision a watch can start from.
    pub fn compacted(&self) -> u64 {
        self.inner.compacted.load(Ordering::Acquire)
    }

    /// One object.
    pub fn get(&self, kind: &str, name: &str) -> Result<Option<StoredObject>, StoreError> {
        let key = object_key(kind, name);
        match self.inner.kv.get(self.tree(), &key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Every object of `kind`, by name, and the revision they reflect at least.
    pub fn list(&self, kind: &str) -> Result<(Vec<StoredObject>, u64), StoreError> {
        let revision = self.revision();
        let start = format!("o/{kind}/").into_bytes();
        let end = format!("o/{kind}0").into_bytes(); // '0' follows '/'
        let items = self
            .inner
            .kv
            .range(self.tree(), &start, Some(&end))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<Vec<StoredObject>, _>>()?;
        Ok((items, revision))
    }

    /// Subscribes to live changes, then returns the history of changes after `from` (all
    /// kinds). The caller forwards history first and then live changes with a greater revision.
    pub fn watch(
        &self,
        from: u64,
    ) -> Result<(Vec<Change>, broadcast::Receiver<WatchItem>), WatchError> {
        let rx = self.inner.events.subscribe();
        let check = |store: &Self| {
            let compacted = store.compacted();
            if from < compacted {
                Err(WatchError::Compacted {
                    requested: from,
                    compacted,
                })
            } else {
                Ok(())
            }
        };
        check(self)?;
        let history = self
            .inner
            .kv
            .range(
                self.tree(),
                &history_key(from.saturating_add(1)),
                Some(b"h0"),
            )?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<Vec<Change>, _>>()?;
        // A compaction may have run while reading; then the history may have holes.
        check(self)?;
        Ok((history, rx))
    }
}

/// The Raft state machine; owns writes to the object store.
pub struct StateMachine {
    store: ObjectStore,
    snapshot_seq: u64,
}

impl StateMachine {
    /// Opens the state machine on `kv`, keeping `history` changes for watch.
    pub fn open(kv: Arc<dyn KvBackend>, history: u64) -> Result<Self, StoreError> {
        Self::open_with_ring(kv, history, DEFAULT_RING)
    }

    /// [`StateMachine::open`] with `ring` live changes buffered for all watchers together; a
    /// watcher more than `ring` changes behind is cut off.
    pub fn open_with_ring(
        kv: Arc<dyn KvBackend>,
        history: u64,
        ring: usize,
    ) -> Result<Self, StoreError> {
        let current = match kv.get(SM_META, CURRENT)?.as_deref() {
            Some(b"sm_b") => TREE_B,
            _ => TREE_A,
        };
        let applied: Option<LogId<NodeId>> = match kv.get(current, APPLIED)? {
            Some(v) => decode(APPLIED, &v)?,
            None => None,
        };
        let compacted: u64 = match kv.get(current, COMPACTED)? {
            Some(v) => decode(COMPACTED, &v)?,
            None => 0,
        };
        let (events, _) = broadcast::channel(ring.max(1));
        Ok(StateMachine {
            store: ObjectStore {
                inner: Arc::new(Inner {
                    kv,
                    current: RwLock::new(current),
                    applied: AtomicU64::new(applied.map(|l| l.index).unwrap_or(0)),
                    compacted: AtomicU64::new(compacted),
                    history: history.max(1),
                    events,
                }),
            },
            snapshot_seq: 0,
        })
    }

    /// The read side, for the API server.
    pub fn object_store(&self) -> ObjectStore {
        self.store.clone()
    }

    fn kv(&self) -> &Arc<dyn KvBackend> {
        &self.store.inner.kv
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.kv().get(self.store.tree(), key)? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Applies one request at `revision`, adding its writes to `batch`.
    fn apply_request(
        &self,
        req: Request,
        revision: u64,
        batch: &mut WriteBatch,
    ) -> Result<(Response, Option<Change>), StoreError> {
        let (kind, name) = match &req {
            Request::Create { kind, name, .. }
            | Request::Update { kind, name, .. }
            | Request::Delete { kind, name, .. } => (kind.clone(), name.clone()),
        };
        let current = self.store.get(&kind, &name)?;
        let key = object_key(&kind, &name);
        let (change, object) = match req {
            Request::Create { json, .. } => {
                if let Some(cur) = current {
                    return Ok((
                        Response::AlreadyExists {
                            current: cur.resource_version,
                        },
                        None,
                    ));
                }
                match versioned(&json, revision, None) {
                    Ok(json) => (
                        ChangeType::Added,
                        StoredObject {
                            kind,
                            name,
                            resource_version: revision,
                            json,
                        },
                    ),
                    Err(message) => return Ok((Response::Invalid { message }, None)),
                }
            }
            Request::Update { expected, json, .. } => {
                let Some(cur) = current else {
                    return Ok((Response::NotFound, None));
                };
                if cur.resource_version != expected {
                    return Ok((
                        Response::Conflict {
                            current: cur.resource_version,
                        },
                        None,
                    ));
                }
                match versioned(&json, revision, Some(&cur.json)) {
                    Ok(json) => (
                        ChangeType::Modified,
                        StoredObject {
                            kind,
                            name,
                            resource_version: revision,
                            json,
                        },
                    ),
                    Err(message) => return Ok((Response::Invalid { message }, None)),
                }
            }
            Request::Delete { expected, .. } => {
                let Some(cur) = current else {
                    return Ok((Response::NotFound, None));
                };
                if expected.is_some_and(|e| e != cur.resource_version) {
                    return Ok((
                        Response::Conflict {
                            current: cur.resource_version,
                        },
                        None,
                    ));
                }
                let json = versioned(&cur.json, revision, None).unwrap_or(cur.json);
                (
                    ChangeType::Deleted,
                    StoredObject {
                        kind,
                        name,
                        resource_version: revision,
                        json,
                    },
                )
            }
        };
        if change == ChangeType::Deleted {
            batch.delete(key);
        } else {
            batch.put(key, encode(&object));
        }
        let change = Change {
            change,
            object: object.clone(),
            revision,
        };
        batch.put(history_key(revision), encode(&change));
        Ok((Response::Written { object, revision }, Some(change)))
    }

    /// Adds the deletion of history older than the window to `batch`, if due.
    fn compact_history(
        &self,
        revision: u64,
        batch: &mut WriteBatch,
    ) -> Result<Option<u64>, StoreError> {
        let inner = &self.store.inner;
        let compacted = inner.compacted.load(Ordering::Acquire);
        // Compact in steps of an eighth of the window to keep the scans rare.
        if revision < compacted + inner.history + inner.history / 8 + 1 {
            return Ok(None);
        }
        let new_compacted = revision - inner.history;
        let old = self.kv().range(
            self.store.tree(),
            &history_key(compacted),
            Some(&history_key(new_compacted.saturating_add(1))),
        )?;
        for (k, _) in old {
            batch.delete(k);
        }
        batch.put(COMPACTED, encode(&new_compacted));
        Ok(Some(new_compacted))
    }
}

/// `json` with `metadata.resourceVersion` set to `revision` and, for an update, the stored
/// `metadata.creationTimestamp` kept.
fn versioned(json: &str, revision: u64, previous: Option<&str>) -> Result<String, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("object: invalid JSON: {e}"))?;
    let meta = value
        .get_mut("metadata")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| "metadata: missing".to_string())?;
    meta.insert(
        "resourceVersion".into(),
        serde_json::Value::String(revision.to_string()),
    );
    if let Some(prev) = previous {
        let created = serde_json::from_str::<serde_json::Value>(prev)
            .ok()
            .and_then(|p| p.pointer("/metadata/creationTimestamp").cloned());
        if let Some(created) = created {
            meta.insert("creationTimestamp".into(), created);
        }
    }
    serde_json::to_string(&value).map_err(|e| format!("object: {e}"))
}

/// Builds snapshots from a copy of the state taken inside the state machine's task.
pub struct SnapshotBuilder {
    kv: Arc<dyn KvBackend>,
    objects: Vec<StoredObject>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, MemberNode>,
    snapshot_id: String,
    /// Set when the state could not be copied; the build then fails instead of storing an
    /// empty snapshot.
    error: Option<StoreError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        if let Some(e) = self.error.take() {
            return Err(read_err(e));
        }
        let body = encode(&SnapshotBody {
            objects: std::mem::take(&mut self.objects),
        });
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let mut batch = WriteBatch::default();
        batch.put(SNAP_META, encode(&meta));
        batch.put(SNAP_DATA, body.clone());
        self.kv.apply(SNAPSHOT, batch).map_err(write_err)?;
        // Logs are purged after this returns: the snapshot and the state it reflects must be
        // on disk first (one flush covers every tree).
        self.kv.flush().await.map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(body)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>), StorageError<NodeId>>
    {
        let applied = self
            .get_meta::<Option<LogId<NodeId>>>(APPLIED)
            .map_err(read_err)?
            .flatten();
        let membership = self
            .get_meta(MEMBERSHIP)
            .map_err(read_err)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let mut batch = WriteBatch::default();
            batch.put(APPLIED, encode(&Some(log_id)));
            let (response, change) = match entry.payload {
                EntryPayload::Blank => (Response::None, None),
                EntryPayload::Normal(req) => self
                    .apply_request(req, log_id.index, &mut batch)
                    .map_err(write_err)?,
                EntryPayload::Membership(m) => {
                    batch.put(MEMBERSHIP, encode(&StoredMembership::new(Some(log_id), m)));
                    (Response::None, None)
                }
            };
            let compacted = self
                .compact_history(log_id.index, &mut batch)
                .map_err(write_err)?;
            self.kv()
                .apply(self.store.tree(), batch)
                .map_err(write_err)?;
            let inner = &self.store.inner;
            if let Some(c) = compacted {
                inner.compacted.store(c, Ordering::Release);
            }
            inner.applied.store(log_id.index, Ordering::Release);
            if let Some(change) = change {
                // No receiver is not an error: nobody watches.
                let _ = inner.events.send(WatchItem::Change(Arc::new(change)));
            }
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        // Copy the state here, inside the state machine's task, so the snapshot is consistent
        // with `applied` even though it is serialized and stored concurrently with later
        // applies.
        let (objects, applied, membership, error) = match self.snapshot_state() {
            Ok((o, a, m)) => (o, a, m, None),
            Err(e) => (Vec::new(), None, StoredMembership::default(), Some(e)),
        };
        SnapshotBuilder {
            kv: self.kv().clone(),
            objects,
            applied,
            membership,
            snapshot_id: format!(
                "{}-{}",
                applied.map(|l| l.index).unwrap_or(0),
                self.snapshot_seq
            ),
            error,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = decode(b"snapshot", &data).map_err(|e| {
            StorageError::from(openraft::StorageIOError::read_snapshot(
                Some(meta.signature()),
                &e,
            ))
        })?;
        let old = self.store.tree();
        let new = if old == TREE_A { TREE_B } else { TREE_A };
        let last_index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.kv().clear(new).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        for object in &body.objects {
            batch.put(object_key(&object.kind, &object.name), encode(object));
        }
        batch.put(APPLIED, encode(&meta.last_log_id));
        batch.put(MEMBERSHIP, encode(&meta.last_membership));
        batch.put(COMPACTED, encode(&last_index));
        self.kv().apply(new, batch).map_err(write_err)?;
        let mut snap = WriteBatch::default();
        snap.put(SNAP_META, encode(meta));
        snap.put(SNAP_DATA, data);
        self.kv().apply(SNAPSHOT, snap).map_err(write_err)?;
        self.kv().flush().await.map_err(write_err)?;
        // The flip: one key names the live tree.
        let mut flip = WriteBatch::default();
        flip.put(CURRENT, new.as_bytes());
        self.kv().apply(SM_META, flip).map_err(write_err)?;
        self.kv().flush().await.map_err(write_err)?;
        let inner = &self.store.inner;
        match inner.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        inner.applied.store(last_index, Ordering::Release);
        inner.compacted.store(last_index, Ordering::Release);
        let _ = inner.events.send(WatchItem::Reset);
        self.kv().clear(old).map_err(write_err)?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let meta = self.kv().get(SNAPSHOT, SNAP_META).map_err(read_err)?;
        let data = self.kv().get(SNAPSHOT, SNAP_DATA).map_err(read_err)?;
        match (meta, data) {
            (Some(meta), Some(data)) => Ok(Some(Snapshot {
                meta: decode(SNAP_META, &meta).map_err(read_err)?,
                snapshot: Box::new(Cursor::new(data)),
            })),
            _ => Ok(None),
        }
    }
}

impl StateMachine {
    #[allow(clippy::type_complexity)]
    fn snapshot_state(
        &self,
    ) -> Result<
        (
            Vec<StoredObject>,
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, MemberNode>,
        ),
        StoreError,
    > {
        let tree = self.store.tree();
        let objects = self
            .kv()
            .range(tree, b"o/", Some(b"o0"))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<Vec<StoredObject>, _>>()?;
        let applied = self.get_meta::<Option<LogId<NodeId>>>(APPLIED)?.flatten();
        let membership = self.get_meta(MEMBERSHIP)?.unwrap_or_default();
        Ok((objects, applied, membership))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledBackend;
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    fn entry(index: u64, req: Request) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    fn node(name: &str) -> String {
        format!(r#"{{"kind":"Node","metadata":{{"name":"{name}"}}}}"#)
    }

    fn open(dir: &std::path::Path, history: u64) -> StateMachine {
        let kv: Arc<dyn KvBackend> = Arc::new(SledBackend::open(dir).unwrap());
        StateMachine::open(kv, history).unwrap()
    }

    #[tokio::test]
    async fn cas_is_checked_in_apply_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path(), 4);
        let create = |i: u64| {
            entry(
                i,
                Request::Create {
                    kind: "Node".into(),
                    name: "a".into(),
                    json: node("a"),
                },
            )
        };
        let r = sm.apply([create(1), create(2)]).await.unwrap();
        assert!(matches!(r[0], Response::Written { revision: 1, .. }));
        assert_eq!(r[1], Response::AlreadyExists { current: 1 });
        let update = |i, expected| {
            entry(
                i,
                Request::Update {
                    kind: "Node".into(),
                    name: "a".into(),
                    expected,
                    json: node("a"),
                },
            )
        };
        let r = sm.apply([update(3, 1), update(4, 1)]).await.unwrap();
        assert!(matches!(r[0], Response::Written { revision: 3, .. }));
        assert_eq!(r[1], Response::Conflict { current: 3 });
        let store = sm.object_store();
        let stored = store.get("Node", "a").unwrap().unwrap();
        assert_eq!(stored.resource_version, 3);
        assert!(stored.json.contains(r#""resourceVersion":"3""#));

        // Past the window, old history is compacted and watch from it is refused.
        let more: Vec<_> = (5..20).map(|i| update(i, i - 2)).collect();
        sm.apply(more).await.unwrap();
        assert!(store.compacted() > 1);
        assert!(matches!(store.watch(1), Err(WatchError::Compacted { .. })));
        let (history, _) = store.watch(store.compacted()).unwrap();
        assert!(!history.is_empty() && history.len() <= 8);
    }

    #[tokio::test]
    async fn snapshot_install_replaces_the_state_and_survives_reopen() {
        let src_dir = tempfile::tempdir().unwrap();
        let mut src = open(src_dir.path(), 100);
        src.apply([entry(
            1,
            Request::Create {
                kind: "Node".into(),
                name: "x".into(),
                json: node("x"),
            },
        )])
        .await
        .unwrap();
        let snap = src
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let dst_dir = tempfile::tempdir().unwrap();
        {
            let mut dst = open(dst_dir.path(), 100);
            dst.apply([entry(
                1,
                Request::Create {
                    kind: "Node".into(),
                    name: "old".into(),
                    json: node("old"),
                },
            )])
            .await
            .unwrap();
            dst.install_snapshot(&snap.meta, snap.snapshot)
                .await
                .unwrap();
            let store = dst.object_store();
            assert!(store.get("Node", "old").unwrap().is_none());
            assert!(store.get("Node", "x").unwrap().is_some());
        }
        // The pointer flip is durable: reopening reads the installed tree.
        let mut dst = open(dst_dir.path(), 100);
        assert!(dst.object_store().get("Node", "x").unwrap().is_some());
        let (applied, _) = dst.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
    }
}
