//! [`Client`]: the typed client of the public `ObjectService`, used by the CLI and the node
//! agents.
//!
//! It is given every known member address and talks to one at a time; when the member it uses
//! cannot be reached it moves on to the next. Reads are retried on the next member at once;
//! a write is retried only when it never reached a member (the connection was refused), so a
//! write is never applied twice behind the caller's back.

use crate::objects::{Kind, Object};
use crate::proto::object_service_client::ObjectServiceClient;
use crate::proto::{self, Consistency};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// How long connecting to one member may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one call may wait for its answer (a member that vanished mid-call, a partition).
/// Longer than a member's own deadline for a write (5 s), so that its answer arrives first.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);

/// The largest message the client accepts (a list of many objects).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Errors of [`Client`] calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No member answered.
    #[error("cannot reach the control plane at {addrs}: {last}")]
    Unreachable {
        /// Every address tried, comma-separated.
        addrs: String,
        /// The last failure.
        last: String,
    },
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A create found the object already there.
    #[error("{0}")]
    AlreadyExists(String),
    /// A compare-and-swap failed: someone else wrote the object first.
    #[error("{0}")]
    Conflict(String),
    /// The request was refused as invalid.
    #[error("{0}")]
    Invalid(String),
    /// The cluster could not serve it (no quorum, no leader); the outcome of a write is unknown.
    #[error("{0}")]
    Unavailable(String),
    /// A watch revision is gone (compacted, or the watcher fell behind): list again.
    #[error("{0}")]
    Expired(String),
    /// A member answered something that is not a valid object.
    #[error("bad object from the server: {0}")]
    BadObject(String),
    /// Anything else the server said.
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    fn from_status(status: &tonic::Status) -> Self {
        let msg = status.message().to_string();
        if broken_transport(status) {
            return ClientError::Unavailable(format!(
                "connection to the member lost ({}); the outcome of a write is unknown",
                error_chain(status)
            ));
        }
        match status.code() {
            Code::NotFound => ClientError::NotFound(msg),
            Code::AlreadyExists => ClientError::AlreadyExists(msg),
            Code::Aborted | Code::FailedPrecondition => ClientError::Conflict(msg),
            Code::InvalidArgument => ClientError::Invalid(msg),
            Code::Unavailable | Code::DeadlineExceeded => ClientError::Unavailable(msg),
            Code::OutOfRange | Code::ResourceExhausted => ClientError::Expired(msg),
            _ => ClientError::Other(format!("{:?}: {msg}", status.code())),
        }
    }

    /// True for errors after which trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Unavailable(_)
        )
    }
}

/// Whether the call failed before any member received it.
fn never_delivered(status: &tonic::Status) -> bool {
    // tonic reports connection failures as Unavailable with a transport source error; a
    // member's own "unavailable" answers carry no source. Only a failed connect proves the
    // request never left: a connection reset may come after the member received it.
    status.code() == Code::Unavailable
        && std::error::Error::source(status).is_some()
        && error_chain(status).contains("connect")
}

/// Whether the connection broke under the call (the member died or the network failed).
fn broken_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            Code::Unknown | Code::Unavailable | Code::Internal | Code::Cancelled
        )
}

/// A change seen by a watch.
#[derive(Debug, Clone)]
pub struct Change {
    /// What happened.
    pub change: proto::EventType,
    /// The object after the change (before it, for a delete).
    pub object: Object,
    /// The revision of the change.
    pub revision: u64,
}

/// A client of the control plane, bound to one member at a time.
#[derive(Debug, Clone)]
pub struct Client {
    addrs: Vec<String>,
    current: usize,
    inner: ObjectServiceClient<Channel>,
}

fn endpoint(addr: &str) -> Result<Endpoint, String> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri)
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .map_err(|e| format!("invalid address {addr:?}: {e}"))
}

