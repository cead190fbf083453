//! The replicas bound to this node, as the control plane says: a list, then a watch resumed
//! from the last revision seen; a re-list when the revision expired; reconnection to any
//! member with back-off when the connection is lost.
//!
//! Invariant: [`Desired::synced`] becomes true only after a complete list, so the reconciler
//! never removes a container because it has not heard of its replica yet.

use gantry_api::client::{Client, ClientError};
use gantry_api::model::ReplicaSpec;
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::EventType;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    let mut pause = Duration::from_millis(100);
    let mut healthy = true;
    let fail = |e: &ClientError, healthy: &mut bool| {
        if *healthy {
            tracing::warn!(node = %node, error = %e, "replica watch lost; retrying");
        }
        *healthy = false;
    };
    'relist: loop {
        if shutdown.is_cancelled() {
            return;
        }
        let (items, mut revision) = match client.list(Kind::Replica).await {
            Ok(r) => r,
            Err(e) => {
                fail(&e, &mut healthy);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue 'relist;
            }
        };
        {
            let mut d = lock(&desired);
            d.replicas = items
                .into_iter()
                .filter(|o| bound_here(o, &node))
                .map(|o| (o.metadata.name.clone(), o))
                .collect();
            d.synced = true;
            tracing::debug!(node = %node, replicas = d.replicas.len(), revision, "replicas listed");
        }
        if !healthy {
            tracing::info!(node = %node, "replica watch restored");
        }
        healthy = true;
        pause = Duration::from_millis(100);
        wake.notify_one();
        loop {
            let mut watch = match client.watch(Kind::Replica, revision).await {
                Ok(w) => w,
                Err(ClientError::Expired(_)) => continue 'relist,
                Err(e) => {
                    fail(&e, &mut healthy);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    // A long outage may have compacted our revision; listing is always safe.
                    continue 'relist;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = watch.next() => n,
                };
                match next {
                    Ok(Some(change)) => {
                        revision = revision.max(change.revision);
                        let name = change.object.metadata.name.clone();
                        let mut d = lock(&desired);
                        let here = change.change != EventType::Deleted
                            && bound_here(&change.object, &node);
                        let changed = if here {
                            d.replicas.insert(name, change.object);
                            true
                        } else {
                            d.replicas.remove(&name).is_some()
                        };
                        drop(d);
                        if changed {
                            wake.notify_one();
                        }
                    }
                    Ok(None) => break,
                    Err(ClientError::Expired(_)) => continue 'relist,
                    Err(e) => {
                        fail(&e, &mut healthy);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                        break;
                    }
                }
            }
        }
    }
}

/// Locks the shared state; a poisoned lock (a panicking holder) still holds consistent data
/// because every writer replaces whole entries.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
