//! Replica networking: every replica gets an address of its node's subnet on a node bridge,
//! in a "sandbox" network namespace that outlives its containers (like a Kubernetes pod).
//!
//! Pieces:
//! - [`node_network`]: waits for the control plane to give this node its subnet
//!   (`NodeSpec.replica_cidr`), sets up the bridge (gateway `.1`) and IP forwarding, and keeps
//!   one route per other node (`<its subnet> via <its host address>`) by list + watch of Node
//!   objects. Publishes [`NodeNetwork`] on a `tokio::sync::watch` channel once set up.
//! - [`ipam`]: the address allocator, one file per address under the agent's root.
//! - [`sandbox`]: per-replica namespaces, veth pairs, routes, `resolv.conf` and `hosts`.
//! - [`ip`]: the runner of iproute2 (and util-linux) commands.
//!
//! Layout under the agent's runtime root:
//! - `netns/<replica>`: the sandbox, an nsfs bind mount;
//! - `network/ipam/<address>`: the replica holding that address; `network/ipam/last`: the
//!   last address handed out (allocation goes round-robin after it);
//! - `network/replicas/<replica>/{resolv.conf,hosts}`: bind-mounted read-only into the
//!   container at `/etc/resolv.conf` and `/etc/hosts`.
//!
//! Why iproute2 rather than netlink: the agent forbids `unsafe`, netlink crates would be new
//! dependencies, and `ip` is on every Debian host; it accepts namespace *paths* (`netns
//! /path`), batches commands (`ip -batch -`, one exec per sandbox side) and its errors are the
//! ones operators already know. A sandbox costs four short execs (`unshare`, two `ip`, one
//! `nsenter ip -batch`), a few milliseconds. Namespaces are created by `unshare --net=FILE`,
//! a short-lived helper process, so no thread of the agent ever changes namespace.
//!
//! Invariants:
//! - Replicas get routes only for the cluster and the service ranges, via the gateway, and
//!   no default route: nothing here ever routes or NATs replica traffic to the outside.
//! - An address is held by exactly one replica (claimed with an atomic no-clobber link);
//!   a replica keeps its address for its lifetime, across container and agent restarts.
//! - Every partial setup is rolled back: a failed sandbox leaves no veth, mount, file or
//!   address behind.
//! - Routes this agent adds carry protocol [`ROUTE_PROTO`], so a restarted agent finds and
//!   removes the stale ones without touching anybody else's.

pub mod ip;
pub mod ipam;
pub mod node_network;
pub mod sandbox;

use gantry_api::net::Ipv4Cidr;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use ipam::Ipam;
pub use node_network::watch_node_network;
pub use sandbox::{Sandbox, Sandboxes};

/// The route protocol number marking routes this agent manages (`ip route ... proto 214`).
pub const ROUTE_PROTO: &str = "214";
/// The default cluster range when the control plane sets a node subnet but no range.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.214.0.0/16";
/// The default service range when the control plane sets a node subnet but no range.
pub const DEFAULT_SERVICE_CIDR: &str = "10.215.0.0/16";
/// The DNS search domain written to every replica's `resolv.conf`.
pub const SEARCH_DOMAIN: &str = "gantry.local";

/// This node's network once set up: what the reconciler addresses replicas from, and what
/// the service proxy and DNS server (`crate::proxy`) bind to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The bridge replicas' host-side veths are attached to (`gantry0`).
    pub bridge: String,
    /// This node's replica subnet (`NodeSpec.replica_cidr`).
    pub subnet: Ipv4Cidr,
    /// The subnet's first host address, on the bridge: replicas' gateway and DNS server.
    pub gateway: Ipv4Addr,
    /// All nodes' replica subnets together.
    pub cluster_cidr: Ipv4Cidr,
    /// The range of services' virtual addresses.
    pub service_cidr: Ipv4Cidr,
    /// This node's host address (from `--advertise`), when it is a routable IPv4 address.
    pub node_ip: Option<Ipv4Addr>,
}

/// The receiving side of the node network: `None` until the control plane has given this
/// node a subnet and the bridge is up.
pub type NetworkWatch = tokio::sync::watch::Receiver<Option<NodeNetwork>>;

/// Why a replica's (or the node's) network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A command (`ip`, `unshare`, `nsenter`, `umount`) failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
    /// A file under the agent's root could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Every address of the subnet is held.
    #[error("no free address left in subnet {subnet} ({held} held)")]
    Exhausted {
        /// The node's subnet.
        subnet: Ipv4Cidr,
        /// Addresses held.
        held: usize,
    },
    /// A name or range that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

impl NetworkError {
    fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| NetworkError::Io { op, path, source }
    }
}

/// Checks a bridge name against the kernel's interface name rules (1-15 bytes, no `/`,
/// whitespace or `:`).
pub fn validate_bridge_name(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(NetworkError::Invalid(format!(
            "bridge name {name:?} must be 1-15 characters of [A-Za-z0-9._-]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_follow_the_kernel_limits() {
        assert!(validate_bridge_name("gantry0").is_ok());
        assert!(validate_bridge_name("").is_err());
        assert!(validate_bridge_name("a-very-long-bridge").is_err());
        assert!(validate_bridge_name("br/0").is_err());
    }
}
