//! [`NetworkController`]: hands out the cluster's addresses and reports node port conflicts.
//!
//! - **Node subnets.** Every Node without `spec.replicaCidr` gets the lowest free
//!   `/node_prefix` subnet of the cluster range, with `spec.clusterCidr` and `spec.serviceCidr`
//!   filled in beside it. A subnet is free again once its Node object is deleted. When none is
//!   free the node is left without one (the scheduler binds nothing to it) and gets one
//!   `SubnetExhausted` Warning event.
//! - **Service addresses.** Every Service with `spec.ports` gets `status.clusterIP`, the
//!   lowest free address of the service range (its first two addresses and its last are
//!   reserved), kept for the service's life and released when the service is deleted or loses
//!   its ports. When none is free, `status.networkError` says so (a `ServiceRangeExhausted`
//!   event).
//! - **Node ports.** A service declaring a `nodePort` that [`node_port_owners`] gives to
//!   another (older) service gets `status.networkError` naming that service (a
//!   `NodePortInUse` event); the error is cleared once the conflict is gone.
//!
//! Invariants: allocation is a pure function of the stored objects ([`plan_subnets`],
//! [`plan_services`]: oldest first, then by name, always the lowest free index; what a stored
//! object already holds is kept), so a new leader computes the same answer and renumbers
//! nothing. Every write is a compare-and-swap of the latest stored object changing only this
//! controller's fields (`spec.replicaCidr`, `spec.clusterCidr`, `spec.serviceCidr` of a Node;
//! `status.clusterIP`, `status.networkError` of a Service), so the agents' heartbeats and the
//! service controller's status writes of the same objects are never lost, nor do they wipe
//! ours.

use super::events::EventRecorder;
use super::informer::{Changes, Informer};
use super::writer::{parse, Outcome, Writer};
use super::{ControllerConfig, Pass};
use crate::server::{LeaderContext, LeaderTask};
use crate::store::ObjectStore;
use futures::future::BoxFuture;
use gantry_api::model::{node_port_owners, EventType, ObjectRef, Protocol, ServiceSpec};
use gantry_api::net::Ipv4Cidr;
use gantry_api::objects::{Kind, Object};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use tokio_util::sync::CancellationToken;

/// The default range node subnets are carved from (`--cluster-cidr`).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.214.0.0/16";
/// The default prefix length of a node's subnet (`--node-cidr-size`).
pub const DEFAULT_NODE_PREFIX: u8 = 24;
/// The default range of services' virtual addresses (`--service-cidr`).
pub const DEFAULT_SERVICE_CIDR: &str = "10.215.0.0/16";
/// The longest node prefix accepted: a node subnet holds at least 4 addresses.
pub const MAX_NODE_PREFIX: u8 = 30;
/// The longest service range prefix accepted: one usable address beside the reserved ones.
pub const MAX_SERVICE_PREFIX: u8 = 30;

/// Event reason: no node subnet is left.
pub const REASON_SUBNET_EXHAUSTED: &str = "SubnetExhausted";
/// Event reason: no service address is left.
pub const REASON_SERVICE_RANGE_EXHAUSTED: &str = "ServiceRangeExhausted";
/// Event reason: another service already publishes a declared node port.
pub const REASON_NODE_PORT_IN_USE: &str = "NodePortInUse";

/// Why the address ranges cannot be used; each message names the flag that sets the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkConfigError {
    /// The replica and service ranges share addresses.
    #[error("--cluster-cidr {cluster} and --service-cidr {service} overlap: replica and service addresses must be distinct")]
    Overlap {
        /// The replica range.
        cluster: Ipv4Cidr,
        /// The service range.
        service: Ipv4Cidr,
    },
    /// Node subnets as large as the whole range or larger.
    #[error("--node-cidr-size {prefix} must be longer than the --cluster-cidr prefix (/{} of {cluster}) so the range holds several node subnets", cluster.prefix())]
    NodePrefixNotLonger {
        /// The node prefix.
        prefix: u8,
        /// The replica range.
        cluster: Ipv4Cidr,
    },
    /// Node subnets too small to address replicas.
    #[error("--node-cidr-size {prefix} leaves {addresses} addresses per node; at most {MAX_NODE_PREFIX} (4 addresses) is allowed")]
    NodePrefixTooLong {
        /// The node prefix.
        prefix: u8,
        /// Addresses per node it leaves.
        addresses: u64,
    },
    /// A service range without a usable address.
    #[error("--service-cidr {service} is too small: its prefix must be at most /{MAX_SERVICE_PREFIX} (its first two and last addresses are reserved)")]
    ServiceRangeTooSmall {
        /// The service range.
        service: Ipv4Cidr,
    },
}

