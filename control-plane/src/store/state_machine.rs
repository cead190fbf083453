//! [`StateMachine`]: the object store replicated by Raft, and [`ObjectStore`], the read side
//! shared with the API server.
//!
//! The state lives in one of two trees, `sm_a` or `sm_b`; the key `current` of tree `sm_meta`
//! names the live one. In the live tree:
//! - `o/<kind>/<name>` → a [`StoredObject`] (JSON),
//! - `m/applied`, `m/membership` → openraft's applied state,
//! - `m/revision` → the store's revision: the revision of its last write, or the last applied
//!   log index if that is greater.
//!
//! Each log entry is applied together with `m/applied` and `m/revision` in one atomic batch,
//! a [`Request::Batch`] included: all its items or none are in the tree. A snapshot install
//! fills the other tree, flushes, then flips `current`, so a crash leaves either the old or the
//! new state, never a mix.
//!
//! Revisions: each write gets `max(previous revision + 1, log index)`, so an entry holding one
//! write is versioned at its log index (as before batches existed, and data written then has
//! no `m/revision`: its revision is `m/applied`), and the items of a batch get consecutive
//! revisions in order. Every member computes the same revisions from the same log.
//!
//! The watch history (the last changes, bounded) lives in memory, as Kubernetes' watch cache
//! does: writing each change a second time into sled, and deleting it again when it leaves
//! the window, was about half of the state machine's sled work (perf). After a restart or a
//! snapshot install a member's history starts at its revision; a watcher asking for an older
//! one is told to list again, as after a compaction. Data dirs written before kept the history
//! in `h/` keys; they are removed on open.

use super::{decode, encode, read_err, write_err, Durability, KvBackend, StoreError, WriteBatch};
use crate::types::{MemberNode, NodeId, Request, Response, StoredObject, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
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
/// Written by older versions; removed on open.
const LEGACY_COMPACTED: &[u8] = b"m/compacted";
const LEGACY_HISTORY: &[u8] = b"h/";
const LEGACY_HISTORY_END: &[u8] = b"h0"; // '0' follows '/'
const REVISION: &[u8] = b"m/revision";

/// Every tree the state machine writes.
pub const TREES: [&str; 4] = [SM_META, TREE_A, TREE_B, SNAPSHOT];

/// How many changes the watch history keeps by default.
pub const DEFAULT_HISTORY: u64 = 10_000;

/// Live changes buffered for watchers by default.
pub const DEFAULT_RING: usize = 1024;

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// The object was created.
    Added,
    /// The object was replaced.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One change of the store, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The watch history: the latest changes, oldest first.
struct History {
    changes: VecDeque<Arc<Change>>,
    /// Every change with a revision above `floor` and up to the store's revision is in
    /// `changes`: the oldest revision a watch can start from.
    floor: u64,
    /// How many changes are kept.
    cap: usize,
}

impl History {
    fn new(floor: u64, cap: u64) -> Self {
        History {
            changes: VecDeque::new(),
            floor,
            cap: usize::try_from(cap.max(1)).unwrap_or(usize::MAX),
        }
    }

    fn push(&mut self, change: Arc<Change>) {
        if self.changes.len() == self.cap {
            if let Some(old) = self.changes.pop_front() {
                self.floor = old.revision;
            }
        }
        self.changes.push_back(change);
    }

    /// Forgets every change: the history starts again at `floor`.
    fn reset(&mut self, floor: u64) {
        self.changes.clear();
        self.floor = floor;
    }

    /// The changes with a revision in `(from, upto]`.
    fn between(&self, from: u64, upto: u64) -> Vec<Arc<Change>> {
        let start = self.changes.partition_point(|c| c.revision <= from);
        self.changes
            .range(start..)
            .take_while(|c| c.revision <= upto)
            .cloned()
            .collect()
    }
}

/// The snapshot payload: every object of the store and its revision.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    objects: Vec<StoredObject>,
    /// Absent in snapshots taken before batches existed; the snapshot's last log index then.
    #[serde(default)]
    revision: Option<u64>,
}

