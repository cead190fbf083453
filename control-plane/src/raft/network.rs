//! [`GrpcNetwork`]: openraft's network over tonic. One lazily connected channel per peer;
//! every request carries the cluster id and a serde-JSON payload. Transport failures map to
//! `Unreachable` (openraft backs off), a refusal by the peer to `NetworkError`.
//!
//! `AppendEntries` (replication and heartbeats, the bulk of the traffic) go over one
//! long-lived gRPC stream per peer, a request and then its reply at a time, as openraft sends
//! them: one message frame each way instead of a call with its headers, trailers and a server
//! task per append. A failure or an abandoned call closes the stream and the next append opens
//! a new one; a peer that does not know the stream gets unary calls.
//!
//! openraft 0.9 gives every `AppendEntries` one heartbeat interval to complete, and sends a
//! follower that is behind up to `max_payload_entries` (300) entries per call. With entries of a
//! few KB such a call cannot finish in time, every retry times out the same way, the follower
//! never catches up, and since a stream that keeps failing stays in back-off, it does not hear
//! heartbeats either and disrupts the leader with elections. So each peer client keeps a byte
//! budget per `AppendEntries` ([`DEFAULT_MAX_APPEND_BYTES`] at most): a larger request of more
//! than one entry is refused locally with `PayloadTooLarge` and an entries hint, and openraft
//! resends fewer entries at once. A call that does not complete within its deadline halves the
//! budget; a quick one doubles it back.
//!
//! With a [`Durability`] (a leader reporting its own appends before their flush), the commit
//! index an `AppendEntries` carries is lowered to the leader's durable log, so a follower
//! never applies an entry the leader could still lose.