/// The ranges the network controller hands addresses out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkRanges {
    /// Node subnets come from here.
    pub cluster: Ipv4Cidr,
    /// Prefix length of one node's subnet.
    pub node_prefix: u8,
    /// Services' virtual addresses come from here.
    pub service: Ipv4Cidr,
}

impl NetworkRanges {
    /// The ranges of `cfg`.
    pub fn of(cfg: &ControllerConfig) -> Self {
        NetworkRanges {
            cluster: cfg.cluster_cidr,
            node_prefix: cfg.node_prefix,
            service: cfg.service_cidr,
        }
    }

    /// Checks that the ranges can be used together.
    ///
    /// # Errors
    /// Overlapping ranges, a node prefix not longer than the cluster's, node subnets of fewer
    /// than 4 addresses, or a service range without a usable address.
    pub fn check(&self) -> Result<(), NetworkConfigError> {
        if self.cluster.overlaps(&self.service) {
            return Err(NetworkConfigError::Overlap {
                cluster: self.cluster,
                service: self.service,
            });
        }
        if self.node_prefix <= self.cluster.prefix() {
            return Err(NetworkConfigError::NodePrefixNotLonger {
                prefix: self.node_prefix,
                cluster: self.cluster,
            });
        }
        if self.node_prefix > MAX_NODE_PREFIX {
            return Err(NetworkConfigError::NodePrefixTooLong {
                prefix: self.node_prefix,
                addresses: 1u64 << (32 - u32::from(self.node_prefix.min(32))),
            });
        }
        if self.service.prefix() > MAX_SERVICE_PREFIX {
            return Err(NetworkConfigError::ServiceRangeTooSmall {
                service: self.service,
            });
        }
        Ok(())
    }
}

/// Indexes in use (subnet numbers or address offsets) as closed intervals.
#[derive(Debug, Default, Clone)]
struct Taken(Vec<(u64, u64)>);

impl Taken {
    fn insert(&mut self, lo: u64, hi: u64) {
        self.0.push((lo, hi));
        self.0.sort_unstable();
    }

    fn contains(&self, n: u64) -> bool {
        self.0.iter().any(|(lo, hi)| *lo <= n && n <= *hi)
    }

    /// Takes the lowest free index below `limit`.
    fn take_lowest(&mut self, limit: u64) -> Option<u64> {
        let mut candidate = 0;
        for &(lo, hi) in &self.0 {
            if candidate < lo {
                break;
            }
            candidate = candidate.max(hi.saturating_add(1));
        }
        (candidate < limit).then(|| {
            self.insert(candidate, candidate);
            candidate
        })
    }
}

/// What the subnet planner needs of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its creation timestamp (RFC 3339; empty when unknown).
    pub created: String,
    /// Its `spec.replicaCidr` when it holds a valid range.
    pub replica_cidr: Option<Ipv4Cidr>,
}

/// The node subnets to hand out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetPlan {
    /// Subnets for nodes without one, oldest node first.
    pub assign: Vec<(String, Ipv4Cidr)>,
    /// Nodes left without a subnet: the range is full.
    pub exhausted: Vec<String>,
    /// How many `/node_prefix` subnets the cluster range holds.
    pub capacity: u64,
    /// How many nodes hold a subnet inside the cluster range (after `assign`).
    pub held: usize,
}

