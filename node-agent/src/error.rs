//! Errors of the agent as a whole.

use gantry_api::client::ClientError;
use gantry_runtime::container::ContainerError;
use std::time::Duration;

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another agent heartbeats the Node of this name.
    #[error("node {name:?} is held by another live agent (its heartbeat changed within the {lease:?} lease); stop that agent, pick another --name, or pass --force to take the node over")]
    NodeClaimed {
        /// The node's name.
        name: String,
        /// The lease watched.
        lease: Duration,
    },
    /// The control plane refused or failed a request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The container runtime failed.
    #[error(transparent)]
    Runtime(#[from] ContainerError),
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// Shutdown was requested before the agent was up.
    #[error("shutdown requested")]
    Shutdown,
}
