//! Gantry's control plane: the Raft-replicated object store, the API server and the
//! leader-only controller hook.
//!
//! - [`controllers`]: the leader-only controllers (service controller, scheduler, node
//!   lifecycle, events), run as [`server::LeaderTask`]s.
//! - [`types`]: the openraft type configuration (log entries are object writes).
//! - [`store`]: a narrow key-value trait ([`store::KvBackend`]) with a sled implementation, the
//!   Raft log store and the state machine (the object store with revisions and watch history).
//! - [`raft`]: the Raft network over tonic and the Raft configuration.
//! - [`server`]: `run()`, serving the Raft and object services on one listener, forwarding
//!   writes to the leader, watch, membership and the [`server::LeaderTask`] hook.
#![forbid(unsafe_code)]

pub mod controllers;
pub mod raft;
pub mod server;
pub mod store;
pub mod types;
