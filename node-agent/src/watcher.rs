//! The replicas bound to this node, as the control plane says: a list, then a watch resumed
//! from the last revision seen; a re-list when the revision expired; reconnection to any
//! member with back-off when the connection is lost.
//!
//! Invariant: [`Desired::synced`] becomes true only after a complete list, so the reconciler
//! never removes a container because it has not heard of its replica yet.

use crate::informer::{list_watch, Mirror};
use gantry_api::client::{Client, ClientError};
use gantry_api::model::ReplicaSpec;
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::EventType;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the control plane wants on this node.
#[derive(Debug, Default, Clone)]
pub struct Desired {
    /// Replicas bound to this node, by name, as last seen.
    pub replicas: BTreeMap<String, Object>,
    /// A complete list has been received at least once.
    pub synced: bool,
}

/// The desired state shared between the watcher (writer) and the reconciler (reader).
pub type SharedDesired = Arc<Mutex<Desired>>;

fn bound_here(obj: &Object, node: &str) -> bool {
    obj.spec_as::<ReplicaSpec>()
        .is_ok_and(|s| s.node_name.as_deref() == Some(node))
}

/// Keeps `desired` equal to the replicas bound to `node` until `shutdown`, waking the
/// reconciler through `wake` on every change.
pub async fn watch_replicas(
    node: String,
    mut client: Client,
    desired: SharedDesired,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut mirror = BoundHere { node, desired };
    list_watch(Kind::Replica, &mut client, &mut mirror, &wake, &shutdown).await;
}

/// The replicas of the whole cluster as seen through a filter: those bound to `node`.
struct BoundHere {
    node: String,
    desired: SharedDesired,
}

impl Mirror for BoundHere {
    fn listed(&mut self, items: Vec<Object>, revision: u64) {
        let node = &self.node;
        let mut d = lock(&self.desired);
        d.replicas = items
            .into_iter()
            .filter(|o| bound_here(o, node))
            .map(|o| (o.metadata.name.clone(), o))
            .collect();
        d.synced = true;
        tracing::debug!(node = %node, replicas = d.replicas.len(), revision, "replicas listed");
    }

    fn changed(&mut self, change: EventType, object: Object) -> bool {
        let name = object.metadata.name.clone();
        let mut d = lock(&self.desired);
        let here = change != EventType::Deleted && bound_here(&object, &self.node);
        if here {
            d.replicas.insert(name, object);
            true
        } else {
            d.replicas.remove(&name).is_some()
        }
    }

    fn lost(&self, error: &ClientError) {
        tracing::warn!(node = %self.node, error = %error, "replica watch lost; retrying");
    }

    fn restored(&self) {
        tracing::info!(node = %self.node, "replica watch restored");
    }
}

/// Locks the shared state; a poisoned lock (a panicking holder) still holds consistent data
/// because every writer replaces whole entries.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
