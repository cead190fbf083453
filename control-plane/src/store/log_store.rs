//! [`LogStore`]: the Raft log, vote, committed and purged pointers on a [`KvBackend`].
//!
//! Tree `raft_log` maps the big-endian log index to the entry's JSON; tree `raft_meta` holds
//! `vote`, `committed` and `last_purged`. Votes are flushed before `save_vote` returns.
//! Appends are written at once and handed to a flusher task that group-commits: one flush
//! covers every append queued before it, and the callbacks fire in append order after it.
//! With [`LogStore::with_early_leader_appends`], a leader's own appends are reported flushed
//! at once and their flush is tracked by a [`Durability`] instead (see there).
// openraft's `StorageError` is large by design and is the error type of its traits.
#![allow(clippy::result_large_err)]

use super::{decode, encode, read_err, write_err, Durability, KvBackend, WriteBatch};
use crate::types::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

const LOG: &str = "raft_log";
const META: &str = "raft_meta";
const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

/// The Raft log storage of one member.
#[derive(Clone)]
pub struct LogStore {
    kv: Arc<dyn KvBackend>,
    flusher: mpsc::UnboundedSender<Flush>,
    early: Option<Arc<EarlyAppends>>,
}

/// What the flusher completes after its next flush.
enum Flush {
    /// An append openraft waits for.
    Callback(LogFlushed<TypeConfig>),
    /// An early append (already reported flushed), by sequence number.
    Early(u64),
}

/// What a store needs to recognise a leader's own appends.
struct EarlyAppends {
    /// This member's id.
    own: NodeId,
    /// The last vote saved or read.
    vote: Mutex<Option<Vote<NodeId>>>,
    /// Sequence numbers of early appends.
    seq: AtomicU64,
    durability: Durability,
}

impl EarlyAppends {
    /// Whether `entries` are this member's own, appended as the leader of its current vote.
    fn owns(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let vote = *self.vote.lock().unwrap_or_else(|p| p.into_inner());
        let Some(vote) = vote else { return false };
        let leader = vote.leader_id();
        leader.node_id == self.own
            && !entries.is_empty()
            && entries.iter().all(|e| {
                e.log_id.leader_id.term == leader.term && e.log_id.leader_id.node_id == self.own
            })
    }
}

impl LogStore {
    /// A log store on `kv`. Spawns its flusher task: call inside a tokio runtime.
    pub fn new(kv: Arc<dyn KvBackend>) -> Self {
        Self::spawn(kv, None)
    }

    /// A log store on `kv` of the member `own` whose appends as leader are reported flushed
    /// at once, their flush tracked by `durability`; the state machine and the network must
    /// gate on the same `durability` (see [`Durability`]).
    pub fn with_early_leader_appends(
        kv: Arc<dyn KvBackend>,
        own: NodeId,
        durability: Durability,
    ) -> Self {
        Self::spawn(
            kv,
            Some(Arc::new(EarlyAppends {
                own,
                vote: Mutex::new(None),
                seq: AtomicU64::new(0),
                durability,
            })),
        )
    }

    fn spawn(kv: Arc<dyn KvBackend>, early: Option<Arc<EarlyAppends>>) -> Self {
        let (flusher, rx) = mpsc::unbounded_channel();
        let durability = early.as_ref().map(|e| e.durability.clone());
        tokio::spawn(group_commit(kv.clone(), rx, durability));
        LogStore { kv, flusher, early }
    }

