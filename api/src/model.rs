//! The typed spec and status of each kind: what a manifest says, what the controllers, the
//! scheduler and the agents read and write.
//!
//! Field names follow Kubernetes wherever the concept is the same (camelCase on the wire).
//! Specs reject unknown fields so that a typo in a manifest is an error, not a silently
//! ignored setting. Statuses tolerate unknown fields so that an older client can read an object
//! written by a newer agent.
//!
//! An [`crate::objects::Object`] carries spec and status as JSON; [`crate::objects::Object::spec_as`]
//! and friends convert between the two.

use crate::quantity::{format_cpu, format_memory, parse_cpu, parse_memory};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// The only `apiVersion` of Gantry's kinds.
pub const API_VERSION: &str = "gantry/v1";

/// A CPU quantity in millicpus; written `500m`, `0.5` or `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cpu(pub u64);

/// A memory quantity in bytes; written `64Mi`, `1G` or `67108864`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory(pub u64);

/// A YAML/JSON scalar that may be written as a string or a number (`cpu: 1`, `cpu: "500m"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s,
        }
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_cpu(self.0))
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Scalar::deserialize(d)?.text();
        parse_cpu(&text).map(Cpu).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_memory(self.0))
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Scalar::deserialize(d)?.text();
        parse_memory(&text)
            .map(Memory)
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_cpu(self.0))
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_memory(self.0))
    }
}

/// A port given by number (`8080`) or by the name of a declared container port (`http`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// The `name` of one of the container's `ports`.
    Name(String),
}

/// An absolute count (`1`) or a percentage of the desired replicas (`25%`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    /// A count of replicas.
    Int(u32),
    /// A percentage such as `"25%"`.
    Percent(String),
}

impl IntOrPercent {
    /// The count for `total` replicas; percentages round up when `round_up`, else down
    /// (Kubernetes rounds surge up and unavailability down). `None` for a malformed percent.
    pub fn resolve(&self, total: u32, round_up: bool) -> Option<u32> {
        match self {
            IntOrPercent::Int(n) => Some(*n),
            IntOrPercent::Percent(p) => {
                let pct: u64 = p.strip_suffix('%')?.parse().ok()?;
                let scaled = u64::from(total) * pct;
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).ok()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

/// The desired state of one microservice: how many replicas of which container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Desired replica count (default 1).
    #[serde(default = "one")]
    pub replicas: u32,
    /// The container every replica runs.
    pub template: ContainerTemplate,
    /// How a changed template replaces replicas.
    #[serde(default)]
    pub strategy: Strategy,
    /// Only nodes with all of these labels run the replicas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Ports served on the service's virtual address (`status.clusterIP`) and DNS name, spread
    /// over the ready replicas. A service without ports gets no virtual address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

/// The lowest `nodePort` a service may publish.
pub const NODE_PORT_MIN: u16 = 30000;
/// The highest `nodePort` a service may publish.
pub const NODE_PORT_MAX: u16 = 32767;

/// One port of a service's virtual address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Optional name (a DNS label); required when a service has several ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port on the virtual address.
    pub port: u16,
    /// The replicas' port, by number or container port name (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortRef>,
    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Also publish on this port of every node's address
    /// ([`NODE_PORT_MIN`]..=[`NODE_PORT_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

fn one() -> u32 {
    1
}

/// The container of a replica: image, process, resources, probes, restart policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerTemplate {
    /// Image reference (`name:tag`), resolved in the node's image store.
    pub image: String,
    /// Replaces the image's entrypoint when non-empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's cmd when non-empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, added to the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory; the image's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Ports the process listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// Requests (for scheduling) and limits (enforced by cgroups).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Restart the container when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Report the replica ready only while it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Holds the other probes back until it first passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// When an exited container is started again.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
}

/// One environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Value (empty when omitted).
    #[serde(default)]
    pub value: String,
}

/// A port the container listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// Optional name, usable by probes (a DNS label, at most 15 characters as in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number inside the container.
    pub container_port: u16,
    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// A transport protocol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum Protocol {
    /// TCP.
    #[default]
    TCP,
    /// UDP.
    UDP,
}

/// Resource requests and limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// What the scheduler reserves on a node.
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    /// What the cgroup enforces.
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
}

impl Resources {
    /// True when neither requests nor limits are set.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }

    /// The requests the scheduler uses: explicit requests, else the limits (as Kubernetes
    /// defaults requests to limits), else zero.
    pub fn effective_requests(&self) -> (Cpu, Memory) {
        let cpu = self.requests.cpu.or(self.limits.cpu).unwrap_or_default();
        let memory = self
            .requests
            .memory
            .or(self.limits.memory)
            .unwrap_or_default();
        (cpu, memory)
    }
}

