//! [`LogStore`]: the Raft log, vote, committed and purged pointers on a [`KvBackend`].
//!
//! Tree `raft_log` maps the big-endian log index to the entry's JSON; tree `raft_meta` holds
//! `vote`, `committed` and `last_purged`. Votes are flushed before `save_vote` returns.
//! Appends are written at once and handed to a flusher task that group-commits: one flush
//! covers every append queued before it, and the callbacks fire in append order after it.
//! With [`LogStore::with_early_leader_appends`], a leader's own appends are reported flushed
//! at once and their flush is tracked by a [`Durability`] instead (see there).
//!
//! The newest appended entries are also kept in memory ([`Recent`], bounded by count and
//! bytes): openraft reads each entry back right after appending it, to replicate it and to
//! apply it, and reading it from sled and decoding its JSON was about a sixteenth of a
//! member's work.
// openraft's `StorageError` is large by design and is the error type of its traits.
#![allow(clippy::result_large_err)]

use super::{decode, encode, read_err, write_err, Durability, KvBackend, WriteBatch};
use crate::types::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use std::collections::VecDeque;
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
    recent: Arc<Mutex<Recent>>,
}

/// Most entries [`Recent`] keeps.
const RECENT_ENTRIES: usize = 4096;
/// Most bytes (encoded) [`Recent`] keeps.
const RECENT_BYTES: usize = 4 << 20;

/// The newest entries of the log, in memory: consecutive indexes up to the last entry
/// appended through this store (empty until the first append after open).
#[derive(Default)]
struct Recent {
    /// Each entry with its encoded size.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Records an entry just written to the store.
    fn push(&mut self, entry: Entry<TypeConfig>, size: usize) {
        let index = entry.log_id.index;
        match self.last() {
            // Overwrites entries from `index` on (a new leader's log).
            Some(last) if index <= last => self.remove_from(index),
            Some(last) if index != last + 1 => self.clear(),
            _ => {}
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// Forgets entries with an index of `index` or more.
    fn remove_from(&mut self, index: u64) {
        while self.last().is_some_and(|l| l >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets entries with an index of `index` or less.
    fn remove_upto(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            self.pop_front();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries from `start` to `end` (exclusive; `None`: to the last), if all are here.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let (first, last) = (self.first()?, self.last()?);
        let end = end.unwrap_or(last + 1);
        if start < first || end > last + 1 {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
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
        LogStore {
            kv,
            flusher,
            early,
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        lock_recent(&self.recent)
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
/// so never a hole), and a multi-key batch costs sled an extra log-buffer write. Each entry
/// written goes into `recent` too.
fn append_each<I>(
    kv: &dyn KvBackend,
    recent: &Mutex<Recent>,
    entries: I,
) -> Result<(), StorageError<NodeId>>
where
    I: IntoIterator<Item = Entry<TypeConfig>>,
{
    for entry in entries {
        let mut one = WriteBatch::default();
        let value = encode(&entry);
        let size = value.len();
        one.put(index_key(entry.log_id.index), value);
        if let Err(e) = kv.apply(LOG, one) {
            // What the store holds from this index on is unknown now.
            lock_recent(recent).remove_from(entry.log_id.index);
            return Err(write_err(e));
        }
        lock_recent(recent).push(entry, size);
    }
    Ok(())
}

fn lock_recent(recent: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    // Plain data: a panic while holding the lock leaves it usable.
    recent.lock().unwrap_or_else(|p| p.into_inner())
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
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
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
        if let Err(e) = append_each(&*self.kv, &self.recent, entries) {
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
        // Before the store: no reader may find a doomed entry here once it is gone there.
        self.recent().remove_from(log_id.index);
        let doomed = self
            .kv
            .keys(LOG, &index_key(log_id.index), None)
            .map_err(read_err)?;
        // One batch: a crash must not leave a hole in the log.
        self.kv
            .apply(LOG, WriteBatch::deleting(doomed))
            .map_err(write_err)?;
        self.kv.flush().await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge point is durable before any entry disappears, so a crash in between never
        // leaves a hole that the log state does not explain.
        self.put_meta(PURGED, &log_id, true).await?;
        self.recent().remove_upto(log_id.index);
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
            self.kv
                .apply(LOG, WriteBatch::deleting(slice.iter().cloned()))
                .map_err(write_err)?;
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledBackend;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn ids(entries: &[Entry<TypeConfig>]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[test]
    fn recent_entries_follow_overwrites_gaps_and_limits() {
        let mut r = Recent::default();
        for i in 1..=5 {
            r.push(entry(1, i), 10);
        }
        assert_eq!(ids(&r.get(2, Some(4)).unwrap()), vec![(1, 2), (1, 3)]);
        assert_eq!(r.get(4, None).unwrap().len(), 2);
        assert!(r.get(0, Some(3)).is_none(), "before the first kept entry");
        assert!(r.get(3, Some(7)).is_none(), "past the last entry");
        // A new leader's entries replace those from their index on.
        r.push(entry(2, 4), 10);
        assert_eq!(ids(&r.get(3, None).unwrap()), vec![(1, 3), (2, 4)]);
        assert_eq!(r.bytes, 40);
        // A gap (entries written elsewhere) empties it.
        r.push(entry(2, 9), 10);
        assert_eq!(ids(&r.get(9, None).unwrap()), vec![(2, 9)]);
        assert!(r.get(4, Some(5)).is_none());
        // Bounded by bytes.
        for i in 10..20 {
            r.push(entry(2, i), RECENT_BYTES / 4);
        }
        assert_eq!(r.entries.len(), 4);
        assert_eq!(r.first(), Some(16));
        // Bounded by count.
        let mut r = Recent::default();
        for i in 0..(RECENT_ENTRIES as u64 + 10) {
            r.push(entry(1, i), 1);
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first(), Some(10));
        r.remove_upto(20);
        r.remove_from(30);
        assert_eq!((r.first(), r.last(), r.bytes), (Some(21), Some(29), 9));
    }

    #[tokio::test]
    async fn reads_after_truncate_and_purge_match_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn KvBackend> = Arc::new(SledBackend::open(dir.path()).unwrap());
        let mut log = LogStore::new(kv.clone());
        let append = |log: &LogStore, entries: Vec<Entry<TypeConfig>>| {
            append_each(&*log.kv, &log.recent, entries).unwrap()
        };
        append(&log, (1..=6).map(|i| entry(1, i)).collect());
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        append(&log, vec![entry(2, 4)]);
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 1))
            .await
            .unwrap();
        let want = vec![(1, 2), (1, 3), (2, 4)];
        assert_eq!(ids(&log.try_get_log_entries(0..).await.unwrap()), want);
        assert_eq!(ids(&log.try_get_log_entries(2..=4).await.unwrap()), want);
        // The same, read from the store alone.
        let mut fresh = LogStore::new(kv);
        assert_eq!(ids(&fresh.try_get_log_entries(0..).await.unwrap()), want);
        assert!(fresh.recent().entries.is_empty());
    }
}