/// The subnet of every node that lacks one: the lowest free `/node_prefix` subnet of the
/// cluster range, oldest node first (then by name). Subnets nodes hold are never moved; one
/// of another size (the prefix was changed) keeps every subnet it overlaps taken.
pub fn plan_subnets(ranges: &NetworkRanges, nodes: &[NodeView]) -> SubnetPlan {
    let cluster = ranges.cluster;
    let capacity = cluster.subnet_count(ranges.node_prefix).unwrap_or(0);
    let shift = 32 - u32::from(ranges.node_prefix.min(32));
    let base = u64::from(u32::from(cluster.network()));
    let end = u64::from(u32::from(cluster.last()));
    let mut taken = Taken::default();
    let mut held = 0;
    for cidr in nodes.iter().filter_map(|n| n.replica_cidr) {
        if !cidr.overlaps(&cluster) {
            continue;
        }
        held += 1;
        let lo = u64::from(u32::from(cidr.network())).max(base) - base;
        let hi = u64::from(u32::from(cidr.last())).min(end) - base;
        taken.insert(lo >> shift, hi >> shift);
    }
    let mut waiting: Vec<&NodeView> = nodes.iter().filter(|n| n.replica_cidr.is_none()).collect();
    waiting.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    let mut plan = SubnetPlan {
        capacity,
        ..SubnetPlan::default()
    };
    for node in waiting {
        let subnet = taken
            .take_lowest(capacity)
            .and_then(|i| cluster.subnet(ranges.node_prefix, i).ok().flatten());
        match subnet {
            Some(s) => {
                held += 1;
                plan.assign.push((node.name.clone(), s));
            }
            None => plan.exhausted.push(node.name.clone()),
        }
    }
    plan.held = held;
    plan
}

/// What the service planner needs of one service.
#[derive(Debug, Clone)]
pub struct ServiceView<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its creation timestamp (RFC 3339), when known.
    pub created: Option<&'a str>,
    /// Its spec.
    pub spec: &'a ServiceSpec,
    /// Its `status.clusterIP`, when set.
    pub cluster_ip: Option<&'a str>,
}

/// The network status a service should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceNet {
    /// `status.clusterIP`.
    pub cluster_ip: Option<String>,
    /// The problems making up `status.networkError`: (event reason, message).
    pub errors: Vec<(&'static str, String)>,
}

impl ServiceNet {
    /// `status.networkError`: the messages joined by `; `.
    pub fn network_error(&self) -> Option<String> {
        (!self.errors.is_empty()).then(|| {
            self.errors
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "TCP",
        Protocol::UDP => "UDP",
    }
}

/// The network status of every service.
///
/// Addresses: a service with ports keeps the address it holds unless an older service holds
/// the same one or it is reserved (then it is given a new one, like a service without any);
/// an address outside the range (the range was changed) is kept as it is. The others get the
/// lowest free address, oldest service first (then by name). A service without ports holds
/// none. Node ports: [`node_port_owners`] decides; every other declarer gets an error.
pub fn plan_services(
    range: Ipv4Cidr,
    services: &[ServiceView<'_>],
) -> BTreeMap<String, ServiceNet> {
    let mut order: Vec<&ServiceView<'_>> = services.iter().collect();
    order.sort_by(|a, b| (a.created.unwrap_or(""), a.name).cmp(&(b.created.unwrap_or(""), b.name)));
    let size = range.size();
    let mut taken = Taken::default();
    // The network address and the first one (kept for a gateway), and the broadcast address.
    taken.insert(0, 1.min(size - 1));
    if size > 2 {
        taken.insert(size - 1, size - 1);
    }
    let mut out: BTreeMap<String, ServiceNet> = BTreeMap::new();
    let mut waiting = Vec::new();
    let mut held = 0usize;
    for s in &order {
        let mut net = ServiceNet::default();
        if !s.spec.ports.is_empty() {
            match s.cluster_ip.and_then(|ip| ip.parse::<Ipv4Addr>().ok()) {
                Some(ip) => match range.offset_of(ip) {
                    Some(off) if !taken.contains(off) => {
                        taken.insert(off, off);
                        held += 1;
                        net.cluster_ip = Some(ip.to_string());
                    }
                    Some(_) => waiting.push(s.name),
                    None => net.cluster_ip = Some(ip.to_string()),
                },
                None => waiting.push(s.name),
            }
        }
        out.insert(s.name.to_string(), net);
    }
    for name in waiting {
        let ip = taken.take_lowest(size).and_then(|off| range.nth(off));
        let Some(net) = out.get_mut(name) else {
            continue;
        };
        match ip {
            Some(ip) => {
                held += 1;
                net.cluster_ip = Some(ip.to_string());
            }
            None => net.errors.push((
                REASON_SERVICE_RANGE_EXHAUSTED,
                format!("no free address left in service range {range} ({held} services hold one)"),
            )),
        }
    }
    let owners = node_port_owners(order.iter().map(|s| (s.name, s.created, s.spec)));
    for s in &order {
        let Some(net) = out.get_mut(s.name) else {
            continue;
        };
        for p in &s.spec.ports {
            let Some(np) = p.node_port else {
                continue;
            };
            match owners.get(&(p.protocol, np)) {
                Some(owner) if owner != s.name => net.errors.push((
                    REASON_NODE_PORT_IN_USE,
                    format!(
                        "nodePort {np}/{} is already published by service {owner:?}",
                        protocol_name(p.protocol)
                    ),
                )),
                _ => {}
            }
        }
    }
    out
}

/// The leader task handing out node subnets and service addresses.
pub struct NetworkController {
    cfg: ControllerConfig,
}

impl NetworkController {
    /// A network controller over `cfg`'s ranges.
    pub fn new(cfg: ControllerConfig) -> Self {
        NetworkController { cfg }
    }
}

impl LeaderTask for NetworkController {
    fn name(&self) -> &str {
        "network-controller"
    }

    fn run(&self, ctx: LeaderContext, stop: CancellationToken) -> BoxFuture<'static, ()> {
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let ranges = NetworkRanges::of(&cfg);
            if let Err(e) = ranges.check() {
                // `gantry server` refuses these at start; an embedder passing them anyway gets
                // no addresses rather than wrong ones.
                tracing::error!(error = %e, "network controller not started");
                return;
            }
            let kinds = [Kind::Node, Kind::Service];
            let store = ctx.store.clone();
            super::run_controller(
                "network-controller",
                &ctx,
                &cfg,
                &kinds,
                cfg.resync,
                &stop,
                |writer, events| NetworkPass {
                    writer,
                    events,
                    store,
                    ranges,
                    reported: BTreeSet::new(),
                },
            )
            .await;
        })
    }
}

