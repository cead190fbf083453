//! The Raft type configuration: what a log entry carries (a [`Request`]), what applying it
//! answers (a [`Response`]) and what a member is ([`MemberNode`]).

use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A member's Raft id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Gantry's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a member.
pub type Raft = openraft::Raft<TypeConfig>;

/// What the cluster knows about a member beyond its id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Human name (`--name`).
    pub name: String,
    /// Address its gRPC server listens on (`host:port`).
    pub addr: String,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// An object as the state machine stores it: the envelope plus the JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// The object's kind (`Service`, …).
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Revision of its last write.
    pub resource_version: u64,
    /// The whole JSON document (with `metadata.resourceVersion` equal to `resource_version`).
    pub json: String,
}

/// A write proposed through Raft. Compare-and-swap conditions are checked when it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create an object that must not exist yet.
    Create {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// JSON document.
        json: String,
    },
    /// Replace an object whose stored version must equal `expected`.
    Update {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The resource version the writer read.
        expected: u64,
        /// JSON document.
        json: String,
    },
    /// Delete an object, if `expected` is set only at that version.
    Delete {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The resource version the writer read, if conditional.
        expected: Option<u64>,
    },
    /// Several writes in one log entry, applied atomically and in order. Each is checked on
    /// its own (a failed compare-and-swap fails only that item, answered in
    /// [`Response::Batch`] at the same position) and gets its own revision; a later item sees
    /// the writes of earlier ones. Batches do not nest: a nested batch is answered
    /// [`Response::Invalid`].
    ///
    /// Added after the first release: entries written before it still decode, since serde
    /// names each variant and the others are unchanged.
    Batch(Vec<Request>),
}

/// The result of applying one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Entries that are not writes (blank, membership).
    #[default]
    None,
    /// The write happened; the object as stored (before deletion, for a delete).
    Written {
        /// The object.
        object: StoredObject,
        /// The revision of the write.
        revision: u64,
    },
    /// The object does not exist.
    NotFound,
    /// A create found the object already there.
    AlreadyExists {
        /// Its stored version.
        current: u64,
    },
    /// A compare-and-swap failed.
    Conflict {
        /// Its stored version.
        current: u64,
    },
    /// The document could not be stored (never expected: the API validates first).
    Invalid {
        /// Why.
        message: String,
    },
    /// The results of a [`Request::Batch`], one per item, in order.
    Batch(Vec<Response>),
}
