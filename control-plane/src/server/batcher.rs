//! [`WriteBatcher`]: gathers concurrent API writes into [`Request::Batch`] log entries.
//!
//! openraft 0.9 appends and flushes every proposed entry on its own, inside its core task,
//! before it replicates it: one fsync per write on the leader, one after another. The batcher
//! keeps at most [`MAX_IN_FLIGHT`] entries proposed at a time; the writes that arrive while
//! they are in flight go out together as one entry, so one flush on each member covers all of
//! them. A write that finds nothing in flight goes out at once and unwrapped: a lone client
//! waits for nothing.
//!
//! Each item of a batch is still checked and versioned on its own when applied (see
//! [`Request::Batch`]), so a caller gets the answer it would have got from an entry of its
//! own, and it gets it only once openraft has answered the entry: after the entry was
//! committed (flushed on a quorum's logs) and applied. Durability is unchanged.

use crate::types::{MemberNode, NodeId, Raft, Request, Response};
use openraft::error::{ClientWriteError, RaftError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

/// Entries the batcher keeps proposed at once. More lets the leader append the next entry
/// while the previous one replicates; fewer makes bigger batches.
pub const MAX_IN_FLIGHT: usize = 4;

/// Documents gathered in one entry at most (a larger write still goes alone). Same bound as
/// the controllers' batches: sled 0.34 stores items above 128 KiB as blob files, much slower.
pub const MAX_BATCH_BYTES: usize = 48 * 1024;

/// Writes gathered in one entry at most.
pub const MAX_BATCH_ITEMS: usize = 256;

/// Writes waiting for the batcher at most; callers beyond wait to queue.
const QUEUE: usize = 4096;

/// Why a write's entry got no answer.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// openraft refused or failed the entry (not leader, stopped, ...).
    Raft(Box<RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>>),
    /// No answer within the deadline (the entry may still commit later).
    Timeout,
    /// The batcher is gone (the member is stopping).
    Stopped,
}

/// What a proposal answers: the write's own result, or why its entry got no answer.
pub type Proposed = Result<Response, ProposeError>;

struct Pending {
    req: Request,
    size: usize,
    reply: oneshot::Sender<Proposed>,
}

/// Proposes writes through Raft, gathering concurrent ones into batch entries. Cheap to clone.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::Sender<Pending>,
    /// One permit per entry in flight.
    slots: Arc<Semaphore>,
    /// True while new entries are held back (see [`WriteBatcher::hold`]).
    held: Arc<watch::Sender<bool>>,
}

/// Keeps a [`WriteBatcher`] from proposing until dropped.
pub struct HoldGuard {
    held: Arc<watch::Sender<bool>>,
    _drained: Option<OwnedSemaphorePermit>,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.held.send_replace(false);
    }
}

impl WriteBatcher {
    /// A batcher proposing to `raft`; an entry not answered within `timeout` fails its writes
    /// (they may still commit later, as any timed-out write). Spawns its task: call inside a
    /// tokio runtime. The task ends when every clone is dropped.
    pub fn new(raft: Raft, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let (held, held_rx) = watch::channel(false);
        tokio::spawn(gather(raft, timeout, rx, slots.clone(), held_rx));
        WriteBatcher {
            tx,
            slots,
            held: Arc::new(held),
        }
    }

    /// Holds back new entries (writes queue up, unanswered) until the guard is dropped, and
    /// returns once every entry already proposed has been answered, or after `within`. A
    /// leader handing over leadership uses it so its log stops growing.
    pub async fn hold(&self, within: Duration) -> HoldGuard {
        self.held.send_replace(true);
        // Every slot free means nothing is in flight; the permits keep it so.
        let all = self.slots.clone().acquire_many_owned(MAX_IN_FLIGHT as u32);
        let drained = tokio::time::timeout(within, all)
            .await
            .ok()
            .and_then(Result::ok);
        HoldGuard {
            held: self.held.clone(),
            _drained: drained,
        }
    }

    /// Proposes `req` and waits for its own result.
    pub async fn propose(&self, req: Request) -> Proposed {
        let (reply, answer) = oneshot::channel();
        let size = size_of(&req);
        if self.tx.send(Pending { req, size, reply }).await.is_err() {
            return Err(ProposeError::Stopped);
        }
        answer.await.unwrap_or(Err(ProposeError::Stopped))
    }
}

fn size_of(req: &Request) -> usize {
    match req {
        Request::Create { json, .. } | Request::Update { json, .. } => json.len(),
        _ => 64,
    }
}

/// Takes the queued writes a batch at a time, once an in-flight slot is free.
async fn gather(
    raft: Raft,
    timeout: Duration,
    mut rx: mpsc::Receiver<Pending>,
    slots: Arc<Semaphore>,
    mut held: watch::Receiver<bool>,
) {
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        if held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        // Writes arriving while every slot is busy queue up and join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ITEMS {
            let Ok(next) = rx.try_recv() else { break };
            if bytes + next.size > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.size;
            batch.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, timeout, batch).await;
            drop(slot);
        });
    }
}

/// Proposes `batch` as one entry (a lone write unwrapped) and answers every writer.
async fn commit(raft: &Raft, timeout: Duration, mut batch: Vec<Pending>) {
    let n = batch.len();
    if n == 1 {
        if let Some(p) = batch.pop() {
            let answer = propose_entry(raft, timeout, p.req).await;
            let _ = p.reply.send(answer);
        }
        return;
    }
    let (reqs, replies): (Vec<Request>, Vec<_>) =
        batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    match propose_entry(raft, timeout, Request::Batch(reqs)).await {
        Ok(Response::Batch(answers)) if answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(other) => {
            let message = format!("unexpected answer to a batch of {n}: {other:?}");
            for reply in replies {
                let _ = reply.send(Ok(Response::Invalid {
                    message: message.clone(),
                }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn propose_entry(raft: &Raft, timeout: Duration, req: Request) -> Proposed {
    match tokio::time::timeout(timeout, raft.client_write(req)).await {
        Ok(r) => r
            .map(|r| r.data)
            .map_err(|e| ProposeError::Raft(Box::new(e))),
        // Frees the slot; the entry may still commit, as any write that timed out.
        Err(_) => Err(ProposeError::Timeout),
    }
}
