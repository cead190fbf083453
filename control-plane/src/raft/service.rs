//! [`RaftGrpc`]: the `RaftService` a member answers for its peers.

use crate::types::Raft;
use gantry_api::proto::raft_service_server::RaftService;
use gantry_api::proto::{RaftReply, RaftRequest};
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The replies of [`RaftService::append_entries_stream`], one per request, in order.
pub type AppendReplies =
    Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

/// Answers Raft RPCs of members of the same cluster.
#[derive(Clone)]
pub struct RaftGrpc {
    raft: Raft,
    cluster_id: Arc<str>,
    stop: CancellationToken,
}

impl RaftGrpc {
    /// The service of `raft`, a member of `cluster_id`. Open `AppendEntries` streams end when
    /// `stop` is cancelled, so a stopping member's connections can close (a stream would
    /// otherwise keep its connection, and this service with its Raft and stores, alive).
    pub fn new(raft: Raft, cluster_id: &str, stop: CancellationToken) -> Self {
        RaftGrpc {
            raft,
            cluster_id: cluster_id.into(),
            stop,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, req: &RaftRequest) -> Result<T, Status> {
        if req.cluster_id != *self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: this member belongs to cluster {}, the request comes from \
                 cluster {}",
                self.cluster_id, req.cluster_id
            )));
        }
        serde_json::from_slice(&req.data)
            .map_err(|e| Status::invalid_argument(format!("raft request: invalid payload: {e}")))
    }
}

fn reply<T: serde::Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    encode_reply(result).map(Response::new)
}

fn encode_reply<T: serde::Serialize>(result: &T) -> Result<RaftReply, Status> {
    let data = serde_json::to_vec(result)
        .map_err(|e| Status::internal(format!("raft reply: cannot encode: {e}")))?;
    Ok(RaftReply { data })
}

impl RaftGrpc {
    async fn append(&self, request: &RaftRequest) -> Result<RaftReply, Status> {
        let started = std::time::Instant::now();
        let bytes = request.data.len();
        let req: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
            self.decode(request)?;
        let entries = req.entries.len();
        let result = self.raft.append_entries(req).await;
        tracing::trace!(entries, bytes, elapsed = ?started.elapsed(), "append_entries handled");
        encode_reply(&result)
    }
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.append(request.get_ref()).await.map(Response::new)
    }

    type AppendEntriesStreamStream = AppendReplies;

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<AppendReplies>, Status> {
        // One request at a time, answered in order; a refused request ends the stream (the
        // peer opens a new one).
        let state = Some((self.clone(), request.into_inner()));
        let replies = futures::stream::unfold(state, |state| async move {
            let (this, mut inbound) = state?;
            let message = tokio::select! {
                _ = this.stop.cancelled() => return None,
                message = inbound.message() => message,
            };
            let request = match message {
                Ok(Some(request)) => request,
                Ok(None) => return None,
                Err(status) => return Some((Err(status), None)),
            };
            match this.append(&request).await {
                Ok(reply) => Some((Ok(reply), Some((this, inbound)))),
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = self.decode(request.get_ref())?;
        reply(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = self.decode(request.get_ref())?;
        reply(&self.raft.install_snapshot(req).await)
    }

    async fn timeout_now(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req: TimeoutNow = self.decode(request.get_ref())?;
        let (vote, leader, voter) = {
            let m = self.raft.metrics().borrow().clone();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == m.id);
            (m.vote, m.current_leader, voter)
        };
        // Only the leader this member follows may tell it to campaign: a stale or foreign
        // request must not unseat a working leader.
        let from = req.vote.leader_id().voted_for();
        if !vote.is_committed() || vote != req.vote || leader.is_none() || leader != from {
            return Err(Status::failed_precondition(format!(
                "timeout-now refused: it comes from the leader of {}, this member follows {} \
                 (leader {leader:?})",
                req.vote, vote
            )));
        }
        if !voter {
            return Err(Status::failed_precondition(
                "timeout-now refused: this member is not a voter",
            ));
        }
        tracing::info!(leader = ?leader, term = vote.leader_id().term,
            "leader hands leadership over: campaigning now");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(format!("timeout-now: raft stopped: {e}")))?;
        reply(&())
    }
}

/// The request of `TimeoutNow`: the vote of the leader that sends it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TimeoutNow {
    /// The sender's vote (its term and id, committed).
    pub vote: openraft::Vote<crate::types::NodeId>,
}
