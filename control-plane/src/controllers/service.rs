//! [`ServiceController`]: keeps each Service's Replica objects at the desired count and
//! template, and writes the Service's status.
//!
//! - Active replicas are those not Succeeded/Failed. Finished replicas of a template whose
//!   restart policy is `Never`/`OnFailure` count toward the desired number and are not
//!   replaced; finished replicas otherwise (policy `Always`, or an outdated template) are
//!   deleted and so replaced.
//! - Scale-down deletes not-ready replicas first, then unscheduled ones, then the newest.
//! - A changed template (its hash differs) rolls: new replicas are created up to
//!   `replicas + maxSurge`, old ones are deleted while at least `replicas - maxUnavailable`
//!   stay ready (not-ready old ones go first, at once).
//! - Replicas whose service does not exist are deleted.
//! - The status is written only when it changed, keeping `clusterIP` and `networkError` (the
//!   network controller's) as read. All writes are compare-and-swap.
//! - Creates and deletes of a pass go through Raft as batches ([`Writer::create_many`],
//!   [`Writer::delete_many`]) of at most [`WRITE_BATCH`], [`BATCHES_IN_FLIGHT`] at once, so
//!   scaling 0→100 costs a few log entries, not a hundred; each write is still checked alone.

use super::events::EventRecorder;
use super::informer::{Changes, Informer};
use super::writer::{Outcome, Writer};
use super::{is_finished, ControllerConfig, Pass, LABEL_SERVICE};
use crate::server::{LeaderContext, LeaderTask};
use futures::future::BoxFuture;
use futures::StreamExt;
use gantry_api::model::{
    ContainerTemplate, EventType, ObjectRef, Phase, ReplicaSpec, ReplicaStatus, RestartPolicy,
    ServiceSpec, ServiceStatus,
};
use gantry_api::objects::{Kind, Object};
use std::collections::{BTreeMap, BTreeSet};
use tokio_util::sync::CancellationToken;

/// Creates or deletes proposed in one Raft entry at most.
pub const WRITE_BATCH: usize = 256;

/// Create or delete batches in flight at most (fewer if the write concurrency is lower).
pub const BATCHES_IN_FLIGHT: usize = 4;

/// A stable hash of a template: the first 10 hex digits of FNV-1a 64 over its JSON.
pub fn template_hash(template: &ContainerTemplate) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")[..10].to_string()
}

/// A new replica name: `<service>-<5 lowercase alphanumerics>`.
pub fn replica_name(service: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = u64::from(gantry_api::events::random_u32()) << 32
        | u64::from(gantry_api::events::random_u32());
    let suffix: String = (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect();
    let base: String = service.chars().take(63 - 6).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

/// What the planner needs of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    /// Its name.
    pub name: String,
    /// Its `spec.templateHash`.
    pub hash: String,
    /// Its phase.
    pub phase: Phase,
    /// Its readiness.
    pub ready: bool,
    /// Bound to a node.
    pub bound: bool,
    /// Its creation timestamp (RFC 3339).
    pub created: String,
    /// Its template's restart policy.
    pub restart_policy: RestartPolicy,
}

/// What to do for one service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// New replicas to create.
    pub create: u32,
    /// Replicas to delete, by name.
    pub delete: Vec<String>,
    /// The status the service should have.
    pub status: ServiceStatus,
}

/// Scale-down order: not ready first, then unscheduled, then newest.
fn victim_order(a: &&ReplicaView, b: &&ReplicaView) -> std::cmp::Ordering {
    (a.ready, a.bound)
        .cmp(&(b.ready, b.bound))
        .then_with(|| b.created.cmp(&a.created))
        .then_with(|| b.name.cmp(&a.name))
}