    fn remember_vote(&self, vote: Option<Vote<NodeId>>) {
        if let Some(early) = &self.early {
            *early.vote.lock().unwrap_or_else(|p| p.into_inner()) = vote;
        }
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError<NodeId>> {
        match self.kv.get(META, key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(key, &v).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        flush: bool,
    ) -> Result<(), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        batch.put(key, encode(value));
        self.kv.apply(META, batch).map_err(write_err)?;
        if flush {
            self.kv.flush().await.map_err(write_err)?;
        }
        Ok(())
    }
}

/// Flushes for every queued append, oldest first; ends when every [`LogStore`] is dropped.
async fn group_commit(
    kv: Arc<dyn KvBackend>,
    mut rx: mpsc::UnboundedReceiver<Flush>,
    durability: Option<Durability>,
) {
    while let Some(first) = rx.recv().await {
        // Every append queued so far wrote its entries before queueing, so one flush started
        // now makes all of them durable.
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let started = std::time::Instant::now();
        let flushed = kv.flush().await.map_err(|e| e.to_string());
        tracing::trace!(appends = waiting.len(), elapsed = ?started.elapsed(), "raft log flushed");
        complete(waiting, &flushed, durability.as_ref());
    }
}

/// Reports the flush of `jobs` with its result: callbacks fire, early appends are marked
/// durable (or the failure recorded).
fn complete(jobs: Vec<Flush>, flushed: &Result<(), String>, durability: Option<&Durability>) {
    let mut early = None;
    for job in jobs {
        match job {
            Flush::Callback(callback) => {
                callback.log_io_completed(flushed.clone().map_err(std::io::Error::other))
            }
            Flush::Early(seq) => early = Some(seq),
        }
    }
    let Some(durability) = durability else { return };
    match (flushed, early) {
        (Ok(()), Some(seq)) => durability.flushed(seq),
        (Ok(()), None) => {}
        // `failed` also records the fault; waits on early appends fail with it.
        (Err(e), Some(_)) => durability.failed(format!("flushing the raft log: {e}")),
        (Err(e), None) => durability.fault(format!("flushing the raft log: {e}")),
    }
}

/// Writes each entry on its own: an append need not be atomic (openraft only relies on it
/// once the callback fired, after the flush, and a crash before keeps a prefix of the writes,
/// so never a hole), and a multi-key batch costs sled an extra log-buffer write.
fn append_each<I>(kv: &dyn KvBackend, entries: I) -> Result<(), StorageError<NodeId>>
where
    I: IntoIterator<Item = Entry<TypeConfig>>,
{
    for entry in entries {
        let mut one = WriteBatch::default();
        one.put(index_key(entry.log_id.index), encode(&entry));
        kv.apply(LOG, one).map_err(write_err)?;
    }
    Ok(())
}

/// Log entries removed per write batch by a purge.
const PURGE_SLICE: usize = 256;

fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.checked_add(1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let end_key = end.map(index_key);
        let pairs = self
            .kv
            .range(LOG, &index_key(start), end_key.as_ref().map(|k| &k[..]))
            .map_err(read_err)?;
        pairs
            .iter()
            .map(|(k, v)| decode(k, v).map_err(read_err))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.meta(PURGED)?;
        let last = self.kv.last_in(LOG, &[], None).map_err(read_err)?;
        let last_log_id = match last {
            Some((k, v)) => {
                let entry: Entry<TypeConfig> = decode(&k, &v).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote, true).await?;
        self.remember_vote(Some(*vote));
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote = self.meta(VOTE)?;
        self.remember_vote(vote);
        Ok(vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed: a lost committed pointer only delays re-applying after a crash.
        self.put_meta(COMMITTED, &committed, false).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let early = match (&self.early, entries.first(), entries.last()) {
            (Some(early), Some(first), Some(last)) if early.owns(&entries) => {
                Some((early.clone(), first.log_id.index, last.log_id))
            }
            _ => None,
        };
        if let Err(e) = append_each(&*self.kv, entries) {
            if let Some(early) = &self.early {
                early
                    .durability
                    .fault(format!("appending to the raft log: {e}"));
            }
            return Err(e);
        }
        let job = match early {
            Some((early, first, last)) => {
                let seq = early.seq.fetch_add(1, Ordering::Relaxed) + 1;
                // Recorded before openraft hears of the append, so no commit of these entries
                // can pass the gates before their flush.
                early.durability.early(seq, first, last);
                callback.log_io_completed(Ok(()));
                Flush::Early(seq)
            }
            None => Flush::Callback(callback),
        };
        if let Err(mpsc::error::SendError(job)) = self.flusher.send(job) {
            // The flusher only stops when every store is gone; flush inline as a fallback.
            let flushed = self.kv.flush().await.map_err(|e| e.to_string());
            let durability = self.early.as_ref().map(|e| &e.durability);
            complete(vec![job], &flushed, durability);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let doomed = self
            .kv
            .keys(LOG, &index_key(log_id.index), None)
            .map_err(read_err)?;
        // One batch: a crash must not leave a hole in the log.
        let mut batch = WriteBatch::default();
        for k in doomed {
            batch.delete(k);
        }
        self.kv.apply(LOG, batch).map_err(write_err)?;
        self.kv.flush().await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge point is durable before any entry disappears, so a crash in between never
        // leaves a hole that the log state does not explain.
        self.put_meta(PURGED, &log_id, true).await?;
        let end = log_id.index.saturating_add(1);
        let doomed = self
            .kv
            .keys(LOG, &index_key(0), Some(&index_key(end)))
            .map_err(read_err)?;
        // In slices, yielding between them: a purge after a snapshot removes thousands of
        // entries, and the member's runtime has one thread. The slices need not be atomic
        // together: entries below the durable purge point are never read, and a crash
        // mid-purge leaves some for the next purge, which scans from the start.
        for slice in doomed.chunks(PURGE_SLICE) {
            let mut batch = WriteBatch::default();
            for k in slice {
                batch.delete(k.clone());
            }
            self.kv.apply(LOG, batch).map_err(write_err)?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}
