//! The reconcile loop: desired (replicas bound here) against actual (runtime containers
//! labelled with their replica), level-triggered on every change, on a short poll (to see
//! exits) and on a periodic resync.
//!
//! Invariants:
//! - Containers are found by label, never remembered only in memory: a restarted agent
//!   re-adopts running containers and treats exited ones as exits.
//! - At most one operation (start, stop, remove) runs per replica at a time; operations run
//!   off the loop, at most `max_parallel_ops` at once, on blocking threads.
//! - Nothing is removed before the first complete list of replicas (an agent that cannot
//!   reach the control plane leaves every container alone).
//! - The restart count lives in each container's `gantry.io/restart` label (and the
//!   replica's status), so it survives agent restarts.
//! - Status is computed every pass but sent to the writer only when it differs from the
//!   stored one.
//! - With replica networking on, a replica's sandbox (namespace, address) is made before its
//!   first container and removed only after its last container is gone; a container is never
//!   started before the node has its subnet (`NetworkNotReady`), and a running container
//!   whose sandbox vanished is restarted in a rebuilt one (`SandboxChanged`).

use crate::backoff;
use crate::config::AgentConfig;
use crate::network::sandbox::SandboxSnapshot;
use crate::network::{NetworkError, NetworkWatch, NodeNetwork, Sandboxes};
use crate::probes::{self, Probes};
use crate::recorder::Recorder;
use crate::status::StatusWriter;
use crate::watcher::{lock, SharedDesired};
use gantry_api::events::format_rfc3339;
use gantry_api::model::{
    ContainerTemplate, EventType, Phase, ReplicaSpec, ReplicaStatus, RestartPolicy,
};
use gantry_api::objects::Object;
use gantry_runtime::cgroups::{CpuQuota, Resources};
use gantry_runtime::container::spec::{BindMount, Network};
use gantry_runtime::container::state::Status;
use gantry_runtime::container::{ContainerError, ContainerInfo, RunOptions, Runtime};
use gantry_runtime::images::ImageError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Label: the replica a container runs.
pub const LABEL_REPLICA: &str = "gantry.io/replica";
/// Label: the node whose agent made the container.
pub const LABEL_NODE: &str = "gantry.io/node";
/// Label: the template hash the container was made from.
pub const LABEL_HASH: &str = "gantry.io/template-hash";
/// Label: the replica's restart count when the container was made.
pub const LABEL_RESTART: &str = "gantry.io/restart";

/// What the agent remembers of one replica between passes (all of it can be rebuilt).
#[derive(Debug, Default)]
struct Tracked {
    restart_count: u32,
    seeded: bool,
    /// Consecutive crashes, for the back-off.
    crashes: u32,
    backoff_until: Option<Instant>,
    /// The container whose exit has been handled.
    handled_exit: Option<String>,
    last_exit_code: Option<i32>,
    /// Why the replica waits (ImageNotFound, CrashLoopBackOff, StartFailed…) and the message.
    waiting: Option<(String, String)>,
    retry_at: Option<Instant>,
    /// Why the last start failed, by container id: (exit code, message).
    start_error: Option<(String, i32, String)>,
    probes: Option<Probes>,
    killing: Option<String>,
}

/// The outcome of an operation, reported back to the loop.
/// Which pool an operation draws its permit from.
#[derive(Debug, Clone, Copy)]
enum OpKind {
    Start,
    Stop,
}

#[derive(Debug)]
enum OpResult {
    Started {
        id: String,
        restart: u32,
    },
    StartFailed {
        id: Option<String>,
        code: i32,
        message: String,
    },
    ImageMissing {
        message: String,
    },
    /// The replica cannot start yet for a reason shown as its status (AddressExhausted).
    Waiting {
        reason: String,
        message: String,
    },
    Done,
    Failed {
        message: String,
    },
}

/// Replica networking as the reconciler uses it.
#[derive(Debug, Clone)]
pub struct ReplicaNetworking {
    /// The node network, `None` until set up.
    pub node: NetworkWatch,
    /// The sandboxes under the agent's root.
    pub sandboxes: Sandboxes,
}