/// Object writes of the entry being applied that are not in the tree yet: a later item of a
/// batch reads them (`None`: deleted).
type Staged = HashMap<Vec<u8>, Option<StoredObject>>;

struct Inner {
    kv: Arc<dyn KvBackend>,
    current: RwLock<&'static str>,
    revision: AtomicU64,
    history: Mutex<History>,
    events: broadcast::Sender<WatchItem>,
}

impl Inner {
    fn history(&self) -> MutexGuard<'_, History> {
        // Plain data: a panic while holding the lock leaves it usable.
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the watch history that older versions kept in `tree` (with its bound, first), a
/// slice at a time: the history is never read, so the slices need not be atomic together.
fn drop_legacy_history(kv: &dyn KvBackend, tree: &str) -> Result<(), StoreError> {
    let keys = kv.keys(tree, LEGACY_HISTORY, Some(LEGACY_HISTORY_END))?;
    if keys.is_empty() {
        return Ok(());
    }
    kv.apply(tree, WriteBatch::deleting([LEGACY_COMPACTED]))?;
    for slice in keys.chunks(1024) {
        kv.apply(tree, WriteBatch::deleting(slice.iter().cloned()))?;
    }
    tracing::info!(
        changes = keys.len(),
        "removed the watch history kept on disk by an older version"
    );
    Ok(())
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
}

impl ObjectStore {
    fn tree(&self) -> &'static str {
        match self.inner.current.read() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The store's revision: that of its last write, or the last applied log index if
    /// greater. Watching from it misses nothing written later.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// The oldest revision a watch can start from.
    pub fn compacted(&self) -> u64 {
        self.inner.history().floor
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
    ) -> Result<(Vec<Arc<Change>>, broadcast::Receiver<WatchItem>), WatchError> {
        let rx = self.inner.events.subscribe();
        // Only changes up to the revision read here, after subscribing: every one of them is
        // in the history (it is recorded before the revision moves), and every later one
        // reaches `rx` (the revision moves before its changes are sent).
        let upto = self.revision();
        let history = self.inner.history();
        if from < history.floor {
            return Err(WatchError::Compacted {
                requested: from,
                compacted: history.floor,
            });
        }
        Ok((history.between(from, upto), rx))
    }
}

/// The Raft state machine; owns writes to the object store.
pub struct StateMachine {
    store: ObjectStore,
    snapshot_seq: u64,
    /// When set, entries are applied only once the leader's early appends holding them are
    /// flushed (see [`Durability`]).
    durability: Option<Durability>,
}

/// Writes gathered into one sled batch at most when applying several entries at once.
const MAX_APPLY_WRITES: usize = 1024;

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
        let applied = applied.map(|l| l.index).unwrap_or(0);
        let revision: u64 = match kv.get(current, REVISION)? {
            Some(v) => decode(REVISION, &v)?,
            // Written before batches: revisions were log indexes.
            None => applied,
        }
        .max(applied);
        drop_legacy_history(&*kv, current)?;
        let (events, _) = broadcast::channel(ring.max(1));
        Ok(StateMachine {
            store: ObjectStore {
                inner: Arc::new(Inner {
                    kv,
                    current: RwLock::new(current),
                    revision: AtomicU64::new(revision),
                    history: Mutex::new(History::new(revision, history)),
                    events,
                }),
            },
            snapshot_seq: 0,
            durability: None,
        })
    }

    /// Applies entries only once `durability` reports them flushed in this member's log:
    /// required when the log store reports a leader's appends early (see [`Durability`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
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

    /// Applies the request of the entry at `index`, adding its writes to `batch` and
    /// advancing `revision` past each write; answers its changes in order.
    fn apply_request(
        &self,
        req: Request,
        index: u64,
        revision: &mut u64,
        staged: &mut Staged,
        batch: &mut WriteBatch,
    ) -> Result<(Response, Vec<Change>), StoreError> {
        match req {
            Request::Batch(items) => {
                let mut responses = Vec::with_capacity(items.len());
                let mut changes = Vec::with_capacity(items.len());
                for item in items {
                    if matches!(item, Request::Batch(_)) {
                        responses.push(Response::Invalid {
                            message: "batch: batches do not nest".into(),
                        });
                        continue;
                    }
                    let (response, change) =
                        self.apply_one(item, index, revision, staged, batch)?;
                    responses.push(response);
                    changes.extend(change);
                }
                Ok((Response::Batch(responses), changes))
            }
            req => {
                let (response, change) = self.apply_one(req, index, revision, staged, batch)?;
                Ok((response, change.into_iter().collect()))
            }
        }
    }

    /// Applies one write (not a batch) of the entry at `index`: checks it against the tree
    /// and `staged`, and if it writes, versions it at `max(revision + 1, index)`, advances
    /// `revision` and stages it.
    fn apply_one(
        &self,
        req: Request,
        index: u64,
        revision: &mut u64,
        staged: &mut Staged,
        batch: &mut WriteBatch,
    ) -> Result<(Response, Option<Change>), StoreError> {
        let (kind, name) = match &req {
            Request::Create { kind, name, .. }
            | Request::Update { kind, name, .. }
            | Request::Delete { kind, name, .. } => (kind.clone(), name.clone()),
            Request::Batch(_) => {
                return Ok((
                    Response::Invalid {
                        message: "batch: batches do not nest".into(),
                    },
                    None,
                ))
            }
        };
        let key = object_key(&kind, &name);
        let current = match staged.get(&key) {
            Some(object) => object.clone(),
            None => self.store.get(&kind, &name)?,
        };
        let next = revision.saturating_add(1).max(index);
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
                match versioned(&json, next, None) {
                    Ok(json) => (
                        ChangeType::Added,
                        StoredObject {
                            kind,
                            name,
                            resource_version: next,
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
                match versioned(&json, next, Some(&cur.json)) {
                    Ok(json) => (
                        ChangeType::Modified,
                        StoredObject {
                            kind,
                            name,
                            resource_version: next,
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
                let json = versioned(&cur.json, next, None).unwrap_or(cur.json);
                (
                    ChangeType::Deleted,
                    StoredObject {
                        kind,
                        name,
                        resource_version: next,
                        json,
                    },
                )
            }
            // Answered above.
            Request::Batch(_) => return Ok((Response::None, None)),
        };
        *revision = next;
        if change == ChangeType::Deleted {
            batch.delete(key.clone());
            staged.insert(key, None);
        } else {
            batch.put(key.clone(), encode(&object));
            staged.insert(key, Some(object.clone()));
        }
        let change = Change {
            change,
            object: object.clone(),
            revision: next,
        };
        Ok((
            Response::Written {
                object,
                revision: next,
            },
            Some(change),
        ))
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
    /// Every stored object as stored: the JSON of a [`StoredObject`].
    objects: Vec<Vec<u8>>,
    revision: u64,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, MemberNode>,
    snapshot_id: String,
    /// Set when the state could not be copied; the build then fails instead of storing an
    /// empty snapshot.
    error: Option<StoreError>,
    /// Where a failure is recorded (see [`Durability::fault`]).
    faults: Option<Durability>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let built = self.build().await;
        if let (Err(e), Some(faults)) = (&built, &self.faults) {
            faults.fault(format!("building a snapshot: {e}"));
        }
        built
    }
}

impl SnapshotBuilder {
    async fn build(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        if let Some(e) = self.error.take() {
            return Err(read_err(e));
        }
        let started = std::time::Instant::now();
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let objects = std::mem::take(&mut self.objects);
        let count = objects.len();
        let (kv, revision, stored_meta) = (self.kv.clone(), self.revision, encode(&meta));
        // Off the member's runtime: with 10,000 objects this is megabytes to copy and write,
        // and the runtime has one thread.
        let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, StoreError> {
            let body = snapshot_body(&objects, revision)?;
            let mut batch = WriteBatch::default();
            batch.put(SNAP_META, stored_meta);
            batch.put(SNAP_DATA, body.clone());
            kv.apply(SNAPSHOT, batch)?;
            Ok(body)
        })
        .await
        .map_err(|e| write_err(StoreError::Flush(format!("snapshot task: {e}"))))?
        .map_err(write_err)?;
        // Logs are purged after this returns: the snapshot and the state it reflects must be
        // on disk first (one flush covers every tree).
        self.kv.flush().await.map_err(write_err)?;
        tracing::info!(
            objects = count,
            bytes = body.len(),
            elapsed = ?started.elapsed(),
            snapshot = %meta.snapshot_id,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(body)),
        })
    }
}

