//! Status write-back: the reconciler hands over the status it computed for a replica; this
//! task writes it with compare-and-swap (re-reading and retrying on conflict), batching what
//! piles up meanwhile, skipping statuses already stored, and keeping failed ones until the
//! control plane answers again (only the latest status per replica is kept).

use gantry_api::client::{Client, ClientError};
use gantry_api::model::{ReplicaSpec, ReplicaStatus};
use gantry_api::objects::Kind;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The sending side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct StatusWriter {
    tx: mpsc::UnboundedSender<(String, ReplicaStatus)>,
}

impl StatusWriter {
    /// Queues `status` for replica `name`, replacing any status still queued for it.
    pub fn send(&self, name: &str, status: ReplicaStatus) {
        let _ = self.tx.send((name.to_string(), status));
    }
}

/// Starts the writer task for node `node`; returns its handle and the task's future.
pub fn status_writer(
    node: String,
    client: Client,
    shutdown: CancellationToken,
) -> (StatusWriter, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (StatusWriter { tx }, run(node, client, rx, shutdown))
}

async fn run(
    node: String,
    mut client: Client,
    mut rx: mpsc::UnboundedReceiver<(String, ReplicaStatus)>,
    shutdown: CancellationToken,
) {
    let mut pending: BTreeMap<String, ReplicaStatus> = BTreeMap::new();
    let mut pause = Duration::from_millis(200);
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                item = rx.recv() => match item {
                    Some((name, status)) => { pending.insert(name, status); }
                    None => return,
                },
            }
            // Let a burst of changes (one reconcile pass) gather into one batch.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while let Ok((name, status)) = rx.try_recv() {
            pending.insert(name, status);
        }
        let mut failed = false;
        let names: Vec<String> = pending.keys().cloned().collect();
        for name in names {
            let Some(status) = pending.get(&name).cloned() else {
                continue;
            };
            match write(&node, &mut client, &name, &status).await {
                Ok(()) => {
                    pending.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(replica = %name, error = %e, "status write failed; will retry");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        } else {
            pause = Duration::from_millis(200);
        }
    }
}

async fn write(
    node: &str,
    client: &mut Client,
    name: &str,
    status: &ReplicaStatus,
) -> Result<(), ClientError> {
    for _ in 0..5 {
        let Some(mut obj) = client.get(Kind::Replica, name).await? else {
            return Ok(()); // deleted meanwhile: nothing to report on
        };
        let bound = obj
            .spec_as::<ReplicaSpec>()
            .is_ok_and(|s| s.node_name.as_deref() == Some(node));
        if !bound {
            return Ok(());
        }
        let current: ReplicaStatus = obj.status_as().unwrap_or_default();
        if &current == status {
            return Ok(());
        }
        obj.set_status(status);
        match client.update(&obj).await {
            Ok(_) => {
                tracing::debug!(replica = %name, phase = status.phase.as_str(), ready = status.ready, "status written");
                return Ok(());
            }
            Err(ClientError::Conflict(_)) => continue,
            Err(ClientError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Conflict(format!(
        "replica {name} kept changing"
    )))
}
