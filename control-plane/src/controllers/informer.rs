//! [`Informer`]: a controller's in-memory copy of the objects of some kinds, kept current
//! from the local store's watch.
//!
//! Invariants: after [`Informer::drain`] returns, the copy reflects every change applied to
//! the local store before the call (writes this member proposed and saw committed included:
//! the state machine publishes a change before `client_write` answers). When the watch falls
//! behind (ring overflow, compaction, snapshot install) the informer lists again and reports
//! `relisted`, so callers treat everything as dirty.

use super::writer::parse;
use crate::store::{ChangeType, ObjectStore, WatchItem};
use gantry_api::objects::{Kind, Object};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::broadcast;

/// What changed since the last call.
#[derive(Debug, Default)]
pub struct Changes {
    /// The informer listed again: everything may have changed.
    pub relisted: bool,
    /// Changed objects: kind, name and the previous state (`None` when it was added).
    pub touched: Vec<(Kind, String, Option<Object>)>,
}

impl Changes {
    fn merge(&mut self, other: Changes) {
        self.relisted |= other.relisted;
        self.touched.extend(other.touched);
    }
}

/// An in-memory, watch-fed copy of the objects of some kinds.
pub struct Informer {
    store: ObjectStore,
    kinds: Vec<Kind>,
    objects: HashMap<Kind, BTreeMap<String, Object>>,
    rx: Option<broadcast::Receiver<WatchItem>>,
    seen: u64,
}

impl Informer {
    /// An informer of `kinds`; empty until [`Informer::relist`].
    pub fn new(store: ObjectStore, kinds: &[Kind]) -> Self {
        Informer {
            store,
            kinds: kinds.to_vec(),
            objects: kinds.iter().map(|k| (*k, BTreeMap::new())).collect(),
            rx: None,
            seen: 0,
        }
    }

    /// The objects of `kind`, by name.
    pub fn all(&self, kind: Kind) -> &BTreeMap<String, Object> {
        static EMPTY: BTreeMap<String, Object> = BTreeMap::new();
        self.objects.get(&kind).unwrap_or(&EMPTY)
    }

    /// One object.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Object> {
        self.objects.get(&kind)?.get(name)
    }

    /// Lists every kind again and restarts the watch.
    pub fn relist(&mut self) -> Result<(), String> {
        let from = self.store.revision();
        let (history, rx) = self.store.watch(from).map_err(|e| e.to_string())?;
        for kind in self.kinds.clone() {
            let (items, _) = self.store.list(kind.as_str()).map_err(|e| e.to_string())?;
            let map = items
                .iter()
                .filter_map(|s| parse(s).map(|o| (s.name.clone(), o)))
                .collect();
            self.objects.insert(kind, map);
        }
        self.seen = from;
        self.rx = Some(rx);
        for change in history {
            self.apply(
                &change.object.kind,
                change.change,
                &change.object,
                change.revision,
            );
        }
        Ok(())
    }

    /// Applies one change; answers what it touched, if it concerns our kinds and is news.
    fn apply(
        &mut self,
        kind: &str,
        change: ChangeType,
        stored: &crate::types::StoredObject,
        revision: u64,
    ) -> Option<(Kind, String, Option<Object>)> {
        // The list may be newer than the history and the live feed repeats history items:
        // the version checks below make a replay harmless.
        self.seen = self.seen.max(revision);
        let kind: Kind = kind.parse().ok()?;
        let map = self.objects.get_mut(&kind)?;
        let current = map.get(&stored.name).map(|o| o.resource_version());
        match change {
            ChangeType::Deleted => {
                if current.is_some_and(|rv| rv > revision) {
                    return None;
                }
                let old = map.remove(&stored.name)?;
                Some((kind, stored.name.clone(), Some(old)))
            }
            ChangeType::Added | ChangeType::Modified => {
                if current.is_some_and(|rv| rv >= revision) {
                    return None;
                }
                let obj = parse(stored)?;
                let old = map.insert(stored.name.clone(), obj);
                Some((kind, stored.name.clone(), old))
            }
        }
    }

    fn handle(
        &mut self,
        item: Result<WatchItem, broadcast::error::TryRecvError>,
    ) -> Option<Changes> {
        use broadcast::error::TryRecvError;
        let mut out = Changes::default();
        match item {
            Ok(WatchItem::Change(c)) => {
                // Live items up to `seen` were already applied from the history.
                if c.revision > self.seen {
                    if let Some(t) = self.apply(&c.object.kind, c.change, &c.object, c.revision) {
                        out.touched.push(t);
                    }
                }
            }
            Ok(WatchItem::Reset) | Err(TryRecvError::Lagged(_)) | Err(TryRecvError::Closed) => {
                self.rx = None;
                out.relisted = true;
                if let Err(e) = self.relist() {
                    tracing::warn!(error = %e, "informer relist failed");
                }
            }
            Err(TryRecvError::Empty) => return None,
        }
        Some(out)
    }

    /// Applies every change already published, without waiting.
    pub fn drain(&mut self) -> Changes {
        let mut out = Changes::default();
        loop {
            let Some(rx) = self.rx.as_mut() else {
                out.relisted = true;
                if let Err(e) = self.relist() {
                    tracing::warn!(error = %e, "informer relist failed");
                    return out;
                }
                continue;
            };
            let item = rx.try_recv();
            match self.handle(item) {
                Some(c) => out.merge(c),
                None => return out,
            }
        }
    }

    /// Waits for at least one change (of any kind), applies it and everything else already
    /// published. Cancel-safe.
    pub async fn next(&mut self) -> Changes {
        use broadcast::error::{RecvError, TryRecvError};
        let first = match self.rx.as_mut() {
            None => Err(TryRecvError::Closed),
            Some(rx) => match rx.recv().await {
                Ok(item) => Ok(item),
                Err(RecvError::Lagged(n)) => Err(TryRecvError::Lagged(n)),
                Err(RecvError::Closed) => Err(TryRecvError::Closed),
            },
        };
        let mut out = self.handle(first).unwrap_or_default();
        out.merge(self.drain());
        out
    }
}