/// What one pass knows of replica networking.
#[derive(Debug, Clone)]
struct NetView {
    node: Option<NodeNetwork>,
    snapshot: SandboxSnapshot,
    /// Network namespace inode of running containers, by container id.
    container_inodes: HashMap<String, u64>,
}

/// Networking as it concerns one replica in one pass.
#[derive(Debug, Clone)]
enum ReplicaNet {
    /// `--network none`: private namespaces with `lo` only.
    Off,
    /// The node has no subnet yet.
    NotReady,
    /// The node network is up.
    Ready {
        node: NodeNetwork,
        sandboxes: Sandboxes,
        sandbox_inode: Option<u64>,
    },
}

impl ReplicaNet {
    fn for_start(&self) -> Option<(Sandboxes, NodeNetwork)> {
        match self {
            ReplicaNet::Ready {
                node, sandboxes, ..
            } => Some((sandboxes.clone(), node.clone())),
            _ => None,
        }
    }
}

/// The status reason while the node has no subnet.
pub const REASON_NETWORK_NOT_READY: &str = "NetworkNotReady";
/// The status reason when the node subnet has no free address.
pub const REASON_ADDRESS_EXHAUSTED: &str = "AddressExhausted";

/// One agent's reconcile loop.
pub struct Reconciler {
    config: AgentConfig,
    runtime: Runtime,
    desired: SharedDesired,
    wake: Arc<Notify>,
    status: StatusWriter,
    recorder: Recorder,
    tracked: HashMap<String, Tracked>,
    in_flight: BTreeSet<String>,
    ops: Arc<Semaphore>,
    stops: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<(String, OpResult)>,
    done_rx: mpsc::UnboundedReceiver<(String, OpResult)>,
    network: Option<ReplicaNetworking>,
}

impl Reconciler {
    /// A loop over `runtime` for the replicas in `desired`.
    pub fn new(
        config: AgentConfig,
        runtime: Runtime,
        desired: SharedDesired,
        wake: Arc<Notify>,
        status: StatusWriter,
        recorder: Recorder,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let ops = Arc::new(Semaphore::new(config.max_parallel_ops.max(1)));
        let stops = Arc::new(Semaphore::new(config.max_parallel_stops.max(1)));
        Reconciler {
            config,
            runtime,
            desired,
            wake,
            status,
            recorder,
            tracked: HashMap::new(),
            in_flight: BTreeSet::new(),
            ops,
            stops,
            done_tx,
            done_rx,
            network: None,
        }
    }

    /// Gives replicas sandboxed networking (without it, containers get `lo` only).
    pub fn with_network(mut self, network: ReplicaNetworking) -> Self {
        self.network = Some(network);
        self
    }

