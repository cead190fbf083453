//! [`ObjectApi`]: the public `ObjectService`. Writes go through Raft on the leader (a follower
//! forwards them, counting hops in [`FORWARDED`]); linearizable reads take a read index on the
//! leader; stale reads and watch are served from the local state machine. Errors map to gRPC
//! status codes in [`ApiError::into_status`], the one place that does so.

use super::batcher::{ProposeError, WriteBatcher};
use crate::raft::network::channel;
use crate::store::state_machine::WatchError;
use crate::store::{ChangeType, ObjectStore, StoreError, WatchItem};
use crate::types::{MemberNode, NodeId, Raft, Request, Response, StoredObject};
use gantry_api::objects::{validate_name, Kind, Object};
use gantry_api::proto::object_service_client::ObjectServiceClient;
use gantry_api::proto::object_service_server::ObjectService;
use gantry_api::proto::{
    self, AddMemberRequest, AddMemberResponse, Consistency, CreateRequest, DeleteRequest,
    EventType, GetRequest, GetResponse, ListRequest, ListResponse, MembersRequest, MembersResponse,
    RemoveMemberRequest, RemoveMemberResponse, UpdateRequest, WatchEvent, WatchRequest,
    WriteResponse,
};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tonic::transport::Channel;
use tonic::Status;

/// Metadata key counting how often members forwarded a request to the leader they knew. A
/// request forwarded [`MAX_HOPS`] times is answered where it is, so stale leader hints cannot
/// make requests loop.
pub const FORWARDED: &str = "x-gantry-forwarded";

/// Forwarding hops a request may take: a follower forwards it to its leader, and that member,
/// when it has just handed leadership over (it refuses the write unproposed), once more to the
/// new leader.
pub const MAX_HOPS: u8 = 2;

/// The largest public API message accepted.
pub const MAX_API_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Errors of the public API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A create found the object.
    #[error("{what} already exists (resourceVersion {current})")]
    AlreadyExists {
        /// `Kind/name`.
        what: String,
        /// Its version.
        current: u64,
    },
    /// A compare-and-swap failed.
    #[error("{what}: resourceVersion {expected} does not match the current {current}")]
    Conflict {
        /// `Kind/name`.
        what: String,
        /// The version the writer gave.
        expected: u64,
        /// The stored version.
        current: u64,
    },
    /// This member is not the leader; the leader's address if known.
    #[error("not the leader (leader: {})", .0.as_deref().unwrap_or("unknown"))]
    NotLeader(Option<String>),
    /// No quorum answered in time.
    #[error("no quorum: {0} not committed within {1:?} (the outcome is unknown)")]
    Timeout(&'static str, Duration),
    /// Raft refused or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The watch revision was compacted.
    #[error("revision {0} compacted, list again")]
    Compacted(u64),
    /// Local storage failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    /// The gRPC status of this error.
    pub fn into_status(self) -> Status {
        let msg = self.to_string();
        match self {
            ApiError::Invalid(_) => Status::invalid_argument(msg),
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::AlreadyExists { .. } => Status::already_exists(msg),
            ApiError::Conflict { .. } => Status::aborted(msg),
            ApiError::NotLeader(_) | ApiError::Timeout(..) | ApiError::Raft(_) => {
                Status::unavailable(msg)
            }
            ApiError::Compacted(_) => Status::out_of_range(msg),
            ApiError::Store(_) => Status::internal(msg),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.into_status()
    }
}

/// The `ObjectService` of one member.
#[derive(Clone)]
pub struct ObjectApi {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) store: ObjectStore,
    pub(crate) cluster_id: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) watch_buffer: usize,
    peers: Arc<Mutex<HashMap<String, ObjectServiceClient<Channel>>>>,
    batcher: WriteBatcher,
    /// Held by the membership change this member is making: one at a time.
    membership_turn: Arc<tokio::sync::Mutex<()>>,
}

/// The hops `req` has taken (an unreadable count counts as the most).
fn hops<T>(req: &tonic::Request<T>) -> u8 {
    match req.metadata().get(FORWARDED) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_HOPS),
    }
}