fn wrap(channel: Channel) -> ObjectServiceClient<Channel> {
    ObjectServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn object_of(o: Option<proto::Object>) -> Result<Object, ClientError> {
    let o = o.ok_or_else(|| ClientError::BadObject("missing object".into()))?;
    Object::from_json(&o.json).map_err(|e| ClientError::BadObject(e.to_string()))
}

impl Client {
    /// Connects to the first of `addrs` (`host:port`) that answers.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] naming every address when none answers, or
    /// [`ClientError::Invalid`] when `addrs` is empty or holds a malformed address.
    pub async fn connect(addrs: &[String]) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Invalid(
                "no control-plane address given".into(),
            ));
        }
        let mut client = Client {
            addrs: addrs.to_vec(),
            current: 0,
            inner: wrap(
                endpoint(&addrs[0])
                    .map_err(ClientError::Invalid)?
                    .connect_lazy(),
            ),
        };
        client.reconnect(0).await?;
        Ok(client)
    }

    /// The address of the member in use.
    pub fn server(&self) -> &str {
        &self.addrs[self.current]
    }

    /// Connects eagerly to the first member that answers, starting at `addrs[start]`.
    async fn reconnect(&mut self, start: usize) -> Result<(), ClientError> {
        let mut last = String::new();
        for i in 0..self.addrs.len() {
            let idx = (start + i) % self.addrs.len();
            let ep = endpoint(&self.addrs[idx]).map_err(ClientError::Invalid)?;
            match ep.connect().await {
                Ok(channel) => {
                    self.current = idx;
                    self.inner = wrap(channel);
                    return Ok(());
                }
                Err(e) => {
                    last = format!("{}: {}", self.addrs[idx], error_chain(&e));
                }
            }
        }
        Err(ClientError::Unreachable {
            addrs: self.addrs.join(","),
            last,
        })
    }

    /// Runs `call` against the current member; when the member cannot be reached, moves to
    /// the next one and, if `retry` allows (reads, or writes never delivered), runs it again.
    async fn call<T, F, Fut>(&mut self, idempotent: bool, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(ObjectServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut tries = 0;
        loop {
            match call(self.inner.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let unreachable = never_delivered(&status);
                    let unavailable = unreachable
                        || broken_transport(&status)
                        || status.code() == Code::Unavailable;
                    tries += 1;
                    if !unavailable || tries >= self.addrs.len().max(2) {
                        return Err(ClientError::from_status(&status));
                    }
                    let next = (self.current + 1) % self.addrs.len();
                    self.reconnect(next).await?;
                    if !(idempotent || unreachable) {
                        return Err(ClientError::from_status(&status));
                    }
                }
            }
        }
    }

    /// Reads one object (linearizable); `Ok(None)` when it does not exist.
    pub async fn get(&mut self, kind: Kind, name: &str) -> Result<Option<Object>, ClientError> {
        let req = proto::GetRequest {
            kind: kind.to_string(),
            name: name.to_string(),
            consistency: Consistency::Linearizable as i32,
        };
        match self
            .call(true, |mut c| {
                let req = req.clone();
                async move { c.get(req).await }
            })
            .await
        {
            Ok(r) => object_of(r.object).map(Some),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads one object, failing with [`ClientError::NotFound`] when it does not exist.
    pub async fn get_existing(&mut self, kind: Kind, name: &str) -> Result<Object, ClientError> {
        self.get(kind, name)
            .await?
            .ok_or_else(|| ClientError::NotFound(format!("{kind} {name:?} not found")))
    }

    /// Lists every object of `kind` (linearizable) and the revision to watch from.
    pub async fn list(&mut self, kind: Kind) -> Result<(Vec<Object>, u64), ClientError> {
        self.list_with(kind, Consistency::Linearizable).await
    }

    /// [`Client::list`] with the given consistency (`Stale` reads this member's state).
    pub async fn list_with(
        &mut self,
        kind: Kind,
        consistency: Consistency,
    ) -> Result<(Vec<Object>, u64), ClientError> {
        let req = proto::ListRequest {
            kind: kind.to_string(),
            consistency: consistency as i32,
        };
        let r = self
            .call(true, |mut c| {
                let req = req.clone();
                async move { c.list(req).await }
            })
            .await?;
        let items = r
            .items
            .into_iter()
            .map(|o| object_of(Some(o)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, r.revision))
    }

    /// Creates `object`; fails with [`ClientError::AlreadyExists`] if it exists.
    pub async fn create(&mut self, object: &Object) -> Result<Object, ClientError> {
        let req = proto::CreateRequest {
            object: Some(to_proto(object)),
        };
        let r = self
            .call(false, |mut c| {
                let req = req.clone();
                async move { c.create(req).await }
            })
            .await?;
        object_of(r.object)
    }

    /// Replaces `object` if its `metadata.resourceVersion` is still the stored one; fails with
    /// [`ClientError::Conflict`] otherwise.
    pub async fn update(&mut self, object: &Object) -> Result<Object, ClientError> {
        let req = proto::UpdateRequest {
            object: Some(to_proto(object)),
        };
        let r = self
            .call(false, |mut c| {
                let req = req.clone();
                async move { c.update(req).await }
            })
            .await?;
        object_of(r.object)
    }

    /// Deletes an object, only if its version is `expected` when given. Returns the object as
    /// it was, or `None` when it did not exist.
    pub async fn delete(
        &mut self,
        kind: Kind,
        name: &str,
        expected: Option<u64>,
    ) -> Result<Option<Object>, ClientError> {
        let req = proto::DeleteRequest {
            kind: kind.to_string(),
            name: name.to_string(),
            expected_resource_version: expected.unwrap_or(0),
        };
        match self
            .call(false, |mut c| {
                let req = req.clone();
                async move { c.delete(req).await }
            })
            .await
        {
            Ok(r) => object_of(r.object).map(Some),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams every change of `kind` after `from_revision`.
    pub async fn watch(&mut self, kind: Kind, from_revision: u64) -> Result<Watch, ClientError> {
        let req = proto::WatchRequest {
            kind: kind.to_string(),
            from_revision,
        };
        let stream = self
            .call(true, |mut c| {
                let req = req.clone();
                async move { c.watch(req).await }
            })
            .await?;
        Ok(Watch { stream })
    }

    /// The control-plane members as the leader (or this member) sees them.
    pub async fn members(&mut self) -> Result<proto::MembersResponse, ClientError> {
        self.call(true, |mut c| async move {
            c.members(proto::MembersRequest {}).await
        })
        .await
    }

    /// Removes a member by name.
    pub async fn remove_member(&mut self, name: &str) -> Result<(), ClientError> {
        let req = proto::RemoveMemberRequest {
            name: name.to_string(),
        };
        self.call(false, |mut c| {
            let req = req.clone();
            async move { c.remove_member(req).await }
        })
        .await
        .map(|_| ())
    }
}

/// The wire form of `object` (its `resourceVersion` is the compare-and-swap condition).
pub fn to_proto(object: &Object) -> proto::Object {
    proto::Object {
        kind: object.kind.to_string(),
        name: object.metadata.name.clone(),
        resource_version: object.resource_version(),
        json: object.to_json(),
    }
}

/// An open watch.
pub struct Watch {
    stream: tonic::Streaming<proto::WatchEvent>,
}

impl Watch {
    /// The next change; `Ok(None)` when the member ended the stream, [`ClientError::Expired`]
    /// when the caller must list again.
    pub async fn next(&mut self) -> Result<Option<Change>, ClientError> {
        match self.stream.message().await {
            Ok(Some(ev)) => Ok(Some(Change {
                change: proto::EventType::try_from(ev.r#type)
                    .map_err(|_| ClientError::BadObject(format!("event type {}", ev.r#type)))?,
                object: object_of(ev.object)?,
                revision: ev.revision,
            })),
            Ok(None) => Ok(None),
            Err(status) => Err(ClientError::from_status(&status)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
