//! [`list_watch`]: one kind of object kept current from the control plane by a list, then a
//! watch resumed from the last revision seen; a re-list when the revision expired or the
//! connection was lost; reconnection with back-off (100 ms doubling up to 5 s).
//!
//! Invariant: a [`Mirror`] hears [`Mirror::listed`] only with a complete list, and every
//! change after it in revision order, so what it holds is never a partial picture.

use gantry_api::client::{Client, ClientError};
use gantry_api::objects::{Kind, Object};
use gantry_api::proto::EventType;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a [`list_watch`] loop keeps up to date, and how it reports on the connection.
pub trait Mirror {
    /// Replaces everything with `items`, a complete list at `revision`.
    fn listed(&mut self, items: Vec<Object>, revision: u64);
    /// Applies one watched change; answers whether anything the reader uses changed.
    fn changed(&mut self, change: EventType, object: Object) -> bool;
    /// The list or watch failed with `error` while it was healthy.
    fn lost(&self, error: &ClientError);
    /// A list succeeded after a failure.
    fn restored(&self);
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Keeps `mirror` equal to the control plane's objects of `kind` until `shutdown`, waking the
/// reader through `wake` after every list and every change that [`Mirror::changed`] reports.
pub async fn list_watch(
    kind: Kind,
    client: &mut Client,
    mirror: &mut impl Mirror,
    wake: &Notify,
    shutdown: &CancellationToken,
) {
    let mut retry = Retry {
        pause: FIRST_PAUSE,
        healthy: true,
    };
    'relist: loop {
        if shutdown.is_cancelled() {
            return;
        }
        let (items, mut revision) = match client.list(kind).await {
            Ok(r) => r,
            Err(e) => {
                if retry.after(&e, mirror, shutdown).await {
                    return;
                }
                continue 'relist;
            }
        };
        mirror.listed(items, revision);
        retry.succeeded(mirror);
        wake.notify_one();
        loop {
            let mut watch = match client.watch(kind, revision).await {
                Ok(w) => w,
                Err(ClientError::Expired(_)) => continue 'relist,
                Err(e) => {
                    if retry.after(&e, mirror, shutdown).await {
                        return;
                    }
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
                        if mirror.changed(change.change, change.object) {
                            wake.notify_one();
                        }
                    }
                    Ok(None) => break,
                    Err(ClientError::Expired(_)) => continue 'relist,
                    Err(e) => {
                        if retry.after(&e, mirror, shutdown).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// The back-off between attempts, and whether the last list worked, so that an outage is
/// reported once rather than on every retry.
struct Retry {
    pause: Duration,
    healthy: bool,
}

impl Retry {
    /// Reports `e` to `mirror` (the first failure of an outage only), then sleeps the back-off
    /// and doubles it, up to 5 s; true when shutdown came first.
    async fn after(
        &mut self,
        e: &ClientError,
        mirror: &impl Mirror,
        shutdown: &CancellationToken,
    ) -> bool {
        if self.healthy {
            mirror.lost(e);
        }
        self.healthy = false;
        let cancelled = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(self.pause) => false,
        };
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
        cancelled
    }

    /// A list worked: reports the recovery after an outage and resets the back-off.
    fn succeeded(&mut self, mirror: &impl Mirror) {
        if !self.healthy {
            mirror.restored();
        }
        self.healthy = true;
        self.pause = FIRST_PAUSE;
    }
}
