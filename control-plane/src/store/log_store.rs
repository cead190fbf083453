//! [`LogStore`]: the Raft log, vote, committed and purged pointers on a [`KvBackend`].
//!
//! Tree `raft_log` maps the big-endian log index to the entry's JSON; tree `raft_meta` holds
//! `vote`, `committed` and `last_purged`. Votes are flushed before `save_vote` returns.
//! Appends are written at once and handed to a flusher task that group-commits: one flush
//! covers every append queued before it, and the callbacks fire in append order after it.
// openraft's `StorageError` is large by design and is the error type of its traits.
#![allow(clippy::result_large_err)]

use super::{decode, encode, read_err, write_err, KvBackend, WriteBatch};
use crate::types::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
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
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// A log store on `kv`. Spawns its flusher task: call inside a tokio runtime.
    pub fn new(kv: Arc<dyn KvBackend>) -> Self {
        let (flusher, rx) = mpsc::unbounded_channel();
        tokio::spawn(group_commit(kv.clone(), rx));
        LogStore { kv, flusher }
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
    mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
) {
    while let Some(first) = rx.recv().await {
        // Every append queued so far wrote its entries before queueing, so one flush started
        // now makes all of them durable.
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let flushed = kv.flush().await.map_err(|e| e.to_string());
        for callback in waiting {
            callback.log_io_completed(flushed.clone().map_err(std::io::Error::other));
        }
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
        self.put_meta(VOTE, vote, true).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta(VOTE)
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
        append_each(&*self.kv, entries)?;
        if let Err(mpsc::error::SendError(callback)) = self.flusher.send(callback) {
            // The flusher only stops when every store is gone; flush inline as a fallback.
            let flushed = self.kv.flush().await;
            callback.log_io_completed(flushed.map_err(std::io::Error::other));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let doomed = self
            .kv
            .range(LOG, &index_key(log_id.index), None)
            .map_err(read_err)?;
        let mut batch = WriteBatch::default();
        for (k, _) in doomed {
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
            .range(LOG, &index_key(0), Some(&index_key(end)))
            .map_err(read_err)?;
        let mut batch = WriteBatch::default();
        for (k, _) in doomed {
            batch.delete(k);
        }
        self.kv.apply(LOG, batch).map_err(write_err)
    }
}
