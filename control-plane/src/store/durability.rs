//! [`Durability`]: lets a leader write its own log in parallel with replicating it, without
//! ever exposing an entry that is not on disk on a quorum.
//!
//! openraft 0.9 appends a leader's new entries inside its core task and waits for the flush
//! before it hands them to replication, so a write costs the leader's fsync and then a
//! follower's, one after the other. Raft does not need that order (Ongaro's thesis, §10.2.1;
//! etcd does the same): the leader may count its own entry towards the quorum before its flush
//! completes, provided that nothing acts on the entry being committed until the leader's copy
//! is durable too. So the [`LogStore`](super::LogStore) reports a leader's own append as
//! flushed at once (an *early* append) and queues the flush, and two gates hold back every
//! consequence of a commit until that flush is done:
//! - the state machine applies an entry only once no early append at or below it is still
//!   unflushed ([`Durability::wait_durable`]): a client is answered, and a read sees a write,
//!   only after the leader's own fsync;
//! - the leader never tells a follower a commit index above its own durable log
//!   ([`Durability::clamp_commit`]), so followers apply nothing that is durable only on them.
//!
//! Since followers still acknowledge an append only after their flush, an entry that anyone
//! applies is on disk on the leader and on enough followers to form a quorum with it: the
//! guarantee of flushing before acknowledging is unchanged. Appends from another leader
//! (a follower's) are never early.

use crate::types::NodeId;
use openraft::LogId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// An early append: reported flushed, flush still queued.
#[derive(Debug, Clone, Copy)]
struct Unflushed {
    /// The append's sequence number in its log store.
    seq: u64,
    /// Its first log index.
    first: u64,
    /// Its last log id (known durable once the append is flushed).
    last: LogId<NodeId>,
}

#[derive(Debug, Default)]
struct State {
    /// Early appends not flushed yet, oldest first.
    unflushed: VecDeque<Unflushed>,
    /// The last log id of the newest early append known to be durable.
    durable_tip: Option<LogId<NodeId>>,
    /// Set when a flush failed: nothing is durable any more.
    failed: Option<String>,
    /// The first storage error reported (see [`Durability::fault`]).
    first_fault: Option<String>,
}

/// Shared between a member's log store, state machine and Raft network. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Durability {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// The outcome of [`Durability::clamp_commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clamp {
    /// The commit index may be sent as it is.
    Keep,
    /// Send this lower commit index instead.
    To(Option<LogId<NodeId>>),
    /// The durable bound's log id is not known here: wait for [`Durability::wait_durable`]
    /// of the commit index, then send it as it is.
    Wait,
}

impl Durability {
    /// A tracker with nothing outstanding.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the early append `seq` of the entries `first..=last.index`.
    pub fn early(&self, seq: u64, first: u64, last: LogId<NodeId>) {
        self.lock()
            .unflushed
            .push_back(Unflushed { seq, first, last });
    }

    /// Every append up to sequence number `seq` is durable.
    pub fn flushed(&self, seq: u64) {
        let mut state = self.lock();
        while let Some(u) = state.unflushed.front().copied() {
            if u.seq > seq {
                break;
            }
            state.unflushed.pop_front();
            state.durable_tip = Some(u.last);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// A flush failed: every wait fails from now on.
    pub fn failed(&self, message: String) {
        let mut state = self.lock();
        state.first_fault.get_or_insert_with(|| message.clone());
        state.failed.get_or_insert(message);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Records a storage error of the log or the state machine. openraft stops on it, but may
    /// report a consequence (a closed channel) rather than the cause; the member reports this.
    pub fn fault(&self, message: String) {
        self.lock().first_fault.get_or_insert(message);
    }

    /// The first storage error recorded, if any.
    pub fn first_fault(&self) -> Option<String> {
        self.lock().first_fault.clone()
    }

    /// The first index not known durable, if an early append is outstanding.
    fn first_unflushed(state: &State) -> Option<u64> {
        state.unflushed.front().map(|u| u.first)
    }

    /// Waits until every early append holding an index at or below `index` is durable.
    pub async fn wait_durable(&self, index: u64) -> Result<(), String> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a flush in between is not missed.
            notified.as_mut().enable();
            {
                let state = self.lock();
                if let Some(e) = &state.failed {
                    return Err(e.clone());
                }
                match Self::first_unflushed(&state) {
                    Some(first) if first <= index => {}
                    _ => return Ok(()),
                }
            }
            notified.await;
        }
    }

    /// Whether `commit` may be told to followers now, given the entries `known` (the log ids
    /// of the request, its previous log id included) whose ids are at hand. `known` is only
    /// walked when an early append is outstanding below the commit.
    pub fn clamp_commit(
        &self,
        commit: Option<LogId<NodeId>>,
        known: impl IntoIterator<Item = LogId<NodeId>>,
    ) -> Clamp {
        let Some(commit) = commit else {
            return Clamp::Keep;
        };
        let state = self.lock();
        let Some(first) = Self::first_unflushed(&state) else {
            return Clamp::Keep;
        };
        if commit.index < first {
            return Clamp::Keep;
        }
        let bound = first - 1;
        if let Some(tip) = state.durable_tip.filter(|t| t.index == bound) {
            return Clamp::To(Some(tip));
        }
        match known.into_iter().find(|id| id.index == bound) {
            Some(id) => Clamp::To(Some(id)),
            None => Clamp::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;
    use std::time::Duration;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[tokio::test]
    async fn apply_waits_for_the_flush_of_an_early_append_and_only_for_its_indexes() {
        let d = Durability::new();
        d.early(1, 5, id(2, 7));
        // Below the early append: nothing to wait for.
        d.wait_durable(4).await.unwrap();
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.wait_durable(6).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "index 6 is not durable yet");
        d.flushed(1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released by the flush")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_flush_fails_the_waiters() {
        let d = Durability::new();
        d.early(1, 1, id(1, 1));
        d.fault("apply: disk full".into());
        d.failed("disk full".into());
        assert_eq!(d.wait_durable(1).await.unwrap_err(), "disk full");
        assert_eq!(d.first_fault().as_deref(), Some("apply: disk full"));
    }

    #[test]
    fn the_commit_told_to_followers_never_passes_the_leaders_durable_log() {
        let d = Durability::new();
        // Nothing outstanding: any commit index goes out.
        assert_eq!(d.clamp_commit(Some(id(2, 9)), []), Clamp::Keep);
        d.early(1, 5, id(2, 6));
        d.early(2, 7, id(2, 8));
        assert_eq!(d.clamp_commit(Some(id(2, 4)), []), Clamp::Keep);
        // Index 4 is not an early entry and not in the request: its id is unknown.
        assert_eq!(d.clamp_commit(Some(id(2, 6)), []), Clamp::Wait);
        assert_eq!(
            d.clamp_commit(Some(id(2, 6)), [id(1, 4), id(2, 5)]),
            Clamp::To(Some(id(1, 4)))
        );
        d.flushed(1);
        assert_eq!(
            d.clamp_commit(Some(id(2, 8)), []),
            Clamp::To(Some(id(2, 6)))
        );
        d.flushed(2);
        assert_eq!(d.clamp_commit(Some(id(2, 8)), []), Clamp::Keep);
        assert_eq!(d.clamp_commit(None, []), Clamp::Keep);
    }
}