    /// Runs until `shutdown`; containers are left running.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval(self.config.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(self.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut full = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = poll.tick() => {}
                _ = resync.tick() => full = true,
                Some((name, result)) = self.done_rx.recv() => self.finished(&name, result),
            }
            while let Ok((name, result)) = self.done_rx.try_recv() {
                self.finished(&name, result);
            }
            if let Err(e) = self.pass(full).await {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
        }
        // Probes stop with their owners; containers keep running under their shims.
        self.tracked.clear();
        tracing::info!(node = %self.config.name, "reconciler stopped; containers left running");
    }

    fn finished(&mut self, name: &str, result: OpResult) {
        self.in_flight.remove(name);
        let t = self.tracked.entry(name.to_string()).or_default();
        match result {
            OpResult::Started { id, restart } => {
                t.restart_count = t.restart_count.max(restart);
                t.waiting = None;
                t.retry_at = None;
                t.killing = None;
                let msg = format!("Started container {}", &id[..12.min(id.len())]);
                self.recorder
                    .replica(name, EventType::Normal, "Started", &msg);
                tracing::info!(replica = %name, container = %id, restart_count = restart, "container started");
            }
            OpResult::StartFailed { id, code, message } => {
                tracing::warn!(replica = %name, code, error = %message, "container failed to start");
                self.recorder
                    .replica(name, EventType::Warning, "Failed", &message);
                match id {
                    Some(id) => t.start_error = Some((id, code, message)),
                    None => {
                        t.waiting = Some(("StartError".into(), message));
                        t.retry_at =
                            Some(Instant::now() + self.config.resync.min(self.config.backoff_max));
                    }
                }
            }
            OpResult::ImageMissing { message } => {
                if t.waiting.as_ref().is_none_or(|(r, _)| r != "ImageNotFound") {
                    tracing::warn!(replica = %name, error = %message, "image not found on this node");
                }
                self.recorder
                    .replica(name, EventType::Warning, "ImageNotFound", &message);
                t.waiting = Some(("ImageNotFound".into(), message));
                t.retry_at = Some(Instant::now() + self.config.resync);
            }
            OpResult::Waiting { reason, message } => {
                if t.waiting.as_ref().is_none_or(|(r, _)| *r != reason) {
                    tracing::warn!(replica = %name, reason = %reason, error = %message, "replica cannot start yet");
                }
                self.recorder
                    .replica(name, EventType::Warning, &reason, &message);
                t.waiting = Some((reason, message));
                t.retry_at = Some(Instant::now() + self.config.resync);
            }
            OpResult::Done => {}
            OpResult::Failed { message } => {
                tracing::warn!(replica = %name, error = %message, "container operation failed");
            }
        }
    }

    /// Runs `work` off the loop for replica `name`, holding a concurrency permit. Stops have
    /// their own, larger pool: they mostly wait out a grace period, and must not hold starts
    /// back.
    fn spawn_op<F>(&mut self, name: &str, kind: OpKind, work: F)
    where
        F: FnOnce(&Runtime) -> OpResult + Send + 'static,
    {
        self.in_flight.insert(name.to_string());
        let pool = match kind {
            OpKind::Start => &self.ops,
            OpKind::Stop => &self.stops,
        };
        let (rt, ops, tx, wake, name) = (
            self.runtime.clone(),
            pool.clone(),
            self.done_tx.clone(),
            self.wake.clone(),
            name.to_string(),
        );
        tokio::spawn(async move {
            let result = match ops.acquire_owned().await {
                Ok(permit) => tokio::task::spawn_blocking(move || {
                    let r = work(&rt);
                    drop(permit);
                    r
                })
                .await
                .unwrap_or_else(|e| OpResult::Failed {
                    message: format!("operation panicked: {e}"),
                }),
                Err(_) => OpResult::Failed {
                    message: "agent is stopping".into(),
                },
            };
            let _ = tx.send((name, result));
            wake.notify_one();
        });
    }

    async fn pass(&mut self, full: bool) -> Result<(), ContainerError> {
        let rt = self.runtime.clone();
        let node = self.config.name.clone();
        let net = self.network.clone();
        let (containers, net_view) = tokio::task::spawn_blocking(move || {
            let containers = rt.list()?;
            let view = match net {
                Some(n) => Some(net_view(&n, &containers)?),
                None => None,
            };
            Ok::<_, ContainerError>((containers, view))
        })
        .await
        .map_err(|e| ContainerError::Other(e.to_string()))??;
        let mut actual: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
        for c in containers {
            let labels = &c.spec.labels;
            if labels.get(LABEL_NODE) != Some(&node) {
                continue;
            }
            if let Some(r) = labels.get(LABEL_REPLICA) {
                actual.entry(r.clone()).or_default().push(c);
            }
        }
        for list in actual.values_mut() {
            list.sort_by_key(|c| (restart_label(c), c.spec.created_ms));
        }
        let (desired, synced) = {
            let d = lock(&self.desired);
            (d.replicas.clone(), d.synced)
        };

        // Containers of replicas gone or bound elsewhere.
        if synced {
            for (name, list) in &actual {
                if desired.contains_key(name) || self.in_flight.contains(name) {
                    continue;
                }
                let ids: Vec<String> = list.iter().map(|c| c.spec.id.clone()).collect();
                tracing::info!(replica = %name, containers = ids.len(), "replica gone from this node; removing its containers");
                self.tracked.remove(name);
                let grace = self.config.stop_grace;
                let sandboxes = self.network.as_ref().map(|n| n.sandboxes.clone());
                let replica = name.clone();
                self.spawn_op(name, OpKind::Stop, move |rt| {
                    match (remove_all(rt, &ids, grace), sandboxes) {
                        (OpResult::Done, Some(sb)) => teardown(&sb, &replica),
                        (r, _) => r,
                    }
                });
            }
            // Sandboxes and addresses of replicas with no container left (deleted while this
            // agent was down, or whose containers were removed by hand).
            let sandboxes = self.network.as_ref().map(|n| n.sandboxes.clone());
            if let (Some(view), Some(sandboxes)) = (&net_view, sandboxes) {
                for name in view.snapshot.replicas() {
                    if desired.contains_key(&name)
                        || actual.contains_key(&name)
                        || self.in_flight.contains(&name)
                    {
                        continue;
                    }
                    tracing::info!(replica = %name, "replica gone from this node; removing its sandbox");
                    let (sandboxes, replica) = (sandboxes.clone(), name.clone());
                    self.spawn_op(&name, OpKind::Stop, move |_| teardown(&sandboxes, &replica));
                }
            }
            self.tracked
                .retain(|name, _| desired.contains_key(name) || actual.contains_key(name));
        }

        for (name, obj) in &desired {
            if self.in_flight.contains(name) {
                continue;
            }
            let spec: ReplicaSpec = match obj.spec_as() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(replica = %name, error = %e, "replica spec unreadable; skipped");
                    continue;
                }
            };
            let list = actual.remove(name).unwrap_or_default();
            let rnet = match (&net_view, &self.network) {
                (Some(view), Some(n)) => match &view.node {
                    Some(node) => ReplicaNet::Ready {
                        node: node.clone(),
                        sandboxes: n.sandboxes.clone(),
                        sandbox_inode: view.snapshot.netns_inodes.get(name).copied(),
                    },
                    None => ReplicaNet::NotReady,
                },
                _ => ReplicaNet::Off,
            };
            let container_inode = list.last().and_then(|c| {
                net_view
                    .as_ref()
                    .and_then(|v| v.container_inodes.get(&c.spec.id).copied())
            });
            let status = self.reconcile_one(name, obj, &spec, list, full, &rnet, container_inode);
            if let Some(mut status) = status {
                let stored: ReplicaStatus = obj.status_as().unwrap_or_default();
                status.replica_ip = match &net_view {
                    Some(view) => view.snapshot.addresses.get(name).map(|a| a.to_string()),
                    None => stored.replica_ip.clone(),
                };
                if status != stored {
                    self.status.send(name, status);
                }
            }
        }
        Ok(())
    }

    /// Decides what replica `name` needs; returns its status (None while an operation runs).
    #[allow(clippy::too_many_arguments)]
    fn reconcile_one(
        &mut self,
        name: &str,
        obj: &Object,
        spec: &ReplicaSpec,
        list: Vec<ContainerInfo>,
        full: bool,
        rnet: &ReplicaNet,
        container_inode: Option<u64>,
    ) -> Option<ReplicaStatus> {
        let hash = template_hash(spec);
        let now = Instant::now();
        let config = self.config.clone();
        let t = self.tracked.entry(name.to_string()).or_default();
        if !t.seeded {
            let stored: ReplicaStatus = obj.status_as().unwrap_or_default();
            let labelled = list.iter().map(restart_label).max().unwrap_or(0);
            t.restart_count = stored.restart_count.max(labelled);
            t.last_exit_code = stored.last_exit_code;
            t.seeded = true;
        }

        // History: keep the current container and the one before it (for `logs --previous`).
        let mut list = list;
        let current = list.pop();
        let previous = list.pop();
        let extra: Vec<String> = list.iter().map(|c| c.spec.id.clone()).collect();
        let previous_running = previous
            .as_ref()
            .filter(|c| c.supervised)
            .map(|c| c.spec.id.clone());
        if !extra.is_empty() || previous_running.is_some() {
            let ids: Vec<String> = extra.into_iter().chain(previous_running).collect();
            let grace = config.stop_grace;
            self.spawn_op(name, OpKind::Stop, move |rt| remove_all(rt, &ids, grace));
            return None;
        }

        let mut status = ReplicaStatus {
            restart_count: t.restart_count,
            last_exit_code: t.last_exit_code,
            ..ReplicaStatus::default()
        };

        let Some(cur) = current else {
            t.probes = None;
            if matches!(rnet, ReplicaNet::NotReady) {
                status.reason = Some(REASON_NETWORK_NOT_READY.into());
                status.message = Some(network_not_ready(&config.name));
                return Some(status);
            }
            // Nothing runs: start one, unless waiting for an image or a retry.
            if let (Some(at), false) = (t.retry_at, full) {
                if now < at {
                    if let Some((reason, message)) = &t.waiting {
                        status.reason = Some(reason.clone());
                        status.message = Some(message.clone());
                    }
                    return Some(status);
                }
            }
            let restart = t.restart_count;
            let template = spec.template.clone();
            let (node, replica) = (config.name.clone(), name.to_string());
            if let Some((reason, message)) = &t.waiting {
                status.reason = Some(reason.clone());
                status.message = Some(message.clone());
            }
            let net = rnet.for_start();
            self.spawn_op(name, OpKind::Start, move |rt| {
                start(rt, &node, &replica, &template, &hash, restart, net)
            });
            return Some(status);
        };

        let cur_id = cur.spec.id.clone();
        status.container_id = Some(cur_id.clone());
        let state = cur.state.clone();
        let running = cur.supervised && state.as_ref().is_some_and(|s| s.status == Status::Running);

        // A changed template replaces the container (not a restart).
        let cur_hash = cur.spec.labels.get(LABEL_HASH).cloned().unwrap_or_default();
        if cur_hash != hash {
            tracing::info!(replica = %name, container = %cur_id, "template changed; replacing container");
            self.recorder.replica(
                name,
                EventType::Normal,
                "Killing",
                "Stopping container: template changed",
            );
            t.probes = None;
            let grace = config.stop_grace;
            let ids = vec![cur_id];
            self.spawn_op(name, OpKind::Stop, move |rt| remove_all(rt, &ids, grace));
            return None;
        }

        if cur.supervised && !running {
            // The shim is still setting it up.
            return Some(status);
        }

        if running {
            if let ReplicaNet::Ready {
                node: net,
                sandboxes,
                sandbox_inode,
            } = rnet
            {
                let joined = matches!(cur.spec.network, Network::Join { .. });
                let lost = sandbox_inode.is_none()
                    || (container_inode.is_some() && container_inode != *sandbox_inode);
                if joined && lost {
                    let message = format!(
                        "network sandbox of replica {name} vanished; rebuilding it and \
                         restarting container {} in it",
                        &cur_id[..12.min(cur_id.len())]
                    );
                    tracing::warn!(replica = %name, container = %cur_id, "sandbox vanished; rebuilding");
                    self.recorder
                        .replica(name, EventType::Warning, "SandboxChanged", &message);
                    t.probes = None;
                    let next = t.restart_count + 1;
                    let (sandboxes, net) = (sandboxes.clone(), net.clone());
                    let template = spec.template.clone();
                    let (node, replica) = (config.name.clone(), name.to_string());
                    let grace = config.stop_grace;
                    self.spawn_op(name, OpKind::Start, move |rt| {
                        if let Err(e) = rt.stop(&cur_id, grace) {
                            return OpResult::Failed {
                                message: format!("stop {cur_id}: {e}"),
                            };
                        }
                        if let Err(e) = sandboxes.rebuild(&replica, &net) {
                            return network_failure(&replica, e);
                        }
                        start(
                            rt,
                            &node,
                            &replica,
                            &template,
                            &hash,
                            next,
                            Some((sandboxes, net)),
                        )
                    });
                    return None;
                }
            }
            let started_ms = state.as_ref().map_or(0, |s| s.started_ms);
            status.phase = Phase::Running;
            status.start_time = Some(format_rfc3339(started_ms / 1000));
            if t.probes.as_ref().map(|p| p.container_id.as_str()) != Some(cur_id.as_str()) {
                t.probes = Some(probes::start(
                    name,
                    cur.clone(),
                    &spec.template,
                    self.wake.clone(),
                    self.recorder.clone(),
                ));
            }
            let ps = t.probes.as_ref().map(Probes::state).unwrap_or_default();
            status.ready = ps.ready;
            if !ps.ready {
                if let Some(m) = ps.not_ready_message {
                    status.reason = Some("NotReady".into());
                    status.message = Some(m);
                }
            }
            if let Some(why) = ps.kill {
                if t.killing.as_deref() != Some(cur_id.as_str()) {
                    t.killing = Some(cur_id.clone());
                    self.recorder.replica(
                        name,
                        EventType::Normal,
                        "Killing",
                        &format!("Container failed its probe ({why}), will be restarted"),
                    );
                    tracing::info!(replica = %name, container = %cur_id, reason = %why, "killing unhealthy container");
                    let grace = config.stop_grace;
                    let id = cur_id.clone();
                    self.spawn_op(name, OpKind::Stop, move |rt| match rt.stop(&id, grace) {
                        Ok(_) => OpResult::Done,
                        Err(e) => OpResult::Failed {
                            message: format!("stop {id}: {e}"),
                        },
                    });
                }
                status.ready = false;
            }
            return Some(status);
        }

        // The current container has exited (or its shim vanished).
        t.probes = None;
        let (mut code, mut why) = exit_of(&cur);
        if let Some((id, c, m)) = &t.start_error {
            if *id == cur_id {
                code = *c;
                why = Some(m.clone());
            }
        }
        let policy = spec.template.restart_policy;
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        };
        if t.handled_exit.as_deref() != Some(cur_id.as_str()) {
            t.handled_exit = Some(cur_id.clone());
            t.last_exit_code = Some(code);
            let st = state.as_ref();
            let ran =
                Duration::from_millis(st.map_or(0, |s| s.finished_ms.saturating_sub(s.started_ms)));
            tracing::info!(replica = %name, container = %cur_id, exit_code = code,
                reason = why.as_deref().unwrap_or(""), "container exited");
            if restart {
                t.crashes = if backoff::resets(ran, config.backoff_max) {
                    1
                } else {
                    t.crashes + 1
                };
                let delay = backoff::delay(config.backoff_base, config.backoff_max, t.crashes);
                // Count the back-off from the exit, which may predate this agent.
                let finished_ms = st.map_or(0, |s| s.finished_ms);
                let since = Duration::from_millis(
                    gantry_runtime::container::now_ms().saturating_sub(finished_ms),
                );
                t.backoff_until = Some(now + delay.saturating_sub(since));
                self.recorder.replica(
                    name,
                    EventType::Warning,
                    "BackOff",
                    "Back-off restarting failed container",
                );
                tracing::info!(replica = %name, delay = ?delay, "restart back-off");
            }
        }
        status.last_exit_code = Some(code);
        if restart {
            let until = t.backoff_until.unwrap_or(now);
            if now >= until && !matches!(rnet, ReplicaNet::NotReady) {
                let next = t.restart_count + 1;
                let template = spec.template.clone();
                let (node, replica) = (config.name.clone(), name.to_string());
                tracing::info!(replica = %name, restart_count = next, "restarting container");
                let net = rnet.for_start();
                self.spawn_op(name, OpKind::Start, move |rt| {
                    start(rt, &node, &replica, &template, &hash, next, net)
                });
            }
            status.phase = Phase::Running;
            let oom = why.as_deref() == Some("OOMKilled");
            status.reason = Some(if oom { "OOMKilled" } else { "CrashLoopBackOff" }.into());
            // Keep the message stable while waiting, so the status is not rewritten each tick.
            status.message = Some(format!(
                "back-off restarting failed container (exit code {code}{})",
                why.as_deref().map(|w| format!(", {w}")).unwrap_or_default()
            ));
        } else {
            status.phase = if code == 0 {
                Phase::Succeeded
            } else {
                Phase::Failed
            };
            status.reason = Some(match why {
                Some(w) if w == "OOMKilled" => w,
                _ if code == 0 => "Completed".into(),
                _ => "Error".into(),
            });
        }
        Some(status)
    }
}