/// The JSON of a [`SnapshotBody`] made from stored objects as they are stored, without
/// decoding and encoding each again; each is checked to be one JSON value first.
fn snapshot_body(objects: &[Vec<u8>], revision: u64) -> Result<Vec<u8>, StoreError> {
    let size = objects.iter().map(|o| o.len() + 1).sum::<usize>() + 48;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(b"{\"objects\":[");
    for (i, object) in objects.iter().enumerate() {
        serde_json::from_slice::<serde::de::IgnoredAny>(object).map_err(|e| {
            StoreError::Corrupt {
                key: format!("stored object {i} of the snapshot"),
                message: e.to_string(),
            }
        })?;
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(object);
    }
    body.extend_from_slice(format!("],\"revision\":{revision}}}").as_bytes());
    Ok(body)
}

impl StateMachine {
    /// Applies `entries` (see [`RaftStateMachine::apply`]).
    async fn apply_entries(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, StorageError<NodeId>> {
        if let (Some(durability), Some(last)) = (&self.durability, entries.last()) {
            durability
                .wait_durable(last.log_id.index)
                .await
                .map_err(|e| write_err(StoreError::Flush(e)))?;
        }
        let mut responses = Vec::with_capacity(entries.len());
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            // Entries applied together share one atomic batch: all of them with the last one's
            // `m/applied`, or none.
            let mut revision = self.store.revision();
            let mut batch = WriteBatch::default();
            let mut staged = Staged::new();
            let mut changes = Vec::new();
            let mut applied = None;
            while batch.ops.len() < MAX_APPLY_WRITES {
                let Some(entry) = entries.next() else { break };
                let log_id = entry.log_id;
                let response = match entry.payload {
                    EntryPayload::Blank => Response::None,
                    EntryPayload::Normal(req) => {
                        let (response, more) = self
                            .apply_request(
                                req,
                                log_id.index,
                                &mut revision,
                                &mut staged,
                                &mut batch,
                            )
                            .map_err(write_err)?;
                        changes.extend(more);
                        response
                    }
                    EntryPayload::Membership(m) => {
                        batch.put(MEMBERSHIP, encode(&StoredMembership::new(Some(log_id), m)));
                        Response::None
                    }
                };
                revision = revision.max(log_id.index);
                applied = Some(log_id);
                responses.push(response);
            }
            batch.put(APPLIED, encode(&applied));
            batch.put(REVISION, encode(&revision));
            self.kv()
                .apply(self.store.tree(), batch)
                .map_err(write_err)?;
            let inner = &self.store.inner;
            let changes: Vec<Arc<Change>> = changes.into_iter().map(Arc::new).collect();
            // Into the history before the revision moves, sent after (see `watch`).
            {
                let mut history = inner.history();
                for change in &changes {
                    history.push(change.clone());
                }
            }
            inner.revision.store(revision, Ordering::Release);
            for change in changes {
                // No receiver is not an error: nobody watches.
                let _ = inner.events.send(WatchItem::Change(change));
            }
        }
        Ok(responses)
    }
}