struct NetworkPass {
    writer: Writer,
    events: EventRecorder,
    store: ObjectStore,
    ranges: NetworkRanges,
    /// Nodes whose exhaustion this leader has reported, so a resync does not repeat it.
    reported: BTreeSet<String>,
}

/// Tries of one read-modify-write before the pass asks to run again.
const WRITE_TRIES: usize = 5;

fn cidr_at(spec: &Value, key: &str) -> Option<Ipv4Cidr> {
    spec.get(key)?.as_str()?.parse().ok()
}

impl Pass for NetworkPass {
    fn pass<'a>(&'a mut self, inf: &'a Informer, _changes: Changes) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let mut failed = false;
            failed |= !self.nodes(inf).await;
            failed |= !self.services(inf).await;
            failed
        })
    }
}

impl NetworkPass {
    /// The latest stored version of an object (`None` when it is gone or unreadable).
    fn latest(&self, kind: Kind, name: &str) -> Option<Object> {
        match self.store.get(kind.as_str(), name) {
            Ok(stored) => stored.as_ref().and_then(parse),
            Err(e) => {
                tracing::warn!(%kind, name, error = %e, "network controller: read failed");
                None
            }
        }
    }

    /// Hands out node subnets; answers false when a write failed.
    async fn nodes(&mut self, inf: &Informer) -> bool {
        let nodes = inf.all(Kind::Node);
        let views: Vec<NodeView> = nodes
            .values()
            .map(|o| NodeView {
                name: o.metadata.name.clone(),
                created: o.metadata.creation_timestamp.clone().unwrap_or_default(),
                replica_cidr: cidr_at(&o.spec, "replicaCidr"),
            })
            .collect();
        let plan = plan_subnets(&self.ranges, &views);
        let mut ok = true;
        let mut assigned = BTreeMap::new();
        for (name, subnet) in &plan.assign {
            assigned.insert(name.as_str(), *subnet);
        }
        for (name, obj) in nodes {
            let has = cidr_at(&obj.spec, "replicaCidr").is_some();
            let complete = has
                && obj.spec.get("clusterCidr").is_some_and(Value::is_string)
                && obj.spec.get("serviceCidr").is_some_and(Value::is_string);
            let subnet = assigned.get(name.as_str()).copied();
            if complete || (!has && subnet.is_none()) {
                continue;
            }
            ok &= self.write_node(name, subnet).await;
        }
        self.reported.retain(|n| nodes.contains_key(n));
        for name in &plan.exhausted {
            if !self.reported.insert(name.clone()) {
                continue;
            }
            let message = format!(
                "no free /{} subnet in cluster range {}: its {} subnets are held by {} nodes",
                self.ranges.node_prefix, self.ranges.cluster, plan.capacity, plan.held
            );
            tracing::warn!(node = %name, %message, "node left without a replica subnet");
            let involved = ObjectRef {
                kind: Kind::Node.to_string(),
                name: name.clone(),
            };
            self.events
                .record(
                    involved,
                    EventType::Warning,
                    REASON_SUBNET_EXHAUSTED,
                    &message,
                )
                .await;
        }
        for (name, _) in &plan.assign {
            self.reported.remove(name);
        }
        ok
    }

