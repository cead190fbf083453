//! The scheduler: [`Scheduler`], a pure in-memory placement function over a node-usage
//! cache, and [`SchedulerTask`], the leader task that binds Pending replicas with it.
//!
//! Placement filters nodes (ready, not cordoned, holding a replica subnet, node selector ⊆ labels, replica count below
//! capacity, free cpu and memory ≥ the replica's effective requests), then scores: fewest
//! replicas of the same service first (spread), then least allocated (the larger of the cpu
//! and memory fractions after placement), then node name.
//!
//! Invariants of the task: a bind is a compare-and-swap of `spec.nodeName` from unset; a
//! replica that fits nowhere keeps `status.phase` Pending and gets `status.reason`
//! `Unschedulable` with a message naming why each node failed, rewritten (and one
//! `FailedScheduling` event recorded) only when the message changes.
//!
//! The binds of one pass go through Raft as batches ([`Writer::update_many`]) of at most
//! [`BIND_BATCH`] replicas, [`BINDS_IN_FLIGHT`] batches at once (the writer splits each into
//! log entries of at most [`super::writer::MAX_BATCH_BYTES`]): one log entry and fsync per
//! few dozen binds instead of per bind. Each bind stays its own compare-and-swap.

use super::events::EventRecorder;
use super::informer::{Changes, Informer};
use super::writer::{Outcome, Writer};
use super::{is_finished, ControllerConfig, Pass};
use crate::server::{LeaderContext, LeaderTask};
use futures::future::BoxFuture;
use futures::StreamExt;
use gantry_api::model::{EventType, NodeSpec, NodeStatus, ObjectRef, ReplicaSpec, ReplicaStatus};
use gantry_api::objects::{Kind, Object};
use std::collections::{BTreeMap, HashMap};
use tokio_util::sync::CancellationToken;

/// The reason set on replicas that fit nowhere.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";

/// Binds proposed in one Raft entry at most.
pub const BIND_BATCH: usize = 256;

/// Bind batches in flight at most (fewer if the write concurrency is lower).
pub const BINDS_IN_FLIGHT: usize = 4;

/// What the scheduler knows of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `status.ready`.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// `spec.replicaCidr` holds a subnet: replicas bound here can get addresses.
    pub has_subnet: bool,
    /// CPU capacity in millicpus.
    pub cpu: u64,
    /// Memory capacity in bytes.
    pub memory: u64,
    /// Replicas it accepts at most.
    pub max_replicas: u32,
}

impl NodeInfo {
    /// The scheduler's view of a Node object.
    pub fn of(obj: &Object) -> Option<Self> {
        let spec: NodeSpec = obj.spec_as().ok()?;
        let status: NodeStatus = obj.status_as().unwrap_or_default();
        Some(NodeInfo {
            name: obj.metadata.name.clone(),
            labels: obj.metadata.labels.clone(),
            ready: status.ready,
            unschedulable: spec.unschedulable,
            has_subnet: spec
                .replica_cidr
                .as_deref()
                .is_some_and(|c| c.parse::<gantry_api::net::Ipv4Cidr>().is_ok()),
            cpu: spec.capacity.cpu.0,
            memory: spec.capacity.memory.0,
            max_replicas: spec.capacity.replicas,
        })
    }
}

/// What a replica needs from a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// Its service (for spreading).
    pub service: String,
    /// Requested millicpus.
    pub cpu: u64,
    /// Requested bytes of memory.
    pub memory: u64,
    /// Labels the node must have.
    pub node_selector: BTreeMap<String, String>,
}

impl Demand {
    /// The demand of a replica spec.
    pub fn of(spec: &ReplicaSpec) -> Self {
        let (cpu, memory) = spec.template.resources.effective_requests();
        Demand {
            service: spec.service.clone(),
            cpu: cpu.0,
            memory: memory.0,
            node_selector: spec.node_selector.clone(),
        }
    }
}