use crate::store::durability::{Clamp, Durability};
use crate::types::{MemberNode, NodeId, TypeConfig};
use gantry_api::proto::raft_service_client::RaftServiceClient;
use gantry_api::proto::{RaftReply, RaftRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// The largest gRPC message a member sends or accepts (snapshot chunks are 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The default largest byte budget of one `AppendEntries` request (its encoded payload).
pub const DEFAULT_MAX_APPEND_BYTES: usize = 128 * 1024;

/// The budget never shrinks below this (a few entries of a few KB).
const MIN_APPEND_BYTES: usize = 8 * 1024;

/// Creates per-peer clients.
#[derive(Clone)]
pub struct GrpcNetwork {
    cluster_id: Arc<str>,
    max_append_bytes: usize,
    durability: Option<Durability>,
    /// One channel (HTTP/2 connection) per peer address, shared by every client openraft
    /// makes: it makes a new client for each leadership check of a linearizable read, and a
    /// new connection each time cost a TCP and HTTP/2 handshake per read.
    channels: Arc<std::sync::Mutex<std::collections::HashMap<String, Channel>>>,
}

impl GrpcNetwork {
    /// A network of the cluster `cluster_id`.
    pub fn new(cluster_id: &str) -> Self {
        GrpcNetwork {
            cluster_id: cluster_id.into(),
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            durability: None,
            channels: Arc::default(),
        }
    }

    /// The shared channel to `addr`.
    fn channel(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Some(ch.clone());
        }
        let ch = channel(addr).ok()?;
        channels.insert(addr.to_string(), ch.clone());
        Some(ch)
    }

    /// Never tells a follower a commit index above what `durability` knows flushed here:
    /// required when the log store reports a leader's appends early (see [`Durability`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Sets the byte budget of one `AppendEntries` payload; a request of more than one entry
    /// above it is split by openraft. A single entry is always sent.
    pub fn with_max_append_bytes(mut self, bytes: usize) -> Self {
        self.max_append_bytes = bytes.max(1);
        self
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
    /// Largest budget of one `AppendEntries` payload.
    max_append_bytes: usize,
    /// Current budget: shrinks when calls miss their deadline, grows back when they are quick.
    append_budget: usize,
    /// Set while an `AppendEntries` is sent; still set at the next call when openraft dropped
    /// the call at its deadline.
    append_in_flight: bool,
    /// The `AppendEntries` stream.
    stream: StreamState,
    durability: Option<Durability>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerClient {
        let client = self.channel(&node.addr).map(|ch| {
            RaftServiceClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            cluster_id: self.cluster_id.clone(),
            client,
            addr: node.addr.clone(),
            max_append_bytes: self.max_append_bytes,
            append_budget: self.max_append_bytes,
            append_in_flight: false,
            stream: StreamState::Closed,
            durability: self.durability.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

// openraft's `RPCError` is large by design and is the error type of its network trait.
#[allow(clippy::result_large_err)]
fn encode<Req: serde::Serialize, E: std::error::Error>(
    req: &Req,
) -> Result<Vec<u8>, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>> {
    serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// How many of `entries` entries, encoded in `bytes`, fit in `budget` bytes: at least one and
/// fewer than `entries`.
fn entries_hint(entries: usize, bytes: usize, budget: usize) -> u64 {
    let entries = u64::try_from(entries).unwrap_or(u64::MAX);
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX).max(1);
    let budget = u64::try_from(budget).unwrap_or(u64::MAX);
    (entries.saturating_mul(budget) / bytes).clamp(1, entries.saturating_sub(1).max(1))
}

/// The `AppendEntries` stream to a peer.
enum StreamState {
    /// None open: the next append opens one.
    Closed,
    /// Open: requests go in, their replies come back in order.
    Open {
        requests: mpsc::Sender<RaftRequest>,
        replies: Box<tonic::Streaming<RaftReply>>,
    },
    /// The peer answered Unimplemented (an older member): unary calls only.
    Unsupported,
}

impl PartialEq for StreamState {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Sends `message` over the peer's `AppendEntries` stream, opening one if needed, and waits
/// for its reply. Any failure closes the stream (the next call opens a new one); a peer
/// without streams falls back to unary calls.
async fn append_over_stream(
    client: &mut RaftServiceClient<Channel>,
    stream: &mut StreamState,
    message: RaftRequest,
) -> Result<RaftReply, tonic::Status> {
    if matches!(stream, StreamState::Closed) {
        let (requests, rx) = mpsc::channel(1);
        match client
            .append_entries_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(replies) => {
                *stream = StreamState::Open {
                    requests,
                    replies: Box::new(replies.into_inner()),
                }
            }
            // A member without the stream: this append and every later one go unary.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                *stream = StreamState::Unsupported;
            }
            Err(status) => return Err(status),
        }
    }
    let StreamState::Open { requests, replies } = stream else {
        return client
            .append_entries(message)
            .await
            .map(tonic::Response::into_inner);
    };
    let result = async {
        requests
            .send(message)
            .await
            .map_err(|_| tonic::Status::unavailable("append stream closed"))?;
        replies
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("append stream ended by the peer"))
    }
    .await;
    if result.is_err() {
        *stream = StreamState::Closed;
    }
    result
}

impl PeerClient {
    fn shrink_budget(&mut self) {
        self.append_budget = (self.append_budget / 2)
            .max(MIN_APPEND_BYTES)
            .min(self.max_append_bytes);
        tracing::debug!(
            target_id = self.target,
            budget = self.append_budget,
            "append_entries missed its deadline, sending less at once"
        );
    }

    async fn call<Resp, E>(
        &mut self,
        which: Rpc,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Message(format!(
                "invalid peer address {:?}",
                self.addr
            )))));
        };
        let bytes = data.len();
        let started = Instant::now();
        let message = RaftRequest {
            cluster_id: self.cluster_id.to_string(),
            data,
        };
        let reply = if matches!(which, Rpc::Append) && self.stream != StreamState::Unsupported {
            append_over_stream(client, &mut self.stream, message).await
        } else {
            let mut request = tonic::Request::new(message);
            request.set_timeout(option.hard_ttl());
            match which {
                Rpc::Append => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::Snapshot => client.install_snapshot(request).await,
            }
            .map(tonic::Response::into_inner)
        };
        let reply: RaftReply = match reply {
            Ok(r) => r,
            Err(status) => {
                tracing::debug!(target_id = self.target, rpc = which.name(), bytes,
                    elapsed = ?started.elapsed(), code = ?status.code(), "raft rpc failed");
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

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::Append => "append_entries",
            Rpc::Vote => "vote",
            Rpc::Snapshot => "install_snapshot",
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        if let Some(durability) = &self.durability {
            let known = rpc
                .prev_log_id
                .into_iter()
                .chain(rpc.entries.iter().map(|e| e.log_id));
            match durability.clamp_commit(rpc.leader_commit, known) {
                Clamp::Keep => {}
                Clamp::To(lower) => rpc.leader_commit = lower,
                Clamp::Wait => {
                    let index = rpc.leader_commit.map(|c| c.index).unwrap_or(0);
                    if let Err(e) = durability.wait_durable(index).await {
                        return Err(RPCError::Unreachable(Unreachable::new(&Message(e))));
                    }
                }
            }
        }
        if std::mem::take(&mut self.append_in_flight) {
            self.shrink_budget();
            // The dropped call's reply may still come: never read it as the next one's.
            if self.stream != StreamState::Unsupported {
                self.stream = StreamState::Closed;
            }
        }
        let data = encode(&rpc)?;
        let entries = rpc.entries.len();
        if data.len() > self.append_budget && entries > 1 {
            let hint = entries_hint(entries, data.len(), self.append_budget);
            tracing::debug!(
                target_id = self.target,
                entries,
                bytes = data.len(),
                budget = self.append_budget,
                hint,
                "append_entries over budget, splitting"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        tracing::trace!(
            target_id = self.target,
            entries,
            bytes = data.len(),
            "append_entries"
        );
        let bytes = data.len();
        let started = Instant::now();
        self.append_in_flight = true;
        let result = self.call(Rpc::Append, data, &option).await;
        self.append_in_flight = false;
        let elapsed = started.elapsed();
        tracing::trace!(
            target_id = self.target,
            entries,
            bytes,
            ?elapsed,
            "append_entries sent"
        );
        if elapsed >= option.hard_ttl() {
            self.shrink_budget();
        } else if result.is_ok()
            && elapsed < option.soft_ttl() / 2
            && bytes * 2 > self.append_budget
        {
            self.append_budget = (self.append_budget * 2).min(self.max_append_bytes);
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let data = encode(&rpc)?;
        self.call(Rpc::Snapshot, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        let data = encode(&rpc)?;
        self.call(Rpc::Vote, data, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Request;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    /// `n` entries of about 2 KB each, like the services of the disk-full e2e test.
    fn append(n: u64) -> AppendEntriesRequest<TypeConfig> {
        let entries = (1..=n)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Request::Create {
                    kind: "Service".into(),
                    name: format!("s{i}"),
                    json: format!("{:0>2000}", i),
                }),
            })
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    async fn peer() -> PeerClient {
        let node = MemberNode {
            name: "s2".into(),
            // Not a valid address: any call that gets past the budget check is unreachable.
            addr: "no such address".into(),
        };
        GrpcNetwork::new("c")
            .with_max_append_bytes(64 * 1024)
            .new_client(2, &node)
            .await
    }

    #[tokio::test]
    async fn a_catch_up_batch_over_the_byte_budget_is_split_by_a_hint() {
        let mut peer = peer().await;
        // What openraft sends a follower that is far behind: max_payload_entries entries.
        let err = peer
            .append_entries(append(300), RPCOption::new(Duration::from_millis(100)))
            .await
            .unwrap_err();
        let RPCError::PayloadTooLarge(too_large) = err else {
            panic!("not split: {err}");
        };
        let hint = too_large.entries_hint();
        assert!((1..300).contains(&hint), "hint {hint}");
        // The hinted number of entries fits the budget.
        let fitted = serde_json::to_vec(&append(hint)).unwrap();
        assert!(fitted.len() <= 64 * 1024, "{} bytes", fitted.len());
    }

    #[tokio::test]
    async fn a_single_entry_is_sent_whatever_its_size() {
        let mut peer = peer().await;
        let mut one = append(1);
        if let EntryPayload::Normal(Request::Create { json, .. }) = &mut one.entries[0].payload {
            *json = "x".repeat(200 * 1024);
        }
        let err = peer
            .append_entries(one, RPCOption::new(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
    }

    #[tokio::test]
    async fn a_call_dropped_at_its_deadline_halves_the_budget() {
        let mut peer = peer().await;
        // As openraft does at the deadline: the call is dropped while in flight.
        peer.append_in_flight = true;
        let err = peer
            .append_entries(append(30), RPCOption::new(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert_eq!(peer.append_budget, 32 * 1024);
        let RPCError::PayloadTooLarge(too_large) = err else {
            panic!("not split: {err}");
        };
        let fitted = serde_json::to_vec(&append(too_large.entries_hint())).unwrap();
        assert!(fitted.len() <= 32 * 1024, "{} bytes", fitted.len());
        for _ in 0..10 {
            peer.shrink_budget();
        }
        assert_eq!(peer.append_budget, MIN_APPEND_BYTES);
    }

    /// A peer answering each `AppendEntries` with `HigherVote(request's vote)`, so a reply
    /// names the request it answers; `stream`: whether it has the stream, `stall_term`: a
    /// request of this term is answered only after 300 ms.
    #[derive(Clone)]
    struct EchoPeer {
        stream: bool,
        stall_term: u64,
        unary_calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl EchoPeer {
        async fn answer(&self, req: &RaftRequest) -> Result<RaftReply, tonic::Status> {
            let rpc: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&req.data)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            if rpc.vote.leader_id().term == self.stall_term {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                Ok(AppendEntriesResponse::HigherVote(rpc.vote));
            Ok(RaftReply {
                data: serde_json::to_vec(&result).unwrap(),
            })
        }
    }

    #[tonic::async_trait]
    impl gantry_api::proto::raft_service_server::RaftService for EchoPeer {
        async fn append_entries(
            &self,
            request: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            self.unary_calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.answer(request.get_ref())
                .await
                .map(tonic::Response::new)
        }

        type AppendEntriesStreamStream = crate::raft::service::AppendReplies;

        async fn append_entries_stream(
            &self,
            request: tonic::Request<tonic::Streaming<RaftRequest>>,
        ) -> Result<tonic::Response<Self::AppendEntriesStreamStream>, tonic::Status> {
            if !self.stream {
                return Err(tonic::Status::unimplemented("no stream here"));
            }
            let state = (self.clone(), request.into_inner());
            let replies = futures::stream::unfold(state, |(this, mut inbound)| async move {
                let req = inbound.message().await.ok()??;
                let reply = this.answer(&req).await;
                Some((reply, (this, inbound)))
            });
            Ok(tonic::Response::new(Box::pin(replies)))
        }

        async fn vote(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("vote"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("install_snapshot"))
        }

        async fn timeout_now(
            &self,
            _: tonic::Request<RaftRequest>,
        ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("timeout_now"))
        }
    }

    /// A client of an [`EchoPeer`] served on loopback.
    async fn echo_peer(peer: EchoPeer) -> PeerClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(gantry_api::proto::raft_service_server::RaftServiceServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let node = MemberNode {
            name: "s2".into(),
            addr,
        };
        GrpcNetwork::new("c").new_client(2, &node).await
    }

    fn heartbeat(term: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            ..append(0)
        }
    }

    fn answered_term(r: AppendEntriesResponse<NodeId>) -> u64 {
        match r {
            AppendEntriesResponse::HigherVote(v) => v.leader_id().term,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    #[tokio::test]
    async fn appends_share_one_stream_and_a_dropped_call_never_gets_its_reply_read_by_the_next() {
        let unary = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut peer = echo_peer(EchoPeer {
            stream: true,
            stall_term: 7,
            unary_calls: unary.clone(),
        })
        .await;
        let option = || RPCOption::new(Duration::from_millis(100));
        for term in 1..=3 {
            let reply = peer
                .append_entries(heartbeat(term), option())
                .await
                .unwrap();
            assert_eq!(answered_term(reply), term);
        }
        assert!(matches!(peer.stream, StreamState::Open { .. }));
        // Dropped at its deadline, as openraft does; its reply comes later on that stream.
        let stalled = tokio::time::timeout(
            option().hard_ttl(),
            peer.append_entries(heartbeat(7), option()),
        )
        .await;
        assert!(stalled.is_err(), "the stalled call was not dropped");
        let reply = peer.append_entries(heartbeat(8), option()).await.unwrap();
        assert_eq!(
            answered_term(reply),
            8,
            "the reply of the dropped call was taken"
        );
        assert_eq!(unary.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_appends() {
        let unary = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut peer = echo_peer(EchoPeer {
            stream: false,
            stall_term: 0,
            unary_calls: unary.clone(),
        })
        .await;
        for term in 1..=3 {
            let reply = peer
                .append_entries(heartbeat(term), RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
            assert_eq!(answered_term(reply), term);
        }
        assert!(peer.stream == StreamState::Unsupported);
        assert_eq!(unary.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn hints_stay_between_one_and_fewer_than_sent() {
        assert_eq!(entries_hint(300, 660_000, 131_072), 59);
        assert_eq!(entries_hint(2, 10_000_000, 1), 1);
        assert_eq!(entries_hint(10, 200, 100), 5);
    }
}