/// The pure reconcile of one service: given its spec, the current template hash and its
/// replicas, what to create and delete, and its status.
pub fn plan(spec: &ServiceSpec, hash: &str, replicas: &[ReplicaView]) -> Plan {
    let want = spec.replicas;
    let mut delete: Vec<String> = Vec::new();
    let mut kept_finished: Vec<&ReplicaView> = Vec::new();
    let mut current: Vec<&ReplicaView> = Vec::new();
    let mut old: Vec<&ReplicaView> = Vec::new();
    for r in replicas {
        if is_finished(r.phase) {
            if r.hash == hash && r.restart_policy != RestartPolicy::Always {
                kept_finished.push(r);
            } else {
                delete.push(r.name.clone());
            }
        } else if r.hash == hash {
            current.push(r);
        } else {
            old.push(r);
        }
    }
    let count = |v: &[&ReplicaView]| v.len() as u32;
    let ready = |v: &[&ReplicaView]| v.iter().filter(|r| r.ready).count() as u32;
    let status = ServiceStatus {
        replicas: count(&current) + count(&old),
        ready_replicas: ready(&current) + ready(&old),
        updated_replicas: count(&current),
        template_hash: hash.to_string(),
        ..ServiceStatus::default()
    };
    let mut create = 0;
    if old.is_empty() {
        let mut have: Vec<&ReplicaView> = current.iter().chain(&kept_finished).copied().collect();
        let n = count(&have);
        if n < want {
            create = want - n;
        } else if n > want {
            have.sort_by(victim_order);
            delete.extend(
                have.iter()
                    .take((n - want) as usize)
                    .map(|r| r.name.clone()),
            );
        }
    } else {
        let mut surge = spec.strategy.max_surge.resolve(want, true).unwrap_or(1);
        let unavailable = spec
            .strategy
            .max_unavailable
            .resolve(want, false)
            .unwrap_or(0);
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        let new_count = count(&current) + count(&kept_finished);
        let total = new_count + count(&old);
        if new_count < want {
            create = (want - new_count).min((want + surge).saturating_sub(total));
        }
        // Old replicas that are not ready give no availability: replace them at once.
        old.sort_by(victim_order);
        let (old_unready, old_ready): (Vec<&ReplicaView>, Vec<&ReplicaView>) =
            old.iter().partition(|r| !r.ready);
        delete.extend(old_unready.iter().map(|r| r.name.clone()));
        let available = ready(&current) + count(&old_ready);
        let removable = available.saturating_sub(want.saturating_sub(unavailable));
        delete.extend(
            old_ready
                .iter()
                .take(removable as usize)
                .map(|r| r.name.clone()),
        );
    }
    Plan {
        create,
        delete,
        status,
    }
}

/// The leader task reconciling Services.
pub struct ServiceController {
    cfg: ControllerConfig,
}

impl ServiceController {
    /// A service controller with `cfg`'s debounce, resync and write concurrency.
    pub fn new(cfg: ControllerConfig) -> Self {
        ServiceController { cfg }
    }
}

impl LeaderTask for ServiceController {
    fn name(&self) -> &str {
        "service-controller"
    }

    fn run(&self, ctx: LeaderContext, stop: CancellationToken) -> BoxFuture<'static, ()> {
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let kinds = [Kind::Service, Kind::Replica];
            super::run_controller(
                "service-controller",
                &ctx,
                &cfg,
                &kinds,
                cfg.resync,
                &stop,
                |writer, events| ServicePass {
                    writer,
                    events,
                    cfg: cfg.clone(),
                },
            )
            .await;
        })
    }
}

struct ServicePass {
    writer: Writer,
    events: EventRecorder,
    cfg: ControllerConfig,
}

fn service_of(obj: &Object) -> Option<String> {
    obj.metadata.labels.get(LABEL_SERVICE).cloned().or_else(|| {
        obj.spec
            .get("service")
            .and_then(|s| s.as_str())
            .map(str::to_string)
    })
}

enum Action {
    Create(Object),
    Delete(Object),
    Status(Object),
}