/// Why a node was filtered out, in the order the filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Misfit {
    /// `status.ready` is false.
    NotReady,
    /// Cordoned.
    Cordoned,
    /// Has no replica subnet yet (the range is exhausted, or the network controller has not
    /// reached it).
    NoSubnet,
    /// Lacks a label of the node selector.
    Selector,
    /// At its replica capacity.
    TooManyReplicas,
    /// Not enough free cpu.
    Cpu,
    /// Not enough free memory.
    Memory,
}

impl Misfit {
    /// How the message names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Misfit::NotReady => "not ready",
            Misfit::Cordoned => "unschedulable",
            Misfit::NoSubnet => "no replica subnet",
            Misfit::Selector => "didn't match node selector",
            Misfit::TooManyReplicas => "too many replicas",
            Misfit::Cpu => "insufficient cpu",
            Misfit::Memory => "insufficient memory",
        }
    }
}

/// Why a replica fits nowhere: how many nodes failed each filter (the first each failed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unschedulable {
    /// Nodes considered.
    pub nodes: usize,
    /// Count per reason.
    pub reasons: BTreeMap<Misfit, usize>,
}

impl std::fmt::Display for Unschedulable {
    /// `0/3 nodes are available: 2 insufficient memory, 1 not ready` (most frequent first).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0/{} nodes are available", self.nodes)?;
        let mut reasons: Vec<(Misfit, usize)> =
            self.reasons.iter().map(|(m, n)| (*m, *n)).collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_str().cmp(b.0.as_str())));
        for (i, (m, n)) in reasons.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(f, "{sep}{n} {}", m.as_str())?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct NodeState {
    info: NodeInfo,
    used_cpu: u64,
    used_memory: u64,
    count: u32,
    per_service: HashMap<u32, u32>,
}

/// The placement function and its node-usage cache.
#[derive(Debug, Default)]
pub struct Scheduler {
    nodes: Vec<NodeState>,
    by_name: HashMap<String, usize>,
    services: HashMap<String, u32>,
}

impl Scheduler {
    /// A scheduler over `nodes`, none of them used yet.
    pub fn new(mut nodes: Vec<NodeInfo>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        Scheduler {
            nodes: nodes
                .into_iter()
                .map(|info| NodeState {
                    info,
                    used_cpu: 0,
                    used_memory: 0,
                    count: 0,
                    per_service: HashMap::new(),
                })
                .collect(),
            by_name,
            services: HashMap::new(),
        }
    }

    fn service_id(&mut self, service: &str) -> u32 {
        let next = self.services.len() as u32;
        *self.services.entry(service.to_string()).or_insert(next)
    }

    /// Accounts a replica already on `node` (unknown nodes are ignored).
    pub fn assume(&mut self, node: &str, d: &Demand) {
        let sid = self.service_id(&d.service);
        if let Some(&i) = self.by_name.get(node) {
            let n = &mut self.nodes[i];
            n.used_cpu += d.cpu;
            n.used_memory += d.memory;
            n.count += 1;
            *n.per_service.entry(sid).or_default() += 1;
        }
    }

