//! [`NodeLifecycle`]: judges node liveness and acts on silent nodes.
//!
//! Liveness is judged by this member's own clock: it remembers when it last saw each node's
//! `status.lastHeartbeat` change (its resourceVersion, when the agent writes no heartbeat),
//! never comparing the agent's timestamp with its own. On becoming leader every node gets a
//! full lease before being judged.
//!
//! - Silent for `node_lease`: `status.ready=false`, reason `NodeStatusUnknown`, a
//!   `NodeNotReady` event; its replicas' phase becomes `Unknown` (and not ready).
//! - Silent for a further `node_grace`: its unfinished replicas are deleted (a `NodeLost`
//!   event), so the service controller replaces them elsewhere.
//! - Heard from again: `status.ready=true` (a `NodeReady` event).

use super::events::EventRecorder;
use super::informer::{Changes, Informer};
use super::writer::{Outcome, Writer};
use super::{is_finished, ControllerConfig, Pass};
use crate::server::{LeaderContext, LeaderTask};
use futures::future::BoxFuture;
use gantry_api::model::{EventType, NodeStatus, ObjectRef, Phase, ReplicaSpec, ReplicaStatus};
use gantry_api::objects::{Kind, Object};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The reason on a node whose agent went silent.
pub const REASON_NODE_UNKNOWN: &str = "NodeStatusUnknown";

/// The leader task of node liveness.
pub struct NodeLifecycle {
    cfg: ControllerConfig,
}

impl NodeLifecycle {
    /// A node lifecycle controller with `cfg`'s lease and grace.
    pub fn new(cfg: ControllerConfig) -> Self {
        NodeLifecycle { cfg }
    }
}

impl LeaderTask for NodeLifecycle {
    fn name(&self) -> &str {
        "node-lifecycle"
    }

    fn run(&self, ctx: LeaderContext, stop: CancellationToken) -> BoxFuture<'static, ()> {
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let kinds = [Kind::Node, Kind::Replica];
            // Judge often relative to the lease, so a silent node is caught soon after it
            // expires.
            let tick =
                (cfg.node_lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            super::run_controller(
                "node-lifecycle",
                &ctx,
                &cfg,
                &kinds,
                tick,
                &stop,
                |writer, events| NodePass {
                    writer,
                    events,
                    cfg: cfg.clone(),
                    seen: HashMap::new(),
                },
            )
            .await;
        })
    }
}

/// What this leader observed of one node.
struct Seen {
    /// The heartbeat (or version) last seen.
    token: String,
    /// When it last changed, by our clock (or when we started watching).
    at: Instant,
    /// Whether we have seen it change at all since becoming leader.
    heard: bool,
}

struct NodePass {
    writer: Writer,
    events: EventRecorder,
    cfg: ControllerConfig,
    seen: HashMap<String, Seen>,
}

fn token_of(obj: &Object, status: &NodeStatus) -> String {
    match &status.last_heartbeat {
        Some(hb) => format!("hb:{hb}"),
        None => format!("rv:{}", obj.resource_version()),
    }
}

impl Pass for NodePass {
    fn pass<'a>(&'a mut self, inf: &'a Informer, _changes: Changes) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let now = Instant::now();
            let nodes = inf.all(Kind::Node);
            self.seen.retain(|name, _| nodes.contains_key(name));
            let mut failed = false;
            let mut replicas_by_node: Option<HashMap<String, Vec<&Object>>> = None;
            for (name, node) in nodes {
                let status: NodeStatus = node.status_as().unwrap_or_default();
                let token = token_of(node, &status);
                let seen = self.seen.entry(name.clone()).or_insert_with(|| Seen {
                    token: token.clone(),
                    at: now,
                    heard: false,
                });
                if seen.token != token {
                    seen.token = token;
                    seen.at = now;
                    seen.heard = true;
                }
                let silent = now.saturating_duration_since(seen.at);
                let heard = seen.heard;
                if silent >= self.cfg.node_lease {
                    if status.ready || status.reason.as_deref() != Some(REASON_NODE_UNKNOWN) {
                        failed |= !self.mark(node, status.clone(), false).await;
                    }
                    let by_node = replicas_by_node.get_or_insert_with(|| index(inf));
                    let replicas = by_node.get(name).map(Vec::as_slice).unwrap_or(&[]);
                    if silent >= self.cfg.node_lease + self.cfg.node_grace {
                        failed |= !self.evict(name, replicas).await;
                    } else {
                        failed |= !self.mark_unknown(replicas).await;
                    }
                } else if heard && !status.ready {
                    failed |= !self.mark(node, status, true).await;
                }
            }
            failed
        })
    }
}

