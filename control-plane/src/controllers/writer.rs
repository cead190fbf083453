//! [`Writer`]: compare-and-swap writes proposed through Raft by the controllers, with a
//! deadline, answering a small [`Outcome`] instead of openraft's error tree.
//!
//! The `*_many` methods propose many writes as [`Request::Batch`] entries of at most
//! [`MAX_BATCH_BYTES`] of documents each: one Raft round and one fsync per entry instead of
//! one per write, with every write still checked on its own.

use crate::types::{Raft, Request, Response, StoredObject};
use gantry_api::objects::Object;
use std::time::Duration;

/// Documents proposed in one batch entry at most (one larger write still goes alone).
///
/// Why this small: sled 0.34 writes any item larger than a quarter segment (128 KiB with the
/// default 512 KiB segments) to a blob file of its own, and entries of 128 KiB of documents
/// bound ~10× slower than entries of 48 KiB (762 against 7,926 binds/s in
/// `scheduler_end_to_end_figures`). It also keeps a full AppendEntries (openraft sends up to
/// 300 entries) far below the 64 MiB Raft message limit.
pub const MAX_BATCH_BYTES: usize = 48 * 1024;

/// What a proposed write came to.
#[derive(Debug)]
pub enum Outcome {
    /// Written; the object as stored.
    Written(StoredObject),
    /// The compare-and-swap failed or a create found the object: re-read and retry.
    Conflict,
    /// The object does not exist.
    NotFound,
    /// Not committed (lost leadership, timeout, invalid document).
    Failed(String),
}

impl Outcome {
    /// True when the write happened.
    pub fn is_written(&self) -> bool {
        matches!(self, Outcome::Written(_))
    }
}

/// Proposes writes through this member's Raft handle.
#[derive(Clone)]
pub struct Writer {
    raft: Raft,
    timeout: Duration,
}

impl Writer {
    /// A writer on `raft`; each write gives up after `timeout`.
    pub fn new(raft: Raft, timeout: Duration) -> Self {
        Writer { raft, timeout }
    }

    async fn commit(&self, req: Request) -> Result<Response, String> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(req)).await {
            Err(_) => Err(format!("not committed within {:?}", self.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(r)) => Ok(r.data),
        }
    }

    async fn propose(&self, req: Request) -> Outcome {
        match self.commit(req).await {
            Ok(r) => outcome(r),
            Err(message) => Outcome::Failed(message),
        }
    }

    /// Proposes `reqs` as batch entries of at most [`MAX_BATCH_BYTES`], concurrently; one
    /// outcome per request, in order.
    async fn propose_many(&self, reqs: Vec<Request>) -> Vec<Outcome> {
        let mut chunks: Vec<Vec<Request>> = Vec::new();
        let mut bytes = 0;
        for req in reqs {
            let size = match &req {
                Request::Create { json, .. } | Request::Update { json, .. } => json.len(),
                _ => 64,
            };
            match chunks.last_mut() {
                Some(chunk) if bytes + size <= MAX_BATCH_BYTES => {
                    bytes += size;
                    chunk.push(req);
                }
                _ => {
                    bytes = size;
                    chunks.push(vec![req]);
                }
            }
        }
        futures::future::join_all(chunks.into_iter().map(|c| self.propose_batch(c)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Proposes `reqs` as one batch entry; one outcome per request, in order.
    async fn propose_batch(&self, mut reqs: Vec<Request>) -> Vec<Outcome> {
        let n = reqs.len();
        if n <= 1 {
            // Nothing to batch: a batch of one would only cost a wrapper.
            return match reqs.pop() {
                Some(req) => vec![self.propose(req).await],
                None => Vec::new(),
            };
        }
        match self.commit(Request::Batch(reqs)).await {
            Ok(Response::Batch(responses)) if responses.len() == n => {
                responses.into_iter().map(outcome).collect()
            }
            Ok(other) => {
                let message = format!("unexpected answer to a batch of {n}: {other:?}");
                (0..n).map(|_| Outcome::Failed(message.clone())).collect()
            }
            Err(message) => (0..n).map(|_| Outcome::Failed(message.clone())).collect(),
        }
    }

    /// Creates `obj`, which must not exist yet; sets its creation timestamp when unset.
    pub async fn create(&self, obj: &Object) -> Outcome {
        self.propose(create_request(obj)).await
    }

    /// Replaces `obj` if it is still at the version it was read at.
    pub async fn update(&self, obj: &Object) -> Outcome {
        self.propose(update_request(obj)).await
    }

    /// Deletes `obj` if it is still at the version it was read at.
    pub async fn delete(&self, obj: &Object) -> Outcome {
        self.propose(delete_request(obj)).await
    }

    /// [`Writer::create`] of each of `objs` in one Raft entry; one outcome each, in order.
    pub async fn create_many(&self, objs: &[Object]) -> Vec<Outcome> {
        self.propose_many(objs.iter().map(create_request).collect())
            .await
    }

    /// [`Writer::update`] of each of `objs` in one Raft entry; one outcome each, in order. A
    /// failed compare-and-swap fails only its own object.
    pub async fn update_many(&self, objs: &[Object]) -> Vec<Outcome> {
        self.propose_many(objs.iter().map(update_request).collect())
            .await
    }

    /// [`Writer::delete`] of each of `objs` in one Raft entry; one outcome each, in order.
    pub async fn delete_many(&self, objs: &[Object]) -> Vec<Outcome> {
        self.propose_many(objs.iter().map(delete_request).collect())
            .await
    }
}

fn outcome(r: Response) -> Outcome {
    match r {
        Response::Written { object, .. } => Outcome::Written(object),
        Response::Conflict { .. } | Response::AlreadyExists { .. } => Outcome::Conflict,
        Response::NotFound => Outcome::NotFound,
        Response::Invalid { message } => Outcome::Failed(message),
        Response::None => Outcome::Failed("unexpected empty response".into()),
        Response::Batch(_) => Outcome::Failed("unexpected batch response".into()),
    }
}

fn create_request(obj: &Object) -> Request {
    let mut obj = obj.clone();
    obj.metadata.resource_version = None;
    if obj.metadata.creation_timestamp.is_none() {
        obj.metadata.creation_timestamp = Some(gantry_api::events::now_rfc3339_millis());
    }
    Request::Create {
        kind: obj.kind.to_string(),
        name: obj.metadata.name.clone(),
        json: json_of(&obj),
    }
}

fn update_request(obj: &Object) -> Request {
    Request::Update {
        kind: obj.kind.to_string(),
        name: obj.metadata.name.clone(),
        expected: obj.resource_version(),
        json: json_of(obj),
    }
}

fn delete_request(obj: &Object) -> Request {
    Request::Delete {
        kind: obj.kind.to_string(),
        name: obj.metadata.name.clone(),
        expected: Some(obj.resource_version()),
    }
}

fn json_of(obj: &Object) -> String {
    // Invariant: `Object::to_json` produces UTF-8 JSON.
    String::from_utf8(obj.to_json()).unwrap_or_default()
}

/// Parses a stored object; `None` (logged) when it does not parse.
pub fn parse(stored: &StoredObject) -> Option<Object> {
    match Object::from_json(stored.json.as_bytes()) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(kind = %stored.kind, name = %stored.name, error = %e,
                "skipping unparsable object");
            None
        }
    }
}