    /// Undoes [`Scheduler::assume`] (a bind that failed).
    pub fn forget(&mut self, node: &str, d: &Demand) {
        let sid = self.service_id(&d.service);
        if let Some(&i) = self.by_name.get(node) {
            let n = &mut self.nodes[i];
            n.used_cpu = n.used_cpu.saturating_sub(d.cpu);
            n.used_memory = n.used_memory.saturating_sub(d.memory);
            n.count = n.count.saturating_sub(1);
            if let Some(c) = n.per_service.get_mut(&sid) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Picks the best node for `d` and reserves `d` on it, or says why nothing fits.
    pub fn schedule(&mut self, d: &Demand) -> Result<String, Unschedulable> {
        let sid = self.service_id(&d.service);
        let mut best: Option<(usize, u32, u64)> = None;
        let mut misfits: [usize; 7] = [0; 7];
        for (i, n) in self.nodes.iter().enumerate() {
            let misfit = if !n.info.ready {
                Some(Misfit::NotReady)
            } else if n.info.unschedulable {
                Some(Misfit::Cordoned)
            } else if !n.info.has_subnet {
                Some(Misfit::NoSubnet)
            } else if !d
                .node_selector
                .iter()
                .all(|(k, v)| n.info.labels.get(k) == Some(v))
            {
                Some(Misfit::Selector)
            } else if n.count >= n.info.max_replicas {
                Some(Misfit::TooManyReplicas)
            } else if n.used_cpu + d.cpu > n.info.cpu {
                Some(Misfit::Cpu)
            } else if n.used_memory + d.memory > n.info.memory {
                Some(Misfit::Memory)
            } else {
                None
            };
            if let Some(m) = misfit {
                misfits[m as usize] += 1;
                continue;
            }
            let same = n.per_service.get(&sid).copied().unwrap_or(0);
            // Allocation after placement in parts per million; zero capacity counts as empty
            // (only zero requests pass the filter then).
            let frac = |used: u64, cap: u64| {
                if cap == 0 {
                    0
                } else {
                    ((u128::from(used) * 1_000_000) / u128::from(cap)) as u64
                }
            };
            let alloc = frac(n.used_cpu + d.cpu, n.info.cpu)
                .max(frac(n.used_memory + d.memory, n.info.memory));
            if best.is_none_or(|(_, s, a)| (same, alloc) < (s, a)) {
                best = Some((i, same, alloc));
            }
        }
        match best {
            Some((i, _, _)) => {
                let name = self.nodes[i].info.name.clone();
                self.assume(&name, d);
                Ok(name)
            }
            None => {
                const ALL: [Misfit; 7] = [
                    Misfit::NotReady,
                    Misfit::Cordoned,
                    Misfit::NoSubnet,
                    Misfit::Selector,
                    Misfit::TooManyReplicas,
                    Misfit::Cpu,
                    Misfit::Memory,
                ];
                Err(Unschedulable {
                    nodes: self.nodes.len(),
                    reasons: ALL
                        .iter()
                        .filter(|m| misfits[**m as usize] > 0)
                        .map(|m| (*m, misfits[*m as usize]))
                        .collect(),
                })
            }
        }
    }
}

/// The leader task binding Pending replicas.
pub struct SchedulerTask {
    cfg: ControllerConfig,
}

impl SchedulerTask {
    /// A scheduler task with `cfg`'s debounce, resync and bind concurrency.
    pub fn new(cfg: ControllerConfig) -> Self {
        SchedulerTask { cfg }
    }
}

impl LeaderTask for SchedulerTask {
    fn name(&self) -> &str {
        "scheduler"
    }

    fn run(&self, ctx: LeaderContext, stop: CancellationToken) -> BoxFuture<'static, ()> {
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let kinds = [Kind::Node, Kind::Replica];
            super::run_controller(
                "scheduler",
                &ctx,
                &cfg,
                &kinds,
                cfg.resync,
                &stop,
                |writer, events| SchedulerPass {
                    writer,
                    events,
                    cfg: cfg.clone(),
                },
            )
            .await;
        })
    }
}

struct SchedulerPass {
    writer: Writer,
    events: EventRecorder,
    cfg: ControllerConfig,
}

impl Pass for SchedulerPass {
    fn pass<'a>(&'a mut self, inf: &'a Informer, _changes: Changes) -> BoxFuture<'a, bool> {
        Box::pin(pass(inf, &self.writer, &self.events, &self.cfg))
    }
}

/// A replica to mark unschedulable, with the message.
struct Unplaced(Object, String);

/// How many replicas go in each bind batch: the binds spread over the batches in flight,
/// `BIND_BATCH` at most each.
fn bind_batch_size(binds: usize, in_flight: usize) -> usize {
    binds.div_ceil(in_flight.max(1)).clamp(1, BIND_BATCH)
}