impl StateMachine {
    /// Installs a received snapshot (see [`RaftStateMachine::install_snapshot`]).
    async fn install(
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
        let revision = body.revision.unwrap_or(last_index).max(last_index);
        self.kv().clear(new).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        for object in &body.objects {
            batch.put(object_key(&object.kind, &object.name), encode(object));
        }
        batch.put(APPLIED, encode(&meta.last_log_id));
        batch.put(MEMBERSHIP, encode(&meta.last_membership));
        batch.put(REVISION, encode(&revision));
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
        inner.history().reset(revision);
        inner.revision.store(revision, Ordering::Release);
        let _ = inner.events.send(WatchItem::Reset);
        self.kv().clear(old).map_err(write_err)?;
        Ok(())
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
        let applied = self.apply_entries(entries.into_iter().collect()).await;
        if let (Err(e), Some(durability)) = (&applied, &self.durability) {
            durability.fault(format!("applying to the state machine: {e}"));
        }
        applied
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
            // Read in the same task as the tree, so it matches `objects` and `applied`.
            revision: self.store.revision(),
            applied,
            membership,
            snapshot_id: format!(
                "{}-{}",
                applied.map(|l| l.index).unwrap_or(0),
                self.snapshot_seq
            ),
            error,
            faults: self.durability.clone(),
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
        let installed = self.install(meta, snapshot).await;
        if let (Err(e), Some(durability)) = (&installed, &self.durability) {
            durability.fault(format!("installing a snapshot: {e}"));
        }
        installed
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
            Vec<Vec<u8>>,
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, MemberNode>,
        ),
        StoreError,
    > {
        let tree = self.store.tree();
        let objects = self
            .kv()
            .range(tree, b"o/", Some(b"o0"))?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
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
        // sled releases its directory lock from a background thread after the last handle is
        // dropped: a reopen right after a drop waits for it (1 run in ~20 found it held).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let backend = loop {
            match SledBackend::open(dir) {
                Ok(b) => break b,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let kv: Arc<dyn KvBackend> = Arc::new(backend);
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
        assert_eq!(history.len(), 4);
    }

    #[tokio::test]
    async fn after_reopen_history_starts_at_the_revision_and_legacy_history_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let create = |i: u64, name: &str| {
            entry(
                i,
                Request::Create {
                    kind: "Node".into(),
                    name: name.into(),
                    json: node(name),
                },
            )
        };
        {
            let mut sm = open(dir.path(), 100);
            sm.apply([create(1, "a"), create(2, "b")]).await.unwrap();
            let (history, _) = sm.object_store().watch(0).unwrap();
            assert_eq!(history.len(), 2);
            // What an older version left: history on disk and its compaction bound.
            let mut legacy = WriteBatch::default();
            for rev in 1..=2u64 {
                let mut k = LEGACY_HISTORY.to_vec();
                k.extend_from_slice(&rev.to_be_bytes());
                legacy.put(k, b"{}".to_vec());
            }
            legacy.put(LEGACY_COMPACTED, b"0".to_vec());
            sm.kv().apply(TREE_A, legacy).unwrap();
        }
        let mut sm = open(dir.path(), 100);
        let store = sm.object_store();
        assert_eq!(store.revision(), 2);
        assert_eq!(store.compacted(), 2);
        match store.watch(1) {
            Err(WatchError::Compacted {
                requested: 1,
                compacted: 2,
            }) => {}
            other => panic!("watch from before the restart: {:?}", other.map(|r| r.0)),
        }
        let (history, mut live) = store.watch(2).unwrap();
        assert!(history.is_empty());
        sm.apply([create(3, "c")]).await.unwrap();
        match live.try_recv().unwrap() {
            WatchItem::Change(c) => assert_eq!((c.revision, c.object.name.as_str()), (3, "c")),
            WatchItem::Reset => panic!("unexpected reset"),
        }
        let (history, _) = store.watch(2).unwrap();
        assert_eq!(history.len(), 1);
        let kv = sm.kv();
        assert!(kv
            .keys(TREE_A, LEGACY_HISTORY, Some(LEGACY_HISTORY_END))
            .unwrap()
            .is_empty());
        assert!(kv.get(TREE_A, LEGACY_COMPACTED).unwrap().is_none());
        assert!(store.get("Node", "b").unwrap().is_some());
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

    fn create(name: &str) -> Request {
        Request::Create {
            kind: "Node".into(),
            name: name.into(),
            json: node(name),
        }
    }

    fn update(name: &str, expected: u64) -> Request {
        Request::Update {
            kind: "Node".into(),
            name: name.into(),
            expected,
            json: node(name),
        }
    }

    #[tokio::test]
    async fn batch_checks_each_item_alone_and_versions_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path(), 100);
        let store = sm.object_store();
        sm.apply([entry(1, create("a")), entry(2, create("b"))])
            .await
            .unwrap();
        let (_, mut live) = store.watch(store.revision()).unwrap();