    /// Sets `subnet` as the node's `replicaCidr` when it has none, and the cluster and service
    /// ranges when they are missing, on the latest stored version.
    async fn write_node(&self, name: &str, subnet: Option<Ipv4Cidr>) -> bool {
        for _ in 0..WRITE_TRIES {
            let Some(mut obj) = self.latest(Kind::Node, name) else {
                return true;
            };
            if obj.spec.is_null() {
                obj.spec = Value::Object(serde_json::Map::new());
            }
            let Some(spec) = obj.spec.as_object_mut() else {
                tracing::warn!(node = name, "node spec is not an object; no subnet given");
                return true;
            };
            let has = spec
                .get("replicaCidr")
                .and_then(Value::as_str)
                .is_some_and(|s| s.parse::<Ipv4Cidr>().is_ok());
            let mut changed = false;
            let mut given = None;
            if !has {
                let Some(subnet) = subnet else {
                    return true;
                };
                spec.insert("replicaCidr".into(), subnet.to_string().into());
                given = Some(subnet);
                changed = true;
            }
            for (key, range) in [
                ("clusterCidr", self.ranges.cluster),
                ("serviceCidr", self.ranges.service),
            ] {
                if !spec.get(key).is_some_and(Value::is_string) {
                    spec.insert(key.into(), range.to_string().into());
                    changed = true;
                }
            }
            if !changed {
                return true;
            }
            match self.writer.update(&obj).await {
                Outcome::Written(_) => {
                    if let Some(s) = given {
                        tracing::info!(node = name, subnet = %s, "replica subnet assigned");
                    }
                    return true;
                }
                Outcome::Conflict => continue,
                Outcome::NotFound => return true,
                Outcome::Failed(e) => {
                    tracing::debug!(node = name, error = %e, "subnet write failed");
                    return false;
                }
            }
        }
        false
    }

    /// Hands out service addresses and reports node port conflicts; answers false when a
    /// write failed.
    async fn services(&mut self, inf: &Informer) -> bool {
        let objects = inf.all(Kind::Service);
        let specs: Vec<(&Object, ServiceSpec)> = objects
            .values()
            .filter_map(|o| o.spec_as::<ServiceSpec>().ok().map(|s| (o, s)))
            .collect();
        let views: Vec<ServiceView<'_>> = specs
            .iter()
            .map(|(o, spec)| ServiceView {
                name: &o.metadata.name,
                created: o.metadata.creation_timestamp.as_deref(),
                spec,
                cluster_ip: o.status.get("clusterIP").and_then(Value::as_str),
            })
            .collect();
        let plan = plan_services(self.ranges.service, &views);
        let mut ok = true;
        for (obj, _) in &specs {
            let Some(want) = plan.get(&obj.metadata.name) else {
                continue;
            };
            if current_net(obj) != (want.cluster_ip.clone(), want.network_error()) {
                ok &= self.write_service(obj, want).await;
            }
        }
        ok
    }