/// `msg` as a request that has taken one hop more than `hops`.
fn forwarded<T>(msg: T, hops: u8) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let count = if hops == 0 { "1" } else { "2" };
    req.metadata_mut().insert(
        FORWARDED,
        tonic::metadata::MetadataValue::from_static(count),
    );
    req
}

fn kind_of(kind: &str) -> Result<Kind, ApiError> {
    kind.parse::<Kind>()
        .map_err(|e| ApiError::Invalid(e.to_string()))
}

fn to_proto(o: StoredObject) -> proto::Object {
    proto::Object {
        kind: o.kind,
        name: o.name,
        resource_version: o.resource_version,
        json: o.json.into_bytes(),
    }
}

/// Validates a client object: the document parses, names a known kind and a valid name, and
/// agrees with the envelope. Returns the canonical kind, name, parsed object.
fn validate(obj: Option<proto::Object>) -> Result<(proto::Object, Object), ApiError> {
    let obj = obj.ok_or_else(|| ApiError::Invalid("object: missing".into()))?;
    let parsed = Object::from_json(&obj.json).map_err(|e| ApiError::Invalid(e.to_string()))?;
    if !obj.kind.is_empty() && kind_of(&obj.kind)? != parsed.kind {
        return Err(ApiError::Invalid(format!(
            "kind: envelope says {:?} but the document says {}",
            obj.kind, parsed.kind
        )));
    }
    if !obj.name.is_empty() && obj.name != parsed.metadata.name {
        return Err(ApiError::Invalid(format!(
            "metadata.name: envelope says {:?} but the document says {:?}",
            obj.name, parsed.metadata.name
        )));
    }
    Ok((obj, parsed))
}

/// Now as RFC 3339 UTC (seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    gantry_api::events::format_rfc3339(secs)
}

impl ObjectApi {
    pub(crate) fn new(
        id: NodeId,
        raft: Raft,
        store: ObjectStore,
        cluster_id: &str,
        timeout: Duration,
        watch_buffer: usize,
    ) -> Self {
        ObjectApi {
            id,
            batcher: WriteBatcher::new(raft.clone(), timeout),
            raft,
            store,
            cluster_id: cluster_id.into(),
            timeout,
            watch_buffer: watch_buffer.max(1),
            peers: Arc::default(),
            membership_turn: Arc::default(),
        }
    }

    /// The batcher of this API's writes.
    pub(crate) fn batcher(&self) -> WriteBatcher {
        self.batcher.clone()
    }