impl Pass for ServicePass {
    fn pass<'a>(&'a mut self, inf: &'a Informer, changes: Changes) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            // Replicas by service, and the dirty set.
            let mut by_service: BTreeMap<String, Vec<&Object>> = BTreeMap::new();
            for r in inf.all(Kind::Replica).values() {
                if let Some(s) = service_of(r) {
                    by_service.entry(s).or_default().push(r);
                }
            }
            let dirty: BTreeSet<String> = if changes.relisted {
                inf.all(Kind::Service)
                    .keys()
                    .cloned()
                    .chain(by_service.keys().cloned())
                    .collect()
            } else {
                let mut d = BTreeSet::new();
                for (kind, name, old) in &changes.touched {
                    match kind {
                        Kind::Service => {
                            d.insert(name.clone());
                        }
                        Kind::Replica => {
                            let now = inf.get(Kind::Replica, name);
                            d.extend(now.and_then(service_of));
                            d.extend(old.as_ref().and_then(service_of));
                        }
                        _ => {}
                    }
                }
                d
            };
            let mut actions = Vec::new();
            let mut summaries = Vec::new();
            for name in dirty {
                let replicas = by_service.get(&name).map(Vec::as_slice).unwrap_or(&[]);
                self.reconcile(inf, &name, replicas, &mut actions, &mut summaries);
            }
            let writer = &self.writer;
            let (mut creates, mut deletes, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
            for a in actions {
                match a {
                    Action::Create(o) => creates.push(o),
                    Action::Delete(o) => deletes.push(o),
                    Action::Status(o) => statuses.push(o),
                }
            }
            let in_flight = self.cfg.write_concurrency.clamp(1, BATCHES_IN_FLIGHT);
            let mut batches: Vec<(bool, Vec<Object>)> = Vec::new();
            for (delete, objs) in [(false, creates), (true, deletes)] {
                let size = objs.len().div_ceil(in_flight).clamp(1, WRITE_BATCH);
                let mut objs = objs.into_iter().peekable();
                while objs.peek().is_some() {
                    batches.push((delete, objs.by_ref().take(size).collect()));
                }
            }
            let batched = futures::stream::iter(batches)
                .map(|(delete, objs)| async move {
                    let outcomes = if delete {
                        writer.delete_many(&objs).await
                    } else {
                        writer.create_many(&objs).await
                    };
                    let mut all = outcomes.len() == objs.len();
                    for out in outcomes {
                        all &= written(out, delete);
                    }
                    all
                })
                .buffer_unordered(in_flight)
                .collect::<Vec<bool>>();
            let single = futures::stream::iter(statuses)
                .map(|o| async move { written(writer.update(&o).await, false) })
                .buffer_unordered(self.cfg.write_concurrency.max(1))
                .collect::<Vec<bool>>();
            let (batched, single) = futures::join!(batched, single);
            let results: Vec<bool> = batched.into_iter().chain(single).collect();
            for (service, reason, message) in summaries {
                let involved = ObjectRef {
                    kind: Kind::Service.to_string(),
                    name: service,
                };
                self.events
                    .record(involved, EventType::Normal, reason, &message)
                    .await;
            }
            results.iter().any(|ok| !ok)
        })
    }
}

/// Whether a write did what the controller wanted; logs when not.
fn written(out: Outcome, delete: bool) -> bool {
    match out {
        Outcome::Written(_) => true,
        // Already gone: what the delete wanted.
        Outcome::NotFound if delete => true,
        other => {
            tracing::debug!(outcome = ?other, "service controller write failed");
            false
        }
    }
}