        // One entry: a good CAS, a stale one, a create of an existing object, a create, an
        // update of that create within the same batch, a delete and a nested batch.
        let batch = Request::Batch(vec![
            update("a", 1),
            update("b", 1),
            create("a"),
            create("c"),
            update("c", 4),
            Request::Delete {
                kind: "Node".into(),
                name: "b".into(),
                expected: Some(2),
            },
            Request::Batch(vec![create("d")]),
        ]);
        let r = sm.apply([entry(3, batch)]).await.unwrap();
        let Response::Batch(items) = &r[0] else {
            panic!("not a batch response: {r:?}");
        };
        let revisions: Vec<Option<u64>> = items
            .iter()
            .map(|i| match i {
                Response::Written { revision, .. } => Some(*revision),
                _ => None,
            })
            .collect();
        // The first write of entry 3 is versioned at 3, the next ones follow.
        assert_eq!(
            revisions,
            vec![Some(3), None, None, Some(4), Some(5), Some(6), None]
        );
        assert_eq!(items[1], Response::Conflict { current: 2 });
        assert_eq!(items[2], Response::AlreadyExists { current: 3 });
        assert!(matches!(items[6], Response::Invalid { .. }));
        assert_eq!(store.revision(), 6);
        assert_eq!(store.get("Node", "a").unwrap().unwrap().resource_version, 3);
        assert_eq!(store.get("Node", "c").unwrap().unwrap().resource_version, 5);
        assert!(store.get("Node", "b").unwrap().is_none());
        assert!(store.get("Node", "d").unwrap().is_none());

