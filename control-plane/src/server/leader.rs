//! [`LeaderTask`]: work that runs only on the leader (the controllers of later issues), and the
//! watcher that starts it when this member becomes leader and cancels it when it stops being
//! leader. It also logs every role change.

use super::handover::Tenure;
use crate::store::ObjectStore;
use crate::types::{NodeId, Raft};
use futures::future::BoxFuture;
use openraft::ServerState;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a leader task gets to work with.
#[derive(Clone)]
pub struct LeaderContext {
    /// This member's Raft handle (writes go through `client_write`).
    pub raft: Raft,
    /// The local object store (reads, watch).
    pub store: ObjectStore,
    /// This member's name.
    pub member: String,
}

/// Work that runs only while this member is the leader.
///
/// # Correctness
/// `run` must return soon after `stop` is cancelled, and every write it makes must be a
/// compare-and-swap: an old leader may still be finishing a write when a new leader starts.
pub trait LeaderTask: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;
    /// Runs the task until `stop` is cancelled.
    fn run(&self, ctx: LeaderContext, stop: CancellationToken) -> BoxFuture<'static, ()>;
}

/// Watches Raft metrics: logs role changes and starts/stops `tasks`. Returns when `shutdown`
/// is cancelled or Raft stops.
pub(crate) async fn watch_leadership(
    id: NodeId,
    ctx: LeaderContext,
    tasks: Vec<Arc<dyn LeaderTask>>,
    tenure: Tenure,
    shutdown: CancellationToken,
) {
    let mut metrics = ctx.raft.metrics();
    let mut role: Option<ServerState> = None;
    let mut leader: Option<NodeId> = None;
    let mut running: Option<(CancellationToken, Vec<tokio::task::JoinHandle<()>>)> = None;
    loop {
        let (state, term, current_leader) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term, m.current_leader)
        };
        if role != Some(state) || leader != current_leader {
            tracing::info!(member = %ctx.member, id, role = ?state, term, leader = ?current_leader,
                "role changed");
            role = Some(state);
            leader = current_leader;
        }
        let is_leader = state == ServerState::Leader && current_leader == Some(id);
        if is_leader {
            tenure.leading(term);
        } else {
            tenure.following();
        }
        if is_leader && running.is_none() {
            let stop = shutdown.child_token();
            let handles = tasks
                .iter()
                .map(|t| {
                    tracing::info!(member = %ctx.member, task = t.name(), "leader task started");
                    tokio::spawn(t.run(ctx.clone(), stop.clone()))
                })
                .collect();
            running = Some((stop, handles));
        } else if !is_leader {
            stop_tasks(&ctx.member, running.take()).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
        }
    }
    stop_tasks(&ctx.member, running.take()).await;
}

async fn stop_tasks(
    member: &str,
    running: Option<(CancellationToken, Vec<tokio::task::JoinHandle<()>>)>,
) {
    if let Some((stop, handles)) = running {
        stop.cancel();
        for h in handles {
            let _ = h.await;
        }
        tracing::info!(member, "leader tasks stopped");
    }
}
