//! [`AgentConfig`]: everything one agent is told at start. Plain data; the CLI fills it.

use gantry_api::model::{Cpu, Memory};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How replicas are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Each replica gets an address of the node's subnet on a bridge, in a sandbox network
    /// namespace (see [`crate::network`]).
    #[default]
    Bridge,
    /// Each container gets a private network namespace with only `lo` (agents sharing the
    /// host's network namespace, e.g. `gantry cluster up --no-netns`).
    None,
}

/// The configuration of one node agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's name (a DNS-1123 label), unique in the cluster.
    pub name: String,
    /// Control-plane member addresses, tried in order.
    pub servers: Vec<String>,
    /// The runtime root holding images and containers.
    pub root: PathBuf,
    /// The `gantry` binary used as the containers' shim (`None`: this executable).
    pub shim_program: Option<PathBuf>,
    /// The address written to `Node.spec.address` (where logs and exec are served).
    pub advertise: String,
    /// Labels of the Node object.
    pub labels: BTreeMap<String, String>,
    /// CPU offered to replicas (`None`: the machine's).
    pub cpu: Option<Cpu>,
    /// Memory offered to replicas (`None`: the machine's).
    pub memory: Option<Memory>,
    /// How often the Node's heartbeat is written.
    pub heartbeat: Duration,
    /// How long a heartbeat keeps the node claimed: another agent finding the heartbeat
    /// changing within this span refuses to start.
    pub lease: Duration,
    /// Take the Node over even if another agent seems alive.
    pub force: bool,
    /// Full reconcile period (image retries, drift repair).
    pub resync: Duration,
    /// How often the containers' state is read back (exit detection).
    pub poll: Duration,
    /// The first restart back-off; doubles per restart up to [`AgentConfig::backoff_max`].
    pub backoff_base: Duration,
    /// The longest restart back-off.
    pub backoff_max: Duration,
    /// Container starts running at once, at most.
    pub max_parallel_ops: usize,
    /// Container stops running at once, at most (they mostly wait out the grace period).
    pub max_parallel_stops: usize,
    /// Grace period between SIGTERM and SIGKILL when stopping a container.
    pub stop_grace: Duration,
    /// How replicas are networked.
    pub network: NetworkMode,
    /// The node bridge's name (with [`NetworkMode::Bridge`]).
    pub bridge: String,
}

impl AgentConfig {
    /// A configuration with Kubernetes-like defaults: heartbeat 1 s, lease 4 heartbeats,
    /// resync 10 s, back-off 10 s doubling to 5 min, bridge networking on `gantry0`.
    pub fn new(name: impl Into<String>, servers: Vec<String>, root: impl Into<PathBuf>) -> Self {
        AgentConfig {
            name: name.into(),
            servers,
            root: root.into(),
            shim_program: None,
            advertise: String::new(),
            labels: BTreeMap::new(),
            cpu: None,
            memory: None,
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(4),
            force: false,
            resync: Duration::from_secs(10),
            poll: Duration::from_millis(500),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            max_parallel_ops: 4,
            max_parallel_stops: 64,
            stop_grace: Duration::from_secs(10),
            network: NetworkMode::Bridge,
            bridge: "gantry0".into(),
        }
    }
}
