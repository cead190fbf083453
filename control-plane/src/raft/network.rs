//! [`GrpcNetwork`]: openraft's network over tonic. One lazily connected channel per peer;
//! every request carries the cluster id and a serde-JSON payload. Transport failures map to
//! `Unreachable` (openraft backs off), a refusal by the peer to `NetworkError`.

use crate::types::{MemberNode, NodeId, TypeConfig};
use gantry_api::proto::raft_service_client::RaftServiceClient;
use gantry_api::proto::{RaftReply, RaftRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The largest gRPC message a member sends or accepts (snapshot chunks are 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Creates per-peer clients.
#[derive(Clone)]
pub struct GrpcNetwork {
    cluster_id: Arc<str>,
}

impl GrpcNetwork {
    /// A network of the cluster `cluster_id`.
    pub fn new(cluster_id: &str) -> Self {
        GrpcNetwork {
            cluster_id: cluster_id.into(),
        }
    }
}

/// A lazily connected channel to `addr` (`host:port`) with Gantry's limits.
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The client of one peer.
pub struct PeerClient {
    target: NodeId,
    cluster_id: Arc<str>,
    client: Option<RaftServiceClient<Channel>>,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerClient {
        let client = channel(&node.addr).ok().map(|ch| {
            RaftServiceClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            cluster_id: self.cluster_id.clone(),
            client,
            addr: node.addr.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        which: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Message(format!(
                "invalid peer address {:?}",
                self.addr
            )))));
        };
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftRequest {
            cluster_id: self.cluster_id.to_string(),
            data,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply: RaftReply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let err = Message(format!(
                    "{} ({}): {}",
                    self.addr,
                    status.code(),
                    status.message()
                ));
                return Err(match status.code() {
                    tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted => RPCError::Network(NetworkError::new(&err)),
                    _ => RPCError::Unreachable(Unreachable::new(&err)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