    /// Writes the service's `status.clusterIP` and `status.networkError` on its latest
    /// stored version, if that still has the spec `seen` was planned from.
    async fn write_service(&self, seen: &Object, want: &ServiceNet) -> bool {
        let name = seen.metadata.name.as_str();
        let error = want.network_error();
        for _ in 0..WRITE_TRIES {
            let Some(mut obj) = self.latest(Kind::Service, name) else {
                return true;
            };
            if obj.spec != seen.spec
                || obj.metadata.creation_timestamp != seen.metadata.creation_timestamp
            {
                // Planned from an older spec: the next pass plans again from the new one.
                return false;
            }
            let (old_ip, old_error) = current_net(&obj);
            if (old_ip.clone(), old_error.clone()) == (want.cluster_ip.clone(), error.clone()) {
                return true;
            }
            if !obj.status.is_object() {
                obj.status = Value::Object(serde_json::Map::new());
            }
            let Some(status) = obj.status.as_object_mut() else {
                return true;
            };
            set_or_remove(status, "clusterIP", want.cluster_ip.as_deref());
            set_or_remove(status, "networkError", error.as_deref());
            match self.writer.update(&obj).await {
                Outcome::Written(_) => {
                    if want.cluster_ip != old_ip {
                        tracing::info!(service = name, cluster_ip = ?want.cluster_ip,
                            "service address changed");
                    }
                    let before: BTreeSet<&str> = old_error
                        .as_deref()
                        .map(|e| e.split("; ").collect())
                        .unwrap_or_default();
                    for (reason, message) in &want.errors {
                        if before.contains(message.as_str()) {
                            continue;
                        }
                        tracing::warn!(service = name, %message, "service network error");
                        let involved = ObjectRef {
                            kind: Kind::Service.to_string(),
                            name: name.to_string(),
                        };
                        self.events
                            .record(involved, EventType::Warning, reason, message)
                            .await;
                    }
                    return true;
                }
                Outcome::Conflict => continue,
                Outcome::NotFound => return true,
                Outcome::Failed(e) => {
                    tracing::debug!(service = name, error = %e, "service address write failed");
                    return false;
                }
            }
        }
        false
    }
}