/// Amounts of each resource; unset means unlimited (limits) or zero (requests).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceList {
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Process count (limits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl ResourceList {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.pids.is_none()
    }
}

/// A health check. Exactly one of `exec`, `httpGet`, `tcpSocket` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    /// Run a command inside the container; exit 0 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// HTTP GET against the container; a 2xx or 3xx status passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// Open a TCP connection to the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// Seconds after start before the first probe (default 0).
    #[serde(default)]
    pub initial_delay_seconds: u32,
    /// Seconds between probes (default 10, minimum 1).
    #[serde(default = "ten")]
    pub period_seconds: u32,
    /// Seconds before a probe counts as failed (default 1, minimum 1).
    #[serde(default = "one")]
    pub timeout_seconds: u32,
    /// Consecutive passes to count as passing after a failure (default 1).
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures to count as failing (default 3).
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn ten() -> u32 {
    10
}

fn three() -> u32 {
    3
}

/// A command run inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecAction {
    /// argv; not run through a shell.
    pub command: Vec<String>,
}

/// An HTTP GET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    /// Path (default `/`).
    #[serde(default = "root_path")]
    pub path: String,
    /// Port number or declared port name.
    pub port: PortRef,
    /// Host to connect to; the replica's address when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

fn root_path() -> String {
    "/".to_string()
}

/// A TCP connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    /// Port number or declared port name.
    pub port: PortRef,
    /// Host to connect to; the replica's address when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// When an exited container is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always (default).
    #[default]
    Always,
    /// Only after a non-zero exit.
    OnFailure,
    /// Never; the replica ends Succeeded or Failed.
    Never,
}

/// How replicas are replaced when the template changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Strategy {
    /// Replicas above the desired count during an update (default 1).
    #[serde(default = "surge_default")]
    pub max_surge: IntOrPercent,
    /// Replicas below the desired count during an update (default 0).
    #[serde(default = "unavailable_default")]
    pub max_unavailable: IntOrPercent,
}

fn surge_default() -> IntOrPercent {
    IntOrPercent::Int(1)
}

fn unavailable_default() -> IntOrPercent {
    IntOrPercent::Int(0)
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            max_surge: surge_default(),
            max_unavailable: unavailable_default(),
        }
    }
}

/// What the service controller observed of a service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Replicas that exist (any phase but finished).
    #[serde(default)]
    pub replicas: u32,
    /// Replicas that are ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Replicas running the current template.
    #[serde(default)]
    pub updated_replicas: u32,
    /// Hash of the current template (replicas carry it as `spec.templateHash`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_hash: String,
    /// The stable virtual address of a service with ports (set by the control plane from the
    /// service range; kept for the service's life).
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// Why the service's address or node ports are not (all) served, e.g. a `nodePort`
    /// another service already publishes, or an exhausted service range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Replica
// ---------------------------------------------------------------------------------------------

/// One instance of a service, bound to a node by the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    /// The service it belongs to.
    pub service: String,
    /// The node it runs on; unset while Pending and unscheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The container, copied from the service's template when the replica was made.
    pub template: ContainerTemplate,
    /// Hash of `template`, to tell current replicas from outdated ones.
    #[serde(default)]
    pub template_hash: String,
    /// Copied from the service, for the scheduler.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// A replica's lifecycle phase, as Kubernetes names a pod's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Phase {
    /// Not yet running (unscheduled, waiting for an image, starting, backing off).
    #[default]
    Pending,
    /// The container runs.
    Running,
    /// Exited 0 and will not be restarted.
    Succeeded,
    /// Exited non-zero (or was lost) and will not be restarted.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

impl Phase {
    /// The phase as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Unknown => "Unknown",
        }
    }
}

/// What the agent observed of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// Passing its readiness probe (or running, without one).
    #[serde(default)]
    pub ready: bool,
    /// Times the container was restarted.
    #[serde(default)]
    pub restart_count: u32,
    /// Exit code of the last container that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// Short CamelCase reason (`CrashLoopBackOff`, `OOMKilled`, `ImageNotFound`, `Unschedulable`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human sentence about the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The runtime container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// When the current container started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// The replica's IP address, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_ip: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------------

/// A machine running an agent. Labels live in `metadata.labels`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Where the agent serves logs and exec (`host:port`).
    #[serde(default)]
    pub address: String,
    /// Cordoned: no new replicas are scheduled here.
    #[serde(default)]
    pub unschedulable: bool,
    /// What replicas may request in all.
    #[serde(default)]
    pub capacity: Capacity,
    /// The subnet replicas on this node take addresses from (set by the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_cidr: Option<String>,
    /// The whole replica range all nodes' subnets come from (set by the control plane with
    /// `replica_cidr`); replicas route it through their node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    /// The range services' virtual addresses come from (set by the control plane with
    /// `replica_cidr`); replicas route it through their node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
}

