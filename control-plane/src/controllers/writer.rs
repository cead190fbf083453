//! [`Writer`]: compare-and-swap writes proposed through Raft by the controllers, with a
//! deadline, answering a small [`Outcome`] instead of openraft's error tree.

use crate::types::{Raft, Request, Response, StoredObject};
use gantry_api::objects::Object;
use std::time::Duration;

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

    async fn propose(&self, req: Request) -> Outcome {
        match tokio::time::timeout(self.timeout, self.raft.client_write(req)).await {
            Err(_) => Outcome::Failed(format!("not committed within {:?}", self.timeout)),
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Ok(Ok(r)) => match r.data {
                Response::Written { object, .. } => Outcome::Written(object),
                Response::Conflict { .. } | Response::AlreadyExists { .. } => Outcome::Conflict,
                Response::NotFound => Outcome::NotFound,
                Response::Invalid { message } => Outcome::Failed(message),
                Response::None => Outcome::Failed("unexpected empty response".into()),
            },
        }
    }

    /// Creates `obj`, which must not exist yet; sets its creation timestamp when unset.
    pub async fn create(&self, obj: &Object) -> Outcome {
        let mut obj = obj.clone();
        obj.metadata.resource_version = None;
        if obj.metadata.creation_timestamp.is_none() {
            obj.metadata.creation_timestamp = Some(gantry_api::events::now_rfc3339_millis());
        }
        self.propose(Request::Create {
            kind: obj.kind.to_string(),
            name: obj.metadata.name.clone(),
            json: json_of(&obj),
        })
        .await
    }

    /// Replaces `obj` if it is still at the version it was read at.
    pub async fn update(&self, obj: &Object) -> Outcome {
        self.propose(Request::Update {
            kind: obj.kind.to_string(),
            name: obj.metadata.name.clone(),
            expected: obj.resource_version(),
            json: json_of(obj),
        })
        .await
    }

    /// Deletes `obj` if it is still at the version it was read at.
    pub async fn delete(&self, obj: &Object) -> Outcome {
        self.propose(Request::Delete {
            kind: obj.kind.to_string(),
            name: obj.metadata.name.clone(),
            expected: Some(obj.resource_version()),
        })
        .await
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