/// A service's stored `status.clusterIP` and `status.networkError`.
fn current_net(obj: &Object) -> (Option<String>, Option<String>) {
    let at = |key: &str| {
        obj.status
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    (at("clusterIP"), at("networkError"))
}

fn set_or_remove(map: &mut serde_json::Map<String, Value>, key: &str, value: Option<&str>) {
    match value {
        Some(v) => {
            map.insert(key.to_string(), v.into());
        }
        None => {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn ranges(cluster: &str, prefix: u8, service: &str) -> NetworkRanges {
        NetworkRanges {
            cluster: c(cluster),
            node_prefix: prefix,
            service: c(service),
        }
    }

    fn node(name: &str, created: &str, cidr: Option<&str>) -> NodeView {
        NodeView {
            name: name.into(),
            created: created.into(),
            replica_cidr: cidr.map(c),
        }
    }

    fn spec(ports: serde_json::Value) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({"template": {"image": "a"}, "ports": ports}))
            .unwrap()
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_ranges() {
        let cfg = ControllerConfig::default();
        let r = NetworkRanges::of(&cfg);
        assert_eq!(
            r,
            ranges(
                DEFAULT_CLUSTER_CIDR,
                DEFAULT_NODE_PREFIX,
                DEFAULT_SERVICE_CIDR
            )
        );
        r.check().unwrap();
    }

    #[test]
    fn bad_ranges_are_refused_naming_the_flags() {
        let e = ranges("10.0.0.0/8", 24, "10.215.0.0/16")
            .check()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cluster-cidr 10.0.0.0/8 and --service-cidr 10.215.0.0/16 overlap: replica and \
             service addresses must be distinct"
        );
        let e = ranges("10.214.0.0/16", 16, "10.215.0.0/16")
            .check()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--node-cidr-size 16 must be longer"),
            "{e}"
        );
        let e = ranges("10.214.0.0/16", 31, "10.215.0.0/16")
            .check()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--node-cidr-size 31 leaves 2 addresses per node; at most 30 (4 addresses) is allowed"
        );
        let e = ranges("10.214.0.0/16", 24, "10.215.0.0/31")
            .check()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--service-cidr 10.215.0.0/31 is too small"),
            "{e}"
        );
        ranges("10.214.0.0/16", 30, "10.215.0.0/30")
            .check()
            .unwrap();
    }

    #[test]
    fn subnets_go_lowest_first_to_the_oldest_nodes_and_are_reused() {
        let r = ranges("10.214.0.0/16", 24, "10.215.0.0/16");
        let nodes = [
            node("b", "2", None),
            node("a", "2", None),
            node("old", "1", Some("10.214.1.0/24")),
            node("first", "0", None),
        ];
        let plan = plan_subnets(&r, &nodes);
        assert_eq!(
            plan.assign,
            [
                ("first".to_string(), c("10.214.0.0/24")),
                ("a".to_string(), c("10.214.2.0/24")),
                ("b".to_string(), c("10.214.3.0/24")),
            ]
        );
        assert_eq!((plan.capacity, plan.held), (256, 4));
        // A subnet of another size keeps every subnet it overlaps taken.
        let nodes = [
            node("big", "0", Some("10.214.0.0/23")),
            node("n", "1", None),
        ];
        assert_eq!(plan_subnets(&r, &nodes).assign[0].1, c("10.214.2.0/24"));
    }

    #[test]
    fn a_full_range_leaves_the_youngest_nodes_without_subnets() {
        let r = ranges("10.214.0.0/23", 24, "10.215.0.0/16");
        let nodes = [
            node("a", "0", None),
            node("b", "1", None),
            node("c", "2", None),
        ];
        let plan = plan_subnets(&r, &nodes);
        assert_eq!(plan.assign.len(), 2);
        assert_eq!(plan.exhausted, ["c"]);
        assert_eq!((plan.capacity, plan.held), (2, 2));
    }

    #[test]
    fn services_with_ports_get_distinct_stable_addresses() {
        let range = c("10.215.0.0/16");
        let web = spec(serde_json::json!([{"port": 80}]));
        let none = spec(serde_json::json!([]));
        let services = [
            ServiceView {
                name: "web",
                created: Some("2"),
                spec: &web,
                cluster_ip: None,
            },
            ServiceView {
                name: "api",
                created: Some("1"),
                spec: &web,
                cluster_ip: Some("10.215.0.2"),
            },
            ServiceView {
                name: "batch",
                created: Some("0"),
                spec: &none,
                cluster_ip: Some("10.215.0.3"),
            },
            ServiceView {
                name: "dup",
                created: Some("3"),
                spec: &web,
                cluster_ip: Some("10.215.0.2"),
            },
        ];
        let plan = plan_services(range, &services);
        let ip = |n: &str| plan[n].cluster_ip.clone();
        assert_eq!(ip("api").as_deref(), Some("10.215.0.2"));
        // The port-less service releases its address, which the oldest waiting one takes.
        assert_eq!(ip("batch"), None);
        assert_eq!(ip("web").as_deref(), Some("10.215.0.3"));
        // A younger holder of an older service's address is renumbered.
        assert_eq!(ip("dup").as_deref(), Some("10.215.0.4"));
        assert!(plan.values().all(|n| n.errors.is_empty()));
    }

    #[test]
    fn an_exhausted_service_range_is_an_error() {
        let range = c("10.215.0.0/30");
        let web = spec(serde_json::json!([{"port": 80}]));
        let services = [
            ServiceView {
                name: "a",
                created: Some("0"),
                spec: &web,
                cluster_ip: None,
            },
            ServiceView {
                name: "b",
                created: Some("1"),
                spec: &web,
                cluster_ip: None,
            },
        ];
        let plan = plan_services(range, &services);
        assert_eq!(plan["a"].cluster_ip.as_deref(), Some("10.215.0.2"));
        assert_eq!(plan["b"].cluster_ip, None);
        assert_eq!(
            plan["b"].network_error().as_deref(),
            Some("no free address left in service range 10.215.0.0/30 (1 services hold one)")
        );
    }

    #[test]
    fn node_port_conflicts_name_the_older_publisher() {
        let range = c("10.215.0.0/16");
        let a = spec(serde_json::json!([{"port": 80, "nodePort": 30080}]));
        let b = spec(serde_json::json!([
            {"name": "x", "port": 80, "nodePort": 30080},
            {"name": "y", "port": 81, "nodePort": 30081},
            {"name": "z", "port": 53, "protocol": "UDP", "nodePort": 30080}
        ]));
        let services = [
            ServiceView {
                name: "young",
                created: Some("2"),
                spec: &b,
                cluster_ip: None,
            },
            ServiceView {
                name: "api",
                created: Some("1"),
                spec: &a,
                cluster_ip: None,
            },
        ];
        let plan = plan_services(range, &services);
        assert!(plan["api"].errors.is_empty());
        assert_eq!(
            plan["young"].network_error().as_deref(),
            Some("nodePort 30080/TCP is already published by service \"api\"")
        );
        assert_eq!(plan["young"].errors[0].0, REASON_NODE_PORT_IN_USE);
    }
}
