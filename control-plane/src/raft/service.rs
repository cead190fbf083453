//! [`RaftGrpc`]: the `RaftService` a member answers for its peers.

use crate::types::Raft;
use gantry_api::proto::raft_service_server::RaftService;
use gantry_api::proto::{RaftReply, RaftRequest};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Answers Raft RPCs of members of the same cluster.
#[derive(Clone)]
pub struct RaftGrpc {
    raft: Raft,
    cluster_id: Arc<str>,
}

impl RaftGrpc {
    /// The service of `raft`, a member of `cluster_id`.
    pub fn new(raft: Raft, cluster_id: &str) -> Self {
        RaftGrpc {
            raft,
            cluster_id: cluster_id.into(),
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
    let data = serde_json::to_vec(result)
        .map_err(|e| Status::internal(format!("raft reply: cannot encode: {e}")))?;
    Ok(Response::new(RaftReply { data }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let started = std::time::Instant::now();
        let bytes = request.get_ref().data.len();
        let req: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
            self.decode(request.get_ref())?;
        let entries = req.entries.len();
        let result = self.raft.append_entries(req).await;
        tracing::trace!(entries, bytes, elapsed = ?started.elapsed(), "append_entries handled");
        reply(&result)
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
}
