//! The leader-only controllers, each a [`LeaderTask`]:
//!
//! - [`service`]: [`ServiceController`] keeps each Service's Replica objects at the desired
//!   count and template (rolling updates, scale up and down, orphan cleanup) and writes the
//!   Service's status.
//! - [`scheduler`]: [`Scheduler`], the pure placement function, and [`SchedulerTask`], which
//!   binds Pending replicas to nodes.
//! - [`nodes`]: [`NodeLifecycle`] judges node liveness by this member's own clock, marks
//!   silent nodes NotReady and deletes their replicas after a grace period.
//! - [`network`]: [`NetworkController`] hands each node a replica subnet and each service
//!   with ports a virtual address (`status.clusterIP`), and reports node port conflicts.
//! - [`events`]: [`EventRecorder`] (folding repeats) used by all of them, and [`EventGc`].
//! - [`informer`] and [`writer`]: the watch-fed object cache and the compare-and-swap writes
//!   the controllers share.
//!
//! Every controller is level-triggered: it compares desired with actual state on every batch
//! of watch events (coalesced for [`ControllerConfig::debounce`]) and on a periodic resync,
//! and every write is a compare-and-swap, so an old leader finishing a write does no harm.

pub mod events;
pub mod informer;
pub mod network;
pub mod nodes;
pub mod scheduler;
pub mod service;
pub mod writer;

pub use events::{EventGc, EventRecorder};
pub use network::{NetworkConfigError, NetworkController, NetworkRanges};
pub use nodes::NodeLifecycle;
pub use scheduler::{Scheduler, SchedulerTask};
pub use service::ServiceController;

use crate::server::{LeaderContext, LeaderTask};
use crate::types::Raft;
use futures::future::BoxFuture;
use gantry_api::model::Phase;
use gantry_api::net::Ipv4Cidr;
use gantry_api::objects::Kind;
use informer::{Changes, Informer};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use writer::Writer;

/// The label on a Replica naming its Service.
pub const LABEL_SERVICE: &str = "gantry.io/service";

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node not heard from for this long is NotReady (its replicas' phase Unknown).
    pub node_lease: Duration,
    /// After a further `node_grace`, a NotReady node's replicas are deleted (and replaced).
    pub node_grace: Duration,
    /// Every controller compares everything at least this often.
    pub resync: Duration,
    /// Bursts of watch events within this window are handled as one batch.
    pub debounce: Duration,
    /// Deadline of one write.
    pub write_timeout: Duration,
    /// Writes a controller keeps in flight at once (binds, creates).
    pub write_concurrency: usize,
    /// Events whose last occurrence is older are deleted.
    pub event_ttl: Duration,
    /// At most this many events are kept.
    pub max_events: usize,
    /// How often the event collector runs.
    pub event_gc_interval: Duration,
    /// The range node subnets are carved from (`--cluster-cidr`).
    pub cluster_cidr: Ipv4Cidr,
    /// The prefix length of one node's subnet (`--node-cidr-size`).
    pub node_prefix: u8,
    /// The range of services' virtual addresses (`--service-cidr`).
    pub service_cidr: Ipv4Cidr,
}

impl ControllerConfig {
    /// Checks the address ranges (see [`NetworkRanges::check`]); run before serving so that
    /// bad flags stop the server instead of leaving the cluster without addresses.
    ///
    /// # Errors
    /// Overlapping ranges or unusable prefixes, naming the flag and the values.
    pub fn check_network(&self) -> Result<(), NetworkConfigError> {
        NetworkRanges::of(self).check()
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_lease: Duration::from_secs(4),
            node_grace: Duration::from_secs(4),
            resync: Duration::from_secs(5),
            debounce: Duration::from_millis(20),
            write_timeout: Duration::from_secs(5),
            write_concurrency: 64,
            event_ttl: Duration::from_secs(3600),
            max_events: 1000,
            event_gc_interval: Duration::from_secs(60),
            // network::DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_PREFIX and DEFAULT_SERVICE_CIDR
            // (a unit test keeps them equal).
            cluster_cidr: Ipv4Cidr::containing(Ipv4Addr::new(10, 214, 0, 0), 16),
            node_prefix: network::DEFAULT_NODE_PREFIX,
            service_cidr: Ipv4Cidr::containing(Ipv4Addr::new(10, 215, 0, 0), 16),
        }
    }
}

