//! Storage: everything a member keeps on disk.
//!
//! - [`kv`]: [`KvBackend`], the narrow key-value trait; [`sled_kv`]: its sled implementation.
//! - [`log_store`]: the Raft log and vote ([`LogStore`], openraft's `RaftLogStorage`).
//! - [`durability`]: lets a leader flush its own log in parallel with replication, gating
//!   every use of a commit on that flush ([`Durability`]).
//! - [`state_machine`]: the object store ([`StateMachine`], openraft's `RaftStateMachine`),
//!   with revisions, a bounded change history for watch, and snapshots.
//!
//! Invariants: the vote is flushed before `save_vote` returns and appended entries before the
//! append callback fires; each entry is applied together with `last_applied` in one atomic
//! batch; a snapshot install loads a fresh tree and then flips a pointer key.

pub mod durability;
pub mod kv;
pub mod log_store;
pub mod sled_kv;
pub mod state_machine;

pub use durability::Durability;
pub use kv::{KvBackend, WriteBatch};
pub use log_store::LogStore;
pub use sled_kv::SledBackend;
pub use state_machine::{ChangeType, ObjectStore, StateMachine, WatchItem};

use crate::types::NodeId;
use openraft::{StorageError, StorageIOError};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open store at {path}: {message}")]
    Open {
        /// The data directory.
        path: String,
        /// The backend's reason.
        message: String,
    },
    /// A sled operation failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A flush of the log failed earlier; nothing written since is known durable.
    #[error("{0}")]
    Flush(String),
    /// A stored value could not be decoded.
    #[error("corrupt value at {key}: {message}")]
    Corrupt {
        /// The key (printable form).
        key: String,
        /// The decoder's message.
        message: String,
    },
}

pub(crate) fn read_err(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

pub(crate) fn write_err(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    v: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Invariant: the stored types are plain structs/enums with string map keys, which
    // serde_json always serializes.
    serde_json::to_vec(v).unwrap_or_default()
}
