//! Events about replicas (`Started`, `Killing`, `BackOff`, `Unhealthy`…), written as Event
//! objects in the background. Repeats of the same (replica, reason, message) are folded into
//! one event (`count` grows) and bursts are coalesced before writing, so a crash loop or a
//! failing probe never floods the store. Events are best effort: when the control plane is
//! unreachable they are dropped, never queued without bound.

use gantry_api::client::{Client, ClientError};
use gantry_api::events;
use gantry_api::model::{EventSpec, EventType, ObjectRef};
use gantry_api::objects::Kind;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting to be written, at most.
const QUEUE: usize = 1024;

type Key = (String, String, String);

/// Records events; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(Key, EventType)>,
}

impl Recorder {
    /// Records an event about replica `replica`.
    pub fn replica(&self, replica: &str, event_type: EventType, reason: &str, message: &str) {
        let key = (replica.to_string(), reason.to_string(), message.to_string());
        if self.tx.try_send((key, event_type)).is_err() {
            tracing::debug!(replica, reason, "event queue full; event dropped");
        }
    }

    /// A recorder whose events go nowhere (tests, or before the control plane is known).
    pub fn discard() -> Self {
        let (tx, _rx) = mpsc::channel(1);
        Recorder { tx }
    }
}

/// Starts the recorder for `source` (`agent/<node>`); returns it and the writer task.
pub fn recorder(
    source: String,
    client: Client,
    shutdown: CancellationToken,
) -> (Recorder, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Recorder { tx }, run(source, client, rx, shutdown))
}

async fn run(
    source: String,
    mut client: Client,
    mut rx: mpsc::Receiver<(Key, EventType)>,
    shutdown: CancellationToken,
) {
    // The event object last written for each key, to fold repeats into.
    let mut written: HashMap<Key, String> = HashMap::new();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = rx.recv() => match item { Some(i) => i, None => return },
        };
        let mut batch: Vec<(Key, EventType, u32)> = vec![(first.0, first.1, 1)];
        while let Ok((key, t)) = rx.try_recv() {
            match batch.iter_mut().find(|(k, _, _)| *k == key) {
                Some(entry) => entry.2 += 1,
                None => batch.push((key, t, 1)),
            }
        }
        for (key, event_type, count) in batch {
            if let Err(e) = write(&source, &mut client, &mut written, &key, event_type, count).await
            {
                tracing::debug!(replica = %key.0, reason = %key.1, error = %e, "event not written");
            }
        }
    }
}

async fn write(
    source: &str,
    client: &mut Client,
    written: &mut HashMap<Key, String>,
    key: &Key,
    event_type: EventType,
    count: u32,
) -> Result<(), ClientError> {
    let now = events::now_rfc3339_millis();
    if let Some(name) = written.get(key) {
        if let Some(mut obj) = client.get(Kind::Event, name).await? {
            if let Ok(mut spec) = obj.spec_as::<EventSpec>() {
                if events::within_fold_window(&spec, events::now_secs()) {
                    for _ in 0..count {
                        events::fold(&mut spec, &now);
                    }
                    obj.set_spec(&spec);
                    match client.update(&obj).await {
                        Ok(_) => return Ok(()),
                        Err(ClientError::Conflict(_)) => {} // someone else touched it: start anew
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    let involved = ObjectRef {
        kind: Kind::Replica.to_string(),
        name: key.0.clone(),
    };
    let mut spec = events::new_spec(involved, event_type, &key.1, &key.2, source, &now);
    spec.count = count;
    let name = events::event_name(&key.0);
    client.create(&events::to_object(&name, &spec)).await?;
    written.insert(key.clone(), name);
    Ok(())
}