impl ServicePass {
    fn reconcile(
        &self,
        inf: &Informer,
        name: &str,
        replicas: &[&Object],
        actions: &mut Vec<Action>,
        summaries: &mut Vec<(String, &'static str, String)>,
    ) {
        let svc = inf.get(Kind::Service, name);
        let spec = svc.and_then(|s| match s.spec_as::<ServiceSpec>() {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::warn!(service = name, error = %e, "invalid service spec");
                None
            }
        });
        let (Some(svc), Some(spec)) = (svc, spec) else {
            if svc.is_none() && !replicas.is_empty() {
                tracing::info!(
                    service = name,
                    count = replicas.len(),
                    "deleting replicas of a deleted service"
                );
                actions.extend(replicas.iter().map(|r| Action::Delete((*r).clone())));
            }
            return;
        };
        let hash = template_hash(&spec.template);
        let views: Vec<ReplicaView> = replicas
            .iter()
            .filter_map(|r| {
                let rs: ReplicaSpec = r.spec_as().ok()?;
                let st: ReplicaStatus = r.status_as().unwrap_or_default();
                Some(ReplicaView {
                    name: r.metadata.name.clone(),
                    hash: rs.template_hash,
                    phase: st.phase,
                    ready: st.ready,
                    bound: rs.node_name.is_some(),
                    created: r.metadata.creation_timestamp.clone().unwrap_or_default(),
                    restart_policy: rs.template.restart_policy,
                })
            })
            .collect();
        let plan = plan(&spec, &hash, &views);
        for _ in 0..plan.create {
            let mut obj = Object::new(Kind::Replica, replica_name(name));
            obj.metadata
                .labels
                .insert(LABEL_SERVICE.to_string(), name.to_string());
            obj.set_spec(&ReplicaSpec {
                service: name.to_string(),
                node_name: None,
                template: spec.template.clone(),
                template_hash: hash.clone(),
                node_selector: spec.node_selector.clone(),
            });
            actions.push(Action::Create(obj));
        }
        for victim in &plan.delete {
            if let Some(r) = replicas.iter().find(|r| &r.metadata.name == victim) {
                actions.push(Action::Delete((*r).clone()));
            }
        }
        if plan.create > 0 {
            summaries.push((
                name.to_string(),
                "ScaledUp",
                format!("created {} replicas", plan.create),
            ));
        }
        if !plan.delete.is_empty() {
            summaries.push((
                name.to_string(),
                "ScaledDown",
                format!("deleted {} replicas", plan.delete.len()),
            ));
        }
        let current: ServiceStatus = svc.status_as().unwrap_or_default();
        // The network controller owns the address fields: carry them over, so this write
        // (a compare-and-swap on the version they were read at) never wipes them.
        let status = ServiceStatus {
            cluster_ip: current.cluster_ip.clone(),
            network_error: current.network_error.clone(),
            ..plan.status
        };
        if current != status {
            let mut obj = svc.clone();
            obj.set_status(&status);
            actions.push(Action::Status(obj));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::model::IntOrPercent;

    fn spec(replicas: u32, surge: u32, unavailable: u32) -> ServiceSpec {
        let mut s: ServiceSpec =
            serde_json::from_value(serde_json::json!({"template": {"image": "a"}})).unwrap();
        s.replicas = replicas;
        s.strategy.max_surge = IntOrPercent::Int(surge);
        s.strategy.max_unavailable = IntOrPercent::Int(unavailable);
        s
    }

    fn view(name: &str, hash: &str, ready: bool, bound: bool, created: &str) -> ReplicaView {
        ReplicaView {
            name: name.into(),
            hash: hash.into(),
            phase: if ready {
                Phase::Running
            } else {
                Phase::Pending
            },
            ready,
            bound,
            created: created.into(),
            restart_policy: RestartPolicy::Always,
        }
    }

    #[test]
    fn hashes_are_stable_and_names_valid() {
        let t = ContainerTemplate {
            image: "a".into(),
            ..ContainerTemplate::default()
        };
        assert_eq!(template_hash(&t), template_hash(&t.clone()));
        assert_eq!(template_hash(&t).len(), 10);
        let n = replica_name("web");
        assert!(n.starts_with("web-") && n.len() == 9, "{n}");
        gantry_api::objects::validate_name(&replica_name(&"x".repeat(63))).unwrap();
    }

    #[test]
    fn scale_down_removes_not_ready_then_unscheduled_then_newest() {
        let rs = vec![
            view("a", "h", true, true, "1"),
            view("b", "h", true, true, "3"),
            view("c", "h", false, true, "0"),
            view("d", "h", false, false, "0"),
            view("e", "h", true, true, "2"),
        ];
        assert_eq!(plan(&spec(3, 1, 0), "h", &rs).delete, ["d", "c"]);
        assert_eq!(plan(&spec(1, 1, 0), "h", &rs).delete, ["d", "c", "b", "e"]);
        let p = plan(&spec(7, 1, 0), "h", &rs);
        assert_eq!(
            (p.create, p.status.ready_replicas, p.status.replicas),
            (2, 3, 5)
        );
    }

    #[test]
    fn rolling_update_respects_surge_and_unavailability() {
        let old: Vec<ReplicaView> = (0..4)
            .map(|i| view(&format!("o{i}"), "old", true, true, "1"))
            .collect();
        // Surge 1, unavailable 0: one new replica, no old one deleted yet.
        let p = plan(&spec(4, 1, 0), "new", &old);
        assert_eq!((p.create, p.delete.len()), (1, 0));
        // Once the new one is ready, one old one goes.
        let mut rs = old.clone();
        rs.push(view("n0", "new", true, true, "2"));
        let p = plan(&spec(4, 1, 0), "new", &rs);
        assert_eq!((p.create, p.delete.len()), (0, 1));
        // Surge 0, unavailable 1: one old one goes first, nothing is created beyond 4.
        let p = plan(&spec(4, 0, 1), "new", &old);
        assert_eq!((p.create, p.delete.len()), (0, 1));
        // Not-ready old replicas go at once.
        let mut rs = old;
        rs[0].ready = false;
        let p = plan(&spec(4, 1, 0), "new", &rs);
        assert_eq!(p.delete, ["o0"]);
    }

    #[test]
    fn finished_replicas_count_unless_restart_always() {
        let mut done = view("a", "h", false, true, "1");
        done.phase = Phase::Succeeded;
        done.restart_policy = RestartPolicy::Never;
        let p = plan(&spec(1, 1, 0), "h", &[done.clone()]);
        assert_eq!((p.create, p.delete.len(), p.status.replicas), (0, 0, 0));
        done.restart_policy = RestartPolicy::Always;
        let p = plan(&spec(1, 1, 0), "h", &[done]);
        assert_eq!((p.create, p.delete.len()), (1, 1));
    }
}