        // Watchers get one change per written item, in revision order, live and from history.
        let mut seen = Vec::new();
        for _ in 0..4 {
            match live.try_recv().unwrap() {
                WatchItem::Change(c) => seen.push((c.revision, c.change, c.object.name.clone())),
                WatchItem::Reset => panic!("unexpected reset"),
            }
        }
        assert!(live.try_recv().is_err());
        let want = vec![
            (3, ChangeType::Modified, "a".to_string()),
            (4, ChangeType::Added, "c".to_string()),
            (5, ChangeType::Modified, "c".to_string()),
            (6, ChangeType::Deleted, "b".to_string()),
        ];
        assert_eq!(seen, want);
        let (history, _) = store.watch(2).unwrap();
        let history: Vec<_> = history
            .iter()
            .map(|c| (c.revision, c.change, c.object.name.clone()))
            .collect();
        assert_eq!(history, want);

        // The next entry continues after the batch's revisions, not at its log index.
        let r = sm.apply([entry(4, update("a", 3))]).await.unwrap();
        assert!(matches!(r[0], Response::Written { revision: 7, .. }));
        // A blank entry past the revision raises it to its index, as before batches.
        sm.apply([Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 9),
            payload: EntryPayload::Blank,
        }])
        .await
        .unwrap();
        assert_eq!(store.revision(), 9);
        let r = sm.apply([entry(10, update("a", 7))]).await.unwrap();
        assert!(matches!(r[0], Response::Written { revision: 10, .. }));
    }

    #[tokio::test]
    async fn batch_is_stored_with_last_applied_and_revision_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = open(dir.path(), 100);
            let batch = Request::Batch((0..50).map(|i| create(&format!("n{i}"))).collect());
            sm.apply([entry(1, batch)]).await.unwrap();
            // Nothing of an entry whose apply fails half-way may stay: here nothing fails, so
            // everything and the applied index are there together.
            let (applied, _) = sm.applied_state().await.unwrap();
            assert_eq!(applied.map(|l| l.index), Some(1));
            sm.kv().flush().await.unwrap();
        }
        let mut sm = open(dir.path(), 100);
        let store = sm.object_store();
        let (objects, revision) = store.list("Node").unwrap();
        assert_eq!(objects.len(), 50);
        assert_eq!(revision, 50);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
        // Revisions continue where they were, not at the log index.
        let r = sm.apply([entry(2, create("after"))]).await.unwrap();
        assert!(matches!(r[0], Response::Written { revision: 51, .. }));
    }

    #[tokio::test]
    async fn snapshot_carries_the_revision_and_old_snapshots_use_the_log_index() {
        let src_dir = tempfile::tempdir().unwrap();
        let mut src = open(src_dir.path(), 100);
        let batch = Request::Batch((0..5).map(|i| create(&format!("n{i}"))).collect());
        src.apply([entry(1, batch)]).await.unwrap();
        let snap = src
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let dst_dir = tempfile::tempdir().unwrap();
        let mut dst = open(dst_dir.path(), 100);
        dst.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let store = dst.object_store();
        assert_eq!(store.revision(), 5);
        assert_eq!(store.compacted(), 5);
        for i in 0..5 {
            let o = store.get("Node", &format!("n{i}")).unwrap().unwrap();
            assert_eq!(o.resource_version, i + 1);
        }
        let r = dst.apply([entry(2, create("x"))]).await.unwrap();
        assert!(matches!(r[0], Response::Written { revision: 6, .. }));

        // A snapshot from before batches has no revision: its last log index is.
        let old_body = format!(
            r#"{{"objects":[{{"kind":"Node","name":"o","resource_version":7,"json":{:?}}}]}}"#,
            node("o")
        );
        let mut meta = snap.meta.clone();
        meta.last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), 7));
        let old_dir = tempfile::tempdir().unwrap();
        let mut old = open(old_dir.path(), 100);
        old.install_snapshot(&meta, Box::new(Cursor::new(old_body.into_bytes())))
            .await
            .unwrap();
        assert_eq!(old.object_store().revision(), 7);
        assert!(old.object_store().get("Node", "o").unwrap().is_some());
    }

    #[test]
    fn a_snapshot_body_of_stored_objects_is_what_serde_writes_and_a_corrupt_one_is_refused() {
        let objects: Vec<StoredObject> = (0..3)
            .map(|i| StoredObject {
                kind: "Node".into(),
                name: format!("n{i}"),
                resource_version: i,
                json: node(&format!("n{i}")),
            })
            .collect();
        let stored: Vec<Vec<u8>> = objects.iter().map(encode).collect();
        let body = snapshot_body(&stored, 9).unwrap();
        let expected = encode(&SnapshotBody {
            objects,
            revision: Some(9),
        });
        assert_eq!(
            String::from_utf8(body).unwrap(),
            String::from_utf8(expected).unwrap()
        );
        assert_eq!(
            snapshot_body(&[], 0).unwrap(),
            br#"{"objects":[],"revision":0}"#
        );
        let mut bad = stored.clone();
        bad[1] = b"{\"kind\":".to_vec();
        let err = snapshot_body(&bad, 9).unwrap_err();
        assert!(err.to_string().contains("stored object 1"), "{err}");
    }

    #[test]
    fn entries_written_before_batches_still_decode() {
        // The JSON of a log entry's request as the first release wrote it.
        let old = r#"{"Update":{"kind":"Replica","name":"web-1","expected":3,"json":"{}"}}"#;
        let req: Request = serde_json::from_str(old).unwrap();
        assert!(matches!(req, Request::Update { expected: 3, .. }));
        let batch = Request::Batch(vec![req.clone(), create("a")]);
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), batch);
    }
}
