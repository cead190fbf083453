//! [`sync_loop`]: from the watched [`Cluster`] to the kernel and the DNS table. Wakes on every
//! change, waits a short debounce so a burst (a rollout, a re-list) becomes one transaction,
//! then renders the ruleset and applies it only when its text changed. A failed apply is
//! retried with back-off; a periodic resync re-applies even unchanged text, repairing a table
//! someone else removed.

use super::cluster::Cluster;
use super::dns::DnsTable;
use super::endpoints::compute;
use super::nft::Nft;
use super::ruleset::{render, RulesetParams};
use crate::watcher::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Figures of the sync loop, shared with whoever wants to report them
/// (`gantry_proxy_sync_duration_seconds`, `gantry_proxy_sync_latency_seconds`).
#[derive(Debug, Default)]
pub struct SyncStats {
    apply_micros: AtomicU64,
    latency_micros: AtomicU64,
    applies: AtomicU64,
    failures: AtomicU64,
}

impl SyncStats {
    /// How long the last successful `nft` transaction took.
    pub fn last_apply(&self) -> Option<Duration> {
        self.nonzero(&self.apply_micros)
    }

    /// From the first watch event it contains to the last ruleset being in the kernel.
    pub fn last_latency(&self) -> Option<Duration> {
        self.nonzero(&self.latency_micros)
    }

    /// Successful transactions so far.
    pub fn applies(&self) -> u64 {
        self.applies.load(Ordering::Relaxed)
    }

    /// Failed transactions so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn nonzero(&self, v: &AtomicU64) -> Option<Duration> {
        (self.applies() > 0).then(|| Duration::from_micros(v.load(Ordering::Relaxed)))
    }
}

/// What the sync loop renders and how it applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// The ruleset's node parameters.
    pub params: RulesetParams,
    /// The DNS domain of services.
    pub domain: String,
    /// How nft is run.
    pub nft: Nft,
    /// The quiet time collecting a burst of changes into one transaction.
    pub debounce: Duration,
    /// Re-apply at least this often even without changes.
    pub resync: Duration,
}

/// Syncs until `shutdown`; the rules stay in the kernel afterwards.
pub async fn sync_loop(
    settings: SyncSettings,
    cluster: Arc<Mutex<Cluster>>,
    wake: Arc<Notify>,
    dns: watch::Sender<Arc<DnsTable>>,
    stats: Arc<SyncStats>,
    shutdown: CancellationToken,
) {
    let SyncSettings {
        params,
        domain,
        nft,
        debounce,
        resync,
    } = settings;
    let mut applied: Option<String> = None;
    let mut retry: Option<tokio::time::Instant> = None;
    let mut pause = Duration::from_millis(100);
    let mut resync = tokio::time::interval(resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        let retry_due = async {
            match retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = retry_due => {}
            _ = resync.tick() => applied = None,
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(debounce) => {}
        }
        let (services, since) = {
            let mut c = lock(&cluster);
            if !c.synced() {
                continue;
            }
            (compute(&c.services, &c.replicas), c.dirty_since.take())
        };
        let table = DnsTable::new(
            &domain,
            services.iter().map(|s| (s.service.clone(), s.cluster_ip)),
        );
        dns.send_if_modified(|old| {
            if **old == table {
                return false;
            }
            *old = Arc::new(table);
            true
        });
        let text = render(&params, &services);
        if applied.as_deref() == Some(text.as_str()) {
            continue;
        }
        let started = Instant::now();
        match nft.apply(&text).await {
            Ok(()) => {
                let apply = started.elapsed();
                let latency = since.map_or(apply, |s| s.elapsed());
                stats
                    .apply_micros
                    .store(apply.as_micros() as u64, Ordering::Relaxed);
                stats
                    .latency_micros
                    .store(latency.as_micros() as u64, Ordering::Relaxed);
                stats.applies.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    table = %params.table,
                    services = services.len(),
                    apply_ms = apply.as_secs_f64() * 1e3,
                    latency_ms = latency.as_secs_f64() * 1e3,
                    "service rules synced"
                );
                applied = Some(text);
                retry = None;
                pause = Duration::from_millis(100);
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(table = %params.table, error = %e, retry_in = ?pause, "service rules not applied; retrying");
                // Keep the measured start so the retry's latency includes the failure.
                if let Some(s) = since {
                    lock(&cluster).dirty_since.get_or_insert(s);
                }
                retry = Some(tokio::time::Instant::now() + pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