/// Unfinished replicas by node.
fn index(inf: &Informer) -> HashMap<String, Vec<&Object>> {
    let mut map: HashMap<String, Vec<&Object>> = HashMap::new();
    for r in inf.all(Kind::Replica).values() {
        let Ok(spec) = r.spec_as::<ReplicaSpec>() else {
            continue;
        };
        let status: ReplicaStatus = r.status_as().unwrap_or_default();
        if let (Some(node), false) = (spec.node_name, is_finished(status.phase)) {
            map.entry(node).or_default().push(r);
        }
    }
    map
}

impl NodePass {
    /// Writes `status.ready`; answers false when the write failed.
    async fn mark(&mut self, node: &Object, mut status: NodeStatus, ready: bool) -> bool {
        let name = node.metadata.name.clone();
        status.ready = ready;
        status.reason = (!ready).then(|| REASON_NODE_UNKNOWN.to_string());
        let mut obj = node.clone();
        obj.set_status(&status);
        match self.writer.update(&obj).await {
            Outcome::Written(stored) => {
                // Our own write changes the version: it is no sign of life.
                if status.last_heartbeat.is_none() {
                    if let Some(seen) = self.seen.get_mut(&name) {
                        seen.token = format!("rv:{}", stored.resource_version);
                    }
                }
                let involved = ObjectRef {
                    kind: Kind::Node.to_string(),
                    name: name.clone(),
                };
                if ready {
                    tracing::info!(node = %name, "node ready");
                    self.events
                        .record(involved, EventType::Normal, "NodeReady", "node is ready")
                        .await;
                } else {
                    tracing::warn!(node = %name, lease = ?self.cfg.node_lease, "node not ready");
                    let message = format!(
                        "node stopped reporting for {:?}: status unknown",
                        self.cfg.node_lease
                    );
                    self.events
                        .record(involved, EventType::Warning, "NodeNotReady", &message)
                        .await;
                }
                true
            }
            // A heartbeat raced us: the node is alive; judge again next tick.
            Outcome::Conflict => true,
            _ => false,
        }
    }

    /// Sets phase Unknown (and not ready) on `replicas`, keeping the agent's other fields.
    async fn mark_unknown(&self, replicas: &[&Object]) -> bool {
        let mut ok = true;
        for r in replicas {
            let mut status: ReplicaStatus = r.status_as().unwrap_or_default();
            if status.phase == Phase::Unknown && !status.ready {
                continue;
            }
            status.phase = Phase::Unknown;
            status.ready = false;
            let mut obj = (*r).clone();
            obj.set_status(&status);
            ok &= matches!(
                self.writer.update(&obj).await,
                Outcome::Written(_) | Outcome::Conflict
            );
        }
        ok
    }

    /// Deletes the unfinished replicas of a lost node.
    async fn evict(&self, node: &str, replicas: &[&Object]) -> bool {
        if replicas.is_empty() {
            return true;
        }
        let mut ok = true;
        let mut deleted = Vec::new();
        for r in replicas {
            match self.writer.delete(r).await {
                Outcome::Written(_) => deleted.push(r.metadata.name.clone()),
                Outcome::NotFound => {}
                _ => ok = false,
            }
        }
        if !deleted.is_empty() {
            tracing::warn!(%node, count = deleted.len(), "node lost: replicas deleted");
            let message = format!(
                "node lost for {:?}: deleted {} replicas ({})",
                self.cfg.node_lease + self.cfg.node_grace,
                deleted.len(),
                deleted.join(", ")
            );
            let involved = ObjectRef {
                kind: Kind::Node.to_string(),
                name: node.to_string(),
            };
            self.events
                .record(involved, EventType::Warning, "NodeLost", &message)
                .await;
        }
        ok
    }
}