    fn peer(&self, addr: &str) -> Result<ObjectServiceClient<Channel>, ApiError> {
        let mut peers = match self.peers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let ch =
            channel(addr).map_err(|e| ApiError::Raft(format!("leader address {addr}: {e}")))?;
        let client = ObjectServiceClient::new(ch)
            .max_decoding_message_size(crate::raft::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// The leader's address when this member is not the leader and the request may be
    /// forwarded; `None` to handle locally.
    fn forward_target(&self, err: &ApiError, hops: u8) -> Option<String> {
        match err {
            ApiError::NotLeader(Some(addr)) if hops < MAX_HOPS => Some(addr.clone()),
            _ => None,
        }
    }

    fn not_leader(f: &ForwardToLeader<NodeId, MemberNode>) -> ApiError {
        ApiError::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
    }

    /// Proposes `req` (gathered with concurrent writes into one entry by the batcher) and
    /// waits for it to be applied, within the deadline.
    async fn propose(&self, req: Request) -> Result<Response, ApiError> {
        match tokio::time::timeout(self.timeout, self.batcher.propose(req)).await {
            Err(_) | Ok(Err(ProposeError::Timeout)) => {
                Err(ApiError::Timeout("write", self.timeout))
            }
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(ProposeError::Raft(e))) => match *e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    Err(Self::not_leader(&f))
                }
                e => Err(ApiError::Raft(e.to_string())),
            },
            Ok(Err(ProposeError::Stopped)) => Err(ApiError::Raft("the member is stopping".into())),
        }
    }

    /// Waits until the local state reflects every write committed before the call (read
    /// index through the leader).
    async fn read_barrier(&self) -> Result<(), ApiError> {
        match tokio::time::timeout(self.timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ApiError::Timeout("read index", self.timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(f) => Err(Self::not_leader(f)),
                None => Err(ApiError::Raft(e.to_string())),
            },
        }
    }

    fn written(
        kind: &str,
        name: &str,
        expected: u64,
        r: Response,
    ) -> Result<WriteResponse, ApiError> {
        let what = format!("{kind}/{name}");
        match r {
            Response::Written { object, revision } => Ok(WriteResponse {
                object: Some(to_proto(object)),
                revision,
            }),
            Response::NotFound => Err(ApiError::NotFound(what)),
            Response::AlreadyExists { current } => Err(ApiError::AlreadyExists { what, current }),
            Response::Conflict { current } => Err(ApiError::Conflict {
                what,
                expected,
                current,
            }),
            Response::Invalid { message } => Err(ApiError::Invalid(message)),
            Response::None => Err(ApiError::Raft("unexpected empty response".into())),
            // The API proposes single writes only; batches come from the controllers.
            Response::Batch(_) => Err(ApiError::Raft("unexpected batch response".into())),
        }
    }

    async fn do_create(&self, msg: CreateRequest) -> Result<WriteResponse, ApiError> {
        let (_, mut obj) = validate(msg.object)?;
        // Milliseconds: "oldest first" decides which service publishes a contested node port
        // and which node gets a subnet first, and services applied together share a second.
        obj.metadata.creation_timestamp = Some(gantry_api::events::now_rfc3339_millis());
        obj.metadata.resource_version = None;
        let (kind, name) = (obj.kind.to_string(), obj.metadata.name.clone());
        let json =
            String::from_utf8(obj.to_json()).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let r = self
            .propose(Request::Create {
                kind: kind.clone(),
                name: name.clone(),
                json,
            })
            .await?;
        Self::written(&kind, &name, 0, r)
    }

    async fn do_update(&self, msg: UpdateRequest) -> Result<WriteResponse, ApiError> {
        let (envelope, obj) = validate(msg.object)?;
        let expected = match envelope.resource_version {
            0 => obj.resource_version(),
            v => v,
        };
        if expected == 0 {
            return Err(ApiError::Invalid(
                "metadata.resourceVersion: required for an update (compare-and-swap)".into(),
            ));
        }
        let (kind, name) = (obj.kind.to_string(), obj.metadata.name.clone());
        let json =
            String::from_utf8(obj.to_json()).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let req = Request::Update {
            kind: kind.clone(),
            name: name.clone(),
            expected,
            json,
        };
        let r = self.propose(req).await?;
        Self::written(&kind, &name, expected, r)
    }

    async fn do_delete(&self, msg: DeleteRequest) -> Result<WriteResponse, ApiError> {
        let kind = kind_of(&msg.kind)?.to_string();
        validate_name(&msg.name).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let expected =
            (msg.expected_resource_version != 0).then_some(msg.expected_resource_version);
        let req = Request::Delete {
            kind: kind.clone(),
            name: msg.name.clone(),
            expected,
        };
        let r = self.propose(req).await?;
        Self::written(&kind, &msg.name, msg.expected_resource_version, r)
    }

    async fn do_get(&self, msg: &GetRequest) -> Result<GetResponse, ApiError> {
        let kind = kind_of(&msg.kind)?.to_string();
        validate_name(&msg.name).map_err(|e| ApiError::Invalid(e.to_string()))?;
        if msg.consistency != Consistency::Stale as i32 {
            self.read_barrier().await?;
        }
        let revision = self.store.revision();
        match self.store.get(&kind, &msg.name)? {
            Some(o) => Ok(GetResponse {
                object: Some(to_proto(o)),
                revision,
            }),
            None => Err(ApiError::NotFound(format!("{kind}/{}", msg.name))),
        }
    }

    async fn do_list(&self, msg: &ListRequest) -> Result<ListResponse, ApiError> {
        let kind = kind_of(&msg.kind)?.to_string();
        if msg.consistency != Consistency::Stale as i32 {
            self.read_barrier().await?;
        }
        let (items, revision) = self.store.list(&kind)?;
        Ok(ListResponse {
            items: items.into_iter().map(to_proto).collect(),
            revision,
        })
    }

    /// The membership as this member sees it (the leader also knows others' progress).
    pub fn members(&self) -> MembersResponse {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let last_applied = if *id == self.id {
                    m.last_applied.map(|l| l.index).unwrap_or(0)
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                        .unwrap_or(0)
                };
                proto::Member {
                    id: *id,
                    name: node.name.clone(),
                    addr: node.addr.clone(),
                    leader: m.current_leader == Some(*id),
                    voter: voters.contains(id),
                    term: m.current_term,
                    last_applied,
                }
            })
            .collect();
        MembersResponse {
            members,
            cluster_id: self.cluster_id.to_string(),
        }
    }

    fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        if leader == self.id {
            return None;
        }
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    async fn do_add_member(&self, msg: AddMemberRequest) -> Result<AddMemberResponse, ApiError> {
        validate_name(&msg.name).map_err(|e| ApiError::Invalid(format!("member {e}")))?;
        if msg.addr.is_empty() || msg.id == 0 {
            return Err(ApiError::Invalid("member: id and addr are required".into()));
        }
        let _turn = self.membership_turn().await?;
        let current = self.raft.metrics().borrow().membership_config.clone();
        let membership = current.membership();
        if let Some((other, _)) = membership
            .nodes()
            .find(|(id, n)| n.name == msg.name && **id != msg.id)
        {
            return Err(ApiError::AlreadyExists {
                what: format!("member {} (id {other})", msg.name),
                current: 0,
            });
        }
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&msg.id) {
            return Ok(AddMemberResponse {
                cluster_id: self.cluster_id.to_string(),
            });
        }
        let node = MemberNode {
            name: msg.name.clone(),
            addr: msg.addr.clone(),
        };
        // A learner first, so the new member catches up before it counts for the quorum.
        let deadline = self.timeout * 6;
        match tokio::time::timeout(deadline, self.raft.add_learner(msg.id, node, true)).await {
            Err(_) => return Err(ApiError::Timeout("add learner", deadline)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return Err(Self::not_leader(&f))
            }
            Ok(Err(e)) => return Err(ApiError::Raft(e.to_string())),
            Ok(Ok(_)) => {}
        }
        voters.insert(msg.id);
        self.change_voters(voters).await?;
        tracing::info!(member = %msg.name, id = msg.id, addr = %msg.addr, "member added");
        Ok(AddMemberResponse {
            cluster_id: self.cluster_id.to_string(),
        })
    }

    async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), ApiError> {
        let deadline = self.timeout * 2;
        match tokio::time::timeout(deadline, self.raft.change_membership(voters, false)).await {
            Err(_) => Err(ApiError::Timeout("membership change", deadline)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Self::not_leader(&f))
            }
            Ok(Err(e)) => Err(ApiError::Raft(e.to_string())),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// How long the leader may take over a membership change: its turn, the previous change,
    /// a new member catching up as a learner, then the joint and final configurations.
    fn membership_deadline(&self) -> Duration {
        self.timeout * 10
    }

    /// Waits for this member's turn to change the membership: it must lead, no other change
    /// may be in flight here, and the last change must be applied, so the caller reads a
    /// settled membership and may propose the next. The turn lasts while the guard lives.
    ///
    /// openraft refuses a change while the last is uncommitted and checks that before
    /// leadership: a follower whose commit index lags (a change just made) would answer "in
    /// progress" instead of naming the leader, and a leader asked for two changes at once
    /// would refuse the second. So a follower names the leader (the request is forwarded) and
    /// the leader queues changes, each within the request deadline.
    async fn membership_turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, ApiError> {
        let leader = self.raft.metrics().borrow().current_leader;
        if leader != Some(self.id) {
            return Err(ApiError::NotLeader(self.leader_addr()));
        }
        let busy = || {
            ApiError::Raft(format!(
                "membership change: the previous one is still in progress after {:?}, try again",
                self.timeout
            ))
        };
        let turn = tokio::time::timeout(self.timeout, self.membership_turn.clone().lock_owned())
            .await
            .map_err(|_| busy())?;
        let settled = self
            .raft
            .wait(Some(self.timeout))
            .metrics(
                |m| m.last_applied >= *m.membership_config.log_id(),
                "the last membership change applied",
            )
            .await;
        match settled {
            Ok(_) => Ok(turn),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(busy()),
            Err(e) => Err(ApiError::Raft(e.to_string())),
        }
    }

    async fn do_remove_member(
        &self,
        msg: RemoveMemberRequest,
    ) -> Result<RemoveMemberResponse, ApiError> {
        let _turn = self.membership_turn().await?;
        let current = self.raft.metrics().borrow().membership_config.clone();
        let membership = current.membership();
        let Some((id, _)) = membership.nodes().find(|(_, n)| n.name == msg.name) else {
            return Err(ApiError::NotFound(format!("member {}", msg.name)));
        };
        let id = *id;
        let voters: BTreeSet<NodeId> = membership.voter_ids().filter(|v| *v != id).collect();
        if voters.is_empty() {
            return Err(ApiError::Invalid(format!(
                "member {}: cannot remove the last voter",
                msg.name
            )));
        }
        self.change_voters(voters).await?;
        tracing::info!(member = %msg.name, id, "member removed");
        Ok(RemoveMemberResponse {})
    }
}