/// The container's restart-count label (0 when absent).
fn restart_label(c: &ContainerInfo) -> u32 {
    c.spec
        .labels
        .get(LABEL_RESTART)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The exit code and notable reason of a stopped container.
fn exit_of(c: &ContainerInfo) -> (i32, Option<String>) {
    match &c.state {
        Some(s) if s.status == Status::Exited => (
            s.exit_code.unwrap_or(128),
            s.reason.clone().or_else(|| s.error.clone()),
        ),
        Some(s) => (s.exit_code.unwrap_or(137), Some("ContainerLost".into())),
        None => (128, Some("ContainerLost".into())),
    }
}

/// The replica's template hash, or one computed from the template when the spec has none.
pub fn template_hash(spec: &ReplicaSpec) -> String {
    if !spec.template_hash.is_empty() {
        return spec.template_hash.clone();
    }
    // FNV-1a over the template's JSON: stable across processes and versions.
    let json = serde_json::to_vec(&spec.template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The runtime options of a replica's container.
pub fn run_options(
    node: &str,
    replica: &str,
    template: &ContainerTemplate,
    hash: &str,
    restart: u32,
) -> RunOptions {
    let (entrypoint, command) = if template.command.is_empty() {
        (None, template.args.clone())
    } else {
        (Some(template.command.clone()), template.args.clone())
    };
    let limits = &template.resources.limits;
    let labels = BTreeMap::from([
        (LABEL_REPLICA.to_string(), replica.to_string()),
        (LABEL_NODE.to_string(), node.to_string()),
        (LABEL_HASH.to_string(), hash.to_string()),
        (LABEL_RESTART.to_string(), restart.to_string()),
    ]);
    RunOptions {
        image: template.image.clone(),
        name: Some(format!(
            "{replica}-{restart}-{:04x}",
            gantry_api::events::random_u32() & 0xffff
        )),
        command,
        entrypoint,
        env: template
            .env
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect(),
        hostname: Some(replica.to_string()),
        working_dir: template.working_dir.clone(),
        resources: Resources {
            memory_limit: limits.memory.map(|m| m.0),
            cpu_quota: limits.cpu.map(|c| CpuQuota::from_millicpus(c.0)),
            pids_limit: limits.pids,
        },
        labels,
        ..RunOptions::default()
    }
}

/// Reads what the pass needs of replica networking (blocking).
fn net_view(
    n: &ReplicaNetworking,
    containers: &[ContainerInfo],
) -> Result<NetView, ContainerError> {
    use std::os::unix::fs::MetadataExt;
    let snapshot = n
        .sandboxes
        .snapshot()
        .map_err(|e| ContainerError::Other(format!("replica networking: {e}")))?;
    let container_inodes = containers
        .iter()
        .filter(|c| c.is_running() && matches!(c.spec.network, Network::Join { .. }))
        .filter_map(|c| {
            let pid = c.state.as_ref()?.pid;
            let meta = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
            Some((c.spec.id.clone(), meta.ino()))
        })
        .collect();
    Ok(NetView {
        node: n.node.borrow().clone(),
        snapshot,
        container_inodes,
    })
}

fn network_not_ready(node: &str) -> String {
    format!(
        "node {node} has no replica subnet yet: waiting for the control plane to set its \
         spec.replicaCidr"
    )
}

fn network_failure(replica: &str, e: NetworkError) -> OpResult {
    match e {
        NetworkError::Exhausted { .. } => OpResult::Waiting {
            reason: REASON_ADDRESS_EXHAUSTED.into(),
            message: format!("cannot address replica {replica}: {e}"),
        },
        e => OpResult::StartFailed {
            id: None,
            code: 125,
            message: format!("network sandbox of replica {replica}: {e}"),
        },
    }
}

fn teardown(sandboxes: &Sandboxes, replica: &str) -> OpResult {
    match sandboxes.teardown(replica) {
        Ok(()) => OpResult::Done,
        Err(e) => OpResult::Failed {
            message: format!("remove network sandbox of replica {replica}: {e}"),
        },
    }
}

/// Points the container at its replica's sandbox: join its namespace, see its
/// `resolv.conf` and `hosts`.
pub fn with_sandbox(mut opts: RunOptions, sandbox: &crate::network::Sandbox) -> RunOptions {
    opts.network = Network::Join {
        path: sandbox.netns.clone(),
    };
    opts.mounts = vec![
        BindMount {
            source: sandbox.resolv_conf.clone(),
            destination: "/etc/resolv.conf".into(),
        },
        BindMount {
            source: sandbox.hosts.clone(),
            destination: "/etc/hosts".into(),
        },
    ];
    opts
}

fn start(
    rt: &Runtime,
    node: &str,
    replica: &str,
    template: &ContainerTemplate,
    hash: &str,
    restart: u32,
    net: Option<(Sandboxes, NodeNetwork)>,
) -> OpResult {
    let mut opts = run_options(node, replica, template, hash, restart);
    if let Some((sandboxes, node_net)) = net {
        match sandboxes.ensure(replica, &node_net) {
            Ok(sb) => opts = with_sandbox(opts, &sb),
            Err(e) => return network_failure(replica, e),
        }
    }
    let spec = match rt.create(&opts) {
        Ok(s) => s,
        Err(ContainerError::Image(ImageError::NotFound(_))) => {
            return OpResult::ImageMissing {
                message: format!(
                    "image {} is not on node {node}: import it with `gantry image import`",
                    template.image
                ),
            }
        }
        Err(e) => {
            return OpResult::StartFailed {
                id: None,
                code: e.exit_code(),
                message: e.to_string(),
            }
        }
    };
    match rt.start(&spec, false) {
        // Dropping the handle closes our end of the status pipe; the shim carries on.
        Ok(_started) => OpResult::Started {
            id: spec.id,
            restart,
        },
        Err(e) => OpResult::StartFailed {
            id: Some(spec.id),
            code: e.exit_code(),
            message: e.to_string(),
        },
    }
}

fn remove_all(rt: &Runtime, ids: &[String], grace: Duration) -> OpResult {
    let mut errors = Vec::new();
    for id in ids {
        let r = rt.stop(id, grace).and_then(|_| rt.remove(id, true));
        match r {
            Ok(()) | Err(ContainerError::NotFound(_)) => {
                tracing::info!(container = %id, "container stopped and removed");
            }
            Err(e) => errors.push(format!("{id}: {e}")),
        }
    }
    if errors.is_empty() {
        OpResult::Done
    } else {
        OpResult::Failed {
            message: errors.join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::model::{EnvVar, ResourceList};

    #[test]
    fn templates_map_to_docker_style_run_options() {
        let t = ContainerTemplate {
            image: "img:1".into(),
            command: vec!["/bin/app".into()],
            args: vec!["serve".into()],
            env: vec![EnvVar {
                name: "A".into(),
                value: "1".into(),
            }],
            resources: gantry_api::model::Resources {
                limits: ResourceList {
                    cpu: Some(gantry_api::model::Cpu(500)),
                    memory: None,
                    pids: Some(10),
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let o = run_options("n1", "web-1", &t, "h", 3);
        assert_eq!(o.entrypoint, Some(vec!["/bin/app".to_string()]));
        assert_eq!(o.command, vec!["serve".to_string()]);
        assert_eq!(o.env, vec!["A=1".to_string()]);
        assert_eq!(o.resources.pids_limit, Some(10));
        assert_eq!(o.resources.cpu_quota.map(|q| q.quota_us), Some(50_000));
        assert_eq!(o.labels[LABEL_RESTART], "3");
        assert!(o.name.unwrap().starts_with("web-1-3-"));
    }

    #[test]
    fn template_hash_prefers_the_specs_and_is_stable_otherwise() {
        let mut spec = ReplicaSpec {
            service: "s".into(),
            node_name: None,
            template: ContainerTemplate {
                image: "a".into(),
                ..Default::default()
            },
            template_hash: String::new(),
            node_selector: BTreeMap::new(),
        };
        let h1 = template_hash(&spec);
        assert_eq!(h1, template_hash(&spec.clone()));
        spec.template.image = "b".into();
        assert_ne!(h1, template_hash(&spec));
        spec.template_hash = "abc".into();
        assert_eq!(template_hash(&spec), "abc");
    }
}
