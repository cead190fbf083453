//! [`EventRecorder`]: how controllers record Events, folding repeats; and [`EventGc`], the
//! leader task that keeps the number and age of events bounded.
//!
//! Invariants: a repeat of the same (object, reason, message) within
//! [`gantry_api::events::FOLD_WINDOW_SECS`] updates the existing event (compare-and-swap) instead
//! of creating another; events whose last occurrence is older than the TTL are deleted, and
//! at most `max_events` are kept (oldest deleted first). Recording never fails its caller:
//! an event that cannot be written is logged and dropped.

use super::writer::{parse, Outcome, Writer};
use super::ControllerConfig;
use crate::server::{LeaderContext, LeaderTask};
use crate::store::ObjectStore;
use futures::future::BoxFuture;
use gantry_api::events as ev;
use gantry_api::model::{EventSpec, EventType, ObjectRef};
use gantry_api::objects::{Kind, Object};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Key = (ObjectRef, String, String);

/// Records events for one source (`scheduler`, `service-controller`, …).
pub struct EventRecorder {
    writer: Writer,
    store: ObjectStore,
    source: String,
    /// (object, reason, message) → name of the event that folds its repeats; built from the
    /// store on first use so a new leader keeps folding into its predecessor's events.
    index: Mutex<Option<HashMap<Key, String>>>,
}

impl EventRecorder {
    /// A recorder writing through `writer` as `source`.
    pub fn new(writer: Writer, store: ObjectStore, source: &str) -> Self {
        EventRecorder {
            writer,
            store,
            source: source.to_string(),
            index: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<Key, String>>> {
        match self.index.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn lookup(&self, key: &Key) -> Option<String> {
        let mut guard = self.lock();
        let index = guard.get_or_insert_with(|| {
            let mut map = HashMap::new();
            if let Ok((items, _)) = self.store.list(Kind::Event.as_str()) {
                for spec in items
                    .iter()
                    .filter_map(parse)
                    .filter_map(|o| o.spec_as::<EventSpec>().ok().map(|s| (o, s)))
                {
                    let (o, s) = spec;
                    map.insert(
                        (
                            s.involved_object.clone(),
                            s.reason.clone(),
                            s.message.clone(),
                        ),
                        o.metadata.name,
                    );
                }
            }
            map
        });
        index.get(key).cloned()
    }

    /// Records one occurrence.
    pub async fn record(&self, involved: ObjectRef, kind: EventType, reason: &str, message: &str) {
        let key: Key = (involved.clone(), reason.to_string(), message.to_string());
        let now = ev::now_rfc3339_millis();
        for _ in 0..3 {
            if let Some(name) = self.lookup(&key) {
                let existing = self
                    .store
                    .get(Kind::Event.as_str(), &name)
                    .ok()
                    .flatten()
                    .and_then(|s| parse(&s));
                if let Some(mut obj) = existing {
                    if let Ok(mut spec) = obj.spec_as::<EventSpec>() {
                        if ev::same_event(&spec, &new_key_spec(&key))
                            && ev::within_fold_window(&spec, ev::now_secs())
                        {
                            ev::fold(&mut spec, &now);
                            obj.set_spec(&spec);
                            match self.writer.update(&obj).await {
                                Outcome::Written(_) => return,
                                Outcome::Conflict => continue,
                                Outcome::NotFound => {}
                                Outcome::Failed(e) => {
                                    tracing::debug!(error = %e, "event not recorded");
                                    return;
                                }
                            }
                        }
                    }
                }
            }
            let spec = ev::new_spec(involved.clone(), kind, reason, message, &self.source, &now);
            let name = ev::event_name(&involved.name);
            let obj: Object = ev::to_object(&name, &spec);
            match self.writer.create(&obj).await {
                Outcome::Written(_) => {
                    if let Some(index) = self.lock().as_mut() {
                        index.insert(key, name);
                    }
                    return;
                }
                Outcome::Conflict => continue,
                Outcome::NotFound | Outcome::Failed(_) => return,
            }
        }
    }
}

fn new_key_spec(key: &Key) -> EventSpec {
    EventSpec {
        involved_object: key.0.clone(),
        reason: key.1.clone(),
        message: key.2.clone(),
        ..EventSpec::default()
    }
}

/// The leader task deleting old events.
pub struct EventGc {
    cfg: ControllerConfig,
}

impl EventGc {
    /// A collector with `cfg.event_ttl`, `cfg.max_events` and `cfg.event_gc_interval`.
    pub fn new(cfg: ControllerConfig) -> Self {
        EventGc { cfg }
    }
}

/// Which events to delete: older than `ttl_secs` at `now_secs`, then the oldest beyond `max`.
pub fn events_to_delete(
    events: &[Object],
    now_secs: u64,
    ttl_secs: u64,
    max: usize,
) -> Vec<Object> {
    let mut dated: Vec<(u64, &Object)> = events
        .iter()
        .map(|o| {
            let last = o
                .spec_as::<EventSpec>()
                .ok()
                .and_then(|s| ev::parse_rfc3339(&s.last_timestamp))
                .unwrap_or(0);
            (last, o)
        })
        .collect();
    dated.sort_by_key(|(t, o)| (*t, o.metadata.name.clone()));
    let expired = dated
        .iter()
        .filter(|(t, _)| now_secs.saturating_sub(*t) > ttl_secs)
        .count();
    let over = dated.len().saturating_sub(max);
    dated
        .into_iter()
        .take(expired.max(over))
        .map(|(_, o)| o.clone())
        .collect()
}

impl LeaderTask for EventGc {
    fn name(&self) -> &str {
        "event-gc"
    }

    fn run(&self, ctx: LeaderContext, stop: CancellationToken) -> BoxFuture<'static, ()> {
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let writer = Writer::new(ctx.raft.clone(), cfg.write_timeout);
            loop {
                let events: Vec<Object> = match ctx.store.list(Kind::Event.as_str()) {
                    Ok((items, _)) => items.iter().filter_map(parse).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "event gc: list failed");
                        Vec::new()
                    }
                };
                let doomed = events_to_delete(
                    &events,
                    ev::now_secs(),
                    cfg.event_ttl.as_secs(),
                    cfg.max_events,
                );
                if !doomed.is_empty() {
                    tracing::debug!(count = doomed.len(), "deleting old events");
                }
                for obj in doomed {
                    if stop.is_cancelled() {
                        return;
                    }
                    let _ = writer.delete(&obj).await;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(cfg.event_gc_interval.max(Duration::from_millis(100))) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, last: u64) -> Object {
        let spec = ev::new_spec(
            ObjectRef::default(),
            EventType::Normal,
            "R",
            name,
            "t",
            &ev::format_rfc3339(last),
        );
        ev::to_object(name, &spec)
    }

    #[test]
    fn gc_deletes_expired_then_oldest_beyond_the_cap() {
        let events = vec![
            event("a", 100),
            event("b", 5000),
            event("c", 4000),
            event("d", 10),
        ];
        let names = |v: Vec<Object>| v.into_iter().map(|o| o.metadata.name).collect::<Vec<_>>();
        assert_eq!(names(events_to_delete(&events, 5000, 3600, 10)), ["d", "a"]);
        assert_eq!(
            names(events_to_delete(&events, 5000, 36000, 1)),
            ["d", "a", "c"]
        );
        assert!(events_to_delete(&events, 5000, 36000, 10).is_empty());
    }
}
