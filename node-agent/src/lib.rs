//! Gantry's node agent: registers a node, watches the replicas bound to it and reconciles
//! them into containers through `gantry-runtime`.
//!
//! Modules:
//! - [`config`]: [`AgentConfig`], what one agent is told at start.
//! - [`agent`]: [`run`], wiring every task together until shutdown.
//! - [`node`]: registration of the Node object and the heartbeat.
//! - [`watcher`]: list + watch of the replicas bound here.
//! - [`reconciler`]: the level-triggered loop from desired replicas to containers, restarts
//!   with back-off, re-adoption.
//! - [`backoff`]: the restart back-off schedule.
//! - [`probes`]: startup, liveness and readiness probes.
//! - [`status`]: batched, compare-and-swap status write-back.
//! - [`recorder`]: folded Event objects.
//! - [`network`]: replica networking: node bridge, routes to other nodes, per-replica
//!   sandbox namespaces, addresses, `resolv.conf`/`hosts`.
//! - [`server`]: the agent's gRPC service (logs, exec).
//! - [`client`]: [`client::AgentClient`], the caller's side of that service.
//! - [`proxy`]: service virtual addresses and nodePorts (nftables DNAT) and service DNS.
#![forbid(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod client;
pub mod config;
mod error;
mod informer;
pub mod network;
pub mod node;
pub mod probes;
pub mod proxy;
pub mod reconciler;
pub mod recorder;
pub mod server;
pub mod status;
pub mod watcher;

pub use agent::run;
pub use config::{AgentConfig, NetworkMode};
pub use error::AgentError;
