//! [`Cluster`]: every Service and every Replica as the control plane says, kept by a list
//! then a watch resumed from the last revision seen (as [`crate::watcher`] does for this
//! node's replicas): a re-list when the revision expired, reconnection with back-off.
//!
//! Invariant: [`Cluster::synced`] becomes true only after both kinds were listed completely,
//! so the data path is never rebuilt from a partial picture (which would drop the rules of
//! services not heard of yet, e.g. right after an agent restart).

use super::endpoints::{ReplicaEntry, ServiceEntry};
use crate::informer::{list_watch, Mirror};
use crate::watcher::lock;
use gantry_api::client::{Client, ClientError};
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::EventType;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The services and replicas of the whole cluster, as last seen.
#[derive(Debug, Default)]
pub struct Cluster {
    /// Services by name.
    pub services: BTreeMap<String, ServiceEntry>,
    /// Replicas by name.
    pub replicas: BTreeMap<String, ReplicaEntry>,
    services_listed: bool,
    replicas_listed: bool,
    /// When the first change not yet in the kernel was seen (for the sync latency).
    pub dirty_since: Option<Instant>,
}

impl Cluster {
    /// Both kinds were listed completely at least once.
    pub fn synced(&self) -> bool {
        self.services_listed && self.replicas_listed
    }

    fn mark_dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// Replaces every object of `kind` with a fresh list.
    pub fn replace(&mut self, kind: Kind, items: &[Object]) {
        match kind {
            Kind::Service => {
                self.services = items
                    .iter()
                    .filter_map(|o| Some((o.metadata.name.clone(), ServiceEntry::from_object(o)?)))
                    .collect();
                self.services_listed = true;
            }
            Kind::Replica => {
                self.replicas = items
                    .iter()
                    .filter_map(|o| Some((o.metadata.name.clone(), ReplicaEntry::from_object(o)?)))
                    .collect();
                self.replicas_listed = true;
            }
            _ => return,
        }
        self.mark_dirty();
    }

    /// Applies one watched change; returns whether anything the proxy uses changed.
    pub fn apply(&mut self, change: EventType, obj: &Object) -> bool {
        let name = &obj.metadata.name;
        let changed = match obj.kind {
            Kind::Service => {
                let entry = (change != EventType::Deleted)
                    .then(|| ServiceEntry::from_object(obj))
                    .flatten();
                upsert(&mut self.services, name, entry)
            }
            Kind::Replica => {
                let entry = (change != EventType::Deleted)
                    .then(|| ReplicaEntry::from_object(obj))
                    .flatten();
                upsert(&mut self.replicas, name, entry)
            }
            _ => false,
        };
        if changed {
            self.mark_dirty();
        }
        changed
    }
}

fn upsert<T: PartialEq>(map: &mut BTreeMap<String, T>, name: &str, entry: Option<T>) -> bool {
    match entry {
        Some(e) => {
            if map.get(name) == Some(&e) {
                return false;
            }
            map.insert(name.to_string(), e);
            true
        }
        None => map.remove(name).is_some(),
    }
}

/// Keeps the `kind` part of `cluster` equal to the control plane's until `shutdown`, waking
/// the sync loop through `wake` on every change.
pub async fn watch_kind(
    kind: Kind,
    mut client: Client,
    cluster: Arc<Mutex<Cluster>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut mirror = KindOf { kind, cluster };
    list_watch(kind, &mut client, &mut mirror, &wake, &shutdown).await;
}

/// The `kind` part of a shared [`Cluster`].
struct KindOf {
    kind: Kind,
    cluster: Arc<Mutex<Cluster>>,
}

impl Mirror for KindOf {
    fn listed(&mut self, items: Vec<Object>, revision: u64) {
        let kind = self.kind;
        lock(&self.cluster).replace(kind, &items);
        tracing::debug!(kind = %kind, objects = items.len(), revision, "proxy listed");
    }

    fn changed(&mut self, change: EventType, object: Object) -> bool {
        lock(&self.cluster).apply(change, &object)
    }

    fn lost(&self, error: &ClientError) {
        tracing::warn!(kind = %self.kind, error = %error, "proxy watch lost; retrying");
    }

    fn restored(&self) {
        tracing::info!(kind = %self.kind, "proxy watch restored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, ready: bool) -> Object {
        let mut o = Object::new(Kind::Replica, name);
        o.spec = serde_json::json!({"service": "web", "template": {"image": "i"}});
        o.status =
            serde_json::json!({"phase": "Running", "ready": ready, "replicaIp": "10.214.3.2"});
        o
    }

    #[test]
    fn synced_only_after_both_kinds_are_listed() {
        let mut c = Cluster::default();
        assert!(!c.synced());
        c.replace(Kind::Replica, &[replica("a", true)]);
        assert!(!c.synced(), "services not listed yet");
        c.replace(Kind::Service, &[]);
        assert!(c.synced());
    }

    #[test]
    fn changes_report_whether_they_matter() {
        let mut c = Cluster::default();
        assert!(c.apply(EventType::Added, &replica("a", true)));
        let first_dirty = c.dirty_since;
        assert!(first_dirty.is_some());
        assert!(
            !c.apply(EventType::Modified, &replica("a", true)),
            "same content"
        );
        assert!(c.apply(EventType::Modified, &replica("a", false)));
        assert_eq!(
            c.dirty_since, first_dirty,
            "the oldest unsynced change is kept"
        );
        assert!(c.apply(EventType::Deleted, &replica("a", false)));
        assert!(
            !c.apply(EventType::Deleted, &replica("a", false)),
            "already gone"
        );
        assert!(c.replicas.is_empty());
    }
}