/// Resources of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// CPU.
    #[serde(default)]
    pub cpu: Cpu,
    /// Memory.
    #[serde(default)]
    pub memory: Memory,
    /// Replicas the node accepts at most.
    #[serde(default = "max_replicas_default")]
    pub replicas: u32,
}

fn max_replicas_default() -> u32 {
    110
}

/// What the control plane observed of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Heartbeating within its lease.
    #[serde(default)]
    pub ready: bool,
    /// Last heartbeat (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Why it is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Agent version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_version: String,
}

// ---------------------------------------------------------------------------------------------
// Event
// ---------------------------------------------------------------------------------------------

/// Something that happened to an object, for humans (`describe`, `gantry events`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSpec {
    /// The object it is about.
    pub involved_object: ObjectRef,
    /// `Normal` or `Warning`.
    #[serde(rename = "type", default)]
    pub event_type: EventType,
    /// Short CamelCase reason (`Scheduled`, `FailedScheduling`, `BackOff`, `Killing`…).
    pub reason: String,
    /// A human sentence.
    pub message: String,
    /// Who reported it (`scheduler`, `service-controller`, `agent/n1`).
    #[serde(default)]
    pub source: String,
    /// How many times it happened (repeats are folded into one event).
    #[serde(default = "one")]
    pub count: u32,
    /// First occurrence (RFC 3339).
    #[serde(default)]
    pub first_timestamp: String,
    /// Last occurrence (RFC 3339).
    #[serde(default)]
    pub last_timestamp: String,
}

/// A reference to an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Its kind (`Service`, `Replica`, `Node`).
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// How notable an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EventType {
    /// Expected progress.
    #[default]
    Normal,
    /// Something went wrong.
    Warning,
}

/// Which service publishes each node port, when several declare the same one: the oldest
/// (`creationTimestamp`, then name) wins and the others are told through
/// `status.networkError`. The control plane and every agent apply this one rule, so they
/// agree without talking. Input: `(name, creationTimestamp, spec)` of every Service.
pub fn node_port_owners<'a>(
    services: impl IntoIterator<Item = (&'a str, Option<&'a str>, &'a ServiceSpec)>,
) -> BTreeMap<(Protocol, u16), String> {
    let mut sorted: Vec<_> = services.into_iter().collect();
    sorted.sort_by(|a, b| (a.1.unwrap_or(""), a.0).cmp(&(b.1.unwrap_or(""), b.0)));
    let mut owners = BTreeMap::new();
    for (name, _, spec) in sorted {
        for p in &spec.ports {
            if let Some(np) = p.node_port {
                owners
                    .entry((p.protocol, np))
                    .or_insert_with(|| name.to_string());
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_strings_and_numbers_and_write_canonical_strings() {
        let r: ResourceList =
            serde_json::from_str(r#"{"cpu": 0.5, "memory": "64Mi", "pids": 10}"#).unwrap();
        assert_eq!(r.cpu, Some(Cpu(500)));
        assert_eq!(r.memory, Some(Memory(64 << 20)));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"cpu":"500m","memory":"64Mi","pids":10}"#);
        let err = serde_json::from_str::<ResourceList>(r#"{"cpu": "lots"}"#).unwrap_err();
        assert!(err.to_string().contains("cpu quantity"), "{err}");
    }

    #[test]
    fn probe_defaults_match_kubernetes() {
        let p: Probe = serde_json::from_str(r#"{"tcpSocket": {"port": 80}}"#).unwrap();
        assert_eq!(
            (
                p.initial_delay_seconds,
                p.period_seconds,
                p.timeout_seconds,
                p.success_threshold,
                p.failure_threshold
            ),
            (0, 10, 1, 1, 3)
        );
        let h: HttpGetAction = serde_json::from_str(r#"{"port": "http"}"#).unwrap();
        assert_eq!(h.path, "/");
        assert_eq!(h.port, PortRef::Name("http".into()));
    }

    #[test]
    fn specs_reject_unknown_fields() {
        let err = serde_json::from_str::<ServiceSpec>(
            r#"{"replicas": 1, "template": {"image": "a"}, "replica": 2}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `replica`"), "{err}");
    }

    #[test]
    fn percentages_resolve_with_the_requested_rounding() {
        let p = IntOrPercent::Percent("25%".into());
        assert_eq!(p.resolve(10, true), Some(3));
        assert_eq!(p.resolve(10, false), Some(2));
        assert_eq!(IntOrPercent::Percent("x".into()).resolve(10, true), None);
        assert_eq!(IntOrPercent::Int(2).resolve(10, true), Some(2));
    }
}