/// One scheduling pass over every unbound replica; answers whether it should run again soon
/// (a bind failed).
async fn pass(
    inf: &Informer,
    writer: &Writer,
    events: &EventRecorder,
    cfg: &ControllerConfig,
) -> bool {
    let nodes = inf
        .all(Kind::Node)
        .values()
        .filter_map(NodeInfo::of)
        .collect();
    let mut sched = Scheduler::new(nodes);
    let mut pending = Vec::new();
    for obj in inf.all(Kind::Replica).values() {
        let Ok(spec) = obj.spec_as::<ReplicaSpec>() else {
            continue;
        };
        let status: ReplicaStatus = obj.status_as().unwrap_or_default();
        if is_finished(status.phase) {
            continue;
        }
        match &spec.node_name {
            Some(node) => sched.assume(node, &Demand::of(&spec)),
            None => pending.push((obj, spec, status)),
        }
    }
    // Oldest first.
    pending.sort_by(|a, b| {
        (&a.0.metadata.creation_timestamp, &a.0.metadata.name)
            .cmp(&(&b.0.metadata.creation_timestamp, &b.0.metadata.name))
    });
    let mut binds = Vec::new();
    let mut unplaced = Vec::new();
    for (obj, mut spec, status) in pending {
        let demand = Demand::of(&spec);
        match sched.schedule(&demand) {
            Ok(node) => {
                let mut obj = obj.clone();
                spec.node_name = Some(node.clone());
                obj.set_spec(&spec);
                if status.reason.as_deref() == Some(REASON_UNSCHEDULABLE) {
                    let mut status = status;
                    status.reason = None;
                    status.message = None;
                    obj.set_status(&status);
                }
                binds.push((obj, node));
            }
            Err(why) => {
                let message = why.to_string();
                if status.reason.as_deref() != Some(REASON_UNSCHEDULABLE)
                    || status.message.as_deref() != Some(message.as_str())
                {
                    unplaced.push(Unplaced(obj.clone(), message));
                }
            }
        }
    }
    let in_flight = cfg.write_concurrency.clamp(1, BINDS_IN_FLIGHT);
    let size = bind_batch_size(binds.len(), in_flight);
    let mut batches: Vec<Vec<(Object, String)>> = Vec::new();
    let mut binds = binds.into_iter().peekable();
    while binds.peek().is_some() {
        batches.push(binds.by_ref().take(size).collect());
    }
    let bound: Vec<bool> = futures::stream::iter(batches)
        .map(|batch| async move {
            let (objs, nodes): (Vec<Object>, Vec<String>) = batch.into_iter().unzip();
            let outcomes = writer.update_many(&objs).await;
            let mut all = outcomes.len() == objs.len();
            for ((obj, node), out) in objs.iter().zip(&nodes).zip(&outcomes) {
                match out {
                    Outcome::Written(_) => {
                        tracing::debug!(replica = %obj.metadata.name, %node, "bound");
                    }
                    other => {
                        tracing::debug!(replica = %obj.metadata.name, %node, outcome = ?other,
                            "bind failed");
                        all = false;
                    }
                }
            }
            all
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let marked: Vec<bool> = futures::stream::iter(unplaced)
        .map(|Unplaced(mut obj, message)| async move {
            let mut status: ReplicaStatus = obj.status_as().unwrap_or_default();
            status.reason = Some(REASON_UNSCHEDULABLE.to_string());
            status.message = Some(message.clone());
            obj.set_status(&status);
            if writer.update(&obj).await.is_written() {
                tracing::info!(replica = %obj.metadata.name, %message, "unschedulable");
                let involved = ObjectRef {
                    kind: Kind::Replica.to_string(),
                    name: obj.metadata.name.clone(),
                };
                events
                    .record(involved, EventType::Warning, "FailedScheduling", &message)
                    .await;
                true
            } else {
                false
            }
        })
        .buffer_unordered(cfg.write_concurrency.max(1))
        .collect()
        .await;
    bound.iter().chain(&marked).any(|ok| !ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: u64, mem: u64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ready: true,
            has_subnet: true,
            cpu,
            memory: mem,
            max_replicas: 110,
            ..NodeInfo::default()
        }
    }

    fn demand(service: &str, cpu: u64, mem: u64) -> Demand {
        Demand {
            service: service.into(),
            cpu,
            memory: mem,
            ..Demand::default()
        }
    }

    #[test]
    fn binds_spread_over_the_batches_in_flight_up_to_the_batch_limit() {
        assert_eq!(bind_batch_size(0, 4), 1);
        assert_eq!(bind_batch_size(100, 4), 25);
        assert_eq!(bind_batch_size(101, 4), 26);
        assert_eq!(bind_batch_size(10_000, 4), BIND_BATCH);
        assert_eq!(bind_batch_size(10, 0), 10);
    }

    #[test]
    fn spreads_a_service_then_prefers_least_allocated() {
        let mut s = Scheduler::new(vec![node("a", 4000, 4 << 30), node("b", 1000, 1 << 30)]);
        // `b` is busier by other services but has no replica of `web`.
        s.assume("a", &demand("web", 100, 1 << 20));
        assert_eq!(s.schedule(&demand("web", 100, 1 << 20)).unwrap(), "b");
        // Both have one `web` now: `a` is less allocated.
        assert_eq!(s.schedule(&demand("web", 100, 1 << 20)).unwrap(), "a");
    }

    #[test]
    fn explains_why_nothing_fits() {
        let mut down = node("c", 4000, 4 << 30);
        down.ready = false;
        let mut s = Scheduler::new(vec![
            node("a", 4000, 1 << 20),
            node("b", 4000, 1 << 20),
            down,
        ]);
        let err = s.schedule(&demand("web", 100, 1 << 30)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 2 insufficient memory, 1 not ready"
        );
        let mut sel = demand("web", 0, 0);
        sel.node_selector.insert("disk".into(), "ssd".into());
        let err = s.schedule(&sel).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 2 didn't match node selector, 1 not ready"
        );
        assert_eq!(
            Scheduler::new(vec![])
                .schedule(&sel)
                .unwrap_err()
                .to_string(),
            "0/0 nodes are available"
        );
    }

    #[test]
    fn respects_replica_capacity_cordon_and_forget() {
        let mut a = node("a", 4000, 4 << 30);
        a.max_replicas = 1;
        let mut b = node("b", 4000, 4 << 30);
        b.unschedulable = true;
        let mut s = Scheduler::new(vec![a, b]);
        let d = demand("web", 0, 0);
        assert_eq!(s.schedule(&d).unwrap(), "a");
        let err = s.schedule(&d).unwrap_err().to_string();
        assert_eq!(
            err,
            "0/2 nodes are available: 1 too many replicas, 1 unschedulable"
        );
        s.forget("a", &d);
        assert_eq!(s.schedule(&d).unwrap(), "a");
    }

    #[test]
    fn nodes_without_a_replica_subnet_get_nothing() {
        let mut bare = node("b", 4000, 4 << 30);
        bare.has_subnet = false;
        let mut s = Scheduler::new(vec![node("a", 4000, 1 << 20), bare]);
        let err = s.schedule(&demand("web", 0, 1 << 30)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 1 insufficient memory, 1 no replica subnet"
        );
        assert_eq!(s.schedule(&demand("web", 0, 0)).unwrap(), "a");
    }

    /// Figures, not a test: `cargo test --release -p gantry-control-plane --lib
    /// scheduler_figures -- --ignored --nocapture`.
    #[test]
    #[ignore = "figures: run explicitly"]
    fn scheduler_figures() {
        let nodes: Vec<NodeInfo> = (0..1000)
            .map(|i| node(&format!("node-{i:04}"), 64_000, 256 << 30))
            .collect();
        let mut s = Scheduler::new(nodes);
        let demands: Vec<Demand> = (0..10_000)
            .map(|i| demand(&format!("svc-{}", i % 100), 100, 128 << 20))
            .collect();
        let t = std::time::Instant::now();
        for d in &demands {
            s.schedule(d).unwrap();
        }
        let e = t.elapsed();
        println!(
            "pure scheduler: 10000 replicas on 1000 nodes in {:?}: {:.0} binds/s",
            e,
            10_000.0 / e.as_secs_f64()
        );
    }
}