/// The controllers a `gantry server` runs while it leads: service controller, scheduler,
/// node lifecycle, network controller and event collector.
pub fn default_controllers(cfg: ControllerConfig) -> Vec<Arc<dyn LeaderTask>> {
    vec![
        Arc::new(ServiceController::new(cfg.clone())),
        Arc::new(SchedulerTask::new(cfg.clone())),
        Arc::new(NodeLifecycle::new(cfg.clone())),
        Arc::new(NetworkController::new(cfg.clone())),
        Arc::new(EventGc::new(cfg)),
    ]
}

/// True for the phases a replica never leaves.
pub fn is_finished(phase: Phase) -> bool {
    matches!(phase, Phase::Succeeded | Phase::Failed)
}

/// One level-triggered pass of a controller over its informer.
pub(crate) trait Pass: Send {
    /// Compares desired with actual for what `changes` touched (everything when
    /// `changes.relisted`); answers true to be called again soon (a write failed).
    fn pass<'a>(&'a mut self, inf: &'a Informer, changes: Changes) -> BoxFuture<'a, bool>;
}

/// Runs the controller `name`: a writer, an event recorder under `name` and an informer of
/// `kinds`, from which `make` builds the pass that [`run_loop`] drives every coalesced batch of
/// changes and every `resync` until `stop`.
pub(crate) async fn run_controller<P: Pass>(
    name: &str,
    ctx: &LeaderContext,
    cfg: &ControllerConfig,
    kinds: &[Kind],
    resync: Duration,
    stop: &CancellationToken,
    make: impl FnOnce(Writer, EventRecorder) -> P,
) {
    let writer = Writer::new(ctx.raft.clone(), cfg.write_timeout);
    let events = EventRecorder::new(writer.clone(), ctx.store.clone(), name);
    let mut informer = Informer::new(ctx.store.clone(), kinds);
    let mut p = make(writer, events);
    run_loop(&ctx.raft, &mut informer, cfg.debounce, resync, stop, &mut p).await;
}

/// Runs `p` on every coalesced batch of changes and every `resync` until `stop`.
///
/// It first waits until the local store reflects every committed write (a read barrier), so
/// a new leader never acts on a state older than its predecessor's last writes.
pub(crate) async fn run_loop(
    raft: &Raft,
    inf: &mut Informer,
    debounce: Duration,
    resync: Duration,
    stop: &CancellationToken,
    p: &mut impl Pass,
) {
    let retry = Duration::from_millis(200);
    loop {
        let ready = match raft.ensure_linearizable().await {
            Ok(_) => inf.relist(),
            Err(e) => Err(e.to_string()),
        };
        match ready {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "controller cannot start yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
    let mut changes = Changes {
        relisted: true,
        touched: Vec::new(),
    };
    let mut next_resync = Instant::now() + resync;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let again = p.pass(inf, changes).await;
        changes = Changes::default();
        tokio::select! {
            _ = stop.cancelled() => return,
            c = inf.next() => changes = c,
            _ = tokio::time::sleep_until(next_resync) => {}
            _ = tokio::time::sleep(retry), if again => changes.relisted = true,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(debounce) => {}
        }
        let more = inf.drain();
        changes.relisted |= more.relisted;
        changes.touched.extend(more.touched);
        if Instant::now() >= next_resync {
            changes.relisted = true;
            next_resync = Instant::now() + resync;
        }
    }
}