/// Runs a handler; when this member is not the leader, forwards the request once and waits
/// for the leader's answer within `$deadline` (the request timeout unless given).
macro_rules! leader_call {
    ($self:ident, $request:ident, $do:ident, $rpc:ident) => {
        leader_call!($self, $request, $do, $rpc, $self.timeout)
    };
    ($self:ident, $request:ident, $do:ident, $rpc:ident, $deadline:expr) => {{
        let hops = hops(&$request);
        let msg = $request.into_inner();
        match $self.$do(msg.clone()).await {
            Ok(r) => Ok(tonic::Response::new(r)),
            Err(e) => match $self.forward_target(&e, hops) {
                Some(addr) => {
                    // A leader that vanished mid-call must not hold the client forever.
                    let mut peer = $self.peer(&addr)?;
                    let deadline = $deadline;
                    match tokio::time::timeout(deadline, peer.$rpc(forwarded(msg, hops))).await {
                        Ok(r) => r,
                        Err(_) => {
                            Err(ApiError::Timeout("forwarded request", deadline).into_status())
                        }
                    }
                }
                None => Err(e.into_status()),
            },
        }
    }};
}

/// The server-streaming type of `Watch`.
pub type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ObjectService for ObjectApi {
    async fn create(
        &self,
        request: tonic::Request<CreateRequest>,
    ) -> Result<tonic::Response<WriteResponse>, Status> {
        leader_call!(self, request, do_create, create)
    }

    async fn update(
        &self,
        request: tonic::Request<UpdateRequest>,
    ) -> Result<tonic::Response<WriteResponse>, Status> {
        leader_call!(self, request, do_update, update)
    }

    async fn delete(
        &self,
        request: tonic::Request<DeleteRequest>,
    ) -> Result<tonic::Response<WriteResponse>, Status> {
        leader_call!(self, request, do_delete, delete)
    }

    async fn get(
        &self,
        request: tonic::Request<GetRequest>,
    ) -> Result<tonic::Response<GetResponse>, Status> {
        let hops = hops(&request);
        let msg = request.into_inner();
        match self.do_get(&msg).await {
            Ok(r) => Ok(tonic::Response::new(r)),
            Err(e) => match self.forward_target(&e, hops) {
                Some(addr) => self.peer(&addr)?.get(forwarded(msg, hops)).await,
                None => Err(e.into_status()),
            },
        }
    }

    async fn list(
        &self,
        request: tonic::Request<ListRequest>,
    ) -> Result<tonic::Response<ListResponse>, Status> {
        let hops = hops(&request);
        let msg = request.into_inner();
        match self.do_list(&msg).await {
            Ok(r) => Ok(tonic::Response::new(r)),
            Err(e) => match self.forward_target(&e, hops) {
                Some(addr) => self.peer(&addr)?.list(forwarded(msg, hops)).await,
                None => Err(e.into_status()),
            },
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let msg = request.into_inner();
        let kind = kind_of(&msg.kind)?.to_string();
        let (history, live) = self.store.watch(msg.from_revision).map_err(|e| match e {
            WatchError::Compacted { requested, .. } => ApiError::Compacted(requested),
        })?;
        let (tx, rx) = mpsc::channel(self.watch_buffer);
        tokio::spawn(feed_watcher(kind, msg.from_revision, history, live, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn members(
        &self,
        request: tonic::Request<MembersRequest>,
    ) -> Result<tonic::Response<MembersResponse>, Status> {
        // The leader knows everyone's progress: ask it, falling back to the local view.
        if hops(&request) == 0 {
            if let Some(addr) = self.leader_addr() {
                if let Ok(mut client) = self.peer(&addr) {
                    let call = client.members(forwarded(MembersRequest {}, 0));
                    if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                        return Ok(r);
                    }
                }
            }
        }
        Ok(tonic::Response::new(self.members()))
    }

    async fn add_member(
        &self,
        request: tonic::Request<AddMemberRequest>,
    ) -> Result<tonic::Response<AddMemberResponse>, Status> {
        leader_call!(
            self,
            request,
            do_add_member,
            add_member,
            self.membership_deadline()
        )
    }

    async fn remove_member(
        &self,
        request: tonic::Request<RemoveMemberRequest>,
    ) -> Result<tonic::Response<RemoveMemberResponse>, Status> {
        leader_call!(
            self,
            request,
            do_remove_member,
            remove_member,
            self.membership_deadline()
        )
    }
}

fn event_of(change: &crate::store::state_machine::Change) -> WatchEvent {
    let r#type = match change.change {
        ChangeType::Added => EventType::Added,
        ChangeType::Modified => EventType::Modified,
        ChangeType::Deleted => EventType::Deleted,
    };
    WatchEvent {
        r#type: r#type as i32,
        object: Some(to_proto(change.object.clone())),
        revision: change.revision,
    }
}

/// Sends history then live changes of `kind` to one watcher. The watcher's channel is bounded
/// and live changes come from a bounded broadcast ring: a watcher that falls behind the ring is
/// cut off with an error instead of growing memory.
async fn feed_watcher(
    kind: String,
    from: u64,
    history: Vec<Arc<crate::store::state_machine::Change>>,
    mut live: broadcast::Receiver<WatchItem>,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
) {
    let mut last = from;
    for change in history {
        last = last.max(change.revision);
        if change.object.kind == kind && tx.send(Ok(event_of(&change))).await.is_err() {
            return;
        }
    }
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            item = live.recv() => item,
        };
        match item {
            Ok(WatchItem::Change(change)) => {
                if change.revision <= last {
                    continue;
                }
                last = change.revision;
                if change.object.kind == kind && tx.send(Ok(event_of(&change))).await.is_err() {
                    return;
                }
            }
            Ok(WatchItem::Reset) => {
                let status = Status::out_of_range(format!(
                    "revision {last} compacted, list again (state replaced by a snapshot)"
                ));
                let _ = tokio::time::timeout(Duration::from_secs(5), tx.send(Err(status))).await;
                return;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let status = Status::resource_exhausted(format!(
                    "watcher too slow: fell {n} changes behind after revision {last}, list again"
                ));
                let _ = tokio::time::timeout(Duration::from_secs(5), tx.send(Err(status))).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_counts_hops_and_stops_at_the_limit() {
        let fresh = tonic::Request::new(());
        assert_eq!(hops(&fresh), 0);
        let once = forwarded((), hops(&fresh));
        assert_eq!(hops(&once), 1);
        let twice = forwarded((), hops(&once));
        assert_eq!(hops(&twice), MAX_HOPS);
        // A count the member cannot read is taken as the limit: never forwarded again.
        let mut odd = tonic::Request::new(());
        odd.metadata_mut().insert(
            FORWARDED,
            tonic::metadata::MetadataValue::from_static("lots"),
        );
        assert_eq!(hops(&odd), MAX_HOPS);
    }
}
